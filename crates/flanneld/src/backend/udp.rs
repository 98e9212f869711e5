//! udp: userspace encapsulation, wire-compatible with upstream's `udp` backend. Packets for other nodes' pods are
//! routed into the TUN device `flannel0`; flanneld reads each one and sends it, unchanged but for the TTL, as the
//! whole payload of a UDP datagram from port 8285 (`Port`) to the public IP of the node whose lease holds the
//! destination. Datagrams from peers are checked and written back to `flannel0`.
//!
//! Where we differ from upstream, on purpose: a datagram is accepted only from the public IP and port of a current
//! lease, and only if its inner source is not in another node's subnet (upstream takes any datagram that reaches
//! the port: anyone who can send to UDP 8285 can inject packets into the pod network), and only for our own
//! subnet (we are not a relay). Every drop is counted and shown in `/status`.
//!
//! The packet loops are two plain threads (TUN → UDP and UDP → TUN) that read the peer table lock-free: the
//! reconciler builds a new table and swaps it in whole ([`ArcSwap`]). IPv4 only, as upstream's.

use super::{
    ensure_only_address, opt, Backend, BackendError, Local, Peer, Published, Report, ROUTE_PROTOCOL,
};
use crate::admission::{Claim, PeerRules};
use arc_swap::ArcSwap;
use ipnet::{IpNet, Ipv4Net};
use kernel::route::Route;
use kernel::tun::{Tun, TunOptions};
use kernel::Netlink;
use packet::icmp::{self, V4Error};
use serde_json::{json, Value};
use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::{IpAddr, Ipv4Addr, SocketAddr, SocketAddrV4, UdpSocket};
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use subnet::Lease;
use tracing::{info, warn};

mod fast;

/// The TUN device name (upstream's `flannel%d` always yields `flannel0` on a node).
pub const DEVICE: &str = "flannel0";
/// Upstream's default `Port`.
pub const DEFAULT_PORT: u16 = 8285;
/// IPv4 + UDP headers around each inner packet.
pub const OVERHEAD: u32 = 28;

/// The largest datagram or TUN packet we read: an IPv4 packet cannot be longer.
const MAX_PACKET: usize = 65536;
/// Send and receive buffer of the UDP socket.
const SOCKET_BUFFER: i32 = 8 << 20;

/// Sets a socket buffer size option (`SO_RCVBUFFORCE`, `SO_SNDBUFFORCE`).
fn set_sock_buf(sock: &UdpSocket, opt: libc::c_int, bytes: i32) -> std::io::Result<()> {
    // SAFETY: a valid fd, an int option value that outlives the call.
    let r = unsafe {
        libc::setsockopt(
            sock.as_raw_fd(),
            libc::SOL_SOCKET,
            opt,
            (&bytes as *const i32).cast(),
            std::mem::size_of::<i32>() as libc::socklen_t,
        )
    };
    if r < 0 {
        Err(std::io::Error::last_os_error())
    } else {
        Ok(())
    }
}

/// How often a blocked packet loop looks at its stop flag.
const POLL_MS: i32 = 500;

/// `Backend` options of udp.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UdpConfig {
    /// `Port`: the UDP port peers send to and we send from.
    pub port: u16,
    /// `Offload` (ours; upstream ignores unknown keys): use the fast path where the kernel has the offloads
    /// (default true); false forces the one-packet-per-syscall path.
    pub offload: bool,
}

impl UdpConfig {
    /// Parses the options (keys case-insensitive, as Go's encoding/json).
    pub fn parse(options: &Value) -> Result<Self, BackendError> {
        let port = match opt(options, "Port") {
            None | Some(Value::Null) => DEFAULT_PORT,
            Some(v) => match v.as_u64() {
                Some(p @ 1..=65535) => p as u16,
                _ => {
                    return Err(BackendError::Config(format!(
                        "Backend.Port {v}: must be an integer between 1 and 65535"
                    )))
                }
            },
        };
        let offload = match opt(options, "Offload") {
            None | Some(Value::Null) => true,
            Some(Value::Bool(b)) => *b,
            Some(v) => {
                return Err(BackendError::Config(format!(
                    "Backend.Offload {v}: must be true or false"
                )))
            }
        };
        Ok(Self { port, offload })
    }
}

