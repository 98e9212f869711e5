//! Packet builders shared by the unit and property tests.

use crate::csum;
use crate::ip::{PROTO_TCP, PROTO_UDP};
use crate::virtio::{VirtioNetHdr, F_NEEDS_CSUM, GSO_TCPV4, GSO_TCPV6};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

pub const SRC4: Ipv4Addr = Ipv4Addr::new(10, 244, 1, 5);
pub const DST4: Ipv4Addr = Ipv4Addr::new(10, 244, 2, 7);
pub const SRC6: Ipv6Addr = Ipv6Addr::new(0xfd00, 0, 0, 1, 0, 0, 0, 5);
pub const DST6: Ipv6Addr = Ipv6Addr::new(0xfd00, 0, 0, 2, 0, 0, 0, 7);
pub const ACK: u8 = 0x10;
pub const PSH: u8 = 0x08;
pub const FIN: u8 = 0x01;
pub const CWR: u8 = 0x80;
/// The options Linux puts on every data segment: NOP, NOP, timestamps.
pub const TS_OPTS: [u8; 12] = [1, 1, 8, 10, 0, 0, 0, 1, 0, 0, 0, 2];

pub fn v4_header(total: usize, proto: u8) -> Vec<u8> {
    let mut h = vec![0x45, 0];
    h.extend_from_slice(&(total as u16).to_be_bytes());
    h.extend_from_slice(&[0x12, 0x34, 0x40, 0, 64, proto, 0, 0]);
    h.extend_from_slice(&SRC4.octets());
    h.extend_from_slice(&DST4.octets());
    let c = csum::finish(csum::sum(&h, 0));
    h[10..12].copy_from_slice(&c.to_be_bytes());
    h
}

pub fn v6_header(payload: usize, proto: u8) -> Vec<u8> {
    let mut h = vec![0x60, 0, 0, 0];
    h.extend_from_slice(&(payload as u16).to_be_bytes());
    h.extend_from_slice(&[proto, 64]);
    h.extend_from_slice(&SRC6.octets());
    h.extend_from_slice(&DST6.octets());
    h
}

pub fn tcp_header(seq: u32, flags: u8, opts: &[u8]) -> Vec<u8> {
    let doff = (20 + opts.len()) / 4;
    let mut t = vec![0x9c, 0x40, 0x14, 0x51];
    t.extend_from_slice(&seq.to_be_bytes());
    t.extend_from_slice(&0x0102_0304u32.to_be_bytes());
    t.extend_from_slice(&[(doff as u8) << 4, flags, 0x01, 0xf6, 0, 0, 0, 0]);
    t.extend_from_slice(opts);
    t
}

fn addrs(p: &[u8]) -> (IpAddr, IpAddr) {
    let h = crate::ip::inspect(p).expect("test packet");
    (h.src, h.dst)
}

/// Fills the transport checksum of `p` (transport header at `l4`, field at `l4 + off`) in full.
pub fn fill_l4_csum(p: &mut [u8], l4: usize, off: usize, proto: u8) {
    p[l4 + off..l4 + off + 2].fill(0);
    let (s, d) = addrs(p);
    let len = (p.len() - l4) as u32;
    let mut c = csum::finish(csum::sum(&p[l4..], csum::pseudo_header(s, d, proto, len)));
    if proto == PROTO_UDP && c == 0 {
        c = 0xffff;
    }
    p[l4 + off..l4 + off + 2].copy_from_slice(&c.to_be_bytes());
}

pub fn l4_csum_ok(p: &[u8], l4: usize, proto: u8) -> bool {
    let (s, d) = addrs(p);
    let len = (p.len() - l4) as u32;
    csum::fold(csum::sum(&p[l4..], csum::pseudo_header(s, d, proto, len))) == 0xffff
}

