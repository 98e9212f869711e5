//! The host-local configuration: parsing, defaults and validation, and `resolvConf` parsing.

use super::range::{canonical_ip, RangeSet, RangeSpec};
use super::Error;
use crate::args::CniArgs;
use crate::types::{Dns, NetConf, Route};
use crate::version;
use ipnet::IpNet;
use serde_json::{Map, Value};
use std::net::IpAddr;
use std::path::PathBuf;

/// Where allocations are stored when `ipam.dataDir` is not set.
pub const DEFAULT_DATA_DIR: &str = "/var/lib/cni/networks";

/// Where a network's allocations live: all that DEL, GC and STATUS need.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StorageConf {
    /// `<dataDir>/<network name>`.
    pub dir: PathBuf,
}

impl StorageConf {
    /// Reads `ipam.dataDir` and the network name only, so that releasing never depends on the ranges.
    pub fn load(conf: &NetConf) -> Result<Self, Error> {
        Self::from_ipam(conf, ipam_obj(conf)?)
    }

    fn from_ipam(conf: &NetConf, ipam: &Map<String, Value>) -> Result<Self, Error> {
        let data_dir = opt_str(ipam, "dataDir", "ipam.dataDir")?
            .filter(|s| !s.is_empty())
            .unwrap_or(DEFAULT_DATA_DIR);
        Ok(Self {
            dir: PathBuf::from(data_dir).join(&conf.name),
        })
    }
}

/// The full configuration an ADD (or CHECK) works from, canonicalised.
#[derive(Debug, Clone)]
pub struct IpamConf {
    /// Storage location.
    pub storage: StorageConf,
    /// Range sets in allocation order: `runtimeConfig.ipRanges`, then the legacy top-level range, then `ranges`.
    pub ranges: Vec<RangeSet>,
    /// Routes copied into the result.
    pub routes: Vec<Route>,
    /// `resolvConf` path, if any.
    pub resolv_conf: Option<PathBuf>,
    /// Requested addresses (`CNI_ARGS IP=`, `args.cni.ips`, `runtimeConfig.ips`), deduplicated, in that order.
    pub requested: Vec<IpAddr>,
}

