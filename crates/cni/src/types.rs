//! Network configuration and result types, with conversion between spec versions.
//!
//! Results are held in one model (the 1.1.0 shape, a superset of the older ones) and rendered in the shape of the
//! version a caller asked for. Unknown configuration keys are kept so delegates and chained plugins see them.

use crate::error::CniError;
use crate::version;
use ipnet::IpNet;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use std::net::IpAddr;

/// The parts of a plugin configuration every plugin reads; all other keys stay in `extra`.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct NetConf {
    /// Spec version of this configuration.
    #[serde(rename = "cniVersion", default)]
    pub cni_version: String,
    /// Network name.
    #[serde(default)]
    pub name: String,
    /// Plugin type (binary name).
    #[serde(rename = "type", default)]
    pub plugin_type: String,
    /// The IPAM block, kept raw so each IPAM plugin parses its own keys.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ipam: Option<Value>,
    /// DNS settings from the config.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dns: Option<Dns>,
    /// The previous plugin's result in a chain (raw, in the config's version).
    #[serde(
        rename = "prevResult",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub prev_result: Option<Value>,
    /// Runtime-provided capability arguments.
    #[serde(
        rename = "runtimeConfig",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub runtime_config: Option<Value>,
    /// Namespaced arguments (`args.cni.*`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub args: Option<Value>,
    /// Every other key, preserved in order.
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

impl NetConf {
    /// Parses a plugin configuration from stdin bytes (code 6 on bad JSON).
    pub fn parse(bytes: &[u8]) -> Result<Self, CniError> {
        let v: Value = serde_json::from_slice(bytes)
            .map_err(|e| CniError::decode(format!("failed to parse network configuration: {e}")))?;
        if !v.is_object() {
            return Err(CniError::decode(
                "network configuration is not a JSON object",
            ));
        }
        serde_json::from_value(v)
            .map_err(|e| CniError::decode(format!("failed to parse network configuration: {e}")))
    }

    /// The effective spec version (the spec treats a missing version as 0.1.0).
    pub fn version(&self) -> &str {
        if self.cni_version.is_empty() {
            "0.1.0"
        } else {
            &self.cni_version
        }
    }

    /// Parses `prevResult` if present.
    pub fn prev(&self) -> Result<Option<CniResult>, CniError> {
        match &self.prev_result {
            None | Some(Value::Null) => Ok(None),
            Some(v) => CniResult::from_value(v, self.version()).map(Some),
        }
    }
}

/// DNS settings, shared by config and result.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Dns {
    /// Name servers.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub nameservers: Vec<String>,
    /// Local domain.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub domain: String,
    /// Search domains.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub search: Vec<String>,
    /// Resolver options.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub options: Vec<String>,
}

impl Dns {
    /// Whether nothing is set.
    pub fn is_empty(&self) -> bool {
        self.nameservers.is_empty()
            && self.domain.is_empty()
            && self.search.is_empty()
            && self.options.is_empty()
    }
}

/// An interface in a result.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Interface {
    /// Interface name.
    pub name: String,
    /// MAC address, when it has one.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub mac: String,
    /// MTU (1.1.0).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mtu: Option<u32>,
    /// Netns path for interfaces in the container, empty for host interfaces.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub sandbox: String,
    /// vhost-user socket path (1.1.0).
    #[serde(
        rename = "socketPath",
        default,
        skip_serializing_if = "String::is_empty"
    )]
    pub socket_path: String,
    /// PCI ID (1.1.0).
    #[serde(rename = "pciID", default, skip_serializing_if = "String::is_empty")]
    pub pci_id: String,
}

/// An address in a result.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct IpConfig {
    /// Address with prefix, host bits kept (`10.244.1.5/24`).
    pub address: IpNet,
    /// Gateway.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gateway: Option<IpAddr>,
    /// Index into `interfaces`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub interface: Option<usize>,
}

