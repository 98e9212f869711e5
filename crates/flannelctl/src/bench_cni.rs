//! `flannelctl bench cni`: ADD/DEL latency of our CNI plugins against the reference plugins, in one run.

use crate::bench_floor;
use crate::netns::NamedNetns;
use anyhow::{bail, Context, Result};
use serde_json::{json, Value};
use std::fs::File;
use std::io::Write;
use std::os::fd::AsFd;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// The spec version every subject is driven with (the reference plugins stop at 1.0.0).
pub(crate) const CNI_VERSION: &str = "1.0.0";
/// The network name.
pub(crate) const NETWORK: &str = "cbr0";
/// The cluster network the pod subnets are carved from.
pub(crate) const CLUSTER_NETWORK: &str = "10.244.0.0/16";
/// The MTU flannel would write.
pub(crate) const MTU: u32 = 1450;

/// What to run.
#[derive(Debug, Clone)]
pub struct Options {
    /// Pod namespaces per subject.
    pub pods: usize,
    /// Workers in the concurrent phase.
    pub concurrency: usize,
    /// Rounds over all subjects, order alternating.
    pub rounds: usize,
    /// Our plugin directory.
    pub ours: PathBuf,
    /// The reference plugin directory.
    pub reference: PathBuf,
    /// JSON output.
    pub json: bool,
    /// The plugin families to measure (each ours against the reference of the same name).
    pub families: Vec<Family>,
}

/// A plugin family: the plugin, the node it needs and the reference it is compared with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Family {
    /// bridge + host-local (flannel's delegate), and our flannel meta-plugin in front of it.
    Bridge,
    /// ptp + host-local.
    Ptp,
    /// macvlan (bridge mode) + host-local on a master link of the node.
    Macvlan,
    /// host-device + host-local: one device of the node per pod, moved into it and back.
    HostDevice,
}

impl Family {
    /// Every family, in the order they are reported.
    pub const ALL: [Family; 4] = [
        Family::Bridge,
        Family::Ptp,
        Family::Macvlan,
        Family::HostDevice,
    ];

    /// The CNI type of the main plugin.
    pub fn plugin(self) -> &'static str {
        match self {
            Family::Bridge => "bridge",
            Family::Ptp => "ptp",
            Family::Macvlan => "macvlan",
            Family::HostDevice => "host-device",
        }
    }

    /// The family whose main plugin is `name`.
    pub fn parse(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|f| f.plugin() == name)
    }
}

/// The master link every macvlan subject's node has (a veth whose peer stays in the node: macvlan needs no
/// carrier to be created).
pub(crate) const MACVLAN_MASTER: &str = "bnic0";
/// Prefix of the per-pod devices of a host-device subject's node (`bhd<i>`, pod `i`'s device).
pub(crate) const HOSTDEV_PREFIX: &str = "bhd";

/// The directory of the running executable (where `cargo build` puts the plugins too).
pub fn default_ours_dir() -> Result<PathBuf> {
    let exe = std::env::current_exe().context("locate the flannelctl executable")?;
    exe.parent()
        .map(Path::to_path_buf)
        .context("the flannelctl executable has no parent directory")
}

/// One thing being measured.
struct Subject {
    key: &'static str,
    label: &'static str,
    /// The key of the subject this one is compared with; `None` for a baseline.
    baseline: Option<&'static str>,
    family: Family,
    dir: PathBuf,
    plugin: &'static str,
    conf: Value,
    skip: Option<String>,
}

/// Latency summary of one operation over all pods, in milliseconds.
#[derive(Debug, Clone)]
pub(crate) struct OpStats {
    pub(crate) p50: f64,
    pub(crate) p99: f64,
    mean: f64,
    max: f64,
    count: usize,
    wall: Duration,
}

impl OpStats {
    pub(crate) fn new(mut samples: Vec<Duration>, wall: Duration) -> Self {
        samples.sort();
        let ms = |d: Duration| d.as_secs_f64() * 1000.0;
        let n = samples.len();
        let rank = |p: f64| -> f64 {
            if n == 0 {
                return 0.0;
            }
            let idx = ((p * n as f64).ceil() as usize).clamp(1, n) - 1;
            ms(samples[idx])
        };
        let mean = if n == 0 {
            0.0
        } else {
            samples.iter().map(|d| ms(*d)).sum::<f64>() / n as f64
        };
        Self {
            p50: rank(0.50),
            p99: rank(0.99),
            mean,
            max: samples.last().map(|d| ms(*d)).unwrap_or(0.0),
            count: n,
            wall,
        }
    }

    /// Operations per second over the phase's wall time.
    fn per_sec(&self) -> f64 {
        let s = self.wall.as_secs_f64();
        if s > 0.0 {
            self.count as f64 / s
        } else {
            0.0
        }
    }

