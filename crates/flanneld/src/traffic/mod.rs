//! Traffic rules: upstream flannel's masquerade and forward rules (flannel.md §1.1 steps 9–10, §1.7), with iptables
//! (default) or nftables (`EnableNFTables`).
//!
//! * iptables mode ([`Mode::Iptables`]): chains `nat/FLANNEL-POSTRTG` and `filter/FLANNEL-FWD`, jumped to from
//!   `POSTROUTING` / `FORWARD`, every rule commented `flanneld masq` / `flanneld forward`. The rule text is
//!   upstream's byte for byte (upstream's end-to-end tests compare `iptables -S` output). Each family and table is
//!   written with one `iptables-restore --noflush` (atomic per table).
//! * nftables mode ([`Mode::Nftables`]): tables `ip flannel-ipv4` / `ip6 flannel-ipv6` with chains `postrtg`
//!   (nat, postrouting, srcnat) and `forward` (filter, forward, filter); each family's table is rewritten in one
//!   `nft -f -` transaction.
//!
//! Everything runs in the calling thread's network namespace (the tools are child processes). All calls block on
//! child processes (a few milliseconds each): from async code, call them via `tokio::task::spawn_blocking`, moving
//! the manager in and out (it is `Send`) or keeping it behind a `std::sync::Mutex`.
//!
//! Daemon sequence (upstream `main.go`):
//!
//! ```text
//! let mut tm = TrafficManager::new(Mode::from_enable_nftables(cfg.enable_nftables));
//! tm.cleanup_other_mode()               // log a failure as a warning and go on (upstream does)
//! tm.init()?                            // fatal if it fails
//! if ip_masq { tm.setup_and_ensure_masq_rules(&masq_config)? }
//! if iptables_forward_rules { tm.setup_and_ensure_forward_rules(v4_network, v6_network)? }
//! // write subnet.env; /readyz turns 200 once the above succeeded
//! every --iptables-resync seconds: tm.ensure()   // log errors, keep going
//! ```
//!
//! On SIGTERM the rules are left in place (pods keep their connectivity across a restart); [`TrafficManager::cleanup`]
//! exists for an explicit teardown.

mod iptables;
mod nftables;

use ipnet::{IpNet, Ipv4Net, Ipv6Net};
use kernel::firewall::Family;
pub use kernel::{Error, Result};

/// The mark kube-proxy sets on packets it will masquerade itself; flannel leaves them alone.
pub const KUBE_PROXY_MARK: &str = "0x4000/0x4000";

/// Which firewall framework holds the rules.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// iptables / ip6tables (legacy or nf_tables flavour); the default.
    Iptables,
    /// nftables tables `flannel-ipv4` / `flannel-ipv6` (network config `EnableNFTables: true`).
    Nftables,
}

impl Mode {
    /// The mode the network config's `EnableNFTables` selects.
    pub fn from_enable_nftables(enable: bool) -> Self {
        if enable {
            Self::Nftables
        } else {
            Self::Iptables
        }
    }

    /// The other mode, whose leftovers are removed at start.
    pub fn other(self) -> Self {
        match self {
            Self::Iptables => Self::Nftables,
            Self::Nftables => Self::Iptables,
        }
    }

    /// `"iptables"` or `"nftables"`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Iptables => "iptables",
            Self::Nftables => "nftables",
        }
    }
}

/// A flannel network and this node's lease subnet inside it, of one address family.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NetPair<N> {
    /// The flannel network (`Network` / `IPv6Network`), e.g. `10.244.0.0/16`.
    pub network: N,
    /// This node's lease subnet, e.g. `10.244.3.0/24` (host bits, as in subnet.env's `10.244.3.1/24`, are ignored).
    pub subnet: N,
}

