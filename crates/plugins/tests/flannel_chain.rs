//! The `loopback` + `flannel` chain (→ `bridge` → `host-local`) attaching several pods to one node, pinging between
//! them and the gateway; our `flannel` delegating to the reference `bridge`; host-local interoperability with the
//! reference in both directions; and, as a baseline for the harness, the same topology built by the reference
//! `loopback` + `bridge` directly.

mod common;

use common::*;
use serde_json::{json, Value};
use std::path::{Path, PathBuf};

/// Every pod pings every other pod and the gateway.
fn all_ping(pods: &[Netns], ips: &[String], gateway: &str) {
    for (i, p) in pods.iter().enumerate() {
        assert!(
            ping(&p.name, gateway),
            "pod {i} cannot ping the gateway {gateway}"
        );
        for (j, ip) in ips.iter().enumerate() {
            if i != j {
                assert!(ping(&p.name, ip), "pod {i} cannot ping pod {j} ({ip})");
            }
        }
    }
}

fn assert_distinct(ips: &[String]) {
    let mut s = ips.to_vec();
    s.sort();
    s.dedup();
    assert_eq!(s.len(), ips.len(), "duplicate IPs: {ips:?}");
}

/// Kernel state of one flannel pod: lo up, eth0 with the MTU from subnet.env, routes to the cluster network and
/// the default route via the gateway; the host veth enslaved with hairpin on.
fn check_pod(node: &str, pod: &Netns, r: &Value) {
    let lo = link(&pod.name, "lo").expect("lo");
    assert!(
        lo["flags"]
            .as_array()
            .is_some_and(|f| f.iter().any(|x| x == "UP")),
        "lo is not up: {lo}"
    );
    let eth0 = link(&pod.name, "eth0").expect("eth0");
    assert_eq!(eth0["mtu"], 1450, "MTU from subnet.env: {eth0}");
    let rs = routes(&pod.name);
    let via = |dst: &str| {
        rs.iter()
            .any(|x| x["dst"] == dst && x["gateway"] == "10.244.1.1")
    };
    assert!(via("default"), "default route via the gateway: {rs:?}");
    assert!(
        via("10.244.0.0/16"),
        "cluster route via the gateway: {rs:?}"
    );
    let hv = link(node, &result_host_veth(r)).expect("host veth");
    assert_eq!(hv["master"], "cni0");
    assert_eq!(
        hv["linkinfo"]["info_slave_data"]["hairpin"], true,
        "hairpin: {hv}"
    );
    assert_eq!(hv["mtu"], 1450);
}

fn flannel_four_pods(version: &str) {
    let imp = Impl::ours();
    let sb = Sandbox::new();
    let pods = sb.pods(4);
    let rt = sb.runtime(&imp);
    let net = flannel_net(&sb, version);
    let data = sb.path("ipam");
    let node = sb.node.name.as_str();

    let atts: Vec<Att> = pods.iter().enumerate().map(|(i, p)| sb.att(i, p)).collect();
    let mut results = vec![];
    for a in &atts {
        let r = rt
            .add(&net, a)
            .unwrap_or_else(|o| panic!("ADD {version}: {o:?}"));
        assert_eq!(r["cniVersion"], version);
        let cached = flannel_cache(&sb, a);
        assert!(
            cached.is_file(),
            "flannel cache {} missing after ADD",
            cached.display()
        );
        let d: Value =
            serde_json::from_slice(&std::fs::read(&cached).unwrap()).expect("cache is JSON");
        assert_eq!(d["type"], "bridge", "{d}");
        assert_eq!(d["name"], "cbr0", "{d}");
        assert_eq!(d["cniVersion"], version, "{d}");
        assert_eq!(
            d["ipMasq"], false,
            "FLANNEL_IPMASQ=true → ipMasq false: {d}"
        );
        assert_eq!(d["mtu"], 1450, "{d}");
        assert_eq!(d["isGateway"], true, "{d}");
        assert_eq!(d["hairpinMode"], true, "{d}");
        assert_eq!(d["isDefaultGateway"], true, "{d}");
        assert_eq!(d["ipam"]["type"], "host-local", "{d}");
        assert_eq!(
            d["ipam"]["ranges"],
            json!([[{"subnet": "10.244.1.0/24"}]]),
            "{d}"
        );
        assert!(
            d["ipam"]["routes"]
                .as_array()
                .is_some_and(|r| r.contains(&json!({"dst": "10.244.0.0/16"}))),
            "{d}"
        );
        assert!(d["ipam"].get("dataDir").is_some(), "input ipam kept: {d}");
        if version != "0.2.0" {
            let ifs = r["interfaces"].as_array().expect("interfaces");
            assert_eq!(ifs.len(), 3, "{r}");
            assert_eq!(ifs[0]["name"], "cni0");
            assert_eq!(r["ips"][0]["interface"], 2, "{r}");
            assert_eq!(r["ips"][0]["gateway"], "10.244.1.1", "{r}");
            assert!(r["ips"][0]["address"]
                .as_str()
                .is_some_and(|a| a.starts_with("10.244.1.") && a.ends_with("/24")));
        }
        check_pod(node, &pods[results.len()], &r);
        results.push(r);
    }
    let ips: Vec<String> = results.iter().map(result_ip).collect();
    assert_distinct(&ips);
    assert_eq!(ip_files(&data, "cbr0").len(), 4);
    assert!(addrs(node, "cni0").contains(&"10.244.1.1/24".to_string()));
    all_ping(&pods, &ips, "10.244.1.1");

    if version_at_least(version, "0.4.0") {
        for (a, r) in atts.iter().zip(&results) {
            rt.check(&net, a, r)
                .unwrap_or_else(|o| panic!("CHECK: {o:?}"));
        }
    }

    for (a, r) in atts.iter().zip(&results) {
        rt.del(&net, a, Some(r))
            .unwrap_or_else(|o| panic!("DEL: {o:?}"));
        assert!(
            !flannel_cache(&sb, a).exists(),
            "flannel cache left after DEL"
        );
        rt.del(&net, a, Some(r))
            .unwrap_or_else(|o| panic!("second DEL: {o:?}"));
    }
    wait_no_veths(node);
    assert!(
        ip_files(&data, "cbr0").is_empty(),
        "{:?}",
        ip_files(&data, "cbr0")
    );
    for p in &pods {
        assert!(link(&p.name, "eth0").is_none());
    }
}

