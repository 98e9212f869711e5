//! What the convergence and memory benchmarks share: synthetic vxlan leases written straight into etcd, and a
//! probe that reads a node's kernel state (routes, neighbours, FDB entries) over netlink to see when flanneld has
//! programmed them.

use super::{check_interrupt, ETCD_PREFIX, ETCD_URL};
use anyhow::{bail, Context, Result};
use etcd_client::{PutOptions, Txn, TxnOp, WatchOptions};
use ipnet::{IpNet, Ipv4Net};
use kernel::{Mac, Netlink};
use std::collections::{HashMap, HashSet};
use std::net::{IpAddr, Ipv4Addr};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use subnet::{EtcdOptions, EtcdRegistry, LeaseAttrs, Registry, SubnetKey};

/// The vxlan device flanneld makes for VNI 1.
pub const VXLAN_DEV: &str = "flannel.1";

/// A peer as a vxlan lease describes it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Peer {
    /// Its pod subnet.
    pub subnet: Ipv4Net,
    /// Its VTEP MAC (`BackendData.VtepMAC`).
    pub mac: Mac,
    /// Its `PublicIP` (the FDB destination).
    pub public: Ipv4Addr,
}

impl Peer {
    /// The lease value, as flanneld writes it.
    pub fn attrs(&self) -> LeaseAttrs {
        LeaseAttrs {
            public_ip: self.public,
            public_ipv6: None,
            backend_type: "vxlan".into(),
            backend_data: Some(
                serde_json::json!({"VNI": 1, "VtepMAC": self.mac.to_string()}).into(),
            ),
            backend_v6_data: None,
        }
    }

    /// The lease key.
    pub fn key(&self) -> SubnetKey {
        SubnetKey::v4(self.subnet)
    }

    /// Reads a vxlan lease value (as stored in etcd) of the subnet key `key`.
    pub fn from_lease(key: &str, value: &[u8]) -> Result<Self> {
        let subnet: SubnetKey = key.parse()?;
        let attrs = LeaseAttrs::from_json(key, value)?;
        let mac = attrs
            .backend_data
            .as_ref()
            .and_then(|d| d.field("VtepMAC").ok().flatten())
            .and_then(|m| m.as_str().and_then(Mac::parse))
            .with_context(|| format!("lease {key} has no VtepMAC"))?;
        Ok(Self {
            subnet: subnet.ipv4,
            mac,
            public: attrs.public_ip,
        })
    }
}

/// `n` synthetic peers: consecutive /24s of `network` (skipping `avoid`), random VTEP MACs, and public IPs from
/// `public(i)`.
pub fn synthetic_peers(
    n: usize,
    network: Ipv4Net,
    avoid: &[Ipv4Net],
    skip: usize,
    public: impl Fn(usize) -> Ipv4Addr,
) -> Result<Vec<Peer>> {
    let base = u32::from(network.network());
    let count = 1u32 << (24 - u32::from(network.prefix_len()).min(24));
    let mut out = Vec::with_capacity(n);
    // Subnet 0 is below upstream's default SubnetMin; start at 1.
    for k in (1 + skip as u32)..count {
        if out.len() == n {
            break;
        }
        let subnet = Ipv4Net::new(Ipv4Addr::from(base + (k << 8)), 24)?;
        if avoid.contains(&subnet) {
            continue;
        }
        let i = out.len();
        out.push(Peer {
            subnet,
            mac: Mac::random()?,
            public: public(i),
        });
    }
    if out.len() < n {
        bail!("{network} has room for only {} more /24 subnets", out.len());
    }
    Ok(out)
}

/// Public IPs for simulated peers: 100.64.0.0/10 (shared address space, unicast; FDB destinations only, never
/// sent to), skipping the .0 and .255 of every /24.
pub fn fake_public(i: usize) -> Ipv4Addr {
    let host = (i / 254) << 8 | (i % 254 + 1);
    Ipv4Addr::from(u32::from(Ipv4Addr::new(100, 64, 0, 0)) + host as u32)
}

/// A lease event seen by our own watch, with the time it arrived.
#[derive(Debug, Clone)]
pub struct Seen {
    /// When it arrived.
    pub at: Instant,
    /// Put (true) or delete.
    pub put: bool,
    /// The subnet key (last element of the etcd key).
    pub key: String,
    /// The value (empty for deletes).
    pub value: Vec<u8>,
}

/// The benchmark's etcd client (it must be created on a thread inside the fabric namespace).
pub struct Etcd {
    reg: EtcdRegistry,
    client: etcd_client::Client,
}

impl Etcd {
    /// Connects to the fabric's etcd.
    pub async fn connect() -> Result<Self> {
        let reg = EtcdRegistry::connect(EtcdOptions {
            endpoints: vec![ETCD_URL.to_string()],
            prefix: ETCD_PREFIX.to_string(),
            request_timeout: Duration::from_secs(30),
            ..Default::default()
        })
        .await
        .context("connect to the benchmark's etcd")?;
        let client = reg.client();
        Ok(Self { reg, client })
    }

