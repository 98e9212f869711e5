//! portmap's nftables backend (`backend: "nftables"`): the reference's table, with the per-mapping state in maps
//! and sets instead of one rule per mapping, so a packet costs the same hash lookups whether the node has one
//! hostPort or thousands, and an ADD adds elements only.
//!
//! Per family, table `ip|ip6 cni_hostport` (the reference's name, `portmap_nftables.go`), with chains of our own
//! beside the reference's (which are neither made nor flushed here, so rules a reference ADD made before an
//! upgrade keep working until our DEL of their container removes them):
//! * base chains `hostport_prerouting` (nat prerouting, dstnat) and `hostport_output` (nat output, -100):
//!   `fib daddr type local jump hostport_dnat`;
//! * `hostport_dnat`: `jump hostport_conditions`, then `dnat to ip daddr . meta l4proto . th dport map
//!   @hostip_dnat` (mappings with a `hostIP`) and `dnat to meta l4proto . th dport map @port_dnat` (any local
//!   address);
//! * base chain `hostport_masquerade` (nat postrouting, srcnat): connections that were DNATed (`ct status dnat`)
//!   and are in `masq_pairs` (`saddr . daddr`: hairpin, the pod to itself; IPv4 also 127.0.0.1 to the pod) or,
//!   with `masqAll`, whose destination is in `masq_any`. Never other traffic to the pod.
//!
//! Every element carries the comment `<container ID> <network>`, which DEL, CHECK and GC select by; DEL also
//! removes rules whose comment is the bare container ID in the reference's `hostports`, `hostip_hostports` and
//! `masquerading` (what the reference's nftables backend writes). `conditionsV4/V6` cannot be keys of a map: an
//! attachment with conditions gets per-mapping rules in `hostport_conditions`
//! (`<conditions> [ip daddr H] tcp dport P dnat to C:p`) with our comment. The reference applies conditions to
//! its shared `prerouting` rule, where the last ADD wins for every pod; here they apply to the attachment that
//! names them.
//!
//! Why the fixed chains are written only when a listing shows them missing or changed: a transaction that
//! deletes anything (a `flush`) waits for an RCU grace period in the kernel, 10-20 ms here, which would be most
//! of an ADD. An ADD is one `nft -f` of `create element` lines; only when it fails (the table is new, or an
//! element is in the way) is the table listed and the fixed chains, the removals and the elements written in one
//! transaction. CHECK reports fixed rules that are gone; the next ADD that lists the table repairs them.
//!
//! A hostPort belongs to at most one pod of a node (the kubelet's admission guarantees it), so an element of
//! another container on the same key can only be stale (its pod gone without a DEL): ADD replaces it.

use super::{CniError, Conf, ATTEMPTS};
use ipnet::IpNet;
use kernel::firewall::{self, Family};
use serde_json::Value;
use std::net::IpAddr;

/// The table of both families, the reference's name.
pub const TABLE: &str = "cni_hostport";
/// nft keeps at most 128 bytes of a comment, terminator included.
const COMMENT_MAX: usize = 127;

const HOSTIP_DNAT: &str = "hostip_dnat";
const PORT_DNAT: &str = "port_dnat";
const MASQ_PAIRS: &str = "masq_pairs";
const MASQ_ANY: &str = "masq_any";
/// The chains whose rules may belong to an attachment (ours with conditions, or the reference's).
const RULE_CHAINS: [&str; 4] = [
    "hostport_conditions",
    "hostports",
    "hostip_hostports",
    "masquerading",
];
/// Our fixed chains and how many rules each holds.
const FIXED: [(&str, usize); 4] = [
    ("hostport_prerouting", 1),
    ("hostport_output", 1),
    ("hostport_dnat", 3),
    ("hostport_masquerade", 2),
];

pub fn family(fam: Family) -> &'static str {
    fam.nft()
}

fn addr_type(fam: Family) -> &'static str {
    match fam {
        Family::V4 => "ipv4_addr",
        Family::V6 => "ipv6_addr",
    }
}

