//! `flannelctl bench cni --chain`: upstream's conflist (flannel, then portmap with one hostPort per pod) on our
//! plugins against the reference plugins, and the cost of many hostPorts to a new connection.
//!
//! 1. **Latency.** Per subject a node namespace and N pods; each round ADDs the chain for every pod (the main
//!    plugin, then portmap with its result as `prevResult`, as libcni does) and then DELs it (portmap first).
//!    Each call is timed; subjects alternate order between rounds. The reference has no flannel plugin in
//!    Debian's package: its chain starts with the reference bridge + host-local, which is what flannel delegates
//!    to. The figure the target is about is portmap's own ADD+DEL.
//! 2. **New-connection rate.** Per backend two node namespaces, each with one pod serving TCP port 80 behind
//!    hostPort 8080 and a client namespace on a veth: one node with no other mapping, one with `--mappings`
//!    other attachments' mappings (one hostPort each, made by our portmap ADD before the measured one, so that in
//!    the iptables layout a new connection walks all their entry rules before its own, as on a node where the
//!    pod came last).
//! 3. **Shaped rate.** A node and a pod attached with our flannel, then our bandwidth with `ingressRate` and
//!    `egressRate` R (burst R/80, at least 200 kB: the average, not the burst, is measured); iperf3 TCP goodput
//!    from the node to the pod and back for `--seconds` + 1 (the first second omitted), at 10 and 100 Mbit/s.
//!    Target: within ±10 % of R (goodput counts no headers, ~4 % of a 1450-byte packet). A client opens connections to
//!    the node's address for `--seconds` (each connection: connect, read the server's byte, reset), the four
//!    nodes in alternating order each round. The iptables layout is the reference's, byte for byte (the portmap
//!    tests compare it), so its figure is the reference's too.

use crate::bench_cni::{
    bridge_conf, flannel_conf, pod_subnet, ratio, round3, Exec, OpStats, TempDir, CLUSTER_NETWORK,
    CNI_VERSION, MTU, NETWORK,
};
use crate::bench_net::{command_in, must};
use crate::netns::NamedNetns;
use anyhow::{anyhow, bail, Context, Result};
use serde_json::{json, Value};
use std::fs::File;
use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// What to run.
#[derive(Debug, Clone)]
pub struct Options {
    pub pods: usize,
    pub rounds: usize,
    /// Other mappings on the loaded node of the connection-rate part.
    pub mappings: usize,
    /// Seconds of connections per sample.
    pub seconds: f64,
    pub ours: PathBuf,
    pub reference: PathBuf,
    pub json: bool,
}

/// The hostPort of pod `i` in the latency part.
fn host_port(i: usize) -> u16 {
    20000 + (i % 10000) as u16
}

/// One chain being measured.
struct Subject {
    label: &'static str,
    main: Exec,
    portmap: PathBuf,
    backend: Option<&'static str>,
    pods: Vec<NamedNetns>,
    _node: NamedNetns,
}

#[derive(Default)]
struct Times {
    pm_add: Vec<Duration>,
    pm_del: Vec<Duration>,
    chain_add: Vec<Duration>,
    chain_del: Vec<Duration>,
}

fn portmap_conf(backend: Option<&str>, maps: Value, prev: &Value) -> Value {
    let mut c = json!({"cniVersion": CNI_VERSION, "name": NETWORK, "type": "portmap",
        "runtimeConfig": {"portMappings": maps}, "prevResult": prev});
    if let Some(b) = backend {
        c["backend"] = json!(b);
    }
    c
}

fn parse(out: &[u8], what: &str) -> Result<Value> {
    serde_json::from_slice(out).with_context(|| {
        format!(
            "{what} printed something that is not JSON: {}",
            String::from_utf8_lossy(out)
        )
    })
}

impl Subject {
    fn pm_exec(&self) -> Exec {
        Exec {
            bin: self.portmap.clone(),
            cni_path: self.main.cni_path.clone(),
            node: Arc::clone(&self.main.node),
            conf: Value::Null,
            id_prefix: self.main.id_prefix.clone(),
            device_prefix: None,
        }
    }

