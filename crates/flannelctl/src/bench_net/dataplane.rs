//! `flannelctl bench dataplane`: pod-to-pod TCP throughput and latency across two nodes, for each flanneld
//! backend against the same path configured by hand and against a plain veth pair.

use super::{
    bridge, check_interrupt, command_in, ip, machine, machine_line, mean, median, need, ns_path,
    percentile, r3, run_bounded, sorted, sysctl_in, verdict, Bins, Daemon, Underlay, World,
};
use anyhow::{anyhow, bail, Context, Result};
use serde_json::{json, Value};
use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::time::{Duration, Instant};

/// Throughput/latency target against the hand-configured path.
const TARGET: f64 = 0.97;
/// Ping: count and interval.
const PING_COUNT: &str = "200";
const PING_INTERVAL: &str = "0.005";
/// TCP request/response transactions measured (after a warm-up).
const RR_COUNT: usize = 10_000;
const RR_WARMUP: usize = 500;
/// The flannel network of our clusters and of the hand-made paths.
const NETWORK: &str = "10.244.0.0/16";

/// What to run.
#[derive(Debug, Clone)]
pub struct Options {
    /// iperf3 seconds per measurement.
    pub seconds: u32,
    /// Rounds over all subjects (interleaved; medians reported).
    pub rounds: u32,
    /// Where flanneld and the plugins are.
    pub bins: std::path::PathBuf,
    /// JSON output.
    pub json: bool,
    /// Also measure a second, identical hand-made path per backend (an A/A control: the noise floor of a ratio).
    pub control: bool,
    /// Only these groups of paths (`veth`, `vxlan`, `host-gw`, `udp`); empty: all.
    pub paths: Vec<String>,
}

/// A path between two pods.
#[derive(Debug, Clone)]
struct Subject {
    key: &'static str,
    label: &'static str,
    /// Pod namespaces: client on node 1, server on node 2.
    client: String,
    server: String,
    server_ip: Ipv4Addr,
    mtu: u32,
}

/// Samples of one subject over all rounds.
#[derive(Debug, Default, Clone)]
struct Samples {
    gbps: Vec<f64>,
    /// Four parallel streams.
    gbps4: Vec<f64>,
    /// CPU seconds of the whole machine per GB received (single stream).
    cpu_s_per_gb: Vec<f64>,
    retrans: Vec<f64>,
    ping_us: Vec<f64>,
    ping_lost: usize,
    rr_us: Vec<f64>,
    rr_p50_per_round: Vec<f64>,
    errors: Vec<String>,
}

/// A comparison: ours against a baseline, with its targets (`None`: reported, no target).
struct Pair {
    ours: &'static str,
    baseline: &'static str,
    /// Throughput ours/baseline, single stream (and four streams where `four_streams` is set).
    tput: Option<f64>,
    /// Latency baseline/ours (TCP RR p50).
    rr: Option<f64>,
    /// Whether the four-stream ratio is held to `tput` too.
    four_streams: bool,
}

const fn pair(
    ours: &'static str,
    baseline: &'static str,
    tput: Option<f64>,
    rr: Option<f64>,
) -> Pair {
    Pair {
        ours,
        baseline,
        tput,
        rr,
        four_streams: false,
    }
}

/// The udp backend's targets against kernel VXLAN: throughput >= 0.7x with 1 and with 4 streams, RR latency
/// within 1.5x.
const UDP_TPUT: f64 = 0.7;
const UDP_RR: f64 = 1.0 / 1.5;

/// (ours, hand-made baseline) pairs that the targets apply to, then the A/A controls.
const PAIRS: [Pair; 8] = [
    pair("ours-vxlan", "hand-vxlan", Some(TARGET), Some(TARGET)),
    pair("ours-vxlan-masq", "hand-vxlan", Some(TARGET), Some(TARGET)),
    pair("ours-host-gw", "hand-host-gw", Some(TARGET), Some(TARGET)),
    pair(
        "ours-host-gw-masq",
        "hand-host-gw",
        Some(TARGET),
        Some(TARGET),
    ),
    Pair {
        ours: "ours-udp",
        baseline: "hand-vxlan",
        tput: Some(UDP_TPUT),
        rr: Some(UDP_RR),
        four_streams: true,
    },
    pair("ours-udp-plain", "hand-vxlan", None, None),
    pair("hand-vxlan-b", "hand-vxlan", Some(TARGET), Some(TARGET)),
    pair("hand-host-gw-b", "hand-host-gw", Some(TARGET), Some(TARGET)),
];

