//! `flannelctl`: the flannel-rs command-line tool.

mod bench_chain;
mod bench_cni;
mod bench_floor;
mod bench_net;
mod http;
mod interrupt;
mod lab;
mod netns;
mod status;

use clap::{Args, Parser, Subcommand};
use std::path::PathBuf;

#[derive(Debug, Parser)]
#[command(
    name = "flannelctl",
    version,
    about = "flannel-rs command-line tool: benchmarks and diagnostics"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// A whole flannel cluster on this machine: nodes and pods in network namespaces, real flanneld and CNI plugins.
    Lab {
        #[command(subcommand)]
        what: Lab,
    },
    /// This node's lease, the network config and every peer, from flanneld's status endpoint.
    Status {
        /// flanneld's health address (--healthz-ip:--healthz-port).
        #[arg(long, default_value = "127.0.0.1:8081")]
        addr: std::net::SocketAddr,
        /// Output format.
        #[arg(long, short = 'o', default_value = "text", value_parser = ["text", "json"])]
        output: String,
    },
    /// Benchmarks that print their numbers next to a baseline measured in the same run.
    Bench {
        #[command(subcommand)]
        what: Bench,
    },
}

#[derive(Debug, Subcommand)]
enum Lab {
    /// Build the lab, start flanneld on every node, attach pods, prove connectivity, measure throughput.
    Up {
        /// Number of nodes.
        #[arg(long, default_value_t = 3)]
        nodes: usize,
        /// Pods per node.
        #[arg(long, default_value_t = 2)]
        pods_per_node: usize,
        /// Backend.
        #[arg(long, default_value = "vxlan", value_parser = ["vxlan", "host-gw", "udp"])]
        backend: String,
        /// Lease store: the embedded one, or an etcd the lab starts.
        #[arg(long, default_value = "local", value_parser = ["local", "etcd"])]
        store: String,
        /// Skip the throughput test.
        #[arg(long)]
        no_throughput: bool,
        /// Directory with flanneld and the CNI plugins [default: the directory of flannelctl].
        #[arg(long, value_name = "DIR")]
        bin_dir: Option<PathBuf>,
    },
    /// Show nodes, pods and daemons.
    Status,
    /// Run a command inside a node or pod namespace: `flannelctl lab exec n1-p1 -- ping 10.244.5.2`.
    Exec {
        /// Node (n1), pod (n1-p1) or `fabric`.
        target: String,
        /// The command.
        #[arg(last = true, required = true)]
        cmd: Vec<String>,
    },
    /// Remove every namespace, process and file the lab made (also after an interrupted `lab up`).
    Down,
}

