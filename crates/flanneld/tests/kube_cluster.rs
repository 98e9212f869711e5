//! flanneld in Kubernetes mode (`--kube-subnet-mgr`): real daemons in node namespaces against an in-process API
//! server in the fabric that speaks the real API (see the apiserver-fake crate); pods attached with our CNI
//! plugins. See `common/mod.rs` for the topology.
//!
//! Run: `cargo build -p plugins -p flanneld && cargo test -p flanneld --test kube_cluster -- --test-threads=2`.

mod common;

use common::*;
use serde_json::{json, Value};
use std::net::Ipv4Addr;
use std::time::{Duration, Instant};

const P: &str = "flannel.alpha.coreos.com";

fn secs(s: u64) -> Duration {
    Duration::from_secs(s)
}

fn ms(m: u64) -> Duration {
    Duration::from_millis(m)
}

fn kube_cluster(nodes: usize, backend: &str) -> Builder {
    Cluster::builder()
        .nodes(nodes)
        .kube()
        .config(json!({"Network": "10.244.0.0/16", "Backend": {"Type": backend}}))
}

fn annotations(c: &Cluster, n: usize) -> Value {
    c.api()
        .node(&Cluster::node_name(n))
        .map(|v| v["metadata"]["annotations"].clone())
        .unwrap_or(Value::Null)
}

/// Upstream flannel's annotations of a vxlan node (VNI 1).
fn peer_annotations(mac: &str, public_ip: &str) -> Value {
    json!({
        format!("{P}/kube-subnet-manager"): "true",
        format!("{P}/backend-type"): "vxlan",
        format!("{P}/backend-data"): format!("{{\"VNI\":1,\"VtepMAC\":\"{mac}\"}}"),
        format!("{P}/public-ip"): public_ip,
    })
}

/// A Node no flanneld of the test runs on, annotated as flanneld on it would have done.
fn add_peer_node(c: &Cluster, name: &str, pod_cidr: &str, mac: &str, public_ip: &str) {
    c.api().add_node(
        name,
        &[pod_cidr],
        peer_annotations(mac, public_ip),
        public_ip,
    );
}

fn link_mac(c: &Cluster, n: usize, dev: &str) -> String {
    let l = ip_json(&c.node(n).ns, &["link", "show", "dev", dev]);
    l[0]["address"].as_str().unwrap_or_default().to_string()
}

fn vxlan_three_nodes_from_node_podcidrs() {
    let mut c = kube_cluster(3, "vxlan").start();
    c.add_pods(2);
    c.ping_matrix(false);
    for n in c.node_ids() {
        // The subnet is the Node's podCIDR.
        assert_eq!(c.subnet(n).to_string(), format!("10.244.{n}.0/24"));
        // Upstream's annotations, exactly.
        let a = annotations(&c, n);
        assert_eq!(a[format!("{P}/kube-subnet-manager")], "true", "{a}");
        assert_eq!(a[format!("{P}/backend-type")], "vxlan", "{a}");
        assert_eq!(a[format!("{P}/public-ip")], format!("192.0.2.{n}"), "{a}");
        let data: Value =
            serde_json::from_str(a[format!("{P}/backend-data")].as_str().unwrap()).unwrap();
        assert_eq!(data["VNI"], 1, "{a}");
        assert!(
            data["VtepMAC"]
                .as_str()
                .is_some_and(|m| m.eq_ignore_ascii_case(&link_mac(&c, n, "flannel.1"))),
            "node {n}: backend-data VtepMAC is flannel.1's MAC: {a}"
        );
        // The condition, on nodes/<name>/status.
        let node = c.api().node(&Cluster::node_name(n)).unwrap();
        let cond = node["status"]["conditions"]
            .as_array()
            .and_then(|cs| cs.iter().find(|x| x["type"] == "NetworkUnavailable"))
            .cloned()
            .unwrap_or(Value::Null);
        assert_eq!(
            (cond["status"].as_str(), cond["reason"].as_str()),
            (Some("False"), Some("FlannelIsUp")),
            "{node}"
        );
        // Every peer programmed.
        let st = c.status(n);
        assert_eq!(st["peers"].as_array().map(Vec::len), Some(2), "{st}");
        assert!(
            st["peers"]
                .as_array()
                .unwrap()
                .iter()
                .all(|p| p["programmed"] == true),
            "{st}"
        );
    }
    // Every patch went to the status subresource as a strategic-merge patch.
    let patches = c.api().patches();
    assert!(patches.len() >= 6, "{patches:?}");
    assert!(patches.iter().all(|p| p.path.ends_with("/status")
        && p.content_type == "application/strategic-merge-patch+json"));
}

