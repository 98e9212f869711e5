//! An in-process Kubernetes API server for what flannel uses: Nodes (get, list with paging, watch, status patch)
//! and Pods (get). No real kube-apiserver can run on the machines the tests run on, so this speaks the real API's
//! paths and JSON over HTTPS with a bearer token, fed with Node objects as a real apiserver returns them:
//!
//! - `GET /api/v1/nodes?limit=&continue=&fieldSelector=metadata.name=X` — `NodeList` pages with a
//!   `resourceVersion` and `continue` token; a continue token older than the compaction point is `410 Gone`;
//! - `GET /api/v1/nodes?watch=1&resourceVersion=&allowWatchBookmarks=&timeoutSeconds=` — a chunked stream of
//!   `{"type":..,"object":..}` lines: `ADDED`, `MODIFIED`, `DELETED`, `BOOKMARK`, and an `ERROR` event with a
//!   `410` `Status` when the resource version is older than the compaction point;
//! - `GET /api/v1/nodes/NAME`, `PATCH /api/v1/nodes/NAME/status` (strategic-merge or merge patch: maps merged,
//!   `null` deletes, `status.conditions` merged by `type`), `GET /api/v1/namespaces/NS/pods/NAME`;
//! - `401` without the token, `403` with the apiserver's message for a verb/resource the test forbids.
//!
//! Tests control it directly: add, change and delete Nodes, compact the history (watchers get `410`), take the
//! server down and bring it back on the same address, read back every patch it received.

use std::collections::{BTreeMap, VecDeque};
use std::net::{IpAddr, SocketAddr, TcpListener as StdListener};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::body::Body;
use axum::extract::{Path as UrlPath, Query, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use base64::Engine;
use serde_json::{json, Map, Value};
use tokio::sync::{watch, Notify};

/// Events kept for watches; older resource versions are compacted away (their watches get 410).
const HISTORY: usize = 20_000;

/// A patch the server received.
#[derive(Debug, Clone, PartialEq)]
pub struct RecordedPatch {
    /// The request path, e.g. `/api/v1/nodes/n1/status`.
    pub path: String,
    /// The `Content-Type` header.
    pub content_type: String,
    /// The body, parsed.
    pub body: Value,
}

#[derive(Default)]
struct Inner {
    rv: u64,
    nodes: BTreeMap<String, Value>,
    pods: BTreeMap<(String, String), Value>,
    history: VecDeque<(u64, &'static str, Value)>,
    /// Watches and continue tokens from before this resource version are gone (410).
    compacted: u64,
    patches: Vec<RecordedPatch>,
    /// (verb, resource) pairs answered 403.
    forbidden: Vec<(String, String)>,
    /// Bumped to end every open watch (they reconnect).
    epoch: u64,
    /// Requests served, as `METHOD path?query` (for tests that count lists or watches).
    requests: Vec<String>,
    /// The bearer token clients must send (changed by [`FakeApiServer::rotate_token`]).
    token: String,
}

struct Shared {
    inner: Mutex<Inner>,
    notify: Notify,
    bookmark_every: Duration,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, Inner> {
        // A test that panicked while holding the lock must not wedge the server for the others.
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// RFC 3339 UTC time of `t` (what the API writes in `creationTimestamp`).
pub fn rfc3339(t: SystemTime) -> String {
    let secs = t
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0) as i64;
    let (days, rem) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = if m <= 2 { y + 1 } else { y };
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        (rem % 3600) / 60,
        rem % 60
    )
}

fn status(code: u16, reason: &str, message: &str) -> Value {
    json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
           "message": message, "reason": reason, "code": code})
}

