//! ICMP error messages the udp backend sends back into flannel0 on behalf of the overlay:
//! no route to a peer's subnet (destination unreachable), a packet larger than the overlay
//! MTU with DF set (fragmentation needed / packet too big — this is what makes path MTU
//! discovery work through the tunnel), and TTL expiry (time exceeded).
//!
//! The message goes FROM the node's flannel0 address TO the source of the offending
//! packet, with TTL / hop limit 64, and quotes the offending packet: RFC 792 requires the IP
//! header plus 8 bytes (enough for the ports); like Linux we quote more — up to 576 bytes
//! in all for IPv4 (548 bytes of quote, Linux's `icmp_send` limit), and as much as fits
//! in the IPv6 minimum MTU of 1280 (RFC 4443 §2.4(c)).
//!
//! RFC 1122 §3.2.2 / RFC 4443 §2.4(e) forbid errors about errors (to prevent storms): the
//! builders return `None`, and send nothing, when the original is an ICMP error (or an ICMP
//! type we do not know to be informational, as Linux does), a non-first fragment, or
//! from/to an address that does not name one host (multicast, broadcast, unspecified,
//! loopback). An original that fails [`crate::ip::inspect`] gets no answer either.

use crate::bytes::{put16, put32, u8_at};
use crate::csum;
use crate::ip::{self, PROTO_ICMP, PROTO_ICMPV6};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

/// Linux caps ICMPv4 errors at 576 bytes (RFC 1812 §4.3.2.3).
pub const V4_MAX_ERROR_LEN: usize = 576;
/// RFC 4443 §2.4(c): as much as fits without exceeding the minimum IPv6 MTU.
pub const V6_MAX_ERROR_LEN: usize = 1280;
const V4_HEADERS: usize = 20 + 8;
const V6_HEADERS: usize = 40 + 8;
const TTL: u8 = 64;

/// Which ICMPv4 error to build.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum V4Error {
    /// Type 3 code 0: no lease covers the destination.
    NetUnreachable,
    /// Type 3 code 4 with the next-hop MTU (RFC 1191): DF packet larger than the overlay MTU.
    FragmentationNeeded { mtu: u16 },
    /// Type 11 code 0: TTL expired in transit.
    TimeExceeded,
}

/// Which ICMPv6 error to build.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum V6Error {
    /// Type 1 code 0: no route to destination.
    NoRoute,
    /// Type 2 code 0 with the MTU.
    PacketTooBig { mtu: u32 },
    /// Type 3 code 0: hop limit exceeded in transit.
    TimeExceeded,
}

/// ICMPv4 types that are queries/replies rather than errors. Every other type — including
/// unassigned ones — is treated as an error and never answered, as Linux's `icmp_pointers`
/// table does.
fn icmpv4_informational(t: u8) -> bool {
    matches!(t, 0 | 8 | 13..=18)
}

/// An IPv4 address that names a single host (RFC 1122 §3.2.2: not zero, loopback,
/// broadcast, multicast or class E).
fn v4_single_host(a: Ipv4Addr) -> bool {
    let o = a.octets()[0];
    !(o == 0 || o == 127 || o >= 224)
}

fn v6_single_host(a: Ipv6Addr) -> bool {
    !(a.is_unspecified() || a.is_loopback() || a.is_multicast())
}

