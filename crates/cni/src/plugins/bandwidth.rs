//! The `bandwidth` meta-plugin: token-bucket shaping of a pod's traffic on the host side of its veth, as the
//! reference (`plugins/meta/bandwidth`, the tbf version Debian ships).
//!
//! Traffic to the pod (`ingressRate`/`ingressBurst`) is shaped by a root `tbf` on the host veth. Traffic from the
//! pod (`egressRate`/`egressBurst`) arrives on the host veth's ingress, which has an `ingress` qdisc and a u32
//! filter redirecting every packet to an `ifb` device named `bwp` + the first 12 hex digits of
//! SHA-512(network name + container ID), where a root `tbf` shapes it. Rates are bits/s and bursts bits; the
//! static keys win over `runtimeConfig.bandwidth` when any of them is given. DEL deletes the ifb (the host veth's
//! qdiscs go with the veth). CHECK compares the qdiscs with the configuration.

use crate::error::{CniError, ERR_INVALID_ENV, ERR_UNKNOWN_CONTAINER, ERR_UNSUPPORTED_FIELD};
use crate::plugin::Plugin;
use crate::skel::CmdArgs;
use crate::types::{CniResult, Interface, NetConf};
use kernel::tc::{self, Tbf};
use kernel::{Link, Netlink, Netns};
use serde::Deserialize;
use serde_json::Value;
use sha2::{Digest, Sha512};

/// The `tbf` latency the reference configures (25 ms), which sets the queue limit.
const LATENCY_USEC: f64 = 25_000.0;

/// The bandwidth plugin's row of the plugin table (no GC or STATUS, as the reference).
pub const PLUGIN: Plugin = crate::plugin::chained_row!("bandwidth");

/// One bandwidth entry (CONVENTIONS.md `bandwidth` capability): rates in bits/s, bursts in bits, 0 = no limit.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Bandwidth {
    /// Rate of traffic to the pod.
    #[serde(default)]
    pub ingress_rate: u64,
    /// Burst of traffic to the pod.
    #[serde(default)]
    pub ingress_burst: u64,
    /// Rate of traffic from the pod.
    #[serde(default)]
    pub egress_rate: u64,
    /// Burst of traffic from the pod.
    #[serde(default)]
    pub egress_burst: u64,
}

const KEYS: [&str; 4] = ["ingressRate", "ingressBurst", "egressRate", "egressBurst"];
/// Keys of the later (HTB) reference that this tbf implementation does not do.
const HTB_KEYS: [&str; 2] = ["unshapedSubnets", "shapedSubnets"];

impl Bandwidth {
    /// Whether nothing is limited.
    pub fn is_zero(&self) -> bool {
        *self == Self::default()
    }

    /// The effective entry of a configuration: the static keys when any is present (as the reference's embedded
    /// pointer), else `runtimeConfig.bandwidth`; validated.
    pub fn from_conf(conf: &NetConf) -> Result<Option<Self>, CniError> {
        let parse = |v: Value, where_: &str| -> Result<Self, CniError> {
            if let Some(k) = HTB_KEYS
                .iter()
                .find(|k| v.get(**k).is_some_and(|x| !x.is_null()))
            {
                return Err(CniError::new(
                    ERR_UNSUPPORTED_FIELD,
                    format!("{where_}{k} is not supported (this bandwidth plugin shapes with tbf)"),
                ));
            }
            serde_json::from_value(v)
                .map_err(|e| CniError::config(format!("invalid {where_}bandwidth entry: {e}")))
        };
        let present = KEYS
            .iter()
            .chain(HTB_KEYS.iter())
            .any(|k| conf.extra.contains_key(*k));
        let bw = if present {
            let mut m = serde_json::Map::new();
            for k in KEYS.iter().chain(HTB_KEYS.iter()) {
                if let Some(v) = conf.extra.get(*k) {
                    m.insert((*k).to_string(), v.clone());
                }
            }
            Some(parse(Value::Object(m), "")?)
        } else {
            match conf
                .runtime_config
                .as_ref()
                .and_then(|r| r.get("bandwidth"))
            {
                None | Some(Value::Null) => None,
                Some(v) => Some(parse(v.clone(), "runtimeConfig.bandwidth.")?),
            }
        };
        if let Some(b) = &bw {
            validate(b.ingress_rate, b.ingress_burst)?;
            validate(b.egress_rate, b.egress_burst)?;
        }
        Ok(bw)
    }
}