fn status_response(code: u16, reason: &str, message: &str) -> Response {
    let sc = StatusCode::from_u16(code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    (
        sc,
        [(header::CONTENT_TYPE, "application/json")],
        status(code, reason, message).to_string(),
    )
        .into_response()
}

fn json_response(v: &Value) -> Response {
    (
        StatusCode::OK,
        [(header::CONTENT_TYPE, "application/json")],
        v.to_string(),
    )
        .into_response()
}

/// Checks the bearer token and the test's forbidden list; `Err` is the response to send.
fn authorize(
    s: &Shared,
    headers: &HeaderMap,
    verb: &str,
    resource: &str,
    name: &str,
) -> Result<(), Box<Response>> {
    let want = format!("Bearer {}", s.lock().token);
    if headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        != Some(want.as_str())
    {
        return Err(Box::new(status_response(
            401,
            "Unauthorized",
            "Unauthorized",
        )));
    }
    let forbidden = s
        .lock()
        .forbidden
        .iter()
        .any(|(v, r)| v == verb && r == resource);
    if forbidden {
        let what = if name.is_empty() {
            resource.split('/').next().unwrap_or(resource).to_string()
        } else {
            format!(
                "{} \"{name}\"",
                resource.split('/').next().unwrap_or(resource)
            )
        };
        return Err(Box::new(status_response(
            403,
            "Forbidden",
            &format!(
                "{what} is forbidden: User \"system:serviceaccount:kube-flannel:flannel\" cannot {verb} resource \
                 \"{resource}\" in API group \"\" at the cluster scope"
            ),
        )));
    }
    Ok(())
}

fn name_filter(q: &BTreeMap<String, String>) -> Option<String> {
    q.get("fieldSelector")
        .and_then(|f| f.strip_prefix("metadata.name="))
        .map(str::to_string)
}

async fn nodes(
    State(s): State<Arc<Shared>>,
    headers: HeaderMap,
    Query(q): Query<BTreeMap<String, String>>,
) -> Response {
    let watch = matches!(q.get("watch").map(String::as_str), Some("1" | "true"));
    let verb = if watch { "watch" } else { "list" };
    if let Err(r) = authorize(&s, &headers, verb, "nodes", "") {
        return *r;
    }
    {
        let mut i = s.lock();
        let line = format!(
            "GET /api/v1/nodes?{}",
            q.iter()
                .map(|(k, v)| format!("{k}={v}"))
                .collect::<Vec<_>>()
                .join("&")
        );
        i.requests.push(line);
    }
    if watch {
        watch_nodes(s, q).await
    } else {
        list_nodes(&s, &q)
    }
}

fn list_nodes(s: &Shared, q: &BTreeMap<String, String>) -> Response {
    let i = s.lock();
    let filter = name_filter(q);
    let limit = q
        .get("limit")
        .and_then(|l| l.parse::<usize>().ok())
        .filter(|l| *l > 0);
    // continue = "<list resourceVersion>:<offset>"
    let (list_rv, offset) = match q.get("continue").filter(|c| !c.is_empty()) {
        None => (i.rv, 0),
        Some(c) => {
            let parsed = c
                .split_once(':')
                .and_then(|(a, b)| Some((a.parse::<u64>().ok()?, b.parse::<usize>().ok()?)));
            match parsed {
                Some((rv, _)) if rv < i.compacted => {
                    return status_response(
                        410,
                        "Expired",
                        "The provided continue parameter is too old to display a consistent list result. You \
                         can start a new list without the continue parameter.",
                    )
                }
                Some(p) => p,
                None => return status_response(400, "BadRequest", "invalid continue token"),
            }
        }
    };
    let all: Vec<&Value> = i
        .nodes
        .iter()
        .filter(|(n, _)| filter.as_ref().is_none_or(|f| f == *n))
        .map(|(_, v)| v)
        .collect();
    let end = limit.map_or(all.len(), |l| (offset + l).min(all.len()));
    let items: Vec<Value> = all
        .get(offset..end)
        .unwrap_or_default()
        .iter()
        .map(|v| (*v).clone())
        .collect();
    let mut meta = Map::new();
    meta.insert("resourceVersion".into(), json!(list_rv.to_string()));
    if end < all.len() {
        meta.insert("continue".into(), json!(format!("{list_rv}:{end}")));
        meta.insert("remainingItemCount".into(), json!(all.len() - end));
    }
    json_response(
        &json!({"kind": "NodeList", "apiVersion": "v1", "metadata": meta, "items": items}),
    )
}

async fn watch_nodes(s: Arc<Shared>, q: BTreeMap<String, String>) -> Response {
    let filter = name_filter(&q);
    let bookmarks = matches!(
        q.get("allowWatchBookmarks").map(String::as_str),
        Some("true" | "1")
    );
    let timeout = q
        .get("timeoutSeconds")
        .and_then(|t| t.parse::<u64>().ok())
        .unwrap_or(290);
    let from = q
        .get("resourceVersion")
        .and_then(|r| r.parse::<u64>().ok())
        .unwrap_or(0);
    let (start_epoch, too_old) = {
        let i = s.lock();
        (i.epoch, from < i.compacted)
    };
    let deadline = tokio::time::Instant::now() + Duration::from_secs(timeout);
    let line = |t: &str, o: &Value| {
        let mut b = serde_json::to_vec(&json!({"type": t, "object": o})).unwrap_or_default();
        b.push(b'\n');
        bytes::Bytes::from(b)
    };
    if too_old {
        let ev = line(
            "ERROR",
            &status(
                410,
                "Expired",
                &format!("too old resource version: {from} ({})", s.lock().compacted),
            ),
        );
        return Response::builder()
            .header(header::CONTENT_TYPE, "application/json")
            .body(Body::from(ev))
            .unwrap_or_else(|_| status_response(500, "InternalError", "response"));
    }
    let stream = futures::stream::unfold(
        (s, from, tokio::time::Instant::now()),
        move |(s, mut cursor, mut last_bm)| {
            let filter = filter.clone();
            async move {
                loop {
                    let s2 = s.clone();
                    let notified = s2.notify.notified();
                    let (out, epoch_now, rv_now) = {
                        let i = s.lock();
                        let mut out = Vec::new();
                        let from = cursor;
                        for (rv, t, o) in i.history.iter().filter(|(rv, _, _)| *rv > from) {
                            cursor = cursor.max(*rv);
                            let name = o["metadata"]["name"].as_str().unwrap_or_default();
                            if filter.as_ref().is_none_or(|f| f == name) {
                                out.push(line(t, o));
                            }
                        }
                        (out, i.epoch, i.rv)
                    };
                    if epoch_now != start_epoch || tokio::time::Instant::now() >= deadline {
                        return None;
                    }
                    if !out.is_empty() {
                        let mut b = Vec::new();
                        for l in out {
                            b.extend_from_slice(&l);
                        }
                        return Some((
                            Ok::<_, std::io::Error>(bytes::Bytes::from(b)),
                            (s, cursor, last_bm),
                        ));
                    }
                    if bookmarks && last_bm.elapsed() >= s.bookmark_every {
                        last_bm = tokio::time::Instant::now();
                        cursor = cursor.max(rv_now);
                        let bm = line(
                            "BOOKMARK",
                            &json!({"kind": "Node", "apiVersion": "v1",
                                    "metadata": {"resourceVersion": cursor.to_string(),
                                                 "annotations": {"k8s.io/initial-events-end": "true"}}}),
                        );
                        return Some((Ok(bm), (s, cursor, last_bm)));
                    }
                    let wake = (last_bm + s.bookmark_every).min(deadline);
                    tokio::select! {
                        _ = notified => {}
                        _ = tokio::time::sleep_until(wake) => {}
                    }
                }
            }
        },
    );
    Response::builder()
        .header(header::CONTENT_TYPE, "application/json")
        .body(Body::from_stream(stream))
        .unwrap_or_else(|_| status_response(500, "InternalError", "response"))
}

async fn get_node(
    State(s): State<Arc<Shared>>,
    headers: HeaderMap,
    UrlPath(name): UrlPath<String>,
) -> Response {
    if let Err(r) = authorize(&s, &headers, "get", "nodes", &name) {
        return *r;
    }
    let i = s.lock();
    match i.nodes.get(&name) {
        Some(n) => json_response(n),
        None => status_response(404, "NotFound", &format!("nodes \"{name}\" not found")),
    }
}

/// Merges `patch` into `target` as a strategic-merge patch does for the fields flannel patches: objects merge
/// recursively, `null` deletes, `status.conditions` merge by `type`, other lists replace.
fn merge(target: &mut Value, patch: &Value, path: &str) {
    match (target, patch) {
        (Value::Object(t), Value::Object(p)) => {
            for (k, v) in p {
                if v.is_null() {
                    t.remove(k);
                    continue;
                }
                let sub = format!("{path}.{k}");
                if sub == ".status.conditions" {
                    let cur = t.entry(k.clone()).or_insert_with(|| json!([]));
                    if let (Value::Array(cur), Value::Array(new)) = (cur, v) {
                        for c in new {
                            match cur.iter_mut().find(|x| x["type"] == c["type"]) {
                                Some(x) => merge(x, c, &sub),
                                None => cur.push(c.clone()),
                            }
                        }
                    }
                    continue;
                }
                match t.get_mut(k) {
                    Some(existing) if existing.is_object() && v.is_object() => {
                        merge(existing, v, &sub)
                    }
                    _ => {
                        t.insert(k.clone(), v.clone());
                    }
                }
            }
        }
        (t, p) => *t = p.clone(),
    }
}

async fn patch_node_status(
    State(s): State<Arc<Shared>>,
    headers: HeaderMap,
    UrlPath(name): UrlPath<String>,
    body: bytes::Bytes,
) -> Response {
    if let Err(r) = authorize(&s, &headers, "patch", "nodes/status", &name) {
        return *r;
    }
    let ct = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_string();
    if ct != "application/strategic-merge-patch+json" && ct != "application/merge-patch+json" {
        return status_response(
            415,
            "UnsupportedMediaType",
            &format!("the body of the request was in an unknown format - accepted media types include: application/json-patch+json, application/merge-patch+json, application/apply-patch+yaml, application/strategic-merge-patch+json (got {ct:?})"),
        );
    }
    let Ok(patch) = serde_json::from_slice::<Value>(&body) else {
        return status_response(400, "BadRequest", "the patch is not JSON");
    };
    let mut i = s.lock();
    i.patches.push(RecordedPatch {
        path: format!("/api/v1/nodes/{name}/status"),
        content_type: ct,
        body: patch.clone(),
    });
    let rv = i.rv + 1;
    let Some(node) = i.nodes.get_mut(&name) else {
        return status_response(404, "NotFound", &format!("nodes \"{name}\" not found"));
    };
    merge(node, &patch, "");
    node["metadata"]["resourceVersion"] = json!(rv.to_string());
    let out = node.clone();
    i.rv = rv;
    push_event(&mut i, rv, "MODIFIED", out.clone());
    drop(i);
    s.notify.notify_waiters();
    json_response(&out)
}

async fn get_pod(
    State(s): State<Arc<Shared>>,
    headers: HeaderMap,
    UrlPath((ns, name)): UrlPath<(String, String)>,
) -> Response {
    if let Err(r) = authorize(&s, &headers, "get", "pods", &name) {
        return *r;
    }
    let i = s.lock();
    match i.pods.get(&(ns.clone(), name.clone())) {
        Some(p) => json_response(p),
        None => status_response(404, "NotFound", &format!("pods \"{name}\" not found")),
    }
}

fn push_event(i: &mut Inner, rv: u64, t: &'static str, o: Value) {
    i.history.push_back((rv, t, o));
    while i.history.len() > HISTORY {
        if let Some((old, _, _)) = i.history.pop_front() {
            i.compacted = i.compacted.max(old + 1);
        }
    }
}

fn router(s: Arc<Shared>) -> Router {
    Router::new()
        .route("/api/v1/nodes", get(nodes))
        .route("/api/v1/nodes/{name}", get(get_node))
        .route(
            "/api/v1/nodes/{name}/status",
            get(get_node).patch(patch_node_status),
        )
        .route("/api/v1/namespaces/{ns}/pods/{name}", get(get_pod))
        .fallback(|| async {
            status_response(
                404,
                "NotFound",
                "the server could not find the requested resource",
            )
        })
        .with_state(s)
}

/// TLS material: a CA and a server certificate for the listen address.
struct Tls {
    ca_pem: String,
    config: Arc<tokio_rustls::rustls::ServerConfig>,
}

fn make_tls(ip: IpAddr) -> Result<Tls, String> {
    use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, KeyPair, SanType};
    let e = |e: rcgen::Error| e.to_string();
    let ca_key = KeyPair::generate().map_err(e)?;
    let mut ca = CertificateParams::new(Vec::<String>::new()).map_err(e)?;
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca.distinguished_name
        .push(DnType::CommonName, "apiserver-fake CA");
    let issuer = rcgen::CertifiedIssuer::self_signed(ca, ca_key).map_err(e)?;
    let key = KeyPair::generate().map_err(e)?;
    let mut p = CertificateParams::new(vec![
        "localhost".to_string(),
        "kubernetes.default.svc".to_string(),
    ])
    .map_err(e)?;
    p.subject_alt_names.push(SanType::IpAddress(ip));
    p.distinguished_name
        .push(DnType::CommonName, "kube-apiserver");
    let cert = p.signed_by(&key, &issuer).map_err(e)?;
    let chain = vec![cert.der().clone()];
    let der = tokio_rustls::rustls::pki_types::PrivateKeyDer::Pkcs8(key.serialize_der().into());
    let provider = Arc::new(tokio_rustls::rustls::crypto::ring::default_provider());
    let mut config = tokio_rustls::rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .with_no_client_auth()
        .with_single_cert(chain, der)
        .map_err(|e| e.to_string())?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Tls {
        ca_pem: issuer.pem(),
        config: Arc::new(config),
    })
}

