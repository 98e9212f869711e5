//! Multi-node harness for the flanneld integration tests: a real kernel, a real etcd, real `flanneld` processes.
//!
//! Topology of one [`Cluster`] (every name starts with a per-test prefix `fc<pid>x<n>`, so tests running in
//! parallel never collide):
//!
//! ```text
//!   <p>f   "fabric": bridge br0 192.0.2.254/24 (+ 2001:db8:1::254/64), etcd on 192.0.2.254:2379
//!    ├── h1 ═ eth0  <p>n1  node 1: 192.0.2.1/24, default via .254, flanneld, cni0 + pods
//!    ├── h2 ═ eth0  <p>n2  node 2: 192.0.2.2/24 …
//!    └── …
//!   <p>p1-1, <p>p1-2 …     pods, attached to their node with our `loopback` and `flannel` CNI plugins
//! ```
//!
//! Nothing is configured in the root network namespace: veth pairs are created inside the fabric namespace with
//! their peer moved straight into the node namespace, and commands run through `ip netns exec`. Every namespace,
//! process (etcd, flanneld, background pings) and the temporary directory is removed on drop, also when the test
//! panics (after printing the tail of the daemon logs). All waits are polls with a bounded deadline.
//!
//! `ip -j` / `bridge -j` / `iptables -S` / `etcdctl` are the independent oracles for kernel and store state.

#![allow(dead_code)]

use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::fmt;
use std::fs;
use std::io::{Read, Write};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

/// Debian's etcd server (`etcd-server`), which CI installs.
pub const ETCD_BIN: &str = "/usr/bin/etcd";
/// Debian's etcdctl (`etcd-client`).
pub const ETCDCTL_BIN: &str = "/usr/bin/etcdctl";
/// etcd's client URL inside the fabric (reached by the nodes over the underlay).
pub const ETCD_URL: &str = "http://192.0.2.254:2379";
/// Default `--etcd-prefix`.
pub const ETCD_PREFIX: &str = "/coreos.com/network";
/// Port of flanneld's health server in every node.
pub const HEALTHZ_PORT: u16 = 8081;
/// Default timeout of one helper command.
pub const CMD_TIMEOUT: Duration = Duration::from_secs(20);

static COUNTER: AtomicU32 = AtomicU32::new(0);

// ------------------------------------------------------------------------------------------------
// Preconditions and binaries
// ------------------------------------------------------------------------------------------------

/// Stops the test as not run without root (testkit's policy); fails when etcd, which the project installs, is
/// missing.
pub fn require_env() {
    testkit::require_root();
    for (bin, pkg) in [(ETCD_BIN, "etcd-server"), (ETCDCTL_BIN, "etcd-client")] {
        assert!(
            Path::new(bin).is_file(),
            "{bin} is missing: install Debian's {pkg} (scripts/deps.sh does)"
        );
    }
}

/// The `flanneld` built for this test run.
pub fn flanneld_bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_flanneld"))
}

/// `<target>/<profile>/`: where cargo put flanneld, and where `cargo build -p plugins` puts the CNI plugins.
pub fn bin_dir() -> PathBuf {
    flanneld_bin()
        .parent()
        .expect("flanneld has a parent directory")
        .to_path_buf()
}

/// A CNI plugin binary next to flanneld; fails clearly when the plugins were not built.
pub fn plugin_bin(name: &str) -> PathBuf {
    let p = bin_dir().join(name);
    assert!(
        p.is_file(),
        "build the plugins first: cargo build -p plugins ({} is missing)",
        p.display()
    );
    p
}

// ------------------------------------------------------------------------------------------------
// Commands
// ------------------------------------------------------------------------------------------------

/// A finished (or timed-out) command.
pub struct Out {
    /// What ran, for messages.
    pub what: String,
    /// `None` when it was killed at the timeout.
    pub status: Option<ExitStatus>,
    pub stdout: String,
    pub stderr: String,
}

impl Out {
    pub fn ok(&self) -> bool {
        self.status.is_some_and(|s| s.success())
    }

    /// Stdout, or a panic naming the command and its stderr.
    pub fn must(self) -> String {
        assert!(self.ok(), "command failed: {self}");
        self.stdout
    }
}

impl fmt::Display for Out {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let status = match self.status {
            Some(s) => s.to_string(),
            None => "killed at timeout".into(),
        };
        write!(
            f,
            "`{}` → {status}\nstdout: {}\nstderr: {}",
            self.what,
            self.stdout.trim_end(),
            self.stderr.trim_end()
        )
    }
}

/// Runs `cmd` with optional stdin, collecting its output; killed after `timeout`.
pub fn run(cmd: &mut Command, stdin: Option<&[u8]>, timeout: Duration) -> Out {
    let what = format!("{cmd:?}").replace('"', "");
    cmd.stdin(if stdin.is_some() {
        Stdio::piped()
    } else {
        Stdio::null()
    })
    .stdout(Stdio::piped())
    .stderr(Stdio::piped());
    let mut child = cmd
        .spawn()
        .unwrap_or_else(|e| panic!("cannot run {what}: {e}"));
    if let (Some(input), Some(mut w)) = (stdin, child.stdin.take()) {
        let input = input.to_vec();
        std::thread::spawn(move || {
            let _ = w.write_all(&input);
        });
    }
    let reader = |r: Option<Box<dyn Read + Send>>| {
        std::thread::spawn(move || {
            let mut buf = Vec::new();
            if let Some(mut r) = r {
                let _ = r.read_to_end(&mut buf);
            }
            String::from_utf8_lossy(&buf).into_owned()
        })
    };
    let out = reader(
        child
            .stdout
            .take()
            .map(|r| Box::new(r) as Box<dyn Read + Send>),
    );
    let err = reader(
        child
            .stderr
            .take()
            .map(|r| Box::new(r) as Box<dyn Read + Send>),
    );
    let deadline = Instant::now() + timeout;
    let mut nap = Duration::from_millis(1);
    let status = loop {
        match child.try_wait() {
            Ok(Some(s)) => break Some(s),
            Ok(None) if Instant::now() < deadline => {
                std::thread::sleep(nap);
                nap = (nap * 2).min(Duration::from_millis(20));
            }
            _ => {
                let _ = child.kill();
                let _ = child.wait();
                break None;
            }
        }
    };
    Out {
        what,
        status,
        stdout: out.join().unwrap_or_default(),
        stderr: err.join().unwrap_or_default(),
    }
}

/// `ip netns exec <ns> <prog> <args…>` as a Command (not run yet).
pub fn ns_command(ns: &str, prog: impl AsRef<std::ffi::OsStr>, args: &[&str]) -> Command {
    let mut c = Command::new("ip");
    c.args(["netns", "exec", ns]).arg(prog).args(args);
    c
}

