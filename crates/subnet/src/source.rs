//! Where subnets come from: the one seam between the daemon and its lease source.
//!
//! flanneld needs four things from a source: the network config, this node's subnet (kept for as long as it
//! runs), every other node's subnet and what it publishes, and a place to publish its own attributes. The etcd
//! and embedded stores provide them as leases the node takes and renews ([`StoreSource`], over a
//! [`crate::Registry`]); the Kubernetes API as Node objects (`spec.podCIDR` and flannel's annotations,
//! [`crate::kube::KubeSource`]). Upstream has the same seam (`pkg/subnet/subnet.go`, `Manager`); the daemon picks
//! one implementation at start and never asks which one runs.

use std::net::{Ipv4Addr, Ipv6Addr};
use std::sync::Arc;

use tokio::sync::watch;

use crate::lease::{Lease, LeaseAttrs, SubnetKey};
use crate::manager::{LeaseEnd, LeaseManager, ManagerError, ManagerOptions};
use crate::peers::{PeerWatchOptions, PeerWatcher};
use crate::registry::SharedRegistry;
use crate::NetworkConfig;

/// What the source remembers this node published before, read at start: a restarted node announces the same
/// VTEP MAC (so peers' FDB and neighbour entries stay right) and uses the public IP it was told to use.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Stored {
    /// The public IPv4 address this node must use (Kubernetes: the `node-public-ip` annotation).
    pub public_ip: Option<Ipv4Addr>,
    /// The public IPv6 address this node must use (`node-public-ipv6`).
    pub public_ipv6: Option<Ipv6Addr>,
    /// The backend data this node published last (`backend-data`).
    pub backend_data: Option<crate::BackendData>,
    /// The IPv6 backend data this node published last (`backend-v6-data`).
    pub backend_v6_data: Option<crate::BackendData>,
}

/// A lease source: chosen once at start by the daemon (`--kube-subnet-mgr`, `--local-store`, else etcd).
#[async_trait::async_trait]
pub trait SubnetManager: Send + Sync {
    /// For logs: `etcd http://127.0.0.1:2379 /coreos.com/network`, `kubernetes node n1`.
    fn name(&self) -> String;

    /// The network config, checked. A retryable error means "not there yet" (the daemon waits and asks again).
    async fn network_config(&self) -> Result<NetworkConfig, ManagerError>;

    /// What this node published before, if the source keeps it (default: nothing).
    async fn stored(&self) -> Stored {
        Stored::default()
    }

    /// This node's lease, for a node publishing `attrs`. A retryable error is waited out by the daemon
    /// ([`ManagerError::Waiting`] is shown on `/readyz`).
    async fn acquire(&self, cfg: &NetworkConfig, attrs: &LeaseAttrs)
        -> Result<Lease, ManagerError>;

    /// Called once the node is ready (subnet.env written, rules in place); Kubernetes: the Node's
    /// `NetworkUnavailable` condition goes to `False`.
    async fn complete(&self, _lease: &Lease) -> Result<(), ManagerError> {
        Ok(())
    }

    /// Keeps the lease until it is revoked: renews it, writes it back when someone else overwrites it, and
    /// publishes `attrs` whenever it changes.
    async fn keep(
        &self,
        cfg: &NetworkConfig,
        lease: Lease,
        attrs: watch::Receiver<LeaseAttrs>,
    ) -> LeaseEnd;

    /// Starts watching every other node's lease (`own` left out).
    fn watch_peers(&self, own: SubnetKey) -> PeerWatcher;

    /// Whether peers' subnets have the length of this node's own (Kubernetes: whatever mask the controller
    /// manager assigns) rather than the config's `SubnetLen`.
    fn subnet_len_from_own_lease(&self) -> bool {
        false
    }
}

/// A shared, runtime-chosen source.
pub type SharedSubnetManager = Arc<dyn SubnetManager>;

/// The etcd and embedded stores as a source: this node acquires a lease (the previous subnet when it is still
/// free), renews and defends it; peers are every other lease in the store.
pub struct StoreSource {
    registry: SharedRegistry,
    previous: Option<SubnetKey>,
    opts: ManagerOptions,
    watch: PeerWatchOptions,
    /// Where the config lives, for messages (`/coreos.com/network/config`, `the local store /dir`).
    config_at: String,
}

impl StoreSource {
    /// A source over `registry`; `previous` is the subnet from the last subnet.env; `config_at` says where the
    /// network config is expected, for messages.
    pub fn new(
        registry: SharedRegistry,
        previous: Option<SubnetKey>,
        opts: ManagerOptions,
        config_at: impl Into<String>,
    ) -> Self {
        StoreSource {
            registry,
            previous,
            opts,
            watch: PeerWatchOptions::default(),
            config_at: config_at.into(),
        }
    }

    /// The same source with other peer-watch backoff bounds (tests).
    pub fn with_watch_options(mut self, w: PeerWatchOptions) -> Self {
        self.watch = w;
        self
    }

    fn manager(&self, cfg: &NetworkConfig) -> LeaseManager {
        LeaseManager::new(
            self.registry.clone(),
            cfg.clone(),
            self.previous,
            self.opts.clone(),
        )
    }
}

#[async_trait::async_trait]
impl SubnetManager for StoreSource {
    fn name(&self) -> String {
        self.registry.name()
    }

    async fn network_config(&self) -> Result<NetworkConfig, ManagerError> {
        crate::manager::load_config(self.registry.as_ref())
            .await
            .map_err(|e| match e {
                // Not written yet is worth waiting for (upstream retries too), and says where to write it.
                ManagerError::Store(crate::RegistryError::ConfigNotFound(m)) => {
                    ManagerError::Waiting(format!("{m} ({})", self.config_at))
                }
                other => other,
            })
    }

    async fn acquire(
        &self,
        cfg: &NetworkConfig,
        attrs: &LeaseAttrs,
    ) -> Result<Lease, ManagerError> {
        self.manager(cfg).acquire(attrs).await
    }

    async fn keep(
        &self,
        cfg: &NetworkConfig,
        lease: Lease,
        attrs: watch::Receiver<LeaseAttrs>,
    ) -> LeaseEnd {
        self.manager(cfg)
            .keep_publishing(lease, None, Some(attrs))
            .await
    }

    fn watch_peers(&self, own: SubnetKey) -> PeerWatcher {
        PeerWatcher::spawn(self.registry.clone(), Some(own), self.watch.clone())
    }
}
