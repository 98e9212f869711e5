//! ADD / CHECK / DEL / VERSION (and GC / STATUS for 1.1.0) of `bridge` + `host-local` for every spec version,
//! asserting the result shape per version and the kernel state through `ip -j`.
//!
//! Every scenario runs against our binaries and, as a baseline that must pass, against Debian's reference
//! plugins in /usr/lib/cni (for the versions they speak).

mod common;

use common::*;
use serde_json::{json, Value};

const NET: &str = "frtnet";
const BR: &str = "frtbr0";
const SUBNET: &str = "10.244.5.0/24";

fn lifecycle(imp: &Impl, v: &str) {
    let sb = Sandbox::new();
    let pod = sb.pod(0);
    let rt = sb.runtime(imp);
    let data = sb.path("ipam");
    let net = Net::new(NET, v, vec![bridge_conf(BR, SUBNET, &data)]);
    let att = sb.att(0, &pod);
    let node = sb.node.name.as_str();

    // VERSION: the input version is among the supported ones, for both plugins.
    for ty in ["bridge", "host-local"] {
        let out = rt.version(ty, v);
        assert!(out.ok(), "{ty} VERSION: {out:?}");
        let j = out.json();
        let sup: Vec<&str> = j["supportedVersions"]
            .as_array()
            .expect("supportedVersions")
            .iter()
            .filter_map(Value::as_str)
            .collect();
        assert!(sup.contains(&v), "{ty} VERSION does not list {v}: {j}");
        assert!(j["cniVersion"].is_string(), "{j}");
    }

    let r = rt
        .add(&net, &att)
        .unwrap_or_else(|o| panic!("ADD {v}: {o:?}"));
    assert_eq!(r["cniVersion"], v, "result version: {r}");

    // Kernel state, whatever the result version.
    assert_eq!(
        addrs(&pod.name, "eth0"),
        vec!["10.244.5.2/24"],
        "container address"
    );
    assert!(
        addrs(node, BR).contains(&"10.244.5.1/24".to_string()),
        "gateway on the bridge"
    );
    let host_veths = veths(node);
    assert_eq!(host_veths.len(), 1, "one host veth: {host_veths:?}");
    let hv = link(node, &host_veths[0]).expect("host veth");
    assert_eq!(hv["master"], BR, "host veth enslaved: {hv}");
    assert_eq!(
        ip_files(&data, NET).get("10.244.5.2").map(String::as_str),
        Some(format!("{}\r\neth0", att.container_id).as_str()),
        "reservation file"
    );
    assert!(ping(&pod.name, "10.244.5.1"), "pod cannot ping the gateway");

    if v == "0.2.0" {
        assert_eq!(r["ip4"]["ip"], "10.244.5.2/24", "{r}");
        assert_eq!(r["ip4"]["gateway"], "10.244.5.1", "{r}");
        assert!(
            r.get("interfaces").is_none() && r.get("ips").is_none(),
            "0.2.0 shape: {r}"
        );
    } else {
        let ifs = r["interfaces"]
            .as_array()
            .unwrap_or_else(|| panic!("interfaces: {r}"));
        assert_eq!(ifs.len(), 3, "[bridge, host veth, container veth]: {r}");
        assert_eq!(ifs[0]["name"], BR);
        let br = link(node, BR).expect("bridge exists");
        assert_eq!(br["linkinfo"]["info_kind"], "bridge");
        assert_eq!(ifs[0]["mac"], br["address"], "bridge MAC");
        assert_eq!(ifs[1]["name"], host_veths[0].as_str(), "host veth name");
        assert_eq!(ifs[1]["mac"], hv["address"], "host veth MAC");
        assert!(
            ifs[1].get("sandbox").is_none_or(|s| s == "" || s.is_null()),
            "host veth has no sandbox: {r}"
        );
        assert_eq!(ifs[2]["name"], "eth0");
        assert_eq!(ifs[2]["sandbox"], pod.path().as_str());
        let eth0 = link(&pod.name, "eth0").expect("container eth0");
        assert_eq!(ifs[2]["mac"], eth0["address"], "container MAC");

        let ips = r["ips"].as_array().unwrap_or_else(|| panic!("ips: {r}"));
        assert_eq!(ips.len(), 1, "{r}");
        assert_eq!(ips[0]["address"], "10.244.5.2/24");
        assert_eq!(ips[0]["gateway"], "10.244.5.1");
        assert_eq!(ips[0]["interface"], 2, "container IP's interface index");
        let with_version = matches!(v, "0.3.0" | "0.3.1" | "0.4.0");
        if with_version {
            assert_eq!(ips[0]["version"], "4", "ips[].version for {v}: {r}");
        } else {
            assert!(
                ips[0].get("version").is_none(),
                "no ips[].version for {v}: {r}"
            );
        }
    }

    // CHECK from 0.4.0 on; before that it is an incompatible-version error.
    if version_at_least(v, "0.4.0") {
        rt.check(&net, &att, &r)
            .unwrap_or_else(|o| panic!("CHECK {v}: {o:?}"));
    } else {
        let out = rt.exec("bridge", "CHECK", Some(&att), &net.plugin_conf(0, Some(&r)));
        out.assert_err(1);
    }

    rt.del(&net, &att, Some(&r))
        .unwrap_or_else(|o| panic!("DEL {v}: {o:?}"));
    assert!(link(&pod.name, "eth0").is_none(), "container eth0 left");
    wait_no_veths(node);
    assert!(
        ip_files(&data, NET).is_empty(),
        "IP left: {:?}",
        ip_files(&data, NET)
    );
    assert!(link(node, BR).is_some(), "the bridge stays");
    rt.del(&net, &att, Some(&r))
        .unwrap_or_else(|o| panic!("second DEL {v}: {o:?}"));
}

