//! nftables mode: tables `ip flannel-ipv4` / `ip6 flannel-ipv6` (upstream `pkg/trafficmngr/nftables`).
//!
//! Each write rewrites one family's whole table in one `nft -f -` transaction (re-create the table, then its
//! chains and rules), so what is installed is exactly what was asked, atomically. Right after a write the table is
//! listed once; `ensure` lists it again and rewrites it when the text differs (a rule, chain or the table deleted
//! or changed by someone else).

use ipnet::IpNet;
use kernel::firewall::{self, nft_apply, nft_check, start_nft, Family, Running, StartResult};

use super::{Error, Masq, Result};

/// The masquerade chain (nat, postrouting hook, srcnat priority).
pub(super) const POSTRTG_CHAIN: &str = "postrtg";
/// The forward chain (filter, forward hook, filter priority).
pub(super) const FORWARD_CHAIN: &str = "forward";
const POSTRTG_COMMENT: &str = "chain to manage traffic masquerading by flannel";
const FORWARD_COMMENT: &str = "chain to accept flannel traffic";

/// flannel's table of `family`.
pub(super) fn table_name(family: Family) -> &'static str {
    match family {
        Family::V4 => "flannel-ipv4",
        Family::V6 => "flannel-ipv6",
    }
}

/// `ip flannel-ipv4` / `ip6 flannel-ipv6`, as nft commands name the table.
fn table_ref(family: Family) -> String {
    format!("{} {}", family.nft(), table_name(family))
}

fn add_table_line(family: Family) -> String {
    format!(
        "add table {} {{ comment \"rules for {}\" ; }}\n",
        table_ref(family),
        table_name(family)
    )
}

/// The rules of `postrtg` (upstream `addMasqRules`; e2e golden `expectedNftPostrouting`).
pub(super) fn masq_rules(m: &Masq) -> Vec<String> {
    let f = m.family.nft();
    let (net, sub, mcast) = (m.network, m.subnet, m.family.multicast());
    let masq = if m.fully_random {
        "masquerade fully-random"
    } else {
        "masquerade"
    };
    vec![
        // Upstream matches the kube-proxy mark exactly rather than masked (its `//TODO_TF`); nft prints it as
        // `meta mark 0x00004000`.
        "meta mark 0x4000 return".to_string(),
        format!("{f} saddr {sub} {f} daddr {net} return"),
        format!("{f} saddr {net} {f} daddr {sub} return"),
        // Upstream's nftables rule differs from its iptables one here (`saddr != subnet daddr network`).
        format!("{f} saddr != {sub} {f} daddr {net} return"),
        format!("{f} saddr {net} {f} daddr != {mcast} {masq}"),
        format!("{f} saddr != {net} {f} daddr {net} {masq}"),
    ]
}

/// The rules of `forward` (upstream `SetupAndEnsureForwardRules`; e2e golden `expectedNftForward`).
pub(super) fn forward_rules(network: IpNet) -> Vec<String> {
    let f = Family::of(&network).nft();
    vec![
        format!("{f} saddr {network} accept"),
        format!("{f} daddr {network} accept"),
    ]
}

/// What one family's table should hold.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
struct Wanted {
    masq: Option<Masq>,
    forward: Option<IpNet>,
}

impl Wanted {
    fn is_empty(&self) -> bool {
        self.masq.is_none() && self.forward.is_none()
    }
}

/// The `nft -f` script that rewrites `family`'s table to `wanted`, atomically.
pub(super) fn table_script(family: Family, masq: Option<&Masq>, forward: Option<IpNet>) -> String {
    let t = table_ref(family);
    // `add` first so that `delete` cannot fail on a missing table; then re-create it from scratch.
    let mut s = format!(
        "add table {t}\ndelete table {t}\n{}",
        add_table_line(family)
    );
    if let Some(m) = masq {
        s.push_str(&format!(
            "add chain {t} {POSTRTG_CHAIN} {{ type nat hook postrouting priority srcnat ; comment \"{POSTRTG_COMMENT}\" ; }}\n"
        ));
        for r in masq_rules(m) {
            s.push_str(&format!("add rule {t} {POSTRTG_CHAIN} {r}\n"));
        }
    }
    if let Some(n) = forward {
        s.push_str(&format!(
            "add chain {t} {FORWARD_CHAIN} {{ type filter hook forward priority filter ; comment \"{FORWARD_COMMENT}\" ; }}\n"
        ));
        for r in forward_rules(n) {
            s.push_str(&format!("add rule {t} {FORWARD_CHAIN} {r}\n"));
        }
    }
    s
}

