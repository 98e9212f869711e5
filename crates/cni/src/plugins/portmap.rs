//! The `portmap` meta-plugin: host ports forwarded to a pod (`runtimeConfig.portMappings`), in the reference's
//! iptables layout (`plugins/meta/portmap`, its default backend) so that either implementation removes the
//! other's rules.
//!
//! nat table, per address family of the pod (cni.md §2.6):
//! * `PREROUTING`, `OUTPUT`: `-m addrtype --dst-type LOCAL -j CNI-HOSTPORT-DNAT` (made once, never removed);
//! * `CNI-HOSTPORT-DNAT`: per protocol and at most 15 ports, `-m comment --comment 'dnat name: "<net>" id:
//!   "<cid>"' -m multiport -p P --destination-ports H,… [conditions] -j CNI-DN-<hash>`;
//! * `CNI-DN-<hash>` (`CNI-DN-` + the first 21 hex digits of SHA-512(network + container ID)): per mapping, with
//!   `snat`, `-s <pod CIDR | any with masqAll> -j CNI-HOSTPORT-SETMARK` (hairpin) and, IPv4 without `masqAll`,
//!   `-s 127.0.0.1 -j CNI-HOSTPORT-SETMARK` (localhost), then `-j DNAT --to-destination <ip>:<port>`;
//! * `CNI-HOSTPORT-SETMARK` sets the mark bit (`markMasqBit`, default 13), `CNI-HOSTPORT-MASQ` masquerades marked
//!   packets and is jumped to from a rule **prepended** to `POSTROUTING`. `externalSetMarkChain` replaces both.
//!
//! Unlike the reference, which runs one `iptables` process per rule, each operation is one `iptables-save -t nat`
//! and at most one `iptables-restore --noflush` per family, so ADD is atomic per family. The per-container chain
//! is rewritten as a whole on ADD (the reference appends what is missing), and DEL removes every rule of the table
//! that jumps to it, plus the legacy `CNI-SN-<hash>` chain. With `snat`, IPv4 ADD sets `route_localnet=1` on the
//! host interface that routes to the pod, as the reference, so `127.0.0.1:<hostPort>` works.
//!
//! `backend: "nftables"` selects the layout of [`nftables`] (the reference's table, maps instead of a rule per
//! mapping). Without `backend`, as the reference: nftables when the conditions are nft syntax (they do not start
//! with `-`) or when the iptables tools are missing, iptables otherwise. DEL, CHECK and GC work on the backend of
//! the configuration they are given.
//!
//! After ADD, the UDP conntrack entries to the mapped host ports are deleted (`kernel::conntrack`), as the
//! reference does.

use crate::error::CniError;
use crate::plugin::Plugin;
use crate::skel::CmdArgs;
use crate::types::{CniResult, NetConf};
use ipnet::IpNet;
use kernel::firewall::{self, Family, SavedTable};
use kernel::Netlink;
use serde::Deserialize;
use serde_json::Value;
use std::collections::BTreeMap;
use std::net::IpAddr;

pub mod nftables;

/// The top-level chains; the reference fixes these names "to allow upgrades".
pub const DNAT_CHAIN: &str = "CNI-HOSTPORT-DNAT";
/// The chain that sets the masquerade mark.
pub const SETMARK_CHAIN: &str = "CNI-HOSTPORT-SETMARK";
/// The chain that masquerades marked packets.
pub const MASQ_CHAIN: &str = "CNI-HOSTPORT-MASQ";
/// The top-level chain of the per-container `CNI-SN-` chains of old reference versions (only torn down).
pub const OLD_SNAT_CHAIN: &str = "CNI-HOSTPORT-SNAT";
/// The default mark bit (Kubernetes uses 14 and 15, Calico 20-31).
pub const DEFAULT_MARK_BIT: u32 = 13;
/// multiport takes at most 15 ports per rule.
const MULTIPORT_MAX: usize = 15;
/// iptables comments hold at most 255 bytes.
const COMMENT_MAX: usize = 255;
/// Read-modify-write attempts: a concurrent change between read and write fails the batch, and reading again
/// resolves it.
const ATTEMPTS: usize = 3;

/// The portmap plugin's row of the plugin table (no GC or STATUS in the reference; GC here removes the
/// iptables state of attachments not in `cni.dev/valid-attachments`).
pub const PLUGIN: Plugin = Plugin {
    name: "portmap",
    versions: crate::version::CHAINED,
    add: |_, args, conf| Box::pin(async move { add(args, conf).await.map(Some) }),
    del: |_, args, conf| Box::pin(async move { del(args, conf).map(|()| None) }),
    check: |_, args, conf| Box::pin(async move { check(args, conf).map(|()| None) }),
    gc: Some(|_, _, conf| Box::pin(async move { gc(conf).map(|()| None) })),
    status: None,
};

/// A transport protocol of a mapping.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Proto {
    Sctp,
    Tcp,
    Udp,
}

impl Proto {
    /// Parses a protocol name, case-insensitively as iptables does.
    pub fn parse(s: &str) -> Option<Self> {
        match s.to_ascii_lowercase().as_str() {
            "tcp" => Some(Self::Tcp),
            "udp" => Some(Self::Udp),
            "sctp" => Some(Self::Sctp),
            _ => None,
        }
    }

    /// The iptables spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Tcp => "tcp",
            Self::Udp => "udp",
            Self::Sctp => "sctp",
        }
    }
}

/// One port mapping (CONVENTIONS.md `portMappings` capability), validated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mapping {
    pub host_port: u16,
    pub container_port: u16,
    pub proto: Proto,
    /// `None`: any local address (also for `0.0.0.0` / `::`, which the reference treats as "any" of its family).
    pub host_ip: Option<IpAddr>,
    /// The family `hostIP` restricts the mapping to, if given.
    pub host_family: Option<Family>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct RawMapping {
    host_port: i64,
    container_port: i64,
    #[serde(default)]
    protocol: String,
    #[serde(default, rename = "hostIP")]
    host_ip: String,
}

/// Where the per-container chain sends packets to be masqueraded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Mark {
    /// Our `CNI-HOSTPORT-SETMARK` with this bit, and `CNI-HOSTPORT-MASQ`.
    Bit(u32),
    /// A chain someone else maintains (`externalSetMarkChain`).
    External(String),
}

