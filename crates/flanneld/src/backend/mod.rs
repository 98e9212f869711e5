//! Backends: how packets for other nodes' pod subnets leave this node. Each one turns the desired set of peers into
//! kernel state (routes, neighbours, FDB entries) and is safe to call again at any time (level-triggered).

pub mod hostgw;
pub mod vxlan;

use crate::admission::{Claim, PeerRules};
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
    /// `BackendData.VtepMAC` of its lease (vxlan).
    pub vtep_mac: Option<Mac>,
    /// `BackendV6Data.VtepMAC` of its lease (vxlan over IPv6).
    pub vtep_v6_mac: Option<Mac>,
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

/// A configured backend.
pub enum Backend {
    /// Kernel VXLAN.
    Vxlan(vxlan::Vxlan),
    /// Routes via peers' host addresses.
    HostGw(hostgw::HostGw),
}

impl Backend {
    /// Builds the backend named in the network config (`Backend.Type`, case-insensitive) with its options.
    pub fn new(kind: &str, options: &Value, local: &Local) -> Result<Self, BackendError> {
        match kind.to_ascii_lowercase().as_str() {
            "vxlan" => Ok(Self::Vxlan(vxlan::Vxlan::new(options, local)?)),
            "host-gw" => Ok(Self::HostGw(hostgw::HostGw::new(local)?)),
            other => Err(BackendError::Config(format!(
                "Backend.Type \"{other}\": unknown backend (supported: vxlan, host-gw)"
            ))),
        }
    }

    /// The VTEP MACs this node announced before (read back from its Node's annotations): a device that has to
    /// be created gets them instead of the derived ones, so peers never see the MAC change across a restart or a
    /// switch from upstream flannel. No effect for backends without a VTEP.
    pub fn prefer_vtep_macs(&mut self, v4: Option<Mac>, v6: Option<Mac>) {
        if let Self::Vxlan(b) = self {
            b.prefer_macs(v4, v6);
        }
    }

    /// Creates devices (before the lease exists); returns what to publish in the lease.
    pub async fn setup(&mut self, nl: &kernel::Netlink) -> Result<Published, BackendError> {
        match self {
            Self::Vxlan(b) => b.setup(nl).await,
            Self::HostGw(b) => b.setup(nl).await,
        }
    }

    /// Configures the acquired lease (addresses on devices); called again if the lease changes.
    pub async fn set_lease(
        &mut self,
        nl: &kernel::Netlink,
        local: &Local,
    ) -> Result<(), BackendError> {
        match self {
            Self::Vxlan(b) => b.set_lease(nl, local).await,
            Self::HostGw(b) => {
                b.set_lease(local);
                Ok(())
            }
        }
    }

    /// Re-reads what admission and reconciliation depend on that can change under us (the external interface's
    /// connected prefixes: which peers are on our L2 segment). Called before every pass.
    pub async fn refresh(&mut self, nl: &kernel::Netlink) -> Result<(), BackendError> {
        match self {
            Self::Vxlan(b) => b.refresh(nl).await,
            Self::HostGw(b) => b.refresh(nl).await,
        }
    }

    /// Whether the backend's devices still exist.
    pub async fn devices_present(&self, nl: &kernel::Netlink) -> Result<bool, BackendError> {
        match self {
            Self::Vxlan(b) => b.devices_present(nl).await,
            Self::HostGw(_) => Ok(true),
        }
    }

    /// Makes the kernel match `peers` exactly (within the flannel network).
    pub async fn reconcile(
        &mut self,
        nl: &kernel::Netlink,
        peers: &[Peer],
    ) -> Result<Report, BackendError> {
        match self {
            Self::Vxlan(b) => b.reconcile(nl, peers).await,
            Self::HostGw(b) => b.reconcile(nl, peers).await,
        }
    }

    /// The backend type string.
    pub fn type_name(&self) -> &'static str {
        match self {
            Self::Vxlan(_) => "vxlan",
            Self::HostGw(_) => "host-gw",
        }
    }
}

impl PeerRules for Backend {
    fn admit_peer(
        &self,
        lease: &Lease,
        peer: &mut Peer,
        claims: &mut Vec<Claim>,
    ) -> Result<(), String> {
        match self {
            Self::Vxlan(b) => b.admit_peer(lease, peer, claims),
            Self::HostGw(b) => b.admit_peer(lease, peer),
        }
    }

    fn own_claims(&self) -> Vec<Claim> {
        match self {
            Self::Vxlan(b) => b.own_claims(),
            Self::HostGw(_) => Vec::new(),
        }
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
