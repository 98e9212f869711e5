//! Which interface carries traffic between nodes (upstream `pkg/ipmatch.LookupExtIface` and its caller in
//! `main.go`), and which addresses we publish.
//!
//! Order, as upstream: each `--iface` (an IP address, else a name) in turn, then each `--iface-regex` (matched
//! against every interface's addresses first, then against the names), then `--iface-can-reach` (the interface and
//! source address of the kernel's route to that IP). The first candidate that yields a complete answer wins; a
//! candidate that fails (no such interface, no address of a needed family, MTU 0) is logged and the next one is
//! tried. With none of these flags, the interface holding `--public-ip` (or `--public-ipv6`) is used if there is
//! one, else the interface of the default route; dual-stack needs the IPv4 and IPv6 default routes on one
//! interface.
//!
//! Addresses of an interface are tried in this order: global unicast before link-local, permanent before dynamic,
//! stable before temporary (privacy) ones, then kernel order; deprecated, tentative and DAD-failed addresses are
//! never chosen.
//!
//! The choice itself ([`select`]) is pure over a [`HostState`] snapshot, so it is unit-tested without a kernel;
//! [`lookup`] reads the snapshot through the kernel layer and calls it.

use crate::cli::Options;
use kernel::route::Route;
use kernel::Netlink;
use regex::Regex;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

const IFA_F_TEMPORARY: u32 = 0x01;
const IFA_F_DADFAILED: u32 = 0x08;
const IFA_F_DEPRECATED: u32 = 0x20;
const IFA_F_TENTATIVE: u32 = 0x40;
const IFA_F_PERMANENT: u32 = 0x80;
const RT_TABLE_MAIN: u32 = 254;

/// Which address families the network uses (from `EnableIPv4` / `EnableIPv6`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IpStack {
    /// IPv4 only.
    V4,
    /// IPv6 only.
    V6,
    /// IPv4 and IPv6.
    Dual,
}

impl IpStack {
    /// The stack for the config's `EnableIPv4` / `EnableIPv6`; an error if both are off.
    pub fn from_enabled(ipv4: bool, ipv6: bool) -> Result<Self, IfaceError> {
        match (ipv4, ipv6) {
            (true, false) => Ok(Self::V4),
            (false, true) => Ok(Self::V6),
            (true, true) => Ok(Self::Dual),
            (false, false) => Err(IfaceError::NoIpStack),
        }
    }

    /// Whether IPv4 is in use.
    pub fn ipv4(self) -> bool {
        matches!(self, Self::V4 | Self::Dual)
    }

    /// Whether IPv6 is in use.
    pub fn ipv6(self) -> bool {
        matches!(self, Self::V6 | Self::Dual)
    }
}

/// The chosen interface and the addresses to use on it and to publish.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExternalInterface {
    /// Interface index.
    pub index: u32,
    /// Interface name.
    pub name: String,
    /// Interface MTU.
    pub mtu: u32,
    /// Our IPv4 address on it (VXLAN source); `None` when IPv4 is off.
    pub iface_addr: Option<Ipv4Addr>,
    /// Our IPv6 address on it; `None` when IPv6 is off.
    pub iface_v6_addr: Option<Ipv6Addr>,
    /// The IPv4 address peers send to: `--public-ip`, else `iface_addr`.
    pub ext_addr: Option<Ipv4Addr>,
    /// The IPv6 address peers send to: `--public-ipv6`, else `iface_v6_addr`.
    pub ext_v6_addr: Option<Ipv6Addr>,
}

/// The flags that steer the choice.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SelectOptions {
    /// `--iface` values (IP address or name), in order.
    pub ifaces: Vec<String>,
    /// `--iface-regex` values, in order.
    pub iface_regexes: Vec<String>,
    /// `--iface-can-reach`.
    pub can_reach: Option<IpAddr>,
    /// `--public-ip`.
    pub public_ip: Option<Ipv4Addr>,
    /// `--public-ipv6`.
    pub public_ipv6: Option<Ipv6Addr>,
}

impl SelectOptions {
    /// The selection flags of the parsed command line.
    pub fn from_cli(o: &Options) -> Self {
        Self {
            ifaces: o.iface.clone(),
            iface_regexes: o.iface_regex.clone(),
            can_reach: o.iface_can_reach,
            public_ip: o.public_ip,
            public_ipv6: o.public_ipv6,
        }
    }

    /// `true` if any of `--iface`, `--iface-regex`, `--iface-can-reach` is given.
    pub fn explicit(&self) -> bool {
        !self.ifaces.is_empty() || !self.iface_regexes.is_empty() || self.can_reach.is_some()
    }
}

/// One address of a link, as the selection sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AddrState {
    /// The address.
    pub ip: IpAddr,
    /// Its prefix length.
    pub prefix_len: u8,
    /// `IFA_F_*` flags (permanent, deprecated, tentative, temporary, ...).
    pub flags: u32,
}

