//! The `static` IPAM plugin: hands out exactly the addresses it is given, drop-in for the reference
//! (`plugins/ipam/static`). Nothing is stored, so DEL has nothing to release.
//!
//! Where the addresses come from, in the reference's order (a later source replacing the earlier ones):
//! `ipam.addresses` (each `address` with prefix and an optional `gateway`), to which `CNI_ARGS` `IP=` (a
//! comma-separated list of addresses with prefix) appends, `GATEWAY=` (a comma-separated list) setting the gateway
//! of each `IP=` address whose subnet holds it; then `args.cni.ips`, when not empty, replaces them all; then
//! `runtimeConfig.ips`, when not empty, replaces them all again (the last two without gateways). `ipam.routes`
//! and `ipam.dns` are copied into the result. Spec versions before 0.3.0 allow one address per family.
//!
//! Codes: the reference answers every refusal with 999; ours are the spec's (7 an invalid value, 6 a value of
//! the wrong JSON type, 2 an unknown `CNI_ARGS` key, 4 a bad `CNI_ARGS` value).

use crate::args::CniArgs;
use crate::error::CniError;
use crate::plugin::Plugin;
use crate::skel::CmdArgs;
use crate::types::{CniResult, Dns, IpConfig, NetConf, Route};
use crate::version;
use ipnet::IpNet;
use serde::Deserialize;
use serde_json::Value;
use std::net::IpAddr;

/// static's row of the plugin table: every verb synchronous, no GC or STATUS (the reference has neither).
pub const PLUGIN: Plugin = Plugin {
    name: "static",
    versions: crate::version::SUPPORTED,
    add: |_, args, conf| Box::pin(std::future::ready(cmd_add(args, conf).map(Some))),
    del: |_, _, _| Box::pin(std::future::ready(Ok(None))),
    check: |_, args, conf| Box::pin(std::future::ready(cmd_check(args, conf).map(|()| None))),
    gc: None,
    status: None,
};

/// The `ipam` block as written.
#[derive(Debug, Deserialize)]
struct RawIpam {
    #[serde(default)]
    addresses: Option<Vec<RawAddress>>,
    #[serde(default)]
    routes: Option<Vec<Route>>,
    #[serde(default)]
    dns: Option<Dns>,
}

#[derive(Debug, Deserialize)]
struct RawAddress {
    #[serde(default)]
    address: Option<String>,
    #[serde(default)]
    gateway: Option<String>,
}

/// The `ips` list of `runtimeConfig` or `args.cni`.
#[derive(Debug, Default, Deserialize)]
struct Ips {
    #[serde(default)]
    ips: Option<Vec<String>>,
}

/// What an ADD hands out.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct StaticConf {
    /// Addresses with their gateways, in result order.
    pub ips: Vec<IpConfig>,
    /// Routes, as configured.
    pub routes: Vec<Route>,
    /// DNS, as configured.
    pub dns: Dns,
}

fn decode(what: &str, e: serde_json::Error) -> CniError {
    CniError::decode(format!("static: invalid {what}: {e}"))
}

/// An address with prefix as Go's `net.ParseCIDR` reads one: an IPv4-mapped IPv6 address with a prefix of at
/// least 96 is the IPv4 address (the reference prints it so).
pub fn parse_cidr(s: &str) -> Option<IpNet> {
    let n: IpNet = s.parse().ok()?;
    if let IpNet::V6(v6) = n {
        if let Some(v4) = v6.addr().to_ipv4_mapped() {
            if v6.prefix_len() >= 96 {
                return IpNet::new(IpAddr::V4(v4), v6.prefix_len() - 96).ok();
            }
        }
    }
    Some(n)
}

/// An address as Go's `net.ParseIP` reads one (IPv4-mapped IPv6 is the IPv4 address).
fn parse_ip(s: &str) -> Option<IpAddr> {
    let ip: IpAddr = s.parse().ok()?;
    Some(ip.to_canonical())
}

