//! The `bandwidth` plugin, black-box: chained after our bridge + host-local; rates measured with iperf3 in both
//! directions; the qdiscs compared with the reference `bandwidth` in /usr/lib/cni (`tc -j qdisc show`); DEL
//! leaves no ifb, also when the pod namespace is gone; CHECK notices a missing qdisc; bad input.

mod common;

use common::*;
use serde_json::{json, Value};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

const NET: &str = "frtbw";

/// Root, and the ifb module loaded without its default devices: loaded on demand (by the first ifb a test makes)
/// it would create `ifb0` and `ifb1` in the machine's root namespace, which tests must leave alone.
fn require_root_and_ifb() {
    require_root();
    if !Path::new("/sys/module/ifb").exists() {
        let _ = Command::new("modprobe").args(["ifb", "numifbs=0"]).status();
    }
}

fn ours_bw() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_bandwidth"))
}

fn reference_bw() -> PathBuf {
    let p = Path::new(REFERENCE_DIR).join("bandwidth");
    assert!(
        p.exists(),
        "the reference bandwidth plugin is missing in {REFERENCE_DIR}"
    );
    p
}

fn chain(sb: &Sandbox, bw: Value) -> Net {
    Net::new(
        NET,
        "1.0.0",
        vec![
            bridge_conf(&format!("{}b", sb.id), "10.244.7.0/24", &sb.path("ipam")),
            bw,
        ],
    )
}

fn first(net: &Net) -> Net {
    Net::new(&net.name, &net.version, net.plugins[..1].to_vec())
}

fn exec_bw(bin: &Path, sb: &Sandbox, rt: &Runtime, cmd: &str, att: &Att, conf: &Value) -> Out {
    exec_plugin(
        bin,
        Some(&sb.node.path()),
        &rt.env_for(cmd, Some(att)),
        conf.to_string().as_bytes(),
    )
}

/// `tc -j qdisc show dev D` in `ns`, without the fields that name the device or count references.
fn qdiscs(ns: &str, dev: &str) -> Vec<Value> {
    let out = Command::new("tc")
        .args(["-n", ns, "-j", "qdisc", "show", "dev", dev])
        .output()
        .expect("run tc");
    assert!(out.status.success(), "tc qdisc show dev {dev}: {out:?}");
    let mut v: Vec<Value> = serde_json::from_slice(&out.stdout).unwrap_or_default();
    for q in &mut v {
        if let Some(o) = q.as_object_mut() {
            o.remove("dev");
            o.remove("refcnt");
        }
    }
    v
}

fn ifbs(ns: &str) -> Vec<String> {
    ip_json(ns, &["-d", "link", "show", "type", "ifb"])
        .and_then(|v| {
            v.as_array().map(|a| {
                a.iter()
                    .filter_map(|l| l["ifname"].as_str().map(str::to_string))
                    .collect()
            })
        })
        .unwrap_or_default()
}

/// Adds the chain and returns (final result, host veth name, ifb name if any).
fn attach(rt: &Runtime, net: &Net, att: &Att) -> (Value, String, Option<String>) {
    let r = rt
        .add(net, att)
        .unwrap_or_else(|o| panic!("chain ADD: {o:?}"));
    let host = result_host_veth(&r);
    let ifb = r["interfaces"].as_array().and_then(|a| {
        a.iter()
            .filter_map(|i| i["name"].as_str())
            .find(|n| n.starts_with("bwp"))
            .map(str::to_string)
    });
    (r, host, ifb)
}

fn pod_ip(r: &Value) -> String {
    result_ip(r)
        .split('/')
        .next()
        .unwrap_or_default()
        .to_string()
}

