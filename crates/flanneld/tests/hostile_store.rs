//! Whatever is in the store, the data plane stays the cluster's: leases written by someone who can write under the
//! etcd prefix (not by a flanneld) are checked before anything is programmed. Real kernel, real etcd, real daemons
//! (see `common/mod.rs`).
//!
//! Run: `cargo build -p plugins -p flanneld && cargo test -p flanneld --test hostile_store -- --test-threads=2`.

mod common;

use common::*;
use serde_json::{json, Value};
use std::net::Ipv4Addr;
use std::time::Duration;

fn secs(s: u64) -> Duration {
    Duration::from_secs(s)
}

fn ms(m: u64) -> Duration {
    Duration::from_millis(m)
}

/// Nodes lease below 10.244.100.0; the tests write their own leases above it, so they never hit a node's key.
fn config() -> Value {
    json!({"Network": "10.244.0.0/16", "SubnetMax": "10.244.99.0", "Backend": {"Type": "vxlan"}})
}

fn key(k: &str) -> String {
    format!("{ETCD_PREFIX}/subnets/{k}")
}

fn vxlan_value(public: &str, mac: &str) -> String {
    json!({"PublicIP": public, "PublicIPv6": null, "BackendType": "vxlan",
           "BackendData": {"VNI": 1, "VtepMAC": mac}})
    .to_string()
}

/// The raw value under an etcd key (leases() would refuse a value that is not JSON).
fn raw(c: &Cluster, k: &str) -> Option<String> {
    c.get_prefix(k).remove(k)
}

/// Node `n`'s `/status` peer entry for `subnet` (a CIDR), if listed.
fn status_peer(c: &Cluster, n: usize, subnet: &str) -> Option<Value> {
    c.status(n)["peers"]
        .as_array()?
        .iter()
        .find(|p| p["subnet"] == subnet)
        .cloned()
}

/// Waits until every node in `nodes` reports `subnet` refused in `/status` with a reason containing `why`.
fn wait_refused(c: &Cluster, nodes: &[usize], subnet: &str, why: &str) {
    for &n in nodes {
        let seen = wait_ok(secs(15), ms(100), || match status_peer(c, n, subnet) {
            Some(p) if p["refused"].as_str().is_some_and(|r| r.contains(why)) => Ok(p),
            other => Err(format!("node {n}: {other:?}")),
        });
        if let Err(e) = seen {
            panic!(
                "lease {subnet} not refused ({why}) on node {n}: {e}\n{}",
                c.log_tail(n)
            );
        }
    }
}

/// Routes of node `n` whose destination is `dst`.
fn routes_to(c: &Cluster, n: usize, dst: &str) -> Vec<Value> {
    c.routes(n)
        .into_iter()
        .filter(|r| r["dst"] == dst)
        .collect()
}

/// Writes a valid lease under a fresh key (`third` ≥ 100: no node's subnet) and waits until every node programmed it: proof that every node still
/// reaches etcd and that the reconciler ran after whatever the test did before.
fn canary(c: &Cluster, nodes: &[usize], third: u8) {
    let subnet: ipnet::Ipv4Net = format!("10.244.{third}.0/24").parse().unwrap();
    let mac = format!("0e:aa:00:00:00:{third:02x}");
    let public = Ipv4Addr::new(192, 0, 2, third);
    c.put(
        &key(&format!("10.244.{third}.0-24")),
        &vxlan_value(&public.to_string(), &mac),
    );
    for &n in nodes {
        if let Err(e) = wait_ok(secs(15), ms(50), || {
            c.vxlan_programmed(n, subnet, &mac, public)
        }) {
            panic!(
                "node {n} did not program the canary lease {subnet}: {e}\n{}",
                c.log_tail(n)
            );
        }
    }
}

