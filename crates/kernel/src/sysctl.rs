//! Sysctls under `/proc/sys`, addressed by path segments so interface names with dots stay intact.
//!
//! `/proc/sys/net` belongs to the network namespace of the calling thread; to set one in another namespace run
//! these inside [`crate::netns::Netns::run`].

use crate::error::{Error, Result};
use std::path::PathBuf;

fn path(segments: &[&str]) -> PathBuf {
    let mut p = PathBuf::from("/proc/sys");
    for s in segments {
        p.push(s);
    }
    p
}

/// Reads a sysctl value, trimmed.
pub fn get(segments: &[&str]) -> Result<String> {
    let p = path(segments);
    std::fs::read_to_string(&p)
        .map(|s| s.trim().to_string())
        .map_err(|e| Error::io(format!("read sysctl {}", p.display()), e))
}

/// Writes a sysctl value.
pub fn set(segments: &[&str], value: &str) -> Result<()> {
    let p = path(segments);
    std::fs::write(&p, value)
        .map_err(|e| Error::io(format!("write {value} to sysctl {}", p.display()), e))
}

/// Writes a sysctl only if it differs (a write can be costlier than a read, and some writes have side effects).
pub fn ensure(segments: &[&str], value: &str) -> Result<()> {
    match get(segments) {
        Ok(v) if v == value => Ok(()),
        _ => set(segments, value),
    }
}

/// Enables IPv4 or IPv6 forwarding in the current namespace.
pub fn enable_forwarding(ipv6: bool) -> Result<()> {
    if ipv6 {
        ensure(&["net", "ipv6", "conf", "all", "forwarding"], "1")
    } else {
        ensure(&["net", "ipv4", "ip_forward"], "1")
    }
}
