//! The DHCP exchanges of one pod interface, run by the daemon: DISCOVER/OFFER/REQUEST/ACK, renewal (unicast to
//! the server), rebinding (broadcast) and RELEASE, over a packet socket opened inside the pod's namespace.

use super::msg::{self, opt, Message, MsgType};
use super::options::{client_id_option, ClientOptions};
use crate::error::{CniError, ERR_TRY_AGAIN_LATER};
use kernel::packet_socket::PacketSocket;
use kernel::{Mac, Netlink, Netns};
use std::net::Ipv4Addr;
use std::time::Duration;
use tokio::time::Instant;

/// RFC 2131's first retransmission delay.
const RESEND_DELAY0: Duration = Duration::from_secs(4);
/// The reference's default for the longest delay between retransmissions (`-resendmax`).
pub const RESEND_DELAY_MAX: Duration = Duration::from_secs(62);
/// The first few retransmissions come faster (as the reference).
const RESEND_FAST: Duration = Duration::from_secs(2);
const RESEND_FAST_COUNT: u32 = 4;
const BROADCAST_MAC: Mac = Mac([0xff; 6]);
/// How long a DHCPRELEASE is given to leave before DEL goes on.
const RELEASE_GRACE: Duration = Duration::from_millis(200);

/// The daemon's client settings (its flags).
#[derive(Debug, Clone, Copy)]
pub struct ClientConf {
    /// How long an acquisition may take before ADD fails (`-timeout`).
    pub timeout: Duration,
    /// The longest delay between retransmissions (`-resendmax`).
    pub resend_max: Duration,
    /// Set the BOOTP broadcast flag, asking servers to broadcast their replies (`-broadcast`).
    pub broadcast: bool,
}

/// Retransmission delays: a few fast ones, then RFC 2131's doubling from 4 s up to the maximum, each ±1 s.
#[derive(Debug, Clone)]
pub struct Backoff {
    fast_left: u32,
    base: Duration,
    max: Duration,
}

impl Backoff {
    pub fn new(max: Duration) -> Self {
        Self {
            fast_left: RESEND_FAST_COUNT,
            base: RESEND_DELAY0,
            max,
        }
    }

    /// The next delay.
    pub fn next_delay(&mut self) -> Duration {
        let d = if self.fast_left > 0 {
            self.fast_left -= 1;
            RESEND_FAST
        } else {
            let d = self.base.min(self.max);
            self.base = (self.base * 2).min(self.max.max(RESEND_DELAY0));
            d
        };
        // ±1 s of jitter, so pods started together do not retransmit together; never under 0.5 s.
        let mut r = [0u8; 2];
        let ms = if getrandom::fill(&mut r).is_ok() {
            u64::from(u16::from_le_bytes(r)) % 2000
        } else {
            1000
        };
        (d + Duration::from_millis(ms))
            .saturating_sub(Duration::from_secs(1))
            .max(Duration::from_millis(500))
    }
}

fn random_xid() -> u32 {
    let mut b = [0u8; 4];
    if getrandom::fill(&mut b).is_err() {
        // Any value works: the xid only matches replies to requests.
        return std::process::id().wrapping_mul(2_654_435_761);
    }
    u32::from_le_bytes(b)
}

/// A lease the server acknowledged.
#[derive(Debug, Clone)]
pub struct Bound {
    pub ack: Message,
    /// Option 54 of the ACK (or of the OFFER it answered).
    pub server_id: Ipv4Addr,
    /// When the request the ACK answered was sent: the lease times count from then (RFC 2131 4.4.1).
    pub since: Instant,
}

/// A packet socket on the pod interface, with what the messages need from the interface.
pub struct Client {
    ns: Netns,
    nl: Netlink,
    index: u32,
    sock: PacketSocket,
    mac: [u8; 6],
    ifname: String,
    conf: ClientConf,
}

impl Client {
    /// Opens the client on `ifname` inside the namespace at `netns`, bringing the link up if it is down (as the
    /// reference).
    pub async fn open(netns: &str, ifname: &str, conf: ClientConf) -> Result<Self, CniError> {
        let ns = Netns::open(netns)?;
        let nl = Netlink::in_netns(&ns)?;
        let link = nl.link_by_name(ifname).await?.ok_or_else(|| {
            CniError::internal(format!(
                "error looking up \"{ifname}\": link not found in {netns}"
            ))
        })?;
        if !link.up {
            nl.set_up(link.index).await?;
        }
        // Until the kernel's link watcher marks a fresh link operational (up to a second), what is sent on it is
        // dropped: the first DISCOVER would be lost and cost a retransmission delay.
        let until = Instant::now() + Duration::from_secs(2);
        while Instant::now() < until {
            match nl.link_by_name(ifname).await? {
                Some(l) if !l.oper_up => tokio::time::sleep(Duration::from_millis(20)).await,
                _ => break,
            }
        }
        let mac = link
            .mac
            .ok_or_else(|| CniError::internal(format!("{ifname} has no hardware address")))?;
        let index = link.index;
        let fd = ns.run(move || PacketSocket::open_fd(index))??;
        let sock = PacketSocket::from_fd(fd, index)?;
        Ok(Self {
            ns,
            nl,
            index,
            sock,
            mac: mac.0,
            ifname: ifname.to_string(),
            conf,
        })
    }

