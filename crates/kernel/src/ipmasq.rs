//! Per-container source NAT ("ipMasq") for the `bridge` and `ptp` plugins, in the rule layouts of the reference
//! Go plugins so that either implementation can clean up the other's state (cni.md §2.1, §5 item 4).
//!
//! Two backends, both driven through the firewall tools as child processes in the calling thread's network
//! namespace (crates.md §4: shelling out gives exact parity with the Go plugins and golden-text tests):
//!
//! * iptables (`nat` table): chain `CNI-` + 24 hex chars of sha512(network + containerID), jumped to from
//!   `POSTROUTING -s <ip>/32`; it accepts the container's own subnet and masquerades everything else except
//!   multicast. Every rule carries the comment `name: "<net>" id: "<cid>"`. The reference layout ignores the
//!   interface name, so this one does too. One `iptables-save -t nat` plus at most one `iptables-restore --noflush`
//!   per address family and operation.
//! * nftables (plugins >= v1.6): table `inet cni_plugins_masquerade`; one rule per address in chain `masq_checks`,
//!   identified by a comment that starts with hashes of the network and of `ifname:containerID`, so teardown and GC
//!   never need the addresses. One `nft -j list chain` plus at most one `nft -f -` per operation.
//!
//! Teardown and GC clean both backends and both families; their three reads run concurrently.

use std::collections::{BTreeSet, HashSet};

use ipnet::IpNet;
use sha2::{Digest, Sha512};

use crate::firewall::{
    self, delete_line as ipt_delete_line, iptables_usable, join_errors,
    jump_target as ipt_jump_target, parse_save, quote as ipt_quote,
    rule_comment as ipt_rule_comment, run, start, start_iptables_save, Family, RunError, RunResult,
    Running, SavedTable,
};
use crate::{Error, Result};

/// Name of the nftables table (family `inet`) shared by all masquerading plugins.
pub const NFT_TABLE: &str = "cni_plugins_masquerade";
/// Name of the regular nftables chain that holds one rule per container address.
pub const NFT_CHAIN: &str = "masq_checks";
/// Name of the base chain (nat, postrouting hook) that jumps to [`NFT_CHAIN`].
const NFT_BASE_CHAIN: &str = "postrouting";
/// nftables keeps at most 128 bytes of a comment; knftables truncates to that, so must we to compare comments.
const NFT_COMMENT_MAX: usize = 128;
/// Comments the Go plugins put on the table and chain (knftables writes them; harmless, and keeps `nft list` equal).
const NFT_TABLE_COMMENT: &str =
    "Masquerading for plugins from github.com/containernetworking/plugins";
const NFT_CHAIN_COMMENT: &str =
    "Masquerade traffic from certain IPs to any (non-multicast) IP outside their subnet";

/// How many times a read-modify-write cycle is attempted: a concurrent change between the read and the write
/// (another plugin instance deleting a rule we planned to delete) makes the batch fail as a whole, and reading
/// again resolves it.
const ATTEMPTS: usize = 2;

/// Which firewall tool installs the masquerade rules.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MasqBackend {
    /// `iptables-restore` / `ip6tables-restore` (legacy or nf_tables flavour).
    Iptables,
    /// `nft`, table `inet cni_plugins_masquerade`.
    Nftables,
}

impl MasqBackend {
    /// Parses the `ipMasqBackend` configuration value (`"iptables"` or `"nftables"`).
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "iptables" => Some(Self::Iptables),
            "nftables" => Some(Self::Nftables),
            _ => None,
        }
    }

    /// The configuration spelling of this backend.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Iptables => "iptables",
            Self::Nftables => "nftables",
        }
    }
}

/// Chooses the backend like upstream: explicit choice, else iptables if usable, else nftables.
///
/// (The explicit choice is the caller's `MasqBackend::parse` of `ipMasqBackend`; this is the fallback.) Upstream
/// prefers iptables unless iptables is unusable and nftables usable (cni.md §2.1), so a node keeps one rule layout
/// across plugin upgrades.
pub fn default_backend() -> MasqBackend {
    if iptables_usable(Family::V4) || !nft_usable() {
        MasqBackend::Iptables
    } else {
        MasqBackend::Nftables
    }
}

/// Installs masquerading for `ips` (container addresses with their prefix) of one attachment; idempotent.
pub fn setup_ip_masq(
    backend: MasqBackend,
    network: &str,
    container_id: &str,
    ifname: &str,
    ips: &[IpNet],
) -> Result<()> {
    validate(network, container_id, ifname)?;
    match backend {
        MasqBackend::Iptables => {
            let chain = iptables_chain_name(network, container_id);
            let comment = iptables_comment(network, container_id);
            for fam in [Family::V4, Family::V6] {
                let fam_ips: Vec<IpNet> = ips.iter().copied().filter(|ip| fam.holds(ip)).collect();
                if !fam_ips.is_empty() {
                    ipt_setup(fam, &chain, &comment, &fam_ips)?;
                }
            }
            Ok(())
        }
        MasqBackend::Nftables => nft_setup(network, container_id, ifname, ips),
    }
}

