//! Errors of the kernel layer: every one names the operation and the object.

use std::io;

/// A kernel-layer failure.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A netlink request failed.
    #[error("{op}: {source}")]
    Netlink {
        /// What was being done, naming the object.
        op: String,
        /// The netlink error.
        #[source]
        source: rtnetlink::Error,
    },
    /// A system call or file operation failed.
    #[error("{op}: {source}")]
    Io {
        /// What was being done, naming the object.
        op: String,
        /// The OS error.
        #[source]
        source: io::Error,
    },
    /// An object was not found.
    #[error("{0} not found")]
    NotFound(String),
    /// The kernel state conflicts with what was asked.
    #[error("{0}")]
    Conflict(String),
    /// A firewall command (nft, iptables) failed.
    #[error("{op}: {msg}")]
    Firewall {
        /// What was being done.
        op: String,
        /// The tool's error output.
        msg: String,
    },
}

impl Error {
    /// Wraps a netlink error with what was being done.
    pub fn nl(op: impl Into<String>, source: rtnetlink::Error) -> Self {
        Self::Netlink {
            op: op.into(),
            source,
        }
    }

    /// Wraps an I/O error with what was being done.
    pub fn io(op: impl Into<String>, source: io::Error) -> Self {
        Self::Io {
            op: op.into(),
            source,
        }
    }

    /// The errno of a netlink error, if it carries one.
    pub fn errno(&self) -> Option<i32> {
        match self {
            Self::Netlink {
                source: rtnetlink::Error::NetlinkError(m),
                ..
            } => m.code.map(|c| -c.get()),
            Self::Io { source, .. } => source.raw_os_error(),
            _ => None,
        }
    }
}

/// Shorthand result type.
pub type Result<T> = std::result::Result<T, Error>;
