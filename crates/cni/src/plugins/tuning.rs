//! The `tuning` meta-plugin: sets network sysctls and interface attributes (MAC, MTU, promiscuous and
//! all-multicast mode, transmit queue length) of the pod interface a previous plugin of the chain made, and puts
//! the attributes back on DEL.
//!
//! As the reference (`plugins/meta/tuning`): `prevResult` is required; `sysctl` keys are dotted (or slashed) paths
//! under `/proc/sys/net`, written inside the pod namespace, with the first `IFNAME` replaced by `CNI_IFNAME`; a
//! duplicated key is refused; when `/etc/cni/tuning/allowlist.conf` exists every key must match one of its
//! regular expressions (one a line); overrides apply in the order `CNI_ARGS` `MAC=`, `runtimeConfig.mac`,
//! `args.cni.*`; the original attributes are saved in `<dataDir>/<containerID>_<ifname>.json` before they are
//! changed and restored on DEL (sysctls are not restored); a changed MAC is written into the result.
//!
//! Stricter than the reference: keys with empty segments (`net..core.x`, a leading or trailing separator) are
//! refused instead of normalised, and everything is validated before anything is changed.

use crate::args::CniArgs;
use crate::error::{CniError, ERR_INVALID_ENV, ERR_UNKNOWN_CONTAINER};
use crate::plugin::Plugin;
use crate::skel::CmdArgs;
use crate::types::{CniResult, NetConf};
use kernel::{sysctl, Link, Mac, Netlink, Netns};
use serde::de::{Deserializer, MapAccess, Visitor};
use serde::{Deserialize, Serialize};
use std::io::Read;
use std::path::{Path, PathBuf};

/// Where the originals are saved when the configuration names no `dataDir` (the reference's default).
pub const DEFAULT_DATA_DIR: &str = "/run/cni/tuning";
/// The reference's sysctl allowlist.
pub const DEFAULT_ALLOWLIST: &str = "/etc/cni/tuning/allowlist.conf";
/// Environment variable naming another allowlist file (for tests; a runtime's environment is the operator's).
pub const ALLOWLIST_ENV: &str = "FLANNEL_RS_TUNING_ALLOWLIST";
/// Files read back (allowlist, backups) larger than this are refused.
const MAX_FILE: u64 = 1 << 20;

/// The tuning plugin's row of the plugin table (no GC or STATUS, as the reference).
pub const PLUGIN: Plugin = crate::plugin::chained_row!("tuning");

/// A `sysctl` object: key/value pairs in their order; a key given twice is an error, as in the reference.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Sysctls(pub Vec<(String, String)>);

impl<'de> Deserialize<'de> for Sysctls {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Sysctls;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("an object of sysctl names to string values")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut m: A) -> Result<Sysctls, A::Error> {
                let mut out: Vec<(String, String)> = Vec::new();
                while let Some((k, v)) = m.next_entry::<String, String>()? {
                    if out.iter().any(|(e, _)| *e == k) {
                        return Err(serde::de::Error::custom(format!(
                            "duplicated sysctl keys are not allowed (\"{k}\")"
                        )));
                    }
                    out.push((k, v));
                }
                Ok(Sysctls(out))
            }
        }
        d.deserialize_map(V)
    }
}

impl Sysctls {
    /// Sets `k` to `v`, replacing an earlier value of `k`.
    fn set(&mut self, k: String, v: String) {
        match self.0.iter_mut().find(|(e, _)| *e == k) {
            Some(e) => e.1 = v,
            None => self.0.push((k, v)),
        }
    }
}

#[derive(Debug, Default, Deserialize)]
struct RawRuntimeConfig {
    #[serde(default)]
    mac: Option<String>,
}

/// The settings tuning applies: in the configuration itself and again under `args.cni`, which overrides it.
#[derive(Debug, Default, Deserialize)]
struct Tunables {
    #[serde(default)]
    sysctl: Option<Sysctls>,
    #[serde(default)]
    mac: Option<String>,
    #[serde(default)]
    promisc: Option<bool>,
    #[serde(default)]
    mtu: Option<i64>,
    #[serde(default)]
    allmulti: Option<bool>,
    #[serde(default, rename = "txQLen")]
    txqlen: Option<i64>,
}

