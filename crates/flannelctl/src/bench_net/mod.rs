//! `flannelctl bench dataplane|convergence|memory|kube`: the network benchmarks of flanneld, each against a
//! baseline measured in the same run.
//!
//! Every benchmark builds its own private world: network namespaces named `fbn<pid>-...` (a "fabric" namespace
//! with bridge `br0` on 192.0.2.254/24 as the underlay switch, node namespaces with `eth0` on 192.0.2.N/24, pod
//! namespaces), a Debian `etcd` inside the fabric namespace with a temporary data directory (for `bench kube`
//! also an in-process fake Kubernetes API server listening there), real `flanneld` processes inside the node
//! namespaces and pods attached with our CNI plugins. Nothing is configured in the caller's namespace.
//! Everything (processes, namespaces, files) is removed at the end, also on error or Ctrl-C; namespaces left by
//! a benchmark that was killed outright are removed by the next run.

pub mod convergence;
pub mod dataplane;
pub mod kube;
pub mod memory;
mod probe;

use anyhow::{anyhow, bail, Context, Result};
use std::fs::File;
use std::io::Read;
use std::net::Ipv4Addr;
use std::os::fd::AsFd;
use std::os::unix::fs::MetadataExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// The fabric's address: the nodes' default gateway and etcd's client address.
pub const FABRIC_IP: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 254);
/// etcd's client URL inside the fabric.
pub const ETCD_URL: &str = "http://192.0.2.254:2379";
/// flanneld's etcd prefix (upstream's default).
pub const ETCD_PREFIX: &str = "/coreos.com/network";
/// flanneld's health port inside each node namespace (on 127.0.0.1).
pub const HEALTH_PORT: u16 = 8081;
/// Namespace prefix of every benchmark here: `fbn<pid>-`.
const NS_PREFIX: &str = "fbn";

/// Fails with "interrupted" once a signal arrived; every loop here calls it.
pub fn check_interrupt() -> Result<()> {
    crate::interrupt::check()
}

/// Whether a signal arrived.
pub fn interrupted() -> bool {
    crate::interrupt::interrupted()
}

/// Sleeps in small steps so a Ctrl-C is noticed.
pub fn sleep(d: Duration) -> Result<()> {
    let end = Instant::now() + d;
    loop {
        check_interrupt()?;
        let now = Instant::now();
        if now >= end {
            return Ok(());
        }
        std::thread::sleep((end - now).min(Duration::from_millis(20)));
    }
}

/// The release binaries the benchmarks run.
#[derive(Debug, Clone)]
pub struct Bins {
    /// The directory they are in.
    pub dir: PathBuf,
    /// flanneld.
    pub flanneld: PathBuf,
}

impl Bins {
    /// Checks that flanneld and the CNI plugins are in `dir`.
    pub fn find(dir: &Path) -> Result<Self> {
        for b in ["flanneld", "flannel", "bridge", "host-local", "loopback"] {
            let p = dir.join(b);
            if !p.is_file() {
                bail!(
                    "{} not found: build the release binaries first (cd to the workspace and run \
                     `cargo build --release`), then run target/release/flannelctl",
                    p.display()
                );
            }
        }
        if dir.components().any(|c| c.as_os_str() == "debug") {
            eprintln!(
                "warning: using the binaries in {} (a debug build?); numbers are only meaningful for \
                 target/release",
                dir.display()
            );
        }
        Ok(Self {
            dir: dir.to_path_buf(),
            flanneld: dir.join("flanneld"),
        })
    }
}

/// A program looked up in PATH, with an install hint when missing.
pub fn need(program: &str, package: &str) -> Result<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_else(|| "/usr/sbin:/usr/bin:/sbin:/bin".into());
    std::env::split_paths(&path)
        .map(|d| d.join(program))
        .find(|p| p.is_file())
        .with_context(|| format!("{program} not found in PATH (apt-get install {package})"))
}

/// `/run/netns/<name>`.
pub fn ns_path(name: &str) -> PathBuf {
    Path::new(kernel::netns::NETNS_RUN_DIR).join(name)
}

