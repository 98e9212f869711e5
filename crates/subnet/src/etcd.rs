//! The etcd v3 lease store, with upstream's key layout (`pkg/subnet/etcd/registry.go`):
//! `<prefix>/config` holds the network config, `<prefix>/subnets/<subnet key>` the leases,
//! each lease attached to its own etcd lease for the TTL.
//!
//! Creation is a transaction on `create_revision == 0` (upstream compares `version == 0`;
//! both mean "the key does not exist"). Renewal grants a new etcd lease and puts the value
//! with it, as upstream does. Watches start from a revision with `prev_kv`, so a deletion
//! still says whose lease it was; a compacted start revision becomes
//! [`RegistryError::Compacted`].

use std::fmt;
use std::future::Future;
use std::path::PathBuf;
use std::time::{Duration, SystemTime};

use etcd_client::{
    Certificate, Client, Compare, CompareOp, ConnectOptions, EventType, GetOptions, Identity,
    KeyValue, PutOptions, TlsOptions, Txn, TxnOp, WatchOptions, WatchResponse,
};
use futures::StreamExt;
use tracing::{debug, info, warn};

use crate::lease::{Expiration, Lease, LeaseAttrs, SubnetKey};
use crate::registry::{Event, Registry, RegistryError, WatchBatch, WatchStream};

/// Upstream's default `--etcd-prefix`.
pub const DEFAULT_PREFIX: &str = "/coreos.com/network";

/// Upstream's default `--etcd-endpoints`.
pub const DEFAULT_ENDPOINTS: [&str; 2] = ["http://127.0.0.1:4001", "http://127.0.0.1:2379"];

/// Upstream's error text for a missing config.
pub const CONFIG_NOT_FOUND: &str =
    "flannel config not found in etcd store. Did you create your config using etcdv3 API?";

/// How to reach etcd (the `--etcd-*` flags).
#[derive(Clone)]
pub struct EtcdOptions {
    /// Client URLs (`http://` or `https://`).
    pub endpoints: Vec<String>,
    /// Key prefix (`--etcd-prefix`).
    pub prefix: String,
    /// Client key file (PEM), used together with `certfile`.
    pub keyfile: Option<PathBuf>,
    /// Client certificate file (PEM), used together with `keyfile`.
    pub certfile: Option<PathBuf>,
    /// CA bundle (PEM) that signed the server certificate.
    pub cafile: Option<PathBuf>,
    /// User name for etcd authentication.
    pub username: Option<String>,
    /// Password for etcd authentication.
    pub password: Option<String>,
    /// Longest wait for one request before it counts as "store unavailable".
    pub request_timeout: Duration,
    /// Longest wait for a TCP/TLS connection.
    pub connect_timeout: Duration,
}

impl Default for EtcdOptions {
    fn default() -> Self {
        EtcdOptions {
            endpoints: DEFAULT_ENDPOINTS.iter().map(|s| s.to_string()).collect(),
            prefix: DEFAULT_PREFIX.to_string(),
            keyfile: None,
            certfile: None,
            cafile: None,
            username: None,
            password: None,
            request_timeout: Duration::from_secs(5),
            connect_timeout: Duration::from_secs(3),
        }
    }
}

// Hand-written so that the password never reaches a log.
impl fmt::Debug for EtcdOptions {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("EtcdOptions")
            .field("endpoints", &self.endpoints)
            .field("prefix", &self.prefix)
            .field("keyfile", &self.keyfile)
            .field("certfile", &self.certfile)
            .field("cafile", &self.cafile)
            .field("username", &self.username)
            .field("password", &self.password.as_ref().map(|_| "<redacted>"))
            .field("request_timeout", &self.request_timeout)
            .field("connect_timeout", &self.connect_timeout)
            .finish()
    }
}

