//! The peer watcher: keeps the full set of other nodes' leases current and publishes it as
//! a snapshot (level-triggered: the reconciler reads the whole desired set, not deltas).
//!
//! List, then watch from the list's revision; after a broken watch resume from the last
//! revision seen (nothing is missed while etcd keeps the history), and after a compaction
//! list again. While the store is away the last known set stays published, and retries
//! back off (upstream: 100 ms doubling to 5 s; its CPU spin on a lost etcd was #2171).

use std::collections::BTreeMap;
use std::time::Duration;

use futures::StreamExt;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tracing::{debug, info, warn};

use crate::backoff::Backoff;
use crate::lease::{Lease, SubnetKey};
use crate::registry::{Event, RegistryError, SharedRegistry, WatchBatch};

/// The current set of peer leases.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct PeerSnapshot {
    /// Every peer lease (our own excluded), by key.
    pub leases: BTreeMap<SubnetKey, Lease>,
    /// Store revision the set is current at.
    pub revision: i64,
    /// False until the first list succeeded: an unsynced empty set means "unknown", not
    /// "no peers", so nothing may be removed on its account.
    pub synced: bool,
    /// Increases whenever the set of peers or what they publish changes.
    pub generation: u64,
    /// How many full lists were done (1 after start; more after compactions).
    pub lists: u64,
}

/// Backoff bounds of the peer watcher.
#[derive(Debug, Clone)]
pub struct PeerWatchOptions {
    /// Shortest wait before retrying the store.
    pub backoff_min: Duration,
    /// Longest wait before retrying the store.
    pub backoff_max: Duration,
}

impl Default for PeerWatchOptions {
    fn default() -> Self {
        PeerWatchOptions {
            backoff_min: Duration::from_millis(100),
            backoff_max: Duration::from_secs(5),
        }
    }
}

/// A running peer watcher; dropping it stops the task.
pub struct PeerWatcher {
    rx: watch::Receiver<PeerSnapshot>,
    task: JoinHandle<()>,
}

impl PeerWatcher {
    /// Starts watching the leases in `registry`, leaving out `own` (this node's lease).
    pub fn spawn(registry: SharedRegistry, own: Option<SubnetKey>, opts: PeerWatchOptions) -> Self {
        let (tx, rx) = watch::channel(PeerSnapshot::default());
        let task = tokio::spawn(run(registry, own, opts, tx));
        PeerWatcher { rx, task }
    }

    /// A watcher made of a snapshot channel and the task that feeds it (for sources other than a store).
    pub fn from_parts(rx: watch::Receiver<PeerSnapshot>, task: JoinHandle<()>) -> Self {
        PeerWatcher { rx, task }
    }

    /// A receiver of snapshots; `changed()` wakes on every change of the set.
    pub fn subscribe(&self) -> watch::Receiver<PeerSnapshot> {
        self.rx.clone()
    }

    /// The latest snapshot (a copy).
    pub fn snapshot(&self) -> PeerSnapshot {
        self.rx.borrow().clone()
    }
}

