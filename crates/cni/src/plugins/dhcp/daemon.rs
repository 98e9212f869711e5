//! `dhcp daemon`: holds one DHCP lease per attachment and renews it for the pod's lifetime, answering the plugin
//! over a unix socket (the reference's `daemon.go` and the lease half of `lease.go`).
//!
//! The socket speaks our own protocol, one JSON request and one JSON answer per connection (the reference uses
//! Go's net/rpc over HTTP, which nothing else speaks): so our plugin needs our daemon, and the reference plugin
//! the reference daemon. Requests run in tasks of their own: a plugin killed during ADD leaves the acquisition
//! to finish and be recorded, so the DEL that follows releases it.

use super::client::{Backoff, Bound, Client, ClientConf};
use super::log;
use super::options::{self, ClientOptions, IpamConf};
use crate::error::{CniError, ERR_INVALID_CONFIG};
use crate::types::{CniResult, NetConf};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::oneshot;
use tokio::time::Instant;

/// A request of the plugin.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Request {
    /// `Allocate` (ADD, CHECK), `Release` (DEL) or `Status`.
    pub method: String,
    #[serde(default)]
    pub container_id: String,
    /// Absolute path of the pod's namespace.
    #[serde(default)]
    pub netns: String,
    #[serde(default)]
    pub ifname: String,
    /// `CNI_ARGS`.
    #[serde(default)]
    pub args: String,
    /// The network configuration the plugin got.
    #[serde(default)]
    pub stdin: String,
}

/// The daemon's answer: a result (Allocate), nothing, or an error with its CNI code.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Answer {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub result: Option<Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<WireError>,
}

/// A [`CniError`] on the wire.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct WireError {
    pub code: u32,
    pub msg: String,
    #[serde(default)]
    pub details: String,
}

/// Largest request accepted (configurations are small; this bounds what a stray client can make us buffer).
pub const MAX_REQUEST: u64 = 1 << 20;

/// The daemon's flags.
#[derive(Debug, Clone)]
pub struct DaemonConf {
    pub pidfile: Option<PathBuf>,
    pub host_prefix: String,
    pub socket_path: String,
    pub client: ClientConf,
}

/// One held lease and the task renewing it.
struct Held {
    result: CniResult,
    stop: Option<oneshot::Sender<()>>,
    task: tokio::task::JoinHandle<()>,
}

type Slot = Arc<tokio::sync::Mutex<Option<Held>>>;

struct State {
    conf: DaemonConf,
    /// One slot per client id; the slot's lock orders ADD, CHECK and DEL of one attachment.
    leases: Mutex<HashMap<String, Slot>>,
}

impl State {
    fn slot(&self, id: &str) -> Slot {
        let mut m = self.leases.lock().unwrap_or_else(|e| e.into_inner());
        m.entry(id.to_string()).or_default().clone()
    }

    /// Drops the slot of `id` when it is empty and nobody else holds or waits for it.
    fn forget(&self, id: &str, slot: &Slot) {
        let mut m = self.leases.lock().unwrap_or_else(|e| e.into_inner());
        // The map's reference and the caller's: no one else waits on it.
        if Arc::strong_count(slot) == 2 {
            m.remove(id);
        }
    }
}

fn netconf_of(req: &Request) -> Result<(NetConf, IpamConf), CniError> {
    let nc = NetConf::parse(req.stdin.as_bytes())
        .map_err(|e| CniError::decode(format!("error parsing netconf: {}", e.msg)))?;
    let ipam = IpamConf::from_stdin(req.stdin.as_bytes())?;
    Ok((nc, ipam))
}