/// Joins path elements like Go's `path.Join` (which upstream uses for keys): empty and `.`
/// elements dropped, `..` resolved, no trailing slash.
pub fn join_key(parts: &[&str]) -> String {
    let absolute = parts
        .iter()
        .find(|p| !p.is_empty())
        .is_some_and(|p| p.starts_with('/'));
    let mut out: Vec<&str> = Vec::new();
    for seg in parts.iter().flat_map(|p| p.split('/')) {
        match seg {
            "" | "." => {}
            ".." => {
                if out.pop().is_none() && !absolute {
                    out.push("..");
                }
            }
            s => out.push(s),
        }
    }
    let body = out.join("/");
    if absolute {
        format!("/{body}")
    } else {
        body
    }
}

/// The error and every cause under it, each once: tonic's "transport error" or "tcp connect error" alone does not
/// say what went wrong, the causes do ("Connection refused", "invalid peer certificate: UnknownIssuer").
fn chain(e: &(dyn std::error::Error + 'static)) -> String {
    chain_after(String::new(), e)
}

/// [`chain`] continuing a text that already says something (a status message).
fn chain_after(first: String, e: &(dyn std::error::Error + 'static)) -> String {
    let mut parts: Vec<String> = Vec::new();
    if !first.is_empty() {
        parts.push(first);
    }
    let mut cur = Some(e);
    while let Some(x) = cur {
        let t = x.to_string();
        // "transport error" says nothing the causes do not.
        if !t.is_empty() && t != "transport error" && !parts.iter().any(|p| p.contains(&t)) {
            parts.push(t);
        }
        cur = x.source();
    }
    parts.join(": ")
}

/// What an operator should read first about an unreachable etcd: refused, timed out, TLS, name resolution.
fn cause(detail: &str) -> &'static str {
    let d = detail.to_ascii_lowercase();
    if d.contains("connection refused") {
        "connection refused"
    } else if d.contains("certificate")
        || d.contains("tls")
        || d.contains("handshake")
        || d.contains("corrupt message")
        || d.contains("invalid content type")
    {
        "TLS handshake failed"
    } else if d.contains("dns error")
        || d.contains("failed to lookup")
        || d.contains("name or service")
    {
        "name resolution failed"
    } else if d.contains("no route to host") || d.contains("network is unreachable") {
        "no route to etcd"
    } else if d.contains("timed out") || d.contains("deadline") || d.contains("no answer") {
        "timed out"
    } else if d.contains("connection reset")
        || d.contains("broken pipe")
        || d.contains("connection closed")
    {
        "connection lost"
    } else {
        "unavailable"
    }
}

/// An unavailable etcd, named with its endpoints and the cause.
fn unavailable(endpoints: &[String], what: &str, detail: &str) -> RegistryError {
    RegistryError::Unavailable(format!(
        "etcd at {} ({what}): {}: {detail}",
        endpoints.join(", "),
        cause(detail)
    ))
}

/// Classifies an etcd client error so that callers know whether to retry; `endpoints` and `what` name what failed.
fn map_err(e: etcd_client::Error, endpoints: &[String], what: &str) -> RegistryError {
    use etcd_client::Error as E;
    use tonic::Code;
    let detail = match &e {
        // A status prints its source in Debug form; its message and the sources' own texts read better.
        E::GRpcStatus(s) => match std::error::Error::source(s) {
            Some(src) => chain_after(s.message().to_string(), src),
            None => s.message().to_string(),
        },
        other => chain(other),
    };
    match e {
        E::GRpcStatus(s) => {
            let msg = s.message().to_string();
            match s.code() {
                Code::Unavailable
                | Code::DeadlineExceeded
                | Code::Cancelled
                | Code::Aborted
                | Code::ResourceExhausted
                | Code::Unknown
                | Code::Internal => unavailable(endpoints, what, &detail),
                Code::PermissionDenied | Code::Unauthenticated => RegistryError::Denied(msg),
                // etcd answers a bad password and a missing user (auth on, no credentials)
                // with InvalidArgument.
                Code::InvalidArgument
                    if msg.contains("authentication failed")
                        || msg.contains("user name is empty") =>
                {
                    RegistryError::Denied(msg)
                }
                _ => RegistryError::Other(format!("{:?}: {msg}", s.code())),
            }
        }
        E::TransportError(_) | E::IoError(_) | E::WatchError(_) => {
            unavailable(endpoints, what, &detail)
        }
        e @ (E::InvalidArgs(_)
        | E::InvalidUri(_)
        | E::EndpointError(_)
        | E::InvalidMetadataValue(_)) => RegistryError::Options(e.to_string()),
        e => RegistryError::Other(e.to_string()),
    }
}

fn read_pem(what: &str, path: &PathBuf) -> Result<Vec<u8>, RegistryError> {
    std::fs::read(path)
        .map_err(|e| RegistryError::Options(format!("cannot read {what} {}: {e}", path.display())))
}

/// Builds the client TLS settings. Upstream uses TLS only when both key and cert are set,
/// and Go's client ignores TLS for `http://` endpoints; we do the same for `http://`, but
/// also honour a lone CA file with `https://` endpoints (server-only TLS).
fn tls_options(o: &EtcdOptions) -> Result<Option<TlsOptions>, RegistryError> {
    let https = o
        .endpoints
        .iter()
        .filter(|e| e.starts_with("https://"))
        .count();
    let http = o
        .endpoints
        .iter()
        .filter(|e| e.starts_with("http://"))
        .count();
    let files_given = o.keyfile.is_some() || o.certfile.is_some() || o.cafile.is_some();
    match (&o.keyfile, &o.certfile) {
        (Some(_), None) => {
            return Err(RegistryError::Options(
                "--etcd-keyfile given without --etcd-certfile".into(),
            ))
        }
        (None, Some(_)) => {
            return Err(RegistryError::Options(
                "--etcd-certfile given without --etcd-keyfile".into(),
            ))
        }
        _ => {}
    }
    if https > 0 && http > 0 {
        return Err(RegistryError::Options(format!(
            "etcd endpoints mix http:// and https://: {}",
            o.endpoints.join(",")
        )));
    }
    if https == 0 && (http > 0 || !files_given) {
        if files_given {
            warn!("etcd TLS files given but the endpoints are http://: connecting without TLS");
        } else {
            warn!("no certificate provided: connecting to etcd with http. This is insecure");
        }
        return Ok(None);
    }
    let mut tls = TlsOptions::new();
    if let Some(ca) = &o.cafile {
        tls = tls.ca_certificate(Certificate::from_pem(read_pem("--etcd-cafile", ca)?));
    }
    if let (Some(key), Some(cert)) = (&o.keyfile, &o.certfile) {
        let cert = read_pem("--etcd-certfile", cert)?;
        let key = read_pem("--etcd-keyfile", key)?;
        tls = tls.identity(Identity::from_pem(cert, key));
    }
    Ok(Some(tls))
}

/// The etcd v3 store.
#[derive(Clone)]
pub struct EtcdRegistry {
    client: Client,
    opts: EtcdOptions,
    config_key: String,
    /// `<prefix>/subnets/`, with the trailing slash so `subnetsX` keys are not listed.
    subnets_dir: String,
}

impl fmt::Debug for EtcdRegistry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("EtcdRegistry")
            .field("opts", &self.opts)
            .finish()
    }
}