/// One link and its addresses.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LinkState {
    /// Interface index.
    pub index: u32,
    /// Name.
    pub name: String,
    /// MTU.
    pub mtu: u32,
    /// Addresses, in kernel order.
    pub addrs: Vec<AddrState>,
}

/// What the selection reads from the kernel, taken in one go.
#[derive(Debug, Clone, Default)]
pub struct HostState {
    /// Every link with its addresses.
    pub links: Vec<LinkState>,
    /// IPv4 routes (all tables; only the main table's default routes are used).
    pub routes_v4: Vec<Route>,
    /// IPv6 routes (likewise).
    pub routes_v6: Vec<Route>,
    /// The kernel's route to `--iface-can-reach` (`ip route get`), or why there is none; `None` if not asked.
    pub can_reach: Option<Result<Route, String>>,
}

/// Why no external interface could be chosen. Every variant names the flag, interface or value at fault.
#[derive(Debug, thiserror::Error)]
pub enum IfaceError {
    /// The network config enables neither family.
    #[error("the network config enables neither IPv4 nor IPv6 (EnableIPv4 and EnableIPv6 are both false)")]
    NoIpStack,
    /// No link has this name.
    #[error("no interface named {0:?}")]
    NoSuchName(String),
    /// No link holds this address.
    #[error("no interface has the address {0}")]
    NoSuchAddress(IpAddr),
    /// A link index (from a route) that is not in the link list.
    #[error("interface #{index} (used by {what}) not found")]
    NoSuchIndex {
        /// The index.
        index: u32,
        /// Where it came from.
        what: String,
    },
    /// An `--iface-regex` that does not compile.
    #[error("--iface-regex {pattern:?} is not a valid regular expression: {reason}")]
    BadRegex {
        /// The pattern.
        pattern: String,
        /// The regex error.
        reason: String,
    },
    /// An `--iface-regex` that matches no address and no name.
    #[error(
        "--iface-regex {pattern:?} matches no interface address or name (interfaces: {available})"
    )]
    RegexNoMatch {
        /// The pattern.
        pattern: String,
        /// The interfaces and usable addresses there were.
        available: String,
    },
    /// An `--iface-regex` that matches only interface names, none of them usable.
    #[error("--iface-regex {pattern:?} matches only unusable interfaces: {}", .reasons.join(", "))]
    RegexNoUsable {
        /// The pattern.
        pattern: String,
        /// Why each matching interface is unusable.
        reasons: Vec<String>,
    },
    /// No usable route to `--iface-can-reach`.
    #[error("no usable route to --iface-can-reach {dst}: {reason}")]
    CanReach {
        /// The address.
        dst: IpAddr,
        /// Why.
        reason: String,
    },
    /// No default route in the main table.
    #[error("no IPv{} default route in the main routing table", if *.ipv6 { 6 } else { 4 })]
    NoDefaultRoute {
        /// Which family.
        ipv6: bool,
    },
    /// A default route without one output interface (multipath).
    #[error("the IPv{} default route has no single output interface", if *.ipv6 { 6 } else { 4 })]
    DefaultRouteWithoutInterface {
        /// Which family.
        ipv6: bool,
    },
    /// Dual-stack with the two default routes on different interfaces.
    #[error(
        "the IPv6 default route uses {v6} but the IPv4 default route uses {v4}; dual-stack needs both on one \
         interface"
    )]
    DualStackMismatch {
        /// Interface of the IPv4 default route.
        v4: String,
        /// Interface of the IPv6 default route.
        v6: String,
    },
    /// The chosen link has no usable address of a needed family.
    #[error("interface {iface} has no usable IPv{family} address")]
    NoAddress {
        /// The interface.
        iface: String,
        /// 4 or 6.
        family: u8,
    },
    /// The chosen link reports MTU 0.
    #[error("interface {iface} reports MTU 0")]
    NoMtu {
        /// The interface.
        iface: String,
    },
    /// Every `--iface`, `--iface-regex` and `--iface-can-reach` candidate failed.
    #[error("no interface matches the --iface, --iface-regex and --iface-can-reach options: {}", .attempts.join("; "))]
    NoMatch {
        /// One line per candidate: the option, its value and why it failed.
        attempts: Vec<String>,
    },
    /// Reading links, addresses or routes failed.
    #[error("reading the network state: {0}")]
    Kernel(#[from] kernel::Error),
}

/// Reads the host state through `nl` and chooses the external interface.
pub async fn lookup(
    nl: &Netlink,
    opts: &SelectOptions,
    stack: IpStack,
) -> Result<ExternalInterface, IfaceError> {
    let host = HostState::read(nl, opts, stack).await?;
    let ext = select(&host, opts, stack)?;
    if let Some(a) = ext.iface_addr {
        tracing::info!("Using interface with name {} and address {a}", ext.name);
    }
    if let Some(a) = ext.iface_v6_addr {
        tracing::info!("Using interface with name {} and v6 address {a}", ext.name);
    }
    Ok(ext)
}