/// Builds an ICMPv4 error about `orig` into `out`, sent from `from`. Returns the length of
/// the IPv4 packet written, or `None` when no error may be sent (see the module doc) or
/// `out` cannot hold the headers plus the mandatory quote (IP header + 8 bytes).
pub fn build_v4(out: &mut [u8], from: Ipv4Addr, orig: &[u8], kind: V4Error) -> Option<usize> {
    let h = ip::inspect(orig).ok()?;
    let (IpAddr::V4(osrc), IpAddr::V4(odst)) = (h.src, h.dst) else {
        return None;
    };
    if !v4_single_host(osrc) || !v4_single_host(odst) || h.fragment_offset != 0 {
        return None;
    }
    if h.protocol == PROTO_ICMP && !icmpv4_informational(u8_at(orig, h.header_len)?) {
        return None;
    }
    let quote = h
        .total_len
        .min(V4_MAX_ERROR_LEN - V4_HEADERS)
        .min(out.len().checked_sub(V4_HEADERS)?);
    if quote < h.total_len.min(h.header_len + 8) {
        return None;
    }
    let total = V4_HEADERS + quote;
    let msg = out.get_mut(..total)?;
    let (typ, code, rest) = match kind {
        V4Error::NetUnreachable => (3, 0, 0u32),
        // RFC 1191: unused(16) | next-hop MTU(16).
        V4Error::FragmentationNeeded { mtu } => (3, 4, u32::from(mtu)),
        V4Error::TimeExceeded => (11, 0, 0),
    };
    // IPv4 header. TOS 0xc0 (internetwork control) as Linux uses for ICMP errors; ID 0 and
    // no DF: the message is small enough never to need fragmenting.
    msg.get_mut(..12)?
        .copy_from_slice(&[0x45, 0xc0, 0, 0, 0, 0, 0, 0, TTL, PROTO_ICMP, 0, 0]);
    put16(msg, 2, total as u16)?;
    msg.get_mut(12..16)?.copy_from_slice(&from.octets());
    msg.get_mut(16..20)?.copy_from_slice(&osrc.octets());
    let ipc = csum::finish(csum::sum(msg.get(..20)?, 0));
    put16(msg, 10, ipc)?;
    // ICMP header and quote.
    msg.get_mut(20..24)?.copy_from_slice(&[typ, code, 0, 0]);
    put32(msg, 24, rest)?;
    msg.get_mut(V4_HEADERS..)?
        .copy_from_slice(orig.get(..quote)?);
    let c = csum::finish(csum::sum(msg.get(20..)?, 0));
    put16(msg, 22, c)?;
    Some(total)
}