impl EtcdRegistry {
    /// Sets up the client. With only plain endpoints this does not contact etcd yet (the
    /// first request does); with a user name it authenticates and so needs etcd up.
    pub async fn connect(opts: EtcdOptions) -> Result<Self, RegistryError> {
        if opts.endpoints.is_empty() {
            return Err(RegistryError::Options("no etcd endpoints given".into()));
        }
        let mut co = ConnectOptions::new()
            .with_connect_timeout(opts.connect_timeout)
            // HTTP/2 pings notice a dead etcd behind a silent network, where no RST arrives.
            .with_keep_alive(Duration::from_secs(10), Duration::from_secs(5))
            // Like upstream's WithRequireLeader: a member cut off from the cluster ends the
            // watch instead of holding it open without events.
            .with_require_leader(true);
        match (&opts.username, &opts.password) {
            (Some(u), p) if !u.is_empty() => {
                co = co
                    .with_user(u.clone(), p.clone().unwrap_or_default())
                    .with_auto_token_refresh(true);
            }
            _ => {}
        }
        if let Some(tls) = tls_options(&opts)? {
            co = co.with_tls(tls);
        }
        let connect = Client::connect(opts.endpoints.clone(), Some(co));
        let client = match tokio::time::timeout(
            opts.request_timeout + opts.connect_timeout,
            connect,
        )
        .await
        {
            Ok(r) => r.map_err(|e| map_err(e, &opts.endpoints, "connect"))?,
            Err(_) => {
                return Err(unavailable(
                    &opts.endpoints,
                    "connect",
                    &format!(
                        "no answer within {:?}",
                        opts.request_timeout + opts.connect_timeout
                    ),
                ))
            }
        };
        let config_key = join_key(&[&opts.prefix, "config"]);
        let subnets_dir = format!("{}/", join_key(&[&opts.prefix, "subnets"]));
        info!(endpoints = %opts.endpoints.join(","), prefix = %opts.prefix, "using etcd lease store");
        Ok(EtcdRegistry {
            client,
            opts,
            config_key,
            subnets_dir,
        })
    }

