//! Whether an executable is this very build of flannel-rs: the condition for running a delegate in-process.
//!
//! Every binary linking this crate carries [`MARKER`] in an ELF section of its own, [`SECTION`]: the crate version
//! and a build id hashing the sources and `Cargo.lock` (see `build.rs`). A delegate file whose section holds the
//! same bytes would, exec'd, run the code the caller already has; one with another marker (another version of
//! ours) or none (a distro's plugin, a wrapper script) is exec'd.
//!
//! The check reads the ELF header and the section header table only (a few hundred bytes with a handful of reads),
//! never the whole multi-megabyte file. Everything read is hostile input: any file on `CNI_PATH` can be anything,
//! so every offset and size is bounded and checked, and a malformed file is simply not ours.

use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::path::Path;

/// The section holding the marker (a name no toolchain uses, so no other input section is merged into it).
pub const SECTION: &str = ".flannel_rs_id";

const MARKER_STR: &str = concat!(
    "flannel-rs ",
    env!("CARGO_PKG_VERSION"),
    " build ",
    env!("FLANNEL_RS_BUILD_ID")
);

const fn to_array<const N: usize>(s: &str) -> [u8; N] {
    let b = s.as_bytes();
    let mut out = [0u8; N];
    let mut i = 0;
    while i < N {
        out[i] = b[i];
        i += 1;
    }
    out
}

/// This build's identity, in its own section. `#[used]` keeps it through LTO; [`marker`] reads it through
/// `black_box`, so a real reference to the section survives and the linker's section GC cannot drop it either.
#[used]
#[link_section = ".flannel_rs_id"]
static MARKER: [u8; MARKER_STR.len()] = to_array(MARKER_STR);

/// This build's marker bytes.
pub fn marker() -> &'static [u8] {
    std::hint::black_box(&MARKER[..])
}

