//! Multi-node integration tests: real kernel, real etcd, one real `flanneld` per node namespace, pods attached
//! with our CNI plugins. See `common/mod.rs` for the topology. Each test builds its own cluster.
//!
//! Run: `cargo build -p plugins -p flanneld && cargo test -p flanneld --test cluster -- --test-threads=2` (root).

mod common;

use common::*;
use serde_json::{json, Value};
use std::collections::BTreeSet;
use std::net::{IpAddr, Ipv4Addr};
use std::time::{Duration, Instant};

fn secs(s: u64) -> Duration {
    Duration::from_secs(s)
}

fn ms(m: u64) -> Duration {
    Duration::from_millis(m)
}

/// The part of a node's log written by its most recent daemon.
fn last_run(log: &str) -> &str {
    log.rsplit("===== harness: starting flanneld")
        .next()
        .unwrap_or(log)
}

/// Node `n`'s flannel.1 MAC address.
fn link_mac(c: &Cluster, n: usize, dev: &str) -> String {
    let l = ip_json(&c.node(n).ns, &["link", "show", "dev", dev]);
    l[0]["address"].as_str().unwrap_or_default().to_string()
}

fn others(c: &Cluster, n: usize) -> Vec<usize> {
    c.node_ids().into_iter().filter(|&m| m != n).collect()
}

/// A route of node `n` to `dst` (or `None`).
fn route_to(c: &Cluster, n: usize, dst: &str) -> Option<Value> {
    c.routes(n).into_iter().find(|r| r["dst"] == dst)
}

// ------------------------------------------------------------------------------------------------
// 1. vxlan
// ------------------------------------------------------------------------------------------------

fn vxlan_three_nodes_full_mesh() {
    let mut c = Cluster::builder()
        .nodes(3)
        .backend(json!({"Type": "vxlan"}))
        .start();
    c.add_pods(2);
    c.ping_matrix(false);

    let subnets: BTreeSet<_> = c.node_ids().iter().map(|&n| c.subnet(n)).collect();
    assert_eq!(subnets.len(), 3, "distinct subnets: {subnets:?}");
    for n in c.node_ids() {
        // The VXLAN device.
        let link = c.link_details(n, "flannel.1");
        for want in ["vxlan id 1 ", "dstport 8472", "nolearning", "mtu 1450"] {
            assert!(link.contains(want), "node {n}: {want:?} not in\n{link}");
        }
        let addrs = ip_json(&c.node(n).ns, &["-4", "addr", "show", "dev", "flannel.1"]);
        let sub = c.subnet(n);
        assert!(
            addrs[0]["addr_info"]
                .as_array()
                .is_some_and(|a| a.iter().any(|x| x["local"] == sub.network().to_string())),
            "node {n}: flannel.1 carries {}: {addrs}",
            sub.network()
        );

        // subnet.env.
        let env = c.subnet_env(n);
        let gw = Ipv4Addr::from(u32::from(sub.network()) + 1);
        assert_eq!(env["FLANNEL_NETWORK"], "10.244.0.0/16", "{env:?}");
        assert_eq!(env["FLANNEL_SUBNET"], format!("{gw}/24"), "{env:?}");
        assert_eq!(env["FLANNEL_MTU"], "1450", "{env:?}");
        assert_eq!(env["FLANNEL_IPMASQ"], "true", "{env:?}");

        // The lease in etcd.
        let l = c.lease(n);
        assert_eq!(l["PublicIP"], format!("192.0.2.{n}"), "{l}");
        assert_eq!(l["BackendType"], "vxlan", "{l}");
        assert_eq!(l["BackendData"]["VNI"], 1, "{l}");
        assert!(
            l["BackendData"]["VtepMAC"]
                .as_str()
                .is_some_and(|m| m.eq_ignore_ascii_case(&link_mac(&c, n, "flannel.1"))),
            "node {n}: lease VtepMAC is flannel.1's MAC: {l}"
        );

        // Health.
        assert_eq!(c.health(n, "/readyz").map(|r| r.0), Some(200));
        assert_eq!(c.health(n, "/healthz").map(|r| r.0), Some(200));
        let st = c.status(n);
        assert_eq!(st["node"]["subnet"], sub.to_string(), "{st}");
        let peers = st["peers"].as_array().cloned().unwrap_or_default();
        assert_eq!(peers.len(), 2, "node {n} /status peers: {st}");
        assert!(peers.iter().all(|p| p["programmed"] == true), "{st}");
        assert_eq!(st["lastReconcile"]["ok"], true, "{st}");

        // Traffic rules.
        let ns = c.node(n).ns.clone();
        let post = in_ns(&ns, &["iptables", "-t", "nat", "-S", "POSTROUTING"]).must();
        assert!(post.contains("-j FLANNEL-POSTRTG"), "node {n}:\n{post}");
        let chain = in_ns(&ns, &["iptables", "-t", "nat", "-S", "FLANNEL-POSTRTG"]).must();
        assert!(chain.contains("MASQUERADE"), "node {n}:\n{chain}");
        assert!(chain.contains("10.244.0.0/16"), "node {n}:\n{chain}");
        let fwd = in_ns(&ns, &["iptables", "-t", "filter", "-S", "FORWARD"]).must();
        assert!(fwd.contains("-j FLANNEL-FWD"), "node {n}:\n{fwd}");

        // One route, neighbour and FDB entry per peer.
        for m in others(&c, n) {
            let (s, mac, public) = c.vxlan_peer(m);
            assert_eq!(public, c.node(m).ip);
            c.vxlan_programmed(n, s, &mac, public).unwrap();
        }
        let vx_routes = c
            .routes(n)
            .into_iter()
            .filter(|r| r["dev"] == "flannel.1")
            .count();
        assert_eq!(vx_routes, 2, "node {n}: one flannel.1 route per peer");
    }
    assert_eq!(c.leases().len(), 3, "{:?}", c.leases());
}

