//! `flanneld install-cni`: the DaemonSet's init step. Copies our CNI plugin executables into the node's CNI
//! binary directory and the network configuration list into the runtime's configuration directory.
//!
//! Why not `cp`: the container runtime may execute `/opt/cni/bin/flannel` at any moment (a pod starting while
//! the DaemonSet is rolled out). `cp` truncates and rewrites the file in place, so a concurrent `execve` sees
//! `ETXTBSY` ("text file busy", the copy fails) or a half-written executable (`ENOEXEC`, or a crash). Every file
//! here is written under a temporary name in the destination directory, synced, and renamed over the old one:
//! an `execve` sees the whole old file or the whole new one, and a running plugin keeps its old inode. The
//! conflist goes last, so a runtime that picks the network up finds every plugin it names already in place.

use cni::conflist::NetConfList;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Write};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

/// What our image ships: every plugin of this build (`cni::plugins::TABLE`): those upstream's conflist names
/// (`flannel` → `bridge` → `host-local`, then `portmap` for hostPort), `loopback`, which every runtime calls for
/// the pod's `lo`, and the chained `tuning` and `bandwidth` that clusters add (sysctls; the
/// ingress/egress-bandwidth pod annotations). A plugin added to the table is installed without a change here,
/// except those in [`OPT_IN`].
pub fn default_plugins() -> Vec<String> {
    cni::plugins::TABLE
        .iter()
        .filter(|p| !OPT_IN.contains(&p.name))
        .map(|p| p.name.to_string())
        .collect()
}

/// Plugins installed only when `--plugins` names them. `dhcp`: our plugin speaks to our `dhcp daemon` only (not
/// the reference's Go net/rpc), so writing it over the reference's `dhcp` of a node that runs the reference
/// daemon would break every dhcp attachment there, and our manifest runs no daemon.
pub const OPT_IN: &[&str] = &["dhcp"];

/// Marks our temporary files, so a run killed half-way leaves nothing the next run does not remove.
const TMP_MARK: &str = ".flannel-install-";

#[derive(Debug, Clone, clap::Parser)]
#[command(
    name = "flanneld install-cni",
    about = "Install the CNI plugins and the network configuration list on this node (the DaemonSet's init step). \
             Each file is written under a temporary name and renamed into place, the conflist last, so a \
             runtime executing a plugin meanwhile never sees a half-written file."
)]
pub struct Options {
    /// Where the plugin executables are taken from [default: the directory of this flanneld executable]
    #[arg(long, value_name = "DIR")]
    pub source_dir: Option<PathBuf>,
    /// The node's CNI binary directory
    #[arg(long, value_name = "DIR", default_value = "/opt/cni/bin")]
    pub cni_bin_dir: PathBuf,
    /// The network configuration list to install (the ConfigMap's cni-conf.json)
    #[arg(
        long,
        value_name = "FILE",
        default_value = "/etc/kube-flannel/cni-conf.json"
    )]
    pub cni_conf: PathBuf,
    /// The runtime's CNI configuration directory
    #[arg(long, value_name = "DIR", default_value = "/etc/cni/net.d")]
    pub cni_conf_dir: PathBuf,
    /// The file name the conflist is installed as
    #[arg(long, value_name = "NAME", default_value = "10-flannel.conflist")]
    pub cni_conf_name: String,
    /// The plugins to install, comma-separated (by default every plugin of this build)
    #[arg(
        long,
        value_name = "LIST",
        value_delimiter = ',',
        default_values_t = default_plugins()
    )]
    pub plugins: Vec<String>,
}

/// Why nothing (or not everything) was installed. Every variant names the file.
#[derive(Debug, thiserror::Error)]
pub enum InstallError {
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: io::Error },
    #[error("{path}: not a usable network configuration list: {reason}")]
    BadConflist { path: PathBuf, reason: String },
    #[error("{0:?}: not a plain file name")]
    BadName(String),
    #[error("{path}: plugin source is not a regular file")]
    NotAFile { path: PathBuf },
    #[error("cannot find the directory of this executable: {0}")]
    NoSourceDir(io::Error),
}

