//! A TUN read: a virtio header (any field values) and a packet. Segmentation must never
//! panic, and every GSO segment it produces must be a valid IP packet within the stride.
#![no_main]

use libfuzzer_sys::fuzz_target;
use packet::virtio::{self, GSO_NONE};

const STRIDE: usize = 9100;
const SEGS: usize = 16;

fuzz_target!(|data: &[u8]| {
    let Ok((hdr, pkt)) = virtio::parse(data) else {
        return;
    };
    let mut out = vec![0u8; STRIDE * SEGS];
    let mut lens = [0usize; SEGS];
    if let Ok(n) = packet::segment(&hdr, pkt, &mut out, STRIDE, &mut lens) {
        assert!((1..=SEGS).contains(&n));
        if hdr.gso_kind() != GSO_NONE {
            for (i, &l) in lens.iter().enumerate().take(n) {
                assert!(l <= STRIDE);
                let seg = &out[i * STRIDE..i * STRIDE + l];
                let h = packet::inspect(seg).expect("segment must be valid IP");
                assert_eq!(h.total_len, l);
            }
        }
    }
});
