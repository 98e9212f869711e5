//! host-gw: a route per peer subnet via the peer's host address. Needs every node on one L2 segment.

use super::{
    check_type, is_self, managed_route, onlink_prefixes, Backend, BackendError, Local, Peer,
    Published, Report, ROUTE_PROTOCOL,
};
use crate::admission::{Claim, PeerRules};
use ipnet::IpNet;
use kernel::route::Route;
use kernel::Netlink;
use std::collections::HashMap;
use std::net::IpAddr;
use subnet::Lease;

/// The host-gw backend.
pub struct HostGw {
    local: Local,
    /// Connected prefixes of the external interface: a peer's public IP must be in one (same L2 segment).
    onlink: Vec<IpNet>,
}

impl HostGw {
    /// Checks the node can route directly: the public IP must be the interface's own address (not NAT).
    pub fn new(local: &Local) -> Result<Self, BackendError> {
        if local.public_ip.is_some() && local.public_ip != local.iface_addr {
            return Err(BackendError::Unsupported(format!(
                "host-gw: public IP {} is not the address of interface {} ({}); host-gw needs direct L2 reachability, \
                 not NAT",
                local.public_ip.map(|i| i.to_string()).unwrap_or_default(),
                local.ext_name,
                local.iface_addr.map(|i| i.to_string()).unwrap_or_else(|| "none".into())
            )));
        }
        if local.public_ipv6.is_some() && local.public_ipv6 != local.iface_v6_addr {
            return Err(BackendError::Unsupported(format!(
                "host-gw: public IPv6 {} is not an address of interface {}",
                local.public_ipv6.map(|i| i.to_string()).unwrap_or_default(),
                local.ext_name
            )));
        }
        Ok(Self {
            local: local.clone(),
            onlink: Vec::new(),
        })
    }

    /// Re-reads the external interface's connected prefixes.
    pub async fn refresh(&mut self, nl: &Netlink) -> Result<(), BackendError> {
        self.onlink = onlink_prefixes(nl, self.local.ext_index).await?;
        Ok(())
    }

    /// A host-gw peer must be directly reachable: its public address on one of our connected prefixes (a route via
    /// anything else is refused by the kernel, every pass).
    pub fn admit_peer(&self, lease: &Lease, peer: &Peer) -> Result<(), String> {
        check_type(lease, "host-gw")?;
        let ips = [
            peer.subnet.and(peer.public_ip).map(IpAddr::V4),
            peer.ipv6_subnet.and(peer.public_ipv6).map(IpAddr::V6),
        ];
        for ip in ips.into_iter().flatten() {
            if !self.onlink.is_empty() && !self.onlink.iter().any(|n| n.contains(&ip)) {
                return Err(format!(
                    "public IP {ip} is not on a network of {} (host-gw needs every node on one L2 segment)",
                    self.local.ext_name
                ));
            }
        }
        Ok(())
    }

    /// Records the acquired lease (our own subnet is never routed to a peer).
    pub fn set_lease(&mut self, local: &Local) {
        self.local = local.clone();
    }

    /// Nothing to create; pods keep the underlay MTU.
    pub async fn setup(&mut self, _nl: &Netlink) -> Result<Published, BackendError> {
        Ok(Published {
            backend_type: "host-gw".into(),
            backend_data: None,
            backend_v6_data: None,
            mtu: self.local.ext_mtu,
        })
    }

    /// Routes `peer subnet via peer public IP dev ext` for every peer; removes every other route of ours on the
    /// external interface. One failing route does not stop the others; the first error is returned after the pass.
    pub async fn reconcile(
        &mut self,
        nl: &Netlink,
        peers: &[Peer],
    ) -> Result<Report, BackendError> {
        let mut want: HashMap<IpNet, IpAddr> = HashMap::new();
        let mut report = Report::default();
        for p in peers {
            if is_self(&self.local, p) {
                continue;
            }
            if let (Some(s), Some(ip)) = (p.subnet, p.public_ip) {
                want.insert(IpNet::V4(s), IpAddr::V4(ip));
            }
            if let (Some(s), Some(ip)) = (p.ipv6_subnet, p.public_ipv6) {
                want.insert(IpNet::V6(s), IpAddr::V6(ip));
            }
        }
        let ext = self.local.ext_index;
        let mut first_err = None;
        for v6 in [false, true] {
            if (v6 && self.local.ipv6_network.is_none()) || (!v6 && self.local.network.is_none()) {
                continue;
            }
            let have = nl.routes(v6).await?;
            let mut ok: HashMap<IpNet, IpAddr> = HashMap::new();
            for r in have.iter().filter(|r| managed_route(&self.local, r, ext)) {
                match (want.get(&r.dst), r.gateway) {
                    (Some(gw), Some(have_gw)) if *gw == have_gw => {
                        ok.insert(r.dst, have_gw);
                    }
                    (Some(_), _) => {} // replaced below
                    (None, _) => match nl.delete_route(r).await {
                        Ok(()) => report.removed += 1,
                        Err(e) => {
                            tracing::warn!(error = %e, "host-gw: removing a stale route failed");
                            first_err.get_or_insert(e);
                        }
                    },
                }
            }
            for (dst, gw) in want.iter().filter(|(d, _)| d.addr().is_ipv6() == v6) {
                if ok.get(dst) == Some(gw) {
                    continue;
                }
                let r = Route::new(*dst).via(*gw).dev(ext).protocol(ROUTE_PROTOCOL);
                match nl.add_route(&r, true).await {
                    Ok(()) => report.added += 1,
                    Err(e) => {
                        tracing::warn!(error = %e, "host-gw: adding a route failed");
                        first_err.get_or_insert(e);
                    }
                }
            }
        }
        match first_err {
            Some(e) => Err(e.into()),
            None => Ok(report),
        }
    }
}

#[async_trait::async_trait]
impl Backend for HostGw {
    fn type_name(&self) -> &'static str {
        "host-gw"
    }
    async fn setup(&mut self, nl: &Netlink) -> Result<Published, BackendError> {
        HostGw::setup(self, nl).await
    }
    async fn set_lease(&mut self, _nl: &Netlink, local: &Local) -> Result<(), BackendError> {
        HostGw::set_lease(self, local);
        Ok(())
    }
    async fn refresh(&mut self, nl: &Netlink) -> Result<(), BackendError> {
        HostGw::refresh(self, nl).await
    }
    async fn reconcile(&mut self, nl: &Netlink, peers: &[Peer]) -> Result<Report, BackendError> {
        HostGw::reconcile(self, nl, peers).await
    }
}

impl PeerRules for HostGw {
    fn admit_peer(
        &self,
        lease: &Lease,
        peer: &mut Peer,
        _claims: &mut Vec<Claim>,
    ) -> Result<(), String> {
        HostGw::admit_peer(self, lease, peer)
    }
    fn own_claims(&self) -> Vec<Claim> {
        Vec::new()
    }
}
