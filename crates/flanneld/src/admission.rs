//! Admission: the one gate between the lease source and the kernel.
//!
//! Whoever can write under the store's prefix (or, in Kubernetes mode, a Node's annotations) decides what the
//! leases say; without a gate one lease covering the underlay (`192.0.2.192-26`) routes every node's store traffic
//! into the tunnel, and one copied VTEP MAC re-points another node's FDB entry. So every lease is checked here
//! before the backend sees it, and only what is consistent is programmed:
//!
//! - its subnet lies inside the network config's `Network` (`IPv6Network`), has exactly `SubnetLen`
//!   (`IPv6SubnetLen`) and no host bits, and its public address is a usable unicast address outside the cluster
//!   network;
//! - the backend accepts its type and data (for vxlan: a unicast VTEP MAC), see [`PeerRules`];
//! - nothing it claims exclusively — its subnets, its VTEP MACs — is held by this node or by a lease admitted
//!   before it. The first holder keeps a claim: leases admitted in an earlier pass and unchanged since come first,
//!   then the others by the store revision their key was created at, so an older lease wins over a newer copy, and
//!   every node picks the same winner.
//!
//! A refused lease is logged once per store revision (a renewal logs it again) and listed in `/status`; leases that
//! are admitted or leave are logged once each ("subnet added: 10.244.3.0/24 via 192.0.2.3"). Anything the kernel
//! holds for a lease that is refused or gone is removed by the backend's next pass, because the backend only ever
//! sees admitted peers.

use crate::backend::Peer;
use ipnet::{Ipv4Net, Ipv6Net};
use kernel::Mac;
use std::collections::hash_map::DefaultHasher;
use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::hash::{Hash, Hasher};
use std::net::{Ipv4Addr, Ipv6Addr};
use subnet::{Lease, NetworkConfig, SubnetKey};
use tracing::{info, warn};

/// Something at most one node may announce.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Claim {
    /// An IPv4 pod subnet.
    Subnet4(Ipv4Net),
    /// An IPv6 pod subnet.
    Subnet6(Ipv6Net),
    /// The MAC of a VXLAN endpoint over IPv4.
    VtepMac4(Mac),
    /// The MAC of a VXLAN endpoint over IPv6.
    VtepMac6(Mac),
}

impl fmt::Display for Claim {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Claim::Subnet4(n) => write!(f, "subnet {n}"),
            Claim::Subnet6(n) => write!(f, "subnet {n}"),
            Claim::VtepMac4(m) => write!(f, "VtepMAC {m}"),
            Claim::VtepMac6(m) => write!(f, "IPv6 VtepMAC {m}"),
        }
    }
}

/// The backend's part of admission: its lease type and data.
pub trait PeerRules {
    /// Checks the backend-specific part of a peer's lease (`BackendType`, `BackendData`), fills in what the backend
    /// needs from it, and appends what the peer claims exclusively to `claims`; `Err` is the reason to refuse the
    /// lease (what was appended is then ignored).
    fn admit_peer(
        &self,
        lease: &Lease,
        peer: &mut Peer,
        claims: &mut Vec<Claim>,
    ) -> Result<(), String>;

    /// What this node holds exclusively besides its subnets (its own VTEP MACs).
    fn own_claims(&self) -> Vec<Claim>;
}

/// The network's rules for a lease's subnets, from the network config.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct NetworkRules {
    /// `Network` and `SubnetLen`, when IPv4 is enabled.
    pub v4: Option<(Ipv4Net, u8)>,
    /// `IPv6Network` and `IPv6SubnetLen`, when IPv6 is enabled.
    pub v6: Option<(Ipv6Net, u8)>,
}

impl NetworkRules {
    /// The rules of a checked config (defaults filled in).
    pub fn from_config(cfg: &NetworkConfig) -> Self {
        NetworkRules {
            v4: cfg
                .network
                .filter(|_| cfg.enable_ipv4)
                .map(|n| (n, cfg.subnet_len.unwrap_or(24))),
            v6: cfg
                .ipv6_network
                .filter(|_| cfg.enable_ipv6)
                .map(|n| (n, cfg.ipv6_subnet_len.unwrap_or(64))),
        }
    }