    /// A handle on the underlying client (for tools and tests).
    pub fn client(&self) -> Client {
        self.client.clone()
    }

    /// The key holding the network config.
    pub fn config_key(&self) -> &str {
        &self.config_key
    }

    /// The full etcd key of a lease.
    pub fn lease_key(&self, key: &SubnetKey) -> String {
        format!("{}{}", self.subnets_dir, key)
    }

    /// Runs one request with the request timeout, so that a down etcd gives an error
    /// instead of a request parked until the channel reconnects.
    async fn timed<T>(
        &self,
        what: &str,
        fut: impl Future<Output = Result<T, etcd_client::Error>>,
    ) -> Result<T, RegistryError> {
        match tokio::time::timeout(self.opts.request_timeout, fut).await {
            Ok(r) => r.map_err(|e| {
                let e = map_err(e, &self.opts.endpoints, what);
                debug!(%what, error = %e, "etcd request failed");
                e
            }),
            Err(_) => Err(unavailable(
                &self.opts.endpoints,
                what,
                &format!("no answer within {:?}", self.opts.request_timeout),
            )),
        }
    }

    /// Grants an etcd lease for `ttl` (rounded up to whole seconds, at least 1) and returns
    /// its id and the TTL etcd granted.
    async fn grant(&self, ttl: Duration) -> Result<(i64, i64), RegistryError> {
        let secs = ttl.as_secs() + u64::from(ttl.subsec_nanos() > 0);
        let secs = i64::try_from(secs.max(1)).unwrap_or(i64::MAX);
        let mut c = self.client.clone();
        let r = self.timed("lease grant", c.lease_grant(secs, None)).await?;
        Ok((r.id(), r.ttl()))
    }

    /// Best-effort revoke of a lease we granted but could not use.
    async fn revoke(&self, id: i64) {
        let mut c = self.client.clone();
        if let Err(e) = self.timed("lease revoke", c.lease_revoke(id)).await {
            warn!(lease_id = id, error = %e, "could not revoke unused etcd lease (it will expire)");
        }
    }

    fn expiration(granted: Option<i64>) -> Expiration {
        match granted {
            None => Expiration::Never,
            Some(ttl) => Expiration::At(SystemTime::now() + Duration::from_secs(ttl.max(0) as u64)),
        }
    }
}

/// Reads a stored key/value into a lease, or says why it is not one.
fn kv_to_lease(dir: &str, kv: &KeyValue, expiration: Expiration) -> Result<Lease, String> {
    let key = String::from_utf8_lossy(kv.key());
    let Some(sub) = key.strip_prefix(dir) else {
        return Err(format!("key {key:?} is outside {dir:?}"));
    };
    Lease::from_stored(sub, kv.value(), expiration, kv.mod_revision())
        .map(|l| l.with_created(kv.create_revision()))
        .map_err(|e| e.to_string())
}

fn lease_expiration(kv: &KeyValue) -> Expiration {
    if kv.lease() == 0 {
        Expiration::Never
    } else {
        Expiration::Unknown
    }
}