pub fn tcp4(payload: &[u8], flags: u8, seq: u32, opts: &[u8]) -> Vec<u8> {
    let t = tcp_header(seq, flags, opts);
    let mut p = v4_header(20 + t.len() + payload.len(), PROTO_TCP);
    p.extend_from_slice(&t);
    p.extend_from_slice(payload);
    fill_l4_csum(&mut p, 20, 16, PROTO_TCP);
    p
}

pub fn tcp6(payload: &[u8], flags: u8, seq: u32, opts: &[u8]) -> Vec<u8> {
    let t = tcp_header(seq, flags, opts);
    let mut p = v6_header(t.len() + payload.len(), PROTO_TCP);
    p.extend_from_slice(&t);
    p.extend_from_slice(payload);
    fill_l4_csum(&mut p, 40, 16, PROTO_TCP);
    p
}

pub fn udp(v6: bool, payload: &[u8]) -> Vec<u8> {
    let ulen = 8 + payload.len();
    let (mut p, l4) = if v6 {
        (v6_header(ulen, PROTO_UDP), 40)
    } else {
        (v4_header(20 + ulen, PROTO_UDP), 20)
    };
    p.extend_from_slice(&[0x1f, 0x90, 0x21, 0x5d]);
    p.extend_from_slice(&(ulen as u16).to_be_bytes());
    p.extend_from_slice(&[0, 0]);
    p.extend_from_slice(payload);
    fill_l4_csum(&mut p, l4, 6, PROTO_UDP);
    p
}

pub fn tcp(v6: bool, payload: &[u8], flags: u8, seq: u32, opts: &[u8]) -> Vec<u8> {
    if v6 {
        tcp6(payload, flags, seq, opts)
    } else {
        tcp4(payload, flags, seq, opts)
    }
}

fn v4_fix(p: &mut [u8]) {
    p[10..12].fill(0);
    let ihl = usize::from(p[0] & 0xf) * 4;
    let c = csum::finish(csum::sum(&p[..ihl], 0));
    p[10..12].copy_from_slice(&c.to_be_bytes());
}

pub fn set_v4_total(p: &mut [u8], total: u16) {
    p[2..4].copy_from_slice(&total.to_be_bytes());
    v4_fix(p);
}

pub fn set_v4_frag(p: &mut [u8], frag: u16) {
    p[6..8].copy_from_slice(&frag.to_be_bytes());
    v4_fix(p);
}

pub fn set_v4_src(p: &mut [u8], src: Ipv4Addr) {
    p[12..16].copy_from_slice(&src.octets());
    v4_fix(p);
}

/// A TSO super-packet as the kernel hands it to a TUN with `IFF_VNET_HDR`: the TCP checksum
/// field holds the folded pseudo-header sum and the virtio header asks for completion.
pub fn super_packet(
    v6: bool,
    payload: &[u8],
    mss: u16,
    flags: u8,
    seq: u32,
) -> (VirtioNetHdr, Vec<u8>) {
    let mut p = tcp(v6, payload, flags, seq, &TS_OPTS);
    let l4 = if v6 { 40 } else { 20 };
    let (s, d) = addrs(&p);
    let partial = csum::fold(csum::pseudo_header(s, d, PROTO_TCP, (p.len() - l4) as u32));
    p[l4 + 16..l4 + 18].copy_from_slice(&partial.to_be_bytes());
    let hdr = VirtioNetHdr {
        flags: F_NEEDS_CSUM,
        gso_type: if v6 { GSO_TCPV6 } else { GSO_TCPV4 },
        hdr_len: (l4 + 32) as u16,
        gso_size: mss,
        csum_start: l4 as u16,
        csum_offset: 16,
    };
    (hdr, p)
}

/// Deterministic filler so property tests need not generate 64 KB of random bytes.
pub fn payload(n: usize, seed: u32) -> Vec<u8> {
    (0..n as u32)
        .map(|i| (i.wrapping_mul(2_654_435_761).wrapping_add(seed) >> 24) as u8)
        .collect()
}
