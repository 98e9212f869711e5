//! The Kubernetes subnet manager (`--kube-subnet-mgr`): this node's subnet is its Node's `spec.podCIDR(s)`, what
//! it publishes goes into flannel's annotations on the Node, and peers are the other Nodes.
//!
//! Behaviour as upstream (`pkg/subnet/kube/kube.go`): the node name from `NODE_NAME`, else from the Pod
//! `POD_NAMESPACE/POD_NAME`; the network config from `--net-config-path`; a podCIDR outside `Network` is an error;
//! the annotations `backend-type`, `backend-data`, `backend-v6-data`, `public-ip(v6)`, `kube-subnet-manager`
//! written with a strategic-merge patch to `nodes/<name>/status`, `public-ip-overwrite(-v6)` announced instead of
//! the detected address, `node-public-ip(-v6)` used as `--public-ip`; `NetworkUnavailable=False` (reason
//! `FlannelIsUp`) once the node is up. Where we differ, on purpose:
//! - a Node without a podCIDR yet is waited for (logged, shown on `/readyz`) instead of exiting;
//! - peers come from a list + watch (paged, bookmarks, re-list on `410 Gone`, backoff with jitter while the API
//!   is away) that keeps only a compact lease per Node, never a cache of Node objects, and publishes the full set
//!   (level-triggered, like the stores) — while the API is away the last set stays, so nothing is unprogrammed;
//! - our own annotations are watched and written back when someone else changes them.

pub mod annotations;
pub mod node;

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::time::{Duration, SystemTime};

use futures::StreamExt;
use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, Patch, PatchParams};
use kube::runtime::watcher::{self, Event as WatchEvent};
use kube::runtime::WatchStreamExt;
use kube::Client;
use serde_json::{json, Value};
use tokio::sync::watch;
use tracing::{debug, info, warn};

use crate::backend_data::BackendData;
use crate::backoff::Backoff;
use crate::config::{ConfigError, NetworkConfig};
use crate::lease::{Expiration, Lease, LeaseAttrs, SubnetKey, NO_IPV4_SUBNET};
use crate::manager::{LeaseEnd, ManagerError};
use crate::peers::{PeerSnapshot, PeerWatcher};
use crate::registry::RegistryError;
use crate::source::{Stored, SubnetManager};

pub use annotations::{Annotations, PrefixError};
pub use node::{node_lease, NodeLite};

/// Upstream's default `--kube-annotation-prefix`.
pub const DEFAULT_ANNOTATION_PREFIX: &str = "flannel.alpha.coreos.com";

/// How to reach the API and which Node we are (the `--kube-*` flags and the pod's environment).
#[derive(Debug, Clone, Default)]
pub struct KubeOptions {
    /// `--kube-api-url`: the API server; overrides the kubeconfig's server.
    pub api_url: Option<String>,
    /// `--kubeconfig-file`; without it (and without `--kube-api-url`) the in-cluster service account is used.
    pub kubeconfig: Option<PathBuf>,
    /// `--kube-annotation-prefix`.
    pub annotation_prefix: String,
    /// `--net-config-path`.
    pub net_config_path: PathBuf,
    /// `--set-node-network-unavailable`.
    pub set_node_network_unavailable: bool,
    /// `NODE_NAME`.
    pub node_name: Option<String>,
    /// `POD_NAME`, used with `POD_NAMESPACE` when `NODE_NAME` is unset.
    pub pod_name: Option<String>,
    /// `POD_NAMESPACE`.
    pub pod_namespace: Option<String>,
}

/// An API error as a store error: who may retry, and a message naming what was asked.
fn api_error(what: &str, e: kube::Error) -> RegistryError {
    match e {
        kube::Error::Api(s) => {
            let msg = format!("{what}: {} (HTTP {}, {})", s.message, s.code, s.reason);
            match s.code {
                401 | 403 => RegistryError::Denied(msg),
                408 | 429 | 500..=599 => RegistryError::Unavailable(msg),
                _ => RegistryError::Other(msg),
            }
        }
        kube::Error::Auth(a) => RegistryError::Denied(format!("{what}: {a}")),
        other => RegistryError::Unavailable(format!("{what}: {other}")),
    }
}

