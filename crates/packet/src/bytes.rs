//! Bounds-checked big-endian field access.
//!
//! Every read and write of a header field goes through these helpers so that a short or
//! hostile buffer yields `None` instead of a panic: the receive side parses datagrams from
//! the wire, and no input may crash the daemon.

#[inline]
pub(crate) fn u8_at(b: &[u8], off: usize) -> Option<u8> {
    b.get(off).copied()
}

#[inline]
pub(crate) fn be16(b: &[u8], off: usize) -> Option<u16> {
    match b.get(off..off.checked_add(2)?)? {
        &[x, y] => Some(u16::from_be_bytes([x, y])),
        _ => None,
    }
}

#[inline]
pub(crate) fn be32(b: &[u8], off: usize) -> Option<u32> {
    match b.get(off..off.checked_add(4)?)? {
        &[w, x, y, z] => Some(u32::from_be_bytes([w, x, y, z])),
        _ => None,
    }
}

#[inline]
pub(crate) fn put16(b: &mut [u8], off: usize, v: u16) -> Option<()> {
    b.get_mut(off..off.checked_add(2)?)?
        .copy_from_slice(&v.to_be_bytes());
    Some(())
}

#[inline]
pub(crate) fn put32(b: &mut [u8], off: usize, v: u32) -> Option<()> {
    b.get_mut(off..off.checked_add(4)?)?
        .copy_from_slice(&v.to_be_bytes());
    Some(())
}
