//! The `host-device` plugin, black-box and differential against the reference host-device in /usr/lib/cni. A veth
//! end `hd0` in the node namespace stands in for a NIC; its peer sits in a LAN namespace holding the gateway
//! 10.244.7.1, so traffic from the pod through the device can be checked. The same configurations go to ours and
//! the reference: results (normalised), the pod's link (name, MAC, MTU, alias, addresses, routes), and DEL
//! putting the device back in the node under its name; ADD by one and DEL by the other; the `hwaddr` and
//! `kernelpath` lookups; bad input refused by both with nothing moved; a SIGKILL at any point of ADD, after which
//! DEL puts the device back and frees its IP.

mod common;

use common::*;
use serde_json::{json, Value};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const NET: &str = "hdtest";
const DEV: &str = "hd0";

/// The node's stand-in NIC `hd0` (MTU 1400, up), its peer `lan0` with the gateway address in the LAN namespace
/// `<id>l`, which it returns.
fn nic(sb: &Sandbox) -> Netns {
    let lan = Netns::new(&format!("{}l", sb.id));
    ip(
        &sb.node.name,
        &[
            "link", "add", DEV, "mtu", "1400", "type", "veth", "peer", "name", "lan0", "netns",
            &lan.name,
        ],
    );
    ip(&sb.node.name, &["link", "set", DEV, "up"]);
    ip(&lan.name, &["addr", "add", "10.244.7.1/24", "dev", "lan0"]);
    ip(&lan.name, &["link", "set", "lan0", "mtu", "1400", "up"]);
    lan
}

fn hd_net(sb: &Sandbox, extra: Value, ipam: Option<Value>) -> Net {
    hd_net_v(sb, extra, ipam, "1.0.0")
}

fn hd_net_v(sb: &Sandbox, extra: Value, ipam: Option<Value>, version: &str) -> Net {
    let mut p = json!({"type": "host-device", "device": DEV});
    if let Some(i) = ipam {
        p["ipam"] = i;
    }
    for (k, v) in extra.as_object().into_iter().flatten() {
        p[k] = v.clone();
    }
    let _ = sb;
    Net::new(NET, version, vec![p])
}

fn static_ipam() -> Value {
    json!({"type": "static", "addresses": [{"address": "10.244.7.5/24", "gateway": "10.244.7.1"},
                                          {"address": "fd00:7::5/64"}],
           "routes": [{"dst": "10.96.0.0/12"}], "dns": {"nameservers": ["10.96.0.10"]}})
}

fn host_local(sb: &Sandbox) -> Value {
    json!({"type": "host-local", "dataDir": sb.path("ipam"),
           "ranges": [[{"subnet": "10.244.7.0/24", "rangeStart": "10.244.7.10", "gateway": "10.244.7.1"}]]})
}

/// What a pod's interface looks like: name, MTU, alias, admin state, addresses; and the routes of the pod.
fn pod_view(pod: &str, ifname: &str) -> Value {
    let l = link(pod, ifname).unwrap_or(Value::Null);
    let mut routes: Vec<String> = ip_json(pod, &["-4", "route", "show"])
        .unwrap_or(Value::Null)
        .as_array()
        .into_iter()
        .flatten()
        .map(|r| {
            format!(
                "{} via={} dev={}",
                r["dst"].as_str().unwrap_or(""),
                r["gateway"].as_str().unwrap_or("-"),
                r["dev"].as_str().unwrap_or("")
            )
        })
        .collect();
    routes.sort();
    json!({"name": l["ifname"], "mtu": l["mtu"], "alias": l["ifalias"],
           "up": l["flags"].as_array().is_some_and(|f| f.iter().any(|x| x == "UP")),
           "addrs": addrs(pod, ifname), "routes": routes})
}

/// The result with the MAC (random per sandbox) and the netns path blanked; the MAC must be the device's.
fn shape(r: &Value, mac: &str) -> Value {
    let mut r = r.clone();
    // The reference prints `"dns": {}` in 0.2.0 results too; ours (all our plugins) leave it out there.
    if r["cniVersion"] == "0.2.0" && r.get("dns") == Some(&json!({})) {
        r.as_object_mut().map(|o| o.remove("dns"));
    }
    if let Some(a) = r["interfaces"].as_array_mut() {
        for i in a {
            assert_eq!(
                i["mac"].as_str(),
                Some(mac),
                "the result's MAC is the device's"
            );
            i["mac"] = json!("-");
            i["sandbox"] = json!("netns");
        }
    }
    r
}

