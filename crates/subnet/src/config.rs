//! The flannel network config (`<prefix>/config` in etcd, `net-conf.json` in Kubernetes).
//!
//! Same JSON as upstream `pkg/subnet/config.go`: `Network`, `SubnetLen`, `SubnetMin`,
//! `SubnetMax`, the `IPv6*` counterparts, `EnableIPv4` (default true), `EnableIPv6`,
//! `EnableNFTables` and the raw `Backend` object. Keys are matched case-insensitively like
//! Go's `encoding/json`; unknown keys are ignored.
//!
//! [`NetworkConfig::parse`] is upstream's `ParseConfig` (all Kubernetes mode uses);
//! [`NetworkConfig::check`] is upstream's `CheckNetworkConfig` (defaults and validation for
//! the etcd and local stores).

use std::net::{Ipv4Addr, Ipv6Addr};

use ipnet::{Ipv4Net, Ipv6Net};
use serde_json::{Map, Value};

use crate::gojson::{field, show};

/// Backend type used when the config has no `Backend` or no `Backend.Type`.
///
/// Deviation: upstream's `parseBackendType` returns `"udp"` when `Backend` is absent (and an
/// empty type, i.e. an error later, when `Type` is absent), while its documentation says the
/// backend "defaults to vxlan". We follow the documentation, as the project's issue asks.
pub const DEFAULT_BACKEND_TYPE: &str = "vxlan";

/// A config that cannot be used; every variant names the key and the value.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConfigError {
    /// The text is not JSON, or not a JSON object.
    #[error("invalid network config: {0}")]
    Json(String),
    /// A key has a value of the wrong type or an unusable value.
    #[error("{key} {value}: {reason}")]
    Invalid {
        /// The config key, spelled as upstream documents it.
        key: &'static str,
        /// The offending value as JSON text (or `(missing)`).
        value: String,
        /// What is wrong and what is expected.
        reason: String,
    },
}

fn invalid(key: &'static str, value: impl Into<String>, reason: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        key,
        value: value.into(),
        reason: reason.into(),
    }
}

/// The network config, as parsed and (after [`NetworkConfig::check`]) completed with defaults.
#[derive(Debug, Clone, PartialEq)]
pub struct NetworkConfig {
    /// `EnableIPv4` (default true).
    pub enable_ipv4: bool,
    /// `EnableIPv6` (default false).
    pub enable_ipv6: bool,
    /// `EnableNFTables` (default false): nftables instead of iptables for traffic rules.
    pub enable_nftables: bool,
    /// `Network`: the IPv4 cluster CIDR (host bits cleared, as Go's `net.ParseCIDR` does).
    pub network: Option<Ipv4Net>,
    /// `SubnetLen`: prefix length of each node's IPv4 subnet; `None` until defaulted.
    pub subnet_len: Option<u8>,
    /// `SubnetMin`: lowest IPv4 subnet handed out; `None` until defaulted.
    pub subnet_min: Option<Ipv4Addr>,
    /// `SubnetMax`: highest IPv4 subnet handed out; `None` until defaulted.
    pub subnet_max: Option<Ipv4Addr>,
    /// `IPv6Network`: the IPv6 cluster CIDR.
    pub ipv6_network: Option<Ipv6Net>,
    /// `IPv6SubnetLen`; `None` until defaulted.
    pub ipv6_subnet_len: Option<u8>,
    /// `IPv6SubnetMin`; `None` until defaulted.
    pub ipv6_subnet_min: Option<Ipv6Addr>,
    /// `IPv6SubnetMax`; `None` until defaulted.
    pub ipv6_subnet_max: Option<Ipv6Addr>,
    /// `Backend.Type` as written (backends are looked up case-insensitively), or `vxlan`.
    pub backend_type: String,
    /// The whole `Backend` object (backend options), `Value::Null` when absent.
    pub backend: Value,
}

