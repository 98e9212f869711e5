//! Running another plugin, as libcni's `pkg/invoke` does: find it on `CNI_PATH`, exec it with the CNI environment
//! and the configuration on stdin, decode its result or error.
//!
//! Plugins that delegate (flannel to bridge, bridge to its IPAM plugin) get an [`Exec`] handed in with their
//! [`crate::plugin::Ctx`] and never exec anything themselves, so a test can give them a recording executor. The
//! default one ([`crate::plugin::DefaultExec`]) runs a delegate that is this very build in-process and execs
//! everything else with [`exec`].

use crate::error::{CniError, ERR_INTERNAL};
use crate::skel::{CmdArgs, Command, Outcome};
use crate::types::CniResult;
use std::future::Future;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::process::Stdio;

/// A future the plugins' current-thread runtime polls; not `Send` (the netlink handles are not).
pub type LocalBoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + 'a>>;

/// How a plugin finds and runs its delegates.
pub trait Exec {
    /// Finds `plugin` on `cni_path` (libcni's `FindInPath`).
    fn find(&self, plugin: &str, cni_path: &str) -> Result<PathBuf, CniError> {
        find_in_path(plugin, cni_path)
    }

    /// Runs the plugin at `path` (as [`Exec::find`] returned it) for `args.command` with `args.stdin` as its
    /// configuration and the rest of `args` as its environment.
    fn run<'a>(&'a self, path: &'a Path, args: CmdArgs) -> LocalBoxFuture<'a, Outcome>;
}

/// Finds `plugin` on `CNI_PATH`.
pub fn find_in_path(plugin: &str, cni_path: &str) -> Result<PathBuf, CniError> {
    if plugin.is_empty() || plugin.contains('/') {
        return Err(CniError::config(format!(
            "invalid plugin type \"{plugin}\""
        )));
    }
    for dir in cni_path.split(':').filter(|d| !d.is_empty()) {
        let p = Path::new(dir).join(plugin);
        if p.is_file() {
            return Ok(p);
        }
    }
    Err(CniError::config(format!(
        "failed to find plugin \"{plugin}\" in path [{cni_path}]"
    )))
}

/// `FLANNEL_RS_DELEGATE_EXEC=1` (or `true`): exec every delegate, even our own build (to compare, or to debug).
pub fn force_exec() -> bool {
    std::env::var("FLANNEL_RS_DELEGATE_EXEC").is_ok_and(|v| v == "1" || v == "true")
}

/// Execs a plugin binary as a runtime would and parses its result or error.
pub fn exec(path: &Path, args: &CmdArgs) -> Outcome {
    let mut child = std::process::Command::new(path)
        .env("CNI_COMMAND", args.command.as_str())
        .env("CNI_CONTAINERID", &args.container_id)
        .env("CNI_NETNS", &args.netns)
        .env("CNI_IFNAME", &args.ifname)
        .env("CNI_ARGS", &args.args)
        .env("CNI_PATH", &args.path)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .map_err(|e| CniError::io(format!("failed to exec plugin {}: {e}", path.display())))?;
    if let Some(mut stdin) = child.stdin.take() {
        // A plugin may exit before reading all of stdin; its exit status tells what happened.
        let _ = stdin.write_all(&args.stdin);
    }
    let out = child
        .wait_with_output()
        .map_err(|e| CniError::io(format!("failed to wait for plugin {}: {e}", path.display())))?;
    parse_output(path, args.command, &out.status, &out.stdout)
}

/// What a delegate's exit status and stdout mean: its error JSON (code, msg, details) when it failed, its result
/// when an ADD succeeded, nothing otherwise. A delegate can print anything; that is an error, never a panic.
fn parse_output(
    path: &Path,
    command: Command,
    status: &std::process::ExitStatus,
    stdout: &[u8],
) -> Outcome {
    if !status.success() {
        if let Ok(e) = serde_json::from_slice::<serde_json::Value>(stdout) {
            if let (Some(code), Some(msg)) = (
                e.get("code").and_then(|c| c.as_u64()),
                e.get("msg").and_then(|m| m.as_str()),
            ) {
                let details = e
                    .get("details")
                    .and_then(|d| d.as_str())
                    .unwrap_or_default();
                return Err(
                    CniError::new(u32::try_from(code).unwrap_or(ERR_INTERNAL), msg)
                        .with_details(details),
                );
            }
        }
        return Err(CniError::internal(format!(
            "plugin {} failed ({}): {}",
            path.display(),
            status,
            String::from_utf8_lossy(stdout).trim()
        )));
    }
    if command != Command::Add || stdout.iter().all(u8::is_ascii_whitespace) {
        return Ok(None);
    }
    let v: serde_json::Value = serde_json::from_slice(stdout).map_err(|e| {
        CniError::decode(format!(
            "plugin {} printed an invalid result: {e}",
            path.display()
        ))
    })?;
    CniResult::from_value(&v, "1.0.0").map(Some)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::os::unix::process::ExitStatusExt;

    #[test]
    fn error_json_and_results() {
        let p = Path::new("/x/bridge");
        let fail = std::process::ExitStatus::from_raw(1 << 8);
        let ok = std::process::ExitStatus::from_raw(0);
        let e = parse_output(
            p,
            Command::Add,
            &fail,
            br#"{"code":7,"msg":"bad","details":"d"}"#,
        )
        .unwrap_err();
        assert_eq!(
            (e.code, e.msg.as_str(), e.details.as_str()),
            (7, "bad", "d")
        );
        let e = parse_output(p, Command::Del, &fail, b"[1]").unwrap_err();
        assert_eq!(e.code, ERR_INTERNAL);
        assert_eq!(parse_output(p, Command::Del, &ok, b"junk"), Ok(None));
        let r = parse_output(
            p,
            Command::Add,
            &ok,
            br#"{"cniVersion":"1.0.0","ips":[{"address":"10.1.0.2/24"}]}"#,
        )
        .unwrap()
        .unwrap();
        assert_eq!(r.ips.len(), 1);
        assert_eq!(
            parse_output(p, Command::Add, &ok, b"[1]").unwrap_err().code,
            6
        );
    }

    proptest! {
        /// Whatever a delegate prints, with whatever exit status: a result or an error, never a panic.
        #[test]
        fn delegate_output_never_panics(out in prop_oneof![
            prop::collection::vec(any::<u8>(), 0..200),
            (any::<i64>(), ".{0,10}").prop_map(|(c, m)| format!(r#"{{"code":{c},"msg":"{m}"}}"#).into_bytes()),
            ".{0,100}".prop_map(|s| format!(r#"{{"cniVersion":"1.0.0","ips":[{s}]}}"#).into_bytes()),
        ], raw in prop::sample::select(vec![0, 1 << 8, 9]), add in any::<bool>()) {
            let cmd = if add { Command::Add } else { Command::Del };
            let _ = parse_output(Path::new("/x"), cmd, &std::process::ExitStatus::from_raw(raw), &out);
        }
    }
}
