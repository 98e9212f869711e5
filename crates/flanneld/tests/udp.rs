//! The udp backend against the real kernel: TUN `flannel0`, real etcd, one flanneld per node namespace, pods
//! attached with our CNI plugins (topology in `common/mod.rs`). A hand-made peer in the fabric namespace speaks
//! upstream's wire format (the inner IP packet as the whole UDP payload, from port 8285) with our node.
//!
//! Run: `cargo build -p plugins -p flanneld && cargo test -p flanneld --test udp` (root).

mod common;

use common::*;
use serde_json::{json, Value};
use std::net::{Ipv4Addr, SocketAddr, UdpSocket};
use std::time::{Duration, Instant};

fn secs(s: u64) -> Duration {
    Duration::from_secs(s)
}

fn udp_cluster(nodes: usize) -> Cluster {
    udp_cluster_with(nodes, json!({"Type": "udp"}))
}

fn udp_cluster_with(nodes: usize, backend: Value) -> Cluster {
    Cluster::builder().nodes(nodes).backend(backend).start()
}

/// The udp counters node `n` shows in /status.
fn counters(c: &Cluster, n: usize) -> Value {
    c.status(n)["backend"]["counters"].clone()
}

fn counter(c: &Cluster, n: usize, path: &str) -> u64 {
    counters(c, n)
        .pointer(path)
        .and_then(Value::as_u64)
        .unwrap_or(0)
}

/// One iperf3 run from namespace `client` to a one-shot server in `server` on `port` (client `args` plus the port
/// and `-J`); its JSON. Every wait is bounded: a client that cannot reach the server fails the test, and the
/// server, which would wait for a client forever, is killed.
fn iperf3(client: &str, server: &str, port: u16, args: &[&str]) -> Value {
    let port = port.to_string();
    let mut srv = ns_command(server, "iperf3", &["-s", "-1", "-p", &port])
        .stdout(std::process::Stdio::null())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(300));
    let mut a = args.to_vec();
    a.extend(["-p", &port, "-J", "--connect-timeout", "5000"]);
    let out = run(&mut ns_command(client, "iperf3", &a), None, secs(30));
    if wait_child(&mut srv, secs(5)).is_none() {
        kill_child(&mut srv);
    }
    assert!(out.ok(), "iperf3 {args:?}: {out}");
    serde_json::from_str(&out.stdout).unwrap_or_else(|e| panic!("iperf3 JSON ({e}): {out}"))
}

/// Internet checksum of `b`.
fn csum(b: &[u8]) -> u16 {
    let mut s: u32 = 0;
    for c in b.chunks(2) {
        let w = u16::from_be_bytes([c[0], *c.get(1).unwrap_or(&0)]);
        s += u32::from(w);
    }
    while s > 0xffff {
        s = (s & 0xffff) + (s >> 16);
    }
    !(s as u16)
}

/// An IPv4 ICMP echo request `src` → `dst` with identifier `id`, as a pod of an upstream node would send it.
fn echo_request(src: Ipv4Addr, dst: Ipv4Addr, id: u16) -> Vec<u8> {
    let payload = b"flannel-rs udp wire test";
    let mut icmp = vec![8u8, 0, 0, 0];
    icmp.extend_from_slice(&id.to_be_bytes());
    icmp.extend_from_slice(&1u16.to_be_bytes());
    icmp.extend_from_slice(payload);
    let c = csum(&icmp);
    icmp[2..4].copy_from_slice(&c.to_be_bytes());
    let total = (20 + icmp.len()) as u16;
    let mut ip = vec![0x45, 0];
    ip.extend_from_slice(&total.to_be_bytes());
    ip.extend_from_slice(&[0x12, 0x34, 0x40, 0, 64, 1, 0, 0]);
    ip.extend_from_slice(&src.octets());
    ip.extend_from_slice(&dst.octets());
    let c = csum(&ip);
    ip[10..12].copy_from_slice(&c.to_be_bytes());
    ip.extend_from_slice(&icmp);
    ip
}

/// A UDP socket bound to `addr` inside namespace `ns`.
fn socket_in(ns: &str, addr: SocketAddr) -> UdpSocket {
    let n = kernel::netns::Netns::open(format!("/run/netns/{ns}")).unwrap();
    let s = n
        .run(move || UdpSocket::bind(addr))
        .unwrap()
        .unwrap_or_else(|e| panic!("bind {addr} in {ns}: {e}"));
    s.set_read_timeout(Some(Duration::from_millis(200)))
        .unwrap();
    s
}

