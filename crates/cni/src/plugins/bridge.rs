//! The `bridge` plugin: a veth pair from the pod to a host bridge (default `cni0`), addresses from IPAM, the
//! gateway on the bridge, optional masquerade.
//!
//! Differences from the reference plugin that an operator can see only as speed or robustness: the veth is made in
//! one netlink request with its peer created directly in the pod namespace and its host end already a bridge port;
//! a new bridge gets a fixed MAC at creation instead of being re-pinned on every ADD; no sleep waiting for the port
//! to come up (it is up at creation and the bridge has no STP); a failed ADD removes what it made.

use crate::attach;
use crate::error::{CniError, Failures};
use crate::plugin::{Ctx, Plugin};
use crate::skel::CmdArgs;
use crate::types::{CniResult, Interface, IpConfig, NetConf, Route};
use ipnet::IpNet;
use kernel::{ipmasq, spoofcheck};
use kernel::{sysctl, Link, Mac, Netlink, Netns};
use serde::Deserialize;
use serde_json::Value;
use std::net::IpAddr;

/// Index of the container interface in the result, as upstream reports it.
const CONTAINER_IF: usize = 2;

/// The bridge plugin's own configuration keys.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct BridgeConf {
    /// Bridge name.
    #[serde(default = "default_bridge")]
    pub bridge: String,
    /// Put the gateway address on the bridge.
    #[serde(default)]
    pub is_gateway: bool,
    /// Also add a default route via the gateway (implies `isGateway`).
    #[serde(default)]
    pub is_default_gateway: bool,
    /// Replace a different gateway address already on the bridge.
    #[serde(default)]
    pub force_address: bool,
    /// Masquerade traffic leaving the pod subnet.
    #[serde(default)]
    pub ip_masq: bool,
    /// `iptables` or `nftables`.
    #[serde(default)]
    pub ip_masq_backend: Option<String>,
    /// MTU of bridge and veth (0 = kernel default).
    #[serde(default)]
    pub mtu: u32,
    /// Hairpin mode on the host veth.
    #[serde(default)]
    pub hairpin_mode: bool,
    /// Promiscuous mode on the bridge.
    #[serde(default)]
    pub promisc_mode: bool,
    /// VLAN ID (0 = none): the pod's port is an access port of this VLAN (PVID, untagged).
    #[serde(default)]
    pub vlan: u16,
    /// Trunk VLANs (tagged) of the pod's port: `[{"id": N} | {"minID": A, "maxID": B}]`.
    #[serde(default)]
    pub vlan_trunk: Option<Vec<VlanTrunk>>,
    /// Keep the bridge's default VLAN (1) on the pod's port when `vlan`/`vlanTrunk` is set.
    #[serde(default = "default_true")]
    pub preserve_default_vlan: bool,
    /// Drop frames from the pod whose source MAC is not the pod interface's (nftables `bridge nat`).
    #[serde(default)]
    pub macspoofchk: bool,
    /// Keep IPv6 duplicate address detection on in the pod.
    #[serde(default)]
    pub enabledad: bool,
    /// The trunk VLAN IDs, sorted and without duplicates (from `vlanTrunk`).
    #[serde(skip)]
    pub trunk_vids: Vec<u16>,
    /// The IPAM plugin (from `ipam.type`; `None` for a layer-2 attachment).
    #[serde(skip)]
    pub ipam_type: Option<String>,
}

/// One `vlanTrunk` entry: a single `id`, or a `minID`..=`maxID` range (or both).
#[derive(Debug, Clone, Deserialize)]
pub struct VlanTrunk {
    /// First VLAN of a range.
    #[serde(rename = "minID", default)]
    pub min_id: Option<i64>,
    /// Last VLAN of a range.
    #[serde(rename = "maxID", default)]
    pub max_id: Option<i64>,
    /// A single VLAN.
    #[serde(default)]
    pub id: Option<i64>,
}

fn default_bridge() -> String {
    "cni0".into()
}