/// The plugin's configuration, validated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Conf {
    pub backend: BackendKind,
    pub mappings: Vec<Mapping>,
    pub snat: bool,
    pub masq_all: bool,
    pub mark: Mark,
    pub conditions_v4: Vec<String>,
    pub conditions_v6: Vec<String>,
}

/// Which layout the rules take (`backend`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BackendKind {
    Iptables,
    Nftables,
}

/// Where an attachment's forwarding lives: one implementation per [`BackendKind`], chosen once per call.
trait Backend: Sync {
    /// Makes the forwarding of the pod address `net` (one family).
    fn forward(&self, conf: &Conf, network: &str, cid: &str, net: IpNet) -> Result<(), CniError>;
    /// Removes everything of the attachment in `families`; nothing there is success.
    fn unforward(&self, network: &str, cid: &str, families: &[Family]) -> Result<(), CniError>;
    /// Verifies the forwarding of `net`.
    fn check(&self, conf: &Conf, network: &str, cid: &str, net: IpNet) -> Result<(), CniError>;
    /// Removes the attachments of `network` whose container `keep` rejects.
    fn gc(&self, network: &str, keep: &dyn Fn(&str) -> bool) -> Result<(), CniError>;
}

struct Iptables;
struct Nftables;

impl Backend for Iptables {
    fn forward(&self, conf: &Conf, network: &str, cid: &str, net: IpNet) -> Result<(), CniError> {
        forward(conf, network, cid, net)
    }
    fn unforward(&self, network: &str, cid: &str, families: &[Family]) -> Result<(), CniError> {
        unforward(network, cid, families)
    }
    fn check(&self, conf: &Conf, network: &str, cid: &str, net: IpNet) -> Result<(), CniError> {
        check_iptables(conf, network, cid, net)
    }
    fn gc(&self, network: &str, keep: &dyn Fn(&str) -> bool) -> Result<(), CniError> {
        gc_iptables(network, keep)
    }
}

impl Backend for Nftables {
    fn forward(&self, conf: &Conf, network: &str, cid: &str, net: IpNet) -> Result<(), CniError> {
        nftables::forward(conf, network, cid, net)
    }
    fn unforward(&self, network: &str, cid: &str, families: &[Family]) -> Result<(), CniError> {
        nftables::unforward(network, cid, families)
    }
    fn check(&self, conf: &Conf, network: &str, cid: &str, net: IpNet) -> Result<(), CniError> {
        nftables::check(conf, network, cid, net)
    }
    fn gc(&self, network: &str, keep: &dyn Fn(&str) -> bool) -> Result<(), CniError> {
        nftables::gc(network, keep)
    }
}

impl BackendKind {
    fn imp(self) -> &'static dyn Backend {
        match self {
            Self::Iptables => &Iptables,
            Self::Nftables => &Nftables,
        }
    }
}

fn get<'a>(conf: &'a NetConf, key: &str) -> Option<&'a Value> {
    conf.extra.get(key).filter(|v| !v.is_null())
}

fn conditions(conf: &NetConf, key: &str) -> Result<Vec<String>, CniError> {
    let Some(v) = get(conf, key) else {
        return Ok(Vec::new());
    };
    let list: Vec<String> = serde_json::from_value(v.clone())
        .map_err(|e| CniError::config(format!("invalid {key}: {e}")))?;
    for t in &list {
        if t.is_empty() || t.chars().any(char::is_control) {
            return Err(CniError::config(format!(
                "invalid {key} token {t:?}: empty or with control characters"
            )));
        }
    }
    Ok(list)
}

/// A chain name iptables takes: 1-28 printable characters without blanks or quotes.
fn valid_chain_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 28
        && !s.starts_with('-')
        && s.chars()
            .all(|c| c.is_ascii_graphic() && c != '"' && c != '\'' && c != '\\')
}

