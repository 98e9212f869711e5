//! The `host-device` plugin: moves an existing device of the host into the pod, drop-in for the reference
//! (`plugins/main/host-device`).
//!
//! Keys: the device by `device` (name), else `hwaddr` (MAC), else `kernelpath` (a `/sys/devices/...` path whose
//! `net` directory names it), else `pciBusID` (`/sys/bus/pci/devices/<id>/net`, or `virtio*/net` below it), which
//! `runtimeConfig.deviceID` overrides; `ipam` (optional), `dns`. A PCI device bound to a userspace (DPDK) driver
//! is not moved: only IPAM runs.
//!
//! The device's host name is kept in its alias (`IFLA_IFALIAS`) while it is in the pod, as the reference keeps
//! it, so a device moved in by either plugin is moved back by the other. Moving in, renaming to `CNI_IFNAME` and
//! setting the alias are one kernel request (see [`kernel::Netlink::move_link_to_netns`]), and so is moving back
//! under the original name: a process killed at any point leaves the device either in the host under its name or
//! in the pod under `CNI_IFNAME` with its alias, which the next DEL moves back. The kernel takes a moved device
//! down and drops its addresses and routes.

use crate::attach;
use crate::error::{CniError, Failures, ERR_UNKNOWN_CONTAINER};
use crate::plugin::{Ctx, Plugin};
use crate::skel::CmdArgs;
use crate::types::{CniResult, NetConf};
use kernel::{Link, Mac, Netlink, Netns};
use serde::Deserialize;
use serde_json::Value;
use std::path::{Path, PathBuf};

/// Where the PCI devices are in sysfs.
const SYS_BUS_PCI: &str = "/sys/bus/pci/devices";
/// Drivers that bind a NIC to userspace (DPDK): such a device has no kernel interface to move.
const USERSPACE_DRIVERS: &[&str] = &["vfio-pci", "uio_pci_generic", "igb_uio"];

#[derive(Debug, Default, Deserialize)]
struct RuntimeConfig {
    #[serde(default, rename = "deviceID")]
    device_id: String,
}

/// The host-device keys of a configuration.
#[derive(Debug, Clone, Deserialize)]
pub struct HostDeviceConf {
    /// The device's name in the host.
    #[serde(default)]
    pub device: String,
    /// Its MAC address.
    #[serde(default)]
    pub hwaddr: String,
    /// Its sysfs device path.
    #[serde(default)]
    pub kernelpath: String,
    /// Its PCI address (`runtimeConfig.deviceID` when given).
    #[serde(default, rename = "pciBusID")]
    pub pci_bus_id: String,
    /// The PCI device is bound to a userspace driver: nothing to move.
    #[serde(skip)]
    pub dpdk: bool,
    #[serde(skip)]
    pub ipam_type: Option<String>,
}

impl HostDeviceConf {
    /// Parses the keys as the reference's `loadConf`: `runtimeConfig.deviceID` replaces `pciBusID`; one of the
    /// four keys is needed; a PCI address must name a device whose driver can be read.
    pub fn from_conf(conf: &NetConf) -> Result<Self, CniError> {
        let mut c: HostDeviceConf = serde_json::from_value(Value::Object(conf.extra.clone()))
            .map_err(|e| CniError::decode(format!("invalid host-device configuration: {e}")))?;
        let rc: RuntimeConfig = match &conf.runtime_config {
            None | Some(Value::Null) => RuntimeConfig::default(),
            Some(v) => serde_json::from_value(v.clone())
                .map_err(|e| CniError::decode(format!("invalid runtimeConfig: {e}")))?,
        };
        if !rc.device_id.is_empty() {
            c.pci_bus_id = rc.device_id;
        }
        if c.device.is_empty()
            && c.hwaddr.is_empty()
            && c.kernelpath.is_empty()
            && c.pci_bus_id.is_empty()
        {
            return Err(CniError::config(
                r#"specify either "device", "hwaddr", "kernelpath" or "pciBusID""#,
            ));
        }
        if !c.pci_bus_id.is_empty() {
            c.dpdk = has_dpdk_driver(&c.pci_bus_id)
                .map_err(|e| CniError::internal(format!("error with host device: {e}")))?;
        }
        c.ipam_type = attach::ipam_type(conf)?;
        Ok(c)
    }
}

