//! Steps every main plugin (bridge, ptp, macvlan, ...) takes the same way, written once: which IPAM plugin the
//! configuration names, the IPAM call and its undo, the pod namespace of an ADD and of a DEL, the host veth name,
//! configuring the pod's interface from an IPAM result (the reference's `ipam.ConfigureIface`), and removing the
//! attachment's interface from the pod on DEL.

use crate::error::{CniError, Failures, ERR_INVALID_ENV};
use crate::plugin::Ctx;
use crate::skel::{CmdArgs, Command};
use crate::types::{CniResult, Interface, NetConf};
use ipnet::IpNet;
use kernel::{ipmasq, sysctl, Link, Netlink, Netns};
use serde_json::Value;

/// IPAM ADD with the plugin of type `ipam`, given the caller's configuration: its result, which must hold at
/// least one address. On a later failure the caller undoes it with [`ipam_del`].
pub async fn ipam_add(ctx: &Ctx<'_>, args: &CmdArgs, ipam: &str) -> Result<CniResult, CniError> {
    let r = ctx
        .delegate(ipam, args, args.stdin.clone())
        .await?
        .ok_or_else(|| CniError::internal(format!("IPAM plugin {ipam} returned no result")))?;
    if r.ips.is_empty() {
        return Err(CniError::internal("IPAM plugin returned missing IP config"));
    }
    Ok(r)
}

/// STATUS of a plugin whose readiness is its IPAM plugin's (the reference's bridge and ptp): that plugin's
/// STATUS, or ready without one.
pub async fn ipam_status(
    ctx: &Ctx<'_>,
    args: &CmdArgs,
    ipam: Option<&str>,
) -> Result<(), CniError> {
    match ipam {
        Some(t) => ctx.delegate(t, args, args.stdin.clone()).await.map(|_| ()),
        None => Ok(()),
    }
}

/// IPAM DEL of the same attachment: the undo of [`ipam_add`] after a failed ADD.
pub async fn ipam_del(ctx: &Ctx<'_>, args: &CmdArgs, ipam: &str) -> Result<(), CniError> {
    let del = CmdArgs {
        command: Command::Del,
        ..args.clone()
    };
    ctx.delegate(ipam, &del, args.stdin.clone())
        .await
        .map(|_| ())
}

/// Configures the pod's interface `ifname` (index `index` in `pod`, the netlink handle of namespace `ns`) from
/// `result`: the sysctls (IPv6 enabled on it and on lo when an IPv6 address comes, DAD as `enable_dad` says,
/// `arp_notify`), every address, the link up, every route (without a gateway of its own, a route takes the
/// gateway of the first address of its family). The IPAM result's `interface` indexes are the caller's.
pub async fn configure_iface(
    ns: &Netns,
    pod: &Netlink,
    index: u32,
    ifname: &str,
    result: &CniResult,
    enable_dad: bool,
) -> Result<(), CniError> {
    let has_v6 = result.ips.iter().any(|i| i.address.addr().is_ipv6());
    // Per-namespace sysctls: on a thread inside the pod namespace.
    let name = ifname.to_string();
    ns.run(move || -> Result<(), kernel::Error> {
        if has_v6 {
            let _ = sysctl::set(&["net", "ipv6", "conf", "lo", "disable_ipv6"], "0");
            let _ = sysctl::set(&["net", "ipv6", "conf", &name, "disable_ipv6"], "0");
            let _ = sysctl::set(&["net", "ipv6", "conf", &name, "keep_addr_on_down"], "1");
            if enable_dad {
                let _ = sysctl::set(&["net", "ipv6", "conf", &name, "enhanced_dad"], "1");
                let _ = sysctl::set(&["net", "ipv6", "conf", &name, "accept_dad"], "1");
            } else {
                let _ = sysctl::set(&["net", "ipv6", "conf", &name, "accept_dad"], "0");
            }
        }
        sysctl::set(&["net", "ipv4", "conf", &name, "arp_notify"], "1")
    })??;
    for ip in &result.ips {
        pod.add_address(index, ip.address).await?;
    }
    pod.set_up(index).await?;
    for r in &result.routes {
        let gw = r.gw.or_else(|| {
            result
                .ips
                .iter()
                .find(|i| i.address.addr().is_ipv6() == r.dst.addr().is_ipv6())
                .and_then(|i| i.gateway)
        });
        let mut kr = kernel::route::Route::new(r.dst).dev(index);
        kr.gateway = gw;
        kr.priority = r.priority;
        kr.table = r.table;
        if let Some(s) = r.scope {
            kr.scope = s;
        }
        pod.add_route(&kr, false).await?;
    }
    Ok(())
}

