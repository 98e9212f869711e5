//! The lease model: subnet keys, lease attributes (the JSON value stored under the key)
//! and the lease itself.
//!
//! Wire format as upstream (`pkg/subnet/subnet.go`, `pkg/lease/lease.go`):
//! key `10.244.3.0-24`, dual-stack key `10.244.3.0-24&fc00:0:0:3::-64` (the IPv6 part in
//! Go's compressed `net.IP` text, which is also Rust's RFC 5952 text); value
//! `{"PublicIP":"192.0.2.1","PublicIPv6":null,"BackendType":"vxlan","BackendData":{...}}`
//! with `BackendType`, `BackendData` and `BackendV6Data` left out when empty.

use std::fmt;
use std::net::{Ipv4Addr, Ipv6Addr};
use std::str::FromStr;
use std::time::SystemTime;

use ipnet::{Ipv4Net, Ipv6Net};
use serde::ser::SerializeMap;
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use serde_json::Value;

use crate::backend_data::BackendData;
use crate::gojson::{field, show};

/// Placeholder IPv4 part of the key of an IPv6-only lease.
///
/// Upstream's etcd keys always start with an IPv4 subnet; with `EnableIPv4: false` its
/// allocator leaves the IPv4 part zero, so IPv6-only keys read `0.0.0.0-0&fc00::-64`.
pub const NO_IPV4_SUBNET: Ipv4Net = match Ipv4Net::new(Ipv4Addr::UNSPECIFIED, 0) {
    Ok(n) => n,
    Err(_) => unreachable!(),
};

/// A lease value or key that cannot be understood; callers log it and skip the lease.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LeaseError {
    /// The key is not `<ipv4>-<len>[&<ipv6>-<len>]`.
    #[error("malformed subnet key {key:?}: expected <ipv4>-<len>[&<ipv6>-<len>]")]
    BadKey {
        /// The key as found.
        key: String,
    },
    /// The value is not lease JSON.
    #[error("malformed lease value under {key:?}: {reason}")]
    BadValue {
        /// The subnet key the value was found under.
        key: String,
        /// What is wrong.
        reason: String,
    },
}

/// The subnet(s) a lease is for; its text form is the last element of the etcd key.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SubnetKey {
    /// The IPv4 subnet ([`NO_IPV4_SUBNET`] for an IPv6-only lease).
    pub ipv4: Ipv4Net,
    /// The IPv6 subnet of a dual-stack or IPv6-only lease.
    pub ipv6: Option<Ipv6Net>,
}

impl SubnetKey {
    /// A key for an IPv4-only lease.
    pub fn v4(ipv4: Ipv4Net) -> Self {
        SubnetKey { ipv4, ipv6: None }
    }

    /// Whether the key carries a real IPv4 subnet (not the IPv6-only placeholder).
    pub fn has_ipv4(&self) -> bool {
        self.ipv4 != NO_IPV4_SUBNET
    }

    /// The subnets as CIDRs, for people and logs (the key form `10.244.3.0-24` is the store's):
    /// `10.244.3.0/24`, `10.244.3.0/24 + fc00:0:0:3::/64`, `fc00:0:0:3::/64`.
    pub fn cidrs(&self) -> String {
        let v4 = self.has_ipv4().then(|| self.ipv4.to_string());
        let v6 = self.ipv6.map(|n| n.to_string());
        match (v4, v6) {
            (Some(a), Some(b)) => format!("{a} + {b}"),
            (Some(a), None) => a,
            (None, Some(b)) => b,
            (None, None) => self.ipv4.to_string(),
        }
    }
}

impl fmt::Display for SubnetKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}-{}", self.ipv4.addr(), self.ipv4.prefix_len())?;
        if let Some(v6) = self.ipv6 {
            write!(f, "&{}-{}", v6.addr(), v6.prefix_len())?;
        }
        Ok(())
    }
}

fn split_net(s: &str) -> Option<(&str, u8)> {
    let (addr, len) = s.rsplit_once('-')?;
    // Only plain decimal digits, as upstream's `(\d+)`: no sign, no spaces.
    if len.is_empty() || len.len() > 3 || !len.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    Some((addr, len.parse().ok()?))
}

impl FromStr for SubnetKey {
    type Err = LeaseError;