/// The reference's checks (rate without burst and the reverse; burst under 4 GB) plus the ones that keep the
/// tbf arithmetic in range: at least 8 bit/s, and a bucket that fits the kernel's 32-bit tick count.
pub fn validate(rate: u64, burst: u64) -> Result<(), CniError> {
    if burst == 0 && rate != 0 {
        return Err(CniError::config("if rate is set, burst must also be set"));
    }
    if rate == 0 && burst != 0 {
        return Err(CniError::config("if burst is set, rate must also be set"));
    }
    if burst / 8 >= u64::from(u32::MAX) {
        return Err(CniError::config("burst cannot be more than 4GB"));
    }
    if rate != 0 {
        if rate < 8 {
            return Err(CniError::config(format!(
                "rate {rate} bit/s is below 1 byte/s"
            )));
        }
        tbf_for(rate, burst, 15.625)?;
    }
    Ok(())
}

/// The tbf of a rate and burst in bits, computed as the reference does (bytes, ticks of `tick_in_usec`).
pub fn tbf_for(rate_bits: u64, burst_bits: u64, tick_in_usec: f64) -> Result<Tbf, CniError> {
    let rate = rate_bits / 8;
    let burst = burst_bits / 8;
    if rate == 0 {
        return Err(CniError::config("rate must be at least 8 bit/s"));
    }
    // buffer = time2Tick(uint32(burst * 1e6 / rate)): the time to send the burst, in ticks.
    let usec = (burst as f64) * 1_000_000.0 / (rate as f64);
    let ticks = (usec.trunc()) * tick_in_usec;
    if !(usec <= f64::from(u32::MAX) && ticks <= f64::from(u32::MAX)) {
        return Err(CniError::config(format!(
            "burst {burst_bits} bits at rate {rate_bits} bit/s takes too long to send (the kernel's bucket holds at most {} s)",
            (f64::from(u32::MAX) / tick_in_usec / 1e6).floor()
        )));
    }
    let buffer = ticks as u32;
    let limit = (rate as f64 * LATENCY_USEC / 1_000_000.0) as u64 + burst;
    let limit = u32::try_from(limit)
        .map_err(|_| CniError::config("rate and burst give a queue limit over 4 GB"))?;
    Ok(Tbf {
        rate,
        buffer,
        limit,
    })
}

/// The ifb's name: `bwp` + hex(SHA-512(network name + container ID)), 15 characters, as the reference.
pub fn ifb_name(network: &str, container_id: &str) -> String {
    let h = Sha512::digest(format!("{network}{container_id}").as_bytes());
    let hex: String = h.iter().map(|b| format!("{b:02x}")).collect();
    format!("bwp{}", hex.get(..12).unwrap_or_default())
}

/// The host end of the pod's veth: the peer of `CNI_IFNAME`, which must be a host interface of the result.
async fn host_interface(
    host: &Netlink,
    ns: &Netns,
    args: &CmdArgs,
    result: &CniResult,
) -> Result<Link, CniError> {
    if result.interfaces.is_empty() {
        return Err(CniError::internal("no interfaces provided"));
    }
    let pod = Netlink::in_netns(ns)?;
    let c = pod.link_by_name(&args.ifname).await?.ok_or_else(|| {
        CniError::internal(format!("container interface {} not found", args.ifname))
    })?;
    let peer = match (c.kind.as_deref(), c.peer_index) {
        (Some("veth"), Some(p)) if p > 0 => p,
        _ => {
            return Err(CniError::internal(format!(
                "container interface {} has no veth peer",
                args.ifname
            )))
        }
    };
    let l = host.link_by_index(peer).await?.ok_or_else(|| {
        CniError::internal(format!("veth peer with index {peer} is not in host ns"))
    })?;
    if result
        .interfaces
        .iter()
        .any(|i| i.sandbox.is_empty() && i.name == l.name)
    {
        Ok(l)
    } else {
        Err(CniError::internal(
            "no veth peer of container interface found in host ns",
        ))
    }
}