/// Packet counters, shown in `/status` under `backend`.
#[derive(Debug, Default)]
pub struct Counters {
    /// Packets sent to peers.
    pub tx_packets: AtomicU64,
    /// Bytes (inner packets) sent to peers.
    pub tx_bytes: AtomicU64,
    /// Packets from peers written to `flannel0`.
    pub rx_packets: AtomicU64,
    /// Bytes from peers written to `flannel0`.
    pub rx_bytes: AtomicU64,
    /// Datagrams from an address and port that is no current lease's.
    pub dropped_not_peer: AtomicU64,
    /// Datagrams from a peer whose inner source lies in another node's subnet (or ours).
    pub dropped_spoofed: AtomicU64,
    /// Datagrams from a peer for a destination outside our subnet (we do not relay).
    pub dropped_not_ours: AtomicU64,
    /// Datagrams or TUN packets that are not a whole IPv4 packet.
    pub dropped_malformed: AtomicU64,
    /// Packets for an address in the network that no lease holds (answered with ICMP net unreachable).
    pub no_route: AtomicU64,
    /// Packets whose TTL ran out here (answered with ICMP time exceeded).
    pub ttl_expired: AtomicU64,
    /// DF packets too big for the tunnel (answered with ICMP fragmentation needed).
    pub too_big: AtomicU64,
    /// Sends or writes the kernel refused.
    pub io_errors: AtomicU64,
    /// Whether the loops run the offload path.
    pub offload: AtomicBool,
}

impl Counters {
    fn json(&self) -> Value {
        let g = |c: &AtomicU64| c.load(Ordering::Relaxed);
        json!({
            "path": if self.offload.load(Ordering::Relaxed) { "offload" } else { "plain" },
            "txPackets": g(&self.tx_packets),
            "txBytes": g(&self.tx_bytes),
            "rxPackets": g(&self.rx_packets),
            "rxBytes": g(&self.rx_bytes),
            "dropped": {
                "notPeer": g(&self.dropped_not_peer),
                "spoofedSource": g(&self.dropped_spoofed),
                "notOurSubnet": g(&self.dropped_not_ours),
                "malformed": g(&self.dropped_malformed),
            },
            "noRoute": g(&self.no_route),
            "ttlExpired": g(&self.ttl_expired),
            "tooBig": g(&self.too_big),
            "ioErrors": g(&self.io_errors),
        })
    }
}

fn bump(c: &AtomicU64) {
    c.fetch_add(1, Ordering::Relaxed);
}

/// The forwarding state the packet loops read: built by the reconciler, swapped in whole.
#[derive(Debug, Default)]
pub struct Table {
    /// The flannel network.
    network: Option<Ipv4Net>,
    /// Our subnet.
    own: Option<Ipv4Net>,
    /// Subnet length of every lease (ours): a destination's lease subnet is its address truncated to it.
    prefix: u8,
    /// Peer subnet → where to send.
    peers: HashMap<Ipv4Net, SocketAddrV4>,
    /// Peer public IP → the subnets it holds (a datagram from it may only carry their sources).
    by_public: HashMap<Ipv4Addr, Vec<Ipv4Net>>,
}

/// What to do with a packet read from `flannel0`.
#[derive(Debug, PartialEq, Eq)]
enum Out {
    Send(SocketAddrV4),
    Icmp(V4Error),
    Drop,
}

/// What to do with a datagram from the wire.
#[derive(Debug, PartialEq, Eq)]
enum In {
    Deliver,
    NotPeer,
    Spoofed,
    NotOurs,
}

