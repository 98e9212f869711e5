//! `/healthz`, `/readyz` and `/status` on `--healthz-ip:--healthz-port`.
//!
//! `/readyz` answers 503 until subnet.env is written and the traffic rules are in place, so a kubelet readiness
//! probe (and the CNI plugin's "is flanneld running?" error) line up. `/status` is our addition: the daemon's view
//! of its lease and peers as JSON, read by `flannelctl status`.

use axum::extract::State as AxState;
use axum::http::StatusCode;
use axum::response::IntoResponse;
use axum::routing::get;
use axum::{Json, Router};
use serde_json::Value;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, RwLock};

/// Shared daemon state the endpoints read.
#[derive(Default)]
pub struct State {
    ready: AtomicBool,
    status: RwLock<Value>,
}

impl State {
    /// Marks the daemon ready (subnet.env written, rules in place).
    pub fn set_ready(&self, ready: bool) {
        self.ready.store(ready, Ordering::SeqCst);
    }

    /// Whether the daemon is ready.
    pub fn is_ready(&self) -> bool {
        self.ready.load(Ordering::SeqCst)
    }

    /// Replaces the status document.
    pub fn set_status(&self, v: Value) {
        if let Ok(mut s) = self.status.write() {
            *s = v;
        }
    }

    /// Edits the status document in place.
    pub fn update_status(&self, f: impl FnOnce(&mut Value)) {
        if let Ok(mut s) = self.status.write() {
            f(&mut s);
        }
    }

    /// A copy of the status document.
    pub fn status(&self) -> Value {
        self.status.read().map(|s| s.clone()).unwrap_or(Value::Null)
    }
}

async fn healthz() -> &'static str {
    "flanneld is running"
}

async fn readyz(AxState(st): AxState<Arc<State>>) -> impl IntoResponse {
    if st.is_ready() {
        (StatusCode::OK, "flanneld is ready")
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "flanneld is not ready yet")
    }
}

async fn status(AxState(st): AxState<Arc<State>>) -> Json<Value> {
    Json(st.status())
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
    tracing::info!(%addr, "serving /healthz, /readyz and /status");
    tokio::spawn(async move {
        if let Err(e) = axum::serve(listener, router(state)).await {
            tracing::error!(error = %e, "health server stopped");
        }
    });
    Ok(())
}
