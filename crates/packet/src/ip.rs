//! Parsing and validating the IP header of one packet.
//!
//! Everything the udp backend forwards or answers first passes [`inspect`]: datagrams from
//! the wire are hostile, and a packet whose lengths disagree with its buffer or whose IPv4
//! header checksum is wrong must be dropped here rather than trusted by the code after it
//! (segmentation, ICMP quoting, GRO) that indexes by those lengths.

use crate::bytes::{be16, u8_at};
use crate::csum;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use thiserror::Error;

/// IP protocol numbers used by this crate.
pub const PROTO_ICMP: u8 = 1;
pub const PROTO_TCP: u8 = 6;
pub const PROTO_UDP: u8 = 17;
pub const PROTO_ICMPV6: u8 = 58;
/// IPv6 extension headers walked by [`inspect`] to find the transport header.
const EXT_HOP_BY_HOP: u8 = 0;
const EXT_ROUTING: u8 = 43;
const EXT_FRAGMENT: u8 = 44;
const EXT_DEST_OPTS: u8 = 60;
/// Bound on the extension-header walk, so a crafted chain costs constant time.
const MAX_EXT_HEADERS: usize = 8;

pub const IPV4_MIN_HEADER: usize = 20;
pub const IPV6_HEADER: usize = 40;

/// What is wrong with a packet that [`inspect`] rejects.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Error)]
pub enum Malformed {
    #[error("empty packet")]
    Empty,
    #[error("IP version {0} is neither 4 nor 6")]
    BadVersion(u8),
    #[error("truncated: need {need} bytes, have {have}")]
    Truncated { need: usize, have: usize },
    #[error("IPv4 IHL {0} is below the minimum of 5")]
    BadIhl(u8),
    #[error("IPv4 header checksum does not verify")]
    BadChecksum,
    #[error("IPv4 total length {total} is shorter than its header ({header} bytes)")]
    TotalShorterThanHeader { total: usize, header: usize },
    #[error("length field says {total} bytes but the buffer holds {have}")]
    LengthMismatch { total: usize, have: usize },
    #[error("IPv6 extension header chain runs past the payload")]
    BadExtensionHeader,
}

/// The facts about one IP packet that the udp backend acts on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header {
    /// 4 or 6.
    pub version: u8,
    pub src: IpAddr,
    pub dst: IpAddr,
    /// IPv4: IHL × 4 (20..=60). IPv6: 40, the fixed header (extension headers are part of
    /// the payload; see `l4_offset`).
    pub header_len: usize,
    /// The packet's own idea of its length: IPv4 total length, IPv6 40 + payload length.
    pub total_len: usize,
    /// Bytes in the buffer after `total_len` (Ethernet padding and the like). Allowed, but
    /// not part of the packet: forwarders must send only `..total_len`.
    pub trailing: usize,
    /// IPv4 protocol / IPv6 next header of the fixed header.
    pub protocol: u8,
    /// IPv4 TTL / IPv6 hop limit.
    pub ttl: u8,
    /// IPv4 DF. Always false for IPv6 (routers never fragment IPv6).
    pub dont_fragment: bool,
    /// IPv4 MF set or offset != 0; IPv6 a fragment header with M set or offset != 0.
    pub is_fragment: bool,
    /// Fragment offset in bytes (0 for unfragmented packets and first fragments).
    pub fragment_offset: u16,
    /// Offset of the transport header: IPv4 `header_len`; IPv6 after the hop-by-hop,
    /// routing, fragment and destination-options headers. Only meaningful when
    /// `fragment_offset == 0` (later fragments carry no transport header).
    pub l4_offset: usize,
    /// Protocol of the header at `l4_offset` (equal to `protocol` for IPv4).
    pub l4_protocol: u8,
}

/// Parses and validates the IP header at the start of `pkt`.
///
/// Checks, and why:
/// - version 4 or 6: anything else is not an IP packet and the TUN would reject it;
/// - IPv4 IHL >= 5 and the header present: the options length is attacker-controlled;
/// - IPv4 header checksum: a corrupted header must not be forwarded or quoted in ICMP;
/// - total length within the buffer: everything after us slices by it. Trailing bytes are
///   allowed (and counted in [`Header::trailing`]) because padded frames are legitimate;
/// - IPv6 extension headers within the payload, walked at most 8 deep.
pub fn inspect(pkt: &[u8]) -> Result<Header, Malformed> {
    let first = u8_at(pkt, 0).ok_or(Malformed::Empty)?;
    match first >> 4 {
        4 => inspect_v4(pkt, first),
        6 => inspect_v6(pkt),
        v => Err(Malformed::BadVersion(v)),
    }
}

fn truncated(need: usize, pkt: &[u8]) -> Malformed {
    Malformed::Truncated {
        need,
        have: pkt.len(),
    }
}