/// Runs the benchmark; returns the exit code.
pub fn run(o: &Options) -> Result<i32> {
    let bins = Bins::find(&o.bins)?;
    need("iperf3", "iperf3")?;
    need("ping", "iputils-ping")?;
    need("etcd", "etcd-server")?;
    if o.seconds == 0 || o.seconds > 600 || o.rounds == 0 || o.rounds > 50 {
        bail!("--seconds must be 1..600 and --rounds 1..50");
    }
    let world = World::new("dataplane")?;
    let m = machine();
    if !o.json {
        eprintln!("{}", machine_line(&m));
        eprintln!("building: plain veth, hand-made vxlan, hand-made routing, flanneld vxlan and host-gw clusters ...");
    }
    let subjects = match build_all(&world, &bins, o.control, &o.paths) {
        Ok(s) => s,
        Err(e) => {
            if super::interrupted() {
                drop(world);
                eprintln!(
                    "flannelctl: interrupted; namespaces, processes and temporary files removed"
                );
                return Ok(130);
            }
            return Err(e);
        }
    };
    let mut samples: Vec<Samples> = vec![Samples::default(); subjects.len()];
    let mut order: Vec<usize> = (0..subjects.len()).collect();
    for round in 0..o.rounds {
        // Alternate the order so that no subject always runs first or right after another one.
        if round > 0 {
            order.reverse();
        }
        for &i in &order {
            if super::interrupted() {
                break;
            }
            let s = &subjects[i];
            if !o.json {
                eprintln!(
                    "round {}/{}: {} (load {:.2}) ...",
                    round + 1,
                    o.rounds,
                    s.label,
                    super::loadavg()
                );
            }
            if let Err(e) = measure(&world, s, o, &mut samples[i]) {
                samples[i].errors.push(format!("{e:#}"));
            }
        }
    }
    if super::interrupted() {
        drop(world);
        eprintln!("flannelctl: interrupted; namespaces, processes and temporary files removed");
        return Ok(130);
    }
    let out = to_json(o, &m, &subjects, &samples);
    if o.json {
        println!("{}", serde_json::to_string_pretty(&out)?);
    } else {
        print_table(&out);
    }
    drop(world);
    Ok(if samples.iter().any(|s| s.gbps.is_empty()) {
        2
    } else {
        0
    })
}

/// The paths to build: all, or those named in `--paths` (`veth`, `vxlan`, `host-gw`, `udp`).
fn wanted(paths: &[String], group: &str) -> bool {
    paths.is_empty() || paths.iter().any(|p| p == group)
}

fn build_all(world: &World, bins: &Bins, control: bool, paths: &[String]) -> Result<Vec<Subject>> {
    let mut v = Vec::new();
    if wanted(paths, "veth") {
        v.push(build_veth(world)?);
    }
    for vxlan in [true, false] {
        // udp is compared with kernel VXLAN: its baseline comes with it.
        let group = if vxlan { "vxlan" } else { "host-gw" };
        let baseline_only = vxlan && !wanted(paths, group) && wanted(paths, "udp");
        if !wanted(paths, group) && !baseline_only {
            continue;
        }
        v.push(build_hand(world, vxlan, false)?);
        if baseline_only {
            continue;
        }
        let ours = build_ours(world, bins, group)?;
        let mut ours = ours.into_iter();
        v.extend(ours.next());
        if control {
            v.push(build_hand(world, vxlan, true)?);
        }
        v.extend(ours);
    }
    if wanted(paths, "udp") {
        v.push(build_udp(world, bins, true)?);
        v.push(build_udp(world, bins, false)?);
    }
    for s in &v {
        wait_reachable(s)?;
    }
    Ok(v)
}

/// (a) Two namespaces joined by one veth pair.
fn build_veth(world: &World) -> Result<Subject> {
    let a = world.netns("ve-a")?;
    let b = world.netns("ve-b")?;
    ip(&[
        "-n", &a, "link", "add", "eth0", "type", "veth", "peer", "name", "eth0", "netns", &b,
    ])?;
    for (ns, addr) in [(&a, "10.99.0.1/24"), (&b, "10.99.0.2/24")] {
        ip(&["-n", ns, "link", "set", "lo", "up"])?;
        ip(&["-n", ns, "addr", "add", addr, "dev", "eth0"])?;
        ip(&["-n", ns, "link", "set", "eth0", "up"])?;
    }
    Ok(Subject {
        key: "veth",
        label: "plain veth pair (ceiling)",
        client: a,
        server: b,
        server_ip: Ipv4Addr::new(10, 99, 0, 2),
        mtu: 1500,
    })
}

