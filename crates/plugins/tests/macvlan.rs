//! The `macvlan` plugin, black-box and differential against the reference macvlan in /usr/lib/cni.
//!
//! The world of each case: a node namespace whose "NIC" `nic0` is a veth to a LAN namespace (192.0.2.0/24
//! underlay, the node's default route through it, and 10.244.20.1/24 on the LAN side as the pods' gateway).
//! Pods get macvlan sub-interfaces of `nic0` and addresses from host-local (10.244.20.0/24). Ours and the reference
//! make the same results, links (kind, mode, MTU, master), addresses and routes; the pods reach each other and
//! the LAN; CHECK passes; DEL leaves nothing and succeeds again with the pod gone. Further cases: the MAC from
//! the configuration, CNI_ARGS and runtimeConfig; every mode (passthru on a NIC of its own); the default master;
//! `linkInContainer` (ours only: Debian's 1.1.1 predates it); bad configurations refused with nothing made (codes
//! compared with the reference's); a SIGKILL during ADD cleaned by the next DEL.

mod common;

use common::sublink::*;
use common::*;
use kernel::sublink::{MacvlanMode, SublinkKind};
use serde_json::{json, Map, Value};
use std::time::{Duration, Instant};

const NET: &str = "mvtest";

fn mv_net(sb: &Sandbox, extra: Value) -> Net {
    let p = json!({"type": "macvlan", "master": "nic0", "mtu": 1400, "ipam": lan_ipam(sb)});
    Net::new(NET, "1.0.0", vec![with(p, &extra)])
}

struct Made {
    results: Vec<Value>,
    links: Vec<Value>,
    addrs: Vec<Vec<String>>,
    routes: Vec<Vec<String>>,
}

fn attach_two(imp: &Impl) -> (World, Net, Vec<(Netns, Att)>, Made) {
    let w = World::new();
    let net = mv_net(&w.sb, json!({}));
    let rt = w.sb.runtime(imp);
    let mut pods = Vec::new();
    let mut made = Made {
        results: vec![],
        links: vec![],
        addrs: vec![],
        routes: vec![],
    };
    for i in 0..2 {
        let pod = w.sb.pod(i);
        let att = w.sb.att(i, &pod);
        let r = rt
            .add(&net, &att)
            .unwrap_or_else(|o| panic!("{} ADD {i}: {o:?}", imp.label));
        made.results.push(r);
        made.links.push(pod_link(&pod.name, "eth0"));
        made.addrs.push(addrs(&pod.name, "eth0"));
        made.routes.push(pod_routes(&pod.name));
        pods.push((pod, att));
    }
    (w, net, pods, made)
}

/// Ours and the reference make the same attachment; the pods reach each other and the LAN; CHECK; DEL leaves
/// nothing, and DEL again with the pod gone succeeds.
fn same_attachment_as_reference() {
    require_root();
    let (w_o, net_o, pods_o, ours) = attach_two(&Impl::ours());
    let (w_r, net_r, pods_r, refr) = attach_two(&Impl::reference());
    for i in 0..2 {
        assert_eq!(
            shape(&ours.results[i]),
            shape(&refr.results[i]),
            "pod {i} result"
        );
        assert_eq!(ours.links[i], refr.links[i], "pod {i} link");
        assert_eq!(ours.addrs[i], refr.addrs[i], "pod {i} addresses");
        assert_eq!(ours.routes[i], refr.routes[i], "pod {i} routes");
    }
    assert_eq!(ours.links[0]["kind"], "macvlan");
    assert_eq!(ours.links[0]["mode"], "bridge");
    assert_eq!(ours.links[0]["mtu"], 1400);
    assert_eq!(ours.links[0]["master"], index_of(w_o.node(), "nic0"));
    // The result's MAC is the link's.
    let mac = link(&pods_o[0].0.name, "eth0").map(|l| l["address"].clone());
    assert_eq!(Some(ours.results[0]["interfaces"][0]["mac"].clone()), mac);
    // Traffic, on ours: pod to pod (bridge mode) and pod to the LAN.
    assert!(
        ping(&pods_o[0].0.name, &result_ip(&ours.results[1])),
        "pod 0 → pod 1"
    );
    assert!(ping(&pods_o[1].0.name, "10.244.20.1"), "pod 1 → LAN");
    for (w, net, pods, made, imp) in [
        (&w_o, &net_o, &pods_o, &ours, Impl::ours()),
        (&w_r, &net_r, &pods_r, &refr, Impl::reference()),
    ] {
        let rt = w.sb.runtime(&imp);
        for (i, (pod, att)) in pods.iter().enumerate() {
            rt.check(net, att, &made.results[i])
                .unwrap_or_else(|o| panic!("{} CHECK {i}: {o:?}", imp.label));
            rt.del(net, att, Some(&made.results[i]))
                .unwrap_or_else(|o| panic!("{} DEL {i}: {o:?}", imp.label));
            let label = format!("{} pod {i}", imp.label);
            dels_after_del(&rt, net, att, pod, &made.results[i], &label);
        }
        assert_node_clean(w, NET, imp.label);
    }
}

