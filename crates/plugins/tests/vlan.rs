//! The `vlan` plugin. This kernel may lack 802.1Q (the test machine's does): the tests that make links run only
//! where a throwaway namespace can make one, and report "not run" elsewhere. What runs everywhere: the request
//! that makes the link is iproute2's for the same link, byte for byte (a preloaded `sendmsg` records the bytes even when the
//! kernel refuses them), and bad configurations are refused before any link is made, as the reference refuses
//! them.

mod common;

use common::sublink::*;
use common::*;
use kernel::sublink::SublinkKind;
use serde_json::json;

const NET: &str = "vlantest";

fn plugin(id: u16) -> serde_json::Value {
    json!({"type": "vlan", "master": "nic0", "vlanId": id, "mtu": 1400})
}

fn require_vlan() {
    testkit::require(
        kernel_creates(&["vlan", "id", "100"]),
        "this kernel cannot make 802.1Q vlan links (no 8021q module)",
    );
}

/// VLAN IDs at both ends of the range and between, with MTU and with the pod's namespace: our RTM_NEWLINK is
/// iproute2's.
fn request_is_iproute2s() {
    require_root();
    for id in [0u16, 100, 4094] {
        let s = id.to_string();
        let k = SublinkKind::Vlan(id);
        assert_request_is_iproute2s(&s, k, None, None, false, &["type", "vlan", "id", &s]);
        assert_request_is_iproute2s(
            &format!("{id} with mtu and netns"),
            k,
            Some(1400),
            None,
            true,
            &["mtu", "1400", "netns", "NETNS", "type", "vlan", "id", &s],
        );
    }
}

/// Bad configurations, refused by both implementations with nothing made: VLAN IDs out of range, no master, a
/// missing master, an MTU below 0 or above the master's. No IPAM, which the reference finds out only after making
/// the link, is refused by ours before.
fn bad_input() {
    require_root();
    let p = plugin(100);
    refused(
        "vlan",
        NET,
        &p,
        &[
            ("VLAN ID 4095", json!({"vlanId": 4095})),
            ("VLAN ID -1", json!({"vlanId": -1})),
            ("no master", json!({"master": null})),
            ("missing master", json!({"master": "nope0"})),
            ("negative MTU", json!({"mtu": -1})),
            ("MTU above the master's", json!({"mtu": 9000})),
        ],
        true,
    );
    refused(
        "vlan",
        NET,
        &p,
        &[("no IPAM", json!({"ipam": null}))],
        false,
    );
}

/// Ours and the reference make the same attachment (results, links with their VLAN ID, addresses, routes);
/// CHECK; DEL leaves nothing, also when repeated and with the pod gone.
fn same_attachment_as_reference() {
    require_root();
    require_vlan();
    let ours = lifecycle(&Impl::ours(), NET, &plugin(100));
    let refr = lifecycle(&Impl::reference(), NET, &plugin(100));
    assert_eq!(ours, refr);
    assert_eq!(ours[0].link["kind"], "vlan");
    assert_eq!(ours[0].link["id"], 100);
}

/// SIGKILL during ADD: the next DEL cleans up.
fn killed_add_then_del() {
    require_root();
    require_vlan();
    common::sublink::killed_add_then_del("vlan", NET, &plugin(100));
}

testkit::main!(
    request_is_iproute2s,
    bad_input,
    same_attachment_as_reference,
    killed_add_then_del
);
