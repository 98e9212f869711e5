//! The one layer that talks to the kernel: links, addresses, routes, neighbours, sysctls, network namespaces and
//! firewall rule sets. Shared by flanneld and the CNI plugins.

pub mod addr;
pub mod bridge_vlan;
pub mod conntrack;
pub mod error;
pub mod firewall;
pub mod hostdev;
pub mod ipmasq;
pub mod link;
pub mod neigh;
pub mod netlink;
pub mod netns;
pub mod packet_socket;
pub mod route;
pub mod spoofcheck;
pub mod sublink;
pub mod sysctl;
pub mod tc;
pub mod tun;
pub mod vxlan;

pub use error::{Error, Result};
pub use link::{Link, Mac};
pub use netlink::Netlink;
pub use netns::Netns;
