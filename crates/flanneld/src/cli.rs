//! Command-line flags and `FLANNELD_*` environment variables, compatible with upstream flanneld v0.28.
//!
//! Upstream parses its flags with Go's `flag` package and then fills every flag that was *not* given on the command
//! line from `FLANNELD_<FLAG>` (upper case, `-` → `_`; `coreos/pkg/flagutil.SetFlagsFromEnv`, empty values
//! ignored). This module reproduces that on top of clap:
//!
//! * Go's `flag` accepts one or two dashes (`-ip-masq`, `--iface=eth0`, `-iface eth0`); argv is normalised to
//!   `--name=value` for the names we know before clap sees it ([`normalize_args`]).
//! * Booleans are Go-style: `--ip-masq`, `--ip-masq=false`, `=1`/`=0`/`=t`/`=F`/`=TRUE`… (`strconv.ParseBool`).
//!   `--ip-masq false` is not a value (as in Go): `false` is then a stray argument and an error.
//! * Integers accept Go's `strconv.ParseInt(s, 0, 64)` forms (`60`, `0x3c`, `0o74`, `1_000`).
//! * Repeatable `--iface`/`--iface-regex` append; a scalar flag given twice keeps the last value (as in Go).
//! * The environment only fills flags absent from the command line; `FLANNELD_IFACE` gives ONE entry, exactly as
//!   upstream's `flagSlice.Set` (it does not split on commas).

use clap::builder::ArgAction;
use clap::parser::ValueSource;
use clap::{Arg, Command, FromArgMatches};
use std::collections::HashSet;
use std::error::Error as _;
use std::ffi::OsString;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::path::PathBuf;
use std::time::Duration;

/// Prefix of every environment variable (`FLANNELD_<FLAG>`).
pub const ENV_PREFIX: &str = "FLANNELD";
/// Default `--etcd-endpoints`.
pub const DEFAULT_ETCD_ENDPOINTS: &str = "http://127.0.0.1:4001,http://127.0.0.1:2379";
/// Default `--etcd-prefix`.
pub const DEFAULT_ETCD_PREFIX: &str = "/coreos.com/network";
/// Default `--subnet-file`.
pub const DEFAULT_SUBNET_FILE: &str = "/run/flannel/subnet.env";
/// Default `--kube-annotation-prefix`.
pub const DEFAULT_KUBE_ANNOTATION_PREFIX: &str = "flannel.alpha.coreos.com";
/// Default `--healthz-ip`.
pub const DEFAULT_HEALTHZ_IP: &str = "0.0.0.0";
/// Default `--net-config-path`.
pub const DEFAULT_NET_CONFIG_PATH: &str = "/etc/kube-flannel/net-conf.json";
/// Default `--subnet-lease-renew-margin`, in minutes.
pub const DEFAULT_RENEW_MARGIN_MIN: u32 = 60;
/// Default `--iptables-resync`, in seconds.
pub const DEFAULT_IPTABLES_RESYNC_S: u32 = 5;
/// Smallest and largest `--subnet-lease-renew-margin` (minutes; a lease lives 24 h).
pub const RENEW_MARGIN_RANGE: std::ops::RangeInclusive<u32> = 1..=1439;

/// Flags that are not read from the environment. Upstream checks `--version` before it reads the environment, so
/// `FLANNELD_VERSION` has no effect there; we keep that.
const NO_ENV: &[&str] = &["version"];

