//! `/healthz`, `/readyz` and `/status` on `--healthz-ip:--healthz-port`.
//!
//! `/readyz` answers 503 until subnet.env is written and the traffic rules are in place, so a kubelet readiness
//! probe (and the CNI plugin's "is flanneld running?" error) line up. `/status` is our addition: the daemon's view
//! of its lease and peers as JSON, read by `flannelctl status`.
//!
//! The status document is rendered on request, straight from the peer watcher's snapshot into the response
//! bytes: with thousands of peers a kept `serde_json::Value` tree (and a copy per request) cost more memory than
//! everything else the daemon holds.

use crate::admission::Refusal;
use axum::extract::{ConnectInfo, State as AxState};
use axum::http::{header, StatusCode};
use axum::response::IntoResponse;
use axum::routing::get;
use axum::Router;
use serde::ser::{SerializeMap, SerializeSeq};
use serde::{Serialize, Serializer};
use serde_json::Value;
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, RwLock};
use subnet::{Lease, PeerSnapshot, SubnetKey, NO_IPV4_SUBNET};
use tokio::sync::watch;

/// The outcome of the reconciler's last pass.
#[derive(Debug, Clone, Default)]
pub struct LastReconcile {
    /// Snapshot generation the pass worked from.
    pub generation: u64,
    /// Store revision of that snapshot.
    pub revision: i64,
    /// Whether every kernel step succeeded.
    pub ok: bool,
    /// The first error, when not ok.
    pub error: Option<String>,
    /// How long the pass took.
    pub micros: u64,
    /// Keys of the peers the pass saw, sorted (a peer that joined after it is not programmed yet).
    pub keys: Vec<SubnetKey>,
}

/// Shared daemon state the endpoints read.
#[derive(Default)]
pub struct State {
    ready: AtomicBool,
    /// `node` and `config` sections (small, fixed after start).
    base: RwLock<Value>,
    peers: RwLock<Option<watch::Receiver<PeerSnapshot>>>,
    last: RwLock<Option<LastReconcile>>,
    /// Leases admission refused in the last pass, and why.
    refused: RwLock<BTreeMap<SubnetKey, Refusal>>,
    /// `--status-remote`: answer /status to non-loopback clients too.
    status_remote: AtomicBool,
    /// What the daemon waits for before it can be ready (no config yet, no podCIDR yet), for /readyz.
    waiting: RwLock<Option<String>>,
    /// The backend's own section (a packet loop's counters), read when /status is asked for.
    backend: RwLock<Option<crate::backend::StatusSource>>,
}

impl State {
    /// What the daemon is waiting for, shown by /readyz while not ready; `None` when it waits for nothing.
    pub fn set_waiting(&self, what: Option<String>) {
        if let Ok(mut w) = self.waiting.write() {
            *w = what;
        }
    }

    /// Whether /status answers clients on other hosts (`--status-remote`).
    pub fn set_status_remote(&self, remote: bool) {
        self.status_remote.store(remote, Ordering::Relaxed);
    }

    /// Marks the daemon ready (subnet.env written, rules in place).
    pub fn set_ready(&self, ready: bool) {
        self.ready.store(ready, Ordering::SeqCst);
    }

    /// Whether the daemon is ready.
    pub fn is_ready(&self) -> bool {
        self.ready.load(Ordering::SeqCst)
    }

    /// Sets the fixed part of the status document (an object: `node`, `config`).
    pub fn set_base(&self, v: Value) {
        if let Ok(mut s) = self.base.write() {
            *s = v;
        }
    }

    /// Where the peer list comes from.
    pub fn set_peers(&self, rx: watch::Receiver<PeerSnapshot>) {
        if let Ok(mut s) = self.peers.write() {
            *s = Some(rx);
        }
    }

    /// Records the leases refused by the last pass.
    pub fn set_refused(&self, r: BTreeMap<SubnetKey, Refusal>) {
        if let Ok(mut s) = self.refused.write() {
            *s = r;
        }
    }

    /// Where the backend's section of /status comes from.
    pub fn set_backend_status(&self, src: Option<crate::backend::StatusSource>) {
        if let Ok(mut s) = self.backend.write() {
            *s = src;
        }
    }

    /// Records the reconciler's last pass.
    pub fn set_last_reconcile(&self, r: LastReconcile) {
        if let Ok(mut s) = self.last.write() {
            *s = Some(r);
        }
    }

    /// The status document as JSON bytes.
    pub fn status_json(&self) -> Vec<u8> {
        let base = self.base.read().ok();
        let last = self.last.read().ok();
        let rx = self.peers.read().ok().and_then(|r| r.clone());
        let snap = rx.as_ref().map(|r| r.borrow());
        let refused = self.refused.read().ok();
        let backend = self
            .backend
            .read()
            .ok()
            .and_then(|b| b.as_ref().map(|f| f()));
        let doc = Doc {
            backend: backend.as_ref(),
            base: base.as_deref(),
            leases: snap.as_ref().map(|s| &s.leases),
            last: last.as_ref().and_then(|l| l.as_ref()),
            refused: refused.as_deref(),
        };
        serde_json::to_vec(&doc).unwrap_or_else(|e| format!("{{\"error\":\"{e}\"}}").into_bytes())
    }