#[derive(Debug, Subcommand)]
enum Bench {
    /// CNI plugin latency: ADD and DEL of the same config, ours against the reference plugins.
    #[command(long_about = CNI_LONG_ABOUT)]
    Cni(CniArgs),
    /// Pod-to-pod TCP throughput and latency across two nodes: each flanneld backend against the same path
    /// configured by hand (kernel VXLAN, plain routing) and against a plain veth pair; the udp backend (offload
    /// path and forced one-packet-per-syscall path) against kernel VXLAN. 1 and 4 streams, CPU seconds per GB.
    Dataplane {
        /// iperf3 seconds per measurement (1 and 4 TCP streams; one more second is omitted as warm-up).
        #[arg(long, default_value_t = 5)]
        seconds: u32,
        /// Rounds over all paths, interleaved (medians reported).
        #[arg(long, default_value_t = 3)]
        rounds: u32,
        /// Also measure a second, identical hand-made path per backend (A/A control: the noise of a ratio).
        #[arg(long)]
        control: bool,
        /// Only these groups of paths, comma-separated: veth, vxlan, host-gw, udp (udp brings its baseline, the
        /// hand-made kernel VXLAN) [default: all].
        #[arg(long, value_delimiter = ',', value_parser = ["veth", "vxlan", "host-gw", "udp"])]
        paths: Vec<String>,
        /// Print the results as JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Convergence: a new lease in etcd -> route, neighbour and FDB entry on every node, for 3 real nodes and
    /// for thousands of simulated peers.
    Convergence {
        /// Simulated peer counts, comma-separated.
        #[arg(long, default_value = "1000,5000")]
        peers: String,
        /// Synthetic lease joins (and leaves) in the 3-node cluster.
        #[arg(long, default_value_t = 20)]
        joins: usize,
        /// Real node joins (flanneld started on node 3) in the 3-node cluster.
        #[arg(long, default_value_t = 5)]
        node_joins: usize,
        /// Runs per simulated peer count.
        #[arg(long, default_value_t = 3)]
        repeat: usize,
        /// Print the results as JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Kubernetes mode (--kube-subnet-mgr) with N Nodes from a fake API server: flanneld start -> all peers
    /// programmed, join latency, memory; against the same flanneld with N peers in etcd, rounds interleaved.
    #[command(long_about = KUBE_LONG_ABOUT)]
    Kube {
        /// Peer Node counts (besides flanneld's own Node), comma-separated.
        #[arg(long, default_value = "1000,5000")]
        nodes: String,
        /// Rounds: every count with both stores once per round, in alternating order.
        #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u32).range(1..=20))]
        rounds: u32,
        /// Peers that join one at a time after convergence, per run (their latencies are pooled).
        #[arg(long, default_value_t = 50, value_parser = clap::value_parser!(u32).range(0..=1000))]
        joins: u32,
        /// Print the results as JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// flanneld's resident memory (VmRSS, VmHWM) at idle and with N peers programmed.
    Memory {
        /// Simulated peers.
        #[arg(long, default_value_t = 5000)]
        peers: usize,
        /// Print the results as JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
}

const CNI_LONG_ABOUT: &str = "\
CNI plugin latency: times ADD and DEL of the same network configuration for each plugin family of --plugins,
ours against the reference plugin of the same name, all in one run:

  bridge:      the reference bridge + host-local (from --reference, Debian's /usr/lib/cni by default), our
               bridge + host-local (from --ours), and our flannel meta-plugin (flannel -> bridge -> host-local,
               delegated in-process), fed by a subnet.env that the benchmark writes (FLANNEL_NETWORK=10.244.0.0/16,
               FLANNEL_MTU=1450, FLANNEL_IPMASQ=true); the baseline of the three is the reference bridge;
  ptp:         ptp (mtu 1450) + host-local, reference and ours;
  macvlan:     macvlan (mode bridge) + host-local on a master link of the node (a veth), reference and ours;
  host-device: host-device + host-local, one device of the node per pod (a veth end), moved into the pod on
               ADD and back on DEL, reference and ours.

A plugin missing from a directory is reported as skipped. The bridge configuration is exactly the one flannel
renders (cni0, isGateway, isDefaultGateway, hairpinMode, mtu 1450, ipMasq off, host-local ranges + route to
10.244.0.0/16); every subject's host-local has the same range and route; cniVersion is 1.0.0 for every subject
(the reference plugins do not speak 1.1.0). The issue's target for ptp, macvlan and host-device: ADD and DEL p50
at least 2x faster than the reference.

For every subject it creates a private node network namespace and N pod namespaces (/run/netns/fb<pid>...),
execs the plugin binaries directly inside the node namespace (setns before exec, no `ip netns exec` wrapper),
and measures the wall time of each plugin process: first ADD on all N pods one after the other, then DEL on all
of them (with the ADD result as prevResult), then the same with C concurrent workers. Creating and deleting
namespaces is outside the timed sections. This is repeated for --rounds rounds, the subjects' order reversed
every round so that none always runs first while the machine drifts; percentiles are over the samples of all
rounds, and the per-round sequential p50 ratios are printed to show the spread. Nothing is configured in the
caller's network namespace; all namespaces and the temporary data directories are removed at the end, also on error or Ctrl-C.

Output: a table with p50/p99 ADD and DEL latency in milliseconds and throughput in pods/s, then the speed-up of
each of ours against the reference (reference/ours for latency, ours/reference for throughput). --json prints
the same numbers as JSON. Needs root.

--chain measures upstream's conflist instead: flannel (the reference: bridge + host-local, Debian has no
flannel plugin), then portmap with one hostPort per pod and the main plugin's result as prevResult, DEL in
reverse order, each call timed: portmap's own ADD and DEL and the chain's, for the reference portmap, ours
(iptables, the reference's layout) and ours with backend nftables (maps); the target is our portmap ADD+DEL
p50 >= 5x faster than the reference's. Then the hostPort new-connection rate: per backend a node with one pod
behind hostPort 8080 and no other mapping, and one with --mappings other attachments' mappings (default 1000),
a client namespace connecting for --seconds per sample (connect, read one byte, reset), the four nodes in
alternating order per round; the target is loaded >= 0.95x unloaded. Underlay 192.0.2.0/24 inside the
namespaces only.";

const KUBE_LONG_ABOUT: &str = "\
flanneld in Kubernetes mode (--kube-subnet-mgr) with N peer Nodes, against the same flanneld with the same N
peers in etcd (the store `bench convergence` uses), both measured in this run.

For every count in --nodes and every round, each store once (the order alternated per round and per count, so
that neither always runs first while the machine drifts), each run on a fresh one-node underlay (a fabric and a
node network namespace, /run/netns/fbn<pid>-..., 192.0.2.0/24), vxlan VNI 1, Network 10.0.0.0/8:

  kube: the fake Kubernetes API server (crate apiserver-fake, inside this process, listening in the fabric
        namespace on https://192.0.2.254:6443) holds flanneld's own Node (a podCIDR, no annotations) and N peer
        Nodes as a real API server returns them: distinct /24 podCIDRs and upstream flannel's annotations
        (backend-type vxlan, backend-data {\"VNI\":1,\"VtepMAC\":...}, public-ip, kube-subnet-manager true;
        the peers' public IPs are from 100.64.0.0/10, FDB destinations only, configured nowhere). flanneld runs with --kube-subnet-mgr, a kubeconfig for it, NODE_NAME and the net-conf.json;
  etcd: etcd in the fabric namespace, the N vxlan leases written in one transaction; flanneld with
        --etcd-endpoints.

Measured for each: the time from flanneld's start to flannel.1 and to every route, neighbour and FDB entry of
the N peers in the node's kernel (netlink dumps); flanneld's CPU time until then and the store's (the API
server's thread, or the etcd process); VmRSS and VmHWM from /proc/PID/status after convergence; then --joins
more peers added one at a time (a Node / a lease) and each one's latency until its entries are present.

Output: a table per count with both stores, the kube/etcd ratios (for the programming time also per round, to
show the spread), and the targets for Kubernetes mode: 5000 nodes programmed <= 3 s, join p99 <= 100 ms, VmRSS
<= 20 MB at 5000. --json prints the same numbers as JSON. Nothing is configured in the caller's network
namespace; every namespace, process and temporary file is removed after each run, also on error or Ctrl-C.
Needs root, the release binaries next to flannelctl, and Debian's etcd-server and etcd-client.";

#[derive(Debug, Args)]
struct CniArgs {
    /// Number of pod namespaces (attachments) per subject.
    #[arg(long, default_value_t = 100, value_parser = clap::value_parser!(u32).range(1..=10_000))]
    pods: u32,
    /// Number of concurrent workers in the concurrent phase.
    #[arg(long, default_value_t = 32, value_parser = clap::value_parser!(u32).range(1..=1024))]
    concurrency: u32,
    /// Rounds, each subject once per round, in alternating order.
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u32).range(1..=20))]
    rounds: u32,
    /// Directory holding our plugins [default: the directory of the flannelctl executable].
    #[arg(long, value_name = "DIR")]
    ours: Option<PathBuf>,
    /// Directory holding the reference plugins (skipped with a note if it has no bridge).
    #[arg(long, value_name = "DIR", default_value = "/usr/lib/cni")]
    reference: PathBuf,
    /// Print the results as JSON instead of a table.
    #[arg(long)]
    json: bool,
    /// The plugin families to measure, comma-separated.
    #[arg(long, value_delimiter = ',', default_value = "bridge,ptp,macvlan,host-device",
          value_parser = ["bridge", "ptp", "macvlan", "host-device"])]
    plugins: Vec<String>,
    /// Measure upstream's conflist instead (flannel, then portmap with one hostPort per pod) against the
    /// reference bridge + portmap, and the hostPort new-connection rate with --mappings other mappings.
    #[arg(long)]
    chain: bool,
    /// With --chain: the other mappings on the loaded node of the connection-rate part.
    #[arg(long, default_value_t = 1000, value_parser = clap::value_parser!(u32).range(1..=30_000))]
    mappings: u32,
    /// With --chain: seconds of connections per connection-rate sample.
    #[arg(long, default_value_t = 2.0)]
    seconds: f64,
}

fn main() {
    let cli = Cli::parse();
    let res = match cli.command {
        Command::Lab { what } => match what {
            Lab::Up {
                nodes,
                pods_per_node,
                backend,
                store,
                no_throughput,
                bin_dir,
            } => (|| {
                let bin_dir = match bin_dir {
                    Some(d) => d,
                    None => bench_cni::default_ours_dir()?,
                };
                lab::up(&lab::UpOptions {
                    nodes,
                    pods_per_node,
                    backend,
                    store,
                    no_throughput,
                    bin_dir,
                })?;
                Ok(0)
            })(),
            Lab::Status => lab::status().map(|_| 0),
            Lab::Exec { target, cmd } => lab::exec(&target, &cmd),
            Lab::Down => lab::down().map(|_| 0),
        },
        Command::Status { addr, output } => status::run(addr, output == "json").map(|_| 0),
        Command::Bench {
            what: Bench::Cni(a),
        } => (|| {
            let ours = match a.ours {
                Some(d) => d,
                None => bench_cni::default_ours_dir()?,
            };
            if a.chain {
                return bench_chain::run(&bench_chain::Options {
                    pods: a.pods as usize,
                    rounds: a.rounds as usize,
                    mappings: a.mappings as usize,
                    seconds: a.seconds,
                    ours,
                    reference: a.reference,
                    json: a.json,
                });
            }
            bench_cni::run(&bench_cni::Options {
                pods: a.pods as usize,
                concurrency: a.concurrency as usize,
                rounds: a.rounds as usize,
                ours,
                reference: a.reference,
                json: a.json,
                families: a
                    .plugins
                    .iter()
                    .filter_map(|p| bench_cni::Family::parse(p))
                    .collect(),
            })
        })(),
        Command::Bench {
            what:
                Bench::Dataplane {
                    seconds,
                    rounds,
                    control,
                    paths,
                    json,
                },
        } => bench_cni::default_ours_dir().and_then(|bins| {
            bench_net::dataplane::run(&bench_net::dataplane::Options {
                seconds,
                rounds,
                bins,
                json,
                control,
                paths,
            })
        }),
        Command::Bench {
            what:
                Bench::Convergence {
                    peers,
                    joins,
                    node_joins,
                    repeat,
                    json,
                },
        } => bench_cni::default_ours_dir().and_then(|bins| {
            bench_net::convergence::run(&bench_net::convergence::Options {
                peers: bench_net::convergence::parse_peers(&peers)?,
                joins,
                node_joins,
                repeat,
                bins,
                json,
            })
        }),
        Command::Bench {
            what:
                Bench::Kube {
                    nodes,
                    rounds,
                    joins,
                    json,
                },
        } => bench_cni::default_ours_dir().and_then(|bins| {
            bench_net::kube::run(&bench_net::kube::Options {
                nodes: bench_net::parse_counts("--nodes", &nodes)?,
                rounds: rounds as usize,
                joins: joins as usize,
                bins,
                json,
            })
        }),
        Command::Bench {
            what: Bench::Memory { peers, json },
        } => bench_cni::default_ours_dir().and_then(|bins| {
            bench_net::memory::run(&bench_net::memory::Options { peers, bins, json })
        }),
    };
    match res {
        Ok(code) => std::process::exit(code),
        Err(e) => {
            eprintln!("flannelctl: error: {e:#}");
            std::process::exit(1);
        }
    }
}
