//! What `macvlan`, `ipvlan` and `vlan` share: a sub-interface of a "master" link handed to the pod.
//!
//! ADD, as the reference plugins do it: the master is looked up by name (default: the interface of the default
//! route) in the host namespace, or in the pod's with `linkInContainer`; the MTU must not exceed the master's.
//! The sub-interface is created under a temporary name directly in the pod namespace (one `RTM_NEWLINK` carrying
//! the pod's namespace descriptor, so a name taken in the host never clashes), renamed to CNI_IFNAME there, then
//! configured from IPAM (or just brought up when there is no IPAM: layer 2 only). The result lists the pod
//! interface alone (index 0) and the configuration's `dns` (not IPAM's), as the reference does.
//!
//! The temporary name is derived from the attachment (container ID and interface name), not random as in the
//! reference: a DEL after an ADD killed between creation and rename finds and removes the half-made link by it.

use crate::attach;
use crate::error::{CniError, Failures};
use crate::plugin::Ctx;
use crate::skel::CmdArgs;
use crate::types::{CniResult, NetConf};
use kernel::sublink::{SublinkInfo, SublinkKind, SublinkSpec};
use kernel::{sysctl, Link, Mac, Netlink, Netns};
use serde_json::Value;

/// Index of the pod interface in the result.
const CONTAINER_IF: usize = 0;

/// Prefix of the temporary name a sub-interface has between its creation and its rename.
const TMP_PREFIX: &str = "cnisub";

/// The keys every sub-interface plugin reads.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Common {
    /// `master`; `None` when absent or empty (then the default route's interface, or for ipvlan in a chain
    /// the previous result's interface).
    pub master: Option<String>,
    /// `mtu` (0: the master's).
    pub mtu: u32,
    /// `linkInContainer`: the master is in the pod namespace and the link is made there.
    pub link_in_container: bool,
    /// The IPAM plugin, if any.
    pub ipam_type: Option<String>,
}

/// The value of key `key` of the plugin's configuration, if present and not `null`.
fn key<'a>(conf: &'a NetConf, key: &str) -> Option<&'a Value> {
    conf.extra.get(key).filter(|v| !v.is_null())
}

/// An integer key (`mtu`, `vlanId`): absent is 0; anything but an integer is a configuration error.
pub fn int_key(conf: &NetConf, name: &str) -> Result<i64, CniError> {
    match key(conf, name) {
        None => Ok(0),
        Some(v) => v.as_i64().ok_or_else(|| {
            CniError::config(format!(
                "invalid configuration: {name} must be an integer, got {v}"
            ))
        }),
    }
}

/// A string key: absent is empty.
pub fn str_key(conf: &NetConf, name: &str) -> Result<String, CniError> {
    match key(conf, name) {
        None => Ok(String::new()),
        Some(Value::String(s)) => Ok(s.clone()),
        Some(v) => Err(CniError::config(format!(
            "invalid configuration: {name} must be a string, got {v}"
        ))),
    }
}

fn bool_key(conf: &NetConf, name: &str) -> Result<bool, CniError> {
    match key(conf, name) {
        None => Ok(false),
        Some(Value::Bool(b)) => Ok(*b),
        Some(v) => Err(CniError::config(format!(
            "invalid configuration: {name} must be true or false, got {v}"
        ))),
    }
}

impl Common {
    /// The shared keys of `conf`; an MTU below 0 (or beyond any link's) is refused here, one above the master's
    /// when the master is looked up.
    pub fn from_conf(conf: &NetConf) -> Result<Self, CniError> {
        let master = str_key(conf, "master")?;
        let mtu = int_key(conf, "mtu")?;
        let mtu = u32::try_from(mtu)
            .map_err(|_| CniError::config(format!("invalid MTU {mtu}, must be [0, master MTU]")))?;
        Ok(Self {
            master: (!master.is_empty()).then_some(master),
            mtu,
            link_in_container: bool_key(conf, "linkInContainer")?,
            ipam_type: attach::ipam_type(conf)?,
        })
    }
}

