//! The lab end to end, as an operator runs it: `lab up` for vxlan and host-gw must prove full connectivity, and
//! `lab down` must leave no namespace, process or file. One test function, because labs share their names.

use std::path::Path;
use std::process::Command;

const CTL: &str = env!("CARGO_BIN_EXE_flannelctl");

fn ctl(args: &[&str]) -> (i32, String) {
    let out = Command::new(CTL)
        .args(args)
        .output()
        .expect("run flannelctl");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.code().unwrap_or(-1), text)
}

fn lab_namespaces() -> Vec<String> {
    std::fs::read_dir("/run/netns")
        .map(|rd| {
            rd.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|n| n.starts_with("flab-"))
                .collect()
        })
        .unwrap_or_default()
}

fn lab_processes() -> Vec<String> {
    let mut out = Vec::new();
    for e in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        if let Ok(cmd) = std::fs::read(e.path().join("cmdline")) {
            let cmd = String::from_utf8_lossy(&cmd).replace('\0', " ");
            if cmd.contains("/run/flannel-lab") && !cmd.contains("lab.rs") {
                out.push(cmd);
            }
        }
    }
    out
}

fn assert_clean() {
    assert!(
        lab_namespaces().is_empty(),
        "namespaces left: {:?}",
        lab_namespaces()
    );
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    while !lab_processes().is_empty() && std::time::Instant::now() < deadline {
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    assert!(
        lab_processes().is_empty(),
        "processes left: {:?}",
        lab_processes()
    );
    assert!(
        !Path::new("/run/flannel-lab").exists(),
        "/run/flannel-lab left"
    );
}

struct Down;

impl Drop for Down {
    fn drop(&mut self) {
        let _ = ctl(&["lab", "down"]);
    }
}

fn lab_up_status_exec_down() {
    testkit::require_root();
    let bins = Path::new(CTL).parent().expect("bin dir");
    for b in ["flanneld", "flannel", "bridge", "host-local", "loopback"] {
        assert!(
            bins.join(b).is_file(),
            "{} missing: build the workspace first (cargo build --workspace --bins)",
            b
        );
    }
    let _down = Down;
    let (_, _) = ctl(&["lab", "down"]);

    for backend in ["vxlan", "host-gw"] {
        let (code, out) = ctl(&["lab", "up", "--backend", backend, "--no-throughput"]);
        assert_eq!(code, 0, "lab up --backend {backend} failed:\n{out}");
        assert!(out.contains("30/30 reachable"), "{out}");
        assert!(!out.contains("FAIL"), "{out}");

        // A second `up` is refused with a clear message and breaks nothing.
        let (code, again) = ctl(&["lab", "up"]);
        assert_ne!(code, 0);
        assert!(again.contains("already up"), "{again}");

        let (code, st) = ctl(&["lab", "status"]);
        assert_eq!(code, 0, "{st}");
        assert_eq!(st.matches("running (pid").count(), 3, "{st}");
        assert_eq!(st.matches("peers 2").count(), 3, "{st}");

        let (code, route) = ctl(&["lab", "exec", "n1", "--", "ip", "route"]);
        assert_eq!(code, 0, "{route}");
        let want = if backend == "vxlan" {
            "dev flannel.1 proto 121 onlink"
        } else {
            "via 192.0.2."
        };
        assert!(route.contains(want), "{route}");
        let (code, _) = ctl(&["lab", "exec", "nope", "--", "true"]);
        assert_ne!(code, 0);

        let (code, out) = ctl(&["lab", "down"]);
        assert_eq!(code, 0, "{out}");
        assert_clean();
    }

    // Interrupted in the middle: `lab up` removes what it made itself.
    let mut child = Command::new(CTL)
        .args(["lab", "up", "--no-throughput"])
        .spawn()
        .expect("spawn");
    std::thread::sleep(std::time::Duration::from_millis(40));
    let _ = nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(child.id() as i32),
        nix::sys::signal::Signal::SIGINT,
    );
    let status = child.wait().expect("wait");
    if !status.success() {
        assert_clean();
    }
    let (code, out) = ctl(&["lab", "down"]);
    assert_eq!(code, 0, "{out}");
    assert_clean();
}

testkit::main!(lab_up_status_exec_down,);