// ------------------------------------------------------------------------------------------------
// 2. vxlan with DirectRouting
// ------------------------------------------------------------------------------------------------

fn vxlan_direct_routing_on_same_segment() {
    let mut c = Cluster::builder()
        .nodes(3)
        .backend(json!({"Type": "vxlan", "DirectRouting": true}))
        .start();
    c.add_pods(1);
    for n in c.node_ids() {
        for m in others(&c, n) {
            let dst = c.subnet(m).to_string();
            let want = c.node(m).ip.to_string();
            let r = route_to(&c, n, &dst)
                .unwrap_or_else(|| panic!("node {n}: no route to {dst}: {:?}", c.routes(n)));
            assert_eq!(r["gateway"], want.as_str(), "node {n} → {dst}: {r}");
            assert_eq!(r["dev"], "eth0", "node {n} → {dst}: {r}");
            assert!(
                !c.routes(n)
                    .iter()
                    .any(|r| r["dst"] == dst.as_str() && r["dev"] == "flannel.1"),
                "node {n}: a flannel.1 route to same-segment {dst}"
            );
        }
    }
    c.ping_matrix(false);
}

// ------------------------------------------------------------------------------------------------
// 3. host-gw
// ------------------------------------------------------------------------------------------------

fn host_gw_routes_via_public_ips() {
    let mut c = Cluster::builder()
        .nodes(3)
        .backend(json!({"Type": "host-gw"}))
        .start();
    c.add_pods(2);
    for n in c.node_ids() {
        assert!(!c.has_link(n, "flannel.1"), "node {n}: no VXLAN device");
        assert_eq!(c.lease(n)["BackendType"], "host-gw");
        assert_eq!(c.subnet_env(n)["FLANNEL_MTU"], "1500");
        for m in others(&c, n) {
            let dst = c.subnet(m).to_string();
            let r = route_to(&c, n, &dst)
                .unwrap_or_else(|| panic!("node {n}: no route to {dst}: {:?}", c.routes(n)));
            assert_eq!(r["gateway"], c.node(m).ip.to_string().as_str(), "{r}");
            assert_eq!(r["dev"], "eth0", "{r}");
        }
    }
    c.ping_matrix(false);
}

// ------------------------------------------------------------------------------------------------
// 4. Restarts under a continuous ping
// ------------------------------------------------------------------------------------------------

