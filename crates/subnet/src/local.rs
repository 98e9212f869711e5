//! The embedded lease store: the [`Registry`] interface kept in a directory that several
//! `flanneld` processes on one machine share (the lab runs one daemon per network namespace,
//! all on the same filesystem).
//!
//! # Layout
//!
//! ```text
//! <dir>/config   the network config JSON (written with `set_network_config`)
//! <dir>/events   the change log: the only record of the leases
//! <dir>/lock     flock(2)ed exclusively around every change
//! ```
//!
//! The change log is the store. Its first line is a header
//! `{"format":"flannel-rs local store v1","compacted":C}`; every other line is one record
//! `{"rev":R,"op":"put"|"del","key":"10.244.3.0-24","value":"<lease JSON>","expires":<unix ms>}`
//! (`del` records carry the value that was deleted, and `"expired":true` when a TTL ran out).
//! The lease set is the replay of the log, so a list and the watch feed can never disagree:
//! a change exists exactly when its line does, and the store revision is the last record's.
//! One `write(2)` of whole lines under the lock is the commit point; a torn line left by a
//! crashed writer has no newline, is never read, and is cut off by the next writer.
//!
//! Readers take no lock: the log only grows between compactions, and a compaction replaces
//! it with `rename(2)`, which readers notice by its new inode. Each handle keeps its parsed
//! state and reads only the bytes appended since its last look, so a list costs a `stat`
//! and a short read.
//!
//! A compaction (when the log holds more than [`LocalOptions::max_events`] records) rewrites
//! the log as: header with the compaction revision `C`, the lease set at `C` (records
//! marked `"base":true`, at their own revisions), then the newest
//! [`LocalOptions::keep_events`] records. Watching from before `C` is
//! [`RegistryError::Compacted`], so the caller lists again.
//!
//! # Expiry
//!
//! A lease with a TTL carries its absolute expiry. Reads treat an expired lease as absent at
//! once. The next writer (any process) first appends a `del` record for every expired lease,
//! so watchers everywhere see a `Removed`; and every watch stream wakes itself when the
//! earliest lease it knows of expires and takes the lock to do that, so expirations are
//! reported even when nobody writes (as etcd reports them without a client write).
//!
//! # Watches
//!
//! A watch follows the log with `inotify` on the directory (through `nix`, already a
//! dependency of the workspace), re-checking every 2 s in case a notification was lost; where
//! inotify is unavailable it polls every 100 ms. Changes reach watchers in other processes in
//! well under a millisecond.

