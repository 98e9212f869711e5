//! DHCPv4 messages (RFC 2131/2132) and the IPv4/UDP framing a packet socket needs.
//!
//! A codec of our own rather than `dhcproto`: the client needs the fixed header, a flat option list and the
//! framing, about what this file holds, while `dhcproto` brings a DNS stack (`hickory-proto`), a second `rand`
//! and proc macros into the workspace. Everything decoded here comes from the wire: short or malformed input is
//! `None`, never a panic (proptested below).

use std::net::Ipv4Addr;

/// BOOTREQUEST.
pub const OP_REQUEST: u8 = 1;
/// BOOTREPLY.
pub const OP_REPLY: u8 = 2;
/// The BOOTP broadcast flag.
pub const FLAG_BROADCAST: u16 = 0x8000;
const MAGIC: [u8; 4] = [99, 130, 83, 99];
/// Fixed header length (up to and excluding the magic cookie).
const HEADER: usize = 236;
/// RFC 951: BOOTP messages are at least 300 bytes; some servers drop shorter ones.
const MIN_LEN: usize = 300;

/// Option codes used by the client.
pub mod opt {
    pub const PAD: u8 = 0;
    pub const SUBNET_MASK: u8 = 1;
    pub const ROUTER: u8 = 3;
    pub const HOST_NAME: u8 = 12;
    pub const STATIC_ROUTES: u8 = 33;
    pub const REQUESTED_IP: u8 = 50;
    pub const LEASE_TIME: u8 = 51;
    pub const OVERLOAD: u8 = 52;
    pub const MESSAGE_TYPE: u8 = 53;
    pub const SERVER_ID: u8 = 54;
    pub const PARAMETER_REQUEST_LIST: u8 = 55;
    pub const RENEWAL_TIME: u8 = 58;
    pub const REBINDING_TIME: u8 = 59;
    pub const CLASS_ID: u8 = 60;
    pub const CLIENT_ID: u8 = 61;
    pub const USER_CLASS: u8 = 77;
    pub const CLASSLESS_ROUTES: u8 = 121;
    pub const END: u8 = 255;
}

/// DHCP message types (option 53).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MsgType {
    Discover = 1,
    Offer = 2,
    Request = 3,
    Decline = 4,
    Ack = 5,
    Nak = 6,
    Release = 7,
    Inform = 8,
}

impl MsgType {
    fn from_u8(v: u8) -> Option<Self> {
        Some(match v {
            1 => Self::Discover,
            2 => Self::Offer,
            3 => Self::Request,
            4 => Self::Decline,
            5 => Self::Ack,
            6 => Self::Nak,
            7 => Self::Release,
            8 => Self::Inform,
            _ => return None,
        })
    }
}

/// One DHCP message: the header fields the client uses and the options in order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Message {
    pub op: u8,
    pub xid: u32,
    pub secs: u16,
    pub flags: u16,
    pub ciaddr: Ipv4Addr,
    pub yiaddr: Ipv4Addr,
    pub siaddr: Ipv4Addr,
    pub giaddr: Ipv4Addr,
    /// Client hardware address (Ethernet: 6 bytes used).
    pub chaddr: [u8; 6],
    /// Options in order; a code given several times in a reply is concatenated (RFC 3396).
    pub options: Vec<(u8, Vec<u8>)>,
}

impl Message {
    /// A client request with no options yet.
    pub fn request(xid: u32, chaddr: [u8; 6], ty: MsgType) -> Self {
        Self {
            op: OP_REQUEST,
            xid,
            secs: 0,
            flags: 0,
            ciaddr: Ipv4Addr::UNSPECIFIED,
            yiaddr: Ipv4Addr::UNSPECIFIED,
            siaddr: Ipv4Addr::UNSPECIFIED,
            giaddr: Ipv4Addr::UNSPECIFIED,
            chaddr,
            options: vec![(opt::MESSAGE_TYPE, vec![ty as u8])],
        }
    }

