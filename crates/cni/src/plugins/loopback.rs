//! The `loopback` plugin: brings `lo` up in the pod (down on DEL).

use crate::error::{CniError, ERR_INVALID_ENV};
use crate::plugin::Plugin;
use crate::skel::CmdArgs;
use crate::types::{CniResult, Interface, IpConfig, NetConf};
use kernel::{Netlink, Netns};

/// The loopback plugin's row of the plugin table (no GC or STATUS: it keeps no state).
pub const PLUGIN: Plugin = Plugin {
    name: "loopback",
    versions: crate::version::SUPPORTED,
    add: |_, args, conf| Box::pin(async move { add(args, conf).await.map(Some) }),
    del: |_, args, _| Box::pin(async move { del(args).await.map(|()| None) }),
    check: |_, args, _| Box::pin(async move { check(args).await.map(|()| None) }),
    gc: None,
    status: None,
};

async fn lo(ns: &Netns) -> Result<(Netlink, kernel::Link), CniError> {
    let nl = Netlink::in_netns(ns)?;
    let l = nl
        .link_by_name("lo")
        .await?
        .ok_or_else(|| CniError::internal(format!("no lo in {}", ns.path().display())))?;
    Ok((nl, l))
}

async fn add(args: &CmdArgs, conf: &NetConf) -> Result<CniResult, CniError> {
    let ns = Netns::open(&args.netns)
        .map_err(|e| CniError::new(ERR_INVALID_ENV, format!("CNI_NETNS: {e}")))?;
    let (nl, l) = lo(&ns).await?;
    nl.set_up(l.index).await?;
    let addrs = nl.addresses(l.index).await?;
    if let Some(a) = addrs.iter().find(|a| !a.net.addr().is_loopback()) {
        return Err(CniError::internal(format!(
            "lo has a non-loopback address {}",
            a.net
        )));
    }
    if let Some(prev) = conf.prev()? {
        return Ok(CniResult {
            cni_version: conf.version().to_string(),
            ..prev
        });
    }
    let mut ips = Vec::new();
    for v6 in [false, true] {
        if let Some(a) = addrs.iter().find(|a| a.net.addr().is_ipv6() == v6) {
            ips.push(IpConfig {
                address: a.net,
                gateway: None,
                interface: Some(0),
            });
        }
    }
    Ok(CniResult {
        cni_version: conf.version().to_string(),
        interfaces: vec![Interface {
            name: "lo".into(),
            mac: "00:00:00:00:00:00".into(),
            sandbox: args.netns.clone(),
            ..Default::default()
        }],
        ips,
        ..Default::default()
    })
}

async fn del(args: &CmdArgs) -> Result<(), CniError> {
    if args.netns.is_empty() {
        return Ok(());
    }
    let ns = match Netns::open(&args.netns) {
        Ok(ns) => ns,
        Err(kernel::Error::NotFound(_)) => return Ok(()),
        Err(e) => return Err(CniError::new(ERR_INVALID_ENV, format!("CNI_NETNS: {e}"))),
    };
    let (nl, l) = lo(&ns).await?;
    nl.set_down(l.index).await?;
    Ok(())
}

async fn check(args: &CmdArgs) -> Result<(), CniError> {
    let ns = Netns::open(&args.netns).map_err(|e| {
        CniError::new(
            crate::error::ERR_UNKNOWN_CONTAINER,
            format!("CNI_NETNS: {e}"),
        )
    })?;
    let (_, l) = lo(&ns).await?;
    if !l.up {
        return Err(CniError::internal("loopback interface is down"));
    }
    Ok(())
}