fn inspect_v4(pkt: &[u8], first: u8) -> Result<Header, Malformed> {
    let fixed = pkt
        .get(..IPV4_MIN_HEADER)
        .ok_or_else(|| truncated(IPV4_MIN_HEADER, pkt))?;
    let ihl = first & 0x0f;
    if ihl < 5 {
        return Err(Malformed::BadIhl(ihl));
    }
    let header_len = usize::from(ihl) * 4;
    let header = pkt
        .get(..header_len)
        .ok_or_else(|| truncated(header_len, pkt))?;
    if csum::fold(csum::sum(header, 0)) != 0xffff {
        return Err(Malformed::BadChecksum);
    }
    let total_len = usize::from(be16(fixed, 2).unwrap_or(0));
    if total_len < header_len {
        return Err(Malformed::TotalShorterThanHeader {
            total: total_len,
            header: header_len,
        });
    }
    if total_len > pkt.len() {
        return Err(Malformed::LengthMismatch {
            total: total_len,
            have: pkt.len(),
        });
    }
    let frag = be16(fixed, 6).unwrap_or(0);
    let more_fragments = frag & 0x2000 != 0;
    let fragment_offset = (frag & 0x1fff) << 3;
    let protocol = u8_at(fixed, 9).unwrap_or(0);
    let addr = |off: usize| -> IpAddr {
        let mut o = [0u8; 4];
        if let Some(s) = fixed.get(off..off + 4) {
            o.copy_from_slice(s);
        }
        IpAddr::V4(Ipv4Addr::from(o))
    };
    Ok(Header {
        version: 4,
        src: addr(12),
        dst: addr(16),
        header_len,
        total_len,
        trailing: pkt.len() - total_len,
        protocol,
        ttl: u8_at(fixed, 8).unwrap_or(0),
        dont_fragment: frag & 0x4000 != 0,
        is_fragment: more_fragments || fragment_offset != 0,
        fragment_offset,
        l4_offset: header_len,
        l4_protocol: protocol,
    })
}