fn io_err(path: &Path) -> impl FnOnce(io::Error) -> InstallError + '_ {
    move |source| InstallError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// One file the run wrote (or found already identical).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Installed {
    pub path: PathBuf,
    /// False when the destination already had exactly this content: nothing was written.
    pub changed: bool,
}

/// What a run did, in the order it did it (the conflist is the last entry).
#[derive(Debug, Clone, Default)]
pub struct Report {
    pub files: Vec<Installed>,
    /// Plugin types the conflist names that are not executable in the binary directory after the run (a plugin
    /// we do not ship, which the node must get from elsewhere).
    pub missing: Vec<String>,
}

/// A name that is one path component: no separator, not `.`/`..`, not empty, not one of our temporary names.
fn plain_name(name: &str) -> Result<&str, InstallError> {
    let ok = !name.is_empty()
        && name != "."
        && name != ".."
        && !name.contains('/')
        && !name.contains('\0')
        && !name.contains(TMP_MARK);
    if ok {
        Ok(name)
    } else {
        Err(InstallError::BadName(name.to_string()))
    }
}

/// Runs the install. Checks everything it can first (the conflist parses and is usable, the names are plain, every
/// plugin source exists), so a bad ConfigMap or image changes nothing on the node.
pub fn install(o: &Options) -> Result<Report, InstallError> {
    let source_dir = match &o.source_dir {
        Some(d) => d.clone(),
        None => std::env::current_exe()
            .map_err(InstallError::NoSourceDir)?
            .parent()
            .map(Path::to_path_buf)
            .ok_or_else(|| InstallError::NoSourceDir(io::Error::other("no parent directory")))?,
    };
    let conf_name = plain_name(&o.cni_conf_name)?;
    if !conf_name.ends_with(".conflist") {
        // libcni reads a *.conf/*.json as one plugin's config: a list there would not load.
        return Err(InstallError::BadName(format!(
            "{conf_name} (a configuration list must be named *.conflist)"
        )));
    }
    let conflist = read_limited(&o.cni_conf, 1 << 20)?;
    let list = NetConfList::parse(&conflist).map_err(|e| InstallError::BadConflist {
        path: o.cni_conf.clone(),
        reason: e.msg.clone(),
    })?;
    let types: Vec<String> = list
        .plugins
        .iter()
        .filter_map(|p| p.get("type").and_then(|t| t.as_str()).map(str::to_string))
        .collect();
    for t in &types {
        plain_name(t).map_err(|_| InstallError::BadConflist {
            path: o.cni_conf.clone(),
            reason: format!("plugin type {t:?} is not a plain file name"),
        })?;
    }
    let mut sources = Vec::new();
    for p in &o.plugins {
        let name = plain_name(p)?;
        let src = source_dir.join(name);
        let meta = fs::metadata(&src).map_err(io_err(&src))?;
        if !meta.is_file() {
            return Err(InstallError::NotAFile { path: src });
        }
        sources.push((name, src));
    }

    fs::create_dir_all(&o.cni_bin_dir).map_err(io_err(&o.cni_bin_dir))?;
    fs::create_dir_all(&o.cni_conf_dir).map_err(io_err(&o.cni_conf_dir))?;
    remove_leftovers(&o.cni_bin_dir)?;
    remove_leftovers(&o.cni_conf_dir)?;

    let mut report = Report::default();
    for (name, src) in sources {
        let bytes = fs::read(&src).map_err(io_err(&src))?;
        let dest = o.cni_bin_dir.join(name);
        let changed = replace_file(&dest, &bytes, 0o755)?;
        report.files.push(Installed {
            path: dest,
            changed,
        });
    }
    sync_dir(&o.cni_bin_dir)?;
    let dest = o.cni_conf_dir.join(conf_name);
    let changed = replace_file(&dest, &conflist, 0o644)?;
    sync_dir(&o.cni_conf_dir)?;
    report.files.push(Installed {
        path: dest,
        changed,
    });

    report.missing = types
        .into_iter()
        .filter(|t| !is_executable(&o.cni_bin_dir.join(t)))
        .collect();
    report.missing.dedup();
    Ok(report)
}

