//! host-gw: a route per peer subnet via the peer's host address. Needs every node on one L2 segment.

use super::{in_networks, is_self, BackendError, Local, Peer, Published, Report};
use ipnet::IpNet;
use kernel::route::Route;
use kernel::Netlink;
use std::collections::HashMap;
use std::net::IpAddr;

/// The host-gw backend.
pub struct HostGw {
    local: Local,
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
        })
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

    /// Routes `peer subnet via peer public IP dev ext` for every host-gw peer; removes other routes in the flannel
    /// networks on the external interface.
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
            if p.backend_type != "host-gw" {
                report.skipped += 1;
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
        for v6 in [false, true] {
            if (v6 && self.local.ipv6_network.is_none()) || (!v6 && self.local.network.is_none()) {
                continue;
            }
            let have = nl.routes(v6).await?;
            for r in have.iter().filter(|r| {
                r.table == Some(254) && r.oif == Some(ext) && in_networks(&self.local, &r.dst)
            }) {
                if want.get(&r.dst) != r.gateway.as_ref() {
                    nl.delete_route(r).await?;
                    report.removed += 1;
                }
            }
            let have: HashMap<IpNet, Option<IpAddr>> = have
                .iter()
                .filter(|r| r.table == Some(254) && r.oif == Some(ext))
                .map(|r| (r.dst, r.gateway))
                .collect();
            for (dst, gw) in want.iter().filter(|(d, _)| d.addr().is_ipv6() == v6) {
                if have.get(dst) == Some(&Some(*gw)) {
                    continue;
                }
                nl.add_route(&Route::new(*dst).via(*gw).dev(ext), true)
                    .await?;
                report.added += 1;
            }
        }
        Ok(report)
    }
}