/// Runs `args[0] args[1..]` in namespace `ns`.
pub fn in_ns(ns: &str, args: &[&str]) -> Out {
    run(&mut ns_command(ns, args[0], &args[1..]), None, CMD_TIMEOUT)
}

/// Runs a command in the root namespace that only manages namespaces (`ip netns add/del`, `ip -n …`).
pub fn ip(args: &[&str]) -> Out {
    let mut c = Command::new("ip");
    c.args(args);
    run(&mut c, None, CMD_TIMEOUT)
}

/// `ip -j <args>` in `ns`, parsed (an empty array when there is no output).
pub fn ip_json(ns: &str, args: &[&str]) -> Value {
    let mut a = vec!["ip", "-j"];
    a.extend_from_slice(args);
    json_of(in_ns(ns, &a))
}

/// `bridge -j <args>` in `ns`, parsed.
pub fn bridge_json(ns: &str, args: &[&str]) -> Value {
    let mut a = vec!["bridge", "-j"];
    a.extend_from_slice(args);
    json_of(in_ns(ns, &a))
}

fn json_of(o: Out) -> Value {
    let what = o.to_string();
    let s = o.must();
    if s.trim().is_empty() {
        return json!([]);
    }
    serde_json::from_str(&s).unwrap_or_else(|e| panic!("not JSON ({e}): {what}"))
}

/// An HTTP/1.0 GET from inside network namespace `ns` (a thread `setns`es into it): status and body.
pub fn http_get(
    ns: &str,
    addr: SocketAddr,
    path: &str,
    timeout: Duration,
) -> Option<(u16, String)> {
    let ns_path = format!("/run/netns/{ns}");
    let path = path.to_string();
    std::thread::spawn(move || -> Option<(u16, String)> {
        let f = fs::File::open(&ns_path).ok()?;
        nix::sched::setns(&f, nix::sched::CloneFlags::CLONE_NEWNET).ok()?;
        let mut s = TcpStream::connect_timeout(&addr, timeout).ok()?;
        s.set_read_timeout(Some(timeout)).ok()?;
        s.set_write_timeout(Some(timeout)).ok()?;
        write!(
            s,
            "GET {path} HTTP/1.0\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
        )
        .ok()?;
        let mut buf = Vec::new();
        s.read_to_end(&mut buf).ok()?;
        let text = String::from_utf8_lossy(&buf).into_owned();
        let (head, body) = text.split_once("\r\n\r\n")?;
        let code = head.split_whitespace().nth(1)?.parse().ok()?;
        Some((code, body.to_string()))
    })
    .join()
    .ok()
    .flatten()
}

/// Polls `f` every `every` until it is true or `timeout` passed; whether it became true.
pub fn wait_until(timeout: Duration, every: Duration, mut f: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        if f() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(every.min(deadline.saturating_duration_since(Instant::now())));
    }
}

/// Polls `f` until it returns `Ok`; the last error when `timeout` passed.
pub fn wait_ok<T>(
    timeout: Duration,
    every: Duration,
    mut f: impl FnMut() -> Result<T, String>,
) -> Result<T, String> {
    let deadline = Instant::now() + timeout;
    loop {
        match f() {
            Ok(v) => return Ok(v),
            Err(e) if Instant::now() >= deadline => return Err(e),
            Err(_) => {
                std::thread::sleep(every.min(deadline.saturating_duration_since(Instant::now())))
            }
        }
    }
}

fn signal(child: &Child, sig: nix::sys::signal::Signal) {
    let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(child.id() as i32), sig);
}

/// Waits for `child` to exit, at most `timeout`.
/// Waits at most `timeout` for `child` to exit; `None` when it is still running.
pub fn wait_child(child: &mut Child, timeout: Duration) -> Option<ExitStatus> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Ok(Some(s)) = child.try_wait() {
            return Some(s);
        }
        if Instant::now() >= deadline {
            return None;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// SIGKILL and reap.
pub fn kill_child(child: &mut Child) {
    let _ = child.kill();
    let _ = child.wait();
}

fn tail(path: &Path, lines: usize) -> String {
    let text = fs::read_to_string(path).unwrap_or_default();
    let v: Vec<&str> = text.lines().collect();
    v[v.len().saturating_sub(lines)..].join("\n")
}

// ------------------------------------------------------------------------------------------------
// Pings
// ------------------------------------------------------------------------------------------------

/// One ping from namespace `ns` to `dst` (1 s timeout).
pub fn ping_once(ns: &str, dst: IpAddr) -> bool {
    let fam = if dst.is_ipv6() { "-6" } else { "-4" };
    let d = dst.to_string();
    in_ns(ns, &["ping", fam, "-c1", "-W1", "-q", &d]).ok()
}

/// Pings until one answer, at most `timeout`.
pub fn ping_within(ns: &str, dst: IpAddr, timeout: Duration) -> bool {
    wait_until(timeout, Duration::from_millis(100), || ping_once(ns, dst))
}

/// A `ping -i <interval> -c <count>` running in the background, its output in a file; killed on drop.
pub struct BackgroundPing {
    child: Option<Child>,
    out: PathBuf,
    pub count: u32,
    pub interval: Duration,
}

/// What a background ping saw.
#[derive(Debug, Clone)]
pub struct PingStats {
    pub transmitted: u32,
    pub received: u32,
    /// Sequence numbers that got no answer, up to the last one sent.
    pub missing: Vec<u32>,
}

impl PingStats {
    pub fn lost(&self) -> u32 {
        self.transmitted.saturating_sub(self.received)
    }
}

impl BackgroundPing {
    /// Starts `ping -i interval -c count -w <count*interval + 5 s>` from `ns` to `dst`, output in `out`.
    pub fn start(ns: &str, dst: IpAddr, interval: Duration, count: u32, out: PathBuf) -> Self {
        let file = fs::File::create(&out).expect("create ping output file");
        let deadline = (interval.as_secs_f64() * f64::from(count)).ceil() as u64 + 5;
        let fam = if dst.is_ipv6() { "-6" } else { "-4" };
        let args = [
            fam.to_string(),
            "-n".into(),
            "-i".into(),
            format!("{:.3}", interval.as_secs_f64()),
            "-c".into(),
            count.to_string(),
            "-w".into(),
            deadline.to_string(),
            "-W".into(),
            "1".into(),
            dst.to_string(),
        ];
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let child = ns_command(ns, "ping", &args)
            .stdin(Stdio::null())
            .stdout(file.try_clone().expect("clone file"))
            .stderr(file)
            .spawn()
            .expect("spawn ping");
        BackgroundPing {
            child: Some(child),
            out,
            count,
            interval,
        }
    }

    /// Sequence numbers answered so far.
    pub fn answered(&self) -> Vec<u32> {
        let text = fs::read_to_string(&self.out).unwrap_or_default();
        text.lines()
            .filter(|l| l.contains("bytes from"))
            .filter_map(|l| {
                l.split_whitespace()
                    .find_map(|w| w.strip_prefix("icmp_seq="))
                    .and_then(|n| n.parse().ok())
            })
            .collect()
    }

    /// Whether ping is still sending.
    pub fn running(&mut self) -> bool {
        self.child
            .as_mut()
            .is_some_and(|c| matches!(c.try_wait(), Ok(None)))
    }

    /// Waits for ping to finish (bounded by its own `-w` plus a margin) and parses its summary.
    pub fn finish(mut self) -> PingStats {
        let limit = self.interval * self.count + Duration::from_secs(10);
        if let Some(mut c) = self.child.take() {
            if wait_child(&mut c, limit).is_none() {
                kill_child(&mut c);
            }
        }
        let text = fs::read_to_string(&self.out).unwrap_or_default();
        let summary = text
            .lines()
            .find(|l| l.contains("packets transmitted"))
            .unwrap_or_else(|| panic!("no ping summary in:\n{text}"));
        let num = |what: &str| -> u32 {
            summary
                .split(',')
                .find(|p| p.contains(what))
                .and_then(|p| p.split_whitespace().next())
                .and_then(|n| n.parse().ok())
                .unwrap_or(0)
        };
        let transmitted = num("transmitted");
        let received = num("received");
        let got: std::collections::BTreeSet<u32> = self.answered().into_iter().collect();
        let missing = (1..=transmitted).filter(|s| !got.contains(s)).collect();
        PingStats {
            transmitted,
            received,
            missing,
        }
    }
}

impl Drop for BackgroundPing {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            kill_child(&mut c);
        }
    }
}