/// How long [`settle_addresses`] waits for IPv6 duplicate address detection, as the reference's
/// `SettleAddresses`.
const SETTLE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(5);

/// Waits until no address of link `index` is tentative (IPv6 DAD still running, even with DAD off the kernel
/// clears the flag asynchronously after the link comes up): the kernel refuses a tentative address as a route's
/// source. A failed DAD (another node has the address) is an error naming it; so is a DAD still running after
/// 5 s.
pub async fn settle_addresses(pod: &Netlink, index: u32, ifname: &str) -> Result<(), CniError> {
    let deadline = std::time::Instant::now() + SETTLE_TIMEOUT;
    let mut nap = std::time::Duration::from_millis(1);
    loop {
        let addrs = pod.addresses(index).await?;
        if let Some(a) = addrs.iter().find(|a| a.dad_failed()) {
            return Err(CniError::internal(format!(
                "{ifname}: duplicate address detection failed for {}: another node has it",
                a.net
            )));
        }
        let Some(t) = addrs.iter().find(|a| a.tentative()) else {
            return Ok(());
        };
        if std::time::Instant::now() >= deadline {
            return Err(CniError::internal(format!(
                "{ifname}: {} still tentative (duplicate address detection) after {} s",
                t.net,
                SETTLE_TIMEOUT.as_secs()
            )));
        }
        tokio::time::sleep(nap).await;
        nap = (nap * 2).min(std::time::Duration::from_millis(50));
    }
}

/// The IPAM plugin to delegate to, from `ipam`: an object whose `type` is a string. Absent, `null`, `{}` or an
/// empty type mean none (a layer-2 attachment), as in the reference; anything else is a configuration error
/// rather than an attachment silently left without addresses.
pub fn ipam_type(conf: &NetConf) -> Result<Option<String>, CniError> {
    let ipam = match &conf.ipam {
        None | Some(Value::Null) => return Ok(None),
        Some(Value::Object(m)) => m,
        Some(v) => {
            return Err(CniError::config(format!(
                "invalid configuration: ipam must be an object, got {v}"
            )))
        }
    };
    match ipam.get("type") {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(t)) if t.is_empty() => Ok(None),
        Some(Value::String(t)) => Ok(Some(t.clone())),
        Some(v) => Err(CniError::config(format!(
            "invalid configuration: ipam.type must be a string, got {v}"
        ))),
    }
}

/// The pod namespace of an ADD or CHECK; code 4 when CNI_NETNS is not one.
pub fn open_netns(path: &str) -> Result<Netns, CniError> {
    Netns::open(path).map_err(|e| CniError::new(ERR_INVALID_ENV, format!("CNI_NETNS: {e}")))
}

/// A host veth name as the reference makes them: `veth` and 8 random hex digits.
pub fn host_veth_name() -> Result<String, CniError> {
    let mut b = [0u8; 4];
    getrandom::fill(&mut b).map_err(|e| CniError::internal(format!("random veth name: {e}")))?;
    Ok(format!(
        "veth{:02x}{:02x}{:02x}{:02x}",
        b[0], b[1], b[2], b[3]
    ))
}

/// The pod namespace of a DEL: `None` when CNI_NETNS is empty or the namespace is already gone (it took its
/// interfaces with it; the IP and rules are still to be freed). A CNI_NETNS that is not a namespace is a bad
/// request, refused before anything is released: the interface may still be up with its address in a namespace
/// we were not shown.
pub fn del_netns(netns: &str) -> Result<Option<Netns>, CniError> {
    if netns.is_empty() {
        return Ok(None);
    }
    match Netns::open(netns) {
        Ok(ns) => Ok(Some(ns)),
        Err(kernel::Error::NotFound(_)) => Ok(None),
        Err(e) => Err(CniError::new(ERR_INVALID_ENV, format!("CNI_NETNS: {e}"))),
    }
}

