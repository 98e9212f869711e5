//! Coalescing (GRO) on the receive side: merging the TCP segments that arrive from peers
//! into super-packets before writing them to flannel0.
//!
//! Every write to a TUN is a trip through the kernel's whole receive path; handing it one
//! 64 KB super-packet (with a [`VirtioNetHdr`] saying how it was cut) instead of 45
//! 1448-byte segments is what makes the udp backend's receive side cheap. The rules mirror
//! the kernel's own `tcp_gro_receive`, because the result must be something the kernel's
//! stack would have built itself — a merged packet must re-segment (or be delivered) as
//! exactly the stream that arrived:
//!
//! - same flow: addresses and ports, and the same IP header fields besides length, ID and
//!   checksum (IPv4 TOS, TTL, DF; IPv6 traffic class, flow label, hop limit); IPv4 without
//!   options and IPv6 without extension headers only;
//! - in order: the segment's sequence number is the flow's next expected one;
//! - same TCP header besides sequence number, PSH and checksum: ACK number, window, data
//!   offset and identical options (timestamps included);
//! - ACK set and no SYN/FIN/RST/URG (those change connection state and must be seen alone),
//!   CWR only on the first segment, PSH ends the super-packet (it is where the sender
//!   wanted delivery), and so does a segment shorter than the first (it was the sender's
//!   last of a burst);
//! - at most 65535 bytes in all;
//! - the TCP checksum of every merged segment verified: the merged packet goes to the
//!   kernel with `F_NEEDS_CSUM` and a freshly computed partial checksum, which the kernel
//!   trusts, so a corrupted segment merged here would be delivered as good data. A segment
//!   with a bad checksum is passed through alone, for the kernel to drop.
//!
//! Everything else — other protocols, malformed packets, pure ACKs — passes through unchanged
//! with a `GSO_NONE` header, after any held segments of the same flow (the order within a
//! flow is kept; across flows it need not be). A flow that collected a single segment is
//! also emitted unchanged.
//!
//! A merged packet is emitted as the kernel expects a virtio packet written to a TUN:
//! `gso_type` TCPV4/TCPV6 (plus `GSO_ECN` when the first segment carried CWR), `gso_size`
//! the first segment's payload size, `hdr_len` the IP + TCP header length, `F_NEEDS_CSUM`
//! with `csum_start` at the TCP header and `csum_offset` 16, and in the TCP checksum field
//! the folded pseudo-header sum (not complemented) over the merged length. The IPv4 ID is
//! the first segment's and the IPv4 header checksum is recomputed (the kernel verifies it).
//!
//! The table is bounded ([`MAX_FLOWS`]); a new flow when it is full evicts (emits) the
//! oldest. Each flow's buffer is allocated on its first use and reused after, so the steady
//! state allocates nothing. Call [`Gro::flush`] at the end of every receive batch.

use crate::bytes::{be32, put16, u8_at};
use crate::csum;
use crate::gso::fix_ip;
use crate::ip::{self, PROTO_TCP};
use crate::virtio::{VirtioNetHdr, F_NEEDS_CSUM, GSO_ECN, GSO_TCPV4, GSO_TCPV6};
use std::net::IpAddr;

/// Upper bound on [`Gro::new`]'s table size.
pub const MAX_FLOWS: usize = 64;
/// A reasonable table size for one receive batch.
pub const DEFAULT_FLOWS: usize = 16;
/// The largest packet the IPv4 total length (and so the merged packet) can describe.
const MAX_SUPER: usize = 65535;

const FIN: u8 = 0x01;
const SYN: u8 = 0x02;
const RST: u8 = 0x04;
const PSH: u8 = 0x08;
const ACK: u8 = 0x10;
const URG: u8 = 0x20;
const CWR: u8 = 0x80;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct FlowKey {
    src: IpAddr,
    dst: IpAddr,
    sport: u16,
    dport: u16,
}

/// What [`classify`] learnt about a TCP packet.
struct Seg {
    key: FlowKey,
    version: u8,
    l4: usize,
    hlen: usize,
    seq: u32,
    flags: u8,
    payload: usize,
    /// Eligible to start or join a flow (see the module doc).
    mergeable: bool,
}