    /// Subnets of every lease in etcd.
    pub async fn subnets_in_use(&self) -> Result<Vec<Ipv4Net>> {
        let (leases, _) = self.reg.get_subnets().await?;
        Ok(leases.iter().map(|l| l.subnet).collect())
    }

    /// Creates one lease the way flanneld does (compare-and-swap, 1 h TTL); returns when etcd committed it.
    pub async fn create(&self, p: &Peer) -> Result<Instant> {
        let made = self
            .reg
            .create_subnet(&p.key(), &p.attrs(), Some(Duration::from_secs(3600)))
            .await?;
        if made.is_none() {
            bail!("lease {} already exists", p.key());
        }
        Ok(Instant::now())
    }

    /// Deletes one lease; returns when etcd committed the deletion.
    pub async fn delete(&self, key: &SubnetKey) -> Result<Instant> {
        self.reg.delete_subnet(key).await?;
        Ok(Instant::now())
    }

    /// Writes all `peers` in one transaction (one etcd revision), every key attached to one fresh etcd lease.
    /// Returns that lease's id (revoke it to delete them all at once) and when etcd committed.
    pub async fn put_all(&self, peers: &[Peer]) -> Result<(i64, Instant)> {
        let mut c = self.client.clone();
        let id = c.lease_grant(3600, None).await?.id();
        let ops: Vec<TxnOp> = peers
            .iter()
            .map(|p| {
                TxnOp::put(
                    self.reg.lease_key(&p.key()),
                    p.attrs().to_json(),
                    Some(PutOptions::new().with_lease(id)),
                )
            })
            .collect();
        let r = c
            .txn(Txn::new().and_then(ops))
            .await
            .context("txn with the synthetic leases")?;
        let at = Instant::now();
        if !r.succeeded() {
            bail!("the lease transaction did not succeed");
        }
        Ok((id, at))
    }

    /// Revokes an etcd lease (deleting every key attached to it in one revision); returns when committed.
    pub async fn revoke(&self, id: i64) -> Result<Instant> {
        let mut c = self.client.clone();
        c.lease_revoke(id).await.context("revoke the etcd lease")?;
        Ok(Instant::now())
    }

    /// Watches the subnets directory in a background task; every event is appended to the returned log with
    /// its arrival time.
    pub async fn watch_log(&self) -> Result<Arc<Mutex<Vec<Seen>>>> {
        let dir = format!("{ETCD_PREFIX}/subnets/");
        let mut c = self.client.clone();
        let mut ws = c
            .watch(dir.clone(), Some(WatchOptions::new().with_prefix()))
            .await?;
        let log = Arc::new(Mutex::new(Vec::new()));
        let l = log.clone();
        tokio::spawn(async move {
            while let Ok(Some(resp)) = ws.message().await {
                let at = Instant::now();
                let Ok(mut g) = l.lock() else { return };
                for ev in resp.events() {
                    let Some(kv) = ev.kv() else { continue };
                    let key = String::from_utf8_lossy(kv.key());
                    g.push(Seen {
                        at,
                        put: ev.event_type() == etcd_client::EventType::Put,
                        key: key.strip_prefix(&dir).unwrap_or(&key).to_string(),
                        value: kv.value().to_vec(),
                    });
                }
            }
        });
        Ok(log)
    }
}

/// The kernel entries a set of peers needs on a flanneld vxlan node.
#[derive(Debug, Default)]
pub struct Want {
    routes: HashMap<Ipv4Net, Ipv4Addr>,
    neigh: HashMap<Ipv4Addr, Mac>,
    fdb: HashSet<(Mac, Ipv4Addr)>,
    macs: HashSet<Mac>,
}

impl Want {
    /// Route `subnet via subnet.0 dev flannel.1 onlink`, neighbour `subnet.0 lladdr VtepMAC permanent`, FDB
    /// `VtepMAC dst PublicIP` for every peer.
    pub fn new(peers: &[Peer]) -> Self {
        let mut w = Self::default();
        for p in peers {
            let gw = p.subnet.network();
            w.routes.insert(p.subnet, gw);
            w.neigh.insert(gw, p.mac);
            w.fdb.insert((p.mac, p.public));
            w.macs.insert(p.mac);
        }
        w
    }

    /// How many peers.
    pub fn len(&self) -> usize {
        self.routes.len()
    }

    /// The subnet when there is exactly one peer.
    fn single(&self) -> Option<Ipv4Net> {
        (self.routes.len() == 1)
            .then(|| self.routes.keys().next().copied())
            .flatten()
    }
}