fn default_true() -> bool {
    true
}

/// Expands `vlanTrunk` into sorted unique VLAN IDs, with the reference plugin's checks and messages.
pub fn collect_vlan_trunk(trunk: &[VlanTrunk]) -> Result<Vec<u16>, String> {
    let valid = |v: i64| (1..=4094).contains(&v);
    let mut set = std::collections::BTreeSet::new();
    for t in trunk {
        match (t.min_id, t.max_id) {
            (Some(lo), Some(hi)) => {
                if !valid(lo) {
                    return Err("incorrect trunk minID parameter".into());
                }
                if !valid(hi) {
                    return Err("incorrect trunk maxID parameter".into());
                }
                if hi < lo {
                    return Err("minID is greater than maxID in trunk parameter".into());
                }
                set.extend(lo..=hi);
            }
            (None, Some(_)) => {
                return Err(
                    "minID and maxID should be configured simultaneously, minID is missing".into(),
                )
            }
            (Some(_), None) => {
                return Err(
                    "minID and maxID should be configured simultaneously, maxID is missing".into(),
                )
            }
            (None, None) => {}
        }
        if let Some(id) = t.id {
            if !valid(id) {
                return Err("incorrect trunk id parameter".into());
            }
            set.insert(id);
        }
    }
    Ok(set.into_iter().map(|v| v as u16).collect())
}

impl BridgeConf {
    /// Whether the bridge filters by VLAN (created so when `vlan` or `vlanTrunk` is set).
    pub fn vlan_filtering(&self) -> bool {
        self.vlan != 0 || self.vlan_trunk.is_some()
    }

    /// Parses and validates the bridge keys of a configuration.
    pub fn from_conf(conf: &NetConf) -> Result<Self, CniError> {
        let mut c: BridgeConf = serde_json::from_value(Value::Object(conf.extra.clone()))
            .map_err(|e| CniError::config(format!("invalid bridge configuration: {e}")))?;
        if c.is_default_gateway {
            c.is_gateway = true;
        }
        if c.hairpin_mode && c.promisc_mode {
            return Err(CniError::config(
                "cannot set hairpin mode and promiscuous mode at the same time",
            ));
        }
        if c.vlan > 4094 {
            return Err(CniError::config(format!(
                "invalid VLAN ID {} (must be between 0 and 4094)",
                c.vlan
            )));
        }
        if let Some(t) = &c.vlan_trunk {
            c.trunk_vids = collect_vlan_trunk(t).map_err(CniError::config)?;
        }
        if c.vlan != 0 && !c.trunk_vids.is_empty() {
            return Err(CniError::config(
                "cannot set vlan and vlanTrunk at the same time",
            ));
        }
        kernel_ifname(&c.bridge, "bridge")?;
        c.ipam_type = attach::ipam_type(conf)?;
        attach::check_masq_backend(c.ip_masq_backend.as_deref())?;
        Ok(c)
    }
}

fn kernel_ifname(name: &str, key: &str) -> Result<(), CniError> {
    match crate::skel::ifname_problem(name) {
        None => Ok(()),
        Some(p) => Err(CniError::config(format!(
            "invalid {key} name \"{name}\": {p}"
        ))),
    }
}

fn mac_arg(args: &CmdArgs, conf: &NetConf) -> Result<Option<Mac>, CniError> {
    // Precedence as upstream: CNI_ARGS MAC, then args.cni.mac, then runtimeConfig.mac (the last one set wins).
    let mut mac = None;
    // An unknown key without IgnoreUnknown fails the ADD, as the reference's does, rather than dropping the MAC.
    // (IP is host-local's, accepted here too so that it can pass through to IPAM.)
    let cni_args = crate::args::CniArgs::parse(&args.args, &["MAC", "IP"])?;
    if let Some(m) = cni_args.get("MAC") {
        mac = Some(m.to_string());
    }
    if let Some(m) = conf
        .args
        .as_ref()
        .and_then(|a| a.pointer("/cni/mac"))
        .and_then(Value::as_str)
    {
        mac = Some(m.to_string());
    }
    if let Some(m) = conf
        .runtime_config
        .as_ref()
        .and_then(|r| r.get("mac"))
        .and_then(Value::as_str)
    {
        mac = Some(m.to_string());
    }
    match mac {
        None => Ok(None),
        Some(s) => Mac::parse(&s)
            .map(Some)
            .ok_or_else(|| CniError::config(format!("invalid MAC address \"{s}\""))),
    }
}

