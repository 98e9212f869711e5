//! Concurrency and crashes: 32 concurrent ADDs on one network never hand out the same IP; a plugin killed with
//! SIGKILL at a random point of ADD leaves nothing once the runtime has run DEL (or GC).

mod common;

use common::*;
use serde_json::Value;
use std::sync::Barrier;
use std::time::Duration;

const NET: &str = "frtnet";
const BR: &str = "frtbr0";
const N: usize = 32;

/// `n` ADDs started at once on one network, then `n` DELs at once.
fn concurrent(imp: &Impl, flannel: bool) {
    let sb = Sandbox::new();
    let pods = sb.pods(N);
    let rt = sb.runtime(imp);
    let data = sb.path("ipam");
    let (net, netname) = if flannel {
        (flannel_net(&sb, "1.0.0"), "cbr0")
    } else {
        (
            Net::new(
                NET,
                imp.newest_version(),
                vec![bridge_conf(BR, "10.244.10.0/24", &data)],
            ),
            NET,
        )
    };
    let atts: Vec<Att> = pods.iter().enumerate().map(|(i, p)| sb.att(i, p)).collect();

    let barrier = Barrier::new(N);
    let results: Vec<Result<Value, Out>> = std::thread::scope(|s| {
        let hs: Vec<_> = atts
            .iter()
            .map(|a| {
                let (rt, net, barrier) = (&rt, &net, &barrier);
                s.spawn(move || {
                    barrier.wait();
                    rt.add(net, a)
                })
            })
            .collect();
        hs.into_iter().map(|h| h.join().expect("thread")).collect()
    });
    let results: Vec<Value> = results
        .into_iter()
        .map(|r| r.unwrap_or_else(|o| panic!("concurrent ADD: {o:?}")))
        .collect();

    let mut ips: Vec<String> = results.iter().map(result_ip).collect();
    ips.sort();
    ips.dedup();
    assert_eq!(ips.len(), N, "duplicate IPs handed out");
    let files = ip_files(&data, netname);
    assert_eq!(files.len(), N, "{files:?}");
    for ((a, r), p) in atts.iter().zip(&results).zip(&pods) {
        assert_eq!(
            ip_files_of(&data, netname, &a.container_id),
            vec![result_ip(r)]
        );
        assert_eq!(addrs(&p.name, "eth0"), vec![format!("{}/24", result_ip(r))]);
    }
    assert_eq!(veths(&sb.node.name).len(), N);
    // Every pod reaches the gateway (one bridge, one gateway address despite the concurrent ADDs).
    let gw = if flannel { "10.244.1.1" } else { "10.244.10.1" };
    assert_eq!(
        addrs(&sb.node.name, if flannel { "cni0" } else { BR }),
        vec![format!("{gw}/24")]
    );
    for p in pods.iter().step_by(8) {
        assert!(ping(&p.name, gw), "{} cannot reach the gateway", p.name);
    }

    let barrier = Barrier::new(N);
    std::thread::scope(|s| {
        for (a, r) in atts.iter().zip(&results) {
            let (rt, net, barrier) = (&rt, &net, &barrier);
            s.spawn(move || {
                barrier.wait();
                rt.del(net, a, Some(r))
                    .unwrap_or_else(|o| panic!("concurrent DEL: {o:?}"));
            });
        }
    });
    assert!(
        ip_files(&data, netname).is_empty(),
        "{:?}",
        ip_files(&data, netname)
    );
    wait_no_veths(&sb.node.name);
}

fn ours_concurrent_adds() {
    require_root();
    concurrent(&Impl::ours(), false);
}

fn ours_flannel_concurrent_adds() {
    require_root();
    concurrent(&Impl::ours(), true);
}

fn reference_concurrent_adds() {
    require_root();
    let imp = Impl::reference();
    concurrent(&imp, false);
}

const KILLS: usize = 20;