/// The nftables-mode state: per family what was set up and how `nft list table` showed it right after.
#[derive(Debug, Default)]
pub(super) struct Manager {
    wanted: [Wanted; 2],
    listed: [Option<String>; 2],
    fully_random: Option<bool>,
}

fn idx(family: Family) -> usize {
    match family {
        Family::V4 => 0,
        Family::V6 => 1,
    }
}

fn list_args(family: Family) -> [&'static str; 4] {
    ["list", "table", family.nft(), table_name(family)]
}

impl Manager {
    pub(super) fn init(&mut self) -> Result<()> {
        let script: String = Family::ALL.into_iter().map(add_table_line).collect();
        nft_apply(&script).map_err(|e| Error::Firewall {
            op: "nftables init (no nftables support?)".into(),
            msg: e.into_error("nft").to_string(),
        })?;
        self.supports_fully_random();
        Ok(())
    }

    /// Whether `masquerade fully-random` is accepted (upstream `checkRandomfully`: a check-only transaction).
    fn supports_fully_random(&mut self) -> bool {
        *self.fully_random.get_or_insert_with(|| {
            let t = table_ref(Family::V4);
            let probe = format!(
                "add table {t}\n\
                 add chain {t} masqueradeTest {{ type nat hook postrouting priority srcnat ; }}\n\
                 add rule {t} masqueradeTest ip saddr != 127.0.0.1 masquerade fully-random\n"
            );
            match nft_check(&probe) {
                Ok(()) => true,
                Err(e) => {
                    tracing::warn!(error = %e.into_error("nft --check"), "nftables: masquerade fully-random unsupported");
                    false
                }
            }
        })
    }

    /// Rewrites `family`'s table to what is wanted and remembers its listing.
    fn apply(&mut self, family: Family) -> Result<()> {
        let i = idx(family);
        let op = format!("nft rewrite of table {}", table_ref(family));
        self.listed[i] = None;
        let w = &self.wanted[i];
        let script = table_script(family, w.masq.as_ref(), w.forward);
        nft_apply(&script).map_err(|e| e.into_error(&op))?;
        let listing = firewall::nft(&list_args(family)).map_err(|e| e.into_error(&op))?;
        self.listed[i] = Some(listing);
        tracing::info!(%op, "nftables rules in place");
        Ok(())
    }

    pub(super) fn setup_masq(
        &mut self,
        wanted: &[(Family, (IpNet, IpNet))],
        fully_random_disable: bool,
    ) -> Result<()> {
        let fully_random = !fully_random_disable && self.supports_fully_random();
        let mut errors = Vec::new();
        for &(family, (network, subnet)) in wanted {
            self.wanted[idx(family)].masq = Some(Masq::new(network, subnet, fully_random));
            if let Err(e) = self.apply(family) {
                errors.push(e);
            }
        }
        firewall::join_errors("nftables masquerade setup", errors)
    }

    pub(super) fn setup_forward(&mut self, networks: &[IpNet]) -> Result<()> {
        let mut errors = Vec::new();
        for &network in networks {
            let family = Family::of(&network);
            self.wanted[idx(family)].forward = Some(network);
            if let Err(e) = self.apply(family) {
                errors.push(e);
            }
        }
        firewall::join_errors("nftables forward setup", errors)
    }