fn inspect_v6(pkt: &[u8]) -> Result<Header, Malformed> {
    let fixed = pkt
        .get(..IPV6_HEADER)
        .ok_or_else(|| truncated(IPV6_HEADER, pkt))?;
    // A payload length of 0 would announce a jumbogram (RFC 2675); flannel's MTUs never
    // produce one, so it is simply a 40-byte packet here.
    let total_len = IPV6_HEADER + usize::from(be16(fixed, 4).unwrap_or(0));
    if total_len > pkt.len() {
        return Err(Malformed::LengthMismatch {
            total: total_len,
            have: pkt.len(),
        });
    }
    let addr = |off: usize| -> IpAddr {
        let mut o = [0u8; 16];
        if let Some(s) = fixed.get(off..off + 16) {
            o.copy_from_slice(s);
        }
        IpAddr::V6(Ipv6Addr::from(o))
    };
    let protocol = u8_at(fixed, 6).unwrap_or(0);
    let body = pkt.get(..total_len).unwrap_or(fixed);
    let (mut next, mut off) = (protocol, IPV6_HEADER);
    let (mut is_fragment, mut fragment_offset) = (false, 0u16);
    for _ in 0..MAX_EXT_HEADERS {
        match next {
            EXT_HOP_BY_HOP | EXT_ROUTING | EXT_DEST_OPTS => {
                let nh = u8_at(body, off).ok_or(Malformed::BadExtensionHeader)?;
                let len = u8_at(body, off + 1).ok_or(Malformed::BadExtensionHeader)?;
                off += (usize::from(len) + 1) * 8;
                if off > total_len {
                    return Err(Malformed::BadExtensionHeader);
                }
                next = nh;
            }
            EXT_FRAGMENT => {
                let nh = u8_at(body, off).ok_or(Malformed::BadExtensionHeader)?;
                let field = be16(body, off + 2).ok_or(Malformed::BadExtensionHeader)?;
                if off + 8 > total_len {
                    return Err(Malformed::BadExtensionHeader);
                }
                off += 8;
                next = nh;
                fragment_offset = field & 0xfff8;
                is_fragment = field & 1 != 0 || fragment_offset != 0;
                if fragment_offset != 0 {
                    // What follows is the middle of someone else's payload.
                    break;
                }
            }
            _ => break,
        }
    }
    Ok(Header {
        version: 6,
        src: addr(8),
        dst: addr(24),
        header_len: IPV6_HEADER,
        total_len,
        trailing: pkt.len() - total_len,
        protocol,
        ttl: u8_at(fixed, 7).unwrap_or(0),
        dont_fragment: false,
        is_fragment,
        fragment_offset,
        l4_offset: off,
        l4_protocol: next,
    })
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::testutil::*;
    use proptest::prelude::*;

    #[test]
    fn v4_fields() {
        let p = tcp4(b"hello", 0x18, 7, &[]);
        let h = inspect(&p).unwrap();
        assert_eq!(h.version, 4);
        assert_eq!(h.src, IpAddr::V4(SRC4));
        assert_eq!(h.dst, IpAddr::V4(DST4));
        assert_eq!((h.header_len, h.total_len, h.trailing), (20, 45, 0));
        assert_eq!((h.protocol, h.ttl), (PROTO_TCP, 64));
        assert!(h.dont_fragment);
        assert!(!h.is_fragment);
    }

    #[test]
    fn v4_trailing_bytes_are_reported() {
        let mut p = tcp4(b"hello", 0x18, 7, &[]);
        p.extend_from_slice(&[0; 6]);
        assert_eq!(inspect(&p).unwrap().trailing, 6);
    }

    #[test]
    fn v4_rejections() {
        let good = tcp4(b"hello", 0x18, 7, &[]);
        assert_eq!(inspect(&[]), Err(Malformed::Empty));
        assert_eq!(
            inspect(&good[..10]),
            Err(Malformed::Truncated { need: 20, have: 10 })
        );
        let mut p = good.clone();
        p[0] = 0x44;
        assert_eq!(inspect(&p), Err(Malformed::BadIhl(4)));
        let mut p = good.clone();
        p[8] ^= 1;
        assert_eq!(inspect(&p), Err(Malformed::BadChecksum));
        assert_eq!(
            inspect(&good[..40]),
            Err(Malformed::LengthMismatch {
                total: 45,
                have: 40
            })
        );
        let mut p = good.clone();
        set_v4_total(&mut p, 12);
        assert_eq!(
            inspect(&p),
            Err(Malformed::TotalShorterThanHeader {
                total: 12,
                header: 20
            })
        );
        let mut p = good.clone();
        p[0] = 0x55;
        assert_eq!(inspect(&p), Err(Malformed::BadVersion(5)));
        let mut p = good;
        p[0] = 0x4f; // IHL 15 = 60 bytes, more than the packet
        assert_eq!(
            inspect(&p),
            Err(Malformed::Truncated { need: 60, have: 45 })
        );
    }

    #[test]
    fn v4_fragments() {
        let mut p = tcp4(b"hello", 0x18, 7, &[]);
        set_v4_frag(&mut p, 0x2000); // MF, offset 0
        let h = inspect(&p).unwrap();
        assert!(h.is_fragment && h.fragment_offset == 0);
        set_v4_frag(&mut p, 0x0003); // offset 24
        let h = inspect(&p).unwrap();
        assert!(h.is_fragment && h.fragment_offset == 24 && !h.dont_fragment);
    }

    #[test]
    fn v6_fields_and_fragment_header() {
        let p = tcp6(b"hello", 0x18, 7, &[]);
        let h = inspect(&p).unwrap();
        assert_eq!((h.version, h.header_len, h.total_len), (6, 40, 65));
        assert_eq!((h.src, h.dst), (IpAddr::V6(SRC6), IpAddr::V6(DST6)));
        assert_eq!(
            (h.protocol, h.l4_protocol, h.l4_offset, h.ttl),
            (6, 6, 40, 64)
        );
        // Insert a fragment header (offset 16, M set) after the fixed header.
        let mut f = p[..40].to_vec();
        f[6] = EXT_FRAGMENT;
        f.extend_from_slice(&[PROTO_TCP, 0, 0, 0x11, 0, 0, 0, 1]);
        f.extend_from_slice(&p[40..]);
        let plen = (f.len() - 40) as u16;
        f[4..6].copy_from_slice(&plen.to_be_bytes());
        let h = inspect(&f).unwrap();
        assert!(h.is_fragment);
        assert_eq!((h.fragment_offset, h.l4_protocol, h.l4_offset), (16, 6, 48));
        // A hop-by-hop header whose length runs past the payload.
        let mut b = f.clone();
        b[40] = 0; // not used: rewrite the chain to start with hop-by-hop
        b[6] = EXT_HOP_BY_HOP;
        b[41] = 200;
        assert_eq!(inspect(&b), Err(Malformed::BadExtensionHeader));
        assert_eq!(
            inspect(&p[..30]),
            Err(Malformed::Truncated { need: 40, have: 30 })
        );
    }

    proptest! {
        #[test]
        fn inspect_never_panics(data in proptest::collection::vec(any::<u8>(), 0..200)) {
            let _ = inspect(&data);
        }

        #[test]
        fn inspect_never_panics_on_mutated_packets(
            v6 in any::<bool>(), muts in proptest::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..6),
            cut in any::<prop::sample::Index>(),
        ) {
            let mut p = if v6 { tcp6(&[1; 40], 0x10, 1, &[]) } else { tcp4(&[1; 40], 0x10, 1, &[]) };
            for (i, b) in muts { let n = p.len(); p[i.index(n)] = b; }
            let n = p.len();
            p.truncate(cut.index(n + 1));
            if let Ok(h) = inspect(&p) {
                prop_assert!(h.total_len <= p.len());
                prop_assert_eq!(h.total_len + h.trailing, p.len());
                prop_assert!(h.l4_offset <= h.total_len);
            }
        }
    }
}