fn leases_outside_the_network_misaligned_or_with_host_bits_are_never_programmed() {
    let c = Cluster::builder().nodes(3).config(config()).start();
    // 192.0.2.192/26 covers the underlay, etcd (192.0.2.254) included: programmed, it would send every node's
    // etcd traffic into the tunnel and the key's deletion would never be seen.
    let bad = [
        ("192.0.2.192-26", "192.0.2.192/26", "outside the network"),
        ("10.244.200.0-25", "10.244.200.0/25", "not a /24"),
        ("10.244.204.0-22", "10.244.204.0/22", "not a /24"),
        ("10.244.201.5-24", "10.244.201.5/24", "host bits"),
    ];
    for (i, (k, _, _)) in bad.iter().enumerate() {
        c.put(
            &key(k),
            &vxlan_value(
                &format!("192.0.2.{}", 50 + i),
                &format!("0e:bb:00:00:00:{i:02x}"),
            ),
        );
    }
    // Every node still talks to etcd and programs a good lease written after the bad ones.
    canary(&c, &[1, 2, 3], 177);
    for n in c.node_ids() {
        for (_, subnet, _) in bad {
            let trunc = subnet
                .parse::<ipnet::Ipv4Net>()
                .unwrap()
                .trunc()
                .to_string();
            assert!(
                routes_to(&c, n, subnet).is_empty() && routes_to(&c, n, &trunc).is_empty(),
                "node {n} programmed refused lease {subnet}: {:?}",
                c.routes(n)
            );
        }
    }
    for (_, subnet, why) in bad {
        wait_refused(&c, &[1, 2, 3], subnet, why);
    }
    for n in c.node_ids() {
        let st = c.status(n);
        assert_eq!(st["refused"], 4, "node {n}: {st}");
        assert_eq!(st["lastReconcile"]["ok"], true, "node {n}: {st}");
    }
    // The bad keys go away: nothing was programmed for them, nothing stays refused.
    for (k, _, _) in bad {
        assert_eq!(c.del(&key(k)), 1);
    }
    for n in c.node_ids() {
        let cleared = wait_until(secs(15), ms(100), || c.status(n)["refused"] == 0);
        assert!(cleared, "node {n}: {}", c.status(n));
    }
}

fn duplicate_vtep_mac_first_holder_keeps_it() {
    let mut c = Cluster::builder().nodes(3).config(config()).start();
    let a = c.add_pod(1);
    let b = c.add_pod(2);
    let (s2, mac2, pub2) = c.vxlan_peer(2);
    let (s1, mac1, _) = c.vxlan_peer(1);
    for n in [1, 3] {
        c.wait_vxlan_programmed(n, 2, secs(10));
    }
    // A newer lease copies node 2's VTEP MAC (today it would re-point node 2's FDB entry to 192.0.2.66).
    c.put(&key("10.244.250.0-24"), &vxlan_value("192.0.2.66", &mac2));
    // And one copies node 1's MAC: node 1 refuses it as its own, the others as node 1's.
    c.put(&key("10.244.251.0-24"), &vxlan_value("192.0.2.67", &mac1));
    // Written after the copies: once every node programmed it, every node has seen them.
    canary(&c, &[1, 2, 3], 176);
    for n in [1, 3] {
        c.vxlan_programmed(n, s2, &mac2, pub2)
            .unwrap_or_else(|e| panic!("node 2 lost its entries on node {n}: {e}"));
        let stolen = c
            .fdb(n, "flannel.1")
            .into_iter()
            .filter(|e| e["dst"] == "192.0.2.66" || e["dst"] == "192.0.2.67")
            .collect::<Vec<_>>();
        assert!(
            stolen.is_empty(),
            "node {n} FDB points at the copies: {stolen:?}"
        );
        assert!(routes_to(&c, n, "10.244.250.0/24").is_empty());
    }
    c.vxlan_programmed(3, s1, &mac1, c.node(1).ip).unwrap();
    c.ping_matrix_of(&[a, b], false);
    wait_refused(&c, &[1, 3], "10.244.250.0/24", "already announced by lease");
    wait_refused(
        &c,
        &[2],
        "10.244.250.0/24",
        "already announced by this node",
    );
    wait_refused(
        &c,
        &[1],
        "10.244.251.0/24",
        "already announced by this node",
    );
    wait_refused(&c, &[2, 3], "10.244.251.0/24", "already announced by lease");
    // The copy is renewed (a new revision): the holder still keeps the MAC.
    c.put(&key("10.244.250.0-24"), &vxlan_value("192.0.2.66", &mac2));
    canary(&c, &[1, 3], 178);
    c.vxlan_programmed(1, s2, &mac2, pub2).unwrap();
}