impl Conf {
    /// The configuration of `conf` as the reference's `parseConfig` reads it, with stricter checks on what it
    /// would pass to iptables unchecked (port range, protocol, `hostIP`, chain name, condition tokens).
    pub fn from_conf(conf: &NetConf) -> Result<Self, CniError> {
        let explicit = match get(conf, "backend") {
            None => None,
            Some(b) => Some(match b.as_str() {
                Some("iptables") => BackendKind::Iptables,
                Some("nftables") => BackendKind::Nftables,
                _ => return Err(CniError::config(format!("unknown portmap backend {b}"))),
            }),
        };
        let snat = match get(conf, "snat") {
            None => true,
            Some(v) => v
                .as_bool()
                .ok_or_else(|| CniError::config("snat must be a boolean"))?,
        };
        let masq_all = match get(conf, "masqAll") {
            None => false,
            Some(v) => v
                .as_bool()
                .ok_or_else(|| CniError::config("masqAll must be a boolean"))?,
        };
        let bit = get(conf, "markMasqBit");
        let external = get(conf, "externalSetMarkChain");
        let mark = match (bit, external) {
            (Some(_), Some(_)) => {
                return Err(CniError::config(
                    "Cannot specify externalSetMarkChain and markMasqBit",
                ))
            }
            (None, Some(c)) => {
                let c = c
                    .as_str()
                    .ok_or_else(|| CniError::config("externalSetMarkChain must be a string"))?;
                if !valid_chain_name(c) {
                    return Err(CniError::config(format!(
                        "invalid externalSetMarkChain {c:?}"
                    )));
                }
                Mark::External(c.to_string())
            }
            (Some(b), None) => match b.as_i64() {
                Some(n) if (0..=31).contains(&n) => Mark::Bit(n as u32),
                _ => return Err(CniError::config("MasqMarkBit must be between 0 and 31")),
            },
            (None, None) => Mark::Bit(DEFAULT_MARK_BIT),
        };
        let raw: Vec<RawMapping> = match conf
            .runtime_config
            .as_ref()
            .and_then(|r| r.get("portMappings"))
        {
            None | Some(Value::Null) => Vec::new(),
            Some(v) => serde_json::from_value(v.clone()).map_err(|e| {
                CniError::config(format!("invalid runtimeConfig.portMappings: {e}"))
            })?,
        };
        let mut mappings = Vec::with_capacity(raw.len());
        for m in raw {
            if m.container_port <= 0 {
                return Err(CniError::config(format!(
                    "Invalid container port number: {}",
                    m.container_port
                )));
            }
            if m.host_port <= 0 {
                return Err(CniError::config(format!(
                    "Invalid host port number: {}",
                    m.host_port
                )));
            }
            let host_port = u16::try_from(m.host_port).map_err(|_| {
                CniError::config(format!("Invalid host port number: {}", m.host_port))
            })?;
            let container_port = u16::try_from(m.container_port).map_err(|_| {
                CniError::config(format!(
                    "Invalid container port number: {}",
                    m.container_port
                ))
            })?;
            let proto = Proto::parse(&m.protocol).ok_or_else(|| {
                CniError::config(format!(
                    "unknown protocol {:?} (tcp, udp or sctp)",
                    m.protocol
                ))
            })?;
            let (host_ip, host_family) = if m.host_ip.is_empty() {
                (None, None)
            } else {
                let ip: IpAddr = m
                    .host_ip
                    .parse()
                    .map_err(|_| CniError::config(format!("invalid hostIP {:?}", m.host_ip)))?;
                let fam = match ip {
                    IpAddr::V4(_) => Family::V4,
                    IpAddr::V6(_) => Family::V6,
                };
                ((!ip.is_unspecified()).then_some(ip), Some(fam))
            };
            mappings.push(Mapping {
                host_port,
                container_port,
                proto,
                host_ip,
                host_family,
            });
        }
        let conditions_v4 = conditions(conf, "conditionsV4")?;
        let conditions_v6 = conditions(conf, "conditionsV6")?;
        let backend = explicit.unwrap_or_else(|| {
            let first = conditions_v4.first().or(conditions_v6.first());
            match first {
                Some(t) if !t.starts_with('-') && !t.starts_with('!') => BackendKind::Nftables,
                Some(_) => BackendKind::Iptables,
                None if firewall::find_tool(Family::V4.restore()).is_none()
                    && firewall::find_tool("nft").is_some() =>
                {
                    BackendKind::Nftables
                }
                None => BackendKind::Iptables,
            }
        });
        if backend == BackendKind::Nftables {
            if let Mark::External(_) = mark {
                return Err(CniError::config(
                    "externalSetMarkChain is an iptables option; the nftables backend masquerades by itself",
                ));
            }
            for t in conditions_v4.iter().chain(&conditions_v6) {
                if t.contains([';', '#', '\\']) {
                    return Err(CniError::config(format!(
                        "invalid nftables condition token {t:?}: ';', '#' and '\\' would end or escape the rule"
                    )));
                }
            }
        }
        Ok(Self {
            backend,
            mappings,
            snat,
            masq_all,
            mark,
            conditions_v4,
            conditions_v6,
        })
    }

    fn set_mark_chain(&self) -> &str {
        match &self.mark {
            Mark::Bit(_) => SETMARK_CHAIN,
            Mark::External(c) => c,
        }
    }
}

/// The per-container chain: `CNI-DN-` + the first 21 hex digits of SHA-512(network + container ID), 28 chars
/// (the reference's `MustFormatChainNameWithPrefix(net, cid, "DN-")`).
pub fn dnat_chain_name(network: &str, container_id: &str) -> String {
    format!(
        "CNI-DN-{}",
        kernel::ipmasq::sha512_hex_prefix(&format!("{network}{container_id}"), 21)
    )
}

/// The chain old reference versions made (`CNI-SN-`…), torn down on DEL.
pub fn old_snat_chain_name(network: &str, container_id: &str) -> String {
    format!(
        "CNI-SN-{}",
        kernel::ipmasq::sha512_hex_prefix(&format!("{network}{container_id}"), 21)
    )
}

/// The comment on the entry rules, cut to the iptables limit as the reference does (253 bytes + "...").
pub fn entry_comment(network: &str, container_id: &str) -> String {
    let c = format!("dnat name: \"{network}\" id: \"{container_id}\"");
    if c.len() <= COMMENT_MAX {
        return c;
    }
    let mut end = COMMENT_MAX - 2;
    while !c.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}...", c.get(..end).unwrap_or_default())
}

/// The container addresses the reference forwards to: the first IPv4 and the first IPv6 address of the result
/// that is not known to belong to another interface than `ifname` in the sandbox.
pub fn container_nets(result: &CniResult, ifname: &str) -> (Option<IpNet>, Option<IpNet>) {
    let (mut v4, mut v6) = (None, None);
    for ip in &result.ips {
        let is_v4 = matches!(ip.address, IpNet::V4(_));
        if (is_v4 && v4.is_some()) || (!is_v4 && v6.is_some()) {
            continue;
        }
        if let Some(i) = ip.interface {
            if let Some(intf) = result.interfaces.get(i) {
                if intf.name != ifname || intf.sandbox.is_empty() {
                    continue;
                }
            }
        }
        if is_v4 {
            v4 = Some(ip.address);
        } else {
            v6 = Some(ip.address);
        }
    }
    (v4, v6)
}

fn mark_value(bit: u32) -> String {
    let v = 1u32 << bit;
    format!("{v:#x}/{v:#x}")
}

/// Quotes a restore token when it needs it.
fn token(t: &str) -> String {
    if t.chars()
        .any(|c| c.is_whitespace() || c == '"' || c == '\'' || c == '\\')
    {
        firewall::quote(t)
    } else {
        t.to_string()
    }
}

fn fmt_ip_port(ip: IpAddr, port: u16) -> String {
    match ip {
        IpAddr::V4(v) => format!("{v}:{port}"),
        IpAddr::V6(v) => format!("[{v}]:{port}"),
    }
}

/// What one family of one attachment needs, both as iptables-restore input and as `iptables-save` prints it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Layout {
    pub chain: String,
    /// `-A CNI-HOSTPORT-DNAT …` lines to apply (the reference's argument order).
    pub entry_rules: Vec<String>,
    /// `(proto, ports)` of each entry rule, to recognise them in `iptables-save` output whatever conditions do.
    pub entry_keys: Vec<(Proto, String)>,
    /// `-A CNI-DN-… …` lines to apply.
    pub chain_rules: Vec<String>,
    /// The same lines as `iptables-save` prints them.
    pub chain_rules_saved: Vec<String>,
}