    /// One round: the chain's ADD for every pod, then its DEL.
    fn round(&self, t: &mut Times) -> Result<()> {
        let pm = self.pm_exec();
        let mut results = Vec::with_capacity(self.pods.len());
        for (i, pod) in self.pods.iter().enumerate() {
            let cid = format!("{}{i}", self.main.id_prefix);
            let (d1, out) = self.main.call("ADD", i, pod.path(), None)?;
            let prev = parse(&out, "the main plugin's ADD")?;
            let maps = json!([{"hostPort": host_port(i), "containerPort": 80, "protocol": "tcp"}]);
            let conf = portmap_conf(self.backend, maps.clone(), &prev);
            let (d2, out) = pm
                .call_with("ADD", &cid, i, pod.path(), &conf)
                .context("portmap ADD")?;
            let result = parse(&out, "portmap ADD")?;
            t.pm_add.push(d2);
            t.chain_add.push(d1 + d2);
            results.push((prev, result, maps));
        }
        for (i, (pod, (prev, result, maps))) in self.pods.iter().zip(results).enumerate() {
            let cid = format!("{}{i}", self.main.id_prefix);
            let conf = portmap_conf(self.backend, maps, &result);
            let (d2, _) = pm
                .call_with("DEL", &cid, i, pod.path(), &conf)
                .context("portmap DEL")?;
            let (d1, _) = self.main.call("DEL", i, pod.path(), Some(&prev))?;
            t.pm_del.push(d2);
            t.chain_del.push(d1 + d2);
        }
        Ok(())
    }
}

fn stats(v: &[Duration]) -> OpStats {
    OpStats::new(v.to_vec(), Duration::ZERO)
}

/// Sets SO_LINGER to zero: close sends a reset, so neither side keeps TIME_WAIT and the ports recycle.
fn reset_on_close(s: &TcpStream) {
    let l = libc::linger {
        l_onoff: 1,
        l_linger: 0,
    };
    // SAFETY: a valid socket descriptor and a correctly sized linger struct.
    unsafe {
        libc::setsockopt(
            s.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_LINGER,
            (&l as *const libc::linger).cast(),
            std::mem::size_of::<libc::linger>() as libc::socklen_t,
        );
    }
}

/// Blocks until `l` has a connection to accept, at most `ms` milliseconds.
fn wait_readable(l: &TcpListener, ms: i32) {
    let mut p = libc::pollfd {
        fd: l.as_raw_fd(),
        events: libc::POLLIN,
        revents: 0,
    };
    // SAFETY: one valid pollfd for the duration of the call.
    unsafe {
        libc::poll(&mut p, 1, ms);
    }
}

/// A node for the connection-rate part: node, pod and client namespaces, the pod attached with our flannel and
/// portmap (hostPort 8080 → 80), `others` more mappings, and a server thread in the pod.
struct RateNode {
    label: String,
    client: NamedNetns,
    stop: Arc<AtomicBool>,
    server: Option<std::thread::JoinHandle<()>>,
    _pod: NamedNetns,
    _node: NamedNetns,
}

const NODE_IP: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 1);