// ------------------------------------------------------------------------------------------------
// The cluster
// ------------------------------------------------------------------------------------------------

/// One node: a namespace with `eth0` on the underlay and (usually) a flanneld.
pub struct Node {
    /// 1-based number; the node's underlay address is 192.0.2.<n>.
    pub n: usize,
    /// Namespace name.
    pub ns: String,
    pub ip: Ipv4Addr,
    pub ip6: Option<Ipv6Addr>,
    /// `--subnet-file`.
    pub subnet_file: PathBuf,
    /// flanneld's stdout+stderr, appended across restarts.
    pub log: PathBuf,
    /// Extra flanneld arguments for this node only.
    pub extra_args: Vec<String>,
    /// Kubernetes mode with the pod's service account instead of a kubeconfig: the directory holding the `token`,
    /// `ca.crt` and `namespace` files that are mounted for it (see [`Cluster::in_cluster`]).
    pub service_account: Option<PathBuf>,
    child: Option<Child>,
    /// Exit status of the last daemon that ended while we watched.
    pub last_exit: Option<ExitStatus>,
}

/// One pod: a namespace attached to a node's `cni0` by our CNI plugins.
#[derive(Debug, Clone)]
pub struct Pod {
    pub ns: String,
    pub node: usize,
    pub container_id: String,
    pub ip4: Option<IpAddr>,
    pub ip6: Option<IpAddr>,
    /// The flannel plugin's ADD result.
    pub result: Value,
}

/// Builds a [`Cluster`].
pub struct Builder {
    nodes: usize,
    config: Option<String>,
    ipv6: bool,
    ip_masq: bool,
    args: Vec<String>,
    kube: bool,
}

impl Builder {
    /// Number of nodes (default 3).
    pub fn nodes(mut self, n: usize) -> Self {
        assert!((1..=200).contains(&n), "1..=200 nodes");
        self.nodes = n;
        self
    }

    /// Network 10.244.0.0/16 with this `Backend` object.
    pub fn backend(self, backend: Value) -> Self {
        self.config(json!({"Network": "10.244.0.0/16", "Backend": backend}))
    }

    /// The network config written to `<prefix>/config` before any daemon starts.
    pub fn config(mut self, cfg: Value) -> Self {
        self.config = Some(cfg.to_string());
        self
    }

    /// Writes no config at all.
    pub fn no_config(mut self) -> Self {
        self.config = None;
        self
    }

    /// Adds an IPv6 underlay: 2001:db8:1::<n>/64 on every node, ::254 on the fabric bridge, a default route.
    pub fn ipv6(mut self) -> Self {
        self.ipv6 = true;
        self
    }

    /// Run the daemons without `--ip-masq`.
    pub fn no_ip_masq(mut self) -> Self {
        self.ip_masq = false;
        self
    }

    /// Kubernetes mode: no etcd; an in-process API server in the fabric (192.0.2.254:6443) holds a Node per node
    /// (`n<i>`, podCIDR `10.244.<i>.0/24`, and `fd00:10:244:<i>::/64` when the config enables IPv6), and every
    /// flanneld runs with `--kube-subnet-mgr`, a kubeconfig for it, the config as its net-conf.json, and
    /// `NODE_NAME`.
    pub fn kube(mut self) -> Self {
        self.kube = true;
        self
    }

    /// Extra arguments for every flanneld.
    pub fn flanneld_args(mut self, args: &[&str]) -> Self {
        self.args.extend(args.iter().map(|s| s.to_string()));
        self
    }

    /// Fabric, etcd, config and node namespaces; no daemon runs yet.
    pub fn build(self) -> Cluster {
        require_env();
        let name = format!(
            "fc{}x{}",
            std::process::id(),
            COUNTER.fetch_add(1, Ordering::Relaxed)
        );
        let dir = std::env::temp_dir().join(format!("flannel-rs-cluster-{name}"));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).expect("create the cluster's temp dir");
        let mut c = Cluster {
            fabric: format!("{name}f"),
            name,
            dir,
            nodes: Vec::new(),
            pods: Vec::new(),
            etcd: None,
            namespaces: Vec::new(),
            ipv6: self.ipv6,
            ip_masq: self.ip_masq,
            args: self.args,
            kube: None,
            kube_config: None,
        };
        c.make_fabric();
        if self.kube {
            let api = apiserver_fake::FakeApiServer::start(apiserver_fake::Options {
                addr: "192.0.2.254:6443".parse().unwrap(),
                netns: Some(PathBuf::from(format!("/run/netns/{}", c.fabric))),
                bookmark_every: Duration::from_secs(2),
                ..Default::default()
            })
            .expect("start the fake API server in the fabric");
            api.write_kubeconfig(&c.dir.join("kubeconfig"), None)
                .expect("write the kubeconfig");
            let cfg = self.config.clone().unwrap_or_else(|| "{}".into());
            fs::write(c.dir.join("net-conf.json"), &cfg).expect("write net-conf.json");
            c.kube_config = serde_json::from_str(&cfg).ok();
            c.kube = Some(api);
        } else {
            c.start_etcd();
            if let Some(cfg) = &self.config {
                c.put(&format!("{ETCD_PREFIX}/config"), cfg);
            }
        }
        for _ in 0..self.nodes {
            c.add_node();
        }
        c
    }

    /// [`build`](Self::build), then start every daemon and wait until all are ready.
    pub fn start(self) -> Cluster {
        let mut c = self.build();
        c.start_all();
        c.wait_all_ready(Duration::from_secs(30));
        c
    }
}

