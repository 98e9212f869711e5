//! VXLAN devices (`flannel.<VNI>`): created once, kept across restarts when they still match the configuration.

use crate::error::{Error, Result};
use crate::link::{Link, Mac};
use crate::netlink::{is_errno, Netlink};
use futures::TryStreamExt;
use netlink_packet_route::link::{InfoData, InfoVxlan, LinkAttribute, LinkInfo, LinkMessage};
use rtnetlink::LinkVxlan;
use std::net::IpAddr;

/// The configuration of a VXLAN device.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VxlanSpec {
    /// Device name.
    pub name: String,
    /// VXLAN network identifier.
    pub vni: u32,
    /// Local (source) address: the node's public IP.
    pub local: Option<IpAddr>,
    /// Underlay device index.
    pub dev: Option<u32>,
    /// UDP destination port (0 = kernel default).
    pub port: u16,
    /// Learn remote MACs from traffic.
    pub learning: bool,
    /// Group-based policy extension.
    pub gbp: bool,
    /// Device MTU.
    pub mtu: Option<u32>,
    /// MAC for a newly created device (an existing matching device keeps its own).
    pub mac: Mac,
}

#[derive(Debug, Default, PartialEq, Eq)]
struct Current {
    vni: Option<u32>,
    local: Option<IpAddr>,
    dev: Option<u32>,
    port: Option<u16>,
    learning: Option<bool>,
    gbp: bool,
}

fn current(m: &LinkMessage) -> Option<Current> {
    let mut c = Current::default();
    let mut is_vxlan = false;
    for a in &m.attributes {
        if let LinkAttribute::LinkInfo(infos) = a {
            for i in infos {
                if let LinkInfo::Data(InfoData::Vxlan(opts)) = i {
                    is_vxlan = true;
                    for o in opts {
                        match o {
                            InfoVxlan::Id(v) => c.vni = Some(*v),
                            InfoVxlan::Local(v) => c.local = Some(IpAddr::V4(*v)),
                            InfoVxlan::Local6(v) => c.local = Some(IpAddr::V6(*v)),
                            InfoVxlan::Link(v) => c.dev = Some(*v),
                            InfoVxlan::Port(v) => c.port = Some(*v),
                            InfoVxlan::Learning(v) => c.learning = Some(*v),
                            InfoVxlan::Gbp => c.gbp = true,
                            _ => {}
                        }
                    }
                }
            }
        }
    }
    is_vxlan.then_some(c)
}

impl Netlink {
    /// Ensures the VXLAN device exists with this configuration and is up. A device of that name that differs
    /// (or is not VXLAN) is replaced; a matching one is kept with its MAC and its neighbour/FDB entries, so
    /// traffic keeps flowing across daemon restarts. Returns the device.
    pub async fn ensure_vxlan(&self, spec: &VxlanSpec) -> Result<Link> {
        let existing: Option<LinkMessage> = {
            let mut s = self
                .handle
                .link()
                .get()
                .match_name(spec.name.clone())
                .execute();
            match s.try_next().await {
                Ok(m) => m,
                Err(e) if is_errno(&e, libc::ENODEV) => None,
                Err(e) => return Err(Error::nl(format!("get link {}", spec.name), e)),
            }
        };
        if let Some(m) = existing {
            let index = m.header.index;
            let port = if spec.port == 0 { 8472 } else { spec.port };
            let matches = current(&m).is_some_and(|c| {
                c.vni == Some(spec.vni)
                    && (spec.local.is_none() || c.local == spec.local)
                    && (spec.dev.is_none() || c.dev == spec.dev)
                    && c.port.unwrap_or(8472) == port
                    && c.learning.unwrap_or(true) == spec.learning
                    && c.gbp == spec.gbp
            });
            if matches {
                let mut l = self
                    .link_by_index(index)
                    .await?
                    .ok_or_else(|| Error::NotFound(format!("link {}", spec.name)))?;
                if spec.mtu.is_some_and(|m| m != l.mtu) || !l.up {
                    let mut b = rtnetlink::LinkUnspec::new_with_index(index).up();
                    if let Some(mtu) = spec.mtu {
                        b = b.mtu(mtu);
                        l.mtu = mtu;
                    }
                    self.handle
                        .link()
                        .set(b.build())
                        .execute()
                        .await
                        .map_err(|e| Error::nl(format!("set {} up", spec.name), e))?;
                    l.up = true;
                }
                return Ok(l);
            }
            tracing::warn!(device = %spec.name, "existing device does not match the VXLAN configuration; recreating it");
            self.delete_link(index).await?;
        }
        let mut b = LinkVxlan::new(&spec.name, spec.vni)
            .learning(spec.learning)
            .address(spec.mac.0.to_vec());
        match spec.local {
            Some(IpAddr::V4(v)) => b = b.local(v),
            Some(IpAddr::V6(v)) => b = b.local6(v),
            None => {}
        }
        if let Some(d) = spec.dev {
            b = b.dev(d);
        }
        b = b.port(if spec.port == 0 { 8472 } else { spec.port });
        if spec.gbp {
            b = b.gbp();
        }
        if let Some(m) = spec.mtu {
            b = b.mtu(m);
        }
        self.handle
            .link()
            .add(b.up().build())
            .execute()
            .await
            .map_err(|e| {
                Error::nl(
                    format!("create vxlan device {} (vni {})", spec.name, spec.vni),
                    e,
                )
            })?;
        self.link_by_name(&spec.name)
            .await?
            .ok_or_else(|| Error::NotFound(format!("link {} after creating it", spec.name)))
    }
}

/// A MAC for a VTEP derived from the node's public IP and VNI: the same node gets the same MAC even when its
/// device is recreated (after a reboot), so peers' ARP/FDB entries for it never go stale.
pub fn stable_vtep_mac(public_ip: IpAddr, vni: u32) -> Mac {
    // FNV-1a over the inputs: stable across versions and platforms, no extra dependency.
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    let bytes: Vec<u8> = match public_ip {
        IpAddr::V4(v) => v.octets().to_vec(),
        IpAddr::V6(v) => v.octets().to_vec(),
    };
    for b in bytes.iter().chain(vni.to_be_bytes().iter()) {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    let b = h.to_be_bytes();
    Mac([(b[0] & 0xfe) | 0x02, b[1], b[2], b[3], b[4], b[5]])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stable_mac_is_stable_local_unicast() {
        let a = stable_vtep_mac("192.0.2.1".parse().unwrap(), 1);
        assert_eq!(a, stable_vtep_mac("192.0.2.1".parse().unwrap(), 1));
        assert_ne!(a, stable_vtep_mac("192.0.2.2".parse().unwrap(), 1));
        assert_ne!(a, stable_vtep_mac("192.0.2.1".parse().unwrap(), 2));
        assert_eq!(a.0[0] & 0x03, 0x02);
    }
}