/// Datagrams received on `s` within `timeout`, with their sources.
fn receive(s: &UdpSocket, timeout: Duration) -> Vec<(SocketAddr, Vec<u8>)> {
    let mut got = Vec::new();
    let end = Instant::now() + timeout;
    let mut buf = vec![0u8; 65536];
    while Instant::now() < end {
        if let Ok((n, from)) = s.recv_from(&mut buf) {
            got.push((from, buf[..n].to_vec()));
        }
    }
    got
}

/// An ICMP echo reply to `id` for `dst`, among `got`.
fn has_echo_reply(got: &[(SocketAddr, Vec<u8>)], from: SocketAddr, dst: Ipv4Addr, id: u16) -> bool {
    got.iter().any(|(f, p)| {
        *f == from
            && p.len() >= 28
            && p[0] >> 4 == 4
            && p[9] == 1
            && p[16..20] == dst.octets()
            && p[20] == 0
            && p[24..26] == id.to_be_bytes()
    })
}

// ------------------------------------------------------------------------------------------------

/// Three nodes, every pod pair, TCP and UDP across nodes, on the path `backend` selects (`path`: what /status
/// must report).
fn full_mesh(backend: Value, path: &str) {
    let mut c = udp_cluster_with(3, backend);
    c.add_pods(2);
    c.ping_matrix(false);
    for n in c.node_ids() {
        let link = c.link_details(n, "flannel0");
        for want in ["tun", "mtu 1472"] {
            assert!(link.contains(want), "node {n}: {want:?} not in\n{link}");
        }
        let env = c.subnet_env(n);
        assert_eq!(env["FLANNEL_MTU"], "1472", "{env:?}");
        // Upstream's udp lease: no BackendType, no BackendData.
        let lease = c.lease(n);
        assert!(lease.get("BackendType").is_none(), "{lease}");
        assert!(lease.get("BackendData").is_none(), "{lease}");
        let route = c
            .routes(n)
            .into_iter()
            .find(|r| r["dst"] == "10.244.0.0/16")
            .unwrap_or_else(|| panic!("node {n}: no network route: {:?}", c.routes(n)));
        assert_eq!(route["dev"], "flannel0", "{route}");
    }
    // TCP and UDP across nodes (iperf3: a short transfer each way).
    let (a, b) = (&c.pods[0], &c.pods[2]);
    assert_ne!(a.node, b.node);
    let ip = b.ip4.unwrap().to_string();
    let v = iperf3(&a.ns, &b.ns, 5201, &["-c", &ip, "-n", "4M"]);
    assert!(
        v["end"]["sum_sent"]["bytes"].as_u64().unwrap_or(0) >= 4 << 20,
        "{}",
        v["end"]
    );
    assert!(
        v["end"]["sum_received"]["bytes"].as_u64().unwrap_or(0) > 0,
        "{}",
        v["end"]
    );
    // 1 Mbit/s for a second is ~90 datagrams: they fit in every queue on the way (the pod's socket buffer, flannel0's
    // tx queue, our sockets), so a loss here is a drop on the path, not a CPU-starved receiver on a loaded machine.
    let v = iperf3(
        &a.ns,
        &b.ns,
        5202,
        &["-c", &ip, "-u", "-b", "1M", "-t", "1"],
    );
    let packets = v["end"]["sum"]["packets"].as_u64().unwrap_or(0);
    let lost = v["end"]["sum"]["lost_packets"].as_u64().unwrap_or(u64::MAX);
    assert!(
        packets > 0 && lost * 10 <= packets,
        "UDP over udp: {}",
        v["end"]["sum"]
    );
    // The counters moved, and nothing was dropped.
    let n = a.node;
    assert_eq!(counters(&c, n)["path"], path, "{}", counters(&c, n));
    assert!(counter(&c, n, "/txPackets") > 0, "{}", counters(&c, n));
    assert!(counter(&c, n, "/rxPackets") > 0, "{}", counters(&c, n));
    assert_eq!(counter(&c, n, "/dropped/notPeer"), 0, "{}", counters(&c, n));
    assert_eq!(
        counter(&c, n, "/dropped/spoofedSource"),
        0,
        "{}",
        counters(&c, n)
    );
}

fn udp_three_nodes_full_mesh() {
    full_mesh(json!({"Type": "udp"}), "offload");
}

/// The one-packet-per-syscall path, forced with `Offload: false`, carries the same traffic.
fn fallback_path_forced_on() {
    full_mesh(json!({"Type": "udp", "Offload": false}), "plain");
}

