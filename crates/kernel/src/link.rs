//! Links: lookup, bridges, veth pairs, and per-link settings.

use crate::error::{Error, Result};
use crate::netlink::{is_errno, Netlink};
use futures::TryStreamExt;
use netlink_packet_route::link::{
    InfoData, InfoKind, InfoVeth, LinkAttribute, LinkFlags, LinkInfo as NlLinkInfo, LinkMessage,
    State,
};
use rtnetlink::{LinkBridge, LinkBridgePort, LinkMessageBuilder, LinkUnspec, LinkVeth};
use std::fmt;

/// A 6-byte Ethernet address.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct Mac(pub [u8; 6]);

impl Mac {
    /// A random locally administered unicast address.
    pub fn random() -> Result<Self> {
        let mut b = [0u8; 6];
        getrandom::fill(&mut b)
            .map_err(|e| Error::io("random MAC", std::io::Error::other(e.to_string())))?;
        b[0] = (b[0] & 0xfe) | 0x02;
        Ok(Self(b))
    }

    /// Parses `aa:bb:cc:dd:ee:ff`.
    pub fn parse(s: &str) -> Option<Self> {
        let mut b = [0u8; 6];
        let mut parts = s.split(':');
        for byte in &mut b {
            let p = parts.next()?;
            // Two hex digits exactly: from_str_radix alone would take "+f".
            if p.len() != 2 || !p.bytes().all(|c| c.is_ascii_hexdigit()) {
                return None;
            }
            *byte = u8::from_str_radix(p, 16).ok()?;
        }
        parts.next().is_none().then_some(Self(b))
    }
}

impl Mac {
    /// The broadcast address `ff:ff:ff:ff:ff:ff`.
    pub const BROADCAST: Mac = Mac([0xff; 6]);

    /// Whether the address is a group (multicast or broadcast) address: the I/G bit of the first octet.
    pub fn is_multicast(&self) -> bool {
        self.0[0] & 1 == 1
    }

    /// Whether the address is `00:00:00:00:00:00`.
    pub fn is_zero(&self) -> bool {
        self.0 == [0; 6]
    }
}

impl fmt::Display for Mac {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let b = self.0;
        write!(
            f,
            "{:02x}:{:02x}:{:02x}:{:02x}:{:02x}:{:02x}",
            b[0], b[1], b[2], b[3], b[4], b[5]
        )
    }
}

impl fmt::Debug for Mac {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

/// What we know about a link from one `RTM_GETLINK`.
#[derive(Debug, Clone, Default)]
pub struct Link {
    /// Interface index.
    pub index: u32,
    /// Name.
    pub name: String,
    /// MAC address.
    pub mac: Option<Mac>,
    /// MTU.
    pub mtu: u32,
    /// Link kind (`bridge`, `veth`, `vxlan`, …).
    pub kind: Option<String>,
    /// Index of the bridge it is a port of.
    pub controller: Option<u32>,
    /// For a veth: the peer's index (in the peer's namespace).
    pub peer_index: Option<u32>,
    /// Administratively up.
    pub up: bool,
    /// Operationally up.
    pub oper_up: bool,
    /// Promiscuous.
    pub promisc: bool,
    /// Receives all multicast frames (`IFF_ALLMULTI`).
    pub allmulti: bool,
    /// Transmit queue length (`IFLA_TXQLEN`).
    pub txqlen: u32,
    /// The namespace's loopback device.
    pub loopback: bool,
}

impl Link {
    fn from_message(m: &LinkMessage) -> Self {
        let mut l = Link {
            index: m.header.index,
            up: m.header.flags.contains(LinkFlags::Up),
            promisc: m.header.flags.contains(LinkFlags::Promisc),
            allmulti: m.header.flags.contains(LinkFlags::Allmulti),
            loopback: m.header.flags.contains(LinkFlags::Loopback),
            ..Default::default()
        };
        for a in &m.attributes {
            match a {
                LinkAttribute::IfName(n) => l.name = n.clone(),
                LinkAttribute::Address(b) if b.len() == 6 => {
                    let mut mac = [0u8; 6];
                    mac.copy_from_slice(b);
                    l.mac = Some(Mac(mac));
                }
                LinkAttribute::Mtu(v) => l.mtu = *v,
                LinkAttribute::TxQueueLen(v) => l.txqlen = *v,
                LinkAttribute::Controller(c) => l.controller = Some(*c),
                LinkAttribute::Link(p) => l.peer_index = Some(*p),
                LinkAttribute::OperState(s) => l.oper_up = matches!(s, State::Up),
                LinkAttribute::LinkInfo(infos) => {
                    for i in infos {
                        if let NlLinkInfo::Kind(k) = i {
                            l.kind = Some(k.to_string());
                        }
                    }
                }
                _ => {}
            }
        }
        l
    }
}

/// Parameters of a veth pair whose container end is created directly in another namespace.
#[derive(Debug, Clone)]
pub struct VethSpec<'a> {
    /// Host-side name.
    pub host_name: &'a str,
    /// Container-side name.
    pub peer_name: &'a str,
    /// Descriptor of the container namespace.
    pub peer_netns_fd: std::os::fd::RawFd,
    /// MTU of both ends (kernel default if `None`).
    pub mtu: Option<u32>,
    /// MAC of the container end (random if `None`).
    pub peer_mac: Option<Mac>,
    /// Bridge the host end is attached to at creation.
    pub controller: Option<u32>,
}