    fn from_str(s: &str) -> Result<Self, LeaseError> {
        let bad = || LeaseError::BadKey { key: s.to_string() };
        let (v4, v6) = match s.split_once('&') {
            Some((a, b)) => (a, Some(b)),
            None => (s, None),
        };
        let (a4, l4) = split_net(v4).ok_or_else(bad)?;
        let a4: Ipv4Addr = a4.parse().map_err(|_| bad())?;
        let ipv4 = Ipv4Net::new(a4, l4).map_err(|_| bad())?;
        let ipv6 = match v6 {
            None => None,
            Some(v6) => {
                let (a6, l6) = split_net(v6).ok_or_else(bad)?;
                // Upstream's key regex allows only lower-case hex, digits and colons.
                if !a6
                    .bytes()
                    .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b) || b == b':')
                {
                    return Err(bad());
                }
                let a6: Ipv6Addr = a6.parse().map_err(|_| bad())?;
                Some(Ipv6Net::new(a6, l6).map_err(|_| bad())?)
            }
        };
        Ok(SubnetKey { ipv4, ipv6 })
    }
}

/// What a node publishes about itself in its lease (upstream `LeaseAttrs`).
#[derive(Debug, Clone, PartialEq)]
pub struct LeaseAttrs {
    /// `PublicIP`: the node's underlay IPv4 address (`0.0.0.0` when it has none).
    pub public_ip: Ipv4Addr,
    /// `PublicIPv6`: the node's underlay IPv6 address; written as `null` when absent.
    pub public_ipv6: Option<Ipv6Addr>,
    /// `BackendType`, e.g. `vxlan`; left out of the JSON when empty.
    pub backend_type: String,
    /// `BackendData`, e.g. `{"VNI":1,"VtepMAC":"..."}`; left out when absent.
    pub backend_data: Option<BackendData>,
    /// `BackendV6Data`; left out when absent.
    pub backend_v6_data: Option<BackendData>,
}

impl Default for LeaseAttrs {
    fn default() -> Self {
        LeaseAttrs {
            public_ip: Ipv4Addr::UNSPECIFIED,
            public_ipv6: None,
            backend_type: String::new(),
            backend_data: None,
            backend_v6_data: None,
        }
    }
}

impl LeaseAttrs {
    /// The JSON text stored as the lease value, byte-compatible with upstream's.
    pub fn to_json(&self) -> String {
        // Serializing a map of strings and `Value`s cannot fail.
        serde_json::to_string(self).unwrap_or_default()
    }

    /// Reads a lease value; `key` is only used in the error.
    pub fn from_json(key: &str, text: &[u8]) -> Result<Self, LeaseError> {
        let bad = |reason: String| LeaseError::BadValue {
            key: key.to_string(),
            reason,
        };
        let v: Value = serde_json::from_slice(text).map_err(|e| bad(e.to_string()))?;
        Self::from_value(&v).map_err(bad)
    }

    fn from_value(v: &Value) -> Result<Self, String> {
        let Value::Object(obj) = v else {
            return Err(format!("expected a JSON object, got {}", show(v)));
        };
        let public_ip = match field(obj, "PublicIP") {
            None => Ipv4Addr::UNSPECIFIED,
            Some(Value::String(s)) => s.parse().map_err(|_| {
                format!(
                    "PublicIP {}: not an IPv4 address",
                    show(&Value::from(s.as_str()))
                )
            })?,
            Some(v) => return Err(format!("PublicIP {}: not an IPv4 address", show(v))),
        };
        let public_ipv6 = match field(obj, "PublicIPv6") {
            None => None,
            Some(Value::String(s)) => Some(s.parse().map_err(|_| {
                format!(
                    "PublicIPv6 {}: not an IPv6 address",
                    show(&Value::from(s.as_str()))
                )
            })?),
            Some(v) => return Err(format!("PublicIPv6 {}: not an IPv6 address", show(v))),
        };
        let backend_type = match field(obj, "BackendType") {
            None => String::new(),
            Some(Value::String(s)) => s.clone(),
            Some(v) => return Err(format!("BackendType {}: not a string", show(v))),
        };
        Ok(LeaseAttrs {
            public_ip,
            public_ipv6,
            backend_type,
            backend_data: field(obj, "BackendData").map(BackendData::from_value),
            backend_v6_data: field(obj, "BackendV6Data").map(BackendData::from_value),
        })
    }
}

impl Serialize for LeaseAttrs {
    fn serialize<S: Serializer>(&self, ser: S) -> Result<S::Ok, S::Error> {
        let mut m = ser.serialize_map(None)?;
        m.serialize_entry("PublicIP", &self.public_ip.to_string())?;
        m.serialize_entry("PublicIPv6", &self.public_ipv6.map(|a| a.to_string()))?;
        if !self.backend_type.is_empty() {
            m.serialize_entry("BackendType", &self.backend_type)?;
        }
        if let Some(d) = &self.backend_data {
            m.serialize_entry("BackendData", d)?;
        }
        if let Some(d) = &self.backend_v6_data {
            m.serialize_entry("BackendV6Data", d)?;
        }
        m.end()
    }
}

