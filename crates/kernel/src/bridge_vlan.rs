//! Bridge VLAN membership (the kernel's VLAN filtering table, what `bridge vlan show` prints): per-port and
//! bridge-self VLAN entries set with `RTM_SETLINK`/`RTM_DELLINK` of family `AF_BRIDGE` carrying
//! `IFLA_AF_SPEC { IFLA_BRIDGE_VLAN_INFO }`, and read with an `AF_BRIDGE` dump filtered by `RTEXT_FILTER_BRVLAN`.
//!
//! Every operation is idempotent: adding an entry that exists rewrites its flags, deleting one that is not there
//! is not an error.

use crate::error::{Error, Result};
use crate::netlink::{is_errno, Netlink};
use futures::TryStreamExt;
use netlink_packet_route::link::{
    AfSpecBridge, BridgeVlanInfoFlags, LinkAttribute, LinkExtentMask, LinkMessage,
};
use netlink_packet_route::AddressFamily;
use rtnetlink::LinkBridgeVlan;

/// One VLAN entry of a bridge port (or of the bridge itself).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct VlanEntry {
    /// VLAN ID.
    pub vid: u16,
    /// Untagged frames entering the port are put in this VLAN.
    pub pvid: bool,
    /// Frames of this VLAN leave the port untagged.
    pub untagged: bool,
}

/// The flags of an entry as the kernel takes them.
pub fn vlan_flags(pvid: bool, untagged: bool) -> BridgeVlanInfoFlags {
    let mut f = BridgeVlanInfoFlags::empty();
    if pvid {
        f |= BridgeVlanInfoFlags::Pvid;
    }
    if untagged {
        f |= BridgeVlanInfoFlags::Untagged;
    }
    f
}

/// The VLAN entries carried by one `AF_BRIDGE` link message (ranges expanded).
pub fn entries_of(m: &LinkMessage) -> Vec<VlanEntry> {
    let mut out = Vec::new();
    let mut range_start: Option<u16> = None;
    for a in &m.attributes {
        let LinkAttribute::AfSpecBridge(specs) = a else {
            continue;
        };
        for s in specs {
            let AfSpecBridge::VlanInfo(v) = s else {
                continue;
            };
            let pvid = v.flags.contains(BridgeVlanInfoFlags::Pvid);
            let untagged = v.flags.contains(BridgeVlanInfoFlags::Untagged);
            if v.flags.contains(BridgeVlanInfoFlags::RangeBegin) {
                range_start = Some(v.vid);
                continue;
            }
            let first = if v.flags.contains(BridgeVlanInfoFlags::RangeEnd) {
                range_start.take().unwrap_or(v.vid)
            } else {
                v.vid
            };
            for vid in first..=v.vid {
                out.push(VlanEntry {
                    vid,
                    pvid,
                    untagged,
                });
            }
        }
    }
    out
}

impl Netlink {
    /// Adds (or updates) VLAN `vid` on bridge port `index`; with `bridge_self`, on the bridge device itself
    /// (`bridge vlan add … self`).
    pub async fn bridge_vlan_add(
        &self,
        index: u32,
        vid: u16,
        pvid: bool,
        untagged: bool,
        bridge_self: bool,
    ) -> Result<()> {
        let mut b = LinkBridgeVlan::new(index).vlan(vid, vlan_flags(pvid, untagged));
        if bridge_self {
            b = b.bridge_self();
        }
        self.handle
            .link()
            .set(b.build())
            .execute()
            .await
            .map_err(|e| Error::nl(format!("add VLAN {vid} on link #{index}"), e))
    }

    /// Removes VLAN `vid` from bridge port `index` (or the bridge itself with `bridge_self`); an entry that is not
    /// there is not an error.
    pub async fn bridge_vlan_del(&self, index: u32, vid: u16, bridge_self: bool) -> Result<()> {
        let mut b = LinkBridgeVlan::new(index).vlan(vid, BridgeVlanInfoFlags::empty());
        if bridge_self {
            b = b.bridge_self();
        }
        match self
            .handle
            .link()
            .del_with_message(b.build())
            .execute()
            .await
        {
            Ok(()) => Ok(()),
            Err(e) if is_errno(&e, libc::ENOENT) || is_errno(&e, libc::ENODEV) => Ok(()),
            Err(e) => Err(Error::nl(format!("delete VLAN {vid} on link #{index}"), e)),
        }
    }