fn host_gw_three_nodes_from_node_podcidrs() {
    let mut c = kube_cluster(3, "host-gw").start();
    c.add_pods(1);
    c.ping_matrix(false);
    for n in c.node_ids() {
        let a = annotations(&c, n);
        assert_eq!(a[format!("{P}/backend-type")], "host-gw", "{a}");
        assert_eq!(a[format!("{P}/backend-data")], "null", "{a}");
        for m in c.node_ids().into_iter().filter(|&m| m != n) {
            let dst = format!("10.244.{m}.0/24");
            let r = c.routes(n).into_iter().find(|r| r["dst"] == dst.as_str());
            assert!(
                r.as_ref()
                    .is_some_and(|r| r["gateway"] == format!("192.0.2.{m}").as_str()),
                "node {n}: route to {dst}: {r:?}"
            );
        }
    }
}

fn node_without_podcidr_waits_and_says_so() {
    let mut c = kube_cluster(2, "vxlan").build();
    c.api().set_pod_cidrs("n2", &[]);
    c.start_all();
    c.wait_ready(1, secs(30));
    // Node 2 keeps running, not ready, and says why on /readyz and in its log.
    let said = wait_until(secs(15), ms(100), || {
        c.health(2, "/readyz")
            .is_some_and(|(code, body)| code == 503 && body.contains("no podCIDR yet"))
    });
    assert!(
        said,
        "/readyz: {:?}\n{}",
        c.health(2, "/readyz"),
        c.log_tail(2)
    );
    assert!(c.is_running(2), "node 2 exited:\n{}", c.log_tail(2));
    assert!(c.log(2).contains("no podCIDR yet"), "{}", c.log_tail(2));
    // The controller manager assigns it: node 2 comes up and the nodes reach each other.
    c.api().set_pod_cidrs("n2", &["10.244.2.0/24"]);
    c.wait_ready(2, secs(60));
    c.wait_vxlan_programmed(1, 2, secs(10));
    c.wait_vxlan_programmed(2, 1, secs(10));
}

fn peers_follow_node_changes_and_ignore_malformed_nodes() {
    let mut c = kube_cluster(2, "vxlan").start();
    c.wait_vxlan_programmed(1, 2, secs(10));
    // A Node flanneld does not run on yet, annotated as a peer.
    add_peer_node(&c, "n9", "10.244.9.0/24", "0e:00:00:00:00:09", "192.0.2.9");
    let s9: ipnet::Ipv4Net = "10.244.9.0/24".parse().unwrap();
    wait_ok(secs(10), ms(50), || {
        c.vxlan_programmed(1, s9, "0e:00:00:00:00:09", Ipv4Addr::new(192, 0, 2, 9))
    })
    .unwrap_or_else(|e| panic!("n9 not programmed: {e}"));
    // Its public IP changes.
    c.api()
        .annotate("n9", &format!("{P}/public-ip"), Some("192.0.2.19"));
    wait_ok(secs(10), ms(50), || {
        c.vxlan_programmed(1, s9, "0e:00:00:00:00:09", Ipv4Addr::new(192, 0, 2, 19))
    })
    .unwrap_or_else(|e| panic!("n9's new public IP not programmed: {e}"));
    // Malformed annotations on another Node: ignored with a line naming it; nothing taken over.
    c.api().add_node(
        "evil",
        &["10.244.2.0/24"],
        {
            let mut a = peer_annotations("0e:00:00:00:00:66", "192.0.2.66");
            a[format!("{P}/backend-data")] = json!("{not json");
            a
        },
        "192.0.2.66",
    );
    add_peer_node(
        &c,
        "evil2",
        "10.99.0.0/24",
        "0e:00:00:00:00:77",
        "192.0.2.77",
    );
    let logged = wait_until(secs(10), ms(100), || {
        let l = c.log(1);
        l.contains("\"evil\"") && l.contains("backend-data") && l.contains("10.99.0.0/24")
    });
    assert!(logged, "{}", c.log_tail(1));
    c.wait_vxlan_programmed(1, 2, secs(5));
    assert!(
        c.routes(1).iter().all(|r| r["dst"] != "10.99.0.0/24"),
        "{:?}",
        c.routes(1)
    );
    assert!(c.is_running(1));
    // Flannel's annotations removed: it is no peer any more; a deleted Node neither.
    c.api()
        .annotate("n9", &format!("{P}/kube-subnet-manager"), None);
    let gone = wait_until(secs(10), ms(50), || {
        c.peer_traces(1, s9, "0e:00:00:00:00:09").is_empty()
    });
    assert!(gone, "{:?}", c.peer_traces(1, s9, "0e:00:00:00:00:09"));
    let (s2, mac2, _) = c.vxlan_peer(2);
    c.api().delete_node("n2");
    let gone = wait_until(secs(10), ms(50), || c.peer_traces(1, s2, &mac2).is_empty());
    assert!(gone, "{:?}", c.peer_traces(1, s2, &mac2));
}