    pub(crate) fn to_json(&self) -> Value {
        json!({
            "p50_ms": round3(self.p50),
            "p99_ms": round3(self.p99),
            "mean_ms": round3(self.mean),
            "max_ms": round3(self.max),
            "count": self.count,
            "wall_ms": round3(self.wall.as_secs_f64() * 1000.0),
            "per_s": round3(self.per_sec()),
        })
    }
}

pub(crate) fn round3(x: f64) -> f64 {
    (x * 1000.0).round() / 1000.0
}

/// ADD and DEL of one phase.
#[derive(Debug, Clone)]
struct Phase {
    workers: usize,
    add: OpStats,
    del: OpStats,
    /// (ADD p50, DEL p50) of each round, ms.
    rounds: Vec<(f64, f64)>,
}

/// The raw samples of one phase, pooled over rounds.
#[derive(Debug, Default)]
struct Samples {
    workers: usize,
    add: Vec<Duration>,
    add_wall: Duration,
    del: Vec<Duration>,
    del_wall: Duration,
    rounds: Vec<(f64, f64)>,
}

impl Samples {
    fn push(&mut self, add: (Vec<Duration>, Duration), del: (Vec<Duration>, Duration)) {
        let p50 = |v: &[Duration]| OpStats::new(v.to_vec(), Duration::ZERO).p50;
        self.rounds.push((p50(&add.0), p50(&del.0)));
        self.add.extend(add.0);
        self.add_wall += add.1;
        self.del.extend(del.0);
        self.del_wall += del.1;
    }

    fn finish(self) -> Phase {
        Phase {
            workers: self.workers,
            add: OpStats::new(self.add, self.add_wall),
            del: OpStats::new(self.del, self.del_wall),
            rounds: self.rounds,
        }
    }
}

/// Everything measured for one subject.
struct Report {
    key: &'static str,
    label: &'static str,
    baseline: Option<&'static str>,
    dir: PathBuf,
    phases: Vec<Phase>,
    error: Option<String>,
    skipped: Option<String>,
}