/// CHECK refuses an attachment whose link no longer matches: another mode or master in the configuration, the
/// link gone.
fn check_detects_drift() {
    require_root();
    let w = World::new();
    let net = mv_net(&w.sb, json!({}));
    let rt = w.sb.runtime(&Impl::ours());
    let pod = w.sb.pod(0);
    let att = w.sb.att(0, &pod);
    let r = rt.add(&net, &att).unwrap_or_else(|o| panic!("ADD: {o:?}"));
    rt.check(&net, &att, &r)
        .unwrap_or_else(|o| panic!("CHECK: {o:?}"));
    let vepa = mv_net(&w.sb, json!({"mode": "vepa"}));
    let o = rt
        .check(&vepa, &att, &r)
        .expect_err("CHECK with another mode");
    assert!(o.msg().contains("mode"), "{o:?}");
    w.nic("nic1", "lan1");
    let other = mv_net(&w.sb, json!({"master": "nic1"}));
    let o = rt
        .check(&other, &att, &r)
        .expect_err("CHECK with another master");
    assert!(o.msg().contains("nic1"), "{o:?}");
    ip(&pod.name, &["link", "del", "eth0"]);
    rt.check(&net, &att, &r)
        .expect_err("CHECK with the link gone");
    rt.del(&net, &att, Some(&r))
        .unwrap_or_else(|o| panic!("DEL: {o:?}"));
    assert!(ip_files(&w.sb.path("ipam"), NET).is_empty());
}

/// The MAC from the `mac` key, from CNI_ARGS `MAC=` (over the key) and from runtimeConfig (over both), for both
/// implementations.
fn mac_sources() {
    require_root();
    for imp in [Impl::ours(), Impl::reference()] {
        let w = World::new();
        let rt = w.sb.runtime(&imp);
        let net = mv_net(
            &w.sb,
            json!({"mac": "02:00:00:00:aa:01", "capabilities": {"mac": true}}),
        );
        let cases: [(&str, Option<&str>, &str); 3] = [
            ("", None, "02:00:00:00:aa:01"),
            (";MAC=02:00:00:00:aa:02", None, "02:00:00:00:aa:02"),
            (
                ";MAC=02:00:00:00:aa:02",
                Some("02:00:00:00:aa:03"),
                "02:00:00:00:aa:03",
            ),
        ];
        for (i, (args, rc_mac, want)) in cases.into_iter().enumerate() {
            let pod = w.sb.pod(i);
            let mut att = w.sb.att(i, &pod);
            att.args.push_str(args);
            let mut rc = Map::new();
            if let Some(m) = rc_mac {
                rc.insert("mac".into(), json!(m));
            }
            let r = rt
                .add_rc(&net, &att, &rc)
                .unwrap_or_else(|o| panic!("{} ADD {i}: {o:?}", imp.label));
            assert_eq!(r["interfaces"][0]["mac"], want, "{} case {i}", imp.label);
            assert_eq!(
                link(&pod.name, "eth0").map(|l| l["address"].clone()),
                Some(json!(want)),
                "{} case {i}",
                imp.label
            );
            rt.del_rc(&net, &att, &rc, Some(&r))
                .unwrap_or_else(|o| panic!("{} DEL {i}: {o:?}", imp.label));
        }
    }
}

