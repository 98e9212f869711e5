//! The simulated underlay: a fabric namespace with a bridge, one veth per node, addresses and routes.

use anyhow::{Context, Result};
use kernel::link::VethSpec;
use kernel::route::Route;
use kernel::{Netlink, Netns};
use std::net::{IpAddr, Ipv4Addr};
use std::os::fd::BorrowedFd;
use std::os::unix::process::CommandExt;
use std::process::Command;

/// The fabric's address, the nodes' default gateway (and etcd's address with `--store etcd`).
pub const FABRIC_IP: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 254);

/// The path of a named namespace.
pub fn ns_path(name: &str) -> String {
    format!("{}/{name}", kernel::netns::NETNS_RUN_DIR)
}

/// A command that runs inside the namespace `name` (it enters it between fork and exec).
pub fn command_in(name: &str, program: &str) -> Result<(Command, Netns)> {
    let ns = Netns::open(ns_path(name)).with_context(|| format!("opening namespace {name}"))?;
    let fd = ns.raw_fd();
    let mut cmd = Command::new(program);
    // SAFETY: setns is async-signal-safe; the descriptor stays open because the caller holds `ns` until spawn.
    unsafe {
        cmd.pre_exec(move || {
            nix::sched::setns(
                BorrowedFd::borrow_raw(fd),
                nix::sched::CloneFlags::CLONE_NEWNET,
            )
            .map_err(std::io::Error::from)
        });
    }
    Ok((cmd, ns))
}

/// Brings `lo` up in a namespace.
pub async fn lo_up(nl: &Netlink) -> Result<()> {
    if let Some(lo) = nl.link_by_name("lo").await? {
        nl.set_up(lo.index).await?;
    }
    Ok(())
}

/// Creates the fabric namespace with bridge `br0` carrying 192.0.2.254/24.
pub async fn make_fabric(name: &str) -> Result<Netlink> {
    let ns = kernel::netns::create_named(name)?;
    let nl = Netlink::in_netns(&ns)?;
    lo_up(&nl).await?;
    let br = nl.ensure_bridge("br0", None, false, false).await?;
    nl.add_address(br.index, format!("{FABRIC_IP}/24").parse()?)
        .await?;
    Ok(nl)
}

/// Creates a node namespace wired to the fabric: `eth0` with `ip`/24 and a default route via the fabric.
pub async fn make_node(fabric: &Netlink, index: usize, name: &str, ip: Ipv4Addr) -> Result<()> {
    let ns = kernel::netns::create_named(name)?;
    let br = fabric
        .link_by_name("br0")
        .await?
        .context("fabric bridge br0 missing")?;
    let host_name = format!("h{index}");
    fabric
        .create_veth(&VethSpec {
            host_name: &host_name,
            peer_name: "eth0",
            peer_netns_fd: ns.raw_fd(),
            mtu: Some(1500),
            peer_mac: None,
            controller: Some(br.index),
        })
        .await?;
    let nl = Netlink::in_netns(&ns)?;
    lo_up(&nl).await?;
    let eth0 = nl
        .link_by_name("eth0")
        .await?
        .context("eth0 missing in node")?;
    nl.add_address(eth0.index, format!("{ip}/24").parse()?)
        .await?;
    nl.set_up(eth0.index).await?;
    nl.add_route(
        &Route::new("0.0.0.0/0".parse()?)
            .via(IpAddr::V4(FABRIC_IP))
            .dev(eth0.index),
        false,
    )
    .await?;
    Ok(())
}

/// Creates an empty pod namespace with `lo` down (the loopback plugin brings it up).
pub fn make_pod(name: &str) -> Result<()> {
    kernel::netns::create_named(name)?;
    Ok(())
}