/// A route in a result or an IPAM config.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Route {
    /// Destination.
    pub dst: IpNet,
    /// Next hop; absent means "the gateway of the interface".
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gw: Option<IpAddr>,
    /// Route MTU (1.1.0).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mtu: Option<u32>,
    /// Advertised MSS (1.1.0).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub advmss: Option<u32>,
    /// Metric (1.1.0).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub priority: Option<u32>,
    /// Routing table (1.1.0).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub table: Option<u32>,
    /// Scope (1.1.0): 0 global, 253 link, 254 host.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scope: Option<u8>,
}

impl Route {
    /// A route with only a destination and an optional gateway.
    pub fn new(dst: IpNet, gw: Option<IpAddr>) -> Self {
        Self {
            dst,
            gw,
            mtu: None,
            advmss: None,
            priority: None,
            table: None,
            scope: None,
        }
    }
}

/// A result in the 1.1.0 model.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CniResult {
    /// Spec version the result is to be rendered in.
    pub cni_version: String,
    /// Interfaces.
    pub interfaces: Vec<Interface>,
    /// Addresses.
    pub ips: Vec<IpConfig>,
    /// Routes.
    pub routes: Vec<Route>,
    /// DNS.
    pub dns: Dns,
}

#[derive(Deserialize)]
struct Legacy02Ip {
    ip: IpNet,
    #[serde(default)]
    gateway: Option<IpAddr>,
    #[serde(default)]
    routes: Vec<Route>,
}

#[derive(Deserialize)]
struct Legacy02 {
    #[serde(default)]
    ip4: Option<Legacy02Ip>,
    #[serde(default)]
    ip6: Option<Legacy02Ip>,
    #[serde(default)]
    dns: Dns,
}

#[derive(Deserialize)]
struct Current {
    #[serde(default)]
    interfaces: Vec<Interface>,
    #[serde(default)]
    ips: Vec<IpConfig>,
    #[serde(default)]
    routes: Vec<Route>,
    #[serde(default)]
    dns: Dns,
}

impl CniResult {
    /// Parses a result in any supported version; `default_version` applies when the JSON carries none.
    pub fn from_value(v: &Value, default_version: &str) -> Result<Self, CniError> {
        let ver = v
            .get("cniVersion")
            .and_then(Value::as_str)
            .filter(|s| !s.is_empty())
            .unwrap_or(default_version)
            .to_string();
        let bad = |e: serde_json::Error| CniError::decode(format!("failed to parse result: {e}"));
        if !version::at_least(&ver, "0.3.0") {
            let l: Legacy02 = serde_json::from_value(v.clone()).map_err(bad)?;
            let mut r = CniResult {
                cni_version: ver,
                dns: l.dns,
                ..Default::default()
            };
            for ip in [l.ip4, l.ip6].into_iter().flatten() {
                r.ips.push(IpConfig {
                    address: ip.ip,
                    gateway: ip.gateway,
                    interface: None,
                });
                r.routes.extend(ip.routes);
            }
            return Ok(r);
        }
        let c: Current = serde_json::from_value(v.clone()).map_err(bad)?;
        for ip in &c.ips {
            if let Some(i) = ip.interface {
                if i >= c.interfaces.len() {
                    return Err(CniError::decode(format!(
                        "result ip {} names interface {i} but there are {} interfaces",
                        ip.address,
                        c.interfaces.len()
                    )));
                }
            }
        }
        Ok(CniResult {
            cni_version: ver,
            interfaces: c.interfaces,
            ips: c.ips,
            routes: c.routes,
            dns: c.dns,
        })
    }

