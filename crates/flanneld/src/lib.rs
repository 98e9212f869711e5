//! flanneld: leases a subnet per node and programs the overlay so pods on different nodes reach each other.

pub mod admission;
pub mod backend;
pub mod cli;
pub mod daemon;
pub mod health;
pub mod iface;
pub mod install_cni;
pub mod memory;
pub mod traffic;
