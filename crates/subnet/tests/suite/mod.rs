//! The store test suite: the same checks for every lease store (etcd now, the local store
//! later). Each function takes a [`Fixture`] that gives fresh handles on one store.

#![allow(dead_code)]

use std::collections::BTreeSet;
use std::net::Ipv4Addr;
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use subnet::lease::Expiration;
use subnet::{
    load_config, Lease, LeaseAttrs, LeaseEnd, LeaseManager, ManagerError, ManagerOptions,
    PeerSnapshot, PeerWatchOptions, PeerWatcher, Registry, RegistryError, SharedRegistry,
    SubnetKey, WatchStream,
};
use tokio::sync::watch;
use tokio::time::timeout;

/// The default config of the suite: 10.244.0.0/16 in /24s (254 subnets).
pub const CONFIG: &str = r#"{"Network":"10.244.0.0/16","Backend":{"Type":"vxlan"}}"#;

/// Exactly what upstream flanneld v0.28 writes for a vxlan node.
pub const UPSTREAM_VALUE: &str = r#"{"PublicIP":"192.0.2.77","PublicIPv6":null,"BackendType":"vxlan","BackendData":{"VNI":1,"VtepMAC":"c6:d2:32:6f:8f:44"}}"#;

/// Access to one store under test.
#[async_trait::async_trait]
pub trait Fixture: Send + Sync {
    /// A new handle (own connection) on the store.
    async fn store(&self) -> SharedRegistry;
    /// Writes the network config.
    async fn put_config(&self, json: &str);
    /// Writes a raw value under a subnet key, as another program would; `ttl_secs: None`
    /// writes a reservation.
    async fn put_raw(&self, key: &str, value: &str, ttl_secs: Option<i64>);
    /// Deletes a subnet key directly.
    async fn delete_raw(&self, key: &str);
    /// Drops the store's change history up to now.
    async fn compact(&self);
    /// Stops the store (an outage).
    async fn stop(&self);
    /// Starts the store again with the same data and address.
    async fn start(&self);
}

/// Logs to the test output when `RUST_LOG` is set (e.g. `RUST_LOG=subnet=debug`).
pub fn init_logs() {
    if std::env::var_os("RUST_LOG").is_some() {
        let _ = tracing_subscriber::fmt()
            .with_test_writer()
            .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
            .try_init();
    }
}

/// Fast timings for tests.
pub fn fast_options() -> ManagerOptions {
    ManagerOptions {
        renew_retry: Duration::from_millis(500),
        backoff_min: Duration::from_millis(50),
        backoff_max: Duration::from_millis(500),
        ..Default::default()
    }
}

/// Fast peer-watcher backoff.
pub fn fast_watch() -> PeerWatchOptions {
    PeerWatchOptions {
        backoff_min: Duration::from_millis(50),
        backoff_max: Duration::from_millis(500),
    }
}

/// Attributes of a vxlan node with this public IP.
pub fn attrs(ip: Ipv4Addr) -> LeaseAttrs {
    let o = ip.octets();
    LeaseAttrs {
        public_ip: ip,
        public_ipv6: None,
        backend_type: "vxlan".into(),
        backend_data: Some(
            serde_json::json!({
                "VNI": 1,
                "VtepMAC": format!("02:00:{:02x}:{:02x}:{:02x}:{:02x}", o[0], o[1], o[2], o[3]),
            })
            .into(),
        ),
        backend_v6_data: None,
    }
}

async fn manager(fx: &dyn Fixture, prev: Option<SubnetKey>, opts: ManagerOptions) -> LeaseManager {
    let store = fx.store().await;
    let cfg = load_config(store.as_ref()).await.expect("load config");
    LeaseManager::new(store, cfg, prev, opts)
}

/// Waits (bounded) until the snapshot satisfies `pred`; panics with the last one.
pub async fn wait_for(
    rx: &mut watch::Receiver<PeerSnapshot>,
    limit: Duration,
    what: &str,
    pred: impl Fn(&PeerSnapshot) -> bool,
) -> PeerSnapshot {
    let r = timeout(limit, async {
        loop {
            {
                let s = rx.borrow_and_update();
                if pred(&s) {
                    return s.clone();
                }
            }
            if rx.changed().await.is_err() {
                panic!("peer watcher stopped while waiting for {what}");
            }
        }
    })
    .await;
    match r {
        Ok(s) => s,
        Err(_) => panic!(
            "timed out after {limit:?} waiting for {what}; last snapshot: {:?}",
            rx.borrow()
        ),
    }
}