/// Entries found on one node: exactly right (`*`), and any entry for the same destination (`any_*`, what must
/// be gone after the peer left).
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Counts {
    pub routes: usize,
    pub neigh: usize,
    pub fdb: usize,
    pub any_routes: usize,
    pub any_neigh: usize,
    pub any_fdb: usize,
}

/// A flanneld vxlan node's kernel state, read over netlink.
pub struct NodeProbe {
    /// Its namespace.
    pub ns: String,
    nl: Netlink,
    dev: u32,
}

impl NodeProbe {
    /// Opens a netlink socket in `ns` (needs a tokio runtime) and finds `flannel.1`.
    pub async fn open(ns: &str) -> Result<Self> {
        Self::open_within(ns, Duration::ZERO, || Ok(())).await
    }

    /// [`NodeProbe::open`], waiting up to `timeout` for flanneld to make `flannel.1` (looked up every
    /// millisecond; `alive` is asked in between and ends the wait with its error, e.g. when flanneld exited).
    pub async fn open_within(
        ns: &str,
        timeout: Duration,
        alive: impl Fn() -> Result<()>,
    ) -> Result<Self> {
        let n = kernel::Netns::open(super::ns_path(ns))?;
        let nl = Netlink::in_netns(&n)?;
        let deadline = Instant::now() + timeout;
        let dev = loop {
            if let Some(l) = nl.link_by_name(VXLAN_DEV).await? {
                break l.index;
            }
            if Instant::now() >= deadline {
                bail!("{VXLAN_DEV} not found in {ns} (waited {timeout:?})");
            }
            check_interrupt()?;
            alive()?;
            // Blocking on purpose: tokio's timer would add up to 2 ms to a 1 ms pause.
            std::thread::sleep(Duration::from_millis(1));
        };
        Ok(Self {
            ns: ns.to_string(),
            nl,
            dev,
        })
    }

    /// Whether the kernel's route lookup for the first address of `subnet` (`ip route get`, no dump) goes via
    /// `subnet.0` on flannel.1.
    pub async fn routed(&self, subnet: Ipv4Net) -> Result<bool> {
        let dst = Ipv4Addr::from(u32::from(subnet.network()) + 1);
        Ok(match self.nl.route_get(IpAddr::V4(dst)).await {
            Ok(r) => r.oif == Some(self.dev) && r.gateway == Some(IpAddr::V4(subnet.network())),
            Err(_) => false,
        })
    }

    /// Counts the entries of `want` present now (one dump each of routes, neighbours, FDB).
    pub async fn count(&self, want: &Want) -> Result<Counts> {
        let mut c = Counts::default();
        for r in self.nl.routes(false).await? {
            if r.table != Some(254) {
                continue;
            }
            let IpNet::V4(dst) = r.dst else { continue };
            if let Some(gw) = want.routes.get(&dst) {
                c.any_routes += 1;
                if r.gateway == Some(IpAddr::V4(*gw)) && r.oif == Some(self.dev) {
                    c.routes += 1;
                }
            }
        }
        for n in self.nl.neighbours(self.dev, false).await? {
            let Some(IpAddr::V4(ip)) = n.ip else { continue };
            if let Some(mac) = want.neigh.get(&ip) {
                c.any_neigh += 1;
                if n.permanent && n.mac == Some(*mac) {
                    c.neigh += 1;
                }
            }
        }
        for n in self.nl.fdb_entries(self.dev).await? {
            let Some(mac) = n.mac else { continue };
            if !want.macs.contains(&mac) {
                continue;
            }
            c.any_fdb += 1;
            if let Some(IpAddr::V4(ip)) = n.ip {
                if want.fdb.contains(&(mac, ip)) {
                    c.fdb += 1;
                }
            }
        }
        Ok(c)
    }
}

/// When each kind of entry reached its goal on one node, measured from the start instant.
#[derive(Debug, Default, Clone, Copy)]
pub struct Reached {
    pub routes: Option<Duration>,
    pub neigh: Option<Duration>,
    pub fdb: Option<Duration>,
}

impl Reached {
    /// All three reached: the latest of them.
    pub fn all(&self) -> Option<Duration> {
        Some(self.routes?.max(self.neigh?).max(self.fdb?))
    }
}

