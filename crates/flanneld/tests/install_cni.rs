//! `flanneld install-cni`, black-box: the binary replaces plugins that a "runtime" is executing in a loop, and no
//! execution ever fails. A control shows the same loop does catch the in-place copy upstream's init container
//! does (`cp -f`), so the test can fail.

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

/// What `install-cni` installs by default: every plugin of this build but `dhcp` (opt-in).
static PLUGINS: std::sync::LazyLock<Vec<&'static str>> = std::sync::LazyLock::new(|| {
    cni::plugins::TABLE
        .iter()
        .map(|p| p.name)
        .filter(|n| *n != "dhcp")
        .collect()
});
const LIST: &str = r#"{"name":"cbr0","cniVersion":"0.3.1","plugins":[{"type":"flannel","delegate":{"hairpinMode":true,"isDefaultGateway":true}},{"type":"portmap","capabilities":{"portMappings":true}}]}"#;

fn flanneld() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_flanneld"))
}

/// A temp dir removed on drop (also when the test fails).
struct Tmp(PathBuf);
impl Drop for Tmp {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}
fn tmp(tag: &str) -> Tmp {
    let d = std::env::temp_dir().join(format!("flannel-install-{tag}-{}", std::process::id()));
    let _ = fs::remove_dir_all(&d);
    fs::create_dir_all(&d).expect("temp dir");
    Tmp(d)
}

/// Two "releases" of the plugin set: the plugins cargo built, and the same executables with a marker appended
/// (an ELF file runs the same with trailing bytes), so every install really changes every file.
fn releases(t: &Tmp) -> [PathBuf; 2] {
    let built = flanneld().parent().expect("target dir").to_path_buf();
    let mut out = [t.0.join("rel-a"), t.0.join("rel-b")];
    for (i, dir) in out.iter_mut().enumerate() {
        fs::create_dir_all(&dir).expect("release dir");
        for p in PLUGINS.iter() {
            let src = built.join(p);
            let mut bytes = fs::read(&src).unwrap_or_else(|e| {
                panic!(
                    "build the plugins first: cargo build -p plugins ({}: {e})",
                    src.display()
                )
            });
            bytes.extend_from_slice(format!("\0release-{i}").as_bytes());
            fs::write(dir.join(p), bytes).expect("write release");
        }
    }
    out
}

fn install(src: &Path, t: &Tmp) -> std::process::Output {
    Command::new(flanneld())
        .arg("install-cni")
        .arg("--source-dir")
        .arg(src)
        .arg("--cni-bin-dir")
        .arg(t.0.join("bin"))
        .arg("--cni-conf")
        .arg(t.0.join("cni-conf.json"))
        .arg("--cni-conf-dir")
        .arg(t.0.join("net.d"))
        .env("RUST_LOG", "info")
        .output()
        .expect("run flanneld install-cni")
}

/// Runs `bin/loopback` (CNI VERSION) and `bin/flannel` in a loop as a runtime would, until `stop`; every failure
/// (spawn error such as ETXTBSY, a crash, output that is not the version JSON) is recorded.
fn exec_loop(
    bin: PathBuf,
    stop: Arc<AtomicBool>,
) -> (std::thread::JoinHandle<usize>, Arc<Mutex<Vec<String>>>) {
    let failures = Arc::new(Mutex::new(Vec::new()));
    let f = failures.clone();
    let h = std::thread::spawn(move || {
        let mut runs = 0;
        // Bounded: at most 20,000 executions, whatever the installer does.
        while !stop.load(Ordering::Relaxed) && runs < 20_000 {
            let plugin = PLUGINS[runs % PLUGINS.len()];
            runs += 1;
            let out = Command::new(bin.join(plugin))
                .env("CNI_COMMAND", "VERSION")
                .stdin(Stdio::null())
                .output();
            let problem = match out {
                Err(e) => Some(format!("{plugin}: exec: {e}")),
                Ok(o) if !o.status.success() => Some(format!("{plugin}: {}", o.status)),
                Ok(o) => {
                    let ok = serde_json::from_slice::<serde_json::Value>(&o.stdout)
                        .ok()
                        .and_then(|v| v.get("supportedVersions").cloned())
                        .is_some();
                    (!ok).then(|| {
                        format!("{plugin}: output {:?}", String::from_utf8_lossy(&o.stdout))
                    })
                }
            };
            if let Some(p) = problem {
                f.lock().expect("failures").push(p);
            }
        }
        runs
    });
    (h, failures)
}

