//! The `ptp` plugin: a veth pair per pod and no bridge, drop-in for the reference (`plugins/main/ptp`).
//!
//! The pod reaches everything through the host end of its veth: in the pod, the connected route the kernel makes
//! for each address is replaced by `<gw>/32 dev <ifname> scope link src <ip>` and `<subnet> via <gw> src <ip>`
//! (so every destination, the subnet included, is ARPed for at the gateway); on the host, the gateway address
//! `<gw>/32` (`/128`) goes on the host veth with a route `<ip>/32 dev <host veth> scope host`. The result lists the host veth
//! first and the pod interface second (index 1), as the reference does. Keys: `ipam` (required), `mtu`,
//! `ipMasq`, `ipMasqBackend`, `dns`.

use crate::attach;
use crate::error::{CniError, Failures};
use crate::plugin::{Ctx, Plugin};
use crate::skel::CmdArgs;
use crate::types::{CniResult, NetConf};
use ipnet::IpNet;
use kernel::{sysctl, Netlink};
use serde::Deserialize;
use serde_json::Value;

/// Index of the pod interface in the result.
const CONTAINER_IF: usize = 1;
/// `RT_SCOPE_LINK`.
const SCOPE_LINK: u8 = 253;
/// `RT_SCOPE_HOST`.
const SCOPE_HOST: u8 = 254;

/// The ptp keys of a configuration.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PtpConf {
    #[serde(default)]
    pub ip_masq: bool,
    #[serde(default)]
    pub ip_masq_backend: Option<String>,
    /// MTU of both veth ends (0: the kernel's default).
    #[serde(default)]
    pub mtu: u32,
    #[serde(skip)]
    pub ipam_type: String,
}

impl PtpConf {
    pub fn from_conf(conf: &NetConf) -> Result<Self, CniError> {
        let mut c: PtpConf = serde_json::from_value(Value::Object(conf.extra.clone()))
            .map_err(|e| CniError::config(format!("invalid ptp configuration: {e}")))?;
        c.ipam_type = attach::ipam_type(conf)?.ok_or_else(|| {
            CniError::config(
                "ptp needs an IPAM plugin (ipam.type): the pod's routes go through its gateway",
            )
        })?;
        attach::check_masq_backend(c.ip_masq_backend.as_deref())?;
        Ok(c)
    }
}

pub const PLUGIN: Plugin = crate::plugin::main_row!("ptp", PtpConf, gc: no);

/// STATUS: IPAM's.
async fn status(
    ctx: &Ctx<'_>,
    args: &CmdArgs,
    _conf: &NetConf,
    pc: &PtpConf,
) -> Result<(), CniError> {
    attach::ipam_status(ctx, args, Some(&pc.ipam_type)).await
}

fn host_prefix(ip: &IpNet) -> u8 {
    if ip.addr().is_ipv4() {
        32
    } else {
        128
    }
}

async fn add(
    ctx: &Ctx<'_>,
    args: &CmdArgs,
    conf: &NetConf,
    pc: &PtpConf,
) -> Result<CniResult, CniError> {
    let (ns, host, pod) = attach::open_for_add(args).await?;
    let r = attach::ipam_add(ctx, args, &pc.ipam_type).await?;
    let mut host_veth = None;
    match add_inner(args, conf, pc, &ns, &host, &pod, r, &mut host_veth).await {
        Ok(r) => Ok(r),
        Err(e) => {
            // Nothing half-made stays: the pair (the host end by the name only this ADD uses), the IP, the rules.
            let mut f = Failures::new();
            if let Some(hv) = &host_veth {
                f.step("veth", attach::delete_host_veth(&host, hv).await);
            }
            f.step(
                format!("IPAM ({})", pc.ipam_type),
                attach::ipam_del(ctx, args, &pc.ipam_type).await,
            );
            if pc.ip_masq {
                f.step("ipMasq", attach::masq_teardown(&conf.name, args));
            }
            Err(f.add_to(e))
        }
    }
}