/// Parses a MAC address as the reference takes it (`aa:bb:cc:dd:ee:ff` or `aa-bb-cc-dd-ee-ff`); a group
/// address is refused too (the kernel would refuse it later, after IPAM).
pub fn parse_mac(s: &str) -> Option<Mac> {
    let m = Mac::parse(&s.replace('-', ":"))?;
    (!m.is_multicast() && !m.is_zero()).then_some(m)
}

/// Where the addresses of the attachment come from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Addressing {
    /// IPAM if configured, else none: a layer-2 attachment (macvlan).
    IpamOrNone,
    /// IPAM if configured, else the previous result's addresses in a chain (ipvlan).
    IpamOrPrevResult,
}

/// One sub-interface plugin's request.
#[derive(Debug, Clone)]
pub struct Sub<'a> {
    /// The shared keys.
    pub common: &'a Common,
    /// Kind and its settings.
    pub kind: SublinkKind,
    /// The MAC to give it.
    pub mac: Option<Mac>,
    /// Where addresses come from.
    pub addressing: Addressing,
    /// Without `master`, take the previous result's single interface (ipvlan in a chain).
    pub chained_master: bool,
}

/// The temporary name of the attachment's sub-interface: [`TMP_PREFIX`] and 8 hex digits of an FNV-1a hash of
/// the container ID and interface name.
pub fn tmp_name(args: &CmdArgs) -> String {
    let mut h: u32 = 0x811c_9dc5;
    for b in args
        .container_id
        .bytes()
        .chain([0u8])
        .chain(args.ifname.bytes())
    {
        h ^= u32::from(b);
        h = h.wrapping_mul(0x0100_0193);
    }
    format!("{TMP_PREFIX}{h:08x}")
}

/// The interface of the first default route of the main table (IPv4 first), as the reference picks it.
async fn default_route_interface(nl: &Netlink, where_: &str) -> Result<String, CniError> {
    for v6 in [false, true] {
        for r in nl.routes(v6).await? {
            if r.dst.prefix_len() != 0 || !matches!(r.table, None | Some(254)) {
                continue;
            }
            let Some(oif) = r.oif else { continue };
            if let Some(l) = nl.link_by_index(oif).await? {
                return Ok(l.name);
            }
        }
    }
    Err(CniError::config(format!(
        "no master given and no default route interface found in the {where_} namespace"
    )))
}

/// The master's name: `master`, or the previous result's single interface (ipvlan in a chain), or the
/// default route's interface.
async fn master_name(
    sub: &Sub<'_>,
    conf: &NetConf,
    nl: &Netlink,
    where_: &str,
) -> Result<String, CniError> {
    if let Some(m) = &sub.common.master {
        return Ok(m.clone());
    }
    if sub.chained_master {
        if let Some(prev) = conf.prev()? {
            return chained_master(&prev);
        }
    }
    default_route_interface(nl, where_).await
}

/// In a chain without `master`: the previous result's interface, which must be the only one and named.
fn chained_master(prev: &CniResult) -> Result<String, CniError> {
    match prev.interfaces.as_slice() {
        [i] if !i.name.is_empty() => Ok(i.name.clone()),
        _ => Err(CniError::config(
            "chained master failure: prevResult lacks a single named interface",
        )),
    }
}

/// The master link, in the namespace the sub-interface is made in; a missing one is a configuration error
/// naming it.
async fn lookup_master(
    sub: &Sub<'_>,
    conf: &NetConf,
    nl: &Netlink,
    where_: &str,
) -> Result<Link, CniError> {
    let name = master_name(sub, conf, nl, where_).await?;
    nl.link_by_name(&name).await?.ok_or_else(|| {
        CniError::config(format!(
            "failed to lookup master \"{name}\": no such interface in the {where_} namespace"
        ))
    })
}

fn where_name(c: &Common) -> &'static str {
    if c.link_in_container {
        "pod"
    } else {
        "host"
    }
}

/// A sub-interface plugin's settings (macvlan, ipvlan, vlan): the shared keys, and the link a verb makes or
/// checks. Its table row is `main_row!` over [`verbs`], so the three plugins hold only their keys.
pub trait SubConf {
    /// The keys every sub-interface plugin has.
    fn common(&self) -> &Common;
    /// The link to make (`for_add`: CNI_ARGS may choose its MAC) or to check.
    fn sub(&self, args: &CmdArgs, for_add: bool) -> Result<Sub<'_>, CniError>;
}

