//! The `ipvlan` plugin. This kernel may lack ipvlan (the test machine's does): the tests that make links run only
//! where a throwaway namespace can make one, and report "not run" elsewhere. What runs everywhere: the request
//! that makes the link is iproute2's for the same link, byte for byte (a preloaded `sendmsg` records the bytes even when the
//! kernel refuses them), and bad configurations are refused before any link is made, as the reference refuses
//! them.

mod common;

use common::sublink::*;
use common::*;
use kernel::sublink::{IpvlanMode, SublinkKind};
use serde_json::json;

const NET: &str = "ipvtest";

fn plugin(mode: &str) -> serde_json::Value {
    json!({"type": "ipvlan", "master": "nic0", "mode": mode, "mtu": 1400})
}

fn require_ipvlan() {
    testkit::require(
        kernel_creates(&["ipvlan", "mode", "l2"]),
        "this kernel cannot make ipvlan links (no ipvlan module)",
    );
}

/// Each mode, with MTU and with the pod's namespace: our RTM_NEWLINK is iproute2's.
fn request_is_iproute2s() {
    require_root();
    for mode in ["l2", "l3", "l3s"] {
        let k = SublinkKind::Ipvlan(IpvlanMode::parse(mode).expect("mode"));
        assert_request_is_iproute2s(
            mode,
            k,
            None,
            None,
            false,
            &["type", "ipvlan", "mode", mode],
        );
        assert_request_is_iproute2s(
            &format!("{mode} with mtu and netns"),
            k,
            Some(1400),
            None,
            true,
            &[
                "mtu", "1400", "netns", "NETNS", "type", "ipvlan", "mode", mode,
            ],
        );
    }
}

/// Bad configurations: a wrong mode, a missing master and no master in a chain whose previous result has no
/// single interface to take, refused by both implementations with nothing made;
/// a negative MTU, an MTU above the master's and no addresses at all (no IPAM, no prevResult), which the
/// reference only finds out after making the link or not at all, refused by ours before.
fn bad_input() {
    require_root();
    let p = plugin("l2");
    refused(
        "ipvlan",
        NET,
        &p,
        &[
            ("unknown mode", json!({"mode": "l4"})),
            ("missing master", json!({"master": "nope0"})),
            (
                "no master, a chain's prevResult with two interfaces",
                json!({"master": null, "prevResult": {"cniVersion": "1.0.0",
                    "interfaces": [{"name": "nic0"}, {"name": "eth9"}],
                    "ips": [{"address": "10.244.20.50/24", "interface": 0}]}}),
            ),
        ],
        true,
    );
    refused(
        "ipvlan",
        NET,
        &p,
        &[
            ("negative MTU", json!({"mtu": -1})),
            ("MTU above the master's", json!({"mtu": 9000})),
            ("no addresses", json!({"ipam": null})),
        ],
        false,
    );
}

/// Ours and the reference make the same attachment in each mode (results, links, addresses, routes); CHECK;
/// DEL leaves nothing, also when repeated and with the pod gone.
fn same_attachment_as_reference() {
    require_root();
    require_ipvlan();
    for mode in ["l2", "l3", "l3s"] {
        let ours = lifecycle(&Impl::ours(), NET, &plugin(mode));
        let refr = lifecycle(&Impl::reference(), NET, &plugin(mode));
        assert_eq!(ours, refr, "{mode}");
        assert_eq!(ours[0].link["kind"], "ipvlan");
        assert_eq!(ours[0].link["mtu"], 1400);
    }
}

/// SIGKILL during ADD: the next DEL cleans up.
fn killed_add_then_del() {
    require_root();
    require_ipvlan();
    common::sublink::killed_add_then_del("ipvlan", NET, &plugin("l2"));
}

/// In a chain without `master` and without IPAM, the master is the previous result's single interface and the
/// addresses are its: on this kernel our ADD gets as far as asking for the ipvlan link on that master (the kernel
/// refuses, code 100 naming ipvlan) and leaves nothing. Where ipvlan exists it is made and addressed.
fn chained_without_ipam() {
    require_root();
    let w = World::new();
    let rt = w.sb.runtime(&Impl::ours());
    let pod = w.sb.pod(0);
    let att = w.sb.att(0, &pod);
    let prev = json!({"cniVersion": "1.0.0", "interfaces": [{"name": "nic0"}],
        "ips": [{"address": "10.244.20.50/24", "interface": 0}]});
    let net = Net::new(NET, "1.0.0", vec![json!({"type": "ipvlan", "mode": "l2"})]);
    let conf = net.plugin_conf(0, Some(&prev));
    let out = rt.exec("ipvlan", "ADD", Some(&att), &conf);
    if kernel_creates(&["ipvlan", "mode", "l2"]) {
        assert!(out.ok(), "{out:?}");
        let r = out.json();
        assert_eq!(r["ips"][0]["address"], "10.244.20.50/24");
        assert_eq!(addrs(&pod.name, "eth0"), vec!["10.244.20.50/24"]);
        assert_eq!(
            pod_link(&pod.name, "eth0")["master"],
            index_of(w.node(), "nic0")
        );
        assert!(rt.exec("ipvlan", "DEL", Some(&att), &conf).ok());
        wait_only_lo(&pod);
    } else {
        out.assert_err(100);
        assert!(out.msg().contains("ipvlan"), "{out:?}");
        assert_eq!(link_names(&pod.name), vec!["lo"]);
        assert_eq!(link_names(w.node()), vec!["lo", "nic0"]);
    }
}

testkit::main!(
    request_is_iproute2s,
    chained_without_ipam,
    bad_input,
    same_attachment_as_reference,
    killed_add_then_del
);