use std::collections::BTreeMap;
use std::fs::{self, File, OpenOptions, TryLockError};
use std::io::{self, Write};
use std::os::fd::{AsFd, AsRawFd, RawFd};
use std::os::unix::fs::{FileExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use futures::StreamExt;
use nix::errno::Errno;
use nix::sys::inotify::{AddWatchFlags, InitFlags, Inotify};
use serde::{Deserialize, Serialize};
use tokio::io::unix::AsyncFd;
use tokio::io::Interest;
use tracing::{debug, info, warn};

use crate::backoff::Backoff;
use crate::lease::{Expiration, Lease, LeaseAttrs, SubnetKey};
use crate::registry::{Event, Registry, RegistryError, WatchBatch, WatchStream};

/// The network config file in the store directory.
pub const CONFIG_FILE: &str = "config";
/// The change log in the store directory.
pub const LOG_FILE: &str = "events";
/// The lock file in the store directory.
pub const LOCK_FILE: &str = "lock";
/// The error text for a missing config (contains upstream's "config not found").
pub const CONFIG_NOT_FOUND: &str = "flannel config not found in local store";

const FORMAT: &str = "flannel-rs local store v1";
/// Re-check interval of a watch that has inotify (in case a notification was lost).
const SAFETY_TICK: Duration = Duration::from_secs(2);
/// Poll interval of a watch without inotify.
const POLL_TICK: Duration = Duration::from_millis(100);
/// A log larger than this is not read (the store keeps it far smaller by compaction).
const MAX_LOG_BYTES: u64 = 256 << 20;

/// Tuning of the local store; the defaults suit a lab and small clusters alike.
#[derive(Debug, Clone)]
pub struct LocalOptions {
    /// Compact when the log holds more change records than this.
    pub max_events: usize,
    /// Change records kept by an automatic compaction (how far back watchers can resume).
    pub keep_events: usize,
    /// Longest wait for the lock before a change fails with `Unavailable`.
    pub lock_timeout: Duration,
    /// `fdatasync` the log after every change (durability across a machine crash).
    pub fsync: bool,
    /// Wake watches with inotify; when false (or inotify is unavailable) they poll the log
    /// every 100 ms.
    pub inotify: bool,
}

impl Default for LocalOptions {
    fn default() -> Self {
        LocalOptions {
            max_events: 4096,
            keep_events: 1024,
            lock_timeout: Duration::from_secs(10),
            fsync: true,
            inotify: true,
        }
    }
}

/// Maps an I/O error on `path` to a store error that names the path.
fn io_error(what: &str, path: &Path, e: io::Error) -> RegistryError {
    let msg = format!("local store: cannot {what} {}: {e}", path.display());
    match e.kind() {
        io::ErrorKind::PermissionDenied | io::ErrorKind::ReadOnlyFilesystem => {
            RegistryError::Denied(msg)
        }
        io::ErrorKind::NotFound => RegistryError::Unavailable(msg),
        _ => RegistryError::Other(msg),
    }
}

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

fn expiration(expires: Option<i64>) -> Expiration {
    match expires {
        None => Expiration::Never,
        Some(ms) => {
            Expiration::At(UNIX_EPOCH + Duration::from_millis(u64::try_from(ms).unwrap_or(0)))
        }
    }
}

fn ttl_ms(ttl: Duration) -> i64 {
    i64::try_from(ttl.as_millis()).unwrap_or(i64::MAX).max(1)
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
enum Op {
    Put,
    Del,
}

/// One line of the log after the header.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Record {
    rev: i64,
    op: Op,
    key: String,
    /// `put`: the new value; `del`: the value that was deleted.
    #[serde(default)]
    value: String,
    /// `put` with a TTL: expiry in Unix milliseconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    expires: Option<i64>,
    /// `del` because the TTL ran out.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    expired: bool,
    /// Part of the lease set at the compaction revision, not a change.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    base: bool,
    /// `put` of a key that already existed: the revision it was created at (absent: created by this record).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    created: Option<i64>,
}

/// The first line of the log.
#[derive(Debug, Serialize, Deserialize)]
struct Header {
    format: String,
    compacted: i64,
}

/// A stored value.
#[derive(Debug, Clone, PartialEq)]
struct Entry {
    value: String,
    expires: Option<i64>,
    rev: i64,
    /// Revision the key was created at.
    created: i64,
}

impl Entry {
    fn expired(&self, now: i64) -> bool {
        self.expires.is_some_and(|t| t <= now)
    }
}

/// What a refresh read.
struct Refresh {
    /// The log file was replaced (compacted or recreated): state rebuilt from scratch.
    replaced: bool,
    /// Records read (base records included).
    records: Vec<Record>,
}

/// The parsed state of the log as far as read.
#[derive(Debug)]
struct LogView {
    path: PathBuf,
    file: Option<File>,
    id: (u64, u64),
    /// Bytes consumed: always just after a newline.
    offset: u64,
    compacted: i64,
    revision: i64,
    /// Change records in the current file.
    events: usize,
    live: BTreeMap<String, Entry>,
}

impl LogView {
    fn new(path: PathBuf) -> Self {
        LogView {
            path,
            file: None,
            id: (0, 0),
            offset: 0,
            compacted: 0,
            revision: 0,
            events: 0,
            live: BTreeMap::new(),
        }
    }

    /// Reads whatever was appended since the last look (all of it after a replacement).
    fn refresh(&mut self) -> Result<Refresh, RegistryError> {
        let meta = fs::metadata(&self.path).map_err(|e| io_error("read the log", &self.path, e))?;
        let mut replaced = false;
        if self.file.is_none() || self.id != (meta.dev(), meta.ino()) || meta.len() < self.offset {
            let f = File::open(&self.path).map_err(|e| io_error("open", &self.path, e))?;
            let m = f.metadata().map_err(|e| io_error("stat", &self.path, e))?;
            *self = LogView::new(std::mem::take(&mut self.path));
            self.id = (m.dev(), m.ino());
            self.file = Some(f);
            replaced = true;
        }
        let mut records = Vec::new();
        let Some(file) = &self.file else {
            return Ok(Refresh { replaced, records });
        };
        let len = file
            .metadata()
            .map_err(|e| io_error("stat", &self.path, e))?
            .len();
        if len <= self.offset {
            return Ok(Refresh { replaced, records });
        }
        if len - self.offset > MAX_LOG_BYTES {
            return Err(RegistryError::Other(format!(
                "local store: {} is {len} bytes, too large to be a lease log",
                self.path.display()
            )));
        }
        let mut buf = vec![0u8; usize::try_from(len - self.offset).unwrap_or(0)];
        file.read_exact_at(&mut buf, self.offset)
            .map_err(|e| io_error("read", &self.path, e))?;
        // Only whole lines: a line without its newline is being written or was torn.
        let Some(end) = buf.iter().rposition(|&b| b == b'\n') else {
            return Ok(Refresh { replaced, records });
        };
        let mut at = self.offset;
        for line in buf[..end].split(|&b| b == b'\n') {
            let line_at = at;
            at += line.len() as u64 + 1;
            if line.iter().all(u8::is_ascii_whitespace) {
                continue;
            }
            if line_at == 0 {
                if let Ok(h) = serde_json::from_slice::<Header>(line) {
                    if h.format != FORMAT {
                        warn!(path = %self.path.display(), format = %h.format, "unknown local store format; reading it as {FORMAT}");
                    }
                    self.compacted = h.compacted.max(0);
                    self.revision = self.revision.max(self.compacted);
                    continue;
                }
                warn!(path = %self.path.display(), "local store log has no header; assuming no compaction");
            }
            match serde_json::from_slice::<Record>(line) {
                Ok(r) => {
                    if self.apply(&r) {
                        records.push(r);
                    }
                }
                Err(e) => warn!(
                    path = %self.path.display(),
                    offset = line_at,
                    error = %e,
                    "skipping corrupt line in local store log"
                ),
            }
        }
        self.offset += end as u64 + 1;
        Ok(Refresh { replaced, records })
    }

    /// Applies one record; false (after a warning) if it cannot be part of the history.
    fn apply(&mut self, r: &Record) -> bool {
        if r.base {
            if r.op != Op::Put || r.rev > self.compacted {
                warn!(path = %self.path.display(), rev = r.rev, key = %r.key, "skipping invalid base record in local store log");
                return false;
            }
        } else {
            if r.rev <= self.revision {
                warn!(path = %self.path.display(), rev = r.rev, after = self.revision, key = %r.key,
                    "skipping out-of-order record in local store log");
                return false;
            }
            self.revision = r.rev;
            self.events += 1;
        }
        match r.op {
            Op::Put => {
                self.live.insert(
                    r.key.clone(),
                    Entry {
                        value: r.value.clone(),
                        expires: r.expires,
                        rev: r.rev,
                        created: r.created.unwrap_or(r.rev),
                    },
                );
            }
            Op::Del => {
                self.live.remove(&r.key);
            }
        }
        true
    }

    /// The entry under `key` unless absent or expired.
    fn current(&self, key: &str, now: i64) -> Option<&Entry> {
        self.live.get(key).filter(|e| !e.expired(now))
    }

    /// Readable, unexpired leases (malformed ones logged and left out).
    fn leases(&self, now: i64) -> Vec<Lease> {
        self.live
            .iter()
            .filter(|(_, e)| !e.expired(now))
            .filter_map(|(k, e)| match lease_of(k, e) {
                Ok(l) => Some(l),
                Err(err) => {
                    warn!(error = %err, "ignoring bad subnet entry");
                    None
                }
            })
            .collect()
    }

    /// When the earliest lease expires, in Unix milliseconds.
    fn next_expiry(&self) -> Option<i64> {
        self.live.values().filter_map(|e| e.expires).min()
    }
}

fn lease_of(key: &str, e: &Entry) -> Result<Lease, crate::lease::LeaseError> {
    Lease::from_stored(key, e.value.as_bytes(), expiration(e.expires), e.rev)
        .map(|l| l.with_created(e.created))
}

/// Records of one change, numbered from the store revision on.
struct Batch {
    next: i64,
    records: Vec<Record>,
}

impl Batch {
    /// `created`: the revision the key was created at when it exists (unexpired) already.
    fn put(&mut self, key: &str, value: String, expires: Option<i64>, created: Option<i64>) -> i64 {
        self.push(Record {
            rev: 0,
            op: Op::Put,
            key: key.to_string(),
            value,
            expires,
            expired: false,
            base: false,
            created,
        })
    }

    fn del(&mut self, key: &str, prev: String, expired: bool) -> i64 {
        self.push(Record {
            rev: 0,
            op: Op::Del,
            key: key.to_string(),
            value: prev,
            expires: None,
            expired,
            base: false,
            created: None,
        })
    }

    fn push(&mut self, mut r: Record) -> i64 {
        let rev = self.next;
        r.rev = rev;
        self.next += 1;
        self.records.push(r);
        rev
    }
}

/// One record as a watch event; `None` (after a warning) when the key is not a subnet key.
fn to_event(r: &Record) -> Option<Event> {
    let Ok(key) = r.key.parse::<SubnetKey>() else {
        warn!(key = %r.key, "ignoring local store change: not a subnet key");
        return None;
    };
    Some(match r.op {
        Op::Put => match LeaseAttrs::from_json(&r.key, r.value.as_bytes()) {
            Ok(attrs) => Event::Added(
                Lease::new(key, attrs, expiration(r.expires), r.rev)
                    .with_created(r.created.unwrap_or(r.rev)),
            ),
            Err(e) => {
                // A fresh list leaves the key out too: report it gone so both views agree.
                warn!(error = %e, "malformed lease value written; treating the lease as removed");
                Event::Unreadable {
                    key,
                    revision: r.rev,
                    reason: e.to_string(),
                }
            }
        },
        Op::Del => Event::Removed(Lease::new(
            key,
            LeaseAttrs::from_json(&r.key, r.value.as_bytes()).unwrap_or_default(),
            Expiration::Never,
            r.rev,
        )),
    })
}

fn write_lines(buf: &mut Vec<u8>, value: &impl Serialize) -> Result<(), RegistryError> {
    serde_json::to_writer(&mut *buf, value)
        .map_err(|e| RegistryError::Other(format!("local store: cannot encode a record: {e}")))?;
    buf.push(b'\n');
    Ok(())
}

/// Writes `data` to `path` atomically: a temporary file in the same directory, synced,
/// renamed over `path`, and the directory synced.
fn write_atomic(path: &Path, tmp: &Path, data: &[u8]) -> Result<(), RegistryError> {
    let write = || -> io::Result<()> {
        let mut f = File::create(tmp)?;
        f.write_all(data)?;
        f.sync_all()?;
        fs::rename(tmp, path)
    };
    if let Err(e) = write() {
        let _ = fs::remove_file(tmp);
        return Err(io_error("write", path, e));
    }
    if let Some(dir) = path.parent() {
        if let Err(e) = File::open(dir).and_then(|d| d.sync_all()) {
            debug!(dir = %dir.display(), error = %e, "cannot sync the store directory");
        }
    }
    Ok(())
}

struct Inner {
    dir: PathBuf,
    config_path: PathBuf,
    log_path: PathBuf,
    lock_path: PathBuf,
    opts: LocalOptions,
    view: Mutex<LogView>,
}

impl Inner {
    fn view(&self) -> MutexGuard<'_, LogView> {
        // A panic while holding the view leaves it at worst partly updated; the next
        // refresh re-reads from the file, so the poison carries no meaning here.
        self.view.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Takes the store lock (bounded wait); released when the file is dropped.
    fn lock(&self) -> Result<File, RegistryError> {
        let f = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&self.lock_path)
            .map_err(|e| io_error("open the lock file", &self.lock_path, e))?;
        let deadline = Instant::now() + self.opts.lock_timeout;
        let mut pause = Duration::from_micros(200);
        loop {
            match f.try_lock() {
                Ok(()) => return Ok(f),
                Err(TryLockError::WouldBlock) => {
                    if Instant::now() >= deadline {
                        return Err(RegistryError::Unavailable(format!(
                            "local store: {} is locked by another process for over {:?}",
                            self.lock_path.display(),
                            self.opts.lock_timeout
                        )));
                    }
                    std::thread::sleep(pause);
                    pause = (pause * 2).min(Duration::from_millis(10));
                }
                Err(TryLockError::Error(e)) => {
                    return Err(io_error("lock", &self.lock_path, e));
                }
            }
        }
    }

    /// Creates an empty log (with the lock held).
    fn create_log(&self, compacted: i64) -> Result<(), RegistryError> {
        let mut buf = Vec::new();
        write_lines(
            &mut buf,
            &Header {
                format: FORMAT.into(),
                compacted,
            },
        )?;
        write_atomic(&self.log_path, &self.dir.join(".events.tmp"), &buf)
    }

    fn ensure_log(&self) -> Result<(), RegistryError> {
        match fs::symlink_metadata(&self.log_path) {
            Ok(_) => Ok(()),
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                // Only inside an existing store directory: a directory that went away is an
                // outage, not a new store.
                fs::metadata(&self.dir).map_err(|e| io_error("open", &self.dir, e))?;
                warn!(path = %self.log_path.display(), "local store log missing; starting an empty one");
                self.create_log(0)
            }
            Err(e) => Err(io_error("stat", &self.log_path, e)),
        }
    }

    /// Runs one change under the lock: brings the view up to date, records the expiry of
    /// every lease past its TTL, lets `f` add its records (it sees expired leases as
    /// absent), appends them all in one write, and compacts when the log is long.
    fn mutate<T>(
        &self,
        what: &str,
        f: impl FnOnce(&LogView, i64, &mut Batch) -> T,
    ) -> Result<(T, i64), RegistryError> {
        let _lock = self.lock()?;
        self.ensure_log()?;
        let mut view = self.view();
        view.refresh()?;
        self.cut_torn_tail(&view)?;
        let now = now_ms();
        let mut batch = Batch {
            next: view.revision + 1,
            records: Vec::new(),
        };
        for (k, e) in &view.live {
            if e.expired(now) {
                debug!(subnet = %k, "lease expired");
                batch.del(k, e.value.clone(), true);
            }
        }
        let out = f(&view, now, &mut batch);
        if !batch.records.is_empty() {
            let mut buf = Vec::new();
            for r in &batch.records {
                write_lines(&mut buf, r)?;
            }
            let mut file = OpenOptions::new()
                .append(true)
                .open(&self.log_path)
                .map_err(|e| io_error("open", &self.log_path, e))?;
            file.write_all(&buf)
                .map_err(|e| io_error("append to", &self.log_path, e))?;
            if self.opts.fsync {
                file.sync_data()
                    .map_err(|e| io_error("sync", &self.log_path, e))?;
            }
            debug!(
                what,
                revision = batch.next - 1,
                records = batch.records.len(),
                "local store changed"
            );
        }
        view.refresh()?;
        if view.events > self.opts.max_events {
            self.compact_locked(&mut view, self.opts.keep_events)?;
        }
        Ok((out, view.revision))
    }

    /// Cuts off a line a crashed writer left without its newline (lock held).
    fn cut_torn_tail(&self, view: &LogView) -> Result<(), RegistryError> {
        let len = fs::metadata(&self.log_path)
            .map_err(|e| io_error("stat", &self.log_path, e))?
            .len();
        if len > view.offset {
            warn!(path = %self.log_path.display(), bytes = len - view.offset, "dropping a torn last line of the local store log");
            OpenOptions::new()
                .write(true)
                .open(&self.log_path)
                .and_then(|f| f.set_len(view.offset))
                .map_err(|e| io_error("truncate", &self.log_path, e))?;
        }
        Ok(())
    }

    /// Rewrites the log keeping the newest `keep` change records (lock held); returns the
    /// compaction revision.
    fn compact_locked(&self, view: &mut LogView, keep: usize) -> Result<i64, RegistryError> {
        let mut full = LogView::new(self.log_path.clone());
        let records = full.refresh()?.records;
        let (base, events): (Vec<Record>, Vec<Record>) = records.into_iter().partition(|r| r.base);
        let drop = events.len().saturating_sub(keep);
        if drop == 0 {
            return Ok(full.compacted);
        }
        let compacted = events[drop - 1].rev;
        let mut state = LogView::new(self.log_path.clone());
        state.compacted = compacted;
        for r in base.iter().chain(&events[..drop]) {
            state.apply(r);
        }
        let mut buf = Vec::new();
        write_lines(
            &mut buf,
            &Header {
                format: FORMAT.into(),
                compacted,
            },
        )?;
        for (k, e) in &state.live {
            write_lines(
                &mut buf,
                &Record {
                    rev: e.rev,
                    op: Op::Put,
                    key: k.clone(),
                    value: e.value.clone(),
                    expires: e.expires,
                    expired: false,
                    base: true,
                    created: (e.created != e.rev).then_some(e.created),
                },
            )?;
        }
        for r in &events[drop..] {
            write_lines(&mut buf, r)?;
        }
        write_atomic(&self.log_path, &self.dir.join(".events.tmp"), &buf)?;
        info!(path = %self.log_path.display(), compacted, kept = events.len() - drop, "compacted the local store log");
        view.refresh()?;
        Ok(compacted)
    }
}