/// Runs the benchmark; returns the process exit code.
pub fn run(opts: &Options) -> Result<i32> {
    if !nix::unistd::geteuid().is_root() {
        bail!("bench cni needs root (it creates network namespaces, bridges and veths)");
    }
    if opts.pods == 0 || opts.concurrency == 0 || opts.rounds == 0 {
        bail!("--pods, --concurrency and --rounds must be at least 1");
    }
    crate::interrupt::install()?;

    let pid = std::process::id();
    let tmp = TempDir::create(std::env::temp_dir().join(format!("flannelctl-bench-{pid}")))?;
    let (subnet, gateway, prefix) = pod_subnet(opts.pods)?;

    let mut subjects = Vec::new();
    for f in Family::ALL
        .into_iter()
        .filter(|f| opts.families.contains(f))
    {
        subjects.extend(family_subjects(f, opts, &tmp.path, &subnet));
    }
    let flannel_dir = tmp.path.join("flannel");
    std::fs::create_dir_all(&flannel_dir)
        .with_context(|| format!("create {}", flannel_dir.display()))?;
    let env_file = flannel_dir.join("subnet.env");
    std::fs::write(
        &env_file,
        format!(
            "FLANNEL_NETWORK={CLUSTER_NETWORK}\nFLANNEL_SUBNET={gateway}/{prefix}\nFLANNEL_MTU={MTU}\nFLANNEL_IPMASQ=true\n"
        ),
    )
    .with_context(|| format!("write {}", env_file.display()))?;
    for s in &mut subjects {
        let bins: &[&str] = if s.plugin == "flannel" {
            &["flannel", "bridge", "host-local"]
        } else {
            &[s.plugin, "host-local"]
        };
        if let Some(missing) = bins.iter().find(|b| !s.dir.join(b).is_file()) {
            s.skip = Some(format!("{} not found in {}", missing, s.dir.display()));
        }
    }

    // All namespaces up front, outside every timed section: a node and N pods per subject.
    let mut worlds = Vec::new();
    for (k, s) in subjects.iter().enumerate() {
        if s.skip.is_some() {
            worlds.push(None);
            continue;
        }
        if crate::interrupt::interrupted() {
            bail!("interrupted");
        }
        let node = NamedNetns::create(&format!("fb{pid}n{k}"))?;
        prepare_node(s.family, &format!("fb{pid}n{k}"), opts.pods, &tmp.path)?;
        let mut pods = Vec::with_capacity(opts.pods);
        for i in 0..opts.pods {
            if crate::interrupt::interrupted() {
                bail!("interrupted");
            }
            pods.push(NamedNetns::create(&format!("fb{pid}s{k}p{i}"))?);
        }
        worlds.push(Some((node, pods)));
    }

    // The floor of each family: its own node (prepared as the subjects') and pods.
    let mut floor_worlds = Vec::new();
    for (k, f) in opts.families.iter().enumerate() {
        if crate::interrupt::interrupted() {
            bail!("interrupted");
        }
        let name = format!("fb{pid}f{k}");
        let node = NamedNetns::create(&name)?;
        prepare_node(*f, &name, bench_floor::KERNEL_SAMPLES, &tmp.path)?;
        let pods = (0..bench_floor::KERNEL_SAMPLES)
            .map(|i| NamedNetns::create(&format!("fb{pid}f{k}p{i}")))
            .collect::<Result<Vec<_>>>()?;
        floor_worlds.push((*f, node, pods));
    }
    let mut floors: Vec<bench_floor::FloorSamples> =
        opts.families.iter().map(|_| Default::default()).collect();
    let mut floor_error: Option<String> = None;

    let mut samples: Vec<Vec<Samples>> = subjects.iter().map(|_| Vec::new()).collect();
    let mut errors: Vec<Option<String>> = subjects.iter().map(|_| None).collect();
    let mut order: Vec<usize> = (0..subjects.len()).collect();
    'rounds: for round in 0..opts.rounds {
        if round > 0 {
            order.reverse();
        }
        for &k in &order {
            let (s, world) = (&subjects[k], &worlds[k]);
            let Some((node, pods)) = world else { continue };
            if errors[k].is_some() {
                continue;
            }
            if !opts.json {
                eprintln!(
                    "round {}/{}: {} ({}) ...",
                    round + 1,
                    opts.rounds,
                    s.label,
                    s.dir.display()
                );
            }
            match bench_subject(s, k, node, pods, opts, &mut samples[k]) {
                Ok(()) => {}
                Err(e) => errors[k] = Some(format!("{e:#}")),
            }
            if crate::interrupt::interrupted() {
                break 'rounds;
            }
        }
        if floor_error.is_none() {
            if let Err(e) = measure_floors(opts, &floor_worlds, &mut floors) {
                floor_error = Some(format!("{e:#}"));
            }
        }
    }
    let floors: Vec<bench_floor::Floor> = floors
        .into_iter()
        .zip(&opts.families)
        .map(|(s, f)| s.finish(*f))
        .collect();
    let reports: Vec<Report> = subjects
        .iter()
        .zip(samples)
        .zip(errors)
        .map(|((s, phases), error)| Report {
            key: s.key,
            label: s.label,
            baseline: s.baseline,
            dir: s.dir.clone(),
            phases: phases.into_iter().map(Samples::finish).collect(),
            error,
            skipped: s.skip.clone(),
        })
        .collect();

    if opts.json {
        println!(
            "{}",
            serde_json::to_string_pretty(&to_json(opts, &subnet, &reports, &floors))
                .unwrap_or_default()
        );
    } else {
        print_table(opts, &subnet, &reports);
        print_floors(&reports, &floors, floor_error.as_deref());
    }
    drop(worlds);
    drop(floor_worlds);
    drop(tmp);
    if crate::interrupt::interrupted() {
        eprintln!("flannelctl: interrupted; namespaces and temporary files removed");
        return Ok(130);
    }
    Ok(if reports.iter().any(|r| r.error.is_some()) {
        2
    } else {
        0
    })
}

/// The subjects of one family: the reference plugin (the baseline) and ours; for bridge also our flannel in
/// front of our bridge.
fn family_subjects(f: Family, opts: &Options, tmp: &Path, subnet: &str) -> Vec<Subject> {
    let conf = |ipam_dir: &str| -> Value {
        let ipam = tmp.join(ipam_dir);
        match f {
            Family::Bridge => bridge_conf(subnet, &ipam),
            Family::Ptp => main_conf("ptp", json!({"mtu": MTU}), subnet, &ipam),
            Family::Macvlan => main_conf(
                "macvlan",
                json!({"master": MACVLAN_MASTER, "mode": "bridge"}),
                subnet,
                &ipam,
            ),
            // The device is set per pod (Exec::device_prefix).
            Family::HostDevice => main_conf("host-device", json!({}), subnet, &ipam),
        }
    };
    let (ref_key, ref_label, ours_key, ours_label) = match f {
        Family::Bridge => (
            "reference",
            "reference bridge+host-local",
            "ours-bridge",
            "ours bridge+host-local",
        ),
        Family::Ptp => (
            "reference-ptp",
            "reference ptp+host-local",
            "ours-ptp",
            "ours ptp+host-local",
        ),
        Family::Macvlan => (
            "reference-macvlan",
            "reference macvlan+host-local",
            "ours-macvlan",
            "ours macvlan+host-local",
        ),
        Family::HostDevice => (
            "reference-host-device",
            "reference host-device+h-l",
            "ours-host-device",
            "ours host-device+h-l",
        ),
    };
    let mut v = vec![
        Subject {
            key: ref_key,
            label: ref_label,
            baseline: None,
            family: f,
            dir: opts.reference.clone(),
            plugin: f.plugin(),
            conf: conf(&format!("{ref_key}-ipam")),
            skip: None,
        },
        Subject {
            key: ours_key,
            label: ours_label,
            baseline: Some(ref_key),
            family: f,
            dir: opts.ours.clone(),
            plugin: f.plugin(),
            conf: conf(&format!("{ours_key}-ipam")),
            skip: None,
        },
    ];
    if f == Family::Bridge {
        v.push(Subject {
            key: "ours-flannel",
            label: "ours flannel (in-process)",
            baseline: Some(ref_key),
            family: f,
            dir: opts.ours.clone(),
            plugin: "flannel",
            conf: flannel_conf(&tmp.join("flannel")),
            skip: None,
        });
    }
    v
}