#[derive(Debug, Default, Deserialize)]
struct RawArgs {
    #[serde(default)]
    cni: Option<Tunables>,
}

/// The plugin's keys as they are in the configuration.
#[derive(Debug, Default, Deserialize)]
struct RawConf {
    #[serde(default, rename = "dataDir")]
    data_dir: Option<String>,
    #[serde(flatten)]
    tunables: Tunables,
    #[serde(default, rename = "runtimeConfig")]
    runtime_config: Option<RawRuntimeConfig>,
    #[serde(default)]
    args: Option<RawArgs>,
}

/// The effective tuning settings, overrides applied and values checked.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TuningConf {
    /// Where the originals are saved.
    pub data_dir: PathBuf,
    /// Sysctls as configured (keys as written, before `IFNAME` substitution).
    pub sysctl: Sysctls,
    /// The MAC as written in the configuration (the result carries it so) and parsed.
    pub mac: Option<(String, Mac)>,
    /// Turn promiscuous mode on (false: leave it; CHECK then wants it off, as the reference).
    pub promisc: bool,
    /// MTU (0: leave it).
    pub mtu: u32,
    /// All-multicast mode.
    pub allmulti: Option<bool>,
    /// Transmit queue length.
    pub txqlen: Option<u32>,
}

impl TuningConf {
    /// Whether an interface attribute is to be changed (and so saved first).
    fn changes_link(&self) -> bool {
        self.mac.is_some()
            || self.mtu != 0
            || self.promisc
            || self.allmulti.is_some()
            || self.txqlen.is_some()
    }
}

/// Parses a MAC the way Go's `net.ParseMAC` does for 6-byte addresses: `aa:bb:cc:dd:ee:ff`,
/// `aa-bb-cc-dd-ee-ff` or `aabb.ccdd.eeff`, either case.
pub fn parse_mac(s: &str) -> Option<Mac> {
    let hex2 = |p: &str| -> Option<u8> {
        (p.len() == 2 && p.bytes().all(|c| c.is_ascii_hexdigit()))
            .then(|| u8::from_str_radix(p, 16).ok())
            .flatten()
    };
    let mut b = [0u8; 6];
    for sep in [':', '-'] {
        let parts: Vec<&str> = s.split(sep).collect();
        if parts.len() == 6 {
            for (o, p) in b.iter_mut().zip(&parts) {
                *o = hex2(p)?;
            }
            return Some(Mac(b));
        }
    }
    let parts: Vec<&str> = s.split('.').collect();
    if parts.len() == 3 {
        for (i, p) in parts.iter().enumerate() {
            if p.len() != 4 {
                return None;
            }
            let hi = hex2(p.get(0..2)?)?;
            let lo = hex2(p.get(2..4)?)?;
            *b.get_mut(2 * i)? = hi;
            *b.get_mut(2 * i + 1)? = lo;
        }
        return Some(Mac(b));
    }
    None
}

fn check_mac(s: &str) -> Result<(String, Mac), CniError> {
    let m = parse_mac(s)
        .ok_or_else(|| CniError::config(format!("invalid args {s} for MAC addr: not a MAC")))?;
    if m.is_multicast() {
        return Err(CniError::config(format!(
            "invalid args {s} for MAC addr: a multicast address cannot be an interface's"
        )));
    }
    Ok((s.to_string(), m))
}

fn check_u32(what: &str, v: i64) -> Result<u32, CniError> {
    u32::try_from(v).map_err(|_| CniError::config(format!("invalid {what} {v}")))
}

/// Reads a small file, `None` if it does not exist.
fn read_small(path: &Path) -> Result<Option<Vec<u8>>, std::io::Error> {
    let f = match std::fs::File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e),
    };
    let mut buf = Vec::new();
    f.take(MAX_FILE + 1).read_to_end(&mut buf)?;
    if buf.len() as u64 > MAX_FILE {
        return Err(std::io::Error::other("file too large"));
    }
    Ok(Some(buf))
}