/// The comment on an attachment's elements and rules: `<container ID> <network>` (both limited to
/// `[A-Za-z0-9_.-]` by the skel's validation), cut to what nft keeps.
pub fn comment(network: &str, container_id: &str) -> String {
    let mut c = format!("{container_id} {network}");
    if c.len() > COMMENT_MAX {
        let mut end = COMMENT_MAX;
        while !c.is_char_boundary(end) {
            end -= 1;
        }
        c.truncate(end);
    }
    c
}

/// The container ID of a comment [`comment`] made for `network`, if it is one.
fn comment_container<'a>(c: &'a str, network: &str) -> Option<&'a str> {
    let (cid, _) = c.split_once(' ')?;
    (comment(network, cid) == c).then_some(cid)
}

/// One element of one of our maps or sets: its key and, for a map, its value, in nft's syntax (as a script
/// writes them and as [`Listing`] renders what the kernel holds).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Elem {
    pub set: &'static str,
    pub key: String,
    pub value: Option<String>,
}

/// What one family of one attachment needs.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Plan {
    pub elems: Vec<Elem>,
    /// Per-mapping DNAT rules for `hostports` (without the comment), when the attachment has conditions.
    pub rules: Vec<String>,
}

fn fmt_ip_port(ip: IpAddr, port: u16) -> String {
    match ip {
        IpAddr::V4(v) => format!("{v}:{port}"),
        IpAddr::V6(v) => format!("[{v}]:{port}"),
    }
}

/// The elements (or rules) of the attachment with pod address `net` (its family decides the rest).
pub fn plan(conf: &Conf, net: IpNet) -> Plan {
    let fam = Family::of(&net);
    let ip = net.addr();
    let l3 = fam.nft();
    let conds = match fam {
        Family::V4 => &conf.conditions_v4,
        Family::V6 => &conf.conditions_v6,
    };
    let mut p = Plan::default();
    for m in &conf.mappings {
        if m.host_family.is_some_and(|f| f != fam) {
            continue;
        }
        let proto = m.proto.as_str();
        if conds.is_empty() {
            let value = Some(format!("{ip} . {}", m.container_port));
            let (set, key) = match m.host_ip {
                Some(h) => (HOSTIP_DNAT, format!("{h} . {proto} . {}", m.host_port)),
                None => (PORT_DNAT, format!("{proto} . {}", m.host_port)),
            };
            p.elems.push(Elem { set, key, value });
        } else {
            let dst = m
                .host_ip
                .map(|h| format!("{l3} daddr {h} "))
                .unwrap_or_default();
            p.rules.push(format!(
                "{} {dst}{proto} dport {} dnat to {}",
                conds.join(" "),
                m.host_port,
                fmt_ip_port(ip, m.container_port)
            ));
        }
    }
    if conf.snat && (!p.elems.is_empty() || !p.rules.is_empty()) {
        if conf.masq_all {
            p.elems.push(Elem {
                set: MASQ_ANY,
                key: ip.to_string(),
                value: None,
            });
        } else {
            p.elems.push(Elem {
                set: MASQ_PAIRS,
                key: format!("{ip} . {ip}"),
                value: None,
            });
            if fam == Family::V4 {
                p.elems.push(Elem {
                    set: MASQ_PAIRS,
                    key: format!("127.0.0.1 . {ip}"),
                    value: None,
                });
            }
        }
    }
    p.elems.sort();
    p.elems.dedup();
    p
}

