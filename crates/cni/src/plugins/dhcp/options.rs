//! The `ipam` keys of the dhcp plugin, the options a client sends and asks for, and what a DHCPACK means as a
//! CNI result: the reference's `options.go` and the option half of its `lease.go`.

use super::msg::{opt, Message};
use crate::error::CniError;
use crate::types::{CniResult, IpConfig, Route};
use ipnet::{IpNet, Ipv4Net};
use serde::Deserialize;
use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr};
use std::time::Duration;

/// Where the daemon listens unless `ipam.daemonSocketPath` says otherwise.
pub const DEFAULT_SOCKET_PATH: &str = "/run/cni/dhcp.sock";

/// One `ipam.provide` entry: an option the client sends, its value given or taken from `CNI_ARGS`.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct ProvideOption {
    #[serde(default)]
    pub option: String,
    #[serde(default)]
    pub value: String,
    #[serde(default, rename = "fromArg")]
    pub from_arg: String,
}

/// One `ipam.request` entry: an option the client asks for; `skipDefault` drops the default list (router,
/// subnet mask).
#[derive(Debug, Clone, Default, Deserialize)]
pub struct RequestOption {
    #[serde(default, rename = "skipDefault")]
    pub skip_default: bool,
    #[serde(default)]
    pub option: String,
}

/// The `ipam` block.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct IpamConf {
    #[serde(default, rename = "daemonSocketPath")]
    pub daemon_socket_path: String,
    #[serde(default)]
    pub provide: Vec<ProvideOption>,
    #[serde(default)]
    pub request: Vec<RequestOption>,
}

impl IpamConf {
    /// The `ipam` block of a configuration (absent: all defaults, as the reference's JSON decoding).
    pub fn from_stdin(stdin: &[u8]) -> Result<Self, CniError> {
        #[derive(Deserialize)]
        struct Top {
            #[serde(default)]
            ipam: Option<IpamConf>,
        }
        let t: Top = serde_json::from_slice(stdin)
            .map_err(|e| CniError::decode(format!("error parsing ipam configuration: {e}")))?;
        Ok(t.ipam.unwrap_or_default())
    }

    /// The daemon socket.
    pub fn socket_path(&self) -> &str {
        if self.daemon_socket_path.is_empty() {
            DEFAULT_SOCKET_PATH
        } else {
            &self.daemon_socket_path
        }
    }
}

/// An option by its dhcp-options(5) name (the few the reference names) or its number.
pub fn parse_option_name(name: &str) -> Result<u8, CniError> {
    let code = match name {
        "dhcp-client-identifier" => opt::CLIENT_ID,
        "subnet-mask" => opt::SUBNET_MASK,
        "routers" => opt::ROUTER,
        "host-name" => opt::HOST_NAME,
        "user-class" => opt::USER_CLASS,
        "vendor-class-identifier" => opt::CLASS_ID,
        n => n.parse::<u8>().map_err(|e| {
            CniError::config(format!(
                "Can not parse option \"{n}\": Can not parse option: {e}"
            ))
        })?,
    };
    Ok(code)
}

/// What the client sends besides the protocol's own options: the provided values and the parameter request
/// list.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ClientOptions {
    /// Option code to value (`ipam.provide`).
    pub provide: BTreeMap<u8, Vec<u8>>,
    /// Codes for option 55 (`ipam.request` and the defaults).
    pub request: Vec<u8>,
}

