//! Backends: how packets for other nodes' pod subnets leave this node. Each one turns the desired set of peers into
//! kernel state (routes, neighbours, FDB entries) and is safe to call again at any time (level-triggered).

pub mod hostgw;
pub mod vxlan;

use ipnet::{IpNet, Ipv4Net, Ipv6Net};
use kernel::link::Mac;
use serde_json::Value;
use std::net::{Ipv4Addr, Ipv6Addr};
use subnet::{Lease, NO_IPV4_SUBNET};

/// Another node, as its lease describes it.
#[derive(Debug, Clone, PartialEq)]
pub struct Peer {
    /// Its IPv4 pod subnet.
    pub subnet: Option<Ipv4Net>,
    /// Its IPv6 pod subnet.
    pub ipv6_subnet: Option<Ipv6Net>,
    /// Its public IPv4 address (underlay).
    pub public_ip: Option<Ipv4Addr>,
    /// Its public IPv6 address (underlay).
    pub public_ipv6: Option<Ipv6Addr>,
    /// `BackendType` of its lease.
    pub backend_type: String,
    /// `BackendData.VtepMAC` of its lease (vxlan), when present and valid.
    pub vtep_mac: Option<Mac>,
    /// `BackendV6Data.VtepMAC` of its lease (vxlan over IPv6).
    pub vtep_v6_mac: Option<Mac>,
}

impl Peer {
    /// A lease as the backends see it. Only what a backend acts on is kept: the reconciler builds this list
    /// for every peer on every pass, so it must stay small.
    pub fn from_lease(l: &Lease) -> Self {
        let mac = |d: &Option<Value>| {
            d.as_ref()
                .and_then(|d| opt(d, "VtepMAC"))
                .and_then(Value::as_str)
                .and_then(Mac::parse)
        };
        Peer {
            subnet: (l.subnet != NO_IPV4_SUBNET).then_some(l.subnet),
            ipv6_subnet: l.ipv6_subnet,
            public_ip: (!l.attrs.public_ip.is_unspecified()).then_some(l.attrs.public_ip),
            public_ipv6: l.attrs.public_ipv6,
            backend_type: l.attrs.backend_type.clone(),
            vtep_mac: mac(&l.attrs.backend_data),
            vtep_v6_mac: mac(&l.attrs.backend_v6_data),
        }
    }
}

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
    pub backend_data: Option<Value>,
    /// `BackendV6Data`.
    pub backend_v6_data: Option<Value>,
    /// MTU for pods (`FLANNEL_MTU`).
    pub mtu: u32,
}

/// Kernel work done by one reconcile pass.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Report {
    /// Entries (routes, neighbours, FDB entries) added or replaced.
    pub added: usize,
    /// Entries removed because no lease wants them.
    pub removed: usize,
    /// Peers skipped (other backend type, malformed backend data).
    pub skipped: usize,
}

impl std::ops::AddAssign for Report {
    fn add_assign(&mut self, o: Self) {
        self.added += o.added;
        self.removed += o.removed;
        self.skipped += o.skipped;
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

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;
    use subnet::{Expiration, LeaseAttrs};

    fn lease(data: Option<Value>) -> Lease {
        Lease::new(
            "10.244.2.0-24".parse().unwrap(),
            LeaseAttrs {
                public_ip: Ipv4Addr::new(192, 0, 2, 2),
                backend_type: "vxlan".into(),
                backend_data: data,
                ..Default::default()
            },
            Expiration::Unknown,
            1,
        )
    }

    #[test]
    fn peer_from_lease_keeps_only_what_backends_use() {
        let p = Peer::from_lease(&lease(Some(
            json!({"VNI": 1, "vtepmac": "0e:00:00:00:00:02"}),
        )));
        assert_eq!(p.subnet, Some("10.244.2.0/24".parse().unwrap()));
        assert_eq!(p.public_ip, Some(Ipv4Addr::new(192, 0, 2, 2)));
        assert_eq!(
            p.vtep_mac.map(|m| m.to_string()).as_deref(),
            Some("0e:00:00:00:00:02")
        );
        assert_eq!(p.vtep_v6_mac, None);
        for bad in [
            None,
            Some(json!({"VtepMAC": "zz"})),
            Some(json!("x")),
            Some(json!({"VtepMAC": 5})),
        ] {
            assert_eq!(Peer::from_lease(&lease(bad)).vtep_mac, None);
        }
    }
}
