//! The daemon: store → config → interface → backend → lease → rules → subnet.env → ready, then three loops
//! (reconcile peers, renew/watch our lease, re-check traffic rules) until SIGTERM or our lease is revoked.

use crate::admission::{Admission, NetworkRules};
use crate::backend::{self, Backend, Local, Published};
use crate::cli::Options;
use crate::health;
use crate::iface::{self, IpStack, SelectOptions};
use crate::traffic::{MasqConfig, Mode, NetPair, TrafficManager};
use anyhow::{anyhow, Context, Result};
use cni::subnet_env::{self, SubnetEnv};
use ipnet::{IpNet, Ipv4Net, Ipv6Net};
use kernel::Netlink;
use serde_json::json;
use std::collections::BTreeMap;
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};
use subnet::kube::{KubeOptions, KubeSource};
use subnet::{
    Backoff, EtcdOptions, EtcdRegistry, LeaseAttrs, LeaseEnd, ManagerError, ManagerOptions,
    PeerSnapshot, SharedSubnetManager, StoreSource, SubnetKey, NO_IPV4_SUBNET,
};
use tokio::sync::watch;
use tracing::{debug, error, info, warn};

/// How often the reconciler re-checks the kernel even without lease events.
const RESYNC: Duration = Duration::from_secs(10);

/// Kernel entries changed in one pass above which freed heap is handed back to the kernel (the pass's dumps and
/// work lists are transient; without this the allocator keeps their pages resident).
const TRIM_AFTER: usize = 256;

/// Why the daemon stopped.
#[derive(Debug, PartialEq, Eq)]
pub enum Exit {
    /// SIGTERM / SIGINT: routes are left in place so pods keep talking across a restart.
    Signal,
    /// Our lease was deleted or expired.
    LeaseRevoked,
}

/// The lease source named by the command line: Kubernetes (`--kube-subnet-mgr`), the embedded store
/// (`--local-store`), or etcd (waited for while unreachable).
async fn subnet_manager(
    opts: &Options,
    previous: Option<SubnetKey>,
) -> Result<SharedSubnetManager> {
    if opts.kube_subnet_mgr {
        let env = |k: &str| std::env::var(k).ok().filter(|v| !v.is_empty());
        let ko = KubeOptions {
            api_url: opts.kube_api_url.clone(),
            kubeconfig: opts.kubeconfig_file.clone(),
            annotation_prefix: opts.kube_annotation_prefix.clone(),
            net_config_path: opts.net_config_path.clone(),
            set_node_network_unavailable: opts.set_node_network_unavailable,
            node_name: env("NODE_NAME"),
            pod_name: env("POD_NAME"),
            pod_namespace: env("POD_NAMESPACE"),
        };
        let mut backoff = Backoff::new(Duration::from_millis(500), Duration::from_secs(10));
        loop {
            match KubeSource::connect(ko.clone()).await {
                Ok(k) => return Ok(Arc::new(k)),
                Err(e) if e.is_retryable() => {
                    let d = backoff.next_delay();
                    warn!(error = %e, "Kubernetes API unreachable; retrying in {d:?}");
                    tokio::time::sleep(d).await;
                }
                Err(e) => return Err(anyhow!(e).context("connecting to the Kubernetes API")),
            }
        }
    }
    let mopts = ManagerOptions {
        renew_margin: opts.renew_margin(),
        ..Default::default()
    };
    if let Some(dir) = &opts.local_store {
        let store = subnet::LocalRegistry::open(dir)
            .with_context(|| format!("opening the local lease store {}", dir.display()))?;
        info!(dir = %dir.display(), "using the local lease store");
        let at = format!("the local store {}", dir.display());
        return Ok(Arc::new(StoreSource::new(
            Arc::new(store),
            previous,
            mopts,
            at,
        )));
    }
    let eo = EtcdOptions {
        endpoints: opts.etcd_endpoints.clone(),
        prefix: opts.etcd_prefix.clone(),
        keyfile: opts.etcd_keyfile.clone(),
        certfile: opts.etcd_certfile.clone(),
        cafile: opts.etcd_cafile.clone(),
        username: opts.etcd_username.clone(),
        password: opts.etcd_password.clone(),
        ..Default::default()
    };
    let at = format!("etcd key {}/config", opts.etcd_prefix.trim_end_matches('/'));
    let mut backoff = Backoff::new(Duration::from_millis(500), Duration::from_secs(10));
    loop {
        match EtcdRegistry::connect(eo.clone()).await {
            Ok(r) => return Ok(Arc::new(StoreSource::new(Arc::new(r), previous, mopts, at))),
            Err(e) if e.is_retryable() => {
                let d = backoff.next_delay();
                warn!(error = %e, "etcd unreachable; retrying in {d:?}");
                tokio::time::sleep(d).await;
            }
            Err(e) => return Err(anyhow!(e).context("connecting to etcd")),
        }
    }
}

