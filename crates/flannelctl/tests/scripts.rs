//! The project's install script, as a developer or operator runs it on their own machine: it installs packages and
//! touches nothing else. `systemctl` and `apt-get` are replaced by recorders on `PATH`, so the test sees every call
//! without changing the machine.

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// A directory with recording stand-ins for `systemctl` and `apt-get`, and the log they append to.
struct Recorders {
    dir: PathBuf,
}

impl Recorders {
    fn new() -> Self {
        let dir = std::env::temp_dir().join(format!("flannel-rs-scripts-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).expect("temp dir");
        for (name, rc) in [("systemctl", 0), ("apt-get", 0)] {
            // `systemctl is-active etcd` answers "active": a running system etcd, someone else's.
            let script = format!(
                "#!/bin/sh\necho \"{name} $*\" >> '{}/calls'\nexit {rc}\n",
                dir.display()
            );
            let p = dir.join(name);
            fs::write(&p, script).expect("write recorder");
            fs::set_permissions(&p, fs::Permissions::from_mode(0o755)).expect("chmod");
        }
        Recorders { dir }
    }

    fn calls(&self) -> String {
        fs::read_to_string(self.dir.join("calls")).unwrap_or_default()
    }
}

impl Drop for Recorders {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.dir);
    }
}

#[test]
fn deps_script_never_stops_or_restarts_a_service() {
    let rec = Recorders::new();
    let path = format!(
        "{}:{}",
        rec.dir.display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let out = Command::new("bash")
        .arg(repo().join("scripts/deps.sh"))
        .env("PATH", path)
        .output()
        .expect("run scripts/deps.sh");
    assert!(
        out.status.success(),
        "scripts/deps.sh failed: {}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let calls = rec.calls();
    for verb in ["stop", "restart", "disable", "mask", "kill"] {
        assert!(
            !calls
                .lines()
                .any(|l| l.starts_with("systemctl") && l.split(' ').any(|w| w == verb)),
            "scripts/deps.sh touched a service ({verb}):\n{calls}"
        );
    }
}

#[test]
fn package_list_has_what_the_build_needs() {
    // The hole a fresh Debian 12 fell into: protoc without its well-known .proto files.
    let list = fs::read_to_string(repo().join("scripts/packages")).expect("scripts/packages");
    let pkgs: Vec<&str> = list
        .lines()
        .map(|l| l.split('#').next().unwrap_or(""))
        .flat_map(str::split_whitespace)
        .collect();
    for p in [
        "protobuf-compiler",
        "libprotobuf-dev",
        "gcc",
        "libc6-dev",
        "strace",
    ] {
        assert!(pkgs.contains(&p), "scripts/packages lacks {p}: {pkgs:?}");
    }
    // That everything the build and the tests use comes from the list is proven by .ci/run, which runs the test
    // command under scripts/deps-check.sh after its --self-test (not from here: strace cannot trace a process that
    // is itself being traced).
}