/// A main plugin's configuration: `extra` keys, host-local on `subnet` with the route to the cluster network.
fn main_conf(ty: &str, extra: Value, subnet: &str, data_dir: &Path) -> Value {
    let mut c = json!({
        "cniVersion": CNI_VERSION,
        "name": NETWORK,
        "type": ty,
        "ipam": {
            "type": "host-local",
            "dataDir": data_dir,
            "ranges": [[{"subnet": subnet}]],
            "routes": [{"dst": CLUSTER_NETWORK}],
        }
    });
    if let (Some(m), Some(e)) = (c.as_object_mut(), extra.as_object()) {
        for (k, v) in e {
            m.insert(k.clone(), v.clone());
        }
    }
    c
}

/// What a family's node needs besides its loopback, made outside every timed section with one `ip -batch`:
/// macvlan's master link, host-device's one device per pod (veth pairs whose peers stay in the node).
pub(crate) fn prepare_node(f: Family, node: &str, pods: usize, tmp: &Path) -> Result<()> {
    let mut batch = String::from("link set lo up\n");
    match f {
        Family::Bridge | Family::Ptp => {}
        Family::Macvlan => {
            batch.push_str(&format!(
                "link add {MACVLAN_MASTER} type veth peer name {MACVLAN_MASTER}p\nlink set {MACVLAN_MASTER} up\nlink set {MACVLAN_MASTER}p up\n"
            ));
        }
        Family::HostDevice => {
            for i in 0..pods {
                batch.push_str(&format!(
                    "link add {HOSTDEV_PREFIX}{i} type veth peer name {HOSTDEV_PREFIX}{i}p\nlink set {HOSTDEV_PREFIX}{i}p up\n"
                ));
            }
        }
    }
    let file = tmp.join(format!("{node}.batch"));
    std::fs::write(&file, batch).with_context(|| format!("write {}", file.display()))?;
    let mut cmd = crate::bench_net::command_in(node, "ip")?;
    cmd.arg("-batch").arg(&file);
    crate::bench_net::must(&mut cmd, Duration::from_secs(60))?;
    Ok(())
}

/// The pod subnet for `pods` attachments: a /24 when it fits, else the smallest prefix that does.
pub(crate) fn pod_subnet(pods: usize) -> Result<(String, String, u8)> {
    for prefix in (16u8..=24).rev() {
        let capacity = (1usize << (32 - prefix)) - 3; // network, gateway, broadcast
        if capacity >= pods {
            let base = if prefix == 24 { "10.244.1" } else { "10.244.0" };
            return Ok((format!("{base}.0/{prefix}"), format!("{base}.1"), prefix));
        }
    }
    bail!("{pods} pods do not fit in {CLUSTER_NETWORK}")
}

/// The bridge delegate exactly as flannel renders it from our subnet.env plus the manifest's delegate block.
pub(crate) fn bridge_conf(subnet: &str, data_dir: &Path) -> Value {
    json!({
        "cniVersion": CNI_VERSION,
        "name": NETWORK,
        "type": "bridge",
        "hairpinMode": true,
        "isDefaultGateway": true,
        "isGateway": true,
        "ipMasq": false,
        "mtu": MTU,
        "ipam": {
            "type": "host-local",
            "dataDir": data_dir,
            "ranges": [[{"subnet": subnet}]],
            "routes": [{"dst": CLUSTER_NETWORK}],
        }
    })
}

/// The flannel plugin object of the upstream manifest, every path under `dir`.
pub(crate) fn flannel_conf(dir: &Path) -> Value {
    json!({
        "cniVersion": CNI_VERSION,
        "name": NETWORK,
        "type": "flannel",
        "subnetFile": dir.join("subnet.env"),
        "dataDir": dir.join("cache"),
        "ipam": {"dataDir": dir.join("ipam")},
        "delegate": {"hairpinMode": true, "isDefaultGateway": true},
    })
}

/// How to exec one subject's plugin inside its node namespace.
pub(crate) struct Exec {
    pub(crate) bin: PathBuf,
    pub(crate) cni_path: String,
    pub(crate) node: Arc<File>,
    pub(crate) conf: Value,
    pub(crate) id_prefix: String,
    /// Set for host-device: pod `i`'s configuration names the device `<prefix><i>`.
    pub(crate) device_prefix: Option<&'static str>,
}