/// Prefix of the name a pod interface gets on DEL while its deletion is under way ([`remove_pod_link`]).
const TOMB_PREFIX: &str = "cnidel";

/// Removes the attachment's interface `ifname` from the pod namespace, and any interface a killed DEL left
/// renamed out of the way (nothing else in the pod is named so: the tombstone prefix is ours, and a link
/// carrying it was already condemned by the DEL that renamed it). One dump gives both, as one lookup by name
/// would cost the same.
pub async fn remove_pod_links(ns: &Netns, ifname: &str) -> Result<(), CniError> {
    let pod = Netlink::in_netns(ns)?;
    let mut f = Failures::new();
    for l in pod.links().await? {
        if l.name == ifname {
            f.step(ifname, remove_attachment_link(ns, &pod, &l).await);
        } else if l.name.starts_with(TOMB_PREFIX)
            && matches!(
                l.kind.as_deref(),
                Some("veth" | "macvlan" | "ipvlan" | "vlan")
            )
        {
            // Synchronously: this is the retry of a DEL that was killed, not the common path.
            f.step(
                l.name.clone(),
                pod.delete_link(l.index).await.map_err(CniError::from),
            );
        }
    }
    f.into_result()
}

async fn remove_attachment_link(ns: &Netns, pod: &Netlink, l: &Link) -> Result<(), CniError> {
    if l.loopback {
        return Err(CniError::new(
            ERR_INVALID_ENV,
            format!(
                "CNI_IFNAME {}: that is the pod's loopback interface, which a CNI plugin neither makes nor deletes",
                l.name
            ),
        ));
    }
    if l.kind.is_none() {
        // A physical device (moved in by another plugin): the kernel cannot delete it, and renaming it out of
        // the way would only break it.
        return Err(CniError::internal(format!(
            "{} in {} is not a virtual interface (a device moved into the pod), which cannot be deleted",
            l.name,
            ns.path().display()
        )));
    }
    if l.kind.as_deref() == Some("veth") {
        remove_pod_link(ns, pod, l.index).await
    } else {
        remove_pod_sublink(ns, pod, l.index).await
    }
}

/// How long [`remove_pod_sublink`] waits for the detached deletion to take the link's name before deleting it
/// itself (the kernel unlists a link a millisecond or so into its deletion; this bound only matters when the
/// detached process could not run).
const UNLIST_TIMEOUT: std::time::Duration = std::time::Duration::from_millis(200);

/// Removes a macvlan, ipvlan or vlan pod interface: a detached process deletes it, and we return once the kernel
/// has unlisted it (so traffic has stopped and the name is free for a new ADD), leaving the rest of the kernel's
/// teardown, its RCU wait, to that process. Not [`remove_pod_link`]'s down-and-rename: taking a macvlan down
/// waits for a full RCU grace period (`macvlan_stop` synchronises its hash removal unless the device is being
/// dismantled), 15-20 ms with the rtnl lock held, which serialises every concurrent DEL on the node. Killed
/// before the deletion, the link keeps its name and the retried DEL removes it.
async fn remove_pod_sublink(ns: &Netns, pod: &Netlink, index: u32) -> Result<(), CniError> {
    if kernel::link::delete_link_detached(ns, index).is_ok() {
        let deadline = std::time::Instant::now() + UNLIST_TIMEOUT;
        let mut nap = std::time::Duration::from_micros(200);
        while std::time::Instant::now() < deadline {
            if pod.link_by_index(index).await?.is_none() {
                return Ok(());
            }
            tokio::time::sleep(nap).await;
            nap = (nap * 2).min(std::time::Duration::from_millis(10));
        }
    }
    pod.delete_link(index).await?;
    Ok(())
}