/// The embedded lease store: a directory shared by the `flanneld` processes of one machine.
/// Handles are cheap to clone and share one parsed view of the log.
#[derive(Clone)]
pub struct LocalRegistry {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for LocalRegistry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LocalRegistry")
            .field("dir", &self.inner.dir)
            .field("opts", &self.inner.opts)
            .finish()
    }
}

impl LocalRegistry {
    /// Opens the store in `dir`, creating the directory, the lock file and an empty log
    /// if missing (the network config is written separately with
    /// [`LocalRegistry::set_network_config`]).
    pub fn open(dir: impl AsRef<Path>) -> Result<Self, RegistryError> {
        Self::open_with(dir, LocalOptions::default())
    }

    /// [`LocalRegistry::open`] with explicit options.
    pub fn open_with(dir: impl AsRef<Path>, mut opts: LocalOptions) -> Result<Self, RegistryError> {
        // Keep compaction meaningful: it must drop records, not rewrite the log every time.
        opts.max_events = opts.max_events.max(2);
        opts.keep_events = opts.keep_events.min(opts.max_events / 2);
        let dir = dir.as_ref().to_path_buf();
        fs::create_dir_all(&dir).map_err(|e| io_error("create", &dir, e))?;
        let meta = fs::metadata(&dir).map_err(|e| io_error("open", &dir, e))?;
        if !meta.is_dir() {
            return Err(RegistryError::Options(format!(
                "local store: {} is not a directory",
                dir.display()
            )));
        }
        let log_path = dir.join(LOG_FILE);
        let inner = Inner {
            config_path: dir.join(CONFIG_FILE),
            lock_path: dir.join(LOCK_FILE),
            view: Mutex::new(LogView::new(log_path.clone())),
            log_path,
            opts,
            dir,
        };
        if !inner.log_path.exists() {
            let _lock = inner.lock()?;
            if !inner.log_path.exists() {
                inner.create_log(0)?;
                info!(dir = %inner.dir.display(), "created local lease store");
            }
        }
        Ok(LocalRegistry {
            inner: Arc::new(inner),
        })
    }