fn api_server_down_sixty_seconds_under_ping() {
    let mut c = kube_cluster(2, "vxlan").start();
    let a = c.add_pod(1);
    let b = c.add_pod(2);
    c.ping_matrix_of(&[a, b], false);
    let dst = c.pods[b].ip4.expect("pod b IPv4");
    let out = c.dir.join("ping-api-down.log");
    let ping = BackgroundPing::start(&c.pods[a].ns.clone(), dst, ms(250), 300, out);
    let (s2, mac2, pub2) = c.vxlan_peer(2);
    let before_cpu = cpu_ticks(&c, 1);
    c.api().set_up(false);
    let down = Instant::now();
    while down.elapsed() < secs(60) {
        // Nothing of node 2 is ever removed while the API is away.
        c.vxlan_programmed(1, s2, &mac2, pub2)
            .unwrap_or_else(|e| panic!("entries removed while the API was down: {e}"));
        std::thread::sleep(ms(1000));
    }
    let used = cpu_ticks(&c, 1).saturating_sub(before_cpu);
    c.api().set_up(true);
    let stats = ping.finish();
    println!(
        "API down 60 s: {} of {} pings lost; flanneld used {used} CPU ticks",
        stats.lost(),
        stats.transmitted
    );
    assert_eq!(stats.lost(), 0, "{stats:?}");
    // No busy loop: well under a tenth of a core over the minute (100 ticks/s).
    assert!(
        used < 600,
        "flanneld spun while the API was down: {used} ticks in 60 s"
    );
    // Back: a change is seen again.
    add_peer_node(&c, "n9", "10.244.9.0/24", "0e:00:00:00:00:09", "192.0.2.9");
    wait_ok(secs(60), ms(100), || {
        c.vxlan_programmed(
            1,
            "10.244.9.0/24".parse().unwrap(),
            "0e:00:00:00:00:09",
            Ipv4Addr::new(192, 0, 2, 9),
        )
    })
    .unwrap_or_else(|e| {
        panic!(
            "a change after the API came back was not programmed: {e}\n{}",
            c.log_tail(1)
        )
    });
}

/// User + system CPU ticks of node `n`'s flanneld.
fn cpu_ticks(c: &Cluster, n: usize) -> u64 {
    let pid = c.pid(n).expect("running");
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // Fields after the command (which may contain spaces) start after the last ')'.
    let rest = stat.rsplit(')').next().unwrap_or_default();
    let f: Vec<&str> = rest.split_whitespace().collect();
    let get = |i: usize| f.get(i).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0);
    get(11) + get(12)
}

fn vtep_mac_from_the_annotation_survives_restarts() {
    let mut c = kube_cluster(2, "vxlan").build();
    // Node 1 ran upstream flannel before: its Node carries the MAC upstream chose; the device is gone (reboot).
    c.api().annotate(
        "n1",
        &format!("{P}/backend-data"),
        Some("{\"VNI\":1,\"VtepMAC\":\"02:42:ac:11:00:09\"}"),
    );
    c.start_all();
    c.wait_all_ready(secs(30));
    assert_eq!(link_mac(&c, 1, "flannel.1"), "02:42:ac:11:00:09");
    c.wait_vxlan_programmed(2, 1, secs(10));
    // A restart, and a restart after the device was deleted: the same MAC, so peers never see it change.
    c.restart(1, secs(30));
    assert_eq!(link_mac(&c, 1, "flannel.1"), "02:42:ac:11:00:09");
    c.stop(1);
    in_ns(&c.node(1).ns.clone(), &["ip", "link", "del", "flannel.1"]).must();
    c.start(1);
    c.wait_ready(1, secs(30));
    assert_eq!(link_mac(&c, 1, "flannel.1"), "02:42:ac:11:00:09");
    let a = annotations(&c, 1);
    assert!(
        a[format!("{P}/backend-data")]
            .as_str()
            .is_some_and(|d| d.contains("02:42:ac:11:00:09")),
        "{a}"
    );
    c.wait_vxlan_programmed(2, 1, secs(10));
}

