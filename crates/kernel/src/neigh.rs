//! Neighbour (ARP/NDP) entries and bridge FDB entries, as an overlay programs them per peer.

use crate::error::{Error, Result};
use crate::link::Mac;
use crate::netlink::{is_errno, Netlink};
use futures::TryStreamExt;
use netlink_packet_route::neighbour::{
    NeighbourAddress, NeighbourAttribute, NeighbourFlags, NeighbourMessage, NeighbourState,
};
use netlink_packet_route::AddressFamily;
use std::net::IpAddr;

/// A neighbour or FDB entry read from the kernel.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Neighbour {
    /// Link index.
    pub index: u32,
    /// IP address (for FDB entries: the remote VTEP, `dst`).
    pub ip: Option<IpAddr>,
    /// Link-layer address.
    pub mac: Option<Mac>,
    /// `NUD_PERMANENT`.
    pub permanent: bool,
    msg: NeighbourMessage,
}

fn parse(m: NeighbourMessage) -> Neighbour {
    let mut n = Neighbour {
        index: m.header.ifindex,
        ip: None,
        mac: None,
        permanent: m.header.state == NeighbourState::Permanent,
        msg: NeighbourMessage::default(),
    };
    for a in &m.attributes {
        match a {
            NeighbourAttribute::Destination(NeighbourAddress::Inet(v)) => {
                n.ip = Some(IpAddr::V4(*v))
            }
            NeighbourAttribute::Destination(NeighbourAddress::Inet6(v)) => {
                n.ip = Some(IpAddr::V6(*v))
            }
            // FDB entries (family AF_BRIDGE) carry their remote as raw bytes.
            NeighbourAttribute::Destination(NeighbourAddress::Other(b)) => {
                n.ip = match b.len() {
                    4 => <[u8; 4]>::try_from(b.as_slice()).ok().map(IpAddr::from),
                    16 => <[u8; 16]>::try_from(b.as_slice()).ok().map(IpAddr::from),
                    _ => None,
                }
            }
            NeighbourAttribute::LinkLayerAddress(b) if b.len() == 6 => {
                let mut mac = [0u8; 6];
                mac.copy_from_slice(b);
                n.mac = Some(Mac(mac));
            }
            _ => {}
        }
    }
    n.msg = m;
    n
}

impl Netlink {
    /// Sets a permanent neighbour entry `ip → mac` on a link (replacing any other entry for `ip`).
    pub async fn set_neighbour(&self, index: u32, ip: IpAddr, mac: Mac) -> Result<()> {
        self.handle
            .neighbours()
            .add(index, ip)
            .link_layer_address(&mac.0)
            .state(NeighbourState::Permanent)
            .replace()
            .execute()
            .await
            .map_err(|e| {
                Error::nl(
                    format!("set neighbour {ip} lladdr {mac} on link #{index}"),
                    e,
                )
            })
    }

    /// Sets a permanent FDB entry `mac → dst` on a VXLAN device (`bridge fdb replace … self dst …`).
    pub async fn set_fdb(&self, index: u32, mac: Mac, dst: IpAddr) -> Result<()> {
        self.handle
            .neighbours()
            .add_bridge(index, &mac.0)
            .flags(NeighbourFlags::Own)
            .destination(dst)
            .state(NeighbourState::Permanent)
            .replace()
            .execute()
            .await
            .map_err(|e| Error::nl(format!("set fdb {mac} dst {dst} on link #{index}"), e))
    }

    /// Neighbour entries of one family on a link.
    pub async fn neighbours(&self, index: u32, ipv6: bool) -> Result<Vec<Neighbour>> {
        let fam = if ipv6 {
            AddressFamily::Inet6
        } else {
            AddressFamily::Inet
        };
        self.dump_neigh(fam, index).await
    }

    /// FDB entries on a link (VXLAN device or bridge port).
    pub async fn fdb_entries(&self, index: u32) -> Result<Vec<Neighbour>> {
        self.dump_neigh(AddressFamily::Bridge, index).await
    }

    async fn dump_neigh(&self, fam: AddressFamily, index: u32) -> Result<Vec<Neighbour>> {
        let mut req = self.handle.neighbours().get().set_address_family(fam);
        req.message_mut().header.ifindex = index;
        let msgs: Vec<NeighbourMessage> = req
            .execute()
            .try_collect()
            .await
            .map_err(|e| Error::nl(format!("list neighbours of link #{index}"), e))?;
        Ok(msgs
            .into_iter()
            .filter(|m| m.header.ifindex == index)
            .map(parse)
            .collect())
    }

    /// Deletes a neighbour or FDB entry read by [`Netlink::neighbours`] / [`Netlink::fdb_entries`].
    pub async fn delete_neighbour(&self, n: &Neighbour) -> Result<()> {
        match self.handle.neighbours().del(n.msg.clone()).execute().await {
            Ok(()) => Ok(()),
            Err(e) if is_errno(&e, libc::ENOENT) || is_errno(&e, libc::ESRCH) => Ok(()),
            Err(e) => Err(Error::nl(
                format!(
                    "delete neighbour {:?} {:?} on link #{}",
                    n.ip, n.mac, n.index
                ),
                e,
            )),
        }
    }
}