impl IpamConf {
    /// Parses and validates the configuration; `cni_args` is the raw `CNI_ARGS`.
    pub fn load(conf: &NetConf, cni_args: &str) -> Result<Self, Error> {
        let ipam = ipam_obj(conf)?;
        let storage = StorageConf::from_ipam(conf, ipam)?;
        let runtime = match &conf.runtime_config {
            None | Some(Value::Null) => None,
            Some(Value::Object(m)) => Some(m),
            Some(v) => {
                return Err(Error::Decode(format!(
                    "runtimeConfig: expected an object, got {}",
                    show(v)
                )))
            }
        };

        let mut requested: Vec<IpAddr> = Vec::new();
        let mut want = |ip: IpAddr| {
            let ip = canonical_ip(ip);
            if !requested.contains(&ip) {
                requested.push(ip);
            }
        };
        let env = CniArgs::parse(cni_args, &["IP"]).map_err(Error::Cni)?;
        if let Some(list) = env.get("IP").filter(|s| !s.is_empty()) {
            for item in list.split(',') {
                let s = item.trim();
                let ip = parse_ip_or_cidr(s).ok_or_else(|| {
                    Error::Env(format!("CNI_ARGS: IP \"{s}\" is not an IP address"))
                })?;
                want(ip);
            }
        }
        let cni_args_obj = match &conf.args {
            None | Some(Value::Null) => None,
            Some(Value::Object(m)) => field(m, "cni"),
            Some(v) => {
                return Err(Error::Decode(format!(
                    "args: expected an object, got {}",
                    show(v)
                )))
            }
        };
        match cni_args_obj {
            None => {}
            Some(Value::Object(m)) => {
                for ip in ip_list(field(m, "ips"), "args.cni.ips")? {
                    want(ip);
                }
            }
            Some(v) => {
                return Err(Error::Decode(format!(
                    "args.cni: expected an object, got {}",
                    show(v)
                )))
            }
        }
        if let Some(rc) = runtime {
            for ip in ip_list(field(rc, "ips"), "runtimeConfig.ips")? {
                want(ip);
            }
        }

        let mut specs: Vec<Vec<(RangeSpec, String)>> = Vec::new();
        if let Some(v) = runtime.and_then(|rc| field(rc, "ipRanges")) {
            for (i, set) in array(v, "runtimeConfig.ipRanges")?.iter().enumerate() {
                specs.push(range_set(set, &format!("runtimeConfig.ipRanges[{i}]"))?);
            }
        }
        // The legacy single range counts only when it names a subnet, as in the reference plugin.
        if field(ipam, "subnet").is_some() {
            specs.push(vec![(range(ipam, "ipam")?, "ipam".to_string())]);
        }
        if let Some(v) = field(ipam, "ranges") {
            for (i, set) in array(v, "ipam.ranges")?.iter().enumerate() {
                specs.push(range_set(set, &format!("ipam.ranges[{i}]"))?);
            }
        }
        if specs.is_empty() {
            return Err(Error::Config(
                "no IP ranges specified (set ipam.ranges or ipam.subnet)".into(),
            ));
        }
        let mut ranges = Vec::with_capacity(specs.len());
        for (i, s) in specs.iter().enumerate() {
            ranges.push(
                RangeSet::canonicalize(s)
                    .map_err(|e| Error::Config(format!("invalid range set {i}: {e}")))?,
            );
        }
        let v4 = ranges.iter().filter(|s| s.is_v4()).count();
        let v6 = ranges.len() - v4;
        if (v4 > 1 || v6 > 1) && !version::at_least(conf.version(), "0.3.0") {
            return Err(Error::Config(format!(
                "CNI version {} does not support more than 1 address per family",
                conf.version()
            )));
        }
        for (i, a) in ranges.iter().enumerate() {
            for (j, b) in ranges.iter().enumerate().skip(i + 1) {
                if a.overlaps(b) {
                    return Err(Error::Config(format!(
                        "range set {i} ({a}) overlaps with {j} ({b})"
                    )));
                }
            }
        }

        let routes = match field(ipam, "routes") {
            None => Vec::new(),
            Some(v) => serde_json::from_value(v.clone())
                .map_err(|e| Error::Decode(format!("ipam.routes: {e}")))?,
        };
        let resolv_conf = opt_str(ipam, "resolvConf", "ipam.resolvConf")?
            .filter(|s| !s.is_empty())
            .map(PathBuf::from);
        Ok(Self {
            storage,
            ranges,
            routes,
            resolv_conf,
            requested,
        })
    }
}

fn ipam_obj(conf: &NetConf) -> Result<&Map<String, Value>, Error> {
    match &conf.ipam {
        None | Some(Value::Null) => Err(Error::Config("IPAM config missing 'ipam' key".into())),
        Some(Value::Object(m)) => Ok(m),
        Some(v) => Err(Error::Decode(format!(
            "ipam: expected an object, got {}",
            show(v)
        ))),
    }
}

/// Looks a key up the way Go's JSON decoder does (exact match first, then case-insensitively), treating
/// `null` as absent, so configurations the reference plugin accepts are read the same way.
fn field<'a>(m: &'a Map<String, Value>, key: &str) -> Option<&'a Value> {
    m.get(key)
        .or_else(|| {
            m.iter()
                .find(|(k, _)| k.eq_ignore_ascii_case(key))
                .map(|(_, v)| v)
        })
        .filter(|v| !v.is_null())
}

/// A short description of a JSON value for error messages.
fn show(v: &Value) -> String {
    let kind = match v {
        Value::Null => "null",
        Value::Bool(_) => "boolean",
        Value::Number(_) => "number",
        Value::String(_) => "string",
        Value::Array(_) => "array",
        Value::Object(_) => "object",
    };
    let mut s = v.to_string();
    if s.len() > 60 {
        let mut cut = 57;
        while !s.is_char_boundary(cut) {
            cut -= 1;
        }
        s.truncate(cut);
        s.push_str("...");
    }
    format!("{kind} {s}")
}

fn opt_str<'a>(m: &'a Map<String, Value>, key: &str, path: &str) -> Result<Option<&'a str>, Error> {
    match field(m, key) {
        None => Ok(None),
        Some(Value::String(s)) => Ok(Some(s)),
        Some(v) => Err(Error::Decode(format!(
            "{path}: expected a string, got {}",
            show(v)
        ))),
    }
}