/// Every mode, layer 2 only (no IPAM: the link just up, no address), for both implementations: the same result
/// and link. passthru takes a NIC of its own.
fn each_mode() {
    require_root();
    for mode in ["bridge", "private", "vepa", "passthru"] {
        let mut seen = Vec::new();
        for imp in [Impl::ours(), Impl::reference()] {
            let w = World::new();
            w.nic("nic1", "lan1");
            let master = if mode == "passthru" { "nic1" } else { "nic0" };
            let net = mv_net(
                &w.sb,
                json!({"mode": mode, "master": master, "ipam": null, "mtu": null}),
            );
            let rt = w.sb.runtime(&imp);
            let pod = w.sb.pod(0);
            let att = w.sb.att(0, &pod);
            let r = rt
                .add(&net, &att)
                .unwrap_or_else(|o| panic!("{} {mode} ADD: {o:?}", imp.label));
            let l = pod_link(&pod.name, "eth0");
            assert_eq!(l["mode"], mode, "{}", imp.label);
            assert_eq!(l["master"], index_of(w.node(), master), "{}", imp.label);
            assert!(addrs(&pod.name, "eth0").is_empty(), "{}", imp.label);
            if !imp.reference {
                rt.check(&net, &att, &r)
                    .unwrap_or_else(|o| panic!("{mode} CHECK: {o:?}"));
            }
            seen.push((shape(&r), l));
            rt.del(&net, &att, Some(&r))
                .unwrap_or_else(|o| panic!("{} {mode} DEL: {o:?}", imp.label));
            wait_only_lo(&pod);
        }
        assert_eq!(seen[0], seen[1], "{mode}: ours vs reference");
    }
}

/// Without `master`, the interface of the node's default route (here nic1, not the first NIC).
fn default_master() {
    require_root();
    for imp in [Impl::ours(), Impl::reference()] {
        let w = World::new();
        w.nic("nic1", "lan1");
        ip(w.node(), &["route", "del", "default"]);
        ip(w.node(), &["addr", "add", "198.51.100.2/24", "dev", "nic1"]);
        ip(
            w.node(),
            &["route", "add", "default", "via", "198.51.100.1"],
        );
        let net = mv_net(&w.sb, json!({"master": null}));
        let rt = w.sb.runtime(&imp);
        let pod = w.sb.pod(0);
        let att = w.sb.att(0, &pod);
        let r = rt
            .add(&net, &att)
            .unwrap_or_else(|o| panic!("{} ADD: {o:?}", imp.label));
        assert_eq!(
            pod_link(&pod.name, "eth0")["master"],
            index_of(w.node(), "nic1"),
            "{}",
            imp.label
        );
        rt.del(&net, &att, Some(&r))
            .unwrap_or_else(|o| panic!("{} DEL: {o:?}", imp.label));
    }
}

/// `linkInContainer`: the master is a link of the pod namespace and the macvlan is made there; without `master`,
/// the pod's default route names it. (Ours only: Debian's macvlan 1.1.1 has no such key.)
fn link_in_container() {
    require_root();
    let w = World::new();
    let rt = w.sb.runtime(&Impl::ours());
    for (i, master) in [Some("pm0"), None].into_iter().enumerate() {
        let pod = w.sb.pod(i);
        let peer = format!("lanp{i}");
        ip(
            &pod.name,
            &[
                "link",
                "add",
                "pm0",
                "type",
                "veth",
                "peer",
                "name",
                &peer,
                "netns",
                &w.lan.name,
            ],
        );
        ip(&pod.name, &["link", "set", "pm0", "up"]);
        ip(&w.lan.name, &["link", "set", &peer, "up"]);
        if master.is_none() {
            ip(&pod.name, &["addr", "add", "198.51.100.9/24", "dev", "pm0"]);
            ip(
                &pod.name,
                &["route", "add", "default", "via", "198.51.100.1"],
            );
        }
        let net = mv_net(
            &w.sb,
            json!({"linkInContainer": true, "master": master.map(Value::from).unwrap_or(Value::Null)}),
        );
        let att = w.sb.att(i, &pod);
        let r = rt
            .add(&net, &att)
            .unwrap_or_else(|o| panic!("ADD {i}: {o:?}"));
        let l = link(&pod.name, "eth0").expect("eth0 in the pod");
        assert_eq!(l["linkinfo"]["info_kind"], "macvlan");
        assert_eq!(l["link"], "pm0", "master in the pod");
        assert_eq!(
            link_names(w.node()),
            vec!["lo", "nic0"],
            "nothing in the node"
        );
        rt.check(&net, &att, &r)
            .unwrap_or_else(|o| panic!("CHECK {i}: {o:?}"));
        rt.del(&net, &att, Some(&r))
            .unwrap_or_else(|o| panic!("DEL {i}: {o:?}"));
        let deadline = Instant::now() + Duration::from_secs(10);
        while link(&pod.name, "eth0").is_some() || link_names(&pod.name).len() != 2 {
            assert!(Instant::now() < deadline, "{:?}", link_names(&pod.name));
            std::thread::sleep(Duration::from_millis(20));
        }
    }
    assert!(ip_files(&w.sb.path("ipam"), NET).is_empty());
}