/// The verbs of a sub-interface plugin's table row, for any [`SubConf`].
pub mod verbs {
    use super::SubConf;
    use crate::error::CniError;
    use crate::plugin::Ctx;
    use crate::skel::CmdArgs;
    use crate::types::{CniResult, NetConf};

    pub async fn add<C: SubConf>(
        ctx: &Ctx<'_>,
        args: &CmdArgs,
        conf: &NetConf,
        c: &C,
    ) -> Result<CniResult, CniError> {
        super::add(ctx, args, conf, &c.sub(args, true)?).await
    }

    pub async fn del<C: SubConf>(
        ctx: &Ctx<'_>,
        args: &CmdArgs,
        _conf: &NetConf,
        c: &C,
    ) -> Result<(), CniError> {
        super::del(ctx, args, c.common()).await
    }

    pub async fn check<C: SubConf>(
        ctx: &Ctx<'_>,
        args: &CmdArgs,
        conf: &NetConf,
        c: &C,
    ) -> Result<(), CniError> {
        super::check(ctx, args, conf, &c.sub(args, false)?).await
    }

    /// STATUS: IPAM's, or ready without one.
    pub async fn status<C: SubConf>(
        ctx: &Ctx<'_>,
        args: &CmdArgs,
        _conf: &NetConf,
        c: &C,
    ) -> Result<(), CniError> {
        crate::attach::ipam_status(ctx, args, c.common().ipam_type.as_deref()).await
    }
}

/// ADD: the sub-interface in the pod, configured; the result.
pub async fn add(
    ctx: &Ctx<'_>,
    args: &CmdArgs,
    conf: &NetConf,
    sub: &Sub<'_>,
) -> Result<CniResult, CniError> {
    let ns = attach::open_netns(&args.netns)?;
    let host = Netlink::current()?;
    let pod = Netlink::in_netns(&ns)?;
    let c = sub.common;
    let maker = if c.link_in_container { &pod } else { &host };
    let master = lookup_master(sub, conf, maker, where_name(c)).await?;
    if c.mtu > master.mtu {
        return Err(CniError::config(format!(
            "invalid MTU {}, must be [0, master MTU({})]",
            c.mtu, master.mtu
        )));
    }
    // Addresses from a chain's previous result (ipvlan without IPAM), read before anything is made.
    let prev_ips = match (sub.addressing, &c.ipam_type) {
        (Addressing::IpamOrPrevResult, None) => {
            let p = conf.prev()?.filter(|p| !p.ips.is_empty());
            if p.is_none() {
                return Err(CniError::config(
                    "no IPAM plugin (ipam.type) and no addresses in prevResult to configure",
                ));
            }
            p
        }
        _ => None,
    };
    if pod.link_by_name(&args.ifname).await?.is_some() {
        return Err(CniError::internal(format!(
            "the pod already has an interface named {}",
            args.ifname
        )));
    }
    let tmp = tmp_name(args);
    // Left by an ADD of this attachment killed before its rename.
    remove_tmp(&pod, &tmp).await?;
    maker
        .create_sublink(&SublinkSpec {
            name: &tmp,
            master: master.index,
            kind: sub.kind,
            mtu: (c.mtu != 0).then_some(c.mtu),
            mac: sub.mac,
            netns_fd: (!c.link_in_container).then(|| ns.raw_fd()),
        })
        .await
        .map_err(|e| match e {
            kernel::Error::Conflict(m) => CniError::internal(m),
            e => CniError::internal(format!("failed to create {}: {e}", sub.kind.name())),
        })?;
    let link = match rename_into_place(&pod, &tmp, &args.ifname, sub).await {
        Ok(l) => l,
        Err(e) => {
            let mut f = Failures::new();
            f.step("temporary link", remove_tmp(&pod, &tmp).await);
            return Err(f.add_to(e));
        }
    };
    match configure(ctx, args, conf, sub, &ns, &pod, &link, prev_ips).await {
        Ok(r) => Ok(r),
        Err(e) => {
            let mut f = Failures::new();
            f.step(
                "pod interface",
                pod.delete_link(link.index).await.map_err(CniError::from),
            );
            Err(f.add_to(e))
        }
    }
}

