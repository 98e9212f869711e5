//! Running the firewall tools (`iptables-save`, `iptables-restore`, `nft`) as child processes, and reading their
//! output. Shared by the CNI masquerade module ([`crate::ipmasq`]) and flanneld's traffic manager.
//!
//! Everything runs in the calling thread's network namespace: the children inherit it. Shelling out gives exact
//! parity with the Go implementations, which do the same, and makes golden-text tests possible (crates.md §4).
//!
//! Failures are split in two ([`RunError`]): the binary is not installed, or it ran and failed. Removal paths treat a
//! missing binary, and a table that cannot exist, as "nothing to remove" (see [`RunError::is_missing`] and
//! [`RunError::is_nft_not_found`]).

use std::collections::HashSet;
use std::io::{self, Write};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

use ipnet::IpNet;

use crate::{Error, Result};

/// Where to look for the tools when `PATH` lacks them: runtimes often start plugins with a minimal environment.
pub const FALLBACK_BIN_DIRS: &[&str] = &[
    "/usr/local/sbin",
    "/usr/sbin",
    "/sbin",
    "/usr/local/bin",
    "/usr/bin",
    "/bin",
];

/// At most this much of a tool's input is quoted in an error message (the tools report "line N").
const INPUT_IN_ERROR_MAX: usize = 4096;

// ---------------------------------------------------------------------------------------------------------------
// Running the tools.

/// Why a tool run failed.
#[derive(Debug)]
pub enum RunError {
    /// The binary is not installed.
    Missing(&'static str),
    /// It ran and failed (or could not be run); the message names the tool and carries its stderr.
    Failed(String),
}

impl RunError {
    /// Turns this into a kernel-layer error for the operation `op`.
    pub fn into_error(self, op: &str) -> Error {
        let msg = match self {
            Self::Missing(bin) => format!(
                "{bin} not found (searched PATH and {})",
                FALLBACK_BIN_DIRS.join(", ")
            ),
            Self::Failed(msg) => msg,
        };
        Error::Firewall { op: op.into(), msg }
    }

    /// Whether the tool is not installed (so nothing it manages can be there to remove).
    pub fn is_missing(&self) -> bool {
        matches!(self, Self::Missing(_))
    }

    /// Whether `nft` reported ENOENT: the table, chain or rule named does not exist.
    ///
    /// The tools run with `LC_ALL=C`; this is the text knftables' `IsNotFound` matches too.
    pub fn is_nft_not_found(&self) -> bool {
        matches!(self, Self::Failed(msg) if msg.contains("No such file or directory"))
    }
}

/// What a tool run yields: its stdout, or why it failed.
pub type RunResult = std::result::Result<String, RunError>;

/// A started tool, or why it could not be started.
pub type StartResult = std::result::Result<Running, RunError>;

/// Finds an executable in `PATH`, then in the usual sbin directories.
pub fn find_tool(name: &str) -> Option<PathBuf> {
    let path_dirs: Vec<PathBuf> = std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).collect())
        .unwrap_or_default();
    path_dirs
        .into_iter()
        .chain(FALLBACK_BIN_DIRS.iter().map(PathBuf::from))
        .map(|dir| dir.join(name))
        .find(|p| is_executable(p))
}

fn is_executable(path: &Path) -> bool {
    std::fs::metadata(path).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

/// A started tool whose output has not been collected yet.
pub struct Running {
    child: Child,
    /// Command line, for error messages.
    what: String,
    /// The start of the input, for error messages.
    input: Option<String>,
}

/// Starts `bin args…` and feeds it `stdin` if given. Starting several reads before collecting any lets them run
/// concurrently.
pub fn start(bin: &'static str, args: &[&str], stdin: Option<&str>) -> StartResult {
    let path = find_tool(bin).ok_or(RunError::Missing(bin))?;
    let what = format!("{} {}", path.display(), args.join(" "));
    let mut child = Command::new(&path)
        .args(args)
        // Fixed locale: error texts are matched (nft "No such file or directory").
        .env("LC_ALL", "C")
        .stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| match e.kind() {
            io::ErrorKind::NotFound => RunError::Missing(bin),
            _ => RunError::Failed(format!("{what}: {e}")),
        })?;
    if let (Some(input), Some(mut pipe)) = (stdin, child.stdin.take()) {
        // A tool that rejects its input may exit before reading all of it; its stderr then says why, so a broken
        // pipe here is not the error to report. Dropping `pipe` closes the tool's stdin.
        if let Err(e) = pipe.write_all(input.as_bytes()) {
            if e.kind() != io::ErrorKind::BrokenPipe {
                // Reap the child rather than leave a zombie behind.
                let _ = child.kill();
                let _ = child.wait();
                return Err(RunError::Failed(format!("{what}: writing input: {e}")));
            }
        }
    }
    // Keep the input so a "line N" in the error is readable, bounded for huge batches.
    let input = stdin.map(|i| i.chars().take(INPUT_IN_ERROR_MAX).collect());
    Ok(Running { child, what, input })
}

