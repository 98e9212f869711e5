//! The store suite against the embedded (local) store, plus local-only checks: many
//! processes acquiring on one directory, and how fast a change reaches another process.
//!
//! The multi-process tests re-run this test binary in a child mode: the test
//! `child_process_entry` does nothing unless `LOCAL_STORE_CHILD` is set.

mod common;
mod suite;

use std::collections::BTreeSet;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use common::TempDir;
use futures::StreamExt;
use subnet::{
    load_config, Event, LeaseManager, LocalRegistry, PeerWatcher, Registry, RegistryError,
    SharedRegistry, SubnetKey,
};
use suite::Fixture;
use tokio::time::timeout;

struct LocalFixture {
    _tmp: TempDir,
    dir: PathBuf,
}

impl LocalFixture {
    fn new() -> Self {
        suite::init_logs();
        let tmp = TempDir::new("local");
        let dir = tmp.path().join("store");
        LocalRegistry::open(&dir).expect("open store");
        LocalFixture { _tmp: tmp, dir }
    }

    fn registry(&self) -> LocalRegistry {
        LocalRegistry::open(&self.dir).expect("open store")
    }

    fn down(&self) -> PathBuf {
        self.dir.with_extension("down")
    }
}

#[async_trait::async_trait]
impl Fixture for LocalFixture {
    async fn store(&self) -> SharedRegistry {
        Arc::new(self.registry())
    }

    async fn put_config(&self, json: &str) {
        self.registry()
            .set_network_config(json)
            .expect("write config");
    }

    async fn put_raw(&self, key: &str, value: &str, ttl_secs: Option<i64>) {
        let ttl = ttl_secs.map(|s| Duration::from_secs(u64::try_from(s).expect("ttl")));
        self.registry().put_raw(key, value, ttl).expect("put raw");
    }

    async fn delete_raw(&self, key: &str) {
        self.registry().delete_raw(key).expect("delete raw");
    }

    async fn compact(&self) {
        self.registry().compact(0).expect("compact");
    }

    /// An outage: the directory goes away (as an unmounted volume would).
    async fn stop(&self) {
        std::fs::rename(&self.dir, self.down()).expect("move store away");
    }

    async fn start(&self) {
        std::fs::rename(self.down(), &self.dir).expect("move store back");
    }
}

