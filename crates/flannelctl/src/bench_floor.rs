//! The floor under `bench cni`'s numbers: what no plugin of a family can go below, measured in the same run.
//!
//! - **Process start:** the plugin binary exec'd in the node namespace exactly as the subjects are, asked only for
//!   `VERSION` (which touches nothing): process creation, the dynamic loader, the runtime's start, exit. Ours and
//!   the reference's, since the reference's Go runtime start is part of why it is slower.
//! - **Kernel work:** the kernel requests one attachment of the family cannot do without, sent in-process over one
//!   netlink socket (no fork, no parsing, no IPAM): bridge and ptp a veth pair with its peer created in the pod
//!   namespace, and its deletion (which waits for the kernel's RCU grace period); macvlan a macvlan on the master
//!   created in the pod namespace, and its deletion; host-device the device moved into the pod and back.
//!
//! A plugin's p50 minus its process start and the kernel work is what its own code costs.

use crate::bench_cni::{Exec, Family, OpStats};
use crate::netns::NamedNetns;
use anyhow::{Context, Result};
use kernel::Netlink;
use std::fs::File;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Attachments the kernel part times per round (enough for a p50; the namespaces are made untimed).
pub(crate) const KERNEL_SAMPLES: usize = 20;

/// The floor of one family, pooled over rounds.
#[derive(Debug, Default)]
pub(crate) struct FloorSamples {
    pub(crate) start_ours: Vec<Duration>,
    pub(crate) start_reference: Vec<Duration>,
    pub(crate) kernel_add: Vec<Duration>,
    pub(crate) kernel_del: Vec<Duration>,
}

/// The floor's summaries (`None`: not measured, e.g. the binary is missing).
#[derive(Debug)]
pub(crate) struct Floor {
    pub(crate) family: Family,
    pub(crate) start_ours: Option<OpStats>,
    pub(crate) start_reference: Option<OpStats>,
    pub(crate) kernel_add: Option<OpStats>,
    pub(crate) kernel_del: Option<OpStats>,
}

impl FloorSamples {
    pub(crate) fn finish(self, family: Family) -> Floor {
        let s = |v: Vec<Duration>| (!v.is_empty()).then(|| OpStats::new(v, Duration::ZERO));
        Floor {
            family,
            start_ours: s(self.start_ours),
            start_reference: s(self.start_reference),
            kernel_add: s(self.kernel_add),
            kernel_del: s(self.kernel_del),
        }
    }
}

/// `n` VERSION calls of `bin` in `node` (pod `pod` as CNI_NETNS, which VERSION ignores).
pub(crate) fn process_start(
    bin: &Path,
    node: &NamedNetns,
    pod: &NamedNetns,
    n: usize,
) -> Result<Vec<Duration>> {
    let exec = Exec {
        bin: bin.to_path_buf(),
        cni_path: bin
            .parent()
            .map(|p| p.display().to_string())
            .unwrap_or_default(),
        node: Arc::new(
            File::open(node.path()).with_context(|| format!("open {}", node.path().display()))?,
        ),
        conf: serde_json::json!({"cniVersion": crate::bench_cni::CNI_VERSION, "name": "floor", "type": "floor"}),
        id_prefix: "floor".into(),
        device_prefix: None,
    };
    let mut out = Vec::with_capacity(n);
    for i in 0..n {
        let (d, _) = exec.call("VERSION", i, pod.path(), None)?;
        out.push(d);
    }
    Ok(out)
}

/// The kernel work of one attachment of family `f`, `pods.len()` times: (ADD-side, DEL-side) durations. `node`
/// was prepared for the family (`bench_cni::prepare_node`); its devices and master carry the same names.
pub(crate) fn kernel_work(
    f: Family,
    node: &NamedNetns,
    pods: &[NamedNetns],
) -> Result<(Vec<Duration>, Vec<Duration>)> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("start a tokio runtime")?;
    rt.block_on(async {
        let node_ns = kernel::Netns::open(node.path())?;
        let host = Netlink::in_netns(&node_ns)?;
        let (mut add, mut del) = (Vec::new(), Vec::new());
        for (i, pod) in pods.iter().enumerate() {
            if crate::interrupt::interrupted() {
                anyhow::bail!("interrupted");
            }
            let pod_ns = kernel::Netns::open(pod.path())?;
            let (a, d) = match f {
                Family::Bridge | Family::Ptp => veth(&host, &pod_ns, i).await?,
                Family::HostDevice => move_device(&host, &node_ns, &pod_ns, i).await?,
                Family::Macvlan => macvlan(&host, &pod_ns).await?,
            };
            add.push(a);
            del.push(d);
        }
        Ok((add, del))
    })
}

/// A veth pair whose peer is made in the pod namespace, then its deletion.
async fn veth(host: &Netlink, pod_ns: &kernel::Netns, i: usize) -> Result<(Duration, Duration)> {
    let name = format!("fbfloor{i}");
    let t = Instant::now();
    host.create_veth(&kernel::link::VethSpec {
        host_name: &name,
        peer_name: "eth0",
        peer_netns_fd: pod_ns.raw_fd(),
        mtu: Some(crate::bench_cni::MTU),
        peer_mac: None,
        controller: None,
    })
    .await?;
    let a = t.elapsed();
    let l = host
        .link_by_name(&name)
        .await?
        .with_context(|| format!("{name} after creating it"))?;
    let t = Instant::now();
    host.delete_link(l.index).await?;
    Ok((a, t.elapsed()))
}

/// Device `bhd<i>` of the node moved into the pod as `eth0` (with its alias, one request, as host-device does),
/// then back under its name.
async fn move_device(
    host: &Netlink,
    node_ns: &kernel::Netns,
    pod_ns: &kernel::Netns,
    i: usize,
) -> Result<(Duration, Duration)> {
    let name = format!("{}{i}", crate::bench_cni::HOSTDEV_PREFIX);
    let l = host
        .link_by_name(&name)
        .await?
        .with_context(|| format!("device {name} of the floor's node"))?;
    let t = Instant::now();
    host.move_link_to_netns(l.index, pod_ns.raw_fd(), "eth0", Some(&name))
        .await?;
    let a = t.elapsed();
    let pod = Netlink::in_netns(pod_ns)?;
    let moved = pod
        .link_by_name("eth0")
        .await?
        .with_context(|| format!("{name} as eth0 in the pod"))?;
    let t = Instant::now();
    pod.move_link_to_netns(moved.index, node_ns.raw_fd(), &name, None)
        .await?;
    Ok((a, t.elapsed()))
}

/// A bridge-mode macvlan on the node's master, made in the pod namespace as `eth0` (one request, as the plugin
/// sends it), then its deletion.
async fn macvlan(host: &Netlink, pod_ns: &kernel::Netns) -> Result<(Duration, Duration)> {
    use kernel::sublink::{MacvlanMode, SublinkKind, SublinkSpec};
    let master = host
        .link_by_name(crate::bench_cni::MACVLAN_MASTER)
        .await?
        .context("the floor node's macvlan master")?;
    let t = Instant::now();
    host.create_sublink(&SublinkSpec {
        name: "eth0",
        master: master.index,
        kind: SublinkKind::Macvlan(MacvlanMode::Bridge),
        mtu: None,
        mac: None,
        netns_fd: Some(pod_ns.raw_fd()),
    })
    .await?;
    let a = t.elapsed();
    let pod = Netlink::in_netns(pod_ns)?;
    let l = pod
        .link_by_name("eth0")
        .await?
        .context("the macvlan in the pod")?;
    let t = Instant::now();
    pod.delete_link(l.index).await?;
    Ok((a, t.elapsed()))
}