impl TuningConf {
    /// Parses the configuration (the raw stdin, to see duplicated keys) and applies the overrides in the
    /// reference's order: `CNI_ARGS` `MAC=`, then `runtimeConfig.mac`, then `args.cni`.
    pub fn parse(stdin: &[u8], cni_args: &str) -> Result<Self, CniError> {
        let raw: RawConf = serde_json::from_slice(stdin)
            .map_err(|e| CniError::config(format!("invalid tuning configuration: {e}")))?;
        let t = raw.tunables;
        let mut mac = t.mac.filter(|m| !m.is_empty());
        let env = CniArgs::parse(cni_args, &["MAC"])?;
        if let Some(m) = env.get("MAC").filter(|m| !m.is_empty()) {
            mac = Some(m.to_string());
        }
        if let Some(m) = raw
            .runtime_config
            .and_then(|r| r.mac)
            .filter(|m| !m.is_empty())
        {
            mac = Some(m);
        }
        let mut sysctl = t.sysctl.unwrap_or_default();
        let (mut promisc, mut mtu, mut allmulti, mut txqlen) =
            (t.promisc.unwrap_or(false), t.mtu, t.allmulti, t.txqlen);
        if let Some(a) = raw.args.and_then(|a| a.cni) {
            for (k, v) in a.sysctl.unwrap_or_default().0 {
                sysctl.set(k, v);
            }
            mac = a.mac.or(mac);
            promisc = a.promisc.unwrap_or(promisc);
            mtu = a.mtu.or(mtu);
            allmulti = a.allmulti.or(allmulti);
            txqlen = a.txqlen.or(txqlen);
        }
        let mac = match mac.filter(|m| !m.is_empty()) {
            Some(m) => Some(check_mac(&m)?),
            None => None,
        };
        Ok(Self {
            data_dir: PathBuf::from(
                raw.data_dir
                    .filter(|d| !d.is_empty())
                    .unwrap_or_else(|| DEFAULT_DATA_DIR.into()),
            ),
            sysctl,
            mac,
            promisc,
            mtu: check_u32("MTU", mtu.unwrap_or(0))?,
            allmulti,
            txqlen: txqlen.map(|t| check_u32("txQLen", t)).transpose()?,
        })
    }

    /// The sysctls as paths under `/proc/sys` (segments) with their values, every key checked.
    pub fn sysctl_paths(&self, ifname: &str) -> Result<Vec<(Vec<String>, String)>, CniError> {
        self.sysctl
            .0
            .iter()
            .map(|(k, v)| Ok((sysctl_path(k, ifname)?, v.clone())))
            .collect()
    }
}

/// The path under `/proc/sys` of sysctl `key` for interface `ifname`, as segments: as the reference, dots and
/// slashes both separate, and the first `IFNAME` becomes `ifname` (so an interface name with dots stays one
/// segment). Only keys under `net` are allowed; empty, `.` and `..` segments are refused.
pub fn sysctl_path(key: &str, ifname: &str) -> Result<Vec<String>, CniError> {
    let bad = |why: &str| CniError::config(format!("invalid net sysctl key \"{key}\": {why}"));
    if key.contains('\0') {
        return Err(bad("contains a NUL byte"));
    }
    let replaced = key.replace('.', "/").replacen("IFNAME", ifname, 1);
    let segs: Vec<String> = replaced.split('/').map(str::to_string).collect();
    if segs.iter().any(String::is_empty) {
        return Err(bad(
            "empty path segment (leading, trailing or doubled separator)",
        ));
    }
    if segs.iter().any(|s| s == "." || s == "..") {
        return Err(bad("path traversal"));
    }
    if segs.first().map(String::as_str) != Some("net") {
        return Err(bad("not under /proc/sys/net"));
    }
    if segs.len() < 3 {
        return Err(bad("names a directory, not a sysctl"));
    }
    Ok(segs)
}