    /// The peer a lease describes, if its subnets and public addresses fit the network.
    pub fn peer(&self, lease: &Lease) -> Result<Peer, String> {
        let key = lease.key();
        let subnet = match self.v4 {
            Some((net, len)) if key.has_ipv4() => Some(check_subnet4(key.ipv4, net, len)?),
            _ => None,
        };
        let ipv6_subnet = match (self.v6, key.ipv6) {
            (Some((net, len)), Some(s)) => Some(check_subnet6(s, net, len)?),
            _ => None,
        };
        if subnet.is_none() && ipv6_subnet.is_none() {
            return Err(match (self.v4.is_some(), self.v6.is_some()) {
                (true, false) => "no IPv4 subnet: the network is IPv4".into(),
                (false, true) => "no IPv6 subnet: the network is IPv6-only".into(),
                _ => "no subnet of the network's address families".into(),
            });
        }
        let public_ip = match subnet {
            Some(_) => Some(check_public4(lease.attrs.public_ip, self.v4.map(|v| v.0))?),
            None => None,
        };
        let public_ipv6 = match ipv6_subnet {
            Some(s) => Some(match lease.attrs.public_ipv6 {
                Some(ip) => check_public6(ip, self.v6.map(|v| v.0))?,
                None => return Err(format!("IPv6 subnet {s} without a PublicIPv6")),
            }),
            None => None,
        };
        Ok(Peer {
            subnet,
            ipv6_subnet,
            public_ip,
            public_ipv6,
            data: crate::backend::PeerData::None,
        })
    }
}

fn check_subnet4(s: Ipv4Net, net: Ipv4Net, len: u8) -> Result<Ipv4Net, String> {
    if s.trunc() != s {
        return Err(format!(
            "subnet {s} has host bits set (its network is {})",
            s.trunc()
        ));
    }
    if !net.contains(&s) {
        return Err(format!("subnet {s} is outside the network {net}"));
    }
    if s.prefix_len() != len {
        return Err(format!(
            "subnet {s} is not a /{len} (the network's SubnetLen)"
        ));
    }
    Ok(s)
}

fn check_subnet6(s: Ipv6Net, net: Ipv6Net, len: u8) -> Result<Ipv6Net, String> {
    if s.trunc() != s {
        return Err(format!(
            "subnet {s} has host bits set (its network is {})",
            s.trunc()
        ));
    }
    if !net.contains(&s) {
        return Err(format!("subnet {s} is outside the network {net}"));
    }
    if s.prefix_len() != len {
        return Err(format!(
            "subnet {s} is not a /{len} (the network's IPv6SubnetLen)"
        ));
    }
    Ok(s)
}

fn check_public4(ip: Ipv4Addr, net: Option<Ipv4Net>) -> Result<Ipv4Addr, String> {
    let bad = if ip.is_unspecified() {
        "is unspecified"
    } else if ip.is_loopback() {
        "is a loopback address"
    } else if ip.is_multicast() {
        "is a multicast address"
    } else if ip.is_broadcast() {
        "is the broadcast address"
    } else if net.is_some_and(|n| n.contains(&ip)) {
        "lies inside the flannel network (traffic to it would enter the tunnel)"
    } else {
        return Ok(ip);
    };
    Err(format!("PublicIP {ip} {bad}"))
}

fn check_public6(ip: Ipv6Addr, net: Option<Ipv6Net>) -> Result<Ipv6Addr, String> {
    let bad = if ip.is_unspecified() {
        "is unspecified"
    } else if ip.is_loopback() {
        "is a loopback address"
    } else if ip.is_multicast() {
        "is a multicast address"
    } else if net.is_some_and(|n| n.contains(&ip)) {
        "lies inside the flannel network (traffic to it would enter the tunnel)"
    } else {
        return Ok(ip);
    };
    Err(format!("PublicIPv6 {ip} {bad}"))
}