/// `ipam.provide` and `ipam.request` resolved against `CNI_ARGS` (`K=V;K=V`), as the reference's
/// `prepareOptions`: a `fromArg` present in `CNI_ARGS` wins over `value`; a value over 255 bytes is refused.
pub fn prepare(cni_args: &str, conf: &IpamConf) -> Result<ClientOptions, CniError> {
    let args: BTreeMap<&str, &str> = cni_args
        .split(';')
        .filter_map(|kv| kv.split_once('='))
        .collect();
    let mut out = ClientOptions::default();
    for p in &conf.provide {
        let code = parse_option_name(&p.option)?;
        if !p.value.is_empty() {
            if p.value.len() > 255 {
                return Err(CniError::config(format!(
                    "value too long for option \"{}\": \"{}\"",
                    p.option, p.value
                )));
            }
            out.provide.insert(code, p.value.as_bytes().to_vec());
        }
        if let Some(v) = args.get(p.from_arg.as_str()) {
            if v.len() > 255 {
                return Err(CniError::config(format!(
                    "value too long for option \"{}\" from CNI_ARGS \"{}\"",
                    p.option, p.from_arg
                )));
            }
            out.provide.insert(code, v.as_bytes().to_vec());
        }
    }
    let mut skip_default = false;
    for r in &conf.request {
        skip_default |= r.skip_default;
        let code = parse_option_name(&r.option)?;
        if !out.request.contains(&code) {
            out.request.push(code);
        }
    }
    if !skip_default {
        for d in [opt::ROUTER, opt::SUBNET_MASK] {
            if !out.request.contains(&d) {
                out.request.push(d);
            }
        }
    }
    Ok(out)
}

/// The client identifier the reference derives: `<containerID>/<network>/<ifname>`, cut to 254 bytes, so a
/// re-ADD of the same attachment asks for the same lease.
pub fn client_id(container_id: &str, network: &str, ifname: &str) -> String {
    let mut id = format!("{container_id}/{network}/{ifname}");
    if id.len() > 254 {
        let mut cut = 254;
        while !id.is_char_boundary(cut) {
            cut -= 1;
        }
        id.truncate(cut);
    }
    id
}

/// Option 61: type 0 (not a hardware address) then the identifier.
pub fn client_id_option(id: &str) -> Vec<u8> {
    let mut v = Vec::with_capacity(id.len() + 1);
    v.push(0);
    v.extend_from_slice(id.as_bytes());
    v
}

/// The times of a lease, from its ACK: RFC 2131's defaults (T1 50%, T2 87.5% in the RFC, 85% in the reference)
/// where the server gives none or gives nonsense.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Times {
    pub lease: Duration,
    pub renew: Duration,
    pub rebind: Duration,
}

/// Lease times of an ACK; the lease time (51) is required.
pub fn times(ack: &Message) -> Result<Times, CniError> {
    let lease = ack
        .get_u32(opt::LEASE_TIME)
        .ok_or_else(|| CniError::internal("DHCP option lease time not found in DHCPACK"))?;
    let lease = Duration::from_secs(u64::from(lease));
    let mut rebind = ack
        .get_u32(opt::REBINDING_TIME)
        .map(|s| Duration::from_secs(u64::from(s)))
        .unwrap_or(Duration::MAX);
    if rebind > lease {
        rebind = lease * 85 / 100;
    }
    let mut renew = ack
        .get_u32(opt::RENEWAL_TIME)
        .map(|s| Duration::from_secs(u64::from(s)))
        .unwrap_or(Duration::MAX);
    if renew > rebind {
        renew = lease / 2;
    }
    Ok(Times {
        lease,
        renew,
        rebind,
    })
}

fn mask_len(m: &[u8]) -> Option<u8> {
    let b: [u8; 4] = m.get(..4)?.try_into().ok()?;
    let v = u32::from_be_bytes(b);
    // A mask must be contiguous ones (the reference takes any bytes; a non-contiguous one has no prefix form).
    let ones = v.leading_ones();
    (v.checked_shl(ones).unwrap_or(0) == 0).then_some(ones as u8)
}

/// Classful network of a destination (option 33 carries no mask).
fn classful(dst: Ipv4Addr) -> Ipv4Net {
    let first = dst.octets()[0];
    let len = if first < 128 {
        8
    } else if first < 192 {
        16
    } else {
        24
    };
    Ipv4Net::new(dst, len).unwrap_or_else(|_| Ipv4Net::default())
}

/// RFC 3442 classless static routes: width, the significant octets of the destination, the router.
pub fn classless_routes(mut b: &[u8]) -> Vec<Route> {
    let mut out = Vec::new();
    while let Some((&width, rest)) = b.split_first() {
        if width > 32 {
            break;
        }
        let n = usize::from(width).div_ceil(8);
        let (Some(dst), Some(gw)) = (rest.get(..n), rest.get(n..n + 4)) else {
            break;
        };
        let mut d = [0u8; 4];
        d[..n].copy_from_slice(dst);
        let gw: [u8; 4] = match gw.try_into() {
            Ok(g) => g,
            Err(_) => break,
        };
        if let Ok(net) = Ipv4Net::new(Ipv4Addr::from(d), width) {
            out.push(Route::new(
                IpNet::V4(net.trunc()),
                Some(IpAddr::V4(Ipv4Addr::from(gw))),
            ));
        }
        b = rest.get(n + 4..).unwrap_or(&[]);
    }
    out
}