/// The allowlist: `None` if its file does not exist, else one regular expression a non-empty line.
pub fn read_allowlist(path: &Path) -> Result<Option<Vec<regex::Regex>>, CniError> {
    let Some(bytes) = read_small(path)
        .map_err(|e| CniError::io(format!("read sysctl allowlist {}: {e}", path.display())))?
    else {
        return Ok(None);
    };
    let text = String::from_utf8(bytes).map_err(|_| {
        CniError::config(format!(
            "sysctl allowlist {} is not UTF-8 text",
            path.display()
        ))
    })?;
    text.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .map(|l| {
            regex::RegexBuilder::new(l)
                .size_limit(1 << 20)
                .build()
                .map_err(|e| {
                    CniError::config(format!(
                        "sysctl allowlist {}: bad expression \"{l}\": {e}",
                        path.display()
                    ))
                })
        })
        .collect::<Result<Vec<_>, _>>()
        .map(Some)
}

/// Checks every configured sysctl against the allowlist (keys as written; a match anywhere in the key, as Go's
/// `regexp.MatchString`). No allowlist file: everything is allowed.
pub fn check_allowlist(conf: &TuningConf, allow: Option<&[regex::Regex]>) -> Result<(), CniError> {
    let Some(allow) = allow else {
        return Ok(());
    };
    for (k, _) in &conf.sysctl.0 {
        if !allow.iter().any(|r| r.is_match(k)) {
            let list: Vec<&str> = allow.iter().map(regex::Regex::as_str).collect();
            return Err(CniError::config(format!(
                "Sysctl {k} is not allowed. Only the following sysctls are allowed: {list:?}"
            )));
        }
    }
    Ok(())
}

fn allowlist_path() -> PathBuf {
    std::env::var_os(ALLOWLIST_ENV)
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(DEFAULT_ALLOWLIST))
}

/// The attributes saved before they are changed (the reference's `configToRestore`, same keys).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Backup {
    /// Original MAC.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub mac: String,
    /// Original promiscuous mode.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub promisc: Option<bool>,
    /// Original MTU (0: not saved).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub mtu: u32,
    /// Original all-multicast mode.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub allmulti: Option<bool>,
    /// Original transmit queue length.
    #[serde(default, rename = "txQLen", skip_serializing_if = "Option::is_none")]
    pub txqlen: Option<u32>,
}

fn is_zero(v: &u32) -> bool {
    *v == 0
}

impl Backup {
    fn of(conf: &TuningConf, l: &Link) -> Self {
        Self {
            mac: match (&conf.mac, l.mac) {
                (Some(_), Some(m)) => m.to_string(),
                _ => String::new(),
            },
            promisc: conf.promisc.then_some(l.promisc),
            mtu: if conf.mtu != 0 { l.mtu } else { 0 },
            allmulti: conf.allmulti.map(|_| l.allmulti),
            txqlen: conf.txqlen.map(|_| l.txqlen),
        }
    }
}

/// `<dataDir>/<containerID>_<ifname>.json` (both names are checked by the skeleton: no `/`).
pub fn backup_path(data_dir: &Path, container_id: &str, ifname: &str) -> PathBuf {
    data_dir.join(format!("{container_id}_{ifname}.json"))
}

fn write_backup(path: &Path, b: &Backup) -> Result<(), CniError> {
    use std::io::Write;
    use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
    let io = |what: &str, e: std::io::Error| {
        CniError::io(format!("failed to save {what} {}: {e}", path.display()))
    };
    if let Some(dir) = path.parent() {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .map_err(|e| io("backup directory of", e))?;
    }
    let data = serde_json::to_vec_pretty(b).map_err(|e| CniError::internal(e.to_string()))?;
    let tmp = path.with_extension("json.tmp");
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)
        .map_err(|e| io("backup", e))?;
    f.write_all(&data)
        .and_then(|()| f.sync_all())
        .map_err(|e| io("backup", e))?;
    std::fs::rename(&tmp, path).map_err(|e| io("backup", e))
}

fn open_ns(args: &CmdArgs, code: u32) -> Result<Netns, CniError> {
    Netns::open(&args.netns).map_err(|e| CniError::new(code, format!("CNI_NETNS: {e}")))
}