/// Takes the pod's interface down and renames it out of the way at once (so traffic stops and the name is free
/// for a new ADD), then leaves the slow kernel teardown of the pair to a detached process. Killed after the
/// rename, the retried DEL recognises the link by its tombstone prefix ([`remove_pod_links`]).
async fn remove_pod_link(ns: &Netns, pod: &Netlink, index: u32) -> Result<(), CniError> {
    pod.set_down(index).await?;
    let tomb = host_veth_name()?.replacen("veth", TOMB_PREFIX, 1);
    if pod.rename(index, &tomb).await.is_ok()
        && kernel::link::delete_link_detached(ns, index).is_ok()
    {
        return Ok(());
    }
    pod.delete_link(index).await?;
    Ok(())
}

/// Makes the attachment's veth pair: the host end `host_name` (a fresh [`host_veth_name`], which the caller keeps
/// for its undo before this runs, so whatever the kernel did to the pod end, deleting the host end removes both),
/// the pod end `ifname` in `ns`, with the MTU, the pod end's MAC and the bridge given. Both ends as the kernel
/// made them.
#[allow(clippy::too_many_arguments)]
pub async fn create_veth_pair(
    host: &Netlink,
    pod: &Netlink,
    ns: &Netns,
    host_name: &str,
    ifname: &str,
    mtu: Option<u32>,
    mac: Option<kernel::Mac>,
    controller: Option<u32>,
) -> Result<(Link, Link), CniError> {
    host.create_veth(&kernel::link::VethSpec {
        host_name,
        peer_name: ifname,
        peer_netns_fd: ns.raw_fd(),
        mtu,
        peer_mac: mac,
        controller,
    })
    .await
    .map_err(|e| match e {
        kernel::Error::Conflict(m) => CniError::internal(m),
        e => e.into(),
    })?;
    let hv = host.link_by_name(host_name).await?.ok_or_else(|| {
        CniError::internal(format!("host veth {host_name} vanished after creation"))
    })?;
    let cv = pod.link_by_name(ifname).await?.ok_or_else(|| {
        CniError::internal(format!("container veth {ifname} vanished after creation"))
    })?;
    Ok((hv, cv))
}

/// The undo of [`create_veth_pair`] after a failed ADD: deletes the host end, which takes the pod end with it;
/// gone already is done.
pub async fn delete_host_veth(host: &Netlink, name: &str) -> Result<(), CniError> {
    if let Some(l) = host.link_by_name(name).await? {
        host.delete_link(l.index).await?;
    }
    Ok(())
}

/// Refuses an `ipMasqBackend` that is neither `iptables` nor `nftables` (code 7), before anything is made.
pub fn check_masq_backend(backend: Option<&str>) -> Result<(), CniError> {
    match backend {
        Some(b) if ipmasq::MasqBackend::parse(b).is_none() => Err(CniError::config(format!(
            "invalid ipMasqBackend \"{b}\" (want iptables or nftables)"
        ))),
        _ => Ok(()),
    }
}

/// `ipMasq`: masquerades traffic from the attachment's addresses `nets` leaving their subnets, with the backend
/// `ipMasqBackend` names (default: iptables unless only nftables is usable, as the reference).
pub fn masq_setup(
    backend: Option<&str>,
    network: &str,
    args: &CmdArgs,
    nets: &[IpNet],
) -> Result<(), CniError> {
    let b = backend
        .and_then(ipmasq::MasqBackend::parse)
        .unwrap_or_else(ipmasq::default_backend);
    ipmasq::setup_ip_masq(b, network, &args.container_id, &args.ifname, nets)?;
    Ok(())
}

/// The undo of [`masq_setup`], keyed by the attachment (it needs neither the addresses nor the backend).
pub fn masq_teardown(network: &str, args: &CmdArgs) -> Result<(), CniError> {
    ipmasq::teardown_ip_masq(network, &args.container_id, &args.ifname, &[])?;
    Ok(())
}

/// A result's `interfaces` entry for a link; `sandbox` for the pod's.
pub fn interface_of(l: &Link, sandbox: Option<&str>) -> Interface {
    Interface {
        name: l.name.clone(),
        mac: l.mac.map(|m| m.to_string()).unwrap_or_default(),
        mtu: Some(l.mtu),
        sandbox: sandbox.unwrap_or_default().to_string(),
        ..Default::default()
    }
}

