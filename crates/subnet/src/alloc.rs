//! Choosing this node's subnet: pure functions over the config and the current leases.
//!
//! Upstream (`pkg/subnet/etcd/local_manager.go`, `tryAcquireLease`/`allocateSubnet`):
//! 1. a lease whose `PublicIP` is ours is reused if it fits the config, else deleted;
//! 2. else the previous subnet (from subnet.env) is reused if free and fitting;
//! 3. else a subnet is picked at random among the first 100 free subnets of `SubnetLen`
//!    between `SubnetMin` and `SubnetMax` (IPv6 likewise), "out of subnets" if none.
//!
//! A subnet counts as taken when it overlaps any lease, so leases of another length (after a
//! config change) still block the addresses they cover.

use std::net::{Ipv4Addr, Ipv6Addr};

use ipnet::{Ipv4Net, Ipv6Net};

use crate::config::NetworkConfig;
use crate::lease::{Lease, LeaseAttrs, SubnetKey, NO_IPV4_SUBNET};

/// Upstream looks at no more than this many free subnets before picking one at random.
pub const MAX_CANDIDATES: usize = 100;

/// What the lease manager should do to get a lease.
#[derive(Debug, Clone, PartialEq)]
pub enum Plan {
    /// Renew this existing lease (it carries our public IP and fits the config).
    Reuse(Lease),
    /// This lease carries our public IP but no longer fits the config: delete it, then plan
    /// again.
    Replace(Lease),
    /// Create a lease for this free subnet.
    Create(SubnetKey),
}

/// Why no subnet could be chosen.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AllocError {
    /// Every subnet in the range is taken.
    #[error("out of subnets: every /{len} between {min} and {max} is taken")]
    OutOfSubnets {
        /// Subnet prefix length.
        len: u8,
        /// `SubnetMin` (or `IPv6SubnetMin`).
        min: String,
        /// `SubnetMax` (or `IPv6SubnetMax`).
        max: String,
    },
    /// The config has not been through [`NetworkConfig::check`].
    #[error("network config has no subnet range (IPv4 and IPv6 both disabled, or not checked)")]
    NoRange,
}

/// An address space and the range of aligned subnets handed out, on integers.
#[derive(Debug, Clone, Copy)]
struct Space {
    min: u128,
    max: u128,
    len: u8,
    bits: u8,
}

impl Space {
    fn size(&self) -> Option<u128> {
        1u128.checked_shl(u32::from(self.bits.checked_sub(self.len)?))
    }
}

fn span4(n: &Ipv4Net) -> (u128, u128) {
    (
        u128::from(u32::from(n.network())),
        u128::from(u32::from(n.broadcast())),
    )
}

fn span6(n: &Ipv6Net) -> (u128, u128) {
    (u128::from(n.network()), u128::from(n.broadcast()))
}

/// Sorts and merges overlapping or touching intervals.
fn merge(mut v: Vec<(u128, u128)>) -> Vec<(u128, u128)> {
    v.sort_unstable();
    let mut out: Vec<(u128, u128)> = Vec::with_capacity(v.len());
    for (a, b) in v {
        match out.last_mut() {
            Some(last) if a <= last.1.saturating_add(1) => last.1 = last.1.max(b),
            _ => out.push((a, b)),
        }
    }
    out
}

/// The first `limit` free aligned subnets of `space`, skipping the `taken` intervals.
fn free_in(space: Space, taken: &[(u128, u128)], limit: usize) -> Vec<u128> {
    let mut out = Vec::new();
    let Some(size) = space.size() else { return out };
    let mut cur = space.min;
    let mut idx = 0;
    while cur <= space.max && out.len() < limit {
        let Some(end) = cur.checked_add(size - 1) else {
            break;
        };
        while idx < taken.len() && taken[idx].1 < cur {
            idx += 1;
        }
        if idx < taken.len() && taken[idx].0 <= end {
            // Jump past the taken interval to the next aligned subnet, instead of stepping
            // one subnet at a time through a large lease.
            let Some(after) = taken[idx].1.checked_add(1) else {
                break;
            };
            let Some(next) = after.div_ceil(size).checked_mul(size) else {
                break;
            };
            cur = next;
            continue;
        }
        out.push(cur);
        let Some(next) = cur.checked_add(size) else {
            break;
        };
        cur = next;
    }
    out
}