#[test]
fn replaces_plugins_while_they_are_executed() {
    let t = tmp("busy");
    let rel = releases(&t);
    fs::write(t.0.join("cni-conf.json"), LIST).expect("conflist");
    let first = install(&rel[0], &t);
    assert!(
        first.status.success(),
        "{}",
        String::from_utf8_lossy(&first.stderr)
    );

    let stop = Arc::new(AtomicBool::new(false));
    let (h, failures) = exec_loop(t.0.join("bin"), stop.clone());
    let mut installs = 0;
    for i in 0..40 {
        let out = install(&rel[(i + 1) % 2], &t);
        assert!(
            out.status.success(),
            "install {i}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        installs += 1;
    }
    stop.store(true, Ordering::Relaxed);
    let runs = h.join().expect("exec loop");
    let failures = failures.lock().expect("failures").clone();
    assert!(
        runs > 40,
        "the plugins ran while being replaced ({runs} runs)"
    );
    assert!(
        failures.is_empty(),
        "{} of {runs} executions failed during {installs} installs: {:?}",
        failures.len(),
        &failures[..failures.len().min(5)]
    );

    // The last install (release a, i = 39) is what is on disk, and nothing temporary is left.
    for p in PLUGINS.iter() {
        assert_eq!(
            fs::read(t.0.join("bin").join(p)).ok(),
            fs::read(rel[0].join(p)).ok(),
            "{p}"
        );
    }
    for dir in ["bin", "net.d"] {
        let names: Vec<_> = fs::read_dir(t.0.join(dir))
            .expect("dir")
            .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
            .collect();
        assert!(
            names.iter().all(|n| !n.starts_with('.')),
            "{dir}: {names:?}"
        );
    }
    assert_eq!(
        fs::read_to_string(t.0.join("net.d/10-flannel.conflist"))
            .ok()
            .as_deref(),
        Some(LIST)
    );
}

/// The control: the same exec loop against an in-place copy (what `cp -f` onto a busy file does: open with
/// O_TRUNC, write) sees failures — ETXTBSY for the copier or the runtime, or a truncated executable.
#[test]
fn control_an_in_place_copy_is_caught() {
    let t = tmp("control");
    let rel = releases(&t);
    let bin = t.0.join("bin");
    fs::create_dir_all(&bin).expect("bin");
    for p in PLUGINS.iter() {
        fs::copy(rel[0].join(p), bin.join(p)).expect("copy");
    }
    let stop = Arc::new(AtomicBool::new(false));
    let (h, failures) = exec_loop(bin.clone(), stop.clone());
    let mut copy_errors = 0;
    // Bounded: 400 copies at most; stops at the first failure seen.
    for i in 0..400 {
        for p in PLUGINS.iter() {
            let bytes = fs::read(rel[i % 2].join(p)).expect("release");
            let r = fs::OpenOptions::new()
                .write(true)
                .truncate(true)
                .open(bin.join(p))
                .and_then(|mut f| f.write_all(&bytes));
            if r.is_err() {
                copy_errors += 1;
            }
        }
        if copy_errors > 0 || !failures.lock().expect("failures").is_empty() {
            break;
        }
    }
    stop.store(true, Ordering::Relaxed);
    h.join().expect("exec loop");
    let failures = failures.lock().expect("failures").len();
    assert!(
        copy_errors + failures > 0,
        "an in-place copy under a running exec loop must show failures (copy errors {copy_errors}, exec failures {failures})"
    );
}

#[test]
fn bad_conflist_fails_and_names_the_file_and_missing_plugins_are_warned() {
    let t = tmp("bad");
    let rel = releases(&t);
    fs::write(
        t.0.join("cni-conf.json"),
        "{\"name\":\"cbr0\",\"plugins\":[]}",
    )
    .expect("conflist");
    let out = install(&rel[0], &t);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(
        err.contains("cni-conf.json") && err.contains("empty"),
        "{err}"
    );
    assert!(
        !t.0.join("bin").exists(),
        "nothing installed from a bad conflist"
    );

    // A conflist chaining a plugin we do not ship (the reference's `sbr`): installed, with a warning naming it.
    let with_sbr = LIST.replace("]}", r#",{"type":"sbr"}]}"#);
    fs::write(t.0.join("cni-conf.json"), with_sbr).expect("conflist");
    let out = install(&rel[0], &t);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{err}");
    assert!(
        err.contains("\"sbr\"") && err.contains("not in"),
        "sbr is named in the warning: {err}"
    );
    assert!(!err.contains("\"portmap\""), "portmap is ours now: {err}");
    assert!(err.contains("installed:"), "{err}");

    let out = Command::new(flanneld())
        .args(["install-cni", "--source-dir"])
        .arg(t.0.join("nowhere"))
        .arg("--cni-conf")
        .arg(t.0.join("cni-conf.json"))
        .output()
        .expect("run");
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(
        err.contains("nowhere/flannel"),
        "the missing source is named: {err}"
    );
}