fn mac_of(ns: &str, dev: &str) -> String {
    link(ns, dev)
        .and_then(|l| l["address"].as_str().map(str::to_string))
        .unwrap_or_default()
}

/// The device is back in the node as `hd0`, and the pod has only its loopback.
fn assert_back(sb: &Sandbox, pod: &Netns, mac: &str, what: &str) {
    assert_eq!(
        mac_of(&sb.node.name, DEV),
        mac,
        "{what}: {DEV} back in the node"
    );
    assert!(
        addrs(&sb.node.name, DEV).is_empty(),
        "{what}: addresses left on {DEV}"
    );
    assert_eq!(link_names(&pod.name), vec!["lo"], "{what}: pod links");
}

/// One implementation's ADD with `net`, its view of the pod, CHECK, DEL (device back); the result and the view.
fn attach(
    imp: &Impl,
    ipam: Option<Value>,
    extra: Value,
    version: &str,
) -> Result<(Value, Value), Out> {
    let sb = Sandbox::new();
    let _lan = nic(&sb);
    let mac = mac_of(&sb.node.name, DEV);
    let net = hd_net_v(&sb, extra, ipam.clone(), version);
    let rt = sb.runtime(imp);
    let pod = sb.pod(0);
    let att = sb.att(0, &pod);
    let r = match rt.add(&net, &att) {
        Ok(r) => r,
        Err(o) => {
            if imp.reference {
                // The reference refuses some requests only after moving the device: its DEL moves it back.
                let _ = rt.del(&net, &att, None);
            }
            // Refused: nothing moved (ours), or moved back.
            assert_back(&sb, &pod, &mac, imp.label);
            return Err(o);
        }
    };
    let view = pod_view(&pod.name, "eth0");
    assert!(
        link(&sb.node.name, DEV).is_none(),
        "{}: {DEV} left the node",
        imp.label
    );
    if ipam.is_some() {
        assert!(
            ping(&pod.name, "10.244.7.1"),
            "{}: pod → LAN through the device",
            imp.label
        );
    }
    if version_at_least(version, "0.4.0") {
        match rt.check(&net, &att, &r) {
            Ok(()) => {}
            // Debian's 1.1.1 looks for the IPAM routes without the gateway they were added with (as its ptp does),
            // so its CHECK fails on its own attachment; ours must pass.
            Err(o) if imp.reference && format!("{o:?}").contains("not found in routing table") => {}
            Err(o) => panic!("{} CHECK: {o:?}", imp.label),
        }
    }
    rt.del(&net, &att, Some(&r))
        .unwrap_or_else(|o| panic!("{} DEL: {o:?}", imp.label));
    assert_back(&sb, &pod, &mac, imp.label);
    if !imp.reference {
        // Idempotent: the device is back already; then the pod is gone.
        rt.del(&net, &att, Some(&r))
            .unwrap_or_else(|o| panic!("DEL again: {o:?}"));
        pod.delete();
        rt.del(&net, &att, Some(&r))
            .unwrap_or_else(|o| panic!("DEL with the pod gone: {o:?}"));
    }
    Ok((shape(&r, &mac), view))
}

/// Ours and the reference make the same attachment, with static IPAM and without IPAM: the same result and the
/// same pod interface (renamed eth0, the device's MAC and MTU, its host name as alias, up, the addresses and
/// routes); the pod reaches the LAN through it; CHECK passes; DEL puts the device back in the node as hd0
/// (ours: DEL again, and with the pod gone, succeed too).
fn same_attachment_as_reference() {
    require_root();
    for v in VERSIONS.iter().filter(|v| Impl::reference().speaks(v)) {
        for (what, ipam, extra) in [
            ("static IPAM", Some(static_ipam()), json!({})),
            (
                "static IPAM and dns",
                Some(static_ipam()),
                json!({"dns": {"nameservers": ["10.96.0.11"]}}),
            ),
            ("no IPAM", None, json!({})),
        ] {
            let o = attach(&Impl::ours(), ipam.clone(), extra.clone(), v);
            let r = attach(&Impl::reference(), ipam, extra, v);
            let ((ro, vo), (rr, vr)) = match (o, r) {
                (Ok(o), Ok(r)) => (o, r),
                // A 0.2.0 result has no interfaces: without an address there is nothing to say; both refuse
                // (ours before moving the device, the reference after).
                (Err(o), Err(_)) if *v == "0.2.0" => {
                    o.assert_some_err();
                    continue;
                }
                (o, r) => panic!("{v} {what}: ours {:?}, reference {:?}", o.err(), r.err()),
            };
            assert_eq!(ro, rr, "{v} {what}: results");
            assert_eq!(vo, vr, "{v} {what}: pod interfaces");
            assert_eq!(vo["name"], "eth0");
            assert_eq!(vo["alias"], DEV);
            assert_eq!(vo["mtu"], 1400);
        }
    }
}

