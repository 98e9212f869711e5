//! Decrementing the TTL / hop limit of a forwarded packet.
//!
//! flannel0 is a router hop: the node forwards between its pods and the overlay, so the TTL
//! must go down by one or a routing loop between nodes (say, two nodes that both believe
//! the other owns a subnet during a lease change) would circulate packets forever.

use crate::bytes::{be16, put16, u8_at};
use crate::csum;
use crate::ip::{Malformed, IPV4_MIN_HEADER, IPV6_HEADER};
use thiserror::Error;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Error)]
pub enum TtlError {
    /// TTL / hop limit was 0 or 1: drop the packet and send ICMP time exceeded
    /// ([`crate::icmp::V4Error::TimeExceeded`], [`crate::icmp::V6Error::TimeExceeded`]).
    #[error("TTL expired in transit")]
    Expired,
    #[error("not an IP packet: {0}")]
    Malformed(Malformed),
}

/// Decrements the TTL (IPv4, updating the header checksum incrementally per RFC 1624) or
/// the hop limit (IPv6, which has no header checksum) in place.
///
/// Only the version and the fixed header's presence are checked: the caller has already
/// run [`crate::ip::inspect`], and recomputing the whole checksum here would cost more than
/// the decrement. The packet is left untouched on error.
pub fn decrement_ttl(pkt: &mut [u8]) -> Result<(), TtlError> {
    let first = u8_at(pkt, 0).ok_or(TtlError::Malformed(Malformed::Empty))?;
    let (need, ttl_at) = match first >> 4 {
        4 => (IPV4_MIN_HEADER, 8),
        6 => (IPV6_HEADER, 7),
        v => return Err(TtlError::Malformed(Malformed::BadVersion(v))),
    };
    if pkt.len() < need {
        return Err(TtlError::Malformed(Malformed::Truncated {
            need,
            have: pkt.len(),
        }));
    }
    let ttl = u8_at(pkt, ttl_at).unwrap_or(0);
    if ttl <= 1 {
        return Err(TtlError::Expired);
    }
    if first >> 4 == 4 {
        // The checksum covers TTL as the high byte of the 16-bit word TTL|protocol.
        let old = be16(pkt, 8).unwrap_or(0);
        let new = old.wrapping_sub(0x0100);
        let check = be16(pkt, 10).unwrap_or(0);
        put16(pkt, 8, new);
        put16(pkt, 10, csum::update16(check, old, new));
    } else if let Some(h) = pkt.get_mut(ttl_at) {
        *h = ttl - 1;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ip::inspect;
    use crate::testutil::*;
    use proptest::prelude::*;

    #[test]
    fn v4_decrement_keeps_checksum_valid() {
        let mut p = tcp4(b"x", ACK, 1, &[]);
        for expect in (1..64).rev() {
            decrement_ttl(&mut p).unwrap();
            let h = inspect(&p).expect("checksum still valid");
            assert_eq!(h.ttl, expect);
        }
        let before = p.clone();
        assert_eq!(decrement_ttl(&mut p), Err(TtlError::Expired));
        assert_eq!(p, before, "untouched on error");
    }

    #[test]
    fn v6_decrement_and_expiry() {
        let mut p = tcp6(b"x", ACK, 1, &[]);
        decrement_ttl(&mut p).unwrap();
        assert_eq!(inspect(&p).unwrap().ttl, 63);
        p[7] = 1;
        assert_eq!(decrement_ttl(&mut p), Err(TtlError::Expired));
        p[7] = 0;
        assert_eq!(decrement_ttl(&mut p), Err(TtlError::Expired));
    }

    #[test]
    fn rejects_non_ip() {
        assert_eq!(
            decrement_ttl(&mut []),
            Err(TtlError::Malformed(Malformed::Empty))
        );
        assert!(matches!(
            decrement_ttl(&mut [0x45; 19]),
            Err(TtlError::Malformed(Malformed::Truncated { .. }))
        ));
        assert_eq!(
            decrement_ttl(&mut [0x70; 40]),
            Err(TtlError::Malformed(Malformed::BadVersion(7)))
        );
    }

    proptest! {
        #[test]
        fn decrement_never_panics(mut data in proptest::collection::vec(any::<u8>(), 0..80)) {
            let _ = decrement_ttl(&mut data);
        }

        #[test]
        fn decrement_matches_full_recompute(ttl in 2u8..=255, tos in any::<u8>(), id in any::<u16>(), len in 0usize..100) {
            let mut p = tcp4(&vec![7; len], ACK, 1, &[]);
            p[1] = tos;
            p[4..6].copy_from_slice(&id.to_be_bytes());
            p[8] = ttl;
            let n = p.len() as u16;
            set_v4_total(&mut p, n); // recompute checksum
            decrement_ttl(&mut p).unwrap();
            let mut q = p.clone();
            set_v4_total(&mut q, n);
            prop_assert_eq!(&p[10..12], &q[10..12], "incremental == full checksum");
            prop_assert_eq!(p[8], ttl - 1);
        }
    }
}
