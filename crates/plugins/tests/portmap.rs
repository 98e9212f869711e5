//! The `portmap` plugin, black-box: upstream's flannel conflist (our flannel → bridge → host-local, then portmap
//! with `capabilities.portMappings`) with two pods; a hostPort reached from another namespace through the node's
//! address, from the node itself (127.0.0.1 and its address) and by the pod itself (hairpin); `iptables-save`
//! text identical to the reference `portmap` in /usr/lib/cni for the same configuration, each DELing what the
//! other ADDed; DEL idempotent (pod gone, twice, after a failed ADD); CHECK; bad input.

mod common;

use common::*;
use serde_json::{json, Map, Value};
use std::fs::File;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

fn ours_pm() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_portmap"))
}

fn reference_pm() -> PathBuf {
    let p = Path::new(REFERENCE_DIR).join("portmap");
    assert!(
        p.exists(),
        "the reference portmap is missing in {REFERENCE_DIR}"
    );
    p
}

/// Runs `f` on a thread inside network namespace `ns`.
fn in_ns<T: Send + 'static>(ns: &str, f: impl FnOnce() -> T + Send + 'static) -> T {
    let path = format!("/run/netns/{ns}");
    std::thread::spawn(move || {
        let fd = File::open(&path).unwrap_or_else(|e| panic!("open {path}: {e}"));
        nix::sched::setns(&fd, nix::sched::CloneFlags::CLONE_NEWNET).expect("setns");
        f()
    })
    .join()
    .expect("thread in netns")
}