/// Asks `what` until it answers or fails for good; a wait (no config yet, no podCIDR yet) is logged and shown on
/// `/readyz`.
async fn retrying<T, F, Fut>(what: &str, state: &health::State, mut f: F) -> Result<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, ManagerError>>,
{
    let mut backoff = Backoff::new(Duration::from_secs(1), Duration::from_secs(30));
    loop {
        match f().await {
            Ok(v) => {
                state.set_waiting(None);
                return Ok(v);
            }
            Err(e) if e.is_retryable() => {
                let d = backoff.next_delay();
                warn!(error = %e, "{what}: retrying in {d:?}");
                state.set_waiting(Some(format!("{what}: {e}")));
                tokio::time::sleep(d).await;
            }
            Err(e) => return Err(anyhow!(e).context(what.to_string())),
        }
    }
}

fn previous_key(prev: &Option<SubnetEnv>) -> Option<SubnetKey> {
    let p = prev.as_ref()?;
    let v4 = p.subnet.and_then(|n| match n {
        IpNet::V4(n) => Some(n.trunc()),
        IpNet::V6(_) => None,
    });
    let v6 = p.ipv6_subnet.and_then(|n| match n {
        IpNet::V6(n) => Some(n.trunc()),
        IpNet::V4(_) => None,
    });
    if v4.is_none() && v6.is_none() {
        return None;
    }
    Some(SubnetKey {
        ipv4: v4.unwrap_or(NO_IPV4_SUBNET),
        ipv6: v6,
    })
}

fn first_host4(n: Ipv4Net) -> Result<Ipv4Net> {
    let ip = Ipv4Addr::from(u32::from(n.network()).saturating_add(1));
    Ok(Ipv4Net::new(ip, n.prefix_len())?)
}

fn first_host6(n: Ipv6Net) -> Result<Ipv6Net> {
    let ip = std::net::Ipv6Addr::from(u128::from(n.network()).saturating_add(1));
    Ok(Ipv6Net::new(ip, n.prefix_len())?)
}

fn v4_of(n: &Option<IpNet>) -> Option<Ipv4Net> {
    match n {
        Some(IpNet::V4(v)) => Some(v.trunc()),
        _ => None,
    }
}

fn v6_of(n: &Option<IpNet>) -> Option<Ipv6Net> {
    match n {
        Some(IpNet::V6(v)) => Some(v.trunc()),
        _ => None,
    }
}

async fn blocking<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> Result<T> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| anyhow!("background task failed: {e}"))
}

fn sd_notify_ready() {
    // The systemd protocol is one datagram on $NOTIFY_SOCKET; no crate needed for that.
    let Ok(path) = std::env::var("NOTIFY_SOCKET") else {
        return;
    };
    let Ok(sock) = std::os::unix::net::UnixDatagram::unbound() else {
        return;
    };
    let r = if let Some(abstract_name) = path.strip_prefix('@') {
        use std::os::linux::net::SocketAddrExt;
        std::os::unix::net::SocketAddr::from_abstract_name(abstract_name.as_bytes())
            .and_then(|a| sock.send_to_addr(b"READY=1", &a))
    } else {
        sock.send_to(b"READY=1", &path)
    };
    if let Err(e) = r {
        warn!(error = %e, "sd_notify READY=1 failed");
    }
}