#[derive(Debug, Default)]
struct Flow {
    active: bool,
    key: Option<FlowKey>,
    version: u8,
    l4: usize,
    hlen: usize,
    mss: usize,
    next_seq: u32,
    segs: usize,
    /// No more segments may join (PSH seen or a short segment).
    closed: bool,
    born: u64,
    buf: Vec<u8>,
}

/// The GRO table. Feed it every packet of a receive batch with [`Gro::push`], then call
/// [`Gro::flush`]. Both emit finished packets through the callback, as the virtio header
/// to write before the packet and the packet itself (e.g. for `writev` to the TUN).
#[derive(Debug)]
pub struct Gro {
    flows: Vec<Flow>,
    clock: u64,
}

impl Default for Gro {
    fn default() -> Self {
        Gro::new(DEFAULT_FLOWS)
    }
}

const PASS: VirtioNetHdr = VirtioNetHdr {
    flags: 0,
    gso_type: 0,
    hdr_len: 0,
    gso_size: 0,
    csum_start: 0,
    csum_offset: 0,
};

/// Parses a TCP packet far enough to find its flow and decide whether it may be merged.
/// `None` for anything that is not a well-formed, unfragmented TCP packet with no IPv4
/// options or IPv6 extension headers.
fn classify(pkt: &[u8]) -> Option<Seg> {
    let h = ip::inspect(pkt).ok()?;
    if h.l4_protocol != PROTO_TCP || h.is_fragment || h.l4_offset != h.header_len {
        return None;
    }
    let l4 = h.l4_offset;
    let tcp = pkt.get(l4..h.total_len)?;
    let doff = usize::from(u8_at(tcp, 12)? >> 4) * 4;
    if doff < 20 || doff > tcp.len() {
        return None;
    }
    let flags = u8_at(tcp, 13)?;
    let key = FlowKey {
        src: h.src,
        dst: h.dst,
        sport: crate::bytes::be16(tcp, 0)?,
        dport: crate::bytes::be16(tcp, 2)?,
    };
    let payload = tcp.len() - doff;
    let mergeable = payload > 0
        && h.trailing == 0
        && (h.version == 6 || h.header_len == ip::IPV4_MIN_HEADER)
        && flags & ACK != 0
        && flags & (SYN | FIN | RST | URG) == 0
        && csum::fold(csum::sum(
            tcp,
            csum::pseudo_header(h.src, h.dst, PROTO_TCP, tcp.len() as u32),
        )) == 0xffff;
    Some(Seg {
        key,
        version: h.version,
        l4,
        hlen: l4 + doff,
        seq: be32(tcp, 4)?,
        flags,
        payload,
        mergeable,
    })
}

impl Gro {
    /// A table of `max_flows` flows (clamped to 1..=[`MAX_FLOWS`]).
    pub fn new(max_flows: usize) -> Self {
        let n = max_flows.clamp(1, MAX_FLOWS);
        Gro {
            flows: (0..n).map(|_| Flow::default()).collect(),
            clock: 0,
        }
    }

    /// Flows currently held (not yet emitted).
    pub fn held(&self) -> usize {
        self.flows.iter().filter(|f| f.active).count()
    }

    /// Takes one inner IP packet (as received from a peer, without a virtio header). It is
    /// held for merging, or emitted at once (possibly after an earlier flow).
    pub fn push(&mut self, pkt: &[u8], emit: &mut impl FnMut(&VirtioNetHdr, &[u8])) {
        let Some(seg) = classify(pkt) else {
            emit(&PASS, pkt);
            return;
        };
        let slot = self
            .flows
            .iter()
            .position(|f| f.active && f.key == Some(seg.key));
        if let Some(i) = slot {
            if seg.mergeable {
                if let Some(f) = self.flows.get_mut(i) {
                    if f.try_append(pkt, &seg) {
                        return;
                    }
                }
            }
            // Same flow but not mergeable into what is held: what is held goes first.
            self.emit_flow(i, emit);
        }
        // A segment that ends a super-packet by itself has nothing to wait for.
        if !seg.mergeable || seg.flags & PSH != 0 {
            emit(&PASS, pkt);
            return;
        }
        let i = match slot.or_else(|| self.flows.iter().position(|f| !f.active)) {
            Some(i) => i,
            None => {
                let oldest = self
                    .flows
                    .iter()
                    .enumerate()
                    .min_by_key(|(_, f)| f.born)
                    .map_or(0, |(i, _)| i);
                self.emit_flow(oldest, emit);
                oldest
            }
        };
        self.clock += 1;
        let born = self.clock;
        if let Some(f) = self.flows.get_mut(i) {
            f.start(pkt, &seg, born);
        } else {
            emit(&PASS, pkt);
        }
    }