/// Bad configurations: refused by both implementations before anything is made (no link in the pod or the node,
/// no IP), ours with code 7 where the reference wraps the same configuration errors as 999.
fn bad_input() {
    require_root();
    let cases: Vec<(&str, Value, &str)> = vec![
        ("unknown mode", json!({"mode": "bogus"}), ""),
        ("missing master", json!({"master": "nope0"}), ""),
        ("MTU above the master's", json!({"mtu": 9000}), ""),
        ("negative MTU", json!({"mtu": -1}), ""),
        ("bad mac key", json!({"mac": "not-a-mac"}), ""),
        ("bad CNI_ARGS MAC", json!({}), ";MAC=zz:zz"),
    ];
    for imp in [Impl::ours(), Impl::reference()] {
        let w = World::new();
        let rt = w.sb.runtime(&imp);
        let pod = w.sb.pod(0);
        for (what, extra, args) in &cases {
            let mut att = w.sb.att(0, &pod);
            att.args.push_str(args);
            let conf = mv_net(&w.sb, extra.clone()).plugin_conf(0, None);
            let out = rt.exec("macvlan", "ADD", Some(&att), &conf);
            assert!(!out.stderr.contains("panicked"), "{out:?}");
            out.assert_err(imp.config_error_code());
            if imp.reference {
                continue;
            }
            if *what == "missing master" {
                assert!(out.msg().contains("nope0"), "{what}: {out:?}");
            }
            assert_eq!(link_names(&pod.name), vec!["lo"], "{}: {what}", imp.label);
            assert_eq!(
                link_names(w.node()),
                vec!["lo", "nic0"],
                "{}: {what}",
                imp.label
            );
            assert!(ip_files(&w.sb.path("ipam"), NET).is_empty(), "{what}");
        }
        assert_eq!(link_names(&pod.name), vec!["lo"], "{}", imp.label);
        assert!(
            ip_files(&w.sb.path("ipam"), NET).is_empty(),
            "{}",
            imp.label
        );
    }
    // A second ADD of the same attachment: refused, the first one intact.
    let w = World::new();
    let rt = w.sb.runtime(&Impl::ours());
    let pod = w.sb.pod(0);
    let att = w.sb.att(0, &pod);
    let net = mv_net(&w.sb, json!({}));
    let r = rt.add(&net, &att).unwrap_or_else(|o| panic!("ADD: {o:?}"));
    rt.exec("macvlan", "ADD", Some(&att), &net.plugin_conf(0, None))
        .assert_err(100);
    assert_eq!(ip_files(&w.sb.path("ipam"), NET).len(), 1);
    rt.del(&net, &att, Some(&r))
        .unwrap_or_else(|o| panic!("DEL: {o:?}"));
}

/// SIGKILL at points spread over an ADD: the next DEL leaves no link in the pod or the node and no IP.
fn killed_add_then_del() {
    require_root();
    common::sublink::killed_add_then_del(
        "macvlan",
        NET,
        &json!({"type": "macvlan", "master": "nic0", "mtu": 1400}),
    );
}

/// The request that makes the link is iproute2's for the same link, byte for byte: each mode, with MTU, MAC and
/// the pod's namespace.
fn request_is_iproute2s() {
    require_root();
    for mode in ["bridge", "private", "vepa", "passthru"] {
        let k = SublinkKind::Macvlan(MacvlanMode::parse(mode).expect("mode"));
        assert_request_is_iproute2s(
            mode,
            k,
            None,
            None,
            false,
            &["type", "macvlan", "mode", mode],
        );
    }
    let k = SublinkKind::Macvlan(MacvlanMode::Bridge);
    let mac = kernel::Mac::parse("02:11:22:33:44:55");
    assert_request_is_iproute2s(
        "mtu, mac, netns",
        k,
        Some(1400),
        mac,
        true,
        &[
            "mtu",
            "1400",
            "address",
            "02:11:22:33:44:55",
            "netns",
            "NETNS",
            "type",
            "macvlan",
            "mode",
            "bridge",
        ],
    );
}