/// Measured TCP goodput from the node to the pod (`reverse`: pod to node), bit/s, the first second omitted.
fn iperf(node: &str, pod: &str, pod_ip: &str, reverse: bool) -> f64 {
    let port = 20000 + (std::process::id() % 20000) as u16;
    let mut server = Command::new("ip")
        .args(["netns", "exec", pod, "iperf3", "-s", "-1", "-p"])
        .arg(port.to_string())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("start iperf3 server");
    std::thread::sleep(std::time::Duration::from_millis(500));
    let mut c = Command::new("ip");
    c.args([
        "netns",
        "exec",
        node,
        "iperf3",
        "-J",
        "-t",
        "4",
        "-O",
        "1",
        "--connect-timeout",
        "5000",
        "-c",
        pod_ip,
        "-p",
    ])
    .arg(port.to_string());
    if reverse {
        c.arg("-R");
    }
    let out = c.output().expect("run iperf3 client");
    let _ = server.kill();
    let _ = server.wait();
    let v: Value = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("iperf3 output ({e}): {out:?}"));
    v["end"]["sum_received"]["bits_per_second"]
        .as_f64()
        .unwrap_or_else(|| panic!("no rate in {v}"))
}

/// Rates measured both ways at 10 and 100 Mbit/s are within 10 % of the configuration (TCP goodput: the
/// shaper also counts the headers, about 4 % at MTU 1500).
fn shapes_both_directions() {
    require_root_and_ifb();
    for mbit in [10u64, 100] {
        let sb = Sandbox::new();
        let pod = sb.pod(0);
        let rt = sb.runtime(&Impl::ours());
        let att = sb.att(0, &pod);
        let rate = mbit * 1_000_000;
        let burst = rate / 80; // 12.5 ms worth: the measured average is the rate, not the burst
        let net = chain(
            &sb,
            json!({"type": "bandwidth", "ingressRate": rate, "ingressBurst": burst.max(200_000),
                   "egressRate": rate, "egressBurst": burst.max(200_000)}),
        );
        let (r, _, ifb) = attach(&rt, &net, &att);
        assert!(ifb.is_some(), "no ifb in {r}");
        let ip = pod_ip(&r);
        for reverse in [false, true] {
            let got = iperf(&sb.node.name, &pod.name, &ip, reverse);
            let ratio = got / rate as f64;
            eprintln!(
                "{mbit} Mbit/s {}: measured {got:.0} bit/s ({ratio:.3})",
                if reverse { "egress" } else { "ingress" }
            );
            assert!(
                (0.9..=1.1).contains(&ratio),
                "{mbit} Mbit/s, {}: measured {got:.0} bit/s",
                if reverse {
                    "from the pod"
                } else {
                    "to the pod"
                }
            );
        }
        rt.del(&net, &att, Some(&r))
            .unwrap_or_else(|o| panic!("DEL: {o:?}"));
        assert!(
            ifbs(&sb.node.name).is_empty(),
            "ifb left: {:?}",
            ifbs(&sb.node.name)
        );
    }
}

