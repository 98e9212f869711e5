//! Address ranges and range sets: canonical form, membership and the round-robin walk.
//!
//! Addresses are handled as `u128` so IPv4 and IPv6 share one arithmetic; a range remembers its family.

use ipnet::IpNet;
use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

/// An address as a number (IPv4 in the low 32 bits).
pub fn to_num(ip: IpAddr) -> u128 {
    match ip {
        IpAddr::V4(a) => u128::from(u32::from(a)),
        IpAddr::V6(a) => u128::from(a),
    }
}

/// The address of a number in the given family (IPv4 uses the low 32 bits).
pub fn from_num(n: u128, v4: bool) -> IpAddr {
    if v4 {
        IpAddr::V4(Ipv4Addr::from(n as u32))
    } else {
        IpAddr::V6(Ipv6Addr::from(n))
    }
}

/// IPv4-mapped IPv6 addresses count as IPv4, as in the reference plugin, so file names and comparisons agree.
pub fn canonical_ip(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(a) => a.to_ipv4_mapped().map(IpAddr::V4).unwrap_or(ip),
        v4 => v4,
    }
}

/// A range as written in the configuration, before canonicalisation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RangeSpec {
    /// `subnet`, host bits as written (so they can be rejected).
    pub subnet: IpNet,
    /// `rangeStart`.
    pub start: Option<IpAddr>,
    /// `rangeEnd`.
    pub end: Option<IpAddr>,
    /// `gateway`.
    pub gateway: Option<IpAddr>,
}

/// A canonical range: addresses `start..=end` of `subnet` are handed out, except `gateway`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Range {
    /// The network (no host bits).
    pub subnet: IpNet,
    /// First allocatable address.
    pub start: IpAddr,
    /// Last allocatable address.
    pub end: IpAddr,
    /// The gateway reported with addresses of this range and never handed out.
    pub gateway: IpAddr,
}

impl Range {
    /// Validates a spec and fills in defaults; the error names the offending key (under `path`) and value.
    pub fn canonicalize(spec: &RangeSpec, path: &str) -> Result<Self, String> {
        let subnet = spec.subnet;
        if let IpNet::V6(n) = subnet {
            if n.addr().to_ipv4_mapped().is_some() {
                return Err(format!(
                    "{path}.subnet {subnet}: IPv4-mapped IPv6 networks are not supported, write the IPv4 network"
                ));
            }
        }
        // A /31 or /32 (/127, /128) has no address left once network and gateway are taken.
        if subnet.prefix_len() + 2 > subnet.max_prefix_len() {
            return Err(format!(
                "network {subnet} ({path}.subnet) too small to allocate from"
            ));
        }
        if subnet.addr() != subnet.network() {
            return Err(format!(
                "{path}.subnet {subnet} has host bits set; for a prefix of length {} the network address is {}",
                subnet.prefix_len(),
                subnet.network()
            ));
        }
        let v4 = subnet.addr().is_ipv4();
        let net = to_num(subnet.network());
        let last = to_num(subnet.broadcast());
        let inside = |key: &str, ip: IpAddr| -> Result<u128, String> {
            let ip = canonical_ip(ip);
            if ip.is_ipv4() == v4 && subnet.contains(&ip) {
                Ok(to_num(ip))
            } else {
                Err(format!("{path}.{key} {ip} is not in network {subnet}"))
            }
        };
        // The reference plugin accepts a gateway outside the subnet (only the family must match), so a node switching
        // from it must not start failing here.
        let gateway = match spec.gateway.map(canonical_ip) {
            Some(g) if g.is_ipv4() == v4 => to_num(g),
            Some(g) => {
                return Err(format!(
                    "{path}.gateway {g} is not of the family of network {subnet}"
                ))
            }
            None => net + 1,
        };
        let start = match spec.start {
            Some(s) => inside("rangeStart", s)?,
            None => net + 1,
        };
        let end = match spec.end {
            Some(e) => inside("rangeEnd", e)?,
            // IPv4 keeps its broadcast address out; IPv6 has none, so the all-ones address is usable.
            None if v4 => last - 1,
            None => last,
        };
        if end < start {
            return Err(format!(
                "{path}.rangeEnd {} is before {path}.rangeStart {}",
                from_num(end, v4),
                from_num(start, v4)
            ));
        }
        Ok(Self {
            subnet,
            start: from_num(start, v4),
            end: from_num(end, v4),
            gateway: from_num(gateway, v4),
        })
    }

    /// Whether this is an IPv4 range.
    pub fn is_v4(&self) -> bool {
        self.subnet.addr().is_ipv4()
    }

    /// Whether `ip` lies in `start..=end` (same family).
    pub fn contains(&self, ip: IpAddr) -> bool {
        let ip = canonical_ip(ip);
        ip.is_ipv4() == self.is_v4()
            && (to_num(self.start)..=to_num(self.end)).contains(&to_num(ip))
    }