/// The lifecycle at each spec version, against ours and the reference plugins (`ours::v1_0_0`, ...).
macro_rules! versions {
    ($($name:ident => $v:expr,)*) => {
        mod ours {
            use super::*;
            $(fn $name() { require_root(); lifecycle(&Impl::ours(), $v); })*
            pub fn tests() -> Vec<testkit::Test> {
                vec![$(testkit::Test { name: concat!("ours::", stringify!($name)), run: $name }),*]
            }
        }
        mod reference {
            use super::*;
            $(fn $name() {
                require_root();
                let imp = Impl::reference();
                testkit::require(imp.speaks($v), &format!("the installed reference plugins do not speak {}", $v));
                lifecycle(&imp, $v);
            })*
            pub fn tests() -> Vec<testkit::Test> {
                vec![$(testkit::Test { name: concat!("reference::", stringify!($name)), run: $name }),*]
            }
        }
    };
}

versions! {
    v0_2_0 => "0.2.0",
    v0_3_0 => "0.3.0",
    v0_3_1 => "0.3.1",
    v0_4_0 => "0.4.0",
    v1_0_0 => "1.0.0",
    v1_1_0 => "1.1.0",
}

/// 1.1.0: STATUS succeeds; GC releases the IPs of attachments not in `cni.dev/valid-attachments` and keeps the
/// others; DEL after GC still succeeds.
fn ours_gc_and_status() {
    require_root();
    let imp = Impl::ours();
    let sb = Sandbox::new();
    let pods = sb.pods(3);
    let rt = sb.runtime(&imp);
    let data = sb.path("ipam");
    let net = Net::new(NET, "1.1.0", vec![bridge_conf(BR, SUBNET, &data)]);

    rt.status(&net).unwrap_or_else(|o| panic!("STATUS: {o:?}"));
    for ty in ["bridge", "host-local"] {
        let out = rt.exec(ty, "STATUS", None, &net.plugin_conf(0, None));
        assert!(
            out.ok() && out.stdout.trim().is_empty(),
            "{ty} STATUS: {out:?}"
        );
    }

    let atts: Vec<Att> = pods.iter().enumerate().map(|(i, p)| sb.att(i, p)).collect();
    let results: Vec<Value> = atts
        .iter()
        .map(|a| rt.add(&net, a).unwrap_or_else(|o| panic!("ADD: {o:?}")))
        .collect();
    assert_eq!(ip_files(&data, NET).len(), 3);

    // A second interface of container 0 holds its own IP; GC must keep the valid (cid, ifname) pairs only.
    let keep = [
        (atts[0].container_id.as_str(), "eth0"),
        (atts[2].container_id.as_str(), "eth0"),
    ];
    rt.gc(&net, &keep).unwrap_or_else(|e| panic!("GC: {e:?}"));
    let left = ip_files(&data, NET);
    assert_eq!(left.len(), 2, "GC released exactly one IP: {left:?}");
    assert!(
        ip_files_of(&data, NET, &atts[1].container_id).is_empty(),
        "stale IP kept: {left:?}"
    );
    assert_eq!(
        ip_files_of(&data, NET, &atts[0].container_id),
        vec![result_ip(&results[0])]
    );
    assert_eq!(
        ip_files_of(&data, NET, &atts[2].container_id),
        vec![result_ip(&results[2])]
    );

    // The old key name is honoured too (libcni sends both).
    let mut conf = net.plugin_conf(0, None);
    conf["cni.dev/attachments"] = json!([{"containerID": atts[0].container_id, "ifname": "eth0"}]);
    conf["cni.dev/valid-attachments"] =
        json!([{"containerID": atts[0].container_id, "ifname": "eth0"}]);
    let out = rt.exec("bridge", "GC", None, &conf);
    assert!(out.ok(), "GC: {out:?}");
    assert_eq!(ip_files(&data, NET).len(), 1, "{:?}", ip_files(&data, NET));

    // GC is refused below 1.1.0.
    let old = Net::new(NET, "1.0.0", net.plugins.clone());
    let mut conf = old.plugin_conf(0, None);
    conf["cni.dev/valid-attachments"] = json!([]);
    rt.exec("bridge", "GC", None, &conf).assert_err(1);
    rt.exec("host-local", "STATUS", None, &old.plugin_conf(0, None))
        .assert_err(1);

    for (a, r) in atts.iter().zip(&results) {
        rt.del(&net, a, Some(r))
            .unwrap_or_else(|o| panic!("DEL after GC: {o:?}"));
    }
    wait_no_veths(&sb.node.name);
    assert!(ip_files(&data, NET).is_empty());
}

