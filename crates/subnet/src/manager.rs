//! The lease manager: getting this node's lease, renewing it, and noticing when someone
//! revokes it (upstream `LocalManager`: `AcquireLease`, `RenewLease`, `CompleteLease`).

use std::time::{Duration, SystemTime};

use futures::StreamExt;
use tokio::sync::watch;
use tokio::time::Instant;
use tracing::{debug, error, info, warn};

use crate::alloc::{self, AllocError, Plan};
use crate::backoff::Backoff;
use crate::config::{ConfigError, NetworkConfig};
use crate::lease::{Expiration, Lease, LeaseAttrs, SubnetKey};
use crate::registry::{Event, Registry, RegistryError, SharedRegistry, WatchStream};

/// Upstream's lease TTL (`subnetTTL`).
pub const SUBNET_TTL: Duration = Duration::from_secs(24 * 3600);

/// Upstream's attempts at winning a subnet race (`raceRetries`).
pub const RACE_RETRIES: u32 = 10;

/// Timing of the lease manager.
#[derive(Debug, Clone)]
pub struct ManagerOptions {
    /// Lease TTL (24 h).
    pub ttl: Duration,
    /// Renew this long before expiry (`--subnet-lease-renew-margin`, 60 min).
    pub renew_margin: Duration,
    /// Wait after a failed renewal (upstream: 1 min).
    pub renew_retry: Duration,
    /// Attempts at creating a lease when other nodes take the chosen subnet first.
    pub max_attempts: u32,
    /// Shortest wait before re-watching after a broken watch.
    pub backoff_min: Duration,
    /// Longest wait before re-watching after a broken watch.
    pub backoff_max: Duration,
}

impl Default for ManagerOptions {
    fn default() -> Self {
        ManagerOptions {
            ttl: SUBNET_TTL,
            renew_margin: Duration::from_secs(60 * 60),
            renew_retry: Duration::from_secs(60),
            max_attempts: RACE_RETRIES,
            backoff_min: Duration::from_millis(100),
            backoff_max: Duration::from_secs(5),
        }
    }
}