impl Table {
    fn subnet_of(&self, a: Ipv4Addr) -> Option<Ipv4Net> {
        Ipv4Net::new(a, self.prefix).ok().map(|n| n.trunc())
    }

    /// Where a packet from a local pod (or this host) goes.
    fn route(&self, h: &packet::ip::Header, mtu: usize) -> Out {
        let IpAddr::V4(dst) = h.dst else {
            return Out::Drop;
        };
        match self.subnet_of(dst).and_then(|s| self.peers.get(&s)) {
            Some(to) => {
                if h.ttl <= 1 {
                    Out::Icmp(V4Error::TimeExceeded)
                } else if h.total_len > mtu && h.dont_fragment {
                    Out::Icmp(V4Error::FragmentationNeeded {
                        mtu: u16::try_from(mtu).unwrap_or(u16::MAX),
                    })
                } else {
                    Out::Send(*to)
                }
            }
            None if self.network.is_some_and(|n| n.contains(&dst))
                && !self.own.is_some_and(|o| o.contains(&dst)) =>
            {
                Out::Icmp(V4Error::NetUnreachable)
            }
            None => Out::Drop,
        }
    }

    /// Whether a datagram from `from` carrying `h` may be written to `flannel0`.
    fn admit(&self, from: SocketAddr, port: u16, h: &packet::ip::Header) -> In {
        let SocketAddr::V4(from) = from else {
            return In::NotPeer;
        };
        if from.port() != port {
            return In::NotPeer;
        }
        let Some(held) = self.by_public.get(from.ip()) else {
            return In::NotPeer;
        };
        let (IpAddr::V4(src), IpAddr::V4(dst)) = (h.src, h.dst) else {
            return In::NotOurs;
        };
        if !self.own.is_some_and(|o| o.contains(&dst)) {
            return In::NotOurs;
        }
        // A source inside the network must be in a subnet this peer holds: not ours, not a third node's.
        if self.network.is_some_and(|n| n.contains(&src)) && !held.iter().any(|s| s.contains(&src))
        {
            return In::Spoofed;
        }
        In::Deliver
    }
}

/// What a packet loop works with.
struct LoopCtx {
    tun: Arc<Tun>,
    sock: Arc<UdpSocket>,
    table: Arc<ArcSwap<Table>>,
    c: Arc<Counters>,
    stop: Arc<AtomicBool>,
    /// The tunnel MTU (largest inner packet).
    mtu: usize,
    /// The UDP port peers send from.
    port: u16,
}

impl LoopCtx {
    /// The device queue, socket, peer table, counters and stop flag.
    fn parts(&self) -> (&Tun, &UdpSocket, &ArcSwap<Table>, &Counters, &AtomicBool) {
        (&self.tun, &self.sock, &self.table, &self.c, &self.stop)
    }
}

/// The counter of an ICMP error we answer with.
fn icmp_counter(c: &Counters, kind: V4Error) -> &AtomicU64 {
    match kind {
        V4Error::NetUnreachable => &c.no_route,
        V4Error::TimeExceeded => &c.ttl_expired,
        V4Error::FragmentationNeeded { .. } => &c.too_big,
    }
}

/// The header of an IPv4 packet; anything else is counted as malformed (udp carries IPv4 only, as upstream's).
fn inspect_v4(pkt: &[u8], c: &Counters) -> Option<packet::ip::Header> {
    match packet::ip::inspect(pkt) {
        Ok(h) if h.version == 4 => Some(h),
        _ => {
            bump(&c.dropped_malformed);
            None
        }
    }
}

/// Checks one datagram from `from` (the same checks on both paths): the inner packet's length when it may be
/// written to `flannel0`; otherwise the reason is counted and `None` returned.
fn admit_datagram(
    t: &Table,
    from: SocketAddr,
    port: u16,
    pkt: &[u8],
    c: &Counters,
) -> Option<usize> {
    let h = inspect_v4(pkt, c)?;
    match t.admit(from, port, &h) {
        In::Deliver => Some(h.total_len),
        In::NotPeer => {
            bump(&c.dropped_not_peer);
            None
        }
        In::Spoofed => {
            bump(&c.dropped_spoofed);
            None
        }
        In::NotOurs => {
            bump(&c.dropped_not_ours);
            None
        }
    }
}

