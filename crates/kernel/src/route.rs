//! Routes.

use crate::error::{Error, Result};
use crate::netlink::{is_errno, Netlink};
use futures::TryStreamExt;
use ipnet::IpNet;
use netlink_packet_route::route::{
    RouteAddress, RouteAttribute, RouteMessage, RouteProtocol, RouteScope, RouteType,
};
use netlink_packet_route::AddressFamily;
use rtnetlink::RouteMessageBuilder;
use std::net::IpAddr;

/// A route to install or one found in the kernel.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Route {
    /// Destination.
    pub dst: IpNet,
    /// Next hop.
    pub gateway: Option<IpAddr>,
    /// Output interface.
    pub oif: Option<u32>,
    /// Mark the next hop as directly reachable even if no address covers it.
    pub onlink: bool,
    /// Scope (0 universe, 253 link, 254 host).
    pub scope: u8,
    /// Metric.
    pub priority: Option<u32>,
    /// Table (main if `None`).
    pub table: Option<u32>,
    /// Preferred source address.
    pub src: Option<IpAddr>,
    /// Blackhole instead of unicast.
    pub blackhole: bool,
    /// Who installed the route (`RTPROT_*`; `ip route` shows it as `proto`): [`PROTO_BOOT`] unless set.
    pub protocol: u8,
}

/// `RTPROT_BOOT`: what `ip route add` and upstream flannel install routes with.
pub const PROTO_BOOT: u8 = 3;

impl Route {
    /// A plain unicast route.
    pub fn new(dst: IpNet) -> Self {
        Self {
            dst: dst.trunc(),
            gateway: None,
            oif: None,
            onlink: false,
            scope: 0,
            priority: None,
            table: None,
            src: None,
            blackhole: false,
            protocol: PROTO_BOOT,
        }
    }

    /// Sets the protocol the route is installed with.
    pub fn protocol(mut self, protocol: u8) -> Self {
        self.protocol = protocol;
        self
    }

    /// Sets the gateway.
    pub fn via(mut self, gw: IpAddr) -> Self {
        self.gateway = Some(gw);
        self
    }

    /// Sets the output interface.
    pub fn dev(mut self, oif: u32) -> Self {
        self.oif = Some(oif);
        self
    }

    fn message(&self) -> Result<RouteMessage> {
        let mut b = RouteMessageBuilder::<IpAddr>::new()
            .destination_prefix(self.dst.addr(), self.dst.prefix_len())
            .map_err(|e| Error::Conflict(format!("route {}: {e}", self.dst)))?;
        if let Some(gw) = self.gateway {
            b = b
                .gateway(gw)
                .map_err(|e| Error::Conflict(format!("route {} via {gw}: {e}", self.dst)))?;
        }
        if let Some(oif) = self.oif {
            b = b.output_interface(oif);
        }
        if self.onlink {
            b = b.onlink();
        }
        if let Some(p) = self.priority {
            b = b.priority(p);
        }
        if let Some(t) = self.table {
            b = b.table_id(t);
        }
        if let Some(src) = self.src {
            b = b
                .pref_source(src)
                .map_err(|e| Error::Conflict(format!("route {} src {src}: {e}", self.dst)))?;
        }
        b = b
            .scope(RouteScope::from(self.scope))
            .protocol(RouteProtocol::from(self.protocol));
        if self.blackhole {
            b = b.kind(RouteType::BlackHole);
        }
        Ok(b.build())
    }
}

fn route_addr(a: &RouteAddress) -> Option<IpAddr> {
    match a {
        RouteAddress::Inet(v) => Some(IpAddr::V4(*v)),
        RouteAddress::Inet6(v) => Some(IpAddr::V6(*v)),
        _ => None,
    }
}