impl Netlink {
    /// Looks a link up by name; `None` if there is none.
    pub async fn link_by_name(&self, name: &str) -> Result<Option<Link>> {
        let mut s = self
            .handle
            .link()
            .get()
            .match_name(name.to_string())
            .execute();
        match s.try_next().await {
            Ok(m) => Ok(m.as_ref().map(Link::from_message)),
            Err(e) if is_errno(&e, libc::ENODEV) => Ok(None),
            Err(e) => Err(Error::nl(format!("get link {name}"), e)),
        }
    }

    /// Looks a link up by index; `None` if there is none.
    pub async fn link_by_index(&self, index: u32) -> Result<Option<Link>> {
        let mut s = self.handle.link().get().match_index(index).execute();
        match s.try_next().await {
            Ok(m) => Ok(m.as_ref().map(Link::from_message)),
            Err(e) if is_errno(&e, libc::ENODEV) => Ok(None),
            Err(e) => Err(Error::nl(format!("get link #{index}"), e)),
        }
    }

    /// All links.
    pub async fn links(&self) -> Result<Vec<Link>> {
        let msgs: Vec<LinkMessage> = self
            .handle
            .link()
            .get()
            .execute()
            .try_collect()
            .await
            .map_err(|e| Error::nl("list links", e))?;
        Ok(msgs.iter().map(Link::from_message).collect())
    }

    /// Ensures a bridge named `name` exists and is up. A new bridge gets a fixed random MAC, so its address never
    /// follows the lowest port MAC as ports come and go (which would invalidate pods' ARP caches).
    pub async fn ensure_bridge(
        &self,
        name: &str,
        mtu: Option<u32>,
        promisc: bool,
        vlan_filtering: bool,
    ) -> Result<Link> {
        if let Some(l) = self.link_by_name(name).await? {
            return self.finish_bridge(l, name, promisc).await;
        }
        let mut b = LinkBridge::new(name).address(Mac::random()?.0.to_vec());
        if vlan_filtering {
            b = b.vlan_filtering(true);
        }
        if let Some(m) = mtu {
            b = b.mtu(m);
        }
        if promisc {
            b = b.promiscuous(true);
        }
        match self.handle.link().add(b.up().build()).execute().await {
            Ok(()) => {}
            // Another ADD created it first.
            Err(e) if is_errno(&e, libc::EEXIST) => {}
            Err(e) => return Err(Error::nl(format!("create bridge {name}"), e)),
        }
        let l = self
            .link_by_name(name)
            .await?
            .ok_or_else(|| Error::NotFound(format!("bridge {name} after creating it")))?;
        self.finish_bridge(l, name, promisc).await
    }

    async fn finish_bridge(&self, l: Link, name: &str, promisc: bool) -> Result<Link> {
        if l.kind.as_deref() != Some("bridge") {
            return Err(Error::Conflict(format!(
                "{name} already exists but is not a bridge (kind {})",
                l.kind.as_deref().unwrap_or("unknown")
            )));
        }
        if !l.up || (promisc && !l.promisc) {
            let mut m = LinkUnspec::new_with_index(l.index).up();
            if promisc {
                m = m.promiscuous(true);
            }
            self.handle
                .link()
                .set(m.build())
                .execute()
                .await
                .map_err(|e| Error::nl(format!("set bridge {name} up"), e))?;
        }
        Ok(l)
    }