/// The VTEP MAC of hand-made node `i`.
fn hand_mac(i: usize) -> String {
    format!("02:42:c0:00:02:{i:02x}")
}

/// (b)/(d) The flannel data path built by hand with `ip`/`bridge`: per node a bridge cni0 (10.244.N.1/24) with one
/// pod on a veth (hairpin on, as our bridge plugin makes it), forwarding on, and either a VXLAN device exactly as
/// flanneld makes it (VNI 1, dstport 8472, nolearning, MTU 1450, the subnet's .0/32 on it, and per peer a
/// permanent neighbour, an FDB entry and an onlink route) or plain routes via the peer's underlay address.
fn build_hand(world: &World, vxlan: bool, copy: bool) -> Result<Subject> {
    let name = match (vxlan, copy) {
        (true, false) => "hv",
        (true, true) => "hv2",
        (false, false) => "hr",
        (false, true) => "hr2",
    };
    let u = Underlay::build(world, name, 2)?;
    let mtu: u32 = if vxlan { 1450 } else { 1500 };
    let mtu_s = mtu.to_string();
    let mut pods = Vec::new();
    for (k, node) in u.nodes.iter().enumerate() {
        let i = k + 1;
        sysctl_in(node, &["net", "ipv4", "ip_forward"], "1")?;
        if vxlan {
            ip(&[
                "-n",
                node,
                "link",
                "add",
                "flannel.1",
                "type",
                "vxlan",
                "id",
                "1",
                "local",
                &Underlay::node_ip(i).to_string(),
                "dev",
                "eth0",
                "dstport",
                "8472",
                "nolearning",
            ])?;
            ip(&[
                "-n",
                node,
                "link",
                "set",
                "flannel.1",
                "address",
                &hand_mac(i),
                "mtu",
                "1450",
                "up",
            ])?;
            ip(&[
                "-n",
                node,
                "addr",
                "add",
                &format!("10.244.{i}.0/32"),
                "dev",
                "flannel.1",
            ])?;
        }
        ip(&[
            "-n", node, "link", "add", "cni0", "mtu", &mtu_s, "type", "bridge",
        ])?;
        ip(&[
            "-n",
            node,
            "addr",
            "add",
            &format!("10.244.{i}.1/24"),
            "dev",
            "cni0",
        ])?;
        ip(&["-n", node, "link", "set", "cni0", "up"])?;
        let pod = world.netns(&format!("{name}-p{i}"))?;
        ip(&[
            "-n", node, "link", "add", "veth0", "mtu", &mtu_s, "type", "veth", "peer", "name",
            "eth0", "mtu", &mtu_s, "netns", &pod,
        ])?;
        ip(&["-n", node, "link", "set", "veth0", "master", "cni0", "up"])?;
        bridge(&["-n", node, "link", "set", "dev", "veth0", "hairpin", "on"])?;
        ip(&["-n", &pod, "link", "set", "lo", "up"])?;
        ip(&[
            "-n",
            &pod,
            "addr",
            "add",
            &format!("10.244.{i}.2/24"),
            "dev",
            "eth0",
        ])?;
        ip(&["-n", &pod, "link", "set", "eth0", "up"])?;
        ip(&[
            "-n",
            &pod,
            "route",
            "add",
            "default",
            "via",
            &format!("10.244.{i}.1"),
        ])?;
        pods.push(pod);
    }
    for (k, node) in u.nodes.iter().enumerate() {
        let j = 2 - k; // the other node
        let subnet = format!("10.244.{j}.0/24");
        if vxlan {
            let gw = format!("10.244.{j}.0");
            ip(&[
                "-n",
                node,
                "route",
                "add",
                &subnet,
                "via",
                &gw,
                "dev",
                "flannel.1",
                "onlink",
            ])?;
            ip(&[
                "-n",
                node,
                "neigh",
                "add",
                &gw,
                "lladdr",
                &hand_mac(j),
                "dev",
                "flannel.1",
                "nud",
                "permanent",
            ])?;
            bridge(&[
                "-n",
                node,
                "fdb",
                "add",
                &hand_mac(j),
                "dev",
                "flannel.1",
                "dst",
                &Underlay::node_ip(j).to_string(),
                "self",
                "permanent",
            ])?;
        } else {
            ip(&[
                "-n",
                node,
                "route",
                "add",
                &subnet,
                "via",
                &Underlay::node_ip(j).to_string(),
                "dev",
                "eth0",
            ])?;
        }
    }
    let (key, label) = match (vxlan, copy) {
        (true, false) => ("hand-vxlan", "hand-made kernel vxlan"),
        (true, true) => ("hand-vxlan-b", "hand-made kernel vxlan (A/A copy)"),
        (false, false) => ("hand-host-gw", "hand-made plain routing"),
        (false, true) => ("hand-host-gw-b", "hand-made plain routing (A/A copy)"),
    };
    Ok(Subject {
        key,
        label,
        client: pods[0].clone(),
        server: pods[1].clone(),
        server_ip: Ipv4Addr::new(10, 244, 2, 2),
        mtu,
    })
}

