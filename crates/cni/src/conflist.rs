//! Network configuration lists (`*.conflist`): the runtime side of the spec — version selection and the
//! per-plugin configuration each plugin in the chain receives.

use crate::error::CniError;
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
