//! vxlan: kernel VXLAN device `flannel.<VNI>` (`flannel-v6.<VNI>`); per peer one permanent neighbour entry
//! (peer subnet address → peer VTEP MAC), one FDB entry (VTEP MAC → peer public IP) and one onlink route. With
//! `DirectRouting`, peers on our own L2 segment get a plain route via their host address instead.

use super::{
    check_type, ensure_only_address, is_self, managed_route, onlink_prefixes, opt, Backend,
    BackendError, Local, Peer, PeerData, Published, Report, ROUTE_PROTOCOL,
};
use crate::admission::{check_vtep_mac, Claim, PeerRules};
use futures::stream::{self, StreamExt};
use ipnet::IpNet;
use kernel::neigh::Neighbour;
use kernel::route::Route;
use kernel::vxlan::{stable_vtep_mac, VxlanSpec};
use kernel::{Mac, Netlink};
use serde_json::{json, Value};
use std::collections::{HashMap, HashSet};
use std::net::IpAddr;
use subnet::Lease;

/// VXLAN encapsulation overhead over IPv4 (outer IP 20 + UDP 8 + VXLAN 8 + inner Ethernet 14).
const OVERHEAD_V4: u32 = 50;
/// Over IPv6 the outer header is 20 bytes longer.
const OVERHEAD_V6: u32 = 70;
/// How many netlink requests to keep in flight when programming many peers.
const PIPELINE: usize = 128;

/// Parsed `Backend` options of a vxlan network.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VxlanConfig {
    /// `VNI` (default 1).
    pub vni: u32,
    /// `Port` (0 = kernel default 8472).
    pub port: u16,
    /// `GBP`.
    pub gbp: bool,
    /// `Learning`.
    pub learning: bool,
    /// `MTU` of the underlay to assume (default: the external interface's).
    pub mtu: Option<u32>,
    /// `DirectRouting`.
    pub direct_routing: bool,
}

impl VxlanConfig {
    /// Parses the options; each error names the key and the value.
    pub fn parse(options: &Value) -> Result<Self, BackendError> {
        let uint = |k: &str, max: u64| -> Result<Option<u64>, BackendError> {
            match opt(options, k) {
                None | Some(Value::Null) => Ok(None),
                Some(v) => match v.as_u64() {
                    Some(n) if n <= max => Ok(Some(n)),
                    _ => Err(BackendError::Config(format!(
                        "Backend.{k} {v}: must be an integer between 0 and {max}"
                    ))),
                },
            }
        };
        let boolean = |k: &str| -> Result<bool, BackendError> {
            match opt(options, k) {
                None | Some(Value::Null) => Ok(false),
                Some(Value::Bool(b)) => Ok(*b),
                Some(v) => Err(BackendError::Config(format!(
                    "Backend.{k} {v}: must be true or false"
                ))),
            }
        };
        let vni = uint("VNI", 16_777_215)?.unwrap_or(1);
        if vni == 0 {
            return Err(BackendError::Config(
                "Backend.VNI 0: must be between 1 and 16777215".into(),
            ));
        }
        Ok(Self {
            vni: vni as u32,
            port: uint("Port", 65535)?.unwrap_or(0) as u16,
            gbp: boolean("GBP")?,
            learning: boolean("Learning")?,
            mtu: uint("MTU", 65535)?.map(|m| m as u32),
            direct_routing: boolean("DirectRouting")?,
        })
    }
}

struct Device {
    index: u32,
    mac: Mac,
}

/// The vxlan backend.
pub struct Vxlan {
    cfg: VxlanConfig,
    local: Local,
    v4: Option<Device>,
    v6: Option<Device>,
    /// Prefixes directly connected on the external interface (for DirectRouting).
    onlink: Vec<IpNet>,
    /// MACs to give devices this backend creates (what the node announced before), IPv4 and IPv6.
    preferred: (Option<Mac>, Option<Mac>),
}

/// A kernel change to make.
enum Op {
    Neigh(u32, IpAddr, Mac),
    Fdb(u32, Mac, IpAddr),
    AddRoute(Route),
    DelRoute(Route),
    DelNeigh(Neighbour),
}