fn restart_under_continuous_ping() {
    let mut c = Cluster::builder()
        .nodes(2)
        .backend(json!({"Type": "vxlan"}))
        .start();
    let a = c.add_pod(1);
    let b = c.add_pod(2);
    let dst = c.pods[b].ip4.unwrap();
    assert!(ping_within(&c.pods[a].ns, dst, secs(5)), "no baseline ping");

    let before: Vec<String> = c
        .node_ids()
        .iter()
        .map(|&n| std::fs::read_to_string(&c.node(n).subnet_file).unwrap())
        .collect();
    let leases_before = c.leases();

    // 50 ms apart; long enough to cover every restart (checked below).
    let mut bg = BackgroundPing::start(&c.pods[a].ns, dst, ms(50), 240, c.dir.join("ping.out"));
    assert!(
        wait_until(secs(5), ms(50), || bg.answered().len() >= 10),
        "background ping does not get answers"
    );
    let t0 = Instant::now();
    for n in [2, 1] {
        let st = c.stop(n);
        assert!(
            st.success(),
            "SIGTERM: clean exit of node {n}: {st}\n{}",
            c.log_tail(n)
        );
        // With the daemon down, its routes and the peer's stay in place.
        for m in others(&c, n) {
            let (s, mac, public) = c.vxlan_peer(m);
            c.vxlan_programmed(n, s, &mac, public)
                .unwrap_or_else(|e| panic!("node {n} down: route to node {m} gone: {e}"));
            let (s, mac, public) = c.vxlan_peer(n);
            c.vxlan_programmed(m, s, &mac, public)
                .unwrap_or_else(|e| panic!("node {n} down: node {m} lost its route: {e}"));
        }
        let seen = bg.answered().len();
        assert!(
            wait_until(secs(3), ms(20), || bg.answered().len() >= seen + 10),
            "pings stopped while node {n}'s daemon is down"
        );
        c.start(n);
        c.wait_ready(n, secs(20));
        let after = std::fs::read_to_string(&c.node(n).subnet_file).unwrap();
        assert_eq!(after, before[n - 1], "node {n} kept its subnet.env");
        for m in others(&c, n) {
            c.wait_vxlan_programmed(n, m, secs(5));
        }
    }
    // Both daemons down at the same time, then both back.
    for n in [1, 2] {
        assert!(c.stop(n).success(), "{}", c.log_tail(n));
    }
    let seen = bg.answered().len();
    assert!(
        wait_until(secs(3), ms(20), || bg.answered().len() >= seen + 10),
        "pings stopped while both daemons are down"
    );
    for n in [1, 2] {
        c.start(n);
    }
    for n in [1, 2] {
        c.wait_ready(n, secs(20));
        assert_eq!(
            std::fs::read_to_string(&c.node(n).subnet_file).unwrap(),
            before[n - 1]
        );
    }
    let restarts = t0.elapsed();
    assert!(
        bg.running(),
        "the ping ended before every restart was done ({restarts:?}): raise its count"
    );
    assert_eq!(c.leases(), leases_before, "same leases (and VTEP MACs)");
    let stats = bg.finish();
    println!(
        "restart under ping: {} of {} packets lost (missing icmp_seq {:?}); the restarts took {restarts:?}",
        stats.lost(),
        stats.transmitted,
        stats.missing
    );
    assert!(stats.transmitted >= 200, "{stats:?}");
    assert!(stats.lost() <= 1, "packets lost across restarts: {stats:?}");
}

// ------------------------------------------------------------------------------------------------
// 5. Dual stack
// ------------------------------------------------------------------------------------------------

fn dual_stack_vxlan() {
    let mut c = Cluster::builder()
        .nodes(3)
        .ipv6()
        .config(json!({
            "Network": "10.244.0.0/16",
            "EnableIPv6": true,
            "IPv6Network": "fd00:10:244::/56",
            "IPv6SubnetLen": 64,
            "Backend": {"Type": "vxlan"},
        }))
        .start();
    c.add_pods(1);
    for n in c.node_ids() {
        let env = c.subnet_env(n);
        assert_eq!(env["FLANNEL_IPV6_NETWORK"], "fd00:10:244::/56", "{env:?}");
        let s6 = c.subnet6(n);
        assert_eq!(s6.prefix_len(), 64);
        assert!(env.contains_key("FLANNEL_SUBNET"), "{env:?}");
        let l = c.lease(n);
        let want6 = c.node(n).ip6.unwrap().to_string();
        assert_eq!(l["PublicIPv6"], want6.as_str(), "{l}");
        assert!(
            l["BackendV6Data"]["VtepMAC"]
                .as_str()
                .is_some_and(|m| m.eq_ignore_ascii_case(&link_mac(&c, n, "flannel-v6.1"))),
            "{l}"
        );
        let link = c.link_details(n, "flannel-v6.1");
        assert!(link.contains("vxlan id 1 "), "{link}");
        // The kernel's route for the device's own /128 is not "reconciled" away.
        let own = s6.network().to_string();
        assert!(
            c.routes6(n)
                .iter()
                .any(|r| r["dst"] == own.as_str() && r["dev"] == "flannel-v6.1"),
            "node {n}: kernel route to {own} on flannel-v6.1 kept: {:?}",
            c.routes6(n)
        );
        for m in others(&c, n) {
            let dst = c.subnet6(m).to_string();
            let r = c
                .routes6(n)
                .into_iter()
                .find(|r| r["dst"] == dst.as_str())
                .unwrap_or_else(|| panic!("node {n}: no IPv6 route to {dst}: {:?}", c.routes6(n)));
            assert_eq!(r["dev"], "flannel-v6.1", "{r}");
        }
    }
    for p in &c.pods {
        assert!(
            p.ip4.is_some() && p.ip6.is_some(),
            "pod {} has both families: {}",
            p.ns,
            p.result
        );
        let IpAddr::V6(a) = p.ip6.unwrap() else {
            unreachable!()
        };
        assert!(
            c.subnet6(p.node).contains(&a),
            "{a} in node {}'s subnet",
            p.node
        );
    }
    c.ping_matrix(false);
    c.ping_matrix(true);
}