fn ips_of(v: Option<&Value>, what: &str) -> Result<Vec<String>, CniError> {
    match v {
        None | Some(Value::Null) => Ok(Vec::new()),
        Some(v) => {
            let i: Ips = serde_json::from_value(v.clone()).map_err(|e| decode(what, e))?;
            Ok(i.ips.unwrap_or_default())
        }
    }
}

fn replace_with(list: &[String]) -> Result<Vec<IpConfig>, CniError> {
    list.iter()
        .map(|s| {
            parse_cidr(s)
                .map(|address| IpConfig {
                    address,
                    gateway: None,
                    interface: None,
                })
                .ok_or_else(|| {
                    CniError::config(format!(
                        "an entry in the 'ips' field is NOT in CIDR notation, got: '{s}'"
                    ))
                })
        })
        .collect()
}

impl StaticConf {
    /// Parses and validates the configuration with `CNI_ARGS` `cni_args`, applying the sources in the
    /// reference's order (see the module documentation).
    pub fn load(conf: &NetConf, cni_args: &str) -> Result<Self, CniError> {
        let raw = match &conf.ipam {
            None | Some(Value::Null) => {
                return Err(CniError::config("IPAM config missing 'ipam' key"))
            }
            Some(v) => {
                // serde would read a struct from a JSON array too; Go's decoder refuses that.
                if let Some(d) = v.get("dns").filter(|d| !d.is_object() && !d.is_null()) {
                    return Err(CniError::decode(format!(
                        "static: invalid ipam.dns: expected an object, got {d}"
                    )));
                }
                serde_json::from_value::<RawIpam>(v.clone()).map_err(|e| decode("ipam", e))?
            }
        };
        let mut ips = Vec::new();
        for a in raw.addresses.unwrap_or_default() {
            let s = a.address.unwrap_or_default();
            let address = parse_cidr(&s).ok_or_else(|| {
                CniError::config(format!(
                    "the 'address' field is expected to be in CIDR notation, got: '{s}'"
                ))
            })?;
            // An empty gateway is none, as Go's JSON decoding of an IP has it.
            let gateway = match a.gateway.as_deref() {
                None | Some("") => None,
                Some(g) => Some(
                    parse_ip(g)
                        .ok_or_else(|| CniError::config(format!("invalid IP address: {g}")))?,
                ),
            };
            ips.push(IpConfig {
                address,
                gateway,
                interface: None,
            });
        }

        let env = CniArgs::parse(cni_args, &["IP", "GATEWAY"])?;
        // GATEWAY= applies to the IP= addresses only: the reference matches it before it has parsed the
        // configured ones.
        let from_env = ips.len();
        if let Some(list) = env.get("IP").filter(|s| !s.is_empty()) {
            for item in list.split(',') {
                let s = item.trim();
                let address = parse_cidr(s).ok_or_else(|| {
                    CniError::env(format!(
                        "the 'ip' field is expected to be in CIDR notation, got: '{s}'"
                    ))
                })?;
                ips.push(IpConfig {
                    address,
                    gateway: None,
                    interface: None,
                });
            }
        }
        if let Some(list) = env.get("GATEWAY").filter(|s| !s.is_empty()) {
            for item in list.split(',') {
                let gw = parse_ip(item.trim())
                    .ok_or_else(|| CniError::env(format!("invalid gateway address: {item}")))?;
                for ip in ips.iter_mut().skip(from_env) {
                    if ip.address.contains(&gw) {
                        ip.gateway = Some(gw);
                    }
                }
            }
        }

        let args_cni = match &conf.args {
            None | Some(Value::Null) => None,
            Some(Value::Object(m)) => m.get("cni"),
            Some(v) => return Err(CniError::decode(format!("static: invalid args: {v}"))),
        };
        let from_args = ips_of(args_cni, "args.cni")?;
        if !from_args.is_empty() {
            ips = replace_with(&from_args)?;
        }
        let from_runtime = ips_of(conf.runtime_config.as_ref(), "runtimeConfig")?;
        if !from_runtime.is_empty() {
            ips = replace_with(&from_runtime)?;
        }

        let v4 = ips.iter().filter(|i| i.address.addr().is_ipv4()).count();
        let v6 = ips.len() - v4;
        if (v4 > 1 || v6 > 1) && !version::at_least(conf.version(), "0.3.0") {
            return Err(CniError::config(format!(
                "CNI version {} does not support more than 1 address per family",
                conf.cni_version
            )));
        }
        Ok(Self {
            ips,
            routes: raw.routes.unwrap_or_default(),
            dns: raw.dns.unwrap_or_default(),
        })
    }
}

