//! The packet-processing core of the `udp` backend: pure functions over byte buffers, no
//! kernel and no I/O, so that every rule here is testable (and fuzzable) on its own.
//!
//! # Wire format
//!
//! Upstream flannel's udp backend, which we interoperate with: each inner IP packet read
//! from the TUN device `flannel0` is sent, unchanged, as the entire payload of one UDP
//! datagram to the peer node's port 8285. There is no encapsulation header — the inner
//! IPv4/IPv6 header itself tells the receiver what it got — so the receiver must treat every
//! datagram as untrusted bytes that merely claim to be an IP packet.
//!
//! ```text
//!  outer IP | outer UDP (dst 8285) | inner IP header | inner TCP/UDP/ICMP ... |
//!                                  ^---- the datagram payload, byte for byte ----^
//! ```
//!
//! With `IFF_VNET_HDR` on flannel0 every TUN read and write is preceded by a 10-byte
//! `virtio_net_hdr` ([`virtio`]) that never goes on the wire: on the send side it lets the
//! kernel hand us one 64 KB TSO super-packet, which [`gso`] cuts into wire-sized segments;
//! on the receive side [`gro`] merges the segments back before writing them to the TUN.
//!
//! # Modules, and why each check exists
//!
//! - [`ip`]: [`ip::inspect`] validates version, header length, IPv4 header checksum and
//!   total length against the buffer — the receive side's first line of defence, and the
//!   lengths everything after it slices by.
//! - [`ttl`]: flannel0 is a routed hop, so forwarded packets lose one TTL (a routing loop
//!   between nodes then dies out instead of melting the network); the IPv4 checksum is
//!   patched incrementally (RFC 1624).
//! - [`icmp`]: the errors a router owes its senders — unreachable, fragmentation needed /
//!   packet too big (what makes path MTU discovery work across the overlay), time exceeded —
//!   and never an error about an error (RFC 1122), lest two nodes ping-pong errors forever.
//! - [`virtio`]: the offload header's layout.
//! - [`gso`]: segmentation with every length, ID, sequence number, flag and checksum a NIC
//!   doing TSO would set, since the segments go on the wire as-is.
//! - [`gro`]: the kernel's TCP coalescing rules, with every merged segment's checksum
//!   verified first because the kernel trusts a merged packet's offloaded checksum.
//! - [`csum`]: the Internet checksum, summed over 32-bit words.
//!
//! Every function is total: hostile input yields an error or `None`, never a panic (all
//! buffer access is through `get`, lengths use checked arithmetic), and the property tests
//! and `fuzz/` targets hold it to that. The hot paths write into buffers the caller owns and
//! allocate nothing.

pub(crate) mod bytes;
pub mod csum;
pub mod gro;
pub mod gso;
pub mod icmp;
pub mod ip;
#[cfg(test)]
pub(crate) mod testutil;
pub mod ttl;
pub mod virtio;

pub use gro::Gro;
pub use gso::{complete_checksum, segment, GsoError};
pub use icmp::{build_v4, build_v6, V4Error, V6Error};
pub use ip::{inspect, Header, Malformed};
pub use ttl::{decrement_ttl, TtlError};
pub use virtio::{VirtioNetHdr, VIRTIO_NET_HDR_LEN};
