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
// Which iptables: the host's two kernels interfaces.

/// One of the three iptables programs flannel runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Tool {
    Iptables,
    Save,
    Restore,
}

/// Which iptables binaries the `iptables*` names stand for.
///
/// iptables 1.8 comes in two variants that program different kernel interfaces: `-legacy` (x_tables) and `-nft`
/// (nf_tables). Both are active at once, and a packet has to pass both: an ACCEPT in one does not override a DROP
/// policy in the other. So flannel's FORWARD accepts must sit where the kubelet and kube-proxy put their rules.
/// On a host, `iptables` is whatever the distribution chose; in a container image it is the image's choice, which
/// may not be the host's: [`detect_iptables_variant`] finds the host's from the rules already there.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IptablesVariant {
    /// The plain names, as the system resolves them.
    System,
    /// `iptables-legacy*`.
    Legacy,
    /// `iptables-nft*`.
    Nft,
}

static IPTABLES_VARIANT: std::sync::atomic::AtomicU8 = std::sync::atomic::AtomicU8::new(0);

/// The variant the `iptables*` names of [`Family`] use in this process.
pub fn iptables_variant() -> IptablesVariant {
    match IPTABLES_VARIANT.load(std::sync::atomic::Ordering::Relaxed) {
        1 => IptablesVariant::Legacy,
        2 => IptablesVariant::Nft,
        _ => IptablesVariant::System,
    }
}

/// Chooses the variant for this process (flanneld at start; the CNI plugins never change it).
pub fn set_iptables_variant(v: IptablesVariant) {
    let n = match v {
        IptablesVariant::System => 0,
        IptablesVariant::Legacy => 1,
        IptablesVariant::Nft => 2,
    };
    IPTABLES_VARIANT.store(n, std::sync::atomic::Ordering::Relaxed);
}

/// The variant the host's rules are in, from the two variants' `iptables-save` outputs, and why; `None` when the
/// outputs do not tell (then the system's `iptables` stays). The kubelet creates `KUBE-IPTABLES-HINT` (mangle) and
/// `KUBE-KUBELET-CANARY` in the variant it uses; without those, the variant holding more rules wins.
pub fn choose_iptables_variant(legacy: &str, nft: &str) -> Option<(IptablesVariant, String)> {
    let hint = |save: &str| {
        save.lines().any(|l| {
            l.starts_with(":KUBE-IPTABLES-HINT ") || l.starts_with(":KUBE-KUBELET-CANARY ")
        })
    };
    let rules = |save: &str| save.lines().filter(|l| l.starts_with("-A ")).count();
    match (hint(legacy), hint(nft)) {
        (true, false) => {
            return Some((
                IptablesVariant::Legacy,
                "the kubelet's chains are in the legacy tables".into(),
            ))
        }
        (false, true) => {
            return Some((
                IptablesVariant::Nft,
                "the kubelet's chains are in the nf_tables tables".into(),
            ))
        }
        _ => {}
    }
    let (l, n) = (rules(legacy), rules(nft));
    match l.cmp(&n) {
        std::cmp::Ordering::Greater => Some((
            IptablesVariant::Legacy,
            format!("{l} rules in the legacy tables, {n} in nf_tables"),
        )),
        std::cmp::Ordering::Less => Some((
            IptablesVariant::Nft,
            format!("{n} rules in nf_tables, {l} in the legacy tables"),
        )),
        std::cmp::Ordering::Equal => None,
    }
}