fn keys(s: &PeerSnapshot) -> BTreeSet<String> {
    s.leases.keys().map(|k| k.to_string()).collect()
}

/// Reading, parsing and checking the config; missing and invalid configs are errors that
/// say what is wrong.
pub async fn config_read(fx: &dyn Fixture) {
    let store = fx.store().await;
    match store.get_network_config().await {
        Err(RegistryError::ConfigNotFound(m)) => assert!(m.contains("config not found"), "{m}"),
        other => panic!("expected ConfigNotFound, got {other:?}"),
    }
    fx.put_config(r#"{"Network":"10.244.0.0/16","SubnetLen":31}"#)
        .await;
    match load_config(store.as_ref()).await {
        Err(ManagerError::Config(e)) => assert!(e.to_string().starts_with("SubnetLen 31:"), "{e}"),
        other => panic!("expected a config error, got {other:?}"),
    }
    fx.put_config(r#"{"network":"10.5.0.0/16","subnetlen":26,"backend":{"type":"host-gw"}}"#)
        .await;
    let cfg = load_config(store.as_ref()).await.expect("config");
    assert_eq!(cfg.subnet_len, Some(26));
    assert_eq!(cfg.backend_type, "host-gw");
    assert_eq!(cfg.subnet_min, Some(Ipv4Addr::new(10, 5, 0, 64)));
}

/// `n` nodes acquiring at once all get distinct subnets.
pub async fn concurrent_acquisitions(fx: &dyn Fixture, n: u8) {
    fx.put_config(CONFIG).await;
    let mut tasks = Vec::new();
    for i in 0..n {
        let m = manager(fx, None, fast_options()).await;
        let ip = if i < 200 {
            Ipv4Addr::new(192, 0, 2, i + 1)
        } else {
            Ipv4Addr::new(198, 51, 100, i - 199)
        };
        tasks.push(tokio::spawn(async move {
            m.acquire(&attrs(ip)).await.map(|l| (ip, l))
        }));
    }
    let mut subnets = BTreeSet::new();
    for t in tasks {
        let (ip, l) = timeout(Duration::from_secs(60), t)
            .await
            .expect("acquisition timed out")
            .expect("task panicked")
            .expect("acquire failed");
        assert_eq!(l.attrs.public_ip, ip);
        assert!(
            subnets.insert(l.subnet),
            "subnet {} handed out twice",
            l.subnet
        );
    }
    assert_eq!(subnets.len(), usize::from(n));
    let (leases, _) = fx.store().await.get_subnets().await.expect("list");
    assert_eq!(leases.len(), usize::from(n));
    let stored: BTreeSet<_> = leases.iter().map(|l| l.subnet).collect();
    assert_eq!(stored, subnets);
}

/// A lease that is not renewed expires; one that is renewed stays.
pub async fn ttl_expiry_and_renewal(fx: &dyn Fixture) {
    fx.put_config(CONFIG).await;
    // Renewal 2 s before a 3 s TTL ends: a loaded CI machine (the whole suite on 2 CPUs) once missed a 1 s margin.
    let short = ManagerOptions {
        ttl: Duration::from_secs(3),
        renew_margin: Duration::from_secs(2),
        ..fast_options()
    };
    let store = fx.store().await;

    let idle = manager(fx, None, short.clone()).await;
    let idle_lease = idle
        .acquire(&attrs(Ipv4Addr::new(192, 0, 2, 10)))
        .await
        .expect("acquire idle");
    assert!(matches!(idle_lease.expiration, Expiration::At(_)));

    let kept = manager(fx, None, short.clone()).await;
    let kept_lease = kept
        .acquire(&attrs(Ipv4Addr::new(192, 0, 2, 11)))
        .await
        .expect("acquire kept");
    let (tx, mut renewed) = watch::channel(kept_lease.clone());
    let keeper = tokio::spawn(async move { kept.keep(kept_lease, Some(tx)).await });

    // The idle lease is gone within a few TTLs.
    let gone = timeout(Duration::from_secs(10), async {
        loop {
            match store.get_subnet(&idle_lease.key()).await {
                Ok((None, _)) => return,
                Ok(_) | Err(_) => tokio::time::sleep(Duration::from_millis(200)).await,
            }
        }
    })
    .await;
    assert!(gone.is_ok(), "unrenewed lease did not expire");

    // The kept one was renewed and is still there after several TTLs.
    timeout(Duration::from_secs(5), renewed.changed())
        .await
        .expect("no renewal")
        .expect("keeper gone");
    tokio::time::sleep(Duration::from_secs(4)).await;
    let key = renewed.borrow().key();
    let (l, _) = store.get_subnet(&key).await.expect("get");
    assert!(l.is_some(), "renewed lease expired");
    assert!(!keeper.is_finished(), "keeper ended: {:?}", keeper);
    keeper.abort();
}

/// A restarted node gets its subnet back: from its lease (same public IP), or from the
/// previous subnet.env value when the lease is gone.
pub async fn reuse_after_restart(fx: &dyn Fixture) {
    fx.put_config(CONFIG).await;
    let ip = Ipv4Addr::new(192, 0, 2, 20);
    let first = manager(fx, None, fast_options())
        .await
        .acquire(&attrs(ip))
        .await
        .expect("first");
    let again = manager(fx, None, fast_options())
        .await
        .acquire(&attrs(ip))
        .await
        .expect("again");
    assert_eq!(again.subnet, first.subnet, "same public IP, same subnet");

    // Lease deleted (e.g. expired while the node was off): subnet.env brings it back.
    let store = fx.store().await;
    store.delete_subnet(&first.key()).await.expect("delete");
    let back = manager(fx, Some(first.key()), fast_options())
        .await
        .acquire(&attrs(Ipv4Addr::new(192, 0, 2, 21)))
        .await
        .expect("from subnet.env");
    assert_eq!(back.subnet, first.subnet);

    // Previous subnet held by someone else: a different one.
    let other = manager(fx, Some(first.key()), fast_options())
        .await
        .acquire(&attrs(Ipv4Addr::new(192, 0, 2, 22)))
        .await
        .expect("other");
    assert_ne!(other.subnet, first.subnet);
}

/// A lease written by upstream flanneld is read exactly and reused by the node with the
/// same public IP.
pub async fn upstream_lease_reused(fx: &dyn Fixture) {
    fx.put_config(CONFIG).await;
    fx.put_raw("10.244.77.0-24", UPSTREAM_VALUE, Some(3600))
        .await;
    let store = fx.store().await;
    let (leases, _) = store.get_subnets().await.expect("list");
    assert_eq!(leases.len(), 1);
    assert_eq!(
        leases[0].attrs.to_json(),
        UPSTREAM_VALUE,
        "upstream value read and written back byte-exact"
    );

    let ours = attrs(Ipv4Addr::new(192, 0, 2, 77));
    let l = manager(fx, None, fast_options())
        .await
        .acquire(&ours)
        .await
        .expect("acquire");
    assert_eq!(l.subnet.to_string(), "10.244.77.0/24");
    let (stored, _) = store.get_subnet(&l.key()).await.expect("get");
    assert_eq!(stored.expect("lease present").attrs, ours);

    // A reservation (no TTL) for our IP stays a reservation.
    fx.put_raw(
        "10.244.78.0-24",
        r#"{"PublicIP":"192.0.2.78","PublicIPv6":null}"#,
        None,
    )
    .await;
    let r = manager(fx, None, fast_options())
        .await
        .acquire(&attrs(Ipv4Addr::new(192, 0, 2, 78)))
        .await
        .expect("acquire");
    assert_eq!(r.subnet.to_string(), "10.244.78.0/24");
    assert_eq!(r.expiration, Expiration::Never);
}

/// The peer watcher sees leases come and go, and leaves out our own.
pub async fn watch_add_delete(fx: &dyn Fixture) {
    fx.put_config(CONFIG).await;
    let own = manager(fx, None, fast_options())
        .await
        .acquire(&attrs(Ipv4Addr::new(192, 0, 2, 1)))
        .await
        .expect("own");
    let w = PeerWatcher::spawn(fx.store().await, Some(own.key()), fast_watch());
    let mut rx = w.subscribe();
    let s = wait_for(&mut rx, Duration::from_secs(10), "first sync", |s| s.synced).await;
    assert!(s.leases.is_empty(), "own lease must not be a peer: {s:?}");

    let peer = manager(fx, None, fast_options())
        .await
        .acquire(&attrs(Ipv4Addr::new(192, 0, 2, 2)))
        .await
        .expect("peer");
    let key = peer.key();
    let s = wait_for(&mut rx, Duration::from_secs(10), "peer added", |s| {
        s.leases.contains_key(&key)
    })
    .await;
    assert_eq!(s.leases[&key].attrs, peer.attrs);

    fx.store().await.delete_subnet(&key).await.expect("delete");
    wait_for(&mut rx, Duration::from_secs(10), "peer removed", |s| {
        !s.leases.contains_key(&key)
    })
    .await;
}

/// A store whose first list is stale (an old revision), as if the watcher had been away
/// across a compaction.
struct StaleFirstList {
    inner: SharedRegistry,
    stale_revision: i64,
    used: std::sync::atomic::AtomicBool,
}

#[async_trait::async_trait]
impl Registry for StaleFirstList {
    fn name(&self) -> String {
        format!("stale({})", self.inner.name())
    }
    async fn get_network_config(&self) -> Result<String, RegistryError> {
        self.inner.get_network_config().await
    }
    async fn get_subnets(&self) -> Result<(Vec<Lease>, i64), RegistryError> {
        if !self.used.swap(true, std::sync::atomic::Ordering::SeqCst) {
            return Ok((Vec::new(), self.stale_revision));
        }
        self.inner.get_subnets().await
    }
    async fn get_subnet(&self, key: &SubnetKey) -> Result<(Option<Lease>, i64), RegistryError> {
        self.inner.get_subnet(key).await
    }
    async fn create_subnet(
        &self,
        k: &SubnetKey,
        a: &LeaseAttrs,
        t: Option<Duration>,
    ) -> Result<Option<Lease>, RegistryError> {
        self.inner.create_subnet(k, a, t).await
    }
    async fn update_subnet(
        &self,
        k: &SubnetKey,
        a: &LeaseAttrs,
        t: Option<Duration>,
    ) -> Result<Lease, RegistryError> {
        self.inner.update_subnet(k, a, t).await
    }
    async fn delete_subnet(&self, k: &SubnetKey) -> Result<(), RegistryError> {
        self.inner.delete_subnet(k).await
    }
    async fn watch_subnets(&self, after: i64) -> Result<WatchStream, RegistryError> {
        self.inner.watch_subnets(after).await
    }
    async fn watch_subnet(&self, k: &SubnetKey, after: i64) -> Result<WatchStream, RegistryError> {
        self.inner.watch_subnet(k, after).await
    }
}

async fn first_item(s: Result<WatchStream, RegistryError>) -> Result<(), RegistryError> {
    let mut s = s?;
    match timeout(Duration::from_secs(5), s.next()).await {
        Ok(Some(Err(e))) => Err(e),
        Ok(Some(Ok(b))) => panic!("expected compaction error, got batch {b:?}"),
        Ok(None) => panic!("watch ended without an error"),
        Err(_) => panic!("no answer from watch of a compacted revision"),
    }
}

/// Watching from a compacted revision says "re-list"; the peer watcher then lists again
/// and publishes the full set.
pub async fn compaction_recovery(fx: &dyn Fixture) {
    fx.put_config(CONFIG).await;
    let store = fx.store().await;
    let (_, before) = store.get_subnets().await.expect("list");
    let a = manager(fx, None, fast_options())
        .await
        .acquire(&attrs(Ipv4Addr::new(192, 0, 2, 31)))
        .await
        .expect("a");
    let b = manager(fx, None, fast_options())
        .await
        .acquire(&attrs(Ipv4Addr::new(192, 0, 2, 32)))
        .await
        .expect("b");
    let c = manager(fx, None, fast_options())
        .await
        .acquire(&attrs(Ipv4Addr::new(192, 0, 2, 33)))
        .await
        .expect("c");
    store.delete_subnet(&c.key()).await.expect("delete c");
    fx.compact().await;

    match first_item(store.watch_subnets(before).await).await {
        Err(RegistryError::Compacted { compact_revision }) => assert!(compact_revision > before),
        other => panic!("expected Compacted, got {other:?}"),
    }

    let stale: SharedRegistry = Arc::new(StaleFirstList {
        inner: fx.store().await,
        stale_revision: before,
        used: Default::default(),
    });
    let w = PeerWatcher::spawn(stale, None, fast_watch());
    let mut rx = w.subscribe();
    let s = wait_for(
        &mut rx,
        Duration::from_secs(10),
        "resync after compaction",
        |s| s.lists >= 2,
    )
    .await;
    let want: BTreeSet<String> = [a.key().to_string(), b.key().to_string()].into();
    assert_eq!(keys(&s), want, "resync must publish the full current set");
}

/// Malformed values and keys are skipped (never a crash); overwriting a good lease with
/// garbage removes it from the peer set, as a fresh list would.
pub async fn malformed_lease_skipped(fx: &dyn Fixture) {
    fx.put_config(CONFIG).await;
    fx.put_raw("10.244.9.0-24", "this is not json", Some(3600))
        .await;
    fx.put_raw("not-a-subnet", r#"{"PublicIP":"192.0.2.99"}"#, Some(3600))
        .await;
    fx.put_raw("10.244.10.0-24", r#"{"PublicIP":"not an ip"}"#, Some(3600))
        .await;
    fx.put_raw(
        "10.244.11.0-24",
        r#"{"PublicIP":"192.0.2.11","PublicIPv6":null,"BackendType":"host-gw"}"#,
        Some(3600),
    )
    .await;
    let store = fx.store().await;
    let (leases, _) = store.get_subnets().await.expect("list");
    assert_eq!(
        leases
            .iter()
            .map(|l| l.key().to_string())
            .collect::<Vec<_>>(),
        vec!["10.244.11.0-24"]
    );
    let (bad, _) = store
        .get_subnet(&"10.244.9.0-24".parse().expect("key"))
        .await
        .expect("get");
    assert!(bad.is_none());

    let w = PeerWatcher::spawn(fx.store().await, None, fast_watch());
    let mut rx = w.subscribe();
    wait_for(&mut rx, Duration::from_secs(10), "sync", |s| {
        s.synced && s.leases.len() == 1
    })
    .await;
    fx.put_raw("10.244.12.0-24", "{broken", Some(3600)).await;
    fx.put_raw("10.244.13.0-24", r#"{"PublicIP":"192.0.2.13"}"#, Some(3600))
        .await;
    let s = wait_for(
        &mut rx,
        Duration::from_secs(10),
        "good lease after bad one",
        |s| s.leases.len() == 2,
    )
    .await;
    assert_eq!(
        keys(&s),
        ["10.244.11.0-24".to_string(), "10.244.13.0-24".to_string()].into()
    );
    fx.put_raw("10.244.11.0-24", "[]", Some(3600)).await;
    wait_for(
        &mut rx,
        Duration::from_secs(10),
        "garbage overwrite drops the peer",
        |s| s.leases.len() == 1,
    )
    .await;

    // Acquisition still works around the unreadable keys.
    let l = manager(fx, None, fast_options())
        .await
        .acquire(&attrs(Ipv4Addr::new(192, 0, 2, 50)))
        .await
        .expect("acquire");
    assert!(!["10.244.9.0/24", "10.244.10.0/24", "10.244.12.0/24"]
        .contains(&l.subnet.to_string().as_str()));
}

/// Deleting our lease ends [`LeaseManager::keep`] with `Revoked`.
pub async fn own_lease_revocation(fx: &dyn Fixture) {
    fx.put_config(CONFIG).await;
    let m = manager(fx, None, fast_options()).await;
    let lease = m
        .acquire(&attrs(Ipv4Addr::new(192, 0, 2, 40)))
        .await
        .expect("acquire");
    let key = lease.key();
    let keeper = tokio::spawn(async move { m.keep(lease, None).await });
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(!keeper.is_finished());
    fx.store().await.delete_subnet(&key).await.expect("delete");
    let end = timeout(Duration::from_secs(10), keeper)
        .await
        .expect("no revocation signal")
        .expect("keeper panicked");
    let LeaseEnd::Revoked(l) = end;
    assert_eq!(l.key(), key);
}

/// The store goes away and comes back: the watcher keeps the last set meanwhile, resumes,
/// and sees a lease added right after the store returned (before it re-watched).
/// Returns the final snapshot for store-specific checks.
pub async fn store_restart_watch_resumes(fx: &dyn Fixture) -> PeerSnapshot {
    fx.put_config(CONFIG).await;
    let first = manager(fx, None, fast_options())
        .await
        .acquire(&attrs(Ipv4Addr::new(192, 0, 2, 60)))
        .await
        .expect("first");
    // Our own lease is kept across the outage too: no false "revoked".
    let own = manager(fx, None, fast_options()).await;
    let own_lease = own
        .acquire(&attrs(Ipv4Addr::new(192, 0, 2, 59)))
        .await
        .expect("own");
    let keeper = tokio::spawn(async move { own.keep(own_lease, None).await });
    let w = PeerWatcher::spawn(fx.store().await, None, fast_watch());
    let mut rx = w.subscribe();
    wait_for(&mut rx, Duration::from_secs(10), "sync", |s| {
        s.leases.contains_key(&first.key())
    })
    .await;

    fx.stop().await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert!(
        w.snapshot().leases.contains_key(&first.key()),
        "last known set must be kept during the outage"
    );
    fx.start().await;

    // Added while the watcher is still backing off (or reconnecting).
    let writer = fx.store().await;
    let key: SubnetKey = "10.244.200.0-24".parse().expect("key");
    let added = timeout(Duration::from_secs(20), async {
        loop {
            match writer
                .create_subnet(
                    &key,
                    &attrs(Ipv4Addr::new(192, 0, 2, 61)),
                    Some(Duration::from_secs(3600)),
                )
                .await
            {
                Ok(Some(l)) => return l,
                Ok(None) => panic!("fresh key taken"),
                Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
            }
        }
    })
    .await
    .expect("store did not come back");
    let s = wait_for(
        &mut rx,
        Duration::from_secs(20),
        "lease added after restart",
        |s| s.leases.contains_key(&added.key()) && s.leases.contains_key(&first.key()),
    )
    .await;
    assert!(
        !keeper.is_finished(),
        "own lease keeper ended across the outage: {keeper:?}"
    );
    keeper.abort();
    s
}

/// Someone overwrites our lease key (another node's attributes, then a value that is not lease JSON): the keeper
/// writes our attributes back each time, so peers route our subnet to us again. A delete still revokes.
pub async fn own_lease_overwritten_is_restored(fx: &dyn Fixture) {
    fx.put_config(CONFIG).await;
    let m = manager(fx, None, fast_options()).await;
    let ours = attrs(Ipv4Addr::new(192, 0, 2, 41));
    let lease = m.acquire(&ours).await.expect("acquire");
    let key = lease.key();
    let keeper = tokio::spawn(async move { m.keep(lease, None).await });
    tokio::time::sleep(Duration::from_millis(300)).await;
    let reader = fx.store().await;
    let theirs = attrs(Ipv4Addr::new(192, 0, 2, 66));
    for (what, value) in [
        ("another node's attributes", theirs.to_json()),
        (
            "a value that is not lease JSON",
            "{\"PublicIP\":5}".to_string(),
        ),
        ("an empty value", String::new()),
    ] {
        fx.put_raw(&key.to_string(), &value, Some(3600)).await;
        let back = timeout(Duration::from_secs(10), async {
            loop {
                if let Ok((Some(l), _)) = reader.get_subnet(&key).await {
                    if l.attrs == ours {
                        return l;
                    }
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        })
        .await
        .unwrap_or_else(|_| panic!("own lease not restored after {what}"));
        assert_ne!(back.expiration, Expiration::Never, "restored with a TTL");
        assert!(!keeper.is_finished(), "keeper ended after {what}");
    }
    fx.delete_raw(&key.to_string()).await;
    let end = timeout(Duration::from_secs(10), keeper)
        .await
        .expect("no revocation signal after the delete")
        .expect("keeper panicked");
    let LeaseEnd::Revoked(l) = end;
    assert_eq!(l.key(), key);
}

/// A lease's `created` is the revision its key was created at, kept across renewals, in lists and watches.
pub async fn lease_created_revision_kept(fx: &dyn Fixture) {
    fx.put_config(CONFIG).await;
    let m = manager(fx, None, fast_options()).await;
    let lease = m
        .acquire(&attrs(Ipv4Addr::new(192, 0, 2, 42)))
        .await
        .expect("acquire");
    let created = lease.revision;
    let store = fx.store().await;
    let (_, rev) = store.get_subnets().await.expect("list");
    let mut watch = store.watch_subnets(rev).await.expect("watch");
    let renewed = m.renew(&lease).await.expect("renew");
    assert!(renewed.revision > created);
    let batch = timeout(Duration::from_secs(10), watch.next())
        .await
        .expect("watch event")
        .expect("stream open")
        .expect("batch");
    let ev = batch
        .events
        .iter()
        .find(|e| e.key() == lease.key())
        .expect("event for the renewal");
    match ev {
        subnet::Event::Added(l) => {
            assert_eq!(l.created, created, "watch: created revision");
            assert_eq!(l.revision, renewed.revision);
        }
        other => panic!("unexpected event {other:?}"),
    }
    let (all, _) = store.get_subnets().await.expect("list");
    let listed = all.iter().find(|l| l.key() == lease.key()).expect("listed");
    assert_eq!(listed.created, created, "list: created revision");
    assert_eq!(listed.revision, renewed.revision);
}
