//! Network namespaces: open them by path and run work inside one without moving any other thread.

use crate::error::{Error, Result};
use nix::sched::{setns, CloneFlags};
use std::fs::File;
use std::os::fd::{AsFd, AsRawFd, RawFd};
use std::path::{Path, PathBuf};

/// An open network namespace (a handle on its nsfs file).
#[derive(Debug)]
pub struct Netns {
    file: File,
    path: PathBuf,
}

impl Netns {
    /// Opens the namespace at `path` (for example `/run/netns/x` or `/proc/PID/ns/net`).
    pub fn open(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref();
        let file = File::open(path).map_err(|e| {
            if e.kind() == std::io::ErrorKind::NotFound {
                Error::NotFound(format!("network namespace {}", path.display()))
            } else {
                Error::io(format!("open network namespace {}", path.display()), e)
            }
        })?;
        let ns = Self {
            file,
            path: path.to_path_buf(),
        };
        // A regular file at that path would make setns fail later with a confusing EINVAL; check it now.
        let st = nix::sys::statfs::fstatfs(ns.file.as_fd())
            .map_err(|e| Error::io(format!("statfs {}", path.display()), e.into()))?;
        if st.filesystem_type() != nix::sys::statfs::NSFS_MAGIC
            && st.filesystem_type() != nix::sys::statfs::PROC_SUPER_MAGIC
        {
            return Err(Error::Conflict(format!(
                "{} is not a network namespace",
                path.display()
            )));
        }
        Ok(ns)
    }

    /// The namespace of the calling thread.
    pub fn current() -> Result<Self> {
        Self::open("/proc/thread-self/ns/net")
    }

    /// The path it was opened from.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The raw descriptor (for `IFLA_NET_NS_FD`).
    pub fn raw_fd(&self) -> RawFd {
        self.file.as_raw_fd()
    }

    /// Moves the calling thread into this namespace.
    pub fn enter(&self) -> Result<()> {
        setns(self.file.as_fd(), CloneFlags::CLONE_NEWNET)
            .map_err(|e| Error::io(format!("setns into {}", self.path.display()), e.into()))
    }

    /// Runs `f` on a short-lived thread that lives in this namespace, so no thread of the caller ever changes
    /// namespace (safe in multithreaded programs). Children spawned by `f` start in this namespace too.
    pub fn run<T, F>(&self, f: F) -> Result<T>
    where
        T: Send,
        F: FnOnce() -> T + Send,
    {
        std::thread::scope(|s| {
            s.spawn(|| {
                self.enter()?;
                Ok(f())
            })
            .join()
            .map_err(|_| Error::Conflict(format!("thread in {} panicked", self.path.display())))?
        })
    }
}
