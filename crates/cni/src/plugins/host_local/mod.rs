//! host-local IPAM: hands out one address per configured range set and records it on disk in the reference
//! plugin's layout (see `store`), so a node can switch between this and the reference plugin with its
//! allocations intact.
//!
//! The directory lock is held for a whole command (one ADD across all range sets), which keeps the
//! duplicate check, the allocations and a rollback consistent without re-locking per range set.

mod config;
mod range;
mod store;
#[cfg(test)]
mod tests;

pub use config::{parse_resolv_conf, IpamConf, StorageConf, DEFAULT_DATA_DIR};
pub use range::{Range, RangeIter, RangeSet, RangeSpec};

use crate::error::{CniError, Failures, ERR_NOT_AVAILABLE};
use crate::plugin::Plugin;
use crate::skel::CmdArgs;
use crate::types::{CniResult, Dns, IpConfig, NetConf};
use ipnet::IpNet;
use std::collections::HashSet;
use std::ffi::CString;
use std::io;
use std::net::IpAddr;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use store::{Owner, Store};

/// What can go wrong in host-local; each kind maps to one CNI error code.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Invalid configuration or request (code 7).
    #[error("{0}")]
    Config(String),
    /// A configuration value of the wrong JSON type (code 6).
    #[error("{0}")]
    Decode(String),
    /// A bad `CNI_ARGS` value (code 4).
    #[error("{0}")]
    Env(String),
    /// No address could be handed out or found (code 100).
    #[error("{0}")]
    Alloc(String),
    /// An error that already carries its CNI code.
    #[error(transparent)]
    Cni(CniError),
    /// A filesystem operation on the data directory failed (code 5).
    #[error("{op} {}: {source}", path.display())]
    Io {
        /// What was being done.
        op: &'static str,
        /// The file or directory.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: io::Error,
    },
}

impl From<Error> for CniError {
    fn from(e: Error) -> Self {
        match e {
            Error::Config(m) => CniError::config(m),
            Error::Decode(m) => CniError::decode(m),
            Error::Env(m) => CniError::env(m),
            Error::Alloc(m) => CniError::internal(m),
            Error::Cni(c) => c,
            e @ Error::Io { .. } => CniError::io(e.to_string()),
        }
    }
}

/// host-local's row of the plugin table. Its verbs are synchronous: file operations under a lock.
pub const PLUGIN: Plugin = Plugin {
    name: "host-local",
    versions: crate::version::SUPPORTED,
    add: |_, args, conf| Box::pin(std::future::ready(cmd_add(args, conf).map(Some))),
    del: |_, args, conf| Box::pin(std::future::ready(cmd_del(args, conf).map(|()| None))),
    check: |_, args, conf| Box::pin(std::future::ready(cmd_check(args, conf).map(|()| None))),
    gc: Some(|_, _, conf| Box::pin(std::future::ready(cmd_gc(conf).map(|()| None)))),
    status: Some(|_, _, conf| Box::pin(std::future::ready(cmd_status(conf).map(|()| None)))),
};

fn cmd_add(args: &CmdArgs, conf: &NetConf) -> Result<CniResult, CniError> {
    let ipam = IpamConf::load(conf, &args.args)?;
    let dns = match &ipam.resolv_conf {
        None => Dns::default(),
        Some(p) => parse_resolv_conf(&std::fs::read_to_string(p).map_err(|e| {
            Error::Config(format!("ipam.resolvConf {}: cannot read: {e}", p.display()))
        })?),
    };

    // Requested addresses are matched to range sets before anything is reserved, so a request that fits no
    // range fails without side effects.
    let mut wanted: Vec<Option<IpAddr>> = vec![None; ipam.ranges.len()];
    let mut unplaced = Vec::new();
    for &ip in &ipam.requested {
        match ipam.ranges.iter().position(|s| s.contains(ip)) {
            Some(i) if wanted[i].is_none() => wanted[i] = Some(ip),
            _ => unplaced.push(ip.to_string()),
        }
    }
    if !unplaced.is_empty() {
        return Err(CniError::config(format!(
            "failed to allocate all requested IPs: {} (each must lie in a different range set's range)",
            unplaced.join(" ")
        )));
    }

    let mut store = Store::create(&ipam.storage.dir)?;
    let owner = store::record(&args.container_id, &args.ifname);

    // One pass over the directory gives the taken addresses and those this attachment already holds in a
    // set that allocates dynamically (the reference plugin refuses a second allocation there). Only files
    // named by an address inside such a set are read.
    let mut taken = HashSet::new();
    let mut held = Vec::new();
    let mut buf = Vec::with_capacity(128);
    for e in store.entries()? {
        let Some(ip) = e.ip else { continue };
        taken.insert(ip);
        let checked = ipam
            .ranges
            .iter()
            .zip(&wanted)
            .any(|(s, w)| w.is_none() && s.contains(ip));
        if checked && store.read(&e, &mut buf) && buf.trim_ascii() == owner.as_slice() {
            held.push(ip);
        }
    }

    let mut result = CniResult {
        cni_version: conf.version().to_string(),
        ..Default::default()
    };
    let mut allocated = Vec::with_capacity(ipam.ranges.len());
    for (idx, set) in ipam.ranges.iter().enumerate() {
        let mut slot = Slot {
            store: &mut store,
            idx,
            set,
            owner: &owner,
            taken: &mut taken,
            allocated: &mut allocated,
            buf: &mut buf,
        };
        let got = match wanted[idx] {
            Some(ip) => slot.requested(ip),
            None => slot.next_free(&held, &args.container_id),
        }
        .and_then(|(ip, r)| {
            let address = IpNet::new(ip, r.subnet.prefix_len())
                .map_err(|e| Error::Alloc(format!("address {ip}: {e}")))?;
            Ok(IpConfig {
                address,
                gateway: Some(r.gateway),
                interface: None,
            })
        });
        match got {
            Ok(ip) => result.ips.push(ip),
            Err(e) => {
                // Undo exactly what this ADD reserved; earlier allocations of the same attachment stay. Every
                // address is released whatever happens to the others, and what could not be is reported.
                let mut undo = Failures::new();
                for ip in &allocated {
                    undo.step(
                        ip.to_string(),
                        store.release_ip(*ip).map_err(CniError::from),
                    );
                }
                let mut c = CniError::from(e);
                c.msg = format!("failed to allocate for range {idx}: {}", c.msg);
                return Err(undo.add_to(c));
            }
        }
    }
    result.routes = ipam.routes;
    result.dns = dns;
    Ok(result)
}