fn from_message(m: &RouteMessage) -> Option<Route> {
    let v4 = m.header.address_family == AddressFamily::Inet;
    let mut dst = None;
    let mut r = Route::new(if v4 {
        "0.0.0.0/0".parse().ok()?
    } else {
        "::/0".parse().ok()?
    });
    r.scope = u8::from(m.header.scope);
    r.onlink = m
        .header
        .flags
        .contains(netlink_packet_route::route::RouteFlags::Onlink);
    r.blackhole = m.header.kind == RouteType::BlackHole;
    r.protocol = u8::from(m.header.protocol);
    let mut table = u32::from(m.header.table);
    for a in &m.attributes {
        match a {
            RouteAttribute::Destination(d) => dst = route_addr(d),
            RouteAttribute::Gateway(g) => r.gateway = route_addr(g),
            RouteAttribute::Oif(i) => r.oif = Some(*i),
            RouteAttribute::Priority(p) => r.priority = Some(*p),
            RouteAttribute::Table(t) => table = *t,
            RouteAttribute::PrefSource(s) => r.src = route_addr(s),
            _ => {}
        }
    }
    if let Some(d) = dst {
        r.dst = IpNet::new(d, m.header.destination_prefix_length).ok()?;
    }
    r.table = Some(table);
    Some(r)
}

impl Netlink {
    /// Adds a route (`replace` = `ip route replace`); adding an identical existing route is not an error.
    pub async fn add_route(&self, r: &Route, replace: bool) -> Result<()> {
        let mut req = self.handle.route().add(r.message()?);
        if replace {
            req = req.replace();
        }
        match req.execute().await {
            Ok(()) => Ok(()),
            Err(e) if !replace && is_errno(&e, libc::EEXIST) => Ok(()),
            Err(e) => Err(Error::nl(
                format!("add route {} via {:?} dev #{:?}", r.dst, r.gateway, r.oif),
                e,
            )),
        }
    }

    /// Deletes a route; one already gone is not an error.
    pub async fn delete_route(&self, r: &Route) -> Result<()> {
        let mut m = r.message()?;
        // Match any scope, type and protocol, as `ip route del` does: the kernel compares the ones that are set.
        m.header.scope = RouteScope::NoWhere;
        m.header.protocol = RouteProtocol::Unspec;
        m.header.kind = RouteType::Unspec;
        match self.handle.route().del(m).execute().await {
            Ok(()) => Ok(()),
            Err(e) if is_errno(&e, libc::ESRCH) || is_errno(&e, libc::ENOENT) => Ok(()),
            Err(e) => Err(Error::nl(format!("delete route {}", r.dst), e)),
        }
    }

    /// The routes of one family in every table (filter by `table` on the result).
    pub async fn routes(&self, ipv6: bool) -> Result<Vec<Route>> {
        let b = if ipv6 {
            RouteMessageBuilder::<std::net::Ipv6Addr>::new()
                .table_id(0)
                .build()
        } else {
            RouteMessageBuilder::<std::net::Ipv4Addr>::new()
                .table_id(0)
                .build()
        };
        let msgs: Vec<RouteMessage> = self
            .handle
            .route()
            .get(b)
            .execute()
            .try_collect()
            .await
            .map_err(|e| Error::nl("list routes", e))?;
        Ok(msgs.iter().filter_map(from_message).collect())
    }

    /// The route the kernel would pick to reach `dst` (`ip route get`): its output interface, gateway and preferred
    /// source address. `dst` in the result is `dst` as a host route.
    pub async fn route_get(&self, dst: IpAddr) -> Result<Route> {
        let mut m = RouteMessage::default();
        let (family, len, addr) = match dst {
            IpAddr::V4(v) => (AddressFamily::Inet, 32, RouteAddress::Inet(v)),
            IpAddr::V6(v) => (AddressFamily::Inet6, 128, RouteAddress::Inet6(v)),
        };
        m.header.address_family = family;
        m.header.destination_prefix_length = len;
        m.attributes.push(RouteAttribute::Destination(addr));
        let mut s = self.handle.route().get(m).execute();
        let msg = s
            .try_next()
            .await
            .map_err(|e| Error::nl(format!("get route to {dst}"), e))?
            .ok_or_else(|| Error::NotFound(format!("route to {dst}")))?;
        from_message(&msg).ok_or_else(|| Error::NotFound(format!("route to {dst}")))
    }
}
