//! `flannelctl bench convergence`: how fast a new lease in etcd becomes a route, a neighbour entry and an FDB
//! entry on every node, (a) in a cluster of 3 real nodes and (b) for thousands of simulated peers written into
//! etcd at once next to one real node.

use super::probe::{self, Etcd, NodeProbe, Peer, Want};
use super::{
    block_on_in, check_interrupt, machine, machine_line, median, ms, percentile, r3, sorted,
    summary, verdict, Bins, Daemon, Underlay, World,
};
use anyhow::{bail, Result};
use ipnet::Ipv4Net;
use serde_json::{json, Value};
use std::time::{Duration, Instant};

/// The network of the convergence and memory clusters: a /8 so that thousands of /24 leases fit.
pub const NETWORK: &str = "10.0.0.0/8";
/// p99 target for a join.
pub const JOIN_P99_TARGET_MS: f64 = 100.0;
/// Poll period while waiting for one peer's entries (a route lookup per node, dumps once it is there).
pub const JOIN_POLL_US: u64 = 500;
/// Target for programming 5,000 peers.
pub const BULK_TARGET_S: f64 = 3.0;

/// What to run.
#[derive(Debug, Clone)]
pub struct Options {
    /// Simulated peer counts.
    pub peers: Vec<usize>,
    /// Synthetic lease joins in the 3-node cluster.
    pub joins: usize,
    /// Real node joins (flanneld restarts) in the 3-node cluster.
    pub node_joins: usize,
    /// Repetitions of each simulated-peer size.
    pub repeat: usize,
    /// Where flanneld is.
    pub bins: std::path::PathBuf,
    /// JSON output.
    pub json: bool,
}

