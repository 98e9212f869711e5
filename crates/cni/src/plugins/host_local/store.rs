//! The on-disk store, byte-compatible with the reference plugin: `<dataDir>/<network>/` holds one file per
//! reserved address (named by the address, content `<containerID>\r\n<ifname>`, or just the ID in files from
//! old versions), `last_reserved_ip.<range set index>`, and `lock`, which every writer holds with `flock`.

use super::range::canonical_ip;
use super::Error;
use std::ffi::{CString, OsStr, OsString};
use std::fs::{self, DirBuilder, File, OpenOptions};
use std::io::{self, Read, Write};
use std::net::IpAddr;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{DirBuilderExt, FileExt, OpenOptionsExt};
use std::os::unix::io::{AsRawFd, FromRawFd};
use std::path::{Path, PathBuf};

/// Name of the lock file inside a network directory.
pub const LOCK_FILE: &str = "lock";
/// Prefix of the per-range-set round-robin cursor files.
pub const LAST_RESERVED_PREFIX: &str = "last_reserved_ip.";
/// Files bigger than this cannot be allocation records; they are never read whole.
const MAX_RECORD: usize = 64 * 1024;

fn io_err<'a>(op: &'static str, path: &'a Path) -> impl FnOnce(io::Error) -> Error + 'a {
    move |source| Error::Io {
        op,
        path: path.to_path_buf(),
        source,
    }
}

/// Who holds an address, as recorded in its file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Owner<'a> {
    /// `<containerID>\r\n<ifname>`.
    Attachment {
        /// Container ID.
        id: &'a str,
        /// Interface name.
        ifname: &'a str,
    },
    /// A container ID alone, written by plugin versions that predate the ifname.
    Legacy {
        /// Container ID (may be empty for a record whose writer died before writing it).
        id: &'a str,
    },
}

/// Parses a record; `None` if it is not text.
pub fn parse_owner(content: &[u8]) -> Option<Owner<'_>> {
    let s = std::str::from_utf8(content).ok()?.trim();
    Some(match s.split_once("\r\n") {
        Some((id, ifname)) => Owner::Attachment { id, ifname },
        None => Owner::Legacy { id: s },
    })
}

/// Parses a `last_reserved_ip.<n>` cursor; anything but an address (surrounding whitespace allowed) is none.
pub fn parse_last_reserved(content: &[u8]) -> Option<IpAddr> {
    std::str::from_utf8(content)
        .ok()?
        .trim()
        .parse()
        .ok()
        .map(canonical_ip)
}

/// The record content for an attachment.
pub fn record(id: &str, ifname: &str) -> Vec<u8> {
    format!("{}\r\n{}", id.trim(), ifname).into_bytes()
}

/// One file in the network directory that may be an allocation record.
#[derive(Debug)]
pub struct Entry {
    /// The address its name spells, if it spells one.
    pub ip: Option<IpAddr>,
    /// File name.
    pub name: OsString,
}

