//! A route-netlink connection bound to one network namespace.

use crate::error::{Error, Result};
use crate::netns::Netns;
use rtnetlink::Handle;

/// A netlink connection. Its socket stays in the namespace it was opened in, so later calls need no `setns`.
#[derive(Clone)]
pub struct Netlink {
    pub(crate) handle: Handle,
}

impl Netlink {
    /// Opens a connection in the calling thread's namespace. Needs a running tokio runtime.
    pub fn current() -> Result<Self> {
        let (conn, handle, _) =
            rtnetlink::new_connection().map_err(|e| Error::io("open netlink socket", e))?;
        tokio::spawn(conn);
        Ok(Self { handle })
    }

    /// Opens a connection inside `ns`. Needs a running tokio runtime.
    pub fn in_netns(ns: &Netns) -> Result<Self> {
        let rt = tokio::runtime::Handle::current();
        let (conn, handle, _) = ns
            .run(move || {
                // The socket registers with the reactor when created, so the runtime must be entered on this thread.
                let _g = rt.enter();
                rtnetlink::new_connection()
            })?
            .map_err(|e| Error::io(format!("open netlink socket in {}", ns.path().display()), e))?;
        tokio::spawn(conn);
        Ok(Self { handle })
    }

    /// The underlying rtnetlink handle, for requests this layer does not wrap yet.
    pub fn handle(&self) -> &Handle {
        &self.handle
    }
}

/// `true` if the error is the given errno (for example `libc::EEXIST`).
pub(crate) fn is_errno(e: &rtnetlink::Error, errno: i32) -> bool {
    matches!(e, rtnetlink::Error::NetlinkError(m) if m.code.map(|c| -c.get()) == Some(errno))
}