/// The rules of one attachment for the pod address `net` (its family decides the rest).
pub fn layout(conf: &Conf, network: &str, container_id: &str, net: IpNet) -> Layout {
    let fam = Family::of(&net);
    let chain = dnat_chain_name(network, container_id);
    let comment = firewall::quote(&entry_comment(network, container_id));
    let conds = match fam {
        Family::V4 => &conf.conditions_v4,
        Family::V6 => &conf.conditions_v6,
    };
    let cond_text: String = conds.iter().map(|t| format!(" {}", token(t))).collect();
    // Entry rules: every mapping's host port (whatever its hostIP family, as the reference), grouped by protocol
    // in name order, at most 15 ports a rule.
    let mut by_proto: BTreeMap<&str, (Proto, Vec<String>)> = BTreeMap::new();
    for m in &conf.mappings {
        by_proto
            .entry(m.proto.as_str())
            .or_insert_with(|| (m.proto, Vec::new()))
            .1
            .push(m.host_port.to_string());
    }
    let mut entry_rules = Vec::new();
    let mut entry_keys = Vec::new();
    for (p, (proto, ports)) in &by_proto {
        for group in ports.chunks(MULTIPORT_MAX) {
            let list = group.join(",");
            entry_rules.push(format!(
                "-A {DNAT_CHAIN} -m comment --comment {comment} -m multiport -p {p} --destination-ports {list}{cond_text} -j {chain}"
            ));
            entry_keys.push((*proto, list));
        }
    }
    let setmark = conf.set_mark_chain();
    let ip = net.addr();
    let mut chain_rules = Vec::new();
    let mut saved = Vec::new();
    for m in &conf.mappings {
        if m.host_family.is_some_and(|f| f != fam) {
            continue;
        }
        let p = m.proto.as_str();
        let port = m.host_port;
        let (base, dst) = match m.host_ip {
            Some(h) => (
                format!("-p {p} --dport {port} -d {h}"),
                format!(" -d {h}/{}", fam.host_prefix()),
            ),
            None => (format!("-p {p} --dport {port}"), String::new()),
        };
        let saved_match = format!("-p {p} -m {p} --dport {port}");
        if conf.snat {
            let src = if conf.masq_all {
                match fam {
                    Family::V4 => "0.0.0.0/0".parse().ok(),
                    Family::V6 => "::/0".parse().ok(),
                }
            } else {
                Some(net)
            };
            if let Some(src) = src {
                let src: IpNet = src;
                chain_rules.push(format!("-A {chain} {base} -s {src} -j {setmark}"));
                // iptables-save omits a match-all source and prints the network of the rest.
                let s = if src.prefix_len() == 0 {
                    String::new()
                } else {
                    format!(" -s {}", src.trunc())
                };
                saved.push(format!("-A {chain}{s}{dst} {saved_match} -j {setmark}"));
            }
            if fam == Family::V4 && !conf.masq_all {
                chain_rules.push(format!("-A {chain} {base} -s 127.0.0.1 -j {setmark}"));
                saved.push(format!(
                    "-A {chain} -s 127.0.0.1/32{dst} {saved_match} -j {setmark}"
                ));
            }
        }
        let to = fmt_ip_port(ip, m.container_port);
        chain_rules.push(format!("-A {chain} {base} -j DNAT --to-destination {to}"));
        saved.push(format!(
            "-A {chain}{dst} {saved_match} -j DNAT --to-destination {to}"
        ));
    }
    Layout {
        chain,
        entry_rules,
        entry_keys,
        chain_rules,
        chain_rules_saved: saved,
    }
}