/// Runs the daemon until it should exit.
pub async fn run(opts: Options) -> Result<Exit> {
    let state = Arc::new(health::State::default());
    state.set_status_remote(opts.status_remote);
    if let Some(addr) = opts.healthz_addr() {
        let addr: SocketAddr = addr
            .parse()
            .with_context(|| format!("--healthz-ip/--healthz-port: invalid address {addr}"))?;
        health::serve(addr, state.clone()).await?;
    }

    let previous = subnet_env::read(&opts.subnet_file);
    let manager = subnet_manager(&opts, previous_key(&previous)).await?;
    info!("subnet manager: {}", manager.name());
    let cfg = retrying("couldn't fetch network config", &state, || {
        manager.network_config()
    })
    .await?;
    info!(network = ?cfg.network, ipv6_network = ?cfg.ipv6_network, backend = %cfg.backend_type, "network config");
    let stack = IpStack::from_enabled(cfg.enable_ipv4, cfg.enable_ipv6)?;
    if !cfg.enable_nftables
        && !std::path::Path::new("/proc/sys/net/bridge/bridge-nf-call-iptables").exists()
    {
        warn!("br_netfilter is not loaded: pod traffic crossing cni0 will not traverse iptables (kube-proxy services may break)");
    }

    // What the source remembers of this node: the public IP it must use (Kubernetes: node-public-ip, as
    // --public-ip) and the VTEP MACs it announced (a restarted node announces the same ones).
    let stored = manager.stored().await;
    let mut select = SelectOptions::from_cli(&opts);
    if opts.public_ip.is_none() && stored.public_ip.is_some() {
        info!(public_ip = ?stored.public_ip, "using the public IP the node's annotation names");
        select.public_ip = stored.public_ip;
    }
    if opts.public_ipv6.is_none() && stored.public_ipv6.is_some() {
        info!(public_ipv6 = ?stored.public_ipv6, "using the public IPv6 the node's annotation names");
        select.public_ipv6 = stored.public_ipv6;
    }
    let nl = Netlink::current()?;
    let ext = iface::lookup(&nl, &select, stack).await?;
    let mut local = Local {
        network: cfg.network.filter(|_| cfg.enable_ipv4),
        ipv6_network: cfg.ipv6_network.filter(|_| cfg.enable_ipv6),
        subnet: None,
        ipv6_subnet: None,
        ext_index: ext.index,
        ext_name: ext.name.clone(),
        ext_mtu: ext.mtu,
        iface_addr: ext.iface_addr,
        iface_v6_addr: ext.iface_v6_addr,
        public_ip: ext.ext_addr,
        public_ipv6: ext.ext_v6_addr,
    };
    let mut backend = backend::build(&cfg.backend_type, &cfg.backend, &local)?;
    let stored_mac = |d: &Option<subnet::BackendData>| {
        d.as_ref()
            .and_then(|d| crate::admission::check_vtep_mac(Some(d), "stored backend data").ok())
    };
    backend.prefer_vtep_macs(
        stored_mac(&stored.backend_data),
        stored_mac(&stored.backend_v6_data),
    );
    info!(
        "using backend {} on interface {}",
        backend.type_name(),
        local.ext_name
    );
    let published = backend.setup(&nl).await?;

    let attrs = lease_attrs(&local, &published);
    let lease = retrying("acquiring a subnet lease", &state, || {
        manager.acquire(&cfg, &attrs)
    })
    .await?;
    info!("acquired lease: {}", lease.key().cidrs());
    if cfg.enable_ipv4 {
        local.subnet = Some(lease.subnet);
    }
    local.ipv6_subnet = lease.ipv6_subnet.filter(|_| cfg.enable_ipv6);
    backend.set_lease(&nl, &local).await?;
    state.set_backend_status(backend.status_source());

    // Traffic rules (they spawn iptables/nft, so off the async threads).
    let mode = Mode::from_enable_nftables(cfg.enable_nftables);
    let masq = MasqConfig {
        v4: local
            .network
            .zip(local.subnet)
            .map(|(network, subnet)| NetPair { network, subnet }),
        v6: local
            .ipv6_network
            .zip(local.ipv6_subnet)
            .map(|(network, subnet)| NetPair { network, subnet }),
        prev_v4: previous.as_ref().and_then(|p| {
            let n = p.networks.iter().find_map(|n| v4_of(&Some(*n)))?;
            Some(NetPair {
                network: n,
                subnet: v4_of(&p.subnet)?,
            })
        }),
        prev_v6: previous.as_ref().and_then(|p| {
            let n = p.ipv6_networks.iter().find_map(|n| v6_of(&Some(*n)))?;
            Some(NetPair {
                network: n,
                subnet: v6_of(&p.ipv6_subnet)?,
            })
        }),
        fully_random_disable: opts.ip_masq_fully_random_disable,
    };
    let (ip_masq, fwd) = (opts.ip_masq, opts.iptables_forward_rules);
    let (net4, net6) = (local.network, local.ipv6_network);
    let traffic = blocking(move || -> Result<TrafficManager> {
        // In a container image `iptables` is the image's variant, which may not be the host's (a packet must pass
        // both variants' FORWARD): use the one the kubelet's and the host's rules are in (upstream's image does
        // the same with a wrapper script).
        match kernel::firewall::detect_iptables_variant() {
            Some((v, why)) => {
                kernel::firewall::set_iptables_variant(v);
                info!(variant = ?v, "iptables variant chosen: {why}");
            }
            None => debug!("iptables variant: the system's (nothing on this host to go by)"),
        }
        let mut tm = TrafficManager::new(mode);
        if let Err(e) = tm.cleanup_other_mode() {
            warn!(error = %e, "failed to clean up the other traffic mode's rules");
        }
        tm.init()?;
        if ip_masq {
            tm.setup_and_ensure_masq_rules(&masq)?;
        }
        if fwd {
            tm.setup_and_ensure_forward_rules(net4, net6)?;
        }
        Ok(tm)
    })
    .await??;

    if opts.ip_blackhole_route {
        ensure_blackhole(&nl, &local).await;
    }

    let env = SubnetEnv {
        networks: local.network.map(IpNet::V4).into_iter().collect(),
        subnet: local.subnet.map(first_host4).transpose()?.map(IpNet::V4),
        ipv6_networks: local.ipv6_network.map(IpNet::V6).into_iter().collect(),
        ipv6_subnet: local
            .ipv6_subnet
            .map(first_host6)
            .transpose()?
            .map(IpNet::V6),
        mtu: published.mtu,
        ipmasq: opts.ip_masq,
    };
    subnet_env::write(&opts.subnet_file, &env)
        .with_context(|| format!("writing subnet file {}", opts.subnet_file.display()))?;
    let base = StatusBase {
        subnet_file: opts.subnet_file.display().to_string(),
        config: json!({
            "Network": cfg.network.map(|n| n.to_string()),
            "IPv6Network": cfg.ipv6_network.map(|n| n.to_string()),
            "EnableIPv4": cfg.enable_ipv4,
            "EnableIPv6": cfg.enable_ipv6,
            "EnableNFTables": cfg.enable_nftables,
            "Backend": cfg.backend,
        }),
    };
    state.set_base(base.render(&local, &published));
    state.set_ready(true);
    sd_notify_ready();
    info!(subnet_file = %opts.subnet_file.display(), mtu = published.mtu, "ready");
    // The source hears that the node is up (Kubernetes: NetworkUnavailable=False), retried in the background.
    let completer = {
        let (m, l) = (manager.clone(), lease.clone());
        tokio::spawn(async move {
            let mut backoff = Backoff::new(Duration::from_secs(1), Duration::from_secs(60));
            loop {
                match m.complete(&l).await {
                    Ok(()) => return,
                    Err(e) => {
                        let d = backoff.next_delay();
                        warn!(error = %e, "telling the subnet manager the node is up failed; retrying in {d:?}");
                        tokio::time::sleep(d).await;
                    }
                }
            }
        })
    };

    // Loops.
    let watcher = manager.watch_peers(lease.key());
    let rx = watcher.subscribe();
    state.set_peers(watcher.subscribe());
    let mut rules = NetworkRules::from_config(&cfg);
    if manager.subnet_len_from_own_lease() {
        // Kubernetes hands every node a podCIDR of one size (the controller manager's mask): that, not the
        // config's SubnetLen, is what a peer's subnet must have.
        rules.v4 = rules
            .v4
            .zip(local.subnet)
            .map(|((n, _), s)| (n, s.prefix_len()));
        rules.v6 = rules
            .v6
            .zip(local.ipv6_subnet)
            .map(|((n, _), s)| (n, s.prefix_len()));
    }
    let admission = Admission::new(rules, local.subnet, local.ipv6_subnet);
    // What the lease publishes: the reconciler updates it when a recreated device differs, the keeper writes it.
    let (attrs_tx, attrs_rx) = watch::channel(attrs);
    let reconciler = tokio::spawn(reconcile_loop(Reconciler {
        backend,
        nl: nl.clone(),
        local: local.clone(),
        rx,
        state: state.clone(),
        admission,
        published,
        attrs: attrs_tx,
        base,
    }));
    let resync = opts.iptables_resync_period();
    let blackhole = opts.ip_blackhole_route;
    let rules_task = tokio::spawn(rules_loop(
        traffic,
        resync,
        blackhole.then(|| (nl.clone(), local.clone())),
    ));
    let keeper = {
        let (m, c) = (manager.clone(), cfg.clone());
        tokio::spawn(async move { m.keep(&c, lease, attrs_rx).await })
    };

    let exit = tokio::select! {
        s = shutdown_signal() => {
            info!("received {s}; exiting and leaving routes in place");
            Exit::Signal
        }
        r = keeper => {
            match r {
                Ok(LeaseEnd::Revoked(l)) => error!(key = %l.key(), "lease has been revoked; shutting down daemon"),
                Err(e) => error!(error = %e, "lease keeper failed"),
            }
            Exit::LeaseRevoked
        }
    };
    reconciler.abort();
    rules_task.abort();
    completer.abort();
    drop(watcher);
    state.set_ready(false);
    Ok(exit)
}