    /// Creates a veth pair in one request: the host end here (up, optionally already a bridge port), the peer
    /// directly in the container namespace (down). Fails with `Conflict` if a name is taken.
    pub async fn create_veth(&self, spec: &VethSpec<'_>) -> Result<()> {
        // The peer cannot be created up: the kernel opens it before the pair is linked and veth_open fails with
        // ENOTCONN. The caller brings it up from inside the pod namespace.
        let mut peer = LinkUnspec::new_with_name(spec.peer_name).setns_by_fd(spec.peer_netns_fd);
        if let Some(m) = spec.mtu {
            peer = peer.mtu(m);
        }
        if let Some(mac) = spec.peer_mac {
            peer = peer.address(mac.0.to_vec());
        }
        let mut b = LinkMessageBuilder::<LinkVeth>::new_with_info_kind(InfoKind::Veth)
            .name(spec.host_name.to_string())
            .set_info_data(InfoData::Veth(InfoVeth::Peer(peer.build())))
            .up();
        if let Some(m) = spec.mtu {
            b = b.mtu(m);
        }
        if let Some(c) = spec.controller {
            b = b.controller(c);
        }
        match self.handle.link().add(b.build()).execute().await {
            Ok(()) => Ok(()),
            Err(e) if is_errno(&e, libc::EEXIST) => Err(Error::Conflict(format!(
                "cannot create veth {}/{}: a link with one of these names already exists",
                spec.host_name, spec.peer_name
            ))),
            Err(e) => Err(Error::nl(
                format!("create veth {} (peer {})", spec.host_name, spec.peer_name),
                e,
            )),
        }
    }

    /// Sets hairpin mode on a bridge port.
    pub async fn set_hairpin(&self, index: u32, on: bool) -> Result<()> {
        self.handle
            .link()
            .set_port(LinkBridgePort::new(index).hairpin(on).build())
            .execute()
            .await
            .map_err(|e| Error::nl(format!("set hairpin on link #{index}"), e))
    }

    /// Brings a link up.
    pub async fn set_up(&self, index: u32) -> Result<()> {
        self.handle
            .link()
            .set(LinkUnspec::new_with_index(index).up().build())
            .execute()
            .await
            .map_err(|e| Error::nl(format!("set link #{index} up"), e))
    }

    /// Sets a link's MTU.
    pub async fn set_mtu(&self, index: u32, mtu: u32) -> Result<()> {
        self.handle
            .link()
            .set(LinkUnspec::new_with_index(index).mtu(mtu).build())
            .execute()
            .await
            .map_err(|e| Error::nl(format!("set MTU {mtu} on link #{index}"), e))
    }

    /// Turns promiscuous mode on or off (`ip link set DEV promisc on|off`).
    pub async fn set_promisc(&self, index: u32, on: bool) -> Result<()> {
        self.handle
            .link()
            .set(LinkUnspec::new_with_index(index).promiscuous(on).build())
            .execute()
            .await
            .map_err(|e| Error::nl(format!("set promisc {on} on link #{index}"), e))
    }

    /// Turns all-multicast mode on or off (`ip link set DEV allmulticast on|off`).
    pub async fn set_allmulti(&self, index: u32, on: bool) -> Result<()> {
        self.handle
            .link()
            .set(LinkUnspec::new_with_index(index).allmulticast(on).build())
            .execute()
            .await
            .map_err(|e| Error::nl(format!("set allmulticast {on} on link #{index}"), e))
    }

    /// Sets a link's transmit queue length (`ip link set DEV txqueuelen N`).
    pub async fn set_txqlen(&self, index: u32, len: u32) -> Result<()> {
        self.handle
            .link()
            .set(LinkUnspec::new_with_index(index).txqueuelen(len).build())
            .execute()
            .await
            .map_err(|e| Error::nl(format!("set txqueuelen {len} on link #{index}"), e))
    }

    /// Brings a link down.
    pub async fn set_down(&self, index: u32) -> Result<()> {
        self.handle
            .link()
            .set(LinkUnspec::new_with_index(index).down().build())
            .execute()
            .await
            .map_err(|e| Error::nl(format!("set link #{index} down"), e))
    }

    /// Sets a link's MAC address.
    pub async fn set_mac(&self, index: u32, mac: Mac) -> Result<()> {
        self.handle
            .link()
            .set(
                LinkUnspec::new_with_index(index)
                    .address(mac.0.to_vec())
                    .build(),
            )
            .execute()
            .await
            .map_err(|e| Error::nl(format!("set MAC {mac} on link #{index}"), e))
    }