/// Whether the PCI device `pci` is bound to a userspace driver.
fn has_dpdk_driver(pci: &str) -> Result<bool, String> {
    if pci.contains('/') || pci == ".." {
        return Err(format!("invalid PCI address {pci:?}"));
    }
    let link = Path::new(SYS_BUS_PCI).join(pci).join("driver");
    let target = std::fs::canonicalize(&link).map_err(|e| format!("{}: {e}", link.display()))?;
    let name = target
        .file_name()
        .and_then(|n| n.to_str())
        .unwrap_or_default();
    Ok(USERSPACE_DRIVERS.contains(&name))
}

/// A MAC as Go's `net.ParseMAC` reads a 6-byte one: `aa:bb:..`, `aa-bb-..` or `aabb.ccdd.eeff`.
pub fn parse_mac(s: &str) -> Option<Mac> {
    if s.len() == 14 && s.as_bytes().get(4) == Some(&b'.') && s.as_bytes().get(9) == Some(&b'.') {
        let hex: String = s.split('.').collect();
        if hex.len() != 12 || !hex.bytes().all(|c| c.is_ascii_hexdigit()) {
            return None;
        }
        let colons: Vec<String> = (0..6)
            .filter_map(|i| hex.get(2 * i..2 * i + 2).map(str::to_string))
            .collect();
        return Mac::parse(&colons.join(":"));
    }
    Mac::parse(&s.replace('-', ":")).filter(|_| !(s.contains('-') && s.contains(':')))
}

/// The entries of a directory, sorted by name (as Go's `os.ReadDir`).
fn read_dir_sorted(dir: &Path) -> std::io::Result<Vec<String>> {
    let mut names: Vec<String> = std::fs::read_dir(dir)?
        .filter_map(|e| e.ok())
        .filter_map(|e| e.file_name().into_string().ok())
        .collect();
    names.sort();
    Ok(names)
}

/// The host device the configuration names, by the reference's precedence. Its absence is an error naming what
/// was looked for.
async fn find_host_device(host: &Netlink, c: &HostDeviceConf) -> Result<Link, String> {
    if !c.device.is_empty() {
        // By the kernel's name lookup, as the reference: an alternative name finds the device too.
        return host
            .link_by_name(&c.device)
            .await
            .map_err(|e| format!("failed to look up {}: {e}", c.device))?
            .ok_or_else(|| {
                format!(
                    "no device \"{}\" in the host network namespace (it does not exist, or it is in use: moved \
                     into a pod already)",
                    c.device
                )
            });
    }
    let links = host
        .links()
        .await
        .map_err(|e| format!("failed to list node links: {e}"))?;
    if !c.hwaddr.is_empty() {
        let mac = parse_mac(&c.hwaddr)
            .ok_or_else(|| format!("failed to parse MAC address \"{}\"", c.hwaddr))?;
        return links
            .into_iter()
            .find(|l| l.mac == Some(mac))
            .ok_or_else(|| {
                format!(
                    "no device with MAC {mac} in the host network namespace (it does not exist, or it is in use: \
                     moved into a pod already)"
                )
            });
    }
    if !c.kernelpath.is_empty() {
        let kp = &c.kernelpath;
        if !kp.starts_with("/sys/devices/") {
            return Err(format!(
                "kernel device path \"{kp}\" must be absolute and begin with /sys/devices/"
            ));
        }
        let dir = PathBuf::from(kp).join("net");
        let entries = read_dir_sorted(&dir)
            .map_err(|_| format!("failed to find network devices at \"{}\"", dir.display()))?;
        // The first entry that is an interface of this namespace.
        return entries
            .iter()
            .find_map(|n| links.iter().find(|l| &l.name == n).cloned())
            .ok_or_else(|| {
                format!(
                    "no device of {} in the host network namespace (in use: moved into a pod already?)",
                    dir.display()
                )
            });
    }
    let pci = &c.pci_bus_id;
    let base = Path::new(SYS_BUS_PCI).join(pci);
    let mut dir = base.join("net");
    if std::fs::symlink_metadata(&dir).is_err() {
        // A virtio NIC has its interfaces one level down, under virtio<N>/net.
        let virtio = read_dir_sorted(&base)
            .unwrap_or_default()
            .into_iter()
            .filter(|n| n.starts_with("virtio"))
            .map(|n| base.join(n).join("net"))
            .find(|p| p.exists());
        dir = virtio.ok_or_else(|| format!("no net directory under pci device {pci}"))?;
    }
    let entries = read_dir_sorted(&dir)
        .map_err(|e| format!("failed to read net directory {}: {e}", dir.display()))?;
    let first = entries
        .first()
        .ok_or_else(|| format!("failed to find device name for pci address {pci}"))?;
    links.into_iter().find(|l| &l.name == first).ok_or_else(|| {
        format!("no device \"{first}\" (of pci address {pci}) in the host network namespace")
    })
}