/// Reads at most `limit` bytes: a ConfigMap is small, a huge file is a mistake, not something to load.
fn read_limited(path: &Path, limit: u64) -> Result<Vec<u8>, InstallError> {
    let f = File::open(path).map_err(io_err(path))?;
    let mut buf = Vec::new();
    f.take(limit + 1)
        .read_to_end(&mut buf)
        .map_err(io_err(path))?;
    if buf.len() as u64 > limit {
        return Err(InstallError::BadConflist {
            path: path.to_path_buf(),
            reason: format!("larger than {limit} bytes"),
        });
    }
    Ok(buf)
}

fn is_executable(p: &Path) -> bool {
    fs::metadata(p).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

/// Temporary files of an earlier run that was killed before its rename.
fn remove_leftovers(dir: &Path) -> Result<(), InstallError> {
    for entry in fs::read_dir(dir).map_err(io_err(dir))? {
        let entry = entry.map_err(io_err(dir))?;
        if entry.file_name().to_string_lossy().contains(TMP_MARK) {
            let p = entry.path();
            match fs::remove_file(&p) {
                Ok(()) => tracing::info!("removed {} left by an interrupted install", p.display()),
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => return Err(InstallError::Io { path: p, source: e }),
            }
        }
    }
    Ok(())
}

/// Puts `bytes` at `dest` with one rename; returns false (and writes nothing) when `dest` already holds them.
fn replace_file(dest: &Path, bytes: &[u8], mode: u32) -> Result<bool, InstallError> {
    if let Ok(old) = fs::read(dest) {
        let same_mode = fs::metadata(dest).is_ok_and(|m| m.permissions().mode() & 0o7777 == mode);
        if old == bytes && same_mode {
            return Ok(false);
        }
    }
    let dir = dest.parent().unwrap_or(Path::new("."));
    let name = dest
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let tmp = dir.join(format!(".{name}{TMP_MARK}{}", std::process::id()));
    let write = || -> io::Result<()> {
        let mut f = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(mode)
            .open(&tmp)?;
        f.write_all(bytes)?;
        // The umask may have narrowed the mode given to open.
        f.set_permissions(fs::Permissions::from_mode(mode))?;
        f.sync_all()?;
        drop(f);
        fs::rename(&tmp, dest)
    };
    write().map_err(|e| {
        let _ = fs::remove_file(&tmp);
        InstallError::Io {
            path: dest.to_path_buf(),
            source: e,
        }
    })?;
    Ok(true)
}

/// Makes the renames durable: a node that loses power right after the init container still has the files.
fn sync_dir(dir: &Path) -> Result<(), InstallError> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(io_err(dir))
}

