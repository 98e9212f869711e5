//! What operators see: log lines, verbosity, messages about an unreachable store, and who may read `/status`.
//! Real daemons in namespaces (see `common/mod.rs`).
//!
//! Run: `cargo build -p plugins -p flanneld && cargo test -p flanneld --test operator -- --test-threads=2`.

mod common;

use common::*;
use serde_json::json;
use std::net::SocketAddr;
use std::time::Duration;

fn secs(s: u64) -> Duration {
    Duration::from_secs(s)
}

fn ms(m: u64) -> Duration {
    Duration::from_millis(m)
}

/// Log lines of a dependency (the HTTP/2, gRPC, HTTP and TLS stacks under the etcd client).
fn dependency_lines(log: &str) -> Vec<&str> {
    log.lines()
        .filter(|l| {
            [
                " h2::",
                " tonic",
                " hyper",
                " tower",
                " rustls",
                " etcd_client",
            ]
            .iter()
            .any(|t| l.contains(t))
        })
        .collect()
}

fn verbose_logging_raises_flannels_own_messages_only() {
    let c = Cluster::builder()
        .nodes(2)
        .backend(json!({"Type": "vxlan"}))
        .flanneld_args(&["-v=1"])
        .start();
    c.wait_vxlan_programmed(1, 2, secs(10));
    // A few seconds of normal work over etcd (watches, a renewal check, reconcile passes).
    std::thread::sleep(secs(3));
    let log = c.log(1);
    assert!(
        log.lines()
            .any(|l| l.contains(" DEBUG ") && (l.contains(" flanneld") || l.contains(" subnet"))),
        "-v=1 shows flannel-rs's debug messages:\n{}",
        c.log_tail(1)
    );
    let deps = dependency_lines(&log);
    assert!(
        deps.is_empty(),
        "{} of {} lines are dependencies' (first: {:?})",
        deps.len(),
        log.lines().count(),
        deps.first()
    );
}

fn log_names_interface_backend_device_subnet_and_each_peer() {
    let mut c = Cluster::builder()
        .nodes(2)
        .backend(json!({"Type": "vxlan"}))
        .start();
    c.wait_vxlan_programmed(1, 2, secs(10));
    let s1 = c.subnet(1);
    let s2 = c.subnet(2);
    let added = format!("subnet added: {s2} via 192.0.2.2");
    let ok = wait_until(secs(10), ms(100), || c.log(1).contains(&added));
    assert!(ok, "{added:?} not logged:\n{}", c.log_tail(1));
    let log = c.log(1);
    for want in [
        "Using interface with name eth0 and address 192.0.2.1".to_string(),
        "using backend vxlan on interface eth0".to_string(),
        "VXLAN device flannel.1: VNI 1, UDP port 8472, local 192.0.2.1 on eth0".to_string(),
        format!("acquired lease: {s1}"),
    ] {
        assert!(log.contains(&want), "{want:?} not in the log:\n{log}");
    }
    assert_eq!(log.matches(&added).count(), 1, "one line per peer:\n{log}");
    // The peer leaves: one line.
    let key = c.lease_key(2);
    c.kill(2);
    assert_eq!(c.del(&key), 1);
    let removed = format!("subnet removed: {s2}");
    let ok = wait_until(secs(10), ms(100), || c.log(1).contains(&removed));
    assert!(ok, "{removed:?} not logged:\n{}", c.log_tail(1));
}

fn status_answers_loopback_only_unless_asked() {
    let mut c = Cluster::builder()
        .nodes(2)
        .backend(json!({"Type": "vxlan"}))
        .build();
    c.node_mut(2).extra_args.push("--status-remote".into());
    c.start_all();
    c.wait_all_ready(secs(30));
    let from_fabric = |n: u8, path: &str| {
        let addr = SocketAddr::from(([192, 0, 2, n], HEALTHZ_PORT));
        http_get(&c.fabric, addr, path, secs(2))
            .unwrap_or_else(|| panic!("no answer from node {n} for {path}"))
    };
    // Node 1: health endpoints answer everyone, /status only its own host.
    assert_eq!(from_fabric(1, "/healthz").0, 200);
    assert_eq!(from_fabric(1, "/readyz").0, 200);
    let (code, body) = from_fabric(1, "/status");
    assert_eq!(code, 403, "{body}");
    assert!(body.contains("--status-remote"), "{body}");
    assert_eq!(c.status(1)["node"]["publicIP"], "192.0.2.1");
    // Node 2 was asked to serve it remotely.
    let (code, body) = from_fabric(2, "/status");
    assert_eq!(code, 200, "{body}");
    assert!(body.contains("\"publicIP\":\"192.0.2.2\""), "{body}");
}

fn unreachable_etcd_is_named_with_endpoints_and_cause() {
    let mut c = Cluster::builder()
        .nodes(1)
        .backend(json!({"Type": "vxlan"}))
        .build();
    c.kill_etcd();
    c.start(1);
    let said = wait_until(secs(15), ms(100), || {
        c.log(1).lines().any(|l| {
            l.contains("etcd at http://192.0.2.254:2379") && l.contains("connection refused")
        })
    });
    assert!(
        said,
        "the log does not say which etcd and why:\n{}",
        c.log_tail(1)
    );
    // And it keeps trying: once etcd is back the node gets ready.
    c.start_etcd();
    c.wait_ready(1, secs(30));
}

/// A node whose kubelet runs the legacy iptables (its `KUBE-IPTABLES-HINT` chain is in the legacy tables) gets
/// flannel's chains there too, whatever `iptables` resolves to: a packet passes both variants' FORWARD, so an
/// ACCEPT in the other variant would not help against a DROP policy in this one.
fn iptables_rules_go_where_the_kubelets_are() {
    let mut c = Cluster::builder()
        .nodes(1)
        .backend(json!({"Type": "vxlan"}))
        .build();
    let ns = c.node(1).ns.clone();
    in_ns(
        &ns,
        &[
            "iptables-legacy",
            "-t",
            "mangle",
            "-N",
            "KUBE-IPTABLES-HINT",
        ],
    )
    .must();
    in_ns(
        &ns,
        &[
            "iptables-legacy",
            "-t",
            "filter",
            "-N",
            "KUBE-KUBELET-CANARY",
        ],
    )
    .must();
    c.start(1);
    c.wait_ready(1, secs(30));
    let legacy = in_ns(&ns, &["iptables-legacy-save"]).must();
    let nft = in_ns(&ns, &["iptables-nft-save"]).must();
    assert!(
        legacy.contains(":FLANNEL-POSTRTG") && legacy.contains(":FLANNEL-FWD"),
        "flannel's chains are in the legacy tables:\n{legacy}\n{}",
        c.log_tail(1)
    );
    assert!(!nft.contains("FLANNEL-"), "and not in nf_tables:\n{nft}");
    assert!(
        c.log(1).contains("iptables variant chosen"),
        "{}",
        c.log_tail(1)
    );
}

testkit::main!(
    verbose_logging_raises_flannels_own_messages_only,
    log_names_interface_backend_device_subnet_and_each_peer,
    status_answers_loopback_only_unless_asked,
    unreachable_etcd_is_named_with_endpoints_and_cause,
    iptables_rules_go_where_the_kubelets_are,
);