#[tokio::test]
async fn config_read() {
    let fx = LocalFixture::new();
    suite::config_read(&fx).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fifty_concurrent_acquisitions() {
    let fx = LocalFixture::new();
    suite::concurrent_acquisitions(&fx, 50).await;
}

#[tokio::test]
async fn ttl_expiry_and_renewal() {
    let fx = LocalFixture::new();
    suite::ttl_expiry_and_renewal(&fx).await;
}

#[tokio::test]
async fn reuse_after_restart() {
    let fx = LocalFixture::new();
    suite::reuse_after_restart(&fx).await;
}

#[tokio::test]
async fn upstream_lease_reused() {
    let fx = LocalFixture::new();
    suite::upstream_lease_reused(&fx).await;
}

#[tokio::test]
async fn watch_add_delete() {
    let fx = LocalFixture::new();
    suite::watch_add_delete(&fx).await;
}

#[tokio::test]
async fn compaction_recovery() {
    let fx = LocalFixture::new();
    suite::compaction_recovery(&fx).await;
}

#[tokio::test]
async fn malformed_lease_skipped() {
    let fx = LocalFixture::new();
    suite::malformed_lease_skipped(&fx).await;
}

#[tokio::test]
async fn own_lease_revocation() {
    let fx = LocalFixture::new();
    suite::own_lease_revocation(&fx).await;
}

#[tokio::test]
async fn store_directory_away_watch_resumes() {
    let fx = LocalFixture::new();
    let s = suite::store_restart_watch_resumes(&fx).await;
    // The log kept its history, so the watcher resumed from its revision without a new list.
    assert_eq!(s.lists, 1, "expected a resumed watch, not a re-list: {s:?}");
}

#[tokio::test]
async fn watch_ahead_of_store_asks_for_relist() {
    let fx = LocalFixture::new();
    let r = fx.registry();
    let (_, rev) = r.get_subnets().await.expect("list");
    assert!(matches!(
        r.watch_subnets(rev + 1000).await,
        Err(RegistryError::Compacted { .. })
    ));
}

fn attrs(ip: Ipv4Addr) -> subnet::LeaseAttrs {
    suite::attrs(ip)
}

/// Concurrent writers on separate handles: a watcher sees every change, once, in revision
/// order with no gaps, and can resume from any revision it saw.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watch_sees_every_change_in_order() {
    let fx = LocalFixture::new();
    let r = fx.registry();
    let (_, start) = r.get_subnets().await.expect("list");
    let mut w = r.watch_subnets(start).await.expect("watch");
    let mut writers = Vec::new();
    for i in 0..4u8 {
        let h = fx.registry();
        writers.push(tokio::spawn(async move {
            let key: SubnetKey = format!("10.244.{i}.0-24").parse().expect("key");
            for n in 0..25u8 {
                let a = attrs(Ipv4Addr::new(192, 0, i, n));
                if n % 5 == 4 {
                    h.delete_subnet(&key).await.expect("delete");
                } else {
                    h.update_subnet(&key, &a, Some(Duration::from_secs(60)))
                        .await
                        .expect("update");
                }
            }
        }));
    }
    for t in writers {
        t.await.expect("writer");
    }
    let (_, end) = r.get_subnets().await.expect("list");
    assert_eq!(end - start, 100, "every write is one revision");
    let mut revs = Vec::new();
    let collected = timeout(Duration::from_secs(10), async {
        while revs.last().copied().unwrap_or(start) < end {
            let b = w.next().await.expect("open").expect("batch");
            for e in &b.events {
                revs.push(e.revision());
            }
            assert_eq!(
                Some(&b.revision),
                revs.last(),
                "batch revision is its last event's"
            );
        }
    })
    .await;
    assert!(collected.is_ok(), "watch fell short: {revs:?}");
    assert_eq!(revs, ((start + 1)..=end).collect::<Vec<_>>());

    // Resuming from the middle replays exactly the rest.
    let mid = start + 37;
    let mut w2 = r.watch_subnets(mid).await.expect("watch");
    let b = timeout(Duration::from_secs(5), w2.next())
        .await
        .expect("answer")
        .expect("open")
        .expect("batch");
    let resumed: Vec<i64> = b.events.iter().map(|e| e.revision()).collect();
    assert_eq!(resumed, ((mid + 1)..=end).collect::<Vec<_>>());
}

/// A peer that stops renewing disappears from every watcher's set, though nobody writes.
#[tokio::test]
async fn expiry_reaches_peer_watchers() {
    let fx = LocalFixture::new();
    fx.put_config(suite::CONFIG).await;
    let w = PeerWatcher::spawn(fx.store().await, None, suite::fast_watch());
    let mut rx = w.subscribe();
    suite::wait_for(&mut rx, Duration::from_secs(5), "sync", |s| s.synced).await;
    let key: SubnetKey = "10.244.50.0-24".parse().expect("key");
    fx.registry()
        .create_subnet(
            &key,
            &attrs(Ipv4Addr::new(192, 0, 2, 50)),
            Some(Duration::from_millis(800)),
        )
        .await
        .expect("create")
        .expect("free");
    suite::wait_for(&mut rx, Duration::from_secs(5), "added", |s| {
        s.leases.contains_key(&key)
    })
    .await;
    // Nobody writes: the watcher itself must notice the expiry (the bound only keeps a broken watch from hanging).
    suite::wait_for(&mut rx, Duration::from_secs(10), "expired", |s| {
        !s.leases.contains_key(&key)
    })
    .await;
}

// ---- many processes ----

const CHILD_ENV: &str = "LOCAL_STORE_CHILD";

