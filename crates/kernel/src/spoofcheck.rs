//! MAC spoof check for bridge ports (the bridge plugin's `macspoofchk`), laid out as the reference plugins'
//! `pkg/link/spoofcheck.go` does, so either implementation can tear down what the other set up:
//!
//! * table `bridge nat`, base chain `PREROUTING` (type filter, hook prerouting, priority -300, policy accept);
//! * in it, per attachment, `iifname "<host veth>" jump cni-br-iface-<id>`;
//! * chain `cni-br-iface-<id>`: `jump cni-br-iface-<id>-mac`;
//! * chain `cni-br-iface-<id>-mac`: `ether saddr <container MAC> return`, then `drop`;
//!
//! where `<id>` is `<containerID>-<ifname>` and every rule carries the comment `macspoofchk-<id>`. Teardown is keyed
//! by the id alone (the jump rule is found by its comment), so it works after the interface is gone.
//!
//! Changes are applied as nft JSON with `nft -j -f -`, each one a single atomic transaction.

use crate::error::{Error, Result};
use crate::firewall::{self, RunError};
use serde_json::{json, Value};
use std::collections::HashSet;

/// Family and name of the table.
pub const TABLE: &str = "bridge nat";
/// The base chain.
pub const BASE_CHAIN: &str = "PREROUTING";

/// The reference id of an attachment: `<containerID>-<ifname>`.
pub fn ref_id(container_id: &str, ifname: &str) -> String {
    format!("{container_id}-{ifname}")
}

/// The per-interface chain of an attachment.
pub fn iface_chain(ref_id: &str) -> String {
    format!("cni-br-iface-{ref_id}")
}

/// The per-MAC chain of an attachment.
pub fn mac_chain(ref_id: &str) -> String {
    format!("{}-mac", iface_chain(ref_id))
}

/// The comment on every rule of an attachment.
pub fn comment(ref_id: &str) -> String {
    format!("macspoofchk-{ref_id}")
}

fn chain(name: &str) -> Value {
    json!({"family": "bridge", "table": "nat", "name": name})
}

fn rule(chain: &str, comment: &str, expr: Value) -> Value {
    json!({"rule": {"family": "bridge", "table": "nat", "chain": chain, "comment": comment, "expr": expr}})
}

fn delete_rule(handle: u64) -> Value {
    json!({"delete": {"rule": {"family": "bridge", "table": "nat", "chain": BASE_CHAIN, "handle": handle}}})
}

/// The setup transaction (nft JSON): declare table and chains (a no-op when they exist), drop `stale` jump rules of
/// this attachment from the base chain (by handle), refill the attachment's chains. JSON rather than nft's text
/// syntax, as the reference does, so any container ID and interface name can be used as-is.
pub fn setup_script(iface: &str, mac: &str, ref_id: &str, stale: &[u64]) -> Value {
    let (ic, mc, cm) = (iface_chain(ref_id), mac_chain(ref_id), comment(ref_id));
    let mut cmds = vec![
        json!({"add": {"table": {"family": "bridge", "name": "nat"}}}),
        json!({"add": {"chain": {"family": "bridge", "table": "nat", "name": BASE_CHAIN, "type": "filter",
            "hook": "prerouting", "prio": -300, "policy": "accept"}}}),
        json!({"add": {"chain": chain(&ic)}}),
        json!({"add": {"chain": chain(&mc)}}),
    ];
    cmds.extend(stale.iter().map(|&h| delete_rule(h)));
    cmds.extend([
        json!({"flush": {"chain": chain(&ic)}}),
        json!({"flush": {"chain": chain(&mc)}}),
        json!({"add": rule(BASE_CHAIN, &cm, json!([
            {"match": {"op": "==", "left": {"meta": {"key": "iifname"}}, "right": iface}},
            {"jump": {"target": ic}},
        ]))}),
        json!({"add": rule(&ic, &cm, json!([{"jump": {"target": mc}}]))}),
        json!({"add": rule(&mc, &cm, json!([
            {"match": {"op": "==", "left": {"payload": {"protocol": "ether", "field": "saddr"}}, "right": mac}},
            {"return": null},
        ]))}),
        json!({"add": rule(&mc, &cm, json!([{"drop": null}]))}),
    ]);
    json!({ "nftables": cmds })
}

/// What of an attachment's rule set is present in the kernel.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Present {
    /// Handles of the base-chain rules carrying the attachment's comment.
    pub jumps: Vec<u64>,
    /// The per-interface chain exists.
    pub iface_chain: bool,
    /// The per-MAC chain exists.
    pub mac_chain: bool,
}