/// The bridge plugin's row of the plugin table. Every verb parses the bridge settings first (a bad one is a
/// config error whatever the command); IPAM is delegated through the context's executor.
pub const PLUGIN: Plugin = crate::plugin::main_row!("bridge", BridgeConf, gc: yes);

/// STATUS: IPAM's, when there is one.
async fn status(
    ctx: &Ctx<'_>,
    args: &CmdArgs,
    _conf: &NetConf,
    bc: &BridgeConf,
) -> Result<(), CniError> {
    attach::ipam_status(ctx, args, bc.ipam_type.as_deref()).await
}

/// What a partly done ADD has to undo.
struct Undo {
    ipam: Option<String>,
    /// The host end of the veth pair, by the random name only this ADD uses: set before the pair is made, so
    /// whatever happened to the pod end (the kernel may have named it differently), deleting this removes both.
    host_veth: Option<String>,
    spoofchk: bool,
}

async fn add(
    ctx: &Ctx<'_>,
    args: &CmdArgs,
    conf: &NetConf,
    bc: &BridgeConf,
) -> Result<CniResult, CniError> {
    let (ns, host, pod) = attach::open_for_add(args).await?;
    let mac = mac_arg(args, conf)?;
    let mut undo = Undo {
        ipam: None,
        host_veth: None,
        spoofchk: false,
    };
    match add_inner(ctx, args, conf, bc, &ns, &host, &pod, mac, &mut undo).await {
        Ok(r) => Ok(r),
        Err(e) => {
            // Leave nothing behind: the veth pair, the IP, the masquerade rules, each step whatever the others
            // did; what could not be undone is reported with the error (the runtime's DEL retries it).
            let mut f = Failures::new();
            // dhcp's release leaves through the pod interface: IPAM first then (see `del`).
            let ipam_first = undo.ipam.as_deref() == Some("dhcp");
            if ipam_first {
                if let Some(t) = &undo.ipam {
                    f.step(format!("IPAM ({t})"), attach::ipam_del(ctx, args, t).await);
                }
            }
            if let Some(hv) = &undo.host_veth {
                f.step("veth", attach::delete_host_veth(&host, hv).await);
            }
            if !ipam_first {
                if let Some(t) = &undo.ipam {
                    f.step(format!("IPAM ({t})"), attach::ipam_del(ctx, args, t).await);
                }
            }
            if bc.ip_masq {
                f.step("ipMasq", attach::masq_teardown(&conf.name, args));
            }
            if undo.spoofchk {
                f.step(
                    "macspoofchk",
                    spoofcheck::teardown(&args.container_id, &args.ifname).map_err(CniError::from),
                );
            }
            Err(f.add_to(e))
        }
    }
}