/// The network config of these clusters.
pub fn config() -> String {
    format!(r#"{{"Network":"{NETWORK}","Backend":{{"Type":"vxlan"}}}}"#)
}

/// flanneld's own time for its last reconcile pass, from `/status`.
pub fn last_reconcile_us(d: &Daemon) -> Option<f64> {
    d.status()
        .ok()?
        .pointer("/lastReconcile/micros")
        .and_then(Value::as_f64)
}

/// Runs the benchmark; returns the exit code.
pub fn run(o: &Options) -> Result<i32> {
    let bins = Bins::find(&o.bins)?;
    if o.peers.iter().any(|&n| n == 0 || n > 20_000) {
        bail!("--peers: each count must be between 1 and 20000");
    }
    let world = World::new("convergence")?;
    let m = machine();
    if !o.json {
        eprintln!("{}", machine_line(&m));
    }
    let three = three_nodes(&world, &bins, o);
    if let Err(e) = &three {
        eprintln!("3-node part failed: {e:#}");
    }
    let sim = simulated(&world, &bins, o);
    if let Err(e) = &sim {
        eprintln!("simulated-peer part failed: {e:#}");
    }
    if super::interrupted() {
        drop(world);
        eprintln!("flannelctl: interrupted; namespaces, processes and temporary files removed");
        return Ok(130);
    }
    let as_json = |r: &Result<Value>| match r {
        Ok(v) => v.clone(),
        Err(e) => json!({"error": format!("{e:#}")}),
    };
    let out = json!({
        "machine": m,
        "loadavg_end": super::loadavg(),
        "network": NETWORK,
        "three_nodes": as_json(&three),
        "simulated": as_json(&sim),
    });
    if o.json {
        println!("{}", serde_json::to_string_pretty(&out)?);
    } else {
        print_report(&out);
    }
    drop(world);
    Ok(if three.is_err() || sim.is_err() { 2 } else { 0 })
}

/// Part (a): 3 real nodes.
fn three_nodes(world: &World, bins: &Bins, o: &Options) -> Result<Value> {
    if !o.json {
        eprintln!("(a) 3 real nodes: building the underlay, etcd, flanneld on nodes 1 and 2 ...");
    }
    let u = Underlay::build(world, "cj", 3)?;
    super::start_etcd(world, &u, "cj-etcd", &config())?;
    let d1 = Daemon::start(world, bins, &u.nodes[0], "cj-flanneld1", &[])?;
    let d2 = Daemon::start(world, bins, &u.nodes[1], "cj-flanneld2", &[])?;
    d1.wait_ready(world, Duration::from_secs(30))?;
    d2.wait_ready(world, Duration::from_secs(30))?;
    let n3 = u.nodes[2].clone();
    let fabric = u.fabric.clone();
    block_on_in(&fabric, || async move {
        let etcd = Etcd::connect().await?;
        let log = etcd.watch_log().await?;
        let others = [
            NodeProbe::open(&d1.ns).await?,
            NodeProbe::open(&d2.ns).await?,
        ];
        let known: Vec<String> = etcd
            .subnets_in_use()
            .await?
            .iter()
            .map(|s| subnet::SubnetKey::v4(*s).to_string())
            .collect();

        // Real joins: start flanneld on node 3; time from its lease showing up in our etcd watch until nodes 1
        // and 2 have its route, neighbour and FDB entry. Then stop it, delete its lease, time the removal.
        let mut node_joins = Vec::new();
        let mut node_leaves = Vec::new();
        let mut startup = Vec::new();
        for trial in 0..o.node_joins {
            if !o.json {
                eprintln!("  node join {}/{} ...", trial + 1, o.node_joins);
            }
            let mark = log.lock().map(|g| g.len()).unwrap_or(0);
            let started = Instant::now();
            let d3 = Daemon::start(world, bins, &n3, &format!("cj-flanneld3-{trial}"), &[])?;
            let deadline = Instant::now() + Duration::from_secs(30);
            let seen = loop {
                check_interrupt()?;
                let hit = log.lock().ok().and_then(|g| {
                    g[mark.min(g.len())..]
                        .iter()
                        .find(|s| s.put && !known.contains(&s.key))
                        .cloned()
                });
                if let Some(s) = hit {
                    break s;
                }
                if !world.running(d3.pid) {
                    bail!("flanneld on node 3 exited:\n{}", world.tail(&d3.label));
                }
                if Instant::now() > deadline {
                    bail!("node 3's lease did not appear in etcd within 30 s");
                }
                // Short blocking pauses, then yield so the runtime reads the watch socket (tokio's own timer
                // would add up to 2 ms here).
                std::thread::sleep(Duration::from_micros(200));
                tokio::task::yield_now().await;
            };
            startup.push(ms(seen.at - started));
            let peer = Peer::from_lease(&seen.key, &seen.value)?;
            let want = Want::new(&[peer]);
            let (r, _) = probe::wait_for(
                &others,
                &want,
                true,
                seen.at,
                Duration::from_micros(JOIN_POLL_US),
                Duration::from_secs(30),
            )
            .await?;
            node_joins.push(r.iter().filter_map(|x| x.all()).map(ms).fold(0.0, f64::max));
            world.stop(d3.pid, Duration::from_secs(5))?;
            let t0 = etcd.delete(&peer.key()).await?;
            let (r, _) = probe::wait_for(
                &others,
                &want,
                false,
                t0,
                Duration::from_micros(JOIN_POLL_US),
                Duration::from_secs(30),
            )
            .await?;
            node_leaves.push(r.iter().filter_map(|x| x.all()).map(ms).fold(0.0, f64::max));
        }

        // Node 3 stays up for the synthetic joins, which all three nodes must program.
        let d3 = Daemon::start(world, bins, &n3, "cj-flanneld3", &[])?;
        d3.wait_ready(world, Duration::from_secs(30))?;
        let nodes = [
            NodeProbe::open(&d1.ns).await?,
            NodeProbe::open(&d2.ns).await?,
            NodeProbe::open(&d3.ns).await?,
        ];
        let daemons = [&d1, &d2, &d3];
        let in_use = etcd.subnets_in_use().await?;
        let network: Ipv4Net = NETWORK.parse()?;
        let mut joins = Vec::new();
        let mut leaves = Vec::new();
        let mut poll = Vec::new();
        let mut reconcile_us = Vec::new();
        let mut per_kind: [Vec<f64>; 3] = Default::default();
        for k in 0..o.joins {
            check_interrupt()?;
            // A lease with a VTEP MAC never seen before and a public IP on the underlay (no node there: it is an
            // FDB destination only).
            let p = probe::synthetic_peers(1, network, &in_use, k, |_| {
                std::net::Ipv4Addr::new(192, 0, 2, 100 + (k % 100) as u8)
            })?[0];
            let want = Want::new(&[p]);
            let t0 = etcd.create(&p).await?;
            let (r, pt) = probe::wait_for(
                &nodes,
                &want,
                true,
                t0,
                Duration::from_micros(JOIN_POLL_US),
                Duration::from_secs(30),
            )
            .await?;
            poll.push(pt.as_secs_f64() * 1e6);
            joins.push(r.iter().filter_map(|x| x.all()).map(ms).fold(0.0, f64::max));
            for x in &r {
                per_kind[0].push(x.routes.map(ms).unwrap_or(0.0));
                per_kind[1].push(x.neigh.map(ms).unwrap_or(0.0));
                per_kind[2].push(x.fdb.map(ms).unwrap_or(0.0));
            }
            for d in daemons {
                if let Some(us) = last_reconcile_us(d) {
                    reconcile_us.push(us);
                }
            }
            let t0 = etcd.delete(&p.key()).await?;
            let (r, _) = probe::wait_for(
                &nodes,
                &want,
                false,
                t0,
                Duration::from_micros(JOIN_POLL_US),
                Duration::from_secs(30),
            )
            .await?;
            leaves.push(r.iter().filter_map(|x| x.all()).map(ms).fold(0.0, f64::max));
            // Decorrelate from any periodic work in the daemons.
            let jitter = 20 + (t0.elapsed().subsec_nanos() % 60) as u64;
            tokio::time::sleep(Duration::from_millis(jitter)).await;
        }
        let p99 = percentile(&sorted(&joins), 0.99);
        Ok(json!({
            "nodes": 3,
            "node_joins": {
                "what": "flanneld started on node 3: its lease seen by our etcd watch -> route+neighbour+FDB on nodes 1 and 2",
                "join": summary(&node_joins),
                "leave": summary(&node_leaves),
                "start_to_lease_ms": summary(&startup),
                "samples_ms": node_joins.iter().map(|x| r3(*x)).collect::<Vec<_>>(),
            },
            "lease_joins": {
                "what": "synthetic vxlan lease created in etcd (commit) -> route+neighbour+FDB on all 3 nodes",
                "join": summary(&joins),
                "leave": summary(&leaves),
                "route_ms": summary(&per_kind[0]),
                "neigh_ms": summary(&per_kind[1]),
                "fdb_ms": summary(&per_kind[2]),
                "flanneld_reconcile_us_p50": r3(median(&reconcile_us)),
                "poll_us_p50": r3(median(&poll)),
                "samples_ms": joins.iter().map(|x| r3(*x)).collect::<Vec<_>>(),
                "target_p99_ms": JOIN_P99_TARGET_MS,
                "pass": p99 <= JOIN_P99_TARGET_MS,
            },
        }))
    })
}

/// One real node and its etcd, for simulated peers (also used by the memory benchmark).
pub struct Sim {
    /// The underlay (1 node).
    pub u: Underlay,
    /// The daemon.
    pub d: Daemon,
}

impl Sim {
    /// Builds it and waits until flanneld is ready.
    pub fn build(world: &World, bins: &Bins, name: &str) -> Result<Self> {
        let u = Underlay::build(world, name, 1)?;
        super::start_etcd(world, &u, &format!("{name}-etcd"), &config())?;
        let d = Daemon::start(world, bins, &u.nodes[0], &format!("{name}-flanneld"), &[])?;
        d.wait_ready(world, Duration::from_secs(30))?;
        Ok(Self { u, d })
    }
}

/// One programming + removal of `n` simulated peers.
#[derive(Debug, Clone, Default)]
pub struct BulkRun {
    /// etcd commit -> all entries present.
    pub program: Duration,
    /// ... per kind.
    pub routes: Duration,
    pub neigh: Duration,
    pub fdb: Duration,
    /// Revoke commit -> all entries gone.
    pub remove: Duration,
    /// flanneld CPU time while programming.
    pub cpu_program: Duration,
    /// flanneld CPU time while removing.
    pub cpu_remove: Duration,
    /// flanneld's own reconcile time (from /status) after programming.
    pub reconcile_us: Option<f64>,
    /// Median duration of one probe poll.
    pub poll: Duration,
    /// RSS/HWM after programming (bytes).
    pub rss_programmed: Option<(u64, u64)>,
    /// RSS/HWM after one GET /status (bytes).
    pub rss_after_status: Option<(u64, u64)>,
    /// RSS/HWM after removal (bytes).
    pub rss_removed: Option<(u64, u64)>,
    /// Single lease joins timed while the `n` peers are programmed (ms): the per-event cost at scale.
    pub joins_at_n: Vec<f64>,
}

/// Writes `n` synthetic leases at once (one etcd transaction), waits until flanneld has programmed all of them,
/// then revokes them at once and waits until all entries are gone. `settle` waits before reading RSS.
pub async fn bulk(
    etcd: &Etcd,
    node: &NodeProbe,
    d: &Daemon,
    n: usize,
    settle: Duration,
    single_joins: usize,
) -> Result<BulkRun> {
    let network: Ipv4Net = NETWORK.parse()?;
    let in_use = etcd.subnets_in_use().await?;
    let mut peers =
        probe::synthetic_peers(n + single_joins, network, &in_use, 0, probe::fake_public)?;
    let extra = peers.split_off(n);
    let want = Want::new(&peers);
    let nodes = std::slice::from_ref(node);
    let timeout = Duration::from_secs(60 + n as u64 / 100);
    let cpu0 = probe::cpu_time(d.pid).unwrap_or_default();
    let (lease, t0) = etcd.put_all(&peers).await?;
    let (r, poll) =
        probe::wait_for(nodes, &want, true, t0, Duration::from_millis(2), timeout).await?;
    // Let flanneld finish its pass (status, logs) before reading its CPU time.
    tokio::time::sleep(settle).await;
    let cpu1 = probe::cpu_time(d.pid).unwrap_or_default();
    // Memory first: GET /status copies and serialises the whole peer list inside flanneld.
    let rss_programmed = probe::rss(d.pid);
    let reconcile_us = last_reconcile_us(d);
    let rss_after_status = probe::rss(d.pid);
    let r = r[0];
    let mut joins_at_n = Vec::new();
    for p in &extra {
        let want = Want::new(std::slice::from_ref(p));
        let t = etcd.create(p).await?;
        let (j, _) = probe::wait_for(
            nodes,
            &want,
            true,
            t,
            Duration::from_micros(JOIN_POLL_US),
            timeout,
        )
        .await?;
        joins_at_n.push(j[0].all().map(ms).unwrap_or(0.0));
        let t = etcd.delete(&p.key()).await?;
        probe::wait_for(
            nodes,
            &want,
            false,
            t,
            Duration::from_micros(JOIN_POLL_US),
            timeout,
        )
        .await?;
        // Let flanneld finish the tail of the previous event (status document) first: joins are timed at rest.
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let t1 = etcd.revoke(lease).await?;
    let (rr, _) =
        probe::wait_for(nodes, &want, false, t1, Duration::from_millis(2), timeout).await?;
    tokio::time::sleep(settle).await;
    let cpu2 = probe::cpu_time(d.pid).unwrap_or_default();
    let rss_removed = probe::rss(d.pid);
    Ok(BulkRun {
        program: r.all().unwrap_or_default(),
        routes: r.routes.unwrap_or_default(),
        neigh: r.neigh.unwrap_or_default(),
        fdb: r.fdb.unwrap_or_default(),
        remove: rr[0].all().unwrap_or_default(),
        cpu_program: cpu1.saturating_sub(cpu0),
        cpu_remove: cpu2.saturating_sub(cpu1),
        reconcile_us,
        poll,
        rss_programmed,
        rss_after_status,
        rss_removed,
        joins_at_n,
    })
}

/// Part (b): simulated peers.
fn simulated(world: &World, bins: &Bins, o: &Options) -> Result<Value> {
    if !o.json {
        eprintln!("(b) simulated peers: 1 real node, etcd ...");
    }
    let sim = Sim::build(world, bins, "cs")?;
    let d = sim.d.clone();
    block_on_in(&sim.u.fabric, || async move {
        let etcd = Etcd::connect().await?;
        let node = NodeProbe::open(&d.ns).await?;
        let mut sizes = Vec::new();
        for &n in &o.peers {
            let mut runs = Vec::new();
            for rep in 0..o.repeat {
                check_interrupt()?;
                if !o.json {
                    eprintln!("  {n} peers, run {}/{} ...", rep + 1, o.repeat);
                }
                runs.push(bulk(&etcd, &node, &d, n, Duration::from_millis(500), 5).await?);
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
            let f = |g: fn(&BulkRun) -> Duration| -> Vec<f64> {
                runs.iter().map(|r| ms(g(r))).collect()
            };
            let program = f(|r| r.program);
            let worst = program.iter().copied().fold(0.0, f64::max);
            sizes.push(json!({
                "peers": n,
                "runs": runs.len(),
                "program_ms": summary(&program),
                "routes_ms": summary(&f(|r| r.routes)),
                "neigh_ms": summary(&f(|r| r.neigh)),
                "fdb_ms": summary(&f(|r| r.fdb)),
                "remove_ms": summary(&f(|r| r.remove)),
                "flanneld_cpu_program_ms": summary(&f(|r| r.cpu_program)),
                "flanneld_cpu_remove_ms": summary(&f(|r| r.cpu_remove)),
                "flanneld_reconcile_ms_p50": r3(median(&runs.iter().filter_map(|r| r.reconcile_us).collect::<Vec<_>>()) / 1000.0),
                "poll_ms_p50": r3(median(&f(|r| r.poll))),
                "join_with_n_present_ms": summary(&runs.iter().flat_map(|r| r.joins_at_n.iter().copied()).collect::<Vec<_>>()),
                "program_samples_ms": program.iter().map(|x| r3(*x)).collect::<Vec<_>>(),
                "target_s": (n == 5000).then_some(BULK_TARGET_S),
                "pass": (n == 5000).then_some(worst <= BULK_TARGET_S * 1000.0),
            }));
        }
        Ok(json!({"nodes": 1, "sizes": sizes}))
    })
}

/// A number in a JSON report (0 when absent).
pub fn g(v: &Value, p: &str) -> f64 {
    v.pointer(p).and_then(Value::as_f64).unwrap_or(0.0)
}

fn print_report(out: &Value) {
    println!(
        "Convergence benchmark (vxlan, VNI 1; etcd in the fabric namespace; Network {NETWORK})"
    );
    println!(
        "{}, load average {:.2} at the end",
        machine_line(&out["machine"]),
        out["loadavg_end"].as_f64().unwrap_or(0.0)
    );
    println!();
    let t = &out["three_nodes"];
    if let Some(e) = t.get("error") {
        println!("(a) 3 real nodes: FAILED: {}", e.as_str().unwrap_or(""));
    } else {
        println!("(a) 3 real nodes (flanneld on each), times in ms");
        println!(
            "{:<58} {:>4} {:>8} {:>8} {:>8}",
            "", "n", "p50", "p99", "max"
        );
        let row = |label: &str, v: &Value| {
            println!(
                "{:<58} {:>4} {:>8.2} {:>8.2} {:>8.2}",
                label,
                v["n"],
                g(v, "/p50_ms"),
                g(v, "/p99_ms"),
                g(v, "/max_ms")
            );
        };
        row(
            "node join: n3 lease in etcd -> entries on n1+n2",
            &t["node_joins"]["join"],
        );
        row(
            "node leave: n3 lease deleted -> entries gone on n1+n2",
            &t["node_joins"]["leave"],
        );
        row(
            "  (flanneld start -> its lease in etcd)",
            &t["node_joins"]["start_to_lease_ms"],
        );
        let lj = &t["lease_joins"];
        row(
            "lease join: created in etcd -> entries on n1+n2+n3",
            &lj["join"],
        );
        row("  route in place (per node)", &lj["route_ms"]);
        row("  neighbour in place (per node)", &lj["neigh_ms"]);
        row("  FDB entry in place (per node)", &lj["fdb_ms"]);
        row(
            "lease leave: deleted in etcd -> entries gone on all 3",
            &lj["leave"],
        );
        println!(
            "flanneld's own reconcile pass (from /status lastReconcile): p50 {:.0} us; probe: a route lookup per \
             node every {JOIN_POLL_US} us, dumps once it is there; one poll of 3 nodes p50 {:.0} us (resolution: \
             the period plus one poll)",
            g(lj, "/flanneld_reconcile_us_p50"),
            g(lj, "/poll_us_p50")
        );
        println!(
            "target: join p99 <= {JOIN_P99_TARGET_MS} ms: p99 {:.2} ms -> {}",
            g(lj, "/join/p99_ms"),
            verdict(lj["pass"].as_bool().unwrap_or(false))
        );
    }
    println!();
    let s = &out["simulated"];
    if let Some(e) = s.get("error") {
        println!("(b) simulated peers: FAILED: {}", e.as_str().unwrap_or(""));
        return;
    }
    println!(
        "(b) simulated peers: N vxlan leases written in one etcd transaction next to 1 real node; \
         times from the commit, median of runs (max in brackets), ms"
    );
    println!(
        "{:>6} {:>4} {:>17} {:>9} {:>9} {:>9} {:>17} {:>10} {:>10} {:>8} {:>16}",
        "peers",
        "runs",
        "all programmed",
        "routes",
        "neigh",
        "fdb",
        "all removed",
        "CPU prog",
        "reconcile",
        "poll",
        "+1 join p50/p99"
    );
    for v in s["sizes"].as_array().into_iter().flatten() {
        println!(
            "{:>6} {:>4} {:>8.0} ({:>6.0}) {:>9.0} {:>9.0} {:>9.0} {:>8.0} ({:>6.0}) {:>10.0} {:>10.0} {:>8.1} {:>7.1}/{:>7.1}",
            v["peers"],
            v["runs"],
            g(v, "/program_ms/p50_ms"),
            g(v, "/program_ms/max_ms"),
            g(v, "/routes_ms/p50_ms"),
            g(v, "/neigh_ms/p50_ms"),
            g(v, "/fdb_ms/p50_ms"),
            g(v, "/remove_ms/p50_ms"),
            g(v, "/remove_ms/max_ms"),
            g(v, "/flanneld_cpu_program_ms/p50_ms"),
            g(v, "/flanneld_reconcile_ms_p50"),
            g(v, "/poll_ms_p50"),
            g(v, "/join_with_n_present_ms/p50_ms"),
            g(v, "/join_with_n_present_ms/p99_ms"),
        );
    }
    println!(
        "CPU prog: flanneld's CPU time (user+system) while programming; reconcile: flanneld's own time for the \
         pass (lastReconcile); poll: one netlink dump of routes+neighbours+FDB by the probe; +1 join: one more \
         lease created while the N are programmed -> its entries in place (5 per run)"
    );
    for v in s["sizes"].as_array().into_iter().flatten() {
        if let Some(pass) = v["pass"].as_bool() {
            println!(
                "target: {} peers programmed <= {BULK_TARGET_S} s (every run): worst {:.2} s -> {}",
                v["peers"],
                g(v, "/program_ms/max_ms") / 1000.0,
                verdict(pass)
            );
        }
    }
}

/// Parses `--peers 1000,5000`.
pub fn parse_peers(s: &str) -> Result<Vec<usize>> {
    super::parse_counts("--peers", s)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn peers_list() {
        assert_eq!(parse_peers("1000,5000").unwrap(), vec![1000, 5000]);
        assert_eq!(parse_peers(" 7 ").unwrap(), vec![7]);
        assert!(parse_peers("1000,x").is_err());
    }

    #[test]
    fn config_is_a_vxlan_slash_8() {
        let v: Value = serde_json::from_str(&config()).unwrap();
        assert_eq!(v["Network"], "10.0.0.0/8");
        assert_eq!(v["Backend"]["Type"], "vxlan");
    }
}
