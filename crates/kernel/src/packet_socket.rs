//! AF_PACKET datagram sockets bound to one interface: how a DHCP client talks before its interface has an
//! address. The kernel's IP stack drops (or never sees as ours) replies sent to an address the interface does not
//! hold yet, and a server without the broadcast flag unicasts its OFFER to the offered address and our MAC: a
//! packet socket sees every IPv4 frame the interface receives, whatever its IP destination.
//!
//! `SOCK_DGRAM` (cooked) sockets: the kernel adds and strips the Ethernet header, the caller handles IP and up;
//! the source MAC of each received frame is reported. Once the interface holds its address, unicast goes through
//! the kernel's UDP stack instead ([`send_udp_via`]), which resolves the server's MAC when it is sent (a MAC
//! remembered from a reply can go stale: a Linux bridge's own MAC changes with its ports).
//!
//! A socket belongs to the network namespace it was created in: create it on a thread inside the pod's namespace
//! ([`crate::Netns::run`] with [`PacketSocket::open_fd`]), then wrap it with [`PacketSocket::from_fd`] in the
//! runtime.

use crate::error::{Error, Result};
use crate::link::Mac;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use tokio::io::unix::AsyncFd;
use tokio::io::Interest;

/// `ETH_P_IP`, in network byte order as `sockaddr_ll` and `socket(2)` want it.
const ETH_P_IP_BE: u16 = (libc::ETH_P_IP as u16).to_be();

/// A non-blocking packet socket for IPv4 on one interface.
#[derive(Debug)]
pub struct PacketSocket {
    fd: AsyncFd<OwnedFd>,
    ifindex: u32,
}

fn sockaddr(ifindex: u32, mac: Option<Mac>) -> libc::sockaddr_ll {
    // SAFETY: sockaddr_ll is plain old data; all-zero is a valid value.
    let mut sa: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
    sa.sll_family = libc::AF_PACKET as u16;
    sa.sll_protocol = ETH_P_IP_BE;
    sa.sll_ifindex = ifindex as i32;
    if let Some(m) = mac {
        sa.sll_halen = 6;
        sa.sll_addr[..6].copy_from_slice(&m.0);
    }
    sa
}

impl PacketSocket {
    /// Creates the socket in the calling thread's namespace, bound to interface `ifindex`, non-blocking.
    pub fn open_fd(ifindex: u32) -> Result<OwnedFd> {
        // SAFETY: plain socket(2); the result is checked and owned at once.
        let raw = unsafe {
            libc::socket(
                libc::AF_PACKET,
                libc::SOCK_DGRAM | libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC,
                i32::from(ETH_P_IP_BE),
            )
        };
        if raw < 0 {
            return Err(Error::io(
                "open packet socket",
                std::io::Error::last_os_error(),
            ));
        }
        // SAFETY: `raw` is a fresh descriptor nobody else owns.
        let fd = unsafe { OwnedFd::from_raw_fd(raw) };
        let sa = sockaddr(ifindex, None);
        // SAFETY: `sa` is a valid sockaddr_ll of the size given.
        let rc = unsafe {
            libc::bind(
                fd.as_raw_fd(),
                std::ptr::from_ref(&sa).cast(),
                std::mem::size_of::<libc::sockaddr_ll>() as u32,
            )
        };
        if rc < 0 {
            return Err(Error::io(
                format!("bind packet socket to interface {ifindex}"),
                std::io::Error::last_os_error(),
            ));
        }
        Ok(fd)
    }

    /// Registers a socket from [`PacketSocket::open_fd`] with the current tokio runtime.
    pub fn from_fd(fd: OwnedFd, ifindex: u32) -> Result<Self> {
        // SAFETY: the `OwnedFd` owns its descriptor, which stays open and unchanged for as long as the `AsyncFd`
        // owns it; `as_raw_fd` always returns it.
        let fd =
            unsafe { AsyncFd::register_with_interest(fd, Interest::READABLE | Interest::WRITABLE) }
                .map_err(|e| Error::io("register packet socket", e.into_parts().1))?;
        Ok(Self { fd, ifindex })
    }

    /// Sends one IPv4 packet (`packet` starts at the IP header) to the link-layer address `dst`.
    pub async fn send(&self, packet: &[u8], dst: Mac) -> Result<()> {
        let sa = sockaddr(self.ifindex, Some(dst));
        loop {
            let mut guard = self
                .fd
                .writable()
                .await
                .map_err(|e| Error::io("wait for packet socket", e))?;
            let r = guard.try_io(|fd| {
                // SAFETY: the buffer and address are valid for the lengths given.
                let n = unsafe {
                    libc::sendto(
                        fd.as_raw_fd(),
                        packet.as_ptr().cast(),
                        packet.len(),
                        0,
                        std::ptr::from_ref(&sa).cast(),
                        std::mem::size_of::<libc::sockaddr_ll>() as u32,
                    )
                };
                if n < 0 {
                    Err(std::io::Error::last_os_error())
                } else {
                    Ok(())
                }
            });
            match r {
                Ok(res) => {
                    return res
                        .map_err(|e| Error::io(format!("send on interface {}", self.ifindex), e))
                }
                Err(_would_block) => continue,
            }
        }
    }