/// Input of [`TrafficManager::setup_and_ensure_masq_rules`].
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct MasqConfig {
    /// IPv4 network and lease subnet; `None` when IPv4 is disabled.
    pub v4: Option<NetPair<Ipv4Net>>,
    /// IPv6 network and lease subnet; `None` when IPv6 is disabled.
    pub v6: Option<NetPair<Ipv6Net>>,
    /// `FLANNEL_NETWORK` / `FLANNEL_SUBNET` of the previous subnet.env, if it had both.
    pub prev_v4: Option<NetPair<Ipv4Net>>,
    /// `FLANNEL_IPV6_NETWORK` / `FLANNEL_IPV6_SUBNET` of the previous subnet.env, if it had both.
    pub prev_v6: Option<NetPair<Ipv6Net>>,
    /// `--ip-masq-fully-random-disable`: never use `--random-fully` / `fully-random`.
    pub fully_random_disable: bool,
}

/// The masquerade rules of one family, normalised: both prefixes truncated to their network address.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Masq {
    family: Family,
    network: IpNet,
    subnet: IpNet,
    fully_random: bool,
}

impl Masq {
    fn new(network: IpNet, subnet: IpNet, fully_random: bool) -> Self {
        Self {
            family: Family::of(&network),
            network: network.trunc(),
            subnet: subnet.trunc(),
            fully_random,
        }
    }
}

/// The per-family masquerade inputs of a [`MasqConfig`]: `(family, current, previous)` as `(network, subnet)`.
type FamilyMasq = (Family, Option<(IpNet, IpNet)>, Option<(IpNet, IpNet)>);

impl MasqConfig {
    fn families(&self) -> [FamilyMasq; 2] {
        let v4 = |p: &NetPair<Ipv4Net>| (IpNet::V4(p.network), IpNet::V4(p.subnet));
        let v6 = |p: &NetPair<Ipv6Net>| (IpNet::V6(p.network), IpNet::V6(p.subnet));
        [
            (
                Family::V4,
                self.v4.as_ref().map(v4),
                self.prev_v4.as_ref().map(v4),
            ),
            (
                Family::V6,
                self.v6.as_ref().map(v6),
                self.prev_v6.as_ref().map(v6),
            ),
        ]
    }
}

/// Logs (as upstream does) when the network or subnet differs from the previous subnet.env's; the setup that
/// follows rewrites flannel's chain, which removes the old rules.
fn log_recycle(mode: Mode, family: Family, cur: (IpNet, IpNet), prev: Option<(IpNet, IpNet)>) {
    let norm = |(n, s): (IpNet, IpNet)| (n.trunc(), s.trunc());
    if prev.map(norm) != Some(norm(cur)) {
        tracing::info!(
            mode = mode.as_str(),
            ?family,
            network = %cur.0,
            subnet = %cur.1,
            prev_network = ?prev.map(|p| p.0.to_string()),
            prev_subnet = ?prev.map(|p| p.1.to_string()),
            "network or subnet differs from the previous one; replacing the old masquerade rules"
        );
    }
}

enum Backend {
    Iptables(iptables::Manager),
    Nftables(nftables::Manager),
}

/// Installs flannel's traffic rules and keeps them in place.
///
/// Remembers what was set up, so that [`ensure`](Self::ensure) can check and repair it.
pub struct TrafficManager {
    mode: Mode,
    backend: Backend,
}

impl TrafficManager {
    /// A manager for `mode`; touches nothing until called.
    pub fn new(mode: Mode) -> Self {
        let backend = match mode {
            Mode::Iptables => Backend::Iptables(iptables::Manager::default()),
            Mode::Nftables => Backend::Nftables(nftables::Manager::default()),
        };
        Self { mode, backend }
    }

    /// The mode this manager writes.
    pub fn mode(&self) -> Mode {
        self.mode
    }

    /// Removes the other mode's leftovers (upstream step 9: nftables tables when using iptables, and vice versa).
    ///
    /// A missing tool or table is nothing to remove. Upstream only logs a failure here.
    pub fn cleanup_other_mode(&self) -> Result<()> {
        cleanup(self.mode.other())
    }