/// A destination in the network that no lease holds gets ICMP net unreachable from flannel0's address; a pod
/// whose path MTU is smaller than its own gets fragmentation needed.
fn unreachable_and_too_big_get_icmp() {
    let mut c = udp_cluster(2);
    c.add_pods(1);
    let pod = c.pods[0].clone();
    let out = in_ns(&pod.ns, &["ping", "-c", "1", "-W", "2", "10.244.250.1"]);
    assert!(
        !out.ok(),
        "ping to a subnet no lease holds succeeded: {}",
        out.stdout
    );
    assert!(
        out.stdout.contains("Destination Net Unreachable"),
        "no ICMP net unreachable: {}",
        out.stdout
    );
    assert!(
        counter(&c, pod.node, "/noRoute") >= 1,
        "{}",
        counters(&c, pod.node)
    );
    // The pod's path to the node takes 1500 (its eth0, the host veth, cni0); flannel0 takes 1472: a DF packet
    // of 1500 gets fragmentation needed with mtu 1472.
    in_ns(&pod.ns, &["ip", "link", "set", "eth0", "mtu", "1500"]);
    let node_ns = c.node(pod.node).ns.clone();
    for l in ip_json(&node_ns, &["link", "show"])
        .as_array()
        .cloned()
        .unwrap_or_default()
    {
        let name = l["ifname"].as_str().unwrap_or_default();
        if l["master"] == "cni0" {
            in_ns(&node_ns, &["ip", "link", "set", name, "mtu", "1500"]);
        }
    }
    in_ns(&node_ns, &["ip", "link", "set", "cni0", "mtu", "1500"]);
    let dst = c.pods[1].ip4.unwrap().to_string();
    let out = in_ns(
        &pod.ns,
        &["ping", "-c", "1", "-W", "2", "-M", "do", "-s", "1472", &dst],
    );
    assert!(
        !out.ok(),
        "a 1500-byte DF ping passed a 1472 tunnel: {}",
        out.stdout
    );
    assert!(
        out.stdout.contains("Frag needed") && out.stdout.contains("mtu = 1472"),
        "no ICMP fragmentation needed with mtu 1472: {}",
        out.stdout
    );
    // Small enough: it passes.
    assert!(ping_within(&pod.ns, c.pods[1].ip4.unwrap(), secs(5)));
}

/// A peer that speaks upstream's wire format (the fabric, holding a lease in etcd) exchanges traffic with our
/// node; spoofed datagrams (a sender that holds no lease, a peer speaking for another node's pods) never reach a
/// pod and are counted.
fn upstream_wire_format_and_spoofing() {
    let mut c = udp_cluster(2);
    c.add_pods(1);
    let pod = c.pods.iter().find(|p| p.node == 1).unwrap().clone();
    let pod_ip = match pod.ip4.unwrap() {
        std::net::IpAddr::V4(a) => a,
        _ => unreachable!(),
    };
    // The hand-made peer: 192.0.2.254 (the fabric's address), subnet 10.244.200.0/24, a lease as upstream's
    // udp backend writes it.
    c.put(
        &format!("{ETCD_PREFIX}/subnets/10.244.200.0-24"),
        &json!({"PublicIP": "192.0.2.254", "PublicIPv6": null}).to_string(),
    );
    // A non-peer on the same segment.
    in_ns(
        &c.fabric,
        &["ip", "addr", "add", "192.0.2.250/24", "dev", "br0"],
    );
    let peer = socket_in(&c.fabric, "192.0.2.254:8285".parse().unwrap());
    let stranger = socket_in(&c.fabric, "192.0.2.250:8285".parse().unwrap());
    let node: SocketAddr = "192.0.2.1:8285".parse().unwrap();
    let fake_src: Ipv4Addr = "10.244.200.5".parse().unwrap();

    // Once node 1 has programmed the lease, the peer's echo request reaches the pod and the reply comes back to
    // the peer as upstream would send it: raw IP in UDP, from port 8285.
    let mut id = 100u16;
    let ok = wait_until(secs(20), Duration::from_millis(10), || {
        id += 1;
        peer.send_to(&echo_request(fake_src, pod_ip, id), node)
            .unwrap();
        has_echo_reply(
            &receive(&peer, Duration::from_millis(300)),
            node,
            fake_src,
            id,
        )
    });
    assert!(
        ok,
        "no echo reply from pod {pod_ip} through node 1: {}",
        counters(&c, 1)
    );

    // Spoofing: the same request from a sender holding no lease, and from the peer with node 2's pod subnet as
    // the inner source: neither reaches the pod (no reply anywhere), both are counted.
    let before = counters(&c, 1);
    stranger
        .send_to(&echo_request(fake_src, pod_ip, 900), node)
        .unwrap();
    let node2_src = Ipv4Addr::from(u32::from(c.subnet(2).network()) + 9);
    peer.send_to(&echo_request(node2_src, pod_ip, 901), node)
        .unwrap();
    let got_s = receive(&stranger, secs(1));
    let got_p = receive(&peer, secs(1));
    assert!(
        !has_echo_reply(&got_s, node, fake_src, 900),
        "a stranger's packet reached the pod"
    );
    assert!(!got_p
        .iter()
        .any(|(_, p)| p.len() >= 26 && p[24..26] == 901u16.to_be_bytes()));
    let after = counters(&c, 1);
    let d = |p: &str| {
        after.pointer(p).and_then(Value::as_u64).unwrap_or(0)
            - before.pointer(p).and_then(Value::as_u64).unwrap_or(0)
    };
    assert_eq!(d("/dropped/notPeer"), 1, "{after}");
    assert_eq!(d("/dropped/spoofedSource"), 1, "{after}");
    // Garbage from the peer: counted as malformed, and the loop keeps going.
    peer.send_to(&[0x45, 0, 0], node).unwrap();
    peer.send_to(&[0u8; 1], node).unwrap();
    id += 1;
    peer.send_to(&echo_request(fake_src, pod_ip, id), node)
        .unwrap();
    assert!(
        has_echo_reply(&receive(&peer, secs(2)), node, fake_src, id),
        "the loop stalled after garbage"
    );
    assert!(
        counter(&c, 1, "/dropped/malformed") >= 2,
        "{}",
        counters(&c, 1)
    );
    // The peer leaves: its subnet becomes unreachable, not a hang.
    c.del(&format!("{ETCD_PREFIX}/subnets/10.244.200.0-24"));
    let ok = wait_until(secs(20), Duration::from_millis(200), || {
        in_ns(&pod.ns, &["ping", "-c", "1", "-W", "1", "10.244.200.5"])
            .stdout
            .contains("Destination Net Unreachable")
    });
    assert!(ok, "a departed peer's subnet did not become unreachable");
}