impl HostState {
    /// Takes the snapshot `select` needs: links and addresses always, default routes when no explicit option is
    /// given (or the public IP might not be local), the `--iface-can-reach` route when asked.
    pub async fn read(
        nl: &Netlink,
        opts: &SelectOptions,
        stack: IpStack,
    ) -> Result<Self, IfaceError> {
        let mut links = Vec::new();
        for l in nl.links().await? {
            let addrs = nl
                .addresses(l.index)
                .await?
                .iter()
                .map(|a| AddrState {
                    ip: a.net.addr(),
                    prefix_len: a.net.prefix_len(),
                    flags: a.flags(),
                })
                .collect();
            links.push(LinkState {
                index: l.index,
                name: l.name,
                mtu: l.mtu,
                addrs,
            });
        }
        let mut host = HostState {
            links,
            ..Default::default()
        };
        if !opts.explicit() {
            if stack.ipv4() {
                host.routes_v4 = nl.routes(false).await?;
            }
            if stack.ipv6() {
                host.routes_v6 = nl.routes(true).await?;
            }
        }
        if let Some(dst) = opts.can_reach {
            host.can_reach = Some(nl.route_get(dst).await.map_err(|e| e.to_string()));
        }
        Ok(host)
    }
}

/// A candidate: a link and the addresses already fixed by how it was found.
struct Pick<'a> {
    link: &'a LinkState,
    v4: Option<Ipv4Addr>,
    v6: Option<Ipv6Addr>,
}

impl<'a> Pick<'a> {
    fn link(link: &'a LinkState) -> Self {
        Self {
            link,
            v4: None,
            v6: None,
        }
    }

    fn pinned(link: &'a LinkState, ip: IpAddr) -> Self {
        let mut p = Self::link(link);
        match ip {
            IpAddr::V4(a) => p.v4 = Some(a),
            IpAddr::V6(a) => p.v6 = Some(a),
        }
        p
    }
}

/// Chooses the external interface from a snapshot (see the module documentation for the rules).
pub fn select(
    host: &HostState,
    opts: &SelectOptions,
    stack: IpStack,
) -> Result<ExternalInterface, IfaceError> {
    let mut links: Vec<&LinkState> = host.links.iter().collect();
    links.sort_by_key(|l| l.index);

    if !opts.explicit() {
        // Upstream looks the interface up by the public IP when one is given (flannel PR #1214) and fails when it
        // is not local (flannel issue #1397); we fall back to the default route instead.
        let public = opts
            .public_ip
            .map(IpAddr::V4)
            .or(opts.public_ipv6.map(IpAddr::V6));
        if let Some(ip) = public {
            match by_ip(&links, ip).and_then(|p| complete(p, stack, opts)) {
                Ok(ext) => return Ok(ext),
                Err(e) => tracing::info!(
                    "Public IP {ip} gives no usable local interface ({e}); using the default route's interface"
                ),
            }
        }
        tracing::info!("Determining IP address of default interface");
        let pick = by_default_route(host, &links, stack)?;
        return complete(pick, stack, opts);
    }

    let mut attempts = Vec::new();
    let mut attempt = |what: String, r: Result<ExternalInterface, IfaceError>| match r {
        Ok(ext) => Some(ext),
        Err(e) => {
            tracing::info!("Could not find valid interface matching {what}: {e}");
            attempts.push(format!("{what}: {e}"));
            None
        }
    };
    for name in &opts.ifaces {
        let r = by_iface_value(&links, name).and_then(|p| complete(p, stack, opts));
        if let Some(ext) = attempt(format!("--iface={name}"), r) {
            return Ok(ext);
        }
    }
    for pattern in &opts.iface_regexes {
        let r = by_regex(&links, pattern, stack, opts);
        if let Some(ext) = attempt(format!("--iface-regex={pattern}"), r) {
            return Ok(ext);
        }
    }
    if let Some(dst) = opts.can_reach {
        tracing::info!("Determining interface to use based on given ifcanreach: {dst}");
        let r = by_route(host, &links, dst).and_then(|p| complete(p, stack, opts));
        if let Some(ext) = attempt(format!("--iface-can-reach={dst}"), r) {
            return Ok(ext);
        }
    }
    Err(IfaceError::NoMatch { attempts })
}

/// Fills in the addresses the stack needs and the public addresses.
fn complete(
    p: Pick<'_>,
    stack: IpStack,
    opts: &SelectOptions,
) -> Result<ExternalInterface, IfaceError> {
    let link = p.link;
    let v4 = if stack.ipv4() {
        let a = p.v4.or_else(|| {
            usable_addrs(link, false).find_map(|a| match a {
                IpAddr::V4(v) => Some(v),
                IpAddr::V6(_) => None,
            })
        });
        Some(a.ok_or_else(|| IfaceError::NoAddress {
            iface: link.name.clone(),
            family: 4,
        })?)
    } else {
        None
    };
    let v6 = if stack.ipv6() {
        let a = p.v6.or_else(|| {
            usable_addrs(link, true).find_map(|a| match a {
                IpAddr::V6(v) => Some(v),
                IpAddr::V4(_) => None,
            })
        });
        Some(a.ok_or_else(|| IfaceError::NoAddress {
            iface: link.name.clone(),
            family: 6,
        })?)
    } else {
        None
    };
    if link.mtu == 0 {
        return Err(IfaceError::NoMtu {
            iface: link.name.clone(),
        });
    }
    Ok(ExternalInterface {
        index: link.index,
        name: link.name.clone(),
        mtu: link.mtu,
        iface_addr: v4,
        iface_v6_addr: v6,
        ext_addr: opts.public_ip.or(v4),
        ext_v6_addr: opts.public_ipv6.or(v6),
    })
}

