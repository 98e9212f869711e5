//! iptables mode: chains `nat/FLANNEL-POSTRTG` and `filter/FLANNEL-FWD` (upstream `pkg/trafficmngr/iptables`).
//!
//! Every write is one `iptables-restore --noflush` per family and table, atomic per table: it declares flannel's
//! chain (which creates or flushes it), deletes stray flannel rules from the built-in chain, appends the chain's
//! rules and, if missing, the jump. Reads are one `iptables-save -t <table>` per family and table.

use std::collections::HashMap;

use ipnet::IpNet;
use kernel::firewall::{
    self, delete_line, iptables_restore, iptables_save, jump_target, parse_save, quote,
    rule_comment, start_iptables_save, Family, RunError, RunResult, Running, SavedTable,
    StartResult,
};

use super::{Error, Masq, Result, KUBE_PROXY_MARK};

/// How many times a read-modify-write cycle is attempted: a concurrent change between the read and the write makes
/// the restore fail as a whole, and reading again resolves it.
const ATTEMPTS: usize = 2;

/// `--random-fully` needs iptables >= 1.6.2 (go-iptables' `HasRandomFully`).
const RANDOM_FULLY_MIN_VERSION: (u32, u32, u32) = (1, 6, 2);

/// Which of flannel's two chains.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(super) enum Kind {
    /// `nat/FLANNEL-POSTRTG`, jumped to from `POSTROUTING`.
    Masq,
    /// `filter/FLANNEL-FWD`, jumped to from `FORWARD`.
    Forward,
}

impl Kind {
    const ALL: [Kind; 2] = [Kind::Masq, Kind::Forward];

    pub(super) fn table(self) -> &'static str {
        match self {
            Self::Masq => "nat",
            Self::Forward => "filter",
        }
    }
    pub(super) fn chain(self) -> &'static str {
        match self {
            Self::Masq => "FLANNEL-POSTRTG",
            Self::Forward => "FLANNEL-FWD",
        }
    }
    /// The built-in chain that jumps to [`chain`](Self::chain).
    pub(super) fn hook(self) -> &'static str {
        match self {
            Self::Masq => "POSTROUTING",
            Self::Forward => "FORWARD",
        }
    }
    pub(super) fn comment(self) -> &'static str {
        match self {
            Self::Masq => "flanneld masq",
            Self::Forward => "flanneld forward",
        }
    }
    /// The jump rule, as iptables-save prints it.
    pub(super) fn jump(self) -> String {
        format!(
            "-A {} -m comment --comment {} -j {}",
            self.hook(),
            quote(self.comment()),
            self.chain()
        )
    }
}

/// The body of `FLANNEL-POSTRTG` for one family, as iptables-save prints it (upstream `masqRules` /
/// `masqIP6Rules`; e2e golden `expectedIptablesPostrouting`).
pub(super) fn masq_rules(m: &Masq) -> Vec<String> {
    let c = format!("-m comment --comment {}", quote(Kind::Masq.comment()));
    let ch = Kind::Masq.chain();
    let (net, sub, mcast) = (m.network, m.subnet, m.family.multicast());
    let masq = if m.fully_random {
        "MASQUERADE --random-fully"
    } else {
        "MASQUERADE"
    };
    vec![
        // Leave what kube-proxy marked for its own masquerading (double NAT on some kernels).
        format!("-A {ch} -m mark --mark {KUBE_PROXY_MARK} {c} -j RETURN"),
        // No NAT inside the overlay.
        format!("-A {ch} -s {sub} -d {net} {c} -j RETURN"),
        format!("-A {ch} -s {net} -d {sub} {c} -j RETURN"),
        // No NAT for external traffic arriving for this node's pods.
        format!("-A {ch} ! -s {net} -d {sub} {c} -j RETURN"),
        // NAT pod traffic leaving the overlay, except multicast.
        format!("-A {ch} -s {net} ! -d {mcast} {c} -j {masq}"),
        // NAT anything entering the overlay from the host.
        format!("-A {ch} ! -s {net} -d {net} {c} -j {masq}"),
    ]
}