fn dual_stack_lease_overlapping_a_node_on_one_family_is_refused() {
    let c = Cluster::builder()
        .nodes(2)
        .ipv6()
        .config(json!({
            "Network": "10.244.0.0/16",
            "EnableIPv6": true,
            "IPv6Network": "fd00:10:244::/56",
            "IPv6SubnetLen": 64,
            "SubnetMax": "10.244.99.0",
            "IPv6SubnetMax": "fd00:10:244:7f::",
            "Backend": {"Type": "vxlan"},
        }))
        .start();
    let s2 = c.subnet(2);
    c.wait_vxlan_programmed(1, 2, secs(10));
    // Node 2's IPv4 subnet with an unused IPv6 subnet: a different key announcing node 2's IPv4 pods.
    let k = format!("{}-24&fd00:10:244:ee::-64", s2.network());
    c.put(
        &key(&k),
        &json!({"PublicIP": "192.0.2.70", "PublicIPv6": "2001:db8:1::70", "BackendType": "vxlan",
                "BackendData": {"VNI": 1, "VtepMAC": "0e:cc:00:00:00:01"},
                "BackendV6Data": {"VNI": 1, "VtepMAC": "0e:cc:00:00:00:02"}})
        .to_string(),
    );
    let why = format!("subnet {s2} is already announced by");
    for n in [1, 2] {
        let seen = wait_ok(secs(15), ms(100), || {
            let st = c.status(n);
            st["peers"]
                .as_array()
                .and_then(|ps| {
                    ps.iter()
                        .find(|p| p["ipv6Subnet"] == "fd00:10:244:ee::/64")
                        .cloned()
                })
                .filter(|p| p["refused"].as_str().is_some_and(|r| r.contains(&why)))
                .ok_or(st.to_string())
        });
        assert!(seen.is_ok(), "node {n}: {seen:?}");
    }
    assert!(
        routes_to(&c, 1, "fd00:10:244:ee::/64").is_empty()
            && c.routes6(1)
                .iter()
                .all(|r| r["dst"] != "fd00:10:244:ee::/64"),
        "{:?}",
        c.routes6(1)
    );
    c.wait_vxlan_programmed(1, 2, secs(5));
}

fn own_lease_overwritten_is_restored_within_seconds() {
    let mut c = Cluster::builder().nodes(2).config(config()).start();
    let a = c.add_pod(1);
    let b = c.add_pod(2);
    c.wait_vxlan_programmed(1, 2, secs(10));
    let own = c.lease(2);
    let k2 = c.lease_key(2);
    let (s2, mac2, pub2) = c.vxlan_peer(2);
    for (what, value) in [
        (
            "another node's attributes",
            vxlan_value("192.0.2.66", "0e:dd:00:00:00:01"),
        ),
        ("a value that is not lease JSON", "not json".to_string()),
    ] {
        c.put(&k2, &value);
        let restored = wait_until(secs(10), ms(50), || {
            raw(&c, &k2)
                .and_then(|v| serde_json::from_str::<Value>(&v).ok())
                .is_some_and(|v| v == own)
        });
        assert!(
            restored,
            "node 2 did not write its lease back after {what}: {:?}\n{}",
            raw(&c, &k2),
            c.log_tail(2)
        );
        if let Err(e) = wait_ok(secs(10), ms(50), || c.vxlan_programmed(1, s2, &mac2, pub2)) {
            panic!("node 1 does not route node 2's subnet to node 2 after {what}: {e}");
        }
        assert!(c.is_running(2), "node 2 exited after {what}");
    }
    c.ping_matrix_of(&[a, b], false);
    assert!(
        c.log(2).contains("overwritten by someone else"),
        "the log says what happened:\n{}",
        c.log_tail(2)
    );
}

