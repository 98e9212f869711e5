//! The one layer that talks to the kernel: links, addresses, routes, neighbours, sysctls, network namespaces and
//! firewall rule sets. Shared by flanneld and the CNI plugins.

pub mod error;

pub use error::{Error, Result};
