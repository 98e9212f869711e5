//! `flannelctl lab`: a whole flannel cluster on one machine. Nodes and pods are network namespaces, the underlay
//! is a bridge in a "fabric" namespace, each node runs a real `flanneld`, pods are attached by the real CNI
//! plugins. Everything carries the `flab-` prefix and lives under /run/flannel-lab; the root namespace is never
//! changed.

pub mod net;
pub mod state;

use anyhow::{bail, Context, Result};
use state::{Node, Pod, State, LAB_DIR, PREFIX};
use std::io::Write;
use std::net::Ipv4Addr;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

/// Options of `lab up`.
#[derive(Debug, Clone)]
pub struct UpOptions {
    /// Number of nodes.
    pub nodes: usize,
    /// Pods per node.
    pub pods_per_node: usize,
    /// Backend type.
    pub backend: String,
    /// `local` or `etcd`.
    pub store: String,
    /// Skip the throughput test.
    pub no_throughput: bool,
    /// Where flanneld and the CNI plugins are.
    pub bin_dir: PathBuf,
}

fn check_interrupt() -> Result<()> {
    crate::interrupt::check()
}

fn require_root() -> Result<()> {
    if !nix::unistd::geteuid().is_root() {
        bail!("the lab creates network namespaces and devices: run it as root (sudo flannelctl lab ...)");
    }
    Ok(())
}

/// A line of progress: "[2/6] nodes ........ done (15 ms)".
struct Progress {
    step: usize,
    total: usize,
    start: Instant,
    t: Instant,
}

impl Progress {
    fn new(total: usize) -> Self {
        Self {
            step: 0,
            total,
            start: Instant::now(),
            t: Instant::now(),
        }
    }

    fn begin(&mut self, what: &str) {
        self.step += 1;
        self.t = Instant::now();
        print!("[{}/{}] {what:<46}", self.step, self.total);
        let _ = std::io::stdout().flush();
    }

    fn done(&self, note: &str) {
        println!(
            "ok  {:>6.0} ms  {note}",
            self.t.elapsed().as_secs_f64() * 1000.0
        );
    }
}

fn node_name(i: usize) -> String {
    format!("n{i}")
}

fn find_bin(dir: &Path, name: &str) -> Result<PathBuf> {
    let p = dir.join(name);
    if p.is_file() {
        Ok(p)
    } else {
        bail!(
            "{} not found; build everything first: cargo build --release",
            p.display()
        )
    }
}

fn rt() -> Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?)
}

/// `flannelctl lab up`.
pub fn up(o: &UpOptions) -> Result<()> {
    require_root()?;
    if o.nodes == 0 || o.nodes > 200 {
        bail!("--nodes {}: must be between 1 and 200", o.nodes);
    }
    if o.pods_per_node > 50 {
        bail!("--pods-per-node {}: must be at most 50", o.pods_per_node);
    }
    if !matches!(o.backend.as_str(), "vxlan" | "host-gw" | "udp") {
        bail!(
            "--backend {}: flanneld has vxlan, host-gw and udp",
            o.backend
        );
    }
    if !matches!(o.store.as_str(), "local" | "etcd") {
        bail!("--store {}: must be local or etcd", o.store);
    }
    if State::load().is_some()
        || kernel::netns::list_named()
            .iter()
            .any(|n| n.starts_with(PREFIX))
    {
        bail!("a lab is already up (or a previous one was interrupted): run `flannelctl lab down` first");
    }
    for b in ["flanneld", "flannel", "bridge", "host-local", "loopback"] {
        find_bin(&o.bin_dir, b)?;
    }
    if o.store == "etcd" && which("etcd").is_none() {
        bail!("--store etcd needs the etcd binary (apt-get install etcd-server)");
    }
    crate::interrupt::install()?;
    let res = up_inner(o);
    if let Err(e) = &res {
        eprintln!("\nlab up failed: {e:#}\nremoving what was made...");
        if let Err(d) = down_quiet() {
            eprintln!("cleanup failed too: {d:#}; run `flannelctl lab down`");
        }
    }
    res
}