impl RateNode {
    fn build(
        tag: &str,
        label: String,
        dir: &Path,
        ours: &Path,
        backend: &str,
        others: usize,
    ) -> Result<Self> {
        let node = NamedNetns::create(&format!("{tag}n"))?;
        let pod = NamedNetns::create(&format!("{tag}p"))?;
        let client = NamedNetns::create(&format!("{tag}c"))?;
        let (n, c) = (format!("{tag}n"), format!("{tag}c"));
        let ipn = |args: &[&str]| -> Result<()> {
            let mut cmd = command_in(&n, "ip")?;
            cmd.args(args);
            must(&mut cmd, Duration::from_secs(10)).map(|_| ())
        };
        ipn(&["link", "set", "lo", "up"])?;
        ipn(&[
            "link", "add", "fcl", "type", "veth", "peer", "name", "fcr", "netns", &c,
        ])?;
        ipn(&["addr", "add", "192.0.2.1/24", "dev", "fcl"])?;
        ipn(&["link", "set", "fcl", "up"])?;
        for args in [
            &["addr", "add", "192.0.2.2/24", "dev", "fcr"][..],
            &["link", "set", "fcr", "up"],
            &["link", "set", "lo", "up"],
        ] {
            let mut cmd = command_in(&c, "ip")?;
            cmd.args(args);
            must(&mut cmd, Duration::from_secs(10))?;
        }
        std::fs::create_dir_all(dir).with_context(|| format!("create {}", dir.display()))?;
        std::fs::write(
            dir.join("subnet.env"),
            format!("FLANNEL_NETWORK={CLUSTER_NETWORK}\nFLANNEL_SUBNET=10.244.1.1/24\nFLANNEL_MTU={MTU}\nFLANNEL_IPMASQ=true\n"),
        )?;
        let node_file = Arc::new(File::open(node.path()).context("open the node namespace")?);
        let main = Exec {
            bin: ours.join("flannel"),
            cni_path: ours.display().to_string(),
            node: Arc::clone(&node_file),
            conf: flannel_conf(dir),
            id_prefix: format!("{tag}x"),
            device_prefix: None,
        };
        let (_, out) = main.call("ADD", 0, pod.path(), None)?;
        let prev = parse(&out, "flannel ADD")?;
        let pm = Exec {
            bin: ours.join("portmap"),
            conf: Value::Null,
            ..main
        };
        // Other attachments first, a synthetic result each (an address in another /16, the same pod namespace);
        // the measured mapping last, so that in the iptables layout its entry rule comes after all of theirs (the
        // reference appends), the case where a new connection walks them all.
        for j in 0..others {
            if crate::interrupt::interrupted() {
                bail!("interrupted");
            }
            let ip = format!("10.245.{}.{}/16", j / 250, j % 250 + 2);
            let prev = json!({"cniVersion": CNI_VERSION,
                "interfaces": [{"name": "cni0"}, {"name": "eth0", "sandbox": pod.path()}],
                "ips": [{"address": ip, "interface": 1}]});
            let maps = json!([{"hostPort": 30000 + j, "containerPort": 80, "protocol": "tcp"}]);
            pm.call_with(
                "ADD",
                &format!("{tag}f{j}"),
                j,
                pod.path(),
                &portmap_conf(Some(backend), maps, &prev),
            )
            .with_context(|| format!("fill mapping {j}"))?;
        }
        let maps = json!([{"hostPort": 8080, "containerPort": 80, "protocol": "tcp"}]);
        pm.call_with(
            "ADD",
            &format!("{tag}x0"),
            0,
            pod.path(),
            &portmap_conf(Some(backend), maps, &prev),
        )?;
        let stop = Arc::new(AtomicBool::new(false));
        let (tx, rx) = std::sync::mpsc::channel();
        let pod_ns = kernel::Netns::open(pod.path())?;
        let s = Arc::clone(&stop);
        let server = std::thread::spawn(move || {
            let serve = || -> Result<()> {
                pod_ns.enter()?;
                let l = TcpListener::bind((Ipv4Addr::UNSPECIFIED, 80)).context("bind :80")?;
                l.set_nonblocking(true)?;
                let _ = tx.send(Ok(()));
                while !s.load(Ordering::Relaxed) {
                    match l.accept() {
                        Ok((mut c, _)) => {
                            let _ = c.set_nonblocking(false);
                            let _ = c.write_all(b"x");
                            reset_on_close(&c);
                        }
                        // Wait for the next connection without spinning or sleeping past it; wake up every 100 ms
                        // to see the stop flag.
                        Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                            wait_readable(&l, 100)
                        }
                        Err(_) => {}
                    }
                }
                Ok(())
            };
            if let Err(e) = serve() {
                let _ = tx.send(Err(e));
            }
        });
        rx.recv_timeout(Duration::from_secs(5))
            .map_err(|_| anyhow!("the server in {tag}p did not start"))??;
        Ok(Self {
            label,
            client,
            stop,
            server: Some(server),
            _pod: pod,
            _node: node,
        })
    }

    /// New connections per second from the client to NODE_IP:8080 over `secs`; fails if none got through.
    fn rate(&self, secs: f64) -> Result<f64> {
        let ns = kernel::Netns::open(self.client.path())?;
        let addr = SocketAddr::from((NODE_IP, 8080));
        let (ok, failed, elapsed) = ns.run(|| {
            let start = Instant::now();
            let until = Duration::from_secs_f64(secs);
            let (mut ok, mut failed) = (0u64, 0u64);
            while start.elapsed() < until {
                match TcpStream::connect_timeout(&addr, Duration::from_secs(1)) {
                    Ok(mut c) => {
                        let _ = c.set_read_timeout(Some(Duration::from_secs(1)));
                        let mut b = [0u8; 1];
                        match c.read(&mut b) {
                            Ok(1) => ok += 1,
                            _ => failed += 1,
                        }
                        reset_on_close(&c);
                    }
                    Err(_) => failed += 1,
                }
            }
            (ok, failed, start.elapsed())
        })?;
        if ok == 0 {
            bail!(
                "{}: no connection through hostPort 8080 ({failed} failed)",
                self.label
            );
        }
        Ok(ok as f64 / elapsed.as_secs_f64())
    }
}