/// The shared rules as `iptables-save` prints them (also what is applied).
fn top_rules() -> [(&'static str, String); 2] {
    [
        (
            "PREROUTING",
            format!("-A PREROUTING -m addrtype --dst-type LOCAL -j {DNAT_CHAIN}"),
        ),
        (
            "OUTPUT",
            format!("-A OUTPUT -m addrtype --dst-type LOCAL -j {DNAT_CHAIN}"),
        ),
    ]
}

fn masq_jump() -> String {
    format!(
        "-A POSTROUTING -m comment --comment \"CNI portfwd requiring masquerade\" -j {MASQ_CHAIN}"
    )
}

fn setmark_rule(bit: u32) -> String {
    format!(
        "-A {SETMARK_CHAIN} -m comment --comment \"CNI portfwd masquerade mark\" -j MARK --set-xmark {}",
        mark_value(bit)
    )
}

fn masq_rule(bit: u32) -> String {
    format!(
        "-A {MASQ_CHAIN} -m mark --mark {} -j MASQUERADE",
        mark_value(bit)
    )
}

fn has_rule(t: &SavedTable, chain: &str, line: &str) -> bool {
    t.chain_rules(chain).any(|l| l == line)
}

/// The `iptables-restore --noflush` input that makes `l` (and the shared chains) from the table as it is: the
/// per-container chain declared (created or flushed) and refilled, its old entry rules replaced, the shared
/// chains and jumps added where missing.
pub fn add_payload(t: &SavedTable, conf: &Conf, l: &Layout) -> String {
    let mut decl = Vec::new();
    let mut rules = Vec::new();
    let declare = |name: &str, decl: &mut Vec<String>| {
        if !t.chains.contains(name) {
            decl.push(format!(":{name} - [0:0]"));
        }
    };
    if conf.snat {
        if let Mark::Bit(bit) = conf.mark {
            declare(SETMARK_CHAIN, &mut decl);
            declare(MASQ_CHAIN, &mut decl);
            if !has_rule(t, SETMARK_CHAIN, &setmark_rule(bit)) {
                rules.push(setmark_rule(bit));
            }
            if !has_rule(t, MASQ_CHAIN, &masq_rule(bit)) {
                rules.push(masq_rule(bit));
            }
            if !has_rule(t, "POSTROUTING", &masq_jump()) {
                // Prepended, so that bridge's and ptp's masquerade rules do not see the packets first.
                rules.push(masq_jump().replacen("-A POSTROUTING", "-I POSTROUTING 1", 1));
            }
        }
    }
    declare(DNAT_CHAIN, &mut decl);
    // Always declared: a leftover chain of a failed or earlier ADD is flushed and refilled.
    decl.push(format!(":{} - [0:0]", l.chain));
    rules.extend(l.chain_rules.iter().cloned());
    for line in t.chain_rules(DNAT_CHAIN) {
        if firewall::jump_target(line) == Some(l.chain.as_str()) {
            rules.push(firewall::delete_line(line));
        }
    }
    rules.extend(l.entry_rules.iter().cloned());
    for (chain, line) in top_rules() {
        if !has_rule(t, chain, &line) {
            rules.push(line);
        }
    }
    let mut p = String::from("*nat\n");
    for line in decl.iter().chain(rules.iter()) {
        p.push_str(line);
        p.push('\n');
    }
    p.push_str("COMMIT\n");
    p
}

/// The `iptables-restore --noflush` input that removes the chains in `chains` and every rule jumping to them;
/// `None` when there is nothing to remove.
pub fn del_payload(t: &SavedTable, chains: &[String]) -> Option<String> {
    let mut lines = Vec::new();
    for (_, line) in &t.rules {
        if firewall::jump_target(line).is_some_and(|j| chains.iter().any(|c| c == j)) {
            lines.push(firewall::delete_line(line));
        }
    }
    for c in chains {
        if t.chains.contains(c) {
            lines.push(format!("-F {c}"));
            lines.push(format!("-X {c}"));
        }
    }
    if lines.is_empty() {
        return None;
    }
    let mut p = String::from("*nat\n");
    for l in lines {
        p.push_str(&l);
        p.push('\n');
    }
    p.push_str("COMMIT\n");
    Some(p)
}

/// What `iptables-save` shows is missing of `l`, empty if nothing.
pub fn missing(t: &SavedTable, conf: &Conf, l: &Layout, comment: &str) -> Vec<String> {
    let mut out = Vec::new();
    if !t.chains.contains(&l.chain) {
        out.push(format!("chain {} not found in table nat", l.chain));
        return out;
    }
    for r in &l.chain_rules_saved {
        if !has_rule(t, &l.chain, r) {
            out.push(format!("rule {r:?}"));
        }
    }
    for (proto, ports) in &l.entry_keys {
        let found = t.chain_rules(DNAT_CHAIN).any(|line| {
            firewall::jump_target(line) == Some(l.chain.as_str())
                && firewall::rule_comment(line).as_deref() == Some(comment)
                && line.contains(&format!(" -p {} ", proto.as_str()))
                && line.contains(&format!(" --dports {ports} "))
        });
        if !found {
            out.push(format!(
                "entry rule for {} ports {ports} in {DNAT_CHAIN}",
                proto.as_str()
            ));
        }
    }
    for (chain, line) in top_rules() {
        if !has_rule(t, chain, &line) {
            out.push(format!("rule {line:?}"));
        }
    }
    if conf.snat {
        if let Mark::Bit(bit) = conf.mark {
            for (chain, line) in [
                (SETMARK_CHAIN, setmark_rule(bit)),
                (MASQ_CHAIN, masq_rule(bit)),
                ("POSTROUTING", masq_jump()),
            ] {
                if !has_rule(t, chain, &line) {
                    out.push(format!("rule {line:?}"));
                }
            }
        }
    }
    out
}

fn fam_name(fam: Family) -> &'static str {
    match fam {
        Family::V4 => "ipv4",
        Family::V6 => "ipv6",
    }
}

fn read_nat(fam: Family) -> Result<SavedTable, firewall::RunError> {
    firewall::iptables_save(fam, Some("nat")).map(|s| firewall::parse_save(&s, "nat"))
}

fn run_err(what: &str, e: firewall::RunError) -> CniError {
    CniError::internal(e.into_error(what).to_string())
}

fn forward(conf: &Conf, network: &str, cid: &str, net: IpNet) -> Result<(), CniError> {
    let fam = Family::of(&net);
    let l = layout(conf, network, cid, net);
    let what = format!("{} portmap setup", fam_name(fam));
    let mut last = None;
    for _ in 0..ATTEMPTS {
        let t = read_nat(fam).map_err(|e| run_err(&what, e))?;
        match firewall::iptables_restore(fam, &add_payload(&t, conf, &l)) {
            Ok(()) => return Ok(()),
            Err(e) if e.is_missing() => return Err(run_err(&what, e)),
            Err(e) => last = Some(e),
        }
    }
    Err(last.map_or_else(|| CniError::internal(what.clone()), |e| run_err(&what, e)))
}

/// Removes the chains of (network, container) and every jump to them in `families`. A family whose nat table
/// cannot be read holds nothing of ours; all unreadable is the reference's error.
fn unforward(network: &str, cid: &str, families: &[Family]) -> Result<(), CniError> {
    let chains = [
        dnat_chain_name(network, cid),
        old_snat_chain_name(network, cid),
    ];
    remove_chains(&chains, families)
}

fn remove_chains(chains: &[String], families: &[Family]) -> Result<(), CniError> {
    let mut usable = 0;
    let mut errors = Vec::new();
    for &fam in families {
        let what = format!("{} portmap teardown", fam_name(fam));
        let mut done = false;
        let mut last = None;
        for _ in 0..ATTEMPTS {
            let Ok(t) = read_nat(fam) else { break };
            if last.is_none() {
                usable += 1;
            }
            let Some(p) = del_payload(&t, chains) else {
                done = true;
                break;
            };
            match firewall::iptables_restore(fam, &p) {
                Ok(()) => {
                    done = true;
                    break;
                }
                Err(e) => last = Some(e),
            }
        }
        if !done {
            if let Some(e) = last {
                errors.push(run_err(&what, e).msg);
            }
        }
    }
    if usable == 0 {
        return Err(CniError::internal("neither iptables nor ip6tables usable"));
    }
    if errors.is_empty() {
        Ok(())
    } else {
        Err(CniError::internal(errors.join("; ")))
    }
}