/// Reads an `nft -j list table bridge nat` (or `list chain …`) dump for attachment `ref_id`.
pub fn parse_present(json: &str, ref_id: &str) -> std::result::Result<Present, String> {
    let v: serde_json::Value =
        serde_json::from_str(json).map_err(|e| format!("nft -j output is not JSON: {e}"))?;
    let (ic, mc, cm) = (iface_chain(ref_id), mac_chain(ref_id), comment(ref_id));
    let mut p = Present::default();
    let mut chains = HashSet::new();
    for item in v["nftables"].as_array().into_iter().flatten() {
        if let Some(c) = item.get("chain") {
            if c["family"] == "bridge" && c["table"] == "nat" {
                if let Some(n) = c["name"].as_str() {
                    chains.insert(n.to_string());
                }
            }
        } else if let Some(r) = item.get("rule") {
            if r["family"] == "bridge"
                && r["table"] == "nat"
                && r["chain"] == BASE_CHAIN
                && r["comment"].as_str() == Some(cm.as_str())
            {
                let h = r["handle"]
                    .as_u64()
                    .ok_or_else(|| format!("nft rule without a handle: {r}"))?;
                p.jumps.push(h);
            }
        }
    }
    p.iface_chain = chains.contains(&ic);
    p.mac_chain = chains.contains(&mc);
    Ok(p)
}

/// The teardown transaction (nft JSON) for what is present: the base-chain jumps, then both chains (emptied
/// first, so the per-interface chain's jump no longer holds the per-MAC one). `None` if there is nothing to remove.
pub fn teardown_script(ref_id: &str, p: &Present) -> Option<Value> {
    let (ic, mc) = (iface_chain(ref_id), mac_chain(ref_id));
    let mut cmds: Vec<Value> = p.jumps.iter().map(|&h| delete_rule(h)).collect();
    let chains: Vec<&String> = [(p.iface_chain, &ic), (p.mac_chain, &mc)]
        .into_iter()
        .filter_map(|(e, c)| e.then_some(c))
        .collect();
    cmds.extend(chains.iter().map(|c| json!({"flush": {"chain": chain(c)}})));
    cmds.extend(
        chains
            .iter()
            .map(|c| json!({"delete": {"chain": chain(c)}})),
    );
    (!cmds.is_empty()).then(|| json!({ "nftables": cmds }))
}

fn nft_apply_json(v: &Value) -> std::result::Result<(), RunError> {
    firewall::run_with_stdin("nft", &["-j", "-f", "-"], &v.to_string()).map(|_| ())
}

/// Reads what of `ref_id`'s rule set exists; nothing if the table (or nft itself) is not there.
fn read_present(ref_id: &str) -> Result<Present> {
    match firewall::nft_json(&["list", "table", "bridge", "nat"]) {
        Ok(out) => parse_present(&out, ref_id).map_err(|msg| Error::Firewall {
            op: "macspoofchk: read table bridge nat".into(),
            msg,
        }),
        Err(e) if e.is_missing() || e.is_nft_not_found() => Ok(Present::default()),
        Err(e) => Err(e.into_error("macspoofchk: read table bridge nat")),
    }
}

/// Restricts frames entering the bridge from `iface` (the host end of the pod's veth) to source MAC `mac`.
/// Re-running it for the same attachment replaces its rules (a stale jump for an old interface goes too).
pub fn setup(iface: &str, mac: &str, container_id: &str, ifname: &str) -> Result<()> {
    let id = ref_id(container_id, ifname);
    let stale = read_present(&id)?.jumps;
    nft_apply_json(&setup_script(iface, &mac.to_lowercase(), &id, &stale))
        .map_err(|e| e.into_error(&format!("macspoofchk: set up for {iface}")))
}