pub const PLUGIN: Plugin = crate::plugin::main_row!("host-device", HostDeviceConf, gc: no);

/// STATUS: IPAM's.
async fn status(
    ctx: &Ctx<'_>,
    args: &CmdArgs,
    _conf: &NetConf,
    c: &HostDeviceConf,
) -> Result<(), CniError> {
    attach::ipam_status(ctx, args, c.ipam_type.as_deref()).await
}

async fn add(
    ctx: &Ctx<'_>,
    args: &CmdArgs,
    conf: &NetConf,
    c: &HostDeviceConf,
) -> Result<CniResult, CniError> {
    if c.ipam_type.is_none() && !crate::version::at_least(conf.version(), "0.3.0") {
        // A 0.2.0 result is its ip4/ip6 objects: without IPAM there is nothing to report (the reference fails
        // the same way, but only after moving the device).
        return Err(CniError::config(
            "cannot convert: no valid IP addresses (a 0.2.0 result without IPAM)",
        ));
    }
    let (ns, host, pod) = attach::open_for_add(args).await?;
    let mut result = CniResult {
        cni_version: conf.version().to_string(),
        ..Default::default()
    };
    let mut moved: Option<u32> = None;
    if !c.dpdk {
        let dev = find_host_device(&host, c)
            .await
            .map_err(|e| CniError::internal(format!("failed to find host device: {e}")))?;
        if dev.loopback {
            return Err(CniError::config(format!(
                "host device {} is the loopback device, which cannot leave its namespace",
                dev.name
            )));
        }
        host.move_link_to_netns(dev.index, ns.raw_fd(), &args.ifname, Some(&dev.name))
            .await
            .map_err(|e| CniError::internal(format!("failed to move link {}: {e}", dev.name)))?;
        let cd = match add_in_pod(&pod, &args.ifname).await {
            Ok(cd) => cd,
            Err(e) => {
                let mut f = Failures::new();
                f.step(
                    "moving the device back",
                    move_out(&ns, &pod, &args.ifname, c).await,
                );
                return Err(f.add_to(e));
            }
        };
        moved = Some(cd.index);
        let mut i = attach::interface_of(&cd, Some(&args.netns));
        // The reference reports no MTU for the device.
        i.mtu = None;
        result.interfaces = vec![i];
    }
    if let Some(ipam) = &c.ipam_type {
        match add_ipam(ctx, args, &ns, &pod, ipam, moved, &mut result).await {
            Ok(()) => {}
            Err(e) => {
                let mut f = Failures::new();
                if moved.is_some() {
                    f.step(
                        "moving the device back",
                        move_out(&ns, &pod, &args.ifname, c).await,
                    );
                }
                return Err(f.add_to(e));
            }
        }
        // The reference's result carries the configuration's DNS, whatever IPAM said.
        result.dns = conf.dns.clone().unwrap_or_default();
    }
    Ok(result)
}

/// In the pod after the move: the device up, as the kernel now has it.
async fn add_in_pod(pod: &Netlink, ifname: &str) -> Result<Link, CniError> {
    let cd = pod
        .link_by_name(ifname)
        .await?
        .ok_or_else(|| CniError::internal(format!("moved device {ifname} not found in the pod")))?;
    pod.set_up(cd.index).await?;
    Ok(pod.link_by_name(ifname).await?.unwrap_or(cd))
}

