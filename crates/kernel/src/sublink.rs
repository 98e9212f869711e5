//! Sub-interfaces of a "master" link (macvlan, ipvlan, 802.1Q vlan): the one `RTM_NEWLINK` that makes one,
//! directly in a target namespace, and what `RTM_GETLINK` says about an existing one.
//!
//! The request is built here attribute by attribute rather than with rtnetlink's builders so that its bytes are
//! known: they are the ones iproute2 sends for `ip link add link <master> name <name> [mtu N] [address MAC]
//! [netns NS] type <kind> ...` (same attributes, same order), which the plugins' tests compare byte for byte on
//! kernels that lack the kind.

use crate::error::{Error, Result};
use crate::link::Mac;
use crate::netlink::{is_errno, Netlink};
use futures::TryStreamExt;
use netlink_packet_core::{
    DefaultNla, NetlinkHeader, NetlinkMessage, NetlinkPayload, NLM_F_ACK, NLM_F_CREATE, NLM_F_EXCL,
    NLM_F_REQUEST,
};
use netlink_packet_route::link::{
    InfoData, InfoIpVlan, InfoMacVlan, InfoVlan, IpVlanFlags, IpVlanMode as NlIpVlanMode,
    LinkAttribute, LinkInfo, LinkMessage, MacVlanMode as NlMacVlanMode,
};
use netlink_packet_route::RouteNetlinkMessage;
use std::os::fd::RawFd;

/// `IFLA_INFO_KIND`.
const IFLA_INFO_KIND: u16 = 1;

/// A macvlan mode (`IFLA_MACVLAN_MODE`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MacvlanMode {
    /// Frames between sub-interfaces of one master are dropped.
    Private,
    /// Frames between sub-interfaces go out to the adjacent switch (which must hairpin them).
    Vepa,
    /// Frames between sub-interfaces are switched inside the master.
    Bridge,
    /// The one sub-interface takes over the master.
    Passthru,
}

impl MacvlanMode {
    /// The CNI configuration's name of a mode (`bridge`, `private`, `vepa`, `passthru`).
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "bridge" => Some(Self::Bridge),
            "private" => Some(Self::Private),
            "vepa" => Some(Self::Vepa),
            "passthru" => Some(Self::Passthru),
            _ => None,
        }
    }

    /// The mode's configuration name.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Bridge => "bridge",
            Self::Private => "private",
            Self::Vepa => "vepa",
            Self::Passthru => "passthru",
        }
    }

    fn to_nl(self) -> NlMacVlanMode {
        match self {
            Self::Bridge => NlMacVlanMode::Bridge,
            Self::Private => NlMacVlanMode::Private,
            Self::Vepa => NlMacVlanMode::Vepa,
            Self::Passthru => NlMacVlanMode::Passthrough,
        }
    }

    fn from_nl(m: NlMacVlanMode) -> Option<Self> {
        match m {
            NlMacVlanMode::Bridge => Some(Self::Bridge),
            NlMacVlanMode::Private => Some(Self::Private),
            NlMacVlanMode::Vepa => Some(Self::Vepa),
            NlMacVlanMode::Passthrough => Some(Self::Passthru),
            _ => None,
        }
    }
}

/// An ipvlan mode (`IFLA_IPVLAN_MODE`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IpvlanMode {
    /// Switching by MAC address on the master's L2.
    L2,
    /// Routing by IP address, no multicast or ARP on the sub-interfaces.
    L3,
    /// L3 with netfilter hooks (the traffic passes the node's firewall).
    L3s,
}

impl IpvlanMode {
    /// The CNI configuration's name of a mode (`l2`, `l3`, `l3s`).
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "l2" => Some(Self::L2),
            "l3" => Some(Self::L3),
            "l3s" => Some(Self::L3s),
            _ => None,
        }
    }

    /// The mode's configuration name.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::L2 => "l2",
            Self::L3 => "l3",
            Self::L3s => "l3s",
        }
    }

    fn to_nl(self) -> NlIpVlanMode {
        match self {
            Self::L2 => NlIpVlanMode::L2,
            Self::L3 => NlIpVlanMode::L3,
            Self::L3s => NlIpVlanMode::L3S,
        }
    }

    fn from_nl(m: NlIpVlanMode) -> Option<Self> {
        match m {
            NlIpVlanMode::L2 => Some(Self::L2),
            NlIpVlanMode::L3 => Some(Self::L3),
            NlIpVlanMode::L3S => Some(Self::L3s),
            _ => None,
        }
    }
}