/// CHECK refuses, with ours as with the reference, a previous result whose interface is in another sandbox or
/// has another MAC, or names an address the device lacks; and a pod without the device.
fn check_refusals_as_reference() {
    require_root();
    for imp in [Impl::ours(), Impl::reference()] {
        let sb = Sandbox::new();
        let _lan = nic(&sb);
        let net = hd_net(&sb, json!({}), None);
        let rt = sb.runtime(&imp);
        let pod = sb.pod(0);
        let att = sb.att(0, &pod);
        let r = rt
            .add(&net, &att)
            .unwrap_or_else(|o| panic!("{} ADD: {o:?}", imp.label));
        rt.check(&net, &att, &r)
            .unwrap_or_else(|o| panic!("{} CHECK: {o:?}", imp.label));
        let mut other_sandbox = r.clone();
        other_sandbox["interfaces"][0]["sandbox"] = json!("/run/netns/elsewhere");
        let mut other_mac = r.clone();
        other_mac["interfaces"][0]["mac"] = json!("02:00:00:00:00:99");
        let mut other_ip = r.clone();
        other_ip["ips"] = json!([{"interface": 0, "address": "10.244.7.99/24"}]);
        for (what, prev) in [
            ("sandbox", &other_sandbox),
            ("mac", &other_mac),
            ("address", &other_ip),
        ] {
            let e = rt.check(&net, &att, prev);
            assert!(e.is_err(), "{} CHECK with another {what} passed", imp.label);
        }
        rt.del(&net, &att, Some(&r))
            .unwrap_or_else(|o| panic!("{} DEL: {o:?}", imp.label));
        assert!(
            rt.check(&net, &att, &r).is_err(),
            "{} CHECK with the device gone passed",
            imp.label
        );
    }
}

/// A device moved in by the reference is moved back by ours, and the reverse.
fn interop_with_reference() {
    require_root();
    for (adder, deller) in [
        (Impl::reference(), Impl::ours()),
        (Impl::ours(), Impl::reference()),
    ] {
        let sb = Sandbox::new();
        let _lan = nic(&sb);
        let mac = mac_of(&sb.node.name, DEV);
        let net = hd_net(&sb, json!({}), Some(host_local(&sb)));
        let pod = sb.pod(0);
        let att = sb.att(0, &pod);
        let r = sb
            .runtime(&adder)
            .add(&net, &att)
            .unwrap_or_else(|o| panic!("{} ADD: {o:?}", adder.label));
        sb.runtime(&deller)
            .del(&net, &att, Some(&r))
            .unwrap_or_else(|o| panic!("{} DEL: {o:?}", deller.label));
        let what = format!("ADD by {}, DEL by {}", adder.label, deller.label);
        assert_back(&sb, &pod, &mac, &what);
        assert!(
            ip_files(&sb.path("ipam"), NET).is_empty(),
            "{what}: IP kept"
        );
    }
}

/// Runs `bin` for `cmd` through `ip netns exec <node>`, which mounts a sysfs of the node namespace (as a node's
/// own /sys is): what the `kernelpath` lookup reads.
fn exec_with_node_sysfs(sb: &Sandbox, bin: &std::path::Path, env: &Env, conf: &Value) -> Out {
    let start = Instant::now();
    let mut c = Command::new("ip");
    c.args(["netns", "exec", &sb.node.name])
        .arg(bin)
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .envs(&env.vars)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = c.spawn().expect("spawn ip netns exec");
    if let Some(mut si) = child.stdin.take() {
        use std::io::Write;
        let _ = si.write_all(conf.to_string().as_bytes());
    }
    let out = child.wait_with_output().expect("wait");
    Out {
        status: out.status,
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        elapsed: start.elapsed(),
    }
}

