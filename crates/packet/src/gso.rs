//! Segmentation ("TSO in our code"): turning one TUN read into the packets the wire carries.
//!
//! With `IFF_VNET_HDR` and TSO enabled on flannel0 the kernel hands us TCP super-packets of
//! up to 64 KB, described by the [`VirtioNetHdr`] before them; sending them as-is would
//! exceed the overlay MTU, so they are cut here into `gso_size`-payload segments, each a
//! complete IP packet, exactly as a NIC doing TSO would:
//!
//! - IPv4 total length / IPv6 payload length per segment; the IPv4 ID goes up by one per
//!   segment (receivers reassembling nothing still use it for duplicate detection, and it is
//!   what a real NIC does) and the IPv4 header checksum is recomputed;
//! - TCP sequence number advanced by the payload already sent; FIN and PSH only on the last
//!   segment (a FIN in the middle would close the stream early), CWR only on the first (it
//!   acknowledges one congestion event, RFC 3168);
//! - the TCP or UDP checksum computed in full, pseudo-header included: the super-packet's
//!   checksum field holds only the pseudo-header sum (`F_NEEDS_CSUM`), and nobody after us
//!   will finish it.
//!
//! A packet with `gso_type` NONE is a single packet; if it has `F_NEEDS_CSUM` its checksum
//! is completed ([`complete_checksum`], which callers may also use in place to avoid a copy).
//!
//! Output goes to caller-owned memory: segment `i` at `out[i * seg_stride..]`, its length in
//! `lens[i]`, so a batch of segments can be handed to `sendmmsg` without any allocation.

use crate::bytes::{be16, be32, put16, put32, u8_at};
use crate::csum;
use crate::ip::{self, Malformed, PROTO_TCP, PROTO_UDP};
use crate::virtio::{VirtioNetHdr, F_NEEDS_CSUM, GSO_NONE, GSO_TCPV4, GSO_TCPV6, GSO_UDP_L4};
use thiserror::Error;

