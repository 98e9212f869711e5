//! `struct virtio_net_hdr`, the 10-byte header a TUN opened with `IFF_VNET_HDR` puts before
//! every packet it reads and expects before every packet written to it.
//!
//! It is how the kernel hands us TSO super-packets (up to 64 KB with `gso_type` != NONE)
//! and checksum-offloaded packets (`F_NEEDS_CSUM`: the transport checksum field holds only
//! the pseudo-header sum), and how we hand it GRO-coalesced ones. Layout (no padding):
//!
//! | offset | field         | size |
//! |--------|---------------|------|
//! | 0      | `flags`       | u8   |
//! | 1      | `gso_type`    | u8   |
//! | 2      | `hdr_len`     | u16  |
//! | 4      | `gso_size`    | u16  |
//! | 6      | `csum_start`  | u16  |
//! | 8      | `csum_offset` | u16  |
//!
//! The u16 fields are in the device's byte order, which for a TUN is the host's unless
//! `TUNSETVNETBE`/`TUNSETVNETLE` say otherwise; on the little-endian hosts flannel runs on
//! (x86-64, arm64) that is little-endian, which is what this module reads and writes.
//! The 12-byte `virtio_net_hdr_mrg_rxbuf` (with `num_buffers`) is not used by TUN unless
//! `TUNSETVNETHDRSZ` asks for it.

use thiserror::Error;

pub const VIRTIO_NET_HDR_LEN: usize = 10;

/// `flags`: the checksum from `csum_start` to the end is partial and must be completed,
/// storing it at `csum_start + csum_offset`.
pub const F_NEEDS_CSUM: u8 = 1;
/// `flags`: the checksum has been verified (receive side only).
pub const F_DATA_VALID: u8 = 2;

pub const GSO_NONE: u8 = 0;
pub const GSO_TCPV4: u8 = 1;
/// UFO (IP fragmentation of a large UDP datagram): deprecated, not supported by [`crate::gso`].
pub const GSO_UDP: u8 = 3;
pub const GSO_TCPV6: u8 = 4;
/// USO: UDP segmentation (each segment a complete datagram), Linux 6.2+.
pub const GSO_UDP_L4: u8 = 5;
/// Flag bit of `gso_type`: the TCP super-packet carries CWR (ECN); only the first segment
/// may keep it.
pub const GSO_ECN: u8 = 0x80;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Error)]
pub enum VirtioError {
    #[error("buffer of {0} bytes is shorter than a virtio-net header")]
    Truncated(usize),
}

/// A decoded `virtio_net_hdr`. `Default` is the "plain packet" header: no offload, no GSO.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct VirtioNetHdr {
    pub flags: u8,
    pub gso_type: u8,
    /// Length of the headers up to and including the transport header (a hint: [`crate::gso`]
    /// recomputes it from the packet rather than trusting it).
    pub hdr_len: u16,
    /// Payload bytes per segment.
    pub gso_size: u16,
    pub csum_start: u16,
    pub csum_offset: u16,
}

/// Splits a TUN read into its virtio header and the packet after it. No field is
/// validated here: that is [`crate::gso::segment`]'s job, against the packet itself.
pub fn parse(buf: &[u8]) -> Result<(VirtioNetHdr, &[u8]), VirtioError> {
    let (h, rest) = match buf.split_first_chunk::<VIRTIO_NET_HDR_LEN>() {
        Some(x) => x,
        None => return Err(VirtioError::Truncated(buf.len())),
    };
    let [flags, gso_type, a, b, c, d, e, f, g, i] = *h;
    Ok((
        VirtioNetHdr {
            flags,
            gso_type,
            hdr_len: u16::from_le_bytes([a, b]),
            gso_size: u16::from_le_bytes([c, d]),
            csum_start: u16::from_le_bytes([e, f]),
            csum_offset: u16::from_le_bytes([g, i]),
        },
        rest,
    ))
}

impl VirtioNetHdr {
    /// Same as the free function [`parse`].
    pub fn parse(buf: &[u8]) -> Result<(VirtioNetHdr, &[u8]), VirtioError> {
        parse(buf)
    }

    /// Writes the header into the first 10 bytes of `out`, returning 10.
    pub fn write(&self, out: &mut [u8]) -> Result<usize, VirtioError> {
        let len = out.len();
        let dst = out
            .first_chunk_mut::<VIRTIO_NET_HDR_LEN>()
            .ok_or(VirtioError::Truncated(len))?;
        *dst = self.to_bytes();
        Ok(VIRTIO_NET_HDR_LEN)
    }

    pub fn to_bytes(&self) -> [u8; VIRTIO_NET_HDR_LEN] {
        let [a, b] = self.hdr_len.to_le_bytes();
        let [c, d] = self.gso_size.to_le_bytes();
        let [e, f] = self.csum_start.to_le_bytes();
        let [g, i] = self.csum_offset.to_le_bytes();
        [self.flags, self.gso_type, a, b, c, d, e, f, g, i]
    }

    /// `gso_type` without the ECN flag bit.
    pub fn gso_kind(&self) -> u8 {
        self.gso_type & !GSO_ECN
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn layout_is_little_endian() {
        let h = VirtioNetHdr {
            flags: F_NEEDS_CSUM,
            gso_type: GSO_TCPV4,
            hdr_len: 0x0102,
            gso_size: 1448,
            csum_start: 34,
            csum_offset: 16,
        };
        let mut b = [0u8; 12];
        assert_eq!(h.write(&mut b), Ok(10));
        assert_eq!(&b[..10], &[1, 1, 2, 1, 0xa8, 0x05, 34, 0, 16, 0]);
        let (back, rest) = parse(&b).unwrap();
        assert_eq!(back, h);
        assert_eq!(rest.len(), 2);
        assert_eq!(parse(&b[..9]), Err(VirtioError::Truncated(9)));
        assert_eq!(h.write(&mut b[..5]), Err(VirtioError::Truncated(5)));
    }

    proptest! {
        #[test]
        fn parse_never_panics_and_roundtrips(data in proptest::collection::vec(any::<u8>(), 0..30)) {
            if let Ok((h, rest)) = parse(&data) {
                prop_assert_eq!(&h.to_bytes()[..], &data[..10]);
                prop_assert_eq!(rest, &data[10..]);
            } else {
                prop_assert!(data.len() < 10);
            }
        }
    }
}