fn space4(cfg: &NetworkConfig) -> Option<Space> {
    let p = cfg.pool4()?;
    Some(Space {
        min: u128::from(u32::from(p.min)),
        max: u128::from(u32::from(p.max)),
        len: p.subnet_len,
        bits: 32,
    })
}

fn space6(cfg: &NetworkConfig) -> Option<Space> {
    let p = cfg.pool6()?;
    Some(Space {
        min: u128::from(p.min),
        max: u128::from(p.max),
        len: p.subnet_len,
        bits: 128,
    })
}

/// The first `limit` free IPv4 subnets in the configured range, in address order.
pub fn free_subnets4(cfg: &NetworkConfig, leases: &[Lease], limit: usize) -> Vec<Ipv4Net> {
    let Some(space) = space4(cfg) else {
        return Vec::new();
    };
    let taken = merge(
        leases
            .iter()
            .filter(|l| l.subnet != NO_IPV4_SUBNET)
            .map(|l| span4(&l.subnet))
            .collect(),
    );
    free_in(space, &taken, limit)
        .into_iter()
        .filter_map(|a| Ipv4Net::new(Ipv4Addr::from(a as u32), space.len).ok())
        .collect()
}

/// The first `limit` free IPv6 subnets in the configured range, in address order.
pub fn free_subnets6(cfg: &NetworkConfig, leases: &[Lease], limit: usize) -> Vec<Ipv6Net> {
    let Some(space) = space6(cfg) else {
        return Vec::new();
    };
    let taken = merge(
        leases
            .iter()
            .filter_map(|l| l.ipv6_subnet.as_ref())
            .map(span6)
            .collect(),
    );
    free_in(space, &taken, limit)
        .into_iter()
        .filter_map(|a| Ipv6Net::new(Ipv6Addr::from(a), space.len).ok())
        .collect()
}

/// Picks a free subnet (both families when both are enabled) at random among the first
/// [`MAX_CANDIDATES`] free ones, using `random` as the source of randomness.
pub fn choose_subnet(
    cfg: &NetworkConfig,
    leases: &[Lease],
    random: u64,
) -> Result<SubnetKey, AllocError> {
    if !cfg.enable_ipv4 && !cfg.enable_ipv6 {
        return Err(AllocError::NoRange);
    }
    let ipv4 = if cfg.enable_ipv4 {
        let p = cfg.pool4().ok_or(AllocError::NoRange)?;
        let free = free_subnets4(cfg, leases, MAX_CANDIDATES);
        if free.is_empty() {
            return Err(AllocError::OutOfSubnets {
                len: p.subnet_len,
                min: p.min.to_string(),
                max: p.max.to_string(),
            });
        }
        free[(random % free.len() as u64) as usize]
    } else {
        NO_IPV4_SUBNET
    };
    let ipv6 = if cfg.enable_ipv6 {
        let p = cfg.pool6().ok_or(AllocError::NoRange)?;
        let free = free_subnets6(cfg, leases, MAX_CANDIDATES);
        if free.is_empty() {
            return Err(AllocError::OutOfSubnets {
                len: p.subnet_len,
                min: p.min.to_string(),
                max: p.max.to_string(),
            });
        }
        // A second draw from the same number, so the two families are not correlated.
        let r = random.rotate_left(32) ^ 0x9e37_79b9_7f4a_7c15;
        Some(free[(r % free.len() as u64) as usize])
    } else {
        None
    };
    Ok(SubnetKey { ipv4, ipv6 })
}