impl Vxlan {
    /// Validates the options.
    pub fn new(options: &Value, local: &Local) -> Result<Self, BackendError> {
        Ok(Self {
            cfg: VxlanConfig::parse(options)?,
            local: local.clone(),
            v4: None,
            v6: None,
            onlink: Vec::new(),
            preferred: (None, None),
        })
    }

    /// MACs for devices this backend will create (see [`Backend::prefer_vtep_macs`]).
    pub fn prefer_macs(&mut self, v4: Option<Mac>, v6: Option<Mac>) {
        self.preferred = (v4, v6);
    }

    /// The device names for this VNI.
    pub fn device_names(&self) -> (String, String) {
        (
            format!("flannel.{}", self.cfg.vni),
            format!("flannel-v6.{}", self.cfg.vni),
        )
    }

    /// Creates (or adopts) the devices and puts the lease's network address on them.
    pub async fn setup(&mut self, nl: &Netlink) -> Result<Published, BackendError> {
        let underlay = self.cfg.mtu.unwrap_or(self.local.ext_mtu);
        let (n4, n6) = self.device_names();
        let mut published = Published {
            backend_type: "vxlan".into(),
            backend_data: None,
            backend_v6_data: None,
            mtu: underlay.saturating_sub(OVERHEAD_V4),
        };
        if self.local.network.is_some() {
            let src = self.local.iface_addr.map(IpAddr::V4);
            let seed = self
                .local
                .public_ip
                .map(IpAddr::V4)
                .or(src)
                .ok_or_else(|| {
                    BackendError::Unsupported(format!(
                        "vxlan: interface {} has no IPv4 address",
                        self.local.ext_name
                    ))
                })?;
            let mtu = underlay.saturating_sub(OVERHEAD_V4);
            // A device recreated after it was deleted keeps the MAC our lease announces, so peers' FDB and
            // neighbour entries stay right; a new one gets the MAC derived from (public IP, VNI).
            let mac = self
                .v4
                .as_ref()
                .map(|d| d.mac)
                .or(self.preferred.0)
                .unwrap_or_else(|| stable_vtep_mac(seed, self.cfg.vni));
            let dev = self.device(nl, n4, src, mtu, mac).await?;
            published.backend_data =
                Some(json!({"VNI": self.cfg.vni, "VtepMAC": dev.mac.to_string()}).into());
            self.v4 = Some(dev);
        }
        if self.local.ipv6_network.is_some() {
            let src = self.local.iface_v6_addr.map(IpAddr::V6);
            let seed = self
                .local
                .public_ipv6
                .map(IpAddr::V6)
                .or(src)
                .ok_or_else(|| {
                    BackendError::Unsupported(format!(
                        "vxlan: interface {} has no IPv6 address",
                        self.local.ext_name
                    ))
                })?;
            let mtu6 = underlay.saturating_sub(OVERHEAD_V6);
            let mac = self
                .v6
                .as_ref()
                .map(|d| d.mac)
                .or(self.preferred.1)
                .unwrap_or_else(|| stable_vtep_mac(seed, self.cfg.vni));
            let dev = self.device(nl, n6, src, mtu6, mac).await?;
            published.backend_v6_data =
                Some(json!({"VNI": self.cfg.vni, "VtepMAC": dev.mac.to_string()}).into());
            published.mtu = if self.local.network.is_none() {
                mtu6
            } else {
                published.mtu.min(mtu6)
            };
            self.v6 = Some(dev);
        }
        self.onlink = onlink_prefixes(nl, self.local.ext_index).await?;
        Ok(published)
    }

    /// Re-reads the external interface's connected prefixes (which peers DirectRouting reaches directly).
    pub async fn refresh(&mut self, nl: &Netlink) -> Result<(), BackendError> {
        self.onlink = onlink_prefixes(nl, self.local.ext_index).await?;
        Ok(())
    }