/// The in-cluster config, or why there is none.
fn incluster() -> Result<kube::Config, RegistryError> {
    kube::Config::incluster().map_err(|e| {
        RegistryError::Options(format!(
            "no in-cluster Kubernetes config ({e}); outside a pod give --kubeconfig-file or --kube-api-url"
        ))
    })
}

async fn client_config(o: &KubeOptions) -> Result<kube::Config, RegistryError> {
    let mut cfg = match (&o.kubeconfig, &o.api_url) {
        (Some(path), _) => {
            let kc = kube::config::Kubeconfig::read_from(path).map_err(|e| {
                RegistryError::Options(format!("--kubeconfig-file {}: {e}", path.display()))
            })?;
            kube::Config::from_custom_kubeconfig(kc, &Default::default())
                .await
                .map_err(|e| {
                    RegistryError::Options(format!("--kubeconfig-file {}: {e}", path.display()))
                })?
        }
        // An API URL alone: the pod's service account when there is one (its token and CA), else the bare URL.
        (None, Some(url)) => match incluster() {
            Ok(c) => c,
            Err(_) => kube::Config::new(
                url.parse()
                    .map_err(|e| RegistryError::Options(format!("--kube-api-url {url:?}: {e}")))?,
            ),
        },
        (None, None) => incluster()?,
    };
    if let Some(url) = &o.api_url {
        cfg.cluster_url = url
            .parse()
            .map_err(|e| RegistryError::Options(format!("--kube-api-url {url:?}: {e}")))?;
    }
    // A dead API server must not park a request forever; watches are bounded by their own timeout.
    cfg.connect_timeout = Some(Duration::from_secs(5));
    Ok(cfg)
}

/// The Kubernetes subnet manager.
#[derive(Clone)]
pub struct KubeSource {
    nodes: Api<NodeLite>,
    node: String,
    ann: Annotations,
    net_config_path: PathBuf,
    set_node_network_unavailable: bool,
    server: String,
    /// `EnableIPv4`/`EnableIPv6` of the config once read: which families a peer's lease carries.
    families: std::sync::Arc<std::sync::OnceLock<(bool, bool)>>,
}

impl KubeSource {
    /// Connects and finds this node's name. Errors: bad options (not retryable), an unreachable API
    /// (retryable), refused rights (naming the verb and resource).
    pub async fn connect(o: KubeOptions) -> Result<Self, RegistryError> {
        let ann = Annotations::new(&o.annotation_prefix)
            .map_err(|e| RegistryError::Options(e.to_string()))?;
        let cfg = client_config(&o).await?;
        let server = cfg.cluster_url.to_string();
        let client = Client::try_from(cfg)
            .map_err(|e| RegistryError::Options(format!("Kubernetes client for {server}: {e}")))?;
        let node = match o.node_name.as_deref().filter(|n| !n.is_empty()) {
            Some(n) => n.to_string(),
            None => {
                let (Some(pod), Some(ns)) = (
                    o.pod_name.as_deref().filter(|s| !s.is_empty()),
                    o.pod_namespace.as_deref().filter(|s| !s.is_empty()),
                ) else {
                    return Err(RegistryError::Options(
                        "the node name is unknown: set NODE_NAME, or POD_NAME and POD_NAMESPACE (the DaemonSet \
                         passes them from the pod's fieldRefs)"
                            .into(),
                    ));
                };
                let what = format!("get pods {ns}/{pod} (to learn the node name)");
                let p = Api::<Pod>::namespaced(client.clone(), ns)
                    .get(pod)
                    .await
                    .map_err(|e| api_error(&what, e))?;
                p.spec
                    .and_then(|s| s.node_name)
                    .filter(|n| !n.is_empty())
                    .ok_or_else(|| {
                        RegistryError::Other(format!("pod {ns}/{pod} has no spec.nodeName"))
                    })?
            }
        };
        info!(server = %server, node = %node, "using the Kubernetes API");
        Ok(KubeSource {
            nodes: Api::all(client),
            node,
            ann,
            net_config_path: o.net_config_path,
            set_node_network_unavailable: o.set_node_network_unavailable,
            server,
            families: Default::default(),
        })
    }