// ------------------------------------------------------------------------------------------------
// 6. Lease removal
// ------------------------------------------------------------------------------------------------

fn removed_lease_is_unprogrammed_everywhere() {
    let mut c = Cluster::builder()
        .nodes(3)
        .backend(json!({"Type": "vxlan"}))
        .start();
    let (s3, mac3, _) = c.vxlan_peer(3);
    for n in [1, 2] {
        c.wait_vxlan_programmed(n, 3, secs(5));
    }
    let key = c.lease_key(3);
    assert_eq!(c.del(&key), 1, "deleted {key}");
    let t = Instant::now();
    for n in [1, 2] {
        let gone = wait_until(secs(10), ms(50), || c.peer_traces(n, s3, &mac3).is_empty());
        assert!(
            gone,
            "node {n} still has node 3's entries: {:?}\n{}",
            c.peer_traces(n, s3, &mac3),
            c.log_tail(n)
        );
    }
    println!(
        "node 3's entries removed everywhere {:?} after the delete",
        t.elapsed()
    );
    // The other peers stay programmed.
    c.vxlan_programmed(1, c.subnet(2), &c.vxlan_peer(2).1, c.node(2).ip)
        .unwrap();
    let st = c.wait_exit(3, secs(10)).unwrap_or_else(|| {
        panic!(
            "node 3's flanneld still runs after its lease was revoked:\n{}",
            c.log_tail(3)
        )
    });
    let log = c.log(3);
    assert!(
        st.success(),
        "lease revoked: clean exit expected, got {st}\n{}",
        c.log_tail(3)
    );
    assert!(
        log.to_lowercase().contains("revoked"),
        "log says why:\n{log}"
    );
    assert!(c.is_running(1) && c.is_running(2));
}

// ------------------------------------------------------------------------------------------------
// 7. etcd down for 20 s
// ------------------------------------------------------------------------------------------------

fn etcd_down_twenty_seconds() {
    let mut c = Cluster::builder()
        .nodes(3)
        .backend(json!({"Type": "vxlan"}))
        .start();
    c.add_pods(1);
    c.ping_matrix(false);
    let (p1, p2, p3) = (0, 1, 2);
    // 100 ms apart for about 23 s: the outage and a little after it.
    let mut pings = vec![
        BackgroundPing::start(
            &c.pods[p1].ns,
            c.pods[p2].ip4.unwrap(),
            ms(100),
            230,
            c.dir.join("ping12.out"),
        ),
        BackgroundPing::start(
            &c.pods[p2].ns,
            c.pods[p3].ip4.unwrap(),
            ms(100),
            230,
            c.dir.join("ping23.out"),
        ),
    ];
    assert!(wait_until(secs(5), ms(50), || pings
        .iter()
        .all(|p| p.answered().len() >= 3)));

    c.kill_etcd();
    let down = Instant::now();
    while down.elapsed() < secs(20) {
        for n in c.node_ids() {
            assert!(
                c.is_running(n),
                "node {n}'s flanneld exited while etcd was down ({:?}):\n{}",
                c.node(n).last_exit,
                c.log_tail(n)
            );
        }
        assert_eq!(c.health(1, "/healthz").map(|r| r.0), Some(200));
        std::thread::sleep(ms(1000).min(secs(20).saturating_sub(down.elapsed())));
    }
    // The pings span the whole outage (their loss is checked below).
    for p in &mut pings {
        let n = p.answered().len();
        assert!(
            p.running(),
            "the ping ended before the outage did: raise its count"
        );
        assert!(n >= 150, "only {n} answers by the end of the outage");
    }
    c.start_etcd();
    println!("etcd was down for {:?}", down.elapsed());
    let stats: Vec<PingStats> = pings.into_iter().map(BackgroundPing::finish).collect();
    for s in &stats {
        println!(
            "during the etcd outage: {} of {} lost ({:?})",
            s.lost(),
            s.transmitted,
            s.missing
        );
        assert!(s.lost() <= 1, "traffic did not keep flowing: {s:?}");
    }

    // The daemons recover: a node joining now is programmed by everyone.
    let t = Instant::now();
    let n4 = c.add_node();
    c.start(n4);
    c.wait_ready(n4, secs(20));
    for n in 1..=3 {
        c.wait_vxlan_programmed(n, n4, secs(15));
        c.wait_vxlan_programmed(n4, n, secs(5));
    }
    println!(
        "a new node was programmed everywhere {:?} after etcd came back",
        t.elapsed()
    );
    let p4 = c.add_pod(n4);
    c.ping_matrix_of(&[p1, p2, p3, p4], false);
    for n in 1..=3 {
        assert!(c.is_running(n));
        assert_eq!(c.health(n, "/readyz").map(|r| r.0), Some(200));
    }
}