/// The device found by an alternative name (`device`: the kernel's lookup), by its MAC (`hwaddr`, also in Go's
/// dash form) and by its sysfs path (`kernelpath`
/// /sys/devices/virtual: its `net` directory lists the node's virtual devices, hd0 first, lo next), by ours and
/// the reference alike.
fn lookups_by_mac_and_kernelpath() {
    require_root();
    for imp in [Impl::ours(), Impl::reference()] {
        let sb = Sandbox::new();
        let _lan = nic(&sb);
        let mac = mac_of(&sb.node.name, DEV);
        ip(
            &sb.node.name,
            &["link", "property", "add", "dev", DEV, "altname", "hd0alt"],
        );
        let rt = sb.runtime(&imp);
        let pod = sb.pod(0);
        let att = sb.att(0, &pod);
        for (what, key) in [
            ("device by its altname", json!({"device": "hd0alt"})),
            ("hwaddr", json!({"hwaddr": mac})),
            (
                "hwaddr with dashes",
                json!({"hwaddr": mac.replace(':', "-").to_uppercase()}),
            ),
            ("kernelpath", json!({"kernelpath": "/sys/devices/virtual"})),
        ] {
            let mut p = key.clone();
            p["type"] = json!("host-device");
            let conf = Net::new(NET, "1.0.0", vec![p]).plugin_conf(0, None);
            let run = |cmd: &str| {
                exec_with_node_sysfs(
                    &sb,
                    &imp.bin("host-device"),
                    &rt.env_for(cmd, Some(&att)),
                    &conf,
                )
            };
            let o = run("ADD");
            assert!(o.ok(), "{} {what}: ADD: {o:?}", imp.label);
            assert_eq!(
                mac_of(&pod.name, "eth0"),
                mac,
                "{} {what}: the device moved",
                imp.label
            );
            assert_eq!(
                o.json()["interfaces"][0]["mac"],
                json!(mac),
                "{} {what}",
                imp.label
            );
            let o = run("DEL");
            assert!(o.ok(), "{} {what}: DEL: {o:?}", imp.label);
            assert_back(&sb, &pod, &mac, &format!("{} {what}", imp.label));
        }
    }
}

/// Bad input: refused by both (the reference with 999, ours with the code given), nothing moved; a device in use
/// (in another pod already) is refused naming it.
fn bad_input_refused_as_reference() {
    require_root();
    let sb = Sandbox::new();
    let _lan = nic(&sb);
    let mac = mac_of(&sb.node.name, DEV);
    let pod = sb.pod(0);
    let att = sb.att(0, &pod);
    let cases: Vec<(&str, Value, u64)> = vec![
        ("no device key", json!({}), 7),
        ("no such device", json!({"device": "hd9"}), 100),
        ("bad hwaddr", json!({"hwaddr": "zz"}), 100),
        (
            "unknown hwaddr",
            json!({"hwaddr": "02:00:00:00:00:99"}),
            100,
        ),
        ("relative kernelpath", json!({"kernelpath": "sys/x"}), 100),
        (
            "no such PCI device",
            json!({"pciBusID": "0000:99:00.0"}),
            100,
        ),
        (
            "deviceID beats device",
            json!({"device": DEV, "runtimeConfig": {"deviceID": "0000:99:00.0"}}),
            100,
        ),
        ("device not a string", json!({"device": 7}), 6),
    ];
    for (what, key, code) in cases {
        let mut p = key.clone();
        p["type"] = json!("host-device");
        let conf = Net::new(NET, "1.0.0", vec![p]).plugin_conf(0, None);
        for imp in [Impl::reference(), Impl::ours()] {
            let o = sb
                .runtime(&imp)
                .exec("host-device", "ADD", Some(&att), &conf);
            let want = if imp.reference { 999 } else { code };
            assert_eq!(o.assert_some_err(), want, "{what} {}: {o:?}", imp.label);
            assert_eq!(
                mac_of(&sb.node.name, DEV),
                mac,
                "{what} {}: moved",
                imp.label
            );
            assert_eq!(link_names(&pod.name), vec!["lo"], "{what} {}", imp.label);
        }
    }
    // In use: moved into pod 0, then asked for pod 1.
    let net = hd_net(&sb, json!({}), None);
    let rt = sb.runtime(&Impl::ours());
    let r = rt.add(&net, &att).unwrap_or_else(|o| panic!("ADD: {o:?}"));
    let pod1 = sb.pod(1);
    let att1 = sb.att(1, &pod1);
    for imp in [Impl::reference(), Impl::ours()] {
        let o = sb
            .runtime(&imp)
            .exec("host-device", "ADD", Some(&att1), &net.plugin_conf(0, None));
        o.assert_some_err();
        if !imp.reference {
            assert!(o.msg().contains(DEV) && o.msg().contains("in use"), "{o:?}");
        }
        assert_eq!(link_names(&pod1.name), vec!["lo"]);
        assert_eq!(mac_of(&pod.name, "eth0"), mac, "still in pod 0");
    }
    rt.del(&net, &att, Some(&r))
        .unwrap_or_else(|o| panic!("DEL: {o:?}"));
    assert_back(&sb, &pod, &mac, "after the in-use refusal");
}

