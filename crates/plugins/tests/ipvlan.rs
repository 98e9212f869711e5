//! The `ipvlan` plugin. This kernel may lack ipvlan (the test machine's does): the tests that make links run only
//! where a throwaway namespace can make one, and report "not run" elsewhere. What runs everywhere: the request
//! that makes the link is iproute2's for the same link, byte for byte (strace shows the bytes even when the
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

/// Bad configurations: a wrong mode and a missing master, refused by both implementations with nothing made;
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

testkit::main!(
    request_is_iproute2s,
    bad_input,
    same_attachment_as_reference,
    killed_add_then_del
);