/// Builds an ICMPv6 error about `orig` into `out`, sent from `from`. Returns the length of
/// the IPv6 packet written, or `None` as for [`build_v4`]. Per RFC 4443 §2.4(e.3) a
/// packet to a multicast destination gets only Packet Too Big.
pub fn build_v6(out: &mut [u8], from: Ipv6Addr, orig: &[u8], kind: V6Error) -> Option<usize> {
    let h = ip::inspect(orig).ok()?;
    let (IpAddr::V6(osrc), IpAddr::V6(odst)) = (h.src, h.dst) else {
        return None;
    };
    if !v6_single_host(osrc) || h.fragment_offset != 0 {
        return None;
    }
    if odst.is_multicast() && !matches!(kind, V6Error::PacketTooBig { .. }) {
        return None;
    }
    // ICMPv6 error types are 0..=127 (RFC 4443 §2.1).
    if h.l4_protocol == PROTO_ICMPV6 && u8_at(orig, h.l4_offset)? < 128 {
        return None;
    }
    let quote = h
        .total_len
        .min(V6_MAX_ERROR_LEN - V6_HEADERS)
        .min(out.len().checked_sub(V6_HEADERS)?);
    if quote < h.total_len.min(h.header_len + 8) {
        return None;
    }
    let total = V6_HEADERS + quote;
    let icmp_len = (total - 40) as u32;
    let msg = out.get_mut(..total)?;
    let (typ, rest) = match kind {
        V6Error::NoRoute => (1, 0),
        V6Error::PacketTooBig { mtu } => (2, mtu),
        V6Error::TimeExceeded => (3, 0),
    };
    msg.get_mut(..8)?
        .copy_from_slice(&[0x60, 0, 0, 0, 0, 0, PROTO_ICMPV6, TTL]);
    put16(msg, 4, icmp_len as u16)?;
    msg.get_mut(8..24)?.copy_from_slice(&from.octets());
    msg.get_mut(24..40)?.copy_from_slice(&osrc.octets());
    msg.get_mut(40..44)?.copy_from_slice(&[typ, 0, 0, 0]);
    put32(msg, 44, rest)?;
    msg.get_mut(V6_HEADERS..)?
        .copy_from_slice(orig.get(..quote)?);
    let acc = csum::pseudo_header(IpAddr::V6(from), IpAddr::V6(osrc), PROTO_ICMPV6, icmp_len);
    let c = csum::finish(csum::sum(msg.get(40..)?, acc));
    put16(msg, 42, c)?;
    Some(total)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ip::inspect;
    use crate::testutil::*;
    use proptest::prelude::*;

    const NODE4: Ipv4Addr = Ipv4Addr::new(10, 244, 1, 0);
    const NODE6: Ipv6Addr = Ipv6Addr::new(0xfd00, 0, 0, 1, 0, 0, 0, 0);

    fn icmp4(typ: u8) -> Vec<u8> {
        let mut p = v4_header(28, PROTO_ICMP);
        p.extend_from_slice(&[typ, 0, 0, 0, 0, 0, 0, 0]);
        p
    }

    fn icmp6(typ: u8) -> Vec<u8> {
        let mut p = v6_header(8, PROTO_ICMPV6);
        p.extend_from_slice(&[typ, 0, 0, 0, 0, 0, 0, 0]);
        p
    }

    #[test]
    fn v4_frag_needed_layout_and_checksums() {
        let orig = tcp4(&[0xab; 1400], ACK, 1, &[]);
        let mut out = [0u8; 1500];
        let n = build_v4(
            &mut out,
            NODE4,
            &orig,
            V4Error::FragmentationNeeded { mtu: 1450 },
        )
        .unwrap();
        assert_eq!(n, V4_MAX_ERROR_LEN);
        let h = inspect(&out[..n]).expect("valid IPv4 header and checksum");
        assert_eq!((h.src, h.dst), (IpAddr::V4(NODE4), IpAddr::V4(SRC4)));
        assert_eq!((h.protocol, h.ttl, h.total_len), (PROTO_ICMP, 64, n));
        assert_eq!(&out[20..22], &[3, 4]);
        assert_eq!(&out[24..28], &[0, 0, 0x05, 0xaa]);
        assert_eq!(csum::fold(csum::sum(&out[20..n], 0)), 0xffff);
        assert_eq!(&out[28..n], &orig[..548]);
    }

    #[test]
    fn v4_small_original_quoted_whole() {
        let orig = udp(false, b"hi");
        let mut out = [0u8; 600];
        for (kind, typ, code) in [
            (V4Error::NetUnreachable, 3, 0),
            (V4Error::TimeExceeded, 11, 0),
        ] {
            let n = build_v4(&mut out, NODE4, &orig, kind).unwrap();
            assert_eq!(n, 28 + orig.len());
            assert_eq!(&out[20..22], &[typ, code]);
            assert_eq!(&out[28..n], &orig[..]);
            assert_eq!(csum::fold(csum::sum(&out[20..n], 0)), 0xffff);
        }
    }

    #[test]
    fn v4_out_buffer_limits_quote() {
        let orig = tcp4(&[1; 100], ACK, 1, &[]);
        let mut out = [0u8; 28 + 28];
        assert_eq!(
            build_v4(&mut out, NODE4, &orig, V4Error::NetUnreachable),
            Some(56)
        );
        let mut out = [0u8; 28 + 27];
        assert_eq!(
            build_v4(&mut out, NODE4, &orig, V4Error::NetUnreachable),
            None
        );
    }

    #[test]
    fn v4_never_errors_about_errors() {
        let mut out = [0u8; 600];
        let k = V4Error::NetUnreachable;
        for t in [3, 4, 5, 11, 12, 1, 200] {
            assert_eq!(build_v4(&mut out, NODE4, &icmp4(t), k), None, "type {t}");
        }
        for t in [0, 8, 13] {
            assert!(
                build_v4(&mut out, NODE4, &icmp4(t), k).is_some(),
                "type {t}"
            );
        }
        let mut frag = tcp4(&[1; 40], ACK, 1, &[]);
        set_v4_frag(&mut frag, 0x2000 | 5);
        assert_eq!(build_v4(&mut out, NODE4, &frag, k), None);
        set_v4_frag(&mut frag, 0x2000); // first fragment: answered
        assert!(build_v4(&mut out, NODE4, &frag, k).is_some());
        for src in [
            Ipv4Addr::new(224, 0, 0, 1),
            Ipv4Addr::BROADCAST,
            Ipv4Addr::UNSPECIFIED,
            Ipv4Addr::LOCALHOST,
        ] {
            let mut p = tcp4(&[1; 40], ACK, 1, &[]);
            set_v4_src(&mut p, src);
            assert_eq!(build_v4(&mut out, NODE4, &p, k), None, "{src}");
        }
        // Malformed or wrong family: nothing.
        let mut bad = tcp4(&[1; 40], ACK, 1, &[]);
        bad[8] ^= 1;
        assert_eq!(build_v4(&mut out, NODE4, &bad, k), None);
        assert_eq!(build_v4(&mut out, NODE4, &tcp6(&[1], ACK, 1, &[]), k), None);
    }

    #[test]
    fn v6_packet_too_big_layout_and_checksum() {
        let orig = tcp6(&[0xcd; 1400], ACK, 1, &[]);
        let mut out = [0u8; 1500];
        let n = build_v6(&mut out, NODE6, &orig, V6Error::PacketTooBig { mtu: 1430 }).unwrap();
        assert_eq!(n, 1280);
        let h = inspect(&out[..n]).unwrap();
        assert_eq!((h.src, h.dst), (IpAddr::V6(NODE6), IpAddr::V6(SRC6)));
        assert_eq!((h.protocol, h.ttl, h.total_len), (PROTO_ICMPV6, 64, n));
        assert_eq!(&out[40..42], &[2, 0]);
        assert_eq!(&out[44..48], &1430u32.to_be_bytes());
        assert_eq!(&out[48..n], &orig[..1232]);
        let acc = csum::pseudo_header(h.src, h.dst, PROTO_ICMPV6, (n - 40) as u32);
        assert_eq!(csum::fold(csum::sum(&out[40..n], acc)), 0xffff);
    }

    #[test]
    fn v6_types_and_suppression() {
        let mut out = [0u8; 1280];
        let orig = udp(true, b"hello");
        for (kind, typ) in [(V6Error::NoRoute, 1), (V6Error::TimeExceeded, 3)] {
            let n = build_v6(&mut out, NODE6, &orig, kind).unwrap();
            assert_eq!(n, 48 + orig.len());
            assert_eq!(out[40], typ);
        }
        for t in [1, 2, 3, 4, 100] {
            assert_eq!(build_v6(&mut out, NODE6, &icmp6(t), V6Error::NoRoute), None);
        }
        assert!(build_v6(&mut out, NODE6, &icmp6(128), V6Error::NoRoute).is_some());
        // Multicast destination: only packet too big.
        let mut m = udp(true, b"x");
        m[24] = 0xff;
        assert_eq!(build_v6(&mut out, NODE6, &m, V6Error::NoRoute), None);
        assert!(build_v6(&mut out, NODE6, &m, V6Error::PacketTooBig { mtu: 1280 }).is_some());
        // Multicast or unspecified source: nothing.
        let mut s = udp(true, b"x");
        s[8] = 0xff;
        assert_eq!(
            build_v6(&mut out, NODE6, &s, V6Error::PacketTooBig { mtu: 1280 }),
            None
        );
        s[8..24].fill(0);
        assert_eq!(build_v6(&mut out, NODE6, &s, V6Error::NoRoute), None);
        assert_eq!(
            build_v6(&mut out, NODE6, &udp(false, b"x"), V6Error::NoRoute),
            None
        );
    }

    proptest! {
        #[test]
        fn builders_never_panic(data in proptest::collection::vec(any::<u8>(), 0..120), outlen in 0usize..700, mtu in any::<u16>()) {
            let mut out = vec![0u8; outlen];
            let _ = build_v4(&mut out, NODE4, &data, V4Error::FragmentationNeeded { mtu });
            let _ = build_v6(&mut out, NODE6, &data, V6Error::PacketTooBig { mtu: u32::from(mtu) });
        }

        #[test]
        fn builders_valid_on_mutated_packets(v6 in any::<bool>(), len in 0usize..2000, outlen in 0usize..1600,
                                             muts in proptest::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 0..4)) {
            let mut p = if v6 { tcp6(&vec![3; len], ACK, 1, &[]) } else { tcp4(&vec![3; len], ACK, 1, &[]) };
            for (i, b) in muts { let n = p.len(); p[i.index(n)] = b; }
            let mut out = vec![0u8; outlen];
            let n = if v6 { build_v6(&mut out, NODE6, &p, V6Error::TimeExceeded) } else { build_v4(&mut out, NODE4, &p, V4Error::TimeExceeded) };
            if let Some(n) = n {
                let h = inspect(&out[..n]).expect("valid packet");
                prop_assert_eq!(h.total_len, n);
                let max = if v6 { V6_MAX_ERROR_LEN } else { V4_MAX_ERROR_LEN };
                prop_assert!(n <= max);
            }
        }
    }
}
