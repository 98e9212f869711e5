//! The `static` IPAM plugin, black-box and differential against the reference static in /usr/lib/cni: the same
//! configurations, `CNI_ARGS` and `runtimeConfig`/`args` given to both, the results compared exactly (every spec
//! version both speak); bad inputs refused by both (the reference with 999, ours with the spec's codes); CHECK
//! and DEL as the reference's; and static as the IPAM of ptp, end to end: the pod gets the address.

mod common;

use common::*;
use serde_json::{json, Value};

/// Runs `static` of `imp` for `cmd` with `conf` and `CNI_ARGS` `cni_args` (IPAM needs no namespace).
fn run(imp: &Impl, cmd: &str, conf: &Value, cni_args: &str) -> Out {
    let mut att = Att::new("static-c1", "/proc/self/ns/net", "eth0");
    att.args = cni_args.to_string();
    let env = Env::for_cmd(cmd, Some(&att), &imp.dir.display().to_string());
    exec_plugin(&imp.bin("static"), None, &env, conf.to_string().as_bytes())
}

fn conf(version: &str, ipam: Value, extra: Value) -> Value {
    let mut c = json!({"cniVersion": version, "name": "statictest", "type": "ptp", "ipam": ipam});
    for (k, v) in extra.as_object().into_iter().flatten() {
        c[k] = v.clone();
    }
    c
}

/// The reference prints `"dns": {}` in 0.2.0 results too; ours leaves the empty object out there (as our other
/// plugins do for 0.2.0).
fn normalise(mut v: Value) -> Value {
    if v["cniVersion"] == "0.2.0" && v["dns"] == json!({}) {
        v.as_object_mut().map(|o| o.remove("dns"));
    }
    v
}

/// Every valid case gives the same result from both, in every version both speak.
fn same_results_as_reference() {
    let ours = Impl::ours();
    let refr = Impl::reference();
    let full = json!({"type": "static",
        "addresses": [{"address": "10.244.3.5/24", "gateway": "10.244.3.1"}, {"address": "fd00:3::5/64"}],
        "routes": [{"dst": "0.0.0.0/0"}, {"dst": "10.96.0.0/12", "gw": "10.244.3.254"}],
        "dns": {"nameservers": ["10.96.0.10"], "domain": "cluster.local", "search": ["svc"], "options": ["ndots:5"]}});
    let one = json!({"type": "static", "addresses": [{"address": "10.244.3.5/24", "gateway": ""}]});
    let cases: Vec<(&str, Value, Value, &str)> = vec![
        ("full", full.clone(), json!({}), ""),
        ("empty ipam", json!({}), json!({}), ""),
        ("type only", json!({"type": "static"}), json!({}), ""),
        (
            "CNI_ARGS IP and GATEWAY",
            one.clone(),
            json!({}),
            "IP= 10.244.4.1/24 , fd00:4::1/64;GATEWAY= 10.244.4.254, fd00:4::ff,10.244.3.1",
        ),
        (
            "CNI_ARGS with IgnoreUnknown",
            one.clone(),
            json!({}),
            "IgnoreUnknown=1;K8S_POD_NAME=web;IP=10.244.4.1/24",
        ),
        (
            "empty CNI_ARGS values",
            one.clone(),
            json!({}),
            "IP=;GATEWAY=",
        ),
        (
            "args.cni.ips replace",
            full.clone(),
            json!({"args": {"cni": {"ips": ["10.244.8.1/16"]}}}),
            "IP=10.244.4.1/24",
        ),
        (
            "runtimeConfig.ips replace args",
            full.clone(),
            json!({"args": {"cni": {"ips": ["10.244.8.1/16"]}},
                   "runtimeConfig": {"ips": ["10.244.9.1/16", "fd00:9::1/64"]}}),
            "",
        ),
        (
            "empty runtimeConfig.ips",
            one.clone(),
            json!({"runtimeConfig": {"ips": []}}),
            "",
        ),
    ];
    for v in VERSIONS.iter().filter(|v| refr.speaks(v)) {
        for (what, ipam, extra, args) in &cases {
            let c = conf(v, ipam.clone(), extra.clone());
            let (o, r) = (run(&ours, "ADD", &c, args), run(&refr, "ADD", &c, args));
            if *v == "0.2.0" && !r.ok() {
                // No address, or more than one of a family: a 0.2.0 result cannot say it; refused by both.
                o.assert_err(7);
                continue;
            }
            assert!(r.ok(), "{v} {what}: reference: {r:?}");
            assert!(o.ok(), "{v} {what}: ours: {o:?}");
            assert_eq!(normalise(o.json()), normalise(r.json()), "{v} {what}");
        }
    }
    // Our 1.1.0 result is the 1.0.0 one with its version, routes keeping their 1.1.0 keys.
    let c = conf("1.1.0", full, json!({}));
    let o = run(&ours, "ADD", &c, "");
    assert!(o.ok(), "{o:?}");
    let mut r = run(
        &refr,
        "ADD",
        &conf("1.0.0", c["ipam"].clone(), json!({})),
        "",
    )
    .json();
    r["cniVersion"] = json!("1.1.0");
    assert_eq!(o.json(), r);
}

