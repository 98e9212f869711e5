//! The part of a Node flannel reads, and what it means as a lease.
//!
//! [`NodeLite`] is what we ask the API for and keep nothing else of: name, resource version, creation time,
//! annotations, and `spec.podCIDR(s)`; the rest of a Node (status, images, conditions) is skipped while decoding,
//! so listing thousands of Nodes never builds thousands of full objects. Everything here is read from outside:
//! a value that does not parse is an error naming the Node and the field, never a panic.

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::net::{Ipv4Addr, Ipv6Addr};

use ipnet::{IpNet, Ipv4Net, Ipv6Net};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::annotations::Annotations;
use crate::backend_data::BackendData;
use crate::lease::{Expiration, Lease, LeaseAttrs, SubnetKey, NO_IPV4_SUBNET};

/// `spec` of a Node, as far as flannel reads it.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct NodeSpecLite {
    /// `spec.podCIDR`.
    #[serde(rename = "podCIDR", default, skip_serializing_if = "Option::is_none")]
    pub pod_cidr: Option<String>,
    /// `spec.podCIDRs` (dual stack: one per family).
    #[serde(rename = "podCIDRs", default, skip_serializing_if = "Option::is_none")]
    pub pod_cidrs: Option<Vec<String>>,
}

/// The part of `metadata` flannel reads; labels, managedFields, ownerReferences... are skipped unallocated.
#[derive(Deserialize)]
struct MetaLite {
    #[serde(default)]
    name: Option<String>,
    #[serde(rename = "resourceVersion", default)]
    resource_version: Option<String>,
    #[serde(rename = "creationTimestamp", default)]
    creation_timestamp: Option<k8s_openapi::apimachinery::pkg::apis::meta::v1::Time>,
    #[serde(default)]
    annotations: Option<BTreeMap<String, String>>,
}

fn lean_meta<'de, D: serde::Deserializer<'de>>(d: D) -> Result<ObjectMeta, D::Error> {
    let m = MetaLite::deserialize(d)?;
    Ok(ObjectMeta {
        name: m.name,
        resource_version: m.resource_version,
        creation_timestamp: m.creation_timestamp,
        annotations: m.annotations,
        ..Default::default()
    })
}

/// A Node, as far as flannel reads it.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct NodeLite {
    /// `metadata`.
    #[serde(default, deserialize_with = "lean_meta")]
    pub metadata: ObjectMeta,
    /// `spec`.
    #[serde(default)]
    pub spec: NodeSpecLite,
}

impl kube::Resource for NodeLite {
    type DynamicType = ();
    type Scope = k8s_openapi::ClusterResourceScope;

    fn kind(_: &()) -> Cow<'_, str> {
        "Node".into()
    }
    fn group(_: &()) -> Cow<'_, str> {
        "".into()
    }
    fn version(_: &()) -> Cow<'_, str> {
        "v1".into()
    }
    fn plural(_: &()) -> Cow<'_, str> {
        "nodes".into()
    }
    fn meta(&self) -> &ObjectMeta {
        &self.metadata
    }
    fn meta_mut(&mut self) -> &mut ObjectMeta {
        &mut self.metadata
    }
}

impl NodeLite {
    /// The Node's name (empty when the object has none, which the API never sends).
    pub fn name(&self) -> &str {
        self.metadata.name.as_deref().unwrap_or_default()
    }

    /// An annotation's value.
    pub fn annotation(&self, key: &str) -> Option<&str> {
        self.metadata
            .annotations
            .as_ref()
            .and_then(|a| a.get(key))
            .map(String::as_str)
    }

    /// The Node's annotations.
    pub fn annotations(&self) -> BTreeMap<String, String> {
        self.metadata.annotations.clone().unwrap_or_default()
    }

    /// Creation time in Unix seconds (0 when absent): the older of two Nodes claiming one subnet keeps it.
    pub fn created(&self) -> i64 {
        self.metadata
            .creation_timestamp
            .as_ref()
            .map(|t| t.0.as_second())
            .unwrap_or(0)
    }

