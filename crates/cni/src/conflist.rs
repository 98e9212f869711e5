//! Network configuration lists (`*.conflist`): the runtime side of the spec, as libcni implements it — version
//! selection, the configuration each plugin in the chain receives, and the order and chaining of the plugins for
//! each command. The plugins themselves are invoked by the caller (a runtime, or the black-box tests, which exec
//! the binaries), so the list logic is the same whoever runs them.

use crate::error::{CniError, ERR_INCOMPATIBLE_VERSION};
use crate::skel::Command;
use crate::types::Attachment;
use crate::version;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

/// A network configuration list.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct NetConfList {
    /// `cniVersion`.
    #[serde(rename = "cniVersion", default)]
    pub cni_version: String,
    /// `cniVersions` (1.1.0): every version the list is valid for.
    #[serde(rename = "cniVersions", default, skip_serializing_if = "Vec::is_empty")]
    pub cni_versions: Vec<String>,
    /// Network name.
    pub name: String,
    /// `disableCheck` (bool or "true"/"false", as libcni accepts).
    #[serde(rename = "disableCheck", default, deserialize_with = "lenient_bool")]
    pub disable_check: bool,
    /// `disableGC` (1.1.0).
    #[serde(rename = "disableGC", default, deserialize_with = "lenient_bool")]
    pub disable_gc: bool,
    /// `loadOnlyInlinedPlugins` (1.1.0).
    #[serde(
        rename = "loadOnlyInlinedPlugins",
        default,
        deserialize_with = "lenient_bool"
    )]
    pub load_only_inlined_plugins: bool,
    /// The plugin objects, in chain order (kept raw: unknown keys pass through).
    pub plugins: Vec<Map<String, Value>>,
}

fn lenient_bool<'de, D: serde::Deserializer<'de>>(d: D) -> Result<bool, D::Error> {
    match Value::deserialize(d)? {
        Value::Bool(b) => Ok(b),
        Value::String(s) if s.eq_ignore_ascii_case("true") => Ok(true),
        Value::String(s) if s.eq_ignore_ascii_case("false") => Ok(false),
        Value::Null => Ok(false),
        v => Err(serde::de::Error::custom(format!(
            "expected a bool, got {v}"
        ))),
    }
}

impl NetConfList {
    /// Parses and checks a conflist (code 6 on bad JSON, 7 on a list that cannot be used).
    pub fn parse(bytes: &[u8]) -> Result<Self, CniError> {
        let l: NetConfList = serde_json::from_slice(bytes).map_err(|e| {
            CniError::decode(format!("failed to parse network configuration list: {e}"))
        })?;
        crate::skel::validate_network_name(&l.name)?;
        if l.plugins.is_empty() {
            return Err(CniError::config(format!(
                "network {}: \"plugins\" is empty",
                l.name
            )));
        }
        for (i, p) in l.plugins.iter().enumerate() {
            let typed = p
                .get("type")
                .and_then(Value::as_str)
                .is_some_and(|s| !s.is_empty());
            if !typed {
                return Err(CniError::config(format!(
                    "network {}: plugin {i} has no \"type\"",
                    l.name
                )));
            }
        }
        Ok(l)
    }

    /// The version a runtime supporting up to `max` uses: libcni keeps the `cniVersions` entries it supports,
    /// adds `cniVersion`, and picks the highest.
    pub fn effective_version(&self, max: &str) -> Option<String> {
        let mut vs: Vec<&String> = self
            .cni_versions
            .iter()
            .chain(std::iter::once(&self.cni_version))
            .collect();
        vs.retain(|v| version::parse(v).is_some() && version::parse(v) <= version::parse(max));
        vs.into_iter().max_by_key(|v| version::parse(v)).cloned()
    }

    /// The configuration plugin `index` receives: its object plus `cniVersion` and `name`, `runtimeConfig` limited
    /// to the capabilities it declares, `prevResult` when given; `capabilities` itself is not passed on.
    pub fn plugin_conf(
        &self,
        index: usize,
        ver: &str,
        runtime: &Map<String, Value>,
        prev: Option<&Value>,
    ) -> Option<Value> {
        let mut p = self.plugins.get(index)?.clone();
        let caps = p.remove("capabilities");
        p.insert("cniVersion".into(), Value::String(ver.to_string()));
        p.insert("name".into(), Value::String(self.name.clone()));
        let mut rc = Map::new();
        if let Some(Value::Object(caps)) = caps {
            for (k, on) in caps {
                if on == Value::Bool(true) {
                    if let Some(v) = runtime.get(&k) {
                        rc.insert(k, v.clone());
                    }
                }
            }
        }
        if !rc.is_empty() {
            p.insert("runtimeConfig".into(), Value::Object(rc));
        }
        if let Some(prev) = prev {
            p.insert("prevResult".into(), prev.clone());
        }
        Some(Value::Object(p))
    }
}