/// The commands that make the table, its chains, maps and sets (each `add` a no-op when it exists) and rewrite
/// the fixed chains' rules.
fn skeleton(fam: Family) -> String {
    let (f, a, l3) = (family(fam), addr_type(fam), fam.nft());
    let t = format!("{f} {TABLE}");
    let mut s = format!("add table {t}\n");
    for c in ["hostport_dnat", "hostport_conditions"] {
        s.push_str(&format!("add chain {t} {c}\n"));
    }
    for (c, hook, prio) in [
        ("hostport_prerouting", "prerouting", "dstnat"),
        // nft names the dstnat priority for prerouting only; -100 is the same value.
        ("hostport_output", "output", "-100"),
        ("hostport_masquerade", "postrouting", "srcnat"),
    ] {
        s.push_str(&format!(
            "add chain {t} {c} {{ type nat hook {hook} priority {prio} ; policy accept ; }}\n"
        ));
    }
    s.push_str(&format!(
        "add map {t} {HOSTIP_DNAT} {{ type {a} . inet_proto . inet_service : {a} . inet_service ; }}\n\
         add map {t} {PORT_DNAT} {{ type inet_proto . inet_service : {a} . inet_service ; }}\n\
         add set {t} {MASQ_PAIRS} {{ type {a} . {a} ; }}\n\
         add set {t} {MASQ_ANY} {{ type {a} ; }}\n"
    ));
    for c in ["hostport_prerouting", "hostport_output"] {
        s.push_str(&format!(
            "flush chain {t} {c}\nadd rule {t} {c} fib daddr type local jump hostport_dnat\n"
        ));
    }
    let l4 = "meta l4proto { tcp, udp, sctp }";
    s.push_str(&format!(
        "flush chain {t} hostport_dnat\n\
         add rule {t} hostport_dnat jump hostport_conditions\n\
         add rule {t} hostport_dnat {l4} dnat to {l3} daddr . meta l4proto . th dport map @{HOSTIP_DNAT}\n\
         add rule {t} hostport_dnat {l4} dnat to meta l4proto . th dport map @{PORT_DNAT}\n\
         flush chain {t} hostport_masquerade\n\
         add rule {t} hostport_masquerade ct status dnat {l3} saddr . {l3} daddr @{MASQ_PAIRS} masquerade\n\
         add rule {t} hostport_masquerade ct status dnat {l3} daddr @{MASQ_ANY} masquerade\n"
    ));
    s
}

fn delete_elem(fam: Family, set: &str, key: &str) -> String {
    format!("delete element {} {TABLE} {set} {{ {key} }}\n", family(fam))
}

/// The ADD script: the skeleton when `fixed` (the listing showed it missing or changed), the removals `gone`
/// (elements and rules of this attachment, or stale ones on its keys), then the attachment's elements and
/// rules. Elements are `create`d: a key that is there already fails the transaction instead of keeping someone
/// else's comment (an `add` of an existing key is a silent no-op), and the caller lists the table and replaces
/// it.
pub fn add_script(fam: Family, plan: &Plan, comment: &str, fixed: bool, gone: &Removals) -> String {
    let f = family(fam);
    let mut s = if fixed { skeleton(fam) } else { String::new() };
    s.push_str(&gone.script(fam));
    for e in &plan.elems {
        let value = e
            .value
            .as_ref()
            .map(|v| format!(" : {v}"))
            .unwrap_or_default();
        s.push_str(&format!(
            "create element {f} {TABLE} {} {{ {} comment \"{comment}\"{value} }}\n",
            e.set, e.key
        ));
    }
    for r in &plan.rules {
        s.push_str(&format!(
            "add rule {f} {TABLE} hostport_conditions {r} comment \"{comment}\"\n"
        ));
    }
    s
}

/// Elements and rules to remove, by key and by handle.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Removals {
    pub elems: Vec<(String, String)>,
    pub rules: Vec<(String, u64)>,
}

impl Removals {
    pub fn is_empty(&self) -> bool {
        self.elems.is_empty() && self.rules.is_empty()
    }

    fn script(&self, fam: Family) -> String {
        let mut s = String::new();
        for (set, key) in &self.elems {
            s.push_str(&delete_elem(fam, set, key));
        }
        for (chain, handle) in &self.rules {
            s.push_str(&format!(
                "delete rule {} {TABLE} {chain} handle {handle}\n",
                family(fam)
            ));
        }
        s
    }
}

/// An element the kernel holds, rendered from `nft -j`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Listed {
    pub set: String,
    pub key: String,
    pub value: Option<String>,
    pub comment: Option<String>,
}

/// A rule the kernel holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ListedRule {
    pub chain: String,
    pub handle: u64,
    pub comment: Option<String>,
}

/// What `nft -j list table <family> cni_hostport` shows: the chains, our sets' and maps' elements and the rules.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Listing {
    pub chains: Vec<String>,
    pub elems: Vec<Listed>,
    pub rules: Vec<ListedRule>,
}

