//! Runs the built `host-local` and the reference `/usr/lib/cni/host-local` as processes on one data directory:
//! each must release what the other reserved, share the round-robin cursor, never collide, and write records
//! byte-for-byte alike. IPAM needs no network namespace, so nothing here touches network state.

use serde_json::{json, Value};
use std::collections::HashSet;
use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};

const OURS: &str = env!("CARGO_BIN_EXE_host-local");
const REFERENCE: &str = "/usr/lib/cni/host-local";

/// The reference binary (containernetworking-plugins, which scripts/deps.sh installs: missing fails).
fn reference() -> &'static str {
    assert!(
        Path::new(REFERENCE).exists(),
        "{REFERENCE} is missing: install containernetworking-plugins (scripts/deps.sh does)"
    );
    REFERENCE
}

/// A unique directory removed on drop.
struct TempDir(PathBuf);

impl TempDir {
    fn new(tag: &str) -> Self {
        static N: AtomicUsize = AtomicUsize::new(0);
        let p = std::env::temp_dir().join(format!(
            "flannel-rs-hl-interop-{tag}-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = fs::remove_dir_all(&p);
        fs::create_dir_all(&p).unwrap();
        Self(p)
    }

    fn net(&self) -> PathBuf {
        self.0.join("interop")
    }

    fn conf(&self, version: &str, ipam: Value) -> String {
        let mut ipam = ipam;
        ipam["type"] = json!("host-local");
        ipam["dataDir"] = json!(self.0.to_str().unwrap());
        json!({"cniVersion": version, "name": "interop", "type": "host-local", "ipam": ipam})
            .to_string()
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

#[derive(Debug)]
struct Out {
    ok: bool,
    stdout: String,
    stderr: String,
}

impl Out {
    fn json(&self) -> Value {
        serde_json::from_str(&self.stdout)
            .unwrap_or_else(|e| panic!("stdout is not JSON ({e}): {self:?}"))
    }

    fn ip(&self) -> String {
        assert!(self.ok, "{self:?}");
        let v = self.json();
        let a = v["ips"][0]["address"]
            .as_str()
            .unwrap_or_else(|| panic!("no address: {v}"));
        a.split('/').next().unwrap_or_default().to_string()
    }

    fn code(&self) -> u64 {
        assert!(!self.ok, "expected a failure: {self:?}");
        self.json()["code"]
            .as_u64()
            .unwrap_or_else(|| panic!("no code: {self:?}"))
    }
}

/// A child process with the CNI environment, config written to its stdin.
fn spawn(bin: &str, env: &[(&str, &str)], conf: &str) -> Child {
    let mut c = Command::new(bin);
    c.env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("CNI_NETNS_OVERRIDE", "1")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    for (k, v) in env {
        c.env(k, v);
    }
    let mut child = c
        .spawn()
        .unwrap_or_else(|e| panic!("cannot run {bin}: {e}"));
    let mut stdin = child.stdin.take().unwrap();
    stdin.write_all(conf.as_bytes()).unwrap();
    drop(stdin);
    child
}

fn wait(child: Child) -> Out {
    let o = child.wait_with_output().unwrap();
    Out {
        ok: o.status.success(),
        stdout: String::from_utf8_lossy(&o.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&o.stderr).into_owned(),
    }
}

fn start(bin: &str, command: &str, id: &str, ifname: &str, conf: &str, cni_args: &str) -> Child {
    spawn(
        bin,
        &[
            ("CNI_COMMAND", command),
            ("CNI_CONTAINERID", id),
            ("CNI_NETNS", "/proc/self/ns/net"),
            ("CNI_IFNAME", ifname),
            ("CNI_PATH", "/usr/lib/cni"),
            ("CNI_ARGS", cni_args),
        ],
        conf,
    )
}

fn exec(bin: &str, command: &str, id: &str, conf: &str) -> Out {
    wait(start(bin, command, id, "eth0", conf, ""))
}

fn record(dir: &Path, ip: &str) -> Option<Vec<u8>> {
    fs::read(dir.join(ip)).ok()
}

fn reference_adds_ours_deletes() {
    let refbin = reference();
    let d = TempDir::new("ref-ours");
    let c = d.conf("1.0.0", json!({"subnet": "10.250.0.0/24"}));
    let ip = exec(refbin, "ADD", "ctr1", &c).ip();
    assert_eq!(record(&d.net(), &ip).as_deref(), Some(&b"ctr1\r\neth0"[..]));
    assert!(exec(OURS, "CHECK", "ctr1", &c).ok);
    let out = exec(OURS, "DEL", "ctr1", &c);
    assert!(out.ok && out.stdout.trim().is_empty(), "{out:?}");
    assert!(record(&d.net(), &ip).is_none(), "ours left {ip} behind");
    assert!(exec(OURS, "DEL", "ctr1", &c).ok);
    assert!(!exec(OURS, "CHECK", "ctr1", &c).ok);
}

fn ours_adds_reference_deletes() {
    let refbin = reference();
    let d = TempDir::new("ours-ref");
    let c = d.conf(
        "1.0.0",
        json!({"ranges": [[{"subnet": "10.251.0.0/24"}], [{"subnet": "fd00:251::/64"}]]}),
    );
    let out = exec(OURS, "ADD", "ctr1", &c);
    let v = out.json();
    let v4 = v["ips"][0]["address"]
        .as_str()
        .unwrap()
        .split('/')
        .next()
        .unwrap()
        .to_string();
    let v6 = v["ips"][1]["address"]
        .as_str()
        .unwrap()
        .split('/')
        .next()
        .unwrap()
        .to_string();
    assert_eq!((v4.as_str(), v6.as_str()), ("10.251.0.2", "fd00:251::2"));
    assert!(exec(refbin, "CHECK", "ctr1", &c).ok);
    assert!(exec(refbin, "DEL", "ctr1", &c).ok);
    assert!(record(&d.net(), &v4).is_none() && record(&d.net(), &v6).is_none());
}

/// Alternating ADDs share `last_reserved_ip.0`: addresses come out in sequence across both binaries, the
/// records and the cursor are byte-identical in format, and the wrap-around after exhaustion agrees.
fn interleaved_allocations_share_cursor_and_format() {
    let refbin = reference();
    let d = TempDir::new("interleave");
    let c = d.conf("1.0.0", json!({"subnet": "10.252.0.0/28"}));
    let mut seen = HashSet::new();
    for i in 0..13 {
        let (bin, id) = if i % 2 == 0 {
            (OURS, format!("o{i}"))
        } else {
            (refbin, format!("r{i}"))
        };
        let ip = exec(bin, "ADD", &id, &c).ip();
        assert_eq!(
            ip,
            format!("10.252.0.{}", i + 2),
            "{bin} broke the sequence"
        );
        assert!(seen.insert(ip.clone()));
        assert_eq!(
            record(&d.net(), &ip),
            Some(format!("{id}\r\neth0").into_bytes())
        );
        assert_eq!(
            fs::read(d.net().join("last_reserved_ip.0")).unwrap(),
            ip.as_bytes()
        );
    }
    // Full: both refuse, ours with code 100 and the reference's message.
    let ours = exec(OURS, "ADD", "full1", &c);
    assert_eq!(ours.code(), 100);
    assert!(ours.json()["msg"]
        .as_str()
        .unwrap()
        .contains("no IP addresses available in range set: 10.252.0.1-10.252.0.14"));
    assert!(!exec(refbin, "ADD", "full2", &c).ok);
    // Free one in the middle (by the other binary) and each finds it by wrapping around.
    assert!(exec(refbin, "DEL", "o4", &c).ok);
    assert_eq!(exec(OURS, "ADD", "again1", &c).ip(), "10.252.0.6");
    assert!(exec(OURS, "DEL", "r5", &c).ok);
    assert_eq!(exec(refbin, "ADD", "again2", &c).ip(), "10.252.0.7");
}

fn results_match_reference() {
    let refbin = reference();
    let rc = TempDir::new("rc");
    let resolv = rc.0.join("resolv.conf");
    fs::write(
        &resolv,
        "nameserver 10.96.0.10\nsearch default.svc cluster.local\noptions ndots:5\n",
    )
    .unwrap();
    for version in ["0.3.1", "0.4.0", "1.0.0"] {
        let ipam = json!({"ranges": [[{"subnet": "10.253.0.0/24", "rangeStart": "10.253.0.10", "gateway": "10.253.0.254"}],
                                     [{"subnet": "fd00:253::/120"}]],
                          "routes": [{"dst": "0.0.0.0/0"}, {"dst": "10.0.0.0/8", "gw": "10.253.0.1"}],
                          "resolvConf": resolv.to_str().unwrap()});
        let (a, b) = (TempDir::new("res-ours"), TempDir::new("res-ref"));
        let ours = exec(OURS, "ADD", "ctr1", &a.conf(version, ipam.clone())).json();
        let theirs = exec(refbin, "ADD", "ctr1", &b.conf(version, ipam)).json();
        assert_eq!(ours, theirs, "cniVersion {version}");
        let mut fa: Vec<_> = fs::read_dir(a.net())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        let mut fb: Vec<_> = fs::read_dir(b.net())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        fa.sort();
        fb.sort();
        assert_eq!(fa, fb);
        for f in fa.iter().filter(|f| f.to_str() != Some("lock")) {
            assert_eq!(
                fs::read(a.net().join(f)).unwrap(),
                fs::read(b.net().join(f)).unwrap(),
                "{f:?}"
            );
        }
    }
}

/// 16 processes of each implementation started at once on one network never hand out the same address.
fn concurrent_processes_never_collide() {
    let refbin = reference();
    let d = TempDir::new("conc");
    let c = d.conf("1.0.0", json!({"subnet": "10.254.0.0/24"}));
    let children: Vec<Child> = (0..32)
        .map(|i| {
            let bin = if i % 2 == 1 { refbin } else { OURS };
            start(bin, "ADD", &format!("c{i}"), "eth0", &c, "")
        })
        .collect();
    let ips: Vec<String> = children.into_iter().map(|ch| wait(ch).ip()).collect();
    let distinct: HashSet<&String> = ips.iter().collect();
    assert_eq!(distinct.len(), 32, "{ips:?}");
    for (i, ip) in ips.iter().enumerate() {
        assert_eq!(
            record(&d.net(), ip),
            Some(format!("c{i}\r\neth0").into_bytes())
        );
    }
}

/// ADDs killed at arbitrary moments leave at most records carrying their own container ID, so one DEL
/// per container empties the network again.
fn killed_adds_leave_only_releasable_records() {
    let d = TempDir::new("kill");
    let c = d.conf("1.0.0", json!({"subnet": "10.246.0.0/24"}));
    let mut children: Vec<Child> = (0..48)
        .map(|i| start(OURS, "ADD", &format!("k{i}"), "eth0", &c, ""))
        .collect();
    for (i, ch) in children.iter_mut().enumerate() {
        std::thread::sleep(std::time::Duration::from_micros(37 * (i as u64 % 11)));
        let _ = ch.kill();
    }
    for ch in children {
        let _ = wait(ch);
    }
    for f in fs::read_dir(d.net()).into_iter().flatten().flatten() {
        let name = f.file_name().into_string().unwrap();
        if name.starts_with("10.") {
            let content = fs::read_to_string(f.path()).unwrap();
            assert!(
                content.starts_with('k') && content.ends_with("\r\neth0"),
                "{name}: {content:?}"
            );
        }
    }
    for i in 0..48 {
        assert!(exec(OURS, "DEL", &format!("k{i}"), &c).ok);
    }
    let left: Vec<String> = fs::read_dir(d.net())
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| e.file_name().into_string().ok())
        .filter(|n| n.starts_with("10."))
        .collect();
    assert!(left.is_empty(), "{left:?}");
}

fn legacy_records_released_by_ours() {
    let d = TempDir::new("legacy");
    let c = d.conf("1.0.0", json!({"subnet": "10.249.0.0/24"}));
    fs::create_dir_all(d.net()).unwrap();
    fs::write(d.net().join("10.249.0.9"), "oldctr").unwrap();
    assert!(exec(OURS, "CHECK", "oldctr", &c).ok);
    assert!(exec(OURS, "DEL", "oldctr", &c).ok);
    assert!(record(&d.net(), "10.249.0.9").is_none());
}

fn gc_and_status_by_exec() {
    let d = TempDir::new("gc");
    let c10 = d.conf("1.0.0", json!({"subnet": "10.248.0.0/24"}));
    assert!(exec(OURS, "ADD", "keep", &c10).ok);
    assert!(exec(OURS, "ADD", "drop", &c10).ok);
    let mut v: Value =
        serde_json::from_str(&d.conf("1.1.0", json!({"subnet": "10.248.0.0/24"}))).unwrap();
    v["cni.dev/valid-attachments"] = json!([{"containerID": "keep", "ifname": "eth0"}]);
    let gc = wait(spawn(
        OURS,
        &[("CNI_COMMAND", "GC"), ("CNI_PATH", "/usr/lib/cni")],
        &v.to_string(),
    ));
    assert!(gc.ok && gc.stdout.trim().is_empty(), "{gc:?}");
    assert!(record(&d.net(), "10.248.0.2").is_some());
    assert!(record(&d.net(), "10.248.0.3").is_none());
    let st = wait(spawn(OURS, &[("CNI_COMMAND", "STATUS")], &v.to_string()));
    assert!(st.ok, "{st:?}");
}

fn error_codes_on_stdout() {
    let d = TempDir::new("errors");
    let small = d.conf("1.0.0", json!({"subnet": "10.247.0.0/31"}));
    let out = exec(OURS, "ADD", "c1", &small);
    assert_eq!(out.code(), 7);
    let msg = out.json()["msg"].as_str().unwrap().to_string();
    assert!(
        msg.contains("10.247.0.0/31") && msg.contains("too small to allocate from"),
        "{msg}"
    );
    assert_eq!(out.json()["cniVersion"], "1.0.0");

    let tiny = d.conf("1.0.0", json!({"subnet": "10.247.1.0/30"}));
    assert!(exec(OURS, "ADD", "c1", &tiny).ok);
    let out = exec(OURS, "ADD", "c2", &tiny);
    assert_eq!(out.code(), 100);
    assert!(
        out.stdout
            .contains("no IP addresses available in range set"),
        "{out:?}"
    );

    assert_eq!(exec(OURS, "ADD", "c3", "{\"cniVersion\": ").code(), 6);
    assert_eq!(
        exec(
            OURS,
            "ADD",
            "c3",
            &d.conf("9.9.9", json!({"subnet": "10.247.2.0/24"}))
        )
        .code(),
        1
    );
    let out = wait(spawn(
        OURS,
        &[
            ("CNI_COMMAND", "ADD"),
            ("CNI_NETNS", "/proc/self/ns/net"),
            ("CNI_IFNAME", "eth0"),
        ],
        &tiny,
    ));
    assert_eq!(out.code(), 4);
    assert!(out.stdout.contains("CNI_CONTAINERID"), "{out:?}");
    assert!(
        out.stderr.is_empty() || !out.stderr.contains("panicked"),
        "{out:?}"
    );
}

testkit::main!(
    reference_adds_ours_deletes,
    ours_adds_reference_deletes,
    interleaved_allocations_share_cursor_and_format,
    results_match_reference,
    concurrent_processes_never_collide,
    killed_adds_leave_only_releasable_records,
    legacy_records_released_by_ours,
    gc_and_status_by_exec,
    error_codes_on_stdout,
);