/// A flanneld cluster on etcd, one node per entry of `nodes` (its flanneld flags, and the bridge's `ipMasq`, `None`
/// for the plugin's default), `backend` the network config's `Backend`, one pod per node: the pods and their
/// addresses.
fn cluster(
    world: &World,
    bins: &Bins,
    name: &str,
    backend: &str,
    nodes: &[(&[&str], Option<bool>)],
) -> Result<Vec<(String, Ipv4Addr)>> {
    let u = Underlay::build(world, name, nodes.len())?;
    let config = format!(r#"{{"Network":"{NETWORK}","Backend":{backend}}}"#);
    super::start_etcd(world, &u, &format!("{name}-etcd"), &config)?;
    let mut daemons = Vec::new();
    for (k, (node, (flags, _))) in u.nodes.iter().zip(nodes).enumerate() {
        daemons.push(Daemon::start(
            world,
            bins,
            node,
            &format!("{name}-flanneld{}", k + 1),
            flags,
        )?);
    }
    for d in &daemons {
        d.wait_ready(world, Duration::from_secs(30))?;
    }
    let mut pods = Vec::new();
    for (k, (d, (_, ip_masq))) in daemons.iter().zip(nodes).enumerate() {
        let pod = world.netns(&format!("{name}-p{}", k + 1))?;
        let addr = super::attach_pod(world, bins, d, &pod, *ip_masq)
            .with_context(|| format!("attach a pod on {}", d.ns))?;
        pods.push((pod, addr));
    }
    Ok(pods)
}

/// (c)/(e) A flanneld cluster on etcd with 4 nodes: nodes 1-2 run flanneld with no traffic rules (no --ip-masq,
/// --iptables-forward-rules=false, bridge ipMasq false), exactly the kernel path of the hand-made baseline;
/// nodes 3-4 run it as upstream's manifest does (--ip-masq, forward rules on), which puts netfilter (conntrack,
/// nat) in the path. One pod per node, attached with our loopback + flannel (-> bridge -> host-local) plugins.
fn build_ours(world: &World, bins: &Bins, backend: &str) -> Result<Vec<Subject>> {
    let name = if backend == "vxlan" { "ov" } else { "og" };
    let plain = (&["--iptables-forward-rules=false"][..], Some(false));
    let masq = (&["--ip-masq"][..], None);
    let pods = cluster(
        world,
        bins,
        name,
        &format!(r#"{{"Type":"{backend}"}}"#),
        &[plain, plain, masq, masq],
    )?;
    let mtu = if backend == "vxlan" { 1450 } else { 1500 };
    let vx = backend == "vxlan";
    Ok(vec![
        Subject {
            key: if vx { "ours-vxlan" } else { "ours-host-gw" },
            label: if vx {
                "ours: flanneld vxlan + CNI"
            } else {
                "ours: flanneld host-gw + CNI"
            },
            mtu,
            ..between(&pods[0], &pods[1])
        },
        Subject {
            key: if vx {
                "ours-vxlan-masq"
            } else {
                "ours-host-gw-masq"
            },
            label: if vx {
                "ours: vxlan, --ip-masq + fwd rules"
            } else {
                "ours: host-gw, --ip-masq + fwd rules"
            },
            mtu,
            ..between(&pods[2], &pods[3])
        },
    ])
}

/// (f) A two-node flanneld cluster on the udp backend (no traffic rules, as (c)): the offload path, or with
/// `Offload: false` the one-packet-per-syscall path.
fn build_udp(world: &World, bins: &Bins, offload: bool) -> Result<Subject> {
    let name = if offload { "ou" } else { "op" };
    let plain = (&["--iptables-forward-rules=false"][..], Some(false));
    let pods = cluster(
        world,
        bins,
        name,
        &format!(r#"{{"Type":"udp","Offload":{offload}}}"#),
        &[plain, plain],
    )?;
    Ok(Subject {
        key: if offload {
            "ours-udp"
        } else {
            "ours-udp-plain"
        },
        label: if offload {
            "ours: flanneld udp (offload path)"
        } else {
            "ours: udp, one packet per syscall"
        },
        mtu: 1472,
        ..between(&pods[0], &pods[1])
    })
}

/// The path from the first pod to the second (key, label and MTU left for the caller to set).
fn between(client: &(String, Ipv4Addr), server: &(String, Ipv4Addr)) -> Subject {
    Subject {
        key: "",
        label: "",
        client: client.0.clone(),
        server: server.0.clone(),
        server_ip: server.1,
        mtu: 0,
    }
}

/// Pings until the server pod answers (flanneld may still be programming its peers).
fn wait_reachable(s: &Subject) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        check_interrupt()?;
        let mut c = command_in(&s.client, "ping")?;
        c.args(["-n", "-c1", "-W1", &s.server_ip.to_string()]);
        if run_bounded(&mut c, Duration::from_secs(3)).is_ok_and(|o| o.status.success()) {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!(
                "{}: {} cannot reach {} within 20 s",
                s.label,
                s.client,
                s.server_ip
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn measure(world: &World, s: &Subject, o: &Options, out: &mut Samples) -> Result<()> {
    let (gbps, retrans, cpu) = iperf(world, s, o.seconds, 1)?;
    out.gbps.push(gbps);
    out.retrans.push(retrans);
    out.cpu_s_per_gb.extend(cpu);
    let (gbps4, _, _) = iperf(world, s, o.seconds, 4)?;
    out.gbps4.push(gbps4);
    let (ping, lost) = ping(s)?;
    out.ping_us.extend(ping);
    out.ping_lost += lost;
    let rr = tcp_rr(s)?;
    out.rr_p50_per_round.push(median(&rr));
    out.rr_us.extend(rr);
    Ok(())
}

/// Busy and total CPU time of the whole machine so far, in clock ticks (`/proc/stat`, first line).
fn cpu_ticks() -> Option<(u64, u64)> {
    let stat = std::fs::read_to_string("/proc/stat").ok()?;
    let line = stat.lines().next()?;
    let v: Vec<u64> = line
        .split_whitespace()
        .skip(1)
        .filter_map(|x| x.parse().ok())
        .collect();
    // user nice system idle iowait irq softirq steal
    let total: u64 = v.iter().take(8).sum();
    let idle = v.get(3).copied().unwrap_or(0) + v.get(4).copied().unwrap_or(0);
    Some((total.saturating_sub(idle), total))
}

/// One iperf3 run (`streams` parallel TCP streams, client in pod 1, server in pod 2, the first second omitted):
/// Gbit/s received, the sender's retransmissions, and the machine's CPU seconds per GB received (all CPU of the
/// run, the warm-up second included: the same for every path).
fn iperf(
    world: &World,
    s: &Subject,
    seconds: u32,
    streams: u32,
) -> Result<(f64, f64, Option<f64>)> {
    let mut srv = command_in(&s.server, "iperf3")?;
    srv.args(["-s", "-1", "-p", "5201"]);
    let label = format!("iperf3-{}", s.key);
    let pid = world.spawn(&label, srv)?;
    let res = (|| -> Result<(f64, f64, Option<f64>)> {
        std::thread::sleep(Duration::from_millis(100));
        let mut tries = 0;
        loop {
            check_interrupt()?;
            let mut c = command_in(&s.client, "iperf3")?;
            c.args([
                "-c",
                &s.server_ip.to_string(),
                "-p",
                "5201",
                "-O",
                "1",
                "-J",
            ])
            .args(["-t", &seconds.to_string(), "-P", &streams.to_string()]);
            let t0 = cpu_ticks();
            let out = run_bounded(&mut c, Duration::from_secs(u64::from(seconds) + 30))?;
            let t1 = cpu_ticks();
            let v: Value = serde_json::from_slice(&out.stdout).unwrap_or(Value::Null);
            if let Some(bps) = v
                .pointer("/end/sum_received/bits_per_second")
                .and_then(Value::as_f64)
            {
                let retrans = v
                    .pointer("/end/sum_sent/retransmits")
                    .and_then(Value::as_f64)
                    .unwrap_or(0.0);
                // SAFETY: sysconf has no preconditions.
                let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64;
                let gb = v
                    .pointer("/end/sum_received/bytes")
                    .and_then(Value::as_f64)
                    .unwrap_or(0.0)
                    / 1e9;
                let cpu = match (t0, t1) {
                    (Some((b0, _)), Some((b1, _))) if gb > 0.0 => {
                        Some(b1.saturating_sub(b0) as f64 / hz / gb)
                    }
                    _ => None,
                };
                return Ok((bps / 1e9, retrans, cpu));
            }
            let err = v
                .get("error")
                .and_then(Value::as_str)
                .map(str::to_string)
                .unwrap_or_else(|| String::from_utf8_lossy(&out.stderr).into_owned());
            tries += 1;
            if tries > 40 || !err.contains("connect") {
                bail!("iperf3 to {} failed: {err}", s.server_ip);
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    })();
    // -1: the server exits after one test; stop it anyway (also after an error).
    let _ = world.stop(pid, Duration::from_secs(2));
    res
}

/// `ping -c 200 -i 0.005`: per-packet RTTs in µs and the number lost.
fn ping(s: &Subject) -> Result<(Vec<f64>, usize)> {
    let mut c = command_in(&s.client, "ping")?;
    c.args(["-n", "-c", PING_COUNT, "-i", PING_INTERVAL, "-W", "1"])
        .arg(s.server_ip.to_string());
    let out = run_bounded(&mut c, Duration::from_secs(30))?;
    let text = String::from_utf8_lossy(&out.stdout);
    let rtts: Vec<f64> = text
        .lines()
        .filter_map(|l| l.split("time=").nth(1))
        .filter_map(|t| t.split_whitespace().next())
        .filter_map(|t| t.parse::<f64>().ok())
        .map(|ms| ms * 1000.0)
        .collect();
    if rtts.is_empty() {
        bail!(
            "ping to {} got no replies: {}",
            s.server_ip,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    let sent: usize = PING_COUNT.parse().unwrap_or(0);
    Ok((rtts.clone(), sent.saturating_sub(rtts.len())))
}

/// A TCP_RR-style loop: one connection, 1 byte request, 1 byte response, `RR_COUNT` times after a warm-up; the
/// round-trip time of each, in µs. Client and server are threads of this process inside the pod namespaces.
fn tcp_rr(s: &Subject) -> Result<Vec<f64>> {
    let srv_ns = kernel::Netns::open(ns_path(&s.server))?;
    let cli_ns = kernel::Netns::open(ns_path(&s.client))?;
    let ip = s.server_ip;
    std::thread::scope(|sc| -> Result<Vec<f64>> {
        let (tx, rx) = std::sync::mpsc::channel();
        let server = sc.spawn(move || -> Result<()> {
            srv_ns.enter()?;
            let l = TcpListener::bind((ip, 0)).context("bind the RR server")?;
            l.set_nonblocking(true)?;
            let _ = tx.send(l.local_addr()?.port());
            let deadline = Instant::now() + Duration::from_secs(10);
            let mut conn = loop {
                match l.accept() {
                    Ok((c, _)) => break c,
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                        if Instant::now() > deadline {
                            bail!("no RR client within 10 s");
                        }
                        std::thread::sleep(Duration::from_millis(1));
                    }
                    Err(e) => return Err(e.into()),
                }
            };
            conn.set_nonblocking(false)?;
            conn.set_nodelay(true)?;
            conn.set_read_timeout(Some(Duration::from_secs(5)))?;
            let mut b = [0u8; 1];
            loop {
                match conn.read(&mut b)? {
                    0 => return Ok(()),
                    _ => conn.write_all(&b)?,
                }
            }
        });
        let port = rx
            .recv_timeout(Duration::from_secs(5))
            .map_err(|_| anyhow!("the RR server did not start"))?;
        let client = sc.spawn(move || -> Result<Vec<f64>> {
            cli_ns.enter()?;
            let mut c =
                TcpStream::connect_timeout(&SocketAddr::from((ip, port)), Duration::from_secs(5))
                    .context("connect to the RR server")?;
            c.set_nodelay(true)?;
            c.set_read_timeout(Some(Duration::from_secs(5)))?;
            let mut b = [7u8; 1];
            let mut rtts = Vec::with_capacity(RR_COUNT);
            for i in 0..RR_WARMUP + RR_COUNT {
                let t = Instant::now();
                c.write_all(&b)?;
                c.read_exact(&mut b)?;
                if i >= RR_WARMUP {
                    rtts.push(t.elapsed().as_secs_f64() * 1e6);
                }
            }
            Ok(rtts)
        });
        let rtts = client
            .join()
            .map_err(|_| anyhow!("RR client thread panicked"))?;
        let served = server
            .join()
            .map_err(|_| anyhow!("RR server thread panicked"))?;
        let rtts = rtts?;
        served?;
        Ok(rtts)
    })
}

fn ratio(a: f64, b: f64) -> Option<f64> {
    (a > 0.0 && b > 0.0).then(|| a / b)
}

fn to_json(o: &Options, m: &Value, subjects: &[Subject], samples: &[Samples]) -> Value {
    let mut subj = Vec::new();
    for (s, x) in subjects.iter().zip(samples) {
        let ping = sorted(&x.ping_us);
        let rr = sorted(&x.rr_us);
        let g = sorted(&x.gbps);
        subj.push(json!({
            "key": s.key,
            "label": s.label,
            "mtu": s.mtu,
            "gbps_median": r3(median(&x.gbps)),
            "gbps_min": r3(g.first().copied().unwrap_or(0.0)),
            "gbps_max": r3(g.last().copied().unwrap_or(0.0)),
            "gbps_samples": x.gbps.iter().map(|v| r3(*v)).collect::<Vec<_>>(),
            "retransmits": x.retrans,
            "gbps4_median": r3(median(&x.gbps4)),
            "gbps4_samples": x.gbps4.iter().map(|v| r3(*v)).collect::<Vec<_>>(),
            "cpu_s_per_gb_median": r3(median(&x.cpu_s_per_gb)),
            "ping_avg_us": r3(mean(&ping)),
            "ping_p99_us": r3(percentile(&ping, 0.99)),
            "ping_lost": x.ping_lost,
            "rr_avg_us": r3(mean(&rr)),
            "rr_p50_us": r3(percentile(&rr, 0.5)),
            "rr_p99_us": r3(percentile(&rr, 0.99)),
            "errors": x.errors,
        }));
    }
    let find = |k: &str| subjects.iter().position(|s| s.key == k);
    let veth = find("veth");
    let mut ratios = Vec::new();
    for p in &PAIRS {
        let (ours, hand) = (p.ours, p.baseline);
        let (Some(oi), Some(hi)) = (find(ours), find(hand)) else {
            continue;
        };
        let (os, hs) = (&samples[oi], &samples[hi]);
        // Per-round ratios (ours and its baseline run next to each other), then the median: drift of the
        // machine's load between rounds cancels out.
        let per_round = |a: &[f64], b: &[f64]| -> Vec<f64> {
            a.iter().zip(b).filter_map(|(x, y)| ratio(*x, *y)).collect()
        };
        let tput_rounds = sorted(&per_round(&os.gbps, &hs.gbps));
        let rr_rounds = sorted(&per_round(&hs.rr_p50_per_round, &os.rr_p50_per_round));
        let tput = median(&tput_rounds);
        let rr = median(&rr_rounds);
        let tput4 = median(&per_round(&os.gbps4, &hs.gbps4));
        let range = |v: &[f64]| {
            json!([
                r3(v.first().copied().unwrap_or(0.0)),
                r3(v.last().copied().unwrap_or(0.0))
            ])
        };
        let ping = ratio(mean(&hs.ping_us), mean(&os.ping_us)).unwrap_or(0.0);
        let vs_veth = veth
            .map(|v| median(&per_round(&os.gbps, &samples[v].gbps)))
            .unwrap_or(0.0);
        ratios.push(json!({
            "ours": ours,
            "baseline": hand,
            "throughput_ours_over_hand": r3(tput),
            "throughput_ours_over_hand_range": range(&tput_rounds),
            "rr_latency_hand_over_ours": r3(rr),
            "rr_latency_hand_over_ours_range": range(&rr_rounds),
            "ping_latency_hand_over_ours": r3(ping),
            "throughput_ours_over_veth": r3(vs_veth),
            "throughput4_ours_over_hand": r3(tput4),
            "target_throughput": p.tput,
            "target_latency": p.rr,
            "four_streams_held": p.four_streams,
            "throughput_pass": p.tput.map(|t| tput >= t && (!p.four_streams || tput4 >= t)),
            "latency_pass": p.rr.map(|t| rr >= t),
            "same_kernel_path": !ours.ends_with("-masq"),
            "control": ours.starts_with("hand-"),
        }));
    }
    json!({
        "machine": m,
        "loadavg_end": super::loadavg(),
        "seconds": o.seconds,
        "rounds": o.rounds,
        "tools": {
            "throughput": format!("iperf3 -c -t {} -O 1 -J (single TCP stream, and -P 4), pod on node 1 -> pod on node 2", o.seconds),
            "ping": format!("ping -c {PING_COUNT} -i {PING_INTERVAL}"),
            "rr": format!("TCP request/response, 1 byte each way, {RR_COUNT} transactions after {RR_WARMUP} warm-up, TCP_NODELAY"),
        },
        "subjects": subj,
        "ratios": ratios,
    })
}

fn f(v: &Value, k: &str) -> f64 {
    v[k].as_f64().unwrap_or(0.0)
}

fn print_table(out: &Value) {
    println!(
        "Data-plane benchmark: pod on node 1 -> pod on node 2; {}; {} rounds interleaved (throughput: median of \
         rounds, min-max in brackets)",
        out["tools"]["throughput"].as_str().unwrap_or(""),
        out["rounds"]
    );
    println!(
        "latency: {} and {}",
        out["tools"]["ping"].as_str().unwrap_or(""),
        out["tools"]["rr"].as_str().unwrap_or("")
    );
    println!(
        "{}, load average {:.2} at the end",
        machine_line(&out["machine"]),
        out["loadavg_end"].as_f64().unwrap_or(0.0)
    );
    println!();
    println!(
        "{:<38} {:>5} {:>23} {:>8} {:>8} {:>8} {:>9} {:>9} {:>8} {:>8} {:>8}",
        "path",
        "MTU",
        "Gbit/s",
        "4 str.",
        "CPU s/GB",
        "retrans",
        "ping avg",
        "ping p99",
        "RR avg",
        "RR p50",
        "RR p99"
    );
    println!("{}", "-".repeat(38 + 5 + 23 + 8 * 3 + 9 * 2 + 8 * 3 + 10));
    for s in out["subjects"].as_array().into_iter().flatten() {
        let retrans: f64 = s["retransmits"]
            .as_array()
            .map(|a| a.iter().filter_map(Value::as_f64).sum::<f64>())
            .unwrap_or(0.0);
        println!(
            "{:<38} {:>5} {:>7.2} ({:>5.2}-{:>5.2}) {:>8.2} {:>8.2} {:>8.0} {:>6.0} us {:>6.0} us {:>5.0} us {:>5.0} us {:>5.0} us",
            s["label"].as_str().unwrap_or(""),
            s["mtu"],
            f(s, "gbps_median"),
            f(s, "gbps_min"),
            f(s, "gbps_max"),
            f(s, "gbps4_median"),
            f(s, "cpu_s_per_gb_median"),
            retrans,
            f(s, "ping_avg_us"),
            f(s, "ping_p99_us"),
            f(s, "rr_avg_us"),
            f(s, "rr_p50_us"),
            f(s, "rr_p99_us"),
        );
        for e in s["errors"].as_array().into_iter().flatten() {
            println!("    error: {}", e.as_str().unwrap_or(""));
        }
    }
    println!();
    println!(
        "ratios: median of the per-round ratios (range over rounds in brackets); targets: throughput ours/hand, \
         latency hand/ours (TCP RR p50 of each round; ping is informational) >= {TARGET} for the kernel paths; udp \
         against kernel VXLAN: throughput >= {UDP_TPUT} with 1 and with 4 streams, RR latency within 1.5x \
         (>= {:.3}); the udp fallback path is reported beside it, without a target",
        UDP_RR
    );
    println!(
        "{:<18} {:<13} {:>21} {:>8} {:>21} {:>8} {:>7}   verdict",
        "ours", "vs", "tput ours/hand", "4 str.", "RR hand/ours", "ping h/o", "tput/veth"
    );
    for r in out["ratios"].as_array().into_iter().flatten() {
        let note = if r["control"].as_bool().unwrap_or(false) {
            " (A/A control: two identical hand-made paths, i.e. the noise)"
        } else if r["same_kernel_path"].as_bool().unwrap_or(true) {
            ""
        } else {
            " (extra netfilter rules vs the baseline: informational)"
        };
        let rg = |k: &str, i: usize| r[k][i].as_f64().unwrap_or(0.0);
        let v = |k: &str| match r[k].as_bool() {
            Some(b) => verdict(b),
            None => "(no target)",
        };
        println!(
            "{:<18} {:<13} {:>6.3} ({:.2}-{:.2}) {:>8.3} {:>6.3} ({:.2}-{:.2}) {:>8.3} {:>9.3}   throughput {}, latency {}{note}",
            r["ours"].as_str().unwrap_or(""),
            r["baseline"].as_str().unwrap_or(""),
            f(r, "throughput_ours_over_hand"),
            rg("throughput_ours_over_hand_range", 0),
            rg("throughput_ours_over_hand_range", 1),
            f(r, "throughput4_ours_over_hand"),
            f(r, "rr_latency_hand_over_ours"),
            rg("rr_latency_hand_over_ours_range", 0),
            rg("rr_latency_hand_over_ours_range", 1),
            f(r, "ping_latency_hand_over_ours"),
            f(r, "throughput_ours_over_veth"),
            v("throughput_pass"),
            v("latency_pass"),
        );
    }
}