    /// The store directory.
    pub fn dir(&self) -> &Path {
        &self.inner.dir
    }

    /// Writes the network config (atomically; not checked, as `etcdctl put` does not).
    pub fn set_network_config(&self, json: &str) -> Result<(), RegistryError> {
        static SEQ: AtomicU64 = AtomicU64::new(0);
        let seq = SEQ.fetch_add(1, Ordering::Relaxed);
        let tmp = self
            .inner
            .dir
            .join(format!(".config.{}.{seq}.tmp", std::process::id()));
        write_atomic(&self.inner.config_path, &tmp, json.as_bytes())
    }

    /// The current store revision.
    pub fn revision(&self) -> Result<i64, RegistryError> {
        let mut view = self.inner.view();
        view.refresh()?;
        Ok(view.revision)
    }

    /// Writes a raw value under a key, as another program could (tests, tools): the value
    /// need not be lease JSON nor the key a subnet key. `ttl: None` writes a reservation.
    /// Returns the new revision. Blocking (takes the store lock).
    pub fn put_raw(
        &self,
        key: &str,
        value: &str,
        ttl: Option<Duration>,
    ) -> Result<i64, RegistryError> {
        let (rev, _) = self.inner.mutate("put", |view, now, b| {
            let created = view.current(key, now).map(|e| e.created);
            b.put(
                key,
                value.to_string(),
                ttl.map(|t| now.saturating_add(ttl_ms(t))),
                created,
            )
        })?;
        Ok(rev)
    }

    /// Deletes a key (no error if absent); returns the store revision. Blocking.
    pub fn delete_raw(&self, key: &str) -> Result<i64, RegistryError> {
        let (_, rev) = self.inner.mutate("delete", |v, now, b| {
            if let Some(e) = v.current(key, now) {
                b.del(key, e.value.clone(), false);
            }
        })?;
        Ok(rev)
    }

