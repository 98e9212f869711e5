//! `BackendData` / `BackendV6Data` of a lease, kept as compact JSON text.
//!
//! Every peer's lease carries one of these, and a 5,000-node cluster holds 5,000 of them for the daemon's whole
//! life. As a `serde_json::Value` (an ordered map, its keys and strings) one `{"VNI":1,"VtepMAC":"..."}` costs
//! about 350 bytes in five allocations; as its compact text it is one allocation of ~40 bytes. Only the backend
//! that owns the data reads it, a field at a time ([`BackendData::field`]), without building a tree.
//!
//! The text is always what `serde_json` writes for the value (compact, keys in the order received), so equal data
//! compares equal and what we publish is byte-for-byte what upstream writes for the same value.

use std::fmt;

use serde::de::{self, DeserializeSeed, IgnoredAny, MapAccess, Visitor};
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use serde_json::value::RawValue;
use serde_json::Value;

/// A backend's published data: a JSON value, held as its compact text.
#[derive(Clone)]
pub struct BackendData(Box<RawValue>);

impl BackendData {
    /// The data for `v` (kept in its compact form).
    pub fn from_value(v: &Value) -> Self {
        // A `Value` always serializes; the `null` fallback is unreachable but keeps this total.
        BackendData(serde_json::value::to_raw_value(v).unwrap_or_default())
    }

    /// Parses JSON text (whitespace is dropped: the kept text is the compact form).
    pub fn parse(text: &str) -> Result<Self, serde_json::Error> {
        let v: Value = serde_json::from_str(text)?;
        Ok(Self::from_value(&v))
    }

    /// The compact JSON text.
    pub fn json(&self) -> &str {
        self.0.get()
    }

    /// The data as a JSON tree (for callers that show or edit it; the hot paths use [`Self::field`]).
    pub fn to_value(&self) -> Value {
        serde_json::from_str(self.0.get()).unwrap_or(Value::Null)
    }

    /// True when the data is a JSON object.
    pub fn is_object(&self) -> bool {
        self.0.get().starts_with('{')
    }

    /// The value of field `name` with Go `encoding/json` rules (keys matched ignoring ASCII case, the last
    /// non-null one wins), or `None` when absent. `Err(())` when the data is not an object. Only the matching
    /// value is built; the other fields are skipped unallocated.
    #[allow(clippy::result_unit_err)]
    pub fn field(&self, name: &str) -> Result<Option<Value>, ()> {
        if !self.is_object() {
            return Err(());
        }
        let mut de = serde_json::Deserializer::from_str(self.0.get());
        FieldSeed(name).deserialize(&mut de).map_err(|_| ())
    }
}

/// Looks one field up while streaming over an object.
struct FieldSeed<'a>(&'a str);

impl<'de> DeserializeSeed<'de> for FieldSeed<'_> {
    type Value = Option<Value>;
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        d.deserialize_map(self)
    }
}

impl<'de> Visitor<'de> for FieldSeed<'_> {
    type Value = Option<Value>;
    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a JSON object")
    }
    fn visit_map<A: MapAccess<'de>>(self, mut m: A) -> Result<Self::Value, A::Error> {
        let mut found = None;
        // Keys borrowed from the text when they have no escapes; owned otherwise.
        while let Some(k) = m.next_key::<std::borrow::Cow<'de, str>>()? {
            if k.eq_ignore_ascii_case(self.0) {
                let v: Value = m.next_value()?;
                if !v.is_null() {
                    found = Some(v);
                }
            } else {
                m.next_value::<IgnoredAny>()?;
            }
        }
        Ok(found)
    }
}

impl PartialEq for BackendData {
    fn eq(&self, other: &Self) -> bool {
        self.0.get() == other.0.get()
    }
}

impl Eq for BackendData {}

impl fmt::Debug for BackendData {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.0.get())
    }
}

impl fmt::Display for BackendData {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.0.get())
    }
}

impl From<Value> for BackendData {
    fn from(v: Value) -> Self {
        Self::from_value(&v)
    }
}

impl From<&Value> for BackendData {
    fn from(v: &Value) -> Self {
        Self::from_value(v)
    }
}

impl Serialize for BackendData {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        self.0.serialize(s)
    }
}

impl<'de> Deserialize<'de> for BackendData {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        // Through a tree, so that the kept text is the compact form whatever the input's spacing.
        let v = Value::deserialize(d)?;
        if v.is_null() {
            return Err(de::Error::custom("null backend data"));
        }
        Ok(Self::from_value(&v))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use serde_json::json;

    #[test]
    fn compact_text_and_equality() {
        let a = BackendData::parse("{ \"VNI\" : 1,\n \"VtepMAC\":\"0e:00:00:00:00:01\" }").unwrap();
        assert_eq!(a.json(), r#"{"VNI":1,"VtepMAC":"0e:00:00:00:00:01"}"#);
        assert_eq!(
            a,
            BackendData::from(json!({"VNI": 1, "VtepMAC": "0e:00:00:00:00:01"}))
        );
        assert_eq!(serde_json::to_string(&a).unwrap(), a.json());
        assert_eq!(
            a.to_value(),
            json!({"VNI": 1, "VtepMAC": "0e:00:00:00:00:01"})
        );
    }

    #[test]
    fn field_follows_go_rules() {
        let d =
            BackendData::from(json!({"vtepmac": "a", "VNI": 1, "VTEPMAC": "b", "VtepMAC": null}));
        assert_eq!(d.field("VtepMAC"), Ok(Some(json!("b"))));
        assert_eq!(d.field("Port"), Ok(None));
        assert_eq!(BackendData::from(json!([1, 2])).field("VNI"), Err(()));
        assert_eq!(BackendData::from(json!("x")).field("VNI"), Err(()));
        let esc = BackendData::parse(r#"{"Vtep\u004dAC":"c"}"#).unwrap();
        assert_eq!(esc.field("VtepMAC"), Ok(Some(json!("c"))));
    }

    fn json_value() -> impl Strategy<Value = Value> {
        let leaf = prop_oneof![
            Just(Value::Null),
            any::<bool>().prop_map(Value::from),
            any::<i64>().prop_map(Value::from),
            ".{0,12}".prop_map(Value::from),
        ];
        leaf.prop_recursive(3, 24, 4, |inner| {
            prop_oneof![
                prop::collection::vec(inner.clone(), 0..4).prop_map(Value::from),
                prop::collection::vec(("[a-zA-Z]{0,8}", inner), 0..4)
                    .prop_map(|kv| Value::Object(kv.into_iter().collect())),
            ]
        })
    }

    proptest! {
        /// Any value round-trips through the compact form, and a field lookup agrees with the tree's.
        #[test]
        fn roundtrip_and_lookup(v in json_value(), name in "[a-zA-Z]{0,8}") {
            let d = BackendData::from_value(&v);
            prop_assert_eq!(d.to_value(), v.clone());
            let via_tree = v.as_object().map(|o| {
                o.iter()
                    .filter(|(k, x)| k.eq_ignore_ascii_case(&name) && !x.is_null())
                    .map(|(_, x)| x.clone())
                    .next_back()
            });
            prop_assert_eq!(d.field(&name).ok(), via_tree);
        }

        /// Arbitrary text never panics the parser.
        #[test]
        fn arbitrary_text_never_panics(s in ".{0,64}") {
            if let Ok(d) = BackendData::parse(&s) {
                let _ = d.field("VtepMAC");
            }
        }
    }
}