impl Drop for RateNode {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.server.take() {
            let _ = t.join();
        }
    }
}

/// The shaped-rate part: measured goodput / configured rate for each (rate, direction).
fn shaped(tag: &str, dir: &Path, ours: &Path, secs: f64) -> Result<Vec<Value>> {
    if !Path::new("/sys/module/ifb").exists() {
        // numifbs=0: loading the module must not make ifb0/ifb1 in the machine's namespace.
        let _ = std::process::Command::new("modprobe")
            .args(["ifb", "numifbs=0"])
            .status();
    }
    crate::bench_net::need("iperf3", "iperf3")?;
    let mut out = Vec::new();
    for (k, mbit) in [10u64, 100].into_iter().enumerate() {
        let node = NamedNetns::create(&format!("{tag}{k}n"))?;
        let pod = NamedNetns::create(&format!("{tag}{k}p"))?;
        let d = dir.join(format!("bw{k}"));
        std::fs::create_dir_all(&d)?;
        std::fs::write(
            d.join("subnet.env"),
            format!("FLANNEL_NETWORK={CLUSTER_NETWORK}\nFLANNEL_SUBNET=10.244.1.1/24\nFLANNEL_MTU={MTU}\nFLANNEL_IPMASQ=true\n"),
        )?;
        let main = Exec {
            bin: ours.join("flannel"),
            cni_path: ours.display().to_string(),
            node: Arc::new(File::open(node.path())?),
            conf: flannel_conf(&d),
            id_prefix: format!("{tag}{k}c"),
            device_prefix: None,
        };
        let (_, r) = main.call("ADD", 0, pod.path(), None)?;
        let prev = parse(&r, "flannel ADD")?;
        let rate = mbit * 1_000_000;
        let burst = (rate / 80).max(200_000);
        let conf = json!({"cniVersion": CNI_VERSION, "name": NETWORK, "type": "bandwidth",
            "ingressRate": rate, "ingressBurst": burst, "egressRate": rate, "egressBurst": burst,
            "prevResult": prev});
        let bw = Exec {
            bin: ours.join("bandwidth"),
            conf: Value::Null,
            ..main
        };
        bw.call_with("ADD", &format!("{tag}{k}c0"), 0, pod.path(), &conf)
            .context("bandwidth ADD")?;
        let ip = prev["ips"][0]["address"]
            .as_str()
            .and_then(|a| a.split('/').next())
            .context("no pod address in flannel's result")?
            .to_string();
        let pod_name = format!("{tag}{k}p");
        let node_name = format!("{tag}{k}n");
        for reverse in [false, true] {
            let mut srv = command_in(&pod_name, "iperf3")?;
            srv.args(["-s", "-1", "-p", "5201"])
                .stdout(std::process::Stdio::null())
                .stderr(std::process::Stdio::null());
            let mut srv = srv.spawn().context("start iperf3 -s")?;
            std::thread::sleep(Duration::from_millis(300));
            let t = format!("{}", (secs.ceil() as u64).max(1) + 1);
            let mut c = command_in(&node_name, "iperf3")?;
            c.args([
                "-J",
                "-t",
                &t,
                "-O",
                "1",
                "--connect-timeout",
                "5000",
                "-c",
                &ip,
                "-p",
                "5201",
            ]);
            if reverse {
                c.arg("-R");
            }
            let res = crate::bench_net::run_bounded(&mut c, Duration::from_secs_f64(secs + 20.0));
            let _ = srv.kill();
            let _ = srv.wait();
            let o = res?;
            let v: Value = serde_json::from_slice(&o.stdout).context("iperf3 -J output")?;
            let got = v
                .pointer("/end/sum_received/bits_per_second")
                .and_then(Value::as_f64)
                .with_context(|| format!("no rate in iperf3's output: {v}"))?;
            out.push(json!({"mbit": mbit, "direction": if reverse { "egress (from the pod)" } else { "ingress (to the pod)" },
                "measured_bps": round3(got), "ratio": round3(got / rate as f64)}));
        }
    }
    Ok(out)
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    match v.len() {
        0 => 0.0,
        n if n % 2 == 1 => v[n / 2],
        n => (v[n / 2 - 1] + v[n / 2]) / 2.0,
    }
}