/// Option 33: pairs of (classful destination, router).
pub fn static_routes(b: &[u8]) -> Vec<Route> {
    b.chunks_exact(8)
        .filter_map(|c| {
            let dst: [u8; 4] = c.get(..4)?.try_into().ok()?;
            let gw: [u8; 4] = c.get(4..8)?.try_into().ok()?;
            Some(Route::new(
                IpNet::V4(classful(Ipv4Addr::from(dst))),
                Some(IpAddr::V4(Ipv4Addr::from(gw))),
            ))
        })
        .collect()
}

/// The result of a lease, as the reference builds it: the address with the server's mask (required), the gateway
/// from the first router, routes from option 121 when present (it then replaces 33 and the router, RFC 3442),
/// otherwise option 33 then a default route via the router.
pub fn result_of(ack: &Message) -> Result<CniResult, CniError> {
    let prefix = ack
        .get(opt::SUBNET_MASK)
        .and_then(mask_len)
        .ok_or_else(|| CniError::internal("DHCP option Subnet Mask not found in DHCPACK"))?;
    let address = Ipv4Net::new(ack.yiaddr, prefix)
        .map_err(|e| CniError::internal(format!("DHCPACK address: {e}")))?;
    let gateway = ack.get_ip(opt::ROUTER).map(IpAddr::V4);
    let classless = ack
        .get(opt::CLASSLESS_ROUTES)
        .map(classless_routes)
        .unwrap_or_default();
    let routes = if !classless.is_empty() {
        classless
    } else {
        let mut r = ack
            .get(opt::STATIC_ROUTES)
            .map(static_routes)
            .unwrap_or_default();
        if let Some(gw) = gateway {
            r.push(Route::new(IpNet::V4(Ipv4Net::default()), Some(gw)));
        }
        r
    };
    Ok(CniResult {
        cni_version: crate::version::CURRENT.to_string(),
        ips: vec![IpConfig {
            address: IpNet::V4(address),
            gateway,
            interface: None,
        }],
        routes,
        ..Default::default()
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::plugins::dhcp::msg::MsgType;
    use proptest::prelude::*;

    fn ack(opts: &[(u8, &[u8])]) -> Message {
        let mut m = Message::request(1, [0; 6], MsgType::Ack);
        m.yiaddr = Ipv4Addr::new(10, 244, 50, 17);
        for (c, v) in opts {
            m.set(*c, v.to_vec());
        }
        m
    }

    /// A result's routes as `<dst> <gateway>` lines.
    fn route_strings(r: &CniResult) -> Vec<String> {
        r.routes
            .iter()
            .map(|r| format!("{} {:?}", r.dst, r.gw))
            .collect()
    }

    #[test]
    fn result_with_router_and_static_routes() {
        let m = ack(&[
            (opt::SUBNET_MASK, &[255, 255, 255, 0]),
            (opt::ROUTER, &[10, 244, 50, 1, 10, 244, 50, 2]),
            (opt::STATIC_ROUTES, &[172, 16, 0, 0, 10, 244, 50, 3]),
        ]);
        let r = result_of(&m).unwrap();
        assert_eq!(r.ips[0].address.to_string(), "10.244.50.17/24");
        assert_eq!(r.ips[0].gateway, Some("10.244.50.1".parse().unwrap()));
        let routes = route_strings(&r);
        assert_eq!(
            routes,
            [
                "172.16.0.0/16 Some(10.244.50.3)",
                "0.0.0.0/0 Some(10.244.50.1)"
            ]
        );
    }

    #[test]
    fn classless_routes_replace_the_rest() {
        let m = ack(&[
            (opt::SUBNET_MASK, &[255, 255, 0, 0]),
            (opt::ROUTER, &[10, 244, 50, 1]),
            (opt::STATIC_ROUTES, &[172, 16, 0, 0, 10, 244, 50, 3]),
            (
                opt::CLASSLESS_ROUTES,
                &[0, 10, 244, 50, 9, 24, 192, 0, 2, 10, 244, 50, 8],
            ),
        ]);
        let r = result_of(&m).unwrap();
        let routes = route_strings(&r);
        assert_eq!(
            routes,
            [
                "0.0.0.0/0 Some(10.244.50.9)",
                "192.0.2.0/24 Some(10.244.50.8)"
            ]
        );
    }

    #[test]
    fn no_mask_is_an_error() {
        assert!(result_of(&ack(&[(opt::ROUTER, &[10, 0, 0, 1])])).is_err());
        assert!(result_of(&ack(&[(opt::SUBNET_MASK, &[255, 0, 255, 0])])).is_err());
    }

    #[test]
    fn times_default_as_the_reference() {
        let t = times(&ack(&[(opt::LEASE_TIME, &120u32.to_be_bytes())])).unwrap();
        assert_eq!(
            (t.lease.as_secs(), t.renew.as_secs(), t.rebind.as_secs()),
            (120, 60, 102)
        );
        let t = times(&ack(&[
            (opt::LEASE_TIME, &100u32.to_be_bytes()),
            (opt::RENEWAL_TIME, &90u32.to_be_bytes()),
            (opt::REBINDING_TIME, &80u32.to_be_bytes()),
        ]))
        .unwrap();
        assert_eq!((t.renew.as_secs(), t.rebind.as_secs()), (50, 80));
        assert!(times(&ack(&[])).is_err());
    }

    #[test]
    fn options_from_config_and_args() {
        let conf: IpamConf = serde_json::from_value(serde_json::json!({
            "provide": [{"option": "host-name", "fromArg": "K8S_POD_NAME"}, {"option": "60", "value": "v"}],
            "request": [{"option": "121"}]
        }))
        .unwrap();
        let o = prepare("IgnoreUnknown=1;K8S_POD_NAME=web-0", &conf).unwrap();
        assert_eq!(o.provide.get(&opt::HOST_NAME).unwrap(), b"web-0");
        assert_eq!(o.provide.get(&60).unwrap(), b"v");
        assert_eq!(o.request, [121, opt::ROUTER, opt::SUBNET_MASK]);
        let conf: IpamConf = serde_json::from_value(serde_json::json!({
            "request": [{"option": "subnet-mask", "skipDefault": true}]
        }))
        .unwrap();
        assert_eq!(prepare("", &conf).unwrap().request, [opt::SUBNET_MASK]);
        let bad: IpamConf =
            serde_json::from_value(serde_json::json!({"request": [{"option": "nope"}]})).unwrap();
        assert_eq!(prepare("", &bad).unwrap_err().code, 7);
    }

    #[test]
    fn client_id_is_cut_at_254_bytes() {
        assert_eq!(client_id("c", "n", "eth0"), "c/n/eth0");
        assert_eq!(client_id(&"x".repeat(300), "n", "eth0").len(), 254);
        assert_eq!(client_id_option("a")[..], [0, b'a']);
    }

    proptest! {
        #[test]
        fn route_options_never_panic(b in proptest::collection::vec(any::<u8>(), 0..100)) {
            let _ = classless_routes(&b);
            let _ = static_routes(&b);
            let _ = mask_len(&b);
        }

        #[test]
        fn any_ack_options_never_panic(opts in proptest::collection::vec((any::<u8>(), proptest::collection::vec(any::<u8>(), 0..40)), 0..12)) {
            let mut m = Message::request(1, [0; 6], MsgType::Ack);
            for (c, v) in opts {
                m.set(c, v);
            }
            let _ = result_of(&m);
            let _ = times(&m);
        }

        #[test]
        fn prepare_never_panics(args in ".{0,80}", name in ".{0,8}", value in ".{0,300}") {
            let conf = IpamConf {
                provide: vec![ProvideOption { option: name.clone(), value, from_arg: "A".into() }],
                request: vec![RequestOption { skip_default: false, option: name }],
                ..Default::default()
            };
            let _ = prepare(&args, &conf);
        }
    }
}