    /// A vxlan peer must announce a unicast VTEP MAC for every family it has a subnet of (upstream skips a lease
    /// whose backend data does not decode the same way); the MAC is claimed exclusively.
    pub fn admit_peer(
        &self,
        lease: &Lease,
        peer: &mut Peer,
        claims: &mut Vec<Claim>,
    ) -> Result<(), String> {
        check_type(lease, "vxlan")?;
        if peer.subnet.is_some() && self.v4.is_some() {
            let mac = check_vtep_mac(lease.attrs.backend_data.as_ref(), "BackendData")?;
            peer.data = PeerData::Vtep {
                v4: Some(mac),
                v6: peer.data.vtep(true),
            };
            claims.push(Claim::VtepMac4(mac));
        }
        if peer.ipv6_subnet.is_some() && self.v6.is_some() {
            let mac = check_vtep_mac(lease.attrs.backend_v6_data.as_ref(), "BackendV6Data")?;
            peer.data = PeerData::Vtep {
                v4: peer.data.vtep(false),
                v6: Some(mac),
            };
            claims.push(Claim::VtepMac6(mac));
        }
        Ok(())
    }

    /// Our own VTEP MACs: no peer may announce them.
    pub fn own_claims(&self) -> Vec<Claim> {
        let mut c = Vec::new();
        c.extend(self.v4.as_ref().map(|d| Claim::VtepMac4(d.mac)));
        c.extend(self.v6.as_ref().map(|d| Claim::VtepMac6(d.mac)));
        c
    }

    async fn device(
        &self,
        nl: &Netlink,
        name: String,
        src: Option<IpAddr>,
        mtu: u32,
        mac: Mac,
    ) -> Result<Device, BackendError> {
        let l = nl
            .ensure_vxlan(&VxlanSpec {
                name,
                vni: self.cfg.vni,
                local: src,
                dev: Some(self.local.ext_index),
                port: self.cfg.port,
                learning: self.cfg.learning,
                gbp: self.cfg.gbp,
                mtu: Some(mtu),
                mac,
            })
            .await?;
        let mac = l
            .mac
            .ok_or_else(|| BackendError::Unsupported(format!("{} has no MAC", l.name)))?;
        // 0 is the kernel's default port, which Linux's VXLAN driver takes as 8472 (not IANA's 4789).
        let port = if self.cfg.port == 0 {
            8472
        } else {
            self.cfg.port
        };
        tracing::info!(
            "VXLAN device {}: VNI {}, UDP port {port}, local {} on {}, VTEP MAC {mac}, MTU {mtu}",
            l.name,
            self.cfg.vni,
            src.map(|a| a.to_string()).unwrap_or_else(|| "any".into()),
            self.local.ext_name,
        );
        Ok(Device {
            index: l.index,
            mac,
        })
    }

    /// Puts the lease's network address (`.0/32`, `::/128`) on the devices, replacing a previous lease's.
    pub async fn set_lease(&mut self, nl: &Netlink, local: &Local) -> Result<(), BackendError> {
        self.local = local.clone();
        if let (Some(d), Some(sub)) = (&self.v4, local.subnet) {
            ensure_only_address(
                nl,
                d.index,
                IpNet::new(IpAddr::V4(sub.network()), 32).map_err(cfg_err)?,
            )
            .await?;
        }
        if let (Some(d), Some(sub)) = (&self.v6, local.ipv6_subnet) {
            ensure_only_address(
                nl,
                d.index,
                IpNet::new(IpAddr::V6(sub.network()), 128).map_err(cfg_err)?,
            )
            .await?;
        }
        Ok(())
    }

    /// Whether the devices still exist (someone may delete `flannel.1`; the daemon then sets it up again).
    pub async fn devices_present(&self, nl: &Netlink) -> Result<bool, BackendError> {
        for d in [&self.v4, &self.v6].into_iter().flatten() {
            if nl.link_by_index(d.index).await?.is_none() {
                return Ok(false);
            }
        }
        Ok(true)
    }

    fn direct(&self, ip: IpAddr) -> bool {
        self.cfg.direct_routing && self.onlink.iter().any(|n| n.contains(&ip))
    }