/// Runs the benchmark; returns the process exit code.
pub fn run(o: &Options) -> Result<i32> {
    if !nix::unistd::geteuid().is_root() {
        bail!("bench cni --chain needs root (it creates network namespaces and firewall rules)");
    }
    if o.pods == 0 || o.rounds == 0 || o.seconds <= 0.0 {
        bail!("--pods, --rounds and --seconds must be positive");
    }
    crate::interrupt::install()?;
    for (dir, bins) in [
        (&o.reference, &["bridge", "host-local", "portmap"][..]),
        (&o.ours, &["flannel", "bridge", "host-local", "portmap"][..]),
    ] {
        if let Some(b) = bins.iter().find(|b| !dir.join(b).is_file()) {
            bail!("{b} not found in {}", dir.display());
        }
    }
    crate::bench_net::need("nft", "nftables")?;
    let pid = std::process::id();
    let tmp = TempDir::create(std::env::temp_dir().join(format!("flannelctl-chain-{pid}")))?;
    let (subnet, gateway, prefix) = pod_subnet(o.pods)?;
    let fdir = tmp.path.join("flannel");
    std::fs::create_dir_all(&fdir)?;
    std::fs::write(
        fdir.join("subnet.env"),
        format!("FLANNEL_NETWORK={CLUSTER_NETWORK}\nFLANNEL_SUBNET={gateway}/{prefix}\nFLANNEL_MTU={MTU}\nFLANNEL_IPMASQ=true\n"),
    )?;

    let mut subjects = Vec::new();
    for (k, (label, dir, backend)) in [
        ("reference (bridge+host-local, portmap)", &o.reference, None),
        ("ours (flannel, portmap iptables)", &o.ours, None),
        (
            "ours (flannel, portmap nftables)",
            &o.ours,
            Some("nftables"),
        ),
    ]
    .into_iter()
    .enumerate()
    {
        let node = NamedNetns::create(&format!("fc{pid}n{k}"))?;
        let mut pods = Vec::with_capacity(o.pods);
        for i in 0..o.pods {
            pods.push(NamedNetns::create(&format!("fc{pid}s{k}p{i}"))?);
        }
        let conf = if k == 0 {
            bridge_conf(&subnet, &tmp.path.join(format!("ipam{k}")))
        } else {
            let mut c = flannel_conf(&fdir);
            c["ipam"]["dataDir"] = json!(tmp.path.join(format!("ipam{k}")));
            c["dataDir"] = json!(tmp.path.join(format!("cache{k}")));
            c
        };
        let main = Exec {
            bin: dir.join(if k == 0 { "bridge" } else { "flannel" }),
            cni_path: dir.display().to_string(),
            node: Arc::new(File::open(node.path())?),
            conf,
            id_prefix: format!("fc{pid}s{k}c"),
            device_prefix: None,
        };
        subjects.push(Subject {
            label,
            main,
            portmap: dir.join("portmap"),
            backend,
            pods,
            _node: node,
        });
    }
    let mut times: Vec<Times> = subjects.iter().map(|_| Times::default()).collect();
    let mut order: Vec<usize> = (0..subjects.len()).collect();
    for round in 0..o.rounds {
        if round > 0 {
            order.reverse();
        }
        for &k in &order {
            if !o.json {
                eprintln!(
                    "latency round {}/{}: {}",
                    round + 1,
                    o.rounds,
                    subjects[k].label
                );
            }
            subjects[k]
                .round(&mut times[k])
                .with_context(|| subjects[k].label.to_string())?;
            if crate::interrupt::interrupted() {
                bail!("interrupted");
            }
        }
    }
    drop(subjects);

    // The connection-rate worlds.
    let mut nodes = Vec::new();
    for (b, backend) in ["iptables", "nftables"].into_iter().enumerate() {
        for (f, others) in [0, o.mappings].into_iter().enumerate() {
            if !o.json {
                eprintln!("building the {backend} node with {others} other mappings");
            }
            nodes.push(RateNode::build(
                &format!("fr{pid}{b}{f}"),
                format!("{backend}/{others}"),
                &tmp.path.join(format!("rate{b}{f}")),
                &o.ours,
                backend,
                others,
            )?);
        }
    }
    let mut rates: Vec<Vec<f64>> = nodes.iter().map(|_| Vec::new()).collect();
    let mut order: Vec<usize> = (0..nodes.len()).collect();
    for round in 0..o.rounds {
        if round > 0 {
            order.reverse();
        }
        for &k in &order {
            if !o.json {
                eprintln!("rate round {}/{}: {}", round + 1, o.rounds, nodes[k].label);
            }
            rates[k].push(nodes[k].rate(o.seconds)?);
            if crate::interrupt::interrupted() {
                bail!("interrupted");
            }
        }
    }
    drop(nodes);
    if !o.json {
        eprintln!("measuring the shaped rates");
    }
    let shaping = shaped(&format!("fw{pid}"), &tmp.path, &o.ours, o.seconds)?;

    let pm_sum = |t: &Times| stats(&t.pm_add).p50 + stats(&t.pm_del).p50;
    let reference = pm_sum(&times[0]);
    let lat: Vec<Value> = times
        .iter()
        .zip([
            "reference",
            "ours-iptables",
            "ours-nftables",
        ])
        .map(|(t, key)| {
            json!({"subject": key,
                "portmap_add": stats(&t.pm_add).to_json(), "portmap_del": stats(&t.pm_del).to_json(),
                "chain_add": stats(&t.chain_add).to_json(), "chain_del": stats(&t.chain_del).to_json(),
                "portmap_add_del_p50_ms": round3(pm_sum(t)),
                "speedup_vs_reference": ratio(reference, pm_sum(t)).map(round3)})
        })
        .collect();
    let med: Vec<f64> = rates.iter().map(|r| median(r.clone())).collect();
    let rate_json: Vec<Value> = ["iptables", "nftables"]
        .iter()
        .enumerate()
        .map(|(b, backend)| {
            let (none, many) = (med[2 * b], med[2 * b + 1]);
            json!({"backend": backend, "mappings": o.mappings,
                "conn_per_s_none": round3(none), "conn_per_s_loaded": round3(many),
                "rounds_none": rates[2 * b], "rounds_loaded": rates[2 * b + 1],
                "ratio": ratio(many, none).map(round3)})
        })
        .collect();
    let out = json!({"pods": o.pods, "rounds": o.rounds, "latency": lat, "connection_rate": rate_json,
        "shaping": shaping,
        "targets": {"portmap_add_del_speedup": 5.0, "conn_rate_ratio": 0.95, "shaped_ratio": [0.9, 1.1]}});
    if o.json {
        println!("{}", serde_json::to_string_pretty(&out).unwrap_or_default());
    } else {
        print_table(o, &out);
    }
    Ok(0)
}