impl Running {
    /// Waits for the tool and returns its stdout if it succeeded.
    pub fn finish(self) -> RunResult {
        let Running { child, what, input } = self;
        let out = child
            .wait_with_output()
            .map_err(|e| RunError::Failed(format!("{what}: {e}")))?;
        if out.status.success() {
            return Ok(String::from_utf8_lossy(&out.stdout).into_owned());
        }
        let stderr = String::from_utf8_lossy(&out.stderr);
        let mut msg = format!("{what} failed ({}): {}", out.status, stderr.trim());
        if let Some(input) = input {
            msg.push_str(&format!("\ninput:\n{input}"));
        }
        Err(RunError::Failed(msg))
    }
}

/// Runs `bin args…`, feeding `stdin` if given, and returns its stdout.
pub fn run(bin: &'static str, args: &[&str], stdin: Option<&str>) -> RunResult {
    start(bin, args, stdin)?.finish()
}

/// Runs `bin args…` with `input` on its stdin and returns its stdout.
pub fn run_with_stdin(bin: &'static str, args: &[&str], input: &str) -> RunResult {
    run(bin, args, Some(input))
}

/// Joins several errors of one operation into one, or `Ok` if there are none.
pub fn join_errors(op: &str, errors: Vec<Error>) -> Result<()> {
    if errors.is_empty() {
        return Ok(());
    }
    let msg = errors
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join("; ");
    Err(Error::Firewall { op: op.into(), msg })
}

// ---------------------------------------------------------------------------------------------------------------
// iptables.

/// An IP address family, i.e. which of iptables / ip6tables (and nft's `ip` / `ip6`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Family {
    /// IPv4: `iptables`, nft family `ip`.
    V4,
    /// IPv6: `ip6tables`, nft family `ip6`.
    V6,
}

impl Family {
    /// Both families, IPv4 first.
    pub const ALL: [Family; 2] = [Family::V4, Family::V6];

    /// The family of `net`.
    pub fn of(net: &IpNet) -> Self {
        match net {
            IpNet::V4(_) => Self::V4,
            IpNet::V6(_) => Self::V6,
        }
    }
    /// Whether `ip` is of this family.
    pub fn holds(self, ip: &IpNet) -> bool {
        Self::of(ip) == self
    }
    /// `iptables` or `ip6tables`.
    pub fn iptables(self) -> &'static str {
        match self {
            Self::V4 => "iptables",
            Self::V6 => "ip6tables",
        }
    }
    /// `iptables-save` or `ip6tables-save`.
    pub fn save(self) -> &'static str {
        match self {
            Self::V4 => "iptables-save",
            Self::V6 => "ip6tables-save",
        }
    }
    /// `iptables-restore` or `ip6tables-restore`.
    pub fn restore(self) -> &'static str {
        match self {
            Self::V4 => "iptables-restore",
            Self::V6 => "ip6tables-restore",
        }
    }
    /// The prefix length of a single address.
    pub fn host_prefix(self) -> u8 {
        match self {
            Self::V4 => 32,
            Self::V6 => 128,
        }
    }
    /// The multicast range, which is never masqueraded.
    pub fn multicast(self) -> &'static str {
        match self {
            Self::V4 => "224.0.0.0/4",
            Self::V6 => "ff00::/8",
        }
    }
    /// The nftables address family / payload protocol keyword: `ip` or `ip6`.
    pub fn nft(self) -> &'static str {
        match self {
            Self::V4 => "ip",
            Self::V6 => "ip6",
        }
    }
}