async fn shutdown_signal() -> &'static str {
    use tokio::signal::unix::{signal, SignalKind};
    let (Ok(mut term), Ok(mut int)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) else {
        // Without signal handlers the process still dies on SIGTERM by default.
        std::future::pending::<()>().await;
        return "nothing";
    };
    tokio::select! {
        _ = term.recv() => "SIGTERM",
        _ = int.recv() => "SIGINT",
    }
}

async fn ensure_blackhole(nl: &Netlink, local: &Local) {
    for dst in local
        .subnet
        .map(IpNet::V4)
        .into_iter()
        .chain(local.ipv6_subnet.map(IpNet::V6))
    {
        let mut r = kernel::route::Route::new(dst);
        r.blackhole = true;
        if let Err(e) = nl.add_route(&r, false).await {
            warn!(error = %e, %dst, "failed to add blackhole route");
        }
    }
}

async fn rules_loop(mut tm: TrafficManager, every: Duration, blackhole: Option<(Netlink, Local)>) {
    let mut tick = tokio::time::interval(every.max(Duration::from_secs(1)));
    tick.tick().await;
    loop {
        tick.tick().await;
        let (back, res) = match tokio::task::spawn_blocking(move || {
            let r = tm.ensure();
            (tm, r)
        })
        .await
        {
            Ok(x) => x,
            Err(e) => {
                error!(error = %e, "traffic rule check panicked; stopping the check");
                return;
            }
        };
        tm = back;
        match res {
            Ok(true) => warn!("traffic rules were missing or changed; restored them"),
            Ok(false) => debug!("traffic rules in place"),
            Err(e) => warn!(error = %e, "checking traffic rules failed"),
        }
        if let Some((nl, local)) = &blackhole {
            ensure_blackhole(nl, local).await;
        }
    }
}