/// An optional address; an empty string means "not set", as for Go's `net.IP`.
fn opt_ip(m: &Map<String, Value>, key: &str, path: &str) -> Result<Option<IpAddr>, Error> {
    match opt_str(m, key, path)? {
        None | Some("") => Ok(None),
        Some(s) => s
            .parse::<IpAddr>()
            .map(|ip| Some(canonical_ip(ip)))
            .map_err(|_| Error::Config(format!("{path} \"{s}\" is not an IP address"))),
    }
}

fn array<'a>(v: &'a Value, path: &str) -> Result<&'a Vec<Value>, Error> {
    v.as_array()
        .ok_or_else(|| Error::Decode(format!("{path}: expected an array, got {}", show(v))))
}

/// Accepts `ip` or `ip/prefix` (the address is what counts), as runtimes send both forms.
fn parse_ip_or_cidr(s: &str) -> Option<IpAddr> {
    s.parse::<IpAddr>()
        .ok()
        .or_else(|| s.parse::<IpNet>().ok().map(|n| n.addr()))
        .map(canonical_ip)
}

fn ip_list(v: Option<&Value>, path: &str) -> Result<Vec<IpAddr>, Error> {
    let Some(v) = v else { return Ok(Vec::new()) };
    array(v, path)?
        .iter()
        .enumerate()
        .map(|(i, item)| match item {
            Value::String(s) => parse_ip_or_cidr(s)
                .ok_or_else(|| Error::Config(format!("{path}[{i}] \"{s}\" is not an IP address"))),
            other => Err(Error::Decode(format!(
                "{path}[{i}]: expected a string, got {}",
                show(other)
            ))),
        })
        .collect()
}

fn range(v: &Map<String, Value>, path: &str) -> Result<RangeSpec, Error> {
    let subnet = match opt_str(v, "subnet", &format!("{path}.subnet"))? {
        None => return Err(Error::Config(format!("{path}.subnet is missing"))),
        Some(s) => s
            .parse::<IpNet>()
            .map_err(|_| Error::Config(format!("{path}.subnet \"{s}\" is not a CIDR network")))?,
    };
    Ok(RangeSpec {
        subnet,
        start: opt_ip(v, "rangeStart", &format!("{path}.rangeStart"))?,
        end: opt_ip(v, "rangeEnd", &format!("{path}.rangeEnd"))?,
        gateway: opt_ip(v, "gateway", &format!("{path}.gateway"))?,
    })
}

fn range_set(v: &Value, path: &str) -> Result<Vec<(RangeSpec, String)>, Error> {
    array(v, path)?
        .iter()
        .enumerate()
        .map(|(j, r)| {
            let p = format!("{path}[{j}]");
            match r {
                Value::Object(m) => Ok((range(m, &p)?, p)),
                other => Err(Error::Decode(format!(
                    "{p}: expected an object, got {}",
                    show(other)
                ))),
            }
        })
        .collect()
}

