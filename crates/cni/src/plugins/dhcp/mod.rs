//! The `dhcp` IPAM plugin, drop-in for the reference (`plugins/ipam/dhcp`) in its keys and results: one binary,
//! two roles. `dhcp daemon [flags]` runs the DHCP clients (see [`daemon`]); called by a runtime, the plugin asks
//! the daemon over its unix socket: ADD and CHECK `Allocate` (the lease of the attachment, acquired when the daemon
//! has none), DEL `Release`, STATUS whether the daemon answers.
//!
//! Keys (`ipam`): `daemonSocketPath` (default `/run/cni/dhcp.sock`), `provide` (`[{option, value | fromArg}]`:
//! options the client sends, a `fromArg` naming a `CNI_ARGS` key), `request` (`[{option, skipDefault}]`: options
//! it asks for; the defaults, router and subnet mask, unless `skipDefault`). Options are named as in
//! dhcp-options(5) (`host-name`, `routers`, `subnet-mask`, `dhcp-client-identifier`, `user-class`,
//! `vendor-class-identifier`) or by number.
//!
//! The plugin and the daemon speak our own protocol: a reference `dhcp` binary cannot use our daemon, nor ours
//! the reference daemon.

pub mod client;
pub mod daemon;
pub mod msg;
pub mod options;

use crate::error::{CniError, ERR_NOT_AVAILABLE, ERR_TRY_AGAIN_LATER};
use crate::plugin::Plugin;
use crate::skel::CmdArgs;
use crate::types::{CniResult, NetConf};
use daemon::{Answer, Request};
use options::IpamConf;
use std::io::{Read, Write};
use std::time::Duration;

/// dhcp's row of the plugin table.
pub const PLUGIN: Plugin = Plugin {
    name: "dhcp",
    versions: crate::version::SUPPORTED,
    add: |_, args, conf| Box::pin(async move { cmd_add(args, conf).map(Some) }),
    del: |_, args, conf| Box::pin(async move { cmd_del(args, conf).map(|()| None) }),
    check: |_, args, conf| Box::pin(async move { cmd_check(args, conf).map(|()| None) }),
    gc: None,
    status: Some(|_, args, conf| Box::pin(async move { cmd_status(args, conf).map(|()| None) })),
};

/// A line on the daemon's standard error.
pub(crate) fn log(msg: &str) {
    let t = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    eprintln!("{}.{:03} {msg}", t.as_secs(), t.subsec_millis());
}

fn call(args: &CmdArgs, method: &str) -> Result<Answer, CniError> {
    let ipam = IpamConf::from_stdin(&args.stdin)?;
    let socket = ipam.socket_path();
    // The daemon may run in another working directory: the namespace path goes absolute.
    let netns = if args.netns.is_empty() {
        String::new()
    } else {
        std::path::absolute(&args.netns)
            .map_err(|e| {
                CniError::internal(format!(
                    "failed to make \"{}\" an absolute path: {e}",
                    args.netns
                ))
            })?
            .to_string_lossy()
            .into_owned()
    };
    let req = Request {
        method: method.to_string(),
        container_id: args.container_id.clone(),
        netns,
        ifname: args.ifname.clone(),
        args: args.args.clone(),
        stdin: String::from_utf8_lossy(&args.stdin).into_owned(),
    };
    let code = if method == "Status" {
        ERR_NOT_AVAILABLE
    } else {
        // The daemon not (yet) running is what a retry can cure.
        ERR_TRY_AGAIN_LATER
    };
    let mut conn = std::os::unix::net::UnixStream::connect(socket).map_err(|e| {
        CniError::new(
            code,
            format!(
                "error dialing DHCP daemon: dial unix {socket}: {e} (is `dhcp daemon` running?)"
            ),
        )
    })?;
    let io = |e: std::io::Error| {
        CniError::new(
            code,
            format!("error calling DHCP.{method} on {socket}: {e}"),
        )
    };
    let body = serde_json::to_vec(&req).map_err(|e| CniError::internal(e.to_string()))?;
    conn.write_all(&body).map_err(io)?;
    conn.shutdown(std::net::Shutdown::Write).map_err(io)?;
    let mut out = Vec::new();
    conn.take(daemon::MAX_REQUEST)
        .read_to_end(&mut out)
        .map_err(io)?;
    let a: Answer = serde_json::from_slice(&out).map_err(|e| {
        CniError::new(
            code,
            format!("error calling DHCP.{method} on {socket}: bad answer: {e}"),
        )
    })?;
    if let Some(e) = a.error {
        return Err(
            CniError::new(e.code, format!("error calling DHCP.{method}: {}", e.msg))
                .with_details(e.details),
        );
    }
    Ok(a)
}