/// Every flanneld option, after command line, environment and defaults are merged.
#[derive(Debug, Clone, PartialEq, Eq, clap::Args)]
pub struct Options {
    /// Comma-separated list of etcd endpoints
    #[arg(long, value_name = "URLS", default_value = DEFAULT_ETCD_ENDPOINTS, value_delimiter = ',',
          action = ArgAction::Set, num_args = 1)]
    pub etcd_endpoints: Vec<String>,

    /// etcd key prefix of the network (its config is at <prefix>/config)
    #[arg(long, value_name = "PREFIX", default_value = DEFAULT_ETCD_PREFIX)]
    pub etcd_prefix: String,

    /// TLS private key file for etcd
    #[arg(long, value_name = "FILE", value_parser = path_parser())]
    pub etcd_keyfile: Option<PathBuf>,

    /// TLS certificate file for etcd
    #[arg(long, value_name = "FILE", value_parser = path_parser())]
    pub etcd_certfile: Option<PathBuf>,

    /// TLS certificate authority file for etcd
    #[arg(long, value_name = "FILE", value_parser = path_parser())]
    pub etcd_cafile: Option<PathBuf>,

    /// Username for etcd authentication
    #[arg(long, value_name = "USER")]
    pub etcd_username: Option<String>,

    /// Password for etcd authentication
    #[arg(long, value_name = "PASSWORD")]
    pub etcd_password: Option<String>,

    /// Interface (name or IP address) for traffic between hosts; repeat to try several in order, first match wins
    #[arg(long, value_name = "NAME|IP", action = ArgAction::Append)]
    pub iface: Vec<String>,

    /// Regex matched against interface addresses, then names; repeat to try several in order; tried after --iface
    #[arg(long, value_name = "REGEX", action = ArgAction::Append, value_parser = parse_regex)]
    pub iface_regex: Vec<String>,

    /// Use the interface the kernel routes this IP through (like `ip route get <IP>`); tried after --iface-regex
    #[arg(long, value_name = "IP", value_parser = parse_ip)]
    pub iface_can_reach: Option<IpAddr>,

    /// File the subnet, MTU and masquerade settings are written to
    #[arg(long, value_name = "FILE", default_value = DEFAULT_SUBNET_FILE, value_parser = path_parser())]
    pub subnet_file: PathBuf,

    /// IPv4 address other nodes reach this one at (default: the interface's address)
    #[arg(long, value_name = "IP", value_parser = parse_ipv4)]
    pub public_ip: Option<Ipv4Addr>,

    /// IPv6 address other nodes reach this one at (default: the interface's address)
    #[arg(long, value_name = "IP", value_parser = parse_ipv6)]
    pub public_ipv6: Option<Ipv6Addr>,

    /// Renew the subnet lease this many minutes before it expires (1 to 1439)
    #[arg(long, value_name = "MINUTES", default_value = "60", value_parser = parse_renew_margin)]
    pub subnet_lease_renew_margin: u32,

    /// Masquerade traffic from pods to destinations outside the flannel network
    #[arg(long, value_name = "BOOL", num_args = 0..=1, require_equals = true, default_value = "false",
          default_missing_value = "true", action = ArgAction::Set, value_parser = parse_go_bool)]
    pub ip_masq: bool,

    /// Leave out --random-fully (nftables: fully-random) from the MASQUERADE rules: source ports are then chosen
    /// the kernel's default way, not fully at random
    #[arg(long, value_name = "BOOL", num_args = 0..=1, require_equals = true, default_value = "false",
          default_missing_value = "true", action = ArgAction::Set, value_parser = parse_go_bool)]
    pub ip_masq_fully_random_disable: bool,

    /// Get subnets from the Kubernetes API instead of etcd: this node's is its Node's spec.podCIDR(s), peers are
    /// the other Nodes (node name from NODE_NAME, or from the pod POD_NAMESPACE/POD_NAME)
    #[arg(long, value_name = "BOOL", num_args = 0..=1, require_equals = true, default_value = "false",
          default_missing_value = "true", action = ArgAction::Set, value_parser = parse_go_bool)]
    pub kube_subnet_mgr: bool,

    /// Kubernetes API server URL (not needed inside a pod)
    #[arg(long, value_name = "URL")]
    pub kube_api_url: Option<String>,

    /// Prefix of flannel's node annotations; may contain one "/", else one is appended
    #[arg(long, value_name = "PREFIX", default_value = DEFAULT_KUBE_ANNOTATION_PREFIX)]
    pub kube_annotation_prefix: String,

    /// kubeconfig file (not needed inside a pod)
    #[arg(long, value_name = "FILE", value_parser = path_parser())]
    pub kubeconfig_file: Option<PathBuf>,

    /// Print the version and exit
    #[arg(long, value_name = "BOOL", num_args = 0..=1, require_equals = true, default_value = "false",
          default_missing_value = "true", action = ArgAction::Set, value_parser = parse_go_bool)]
    pub version: bool,

    /// Address the health server listens on
    #[arg(long, value_name = "IP", default_value = DEFAULT_HEALTHZ_IP)]
    pub healthz_ip: String,

    /// Port the health server listens on (0 disables it)
    #[arg(long, value_name = "PORT", default_value = "0", value_parser = parse_port)]
    pub healthz_port: u16,

    /// Seconds between checks (and repairs) of the masquerade and forward rules
    #[arg(long, value_name = "SECONDS", default_value = "5", value_parser = parse_resync)]
    pub iptables_resync: u32,

    /// Add ACCEPT rules for the flannel network to the FORWARD chain
    #[arg(long, value_name = "BOOL", num_args = 0..=1, require_equals = true, default_value = "true",
          default_missing_value = "true", action = ArgAction::Set, value_parser = parse_go_bool)]
    pub iptables_forward_rules: bool,

    /// Keep a blackhole route for this node's pod subnet
    #[arg(long, value_name = "BOOL", num_args = 0..=1, require_equals = true, default_value = "false",
          default_missing_value = "true", action = ArgAction::Set, value_parser = parse_go_bool)]
    pub ip_blackhole_route: bool,

    /// Network configuration file (Kubernetes subnet manager)
    #[arg(long, value_name = "FILE", default_value = DEFAULT_NET_CONFIG_PATH, value_parser = path_parser())]
    pub net_config_path: PathBuf,

    /// Set the node's NetworkUnavailable condition to false once ready (Kubernetes subnet manager)
    #[arg(long, value_name = "BOOL", num_args = 0..=1, require_equals = true, default_value = "true",
          default_missing_value = "true", action = ArgAction::Set, value_parser = parse_go_bool)]
    pub set_node_network_unavailable: bool,

    /// Log verbosity (klog's -v, also written -v=N or -v N): 0 info, 1 data-path messages, higher is more
    #[arg(long = "v", value_name = "LEVEL", default_value = "0", value_parser = parse_klog_level)]
    pub v: i32,

    /// Per-file log levels, pattern=N,... (accepted for compatibility; not used)
    #[arg(long, value_name = "PATTERN=N,...")]
    pub vmodule: Option<String>,

    /// Emit a stack trace when logging hits file:N (accepted for compatibility; not used)
    #[arg(long = "log_backtrace_at", value_name = "FILE:N")]
    pub log_backtrace_at: Option<String>,

    /// Directory of the embedded lease store, used instead of etcd (flannel-rs extension)
    #[arg(long, value_name = "DIR", value_parser = path_parser())]
    pub local_store: Option<PathBuf>,

    /// Answer /status (every node's lease and public IP) to clients on other hosts too; by default only loopback
    /// clients get it, while /healthz and /readyz answer everyone (flannel-rs extension)
    #[arg(long, value_name = "BOOL", num_args = 0..=1, require_equals = true, default_value = "false",
          default_missing_value = "true", action = ArgAction::Set, value_parser = parse_go_bool)]
    pub status_remote: bool,
}

impl Default for Options {
    fn default() -> Self {
        Self {
            etcd_endpoints: DEFAULT_ETCD_ENDPOINTS
                .split(',')
                .map(str::to_string)
                .collect(),
            etcd_prefix: DEFAULT_ETCD_PREFIX.into(),
            etcd_keyfile: None,
            etcd_certfile: None,
            etcd_cafile: None,
            etcd_username: None,
            etcd_password: None,
            iface: Vec::new(),
            iface_regex: Vec::new(),
            iface_can_reach: None,
            subnet_file: DEFAULT_SUBNET_FILE.into(),
            public_ip: None,
            public_ipv6: None,
            subnet_lease_renew_margin: DEFAULT_RENEW_MARGIN_MIN,
            ip_masq: false,
            ip_masq_fully_random_disable: false,
            kube_subnet_mgr: false,
            kube_api_url: None,
            kube_annotation_prefix: DEFAULT_KUBE_ANNOTATION_PREFIX.into(),
            kubeconfig_file: None,
            version: false,
            healthz_ip: DEFAULT_HEALTHZ_IP.into(),
            healthz_port: 0,
            iptables_resync: DEFAULT_IPTABLES_RESYNC_S,
            iptables_forward_rules: true,
            ip_blackhole_route: false,
            net_config_path: DEFAULT_NET_CONFIG_PATH.into(),
            set_node_network_unavailable: true,
            v: 0,
            vmodule: None,
            log_backtrace_at: None,
            local_store: None,
            status_remote: false,
        }
    }
}