#[allow(clippy::too_many_arguments)]
async fn add_inner(
    ctx: &Ctx<'_>,
    args: &CmdArgs,
    conf: &NetConf,
    bc: &BridgeConf,
    ns: &Netns,
    host: &Netlink,
    pod: &Netlink,
    mac: Option<Mac>,
    undo: &mut Undo,
) -> Result<CniResult, CniError> {
    let mtu = (bc.mtu != 0).then_some(bc.mtu);
    let br = host
        .ensure_bridge(&bc.bridge, mtu, bc.promisc_mode, bc.vlan_filtering())
        .await?;

    let mut result = CniResult {
        cni_version: conf.version().to_string(),
        ..Default::default()
    };
    let host_name = attach::host_veth_name()?;
    undo.host_veth = Some(host_name.clone());
    let (hv, cv) = attach::create_veth_pair(
        host,
        pod,
        ns,
        &host_name,
        &args.ifname,
        mtu,
        mac,
        Some(br.index),
    )
    .await?;
    if bc.hairpin_mode {
        host.set_hairpin(hv.index, true).await?;
    }
    setup_port_vlans(
        host,
        hv.index,
        bc.vlan,
        &bc.trunk_vids,
        bc.preserve_default_vlan,
    )
    .await?;
    if bc.macspoofchk {
        let cmac = cv.mac.ok_or_else(|| {
            CniError::internal(format!("container veth {} has no MAC address", args.ifname))
        })?;
        undo.spoofchk = true;
        spoofcheck::setup(
            &host_name,
            &cmac.to_string(),
            &args.container_id,
            &args.ifname,
        )?;
    }
    // IPAM runs once the pod interface exists, as the reference's: the dhcp plugin's client runs on it.
    if let Some(t) = &bc.ipam_type {
        undo.ipam = Some(t.clone());
        let r = attach::ipam_add(ctx, args, t).await?;
        result.ips = r.ips;
        result.routes = r.routes;
        result.dns = r.dns;
    }
    let has_v6 = result.ips.iter().any(|i| i.address.addr().is_ipv6());
    if has_v6 {
        // Router advertisements on the host side would add addresses nobody asked for.
        let _ = sysctl::set(&["net", "ipv6", "conf", &host_name, "accept_ra"], "0");
    }

    // Gateways: from IPAM, else the subnet's first address when the bridge is the gateway.
    for ip in &mut result.ips {
        ip.interface = Some(CONTAINER_IF);
        if ip.gateway.is_none() && bc.is_gateway {
            ip.gateway = first_host(ip.address);
        }
    }
    if bc.is_default_gateway {
        for v6 in [false, true] {
            let Some(gw) = result
                .ips
                .iter()
                .filter(|i| i.address.addr().is_ipv6() == v6)
                .find_map(|i| i.gateway)
            else {
                continue;
            };
            let has_default = result
                .routes
                .iter()
                .any(|r| r.dst.prefix_len() == 0 && r.dst.addr().is_ipv6() == v6 && r.gw.is_some());
            if !has_default {
                let dst: IpNet = if v6 { "::/0" } else { "0.0.0.0/0" }
                    .parse()
                    .map_err(|_| CniError::internal("default route"))?;
                result.routes.push(Route::new(dst, Some(gw)));
            }
        }
    }

    attach::configure_iface(ns, pod, cv.index, &args.ifname, &result, bc.enabledad).await?;

    let mut vlan_if: Option<Link> = None;
    if bc.is_gateway {
        for ip in &result.ips {
            if let Some(gw) = ip.gateway {
                let want = IpNet::new(gw, ip.address.prefix_len())
                    .map_err(|e| CniError::internal(e.to_string()))?;
                // With a VLAN the gateway lives on `<bridge>.<vlan>`, the host end of a veth whose other end is an
                // access port of that VLAN on the bridge (as the reference plugin lays it out).
                let gw_link = if bc.vlan != 0 {
                    if vlan_if.is_none() {
                        vlan_if = Some(ensure_vlan_interface(host, &br, bc).await?);
                    }
                    vlan_if.clone().unwrap_or_default()
                } else {
                    br.clone()
                };
                ensure_gateway_addr(host, &gw_link, want, bc.force_address).await?;
            }
        }
        let (v4, v6) = (
            result.ips.iter().any(|i| i.address.addr().is_ipv4()),
            has_v6,
        );
        if v4 {
            sysctl::enable_forwarding(false)?;
        }
        if v6 {
            sysctl::enable_forwarding(true)?;
        }
    }

    if bc.ip_masq {
        let nets: Vec<IpNet> = result.ips.iter().map(|i| i.address).collect();
        attach::masq_setup(bc.ip_masq_backend.as_deref(), &conf.name, args, &nets)?;
    }

    result.interfaces = vec![
        Interface {
            name: br.name.clone(),
            mac: br.mac.map(|m| m.to_string()).unwrap_or_default(),
            ..Default::default()
        },
        attach::interface_of(&hv, None),
        attach::interface_of(&cv, Some(&args.netns)),
    ];
    if let Some(v) = &vlan_if {
        result.interfaces.push(Interface {
            name: v.name.clone(),
            mac: v.mac.map(|m| m.to_string()).unwrap_or_default(),
            ..Default::default()
        });
    }
    attach::dns_from_conf(&mut result, conf);
    Ok(result)
}