fn flannel_chain_0_3_1() {
    require_root();
    // The version of the upstream manifest's conflist.
    flannel_four_pods("0.3.1");
}

fn flannel_chain_1_0_0() {
    require_root();
    flannel_four_pods("1.0.0");
}

fn flannel_chain_1_1_0() {
    require_root();
    flannel_four_pods("1.1.0");
}

/// A `bridge` on the search path that records each call, then execs the reference bridge.
fn spy_bridge(dir: &Path, log: &Path) -> PathBuf {
    use std::os::unix::fs::PermissionsExt;
    std::fs::create_dir_all(dir).unwrap();
    let p = dir.join("bridge");
    std::fs::write(
        &p,
        format!(
            "#!/bin/sh\necho \"$CNI_COMMAND $CNI_CONTAINERID\" >> {}\nexec {REFERENCE_DIR}/bridge \"$@\"\n",
            log.display()
        ),
    )
    .unwrap();
    std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755)).unwrap();
    dir.to_path_buf()
}

/// Our flannel with `CNI_PATH` = the reference plugins first, then ours: `bridge` and `host-local` are the
/// reference ones (exec'd, not run in-process), and pods still reach each other.
fn ours_flannel_delegates_to_reference_bridge() {
    require_root();
    let reference = Impl::reference();
    let ours = Impl::ours();
    let sb = Sandbox::new();
    let pods = sb.pods(3);
    let log = sb.path("bridge-calls.log");
    let spy = spy_bridge(&sb.path("spy"), &log);
    let rt = sb.runtime_with_path(vec![spy, reference.dir.clone(), ours.dir.clone()]);
    assert_eq!(rt.find("flannel"), ours.bin("flannel"));
    assert_eq!(rt.find("host-local"), reference.bin("host-local"));
    let net = flannel_net(&sb, "1.0.0");
    let data = sb.path("ipam");

    let atts: Vec<Att> = pods.iter().enumerate().map(|(i, p)| sb.att(i, p)).collect();
    let results: Vec<Value> = atts
        .iter()
        .map(|a| rt.add(&net, a).unwrap_or_else(|o| panic!("ADD: {o:?}")))
        .collect();
    let ips: Vec<String> = results.iter().map(result_ip).collect();
    assert_distinct(&ips);
    for (p, r) in pods.iter().zip(&results) {
        check_pod(&sb.node.name, p, r);
    }
    all_ping(&pods, &ips, "10.244.1.1");
    for (a, r) in atts.iter().zip(&results) {
        rt.del(&net, a, Some(r))
            .unwrap_or_else(|o| panic!("DEL: {o:?}"));
        assert!(!flannel_cache(&sb, a).exists());
    }
    let calls = std::fs::read_to_string(&log).unwrap_or_default();
    for a in &atts {
        for cmd in ["ADD", "DEL"] {
            assert!(
                calls
                    .lines()
                    .any(|l| l == format!("{cmd} {}", a.container_id)),
                "the reference bridge was not exec'd for {cmd} {}: {calls}",
                a.container_id
            );
        }
    }
    assert!(veths(&sb.node.name).is_empty());
    assert!(
        ip_files(&data, "cbr0").is_empty(),
        "{:?}",
        ip_files(&data, "cbr0")
    );
}