impl Drop for PeerWatcher {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Replaces the set with a fresh list; notifies only if something a consumer cares about
/// changed.
fn replace(
    tx: &watch::Sender<PeerSnapshot>,
    own: Option<&SubnetKey>,
    leases: Vec<Lease>,
    revision: i64,
) {
    let fresh: BTreeMap<SubnetKey, Lease> = leases
        .into_iter()
        .filter(|l| Some(&l.key()) != own)
        .map(|l| (l.key(), l))
        .collect();
    tx.send_if_modified(|snap| {
        let same = snap.leases.len() == fresh.len()
            && snap
                .leases
                .iter()
                .zip(fresh.iter())
                .all(|((ka, a), (kb, b))| ka == kb && a.same_peer(b));
        let first = !snap.synced;
        snap.leases = fresh;
        snap.revision = revision;
        snap.synced = true;
        snap.lists += 1;
        if first || !same {
            snap.generation += 1;
        }
        // A re-list is reported even when nothing changed, so consumers see the resync.
        true
    });
}

/// Applies watch events; notifies only when the set changed.
fn apply(tx: &watch::Sender<PeerSnapshot>, own: Option<&SubnetKey>, batch: WatchBatch) {
    tx.send_if_modified(|snap| {
        let mut changed = false;
        for ev in batch.events {
            let key = ev.key();
            if Some(&key) == own {
                continue;
            }
            match ev {
                Event::Unreadable { .. } => {
                    if snap.leases.remove(&key).is_some() {
                        debug!(subnet = %key, "peer lease became unreadable");
                        changed = true;
                    }
                }
                Event::Added(l) => match snap.leases.get_mut(&key) {
                    // A renewal: keep the record current without waking anyone.
                    Some(old) if old.same_peer(&l) => *old = l,
                    _ => {
                        debug!(subnet = %key, public_ip = %l.attrs.public_ip, "peer lease added");
                        snap.leases.insert(key, l);
                        changed = true;
                    }
                },
                Event::Removed(_) => {
                    if snap.leases.remove(&key).is_some() {
                        debug!(subnet = %key, "peer lease removed");
                        changed = true;
                    }
                }
            }
        }
        snap.revision = snap.revision.max(batch.revision);
        if changed {
            snap.generation += 1;
        }
        changed
    });
}

async fn run(
    registry: SharedRegistry,
    own: Option<SubnetKey>,
    opts: PeerWatchOptions,
    tx: watch::Sender<PeerSnapshot>,
) {
    let mut backoff = Backoff::new(opts.backoff_min, opts.backoff_max);
    // None: a full list is needed (start, or the watch fell behind a compaction).
    let mut cursor: Option<i64> = None;
    loop {
        let after = match cursor {
            Some(rev) => rev,
            None => match registry.get_subnets().await {
                Ok((leases, rev)) => {
                    info!(count = leases.len(), revision = rev, "listed subnet leases");
                    replace(&tx, own.as_ref(), leases, rev);
                    backoff.reset();
                    cursor = Some(rev);
                    rev
                }
                Err(e) => {
                    let d = backoff.next_delay();
                    warn!(store = %registry.name(), error = %e, "cannot list subnet leases, retrying in {d:?} (keeping the last known peers)");
                    tokio::time::sleep(d).await;
                    continue;
                }
            },
        };
        let mut stream = match registry.watch_subnets(after).await {
            Ok(s) => s,
            Err(RegistryError::Compacted { compact_revision }) => {
                warn!(
                    after,
                    compact_revision, "lease history compacted, re-listing"
                );
                cursor = None;
                continue;
            }
            Err(e) => {
                let d = backoff.next_delay();
                warn!(store = %registry.name(), error = %e, "cannot watch subnet leases, retrying in {d:?} from revision {after}");
                tokio::time::sleep(d).await;
                continue;
            }
        };
        debug!(after, "watching subnet leases");
        let mut relist = false;
        while let Some(item) = stream.next().await {
            match item {
                Ok(batch) => {
                    cursor = Some(batch.revision.max(cursor.unwrap_or(0)));
                    apply(&tx, own.as_ref(), batch);
                    backoff.reset();
                }
                Err(RegistryError::Compacted { compact_revision }) => {
                    warn!(
                        compact_revision,
                        "lease watch fell behind compaction, re-listing"
                    );
                    relist = true;
                    break;
                }
                Err(e) => {
                    warn!(store = %registry.name(), error = %e, "lease watch broken");
                    break;
                }
            }
        }
        if relist {
            cursor = None;
        } else {
            // A watch that ended (store restart, network loss) is resumed from the last
            // revision after a pause, so a store that drops watches at once cannot make us spin.
            let d = backoff.next_delay();
            info!(
                "resuming lease watch from revision {} in {d:?}",
                cursor.unwrap_or(after)
            );
            tokio::time::sleep(d).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::lease::{Expiration, LeaseAttrs};

    fn lease(k: &str, ip: u8, rev: i64) -> Lease {
        Lease::new(
            k.parse().unwrap(),
            LeaseAttrs {
                public_ip: std::net::Ipv4Addr::new(192, 0, 2, ip),
                ..Default::default()
            },
            Expiration::Unknown,
            rev,
        )
    }

    #[test]
    fn apply_and_replace() {
        let (tx, mut rx) = watch::channel(PeerSnapshot::default());
        let own: SubnetKey = "10.0.1.0-24".parse().unwrap();
        replace(
            &tx,
            Some(&own),
            vec![lease("10.0.1.0-24", 1, 1), lease("10.0.2.0-24", 2, 2)],
            2,
        );
        assert!(rx.has_changed().unwrap());
        let s = rx.borrow_and_update().clone();
        assert!(s.synced);
        assert_eq!(s.leases.len(), 1, "own lease excluded");
        let g = s.generation;

        // A renewal (same peer, new revision) does not wake consumers.
        apply(
            &tx,
            Some(&own),
            WatchBatch {
                revision: 3,
                events: vec![Event::Added(lease("10.0.2.0-24", 2, 3))],
            },
        );
        assert!(!rx.has_changed().unwrap());
        assert_eq!(rx.borrow().revision, 3);

        apply(
            &tx,
            Some(&own),
            WatchBatch {
                revision: 5,
                events: vec![
                    Event::Added(lease("10.0.3.0-24", 3, 4)),
                    Event::Removed(lease("10.0.2.0-24", 0, 5)),
                ],
            },
        );
        assert!(rx.has_changed().unwrap());
        let s = rx.borrow_and_update().clone();
        assert_eq!(
            s.leases.keys().map(|k| k.to_string()).collect::<Vec<_>>(),
            vec!["10.0.3.0-24"]
        );
        assert_eq!(s.generation, g + 1);
    }
}