/// What one watch response means for the caller.
enum Step {
    Skip,
    Batch(WatchBatch),
    Fail(RegistryError),
}

/// `after` is the revision the watch resumes after, to notice a store whose history went
/// backwards (etcd rebuilt or restored from a backup).
fn convert(dir: &str, after: i64, resp: &WatchResponse) -> Step {
    if resp.compact_revision() != 0 {
        return Step::Fail(RegistryError::Compacted {
            compact_revision: resp.compact_revision(),
        });
    }
    if resp.canceled() {
        let reason = resp.cancel_reason();
        return Step::Fail(if reason.contains("permission denied") {
            RegistryError::Denied(reason.to_string())
        } else {
            RegistryError::Unavailable(format!("etcd canceled the watch: {reason}"))
        });
    }
    let header_rev = resp.header().map(|h| h.revision()).unwrap_or(0);
    if resp.created() && header_rev > 0 && header_rev < after {
        // Waiting for revisions this store may never reach would hide every change:
        // treat it like a compaction, so the caller lists again.
        warn!(
            after,
            store_revision = header_rev,
            "etcd revision is behind our watch position; re-listing"
        );
        return Step::Fail(RegistryError::Compacted {
            compact_revision: header_rev,
        });
    }
    if resp.events().is_empty() {
        // The creation answer carries the current revision, not a promise that everything
        // before it was delivered, so only progress notifications advance the cursor.
        return if resp.created() || header_rev == 0 {
            Step::Skip
        } else {
            Step::Batch(WatchBatch {
                revision: header_rev,
                events: Vec::new(),
            })
        };
    }
    let mut revision = 0;
    let mut events = Vec::with_capacity(resp.events().len());
    for ev in resp.events() {
        let Some(kv) = ev.kv() else { continue };
        revision = revision.max(kv.mod_revision());
        let key = String::from_utf8_lossy(kv.key()).into_owned();
        let Some(sub) = key.strip_prefix(dir) else {
            continue;
        };
        let Ok(skey) = sub.parse::<SubnetKey>() else {
            warn!(key = %key, "ignoring etcd event: not a subnet key");
            continue;
        };
        match ev.event_type() {
            EventType::Put => match LeaseAttrs::from_json(sub, kv.value()) {
                Ok(attrs) => events.push(Event::Added(
                    Lease::new(skey, attrs, lease_expiration(kv), kv.mod_revision())
                        .with_created(kv.create_revision()),
                )),
                Err(e) => {
                    // The key no longer holds a usable lease; a fresh list would leave it
                    // out too, so report it gone and keep both views the same.
                    warn!(error = %e, "malformed lease value written; treating the lease as removed");
                    events.push(Event::Unreadable {
                        key: skey,
                        revision: kv.mod_revision(),
                        reason: e.to_string(),
                    });
                }
            },
            EventType::Delete => {
                let attrs = ev
                    .prev_kv()
                    .and_then(|p| LeaseAttrs::from_json(sub, p.value()).ok())
                    .unwrap_or_default();
                events.push(Event::Removed(Lease::new(
                    skey,
                    attrs,
                    Expiration::Never,
                    kv.mod_revision(),
                )));
            }
        }
    }
    if revision == 0 {
        revision = header_rev;
    }
    Step::Batch(WatchBatch { revision, events })
}