/// The running packet loops of one `flannel0`.
struct Loops {
    stop: Arc<AtomicBool>,
}

impl Drop for Loops {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

/// The udp backend.
pub struct Udp {
    cfg: UdpConfig,
    local: Local,
    tun: Option<Arc<Tun>>,
    index: Option<u32>,
    socket: Option<Arc<UdpSocket>>,
    table: Arc<ArcSwap<Table>>,
    counters: Arc<Counters>,
    loops: Option<Loops>,
    /// The peers of the table now in use, to report what a pass changed.
    current: HashMap<Ipv4Net, SocketAddrV4>,
    /// Whether the packet loops run the offload path ([`fast`]) or one packet per syscall.
    fast: bool,
}

impl Udp {
    /// Validates the options (no kernel changes yet).
    pub fn new(options: &Value, local: &Local) -> Result<Self, BackendError> {
        if local.ipv6_network.is_some() {
            return Err(BackendError::Unsupported(
                "udp: IPv6 networks are not supported (as upstream's udp backend); use vxlan or host-gw".into(),
            ));
        }
        Ok(Self {
            cfg: UdpConfig::parse(options)?,
            local: local.clone(),
            tun: None,
            index: None,
            socket: None,
            table: Arc::new(ArcSwap::from_pointee(Table::default())),
            counters: Arc::new(Counters::default()),
            loops: None,
            current: HashMap::new(),
            fast: false,
        })
    }

    /// The tunnel MTU: the underlay's minus the outer IPv4 and UDP headers.
    fn mtu(&self) -> u32 {
        self.local.ext_mtu.saturating_sub(OVERHEAD)
    }

    fn publish_table(&mut self, peers: HashMap<Ipv4Net, SocketAddrV4>) {
        let mut by_public: HashMap<Ipv4Addr, Vec<Ipv4Net>> = HashMap::new();
        for (s, a) in &peers {
            by_public.entry(*a.ip()).or_default().push(*s);
        }
        self.table.store(Arc::new(Table {
            network: self.local.network,
            own: self.local.subnet,
            prefix: self.local.subnet.map_or(32, |s| s.prefix_len()),
            peers: peers.clone(),
            by_public,
        }));
        self.current = peers;
    }

    fn start_loops(&mut self) -> Result<(), BackendError> {
        let (Some(tun), Some(sock)) = (self.tun.clone(), self.socket.clone()) else {
            return Ok(());
        };
        let stop = Arc::new(AtomicBool::new(false));
        let ctx = Arc::new(LoopCtx {
            tun,
            sock,
            table: self.table.clone(),
            c: self.counters.clone(),
            stop: stop.clone(),
            mtu: self.mtu() as usize,
            port: self.cfg.port,
        });
        type LoopFn = fn(&LoopCtx);
        let (tx, rx): (LoopFn, LoopFn) = if self.fast {
            (fast::tx_loop, fast::rx_loop)
        } else {
            (tx_loop, rx_loop)
        };
        for (name, f) in [("udp-tx", tx), ("udp-rx", rx)] {
            let ctx = ctx.clone();
            std::thread::Builder::new()
                .name(name.into())
                .spawn(move || f(&ctx))
                .map_err(|e| BackendError::Unsupported(format!("udp: cannot start {name}: {e}")))?;
        }
        self.loops = Some(Loops { stop });
        Ok(())
    }