impl Options {
    /// `--subnet-lease-renew-margin` as a duration.
    pub fn renew_margin(&self) -> Duration {
        Duration::from_secs(u64::from(self.subnet_lease_renew_margin) * 60)
    }

    /// `--iptables-resync` as a duration.
    pub fn iptables_resync_period(&self) -> Duration {
        Duration::from_secs(u64::from(self.iptables_resync))
    }

    /// The health server's `host:port`, or `None` when `--healthz-port` is 0 (disabled).
    pub fn healthz_addr(&self) -> Option<String> {
        if self.healthz_port == 0 {
            return None;
        }
        // Like Go's net.JoinHostPort: brackets around an IPv6 literal.
        Some(if self.healthz_ip.contains(':') {
            format!("[{}]:{}", self.healthz_ip, self.healthz_port)
        } else {
            format!("{}:{}", self.healthz_ip, self.healthz_port)
        })
    }

    /// Empty string values (`--etcd-keyfile=`) mean "not set", as an empty Go string does.
    fn drop_empty(mut self) -> Self {
        fn s(v: &mut Option<String>) {
            if v.as_deref() == Some("") {
                *v = None;
            }
        }
        fn p(v: &mut Option<PathBuf>) {
            if v.as_ref().is_some_and(|p| p.as_os_str().is_empty()) {
                *v = None;
            }
        }
        p(&mut self.etcd_keyfile);
        p(&mut self.etcd_certfile);
        p(&mut self.etcd_cafile);
        s(&mut self.etcd_username);
        s(&mut self.etcd_password);
        s(&mut self.kube_api_url);
        p(&mut self.kubeconfig_file);
        s(&mut self.vmodule);
        s(&mut self.log_backtrace_at);
        p(&mut self.local_store);
        self
    }
}

/// A command line or environment that cannot be turned into [`Options`].
#[derive(Debug, thiserror::Error)]
pub enum CliError {
    /// Bad command line, or `--help` was asked for (clap renders both; see [`clap::Error::kind`]).
    #[error("{0}")]
    Clap(#[from] clap::Error),
    /// An environment variable holds a value its flag does not accept.
    #[error("invalid value {value:?} in ${var} (flag --{flag}): {reason}")]
    Env {
        /// The variable, e.g. `FLANNELD_IP_MASQ`.
        var: String,
        /// The flag it sets.
        flag: String,
        /// The value found.
        value: String,
        /// Why it was refused.
        reason: String,
    },
}

impl CliError {
    /// The exit status `parse` uses: 0 for `--help`, 2 for a bad command line or environment (as Go's `flag`).
    pub fn exit_code(&self) -> i32 {
        match self {
            Self::Clap(e) => e.exit_code(),
            Self::Env { .. } => 2,
        }
    }
}

/// `FLANNELD_<FLAG>` for a flag name: upper case, `-` → `_`.
pub fn env_var(flag: &str) -> String {
    format!("{ENV_PREFIX}_{}", flag.replace('-', "_").to_uppercase())
}

/// The clap command: every flag, with its default and environment variable in the help.
pub fn command() -> Command {
    let cmd = Command::new("flanneld")
        .disable_version_flag(true)
        .args_override_self(true)
        .dont_collapse_args_in_usage(true);
    // After augment_args, which would otherwise take the struct's doc comment as the description.
    let cmd = <Options as clap::Args>::augment_args(cmd)
        .about("flannel daemon: leases a subnet per node and programs the overlay between nodes")
        .after_help(
            "Flags also take Go's forms: -flag, -flag=value, -flag value; booleans --flag, --flag=false. \
             Each flag FOO-BAR not given on the command line is read from FLANNELD_FOO_BAR.\n\n\
             `flanneld install-cni` installs the CNI plugins and the conflist on the node \
             (the DaemonSet's init step; `flanneld install-cni --help`).",
        );
    cmd.mut_args(|a| {
        let Some(long) = a.get_long() else {
            return a;
        };
        if NO_ENV.contains(&long) {
            return a;
        }
        let env = env_var(long);
        let help = a.get_help().map(|h| h.to_string()).unwrap_or_default();
        a.help(format!("{help} [env: {env}]"))
    })
}

/// Parses `args` (the first item is the program name, as in `std::env::args_os`) with environment lookups through
/// `env`, so tests need not touch the process environment. Precedence: command line, then `FLANNELD_*`, then the
/// default.
pub fn parse_from<I, T>(args: I, env: impl Fn(&str) -> Option<String>) -> Result<Options, CliError>
where
    I: IntoIterator<Item = T>,
    T: Into<OsString>,
{
    let cmd = command();
    let mut argv = normalize_args(args.into_iter().map(Into::into).collect(), &cmd);
    if argv.is_empty() {
        argv.push(OsString::from("flanneld"));
    }
    let bin = argv[0].clone();

    // First the command line alone: which flags did it set?
    let cli = cmd.clone().try_get_matches_from(argv.iter())?;

    // Then every flag it left unset that has a non-empty environment variable (flagutil.SetFlagsFromEnv).
    let mut seen = HashSet::new();
    for arg in cmd.get_arguments() {
        let Some(long) = arg.get_long() else { continue };
        if NO_ENV.contains(&long) || !seen.insert(long) {
            continue;
        }
        if cli.value_source(arg.get_id().as_str()) == Some(ValueSource::CommandLine) {
            continue;
        }
        let var = env_var(long);
        let Some(value) = env(&var).filter(|v| !v.is_empty()) else {
            continue;
        };
        let one = OsString::from(format!("--{long}={value}"));
        if let Err(e) = cmd.clone().try_get_matches_from([bin.clone(), one.clone()]) {
            return Err(CliError::Env {
                var,
                flag: long.to_string(),
                value,
                reason: clap_reason(&e),
            });
        }
        argv.push(one);
    }

    let m = cmd.try_get_matches_from(argv)?;
    Ok(Options::from_arg_matches(&m)?.drop_empty())
}

/// Parses the process's arguments and environment; on error prints clap's message (or the help) and exits.
pub fn parse() -> Options {
    match parse_from(std::env::args_os(), |k| std::env::var(k).ok()) {
        Ok(o) => o,
        Err(CliError::Clap(e)) => e.exit(),
        Err(e) => {
            eprintln!("error: {e}");
            std::process::exit(e.exit_code())
        }
    }
}

/// The short reason of a clap error (the value parser's message when there is one).
fn clap_reason(e: &clap::Error) -> String {
    match e.source() {
        Some(s) => s.to_string(),
        None => e
            .render()
            .to_string()
            .lines()
            .next()
            .unwrap_or_default()
            .trim_start_matches("error: ")
            .to_string(),
    }
}

/// Rewrites Go `flag`-style arguments into the form clap expects, for the long names `cmd` knows:
/// `-name` → `--name`, `-name=v`/`--name=v` unchanged in meaning, and `-name v`/`--name v` (a flag that takes a
/// value) → `--name=v`, so that a value starting with `-` is still a value, as in Go. `-h`/`-help`/`--h` → `--help`.
/// Everything after `--` and anything unknown is passed through for clap to judge.
pub fn normalize_args(args: Vec<OsString>, cmd: &Command) -> Vec<OsString> {
    let mut out = Vec::with_capacity(args.len());
    let mut it = args.into_iter();
    if let Some(bin) = it.next() {
        out.push(bin);
    }
    while let Some(a) = it.next() {
        let Some(s) = a.to_str() else {
            out.push(a);
            continue;
        };
        if s == "--" {
            out.push(a);
            out.extend(it.by_ref());
            break;
        }
        let body = match s.strip_prefix("--").or_else(|| s.strip_prefix('-')) {
            Some(b) if !b.is_empty() && !b.starts_with('-') && !b.starts_with('=') => b,
            _ => {
                out.push(a);
                continue;
            }
        };
        let (name, value) = match body.split_once('=') {
            Some((n, v)) => (n, Some(v)),
            None => (body, None),
        };
        if name == "help" || name == "h" {
            out.push(OsString::from("--help"));
            continue;
        }
        let Some(arg) = find_long(cmd, name) else {
            out.push(a);
            continue;
        };
        match value {
            Some(v) => out.push(OsString::from(format!("--{name}={v}"))),
            None if takes_value(arg) => match it.next() {
                Some(next) => {
                    let mut joined = OsString::from(format!("--{name}="));
                    joined.push(next);
                    out.push(joined);
                }
                None => out.push(OsString::from(format!("--{name}"))),
            },
            None => out.push(OsString::from(format!("--{name}"))),
        }
    }
    out
}

fn find_long<'a>(cmd: &'a Command, name: &str) -> Option<&'a Arg> {
    cmd.get_arguments().find(|a| a.get_long() == Some(name))
}

