//! `CNI_ARGS` parsing (`K=V;K2=V2`), with the `IgnoreUnknown` rule of the Go library.

use crate::error::CniError;

/// Parsed `CNI_ARGS`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CniArgs {
    /// Pairs in order.
    pub pairs: Vec<(String, String)>,
}

impl CniArgs {
    /// Parses `CNI_ARGS`; `known` lists the keys the plugin understands. Unknown keys are an error (code 2)
    /// unless `IgnoreUnknown` is `1`/`true`. A value that is not `K=V` is an error, as in the Go library.
    pub fn parse(s: &str, known: &[&str]) -> Result<Self, CniError> {
        let mut pairs = Vec::new();
        if s.is_empty() {
            return Ok(Self { pairs });
        }
        for item in s.split(';') {
            let mut kv = item.splitn(3, '=');
            let (k, v) = match (kv.next(), kv.next(), kv.next()) {
                (Some(k), Some(v), None) => (k, v),
                _ => {
                    return Err(CniError::env(format!(
                        "CNI_ARGS: invalid pair \"{item}\" (want KEY=VALUE)"
                    )));
                }
            };
            pairs.push((k.to_string(), v.to_string()));
        }
        let args = Self { pairs };
        let ignore = args
            .get("IgnoreUnknown")
            .map(|v| matches!(v.to_ascii_lowercase().as_str(), "1" | "true"))
            .unwrap_or(false);
        if !ignore {
            for (k, v) in &args.pairs {
                if k != "IgnoreUnknown" && !known.contains(&k.as_str()) {
                    return Err(CniError::new(
                        crate::error::ERR_UNSUPPORTED_FIELD,
                        format!("CNI_ARGS: unknown key \"{k}\" (value \"{v}\"); set IgnoreUnknown=1 to ignore it"),
                    ));
                }
            }
        }
        Ok(args)
    }

    /// The value of a key.
    pub fn get(&self, key: &str) -> Option<&str> {
        self.pairs
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn parses_runtime_args() {
        let a = CniArgs::parse(
            "IgnoreUnknown=1;K8S_POD_NAMESPACE=default;K8S_POD_NAME=web;IP=10.244.1.9",
            &["IP"],
        )
        .unwrap();
        assert_eq!(a.get("IP"), Some("10.244.1.9"));
        assert_eq!(a.get("K8S_POD_NAME"), Some("web"));
    }

    #[test]
    fn unknown_without_ignore_is_error() {
        assert_eq!(CniArgs::parse("FOO=bar", &["IP"]).unwrap_err().code, 2);
        assert!(CniArgs::parse("FOO=bar;IgnoreUnknown=true", &[]).is_ok());
    }

    #[test]
    fn bad_pair_is_error() {
        assert!(CniArgs::parse("none", &[]).is_err());
        assert!(CniArgs::parse("a=b=c", &["a"]).is_err());
    }

    proptest! {
        #[test]
        fn never_panics(s in ".{0,100}") {
            let _ = CniArgs::parse(&s, &["IP", "MAC"]);
        }
    }
}