/// The range of IPv4 subnets a node may get, after defaults.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Pool4 {
    /// The cluster network.
    pub network: Ipv4Net,
    /// Prefix length of each node subnet.
    pub subnet_len: u8,
    /// First subnet address handed out.
    pub min: Ipv4Addr,
    /// Last subnet address handed out.
    pub max: Ipv4Addr,
}

/// The range of IPv6 subnets a node may get, after defaults.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Pool6 {
    /// The cluster network.
    pub network: Ipv6Net,
    /// Prefix length of each node subnet.
    pub subnet_len: u8,
    /// First subnet address handed out.
    pub min: Ipv6Addr,
    /// Last subnet address handed out.
    pub max: Ipv6Addr,
}

fn get_bool(
    obj: &Map<String, Value>,
    key: &'static str,
    default: bool,
) -> Result<bool, ConfigError> {
    match field(obj, key) {
        None => Ok(default),
        Some(Value::Bool(b)) => Ok(*b),
        Some(v) => Err(invalid(key, show(v), "must be true or false")),
    }
}

fn get_len(
    obj: &Map<String, Value>,
    key: &'static str,
    max: u8,
) -> Result<Option<u8>, ConfigError> {
    match field(obj, key) {
        None => Ok(None),
        Some(v) => match v.as_u64() {
            // Go decodes into a uint, where 0 means "not set".
            Some(0) => Ok(None),
            // Out-of-range lengths below 256 get check()'s "must be between" message.
            Some(n) => match u8::try_from(n) {
                Ok(n) => Ok(Some(n)),
                Err(_) => Err(invalid(
                    key,
                    show(v),
                    format!("must be a prefix length of at most {max}"),
                )),
            },
            None => Err(invalid(
                key,
                show(v),
                "must be an unsigned integer prefix length",
            )),
        },
    }
}

fn get_str<'a>(
    obj: &'a Map<String, Value>,
    key: &'static str,
) -> Result<Option<&'a str>, ConfigError> {
    match field(obj, key) {
        None => Ok(None),
        Some(Value::String(s)) => Ok(Some(s)),
        Some(v) => Err(invalid(key, show(v), "must be a string")),
    }
}

fn quoted(s: &str) -> String {
    show(&Value::from(s))
}