/// Same qdiscs (kind, handle, parent, rate, burst, latency) and same ifb (name scheme, MTU, queue length) as the
/// reference; each DELs what the other ADDed; the result carries the ifb as the reference's does.
fn same_qdiscs_as_reference() {
    require_root_and_ifb();
    let sb = Sandbox::new();
    let rt = sb.runtime(&Impl::ours());
    let bw = json!({"type": "bandwidth", "ingressRate": 10_000_000, "ingressBurst": 2_000_000,
                    "egressRate": 100_000_000, "egressBurst": 4_000_000});
    let net = chain(&sb, bw);
    let mut seen = Vec::new();
    for (i, (add_bin, del_bin)) in [(ours_bw(), reference_bw()), (reference_bw(), ours_bw())]
        .into_iter()
        .enumerate()
    {
        let pod = sb.pod(i);
        let att = sb.att(i, &pod);
        let prev = rt
            .add(&first(&net), &att)
            .unwrap_or_else(|o| panic!("bridge ADD: {o:?}"));
        let host = result_host_veth(&prev);
        let out = exec_bw(
            &add_bin,
            &sb,
            &rt,
            "ADD",
            &att,
            &net.plugin_conf(1, Some(&prev)),
        );
        assert!(out.ok(), "{}: ADD: {out:?}", add_bin.display());
        let r = out.json();
        let ifbs_now = ifbs(&sb.node.name);
        assert_eq!(ifbs_now.len(), 1, "{ifbs_now:?}");
        let ifb = ifbs_now[0].clone();
        // The result: the previous one plus the ifb with its MAC.
        let mut expect = prev.clone();
        let mac = link(&sb.node.name, &ifb).unwrap()["address"].clone();
        expect["interfaces"]
            .as_array_mut()
            .unwrap()
            .push(json!({"name": ifb, "mac": mac}));
        assert_eq!(r, expect, "{}", add_bin.display());
        let l = link(&sb.node.name, &ifb).unwrap();
        seen.push((
            qdiscs(&sb.node.name, &host),
            qdiscs(&sb.node.name, &ifb),
            (
                l["mtu"].clone(),
                l["txqlen"].clone(),
                l["operstate"].clone(),
            ),
        ));
        let out = exec_bw(
            &del_bin,
            &sb,
            &rt,
            "DEL",
            &att,
            &net.plugin_conf(1, Some(&r)),
        );
        assert!(out.ok(), "{}: DEL: {out:?}", del_bin.display());
        assert!(
            ifbs(&sb.node.name).is_empty(),
            "{}: ifb left",
            del_bin.display()
        );
        rt.del(&first(&net), &att, Some(&prev))
            .unwrap_or_else(|o| panic!("bridge DEL: {o:?}"));
    }
    assert_eq!(seen[0], seen[1], "ours (first) vs reference (second)");
    let (hq, iq, _) = &seen[0];
    assert!(hq
        .iter()
        .any(|q| q["kind"] == "tbf" && q["options"]["rate"] == 1_250_000));
    assert!(hq.iter().any(|q| q["kind"] == "ingress"));
    assert!(iq
        .iter()
        .any(|q| q["kind"] == "tbf" && q["options"]["rate"] == 12_500_000));
}

/// DEL is idempotent and removes the ifb also when the pod namespace is already gone; CHECK passes after ADD and
/// fails when a qdisc is removed; ingress-only makes no ifb.
fn del_check_and_cleanup() {
    require_root_and_ifb();
    let sb = Sandbox::new();
    let pod = sb.pod(0);
    let rt = sb.runtime(&Impl::ours());
    let att = sb.att(0, &pod);
    let net = chain(
        &sb,
        json!({"type": "bandwidth", "ingressRate": 8_000_000, "ingressBurst": 800_000,
               "egressRate": 8_000_000, "egressBurst": 800_000}),
    );
    let (r, host, ifb) = attach(&rt, &net, &att);
    let ifb = ifb.expect("ifb in the result");
    rt.check(&net, &att, &r)
        .unwrap_or_else(|o| panic!("CHECK: {o:?}"));
    let conf = net.plugin_conf(1, Some(&r));
    let tc = |args: &[&str]| {
        let st = Command::new("tc")
            .args(["-n", &sb.node.name])
            .args(args)
            .status()
            .expect("run tc");
        assert!(st.success(), "tc {args:?}");
    };
    tc(&["qdisc", "del", "dev", &ifb, "root"]);
    exec_bw(&ours_bw(), &sb, &rt, "CHECK", &att, &conf).assert_err(100);
    tc(&["qdisc", "del", "dev", &host, "root"]);
    exec_bw(&ours_bw(), &sb, &rt, "CHECK", &att, &conf).assert_err(100);

    // The pod namespace goes first (the veth with it): DEL still removes the ifb, twice.
    pod.delete();
    assert_eq!(ifbs(&sb.node.name), vec![ifb.clone()]);
    for _ in 0..2 {
        let out = exec_bw(&ours_bw(), &sb, &rt, "DEL", &att, &conf);
        assert!(out.ok(), "DEL: {out:?}");
    }
    assert!(ifbs(&sb.node.name).is_empty());
    let mut no_ns = att.clone();
    no_ns.netns.clear();
    let out = exec_bw(&ours_bw(), &sb, &rt, "DEL", &no_ns, &conf);
    assert!(out.ok(), "DEL without CNI_NETNS: {out:?}");
    rt.del(&first(&net), &att, Some(&r))
        .unwrap_or_else(|o| panic!("bridge DEL: {o:?}"));

    // Ingress only, from runtimeConfig: a tbf on the host veth, no ifb; no limits: the result passes through.
    let pod = sb.pod(1);
    let att = sb.att(1, &pod);
    let prev = rt
        .add(&first(&net), &att)
        .unwrap_or_else(|o| panic!("bridge ADD: {o:?}"));
    let host = result_host_veth(&prev);
    let mut conf = net.plugin_conf(1, Some(&prev));
    for k in ["ingressRate", "ingressBurst", "egressRate", "egressBurst"] {
        conf.as_object_mut().map(|o| o.remove(k));
    }
    conf["runtimeConfig"] =
        json!({"bandwidth": {"ingressRate": 8_000_000, "ingressBurst": 800_000}});
    let out = exec_bw(&ours_bw(), &sb, &rt, "ADD", &att, &conf);
    assert!(out.ok(), "{out:?}");
    assert_eq!(out.json(), prev);
    assert!(ifbs(&sb.node.name).is_empty());
    assert!(qdiscs(&sb.node.name, &host)
        .iter()
        .any(|q| q["kind"] == "tbf"));
    conf.as_object_mut().map(|o| o.remove("runtimeConfig"));
    let out = exec_bw(&ours_bw(), &sb, &rt, "ADD", &att, &conf);
    assert!(out.ok(), "{out:?}");
    assert_eq!(out.json(), prev);
    rt.del(&first(&net), &att, Some(&prev))
        .unwrap_or_else(|o| panic!("bridge DEL: {o:?}"));
}