/// The configuration's `dns`, when it has any, replaces what IPAM returned (as the reference's main plugins do).
pub fn dns_from_conf(result: &mut CniResult, conf: &NetConf) {
    if let Some(d) = &conf.dns {
        if !d.is_empty() {
            result.dns = d.clone();
        }
    }
}

/// CHECK's view of the attachment's pod interface: its namespace, a netlink handle there and the link, which must
/// exist and be a veth (code 3 when the namespace is gone).
pub async fn check_pod_veth(args: &CmdArgs) -> Result<(Netns, Netlink, Link), CniError> {
    let ns = Netns::open(&args.netns).map_err(|e| {
        CniError::new(
            crate::error::ERR_UNKNOWN_CONTAINER,
            format!("CHECK: CNI_NETNS: {e}"),
        )
    })?;
    let pod = Netlink::in_netns(&ns)?;
    let cv = pod.link_by_name(&args.ifname).await?.ok_or_else(|| {
        CniError::internal(format!(
            "CHECK: container interface {} not found",
            args.ifname
        ))
    })?;
    if cv.kind.as_deref() != Some("veth") {
        return Err(CniError::internal(format!(
            "CHECK: {} is not a veth",
            args.ifname
        )));
    }
    Ok((ns, pod, cv))
}

/// The start of a veth attachment's ADD: the pod namespace, netlink handles in the host's and the pod's, and the
/// reference's refusal when the pod already has an interface of that name (a second ADD of the attachment).
pub async fn open_for_add(args: &CmdArgs) -> Result<(Netns, Netlink, Netlink), CniError> {
    let ns = open_netns(&args.netns)?;
    let host = Netlink::current()?;
    let pod = Netlink::in_netns(&ns)?;
    if pod.link_by_name(&args.ifname).await?.is_some() {
        return Err(CniError::internal(format!(
            "container veth name provided ({}) already exists",
            args.ifname
        )));
    }
    Ok((ns, host, pod))
}

/// CHECK's common part: the pod interface `ifname` (index `index` in `pod`) holds every address of `prev`, and the
/// pod has every route of `prev` (with its gateway, when it names one), as the reference's
/// `ValidateExpectedInterfaceIPs` and `ValidateExpectedRoute`.
pub async fn check_ips_and_routes(
    pod: &Netlink,
    index: u32,
    ifname: &str,
    prev: &CniResult,
) -> Result<(), CniError> {
    let addrs = pod.addresses(index).await?;
    for ip in &prev.ips {
        if !addrs.iter().any(|a| a.net == ip.address) {
            return Err(CniError::internal(format!(
                "CHECK: {ifname} has no address {}",
                ip.address
            )));
        }
    }
    for r in &prev.routes {
        let routes = pod.routes(r.dst.addr().is_ipv6()).await?;
        if !routes
            .iter()
            .any(|k| k.dst == r.dst.trunc() && (r.gw.is_none() || k.gateway == r.gw))
        {
            return Err(CniError::internal(format!(
                "CHECK: route to {} not found in the pod",
                r.dst
            )));
        }
    }
    Ok(())
}

/// CHECK's start for a plugin whose IPAM is optional: that IPAM's CHECK, then the required `prevResult`.
pub async fn check_ipam_then_prev(
    ctx: &Ctx<'_>,
    args: &CmdArgs,
    conf: &NetConf,
    ipam: Option<&str>,
) -> Result<CniResult, CniError> {
    if let Some(t) = ipam {
        ctx.delegate(t, args, args.stdin.clone()).await?;
    }
    conf.prev()?
        .ok_or_else(|| CniError::config("CHECK: required prevResult missing"))
}

/// The interface of `prev` that is this attachment's: named `CNI_IFNAME`, in the sandbox `CNI_NETNS`.
pub fn prev_pod_interface<'a>(
    prev: &'a CniResult,
    args: &CmdArgs,
) -> Result<&'a Interface, CniError> {
    prev.interfaces
        .iter()
        .find(|i| i.name == args.ifname && i.sandbox == args.netns)
        .ok_or_else(|| {
            CniError::internal(format!(
                "CHECK: prevResult has no interface {} in sandbox {}",
                args.ifname, args.netns
            ))
        })
}