    /// Emits every held flow. Call at the end of each receive batch: holding segments across
    /// batches would add latency for nothing.
    pub fn flush(&mut self, emit: &mut impl FnMut(&VirtioNetHdr, &[u8])) {
        for i in 0..self.flows.len() {
            self.emit_flow(i, emit);
        }
    }

    fn emit_flow(&mut self, i: usize, emit: &mut impl FnMut(&VirtioNetHdr, &[u8])) {
        let Some(f) = self.flows.get_mut(i) else {
            return;
        };
        if !f.active {
            return;
        }
        f.active = false;
        if f.segs <= 1 {
            // Unchanged, full checksum and all: nothing to gain from a GSO header.
            emit(&PASS, &f.buf);
        } else {
            let hdr = f.finish();
            emit(&hdr, &f.buf);
        }
        f.buf.clear();
    }
}

impl Flow {
    fn start(&mut self, pkt: &[u8], seg: &Seg, born: u64) {
        // Reserved once per slot, then reused: no allocation in the steady state.
        if self.buf.capacity() < MAX_SUPER {
            self.buf.reserve_exact(MAX_SUPER);
        }
        self.buf.clear();
        self.buf.extend_from_slice(pkt);
        self.active = true;
        self.key = Some(seg.key);
        self.version = seg.version;
        self.l4 = seg.l4;
        self.hlen = seg.hlen;
        self.mss = seg.payload;
        self.next_seq = seg.seq.wrapping_add(seg.payload as u32);
        self.segs = 1;
        self.closed = false;
        self.born = born;
    }

    /// Appends `seg` if every rule of the module doc allows it.
    fn try_append(&mut self, pkt: &[u8], seg: &Seg) -> bool {
        if self.closed
            || seg.seq != self.next_seq
            || seg.hlen != self.hlen
            || seg.payload > self.mss
            || self.buf.len() + seg.payload > MAX_SUPER
            || seg.flags & CWR != 0
        {
            return false;
        }
        let held = &self.buf;
        let same = |a: usize, b: usize| held.get(a..b).is_some() && held.get(a..b) == pkt.get(a..b);
        let ip_same = if self.version == 4 {
            // version/IHL/TOS, flags+fragment/TTL/protocol.
            same(0, 2) && same(6, 10)
        } else {
            // version/traffic class/flow label, next header/hop limit.
            same(0, 4) && same(6, 8)
        };
        let l4 = self.l4;
        let held_flags = u8_at(held, l4 + 13).unwrap_or(0);
        let tcp_same = same(l4 + 8, l4 + 13) // ACK number, data offset
            && (seg.flags & !PSH) == (held_flags & !CWR)
            && same(l4 + 14, l4 + 16) // window
            && same(l4 + 18, self.hlen); // urgent pointer, options
        if !(ip_same && tcp_same) {
            return false;
        }
        let Some(data) = pkt.get(seg.hlen..seg.hlen + seg.payload) else {
            return false;
        };
        self.buf.extend_from_slice(data);
        self.segs += 1;
        self.next_seq = self.next_seq.wrapping_add(seg.payload as u32);
        if seg.flags & PSH != 0 {
            if let Some(f) = self.buf.get_mut(l4 + 13) {
                *f |= PSH;
            }
            self.closed = true;
        }
        if seg.payload < self.mss {
            self.closed = true;
        }
        true
    }