/// Names nft accepts unquoted in a script: anything else read back from the kernel is not used.
fn plain(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 64
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.' | b':'))
}

/// One key or value of `nft -j` in script syntax: a string or number, or a `concat` of them.
fn render(v: &Value) -> Option<String> {
    match v {
        Value::String(s) if plain(s) => Some(s.clone()),
        Value::Number(n) => n.as_u64().map(|n| n.to_string()),
        Value::Object(o) => {
            let parts = o.get("concat")?.as_array()?;
            if parts.is_empty() {
                return None;
            }
            let mut out = Vec::with_capacity(parts.len());
            for p in parts {
                match p {
                    Value::Object(_) => return None,
                    other => out.push(render(other)?),
                }
            }
            Some(out.join(" . "))
        }
        _ => None,
    }
}

/// A set element of `nft -j`: the key and its comment (`{"elem": {"val": K, "comment": C}}` or a bare `K`).
fn render_key(v: &Value) -> Option<(String, Option<String>)> {
    match v.get("elem") {
        Some(e) => {
            let key = render(e.get("val")?)?;
            let comment = e.get("comment").and_then(Value::as_str).map(str::to_string);
            Some((key, comment))
        }
        None => Some((render(v)?, None)),
    }
}

impl Listing {
    /// Parses `nft -j list table` output; what it does not understand (other objects, odd keys) is left out,
    /// never guessed at.
    pub fn parse(json: &str) -> Result<Self, String> {
        let v: Value = serde_json::from_str(json).map_err(|e| format!("nft -j output: {e}"))?;
        let items = v
            .get("nftables")
            .and_then(Value::as_array)
            .ok_or("nft -j output without an \"nftables\" array")?;
        let mut l = Self::default();
        for item in items {
            if let Some(c) = item.get("chain") {
                if let Some(name) = c.get("name").and_then(Value::as_str) {
                    l.chains.push(name.to_string());
                }
            }
            for kind in ["set", "map"] {
                let Some(s) = item.get(kind) else { continue };
                let Some(name) = s.get("name").and_then(Value::as_str).filter(|n| plain(n)) else {
                    continue;
                };
                for e in s
                    .get("elem")
                    .and_then(Value::as_array)
                    .into_iter()
                    .flatten()
                {
                    let (k, value) = match (kind, e.as_array()) {
                        ("map", Some(pair)) if pair.len() == 2 => {
                            match pair.get(1).and_then(render) {
                                Some(v) => (pair.first(), Some(v)),
                                None => continue,
                            }
                        }
                        ("map", _) => continue,
                        _ => (Some(e), None),
                    };
                    if let Some((key, comment)) = k.and_then(render_key) {
                        l.elems.push(Listed {
                            set: name.to_string(),
                            key,
                            value,
                            comment,
                        });
                    }
                }
            }
            if let Some(r) = item.get("rule") {
                let chain = r.get("chain").and_then(Value::as_str).filter(|c| plain(c));
                let handle = r.get("handle").and_then(Value::as_u64);
                if let (Some(chain), Some(handle)) = (chain, handle) {
                    l.rules.push(ListedRule {
                        chain: chain.to_string(),
                        handle,
                        comment: r.get("comment").and_then(Value::as_str).map(str::to_string),
                    });
                }
            }
        }
        Ok(l)
    }

    /// What belongs to the attachment with comment `ours` (container `cid`): its elements, its rules and the
    /// reference's rules for the container.
    pub fn of_attachment(&self, ours: &str, cid: &str) -> Removals {
        let mut r = Removals::default();
        for e in &self.elems {
            if e.comment.as_deref() == Some(ours) {
                r.elems.push((e.set.clone(), e.key.clone()));
            }
        }
        for rule in &self.rules {
            let c = rule.comment.as_deref();
            if RULE_CHAINS.contains(&rule.chain.as_str()) && (c == Some(ours) || c == Some(cid)) {
                r.rules.push((rule.chain.clone(), rule.handle));
            }
        }
        r
    }