/// Whether a lease for `key` fits the config (upstream `isSubnetConfigCompat` and
/// `isIPv6SubnetConfigCompat`: inside `[SubnetMin, SubnetMax]` with the configured length;
/// an IPv6 part exactly when IPv6 is enabled).
pub fn is_compatible(cfg: &NetworkConfig, key: &SubnetKey) -> bool {
    let v4_ok = match cfg.pool4() {
        Some(p) => {
            key.ipv4.prefix_len() == p.subnet_len
                && key.ipv4.addr() >= p.min
                && key.ipv4.addr() <= p.max
        }
        None => !cfg.enable_ipv4 && !key.has_ipv4(),
    };
    let v6_ok = match (cfg.pool6(), key.ipv6) {
        (Some(p), Some(n)) => {
            n.prefix_len() == p.subnet_len && n.addr() >= p.min && n.addr() <= p.max
        }
        (None, None) => !cfg.enable_ipv6,
        _ => false,
    };
    v4_ok && v6_ok
}

/// The lease that carries our public address (upstream `findLeaseByIP`).
///
/// Upstream compares `PublicIP` only; in an IPv6-only network every lease has `PublicIP`
/// 0.0.0.0, so there we compare `PublicIPv6` instead.
pub fn find_own_lease<'a>(
    cfg: &NetworkConfig,
    leases: &'a [Lease],
    ours: &LeaseAttrs,
) -> Option<&'a Lease> {
    if cfg.enable_ipv4 || ours.public_ipv6.is_none() {
        leases.iter().find(|l| l.attrs.public_ip == ours.public_ip)
    } else {
        leases
            .iter()
            .find(|l| l.attrs.public_ipv6 == ours.public_ipv6)
    }
}

/// Whether `key` overlaps no lease.
pub fn is_free(leases: &[Lease], key: &SubnetKey) -> bool {
    leases.iter().all(|l| {
        let v4_clash =
            key.has_ipv4() && l.subnet != NO_IPV4_SUBNET && overlaps4(&key.ipv4, &l.subnet);
        let v6_clash = matches!((key.ipv6, l.ipv6_subnet), (Some(a), Some(b)) if overlaps6(&a, &b));
        !v4_clash && !v6_clash
    })
}

fn overlaps4(a: &Ipv4Net, b: &Ipv4Net) -> bool {
    a.contains(&b.network()) || b.contains(&a.network())
}

fn overlaps6(a: &Ipv6Net, b: &Ipv6Net) -> bool {
    a.contains(&b.network()) || b.contains(&a.network())
}