/// IPAM ADD and the addresses on the device; IPAM's undo on failure.
async fn add_ipam(
    ctx: &Ctx<'_>,
    args: &CmdArgs,
    ns: &Netns,
    pod: &Netlink,
    ipam: &str,
    moved: Option<u32>,
    result: &mut CniResult,
) -> Result<(), CniError> {
    let r = attach::ipam_add(ctx, args, ipam).await?;
    result.ips = r.ips;
    result.routes = r.routes;
    for ip in &mut result.ips {
        // The moved device is interface 0; a DPDK device is no interface of the result (the reference still
        // says 0 there, naming an interface its result does not have).
        ip.interface = moved.map(|_| 0);
    }
    if let Some(index) = moved {
        if let Err(e) = attach::configure_iface(ns, pod, index, &args.ifname, result, false).await {
            let mut f = Failures::new();
            f.step(
                format!("IPAM ({ipam})"),
                attach::ipam_del(ctx, args, ipam).await,
            );
            return Err(f.add_to(e));
        }
    }
    Ok(())
}

/// Moves the pod's `ifname` back to the host under the name its alias keeps. Without `ifname` in the pod, a
/// device the configuration names (by `device` or `hwaddr`) still under its host name there, its alias empty or
/// that name, goes back as it is: what the reference leaves when killed between its move and its rename (ours
/// moves and renames in one request), or a rename the kernel refused after the move. Nothing of either: done
/// already. Refused, with the device left in the pod, when it has no alias or the host has that name taken.
async fn move_out(
    ns: &Netns,
    pod: &Netlink,
    ifname: &str,
    c: &HostDeviceConf,
) -> Result<(), CniError> {
    let (dev, orig) = match pod.link_by_name(ifname).await? {
        Some(dev) => {
            let orig = pod.link_alias(dev.index).await?.ok_or_else(|| {
                CniError::internal(format!(
                    "{ifname} in {} has no alias with its host name: not a device host-device moved in",
                    ns.path().display()
                ))
            })?;
            (dev, orig)
        }
        None => match stray_device(pod, c).await? {
            Some(dev) => {
                let name = dev.name.clone();
                (dev, name)
            }
            None => return Ok(()),
        },
    };
    let host_ns = Netns::current()?;
    let host = Netlink::current()?;
    if host.link_by_name(&orig).await?.is_some() {
        return Err(CniError::internal(format!(
            "cannot move {} back to the host as {orig}: the host has a device of that name",
            dev.name
        )));
    }
    pod.set_down(dev.index).await?;
    pod.move_link_to_netns(dev.index, host_ns.raw_fd(), &orig, None)
        .await
        .map_err(|e| {
            CniError::internal(format!(
                "failed to move {} to the host as {orig}: {e}",
                dev.name
            ))
        })
}

/// The device of the configuration in the pod under its host name, never renamed (see [`move_out`]).
async fn stray_device(pod: &Netlink, c: &HostDeviceConf) -> Result<Option<Link>, CniError> {
    let mac = (!c.hwaddr.is_empty())
        .then(|| parse_mac(&c.hwaddr))
        .flatten();
    if c.device.is_empty() && mac.is_none() {
        return Ok(None);
    }
    for l in pod.links().await? {
        let named = !c.device.is_empty() && l.name == c.device;
        let by_mac = c.device.is_empty() && mac.is_some() && l.mac == mac;
        if l.loopback || !(named || by_mac) {
            continue;
        }
        match pod.link_alias(l.index).await? {
            None => return Ok(Some(l)),
            Some(a) if a == l.name => return Ok(Some(l)),
            Some(_) => {}
        }
    }
    Ok(None)
}

/// DEL: the device back to the host (nothing to do when it is there already or the pod is gone), and IPAM's
/// DEL, each whatever the other did.
async fn del(
    ctx: &Ctx<'_>,
    args: &CmdArgs,
    _conf: &NetConf,
    c: &HostDeviceConf,
) -> Result<(), CniError> {
    let ns = attach::del_netns(&args.netns)?;
    let mut f = Failures::new();
    if let (Some(ns), false) = (&ns, c.dpdk) {
        let pod = Netlink::in_netns(ns)?;
        f.step(
            "moving the device back",
            move_out(ns, &pod, &args.ifname, c).await,
        );
    }
    if let Some(ipam) = &c.ipam_type {
        f.step(
            format!("IPAM ({ipam})"),
            ctx.delegate(ipam, args, args.stdin.clone())
                .await
                .map(|_| ()),
        );
    }
    f.finish("DEL")
}