/// What kind of sub-interface, with its kind's settings.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SublinkKind {
    /// `macvlan` in a mode.
    Macvlan(MacvlanMode),
    /// `ipvlan` in a mode.
    Ipvlan(IpvlanMode),
    /// 802.1Q `vlan` with a VLAN ID.
    Vlan(u16),
}

impl SublinkKind {
    /// The kernel's name of the kind (`IFLA_INFO_KIND`).
    pub fn name(&self) -> &'static str {
        match self {
            Self::Macvlan(_) => "macvlan",
            Self::Ipvlan(_) => "ipvlan",
            Self::Vlan(_) => "vlan",
        }
    }
}

/// A sub-interface to create.
#[derive(Debug, Clone)]
pub struct SublinkSpec<'a> {
    /// Its name where it is created.
    pub name: &'a str,
    /// Index of the master link, in the namespace the request is sent in.
    pub master: u32,
    /// Kind and settings.
    pub kind: SublinkKind,
    /// MTU (the kernel takes the master's if `None`).
    pub mtu: Option<u32>,
    /// MAC address (the kernel picks one, or the master's for ipvlan and vlan, if `None`).
    pub mac: Option<Mac>,
    /// Descriptor of the namespace to create it in, if not the one the request is sent in.
    pub netns_fd: Option<RawFd>,
}

/// The `RTM_NEWLINK` body for `spec`: attributes in iproute2's order (MTU, address, netns, master, name, link
/// info with kind and data), an all-zero interface header. ipvlan's data carries the flags (0) too, as iproute2
/// and the reference plugin send.
pub fn newlink_message(spec: &SublinkSpec<'_>) -> LinkMessage {
    let mut m = LinkMessage::default();
    if let Some(mtu) = spec.mtu {
        m.attributes.push(LinkAttribute::Mtu(mtu));
    }
    if let Some(mac) = spec.mac {
        m.attributes.push(LinkAttribute::Address(mac.0.to_vec()));
    }
    if let Some(fd) = spec.netns_fd {
        m.attributes.push(LinkAttribute::NetNsFd(fd));
    }
    m.attributes.push(LinkAttribute::Link(spec.master));
    m.attributes
        .push(LinkAttribute::IfName(spec.name.to_string()));
    let data = match spec.kind {
        SublinkKind::Macvlan(mode) => InfoData::MacVlan(vec![InfoMacVlan::Mode(mode.to_nl())]),
        SublinkKind::Ipvlan(mode) => InfoData::IpVlan(vec![
            InfoIpVlan::Mode(mode.to_nl()),
            InfoIpVlan::Flags(IpVlanFlags::empty()),
        ]),
        SublinkKind::Vlan(id) => InfoData::Vlan(vec![InfoVlan::Id(id)]),
    };
    // The kind without a terminating NUL, as iproute2 (and the reference's netlink library) send it:
    // `LinkInfo::Kind` would add one. The kernel takes either.
    let kind = DefaultNla::new(IFLA_INFO_KIND, spec.kind.name().as_bytes().to_vec());
    m.attributes.push(LinkAttribute::LinkInfo(vec![
        LinkInfo::Other(kind),
        LinkInfo::Data(data),
    ]));
    m
}

/// The netlink header flags of the request: those of `ip link add` (and of rtnetlink's `link().add()`, which
/// sends [`newlink_message`] in [`Netlink::create_sublink`]).
pub const NEWLINK_FLAGS: u16 = NLM_F_REQUEST | NLM_F_ACK | NLM_F_CREATE | NLM_F_EXCL;

/// The whole request for `spec` as bytes on the wire, with sequence number `seq` and port 0 (what the kernel
/// receives from [`Netlink::create_sublink`] up to the sequence number).
pub fn newlink_request_bytes(spec: &SublinkSpec<'_>, seq: u32) -> Vec<u8> {
    let mut header = NetlinkHeader::default();
    header.flags = NEWLINK_FLAGS;
    header.sequence_number = seq;
    let mut msg = NetlinkMessage::new(
        header,
        NetlinkPayload::from(RouteNetlinkMessage::NewLink(newlink_message(spec))),
    );
    msg.finalize();
    let mut buf = vec![0u8; msg.buffer_len()];
    msg.serialize(&mut buf);
    buf
}

/// What the kernel says about an existing link's sub-interface settings.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SublinkInfo {
    /// `IFLA_INFO_KIND`.
    pub kind: Option<String>,
    /// A macvlan's mode.
    pub macvlan_mode: Option<MacvlanMode>,
    /// An ipvlan's mode.
    pub ipvlan_mode: Option<IpvlanMode>,
    /// A vlan's ID.
    pub vlan_id: Option<u16>,
    /// `IFLA_LINK`: the master's index (in the master's namespace).
    pub master: Option<u32>,
}