    /// Whether the allocatable parts of two ranges share an address.
    pub fn overlaps(&self, other: &Range) -> bool {
        self.is_v4() == other.is_v4()
            && to_num(self.start) <= to_num(other.end)
            && to_num(other.start) <= to_num(self.end)
    }

    /// How many addresses `start..=end` holds (saturating for a whole IPv6 space).
    pub fn size(&self) -> u128 {
        (to_num(self.end) - to_num(self.start)).saturating_add(1)
    }
}

impl fmt::Display for Range {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}-{}", self.start, self.end)
    }
}

/// A list of ranges of one family; one address is allocated per set.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RangeSet(pub Vec<Range>);

impl RangeSet {
    /// Canonicalises each range and checks the set is non-empty, single-family and non-overlapping.
    pub fn canonicalize(specs: &[(RangeSpec, String)]) -> Result<Self, String> {
        if specs.is_empty() {
            return Err("empty range set".into());
        }
        let mut out: Vec<Range> = Vec::with_capacity(specs.len());
        for (spec, path) in specs {
            let r = Range::canonicalize(spec, path)?;
            if let Some(first) = out.first() {
                if first.is_v4() != r.is_v4() {
                    return Err(format!(
                        "{path}.subnet {}: mixed address families in one range set",
                        r.subnet
                    ));
                }
            }
            if let Some(o) = out.iter().find(|o| o.overlaps(&r)) {
                return Err(format!("subnets {o} and {r} overlap ({path})"));
            }
            out.push(r);
        }
        Ok(Self(out))
    }

    /// Whether this set holds IPv4 ranges.
    pub fn is_v4(&self) -> bool {
        self.0.first().is_some_and(Range::is_v4)
    }

    /// The range whose `start..=end` holds `ip`.
    pub fn range_for(&self, ip: IpAddr) -> Option<&Range> {
        self.0.iter().find(|r| r.contains(ip))
    }

    /// Whether some range of the set holds `ip`.
    pub fn contains(&self, ip: IpAddr) -> bool {
        self.range_for(ip).is_some()
    }

    /// Whether any range of this set overlaps any range of `other`.
    pub fn overlaps(&self, other: &RangeSet) -> bool {
        self.0.iter().any(|a| other.0.iter().any(|b| a.overlaps(b)))
    }
}

impl fmt::Display for RangeSet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, r) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str(",")?;
            }
            write!(f, "{r}")?;
        }
        Ok(())
    }
}

/// The reference plugin's walk: start just after the last reserved address (or at the first range's start),
/// go through the ranges in order with wrap-around, skip each range's gateway, and stop once back at the first
/// address returned.
#[derive(Debug, Clone)]
pub struct RangeIter<'a> {
    set: &'a [Range],
    idx: usize,
    cur: Option<u128>,
    first: Option<u128>,
    done: bool,
}

impl<'a> RangeIter<'a> {
    /// A walk over `set`; a `last_reserved` address outside the set (the ranges changed) is ignored.
    pub fn new(set: &'a RangeSet, last_reserved: Option<IpAddr>) -> Self {
        let resume = last_reserved.map(canonical_ip).and_then(|ip| {
            set.0
                .iter()
                .position(|r| r.contains(ip))
                .map(|i| (i, to_num(ip)))
        });
        let (idx, cur) = match resume {
            Some((i, n)) => (i, Some(n)),
            None => (0, None),
        };
        Self {
            set: &set.0,
            idx,
            cur,
            first: None,
            done: set.0.is_empty(),
        }
    }
}