/// `--iface` value: an IP address (Go's `net.ParseIP`, IPv4-mapped read as IPv4), else an interface name.
fn by_iface_value<'a>(links: &[&'a LinkState], value: &str) -> Result<Pick<'a>, IfaceError> {
    match value.parse::<IpAddr>() {
        Ok(IpAddr::V6(v6)) => by_ip(
            links,
            v6.to_ipv4_mapped().map_or(IpAddr::V6(v6), IpAddr::V4),
        ),
        Ok(ip) => by_ip(links, ip),
        Err(_) => links
            .iter()
            .find(|l| l.name == value)
            .map(|l| Pick::link(l))
            .ok_or_else(|| IfaceError::NoSuchName(value.to_string())),
    }
}

/// The first link (by index) holding `ip`; that address is the one used.
fn by_ip<'a>(links: &[&'a LinkState], ip: IpAddr) -> Result<Pick<'a>, IfaceError> {
    tracing::info!("Searching for interface using {ip}");
    links
        .iter()
        .find(|l| l.addrs.iter().any(|a| a.ip == ip))
        .map(|l| Pick::pinned(l, ip))
        .ok_or(IfaceError::NoSuchAddress(ip))
}

/// `--iface-regex`: the first link with a usable address (of each family in use) matching, else the first link
/// whose name matches and that has the addresses the stack needs.
fn by_regex(
    links: &[&LinkState],
    pattern: &str,
    stack: IpStack,
    opts: &SelectOptions,
) -> Result<ExternalInterface, IfaceError> {
    let re = Regex::new(pattern).map_err(|e| IfaceError::BadRegex {
        pattern: pattern.to_string(),
        reason: e.to_string(),
    })?;
    let matching =
        |l: &LinkState, v6: bool| usable_addrs(l, v6).find(|a| re.is_match(&a.to_string()));
    for l in links {
        let v4 = if stack.ipv4() {
            matching(l, false)
        } else {
            None
        };
        let v6 = if stack.ipv6() {
            matching(l, true)
        } else {
            None
        };
        if v4.is_some() == stack.ipv4() && v6.is_some() == stack.ipv6() {
            let mut p = Pick::link(l);
            if let Some(IpAddr::V4(a)) = v4 {
                p.v4 = Some(a);
            }
            if let Some(IpAddr::V6(a)) = v6 {
                p.v6 = Some(a);
            }
            return complete(p, stack, opts);
        }
    }
    // Upstream takes the first name match even if it has no usable address; we go on to the next name match.
    let mut unusable = Vec::new();
    for l in links.iter().filter(|l| re.is_match(&l.name)) {
        match complete(Pick::link(l), stack, opts) {
            Ok(ext) => return Ok(ext),
            Err(e) => unusable.push(e.to_string()),
        }
    }
    if !unusable.is_empty() {
        return Err(IfaceError::RegexNoUsable {
            pattern: pattern.to_string(),
            reasons: unusable,
        });
    }
    let available = links
        .iter()
        .map(|l| {
            let addrs: Vec<String> = usable_addrs(l, stack == IpStack::V6)
                .map(|a| a.to_string())
                .collect();
            format!("{}:[{}]", l.name, addrs.join(" "))
        })
        .collect::<Vec<_>>()
        .join(", ");
    Err(IfaceError::RegexNoMatch {
        pattern: pattern.to_string(),
        available,
    })
}

/// `--iface-can-reach`: the output interface of the kernel's route, with the route's source address.
fn by_route<'a>(
    host: &HostState,
    links: &[&'a LinkState],
    dst: IpAddr,
) -> Result<Pick<'a>, IfaceError> {
    let err = |reason: String| IfaceError::CanReach { dst, reason };
    let route = match &host.can_reach {
        None => return Err(err("the route was not looked up".into())),
        Some(Err(e)) => return Err(err(e.clone())),
        Some(Ok(r)) => r,
    };
    let oif = route
        .oif
        .ok_or_else(|| err("the route has no output interface".into()))?;
    let link = find_index(links, oif, &format!("the route to {dst}"))?;
    Ok(match route.src {
        Some(src) => Pick::pinned(link, src),
        None => Pick::link(link),
    })
}