impl<'de> Deserialize<'de> for LeaseAttrs {
    fn deserialize<D: Deserializer<'de>>(de: D) -> Result<Self, D::Error> {
        let v = Value::deserialize(de)?;
        LeaseAttrs::from_value(&v).map_err(serde::de::Error::custom)
    }
}

/// When a lease ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Expiration {
    /// A reservation: the key has no TTL (Documentation/reservations.md).
    Never,
    /// The lease expires at this time unless renewed.
    At(SystemTime),
    /// The lease has a TTL that was not read: lists and watches skip the per-key TTL
    /// lookup (one round trip per key) because only the node's own lease needs it.
    Unknown,
}

/// A subnet lease: the subnet(s), what the owner published, and when it ends.
#[derive(Debug, Clone, PartialEq)]
pub struct Lease {
    /// The IPv4 subnet ([`NO_IPV4_SUBNET`] for an IPv6-only lease).
    pub subnet: Ipv4Net,
    /// The IPv6 subnet, for dual-stack and IPv6-only leases.
    pub ipv6_subnet: Option<Ipv6Net>,
    /// The published attributes.
    pub attrs: LeaseAttrs,
    /// When the lease ends.
    pub expiration: Expiration,
    /// Store revision of the last change of this lease (etcd `mod_revision`).
    pub revision: i64,
    /// Store revision at which the key was created (etcd `create_revision`); renewals keep it. Orders leases that
    /// claim the same thing: the older claim wins. Equal to `revision` where the store cannot tell.
    pub created: i64,
}

impl Lease {
    /// The lease's key.
    pub fn key(&self) -> SubnetKey {
        SubnetKey {
            ipv4: self.subnet,
            ipv6: self.ipv6_subnet,
        }
    }

    /// Builds a lease from a stored key (the part after `subnets/`) and value.
    pub fn from_stored(
        key: &str,
        value: &[u8],
        expiration: Expiration,
        revision: i64,
    ) -> Result<Self, LeaseError> {
        let k: SubnetKey = key.parse()?;
        let attrs = LeaseAttrs::from_json(key, value)?;
        Ok(Lease::new(k, attrs, expiration, revision))
    }

    /// A lease for `key` with these attributes.
    pub fn new(key: SubnetKey, attrs: LeaseAttrs, expiration: Expiration, revision: i64) -> Self {
        Lease {
            subnet: key.ipv4,
            ipv6_subnet: key.ipv6,
            attrs,
            expiration,
            revision,
            created: revision,
        }
    }

    /// The same lease with the store revision its key was created at.
    pub fn with_created(mut self, created: i64) -> Self {
        self.created = created;
        self
    }