/// Deletes the link named `tmp` in the pod, if there is one.
async fn remove_tmp(pod: &Netlink, tmp: &str) -> Result<(), CniError> {
    if let Some(l) = pod.link_by_name(tmp).await? {
        pod.delete_link(l.index).await?;
    }
    Ok(())
}

async fn rename_into_place(
    pod: &Netlink,
    tmp: &str,
    ifname: &str,
    sub: &Sub<'_>,
) -> Result<Link, CniError> {
    let l = pod.link_by_name(tmp).await?.ok_or_else(|| {
        CniError::internal(format!(
            "{} {tmp} not in the pod after creation",
            sub.kind.name()
        ))
    })?;
    pod.rename(l.index, ifname).await.map_err(|e| {
        CniError::internal(format!(
            "failed to rename {} to \"{ifname}\": {e}",
            sub.kind.name()
        ))
    })?;
    pod.link_by_index(l.index).await?.ok_or_else(|| {
        CniError::internal(format!(
            "failed to refetch {} \"{ifname}\"",
            sub.kind.name()
        ))
    })
}

/// IPAM (undone on failure) and the pod interface's addresses, or just the link up without addresses.
#[allow(clippy::too_many_arguments)]
async fn configure(
    ctx: &Ctx<'_>,
    args: &CmdArgs,
    conf: &NetConf,
    sub: &Sub<'_>,
    ns: &Netns,
    pod: &Netlink,
    link: &Link,
    prev: Option<CniResult>,
) -> Result<CniResult, CniError> {
    let mut result = CniResult {
        cni_version: conf.version().to_string(),
        interfaces: vec![attach::interface_of(link, Some(&args.netns))],
        ..Default::default()
    };
    let addressed = if let Some(t) = &sub.common.ipam_type {
        let r = attach::ipam_add(ctx, args, t).await?;
        result.ips = r.ips;
        result.routes = r.routes;
        if let Err(e) = address(ns, pod, link, args, &mut result).await {
            let mut f = Failures::new();
            f.step(format!("IPAM ({t})"), attach::ipam_del(ctx, args, t).await);
            return Err(f.add_to(e));
        }
        true
    } else if let Some(p) = prev {
        result.ips = p.ips;
        result.routes = p.routes;
        address(ns, pod, link, args, &mut result).await?;
        true
    } else {
        false
    };
    if !addressed {
        // Layer 2 only: the link up and nothing else.
        pod.set_up(link.index).await?;
    }
    // The configuration's DNS, not IPAM's, as the reference's.
    result.dns = conf.dns.clone().unwrap_or_default();
    Ok(result)
}

/// The result's addresses and routes on the pod interface, announced to the neighbours (`arp_notify`,
/// `ndisc_notify`: the kernel sends a gratuitous ARP / unsolicited neighbour advertisement when the link comes
/// up and its addresses change).
async fn address(
    ns: &Netns,
    pod: &Netlink,
    link: &Link,
    args: &CmdArgs,
    result: &mut CniResult,
) -> Result<(), CniError> {
    for ip in &mut result.ips {
        ip.interface = Some(CONTAINER_IF);
    }
    let name = args.ifname.clone();
    ns.run(move || {
        // Best effort, as the reference: without IPv6 the second knob does not exist.
        let _ = sysctl::set(&["net", "ipv4", "conf", &name, "arp_notify"], "1");
        let _ = sysctl::set(&["net", "ipv6", "conf", &name, "ndisc_notify"], "1");
    })?;
    // DAD stays on: the pod is on a real L2 segment where another node may hold the address.
    attach::configure_iface(ns, pod, link.index, &args.ifname, result, true).await?;
    if result.ips.iter().any(|i| i.address.addr().is_ipv6()) {
        // As the reference, ADD returns once DAD is done: the pod starts with addresses it can use (and a
        // duplicate is an error now rather than a silently dead address).
        attach::settle_addresses(pod, link.index, &args.ifname).await?;
    }
    Ok(())
}