/// The interface of the default route(s) of the families in use.
fn by_default_route<'a>(
    host: &HostState,
    links: &[&'a LinkState],
    stack: IpStack,
) -> Result<Pick<'a>, IfaceError> {
    let v4 = if stack.ipv4() {
        Some(find_index(
            links,
            default_route_oif(&host.routes_v4, false)?,
            "the IPv4 default route",
        )?)
    } else {
        None
    };
    let v6 = if stack.ipv6() {
        Some(find_index(
            links,
            default_route_oif(&host.routes_v6, true)?,
            "the IPv6 default route",
        )?)
    } else {
        None
    };
    match (v4, v6) {
        (Some(a), Some(b)) if a.index != b.index => Err(IfaceError::DualStackMismatch {
            v4: a.name.clone(),
            v6: b.name.clone(),
        }),
        (Some(l), _) | (None, Some(l)) => Ok(Pick::link(l)),
        (None, None) => Err(IfaceError::NoIpStack),
    }
}

/// The output interface of the default route the kernel prefers (main table, lowest metric, then dump order).
pub fn default_route_oif(routes: &[Route], ipv6: bool) -> Result<u32, IfaceError> {
    let best = routes
        .iter()
        .filter(|r| {
            r.dst.prefix_len() == 0
                && r.dst.addr().is_ipv6() == ipv6
                && r.table.unwrap_or(RT_TABLE_MAIN) == RT_TABLE_MAIN
                && !r.blackhole
        })
        .min_by_key(|r| r.priority.unwrap_or(0))
        .ok_or(IfaceError::NoDefaultRoute { ipv6 })?;
    best.oif
        .ok_or(IfaceError::DefaultRouteWithoutInterface { ipv6 })
}

fn find_index<'a>(
    links: &[&'a LinkState],
    index: u32,
    what: &str,
) -> Result<&'a LinkState, IfaceError> {
    links
        .iter()
        .copied()
        .find(|l| l.index == index)
        .ok_or_else(|| IfaceError::NoSuchIndex {
            index,
            what: what.to_string(),
        })
}

/// The usable addresses of one family, best first (see the module documentation).
pub fn usable_addrs(link: &LinkState, ipv6: bool) -> impl Iterator<Item = IpAddr> + '_ {
    let mut v: Vec<(u8, u8, u8, IpAddr)> = link
        .addrs
        .iter()
        .filter(|a| a.ip.is_ipv6() == ipv6)
        .filter(|a| a.flags & (IFA_F_DEPRECATED | IFA_F_TENTATIVE | IFA_F_DADFAILED) == 0)
        .filter_map(|a| {
            let class = if is_global_unicast(a.ip) {
                0
            } else if is_link_local_unicast(a.ip) {
                1
            } else {
                return None;
            };
            let dynamic = u8::from(a.flags & IFA_F_PERMANENT == 0);
            let temporary = u8::from(a.flags & IFA_F_TEMPORARY != 0);
            Some((class, dynamic, temporary, a.ip))
        })
        .collect();
    v.sort_by_key(|(c, d, t, _)| (*c, *d, *t));
    v.into_iter().map(|(_, _, _, ip)| ip)
}

/// Go's `net.IP.IsGlobalUnicast`: not unspecified, loopback, multicast, link-local or (IPv4) limited broadcast.
pub fn is_global_unicast(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v) => {
            !v.is_unspecified()
                && !v.is_loopback()
                && !v.is_multicast()
                && !v.is_link_local()
                && !v.is_broadcast()
        }
        IpAddr::V6(v) => {
            !v.is_unspecified()
                && !v.is_loopback()
                && !v.is_multicast()
                && !is_link_local_unicast(ip)
        }
    }
}