fn dual_stack_from_podcidrs() {
    let mut c = Cluster::builder()
        .nodes(2)
        .kube()
        .ipv6()
        .config(json!({"Network": "10.244.0.0/16", "EnableIPv6": true, "IPv6Network": "fd00:10:244::/56",
                       "Backend": {"Type": "vxlan"}}))
        .start();
    c.add_pods(1);
    c.ping_matrix(false);
    c.ping_matrix(true);
    let a = annotations(&c, 1);
    assert_eq!(a[format!("{P}/public-ipv6")], "2001:db8:1::1", "{a}");
    assert!(
        a[format!("{P}/backend-v6-data")]
            .as_str()
            .is_some_and(|d| d.contains("VtepMAC")),
        "{a}"
    );
}

fn missing_rights_or_kubeconfig_exit_with_a_clear_error() {
    let mut c = kube_cluster(2, "vxlan").build();
    c.api().forbid("patch", "nodes/status");
    c.start(1);
    let st = c
        .wait_exit(1, secs(30))
        .unwrap_or_else(|| panic!("flanneld kept running:\n{}", c.log_tail(1)));
    assert!(!st.success());
    let log = c.log(1);
    assert!(
        log.contains("patch") && log.contains("nodes/status") && log.contains("forbidden"),
        "{log}"
    );
    // A kubeconfig that is not there.
    let nope = format!("--kubeconfig-file={}", c.dir.join("nope").display());
    c.node_mut(2).extra_args.push(nope);
    c.start(2);
    let st = c
        .wait_exit(2, secs(30))
        .unwrap_or_else(|| panic!("flanneld kept running:\n{}", c.log_tail(2)));
    assert!(!st.success());
    assert!(c.log(2).contains("nope"), "{}", c.log_tail(2));
}

/// As in a pod: no kubeconfig, the API from `KUBERNETES_SERVICE_HOST/PORT`, the service account's token and CA at
/// the fixed path. Then the token rotates (the kubelet rewrites the projected file; the old token stops working):
/// flanneld reads the file again and keeps following the Nodes. The client re-reads a token file at most once a
/// minute, so the bound below is generous.
fn in_cluster_service_account_and_token_rotation() {
    let mut c = kube_cluster(1, "vxlan").build();
    c.in_cluster(1);
    c.start(1);
    c.wait_ready(1, secs(30));
    assert!(
        c.log(1).contains("192.0.2.254:6443"),
        "the in-cluster server is used: {}",
        c.log_tail(1)
    );
    let token = c.service_account_token_path(1);
    fs_write(&token, "rotated-token");
    c.api().rotate_token("rotated-token");
    add_peer_node(&c, "n9", "10.244.9.0/24", "0e:00:00:00:00:09", "192.0.2.9");
    let s9: ipnet::Ipv4Net = "10.244.9.0/24".parse().unwrap();
    wait_ok(secs(150), ms(500), || {
        c.vxlan_programmed(1, s9, "0e:00:00:00:00:09", Ipv4Addr::new(192, 0, 2, 9))
    })
    .unwrap_or_else(|e| {
        panic!(
            "no Node watch with the rotated token: {e}\n{}",
            c.log_tail(1)
        )
    });
    assert!(c.is_running(1), "{}", c.log_tail(1));
}

fn fs_write(p: &std::path::Path, s: &str) {
    std::fs::write(p, s).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
}

testkit::main!(
    vxlan_three_nodes_from_node_podcidrs,
    host_gw_three_nodes_from_node_podcidrs,
    node_without_podcidr_waits_and_says_so,
    peers_follow_node_changes_and_ignore_malformed_nodes,
    api_server_down_sixty_seconds_under_ping,
    vtep_mac_from_the_annotation_survives_restarts,
    dual_stack_from_podcidrs,
    missing_rights_or_kubeconfig_exit_with_a_clear_error,
    in_cluster_service_account_and_token_rotation,
);
