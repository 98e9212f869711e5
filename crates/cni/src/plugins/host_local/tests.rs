//! Command-level tests against real directories under the system temp dir.

use super::*;
use crate::error::{ERR_INTERNAL, ERR_INVALID_CONFIG, ERR_NOT_AVAILABLE};
use crate::plugin::{Ctx, DefaultExec};
use crate::skel::{Command, Outcome};
use serde_json::{json, Value};
use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Barrier};

/// Runs host-local's table row for `args.command`, as the plugin binary does (host-local delegates nothing).
fn run(args: &CmdArgs, conf: &NetConf) -> Outcome {
    let exec = DefaultExec::new(&[]);
    let ctx = Ctx { exec: &exec };
    tokio::runtime::Builder::new_current_thread()
        .build()
        .expect("runtime")
        .block_on(PLUGIN.call(&ctx, args, conf))
}

/// A unique directory removed on drop.
struct TempDir(PathBuf);

impl TempDir {
    fn new(tag: &str) -> Self {
        static N: AtomicUsize = AtomicUsize::new(0);
        let p = std::env::temp_dir().join(format!(
            "flannel-rs-hl-{tag}-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = fs::remove_dir_all(&p);
        fs::create_dir_all(&p).unwrap();
        Self(p)
    }

    fn net(&self) -> PathBuf {
        self.0.join("testnet")
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

fn conf(dir: &TempDir, mut ipam: Value) -> NetConf {
    ipam["type"] = json!("host-local");
    ipam["dataDir"] = json!(dir.0.to_str().unwrap());
    let v = json!({"cniVersion": "1.1.0", "name": "testnet", "type": "bridge", "ipam": ipam});
    NetConf::parse(v.to_string().as_bytes()).unwrap()
}

fn cmd(command: Command, id: &str, ifname: &str) -> CmdArgs {
    CmdArgs {
        command,
        container_id: id.into(),
        netns: "/proc/self/ns/net".into(),
        ifname: ifname.into(),
        args: String::new(),
        path: String::new(),
        stdin: Vec::new(),
    }
}

fn add(c: &NetConf, id: &str) -> Result<CniResult, CniError> {
    add_if(c, id, "eth0")
}

fn add_if(c: &NetConf, id: &str, ifname: &str) -> Result<CniResult, CniError> {
    run(&cmd(Command::Add, id, ifname), c).map(|r| r.expect("ADD returns a result"))
}

fn del(c: &NetConf, id: &str) -> Result<(), CniError> {
    run(&cmd(Command::Del, id, "eth0"), c).map(|_| ())
}

fn check(c: &NetConf, id: &str) -> Result<(), CniError> {
    run(&cmd(Command::Check, id, "eth0"), c).map(|_| ())
}

fn first_ip(r: &CniResult) -> String {
    r.ips[0].address.addr().to_string()
}

fn files(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = fs::read_dir(dir)
        .map(|rd| {
            rd.filter_map(|e| e.ok()?.file_name().into_string().ok())
                .collect()
        })
        .unwrap_or_default();
    v.sort();
    v
}

#[test]
fn add_writes_reference_layout() {
    let d = TempDir::new("layout");
    let c = conf(&d, json!({"subnet": "10.250.0.0/24"}));
    let r = add(&c, "ctr1").unwrap();
    assert_eq!(first_ip(&r), "10.250.0.2");
    assert_eq!(
        files(&d.net()),
        ["10.250.0.2", "last_reserved_ip.0", "lock"]
    );
    assert_eq!(
        fs::read(d.net().join("10.250.0.2")).unwrap(),
        b"ctr1\r\neth0"
    );
    assert_eq!(
        fs::read(d.net().join("last_reserved_ip.0")).unwrap(),
        b"10.250.0.2"
    );
    let mode = fs::metadata(d.net().join("10.250.0.2"))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600);
    assert!(fs::metadata(d.net()).unwrap().is_dir());
}

#[test]
fn result_has_prefix_gateway_routes_dns() {
    let d = TempDir::new("result");
    let rc = d.0.join("resolv.conf");
    fs::write(&rc, "nameserver 10.0.0.53\nsearch svc.local\n").unwrap();
    let c = conf(
        &d,
        json!({"ranges": [[{"subnet": "10.1.0.0/16", "gateway": "10.1.0.254"}], [{"subnet": "fd00:1::/64"}]],
               "routes": [{"dst": "0.0.0.0/0"}, {"dst": "10.0.0.0/8", "gw": "10.1.0.1"}],
               "resolvConf": rc.to_str().unwrap()}),
    );
    let r = add(&c, "ctr1").unwrap();
    assert_eq!(r.cni_version, "1.1.0");
    assert_eq!(r.ips.len(), 2);
    assert_eq!(r.ips[0].address.to_string(), "10.1.0.1/16");
    assert_eq!(r.ips[0].gateway.unwrap().to_string(), "10.1.0.254");
    assert_eq!(r.ips[0].interface, None);
    assert_eq!(r.ips[1].address.to_string(), "fd00:1::2/64");
    assert_eq!(r.ips[1].gateway.unwrap().to_string(), "fd00:1::1");
    assert_eq!(r.routes.len(), 2);
    assert_eq!(r.routes[1].gw.unwrap().to_string(), "10.1.0.1");
    assert_eq!(r.dns.nameservers, ["10.0.0.53"]);
    assert_eq!(r.dns.search, ["svc.local"]);
    assert_eq!(files(&d.net()).len(), 5);
    let v = r.to_value("0.4.0");
    assert!(v["ips"][0].get("interface").is_none());
}

/// The sequence measured with the reference plugin on a /29 (usable .2-.6).
#[test]
fn round_robin_wraps_like_reference() {
    let d = TempDir::new("rr");
    let c = conf(&d, json!({"subnet": "10.251.0.0/29"}));
    assert_eq!(first_ip(&add(&c, "ctr1").unwrap()), "10.251.0.2");
    assert_eq!(first_ip(&add(&c, "ctr2").unwrap()), "10.251.0.3");
    del(&c, "ctr2").unwrap();
    let got: Vec<String> = ["c3", "c4", "c5", "c6"]
        .iter()
        .map(|id| first_ip(&add(&c, id).unwrap()))
        .collect();
    assert_eq!(
        got,
        ["10.251.0.4", "10.251.0.5", "10.251.0.6", "10.251.0.3"]
    );
    let e = add(&c, "c7").unwrap_err();
    assert_eq!(e.code, ERR_INTERNAL);
    assert_eq!(
        e.msg,
        "failed to allocate for range 0: no IP addresses available in range set: 10.251.0.1-10.251.0.6"
    );
    // The failed ADD left nothing behind.
    assert_eq!(files(&d.net()).len(), 5 + 2);
}

#[test]
fn garbled_or_stale_cursor_restarts() {
    let d = TempDir::new("cursor");
    let c = conf(&d, json!({"subnet": "10.2.0.0/24"}));
    add(&c, "a").unwrap();
    fs::write(d.net().join("last_reserved_ip.0"), "garbage").unwrap();
    assert_eq!(first_ip(&add(&c, "b").unwrap()), "10.2.0.3");
    fs::write(d.net().join("last_reserved_ip.0"), "192.168.0.1").unwrap();
    assert_eq!(first_ip(&add(&c, "c").unwrap()), "10.2.0.4");
    fs::write(d.net().join("last_reserved_ip.0"), "10.2.0.100\n").unwrap();
    assert_eq!(first_ip(&add(&c, "e").unwrap()), "10.2.0.101");
}

#[test]
fn duplicate_allocation_refused() {
    let d = TempDir::new("dup");
    let c = conf(&d, json!({"subnet": "10.3.0.0/24"}));
    add(&c, "ctr1").unwrap();
    let e = add(&c, "ctr1").unwrap_err();
    assert_eq!(e.code, ERR_INTERNAL);
    assert!(
        e.msg
            .contains("10.3.0.2 has been allocated to ctr1, duplicate allocation is not allowed"),
        "{}",
        e.msg
    );
    assert_eq!(first_ip(&add_if(&c, "ctr1", "net1").unwrap()), "10.3.0.3");
}

#[test]
fn requested_ips() {
    let d = TempDir::new("req");
    let c = conf(
        &d,
        json!({"ranges": [[{"subnet": "10.4.0.0/24"}], [{"subnet": "10.5.0.0/24"}]]}),
    );
    let mut a = cmd(Command::Add, "ctr1", "eth0");
    a.args = "IgnoreUnknown=1;K8S_POD_NAME=x;IP=10.5.0.77".into();
    let r = run(&a, &c).unwrap().unwrap();
    assert_eq!(first_ip(&r), "10.4.0.2");
    assert_eq!(r.ips[1].address.to_string(), "10.5.0.77/24");
    assert_eq!(
        fs::read(d.net().join("last_reserved_ip.1")).unwrap(),
        b"10.5.0.77"
    );

    a.container_id = "ctr2".into();
    let e = run(&a, &c).unwrap_err();
    assert_eq!(e.code, ERR_INTERNAL);
    assert!(
        e.msg
            .contains("requested IP address 10.5.0.77 is not available"),
        "{}",
        e.msg
    );
    a.args = "IP=10.5.0.1".into();
    let e = run(&a, &c).unwrap_err();
    assert_eq!(e.code, ERR_INVALID_CONFIG);
    assert!(e.msg.contains("10.5.0.1 is subnet's gateway"), "{}", e.msg);
    a.args = "IP=10.6.0.1".into();
    let e = run(&a, &c).unwrap_err();
    assert!(
        e.msg
            .contains("failed to allocate all requested IPs: 10.6.0.1"),
        "{}",
        e.msg
    );
    a.args = "IP=10.4.0.9,10.4.0.10".into();
    assert!(run(&a, &c).is_err());
    // None of the failures left a reservation.
    assert_eq!(files(&d.net()).len(), 2 + 3);

    let mut v = serde_json::to_value(&c).unwrap();
    v["runtimeConfig"] = json!({"ips": ["10.4.0.50/24"]});
    v["args"] = json!({"cni": {"ips": ["10.5.0.60"]}});
    let c2 = NetConf::parse(v.to_string().as_bytes()).unwrap();
    let r = add(&c2, "ctr3").unwrap();
    assert_eq!(first_ip(&r), "10.4.0.50");
    assert_eq!(r.ips[1].address.addr().to_string(), "10.5.0.60");
}

#[test]
fn failed_add_releases_only_its_own() {
    let d = TempDir::new("rollback");
    let c = conf(
        &d,
        json!({"ranges": [[{"subnet": "10.6.0.0/24"}], [{"subnet": "10.7.0.0/30"}]]}),
    );
    add(&c, "a").unwrap(); // takes 10.7.0.2, the only usable address of set 1
    add_if(&c, "b", "net1").unwrap_err();
    let e = add(&c, "b").unwrap_err();
    assert!(
        e.msg
            .starts_with("failed to allocate for range 1: no IP addresses"),
        "{}",
        e.msg
    );
    assert_eq!(
        files(&d.net()),
        [
            "10.6.0.2",
            "10.7.0.2",
            "last_reserved_ip.0",
            "last_reserved_ip.1",
            "lock"
        ]
    );
}

#[test]
fn del_is_idempotent_and_honours_legacy() {
    let d = TempDir::new("del");
    let c = conf(&d, json!({"subnet": "10.8.0.0/24"}));
    del(&c, "nobody").unwrap();
    assert!(!d.net().exists(), "DEL must not create the directory");
    add(&c, "ctr1").unwrap();
    add_if(&c, "ctr1", "net1").unwrap();
    del(&c, "ctr1").unwrap();
    assert_eq!(files(&d.net()), ["10.8.0.3", "last_reserved_ip.0", "lock"]);
    del(&c, "ctr1").unwrap();

    fs::write(d.net().join("10.8.0.77"), "old1").unwrap();
    fs::write(d.net().join("10.8.0.78"), "old1\n").unwrap();
    del(&c, "old1").unwrap();
    assert!(!d.net().join("10.8.0.77").exists() && !d.net().join("10.8.0.78").exists());

    // With a current record present, ID-only records of the same container stay (reference behaviour).
    add(&c, "old2").unwrap();
    fs::write(d.net().join("10.8.0.90"), "old2").unwrap();
    del(&c, "old2").unwrap();
    assert!(d.net().join("10.8.0.90").exists());
}

#[test]
fn check_finds_current_and_legacy() {
    let d = TempDir::new("check");
    let c = conf(&d, json!({"subnet": "10.9.0.0/24"}));
    assert_eq!(check(&c, "ctr1").unwrap_err().code, ERR_INTERNAL);
    add(&c, "ctr1").unwrap();
    check(&c, "ctr1").unwrap();
    assert!(run(&cmd(Command::Check, "ctr1", "net9"), &c).is_err());
    del(&c, "ctr1").unwrap();
    let e = check(&c, "ctr1").unwrap_err();
    assert!(e
        .msg
        .contains("Failed to find address added by container ctr1"));
    fs::write(d.net().join("10.9.0.44"), "leg").unwrap();
    check(&c, "leg").unwrap();
}

fn gc_conf(c: &NetConf, valid: Value) -> NetConf {
    let mut v = serde_json::to_value(c).unwrap();
    v["cni.dev/valid-attachments"] = valid;
    NetConf::parse(v.to_string().as_bytes()).unwrap()
}

#[test]
fn gc_releases_stale_only() {
    let d = TempDir::new("gc");
    let c = conf(&d, json!({"subnet": "10.10.0.0/24"}));
    run(&cmd(Command::Gc, "", ""), &gc_conf(&c, json!([]))).unwrap();
    add(&c, "keep").unwrap(); // .2
    add_if(&c, "keep", "net1").unwrap(); // .3, stale: only eth0 is valid
    add(&c, "gone").unwrap(); // .4
    fs::write(d.net().join("10.10.0.50"), "keep").unwrap(); // legacy, matched by ID
    fs::write(d.net().join("10.10.0.51"), "gone2").unwrap(); // legacy, stale
    fs::write(d.net().join("10.10.0.52"), "").unwrap(); // writer died before writing
    fs::write(d.net().join("notes.txt"), "gone").unwrap(); // not a record
    let g = gc_conf(
        &c,
        json!([{"containerID": "keep", "ifname": "eth0"}, {"containerID": "other", "ifname": "eth0"}]),
    );
    run(&cmd(Command::Gc, "", ""), &g).unwrap();
    assert_eq!(
        files(&d.net()),
        [
            "10.10.0.2",
            "10.10.0.50",
            "last_reserved_ip.0",
            "lock",
            "notes.txt"
        ]
    );
    // The older key is honoured too, and an empty list means nothing is valid.
    let mut v = serde_json::to_value(&c).unwrap();
    v["cni.dev/attachments"] = json!([{"containerID": "keep", "ifname": "eth0"}]);
    run(
        &cmd(Command::Gc, "", ""),
        &NetConf::parse(v.to_string().as_bytes()).unwrap(),
    )
    .unwrap();
    assert_eq!(files(&d.net()).len(), 5);
    run(&cmd(Command::Gc, "", ""), &gc_conf(&c, Value::Null)).unwrap();
    assert_eq!(files(&d.net()), ["last_reserved_ip.0", "lock", "notes.txt"]);
}

/// What a process killed mid-ADD can leave: a complete record with its container's ID.
#[test]
fn crash_leftover_is_released() {
    let d = TempDir::new("crash");
    let c = conf(&d, json!({"subnet": "10.11.0.0/24"}));
    let mut s = Store::create(&d.net()).unwrap();
    assert!(s
        .reserve("10.11.0.9".parse().unwrap(), b"dead\r\neth0")
        .unwrap());
    drop(s);
    del(&c, "dead").unwrap();
    assert!(!d.net().join("10.11.0.9").exists());
    let mut s = Store::create(&d.net()).unwrap();
    assert!(s
        .reserve("10.11.0.9".parse().unwrap(), b"dead\r\neth0")
        .unwrap());
    assert!(!s
        .reserve("10.11.0.9".parse().unwrap(), b"dead\r\neth0")
        .unwrap());
    drop(s);
    run(&cmd(Command::Gc, "", ""), &gc_conf(&c, json!([]))).unwrap();
    assert!(!d.net().join("10.11.0.9").exists());
}

#[test]
fn status_reports_writability() {
    let d = TempDir::new("status");
    let c = conf(&d, json!({"subnet": "10.12.0.0/24"}));
    run(&cmd(Command::Status, "", ""), &c).unwrap();
    assert!(!d.net().exists(), "STATUS must not create the directory");
    let blocker = d.0.join("file");
    fs::write(&blocker, "").unwrap();
    let mut v = serde_json::to_value(&c).unwrap();
    v["ipam"]["dataDir"] = json!(blocker.join("sub").to_str().unwrap());
    let bad = NetConf::parse(v.to_string().as_bytes()).unwrap();
    assert_eq!(
        run(&cmd(Command::Status, "", ""), &bad).unwrap_err().code,
        ERR_NOT_AVAILABLE
    );
}

#[test]
fn config_errors_surface_with_codes() {
    let d = TempDir::new("cfg");
    let c = conf(&d, json!({"ranges": [[{"subnet": "10.13.0.0/31"}]]}));
    let e = add(&c, "x").unwrap_err();
    assert_eq!(e.code, ERR_INVALID_CONFIG);
    assert!(e.msg.contains("10.13.0.0/31") && e.msg.contains("too small to allocate from"));
    assert!(!d.net().exists());
    // DEL needs only the storage location, so a broken range never blocks a release.
    del(&c, "x").unwrap();
}

/// 32 threads, each with its own lock file description like separate processes, never share an address;
/// on a range smaller than the crowd the surplus fails cleanly.
#[test]
fn concurrent_adds_get_distinct_addresses() {
    for (subnet, usable) in [("10.14.0.0/24", 32usize), ("10.15.0.0/27", 29)] {
        let d = TempDir::new("conc");
        let c = Arc::new(conf(&d, json!({"subnet": subnet})));
        let barrier = Arc::new(Barrier::new(32));
        let handles: Vec<_> = (0..32)
            .map(|i| {
                let (c, barrier) = (Arc::clone(&c), Arc::clone(&barrier));
                std::thread::spawn(move || {
                    barrier.wait();
                    add(&c, &format!("ctr{i}")).map(|r| first_ip(&r))
                })
            })
            .collect();
        let results: Vec<_> = handles.into_iter().map(|h| h.join().unwrap()).collect();
        let ok: HashSet<String> = results
            .iter()
            .filter_map(|r| r.as_ref().ok().cloned())
            .collect();
        let ok_count = results.iter().filter(|r| r.is_ok()).count();
        assert_eq!(ok_count, usable, "{subnet}: {results:?}");
        assert_eq!(
            ok.len(),
            usable,
            "duplicate addresses handed out: {results:?}"
        );
        let on_disk = files(&d.net())
            .into_iter()
            .filter(|f| f.starts_with("10."))
            .count();
        assert_eq!(on_disk, usable);
        for r in results.iter().filter_map(|r| r.as_ref().err()) {
            assert!(r.msg.contains("no IP addresses available"), "{}", r.msg);
        }
    }
}

/// `c` with `r` as its prevResult, as a runtime sends it on DEL.
fn with_prev_result(c: &NetConf, r: &CniResult) -> NetConf {
    let mut v = serde_json::to_value(c).unwrap();
    v["prevResult"] = r.to_value("1.1.0");
    NetConf::parse(v.to_string().as_bytes()).unwrap()
}

/// DEL with the ADD result as prevResult (as runtimes send it): releases through the fast path when the result
/// matches the records, and falls back to the full scan — with the same outcome — when it does not.
#[test]
fn del_with_prev_result_releases_exactly_the_attachments_records() {
    let d = TempDir::new("prevdel");
    let c = conf(
        &d,
        json!({"ranges": [[{"subnet": "10.1.2.0/24"}], [{"subnet": "fd00:1::/64"}]]}),
    );
    let with_prev = |r: &CniResult| with_prev_result(&c, r);
    let a = add(&c, "a").unwrap();
    let b = add(&c, "b").unwrap();
    assert_eq!(a.ips.len(), 2);
    let a_files = files(&d.net());

    // Matching prevResult: both of a's records go, b's stay.
    del(&with_prev(&a), "a").unwrap();
    let left = files(&d.net());
    for ip in &a.ips {
        assert!(!left.contains(&ip.address.addr().to_string()), "{left:?}");
    }
    for ip in &b.ips {
        assert!(left.contains(&ip.address.addr().to_string()), "{left:?}");
    }
    assert_eq!(left.len() + 2, a_files.len());

    // A prevResult naming b's addresses must not release them for "c": the scan finds c has nothing.
    add(&c, "c").unwrap();
    del(&with_prev(&b), "c").unwrap();
    let left = files(&d.net());
    for ip in &b.ips {
        assert!(left.contains(&ip.address.addr().to_string()), "{left:?}");
    }
    assert!(!left.iter().any(|f| fs::read_to_string(d.net().join(f))
        .unwrap_or_default()
        .starts_with("c\r\n")));

    // A prevResult with only one of two range sets falls back to the scan and still releases both.
    let mut partial = b.clone();
    partial.ips.truncate(1);
    del(&with_prev(&partial), "b").unwrap();
    let left = files(&d.net());
    for ip in &b.ips {
        assert!(!left.contains(&ip.address.addr().to_string()), "{left:?}");
    }
}

#[test]
fn prev_result_fast_path_only_for_matching_records() {
    let d = TempDir::new("prevfast");
    let c = conf(&d, json!({"ranges": [[{"subnet": "10.1.3.0/24"}]]}));
    let with_prev = |r: &CniResult| with_prev_result(&c, r);
    let a = add(&c, "a").unwrap();
    let b = add(&c, "b").unwrap();
    let store = Store::open_existing(&d.net()).unwrap().unwrap();
    let mut buf = Vec::new();
    let owner = store::record("a", "eth0");
    let args = cmd(Command::Del, "a", "eth0");
    let hit = prev_result_records(&args, &with_prev(&a), &store, &owner, &mut buf).unwrap();
    assert_eq!(hit.len(), 1);
    assert_eq!(hit[0].ip, Some(a.ips[0].address.addr()));
    assert!(prev_result_records(&args, &with_prev(&b), &store, &owner, &mut buf).is_none());
    assert!(prev_result_records(&args, &c, &store, &owner, &mut buf).is_none());
}

mod state_files {
    //! Every file host-local reads back — reservation records (by name and content), the round-robin cursors,
    //! `resolvConf` — parsed directly and through the commands that read them: an error or a value, never a panic.

    use super::*;
    use proptest::prelude::*;

    /// A record's possible contents: random bytes, records of this and other attachments (current and legacy
    /// layout), and one too big to be a record.
    fn arb_record() -> impl Strategy<Value = Vec<u8>> {
        prop_oneof![
            4 => prop::collection::vec(any::<u8>(), 0..700),
            2 => prop::sample::select(vec!["me\r\neth0", "me", "  me\r\neth0\n", "other\r\neth0", "me\r\n", "\r\n", ""])
                .prop_map(|s| s.as_bytes().to_vec()),
            1 => Just(vec![b'm'; 70_000]),
        ]
    }

    /// File names in a network directory: addresses inside and outside the range, in both families and odd
    /// spellings, the cursor names, and anything else.
    fn arb_name() -> impl Strategy<Value = String> {
        prop_oneof![
            (0u8..20).prop_map(|n| format!("10.20.0.{n}")),
            prop::sample::select(vec![
                "::ffff:10.20.0.3",
                "fd00::1",
                "10.20.0.999",
                "last_reserved_ip.0",
                "last_reserved_ip.1",
                "last_reserved_ip.x",
                "lock",
                ".hidden",
            ])
            .prop_map(str::to_string),
            "[a-z0-9.:]{1,12}".prop_filter("a file name", |n| n != "." && n != ".."),
        ]
    }

    fn arb_cursor() -> impl Strategy<Value = Vec<u8>> {
        prop_oneof![
            (0u8..=255).prop_map(|n| format!("10.20.0.{n}").into_bytes()),
            prop::sample::select(vec!["fd00::5", " 10.20.0.7\n", "10.20.0.7x", ""])
                .prop_map(|s| s.as_bytes().to_vec()),
            prop::collection::vec(any::<u8>(), 0..40),
        ]
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]

        #[test]
        fn parsers_never_panic(record in arb_record(), cursor in arb_cursor(), text in ".{0,300}") {
            let _ = store::parse_owner(&record);
            let _ = store::parse_last_reserved(&cursor);
            let dns = parse_resolv_conf(&text);
            prop_assert!(dns.nameservers.iter().all(|n| !n.is_empty()));
        }

        /// ADD, CHECK, DEL (with and without prevResult) and GC over a directory holding arbitrary files.
        #[test]
        fn commands_never_panic_on_stored_files(
            files in prop::collection::vec((arb_name(), arb_record()), 0..8),
            cursor in arb_cursor(),
            resolv in prop::collection::vec(any::<u8>(), 0..200),
        ) {
            let d = TempDir::new("prop");
            fs::create_dir_all(d.net()).unwrap();
            for (name, content) in &files {
                fs::write(d.net().join(name), content).unwrap();
            }
            fs::write(d.net().join("last_reserved_ip.0"), &cursor).unwrap();
            let resolv_path = d.0.join("resolv.conf");
            fs::write(&resolv_path, &resolv).unwrap();
            let c = conf(
                &d,
                json!({"ranges": [[{"subnet": "10.20.0.0/27"}]], "resolvConf": resolv_path.to_str().unwrap()}),
            );
            let added = add(&c, "me").ok();
            let _ = check(&c, "me");
            if let Some(r) = &added {
                let _ = run(&cmd(Command::Del, "me", "eth0"), &with_prev_result(&c, r));
            }
            let _ = del(&c, "me");
            let _ = run(&cmd(Command::Gc, "", ""), &gc_conf(&c, json!([{"containerID": "other", "ifname": "eth0"}])));
            // Whatever was there, this attachment holds nothing afterwards.
            let mut buf = Vec::new();
            if let Some(store) = Store::open_existing(&d.net()).unwrap() {
                for e in store.entries().unwrap() {
                    if e.ip.is_some() && store.read(&e, &mut buf) {
                        prop_assert!(buf.trim_ascii() != b"me\r\neth0", "record of 'me' left");
                    }
                }
            }
        }
    }
}