/// A command that starts inside the namespace `ns` (it enters it between fork and exec), with a clean
/// environment (only PATH), its own process group (a Ctrl-C reaches only us) and stdin from /dev/null.
pub fn command_in(ns: &str, program: impl AsRef<std::ffi::OsStr>) -> Result<Command> {
    let file = File::open(ns_path(ns)).with_context(|| format!("open namespace {ns}"))?;
    let mut cmd = Command::new(program);
    cmd.env_clear()
        .env(
            "PATH",
            std::env::var_os("PATH").unwrap_or_else(|| "/usr/sbin:/usr/bin:/sbin:/bin".into()),
        )
        .stdin(Stdio::null())
        .process_group(0);
    // SAFETY: only the setns syscall runs between fork and exec; the closure owns the descriptor.
    unsafe {
        cmd.pre_exec(move || {
            nix::sched::setns(file.as_fd(), nix::sched::CloneFlags::CLONE_NEWNET)
                .map_err(std::io::Error::from)
        });
    }
    Ok(cmd)
}

/// Runs a command to completion with a time limit (killed when it is exceeded or on Ctrl-C); both pipes are
/// drained while it runs, so large outputs cannot block it.
pub fn run_bounded(cmd: &mut Command, timeout: Duration) -> Result<Output> {
    let what = format!("{:?}", cmd.get_program());
    let mut child = cmd
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| format!("run {what}"))?;
    let drain = |r: Option<Box<dyn Read + Send>>| {
        std::thread::spawn(move || {
            let mut buf = Vec::new();
            if let Some(mut r) = r {
                let _ = r.read_to_end(&mut buf);
            }
            buf
        })
    };
    let out_t = drain(
        child
            .stdout
            .take()
            .map(|s| Box::new(s) as Box<dyn Read + Send>),
    );
    let err_t = drain(
        child
            .stderr
            .take()
            .map(|s| Box::new(s) as Box<dyn Read + Send>),
    );
    let deadline = Instant::now() + timeout;
    let status = loop {
        if let Some(st) = child.try_wait()? {
            break Ok(st);
        }
        if interrupted() || Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            break Err(if interrupted() {
                anyhow!("interrupted")
            } else {
                anyhow!("{what} did not finish within {timeout:?}")
            });
        }
        std::thread::sleep(Duration::from_millis(2));
    };
    let stdout = out_t.join().unwrap_or_default();
    let stderr = err_t.join().unwrap_or_default();
    Ok(Output {
        status: status?,
        stdout,
        stderr,
    })
}