    /// Fixes the merged packet's lengths and checksums; returns its virtio header.
    fn finish(&mut self) -> VirtioNetHdr {
        let len = self.buf.len();
        let l4 = self.l4;
        // The IPv4 ID stays the first segment's, as the kernel's GRO leaves it.
        let id = crate::bytes::be16(&self.buf, 4).unwrap_or(0);
        fix_ip(&mut self.buf, self.version, l4, len, id);
        let (src, dst) = match self.key {
            Some(k) => (k.src, k.dst),
            None => return PASS,
        };
        let partial = csum::fold(csum::pseudo_header(src, dst, PROTO_TCP, (len - l4) as u32));
        put16(&mut self.buf, l4 + 16, partial);
        let cwr = u8_at(&self.buf, l4 + 13).unwrap_or(0) & CWR != 0;
        let kind = if self.version == 4 {
            GSO_TCPV4
        } else {
            GSO_TCPV6
        };
        VirtioNetHdr {
            flags: F_NEEDS_CSUM,
            gso_type: if cwr { kind | GSO_ECN } else { kind },
            hdr_len: self.hlen as u16,
            gso_size: self.mss as u16,
            csum_start: l4 as u16,
            csum_offset: 16,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::gso::{complete_checksum, segment};
    use crate::testutil::{
        fill_l4_csum, l4_csum_ok, payload, super_packet, tcp, tcp4, udp, TS_OPTS,
    };
    use proptest::prelude::*;

    type Out = Vec<(VirtioNetHdr, Vec<u8>)>;

    fn feed(gro: &mut Gro, pkts: &[Vec<u8>]) -> Out {
        let mut out = Vec::new();
        let mut emit = |h: &VirtioNetHdr, p: &[u8]| out.push((*h, p.to_vec()));
        for p in pkts {
            gro.push(p, &mut emit);
        }
        gro.flush(&mut emit);
        out
    }

    fn seg_all(hdr: &VirtioNetHdr, p: &[u8]) -> Vec<Vec<u8>> {
        let stride = 40 + 32 + usize::from(hdr.gso_size);
        let mut out = vec![0u8; stride * 200];
        let mut lens = [0usize; 200];
        let n = segment(hdr, p, &mut out, stride, &mut lens).unwrap();
        (0..n)
            .map(|i| out[i * stride..i * stride + lens[i]].to_vec())
            .collect()
    }

    #[test]
    fn merges_back_to_the_kernels_super_packet() {
        for v6 in [false, true] {
            let (hdr, p) = super_packet(v6, &payload(10_000, 4), 1448, ACK | PSH, 77);
            let out = feed(&mut Gro::default(), &seg_all(&hdr, &p));
            assert_eq!(out.len(), 1);
            assert_eq!(out[0].0, hdr);
            assert_eq!(out[0].1, p);
        }
    }

    #[test]
    fn passes_other_packets_through_unchanged() {
        let u = udp(false, b"dns");
        let pure_ack = tcp4(&[], ACK, 5, &[]);
        let syn = tcp4(b"x", 0x02, 5, &[]);
        let garbage = vec![0x45, 1, 2];
        let out = feed(
            &mut Gro::default(),
            &[u.clone(), pure_ack.clone(), syn.clone(), garbage.clone()],
        );
        let got: Vec<_> = out.iter().map(|(h, p)| (*h, p.clone())).collect();
        assert_eq!(
            got,
            vec![(PASS, u), (PASS, pure_ack), (PASS, syn), (PASS, garbage)]
        );
    }

    #[test]
    fn single_segment_flow_is_emitted_unchanged() {
        let p = tcp4(&[9; 100], ACK, 5, &TS_OPTS);
        let out = feed(&mut Gro::default(), std::slice::from_ref(&p));
        assert_eq!(out, vec![(PASS, p)]);
    }

    #[test]
    fn bad_checksum_segment_breaks_the_flow_and_passes_alone() {
        let a = tcp4(&[1; 1000], ACK, 0, &[]);
        let mut b = tcp4(&[2; 1000], ACK, 1000, &[]);
        b[60] ^= 0xff;
        let c = tcp4(&[3; 1000], ACK, 2000, &[]);
        let out = feed(&mut Gro::default(), &[a.clone(), b.clone(), c.clone()]);
        assert_eq!(out, vec![(PASS, a), (PASS, b), (PASS, c)]);
    }

    #[test]
    fn out_of_order_and_fin_keep_flow_order() {
        let a = tcp4(&[1; 1000], ACK, 0, &[]);
        let b = tcp4(&[2; 1000], ACK, 1000, &[]);
        let gap = tcp4(&[3; 1000], ACK, 5000, &[]);
        let fin = tcp4(&[4; 10], ACK | FIN, 6000, &[]);
        let out = feed(&mut Gro::default(), &[a, b, gap.clone(), fin.clone()]);
        assert_eq!(out.len(), 3);
        assert_eq!(out[0].0.gso_type, GSO_TCPV4);
        assert_eq!(out[0].1.len(), 20 + 20 + 2000);
        assert_eq!(out[1], (PASS, gap));
        assert_eq!(out[2], (PASS, fin));
    }

    #[test]
    fn option_or_ack_change_starts_a_new_flow() {
        let a = tcp4(&[1; 500], ACK, 0, &TS_OPTS);
        let mut opts = TS_OPTS;
        opts[11] = 9;
        let b = tcp4(&[2; 500], ACK, 500, &opts);
        let c = tcp4(&[3; 500], ACK, 1000, &opts);
        let out = feed(&mut Gro::default(), &[a.clone(), b, c]);
        assert_eq!(out.len(), 2);
        assert_eq!(out[0], (PASS, a));
        assert_eq!(out[1].0.gso_size, 500);
        assert_eq!(out[1].1.len(), 20 + 32 + 1000);
    }

    #[test]
    fn short_segment_or_psh_closes_the_flow() {
        let a = tcp4(&[1; 1000], ACK, 0, &[]);
        let b = tcp4(&[2; 400], ACK, 1000, &[]);
        let c = tcp4(&[3; 400], ACK, 1400, &[]);
        let out = feed(&mut Gro::default(), &[a, b, c.clone()]);
        assert_eq!(out.len(), 2);
        assert_eq!(out[0].1.len(), 40 + 1400);
        assert_eq!(out[1], (PASS, c));
    }

    #[test]
    fn interleaved_flows_and_eviction() {
        let mut gro = Gro::new(2);
        let mk = |port: u16, seq: u32| {
            let mut p = tcp4(&[port as u8; 800], ACK, seq, &[]);
            p[20..22].copy_from_slice(&port.to_be_bytes());
            fill_l4_csum(&mut p, 20, 16, PROTO_TCP);
            p
        };
        let pkts = [
            mk(1, 0),
            mk(2, 0),
            mk(1, 800),
            mk(2, 800),
            mk(3, 0),
            mk(3, 800),
        ];
        let out = feed(&mut gro, &pkts);
        // Flow 1 is evicted for flow 3; then flows 2 and 3 at flush.
        assert_eq!(out.len(), 3);
        for (h, p) in &out {
            assert_eq!(h.gso_type, GSO_TCPV4);
            assert_eq!(p.len(), 40 + 1600);
            let mut full = p.clone();
            complete_checksum(h, &mut full).unwrap();
            assert!(l4_csum_ok(&full, 20, PROTO_TCP));
        }
        assert_eq!(out[0].1[21], 1);
        assert_eq!(gro.held(), 0);
    }

    #[test]
    fn cwr_only_first_and_ecn_flag() {
        let a = tcp4(&[1; 1000], ACK | CWR, 0, &[]);
        let b = tcp4(&[2; 1000], ACK, 1000, &[]);
        let c = tcp4(&[3; 1000], ACK | CWR, 2000, &[]);
        let out = feed(&mut Gro::default(), &[a, b, c.clone()]);
        assert_eq!(out.len(), 2);
        assert_eq!(out[0].0.gso_type, GSO_TCPV4 | GSO_ECN);
        assert_eq!(out[1], (PASS, c));
    }

    fn arb_packet() -> impl Strategy<Value = Vec<u8>> {
        prop_oneof![
            proptest::collection::vec(any::<u8>(), 0..200),
            (
                any::<bool>(),
                0usize..3000,
                any::<u32>(),
                any::<u8>(),
                proptest::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 0..3)
            )
                .prop_map(|(v6, len, seq, flags, muts)| {
                    let mut p = tcp(
                        v6,
                        &payload(len, seq),
                        flags | ACK,
                        seq % 4 * 1000,
                        &TS_OPTS,
                    );
                    for (i, b) in muts {
                        let n = p.len();
                        p[i.index(n)] = b;
                    }
                    p
                }),
        ]
    }

    proptest! {
        #[test]
        fn gro_never_panics_and_output_is_valid(pkts in proptest::collection::vec(arb_packet(), 0..40), flows in 0usize..5) {
            let mut gro = Gro::new(flows);
            let out = feed(&mut gro, &pkts);
            prop_assert_eq!(gro.held(), 0);
            prop_assert!(out.len() <= pkts.len());
            for (h, p) in &out {
                if h.gso_type != 0 {
                    prop_assert!(p.len() <= MAX_SUPER);
                    let mut full = p.clone();
                    complete_checksum(h, &mut full).unwrap();
                    let ih = ip::inspect(&full).unwrap();
                    prop_assert!(l4_csum_ok(&full, ih.l4_offset, PROTO_TCP));
                } else {
                    prop_assert!(pkts.contains(p));
                }
            }
        }

        /// Two flows' segments interleaved in any order, through a table small enough to
        /// evict: each flow's output, in emission order, is exactly its stream.
        #[test]
        fn interleaved_flows_keep_each_stream(len4 in 0usize..20_000, len6 in 0usize..20_000, mss in 500u16..=3000,
                                              order in proptest::collection::vec(any::<bool>(), 0..200), flows in 1usize..3) {
            let (h4, p4) = super_packet(false, &payload(len4, 1), mss, ACK | PSH, 100);
            let (h6, p6) = super_packet(true, &payload(len6, 2), mss, ACK | PSH, u32::MAX - 1000);
            let (mut s4, mut s6) = (seg_all(&h4, &p4).into_iter(), seg_all(&h6, &p6).into_iter());
            let mut mixed = Vec::new();
            let mut pick = order.into_iter();
            loop {
                let next = if pick.next().unwrap_or(false) { s4.next().or_else(|| s6.next()) } else { s6.next().or_else(|| s4.next()) };
                match next { Some(p) => mixed.push(p), None => break }
            }
            let out = feed(&mut Gro::new(flows), &mixed);
            let (mut got4, mut got6) = (Vec::new(), Vec::new());
            for (h, p) in &out {
                let mut full = p.clone();
                complete_checksum(h, &mut full).unwrap();
                let ih = ip::inspect(&full).unwrap();
                prop_assert!(l4_csum_ok(&full, ih.l4_offset, PROTO_TCP));
                let stream = if ih.version == 4 { &mut got4 } else { &mut got6 };
                let seq0 = if ih.version == 4 { 100u32 } else { u32::MAX - 1000 };
                let seq = u32::from_be_bytes(full[ih.l4_offset + 4..ih.l4_offset + 8].try_into().unwrap());
                prop_assert_eq!(seq, seq0.wrapping_add(stream.len() as u32), "in order, no gap");
                stream.extend_from_slice(&full[ih.l4_offset + 32..]);
            }
            prop_assert_eq!(&got4[..], &p4[52..]);
            prop_assert_eq!(&got6[..], &p6[72..]);
        }

        /// The round trip: kernel super-packet → segment → GRO → the same super-packet.
        #[test]
        fn segment_then_coalesce_is_identity(v6 in any::<bool>(), len in 0usize..=65000, mss in 500u16..=9000,
                                             seed in any::<u32>(), psh in any::<bool>()) {
            let flags = if psh { ACK | PSH } else { ACK };
            let (hdr, p) = super_packet(v6, &payload(len, seed), mss, flags, seed);
            let segs = seg_all(&hdr, &p);
            let out = feed(&mut Gro::new(8), &segs);
            prop_assert_eq!(out.len(), 1);
            let (gh, gp) = &out[0];
            if segs.len() > 1 {
                // Byte-identical, partial checksum included, and the same virtio header.
                prop_assert_eq!(gh, &hdr);
                prop_assert_eq!(gp, &p);
            } else {
                // One segment: passed through with its checksum completed.
                prop_assert_eq!(gh, &PASS);
                let mut full = p.clone();
                complete_checksum(&hdr, &mut full).unwrap();
                prop_assert_eq!(gp, &full);
            }
            // Finishing the checksum gives a valid full checksum either way.
            let mut full = gp.clone();
            complete_checksum(gh, &mut full).unwrap();
            let l4 = if v6 { 40 } else { 20 };
            prop_assert!(l4_csum_ok(&full, l4, PROTO_TCP));
        }
    }
}
