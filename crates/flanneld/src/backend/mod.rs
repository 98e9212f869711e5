//! Backends: how packets for other nodes' pod subnets leave this node. Each one turns the desired set of peers into
//! kernel state (routes, neighbours, FDB entries) and is safe to call again at any time (level-triggered).

pub mod hostgw;
pub mod udp;
pub mod vxlan;

use crate::admission::PeerRules;
use ipnet::{IpNet, Ipv4Net, Ipv6Net};
use kernel::link::Mac;
use serde_json::Value;
use std::net::{Ipv4Addr, Ipv6Addr};
use subnet::Lease;

/// Another node, as its lease describes it, after admission ([`crate::admission`]): every field is checked.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Peer {
    /// Its IPv4 pod subnet.
    pub subnet: Option<Ipv4Net>,
    /// Its IPv6 pod subnet.
    pub ipv6_subnet: Option<Ipv6Net>,
    /// Its public IPv4 address (underlay).
    pub public_ip: Option<Ipv4Addr>,
    /// Its public IPv6 address (underlay).
    pub public_ipv6: Option<Ipv6Addr>,
    /// What the backend parsed from the peer's `BackendData` for its own use (set by its
    /// [`PeerRules::admit_peer`]).
    pub data: PeerData,
}

/// The backend-specific part of an admitted peer, parsed once at admission. A small `Copy` value rather than a
/// boxed per-backend type: thousands of peers are copied out of the snapshot on every pass, and most backends
/// need nothing here.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum PeerData {
    /// Nothing (host-gw, udp).
    #[default]
    None,
    /// vxlan: `BackendData.VtepMAC` and `BackendV6Data.VtepMAC`.
    Vtep {
        /// IPv4 VTEP MAC.
        v4: Option<Mac>,
        /// IPv6 VTEP MAC.
        v6: Option<Mac>,
    },
}

impl PeerData {
    /// The VTEP MAC for one family (vxlan peers only).
    pub fn vtep(&self, v6: bool) -> Option<Mac> {
        match *self {
            PeerData::Vtep { v4, v6: m6 } => {
                if v6 {
                    m6
                } else {
                    v4
                }
            }
            PeerData::None => None,
        }
    }
}

/// Route protocol (`RTPROT_*`) of the routes flanneld installs: `ip route` shows `proto 121`. It marks a route as
/// ours wherever it points, so a route left for a lease that is gone, refused, or outside a changed network is
/// found and removed. Routes with upstream's `proto boot` inside the network are recognised too (a node switched
/// from upstream flannel keeps working), and are not rewritten just for their protocol.
pub const ROUTE_PROTOCOL: u8 = 121;

/// This node's view of the network, fixed at start.
#[derive(Debug, Clone)]
pub struct Local {
    /// The flannel IPv4 network (`Network`).
    pub network: Option<Ipv4Net>,
    /// The flannel IPv6 network (`IPv6Network`).
    pub ipv6_network: Option<Ipv6Net>,
    /// Our IPv4 lease subnet.
    pub subnet: Option<Ipv4Net>,
    /// Our IPv6 lease subnet.
    pub ipv6_subnet: Option<Ipv6Net>,
    /// External interface index.
    pub ext_index: u32,
    /// External interface name.
    pub ext_name: String,
    /// External interface MTU.
    pub ext_mtu: u32,
    /// Address on the external interface (VXLAN source).
    pub iface_addr: Option<Ipv4Addr>,
    /// IPv6 address on the external interface.
    pub iface_v6_addr: Option<Ipv6Addr>,
    /// Public IPv4 (what peers send to).
    pub public_ip: Option<Ipv4Addr>,
    /// Public IPv6.
    pub public_ipv6: Option<Ipv6Addr>,
}

/// What a backend publishes in our lease and writes to subnet.env.
#[derive(Debug, Clone, PartialEq)]
pub struct Published {
    /// `BackendType`.
    pub backend_type: String,
    /// `BackendData` (IPv4).
    pub backend_data: Option<subnet::BackendData>,
    /// `BackendV6Data`.
    pub backend_v6_data: Option<subnet::BackendData>,
    /// MTU for pods (`FLANNEL_MTU`).
    pub mtu: u32,
}