impl Exec {
    /// Runs one command for pod `i`; returns its wall time and stdout.
    pub(crate) fn call(
        &self,
        command: &str,
        i: usize,
        netns: &Path,
        prev: Option<&Value>,
    ) -> Result<(Duration, Vec<u8>)> {
        let mut conf = self.conf.clone();
        if let Some(m) = conf.as_object_mut() {
            if let Some(p) = prev {
                m.insert("prevResult".into(), p.clone());
            }
            if let Some(d) = self.device_prefix {
                m.insert("device".into(), format!("{d}{i}").into());
            }
        }
        self.call_with(command, &format!("{}{i}", self.id_prefix), i, netns, &conf)
    }

    /// Runs one command with configuration `conf` for container `cid` (pod `i` in messages and CNI_ARGS).
    pub(crate) fn call_with(
        &self,
        command: &str,
        cid: &str,
        i: usize,
        netns: &Path,
        conf: &Value,
    ) -> Result<(Duration, Vec<u8>)> {
        let stdin = conf.to_string();
        let mut cmd = Command::new(&self.bin);
        cmd.env_clear()
            .env(
                "PATH",
                std::env::var_os("PATH").unwrap_or_else(|| "/usr/sbin:/usr/bin:/sbin:/bin".into()),
            )
            .env("CNI_COMMAND", command)
            .env("CNI_CONTAINERID", cid)
            .env("CNI_NETNS", netns)
            .env("CNI_IFNAME", "eth0")
            .env(
                "CNI_ARGS",
                format!("IgnoreUnknown=1;K8S_POD_NAMESPACE=bench;K8S_POD_NAME=pod-{i}"),
            )
            .env("CNI_PATH", &self.cni_path)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            // Its own process group: a Ctrl-C reaches only us, and we finish the operation in flight cleanly.
            .process_group(0);
        let node = Arc::clone(&self.node);
        // SAFETY: only the setns syscall runs between fork and exec.
        unsafe {
            cmd.pre_exec(move || {
                nix::sched::setns(node.as_fd(), nix::sched::CloneFlags::CLONE_NEWNET)
                    .map_err(std::io::Error::from)
            });
        }
        let start = Instant::now();
        let mut child = cmd
            .spawn()
            .with_context(|| format!("exec {}", self.bin.display()))?;
        if let Some(mut si) = child.stdin.take() {
            // A plugin that exits early closes the pipe; its error output tells why.
            let _ = si.write_all(stdin.as_bytes());
        }
        let out = child
            .wait_with_output()
            .with_context(|| format!("wait for {}", self.bin.display()))?;
        let elapsed = start.elapsed();
        if !out.status.success() {
            let stdout = String::from_utf8_lossy(&out.stdout);
            let stderr = String::from_utf8_lossy(&out.stderr);
            bail!(
                "{command} of pod {i} failed ({}): {} {}",
                out.status,
                stdout.trim(),
                stderr.trim()
            );
        }
        Ok((elapsed, out.stdout))
    }
}

fn bench_subject(
    s: &Subject,
    k: usize,
    node: &NamedNetns,
    pods: &[NamedNetns],
    opts: &Options,
    out: &mut Vec<Samples>,
) -> Result<()> {
    let node_file =
        File::open(node.path()).with_context(|| format!("open {}", node.path().display()))?;
    let exec = Exec {
        bin: s.dir.join(s.plugin),
        cni_path: s.dir.display().to_string(),
        node: Arc::new(node_file),
        conf: s.conf.clone(),
        id_prefix: format!("fbench{}s{k}c", std::process::id()),
        device_prefix: (s.family == Family::HostDevice).then_some(HOSTDEV_PREFIX),
    };
    let mut modes = vec![1, opts.concurrency.min(pods.len()).max(1)];
    modes.dedup();
    for (m, workers) in modes.into_iter().enumerate() {
        let res = run_phase(&exec, pods, workers);
        match res {
            Ok((add, del)) => {
                if out.len() <= m {
                    out.push(Samples {
                        workers,
                        ..Samples::default()
                    });
                }
                out[m].push(add, del);
            }
            Err(e) => {
                // A runtime always follows a failed ADD with DEL: leave the pods clean (untimed, best effort).
                for (i, pod) in pods.iter().enumerate() {
                    let _ = exec.call("DEL", i, pod.path(), None);
                }
                return Err(e);
            }
        }
        if crate::interrupt::interrupted() {
            break;
        }
    }
    Ok(())
}

/// Per-call times and wall time of one operation over all pods.
type Timed = (Vec<Duration>, Duration);

