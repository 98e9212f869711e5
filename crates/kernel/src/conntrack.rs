//! Connection-tracking entries over ctnetlink (`NETLINK_NETFILTER`), in the calling thread's network namespace.
//!
//! The one operation the plugins need: delete the UDP entries whose original destination port is a given port.
//! A UDP flow to a host port that started before the port was mapped has an entry without NAT, and every later
//! datagram of the flow matches that entry instead of the new DNAT rule, for as long as the flow keeps it alive;
//! deleting the entry makes the next datagram go through the rules again (the reference portmap does the same
//! after ADD).
//!
//! The kernel cannot delete by port, so the table of the family is dumped, the matching original tuples picked
//! out and each deleted by its tuple (and zone). An entry gone in between is not an error.

use crate::error::{Error, Result};
use netlink_packet_core::{
    DefaultNla, NetlinkHeader, NetlinkMessage, NetlinkPayload, Nla, NLM_F_ACK, NLM_F_DUMP,
    NLM_F_REQUEST,
};
use netlink_packet_netfilter::conntrack::{
    ConntrackAttribute, ConntrackMessage, ProtoTuple, Protocol, Tuple,
};
use netlink_packet_netfilter::{
    NetfilterHeader, NetfilterMessage, NetfilterMessageInner, NetfilterProtoFamily,
};
use netlink_sys::{protocols::NETLINK_NETFILTER, Socket, SocketAddr};

/// `CTA_ZONE`: an entry outside the default zone is only found with its zone.
const CTA_ZONE: u16 = 18;

/// The address family of a dump.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Family {
    V4,
    V6,
}

impl Family {
    fn proto(self) -> NetfilterProtoFamily {
        match self {
            Self::V4 => NetfilterProtoFamily::IPv4,
            Self::V6 => NetfilterProtoFamily::IPv6,
        }
    }
}

/// What identifies one entry for a delete: its original tuple and its zone attribute, if any.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    pub orig: Vec<Tuple>,
    zone: Option<DefaultNla>,
}

impl Entry {
    /// The entry of a dumped message, if it is a UDP entry whose original destination port is `port`.
    pub fn udp_to_port(attrs: &[ConntrackAttribute], port: u16) -> Option<Self> {
        let orig = attrs.iter().find_map(|a| match a {
            ConntrackAttribute::CtaTupleOrig(t) => Some(t),
            _ => None,
        })?;
        let proto = orig.iter().find_map(|t| match t {
            Tuple::Proto(p) => Some(p),
            _ => None,
        })?;
        let udp = proto
            .iter()
            .any(|p| matches!(p, ProtoTuple::Protocol(Protocol::Udp)));
        let dport = proto
            .iter()
            .any(|p| matches!(p, ProtoTuple::DestinationPort(d) if *d == port));
        if !(udp && dport) {
            return None;
        }
        let zone = attrs.iter().find_map(|a| match a {
            ConntrackAttribute::Other(n) if n.kind() == CTA_ZONE => Some(n.clone()),
            _ => None,
        });
        Some(Self {
            orig: orig.clone(),
            zone,
        })
    }
}

fn io(op: &str, e: std::io::Error) -> Error {
    Error::io(format!("conntrack: {op}"), e)
}

fn socket() -> Result<Socket> {
    let mut s = Socket::new(NETLINK_NETFILTER).map_err(|e| io("open a netfilter socket", e))?;
    s.bind_auto().map_err(|e| io("bind", e))?;
    s.connect(&SocketAddr::new(0, 0))
        .map_err(|e| io("connect", e))?;
    Ok(s)
}

fn send(s: &Socket, flags: u16, family: Family, msg: ConntrackMessage) -> Result<()> {
    let mut hdr = NetlinkHeader::default();
    hdr.flags = flags;
    let mut packet = NetlinkMessage::new(
        hdr,
        NetlinkPayload::from(NetfilterMessage::new(
            NetfilterHeader::new(family.proto(), 0, 0),
            msg,
        )),
    );
    packet.finalize();
    let mut buf = vec![0; packet.buffer_len()];
    packet.serialize(&mut buf);
    s.send(&buf, 0).map_err(|e| io("send", e))?;
    Ok(())
}

/// The messages of one datagram; parsing stops at the first that does not parse (the rest of that datagram is
/// lost, never misread).
fn messages(buf: &[u8]) -> Vec<NetlinkMessage<NetfilterMessage>> {
    let mut out = Vec::new();
    let mut off = 0;
    while let Some(rest) = buf.get(off..).filter(|r| !r.is_empty()) {
        let Ok(m) = NetlinkMessage::<NetfilterMessage>::deserialize(rest) else {
            break;
        };
        let len = m.header.length as usize;
        out.push(m);
        if len == 0 {
            break;
        }
        // Netlink messages are 4-byte aligned.
        off += (len + 3) & !3;
    }
    out
}