    fn message(&self, xid: u32, ty: MsgType, id: &str, extra: Option<&ClientOptions>) -> Message {
        let mut m = Message::request(xid, self.mac, ty);
        m.set(opt::CLIENT_ID, client_id_option(id));
        if let Some(o) = extra {
            for (c, v) in &o.provide {
                m.set(*c, v.clone());
            }
            m.set(opt::PARAMETER_REQUEST_LIST, o.request.clone());
        }
        m
    }

    async fn send(
        &self,
        m: &Message,
        src: Ipv4Addr,
        dst: Ipv4Addr,
        mac: Mac,
    ) -> Result<(), CniError> {
        let p = msg::frame(src, dst, &m.encode());
        self.sock.send(&p, mac).await.map_err(CniError::from)
    }

    /// Unicast to the server from the leased address: through the kernel's UDP stack, which finds the server's
    /// (or the router's) MAC; when the interface does not hold the address (a main plugin that did not
    /// configure it), the packet socket sends it to the link's broadcast MAC (still IP unicast: only the server
    /// takes it, hosts do not forward what did not come to their MAC).
    async fn send_unicast(
        &self,
        m: &Message,
        src: Ipv4Addr,
        dst: Ipv4Addr,
    ) -> Result<(), CniError> {
        // A socket bound to the device takes any source address and treats the server as on-link; without the
        // address on the interface the server's ARP answer would be dropped, and the packet with it.
        let holds = self
            .nl
            .addresses(self.index)
            .await
            .is_ok_and(|a| a.iter().any(|x| x.net.addr() == std::net::IpAddr::V4(src)));
        if !holds {
            return self.send(m, src, dst, BROADCAST_MAC).await;
        }
        let bytes = m.encode();
        let ifname = self.ifname.clone();
        let kernel_path = self.ns.run(move || {
            kernel::packet_socket::send_udp_via(
                &ifname,
                std::net::SocketAddrV4::new(src, msg::CLIENT_PORT),
                std::net::SocketAddrV4::new(dst, msg::SERVER_PORT),
                &bytes,
            )
        });
        match kernel_path {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => {
                super::log(&format!(
                    "{}: {e}: sent through the packet socket",
                    self.ifname
                ));
                self.send(m, src, dst, BROADCAST_MAC).await
            }
            Err(e) => {
                super::log(&format!(
                    "{}: {e}: sent through the packet socket",
                    self.ifname
                ));
                self.send(m, src, dst, BROADCAST_MAC).await
            }
        }
    }

    /// The next reply to `xid` of one of the types `want`, until `until`; anything else is ignored.
    async fn reply(&self, xid: u32, want: &[MsgType], until: Instant) -> Option<(Message, Mac)> {
        let mut buf = vec![0u8; 1600];
        loop {
            let got = tokio::time::timeout_at(until, self.sock.recv(&mut buf)).await;
            let (n, from) = match got {
                Err(_elapsed) => return None,
                Ok(Err(e)) => {
                    super::log(&format!("{}: {e}", self.ifname));
                    // A failing socket will not recover by spinning on it.
                    tokio::time::sleep_until(until).await;
                    return None;
                }
                Ok(Ok(r)) => r,
            };
            let Some((_, payload)) = buf.get(..n).and_then(msg::unframe) else {
                continue;
            };
            let Some(m) = Message::decode(payload) else {
                continue;
            };
            if m.op != msg::OP_REPLY || m.xid != xid || m.chaddr != self.mac {
                continue;
            }
            match m.msg_type() {
                Some(t) if want.contains(&t) => return Some((m, from)),
                _ => continue,
            }
        }
    }