/// A running test cluster; everything it made goes away on drop.
pub struct Cluster {
    /// The unique prefix of every name.
    pub name: String,
    /// Temporary directory: etcd data, logs, subnet files, CNI state.
    pub dir: PathBuf,
    /// The fabric namespace (bridge + etcd).
    pub fabric: String,
    pub nodes: Vec<Node>,
    pub pods: Vec<Pod>,
    etcd: Option<Child>,
    /// Every namespace we created, in creation order.
    namespaces: Vec<String>,
    ipv6: bool,
    ip_masq: bool,
    args: Vec<String>,
    /// Kubernetes mode: the API server (instead of etcd) and the net-conf.json it was given.
    kube: Option<apiserver_fake::FakeApiServer>,
    kube_config: Option<Value>,
}

impl Cluster {
    pub fn builder() -> Builder {
        Builder {
            nodes: 3,
            config: Some(
                json!({"Network": "10.244.0.0/16", "Backend": {"Type": "vxlan"}}).to_string(),
            ),
            ipv6: false,
            ip_masq: true,
            args: Vec::new(),
            kube: false,
        }
    }

    /// The fake API server (Kubernetes mode only).
    pub fn api(&self) -> &apiserver_fake::FakeApiServer {
        self.kube
            .as_ref()
            .expect("a Kubernetes-mode cluster (Builder::kube)")
    }

    /// Whether the cluster runs in Kubernetes mode.
    pub fn is_kube(&self) -> bool {
        self.kube.is_some()
    }

    /// The Kubernetes Node name of node `n`.
    pub fn node_name(n: usize) -> String {
        format!("n{n}")
    }

    fn add_ns(&mut self, name: &str) {
        if Path::new(&format!("/run/netns/{name}")).exists() {
            let _ = ip(&["netns", "del", name]);
        }
        ip(&["netns", "add", name]).must();
        self.namespaces.push(name.to_string());
        ip(&["-n", name, "link", "set", "lo", "up"]).must();
    }

    fn make_fabric(&mut self) {
        let f = self.fabric.clone();
        self.add_ns(&f);
        ip(&["-n", &f, "link", "add", "br0", "type", "bridge"]).must();
        ip(&["-n", &f, "addr", "add", "192.0.2.254/24", "dev", "br0"]).must();
        if self.ipv6 {
            ip(&[
                "-n",
                &f,
                "addr",
                "add",
                "2001:db8:1::254/64",
                "dev",
                "br0",
                "nodad",
            ])
            .must();
        }
        ip(&["-n", &f, "link", "set", "br0", "up"]).must();
    }

    // -------------------------------------------------------------------------------- etcd