async fn pod_link(nl: &Netlink, ifname: &str) -> Result<Link, CniError> {
    nl.link_by_name(ifname)
        .await?
        .ok_or_else(|| CniError::internal(format!("failed to get \"{ifname}\": no such interface")))
}

fn require_prev(conf: &NetConf) -> Result<CniResult, CniError> {
    conf.prev()?
        .ok_or_else(|| CniError::config("Required prevResult missing"))
}

async fn add(args: &CmdArgs, conf: &NetConf) -> Result<CniResult, CniError> {
    let tc = TuningConf::parse(&args.stdin, &args.args)?;
    let paths = tc.sysctl_paths(&args.ifname)?;
    let allow = read_allowlist(&allowlist_path())?;
    check_allowlist(&tc, allow.as_deref())?;
    let mut result = require_prev(conf)?;
    let ns = open_ns(args, ERR_INVALID_ENV)?;

    // /proc/sys/net is the namespace of the thread that opens the file.
    ns.run(move || -> Result<(), CniError> {
        for (segs, value) in &paths {
            let s: Vec<&str> = segs.iter().map(String::as_str).collect();
            sysctl::set(&s, value)?;
        }
        Ok(())
    })??;

    if tc.changes_link() {
        let nl = Netlink::in_netns(&ns)?;
        let l = pod_link(&nl, &args.ifname).await?;
        write_backup(
            &backup_path(&tc.data_dir, &args.container_id, &args.ifname),
            &Backup::of(&tc, &l),
        )?;
        if let Some((text, mac)) = &tc.mac {
            nl.set_mac(l.index, *mac).await?;
            for i in result
                .interfaces
                .iter_mut()
                .filter(|i| i.name == args.ifname)
            {
                i.mac = text.clone();
            }
        }
        if tc.promisc {
            nl.set_promisc(l.index, true).await?;
        }
        if tc.mtu != 0 {
            nl.set_mtu(l.index, tc.mtu).await?;
        }
        if let Some(a) = tc.allmulti {
            nl.set_allmulti(l.index, a).await?;
        }
        if let Some(t) = tc.txqlen {
            nl.set_txqlen(l.index, t).await?;
        }
    }
    Ok(CniResult {
        cni_version: conf.version().to_string(),
        ..result
    })
}

/// DEL restores the saved attributes. It never fails on missing state: no file, no namespace or no interface
/// means nothing to restore, and the file is dropped (the reference keeps it then). A restore that fails is
/// logged and keeps the file, as the reference; DEL still succeeds, as the reference's does.
async fn del(args: &CmdArgs, conf: &NetConf) -> Result<(), CniError> {
    // Only `dataDir` matters here: a configuration or CNI_ARGS that ADD would refuse must not make the
    // attachment impossible to release.
    let data_dir = conf
        .extra
        .get("dataDir")
        .and_then(serde_json::Value::as_str)
        .filter(|d| !d.is_empty())
        .unwrap_or(DEFAULT_DATA_DIR);
    let path = backup_path(Path::new(data_dir), &args.container_id, &args.ifname);
    let drop_file = || match std::fs::remove_file(&path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(CniError::io(format!("remove {}: {e}", path.display()))),
    };
    let bytes = match read_small(&path) {
        Ok(Some(b)) => b,
        Ok(None) => return Ok(()),
        Err(e) => {
            eprintln!(
                "tuning: cannot read {}: {e}; nothing restored",
                path.display()
            );
            return drop_file();
        }
    };
    let backup: Backup = match serde_json::from_slice(&bytes) {
        Ok(b) => b,
        Err(e) => {
            eprintln!(
                "tuning: {} is not a backup ({e}); nothing restored",
                path.display()
            );
            return drop_file();
        }
    };
    if args.netns.is_empty() {
        return drop_file();
    }
    let ns = match Netns::open(&args.netns) {
        Ok(ns) => ns,
        Err(kernel::Error::NotFound(_)) => return drop_file(),
        Err(e) => return Err(CniError::new(ERR_INVALID_ENV, format!("CNI_NETNS: {e}"))),
    };
    let nl = Netlink::in_netns(&ns)?;
    let Some(l) = nl.link_by_name(&args.ifname).await? else {
        return drop_file();
    };
    let mut failed = crate::error::Failures::new();
    if backup.mtu != 0 {
        failed.step(
            "restore MTU",
            nl.set_mtu(l.index, backup.mtu)
                .await
                .map_err(CniError::from),
        );
    }
    if !backup.mac.is_empty() {
        let r = match parse_mac(&backup.mac) {
            Some(m) => nl.set_mac(l.index, m).await.map_err(CniError::from),
            None => Err(CniError::decode(format!(
                "saved MAC \"{}\" is not a MAC",
                backup.mac
            ))),
        };
        failed.step("restore MAC address", r);
    }
    if let Some(p) = backup.promisc {
        failed.step(
            "restore promiscuous mode",
            nl.set_promisc(l.index, p).await.map_err(CniError::from),
        );
    }
    if let Some(a) = backup.allmulti {
        failed.step(
            "restore all-multicast mode",
            nl.set_allmulti(l.index, a).await.map_err(CniError::from),
        );
    }
    if let Some(t) = backup.txqlen {
        failed.step(
            "restore tx queue length",
            nl.set_txqlen(l.index, t).await.map_err(CniError::from),
        );
    }
    if failed.is_empty() {
        drop_file()
    } else {
        eprintln!("tuning: {}; kept {}", failed.summary(), path.display());
        Ok(())
    }
}