/// Bad input: refused by both; the reference says 999, ours the spec's code.
fn bad_input_refused_as_reference() {
    let ours = Impl::ours();
    let refr = Impl::reference();
    let cases: Vec<(&str, Value, Value, &str, u64)> = vec![
        (
            "no prefix",
            json!({"addresses": [{"address": "10.244.3.5"}]}),
            json!({}),
            "",
            7,
        ),
        ("no address", json!({"addresses": [{}]}), json!({}), "", 7),
        (
            "bad octet",
            json!({"addresses": [{"address": "10.244.3.300/24"}]}),
            json!({}),
            "",
            7,
        ),
        (
            "bad gateway",
            json!({"addresses": [{"address": "10.244.3.5/24", "gateway": "x"}]}),
            json!({}),
            "",
            7,
        ),
        (
            "addresses not a list",
            json!({"addresses": {}}),
            json!({}),
            "",
            6,
        ),
        ("dns not an object", json!({"dns": []}), json!({}), "", 6),
        (
            "route dst without prefix",
            json!({"routes": [{"dst": "0.0.0.0"}]}),
            json!({}),
            "",
            6,
        ),
        (
            "route gw not an IP",
            json!({"routes": [{"dst": "10.1.0.0/16", "gw": "q"}]}),
            json!({}),
            "",
            6,
        ),
        (
            "CNI_ARGS IP without prefix",
            json!({}),
            json!({}),
            "IP=10.244.4.1",
            4,
        ),
        (
            "CNI_ARGS bad GATEWAY",
            json!({}),
            json!({}),
            "IP=10.244.4.1/24;GATEWAY=zz",
            4,
        ),
        ("CNI_ARGS unknown key", json!({}), json!({}), "FOO=1", 2),
        ("CNI_ARGS not K=V", json!({}), json!({}), "garbage", 4),
        (
            "runtimeConfig.ips without prefix",
            json!({}),
            json!({"runtimeConfig": {"ips": ["10.1.1.1"]}}),
            "",
            7,
        ),
        (
            "runtimeConfig.ips not a list",
            json!({}),
            json!({"runtimeConfig": {"ips": "10.1.1.1/8"}}),
            "",
            6,
        ),
        (
            "args.cni.ips bad",
            json!({}),
            json!({"args": {"cni": {"ips": ["x"]}}}),
            "",
            7,
        ),
        (
            "runtimeConfig bad beats args good",
            json!({}),
            json!({"args": {"cni": {"ips": ["10.3.3.3/8"]}}, "runtimeConfig": {"ips": ["x"]}}),
            "",
            7,
        ),
    ];
    for (what, ipam, extra, args, code) in cases {
        let c = conf("1.0.0", ipam, extra);
        run(&refr, "ADD", &c, args).assert_err(999);
        let o = run(&ours, "ADD", &c, args);
        assert_eq!(o.assert_some_err(), code, "{what}: {o:?}");
    }
    for ipam in [None, Some(Value::Null)] {
        let mut c = conf("1.0.0", json!({}), json!({}));
        match ipam {
            None => {
                c.as_object_mut().map(|o| o.remove("ipam"));
            }
            Some(v) => c["ipam"] = v,
        }
        run(&refr, "ADD", &c, "").assert_err(999);
        run(&ours, "ADD", &c, "").assert_err(7);
    }
    let two_v4 = json!({"addresses": [{"address": "10.244.3.5/24"}, {"address": "10.244.4.5/24"}]});
    run(&refr, "ADD", &conf("0.2.0", two_v4.clone(), json!({})), "").assert_err(999);
    run(&ours, "ADD", &conf("0.2.0", two_v4, json!({})), "").assert_err(7);
}