/// VLAN membership of a new bridge port, as the reference plugin sets it: without `preserveDefaultVlan` the
/// port's existing VLANs (the bridge default, 1) go; `vlan` becomes its PVID and egresses untagged; trunk VLANs are
/// added tagged.
async fn setup_port_vlans(
    host: &Netlink,
    index: u32,
    vlan: u16,
    trunk: &[u16],
    preserve_default: bool,
) -> Result<(), CniError> {
    if vlan == 0 && trunk.is_empty() {
        return Ok(());
    }
    if !preserve_default {
        for e in host.bridge_vlans(index).await? {
            host.bridge_vlan_del(index, e.vid, false).await?;
        }
    }
    if vlan != 0 {
        host.bridge_vlan_add(index, vlan, true, true, false).await?;
    }
    for &v in trunk {
        host.bridge_vlan_add(index, v, false, false, false).await?;
    }
    Ok(())
}

/// The gateway interface `<bridge>.<vlan>`: made once per bridge and VLAN as a veth pair in the host namespace,
/// `<bridge>.<vlan>` holding the gateway address and its peer an access port of the VLAN on the bridge.
async fn ensure_vlan_interface(
    host: &Netlink,
    br: &Link,
    bc: &BridgeConf,
) -> Result<Link, CniError> {
    let name = format!("{}.{}", br.name, bc.vlan);
    if let Some(l) = host.link_by_name(&name).await? {
        return Ok(l);
    }
    let here = Netns::current()?;
    let port = attach::host_veth_name()?;
    match host
        .create_veth(&kernel::link::VethSpec {
            host_name: &port,
            peer_name: &name,
            peer_netns_fd: here.raw_fd(),
            mtu: (br.mtu != 0).then_some(br.mtu),
            peer_mac: None,
            controller: Some(br.index),
        })
        .await
    {
        Ok(()) => {}
        // A concurrent ADD on the same VLAN made it first.
        Err(kernel::Error::Conflict(m)) => {
            return host
                .link_by_name(&name)
                .await?
                .ok_or_else(|| CniError::internal(m));
        }
        Err(e) => return Err(e.into()),
    }
    let configure = async {
        let pl = host
            .link_by_name(&port)
            .await?
            .ok_or_else(|| CniError::internal(format!("veth {port} vanished after creation")))?;
        let _ = sysctl::set(&["net", "ipv6", "conf", &port, "accept_ra"], "0");
        setup_port_vlans(host, pl.index, bc.vlan, &[], bc.preserve_default_vlan).await?;
        let l = host
            .link_by_name(&name)
            .await?
            .ok_or_else(|| CniError::internal(format!("{name} vanished after creation")))?;
        host.set_up(l.index).await?;
        Ok(l)
    };
    match configure.await {
        Ok(l) => Ok(l),
        Err(e) => {
            // Half made, the pair would be taken for the finished gateway by every later ADD: remove it, so the
            // next ADD makes it again.
            let mut f = Failures::new();
            let r = async {
                if let Some(p) = host.link_by_name(&port).await? {
                    host.delete_link(p.index).await?;
                }
                Ok::<(), kernel::Error>(())
            };
            f.step(format!("half-made {name}"), r.await.map_err(CniError::from));
            Err(f.add_to(e))
        }
    }
}

