//! The udp backend's fast path: offloads on both sides, so a syscall moves up to 64 KB instead of one packet.
//!
//! - `flannel0` is opened with `IFF_VNET_HDR` and TSO/USO enabled (`TUNSETOFFLOAD`): one read returns a TCP (or
//!   UDP) super-packet of up to 64 KB with its `virtio_net_hdr`. We cut it into tunnel-sized inner packets
//!   ([`packet::segment`], every header and checksum as a NIC doing TSO would set them: they go on the wire as
//!   upstream's udp backend sends them), and hand all of them to the kernel in one `sendmsg` with `UDP_SEGMENT`
//!   (UDP GSO): one datagram per inner packet on the wire, one syscall and one route lookup for all of them.
//! - The socket has `UDP_GRO`: one `recvmsg` returns a run of datagrams from one sender, each one inner packet.
//!   They are checked one by one exactly as on the plain path, then merged back into TCP super-packets
//!   ([`packet::Gro`], the kernel's coalescing rules, checksums verified) and written to `flannel0` with their
//!   virtio header, so the pod's TCP stack sees 64 KB at a time.
//!
//! The buffers are allocated once per loop; nothing is allocated per packet.

use super::{
    admit_datagram, answer, bump, icmp_counter, inspect_v4, read_tun, wait_readable, LoopCtx, Out,
    MAX_PACKET,
};
use kernel::tun::Tun;
use nix::sys::socket::{self, ControlMessage, ControlMessageOwned, MsgFlags, SockaddrIn};
use packet::icmp::{self, V4Error};
use packet::virtio::{self, VirtioNetHdr, GSO_NONE, GSO_UDP_L4, VIRTIO_NET_HDR_LEN};
use std::io::{IoSlice, IoSliceMut, Write};
use std::net::{SocketAddr, UdpSocket};
use std::os::fd::AsRawFd;
use std::sync::atomic::Ordering;

/// Most segments one super-packet may be cut into (UDP GSO's limit is 64 per send as well).
const MAX_SEGS: usize = 64;
/// Most bytes one `UDP_SEGMENT` send may carry (the whole must fit one IPv4 datagram's length field).
const MAX_GSO_BYTES: usize = 65_000;
/// Receive batches before the GRO table is flushed even if more datagrams are waiting (bounds latency).
const MAX_BATCH: usize = 32;

/// Turns on the socket's and the device's offloads; `Err` names what the kernel refused (the caller falls back to
/// the plain path and logs it).
pub(super) fn enable(tun: &Tun, sock: &UdpSocket) -> Result<(), String> {
    use kernel::tun::offload::{CSUM, TSO4, TSO6, USO4, USO6};
    if tun.set_offload(CSUM | TSO4 | TSO6 | USO4 | USO6).is_err() {
        // USO needs kernel 6.2; TCP segmentation alone is most of the win.
        tun.set_offload(CSUM | TSO4 | TSO6)
            .map_err(|e| format!("TUN offloads: {e}"))?;
    }
    socket::setsockopt(sock, socket::sockopt::UdpGroSegment, &true)
        .map_err(|e| format!("UDP_GRO: {e}"))?;
    // Probe UDP_SEGMENT: setting it as a socket option is accepted exactly where the cmsg is.
    socket::setsockopt(sock, socket::sockopt::UdpGsoSegment, &0)
        .map_err(|e| format!("UDP_SEGMENT: {e}"))?;
    Ok(())
}

/// The length of every segment but the last when `pkt` is cut as `hdr` says (`None`: not a GSO packet, or one
/// whose headers do not parse; `segment` then decides what it is).
fn segment_size(hdr: &VirtioNetHdr, pkt: &[u8], h: &packet::ip::Header) -> Option<usize> {
    if hdr.gso_kind() == GSO_NONE || hdr.gso_size == 0 {
        return None;
    }
    let l4 = if hdr.gso_kind() == GSO_UDP_L4 {
        8
    } else {
        usize::from(*pkt.get(h.l4_offset + 12)? >> 4) * 4
    };
    Some(h.l4_offset + l4 + usize::from(hdr.gso_size))
}