fn spawn_child(mode: &str, dir: &Path, arg: &str) -> Child {
    Command::new(std::env::current_exe().expect("test binary"))
        .args([
            "child_process_entry",
            "--exact",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(CHILD_ENV, mode)
        .env("LOCAL_STORE_DIR", dir)
        .env("LOCAL_STORE_ARG", arg)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn child test process")
}

/// Waits (bounded) for a child and returns its stdout; panics with its stderr on failure.
fn finish(mut c: Child, limit: Duration) -> String {
    let deadline = Instant::now() + limit;
    loop {
        match c.try_wait().expect("wait") {
            Some(_) => break,
            None if Instant::now() > deadline => {
                let _ = c.kill();
                let _ = c.wait();
                panic!("child process did not finish within {limit:?}");
            }
            None => std::thread::sleep(Duration::from_millis(20)),
        }
    }
    let out = c.wait_with_output().expect("output");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "child failed: {}\nstdout:\n{stdout}\nstderr:\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}

fn unix_ns() -> u128 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0)
}

/// The child side of the multi-process tests (a no-op in a normal test run).
#[test]
fn child_process_entry() {
    let Ok(mode) = std::env::var(CHILD_ENV) else {
        return;
    };
    let dir = PathBuf::from(std::env::var("LOCAL_STORE_DIR").expect("LOCAL_STORE_DIR"));
    let arg = std::env::var("LOCAL_STORE_ARG").unwrap_or_default();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(async move {
        let store = LocalRegistry::open(&dir).expect("open store");
        match mode.as_str() {
            "acquire" => {
                // Start together: wait for the parent's go file (bounded).
                let go = dir.join("go");
                let deadline = Instant::now() + Duration::from_secs(20);
                while !go.exists() && Instant::now() < deadline {
                    tokio::time::sleep(Duration::from_millis(2)).await;
                }
                let ip: Ipv4Addr = arg.parse().expect("ip");
                let shared: SharedRegistry = Arc::new(store);
                let cfg = load_config(shared.as_ref()).await.expect("config");
                let m = LeaseManager::new(shared, cfg, None, suite::fast_options());
                let l = m.acquire(&attrs(ip)).await.expect("acquire");
                println!("LEASE {} {}", l.subnet, l.attrs.public_ip);
            }
            "write" => {
                // Creates leases carrying their write time, spaced out so each is measured
                // on its own.
                let n: u8 = arg.parse().expect("count");
                let mut took = Vec::new();
                for i in 0..n {
                    tokio::time::sleep(Duration::from_millis(30)).await;
                    let key: SubnetKey = format!("10.244.{}.0-24", 100 + i).parse().expect("key");
                    let mut a = attrs(Ipv4Addr::new(192, 0, 2, i + 1));
                    a.backend_data =
                        Some(serde_json::json!({"t_ns": unix_ns().to_string()}).into());
                    let t = Instant::now();
                    store
                        .create_subnet(&key, &a, Some(Duration::from_secs(600)))
                        .await
                        .expect("create")
                        .expect("free key");
                    took.push(t.elapsed());
                }
                took.sort();
                println!(
                    "WROTE {n} (write itself: median {:?}, max {:?})",
                    took[took.len() / 2],
                    took[took.len() - 1]
                );
            }
            other => panic!("unknown child mode {other}"),
        }
    });
}

/// Twenty processes acquire on one directory at once: twenty distinct subnets, and a
/// watcher in this process sees every one of them arrive.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn twenty_processes_acquire_distinct_subnets() {
    let fx = LocalFixture::new();
    fx.put_config(suite::CONFIG).await;
    let r = fx.registry();
    let (_, start) = r.get_subnets().await.expect("list");
    let mut w = r.watch_subnets(start).await.expect("watch");
    let n = 20u8;
    let children: Vec<Child> = (0..n)
        .map(|i| spawn_child("acquire", &fx.dir, &format!("192.0.2.{}", i + 1)))
        .collect();
    let t0 = Instant::now();
    std::fs::write(fx.dir.join("go"), b"").expect("go");
    let outputs = tokio::task::spawn_blocking(move || {
        children
            .into_iter()
            .map(|c| finish(c, Duration::from_secs(60)))
            .collect::<Vec<_>>()
    })
    .await
    .expect("join");
    let elapsed = t0.elapsed();
    let mut subnets = BTreeSet::new();
    let mut ips = BTreeSet::new();
    for out in &outputs {
        // libtest may print "test child_process_entry ... " on the same line first.
        let line = out
            .lines()
            .find_map(|l| l.find("LEASE ").map(|i| &l[i..]))
            .unwrap_or_else(|| panic!("no lease line in child output: {out}"));
        let mut parts = line.split_whitespace().skip(1);
        let subnet = parts.next().expect("subnet").to_string();
        ips.insert(parts.next().expect("ip").to_string());
        assert!(
            subnets.insert(subnet.clone()),
            "subnet {subnet} handed out twice"
        );
    }
    assert_eq!((subnets.len(), ips.len()), (20, 20));
    eprintln!("{n} processes acquired {n} distinct subnets in {elapsed:?}");

    let (leases, end) = r.get_subnets().await.expect("list");
    let stored: BTreeSet<String> = leases.iter().map(|l| l.subnet.to_string()).collect();
    assert_eq!(stored, subnets);
    let mut seen = BTreeSet::new();
    let got = timeout(Duration::from_secs(10), async {
        let mut rev = start;
        while rev < end {
            let b = w.next().await.expect("open").expect("batch");
            rev = b.revision;
            for e in b.events {
                if let Event::Added(l) = e {
                    seen.insert(l.subnet.to_string());
                }
            }
        }
    })
    .await;
    assert!(got.is_ok(), "watch did not reach revision {end}");
    assert_eq!(seen, subnets, "the watcher saw every acquisition");
}