fn f(v: &Value, path: &str) -> f64 {
    v.pointer(path).and_then(Value::as_f64).unwrap_or(0.0)
}

fn print_table(o: &Options, out: &Value) {
    println!(
        "bench cni --chain: upstream's conflist (flannel or the reference bridge, then portmap; one hostPort per \
         pod), {} pods x {} rounds, sequential",
        o.pods, o.rounds
    );
    println!(
        "{:<42} {:>17} {:>17} {:>11} {:>11} {:>9}",
        "ms (p50 / p99)", "portmap ADD", "portmap DEL", "chain ADD", "chain DEL", "pm ×ref"
    );
    for (l, label) in out["latency"].as_array().into_iter().flatten().zip([
        "reference (bridge+host-local, portmap)",
        "ours (flannel, portmap iptables)",
        "ours (flannel, portmap nftables)",
    ]) {
        let sp = l["speedup_vs_reference"]
            .as_f64()
            .map_or("-".to_string(), |x| format!("{x:.2}×"));
        println!(
            "{:<42} {:>8.2} / {:<6.2} {:>8.2} / {:<6.2} {:>11.2} {:>11.2} {:>9}",
            label,
            f(l, "/portmap_add/p50_ms"),
            f(l, "/portmap_add/p99_ms"),
            f(l, "/portmap_del/p50_ms"),
            f(l, "/portmap_del/p99_ms"),
            f(l, "/chain_add/p50_ms"),
            f(l, "/chain_del/p50_ms"),
            sp
        );
    }
    println!("target: our portmap ADD+DEL (p50) >= 5× faster than the reference's");
    println!();
    println!(
        "hostPort new connections/s (client -> node:8080 -> pod), median of {} rounds of {} s:",
        o.rounds, o.seconds
    );
    println!(
        "{:<44} {:>10} {:>16} {:>8}",
        "",
        "none",
        format!("{} others", o.mappings),
        "ratio"
    );
    for r in out["connection_rate"].as_array().into_iter().flatten() {
        let label = if r["backend"] == "iptables" {
            "iptables (the reference's layout)"
        } else {
            "nftables (ours: maps)"
        };
        println!(
            "{:<44} {:>10.0} {:>16.0} {:>8}",
            label,
            f(r, "/conn_per_s_none"),
            f(r, "/conn_per_s_loaded"),
            r["ratio"]
                .as_f64()
                .map_or("-".to_string(), |x| format!("{x:.3}"))
        );
    }
    println!(
        "target: the rate with {} other mappings >= 0.95× the rate with none",
        o.mappings
    );
    println!();
    println!(
        "bandwidth (ours), TCP goodput over {} s:",
        o.seconds.ceil().max(1.0)
    );
    for b in out["shaping"].as_array().into_iter().flatten() {
        println!(
            "  {:>4} Mbit/s {:<22} {:>12.0} bit/s  {:.3}×",
            f(b, "/mbit"),
            b["direction"].as_str().unwrap_or(""),
            f(b, "/measured_bps"),
            f(b, "/ratio")
        );
    }
    println!("target: within 0.9-1.1× of the configured rate");
}