async fn add(args: &CmdArgs, conf: &NetConf) -> Result<CniResult, CniError> {
    let bw = Bandwidth::from_conf(conf)?;
    let prev = conf.prev()?;
    let Some(bw) = bw.filter(|b| !b.is_zero()) else {
        // Nothing to shape: the previous result as it is.
        return Ok(CniResult {
            cni_version: conf.version().to_string(),
            ..prev.unwrap_or_default()
        });
    };
    let mut result = prev.ok_or_else(|| CniError::config("must be called as chained plugin"))?;
    let ns = Netns::open(&args.netns)
        .map_err(|e| CniError::new(ERR_INVALID_ENV, format!("CNI_NETNS: {e}")))?;
    let host = Netlink::current()?;
    let hl = host_interface(&host, &ns, args, &result).await?;
    let tick = tc::tick_in_usec();
    if bw.ingress_rate > 0 {
        host.add_tbf(hl.index, &tbf_for(bw.ingress_rate, bw.ingress_burst, tick)?)
            .await?;
    }
    if bw.egress_rate > 0 {
        let tbf = tbf_for(bw.egress_rate, bw.egress_burst, tick)?;
        let name = ifb_name(&conf.name, &args.container_id);
        let ifb = host.create_ifb(&name, hl.mtu, 0).await?;
        let shaped = async {
            host.add_ingress_qdisc(hl.index).await?;
            host.add_redirect_filter(hl.index, ifb.index).await?;
            host.add_tbf(ifb.index, &tbf).await
        }
        .await;
        if let Err(e) = shaped {
            // Undo the ifb; the host veth's qdiscs go with the veth.
            let _ = host.delete_link(ifb.index).await;
            return Err(e.into());
        }
        result.interfaces.push(Interface {
            name,
            mac: ifb.mac.map(|m| m.to_string()).unwrap_or_default(),
            ..Default::default()
        });
    }
    Ok(CniResult {
        cni_version: conf.version().to_string(),
        ..result
    })
}

/// DEL deletes the ifb; none (the namespace gone, a DEL repeated) is success. A link of that name that is not
/// an ifb is left alone.
async fn del(args: &CmdArgs, conf: &NetConf) -> Result<(), CniError> {
    let name = ifb_name(&conf.name, &args.container_id);
    let host = Netlink::current()?;
    match host.link_by_name(&name).await? {
        None => Ok(()),
        Some(l) if l.kind.as_deref() == Some("ifb") => Ok(host.delete_link(l.index).await?),
        Some(l) => {
            eprintln!(
                "bandwidth: {name} is a {} link, not our ifb; left alone",
                l.kind.as_deref().unwrap_or("unknown")
            );
            Ok(())
        }
    }
}

fn check_tbf(link: &Link, qdiscs: &[tc::Qdisc], want: &Tbf) -> Result<(), CniError> {
    let roots: Vec<&tc::Qdisc> = qdiscs
        .iter()
        .filter(|q| q.parent == tc::ROOT && q.kind == "tbf")
        .collect();
    let q = match roots.as_slice() {
        [q] => q,
        [] => {
            return Err(CniError::internal(format!(
                "Failed to find tbf qdisc on {}",
                link.name
            )))
        }
        _ => {
            return Err(CniError::internal(format!(
                "Several tbf qdiscs on {}",
                link.name
            )))
        }
    };
    match &q.tbf {
        Some(t) if t == want => Ok(()),
        Some(t) => Err(CniError::internal(format!(
            "tbf on {} is rate {} B/s, buffer {}, limit {}; configured rate {} B/s, buffer {}, limit {}",
            link.name, t.rate, t.buffer, t.limit, want.rate, want.buffer, want.limit
        ))),
        None => Err(CniError::internal(format!(
            "tbf on {} has no readable parameters",
            link.name
        ))),
    }
}