/// Removes this container's rules from BOTH backends; must work with `ips` empty (interface already gone): find rules by comment.
///
/// Both backends are cleaned because the attachment may have been created by another plugin version or with another
/// `ipMasqBackend` (upstream does the same). Tables, tools or address families that are absent hold nothing to
/// remove and count as success, so DEL stays as infallible as possible (cni.md §5 item 2).
pub fn teardown_ip_masq(
    network: &str,
    container_id: &str,
    ifname: &str,
    ips: &[IpNet],
) -> Result<()> {
    validate(network, container_id, ifname)?;
    let mut errors = Vec::new();
    let chain = iptables_chain_name(network, container_id);
    let comment = iptables_comment(network, container_id);
    let reads = Reads::start_all();
    for (fam, first) in [(Family::V4, reads.v4), (Family::V6, reads.v6)] {
        // A family the caller gave addresses for must be readable; any other one is checked best-effort, since an
        // unreadable nat table (module or tool missing) cannot hold our rules.
        let required = ips.iter().any(|ip| fam.holds(ip));
        let targets = [(chain.clone(), comment.clone())];
        if let Err(e) = ipt_remove(fam, required, first, |_| targets.to_vec()) {
            errors.push(e);
        }
    }
    let prefix = nft_instance_hash(network, ifname, container_id);
    if let Err(e) = nft_remove("nft teardown", reads.nft, |comment| {
        comment.starts_with(&prefix)
    }) {
        errors.push(e);
    }
    join_errors("ipmasq teardown", errors)
}

/// GC: removes rules of this network whose (container, ifname) is not in `valid`.
///
/// `valid` holds `(container_id, ifname)` pairs. The iptables layout does not record the interface name, so there a
/// container is kept if it appears in `valid` with any interface. (Upstream has no iptables GC; the comment on every
/// rule names the network and the container, which is enough to find stale chains.)
pub fn gc_ip_masq(network: &str, valid: &[(String, String)]) -> Result<()> {
    let mut errors = Vec::new();
    let valid_ids: HashSet<&str> = valid.iter().map(|(cid, _)| cid.as_str()).collect();
    let reads = Reads::start_all();
    for (fam, first) in [(Family::V4, reads.v4), (Family::V6, reads.v6)] {
        let res = ipt_remove(fam, false, first, |table| {
            ipt_stale_containers(table, network, &valid_ids)
                .into_iter()
                .map(|cid| {
                    (
                        iptables_chain_name(network, &cid),
                        iptables_comment(network, &cid),
                    )
                })
                .collect()
        });
        if let Err(e) = res {
            errors.push(e);
        }
    }
    let net_prefix = format!("{}-", nft_network_hash(network));
    let keep: HashSet<String> = valid
        .iter()
        .map(|(cid, ifname)| nft_comment(network, ifname, cid))
        .collect();
    if let Err(e) = nft_remove("nft gc", reads.nft, |comment| {
        comment.starts_with(&net_prefix) && !keep.contains(comment)
    }) {
        errors.push(e);
    }
    join_errors("ipmasq gc", errors)
}

// ---------------------------------------------------------------------------------------------------------------
// Naming. All hashes are prefixes of the lowercase hex of sha512, as upstream's MustFormatHashWithPrefix
// (pkg/utils/utils.go): format the 64-byte digest as 128 hex chars and keep the first `len`.

/// The first `len` (at most 128) lowercase hex characters of sha512(`input`).
pub fn sha512_hex_prefix(input: &str, len: usize) -> String {
    let digest = Sha512::digest(input.as_bytes());
    let mut hex: String = digest.iter().map(|b| format!("{b:02x}")).collect();
    hex.truncate(len);
    hex
}

/// The iptables chain of one container: `CNI-` + 24 hex chars of sha512(network + containerID), 28 chars in all.
pub fn iptables_chain_name(network: &str, container_id: &str) -> String {
    format!(
        "CNI-{}",
        sha512_hex_prefix(&format!("{network}{container_id}"), 24)
    )
}

/// The comment on every iptables rule of one container: `name: "<net>" id: "<cid>"`.
///
/// Upstream formats it with Go's `%q`; for the characters [`validate`] admits that is plain double quotes.
pub fn iptables_comment(network: &str, container_id: &str) -> String {
    format!("name: \"{network}\" id: \"{container_id}\"")
}

/// First part of every nftables comment of a network: 16 hex chars of sha512(network).
fn nft_network_hash(network: &str) -> String {
    sha512_hex_prefix(network, 16)
}

/// Identifies one attachment: `hash16(network)-hash16(ifname + ":" + containerID)` (upstream `hashForInstance`).
fn nft_instance_hash(network: &str, ifname: &str, container_id: &str) -> String {
    format!(
        "{}-{}",
        nft_network_hash(network),
        sha512_hex_prefix(&format!("{ifname}:{container_id}"), 16)
    )
}