    /// Programs every vxlan peer and removes entries no lease wants.
    pub async fn reconcile(
        &mut self,
        nl: &Netlink,
        peers: &[Peer],
    ) -> Result<Report, BackendError> {
        let mut report = Report::default();
        let mut ops = Vec::new();
        for v6 in [false, true] {
            let Some(dev) = (if v6 {
                self.v6.as_ref()
            } else {
                self.v4.as_ref()
            }) else {
                continue;
            };
            // Desired state for this family.
            let mut routes: HashMap<IpNet, (IpAddr, u32, bool)> = HashMap::new();
            let mut neigh: HashMap<IpAddr, Mac> = HashMap::new();
            let mut fdb: HashSet<(Mac, IpAddr)> = HashSet::new();
            for p in peers {
                if is_self(&self.local, p) {
                    continue;
                }
                let (subnet, public, data) = if v6 {
                    (
                        p.ipv6_subnet.map(IpNet::V6),
                        p.public_ipv6.map(IpAddr::V6),
                        p.data.vtep(true),
                    )
                } else {
                    (
                        p.subnet.map(IpNet::V4),
                        p.public_ip.map(IpAddr::V4),
                        p.data.vtep(false),
                    )
                };
                // Admission guarantees all three for every family the peer has a subnet of.
                let (Some(subnet), Some(public), Some(mac)) = (subnet, public, data) else {
                    continue;
                };
                if self.direct(public) {
                    routes.insert(subnet, (public, self.local.ext_index, false));
                    continue;
                }
                let gw = subnet.network();
                routes.insert(subnet, (gw, dev.index, true));
                neigh.insert(gw, mac);
                fdb.insert((mac, public));
            }

            // Current state, one dump each.
            let have_routes = nl.routes(v6).await?;
            let mut have_route_set: HashSet<(IpNet, Option<IpAddr>, Option<u32>)> = HashSet::new();
            for r in have_routes.iter() {
                // Every route we make has a next hop (the peer's `.0` on the device, or the peer itself with
                // DirectRouting). Next-hop-less routes on the device are the kernel's: IPv6 adds a prefix
                // route for the device's own /128 address, which must not be reconciled away. A routed next hop
                // on our own device is ours whatever its destination (an earlier version, or upstream, may have
                // programmed a lease outside the network); on the external interface only our protocol or the
                // flannel networks say so.
                let on_device = r.table == Some(254)
                    && !r.blackhole
                    && r.gateway.is_some()
                    && r.oif == Some(dev.index);
                if !on_device && !managed_route(&self.local, r, self.local.ext_index) {
                    continue;
                }
                match routes.get(&r.dst) {
                    Some((gw, oif, _)) if r.gateway == Some(*gw) && r.oif == Some(*oif) => {
                        have_route_set.insert((r.dst, r.gateway, r.oif));
                    }
                    Some(_) => {} // replaced below
                    None => ops.push(Op::DelRoute(r.clone())),
                }
            }
            for (dst, (gw, oif, onlink)) in &routes {
                if !have_route_set.contains(&(*dst, Some(*gw), Some(*oif))) {
                    let mut r = Route::new(*dst).via(*gw).dev(*oif).protocol(ROUTE_PROTOCOL);
                    r.onlink = *onlink;
                    ops.push(Op::AddRoute(r));
                }
            }
            let have_neigh = nl.neighbours(dev.index, v6).await?;
            let mut ok_neigh = HashSet::new();
            for n in have_neigh.into_iter().filter(|n| n.permanent) {
                match (n.ip, n.mac) {
                    (Some(ip), Some(mac)) if neigh.get(&ip) == Some(&mac) => {
                        ok_neigh.insert(ip);
                    }
                    (Some(ip), _) if neigh.contains_key(&ip) => {} // replaced below
                    _ => ops.push(Op::DelNeigh(n)),
                }
            }
            for (ip, mac) in &neigh {
                if !ok_neigh.contains(ip) {
                    ops.push(Op::Neigh(dev.index, *ip, *mac));
                }
            }
            let have_fdb = nl.fdb_entries(dev.index).await?;
            let mut ok_fdb = HashSet::new();
            for n in have_fdb.into_iter().filter(|n| n.ip.is_some()) {
                match (n.mac, n.ip) {
                    (Some(mac), Some(ip)) if fdb.contains(&(mac, ip)) => {
                        ok_fdb.insert((mac, ip));
                    }
                    // Entries without a remote (the all-zero default) are not ours to manage.
                    (Some(mac), _) if mac == Mac::default() => {}
                    _ => ops.push(Op::DelNeigh(n)),
                }
            }
            for e in &fdb {
                if !ok_fdb.contains(e) {
                    ops.push(Op::Fdb(dev.index, e.0, e.1));
                }
            }
        }
        // Counted as they complete: a pass over thousands of peers should not also hold thousands of results.
        let mut first_err = None;
        let mut results = stream::iter(ops)
            .map(|op| async move {
                match op {
                    Op::Neigh(i, ip, mac) => nl.set_neighbour(i, ip, mac).await.map(|_| true),
                    Op::Fdb(i, mac, ip) => nl.set_fdb(i, mac, ip).await.map(|_| true),
                    Op::AddRoute(r) => nl.add_route(&r, true).await.map(|_| true),
                    Op::DelRoute(r) => nl.delete_route(&r).await.map(|_| false),
                    Op::DelNeigh(n) => nl.delete_neighbour(&n).await.map(|_| false),
                }
            })
            .buffer_unordered(PIPELINE);
        while let Some(r) = results.next().await {
            match r {
                Ok(true) => report.added += 1,
                Ok(false) => report.removed += 1,
                Err(e) => {
                    tracing::warn!(error = %e, "vxlan reconcile step failed");
                    first_err.get_or_insert(e);
                }
            }
        }
        match first_err {
            Some(e) => Err(e.into()),
            None => Ok(report),
        }
    }