/// Whether the iptables tool of `fam` runs and can read a table (upstream's `SupportsIPTables` probe).
pub fn iptables_usable(fam: Family) -> bool {
    find_tool(fam.restore()).is_some()
        && run(fam.iptables(), &["-w", "-t", "filter", "-S", "INPUT"], None).is_ok()
}

/// Starts `iptables-save -t <table>` (or all tables if `table` is `None`) for `fam`; see [`start`].
pub fn start_iptables_save(fam: Family, table: Option<&str>) -> StartResult {
    match table {
        Some(t) => start(fam.save(), &["-t", t], None),
        None => start(fam.save(), &[], None),
    }
}

/// `iptables-save -t <table>` (or all tables if `table` is `None`) for `fam`.
pub fn iptables_save(fam: Family, table: Option<&str>) -> RunResult {
    start_iptables_save(fam, table)?.finish()
}

/// Applies `payload` with `iptables-restore --noflush -w` for `fam`: atomically per table, leaving chains the payload
/// does not declare untouched. (A chain the payload declares with `:NAME - [0:0]` is created, or flushed if it
/// exists, with both the legacy and the nf_tables flavour.)
pub fn iptables_restore(fam: Family, payload: &str) -> std::result::Result<(), RunError> {
    run_with_stdin(fam.restore(), &["--noflush", "-w"], payload).map(|_| ())
}

/// The `iptables --version` of `fam` as `(major, minor, patch)`, if it runs and prints one.
pub fn iptables_version(fam: Family) -> Option<(u32, u32, u32)> {
    let out = run(fam.iptables(), &["--version"], None).ok()?;
    parse_iptables_version(&out)
}

/// Parses the first `vX.Y.Z` of an `iptables --version` line.
pub fn parse_iptables_version(s: &str) -> Option<(u32, u32, u32)> {
    s.split_whitespace().find_map(|word| {
        let mut parts = word.strip_prefix('v')?.splitn(3, '.');
        let major = parts.next()?.parse().ok()?;
        let minor = parts.next()?.parse().ok()?;
        let patch: String = parts
            .next()?
            .chars()
            .take_while(char::is_ascii_digit)
            .collect();
        Some((major, minor, patch.parse().ok()?))
    })
}

/// Quotes a string for iptables-restore (and as iptables-save prints it): double quotes, inner quotes escaped.
pub fn quote(s: &str) -> String {
    format!("\"{}\"", s.replace('"', "\\\""))
}

/// One table as `iptables-save` prints it: declared chains and `-A` lines in order.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct SavedTable {
    /// Every chain declared with `:NAME …` (built-in and user chains).
    pub chains: HashSet<String>,
    /// `(chain, full "-A …" line)`, in order.
    pub rules: Vec<(String, String)>,
}

impl SavedTable {
    /// The `-A` lines of `chain`, in order.
    pub fn chain_rules<'a>(&'a self, chain: &'a str) -> impl Iterator<Item = &'a str> + 'a {
        self.rules
            .iter()
            .filter(move |(c, _)| c == chain)
            .map(|(_, l)| l.as_str())
    }
}

/// Extracts table `table` from `iptables-save` output (empty if the output has no such table).
pub fn parse_save(save: &str, table: &str) -> SavedTable {
    let mut out = SavedTable::default();
    let mut inside = false;
    for line in save.lines() {
        let line = line.trim_end();
        if let Some(name) = line.strip_prefix('*') {
            inside = name == table;
        } else if !inside {
            continue;
        } else if line == "COMMIT" {
            inside = false;
        } else if let Some(decl) = line.strip_prefix(':') {
            if let Some(name) = decl.split_whitespace().next() {
                out.chains.insert(name.to_string());
            }
        } else if let Some(rest) = line.strip_prefix("-A ") {
            if let Some(chain) = rest.split_whitespace().next() {
                out.rules.push((chain.to_string(), line.to_string()));
            }
        }
    }
    out
}

/// The jump target of an iptables-save rule line (`-j X` is printed last when X is a chain).
pub fn jump_target(line: &str) -> Option<&str> {
    let (_, target) = line.rsplit_once(" -j ")?;
    (!target.contains(' ')).then_some(target)
}

