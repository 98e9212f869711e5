//! CNI spec library and the flannel-rs CNI plugins (flannel, bridge, host-local, loopback, tuning, bandwidth,
//! portmap).

pub mod args;
pub mod attach;
pub mod conflist;
pub mod error;
pub mod identity;
pub mod invoke;
pub mod plugin;
pub mod plugins;
pub mod skel;
pub mod subnet_env;
pub mod types;
pub mod version;

pub use error::CniError;
pub use skel::{CmdArgs, Command};
pub use types::{CniResult, NetConf};
