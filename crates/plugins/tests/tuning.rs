//! The `tuning` plugin, black-box: chained after our bridge + host-local, every key set and checked in the pod
//! namespace with `ip -j` and `/proc/sys`, DEL restoring the originals; differential against the reference
//! `tuning` in /usr/lib/cni (same result JSON, same link state, each restoring what the other saved); bad input.

mod common;

use common::*;
use serde_json::{json, Value};
use std::path::{Path, PathBuf};

const NET: &str = "frttun";

fn ours_tuning() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_tuning"))
}

fn reference_tuning() -> PathBuf {
    let p = Path::new(REFERENCE_DIR).join("tuning");
    assert!(
        p.exists(),
        "the reference tuning plugin is missing in {REFERENCE_DIR}: install containernetworking-plugins"
    );
    p
}

/// What tuning changes on a link.
#[derive(Debug, Clone, PartialEq, Eq)]
struct LinkState {
    mac: String,
    mtu: u64,
    txqlen: u64,
    promisc: bool,
    allmulti: bool,
}

fn state(ns: &str, dev: &str) -> LinkState {
    let l = link(ns, dev).unwrap_or_else(|| panic!("no {dev} in {ns}"));
    let flags: Vec<&str> = l["flags"]
        .as_array()
        .map(|a| a.iter().filter_map(Value::as_str).collect())
        .unwrap_or_default();
    LinkState {
        mac: l["address"].as_str().unwrap_or_default().to_string(),
        mtu: l["mtu"].as_u64().unwrap_or(0),
        txqlen: l["txqlen"].as_u64().unwrap_or(0),
        promisc: flags.contains(&"PROMISC"),
        allmulti: flags.contains(&"ALLMULTI"),
    }
}