/// Reads a small file into `buf` (cleared first) with plain reads, avoiding the extra `statx`/`lseek` of
/// `read_to_end`. Returns false when the file vanished, cannot be read or is too big to be a record.
fn read_small(f: io::Result<File>, buf: &mut Vec<u8>) -> bool {
    buf.clear();
    let Ok(mut f) = f else {
        return false;
    };
    let mut chunk = [0u8; 512];
    loop {
        match f.read(&mut chunk) {
            Ok(0) => return true,
            Ok(n) => {
                buf.extend_from_slice(&chunk[..n]);
                if buf.len() > MAX_RECORD {
                    return false;
                }
                // A regular file reads short only at its end: no second read to see EOF. Scans read every
                // record, so this is a quarter of their syscalls.
                if n < chunk.len() {
                    return true;
                }
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(_) => return false,
        }
    }
}

/// A network directory with its lock held; the lock is released when this is dropped (the fd closes).
#[derive(Debug)]
pub struct Store {
    dir: PathBuf,
    /// The directory itself, so records are opened by name alone: resolving the full path for every file
    /// was a fifth of the cost of a scan.
    dirfd: File,
    _lock: File,
    /// An unnamed file already holding the record, linked into place on the next reservation.
    pending: Option<(Vec<u8>, File)>,
    /// Whether `O_TMPFILE` + `linkat` works here; some filesystems (NFS) lack it.
    tmpfile_ok: bool,
}

impl Store {
    /// Opens and locks the directory, creating it (0755) if needed.
    pub fn create(dir: &Path) -> Result<Self, Error> {
        match Self::lock(dir) {
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                DirBuilder::new()
                    .recursive(true)
                    .mode(0o755)
                    .create(dir)
                    .map_err(io_err("failed to create data directory", dir))?;
                Self::lock(dir).map_err(io_err("failed to lock", dir))
            }
            other => other.map_err(io_err("failed to lock", dir)),
        }
    }

    /// Opens and locks the directory if it exists (releasing needs nothing from a missing one).
    pub fn open_existing(dir: &Path) -> Result<Option<Self>, Error> {
        match Self::lock(dir) {
            Ok(s) => Ok(Some(s)),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(io_err("failed to lock", dir)(e)),
        }
    }

    fn lock(dir: &Path) -> io::Result<Self> {
        // Opening first (instead of mkdir-then-open) saves syscalls when the directory exists, the usual case.
        let dirfd = File::open(dir)?;
        // Read-only is enough for flock and works on a lock file another user created.
        let lock = OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_CREAT)
            .mode(0o600)
            .open(dir.join(LOCK_FILE))?;
        lock.lock()?;
        Ok(Self {
            dir: dir.to_path_buf(),
            dirfd,
            _lock: lock,
            pending: None,
            tmpfile_ok: true,
        })
    }

    /// Every regular file except `lock` and `last_reserved_ip.*`.
    pub fn entries(&self) -> Result<Vec<Entry>, Error> {
        let rd = fs::read_dir(&self.dir).map_err(io_err("failed to read", &self.dir))?;
        let mut out = Vec::new();
        for e in rd {
            let e = e.map_err(io_err("failed to read", &self.dir))?;
            let name = e.file_name();
            let Some(name) = name.to_str() else { continue };
            if name == LOCK_FILE || name.starts_with(LAST_RESERVED_PREFIX) {
                continue;
            }
            if e.file_type().map(|t| t.is_dir()).unwrap_or(true) {
                continue;
            }
            out.push(Entry {
                ip: name.parse::<IpAddr>().ok().map(canonical_ip),
                name: name.into(),
            });
        }
        Ok(out)
    }

    /// Reads a record into `buf`; false if it vanished, is unreadable or too big to be a record.
    pub fn read(&self, e: &Entry, buf: &mut Vec<u8>) -> bool {
        read_small(open_in(&self.dirfd, &e.name), buf)
    }

    /// Removes a record (already gone is fine).
    pub fn remove(&self, e: &Entry) -> Result<(), Error> {
        remove(&self.dir.join(&e.name))
    }

    fn ip_path(&self, ip: IpAddr) -> PathBuf {
        self.dir.join(ip.to_string())
    }

    /// Claims `ip` with `content` as its record; false if the file exists already. The record appears with its
    /// content complete (an unnamed `O_TMPFILE` linked into place), so a process killed at any point leaves
    /// either nothing or a full record; where that is unsupported it falls back to `O_CREAT|O_EXCL` + write.
    pub fn reserve(&mut self, ip: IpAddr, content: &[u8]) -> Result<bool, Error> {
        let target = self.ip_path(ip);
        if self.tmpfile_ok {
            if self.pending.as_ref().is_some_and(|(c, _)| c != content) {
                self.pending = None;
            }
            if self.pending.is_none() {
                match self.unnamed(content) {
                    Ok(f) => self.pending = Some((content.to_vec(), f)),
                    Err(_) => self.tmpfile_ok = false,
                }
            }
            if let Some((_, f)) = &self.pending {
                match link_fd(f, &target) {
                    Ok(()) => {
                        self.pending = None;
                        return Ok(true);
                    }
                    Err(e) if e.kind() == io::ErrorKind::AlreadyExists => return Ok(false),
                    // No /proc, or a filesystem that refuses the link: use the portable way from now on.
                    Err(_) => {
                        self.pending = None;
                        self.tmpfile_ok = false;
                    }
                }
            }
        }
        match OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&target)
        {
            Ok(mut f) => match f.write_all(content) {
                Ok(()) => Ok(true),
                Err(e) => {
                    let _ = fs::remove_file(&target);
                    Err(io_err("failed to write", &target)(e))
                }
            },
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => Ok(false),
            Err(e) => Err(io_err("failed to create", &target)(e)),
        }
    }

    fn unnamed(&self, content: &[u8]) -> io::Result<File> {
        let mut f = OpenOptions::new()
            .write(true)
            .mode(0o600)
            .custom_flags(libc::O_TMPFILE)
            .open(&self.dir)?;
        f.write_all(content)?;
        Ok(f)
    }

    /// Removes an address's record (already gone is fine).
    pub fn release_ip(&self, ip: IpAddr) -> Result<(), Error> {
        remove(&self.ip_path(ip))
    }

    /// The round-robin cursor of range set `set`; unreadable or garbled means none.
    pub fn last_reserved(&self, set: usize, buf: &mut Vec<u8>) -> Option<IpAddr> {
        let name = format!("{LAST_RESERVED_PREFIX}{set}");
        if !read_small(open_in(&self.dirfd, OsStr::new(&name)), buf) {
            return None;
        }
        parse_last_reserved(buf)
    }

    /// Records the round-robin cursor of range set `set`.
    pub fn set_last_reserved(&self, set: usize, ip: IpAddr) -> Result<(), Error> {
        let path = self.dir.join(format!("{LAST_RESERVED_PREFIX}{set}"));
        let text = ip.to_string();
        // Overwrite in place rather than O_TRUNC: ext4 flushes a file truncated to zero on close (its
        // replace-via-truncate heuristic), which measured 1-2 ms per ADD against a few microseconds here.
        // Shrinking to the exact length keeps the file parseable by the reference plugin, which does not trim.
        // A crash in between leaves a stale-but-valid or garbled cursor, both of which only cost round robin.
        let f = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o600)
            .open(&path)
            .map_err(io_err("failed to write", &path))?;
        f.write_all_at(text.as_bytes(), 0)
            .map_err(io_err("failed to write", &path))?;
        let len = text.len() as u64;
        if f.metadata().map_err(io_err("failed to stat", &path))?.len() > len {
            f.set_len(len).map_err(io_err("failed to write", &path))?;
        }
        Ok(())
    }
}