fn info_of(m: &LinkMessage) -> SublinkInfo {
    let mut s = SublinkInfo::default();
    for a in &m.attributes {
        match a {
            LinkAttribute::Link(i) => s.master = Some(*i),
            LinkAttribute::LinkInfo(infos) => {
                for i in infos {
                    match i {
                        LinkInfo::Kind(k) => s.kind = Some(k.to_string()),
                        LinkInfo::Data(InfoData::MacVlan(d)) => {
                            for o in d {
                                if let InfoMacVlan::Mode(mode) = o {
                                    s.macvlan_mode = MacvlanMode::from_nl(*mode);
                                }
                            }
                        }
                        LinkInfo::Data(InfoData::IpVlan(d)) => {
                            for o in d {
                                if let InfoIpVlan::Mode(mode) = o {
                                    s.ipvlan_mode = IpvlanMode::from_nl(*mode);
                                }
                            }
                        }
                        LinkInfo::Data(InfoData::Vlan(d)) => {
                            for o in d {
                                if let InfoVlan::Id(id) = o {
                                    s.vlan_id = Some(*id);
                                }
                            }
                        }
                        _ => {}
                    }
                }
            }
            _ => {}
        }
    }
    s
}

impl Netlink {
    /// Creates the sub-interface `spec` in one request (in `spec.netns_fd`'s namespace when given). A name
    /// already taken there is `Conflict`; a kernel without the kind answers `EOPNOTSUPP` (kept as a netlink
    /// error).
    pub async fn create_sublink(&self, spec: &SublinkSpec<'_>) -> Result<()> {
        match self
            .handle
            .link()
            .add(newlink_message(spec))
            .execute()
            .await
        {
            Ok(()) => Ok(()),
            Err(e) if is_errno(&e, libc::EEXIST) => Err(Error::Conflict(format!(
                "cannot create {} {}: a link of that name already exists",
                spec.kind.name(),
                spec.name
            ))),
            Err(e) => Err(Error::nl(
                format!(
                    "create {} {} on link #{}",
                    spec.kind.name(),
                    spec.name,
                    spec.master
                ),
                e,
            )),
        }
    }

    /// The sub-interface settings of link `index`; `None` if there is no such link.
    pub async fn sublink_info(&self, index: u32) -> Result<Option<SublinkInfo>> {
        let mut s = self.handle.link().get().match_index(index).execute();
        match s.try_next().await {
            Ok(m) => Ok(m.as_ref().map(info_of)),
            Err(e) if is_errno(&e, libc::ENODEV) => Ok(None),
            Err(e) => Err(Error::nl(format!("get link #{index}"), e)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn modes_round_trip() {
        for s in ["bridge", "private", "vepa", "passthru"] {
            let m = MacvlanMode::parse(s).unwrap();
            assert_eq!(m.as_str(), s);
            assert_eq!(MacvlanMode::from_nl(m.to_nl()), Some(m));
        }
        for s in ["l2", "l3", "l3s"] {
            let m = IpvlanMode::parse(s).unwrap();
            assert_eq!(m.as_str(), s);
            assert_eq!(IpvlanMode::from_nl(m.to_nl()), Some(m));
        }
        assert!(MacvlanMode::parse("Bridge").is_none());
        assert!(MacvlanMode::parse("source").is_none());
        assert!(IpvlanMode::parse("l4").is_none());
    }

    /// The bytes `ip link add link #3 name tmpz type vlan id 100` sends (iproute2 6.1, strace), up to the
    /// sequence number.
    #[test]
    fn vlan_request_bytes() {
        let spec = SublinkSpec {
            name: "tmpz",
            master: 3,
            kind: SublinkKind::Vlan(100),
            mtu: None,
            mac: None,
            netns_fd: None,
        };
        let b = newlink_request_bytes(&spec, 7);
        let want: Vec<u8> = vec![
            76, 0, 0, 0, 16, 0, 0x05, 0x06, 7, 0, 0, 0, 0, 0, 0, 0, // nlmsghdr
            0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, // ifinfomsg
            8, 0, 5, 0, 3, 0, 0, 0, // IFLA_LINK
            9, 0, 3, 0, b't', b'm', b'p', b'z', 0, 0, 0, 0, // IFLA_IFNAME
            24, 0, 0x12, 0, 8, 0, 1, 0, b'v', b'l', b'a',
            b'n', // IFLA_LINKINFO, IFLA_INFO_KIND
            12, 0, 2, 0, 6, 0, 1, 0, 100, 0, 0, 0, // IFLA_INFO_DATA { IFLA_VLAN_ID }
        ];
        assert_eq!(b, want);
    }
}