/// Allocation in one range set, under the directory lock.
struct Slot<'a, 'b> {
    store: &'b mut Store,
    idx: usize,
    set: &'a RangeSet,
    owner: &'b [u8],
    taken: &'b mut HashSet<IpAddr>,
    allocated: &'b mut Vec<IpAddr>,
    buf: &'b mut Vec<u8>,
}

impl<'a> Slot<'a, '_> {
    fn claim(&mut self, ip: IpAddr) -> Result<bool, Error> {
        if !self.store.reserve(ip, self.owner)? {
            self.taken.insert(ip);
            return Ok(false);
        }
        self.allocated.push(ip);
        self.taken.insert(ip);
        self.store.set_last_reserved(self.idx, ip)?;
        Ok(true)
    }

    fn requested(&mut self, ip: IpAddr) -> Result<(IpAddr, &'a Range), Error> {
        let set = self.set;
        let r = set
            .range_for(ip)
            .ok_or_else(|| Error::Config(format!("requested IP {ip} is not in range set {set}")))?;
        if ip == r.gateway {
            return Err(Error::Config(format!(
                "requested ip {ip} is subnet's gateway"
            )));
        }
        if !self.claim(ip)? {
            return Err(Error::Alloc(format!(
                "requested IP address {ip} is not available in range set {set}"
            )));
        }
        Ok((ip, r))
    }

    fn next_free(&mut self, held: &[IpAddr], id: &str) -> Result<(IpAddr, &'a Range), Error> {
        let set = self.set;
        if let Some(ip) = held.iter().find(|ip| set.contains(**ip)) {
            return Err(Error::Alloc(format!(
                "{ip} has been allocated to {id}, duplicate allocation is not allowed"
            )));
        }
        let last = self.store.last_reserved(self.idx, self.buf);
        for (ip, r) in RangeIter::new(set, last) {
            // Addresses seen in the directory scan are skipped without a syscall; the exclusive create
            // remains the real guard.
            if !self.taken.contains(&ip) && self.claim(ip)? {
                return Ok((ip, r));
            }
        }
        Err(Error::Alloc(format!(
            "no IP addresses available in range set: {set}"
        )))
    }
}

fn cmd_del(args: &CmdArgs, conf: &NetConf) -> Result<(), CniError> {
    let storage = StorageConf::load(conf)?;
    let Some(store) = Store::open_existing(&storage.dir)? else {
        return Ok(());
    };
    let owner = store::record(&args.container_id, &args.ifname);
    let mut buf = Vec::with_capacity(128);
    if let Some(mine) = prev_result_records(args, conf, &store, &owner, &mut buf) {
        let failed: Vec<String> = mine
            .iter()
            .filter_map(|e| store.remove(e).err().map(|e| e.to_string()))
            .collect();
        return if failed.is_empty() {
            Ok(())
        } else {
            Err(CniError::io(failed.join("; ")))
        };
    }
    let id = args.container_id.trim().as_bytes();
    let mut found = false;
    let mut legacy = Vec::new();
    let mut failed = Vec::new();
    for e in store.entries()? {
        if !store.read(&e, &mut buf) {
            continue;
        }
        let content = buf.trim_ascii();
        if content == owner.as_slice() {
            found = true;
            if let Err(err) = store.remove(&e) {
                failed.push(err.to_string());
            }
        } else if content == id {
            legacy.push(e);
        }
    }
    // ID-only records from old versions count only when no current record matched, as in the reference.
    if !found {
        for e in &legacy {
            if let Err(err) = store.remove(e) {
                failed.push(err.to_string());
            }
        }
    }
    if failed.is_empty() {
        Ok(())
    } else {
        Err(CniError::io(failed.join("; ")))
    }
}