fn allocate(args: &CmdArgs) -> Result<CniResult, CniError> {
    let a = call(args, "Allocate")?;
    let v = a
        .result
        .ok_or_else(|| CniError::internal("DHCP daemon returned no result"))?;
    CniResult::from_value(&v, crate::version::CURRENT)
}

fn cmd_add(args: &CmdArgs, conf: &NetConf) -> Result<CniResult, CniError> {
    let mut r = allocate(args)?;
    r.cni_version = conf.version().to_string();
    Ok(r)
}

/// CHECK asks for the lease as ADD does (the reference's CHECK, which acquires one if the daemon has none).
fn cmd_check(args: &CmdArgs, _conf: &NetConf) -> Result<(), CniError> {
    allocate(args).map(|_| ())
}

fn cmd_del(args: &CmdArgs, _conf: &NetConf) -> Result<(), CniError> {
    call(args, "Release").map(|_| ())
}

fn cmd_status(args: &CmdArgs, _conf: &NetConf) -> Result<(), CniError> {
    call(args, "Status").map(|_| ())
}

/// A Go `time.Duration` string (`10s`, `1m30s`, `500ms`, `1.5h`), as the reference's flags take.
pub fn parse_go_duration(s: &str) -> Option<Duration> {
    if s == "0" {
        return Some(Duration::ZERO);
    }
    let mut rest = s;
    let mut total = 0f64;
    if rest.is_empty() {
        return None;
    }
    while !rest.is_empty() {
        let num_len = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .unwrap_or(rest.len());
        let (num, tail) = rest.split_at(num_len);
        let n: f64 = num.parse().ok()?;
        let unit_len = tail
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(tail.len());
        let (unit, tail) = tail.split_at(unit_len);
        let mult = match unit {
            "ns" => 1e-9,
            "us" | "µs" => 1e-6,
            "ms" => 1e-3,
            "s" => 1.0,
            "m" => 60.0,
            "h" => 3600.0,
            _ => return None,
        };
        total += n * mult;
        rest = tail;
    }
    Duration::try_from_secs_f64(total).ok()
}

const USAGE: &str = "Usage of daemon:
  -broadcast
    \tbroadcast DHCP leases
  -hostprefix string
    \toptional prefix to host root
  -pidfile string
    \toptional path to write daemon PID to
  -resendmax duration
    \toptional dhcp client resend max duration (default 1m2s)
  -socketpath string
    \toptional dhcp server socketpath
  -timeout duration
    \toptional dhcp client timeout duration (default 10s)";

/// Parses the daemon's flags the way Go's `flag` package does (`-name value`, `-name=value`, `--name`; booleans
/// alone or `=true/false`).
pub fn parse_daemon_flags(argv: &[String]) -> Result<daemon::DaemonConf, String> {
    let mut conf = daemon::DaemonConf {
        pidfile: None,
        host_prefix: String::new(),
        socket_path: String::new(),
        client: client::ClientConf {
            timeout: Duration::from_secs(10),
            resend_max: client::RESEND_DELAY_MAX,
            broadcast: false,
        },
    };
    let mut it = argv.iter();
    while let Some(a) = it.next() {
        let Some(flag) = a.strip_prefix("--").or_else(|| a.strip_prefix('-')) else {
            break; // flag parsing stops at the first non-flag, as Go's
        };
        if flag.is_empty() {
            break;
        }
        let (name, inline) = match flag.split_once('=') {
            Some((n, v)) => (n, Some(v.to_string())),
            None => (flag, None),
        };
        if name == "broadcast" {
            conf.client.broadcast = match inline.as_deref() {
                None | Some("true") | Some("1") | Some("t") | Some("T") | Some("TRUE") => true,
                Some("false") | Some("0") | Some("f") | Some("F") | Some("FALSE") => false,
                Some(v) => return Err(format!("invalid boolean value \"{v}\" for -broadcast")),
            };
            continue;
        }
        let mut value = || -> Result<String, String> {
            match &inline {
                Some(v) => Ok(v.clone()),
                None => it
                    .next()
                    .cloned()
                    .ok_or_else(|| format!("flag needs an argument: -{name}")),
            }
        };
        match name {
            "pidfile" => {
                conf.pidfile =
                    Some(value()?.into()).filter(|p: &std::path::PathBuf| !p.as_os_str().is_empty())
            }
            "hostprefix" => conf.host_prefix = value()?,
            "socketpath" => conf.socket_path = value()?,
            "timeout" | "resendmax" => {
                let v = value()?;
                let d = parse_go_duration(&v).ok_or_else(|| {
                    format!("invalid value \"{v}\" for flag -{name}: parse error")
                })?;
                if name == "timeout" {
                    conf.client.timeout = d;
                } else {
                    conf.client.resend_max = d;
                }
            }
            "h" | "help" => return Err(String::new()),
            n => return Err(format!("flag provided but not defined: -{n}")),
        }
    }
    if conf.socket_path.is_empty() {
        conf.socket_path = options::DEFAULT_SOCKET_PATH.to_string();
    }
    Ok(conf)
}

