//! The `vlan` plugin: an 802.1Q VLAN sub-interface of the node's NIC per pod, drop-in for the reference
//! (`plugins/main/vlan`). The shared steps are in [`super::sublink`].
//!
//! Keys: `master` (required), `vlanId` (0–4094), `mtu`, `linkInContainer`, `ipam` (required), `dns`.

use super::sublink::verbs::{add, check, del, status};
use super::sublink::{self, Addressing, Common, Sub, SubConf};
use crate::error::CniError;
use crate::plugin::Plugin;
use crate::skel::CmdArgs;
use crate::types::NetConf;
use kernel::sublink::SublinkKind;

/// The highest VLAN ID a link may have (4095 is reserved).
const MAX_VLAN_ID: i64 = 4094;

/// The vlan keys of a configuration.
#[derive(Debug, Clone)]
pub struct VlanConf {
    pub common: Common,
    pub vlan_id: u16,
}

impl VlanConf {
    pub fn from_conf(conf: &NetConf) -> Result<Self, CniError> {
        let common = Common::from_conf(conf)?;
        if common.master.is_none() {
            return Err(CniError::config(
                "\"master\" field is required. It specifies the host interface name to create the VLAN for",
            ));
        }
        let id = sublink::int_key(conf, "vlanId")?;
        let vlan_id = u16::try_from(id)
            .ok()
            .filter(|&v| i64::from(v) <= MAX_VLAN_ID)
            .ok_or_else(|| {
                CniError::config(format!(
                    "invalid VLAN ID {id} (must be between 0 and {MAX_VLAN_ID} inclusive)"
                ))
            })?;
        if common.ipam_type.is_none() {
            // The reference finds out only after making the link (and leaves it in the pod).
            return Err(CniError::config(
                "vlan needs an IPAM plugin (ipam.type) to address the VLAN interface",
            ));
        }
        Ok(Self { common, vlan_id })
    }
}

impl SubConf for VlanConf {
    fn common(&self) -> &Common {
        &self.common
    }

    fn sub(&self, _args: &CmdArgs, _for_add: bool) -> Result<Sub<'_>, CniError> {
        Ok(Sub {
            common: &self.common,
            kind: SublinkKind::Vlan(self.vlan_id),
            mac: None,
            addressing: Addressing::IpamOrNone,
            chained_master: false,
        })
    }
}

pub const PLUGIN: Plugin = crate::plugin::main_row!("vlan", VlanConf, gc: no);

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::{json, Value};

    fn parse(v: Value) -> Result<VlanConf, CniError> {
        let mut v = v;
        if v.get("master").is_none() {
            v["master"] = json!("eth0");
        }
        if v.get("ipam").is_none() {
            v["ipam"] = json!({"type": "host-local"});
        }
        VlanConf::from_conf(&NetConf::parse(v.to_string().as_bytes()).unwrap())
    }

    #[test]
    fn vlan_id_range() {
        assert_eq!(parse(json!({})).unwrap().vlan_id, 0);
        assert_eq!(parse(json!({"vlanId": 100})).unwrap().vlan_id, 100);
        assert_eq!(parse(json!({"vlanId": 4094})).unwrap().vlan_id, 4094);
        for bad in [
            json!(4095),
            json!(-1),
            json!(70000),
            json!("100"),
            json!(1.5),
        ] {
            assert_eq!(
                parse(json!({ "vlanId": bad })).unwrap_err().code,
                7,
                "{bad}"
            );
        }
    }

    #[test]
    fn master_and_ipam_required() {
        assert_eq!(parse(json!({"master": ""})).unwrap_err().code, 7);
        assert_eq!(parse(json!({"ipam": {}})).unwrap_err().code, 7);
    }

    proptest::proptest! {
        #[test]
        fn any_vlan_id_never_panics(id in proptest::prelude::any::<i64>()) {
            let r = parse(json!({"vlanId": id}));
            proptest::prop_assert_eq!(r.is_ok(), (0..=MAX_VLAN_ID).contains(&id));
        }
    }
}