    /// Receives one IPv4 packet into `buf`: its length (at most `buf.len()`; longer packets are cut) and the
    /// sender's link-layer address (zero when the link has none).
    pub async fn recv(&self, buf: &mut [u8]) -> Result<(usize, Mac)> {
        loop {
            let mut guard = self
                .fd
                .readable()
                .await
                .map_err(|e| Error::io("wait for packet socket", e))?;
            let r = guard.try_io(|fd| {
                let mut sa = sockaddr(0, None);
                let mut len = std::mem::size_of::<libc::sockaddr_ll>() as u32;
                // SAFETY: the buffer and address are valid for the lengths given.
                let n = unsafe {
                    libc::recvfrom(
                        fd.as_raw_fd(),
                        buf.as_mut_ptr().cast(),
                        buf.len(),
                        0,
                        std::ptr::from_mut(&mut sa).cast(),
                        &mut len,
                    )
                };
                if n < 0 {
                    return Err(std::io::Error::last_os_error());
                }
                let mut mac = [0u8; 6];
                if sa.sll_halen == 6 {
                    mac.copy_from_slice(&sa.sll_addr[..6]);
                }
                Ok((n as usize, Mac(mac)))
            });
            match r {
                Ok(res) => {
                    return res.map_err(|e| {
                        Error::io(format!("receive on interface {}", self.ifindex), e)
                    })
                }
                Err(_would_block) => continue,
            }
        }
    }
}

/// Sends one UDP datagram from `src` to `dst` through interface `ifname` with a kernel UDP socket, made and
/// closed in the calling thread's namespace: the kernel resolves the next hop's MAC (ARP) and routes. For a
/// client whose interface holds `src` already (a DHCP renewal or release, unicast to the server); fails when it
/// does not (`EADDRNOTAVAIL`). `SO_REUSEADDR`, so a DHCP client already on the port does not stop it.
pub fn send_udp_via(
    ifname: &str,
    src: std::net::SocketAddrV4,
    dst: std::net::SocketAddrV4,
    payload: &[u8],
) -> Result<()> {
    let err = |op: &str| {
        Error::io(
            format!("{op} ({src} to {dst} via {ifname})"),
            std::io::Error::last_os_error(),
        )
    };
    // SAFETY: plain socket(2); the result is checked and owned at once.
    let raw = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
    if raw < 0 {
        return Err(err("open UDP socket"));
    }
    // SAFETY: `raw` is a fresh descriptor nobody else owns.
    let fd = unsafe { OwnedFd::from_raw_fd(raw) };
    let one: libc::c_int = 1;
    // SAFETY: the option values are valid for the lengths given.
    let rc = unsafe {
        libc::setsockopt(
            fd.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_REUSEADDR,
            std::ptr::from_ref(&one).cast(),
            std::mem::size_of::<libc::c_int>() as u32,
        )
    };
    if rc < 0 {
        return Err(err("set SO_REUSEADDR"));
    }
    // SAFETY: as above; the name's bytes are valid for its length.
    let rc = unsafe {
        libc::setsockopt(
            fd.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_BINDTODEVICE,
            ifname.as_ptr().cast(),
            ifname.len() as u32,
        )
    };
    if rc < 0 {
        return Err(err("bind UDP socket to the device"));
    }
    let sin = |a: std::net::SocketAddrV4| libc::sockaddr_in {
        sin_family: libc::AF_INET as libc::sa_family_t,
        sin_port: a.port().to_be(),
        sin_addr: libc::in_addr {
            s_addr: u32::from(*a.ip()).to_be(),
        },
        sin_zero: [0; 8],
    };
    let local = sin(src);
    // SAFETY: `local` is a valid sockaddr_in of the size given.
    let rc = unsafe {
        libc::bind(
            fd.as_raw_fd(),
            std::ptr::from_ref(&local).cast(),
            std::mem::size_of::<libc::sockaddr_in>() as u32,
        )
    };
    if rc < 0 {
        return Err(err("bind UDP socket"));
    }
    let remote = sin(dst);
    // SAFETY: the buffer and address are valid for the lengths given.
    let n = unsafe {
        libc::sendto(
            fd.as_raw_fd(),
            payload.as_ptr().cast(),
            payload.len(),
            0,
            std::ptr::from_ref(&remote).cast(),
            std::mem::size_of::<libc::sockaddr_in>() as u32,
        )
    };
    if n < 0 {
        return Err(err("send UDP datagram"));
    }
    Ok(())
}