/// `true` if the flag needs a value (not a Go-style boolean, whose value is optional).
fn takes_value(a: &Arg) -> bool {
    a.get_num_args().is_none_or(|r| r.min_values() > 0)
}

/// Paths as given; an empty one is allowed (clap's own path parser refuses it) and later means "not set".
fn path_parser() -> impl clap::builder::TypedValueParser<Value = PathBuf> {
    use clap::builder::TypedValueParser as _;
    clap::builder::OsStringValueParser::new().map(PathBuf::from)
}

/// Go's `strconv.ParseBool`.
pub fn parse_go_bool(s: &str) -> Result<bool, String> {
    match s {
        "1" | "t" | "T" | "TRUE" | "true" | "True" => Ok(true),
        "0" | "f" | "F" | "FALSE" | "false" | "False" => Ok(false),
        _ => Err("not a boolean (use true/false, 1/0, t/f)".into()),
    }
}

/// Go's `strconv.ParseInt(s, 0, 64)`: optional sign, `0x`/`0o`/`0b`/leading-`0` prefixes, `_` between digits.
pub fn parse_go_int(s: &str) -> Result<i64, String> {
    let bad = || format!("not an integer: {s:?}");
    let (neg, rest) = match s.as_bytes().first() {
        Some(b'-') => (true, &s[1..]),
        Some(b'+') => (false, &s[1..]),
        _ => (false, s),
    };
    let lower = rest.to_ascii_lowercase();
    let (radix, digits, prefixed) = if let Some(d) = lower.strip_prefix("0x") {
        (16, d, true)
    } else if let Some(d) = lower.strip_prefix("0o") {
        (8, d, true)
    } else if let Some(d) = lower.strip_prefix("0b") {
        (2, d, true)
    } else if lower.len() > 1 && lower.starts_with('0') {
        (8, &lower[1..], true)
    } else {
        (10, lower.as_str(), false)
    };
    // Underscores: only between digits, or right after a base prefix (Go's underscoreOK).
    if digits.contains('_') {
        let b = digits.as_bytes();
        let ok = !digits.ends_with('_')
            && !digits.contains("__")
            && (prefixed || !digits.starts_with('_'))
            && b.iter().all(|c| *c == b'_' || c.is_ascii_alphanumeric());
        if !ok {
            return Err(bad());
        }
    }
    let clean: String = digits.chars().filter(|c| *c != '_').collect();
    if clean.is_empty() || clean.starts_with(['+', '-']) {
        return Err(bad());
    }
    let mag = u64::from_str_radix(&clean, radix).map_err(|_| bad())?;
    if neg {
        0i64.checked_sub_unsigned(mag).ok_or_else(bad)
    } else {
        i64::try_from(mag).map_err(|_| bad())
    }
}

fn parse_renew_margin(s: &str) -> Result<u32, String> {
    let v = parse_go_int(s)?;
    u32::try_from(v)
        .ok()
        .filter(|m| RENEW_MARGIN_RANGE.contains(m))
        .ok_or_else(|| {
            format!(
                "out of range: must be {} to {} minutes",
                RENEW_MARGIN_RANGE.start(),
                RENEW_MARGIN_RANGE.end()
            )
        })
}

fn parse_port(s: &str) -> Result<u16, String> {
    let v = parse_go_int(s)?;
    u16::try_from(v).map_err(|_| "out of range: must be 0 to 65535".to_string())
}

fn parse_resync(s: &str) -> Result<u32, String> {
    let v = parse_go_int(s)?;
    u32::try_from(v)
        .ok()
        .filter(|v| *v >= 1)
        .ok_or_else(|| "out of range: must be at least 1 second".to_string())
}

/// klog's `-v`: `strconv.ParseInt(s, 10, 32)`.
fn parse_klog_level(s: &str) -> Result<i32, String> {
    s.parse::<i32>()
        .map_err(|_| format!("not a log level (a decimal integer): {s:?}"))
}