/// A TCP server in a pod namespace answering every connection with its name; stopped on drop.
struct Server {
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Server {
    fn start(ns: &str, port: u16, answer: &str) -> Self {
        Self::start_on(ns, "0.0.0.0", port, answer)
    }

    /// A server bound to `host` (`0.0.0.0`, or `[::]` for both families).
    fn start_on(ns: &str, host: &str, port: u16, answer: &str) -> Self {
        let path = format!("/run/netns/{ns}");
        let bind: SocketAddr = format!("{host}:{port}").parse().expect("address");
        let stop = Arc::new(AtomicBool::new(false));
        let (tx, rx) = std::sync::mpsc::channel();
        let (s, answer) = (stop.clone(), answer.to_string());
        let thread = std::thread::spawn(move || {
            let fd = File::open(&path).expect("open netns");
            nix::sched::setns(&fd, nix::sched::CloneFlags::CLONE_NEWNET).expect("setns");
            let l = TcpListener::bind(bind).expect("bind");
            l.set_nonblocking(true).expect("nonblocking");
            let _ = tx.send(());
            while !s.load(Ordering::Relaxed) {
                match l.accept() {
                    Ok((mut c, _)) => {
                        let _ = c.write_all(answer.as_bytes());
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(10)),
                }
            }
        });
        rx.recv_timeout(Duration::from_secs(5)).expect("server up");
        Self {
            stop,
            thread: Some(thread),
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// What a TCP connection from `ns` to `addr` reads (`None`: no connection or nothing read).
fn fetch(ns: &str, addr: &str) -> Option<String> {
    let addr: SocketAddr = addr.parse().expect("address");
    in_ns(ns, move || {
        let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(2)).ok()?;
        s.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
        let mut out = String::new();
        s.read_to_string(&mut out).ok()?;
        (!out.is_empty()).then_some(out)
    })
}

/// `iptables-save -t nat` and `ip6tables-save -t nat` of `ns`, without comments and counters.
fn nat(ns: &str) -> String {
    let mut out = String::new();
    for tool in ["iptables-save", "ip6tables-save"] {
        let o = Command::new("ip")
            .args(["netns", "exec", ns, tool, "-t", "nat"])
            .output()
            .expect("run iptables-save");
        assert!(o.status.success(), "{tool}: {o:?}");
        for l in String::from_utf8_lossy(&o.stdout).lines() {
            if l.starts_with('#') {
                continue;
            }
            // ":CHAIN POLICY [packets:bytes]" → without the counters.
            let l = match l.strip_prefix(':') {
                Some(d) => format!(":{}", d.rsplit_once(' ').map_or(d, |(a, _)| a)),
                None => l.to_string(),
            };
            out.push_str(&l);
            out.push('\n');
        }
    }
    out
}

fn rc(maps: Value) -> Map<String, Value> {
    let mut m = Map::new();
    m.insert("portMappings".into(), maps);
    m
}

fn exec_pm(bin: &Path, sb: &Sandbox, cmd: &str, att: &Att, conf: &Value) -> Out {
    let rt = sb.runtime(&Impl::ours());
    exec_plugin(
        bin,
        Some(&sb.node.path()),
        &rt.env_for(cmd, Some(att)),
        conf.to_string().as_bytes(),
    )
}

/// A second namespace on the node's "LAN": veth `<id>l` (node, 192.168.77.1/24) to `<id>r` (client, .2).
fn lan(sb: &Sandbox) -> Netns {
    let client = Netns::new(&format!("{}c", sb.id));
    let (l, r) = (format!("{}l", sb.id), format!("{}r", sb.id));
    ip(
        &sb.node.name,
        &[
            "link",
            "add",
            &l,
            "type",
            "veth",
            "peer",
            "name",
            &r,
            "netns",
            &client.name,
        ],
    );
    ip(
        &sb.node.name,
        &["addr", "add", "192.168.77.1/24", "dev", &l],
    );
    ip(&sb.node.name, &["link", "set", &l, "up"]);
    ip(&sb.node.name, &["link", "set", "lo", "up"]);
    ip(&client.name, &["addr", "add", "192.168.77.2/24", "dev", &r]);
    ip(&client.name, &["link", "set", &r, "up"]);
    client
}

/// Upstream's conflist (kube-flannel.yml `cni-conf.json`): flannel, then portmap with the capability (and
/// `backend`, when given).
fn flannel_portmap(sb: &Sandbox, backend: Option<&str>) -> Net {
    write_default_subnet_env(sb);
    let mut pm = json!({"type": "portmap", "capabilities": {"portMappings": true}});
    if let Some(b) = backend {
        pm["backend"] = json!(b);
    }
    Net::new("cbr0", "0.3.1", vec![flannel_conf(sb), pm])
}

/// The fixture of the traffic tests: a node (root needed) running upstream's conflist with `backend`, our
/// runtime, and a client namespace on the node's LAN.
fn node_with_lan(backend: Option<&str>) -> (Sandbox, Runtime, Net, Netns) {
    require_root();
    let sb = Sandbox::new();
    let rt = sb.runtime(&Impl::ours());
    let net = flannel_portmap(&sb, backend);
    let client = lan(&sb);
    (sb, rt, net, client)
}

/// `nft list table` of both families' `cni_hostport` in `ns` (empty for a family without it).
fn nft_tables(ns: &str) -> String {
    let mut out = String::new();
    for fam in ["ip", "ip6"] {
        let o = Command::new("ip")
            .args([
                "netns",
                "exec",
                ns,
                "nft",
                "list",
                "table",
                fam,
                "cni_hostport",
            ])
            .output()
            .expect("run nft");
        out.push_str(&String::from_utf8_lossy(&o.stdout));
    }
    out
}

/// Two pods with a hostPort each (8080 → pod 0 port 80, 8081 → pod 1 port 80): reached from another namespace
/// via the node's address, from the node (127.0.0.1 and its address), from the other pod, and by each pod
/// itself (hairpin); route_localnet on cni0; DEL leaves the nat table as the reference's DEL does.
fn host_ports_reached_everywhere() {
    host_ports_reached(None);
}

/// The same with `backend: "nftables"`: the mappings are elements of the `cni_hostport` maps, and DEL removes
/// them all, leaving iptables untouched.
fn host_ports_reached_everywhere_nftables() {
    host_ports_reached(Some("nftables"));
}

fn host_ports_reached(backend: Option<&str>) {
    let (sb, rt, net, client) = node_with_lan(backend);
    let before = nat(&sb.node.name);
    let pods = sb.pods(2);
    let mut atts = Vec::new();
    let mut servers = Vec::new();
    for (i, pod) in pods.iter().enumerate() {
        let att = sb.att(i, pod);
        let maps = rc(json!([{"hostPort": 8080 + i, "containerPort": 80, "protocol": "tcp"}]));
        let r = rt
            .add_rc(&net, &att, &maps)
            .unwrap_or_else(|o| panic!("ADD {i}: {o:?}"));
        servers.push(Server::start(&pod.name, 80, &format!("pod{i}")));
        atts.push((att, maps, r));
    }
    let localnet = in_ns(&sb.node.name, || {
        std::fs::read_to_string("/proc/sys/net/ipv4/conf/cni0/route_localnet").unwrap_or_default()
    });
    assert_eq!(localnet.trim(), "1", "route_localnet on cni0");
    for i in 0..2 {
        let want = Some(format!("pod{i}"));
        let port = 8080 + i;
        for (who, ns, addr) in [
            (
                "client via the node's address",
                &client.name,
                format!("192.168.77.1:{port}"),
            ),
            (
                "node via 127.0.0.1",
                &sb.node.name,
                format!("127.0.0.1:{port}"),
            ),
            (
                "node via its address",
                &sb.node.name,
                format!("192.168.77.1:{port}"),
            ),
            (
                "the other pod",
                &pods[1 - i].name,
                format!("192.168.77.1:{port}"),
            ),
            (
                "the pod itself (hairpin)",
                &pods[i].name,
                format!("192.168.77.1:{port}"),
            ),
        ] {
            assert_eq!(fetch(ns, &addr), want, "{who} → {addr}");
        }
    }
    drop(servers);
    if backend == Some("nftables") {
        let t = nft_tables(&sb.node.name);
        for (att, _, _) in &atts {
            assert!(
                t.contains(&format!("comment \"{} cbr0\"", att.container_id)),
                "{t}"
            );
        }
        assert!(!nat(&sb.node.name).contains("CNI-DN-"), "no iptables rules");
    }
    for (att, maps, r) in &atts {
        rt.del_rc(&net, att, maps, Some(r))
            .unwrap_or_else(|o| panic!("DEL: {o:?}"));
    }
    let after = nat(&sb.node.name);
    assert!(
        !after.contains("CNI-DN-") && !after.contains("dnat name"),
        "{after}"
    );
    if backend == Some("nftables") {
        assert_eq!(before, after, "the nftables backend left iptables alone");
        let t = nft_tables(&sb.node.name);
        assert!(t.contains("map port_dnat"), "the table stays: {t}");
        for (att, _, _) in &atts {
            assert!(!t.contains(&att.container_id), "{t}");
        }
        return;
    }
    assert_ne!(
        before, after,
        "the shared chains stay, as the reference leaves them"
    );
    for c in [
        "CNI-HOSTPORT-DNAT",
        "CNI-HOSTPORT-SETMARK",
        "CNI-HOSTPORT-MASQ",
    ] {
        assert!(after.contains(&format!(":{c} -")), "{c} kept: {after}");
    }
}

/// The same LAN namespace with IPv6 too: node fd00:77::1/64, client fd00:77::2/64 (no DAD: the test should not
/// wait for it).
fn lan6(sb: &Sandbox) -> Netns {
    let client = lan(sb);
    let (l, r) = (format!("{}l", sb.id), format!("{}r", sb.id));
    ip(
        &sb.node.name,
        &["addr", "add", "fd00:77::1/64", "dev", &l, "nodad"],
    );
    ip(
        &client.name,
        &["addr", "add", "fd00:77::2/64", "dev", &r, "nodad"],
    );
    client
}

/// What a TCP connection from `ns` to `addr` reads, retried for a few seconds: an IPv6 pod address may still be
/// tentative (DAD) right after ADD.
fn fetch_within(ns: &str, addr: &str) -> Option<String> {
    for _ in 0..50 {
        if let Some(got) = fetch(ns, addr) {
            return Some(got);
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    None
}

/// IPv6 hostPorts, dual-stack flannel (upstream's conflist with FLANNEL_IPV6_SUBNET), both backends: the pod's
/// port reached over IPv6 from the LAN namespace via the node's IPv6 address, from the node itself, and by the pod
/// itself (hairpin); IPv4 still works beside it; DEL leaves no rule or element in either family.
fn ipv6_host_ports() {
    for backend in [None, Some("nftables")] {
        require_root();
        let sb = Sandbox::new();
        std::fs::write(
            sb.path("subnet.env"),
            "FLANNEL_NETWORK=10.244.0.0/16\nFLANNEL_SUBNET=10.244.1.1/24\n\
             FLANNEL_IPV6_NETWORK=fd00:244::/56\nFLANNEL_IPV6_SUBNET=fd00:244:0:1::1/64\n\
             FLANNEL_MTU=1450\nFLANNEL_IPMASQ=true\n",
        )
        .expect("write subnet.env");
        let mut pm = json!({"type": "portmap", "capabilities": {"portMappings": true}});
        if let Some(b) = backend {
            pm["backend"] = json!(b);
        }
        let net = Net::new("cbr0", "1.0.0", vec![flannel_conf(&sb), pm]);
        let rt = sb.runtime(&Impl::ours());
        let client = lan6(&sb);
        let pod = sb.pod(0);
        let att = sb.att(0, &pod);
        let maps = rc(json!([{"hostPort": 8080, "containerPort": 80, "protocol": "tcp"}]));
        let r = rt
            .add_rc(&net, &att, &maps)
            .unwrap_or_else(|o| panic!("{backend:?}: ADD: {o:?}"));
        let has_v6 = r["ips"].as_array().is_some_and(|a| {
            a.iter()
                .any(|i| i["address"].as_str().is_some_and(|s| s.contains(':')))
        });
        assert!(has_v6, "{backend:?}: no IPv6 address in {r}");
        // The server answers on both families.
        let _server = Server::start_on(&pod.name, "[::]", 80, "pod6");
        let want = Some("pod6".to_string());
        for (who, ns, addr) in [
            (
                "client via the node's IPv6 address",
                &client.name,
                "[fd00:77::1]:8080",
            ),
            (
                "the node via its IPv6 address",
                &sb.node.name,
                "[fd00:77::1]:8080",
            ),
            ("the pod itself (hairpin)", &pod.name, "[fd00:77::1]:8080"),
            (
                "client via the node's IPv4 address",
                &client.name,
                "192.168.77.1:8080",
            ),
        ] {
            assert_eq!(fetch_within(ns, addr), want, "{backend:?}: {who} → {addr}");
        }
        rt.del_rc(&net, &att, &maps, Some(&r))
            .unwrap_or_else(|o| panic!("{backend:?}: DEL: {o:?}"));
        let t = nat(&sb.node.name);
        assert!(
            !t.contains("CNI-DN-") && !t.contains("dnat name"),
            "{backend:?}: {t}"
        );
        let n = nft_tables(&sb.node.name);
        assert!(!n.contains(att.container_id.as_str()), "{backend:?}: {n}");
    }
}

/// A synthetic dual-stack prevResult (the rules depend only on it and the configuration).
fn prev_result() -> Value {
    json!({"cniVersion": "1.0.0",
        "interfaces": [{"name": "cni0"}, {"name": "eth0", "sandbox": "/var/run/netns/x"}],
        "ips": [{"address": "10.250.0.2/24", "interface": 1}, {"address": "fd00:250::2/64", "interface": 1}]})
}

fn pm_conf(extra: Value) -> Value {
    let mut c = json!({"cniVersion": "1.0.0", "name": "rtest", "type": "portmap",
        "runtimeConfig": {"portMappings": [
            {"hostPort": 8080, "containerPort": 80, "protocol": "tcp"},
            {"hostPort": 8443, "containerPort": 443, "protocol": "tcp", "hostIP": "10.250.0.1"},
            {"hostPort": 5353, "containerPort": 53, "protocol": "udp"},
            {"hostPort": 5354, "containerPort": 53, "protocol": "sctp", "hostIP": "fd00:250::1"}]},
        "prevResult": prev_result()});
    for (k, v) in extra.as_object().into_iter().flatten() {
        c[k] = v.clone();
    }
    c
}

/// Same `iptables-save`/`ip6tables-save` text as the reference for several configurations; our DEL removes the
/// reference's rules and the reference's DEL ours (the node is left as the reference's own DEL leaves it); our
/// CHECK accepts the reference's rules.
fn same_rules_as_reference() {
    require_root();
    let sb = Sandbox::new();
    let pod = sb.pod(0);
    let att = sb.att(0, &pod);
    for extra in [
        json!({}),
        json!({"snat": false}),
        json!({"markMasqBit": 5}),
        json!({"conditionsV4": ["-s", "192.0.2.0/24"], "conditionsV6": ["!", "-s", "fd01::/64"]}),
    ] {
        let conf = pm_conf(extra.clone());
        let base = nat(&sb.node.name);
        let mut seen = Vec::new();
        for (add, del) in [(reference_pm(), ours_pm()), (ours_pm(), reference_pm())] {
            let out = exec_pm(&add, &sb, "ADD", &att, &conf);
            assert!(out.ok(), "{} ADD {extra}: {out:?}", add.display());
            seen.push(nat(&sb.node.name));
            let out = exec_pm(&ours_pm(), &sb, "CHECK", &att, &conf);
            assert!(
                out.ok(),
                "our CHECK after {} ADD {extra}: {out:?}",
                add.display()
            );
            let out = exec_pm(&del, &sb, "DEL", &att, &conf);
            assert!(out.ok(), "{} DEL {extra}: {out:?}", del.display());
            seen.push(nat(&sb.node.name));
        }
        assert_eq!(seen[0], seen[2], "ADD: reference vs ours, {extra}");
        assert_eq!(
            seen[1], seen[3],
            "after DEL: ours of theirs vs theirs of ours, {extra}"
        );
        assert!(!seen[1].contains("CNI-DN-"), "{extra}: {}", seen[1]);
        assert!(
            seen[0].contains(&format!(
                ":{} -",
                cni::plugins::portmap::dnat_chain_name("rtest", &att.container_id)
            )),
            "{}",
            seen[0]
        );
        let _ = base;
    }
    // masqAll came after Debian's 1.1.1 (which ignores it): ours only, ADD, CHECK, DEL.
    let conf = pm_conf(json!({"masqAll": true}));
    for cmd in ["ADD", "CHECK", "DEL"] {
        let out = exec_pm(&ours_pm(), &sb, cmd, &att, &conf);
        assert!(out.ok(), "masqAll {cmd}: {out:?}");
        if cmd == "ADD" {
            let t = nat(&sb.node.name);
            assert!(!t.contains("127.0.0.1"), "masqAll: no localhost rule: {t}");
        }
    }
    assert!(!nat(&sb.node.name).contains("CNI-DN-"));
}

/// CHECK notices a missing rule; DEL succeeds with the pod gone, twice, without CNI_NETNS; a failed ADD (an
/// external mark chain that does not exist) leaves nothing and its DEL succeeds; no mappings: the result passes.
fn del_check_and_partial_add() {
    require_root();
    let sb = Sandbox::new();
    let pod = sb.pod(0);
    let att = sb.att(0, &pod);
    let base = nat(&sb.node.name);
    let conf = pm_conf(json!({}));
    let out = exec_pm(&ours_pm(), &sb, "ADD", &att, &conf);
    assert!(out.ok(), "ADD: {out:?}");
    assert_eq!(out.json()["ips"], prev_result()["ips"]);
    assert!(exec_pm(&ours_pm(), &sb, "CHECK", &att, &conf).ok());
    let chain = cni::plugins::portmap::dnat_chain_name("rtest", &att.container_id);
    let st = Command::new("ip")
        .args([
            "netns",
            "exec",
            &sb.node.name,
            "iptables",
            "-t",
            "nat",
            "-D",
            &chain,
            "1",
        ])
        .status()
        .expect("iptables -D");
    assert!(st.success());
    exec_pm(&ours_pm(), &sb, "CHECK", &att, &conf).assert_err(100);
    pod.delete();
    for _ in 0..2 {
        let out = exec_pm(&ours_pm(), &sb, "DEL", &att, &conf);
        assert!(out.ok(), "DEL: {out:?}");
    }
    let mut no_ns = att.clone();
    no_ns.netns.clear();
    assert!(exec_pm(&ours_pm(), &sb, "DEL", &no_ns, &conf).ok());
    let after = nat(&sb.node.name);
    assert!(!after.contains("CNI-DN-"), "{after}");

    // A failed ADD leaves no per-container chain, in either family.
    let bad = pm_conf(json!({"externalSetMarkChain": "FRT-NO-SUCH"}));
    assert!(!exec_pm(&ours_pm(), &sb, "ADD", &att, &bad).ok());
    let now = nat(&sb.node.name);
    assert!(
        !now.contains("CNI-DN-") && !now.contains("FRT-NO-SUCH"),
        "{now}"
    );
    assert!(exec_pm(&ours_pm(), &sb, "DEL", &att, &bad).ok());

    // No mappings: the previous result, nothing touched.
    let mut none = pm_conf(json!({}));
    none["runtimeConfig"] = json!({});
    let out = exec_pm(&ours_pm(), &sb, "ADD", &att, &none);
    assert!(out.ok(), "{out:?}");
    assert_eq!(out.json()["ips"], prev_result()["ips"]);
    assert_eq!(nat(&sb.node.name), after);
    let _ = base;
}

/// Bad input: code 7 from us (the reference refuses too, with 999, sometimes after making rules, which our DEL
/// then removes); nothing made.
fn bad_input() {
    require_root();
    let sb = Sandbox::new();
    let pod = sb.pod(0);
    let att = sb.att(0, &pod);
    let with_map = |m: Value| {
        let mut c = pm_conf(json!({}));
        c["runtimeConfig"] = json!({"portMappings": [m]});
        c
    };
    let mut no_prev = pm_conf(json!({}));
    no_prev.as_object_mut().map(|o| o.remove("prevResult"));
    let cases = [
        (
            "host port 0",
            with_map(json!({"hostPort": 0, "containerPort": 80, "protocol": "tcp"})),
        ),
        (
            "container port 0",
            with_map(json!({"hostPort": 80, "containerPort": 0, "protocol": "tcp"})),
        ),
        (
            "host port 70000",
            with_map(json!({"hostPort": 70000, "containerPort": 80, "protocol": "tcp"})),
        ),
        (
            "negative port",
            with_map(json!({"hostPort": -5, "containerPort": 80, "protocol": "tcp"})),
        ),
        (
            "string port",
            with_map(json!({"hostPort": "80", "containerPort": 80, "protocol": "tcp"})),
        ),
        (
            "unknown protocol",
            with_map(json!({"hostPort": 80, "containerPort": 80, "protocol": "icmp"})),
        ),
        (
            "no protocol",
            with_map(json!({"hostPort": 80, "containerPort": 80})),
        ),
        ("mark bit 32", pm_conf(json!({"markMasqBit": 32}))),
        (
            "mark bit and external chain",
            pm_conf(json!({"markMasqBit": 1, "externalSetMarkChain": "X"})),
        ),
        ("no prevResult", no_prev),
    ];
    for (what, conf) in &cases {
        let clean = nat(&sb.node.name);
        let out = exec_pm(&ours_pm(), &sb, "ADD", &att, conf);
        out.assert_err(7);
        assert!(!out.stderr.contains("panicked"), "{what}: {out:?}");
        assert_eq!(nat(&sb.node.name), clean, "{what}: rules made");
        let out = exec_pm(&reference_pm(), &sb, "ADD", &att, conf);
        assert_eq!(out.assert_some_err(), 999, "{what}: the reference");
        // Whatever the reference left, our DEL (of a valid config for the same attachment) removes.
        assert!(exec_pm(&ours_pm(), &sb, "DEL", &att, &pm_conf(json!({}))).ok());
        assert!(
            !nat(&sb.node.name).contains("CNI-DN-"),
            "{what}: left after DEL"
        );
    }
    // nftables: a condition that would end the rule and start another command is refused before nft runs.
    let before = nft_tables(&sb.node.name);
    let out = exec_pm(
        &ours_pm(),
        &sb,
        "ADD",
        &att,
        &pm_conf(
            json!({"backend": "nftables", "conditionsV4": ["ip", "saddr", "1.2.3.4", ";", "flush", "ruleset"]}),
        ),
    );
    out.assert_err(7);
    assert_eq!(nft_tables(&sb.node.name), before);
}

/// Conntrack of `ns` as nf_conntrack in procfs shows it (`thread-self`: `/proc/net` is the process's namespace).
fn conntrack(ns: &str) -> String {
    in_ns(ns, || {
        std::fs::read_to_string("/proc/thread-self/net/nf_conntrack").unwrap_or_default()
    })
}

/// A UDP flow to a host port that started before the port was mapped (its conntrack entry has no DNAT) reaches
/// the pod once the mapping is made: ADD deletes the UDP entries to the mapped ports. Before, every datagram of
/// the flow kept matching the old entry and went to the node itself.
fn udp_flow_started_before_the_mapping() {
    udp_flow_before_mapping(None);
}

fn udp_flow_started_before_the_mapping_nftables() {
    udp_flow_before_mapping(Some("nftables"));
}

fn udp_flow_before_mapping(backend: Option<&str>) {
    let (sb, rt, net, client) = node_with_lan(backend);
    let pods = sb.pods(2);
    // Pod 0 with a TCP hostPort: the node's nat rules exist, so conntrack tracks the flow below.
    let a0 = sb.att(0, &pods[0]);
    let m0 = rc(json!([{"hostPort": 8080, "containerPort": 80, "protocol": "tcp"}]));
    let r0 = rt
        .add_rc(&net, &a0, &m0)
        .unwrap_or_else(|o| panic!("ADD 0: {o:?}"));
    let sock = in_ns(&client.name, || {
        let s = std::net::UdpSocket::bind("192.168.77.2:40053").expect("bind");
        s.send_to(b"early", "192.168.77.1:5353").expect("send");
        s
    });
    let ct = conntrack(&sb.node.name);
    assert!(
        ct.lines()
            .any(|l| l.contains("udp") && l.contains("sport=40053 dport=5353")),
        "no entry for the early flow: {ct}"
    );
    // The pod listens, then gets the mapping.
    let pod = pods[1].name.clone();
    let (tx, rx) = std::sync::mpsc::channel();
    let server = std::thread::spawn(move || {
        in_ns(&pod, move || {
            let s = std::net::UdpSocket::bind("0.0.0.0:53").expect("bind :53");
            s.set_read_timeout(Some(Duration::from_secs(3)))
                .expect("timeout");
            let _ = tx.send(());
            let mut b = [0u8; 64];
            s.recv_from(&mut b).ok().map(|(n, _)| b[..n].to_vec())
        })
    });
    rx.recv_timeout(Duration::from_secs(5)).expect("server up");
    let a1 = sb.att(1, &pods[1]);
    let m1 = rc(json!([{"hostPort": 5353, "containerPort": 53, "protocol": "udp"}]));
    let r1 = rt
        .add_rc(&net, &a1, &m1)
        .unwrap_or_else(|o| panic!("ADD 1: {o:?}"));
    in_ns(&client.name, move || {
        sock.send_to(b"later", "192.168.77.1:5353").expect("send");
    });
    let got = server.join().expect("server thread");
    assert_eq!(
        got.as_deref(),
        Some(&b"later"[..]),
        "the flow that started before the mapping did not reach the pod; conntrack:\n{}",
        conntrack(&sb.node.name)
    );
    for (att, maps, r) in [(&a1, &m1, &r1), (&a0, &m0, &r0)] {
        rt.del_rc(&net, att, maps, Some(r))
            .unwrap_or_else(|o| panic!("DEL: {o:?}"));
    }
}

/// Kills of portmap ADD in the SIGKILL test, per backend.
const ADD_KILLS: usize = 15;

/// ADD SIGKILLed at a random point of its run (before, during or after its iptables or nft transaction), then DEL as the
/// runtime does after a failed ADD: nothing of the attachment is left, in iptables or nftables, wherever the
/// kill landed.
fn sigkill_during_add_then_del_leaves_nothing() {
    require_root();
    let sb = Sandbox::new();
    let pod = sb.pod(0);
    let rt = sb.runtime(&Impl::ours());
    let mut jitter = Jitter::new();
    for backend in ["iptables", "nftables"] {
        // The kills spread over one whole ADD (the shortest of three, measured here, whatever the build and the
        // machine).
        let probe = sb.att(0, &pod);
        let conf = pm_conf(json!({"backend": backend}));
        let mut span = Duration::MAX;
        for _ in 0..3 {
            let out = exec_pm(&ours_pm(), &sb, "ADD", &probe, &conf);
            assert!(out.ok(), "{backend}: ADD: {out:?}");
            assert!(exec_pm(&ours_pm(), &sb, "DEL", &probe, &conf).ok());
            span = span.min(out.elapsed);
        }
        let mut killed = 0;
        for i in 0..ADD_KILLS {
            let mut att = sb.att(0, &pod);
            att.container_id = format!("{}k{i}", att.container_id);
            let conf = pm_conf(json!({"backend": backend}));
            if exec_plugin_killed(
                &ours_pm(),
                Some(&sb.node.path()),
                &rt.env_for("ADD", Some(&att)),
                conf.to_string().as_bytes(),
                jitter.below(span),
            ) {
                killed += 1;
            }
            let out = exec_pm(&ours_pm(), &sb, "DEL", &att, &conf);
            assert!(out.ok(), "{backend} iteration {i}: DEL: {out:?}");
            let chain = cni::plugins::portmap::dnat_chain_name("rtest", &att.container_id);
            let t = nat(&sb.node.name);
            assert!(!t.contains(&chain), "{backend} iteration {i}: {t}");
            let n = nft_tables(&sb.node.name);
            assert!(
                !n.contains(att.container_id.as_str()),
                "{backend} iteration {i}: {n}"
            );
        }
        eprintln!("{backend}: {ADD_KILLS} ADDs, {killed} killed before finishing");
    }
}

/// nft's view of one element key in a set or map of `cni_hostport` (`nft get element`): its line, if it is there.
fn nft_get(ns: &str, fam: &str, set: &str, key: &str) -> Option<String> {
    let o = Command::new("ip")
        .args([
            "netns",
            "exec",
            ns,
            "nft",
            "get",
            "element",
            fam,
            "cni_hostport",
            set,
        ])
        .arg(format!("{{ {key} }}"))
        .output()
        .expect("run nft");
    o.status
        .success()
        .then(|| String::from_utf8_lossy(&o.stdout).into_owned())
}

fn nft_ok(ns: &str, cmd: &str) {
    let o = Command::new("ip")
        .args(["netns", "exec", ns, "nft", cmd])
        .output()
        .expect("run nft");
    assert!(o.status.success(), "nft {cmd}: {o:?}");
}

/// The nftables backend: ADD makes elements (both families), CHECK verifies them and notices one gone; DEL is
/// idempotent and also removes the rules the reference's nftables backend writes for the container (comment =
/// container ID), not others'; a stale element on a hostPort is replaced by a new pod's, whose element the stale
/// pod's late DEL leaves alone; GC removes what valid-attachments does not name.
fn nftables_check_del_stale_and_gc() {
    require_root();
    let sb = Sandbox::new();
    let pods = sb.pods(2);
    let atts: Vec<Att> = pods.iter().enumerate().map(|(i, p)| sb.att(i, p)).collect();
    let ns = sb.node.name.clone();
    let mut conf = pm_conf(json!({"backend": "nftables"}));
    conf["cniVersion"] = json!("1.1.0");
    let out = exec_pm(&ours_pm(), &sb, "ADD", &atts[0], &conf);
    assert!(out.ok(), "ADD: {out:?}");
    assert_eq!(out.json()["ips"], prev_result()["ips"]);
    let got = nft_get(&ns, "ip", "port_dnat", "tcp . 8080").expect("v4 element");
    assert!(got.contains("10.250.0.2 . 80"), "{got}");
    assert!(nft_get(&ns, "ip", "hostip_dnat", "10.250.0.1 . tcp . 8443").is_some());
    assert!(nft_get(&ns, "ip6", "hostip_dnat", "fd00:250::1 . sctp . 5354").is_some());
    assert!(nft_get(&ns, "ip6", "port_dnat", "udp . 5353").is_some());
    assert!(nft_get(&ns, "ip", "masq_pairs", "127.0.0.1 . 10.250.0.2").is_some());
    assert!(exec_pm(&ours_pm(), &sb, "CHECK", &atts[0], &conf).ok());
    nft_ok(
        &ns,
        "delete element ip cni_hostport masq_pairs { 127.0.0.1 . 10.250.0.2 }",
    );
    exec_pm(&ours_pm(), &sb, "CHECK", &atts[0], &conf).assert_err(100);
    // A second ADD of the same attachment repairs it.
    assert!(exec_pm(&ours_pm(), &sb, "ADD", &atts[0], &conf).ok());
    assert!(exec_pm(&ours_pm(), &sb, "CHECK", &atts[0], &conf).ok());

    // Rules of the reference's layout for this container, and one of another container, in the chains the
    // reference makes (we never make them).
    let cid = &atts[0].container_id;
    nft_ok(&ns, "add chain ip cni_hostport hostports");
    nft_ok(&ns, &format!("add rule ip cni_hostport hostports tcp dport 9999 dnat to 10.250.0.2:80 comment \"{cid}\""));
    nft_ok(
        &ns,
        "add chain ip cni_hostport masquerading { type nat hook postrouting priority srcnat ; }",
    );
    nft_ok(&ns, &format!("add rule ip cni_hostport masquerading ip saddr 10.250.0.2 ip daddr 10.250.0.2 masquerade comment \"{cid}\""));
    nft_ok(&ns, "add rule ip cni_hostport hostports tcp dport 9998 dnat to 10.250.0.9:80 comment \"someone-else\"");
    for _ in 0..2 {
        assert!(exec_pm(&ours_pm(), &sb, "DEL", &atts[0], &conf).ok());
    }
    let t = nft_tables(&ns);
    assert!(!t.contains(cid.as_str()), "DEL left some: {t}");
    assert!(
        t.contains("someone-else"),
        "another container's rule removed: {t}"
    );

    // A stale element (attachment 0, never DELeted) on 8080; attachment 1 takes the port.
    assert!(exec_pm(&ours_pm(), &sb, "ADD", &atts[0], &conf).ok());
    let mut conf1 = conf.clone();
    conf1["prevResult"]["ips"] = json!([{"address": "10.250.0.3/24", "interface": 1}]);
    conf1["runtimeConfig"]["portMappings"] =
        json!([{"hostPort": 8080, "containerPort": 80, "protocol": "tcp"}]);
    let out = exec_pm(&ours_pm(), &sb, "ADD", &atts[1], &conf1);
    assert!(out.ok(), "ADD over a stale element: {out:?}");
    let got = nft_get(&ns, "ip", "port_dnat", "tcp . 8080").expect("element");
    assert!(got.contains("10.250.0.3 . 80"), "{got}");
    assert!(exec_pm(&ours_pm(), &sb, "DEL", &atts[0], &conf).ok());
    assert!(
        nft_get(&ns, "ip", "port_dnat", "tcp . 8080").is_some(),
        "the stale pod's DEL took the new pod's port"
    );
    assert!(exec_pm(&ours_pm(), &sb, "CHECK", &atts[1], &conf1).ok());

    // GC: attachment 0 again, then only attachment 1 valid, then none.
    assert!(exec_pm(
        &ours_pm(),
        &sb,
        "ADD",
        &atts[0],
        &pm_conf(json!({"backend": "nftables", "runtimeConfig":
        {"portMappings": [{"hostPort": 7070, "containerPort": 80, "protocol": "tcp"}]}}))
    )
    .ok());
    let rt = sb.runtime(&Impl::ours());
    let mut gc = json!({"cniVersion": "1.1.0", "name": "rtest", "type": "portmap", "backend": "nftables",
        "cni.dev/valid-attachments": [{"containerID": atts[1].container_id, "ifname": "eth0"}]});
    let run_gc = |gc: &Value| {
        exec_plugin(
            &ours_pm(),
            Some(&sb.node.path()),
            &rt.env_for("GC", None),
            gc.to_string().as_bytes(),
        )
    };
    assert!(run_gc(&gc).ok());
    let t = nft_tables(&ns);
    assert!(
        !t.contains(atts[0].container_id.as_str()),
        "stale kept: {t}"
    );
    assert!(
        t.contains(atts[1].container_id.as_str()),
        "valid removed: {t}"
    );
    gc["cni.dev/valid-attachments"] = json!([]);
    assert!(run_gc(&gc).ok());
    let t = nft_tables(&ns);
    assert!(!t.contains(atts[1].container_id.as_str()), "{t}");
}

/// GC (spec 1.1) removes the chains of the attachments not in `cni.dev/valid-attachments`, keeps the others.
fn gc_removes_stale_attachments() {
    require_root();
    let sb = Sandbox::new();
    let pods = sb.pods(2);
    let atts: Vec<Att> = pods.iter().enumerate().map(|(i, p)| sb.att(i, p)).collect();
    let mut conf = pm_conf(json!({}));
    conf["cniVersion"] = json!("1.1.0");
    for a in &atts {
        assert!(exec_pm(&ours_pm(), &sb, "ADD", a, &conf).ok());
    }
    let chain = |a: &Att| cni::plugins::portmap::dnat_chain_name("rtest", &a.container_id);
    let mut gc = json!({"cniVersion": "1.1.0", "name": "rtest", "type": "portmap",
        "cni.dev/valid-attachments": [{"containerID": atts[0].container_id, "ifname": "eth0"}]});
    let rt = sb.runtime(&Impl::ours());
    let out = exec_plugin(
        &ours_pm(),
        Some(&sb.node.path()),
        &rt.env_for("GC", None),
        gc.to_string().as_bytes(),
    );
    assert!(out.ok(), "GC: {out:?}");
    let t = nat(&sb.node.name);
    assert!(t.contains(&chain(&atts[0])), "valid kept: {t}");
    assert!(!t.contains(&chain(&atts[1])), "stale removed: {t}");
    gc["cni.dev/valid-attachments"] = json!([]);
    let out = exec_plugin(
        &ours_pm(),
        Some(&sb.node.path()),
        &rt.env_for("GC", None),
        gc.to_string().as_bytes(),
    );
    assert!(out.ok(), "GC: {out:?}");
    assert!(!nat(&sb.node.name).contains("CNI-DN-"));
}

testkit::main!(
    same_rules_as_reference,
    gc_removes_stale_attachments,
    del_check_and_partial_add,
    bad_input,
    host_ports_reached_everywhere,
    host_ports_reached_everywhere_nftables,
    nftables_check_del_stale_and_gc,
    udp_flow_started_before_the_mapping,
    udp_flow_started_before_the_mapping_nftables,
    sigkill_during_add_then_del_leaves_nothing,
    ipv6_host_ports,
);
