//! TUN devices (`/dev/net/tun`, `TUNSETIFF`): the kernel cannot create them over rtnetlink (EOPNOTSUPP), so this
//! is the one device made with an ioctl. Three calls do not justify a crate; `tun-rs` would also bring its own
//! segmentation/coalescing code next to ours.
//!
//! A TUN device exists while a file descriptor is attached to it (it is not made persistent): when flanneld
//! exits, `flannel0` and its routes go with it, as upstream's.

use std::fs::{File, OpenOptions};
use std::os::fd::AsRawFd;
use std::os::unix::fs::OpenOptionsExt;

use crate::error::{Error, Result};

const IFF_TUN: libc::c_short = 0x0001;
const IFF_NO_PI: libc::c_short = 0x1000;
const IFF_VNET_HDR: libc::c_short = 0x4000;
const IFF_MULTI_QUEUE: libc::c_short = 0x0100;

// _IOW('T', 202, int) and _IOW('T', 208, unsigned int), from <linux/if_tun.h>.
const TUNSETIFF: libc::Ioctl = 0x400454ca;
const TUNSETOFFLOAD: libc::Ioctl = 0x400454d0;

fn io_err(op: String) -> Error {
    Error::Io {
        op,
        source: std::io::Error::last_os_error(),
    }
}

/// `TUN_F_*` offload flags for [`Tun::set_offload`].
pub mod offload {
    /// The reader can take packets with partial checksums.
    pub const CSUM: u32 = 0x01;
    /// TCP segmentation offload, IPv4.
    pub const TSO4: u32 = 0x02;
    /// TCP segmentation offload, IPv6.
    pub const TSO6: u32 = 0x04;
    /// UDP segmentation offload, IPv4 (kernel >= 6.2).
    pub const USO4: u32 = 0x20;
    /// UDP segmentation offload, IPv6 (kernel >= 6.2).
    pub const USO6: u32 = 0x40;
}

/// How to open a TUN device.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct TunOptions {
    /// Each packet is preceded by a `struct virtio_net_hdr` (needed for offloads).
    pub vnet_hdr: bool,
    /// The device has several queues, one file descriptor each.
    pub multi_queue: bool,
}

/// One queue (file descriptor) of a TUN device; the device goes away when the last queue is closed.
#[derive(Debug)]
pub struct Tun {
    file: File,
    name: String,
}

impl Tun {
    /// Creates (or attaches another queue to) TUN device `name` in the calling thread's network namespace.
    pub fn open(name: &str, opts: TunOptions) -> Result<Self> {
        if name.is_empty() || name.len() >= libc::IFNAMSIZ {
            return Err(Error::Conflict(format!(
                "TUN device name {name:?}: 1 to 15 bytes"
            )));
        }
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .custom_flags(libc::O_CLOEXEC)
            .open("/dev/net/tun")
            .map_err(|source| Error::Io {
                op: "open /dev/net/tun".into(),
                source,
            })?;
        // SAFETY: ifreq is plain old data; all-zero is a valid value.
        let mut req: libc::ifreq = unsafe { std::mem::zeroed() };
        for (d, s) in req.ifr_name.iter_mut().zip(name.bytes()) {
            *d = s as libc::c_char;
        }
        let mut flags = IFF_TUN | IFF_NO_PI;
        if opts.vnet_hdr {
            flags |= IFF_VNET_HDR;
        }
        if opts.multi_queue {
            flags |= IFF_MULTI_QUEUE;
        }
        req.ifr_ifru.ifru_flags = flags;
        // SAFETY: the fd is a freshly opened /dev/net/tun and req a valid ifreq that outlives the call.
        if unsafe { libc::ioctl(file.as_raw_fd(), TUNSETIFF, &req as *const libc::ifreq) } < 0 {
            return Err(io_err(format!("TUNSETIFF {name}")));
        }
        Ok(Self {
            file,
            name: name.to_string(),
        })
    }

    /// Enables the given `TUN_F_*` offloads; `Err` when the kernel lacks one (the caller falls back).
    pub fn set_offload(&self, flags: u32) -> Result<()> {
        // SAFETY: TUNSETOFFLOAD takes the flags by value.
        if unsafe { libc::ioctl(self.file.as_raw_fd(), TUNSETOFFLOAD, flags as libc::c_ulong) } < 0
        {
            return Err(io_err(format!("TUNSETOFFLOAD {flags:#x} on {}", self.name)));
        }
        Ok(())
    }

    /// The device name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The queue's file: `read` returns one packet, `write` sends one.
    pub fn file(&self) -> &File {
        &self.file
    }
}