/// Bad input: our code (the reference refuses too, with 999), nothing made.
fn bad_input() {
    require_root_and_ifb();
    let sb = Sandbox::new();
    let pod = sb.pod(0);
    let rt = sb.runtime(&Impl::ours());
    let att = sb.att(0, &pod);
    let net = chain(&sb, json!({"type": "bandwidth"}));
    let prev = rt
        .add(&first(&net), &att)
        .unwrap_or_else(|o| panic!("bridge ADD: {o:?}"));
    let host = result_host_veth(&prev);
    let base = |bw: Value, prev: Option<&Value>| {
        let mut t = json!({"type": "bandwidth"});
        for (k, v) in bw.as_object().into_iter().flatten() {
            t[k] = v.clone();
        }
        chain(&sb, t).plugin_conf(1, prev)
    };
    let cases: Vec<(&str, Value, u64, bool)> = vec![
        (
            "rate without burst",
            base(json!({"ingressRate": 1000}), Some(&prev)),
            7,
            true,
        ),
        (
            "burst without rate",
            base(json!({"egressBurst": 1000}), Some(&prev)),
            7,
            true,
        ),
        (
            "runtimeConfig rate without burst",
            base(
                json!({"runtimeConfig": {"bandwidth": {"egressRate": 1000}}}),
                Some(&prev),
            ),
            7,
            true,
        ),
        (
            "burst over 4 GB",
            base(
                json!({"ingressRate": 1000, "ingressBurst": 40_000_000_000u64}),
                Some(&prev),
            ),
            7,
            true,
        ),
        (
            "negative rate",
            base(json!({"ingressRate": -1, "ingressBurst": 5}), Some(&prev)),
            7,
            true,
        ),
        (
            "no prevResult",
            base(json!({"ingressRate": 8000, "ingressBurst": 8000}), None),
            7,
            true,
        ),
        (
            "shapedSubnets (HTB, not done)",
            base(
                json!({"ingressRate": 8000, "ingressBurst": 8000, "shapedSubnets": ["10.0.0.0/8"]}),
                Some(&prev),
            ),
            2,
            false,
        ),
        (
            "old spec version",
            {
                let mut c = base(
                    json!({"ingressRate": 8000, "ingressBurst": 8000}),
                    Some(&prev),
                );
                c["cniVersion"] = json!("0.2.0");
                c
            },
            1,
            true,
        ),
    ];
    for (what, conf, code, reference_refuses) in &cases {
        let out = exec_bw(&ours_bw(), &sb, &rt, "ADD", &att, conf);
        out.assert_err(*code);
        assert!(!out.stderr.contains("panicked"), "{what}: {out:?}");
        assert!(
            qdiscs(&sb.node.name, &host)
                .iter()
                .all(|q| q["kind"] != "tbf"),
            "{what}: tbf made"
        );
        assert!(ifbs(&sb.node.name).is_empty(), "{what}: ifb made");
        if *reference_refuses {
            let out = exec_bw(&reference_bw(), &sb, &rt, "ADD", &att, conf);
            assert!(!out.ok(), "{what}: the reference accepted it: {out:?}");
        }
    }
    rt.del(&first(&net), &att, Some(&prev))
        .unwrap_or_else(|o| panic!("bridge DEL: {o:?}"));
}