fn stale_entries_are_removed_whatever_put_them_there() {
    let c = Cluster::builder().nodes(2).config(config()).start();
    c.wait_vxlan_programmed(1, 2, secs(10));
    let ns = c.node(1).ns.clone();
    // What an earlier version (or upstream) programmed for leases that are gone or were never valid, and an
    // operator's own route that is not ours.
    for args in [
        &[
            "route",
            "add",
            "192.0.2.192/26",
            "via",
            "192.0.2.192",
            "dev",
            "flannel.1",
            "onlink",
        ][..],
        &[
            "route",
            "add",
            "10.244.250.0/24",
            "via",
            "10.244.250.0",
            "dev",
            "flannel.1",
            "onlink",
        ],
        &[
            "neigh",
            "add",
            "10.244.250.0",
            "lladdr",
            "0e:ee:00:00:00:01",
            "dev",
            "flannel.1",
            "nud",
            "permanent",
        ],
        &[
            "route",
            "add",
            "10.99.0.0/24",
            "via",
            "192.0.2.250",
            "dev",
            "eth0",
            "proto",
            "121",
        ],
        &[
            "route",
            "add",
            "10.98.0.0/24",
            "via",
            "192.0.2.254",
            "dev",
            "eth0",
        ],
    ] {
        let mut a = vec!["ip"];
        a.extend_from_slice(args);
        in_ns(&ns, &a).must();
    }
    in_ns(
        &ns,
        &[
            "bridge",
            "fdb",
            "add",
            "0e:ee:00:00:00:01",
            "dev",
            "flannel.1",
            "dst",
            "192.0.2.250",
        ],
    )
    .must();
    // Wake the reconciler (a lease event) rather than wait for its 10 s resync.
    canary(&c, &[1], 179);
    let gone = wait_until(secs(15), ms(100), || {
        routes_to(&c, 1, "192.0.2.192/26").is_empty()
            && routes_to(&c, 1, "10.244.250.0/24").is_empty()
            && routes_to(&c, 1, "10.99.0.0/24").is_empty()
            && c.neighs(1, "flannel.1", false)
                .iter()
                .all(|e| e["dst"] != "10.244.250.0")
            && c.fdb(1, "flannel.1")
                .iter()
                .all(|e| e["dst"] != "192.0.2.250")
    });
    assert!(
        gone,
        "stale entries left on node 1:\nroutes {:?}\nneighbours {:?}\nfdb {:?}",
        c.routes(1),
        c.neighs(1, "flannel.1", false),
        c.fdb(1, "flannel.1")
    );
    assert_eq!(
        routes_to(&c, 1, "10.98.0.0/24").len(),
        1,
        "the operator's route stays: {:?}",
        c.routes(1)
    );
    c.wait_vxlan_programmed(1, 2, secs(5));
    // Routes flanneld installs carry its protocol.
    let r = routes_to(&c, 1, &c.subnet(2).to_string());
    assert_eq!(r.len(), 1, "{r:?}");
    assert_eq!(r[0]["protocol"], "121", "{r:?}");
}