    /// Sets option `code` (replacing an earlier value).
    pub fn set(&mut self, code: u8, value: Vec<u8>) {
        match self.options.iter_mut().find(|(c, _)| *c == code) {
            Some(slot) => slot.1 = value,
            None => self.options.push((code, value)),
        }
    }

    /// The value of option `code`.
    pub fn get(&self, code: u8) -> Option<&[u8]> {
        self.options
            .iter()
            .find(|(c, _)| *c == code)
            .map(|(_, v)| v.as_slice())
    }

    /// The message type (option 53).
    pub fn msg_type(&self) -> Option<MsgType> {
        self.get(opt::MESSAGE_TYPE)
            .and_then(|v| v.first().copied())
            .and_then(MsgType::from_u8)
    }

    /// An IPv4 address option (the first address of a list).
    pub fn get_ip(&self, code: u8) -> Option<Ipv4Addr> {
        let v = self.get(code)?;
        let b: [u8; 4] = v.get(..4)?.try_into().ok()?;
        Some(Ipv4Addr::from(b))
    }

    /// A 32-bit option (times).
    pub fn get_u32(&self, code: u8) -> Option<u32> {
        let v = self.get(code)?;
        let b: [u8; 4] = v.get(..4)?.try_into().ok()?;
        Some(u32::from_be_bytes(b))
    }

    /// The wire form: header, cookie, options (values longer than 255 bytes split into several, RFC 3396), end,
    /// padded to the BOOTP minimum.
    pub fn encode(&self) -> Vec<u8> {
        let mut b = Vec::with_capacity(MIN_LEN + 64);
        b.extend_from_slice(&[self.op, 1, 6, 0]);
        b.extend_from_slice(&self.xid.to_be_bytes());
        b.extend_from_slice(&self.secs.to_be_bytes());
        b.extend_from_slice(&self.flags.to_be_bytes());
        for a in [self.ciaddr, self.yiaddr, self.siaddr, self.giaddr] {
            b.extend_from_slice(&a.octets());
        }
        b.extend_from_slice(&self.chaddr);
        b.resize(HEADER, 0); // rest of chaddr, sname, file
        b.extend_from_slice(&MAGIC);
        for (code, value) in &self.options {
            if *code == opt::PAD || *code == opt::END {
                continue;
            }
            if value.is_empty() {
                b.extend_from_slice(&[*code, 0]);
            }
            for chunk in value.chunks(255) {
                b.push(*code);
                b.push(chunk.len() as u8);
                b.extend_from_slice(chunk);
            }
        }
        b.push(opt::END);
        if b.len() < MIN_LEN {
            b.resize(MIN_LEN, 0);
        }
        b
    }

    /// Parses a message; `None` when it is too short, lacks the cookie, or its options run past the end.
    /// Option overload (52) is not followed: the client needs nothing that servers put in sname/file.
    pub fn decode(b: &[u8]) -> Option<Self> {
        if b.len() < HEADER + 4 || b.get(HEADER..HEADER + 4)? != MAGIC {
            return None;
        }
        let ip = |at: usize| -> Option<Ipv4Addr> {
            let o: [u8; 4] = b.get(at..at + 4)?.try_into().ok()?;
            Some(Ipv4Addr::from(o))
        };
        let u16_at = |at: usize| -> Option<u16> {
            Some(u16::from_be_bytes(b.get(at..at + 2)?.try_into().ok()?))
        };
        let mut chaddr = [0u8; 6];
        chaddr.copy_from_slice(b.get(28..34)?);
        let mut m = Message {
            op: *b.first()?,
            xid: u32::from_be_bytes(b.get(4..8)?.try_into().ok()?),
            secs: u16_at(8)?,
            flags: u16_at(10)?,
            ciaddr: ip(12)?,
            yiaddr: ip(16)?,
            siaddr: ip(20)?,
            giaddr: ip(24)?,
            chaddr,
            options: Vec::new(),
        };
        let mut rest = b.get(HEADER + 4..)?;
        // A missing END is tolerated, as most clients do.
        while let Some((&code, tail)) = rest.split_first() {
            match code {
                opt::PAD => {
                    rest = tail;
                    continue;
                }
                opt::END => break,
                _ => {}
            }
            let (&len, tail) = tail.split_first()?;
            let value = tail.get(..usize::from(len))?;
            rest = tail.get(usize::from(len)..)?;
            match m.options.iter_mut().find(|(c, _)| *c == code) {
                Some(slot) => slot.1.extend_from_slice(value),
                None => m.options.push((code, value.to_vec())),
            }
        }
        Some(m)
    }
}