/// CHECK validates and compares the gateways of the configured addresses the previous result holds, as the
/// reference; DEL does nothing and succeeds even on a configuration ADD would refuse.
fn check_and_del_as_reference() {
    let ours = Impl::ours();
    let refr = Impl::reference();
    let ipam = json!({"addresses": [{"address": "10.244.3.5/24", "gateway": "10.244.3.1"}]});
    let prev = |ip: &str, gw: Option<&str>| {
        let mut i = json!({"address": ip});
        if let Some(g) = gw {
            i["gateway"] = json!(g);
        }
        json!({"prevResult": {"cniVersion": "1.0.0", "ips": [i]}})
    };
    let cases: Vec<(&str, Value, bool)> = vec![
        ("matching", prev("10.244.3.5/24", Some("10.244.3.1")), true),
        (
            "other gateway",
            prev("10.244.3.5/24", Some("10.244.3.2")),
            false,
        ),
        ("no gateway", prev("10.244.3.5/24", None), false),
        (
            "other address",
            prev("10.244.3.6/24", Some("10.244.3.2")),
            true,
        ),
        ("no prevResult", json!({}), false),
    ];
    for (what, extra, ok) in cases {
        let c = conf("1.0.0", ipam.clone(), extra);
        for imp in [&ours, &refr] {
            let o = run(imp, "CHECK", &c, "");
            assert_eq!(o.ok(), ok, "{what} {}: {o:?}", imp.label);
        }
    }
    let c = conf(
        "1.0.0",
        json!({"addresses": [{"address": "10.244.3.5/24"}]}),
        prev("10.244.3.5/24", Some("10.244.3.1")),
    );
    for imp in [&ours, &refr] {
        assert!(
            run(imp, "CHECK", &c, "").ok(),
            "{}: no configured gateway",
            imp.label
        );
        let o = run(imp, "CHECK", &c, "FOO=1");
        assert!(!o.ok(), "{}: CHECK validates CNI_ARGS: {o:?}", imp.label);
        let bad = conf(
            "1.0.0",
            json!({"addresses": [{"address": "10.244.3.5"}]}),
            json!({}),
        );
        let o = run(imp, "DEL", &bad, "FOO=1");
        assert!(
            o.ok() && o.stdout.trim().is_empty(),
            "{} DEL: {o:?}",
            imp.label
        );
    }
}

/// static as ptp's IPAM: the pod gets the configured address (and CNI_ARGS' one), with ours and with the
/// reference alike; DEL removes the interface.
fn pod_gets_the_static_address() {
    require_root();
    for imp in [Impl::ours(), Impl::reference()] {
        let sb = Sandbox::new();
        let rt = sb.runtime(&imp);
        let pod = sb.pod(0);
        let mut att = sb.att(0, &pod);
        att.args = "IP=10.244.6.7/24;GATEWAY=10.244.6.1".into();
        let net = Net::new(
            "statictest",
            "1.0.0",
            vec![json!({"type": "ptp", "ipam": {"type": "static",
                "addresses": [{"address": "10.244.5.7/24", "gateway": "10.244.5.1"}],
                "routes": [{"dst": "10.244.0.0/16"}]}})],
        );
        let r = rt
            .add(&net, &att)
            .unwrap_or_else(|o| panic!("{} ADD: {o:?}", imp.label));
        let mut got = addrs(&pod.name, "eth0");
        got.sort();
        assert_eq!(
            got,
            ["10.244.5.7/24", "10.244.6.7/24"],
            "{}: {r}",
            imp.label
        );
        assert!(
            ping(&pod.name, "10.244.5.1"),
            "{}: pod → gateway",
            imp.label
        );
        rt.del(&net, &att, Some(&r))
            .unwrap_or_else(|o| panic!("{} DEL: {o:?}", imp.label));
        assert_eq!(link_names(&pod.name), vec!["lo"], "{}", imp.label);
        wait_no_veths(&sb.node.name);
    }
}

testkit::main!(
    same_results_as_reference,
    bad_input_refused_as_reference,
    check_and_del_as_reference,
    pod_gets_the_static_address
);