    /// Renames a link (it must be down).
    pub async fn rename(&self, index: u32, name: &str) -> Result<()> {
        self.handle
            .link()
            .set(
                LinkUnspec::new_with_index(index)
                    .name(name.to_string())
                    .build(),
            )
            .execute()
            .await
            .map_err(|e| Error::nl(format!("rename link #{index} to {name}"), e))
    }

    /// Deletes a link; a link that is already gone is not an error.
    pub async fn delete_link(&self, index: u32) -> Result<()> {
        match self.handle.link().del(index).execute().await {
            Ok(()) => Ok(()),
            Err(e) if is_errno(&e, libc::ENODEV) => Ok(()),
            Err(e) => Err(Error::nl(format!("delete link #{index}"), e)),
        }
    }
}

/// Deletes link `index` of namespace `ns` without waiting for it: the kernel's teardown of a veth waits for an RCU
/// barrier (15–20 ms here), which a CNI DEL need not sit through once the interface is down and renamed out of the
/// way. A detached child process sends one `RTM_DELLINK` and exits; the caller returns at once.
///
/// The child is not waited for: CNI plugins exit right after, and the orphan is reaped by whoever adopts it
/// (init or the runtime's subreaper). A second fork (so that a long-lived caller is never left with a zombie) is
/// not worth its cost on every DEL: no long-lived caller uses this.
pub fn delete_link_detached(ns: &crate::Netns, index: u32) -> Result<()> {
    // struct nlmsghdr (16 bytes) + struct ifinfomsg (16 bytes), built before fork so the child only makes syscalls.
    let mut msg = [0u8; 32];
    msg[0..4].copy_from_slice(&32u32.to_ne_bytes());
    msg[4..6].copy_from_slice(&(libc::RTM_DELLINK).to_ne_bytes());
    msg[6..8].copy_from_slice(&(libc::NLM_F_REQUEST as u16).to_ne_bytes());
    msg[8..12].copy_from_slice(&1u32.to_ne_bytes());
    msg[20..24].copy_from_slice(&(index as i32).to_ne_bytes());
    let nsfd = ns.raw_fd();
    // SAFETY: between fork and _exit the children only call async-signal-safe functions on memory prepared above.
    unsafe {
        match libc::fork() {
            -1 => Err(Error::io(
                "fork to delete a link",
                std::io::Error::last_os_error(),
            )),
            0 => {
                libc::setsid();
                // The runtime reads our stdout/stderr until EOF: the child must not hold them.
                let null = libc::open(c"/dev/null".as_ptr(), libc::O_RDWR);
                for fd in 0..3 {
                    libc::dup2(null, fd);
                }
                if libc::setns(nsfd, libc::CLONE_NEWNET) == 0 {
                    let s = libc::socket(
                        libc::AF_NETLINK,
                        libc::SOCK_RAW | libc::SOCK_CLOEXEC,
                        libc::NETLINK_ROUTE,
                    );
                    if s >= 0 {
                        // The deletion runs inside this send, in our context; no reply is needed.
                        libc::send(s, msg.as_ptr().cast(), msg.len(), 0);
                    }
                }
                libc::_exit(0)
            }
            _ => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mac_roundtrip() {
        let m = Mac::parse("0a:58:0A:f4:01:01").unwrap();
        assert_eq!(m.to_string(), "0a:58:0a:f4:01:01");
        assert!(Mac::parse("0a:58:0a:f4:01").is_none());
        assert!(Mac::parse("0a:58:0a:f4:01:01:02").is_none());
        assert!(Mac::parse("zz:58:0a:f4:01:01").is_none());
        let r = Mac::random().unwrap();
        assert_eq!(r.0[0] & 0x03, 0x02);
        assert!(!r.is_multicast() && !r.is_zero());
        // from_str_radix alone takes a sign.
        assert!(Mac::parse("+a:58:0a:f4:01:01").is_none());
        assert!(Mac::parse("0a:58:0a:f4:01:-1").is_none());
        assert!(Mac::BROADCAST.is_multicast());
        assert!(Mac::parse("01:00:5e:00:00:01").unwrap().is_multicast());
        assert!(Mac::default().is_zero());
    }

    proptest::proptest! {
        #[test]
        fn mac_parse_never_panics_and_round_trips(s in "[0-9a-fA-F:+ -]{0,20}") {
            if let Some(m) = Mac::parse(&s) {
                proptest::prop_assert_eq!(Mac::parse(&m.to_string()), Some(m));
                proptest::prop_assert_eq!(m.to_string(), s.to_ascii_lowercase());
            }
        }
    }
}
