//! The `macvlan` plugin: a macvlan sub-interface of the node's NIC per pod, drop-in for the reference
//! (`plugins/main/macvlan`). The shared steps are in [`super::sublink`].
//!
//! Keys: `master`, `mode` (`bridge` (default), `private`, `vepa`, `passthru`), `mtu`, `mac`, `linkInContainer`,
//! `ipam` (optional: without it the link is only brought up), `dns`. The MAC is, by precedence, runtimeConfig
//! `mac`, then CNI_ARGS `MAC=`, then the `mac` key, as in the reference.

use super::sublink::verbs::{add, check, del, status};
use super::sublink::{self, Addressing, Common, Sub, SubConf};
use crate::args::CniArgs;
use crate::error::CniError;
use crate::plugin::Plugin;
use crate::skel::CmdArgs;
use crate::types::NetConf;
use kernel::sublink::{MacvlanMode, SublinkKind};
use kernel::Mac;

/// The macvlan keys of a configuration.
#[derive(Debug, Clone)]
pub struct MacvlanConf {
    pub common: Common,
    pub mode: MacvlanMode,
    /// `mac` of the configuration, or runtimeConfig's (which wins).
    pub mac: Option<String>,
    /// Whether the MAC came from runtimeConfig (CNI_ARGS does not override it then).
    pub mac_from_runtime: bool,
}

impl MacvlanConf {
    pub fn from_conf(conf: &NetConf) -> Result<Self, CniError> {
        let common = Common::from_conf(conf)?;
        let mode = sublink::str_key(conf, "mode")?;
        let mode = if mode.is_empty() {
            MacvlanMode::Bridge
        } else {
            MacvlanMode::parse(&mode)
                .ok_or_else(|| CniError::config(format!("unknown macvlan mode: \"{mode}\"")))?
        };
        let rc_mac = match conf.runtime_config.as_ref().and_then(|r| r.get("mac")) {
            None | Some(serde_json::Value::Null) => None,
            Some(serde_json::Value::String(s)) if s.is_empty() => None,
            Some(serde_json::Value::String(s)) => Some(s.clone()),
            Some(v) => {
                return Err(CniError::config(format!(
                    "invalid runtimeConfig mac {v}: want a string"
                )))
            }
        };
        let conf_mac = sublink::str_key(conf, "mac")?;
        let c = Self {
            common,
            mode,
            mac_from_runtime: rc_mac.is_some(),
            mac: rc_mac.or((!conf_mac.is_empty()).then_some(conf_mac)),
        };
        if let Some(m) = &c.mac {
            mac_of(m)?;
        }
        Ok(c)
    }

    /// The MAC to give the link: runtimeConfig's, else CNI_ARGS `MAC`, else the configuration's.
    fn mac(&self, args: &CmdArgs) -> Result<Option<Mac>, CniError> {
        let mut mac = self.mac.clone();
        if !args.args.is_empty() {
            // Parsed (and refused when malformed) even when runtimeConfig's MAC wins, as in the reference.
            let a = CniArgs::parse(&args.args, &["MAC"])?;
            if let Some(m) = a
                .get("MAC")
                .filter(|m| !m.is_empty() && !self.mac_from_runtime)
            {
                mac = Some(m.to_string());
            }
        }
        mac.as_deref().map(mac_of).transpose()
    }
}

impl SubConf for MacvlanConf {
    fn common(&self) -> &Common {
        &self.common
    }

    /// ADD gives the link its MAC (runtimeConfig, CNI_ARGS or the configuration); CHECK does not compare it.
    fn sub(&self, args: &CmdArgs, for_add: bool) -> Result<Sub<'_>, CniError> {
        Ok(Sub {
            common: &self.common,
            kind: SublinkKind::Macvlan(self.mode),
            mac: if for_add { self.mac(args)? } else { None },
            addressing: Addressing::IpamOrNone,
            chained_master: false,
        })
    }
}

fn mac_of(s: &str) -> Result<Mac, CniError> {
    sublink::parse_mac(s).ok_or_else(|| {
        CniError::config(format!(
            "invalid args {s} for MAC addr: want a unicast aa:bb:cc:dd:ee:ff"
        ))
    })
}

pub const PLUGIN: Plugin = crate::plugin::main_row!("macvlan", MacvlanConf, gc: no);

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::{json, Value};

    fn parse(v: Value) -> Result<MacvlanConf, CniError> {
        MacvlanConf::from_conf(&NetConf::parse(v.to_string().as_bytes()).unwrap())
    }

    fn args(a: &str) -> CmdArgs {
        CmdArgs {
            command: crate::skel::Command::Add,
            container_id: "c".into(),
            netns: String::new(),
            ifname: "eth0".into(),
            args: a.into(),
            path: String::new(),
            stdin: vec![],
        }
    }

    #[test]
    fn modes() {
        assert_eq!(parse(json!({})).unwrap().mode, MacvlanMode::Bridge);
        assert_eq!(
            parse(json!({"mode": ""})).unwrap().mode,
            MacvlanMode::Bridge
        );
        for (s, m) in [
            ("bridge", MacvlanMode::Bridge),
            ("private", MacvlanMode::Private),
            ("vepa", MacvlanMode::Vepa),
            ("passthru", MacvlanMode::Passthru),
        ] {
            assert_eq!(parse(json!({ "mode": s })).unwrap().mode, m);
        }
        for bad in [json!("source"), json!("BRIDGE"), json!(1)] {
            assert_eq!(parse(json!({ "mode": bad })).unwrap_err().code, 7);
        }
    }

    /// runtimeConfig beats CNI_ARGS beats the `mac` key.
    #[test]
    fn mac_precedence() {
        let m = |c: &MacvlanConf, a: &str| c.mac(&args(a)).unwrap().map(|m| m.to_string());
        let key = parse(json!({"mac": "02:00:00:00:00:01"})).unwrap();
        assert_eq!(m(&key, "").as_deref(), Some("02:00:00:00:00:01"));
        assert_eq!(
            m(&key, "IgnoreUnknown=1;MAC=02:00:00:00:00:02").as_deref(),
            Some("02:00:00:00:00:02")
        );
        let rc = parse(json!({"mac": "02:00:00:00:00:01",
            "runtimeConfig": {"mac": "02:00:00:00:00:03"}}))
        .unwrap();
        assert_eq!(
            m(&rc, "MAC=02:00:00:00:00:02").as_deref(),
            Some("02:00:00:00:00:03")
        );
        assert_eq!(m(&parse(json!({})).unwrap(), "").as_deref(), None);
        assert_eq!(parse(json!({"mac": "nope"})).unwrap_err().code, 7);
        assert_eq!(
            parse(json!({"runtimeConfig": {"mac": "01:00:00:00:00:01"}}))
                .unwrap_err()
                .code,
            7
        );
        assert!(parse(json!({})).unwrap().mac(&args("MAC=zz")).is_err());
        assert_eq!(rc.mac(&args("FOO=1")).unwrap_err().code, 2);
        // An unknown CNI_ARGS key without IgnoreUnknown is refused, as in the Go library.
        assert_eq!(
            parse(json!({}))
                .unwrap()
                .mac(&args("FOO=1"))
                .unwrap_err()
                .code,
            2
        );
    }

    proptest::proptest! {
        #[test]
        fn any_mode_or_mac_never_panics(mode in ".{0,12}", mac in "[0-9a-f:]{0,20}", a in "[A-Za-z=;:0-9]{0,30}") {
            if let Ok(c) = parse(json!({"mode": mode, "mac": mac})) {
                let _ = c.mac(&args(&a));
            }
        }
    }
}