    /// The Node this daemon runs on.
    pub fn node_name(&self) -> &str {
        &self.node
    }

    /// The annotation keys in use.
    pub fn annotations(&self) -> &Annotations {
        &self.ann
    }

    async fn own_node(&self) -> Result<NodeLite, RegistryError> {
        let what = format!("get nodes {}", self.node);
        self.nodes
            .get(&self.node)
            .await
            .map_err(|e| api_error(&what, e))
    }

    /// A strategic-merge patch of this node's `status` subresource (where upstream writes both its annotations
    /// and the condition, so the RBAC rule is `nodes/status: patch` alone); errors name `what` was patched.
    async fn patch_own_status(&self, what: &str, patch: Value) -> Result<(), RegistryError> {
        self.nodes
            .patch_status(
                &self.node,
                &PatchParams::default(),
                &Patch::Strategic(patch),
            )
            .await
            .map(|_| ())
            .map_err(|e| api_error(&format!("patch nodes/{}/status ({what})", self.node), e))
    }

    async fn patch_annotations(
        &self,
        changes: &BTreeMap<String, String>,
    ) -> Result<(), RegistryError> {
        self.patch_own_status("annotations", json!({"metadata": {"annotations": changes}}))
            .await
    }
}

/// The annotations this node must carry for `attrs` that `node` does not carry yet (upstream's rules: the
/// overwrite annotations win for the public IPs; a vxlan node without IPv4 data leaves the IPv4 keys alone).
pub fn annotation_changes(
    a: &Annotations,
    attrs: &LeaseAttrs,
    node: &NodeLite,
) -> BTreeMap<String, String> {
    let text = |v: &Option<BackendData>| {
        v.as_ref()
            .map_or_else(|| "null".to_string(), |d| d.json().to_string())
    };
    let (bd, bd6) = (text(&attrs.backend_data), text(&attrs.backend_v6_data));
    let overwrite = |k: &str| {
        node.annotation(k)
            .filter(|s| !s.is_empty())
            .map(str::to_string)
    };
    let mut want: BTreeMap<String, String> = BTreeMap::new();
    want.insert(a.backend_type.clone(), attrs.backend_type.clone());
    if !(attrs.backend_type == "vxlan" && bd == "null") {
        want.insert(a.backend_data.clone(), bd);
        let ip = overwrite(&a.public_ip_overwrite).unwrap_or_else(|| attrs.public_ip.to_string());
        want.insert(a.public_ip.clone(), ip);
    }
    if let Some(v6) = attrs.public_ipv6 {
        if (attrs.backend_type == "vxlan" && bd6 != "null") || attrs.backend_type == "host-gw" {
            want.insert(a.backend_v6_data.clone(), bd6);
            let ip = overwrite(&a.public_ipv6_overwrite).unwrap_or_else(|| v6.to_string());
            want.insert(a.public_ipv6.clone(), ip);
        }
    }
    want.insert(a.subnet_kube_managed.clone(), "true".into());
    want.retain(|k, v| node.annotation(k) != Some(v.as_str()));
    want
}

#[async_trait::async_trait]
impl SubnetManager for KubeSource {
    fn name(&self) -> String {
        format!("kubernetes {} node {}", self.server, self.node)
    }