/// Removes a file; a missing one is not an error (another DEL got there first).
fn remove(path: &Path) -> Result<(), Error> {
    match fs::remove_file(path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(io_err("failed to remove", path)(e)),
    }
}

/// Opens `name` inside the directory `dir`, read-only.
fn open_in(dir: &File, name: &OsStr) -> io::Result<File> {
    let c = CString::new(name.as_bytes())?;
    // SAFETY: `c` is a valid NUL-terminated string and `dir` an open descriptor, both alive for the call.
    let fd = unsafe {
        libc::openat(
            dir.as_raw_fd(),
            c.as_ptr(),
            libc::O_RDONLY | libc::O_CLOEXEC,
        )
    };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `fd` was just returned by openat and nothing else owns it.
    Ok(unsafe { File::from_raw_fd(fd) })
}

/// Gives an unnamed file a name; fails with `AlreadyExists` if the name is taken, like `O_EXCL`.
fn link_fd(f: &File, target: &Path) -> io::Result<()> {
    // AT_EMPTY_PATH would need CAP_DAC_READ_SEARCH; the /proc link works for any owner of the fd.
    let src = CString::new(format!("/proc/self/fd/{}", f.as_raw_fd()))?;
    let dst = CString::new(target.as_os_str().as_bytes())?;
    // SAFETY: both arguments are valid NUL-terminated strings that outlive the call.
    let rc = unsafe {
        libc::linkat(
            libc::AT_FDCWD,
            src.as_ptr(),
            libc::AT_FDCWD,
            dst.as_ptr(),
            libc::AT_SYMLINK_FOLLOW,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn owners() {
        assert_eq!(
            parse_owner(b"ctr1\r\neth0"),
            Some(Owner::Attachment {
                id: "ctr1",
                ifname: "eth0"
            })
        );
        assert_eq!(
            parse_owner(b"  ctr1\r\neth0\n"),
            Some(Owner::Attachment {
                id: "ctr1",
                ifname: "eth0"
            })
        );
        assert_eq!(parse_owner(b"ctr1\n"), Some(Owner::Legacy { id: "ctr1" }));
        assert_eq!(parse_owner(b""), Some(Owner::Legacy { id: "" }));
        assert_eq!(parse_owner(&[0xff, 0xfe]), None);
        assert_eq!(record("ctr1", "eth0"), b"ctr1\r\neth0");
    }

    #[test]
    fn both_reserve_paths_write_the_same_record() {
        use std::os::unix::fs::PermissionsExt;
        let dir = std::env::temp_dir().join(format!("flannel-rs-hl-store-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        let net = dir.join("n");
        for tmpfile in [true, false] {
            let mut s = Store::create(&net).unwrap();
            s.tmpfile_ok = tmpfile;
            let ip: IpAddr = "10.0.0.5".parse().unwrap();
            assert!(s.reserve(ip, b"c1\r\neth0").unwrap());
            assert!(!s.reserve(ip, b"c2\r\neth0").unwrap());
            let p = net.join("10.0.0.5");
            assert_eq!(fs::read(&p).unwrap(), b"c1\r\neth0");
            assert_eq!(
                fs::metadata(&p).unwrap().permissions().mode() & 0o777,
                0o600
            );
            s.release_ip(ip).unwrap();
            s.release_ip(ip).unwrap();
            s.set_last_reserved(3, ip).unwrap();
            let mut buf = Vec::new();
            assert_eq!(s.last_reserved(3, &mut buf), Some(ip));
            assert_eq!(s.last_reserved(4, &mut buf), None);
        }
        let names: Vec<_> = fs::read_dir(&net)
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names.len(), 2, "{names:?}");
        let _ = fs::remove_dir_all(&dir);
    }
}