/// Checks a VTEP MAC a lease announces (`BackendData.VtepMAC`): a unicast, non-zero Ethernet address.
pub fn check_vtep_mac(data: Option<&subnet::BackendData>, field: &str) -> Result<Mac, String> {
    let Some(data) = data else {
        return Err(format!("no {field}"));
    };
    // Go's encoding/json matches keys case-insensitively (the last non-null one wins).
    let v = match data.field("VtepMAC") {
        Err(()) => return Err(format!("{field} is not an object")),
        Ok(None) => return Err(format!("{field} has no VtepMAC")),
        Ok(Some(v)) => v,
    };
    let Some(text) = v.as_str() else {
        return Err(format!("{field}.VtepMAC {v} is not a string"));
    };
    let Some(mac) = Mac::parse(text) else {
        return Err(format!("{field}.VtepMAC {text:?} is not a MAC address"));
    };
    if mac.is_zero() {
        return Err(format!("{field}.VtepMAC {mac} is the all-zero address"));
    }
    if mac.is_multicast() {
        return Err(format!(
            "{field}.VtepMAC {mac} is a broadcast or multicast address"
        ));
    }
    Ok(mac)
}

/// A lease that is not programmed, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    /// Store revision of the lease as refused.
    pub revision: i64,
    /// Why.
    pub reason: String,
}

#[derive(Debug, Clone, Copy)]
struct Accepted {
    /// Order of first admission (lower wins a claim).
    seq: u64,
    /// Hash of the peer as admitted: a changed lease competes again as a newcomer.
    fingerprint: u64,
}

/// The peers of one pass.
#[derive(Debug, Default)]
pub struct Admitted {
    /// The admitted peers, in key order.
    pub peers: Vec<Peer>,
    /// Their keys, sorted (the same order).
    pub keys: Vec<SubnetKey>,
    /// What changed since the last pass, for [`Admitted::log_changes`].
    pub changes: Vec<Change>,
}

/// A peer that came, changed or left since the last pass (an index into [`Admitted::peers`], or the key).
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Change {
    /// Admitted for the first time (or again).
    Added(usize),
    /// Admitted before, with other data now.
    Changed(usize),
    /// Admitted before, gone or refused now.
    Removed(SubnetKey),
}

impl Admitted {
    /// One line per peer that came, changed or left ("subnet added: 10.244.3.0/24 via 192.0.2.3"). The daemon
    /// calls it after the kernel pass: thousands of peers arriving at once must not wait for their log lines.
    pub fn log_changes(&self) {
        for c in &self.changes {
            match *c {
                Change::Added(i) => {
                    if let Some(p) = self.peers.get(i) {
                        log_peer("subnet added", p)
                    }
                }
                Change::Changed(i) => {
                    if let Some(p) = self.peers.get(i) {
                        log_peer("subnet changed", p)
                    }
                }
                Change::Removed(key) => info!(lease = %key, "subnet removed: {}", key.cidrs()),
            }
        }
    }
}

/// The admission state across passes: who was admitted first, what was refused and logged.
#[derive(Debug)]
pub struct Admission {
    rules: NetworkRules,
    /// This node's own subnets.
    own: Vec<Claim>,
    accepted: HashMap<SubnetKey, Accepted>,
    next_seq: u64,
    refused: BTreeMap<SubnetKey, Refusal>,
}

fn fingerprint(p: &Peer) -> u64 {
    let mut h = DefaultHasher::new();
    p.hash(&mut h);
    h.finish()
}

impl Admission {
    /// Admission for a node holding `own_subnets` in a network with these rules.
    pub fn new(rules: NetworkRules, own_v4: Option<Ipv4Net>, own_v6: Option<Ipv6Net>) -> Self {
        let own = own_v4
            .map(Claim::Subnet4)
            .into_iter()
            .chain(own_v6.map(Claim::Subnet6))
            .collect();
        Admission {
            rules,
            own,
            accepted: HashMap::new(),
            next_seq: 0,
            refused: BTreeMap::new(),
        }
    }

    /// The leases refused in the last pass, by key.
    pub fn refused(&self) -> &BTreeMap<SubnetKey, Refusal> {
        &self.refused
    }