/// flannel0 deleted by hand is rebuilt, and so is its route; traffic flows again.
fn deleted_device_and_route_are_rebuilt() {
    let mut c = udp_cluster(2);
    c.add_pods(1);
    let (a, b) = (c.pods[0].clone(), c.pods[1].clone());
    assert!(ping_within(&a.ns, b.ip4.unwrap(), secs(5)));
    in_ns(
        &c.node(a.node).ns,
        &["ip", "route", "del", "10.244.0.0/16", "dev", "flannel0"],
    );
    assert!(
        ping_within(&a.ns, b.ip4.unwrap(), secs(20)),
        "route not rebuilt"
    );
    in_ns(&c.node(a.node).ns, &["ip", "link", "del", "flannel0"]);
    assert!(
        ping_within(&a.ns, b.ip4.unwrap(), secs(30)),
        "flannel0 not rebuilt:\n{}",
        c.log_tail(a.node)
    );
    assert!(c.has_link(a.node, "flannel0"));
}

/// A daemon restart: flannel0 goes with the process and comes back with the next; pods' traffic resumes.
fn restart_under_ping() {
    let mut c = udp_cluster(2);
    c.add_pods(1);
    let (a, b) = (c.pods[0].clone(), c.pods[1].clone());
    assert!(ping_within(&a.ns, b.ip4.unwrap(), secs(5)));
    let ping = BackgroundPing::start(
        &a.ns,
        b.ip4.unwrap(),
        Duration::from_millis(100),
        100,
        c.dir.join("ping.txt"),
    );
    std::thread::sleep(Duration::from_secs(2));
    c.restart(a.node, secs(30));
    std::thread::sleep(Duration::from_secs(4));
    let stats = ping.finish();
    eprintln!(
        "restart under ping: {} sent, {} answered, gap {} packets at 100 ms",
        stats.transmitted,
        stats.received,
        stats.missing.len()
    );
    assert!(stats.received > 0 && stats.missing.len() < stats.transmitted as usize);
    // Traffic after the restart: the last pings are answered.
    assert!(ping_within(&a.ns, b.ip4.unwrap(), secs(5)));
}

testkit::main!(
    udp_three_nodes_full_mesh,
    fallback_path_forced_on,
    unreachable_and_too_big_get_icmp,
    upstream_wire_format_and_spoofing,
    deleted_device_and_route_are_rebuilt,
    restart_under_ping,
);
