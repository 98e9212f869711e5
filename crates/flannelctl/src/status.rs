//! `flannelctl status`: this node's lease, the network config and every peer, read from flanneld's `/status`.

use anyhow::{bail, Context, Result};
use serde_json::Value;
use std::net::SocketAddr;
use std::time::Duration;

/// Fetches and prints the daemon's status; `json` prints the raw document.
pub fn run(addr: SocketAddr, json: bool) -> Result<()> {
    let (code, body) =
        crate::http::get(addr, "/status", Duration::from_secs(3)).with_context(|| {
            format!("cannot reach flanneld at {addr} (is it running with --healthz-port?)")
        })?;
    if code != 200 {
        // 403: /status is served to loopback clients only unless flanneld runs with --status-remote.
        bail!("flanneld at {addr} answered HTTP {code}: {}", body.trim());
    }
    let v: Value = serde_json::from_str(&body).context("flanneld sent invalid JSON")?;
    if json {
        println!("{}", serde_json::to_string_pretty(&v)?);
        return Ok(());
    }
    print!("{}", render(&v));
    Ok(())
}

fn s(v: &Value, p: &str) -> String {
    match v.pointer(p) {
        Some(Value::String(s)) => s.clone(),
        Some(Value::Null) | None => "-".into(),
        Some(o) => o.to_string(),
    }
}

/// Renders the status document as text.
pub fn render(v: &Value) -> String {
    let mut out = String::new();
    out += &format!(
        "node:    subnet {}  ipv6 {}  public {}  iface {}  backend {}  mtu {}\n",
        s(v, "/node/subnet"),
        s(v, "/node/ipv6Subnet"),
        s(v, "/node/publicIP"),
        s(v, "/node/interface"),
        s(v, "/node/backendType"),
        s(v, "/node/mtu")
    );
    out += &format!(
        "config:  Network {}  IPv6Network {}  Backend {}  NFTables {}\n",
        s(v, "/config/Network"),
        s(v, "/config/IPv6Network"),
        s(v, "/config/Backend"),
        s(v, "/config/EnableNFTables")
    );
    if let Some(r) = v.get("lastReconcile") {
        out += &format!(
            "sync:    ok {}  generation {}  revision {}  took {} us  error {}\n",
            s(r, "/ok"),
            s(r, "/generation"),
            s(r, "/revision"),
            s(r, "/micros"),
            s(r, "/error")
        );
    }
    let peers = v
        .get("peers")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    out += &format!("peers:   {}  refused {}\n", peers.len(), s(v, "/refused"));
    out += &format!(
        "  {:<18} {:<16} {:<9} {:<10} {}\n",
        "SUBNET", "PUBLIC IP", "BACKEND", "PROGRAMMED", "BACKEND DATA"
    );
    for p in &peers {
        out += &format!(
            "  {:<18} {:<16} {:<9} {:<10} {}\n",
            s(p, "/subnet"),
            s(p, "/publicIP"),
            s(p, "/backendType"),
            s(p, "/programmed"),
            s(p, "/backendData")
        );
        // A refused lease says why, under its line.
        if let Some(Value::String(why)) = p.get("refused") {
            out += &format!("  {:<18} refused: {why}\n", "");
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_peers() {
        let v = serde_json::json!({"node":{"subnet":"10.244.1.0/24","backendType":"vxlan"},
            "peers":[{"subnet":"10.244.2.0/24","publicIP":"192.0.2.2","backendType":"vxlan","programmed":true,
            "backendData":{"VNI":1}}]});
        let t = render(&v);
        assert!(
            t.contains("10.244.1.0/24") && t.contains("192.0.2.2") && t.contains("true"),
            "{t}"
        );
        let v = serde_json::json!({"refused": 1, "peers":[{"subnet":"10.244.3.0/25","publicIP":"192.0.2.3",
            "programmed":false,"refused":"subnet 10.244.3.0/25 is not a /24 (the network's SubnetLen)"}]});
        let t = render(&v);
        assert!(
            t.contains("refused 1") && t.contains("refused: subnet 10.244.3.0/25 is not a /24"),
            "{t}"
        );
    }
}