/// Why the manager could not do its job.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum ManagerError {
    /// The store failed.
    #[error(transparent)]
    Store(#[from] RegistryError),
    /// The network config is invalid. Transparent: `ConfigError` already names the key and value, and a
    /// prefix here plus `source()` made `{:#}` chains print the message twice.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// No subnet is free.
    #[error(transparent)]
    Alloc(#[from] AllocError),
    /// Other nodes won every race for a subnet.
    #[error("Max retries reached trying to acquire a subnet ({0} attempts)")]
    MaxRetries(u32),
    /// Something outside this node has to happen first (a network config written, a podCIDR assigned): the
    /// daemon waits, says so in its log and on `/readyz`, and asks again.
    #[error("waiting: {0}")]
    Waiting(String),
}

impl ManagerError {
    /// Whether retrying later can help (store unreachable, lost races).
    pub fn is_retryable(&self) -> bool {
        match self {
            ManagerError::Store(e) => e.is_retryable(),
            ManagerError::MaxRetries(_) | ManagerError::Waiting(_) => true,
            ManagerError::Config(_) | ManagerError::Alloc(_) => false,
        }
    }
}

/// How [`LeaseManager::keep`] ended.
#[derive(Debug, Clone, PartialEq)]
pub enum LeaseEnd {
    /// Someone deleted our lease (or it expired): upstream logs "Lease has been revoked.
    /// Shutting down daemon." and exits.
    Revoked(Lease),
}

/// Reads and checks the network config from the store (upstream `GetNetworkConfig`).
pub async fn load_config(registry: &dyn Registry) -> Result<NetworkConfig, ManagerError> {
    let text = registry.get_network_config().await?;
    Ok(NetworkConfig::parse_checked(&text)?)
}

fn random_u64() -> u64 {
    getrandom::u64().unwrap_or_else(|_| {
        // No entropy source: fall back to the clock, which still differs between nodes.
        SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(0)
    })
}

/// Gets, renews and watches this node's lease.
#[derive(Clone)]
pub struct LeaseManager {
    registry: SharedRegistry,
    config: NetworkConfig,
    previous: Option<SubnetKey>,
    opts: ManagerOptions,
}

impl LeaseManager {
    /// A manager for a checked `config`; `previous` is the subnet from the previous
    /// subnet.env (`FLANNEL_SUBNET` / `FLANNEL_IPV6_SUBNET`), reused when still free.
    pub fn new(
        registry: SharedRegistry,
        config: NetworkConfig,
        previous: Option<SubnetKey>,
        opts: ManagerOptions,
    ) -> Self {
        LeaseManager {
            registry,
            config,
            previous,
            opts,
        }
    }

    /// The network config the manager allocates from.
    pub fn config(&self) -> &NetworkConfig {
        &self.config
    }

    /// The store.
    pub fn registry(&self) -> &SharedRegistry {
        &self.registry
    }

    /// Gets a lease for a node publishing `attrs`: reuses the lease carrying our public IP,
    /// else the previous subnet if free, else a random free subnet; creation is a
    /// compare-and-swap, retried (bounded) when another node wins the subnet.
    pub async fn acquire(&self, attrs: &LeaseAttrs) -> Result<Lease, ManagerError> {
        // Subnets we lost a race for: a key we cannot read (malformed value) is invisible in
        // the list but still occupied, so remember it rather than pick it again.
        let mut lost: Vec<Lease> = Vec::new();
        for attempt in 1..=self.opts.max_attempts {
            let (mut leases, _) = self.registry.get_subnets().await?;
            leases.extend(lost.iter().cloned());
            match alloc::plan(
                &self.config,
                &leases,
                attrs,
                self.previous.as_ref(),
                random_u64(),
            )? {
                Plan::Reuse(l) => {
                    info!(
                        "found lease ({}) for current IP ({}), reusing",
                        l.key().cidrs(),
                        attrs.public_ip
                    );
                    // A reservation (no TTL) stays one, as upstream keeps TTL 0 for it.
                    let ttl = (l.expiration != Expiration::Never).then_some(self.opts.ttl);
                    return Ok(self.registry.update_subnet(&l.key(), attrs, ttl).await?);
                }
                Plan::Replace(l) => {
                    info!("found lease ({}) for current IP ({}) but not compatible with current config, deleting",
                        l.key().cidrs(), attrs.public_ip);
                    self.registry.delete_subnet(&l.key()).await?;
                }
                Plan::Create(key) => {
                    if self.previous == Some(key) {
                        info!("found previously leased subnet ({}), reusing", key.cidrs());
                    }
                    match self
                        .registry
                        .create_subnet(&key, attrs, Some(self.opts.ttl))
                        .await?
                    {
                        Some(l) => {
                            info!(
                                "allocated lease ({}) to current node ({})",
                                key.cidrs(),
                                attrs.public_ip
                            );
                            return Ok(l);
                        }
                        None => {
                            debug!(subnet = %key, attempt, "subnet taken by another node, trying again");
                            lost.push(Lease::new(
                                key,
                                LeaseAttrs::default(),
                                Expiration::Unknown,
                                0,
                            ));
                        }
                    }
                }
            }
        }
        Err(ManagerError::MaxRetries(self.opts.max_attempts))
    }

    /// Renews a lease with a fresh TTL (upstream `RenewLease`: new etcd lease + put).
    pub async fn renew(&self, lease: &Lease) -> Result<Lease, ManagerError> {
        let ttl = (lease.expiration != Expiration::Never).then_some(self.opts.ttl);
        Ok(self
            .registry
            .update_subnet(&lease.key(), &lease.attrs, ttl)
            .await?)
    }

    /// When to renew: `renew_margin` before expiry, but never sooner than a second from now
    /// (a margin longer than the TTL must not turn into a renewal loop).
    fn renew_at(&self, lease: &Lease) -> Option<Instant> {
        let exp = match lease.expiration {
            Expiration::Never => return None,
            Expiration::At(t) => t,
            Expiration::Unknown => SystemTime::now(),
        };
        let until = exp
            .duration_since(SystemTime::now())
            .unwrap_or(Duration::ZERO);
        let wait = until
            .saturating_sub(self.opts.renew_margin)
            .max(Duration::from_secs(1));
        Some(Instant::now() + wait)
    }

    /// Keeps the lease: renews it before expiry and watches it; returns when it is revoked.
    /// Every renewed lease is published on `updates` when given. Store outages are ridden
    /// out (renewal retried after `renew_retry`, the watch resumed from the last revision),
    /// so the caller runs this until shutdown.
    pub async fn keep(&self, lease: Lease, updates: Option<watch::Sender<Lease>>) -> LeaseEnd {
        self.keep_publishing(lease, updates, None).await
    }

    /// [`LeaseManager::keep`], and also: when someone else overwrites our key (another value, or one that is not
    /// lease JSON), our attributes are written back at once, so peers route our subnet to us again within a watch
    /// round trip; a writer that keeps doing it is answered with growing pauses (up to a minute) and an error that
    /// names the key, since two nodes may be claiming one subnet. When `attrs` is given and its value changes
    /// (a backend device was recreated with another VTEP MAC), the lease is rewritten with the new attributes.
    pub async fn keep_publishing(
        &self,
        mut lease: Lease,
        updates: Option<watch::Sender<Lease>>,
        mut attrs: Option<watch::Receiver<LeaseAttrs>>,
    ) -> LeaseEnd {
        let key = lease.key();
        let far = Instant::now() + Duration::from_secs(365 * 24 * 3600);
        let mut renew_at = self.renew_at(&lease).unwrap_or(far);
        let mut after = lease.revision;
        let mut stream: Option<WatchStream> = None;
        let mut watch_at = Instant::now();
        let mut backoff = Backoff::new(self.opts.backoff_min, self.opts.backoff_max);
        // Writing our attributes back (after a foreign write, or because they changed): when, and how soon again.
        let mut rewrite_at: Option<Instant> = None;
        let mut foreign = Backoff::new(Duration::from_secs(1), Duration::from_secs(60));
        let mut last_foreign: Option<Instant> = None;
        let mut foreign_in_a_row = 0u32;
        info!(subnet = %key, "waiting to renew lease");
        loop {
            if stream.is_none() && Instant::now() >= watch_at {
                match self.registry.watch_subnet(&key, after).await {
                    Ok(s) => stream = Some(s),
                    Err(RegistryError::Compacted { .. }) => match self.resync_own(&key).await {
                        Ok((Some(l), rev)) => {
                            after = rev;
                            if l.attrs != lease.attrs {
                                rewrite_at.get_or_insert_with(Instant::now);
                            }
                        }
                        Ok((None, _)) => return self.revoked(lease),
                        Err(e) => {
                            warn!(subnet = %key, error = %e, "cannot re-read own lease");
                            watch_at = Instant::now() + backoff.next_delay();
                        }
                    },
                    Err(e) => {
                        let d = backoff.next_delay();
                        warn!(subnet = %key, error = %e, "cannot watch own lease, retrying in {d:?}");
                        watch_at = Instant::now() + d;
                    }
                }
                continue;
            }
            let watching = stream.is_some();
            let next_item = async {
                match stream.as_mut() {
                    Some(s) => s.next().await,
                    None => std::future::pending().await,
                }
            };
            let attrs_changed = async {
                match attrs.as_mut() {
                    Some(rx) => rx.changed().await.is_ok(),
                    None => std::future::pending().await,
                }
            };
            let rewrite = rewrite_at.unwrap_or(far);
            tokio::select! {
                _ = tokio::time::sleep_until(renew_at) => {
                    match self.renew(&lease).await {
                        Ok(l) => {
                            lease = l;
                            renew_at = self.renew_at(&lease).unwrap_or(far);
                            info!(subnet = %key, "lease renewed");
                            if let Some(tx) = &updates {
                                tx.send_replace(lease.clone());
                            }
                        }
                        Err(e) => {
                            error!(subnet = %key, error = %e,
                                "error renewing lease (trying again in {:?})", self.opts.renew_retry);
                            renew_at = Instant::now() + self.opts.renew_retry;
                        }
                    }
                }
                _ = tokio::time::sleep_until(rewrite), if rewrite_at.is_some() => {
                    match self.renew(&lease).await {
                        Ok(l) => {
                            lease = l;
                            renew_at = self.renew_at(&lease).unwrap_or(far);
                            rewrite_at = None;
                            info!(subnet = %key, public_ip = %lease.attrs.public_ip, "own lease written back");
                            if let Some(tx) = &updates {
                                tx.send_replace(lease.clone());
                            }
                        }
                        Err(e) => {
                            warn!(subnet = %key, error = %e,
                                "cannot write own lease back (trying again in {:?})", self.opts.renew_retry);
                            rewrite_at = Some(Instant::now() + self.opts.renew_retry);
                        }
                    }
                }
                changed = attrs_changed => {
                    if !changed {
                        // The publisher is gone (daemon shutting down): keep the lease as it is.
                        attrs = None;
                        continue;
                    }
                    let new = attrs.as_mut().map(|rx| rx.borrow_and_update().clone());
                    if let Some(new) = new.filter(|a| *a != lease.attrs) {
                        info!(subnet = %key, attrs = %new.to_json(), "publishing changed attributes in own lease");
                        lease.attrs = new;
                        rewrite_at = Some(Instant::now());
                    }
                }
                _ = tokio::time::sleep_until(watch_at), if !watching => {}
                item = next_item => match item {
                    Some(Ok(batch)) => {
                        after = batch.revision;
                        backoff.reset();
                        for ev in batch.events {
                            if ev.key() != key {
                                continue;
                            }
                            let what = match &ev {
                                Event::Removed(_) => return self.revoked(lease),
                                Event::Added(l) if l.attrs == lease.attrs => continue,
                                Event::Added(l) => format!("now {}", l.attrs.to_json()),
                                Event::Unreadable { reason, .. } => format!("unreadable: {reason}"),
                            };
                            // Quiet for a minute: answer at once; otherwise back off (two writers fighting).
                            let now = Instant::now();
                            if last_foreign.is_none_or(|t| now.duration_since(t) > Duration::from_secs(60)) {
                                foreign.reset();
                                foreign_in_a_row = 0;
                            }
                            last_foreign = Some(now);
                            foreign_in_a_row += 1;
                            let delay = if foreign_in_a_row == 1 { Duration::ZERO } else { foreign.next_delay() };
                            if foreign_in_a_row >= 3 {
                                error!(subnet = %key, revision = ev.revision(), times = foreign_in_a_row,
                                    "own lease keeps being overwritten by someone else ({what}); is another node \
                                     claiming this subnet? writing it back in {delay:?}");
                            } else {
                                warn!(subnet = %key, revision = ev.revision(),
                                    "own lease was overwritten by someone else ({what}); writing it back");
                            }
                            rewrite_at = Some(now + delay);
                        }
                    }
                    Some(Err(RegistryError::Compacted { .. })) => {
                        stream = None;
                        match self.resync_own(&key).await {
                            Ok((Some(l), rev)) => {
                                after = rev;
                                if l.attrs != lease.attrs {
                                    rewrite_at.get_or_insert_with(Instant::now);
                                }
                            }
                            Ok((None, _)) => return self.revoked(lease),
                            Err(e) => {
                                warn!(subnet = %key, error = %e, "cannot re-read own lease");
                                watch_at = Instant::now() + backoff.next_delay();
                            }
                        }
                    }
                    Some(Err(e)) => {
                        stream = None;
                        let d = backoff.next_delay();
                        warn!(subnet = %key, error = %e, "own lease watch broken, resuming from revision {after} in {d:?}");
                        watch_at = Instant::now() + d;
                    }
                    None => {
                        stream = None;
                        watch_at = Instant::now() + backoff.next_delay();
                    }
                },
            }
        }
    }

    async fn resync_own(&self, key: &SubnetKey) -> Result<(Option<Lease>, i64), RegistryError> {
        warn!(subnet = %key, "own lease watch fell behind compaction, re-reading the lease");
        self.registry.get_subnet(key).await
    }

    fn revoked(&self, lease: Lease) -> LeaseEnd {
        error!(subnet = %lease.key(), "Lease has been revoked. Shutting down daemon.");
        LeaseEnd::Revoked(lease)
    }
}