    /// Checks every lease and returns the peers to program. Logs what changed since the last pass.
    pub fn admit(
        &mut self,
        leases: &BTreeMap<SubnetKey, Lease>,
        backend: &dyn PeerRules,
    ) -> Admitted {
        // 1. Each lease on its own: network rules, then the backend's. The claims of every candidate share one
        // vector (a pass over thousands of leases should not make thousands of small ones).
        struct Candidate<'l> {
            key: SubnetKey,
            lease: &'l Lease,
            peer: Peer,
            claims: std::ops::Range<usize>,
            fingerprint: u64,
        }
        let mut candidates: Vec<Candidate> = Vec::with_capacity(leases.len());
        let mut claims: Vec<Claim> = Vec::with_capacity(leases.len() * 3);
        let mut refused: BTreeMap<SubnetKey, Refusal> = BTreeMap::new();
        for (key, lease) in leases {
            let start = claims.len();
            let checked = self.rules.peer(lease).and_then(|mut peer| {
                backend.admit_peer(lease, &mut peer, &mut claims)?;
                claims.extend(peer.subnet.map(Claim::Subnet4));
                claims.extend(peer.ipv6_subnet.map(Claim::Subnet6));
                Ok(peer)
            });
            match checked {
                Ok(peer) => candidates.push(Candidate {
                    key: *key,
                    lease,
                    fingerprint: fingerprint(&peer),
                    peer,
                    claims: start..claims.len(),
                }),
                Err(reason) => {
                    claims.truncate(start);
                    refused.insert(
                        *key,
                        Refusal {
                            revision: lease.revision,
                            reason,
                        },
                    );
                }
            }
        }

        // 2. Who competes first for a claim: unchanged admitted peers in admission order, then the rest by age.
        candidates.sort_by_cached_key(|c| {
            let prior = self
                .accepted
                .get(&c.key)
                .filter(|a| a.fingerprint == c.fingerprint)
                .map(|a| a.seq);
            (
                prior.unwrap_or(u64::MAX),
                c.lease.created,
                c.lease.revision,
                c.key,
            )
        });

        // 3. First come, first served; this node holds its own claims before anyone. A holder is the key of the
        // lease holding the claim, or `None` for this node.
        let mut holders: HashMap<Claim, Option<SubnetKey>> =
            HashMap::with_capacity(claims.len() + 4);
        for c in self.own.iter().copied().chain(backend.own_claims()) {
            holders.insert(c, None);
        }
        let mut accepted: HashMap<SubnetKey, Accepted> = HashMap::with_capacity(candidates.len());
        let mut admitted: Vec<(SubnetKey, Peer)> = Vec::with_capacity(candidates.len());
        for cand in candidates {
            let mine = claims.get(cand.claims.clone()).unwrap_or_default();
            if let Some((c, h)) = mine.iter().find_map(|c| holders.get(c).map(|h| (*c, *h))) {
                let by = match h {
                    None => "this node".to_string(),
                    Some(k) => format!("lease {k}"),
                };
                refused.insert(
                    cand.key,
                    Refusal {
                        revision: cand.lease.revision,
                        reason: format!("{c} is already announced by {by}"),
                    },
                );
                continue;
            }
            for c in mine {
                holders.insert(*c, Some(cand.key));
            }
            let seq = match self.accepted.get(&cand.key) {
                Some(a) => a.seq,
                None => {
                    self.next_seq += 1;
                    self.next_seq
                }
            };
            accepted.insert(
                cand.key,
                Accepted {
                    seq,
                    fingerprint: cand.fingerprint,
                },
            );
            admitted.push((cand.key, cand.peer));
        }
        admitted.sort_by_key(|(k, _)| *k);

        // 4. Say what changed: refusals once per revision and reason, peers once when they come or go.
        for (key, r) in &refused {
            if self.refused.get(key) != Some(r) {
                warn!(lease = %key, revision = r.revision, "refusing lease: {}; it is not programmed", r.reason);
            }
        }
        let mut changes = Vec::new();
        for (i, (key, _)) in admitted.iter().enumerate() {
            match self.accepted.get(key) {
                None => changes.push(Change::Added(i)),
                Some(a)
                    if accepted
                        .get(key)
                        .is_some_and(|n| n.fingerprint != a.fingerprint) =>
                {
                    changes.push(Change::Changed(i))
                }
                Some(_) => {}
            }
        }
        let mut removed: Vec<SubnetKey> = self
            .accepted
            .keys()
            .filter(|k| !accepted.contains_key(k))
            .copied()
            .collect();
        removed.sort();
        changes.extend(removed.into_iter().map(Change::Removed));
        self.accepted = accepted;
        self.refused = refused;
        let keys = admitted.iter().map(|(k, _)| *k).collect();
        Admitted {
            peers: admitted.into_iter().map(|(_, p)| p).collect(),
            keys,
            changes,
        }
    }
}