/// The first host address of a subnet (network + 1), the conventional gateway.
pub fn first_host(net: IpNet) -> Option<IpAddr> {
    match net.trunc() {
        IpNet::V4(n) => u32::from(n.network())
            .checked_add(1)
            .map(|v| IpAddr::V4(v.into())),
        IpNet::V6(n) => u128::from(n.network())
            .checked_add(1)
            .map(|v| IpAddr::V6(v.into())),
    }
}

async fn ensure_gateway_addr(
    host: &Netlink,
    br: &Link,
    want: IpNet,
    force: bool,
) -> Result<(), CniError> {
    let existing = host.addresses(br.index).await?;
    for a in existing
        .iter()
        .filter(|a| a.net.addr().is_ipv4() == want.addr().is_ipv4())
    {
        if a.net == want {
            return Ok(());
        }
        if want.addr().is_ipv6() && !(a.net.contains(&want.addr()) || want.contains(&a.net.addr()))
        {
            // A bridge may carry several unrelated IPv6 addresses (link-local among them).
            continue;
        }
        if !force {
            return Err(CniError::internal(format!(
                "\"{}\" already has an IP address different from {want} ({}); set forceAddress to replace it",
                br.name, a.net
            )));
        }
        host.delete_address(a).await?;
    }
    host.add_address(br.index, want).await?;
    Ok(())
}

async fn del(
    ctx: &Ctx<'_>,
    args: &CmdArgs,
    conf: &NetConf,
    bc: &BridgeConf,
) -> Result<(), CniError> {
    let ns = attach::del_netns(&args.netns)?;
    // Every step runs whatever happened to the others, so one failure leaves as little as possible behind for
    // the runtime's retry; each step is idempotent.
    let mut f = Failures::new();
    // IPAM goes after the pod interface, as the reference's (no address handed out again while the old interface
    // still holds it), except dhcp: its DHCPRELEASE leaves through the pod interface, so it must still be there.
    let ipam_first = bc.ipam_type.as_deref() == Some("dhcp");
    let ipam_del = || async {
        match &bc.ipam_type {
            Some(t) => ctx
                .delegate(t, args, args.stdin.clone())
                .await
                .map_err(|e| (t.clone(), e))
                .map(|_| ()),
            None => Ok(()),
        }
    };
    if ipam_first {
        if let Err((t, e)) = ipam_del().await {
            f.step(format!("IPAM ({t})"), Err::<(), _>(e));
        }
    }
    if let Some(ns) = &ns {
        f.step(
            "pod interface",
            attach::remove_pod_links(ns, &args.ifname).await,
        );
    }
    if !ipam_first {
        if let Err((t, e)) = ipam_del().await {
            f.step(format!("IPAM ({t})"), Err::<(), _>(e));
        }
    }
    if bc.macspoofchk {
        // Keyed by the attachment, so it goes even when the interface (and its namespace) already went.
        f.step(
            "macspoofchk",
            spoofcheck::teardown(&args.container_id, &args.ifname).map_err(CniError::from),
        );
    }
    if bc.ip_masq {
        f.step("ipMasq", attach::masq_teardown(&conf.name, args));
    }
    f.finish("DEL")
}

