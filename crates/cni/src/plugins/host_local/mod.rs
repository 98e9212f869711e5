//! host-local IPAM (being written).

use crate::skel::{CmdArgs, Outcome};
use crate::types::NetConf;

/// Runs host-local for one command.
pub fn run(_args: &CmdArgs, _conf: &NetConf) -> Outcome {
    Err(crate::CniError::internal("host-local is not built yet"))
}
