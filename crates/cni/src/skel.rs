//! The entry point every plugin shares: environment, stdin, version negotiation, dispatch and output.

use crate::error::{CniError, ERR_INCOMPATIBLE_VERSION};
use crate::types::{CniResult, NetConf};
use crate::version;
use std::io::{Read, Write};

/// A CNI command.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Command {
    /// Attach.
    Add,
    /// Detach.
    Del,
    /// Verify.
    Check,
    /// Report versions.
    Version,
    /// Garbage-collect stale attachments (1.1.0).
    Gc,
    /// Report readiness (1.1.0).
    Status,
}

impl Command {
    /// Parses `CNI_COMMAND`.
    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "ADD" => Self::Add,
            "DEL" => Self::Del,
            "CHECK" => Self::Check,
            "VERSION" => Self::Version,
            "GC" => Self::Gc,
            "STATUS" => Self::Status,
            _ => return None,
        })
    }

    /// The `CNI_COMMAND` spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Add => "ADD",
            Self::Del => "DEL",
            Self::Check => "CHECK",
            Self::Version => "VERSION",
            Self::Gc => "GC",
            Self::Status => "STATUS",
        }
    }
}

/// One invocation: the CNI environment plus the configuration bytes.
#[derive(Debug, Clone)]
pub struct CmdArgs {
    /// The command.
    pub command: Command,
    /// `CNI_CONTAINERID`.
    pub container_id: String,
    /// `CNI_NETNS` (may be empty on DEL).
    pub netns: String,
    /// `CNI_IFNAME`.
    pub ifname: String,
    /// `CNI_ARGS`, raw.
    pub args: String,
    /// `CNI_PATH`, raw.
    pub path: String,
    /// The configuration from stdin.
    pub stdin: Vec<u8>,
}

impl CmdArgs {
    /// Reads the CNI environment; a missing required variable is code 4 naming it.
    pub fn from_env(command: Command, stdin: Vec<u8>) -> Result<Self, CniError> {
        let get = |k: &str| std::env::var(k).unwrap_or_default();
        let a = Self {
            command,
            container_id: get("CNI_CONTAINERID"),
            netns: get("CNI_NETNS"),
            ifname: get("CNI_IFNAME"),
            args: get("CNI_ARGS"),
            path: get("CNI_PATH"),
            stdin,
        };
        a.validate()?;
        Ok(a)
    }

    /// Checks required variables and their form, as the Go skel does.
    pub fn validate(&self) -> Result<(), CniError> {
        let needs: &[(&str, &str)] = match self.command {
            Command::Add | Command::Check => &[
                ("CNI_CONTAINERID", &self.container_id),
                ("CNI_NETNS", &self.netns),
                ("CNI_IFNAME", &self.ifname),
            ],
            Command::Del => &[
                ("CNI_CONTAINERID", &self.container_id),
                ("CNI_IFNAME", &self.ifname),
            ],
            _ => &[],
        };
        let missing: Vec<&str> = needs
            .iter()
            .filter(|(_, v)| v.is_empty())
            .map(|(k, _)| *k)
            .collect();
        if !missing.is_empty() {
            return Err(CniError::env(format!(
                "required env variables [{}] missing",
                missing.join(",")
            )));
        }
        if matches!(self.command, Command::Add | Command::Del | Command::Check) {
            validate_container_id(&self.container_id)?;
            validate_ifname(&self.ifname)?;
        }
        Ok(())
    }

    /// A copy of these arguments carrying another configuration (for delegation).
    pub fn with_stdin(&self, stdin: Vec<u8>) -> Self {
        Self {
            stdin,
            ..self.clone()
        }
    }
}

fn name_ok(s: &str) -> bool {
    let mut chars = s.chars();
    match chars.next() {
        Some(c) if c.is_ascii_alphanumeric() => {}
        _ => return false,
    }
    chars.all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'))
}

/// Container IDs are `^[a-zA-Z0-9][a-zA-Z0-9_.\-]*$` (code 4 otherwise).
pub fn validate_container_id(id: &str) -> Result<(), CniError> {
    if name_ok(id) {
        Ok(())
    } else {
        Err(CniError::env(format!(
            "CNI_CONTAINERID: invalid characters in container ID \"{id}\""
        )))
    }
}

/// Why `name` cannot be given to the kernel as an interface name, if it cannot. The kernel's own rules
/// (`dev_valid_name`: 1..=15 bytes, not `.`/`..`, no `/`, `:` or whitespace, where its `isspace` also counts byte
/// 0xa0) plus what the kernel would turn into another name or refuse later: a `%` makes the name a template the
/// kernel expands to the first free number (`eth%d` becomes `eth0`), and `all`/`default` collide with the
/// per-interface sysctl directories. The reference plugins check all but the last two rules.
pub fn ifname_problem(name: &str) -> Option<&'static str> {
    if name.is_empty() {
        return Some("interface name is empty");
    }
    if name.len() > 15 {
        return Some("interface name is too long (at most 15 bytes)");
    }
    if name == "." || name == ".." {
        return Some("interface name is . or ..");
    }
    if name == "all" || name == "default" {
        return Some("interface name all/default is reserved by the kernel");
    }
    let bad_byte = |b: u8| {
        matches!(
            b,
            b'/' | b':' | b' ' | b'\t' | b'\n' | 0x0b | 0x0c | b'\r' | 0xa0
        )
    };
    if name.bytes().any(bad_byte) || name.chars().any(char::is_whitespace) {
        return Some("interface name contains / or : or whitespace characters");
    }
    if name.contains('%') {
        return Some("interface name contains %, which the kernel expands to a number");
    }
    None
}

