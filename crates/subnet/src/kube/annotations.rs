//! flannel's Node annotation names, from `--kube-annotation-prefix` (upstream `pkg/subnet/kube/annotations.go`:
//! the same normalisation, the same format check, the same keys).

use std::sync::OnceLock;

/// The full annotation keys for one prefix, e.g. `flannel.alpha.coreos.com/backend-data`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Annotations {
    /// `<prefix>kube-subnet-manager`: `"true"` on every Node a flanneld in Kubernetes mode manages.
    pub subnet_kube_managed: String,
    /// `<prefix>backend-data`.
    pub backend_data: String,
    /// `<prefix>backend-v6-data`.
    pub backend_v6_data: String,
    /// `<prefix>backend-type`.
    pub backend_type: String,
    /// `<prefix>public-ip`: what peers send to.
    pub public_ip: String,
    /// `<prefix>public-ipv6`.
    pub public_ipv6: String,
    /// `<prefix>node-public-ip`: set by the operator, used as `--public-ip`.
    pub node_public_ip: String,
    /// `<prefix>node-public-ipv6`.
    pub node_public_ipv6: String,
    /// `<prefix>public-ip-overwrite`: set by the operator, announced instead of the detected address (NAT).
    pub public_ip_overwrite: String,
    /// `<prefix>public-ipv6-overwrite`.
    pub public_ipv6_overwrite: String,
}

/// A prefix upstream would refuse.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PrefixError {
    /// More than one `/`.
    #[error("--kube-annotation-prefix {0:?}: the prefix can contain at most a single slash")]
    Slashes(String),
    /// Not `fqdn/[0-9a-z-_]*`.
    #[error("--kube-annotation-prefix {0:?}: the prefix must be in the format fqdn/[0-9a-z-_]*")]
    Format(String),
}

fn format() -> &'static regex::Regex {
    static RE: OnceLock<regex::Regex> = OnceLock::new();
    // Upstream's pattern, unanchored at the start as upstream's MatchString is.
    RE.get_or_init(|| {
        regex::Regex::new(r"(?:[a-z0-9_-]+\.)+[a-z0-9_-]+/(?:[a-z0-9_-]+-)?$")
            .unwrap_or_else(|_| unreachable!("the pattern is a constant"))
    })
}

impl Annotations {
    /// The keys for `prefix`: without a slash one is appended, else a `-` unless it ends in `/` or `-`.
    pub fn new(prefix: &str) -> Result<Self, PrefixError> {
        let slashes = prefix.matches('/').count();
        if slashes > 1 {
            return Err(PrefixError::Slashes(prefix.to_string()));
        }
        let mut p = prefix.to_string();
        if slashes == 0 {
            p.push('/');
        }
        if !p.ends_with('/') && !p.ends_with('-') {
            p.push('-');
        }
        if !format().is_match(&p) {
            return Err(PrefixError::Format(prefix.to_string()));
        }
        let k = |s: &str| format!("{p}{s}");
        Ok(Annotations {
            subnet_kube_managed: k("kube-subnet-manager"),
            backend_data: k("backend-data"),
            backend_v6_data: k("backend-v6-data"),
            backend_type: k("backend-type"),
            public_ip: k("public-ip"),
            public_ipv6: k("public-ipv6"),
            node_public_ip: k("node-public-ip"),
            node_public_ipv6: k("node-public-ipv6"),
            public_ip_overwrite: k("public-ip-overwrite"),
            public_ipv6_overwrite: k("public-ipv6-overwrite"),
        })
    }

    /// Whether `key` is one of ours (only those are kept from a Node's annotations).
    pub fn is_ours(&self, key: &str) -> bool {
        [
            &self.subnet_kube_managed,
            &self.backend_data,
            &self.backend_v6_data,
            &self.backend_type,
            &self.public_ip,
            &self.public_ipv6,
            &self.node_public_ip,
            &self.node_public_ipv6,
            &self.public_ip_overwrite,
            &self.public_ipv6_overwrite,
        ]
        .iter()
        .any(|k| k.as_str() == key)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn default_prefix_and_normalisation_as_upstream() {
        let a = Annotations::new("flannel.alpha.coreos.com").unwrap();
        assert_eq!(a.backend_data, "flannel.alpha.coreos.com/backend-data");
        assert_eq!(
            a.subnet_kube_managed,
            "flannel.alpha.coreos.com/kube-subnet-manager"
        );
        assert_eq!(
            a.public_ip_overwrite,
            "flannel.alpha.coreos.com/public-ip-overwrite"
        );
        assert_eq!(
            a.node_public_ipv6,
            "flannel.alpha.coreos.com/node-public-ipv6"
        );
        // With a slash and a name: a '-' joins it.
        let a = Annotations::new("example.com/foo").unwrap();
        assert_eq!(a.backend_type, "example.com/foo-backend-type");
        assert_eq!(
            Annotations::new("example.com/foo-").unwrap().backend_type,
            "example.com/foo-backend-type"
        );
        assert_eq!(
            Annotations::new("example.com/").unwrap().backend_type,
            "example.com/backend-type"
        );
        for bad in [
            "a/b/c",
            "nodots",
            "UPPER.COM",
            "example.com/Foo",
            "example.com/fo o",
            "",
        ] {
            assert!(Annotations::new(bad).is_err(), "{bad:?} should be refused");
        }
        assert!(matches!(
            Annotations::new("a/b/c"),
            Err(PrefixError::Slashes(_))
        ));
    }

    proptest! {
        #[test]
        fn prefix_never_panics_and_keys_share_it(p in ".{0,40}") {
            if let Ok(a) = Annotations::new(&p) {
                let stem = a.backend_data.trim_end_matches("backend-data");
                prop_assert!(a.public_ip.starts_with(stem) && stem.contains('/'));
                prop_assert!(a.is_ours(&a.public_ip) && !a.is_ours("x"));
            }
        }
    }
}