/// Removes the rule set of attachment (`container_id`, `ifname`). Nothing there (or no nft) is not an error.
pub fn teardown(container_id: &str, ifname: &str) -> Result<()> {
    let id = ref_id(container_id, ifname);
    // A concurrent teardown of the same attachment may remove something between the read and the write: re-read.
    let mut last: Option<RunError> = None;
    for _ in 0..3 {
        let p = read_present(&id)?;
        let Some(script) = teardown_script(&id, &p) else {
            return Ok(());
        };
        match nft_apply_json(&script) {
            Ok(()) => return Ok(()),
            Err(e) if e.is_nft_not_found() => last = Some(e),
            Err(e) => return Err(e.into_error("macspoofchk: tear down")),
        }
    }
    match last {
        Some(e) => Err(e.into_error("macspoofchk: tear down")),
        None => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_match_the_reference() {
        let id = ref_id("abc", "eth0");
        assert_eq!(iface_chain(&id), "cni-br-iface-abc-eth0");
        assert_eq!(mac_chain(&id), "cni-br-iface-abc-eth0-mac");
        assert_eq!(comment(&id), "macspoofchk-abc-eth0");
    }

    #[test]
    fn setup_script_json() {
        let s = setup_script("veth1", "0a:58:0a:f4:01:02", "abc-eth0", &[7]);
        let cmds = s["nftables"].as_array().unwrap();
        assert_eq!(cmds.len(), 11);
        assert_eq!(cmds[1]["add"]["chain"]["prio"], -300);
        assert_eq!(cmds[1]["add"]["chain"]["hook"], "prerouting");
        assert_eq!(cmds[4], delete_rule(7));
        let jump = &cmds[7]["add"]["rule"];
        assert_eq!(jump["chain"], "PREROUTING");
        assert_eq!(jump["comment"], "macspoofchk-abc-eth0");
        assert_eq!(jump["expr"][0]["match"]["right"], "veth1");
        assert_eq!(jump["expr"][1]["jump"]["target"], "cni-br-iface-abc-eth0");
        assert_eq!(
            cmds[8]["add"]["rule"]["expr"][0]["jump"]["target"],
            "cni-br-iface-abc-eth0-mac"
        );
        let m = &cmds[9]["add"]["rule"];
        assert_eq!(m["chain"], "cni-br-iface-abc-eth0-mac");
        assert_eq!(m["expr"][0]["match"]["right"], "0a:58:0a:f4:01:02");
        assert!(m["expr"][1].get("return").is_some());
        assert!(cmds[10]["add"]["rule"]["expr"][0].get("drop").is_some());
    }

    #[test]
    fn present_and_teardown() {
        // As `nft -j list table bridge nat` prints it after a reference ADD for (abc, eth0) plus another pod.
        let json = r#"{"nftables": [{"metainfo": {"version": "1.0.6"}},
          {"table": {"family": "bridge", "name": "nat", "handle": 2}},
          {"chain": {"family": "bridge", "table": "nat", "name": "PREROUTING", "handle": 1, "type": "filter", "hook": "prerouting", "prio": -300, "policy": "accept"}},
          {"chain": {"family": "bridge", "table": "nat", "name": "cni-br-iface-abc-eth0", "handle": 2}},
          {"chain": {"family": "bridge", "table": "nat", "name": "cni-br-iface-abc-eth0-mac", "handle": 3}},
          {"rule": {"family": "bridge", "table": "nat", "chain": "PREROUTING", "handle": 4, "comment": "macspoofchk-abc-eth0", "expr": []}},
          {"rule": {"family": "bridge", "table": "nat", "chain": "PREROUTING", "handle": 8, "comment": "macspoofchk-abcd-eth0", "expr": []}},
          {"rule": {"family": "bridge", "table": "nat", "chain": "cni-br-iface-abc-eth0", "handle": 5, "comment": "macspoofchk-abc-eth0", "expr": []}}]}"#;
        let p = parse_present(json, "abc-eth0").unwrap();
        assert_eq!(
            p,
            Present {
                jumps: vec![4],
                iface_chain: true,
                mac_chain: true
            }
        );
        let t = teardown_script("abc-eth0", &p).unwrap();
        let ops: Vec<String> = t["nftables"]
            .as_array()
            .unwrap()
            .iter()
            .map(|c| {
                let (op, body) = c.as_object().unwrap().iter().next().unwrap();
                let (what, o) = body.as_object().unwrap().iter().next().unwrap();
                format!("{op} {what} {}", o.get("handle").unwrap_or(&o["name"]))
            })
            .collect();
        assert_eq!(
            ops,
            [
                "delete rule 4",
                "flush chain \"cni-br-iface-abc-eth0\"",
                "flush chain \"cni-br-iface-abc-eth0-mac\"",
                "delete chain \"cni-br-iface-abc-eth0\"",
                "delete chain \"cni-br-iface-abc-eth0-mac\"",
            ]
        );
        let none = parse_present(json, "zzz-eth0").unwrap();
        assert_eq!(none, Present::default());
        assert!(teardown_script("zzz-eth0", &none).is_none());
        assert!(parse_present("not json", "x").is_err());
    }
}