/// What this node publishes in its lease: its public addresses and the backend's data.
fn lease_attrs(local: &Local, published: &Published) -> LeaseAttrs {
    LeaseAttrs {
        public_ip: local.public_ip.unwrap_or(Ipv4Addr::UNSPECIFIED),
        public_ipv6: local.public_ipv6,
        backend_type: published.backend_type.clone(),
        backend_data: published.backend_data.clone(),
        backend_v6_data: published.backend_v6_data.clone(),
    }
}

/// The fixed part of `/status`: the node (re-rendered when the backend publishes something new) and the config.
struct StatusBase {
    subnet_file: String,
    config: serde_json::Value,
}

impl StatusBase {
    fn render(&self, local: &Local, published: &Published) -> serde_json::Value {
        json!({
            "node": {
                "subnet": local.subnet.map(|s| s.to_string()),
                "ipv6Subnet": local.ipv6_subnet.map(|s| s.to_string()),
                "publicIP": local.public_ip.map(|a| a.to_string()),
                "publicIPv6": local.public_ipv6.map(|a| a.to_string()),
                "interface": local.ext_name,
                "backendType": published.backend_type,
                "backendData": published.backend_data,
                "backendV6Data": published.backend_v6_data,
                "mtu": published.mtu,
                "subnetFile": self.subnet_file,
            },
            "config": self.config,
        })
    }
}