impl NetworkConfig {
    /// Parses the config JSON without defaults or range checks (upstream `ParseConfig`).
    pub fn parse(text: &str) -> Result<Self, ConfigError> {
        let value: Value =
            serde_json::from_str(text).map_err(|e| ConfigError::Json(e.to_string()))?;
        let Value::Object(obj) = value else {
            return Err(ConfigError::Json(format!(
                "expected a JSON object, got {}",
                show(&value)
            )));
        };

        let network = match get_str(&obj, "Network")? {
            None => None,
            Some(s) => Some(
                s.parse::<Ipv4Net>()
                    .map_err(|_| {
                        invalid(
                            "Network",
                            quoted(s),
                            "must be an IPv4 CIDR such as 10.244.0.0/16",
                        )
                    })?
                    .trunc(),
            ),
        };
        let ipv6_network = match get_str(&obj, "IPv6Network")? {
            None => None,
            Some(s) => Some(
                s.parse::<Ipv6Net>()
                    .map_err(|_| {
                        invalid(
                            "IPv6Network",
                            quoted(s),
                            "must be an IPv6 CIDR such as fc00::/48",
                        )
                    })?
                    .trunc(),
            ),
        };
        let v4 = |key: &'static str| -> Result<Option<Ipv4Addr>, ConfigError> {
            match get_str(&obj, key)? {
                None => Ok(None),
                Some(s) => match s.parse::<Ipv4Addr>() {
                    // Go's zero IP4 means "not set" and gets the default.
                    Ok(a) if a.is_unspecified() => Ok(None),
                    Ok(a) => Ok(Some(a)),
                    Err(_) => Err(invalid(key, quoted(s), "must be an IPv4 address")),
                },
            }
        };
        let v6 = |key: &'static str| -> Result<Option<Ipv6Addr>, ConfigError> {
            match get_str(&obj, key)? {
                None => Ok(None),
                Some(s) => match s.parse::<Ipv6Addr>() {
                    Ok(a) if a.is_unspecified() => Ok(None),
                    Ok(a) => Ok(Some(a)),
                    Err(_) => Err(invalid(key, quoted(s), "must be an IPv6 address")),
                },
            }
        };

        let backend = field(&obj, "Backend").cloned().unwrap_or(Value::Null);
        let backend_type = match &backend {
            Value::Null => DEFAULT_BACKEND_TYPE.to_string(),
            Value::Object(b) => match field(b, "Type") {
                None => DEFAULT_BACKEND_TYPE.to_string(),
                Some(Value::String(t)) if t.is_empty() => DEFAULT_BACKEND_TYPE.to_string(),
                Some(Value::String(t)) => t.clone(),
                Some(v) => {
                    return Err(invalid(
                        "Backend.Type",
                        show(v),
                        "must be a string such as \"vxlan\"",
                    ))
                }
            },
            v => {
                return Err(invalid(
                    "Backend",
                    show(v),
                    "must be a JSON object such as {\"Type\":\"vxlan\"}",
                ))
            }
        };

        Ok(NetworkConfig {
            enable_ipv4: get_bool(&obj, "EnableIPv4", true)?,
            enable_ipv6: get_bool(&obj, "EnableIPv6", false)?,
            enable_nftables: get_bool(&obj, "EnableNFTables", false)?,
            network,
            subnet_len: get_len(&obj, "SubnetLen", 32)?,
            subnet_min: v4("SubnetMin")?,
            subnet_max: v4("SubnetMax")?,
            ipv6_network,
            ipv6_subnet_len: get_len(&obj, "IPv6SubnetLen", 128)?,
            ipv6_subnet_min: v6("IPv6SubnetMin")?,
            ipv6_subnet_max: v6("IPv6SubnetMax")?,
            backend_type,
            backend,
        })
    }

    /// Parses and checks in one step (what the etcd and local stores use).
    pub fn parse_checked(text: &str) -> Result<Self, ConfigError> {
        let mut cfg = Self::parse(text)?;
        cfg.check()?;
        Ok(cfg)
    }

    /// Fills in defaults and validates ranges (upstream `CheckNetworkConfig`).
    ///
    /// Beyond upstream, it also rejects `SubnetMin` > `SubnetMax`, which upstream accepts and
    /// then fails at allocation time with "out of subnets".
    pub fn check(&mut self) -> Result<(), ConfigError> {
        if self.enable_ipv4 {
            let network = match self.network {
                Some(n) if !(n.addr().is_unspecified() && n.prefix_len() == 0) => n,
                other => {
                    let v = other
                        .map(|n| quoted(&n.to_string()))
                        .unwrap_or_else(|| "(missing)".into());
                    return Err(invalid(
                        "Network",
                        v,
                        "please define a correct Network parameter in the flannel config",
                    ));
                }
            };
            let r = check_range(
                &Family {
                    bits: 32,
                    max_len: 30,
                    min_useful_prefix: 28,
                    default_len: 24,
                    names: ["Network", "SubnetLen", "SubnetMin", "SubnetMax"],
                },
                (u32::from(network.addr()) as u128, network.prefix_len()),
                self.subnet_len,
                self.subnet_min.map(|a| u32::from(a) as u128),
                self.subnet_max.map(|a| u32::from(a) as u128),
                &|v| Ipv4Addr::from(v as u32).to_string(),
                &network.to_string(),
            )?;
            self.subnet_len = Some(r.0);
            self.subnet_min = Some(Ipv4Addr::from(r.1 as u32));
            self.subnet_max = Some(Ipv4Addr::from(r.2 as u32));
        }
        if self.enable_ipv6 {
            let network = match self.ipv6_network {
                Some(n) if !(n.addr().is_unspecified() && n.prefix_len() == 0) => n,
                other => {
                    let v = other
                        .map(|n| quoted(&n.to_string()))
                        .unwrap_or_else(|| "(missing)".into());
                    return Err(invalid(
                        "IPv6Network",
                        v,
                        "please define a correct IPv6Network parameter in the flannel config",
                    ));
                }
            };
            let r = check_range(
                &Family {
                    bits: 128,
                    max_len: 126,
                    min_useful_prefix: 124,
                    default_len: 64,
                    names: [
                        "IPv6Network",
                        "IPv6SubnetLen",
                        "IPv6SubnetMin",
                        "IPv6SubnetMax",
                    ],
                },
                (u128::from(network.addr()), network.prefix_len()),
                self.ipv6_subnet_len,
                self.ipv6_subnet_min.map(u128::from),
                self.ipv6_subnet_max.map(u128::from),
                &|v| Ipv6Addr::from(v).to_string(),
                &network.to_string(),
            )?;
            self.ipv6_subnet_len = Some(r.0);
            self.ipv6_subnet_min = Some(Ipv6Addr::from(r.1));
            self.ipv6_subnet_max = Some(Ipv6Addr::from(r.2));
        }
        Ok(())
    }

    /// The IPv4 subnet pool, when IPv4 is enabled and [`check`](Self::check) has run.
    pub fn pool4(&self) -> Option<Pool4> {
        if !self.enable_ipv4 {
            return None;
        }
        Some(Pool4 {
            network: self.network?,
            subnet_len: self.subnet_len?,
            min: self.subnet_min?,
            max: self.subnet_max?,
        })
    }

    /// The IPv6 subnet pool, when IPv6 is enabled and [`check`](Self::check) has run.
    pub fn pool6(&self) -> Option<Pool6> {
        if !self.enable_ipv6 {
            return None;
        }
        Some(Pool6 {
            network: self.ipv6_network?,
            subnet_len: self.ipv6_subnet_len?,
            min: self.ipv6_subnet_min?,
            max: self.ipv6_subnet_max?,
        })
    }
}