async fn allocate(st: &Arc<State>, req: &Request) -> Result<CniResult, CniError> {
    let (nc, ipam) = netconf_of(req)?;
    let opts = options::prepare(&req.args, &ipam)?;
    let id = options::client_id(&req.container_id, &nc.name, &req.ifname);
    let slot = st.slot(&id);
    let mut held = slot.lock().await;
    if let Some(h) = held.as_ref() {
        if !h.task.is_finished() {
            log(&format!("{id}: lease known, checking"));
            return Ok(h.result.clone());
        }
    }
    // A lease that expired (its task ended) is no lease: acquire anew.
    *held = None;
    let netns = format!("{}{}", st.conf.host_prefix, req.netns);
    log(&format!("{id}: acquiring lease"));
    let acquired = async {
        let c = Client::open(&netns, &req.ifname, st.conf.client).await?;
        let bound = c.acquire(&id, &opts).await?;
        Ok::<_, CniError>((c, bound))
    }
    .await;
    let (c, bound) = match acquired {
        Ok(x) => x,
        Err(e) => {
            drop(held);
            st.forget(&id, &slot);
            log(&format!("{id}: {e}"));
            return Err(e);
        }
    };
    let result = match options::result_of(&bound.ack) {
        Ok(r) => r,
        Err(e) => {
            // A lease we cannot use goes back at once, as the reference does.
            let _ = c.release(&bound, &id).await;
            drop(held);
            st.forget(&id, &slot);
            return Err(e);
        }
    };
    drop(c);
    let times = options::times(&bound.ack)?;
    log(&format!(
        "{id}: lease acquired: {} from {}, lease time {:?}",
        bound.ack.yiaddr, bound.server_id, times.lease
    ));
    let (tx, rx) = oneshot::channel();
    let m = Maintain {
        id: id.clone(),
        netns,
        ifname: req.ifname.clone(),
        opts,
        conf: st.conf.client,
        lease: bound,
    };
    let task = tokio::spawn(m.run(rx));
    *held = Some(Held {
        result: result.clone(),
        stop: Some(tx),
        task,
    });
    Ok(result)
}

async fn release(st: &Arc<State>, req: &Request) -> Result<(), CniError> {
    let (nc, _) = netconf_of(req)?;
    let id = options::client_id(&req.container_id, &nc.name, &req.ifname);
    let slot = st.slot(&id);
    let mut held = slot.lock().await;
    if let Some(mut h) = held.take() {
        if let Some(stop) = h.stop.take() {
            let _ = stop.send(());
        }
        // The task sends the RELEASE and ends; DEL answers after that.
        let _ = (&mut h.task).await;
    }
    drop(held);
    st.forget(&id, &slot);
    Ok(())
}

/// The renewal task of one lease.
struct Maintain {
    id: String,
    netns: String,
    ifname: String,
    opts: ClientOptions,
    conf: ClientConf,
    lease: Bound,
}

enum Phase {
    Bound,
    Renewing,
    Rebinding,
    Expired,
}

impl Maintain {
    async fn run(mut self, mut stop: oneshot::Receiver<()>) {
        let mut backoff = Backoff::new(self.conf.resend_max);
        loop {
            let Ok(t) = options::times(&self.lease.ack) else {
                return;
            };
            let (t1, t2, exp) = (
                self.lease.since + t.renew,
                self.lease.since + t.rebind,
                self.lease.since + t.lease,
            );
            let now = Instant::now();
            let phase = if now < t1 {
                Phase::Bound
            } else if now < t2 {
                Phase::Renewing
            } else if now < exp {
                Phase::Rebinding
            } else {
                Phase::Expired
            };
            let (unicast, boundary) = match phase {
                Phase::Bound => {
                    tokio::select! {
                        _ = tokio::time::sleep_until(t1) => {
                            log(&format!("{}: renewing lease", self.id));
                            backoff = Backoff::new(self.conf.resend_max);
                            continue;
                        }
                        _ = &mut stop => break,
                    }
                }
                Phase::Renewing => (true, t2),
                Phase::Rebinding => (false, exp),
                Phase::Expired => {
                    log(&format!(
                        "{}: lease expired, bringing interface DOWN",
                        self.id
                    ));
                    self.down().await;
                    // Nothing to release any more. The task ends, so the next ADD or CHECK acquires anew; the
                    // slot stays until DEL.
                    return;
                }
            };
            let until = boundary.min(Instant::now() + backoff.next_delay());
            let attempt = async {
                let c = Client::open(&self.netns, &self.ifname, self.conf).await?;
                c.renew(&self.lease, &self.id, &self.opts, unicast, until)
                    .await
            };
            tokio::select! {
                r = attempt => match r {
                    Ok(Some(b)) => {
                        self.lease = b;
                        let how = if unicast { "renewed" } else { "rebound" };
                        log(&format!("{}: lease {how}, lease time {:?}", self.id,
                            options::times(&self.lease.ack).map(|t| t.lease).unwrap_or_default()));
                        backoff = Backoff::new(self.conf.resend_max);
                    }
                    Ok(None) => log(&format!("{}: no answer to the renewal", self.id)),
                    Err(e) => {
                        log(&format!("{}: {e}", self.id));
                        tokio::select! {
                            _ = tokio::time::sleep_until(until) => {}
                            _ = &mut stop => break,
                        }
                    }
                },
                _ = &mut stop => break,
            }
        }
        log(&format!("{}: releasing lease", self.id));
        let r = async {
            let c = Client::open(&self.netns, &self.ifname, self.conf).await?;
            c.release(&self.lease, &self.id).await
        }
        .await;
        if let Err(e) = r {
            // The pod or its interface is gone already: the server lets the lease expire.
            log(&format!("{}: failed to release DHCP lease: {e}", self.id));
        }
    }