async fn check(
    ctx: &Ctx<'_>,
    args: &CmdArgs,
    conf: &NetConf,
    bc: &BridgeConf,
) -> Result<(), CniError> {
    if let Some(t) = &bc.ipam_type {
        ctx.delegate(t, args, args.stdin.clone()).await?;
    }
    let prev = conf
        .prev()?
        .ok_or_else(|| CniError::config("CHECK: required prevResult missing"))?;
    let host = Netlink::current()?;
    let br = host
        .link_by_name(&bc.bridge)
        .await?
        .ok_or_else(|| CniError::internal(format!("CHECK: bridge {} not found", bc.bridge)))?;
    if br.kind.as_deref() != Some("bridge") {
        return Err(CniError::internal(format!(
            "CHECK: {} is not a bridge",
            bc.bridge
        )));
    }
    if let Some(i) = prev
        .interfaces
        .iter()
        .find(|i| i.name == bc.bridge && !i.mac.is_empty())
    {
        if br.mac.map(|m| m.to_string()) != Some(i.mac.to_lowercase()) {
            return Err(CniError::internal(format!(
                "CHECK: bridge {} MAC differs from the result",
                bc.bridge
            )));
        }
    }
    let (_ns, pod, cv) = attach::check_pod_veth(args).await?;
    if let Some(i) = prev
        .interfaces
        .iter()
        .find(|i| i.name == args.ifname && i.sandbox == args.netns)
    {
        if !i.mac.is_empty() && cv.mac.map(|m| m.to_string()) != Some(i.mac.to_lowercase()) {
            return Err(CniError::internal(format!(
                "CHECK: {} MAC differs from the result",
                args.ifname
            )));
        }
    }
    let peer = match cv.peer_index {
        Some(p) => host.link_by_index(p).await?,
        None => None,
    };
    match peer {
        Some(p) if p.controller == Some(br.index) => {}
        _ => {
            return Err(CniError::internal(format!(
                "CHECK: the host end of {} is not a port of {}",
                args.ifname, bc.bridge
            )))
        }
    }
    let have = pod.addresses(cv.index).await?;
    for ip in prev.ips.iter().filter(|i| {
        i.interface.is_none_or(|x| {
            prev.interfaces
                .get(x)
                .is_some_and(|f| f.name == args.ifname)
        })
    }) {
        if !have.iter().any(|a| a.net == ip.address) {
            return Err(CniError::internal(format!(
                "CHECK: address {} missing on {}",
                ip.address, args.ifname
            )));
        }
    }
    for v6 in [false, true] {
        let want: Vec<&Route> = prev
            .routes
            .iter()
            .filter(|r| r.dst.addr().is_ipv6() == v6)
            .collect();
        if want.is_empty() {
            continue;
        }
        let routes = pod.routes(v6).await?;
        for r in want {
            if !routes
                .iter()
                .any(|k| k.dst == r.dst.trunc() && (r.gw.is_none() || k.gateway == r.gw))
            {
                return Err(CniError::internal(format!(
                    "CHECK: route to {} missing in the pod",
                    r.dst
                )));
            }
        }
    }
    let _: &[IpConfig] = &prev.ips;
    Ok(())
}