/// The subcommand's entry point: parses `args` (after `install-cni`), installs, logs, returns the exit code.
pub fn main(args: Vec<std::ffi::OsString>) -> i32 {
    use clap::Parser as _;
    let o = match Options::try_parse_from(
        std::iter::once(std::ffi::OsString::from("flanneld install-cni")).chain(args),
    ) {
        Ok(o) => o,
        Err(e) => e.exit(),
    };
    match install(&o) {
        Ok(r) => {
            for f in &r.files {
                let what = if f.changed { "installed" } else { "unchanged" };
                tracing::info!("{what}: {}", f.path.display());
            }
            for m in &r.missing {
                tracing::warn!(
                    "the conflist names plugin {m:?}, which is not in {}: pods on this node will fail to start \
                     until it is installed",
                    o.cni_bin_dir.display()
                );
            }
            0
        }
        Err(e) => {
            tracing::error!("install-cni: {e}");
            1
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Tmp(PathBuf);
    impl Drop for Tmp {
        fn drop(&mut self) {
            let _ = fs::remove_dir_all(&self.0);
        }
    }
    fn tmp(tag: &str) -> Tmp {
        let d = std::env::temp_dir().join(format!(
            "flannel-install-unit-{tag}-{}-{:?}",
            std::process::id(),
            std::thread::current().id()
        ));
        let _ = fs::remove_dir_all(&d);
        fs::create_dir_all(d.join("src")).unwrap();
        Tmp(d)
    }
    const LIST: &str = r#"{"name":"cbr0","cniVersion":"0.3.1","plugins":[{"type":"flannel","delegate":{"isDefaultGateway":true}},{"type":"portmap","capabilities":{"portMappings":true}},{"type":"sbr"}]}"#;

    fn opts(t: &Tmp) -> Options {
        for p in default_plugins() {
            fs::write(t.0.join("src").join(&p), format!("#!/bin/sh\necho {p}\n")).unwrap();
        }
        fs::write(t.0.join("cni-conf.json"), LIST).unwrap();
        Options {
            source_dir: Some(t.0.join("src")),
            cni_bin_dir: t.0.join("bin"),
            cni_conf: t.0.join("cni-conf.json"),
            cni_conf_dir: t.0.join("net.d"),
            cni_conf_name: "10-flannel.conflist".into(),
            plugins: default_plugins(),
        }
    }

    /// The reference's daemon cannot serve our dhcp plugin: it is never written over a node's by default.
    #[test]
    fn dhcp_is_installed_only_when_asked_for() {
        let d = default_plugins();
        assert!(!d.iter().any(|p| p == "dhcp"), "{d:?}");
        assert!(d.iter().any(|p| p == "bridge") && d.iter().any(|p| p == "macvlan"));
        assert_eq!(d.len() + OPT_IN.len(), cni::plugins::TABLE.len());
        let t = tmp("optin");
        let mut o = opts(&t);
        fs::write(t.0.join("src").join("dhcp"), "#!/bin/sh\necho dhcp\n").unwrap();
        install(&o).unwrap();
        assert!(!o.cni_bin_dir.join("dhcp").exists());
        o.plugins.push("dhcp".into());
        install(&o).unwrap();
        assert!(o.cni_bin_dir.join("dhcp").is_file());
    }

    #[test]
    fn installs_plugins_then_the_conflist_last_and_reports_missing() {
        let t = tmp("order");
        let o = opts(&t);
        let r = install(&o).unwrap();
        let names: Vec<_> = r
            .files
            .iter()
            .map(|f| f.path.file_name().unwrap().to_string_lossy().into_owned())
            .collect();
        let mut want = default_plugins();
        want.push("10-flannel.conflist".into());
        assert_eq!(names, want);
        assert!(r.files.iter().all(|f| f.changed));
        assert_eq!(r.missing, ["sbr"]);
        let mode = fs::metadata(o.cni_bin_dir.join("flannel"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o755);
        assert_eq!(
            fs::read_to_string(o.cni_conf_dir.join("10-flannel.conflist")).unwrap(),
            LIST
        );
        // A second run with the same content writes nothing.
        let r = install(&o).unwrap();
        assert!(r.files.iter().all(|f| !f.changed));
    }

    #[test]
    fn a_bad_conflist_or_missing_plugin_changes_nothing() {
        for bad in [
            "",
            "[]",
            "{\"name\":\"x\",\"plugins\":[]}",
            "{\"name\":\"x\",\"plugins\":[{\"type\":\"../sh\"}]}",
            "{\"name\":\"x\",\"plugins\":[{}]}",
        ] {
            let t = tmp("bad");
            let o = opts(&t);
            fs::write(&o.cni_conf, bad).unwrap();
            let e = install(&o).unwrap_err();
            assert!(
                matches!(
                    e,
                    InstallError::BadConflist { .. } | InstallError::Io { .. }
                ),
                "{bad}: {e}"
            );
            assert!(!o.cni_bin_dir.exists(), "{bad}: nothing installed");
        }
        let t = tmp("nosrc");
        let mut o = opts(&t);
        o.plugins.push("sbr".into());
        let e = install(&o).unwrap_err();
        assert!(e.to_string().contains("sbr"), "{e}");
        assert!(!o.cni_bin_dir.exists());
        for name in ["../x.conflist", "10-flannel.conf", ""] {
            let t = tmp("name");
            let mut o = opts(&t);
            o.cni_conf_name = name.into();
            assert!(
                matches!(install(&o), Err(InstallError::BadName(_))),
                "{name}"
            );
        }
    }

    #[test]
    fn leftovers_of_a_killed_run_are_removed() {
        let t = tmp("left");
        let o = opts(&t);
        fs::create_dir_all(&o.cni_bin_dir).unwrap();
        let left = o.cni_bin_dir.join(format!(".flannel{TMP_MARK}1234"));
        fs::write(&left, "half").unwrap();
        install(&o).unwrap();
        assert!(!left.exists());
    }
}