/// Decides how to get a lease: reuse ours, replace an incompatible one, reuse the previous
/// subnet from subnet.env, or pick a free one at random.
pub fn plan(
    cfg: &NetworkConfig,
    leases: &[Lease],
    ours: &LeaseAttrs,
    previous: Option<&SubnetKey>,
    random: u64,
) -> Result<Plan, AllocError> {
    if let Some(l) = find_own_lease(cfg, leases, ours) {
        return Ok(if is_compatible(cfg, &l.key()) {
            Plan::Reuse(l.clone())
        } else {
            Plan::Replace(l.clone())
        });
    }
    if let Some(prev) = previous {
        if is_compatible(cfg, prev) && is_free(leases, prev) {
            return Ok(Plan::Create(*prev));
        }
    }
    choose_subnet(cfg, leases, random).map(Plan::Create)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::lease::Expiration;
    use proptest::prelude::*;

    fn cfg(s: &str) -> NetworkConfig {
        NetworkConfig::parse_checked(s).unwrap()
    }

    fn lease(key: &str, ip: [u8; 4]) -> Lease {
        Lease::new(
            key.parse().unwrap(),
            LeaseAttrs {
                public_ip: Ipv4Addr::from(ip),
                ..Default::default()
            },
            Expiration::Unknown,
            1,
        )
    }

    fn attrs(ip: [u8; 4]) -> LeaseAttrs {
        LeaseAttrs {
            public_ip: Ipv4Addr::from(ip),
            ..Default::default()
        }
    }

    #[test]
    fn free_skips_taken_and_first_subnet() {
        let c = cfg(r#"{"Network":"10.0.0.0/26"}"#); // /28s: .16 .32 .48
        let leases = vec![lease("10.0.0.32-28", [1, 1, 1, 1])];
        let free = free_subnets4(&c, &leases, 10);
        assert_eq!(
            free,
            vec![
                "10.0.0.16/28".parse().unwrap(),
                "10.0.0.48/28".parse().unwrap()
            ]
        );
    }

    #[test]
    fn big_overlapping_lease_blocks_range() {
        let c = cfg(r#"{"Network":"10.0.0.0/8","SubnetLen":24}"#);
        let leases = vec![lease("10.0.0.0-9", [1, 1, 1, 1])];
        let free = free_subnets4(&c, &leases, 1);
        assert_eq!(free, vec!["10.128.0.0/24".parse().unwrap()]);
    }

    #[test]
    fn out_of_subnets() {
        let c = cfg(r#"{"Network":"10.0.0.0/26"}"#);
        let leases: Vec<Lease> = ["10.0.0.16-28", "10.0.0.32-28", "10.0.0.48-28"]
            .iter()
            .map(|k| lease(k, [1, 1, 1, 1]))
            .collect();
        let e = choose_subnet(&c, &leases, 0).unwrap_err();
        assert_eq!(
            e.to_string(),
            "out of subnets: every /28 between 10.0.0.16 and 10.0.0.48 is taken"
        );
    }

    #[test]
    fn plan_order() {
        let c = cfg(r#"{"Network":"10.244.0.0/16"}"#);
        let mine = lease("10.244.7.0-24", [192, 0, 2, 7]);
        let other = lease("10.244.8.0-24", [192, 0, 2, 8]);
        let leases = vec![mine.clone(), other.clone()];
        assert_eq!(
            plan(&c, &leases, &attrs([192, 0, 2, 7]), None, 0),
            Ok(Plan::Reuse(mine))
        );
        // A lease of ours outside the range (config changed) is replaced.
        let odd = lease("10.245.0.0-24", [192, 0, 2, 9]);
        assert_eq!(
            plan(
                &c,
                std::slice::from_ref(&odd),
                &attrs([192, 0, 2, 9]),
                None,
                0
            ),
            Ok(Plan::Replace(odd))
        );
        // Previous subnet: reused when free, ignored when taken or out of range.
        let prev: SubnetKey = "10.244.9.0-24".parse().unwrap();
        assert_eq!(
            plan(&c, &leases, &attrs([192, 0, 2, 1]), Some(&prev), 0),
            Ok(Plan::Create(prev))
        );
        let taken = other.key();
        match plan(&c, &leases, &attrs([192, 0, 2, 1]), Some(&taken), 0) {
            Ok(Plan::Create(k)) => assert!(k != taken && is_free(&leases, &k)),
            other => panic!("{other:?}"),
        }
        let wrong_len: SubnetKey = "10.244.9.0-25".parse().unwrap();
        match plan(&c, &[], &attrs([192, 0, 2, 1]), Some(&wrong_len), 0) {
            Ok(Plan::Create(k)) => assert_eq!(k.ipv4.prefix_len(), 24),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn dual_stack_and_v6_only() {
        let c = cfg(r#"{"Network":"10.244.0.0/16","EnableIPv6":true,"IPv6Network":"fc00::/48"}"#);
        let k = choose_subnet(&c, &[], 5).unwrap();
        assert!(k.has_ipv4() && k.ipv6.is_some());
        assert!(is_compatible(&c, &k));
        assert!(
            !is_compatible(&c, &SubnetKey::v4(k.ipv4)),
            "dual-stack config needs the v6 part"
        );

        let c6 = cfg(r#"{"EnableIPv4":false,"EnableIPv6":true,"IPv6Network":"fc00::/48"}"#);
        let mut leases = Vec::new();
        for i in 0..5u64 {
            let k = choose_subnet(&c6, &leases, i * 7919).unwrap();
            assert!(!k.has_ipv4());
            assert!(is_free(&leases, &k));
            assert!(k.to_string().starts_with("0.0.0.0-0&fc00:"));
            leases.push(Lease::new(k, LeaseAttrs::default(), Expiration::Unknown, 1));
        }
    }

    #[test]
    fn v6_only_finds_own_lease_by_ipv6() {
        let c6 = cfg(r#"{"EnableIPv4":false,"EnableIPv6":true,"IPv6Network":"fc00::/48"}"#);
        let mk = |k: &str, ip6: &str| {
            Lease::new(
                k.parse().unwrap(),
                LeaseAttrs {
                    public_ipv6: Some(ip6.parse().unwrap()),
                    ..Default::default()
                },
                Expiration::Unknown,
                1,
            )
        };
        let leases = vec![
            mk("0.0.0.0-0&fc00:0:0:1::-64", "2001:db8::1"),
            mk("0.0.0.0-0&fc00:0:0:2::-64", "2001:db8::2"),
        ];
        let ours = LeaseAttrs {
            public_ipv6: Some("2001:db8::2".parse().unwrap()),
            ..Default::default()
        };
        assert_eq!(find_own_lease(&c6, &leases, &ours), Some(&leases[1]));
    }

    proptest! {
        #[test]
        fn chosen_subnet_is_in_range_aligned_and_free(
            prefix in 8u8..=24, extra in 2u8..=6, taken_idx in proptest::collection::vec(any::<u16>(), 0..60), r in any::<u64>()
        ) {
            let len = (prefix + extra).min(30);
            let c = cfg(&format!(r#"{{"Network":"10.0.0.0/{prefix}","SubnetLen":{len}}}"#));
            let p = c.pool4().unwrap();
            let size = 1u32 << (32 - len);
            let count = (u32::from(p.max) - u32::from(p.min)) / size + 1;
            let leases: Vec<Lease> = taken_idx.iter().map(|i| {
                let a = u32::from(p.min) + (u32::from(*i) % count) * size;
                Lease::new(SubnetKey::v4(Ipv4Net::new(Ipv4Addr::from(a), len).unwrap()), LeaseAttrs::default(), Expiration::Unknown, 1)
            }).collect();
            let distinct: std::collections::BTreeSet<_> = leases.iter().map(|l| l.subnet).collect();
            match choose_subnet(&c, &leases, r) {
                Ok(k) => {
                    prop_assert!(k.ipv4.addr() >= p.min && k.ipv4.addr() <= p.max);
                    prop_assert_eq!(k.ipv4.prefix_len(), len);
                    prop_assert_eq!(u32::from(k.ipv4.addr()) % size, 0);
                    prop_assert!(is_free(&leases, &k));
                    prop_assert!(is_compatible(&c, &k));
                }
                Err(AllocError::OutOfSubnets { .. }) => prop_assert_eq!(distinct.len() as u32, count),
                Err(e) => prop_assert!(false, "{}", e),
            }
        }

        #[test]
        fn full_range_gives_none(prefix in 20u8..=26, r in any::<u64>()) {
            let c = cfg(&format!(r#"{{"Network":"10.9.0.0/{prefix}","SubnetLen":{}}}"#, prefix + 2));
            let leases: Vec<Lease> = free_subnets4(&c, &[], usize::MAX).into_iter()
                .map(|n| Lease::new(SubnetKey::v4(n), LeaseAttrs::default(), Expiration::Unknown, 1)).collect();
            prop_assert_eq!(leases.len(), 3);
            let out_of_subnets = matches!(choose_subnet(&c, &leases, r), Err(AllocError::OutOfSubnets { .. }));
            prop_assert!(out_of_subnets);
        }

        #[test]
        fn v6_choice_free_and_aligned(taken in proptest::collection::vec(0u32..300, 0..50), r in any::<u64>()) {
            let c = cfg(r#"{"EnableIPv4":false,"EnableIPv6":true,"IPv6Network":"fc00::/112","IPv6SubnetLen":120}"#);
            let p = c.pool6().unwrap();
            let leases: Vec<Lease> = taken.iter().map(|i| {
                let a = u128::from(p.min) + u128::from(*i % 255) * 256;
                Lease::new(SubnetKey { ipv4: NO_IPV4_SUBNET, ipv6: Some(Ipv6Net::new(Ipv6Addr::from(a), 120).unwrap()) },
                    LeaseAttrs::default(), Expiration::Unknown, 1)
            }).collect();
            let k = choose_subnet(&c, &leases, r).unwrap();
            let n = k.ipv6.unwrap();
            prop_assert_eq!(u128::from(n.addr()) % 256, 0);
            prop_assert!(n.addr() >= p.min && n.addr() <= p.max);
            prop_assert!(is_free(&leases, &k));
        }
    }
}