/// The `--comment` value of an iptables-save rule line, unquoted.
pub fn rule_comment(line: &str) -> Option<String> {
    let (_, rest) = line.split_once(" --comment ")?;
    let Some(quoted) = rest.strip_prefix('"') else {
        return rest.split_whitespace().next().map(str::to_string);
    };
    let mut out = String::new();
    let mut chars = quoted.chars();
    while let Some(c) = chars.next() {
        match c {
            '\\' => out.push(chars.next()?),
            '"' => return Some(out),
            c => out.push(c),
        }
    }
    None
}

/// Turns an iptables-save `-A …` line into the `-D …` line that deletes exactly that rule.
pub fn delete_line(line: &str) -> String {
    format!("-D {}", line.strip_prefix("-A ").unwrap_or(line))
}

// ---------------------------------------------------------------------------------------------------------------
// nftables.

/// Applies an nft script atomically (`nft -f -`): the whole batch commits or nothing does.
pub fn nft_apply(script: &str) -> std::result::Result<(), RunError> {
    run_with_stdin("nft", &["-f", "-"], script).map(|_| ())
}

/// Checks an nft script against the kernel without committing it (`nft --check -f -`).
pub fn nft_check(script: &str) -> std::result::Result<(), RunError> {
    run_with_stdin("nft", &["--check", "-f", "-"], script).map(|_| ())
}

/// Runs `nft args…` and returns its text output (e.g. `list table ip t`).
pub fn nft(args: &[&str]) -> RunResult {
    run("nft", args, None)
}

/// Starts `nft args…`; see [`start`].
pub fn start_nft(args: &[&str]) -> StartResult {
    start("nft", args, None)
}

/// Runs `nft -j args…` and returns its JSON output.
pub fn nft_json(args: &[&str]) -> RunResult {
    let mut all = Vec::with_capacity(args.len() + 1);
    all.push("-j");
    all.extend_from_slice(args);
    run("nft", &all, None)
}

/// Whether nft can talk to nf_tables here: a check-only transaction that adds table `family name` (upstream's
/// `SupportsNFTables` probe).
pub fn nft_usable(family: &str, table: &str) -> bool {
    run("nft", &["--check", "add", "table", family, table], None).is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn version_parsing() {
        assert_eq!(
            parse_iptables_version("iptables v1.8.9 (nf_tables)\n"),
            Some((1, 8, 9))
        );
        assert_eq!(parse_iptables_version("ip6tables v1.6.2"), Some((1, 6, 2)));
        assert_eq!(
            parse_iptables_version("iptables v1.4.21-rc1"),
            Some((1, 4, 21))
        );
        assert_eq!(parse_iptables_version("nonsense"), None);
        assert_eq!(parse_iptables_version("v1.x.2"), None);
    }

    #[test]
    fn save_parsing_stops_at_commit_and_picks_the_table() {
        let save = "*filter\n:INPUT ACCEPT [0:0]\n:FWD - [0:0]\n-A FWD -j ACCEPT\nCOMMIT\n\
                    *nat\n:POSTROUTING ACCEPT [0:0]\n-A POSTROUTING -m comment --comment \"a \\\"b\\\"\" -j X\nCOMMIT\n";
        let filter = parse_save(save, "filter");
        assert!(filter.chains.contains("FWD") && !filter.chains.contains("POSTROUTING"));
        assert_eq!(
            filter.chain_rules("FWD").collect::<Vec<_>>(),
            ["-A FWD -j ACCEPT"]
        );
        let nat = parse_save(save, "nat");
        assert_eq!(nat.rules.len(), 1);
        let (_, line) = &nat.rules[0];
        assert_eq!(jump_target(line), Some("X"));
        assert_eq!(rule_comment(line).as_deref(), Some("a \"b\""));
        assert_eq!(quote("a \"b\""), "\"a \\\"b\\\"\"");
        assert_eq!(delete_line(line), line.replacen("-A", "-D", 1));
        assert_eq!(parse_save(save, "mangle"), SavedTable::default());
    }

    #[test]
    fn missing_tool_classification() {
        let e = run("surely-not-a-firewall-tool-xyz", &[], None).unwrap_err();
        assert!(e.is_missing());
        assert!(!e.is_nft_not_found());
        let nf =
            RunError::Failed("nft list table ip x failed: Error: No such file or directory".into());
        assert!(nf.is_nft_not_found() && !nf.is_missing());
        assert!(nf.into_error("op").to_string().starts_with("op: "));
    }
}