/// The entries of `family` that `pick` selects, from a full dump.
fn dump(
    s: &Socket,
    family: Family,
    pick: impl Fn(&[ConntrackAttribute]) -> Option<Entry>,
) -> Result<Vec<Entry>> {
    send(
        s,
        NLM_F_REQUEST | NLM_F_DUMP,
        family,
        ConntrackMessage::Get(vec![]),
    )?;
    let mut found = Vec::new();
    let mut buf = vec![0u8; 1 << 16];
    loop {
        let n = s
            .recv(&mut &mut buf[..], 0)
            .map_err(|e| io("read the dump", e))?;
        let Some(data) = buf.get(..n) else { break };
        for m in messages(data) {
            match m.payload {
                NetlinkPayload::Done(_) => return Ok(found),
                NetlinkPayload::Error(e) => {
                    let code = e.code.map_or(0, |c| -c.get());
                    return Err(io("dump", std::io::Error::from_raw_os_error(code)));
                }
                NetlinkPayload::InnerMessage(NetfilterMessage {
                    inner: NetfilterMessageInner::Conntrack(ConntrackMessage::New(attrs)),
                    ..
                }) => found.extend(pick(&attrs)),
                _ => {}
            }
        }
        if n == 0 {
            break;
        }
    }
    Ok(found)
}

/// Deletes one entry; an entry that is gone already counts as deleted.
fn delete(s: &Socket, family: Family, e: &Entry) -> Result<()> {
    let mut attrs = vec![ConntrackAttribute::CtaTupleOrig(e.orig.clone())];
    if let Some(z) = &e.zone {
        attrs.push(ConntrackAttribute::Other(z.clone()));
    }
    send(
        s,
        NLM_F_REQUEST | NLM_F_ACK,
        family,
        ConntrackMessage::Delete(attrs),
    )?;
    let mut buf = vec![0u8; 8192];
    let n = s
        .recv(&mut &mut buf[..], 0)
        .map_err(|e| io("read the delete's answer", e))?;
    for m in messages(buf.get(..n).unwrap_or_default()) {
        if let NetlinkPayload::Error(err) = m.payload {
            let code = err.code.map_or(0, |c| -c.get());
            if code != 0 && code != libc::ENOENT {
                return Err(io("delete", std::io::Error::from_raw_os_error(code)));
            }
        }
    }
    Ok(())
}

/// Deletes every UDP entry of `family` whose original destination port is one of `ports`; how many.
pub fn delete_udp_to_ports(family: Family, ports: &[u16]) -> Result<usize> {
    if ports.is_empty() {
        return Ok(0);
    }
    let s = socket()?;
    let entries = dump(&s, family, |attrs| {
        ports.iter().find_map(|&p| Entry::udp_to_port(attrs, p))
    })?;
    for e in &entries {
        delete(&s, family, e)?;
    }
    Ok(entries.len())
}

#[cfg(test)]
mod tests {
    use super::*;
    use netlink_packet_netfilter::conntrack::IPTuple;
    use proptest::prelude::*;

    fn attrs(proto: Protocol, dport: u16) -> Vec<ConntrackAttribute> {
        vec![ConntrackAttribute::CtaTupleOrig(vec![
            Tuple::Ip(vec![
                IPTuple::SourceAddress("192.0.2.2".parse().unwrap()),
                IPTuple::DestinationAddress("192.0.2.1".parse().unwrap()),
            ]),
            Tuple::Proto(vec![
                ProtoTuple::Protocol(proto),
                ProtoTuple::SourcePort(40000),
                ProtoTuple::DestinationPort(dport),
            ]),
        ])]
    }

    #[test]
    fn picks_udp_entries_to_the_port() {
        assert!(Entry::udp_to_port(&attrs(Protocol::Udp, 5353), 5353).is_some());
        assert!(Entry::udp_to_port(&attrs(Protocol::Tcp, 5353), 5353).is_none());
        assert!(Entry::udp_to_port(&attrs(Protocol::Udp, 53), 5353).is_none());
        assert!(Entry::udp_to_port(&[], 5353).is_none());
    }

    proptest! {
        #[test]
        fn any_datagram_never_panics(b in proptest::collection::vec(any::<u8>(), 0..600)) {
            let _ = messages(&b);
        }
    }
}