/// The body of `FLANNEL-FWD` for one network (upstream `forwardRules`; e2e golden `expectedIptablesForward`).
pub(super) fn forward_rules(network: IpNet) -> Vec<String> {
    let c = format!("-m comment --comment {}", quote(Kind::Forward.comment()));
    let ch = Kind::Forward.chain();
    vec![
        format!("-A {ch} -s {network} {c} -j ACCEPT"),
        format!("-A {ch} -d {network} {c} -j ACCEPT"),
    ]
}

/// Whether a rule of chain `rule_chain` is flannel's link to `kind`'s chain: it jumps to the chain, or it sits in the
/// built-in chain with flannel's comment (covers duplicates and the layout of old flannel versions, which put the
/// masquerade rules straight into `POSTROUTING`).
fn is_link(kind: Kind, rule_chain: &str, line: &str) -> bool {
    rule_chain != kind.chain()
        && (jump_target(line) == Some(kind.chain())
            || (rule_chain == kind.hook() && rule_comment(line).as_deref() == Some(kind.comment())))
}

/// Whether `table` holds exactly the wanted state: flannel's chain with `rules` in this order and nothing else, and
/// exactly one link to it, the jump.
pub(super) fn in_place(table: &SavedTable, kind: Kind, rules: &[String]) -> bool {
    if !table.chains.contains(kind.chain())
        || !table
            .chain_rules(kind.chain())
            .eq(rules.iter().map(String::as_str))
    {
        return false;
    }
    let jump = kind.jump();
    let mut links = table
        .rules
        .iter()
        .filter(|(c, l)| is_link(kind, c, l))
        .map(|(_, l)| l.as_str());
    links.next() == Some(jump.as_str()) && links.next().is_none()
}

/// The restore input that brings `table` to the wanted state (see [`in_place`]); keeps an existing jump where it is.
pub(super) fn bootstrap_payload(table: &SavedTable, kind: Kind, rules: &[String]) -> String {
    let jump = kind.jump();
    let mut kept_jump = false;
    let mut deletes = Vec::new();
    for (c, line) in &table.rules {
        if !is_link(kind, c, line) {
            continue;
        }
        if !kept_jump && *line == jump {
            kept_jump = true;
        } else {
            deletes.push(delete_line(line));
        }
    }
    // Declaring the chain creates it, or flushes it if it exists (also with --noflush).
    let mut p = format!("*{}\n:{} - [0:0]\n", kind.table(), kind.chain());
    for line in deletes.iter().chain(rules) {
        p.push_str(line);
        p.push('\n');
    }
    if !kept_jump {
        p.push_str(&jump);
        p.push('\n');
    }
    p.push_str("COMMIT\n");
    p
}

/// The restore section (`*table … COMMIT`) that removes `kind`'s chain and every link to it, or `None` if neither
/// is there.
pub(super) fn remove_payload(table: &SavedTable, kind: Kind) -> Option<String> {
    let mut lines: Vec<String> = table
        .rules
        .iter()
        .filter(|(c, l)| is_link(kind, c, l))
        .map(|(_, l)| delete_line(l))
        .collect();
    if table.chains.contains(kind.chain()) {
        lines.push(format!("-F {}", kind.chain()));
        lines.push(format!("-X {}", kind.chain()));
    }
    if lines.is_empty() {
        return None;
    }
    let mut p = format!("*{}\n", kind.table());
    for l in lines {
        p.push_str(&l);
        p.push('\n');
    }
    p.push_str("COMMIT\n");
    Some(p)
}

/// One chain kept in place in one family.
#[derive(Debug, Clone, PartialEq, Eq)]
struct RuleSet {
    family: Family,
    kind: Kind,
    rules: Vec<String>,
}

impl RuleSet {
    fn op(&self) -> String {
        format!(
            "{} {}/{}",
            self.family.iptables(),
            self.kind.table(),
            self.kind.chain()
        )
    }

    /// Brings the chain in place: `first` is an already read table, then at most one restore (and one more read
    /// and restore on a lost race). Returns whether anything was written.
    fn apply(&self, first: Option<SavedTable>) -> Result<bool> {
        let op = self.op();
        let mut first = first;
        for attempt in 1..=ATTEMPTS {
            let table = match first.take() {
                Some(t) => t,
                None => read(self.family, self.kind.table()).map_err(|e| e.into_error(&op))?,
            };
            if in_place(&table, self.kind, &self.rules) {
                return Ok(false);
            }
            let payload = bootstrap_payload(&table, self.kind, &self.rules);
            match iptables_restore(self.family, &payload) {
                Ok(()) => return Ok(true),
                Err(RunError::Failed(msg)) if attempt < ATTEMPTS => {
                    tracing::debug!(%op, %msg, "iptables-restore failed; reading the table again");
                }
                Err(e) => return Err(e.into_error(&op)),
            }
        }
        // Unreachable: the last attempt returns.
        Err(Error::Firewall {
            op,
            msg: "gave up".into(),
        })
    }
}