/// Sets `route_localnet=1` on the host interface that routes to `ip`, so 127/8 sources survive the routing to
/// the pod (the reference's `enableLocalnetRouting`); no route, no change.
async fn enable_localnet(ip: IpAddr) -> Result<(), CniError> {
    let host = Netlink::current()?;
    let Ok(route) = host.route_get(ip).await else {
        return Ok(());
    };
    let Some(oif) = route.oif else {
        return Ok(());
    };
    let Some(link) = host.link_by_index(oif).await? else {
        return Ok(());
    };
    kernel::sysctl::ensure(&["net", "ipv4", "conf", &link.name, "route_localnet"], "1")
        .map_err(|e| CniError::internal(format!("unable to enable route_localnet: {e}")))
}

/// Deletes the UDP conntrack entries to the mapped host ports of `fam`: a flow that started before the mapping
/// has an entry without DNAT and would keep bypassing it. As the reference, a failure does not fail the ADD
/// (the mapping works for every new flow); it is reported on stderr, which the runtime logs.
fn flush_udp_conntrack(conf: &Conf, fam: Family) {
    let mut ports: Vec<u16> = conf
        .mappings
        .iter()
        .filter(|m| m.proto == Proto::Udp && m.host_family.is_none_or(|f| f == fam))
        .map(|m| m.host_port)
        .collect();
    ports.sort_unstable();
    ports.dedup();
    let f = match fam {
        Family::V4 => kernel::conntrack::Family::V4,
        Family::V6 => kernel::conntrack::Family::V6,
    };
    if let Err(e) = kernel::conntrack::delete_udp_to_ports(f, &ports) {
        eprintln!(
            "portmap: could not delete the {} UDP conntrack entries of ports {ports:?}: {e}",
            fam_name(fam)
        );
    }
}

async fn add(args: &CmdArgs, conf: &NetConf) -> Result<CniResult, CniError> {
    let pm = Conf::from_conf(conf)?;
    let prev = conf
        .prev()?
        .ok_or_else(|| CniError::config("must be called as chained plugin"))?;
    let out = CniResult {
        cni_version: conf.version().to_string(),
        ..prev.clone()
    };
    if pm.mappings.is_empty() {
        return Ok(out);
    }
    let (v4, v6) = container_nets(&prev, &args.ifname);
    let backend = pm.backend.imp();
    let done = async {
        for net in [v4, v6].into_iter().flatten() {
            if pm.snat && matches!(net, IpNet::V4(_)) {
                enable_localnet(net.addr()).await?;
            }
            backend.forward(&pm, &conf.name, &args.container_id, net)?;
            flush_udp_conntrack(&pm, Family::of(&net));
        }
        Ok::<(), CniError>(())
    }
    .await;
    if let Err(e) = done {
        // Nothing half-made stays behind: one family may have been set up before the other failed.
        let _ = backend.unforward(&conf.name, &args.container_id, &Family::ALL);
        return Err(e);
    }
    Ok(out)
}

/// DEL: no mappings, nothing to do (as the reference); else the attachment's rules go. Needs neither the
/// namespace nor the previous result, so a DEL after the pod is gone, repeated, or after a failed ADD succeeds.
/// A previous result that names the pod's addresses limits the work to their families (a DEL's removal is one
/// transaction per family, and the other family's listing is a process saved); without one, both.
fn del(args: &CmdArgs, conf: &NetConf) -> Result<(), CniError> {
    let pm = Conf::from_conf(conf)?;
    if pm.mappings.is_empty() {
        return Ok(());
    }
    let families: Vec<Family> = match conf.prev() {
        Ok(Some(prev)) => {
            let (v4, v6) = container_nets(&prev, &args.ifname);
            [v4, v6]
                .into_iter()
                .flatten()
                .map(|n| Family::of(&n))
                .collect()
        }
        _ => Vec::new(),
    };
    let families = if families.is_empty() {
        Family::ALL.to_vec()
    } else {
        families
    };
    pm.backend
        .imp()
        .unforward(&conf.name, &args.container_id, &families)
}

fn check(args: &CmdArgs, conf: &NetConf) -> Result<(), CniError> {
    let pm = Conf::from_conf(conf)?;
    let prev = conf
        .prev()?
        .ok_or_else(|| CniError::config("Required prevResult missing"))?;
    if pm.mappings.is_empty() {
        return Ok(());
    }
    let (v4, v6) = container_nets(&prev, &args.ifname);
    for net in [v4, v6].into_iter().flatten() {
        pm.backend
            .imp()
            .check(&pm, &conf.name, &args.container_id, net)?;
    }
    Ok(())
}

fn check_iptables(conf: &Conf, network: &str, cid: &str, net: IpNet) -> Result<(), CniError> {
    let comment = entry_comment(network, cid);
    let fam = Family::of(&net);
    let t = read_nat(fam).map_err(|e| run_err(&format!("{} check", fam_name(fam)), e))?;
    let l = layout(conf, network, cid, net);
    let gone = missing(&t, conf, &l, &comment);
    if !gone.is_empty() {
        return Err(CniError::internal(format!(
            "could not check {} dnat: missing {}",
            fam_name(fam),
            gone.join(", ")
        )));
    }
    Ok(())
}

/// The container IDs of network `network` that have entry rules in `t`, from their comments.
pub fn containers_in(t: &SavedTable, network: &str) -> Vec<String> {
    let prefix = format!("dnat name: \"{network}\" id: \"");
    let mut out: Vec<String> = t
        .chain_rules(DNAT_CHAIN)
        .filter_map(firewall::rule_comment)
        .filter_map(|c| {
            c.strip_prefix(&prefix)
                .and_then(|r| r.strip_suffix('"'))
                .map(str::to_string)
        })
        .collect();
    out.sort();
    out.dedup();
    out
}

/// GC: removes the forwarding of this network's containers that are not in `cni.dev/valid-attachments`.
fn gc(conf: &NetConf) -> Result<(), CniError> {
    let valid = conf.valid_attachments()?;
    let pm = Conf::from_conf(conf)?;
    let keep = |cid: &str| valid.iter().any(|a| a.container_id == cid);
    pm.backend.imp().gc(&conf.name, &keep)
}

