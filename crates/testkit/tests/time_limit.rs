//! A test stuck forever fails its binary (exit 101, naming the test) once `TESTKIT_TEST_TIMEOUT` passed, instead of
//! holding the suite. The outer test runs this same binary again with the probe variable set: then its only test is
//! one that never returns.

use std::process::Command;
use std::time::Duration;

const PROBE: &str = "TESTKIT_TIME_LIMIT_PROBE";

fn stuck_test_fails_its_binary() {
    if std::env::var_os(PROBE).is_some() {
        // The probe: never finishes (bounded only so a broken harness cannot leave it behind for ever).
        std::thread::sleep(Duration::from_secs(120));
        return;
    }
    let exe = std::env::current_exe().expect("own path");
    let out = Command::new(exe)
        .args(["--exact", "stuck_test_fails_its_binary"])
        .env(PROBE, "1")
        .env("TESTKIT_TEST_TIMEOUT", "1")
        .output()
        .expect("run the probe");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(101), "{out:?}");
    assert!(
        stderr.contains("test stuck_test_fails_its_binary did not finish within 1 s"),
        "{stderr}"
    );
}

fn a_passing_test_is_unaffected() {}

testkit::main!(stuck_test_fails_its_binary, a_passing_test_is_unaffected);
