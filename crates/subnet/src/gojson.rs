//! Object field lookup with Go `encoding/json` rules.
//!
//! Upstream decodes its config and lease values with Go's `encoding/json`, which matches
//! object keys to struct fields case-insensitively, lets a later key overwrite an earlier
//! one, and treats `null` as "leave the field alone". Matching those rules here means a
//! document upstream accepts is read the same way by us.

use serde_json::{Map, Value};

/// The value of field `name` in `obj`: the last non-null entry whose key equals `name`
/// ignoring ASCII case (Go's "last key wins" and "null is a no-op").
pub(crate) fn field<'a>(obj: &'a Map<String, Value>, name: &str) -> Option<&'a Value> {
    obj.iter()
        .filter(|(k, v)| k.eq_ignore_ascii_case(name) && !v.is_null())
        .map(|(_, v)| v)
        .next_back()
}

/// Renders a JSON value for an error message, cut short so that a huge value cannot flood
/// the log.
pub(crate) fn show(v: &Value) -> String {
    let s = v.to_string();
    if s.chars().count() > 80 {
        let cut: String = s.chars().take(77).collect();
        format!("{cut}...")
    } else {
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn obj(s: &str) -> Map<String, Value> {
        match serde_json::from_str::<Value>(s) {
            Ok(Value::Object(m)) => m,
            other => panic!("test input is not an object: {other:?}"),
        }
    }

    #[test]
    fn case_insensitive_last_wins_null_ignored() {
        let m = obj(r#"{"network":"a","NETWORK":"b","Network":null}"#);
        assert_eq!(field(&m, "Network"), Some(&Value::from("b")));
        assert_eq!(field(&m, "SubnetLen"), None);
    }

    #[test]
    fn show_truncates() {
        let long = Value::from("x".repeat(200));
        assert!(show(&long).len() < 90);
        assert_eq!(show(&Value::from(31)), "31");
    }
}