/// Polls the nodes until every entry of `want` is present (`present`) or every one is gone (`!present`), each
/// node's progress timed from `t0` at the end of the dump that first saw the goal. Polls at most every
/// `interval`, and with slow dumps (thousands of entries) waits three times as long as a dump took, so the probe
/// uses at most a quarter of a CPU next to flanneld. For a single peer a route lookup gates the dumps. Returns
/// each node's times and the median time one poll took.
pub async fn wait_for(
    nodes: &[NodeProbe],
    want: &Want,
    present: bool,
    t0: Instant,
    interval: Duration,
    timeout: Duration,
) -> Result<(Vec<Reached>, Duration)> {
    let n = want.len();
    let mut reached = vec![Reached::default(); nodes.len()];
    let mut last = vec![Counts::default(); nodes.len()];
    let mut poll_times = Vec::new();
    loop {
        check_interrupt()?;
        let p0 = Instant::now();
        for (i, node) in nodes.iter().enumerate() {
            if reached[i].all().is_some() {
                continue;
            }
            // One peer: a route lookup (cheap, no dump) gates the full dumps, so that waiting does not load the
            // node when it has thousands of entries.
            if let Some(only) = want.single() {
                if node.routed(only).await? != present {
                    continue;
                }
            }
            let c = node.count(want).await?;
            let t = t0.elapsed();
            let r = &mut reached[i];
            let (rr, nn, ff) = if present {
                (c.routes == n, c.neigh == n, c.fdb == n)
            } else {
                (c.any_routes == 0, c.any_neigh == 0, c.any_fdb == 0)
            };
            if rr && r.routes.is_none() {
                r.routes = Some(t);
            }
            if nn && r.neigh.is_none() {
                r.neigh = Some(t);
            }
            if ff && r.fdb.is_none() {
                r.fdb = Some(t);
            }
            last[i] = c;
        }
        let took = p0.elapsed();
        poll_times.push(took);
        if reached.iter().all(|r| r.all().is_some()) {
            poll_times.sort();
            let med = poll_times[poll_times.len() / 2];
            return Ok((reached, med));
        }
        if t0.elapsed() > timeout {
            let detail: Vec<String> = nodes
                .iter()
                .zip(&last)
                .map(|(nd, c)| format!("{}: {c:?}", nd.ns))
                .collect();
            bail!(
                "{} entries for {n} peers not {} within {timeout:?}; last counts: {}",
                if present { "all" } else { "some" },
                if present { "programmed" } else { "removed" },
                detail.join("; ")
            );
        }
        let pause = interval.max(took * 3);
        if pause < Duration::from_millis(2) {
            // tokio's timer has millisecond granularity (a 1 ms sleep lasts up to 2 ms); short pauses block the
            // thread instead (nothing else of ours needs to run while we wait).
            std::thread::sleep(pause);
        } else {
            tokio::time::sleep(pause).await;
        }
    }
}

/// CPU time (user + system) a process has used so far.
pub fn cpu_time(pid: u32) -> Option<Duration> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = stat.rsplit_once(')')?.1;
    let f: Vec<&str> = rest.split_whitespace().collect();
    // After the ")": state is field 3 of stat(5), so utime (14) and stime (15) are at 11 and 12 here.
    let ticks: u64 = f.get(11)?.parse::<u64>().ok()? + f.get(12)?.parse::<u64>().ok()?;
    let hz = nix::unistd::sysconf(nix::unistd::SysconfVar::CLK_TCK)
        .ok()
        .flatten()
        .unwrap_or(100) as u64;
    Some(Duration::from_micros(ticks * 1_000_000 / hz.max(1)))
}

/// VmRSS and VmHWM of a process, in bytes.
pub fn rss(pid: u32) -> Option<(u64, u64)> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let field = |name: &str| -> Option<u64> {
        s.lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
            .map(|kb| kb * 1024)
    };
    Some((field("VmRSS:")?, field("VmHWM:")?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fake_publics_are_distinct_unicast() {
        let a: HashSet<Ipv4Addr> = (0..10_000).map(fake_public).collect();
        assert_eq!(a.len(), 10_000);
        for ip in &a {
            let o = ip.octets();
            assert!(o[3] != 0 && o[3] != 255, "{ip}");
            assert!(o[0] == 100 && (64..128).contains(&o[1]), "{ip}");
        }
        assert_eq!(fake_public(0), Ipv4Addr::new(100, 64, 0, 1));
        assert_eq!(fake_public(254), Ipv4Addr::new(100, 64, 1, 1));
    }

    #[test]
    fn synthetic_peers_skip_used_subnets() {
        let net: Ipv4Net = "10.0.0.0/8".parse().unwrap();
        let avoid: Vec<Ipv4Net> = vec!["10.0.2.0/24".parse().unwrap()];
        let p = synthetic_peers(3, net, &avoid, 0, fake_public).unwrap();
        let s: Vec<String> = p.iter().map(|p| p.subnet.to_string()).collect();
        assert_eq!(s, ["10.0.1.0/24", "10.0.3.0/24", "10.0.4.0/24"]);
        let small: Ipv4Net = "10.244.0.0/23".parse().unwrap();
        assert!(synthetic_peers(2, small, &[], 0, fake_public).is_err());
        let again =
            Peer::from_lease(&p[0].key().to_string(), p[0].attrs().to_json().as_bytes()).unwrap();
        assert_eq!(again, p[0]);
    }
}
