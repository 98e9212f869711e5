//! The `ipvlan` plugin: an ipvlan sub-interface of the node's NIC per pod (all pods share the NIC's MAC), drop-in
//! for the reference (`plugins/main/ipvlan`). The shared steps are in [`super::sublink`].
//!
//! Keys: `master`, `mode` (`l2` (default), `l3`, `l3s`), `mtu`, `linkInContainer`, `ipam`, `dns`. As in the
//! reference, IPAM may be left out in a chain: the addresses then come from `prevResult`, and without `master`
//! the master is the previous result's single interface (else the default route's interface).

use super::sublink::verbs::{add, check, del, status};
use super::sublink::{self, Addressing, Common, Sub, SubConf};
use crate::error::CniError;
use crate::plugin::Plugin;
use crate::skel::CmdArgs;
use crate::types::NetConf;
use kernel::sublink::{IpvlanMode, SublinkKind};

/// The ipvlan keys of a configuration.
#[derive(Debug, Clone)]
pub struct IpvlanConf {
    pub common: Common,
    pub mode: IpvlanMode,
}

impl IpvlanConf {
    pub fn from_conf(conf: &NetConf) -> Result<Self, CniError> {
        let common = Common::from_conf(conf)?;
        let mode = sublink::str_key(conf, "mode")?;
        let mode = if mode.is_empty() {
            IpvlanMode::L2
        } else {
            IpvlanMode::parse(&mode)
                .ok_or_else(|| CniError::config(format!("unknown ipvlan mode: \"{mode}\"")))?
        };
        Ok(Self { common, mode })
    }
}

impl SubConf for IpvlanConf {
    fn common(&self) -> &Common {
        &self.common
    }

    fn sub(&self, _args: &CmdArgs, _for_add: bool) -> Result<Sub<'_>, CniError> {
        Ok(Sub {
            common: &self.common,
            kind: SublinkKind::Ipvlan(self.mode),
            mac: None,
            addressing: Addressing::IpamOrPrevResult,
            chained_master: true,
        })
    }
}

pub const PLUGIN: Plugin = crate::plugin::main_row!("ipvlan", IpvlanConf, gc: no);

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::{json, Value};

    fn parse(v: Value) -> Result<IpvlanConf, CniError> {
        IpvlanConf::from_conf(&NetConf::parse(v.to_string().as_bytes()).unwrap())
    }

    #[test]
    fn modes() {
        assert_eq!(parse(json!({})).unwrap().mode, IpvlanMode::L2);
        for (s, m) in [
            ("l2", IpvlanMode::L2),
            ("l3", IpvlanMode::L3),
            ("l3s", IpvlanMode::L3s),
        ] {
            assert_eq!(parse(json!({ "mode": s })).unwrap().mode, m);
        }
        for bad in [json!("L2"), json!("bridge"), json!(3)] {
            assert_eq!(parse(json!({ "mode": bad })).unwrap_err().code, 7);
        }
    }

    proptest::proptest! {
        #[test]
        fn any_mode_never_panics(mode in ".{0,12}") {
            if let Ok(c) = parse(json!({"mode": mode})) {
                proptest::prop_assert_eq!(c.mode.as_str(), if mode.is_empty() { "l2" } else { mode.as_str() });
            }
        }
    }
}