/// DEL: IPAM's DEL, the pod interface and a half-made temporary link; each step whatever the others did, each
/// idempotent (pod namespace gone, link gone).
pub async fn del(ctx: &Ctx<'_>, args: &CmdArgs, c: &Common) -> Result<(), CniError> {
    let ns = attach::del_netns(&args.netns)?;
    let mut f = Failures::new();
    if let Some(t) = &c.ipam_type {
        f.step(format!("IPAM ({t})"), attach::ipam_del(ctx, args, t).await);
    }
    if let Some(ns) = &ns {
        f.step(
            "pod interface",
            attach::remove_pod_links(ns, &args.ifname).await,
        );
        let tmp = tmp_name(args);
        f.step(
            "temporary link",
            async {
                let pod = Netlink::in_netns(ns)?;
                remove_tmp(&pod, &tmp).await
            }
            .await,
        );
    }
    f.finish("DEL")
}

/// CHECK, as the reference: IPAM's CHECK, then the previous result names the pod interface in this
/// namespace, the master exists, the pod interface is of the kind with the configured mode / VLAN ID (and MTU
/// for vlan) and MAC, and holds the previous result's addresses and routes; also (beyond the reference) the
/// pod interface's master is that master.
pub async fn check(
    ctx: &Ctx<'_>,
    args: &CmdArgs,
    conf: &NetConf,
    sub: &Sub<'_>,
) -> Result<(), CniError> {
    let c = sub.common;
    let prev = attach::check_ipam_then_prev(ctx, args, conf, c.ipam_type.as_deref()).await?;
    let intf = attach::prev_pod_interface(&prev, args)?;
    let ns = attach::open_netns(&args.netns)?;
    let pod = Netlink::in_netns(&ns)?;
    let maker = if c.link_in_container {
        pod.clone()
    } else {
        Netlink::current()?
    };
    let master = lookup_master(sub, conf, &maker, where_name(c)).await?;
    let link = pod.link_by_name(&args.ifname).await?.ok_or_else(|| {
        CniError::internal(format!(
            "CHECK: container interface {} not found",
            args.ifname
        ))
    })?;
    let info = pod.sublink_info(link.index).await?.unwrap_or_default();
    check_kind(sub, &info, &link)?;
    // Stricter than the reference, which only looks the master up: the link must hang off it (IFLA_LINK is the
    // master's index in the master's namespace, the one it was looked up in).
    if info.master != Some(master.index) {
        return Err(CniError::internal(format!(
            "CHECK: {} is not a sub-interface of the master {}",
            args.ifname, master.name
        )));
    }
    if !intf.mac.is_empty() && link.mac.map(|m| m.to_string()).as_deref() != Some(&intf.mac) {
        return Err(CniError::internal(format!(
            "CHECK: interface {} MAC {} does not match the container's {}",
            args.ifname,
            intf.mac,
            link.mac.map(|m| m.to_string()).unwrap_or_default()
        )));
    }
    crate::attach::check_ips_and_routes(&pod, link.index, &args.ifname, &prev).await
}