/// Kernel work done by one reconcile pass.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Report {
    /// Entries (routes, neighbours, FDB entries) added or replaced.
    pub added: usize,
    /// Entries removed because no admitted lease wants them.
    pub removed: usize,
}

impl std::ops::AddAssign for Report {
    fn add_assign(&mut self, o: Self) {
        self.added += o.added;
        self.removed += o.removed;
    }
}

/// Backend errors.
#[derive(Debug, thiserror::Error)]
pub enum BackendError {
    /// The backend configuration is invalid.
    #[error("backend config: {0}")]
    Config(String),
    /// The node cannot run this backend (for example host-gw behind NAT).
    #[error("{0}")]
    Unsupported(String),
    /// A kernel operation failed.
    #[error(transparent)]
    Kernel(#[from] kernel::Error),
}

/// A backend: one implementation per `Backend.Type`, chosen once at start by name from [`KINDS`] (upstream's
/// `pkg/backend` registry; netavark's `NetworkDriver`). The daemon, admission, health and status code see only this
/// trait. A backend parses its own options and its peers' `BackendData` ([`PeerRules::admit_peer`]), keeps its own
/// kernel state, and may run its own packet loop next to the reconciler (started in [`Backend::set_lease`], fed by
/// [`Backend::reconcile`], its counters shown by [`Backend::status`]).
#[async_trait::async_trait]
pub trait Backend: PeerRules + Send + Sync {
    /// The `Backend.Type` this is (`vxlan`, `host-gw`, ...).
    fn type_name(&self) -> &'static str;

    /// The VTEP MACs this node announced before (read back from its lease or Node annotations): a device that has
    /// to be created gets them instead of derived ones, so peers never see the MAC change across a restart or a
    /// switch from upstream flannel. Backends without a VTEP ignore it.
    fn prefer_vtep_macs(&mut self, _v4: Option<Mac>, _v6: Option<Mac>) {}

    /// Creates devices (before the lease exists); returns what to publish in the lease.
    async fn setup(&mut self, nl: &kernel::Netlink) -> Result<Published, BackendError>;

    /// Configures the acquired lease (addresses on devices); called again if the lease changes.
    async fn set_lease(&mut self, nl: &kernel::Netlink, local: &Local) -> Result<(), BackendError>;

    /// Re-reads what admission and reconciliation depend on that can change under us (the external interface's
    /// connected prefixes: which peers are on our L2 segment). Called before every pass.
    async fn refresh(&mut self, _nl: &kernel::Netlink) -> Result<(), BackendError> {
        Ok(())
    }

    /// Whether the backend's devices still exist (false: the daemon calls `setup` and `set_lease` again).
    async fn devices_present(&self, _nl: &kernel::Netlink) -> Result<bool, BackendError> {
        Ok(true)
    }

    /// Makes the kernel (and the backend's own forwarding state) match `peers` exactly (within the flannel
    /// network).
    async fn reconcile(
        &mut self,
        nl: &kernel::Netlink,
        peers: &[Peer],
    ) -> Result<Report, BackendError>;