#[allow(clippy::too_many_arguments)]
async fn add_inner(
    args: &CmdArgs,
    conf: &NetConf,
    pc: &PtpConf,
    ns: &kernel::Netns,
    host: &Netlink,
    pod: &Netlink,
    ipam: CniResult,
    host_veth: &mut Option<String>,
) -> Result<CniResult, CniError> {
    let mut result = CniResult {
        cni_version: conf.version().to_string(),
        ips: ipam.ips,
        routes: ipam.routes,
        dns: ipam.dns,
        ..Default::default()
    };
    for ip in &mut result.ips {
        if ip.gateway.is_none() {
            return Err(CniError::internal(format!(
                "IPAM gave {} no gateway: ptp routes the pod through it",
                ip.address
            )));
        }
        ip.interface = Some(CONTAINER_IF);
    }
    let has_v4 = result.ips.iter().any(|i| i.address.addr().is_ipv4());
    let has_v6 = result.ips.iter().any(|i| i.address.addr().is_ipv6());
    if has_v4 {
        sysctl::enable_forwarding(false)?;
    }
    if has_v6 {
        sysctl::enable_forwarding(true)?;
    }

    let name = attach::host_veth_name()?;
    *host_veth = Some(name.clone());
    let mtu = (pc.mtu != 0).then_some(pc.mtu);
    let (hv, cv) =
        attach::create_veth_pair(host, pod, ns, &name, &args.ifname, mtu, None, None).await?;
    if has_v6 {
        // Router advertisements on the host side would add addresses nobody asked for.
        let _ = sysctl::set(&["net", "ipv6", "conf", &name, "accept_ra"], "0");
    }
    // Pod side: the IPAM result, then every destination through the gateway.
    attach::configure_iface(ns, pod, cv.index, &args.ifname, &result, false).await?;
    if has_v6 {
        // The routes below name the pod's addresses as their source.
        attach::settle_addresses(pod, cv.index, &args.ifname).await?;
    }
    for ip in &result.ips {
        let Some(gw) = ip.gateway else { continue };
        let gw_net = IpNet::new(gw, host_prefix(&ip.address))
            .map_err(|e| CniError::internal(e.to_string()))?;
        let mut to_gw = kernel::route::Route::new(gw_net).dev(cv.index);
        to_gw.scope = SCOPE_LINK;
        to_gw.src = Some(ip.address.addr());
        pod.add_route(&to_gw, false).await?;
        let subnet = ip.address.trunc();
        let mut connected = kernel::route::Route::new(subnet).dev(cv.index);
        connected.src = Some(ip.address.addr());
        // The kernel's route for the address; gone already is as good.
        let _ = pod.delete_route(&connected).await;
        let mut via = kernel::route::Route::new(subnet).dev(cv.index);
        via.gateway = Some(gw);
        via.src = Some(ip.address.addr());
        pod.add_route(&via, true).await?;
    }

    // Host side: the gateway on the host veth, a route to each pod address.
    for ip in &result.ips {
        let Some(gw) = ip.gateway else { continue };
        let p = host_prefix(&ip.address);
        let gw_net = IpNet::new(gw, p).map_err(|e| CniError::internal(e.to_string()))?;
        host.add_address(hv.index, gw_net).await?;
        let to_pod =
            IpNet::new(ip.address.addr(), p).map_err(|e| CniError::internal(e.to_string()))?;
        let mut r = kernel::route::Route::new(to_pod).dev(hv.index);
        // Scope host, as the reference makes it (`ip route` shows `scope host`; IPv6 has no route scopes).
        r.scope = SCOPE_HOST;
        host.add_route(&r, true).await?;
    }

    if pc.ip_masq {
        let nets: Vec<IpNet> = result.ips.iter().map(|i| i.address).collect();
        attach::masq_setup(pc.ip_masq_backend.as_deref(), &conf.name, args, &nets)?;
    }
    result.interfaces = vec![
        attach::interface_of(&hv, None),
        attach::interface_of(&cv, Some(&args.netns)),
    ];
    attach::dns_from_conf(&mut result, conf);
    Ok(result)
}

/// DEL: every step whatever the others did, each idempotent: the pod interface (its host end and routes go with
/// it), the IP, the masquerade rules.
async fn del(ctx: &Ctx<'_>, args: &CmdArgs, conf: &NetConf, pc: &PtpConf) -> Result<(), CniError> {
    let ns = attach::del_netns(&args.netns)?;
    let mut f = Failures::new();
    if let Some(ns) = &ns {
        f.step(
            "pod interface",
            attach::remove_pod_links(ns, &args.ifname).await,
        );
    }
    f.step(
        format!("IPAM ({})", pc.ipam_type),
        ctx.delegate(&pc.ipam_type, args, args.stdin.clone())
            .await
            .map(|_| ()),
    );
    if pc.ip_masq {
        f.step("ipMasq", attach::masq_teardown(&conf.name, args));
    }
    f.finish("DEL")
}

/// CHECK: IPAM's CHECK, then the pod interface is a veth holding every address of the previous result, with the
/// route to each gateway.
async fn check(
    ctx: &Ctx<'_>,
    args: &CmdArgs,
    conf: &NetConf,
    pc: &PtpConf,
) -> Result<(), CniError> {
    ctx.delegate(&pc.ipam_type, args, args.stdin.clone())
        .await?;
    let prev = conf
        .prev()?
        .ok_or_else(|| CniError::config("CHECK: required prevResult missing"))?;
    let (_ns, pod, cv) = attach::check_pod_veth(args).await?;
    let addrs = pod.addresses(cv.index).await?;
    for ip in &prev.ips {
        if !addrs.iter().any(|a| a.net == ip.address) {
            return Err(CniError::internal(format!(
                "CHECK: {} has no address {}",
                args.ifname, ip.address
            )));
        }
        if let Some(gw) = ip.gateway {
            let routes = pod.routes(gw.is_ipv6()).await?;
            let p = host_prefix(&ip.address);
            if !routes
                .iter()
                .any(|r| r.dst.addr() == gw && r.dst.prefix_len() == p && r.oif == Some(cv.index))
            {
                return Err(CniError::internal(format!(
                    "CHECK: no route to the gateway {gw} on {}",
                    args.ifname
                )));
            }
        }
    }
    Ok(())
}