    /// The attachment's removals plus every element of someone else on one of `plan`'s keys (stale: see the
    /// module's comment).
    pub fn for_add(&self, plan: &Plan, ours: &str, cid: &str) -> Removals {
        let mut r = self.of_attachment(ours, cid);
        for e in &self.elems {
            let taken = plan.elems.iter().any(|p| p.set == e.set && p.key == e.key);
            if taken && e.comment.as_deref() != Some(ours) {
                r.elems.push((e.set.clone(), e.key.clone()));
            }
        }
        r
    }

    /// The container IDs of `network` that have elements or rules here.
    pub fn containers(&self, network: &str) -> Vec<String> {
        let comments = self
            .elems
            .iter()
            .filter_map(|e| e.comment.as_deref())
            .chain(self.rules.iter().filter_map(|r| r.comment.as_deref()));
        let mut out: Vec<String> = comments
            .filter_map(|c| comment_container(c, network))
            .map(str::to_string)
            .collect();
        out.sort();
        out.dedup();
        out
    }

    /// Whether our fixed chains are all there with their rules.
    pub fn fixed_intact(&self) -> bool {
        self.fixed_missing().is_empty()
    }

    fn fixed_missing(&self) -> Vec<String> {
        let mut out = Vec::new();
        for (chain, want) in FIXED {
            if !self.chains.iter().any(|x| x == chain) {
                out.push(format!("chain {chain}"));
            } else if self.rules.iter().filter(|r| r.chain == chain).count() != want {
                out.push(format!("the rules of chain {chain}"));
            }
        }
        out
    }

    /// What CHECK finds missing of `plan` (comment `ours`), empty if nothing.
    pub fn missing(&self, plan: &Plan, ours: &str) -> Vec<String> {
        let mut out = self.fixed_missing();
        for p in &plan.elems {
            let found = self.elems.iter().any(|e| {
                e.set == p.set
                    && e.key == p.key
                    && e.value == p.value
                    && e.comment.as_deref() == Some(ours)
            });
            if !found {
                let v = p
                    .value
                    .as_ref()
                    .map(|v| format!(" : {v}"))
                    .unwrap_or_default();
                out.push(format!("element {{ {}{v} }} in {}", p.key, p.set));
            }
        }
        let rules = self
            .rules
            .iter()
            .filter(|r| r.chain == "hostport_conditions" && r.comment.as_deref() == Some(ours))
            .count();
        if rules < plan.rules.len() {
            out.push(format!(
                "{} of {} conditioned rules in hostport_conditions",
                plan.rules.len() - rules,
                plan.rules.len()
            ));
        }
        out
    }
}

fn run_err(what: &str, e: firewall::RunError) -> CniError {
    CniError::internal(e.into_error(what).to_string())
}

/// The table of `fam` as the kernel holds it; `None` when there is none (or nft cannot say: then nothing of
/// ours can be there either).
fn list(fam: Family) -> Result<Option<Listing>, CniError> {
    match firewall::nft_json(&["list", "table", family(fam), TABLE]) {
        Ok(out) => Listing::parse(&out)
            .map(Some)
            .map_err(|e| CniError::internal(format!("{} {TABLE}: {e}", family(fam)))),
        Err(e) if e.is_nft_not_found() => Ok(None),
        Err(e) => Err(run_err(
            &format!("nft list table {} {TABLE}", family(fam)),
            e,
        )),
    }
}

fn fam_of(net: &IpNet) -> Family {
    Family::of(net)
}