fn run_phase(exec: &Exec, pods: &[NamedNetns], workers: usize) -> Result<(Timed, Timed)> {
    let results: Vec<Mutex<Option<Value>>> = pods.iter().map(|_| Mutex::new(None)).collect();
    let add = parallel(pods.len(), workers, |i| {
        let (d, stdout) = exec.call("ADD", i, pods[i].path(), None)?;
        let v: Value = serde_json::from_slice(&stdout).with_context(|| {
            format!(
                "ADD of pod {i} printed something that is not JSON: {}",
                String::from_utf8_lossy(&stdout)
            )
        })?;
        if v.get("ips")
            .and_then(Value::as_array)
            .is_none_or(|a| a.is_empty())
        {
            bail!("ADD of pod {i} returned no IP: {v}");
        }
        if let Ok(mut slot) = results[i].lock() {
            *slot = Some(v);
        }
        Ok(d)
    })?;
    let del = parallel(pods.len(), workers, |i| {
        let prev = results[i].lock().ok().and_then(|g| g.clone());
        let (d, _) = exec.call("DEL", i, pods[i].path(), prev.as_ref())?;
        Ok(d)
    })?;
    Ok((add, del))
}

/// Runs `f(0..n)` on `workers` threads; the per-call times and the phase's wall time. Stops at the first error.
fn parallel<F>(n: usize, workers: usize, f: F) -> Result<Timed>
where
    F: Fn(usize) -> Result<Duration> + Sync,
{
    let next = AtomicUsize::new(0);
    let failed = AtomicBool::new(false);
    let samples = Mutex::new(Vec::with_capacity(n));
    let first_err: Mutex<Option<anyhow::Error>> = Mutex::new(None);
    let start = Instant::now();
    std::thread::scope(|scope| {
        for _ in 0..workers.max(1) {
            scope.spawn(|| loop {
                if failed.load(Ordering::SeqCst) {
                    return;
                }
                if crate::interrupt::interrupted() {
                    failed.store(true, Ordering::SeqCst);
                    if let Ok(mut e) = first_err.lock() {
                        e.get_or_insert_with(|| anyhow::anyhow!("interrupted"));
                    }
                    return;
                }
                let i = next.fetch_add(1, Ordering::SeqCst);
                if i >= n {
                    return;
                }
                match f(i) {
                    Ok(d) => {
                        if let Ok(mut s) = samples.lock() {
                            s.push(d);
                        }
                    }
                    Err(err) => {
                        failed.store(true, Ordering::SeqCst);
                        if let Ok(mut e) = first_err.lock() {
                            e.get_or_insert(err);
                        }
                        return;
                    }
                }
            });
        }
    });
    let wall = start.elapsed();
    if let Some(e) = first_err.into_inner().ok().flatten() {
        return Err(e);
    }
    let samples = samples.into_inner().unwrap_or_default();
    Ok((samples, wall))
}

fn mode(workers: usize) -> String {
    if workers == 1 {
        "sequential".to_string()
    } else {
        format!("{workers} workers")
    }
}

/// The phase with the same number of workers of the reference `r` is compared with.
fn baseline<'a>(reports: &'a [Report], r: &Report, workers: usize) -> Option<&'a Phase> {
    let key = r.baseline?;
    reports
        .iter()
        .find(|b| b.key == key)
        .and_then(|b| b.phases.iter().find(|p| p.workers == workers))
}

pub(crate) fn ratio(a: f64, b: f64) -> Option<f64> {
    (b > 0.0 && a > 0.0).then(|| a / b)
}