/// The client and server UDP ports.
pub const CLIENT_PORT: u16 = 68;
pub const SERVER_PORT: u16 = 67;

fn checksum(data: &[u8]) -> u16 {
    let mut sum: u32 = 0;
    for c in data.chunks(2) {
        let w = match c {
            [a, b] => u16::from_be_bytes([*a, *b]),
            [a] => u16::from_be_bytes([*a, 0]),
            _ => 0,
        };
        sum += u32::from(w);
    }
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

/// An IPv4/UDP packet from `src`:68 to `dst`:67 around `payload` (for a packet socket, which adds the
/// Ethernet header). The UDP checksum is computed (some servers check it).
pub fn frame(src: Ipv4Addr, dst: Ipv4Addr, payload: &[u8]) -> Vec<u8> {
    let udp_len = 8 + payload.len();
    let total = 20 + udp_len;
    let mut p = Vec::with_capacity(total);
    p.extend_from_slice(&[0x45, 0x10]); // IPv4, IHL 5; DSCP low delay as dhclient sets
    p.extend_from_slice(&(total as u16).to_be_bytes());
    p.extend_from_slice(&[0, 0, 0, 0]); // id, flags/fragment
    p.extend_from_slice(&[64, 17, 0, 0]); // TTL, UDP, checksum later
    p.extend_from_slice(&src.octets());
    p.extend_from_slice(&dst.octets());
    let c = checksum(&p[..20]);
    p[10..12].copy_from_slice(&c.to_be_bytes());
    p.extend_from_slice(&CLIENT_PORT.to_be_bytes());
    p.extend_from_slice(&SERVER_PORT.to_be_bytes());
    p.extend_from_slice(&(udp_len as u16).to_be_bytes());
    p.extend_from_slice(&[0, 0]);
    p.extend_from_slice(payload);
    // Pseudo-header sum over src, dst, protocol and UDP length, then the UDP header and data.
    let mut pseudo = Vec::with_capacity(12 + udp_len);
    pseudo.extend_from_slice(&src.octets());
    pseudo.extend_from_slice(&dst.octets());
    pseudo.extend_from_slice(&[0, 17]);
    pseudo.extend_from_slice(&(udp_len as u16).to_be_bytes());
    pseudo.extend_from_slice(&p[20..]);
    let mut uc = checksum(&pseudo);
    if uc == 0 {
        uc = 0xffff;
    }
    p[26..28].copy_from_slice(&uc.to_be_bytes());
    p
}

/// The UDP payload of an IPv4 packet addressed to the client port, with the sender's address; `None` for any
/// other packet or a malformed one. Checksums are not checked: on veth the kernel hands packet sockets frames
/// whose UDP checksum is left to an offload that never happens.
pub fn unframe(p: &[u8]) -> Option<(Ipv4Addr, &[u8])> {
    let (&vihl, _) = p.split_first()?;
    if vihl >> 4 != 4 {
        return None;
    }
    let ihl = usize::from(vihl & 0x0f) * 4;
    if ihl < 20 || *p.get(9)? != 17 {
        return None;
    }
    // Fragments (offset or more-fragments set) are not reassembled: a DHCP reply fits one packet.
    let frag = u16::from_be_bytes(p.get(6..8)?.try_into().ok()?);
    if frag & 0x3fff != 0 {
        return None;
    }
    let total = usize::from(u16::from_be_bytes(p.get(2..4)?.try_into().ok()?));
    let p = p.get(..total)?;
    let src = Ipv4Addr::from(<[u8; 4]>::try_from(p.get(12..16)?).ok()?);
    let udp = p.get(ihl..)?;
    let dport = u16::from_be_bytes(udp.get(2..4)?.try_into().ok()?);
    if dport != CLIENT_PORT {
        return None;
    }
    let ulen = usize::from(u16::from_be_bytes(udp.get(4..6)?.try_into().ok()?));
    if ulen < 8 {
        return None;
    }
    Some((src, udp.get(8..ulen)?))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn round_trip() {
        let mut m = Message::request(0x1234_5678, [2, 0, 0, 0, 0, 1], MsgType::Discover);
        m.flags = FLAG_BROADCAST;
        m.set(opt::CLIENT_ID, b"\0c1/net/eth0".to_vec());
        m.set(opt::PARAMETER_REQUEST_LIST, vec![1, 3]);
        m.set(opt::HOST_NAME, vec![b'x'; 300]);
        let b = m.encode();
        assert!(b.len() >= MIN_LEN);
        let d = Message::decode(&b).unwrap();
        assert_eq!(d, m, "values over 255 bytes are split and joined again");
        assert_eq!(d.msg_type(), Some(MsgType::Discover));
    }

    #[test]
    fn truncated_options_are_refused() {
        let mut b = Message::request(1, [0; 6], MsgType::Offer).encode();
        b.truncate(HEADER + 4);
        b.extend_from_slice(&[opt::SUBNET_MASK, 4, 255, 255]);
        assert!(Message::decode(&b).is_none());
        assert!(Message::decode(&b[..100]).is_none());
    }

    #[test]
    fn frame_and_unframe() {
        let payload = b"hello dhcp";
        let mut p = frame(Ipv4Addr::UNSPECIFIED, Ipv4Addr::BROADCAST, payload);
        // A server's reply to the client port.
        p[20..22].copy_from_slice(&SERVER_PORT.to_be_bytes());
        p[22..24].copy_from_slice(&CLIENT_PORT.to_be_bytes());
        assert_eq!(checksum(&p[..20]), 0, "valid IP header checksum");
        let (src, got) = unframe(&p).unwrap();
        assert_eq!((src, got), (Ipv4Addr::UNSPECIFIED, &payload[..]));
        // Our own request (to port 67) is not for us.
        let p = frame(Ipv4Addr::UNSPECIFIED, Ipv4Addr::BROADCAST, payload);
        assert!(unframe(&p).is_none());
    }

    proptest! {
        #[test]
        fn decode_never_panics(b in proptest::collection::vec(any::<u8>(), 0..700)) {
            let _ = Message::decode(&b);
            let _ = unframe(&b);
        }

        #[test]
        fn decode_garbage_options_never_panics(opts in proptest::collection::vec(any::<u8>(), 0..400)) {
            let mut b = Message::request(7, [1; 6], MsgType::Ack).encode();
            b.truncate(HEADER + 4);
            b.extend_from_slice(&opts);
            if let Some(m) = Message::decode(&b) {
                let _ = (m.msg_type(), m.get_ip(opt::ROUTER), m.get_u32(opt::LEASE_TIME));
            }
        }

        #[test]
        fn encode_decode_round_trips(
            xid in any::<u32>(),
            opts in proptest::collection::vec((1u8..255, proptest::collection::vec(any::<u8>(), 1..300)), 0..6),
        ) {
            let mut m = Message::request(xid, [3; 6], MsgType::Request);
            for (c, v) in opts {
                m.set(c, v);
            }
            // set() keeps one value per code, so decoding gives the same list back.
            let d = Message::decode(&m.encode()).unwrap();
            prop_assert_eq!(d, m);
        }

        #[test]
        fn unframe_garbage_after_header_never_panics(tail in proptest::collection::vec(any::<u8>(), 0..64), total in any::<u16>(), ulen in any::<u16>()) {
            let mut p = frame(Ipv4Addr::LOCALHOST, Ipv4Addr::BROADCAST, &tail);
            p[2..4].copy_from_slice(&total.to_be_bytes());
            p[22..24].copy_from_slice(&CLIENT_PORT.to_be_bytes());
            p[24..26].copy_from_slice(&ulen.to_be_bytes());
            let _ = unframe(&p);
        }
    }
}