/// Per-family constants of upstream's checks (IPv4: /30, /28, /24; IPv6: /126, /124, /64).
struct Family {
    bits: u8,
    max_len: u8,
    min_useful_prefix: u8,
    default_len: u8,
    names: [&'static str; 4],
}

/// Shared IPv4/IPv6 logic of `CheckNetworkConfig` on integer addresses. Returns
/// `(subnet_len, min, max)`.
#[allow(clippy::too_many_arguments)]
fn check_range(
    fam: &Family,
    (net, prefix): (u128, u8),
    subnet_len: Option<u8>,
    min: Option<u128>,
    max: Option<u128>,
    fmt: &dyn Fn(u128) -> String,
    net_text: &str,
) -> Result<(u8, u128, u128), ConfigError> {
    let [n_net, n_len, n_min, n_max] = fam.names;
    let len = match subnet_len {
        Some(len) => {
            // Each node needs room for a tunnel and a bridge address, and the network must
            // hold at least four subnets because the first one is never handed out.
            let lo = prefix.saturating_add(2);
            if len > fam.max_len || len < lo {
                let reason = if lo <= fam.max_len {
                    format!(
                        "must be between {lo} and {} for {n_net} {net_text}",
                        fam.max_len
                    )
                } else {
                    format!(
                        "{n_net} {net_text} is too small: the minimum useful prefix is /{}",
                        fam.min_useful_prefix
                    )
                };
                return Err(invalid(n_len, len.to_string(), reason));
            }
            len
        }
        None => {
            if prefix > fam.min_useful_prefix {
                return Err(invalid(
                    n_net,
                    quoted(net_text),
                    format!(
                        "network is too small. Minimum useful network prefix is /{}",
                        fam.min_useful_prefix
                    ),
                ));
            } else if prefix <= fam.default_len - 2 {
                fam.default_len
            } else {
                prefix + 2
            }
        }
    };
    let host_bits = u32::from(fam.bits - len);
    let size: u128 = 1u128 << host_bits;
    let net_last: u128 = if prefix == 0 {
        if fam.bits == 128 {
            u128::MAX
        } else {
            (1u128 << fam.bits) - 1
        }
    } else {
        net | ((1u128 << (fam.bits - prefix)) - 1)
    };
    let contains = |a: u128| a >= net && a <= net_last;

    // The first subnet is skipped: its .0 would collide with the network address.
    let min = match min {
        None => net + size,
        Some(a) if !contains(a) => {
            return Err(invalid(
                n_min,
                quoted(&fmt(a)),
                format!("is not in the range of the {n_net} {net_text}"),
            ))
        }
        Some(a) => a,
    };
    let max = match max {
        None => net_last - (size - 1),
        Some(a) if !contains(a) => {
            return Err(invalid(
                n_max,
                quoted(&fmt(a)),
                format!("is not in the range of the {n_net} {net_text}"),
            ))
        }
        Some(a) => a,
    };
    let mask = size - 1;
    if min & mask != 0 {
        return Err(invalid(
            n_min,
            quoted(&fmt(min)),
            format!("is not on a {n_len} (/{len}) boundary"),
        ));
    }
    if max & mask != 0 {
        return Err(invalid(
            n_max,
            quoted(&fmt(max)),
            format!("is not on a {n_len} (/{len}) boundary"),
        ));
    }
    if min > max {
        return Err(invalid(
            n_min,
            quoted(&fmt(min)),
            format!("is greater than {n_max} {}", quoted(&fmt(max))),
        ));
    }
    Ok((len, min, max))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn checked(s: &str) -> Result<NetworkConfig, ConfigError> {
        NetworkConfig::parse_checked(s)
    }

    fn err(s: &str) -> String {
        match checked(s) {
            Ok(c) => panic!("expected an error for {s}, got {c:?}"),
            Err(e) => e.to_string(),
        }
    }

    #[test]
    fn defaults_like_upstream() {
        let c = checked(r#"{"Network":"10.244.0.0/16"}"#).unwrap();
        assert!(c.enable_ipv4 && !c.enable_ipv6 && !c.enable_nftables);
        assert_eq!(c.subnet_len, Some(24));
        assert_eq!(c.subnet_min, Some("10.244.1.0".parse().unwrap()));
        assert_eq!(c.subnet_max, Some("10.244.255.0".parse().unwrap()));
        assert_eq!(c.backend_type, "vxlan");
        assert_eq!(c.backend, Value::Null);
    }

    #[test]
    fn small_network_gets_prefix_plus_two() {
        let c = checked(r#"{"Network":"10.0.0.0/26"}"#).unwrap();
        assert_eq!(c.subnet_len, Some(28));
        assert_eq!(c.subnet_min, Some("10.0.0.16".parse().unwrap()));
        assert_eq!(c.subnet_max, Some("10.0.0.48".parse().unwrap()));
        // Upstream: prefix <= 22 gives /24.
        assert_eq!(
            checked(r#"{"Network":"10.0.0.0/22"}"#).unwrap().subnet_len,
            Some(24)
        );
        assert_eq!(
            checked(r#"{"Network":"10.0.0.0/23"}"#).unwrap().subnet_len,
            Some(25)
        );
    }

    #[test]
    fn docs_example_and_backend() {
        let c = checked(
            r#"{"Network":"10.0.0.0/8","SubnetLen":20,"SubnetMin":"10.10.0.0","SubnetMax":"10.99.0.0","Backend":{"Type":"udp","Port":7890}}"#,
        )
        .unwrap();
        assert_eq!(c.subnet_len, Some(20));
        assert_eq!(c.backend_type, "udp");
        assert_eq!(c.backend["Port"], 7890);
    }

    #[test]
    fn keys_case_insensitive() {
        let c = checked(r#"{"network":"10.1.0.0/16","SUBNETLEN":26,"backend":{"type":"host-gw"},"enableipv4":true}"#).unwrap();
        assert_eq!(c.subnet_len, Some(26));
        assert_eq!(c.backend_type, "host-gw");
    }

    #[test]
    fn backend_without_type_defaults_to_vxlan() {
        assert_eq!(
            checked(r#"{"Network":"10.1.0.0/16","Backend":{"VNI":4}}"#)
                .unwrap()
                .backend_type,
            "vxlan"
        );
        assert!(
            err(r#"{"Network":"10.1.0.0/16","Backend":"vxlan"}"#).starts_with("Backend \"vxlan\":")
        );
        assert!(
            err(r#"{"Network":"10.1.0.0/16","Backend":{"Type":1}}"#).starts_with("Backend.Type 1:")
        );
    }

    #[test]
    fn errors_name_key_and_value() {
        assert_eq!(
            err(r#"{"Network":"10.244.0.0/16","SubnetLen":31}"#),
            "SubnetLen 31: must be between 18 and 30 for Network 10.244.0.0/16"
        );
        assert!(err(r#"{"Network":"10.244.0.0/16","SubnetLen":17}"#)
            .starts_with("SubnetLen 17: must be between 18 and 30"));
        assert!(
            err(r#"{"Network":"10.244.0.0/16","SubnetLen":"24"}"#).starts_with("SubnetLen \"24\":")
        );
        assert!(err(r#"{"Network":"10.244.0/16"}"#).starts_with("Network \"10.244.0/16\":"));
        assert!(err(r#"{}"#).starts_with("Network (missing): please define a correct Network"));
        assert!(
            err(r#"{"Network":"10.0.0.0/29"}"#).contains("Minimum useful network prefix is /28")
        );
        assert!(err(r#"{"Network":"10.244.0.0/16","SubnetMin":"10.1.0.0"}"#)
            .starts_with("SubnetMin \"10.1.0.0\": is not in the range of the Network"));
        assert!(
            err(r#"{"Network":"10.244.0.0/16","SubnetMax":"10.244.3.7"}"#)
                .starts_with("SubnetMax \"10.244.3.7\": is not on a SubnetLen (/24) boundary")
        );
        assert!(err(
            r#"{"Network":"10.244.0.0/16","SubnetMin":"10.244.9.0","SubnetMax":"10.244.3.0"}"#
        )
        .starts_with("SubnetMin \"10.244.9.0\": is greater than SubnetMax \"10.244.3.0\""));
        assert!(err(r#"{"Network":"10.244.0.0/16","EnableIPv4":"yes"}"#)
            .starts_with("EnableIPv4 \"yes\":"));
        assert!(err("[1]").starts_with("invalid network config"));
        assert!(err("").starts_with("invalid network config"));
    }

    #[test]
    fn ipv6_defaults_and_errors() {
        let c =
            checked(r#"{"EnableIPv4":false,"EnableIPv6":true,"IPv6Network":"fc00::/48"}"#).unwrap();
        assert_eq!(c.ipv6_subnet_len, Some(64));
        assert_eq!(c.ipv6_subnet_min, Some("fc00:0:0:1::".parse().unwrap()));
        assert_eq!(c.ipv6_subnet_max, Some("fc00:0:0:ffff::".parse().unwrap()));
        assert!(c.pool4().is_none() && c.pool6().is_some());
        let c =
            checked(r#"{"Network":"10.0.0.0/16","EnableIPv6":true,"IPv6Network":"fc00::/120"}"#)
                .unwrap();
        assert_eq!(c.ipv6_subnet_len, Some(122));
        assert!(
            err(r#"{"EnableIPv4":false,"EnableIPv6":true}"#).starts_with("IPv6Network (missing)")
        );
        assert!(
            err(r#"{"EnableIPv4":false,"EnableIPv6":true,"IPv6Network":"fc00::/125"}"#)
                .contains("Minimum useful network prefix is /124")
        );
        assert!(err(r#"{"EnableIPv4":false,"EnableIPv6":true,"IPv6Network":"fc00::/48","IPv6SubnetLen":127}"#)
            .starts_with("IPv6SubnetLen 127: must be between 50 and 126"));
    }

    #[test]
    fn network_host_bits_are_cleared() {
        let c = checked(r#"{"Network":"10.244.7.9/16"}"#).unwrap();
        assert_eq!(c.network, Some("10.244.0.0/16".parse().unwrap()));
    }

    #[test]
    fn whole_v4_space_and_top_of_space() {
        // Network 0.0.0.0/0 counts as "not set" upstream (IP4Net.Empty()).
        assert!(err(r#"{"Network":"0.0.0.0/0"}"#).starts_with("Network \"0.0.0.0/0\""));
        let c = checked(r#"{"Network":"255.255.255.0/24"}"#).unwrap();
        assert_eq!(c.subnet_max, Some("255.255.255.192".parse().unwrap()));
        let c = checked(r#"{"Network":"0.0.0.0/1","SubnetLen":2}"#);
        assert!(c.is_err(), "SubnetLen 2 < 1+2");
    }

    proptest! {
        #[test]
        fn parse_never_panics(s in ".{0,200}") {
            let _ = NetworkConfig::parse_checked(&s);
        }

        #[test]
        fn parse_never_panics_on_json_like(
            net in "[0-9./:a-f]{0,20}", len in proptest::option::of(0u64..200),
            min in "[0-9.]{0,16}", backend in "(null|\"x\"|\\{\\}|\\{\"Type\":1\\}|\\[\\])"
        ) {
            let mut s = format!(r#"{{"Network":"{net}","SubnetMin":"{min}","Backend":{backend}"#);
            if let Some(l) = len { s.push_str(&format!(r#","SubnetLen":{l}"#)); }
            s.push('}');
            let _ = NetworkConfig::parse_checked(&s);
        }

        #[test]
        fn defaults_inside_network_and_aligned(addr in any::<u32>(), prefix in 1u8..=28) {
            let net = Ipv4Net::new(Ipv4Addr::from(addr), prefix).unwrap().trunc();
            let cfg = NetworkConfig::parse_checked(&format!(r#"{{"Network":"{net}"}}"#));
            prop_assert!(cfg.is_ok(), "{:?}", cfg);
            if let Ok(cfg) = cfg {
                let p = cfg.pool4().unwrap();
                prop_assert!(p.min <= p.max);
                prop_assert!(net.contains(&p.min) && net.contains(&p.max));
                let mask = (1u32 << (32 - p.subnet_len)) - 1;
                prop_assert_eq!(u32::from(p.min) & mask, 0);
                prop_assert_eq!(u32::from(p.max) & mask, 0);
                prop_assert!(p.subnet_len >= prefix + 2 && p.subnet_len <= 30);
            }
        }

        #[test]
        fn v6_defaults_inside_network_and_aligned(addr in any::<u128>(), prefix in 1u8..=124) {
            let net = Ipv6Net::new(Ipv6Addr::from(addr), prefix).unwrap().trunc();
            let cfg = NetworkConfig::parse_checked(
                &format!(r#"{{"EnableIPv4":false,"EnableIPv6":true,"IPv6Network":"{net}"}}"#));
            if let Ok(cfg) = cfg {
                let p = cfg.pool6().unwrap();
                prop_assert!(p.min <= p.max);
                prop_assert!(net.contains(&p.min) && net.contains(&p.max));
                let mask = (1u128 << (128 - p.subnet_len)) - 1;
                prop_assert_eq!(u128::from(p.min) & mask, 0);
                prop_assert_eq!(u128::from(p.max) & mask, 0);
            } else {
                prop_assert!(false, "{:?}", cfg);
            }
        }
    }
}