    /// Drops the change history except the newest `keep` records; watchers behind it get
    /// [`RegistryError::Compacted`]. Returns the compaction revision. Blocking.
    pub fn compact(&self, keep: usize) -> Result<i64, RegistryError> {
        let _lock = self.inner.lock()?;
        self.inner.ensure_log()?;
        let mut view = self.inner.view();
        view.refresh()?;
        self.inner.cut_torn_tail(&view)?;
        self.inner.compact_locked(&mut view, keep)
    }

    /// Records the expiry of leases past their TTL now (done anyway by every change and
    /// every watch). Blocking.
    pub fn expire(&self) -> Result<i64, RegistryError> {
        Ok(self.inner.mutate("expire", |_, _, _| ())?.1)
    }

    async fn blocking<T: Send + 'static>(
        &self,
        f: impl FnOnce(&Inner) -> Result<T, RegistryError> + Send + 'static,
    ) -> Result<T, RegistryError> {
        let inner = self.inner.clone();
        tokio::task::spawn_blocking(move || f(&inner))
            .await
            .map_err(|e| RegistryError::Other(format!("local store task failed: {e}")))?
    }

    async fn watch(&self, key: Option<String>, after: i64) -> Result<WatchStream, RegistryError> {
        // inotify first, so that no change between the read below and the wait is missed.
        let wake = if self.inner.opts.inotify {
            Wake::new(&self.inner.dir)
        } else {
            Wake { fd: None }
        };
        let path = self.inner.log_path.clone();
        let (view, initial) = tokio::task::spawn_blocking(move || {
            let mut v = LogView::new(path);
            let r = v.refresh();
            (v, r)
        })
        .await
        .map_err(|e| RegistryError::Other(format!("local store task failed: {e}")))?;
        let initial = initial?;
        if after < view.compacted {
            return Err(RegistryError::Compacted {
                compact_revision: view.compacted,
            });
        }
        if after > view.revision {
            warn!(after, store_revision = view.revision, path = %self.inner.log_path.display(),
                "local store revision is behind our watch position; re-listing");
            return Err(RegistryError::Compacted {
                compact_revision: view.revision,
            });
        }
        debug!(after, key = ?key, "watching the local store");
        let w = Watch {
            inner: self.inner.clone(),
            view: Some(view),
            cursor: after,
            key,
            pending: initial.records,
            wake,
            reap_not_before: Instant::now(),
            reap_backoff: Backoff::new(Duration::from_millis(100), Duration::from_secs(30)),
        };
        let s = futures::stream::unfold(Some(w), |state| async move {
            let mut w = state?;
            let item = w.next_batch().await;
            // After an error the stream ends: the caller decides how to resume.
            let next = if item.is_ok() { Some(w) } else { None };
            Some((item, next))
        });
        Ok(s.boxed())
    }
}

/// An inotify descriptor as tokio wants it.
struct InotifyFd(Inotify);

impl AsRawFd for InotifyFd {
    fn as_raw_fd(&self) -> RawFd {
        self.0.as_fd().as_raw_fd()
    }
}

/// Wake-ups of a watch: inotify on the store directory, else a poll timer.
struct Wake {
    fd: Option<AsyncFd<InotifyFd>>,
}

impl Wake {
    fn new(dir: &Path) -> Self {
        let setup = || -> Result<AsyncFd<InotifyFd>, String> {
            let ino = Inotify::init(InitFlags::IN_NONBLOCK | InitFlags::IN_CLOEXEC)
                .map_err(|e| e.to_string())?;
            ino.add_watch(
                dir,
                AddWatchFlags::IN_MODIFY
                    | AddWatchFlags::IN_MOVED_TO
                    | AddWatchFlags::IN_CREATE
                    | AddWatchFlags::IN_DELETE_SELF
                    | AddWatchFlags::IN_MOVE_SELF,
            )
            .map_err(|e| e.to_string())?;
            // SAFETY: `Inotify` owns its descriptor, which stays open and unchanged for as
            // long as the `AsyncFd` owns the `Inotify`; `as_raw_fd` always returns it.
            unsafe { AsyncFd::register_with_interest(InotifyFd(ino), Interest::READABLE) }
                .map_err(|e| e.to_string())
        };
        match setup() {
            Ok(fd) => Wake { fd: Some(fd) },
            Err(e) => {
                debug!(dir = %dir.display(), error = %e, "inotify unavailable; polling the local store every {POLL_TICK:?}");
                Wake { fd: None }
            }
        }
    }

    /// Waits for a change notification, `until`, or the next safety tick.
    async fn wait(&mut self, until: Option<Instant>) {
        let tick = if self.fd.is_some() {
            SAFETY_TICK
        } else {
            POLL_TICK
        };
        let limit = Instant::now() + tick;
        let deadline = tokio::time::Instant::from_std(until.map_or(limit, |u| u.min(limit)));
        let mut broken = false;
        match &self.fd {
            None => tokio::time::sleep_until(deadline).await,
            Some(fd) => {
                tokio::select! {
                    r = fd.readable() => match r {
                        Ok(mut guard) => {
                            // Drain the queue (bounded); the log itself says what changed.
                            for _ in 0..64 {
                                match guard.get_inner().0.read_events() {
                                    Ok(_) => continue,
                                    Err(Errno::EAGAIN) => {
                                        guard.clear_ready();
                                        break;
                                    }
                                    Err(e) => {
                                        debug!(error = %e, "inotify read failed; polling instead");
                                        broken = true;
                                        break;
                                    }
                                }
                            }
                        }
                        Err(e) => {
                            debug!(error = %e, "inotify wait failed; polling instead");
                            broken = true;
                        }
                    },
                    _ = tokio::time::sleep_until(deadline) => {}
                }
            }
        }
        if broken {
            self.fd = None;
        }
    }
}

/// The state of one watch stream: its own view of the log and the last revision delivered.
struct Watch {
    inner: Arc<Inner>,
    /// `None` only while a refresh runs on the blocking pool.
    view: Option<LogView>,
    cursor: i64,
    key: Option<String>,
    pending: Vec<Record>,
    wake: Wake,
    reap_not_before: Instant,
    reap_backoff: Backoff,
}