    /// The VLAN entries of bridge port (or bridge) `index`; empty if it has none or is not a bridge port.
    pub async fn bridge_vlans(&self, index: u32) -> Result<Vec<VlanEntry>> {
        let mut req = self.handle.link().get();
        req = req.set_filter_mask(AddressFamily::Bridge, vec![LinkExtentMask::Brvlan]);
        let msgs: Vec<LinkMessage> = req
            .execute()
            .try_collect()
            .await
            .map_err(|e| Error::nl("list bridge VLANs", e))?;
        // A port is reported once as a port; a bridge with VLAN entries of its own also appears for itself.
        Ok(msgs
            .iter()
            .filter(|m| m.header.index == index)
            .flat_map(entries_of)
            .collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use netlink_packet_route::link::BridgeVlanInfo;

    fn msg(index: u32, infos: &[(u16, BridgeVlanInfoFlags)]) -> LinkMessage {
        let mut m = LinkMessage::default();
        m.header.index = index;
        m.attributes.push(LinkAttribute::AfSpecBridge(
            infos
                .iter()
                .map(|&(vid, flags)| AfSpecBridge::VlanInfo(BridgeVlanInfo { vid, flags }))
                .collect(),
        ));
        m
    }

    /// The `RTM_SETLINK` body is what `bridge vlan add dev <port> vid 100 pvid untagged` sends: family
    /// `AF_BRIDGE`, the port index, `IFLA_AF_SPEC { IFLA_BRIDGE_VLAN_INFO { flags 0x6, vid 100 } }`.
    #[test]
    fn set_message_encoding() {
        use netlink_packet_core::Emitable;
        let m = LinkBridgeVlan::new(5)
            .vlan(100, vlan_flags(true, true))
            .build();
        let mut buf = vec![0u8; m.buffer_len()];
        m.emit(&mut buf);
        assert_eq!(buf[0], libc::AF_BRIDGE as u8);
        assert_eq!(&buf[4..8], &5i32.to_ne_bytes());
        let attrs = &buf[16..];
        assert_eq!(attrs.len(), 12, "{attrs:?}");
        assert_eq!(u16::from_ne_bytes([attrs[0], attrs[1]]), 12);
        assert_eq!(u16::from_ne_bytes([attrs[2], attrs[3]]) & 0x3fff, 26); // IFLA_AF_SPEC
        assert_eq!(u16::from_ne_bytes([attrs[4], attrs[5]]), 8);
        assert_eq!(u16::from_ne_bytes([attrs[6], attrs[7]]), 2); // IFLA_BRIDGE_VLAN_INFO
        assert_eq!(u16::from_ne_bytes([attrs[8], attrs[9]]), 0x6);
        assert_eq!(u16::from_ne_bytes([attrs[10], attrs[11]]), 100);
        // `self`: IFLA_BRIDGE_FLAGS = BRIDGE_FLAGS_SELF (2) joins the same IFLA_AF_SPEC.
        let m = LinkBridgeVlan::new(5)
            .vlan(7, vlan_flags(false, false))
            .bridge_self()
            .build();
        let mut buf = vec![0u8; m.buffer_len()];
        m.emit(&mut buf);
        let attrs = &buf[16..];
        assert_eq!(
            u16::from_ne_bytes([attrs[0], attrs[1]]) as usize,
            attrs.len()
        );
        assert_eq!(u16::from_ne_bytes([attrs[14], attrs[15]]), 0); // IFLA_BRIDGE_FLAGS
        assert_eq!(u16::from_ne_bytes([attrs[16], attrs[17]]), 2);
    }

    #[test]
    fn flags_and_ranges() {
        assert_eq!(vlan_flags(true, true).bits(), 0x6);
        assert_eq!(vlan_flags(false, true).bits(), 0x4);
        assert_eq!(vlan_flags(true, false).bits(), 0x2);
        assert!(vlan_flags(false, false).is_empty());
        let m = msg(
            3,
            &[
                (100, vlan_flags(true, true)),
                (200, BridgeVlanInfoFlags::RangeBegin),
                (202, BridgeVlanInfoFlags::RangeEnd),
            ],
        );
        let e = entries_of(&m);
        assert_eq!(
            e,
            vec![
                VlanEntry {
                    vid: 100,
                    pvid: true,
                    untagged: true
                },
                VlanEntry {
                    vid: 200,
                    pvid: false,
                    untagged: false
                },
                VlanEntry {
                    vid: 201,
                    pvid: false,
                    untagged: false
                },
                VlanEntry {
                    vid: 202,
                    pvid: false,
                    untagged: false
                },
            ]
        );
    }
}