/// ADD for one family: the `create element` lines alone first; when that fails, or the plan has rules (which a
/// second ADD would duplicate), the table is listed and the fixed chains (if not intact), the removals and the
/// elements go in one transaction.
pub fn forward(conf: &Conf, network: &str, cid: &str, net: IpNet) -> Result<(), CniError> {
    let fam = fam_of(&net);
    let plan = plan(conf, net);
    let ours = comment(network, cid);
    let what = format!("{} portmap setup", family(fam));
    let mut last = None;
    if plan.rules.is_empty() {
        match firewall::nft_apply(&add_script(fam, &plan, &ours, false, &Removals::default())) {
            Ok(()) => return Ok(()),
            Err(e) if e.is_missing() => return Err(run_err(&what, e)),
            Err(e) => last = Some(e),
        }
    }
    for _ in 0..ATTEMPTS {
        let (fixed, gone) = match list(fam)? {
            Some(l) => (!l.fixed_intact(), l.for_add(&plan, &ours, cid)),
            None => (true, Removals::default()),
        };
        match firewall::nft_apply(&add_script(fam, &plan, &ours, fixed, &gone)) {
            Ok(()) => return Ok(()),
            Err(e) if e.is_missing() => return Err(run_err(&what, e)),
            Err(e) => last = Some(e),
        }
    }
    Err(last.map_or_else(|| CniError::internal(what.clone()), |e| run_err(&what, e)))
}

/// Removes what `select` picks from the table of each family (retrying when a concurrent change made the
/// transaction fail). A family without the table holds nothing.
fn remove(families: &[Family], select: impl Fn(&Listing) -> Removals) -> Result<(), CniError> {
    let mut errors = Vec::new();
    for &fam in families {
        let what = format!("{} portmap teardown", family(fam));
        let mut last = None;
        for _ in 0..ATTEMPTS {
            let gone = match list(fam) {
                Ok(Some(l)) => select(&l),
                Ok(None) => Removals::default(),
                Err(e) => {
                    errors.push(e.msg);
                    break;
                }
            };
            if gone.is_empty() {
                last = None;
                break;
            }
            match firewall::nft_apply(&gone.script(fam)) {
                Ok(()) => {
                    last = None;
                    break;
                }
                Err(e) => last = Some(e),
            }
        }
        if let Some(e) = last {
            errors.push(run_err(&what, e).msg);
        }
    }
    if errors.is_empty() {
        Ok(())
    } else {
        Err(CniError::internal(errors.join("; ")))
    }
}

/// DEL: the attachment's elements and rules in `families`, and the reference's rules of the container.
pub fn unforward(network: &str, cid: &str, families: &[Family]) -> Result<(), CniError> {
    let ours = comment(network, cid);
    remove(families, |l| l.of_attachment(&ours, cid))
}

/// CHECK for one family.
pub fn check(conf: &Conf, network: &str, cid: &str, net: IpNet) -> Result<(), CniError> {
    let fam = fam_of(&net);
    let plan = plan(conf, net);
    let ours = comment(network, cid);
    let gone = match list(fam)? {
        None => vec![format!("table {} {TABLE}", family(fam))],
        Some(l) => l.missing(&plan, &ours),
    };
    if gone.is_empty() {
        Ok(())
    } else {
        Err(CniError::internal(format!(
            "could not check {} dnat: missing {}",
            family(fam),
            gone.join(", ")
        )))
    }
}