    /// Where `/status` reads the backend's own section from (a packet loop's counters), if it has one. A
    /// function, not a value: the counters move between passes, and /status must not wait for the reconciler.
    fn status_source(&self) -> Option<StatusSource> {
        None
    }
}

/// Builds a backend from its options (`Backend` in the network config) and this node's view of the network.
pub type Builder = fn(&Value, &Local) -> Result<Box<dyn Backend>, BackendError>;

/// The backend's `/status` section, rendered on request.
pub type StatusSource = std::sync::Arc<dyn Fn() -> Value + Send + Sync>;

/// One row of the backend table: a `Backend.Type` and how to build it from its options.
pub struct Kind {
    /// The `Backend.Type` (matched case-insensitively, as upstream).
    pub name: &'static str,
    /// Validates the options and builds the backend (no kernel changes yet).
    pub build: Builder,
}

/// Every backend flanneld has. Adding one is a module and a row here.
pub const KINDS: &[Kind] = &[
    Kind {
        name: "vxlan",
        build: |o, l| Ok(Box::new(vxlan::Vxlan::new(o, l)?)),
    },
    Kind {
        name: "host-gw",
        build: |_, l| Ok(Box::new(hostgw::HostGw::new(l)?)),
    },
    Kind {
        name: "udp",
        build: |o, l| Ok(Box::new(udp::Udp::new(o, l)?)),
    },
];

/// Builds the backend named in the network config (`Backend.Type`, case-insensitive) with its options.
pub fn build(kind: &str, options: &Value, local: &Local) -> Result<Box<dyn Backend>, BackendError> {
    match KINDS.iter().find(|k| k.name.eq_ignore_ascii_case(kind)) {
        Some(k) => (k.build)(options, local),
        None => Err(BackendError::Config(format!(
            "Backend.Type \"{}\": unknown backend (supported: {})",
            kind.to_ascii_lowercase(),
            KINDS.iter().map(|k| k.name).collect::<Vec<_>>().join(", ")
        ))),
    }
}

/// Refuses a lease of another backend type (upstream logs "ignoring non-vxlan subnet" and skips it the same way).
pub(crate) fn check_type(lease: &Lease, want: &str) -> Result<(), String> {
    if lease.attrs.backend_type == want {
        Ok(())
    } else {
        Err(format!(
            "BackendType {:?}: this network runs {want}",
            lease.attrs.backend_type
        ))
    }
}

/// The connected (on-link) prefixes of the external interface.
pub(crate) async fn onlink_prefixes(
    nl: &kernel::Netlink,
    ext_index: u32,
) -> Result<Vec<IpNet>, BackendError> {
    Ok(nl
        .addresses(ext_index)
        .await?
        .into_iter()
        .filter(|a| a.scope == 0)
        .map(|a| a.net.trunc())
        .collect())
}

/// Puts `want` on the device and removes any other global address (a previous lease's).
pub(crate) async fn ensure_only_address(
    nl: &kernel::Netlink,
    index: u32,
    want: IpNet,
) -> Result<(), BackendError> {
    for a in nl.addresses(index).await? {
        if a.net.addr().is_ipv6() == want.addr().is_ipv6() && a.scope == 0 && a.net != want {
            nl.delete_address(&a).await?;
        }
    }
    nl.add_address(index, want).await?;
    Ok(())
}

/// Whether a route found in the kernel is one flanneld may manage on interface `oif`: ours by protocol wherever it
/// points, or a route with a next hop inside the flannel networks (upstream's, `proto boot`).
pub(crate) fn managed_route(local: &Local, r: &kernel::route::Route, oif: u32) -> bool {
    r.table == Some(254)
        && !r.blackhole
        && r.oif == Some(oif)
        && r.gateway.is_some()
        && (r.protocol == ROUTE_PROTOCOL || in_networks(local, &r.dst))
}

/// Whether `dst` lies inside one of the flannel networks (we never touch routes outside them).
pub(crate) fn in_networks(local: &Local, dst: &IpNet) -> bool {
    match dst {
        IpNet::V4(d) => local.network.is_some_and(|n| n.contains(d)),
        IpNet::V6(d) => local.ipv6_network.is_some_and(|n| n.contains(d)),
    }
}

/// Whether the peer is this node (our own lease shows up in the lease list too).
pub(crate) fn is_self(local: &Local, p: &Peer) -> bool {
    (p.subnet.is_some() && p.subnet == local.subnet)
        || (p.ipv6_subnet.is_some() && p.ipv6_subnet == local.ipv6_subnet)
}

/// Parses a bool/number option from backend JSON with keys matched case-insensitively (Go encoding/json rules).
pub(crate) fn opt<'a>(options: &'a Value, key: &str) -> Option<&'a Value> {
    options
        .as_object()?
        .iter()
        .find(|(k, _)| k.eq_ignore_ascii_case(key))
        .map(|(_, v)| v)
}