    fn network_route(&self) -> Option<Route> {
        let (net, index) = (self.local.network?, self.index?);
        Some(
            Route::new(IpNet::V4(net))
                .dev(index)
                .protocol(ROUTE_PROTOCOL),
        )
    }
}

/// Waits until `fd` is readable or [`POLL_MS`] passed; false when the loop should stop.
fn wait_readable(fd: i32, stop: &AtomicBool) -> bool {
    loop {
        if stop.load(Ordering::Relaxed) {
            return false;
        }
        let mut p = libc::pollfd {
            fd,
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: one valid pollfd for the duration of the call.
        let n = unsafe { libc::poll(&mut p, 1, POLL_MS) };
        if n > 0 {
            return true;
        }
        if n < 0 && std::io::Error::last_os_error().kind() != std::io::ErrorKind::Interrupted {
            return false;
        }
    }
}

/// The next packet from `flannel0` into `buf` (its length); `None` when the loop should stop: asked to, or the
/// device was deleted under us (the reconciler notices and builds a new one).
fn read_tun(tun: &Tun, buf: &mut [u8], stop: &AtomicBool) -> Option<usize> {
    while wait_readable(tun.file().as_raw_fd(), stop) {
        match tun.file().read(buf) {
            Ok(n) => return Some(n),
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => {
                warn!(error = %e, "reading {DEVICE} failed; its packet loop stops");
                return None;
            }
        }
    }
    None
}

/// Writes an ICMP error about `pkt` back into `flannel0`, from the packet's own destination.
///
/// Not from our `flannel0` address: a packet that enters through `flannel0` with one of this host's addresses as
/// its source is a martian the kernel drops. The original destination is what the sender already talks to, and
/// the kernel matches the error to the flow by the quoted header, not by the ICMP source.
fn answer(
    tun: &Tun,
    vnet: bool,
    pkt: &[u8],
    dst: IpAddr,
    kind: V4Error,
    out: &mut [u8],
    c: &Counters,
) {
    let IpAddr::V4(from) = dst else { return };
    let Some(p) = icmp::build_v4(out, from, pkt, kind).and_then(|n| out.get(..n)) else {
        return;
    };
    // With IFF_VNET_HDR every write starts with a virtio header: all zero is "a plain packet".
    let none = [0u8; packet::virtio::VIRTIO_NET_HDR_LEN];
    let hdr: &[u8] = if vnet { &none } else { &[] };
    if tun
        .file()
        .write_vectored(&[std::io::IoSlice::new(hdr), std::io::IoSlice::new(p)])
        .is_err()
    {
        bump(&c.io_errors);
    }
}

/// `flannel0` → peers.
fn tx_loop(ctx: &LoopCtx) {
    let (tun, sock, table, c, stop) = ctx.parts();
    let mtu = ctx.mtu;
    let mut buf = vec![0u8; MAX_PACKET];
    let mut icmp_buf = vec![0u8; icmp::V4_MAX_ERROR_LEN];
    while let Some(n) = read_tun(tun, &mut buf, stop) {
        let Some(pkt) = buf.get_mut(..n) else {
            continue;
        };
        let Some(h) = inspect_v4(pkt, c) else {
            continue;
        };
        match table.load().route(&h, mtu) {
            Out::Send(to) => {
                let Some(pkt) = pkt.get_mut(..h.total_len) else {
                    continue;
                };
                if packet::ttl::decrement_ttl(pkt).is_err() {
                    bump(&c.dropped_malformed);
                    continue;
                }
                match sock.send_to(pkt, to) {
                    Ok(_) => {
                        bump(&c.tx_packets);
                        c.tx_bytes.fetch_add(pkt.len() as u64, Ordering::Relaxed);
                    }
                    Err(_) => bump(&c.io_errors),
                }
            }
            Out::Icmp(kind) => {
                bump(icmp_counter(c, kind));
                answer(tun, false, pkt, h.dst, kind, &mut icmp_buf, c);
            }
            Out::Drop => bump(&c.no_route),
        }
    }
}

/// Peers → `flannel0`.
fn rx_loop(ctx: &LoopCtx) {
    let (tun, sock, table, c, stop) = ctx.parts();
    let port = ctx.port;
    let mut buf = vec![0u8; MAX_PACKET];
    let fd = sock.as_raw_fd();
    while wait_readable(fd, stop) {
        let (n, from) = match sock.recv_from(&mut buf) {
            Ok(x) => x,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(_) => {
                bump(&c.io_errors);
                continue;
            }
        };
        let Some(pkt) = buf.get(..n) else { continue };
        let Some(len) = admit_datagram(&table.load(), from, port, pkt, c) else {
            continue;
        };
        let Some(pkt) = pkt.get(..len) else { continue };
        match tun.file().write(pkt) {
            Ok(_) => {
                bump(&c.rx_packets);
                c.rx_bytes.fetch_add(pkt.len() as u64, Ordering::Relaxed);
            }
            Err(e) if matches!(e.raw_os_error(), Some(libc::EBADFD) | Some(libc::EIO)) => {
                warn!(error = %e, "writing to {DEVICE} failed; its packet loop stops");
                return;
            }
            Err(_) => bump(&c.io_errors),
        }
    }
}

#[async_trait::async_trait]
impl Backend for Udp {
    fn type_name(&self) -> &'static str {
        "udp"
    }

    /// Creates `flannel0` (MTU underlay − 28) and binds the UDP port; the lease carries no backend type or data,
    /// as upstream's udp lease.
    async fn setup(&mut self, nl: &Netlink) -> Result<Published, BackendError> {
        self.loops = None;
        let mut tun = Tun::open(
            DEVICE,
            TunOptions {
                vnet_hdr: self.cfg.offload,
                multi_queue: false,
            },
        )?;
        let link = nl.link_by_name(DEVICE).await?.ok_or_else(|| {
            BackendError::Unsupported(format!("udp: {DEVICE} vanished after creation"))
        })?;
        nl.set_mtu(link.index, self.mtu()).await?;
        nl.set_up(link.index).await?;
        if self.socket.is_none() {
            let bind = SocketAddrV4::new(
                self.local.iface_addr.unwrap_or(Ipv4Addr::UNSPECIFIED),
                self.cfg.port,
            );
            let sock = UdpSocket::bind(bind).map_err(|e| {
                BackendError::Unsupported(format!("udp: cannot bind UDP {bind}: {e}"))
            })?;
            // Big buffers: with GRO a queued datagram is a 64 KB run, and the default ~208 KB holds three;
            // overflow is loss the pods' TCP pays for in retransmissions. FORCE (we are root) passes rmem_max.
            for (opt, what) in [
                (libc::SO_RCVBUFFORCE, "SO_RCVBUF"),
                (libc::SO_SNDBUFFORCE, "SO_SNDBUF"),
            ] {
                if let Err(e) = set_sock_buf(&sock, opt, SOCKET_BUFFER) {
                    warn!("udp: cannot set {what} to {SOCKET_BUFFER}: {e}");
                }
            }
            self.socket = Some(Arc::new(sock));
        }
        self.fast = false;
        if self.cfg.offload {
            match self.socket.as_deref().map(|s| fast::enable(&tun, s)) {
                Some(Ok(())) => self.fast = true,
                Some(Err(why)) => {
                    warn!("udp: kernel offloads unavailable ({why}); using one packet per syscall");
                    // The device was opened for virtio headers; reopen it plain (same name, same link).
                    drop(tun);
                    tun = Tun::open(DEVICE, TunOptions::default())?;
                }
                None => {}
            }
        }
        self.counters.offload.store(self.fast, Ordering::Relaxed);
        info!(
            "udp: TUN {DEVICE} (MTU {}), UDP port {} on {}, {}",
            self.mtu(),
            self.cfg.port,
            self.local.ext_name,
            if self.fast {
                "offload path (TSO/GRO on flannel0, UDP GSO/GRO)"
            } else {
                "one packet per syscall"
            }
        );
        self.tun = Some(Arc::new(tun));
        self.index = Some(link.index);
        Ok(Published {
            backend_type: String::new(),
            backend_data: None,
            backend_v6_data: None,
            mtu: self.mtu(),
        })
    }

    /// Puts the lease's address (`.0/32`) on `flannel0`, routes the network into it, and starts the packet loops.
    async fn set_lease(&mut self, nl: &Netlink, local: &Local) -> Result<(), BackendError> {
        self.local = local.clone();
        if let (Some(index), Some(sub)) = (self.index, local.subnet) {
            let addr = IpNet::new(IpAddr::V4(sub.network()), 32)
                .map_err(|e| BackendError::Config(e.to_string()))?;
            ensure_only_address(nl, index, addr).await?;
        }
        if let Some(r) = self.network_route() {
            nl.add_route(&r, true).await?;
        }
        let peers = std::mem::take(&mut self.current);
        self.publish_table(peers);
        if self.loops.is_none() {
            self.start_loops()?;
        }
        Ok(())
    }

    async fn devices_present(&self, nl: &Netlink) -> Result<bool, BackendError> {
        match self.index {
            Some(i) => Ok(nl.link_by_index(i).await?.is_some()),
            None => Ok(true),
        }
    }

    /// Swaps in the table of `peers` and puts the network route back if someone removed it.
    async fn reconcile(&mut self, nl: &Netlink, peers: &[Peer]) -> Result<Report, BackendError> {
        let mut want = HashMap::new();
        for p in peers {
            if let (Some(s), Some(ip)) = (p.subnet, p.public_ip) {
                if Some(s) != self.local.subnet {
                    want.insert(s, SocketAddrV4::new(ip, self.cfg.port));
                }
            }
        }
        let mut report = Report {
            added: want
                .iter()
                .filter(|(s, a)| self.current.get(s) != Some(a))
                .count(),
            removed: self
                .current
                .keys()
                .filter(|s| !want.contains_key(s))
                .count(),
        };
        if report.added + report.removed > 0 {
            self.publish_table(want);
        }
        if let Some(r) = self.network_route() {
            let present = nl
                .routes(false)
                .await?
                .iter()
                .any(|x| x.dst == r.dst && x.oif == r.oif && x.table == Some(254));
            if !present {
                nl.add_route(&r, true).await?;
                report.added += 1;
            }
        }
        Ok(report)
    }

    fn status_source(&self) -> Option<super::StatusSource> {
        let (c, port) = (self.counters.clone(), self.cfg.port);
        Some(Arc::new(
            move || json!({"type": "udp", "port": port, "device": DEVICE, "counters": c.json()}),
        ))
    }
}

impl PeerRules for Udp {
    /// A udp lease has no `BackendType` (upstream's udp backend writes none); "udp" is accepted too. A lease of
    /// another backend is refused: that node does not speak this wire format.
    fn admit_peer(
        &self,
        lease: &Lease,
        peer: &mut Peer,
        _claims: &mut Vec<Claim>,
    ) -> Result<(), String> {
        let t = lease.attrs.backend_type.as_str();
        if !(t.is_empty() || t.eq_ignore_ascii_case("udp")) {
            return Err(format!("BackendType {t:?}: this network runs udp"));
        }
        if peer.subnet.is_none() || peer.public_ip.is_none() {
            return Err("udp needs an IPv4 subnet and PublicIP".into());
        }
        Ok(())
    }