/// Kills of bandwidth ADD in the SIGKILL test.
const ADD_KILLS: usize = 15;

/// bandwidth ADD SIGKILLed at a random point of its run (before the ifb, between the ifb and its qdiscs, after),
/// then DEL as the runtime does after a failed ADD: no ifb is left, wherever the kill landed.
fn sigkill_during_add_then_del_leaves_no_ifb() {
    require_root_and_ifb();
    let sb = Sandbox::new();
    let pod = sb.pod(0);
    let rt = sb.runtime(&Impl::ours());
    let net = chain(
        &sb,
        json!({"type": "bandwidth", "ingressRate": 8_000_000, "ingressBurst": 800_000,
               "egressRate": 8_000_000, "egressBurst": 800_000}),
    );
    // ADDs run to their end: the shortest spreads the kills over a whole ADD, whatever the build and machine.
    let mut span = Duration::MAX;
    for _ in 0..3 {
        let probe = sb.att(0, &pod);
        let prev = rt
            .add(&first(&net), &probe)
            .unwrap_or_else(|o| panic!("bridge ADD: {o:?}"));
        let conf = net.plugin_conf(1, Some(&prev));
        let out = exec_bw(&ours_bw(), &sb, &rt, "ADD", &probe, &conf);
        assert!(out.ok(), "ADD: {out:?}");
        span = span.min(out.elapsed);
        assert!(exec_bw(&ours_bw(), &sb, &rt, "DEL", &probe, &conf).ok());
        rt.del(&first(&net), &probe, Some(&prev))
            .unwrap_or_else(|o| panic!("bridge DEL: {o:?}"));
    }
    let mut jitter = Jitter::new();
    let mut killed = 0;
    for i in 0..ADD_KILLS {
        let mut att = sb.att(0, &pod);
        att.container_id = format!("{}k{i}", att.container_id);
        let prev = rt
            .add(&first(&net), &att)
            .unwrap_or_else(|o| panic!("iteration {i}: bridge ADD: {o:?}"));
        let conf = net.plugin_conf(1, Some(&prev));
        if exec_plugin_killed(
            &ours_bw(),
            Some(&sb.node.path()),
            &rt.env_for("ADD", Some(&att)),
            conf.to_string().as_bytes(),
            jitter.below(span),
        ) {
            killed += 1;
        }
        let out = exec_bw(&ours_bw(), &sb, &rt, "DEL", &att, &conf);
        assert!(out.ok(), "iteration {i}: DEL: {out:?}");
        assert!(
            ifbs(&sb.node.name).is_empty(),
            "iteration {i}: ifb left: {:?}",
            ifbs(&sb.node.name)
        );
        rt.del(&first(&net), &att, Some(&prev))
            .unwrap_or_else(|o| panic!("iteration {i}: bridge DEL: {o:?}"));
    }
    eprintln!("{ADD_KILLS} ADDs, {killed} killed before finishing");
}

testkit::main!(
    same_qdiscs_as_reference,
    del_check_and_cleanup,
    bad_input,
    shapes_both_directions,
    sigkill_during_add_then_del_leaves_no_ifb,
);