async fn check(args: &CmdArgs, conf: &NetConf) -> Result<(), CniError> {
    let bw = Bandwidth::from_conf(conf)?.unwrap_or_default();
    let result = conf
        .prev()?
        .ok_or_else(|| CniError::config("must be called as a chained plugin"))?;
    let ns = Netns::open(&args.netns)
        .map_err(|e| CniError::new(ERR_UNKNOWN_CONTAINER, format!("CNI_NETNS: {e}")))?;
    let host = Netlink::current()?;
    let hl = host_interface(&host, &ns, args, &result).await?;
    let tick = tc::tick_in_usec();
    let hq = host.qdiscs(hl.index).await?;
    if bw.ingress_rate > 0 {
        check_tbf(&hl, &hq, &tbf_for(bw.ingress_rate, bw.ingress_burst, tick)?)?;
    }
    if bw.egress_rate > 0 {
        let name = ifb_name(&conf.name, &args.container_id);
        let ifb = host
            .link_by_name(&name)
            .await?
            .ok_or_else(|| CniError::internal(format!("get ifb device: {name} not found")))?;
        let iq = host.qdiscs(ifb.index).await?;
        check_tbf(&ifb, &iq, &tbf_for(bw.egress_rate, bw.egress_burst, tick)?)?;
        if !hq.iter().any(|q| q.kind == "ingress") {
            return Err(CniError::internal(format!(
                "no ingress qdisc on {}",
                hl.name
            )));
        }
        let redirects = host.ingress_redirects(hl.index).await?;
        if !redirects.iter().any(|r| r.to == ifb.index) {
            return Err(CniError::internal(format!(
                "no redirect from {} to {name}",
                hl.name
            )));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn conf(v: Value) -> NetConf {
        NetConf::parse(v.to_string().as_bytes()).unwrap()
    }

    #[test]
    fn ifb_name_is_the_references() {
        // Measured with Debian's bandwidth 1.1.1: network "frtbw", container "ctr1".
        assert_eq!(ifb_name("frtbw", "ctr1"), "bwp0fd16d9cd757");
        assert_eq!(ifb_name("frtbw", "ctr1").len(), 15);
    }

    #[test]
    fn tbf_arithmetic_is_the_references() {
        // Debian's bandwidth for 10 Mbit/s, 2 Mbit burst: tc shows rate 1250000 B/s, burst 250000 b, lat 25 ms.
        let t = tbf_for(10_000_000, 2_000_000, 15.625).unwrap();
        assert_eq!(
            t,
            Tbf {
                rate: 1_250_000,
                buffer: 3_125_000,
                limit: 281_250
            }
        );
    }

    #[test]
    fn validation() {
        for (r, b) in [
            (1000, 0),
            (0, 1000),
            (1000, 8 * u64::from(u32::MAX)),
            (7, 8),
        ] {
            assert_eq!(validate(r, b).unwrap_err().code, 7, "{r} {b}");
        }
        // A burst that takes hours to send at a tiny rate overflows the tick count.
        assert!(validate(8, 8 * 4_000_000_000).is_err());
        assert!(validate(0, 0).is_ok());
        assert!(validate(100_000_000, 4_000_000).is_ok());
    }

    #[test]
    fn static_keys_win_over_runtime_config() {
        let rc = serde_json::json!({"bandwidth": {"ingressRate": 8000, "ingressBurst": 8000}});
        let c = conf(
            serde_json::json!({"cniVersion": "1.0.0", "name": "n", "type": "bandwidth",
            "egressRate": 16000, "egressBurst": 16000, "runtimeConfig": rc}),
        );
        let b = Bandwidth::from_conf(&c).unwrap().unwrap();
        assert_eq!((b.ingress_rate, b.egress_rate), (0, 16000));
        let c = conf(
            serde_json::json!({"cniVersion": "1.0.0", "name": "n", "type": "bandwidth",
            "runtimeConfig": rc}),
        );
        assert_eq!(
            Bandwidth::from_conf(&c).unwrap().unwrap().ingress_rate,
            8000
        );
        let c = conf(serde_json::json!({"cniVersion": "1.0.0", "name": "n", "type": "bandwidth"}));
        assert_eq!(Bandwidth::from_conf(&c).unwrap(), None);
        for bad in [
            serde_json::json!({"ingressRate": -1, "ingressBurst": 5}),
            serde_json::json!({"ingressRate": "1", "ingressBurst": 5}),
            serde_json::json!({"runtimeConfig": {"bandwidth": {"egressRate": 100}}}),
            serde_json::json!({"runtimeConfig": {"bandwidth": 5}}),
        ] {
            let mut v = bad.clone();
            v["cniVersion"] = "1.0.0".into();
            v["name"] = "n".into();
            assert_eq!(Bandwidth::from_conf(&conf(v)).unwrap_err().code, 7, "{bad}");
        }
        let c = conf(serde_json::json!({"cniVersion": "1.0.0", "name": "n",
            "ingressRate": 8000, "ingressBurst": 8000, "shapedSubnets": ["10.0.0.0/8"]}));
        assert_eq!(Bandwidth::from_conf(&c).unwrap_err().code, 2);
    }

    proptest! {
        #[test]
        fn from_conf_never_panics(ir in proptest::num::u64::ANY, ib in proptest::num::u64::ANY,
                                  er in proptest::num::u64::ANY, eb in proptest::num::u64::ANY) {
            let c = conf(serde_json::json!({"cniVersion": "1.0.0", "name": "n",
                "ingressRate": ir, "ingressBurst": ib, "egressRate": er, "egressBurst": eb}));
            if let Ok(Some(b)) = Bandwidth::from_conf(&c) {
                // Whatever validates, the tbf arithmetic takes.
                if b.ingress_rate > 0 {
                    prop_assert!(tbf_for(b.ingress_rate, b.ingress_burst, 15.625).is_ok());
                }
                if b.egress_rate > 0 {
                    prop_assert!(tbf_for(b.egress_rate, b.egress_burst, 15.625).is_ok());
                }
            }
        }

        #[test]
        fn parse_never_panics(s in ".{0,200}") {
            if let Ok(c) = NetConf::parse(s.as_bytes()) {
                let _ = Bandwidth::from_conf(&c);
            }
        }
    }
}