fn log_peer(what: &str, p: &Peer) {
    if let (Some(s), Some(ip)) = (p.subnet, p.public_ip) {
        info!("{what}: {s} via {ip}");
    }
    if let (Some(s), Some(ip)) = (p.ipv6_subnet, p.public_ipv6) {
        info!("{what}: {s} via {ip}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use serde_json::{json, Value};
    use subnet::{Expiration, LeaseAttrs};

    /// The vxlan rules in miniature: type vxlan, a VtepMAC claimed.
    struct Vx {
        own_mac: Mac,
    }

    impl PeerRules for Vx {
        fn admit_peer(
            &self,
            lease: &Lease,
            peer: &mut Peer,
            claims: &mut Vec<Claim>,
        ) -> Result<(), String> {
            if lease.attrs.backend_type != "vxlan" {
                return Err(format!("backend type {:?}", lease.attrs.backend_type));
            }
            let mac = check_vtep_mac(lease.attrs.backend_data.as_ref(), "BackendData")?;
            peer.data = crate::backend::PeerData::Vtep {
                v4: Some(mac),
                v6: None,
            };
            claims.push(Claim::VtepMac4(mac));
            Ok(())
        }
        fn own_claims(&self) -> Vec<Claim> {
            vec![Claim::VtepMac4(self.own_mac)]
        }
    }

    fn vx() -> Vx {
        Vx {
            own_mac: Mac([0x0e, 0, 0, 0, 0, 1]),
        }
    }

    fn rules() -> NetworkRules {
        NetworkRules {
            v4: Some(("10.244.0.0/16".parse().unwrap(), 24)),
            v6: None,
        }
    }

    fn lease(key: &str, ip: &str, mac: &str, created: i64) -> Lease {
        Lease::new(
            key.parse().unwrap(),
            LeaseAttrs {
                public_ip: ip.parse().unwrap(),
                backend_type: "vxlan".into(),
                backend_data: Some(json!({"VNI": 1, "VtepMAC": mac}).into()),
                ..Default::default()
            },
            Expiration::Unknown,
            created + 100,
        )
        .with_created(created)
    }

    fn set(ls: Vec<Lease>) -> BTreeMap<SubnetKey, Lease> {
        ls.into_iter().map(|l| (l.key(), l)).collect()
    }

    fn admission() -> Admission {
        Admission::new(rules(), Some("10.244.1.0/24".parse().unwrap()), None)
    }

    fn keys(a: &Admitted) -> Vec<String> {
        a.keys.iter().map(|k| k.to_string()).collect()
    }

    fn reason(a: &Admission, k: &str) -> String {
        a.refused()
            .get(&k.parse().unwrap())
            .map(|r| r.reason.clone())
            .unwrap_or_default()
    }

    #[test]
    fn subnets_outside_misaligned_or_with_host_bits_are_refused() {
        let mut a = admission();
        let got = a.admit(
            &set(vec![
                lease("10.244.2.0-24", "192.0.2.2", "0e:00:00:00:00:02", 1),
                // Covers the underlay: the attack from the issue.
                lease("192.0.2.192-26", "192.0.2.3", "0e:00:00:00:00:03", 2),
                lease("10.244.4.0-25", "192.0.2.4", "0e:00:00:00:00:04", 3),
                lease("10.244.8.0-22", "192.0.2.5", "0e:00:00:00:00:05", 4),
                lease("10.244.3.5-24", "192.0.2.6", "0e:00:00:00:00:06", 5),
                lease("10.0.0.0-8", "192.0.2.7", "0e:00:00:00:00:07", 6),
                lease("0.0.0.0-0", "192.0.2.8", "0e:00:00:00:00:08", 7),
            ]),
            &vx(),
        );
        assert_eq!(keys(&got), vec!["10.244.2.0-24"]);
        assert!(reason(&a, "192.0.2.192-26").contains("outside the network 10.244.0.0/16"));
        assert!(reason(&a, "10.244.4.0-25").contains("not a /24"));
        assert!(reason(&a, "10.244.8.0-22").contains("not a /24"));
        assert!(reason(&a, "10.244.3.5-24").contains("host bits"));
        assert!(reason(&a, "10.0.0.0-8").contains("outside"));
        assert!(reason(&a, "0.0.0.0-0").contains("no IPv4 subnet"));
        assert_eq!(a.refused().len(), 6);
    }

    #[test]
    fn ipv6_subnets_outside_misaligned_or_with_host_bits_are_refused() {
        let rules = NetworkRules {
            v4: Some(("10.244.0.0/16".parse().unwrap(), 24)),
            v6: Some(("fc00::/48".parse().unwrap(), 64)),
        };
        let mut a = Admission::new(rules, None, None);
        let mk = |key: &str, n: u8| {
            let mut l = lease(
                key,
                "192.0.2.2",
                &format!("0e:00:00:00:01:{n:02x}"),
                n.into(),
            );
            l.attrs.public_ipv6 = Some("2001:db8::2".parse().unwrap());
            l
        };
        let got = a.admit(
            &set(vec![
                mk("10.244.2.0-24&fc00:0:0:2::-64", 2),
                // Covers the IPv6 underlay (2001:db8::/32 documentation range).
                mk("10.244.3.0-24&2001:db8::-64", 3),
                mk("10.244.4.0-24&fc00:0:0:4::-80", 4),
                mk("10.244.5.0-24&fc00::-40", 5),
                mk("10.244.6.0-24&fc00:0:0:6::5-64", 6),
                mk("10.244.7.0-24&::-0", 7),
            ]),
            &vx(),
        );
        assert_eq!(keys(&got), vec!["10.244.2.0-24&fc00:0:0:2::-64"]);
        assert!(reason(&a, "10.244.3.0-24&2001:db8::-64").contains("outside the network fc00::/48"));
        assert!(reason(&a, "10.244.4.0-24&fc00:0:0:4::-80").contains("not a /64"));
        assert!(reason(&a, "10.244.5.0-24&fc00::-40").contains("outside"));
        assert!(reason(&a, "10.244.6.0-24&fc00:0:0:6::5-64").contains("host bits"));
        assert!(!reason(&a, "10.244.7.0-24&::-0").is_empty());
        assert_eq!(a.refused().len(), 5);
    }

    #[test]
    fn bad_public_ips_and_macs_are_refused() {
        let mut a = admission();
        a.admit(
            &set(vec![
                lease("10.244.2.0-24", "0.0.0.0", "0e:00:00:00:00:02", 1),
                lease("10.244.3.0-24", "127.0.0.1", "0e:00:00:00:00:03", 2),
                lease("10.244.4.0-24", "10.244.9.9", "0e:00:00:00:00:04", 3),
                lease("10.244.5.0-24", "224.0.0.1", "0e:00:00:00:00:05", 4),
                lease("10.244.6.0-24", "192.0.2.6", "ff:ff:ff:ff:ff:ff", 5),
                lease("10.244.7.0-24", "192.0.2.7", "00:00:00:00:00:00", 6),
                lease("10.244.8.0-24", "192.0.2.8", "01:00:5e:00:00:01", 7),
                lease("10.244.9.0-24", "192.0.2.9", "zz", 8),
                lease("10.244.10.0-24", "255.255.255.255", "0e:00:00:00:00:0a", 9),
            ]),
            &vx(),
        );
        assert_eq!(a.refused().len(), 9);
        assert!(reason(&a, "10.244.2.0-24").contains("unspecified"));
        assert!(reason(&a, "10.244.4.0-24").contains("inside the flannel network"));
        assert!(reason(&a, "10.244.6.0-24").contains("broadcast"));
        assert!(reason(&a, "10.244.7.0-24").contains("all-zero"));
        assert!(reason(&a, "10.244.9.0-24").contains("not a MAC"));
    }

    #[test]
    fn own_subnet_and_own_mac_are_never_taken() {
        let mut a = admission();
        let got = a.admit(
            &set(vec![
                lease("10.244.1.0-24", "192.0.2.9", "0e:00:00:00:00:09", 1),
                lease("10.244.2.0-24", "192.0.2.2", "0e:00:00:00:00:01", 2),
            ]),
            &vx(),
        );
        assert!(got.peers.is_empty());
        assert!(reason(&a, "10.244.1.0-24").contains("already announced by this node"));
        assert!(reason(&a, "10.244.2.0-24").contains("VtepMAC 0e:00:00:00:00:01"));
    }

    #[test]
    fn duplicate_mac_first_holder_keeps_it() {
        let mut a = admission();
        let first = lease("10.244.5.0-24", "192.0.2.5", "0e:00:00:00:00:05", 10);
        let got = a.admit(&set(vec![first.clone()]), &vx());
        assert_eq!(keys(&got), vec!["10.244.5.0-24"]);
        // A newer lease copies the MAC, and its key sorts first and was even created "earlier": the holder keeps it.
        let thief = lease("10.244.3.0-24", "192.0.2.66", "0e:00:00:00:00:05", 1);
        let got = a.admit(&set(vec![first.clone(), thief.clone()]), &vx());
        assert_eq!(keys(&got), vec!["10.244.5.0-24"]);
        assert!(reason(&a, "10.244.3.0-24").contains("already announced by lease 10.244.5.0-24"));
        // Renewal of the holder (new revision, same content) changes nothing.
        let mut renewed = first.clone();
        renewed.revision += 50;
        let got = a.admit(&set(vec![renewed, thief.clone()]), &vx());
        assert_eq!(keys(&got), vec!["10.244.5.0-24"]);
        // The holder leaves: the other lease gets the MAC.
        let got = a.admit(&set(vec![thief]), &vx());
        assert_eq!(keys(&got), vec!["10.244.3.0-24"]);
        assert!(a.refused().is_empty());
    }

    #[test]
    fn changes_are_reported_once() {
        let mut a = admission();
        let l2 = lease("10.244.2.0-24", "192.0.2.2", "0e:00:00:00:00:02", 1);
        let l3 = lease("10.244.3.0-24", "192.0.2.3", "0e:00:00:00:00:03", 2);
        let got = a.admit(&set(vec![l2.clone(), l3.clone()]), &vx());
        assert_eq!(got.changes.len(), 2);
        assert!(
            matches!(got.changes[0], Change::Added(i) if got.peers[i].public_ip == Some("192.0.2.2".parse().unwrap()))
        );
        // Nothing changed: nothing to say.
        assert!(a
            .admit(&set(vec![l2.clone(), l3.clone()]), &vx())
            .changes
            .is_empty());
        // One moves, one leaves.
        let moved = lease("10.244.2.0-24", "192.0.2.22", "0e:00:00:00:00:02", 1);
        let got = a.admit(&set(vec![moved]), &vx());
        assert_eq!(
            got.changes
                .iter()
                .map(|c| match *c {
                    Change::Added(_) => "added".to_string(),
                    Change::Changed(i) => format!("changed {}", got.peers[i].public_ip.unwrap()),
                    Change::Removed(k) => format!("removed {k}"),
                })
                .collect::<Vec<_>>(),
            vec!["changed 192.0.2.22", "removed 10.244.3.0-24"]
        );
    }

    #[test]
    fn changed_lease_competes_as_a_newcomer() {
        let mut a = admission();
        let l2 = lease("10.244.2.0-24", "192.0.2.2", "0e:00:00:00:00:02", 1);
        let l3 = lease("10.244.3.0-24", "192.0.2.3", "0e:00:00:00:00:03", 2);
        a.admit(&set(vec![l2.clone(), l3.clone()]), &vx());
        // Someone rewrites the older lease to take the other's MAC: the unchanged holder keeps it.
        let hijacked = lease("10.244.2.0-24", "192.0.2.2", "0e:00:00:00:00:03", 1);
        let got = a.admit(&set(vec![hijacked, l3.clone()]), &vx());
        assert_eq!(keys(&got), vec!["10.244.3.0-24"]);
        assert!(reason(&a, "10.244.2.0-24").contains("VtepMAC 0e:00:00:00:00:03"));
    }

    #[test]
    fn fresh_start_prefers_the_older_key() {
        let mut a = admission();
        let got = a.admit(
            &set(vec![
                lease("10.244.3.0-24", "192.0.2.3", "0e:00:00:00:00:07", 9),
                lease("10.244.9.0-24", "192.0.2.9", "0e:00:00:00:00:07", 2),
            ]),
            &vx(),
        );
        assert_eq!(keys(&got), vec!["10.244.9.0-24"]);
    }

    #[test]
    fn dual_stack_overlap_on_one_family_is_refused() {
        let rules = NetworkRules {
            v4: Some(("10.244.0.0/16".parse().unwrap(), 24)),
            v6: Some(("fc00::/48".parse().unwrap(), 64)),
        };
        let mut a = Admission::new(rules, None, None);
        let mk = |key: &str, created: i64, mac: &str| {
            let mut l = lease(key, "192.0.2.2", mac, created);
            l.attrs.public_ipv6 = Some("2001:db8::2".parse().unwrap());
            l
        };
        let got = a.admit(
            &set(vec![
                mk("10.244.3.0-24&fc00:0:0:3::-64", 1, "0e:00:00:00:00:03"),
                mk("10.244.3.0-24&fc00:0:0:4::-64", 2, "0e:00:00:00:00:04"),
                mk("10.244.5.0-24&fc00:0:0:3::-64", 3, "0e:00:00:00:00:05"),
            ]),
            &vx(),
        );
        assert_eq!(keys(&got), vec!["10.244.3.0-24&fc00:0:0:3::-64"]);
        assert!(reason(&a, "10.244.3.0-24&fc00:0:0:4::-64").contains("subnet 10.244.3.0/24"));
        assert!(reason(&a, "10.244.5.0-24&fc00:0:0:3::-64").contains("subnet fc00:0:0:3::/64"));
        // IPv6 part without a PublicIPv6.
        let l = lease(
            "10.244.6.0-24&fc00:0:0:6::-64",
            "192.0.2.6",
            "0e:00:00:00:00:06",
            4,
        );
        a.admit(&set(vec![l]), &vx());
        assert!(reason(&a, "10.244.6.0-24&fc00:0:0:6::-64").contains("without a PublicIPv6"));
    }

    fn arb_lease() -> impl Strategy<Value = Lease> {
        (
            any::<u32>(),
            0u8..=32,
            any::<u32>(),
            prop_oneof![Just("vxlan".to_string()), "[a-z-]{0,6}"],
            prop_oneof![
                any::<[u8; 6]>().prop_map(|m| Value::from(Mac(m).to_string())),
                Just(Value::Null),
                Just(json!(7)),
                "[0-9a-f:]{0,20}".prop_map(Value::from),
            ],
            0i64..20,
        )
            .prop_map(|(a, len, ip, bt, mac, created)| {
                Lease::new(
                    SubnetKey::v4(Ipv4Net::new(Ipv4Addr::from(a), len).unwrap()),
                    LeaseAttrs {
                        public_ip: Ipv4Addr::from(ip),
                        backend_type: bt,
                        backend_data: Some(json!({ "VtepMAC": mac }).into()),
                        ..Default::default()
                    },
                    Expiration::Unknown,
                    created + 1,
                )
                .with_created(created)
            })
    }

    proptest! {
        /// Whatever the store holds: no panic, no two admitted peers share a subnet or a MAC, nothing admitted
        /// lies outside the network or overlaps this node, and every lease is either admitted or refused.
        #[test]
        fn admitted_peers_are_always_consistent(
            ls in proptest::collection::vec(arb_lease(), 0..40),
            // Narrow keys too, so that collisions actually happen.
            narrow in proptest::collection::vec((0u8..8, 0u8..4, 0u8..3), 0..20),
        ) {
            let mut all = set(ls);
            for (third, ip, mac) in narrow {
                let l = lease(&format!("10.244.{third}.0-24"), &format!("192.0.2.{}", ip + 1),
                    &format!("0e:00:00:00:00:0{mac}"), i64::from(third));
                all.insert(l.key(), l);
            }
            let mut a = admission();
            for _ in 0..2 {
                let got = a.admit(&all, &vx());
                let net: Ipv4Net = "10.244.0.0/16".parse().unwrap();
                let mut subnets = std::collections::HashSet::new();
                let mut macs = std::collections::HashSet::new();
                for p in &got.peers {
                    let s = p.subnet.unwrap();
                    prop_assert!(net.contains(&s) && s.prefix_len() == 24 && s.trunc() == s);
                    prop_assert!(s != "10.244.1.0/24".parse::<Ipv4Net>().unwrap());
                    prop_assert!(subnets.insert(s));
                    let m = p.data.vtep(false).unwrap();
                    prop_assert!(m != vx().own_mac && !m.is_multicast() && !m.is_zero());
                    prop_assert!(macs.insert(m));
                }
                prop_assert_eq!(got.peers.len() + a.refused().len(), all.len());
            }
        }
    }
}