/// Parses resolv.conf text: `nameserver`, `domain`, `search` and `options` lines; comments (`#`, `;`) and
/// lines with fewer than two fields are skipped, as in the reference plugin.
pub fn parse_resolv_conf(text: &str) -> Dns {
    let mut dns = Dns::default();
    for line in text.lines() {
        let line = line.trim();
        if line.starts_with('#') || line.starts_with(';') {
            continue;
        }
        let mut fields = line.split_whitespace();
        let (Some(key), Some(first)) = (fields.next(), fields.next()) else {
            continue;
        };
        let list = match key {
            "nameserver" => {
                dns.nameservers.push(first.to_string());
                continue;
            }
            "domain" => {
                dns.domain = first.to_string();
                continue;
            }
            "search" => &mut dns.search,
            "options" => &mut dns.options,
            _ => continue,
        };
        list.push(first.to_string());
        list.extend(fields.map(str::to_string));
    }
    dns
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::{ERR_DECODE, ERR_INVALID_CONFIG, ERR_INVALID_ENV, ERR_UNSUPPORTED_FIELD};
    use crate::CniError;
    use serde_json::json;

    fn load(v: Value, cni_args: &str) -> Result<IpamConf, CniError> {
        let conf = NetConf::parse(v.to_string().as_bytes()).unwrap();
        IpamConf::load(&conf, cni_args).map_err(CniError::from)
    }

    fn net(ipam: Value) -> Value {
        json!({"cniVersion": "1.0.0", "name": "cbr0", "type": "host-local", "ipam": ipam})
    }

    #[test]
    fn order_runtime_legacy_ranges() {
        let mut v = net(json!({"type": "host-local", "subnet": "10.1.0.0/24",
            "ranges": [[{"subnet": "10.2.0.0/24"}], [{"subnet": "fd00::/64"}]]}));
        v["runtimeConfig"] =
            json!({"ipRanges": [[{"subnet": "10.3.0.0/24", "rangeStart": "10.3.0.10"}]]});
        let c = load(v, "").unwrap();
        let got: Vec<String> = c.ranges.iter().map(|s| s.to_string()).collect();
        assert_eq!(
            got,
            [
                "10.3.0.10-10.3.0.254",
                "10.1.0.1-10.1.0.254",
                "10.2.0.1-10.2.0.254",
                "fd00::1-fd00::ffff:ffff:ffff:ffff"
            ]
        );
        assert_eq!(c.storage.dir, PathBuf::from("/var/lib/cni/networks/cbr0"));
    }

    #[test]
    fn legacy_needs_subnet() {
        let v = net(json!({"rangeStart": "10.1.0.5", "ranges": [[{"subnet": "10.2.0.0/24"}]]}));
        assert_eq!(load(v, "").unwrap().ranges.len(), 1);
        let e = load(net(json!({"type": "host-local"})), "").unwrap_err();
        assert_eq!(e.code, ERR_INVALID_CONFIG);
        assert!(e.msg.contains("no IP ranges"));
        let e = load(json!({"cniVersion": "1.0.0", "name": "n"}), "").unwrap_err();
        assert_eq!(e.code, ERR_INVALID_CONFIG);
    }

    #[test]
    fn go_style_keys_nulls_and_empty_strings() {
        let v = net(
            json!({"dataDir": "/tmp/x", "Ranges": [[{"subnet": "10.9.1.0/24", "rangestart": "10.9.1.50",
            "gateway": "", "rangeEnd": null}]], "routes": null}),
        );
        let c = load(v, "").unwrap();
        let r = &c.ranges[0].0[0];
        assert_eq!(r.to_string(), "10.9.1.50-10.9.1.254");
        assert_eq!(r.gateway.to_string(), "10.9.1.1");
        assert_eq!(c.storage.dir, PathBuf::from("/tmp/x/cbr0"));
        assert!(c.routes.is_empty());
    }

    #[test]
    fn errors_name_key_and_value() {
        let e = load(net(json!({"ranges": [[{"subnet": "10.9.9.0/31"}]]})), "").unwrap_err();
        assert_eq!(e.code, ERR_INVALID_CONFIG);
        assert!(
            e.msg.contains("10.9.9.0/31") && e.msg.contains("too small to allocate from"),
            "{}",
            e.msg
        );
        assert!(e.msg.starts_with("invalid range set 0"), "{}", e.msg);
        let e = load(
            net(json!({"ranges": [[{"subnet": "10.9.1.0/24", "rangeStart": "10.9.2.3"}]]})),
            "",
        )
        .unwrap_err();
        assert!(
            e.msg.contains("ipam.ranges[0][0].rangeStart 10.9.2.3"),
            "{}",
            e.msg
        );
        let e = load(net(json!({"subnet": "10.9.1.0/24", "gateway": "nope"})), "").unwrap_err();
        assert_eq!(e.code, ERR_INVALID_CONFIG);
        assert!(e.msg.contains("ipam.gateway \"nope\""), "{}", e.msg);
        let e = load(net(json!({"ranges": [[{"subnet": "10.9.1.0"}]]})), "").unwrap_err();
        assert!(
            e.msg.contains("ipam.ranges[0][0].subnet \"10.9.1.0\""),
            "{}",
            e.msg
        );
        let e = load(net(json!({"ranges": [[{"rangeStart": "10.9.1.4"}]]})), "").unwrap_err();
        assert!(e.msg.contains("subnet is missing"), "{}", e.msg);
    }

    #[test]
    fn wrong_json_types_are_decode_errors() {
        for ipam in [
            json!({"ranges": [[{"subnet": "10.9.1.0/24", "rangeStart": 5}]]}),
            json!({"ranges": {"subnet": "10.9.1.0/24"}}),
            json!({"ranges": [{"subnet": "10.9.1.0/24"}]}),
            json!({"ranges": [["10.9.1.0/24"]]}),
            json!({"subnet": "10.9.1.0/24", "dataDir": 1}),
            json!({"subnet": "10.9.1.0/24", "routes": [{"dst": 3}]}),
            json!("host-local"),
        ] {
            let e = load(net(ipam.clone()), "").unwrap_err();
            assert_eq!(e.code, ERR_DECODE, "{ipam}: {}", e.msg);
        }
        let e = load(
            net(json!({"ranges": [[{"subnet": "10.9.1.0/24", "rangeStart": 5}]]})),
            "",
        )
        .unwrap_err();
        assert!(
            e.msg.contains("ipam.ranges[0][0].rangeStart") && e.msg.contains("number 5"),
            "{}",
            e.msg
        );
    }

    #[test]
    fn set_rules() {
        let e = load(
            net(json!({"ranges": [[{"subnet": "10.9.0.0/16"}], [{"subnet": "10.9.1.0/24"}]]})),
            "",
        )
        .unwrap_err();
        assert!(
            e.msg.contains("range set 0") && e.msg.contains("overlaps with 1"),
            "{}",
            e.msg
        );
        let e = load(
            net(json!({"ranges": [[{"subnet": "10.9.0.0/24"}, {"subnet": "fd00::/64"}]]})),
            "",
        )
        .unwrap_err();
        assert!(e.msg.contains("mixed"), "{}", e.msg);
        let e = load(net(json!({"ranges": [[]]})), "").unwrap_err();
        assert!(e.msg.contains("empty range set"), "{}", e.msg);
        let mut v =
            net(json!({"ranges": [[{"subnet": "10.9.0.0/24"}], [{"subnet": "10.8.0.0/24"}]]}));
        v["cniVersion"] = json!("0.2.0");
        assert!(load(v.clone(), "")
            .unwrap_err()
            .msg
            .contains("more than 1 address per family"));
        v["cniVersion"] = json!("0.3.0");
        assert!(load(v, "").is_ok());
    }

    #[test]
    fn requested_ips_from_all_sources() {
        let mut v =
            net(json!({"ranges": [[{"subnet": "10.9.0.0/24"}], [{"subnet": "fd00::/64"}]]}));
        v["args"] = json!({"cni": {"ips": ["fd00::9", "10.9.0.7"]}});
        v["runtimeConfig"] = json!({"ips": ["10.9.0.8/24"]});
        let c = load(v, "IgnoreUnknown=1;K8S_POD_NAME=x;IP=10.9.0.7, 10.9.0.6").unwrap();
        let got: Vec<String> = c.requested.iter().map(|i| i.to_string()).collect();
        assert_eq!(got, ["10.9.0.7", "10.9.0.6", "fd00::9", "10.9.0.8"]);
        let v = net(json!({"subnet": "10.9.0.0/24"}));
        assert_eq!(
            load(v.clone(), "IP=10.9.0.x").unwrap_err().code,
            ERR_INVALID_ENV
        );
        assert_eq!(
            load(v.clone(), "FOO=1").unwrap_err().code,
            ERR_UNSUPPORTED_FIELD
        );
        assert!(load(v, "IP=").unwrap().requested.is_empty());
    }

    #[test]
    fn storage_only_needs_name_and_dir() {
        let c = NetConf::parse(
            br#"{"cniVersion":"1.1.0","name":"n","ipam":{"dataDir":"/d","ranges":5}}"#,
        )
        .unwrap();
        assert_eq!(StorageConf::load(&c).unwrap().dir, PathBuf::from("/d/n"));
    }

    #[test]
    fn resolv_conf() {
        let d = parse_resolv_conf(
            "# c\nnameserver 1.1.1.1\nnameserver 8.8.8.8 x\n domain foo.com\nsearch a b\n;x\noptions ndots:5 rotate\nsearch c\nbad\n",
        );
        assert_eq!(d.nameservers, ["1.1.1.1", "8.8.8.8"]);
        assert_eq!(d.domain, "foo.com");
        assert_eq!(d.search, ["a", "b", "c"]);
        assert_eq!(d.options, ["ndots:5", "rotate"]);
    }
}