/// Interface names the kernel takes as they are ([`ifname_problem`]); code 4 otherwise.
pub fn validate_ifname(name: &str) -> Result<(), CniError> {
    match ifname_problem(name) {
        None => Ok(()),
        Some(p) => Err(CniError::env(format!("CNI_IFNAME \"{name}\": {p}"))),
    }
}

/// Network names follow the same rule as container IDs (code 7 otherwise).
pub fn validate_network_name(name: &str) -> Result<(), CniError> {
    if name.is_empty() {
        return Err(CniError::config("missing network name"));
    }
    if !name_ok(name) {
        return Err(CniError::config(format!(
            "invalid characters found in network name \"{name}\""
        )));
    }
    Ok(())
}

/// Parses the configuration and applies the version rules for the command; `supported` are the plugin's versions.
pub fn load_conf(args: &CmdArgs, supported: &[&str]) -> Result<NetConf, CniError> {
    let conf = NetConf::parse(&args.stdin)?;
    version::check_supported(conf.version(), supported)?;
    validate_network_name(&conf.name)?;
    let need = match args.command {
        Command::Check => Some("0.4.0"),
        Command::Gc | Command::Status => Some("1.1.0"),
        _ => None,
    };
    if let Some(min) = need {
        if !version::at_least(conf.version(), min) {
            return Err(CniError::new(
                ERR_INCOMPATIBLE_VERSION,
                format!(
                    "config version \"{}\" does not allow {}",
                    conf.version(),
                    args.command.as_str()
                ),
            ));
        }
    }
    Ok(conf)
}

/// What a command produced.
pub type Outcome = Result<Option<CniResult>, CniError>;

/// Runs a plugin speaking the spec versions `supported` as a process: reads env and stdin, calls `run`, prints
/// the result or error JSON, exits.
pub fn main<F>(about: &str, supported: &[&str], run: F) -> !
where
    F: FnOnce(CmdArgs) -> Outcome,
{
    let cmd = match std::env::var("CNI_COMMAND") {
        Ok(c) if !c.is_empty() => c,
        _ => {
            eprintln!(
                "{about} (flannel-rs {}), CNI spec versions {}",
                env!("CARGO_PKG_VERSION"),
                supported.join(", ")
            );
            std::process::exit(0);
        }
    };
    let mut stdin = Vec::new();
    let read = std::io::stdin().read_to_end(&mut stdin);
    let version_hint = serde_json::from_slice::<serde_json::Value>(&stdin)
        .ok()
        .and_then(|v| {
            v.get("cniVersion")
                .and_then(|s| s.as_str())
                .map(str::to_string)
        })
        .filter(|v| supported.contains(&v.as_str()))
        .unwrap_or_else(|| version::CURRENT.to_string());
    let outcome = (|| -> Result<Option<String>, CniError> {
        let command = Command::parse(&cmd)
            .ok_or_else(|| CniError::env(format!("CNI_COMMAND: unknown command \"{cmd}\"")))?;
        read.map_err(|e| CniError::io(format!("failed to read stdin: {e}")))?;
        if command == Command::Version {
            let out =
                serde_json::json!({"cniVersion": version_hint, "supportedVersions": supported});
            return Ok(Some(out.to_string()));
        }
        let args = CmdArgs::from_env(command, stdin)?;
        let ver = load_conf(&args, supported)?.version().to_string();
        Ok(run(args)?.map(|r| r.to_value(&ver).to_string()))
    })();
    let mut out = std::io::stdout().lock();
    match outcome {
        Ok(Some(s)) => {
            let _ = writeln!(out, "{s}");
            let _ = out.flush();
            std::process::exit(0)
        }
        Ok(None) => std::process::exit(0),
        Err(e) => {
            let _ = writeln!(out, "{}", e.to_json(&version_hint));
            let _ = out.flush();
            std::process::exit(1)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_and_names() {
        assert!(validate_container_id("abc-1.2_x").is_ok());
        assert!(validate_container_id("-abc").is_err());
        assert!(validate_container_id("a b").is_err());
        assert!(validate_ifname("eth0").is_ok());
        assert!(validate_ifname("a:b").is_err());
        assert!(validate_ifname("0123456789abcdef").is_err());
        assert!(validate_ifname("012345678901234").is_ok());
        for bad in [
            "", ".", "..", "a/b", "a b", "a\tb", "a\u{a0}b", "\u{e0}", "eth%d", "%", "all",
            "default",
        ] {
            assert_eq!(validate_ifname(bad).unwrap_err().code, 4, "{bad:?}");
        }
        for good in ["eth0", "net1", "...", "eth0.100", "\u{e9}t", "All"] {
            assert!(validate_ifname(good).is_ok(), "{good:?}");
        }
        assert!(validate_network_name("cbr0").is_ok());
        assert_eq!(validate_network_name("").unwrap_err().code, 7);
    }

    #[test]
    fn missing_env_names_all() {
        let a = CmdArgs {
            command: Command::Add,
            container_id: String::new(),
            netns: String::new(),
            ifname: "eth0".into(),
            args: String::new(),
            path: String::new(),
            stdin: vec![],
        };
        let e = a.validate().unwrap_err();
        assert_eq!(e.code, 4);
        assert!(e.msg.contains("CNI_CONTAINERID,CNI_NETNS"));
    }

    #[test]
    fn check_needs_040() {
        let a = CmdArgs {
            command: Command::Check,
            container_id: "c".into(),
            netns: "/x".into(),
            ifname: "eth0".into(),
            args: String::new(),
            path: String::new(),
            stdin: br#"{"cniVersion":"0.3.1","name":"n","type":"bridge"}"#.to_vec(),
        };
        assert_eq!(load_conf(&a, version::SUPPORTED).unwrap_err().code, 1);
    }
}