/// Why a list command stopped.
#[derive(Debug)]
pub enum ListError<E> {
    /// The list's version does not have the command; no plugin ran (libcni refuses it the same way).
    Unsupported(CniError),
    /// A plugin failed, with what the invoker made of it.
    Plugin(E),
}

impl NetConfList {
    fn require(&self, ver: &str, min: &str, cmd: Command) -> Result<(), CniError> {
        if version::at_least(ver, min) {
            Ok(())
        } else {
            Err(CniError::new(
                ERR_INCOMPATIBLE_VERSION,
                format!(
                    "configuration version \"{ver}\" does not support the {} command",
                    cmd.as_str()
                ),
            ))
        }
    }

    /// ADD as libcni runs it: the plugins in order, each given the previous plugin's result as `prevResult`,
    /// stopping at the first failure (libcni does not roll back; the runtime's DEL does). The last result.
    ///
    /// `invoke(type, command, config)` runs one plugin and returns its result (ADD) or `None`.
    pub fn add<E, F>(
        &self,
        ver: &str,
        runtime: &Map<String, Value>,
        mut invoke: F,
    ) -> Result<Option<Value>, E>
    where
        F: FnMut(&str, Command, &Value) -> Result<Option<Value>, E>,
    {
        let mut prev: Option<Value> = None;
        for (i, ty) in self.types() {
            if let Some(conf) = self.plugin_conf(i, ver, runtime, prev.as_ref()) {
                prev = invoke(ty, Command::Add, &conf)?;
            }
        }
        Ok(prev)
    }

    /// DEL as libcni runs it: the plugins in reverse order, each given the ADD result as `prevResult` from 0.4.0
    /// on (older versions have none on DEL), stopping at the first failure.
    pub fn del<E, F>(
        &self,
        ver: &str,
        runtime: &Map<String, Value>,
        prev: Option<&Value>,
        mut invoke: F,
    ) -> Result<(), E>
    where
        F: FnMut(&str, Command, &Value) -> Result<Option<Value>, E>,
    {
        let prev = prev.filter(|_| version::at_least(ver, "0.4.0"));
        for (i, ty) in self.types().rev() {
            if let Some(conf) = self.plugin_conf(i, ver, runtime, prev) {
                invoke(ty, Command::Del, &conf)?;
            }
        }
        Ok(())
    }

    /// CHECK as libcni runs it: refused below 0.4.0, nothing with `disableCheck`, else the plugins in order with
    /// the ADD result as `prevResult`, stopping at the first failure.
    pub fn check<E, F>(
        &self,
        ver: &str,
        runtime: &Map<String, Value>,
        prev: &Value,
        mut invoke: F,
    ) -> Result<(), ListError<E>>
    where
        F: FnMut(&str, Command, &Value) -> Result<Option<Value>, E>,
    {
        self.require(ver, "0.4.0", Command::Check)
            .map_err(ListError::Unsupported)?;
        if self.disable_check {
            return Ok(());
        }
        for (i, ty) in self.types() {
            if let Some(conf) = self.plugin_conf(i, ver, runtime, Some(prev)) {
                invoke(ty, Command::Check, &conf).map_err(ListError::Plugin)?;
            }
        }
        Ok(())
    }

    /// GC as libcni runs it: nothing with `disableGC` or below 1.1.0, else every plugin, with the still-valid
    /// attachments as `cni.dev/valid-attachments`, going on past failures; the failures.
    pub fn gc<E, F>(&self, ver: &str, valid: &[Attachment], mut invoke: F) -> Result<(), Vec<E>>
    where
        F: FnMut(&str, Command, &Value) -> Result<Option<Value>, E>,
    {
        if self.disable_gc || !version::at_least(ver, "1.1.0") {
            return Ok(());
        }
        let valid = serde_json::to_value(valid).unwrap_or(Value::Null);
        let mut errors = Vec::new();
        for (i, ty) in self.types() {
            if let Some(mut conf) = self.plugin_conf(i, ver, &Map::new(), None) {
                if let Some(m) = conf.as_object_mut() {
                    m.insert("cni.dev/valid-attachments".into(), valid.clone());
                }
                if let Err(e) = invoke(ty, Command::Gc, &conf) {
                    errors.push(e);
                }
            }
        }
        if errors.is_empty() {
            Ok(())
        } else {
            Err(errors)
        }
    }

