//! Hostile bytes from the wire: inspect, TTL decrement and the ICMP builders must never
//! panic, and what they accept must be self-consistent.
#![no_main]

use libfuzzer_sys::fuzz_target;
use packet::icmp::{build_v4, build_v6, V4Error, V6Error};
use std::net::{Ipv4Addr, Ipv6Addr};

fuzz_target!(|data: &[u8]| {
    if let Ok(h) = packet::inspect(data) {
        assert!(h.total_len <= data.len());
        assert_eq!(h.total_len + h.trailing, data.len());
        assert!(h.l4_offset <= h.total_len);
    }
    let mut copy = data.to_vec();
    if packet::decrement_ttl(&mut copy).is_ok() && packet::inspect(data).is_ok() {
        // The incremental checksum update must keep a valid header valid.
        assert!(packet::inspect(&copy).is_ok());
    }
    let mut out = [0u8; 1500];
    let outlen = usize::from(data.first().copied().unwrap_or(0)) * 6;
    let out = &mut out[..outlen.min(1500)];
    if let Some(n) = build_v4(
        out,
        Ipv4Addr::new(10, 0, 0, 1),
        data,
        V4Error::FragmentationNeeded { mtu: 1400 },
    ) {
        assert!(n <= 576);
        assert!(packet::inspect(&out[..n]).is_ok());
    }
    if let Some(n) = build_v6(
        out,
        Ipv6Addr::LOCALHOST,
        data,
        V6Error::PacketTooBig { mtu: 1280 },
    ) {
        assert!(n <= 1280);
        assert!(packet::inspect(&out[..n]).is_ok());
    }
});
