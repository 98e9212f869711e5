//! Interface addresses.

use crate::error::{Error, Result};
use crate::netlink::{is_errno, Netlink};
use futures::TryStreamExt;
use ipnet::IpNet;
use netlink_packet_route::address::{AddressAttribute, AddressFlags, AddressMessage};
use std::net::IpAddr;

/// An address on a link, with the raw message kept for deletion.
#[derive(Debug, Clone)]
pub struct Address {
    /// Address and prefix.
    pub net: IpNet,
    /// Link index.
    pub index: u32,
    /// Scope (0 global, 253 link, 254 host).
    pub scope: u8,
    msg: AddressMessage,
}

impl Address {
    /// Still being checked for duplicates (IPv6 DAD): the kernel refuses it as a route's source meanwhile.
    pub fn tentative(&self) -> bool {
        self.flags() & AddressFlags::Tentative.bits() != 0
    }

    /// Duplicate address detection found another node with it.
    pub fn dad_failed(&self) -> bool {
        self.flags() & AddressFlags::Dadfailed.bits() != 0
    }
}

impl Netlink {
    /// The addresses on a link.
    pub async fn addresses(&self, index: u32) -> Result<Vec<Address>> {
        let msgs: Vec<AddressMessage> = self
            .handle
            .address()
            .get()
            .set_link_index_filter(index)
            .execute()
            .try_collect()
            .await
            .map_err(|e| Error::nl(format!("list addresses of link #{index}"), e))?;
        let mut out = Vec::new();
        for m in msgs {
            if m.header.index != index {
                continue;
            }
            // IFA_LOCAL is the interface's own address on point-to-point links; IFA_ADDRESS otherwise.
            let local = m.attributes.iter().find_map(|a| match a {
                AddressAttribute::Local(ip) => Some(*ip),
                _ => None,
            });
            let addr = local.or_else(|| {
                m.attributes.iter().find_map(|a| match a {
                    AddressAttribute::Address(ip) => Some(*ip),
                    _ => None,
                })
            });
            if let Some(ip) = addr {
                if let Ok(net) = IpNet::new(ip, m.header.prefix_len) {
                    out.push(Address {
                        net,
                        index,
                        scope: u8::from(m.header.scope),
                        msg: m,
                    });
                }
            }
        }
        Ok(out)
    }

    /// Adds an address; an identical address already present is not an error.
    pub async fn add_address(&self, index: u32, net: IpNet) -> Result<()> {
        match self
            .handle
            .address()
            .add(index, net.addr(), net.prefix_len())
            .execute()
            .await
        {
            Ok(()) => Ok(()),
            Err(e) if is_errno(&e, libc::EEXIST) => Ok(()),
            Err(e) => Err(Error::nl(format!("add address {net} to link #{index}"), e)),
        }
    }

    /// Deletes an address listed by [`Netlink::addresses`].
    pub async fn delete_address(&self, a: &Address) -> Result<()> {
        match self.handle.address().del(a.msg.clone()).execute().await {
            Ok(()) => Ok(()),
            Err(e) if is_errno(&e, libc::EADDRNOTAVAIL) => Ok(()),
            Err(e) => Err(Error::nl(
                format!("delete address {} from link #{}", a.net, a.index),
                e,
            )),
        }
    }
}

impl Address {
    /// The address flags (`IFA_F_*`: permanent, deprecated, tentative, temporary, ...), from `IFA_FLAGS` when the
    /// kernel sends it (all 32 bits), else from the header (the low 8 bits).
    pub fn flags(&self) -> u32 {
        self.msg
            .attributes
            .iter()
            .find_map(|a| match a {
                AddressAttribute::Flags(f) => Some(f.bits()),
                _ => None,
            })
            .unwrap_or_else(|| u32::from(self.msg.header.flags.bits()))
    }
}

/// `true` for addresses a CNI result would report (not link-local, not loopback).
pub fn is_global_unicast(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v) => {
            !v.is_loopback() && !v.is_link_local() && !v.is_multicast() && !v.is_unspecified()
        }
        IpAddr::V6(v) => {
            !v.is_loopback()
                && !v.is_multicast()
                && !v.is_unspecified()
                && (v.segments()[0] & 0xffc0) != 0xfe80
        }
    }
}