    /// STATUS as libcni runs it: refused below 1.1.0, else the plugins in order, stopping at the first failure.
    pub fn status<E, F>(&self, ver: &str, mut invoke: F) -> Result<(), ListError<E>>
    where
        F: FnMut(&str, Command, &Value) -> Result<Option<Value>, E>,
    {
        self.require(ver, "1.1.0", Command::Status)
            .map_err(ListError::Unsupported)?;
        for (i, ty) in self.types() {
            if let Some(conf) = self.plugin_conf(i, ver, &Map::new(), None) {
                invoke(ty, Command::Status, &conf).map_err(ListError::Plugin)?;
            }
        }
        Ok(())
    }

    /// The plugins' types with their index (every plugin has one: `parse` checks it).
    fn types(&self) -> impl DoubleEndedIterator<Item = (usize, &str)> {
        self.plugins
            .iter()
            .enumerate()
            .filter_map(|(i, p)| Some((i, p.get("type")?.as_str()?)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    const FLANNEL: &[u8] = br#"{"name":"cbr0","cniVersion":"0.3.1","cniVersions":["1.0.0","1.1.0","9.0.0"],
        "disableCheck":"true","plugins":[{"type":"flannel","delegate":{"hairpinMode":true,"isDefaultGateway":true}},
        {"type":"portmap","capabilities":{"portMappings":true}}]}"#;

    #[test]
    fn upstream_manifest_conflist() {
        let l = NetConfList::parse(FLANNEL).unwrap();
        assert!(l.disable_check);
        assert_eq!(l.effective_version("1.1.0").as_deref(), Some("1.1.0"));
        assert_eq!(l.effective_version("1.0.0").as_deref(), Some("1.0.0"));
        let rt = json!({"portMappings":[{"hostPort":8080,"containerPort":80,"protocol":"tcp"}],"bandwidth":{}});
        let rt = rt.as_object().unwrap();
        let p0 = l.plugin_conf(0, "1.0.0", rt, None).unwrap();
        assert_eq!(p0["name"], "cbr0");
        assert!(p0.get("runtimeConfig").is_none());
        let p1 = l
            .plugin_conf(1, "1.0.0", rt, Some(&json!({"cniVersion":"1.0.0"})))
            .unwrap();
        assert!(p1.get("capabilities").is_none());
        assert_eq!(p1["runtimeConfig"]["portMappings"][0]["hostPort"], 8080);
        assert!(p1["runtimeConfig"].get("bandwidth").is_none());
        assert_eq!(p1["prevResult"]["cniVersion"], "1.0.0");
    }

    /// The order, commands and prevResults a list gives its plugins, recorded by a fake invoker.
    #[test]
    fn runs_plugins_as_libcni() {
        let l = NetConfList::parse(
            br#"{"name":"n","cniVersion":"1.1.0","plugins":[{"type":"a"},{"type":"b","capabilities":{"mac":true}}]}"#,
        )
        .unwrap();
        let rt = json!({"mac": "0a:58:00:00:00:01", "ips": ["10.0.0.9"]});
        let rt = rt.as_object().unwrap();
        let mut seen: Vec<(String, &str, Value)> = Vec::new();
        let mut invoke = |ty: &str, cmd: Command, conf: &Value| -> Result<Option<Value>, String> {
            seen.push((ty.to_string(), cmd.as_str(), conf.clone()));
            Ok((cmd == Command::Add).then(|| json!({"cniVersion": "1.1.0", "by": ty})))
        };
        let r = l.add("1.1.0", rt, &mut invoke).unwrap().unwrap();
        assert_eq!(r["by"], "b");
        l.del("1.1.0", rt, Some(&r), &mut invoke).unwrap();
        l.check("1.1.0", rt, &r, &mut invoke).unwrap();
        let valid = [Attachment {
            container_id: "c".into(),
            ifname: "eth0".into(),
        }];
        l.gc("1.1.0", &valid, &mut invoke).unwrap();
        l.status("1.1.0", &mut invoke).unwrap();
        let order: Vec<String> = seen.iter().map(|(t, c, _)| format!("{c} {t}")).collect();
        assert_eq!(
            order,
            [
                "ADD a", "ADD b", "DEL b", "DEL a", "CHECK a", "CHECK b", "GC a", "GC b",
                "STATUS a", "STATUS b"
            ]
        );
        // ADD chains each result into the next plugin; DEL and CHECK get the final result.
        assert!(seen[0].2.get("prevResult").is_none());
        assert_eq!(seen[1].2["prevResult"]["by"], "a");
        assert_eq!(seen[2].2["prevResult"]["by"], "b");
        assert_eq!(seen[5].2["prevResult"]["by"], "b");
        // runtimeConfig by capability only.
        assert!(seen[0].2.get("runtimeConfig").is_none());
        assert_eq!(
            seen[1].2["runtimeConfig"],
            json!({"mac": "0a:58:00:00:00:01"})
        );
        assert_eq!(
            seen[6].2["cni.dev/valid-attachments"],
            json!([{"containerID": "c", "ifname": "eth0"}])
        );
    }

    #[test]
    fn version_rules_of_the_runner() {
        let l =
            NetConfList::parse(br#"{"name":"n","cniVersion":"0.3.1","plugins":[{"type":"a"}]}"#)
                .unwrap();
        let mut calls = 0;
        let mut invoke = |_: &str, _: Command, conf: &Value| -> Result<Option<Value>, ()> {
            calls += 1;
            assert!(
                conf.get("prevResult").is_none(),
                "no prevResult on DEL before 0.4.0"
            );
            Ok(None)
        };
        l.del("0.3.1", &Map::new(), Some(&json!({})), &mut invoke)
            .unwrap();
        assert!(matches!(
            l.check("0.3.1", &Map::new(), &json!({}), &mut invoke),
            Err(ListError::Unsupported(e)) if e.code == 1
        ));
        assert!(matches!(
            l.status("1.0.0", &mut invoke),
            Err(ListError::Unsupported(_))
        ));
        l.gc("1.0.0", &[], &mut invoke).unwrap();
        assert_eq!(calls, 1, "only the DEL ran a plugin");

        let off = NetConfList::parse(
            br#"{"name":"n","cniVersion":"1.1.0","disableCheck":true,"disableGC":true,"plugins":[{"type":"a"}]}"#,
        )
        .unwrap();
        let mut never =
            |_: &str, _: Command, _: &Value| -> Result<Option<Value>, ()> { panic!("ran") };
        off.check("1.1.0", &Map::new(), &json!({}), &mut never)
            .unwrap();
        off.gc("1.1.0", &[], &mut never).unwrap();

        let failing = NetConfList::parse(
            br#"{"name":"n","cniVersion":"1.1.0","plugins":[{"type":"a"},{"type":"b"}]}"#,
        )
        .unwrap();
        let mut ran = Vec::new();
        let mut fail_a = |ty: &str, _: Command, _: &Value| -> Result<Option<Value>, String> {
            ran.push(ty.to_string());
            if ty == "a" {
                Err(format!("{ty} failed"))
            } else {
                Ok(None)
            }
        };
        assert_eq!(
            failing.gc("1.1.0", &[], &mut fail_a),
            Err(vec!["a failed".to_string()])
        );
        assert!(failing.add("1.1.0", &Map::new(), &mut fail_a).is_err());
        assert!(failing
            .del("1.1.0", &Map::new(), None, &mut fail_a)
            .is_err());
        assert_eq!(
            ran,
            ["a", "b", "a", "b", "a"],
            "GC goes on, ADD stops, DEL runs b first then stops at a"
        );
    }

    #[test]
    fn rejects_unusable_lists() {
        assert_eq!(
            NetConfList::parse(br#"{"name":"n","plugins":[]}"#)
                .unwrap_err()
                .code,
            7
        );
        assert_eq!(
            NetConfList::parse(br#"{"name":"n","plugins":[{"x":1}]}"#)
                .unwrap_err()
                .code,
            7
        );
        assert_eq!(
            NetConfList::parse(br#"{"name":"bad name","plugins":[{"type":"x"}]}"#)
                .unwrap_err()
                .code,
            7
        );
        assert_eq!(NetConfList::parse(b"nope").unwrap_err().code, 6);
        assert_eq!(
            NetConfList::parse(br#"{"name":"n","disableGC":3,"plugins":[{"type":"x"}]}"#)
                .unwrap_err()
                .code,
            6
        );
    }
}