    async fn network_config(&self) -> Result<NetworkConfig, ManagerError> {
        let p = &self.net_config_path;
        let text = std::fs::read_to_string(p).map_err(|e| {
            ManagerError::Store(RegistryError::Options(format!(
                "--net-config-path {}: {e}",
                p.display()
            )))
        })?;
        // As upstream: parsed, not completed (SubnetLen and friends belong to the stores; Kubernetes hands out
        // the podCIDRs), but a family that is enabled needs its network.
        let cfg = NetworkConfig::parse(&text)?;
        let missing = |key: &'static str| ConfigError::Invalid {
            key,
            value: "(missing)".into(),
            reason: format!("{} needs it", p.display()),
        };
        if cfg.enable_ipv4 && cfg.network.is_none() {
            return Err(missing("Network").into());
        }
        if cfg.enable_ipv6 && cfg.ipv6_network.is_none() {
            return Err(missing("IPv6Network").into());
        }
        let _ = self.families.set((cfg.enable_ipv4, cfg.enable_ipv6));
        Ok(cfg)
    }

    async fn stored(&self) -> Stored {
        let n = match self.own_node().await {
            Ok(n) => n,
            Err(e) => {
                warn!(error = %e, "cannot read this node's annotations; starting without what it published before");
                return Stored::default();
            }
        };
        let name = n.name().to_string();
        let ip = |k: &str| {
            n.annotation(k)
                .filter(|s| !s.is_empty())
                .map(str::to_string)
        };
        let public_ip = ip(&self.ann.node_public_ip).and_then(|s| {
            s.parse()
                .inspect_err(|_| warn!(node = %name, annotation = %self.ann.node_public_ip, value = %s, "not an IPv4 address; ignored"))
                .ok()
        });
        let public_ipv6 = ip(&self.ann.node_public_ipv6).and_then(|s| {
            s.parse()
                .inspect_err(|_| warn!(node = %name, annotation = %self.ann.node_public_ipv6, value = %s, "not an IPv6 address; ignored"))
                .ok()
        });
        let data = |k: &str| {
            node::backend_data(&name, k, n.annotation(k))
                .inspect_err(|e| warn!("{e}; ignored"))
                .ok()
                .flatten()
        };
        Stored {
            public_ip,
            public_ipv6,
            backend_data: data(&self.ann.backend_data),
            backend_v6_data: data(&self.ann.backend_v6_data),
        }
    }

    async fn acquire(
        &self,
        cfg: &NetworkConfig,
        attrs: &LeaseAttrs,
    ) -> Result<Lease, ManagerError> {
        let n = self.own_node().await?;
        let (v4, v6) = n
            .pod_cidrs()
            .map_err(|e| ManagerError::Store(RegistryError::Other(e)))?;
        let v4 = v4.filter(|_| cfg.enable_ipv4);
        let v6 = v6.filter(|_| cfg.enable_ipv6);
        let dual = cfg.enable_ipv4 && cfg.enable_ipv6;
        let need = match (
            cfg.enable_ipv4 && v4.is_none(),
            cfg.enable_ipv6 && v6.is_none(),
        ) {
            (false, false) => None,
            (true, false) if dual => Some("IPv4 podCIDR"),
            (false, true) if dual => Some("IPv6 podCIDR"),
            _ => Some("podCIDR"),
        };
        if let Some(what) = need {
            return Err(ManagerError::Waiting(format!(
                "node {:?} has no {what} yet (is kube-controller-manager running with --allocate-node-cidrs and \
                 a --cluster-cidr inside the flannel Network?)",
                self.node
            )));
        }
        let v4 = v4.map(|s| {
            if s.trunc() != s {
                warn!(node = %self.node, podcidr = %s, "podCIDR has host bits set; using {}", s.trunc());
            }
            s.trunc()
        });
        let v6 = v6.map(|s| s.trunc());
        // A podCIDR outside the flannel network is a config mismatch (kubeadm's --pod-network-cidr against
        // net-conf.json's Network): it will not fix itself, so it is not retried.
        let mismatch = |key: &'static str, net: String, s: String| {
            ManagerError::Config(ConfigError::Invalid {
                key,
                value: format!("\"{net}\""),
                reason: format!(
                    "does not contain podCIDR {s} of node {:?} (set {key} in {} to the cluster's pod CIDR)",
                    self.node,
                    self.net_config_path.display()
                ),
            })
        };
        if let (Some(s), Some(net)) = (v4, cfg.network) {
            if !net.contains(&s) {
                return Err(mismatch("Network", net.to_string(), s.to_string()));
            }
        }
        if let Some(s) = v6 {
            match cfg.ipv6_network {
                Some(net) if net.contains(&s) => {}
                other => {
                    let net = other
                        .map(|n| n.to_string())
                        .unwrap_or_else(|| "(none)".into());
                    return Err(mismatch("IPv6Network", net, s.to_string()));
                }
            }
        }
        let changes = annotation_changes(&self.ann, attrs, &n);
        if !changes.is_empty() {
            info!(node = %self.node, annotations = ?changes.keys().collect::<Vec<_>>(), "writing flannel's node annotations");
            self.patch_annotations(&changes).await?;
        }
        let key = SubnetKey {
            ipv4: v4.unwrap_or(NO_IPV4_SUBNET),
            ipv6: v6,
        };
        Ok(Lease::new(
            key,
            attrs.clone(),
            Expiration::At(SystemTime::now() + Duration::from_secs(24 * 3600)),
            0,
        ))
    }

    async fn complete(&self, _lease: &Lease) -> Result<(), ManagerError> {
        if !self.set_node_network_unavailable {
            return Ok(());
        }
        let now = k8s_openapi::jiff::Timestamp::now().to_string();
        let patch = json!({"status": {"conditions": [{
            "type": "NetworkUnavailable",
            "status": "False",
            "reason": "FlannelIsUp",
            "message": "Flannel is running on this node",
            "lastTransitionTime": now,
            "lastHeartbeatTime": now,
        }]}});
        self.patch_own_status("NetworkUnavailable condition", patch)
            .await
            .map_err(ManagerError::Store)?;
        info!(node = %self.node, "node condition NetworkUnavailable=False (FlannelIsUp)");
        Ok(())
    }

    async fn keep(
        &self,
        _cfg: &NetworkConfig,
        lease: Lease,
        mut attrs: watch::Receiver<LeaseAttrs>,
    ) -> LeaseEnd {
        let mut current = lease.attrs.clone();
        let own = watcher::watcher(
            self.nodes.clone(),
            watcher::Config::default().fields(&format!("metadata.name={}", self.node)),
        )
        .default_backoff();
        let mut own = std::pin::pin!(own);
        let mut node: Option<NodeLite> = None;
        let mut foreign = Backoff::new(Duration::from_secs(1), Duration::from_secs(60));
        let mut rewrite_at: Option<tokio::time::Instant> = None;
        let far = tokio::time::Instant::now() + Duration::from_secs(365 * 24 * 3600);
        let mut attrs_open = true;
        loop {
            tokio::select! {
                changed = attrs.changed(), if attrs_open => {
                    if changed.is_err() {
                        attrs_open = false;
                        continue;
                    }
                    current = attrs.borrow_and_update().clone();
                    info!(node = %self.node, "publishing changed attributes in the node's annotations");
                    rewrite_at = Some(tokio::time::Instant::now());
                }
                ev = own.next() => match ev {
                    Some(Ok(WatchEvent::Apply(n) | WatchEvent::InitApply(n))) => {
                        let drift = annotation_changes(&self.ann, &current, &n);
                        if !drift.is_empty() && rewrite_at.is_none() {
                            warn!(node = %self.node, annotations = ?drift.keys().collect::<Vec<_>>(),
                                "flannel's node annotations were changed by someone else; writing them back");
                            rewrite_at = Some(tokio::time::Instant::now() + foreign.next_delay());
                        } else if drift.is_empty() {
                            foreign.reset();
                        }
                        node = Some(n);
                    }
                    Some(Ok(WatchEvent::Delete(_))) => {
                        warn!(node = %self.node, "this node's Node object was deleted; keeping the data plane and waiting for it to come back");
                        node = None;
                    }
                    Some(Ok(_)) => {}
                    Some(Err(e)) => debug!(error = %e, "watch of this node's annotations interrupted"),
                    None => std::future::pending::<()>().await,
                },
                _ = tokio::time::sleep_until(rewrite_at.unwrap_or(far)), if rewrite_at.is_some() => {
                    rewrite_at = None;
                    let base = match node.clone() {
                        Some(n) => n,
                        None => match self.own_node().await {
                            Ok(n) => n,
                            Err(e) => {
                                warn!(error = %e, "cannot read this node to write its annotations; retrying");
                                rewrite_at = Some(tokio::time::Instant::now() + foreign.next_delay());
                                continue;
                            }
                        },
                    };
                    let changes = annotation_changes(&self.ann, &current, &base);
                    if changes.is_empty() {
                        continue;
                    }
                    if let Err(e) = self.patch_annotations(&changes).await {
                        warn!(error = %e, "writing flannel's node annotations failed; retrying");
                        rewrite_at = Some(tokio::time::Instant::now() + foreign.next_delay());
                    }
                }
            }
        }
    }

    fn watch_peers(&self, _own: SubnetKey) -> PeerWatcher {
        let (tx, rx) = watch::channel(PeerSnapshot::default());
        let task = tokio::spawn(watch_nodes(self.clone(), tx));
        PeerWatcher::from_parts(rx, task)
    }

    fn subnet_len_from_own_lease(&self) -> bool {
        true
    }
}