/// The pod interface is of the configured kind and settings.
fn check_kind(sub: &Sub<'_>, info: &SublinkInfo, link: &Link) -> Result<(), CniError> {
    let name = sub.kind.name();
    if info.kind.as_deref() != Some(name) {
        return Err(CniError::internal(format!(
            "CHECK: container interface {} is not of type {name}",
            link.name
        )));
    }
    let mismatch = |what: &str, have: String, want: String| {
        Err(CniError::internal(format!(
            "CHECK: container {name} {what} {have} does not match the expected {want}"
        )))
    };
    match sub.kind {
        SublinkKind::Macvlan(m) if info.macvlan_mode != Some(m) => mismatch(
            "mode",
            info.macvlan_mode
                .map(|x| x.as_str())
                .unwrap_or("unknown")
                .into(),
            m.as_str().into(),
        ),
        SublinkKind::Ipvlan(m) if info.ipvlan_mode != Some(m) => mismatch(
            "mode",
            info.ipvlan_mode
                .map(|x| x.as_str())
                .unwrap_or("unknown")
                .into(),
            m.as_str().into(),
        ),
        SublinkKind::Vlan(id) if info.vlan_id != Some(id) => mismatch(
            "VLAN ID",
            info.vlan_id.map(|x| x.to_string()).unwrap_or_default(),
            id.to_string(),
        ),
        SublinkKind::Vlan(_) if sub.common.mtu != 0 && link.mtu != sub.common.mtu => {
            mismatch("MTU", link.mtu.to_string(), sub.common.mtu.to_string())
        }
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn conf(v: Value) -> NetConf {
        NetConf::parse(v.to_string().as_bytes()).unwrap()
    }

    #[test]
    fn common_keys() {
        let c = Common::from_conf(&conf(json!({"cniVersion": "1.0.0", "name": "n", "type": "macvlan",
            "master": "eth0", "mtu": 1400, "linkInContainer": true, "ipam": {"type": "host-local"}})))
        .unwrap();
        assert_eq!(c.master.as_deref(), Some("eth0"));
        assert_eq!((c.mtu, c.link_in_container), (1400, true));
        assert_eq!(c.ipam_type.as_deref(), Some("host-local"));
        let c = Common::from_conf(&conf(json!({"type": "macvlan", "master": ""}))).unwrap();
        assert_eq!(c, Common::default());
        for bad in [
            json!({"mtu": -1}),
            json!({"mtu": "1400"}),
            json!({"mtu": 1.5}),
            json!({"mtu": 5_000_000_000u64}),
            json!({"master": 3}),
            json!({"linkInContainer": "yes"}),
        ] {
            assert_eq!(
                Common::from_conf(&conf(bad.clone())).unwrap_err().code,
                7,
                "{bad}"
            );
        }
    }

    #[test]
    fn macs() {
        assert_eq!(
            parse_mac("0a:58:0a:f4:01:01")
                .map(|m| m.to_string())
                .as_deref(),
            Some("0a:58:0a:f4:01:01")
        );
        assert!(parse_mac("0A-58-0a-f4-01-01").is_some());
        assert!(parse_mac("01:00:5e:00:00:01").is_none());
        assert!(parse_mac("00:00:00:00:00:00").is_none());
        assert!(parse_mac("0a:58:0a:f4:01").is_none());
    }

    #[test]
    fn tmp_names_fit_and_differ() {
        let a = |c: &str, i: &str| CmdArgs {
            command: crate::skel::Command::Add,
            container_id: c.into(),
            netns: String::new(),
            ifname: i.into(),
            args: String::new(),
            path: String::new(),
            stdin: vec![],
        };
        let n = tmp_name(&a("c1", "eth0"));
        assert!(n.len() <= 15 && n.starts_with(TMP_PREFIX));
        assert_eq!(n, tmp_name(&a("c1", "eth0")));
        assert_ne!(n, tmp_name(&a("c1", "net1")));
        assert_ne!(tmp_name(&a("c1e", "th0")), tmp_name(&a("c1", "eth0")));
    }

    #[test]
    fn chained_master_is_the_single_named_interface() {
        let prev = |names: &[&str]| CniResult {
            interfaces: names
                .iter()
                .map(|n| crate::types::Interface {
                    name: n.to_string(),
                    ..Default::default()
                })
                .collect(),
            ..Default::default()
        };
        assert_eq!(chained_master(&prev(&["eth1"])).unwrap(), "eth1");
        for bad in [&[][..], &[""][..], &["a", "b"][..]] {
            assert_eq!(chained_master(&prev(bad)).unwrap_err().code, 7, "{bad:?}");
        }
    }

    proptest::proptest! {
        #[test]
        fn common_from_any_json_never_panics(mtu in proptest::prelude::any::<i64>(), m in ".{0,20}") {
            let _ = Common::from_conf(&conf(json!({"mtu": mtu, "master": m})));
        }

        #[test]
        fn parse_mac_never_panics(s in "[0-9a-fA-F:.+-]{0,20}") {
            let _ = parse_mac(&s);
        }
    }
}