fn read(family: Family, table: &str) -> std::result::Result<SavedTable, RunError> {
    iptables_save(family, Some(table)).map(|s| parse_save(&s, table))
}

/// A table of one family: `(family, table name)`.
type TableKey = (Family, &'static str);

/// The iptables-mode state: what was set up, for `ensure`.
#[derive(Debug, Default)]
pub(super) struct Manager {
    sets: Vec<RuleSet>,
    random_fully: HashMap<Family, bool>,
}

impl Manager {
    pub(super) fn init(&mut self) {
        for family in Family::ALL {
            self.supports_random_fully(family);
        }
    }

    fn supports_random_fully(&mut self, family: Family) -> bool {
        *self.random_fully.entry(family).or_insert_with(|| {
            let version = firewall::iptables_version(family);
            let ok = version.is_some_and(|v| v >= RANDOM_FULLY_MIN_VERSION);
            if !ok {
                tracing::warn!(
                    ?family,
                    ?version,
                    "iptables does not support --random-fully"
                );
            }
            ok
        })
    }

    /// Records `set` (replacing the one of the same family and chain) and applies it.
    fn install(&mut self, set: RuleSet) -> Result<()> {
        let op = set.op();
        self.sets
            .retain(|s| !(s.family == set.family && s.kind == set.kind));
        let res = set.apply(None);
        self.sets.push(set);
        match res {
            Ok(changed) => {
                tracing::info!(%op, changed, "iptables rules in place");
                Ok(())
            }
            Err(e) => Err(e),
        }
    }

    pub(super) fn setup_masq(
        &mut self,
        wanted: &[(Family, (IpNet, IpNet))],
        fully_random_disable: bool,
    ) -> Result<()> {
        let mut errors = Vec::new();
        for &(family, (network, subnet)) in wanted {
            let fully_random = !fully_random_disable && self.supports_random_fully(family);
            let masq = Masq::new(network, subnet, fully_random);
            let set = RuleSet {
                family,
                kind: Kind::Masq,
                rules: masq_rules(&masq),
            };
            if let Err(e) = self.install(set) {
                errors.push(e);
            }
        }
        firewall::join_errors("iptables masquerade setup", errors)
    }

    pub(super) fn setup_forward(&mut self, networks: &[IpNet]) -> Result<()> {
        let mut errors = Vec::new();
        for &network in networks {
            let set = RuleSet {
                family: Family::of(&network),
                kind: Kind::Forward,
                rules: forward_rules(network),
            };
            if let Err(e) = self.install(set) {
                errors.push(e);
            }
        }
        firewall::join_errors("iptables forward setup", errors)
    }

    pub(super) fn ensure(&mut self) -> Result<bool> {
        // One save per family and table in use, all started before any is collected.
        let mut reads: Vec<(TableKey, StartResult)> = Vec::new();
        for s in &self.sets {
            let key = (s.family, s.kind.table());
            if !reads.iter().any(|(k, _)| *k == key) {
                reads.push((key, start_iptables_save(s.family, Some(key.1))));
            }
        }
        let tables: Vec<(TableKey, RunResult)> = reads
            .into_iter()
            .map(|(k, r)| (k, r.and_then(Running::finish)))
            .collect();
        let mut repaired = false;
        let mut errors = Vec::new();
        for set in &self.sets {
            let key = (set.family, set.kind.table());
            let table = match tables.iter().find(|(k, _)| *k == key) {
                Some((_, Ok(out))) => parse_save(out, key.1),
                // Read again in `apply`, which reports the error if it persists.
                Some((_, Err(e))) => {
                    tracing::debug!(op = %set.op(), error = ?e, "iptables-save failed; trying once more");
                    match set.apply(None) {
                        Ok(changed) => repaired |= changed,
                        Err(e) => errors.push(e),
                    }
                    continue;
                }
                None => SavedTable::default(),
            };
            if in_place(&table, set.kind, &set.rules) {
                continue;
            }
            tracing::warn!(op = %set.op(), "flannel iptables rules missing or out of order; rewriting them");
            let table = Some(table);
            match set.apply(table) {
                Ok(changed) => repaired |= changed,
                Err(e) => errors.push(e),
            }
        }
        firewall::join_errors("iptables ensure", errors).map(|()| repaired)
    }

    pub(super) fn forget(&mut self) {
        self.sets.clear();
    }
}

/// Removes flannel's chains and links from both tables of both families: one `iptables-save` and at most one
/// `iptables-restore` per family.
pub(super) fn cleanup() -> Result<()> {
    let reads: Vec<(Family, StartResult)> = Family::ALL
        .into_iter()
        .map(|f| (f, start_iptables_save(f, None)))
        .collect();
    let mut errors = Vec::new();
    for (family, read) in reads {
        if let Err(e) = cleanup_family(family, read.and_then(Running::finish)) {
            errors.push(e);
        }
    }
    firewall::join_errors("iptables cleanup", errors)
}

fn cleanup_family(family: Family, first: RunResult) -> Result<()> {
    let op = format!("{} cleanup of flannel chains", family.iptables());
    let mut first = Some(first);
    for attempt in 1..=ATTEMPTS {
        let save = match first.take().unwrap_or_else(|| iptables_save(family, None)) {
            Ok(s) => s,
            Err(e) if e.is_missing() => {
                tracing::debug!(
                    ?family,
                    "iptables not installed; no flannel chains to remove"
                );
                return Ok(());
            }
            Err(e) => {
                // Tables we cannot read (no iptables support in this kernel) cannot hold our chains; like upstream,
                // this is not fatal.
                tracing::warn!(error = %e.into_error(&op), "skipping unreadable iptables tables");
                return Ok(());
            }
        };
        let payload: String = Kind::ALL
            .into_iter()
            .filter_map(|k| remove_payload(&parse_save(&save, k.table()), k))
            .collect();
        if payload.is_empty() {
            return Ok(());
        }
        match iptables_restore(family, &payload) {
            Ok(()) => return Ok(()),
            Err(RunError::Failed(msg)) if attempt < ATTEMPTS => {
                tracing::debug!(%op, %msg, "iptables-restore failed; reading the tables again");
            }
            Err(e) => return Err(e.into_error(&op)),
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn net(s: &str) -> IpNet {
        s.parse().unwrap()
    }

    /// Upstream's e2e golden (`e2e/rules.go` `expectedIptablesPostrouting`), less the `-N` line `iptables -S` adds.
    const GOLDEN_V4: &str = r#"-A FLANNEL-POSTRTG -m mark --mark 0x4000/0x4000 -m comment --comment "flanneld masq" -j RETURN
-A FLANNEL-POSTRTG -s 10.244.1.0/24 -d 10.244.0.0/16 -m comment --comment "flanneld masq" -j RETURN
-A FLANNEL-POSTRTG -s 10.244.0.0/16 -d 10.244.1.0/24 -m comment --comment "flanneld masq" -j RETURN
-A FLANNEL-POSTRTG ! -s 10.244.0.0/16 -d 10.244.1.0/24 -m comment --comment "flanneld masq" -j RETURN
-A FLANNEL-POSTRTG -s 10.244.0.0/16 ! -d 224.0.0.0/4 -m comment --comment "flanneld masq" -j MASQUERADE --random-fully
-A FLANNEL-POSTRTG ! -s 10.244.0.0/16 -d 10.244.0.0/16 -m comment --comment "flanneld masq" -j MASQUERADE --random-fully"#;

    #[test]
    fn rules_are_upstreams() {
        let m = Masq::new(net("10.244.0.0/16"), net("10.244.1.1/24"), true);
        assert_eq!(masq_rules(&m).join("\n"), GOLDEN_V4);
        assert_eq!(
            Kind::Masq.jump(),
            r#"-A POSTROUTING -m comment --comment "flanneld masq" -j FLANNEL-POSTRTG"#
        );
        assert_eq!(
            Kind::Forward.jump(),
            r#"-A FORWARD -m comment --comment "flanneld forward" -j FLANNEL-FWD"#
        );
        assert_eq!(
            forward_rules(net("10.244.0.0/16")),
            [
                r#"-A FLANNEL-FWD -s 10.244.0.0/16 -m comment --comment "flanneld forward" -j ACCEPT"#,
                r#"-A FLANNEL-FWD -d 10.244.0.0/16 -m comment --comment "flanneld forward" -j ACCEPT"#,
            ]
        );
        let m6 = Masq::new(net("fd00:10:244::/56"), net("fd00:10:244:1::/64"), false);
        let r6 = masq_rules(&m6);
        assert_eq!(
            r6[4],
            r#"-A FLANNEL-POSTRTG -s fd00:10:244::/56 ! -d ff00::/8 -m comment --comment "flanneld masq" -j MASQUERADE"#
        );
        assert!(!r6.iter().any(|r| r.contains("random")));
    }

    fn table(lines: &[&str], with_chain: bool) -> SavedTable {
        let mut s = String::from("*nat\n:POSTROUTING ACCEPT [0:0]\n");
        if with_chain {
            s.push_str(":FLANNEL-POSTRTG - [0:0]\n");
        }
        for l in lines {
            s.push_str(l);
            s.push('\n');
        }
        s.push_str("COMMIT\n");
        parse_save(&s, "nat")
    }

    #[test]
    fn check_and_bootstrap() {
        let m = Masq::new(net("10.244.0.0/16"), net("10.244.1.0/24"), true);
        let rules = masq_rules(&m);
        let jump = Kind::Masq.jump();
        let mut good: Vec<&str> = vec![jump.as_str()];
        good.extend(rules.iter().map(String::as_str));
        assert!(in_place(&table(&good, true), Kind::Masq, &rules));
        // Missing chain, missing rule, wrong order, extra rule, duplicate jump, no jump: all rewritten.
        assert!(!in_place(&table(&[], false), Kind::Masq, &rules));
        assert!(!in_place(&table(&good[..6], true), Kind::Masq, &rules));
        let mut swapped = good.clone();
        swapped.swap(2, 3);
        assert!(!in_place(&table(&swapped, true), Kind::Masq, &rules));
        let mut extra = good.clone();
        extra.push("-A FLANNEL-POSTRTG -j ACCEPT");
        assert!(!in_place(&table(&extra, true), Kind::Masq, &rules));
        let mut dup = good.clone();
        dup.insert(0, jump.as_str());
        let t = table(&dup, true);
        assert!(!in_place(&t, Kind::Masq, &rules));
        let p = bootstrap_payload(&t, Kind::Masq, &rules);
        assert_eq!(p.matches("-D POSTROUTING").count(), 1, "{p}");
        assert!(!p.contains("-A POSTROUTING"), "{p}");
        assert!(!in_place(&table(&good[1..], true), Kind::Masq, &rules));
        let p = bootstrap_payload(&table(&good[1..], true), Kind::Masq, &rules);
        assert!(p.starts_with("*nat\n:FLANNEL-POSTRTG - [0:0]\n"), "{p}");
        assert!(p.ends_with(&format!("{jump}\nCOMMIT\n")), "{p}");
        // Old flannel layout: masquerade rules straight in POSTROUTING, found by comment.
        let old = r#"-A POSTROUTING -s 10.244.0.0/16 -d 10.244.0.0/16 -m comment --comment "flanneld masq" -j RETURN"#;
        let mut legacy = good.clone();
        legacy.push(old);
        let t = table(&legacy, true);
        assert!(!in_place(&t, Kind::Masq, &rules));
        assert!(bootstrap_payload(&t, Kind::Masq, &rules).contains(&format!("-D {}", &old[3..])));
    }

    #[test]
    fn removal() {
        let jump = Kind::Masq.jump();
        let other = "-A POSTROUTING -j KUBE-POSTROUTING";
        let t = table(&[other, &jump, "-A FLANNEL-POSTRTG -j RETURN"], true);
        let p = remove_payload(&t, Kind::Masq).unwrap();
        assert_eq!(
            p,
            format!(
                "*nat\n{}\n-F FLANNEL-POSTRTG\n-X FLANNEL-POSTRTG\nCOMMIT\n",
                delete_line(&jump)
            )
        );
        assert_eq!(remove_payload(&table(&[other], false), Kind::Masq), None);
    }
}