    pub(super) fn ensure(&mut self) -> Result<bool> {
        // One listing per family in use, all started before any is collected.
        let reads: Vec<(Family, StartResult)> = Family::ALL
            .into_iter()
            .filter(|f| !self.wanted[idx(*f)].is_empty())
            .map(|f| (f, start_nft(&list_args(f))))
            .collect();
        let mut repaired = false;
        let mut errors = Vec::new();
        for (family, read) in reads {
            let now = read.and_then(Running::finish);
            let intact = match (&now, &self.listed[idx(family)]) {
                (Ok(now), Some(before)) => now == before,
                _ => false,
            };
            if intact {
                continue;
            }
            match &now {
                Err(e) if !e.is_nft_not_found() => {
                    tracing::warn!(table = %table_ref(family), error = ?e, "cannot list flannel's table; rewriting it")
                }
                _ => {
                    tracing::warn!(table = %table_ref(family), "flannel's nftables table missing or changed; rewriting it")
                }
            }
            match self.apply(family) {
                Ok(()) => repaired = true,
                Err(e) => errors.push(e),
            }
        }
        firewall::join_errors("nftables ensure", errors).map(|()| repaired)
    }

    pub(super) fn forget(&mut self) {
        *self = Self {
            fully_random: self.fully_random,
            ..Self::default()
        };
    }
}

/// Deletes both of flannel's tables in one transaction. A missing table, or nft missing or unusable, is nothing to
/// remove.
pub(super) fn cleanup() -> Result<()> {
    let op = "nftables cleanup of flannel tables";
    let script: String = Family::ALL
        .into_iter()
        .map(|f| {
            let t = table_ref(f);
            format!("add table {t}\ndelete table {t}\n")
        })
        .collect();
    match nft_apply(&script) {
        Ok(()) => Ok(()),
        Err(e) if e.is_missing() => {
            tracing::debug!("nft not installed; no flannel tables to remove");
            Ok(())
        }
        // nf_tables unusable here: no table can exist (upstream treats this the same way).
        Err(e) if firewall::nft(&["list", "tables"]).is_err() => {
            tracing::warn!(error = %e.into_error(op), "nftables unusable; no flannel tables to remove");
            Ok(())
        }
        Err(e) => Err(e.into_error(op)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn net(s: &str) -> IpNet {
        s.parse().unwrap()
    }

    #[test]
    fn script_shape() {
        let m = Masq::new(net("10.244.0.0/16"), net("10.244.1.0/24"), true);
        let s = table_script(Family::V4, Some(&m), Some(net("10.244.0.0/16")));
        let lines: Vec<&str> = s.lines().collect();
        assert_eq!(lines[0], "add table ip flannel-ipv4");
        assert_eq!(lines[1], "delete table ip flannel-ipv4");
        assert_eq!(
            lines[2],
            "add table ip flannel-ipv4 { comment \"rules for flannel-ipv4\" ; }"
        );
        assert!(lines[3].starts_with(
            "add chain ip flannel-ipv4 postrtg { type nat hook postrouting priority srcnat"
        ));
        assert_eq!(
            lines[4],
            "add rule ip flannel-ipv4 postrtg meta mark 0x4000 return"
        );
        assert_eq!(
            lines[7],
            "add rule ip flannel-ipv4 postrtg ip saddr != 10.244.1.0/24 ip daddr 10.244.0.0/16 return"
        );
        assert_eq!(
            lines[9],
            "add rule ip flannel-ipv4 postrtg ip saddr != 10.244.0.0/16 ip daddr 10.244.0.0/16 masquerade fully-random"
        );
        assert!(lines[10].starts_with(
            "add chain ip flannel-ipv4 forward { type filter hook forward priority filter"
        ));
        assert_eq!(lines.len(), 13);
        let m6 = Masq::new(net("fd00:10:244::/56"), net("fd00:10:244:1::/64"), false);
        let s6 = table_script(Family::V6, Some(&m6), None);
        assert!(s6.contains("add rule ip6 flannel-ipv6 postrtg ip6 saddr fd00:10:244::/56 ip6 daddr != ff00::/8 masquerade\n"));
        assert!(!s6.contains("fully-random") && !s6.contains("forward"));
    }
}