/// The iptables GC: the reference's iptables backend has none; the entry comments name network and container.
fn gc_iptables(network: &str, keep: &dyn Fn(&str) -> bool) -> Result<(), CniError> {
    let mut stale = Vec::new();
    for fam in Family::ALL {
        if let Ok(t) = read_nat(fam) {
            for cid in containers_in(&t, network) {
                if !keep(&cid) {
                    stale.push(dnat_chain_name(network, &cid));
                    stale.push(old_snat_chain_name(network, &cid));
                }
            }
        }
    }
    stale.sort();
    stale.dedup();
    if stale.is_empty() {
        return Ok(());
    }
    remove_chains(&stale, &Family::ALL)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use serde_json::json;

    fn netconf(v: Value) -> NetConf {
        NetConf::parse(v.to_string().as_bytes()).unwrap()
    }

    fn conf_with(maps: Value, extra: Value) -> Result<Conf, CniError> {
        let mut v = json!({"cniVersion": "1.0.0", "name": "rtest", "type": "portmap",
            "runtimeConfig": {"portMappings": maps}});
        for (k, x) in extra.as_object().into_iter().flatten() {
            v[k] = x.clone();
        }
        Conf::from_conf(&netconf(v))
    }

    #[test]
    fn names_are_the_references() {
        // Measured with Debian's portmap 1.1.1 (cni.md §2.6): network "rtest", container "ctr1".
        assert_eq!(
            dnat_chain_name("rtest", "ctr1"),
            "CNI-DN-024f0d7e0ad69f69a7e4b"
        );
        assert_eq!(
            entry_comment("rtest", "ctr1"),
            "dnat name: \"rtest\" id: \"ctr1\""
        );
        let long = entry_comment("n", &"x".repeat(300));
        assert_eq!(long.len(), 256);
        assert!(long.ends_with("..."));
    }

    #[test]
    fn layout_matches_the_reference_rules() {
        let c = conf_with(
            json!([{"hostPort": 8080, "containerPort": 80, "protocol": "tcp"}]),
            json!({}),
        )
        .unwrap();
        let l = layout(&c, "rtest", "ctr1", "10.250.0.2/24".parse().unwrap());
        let ch = "CNI-DN-024f0d7e0ad69f69a7e4b";
        assert_eq!(
            l.chain_rules_saved,
            [
                format!(
                    "-A {ch} -s 10.250.0.0/24 -p tcp -m tcp --dport 8080 -j CNI-HOSTPORT-SETMARK"
                ),
                format!(
                    "-A {ch} -s 127.0.0.1/32 -p tcp -m tcp --dport 8080 -j CNI-HOSTPORT-SETMARK"
                ),
                format!(
                    "-A {ch} -p tcp -m tcp --dport 8080 -j DNAT --to-destination 10.250.0.2:80"
                ),
            ]
        );
        assert_eq!(l.entry_rules.len(), 1);
        let p = add_payload(&SavedTable::default(), &c, &l);
        for want in [
            ":CNI-HOSTPORT-SETMARK - [0:0]",
            "-I POSTROUTING 1 -m comment --comment \"CNI portfwd requiring masquerade\" -j CNI-HOSTPORT-MASQ",
            "-A CNI-HOSTPORT-MASQ -m mark --mark 0x2000/0x2000 -j MASQUERADE",
            "-A PREROUTING -m addrtype --dst-type LOCAL -j CNI-HOSTPORT-DNAT",
        ] {
            assert!(p.contains(want), "{want} not in {p}");
        }
    }

    #[test]
    fn ipv6_masq_all_host_ip_and_many_ports() {
        let maps: Vec<Value> = (1..=17)
            .map(|i| json!({"hostPort": 9000 + i, "containerPort": 80, "protocol": "udp"}))
            .chain([
                json!({"hostPort": 53, "containerPort": 53, "protocol": "TCP", "hostIP": "fd00::1"}),
                json!({"hostPort": 54, "containerPort": 53, "protocol": "tcp", "hostIP": "192.0.2.1"}),
            ])
            .collect();
        let c = conf_with(
            Value::Array(maps),
            json!({"masqAll": true, "markMasqBit": 0}),
        )
        .unwrap();
        let l = layout(&c, "n", "c", "fd00::2/64".parse().unwrap());
        // tcp first (name order), then udp in 15 + 2.
        assert_eq!(l.entry_keys.len(), 3);
        assert_eq!(l.entry_keys[0], (Proto::Tcp, "53,54".into()));
        assert_eq!(l.entry_keys[1].1.split(',').count(), 15);
        // The IPv4 hostIP mapping is skipped; masqAll: no source, no localhost rule.
        assert_eq!(l.chain_rules.len(), 2 * 18);
        assert!(l.chain_rules_saved.iter().any(|r| r.ends_with(
            " -d fd00::1/128 -p tcp -m tcp --dport 53 -j DNAT --to-destination [fd00::2]:53"
        )));
        assert!(!l.chain_rules_saved.iter().any(|r| r.contains("127.0.0.1")));
        assert_eq!(setmark_rule(0).rsplit(' ').next(), Some("0x1/0x1"));
    }

    #[test]
    fn bad_input_is_a_config_error() {
        let bad = [
            (
                json!([{"hostPort": 0, "containerPort": 80, "protocol": "tcp"}]),
                json!({}),
            ),
            (
                json!([{"hostPort": 80, "containerPort": -1, "protocol": "tcp"}]),
                json!({}),
            ),
            (
                json!([{"hostPort": 70000, "containerPort": 80, "protocol": "tcp"}]),
                json!({}),
            ),
            (
                json!([{"hostPort": 80, "containerPort": 65536, "protocol": "tcp"}]),
                json!({}),
            ),
            (
                json!([{"hostPort": 80, "containerPort": 80, "protocol": "icmp"}]),
                json!({}),
            ),
            (json!([{"hostPort": 80, "containerPort": 80}]), json!({})),
            (
                json!([{"hostPort": "80", "containerPort": 80, "protocol": "tcp"}]),
                json!({}),
            ),
            (
                json!([{"hostPort": 80.5, "containerPort": 80, "protocol": "tcp"}]),
                json!({}),
            ),
            (
                json!([{"hostPort": 80, "containerPort": 80, "protocol": "tcp", "hostIP": "x"}]),
                json!({}),
            ),
            (json!({}), json!({})),
            (json!([]), json!({"markMasqBit": 32})),
            (json!([]), json!({"markMasqBit": -1})),
            (
                json!([]),
                json!({"markMasqBit": 1, "externalSetMarkChain": "X"}),
            ),
            (json!([]), json!({"externalSetMarkChain": "A B"})),
            (json!([]), json!({"externalSetMarkChain": "X\n-F"})),
            (
                json!([]),
                json!({"conditionsV4": ["-s", "1.2.3.4\nCOMMIT"]}),
            ),
            (json!([]), json!({"conditionsV6": "x"})),
            (json!([]), json!({"snat": "yes"})),
            (json!([]), json!({"backend": "pf"})),
        ];
        for (maps, extra) in bad {
            let e = conf_with(maps.clone(), extra.clone()).unwrap_err();
            assert_eq!(e.code, 7, "{maps} {extra}: {e:?}");
        }
        // The nftables backend takes nft conditions only, and no iptables mark chain.
        for extra in [
            json!({"backend": "nftables", "externalSetMarkChain": "KUBE-MARK-MASQ"}),
            json!({"backend": "nftables", "conditionsV4": ["ip", "saddr", "1.2.3.4;", "flush", "ruleset"]}),
            json!({"conditionsV6": ["meta", "mark", "1", "#"]}),
        ] {
            assert_eq!(
                conf_with(json!([]), extra.clone()).unwrap_err().code,
                7,
                "{extra}"
            );
        }
        // Without `backend`, the conditions' syntax chooses, as the reference.
        let b = |extra: Value| conf_with(json!([]), extra).unwrap().backend;
        assert_eq!(b(json!({"backend": "nftables"})), BackendKind::Nftables);
        assert_eq!(
            b(json!({"conditionsV4": ["ip", "saddr", "192.0.2.0/24"]})),
            BackendKind::Nftables
        );
        assert_eq!(
            b(json!({"conditionsV4": ["-s", "192.0.2.0/24"]})),
            BackendKind::Iptables
        );
        assert_eq!(
            b(json!({"conditionsV6": ["!", "-s", "fd00::/8"]})),
            BackendKind::Iptables
        );
        let c = conf_with(
            json!(null),
            json!({"snat": false, "externalSetMarkChain": "KUBE-MARK-MASQ"}),
        )
        .unwrap();
        assert!(c.mappings.is_empty() && !c.snat);
        assert_eq!(c.mark, Mark::External("KUBE-MARK-MASQ".into()));
    }

    #[test]
    fn del_payload_removes_jumps_and_chains() {
        let save = "*nat\n:PREROUTING ACCEPT [0:0]\n:CNI-HOSTPORT-DNAT - [0:0]\n:CNI-DN-abc - [0:0]\n\
            -A CNI-HOSTPORT-DNAT -p tcp -m comment --comment \"dnat name: \\\"n\\\" id: \\\"c\\\"\" -m multiport --dports 80 -j CNI-DN-abc\n\
            -A CNI-HOSTPORT-DNAT -p tcp -m multiport --dports 81 -j CNI-DN-other\n\
            -A CNI-DN-abc -p tcp -m tcp --dport 80 -j DNAT --to-destination 10.0.0.2:80\nCOMMIT\n";
        let t = firewall::parse_save(save, "nat");
        let p = del_payload(&t, &["CNI-DN-abc".into(), "CNI-SN-abc".into()]).unwrap();
        assert!(p.contains("-D CNI-HOSTPORT-DNAT -p tcp -m comment"));
        assert!(!p.contains("CNI-DN-other"));
        assert!(p.contains("-F CNI-DN-abc\n-X CNI-DN-abc\n"));
        assert!(!p.contains("CNI-SN-abc"));
        assert_eq!(
            del_payload(&SavedTable::default(), &["CNI-DN-abc".into()]),
            None
        );
        assert_eq!(containers_in(&t, "n"), ["c"]);
        assert!(containers_in(&t, "m").is_empty());
    }

    #[test]
    fn container_nets_follow_the_sandbox_interface() {
        let r = CniResult::from_value(
            &json!({"cniVersion": "1.0.0",
                "interfaces": [{"name": "cni0"}, {"name": "eth0", "sandbox": "/x"}, {"name": "eth1", "sandbox": "/x"}],
                "ips": [{"address": "10.0.0.1/24", "interface": 0}, {"address": "10.0.1.2/24", "interface": 2},
                        {"address": "10.0.0.2/24", "interface": 1}, {"address": "fd00::2/64"},
                        {"address": "10.0.0.3/24", "interface": 1}]}),
            "1.0.0",
        )
        .unwrap();
        let (v4, v6) = container_nets(&r, "eth0");
        assert_eq!(v4.map(|n| n.to_string()).as_deref(), Some("10.0.0.2/24"));
        assert_eq!(v6.map(|n| n.to_string()).as_deref(), Some("fd00::2/64"));
    }

    proptest! {
        #[test]
        fn parsing_never_panics(hp in proptest::num::i64::ANY, cp in proptest::num::i64::ANY,
                                proto in "[a-zA-Z]{0,5}", hip in ".{0,40}", bit in -2i64..40) {
            let r = conf_with(json!([{"hostPort": hp, "containerPort": cp, "protocol": proto, "hostIP": hip}]),
                              json!({"markMasqBit": bit}));
            if let Ok(c) = r {
                let m = &c.mappings[0];
                prop_assert!(m.host_port > 0 && m.container_port > 0);
                let l = layout(&c, "n", "c", "10.0.0.2/24".parse().unwrap());
                for line in l.chain_rules.iter().chain(l.entry_rules.iter()) {
                    prop_assert!(!line.contains('\n'));
                }
            }
        }

        #[test]
        fn any_json_never_panics(s in ".{0,200}") {
            if let Ok(c) = NetConf::parse(s.as_bytes()) {
                let _ = Conf::from_conf(&c);
            }
        }

        #[test]
        fn condition_tokens_stay_on_one_line(toks in proptest::collection::vec(".{1,12}", 0..5)) {
            if let Ok(c) = conf_with(json!([{"hostPort": 1, "containerPort": 1, "protocol": "tcp"}]),
                                     json!({"conditionsV4": toks})) {
                let l = layout(&c, "n", "c", "10.0.0.2/24".parse().unwrap());
                let p = add_payload(&SavedTable::default(), &c, &l);
                prop_assert_eq!(p.lines().filter(|x| *x == "COMMIT").count(), 1);
            }
        }
    }
}