/// Whether a sysctl reads back as the value written: the kernel prints some multi-value sysctls with tabs
/// (`ip_local_port_range`), so values compare as whitespace-separated words.
fn same_value(configured: &str, current: &str) -> bool {
    configured.split_whitespace().eq(current.split_whitespace())
}

async fn check(args: &CmdArgs, conf: &NetConf) -> Result<(), CniError> {
    let tc = TuningConf::parse(&args.stdin, &args.args)?;
    let paths = tc.sysctl_paths(&args.ifname)?;
    require_prev(conf)?;
    let ns = open_ns(args, ERR_UNKNOWN_CONTAINER)?;
    ns.run(move || -> Result<(), CniError> {
        for (segs, want) in &paths {
            let s: Vec<&str> = segs.iter().map(String::as_str).collect();
            let cur = sysctl::get(&s)?;
            if !same_value(want, &cur) {
                return Err(CniError::internal(format!(
                    "Tuning configured value of /proc/sys/{} is {want}, current value is {cur}",
                    segs.join("/")
                )));
            }
        }
        Ok(())
    })??;
    let nl = Netlink::in_netns(&ns)?;
    let l = nl
        .link_by_name(&args.ifname)
        .await?
        .ok_or_else(|| CniError::internal(format!("Cannot find container link {}", args.ifname)))?;
    let mismatch = |what: &str, want: String, cur: String| {
        Err(CniError::internal(format!(
            "Tuning configured {what} of {} is {want}, current value is {cur}",
            args.ifname
        )))
    };
    if let Some((text, mac)) = &tc.mac {
        if l.mac != Some(*mac) {
            let cur = l.mac.map(|m| m.to_string()).unwrap_or_default();
            return mismatch("Ethernet", text.clone(), cur);
        }
    }
    if tc.promisc != l.promisc {
        return mismatch("promisc", tc.promisc.to_string(), l.promisc.to_string());
    }
    if tc.mtu != 0 && tc.mtu != l.mtu {
        return mismatch("MTU", tc.mtu.to_string(), l.mtu.to_string());
    }
    if let Some(a) = tc.allmulti {
        if a != l.allmulti {
            return mismatch("all-multicast mode", a.to_string(), l.allmulti.to_string());
        }
    }
    if let Some(t) = tc.txqlen {
        if t != l.txqlen {
            return mismatch("tx queue length", t.to_string(), l.txqlen.to_string());
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn parse(v: serde_json::Value, env: &str) -> Result<TuningConf, CniError> {
        TuningConf::parse(v.to_string().as_bytes(), env)
    }

    #[test]
    fn sysctl_keys() {
        assert_eq!(
            sysctl_path("net.ipv4.conf.IFNAME.arp_filter", "eth0.100").unwrap(),
            ["net", "ipv4", "conf", "eth0.100", "arp_filter"]
        );
        assert_eq!(
            sysctl_path("net/core/somaxconn", "eth0").unwrap(),
            ["net", "core", "somaxconn"]
        );
        // Only the first IFNAME is substituted, as the reference.
        assert_eq!(
            sysctl_path("net.IFNAME.IFNAME.x", "e").unwrap(),
            ["net", "e", "IFNAME", "x"]
        );
        for bad in [
            "kernel.hostname",
            "net",
            "net.core",
            "net..core.somaxconn",
            "/net/core/somaxconn",
            "net.core.somaxconn.",
            "net/../kernel/hostname",
            "",
            "netfilter.x.y",
            "net.core.a\0b",
        ] {
            assert_eq!(sysctl_path(bad, "eth0").unwrap_err().code, 7, "{bad:?}");
        }
    }

    #[test]
    fn duplicate_sysctl_keys_are_refused() {
        let raw = br#"{"sysctl": {"net.core.somaxconn": "1", "net.core.somaxconn": "2"}}"#;
        let e = TuningConf::parse(raw, "").unwrap_err();
        assert_eq!(e.code, 7);
        assert!(e.msg.contains("duplicated"), "{e}");
    }

    #[test]
    fn overrides_in_reference_order() {
        let base = serde_json::json!({"mac": "02:00:00:00:00:01", "mtu": 1400, "sysctl": {"net.a.b": "1"}});
        assert_eq!(
            parse(base.clone(), "").unwrap().mac.unwrap().0,
            "02:00:00:00:00:01"
        );
        let c = parse(base.clone(), "IgnoreUnknown=1;MAC=02:00:00:00:00:02").unwrap();
        assert_eq!(c.mac.unwrap().0, "02:00:00:00:00:02");
        let mut v = base.clone();
        v["runtimeConfig"] = serde_json::json!({"mac": "02:00:00:00:00:03"});
        let c = parse(v.clone(), "MAC=02:00:00:00:00:02").unwrap();
        assert_eq!(c.mac.unwrap().0, "02:00:00:00:00:03");
        v["args"] = serde_json::json!({"cni": {"mac": "02:00:00:00:00:04", "mtu": 1300, "promisc": true,
            "allmulti": false, "txQLen": 7, "sysctl": {"net.a.b": "2", "net.c.d": "3"}}});
        let c = parse(v, "MAC=02:00:00:00:00:02").unwrap();
        assert_eq!(c.mac.unwrap().0, "02:00:00:00:00:04");
        assert_eq!(
            (c.mtu, c.promisc, c.allmulti, c.txqlen),
            (1300, true, Some(false), Some(7))
        );
        assert_eq!(
            c.sysctl.0,
            [
                ("net.a.b".into(), "2".into()),
                ("net.c.d".into(), "3".into())
            ]
        );
        // Unknown CNI_ARGS keys need IgnoreUnknown, as the reference's LoadArgs.
        assert_eq!(parse(base, "FOO=1").unwrap_err().code, 2);
    }

    #[test]
    fn bad_values() {
        for v in [
            serde_json::json!({"mac": "zz:00:00:00:00:01"}),
            serde_json::json!({"mac": "01:00:5e:00:00:01"}),
            serde_json::json!({"mtu": -1}),
            serde_json::json!({"mtu": "1400"}),
            serde_json::json!({"txQLen": -1}),
            serde_json::json!({"sysctl": {"net.core.somaxconn": 5}}),
            serde_json::json!({"sysctl": ["net.core.somaxconn"]}),
            serde_json::json!({"args": "x"}),
            serde_json::json!({"runtimeConfig": {"mac": 5}}),
        ] {
            assert_eq!(parse(v.clone(), "").unwrap_err().code, 7, "{v}");
        }
        assert_eq!(
            parse(serde_json::json!({}), "").unwrap().data_dir,
            Path::new(DEFAULT_DATA_DIR)
        );
    }

    #[test]
    fn mac_forms() {
        let m = Mac([0x02, 0xab, 0, 1, 2, 3]);
        for s in ["02:ab:00:01:02:03", "02-AB-00-01-02-03", "02ab.0001.0203"] {
            assert_eq!(parse_mac(s), Some(m), "{s}");
        }
        for s in [
            "02:ab:00:01:02",
            "02ab.0001.020",
            "+2:ab:00:01:02:03",
            "02:ab:00:01:02:03:04",
        ] {
            assert_eq!(parse_mac(s), None, "{s}");
        }
    }

    #[test]
    fn allowlist() {
        let dir = std::env::temp_dir().join(format!("flannel-rs-tuning-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let f = dir.join("allowlist.conf");
        assert!(read_allowlist(&f).unwrap().is_none());
        std::fs::write(
            &f,
            "\n  ^net\\.core\\.somaxconn$ \n^net\\.ipv4\\.conf\\.IFNAME\\.[a-z_]*$\n",
        )
        .unwrap();
        let allow = read_allowlist(&f).unwrap().unwrap();
        let ok = parse(
            serde_json::json!({"sysctl": {"net.core.somaxconn": "1", "net.ipv4.conf.IFNAME.arp_filter": "1"}}),
            "",
        )
        .unwrap();
        assert!(check_allowlist(&ok, Some(&allow)).is_ok());
        let no = parse(
            serde_json::json!({"sysctl": {"net.ipv4.ip_forward": "1"}}),
            "",
        )
        .unwrap();
        assert_eq!(check_allowlist(&no, Some(&allow)).unwrap_err().code, 7);
        std::fs::write(&f, "(").unwrap();
        assert_eq!(read_allowlist(&f).unwrap_err().code, 7);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn backup_keys_are_the_reference_ones() {
        let b = Backup {
            mac: "02:00:00:00:00:01".into(),
            promisc: Some(false),
            mtu: 1500,
            allmulti: Some(true),
            txqlen: Some(1000),
        };
        let v = serde_json::to_value(&b).unwrap();
        assert_eq!(
            v,
            serde_json::json!({"mac": "02:00:00:00:00:01", "promisc": false, "mtu": 1500, "allmulti": true,
                "txQLen": 1000})
        );
        // A backup written by the reference (no txQLen) reads back.
        let r: Backup =
            serde_json::from_str(r#"{"mac": "02:00:00:00:00:01", "mtu": 1500}"#).unwrap();
        assert_eq!((r.mtu, r.promisc, r.txqlen), (1500, None, None));
        assert!(same_value("32768 60999", "32768\t60999"));
        assert!(!same_value("1", "0"));
    }

    proptest! {
        #[test]
        fn sysctl_path_stays_under_net(key in "[a-zA-Z0-9_./IFNAME-]{0,40}", ifname in "[a-z0-9.]{1,15}") {
            if let Ok(segs) = sysctl_path(&key, &ifname) {
                prop_assert_eq!(segs.first().map(String::as_str), Some("net"));
                prop_assert!(segs.iter().all(|s| !s.is_empty() && s != "." && s != ".."));
            }
        }

        #[test]
        fn parse_never_panics(s in ".{0,200}", env in "[A-Za-z=;:0-9]{0,30}") {
            let _ = TuningConf::parse(s.as_bytes(), &env);
        }

        #[test]
        fn parse_structured_never_panics(
            mac in "[0-9a-fA-F:.-]{0,20}", mtu in proptest::num::i64::ANY,
            txq in proptest::num::i64::ANY, key in ".{0,20}", val in ".{0,10}",
        ) {
            let v = serde_json::json!({"mac": mac, "mtu": mtu, "txQLen": txq, "sysctl": {key: val},
                "args": {"cni": {"mtu": mtu, "mac": mac}}});
            if let Ok(c) = parse(v, "") {
                let _ = c.sysctl_paths("eth0");
            }
        }

        #[test]
        fn parse_mac_never_panics(s in ".{0,20}") {
            if let Some(m) = parse_mac(&s) {
                prop_assert_eq!(parse_mac(&m.to_string()), Some(m));
            }
        }
    }
}