impl EtcdRegistry {
    async fn watch_key(
        &self,
        key: String,
        prefix: bool,
        after: i64,
    ) -> Result<WatchStream, RegistryError> {
        let mut opts = WatchOptions::new()
            .with_start_revision(after.saturating_add(1).max(1))
            .with_prev_key();
        if prefix {
            opts = opts.with_prefix();
        }
        debug!(key = %key, after, "starting etcd watch");
        let mut c = self.client.clone();
        let stream = self.timed("watch", c.watch(key, Some(opts))).await?;
        let dir = self.subnets_dir.clone();
        let endpoints = self.opts.endpoints.clone();
        let s = futures::stream::unfold(Some(stream), move |state| {
            let dir = dir.clone();
            let endpoints = endpoints.clone();
            async move {
                let mut stream = state?;
                loop {
                    let item = match stream.next().await {
                        None => Err(unavailable(
                            &endpoints,
                            "watch",
                            "connection closed: etcd ended the watch stream",
                        )),
                        Some(Err(e)) => Err(map_err(e, &endpoints, "watch")),
                        Some(Ok(resp)) => match convert(&dir, after, &resp) {
                            Step::Skip => continue,
                            Step::Batch(b) => Ok(b),
                            Step::Fail(e) => Err(e),
                        },
                    };
                    // After an error the stream ends: the caller decides how to resume.
                    let next = if item.is_ok() { Some(stream) } else { None };
                    return Some((item, next));
                }
            }
        });
        Ok(s.boxed())
    }
}

#[async_trait::async_trait]
impl Registry for EtcdRegistry {
    fn name(&self) -> String {
        format!(
            "etcd {} {}",
            self.opts.endpoints.join(","),
            self.opts.prefix
        )
    }

    async fn get_network_config(&self) -> Result<String, RegistryError> {
        let mut c = self.client.clone();
        let r = self
            .timed("get config", c.get(self.config_key.as_str(), None))
            .await?;
        match r.kvs().first() {
            Some(kv) => Ok(String::from_utf8_lossy(kv.value()).into_owned()),
            None => Err(RegistryError::ConfigNotFound(format!(
                "{CONFIG_NOT_FOUND} (looked for key {})",
                self.config_key
            ))),
        }
    }

    async fn get_subnets(&self) -> Result<(Vec<Lease>, i64), RegistryError> {
        let mut c = self.client.clone();
        let r = self
            .timed(
                "list leases",
                c.get(
                    self.subnets_dir.as_str(),
                    Some(GetOptions::new().with_prefix()),
                ),
            )
            .await?;
        let revision = r.header().map(|h| h.revision()).unwrap_or(0);
        let mut leases = Vec::with_capacity(r.kvs().len());
        for kv in r.kvs() {
            match kv_to_lease(&self.subnets_dir, kv, lease_expiration(kv)) {
                Ok(l) => leases.push(l),
                Err(e) => warn!(error = %e, "ignoring bad subnet entry"),
            }
        }
        Ok((leases, revision))
    }

    async fn get_subnet(&self, key: &SubnetKey) -> Result<(Option<Lease>, i64), RegistryError> {
        let mut c = self.client.clone();
        let full = self.lease_key(key);
        let r = self.timed("get lease", c.get(full.as_str(), None)).await?;
        let revision = r.header().map(|h| h.revision()).unwrap_or(0);
        let Some(kv) = r.kvs().first() else {
            return Ok((None, revision));
        };
        let expiration = if kv.lease() == 0 {
            Expiration::Never
        } else {
            let mut c = self.client.clone();
            let t = self
                .timed("lease ttl", c.lease_time_to_live(kv.lease(), None))
                .await?;
            // TTL -1: the etcd lease is gone and the key about to be.
            Expiration::At(SystemTime::now() + Duration::from_secs(t.ttl().max(0) as u64))
        };
        match kv_to_lease(&self.subnets_dir, kv, expiration) {
            Ok(l) => Ok((Some(l), revision)),
            Err(e) => {
                warn!(error = %e, "ignoring bad subnet entry");
                Ok((None, revision))
            }
        }
    }