    /// Renders the result in the shape of spec version `ver`.
    pub fn to_value(&self, ver: &str) -> Value {
        let mut out = Map::new();
        out.insert("cniVersion".into(), Value::String(ver.to_string()));
        let v11 = version::at_least(ver, "1.1.0");
        if !version::at_least(ver, "0.3.0") {
            for (key, want_v4) in [("ip4", true), ("ip6", false)] {
                if let Some(ip) = self
                    .ips
                    .iter()
                    .find(|i| i.address.addr().is_ipv4() == want_v4)
                {
                    let mut o = Map::new();
                    o.insert("ip".into(), Value::String(ip.address.to_string()));
                    if let Some(g) = ip.gateway {
                        o.insert("gateway".into(), Value::String(g.to_string()));
                    }
                    let routes: Vec<Value> = self
                        .routes
                        .iter()
                        .filter(|r| r.dst.addr().is_ipv4() == want_v4)
                        .map(|r| route_value(r, false))
                        .collect();
                    if !routes.is_empty() {
                        o.insert("routes".into(), Value::Array(routes));
                    }
                    out.insert(key.into(), Value::Object(o));
                }
            }
        } else {
            let versioned = !version::at_least(ver, "1.0.0");
            if !self.interfaces.is_empty() {
                let ifs = self
                    .interfaces
                    .iter()
                    .map(|i| {
                        let mut i = i.clone();
                        if !v11 {
                            i.mtu = None;
                            i.socket_path.clear();
                            i.pci_id.clear();
                        }
                        serde_json::to_value(i).unwrap_or(Value::Null)
                    })
                    .collect();
                out.insert("interfaces".into(), Value::Array(ifs));
            }
            if !self.ips.is_empty() {
                let ips = self
                    .ips
                    .iter()
                    .map(|ip| {
                        let mut o = Map::new();
                        if versioned {
                            let fam = if ip.address.addr().is_ipv4() {
                                "4"
                            } else {
                                "6"
                            };
                            o.insert("version".into(), Value::String(fam.into()));
                        }
                        if let Some(i) = ip.interface {
                            o.insert("interface".into(), Value::from(i));
                        }
                        o.insert("address".into(), Value::String(ip.address.to_string()));
                        if let Some(g) = ip.gateway {
                            o.insert("gateway".into(), Value::String(g.to_string()));
                        }
                        Value::Object(o)
                    })
                    .collect();
                out.insert("ips".into(), Value::Array(ips));
            }
            if !self.routes.is_empty() {
                let rs = self.routes.iter().map(|r| route_value(r, v11)).collect();
                out.insert("routes".into(), Value::Array(rs));
            }
        }
        if !self.dns.is_empty() {
            out.insert(
                "dns".into(),
                serde_json::to_value(&self.dns).unwrap_or(Value::Null),
            );
        } else if version::at_least(ver, "0.3.0") {
            out.insert("dns".into(), Value::Object(Map::new()));
        }
        Value::Object(out)
    }
}

fn route_value(r: &Route, v11: bool) -> Value {
    let mut r = r.clone();
    if !v11 {
        r.mtu = None;
        r.advmss = None;
        r.priority = None;
        r.table = None;
        r.scope = None;
    }
    serde_json::to_value(r).unwrap_or(Value::Null)
}

/// One attachment named in `cni.dev/valid-attachments` for GC.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Deserialize, Serialize)]
pub struct Attachment {
    /// Container ID.
    #[serde(rename = "containerID")]
    pub container_id: String,
    /// Interface name.
    pub ifname: String,
}

