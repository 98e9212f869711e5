//! Network namespaces: open them by path and run work inside one without moving any other thread.

use crate::error::{Error, Result};
use nix::sched::{setns, CloneFlags};
use std::fs::File;
use std::os::fd::{AsFd, AsRawFd, RawFd};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

/// An open network namespace (a handle on its nsfs file).
#[derive(Debug)]
pub struct Netns {
    file: File,
    path: PathBuf,
}

impl Netns {
    /// Opens the namespace at `path` (for example `/run/netns/x` or `/proc/PID/ns/net`).
    ///
    /// Anything else is refused at once, without waiting and without side effects: the path is first checked by
    /// `statfs` (as the reference plugins do), so a device is never opened; the open itself is non-blocking, so
    /// a FIFO swapped in meanwhile cannot make it wait for a writer; the descriptor is checked again, and on
    /// kernels that can tell (4.11+) it must be a network namespace, not another kind.
    pub fn open(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref();
        let st = nix::sys::statfs::statfs(path).map_err(|e| {
            if e == nix::errno::Errno::ENOENT {
                Error::NotFound(format!("network namespace {}", path.display()))
            } else {
                Error::io(format!("statfs {}", path.display()), e.into())
            }
        })?;
        check_fs(&st, path)?;
        let file = std::fs::OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_NONBLOCK | libc::O_NOCTTY)
            .open(path)
            .map_err(|e| {
                if e.kind() == std::io::ErrorKind::NotFound {
                    Error::NotFound(format!("network namespace {}", path.display()))
                } else {
                    Error::io(format!("open network namespace {}", path.display()), e)
                }
            })?;
        let st = nix::sys::statfs::fstatfs(file.as_fd())
            .map_err(|e| Error::io(format!("statfs {}", path.display()), e.into()))?;
        check_fs(&st, path)?;
        // SAFETY: NS_GET_NSTYPE takes no argument and only reads the descriptor, which `file` keeps open.
        let kind = unsafe { libc::ioctl(file.as_raw_fd(), libc::NS_GET_NSTYPE) };
        if kind >= 0 && kind != libc::CLONE_NEWNET {
            return Err(Error::Conflict(format!(
                "{} is not a network namespace (it is a {} namespace)",
                path.display(),
                ns_kind(kind)
            )));
        }
        Ok(Self {
            file,
            path: path.to_path_buf(),
        })
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

/// Namespace files live on nsfs (on kernels before 3.19, on procfs).
fn check_fs(st: &nix::sys::statfs::Statfs, path: &Path) -> Result<()> {
    let t = st.filesystem_type();
    if t == nix::sys::statfs::NSFS_MAGIC || t == nix::sys::statfs::PROC_SUPER_MAGIC {
        return Ok(());
    }
    Err(Error::Conflict(format!(
        "{} is not a network namespace (unknown filesystem magic {:#x})",
        path.display(),
        t.0
    )))
}

fn ns_kind(clone_flag: i32) -> &'static str {
    match clone_flag {
        libc::CLONE_NEWNS => "mount",
        libc::CLONE_NEWUTS => "uts",
        libc::CLONE_NEWIPC => "ipc",
        libc::CLONE_NEWUSER => "user",
        libc::CLONE_NEWPID => "pid",
        libc::CLONE_NEWCGROUP => "cgroup",
        libc::CLONE_NEWTIME => "time",
        _ => "different",
    }
}

/// Where named namespaces live (as with `ip netns`).
pub const NETNS_RUN_DIR: &str = "/run/netns";

/// Makes `/run/netns` a shared mount point, as iproute2 does, so namespaces mounted there are visible to other
/// mount namespaces (`ip netns exec` runs in its own).
fn prepare_run_dir() -> Result<()> {
    use nix::mount::{mount, MsFlags};
    std::fs::create_dir_all(NETNS_RUN_DIR)
        .map_err(|e| Error::io(format!("create {NETNS_RUN_DIR}"), e))?;
    let shared = || {
        mount(
            None::<&str>,
            NETNS_RUN_DIR,
            None::<&str>,
            MsFlags::MS_SHARED | MsFlags::MS_REC,
            None::<&str>,
        )
    };
    if shared().is_ok() {
        return Ok(());
    }
    // Not a mount point yet: bind it onto itself first.
    mount(
        Some(NETNS_RUN_DIR),
        NETNS_RUN_DIR,
        None::<&str>,
        MsFlags::MS_BIND | MsFlags::MS_REC,
        None::<&str>,
    )
    .map_err(|e| Error::io(format!("bind-mount {NETNS_RUN_DIR}"), e.into()))?;
    shared().map_err(|e| Error::io(format!("make {NETNS_RUN_DIR} shared"), e.into()))
}

/// Creates a named network namespace `/run/netns/<name>` (like `ip netns add`); fails if it exists.
pub fn create_named(name: &str) -> Result<Netns> {
    use nix::mount::{mount, MsFlags};
    if name.is_empty() || name.contains('/') || name == "." || name == ".." {
        return Err(Error::Conflict(format!(
            "invalid network namespace name {name:?}"
        )));
    }
    prepare_run_dir()?;
    let path = PathBuf::from(NETNS_RUN_DIR).join(name);
    std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(&path)
        .map_err(|e| Error::io(format!("create {}", path.display()), e))?;
    let target = path.clone();
    let made = std::thread::spawn(move || -> Result<()> {
        nix::sched::unshare(CloneFlags::CLONE_NEWNET)
            .map_err(|e| Error::io("unshare network namespace", e.into()))?;
        mount(
            Some("/proc/thread-self/ns/net"),
            &target,
            None::<&str>,
            MsFlags::MS_BIND,
            None::<&str>,
        )
        .map_err(|e| {
            Error::io(
                format!("bind-mount namespace onto {}", target.display()),
                e.into(),
            )
        })
    })
    .join()
    .map_err(|_| Error::Conflict("namespace creation thread panicked".into()))?;
    if let Err(e) = made {
        let _ = std::fs::remove_file(&path);
        return Err(e);
    }
    Netns::open(&path)
}

/// Deletes a named network namespace (like `ip netns del`); a missing one is not an error. The namespace itself
/// lives on while processes are still in it.
pub fn delete_named(name: &str) -> Result<()> {
    let path = PathBuf::from(NETNS_RUN_DIR).join(name);
    if !path.exists() {
        return Ok(());
    }
    // EINVAL: not mounted (a leftover file from an interrupted create).
    if let Err(e) = nix::mount::umount2(&path, nix::mount::MntFlags::MNT_DETACH) {
        if e != nix::errno::Errno::EINVAL {
            return Err(Error::io(format!("unmount {}", path.display()), e.into()));
        }
    }
    match std::fs::remove_file(&path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(Error::io(format!("remove {}", path.display()), e)),
    }
}

/// Names of the namespaces under `/run/netns`.
pub fn list_named() -> Vec<String> {
    std::fs::read_dir(NETNS_RUN_DIR)
        .map(|rd| {
            rd.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default()
}