    /// Our VTEP MAC (IPv4 device), once set up.
    pub fn vtep_mac(&self) -> Option<Mac> {
        self.v4.as_ref().or(self.v6.as_ref()).map(|d| d.mac)
    }
}

#[async_trait::async_trait]
impl Backend for Vxlan {
    fn type_name(&self) -> &'static str {
        "vxlan"
    }
    fn prefer_vtep_macs(&mut self, v4: Option<Mac>, v6: Option<Mac>) {
        self.prefer_macs(v4, v6);
    }
    async fn setup(&mut self, nl: &Netlink) -> Result<Published, BackendError> {
        Vxlan::setup(self, nl).await
    }
    async fn set_lease(&mut self, nl: &Netlink, local: &Local) -> Result<(), BackendError> {
        Vxlan::set_lease(self, nl, local).await
    }
    async fn refresh(&mut self, nl: &Netlink) -> Result<(), BackendError> {
        Vxlan::refresh(self, nl).await
    }
    async fn devices_present(&self, nl: &Netlink) -> Result<bool, BackendError> {
        Vxlan::devices_present(self, nl).await
    }
    async fn reconcile(&mut self, nl: &Netlink, peers: &[Peer]) -> Result<Report, BackendError> {
        Vxlan::reconcile(self, nl, peers).await
    }
}

impl PeerRules for Vxlan {
    fn admit_peer(
        &self,
        lease: &Lease,
        peer: &mut Peer,
        claims: &mut Vec<Claim>,
    ) -> Result<(), String> {
        Vxlan::admit_peer(self, lease, peer, claims)
    }
    fn own_claims(&self) -> Vec<Claim> {
        Vxlan::own_claims(self)
    }
}

fn cfg_err(e: ipnet::PrefixLenError) -> BackendError {
    BackendError::Config(e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_options_case_insensitively() {
        let c = VxlanConfig::parse(
            &json!({"Type":"vxlan","vni":4096,"port":4789,"directRouting":true}),
        )
        .unwrap();
        assert_eq!(c.vni, 4096);
        assert_eq!(c.port, 4789);
        assert!(c.direct_routing);
        let d = VxlanConfig::parse(&json!({})).unwrap();
        assert_eq!(
            d,
            VxlanConfig {
                vni: 1,
                port: 0,
                gbp: false,
                learning: false,
                mtu: None,
                direct_routing: false
            }
        );
    }

    #[test]
    fn rejects_bad_options_naming_key() {
        let e = VxlanConfig::parse(&json!({"VNI": -1}))
            .unwrap_err()
            .to_string();
        assert!(e.contains("VNI"), "{e}");
        let e = VxlanConfig::parse(&json!({"Port": 70000}))
            .unwrap_err()
            .to_string();
        assert!(e.contains("Port") && e.contains("70000"), "{e}");
        let e = VxlanConfig::parse(&json!({"DirectRouting": "yes"}))
            .unwrap_err()
            .to_string();
        assert!(e.contains("DirectRouting"), "{e}");
    }
}