impl Watch {
    async fn next_batch(&mut self) -> Result<WatchBatch, RegistryError> {
        loop {
            let (revision, next_expiry) = match &self.view {
                Some(v) => (v.revision, v.next_expiry()),
                None => return Err(RegistryError::Other("local store watch state lost".into())),
            };
            let records = std::mem::take(&mut self.pending);
            if revision > self.cursor {
                let cursor = self.cursor;
                let events = records
                    .iter()
                    .filter(|r| !r.base && r.rev > cursor)
                    .filter(|r| self.key.as_ref().is_none_or(|k| *k == r.key))
                    .filter_map(to_event)
                    .collect();
                self.cursor = revision;
                return Ok(WatchBatch { revision, events });
            }
            // Nothing new: wait for a change, the next expiry, or the safety tick.
            let reap_at = next_expiry.map(|ms| {
                let wait =
                    u64::try_from(ms.saturating_sub(now_ms()).saturating_add(1)).unwrap_or(0);
                (Instant::now() + Duration::from_millis(wait)).max(self.reap_not_before)
            });
            self.wake.wait(reap_at).await;
            if reap_at.is_some_and(|t| Instant::now() >= t) {
                self.reap().await;
            }
            self.refresh().await?;
        }
    }

    /// Records expired leases (any process's watch may do it; the lock serializes them).
    async fn reap(&mut self) {
        let inner = self.inner.clone();
        let r = tokio::task::spawn_blocking(move || inner.mutate("expire", |_, _, _| ()))
            .await
            .map_err(|e| RegistryError::Other(format!("local store task failed: {e}")))
            .and_then(|r| r);
        match r {
            Ok(_) => {
                self.reap_backoff.reset();
                self.reap_not_before = Instant::now() + Duration::from_millis(50);
            }
            Err(e) => {
                let d = self.reap_backoff.next_delay();
                warn!(error = %e, "cannot record expired leases in the local store, retrying in {d:?}");
                self.reap_not_before = Instant::now() + d;
            }
        }
    }

    async fn refresh(&mut self) -> Result<(), RegistryError> {
        let Some(mut view) = self.view.take() else {
            return Err(RegistryError::Other("local store watch state lost".into()));
        };
        let (view, r) = tokio::task::spawn_blocking(move || {
            let r = view.refresh();
            (view, r)
        })
        .await
        .map_err(|e| RegistryError::Other(format!("local store task failed: {e}")))?;
        let r = r?;
        if r.replaced {
            if view.compacted > self.cursor {
                return Err(RegistryError::Compacted {
                    compact_revision: view.compacted,
                });
            }
            if view.revision < self.cursor {
                warn!(
                    after = self.cursor,
                    store_revision = view.revision,
                    "local store log went back in time; re-listing"
                );
                return Err(RegistryError::Compacted {
                    compact_revision: view.revision,
                });
            }
        }
        self.view = Some(view);
        self.pending.extend(r.records);
        Ok(())
    }
}

#[async_trait::async_trait]
impl Registry for LocalRegistry {
    fn name(&self) -> String {
        format!("local {}", self.inner.dir.display())
    }

    async fn get_network_config(&self) -> Result<String, RegistryError> {
        self.blocking(|inner| match fs::read(&inner.config_path) {
            Ok(b) => Ok(String::from_utf8_lossy(&b).into_owned()),
            Err(e) if e.kind() == io::ErrorKind::NotFound && inner.dir.is_dir() => {
                Err(RegistryError::ConfigNotFound(format!(
                    "{CONFIG_NOT_FOUND} (looked for {})",
                    inner.config_path.display()
                )))
            }
            Err(e) => Err(io_error("read", &inner.config_path, e)),
        })
        .await
    }

    async fn get_subnets(&self) -> Result<(Vec<Lease>, i64), RegistryError> {
        self.blocking(|inner| {
            let mut view = inner.view();
            view.refresh()?;
            Ok((view.leases(now_ms()), view.revision))
        })
        .await
    }

    async fn get_subnet(&self, key: &SubnetKey) -> Result<(Option<Lease>, i64), RegistryError> {
        let k = key.to_string();
        self.blocking(move |inner| {
            let mut view = inner.view();
            view.refresh()?;
            let lease = match view.current(&k, now_ms()) {
                None => None,
                Some(e) => match lease_of(&k, e) {
                    Ok(l) => Some(l),
                    Err(err) => {
                        warn!(error = %err, "ignoring bad subnet entry");
                        None
                    }
                },
            };
            Ok((lease, view.revision))
        })
        .await
    }

    async fn create_subnet(
        &self,
        key: &SubnetKey,
        attrs: &LeaseAttrs,
        ttl: Option<Duration>,
    ) -> Result<Option<Lease>, RegistryError> {
        let (key, attrs) = (*key, attrs.clone());
        self.blocking(move |inner| {
            let k = key.to_string();
            let (made, _) = inner.mutate("create lease", |view, now, b| {
                if view.current(&k, now).is_some() {
                    return None;
                }
                let expires = ttl.map(|t| now.saturating_add(ttl_ms(t)));
                Some((b.put(&k, attrs.to_json(), expires, None), expires))
            })?;
            Ok(match made {
                Some((rev, expires)) => Some(Lease::new(key, attrs, expiration(expires), rev)),
                None => {
                    debug!(subnet = %key, "subnet already taken");
                    None
                }
            })
        })
        .await
    }

    async fn update_subnet(
        &self,
        key: &SubnetKey,
        attrs: &LeaseAttrs,
        ttl: Option<Duration>,
    ) -> Result<Lease, RegistryError> {
        let (key, attrs) = (*key, attrs.clone());
        self.blocking(move |inner| {
            let k = key.to_string();
            let ((rev, expires, created), _) = inner.mutate("update lease", |view, now, b| {
                let expires = ttl.map(|t| now.saturating_add(ttl_ms(t)));
                let created = view.current(&k, now).map(|e| e.created);
                (
                    b.put(&k, attrs.to_json(), expires, created),
                    expires,
                    created,
                )
            })?;
            Ok(Lease::new(key, attrs, expiration(expires), rev)
                .with_created(created.unwrap_or(rev)))
        })
        .await
    }

    async fn delete_subnet(&self, key: &SubnetKey) -> Result<(), RegistryError> {
        let k = key.to_string();
        self.blocking(move |inner| {
            inner.mutate("delete lease", |view, now, b| {
                if let Some(e) = view.current(&k, now) {
                    b.del(&k, e.value.clone(), false);
                }
            })?;
            Ok(())
        })
        .await
    }