async fn gc(
    ctx: &Ctx<'_>,
    args: &CmdArgs,
    conf: &NetConf,
    bc: &BridgeConf,
) -> Result<(), CniError> {
    let mut f = Failures::new();
    if let Some(t) = &bc.ipam_type {
        f.step(
            format!("IPAM ({t})"),
            ctx.delegate(t, args, args.stdin.clone()).await,
        );
    }
    if bc.ip_masq {
        let valid: Vec<(String, String)> = conf
            .valid_attachments()?
            .into_iter()
            .map(|a| (a.container_id, a.ifname))
            .collect();
        f.step(
            "ipMasq",
            ipmasq::gc_ip_masq(&conf.name, &valid).map_err(CniError::from),
        );
    }
    f.finish("GC")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn conf(extra: &str) -> NetConf {
        NetConf::parse(
            format!(r#"{{"cniVersion":"1.0.0","name":"n","type":"bridge"{extra}}}"#).as_bytes(),
        )
        .unwrap()
    }

    #[test]
    fn defaults_and_validation() {
        let c = BridgeConf::from_conf(&conf("")).unwrap();
        assert_eq!(c.bridge, "cni0");
        assert!(!c.is_gateway);
        let c = BridgeConf::from_conf(&conf(r#","isDefaultGateway":true"#)).unwrap();
        assert!(c.is_gateway);
        assert_eq!(
            BridgeConf::from_conf(&conf(r#","hairpinMode":true,"promiscMode":true"#))
                .unwrap_err()
                .code,
            7
        );
        assert_eq!(
            BridgeConf::from_conf(&conf(r#","mtu":"big""#))
                .unwrap_err()
                .code,
            7
        );
        assert_eq!(
            BridgeConf::from_conf(&conf(r#","vlan":5000"#))
                .unwrap_err()
                .code,
            7
        );
        assert_eq!(
            BridgeConf::from_conf(&conf(r#","bridge":"way-too-long-bridge-name""#))
                .unwrap_err()
                .code,
            7
        );
        for ipam in [r#"1"#, r#""x""#, r#"[]"#, r#"true"#, r#"{"type":1}"#] {
            let e = BridgeConf::from_conf(&conf(&format!(r#","ipam":{ipam}"#))).unwrap_err();
            assert_eq!(e.code, 7, "{ipam}");
        }
        for ipam in [r#"null"#, r#"{}"#, r#"{"type":""}"#] {
            let c = BridgeConf::from_conf(&conf(&format!(r#","ipam":{ipam}"#))).unwrap();
            assert_eq!(c.ipam_type, None, "{ipam}");
        }
        let c = BridgeConf::from_conf(&conf(r#","ipam":{"type":"host-local"}"#)).unwrap();
        assert_eq!(c.ipam_type.as_deref(), Some("host-local"));
        // The kernel would expand the template, so the bridge would not be called what the config says.
        assert_eq!(
            BridgeConf::from_conf(&conf(r#","bridge":"cni%d""#))
                .unwrap_err()
                .code,
            7
        );
    }

    #[test]
    fn vlan_options() {
        let c = BridgeConf::from_conf(&conf(r#","vlan":100"#)).unwrap();
        assert_eq!(c.vlan, 100);
        assert!(c.preserve_default_vlan && c.vlan_filtering());
        let c = BridgeConf::from_conf(&conf(r#","preserveDefaultVlan":false"#)).unwrap();
        assert!(!c.preserve_default_vlan && !c.vlan_filtering());
        let c = BridgeConf::from_conf(&conf(
            r#","vlanTrunk":[{"id":42},{"minID":10,"maxID":12},{"id":11}]"#,
        ))
        .unwrap();
        assert_eq!(c.trunk_vids, [10, 11, 12, 42]);
        assert!(c.vlan_filtering());
        // An empty trunk list still makes a filtering bridge, as upstream.
        let c = BridgeConf::from_conf(&conf(r#","vlanTrunk":[]"#)).unwrap();
        assert!(c.trunk_vids.is_empty() && c.vlan_filtering());
        for (extra, msg) in [
            (
                r#","vlan":5,"vlanTrunk":[{"id":7}]"#,
                "cannot set vlan and vlanTrunk",
            ),
            (
                r#","vlanTrunk":[{"id":4095}]"#,
                "incorrect trunk id parameter",
            ),
            (
                r#","vlanTrunk":[{"minID":0,"maxID":3}]"#,
                "incorrect trunk minID",
            ),
            (
                r#","vlanTrunk":[{"minID":1,"maxID":5000}]"#,
                "incorrect trunk maxID",
            ),
            (r#","vlanTrunk":[{"maxID":3}]"#, "minID is missing"),
            (r#","vlanTrunk":[{"minID":3}]"#, "maxID is missing"),
            (
                r#","vlanTrunk":[{"minID":4,"maxID":3}]"#,
                "minID is greater than maxID",
            ),
        ] {
            let e = BridgeConf::from_conf(&conf(extra)).unwrap_err();
            assert_eq!(e.code, 7, "{extra}");
            assert!(e.to_string().contains(msg), "{extra}: {e}");
        }
    }

    #[test]
    fn gateway_is_first_host() {
        assert_eq!(
            first_host("10.244.1.7/24".parse().unwrap()),
            Some("10.244.1.1".parse().unwrap())
        );
        assert_eq!(
            first_host("fd00::5/64".parse().unwrap()),
            Some("fd00::1".parse().unwrap())
        );
    }
}