fn which(bin: &str) -> Option<PathBuf> {
    std::env::var_os("PATH")?
        .to_string_lossy()
        .split(':')
        .map(|d| Path::new(d).join(bin))
        .find(|p| p.is_file())
}

fn up_inner(o: &UpOptions) -> Result<()> {
    let total = if o.no_throughput { 5 } else { 6 };
    let mut p = Progress::new(total);
    let mut st = State {
        backend: o.backend.clone(),
        store: o.store.clone(),
        fabric: format!("{PREFIX}fabric"),
        ..Default::default()
    };
    std::fs::create_dir_all(LAB_DIR)?;
    st.save()?;
    let rt = rt()?;

    p.begin(&format!(
        "underlay: fabric + {} nodes on 192.0.2.0/24",
        o.nodes
    ));
    rt.block_on(async {
        let fabric = net::make_fabric(&st.fabric).await?;
        for i in 1..=o.nodes {
            check_interrupt()?;
            let ip = Ipv4Addr::new(192, 0, 2, i as u8);
            let node = Node {
                name: node_name(i),
                netns: format!("{PREFIX}{}", node_name(i)),
                ip: ip.to_string(),
                pid: None,
            };
            st.nodes.push(node.clone());
            st.save()?;
            net::make_node(&fabric, i, &node.netns, ip).await?;
        }
        anyhow::Ok(())
    })?;
    p.done("");

    p.begin(&format!("store ({}) + network config", o.store));
    let config = format!(
        r#"{{"Network":"10.244.0.0/16","Backend":{{"Type":"{}"}}}}"#,
        o.backend
    );
    let store_args: Vec<String> = if o.store == "local" {
        let dir = Path::new(LAB_DIR).join("store");
        let reg = subnet::LocalRegistry::open(&dir).context("opening the local store")?;
        reg.set_network_config(&config)
            .context("writing the network config")?;
        vec!["--local-store".into(), dir.display().to_string()]
    } else {
        start_etcd(&mut st, &config)?;
        vec![format!("--etcd-endpoints=http://{}:2379", net::FABRIC_IP)]
    };
    p.done("");

    p.begin(&format!("flanneld on every node ({})", o.backend));
    let flanneld = find_bin(&o.bin_dir, "flanneld")?;
    for n in st.nodes.iter_mut() {
        let dir = State::node_dir(&n.name);
        std::fs::create_dir_all(&dir)?;
        let log = std::fs::File::create(dir.join("flanneld.log"))?;
        let (mut cmd, _ns) = net::command_in(&n.netns, &flanneld.display().to_string())?;
        cmd.args(&store_args)
            .arg(format!(
                "--subnet-file={}",
                dir.join("subnet.env").display()
            ))
            .args([
                "--iface=eth0",
                "--ip-masq",
                "--healthz-ip=127.0.0.1",
                "--healthz-port=8081",
            ])
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .process_group(0);
        let child = cmd
            .spawn()
            .with_context(|| format!("starting flanneld on {}", n.name))?;
        n.pid = Some(child.id());
    }
    st.save()?;
    let deadline = Instant::now() + Duration::from_secs(30);
    for n in &st.nodes {
        let env = State::node_dir(&n.name).join("subnet.env");
        while !env.exists() {
            check_interrupt()?;
            if let Some(pid) = n.pid {
                if !Path::new(&format!("/proc/{pid}")).exists() || is_zombie(pid) {
                    bail!(
                        "flanneld on {} exited:\n{}",
                        n.name,
                        tail(&State::node_dir(&n.name).join("flanneld.log"))
                    );
                }
            }
            if Instant::now() > deadline {
                bail!(
                    "flanneld on {} not ready after 30 s:\n{}",
                    n.name,
                    tail(&State::node_dir(&n.name).join("flanneld.log"))
                );
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }
    let subnets: Vec<String> = st
        .nodes
        .iter()
        .map(|n| subnet_of(&n.name).unwrap_or_default())
        .collect();
    p.done(&subnets.join(" "));

    p.begin(&format!(
        "{} pods via CNI (loopback + flannel)",
        o.nodes * o.pods_per_node
    ));
    for n in st.nodes.clone() {
        for j in 1..=o.pods_per_node {
            check_interrupt()?;
            let name = format!("{}-p{j}", n.name);
            let pod = Pod {
                name: name.clone(),
                netns: format!("{PREFIX}{name}"),
                node: n.name.clone(),
                ip: None,
            };
            st.pods.push(pod.clone());
            st.save()?;
            net::make_pod(&pod.netns)?;
            let ip = attach(&o.bin_dir, &n, &pod)?;
            if let Some(last) = st.pods.last_mut() {
                last.ip = Some(ip);
            }
            st.save()?;
        }
    }
    p.done("");

    p.begin("connectivity: every pod pings every other");
    let matrix = ping_matrix(&st)?;
    let failures = matrix.iter().filter(|(_, _, ok)| !ok).count();
    p.done(&format!(
        "{}/{} reachable",
        matrix.len() - failures,
        matrix.len()
    ));
    print_matrix(&st, &matrix);
    let ready = p.start.elapsed();

    if !o.no_throughput && st.pods.len() >= 2 {
        p.begin("throughput: iperf3 TCP 2 s across nodes");
        match throughput(&st) {
            Ok(Some((from, to, gbps))) => p.done(&format!("{from} -> {to}: {gbps:.2} Gbit/s")),
            Ok(None) => p.done("skipped (needs pods on two nodes)"),
            Err(e) => p.done(&format!("failed: {e:#}")),
        }
    }
    println!(
        "\nlab ready in {:.2} s (connectivity proven): {} nodes, {} pods, backend {}, store {}",
        ready.as_secs_f64(),
        st.nodes.len(),
        st.pods.len(),
        o.backend,
        o.store
    );
    println!("  flannelctl lab status | flannelctl lab exec n1-p1 -- ping 10.244.x.y | flannelctl lab down");
    if failures > 0 {
        bail!("{failures} pod pairs cannot reach each other");
    }
    Ok(())
}

fn is_zombie(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .map(|s| {
            s.rsplit(')')
                .next()
                .is_some_and(|r| r.trim_start().starts_with('Z'))
        })
        .unwrap_or(true)
}

fn tail(p: &Path) -> String {
    let t = std::fs::read_to_string(p).unwrap_or_default();
    let lines: Vec<&str> = t.lines().collect();
    lines[lines.len().saturating_sub(15)..].join("\n")
}

fn subnet_of(node: &str) -> Option<String> {
    let t = std::fs::read_to_string(State::node_dir(node).join("subnet.env")).ok()?;
    t.lines()
        .find_map(|l| l.strip_prefix("FLANNEL_SUBNET="))
        .map(str::to_string)
}

fn start_etcd(st: &mut State, config: &str) -> Result<()> {
    let dir = Path::new(LAB_DIR).join("etcd");
    let log = std::fs::File::create(Path::new(LAB_DIR).join("etcd.log"))?;
    let url = format!("http://{}:2379", net::FABRIC_IP);
    let (mut cmd, _ns) = net::command_in(&st.fabric, "etcd")?;
    cmd.args([
        "--data-dir",
        &dir.display().to_string(),
        "--listen-client-urls",
        &url,
        "--advertise-client-urls",
        &url,
    ])
    .args([
        "--listen-peer-urls",
        "http://127.0.0.1:2380",
        "--name",
        "flab",
    ])
    .stdin(Stdio::null())
    .stdout(log.try_clone()?)
    .stderr(log)
    .process_group(0);
    let child = cmd.spawn().context("starting etcd")?;
    st.etcd_pid = Some(child.id());
    st.save()?;
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        check_interrupt()?;
        let (mut put, _ns) = net::command_in(&st.fabric, "etcdctl")?;
        let ok = put
            .env("ETCDCTL_API", "3")
            .args([
                "--endpoints",
                &url,
                "put",
                "/coreos.com/network/config",
                config,
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        if ok {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!("etcd did not come up in 15 s (see {LAB_DIR}/etcd.log)");
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Runs loopback then flannel ADD for a pod, as a container runtime would; returns its IPv4 address.
fn attach(bin: &Path, node: &Node, pod: &Pod) -> Result<String> {
    let dir = State::node_dir(&node.name);
    let lo_conf = r#"{"cniVersion":"1.0.0","name":"lo","type":"loopback"}"#.to_string();
    cni_exec(bin, "loopback", node, pod, &lo_conf)?;
    let conf = serde_json::json!({
        "cniVersion": "1.0.0",
        "name": "cbr0",
        "type": "flannel",
        "subnetFile": dir.join("subnet.env"),
        "dataDir": dir.join("cni-flannel"),
        "delegate": {"hairpinMode": true, "isDefaultGateway": true},
        "ipam": {"dataDir": dir.join("cni-networks")},
    });
    let out = cni_exec(bin, "flannel", node, pod, &conf.to_string())?;
    let v: serde_json::Value =
        serde_json::from_str(&out).context("parsing the flannel plugin's result")?;
    let ip = v
        .pointer("/ips/0/address")
        .and_then(|a| a.as_str())
        .and_then(|a| a.split('/').next())
        .context("the flannel plugin's result has no IP")?;
    Ok(ip.to_string())
}

fn cni_exec(bin: &Path, plugin: &str, node: &Node, pod: &Pod, conf: &str) -> Result<String> {
    let path = bin.join(plugin);
    let (mut cmd, _ns) = net::command_in(&node.netns, &path.display().to_string())?;
    let mut child = cmd
        .env("CNI_COMMAND", "ADD")
        .env("CNI_CONTAINERID", format!("flab-{}", pod.name))
        .env("CNI_NETNS", net::ns_path(&pod.netns))
        .env(
            "CNI_IFNAME",
            if plugin == "loopback" { "lo" } else { "eth0" },
        )
        .env("CNI_PATH", bin)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| format!("running {}", path.display()))?;
    if let Some(mut i) = child.stdin.take() {
        i.write_all(conf.as_bytes())?;
    }
    let out = child.wait_with_output()?;
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    if !out.status.success() {
        bail!(
            "{plugin} ADD for {} failed: {}{}",
            pod.name,
            stdout.trim(),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(stdout)
}

/// Pings every pod from every other pod in parallel; a pair gets a few tries while routes converge.
fn ping_matrix(st: &State) -> Result<Vec<(String, String, bool)>> {
    let pairs: Vec<(Pod, Pod)> = st
        .pods
        .iter()
        .flat_map(|a| {
            st.pods
                .iter()
                .filter(move |b| b.name != a.name)
                .map(move |b| (a.clone(), b.clone()))
        })
        .collect();
    let results = std::thread::scope(|s| {
        let handles: Vec<_> = pairs
            .chunks(pairs.len().div_ceil(8).max(1))
            .map(|chunk| {
                s.spawn(move || {
                    chunk
                        .iter()
                        .map(|(a, b)| {
                            let ok = b.ip.as_deref().is_some_and(|ip| ping(&a.netns, ip));
                            (a.name.clone(), b.name.clone(), ok)
                        })
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        handles
            .into_iter()
            .flat_map(|h| h.join().unwrap_or_default())
            .collect::<Vec<_>>()
    });
    Ok(results)
}

fn ping(netns: &str, ip: &str) -> bool {
    for _ in 0..20 {
        if crate::interrupt::interrupted() {
            return false;
        }
        let Ok((mut cmd, _ns)) = net::command_in(netns, "ping") else {
            return false;
        };
        let ok = cmd
            .args(["-c1", "-W1", "-q", ip])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        if ok {
            return true;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    false
}

fn print_matrix(st: &State, m: &[(String, String, bool)]) {
    let w = st
        .pods
        .iter()
        .map(|p| p.name.len())
        .max()
        .unwrap_or(5)
        .max(5);
    print!("      {:>w$} ", "from\\to");
    for p in &st.pods {
        print!(" {:>w$}", p.name);
    }
    println!();
    for a in &st.pods {
        print!("      {:>w$} ", a.name);
        for b in &st.pods {
            let cell = if a.name == b.name {
                "-"
            } else if m
                .iter()
                .any(|(x, y, ok)| x == &a.name && y == &b.name && *ok)
            {
                "ok"
            } else {
                "FAIL"
            };
            print!(" {cell:>w$}");
        }
        println!("   {}", a.ip.as_deref().unwrap_or("?"));
    }
}

/// iperf3 for 2 s from a pod on the second node to a pod on the first.
fn throughput(st: &State) -> Result<Option<(String, String, f64)>> {
    let Some(server) = st.pods.first() else {
        return Ok(None);
    };
    let Some(client) = st.pods.iter().find(|p| p.node != server.node) else {
        return Ok(None);
    };
    let Some(ip) = server.ip.clone() else {
        return Ok(None);
    };
    if which("iperf3").is_none() {
        bail!("iperf3 not installed (apt-get install iperf3)");
    }
    let (mut s, _ns1) = net::command_in(&server.netns, "iperf3")?;
    let mut srv = s
        .args(["-s", "-1", "-p", "5201"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()?;
    std::thread::sleep(Duration::from_millis(150));
    let (mut c, _ns2) = net::command_in(&client.netns, "iperf3")?;
    let out = c
        .args(["-c", &ip, "-p", "5201", "-t", "2", "-J"])
        .stderr(Stdio::null())
        .output()?;
    let _ = srv.kill();
    let _ = srv.wait();
    let v: serde_json::Value =
        serde_json::from_slice(&out.stdout).context("parsing iperf3 output")?;
    let bps = v
        .pointer("/end/sum_received/bits_per_second")
        .and_then(|b| b.as_f64())
        .context("iperf3 reported no result")?;
    Ok(Some((client.name.clone(), server.name.clone(), bps / 1e9)))
}

/// Pids of processes whose command line mentions the lab directory (daemons started by an interrupted `lab up`).
fn lab_processes() -> Vec<i32> {
    let mut out = Vec::new();
    let me = std::process::id() as i32;
    if let Ok(rd) = std::fs::read_dir("/proc") {
        for e in rd.flatten() {
            let Ok(pid) = e.file_name().to_string_lossy().parse::<i32>() else {
                continue;
            };
            if pid == me {
                continue;
            }
            if let Ok(cmd) = std::fs::read(format!("/proc/{pid}/cmdline")) {
                if String::from_utf8_lossy(&cmd).contains(LAB_DIR) {
                    out.push(pid);
                }
            }
        }
    }
    out
}

fn down_quiet() -> Result<Vec<String>> {
    let mut removed = Vec::new();
    let st = State::load();
    let mut pids: Vec<i32> = lab_processes();
    if let Some(st) = &st {
        pids.extend(st.nodes.iter().filter_map(|n| n.pid).map(|p| p as i32));
        pids.extend(st.etcd_pid.map(|p| p as i32));
    }
    pids.sort_unstable();
    pids.dedup();
    let alive = |p: i32| {
        nix::sys::signal::kill(nix::unistd::Pid::from_raw(p), None).is_ok() && !is_zombie(p as u32)
    };
    let pids: Vec<i32> = pids
        .into_iter()
        .filter(|p| alive(*p) && lab_owned(*p))
        .collect();
    for p in &pids {
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(*p),
            nix::sys::signal::Signal::SIGTERM,
        );
    }
    let deadline = Instant::now() + Duration::from_secs(3);
    while pids.iter().any(|p| alive(*p)) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    for p in &pids {
        if alive(*p) {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(*p),
                nix::sys::signal::Signal::SIGKILL,
            );
        }
        removed.push(format!("process {p}"));
    }
    for name in kernel::netns::list_named()
        .into_iter()
        .filter(|n| n.starts_with(PREFIX))
    {
        kernel::netns::delete_named(&name).with_context(|| format!("deleting namespace {name}"))?;
        removed.push(format!("netns {name}"));
    }
    if Path::new(LAB_DIR).exists() {
        std::fs::remove_dir_all(LAB_DIR).with_context(|| format!("removing {LAB_DIR}"))?;
        removed.push(LAB_DIR.to_string());
    }
    Ok(removed)
}

/// Only processes that are in a lab namespace or mention the lab directory are ours to stop.
fn lab_owned(pid: i32) -> bool {
    std::fs::read(format!("/proc/{pid}/cmdline"))
        .is_ok_and(|c| String::from_utf8_lossy(&c).contains(LAB_DIR))
        || State::load().is_some_and(|s| {
            s.nodes.iter().any(|n| n.pid == Some(pid as u32)) || s.etcd_pid == Some(pid as u32)
        })
}

/// `flannelctl lab down`.
pub fn down() -> Result<()> {
    require_root()?;
    let removed = down_quiet()?;
    if removed.is_empty() {
        println!("no lab to remove");
    } else {
        let procs = removed.iter().filter(|r| r.starts_with("process")).count();
        let ns = removed.iter().filter(|r| r.starts_with("netns")).count();
        println!(
            "lab removed: {procs} processes stopped, {ns} namespaces deleted, {LAB_DIR} removed"
        );
    }
    Ok(())
}

/// `flannelctl lab status`.
pub fn status() -> Result<()> {
    let Some(st) = State::load() else {
        println!("no lab is up (flannelctl lab up)");
        return Ok(());
    };
    println!(
        "lab: backend {}, store {}, fabric {}",
        st.backend, st.store, st.fabric
    );
    for n in &st.nodes {
        let running = n
            .pid
            .is_some_and(|p| Path::new(&format!("/proc/{p}")).exists() && !is_zombie(p));
        let peers = node_status(&n.netns)
            .ok()
            .and_then(|v| v.get("peers").and_then(|p| p.as_array()).map(|a| a.len()));
        println!(
            "  node {:<4} netns {:<12} underlay {:<12} subnet {:<16} flanneld {} peers {}",
            n.name,
            n.netns,
            n.ip,
            subnet_of(&n.name).unwrap_or_else(|| "-".into()),
            if running {
                format!("running (pid {})", n.pid.unwrap_or(0))
            } else {
                "NOT RUNNING".into()
            },
            peers.map(|p| p.to_string()).unwrap_or_else(|| "?".into())
        );
    }
    for p in &st.pods {
        println!(
            "  pod  {:<7} netns {:<15} node {:<4} ip {}",
            p.name,
            p.netns,
            p.node,
            p.ip.as_deref().unwrap_or("-")
        );
    }
    Ok(())
}

/// Reads a node daemon's `/status` (its health port listens on 127.0.0.1 inside the node namespace).
pub fn node_status(netns: &str) -> Result<serde_json::Value> {
    let ns = kernel::Netns::open(net::ns_path(netns))?;
    let (code, body) = ns
        .run(|| {
            crate::http::get(
                "127.0.0.1:8081".parse().expect("static address"),
                "/status",
                Duration::from_secs(2),
            )
        })?
        .with_context(|| format!("GET /status in {netns}"))?;
    if code != 200 {
        bail!("GET /status in {netns}: HTTP {code}");
    }
    Ok(serde_json::from_str(&body)?)
}

/// `flannelctl lab exec NODE|POD -- CMD...`: runs a command inside a lab namespace; returns its exit code.
pub fn exec(target: &str, cmd: &[String]) -> Result<i32> {
    require_root()?;
    let st = State::load().context("no lab is up")?;
    let netns = if target == "fabric" {
        st.fabric.clone()
    } else {
        let name = target.strip_prefix(PREFIX).unwrap_or(target);
        st.nodes
            .iter()
            .map(|n| (&n.name, &n.netns))
            .chain(st.pods.iter().map(|p| (&p.name, &p.netns)))
            .find(|(n, _)| n.as_str() == name)
            .map(|(_, ns)| ns.clone())
            .with_context(|| {
                format!("no lab node or pod named {target:?} (see flannelctl lab status)")
            })?
    };
    let (prog, args) = cmd.split_first().context("missing command after --")?;
    let (mut c, _ns) = net::command_in(&netns, prog)?;
    let status = c
        .args(args)
        .status()
        .with_context(|| format!("running {prog}"))?;
    Ok(status.code().unwrap_or(1))
}