    async fn down(&self) {
        let r = async {
            let ns = kernel::Netns::open(&self.netns)?;
            let nl = kernel::Netlink::in_netns(&ns)?;
            if let Some(l) = nl.link_by_name(&self.ifname).await? {
                nl.set_down(l.index).await?;
            }
            Ok::<_, kernel::Error>(())
        }
        .await;
        if let Err(e) = r {
            log(&format!(
                "{}: failed to bring {} DOWN: {e}",
                self.id, self.ifname
            ));
        }
    }
}

async fn handle(st: Arc<State>, req: Request) -> Answer {
    let out: Result<Option<Value>, CniError> = match req.method.as_str() {
        "Allocate" => allocate(&st, &req)
            .await
            .map(|r| Some(r.to_value(crate::version::CURRENT))),
        "Release" => release(&st, &req).await.map(|()| None),
        "Status" => Ok(None),
        m => Err(CniError::new(
            ERR_INVALID_CONFIG,
            format!("unknown daemon method \"{m}\""),
        )),
    };
    match out {
        Ok(result) => Answer {
            result,
            error: None,
        },
        Err(e) => Answer {
            result: None,
            error: Some(WireError {
                code: e.code,
                msg: e.msg,
                details: e.details,
            }),
        },
    }
}

async fn serve_conn(st: Arc<State>, mut conn: UnixStream) {
    let mut buf = Vec::new();
    if let Err(e) = (&mut conn).take(MAX_REQUEST).read_to_end(&mut buf).await {
        log(&format!("reading a request: {e}"));
        return;
    }
    let answer = match serde_json::from_slice::<Request>(&buf) {
        Ok(req) => {
            // The work runs in its own task: a client that goes away does not cancel it.
            match tokio::spawn(handle(st, req)).await {
                Ok(a) => a,
                Err(e) => Answer {
                    result: None,
                    error: Some(WireError {
                        code: crate::error::ERR_INTERNAL,
                        msg: format!("request failed: {e}"),
                        details: String::new(),
                    }),
                },
            }
        }
        Err(e) => Answer {
            result: None,
            error: Some(WireError {
                code: crate::error::ERR_DECODE,
                msg: format!("bad request: {e}"),
                details: String::new(),
            }),
        },
    };
    let mut out = serde_json::to_vec(&answer).unwrap_or_default();
    out.push(b'\n');
    let _ = conn.write_all(&out).await;
    let _ = conn.shutdown().await;
}