/// Every lease written by another process reaches this process's watch, once each (the latency is printed for
/// information only: time is measured by `flannelctl bench convergence`, never asserted here).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cross_process_writes_reach_the_watch() {
    let fx = LocalFixture::new();
    let r = fx.registry();
    let (_, start) = r.get_subnets().await.expect("list");
    let mut w = r.watch_subnets(start).await.expect("watch");
    let n = 20u8;
    let child = spawn_child("write", &fx.dir, &n.to_string());
    let mut lat = Vec::new();
    let got = timeout(Duration::from_secs(30), async {
        while lat.len() < usize::from(n) {
            let b = w.next().await.expect("open").expect("batch");
            let now = unix_ns();
            for e in b.events {
                if let Event::Added(l) = e {
                    let t: u128 = l
                        .attrs
                        .backend_data
                        .as_ref()
                        .and_then(|d| d.field("t_ns").ok().flatten())
                        .and_then(|v| v.as_str()?.parse().ok())
                        .expect("write time");
                    lat.push(Duration::from_nanos(
                        u64::try_from(now.saturating_sub(t)).unwrap_or(u64::MAX),
                    ));
                }
            }
        }
    })
    .await;
    let out = tokio::task::spawn_blocking(move || finish(child, Duration::from_secs(30)))
        .await
        .expect("join");
    assert!(out.contains(&format!("WROTE {n}")), "{out}");
    assert!(got.is_ok(), "only {} of {n} events arrived", lat.len());
    lat.sort();
    let median = lat[lat.len() / 2];
    let max = lat[lat.len() - 1];
    let wrote = out
        .lines()
        .find_map(|l| l.find("WROTE ").map(|i| &l[i..]))
        .unwrap_or_default();
    eprintln!(
        "write start (other process) -> watch event: min {:?}, median {median:?}, max {max:?}; {wrote}",
        lat[0]
    );
    assert_eq!(lat.len(), usize::from(n), "one Added event per write");
}

#[tokio::test]
async fn own_lease_overwritten_is_restored() {
    let fx = LocalFixture::new();
    suite::own_lease_overwritten_is_restored(&fx).await;
}

#[tokio::test]
async fn lease_created_revision_kept() {
    let fx = LocalFixture::new();
    suite::lease_created_revision_kept(&fx).await;
}