    async fn create_subnet(
        &self,
        key: &SubnetKey,
        attrs: &LeaseAttrs,
        ttl: Option<Duration>,
    ) -> Result<Option<Lease>, RegistryError> {
        let full = self.lease_key(key);
        let granted = match ttl {
            Some(t) => Some(self.grant(t).await?),
            None => None,
        };
        let mut put = PutOptions::new();
        if let Some((id, _)) = granted {
            put = put.with_lease(id);
        }
        let txn = Txn::new()
            .when([Compare::create_revision(full.as_str(), CompareOp::Equal, 0)])
            .and_then([TxnOp::put(full.as_str(), attrs.to_json(), Some(put))]);
        let mut c = self.client.clone();
        let r = match self.timed("create lease", c.txn(txn)).await {
            Ok(r) => r,
            Err(e) => {
                if let Some((id, _)) = granted {
                    self.revoke(id).await;
                }
                return Err(e);
            }
        };
        if !r.succeeded() {
            if let Some((id, _)) = granted {
                self.revoke(id).await;
            }
            debug!(key = %key, "subnet already taken");
            return Ok(None);
        }
        let revision = r.header().map(|h| h.revision()).unwrap_or(0);
        Ok(Some(Lease::new(
            *key,
            attrs.clone(),
            Self::expiration(granted.map(|g| g.1)),
            revision,
        )))
    }

    async fn update_subnet(
        &self,
        key: &SubnetKey,
        attrs: &LeaseAttrs,
        ttl: Option<Duration>,
    ) -> Result<Lease, RegistryError> {
        let full = self.lease_key(key);
        let granted = match ttl {
            Some(t) => Some(self.grant(t).await?),
            None => None,
        };
        let mut put = PutOptions::new();
        if let Some((id, _)) = granted {
            put = put.with_lease(id);
        }
        let mut c = self.client.clone();
        match self
            .timed(
                "update lease",
                c.put(full.as_str(), attrs.to_json(), Some(put)),
            )
            .await
        {
            Ok(r) => {
                let revision = r.header().map(|h| h.revision()).unwrap_or(0);
                Ok(Lease::new(
                    *key,
                    attrs.clone(),
                    Self::expiration(granted.map(|g| g.1)),
                    revision,
                ))
            }
            Err(e) => {
                if let Some((id, _)) = granted {
                    self.revoke(id).await;
                }
                Err(e)
            }
        }
    }

    async fn delete_subnet(&self, key: &SubnetKey) -> Result<(), RegistryError> {
        let mut c = self.client.clone();
        let full = self.lease_key(key);
        self.timed("delete lease", c.delete(full.as_str(), None))
            .await?;
        Ok(())
    }

    async fn watch_subnets(&self, after: i64) -> Result<WatchStream, RegistryError> {
        self.watch_key(self.subnets_dir.clone(), true, after).await
    }

    async fn watch_subnet(
        &self,
        key: &SubnetKey,
        after: i64,
    ) -> Result<WatchStream, RegistryError> {
        self.watch_key(self.lease_key(key), false, after).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_like_go_path_join() {
        assert_eq!(
            join_key(&["/coreos.com/network", "config"]),
            "/coreos.com/network/config"
        );
        assert_eq!(
            join_key(&["/coreos.com/network/", "subnets"]),
            "/coreos.com/network/subnets"
        );
        assert_eq!(join_key(&["//a//b/", "config"]), "/a/b/config");
        assert_eq!(join_key(&["", "config"]), "config");
        assert_eq!(join_key(&["/a/../b", "config"]), "/b/config");
    }

    #[test]
    fn tls_choice() {
        let mut o = EtcdOptions::default();
        assert!(tls_options(&o).unwrap().is_none());
        o.keyfile = Some("/nonexistent/key.pem".into());
        assert!(
            matches!(tls_options(&o), Err(RegistryError::Options(m)) if m.contains("without --etcd-certfile"))
        );
        o.certfile = Some("/nonexistent/cert.pem".into());
        // http:// endpoints: TLS files are ignored, as Go's client does.
        assert!(tls_options(&o).unwrap().is_none());
        o.endpoints = vec!["https://127.0.0.1:2379".into()];
        assert!(
            matches!(tls_options(&o), Err(RegistryError::Options(m)) if m.contains("/nonexistent/"))
        );
        o.endpoints.push("http://127.0.0.1:4001".into());
        assert!(matches!(tls_options(&o), Err(RegistryError::Options(m)) if m.contains("mix")));
    }

    #[test]
    fn options_debug_hides_password() {
        let o = EtcdOptions {
            password: Some("hunter2".into()),
            ..Default::default()
        };
        assert!(!format!("{o:?}").contains("hunter2"));
    }
}