    /// The pod CIDRs, IPv4 and IPv6 (upstream: `podCIDRs` when set, else `podCIDR`; more than two is an error).
    pub fn pod_cidrs(&self) -> Result<(Option<Ipv4Net>, Option<Ipv6Net>), String> {
        let name = self.name();
        let list: Vec<&str> = match &self.spec.pod_cidrs {
            Some(l) if !l.is_empty() => l.iter().map(String::as_str).collect(),
            _ => self
                .spec
                .pod_cidr
                .as_deref()
                .into_iter()
                .filter(|s| !s.is_empty())
                .collect(),
        };
        if list.len() > 2 {
            return Err(format!(
                "node {name:?}: spec.podCIDRs {list:?}: at most one IPv4 and one IPv6 CIDR"
            ));
        }
        let (mut v4, mut v6) = (None, None);
        for s in list {
            match s.parse::<IpNet>() {
                Ok(IpNet::V4(n)) if v4.is_none() => v4 = Some(n),
                Ok(IpNet::V6(n)) if v6.is_none() => v6 = Some(n),
                Ok(_) => {
                    return Err(format!(
                        "node {name:?}: spec.podCIDRs has two CIDRs of one family"
                    ))
                }
                Err(_) => return Err(format!("node {name:?}: podCIDR {s:?} is not a CIDR")),
            }
        }
        Ok((v4, v6))
    }
}

/// Reads a backend-data annotation: absent or `null` is no data; anything else must be JSON.
pub fn backend_data(
    node: &str,
    key: &str,
    text: Option<&str>,
) -> Result<Option<BackendData>, String> {
    match text {
        None => Ok(None),
        Some(t) => match serde_json::from_str::<Value>(t) {
            Ok(Value::Null) => Ok(None),
            Ok(v) => Ok(Some(BackendData::from_value(&v))),
            Err(e) => Err(format!("node {node:?}: annotation {key} is not JSON: {e}")),
        },
    }
}