// ------------------------------------------------------------------------------------------------
// 8. A peer removed while a daemon was down is cleaned at its start
// ------------------------------------------------------------------------------------------------

fn stale_peer_removed_at_start() {
    let mut c = Cluster::builder()
        .nodes(3)
        .backend(json!({"Type": "vxlan"}))
        .start();
    let a = c.add_pod(1);
    let b = c.add_pod(2);
    let (s3, mac3, pub3) = c.vxlan_peer(3);
    c.wait_vxlan_programmed(2, 3, secs(5));

    assert!(c.stop(2).success());
    let key = c.lease_key(3);
    assert_eq!(c.del(&key), 1);
    // Node 3 goes away (its lease is revoked) and node 1, which is up, forgets it.
    c.wait_exit(3, secs(10))
        .unwrap_or_else(|| panic!("node 3 did not exit:\n{}", c.log_tail(3)));
    assert!(
        wait_until(secs(10), ms(50), || c.peer_traces(1, s3, &mac3).is_empty()),
        "node 1 kept node 3: {:?}",
        c.peer_traces(1, s3, &mac3)
    );
    // Node 2's daemon is down: nothing removed node 3 there yet.
    c.vxlan_programmed(2, s3, &mac3, pub3)
        .expect("node 3 still programmed on node 2 while its daemon is down");

    c.start(2);
    let t = Instant::now();
    c.wait_ready(2, secs(20));
    assert!(
        wait_until(secs(10), ms(20), || c.peer_traces(2, s3, &mac3).is_empty()),
        "node 2 did not remove stale node 3 at start: {:?}\n{}",
        c.peer_traces(2, s3, &mac3),
        c.log_tail(2)
    );
    println!(
        "stale peer removed {:?} after the daemon started",
        t.elapsed()
    );
    c.wait_vxlan_programmed(2, 1, secs(5));
    c.ping_matrix_of(&[a, b], false);
}

// ------------------------------------------------------------------------------------------------
// 9. 50 daemons acquiring at once
// ------------------------------------------------------------------------------------------------