    async fn watch_subnets(&self, after: i64) -> Result<WatchStream, RegistryError> {
        self.watch(None, after).await
    }

    async fn watch_subnet(
        &self,
        key: &SubnetKey,
        after: i64,
    ) -> Result<WatchStream, RegistryError> {
        self.watch(Some(key.to_string()), after).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicU32, Ordering};

    static N: AtomicU32 = AtomicU32::new(0);

    struct Tmp(PathBuf);

    impl Tmp {
        fn new() -> Self {
            let p = std::env::temp_dir().join(format!(
                "flannel-rs-local-unit-{}-{}",
                std::process::id(),
                N.fetch_add(1, Ordering::SeqCst)
            ));
            let _ = fs::remove_dir_all(&p);
            Tmp(p)
        }
    }

    impl Drop for Tmp {
        fn drop(&mut self) {
            let _ = fs::remove_dir_all(&self.0);
        }
    }

    fn attrs(last: u8) -> LeaseAttrs {
        LeaseAttrs {
            public_ip: std::net::Ipv4Addr::new(192, 0, 2, last),
            backend_type: "vxlan".into(),
            ..Default::default()
        }
    }

    fn key(third: u8) -> SubnetKey {
        format!("10.244.{third}.0-24").parse().unwrap()
    }

    fn log_lines(r: &LocalRegistry) -> Vec<String> {
        fs::read_to_string(r.dir().join(LOG_FILE))
            .unwrap()
            .lines()
            .map(str::to_string)
            .collect()
    }

    async fn next(s: &mut WatchStream) -> Result<WatchBatch, RegistryError> {
        tokio::time::timeout(Duration::from_secs(5), s.next())
            .await
            .expect("watch answered")
            .expect("watch open")
    }