fn invalid_lease_is_logged_once_per_revision_and_counted() {
    let c = Cluster::builder().nodes(2).config(config()).start();
    c.put(
        &key("10.244.240.0-24"),
        &vxlan_value("192.0.2.90", "ff:ff:ff:ff:ff:ff"),
    );
    c.put(
        &key("10.244.241.0-24"),
        &vxlan_value("192.0.2.91", "00:00:00:00:00:00"),
    );
    // Many reconcile passes: each canary write wakes every node's reconciler.
    for i in 0..6 {
        canary(&c, &[1, 2], 180 + i);
    }
    // Warnings and errors that mention the lease, in either form (key or CIDR).
    let count = |n: usize, third: u8| {
        let (k, cidr) = (
            format!("10.244.{third}.0-24"),
            format!("10.244.{third}.0/24"),
        );
        c.log(n)
            .lines()
            .filter(|l| l.contains(" WARN ") || l.contains(" ERROR "))
            .filter(|l| l.contains(&k) || l.contains(&cidr))
            .count()
    };
    for n in [1, 2] {
        assert_eq!(count(n, 240), 1, "node {n}:\n{}", c.log_tail(n));
        assert_eq!(count(n, 241), 1, "node {n}:\n{}", c.log_tail(n));
    }
    wait_refused(&c, &[1, 2], "10.244.240.0/24", "broadcast");
    wait_refused(&c, &[1, 2], "10.244.241.0/24", "all-zero");
    for n in [1, 2] {
        assert_eq!(c.status(n)["refused"], 2, "node {n}: {}", c.status(n));
    }
    // A new revision of the same bad lease is logged once more.
    c.put(
        &key("10.244.240.0-24"),
        &vxlan_value("192.0.2.90", "ff:ff:ff:ff:ff:ff"),
    );
    for n in [1, 2] {
        let twice = wait_until(secs(15), ms(100), || count(n, 240) == 2);
        assert!(twice, "node {n}:\n{}", c.log_tail(n));
    }
    canary(&c, &[1, 2], 190);
    for n in [1, 2] {
        assert_eq!(count(n, 240), 2, "node {n}:\n{}", c.log_tail(n));
    }
}

fn recreated_device_keeps_the_mac_its_lease_announces() {
    let mut c = Cluster::builder().nodes(2).config(config()).build();
    // Node 1 was switched from upstream flannel: its flannel.1 exists with a MAC of upstream's choosing.
    let ns1 = c.node(1).ns.clone();
    in_ns(
        &ns1,
        &[
            "ip",
            "link",
            "add",
            "flannel.1",
            "address",
            "02:42:ac:11:00:09",
            "type",
            "vxlan",
            "id",
            "1",
            "local",
            "192.0.2.1",
            "dev",
            "eth0",
            "nolearning",
            "dstport",
            "8472",
        ],
    )
    .must();
    c.start_all();
    c.wait_all_ready(secs(30));
    let a = c.add_pod(1);
    let b = c.add_pod(2);
    let (_, mac1, _) = c.vxlan_peer(1);
    assert_eq!(
        mac1, "02:42:ac:11:00:09",
        "the adopted device's MAC is announced"
    );
    c.wait_vxlan_programmed(2, 1, secs(10));

    in_ns(&ns1, &["ip", "link", "del", "flannel.1"]).must();
    let back = wait_until(secs(20), ms(100), || c.has_link(1, "flannel.1"));
    assert!(back, "flannel.1 not recreated:\n{}", c.log_tail(1));
    let l = ip_json(&ns1, &["link", "show", "dev", "flannel.1"]);
    let now = l[0]["address"].as_str().unwrap_or_default().to_string();
    let (_, announced, _) = c.vxlan_peer(1);
    assert_eq!(
        now, announced,
        "recreated flannel.1 has {now} while the lease announces {announced}"
    );
    assert_eq!(now, mac1, "peers never see the MAC change");
    c.wait_vxlan_programmed(2, 1, secs(10));
    c.ping_matrix_of(&[a, b], false);
}

testkit::main!(
    leases_outside_the_network_misaligned_or_with_host_bits_are_never_programmed,
    duplicate_vtep_mac_first_holder_keeps_it,
    dual_stack_lease_overlapping_a_node_on_one_family_is_refused,
    own_lease_overwritten_is_restored_within_seconds,
    stale_entries_are_removed_whatever_put_them_there,
    invalid_lease_is_logged_once_per_revision_and_counted,
    recreated_device_keeps_the_mac_its_lease_announces,
);