/// What a killed ADD or DEL leaves, made by hand: a macvlan under the attachment's temporary name (ADD killed
/// between creation and rename) and one under a DEL's tombstone name (DEL killed after its rename). The next
/// ADD replaces the first; the next DEL removes both.
fn half_made_links_cleaned() {
    require_root();
    let w = World::new();
    let rt = w.sb.runtime(&Impl::ours());
    let net = mv_net(&w.sb, json!({}));
    let pod = w.sb.pod(0);
    let att = w.sb.att(0, &pod);
    let tmp = cni::plugins::sublink::tmp_name(&cni::CmdArgs {
        command: cni::Command::Add,
        container_id: att.container_id.clone(),
        netns: att.netns.clone(),
        ifname: att.ifname.clone(),
        args: String::new(),
        path: String::new(),
        stdin: vec![],
    });
    let leave = |name: &str| {
        ip(
            w.node(),
            &["link", "add", name, "link", "nic0", "type", "macvlan"],
        );
        ip(w.node(), &["link", "set", name, "netns", &pod.name]);
    };
    leave(&tmp);
    let r = rt
        .add(&net, &att)
        .unwrap_or_else(|o| panic!("ADD over a half-made link: {o:?}"));
    assert_eq!(link_names(&pod.name), vec!["lo", "eth0"]);
    rt.del(&net, &att, Some(&r))
        .unwrap_or_else(|o| panic!("DEL: {o:?}"));
    wait_only_lo(&pod);
    leave(&tmp);
    leave("cnidel0123abcd");
    rt.del(&net, &att, None)
        .unwrap_or_else(|o| panic!("DEL of half-made links: {o:?}"));
    assert_eq!(link_names(&pod.name), vec!["lo"]);
    assert!(ip_files(&w.sb.path("ipam"), NET).is_empty());
}

/// Dual-stack: ours and the reference give the same result, addresses (past DAD when ADD returns, as the
/// reference waits for it) and IPv6 routes; the pod reaches the LAN over IPv6.
fn dual_stack_as_reference() {
    require_root();
    let mut seen = Vec::new();
    for imp in [Impl::ours(), Impl::reference()] {
        let w = World::new();
        ip(
            &w.lan.name,
            &["addr", "add", "fd00:20::1/64", "dev", "lan0", "nodad"],
        );
        let mut ipam = lan_ipam(&w.sb);
        ipam["ranges"]
            .as_array_mut()
            .expect("ranges")
            .push(json!([{"subnet": "fd00:20::/64", "gateway": "fd00:20::1"}]));
        ipam["routes"]
            .as_array_mut()
            .expect("routes")
            .push(json!({"dst": "::/0"}));
        let net = mv_net(&w.sb, json!({ "ipam": ipam }));
        let rt = w.sb.runtime(&imp);
        let pod = w.sb.pod(0);
        let att = w.sb.att(0, &pod);
        let r = rt
            .add(&net, &att)
            .unwrap_or_else(|o| panic!("{} ADD: {o:?}", imp.label));
        let tentative = ip(
            &pod.name,
            &["-6", "addr", "show", "dev", "eth0", "tentative"],
        );
        assert!(
            tentative.trim().is_empty(),
            "{}: tentative after ADD: {tentative}",
            imp.label
        );
        let mut v6_routes: Vec<String> = ip_json(&pod.name, &["-6", "route", "show"])
            .and_then(|v| v.as_array().cloned())
            .unwrap_or_default()
            .iter()
            .map(|r| {
                format!(
                    "{} via={}",
                    r["dst"].as_str().unwrap_or(""),
                    r["gateway"].as_str().unwrap_or("-")
                )
            })
            .collect();
        v6_routes.sort();
        if !imp.reference {
            assert!(ping(&pod.name, "fd00:20::1"), "pod → LAN over IPv6");
        }
        seen.push((shape(&r), addrs(&pod.name, "eth0"), v6_routes));
        rt.del(&net, &att, Some(&r))
            .unwrap_or_else(|o| panic!("{} DEL: {o:?}", imp.label));
        wait_only_lo(&pod);
        assert!(
            ip_files(&w.sb.path("ipam"), NET).is_empty(),
            "{}",
            imp.label
        );
    }
    assert_eq!(seen[0], seen[1], "ours vs reference");
}

/// The shared lifecycle the ipvlan and vlan tests run where their kernel support is present, run here on macvlan
/// (so the helper itself is proven on this machine): ours and the reference agree.
fn shared_lifecycle_on_macvlan() {
    require_root();
    let p = json!({"type": "macvlan", "master": "nic0", "mode": "private", "mtu": 1400});
    let ours = lifecycle(&Impl::ours(), NET, &p);
    let refr = lifecycle(&Impl::reference(), NET, &p);
    assert_eq!(ours, refr);
    assert_eq!(ours[0].link["mode"], "private");
}

testkit::main!(
    request_is_iproute2s,
    shared_lifecycle_on_macvlan,
    dual_stack_as_reference,
    half_made_links_cleaned,
    same_attachment_as_reference,
    check_detects_drift,
    mac_sources,
    each_mode,
    default_master,
    link_in_container,
    bad_input,
    killed_add_then_del
);