/// Starts ADD, SIGKILLs it after 0–3 ms, then runs the runtime's DEL: no IP file and no host veth may remain.
/// Then more killed ADDs with no DEL at all, and a GC with an empty valid list: no IP file may remain.
fn sigkill_during_add(imp: &Impl, flannel: bool) {
    let sb = Sandbox::new();
    let rt = sb.runtime(imp);
    let data = sb.path("ipam");
    let (net, netname, ty) = if flannel {
        (flannel_net(&sb, imp.newest_version()), "cbr0", "flannel")
    } else {
        (
            Net::new(
                NET,
                imp.newest_version(),
                vec![bridge_conf(BR, "10.244.11.0/24", &data)],
            ),
            NET,
            "bridge",
        )
    };
    let plugin = net.plugins.len() - 1; // the last one does the work (flannel after loopback)
    let mut jitter = Jitter::new();
    let mut killed_midway = 0;
    let mut left_state = 0;

    for i in 0..KILLS {
        let pod = sb.pod(i);
        let att = sb.att(i, &pod);
        let mut child = rt.spawn(ty, "ADD", Some(&att), &net.plugin_conf(plugin, None));
        std::thread::sleep(jitter.below(Duration::from_millis(3)));
        let _ = child.kill();
        let status = child.wait().expect("wait");
        if !status.success() {
            killed_midway += 1;
            if !ip_files(&data, netname).is_empty() || !veths(&sb.node.name).is_empty() {
                left_state += 1;
            }
        }
        rt.del(&net, &att, None)
            .unwrap_or_else(|o| panic!("DEL after a killed ADD (iteration {i}): {o:?}"));
        assert!(
            ip_files(&data, netname).is_empty(),
            "iteration {i}: IP of a killed ADD kept after DEL: {:?}",
            ip_files(&data, netname)
        );
        assert!(
            veths(&sb.node.name).is_empty(),
            "iteration {i}: host veth kept: {:?}",
            veths(&sb.node.name)
        );
        assert!(
            link(&pod.name, "eth0").is_none(),
            "iteration {i}: container veth kept"
        );
        if flannel {
            assert!(
                !flannel_cache(&sb, &att).exists(),
                "iteration {i}: flannel cache kept"
            );
        }
    }
    eprintln!("{KILLS} ADDs, {killed_midway} killed before finishing, {left_state} of them after making some state");

    if !version_at_least(&net.version, "1.1.0") {
        return;
    }
    // Killed ADDs with no DEL, then GC with nothing valid.
    let mut pods = vec![];
    for i in 0..KILLS / 2 {
        let pod = sb.pod(KILLS + i);
        let att = sb.att(KILLS + i, &pod);
        let mut child = rt.spawn(ty, "ADD", Some(&att), &net.plugin_conf(plugin, None));
        std::thread::sleep(jitter.below(Duration::from_millis(3)));
        let _ = child.kill();
        let _ = child.wait();
        pods.push(pod);
    }
    rt.gc(&net, &[]).unwrap_or_else(|e| panic!("GC: {e:?}"));
    assert!(
        ip_files(&data, netname).is_empty(),
        "GC kept: {:?}",
        ip_files(&data, netname)
    );
}

fn ours_sigkill_during_add() {
    require_root();
    sigkill_during_add(&Impl::ours(), false);
}

fn ours_flannel_sigkill_during_add() {
    require_root();
    sigkill_during_add(&Impl::ours(), true);
}

/// The reference under the same faults (no GC there). v1.1.1 can leave an empty reservation file when killed
/// between creating and writing it; that is reported, not failed, since it is the behaviour we improve on.
fn reference_sigkill_during_add() {
    require_root();
    let imp = Impl::reference();
    let r = std::panic::catch_unwind(|| sigkill_during_add(&imp, false));
    if let Err(e) = r {
        let msg = e
            .downcast_ref::<String>()
            .cloned()
            .or_else(|| e.downcast_ref::<&str>().map(|s| s.to_string()))
            .unwrap_or_default();
        if msg.contains("IP of a killed ADD kept") {
            eprintln!("note: the reference host-local leaked a reservation under SIGKILL: {msg}");
        } else {
            panic!("{msg}");
        }
    }
}

testkit::main!(
    ours_concurrent_adds,
    ours_flannel_concurrent_adds,
    reference_concurrent_adds,
    ours_sigkill_during_add,
    ours_flannel_sigkill_during_add,
    reference_sigkill_during_add,
);