fn cmd_add(args: &CmdArgs, conf: &NetConf) -> Result<CniResult, CniError> {
    let c = StaticConf::load(conf, &args.args)?;
    if c.ips.is_empty() && !version::at_least(conf.version(), "0.3.0") {
        // A 0.2.0 result is its ip4/ip6 objects: the reference cannot render one without.
        return Err(CniError::config("cannot convert: no valid IP addresses"));
    }
    Ok(CniResult {
        cni_version: conf.version().to_string(),
        interfaces: Vec::new(),
        ips: c.ips,
        routes: c.routes,
        dns: c.dns,
    })
}

/// CHECK: the configuration is valid, and each configured address that the previous result holds has the
/// configured gateway there (an address the result lacks is not checked, as in the reference).
fn cmd_check(args: &CmdArgs, conf: &NetConf) -> Result<(), CniError> {
    let c = StaticConf::load(conf, &args.args)?;
    let prev = conf
        .prev()?
        .ok_or_else(|| CniError::config("Required prevResult missing"))?;
    for want in &c.ips {
        if let Some(got) = prev
            .ips
            .iter()
            .find(|p| p.address.addr() == want.address.addr())
        {
            if want.gateway.is_some() && want.gateway != got.gateway {
                return Err(CniError::internal(format!(
                    "static: Failed to match addr {} on interface {}",
                    got.address.addr(),
                    args.ifname
                )));
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use serde_json::json;

    fn load(v: Value, cni_args: &str) -> Result<StaticConf, CniError> {
        let nc = NetConf::parse(v.to_string().as_bytes())?;
        StaticConf::load(&nc, cni_args)
    }

    fn addrs(c: &StaticConf) -> Vec<String> {
        c.ips
            .iter()
            .map(|i| match i.gateway {
                Some(g) => format!("{} gw {g}", i.address),
                None => i.address.to_string(),
            })
            .collect()
    }

    fn conf(ipam: Value) -> Value {
        json!({"cniVersion": "1.0.0", "name": "n", "type": "bridge", "ipam": ipam})
    }

    #[test]
    fn addresses_then_cni_args() {
        let c = load(
            conf(json!({"type": "static", "addresses": [
                {"address": "10.0.0.3/24", "gateway": "10.0.0.1"}, {"address": "2001:db8::3/64", "gateway": ""}],
                "routes": [{"dst": "0.0.0.0/0"}], "dns": {"nameservers": ["10.0.0.53"]}})),
            "IP= 10.0.1.1/24 , 2001:db8:1::1/64;GATEWAY=10.0.1.254, 2001:db8:1::ff,10.0.0.2",
        )
        .unwrap();
        assert_eq!(
            addrs(&c),
            [
                "10.0.0.3/24 gw 10.0.0.1",
                "2001:db8::3/64",
                "10.0.1.1/24 gw 10.0.1.254",
                "2001:db8:1::1/64 gw 2001:db8:1::ff"
            ]
        );
        assert_eq!(c.routes.len(), 1);
        assert_eq!(c.dns.nameservers, ["10.0.0.53"]);
    }

    #[test]
    fn runtime_config_beats_args_beats_the_rest() {
        let mut v = conf(
            json!({"type": "static", "addresses": [{"address": "10.0.0.3/24", "gateway": "10.0.0.1"}]}),
        );
        v["args"] = json!({"cni": {"ips": ["10.8.0.1/16"]}});
        assert_eq!(
            addrs(&load(v.clone(), "IP=10.0.1.1/24").unwrap()),
            ["10.8.0.1/16"]
        );
        v["runtimeConfig"] = json!({"ips": ["10.9.0.1/16", "2001:db8::9/64"]});
        assert_eq!(
            addrs(&load(v.clone(), "").unwrap()),
            ["10.9.0.1/16", "2001:db8::9/64"]
        );
        // Empty lists replace nothing.
        v["runtimeConfig"] = json!({"ips": []});
        v["args"] = json!({"cni": {"ips": []}});
        assert_eq!(addrs(&load(v, "").unwrap()), ["10.0.0.3/24 gw 10.0.0.1"]);
    }

    #[test]
    fn refusals() {
        let code = |v: Value, a: &str| match load(v.clone(), a) {
            Ok(c) => panic!("{v} {a}: accepted as {c:?}"),
            Err(e) => e.code,
        };
        let mut no_ipam = conf(Value::Null);
        no_ipam.as_object_mut().unwrap().remove("ipam");
        assert_eq!(code(no_ipam, ""), 7);
        assert_eq!(code(conf(Value::Null), ""), 7);
        assert_eq!(
            code(conf(json!({"addresses": [{"address": "10.0.0.5"}]})), ""),
            7
        );
        assert_eq!(code(conf(json!({"addresses": [{}]})), ""), 7);
        assert_eq!(
            code(
                conf(json!({"addresses": [{"address": "10.0.0.5/24", "gateway": "x"}]})),
                ""
            ),
            7
        );
        assert_eq!(code(conf(json!({"addresses": {}})), ""), 6);
        assert_eq!(code(conf(json!({"dns": []})), ""), 6);
        assert_eq!(code(conf(json!({"routes": [{"dst": "0.0.0.0"}]})), ""), 6);
        assert_eq!(code(conf(json!({})), "IP=10.0.1.5"), 4);
        assert_eq!(code(conf(json!({})), "GATEWAY=zz"), 4);
        assert_eq!(code(conf(json!({})), "FOO=1"), 2);
        assert_eq!(code(conf(json!({})), "garbage"), 4);
        let mut rc = conf(json!({}));
        rc["runtimeConfig"] = json!({"ips": ["10.1.1.1"]});
        assert_eq!(code(rc.clone(), ""), 7);
        rc["runtimeConfig"] = json!({"ips": "10.1.1.1/8"});
        assert_eq!(code(rc, ""), 6);
        let old = json!({"cniVersion": "0.2.0", "name": "n", "type": "bridge",
            "ipam": {"addresses": [{"address": "10.0.0.5/24"}, {"address": "10.0.1.5/24"}]}});
        assert_eq!(code(old, ""), 7);
        let old = json!({"cniVersion": "0.2.0", "name": "n", "type": "bridge",
            "ipam": {"addresses": [{"address": "10.0.0.5/24"}, {"address": "2001:db8::1/64"}]}});
        assert!(load(old, "").is_ok());
    }

    #[test]
    fn v4_mapped_is_v4() {
        assert_eq!(
            parse_cidr("::ffff:10.0.0.1/120").map(|n| n.to_string()),
            Some("10.0.0.1/24".to_string())
        );
        assert_eq!(
            parse_ip("::ffff:10.0.0.1"),
            Some("10.0.0.1".parse().unwrap())
        );
    }

    proptest! {
        #[test]
        fn never_panics(addr in ".{0,40}", gw in ".{0,20}", env in ".{0,60}", ip in ".{0,30}") {
            let v = json!({"cniVersion": "0.3.1", "name": "n", "type": "bridge",
                "ipam": {"addresses": [{"address": addr, "gateway": gw}]},
                "runtimeConfig": {"ips": [ip]}});
            let _ = load(v, &env);
        }

        #[test]
        fn cidrs_round_trip(a in any::<[u8; 4]>(), p in 0u8..=32) {
            let s = format!("{}.{}.{}.{}/{p}", a[0], a[1], a[2], a[3]);
            prop_assert_eq!(parse_cidr(&s).map(|n| n.to_string()), Some(s));
        }
    }
}