    /// DISCOVER, OFFER, REQUEST, ACK, retransmitting with backoff, all within the configured timeout; code 11
    /// when no server completes it in time.
    pub async fn acquire(&self, id: &str, opts: &ClientOptions) -> Result<Bound, CniError> {
        let deadline = Instant::now() + self.conf.timeout;
        let mut backoff = Backoff::new(self.conf.resend_max);
        let flags = if self.conf.broadcast {
            msg::FLAG_BROADCAST
        } else {
            0
        };
        let mut nak = false;
        'discover: while Instant::now() < deadline {
            let xid = random_xid();
            let mut discover = self.message(xid, MsgType::Discover, id, Some(opts));
            discover.flags = flags;
            let (offer, server_id) = loop {
                self.send(
                    &discover,
                    Ipv4Addr::UNSPECIFIED,
                    Ipv4Addr::BROADCAST,
                    BROADCAST_MAC,
                )
                .await?;
                let until = deadline.min(Instant::now() + backoff.next_delay());
                if let Some((o, _)) = self.reply(xid, &[MsgType::Offer], until).await {
                    // An OFFER without a server identifier cannot be requested.
                    if let Some(sid) = o.get_ip(opt::SERVER_ID) {
                        break (o, sid);
                    }
                }
                if Instant::now() >= deadline {
                    break 'discover;
                }
            };
            let mut request = self.message(xid, MsgType::Request, id, Some(opts));
            request.flags = flags;
            request.set(opt::REQUESTED_IP, offer.yiaddr.octets().to_vec());
            request.set(opt::SERVER_ID, server_id.octets().to_vec());
            loop {
                let since = Instant::now();
                self.send(
                    &request,
                    Ipv4Addr::UNSPECIFIED,
                    Ipv4Addr::BROADCAST,
                    BROADCAST_MAC,
                )
                .await?;
                let until = deadline.min(Instant::now() + backoff.next_delay());
                match self.reply(xid, &[MsgType::Ack, MsgType::Nak], until).await {
                    Some((ack, _)) if ack.msg_type() == Some(MsgType::Ack) => {
                        return Ok(Bound {
                            server_id: ack.get_ip(opt::SERVER_ID).unwrap_or(server_id),
                            ack,
                            since,
                        });
                    }
                    Some(_nak) => {
                        nak = true;
                        continue 'discover;
                    }
                    None if Instant::now() >= deadline => break 'discover,
                    None => {}
                }
            }
        }
        let why = if nak {
            "the DHCP server NACK'd its own offer"
        } else {
            "no DHCP server answered"
        };
        Err(CniError::new(
            ERR_TRY_AGAIN_LATER,
            format!(
                "no DHCP lease for {} within {:?}: {why}",
                self.ifname, self.conf.timeout
            ),
        ))
    }

    /// One renewal (unicast to the server that gave the lease) or rebinding (broadcast) attempt: the REQUEST with
    /// the leased address as `ciaddr`, waiting for the answer until `until`. `Ok(None)`: no answer; an error:
    /// the server refused (NAK) or the socket failed.
    pub async fn renew(
        &self,
        lease: &Bound,
        id: &str,
        opts: &ClientOptions,
        unicast: bool,
        until: Instant,
    ) -> Result<Option<Bound>, CniError> {
        let xid = random_xid();
        let mut m = self.message(xid, MsgType::Request, id, Some(opts));
        m.ciaddr = lease.ack.yiaddr;
        let since = Instant::now();
        if unicast {
            self.send_unicast(&m, lease.ack.yiaddr, lease.server_id)
                .await?;
        } else {
            self.send(&m, lease.ack.yiaddr, Ipv4Addr::BROADCAST, BROADCAST_MAC)
                .await?;
        }
        match self.reply(xid, &[MsgType::Ack, MsgType::Nak], until).await {
            None => Ok(None),
            Some((ack, _)) if ack.msg_type() == Some(MsgType::Ack) => Ok(Some(Bound {
                server_id: ack.get_ip(opt::SERVER_ID).unwrap_or(lease.server_id),
                ack,
                since,
            })),
            Some(_) => Err(CniError::internal(
                "DHCP server did not renew lease (DHCPNAK)",
            )),
        }
    }

    /// DHCPRELEASE to the server (unicast; no answer comes).
    pub async fn release(&self, lease: &Bound, id: &str) -> Result<(), CniError> {
        let mut m = self.message(random_xid(), MsgType::Release, id, None);
        m.ciaddr = lease.ack.yiaddr;
        m.set(opt::SERVER_ID, lease.server_id.octets().to_vec());
        self.send_unicast(&m, lease.ack.yiaddr, lease.server_id)
            .await?;
        // No answer confirms a release, and the caller (a main plugin's DEL) deletes the interface next: on a
        // veth the frame may still wait in the peer's receive backlog, which a deletion flushes. A moment lets it
        // through.
        tokio::time::sleep(RELEASE_GRACE).await;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_is_fast_then_doubles_to_the_max() {
        let mut b = Backoff::new(Duration::from_secs(10));
        let d: Vec<u64> = (0..8).map(|_| b.next_delay().as_millis() as u64).collect();
        let around = |got: u64, want: u64| got + 1000 >= want && got <= want + 1000;
        for (got, want) in d
            .iter()
            .zip([2000, 2000, 2000, 2000, 4000, 8000, 10000, 10000])
        {
            assert!(around(*got, want), "{d:?}");
        }
        let mut small = Backoff::new(Duration::from_millis(100));
        for _ in 0..6 {
            assert!(small.next_delay() >= Duration::from_millis(500));
        }
    }
}