fn print_table(opts: &Options, subnet: &str, reports: &[Report]) {
    println!(
        "CNI ADD/DEL benchmark: {} pods, concurrency {}, {} rounds, cniVersion {CNI_VERSION}, network {NETWORK} ({subnet})",
        opts.pods, opts.concurrency, opts.rounds
    );
    println!();
    println!(
        "{:<30} {:<12} {:>10} {:>10} {:>10} {:>10} {:>11} {:>11}",
        "subject", "mode", "ADD p50", "ADD p99", "DEL p50", "DEL p99", "ADD pods/s", "DEL pods/s"
    );
    println!("{}", "-".repeat(30 + 12 + 10 * 4 + 11 * 2 + 7));
    for r in reports {
        if let Some(why) = &r.skipped {
            println!("{:<30} skipped: {why}", r.label);
            continue;
        }
        for p in &r.phases {
            println!(
                "{:<30} {:<12} {:>7.2} ms {:>7.2} ms {:>7.2} ms {:>7.2} ms {:>11.1} {:>11.1}",
                r.label,
                mode(p.workers),
                p.add.p50,
                p.add.p99,
                p.del.p50,
                p.del.p99,
                p.add.per_sec(),
                p.del.per_sec()
            );
        }
        if let Some(e) = &r.error {
            println!("{:<30} FAILED: {e}", r.label);
        }
    }
    let mut lines = vec![];
    for r in reports.iter().filter(|r| r.baseline.is_some()) {
        for p in &r.phases {
            let Some(b) = baseline(reports, r, p.workers) else {
                continue;
            };
            let f = |x: Option<f64>| x.map(|v| format!("{v:.1}x")).unwrap_or_else(|| "-".into());
            lines.push(format!(
                "{:<30} {:<12} {:>10} {:>10} {:>10} {:>10} {:>11} {:>11}",
                r.label,
                mode(p.workers),
                f(ratio(b.add.p50, p.add.p50)),
                f(ratio(b.add.p99, p.add.p99)),
                f(ratio(b.del.p50, p.del.p50)),
                f(ratio(b.del.p99, p.del.p99)),
                f(ratio(p.add.per_sec(), b.add.per_sec())),
                f(ratio(p.del.per_sec(), b.del.per_sec())),
            ));
        }
    }
    if !lines.is_empty() {
        println!();
        println!(
            "speed-up against the reference (latency: reference/ours; pods/s: ours/reference)"
        );
        for l in lines {
            println!("{l}");
        }
        println!();
        println!(
            "per round, sequential p50 speed-up ADD/DEL (the spread shows the machine's noise):"
        );
        for r in reports.iter().filter(|r| r.baseline.is_some()) {
            let Some(p) = r.phases.iter().find(|p| p.workers == 1) else {
                continue;
            };
            let Some(b) = baseline(reports, r, 1) else {
                continue;
            };
            let per: Vec<String> = p
                .rounds
                .iter()
                .zip(&b.rounds)
                .map(|(o, rf)| {
                    let f = |x: Option<f64>| {
                        x.map(|v| format!("{v:.1}x")).unwrap_or_else(|| "-".into())
                    };
                    format!("{}/{}", f(ratio(rf.0, o.0)), f(ratio(rf.1, o.1)))
                })
                .collect();
            println!("{:<30} {}", r.label, per.join("  "));
        }
    }
    for r in reports {
        if r.skipped.is_none() {
            println!("{}: {}", r.label, r.dir.display());
        }
    }
}

/// One round of every family's floor: our and the reference's process start, then the kernel work.
fn measure_floors(
    opts: &Options,
    worlds: &[(Family, NamedNetns, Vec<NamedNetns>)],
    out: &mut [bench_floor::FloorSamples],
) -> Result<()> {
    for ((f, node, pods), o) in worlds.iter().zip(out.iter_mut()) {
        let Some(pod) = pods.first() else { continue };
        let n = bench_floor::KERNEL_SAMPLES;
        for (dir, into) in [
            (&opts.ours, &mut o.start_ours),
            (&opts.reference, &mut o.start_reference),
        ] {
            let bin = dir.join(f.plugin());
            if bin.is_file() {
                into.extend(bench_floor::process_start(&bin, node, pod, n)?);
            }
        }
        let (a, d) = bench_floor::kernel_work(*f, node, pods)?;
        o.kernel_add.extend(a);
        o.kernel_del.extend(d);
    }
    Ok(())
}

/// The floor table: p50s, and what our plugins' own code costs above it.
fn print_floors(reports: &[Report], floors: &[bench_floor::Floor], error: Option<&str>) {
    if floors.is_empty() {
        return;
    }
    let ms = |s: &Option<OpStats>| {
        s.as_ref()
            .map(|s| format!("{:.2} ms", s.p50))
            .unwrap_or_else(|| "-".into())
    };
    println!();
    println!("floor, p50 (process start: the binary exec'd for VERSION; kernel: the attachment's own netlink requests, in-process):");
    println!(
        "{:<12} {:>12} {:>12} {:>12} {:>12} {:>16} {:>16}",
        "family",
        "start ours",
        "start ref",
        "kernel ADD",
        "kernel DEL",
        "ours ADD - floor",
        "ours DEL - floor"
    );
    for fl in floors {
        let ours = reports
            .iter()
            .find(|r| r.baseline.is_some() && r.key == format!("ours-{}", fl.family.plugin()));
        let seq = ours.and_then(|r| r.phases.iter().find(|p| p.workers == 1));
        let own = |total: Option<f64>, k: &Option<OpStats>| match (total, &fl.start_ours, k) {
            (Some(t), Some(s), Some(k)) => format!("{:.2} ms", t - s.p50 - k.p50),
            _ => "-".into(),
        };
        println!(
            "{:<12} {:>12} {:>12} {:>12} {:>12} {:>16} {:>16}",
            fl.family.plugin(),
            ms(&fl.start_ours),
            ms(&fl.start_reference),
            ms(&fl.kernel_add),
            ms(&fl.kernel_del),
            own(seq.map(|p| p.add.p50), &fl.kernel_add),
            own(seq.map(|p| p.del.p50), &fl.kernel_del),
        );
    }
    println!(
        "(a DEL below its floor: our DEL takes the pod's link down, renames it and leaves its deletion, the kernel's RCU \
         wait, to a detached process)"
    );
    if let Some(e) = error {
        println!("floor FAILED: {e}");
    }
}