/// The lease a peer Node announces, or `Ok(None)` when flannel does not manage it (no `kube-subnet-manager:
/// "true"`, or no podCIDR of an enabled family yet). `revision` is the caller's change counter for the Node.
pub fn node_lease(
    a: &Annotations,
    enable_ipv4: bool,
    enable_ipv6: bool,
    node: &NodeLite,
    revision: i64,
) -> Result<Option<Lease>, String> {
    if node.annotation(&a.subnet_kube_managed) != Some("true") {
        return Ok(None);
    }
    let name = node.name();
    let (v4, v6) = node.pod_cidrs()?;
    let v4 = v4.filter(|_| enable_ipv4);
    let v6 = v6.filter(|_| enable_ipv6);
    if v4.is_none() && v6.is_none() {
        return Ok(None);
    }
    let public_ip = match v4 {
        None => Ipv4Addr::UNSPECIFIED,
        Some(_) => {
            let text = node.annotation(&a.public_ip).unwrap_or_default();
            text.parse().map_err(|_| {
                format!(
                    "node {name:?}: annotation {} {text:?} is not an IPv4 address",
                    a.public_ip
                )
            })?
        }
    };
    let public_ipv6 = match v6 {
        None => None,
        Some(_) => {
            let text = node.annotation(&a.public_ipv6).unwrap_or_default();
            Some(text.parse::<Ipv6Addr>().map_err(|_| {
                format!(
                    "node {name:?}: annotation {} {text:?} is not an IPv6 address",
                    a.public_ipv6
                )
            })?)
        }
    };
    let attrs = LeaseAttrs {
        public_ip,
        public_ipv6,
        backend_type: node
            .annotation(&a.backend_type)
            .unwrap_or_default()
            .to_string(),
        backend_data: match v4 {
            Some(_) => backend_data(name, &a.backend_data, node.annotation(&a.backend_data))?,
            None => None,
        },
        backend_v6_data: match v6 {
            Some(_) => backend_data(
                name,
                &a.backend_v6_data,
                node.annotation(&a.backend_v6_data),
            )?,
            None => None,
        },
    };
    let key = SubnetKey {
        ipv4: v4.unwrap_or(NO_IPV4_SUBNET),
        ipv6: v6,
    };
    Ok(Some(
        Lease::new(key, attrs, Expiration::Unknown, revision).with_created(node.created()),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use serde_json::json;

    fn ann() -> Annotations {
        Annotations::new("flannel.alpha.coreos.com").unwrap()
    }

    /// A Node as an apiserver returns it (extra fields flannel does not read included).
    fn node(extra_ann: Value, spec: Value) -> NodeLite {
        let mut annotations = json!({
            "flannel.alpha.coreos.com/kube-subnet-manager": "true",
            "flannel.alpha.coreos.com/backend-type": "vxlan",
            "flannel.alpha.coreos.com/backend-data": "{\"VNI\":1,\"VtepMAC\":\"0e:00:00:00:00:02\"}",
            "flannel.alpha.coreos.com/public-ip": "192.0.2.2",
            "node.alpha.kubernetes.io/ttl": "0",
        });
        if let (Some(m), Some(e)) = (annotations.as_object_mut(), extra_ann.as_object()) {
            for (k, v) in e {
                m.insert(k.clone(), v.clone());
            }
        }
        serde_json::from_value(json!({
            "kind": "Node", "apiVersion": "v1",
            "metadata": {"name": "n2", "uid": "u", "resourceVersion": "42",
                         "creationTimestamp": "2026-11-01T10:00:00Z", "annotations": annotations,
                         "labels": {"kubernetes.io/hostname": "n2"},
                         "managedFields": [{"manager": "kubelet", "operation": "Update", "apiVersion": "v1"}]},
            "spec": spec,
            "status": {"capacity": {"cpu": "2"}, "conditions": [{"type": "Ready", "status": "True"}],
                       "addresses": [{"type": "InternalIP", "address": "192.0.2.2"}]},
        }))
        .unwrap()
    }

    #[test]
    fn a_peer_node_is_a_lease() {
        let n = node(
            json!({}),
            json!({"podCIDR": "10.244.2.0/24", "podCIDRs": ["10.244.2.0/24"]}),
        );
        let l = node_lease(&ann(), true, false, &n, 7).unwrap().unwrap();
        assert_eq!(l.key().to_string(), "10.244.2.0-24");
        assert_eq!(l.attrs.public_ip, Ipv4Addr::new(192, 0, 2, 2));
        assert_eq!(l.attrs.backend_type, "vxlan");
        assert_eq!(
            l.attrs.backend_data,
            Some(json!({"VNI": 1, "VtepMAC": "0e:00:00:00:00:02"}).into())
        );
        assert_eq!((l.revision, l.created), (7, 1_793_527_200));
    }

    #[test]
    fn dual_stack_and_families() {
        let n = node(
            json!({"flannel.alpha.coreos.com/public-ipv6": "2001:db8::2",
                   "flannel.alpha.coreos.com/backend-v6-data": "{\"VNI\":1,\"VtepMAC\":\"0e:00:00:00:01:02\"}"}),
            json!({"podCIDR": "10.244.2.0/24", "podCIDRs": ["10.244.2.0/24", "fd00:10:244:2::/64"]}),
        );
        let l = node_lease(&ann(), true, true, &n, 1).unwrap().unwrap();
        assert_eq!(l.key().to_string(), "10.244.2.0-24&fd00:10:244:2::-64");
        assert_eq!(l.attrs.public_ipv6, Some("2001:db8::2".parse().unwrap()));
        // IPv6 only: the IPv4 part is the placeholder and the IPv4 annotations are not needed.
        let l = node_lease(&ann(), false, true, &n, 1).unwrap().unwrap();
        assert!(!l.key().has_ipv4());
        assert_eq!(l.attrs.backend_data, None);
    }

    #[test]
    fn unmanaged_or_podcidr_less_nodes_are_not_peers() {
        let mut n = node(json!({}), json!({"podCIDR": "10.244.2.0/24"}));
        n.metadata
            .annotations
            .as_mut()
            .unwrap()
            .remove("flannel.alpha.coreos.com/kube-subnet-manager");
        assert_eq!(node_lease(&ann(), true, false, &n, 1), Ok(None));
        let n = node(json!({}), json!({}));
        assert_eq!(node_lease(&ann(), true, false, &n, 1), Ok(None));
    }

    #[test]
    fn malformed_nodes_are_errors_naming_node_and_field() {
        for (extra, spec, want) in [
            (
                json!({"flannel.alpha.coreos.com/public-ip": "nope"}),
                json!({"podCIDR": "10.244.2.0/24"}),
                "public-ip",
            ),
            (
                json!({"flannel.alpha.coreos.com/backend-data": "{"}),
                json!({"podCIDR": "10.244.2.0/24"}),
                "backend-data",
            ),
            (json!({}), json!({"podCIDR": "10.244.2.0"}), "not a CIDR"),
            (
                json!({}),
                json!({"podCIDRs": ["10.0.0.0/24", "10.0.1.0/24"]}),
                "two CIDRs",
            ),
            (
                json!({}),
                json!({"podCIDRs": ["10.0.0.0/24", "fd00::/64", "fd01::/64"]}),
                "at most one",
            ),
        ] {
            let e = node_lease(&ann(), true, true, &node(extra, spec), 1).unwrap_err();
            assert!(e.contains("\"n2\"") && e.contains(want), "{e}");
        }
    }

    #[test]
    fn only_the_metadata_flannel_reads_is_kept() {
        let n: NodeLite = serde_json::from_value(json!({
            "metadata": {
                "name": "n2", "resourceVersion": "42", "uid": "u-1",
                "creationTimestamp": "2026-12-01T10:00:00Z",
                "labels": {"kubernetes.io/hostname": "n2"},
                "annotations": {"a/b": "c"},
                "managedFields": [{"manager": "kubelet", "fieldsV1": {"f:status": {}}}],
            },
            "spec": {"podCIDR": "10.244.2.0/24"},
            "status": {"addresses": [{"type": "InternalIP", "address": "192.0.2.2"}]},
        }))
        .unwrap();
        assert_eq!(n.name(), "n2");
        assert_eq!(n.metadata.resource_version.as_deref(), Some("42"));
        assert!(n.metadata.creation_timestamp.is_some());
        assert_eq!(n.annotation("a/b"), Some("c"));
        assert!(
            n.metadata.labels.is_none()
                && n.metadata.managed_fields.is_none()
                && n.metadata.uid.is_none()
        );
    }

    proptest! {
        #[test]
        fn any_node_json_never_panics(
            cidrs in proptest::collection::vec("[0-9a-f.:/]{0,20}", 0..4),
            ip in "[0-9a-f.:]{0,16}", data in ".{0,30}", managed in any::<bool>(),
            v4 in any::<bool>(), v6 in any::<bool>()
        ) {
            let n: NodeLite = serde_json::from_value(json!({
                "metadata": {"name": "x", "annotations": {
                    "flannel.alpha.coreos.com/kube-subnet-manager": if managed { "true" } else { "false" },
                    "flannel.alpha.coreos.com/public-ip": ip.clone(),
                    "flannel.alpha.coreos.com/public-ipv6": ip,
                    "flannel.alpha.coreos.com/backend-data": data.clone(),
                    "flannel.alpha.coreos.com/backend-v6-data": data}},
                "spec": {"podCIDRs": cidrs}})).unwrap();
            let _ = node_lease(&ann(), v4, v6, &n, 1);
        }

        #[test]
        fn node_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..300)) {
            if let Ok(n) = serde_json::from_slice::<NodeLite>(&bytes) {
                let _ = node_lease(&ann(), true, true, &n, 1);
                let _ = n.created();
            }
        }
    }
}