/// The peers as the snapshot holds them, plus what is needed to keep it right when two Nodes claim one subnet
/// (the older Node holds it; the other waits, shadowed, in case the holder goes).
#[derive(Default)]
struct PeerSet {
    leases: BTreeMap<SubnetKey, Lease>,
    by_name: HashMap<String, SubnetKey>,
    holder: HashMap<SubnetKey, String>,
    shadowed: HashMap<String, Lease>,
}

impl PeerSet {
    /// Adds or replaces a Node's lease; true when the published set changed.
    fn upsert(&mut self, name: &str, lease: Lease) -> bool {
        let key = lease.key();
        let mut changed = false;
        if self.by_name.get(name).is_some_and(|k| *k != key) {
            changed |= self.remove(name);
        }
        self.by_name.insert(name.to_string(), key);
        match self.holder.get(&key).cloned() {
            None => {
                self.holder.insert(key, name.to_string());
                self.leases.insert(key, lease);
                true
            }
            Some(h) if h == name => {
                let same = self.leases.get(&key).is_some_and(|l| l.same_peer(&lease));
                self.leases.insert(key, lease);
                changed || !same
            }
            Some(h) => {
                let older = self
                    .leases
                    .get(&key)
                    .is_some_and(|cur| (lease.created, name) < (cur.created, h.as_str()));
                warn!(subnet = %key.cidrs(), nodes = ?[&h, &name.to_string()],
                    "two Nodes announce the same podCIDR; the older one keeps it");
                if older {
                    if let Some(cur) = self.leases.insert(key, lease) {
                        self.shadowed.insert(h, cur);
                    }
                    self.holder.insert(key, name.to_string());
                    true
                } else {
                    self.shadowed.insert(name.to_string(), lease);
                    changed
                }
            }
        }
    }