fn parse_regex(s: &str) -> Result<String, String> {
    regex::Regex::new(s)
        .map(|_| s.to_string())
        .map_err(|e| format!("not a valid regular expression: {e}"))
}

/// An IP address as Go's `net.ParseIP` reads it (an IPv4-mapped IPv6 address is IPv4).
fn parse_ip(s: &str) -> Result<IpAddr, String> {
    match s.parse::<IpAddr>() {
        Ok(IpAddr::V6(v6)) => Ok(v6
            .to_ipv4_mapped()
            .map(IpAddr::V4)
            .unwrap_or(IpAddr::V6(v6))),
        Ok(ip) => Ok(ip),
        Err(_) => Err("not an IP address".into()),
    }
}

fn parse_ipv4(s: &str) -> Result<Ipv4Addr, String> {
    match parse_ip(s)? {
        IpAddr::V4(v4) => Ok(v4),
        IpAddr::V6(_) => Err("not an IPv4 address".into()),
    }
}

fn parse_ipv6(s: &str) -> Result<Ipv6Addr, String> {
    match s.parse::<IpAddr>() {
        Ok(IpAddr::V6(v6)) => Ok(v6),
        Ok(IpAddr::V4(_)) => Err("not an IPv6 address".into()),
        Err(_) => Err("not an IP address".into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::collections::HashMap;

    fn no_env(_: &str) -> Option<String> {
        None
    }

    fn parse(args: &[&str]) -> Result<Options, CliError> {
        let mut v = vec!["flanneld"];
        v.extend_from_slice(args);
        parse_from(v, no_env)
    }

    fn parse_env(args: &[&str], env: &[(&str, &str)]) -> Result<Options, CliError> {
        let map: HashMap<String, String> = env
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        let mut v = vec!["flanneld"];
        v.extend_from_slice(args);
        parse_from(v, move |k| map.get(k).cloned())
    }

    fn ok(args: &[&str]) -> Options {
        match parse(args) {
            Ok(o) => o,
            Err(e) => panic!("{args:?}: {e}"),
        }
    }

    fn err(args: &[&str]) -> String {
        match parse(args) {
            Ok(o) => panic!("{args:?} parsed: {o:?}"),
            Err(e) => e.to_string(),
        }
    }

    fn norm(args: &[&str]) -> Vec<String> {
        let mut v: Vec<OsString> = vec!["flanneld".into()];
        v.extend(args.iter().map(OsString::from));
        normalize_args(v, &command())
            .into_iter()
            .skip(1)
            .map(|s| s.to_string_lossy().into_owned())
            .collect()
    }

    #[test]
    fn command_is_consistent() {
        command().debug_assert();
    }

    #[test]
    fn every_default() {
        let o = ok(&[]);
        assert_eq!(
            o.etcd_endpoints,
            vec!["http://127.0.0.1:4001", "http://127.0.0.1:2379"]
        );
        assert_eq!(o.etcd_prefix, "/coreos.com/network");
        assert_eq!(o.etcd_keyfile, None);
        assert_eq!(o.etcd_certfile, None);
        assert_eq!(o.etcd_cafile, None);
        assert_eq!(o.etcd_username, None);
        assert_eq!(o.etcd_password, None);
        assert!(o.iface.is_empty());
        assert!(o.iface_regex.is_empty());
        assert_eq!(o.iface_can_reach, None);
        assert_eq!(o.subnet_file, PathBuf::from("/run/flannel/subnet.env"));
        assert_eq!(o.public_ip, None);
        assert_eq!(o.public_ipv6, None);
        assert_eq!(o.subnet_lease_renew_margin, 60);
        assert!(!o.ip_masq);
        assert!(!o.ip_masq_fully_random_disable);
        assert!(!o.kube_subnet_mgr);
        assert_eq!(o.kube_api_url, None);
        assert_eq!(o.kube_annotation_prefix, "flannel.alpha.coreos.com");
        assert_eq!(o.kubeconfig_file, None);
        assert!(!o.version);
        assert_eq!(o.healthz_ip, "0.0.0.0");
        assert_eq!(o.healthz_port, 0);
        assert_eq!(o.healthz_addr(), None);
        assert_eq!(o.iptables_resync, 5);
        assert_eq!(o.iptables_resync_period(), Duration::from_secs(5));
        assert!(o.iptables_forward_rules);
        assert!(!o.ip_blackhole_route);
        assert_eq!(
            o.net_config_path,
            PathBuf::from("/etc/kube-flannel/net-conf.json")
        );
        assert!(o.set_node_network_unavailable);
        assert_eq!(o.v, 0);
        assert_eq!(o.vmodule, None);
        assert_eq!(o.log_backtrace_at, None);
        assert_eq!(o.local_store, None);
        assert_eq!(o.renew_margin(), Duration::from_secs(3600));
        assert_eq!(o, Options::default());
    }

    #[test]
    fn every_flag_takes_a_value() {
        let o = ok(&[
            "--etcd-endpoints=https://a:2379,https://b:2379",
            "--etcd-prefix=/x/network",
            "--etcd-keyfile=/k",
            "--etcd-certfile=/c",
            "--etcd-cafile=/ca",
            "--etcd-username=u",
            "--etcd-password=p",
            "--iface=eth0",
            "--iface-regex=^10\\.",
            "--iface-can-reach=192.0.2.9",
            "--subnet-file=/tmp/s.env",
            "--public-ip=203.0.113.1",
            "--public-ipv6=2001:db8::1",
            "--subnet-lease-renew-margin=30",
            "--ip-masq",
            "--ip-masq-fully-random-disable",
            "--kube-subnet-mgr",
            "--kube-api-url=https://k:6443",
            "--kube-annotation-prefix=example.com/",
            "--kubeconfig-file=/kc",
            "--version",
            "--healthz-ip=127.0.0.1",
            "--healthz-port=8081",
            "--iptables-resync=7",
            "--iptables-forward-rules=false",
            "--ip-blackhole-route",
            "--net-config-path=/n.json",
            "--set-node-network-unavailable=false",
            "--v=3",
            "--vmodule=foo=2",
            "--log_backtrace_at=main.go:10",
            "--local-store=/var/lib/flannel",
        ]);
        assert_eq!(o.etcd_endpoints, vec!["https://a:2379", "https://b:2379"]);
        assert_eq!(o.etcd_prefix, "/x/network");
        assert_eq!(o.etcd_keyfile, Some("/k".into()));
        assert_eq!(o.etcd_certfile, Some("/c".into()));
        assert_eq!(o.etcd_cafile, Some("/ca".into()));
        assert_eq!(o.etcd_username.as_deref(), Some("u"));
        assert_eq!(o.etcd_password.as_deref(), Some("p"));
        assert_eq!(o.iface, vec!["eth0"]);
        assert_eq!(o.iface_regex, vec!["^10\\."]);
        assert_eq!(o.iface_can_reach, Some("192.0.2.9".parse().unwrap()));
        assert_eq!(o.subnet_file, PathBuf::from("/tmp/s.env"));
        assert_eq!(o.public_ip, Some(Ipv4Addr::new(203, 0, 113, 1)));
        assert_eq!(o.public_ipv6, Some("2001:db8::1".parse().unwrap()));
        assert_eq!(o.subnet_lease_renew_margin, 30);
        assert!(o.ip_masq && o.ip_masq_fully_random_disable && o.kube_subnet_mgr);
        assert_eq!(o.kube_api_url.as_deref(), Some("https://k:6443"));
        assert_eq!(o.kube_annotation_prefix, "example.com/");
        assert_eq!(o.kubeconfig_file, Some("/kc".into()));
        assert!(o.version);
        assert_eq!(o.healthz_addr().as_deref(), Some("127.0.0.1:8081"));
        assert_eq!(o.iptables_resync, 7);
        assert!(!o.iptables_forward_rules);
        assert!(o.ip_blackhole_route);
        assert_eq!(o.net_config_path, PathBuf::from("/n.json"));
        assert!(!o.set_node_network_unavailable);
        assert_eq!(o.v, 3);
        assert_eq!(o.vmodule.as_deref(), Some("foo=2"));
        assert_eq!(o.log_backtrace_at.as_deref(), Some("main.go:10"));
        assert_eq!(o.local_store, Some("/var/lib/flannel".into()));
    }

    #[test]
    fn go_style_bools() {
        assert!(ok(&["--ip-masq"]).ip_masq);
        assert!(ok(&["-ip-masq"]).ip_masq);
        for t in ["1", "t", "T", "TRUE", "true", "True"] {
            assert!(ok(&[&format!("--ip-masq={t}")]).ip_masq, "{t}");
        }
        for f in ["0", "f", "F", "FALSE", "false", "False"] {
            assert!(!ok(&[&format!("--ip-masq={f}")]).ip_masq, "{f}");
            assert!(
                !ok(&[&format!("-iptables-forward-rules={f}")]).iptables_forward_rules,
                "{f}"
            );
        }
        // A default-true flag given bare stays true.
        assert!(ok(&["--iptables-forward-rules"]).iptables_forward_rules);
        // Not a Go boolean.
        let e = err(&["--ip-masq=yes"]);
        assert!(e.contains("ip-masq") && e.contains("yes"), "{e}");
        let e = err(&["--ip-masq="]);
        assert!(e.contains("ip-masq"), "{e}");
        // As in Go, the value of a boolean must be attached with '='.
        let e = err(&["--ip-masq", "false"]);
        assert!(e.contains("false"), "{e}");
    }

    #[test]
    fn single_dash_long_flags() {
        let o = ok(&[
            "-iface=eth0",
            "-iface",
            "eth1",
            "-etcd-prefix",
            "/p",
            "-healthz-port=9",
            "-v=4",
        ]);
        assert_eq!(o.iface, vec!["eth0", "eth1"]);
        assert_eq!(o.etcd_prefix, "/p");
        assert_eq!(o.healthz_port, 9);
        assert_eq!(o.v, 4);
    }

    #[test]
    fn klog_v_forms() {
        assert_eq!(ok(&["-v=2"]).v, 2);
        assert_eq!(ok(&["-v", "2"]).v, 2);
        assert_eq!(ok(&["--v=2"]).v, 2);
        assert_eq!(ok(&["--v", "5"]).v, 5);
        let e = err(&["-v=x"]);
        assert!(e.contains("--v") && e.contains('x'), "{e}");
    }

    #[test]
    fn argv_normalisation() {
        assert_eq!(norm(&["-ip-masq"]), vec!["--ip-masq"]);
        assert_eq!(norm(&["-ip-masq=false"]), vec!["--ip-masq=false"]);
        assert_eq!(norm(&["-iface", "eth0"]), vec!["--iface=eth0"]);
        assert_eq!(norm(&["--iface", "eth0"]), vec!["--iface=eth0"]);
        // A value that starts with '-' is still a value, as in Go.
        assert_eq!(norm(&["-iface-regex", "-x"]), vec!["--iface-regex=-x"]);
        // Boolean flags do not swallow the next argument.
        assert_eq!(
            norm(&["-ip-masq", "-iface=a"]),
            vec!["--ip-masq", "--iface=a"]
        );
        assert_eq!(norm(&["-v", "3"]), vec!["--v=3"]);
        assert_eq!(
            norm(&["-log_backtrace_at=x.go:1"]),
            vec!["--log_backtrace_at=x.go:1"]
        );
        for h in ["-h", "-help", "--help", "--h"] {
            assert_eq!(norm(&[h]), vec!["--help"]);
        }
        // Unknown names, bad syntax and everything after "--" pass through.
        assert_eq!(norm(&["-nope"]), vec!["-nope"]);
        assert_eq!(norm(&["---iface"]), vec!["---iface"]);
        assert_eq!(norm(&["-", "x"]), vec!["-", "x"]);
        assert_eq!(norm(&["--", "-iface", "x"]), vec!["--", "-iface", "x"]);
        // A value flag at the very end is left for clap to reject.
        assert_eq!(norm(&["-iface"]), vec!["--iface"]);
        assert!(err(&["-iface"]).contains("--iface"));
    }

    #[test]
    fn repeatable_and_last_wins() {
        let o = ok(&[
            "--iface=a",
            "-iface",
            "b",
            "--iface-regex=c",
            "--iface-regex",
            "d",
        ]);
        assert_eq!(o.iface, vec!["a", "b"]);
        assert_eq!(o.iface_regex, vec!["c", "d"]);
        // A scalar flag given twice keeps the last value, like Go's flag.
        let o = ok(&[
            "--etcd-prefix=/a",
            "--etcd-prefix=/b",
            "--ip-masq",
            "--ip-masq=false",
        ]);
        assert_eq!(o.etcd_prefix, "/b");
        assert!(!o.ip_masq);
        let o = ok(&["--etcd-endpoints=a,b", "--etcd-endpoints=c"]);
        assert_eq!(o.etcd_endpoints, vec!["c"]);
    }

    #[test]
    fn env_fills_unset_flags_and_cli_wins() {
        let o = parse_env(
            &["--etcd-prefix=/cli", "--iface=cli0"],
            &[
                ("FLANNELD_ETCD_PREFIX", "/env"),
                ("FLANNELD_IFACE", "env0"),
                ("FLANNELD_IP_MASQ", "true"),
                ("FLANNELD_SUBNET_FILE", "/env/subnet.env"),
                ("FLANNELD_SUBNET_LEASE_RENEW_MARGIN", "120"),
                ("FLANNELD_IPTABLES_FORWARD_RULES", "0"),
                ("FLANNELD_V", "2"),
                ("FLANNELD_LOG_BACKTRACE_AT", "a.go:1"),
                ("FLANNELD_LOCAL_STORE", "/store"),
                ("FLANNELD_ETCD_ENDPOINTS", "http://e1:2379,http://e2:2379"),
            ],
        )
        .unwrap();
        assert_eq!(o.etcd_prefix, "/cli");
        assert_eq!(o.iface, vec!["cli0"]);
        assert!(o.ip_masq);
        assert_eq!(o.subnet_file, PathBuf::from("/env/subnet.env"));
        assert_eq!(o.subnet_lease_renew_margin, 120);
        assert!(!o.iptables_forward_rules);
        assert_eq!(o.v, 2);
        assert_eq!(o.log_backtrace_at.as_deref(), Some("a.go:1"));
        assert_eq!(o.local_store, Some("/store".into()));
        assert_eq!(o.etcd_endpoints, vec!["http://e1:2379", "http://e2:2379"]);
    }

    #[test]
    fn env_bools_and_cli_override() {
        for (v, want) in [("true", true), ("1", true), ("false", false), ("0", false)] {
            let o = parse_env(&[], &[("FLANNELD_IP_MASQ", v)]).unwrap();
            assert_eq!(o.ip_masq, want, "{v}");
        }
        // The command line wins, even when it says false.
        let o = parse_env(&["--ip-masq=false"], &[("FLANNELD_IP_MASQ", "true")]).unwrap();
        assert!(!o.ip_masq);
        let o = parse_env(&["-ip-masq"], &[("FLANNELD_IP_MASQ", "false")]).unwrap();
        assert!(o.ip_masq);
        // An empty variable is ignored (flagutil skips "").
        let o = parse_env(
            &[],
            &[("FLANNELD_ETCD_PREFIX", ""), ("FLANNELD_IP_MASQ", "")],
        )
        .unwrap();
        assert_eq!(o.etcd_prefix, DEFAULT_ETCD_PREFIX);
        assert!(!o.ip_masq);
    }

    #[test]
    fn env_repeatable_is_one_entry_like_upstream() {
        let o = parse_env(
            &[],
            &[
                ("FLANNELD_IFACE", "eth0,eth1"),
                ("FLANNELD_IFACE_REGEX", "^eth{0,2}$"),
            ],
        )
        .unwrap();
        assert_eq!(o.iface, vec!["eth0,eth1"]);
        assert_eq!(o.iface_regex, vec!["^eth{0,2}$"]);
        // Given on the command line, the variable is not added.
        let o = parse_env(&["--iface=a", "--iface=b"], &[("FLANNELD_IFACE", "c")]).unwrap();
        assert_eq!(o.iface, vec!["a", "b"]);
    }

    #[test]
    fn env_version_is_ignored_like_upstream() {
        let o = parse_env(&[], &[("FLANNELD_VERSION", "true")]).unwrap();
        assert!(!o.version);
    }

    #[test]
    fn bad_env_names_variable_flag_and_value() {
        let e = parse_env(&[], &[("FLANNELD_IP_MASQ", "maybe")])
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("FLANNELD_IP_MASQ") && e.contains("maybe") && e.contains("ip-masq"),
            "{e}"
        );
        let e = parse_env(&[], &[("FLANNELD_SUBNET_LEASE_RENEW_MARGIN", "0")]).unwrap_err();
        assert_eq!(e.exit_code(), 2);
        let e = e.to_string();
        assert!(
            e.contains("FLANNELD_SUBNET_LEASE_RENEW_MARGIN")
                && e.contains("\"0\"")
                && e.contains("1439"),
            "{e}"
        );
        // A bad variable whose flag is on the command line is never looked at.
        assert!(parse_env(&["--ip-masq"], &[("FLANNELD_IP_MASQ", "maybe")]).is_ok());
    }

    #[test]
    fn renew_margin_bounds() {
        assert_eq!(
            ok(&["--subnet-lease-renew-margin=1"]).subnet_lease_renew_margin,
            1
        );
        assert_eq!(
            ok(&["--subnet-lease-renew-margin=1439"]).subnet_lease_renew_margin,
            1439
        );
        assert_eq!(
            ok(&["--subnet-lease-renew-margin=0x10"]).subnet_lease_renew_margin,
            16
        );
        for bad in ["0", "1440", "-1", "99999999999999999999", "ten", ""] {
            let e = err(&[&format!("--subnet-lease-renew-margin={bad}")]);
            assert!(e.contains("--subnet-lease-renew-margin"), "{bad}: {e}");
            assert!(e.contains(&format!("'{bad}'")), "{bad}: {e}");
        }
    }

    #[test]
    fn bad_values_name_flag_and_value() {
        for (arg, val) in [
            ("--healthz-port=70000", "70000"),
            ("--healthz-port=-1", "-1"),
            ("--iptables-resync=0", "0"),
            ("--public-ip=2001:db8::1", "2001:db8::1"),
            ("--public-ip=1.2.3", "1.2.3"),
            ("--public-ipv6=10.0.0.1", "10.0.0.1"),
            ("--iface-can-reach=nowhere", "nowhere"),
            ("--iface-regex=(", "("),
            ("--v=1.5", "1.5"),
        ] {
            let e = err(&[arg]);
            let flag = arg.split('=').next().unwrap();
            assert!(e.contains(flag) && e.contains(val), "{arg}: {e}");
        }
        assert!(err(&["--no-such-flag"]).contains("--no-such-flag"));
        assert!(err(&["stray"]).contains("stray"));
    }

    #[test]
    fn empty_strings_mean_unset() {
        let o = ok(&["--etcd-keyfile=", "--etcd-username=", "--local-store="]);
        assert_eq!(o.etcd_keyfile, None);
        assert_eq!(o.etcd_username, None);
        assert_eq!(o.local_store, None);
    }

    #[test]
    fn ip_forms() {
        // Go's net.ParseIP reads an IPv4-mapped IPv6 address as IPv4.
        assert_eq!(
            ok(&["--public-ip=::ffff:192.0.2.7"]).public_ip,
            Some(Ipv4Addr::new(192, 0, 2, 7))
        );
        assert_eq!(
            ok(&["--iface-can-reach=2001:db8::9"]).iface_can_reach,
            Some("2001:db8::9".parse().unwrap())
        );
        let o = ok(&["--healthz-ip=::1", "--healthz-port=8081"]);
        assert_eq!(o.healthz_addr().as_deref(), Some("[::1]:8081"));
    }

    #[test]
    fn go_int_forms() {
        for (s, v) in [
            ("0", 0),
            ("60", 60),
            ("+7", 7),
            ("-7", -7),
            ("0x3c", 60),
            ("0X3C", 60),
            ("074", 60),
            ("0o74", 60),
            ("0b111100", 60),
            ("1_000", 1000),
            ("0x_3c", 60),
            ("-9223372036854775808", i64::MIN),
            ("9223372036854775807", i64::MAX),
        ] {
            assert_eq!(parse_go_int(s), Ok(v), "{s}");
        }
        for s in [
            "",
            "-",
            "+",
            "0x",
            "08",
            "1__0",
            "_1",
            "1_",
            "1.0",
            " 1",
            "--1",
            "+-1",
            "9223372036854775808",
            "-9223372036854775809",
            "٣",
        ] {
            assert!(parse_go_int(s).is_err(), "{s}");
        }
    }

    #[test]
    fn help_lists_every_flag_default_and_env() {
        let help = command().render_long_help().to_string();
        assert!(
            help.contains("flannel daemon") && help.contains("FLANNELD_FOO_BAR"),
            "{help}"
        );
        for a in command().get_arguments() {
            let Some(long) = a.get_long() else { continue };
            assert!(
                help.contains(&format!("--{long}")),
                "--{long} missing:\n{help}"
            );
            if !NO_ENV.contains(&long) {
                assert!(help.contains(&env_var(long)), "{} missing", env_var(long));
            }
        }
        for d in [
            DEFAULT_ETCD_ENDPOINTS,
            DEFAULT_ETCD_PREFIX,
            DEFAULT_SUBNET_FILE,
            DEFAULT_KUBE_ANNOTATION_PREFIX,
            DEFAULT_HEALTHZ_IP,
            DEFAULT_NET_CONFIG_PATH,
            "[default: 60]",
            "[default: 5]",
            "[default: 0]",
            "[default: true]",
            "[default: false]",
        ] {
            assert!(help.contains(d), "{d} missing:\n{help}");
        }
        let e = parse(&["-help"]).unwrap_err();
        assert_eq!(e.exit_code(), 0);
        match e {
            CliError::Clap(c) => assert_eq!(c.kind(), clap::error::ErrorKind::DisplayHelp),
            other => panic!("{other}"),
        }
    }

    #[test]
    fn help_says_what_the_flags_do() {
        let help = command().render_long_help().to_string();
        let about = |flag: &str| {
            let start = help.find(flag).unwrap_or_else(|| panic!("{flag} missing"));
            help[start..].split("\n\n").next().unwrap_or("").to_string()
        };
        // The flag removes --random-fully; it never adds --random.
        let frd = about("--ip-masq-fully-random-disable");
        assert!(frd.contains("Leave out --random-fully"), "{frd}");
        assert!(!frd.contains("Use --random instead"), "{frd}");
        // Never claim what is not built.
        let kube = about("--kube-subnet-mgr");
        assert!(
            kube.contains("podCIDR") && kube.contains("NODE_NAME"),
            "{kube}"
        );
        let st = about("--status-remote");
        assert!(st.contains("only loopback"), "{st}");
    }

    #[test]
    fn env_var_names() {
        assert_eq!(env_var("ip-masq"), "FLANNELD_IP_MASQ");
        assert_eq!(env_var("v"), "FLANNELD_V");
        assert_eq!(env_var("log_backtrace_at"), "FLANNELD_LOG_BACKTRACE_AT");
    }

    fn arg_strategy() -> impl Strategy<Value = String> {
        let names: Vec<String> = command()
            .get_arguments()
            .filter_map(|a| a.get_long().map(str::to_string))
            .collect();
        prop_oneof![
            any::<String>(),
            "[-=a-z0-9_.:,]{0,12}",
            (
                proptest::sample::select(names),
                prop_oneof![Just("-"), Just("--")],
                proptest::option::of(prop_oneof![any::<String>(), "[0-9a-fx_+-]{0,6}"]),
            )
                .prop_map(|(n, d, v)| match v {
                    Some(v) => format!("{d}{n}={v}"),
                    None => format!("{d}{n}"),
                }),
        ]
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(512))]

        #[test]
        fn parse_never_panics(args in proptest::collection::vec(arg_strategy(), 0..8),
                              env_val in proptest::option::of(any::<String>())) {
            let mut v = vec!["flanneld".to_string()];
            v.extend(args);
            let env_val2 = env_val.clone();
            let _ = parse_from(v.clone(), move |k| {
                (k == "FLANNELD_HEALTHZ_PORT" || k == "FLANNELD_IFACE").then(|| env_val2.clone()).flatten()
            });
            let _ = parse_from(v, no_env);
        }

        #[test]
        fn go_int_roundtrip(n in any::<i64>()) {
            prop_assert_eq!(parse_go_int(&n.to_string()), Ok(n));
            let sign = if n < 0 { "-" } else { "" };
            prop_assert_eq!(parse_go_int(&format!("{sign}{:#x}", n.unsigned_abs())), Ok(n));
            prop_assert_eq!(parse_go_int(&format!("{sign}0o{:o}", n.unsigned_abs())), Ok(n));
        }
    }
}