    /// Whether two leases describe the same peer the same way (ignores expiration and
    /// revision, which change on every renewal).
    pub fn same_peer(&self, other: &Lease) -> bool {
        self.subnet == other.subnet
            && self.ipv6_subnet == other.ipv6_subnet
            && self.attrs == other.attrs
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn key_forms() {
        let k: SubnetKey = "10.244.3.0-24".parse().unwrap();
        assert_eq!(k, SubnetKey::v4("10.244.3.0/24".parse().unwrap()));
        assert_eq!(k.to_string(), "10.244.3.0-24");
        let k: SubnetKey = "10.5.52.0-24&fc00::-64".parse().unwrap();
        assert_eq!(k.ipv6, Some("fc00::/64".parse().unwrap()));
        assert_eq!(k.to_string(), "10.5.52.0-24&fc00::-64");
        assert_eq!(k.cidrs(), "10.5.52.0/24 + fc00::/64");
        assert_eq!(
            "10.244.3.0-24".parse::<SubnetKey>().unwrap().cidrs(),
            "10.244.3.0/24"
        );
        let k: SubnetKey = "0.0.0.0-0&fc00:0:0:5::-64".parse().unwrap();
        assert!(!k.has_ipv4());
        for bad in [
            "",
            "10.0.0.0",
            "10.0.0.0-",
            "10.0.0.0-33",
            "10.0.0-24",
            "10.0.0.0--24",
            "x-24",
            "10.0.0.0-24&",
            "10.0.0.0-24&FC00::-64",
            "10.0.0.0-24&fc00::-129",
            "10.0.0.0-+4",
            "10.0.0.0-24&1.2.3.4-24",
            "10.0.0.0-0024",
        ] {
            assert!(bad.parse::<SubnetKey>().is_err(), "{bad} should not parse");
        }
    }

    #[test]
    fn attrs_json_exactly_upstream() {
        let text = r#"{"PublicIP":"192.168.64.3","PublicIPv6":null,"BackendType":"vxlan","BackendData":{"VNI":1,"VtepMAC":"c6:d2:32:6f:8f:44"}}"#;
        let a = LeaseAttrs::from_json("k", text.as_bytes()).unwrap();
        assert_eq!(a.public_ip, Ipv4Addr::new(192, 168, 64, 3));
        assert_eq!(a.backend_type, "vxlan");
        assert_eq!(a.to_json(), text);
        let bare = LeaseAttrs {
            public_ip: Ipv4Addr::new(192, 0, 2, 1),
            ..Default::default()
        };
        assert_eq!(
            bare.to_json(),
            r#"{"PublicIP":"192.0.2.1","PublicIPv6":null}"#
        );
        let v6 = LeaseAttrs {
            public_ipv6: Some("2001:db8::1".parse().unwrap()),
            backend_v6_data: Some(serde_json::json!({"VNI":1}).into()),
            ..bare
        };
        assert_eq!(
            v6.to_json(),
            r#"{"PublicIP":"192.0.2.1","PublicIPv6":"2001:db8::1","BackendV6Data":{"VNI":1}}"#
        );
    }

    #[test]
    fn attrs_tolerant_like_go() {
        let a = LeaseAttrs::from_json(
            "k",
            br#"{"publicip":"10.0.0.1","Extra":[1,2],"backendtype":"host-gw"}"#,
        )
        .unwrap();
        assert_eq!(a.public_ip, Ipv4Addr::new(10, 0, 0, 1));
        assert_eq!(a.backend_type, "host-gw");
        for bad in [
            &b"not json"[..],
            b"[]",
            br#"{"PublicIP":"x"}"#,
            br#"{"PublicIP":5}"#,
            br#"{"PublicIPv6":"1.2.3.4.5"}"#,
            b"",
        ] {
            let e = LeaseAttrs::from_json("10.0.0.0-24", bad).unwrap_err();
            assert!(e.to_string().contains("10.0.0.0-24"), "{e}");
        }
    }

    #[test]
    fn lease_from_stored() {
        let l = Lease::from_stored(
            "10.1.2.0-24",
            br#"{"PublicIP":"192.0.2.9"}"#,
            Expiration::Never,
            7,
        )
        .unwrap();
        assert_eq!(l.key().to_string(), "10.1.2.0-24");
        assert_eq!(l.revision, 7);
        assert!(Lease::from_stored("junk", b"{}", Expiration::Never, 1).is_err());
    }

    fn arb_key() -> impl Strategy<Value = SubnetKey> {
        (
            any::<u32>(),
            0u8..=32,
            proptest::option::of((any::<u128>(), 0u8..=128)),
        )
            .prop_map(|(a, l, v6)| SubnetKey {
                ipv4: Ipv4Net::new(Ipv4Addr::from(a), l).unwrap(),
                ipv6: v6.map(|(a, l)| Ipv6Net::new(Ipv6Addr::from(a), l).unwrap()),
            })
    }

    proptest! {
        #[test]
        fn key_round_trip(k in arb_key()) {
            let s = k.to_string();
            prop_assert_eq!(s.parse::<SubnetKey>().unwrap(), k);
        }

        #[test]
        fn key_parse_never_panics(s in "[0-9a-f.:&-]{0,60}") {
            if let Ok(k) = s.parse::<SubnetKey>() {
                // Whatever parses formats back to something that parses the same.
                prop_assert_eq!(k.to_string().parse::<SubnetKey>().unwrap(), k);
            }
        }

        #[test]
        fn attrs_round_trip(ip in any::<u32>(), ip6 in proptest::option::of(any::<u128>()), bt in "[a-z-]{0,8}", vni in proptest::option::of(any::<u32>())) {
            let a = LeaseAttrs {
                public_ip: Ipv4Addr::from(ip),
                public_ipv6: ip6.map(Ipv6Addr::from),
                backend_type: bt,
                backend_data: vni.map(|v| serde_json::json!({"VNI": v, "VtepMAC": "02:00:00:00:00:01"}).into()),
                backend_v6_data: None,
            };
            prop_assert_eq!(LeaseAttrs::from_json("k", a.to_json().as_bytes()).unwrap(), a);
        }

        #[test]
        fn attrs_parse_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..200)) {
            let _ = LeaseAttrs::from_json("k", &bytes);
        }
    }
}