/// A running fake API server; stops on drop.
pub struct FakeApiServer {
    shared: Arc<Shared>,
    addr: SocketAddr,
    ca_pem: String,
    up: watch::Sender<bool>,
    stop: watch::Sender<bool>,
    thread: Option<std::thread::JoinHandle<()>>,
    tid: i32,
}

/// Where and how to serve.
pub struct Options {
    /// Address to listen on (port 0: any free port).
    pub addr: SocketAddr,
    /// A network namespace (`/run/netns/x`) to listen in; `None` for the caller's.
    pub netns: Option<PathBuf>,
    /// The bearer token clients must send.
    pub token: String,
    /// How often an idle watch gets a bookmark.
    pub bookmark_every: Duration,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            addr: SocketAddr::from(([127, 0, 0, 1], 0)),
            netns: None,
            token: "fake-token".into(),
            bookmark_every: Duration::from_secs(5),
        }
    }
}

fn bind(addr: SocketAddr) -> std::io::Result<tokio::net::TcpListener> {
    let l = StdListener::bind(addr)?;
    l.set_nonblocking(true)?;
    tokio::net::TcpListener::from_std(l)
}

async fn serve(
    shared: Arc<Shared>,
    tls: Arc<tokio_rustls::rustls::ServerConfig>,
    mut listener: Option<tokio::net::TcpListener>,
    addr: SocketAddr,
    mut up: watch::Receiver<bool>,
    mut stop: watch::Receiver<bool>,
) {
    let acceptor = tokio_rustls::TlsAcceptor::from(tls);
    let app = router(shared);
    let mut conns = tokio::task::JoinSet::new();
    loop {
        let accept = async {
            match listener.as_ref() {
                Some(l) => l.accept().await.ok(),
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            _ = stop.changed() => return,
            changed = up.changed() => {
                if changed.is_err() {
                    return;
                }
                if *up.borrow_and_update() {
                    if listener.is_none() {
                        // Same address as before, so clients reconnect to what they knew.
                        for _ in 0..50 {
                            match bind(addr) {
                                Ok(l) => { listener = Some(l); break; }
                                Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
                            }
                        }
                    }
                } else {
                    // Down: no listener (connections refused) and every open connection cut.
                    listener = None;
                    conns.abort_all();
                }
            }
            Some((tcp, _)) = accept => {
                let (acceptor, app) = (acceptor.clone(), app.clone());
                conns.spawn(async move {
                    let Ok(tls) = acceptor.accept(tcp).await else { return };
                    let svc = hyper_util::service::TowerToHyperService::new(app);
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(hyper_util::rt::TokioIo::new(tls), svc)
                        .await;
                });
            }
            Some(_) = conns.join_next(), if !conns.is_empty() => {}
        }
    }
}

impl FakeApiServer {
    /// Starts serving (in `opts.netns` when given) on a thread of its own.
    pub fn start(opts: Options) -> Result<Self, String> {
        let shared = Arc::new(Shared {
            inner: Mutex::new(Inner {
                rv: 1,
                token: opts.token,
                ..Default::default()
            }),
            notify: Notify::new(),
            bookmark_every: opts.bookmark_every,
        });
        let tls = make_tls(opts.addr.ip())?;
        let (up_tx, up_rx) = watch::channel(true);
        let (stop_tx, stop_rx) = watch::channel(false);
        let (ready_tx, ready_rx) = std::sync::mpsc::channel::<Result<(SocketAddr, i32), String>>();
        let (sh, cfg, netns, addr) = (shared.clone(), tls.config.clone(), opts.netns, opts.addr);
        let thread = std::thread::spawn(move || {
            if let Some(ns) = netns {
                let joined = std::fs::File::open(&ns)
                    .map_err(|e| e.to_string())
                    .and_then(|f| {
                        nix::sched::setns(f, nix::sched::CloneFlags::CLONE_NEWNET)
                            .map_err(|e| e.to_string())
                    });
                if let Err(e) = joined {
                    let _ = ready_tx.send(Err(format!("enter {}: {e}", ns.display())));
                    return;
                }
            }
            let rt = match tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            {
                Ok(rt) => rt,
                Err(e) => {
                    let _ = ready_tx.send(Err(e.to_string()));
                    return;
                }
            };
            rt.block_on(async move {
                let l = match bind(addr) {
                    Ok(l) => l,
                    Err(e) => {
                        let _ = ready_tx.send(Err(format!("bind {addr}: {e}")));
                        return;
                    }
                };
                let bound = l.local_addr().unwrap_or(addr);
                let _ = ready_tx.send(Ok((bound, nix::unistd::gettid().as_raw())));
                serve(sh, cfg, Some(l), bound, up_rx, stop_rx).await;
            });
        });
        let (addr, tid) = ready_rx
            .recv()
            .map_err(|_| "the server thread ended before it listened".to_string())??;
        Ok(FakeApiServer {
            shared,
            addr,
            ca_pem: tls.ca_pem,
            up: up_tx,
            stop: stop_tx,
            thread: Some(thread),
            tid,
        })
    }

    /// The kernel thread id of the thread that serves every request (`/proc/self/task/<tid>/stat` has its CPU
    /// time: what serving costs, apart from the test's own threads).
    pub fn server_thread_id(&self) -> i32 {
        self.tid
    }

    /// The address it listens on.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `https://ip:port`.
    pub fn url(&self) -> String {
        format!("https://{}", self.addr)
    }

    /// The CA that signed the server certificate (PEM).
    pub fn ca_pem(&self) -> &str {
        &self.ca_pem
    }

    /// The bearer token clients must send.
    pub fn token(&self) -> String {
        self.shared.lock().token.clone()
    }

    /// A rotated service-account token: from now on only `new` is accepted (the old one has expired), and every
    /// open watch ends, as when the apiserver closes a connection whose credentials are no longer valid.
    pub fn rotate_token(&self, new: &str) {
        let mut g = self.shared.lock();
        g.token = new.to_string();
        g.epoch += 1;
        drop(g);
        self.shared.notify.notify_waiters();
    }

    /// Writes a kubeconfig for this server (CA inline, the token inline, or read from `token_file`).
    pub fn write_kubeconfig(&self, path: &Path, token_file: Option<&Path>) -> std::io::Result<()> {
        let ca = base64::engine::general_purpose::STANDARD.encode(self.ca_pem.as_bytes());
        let user = match token_file {
            Some(f) => format!("    tokenFile: {}\n", f.display()),
            None => format!("    token: {}\n", self.token()),
        };
        std::fs::write(
            path,
            format!(
                "apiVersion: v1\nkind: Config\nclusters:\n- name: fake\n  cluster:\n    server: {}\n    \
                 certificate-authority-data: {ca}\nusers:\n- name: flannel\n  user:\n{user}contexts:\n- name: fake\n  \
                 context:\n    cluster: fake\n    user: flannel\ncurrent-context: fake\n",
                self.url()
            ),
        )
    }

    fn change(&self, f: impl FnOnce(&mut Inner) -> Option<(&'static str, Value)>) {
        let mut i = self.shared.lock();
        if let Some((t, mut o)) = f(&mut i) {
            let rv = i.rv + 1;
            i.rv = rv;
            o["metadata"]["resourceVersion"] = json!(rv.to_string());
            if t != "DELETED" {
                if let Some(name) = o["metadata"]["name"].as_str().map(str::to_string) {
                    i.nodes.insert(name, o.clone());
                }
            }
            push_event(&mut i, rv, t, o);
        }
        drop(i);
        self.shared.notify.notify_waiters();
    }

    /// Adds (or replaces) a Node shaped as a kubelet-registered one: `pod_cidrs` go to `spec.podCIDR(s)`,
    /// `annotations` are added to the usual kubelet ones.
    pub fn add_node(&self, name: &str, pod_cidrs: &[&str], annotations: Value, internal_ip: &str) {
        let mut ann = json!({"node.alpha.kubernetes.io/ttl": "0",
                             "volumes.kubernetes.io/controller-managed-attach-detach": "true"});
        if let (Some(a), Some(extra)) = (ann.as_object_mut(), annotations.as_object()) {
            for (k, v) in extra {
                a.insert(k.clone(), v.clone());
            }
        }
        let mut spec = json!({});
        if let Some(first) = pod_cidrs.first() {
            spec = json!({"podCIDR": first, "podCIDRs": pod_cidrs});
        }
        let node = json!({
            "kind": "Node", "apiVersion": "v1",
            "metadata": {
                "name": name, "uid": format!("uid-{name}"),
                "creationTimestamp": rfc3339(SystemTime::now()),
                "labels": {"kubernetes.io/hostname": name, "kubernetes.io/os": "linux",
                           "beta.kubernetes.io/arch": "amd64"},
                "annotations": ann,
                "managedFields": [{"manager": "kubelet", "operation": "Update", "apiVersion": "v1",
                                   "time": rfc3339(SystemTime::now()), "fieldsType": "FieldsV1",
                                   "fieldsV1": {"f:metadata": {"f:labels": {}}}}],
            },
            "spec": spec,
            "status": {
                "capacity": {"cpu": "2", "memory": "24Gi", "pods": "110"},
                "conditions": [{"type": "Ready", "status": "True", "reason": "KubeletReady",
                                "message": "kubelet is posting ready status",
                                "lastHeartbeatTime": rfc3339(SystemTime::now()),
                                "lastTransitionTime": rfc3339(SystemTime::now())}],
                "addresses": [{"type": "InternalIP", "address": internal_ip}, {"type": "Hostname", "address": name}],
                "nodeInfo": {"kubeletVersion": "v1.33.1", "osImage": "Debian GNU/Linux 12 (bookworm)",
                             "containerRuntimeVersion": "containerd://1.7.24", "architecture": "amd64",
                             "operatingSystem": "linux"},
            },
        });
        let t = if self.node(name).is_some() {
            "MODIFIED"
        } else {
            "ADDED"
        };
        self.change(|_| Some((t, node)));
    }

    /// Changes a Node with `f` (a MODIFIED event); no-op if absent.
    pub fn update_node(&self, name: &str, f: impl FnOnce(&mut Value)) {
        self.change(|i| {
            let mut n = i.nodes.get(name)?.clone();
            f(&mut n);
            Some(("MODIFIED", n))
        });
    }

    /// Sets (or, with `None`, removes) one annotation of a Node.
    pub fn annotate(&self, name: &str, key: &str, value: Option<&str>) {
        self.update_node(name, |n| {
            let a = &mut n["metadata"]["annotations"];
            if !a.is_object() {
                *a = json!({});
            }
            match value {
                Some(v) => a[key] = json!(v),
                None => {
                    if let Some(m) = a.as_object_mut() {
                        m.remove(key);
                    }
                }
            }
        });
    }

    /// Sets a Node's podCIDRs.
    pub fn set_pod_cidrs(&self, name: &str, cidrs: &[&str]) {
        self.update_node(name, |n| {
            n["spec"]["podCIDR"] = json!(cidrs.first());
            n["spec"]["podCIDRs"] = json!(cidrs);
        });
    }

    /// Deletes a Node (a DELETED event).
    pub fn delete_node(&self, name: &str) {
        self.change(|i| i.nodes.remove(name).map(|n| ("DELETED", n)));
    }

    /// A Node as the API would return it.
    pub fn node(&self, name: &str) -> Option<Value> {
        self.shared.lock().nodes.get(name).cloned()
    }

    /// Adds a Pod `ns/name` scheduled on `node_name`.
    pub fn add_pod(&self, ns: &str, name: &str, node_name: &str) {
        let pod = json!({"kind": "Pod", "apiVersion": "v1",
                         "metadata": {"name": name, "namespace": ns, "uid": format!("uid-{ns}-{name}")},
                         "spec": {"nodeName": node_name, "containers": [{"name": "kube-flannel", "image": "x"}]}});
        self.shared
            .lock()
            .pods
            .insert((ns.into(), name.into()), pod);
    }

    /// Every patch received so far.
    pub fn patches(&self) -> Vec<RecordedPatch> {
        self.shared.lock().patches.clone()
    }

    /// Every Node list or watch request so far (`GET /api/v1/nodes?...`).
    pub fn requests(&self) -> Vec<String> {
        self.shared.lock().requests.clone()
    }

    /// Drops the history up to now and ends every open watch: watchers resuming from before get `410 Gone` and
    /// must list again.
    pub fn compact(&self) {
        let mut i = self.shared.lock();
        i.compacted = i.rv + 1;
        i.history.clear();
        i.epoch += 1;
        drop(i);
        self.shared.notify.notify_waiters();
    }

    /// Answers `verb` on `resource` (`patch` `nodes/status`, `list` `nodes`, ...) with 403 from now on.
    pub fn forbid(&self, verb: &str, resource: &str) {
        self.shared
            .lock()
            .forbidden
            .push((verb.into(), resource.into()));
    }

    /// Takes the server down (connections refused, open ones cut) or brings it back on the same address.
    pub fn set_up(&self, up: bool) {
        let _ = self.up.send(up);
    }
}

impl Drop for FakeApiServer {
    fn drop(&mut self) {
        let _ = self.stop.send(true);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc3339_known_dates() {
        assert_eq!(rfc3339(UNIX_EPOCH), "1970-01-01T00:00:00Z");
        assert_eq!(
            rfc3339(UNIX_EPOCH + Duration::from_secs(1_793_527_200)),
            "2026-11-01T10:00:00Z"
        );
        assert_eq!(
            rfc3339(UNIX_EPOCH + Duration::from_secs(951_782_400)),
            "2000-02-29T00:00:00Z"
        );
    }

    #[test]
    fn strategic_merge_of_annotations_and_conditions() {
        let mut n = json!({"metadata": {"annotations": {"a": "1", "b": "2"}},
                           "status": {"conditions": [{"type": "Ready", "status": "True"}]}});
        merge(
            &mut n,
            &json!({"metadata": {"annotations": {"b": null, "c": "3"}},
                    "status": {"conditions": [{"type": "NetworkUnavailable", "status": "False"},
                                              {"type": "Ready", "reason": "x"}]}}),
            "",
        );
        assert_eq!(n["metadata"]["annotations"], json!({"a": "1", "c": "3"}));
        assert_eq!(
            n["status"]["conditions"][0],
            json!({"type": "Ready", "status": "True", "reason": "x"})
        );
        assert_eq!(n["status"]["conditions"][1]["type"], "NetworkUnavailable");
    }
}