    /// The status document, parsed (for tests and in-process readers).
    pub fn status(&self) -> Value {
        serde_json::from_slice(&self.status_json()).unwrap_or(Value::Null)
    }
}

struct Doc<'a> {
    backend: Option<&'a Value>,
    base: Option<&'a Value>,
    leases: Option<&'a BTreeMap<SubnetKey, Lease>>,
    last: Option<&'a LastReconcile>,
    refused: Option<&'a BTreeMap<SubnetKey, Refusal>>,
}

impl Serialize for Doc<'_> {
    fn serialize<S: Serializer>(&self, ser: S) -> Result<S::Ok, S::Error> {
        let mut m = ser.serialize_map(None)?;
        if let Some(Value::Object(base)) = self.base {
            for (k, v) in base {
                m.serialize_entry(k, v)?;
            }
        }
        m.serialize_entry(
            "peers",
            &Peers {
                leases: self.leases,
                last: self.last,
                refused: self.refused,
            },
        )?;
        // Leases in the store that are not programmed because admission refused them (each peer says why).
        m.serialize_entry("refused", &self.refused.map_or(0, |r| r.len()))?;
        if let Some(b) = self.backend {
            m.serialize_entry("backend", b)?;
        }
        if let Some(l) = self.last {
            m.serialize_entry(
                "lastReconcile",
                &serde_json::json!({
                    "generation": l.generation,
                    "revision": l.revision,
                    "ok": l.ok,
                    "error": l.error,
                    "micros": l.micros,
                }),
            )?;
        }
        m.end()
    }
}

struct Peers<'a> {
    leases: Option<&'a BTreeMap<SubnetKey, Lease>>,
    last: Option<&'a LastReconcile>,
    refused: Option<&'a BTreeMap<SubnetKey, Refusal>>,
}

impl Serialize for Peers<'_> {
    fn serialize<S: Serializer>(&self, ser: S) -> Result<S::Ok, S::Error> {
        let leases = self.leases.into_iter().flatten();
        let mut seq = ser.serialize_seq(self.leases.map(|l| l.len()))?;
        for (key, l) in leases {
            // The pass's keys are the admitted ones: a lease of another backend type is refused, not programmed.
            let programmed = self
                .last
                .is_some_and(|r| r.ok && r.keys.binary_search(key).is_ok());
            let refused = self
                .refused
                .and_then(|r| r.get(key))
                .map(|r| r.reason.as_str());
            seq.serialize_element(&PeerDoc {
                l,
                programmed,
                refused,
            })?;
        }
        seq.end()
    }
}

struct PeerDoc<'a> {
    l: &'a Lease,
    programmed: bool,
    refused: Option<&'a str>,
}

impl Serialize for PeerDoc<'_> {
    fn serialize<S: Serializer>(&self, ser: S) -> Result<S::Ok, S::Error> {
        let l = self.l;
        let mut m = ser.serialize_map(Some(8))?;
        m.serialize_entry(
            "subnet",
            &(l.subnet != NO_IPV4_SUBNET).then(|| l.subnet.to_string()),
        )?;
        m.serialize_entry("ipv6Subnet", &l.ipv6_subnet.map(|s| s.to_string()))?;
        m.serialize_entry("publicIP", &l.attrs.public_ip.to_string())?;
        m.serialize_entry("publicIPv6", &l.attrs.public_ipv6.map(|a| a.to_string()))?;
        m.serialize_entry("backendType", &l.attrs.backend_type)?;
        m.serialize_entry("backendData", &l.attrs.backend_data)?;
        m.serialize_entry("programmed", &self.programmed)?;
        m.serialize_entry("refused", &self.refused)?;
        m.end()
    }
}

async fn healthz() -> &'static str {
    "flanneld is running"
}

async fn readyz(AxState(st): AxState<Arc<State>>) -> impl IntoResponse {
    if st.is_ready() {
        return (StatusCode::OK, "flanneld is ready".to_string());
    }
    let waiting = st.waiting.read().ok().and_then(|w| w.clone());
    let body = match waiting {
        Some(w) => format!("flanneld is not ready yet: {w}"),
        None => "flanneld is not ready yet".to_string(),
    };
    (StatusCode::SERVICE_UNAVAILABLE, body)
}

/// Whether a client address is this host's loopback (IPv4, IPv6, or IPv4-mapped IPv6 on a dual-stack socket).
fn is_loopback(ip: std::net::IpAddr) -> bool {
    match ip {
        std::net::IpAddr::V4(v4) => v4.is_loopback(),
        std::net::IpAddr::V6(v6) => {
            v6.is_loopback() || v6.to_ipv4_mapped().is_some_and(|v4| v4.is_loopback())
        }
    }
}