impl NetConf {
    /// The valid attachments sent with GC (`cni.dev/valid-attachments`, or the older `cni.dev/attachments`).
    pub fn valid_attachments(&self) -> Result<Vec<Attachment>, CniError> {
        let v = self
            .extra
            .get("cni.dev/valid-attachments")
            .or_else(|| self.extra.get("cni.dev/attachments"));
        match v {
            None | Some(Value::Null) => Ok(Vec::new()),
            Some(v) => serde_json::from_value(v.clone())
                .map_err(|e| CniError::decode(format!("invalid cni.dev/valid-attachments: {e}"))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use serde_json::json;

    fn sample() -> CniResult {
        CniResult {
            cni_version: "1.1.0".into(),
            interfaces: vec![
                Interface {
                    name: "cni0".into(),
                    mac: "0a:58:0a:f4:01:01".into(),
                    ..Default::default()
                },
                Interface {
                    name: "eth0".into(),
                    mac: "0a:58:0a:f4:01:02".into(),
                    mtu: Some(1450),
                    sandbox: "/run/netns/x".into(),
                    ..Default::default()
                },
            ],
            ips: vec![IpConfig {
                address: "10.244.1.2/24".parse().unwrap(),
                gateway: Some("10.244.1.1".parse().unwrap()),
                interface: Some(1),
            }],
            routes: vec![Route::new("10.244.0.0/16".parse().unwrap(), None)],
            dns: Dns::default(),
        }
    }

    #[test]
    fn renders_each_version_shape() {
        let r = sample();
        let v04 = r.to_value("0.4.0");
        assert_eq!(v04["ips"][0]["version"], "4");
        assert!(v04["interfaces"][1].get("mtu").is_none());
        let v10 = r.to_value("1.0.0");
        assert!(v10["ips"][0].get("version").is_none());
        let v11 = r.to_value("1.1.0");
        assert_eq!(v11["interfaces"][1]["mtu"], 1450);
        let v02 = r.to_value("0.2.0");
        assert_eq!(v02["ip4"]["ip"], "10.244.1.2/24");
        assert_eq!(v02["ip4"]["routes"][0]["dst"], "10.244.0.0/16");
        assert!(v02.get("ips").is_none());
    }

    #[test]
    fn parses_legacy() {
        let v = json!({"cniVersion":"0.2.0","ip4":{"ip":"10.1.0.5/24","gateway":"10.1.0.1",
            "routes":[{"dst":"0.0.0.0/0"}]},"dns":{"nameservers":["1.1.1.1"]}});
        let r = CniResult::from_value(&v, "0.2.0").unwrap();
        assert_eq!(r.ips.len(), 1);
        assert_eq!(r.routes.len(), 1);
        assert_eq!(r.dns.nameservers, vec!["1.1.1.1"]);
    }

    #[test]
    fn rejects_bad_interface_index() {
        let v = json!({"cniVersion":"1.0.0","interfaces":[],"ips":[{"address":"10.0.0.2/24","interface":3}]});
        assert_eq!(CniResult::from_value(&v, "1.0.0").unwrap_err().code, 6);
    }

    #[test]
    fn netconf_keeps_unknown_keys() {
        let c = NetConf::parse(
            br#"{"cniVersion":"0.3.1","name":"n","type":"bridge","hairpinMode":true,"x":{"y":1}}"#,
        )
        .unwrap();
        assert_eq!(c.extra["hairpinMode"], true);
        let back = serde_json::to_value(&c).unwrap();
        assert_eq!(back["x"]["y"], 1);
        assert_eq!(back["type"], "bridge");
    }

    #[test]
    fn netconf_rejects_non_object() {
        assert_eq!(NetConf::parse(b"[1]").unwrap_err().code, 6);
        assert_eq!(NetConf::parse(b"{").unwrap_err().code, 6);
    }

    fn arb_ip() -> impl Strategy<Value = IpConfig> {
        prop_oneof![
            (any::<[u8; 4]>(), 8u8..=32).prop_map(|(a, p)| IpConfig {
                address: IpNet::new(IpAddr::from(a), p).unwrap(),
                gateway: None,
                interface: Some(0),
            }),
            (any::<[u8; 16]>(), 8u8..=128).prop_map(|(a, p)| IpConfig {
                address: IpNet::new(IpAddr::from(a), p).unwrap(),
                gateway: Some(IpAddr::from(a)),
                interface: Some(0),
            }),
        ]
    }

    proptest! {
        /// Rendering in any 0.3+ version and parsing back keeps addresses, gateways and routes.
        #[test]
        fn roundtrip_versions(ips in proptest::collection::vec(arb_ip(), 0..4),
                              ver in prop::sample::select(vec!["0.3.0","0.3.1","0.4.0","1.0.0","1.1.0"])) {
            let r = CniResult {
                cni_version: ver.to_string(),
                interfaces: vec![Interface { name: "eth0".into(), ..Default::default() }],
                ips,
                routes: vec![Route::new("0.0.0.0/0".parse().unwrap(), None)],
                dns: Dns::default(),
            };
            let back = CniResult::from_value(&r.to_value(ver), ver).unwrap();
            prop_assert_eq!(back, r);
        }

        /// Any JSON value fed as a result parses or errors, never panics.
        #[test]
        fn result_parse_never_panics(s in ".{0,200}") {
            if let Ok(v) = serde_json::from_str::<Value>(&s) {
                let _ = CniResult::from_value(&v, "1.0.0");
            }
            let _ = NetConf::parse(s.as_bytes());
        }
    }
}