/// Runs `ip`/`bridge`/`etcdctl`-style helper commands that must succeed.
pub fn must(cmd: &mut Command, timeout: Duration) -> Result<String> {
    let desc = format!(
        "{} {}",
        cmd.get_program().to_string_lossy(),
        cmd.get_args()
            .map(|a| a.to_string_lossy())
            .collect::<Vec<_>>()
            .join(" ")
    );
    let out = run_bounded(cmd, timeout).with_context(|| desc.clone())?;
    if !out.status.success() {
        bail!(
            "`{desc}` failed ({}): {}{}",
            out.status,
            String::from_utf8_lossy(&out.stdout).trim(),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// `ip ARGS...` (iproute2), which must succeed.
pub fn ip(args: &[&str]) -> Result<()> {
    let mut c = Command::new("ip");
    c.args(args).stdin(Stdio::null());
    must(&mut c, Duration::from_secs(10)).map(|_| ())
}

/// `bridge ARGS...` (iproute2), which must succeed.
pub fn bridge(args: &[&str]) -> Result<()> {
    let mut c = Command::new("bridge");
    c.args(args).stdin(Stdio::null());
    must(&mut c, Duration::from_secs(10)).map(|_| ())
}

/// Sets a sysctl inside a namespace (`/proc/sys/net` is per namespace of the calling thread).
pub fn sysctl_in(ns: &str, segments: &[&str], value: &str) -> Result<()> {
    let n = kernel::Netns::open(ns_path(ns))?;
    n.run(|| kernel::sysctl::set(segments, value))??;
    Ok(())
}

/// Reads `/status` (or another path) from a flanneld health port inside a node namespace.
pub fn http_get_in(ns: &str, path: &str, timeout: Duration) -> Result<(u16, String)> {
    let n = kernel::Netns::open(ns_path(ns))?;
    let addr = std::net::SocketAddr::from((Ipv4Addr::LOCALHOST, HEALTH_PORT));
    let r = n.run(|| crate::http::get(addr, path, timeout))?;
    r.with_context(|| format!("GET {path} on flanneld in {ns}"))
}

/// A process the world started.
struct Proc {
    label: String,
    child: Child,
}

/// One benchmark's private world: its namespaces, processes and temporary directory, all removed on drop.
pub struct World {
    /// `fbn<pid>`: every namespace name starts with `<tag>-`.
    pub tag: String,
    /// The temporary directory (logs, etcd data, subnet.env files, CNI state).
    pub dir: PathBuf,
    namespaces: Mutex<Vec<String>>,
    procs: Mutex<Vec<Proc>>,
}

impl World {
    /// Checks for root, installs the signal handlers, removes what killed earlier runs left, makes the
    /// temporary directory.
    pub fn new(what: &str) -> Result<Self> {
        if !nix::unistd::geteuid().is_root() {
            bail!("bench {what} needs root (it creates network namespaces, devices and daemons)");
        }
        crate::interrupt::install()?;
        remove_stale();
        let pid = std::process::id();
        let dir = std::env::temp_dir().join(format!("flannelctl-benchnet-{pid}"));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).with_context(|| format!("create {}", dir.display()))?;
        Ok(Self {
            tag: format!("{NS_PREFIX}{pid}"),
            dir,
            namespaces: Mutex::new(Vec::new()),
            procs: Mutex::new(Vec::new()),
        })
    }

    /// Creates the namespace `<tag>-<short>` and returns its name.
    pub fn netns(&self, short: &str) -> Result<String> {
        check_interrupt()?;
        let name = format!("{}-{short}", self.tag);
        // Recorded first: a half-made namespace is removed too.
        self.namespaces
            .lock()
            .map_err(|_| anyhow!("lock"))?
            .push(name.clone());
        kernel::netns::create_named(&name).with_context(|| format!("create namespace {name}"))?;
        Ok(name)
    }

    /// Removes a namespace made with [`World::netns`] before the world ends (every process still in it is
    /// killed first; stop the ones started with [`World::spawn`] before, for a clean exit).
    pub fn delete_netns(&self, name: &str) -> Result<()> {
        let mut names = self.namespaces.lock().map_err(|_| anyhow!("lock"))?;
        let Some(i) = names.iter().position(|n| n == name) else {
            bail!("namespace {name} is not one of ours");
        };
        names.remove(i);
        drop(names);
        kill_processes_in(&[name.to_string()]);
        kernel::netns::delete_named(name).with_context(|| format!("delete namespace {name}"))?;
        Ok(())
    }

    /// Starts a long-running process (made with [`command_in`]), its output going to `<dir>/<label>.log`; returns its pid.
    pub fn spawn(&self, label: &str, mut cmd: Command) -> Result<u32> {
        check_interrupt()?;
        let log_path = self.dir.join(format!("{label}.log"));
        let log =
            File::create(&log_path).with_context(|| format!("create {}", log_path.display()))?;
        cmd.stdout(log.try_clone()?).stderr(log);
        let child = cmd
            .spawn()
            .with_context(|| format!("start {label} ({:?})", cmd.get_program()))?;
        let pid = child.id();
        self.procs.lock().map_err(|_| anyhow!("lock"))?.push(Proc {
            label: label.to_string(),
            child,
        });
        Ok(pid)
    }

    /// The log file of a process started with [`World::spawn`].
    pub fn log(&self, label: &str) -> PathBuf {
        self.dir.join(format!("{label}.log"))
    }

    /// The last lines of a process's log, for error messages.
    pub fn tail(&self, label: &str) -> String {
        let t = std::fs::read_to_string(self.log(label)).unwrap_or_default();
        let lines: Vec<&str> = t.lines().collect();
        lines[lines.len().saturating_sub(12)..].join("\n")
    }

    /// Whether a process we started is still running (reaps it if not).
    pub fn running(&self, pid: u32) -> bool {
        let Ok(mut procs) = self.procs.lock() else {
            return false;
        };
        procs
            .iter_mut()
            .find(|p| p.child.id() == pid)
            .is_some_and(|p| matches!(p.child.try_wait(), Ok(None)))
    }

    /// Stops one process: SIGTERM, up to `grace` to exit, then SIGKILL. Returns how long it took to exit.
    pub fn stop(&self, pid: u32, grace: Duration) -> Result<Duration> {
        let mut procs = self.procs.lock().map_err(|_| anyhow!("lock"))?;
        let Some(i) = procs.iter().position(|p| p.child.id() == pid) else {
            bail!("process {pid} is not one of ours");
        };
        let mut p = procs.remove(i);
        drop(procs);
        Ok(terminate(&mut p, grace))
    }
}

/// SIGTERM, wait up to `grace`, SIGKILL; reaps the child.
fn terminate(p: &mut Proc, grace: Duration) -> Duration {
    let t = Instant::now();
    if matches!(p.child.try_wait(), Ok(Some(_))) {
        return Duration::ZERO;
    }
    let pid = nix::unistd::Pid::from_raw(p.child.id() as i32);
    let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
    let deadline = Instant::now() + grace;
    while Instant::now() < deadline {
        if matches!(p.child.try_wait(), Ok(Some(_))) {
            return t.elapsed();
        }
        std::thread::sleep(Duration::from_millis(2));
    }
    eprintln!(
        "{} (pid {}) did not exit within {grace:?} of SIGTERM; killing it",
        p.label,
        p.child.id()
    );
    let _ = p.child.kill();
    let _ = p.child.wait();
    t.elapsed()
}

impl Drop for World {
    fn drop(&mut self) {
        let procs = std::mem::take(&mut *self.procs.lock().unwrap_or_else(|e| e.into_inner()));
        // SIGTERM to all first, then wait for each: parallel shutdown.
        for p in &procs {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(p.child.id() as i32),
                nix::sys::signal::Signal::SIGTERM,
            );
        }
        for mut p in procs {
            terminate(&mut p, Duration::from_secs(5));
        }
        let names = std::mem::take(&mut *self.namespaces.lock().unwrap_or_else(|e| e.into_inner()));
        // Helpers (iperf3 servers, pings) that outlived their parent would keep a namespace alive.
        kill_processes_in(&names);
        for n in names.iter().rev() {
            if let Err(e) = kernel::netns::delete_named(n) {
                eprintln!("flannelctl: could not delete namespace {n}: {e}");
            }
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// The nsfs inode of a named namespace.
fn ns_inode(name: &str) -> Option<u64> {
    std::fs::metadata(ns_path(name)).ok().map(|m| m.ino())
}

/// SIGKILLs every process whose network namespace is one of `names` (only benchmark namespaces are passed).
fn kill_processes_in(names: &[String]) {
    let inodes: Vec<u64> = names.iter().filter_map(|n| ns_inode(n)).collect();
    if inodes.is_empty() {
        return;
    }
    let me = std::process::id();
    let Ok(rd) = std::fs::read_dir("/proc") else {
        return;
    };
    let mut victims = Vec::new();
    for e in rd.flatten() {
        let Ok(pid) = e.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        if pid == me {
            continue;
        }
        let Ok(link) = std::fs::read_link(format!("/proc/{pid}/ns/net")) else {
            continue;
        };
        let l = link.to_string_lossy();
        let ino = l
            .strip_prefix("net:[")
            .and_then(|s| s.strip_suffix(']'))
            .and_then(|s| s.parse::<u64>().ok());
        if ino.is_some_and(|i| inodes.contains(&i)) {
            victims.push(pid);
        }
    }
    for pid in &victims {
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(*pid as i32),
            nix::sys::signal::Signal::SIGKILL,
        );
    }
    if !victims.is_empty() {
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Removes namespaces (and the processes in them, and the temporary directory) of earlier runs whose
/// flannelctl is gone (killed with SIGKILL, say).
fn remove_stale() {
    let mut stale: Vec<(u32, String)> = Vec::new();
    for n in kernel::netns::list_named() {
        let Some(rest) = n.strip_prefix(NS_PREFIX) else {
            continue;
        };
        let Some((pid, _)) = rest.split_once('-') else {
            continue;
        };
        let Ok(pid) = pid.parse::<u32>() else {
            continue;
        };
        if pid != std::process::id() && !Path::new(&format!("/proc/{pid}")).exists() {
            stale.push((pid, n));
        }
    }
    if stale.is_empty() {
        return;
    }
    let names: Vec<String> = stale.iter().map(|(_, n)| n.clone()).collect();
    eprintln!(
        "removing {} namespaces left by an earlier benchmark run that was killed",
        names.len()
    );
    kill_processes_in(&names);
    for (pid, n) in &stale {
        let _ = kernel::netns::delete_named(n);
        let _ = std::fs::remove_dir_all(
            std::env::temp_dir().join(format!("flannelctl-benchnet-{pid}")),
        );
    }
}

/// The simulated underlay: a fabric namespace with bridge `br0` (192.0.2.254/24) and node namespaces, each
/// with `eth0` on 192.0.2.N/24 and a default route via the fabric.
#[derive(Debug, Clone)]
pub struct Underlay {
    /// The fabric namespace.
    pub fabric: String,
    /// Node namespaces, node 1 first (192.0.2.1).
    pub nodes: Vec<String>,
}

impl Underlay {
    /// Builds it with `ip` (benchmark scaffolding). `name` keeps several underlays apart.
    pub fn build(world: &World, name: &str, nodes: usize) -> Result<Self> {
        let fabric = world.netns(&format!("{name}-f"))?;
        ip(&["-n", &fabric, "link", "set", "lo", "up"])?;
        ip(&["-n", &fabric, "link", "add", "br0", "type", "bridge"])?;
        ip(&[
            "-n",
            &fabric,
            "addr",
            "add",
            &format!("{FABRIC_IP}/24"),
            "dev",
            "br0",
        ])?;
        ip(&["-n", &fabric, "link", "set", "br0", "up"])?;
        let mut u = Self {
            fabric,
            nodes: Vec::new(),
        };
        for i in 1..=nodes {
            let node = world.netns(&format!("{name}-n{i}"))?;
            let host = format!("h{i}");
            ip(&[
                "-n", &u.fabric, "link", "add", &host, "type", "veth", "peer", "name", "eth0",
                "netns", &node,
            ])?;
            ip(&["-n", &u.fabric, "link", "set", &host, "master", "br0", "up"])?;
            ip(&["-n", &node, "link", "set", "lo", "up"])?;
            ip(&[
                "-n",
                &node,
                "addr",
                "add",
                &format!("{}/24", Self::node_ip(i)),
                "dev",
                "eth0",
            ])?;
            ip(&["-n", &node, "link", "set", "eth0", "up"])?;
            ip(&[
                "-n",
                &node,
                "route",
                "add",
                "default",
                "via",
                &FABRIC_IP.to_string(),
            ])?;
            u.nodes.push(node);
        }
        Ok(u)
    }

    /// The underlay address of node `i` (1-based).
    pub fn node_ip(i: usize) -> Ipv4Addr {
        Ipv4Addr::new(192, 0, 2, i as u8)
    }
}

/// Starts etcd inside the fabric namespace with a temporary data directory, waits until it answers and writes
/// the network config. Returns its pid.
pub fn start_etcd(world: &World, u: &Underlay, label: &str, config: &str) -> Result<u32> {
    need("etcd", "etcd-server")?;
    need("etcdctl", "etcd-client")?;
    let data = world.dir.join(format!("{label}.data"));
    let mut cmd = command_in(&u.fabric, "etcd")?;
    cmd.args(["--name", "fbn"])
        .arg("--data-dir")
        .arg(&data)
        .args([
            "--listen-client-urls",
            ETCD_URL,
            "--advertise-client-urls",
            ETCD_URL,
        ])
        .args(["--listen-peer-urls", "http://127.0.0.1:2380"])
        .args(["--initial-advertise-peer-urls", "http://127.0.0.1:2380"])
        .args(["--initial-cluster", "fbn=http://127.0.0.1:2380"])
        // Room for the simulated-peer transactions (one txn with thousands of puts).
        .args(["--max-txn-ops", "100000", "--max-request-bytes", "33554432"]);
    let pid = world.spawn(label, cmd)?;
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        check_interrupt()?;
        if !world.running(pid) {
            bail!("etcd exited at start:\n{}", world.tail(label));
        }
        let mut put = command_in(&u.fabric, "etcdctl")?;
        put.env("ETCDCTL_API", "3").args([
            "--endpoints",
            ETCD_URL,
            "--dial-timeout",
            "1s",
            "put",
            &format!("{ETCD_PREFIX}/config"),
            config,
        ]);
        if run_bounded(&mut put, Duration::from_secs(5)).is_ok_and(|o| o.status.success()) {
            return Ok(pid);
        }
        if Instant::now() > deadline {
            bail!("etcd did not answer within 20 s:\n{}", world.tail(label));
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// A running flanneld.
#[derive(Debug, Clone)]
pub struct Daemon {
    /// Its node namespace.
    pub ns: String,
    /// Its log label in the world.
    pub label: String,
    /// Its pid.
    pub pid: u32,
    /// Its subnet.env.
    pub env: PathBuf,
}

/// Where a flanneld gets its leases from.
#[derive(Debug, Clone, Copy)]
pub enum Source<'a> {
    /// The fabric's etcd ([`ETCD_URL`]).
    Etcd,
    /// Kubernetes (`--kube-subnet-mgr`): the API server of `kubeconfig`, the network config from `net_conf`,
    /// and the Node `node_name` (`NODE_NAME`).
    Kube {
        kubeconfig: &'a Path,
        net_conf: &'a Path,
        node_name: &'a str,
    },
}

impl Daemon {
    /// Starts flanneld in `ns` against the fabric's etcd with `extra` flags (no wait).
    pub fn start(
        world: &World,
        bins: &Bins,
        ns: &str,
        label: &str,
        extra: &[&str],
    ) -> Result<Self> {
        Self::start_with(world, bins, ns, label, Source::Etcd, extra)
    }

    /// Starts flanneld in `ns` with its leases from `source` and `extra` flags (no wait).
    pub fn start_with(
        world: &World,
        bins: &Bins,
        ns: &str,
        label: &str,
        source: Source<'_>,
        extra: &[&str],
    ) -> Result<Self> {
        let env = world.dir.join(format!("{label}.env"));
        let mut cmd = command_in(ns, &bins.flanneld)?;
        match source {
            Source::Etcd => {
                cmd.arg(format!("--etcd-endpoints={ETCD_URL}"));
            }
            Source::Kube {
                kubeconfig,
                net_conf,
                node_name,
            } => {
                cmd.arg("--kube-subnet-mgr")
                    .arg(format!("--kubeconfig-file={}", kubeconfig.display()))
                    .arg(format!("--net-config-path={}", net_conf.display()))
                    .env("NODE_NAME", node_name);
            }
        }
        cmd.arg(format!("--subnet-file={}", env.display()))
            .args(["--iface=eth0", "--healthz-ip=127.0.0.1"])
            .arg(format!("--healthz-port={HEALTH_PORT}"))
            .args(extra);
        let pid = world.spawn(label, cmd)?;
        Ok(Self {
            ns: ns.to_string(),
            label: label.to_string(),
            pid,
            env,
        })
    }

    /// Waits until subnet.env exists and `/readyz` answers 200.
    pub fn wait_ready(&self, world: &World, timeout: Duration) -> Result<()> {
        let deadline = Instant::now() + timeout;
        loop {
            check_interrupt()?;
            if !world.running(self.pid) {
                bail!(
                    "flanneld in {} exited:\n{}",
                    self.ns,
                    world.tail(&self.label)
                );
            }
            if self.env.exists()
                && http_get_in(&self.ns, "/readyz", Duration::from_secs(1))
                    .is_ok_and(|(c, _)| c == 200)
            {
                return Ok(());
            }
            if Instant::now() > deadline {
                bail!(
                    "flanneld in {} not ready after {timeout:?}:\n{}",
                    self.ns,
                    world.tail(&self.label)
                );
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// `/status` as JSON.
    pub fn status(&self) -> Result<serde_json::Value> {
        let (code, body) = http_get_in(&self.ns, "/status", Duration::from_secs(5))?;
        if code != 200 {
            bail!("GET /status in {}: HTTP {code}", self.ns);
        }
        Ok(serde_json::from_str(&body)?)
    }
}

/// Attaches a pod namespace with our plugins as a runtime would (loopback, then flannel ADD); `ip_masq` sets the
/// delegate's `ipMasq` explicitly (None: flannel's default, the opposite of FLANNEL_IPMASQ). Returns the pod's
/// IPv4 address.
pub fn attach_pod(
    world: &World,
    bins: &Bins,
    node: &Daemon,
    pod_ns: &str,
    ip_masq: Option<bool>,
) -> Result<Ipv4Addr> {
    let lo = r#"{"cniVersion":"1.0.0","name":"lo","type":"loopback"}"#;
    cni_add(bins, "loopback", &node.ns, pod_ns, "lo", lo)?;
    let mut delegate = serde_json::json!({"hairpinMode": true, "isDefaultGateway": true});
    if let Some(m) = ip_masq {
        delegate["ipMasq"] = serde_json::Value::Bool(m);
    }
    let conf = serde_json::json!({
        "cniVersion": "1.0.0",
        "name": "cbr0",
        "type": "flannel",
        "subnetFile": node.env,
        "dataDir": world.dir.join(format!("{}-cni", node.label)),
        "delegate": delegate,
        "ipam": {"dataDir": world.dir.join(format!("{}-ipam", node.label))},
    });
    let out = cni_add(bins, "flannel", &node.ns, pod_ns, "eth0", &conf.to_string())?;
    let v: serde_json::Value =
        serde_json::from_str(&out).context("parse the flannel plugin's result")?;
    v.pointer("/ips/0/address")
        .and_then(|a| a.as_str())
        .and_then(|a| a.split('/').next())
        .and_then(|a| a.parse().ok())
        .with_context(|| format!("the flannel plugin's result has no IPv4 address: {v}"))
}

fn cni_add(
    bins: &Bins,
    plugin: &str,
    node_ns: &str,
    pod_ns: &str,
    ifname: &str,
    conf: &str,
) -> Result<String> {
    use std::io::Write;
    let mut cmd = command_in(node_ns, bins.dir.join(plugin))?;
    cmd.env("CNI_COMMAND", "ADD")
        .env("CNI_CONTAINERID", format!("bench-{pod_ns}"))
        .env("CNI_NETNS", ns_path(pod_ns))
        .env("CNI_IFNAME", ifname)
        .env("CNI_PATH", &bins.dir)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = cmd.spawn().with_context(|| format!("run {plugin}"))?;
    if let Some(mut i) = child.stdin.take() {
        let _ = i.write_all(conf.as_bytes());
    }
    let out = child.wait_with_output()?;
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    if !out.status.success() {
        bail!(
            "{plugin} ADD in {pod_ns} failed: {} {}",
            stdout.trim(),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(stdout)
}

/// Runs `f` on a thread inside namespace `ns` with its own single-threaded tokio runtime: every socket the
/// future opens (the etcd client's, for one) lives in that namespace.
pub fn block_on_in<T, F, Fut>(ns: &str, f: F) -> Result<T>
where
    T: Send,
    F: FnOnce() -> Fut + Send,
    Fut: std::future::Future<Output = Result<T>>,
{
    let n = kernel::Netns::open(ns_path(ns))?;
    std::thread::scope(|s| {
        s.spawn(move || -> Result<T> {
            n.enter()?;
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            rt.block_on(f())
        })
        .join()
        .map_err(|_| anyhow!("benchmark thread panicked"))?
    })
}

/// Nearest-rank percentile of sorted samples (0 for none).
pub fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let n = sorted.len();
    let idx = ((p * n as f64).ceil() as usize).clamp(1, n) - 1;
    sorted[idx]
}

/// Sorts a copy of the samples.
pub fn sorted(v: &[f64]) -> Vec<f64> {
    let mut s = v.to_vec();
    s.sort_by(|a, b| a.total_cmp(b));
    s
}

/// Median (nearest-rank p50).
pub fn median(v: &[f64]) -> f64 {
    percentile(&sorted(v), 0.5)
}

/// Mean (0 for none).
pub fn mean(v: &[f64]) -> f64 {
    if v.is_empty() {
        0.0
    } else {
        v.iter().sum::<f64>() / v.len() as f64
    }
}

/// Rounds to 3 decimals for JSON.
pub fn r3(x: f64) -> f64 {
    (x * 1000.0).round() / 1000.0
}

/// A duration in milliseconds.
pub fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

/// Bytes in MiB.
pub fn mib(b: u64) -> f64 {
    b as f64 / (1024.0 * 1024.0)
}

/// Summary of a list of millisecond samples (nearest-rank percentiles).
pub fn summary(v: &[f64]) -> serde_json::Value {
    let s = sorted(v);
    serde_json::json!({
        "n": s.len(),
        "p50_ms": r3(percentile(&s, 0.5)),
        "p99_ms": r3(percentile(&s, 0.99)),
        "max_ms": r3(s.last().copied().unwrap_or(0.0)),
        "min_ms": r3(s.first().copied().unwrap_or(0.0)),
    })
}

/// Parses a comma-separated list of counts (`--peers 1000,5000`), naming `flag` in errors.
pub fn parse_counts(flag: &str, s: &str) -> Result<Vec<usize>> {
    s.split(',')
        .map(|x| {
            x.trim()
                .parse::<usize>()
                .with_context(|| format!("{flag}: {x:?} is not a number"))
        })
        .collect()
}

/// Machine context printed with every result: CPUs, kernel, load average.
pub fn machine() -> serde_json::Value {
    let cpus = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(0);
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .map(|s| s.trim().to_string())
        .unwrap_or_default();
    serde_json::json!({"cpus": cpus, "kernel": kernel, "loadavg": loadavg()})
}

/// The 1-minute load average.
pub fn loadavg() -> f64 {
    std::fs::read_to_string("/proc/loadavg")
        .ok()
        .and_then(|s| s.split_whitespace().next().and_then(|x| x.parse().ok()))
        .unwrap_or(0.0)
}

/// One line describing the machine.
pub fn machine_line(m: &serde_json::Value) -> String {
    format!(
        "machine: {} CPUs, kernel {}, load average {:.2} at start",
        m["cpus"],
        m["kernel"].as_str().unwrap_or("?"),
        m["loadavg"].as_f64().unwrap_or(0.0)
    )
}

/// "PASS"/"MISS" for a target check.
pub fn verdict(ok: bool) -> &'static str {
    if ok {
        "PASS"
    } else {
        "MISS"
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nearest_rank() {
        let s: Vec<f64> = (1..=100).map(f64::from).collect();
        assert_eq!(percentile(&s, 0.5), 50.0);
        assert_eq!(percentile(&s, 0.99), 99.0);
        assert_eq!(percentile(&[], 0.5), 0.0);
        assert_eq!(median(&[3.0, 1.0, 2.0]), 2.0);
        let twenty: Vec<f64> = (1..=20).map(f64::from).collect();
        assert_eq!(percentile(&twenty, 0.99), 20.0);
    }
}