    /// Removes a Node; true when the published set changed.
    fn remove(&mut self, name: &str) -> bool {
        let Some(key) = self.by_name.remove(name) else {
            return false;
        };
        if self.shadowed.remove(name).is_some() {
            return false;
        }
        if self.holder.get(&key).map(String::as_str) != Some(name) {
            return false;
        }
        self.holder.remove(&key);
        self.leases.remove(&key);
        // A shadowed Node with the same subnet takes over (the oldest).
        let next = self
            .shadowed
            .iter()
            .filter(|(_, l)| l.key() == key)
            .min_by_key(|(n, l)| (l.created, n.to_string()))
            .map(|(n, _)| n.clone());
        if let Some(n) = next {
            if let Some(l) = self.shadowed.remove(&n) {
                self.holder.insert(key, n);
                self.leases.insert(key, l);
            }
        }
        true
    }
}

/// Lists and watches every Node and publishes the peers' leases.
async fn watch_nodes(src: KubeSource, tx: watch::Sender<PeerSnapshot>) {
    let cfg = watcher::Config::default().page_size(500);
    let stream = watcher::watcher(src.nodes.clone(), cfg).default_backoff();
    let mut stream = std::pin::pin!(stream);
    let mut set = PeerSet::default();
    // A (re-)list builds a fresh set, moved into the snapshot whole at its end: the old one stays published until
    // then. After that the leases live only in the snapshot (see edit_published).
    let mut fresh: Option<PeerSet> = None;
    let mut counter: i64 = 0;
    // Nodes whose flannel data we could not read, with the reason we logged (logged again only when it changes).
    let mut bad: HashMap<String, String> = HashMap::new();
    let mut failing = false;
    let (enable4, enable6) = src.families.get().copied().unwrap_or((true, false));
    while let Some(ev) = stream.next().await {
        let ev = match ev {
            Ok(ev) => {
                if failing {
                    info!("Kubernetes API reachable again; Node watch resumed");
                    failing = false;
                }
                ev
            }
            Err(e) => {
                // The backoff above spaces these out; the last known peers stay published meanwhile.
                warn!(error = %e, "cannot list or watch Nodes (keeping the last known peers)");
                failing = true;
                continue;
            }
        };
        let mut convert =
            |n: &NodeLite, counter: &mut i64, current: Option<&Lease>| -> Option<Lease> {
                if n.name() == src.node {
                    return None;
                }
                match node_lease(&src.ann, enable4, enable6, n, *counter + 1) {
                    Ok(Some(mut l)) => {
                        bad.remove(n.name());
                        match current {
                            Some(c) if c.same_peer(&l) => l.revision = c.revision,
                            _ => *counter += 1,
                        }
                        Some(l)
                    }
                    Ok(None) => None,
                    Err(e) => {
                        if bad.get(n.name()) != Some(&e) {
                            warn!("ignoring node: {e}");
                            bad.insert(n.name().to_string(), e);
                        }
                        None
                    }
                }
            };
        match ev {
            WatchEvent::Init => fresh = Some(PeerSet::default()),
            WatchEvent::InitApply(n) => {
                if let Some(f) = fresh.as_mut() {
                    let l = {
                        let snap = tx.borrow();
                        let current = set.by_name.get(n.name()).and_then(|k| snap.leases.get(k));
                        convert(&n, &mut counter, current)
                    };
                    if let Some(l) = l {
                        f.upsert(n.name(), l);
                    }
                }
            }
            WatchEvent::InitDone => {
                if let Some(mut f) = fresh.take() {
                    let leases = std::mem::take(&mut f.leases);
                    set = f;
                    let count = leases.len();
                    let rev = counter;
                    tx.send_modify(|s| {
                        let same = s.synced
                            && s.leases.len() == leases.len()
                            && s.leases
                                .iter()
                                .zip(leases.iter())
                                .all(|((ka, a), (kb, b))| ka == kb && a.same_peer(b));
                        s.leases = leases;
                        s.revision = rev;
                        if !s.synced || !same {
                            s.generation += 1;
                        }
                        s.synced = true;
                        s.lists += 1;
                    });
                    info!(peers = count, "listed Nodes");
                }
            }
            WatchEvent::Apply(n) => {
                let name = n.name().to_string();
                let current = set
                    .by_name
                    .get(&name)
                    .and_then(|k| tx.borrow().leases.get(k).cloned());
                let lease = convert(&n, &mut counter, current.as_ref());
                edit_published(&tx, &mut set, counter, |set| match lease {
                    Some(l) => set.upsert(&name, l),
                    None => set.remove(&name),
                });
            }
            WatchEvent::Delete(n) => {
                bad.remove(n.name());
                if edit_published(&tx, &mut set, counter + 1, |set| set.remove(n.name())) {
                    counter += 1;
                }
            }
        }
    }
}