/// What the reference leaves when SIGKILLed between its move and its rename (the device in the pod under its host
/// name, without the alias or with it): our DEL moves it back too, found by `device` and by `hwaddr`.
fn del_recovers_a_device_left_under_its_host_name() {
    require_root();
    let sb = Sandbox::new();
    let _lan = nic(&sb);
    let mac = mac_of(&sb.node.name, DEV);
    let pod = sb.pod(0);
    let att = sb.att(0, &pod);
    let rt = sb.runtime(&Impl::ours());
    for (what, key, alias) in [
        ("device, no alias", json!({"device": DEV}), false),
        ("device, alias set", json!({"device": DEV}), true),
        ("hwaddr, no alias", json!({"hwaddr": mac}), false),
    ] {
        ip(&sb.node.name, &["link", "set", DEV, "netns", &pod.name]);
        if alias {
            ip(&pod.name, &["link", "set", DEV, "alias", DEV]);
        }
        let mut p = key.clone();
        p["type"] = json!("host-device");
        let conf = Net::new(NET, "1.0.0", vec![p]).plugin_conf(0, None);
        let o = rt.exec("host-device", "DEL", Some(&att), &conf);
        assert!(o.ok(), "{what}: DEL: {o:?}");
        assert_back(&sb, &pod, &mac, what);
    }
}

const ADD_KILLS: usize = 15;

/// ADD (host-local IPAM) SIGKILLed at a random point of its run (before the move, between the move and IPAM,
/// between IPAM and the addresses, after), then DEL as a runtime does after a failed ADD: the device is back in
/// the node as hd0 and host-local holds no IP, wherever the kill landed.
fn sigkill_during_add_then_del_puts_device_back() {
    require_root();
    let sb = Sandbox::new();
    let _lan = nic(&sb);
    let mac = mac_of(&sb.node.name, DEV);
    let pod = sb.pod(0);
    let rt = sb.runtime(&Impl::ours());
    let net = hd_net(&sb, json!({}), Some(host_local(&sb)));
    let conf = net.plugin_conf(0, None);
    // ADDs run to their end: the shortest spreads the kills over a whole ADD, whatever the build and machine.
    let mut span = Duration::MAX;
    for _ in 0..3 {
        let att = sb.att(0, &pod);
        let o = rt.exec("host-device", "ADD", Some(&att), &conf);
        assert!(o.ok(), "ADD: {o:?}");
        span = span.min(o.elapsed);
        assert!(rt.exec("host-device", "DEL", Some(&att), &conf).ok());
        assert_back(&sb, &pod, &mac, "probe");
    }
    let mut jitter = Jitter::new();
    let mut killed = 0;
    let (mut moved, mut allocated) = (0, 0);
    for i in 0..ADD_KILLS {
        let mut att = sb.att(0, &pod);
        att.container_id = format!("{}k{i}", att.container_id);
        if exec_plugin_killed(
            &Impl::ours().bin("host-device"),
            Some(&sb.node.path()),
            &rt.env_for("ADD", Some(&att)),
            conf.to_string().as_bytes(),
            jitter.below(span),
        ) {
            killed += 1;
        }
        if link(&pod.name, "eth0").is_some() {
            moved += 1;
        }
        if !ip_files(&sb.path("ipam"), NET).is_empty() {
            allocated += 1;
        }
        let o = rt.exec("host-device", "DEL", Some(&att), &conf);
        assert!(o.ok(), "iteration {i}: DEL: {o:?}");
        assert_back(&sb, &pod, &mac, &format!("iteration {i}"));
        assert!(
            ip_files(&sb.path("ipam"), NET).is_empty(),
            "iteration {i}: IP kept: {:?}",
            ip_files(&sb.path("ipam"), NET)
        );
    }
    eprintln!(
        "{ADD_KILLS} ADDs, {killed} killed before finishing; the device in the pod after {moved}, an IP held after \
         {allocated}"
    );
}

testkit::main!(
    same_attachment_as_reference,
    check_refusals_as_reference,
    interop_with_reference,
    lookups_by_mac_and_kernelpath,
    bad_input_refused_as_reference,
    del_recovers_a_device_left_under_its_host_name,
    sigkill_during_add_then_del_puts_device_back
);