async fn status(
    AxState(st): AxState<Arc<State>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
) -> axum::response::Response {
    // /status lists every node's lease and public IP: by default only for this host (flannelctl status), while
    // the health endpoints answer the kubelet and load balancers from anywhere.
    if !st.status_remote.load(Ordering::Relaxed) && !is_loopback(peer.ip()) {
        return (
            StatusCode::FORBIDDEN,
            "flanneld: /status is served to loopback clients only (start flanneld with --status-remote to serve \
             it to other hosts)\n",
        )
            .into_response();
    }
    (
        [(header::CONTENT_TYPE, "application/json")],
        st.status_json(),
    )
        .into_response()
}
/// The router with every endpoint.
pub fn router(state: Arc<State>) -> Router {
    Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/status", get(status))
        .with_state(state)
}

/// Binds and serves until the process ends. Binding errors are returned (they name the address).
pub async fn serve(addr: SocketAddr, state: Arc<State>) -> std::io::Result<()> {
    let listener = tokio::net::TcpListener::bind(addr).await.map_err(|e| {
        std::io::Error::new(e.kind(), format!("healthz: cannot listen on {addr}: {e}"))
    })?;
    if state.status_remote.load(Ordering::Relaxed) {
        tracing::info!(%addr, "serving /healthz, /readyz and /status");
    } else {
        tracing::info!(%addr, "serving /healthz and /readyz, and /status to loopback clients");
    }
    tokio::spawn(async move {
        let app = router(state).into_make_service_with_connect_info::<SocketAddr>();
        if let Err(e) = axum::serve(listener, app).await {
            tracing::error!(error = %e, "health server stopped");
        }
    });
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;
    use subnet::{Expiration, LeaseAttrs};

    fn lease(k: &str, ip: u8, kind: &str) -> Lease {
        Lease::new(
            k.parse().unwrap(),
            LeaseAttrs {
                public_ip: std::net::Ipv4Addr::new(192, 0, 2, ip),
                backend_type: kind.into(),
                backend_data: Some(json!({"VNI": 1, "VtepMAC": "0e:00:00:00:00:02"}).into()),
                ..Default::default()
            },
            Expiration::Unknown,
            1,
        )
    }

    #[test]
    fn status_is_rendered_from_the_live_snapshot() {
        let st = State::default();
        st.set_base(
            json!({"node": {"subnet": "10.244.1.0/24"}, "config": {"Backend": {"Type": "vxlan"}}}),
        );
        let v = st.status();
        assert_eq!(v["node"]["subnet"], "10.244.1.0/24");
        assert_eq!(v["peers"], json!([]));
        assert!(v.get("lastReconcile").is_none());

        let mut snap = PeerSnapshot::default();
        for (k, ip, kind) in [
            ("10.244.2.0-24", 2, "vxlan"),
            ("10.244.3.0-24", 3, "host-gw"),
            ("10.244.4.0-24", 4, "vxlan"),
        ] {
            let l = lease(k, ip, kind);
            snap.leases.insert(l.key(), l);
        }
        let (tx, rx) = watch::channel(snap);
        st.set_peers(rx);
        // Before any pass nothing is programmed.
        let v = st.status();
        assert_eq!(v["peers"].as_array().unwrap().len(), 3);
        assert!(v["peers"]
            .as_array()
            .unwrap()
            .iter()
            .all(|p| p["programmed"] == false));

        // The pass admitted 10.244.2 only (admission refused 10.244.3, of another backend type; 10.244.4 joined
        // after the pass).
        st.set_last_reconcile(LastReconcile {
            generation: 7,
            revision: 9,
            ok: true,
            error: None,
            micros: 120,
            keys: vec!["10.244.2.0-24".parse().unwrap()],
        });
        let v = st.status();
        let p = v["peers"].as_array().unwrap();
        assert_eq!(p[0]["subnet"], "10.244.2.0/24");
        assert_eq!(p[0]["publicIP"], "192.0.2.2");
        assert_eq!(p[0]["backendData"]["VtepMAC"], "0e:00:00:00:00:02");
        assert_eq!(
            p.iter()
                .map(|p| p["programmed"].as_bool().unwrap())
                .collect::<Vec<_>>(),
            vec![true, false, false]
        );
        assert_eq!(
            v["lastReconcile"],
            json!({"generation": 7, "revision": 9, "ok": true, "error": null, "micros": 120})
        );

        // A peer that leaves disappears from the document at once.
        tx.send_modify(|s| {
            s.leases.remove(&"10.244.2.0-24".parse().unwrap());
        });
        assert_eq!(st.status()["peers"].as_array().unwrap().len(), 2);

        // A failed pass marks nothing programmed and reports its error.
        st.set_last_reconcile(LastReconcile {
            ok: false,
            error: Some("boom".into()),
            keys: vec!["10.244.4.0-24".parse().unwrap()],
            ..Default::default()
        });
        let v = st.status();
        assert!(v["peers"]
            .as_array()
            .unwrap()
            .iter()
            .all(|p| p["programmed"] == false));
        assert_eq!(v["lastReconcile"]["error"], "boom");
    }
}