impl<'a> Iterator for RangeIter<'a> {
    type Item = (IpAddr, &'a Range);

    fn next(&mut self) -> Option<Self::Item> {
        while !self.done {
            let r = self.set.get(self.idx)?;
            let next = match self.cur {
                None => to_num(r.start),
                Some(c) if c >= to_num(r.end) => {
                    self.idx = (self.idx + 1) % self.set.len();
                    to_num(self.set.get(self.idx)?.start)
                }
                Some(c) => c + 1,
            };
            self.cur = Some(next);
            match self.first {
                None => self.first = Some(next),
                Some(f) if f == next => {
                    self.done = true;
                    return None;
                }
                Some(_) => {}
            }
            let r = self.set.get(self.idx)?;
            if next != to_num(r.gateway) {
                return Some((from_num(next, r.is_v4()), r));
            }
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::collections::HashSet;

    fn spec(subnet: &str) -> RangeSpec {
        RangeSpec {
            subnet: subnet.parse().unwrap(),
            start: None,
            end: None,
            gateway: None,
        }
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    fn canon(s: RangeSpec) -> Result<Range, String> {
        Range::canonicalize(&s, "ipam.ranges[0][0]")
    }

    #[test]
    fn defaults_v4_exclude_network_and_broadcast() {
        let r = canon(spec("10.1.0.0/24")).unwrap();
        assert_eq!(
            (r.start, r.end, r.gateway),
            (ip("10.1.0.1"), ip("10.1.0.254"), ip("10.1.0.1"))
        );
        assert_eq!(r.to_string(), "10.1.0.1-10.1.0.254");
        let r = canon(spec("10.251.0.0/29")).unwrap();
        assert_eq!(r.to_string(), "10.251.0.1-10.251.0.6");
    }

    #[test]
    fn defaults_v6_use_last_address() {
        let r = canon(spec("fd00::/126")).unwrap();
        assert_eq!(r.to_string(), "fd00::1-fd00::3");
        assert_eq!(r.gateway, ip("fd00::1"));
        let r = canon(spec("fd00::/64")).unwrap();
        assert_eq!(r.end, ip("fd00::ffff:ffff:ffff:ffff"));
    }

    #[test]
    fn too_small_networks() {
        for s in ["10.9.9.0/31", "10.9.9.9/32", "fd00::/127", "fd00::1/128"] {
            let e = canon(spec(s)).unwrap_err();
            assert!(e.contains("too small to allocate from"), "{e}");
            assert!(e.contains(s), "{e}");
        }
        assert!(canon(spec("10.9.9.0/30")).is_ok());
    }

    #[test]
    fn host_bits_rejected() {
        let e = canon(spec("10.9.1.5/24")).unwrap_err();
        assert!(
            e.contains("10.9.1.5/24") && e.contains("10.9.1.0") && e.contains("subnet"),
            "{e}"
        );
    }

    #[test]
    fn bounds_must_be_inside() {
        let mut s = spec("10.1.0.0/24");
        s.start = Some(ip("10.2.0.5"));
        let e = canon(s).unwrap_err();
        assert!(e.contains("rangeStart 10.2.0.5"), "{e}");
        let mut s = spec("10.1.0.0/24");
        s.end = Some(ip("fd00::5"));
        assert!(canon(s).unwrap_err().contains("rangeEnd fd00::5"));
        let mut s = spec("10.1.0.0/24");
        s.gateway = Some(ip("10.1.1.1"));
        assert_eq!(
            canon(s).unwrap().gateway,
            ip("10.1.1.1"),
            "the reference accepts an outside gateway"
        );
        let mut s = spec("10.1.0.0/24");
        s.gateway = Some(ip("fd00::1"));
        assert!(canon(s).unwrap_err().contains("gateway fd00::1"));
        let mut s = spec("10.1.0.0/24");
        s.start = Some(ip("10.1.0.100"));
        s.end = Some(ip("10.1.0.50"));
        assert!(canon(s).unwrap_err().contains("before"));
    }

    #[test]
    fn explicit_bounds_kept() {
        let mut s = spec("10.1.0.0/24");
        s.start = Some(ip("10.1.0.0"));
        s.end = Some(ip("10.1.0.255"));
        s.gateway = Some(ip("::ffff:10.1.0.254"));
        let r = canon(s).unwrap();
        assert_eq!(
            (r.start, r.end, r.gateway),
            (ip("10.1.0.0"), ip("10.1.0.255"), ip("10.1.0.254"))
        );
        assert!(canon(spec("::ffff:10.0.0.0/120")).is_err());
    }

    #[test]
    fn sets_single_family_no_overlap() {
        let p = |s: &str| (spec(s), "p".to_string());
        assert!(RangeSet::canonicalize(&[p("10.0.0.0/24"), p("10.0.1.0/24")]).is_ok());
        assert!(RangeSet::canonicalize(&[p("10.0.0.0/24"), p("fd00::/64")])
            .unwrap_err()
            .contains("mixed"));
        assert!(
            RangeSet::canonicalize(&[p("10.0.0.0/16"), p("10.0.1.0/24")])
                .unwrap_err()
                .contains("overlap")
        );
        assert!(RangeSet::canonicalize(&[]).is_err());
        let a = RangeSet::canonicalize(&[p("10.0.0.0/24")]).unwrap();
        let b = RangeSet::canonicalize(&[p("10.0.0.0/25")]).unwrap();
        let c = RangeSet::canonicalize(&[p("fd00::/64")]).unwrap();
        assert!(a.overlaps(&b) && !a.overlaps(&c));
        let two = RangeSet::canonicalize(&[p("10.0.0.0/30"), p("10.0.1.0/30")]).unwrap();
        assert_eq!(two.to_string(), "10.0.0.1-10.0.0.2,10.0.1.1-10.0.1.2");
    }

    #[test]
    fn walk_matches_reference_order() {
        let set = RangeSet(vec![canon(spec("10.251.0.0/29")).unwrap()]);
        let all: Vec<String> = RangeIter::new(&set, None)
            .map(|(a, _)| a.to_string())
            .collect();
        assert_eq!(
            all,
            [
                "10.251.0.2",
                "10.251.0.3",
                "10.251.0.4",
                "10.251.0.5",
                "10.251.0.6"
            ]
        );
        let from: Vec<String> = RangeIter::new(&set, Some(ip("10.251.0.4")))
            .map(|(a, _)| a.to_string())
            .collect();
        assert_eq!(
            from,
            [
                "10.251.0.5",
                "10.251.0.6",
                "10.251.0.2",
                "10.251.0.3",
                "10.251.0.4"
            ]
        );
        // A stale last-reserved address restarts at the first range.
        let stale: Vec<String> = RangeIter::new(&set, Some(ip("10.9.0.4")))
            .map(|(a, _)| a.to_string())
            .collect();
        assert_eq!(stale, all);
    }

    #[test]
    fn walk_crosses_ranges() {
        let p = |s: &str| (spec(s), "p".to_string());
        let set = RangeSet::canonicalize(&[p("10.0.0.0/30"), p("10.0.1.0/30")]).unwrap();
        let from: Vec<String> = RangeIter::new(&set, Some(ip("10.0.0.2")))
            .map(|(a, _)| a.to_string())
            .collect();
        assert_eq!(from, ["10.0.1.2", "10.0.0.2"]);
    }

    #[test]
    fn walk_of_gateway_only_range_is_empty() {
        let mut s = spec("10.0.0.0/30");
        s.end = Some(ip("10.0.0.1"));
        let set = RangeSet(vec![canon(s).unwrap()]);
        assert_eq!(RangeIter::new(&set, None).count(), 0);
        assert_eq!(RangeIter::new(&set, Some(ip("10.0.0.1"))).count(), 0);
    }

    /// Up to three non-overlapping small IPv4 ranges with arbitrary bounds and gateways.
    fn arb_set() -> impl Strategy<Value = RangeSet> {
        proptest::collection::vec((24u8..=30, any::<u8>(), any::<u8>(), any::<u8>()), 1..=3)
            .prop_map(|v| {
                let ranges = v
                    .into_iter()
                    .enumerate()
                    .map(|(i, (prefix, a, b, g))| {
                        let subnet: IpNet = format!("10.{i}.0.0/{prefix}").parse().unwrap();
                        let size = 1u32 << (32 - prefix);
                        let base = u32::from(match subnet.network() {
                            IpAddr::V4(x) => x,
                            IpAddr::V6(_) => unreachable!(),
                        });
                        let (lo, hi) = (u32::from(a) % size, u32::from(b) % size);
                        let (lo, hi) = (lo.min(hi), lo.max(hi));
                        let gw = u32::from(g) % size;
                        let s = RangeSpec {
                            subnet,
                            start: Some(IpAddr::V4((base + lo).into())),
                            end: Some(IpAddr::V4((base + hi).into())),
                            gateway: Some(IpAddr::V4((base + gw).into())),
                        };
                        (s, format!("r{i}"))
                    })
                    .collect::<Vec<_>>();
                RangeSet::canonicalize(&ranges).unwrap()
            })
    }

    proptest! {
        /// Every address is inside the set, never its range's gateway, never repeated, and the walk
        /// yields exactly the allocatable addresses, from any starting point.
        #[test]
        fn walk_covers_each_address_once(set in arb_set(), last in any::<u32>(), use_last in any::<bool>()) {
            let last = use_last.then(|| {
                let r = &set.0[(last as usize) % set.0.len()];
                from_num(to_num(r.start) + u128::from(last) % r.size(), true)
            });
            let mut seen = HashSet::new();
            for (a, r) in RangeIter::new(&set, last) {
                prop_assert!(r.contains(a));
                prop_assert_eq!(set.range_for(a), Some(r));
                prop_assert_ne!(a, r.gateway);
                prop_assert!(seen.insert(a), "{} twice", a);
            }
            let expected: u128 = set.0.iter().map(|r| r.size() - u128::from(r.contains(r.gateway))).sum();
            prop_assert_eq!(seen.len() as u128, expected);
            if let (Some(l), Some(first)) = (last, RangeIter::new(&set, last).next()) {
                // Round robin: the walk resumes after the last reserved address, which comes last.
                if seen.len() > 1 { prop_assert_ne!(first.0, l); }
                let lastly = RangeIter::new(&set, last).last().map(|x| x.0);
                let r = set.range_for(l).unwrap();
                if l != r.gateway { prop_assert_eq!(lastly, Some(l)); }
            }
        }
    }
}