/// `flannel0` → peers, with TSO on the device and GSO on the socket.
pub(super) fn tx_loop(ctx: &LoopCtx) {
    let (tun, sock, table, c, stop) = ctx.parts();
    let mtu = ctx.mtu;
    let mut buf = vec![0u8; VIRTIO_NET_HDR_LEN + MAX_PACKET];
    let mut segs = vec![0u8; MAX_SEGS * mtu.max(1)];
    let mut lens = [0usize; MAX_SEGS];
    let mut icmp_buf = vec![0u8; icmp::V4_MAX_ERROR_LEN];
    while let Some(n) = read_tun(tun, &mut buf, stop) {
        let Some(frame) = buf.get_mut(..n) else {
            continue;
        };
        let Ok((hdr, _)) = virtio::parse(frame) else {
            bump(&c.dropped_malformed);
            continue;
        };
        let Some(pkt) = frame.get_mut(VIRTIO_NET_HDR_LEN..) else {
            continue;
        };
        let Some(h) = inspect_v4(pkt, c) else {
            continue;
        };
        let gso = segment_size(&hdr, pkt, &h);
        // A super-packet is longer than the MTU by design; its segments are not.
        let route = match gso {
            Some(seg) if seg <= mtu => table.load().route(&h, usize::MAX),
            Some(_) => Out::Icmp(V4Error::FragmentationNeeded {
                mtu: u16::try_from(mtu).unwrap_or(u16::MAX),
            }),
            None => table.load().route(&h, mtu),
        };
        let to = match route {
            Out::Send(to) => to,
            Out::Icmp(kind) => {
                bump(icmp_counter(c, kind));
                answer(tun, true, pkt, h.dst, kind, &mut icmp_buf, c);
                continue;
            }
            Out::Drop => {
                bump(&c.no_route);
                continue;
            }
        };
        let Some(pkt) = pkt.get_mut(..h.total_len) else {
            continue;
        };
        // One TTL for the whole super-packet: every segment is cut from it.
        if packet::ttl::decrement_ttl(pkt).is_err() {
            bump(&c.dropped_malformed);
            continue;
        }
        let stride = gso.unwrap_or(segs.len());
        let count = match packet::segment(&hdr, pkt, &mut segs, stride, &mut lens) {
            Ok(k) => k,
            Err(_) => {
                bump(&c.dropped_malformed);
                continue;
            }
        };
        let dst = SockaddrIn::from(to);
        let mut i = 0;
        while i < count {
            // As many whole segments as one UDP_SEGMENT send may carry; all but the last of a run have the same
            // length (`stride`), as UDP GSO requires.
            let per = if count == 1 {
                1
            } else {
                (MAX_GSO_BYTES / stride).clamp(1, MAX_SEGS)
            };
            let end = (i + per).min(count);
            let bytes: usize = lens.get(i..end).map_or(0, |l| l.iter().sum());
            let Some(run) = segs.get(i * stride..i * stride + bytes) else {
                break;
            };
            let seg = u16::try_from(stride).unwrap_or(u16::MAX);
            let sent = if end - i == 1 {
                sock.send_to(run, to).map(|_| ())
            } else {
                socket::sendmsg(
                    sock.as_raw_fd(),
                    &[IoSlice::new(run)],
                    &[ControlMessage::UdpGsoSegments(&seg)],
                    MsgFlags::empty(),
                    Some(&dst),
                )
                .map(|_| ())
                .map_err(std::io::Error::from)
            };
            match sent {
                Ok(()) => {
                    c.tx_packets.fetch_add((end - i) as u64, Ordering::Relaxed);
                    c.tx_bytes.fetch_add(bytes as u64, Ordering::Relaxed);
                }
                Err(_) => bump(&c.io_errors),
            }
            i = end;
        }
    }
}

/// Peers → `flannel0`, with GRO on the socket and on the way into the device.
pub(super) fn rx_loop(ctx: &LoopCtx) {
    let (tun, sock, table, c, stop) = ctx.parts();
    let port = ctx.port;
    let mut buf = vec![0u8; MAX_PACKET];
    let mut cmsg = nix::cmsg_space!(i32);
    let mut gro = packet::Gro::new(16);
    let dead = std::cell::Cell::new(false);
    let mut emit = |hdr: &VirtioNetHdr, pkt: &[u8]| {
        let h = hdr.to_bytes();
        match tun
            .file()
            .write_vectored(&[IoSlice::new(&h), IoSlice::new(pkt)])
        {
            Ok(_) => {
                bump(&c.rx_packets);
                c.rx_bytes.fetch_add(pkt.len() as u64, Ordering::Relaxed);
            }
            Err(e) if matches!(e.raw_os_error(), Some(libc::EBADFD) | Some(libc::EIO)) => {
                dead.set(true)
            }
            Err(_) => bump(&c.io_errors),
        }
    };
    let fd = sock.as_raw_fd();
    while wait_readable(fd, stop) {
        for _ in 0..MAX_BATCH {
            let mut iov = [IoSliceMut::new(&mut buf)];
            let (bytes, from, gso) = match socket::recvmsg::<SockaddrIn>(
                fd,
                &mut iov,
                Some(&mut cmsg),
                MsgFlags::MSG_DONTWAIT,
            ) {
                Ok(m) => {
                    let gso = m.cmsgs().ok().and_then(|mut it| {
                        it.find_map(|x| match x {
                            ControlMessageOwned::UdpGroSegments(s) => usize::try_from(s).ok(),
                            _ => None,
                        })
                    });
                    let from = m.address.map(|a| SocketAddr::V4(a.into()));
                    (m.bytes, from, gso)
                }
                Err(nix::errno::Errno::EAGAIN) => break,
                Err(nix::errno::Errno::EINTR) => continue,
                Err(_) => {
                    bump(&c.io_errors);
                    break;
                }
            };
            let Some(from) = from else { continue };
            let Some(data) = buf.get(..bytes) else {
                continue;
            };
            // Each `gso`-sized piece is one datagram as the peer sent it (the last may be shorter).
            let step = gso.filter(|&s| s > 0).unwrap_or(bytes.max(1));
            let t = table.load();
            for pkt in data.chunks(step) {
                if let Some(p) = admit_datagram(&t, from, port, pkt, c).and_then(|n| pkt.get(..n)) {
                    gro.push(p, &mut emit);
                }
            }
        }
        gro.flush(&mut emit);
        if dead.get() {
            tracing::warn!("writing to flannel0 failed; its packet loop stops");
            return;
        }
    }
}