    #[tokio::test]
    async fn layout_and_record_format() {
        let t = Tmp::new();
        let r = LocalRegistry::open(&t.0).unwrap();
        assert!(t.0.join(LOCK_FILE).exists());
        assert_eq!(
            log_lines(&r),
            vec![r#"{"format":"flannel-rs local store v1","compacted":0}"#]
        );
        let l = r
            .create_subnet(&key(1), &attrs(1), Some(Duration::from_secs(60)))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(l.revision, 1);
        assert!(matches!(l.expiration, Expiration::At(_)));
        let lines = log_lines(&r);
        assert_eq!(lines.len(), 2);
        let rec: Record = serde_json::from_str(&lines[1]).unwrap();
        assert_eq!(rec.op, Op::Put);
        assert_eq!(rec.key, "10.244.1.0-24");
        assert_eq!(rec.value, attrs(1).to_json());
        assert!(rec.expires.is_some());
        // Create is compare-and-swap.
        assert!(r
            .create_subnet(&key(1), &attrs(2), None)
            .await
            .unwrap()
            .is_none());
        r.delete_subnet(&key(1)).await.unwrap();
        let rec: Record = serde_json::from_str(&log_lines(&r)[2]).unwrap();
        assert_eq!(
            (rec.op, rec.rev, rec.value),
            (Op::Del, 2, attrs(1).to_json())
        );
        // Deleting an absent key changes nothing.
        r.delete_subnet(&key(1)).await.unwrap();
        assert_eq!(r.revision().unwrap(), 2);
    }

    #[tokio::test]
    async fn config_missing_then_written() {
        let t = Tmp::new();
        let r = LocalRegistry::open(&t.0).unwrap();
        match r.get_network_config().await {
            Err(RegistryError::ConfigNotFound(m)) => {
                assert!(
                    m.contains("config not found") && m.contains(&t.0.display().to_string()),
                    "{m}"
                )
            }
            other => panic!("{other:?}"),
        }
        r.set_network_config(r#"{"Network":"10.244.0.0/16"}"#)
            .unwrap();
        assert_eq!(
            r.get_network_config().await.unwrap(),
            r#"{"Network":"10.244.0.0/16"}"#
        );
        // No temporary files left behind.
        let names: Vec<_> = fs::read_dir(&t.0)
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        assert!(names.iter().all(|n| !n.ends_with(".tmp")), "{names:?}");
    }

    #[tokio::test]
    async fn compaction_keeps_state_and_bounds_the_log() {
        let t = Tmp::new();
        let opts = LocalOptions {
            max_events: 20,
            keep_events: 5,
            fsync: false,
            ..Default::default()
        };
        let r = LocalRegistry::open_with(&t.0, opts).unwrap();
        let a = r
            .create_subnet(&key(1), &attrs(1), Some(Duration::from_secs(600)))
            .await
            .unwrap()
            .unwrap();
        r.create_subnet(&key(2), &attrs(2), None)
            .await
            .unwrap()
            .unwrap();
        r.create_subnet(&key(3), &attrs(3), None)
            .await
            .unwrap()
            .unwrap();
        r.delete_subnet(&key(3)).await.unwrap();
        let early = r.revision().unwrap();
        let mut old_watch = r.watch_subnets(early).await.unwrap();
        for _ in 0..50 {
            r.update_subnet(&key(2), &attrs(2), None).await.unwrap();
        }
        let rev = r.revision().unwrap();
        assert_eq!(rev, early + 50);
        // Bounded: header + 2 base leases + at most max_events changes.
        let lines = log_lines(&r);
        assert!(lines.len() <= 1 + 2 + 20, "{} lines", lines.len());
        let header: Header = serde_json::from_str(&lines[0]).unwrap();
        assert!(header.compacted > early && header.compacted < rev);

        // The lease set is intact, with revisions and expiry.
        let fresh = LocalRegistry::open(&t.0).unwrap();
        let (leases, frev) = fresh.get_subnets().await.unwrap();
        assert_eq!(frev, rev);
        assert_eq!(leases.len(), 2);
        let l1 = leases.iter().find(|l| l.key() == key(1)).unwrap();
        assert_eq!(l1.revision, a.revision);
        assert_eq!(l1.expiration, a.expiration);
        let l2 = leases.iter().find(|l| l.key() == key(2)).unwrap();
        assert_eq!((l2.revision, l2.expiration), (rev, Expiration::Never));

        // A watch from before the compaction is told to re-list, at once or when it
        // notices the new log.
        match r.watch_subnets(early).await {
            Err(RegistryError::Compacted { compact_revision }) => {
                assert_eq!(compact_revision, header.compacted)
            }
            other => panic!("expected Compacted, got {:?}", other.map(|_| ())),
        }
        let mut saw_compacted = false;
        for _ in 0..100 {
            match next(&mut old_watch).await {
                Ok(_) => continue,
                Err(RegistryError::Compacted { .. }) => {
                    saw_compacted = true;
                    break;
                }
                Err(e) => panic!("{e}"),
            }
        }
        assert!(saw_compacted);

        // A watch from within the kept history resumes exactly.
        let mut w = r.watch_subnets(rev - 2).await.unwrap();
        let b = next(&mut w).await.unwrap();
        assert_eq!(b.revision, rev);
        assert_eq!(
            b.events.iter().map(|e| e.revision()).collect::<Vec<_>>(),
            vec![rev - 1, rev]
        );

        // Explicit compaction of everything.
        let c = r.compact(0).unwrap();
        assert_eq!(c, rev);
        assert_eq!(log_lines(&r).len(), 3);
        assert!(r.watch_subnets(rev).await.is_ok());
        assert!(matches!(
            r.watch_subnets(rev - 1).await,
            Err(RegistryError::Compacted { .. })
        ));
    }

    #[tokio::test]
    async fn corrupt_and_torn_lines_are_skipped() {
        let t = Tmp::new();
        let r = LocalRegistry::open(&t.0).unwrap();
        r.create_subnet(&key(1), &attrs(1), None)
            .await
            .unwrap()
            .unwrap();
        let log = t.0.join(LOG_FILE);
        {
            let mut f = OpenOptions::new().append(true).open(&log).unwrap();
            f.write_all(b"garbage that is not json\n").unwrap();
            f.write_all(b"{\"rev\":1,\"op\":\"put\",\"key\":\"10.244.9.0-24\",\"value\":\"{}\"}\n")
                .unwrap(); // out of order: revision 1 again
            f.write_all(b"{\"rev\":2,\"op\":\"put\",\"key\":\"10.244.8.0-24\",\"val")
                .unwrap(); // torn
        }
        let fresh = LocalRegistry::open(&t.0).unwrap();
        let (leases, rev) = fresh.get_subnets().await.unwrap();
        assert_eq!(rev, 1);
        assert_eq!(leases.len(), 1);
        // The next writer cuts the torn line and carries on at revision 2.
        let l = fresh
            .create_subnet(&key(2), &attrs(2), None)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(l.revision, 2);
        let text = fs::read_to_string(&log).unwrap();
        assert!(text.ends_with('\n') && !text.contains("\"val\n"), "{text}");
        let (leases, _) = r.get_subnets().await.unwrap();
        assert_eq!(leases.len(), 2);

        // A log without a header, and one that is not a log at all: no panic.
        fs::write(
            &log,
            "{\"rev\":1,\"op\":\"put\",\"key\":\"10.244.1.0-24\",\"value\":\"{}\"}\n",
        )
        .unwrap();
        let (leases, rev) = LocalRegistry::open(&t.0)
            .unwrap()
            .get_subnets()
            .await
            .unwrap();
        assert_eq!((leases.len(), rev), (1, 1));
        fs::write(&log, [0xffu8, 0, 1, 2, b'\n', b'\n']).unwrap();
        let (leases, rev) = LocalRegistry::open(&t.0)
            .unwrap()
            .get_subnets()
            .await
            .unwrap();
        assert_eq!((leases.len(), rev), (0, 0));
    }

    #[tokio::test]
    async fn expired_lease_is_absent_and_reported() {
        let t = Tmp::new();
        let r = LocalRegistry::open(&t.0).unwrap();
        let mut w = r.watch_subnets(0).await.unwrap();
        r.create_subnet(&key(1), &attrs(1), Some(Duration::from_millis(300)))
            .await
            .unwrap()
            .unwrap();
        let b = next(&mut w).await.unwrap();
        assert!(matches!(&b.events[..], [Event::Added(l)] if l.key() == key(1)));
        // Nobody writes: the watch itself records the expiry.
        let b = next(&mut w).await.unwrap();
        assert!(
            matches!(&b.events[..], [Event::Removed(l)] if l.key() == key(1) && l.attrs == attrs(1))
        );
        assert!(r.get_subnet(&key(1)).await.unwrap().0.is_none());
        let last: Record = serde_json::from_str(log_lines(&r).last().unwrap()).unwrap();
        assert!(last.expired && last.op == Op::Del);
        // The expired subnet can be taken again.
        assert!(r
            .create_subnet(&key(1), &attrs(2), None)
            .await
            .unwrap()
            .is_some());
    }

    #[tokio::test]
    async fn polling_watch_without_inotify() {
        let t = Tmp::new();
        let opts = LocalOptions {
            inotify: false,
            ..Default::default()
        };
        let r = LocalRegistry::open_with(&t.0, opts).unwrap();
        let writer = LocalRegistry::open(&t.0).unwrap();
        let mut w = r.watch_subnet(&key(1), 0).await.unwrap();
        tokio::time::sleep(Duration::from_millis(150)).await;
        // A change to another key moves the revision on without events.
        writer
            .create_subnet(&key(2), &attrs(2), None)
            .await
            .unwrap()
            .unwrap();
        let b = next(&mut w).await.unwrap();
        assert_eq!((b.revision, b.events.len()), (1, 0));
        writer
            .create_subnet(&key(1), &attrs(1), None)
            .await
            .unwrap()
            .unwrap();
        let b = next(&mut w).await.unwrap();
        assert!(matches!(&b.events[..], [Event::Added(l)] if l.key() == key(1) && l.revision == 2));
    }

    #[tokio::test]
    async fn missing_directory_is_unavailable_not_recreated() {
        let t = Tmp::new();
        let r = LocalRegistry::open(&t.0).unwrap();
        let away = t.0.with_extension("away");
        fs::rename(&t.0, &away).unwrap();
        let e = r.create_subnet(&key(1), &attrs(1), None).await.unwrap_err();
        assert!(
            matches!(&e, RegistryError::Unavailable(m) if m.contains(&t.0.display().to_string())),
            "{e:?}"
        );
        assert!(e.is_retryable());
        assert!(matches!(
            r.get_subnets().await,
            Err(RegistryError::Unavailable(_))
        ));
        assert!(matches!(
            r.get_network_config().await,
            Err(RegistryError::Unavailable(_))
        ));
        assert!(
            !t.0.exists(),
            "the store directory must not be recreated by a write"
        );
        fs::rename(&away, &t.0).unwrap();
        assert!(r
            .create_subnet(&key(1), &attrs(1), None)
            .await
            .unwrap()
            .is_some());
    }
}