const TCP_FIN: u8 = 0x01;
const TCP_PSH: u8 = 0x08;
const TCP_CWR: u8 = 0x80;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Error)]
pub enum GsoError {
    #[error("malformed IP packet: {0}")]
    Malformed(#[from] Malformed),
    #[error("unsupported gso_type {0}")]
    UnsupportedGsoType(u8),
    #[error("gso_type says IPv{expected} but the packet is IPv{got}")]
    VersionMismatch { expected: u8, got: u8 },
    #[error("gso_type needs protocol {expected} but the packet carries {got}")]
    WrongProtocol { expected: u8, got: u8 },
    #[error("a super-packet cannot be an IP fragment")]
    Fragment,
    #[error("transport header truncated or invalid")]
    BadTransportHeader,
    #[error("gso_size is 0")]
    ZeroGsoSize,
    #[error("{need} segments needed but room for {max}")]
    TooManySegments { need: usize, max: usize },
    #[error("a segment of {need} bytes does not fit the stride of {stride}")]
    StrideTooSmall { need: usize, stride: usize },
    #[error("output buffer of {have} bytes, {need} needed")]
    OutTooSmall { need: usize, have: usize },
    #[error("csum_start/csum_offset point outside the packet")]
    CsumOutOfRange,
}

/// Completes a partial (`F_NEEDS_CSUM`) checksum in place: sums `pkt[csum_start..]` (whose
/// checksum field already holds the pseudo-header sum) and stores the complement at
/// `csum_start + csum_offset`. A zero result is stored as 0xFFFF, as the kernel's
/// `skb_checksum_help` does, because 0 means "no checksum" for UDP over IPv4 and is
/// forbidden for UDP over IPv6; for TCP both encode the same value.
///
/// A header without `F_NEEDS_CSUM` leaves `pkt` alone.
pub fn complete_checksum(hdr: &VirtioNetHdr, pkt: &mut [u8]) -> Result<(), GsoError> {
    if hdr.flags & F_NEEDS_CSUM == 0 {
        return Ok(());
    }
    let start = usize::from(hdr.csum_start);
    let field = start + usize::from(hdr.csum_offset);
    if field + 2 > pkt.len() {
        return Err(GsoError::CsumOutOfRange);
    }
    let region = pkt.get(start..).ok_or(GsoError::CsumOutOfRange)?;
    let c = match csum::finish(csum::sum(region, 0)) {
        0 => 0xffff,
        c => c,
    };
    put16(pkt, field, c).ok_or(GsoError::CsumOutOfRange)
}

/// Segments `pkt` (the packet after the virtio header) as `hdr` describes, writing segment
/// `i` to `out[i * seg_stride..]` and its length to `lens[i]`; returns the segment count.
///
/// At most `lens.len()` segments are produced; a packet needing more is refused whole
/// (rather than sending a prefix of a TCP stream and dropping the rest). The header's
/// `hdr_len` and `csum_*` are hints that are not trusted: the headers are re-parsed from the
/// packet, and for GSO packets every checksum is computed from scratch.
pub fn segment(
    hdr: &VirtioNetHdr,
    pkt: &[u8],
    out: &mut [u8],
    seg_stride: usize,
    lens: &mut [usize],
) -> Result<usize, GsoError> {
    let (want_version, want_proto) = match hdr.gso_kind() {
        GSO_NONE => return single(hdr, pkt, out, lens),
        GSO_TCPV4 => (Some(4), PROTO_TCP),
        GSO_TCPV6 => (Some(6), PROTO_TCP),
        GSO_UDP_L4 => (None, PROTO_UDP),
        other => return Err(GsoError::UnsupportedGsoType(other)),
    };
    let h = ip::inspect(pkt)?;
    if let Some(v) = want_version {
        if v != h.version {
            return Err(GsoError::VersionMismatch {
                expected: v,
                got: h.version,
            });
        }
    }
    if h.is_fragment {
        return Err(GsoError::Fragment);
    }
    if h.l4_protocol != want_proto {
        return Err(GsoError::WrongProtocol {
            expected: want_proto,
            got: h.l4_protocol,
        });
    }
    let l4 = h.l4_offset;
    let end = h.total_len;
    let l4_hdr = if want_proto == PROTO_TCP {
        let doff = usize::from(u8_at(pkt, l4 + 12).ok_or(GsoError::BadTransportHeader)? >> 4) * 4;
        if doff < 20 {
            return Err(GsoError::BadTransportHeader);
        }
        doff
    } else {
        8
    };
    let hlen = l4 + l4_hdr;
    if hlen > end {
        return Err(GsoError::BadTransportHeader);
    }
    let headers = pkt.get(..hlen).ok_or(GsoError::BadTransportHeader)?;
    let payload = pkt.get(hlen..end).ok_or(GsoError::BadTransportHeader)?;
    let mss = usize::from(hdr.gso_size);
    if mss == 0 {
        return Err(GsoError::ZeroGsoSize);
    }
    // A super-packet with no payload still goes out, as one header-only segment.
    let nsegs = payload.len().div_ceil(mss).max(1);
    if nsegs > lens.len() {
        return Err(GsoError::TooManySegments {
            need: nsegs,
            max: lens.len(),
        });
    }
    let biggest = hlen + mss.min(payload.len());
    if biggest > seg_stride {
        return Err(GsoError::StrideTooSmall {
            need: biggest,
            stride: seg_stride,
        });
    }
    let last_len = hlen + (payload.len() - (nsegs - 1) * mss);
    let need = (nsegs - 1)
        .checked_mul(seg_stride)
        .and_then(|x| x.checked_add(last_len))
        .ok_or(GsoError::OutTooSmall {
            need: usize::MAX,
            have: out.len(),
        })?;
    if need > out.len() {
        return Err(GsoError::OutTooSmall {
            need,
            have: out.len(),
        });
    }

    let seq0 = be32(pkt, l4 + 4).unwrap_or(0);
    let id0 = be16(pkt, 4).unwrap_or(0);
    // The pseudo-header minus the length, which differs per segment.
    let pseudo = csum::pseudo_header(h.src, h.dst, want_proto, 0);
    for (i, len_slot) in lens.iter_mut().enumerate().take(nsegs) {
        let from = i * mss;
        let chunk = payload
            .get(from..(from + mss).min(payload.len()))
            .unwrap_or(&[]);
        let seg_len = hlen + chunk.len();
        let base = i * seg_stride;
        let seg = out
            .get_mut(base..base + seg_len)
            .ok_or(GsoError::OutTooSmall {
                need,
                have: seg_stride,
            })?;
        let (head, body) = seg.split_at_mut(hlen);
        head.copy_from_slice(headers);
        body.copy_from_slice(chunk);
        fix_ip(
            seg,
            h.version,
            h.header_len,
            seg_len,
            id0.wrapping_add(i as u16),
        );
        let l4_len = seg_len - l4;
        let check_at = if want_proto == PROTO_TCP {
            put32(seg, l4 + 4, seq0.wrapping_add(from as u32));
            if let Some(flags) = seg.get_mut(l4 + 13) {
                if i + 1 < nsegs {
                    *flags &= !(TCP_FIN | TCP_PSH);
                }
                if i > 0 {
                    *flags &= !TCP_CWR;
                }
            }
            l4 + 16
        } else {
            put16(seg, l4 + 4, l4_len as u16);
            l4 + 6
        };
        put16(seg, check_at, 0);
        let acc = csum::sum(seg.get(l4..).unwrap_or(&[]), pseudo + l4_len as u64);
        let mut c = csum::finish(acc);
        if want_proto == PROTO_UDP && c == 0 {
            c = 0xffff;
        }
        put16(seg, check_at, c);
        *len_slot = seg_len;
    }
    Ok(nsegs)
}

/// Rewrites the IP length fields (and for IPv4 the ID and header checksum) of one segment.
pub(crate) fn fix_ip(seg: &mut [u8], version: u8, ihl: usize, len: usize, id: u16) {
    if version == 4 {
        put16(seg, 2, len as u16);
        put16(seg, 4, id);
        put16(seg, 10, 0);
        let c = csum::finish(csum::sum(seg.get(..ihl).unwrap_or(&[]), 0));
        put16(seg, 10, c);
    } else {
        put16(seg, 4, len.saturating_sub(ip::IPV6_HEADER) as u16);
    }
}

fn single(
    hdr: &VirtioNetHdr,
    pkt: &[u8],
    out: &mut [u8],
    lens: &mut [usize],
) -> Result<usize, GsoError> {
    let slot = lens
        .first_mut()
        .ok_or(GsoError::TooManySegments { need: 1, max: 0 })?;
    let have = out.len();
    let dst = out.get_mut(..pkt.len()).ok_or(GsoError::OutTooSmall {
        need: pkt.len(),
        have,
    })?;
    dst.copy_from_slice(pkt);
    complete_checksum(hdr, dst)?;
    *slot = pkt.len();
    Ok(1)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ip::inspect;
    use crate::testutil::*;
    use crate::virtio::{GSO_ECN, GSO_UDP};
    use proptest::prelude::*;

    fn run(hdr: &VirtioNetHdr, pkt: &[u8], stride: usize) -> Result<Vec<Vec<u8>>, GsoError> {
        let mut out = vec![0u8; stride * 200];
        let mut lens = [0usize; 200];
        let n = segment(hdr, pkt, &mut out, stride, &mut lens)?;
        Ok((0..n)
            .map(|i| out[i * stride..i * stride + lens[i]].to_vec())
            .collect())
    }

    fn check_tcp_segments(v6: bool, orig: &[u8], segs: &[Vec<u8>], mss: usize, flags: u8) {
        let l4 = if v6 { 40 } else { 20 };
        let hlen = l4 + 32;
        let seq0 = u32::from_be_bytes(orig[l4 + 4..l4 + 8].try_into().unwrap());
        let mut stream = Vec::new();
        for (i, s) in segs.iter().enumerate() {
            let h = inspect(s).expect("segment is a valid IP packet");
            assert_eq!(h.total_len, s.len());
            assert!(s.len() <= hlen + mss);
            assert!(l4_csum_ok(s, l4, PROTO_TCP), "segment {i} TCP checksum");
            let seq = u32::from_be_bytes(s[l4 + 4..l4 + 8].try_into().unwrap());
            assert_eq!(seq, seq0.wrapping_add(stream.len() as u32));
            let last = i + 1 == segs.len();
            let mut want = flags;
            if !last {
                want &= !(FIN | PSH);
            }
            if i > 0 {
                want &= !CWR;
            }
            assert_eq!(s[l4 + 13], want, "flags of segment {i}");
            if !v6 {
                assert_eq!(
                    u16::from_be_bytes([s[4], s[5]]),
                    0x1234u16.wrapping_add(i as u16)
                );
            }
            assert_eq!(&s[..l4 + 4].len(), &(l4 + 4));
            assert_eq!(
                &s[l4 + 8..l4 + 13],
                &orig[l4 + 8..l4 + 13],
                "ack/doff unchanged"
            );
            assert_eq!(&s[l4 + 20..hlen], &orig[l4 + 20..hlen], "options copied");
            stream.extend_from_slice(&s[hlen..]);
        }
        assert_eq!(stream, &orig[hlen..]);
    }

    #[test]
    fn tcp4_and_tcp6_segmentation() {
        for v6 in [false, true] {
            let data = payload(5000, 9);
            let (hdr, p) = super_packet(v6, &data, 1448, ACK | PSH | FIN | CWR, 0xffff_f000);
            let segs = run(&hdr, &p, 1600).unwrap();
            assert_eq!(segs.len(), 4);
            check_tcp_segments(v6, &p, &segs, 1448, ACK | PSH | FIN | CWR);
        }
    }

    #[test]
    fn ecn_flag_bit_is_accepted() {
        let (mut hdr, p) = super_packet(false, &payload(3000, 1), 1000, ACK | CWR, 1);
        hdr.gso_type |= GSO_ECN;
        let segs = run(&hdr, &p, 1100).unwrap();
        check_tcp_segments(false, &p, &segs, 1000, ACK | CWR);
    }

    #[test]
    fn udp_l4_segmentation() {
        for v6 in [false, true] {
            let mut p = udp(v6, &payload(3000, 2));
            let l4 = if v6 { 40 } else { 20 };
            let hdr = VirtioNetHdr {
                flags: F_NEEDS_CSUM,
                gso_type: GSO_UDP_L4,
                hdr_len: (l4 + 8) as u16,
                gso_size: 1200,
                csum_start: l4 as u16,
                csum_offset: 6,
            };
            p[l4 + 6] ^= 0x55; // partial checksum: garbage is fine, it is recomputed
            let segs = run(&hdr, &p, 1300).unwrap();
            assert_eq!(
                segs.iter().map(Vec::len).collect::<Vec<_>>(),
                [l4 + 1208, l4 + 1208, l4 + 608]
            );
            for s in &segs {
                assert!(inspect(s).is_ok());
                assert_eq!(
                    usize::from(u16::from_be_bytes([s[l4 + 4], s[l4 + 5]])),
                    s.len() - l4
                );
                assert!(l4_csum_ok(s, l4, PROTO_UDP));
            }
        }
    }

    #[test]
    fn gso_none_completes_partial_checksum() {
        let (mut hdr, p) = super_packet(false, b"small", 1448, ACK, 5);
        hdr.gso_type = GSO_NONE;
        let segs = run(&hdr, &p, 1600).unwrap();
        assert_eq!(segs.len(), 1);
        assert!(l4_csum_ok(&segs[0], 20, PROTO_TCP));
        // Without F_NEEDS_CSUM the packet is copied untouched.
        let plain = tcp4(b"x", ACK, 1, &[]);
        assert_eq!(
            run(&VirtioNetHdr::default(), &plain, 100).unwrap(),
            vec![plain]
        );
        hdr.csum_offset = 2000;
        assert_eq!(run(&hdr, &p, 1600), Err(GsoError::CsumOutOfRange));
    }

    #[test]
    fn small_super_packet_is_one_segment_with_full_checksum() {
        for len in [0, 1, 1448] {
            let (hdr, p) = super_packet(true, &payload(len, 3), 1448, ACK | PSH, 5);
            let segs = run(&hdr, &p, 1600).unwrap();
            assert_eq!(segs.len(), 1);
            check_tcp_segments(true, &p, &segs, 1448, ACK | PSH);
        }
    }

    #[test]
    fn rejections() {
        let (hdr, p) = super_packet(false, &payload(5000, 9), 1000, ACK, 1);
        let mut out = vec![0u8; 10_000];
        let mut lens = [0usize; 4];
        assert_eq!(
            segment(&hdr, &p, &mut out, 1100, &mut lens),
            Err(GsoError::TooManySegments { need: 5, max: 4 })
        );
        let mut lens = [0usize; 8];
        assert_eq!(
            segment(&hdr, &p, &mut out, 1000, &mut lens),
            Err(GsoError::StrideTooSmall {
                need: 1052,
                stride: 1000
            })
        );
        assert!(matches!(
            segment(&hdr, &p, &mut out[..4000], 1100, &mut lens),
            Err(GsoError::OutTooSmall { .. })
        ));
        assert!(matches!(
            segment(&hdr, &p, &mut out, usize::MAX, &mut lens),
            Err(GsoError::OutTooSmall { .. })
        ));
        let z = VirtioNetHdr { gso_size: 0, ..hdr };
        assert_eq!(
            segment(&z, &p, &mut out, 1100, &mut lens),
            Err(GsoError::ZeroGsoSize)
        );
        let v6 = VirtioNetHdr {
            gso_type: GSO_TCPV6,
            ..hdr
        };
        assert_eq!(
            segment(&v6, &p, &mut out, 1100, &mut lens),
            Err(GsoError::VersionMismatch {
                expected: 6,
                got: 4
            })
        );
        let ufo = VirtioNetHdr {
            gso_type: GSO_UDP,
            ..hdr
        };
        assert_eq!(
            segment(&ufo, &p, &mut out, 1100, &mut lens),
            Err(GsoError::UnsupportedGsoType(3))
        );
        let u = VirtioNetHdr {
            gso_type: GSO_UDP_L4,
            ..hdr
        };
        assert_eq!(
            segment(&u, &p, &mut out, 1100, &mut lens),
            Err(GsoError::WrongProtocol {
                expected: 17,
                got: 6
            })
        );
        let mut f = p.clone();
        set_v4_frag(&mut f, 0x2000);
        assert_eq!(
            segment(&hdr, &f, &mut out, 1100, &mut lens),
            Err(GsoError::Fragment)
        );
        let mut d = p.clone();
        d[32] = 0x40; // doff 4
        assert_eq!(
            segment(&hdr, &d, &mut out, 1100, &mut lens),
            Err(GsoError::BadTransportHeader)
        );
        assert!(matches!(
            segment(&hdr, &p[..30], &mut out, 1100, &mut lens),
            Err(GsoError::Malformed(_))
        ));
    }

    fn arb_hdr() -> impl Strategy<Value = VirtioNetHdr> {
        (
            any::<u8>(),
            prop_oneof![
                Just(0u8),
                Just(1),
                Just(3),
                Just(4),
                Just(5),
                Just(0x81),
                any::<u8>()
            ],
            any::<u16>(),
            prop_oneof![Just(0u16), Just(1), Just(65535), 1u16..2000, any::<u16>()],
            any::<u16>(),
            any::<u16>(),
        )
            .prop_map(
                |(flags, gso_type, hdr_len, gso_size, csum_start, csum_offset)| VirtioNetHdr {
                    flags,
                    gso_type,
                    hdr_len,
                    gso_size,
                    csum_start,
                    csum_offset,
                },
            )
    }

    proptest! {
        #[test]
        fn segment_never_panics_on_random_bytes(hdr in arb_hdr(), data in proptest::collection::vec(any::<u8>(), 0..300),
                                                stride in prop_oneof![Just(0usize), 1usize..3000, Just(usize::MAX)], nlens in 0usize..8) {
            let mut out = vec![0u8; 4096];
            let mut lens = vec![0usize; nlens];
            let _ = segment(&hdr, &data, &mut out, stride, &mut lens);
        }

        #[test]
        fn segment_never_panics_on_mutated_super_packets(
            hdr in arb_hdr(), v6 in any::<bool>(), len in 0usize..6000,
            muts in proptest::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 0..4),
            stride in 0usize..2000, nlens in 0usize..70,
        ) {
            let (_, mut p) = super_packet(v6, &payload(len, 1), 1000, ACK, 1);
            for (i, b) in muts { let n = p.len(); p[i.index(n)] = b; }
            let mut out = vec![0u8; 20_000];
            let mut lens = vec![0usize; nlens];
            if let Ok(n) = segment(&hdr, &p, &mut out, stride, &mut lens) {
                prop_assert!(n <= nlens);
                for (i, &l) in lens.iter().enumerate().take(n) {
                    if hdr.gso_kind() != GSO_NONE {
                        prop_assert!(l <= stride);
                        prop_assert!(inspect(&out[i * stride..i * stride + l]).is_ok());
                    }
                }
            }
        }

        #[test]
        fn every_segment_is_valid(v6 in any::<bool>(), len in 0usize..=65000, mss in 500u16..=9000, seed in any::<u32>(),
                                  flags in prop_oneof![Just(ACK), Just(ACK | PSH), Just(ACK | PSH | FIN), Just(ACK | CWR)]) {
            let (hdr, p) = super_packet(v6, &payload(len, seed), mss, flags, seed);
            let l4 = if v6 { 40 } else { 20 };
            let stride = l4 + 32 + usize::from(mss);
            let segs = run(&hdr, &p, stride).unwrap();
            prop_assert_eq!(segs.len(), len.div_ceil(usize::from(mss)).max(1));
            check_tcp_segments(v6, &p, &segs, usize::from(mss), flags);
        }
    }
}