/// Applies `f` to the published peer set in place and wakes the watchers only when it changed anything.
///
/// One copy of the leases: after the initial list they live in the snapshot, and `set.leases` is empty but for
/// the duration of `f` (the snapshot's map is lent to it). Cloning the whole map per Node event would keep two
/// copies of 5,000 leases alive and cost a full copy per join.
fn edit_published(
    tx: &watch::Sender<PeerSnapshot>,
    set: &mut PeerSet,
    revision: i64,
    f: impl FnOnce(&mut PeerSet) -> bool,
) -> bool {
    tx.send_if_modified(|s| {
        std::mem::swap(&mut set.leases, &mut s.leases);
        let changed = f(set);
        std::mem::swap(&mut set.leases, &mut s.leases);
        if changed {
            s.revision = revision;
            s.generation += 1;
        }
        changed
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::Ipv4Addr;

    fn ann() -> Annotations {
        Annotations::new(DEFAULT_ANNOTATION_PREFIX).unwrap()
    }

    fn vx_attrs() -> LeaseAttrs {
        LeaseAttrs {
            public_ip: Ipv4Addr::new(192, 0, 2, 1),
            public_ipv6: None,
            backend_type: "vxlan".into(),
            backend_data: Some(json!({"VNI": 1, "VtepMAC": "0e:00:00:00:00:01"}).into()),
            backend_v6_data: None,
        }
    }

    fn node_with(annotations: Value) -> NodeLite {
        serde_json::from_value(json!({"metadata": {"name": "n1", "annotations": annotations}}))
            .unwrap()
    }

    #[test]
    fn annotations_written_exactly_as_upstream() {
        let c = annotation_changes(&ann(), &vx_attrs(), &node_with(json!({})));
        assert_eq!(
            serde_json::to_value(&c).unwrap(),
            json!({
                "flannel.alpha.coreos.com/backend-data": "{\"VNI\":1,\"VtepMAC\":\"0e:00:00:00:00:01\"}",
                "flannel.alpha.coreos.com/backend-type": "vxlan",
                "flannel.alpha.coreos.com/kube-subnet-manager": "true",
                "flannel.alpha.coreos.com/public-ip": "192.0.2.1",
            })
        );
        // Already there: nothing to write.
        let n = node_with(serde_json::to_value(&c).unwrap());
        assert!(annotation_changes(&ann(), &vx_attrs(), &n).is_empty());
        // host-gw: backend-data is JSON null, as upstream writes it.
        let hg = LeaseAttrs {
            backend_type: "host-gw".into(),
            backend_data: None,
            ..vx_attrs()
        };
        let c = annotation_changes(&ann(), &hg, &node_with(json!({})));
        assert_eq!(c["flannel.alpha.coreos.com/backend-data"], "null");
    }

    #[test]
    fn overwrite_annotation_wins_for_the_public_ip() {
        let n = node_with(json!({"flannel.alpha.coreos.com/public-ip-overwrite": "203.0.113.7"}));
        let c = annotation_changes(&ann(), &vx_attrs(), &n);
        assert_eq!(c["flannel.alpha.coreos.com/public-ip"], "203.0.113.7");
    }

    #[test]
    fn dual_stack_writes_v6_keys() {
        let a = LeaseAttrs {
            public_ipv6: Some("2001:db8::1".parse().unwrap()),
            backend_v6_data: Some(json!({"VNI": 1, "VtepMAC": "0e:00:00:00:01:01"}).into()),
            ..vx_attrs()
        };
        let c = annotation_changes(&ann(), &a, &node_with(json!({})));
        assert_eq!(c["flannel.alpha.coreos.com/public-ipv6"], "2001:db8::1");
        assert!(c.contains_key("flannel.alpha.coreos.com/backend-v6-data"));
    }

    fn lease(key: &str, ip: u8, created: i64) -> Lease {
        Lease::new(
            key.parse().unwrap(),
            LeaseAttrs {
                public_ip: Ipv4Addr::new(192, 0, 2, ip),
                ..Default::default()
            },
            Expiration::Unknown,
            1,
        )
        .with_created(created)
    }

    #[test]
    fn peer_set_keeps_the_older_node_on_a_shared_podcidr() {
        let mut s = PeerSet::default();
        assert!(s.upsert("a", lease("10.244.2.0-24", 2, 10)));
        // A newer Node with the same podCIDR waits in the shadows.
        assert!(!s.upsert("b", lease("10.244.2.0-24", 3, 20)));
        assert_eq!(
            s.leases.values().next().unwrap().attrs.public_ip,
            Ipv4Addr::new(192, 0, 2, 2)
        );
        // The holder goes: the shadowed one takes over.
        assert!(s.remove("a"));
        assert_eq!(
            s.leases.values().next().unwrap().attrs.public_ip,
            Ipv4Addr::new(192, 0, 2, 3)
        );
        // A Node changing its subnet moves.
        assert!(s.upsert("b", lease("10.244.5.0-24", 3, 20)));
        assert_eq!(
            s.leases.keys().map(|k| k.to_string()).collect::<Vec<_>>(),
            vec!["10.244.5.0-24"]
        );
        assert!(s.remove("b") && s.leases.is_empty() && s.by_name.is_empty());
        assert!(!s.remove("b"));
    }
}