/// host-local state is shared with the reference: an IP one allocates the other releases, and round-robin
/// allocation continues across them (`last_reserved_ip.0`).
fn host_local_interop_with_reference() {
    require_root();
    let reference = Impl::reference();
    let ours = Impl::ours();
    let sb = Sandbox::new();
    let pods = sb.pods(4);
    let data = sb.path("ipam");
    let conf = Net::new(
        "frtnet",
        "1.0.0",
        vec![bridge_conf("frtbr0", "10.244.7.0/24", &data)],
    )
    .plugin_conf(0, None);
    let rts = [sb.runtime(&reference), sb.runtime(&ours)];
    let atts: Vec<Att> = pods.iter().enumerate().map(|(i, p)| sb.att(i, p)).collect();

    // ADD alternating reference / ours / reference / ours.
    for (i, a) in atts.iter().enumerate() {
        let out = rts[i % 2].exec("host-local", "ADD", Some(a), &conf);
        assert!(
            out.ok(),
            "{} ADD: {out:?}",
            if i % 2 == 0 { "reference" } else { "ours" }
        );
        assert_eq!(
            result_ip(&out.json()),
            format!("10.244.7.{}", i + 2),
            "round robin across implementations"
        );
    }
    let files = ip_files(&data, "frtnet");
    assert_eq!(files.len(), 4);
    for (i, a) in atts.iter().enumerate() {
        assert_eq!(
            files[&format!("10.244.7.{}", i + 2)],
            format!("{}\r\neth0", a.container_id)
        );
    }
    assert_eq!(
        std::fs::read_to_string(data.join("frtnet").join("last_reserved_ip.0"))
            .unwrap()
            .trim(),
        "10.244.7.5"
    );
    // CHECK by the other implementation.
    for (i, a) in atts.iter().enumerate() {
        let out = rts[(i + 1) % 2].exec("host-local", "CHECK", Some(a), &conf);
        assert!(out.ok(), "cross CHECK: {out:?}");
    }
    // DEL by the other implementation.
    for (i, a) in atts.iter().enumerate() {
        let out = rts[(i + 1) % 2].exec("host-local", "DEL", Some(a), &conf);
        assert!(out.ok(), "cross DEL: {out:?}");
        assert!(
            ip_files_of(&data, "frtnet", &a.container_id).is_empty(),
            "IP of {} not released",
            a.container_id
        );
    }
    assert!(ip_files(&data, "frtnet").is_empty());
    // Legacy files holding only the container ID are released too.
    std::fs::write(
        data.join("frtnet").join("10.244.7.9"),
        atts[0].container_id.as_bytes(),
    )
    .unwrap();
    let out = rts[1].exec("host-local", "DEL", Some(&atts[0]), &conf);
    assert!(out.ok(), "{out:?}");
    assert!(
        ip_files(&data, "frtnet").is_empty(),
        "legacy ID-only reservation kept"
    );
}

/// Baseline for the harness: the topology flannel builds, made by the reference `loopback` + `bridge` directly
/// with the delegate configuration flannel renders. Must pass whatever state our plugins are in.
fn reference_bridge_chain_pings() {
    require_root();
    let reference = Impl::reference();
    let sb = Sandbox::new();
    let pods = sb.pods(4);
    let rt = sb.runtime(&reference);
    let data = sb.path("ipam");
    let net = Net::new(
        "cbr0",
        "0.3.1",
        vec![
            json!({"type": "loopback"}),
            json!({
                "type": "bridge",
                "hairpinMode": true,
                "isDefaultGateway": true,
                "isGateway": true,
                "ipMasq": false,
                "mtu": 1450,
                "ipam": {
                    "type": "host-local",
                    "dataDir": data,
                    "ranges": [[{"subnet": "10.244.1.0/24"}]],
                    "routes": [{"dst": "10.244.0.0/16"}],
                },
            }),
        ],
    );
    let atts: Vec<Att> = pods.iter().enumerate().map(|(i, p)| sb.att(i, p)).collect();
    let results: Vec<Value> = atts
        .iter()
        .map(|a| rt.add(&net, a).unwrap_or_else(|o| panic!("ADD: {o:?}")))
        .collect();
    let ips: Vec<String> = results.iter().map(result_ip).collect();
    assert_distinct(&ips);
    for (p, r) in pods.iter().zip(&results) {
        check_pod(&sb.node.name, p, r);
    }
    all_ping(&pods, &ips, "10.244.1.1");
    for (a, r) in atts.iter().zip(&results) {
        rt.del(&net, a, Some(r))
            .unwrap_or_else(|o| panic!("DEL: {o:?}"));
        rt.del(&net, a, Some(r))
            .unwrap_or_else(|o| panic!("second DEL: {o:?}"));
    }
    assert!(veths(&sb.node.name).is_empty());
    assert!(ip_files(&data, "cbr0").is_empty());
}

testkit::main!(
    flannel_chain_0_3_1,
    flannel_chain_1_0_0,
    flannel_chain_1_1_0,
    ours_flannel_delegates_to_reference_bridge,
    host_local_interop_with_reference,
    reference_bridge_chain_pings,
);