/// The same configuration gives the same result shape from our plugins and the reference ones (per version), up to
/// names and MACs.
fn result_shape_matches_reference() {
    require_root();
    let reference = Impl::reference();
    for v in ["0.2.0", "0.3.1", "0.4.0", "1.0.0"] {
        let shapes: Vec<Value> = [Impl::ours(), reference.clone()]
            .iter()
            .map(|imp| {
                let sb = Sandbox::new();
                let pod = sb.pod(0);
                let rt = sb.runtime(imp);
                let net = Net::new(NET, v, vec![bridge_conf(BR, SUBNET, &sb.path("ipam"))]);
                let att = sb.att(0, &pod);
                let r = rt
                    .add(&net, &att)
                    .unwrap_or_else(|o| panic!("{} ADD {v}: {o:?}", imp.label));
                rt.del(&net, &att, Some(&r))
                    .unwrap_or_else(|o| panic!("DEL: {o:?}"));
                shape(&r)
            })
            .collect();
        assert_eq!(
            shapes[0], shapes[1],
            "result shape differs from the reference for {v}"
        );
    }
}

/// The result with volatile values (names, MACs, sandbox paths) blanked, and an empty `dns` object (which the
/// Go types always print) treated as absent.
fn shape(v: &Value) -> Value {
    match v {
        Value::Object(m) => Value::Object(
            m.iter()
                .filter(|(k, x)| {
                    !(k.as_str() == "dns" && x.as_object().is_some_and(|o| o.is_empty()))
                })
                .map(|(k, x)| {
                    let x = match k.as_str() {
                        "mac" | "sandbox" => json!("*"),
                        "name" if x.as_str() != Some(BR) => json!("*"),
                        _ => shape(x),
                    };
                    (k.clone(), x)
                })
                .collect(),
        ),
        Value::Array(a) => Value::Array(a.iter().map(shape).collect()),
        x => x.clone(),
    }
}

testkit::main!(
    ours_gc_and_status,
    result_shape_matches_reference,
; ours::tests(), reference::tests()
);
