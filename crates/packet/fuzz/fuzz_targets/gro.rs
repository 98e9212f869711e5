//! A receive batch: the input is cut into packets by 2-byte length prefixes and fed to a
//! small GRO table. Nothing may panic; merged output must carry a completable checksum.
#![no_main]

use libfuzzer_sys::fuzz_target;
use packet::virtio::GSO_NONE;
use packet::Gro;

fuzz_target!(|data: &[u8]| {
    let mut gro = Gro::new(usize::from(data.first().copied().unwrap_or(0) % 5));
    let mut rest = data.get(1..).unwrap_or(&[]);
    let mut check = |h: &packet::VirtioNetHdr, p: &[u8]| {
        if h.gso_type != GSO_NONE {
            assert!(p.len() <= 65535);
            let mut full = p.to_vec();
            packet::complete_checksum(h, &mut full).expect("checksum fields in range");
            assert!(packet::inspect(&full).is_ok());
        }
    };
    while let [a, b, tail @ ..] = rest {
        let n = usize::from(u16::from_be_bytes([*a, *b])).min(tail.len());
        let (pkt, next) = tail.split_at(n);
        gro.push(pkt, &mut check);
        rest = next;
    }
    gro.flush(&mut check);
    assert_eq!(gro.held(), 0);
});