    /// Starts etcd in the fabric (data dir kept across restarts) and waits until it is healthy.
    pub fn start_etcd(&mut self) {
        assert!(self.etcd.is_none(), "etcd already running");
        let data = self.dir.join("etcd-data");
        let log = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.join("etcd.log"))
            .expect("open etcd log");
        let peer = "http://127.0.0.1:2380";
        let data_s = data.display().to_string();
        let child = ns_command(
            &self.fabric,
            ETCD_BIN,
            &[
                "--name",
                "fc",
                "--data-dir",
                &data_s,
                "--listen-client-urls",
                ETCD_URL,
                "--advertise-client-urls",
                ETCD_URL,
                "--listen-peer-urls",
                peer,
                "--initial-advertise-peer-urls",
                peer,
                "--initial-cluster",
                &format!("fc={peer}"),
                "--logger",
                "zap",
                "--log-level",
                "warn",
            ],
        )
        .stdin(Stdio::null())
        .stdout(log.try_clone().expect("clone log"))
        .stderr(log)
        .spawn()
        .expect("spawn etcd");
        self.etcd = Some(child);
        let addr: SocketAddr = "192.0.2.254:2379".parse().unwrap();
        let fabric = self.fabric.clone();
        let healthy = wait_until(Duration::from_secs(20), Duration::from_millis(100), || {
            if let Some(Ok(Some(_))) = self.etcd.as_mut().map(|c| c.try_wait()) {
                return true; // exited: reported below
            }
            http_get(&fabric, addr, "/health", Duration::from_secs(1))
                .is_some_and(|(code, body)| code == 200 && body.contains("true"))
        });
        let exited = matches!(self.etcd.as_mut().map(|c| c.try_wait()), Some(Ok(Some(_))));
        assert!(
            healthy && !exited,
            "etcd did not become healthy (exited: {exited}):\n{}",
            tail(&self.dir.join("etcd.log"), 30)
        );
    }

    /// Kills etcd (SIGKILL) and waits for it; its data dir stays.
    pub fn kill_etcd(&mut self) {
        if let Some(mut c) = self.etcd.take() {
            kill_child(&mut c);
        }
    }

    /// `etcdctl --endpoints <etcd> <args>` from the fabric.
    pub fn etcdctl(&self, args: &[&str]) -> Out {
        let mut a = vec![
            "--endpoints",
            ETCD_URL,
            "--dial-timeout=2s",
            "--command-timeout=5s",
        ];
        a.extend_from_slice(args);
        let mut cmd = ns_command(&self.fabric, ETCDCTL_BIN, &a);
        cmd.env("ETCDCTL_API", "3");
        run(&mut cmd, None, CMD_TIMEOUT)
    }

    pub fn put(&self, key: &str, value: &str) {
        // "--" so that a value starting with '-' is not an option.
        self.etcdctl(&["put", "--", key, value]).must();
    }

    /// Deletes a key; how many keys were deleted.
    pub fn del(&self, key: &str) -> u32 {
        self.etcdctl(&["del", key])
            .must()
            .trim()
            .parse()
            .unwrap_or(0)
    }

    /// Every key under `prefix` with its value (values are single-line JSON here).
    pub fn get_prefix(&self, prefix: &str) -> BTreeMap<String, String> {
        let out = self.etcdctl(&["get", "--prefix", prefix]).must();
        let lines: Vec<&str> = out.lines().collect();
        lines
            .chunks(2)
            .filter(|c| c.len() == 2)
            .map(|c| (c[0].to_string(), c[1].to_string()))
            .collect()
    }

    /// The leases in etcd: key (`<prefix>/subnets/10.244.3.0-24`) → value JSON.
    pub fn leases(&self) -> BTreeMap<String, Value> {
        self.get_prefix(&format!("{ETCD_PREFIX}/subnets/"))
            .into_iter()
            .map(|(k, v)| {
                let j = serde_json::from_str(&v)
                    .unwrap_or_else(|e| panic!("lease {k} is not JSON ({e}): {v}"));
                (k, j)
            })
            .collect()
    }

    // -------------------------------------------------------------------------------- nodes

    /// Adds node namespace N+1 with `eth0` on the underlay (no daemon yet); its number.
    pub fn add_node(&mut self) -> usize {
        let n = self.nodes.len() + 1;
        assert!(n <= 250, "the underlay /24 holds 250 nodes");
        let ns = format!("{}n{n}", self.name);
        self.add_ns(&ns);
        let f = self.fabric.clone();
        let host = format!("h{n}");
        // Created in the fabric with its peer moved straight into the node: nothing touches the root namespace.
        ip(&[
            "-n", &f, "link", "add", &host, "type", "veth", "peer", "name", "eth0", "netns", &ns,
        ])
        .must();
        ip(&["-n", &f, "link", "set", &host, "master", "br0", "up"]).must();
        let ip4 = Ipv4Addr::new(192, 0, 2, n as u8);
        ip(&[
            "-n",
            &ns,
            "addr",
            "add",
            &format!("{ip4}/24"),
            "dev",
            "eth0",
        ])
        .must();
        let ip6 = self
            .ipv6
            .then(|| format!("2001:db8:1::{n:x}").parse::<Ipv6Addr>().unwrap());
        if let Some(a) = ip6 {
            ip(&[
                "-n",
                &ns,
                "addr",
                "add",
                &format!("{a}/64"),
                "dev",
                "eth0",
                "nodad",
            ])
            .must();
        }
        ip(&["-n", &ns, "link", "set", "eth0", "up"]).must();
        ip(&["-n", &ns, "route", "add", "default", "via", "192.0.2.254"]).must();
        if self.ipv6 {
            ip(&[
                "-n",
                &ns,
                "-6",
                "route",
                "add",
                "default",
                "via",
                "2001:db8:1::254",
            ])
            .must();
        }
        if let Some(api) = &self.kube {
            let cfg = self.kube_config.clone().unwrap_or(Value::Null);
            let mut cidrs = Vec::new();
            if cfg["EnableIPv4"] != false {
                cidrs.push(format!("10.244.{n}.0/24"));
            }
            if cfg["EnableIPv6"] == true {
                cidrs.push(format!("fd00:10:244:{n:x}::/64"));
            }
            let refs: Vec<&str> = cidrs.iter().map(String::as_str).collect();
            api.add_node(&Self::node_name(n), &refs, json!({}), &ip4.to_string());
        }
        self.nodes.push(Node {
            n,
            subnet_file: self.dir.join(format!("n{n}.env")),
            log: self.dir.join(format!("flanneld-n{n}.log")),
            ns,
            ip: ip4,
            ip6,
            extra_args: Vec::new(),
            service_account: None,
            child: None,
            last_exit: None,
        });
        n
    }

    pub fn node(&self, n: usize) -> &Node {
        &self.nodes[n - 1]
    }

    pub fn node_mut(&mut self, n: usize) -> &mut Node {
        &mut self.nodes[n - 1]
    }

    /// Node numbers 1..=N.
    pub fn node_ids(&self) -> Vec<usize> {
        (1..=self.nodes.len()).collect()
    }

    /// The flanneld command line of node `n`.
    pub fn flanneld_args(&self, n: usize) -> Vec<String> {
        let node = self.node(n);
        let mut a = vec![
            format!("--subnet-file={}", node.subnet_file.display()),
            format!("--healthz-port={HEALTHZ_PORT}"),
        ];
        if self.kube.is_some() {
            a.push("--kube-subnet-mgr".into());
            if node.service_account.is_none() {
                a.push(format!(
                    "--kubeconfig-file={}",
                    self.dir.join("kubeconfig").display()
                ));
            }
            a.push(format!(
                "--net-config-path={}",
                self.dir.join("net-conf.json").display()
            ));
        } else {
            a.push(format!("--etcd-endpoints={ETCD_URL}"));
        }
        if self.ip_masq {
            a.push("--ip-masq".into());
        }
        a.extend(self.args.iter().cloned());
        a.extend(node.extra_args.iter().cloned());
        a
    }

    /// Starts flanneld on node `n` (not waiting for it).
    pub fn start(&mut self, n: usize) {
        let args = self.flanneld_args(n);
        let node = &mut self.nodes[n - 1];
        assert!(node.child.is_none(), "flanneld on node {n} already running");
        let mut log = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&node.log)
            .expect("open flanneld log");
        let _ = writeln!(log, "===== harness: starting flanneld {}", args.join(" "));
        let a: Vec<&str> = args.iter().map(String::as_str).collect();
        let mut cmd = match &node.service_account {
            None => ns_command(&node.ns, flanneld_bin(), &a),
            // As in a pod: the service account's files at the fixed path, the API in KUBERNETES_SERVICE_*. The files
            // go on a tmpfs over /run in a mount namespace of flanneld's own (/var/run is /run), so nothing is
            // written on the host; the test reaches them through /proc/<pid>/root.
            Some(sa) => {
                let bin = flanneld_bin();
                let mut wrapped = vec![
                    "--mount",
                    "--propagation",
                    "private",
                    "sh",
                    "-c",
                    "mount -t tmpfs tmpfs /run && mkdir -p /run/secrets/kubernetes.io/serviceaccount && \
                     cp \"$1\"/token \"$1\"/ca.crt \"$1\"/namespace /run/secrets/kubernetes.io/serviceaccount/ && \
                     shift && exec \"$@\"",
                    "sh",
                ];
                let sa = sa.to_string_lossy().into_owned();
                let bin = bin.to_string_lossy().into_owned();
                wrapped.push(&sa);
                wrapped.push(&bin);
                wrapped.extend(a.iter().copied());
                let mut c = ns_command(&node.ns, "unshare", &wrapped);
                let api = self.kube.as_ref().expect("in-cluster needs Builder::kube");
                c.env("KUBERNETES_SERVICE_HOST", api.addr().ip().to_string())
                    .env("KUBERNETES_SERVICE_PORT", api.addr().port().to_string());
                c
            }
        };
        let child = cmd
            .env("NODE_NAME", format!("n{n}"))
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("clone log"))
            .stderr(log)
            .spawn()
            .expect("spawn flanneld");
        node.child = Some(child);
        node.last_exit = None;
    }

    pub fn start_all(&mut self) {
        for n in self.node_ids() {
            self.start(n);
        }
    }

    /// Node `n`'s flanneld (from its next start) finds the API as in a pod: `KUBERNETES_SERVICE_HOST/PORT` and the
    /// service account's token and CA under `/var/run/secrets/kubernetes.io/serviceaccount`, no kubeconfig.
    pub fn in_cluster(&mut self, n: usize) {
        let api = self.kube.as_ref().expect("in-cluster needs Builder::kube");
        let sa = self.dir.join(format!("serviceaccount-n{n}"));
        fs::create_dir_all(&sa).expect("service account dir");
        fs::write(sa.join("token"), api.token()).expect("token");
        fs::write(sa.join("ca.crt"), api.ca_pem()).expect("ca.crt");
        fs::write(sa.join("namespace"), "kube-flannel").expect("namespace");
        self.nodes[n - 1].service_account = Some(sa);
    }

    /// The service-account token file node `n`'s running flanneld reads (in its own mount namespace).
    pub fn service_account_token_path(&self, n: usize) -> PathBuf {
        let pid = self.pid(n).expect("flanneld running");
        PathBuf::from(format!(
            "/proc/{pid}/root/run/secrets/kubernetes.io/serviceaccount/token"
        ))
    }

    /// The pid of node `n`'s flanneld, if running.
    pub fn pid(&self, n: usize) -> Option<u32> {
        self.nodes[n - 1].child.as_ref().map(|c| c.id())
    }

    /// Whether node `n`'s flanneld is running (records its exit status when it ended).
    pub fn is_running(&mut self, n: usize) -> bool {
        let node = &mut self.nodes[n - 1];
        match node.child.as_mut().map(|c| c.try_wait()) {
            Some(Ok(None)) => true,
            Some(Ok(Some(s))) => {
                node.last_exit = Some(s);
                node.child = None;
                false
            }
            _ => false,
        }
    }

    /// Sends SIGTERM to node `n`'s flanneld and waits (≤ 10 s) for it to exit; its exit status.
    pub fn stop(&mut self, n: usize) -> ExitStatus {
        let node = &mut self.nodes[n - 1];
        let mut c = node
            .child
            .take()
            .unwrap_or_else(|| panic!("flanneld on node {n} is not running"));
        signal(&c, nix::sys::signal::Signal::SIGTERM);
        let st = wait_child(&mut c, Duration::from_secs(10));
        if st.is_none() {
            kill_child(&mut c);
        }
        let st = st.unwrap_or_else(|| {
            panic!(
                "flanneld on node {n} did not exit within 10 s of SIGTERM:\n{}",
                tail(&node.log, 30)
            )
        });
        node.last_exit = Some(st);
        st
    }

    /// SIGTERM, start again, wait until ready; the exit status of the stopped daemon.
    pub fn restart(&mut self, n: usize, timeout: Duration) -> ExitStatus {
        let st = self.stop(n);
        self.start(n);
        self.wait_ready(n, timeout);
        st
    }

    /// SIGKILLs node `n`'s flanneld, if running.
    pub fn kill(&mut self, n: usize) {
        if let Some(mut c) = self.nodes[n - 1].child.take() {
            kill_child(&mut c);
        }
    }

    /// Waits (≤ `timeout`) for node `n`'s flanneld to exit by itself; its status.
    pub fn wait_exit(&mut self, n: usize, timeout: Duration) -> Option<ExitStatus> {
        let node = &mut self.nodes[n - 1];
        let c = node.child.as_mut()?;
        let st = wait_child(c, timeout)?;
        node.child = None;
        node.last_exit = Some(st);
        Some(st)
    }

    /// Node `n`'s flanneld log so far.
    pub fn log(&self, n: usize) -> String {
        fs::read_to_string(&self.node(n).log).unwrap_or_default()
    }

    /// The last lines of node `n`'s log, for messages.
    pub fn log_tail(&self, n: usize) -> String {
        tail(&self.node(n).log, 40)
    }

    /// GET on node `n`'s health server.
    pub fn health(&self, n: usize, path: &str) -> Option<(u16, String)> {
        let addr = SocketAddr::from(([127, 0, 0, 1], HEALTHZ_PORT));
        http_get(&self.node(n).ns, addr, path, Duration::from_secs(2))
    }

    /// `/status` of node `n`, parsed.
    pub fn status(&self, n: usize) -> Value {
        let (code, body) = self
            .health(n, "/status")
            .unwrap_or_else(|| panic!("no /status answer from node {n}"));
        assert_eq!(code, 200, "/status of node {n}: {body}");
        serde_json::from_str(&body).unwrap_or_else(|e| panic!("/status is not JSON ({e}): {body}"))
    }

    /// Waits until node `n` answers `/readyz` with 200 and its subnet file exists; panics with the log when the
    /// daemon exits or the time is up.
    pub fn wait_ready(&mut self, n: usize, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        loop {
            if !self.is_running(n) {
                panic!(
                    "flanneld on node {n} exited ({:?}) before it was ready:\n{}",
                    self.node(n).last_exit,
                    self.log_tail(n)
                );
            }
            if self.node(n).subnet_file.is_file()
                && self.health(n, "/readyz").is_some_and(|(c, _)| c == 200)
            {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "flanneld on node {n} not ready within {timeout:?}:\n{}",
                self.log_tail(n)
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    pub fn wait_all_ready(&mut self, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        for n in self.node_ids() {
            let left = deadline.saturating_duration_since(Instant::now());
            self.wait_ready(n, left.max(Duration::from_millis(100)));
        }
    }

    // -------------------------------------------------------------------------------- subnets

    /// Node `n`'s subnet.env as key → value.
    pub fn subnet_env(&self, n: usize) -> BTreeMap<String, String> {
        let p = &self.node(n).subnet_file;
        let text = fs::read_to_string(p).unwrap_or_else(|e| panic!("read {}: {e}", p.display()));
        text.lines()
            .filter_map(|l| l.split_once('='))
            .map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))
            .collect()
    }

    /// Node `n`'s IPv4 subnet (`10.244.17.0/24`), from its subnet.env.
    pub fn subnet(&self, n: usize) -> ipnet::Ipv4Net {
        let env = self.subnet_env(n);
        let s = env
            .get("FLANNEL_SUBNET")
            .unwrap_or_else(|| panic!("no FLANNEL_SUBNET for node {n}: {env:?}"));
        s.parse::<ipnet::Ipv4Net>()
            .unwrap_or_else(|e| panic!("FLANNEL_SUBNET={s}: {e}"))
            .trunc()
    }

    /// Node `n`'s IPv6 subnet, from its subnet.env.
    pub fn subnet6(&self, n: usize) -> ipnet::Ipv6Net {
        let env = self.subnet_env(n);
        let s = env
            .get("FLANNEL_IPV6_SUBNET")
            .unwrap_or_else(|| panic!("no FLANNEL_IPV6_SUBNET for node {n}: {env:?}"));
        s.parse::<ipnet::Ipv6Net>()
            .unwrap_or_else(|e| panic!("FLANNEL_IPV6_SUBNET={s}: {e}"))
            .trunc()
    }

    /// Node `n`'s lease key in etcd (upstream layout: `10.244.3.0-24`, dual stack `10.244.3.0-24&fd00::-64`).
    pub fn lease_key(&self, n: usize) -> String {
        let s = self.subnet(n);
        let mut k = format!("{ETCD_PREFIX}/subnets/{}-{}", s.network(), s.prefix_len());
        if self.subnet_env(n).contains_key("FLANNEL_IPV6_SUBNET") {
            let s6 = self.subnet6(n);
            // Upstream's MakeSubnetKey: "<v4>&<v6>".
            k += &format!("&{}-{}", s6.network(), s6.prefix_len());
        }
        k
    }

    /// Node `n`'s lease value from etcd; in Kubernetes mode the same JSON made from its Node's annotations.
    pub fn lease(&self, n: usize) -> Value {
        if let Some(api) = &self.kube {
            let node = api
                .node(&Self::node_name(n))
                .unwrap_or_else(|| panic!("no Node n{n}"));
            let a = &node["metadata"]["annotations"];
            let p = "flannel.alpha.coreos.com";
            let data = |k: &str| {
                a[format!("{p}/{k}")]
                    .as_str()
                    .and_then(|s| serde_json::from_str::<Value>(s).ok())
                    .unwrap_or(Value::Null)
            };
            return json!({
                "PublicIP": a[format!("{p}/public-ip")],
                "PublicIPv6": a[format!("{p}/public-ipv6")],
                "BackendType": a[format!("{p}/backend-type")],
                "BackendData": data("backend-data"),
                "BackendV6Data": data("backend-v6-data"),
            });
        }
        let k = self.lease_key(n);
        let mut all = self.leases();
        all.remove(&k)
            .unwrap_or_else(|| panic!("no lease {k} in etcd; have {:?}", all.keys()))
    }

    // -------------------------------------------------------------------------------- kernel state

    /// IPv4 routes of node `n`.
    pub fn routes(&self, n: usize) -> Vec<Value> {
        arr(ip_json(&self.node(n).ns, &["route", "show"]))
    }

    /// IPv6 routes of node `n`.
    pub fn routes6(&self, n: usize) -> Vec<Value> {
        arr(ip_json(&self.node(n).ns, &["-6", "route", "show"]))
    }

    /// Neighbour entries of node `n` on `dev`.
    pub fn neighs(&self, n: usize, dev: &str, v6: bool) -> Vec<Value> {
        let fam = if v6 { "-6" } else { "-4" };
        if !self.has_link(n, dev) {
            return Vec::new();
        }
        arr(ip_json(
            &self.node(n).ns,
            &[fam, "neigh", "show", "dev", dev],
        ))
    }

    /// FDB entries of node `n` on `dev`.
    pub fn fdb(&self, n: usize, dev: &str) -> Vec<Value> {
        if !self.has_link(n, dev) {
            return Vec::new();
        }
        arr(bridge_json(&self.node(n).ns, &["fdb", "show", "dev", dev]))
    }

    pub fn has_link(&self, n: usize, dev: &str) -> bool {
        in_ns(&self.node(n).ns, &["ip", "link", "show", "dev", dev]).ok()
    }

    /// `ip -d link show <dev>` text of node `n`.
    pub fn link_details(&self, n: usize, dev: &str) -> String {
        in_ns(&self.node(n).ns, &["ip", "-d", "link", "show", "dev", dev]).must()
    }

    /// Whether node `n` has the vxlan route, neighbour and FDB entry for peer lease `peer` (subnet, VTEP MAC,
    /// public IP); `Err` says what is missing.
    pub fn vxlan_programmed(
        &self,
        n: usize,
        subnet: ipnet::Ipv4Net,
        vtep_mac: &str,
        public: Ipv4Addr,
    ) -> Result<(), String> {
        let dst = subnet.to_string();
        let gw = subnet.network().to_string();
        let routes = self.routes(n);
        let route_ok = routes.iter().any(|r| {
            r["dst"] == dst.as_str()
                && r["gateway"] == gw.as_str()
                && r["dev"] == "flannel.1"
                && has_flag(r, "onlink")
        });
        let neighs = self.neighs(n, "flannel.1", false);
        let neigh_ok = neighs.iter().any(|e| {
            e["dst"] == gw.as_str()
                && e["lladdr"]
                    .as_str()
                    .is_some_and(|m| m.eq_ignore_ascii_case(vtep_mac))
                && has_state(e, "PERMANENT")
        });
        let fdb = self.fdb(n, "flannel.1");
        let pub_s = public.to_string();
        let fdb_ok = fdb.iter().any(|e| {
            e["mac"]
                .as_str()
                .is_some_and(|m| m.eq_ignore_ascii_case(vtep_mac))
                && e["dst"] == pub_s.as_str()
        });
        if route_ok && neigh_ok && fdb_ok {
            Ok(())
        } else {
            Err(format!(
                "node {n} for peer {dst} (VTEP {vtep_mac} at {public}): route {route_ok}, neighbour {neigh_ok}, \
                 fdb {fdb_ok}\nroutes: {routes:?}\nneighbours: {neighs:?}\nfdb: {fdb:?}"
            ))
        }
    }

    /// Whether node `n` still has ANY trace of a peer: a route to `subnet`, a neighbour for its `.0`, an FDB
    /// entry with `vtep_mac`.
    pub fn peer_traces(&self, n: usize, subnet: ipnet::Ipv4Net, vtep_mac: &str) -> Vec<String> {
        let dst = subnet.to_string();
        let gw = subnet.network().to_string();
        let mut t = Vec::new();
        for r in self.routes(n) {
            if r["dst"] == dst.as_str() {
                t.push(format!("route {r}"));
            }
        }
        for e in self.neighs(n, "flannel.1", false) {
            if e["dst"] == gw.as_str()
                || e["lladdr"]
                    .as_str()
                    .is_some_and(|m| m.eq_ignore_ascii_case(vtep_mac))
            {
                t.push(format!("neighbour {e}"));
            }
        }
        for e in self.fdb(n, "flannel.1") {
            if e["mac"]
                .as_str()
                .is_some_and(|m| m.eq_ignore_ascii_case(vtep_mac))
            {
                t.push(format!("fdb {e}"));
            }
        }
        t
    }

    /// The peer data (subnet, VTEP MAC, public IP) of node `m`'s lease in etcd.
    pub fn vxlan_peer(&self, m: usize) -> (ipnet::Ipv4Net, String, Ipv4Addr) {
        let l = self.lease(m);
        let mac = l["BackendData"]["VtepMAC"]
            .as_str()
            .unwrap_or_else(|| panic!("no VtepMAC in node {m}'s lease: {l}"))
            .to_string();
        let public: Ipv4Addr = l["PublicIP"]
            .as_str()
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| panic!("no PublicIP in node {m}'s lease: {l}"));
        (self.subnet(m), mac, public)
    }

    /// Waits (≤ `timeout`) until node `n` has programmed node `m` with vxlan.
    pub fn wait_vxlan_programmed(&self, n: usize, m: usize, timeout: Duration) {
        let (s, mac, public) = self.vxlan_peer(m);
        if let Err(e) = wait_ok(timeout, Duration::from_millis(50), || {
            self.vxlan_programmed(n, s, &mac, public)
        }) {
            panic!(
                "node {n} did not program node {m} within {timeout:?}: {e}\nlog of node {n}:\n{}",
                self.log_tail(n)
            );
        }
    }

    // -------------------------------------------------------------------------------- pods

    /// Attaches a new pod to node `n` (`loopback`, then `flannel` → bridge/host-local); its index in `pods`.
    pub fn add_pod(&mut self, n: usize) -> usize {
        let k = self.pods.iter().filter(|p| p.node == n).count() + 1;
        let ns = format!("{}p{n}-{k}", self.name);
        self.add_ns(&ns);
        let node_ns = self.node(n).ns.clone();
        let container_id = format!("{}-c{n}-{k}", self.name);
        let netns = format!("/run/netns/{ns}");
        let cni_path = bin_dir().display().to_string();
        let env = |cmd: &mut Command, ifname: &str| {
            cmd.env("CNI_COMMAND", "ADD")
                .env("CNI_CONTAINERID", &container_id)
                .env("CNI_NETNS", &netns)
                .env("CNI_IFNAME", ifname)
                .env("CNI_PATH", &cni_path);
        };
        let lo = json!({"cniVersion": "1.0.0", "name": "lo", "type": "loopback"}).to_string();
        let mut cmd = ns_command(&node_ns, plugin_bin("loopback"), &[]);
        env(&mut cmd, "lo");
        let o = run(&mut cmd, Some(lo.as_bytes()), CMD_TIMEOUT);
        assert!(o.ok(), "loopback ADD for pod {ns}: {o}");

        let conf = json!({
            "cniVersion": "1.0.0",
            "name": "cbr0",
            "type": "flannel",
            "subnetFile": self.node(n).subnet_file,
            "dataDir": self.dir.join(format!("cni-n{n}")),
            "delegate": {"hairpinMode": true, "isDefaultGateway": true},
            "ipam": {"dataDir": self.dir.join(format!("ipam-n{n}"))},
        })
        .to_string();
        let mut cmd = ns_command(&node_ns, plugin_bin("flannel"), &[]);
        env(&mut cmd, "eth0");
        let o = run(&mut cmd, Some(conf.as_bytes()), CMD_TIMEOUT);
        assert!(o.ok(), "flannel ADD for pod {ns} on node {n}: {o}");
        let result: Value = serde_json::from_str(&o.stdout)
            .unwrap_or_else(|e| panic!("flannel ADD result is not JSON ({e}): {o}"));
        let mut ip4 = None;
        let mut ip6 = None;
        for a in result["ips"].as_array().into_iter().flatten() {
            let addr = a["address"].as_str().unwrap_or_default();
            let ip: IpAddr = addr
                .split('/')
                .next()
                .and_then(|s| s.parse().ok())
                .unwrap_or_else(|| panic!("bad address {addr} in {result}"));
            match ip {
                IpAddr::V4(_) => ip4 = ip4.or(Some(ip)),
                IpAddr::V6(_) => ip6 = ip6.or(Some(ip)),
            }
        }
        self.pods.push(Pod {
            ns,
            node: n,
            container_id,
            ip4,
            ip6,
            result,
        });
        self.pods.len() - 1
    }

    /// `per_node` pods on every node.
    pub fn add_pods(&mut self, per_node: usize) {
        for n in self.node_ids() {
            for _ in 0..per_node {
                self.add_pod(n);
            }
        }
    }

    /// Every pod pings every other pod (IPv4, or IPv6 when `v6`); panics listing every failing pair.
    pub fn ping_matrix(&self, v6: bool) {
        self.ping_matrix_of(&(0..self.pods.len()).collect::<Vec<_>>(), v6);
    }

    /// [`ping_matrix`](Self::ping_matrix) over some pods only.
    pub fn ping_matrix_of(&self, pods: &[usize], v6: bool) {
        let mut failed = Vec::new();
        let mut tried = 0;
        for &i in pods {
            for &j in pods {
                if i == j {
                    continue;
                }
                let (src, dst) = (&self.pods[i], &self.pods[j]);
                let ip = if v6 { dst.ip6 } else { dst.ip4 }
                    .unwrap_or_else(|| panic!("pod {} has no {} address", dst.ns, fam(v6)));
                tried += 1;
                // A few tries: the very first packet may wait for ARP/ND (or IPv6 DAD) inside a node.
                if !ping_within(&src.ns, ip, Duration::from_secs(5)) {
                    failed.push(format!(
                        "{} (node {}) → {} {ip} (node {})",
                        src.ns, src.node, dst.ns, dst.node
                    ));
                }
            }
        }
        assert!(
            failed.is_empty(),
            "{}/{tried} {} pings failed:\n{}",
            failed.len(),
            fam(v6),
            failed.join("\n")
        );
    }

    /// Prints what a failing test needs to know: each daemon's log tail and etcd's.
    fn dump(&self) {
        eprintln!("===== cluster {} state at failure", self.name);
        for node in &self.nodes {
            eprintln!(
                "----- flanneld log of node {} ({}):\n{}",
                node.n,
                node.ns,
                tail(&node.log, 25)
            );
        }
        eprintln!("----- etcd log:\n{}", tail(&self.dir.join("etcd.log"), 10));
    }
}

fn fam(v6: bool) -> &'static str {
    if v6 {
        "IPv6"
    } else {
        "IPv4"
    }
}

fn arr(v: Value) -> Vec<Value> {
    match v {
        Value::Array(a) => a,
        other => vec![other],
    }
}

/// Whether an `ip -j` object has `flag` in its `flags`.
pub fn has_flag(v: &Value, flag: &str) -> bool {
    v["flags"]
        .as_array()
        .is_some_and(|f| f.iter().any(|x| x == flag))
}

/// Whether an `ip -j neigh` object's `state` contains `state`.
pub fn has_state(v: &Value, state: &str) -> bool {
    match &v["state"] {
        Value::Array(a) => a.iter().any(|x| x == state),
        Value::String(s) => s == state,
        _ => false,
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        if std::thread::panicking() {
            self.dump();
        }
        for node in &mut self.nodes {
            if let Some(mut c) = node.child.take() {
                kill_child(&mut c);
            }
        }
        self.kill_etcd();
        drop(self.kube.take());
        // Pods first, then nodes, then the fabric (reverse creation order).
        for ns in self.namespaces.iter().rev() {
            let _ = ip(&["netns", "del", ns]);
        }
        let _ = fs::remove_dir_all(&self.dir);
    }
}