/// Reads both variants' IPv4 rules in this network namespace and chooses as [`choose_iptables_variant`]; `None`
/// when either variant is not installed or cannot be read (then nothing is second-guessed).
pub fn detect_iptables_variant() -> Option<(IptablesVariant, String)> {
    let legacy = start("iptables-legacy-save", &[], None).ok()?;
    let nft = start("iptables-nft-save", &[], None).ok()?;
    let (legacy, nft) = (legacy.finish().ok()?, nft.finish().ok()?);
    choose_iptables_variant(&legacy, &nft)
}

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
    /// `iptables` or `ip6tables` (`-legacy`/`-nft` when a variant was chosen, see [`set_iptables_variant`]).
    pub fn iptables(self) -> &'static str {
        self.tool(Tool::Iptables, iptables_variant())
    }
    /// `iptables-save` or `ip6tables-save` (of the chosen variant).
    pub fn save(self) -> &'static str {
        self.tool(Tool::Save, iptables_variant())
    }
    /// `iptables-restore` or `ip6tables-restore` (of the chosen variant).
    pub fn restore(self) -> &'static str {
        self.tool(Tool::Restore, iptables_variant())
    }
    /// The binary name of `tool` for this family in `variant`.
    pub fn tool(self, tool: Tool, variant: IptablesVariant) -> &'static str {
        use IptablesVariant::{Legacy, Nft, System};
        match (self, tool, variant) {
            (Self::V4, Tool::Iptables, System) => "iptables",
            (Self::V4, Tool::Iptables, Legacy) => "iptables-legacy",
            (Self::V4, Tool::Iptables, Nft) => "iptables-nft",
            (Self::V4, Tool::Save, System) => "iptables-save",
            (Self::V4, Tool::Save, Legacy) => "iptables-legacy-save",
            (Self::V4, Tool::Save, Nft) => "iptables-nft-save",
            (Self::V4, Tool::Restore, System) => "iptables-restore",
            (Self::V4, Tool::Restore, Legacy) => "iptables-legacy-restore",
            (Self::V4, Tool::Restore, Nft) => "iptables-nft-restore",
            (Self::V6, Tool::Iptables, System) => "ip6tables",
            (Self::V6, Tool::Iptables, Legacy) => "ip6tables-legacy",
            (Self::V6, Tool::Iptables, Nft) => "ip6tables-nft",
            (Self::V6, Tool::Save, System) => "ip6tables-save",
            (Self::V6, Tool::Save, Legacy) => "ip6tables-legacy-save",
            (Self::V6, Tool::Save, Nft) => "ip6tables-nft-save",
            (Self::V6, Tool::Restore, System) => "ip6tables-restore",
            (Self::V6, Tool::Restore, Legacy) => "ip6tables-legacy-restore",
            (Self::V6, Tool::Restore, Nft) => "ip6tables-nft-restore",
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

    const EMPTY: &str =
        "*filter\n:INPUT ACCEPT [0:0]\n:FORWARD ACCEPT [0:0]\n:OUTPUT ACCEPT [0:0]\nCOMMIT\n";

    #[test]
    fn iptables_variant_follows_the_kubelet_then_the_rules() {
        let hinted = "*mangle\n:KUBE-IPTABLES-HINT - [0:0]\nCOMMIT\n";
        let canary = "*filter\n:KUBE-KUBELET-CANARY - [0:0]\nCOMMIT\n";
        let busy =
            "*filter\n:FORWARD DROP [0:0]\n-A FORWARD -j DOCKER\n-A FORWARD -j ACCEPT\nCOMMIT\n";
        assert_eq!(
            choose_iptables_variant(hinted, busy).map(|c| c.0),
            Some(IptablesVariant::Legacy)
        );
        assert_eq!(
            choose_iptables_variant(busy, canary).map(|c| c.0),
            Some(IptablesVariant::Nft)
        );
        assert_eq!(
            choose_iptables_variant(busy, EMPTY).map(|c| c.0),
            Some(IptablesVariant::Legacy)
        );
        assert_eq!(
            choose_iptables_variant(EMPTY, busy).map(|c| c.0),
            Some(IptablesVariant::Nft)
        );
        // Nothing to go by (a fresh node), or the kubelet in both: the system's choice stays.
        assert_eq!(choose_iptables_variant(EMPTY, EMPTY), None);
        assert_eq!(choose_iptables_variant("", ""), None);
        assert_eq!(choose_iptables_variant(hinted, hinted), None);
        // nft's warning about legacy tables is a comment, not a rule.
        let warned =
            "# Warning: iptables-legacy tables present, use iptables-legacy-save to see them\n";
        assert_eq!(choose_iptables_variant(EMPTY, warned), None);
    }

    #[test]
    fn variant_names() {
        use IptablesVariant::*;
        assert_eq!(Family::V4.tool(Tool::Save, Legacy), "iptables-legacy-save");
        assert_eq!(
            Family::V6.tool(Tool::Restore, Legacy),
            "ip6tables-legacy-restore"
        );
        assert_eq!(Family::V6.tool(Tool::Save, Nft), "ip6tables-nft-save");
        assert_eq!(Family::V4.tool(Tool::Iptables, System), "iptables");
        // The process default is the system's names.
        assert_eq!(iptables_variant(), System);
        assert_eq!(Family::V4.restore(), "iptables-restore");
    }

    proptest::proptest! {
        #[test]
        fn choosing_a_variant_never_panics(a in ".{0,300}", b in "(:KUBE-[A-Z-]{0,20} |-A |[^\n]{0,20}|\n){0,30}") {
            let _ = choose_iptables_variant(&a, &b);
            let _ = choose_iptables_variant(&b, &a);
        }
    }

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