fn to_json(
    opts: &Options,
    subnet: &str,
    reports: &[Report],
    floors: &[bench_floor::Floor],
) -> Value {
    let subjects: Vec<Value> = reports
        .iter()
        .map(|r| {
            let phases: Vec<Value> = r
                .phases
                .iter()
                .map(|p| {
                    let mut v = json!({
                        "workers": p.workers,
                        "mode": mode(p.workers),
                        "add": p.add.to_json(),
                        "del": p.del.to_json(),
                        "rounds_p50_ms": p.rounds.iter().map(|(a, d)| json!({"add": round3(*a), "del": round3(*d)})).collect::<Vec<_>>(),
                    });
                    if let Some(b) = baseline(reports, r, p.workers) {
                        {
                            v["speedup_vs_reference"] = json!({
                                "add_p50": ratio(b.add.p50, p.add.p50).map(round3),
                                "add_p99": ratio(b.add.p99, p.add.p99).map(round3),
                                "del_p50": ratio(b.del.p50, p.del.p50).map(round3),
                                "del_p99": ratio(b.del.p99, p.del.p99).map(round3),
                                "add_per_s": ratio(p.add.per_sec(), b.add.per_sec()).map(round3),
                                "del_per_s": ratio(p.del.per_sec(), b.del.per_sec()).map(round3),
                            });
                        }
                    }
                    v
                })
                .collect();
            json!({
                "key": r.key,
                "label": r.label,
                "baseline": r.baseline,
                "dir": r.dir,
                "skipped": r.skipped,
                "error": r.error,
                "phases": phases,
            })
        })
        .collect();
    json!({
        "pods": opts.pods,
        "concurrency": opts.concurrency,
        "rounds": opts.rounds,
        "cniVersion": CNI_VERSION,
        "network": NETWORK,
        "subnet": subnet,
        "subjects": subjects,
        "floor": floors.iter().map(|f| {
            let j = |s: &Option<OpStats>| s.as_ref().map(OpStats::to_json);
            json!({
                "family": f.family.plugin(),
                "process_start_ours": j(&f.start_ours),
                "process_start_reference": j(&f.start_reference),
                "kernel_add": j(&f.kernel_add),
                "kernel_del": j(&f.kernel_del),
            })
        }).collect::<Vec<_>>(),
    })
}

/// A temporary directory removed on drop.
pub(crate) struct TempDir {
    pub(crate) path: PathBuf,
}

impl TempDir {
    pub(crate) fn create(path: PathBuf) -> Result<Self> {
        let _ = std::fs::remove_dir_all(&path);
        std::fs::create_dir_all(&path).with_context(|| format!("create {}", path.display()))?;
        Ok(Self { path })
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.path);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_nearest_rank() {
        let s: Vec<Duration> = (1..=100).map(Duration::from_millis).collect();
        let st = OpStats::new(s, Duration::from_secs(1));
        assert_eq!(st.p50, 50.0);
        assert_eq!(st.p99, 99.0);
        assert_eq!(st.max, 100.0);
        assert_eq!(st.per_sec(), 100.0);
        let one = OpStats::new(vec![Duration::from_millis(7)], Duration::from_millis(7));
        assert_eq!((one.p50, one.p99), (7.0, 7.0));
        let none = OpStats::new(vec![], Duration::ZERO);
        assert_eq!((none.p50, none.per_sec()), (0.0, 0.0));
    }

    #[test]
    fn rounds_pool_samples_and_keep_each_rounds_p50() {
        let ms = |v: &[u64]| {
            v.iter()
                .map(|m| Duration::from_millis(*m))
                .collect::<Vec<_>>()
        };
        let mut s = Samples {
            workers: 1,
            ..Samples::default()
        };
        s.push(
            (ms(&[1, 2, 3]), Duration::from_millis(6)),
            (ms(&[10, 20, 30]), Duration::from_millis(60)),
        );
        s.push(
            (ms(&[7, 8, 9]), Duration::from_millis(24)),
            (ms(&[40, 50, 60]), Duration::from_millis(150)),
        );
        let p = s.finish();
        assert_eq!(p.rounds, vec![(2.0, 20.0), (8.0, 50.0)]);
        assert_eq!((p.add.count, p.add.p50, p.add.max), (6, 3.0, 9.0));
        assert_eq!(p.add.wall, Duration::from_millis(30));
        assert_eq!((p.del.p50, p.del.per_sec()), (30.0, 6.0 / 0.21));
    }

    #[test]
    fn subnet_grows_with_pods() {
        assert_eq!(
            pod_subnet(100).ok(),
            Some(("10.244.1.0/24".into(), "10.244.1.1".into(), 24))
        );
        assert_eq!(pod_subnet(253).ok().map(|s| s.2), Some(24));
        assert_eq!(pod_subnet(254).ok().map(|s| s.2), Some(23));
        assert_eq!(pod_subnet(10_000).ok().map(|s| s.2), Some(18));
        assert!(pod_subnet(70_000).is_err());
    }
}