    /// Prepares the mode. nftables: creates both tables (empty, commented `rules for flannel-ipv4|6` as upstream)
    /// and probes `masquerade fully-random`; an error means nftables is unusable (upstream exits). iptables: probes
    /// the iptables version for `--random-fully` (>= 1.6.2, as go-iptables); never fails.
    pub fn init(&mut self) -> Result<()> {
        tracing::info!(
            "starting flannel traffic rules in {} mode",
            self.mode.as_str()
        );
        match &mut self.backend {
            Backend::Iptables(m) => {
                m.init();
                Ok(())
            }
            Backend::Nftables(m) => m.init(),
        }
    }

    /// Installs the masquerade rules of each configured family and keeps them for [`ensure`](Self::ensure).
    ///
    /// Idempotent: when the rules are already in place nothing is written. Stale flannel rules (another network or
    /// subnet, e.g. from the previous subnet.env, duplicates, or the pre-chain layout directly in `POSTROUTING`) are
    /// replaced in the same atomic write. A family that is `None` is left alone, as upstream does. An error leaves
    /// the family registered, so the next `ensure` tries again.
    pub fn setup_and_ensure_masq_rules(&mut self, cfg: &MasqConfig) -> Result<()> {
        let mode = self.mode;
        let mut wanted = Vec::new();
        for (family, cur, prev) in cfg.families() {
            let Some(cur) = cur else { continue };
            log_recycle(mode, family, cur, prev);
            wanted.push((family, cur));
        }
        match &mut self.backend {
            Backend::Iptables(m) => m.setup_masq(&wanted, cfg.fully_random_disable),
            Backend::Nftables(m) => m.setup_masq(&wanted, cfg.fully_random_disable),
        }
    }

    /// Installs the forward-accept rules for each given flannel network and keeps them for
    /// [`ensure`](Self::ensure). Idempotent, like [`setup_and_ensure_masq_rules`](Self::setup_and_ensure_masq_rules).
    pub fn setup_and_ensure_forward_rules(
        &mut self,
        v4: Option<Ipv4Net>,
        v6: Option<Ipv6Net>,
    ) -> Result<()> {
        let nets: Vec<IpNet> = v4
            .map(IpNet::V4)
            .into_iter()
            .chain(v6.map(IpNet::V6))
            .map(|n| n.trunc())
            .collect();
        match &mut self.backend {
            Backend::Iptables(m) => m.setup_forward(&nets),
            Backend::Nftables(m) => m.setup_forward(&nets),
        }
    }

    /// The periodic check (every `--iptables-resync` seconds): verifies that everything set up so far is in place,
    /// complete and in order, and rewrites what is not. Returns whether anything was repaired.
    ///
    /// Cost when all is well: iptables, one `iptables-save -t <table>` per family and table in use, run
    /// concurrently; nftables, one `nft list table` per family in use, run concurrently. No writes.
    pub fn ensure(&mut self) -> Result<bool> {
        match &mut self.backend {
            Backend::Iptables(m) => m.ensure(),
            Backend::Nftables(m) => m.ensure(),
        }
    }

    /// Removes all of flannel's rules of this mode and forgets them (so `ensure` no longer restores them).
    pub fn cleanup(&mut self) -> Result<()> {
        match &mut self.backend {
            Backend::Iptables(m) => m.forget(),
            Backend::Nftables(m) => m.forget(),
        }
        cleanup(self.mode)
    }
}

/// Removes all of flannel's rules of `mode` from the current network namespace: iptables, the `FLANNEL-POSTRTG` /
/// `FLANNEL-FWD` chains and every rule jumping to them or carrying flannel's comments in `POSTROUTING` / `FORWARD`
/// (both families); nftables, the tables `ip flannel-ipv4` and `ip6 flannel-ipv6`.
///
/// A missing tool, table or chain is nothing to remove.
pub fn cleanup(mode: Mode) -> Result<()> {
    tracing::info!("removing flannel's {} rules", mode.as_str());
    match mode {
        Mode::Iptables => iptables::cleanup(),
        Mode::Nftables => nftables::cleanup(),
    }
}