/// A sysctl as the pod namespace sees it.
fn sysctl(ns: &str, path: &str) -> String {
    let out = std::process::Command::new("ip")
        .args(["netns", "exec", ns, "cat"])
        .arg(Path::new("/proc/sys").join(path))
        .output()
        .expect("run ip netns exec cat");
    assert!(out.status.success(), "read {path} in {ns}: {out:?}");
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// A chain of our bridge (+ host-local) and then `tuning` with `tuning` as its plugin object.
fn chain(sb: &Sandbox, version: &str, tuning: Value) -> Net {
    Net::new(
        NET,
        version,
        vec![
            bridge_conf(&format!("{}b", sb.id), "10.244.9.0/24", &sb.path("ipam")),
            tuning,
        ],
    )
}

/// The bridge-only part of [`chain`] (what the runtime has run when tuning's turn comes).
fn first(net: &Net) -> Net {
    Net::new(&net.name, &net.version, net.plugins[..1].to_vec())
}

/// The environment of an exec'd tuning, with the allowlist pointed into the sandbox (never /etc).
fn tuning_env(rt: &Runtime, cmd: &str, att: &Att) -> Env {
    rt.env_for(cmd, Some(att))
}

fn exec_tuning(bin: &Path, sb: &Sandbox, rt: &Runtime, cmd: &str, att: &Att, conf: &Value) -> Out {
    let env = tuning_env(rt, cmd, att);
    exec_plugin(
        bin,
        Some(&sb.node.path()),
        &env,
        conf.to_string().as_bytes(),
    )
}

const MAC: &str = "0a:58:0a:f4:09:99";

fn every_key(sb: &Sandbox) -> Value {
    json!({
        "type": "tuning",
        "dataDir": sb.path("tuning"),
        "sysctl": {
            "net.ipv4.conf.IFNAME.arp_filter": "1",
            "net.core.somaxconn": "512",
            "net/ipv4/ip_local_port_range": "20000 30000",
        },
        "mac": MAC,
        "promisc": true,
        "mtu": 1400,
        "txQLen": 500,
        "allmulti": true,
    })
}

/// Every key through the conflist runner, for each version: the pod sees it all, the result carries the MAC,
/// CHECK passes, tuning's DEL restores the originals and drops its file, the whole chain's DEL then succeeds.
fn every_key_applied_checked_restored() {
    require_root();
    for version in ["0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0"] {
        let sb = Sandbox::new();
        let pod = sb.pod(0);
        let rt = sb.runtime(&Impl::ours());
        let att = sb.att(0, &pod);
        let net = chain(&sb, version, every_key(&sb));
        // The originals, as the bridge leaves them.
        let prev = rt
            .add(&first(&net), &att)
            .unwrap_or_else(|o| panic!("{version} bridge ADD: {o:?}"));
        let orig = state(&pod.name, "eth0");
        let orig_somaxconn = sysctl(&pod.name, "net/core/somaxconn");
        let conf = net.plugin_conf(1, Some(&prev));
        let out = exec_tuning(&ours_tuning(), &sb, &rt, "ADD", &att, &conf);
        assert!(out.ok(), "{version} tuning ADD: {out:?}");
        let r = out.json();
        assert_eq!(r["cniVersion"], version);
        let eth0 = r["interfaces"]
            .as_array()
            .and_then(|a| a.iter().find(|i| i["name"] == "eth0"))
            .unwrap_or_else(|| panic!("no eth0 in {r}"));
        assert_eq!(eth0["mac"], MAC, "{version}");
        // Everything else of the previous result is passed through.
        let mut expect = prev.clone();
        for i in expect["interfaces"].as_array_mut().into_iter().flatten() {
            if i["name"] == "eth0" {
                i["mac"] = json!(MAC);
            }
        }
        assert_eq!(r, expect, "{version}");

        let s = state(&pod.name, "eth0");
        assert_eq!(
            s,
            LinkState {
                mac: MAC.into(),
                mtu: 1400,
                txqlen: 500,
                promisc: true,
                allmulti: true
            },
            "{version}"
        );
        assert_eq!(
            sysctl(&pod.name, "net/ipv4/conf/eth0/arp_filter"),
            "1",
            "{version}"
        );
        assert_eq!(sysctl(&pod.name, "net/core/somaxconn"), "512");
        assert_eq!(
            sysctl(&pod.name, "net/ipv4/ip_local_port_range"),
            "20000\t30000"
        );
        assert_ne!(orig_somaxconn, "512");
        let backup = sb
            .path("tuning")
            .join(format!("{}_eth0.json", att.container_id));
        assert!(backup.exists(), "no backup file");

        if version_at_least(version, "0.4.0") {
            rt.check(&net, &att, &r)
                .unwrap_or_else(|o| panic!("{version} CHECK: {o:?}"));
        }

        let conf = net.plugin_conf(1, Some(&r));
        let out = exec_tuning(&ours_tuning(), &sb, &rt, "DEL", &att, &conf);
        assert!(out.ok(), "{version} tuning DEL: {out:?}");
        assert!(out.stdout.trim().is_empty());
        assert_eq!(state(&pod.name, "eth0"), orig, "{version}: not restored");
        assert!(!backup.exists(), "backup left");
        // A second DEL has nothing to do.
        let out = exec_tuning(&ours_tuning(), &sb, &rt, "DEL", &att, &conf);
        assert!(out.ok(), "{version} second DEL: {out:?}");
        assert_eq!(state(&pod.name, "eth0"), orig);

        // And the whole chain through the runner, ADD to DEL.
        let pod1 = sb.pod(1);
        let att1 = sb.att(1, &pod1);
        let r = rt
            .add(&net, &att1)
            .unwrap_or_else(|o| panic!("{version} chain ADD: {o:?}"));
        let pod1 = pod1.name.clone();
        assert_eq!(state(&pod1, "eth0").mac, MAC);
        rt.del(&net, &att1, Some(&r))
            .unwrap_or_else(|o| panic!("{version} chain DEL: {o:?}"));
        assert!(link(&pod1, "eth0").is_none());
    }
}

/// The differential: our tuning and the reference on the same pod and the same previous result give the same
/// result JSON and the same link state, and each restores what the other saved (same backup file format).
fn same_as_reference() {
    require_root();
    let (ours, reference) = (ours_tuning(), reference_tuning());
    for version in ["0.3.1", "0.4.0", "1.0.0"] {
        let sb = Sandbox::new();
        let pod = sb.pod(0);
        let rt = sb.runtime(&Impl::ours());
        let att = sb.att(0, &pod);
        let mut t = every_key(&sb);
        // The reference (1.1.1) has no txQLen, and its CHECK compares tab-separated values as they are.
        t.as_object_mut().map(|o| o.remove("txQLen"));
        t["sysctl"]
            .as_object_mut()
            .map(|o| o.remove("net/ipv4/ip_local_port_range"));
        let net = chain(&sb, version, t);
        let prev = rt
            .add(&first(&net), &att)
            .unwrap_or_else(|o| panic!("bridge ADD: {o:?}"));
        let orig = state(&pod.name, "eth0");
        let conf = net.plugin_conf(1, Some(&prev));

        let mut results = Vec::new();
        for (add_bin, del_bin) in [
            (&ours, &ours),
            (&reference, &reference),
            (&reference, &ours),
            (&ours, &reference),
        ] {
            let tag = format!(
                "{version} ADD {} DEL {}",
                add_bin.display(),
                del_bin.display()
            );
            let out = exec_tuning(add_bin, &sb, &rt, "ADD", &att, &conf);
            assert!(out.ok(), "{tag}: ADD: {out:?}");
            let r = out.json();
            let s = state(&pod.name, "eth0");
            let arp = sysctl(&pod.name, "net/ipv4/conf/eth0/arp_filter");
            let del_conf = net.plugin_conf(1, Some(&r));
            let out = exec_tuning(del_bin, &sb, &rt, "DEL", &att, &del_conf);
            assert!(out.ok(), "{tag}: DEL: {out:?}");
            assert_eq!(state(&pod.name, "eth0"), orig, "{tag}: not restored");
            results.push((tag, r, s, arp));
        }
        let (tag0, r0, s0, a0) = &results[0];
        assert_eq!(s0.mac, MAC);
        for (tag, r, s, a) in &results[1..] {
            assert_eq!(r, r0, "result JSON: {tag} vs {tag0}");
            assert_eq!(s, s0, "link state: {tag} vs {tag0}");
            assert_eq!(a, a0, "sysctl: {tag} vs {tag0}");
        }
    }
}

/// Bad input: each refused with our code (the reference's 999 where it refuses too), nothing changed in the pod.
fn bad_input() {
    require_root();
    let sb = Sandbox::new();
    let pod = sb.pod(0);
    let rt = sb.runtime(&Impl::ours());
    let att = sb.att(0, &pod);
    let net = chain(&sb, "1.0.0", json!({"type": "tuning"}));
    let prev = rt
        .add(&first(&net), &att)
        .unwrap_or_else(|o| panic!("bridge ADD: {o:?}"));
    let orig = state(&pod.name, "eth0");
    let somaxconn = sysctl(&pod.name, "net/core/somaxconn");
    let base = |extra: Value| {
        let mut t = json!({"type": "tuning", "dataDir": sb.path("tuning"),
            "sysctl": {"net.core.somaxconn": "333"}});
        for (k, v) in extra.as_object().into_iter().flatten() {
            t[k] = v.clone();
        }
        chain(&sb, "1.0.0", t).plugin_conf(1, Some(&prev))
    };
    // (what, stdin, our code, whether the reference refuses it too)
    let dup = {
        let s = base(json!({})).to_string();
        s.replacen(
            "\"sysctl\":{",
            "\"sysctl\":{\"net.core.somaxconn\":\"1\",",
            1,
        )
    };
    assert_ne!(dup, base(json!({})).to_string(), "duplicate not injected");
    let no_prev = {
        let mut c = base(json!({}));
        c.as_object_mut().map(|o| o.remove("prevResult"));
        c.to_string()
    };
    let cases: Vec<(&str, String, u64, bool)> = vec![
        ("no prevResult", no_prev, 7, true),
        (
            "sysctl outside net",
            base(json!({"sysctl": {"kernel.hostname": "x"}})).to_string(),
            7,
            true,
        ),
        (
            "traversal",
            base(json!({"sysctl": {"net/../kernel/hostname": "x"}})).to_string(),
            7,
            true,
        ),
        (
            "empty segment",
            base(json!({"sysctl": {"net..core.somaxconn": "444"}})).to_string(),
            7,
            false,
        ),
        (
            "absolute key",
            base(json!({"sysctl": {"/net/core/somaxconn": "444"}})).to_string(),
            7,
            false,
        ),
        (
            "bad mac",
            base(json!({"mac": "zz:00:00:00:00:01"})).to_string(),
            7,
            true,
        ),
        (
            "short mac",
            base(json!({"mac": "0a:58:0a:f4:09"})).to_string(),
            7,
            true,
        ),
        (
            "negative mtu",
            base(json!({"mtu": -5})).to_string(),
            7,
            true,
        ),
        (
            "mtu not a number",
            base(json!({"mtu": "1400"})).to_string(),
            7,
            true,
        ),
        // The duplicate check came after Debian's 1.1.1.
        ("duplicated sysctl key", dup, 7, false),
        (
            "non-string sysctl value",
            base(json!({"sysctl": {"net.core.somaxconn": 5}})).to_string(),
            7,
            true,
        ),
        (
            "old spec version",
            {
                let mut c = base(json!({}));
                c["cniVersion"] = json!("0.2.0");
                c.to_string()
            },
            1,
            false,
        ),
    ];
    for (what, stdin, code, reference_refuses) in &cases {
        let env = tuning_env(&rt, "ADD", &att);
        let out = exec_plugin(
            &ours_tuning(),
            Some(&sb.node.path()),
            &env,
            stdin.as_bytes(),
        );
        out.assert_err(*code);
        assert!(!out.stderr.contains("panicked"), "{what}: {out:?}");
        assert_eq!(state(&pod.name, "eth0"), orig, "{what}: link changed");
        assert_eq!(
            sysctl(&pod.name, "net/core/somaxconn"),
            somaxconn,
            "{what}: sysctl written before the refusal"
        );
        if *reference_refuses {
            let out = exec_plugin(
                &reference_tuning(),
                Some(&sb.node.path()),
                &env,
                stdin.as_bytes(),
            );
            assert!(!out.ok(), "{what}: the reference accepted it: {out:?}");
            // The reference may have written the sysctl before failing; put it back.
            let _ = std::process::Command::new("ip")
                .args(["netns", "exec", &pod.name, "sysctl", "-qw"])
                .arg(format!("net.core.somaxconn={somaxconn}"))
                .status();
        }
    }

    // CNI_ARGS with an unknown key and no IgnoreUnknown: code 2 (the reference: 999).
    let mut a = att.clone();
    a.args = "FOO=bar".into();
    exec_tuning(&ours_tuning(), &sb, &rt, "ADD", &a, &base(json!({}))).assert_err(2);

    // The allowlist: a key it does not match is refused, one it matches is written.
    std::fs::write(sb.path("allowlist.conf"), "\n^net\\.core\\.somaxconn$\n").unwrap();
    let refused = base(json!({"sysctl": {"net.ipv4.conf.IFNAME.arp_filter": "1"}}));
    let out = exec_tuning(&ours_tuning(), &sb, &rt, "ADD", &att, &refused);
    out.assert_err(7);
    assert!(out.msg().contains("not allowed"), "{out:?}");
    let out = exec_tuning(&ours_tuning(), &sb, &rt, "ADD", &att, &base(json!({})));
    assert!(out.ok(), "allowed sysctl: {out:?}");
    assert_eq!(sysctl(&pod.name, "net/core/somaxconn"), "333");
    std::fs::write(sb.path("allowlist.conf"), "(\n").unwrap();
    exec_tuning(&ours_tuning(), &sb, &rt, "ADD", &att, &base(json!({}))).assert_err(7);
}

/// CHECK notices drift of every attribute; DEL copes with a gone namespace (dropping the file), a corrupt
/// backup and an empty CNI_NETNS.
fn check_drift_and_del_edge_cases() {
    require_root();
    let sb = Sandbox::new();
    let pod = sb.pod(0);
    let rt = sb.runtime(&Impl::ours());
    let att = sb.att(0, &pod);
    let net = chain(&sb, "1.1.0", every_key(&sb));
    let r = rt.add(&net, &att).unwrap_or_else(|o| panic!("ADD: {o:?}"));
    rt.check(&net, &att, &r)
        .unwrap_or_else(|o| panic!("CHECK: {o:?}"));
    let conf = net.plugin_conf(1, Some(&r));
    for (set, undo) in [
        (vec!["mtu", "1300"], vec!["mtu", "1400"]),
        (vec!["promisc", "off"], vec!["promisc", "on"]),
        (vec!["allmulticast", "off"], vec!["allmulticast", "on"]),
        (vec!["txqueuelen", "9"], vec!["txqueuelen", "500"]),
        (vec!["address", "0a:58:0a:f4:09:01"], vec!["address", MAC]),
    ] {
        let mut a = vec!["link", "set", "eth0"];
        a.extend(&set);
        ip(&pod.name, &a);
        let out = exec_tuning(&ours_tuning(), &sb, &rt, "CHECK", &att, &conf);
        assert!(!out.ok(), "CHECK passed after {set:?}: {out:?}");
        let mut a = vec!["link", "set", "eth0"];
        a.extend(&undo);
        ip(&pod.name, &a);
        let out = exec_tuning(&ours_tuning(), &sb, &rt, "CHECK", &att, &conf);
        assert!(out.ok(), "CHECK after undoing {set:?}: {out:?}");
    }
    let _ = std::process::Command::new("ip")
        .args([
            "netns",
            "exec",
            &pod.name,
            "sysctl",
            "-qw",
            "net.core.somaxconn=100",
        ])
        .status();
    exec_tuning(&ours_tuning(), &sb, &rt, "CHECK", &att, &conf).assert_err(100);

    let backup = sb
        .path("tuning")
        .join(format!("{}_eth0.json", att.container_id));
    // A corrupt backup: DEL succeeds, restores nothing, drops the file.
    std::fs::write(&backup, b"{not json").unwrap();
    let out = exec_tuning(&ours_tuning(), &sb, &rt, "DEL", &att, &conf);
    assert!(out.ok(), "DEL with a corrupt backup: {out:?}");
    assert!(!backup.exists());
    // Gone namespace: the file is dropped, DEL succeeds (twice).
    let out = exec_tuning(
        &ours_tuning(),
        &sb,
        &rt,
        "ADD",
        &att,
        &net.plugin_conf(1, Some(&r)),
    );
    assert!(out.ok(), "ADD again: {out:?}");
    assert!(backup.exists());
    rt.del(&first(&net), &att, Some(&r))
        .unwrap_or_else(|o| panic!("bridge DEL: {o:?}"));
    pod.delete();
    for _ in 0..2 {
        let out = exec_tuning(&ours_tuning(), &sb, &rt, "DEL", &att, &conf);
        assert!(out.ok(), "DEL after the netns is gone: {out:?}");
    }
    assert!(!backup.exists(), "backup left after the netns went");
    let mut no_ns = att.clone();
    no_ns.netns.clear();
    let out = exec_tuning(&ours_tuning(), &sb, &rt, "DEL", &no_ns, &conf);
    assert!(out.ok(), "DEL without CNI_NETNS: {out:?}");
}

testkit::main!(
    every_key_applied_checked_restored,
    same_as_reference,
    bad_input,
    check_drift_and_del_edge_cases,
);
