//! Moving an existing device between network namespaces (the `host-device` plugin), and its alias, where the
//! plugin keeps the device's host name while it is in a pod (as the reference plugin does, so either can move a
//! device the other moved in back out).

use crate::error::{Error, Result};
use crate::netlink::{is_errno, Netlink};
use futures::TryStreamExt;
use netlink_packet_route::link::LinkAttribute;
use rtnetlink::LinkUnspec;
use std::os::fd::RawFd;

impl Netlink {
    /// Moves link `index` of this connection's namespace into the namespace open as `netns_fd`, named `name` there
    /// and, when `alias` is given, with that alias (`IFLA_IFALIAS`), in ONE request: the kernel moves the device
    /// (which takes it down and removes its addresses and routes), then renames it and sets the alias under the
    /// same lock, so no process kill can leave it moved but not renamed. The name must be free in the target
    /// namespace: should the rename fail there, the device is moved already under its old name.
    pub async fn move_link_to_netns(
        &self,
        index: u32,
        netns_fd: RawFd,
        name: &str,
        alias: Option<&str>,
    ) -> Result<()> {
        let mut m = LinkUnspec::new_with_index(index)
            .setns_by_fd(netns_fd)
            .name(name.to_string());
        if let Some(a) = alias {
            m = m.alias(a.to_string());
        }
        self.handle
            .link()
            .set(m.build())
            .execute()
            .await
            .map_err(|e| {
                if is_errno(&e, libc::EEXIST) {
                    Error::Conflict(format!(
                        "move link #{index} to another namespace as {name}: that name is taken there"
                    ))
                } else {
                    Error::nl(format!("move link #{index} to another namespace as {name}"), e)
                }
            })
    }

    /// The alias (`IFLA_IFALIAS`) of link `index`; `None` when it has none or the link is gone.
    pub async fn link_alias(&self, index: u32) -> Result<Option<String>> {
        let mut s = self.handle.link().get().match_index(index).execute();
        match s.try_next().await {
            Ok(Some(m)) => Ok(m.attributes.iter().find_map(|a| match a {
                LinkAttribute::IfAlias(s) if !s.is_empty() => Some(s.clone()),
                _ => None,
            })),
            Ok(None) => Ok(None),
            Err(e) if is_errno(&e, libc::ENODEV) => Ok(None),
            Err(e) => Err(Error::nl(format!("get link #{index}"), e)),
        }
    }
}