/// The reconcile loop's state.
struct Reconciler {
    backend: Box<dyn Backend>,
    nl: Netlink,
    local: Local,
    rx: watch::Receiver<PeerSnapshot>,
    state: Arc<health::State>,
    admission: Admission,
    /// What the backend last published (to notice a recreated device that announces something else).
    published: Published,
    attrs: watch::Sender<LeaseAttrs>,
    base: StatusBase,
}

impl Reconciler {
    /// Recreates the backend's devices when someone deleted them; a device that comes back different (it should
    /// not: it keeps its MAC) is published in the lease.
    async fn ensure_devices(&mut self) {
        match self.backend.devices_present(&self.nl).await {
            Ok(true) => return,
            Ok(false) => warn!("backend device disappeared; recreating it"),
            Err(e) => {
                warn!(error = %e, "checking backend devices failed");
                return;
            }
        }
        let made = async {
            let p = self.backend.setup(&self.nl).await?;
            self.backend.set_lease(&self.nl, &self.local).await?;
            Ok::<_, crate::backend::BackendError>(p)
        }
        .await;
        match made {
            Ok(p) if p != self.published => {
                warn!(backend_data = ?p.backend_data, "recreated backend device publishes new data; updating the lease");
                self.state.set_base(self.base.render(&self.local, &p));
                self.attrs.send_replace(lease_attrs(&self.local, &p));
                self.published = p;
            }
            Ok(_) => info!("backend device recreated"),
            Err(e) => error!(error = %e, "recreating the backend device failed"),
        }
    }
}

async fn reconcile_loop(mut r: Reconciler) {
    // Whether the last reconcile pass succeeded (a failed one is retried sooner).
    let mut last_ok = true;
    loop {
        // An unsynced snapshot means "peers unknown": acting on it could remove working routes.
        let synced = r.rx.borrow().synced;
        if synced {
            r.ensure_devices().await;
            if let Err(e) = r.backend.refresh(&r.nl).await {
                warn!(error = %e, "reading the external interface's addresses failed");
            }
            // Admission reads the snapshot in place and copies out only the admitted peers (compact) and their
            // keys; the snapshot itself stays shared with the watcher and /status.
            let (generation, revision, mut admitted, refused_before) = {
                let snap = r.rx.borrow_and_update();
                let before = r.admission.refused().len();
                let a = r.admission.admit(&snap.leases, &*r.backend);
                (snap.generation, snap.revision, a, before)
            };
            if refused_before != 0 || !r.admission.refused().is_empty() {
                r.state.set_refused(r.admission.refused().clone());
            }
            let t = Instant::now();
            let result = r.backend.reconcile(&r.nl, &admitted.peers).await;
            let took = t.elapsed();
            let mut busy = false;
            match &result {
                Ok(rep) if rep.added + rep.removed > 0 => {
                    busy = rep.added + rep.removed >= TRIM_AFTER;
                    info!(
                        peers = admitted.peers.len(),
                        refused = r.admission.refused().len(),
                        added = rep.added,
                        removed = rep.removed,
                        generation,
                        "reconciled in {took:?}"
                    )
                }
                Ok(_) => debug!(peers = admitted.peers.len(), "in sync ({took:?})"),
                Err(e) => warn!(error = %e, "reconcile failed; will retry"),
            }
            last_ok = result.is_ok();
            admitted.log_changes();
            let keys = std::mem::take(&mut admitted.keys);
            // The pass's copies go before the trim below, so what it hands back includes them.
            drop(admitted);
            r.state.set_last_reconcile(health::LastReconcile {
                generation,
                revision,
                ok: last_ok,
                error: result.as_ref().err().map(|e| e.to_string()),
                micros: took.as_micros() as u64,
                keys,
            });
            if busy {
                crate::memory::release_free_heap();
            }
        } else {
            r.rx.borrow_and_update();
        }
        let wait = if synced && last_ok {
            RESYNC
        } else {
            Duration::from_secs(1)
        };
        tokio::select! {
            res = r.rx.changed() => if res.is_err() { return },
            _ = tokio::time::sleep(wait) => {}
        }
    }
}

/// Refused leases as `/status` lists them.
pub type Refused = BTreeMap<SubnetKey, crate::admission::Refusal>;