/// Go's `net.IP.IsLinkLocalUnicast`: 169.254.0.0/16 or fe80::/10.
pub fn is_link_local_unicast(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v) => v.is_link_local(),
        IpAddr::V6(v) => v.segments()[0] & 0xffc0 == 0xfe80,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ipnet::IpNet;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    fn addr(s: &str, flags: u32) -> AddrState {
        AddrState {
            ip: ip(s),
            prefix_len: if s.contains(':') { 64 } else { 24 },
            flags,
        }
    }

    fn link(index: u32, name: &str, addrs: Vec<AddrState>) -> LinkState {
        LinkState {
            index,
            name: name.into(),
            mtu: 1500,
            addrs,
        }
    }

    fn default_via(oif: u32, v6: bool, metric: Option<u32>) -> Route {
        let dst: IpNet = if v6 { "::/0" } else { "0.0.0.0/0" }.parse().unwrap();
        let mut r = Route::new(dst).dev(oif);
        r.table = Some(RT_TABLE_MAIN);
        r.priority = metric;
        r
    }

    const P: u32 = IFA_F_PERMANENT;

    /// lo, eth0 (default route, 192.0.2.1 + 2001:db8:1::1), eth1 (198.51.100.1 + 2001:db8:2::1), eth2 (no IPv4).
    fn host() -> HostState {
        HostState {
            links: vec![
                link(
                    3,
                    "eth1",
                    vec![
                        addr("198.51.100.1", P),
                        addr("2001:db8:2::1", P),
                        addr("fe80::2", P),
                    ],
                ),
                link(1, "lo", vec![addr("127.0.0.1", P), addr("::1", P)]),
                link(
                    2,
                    "eth0",
                    vec![
                        addr("192.0.2.1", P),
                        addr("192.0.2.50", P),
                        addr("2001:db8:1::1", P),
                        addr("fe80::1", P),
                    ],
                ),
                link(4, "eth2", vec![addr("fe80::4", P)]),
            ],
            routes_v4: vec![default_via(2, false, None)],
            routes_v6: vec![default_via(2, true, Some(1024))],
            can_reach: None,
        }
    }

    fn opts() -> SelectOptions {
        SelectOptions::default()
    }

    #[test]
    fn stack_from_flags() {
        assert_eq!(IpStack::from_enabled(true, false).unwrap(), IpStack::V4);
        assert_eq!(IpStack::from_enabled(false, true).unwrap(), IpStack::V6);
        assert_eq!(IpStack::from_enabled(true, true).unwrap(), IpStack::Dual);
        assert!(matches!(
            IpStack::from_enabled(false, false),
            Err(IfaceError::NoIpStack)
        ));
    }

    #[test]
    fn default_route_v4_v6_dual() {
        let h = host();
        let e = select(&h, &opts(), IpStack::V4).unwrap();
        assert_eq!((e.index, e.name.as_str(), e.mtu), (2, "eth0", 1500));
        assert_eq!(e.iface_addr, Some(Ipv4Addr::new(192, 0, 2, 1)));
        assert_eq!(e.ext_addr, e.iface_addr);
        assert_eq!((e.iface_v6_addr, e.ext_v6_addr), (None, None));

        let e = select(&h, &opts(), IpStack::V6).unwrap();
        assert_eq!(e.name, "eth0");
        assert_eq!(e.iface_addr, None);
        assert_eq!(e.iface_v6_addr, Some("2001:db8:1::1".parse().unwrap()));
        assert_eq!(e.ext_v6_addr, e.iface_v6_addr);

        let e = select(&h, &opts(), IpStack::Dual).unwrap();
        assert_eq!(e.name, "eth0");
        assert!(e.iface_addr.is_some() && e.iface_v6_addr.is_some());
    }

    #[test]
    fn dual_stack_needs_one_interface() {
        let mut h = host();
        h.routes_v6 = vec![default_via(3, true, None)];
        let e = select(&h, &opts(), IpStack::Dual).unwrap_err();
        assert!(
            matches!(&e, IfaceError::DualStackMismatch { v4, v6 } if v4 == "eth0" && v6 == "eth1"),
            "{e}"
        );
        assert!(e.to_string().contains("eth0") && e.to_string().contains("eth1"));
        // Each family alone is fine.
        assert_eq!(select(&h, &opts(), IpStack::V6).unwrap().name, "eth1");
    }

    #[test]
    fn default_route_rules() {
        let mut h = host();
        h.routes_v4 = vec![];
        assert!(matches!(
            select(&h, &opts(), IpStack::V4),
            Err(IfaceError::NoDefaultRoute { ipv6: false })
        ));
        // Other tables, blackholes and non-default routes do not count; the lowest metric wins.
        let mut other_table = default_via(3, false, None);
        other_table.table = Some(100);
        let mut bh = default_via(3, false, Some(0));
        bh.blackhole = true;
        let specific = Route::new("10.0.0.0/8".parse().unwrap()).dev(3);
        h.routes_v4 = vec![
            other_table,
            bh,
            specific,
            default_via(2, false, Some(200)),
            default_via(3, false, Some(100)),
        ];
        assert_eq!(select(&h, &opts(), IpStack::V4).unwrap().name, "eth1");
        // Multipath: no single interface.
        let mut mp = default_via(2, false, None);
        mp.oif = None;
        h.routes_v4 = vec![mp];
        assert!(matches!(
            select(&h, &opts(), IpStack::V4),
            Err(IfaceError::DefaultRouteWithoutInterface { ipv6: false })
        ));
        // A route through an interface we do not know.
        h.routes_v4 = vec![default_via(99, false, None)];
        let e = select(&h, &opts(), IpStack::V4).unwrap_err();
        assert!(
            matches!(e, IfaceError::NoSuchIndex { index: 99, .. }),
            "{e}"
        );
    }

    #[test]
    fn iface_by_name_and_ip_in_order() {
        let h = host();
        let mut o = opts();
        o.ifaces = vec!["nope".into(), "198.51.100.9".into(), "eth1".into()];
        let e = select(&h, &o, IpStack::V4).unwrap();
        assert_eq!(e.name, "eth1");
        assert_eq!(e.iface_addr, Some(Ipv4Addr::new(198, 51, 100, 1)));

        // By IP: that address is used even when it is not the first.
        o.ifaces = vec!["192.0.2.50".into()];
        let e = select(&h, &o, IpStack::V4).unwrap();
        assert_eq!(
            (e.name.as_str(), e.iface_addr),
            ("eth0", Some(Ipv4Addr::new(192, 0, 2, 50)))
        );
        o.ifaces = vec!["::ffff:192.0.2.50".into()];
        assert_eq!(select(&h, &o, IpStack::V4).unwrap().name, "eth0");

        // By an IPv6 address in dual-stack: the IPv4 address comes from the same interface.
        o.ifaces = vec!["2001:db8:2::1".into()];
        let e = select(&h, &o, IpStack::Dual).unwrap();
        assert_eq!(e.name, "eth1");
        assert_eq!(e.iface_addr, Some(Ipv4Addr::new(198, 51, 100, 1)));
        assert_eq!(e.iface_v6_addr, Some("2001:db8:2::1".parse().unwrap()));

        // An interface without IPv4 is skipped for the next candidate; the reasons are all reported.
        o.ifaces = vec!["eth2".into(), "lo".into()];
        let e = select(&h, &o, IpStack::V4).unwrap_err();
        let s = e.to_string();
        assert!(
            s.contains("--iface=eth2") && s.contains("--iface=lo") && s.contains("no usable IPv4"),
            "{s}"
        );
        o.ifaces = vec!["eth2".into(), "eth0".into()];
        assert_eq!(select(&h, &o, IpStack::V4).unwrap().name, "eth0");
        // eth2 has a link-local IPv6 address, which is usable when nothing better exists.
        o.ifaces = vec!["eth2".into()];
        let e = select(&h, &o, IpStack::V6).unwrap();
        assert_eq!(e.iface_v6_addr, Some("fe80::4".parse().unwrap()));
    }

    #[test]
    fn regex_addresses_first_then_names() {
        let h = host();
        let mut o = opts();
        o.iface_regexes = vec![r"^198\.51\.".into()];
        let e = select(&h, &o, IpStack::V4).unwrap();
        assert_eq!(
            (e.name.as_str(), e.iface_addr),
            ("eth1", Some(Ipv4Addr::new(198, 51, 100, 1)))
        );
        // Address matched even when it is not the interface's first one.
        o.iface_regexes = vec![r"\.50$".into()];
        let e = select(&h, &o, IpStack::V4).unwrap();
        assert_eq!(e.iface_addr, Some(Ipv4Addr::new(192, 0, 2, 50)));
        // Names.
        o.iface_regexes = vec![r"^eth1$".into()];
        assert_eq!(select(&h, &o, IpStack::V4).unwrap().name, "eth1");
        // Addresses are matched before names: "1" is in eth1's name, but eth0 (a lower index) has an address with
        // a "1" in it.
        o.iface_regexes = vec!["1".into()];
        assert_eq!(select(&h, &o, IpStack::V4).unwrap().name, "eth0");
        // Loopback addresses are never candidates; its name is.
        o.iface_regexes = vec!["^127".into()];
        assert!(select(&h, &o, IpStack::V4).is_err());
        // Dual-stack: both families must match on one interface for an address match.
        o.iface_regexes = vec![r"^(198\.51\.100\.1|2001:db8:2::1)$".into()];
        let e = select(&h, &o, IpStack::Dual).unwrap();
        assert_eq!(e.name, "eth1");
        o.iface_regexes = vec![r"^(192\.0\.2\.1|2001:db8:2::1)$".into()];
        assert!(select(&h, &o, IpStack::Dual).is_err());
        // A name match without a usable address is passed over for the next name match.
        o.iface_regexes = vec!["^eth[12]$".into()];
        assert_eq!(select(&h, &o, IpStack::V4).unwrap().name, "eth1");
        o.iface_regexes = vec!["^eth2$".into()];
        let s = select(&h, &o, IpStack::V4).unwrap_err().to_string();
        assert!(
            s.contains("only unusable") && s.contains("eth2 has no usable IPv4"),
            "{s}"
        );
        // Regexes are tried in order, after --iface.
        o.ifaces = vec!["nope".into()];
        o.iface_regexes = vec!["^wlan".into(), "^eth0$".into()];
        assert_eq!(select(&h, &o, IpStack::V4).unwrap().name, "eth0");
    }

    #[test]
    fn regex_errors_name_the_pattern() {
        let h = host();
        let mut o = opts();
        o.iface_regexes = vec!["(".into(), "^wlan".into()];
        let s = select(&h, &o, IpStack::V4).unwrap_err().to_string();
        assert!(
            s.contains("--iface-regex=(") && s.contains("not a valid regular expression"),
            "{s}"
        );
        assert!(
            s.contains("--iface-regex=^wlan") && s.contains("eth0:[192.0.2.1 192.0.2.50]"),
            "{s}"
        );
    }

    #[test]
    fn can_reach() {
        let mut h = host();
        let mut o = opts();
        o.can_reach = Some(ip("198.51.100.77"));
        let mut r = Route::new("198.51.100.77/32".parse().unwrap()).dev(3);
        r.src = Some(ip("198.51.100.1"));
        h.can_reach = Some(Ok(r));
        let e = select(&h, &o, IpStack::V4).unwrap();
        assert_eq!(
            (e.name.as_str(), e.iface_addr),
            ("eth1", Some(Ipv4Addr::new(198, 51, 100, 1)))
        );
        // --iface comes first.
        o.ifaces = vec!["eth0".into()];
        assert_eq!(select(&h, &o, IpStack::V4).unwrap().name, "eth0");
        o.ifaces.clear();
        h.can_reach = Some(Err("Network is unreachable".into()));
        let s = select(&h, &o, IpStack::V4).unwrap_err().to_string();
        assert!(
            s.contains("198.51.100.77") && s.contains("unreachable"),
            "{s}"
        );
    }

    #[test]
    fn public_ips() {
        let h = host();
        let mut o = opts();
        o.public_ip = Some(Ipv4Addr::new(203, 0, 113, 5));
        o.public_ipv6 = Some("2001:db8:ff::5".parse().unwrap());
        // Not local: default route's interface, public addresses published.
        let e = select(&h, &o, IpStack::Dual).unwrap();
        assert_eq!(e.name, "eth0");
        assert_eq!(e.iface_addr, Some(Ipv4Addr::new(192, 0, 2, 1)));
        assert_eq!(e.ext_addr, Some(Ipv4Addr::new(203, 0, 113, 5)));
        assert_eq!(e.ext_v6_addr, Some("2001:db8:ff::5".parse().unwrap()));
        // Local: its interface, that address.
        o.public_ip = Some(Ipv4Addr::new(198, 51, 100, 1));
        o.public_ipv6 = None;
        let e = select(&h, &o, IpStack::V4).unwrap();
        assert_eq!(e.name, "eth1");
        assert_eq!(e.iface_addr, Some(Ipv4Addr::new(198, 51, 100, 1)));
        // With an explicit option the public IP only sets the published address.
        o.ifaces = vec!["eth0".into()];
        let e = select(&h, &o, IpStack::V4).unwrap();
        assert_eq!(e.name, "eth0");
        assert_eq!(e.ext_addr, Some(Ipv4Addr::new(198, 51, 100, 1)));
    }

    #[test]
    fn address_preference() {
        let l = link(
            7,
            "x",
            vec![
                addr("169.254.1.1", P),
                addr("10.0.0.9", 0),                    // dynamic
                addr("10.0.0.8", P | IFA_F_DEPRECATED), // skipped
                addr("10.0.0.7", P),
                addr("2001:db8::99", IFA_F_TEMPORARY), // temporary, dynamic
                addr("2001:db8::98", 0),               // dynamic
                addr("2001:db8::97", P | IFA_F_TENTATIVE), // skipped
                addr("2001:db8::96", P | IFA_F_DADFAILED), // skipped
                addr("fe80::1", P),
                addr("2001:db8::95", P),
                addr("224.0.0.1", P),
                addr("::1", P),
            ],
        );
        let v4: Vec<String> = usable_addrs(&l, false).map(|a| a.to_string()).collect();
        assert_eq!(v4, vec!["10.0.0.7", "10.0.0.9", "169.254.1.1"]);
        let v6: Vec<String> = usable_addrs(&l, true).map(|a| a.to_string()).collect();
        assert_eq!(
            v6,
            vec!["2001:db8::95", "2001:db8::98", "2001:db8::99", "fe80::1"]
        );
    }

    #[test]
    fn mtu_zero_is_refused() {
        let mut h = host();
        for l in &mut h.links {
            l.mtu = 0;
        }
        let e = select(&h, &opts(), IpStack::V4).unwrap_err();
        assert!(
            matches!(&e, IfaceError::NoMtu { iface } if iface == "eth0"),
            "{e}"
        );
    }

    #[test]
    fn go_address_classes() {
        for g in ["10.0.0.1", "192.0.2.1", "2001:db8::1", "fd00::1"] {
            assert!(is_global_unicast(ip(g)), "{g}");
        }
        for n in [
            "0.0.0.0",
            "127.0.0.1",
            "169.254.0.1",
            "224.0.0.1",
            "255.255.255.255",
            "::",
            "::1",
            "fe80::1",
            "ff02::1",
        ] {
            assert!(!is_global_unicast(ip(n)), "{n}");
        }
        assert!(is_link_local_unicast(ip("febf::1")));
        assert!(!is_link_local_unicast(ip("fec0::1")));
    }

    #[test]
    fn from_cli() {
        let o = crate::cli::parse_from(
            [
                "flanneld",
                "--iface=a",
                "--iface-regex=b",
                "--iface-can-reach=192.0.2.1",
                "--public-ip=203.0.113.1",
            ],
            |_| None,
        )
        .unwrap();
        let s = SelectOptions::from_cli(&o);
        assert_eq!(s.ifaces, vec!["a"]);
        assert_eq!(s.iface_regexes, vec!["b"]);
        assert_eq!(s.can_reach, Some(ip("192.0.2.1")));
        assert_eq!(s.public_ip, Some(Ipv4Addr::new(203, 0, 113, 1)));
        assert!(s.explicit());
        assert!(!SelectOptions::default().explicit());
    }
}