/// A listener from systemd socket activation (`LISTEN_PID`/`LISTEN_FDS`), as the reference accepts.
fn activated_listener() -> Result<Option<std::os::unix::net::UnixListener>, String> {
    use std::os::fd::FromRawFd;
    let pid_ok = std::env::var("LISTEN_PID")
        .ok()
        .and_then(|p| p.parse::<u32>().ok())
        == Some(std::process::id());
    if !pid_ok {
        return Ok(None);
    }
    match std::env::var("LISTEN_FDS")
        .ok()
        .and_then(|n| n.parse::<u32>().ok())
    {
        None | Some(0) => Ok(None),
        // SAFETY: systemd passes the listening socket as descriptor 3 and nothing else in this process owns it.
        Some(1) => Ok(Some(unsafe {
            std::os::unix::net::UnixListener::from_raw_fd(3)
        })),
        Some(n) => Err(format!(
            "Too many ({n}) FDs passed through socket activation"
        )),
    }
}

/// Binds the socket, replacing a stale one left by a daemon that died, refusing to take over a live one.
fn bind(path: &Path) -> Result<std::os::unix::net::UnixListener, String> {
    if let Some(dir) = path.parent() {
        use std::os::unix::fs::DirBuilderExt;
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .map_err(|e| format!("Error getting listener: mkdir {}: {e}", dir.display()))?;
    }
    if path.exists() {
        if std::os::unix::net::UnixStream::connect(path).is_ok() {
            return Err(format!(
                "Error getting listener: another daemon is listening on {}",
                path.display()
            ));
        }
        let _ = std::fs::remove_file(path);
    }
    std::os::unix::net::UnixListener::bind(path).map_err(|e| {
        format!(
            "Error getting listener: listen unix {}: {e}",
            path.display()
        )
    })
}

/// Runs the daemon until SIGTERM or SIGINT; then the socket and pidfile are removed (leases are not released,
/// as the reference: pods keep their addresses across a daemon restart).
pub fn run(conf: DaemonConf) -> Result<(), String> {
    if let Some(p) = &conf.pidfile {
        if !p.is_absolute() {
            return Err(format!(
                "Error writing pidfile \"{}\": path not absolute",
                p.display()
            ));
        }
    }
    let socket = PathBuf::from(format!("{}{}", conf.host_prefix, conf.socket_path));
    let std_listener = match activated_listener()? {
        Some(l) => l,
        None => bind(&socket)?,
    };
    // The pidfile once the socket is ours: a second daemon that cannot listen leaves the first one's file alone.
    if let Some(p) = &conf.pidfile {
        std::fs::write(p, std::process::id().to_string()).map_err(|e| {
            let _ = std::fs::remove_file(&socket);
            format!("Error writing pidfile \"{}\": {e}", p.display())
        })?;
    }
    std_listener
        .set_nonblocking(true)
        .map_err(|e| format!("socket: {e}"))?;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| format!("failed to start runtime: {e}"))?;
    let pidfile = conf.pidfile.clone();
    let socket_file = socket.clone();
    let st = Arc::new(State {
        conf,
        leases: Mutex::new(HashMap::new()),
    });
    let r = rt.block_on(async move {
        let listener = UnixListener::from_std(std_listener).map_err(|e| format!("socket: {e}"))?;
        use tokio::signal::unix::{signal, SignalKind};
        let mut term = signal(SignalKind::terminate()).map_err(|e| e.to_string())?;
        let mut int = signal(SignalKind::interrupt()).map_err(|e| e.to_string())?;
        log(&format!("listening on {}", socket.display()));
        loop {
            tokio::select! {
                a = listener.accept() => match a {
                    Ok((conn, _)) => { tokio::spawn(serve_conn(st.clone(), conn)); }
                    Err(e) => {
                        log(&format!("accept: {e}"));
                        tokio::time::sleep(Duration::from_millis(100)).await;
                    }
                },
                _ = term.recv() => break,
                _ = int.recv() => break,
            }
        }
        Ok::<_, String>(())
    });
    let _ = std::fs::remove_file(&socket_file);
    if let Some(p) = pidfile {
        let _ = std::fs::remove_file(p);
    }
    r
}