/// Why a file's marker could not be read. Only tests look at the reason: for the caller every error means "not
/// ours, exec it".
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum IdentityError {
    /// Reading the file failed.
    #[error("read failed: {0}")]
    Io(String),
    /// The file is not an ELF file this parser reads, or its headers are inconsistent.
    #[error("not a readable ELF file: {0}")]
    Malformed(&'static str),
}

impl From<std::io::Error> for IdentityError {
    fn from(e: std::io::Error) -> Self {
        Self::Io(e.to_string())
    }
}

/// Whether the file at `path` carries this build's marker. Any error (unreadable, not ELF, malformed, no marker)
/// is `false`: exec'ing is always correct, running in-process only an optimisation.
pub fn is_this_build(path: &Path) -> bool {
    let Ok(mut f) = File::open(path) else {
        return false;
    };
    matches!(section(&mut f, SECTION, marker().len()), Ok(Some(s)) if s == marker())
}

/// Limits on what is read: far above any real executable's, far below anything costly.
const MAX_SECTIONS: u64 = 4096;
const MAX_SHSTRTAB: u64 = 1 << 20;

/// The contents of the section `name` of an ELF file, if it has one of at most `max` bytes (a larger one is read
/// as absent: it cannot be a marker of `max` bytes). ELF32 and ELF64, either byte order.
pub fn section<R: Read + Seek>(
    f: &mut R,
    name: &str,
    max: usize,
) -> Result<Option<Vec<u8>>, IdentityError> {
    let mut ident = [0u8; 16];
    read_at(f, 0, &mut ident)?;
    if ident[..4] != *b"\x7fELF" {
        return Err(IdentityError::Malformed("no ELF magic"));
    }
    let wide = match ident[4] {
        1 => false,
        2 => true,
        _ => return Err(IdentityError::Malformed("unknown ELF class")),
    };
    let le = match ident[5] {
        1 => true,
        2 => false,
        _ => return Err(IdentityError::Malformed("unknown byte order")),
    };
    let rd = Fields { wide, le };
    // The header fields after e_ident: e_shoff, e_shentsize, e_shnum, e_shstrndx.
    let mut hdr = [0u8; 64];
    let hdr_len = if wide { 64 } else { 52 };
    read_at(f, 0, &mut hdr[..hdr_len])?;
    let (shoff, rest) = if wide {
        (rd.u64(&hdr, 0x28)?, 0x3a)
    } else {
        (rd.u32(&hdr, 0x20)?, 0x2e)
    };
    let shentsize = rd.u16(&hdr, rest)?;
    let shnum = rd.u16(&hdr, rest + 2)?;
    let shstrndx = rd.u16(&hdr, rest + 4)?;
    let need = if wide { 64 } else { 40 };
    if shoff == 0 || shnum == 0 {
        return Ok(None);
    }
    if shentsize < need || shentsize > 2 * need || shnum > MAX_SECTIONS || shstrndx >= shnum {
        return Err(IdentityError::Malformed("bad section header table"));
    }
    let table_len = shentsize
        .checked_mul(shnum)
        .ok_or(IdentityError::Malformed("section header table too large"))?;
    let file_len = f.seek(SeekFrom::End(0))?;
    let table = read_vec(f, shoff, table_len, file_len)?;
    let entry = |i: u64| -> Result<Shdr, IdentityError> {
        let off =
            usize::try_from(i * shentsize).map_err(|_| IdentityError::Malformed("too large"))?;
        let e = table
            .get(off..)
            .ok_or(IdentityError::Malformed("section header out of range"))?;
        Ok(if wide {
            Shdr {
                name: rd.u32(e, 0)?,
                kind: rd.u32(e, 4)?,
                offset: rd.u64(e, 0x18)?,
                size: rd.u64(e, 0x20)?,
            }
        } else {
            Shdr {
                name: rd.u32(e, 0)?,
                kind: rd.u32(e, 4)?,
                offset: rd.u32(e, 0x10)?,
                size: rd.u32(e, 0x14)?,
            }
        })
    };
    let strtab = entry(shstrndx)?;
    if strtab.size > MAX_SHSTRTAB {
        return Err(IdentityError::Malformed("section name table too large"));
    }
    let names = read_vec(f, strtab.offset, strtab.size, file_len)?;
    for i in 0..shnum {
        let s = entry(i)?;
        let Some(at) = usize::try_from(s.name).ok().and_then(|n| names.get(n..)) else {
            continue;
        };
        let end = at.iter().position(|&b| b == 0).unwrap_or(at.len());
        // SHT_NOBITS (8) occupies no bytes in the file.
        if at[..end] != *name.as_bytes() || s.kind == 8 {
            continue;
        }
        if s.size > max as u64 {
            return Ok(None);
        }
        return read_vec(f, s.offset, s.size, file_len).map(Some);
    }
    Ok(None)
}

struct Shdr {
    name: u64,
    kind: u64,
    offset: u64,
    size: u64,
}

/// Reads fixed-width fields of the file's class and byte order, out of range being an error.
#[derive(Clone, Copy)]
struct Fields {
    wide: bool,
    le: bool,
}

impl Fields {
    fn bytes<const N: usize>(self, b: &[u8], at: usize) -> Result<[u8; N], IdentityError> {
        let s = b
            .get(at..at.saturating_add(N))
            .ok_or(IdentityError::Malformed("field out of range"))?;
        let mut out = [0u8; N];
        out.copy_from_slice(s);
        if !self.le {
            out.reverse();
        }
        Ok(out)
    }

    fn u16(self, b: &[u8], at: usize) -> Result<u64, IdentityError> {
        self.bytes::<2>(b, at)
            .map(|x| u64::from(u16::from_le_bytes(x)))
    }

    fn u32(self, b: &[u8], at: usize) -> Result<u64, IdentityError> {
        self.bytes::<4>(b, at)
            .map(|x| u64::from(u32::from_le_bytes(x)))
    }

    fn u64(self, b: &[u8], at: usize) -> Result<u64, IdentityError> {
        debug_assert!(self.wide);
        self.bytes::<8>(b, at).map(u64::from_le_bytes)
    }
}

/// Reads `len` bytes at `off`, checked against the file's length before anything is allocated.
fn read_vec<R: Read + Seek>(
    f: &mut R,
    off: u64,
    len: u64,
    file_len: u64,
) -> Result<Vec<u8>, IdentityError> {
    if off.checked_add(len).is_none_or(|end| end > file_len) {
        return Err(IdentityError::Malformed("beyond the end of the file"));
    }
    let mut buf =
        vec![0u8; usize::try_from(len).map_err(|_| IdentityError::Malformed("too large"))?];
    read_at(f, off, &mut buf)?;
    Ok(buf)
}

fn read_at<R: Read + Seek>(f: &mut R, off: u64, buf: &mut [u8]) -> Result<(), IdentityError> {
    f.seek(SeekFrom::Start(off))?;
    f.read_exact(buf)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::io::Cursor;

    /// A minimal ELF64 little-endian file: the header, then the sections `(name, data)` and a section name table,
    /// then the section header table (a null entry first, as the linker writes it).
    fn elf64(sections: &[(&str, &[u8])]) -> Vec<u8> {
        let mut out = vec![0u8; 64];
        out[..4].copy_from_slice(b"\x7fELF");
        out[4] = 2;
        out[5] = 1;
        out[6] = 1;
        let mut names = vec![0u8];
        let mut hdrs = vec![[0u8; 64]];
        let push = |out: &mut Vec<u8>, names: &mut Vec<u8>, name: &str, data: &[u8]| {
            let mut h = [0u8; 64];
            h[0..4].copy_from_slice(&(names.len() as u32).to_le_bytes());
            names.extend_from_slice(name.as_bytes());
            names.push(0);
            h[4..8].copy_from_slice(&1u32.to_le_bytes());
            h[0x18..0x20].copy_from_slice(&(out.len() as u64).to_le_bytes());
            h[0x20..0x28].copy_from_slice(&(data.len() as u64).to_le_bytes());
            out.extend_from_slice(data);
            h
        };
        for (n, d) in sections {
            hdrs.push(push(&mut out, &mut names, n, d));
        }
        let shstr_name = ".shstrtab";
        let mut all_names = names.clone();
        let mut h = [0u8; 64];
        h[0..4].copy_from_slice(&(all_names.len() as u32).to_le_bytes());
        all_names.extend_from_slice(shstr_name.as_bytes());
        all_names.push(0);
        h[4..8].copy_from_slice(&3u32.to_le_bytes());
        h[0x18..0x20].copy_from_slice(&(out.len() as u64).to_le_bytes());
        h[0x20..0x28].copy_from_slice(&(all_names.len() as u64).to_le_bytes());
        out.extend_from_slice(&all_names);
        hdrs.push(h);
        let shoff = out.len() as u64;
        for h in &hdrs {
            out.extend_from_slice(h);
        }
        out[0x28..0x30].copy_from_slice(&shoff.to_le_bytes());
        out[0x3a..0x3c].copy_from_slice(&64u16.to_le_bytes());
        out[0x3c..0x3e].copy_from_slice(&(hdrs.len() as u16).to_le_bytes());
        out[0x3e..0x40].copy_from_slice(&((hdrs.len() - 1) as u16).to_le_bytes());
        out
    }

    fn read(bytes: &[u8]) -> Result<Option<Vec<u8>>, IdentityError> {
        section(&mut Cursor::new(bytes), SECTION, marker().len())
    }

    fn temp_file(tag: &str, bytes: &[u8]) -> std::path::PathBuf {
        let p =
            std::env::temp_dir().join(format!("flannel-rs-identity-{}-{tag}", std::process::id()));
        std::fs::write(&p, bytes).unwrap();
        p
    }

    #[test]
    fn marker_names_version_and_build() {
        let m = std::str::from_utf8(marker()).unwrap();
        assert!(
            m.starts_with(&format!("flannel-rs {} build ", env!("CARGO_PKG_VERSION"))),
            "{m}"
        );
        assert_eq!(
            m.len(),
            "flannel-rs  build ".len() + env!("CARGO_PKG_VERSION").len() + 32
        );
    }

    /// The test executable links this crate, so it is this build: the marker really is in its own section.
    #[test]
    fn own_executable_is_this_build() {
        let me = std::env::current_exe().unwrap();
        assert!(
            is_this_build(&me),
            "{} has no {SECTION} with {:?}",
            me.display(),
            std::str::from_utf8(marker())
        );
    }

    #[test]
    fn same_marker_is_ours_another_is_not() {
        let ours = elf64(&[(".text", b"\x90\x90"), (SECTION, marker())]);
        assert_eq!(read(&ours).unwrap().as_deref(), Some(marker()));
        let p = temp_file("ours", &ours);
        assert!(is_this_build(&p));

        // Another version (or another build) of ours: same layout, another id.
        let mut other = marker().to_vec();
        let last = other.len() - 1;
        other[last] = if other[last] == b'0' { b'1' } else { b'0' };
        let theirs = elf64(&[(SECTION, &other)]);
        std::fs::write(&p, &theirs).unwrap();
        assert!(!is_this_build(&p));
        // A marker that only starts like ours.
        let mut longer = marker().to_vec();
        longer.push(b'x');
        std::fs::write(&p, elf64(&[(SECTION, &longer)])).unwrap();
        assert!(!is_this_build(&p));
        // The marker's bytes elsewhere in the file do not count: only the section does.
        std::fs::write(&p, elf64(&[(".rodata", marker())])).unwrap();
        assert!(!is_this_build(&p));
        // A script, an empty file, a missing file.
        std::fs::write(&p, b"#!/bin/sh\nexit 0\n").unwrap();
        assert!(!is_this_build(&p));
        std::fs::write(&p, b"").unwrap();
        assert!(!is_this_build(&p));
        std::fs::remove_file(&p).unwrap();
        assert!(!is_this_build(&p));
    }

    #[test]
    fn truncated_files_are_not_ours() {
        let ours = elf64(&[(".text", b"\x90\x90"), (SECTION, marker())]);
        for n in 0..ours.len() {
            assert!(read(&ours[..n]).is_err(), "truncated to {n} bytes");
        }
        // Big-endian and 32-bit files parse (as not carrying our marker).
        let mut be = ours.clone();
        be[5] = 2;
        assert!(read(&be).is_err() || read(&be).unwrap().is_none());
        let mut bad = ours.clone();
        bad[4] = 7;
        assert_eq!(
            read(&bad),
            Err(IdentityError::Malformed("unknown ELF class"))
        );
    }

    proptest! {
        /// Arbitrary bytes, and our own synthetic ELF file with any bytes overwritten: a section or an error,
        /// never a panic (nor an allocation beyond the limits).
        #[test]
        fn arbitrary_files_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..512)) {
            let _ = read(&bytes);
            let mut elf = b"\x7fELF".to_vec();
            elf.extend_from_slice(&bytes);
            let _ = read(&elf);
        }

        #[test]
        fn corrupted_elf_never_panics(edits in prop::collection::vec((any::<usize>(), any::<u8>()), 1..8),
                                      cut in any::<usize>()) {
            let mut elf = elf64(&[(".text", b"\x90\x90"), (SECTION, marker())]);
            for (i, b) in edits {
                let n = elf.len();
                elf[i % n] = b;
            }
            let n = elf.len();
            elf.truncate(n - cut % (n / 4));
            if let Ok(Some(s)) = read(&elf) {
                prop_assert!(s.len() <= marker().len());
            }
        }
    }
}