/// `dhcp daemon [flags]`: exits 2 on bad flags (as Go's `flag.ExitOnError`), 1 when the daemon fails.
pub fn daemon_main(argv: &[String]) -> ! {
    let conf = match parse_daemon_flags(argv) {
        Ok(c) => c,
        Err(e) => {
            if !e.is_empty() {
                eprintln!("{e}");
            }
            eprintln!("{USAGE}");
            std::process::exit(2);
        }
    };
    match daemon::run(conf) {
        Ok(()) => std::process::exit(0),
        Err(e) => {
            log(&e);
            std::process::exit(1);
        }
    }
}

/// The binary's entry point: the daemon with `daemon` as first argument, the plugin otherwise.
pub fn main() -> ! {
    let argv: Vec<String> = std::env::args().collect();
    if argv.get(1).map(String::as_str) == Some("daemon") {
        daemon_main(argv.get(2..).unwrap_or_default());
    }
    super::main("dhcp")
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn go_durations() {
        assert_eq!(parse_go_duration("10s"), Some(Duration::from_secs(10)));
        assert_eq!(parse_go_duration("1m2s"), Some(Duration::from_secs(62)));
        assert_eq!(parse_go_duration("500ms"), Some(Duration::from_millis(500)));
        assert_eq!(parse_go_duration("1.5h"), Some(Duration::from_secs(5400)));
        assert_eq!(parse_go_duration("0"), Some(Duration::ZERO));
        for bad in ["", "10", "s", "1x", "-1s", "1..2s"] {
            assert_eq!(parse_go_duration(bad), None, "{bad}");
        }
    }

    #[test]
    fn daemon_flags() {
        let a = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        let c = parse_daemon_flags(&a(&[])).unwrap();
        assert_eq!(c.socket_path, "/run/cni/dhcp.sock");
        assert_eq!(c.client.timeout, Duration::from_secs(10));
        assert_eq!(c.client.resend_max, Duration::from_secs(62));
        assert!(!c.client.broadcast);
        let c = parse_daemon_flags(&a(&[
            "-socketpath",
            "/tmp/x.sock",
            "--timeout=3s",
            "-broadcast",
            "-resendmax",
            "5s",
            "-hostprefix=/host",
            "-pidfile",
            "/tmp/p",
        ]))
        .unwrap();
        assert_eq!(c.socket_path, "/tmp/x.sock");
        assert_eq!(c.host_prefix, "/host");
        assert_eq!(c.client.timeout, Duration::from_secs(3));
        assert_eq!(c.client.resend_max, Duration::from_secs(5));
        assert!(c.client.broadcast);
        assert_eq!(c.pidfile.unwrap().to_str(), Some("/tmp/p"));
        assert!(parse_daemon_flags(&a(&["-nope"])).is_err());
        assert!(parse_daemon_flags(&a(&["-timeout"])).is_err());
        assert!(parse_daemon_flags(&a(&["-timeout", "ten"])).is_err());
    }

    proptest! {
        #[test]
        fn duration_parse_never_panics(s in ".{0,20}") {
            let _ = parse_go_duration(&s);
        }

        #[test]
        fn flag_parse_never_panics(v in proptest::collection::vec(".{0,12}", 0..6)) {
            let _ = parse_daemon_flags(&v);
        }
    }
}