/// CHECK as the reference: IPAM's CHECK, then the previous result's interface of `CNI_IFNAME` in this sandbox
/// exists there with its MAC, holds every address of the result, and the result's routes exist.
async fn check(
    ctx: &Ctx<'_>,
    args: &CmdArgs,
    conf: &NetConf,
    c: &HostDeviceConf,
) -> Result<(), CniError> {
    let ns = Netns::open(&args.netns).map_err(|e| {
        CniError::new(
            ERR_UNKNOWN_CONTAINER,
            format!("failed to open netns \"{}\": {e}", args.netns),
        )
    })?;
    let prev = attach::check_ipam_then_prev(ctx, args, conf, c.ipam_type.as_deref()).await?;
    if c.dpdk {
        return Ok(());
    }
    let intf = attach::prev_pod_interface(&prev, args)?;
    let pod = Netlink::in_netns(&ns)?;
    let link = pod.link_by_name(&intf.name).await?.ok_or_else(|| {
        CniError::internal(format!(
            "Container Interface name in prevResult: {} not found",
            intf.name
        ))
    })?;
    if !intf.mac.is_empty() {
        let have = link.mac.map(|m| m.to_string()).unwrap_or_default();
        if !intf.mac.eq_ignore_ascii_case(&have) {
            return Err(CniError::internal(format!(
                "Interface {} Mac {} doesn't match container Mac: {have}",
                intf.name, intf.mac
            )));
        }
    }
    crate::attach::check_ips_and_routes(&pod, link.index, &args.ifname, &prev).await
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use serde_json::json;

    fn load(v: Value) -> Result<HostDeviceConf, CniError> {
        HostDeviceConf::from_conf(&NetConf::parse(v.to_string().as_bytes())?)
    }

    #[test]
    fn keys_and_precedence() {
        let c = load(
            json!({"cniVersion": "1.0.0", "name": "n", "type": "host-device", "device": "eth1",
            "hwaddr": "02:00:00:00:00:01", "ipam": {"type": "static"}}),
        )
        .unwrap();
        assert_eq!(c.device, "eth1");
        assert_eq!(c.ipam_type.as_deref(), Some("static"));
        let e =
            load(json!({"cniVersion": "1.0.0", "name": "n", "type": "host-device"})).unwrap_err();
        assert_eq!(e.code, 7);
        // deviceID replaces pciBusID, and a PCI address must name a device.
        let e = load(
            json!({"cniVersion": "1.0.0", "name": "n", "type": "host-device", "device": "eth1",
            "runtimeConfig": {"deviceID": "0000:ff:1f.7"}}),
        )
        .unwrap_err();
        assert!(e.msg.contains("0000:ff:1f.7"), "{e:?}");
        let e =
            load(json!({"cniVersion": "1.0.0", "name": "n", "type": "host-device", "device": 3}))
                .unwrap_err();
        assert_eq!(e.code, 6);
        assert!(load(
            json!({"cniVersion": "1.0.0", "name": "n", "type": "host-device", "pciBusID": "../x"})
        )
        .is_err());
    }

    #[test]
    fn macs_as_go_reads_them() {
        let m = Some(Mac([0x02, 0xab, 0, 0, 0, 0x01]));
        assert_eq!(parse_mac("02:ab:00:00:00:01"), m);
        assert_eq!(parse_mac("02-AB-00-00-00-01"), m);
        assert_eq!(parse_mac("02ab.0000.0001"), m);
        assert_eq!(parse_mac("02:ab-00:00:00:01"), None);
        assert_eq!(parse_mac("zz"), None);
        assert_eq!(parse_mac("02ab.0000.000"), None);
    }

    proptest! {
        #[test]
        fn never_panics(s in ".{0,20}", d in ".{0,20}") {
            let _ = parse_mac(&s);
            let _ = load(json!({"cniVersion": "1.0.0", "name": "n", "type": "host-device", "hwaddr": s,
                "kernelpath": d}));
        }
    }
}