/// GC: the elements and rules of this network's containers that `keep` rejects.
pub fn gc(network: &str, keep: impl Fn(&str) -> bool) -> Result<(), CniError> {
    remove(&Family::ALL, |l| {
        let mut r = Removals::default();
        for cid in l.containers(network) {
            if !keep(&cid) {
                let more = l.of_attachment(&comment(network, &cid), &cid);
                r.elems.extend(more.elems);
                r.rules.extend(more.rules);
            }
        }
        r
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::types::NetConf;
    use proptest::prelude::*;
    use serde_json::json;

    fn conf(maps: Value, extra: Value) -> Conf {
        let mut v = json!({"cniVersion": "1.0.0", "name": "n", "type": "portmap", "backend": "nftables",
            "runtimeConfig": {"portMappings": maps}});
        for (k, x) in extra.as_object().into_iter().flatten() {
            v[k] = x.clone();
        }
        let nc: NetConf = serde_json::from_value(v).expect("netconf");
        Conf::from_conf(&nc).expect("conf")
    }

    fn maps() -> Value {
        json!([{"hostPort": 8080, "containerPort": 80, "protocol": "tcp"},
               {"hostPort": 53, "containerPort": 5353, "protocol": "UDP", "hostIP": "192.0.2.1"},
               {"hostPort": 9000, "containerPort": 9000, "protocol": "sctp", "hostIP": "fd00::1"}])
    }

    #[test]
    fn plan_puts_mappings_in_maps() {
        let p = plan(&conf(maps(), json!({})), "10.244.0.2/24".parse().unwrap());
        let text: Vec<String> = p
            .elems
            .iter()
            .map(|e| format!("{} {} {:?}", e.set, e.key, e.value))
            .collect();
        assert_eq!(
            text,
            [
                "hostip_dnat 192.0.2.1 . udp . 53 Some(\"10.244.0.2 . 5353\")",
                "masq_pairs 10.244.0.2 . 10.244.0.2 None",
                "masq_pairs 127.0.0.1 . 10.244.0.2 None",
                "port_dnat tcp . 8080 Some(\"10.244.0.2 . 80\")",
            ]
        );
        assert!(p.rules.is_empty());
        // IPv6: the v6 hostIP mapping, no localhost pair.
        let p = plan(
            &conf(maps(), json!({"masqAll": true})),
            "fd00::2/64".parse().unwrap(),
        );
        let sets: Vec<&str> = p.elems.iter().map(|e| e.set).collect();
        assert_eq!(sets, ["hostip_dnat", "masq_any", "port_dnat"]);
        assert_eq!(p.elems[0].key, "fd00::1 . sctp . 9000");
        // No snat: no masquerade elements.
        let p = plan(
            &conf(maps(), json!({"snat": false})),
            "10.244.0.2/24".parse().unwrap(),
        );
        assert!(p.elems.iter().all(|e| !e.set.starts_with("masq")));
    }

    #[test]
    fn conditions_make_rules() {
        let c = conf(
            maps(),
            json!({"conditionsV4": ["ip", "saddr", "192.0.2.0/24"]}),
        );
        let p = plan(&c, "10.244.0.2/24".parse().unwrap());
        assert_eq!(
            p.rules,
            [
                "ip saddr 192.0.2.0/24 tcp dport 8080 dnat to 10.244.0.2:80",
                "ip saddr 192.0.2.0/24 ip daddr 192.0.2.1 udp dport 53 dnat to 10.244.0.2:5353",
            ]
        );
        let s = add_script(Family::V4, &p, "c1 n", false, &Removals::default());
        assert!(s.contains(
            "add rule ip cni_hostport hostport_conditions ip saddr 192.0.2.0/24 tcp dport 8080 dnat to 10.244.0.2:80 comment \"c1 n\"\n"
        ));
        assert!(!s.contains("flush"), "no skeleton unless asked: {s}");
        let s = add_script(Family::V4, &p, "c1 n", true, &Removals::default());
        assert!(s.starts_with("add table ip cni_hostport\n"), "{s}");
    }

    #[test]
    fn comments_name_container_and_network() {
        assert_eq!(comment("cbr0", "abc"), "abc cbr0");
        assert_eq!(comment_container("abc cbr0", "cbr0"), Some("abc"));
        assert_eq!(comment_container("abc cbr1", "cbr0"), None);
        assert_eq!(comment_container("abc", "cbr0"), None);
        let long = "n".repeat(100);
        let c = comment(&long, &"c".repeat(64));
        assert_eq!(c.len(), COMMENT_MAX);
        assert_eq!(comment_container(&c, &long), Some("c".repeat(64).as_str()));
    }

    const LISTING: &str = r#"{"nftables": [{"metainfo": {"version": "1.0.6"}},
      {"table": {"family": "ip", "name": "cni_hostport", "handle": 1}},
      {"chain": {"family": "ip", "table": "cni_hostport", "name": "hostports", "handle": 1}},
      {"map": {"family": "ip", "name": "port_dnat", "table": "cni_hostport", "type": ["inet_proto", "inet_service"],
        "handle": 4, "map": "ipv4_addr . inet_service",
        "elem": [[{"elem": {"val": {"concat": ["tcp", 8080]}, "comment": "c1 n"}}, {"concat": ["10.244.0.2", 80]}],
                 [{"concat": ["udp", 53]}, {"concat": ["10.244.0.9", 53]}],
                 [{"elem": {"val": {"concat": ["tcp; flush ruleset", 1]}, "comment": "c1 n"}}, {"concat": ["10.244.0.2", 80]}]]}},
      {"set": {"family": "ip", "name": "masq_pairs", "table": "cni_hostport", "type": ["ipv4_addr", "ipv4_addr"],
        "handle": 5, "elem": [{"elem": {"val": {"concat": ["10.244.0.2", "10.244.0.2"]}, "comment": "c1 n"}}]}},
      {"rule": {"family": "ip", "table": "cni_hostport", "chain": "hostports", "handle": 9, "comment": "c1",
        "expr": []}},
      {"rule": {"family": "ip", "table": "cni_hostport", "chain": "hostports", "handle": 10, "comment": "c2",
        "expr": []}}]}"#;

    #[test]
    fn listing_selects_by_comment_and_refuses_odd_keys() {
        let l = Listing::parse(LISTING).expect("parse");
        assert_eq!(l.chains, ["hostports"]);
        // The element whose key is not plain nft text is left out.
        assert_eq!(l.elems.len(), 3);
        let r = l.of_attachment("c1 n", "c1");
        assert_eq!(
            r.elems,
            [
                ("port_dnat".to_string(), "tcp . 8080".to_string()),
                (
                    "masq_pairs".to_string(),
                    "10.244.0.2 . 10.244.0.2".to_string()
                )
            ]
        );
        // The reference's rule of c1 goes too; c2's stays.
        assert_eq!(r.rules, [("hostports".to_string(), 9)]);
        assert_eq!(
            r.script(Family::V4),
            "delete element ip cni_hostport port_dnat { tcp . 8080 }\n\
             delete element ip cni_hostport masq_pairs { 10.244.0.2 . 10.244.0.2 }\n\
             delete rule ip cni_hostport hostports handle 9\n"
        );
        assert_eq!(l.containers("n"), ["c1"]);
        // A stale element on a key a new attachment takes is replaced.
        let c = conf(
            json!([{"hostPort": 53, "containerPort": 53, "protocol": "udp"}]),
            json!({"snat": false}),
        );
        let p = plan(&c, "10.244.0.3/24".parse().unwrap());
        let r = l.for_add(&p, "c3 n", "c3");
        assert_eq!(r.elems, [("port_dnat".to_string(), "udp . 53".to_string())]);
        // CHECK of c1's plan.
        let c = conf(
            json!([{"hostPort": 8080, "containerPort": 80, "protocol": "tcp"}]),
            json!({}),
        );
        let p = plan(&c, "10.244.0.2/24".parse().unwrap());
        let gone = l.missing(&p, "c1 n");
        assert!(
            gone.iter()
                .any(|g| g == "element { 127.0.0.1 . 10.244.0.2 } in masq_pairs"),
            "{gone:?}"
        );
        assert!(
            gone.iter().any(|g| g == "chain hostport_prerouting"),
            "{gone:?}"
        );
        assert!(!l.fixed_intact());
        assert!(!gone.iter().any(|g| g.contains("tcp . 8080")), "{gone:?}");
    }

    proptest! {
        #[test]
        fn any_listing_never_panics(s in ".{0,300}") {
            let _ = Listing::parse(&s);
        }

        #[test]
        fn any_json_listing_never_panics(v in proptest::arbitrary::any::<Vec<(String, u64, bool)>>()) {
            // Shapes close to nft's: maps and sets with elements of every form.
            let elems: Vec<Value> = v.iter().map(|(s, n, b)| if *b {
                json!([{"elem": {"val": {"concat": [s, n]}, "comment": s}}, {"concat": [s, n]}])
            } else {
                json!({"elem": {"val": s}})
            }).collect();
            let doc = json!({"nftables": [{"map": {"name": "m", "elem": elems}}, {"set": {"name": "s", "elem": elems}},
                {"rule": {"chain": "hostports", "handle": 1, "comment": v.first().map(|x| x.0.clone())}}]});
            let l = Listing::parse(&doc.to_string()).expect("valid JSON");
            // Everything rendered is plain script text.
            for e in &l.elems {
                prop_assert!(e.key.split(" . ").all(plain));
            }
        }
    }
}