fn fifty_daemons_get_fifty_distinct_subnets() {
    const N: usize = 50;
    let mut c = Cluster::builder()
        .nodes(N)
        .backend(json!({"Type": "host-gw"}))
        .no_ip_masq()
        .flanneld_args(&["--iptables-forward-rules=false"])
        .build();
    let t0 = Instant::now();
    c.start_all();
    let all = wait_until(secs(60), ms(100), || {
        c.nodes.iter().all(|n| n.subnet_file.is_file())
    });
    let took = t0.elapsed();
    if !all {
        let missing: Vec<usize> = c
            .nodes
            .iter()
            .filter(|n| !n.subnet_file.is_file())
            .map(|n| n.n)
            .collect();
        let first = missing[0];
        panic!(
            "{} of {N} daemons had no subnet after {took:?}: {missing:?}\nlog of node {first}:\n{}",
            missing.len(),
            c.log_tail(first)
        );
    }
    println!("{N} daemons acquired {N} leases in {took:?}");
    for n in c.node_ids() {
        assert!(c.is_running(n), "node {n} exited:\n{}", c.log_tail(n));
    }
    let subnets: BTreeSet<String> = c
        .node_ids()
        .iter()
        .map(|&n| c.subnet_env(n)["FLANNEL_SUBNET"].clone())
        .collect();
    assert_eq!(
        subnets.len(),
        N,
        "distinct FLANNEL_SUBNET values: {subnets:?}"
    );
    let leases = c.leases();
    assert_eq!(leases.len(), N, "leases in etcd: {:?}", leases.keys());
    let publics: BTreeSet<String> = leases
        .values()
        .map(|l| l["PublicIP"].as_str().unwrap_or_default().to_string())
        .collect();
    let want: BTreeSet<String> = (1..=N).map(|n| format!("192.0.2.{n}")).collect();
    assert_eq!(publics, want);
    for n in c.node_ids() {
        assert!(leases.contains_key(&c.lease_key(n)), "node {n}'s lease");
    }
    // And they see each other: node 1 routes to all 49 peers.
    let t = Instant::now();
    let full = wait_until(secs(20), ms(200), || {
        c.routes(1)
            .iter()
            .filter(|r| {
                r["dev"] == "eth0" && r["dst"].as_str().is_some_and(|d| d.starts_with("10.244."))
            })
            .count()
            == N - 1
    });
    assert!(full, "node 1 routes: {:?}\n{}", c.routes(1), c.log_tail(1));
    println!(
        "node 1 had all {} peer routes {:?} later",
        N - 1,
        t.elapsed()
    );
}

// ------------------------------------------------------------------------------------------------
// 10. Bad config
// ------------------------------------------------------------------------------------------------

fn bad_config_exits_naming_key_and_value() {
    let mut c = Cluster::builder().nodes(1).no_config().build();
    let key = format!("{ETCD_PREFIX}/config");

    // A missing config is waited for, not fatal.
    c.start(1);
    let t = Instant::now();
    while t.elapsed() < secs(3) {
        assert!(
            c.is_running(1),
            "flanneld exited while the config key is missing:\n{}",
            c.log_tail(1)
        );
        std::thread::sleep(ms(100));
    }
    let log = c.log(1);
    assert!(
        last_run(&log).contains("config") && last_run(&log).contains("retrying"),
        "says it waits for the config:\n{log}"
    );
    c.put(
        &key,
        &json!({"Network": "10.244.0.0/16", "Backend": {"Type": "host-gw"}}).to_string(),
    );
    c.wait_ready(1, secs(20));
    assert!(c.stop(1).success());

    for (cfg, words) in [
        (
            json!({"Network": "10.244.0.0/33"}),
            &["Network", "10.244.0.0/33"][..],
        ),
        (
            json!({"Network": "not-a-cidr"}),
            &["Network", "not-a-cidr"][..],
        ),
        (
            json!({"Network": "10.244.0.0/16", "SubnetLen": 31}),
            &["SubnetLen", "31"][..],
        ),
        (
            json!({"Network": "10.244.0.0/16", "SubnetMin": "10.244.200.0", "SubnetMax": "10.244.100.0"}),
            &["SubnetMin", "10.244.200.0", "SubnetMax", "10.244.100.0"][..],
        ),
        (
            json!({"Network": "10.244.0.0/16", "Backend": {"Type": "bogus"}}),
            &["Backend.Type", "bogus"][..],
        ),
    ] {
        c.put(&key, &cfg.to_string());
        c.start(1);
        let st = c.wait_exit(1, secs(15)).unwrap_or_else(|| {
            panic!(
                "flanneld kept running with config {cfg}:\n{}",
                c.log_tail(1)
            )
        });
        let log = c.log(1);
        let run = last_run(&log);
        assert!(
            !st.success(),
            "config {cfg}: non-zero exit expected, got {st}\n{run}"
        );
        for w in words {
            assert!(
                run.contains(w),
                "config {cfg}: {w:?} not named in the log:\n{run}"
            );
        }
        println!(
            "config {cfg} → {st}: {}",
            run.lines().last().unwrap_or_default()
        );
    }
}

testkit::main!(
    vxlan_three_nodes_full_mesh,
    vxlan_direct_routing_on_same_segment,
    host_gw_routes_via_public_ips,
    restart_under_continuous_ping,
    dual_stack_vxlan,
    removed_lease_is_unprogrammed_everywhere,
    etcd_down_twenty_seconds,
    stale_peer_removed_at_start,
    fifty_daemons_get_fifty_distinct_subnets,
    bad_config_exits_naming_key_and_value,
);
