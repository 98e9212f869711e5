//! The Internet checksum (RFC 1071) and its incremental update (RFC 1624).
//!
//! Sums are kept unfolded in a `u64` so that a checksum over several pieces (pseudo-header,
//! transport header, payload) costs one fold at the end. Data is summed as big-endian `u32`
//! words: since 2^16 ≡ 1 (mod 0xFFFF), a one's-complement sum of 32-bit words folds to the
//! same 16-bit value as the sum of 16-bit words, at half the loop iterations, and a `u64`
//! accumulator cannot overflow for any buffer shorter than 2^34 bytes.

use std::net::IpAddr;

/// Adds `data` to the running sum `acc`, as big-endian 16-bit words.
///
/// Every piece but the last must have even length (and so start at an even offset of the
/// checksummed region); an odd final byte is padded with a zero byte as RFC 1071 says.
///
/// The bulk is summed as native little-endian 64-bit words split into 32-bit halves, which
/// needs no byte swap per word and vectorizes; the folded result is byte-swapped once
/// (RFC 1071 §2B: the one's-complement sum is byte-order independent). This loop is the
/// udp backend's hottest: it runs over every byte segmented or coalesced.
#[inline]
pub fn sum(data: &[u8], acc: u64) -> u64 {
    let mut words = data.chunks_exact(8);
    let mut le: u64 = 0;
    for w in &mut words {
        if let Ok(b) = <[u8; 8]>::try_from(w) {
            let x = u64::from_le_bytes(b);
            le += (x & 0xffff_ffff) + (x >> 32);
        }
    }
    let mut acc = acc + u64::from(fold(le).swap_bytes());
    // The remainder starts at a multiple of 8 into `data`, so at an even offset.
    let mut rest = words.remainder().chunks_exact(4);
    for w in &mut rest {
        if let &[a, b, c, d] = w {
            acc += u64::from(u32::from_be_bytes([a, b, c, d]));
        }
    }
    let tail = match *rest.remainder() {
        [a] => u32::from_be_bytes([a, 0, 0, 0]),
        [a, b] => u32::from_be_bytes([a, b, 0, 0]),
        [a, b, c] => u32::from_be_bytes([a, b, c, 0]),
        _ => 0,
    };
    acc + u64::from(tail)
}

/// Folds a running sum to 16 bits with end-around carry (not complemented).
#[inline]
pub fn fold(mut acc: u64) -> u16 {
    while acc > 0xffff {
        acc = (acc & 0xffff) + (acc >> 16);
    }
    // The loop leaves acc <= 0xffff.
    acc as u16
}

/// The checksum field value for a region whose running sum is `acc`: `!fold(acc)`.
#[inline]
pub fn finish(acc: u64) -> u16 {
    !fold(acc)
}

/// Running sum of the TCP/UDP/ICMPv6 pseudo-header (RFC 793 / RFC 768 / RFC 8200 §8.1).
///
/// `len` is the transport length (header + payload). For IPv4 the field is 16 bits and for
/// IPv6 32 bits; summing the 32-bit value as two 16-bit words covers both, since an IPv4
/// length is always < 2^16. Mixed address families (never produced by this crate) are summed
/// as given.
#[inline]
pub fn pseudo_header(src: IpAddr, dst: IpAddr, proto: u8, len: u32) -> u64 {
    let mut acc = u64::from(proto) + u64::from(len >> 16) + u64::from(len & 0xffff);
    acc = match src {
        IpAddr::V4(a) => sum(&a.octets(), acc),
        IpAddr::V6(a) => sum(&a.octets(), acc),
    };
    match dst {
        IpAddr::V4(a) => sum(&a.octets(), acc),
        IpAddr::V6(a) => sum(&a.octets(), acc),
    }
}

/// RFC 1624 eqn. 3: the new checksum after one 16-bit word of the covered data changed from
/// `old` to `new`: `HC' = ~(~HC + ~m + m')`. Unlike eqn. 2 this never yields the `0xFFFF`
/// (negative zero) that a full recomputation cannot produce, so incremental and full results
/// are bit-identical.
#[inline]
pub fn update16(check: u16, old: u16, new: u16) -> u16 {
    let acc = u64::from(!check) + u64::from(!old) + u64::from(new);
    !fold(acc)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// The textbook per-16-bit-word sum, to check the word-wise fast path against.
    fn slow(data: &[u8]) -> u16 {
        let mut acc: u64 = 0;
        for pair in data.chunks(2) {
            let hi = u64::from(pair.first().copied().unwrap_or(0)) << 8;
            let lo = u64::from(pair.get(1).copied().unwrap_or(0));
            acc += hi | lo;
        }
        fold(acc)
    }

    #[test]
    fn rfc1071_example() {
        // RFC 1071 §3: the bytes 00 01 f2 03 f4 f5 f6 f7 sum to ddf2.
        let d = [0x00, 0x01, 0xf2, 0x03, 0xf4, 0xf5, 0xf6, 0xf7];
        assert_eq!(fold(sum(&d, 0)), 0xddf2);
    }

    proptest! {
        #[test]
        fn wordwise_sum_matches_bytewise(data in proptest::collection::vec(any::<u8>(), 0..300)) {
            prop_assert_eq!(fold(sum(&data, 0)), slow(&data));
        }

        #[test]
        fn incremental_update_matches_full(mut data in proptest::collection::vec(any::<u8>(), 4..64),
                                           idx in any::<prop::sample::Index>(), new in any::<u16>()) {
            // Make the data look like a header: even length, nonzero.
            if data.len() % 2 == 1 { data.pop(); }
            data[0] |= 0x40;
            let words = data.len() / 2;
            let w = 1 + idx.index(words - 1);
            let check = finish(sum(&data, 0));
            let old = u16::from_be_bytes([data[2 * w], data[2 * w + 1]]);
            data[2 * w..2 * w + 2].copy_from_slice(&new.to_be_bytes());
            prop_assert_eq!(update16(check, old, new), finish(sum(&data, 0)));
        }
    }
}
