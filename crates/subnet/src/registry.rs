//! The lease store interface, implemented by the etcd store ([`crate::etcd`]) and later by
//! the embedded file store.
//!
//! Shaped after upstream's `Registry` (`pkg/subnet/etcd/registry.go`) with two changes that
//! make a level-triggered daemon possible: watches report the store revision of every batch
//! (so a broken watch resumes where it stopped), and a compacted start revision is an error
//! value ([`RegistryError::Compacted`]) that tells the caller to list again.
//!
//! Revisions are store-wide, increase with every change, and a lease's `revision` is the
//! revision of its last change. A file store can keep a change counter to the same effect.

use std::sync::Arc;
use std::time::Duration;

use futures::stream::BoxStream;

use crate::lease::{Lease, LeaseAttrs, SubnetKey};

/// A store failure.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RegistryError {
    /// The store has no network config (text chosen by the store, e.g. upstream's
    /// "flannel config not found in etcd store. Did you create your config using etcdv3 API?").
    #[error("{0}")]
    ConfigNotFound(String),
    /// The store cannot be reached or did not answer in time; retry with backoff.
    #[error("lease store unavailable: {0}")]
    Unavailable(String),
    /// The requested start revision is no longer in the store's history: list again and
    /// watch from the list's revision.
    #[error("watch start revision compacted (oldest kept revision {compact_revision}): re-list")]
    Compacted {
        /// The oldest revision the store still has.
        compact_revision: i64,
    },
    /// The store refused our credentials or permissions.
    #[error("lease store denied access: {0}")]
    Denied(String),
    /// The store options are unusable (bad endpoint, unreadable TLS file, ...).
    #[error("invalid lease store options: {0}")]
    Options(String),
    /// Any other store error.
    #[error("lease store error: {0}")]
    Other(String),
}

impl RegistryError {
    /// Whether retrying later (with backoff) can help.
    pub fn is_retryable(&self) -> bool {
        matches!(
            self,
            RegistryError::Unavailable(_) | RegistryError::Other(_)
        )
    }
}

/// One change to a lease.
#[derive(Debug, Clone, PartialEq)]
pub enum Event {
    /// A lease was created or changed (renewals included).
    Added(Lease),
    /// A lease was deleted or expired.
    Removed(Lease),
    /// A lease's value was overwritten with something that is not lease JSON. Nobody can use it, so peers treat
    /// the lease as gone; its owner writes it back (a delete, by contrast, is a revocation).
    Unreadable {
        /// The key whose value is unreadable.
        key: SubnetKey,
        /// Store revision of the write.
        revision: i64,
        /// What is wrong with the value.
        reason: String,
    },
}

impl Event {
    /// The key the event is about.
    pub fn key(&self) -> SubnetKey {
        match self {
            Event::Added(l) | Event::Removed(l) => l.key(),
            Event::Unreadable { key, .. } => *key,
        }
    }

    /// The store revision of the change.
    pub fn revision(&self) -> i64 {
        match self {
            Event::Added(l) | Event::Removed(l) => l.revision,
            Event::Unreadable { revision, .. } => *revision,
        }
    }
}

/// Changes up to and including `revision`; `events` may be empty (progress notification).
#[derive(Debug, Clone, PartialEq)]
pub struct WatchBatch {
    /// Every change up to this revision has been delivered.
    pub revision: i64,
    /// The changes, in store order.
    pub events: Vec<Event>,
}

/// A watch: batches until the first error, after which the stream ends and the caller
/// watches again (from the last revision seen, or after a list on `Compacted`).
pub type WatchStream = BoxStream<'static, Result<WatchBatch, RegistryError>>;

/// A lease store. Object-safe so that the store can be chosen at run time
/// (`Arc<dyn Registry>`), and every future is `Send` so it runs under `tokio::spawn`.
#[async_trait::async_trait]
pub trait Registry: Send + Sync {
    /// A short name for logs, e.g. `etcd http://127.0.0.1:2379 /coreos.com/network`.
    fn name(&self) -> String;

    /// The raw network config text.
    async fn get_network_config(&self) -> Result<String, RegistryError>;

    /// All readable leases and the store revision they are current at. Malformed entries
    /// are logged and left out.
    async fn get_subnets(&self) -> Result<(Vec<Lease>, i64), RegistryError>;

    /// One lease, with its expiration read, or `None` when absent, and the store revision
    /// of the read (to watch from after a compaction). A malformed value is reported as
    /// `None` after a warning, since nobody can use it.
    async fn get_subnet(&self, key: &SubnetKey) -> Result<(Option<Lease>, i64), RegistryError>;

    /// Creates a lease only if the key does not exist (compare-and-swap); `None` if someone
    /// holds it. `ttl: None` creates a reservation (no expiry).
    async fn create_subnet(
        &self,
        key: &SubnetKey,
        attrs: &LeaseAttrs,
        ttl: Option<Duration>,
    ) -> Result<Option<Lease>, RegistryError>;

    /// Writes a lease unconditionally with a fresh TTL (renewal, or refreshing attributes);
    /// `ttl: None` keeps it a reservation.
    async fn update_subnet(
        &self,
        key: &SubnetKey,
        attrs: &LeaseAttrs,
        ttl: Option<Duration>,
    ) -> Result<Lease, RegistryError>;

    /// Deletes a lease (no error if absent).
    async fn delete_subnet(&self, key: &SubnetKey) -> Result<(), RegistryError>;

    /// Watches all leases for changes after revision `after`.
    async fn watch_subnets(&self, after: i64) -> Result<WatchStream, RegistryError>;

    /// Watches one lease for changes after revision `after`.
    async fn watch_subnet(&self, key: &SubnetKey, after: i64)
        -> Result<WatchStream, RegistryError>;
}

/// A shared, runtime-chosen store.
pub type SharedRegistry = Arc<dyn Registry>;