    fn own_claims(&self) -> Vec<Claim> {
        Vec::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn table() -> Table {
        let net: Ipv4Net = "10.244.0.0/16".parse().unwrap();
        let own: Ipv4Net = "10.244.1.0/24".parse().unwrap();
        let p2: Ipv4Net = "10.244.2.0/24".parse().unwrap();
        let p3: Ipv4Net = "10.244.3.0/24".parse().unwrap();
        let a2 = SocketAddrV4::new("192.0.2.2".parse().unwrap(), 8285);
        let a3 = SocketAddrV4::new("192.0.2.3".parse().unwrap(), 8285);
        Table {
            network: Some(net),
            own: Some(own),
            prefix: 24,
            peers: [(p2, a2), (p3, a3)].into_iter().collect(),
            by_public: [(*a2.ip(), vec![p2]), (*a3.ip(), vec![p3])]
                .into_iter()
                .collect(),
        }
    }

    fn hdr(src: &str, dst: &str, ttl: u8, len: usize, df: bool) -> packet::ip::Header {
        packet::ip::Header {
            version: 4,
            src: src.parse().unwrap(),
            dst: dst.parse().unwrap(),
            header_len: 20,
            total_len: len,
            trailing: 0,
            protocol: 1,
            ttl,
            dont_fragment: df,
            is_fragment: false,
            fragment_offset: 0,
            l4_offset: 20,
            l4_protocol: 1,
        }
    }

    #[test]
    fn routes_by_destination_subnet() {
        let t = table();
        let to2 = SocketAddrV4::new("192.0.2.2".parse().unwrap(), 8285);
        assert_eq!(
            t.route(&hdr("10.244.1.5", "10.244.2.9", 64, 100, false), 1472),
            Out::Send(to2)
        );
        assert_eq!(
            t.route(&hdr("10.244.1.5", "10.244.9.9", 64, 100, false), 1472),
            Out::Icmp(V4Error::NetUnreachable)
        );
        assert_eq!(
            t.route(&hdr("10.244.1.5", "8.8.8.8", 64, 100, false), 1472),
            Out::Drop
        );
        assert_eq!(
            t.route(&hdr("10.244.1.5", "10.244.2.9", 1, 100, false), 1472),
            Out::Icmp(V4Error::TimeExceeded)
        );
        assert_eq!(
            t.route(&hdr("10.244.1.5", "10.244.2.9", 64, 1500, true), 1472),
            Out::Icmp(V4Error::FragmentationNeeded { mtu: 1472 })
        );
        assert_eq!(
            t.route(&hdr("10.244.1.5", "10.244.2.9", 64, 1500, false), 1472),
            Out::Send(to2)
        );
    }

    #[test]
    fn only_peers_speaking_for_their_own_pods_get_in() {
        let t = table();
        let from2: SocketAddr = "192.0.2.2:8285".parse().unwrap();
        let ok = hdr("10.244.2.9", "10.244.1.5", 63, 100, false);
        assert_eq!(t.admit(from2, 8285, &ok), In::Deliver);
        assert_eq!(
            t.admit("192.0.2.2:9999".parse().unwrap(), 8285, &ok),
            In::NotPeer
        );
        assert_eq!(
            t.admit("192.0.2.77:8285".parse().unwrap(), 8285, &ok),
            In::NotPeer
        );
        // Node 2 speaking for node 3's pods, or for ours.
        assert_eq!(
            t.admit(
                from2,
                8285,
                &hdr("10.244.3.9", "10.244.1.5", 63, 100, false)
            ),
            In::Spoofed
        );
        assert_eq!(
            t.admit(
                from2,
                8285,
                &hdr("10.244.1.7", "10.244.1.5", 63, 100, false)
            ),
            In::Spoofed
        );
        // Not for our subnet: we are no relay.
        assert_eq!(
            t.admit(
                from2,
                8285,
                &hdr("10.244.2.9", "10.244.3.5", 63, 100, false)
            ),
            In::NotOurs
        );
        // A source outside the network (traffic a peer forwards from outside) is the peer's to send.
        assert_eq!(
            t.admit(
                from2,
                8285,
                &hdr("203.0.113.9", "10.244.1.5", 63, 100, false)
            ),
            In::Deliver
        );
    }

    #[test]
    fn port_option() {
        assert_eq!(UdpConfig::parse(&json!({})).unwrap().port, 8285);
        assert_eq!(UdpConfig::parse(&json!({"port": 7890})).unwrap().port, 7890);
        assert!(UdpConfig::parse(&json!({"Port": 0})).is_err());
        assert!(UdpConfig::parse(&json!({"Port": "x"})).is_err());
    }
}