/// The records a DEL can release without reading every record in the directory: the addresses of `prevResult`
/// (the ADD result the runtime hands back), when there is exactly one per range set and each record names this
/// attachment. ADD never gives an attachment more than one address per range set, so nothing else can be its.
/// `None` (anything missing, foreign or legacy) means: scan the directory, as the reference does.
fn prev_result_records(
    args: &CmdArgs,
    conf: &NetConf,
    store: &Store,
    owner: &[u8],
    buf: &mut Vec<u8>,
) -> Option<Vec<store::Entry>> {
    let ipam = IpamConf::load(conf, &args.args).ok()?;
    let prev = conf.prev().ok()??;
    let ips: Vec<IpAddr> = prev
        .ips
        .iter()
        .map(|c| range::canonical_ip(c.address.addr()))
        .collect();
    let mut out = Vec::with_capacity(ipam.ranges.len());
    for set in &ipam.ranges {
        let mut mine = ips.iter().filter(|ip| set.contains(**ip));
        let (Some(ip), None) = (mine.next(), mine.next()) else {
            return None;
        };
        let e = store::Entry {
            ip: Some(*ip),
            name: ip.to_string().into(),
        };
        if !store.read(&e, buf) || buf.trim_ascii() != owner {
            return None;
        }
        out.push(e);
    }
    // Every prevResult address must be accounted for by a range set: one outside them all is not ours to judge.
    (out.len() == ips.len()).then_some(out)
}

fn cmd_check(args: &CmdArgs, conf: &NetConf) -> Result<(), CniError> {
    let ipam = IpamConf::load(conf, &args.args)?;
    let owner = store::record(&args.container_id, &args.ifname);
    let id = args.container_id.trim().as_bytes();
    let mut buf = Vec::with_capacity(128);
    if let Some(store) = Store::open_existing(&ipam.storage.dir)? {
        for e in store.entries()? {
            if store.read(&e, &mut buf) {
                let content = buf.trim_ascii();
                if content == owner.as_slice() || content == id {
                    return Ok(());
                }
            }
        }
    }
    Err(CniError::internal(format!(
        "host-local: Failed to find address added by container {}",
        args.container_id
    )))
}

fn cmd_gc(conf: &NetConf) -> Result<(), CniError> {
    let storage = StorageConf::load(conf)?;
    let valid = conf.valid_attachments()?;
    let Some(store) = Store::open_existing(&storage.dir)? else {
        return Ok(());
    };
    let pairs: HashSet<(&str, &str)> = valid
        .iter()
        .map(|a| (a.container_id.as_str(), a.ifname.as_str()))
        .collect();
    let ids: HashSet<&str> = valid.iter().map(|a| a.container_id.as_str()).collect();
    let mut buf = Vec::with_capacity(128);
    let mut failed = Vec::new();
    for e in store.entries()? {
        // Only address-named files are records; anything else in the directory is not ours to remove.
        if e.ip.is_none() || !store.read(&e, &mut buf) {
            continue;
        }
        let keep = match store::parse_owner(&buf) {
            None => true,
            Some(Owner::Attachment { id, ifname }) => pairs.contains(&(id, ifname)),
            Some(Owner::Legacy { id }) => ids.contains(id),
        };
        if !keep {
            if let Err(err) = store.remove(&e) {
                failed.push(err.to_string());
            }
        }
    }
    if failed.is_empty() {
        Ok(())
    } else {
        Err(CniError::io(format!(
            "failed to release stale allocations: {}",
            failed.join("; ")
        )))
    }
}

fn cmd_status(conf: &NetConf) -> Result<(), CniError> {
    let storage = StorageConf::load(conf)?;
    writable(&storage.dir).map_err(|m| CniError::new(ERR_NOT_AVAILABLE, m))
}

/// Whether the directory, or the nearest existing ancestor it would be created in, is a writable directory.
/// Checked with `access(2)` so STATUS changes nothing on disk.
fn writable(dir: &Path) -> Result<(), String> {
    let mut cur = dir;
    loop {
        match std::fs::metadata(cur) {
            Ok(m) if m.is_dir() => break,
            Ok(_) => {
                return Err(format!(
                    "data directory {}: {} is not a directory",
                    dir.display(),
                    cur.display()
                ))
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => match cur.parent() {
                Some(p) if !p.as_os_str().is_empty() => cur = p,
                _ => {
                    return Err(format!(
                        "data directory {}: no existing parent",
                        dir.display()
                    ))
                }
            },
            Err(e) => return Err(format!("data directory {}: {e}", dir.display())),
        }
    }
    let c = CString::new(cur.as_os_str().as_bytes())
        .map_err(|e| format!("data directory {}: {e}", dir.display()))?;
    // SAFETY: `c` is a valid NUL-terminated path that outlives the call.
    if unsafe { libc::access(c.as_ptr(), libc::W_OK | libc::X_OK) } == 0 {
        Ok(())
    } else {
        Err(format!(
            "data directory {} is not writable ({}): {}",
            dir.display(),
            cur.display(),
            io::Error::last_os_error()
        ))
    }
}