/// The comment on the nftables rules of one attachment:
/// `<instance hash>, net: <net>, if: <ifname>, id: <cid>` with `"` removed, cut to 128 bytes.
pub fn nft_comment(network: &str, ifname: &str, container_id: &str) -> String {
    let mut comment = format!(
        "{}, net: {}, if: {}, id: {}",
        nft_instance_hash(network, ifname, container_id),
        network.replace('"', ""),
        ifname.replace('"', ""),
        container_id.replace('"', "")
    );
    if comment.len() > NFT_COMMENT_MAX {
        // Upstream cuts at byte 128; back off to a char boundary so the result stays a valid string (identical
        // for the ASCII identifiers the CNI spec allows).
        let mut cut = NFT_COMMENT_MAX;
        while !comment.is_char_boundary(cut) {
            cut -= 1;
        }
        comment.truncate(cut);
    }
    comment
}

/// Rejects identifiers that could break out of the quoted comments in the tool input.
///
/// The CNI spec limits container IDs and network names to `[a-zA-Z0-9_.-]` and interface names to printable
/// characters without `/`, `:` or whitespace (cni.md §1.1, §1.2); anything printable except quotes and
/// backslashes is accepted here.
fn validate(network: &str, container_id: &str, ifname: &str) -> Result<()> {
    for (what, value) in [
        ("network name", network),
        ("container ID", container_id),
        ("interface name", ifname),
    ] {
        let bad = value.is_empty()
            || value
                .chars()
                .any(|c| !c.is_ascii_graphic() || c == '"' || c == '\\');
        if bad {
            return Err(Error::Firewall {
                op: "ipmasq".into(),
                msg: format!("invalid {what} {value:?}"),
            });
        }
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------------------------
// Reading both backends at once.

/// The reads teardown and GC need, started together so the three tools run concurrently (a DEL otherwise pays
/// three process round trips one after the other before it can write anything).
struct Reads {
    v4: RunResult,
    v6: RunResult,
    nft: RunResult,
}

impl Reads {
    fn start_all() -> Self {
        let v4 = start_iptables_save(Family::V4, Some(IPT_TABLE));
        let v6 = start_iptables_save(Family::V6, Some(IPT_TABLE));
        let nft = start("nft", NFT_LIST_ARGS, None);
        Self {
            v4: v4.and_then(Running::finish),
            v6: v6.and_then(Running::finish),
            nft: nft.and_then(Running::finish),
        }
    }
}

// ---------------------------------------------------------------------------------------------------------------
// iptables backend.

/// The `nat` table as `iptables-save` prints it.
type NatTable = SavedTable;

fn parse_nat(save: &str) -> NatTable {
    parse_save(save, "nat")
}

const IPT_TABLE: &str = "nat";

fn ipt_save(fam: Family) -> RunResult {
    firewall::iptables_save(fam, Some(IPT_TABLE))
}

fn ipt_restore(fam: Family, payload: &str) -> std::result::Result<(), RunError> {
    firewall::iptables_restore(fam, payload)
}

/// Parses a comment of the form `name: "<net>" id: "<cid>"`.
fn ipt_parse_comment(comment: &str) -> Option<(&str, &str)> {
    let rest = comment.strip_prefix("name: \"")?;
    let (net, rest) = rest.split_once("\" id: \"")?;
    let cid = rest.strip_suffix('"')?;
    Some((net, cid))
}

/// The rules one container needs in one family: (POSTROUTING jump lines, chain lines), in iptables-save form.
fn ipt_wanted(
    fam: Family,
    chain: &str,
    comment: &str,
    ips: &[IpNet],
) -> (Vec<String>, Vec<String>) {
    let c = ipt_quote(comment);
    let mut jumps = Vec::new();
    let mut subnets = Vec::new();
    for ip in ips.iter().filter(|ip| fam.holds(ip)) {
        let jump = format!(
            "-A POSTROUTING -s {}/{} -m comment --comment {c} -j {chain}",
            ip.addr(),
            fam.host_prefix()
        );
        if !jumps.contains(&jump) {
            jumps.push(jump);
        }
        let subnet = ip.trunc();
        if !subnets.contains(&subnet) {
            subnets.push(subnet);
        }
    }
    // All ACCEPTs before the single MASQUERADE: upstream appends per address, which for a second address of the same
    // family would put its ACCEPT after the MASQUERADE; for one address per family the text is identical.
    let mut chain_rules: Vec<String> = subnets
        .iter()
        .map(|s| format!("-A {chain} -d {s} -m comment --comment {c} -j ACCEPT"))
        .collect();
    chain_rules.push(format!(
        "-A {chain} ! -d {} -m comment --comment {c} -j MASQUERADE",
        fam.multicast()
    ));
    (jumps, chain_rules)
}

/// Whether a rule outside our chain belongs to it: it jumps to the chain, or it is a POSTROUTING rule with our comment
/// (how upstream identifies the jump; covers the legacy `-s <cidr>` form too).
fn ipt_refers_to(rule_chain: &str, line: &str, chain: &str, comment: &str) -> bool {
    ipt_jump_target(line) == Some(chain)
        || (rule_chain == "POSTROUTING" && ipt_rule_comment(line).as_deref() == Some(comment))
}

/// Builds the restore input that turns `table` into the wanted state, or `None` if it is already there.
fn ipt_setup_payload(
    table: &NatTable,
    chain: &str,
    comment: &str,
    jumps: &[String],
    rules: &[String],
) -> Option<String> {
    let have_rules: Vec<&str> = table
        .rules
        .iter()
        .filter(|(c, _)| c == chain)
        .map(|(_, l)| l.as_str())
        .collect();
    let mut kept: HashSet<&str> = HashSet::new();
    let mut deletes = Vec::new();
    for (rule_chain, line) in &table.rules {
        if rule_chain == chain || !ipt_refers_to(rule_chain, line, chain, comment) {
            continue;
        }
        // Keep one copy of each wanted jump; delete duplicates (an earlier ADD retried by a crashed runtime with the
        // Go plugin) and jumps for addresses the container no longer has.
        if jumps.iter().any(|j| j == line) && kept.insert(line.as_str()) {
            continue;
        }
        deletes.push(ipt_delete_line(line));
    }
    let missing: Vec<&String> = jumps
        .iter()
        .filter(|j| !kept.contains(j.as_str()))
        .collect();
    if table.chains.contains(chain)
        && have_rules == rules
        && deletes.is_empty()
        && missing.is_empty()
    {
        return None;
    }
    // Declaring the chain creates it, or flushes it if it exists (both legacy and nft iptables-restore, also with
    // --noflush), so the chain body is rewritten rather than appended to.
    let mut p = format!("*nat\n:{chain} - [0:0]\n");
    for line in deletes
        .iter()
        .map(String::as_str)
        .chain(rules.iter().map(String::as_str))
    {
        p.push_str(line);
        p.push('\n');
    }
    for line in missing {
        p.push_str(line);
        p.push('\n');
    }
    p.push_str("COMMIT\n");
    Some(p)
}

/// Brings one family's nat table to the wanted state with one save and at most one restore.
fn ipt_setup(fam: Family, chain: &str, comment: &str, ips: &[IpNet]) -> Result<()> {
    let op = format!("{} masquerade setup for chain {chain}", fam.iptables());
    let (jumps, rules) = ipt_wanted(fam, chain, comment, ips);
    let mut attempt = 0;
    loop {
        attempt += 1;
        let table = parse_nat(&ipt_save(fam).map_err(|e| e.into_error(&op))?);
        let Some(payload) = ipt_setup_payload(&table, chain, comment, &jumps, &rules) else {
            return Ok(());
        };
        match ipt_restore(fam, &payload) {
            Ok(()) => return Ok(()),
            Err(RunError::Failed(msg)) if attempt < ATTEMPTS => {
                tracing::debug!(%op, %msg, "iptables-restore failed; reading the table again");
            }
            Err(e) => return Err(e.into_error(&op)),
        }
    }
}

/// Builds the restore input that removes the given `(chain, comment)` containers, or `None` if nothing is there.
fn ipt_remove_payload(table: &NatTable, targets: &[(String, String)]) -> Option<String> {
    let mut p = String::from("*nat\n");
    let mut any = false;
    for (rule_chain, line) in &table.rules {
        let ours = targets.iter().any(|(chain, comment)| {
            rule_chain != chain && ipt_refers_to(rule_chain, line, chain, comment)
        });
        if ours {
            p.push_str(&ipt_delete_line(line));
            p.push('\n');
            any = true;
        }
    }
    for (chain, _) in targets
        .iter()
        .filter(|(chain, _)| table.chains.contains(chain))
    {
        p.push_str(&format!("-F {chain}\n-X {chain}\n"));
        any = true;
    }
    p.push_str("COMMIT\n");
    any.then_some(p)
}

/// Removes the containers `select` picks from the current table of one family: `first_read` is the output of an
/// already started save, then at most one restore (and one more save and restore on a lost race). A missing tool is
/// success; an unreadable table is an error only if `required`.
fn ipt_remove(
    fam: Family,
    required: bool,
    first_read: RunResult,
    select: impl Fn(&NatTable) -> Vec<(String, String)>,
) -> Result<()> {
    let op = format!("{} masquerade removal", fam.iptables());
    let mut first_read = Some(first_read);
    let mut attempt = 0;
    loop {
        attempt += 1;
        let read = first_read.take().unwrap_or_else(|| ipt_save(fam));
        let table = match read {
            Ok(out) => parse_nat(&out),
            Err(RunError::Missing(bin)) => {
                tracing::debug!(bin, "not installed; no iptables masquerade rules to remove");
                return Ok(());
            }
            Err(e) if !required => {
                // No addresses of this family were given, and a nat table we cannot read holds nothing of ours.
                tracing::warn!(error = %e.into_error(&op), "skipping unreadable nat table");
                return Ok(());
            }
            Err(e) => return Err(e.into_error(&op)),
        };
        let targets = select(&table);
        let Some(payload) = ipt_remove_payload(&table, &targets) else {
            return Ok(());
        };
        match ipt_restore(fam, &payload) {
            Ok(()) => return Ok(()),
            Err(RunError::Failed(msg)) if attempt < ATTEMPTS => {
                tracing::debug!(%op, %msg, "iptables-restore failed; reading the table again");
            }
            Err(e) => return Err(e.into_error(&op)),
        }
    }
}

/// Container IDs of `network` that have masquerade rules in `table` but are not in `valid`.
///
/// A rule counts only if its comment parses as `name: "<network>" id: "<cid>"` AND it is in, or jumps to, the chain
/// derived from that pair, so rules of other plugins (portmap's `dnat name: …`, `CNI-DN-…`) are never matched.
fn ipt_stale_containers(
    table: &NatTable,
    network: &str,
    valid: &HashSet<&str>,
) -> BTreeSet<String> {
    let mut stale = BTreeSet::new();
    for (rule_chain, line) in &table.rules {
        let Some(comment) = ipt_rule_comment(line) else {
            continue;
        };
        let Some((net, cid)) = ipt_parse_comment(&comment) else {
            continue;
        };
        if net != network || valid.contains(cid) {
            continue;
        }
        let chain = iptables_chain_name(net, cid);
        if *rule_chain == chain || ipt_jump_target(line) == Some(chain.as_str()) {
            stale.insert(cid.to_string());
        }
    }
    stale
}

// ---------------------------------------------------------------------------------------------------------------
// nftables backend.

/// Whether nft can talk to nf_tables here (upstream's `SupportsNFTables`: a check-only transaction).
fn nft_usable() -> bool {
    firewall::nft_usable("inet", NFT_TABLE)
}

/// A rule of [`NFT_CHAIN`]: handle and comment.
#[derive(Debug)]
struct NftRule {
    handle: u64,
    comment: Option<String>,
}

/// Parses `nft -j list chain …` output.
fn parse_nft_rules(json: &str) -> std::result::Result<Vec<NftRule>, String> {
    let v: serde_json::Value =
        serde_json::from_str(json).map_err(|e| format!("bad nft JSON: {e}"))?;
    let items = v
        .get("nftables")
        .and_then(|x| x.as_array())
        .ok_or_else(|| "nft JSON without an \"nftables\" array".to_string())?;
    let mut rules = Vec::new();
    for rule in items.iter().filter_map(|item| item.get("rule")) {
        let handle = rule
            .get("handle")
            .and_then(|h| h.as_u64())
            .ok_or_else(|| format!("nft rule without a handle: {rule}"))?;
        let comment = rule
            .get("comment")
            .and_then(|c| c.as_str())
            .map(str::to_string);
        rules.push(NftRule { handle, comment });
    }
    Ok(rules)
}

const NFT_LIST_ARGS: &[&str] = &["-j", "list", "chain", "inet", NFT_TABLE, NFT_CHAIN];

/// Lists the rules of [`NFT_CHAIN`].
fn nft_list() -> std::result::Result<Vec<NftRule>, RunError> {
    nft_rules(run("nft", NFT_LIST_ARGS, None))
}

/// Interprets the output of `nft -j list chain`; a missing table or chain is an empty list.
fn nft_rules(listed: RunResult) -> std::result::Result<Vec<NftRule>, RunError> {
    match listed {
        Ok(out) => parse_nft_rules(&out).map_err(RunError::Failed),
        // nft reports ENOENT for a missing table or chain.
        Err(e) if e.is_nft_not_found() => Ok(Vec::new()),
        Err(e) => Err(e),
    }
}

fn nft_delete_line(handle: u64) -> String {
    format!("delete rule inet {NFT_TABLE} {NFT_CHAIN} handle {handle}\n")
}

/// The `nft -f` input of one ADD: ensure table and chains, rewrite the base chain, replace this attachment's rules.
fn nft_setup_payload(comment: &str, stale: &[u64], ips: &[IpNet]) -> String {
    let t = format!("inet {NFT_TABLE}");
    let mut p = format!(
        "add table {t} {{ comment \"{NFT_TABLE_COMMENT}\" ; }}\n\
         add chain {t} {NFT_CHAIN} {{ comment \"{NFT_CHAIN_COMMENT}\" ; }}\n\
         add chain {t} {NFT_BASE_CHAIN} {{ type nat hook postrouting priority srcnat ; }}\n\
         flush chain {t} {NFT_BASE_CHAIN}\n\
         add rule {t} {NFT_BASE_CHAIN} ip daddr 224.0.0.0/4 return\n\
         add rule {t} {NFT_BASE_CHAIN} ip6 daddr ff00::/8 return\n\
         add rule {t} {NFT_BASE_CHAIN} goto {NFT_CHAIN}\n"
    );
    for &handle in stale {
        p.push_str(&nft_delete_line(handle));
    }
    let mut seen = HashSet::new();
    for ip in ips.iter().filter(|ip| seen.insert(**ip)) {
        let proto = match ip {
            IpNet::V4(_) => "ip",
            IpNet::V6(_) => "ip6",
        };
        p.push_str(&format!(
            "add rule {t} {NFT_CHAIN} {proto} saddr {} {proto} daddr != {} masquerade comment \"{comment}\"\n",
            ip.addr(),
            ip.trunc()
        ));
    }
    p
}

fn nft_setup(network: &str, container_id: &str, ifname: &str, ips: &[IpNet]) -> Result<()> {
    let op = format!("nft masquerade setup for {network}/{container_id}/{ifname}");
    let comment = nft_comment(network, ifname, container_id);
    let prefix = nft_instance_hash(network, ifname, container_id);
    let mut attempt = 0;
    loop {
        attempt += 1;
        let stale: Vec<u64> = nft_list()
            .map_err(|e| e.into_error(&op))?
            .into_iter()
            .filter(|r| r.comment.as_deref().is_some_and(|c| c.starts_with(&prefix)))
            .map(|r| r.handle)
            .collect();
        let payload = nft_setup_payload(&comment, &stale, ips);
        match run("nft", &["-f", "-"], Some(&payload)) {
            Ok(_) => return Ok(()),
            Err(RunError::Failed(msg)) if attempt < ATTEMPTS && !stale.is_empty() => {
                tracing::debug!(%op, %msg, "nft batch failed; listing the chain again");
            }
            Err(e) => return Err(e.into_error(&op)),
        }
    }
}

/// Deletes the rules of [`NFT_CHAIN`] whose comment satisfies `pick`, in one batch; `first_read` is the output of an
/// already started listing.
fn nft_remove(op: &str, first_read: RunResult, pick: impl Fn(&str) -> bool) -> Result<()> {
    let mut first_read = Some(first_read);
    let mut attempt = 0;
    loop {
        attempt += 1;
        let listed = first_read
            .take()
            .unwrap_or_else(|| run("nft", NFT_LIST_ARGS, None));
        let rules = match nft_rules(listed) {
            Ok(r) => r,
            Err(e) if e.is_missing() => return Ok(()),
            // Like upstream, an error from a system where nftables is unusable means there is nothing to remove.
            Err(e) if !nft_usable() => {
                tracing::debug!(error = %e.into_error(op), "nftables unusable; no nft masquerade rules to remove");
                return Ok(());
            }
            Err(e) => return Err(e.into_error(op)),
        };
        let handles: Vec<u64> = rules
            .iter()
            .filter(|r| r.comment.as_deref().is_some_and(&pick))
            .map(|r| r.handle)
            .collect();
        if handles.is_empty() {
            return Ok(());
        }
        let payload: String = handles.iter().map(|&h| nft_delete_line(h)).collect();
        match run("nft", &["-f", "-"], Some(&payload)) {
            Ok(_) => return Ok(()),
            Err(RunError::Failed(msg)) if attempt < ATTEMPTS => {
                tracing::debug!(%op, %msg, "nft batch failed; listing the chain again");
            }
            Err(e) => return Err(e.into_error(op)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn net(s: &str) -> IpNet {
        s.parse().unwrap()
    }

    #[test]
    fn chain_name_matches_reference_plugins() {
        // Measured from the Debian v1.1.1 bridge plugin (cni.md §2.6) and upstream's utils_test.go.
        assert_eq!(
            iptables_chain_name("rtest", "ctr1"),
            "CNI-024f0d7e0ad69f69a7e4b464"
        );
        assert_eq!(
            iptables_chain_name("test", "1234"),
            "CNI-2bbe0c48b91a7d1b8a6753a8"
        );
        assert_eq!(
            iptables_chain_name("testalongnamethatdoesnotmakesense", "1234"),
            "CNI-374f33fe84ab0ed84dcdebe3"
        );
        assert_eq!(iptables_chain_name("a", "b").len(), 28);
        // The bandwidth ifb `bwp024f0d7e0ad6` shares the prefix (cni.md §2.7).
        assert_eq!(sha512_hex_prefix("rtestctr1", 12), "024f0d7e0ad6");
        assert_eq!(sha512_hex_prefix("x", 500).len(), 128);
    }

    #[test]
    fn comments() {
        assert_eq!(
            iptables_comment("rtest", "ctr1"),
            r#"name: "rtest" id: "ctr1""#
        );
        let c = nft_comment("rtest", "eth0", "ctr1");
        let expect = format!(
            "{}-{}, net: rtest, if: eth0, id: ctr1",
            sha512_hex_prefix("rtest", 16),
            sha512_hex_prefix("eth0:ctr1", 16)
        );
        assert_eq!(c, expect);
        assert!(c.starts_with(&nft_instance_hash("rtest", "eth0", "ctr1")));
        let long = nft_comment("n", "eth0", &"a".repeat(200));
        assert_eq!(long.len(), 128);
        assert_eq!(nft_comment("n\"q", "e", "c").matches('"').count(), 0);
    }

    #[test]
    fn backend_parse() {
        assert_eq!(MasqBackend::parse("iptables"), Some(MasqBackend::Iptables));
        assert_eq!(MasqBackend::parse("nftables"), Some(MasqBackend::Nftables));
        assert_eq!(MasqBackend::parse("nft"), None);
        assert_eq!(MasqBackend::Nftables.as_str(), "nftables");
    }

    #[test]
    fn validation() {
        assert!(validate("rtest", "ctr1", "eth0").is_ok());
        assert!(validate("", "ctr1", "eth0").is_err());
        assert!(validate("a\"b", "ctr1", "eth0").is_err());
        assert!(validate("a", "c d", "eth0").is_err());
        assert!(validate("a", "c", "e\n").is_err());
        assert!(validate("a", "c", "e\\").is_err());
    }

    const REFERENCE: &str = "*nat\n\
:PREROUTING ACCEPT [0:0]\n\
:POSTROUTING ACCEPT [0:0]\n\
:CNI-024f0d7e0ad69f69a7e4b464 - [0:0]\n\
:CNI-HOSTPORT-MASQ - [0:0]\n\
-A POSTROUTING -m comment --comment \"CNI portfwd requiring masquerade\" -j CNI-HOSTPORT-MASQ\n\
-A POSTROUTING -s 10.250.0.2/32 -m comment --comment \"name: \\\"rtest\\\" id: \\\"ctr1\\\"\" -j CNI-024f0d7e0ad69f69a7e4b464\n\
-A CNI-024f0d7e0ad69f69a7e4b464 -d 10.250.0.0/24 -m comment --comment \"name: \\\"rtest\\\" id: \\\"ctr1\\\"\" -j ACCEPT\n\
-A CNI-024f0d7e0ad69f69a7e4b464 ! -d 224.0.0.0/4 -m comment --comment \"name: \\\"rtest\\\" id: \\\"ctr1\\\"\" -j MASQUERADE\n\
-A CNI-HOSTPORT-MASQ -m mark --mark 0x2000/0x2000 -j MASQUERADE\n\
COMMIT\n";

    #[test]
    fn wanted_rules_match_reference_text() {
        let chain = iptables_chain_name("rtest", "ctr1");
        let comment = iptables_comment("rtest", "ctr1");
        let (jumps, rules) = ipt_wanted(Family::V4, &chain, &comment, &[net("10.250.0.2/24")]);
        let table = parse_nat(REFERENCE);
        let have: Vec<&str> = table.rules.iter().map(|(_, l)| l.as_str()).collect();
        assert_eq!(jumps, vec![have[1].to_string()]);
        assert_eq!(rules, vec![have[2].to_string(), have[3].to_string()]);
        // Identical state: nothing to do.
        assert_eq!(
            ipt_setup_payload(&table, &chain, &comment, &jumps, &rules),
            None
        );
    }

    #[test]
    fn parse_save_lines() {
        let table = parse_nat(REFERENCE);
        assert!(table.chains.contains("CNI-024f0d7e0ad69f69a7e4b464"));
        let (_, jump) = &table.rules[1];
        assert_eq!(ipt_jump_target(jump), Some("CNI-024f0d7e0ad69f69a7e4b464"));
        assert_eq!(
            ipt_rule_comment(jump).as_deref(),
            Some(r#"name: "rtest" id: "ctr1""#)
        );
        assert_eq!(
            ipt_parse_comment(r#"name: "rtest" id: "ctr1""#),
            Some(("rtest", "ctr1"))
        );
        assert_eq!(ipt_parse_comment(r#"dnat name: "rtest" id: "ctr1""#), None);
        let (_, masq) = &table.rules[3];
        assert_eq!(ipt_jump_target(masq), Some("MASQUERADE"));
        assert_eq!(
            ipt_rule_comment("-A X -m comment --comment plain -j Y").as_deref(),
            Some("plain")
        );
    }

    #[test]
    fn setup_payload_replaces_stale_and_duplicate_jumps() {
        let chain = iptables_chain_name("rtest", "ctr1");
        let comment = iptables_comment("rtest", "ctr1");
        let dup = REFERENCE.replace(
            "-A CNI-024f0d7e0ad69f69a7e4b464 -d",
            &format!(
                "-A POSTROUTING -s 10.250.0.2/32 -m comment --comment {} -j {chain}\n\
                 -A POSTROUTING -s 10.250.0.0/24 -m comment --comment {} -j {chain}\n\
                 -A CNI-024f0d7e0ad69f69a7e4b464 -d",
                ipt_quote(&comment),
                ipt_quote(&comment)
            ),
        );
        let table = parse_nat(&dup);
        let (jumps, rules) = ipt_wanted(Family::V4, &chain, &comment, &[net("10.250.0.2/24")]);
        let p = ipt_setup_payload(&table, &chain, &comment, &jumps, &rules).unwrap();
        assert_eq!(p.matches("-D POSTROUTING").count(), 2, "{p}");
        assert!(p.contains("-D POSTROUTING -s 10.250.0.0/24"), "{p}");
        assert!(!p.contains("-A POSTROUTING"), "{p}");
        assert!(p.starts_with(&format!("*nat\n:{chain} - [0:0]\n")));
        assert!(p.ends_with("COMMIT\n"));
    }

    #[test]
    fn remove_payload_and_gc_selection() {
        let table = parse_nat(REFERENCE);
        let chain = iptables_chain_name("rtest", "ctr1");
        let p = ipt_remove_payload(
            &table,
            &[(chain.clone(), iptables_comment("rtest", "ctr1"))],
        )
        .unwrap();
        assert_eq!(p.matches("-D ").count(), 1, "{p}");
        assert!(p.contains(&format!("-F {chain}\n-X {chain}\n")));
        assert!(!p.contains("HOSTPORT"));
        let other = ipt_remove_payload(
            &table,
            &[(
                iptables_chain_name("rtest", "x"),
                iptables_comment("rtest", "x"),
            )],
        );
        assert_eq!(other, None);

        let none: HashSet<&str> = HashSet::new();
        let stale = ipt_stale_containers(&table, "rtest", &none);
        assert_eq!(
            stale.into_iter().collect::<Vec<_>>(),
            vec!["ctr1".to_string()]
        );
        let keep: HashSet<&str> = ["ctr1"].into_iter().collect();
        assert!(ipt_stale_containers(&table, "rtest", &keep).is_empty());
        assert!(ipt_stale_containers(&table, "other", &none).is_empty());
    }

    #[test]
    fn wanted_rules_multi_address() {
        let chain = iptables_chain_name("n", "c");
        let comment = iptables_comment("n", "c");
        let ips = [
            net("10.0.0.5/24"),
            net("10.1.0.5/16"),
            net("10.0.0.5/24"),
            net("fd00::5/64"),
        ];
        let (jumps, rules) = ipt_wanted(Family::V4, &chain, &comment, &ips);
        assert_eq!(jumps.len(), 2);
        assert_eq!(rules.len(), 3);
        assert!(rules[0].contains("-d 10.0.0.0/24 "));
        assert!(rules[1].contains("-d 10.1.0.0/16 "));
        assert!(rules[2].contains("! -d 224.0.0.0/4 "));
        let (jumps6, rules6) = ipt_wanted(Family::V6, &chain, &comment, &ips);
        assert_eq!(
            jumps6,
            vec![format!(
                "-A POSTROUTING -s fd00::5/128 -m comment --comment {} -j {chain}",
                ipt_quote(&comment)
            )]
        );
        assert!(rules6[0].contains("-d fd00::/64 "));
        assert!(rules6[1].contains("! -d ff00::/8 "));
    }

    #[test]
    fn nft_payload_and_json() {
        let comment = nft_comment("n", "eth0", "c");
        let p = nft_setup_payload(&comment, &[7], &[net("10.0.0.5/24"), net("fd00::5/64")]);
        assert!(p.contains("delete rule inet cni_plugins_masquerade masq_checks handle 7\n"));
        assert!(p.contains(&format!(
            "add rule inet cni_plugins_masquerade masq_checks ip saddr 10.0.0.5 ip daddr != 10.0.0.0/24 masquerade comment \"{comment}\"\n"
        )));
        assert!(p.contains("ip6 saddr fd00::5 ip6 daddr != fd00::/64 masquerade"));

        let json = r#"{"nftables": [{"metainfo": {"version": "1.0.6"}}, {"chain": {"family": "inet", "table": "cni_plugins_masquerade", "name": "masq_checks", "handle": 1}}, {"rule": {"family": "inet", "handle": 6, "comment": "abc", "expr": []}}, {"rule": {"handle": 9, "expr": []}}]}"#;
        let rules = parse_nft_rules(json).unwrap();
        assert_eq!(rules.len(), 2);
        assert_eq!(
            (rules[0].handle, rules[0].comment.as_deref()),
            (6, Some("abc"))
        );
        assert_eq!((rules[1].handle, rules[1].comment.as_deref()), (9, None));
        assert!(parse_nft_rules("not json").is_err());
        assert!(parse_nft_rules(r#"{"nftables": [{"rule": {"comment": "x"}}]}"#).is_err());
    }
}
