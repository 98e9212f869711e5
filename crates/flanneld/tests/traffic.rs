//! Real-kernel tests of the traffic rules. Each test runs on its own thread moved into a fresh network namespace
//! (only that thread, and the iptables/nft processes it spawns, see it), so the root namespace is never touched.
//! Needs root.
//!
//! The goldens are upstream's: `e2e/rules.go` (`expectedIptablesPostrouting`, `expectedIptablesForward`,
//! `expectedNftPostrouting`, `expectedNftForward`) with this test's networks, plus full `iptables-save` /
//! `nft list table` text.

use std::process::Command;

use flanneld::traffic::{self, MasqConfig, Mode, NetPair, TrafficManager};
use ipnet::{Ipv4Net, Ipv6Net};

/// Runs `f` on a new thread inside a new, empty network namespace.
fn in_netns<F: FnOnce() + Send + 'static>(f: F) {
    testkit::require_root();
    let t = std::thread::spawn(move || {
        nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNET)
            .expect("unshare(CLONE_NEWNET): run as root");
        f();
    });
    if let Err(p) = t.join() {
        std::panic::resume_unwind(p);
    }
}

/// A way to break the installed rules, named for the failure message.
type Case = (&'static str, Box<dyn Fn()>);

fn sh(cmd: &str, args: &[&str]) -> String {
    let out = Command::new(cmd).args(args).output().expect(cmd);
    assert!(
        out.status.success(),
        "{cmd} {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn sh_ok(cmd: &str, args: &[&str]) -> bool {
    Command::new(cmd)
        .args(args)
        .output()
        .expect(cmd)
        .status
        .success()
}

fn restore(bin: &str, payload: &str) {
    let mut child = Command::new(bin)
        .args(["--noflush", "-w"])
        .stdin(std::process::Stdio::piped())
        .spawn()
        .expect(bin);
    std::io::Write::write_all(&mut child.stdin.take().expect("stdin"), payload.as_bytes())
        .expect("write");
    assert!(child.wait().expect("wait").success(), "{bin}: {payload}");
}

fn nft_script(script: &str) {
    let mut child = Command::new("nft")
        .args(["-f", "-"])
        .stdin(std::process::Stdio::piped())
        .spawn()
        .expect("nft");
    std::io::Write::write_all(&mut child.stdin.take().expect("stdin"), script.as_bytes())
        .expect("write");
    assert!(child.wait().expect("wait").success(), "nft: {script}");
}

/// `iptables-save -t <table>` without the timestamp comments.
fn save(bin: &str, table: &str) -> String {
    sh(bin, &["-t", table])
        .lines()
        .filter(|l| !l.starts_with('#'))
        .map(|l| format!("{l}\n"))
        .collect()
}

/// Upstream e2e `iptablesNatFlannel`: the FLANNEL lines of `-S POSTROUTING`, then `-S FLANNEL-POSTRTG`.
fn e2e_nat(bin: &str) -> String {
    let post = sh(bin, &["-t", "nat", "-S", "POSTROUTING"]);
    let chain = sh(bin, &["-t", "nat", "-S", "FLANNEL-POSTRTG"]);
    let mut lines: Vec<&str> = post.lines().filter(|l| l.contains("FLANNEL")).collect();
    lines.extend(chain.lines());
    lines.join("\n")
}

/// Upstream e2e `iptablesFilterForward`: `-S FORWARD`, then `-S FLANNEL-FWD`.
fn e2e_forward(bin: &str) -> String {
    let fwd = sh(bin, &["-t", "filter", "-S", "FORWARD"]);
    let chain = sh(bin, &["-t", "filter", "-S", "FLANNEL-FWD"]);
    format!("{}\n{}", fwd.trim_end(), chain.trim_end())
}

/// Upstream e2e `expectedIptablesPostrouting` (with `-j MASQUERADE --random-fully`, or without the flag).
fn expected_postrouting(pod: &str, net: &str, mcast: &str, random_fully: bool) -> String {
    let rf = if random_fully { " --random-fully" } else { "" };
    [
        r#"-A POSTROUTING -m comment --comment "flanneld masq" -j FLANNEL-POSTRTG"#.to_string(),
        "-N FLANNEL-POSTRTG".to_string(),
        r#"-A FLANNEL-POSTRTG -m mark --mark 0x4000/0x4000 -m comment --comment "flanneld masq" -j RETURN"#.to_string(),
        format!(r#"-A FLANNEL-POSTRTG -s {pod} -d {net} -m comment --comment "flanneld masq" -j RETURN"#),
        format!(r#"-A FLANNEL-POSTRTG -s {net} -d {pod} -m comment --comment "flanneld masq" -j RETURN"#),
        format!(r#"-A FLANNEL-POSTRTG ! -s {net} -d {pod} -m comment --comment "flanneld masq" -j RETURN"#),
        format!(r#"-A FLANNEL-POSTRTG -s {net} ! -d {mcast} -m comment --comment "flanneld masq" -j MASQUERADE{rf}"#),
        format!(r#"-A FLANNEL-POSTRTG ! -s {net} -d {net} -m comment --comment "flanneld masq" -j MASQUERADE{rf}"#),
    ]
    .join("\n")
}

/// Upstream e2e `expectedIptablesForward` in a namespace without kube-proxy.
fn expected_forward(net: &str) -> String {
    [
        "-P FORWARD ACCEPT".to_string(),
        r#"-A FORWARD -m comment --comment "flanneld forward" -j FLANNEL-FWD"#.to_string(),
        "-N FLANNEL-FWD".to_string(),
        format!(r#"-A FLANNEL-FWD -s {net} -m comment --comment "flanneld forward" -j ACCEPT"#),
        format!(r#"-A FLANNEL-FWD -d {net} -m comment --comment "flanneld forward" -j ACCEPT"#),
    ]
    .join("\n")
}

/// Upstream e2e `expectedNftPostrouting` (IPv4) / its IPv6 counterpart, as `nft list chain` prints it.
fn expected_nft_postrtg(family: &str, pod: &str, net: &str, fully_random: bool) -> String {
    let (table, p, mcast) = match family {
        "ip" => ("flannel-ipv4", "ip", "224.0.0.0/4"),
        _ => ("flannel-ipv6", "ip6", "ff00::/8"),
    };
    let masq = if fully_random {
        "masquerade fully-random"
    } else {
        "masquerade"
    };
    [
        format!("table {family} {table} {{"),
        "\tchain postrtg {".to_string(),
        "\t\tcomment \"chain to manage traffic masquerading by flannel\"".to_string(),
        "\t\ttype nat hook postrouting priority srcnat; policy accept;".to_string(),
        "\t\tmeta mark 0x00004000 return".to_string(),
        format!("\t\t{p} saddr {pod} {p} daddr {net} return"),
        format!("\t\t{p} saddr {net} {p} daddr {pod} return"),
        format!("\t\t{p} saddr != {pod} {p} daddr {net} return"),
        format!("\t\t{p} saddr {net} {p} daddr != {mcast} {masq}"),
        format!("\t\t{p} saddr != {net} {p} daddr {net} {masq}"),
        "\t}".to_string(),
        "}".to_string(),
    ]
    .join("\n")
}

/// Upstream e2e `expectedNftForward` (IPv4) / its IPv6 counterpart.
fn expected_nft_forward(family: &str, net: &str) -> String {
    let (table, p) = match family {
        "ip" => ("flannel-ipv4", "ip"),
        _ => ("flannel-ipv6", "ip6"),
    };
    [
        format!("table {family} {table} {{"),
        "\tchain forward {".to_string(),
        "\t\tcomment \"chain to accept flannel traffic\"".to_string(),
        "\t\ttype filter hook forward priority filter; policy accept;".to_string(),
        format!("\t\t{p} saddr {net} accept"),
        format!("\t\t{p} daddr {net} accept"),
        "\t}".to_string(),
        "}".to_string(),
    ]
    .join("\n")
}

fn nft_chain(family: &str, table: &str, chain: &str) -> String {
    sh("nft", &["list", "chain", family, table, chain])
        .trim_end()
        .to_string()
}

fn nft_table(family: &str, table: &str) -> String {
    sh("nft", &["list", "table", family, table])
}

fn v4(network: &str, subnet: &str) -> NetPair<Ipv4Net> {
    NetPair {
        network: network.parse().expect("v4 network"),
        subnet: subnet.parse().expect("v4 subnet"),
    }
}

fn v6(network: &str, subnet: &str) -> NetPair<Ipv6Net> {
    NetPair {
        network: network.parse().expect("v6 network"),
        subnet: subnet.parse().expect("v6 subnet"),
    }
}

const NET4: &str = "10.244.0.0/16";
const POD4: &str = "10.244.1.0/24";
const NET6: &str = "fd00:10:244::/56";
const POD6: &str = "fd00:10:244:1::/64";

fn dual_stack(fully_random_disable: bool) -> MasqConfig {
    MasqConfig {
        v4: Some(v4(NET4, "10.244.1.1/24")),
        v6: Some(v6(NET6, "fd00:10:244:1::1/64")),
        fully_random_disable,
        ..MasqConfig::default()
    }
}

/// Starts a manager like the daemon does and sets up both rule kinds.
fn start(mode: Mode, cfg: &MasqConfig) -> TrafficManager {
    let mut tm = TrafficManager::new(mode);
    tm.cleanup_other_mode().expect("cleanup other mode");
    tm.init().expect("init");
    tm.setup_and_ensure_masq_rules(cfg).expect("masq");
    tm.setup_and_ensure_forward_rules(cfg.v4.map(|p| p.network), cfg.v6.map(|p| p.network))
        .expect("forward");
    tm
}

/// The full `iptables-save -t nat` text for the v4 rules.
fn golden_nat4(random_fully: bool) -> String {
    let rf = if random_fully { " --random-fully" } else { "" };
    format!(
        r#"*nat
:PREROUTING ACCEPT [0:0]
:INPUT ACCEPT [0:0]
:OUTPUT ACCEPT [0:0]
:POSTROUTING ACCEPT [0:0]
:FLANNEL-POSTRTG - [0:0]
-A POSTROUTING -m comment --comment "flanneld masq" -j FLANNEL-POSTRTG
-A FLANNEL-POSTRTG -m mark --mark 0x4000/0x4000 -m comment --comment "flanneld masq" -j RETURN
-A FLANNEL-POSTRTG -s 10.244.1.0/24 -d 10.244.0.0/16 -m comment --comment "flanneld masq" -j RETURN
-A FLANNEL-POSTRTG -s 10.244.0.0/16 -d 10.244.1.0/24 -m comment --comment "flanneld masq" -j RETURN
-A FLANNEL-POSTRTG ! -s 10.244.0.0/16 -d 10.244.1.0/24 -m comment --comment "flanneld masq" -j RETURN
-A FLANNEL-POSTRTG -s 10.244.0.0/16 ! -d 224.0.0.0/4 -m comment --comment "flanneld masq" -j MASQUERADE{rf}
-A FLANNEL-POSTRTG ! -s 10.244.0.0/16 -d 10.244.0.0/16 -m comment --comment "flanneld masq" -j MASQUERADE{rf}
COMMIT
"#
    )
}

const GOLDEN_FILTER4: &str = r#"*filter
:INPUT ACCEPT [0:0]
:FORWARD ACCEPT [0:0]
:OUTPUT ACCEPT [0:0]
:FLANNEL-FWD - [0:0]
-A FORWARD -m comment --comment "flanneld forward" -j FLANNEL-FWD
-A FLANNEL-FWD -s 10.244.0.0/16 -m comment --comment "flanneld forward" -j ACCEPT
-A FLANNEL-FWD -d 10.244.0.0/16 -m comment --comment "flanneld forward" -j ACCEPT
COMMIT
"#;

const GOLDEN_NAT6: &str = r#"*nat
:PREROUTING ACCEPT [0:0]
:INPUT ACCEPT [0:0]
:OUTPUT ACCEPT [0:0]
:POSTROUTING ACCEPT [0:0]
:FLANNEL-POSTRTG - [0:0]
-A POSTROUTING -m comment --comment "flanneld masq" -j FLANNEL-POSTRTG
-A FLANNEL-POSTRTG -m mark --mark 0x4000/0x4000 -m comment --comment "flanneld masq" -j RETURN
-A FLANNEL-POSTRTG -s fd00:10:244:1::/64 -d fd00:10:244::/56 -m comment --comment "flanneld masq" -j RETURN
-A FLANNEL-POSTRTG -s fd00:10:244::/56 -d fd00:10:244:1::/64 -m comment --comment "flanneld masq" -j RETURN
-A FLANNEL-POSTRTG ! -s fd00:10:244::/56 -d fd00:10:244:1::/64 -m comment --comment "flanneld masq" -j RETURN
-A FLANNEL-POSTRTG -s fd00:10:244::/56 ! -d ff00::/8 -m comment --comment "flanneld masq" -j MASQUERADE --random-fully
-A FLANNEL-POSTRTG ! -s fd00:10:244::/56 -d fd00:10:244::/56 -m comment --comment "flanneld masq" -j MASQUERADE --random-fully
COMMIT
"#;

const GOLDEN_FILTER6: &str = r#"*filter
:INPUT ACCEPT [0:0]
:FORWARD ACCEPT [0:0]
:OUTPUT ACCEPT [0:0]
:FLANNEL-FWD - [0:0]
-A FORWARD -m comment --comment "flanneld forward" -j FLANNEL-FWD
-A FLANNEL-FWD -s fd00:10:244::/56 -m comment --comment "flanneld forward" -j ACCEPT
-A FLANNEL-FWD -d fd00:10:244::/56 -m comment --comment "flanneld forward" -j ACCEPT
COMMIT
"#;

const EMPTY_NAT: &str = "*nat\n:PREROUTING ACCEPT [0:0]\n:INPUT ACCEPT [0:0]\n:OUTPUT ACCEPT [0:0]\n:POSTROUTING ACCEPT [0:0]\nCOMMIT\n";
const EMPTY_FILTER: &str =
    "*filter\n:INPUT ACCEPT [0:0]\n:FORWARD ACCEPT [0:0]\n:OUTPUT ACCEPT [0:0]\nCOMMIT\n";

fn assert_iptables_golden(random_fully: bool) {
    assert_eq!(save("iptables-save", "nat"), golden_nat4(random_fully));
    assert_eq!(save("iptables-save", "filter"), GOLDEN_FILTER4);
    let nat6 = if random_fully {
        GOLDEN_NAT6.to_string()
    } else {
        GOLDEN_NAT6.replace(" --random-fully", "")
    };
    assert_eq!(save("ip6tables-save", "nat"), nat6);
    assert_eq!(save("ip6tables-save", "filter"), GOLDEN_FILTER6);
}

// ---------------------------------------------------------------------------------------------------------------
// iptables mode.

fn iptables_dual_stack_golden_like_upstream_e2e() {
    in_netns(|| {
        let mut tm = start(Mode::Iptables, &dual_stack(false));
        assert_eq!(
            e2e_nat("iptables"),
            expected_postrouting(POD4, NET4, "224.0.0.0/4", true)
        );
        assert_eq!(e2e_forward("iptables"), expected_forward(NET4));
        assert_eq!(
            e2e_nat("ip6tables"),
            expected_postrouting(POD6, NET6, "ff00::/8", true)
        );
        assert_eq!(e2e_forward("ip6tables"), expected_forward(NET6));
        assert_iptables_golden(true);
        // Nothing to repair; no nftables tables of flannel's.
        assert!(!tm.ensure().expect("ensure"));
        assert!(!sh("nft", &["list", "tables"]).contains("flannel"));
    });
}

fn iptables_fully_random_disabled() {
    in_netns(|| {
        let _tm = start(Mode::Iptables, &dual_stack(true));
        assert_eq!(
            e2e_nat("iptables"),
            expected_postrouting(POD4, NET4, "224.0.0.0/4", false)
        );
        assert_iptables_golden(false);
    });
}

fn iptables_v4_only_leaves_ip6tables_alone() {
    in_netns(|| {
        let cfg = MasqConfig {
            v4: Some(v4(NET4, POD4)),
            ..MasqConfig::default()
        };
        let mut tm = start(Mode::Iptables, &cfg);
        assert_eq!(save("iptables-save", "nat"), golden_nat4(true));
        assert_eq!(save("ip6tables-save", "nat"), EMPTY_NAT);
        assert_eq!(save("ip6tables-save", "filter"), EMPTY_FILTER);
        assert!(!tm.ensure().expect("ensure"));
    });
}

fn iptables_setup_is_idempotent() {
    in_netns(|| {
        let cfg = dual_stack(false);
        let mut tm = start(Mode::Iptables, &cfg);
        // Again on the same manager, and from a fresh manager (a daemon restart with the same lease).
        tm.setup_and_ensure_masq_rules(&cfg).expect("masq");
        tm.setup_and_ensure_forward_rules(cfg.v4.map(|p| p.network), cfg.v6.map(|p| p.network))
            .expect("forward");
        assert_iptables_golden(true);
        let restarted = MasqConfig {
            prev_v4: cfg.v4,
            prev_v6: cfg.v6,
            ..cfg.clone()
        };
        let mut tm2 = start(Mode::Iptables, &restarted);
        assert_iptables_golden(true);
        assert!(!tm2.ensure().expect("ensure"));
    });
}

fn iptables_ensure_repairs_deleted_and_reordered_rules() {
    in_netns(|| {
        let mut tm = start(Mode::Iptables, &dual_stack(false));
        let masq_rule = [
            "-t",
            "nat",
            "-D",
            "FLANNEL-POSTRTG",
            "-s",
            POD4,
            "-d",
            NET4,
            "-m",
            "comment",
            "--comment",
            "flanneld masq",
            "-j",
            "RETURN",
        ];
        let cases: Vec<Case> = vec![
            (
                "delete a masquerade rule",
                Box::new(move || assert!(sh_ok("iptables", &masq_rule))),
            ),
            (
                "delete the POSTROUTING jump",
                Box::new(|| {
                    assert!(sh_ok(
                        "iptables",
                        &[
                            "-t",
                            "nat",
                            "-D",
                            "POSTROUTING",
                            "-m",
                            "comment",
                            "--comment",
                            "flanneld masq",
                            "-j",
                            "FLANNEL-POSTRTG"
                        ]
                    ))
                }),
            ),
            (
                "flush the v6 forward chain",
                Box::new(|| assert!(sh_ok("ip6tables", &["-t", "filter", "-F", "FLANNEL-FWD"]))),
            ),
            (
                "delete the v4 forward jump and chain",
                Box::new(|| {
                    assert!(sh_ok(
                        "iptables",
                        &[
                            "-D",
                            "FORWARD",
                            "-m",
                            "comment",
                            "--comment",
                            "flanneld forward",
                            "-j",
                            "FLANNEL-FWD"
                        ]
                    ));
                    assert!(sh_ok("iptables", &["-F", "FLANNEL-FWD"]));
                    assert!(sh_ok("iptables", &["-X", "FLANNEL-FWD"]));
                }),
            ),
            (
                "move a rule to the front",
                Box::new(move || {
                    let mut del: Vec<&str> = masq_rule.to_vec();
                    assert!(sh_ok("iptables", &del));
                    del[2] = "-I";
                    assert!(sh_ok("iptables", &del));
                }),
            ),
            (
                "insert a foreign rule into flannel's chain",
                Box::new(|| {
                    assert!(sh_ok(
                        "iptables",
                        &["-t", "nat", "-I", "FLANNEL-POSTRTG", "-j", "ACCEPT"]
                    ))
                }),
            ),
            (
                "duplicate the jump",
                Box::new(|| {
                    assert!(sh_ok(
                        "iptables",
                        &[
                            "-t",
                            "nat",
                            "-A",
                            "POSTROUTING",
                            "-m",
                            "comment",
                            "--comment",
                            "flanneld masq",
                            "-j",
                            "FLANNEL-POSTRTG"
                        ]
                    ))
                }),
            ),
        ];
        for (what, break_it) in cases {
            break_it();
            assert!(tm.ensure().expect("ensure"), "{what}: nothing repaired");
            assert_iptables_golden(true);
            assert!(!tm.ensure().expect("ensure"), "{what}: repaired twice");
        }
    });
}

fn iptables_keeps_foreign_rules_and_their_order() {
    in_netns(|| {
        // kube-proxy's rules come first, as in upstream's e2e golden for FORWARD.
        restore(
            "iptables-restore",
            "*filter\n:KUBE-FORWARD - [0:0]\n\
             -A FORWARD -m comment --comment \"kubernetes forwarding rules\" -j KUBE-FORWARD\nCOMMIT\n\
             *nat\n:KUBE-POSTROUTING - [0:0]\n\
             -A POSTROUTING -m comment --comment \"kubernetes postrouting rules\" -j KUBE-POSTROUTING\nCOMMIT\n",
        );
        let mut tm = start(Mode::Iptables, &dual_stack(false));
        let fwd = sh("iptables", &["-S", "FORWARD"]);
        assert_eq!(
            fwd,
            "-P FORWARD ACCEPT\n\
             -A FORWARD -m comment --comment \"kubernetes forwarding rules\" -j KUBE-FORWARD\n\
             -A FORWARD -m comment --comment \"flanneld forward\" -j FLANNEL-FWD\n"
        );
        // A repair keeps the jump where it is.
        assert!(sh_ok("iptables", &["-F", "FLANNEL-FWD"]));
        assert!(tm.ensure().expect("ensure"));
        assert_eq!(sh("iptables", &["-S", "FORWARD"]), fwd);
        // Cleanup removes only flannel's.
        tm.cleanup().expect("cleanup");
        assert_eq!(
            sh("iptables", &["-S", "FORWARD"]),
            "-P FORWARD ACCEPT\n-A FORWARD -m comment --comment \"kubernetes forwarding rules\" -j KUBE-FORWARD\n"
        );
        assert_eq!(
            sh("iptables", &["-t", "nat", "-S", "POSTROUTING"]),
            "-P POSTROUTING ACCEPT\n-A POSTROUTING -m comment --comment \"kubernetes postrouting rules\" -j KUBE-POSTROUTING\n"
        );
        assert!(!save("ip6tables-save", "nat").contains("FLANNEL"));
        assert!(!save("ip6tables-save", "filter").contains("FLANNEL"));
        // Forgotten: ensure no longer restores anything.
        assert!(!tm.ensure().expect("ensure"));
        assert!(!save("iptables-save", "nat").contains("FLANNEL"));
    });
}

fn iptables_network_change_removes_stale_rules() {
    in_netns(|| {
        // A previous run with another network and lease, plus rules of an old flannel version that masqueraded
        // straight from POSTROUTING.
        let old = MasqConfig {
            v4: Some(v4("10.42.0.0/16", "10.42.7.0/24")),
            v6: Some(v6("fd00:42::/56", "fd00:42:0:7::/64")),
            ..MasqConfig::default()
        };
        let _ = start(Mode::Iptables, &old);
        restore(
            "iptables-restore",
            "*nat\n\
             -A POSTROUTING -s 10.42.0.0/16 -d 10.42.0.0/16 -m comment --comment \"flanneld masq\" -j RETURN\n\
             -A POSTROUTING -s 10.42.0.0/16 ! -d 224.0.0.0/4 -m comment --comment \"flanneld masq\" -j MASQUERADE\n\
             COMMIT\n",
        );
        let new = MasqConfig {
            prev_v4: old.v4,
            prev_v6: old.v6,
            ..dual_stack(false)
        };
        let mut tm = start(Mode::Iptables, &new);
        assert_iptables_golden(true);
        for bin in ["iptables-save", "ip6tables-save"] {
            let all = sh(bin, &[]);
            assert!(
                !all.contains("10.42.") && !all.contains("fd00:42:"),
                "{all}"
            );
        }
        assert!(!tm.ensure().expect("ensure"));
    });
}

fn iptables_mode_removes_nftables_leftovers() {
    in_netns(|| {
        let _ = start(Mode::Nftables, &dual_stack(false));
        assert!(sh("nft", &["list", "tables"]).contains("flannel-ipv6"));
        let _tm = start(Mode::Iptables, &dual_stack(false));
        let tables = sh("nft", &["list", "tables"]);
        assert!(!tables.contains("flannel"), "{tables}");
        assert_iptables_golden(true);
    });
}

// ---------------------------------------------------------------------------------------------------------------
// nftables mode.

fn golden_nft_table4(masq: &str) -> String {
    format!(
        "table ip flannel-ipv4 {{
\tcomment \"rules for flannel-ipv4\"
\tchain postrtg {{
\t\tcomment \"chain to manage traffic masquerading by flannel\"
\t\ttype nat hook postrouting priority srcnat; policy accept;
\t\tmeta mark 0x00004000 return
\t\tip saddr 10.244.1.0/24 ip daddr 10.244.0.0/16 return
\t\tip saddr 10.244.0.0/16 ip daddr 10.244.1.0/24 return
\t\tip saddr != 10.244.1.0/24 ip daddr 10.244.0.0/16 return
\t\tip saddr 10.244.0.0/16 ip daddr != 224.0.0.0/4 {masq}
\t\tip saddr != 10.244.0.0/16 ip daddr 10.244.0.0/16 {masq}
\t}}

\tchain forward {{
\t\tcomment \"chain to accept flannel traffic\"
\t\ttype filter hook forward priority filter; policy accept;
\t\tip saddr 10.244.0.0/16 accept
\t\tip daddr 10.244.0.0/16 accept
\t}}
}}
"
    )
}

const GOLDEN_NFT_TABLE6: &str = "table ip6 flannel-ipv6 {
\tcomment \"rules for flannel-ipv6\"
\tchain postrtg {
\t\tcomment \"chain to manage traffic masquerading by flannel\"
\t\ttype nat hook postrouting priority srcnat; policy accept;
\t\tmeta mark 0x00004000 return
\t\tip6 saddr fd00:10:244:1::/64 ip6 daddr fd00:10:244::/56 return
\t\tip6 saddr fd00:10:244::/56 ip6 daddr fd00:10:244:1::/64 return
\t\tip6 saddr != fd00:10:244:1::/64 ip6 daddr fd00:10:244::/56 return
\t\tip6 saddr fd00:10:244::/56 ip6 daddr != ff00::/8 masquerade fully-random
\t\tip6 saddr != fd00:10:244::/56 ip6 daddr fd00:10:244::/56 masquerade fully-random
\t}

\tchain forward {
\t\tcomment \"chain to accept flannel traffic\"
\t\ttype filter hook forward priority filter; policy accept;
\t\tip6 saddr fd00:10:244::/56 accept
\t\tip6 daddr fd00:10:244::/56 accept
\t}
}
";

fn assert_nft_golden(fully_random: bool) {
    let masq = if fully_random {
        "masquerade fully-random"
    } else {
        "masquerade"
    };
    assert_eq!(nft_table("ip", "flannel-ipv4"), golden_nft_table4(masq));
    let t6 = if fully_random {
        GOLDEN_NFT_TABLE6.to_string()
    } else {
        GOLDEN_NFT_TABLE6.replace(" fully-random", "")
    };
    assert_eq!(nft_table("ip6", "flannel-ipv6"), t6);
}

fn nftables_dual_stack_golden_like_upstream_e2e() {
    in_netns(|| {
        let mut tm = start(Mode::Nftables, &dual_stack(false));
        assert_eq!(
            nft_chain("ip", "flannel-ipv4", "postrtg"),
            expected_nft_postrtg("ip", POD4, NET4, true)
        );
        assert_eq!(
            nft_chain("ip", "flannel-ipv4", "forward"),
            expected_nft_forward("ip", NET4)
        );
        assert_eq!(
            nft_chain("ip6", "flannel-ipv6", "postrtg"),
            expected_nft_postrtg("ip6", POD6, NET6, true)
        );
        assert_eq!(
            nft_chain("ip6", "flannel-ipv6", "forward"),
            expected_nft_forward("ip6", NET6)
        );
        assert_nft_golden(true);
        assert!(!tm.ensure().expect("ensure"));
        // Nothing in iptables.
        assert_eq!(save("iptables-save", "nat"), EMPTY_NAT);
    });
}

fn nftables_fully_random_disabled_and_idempotent() {
    in_netns(|| {
        let cfg = dual_stack(true);
        let mut tm = start(Mode::Nftables, &cfg);
        assert_nft_golden(false);
        tm.setup_and_ensure_masq_rules(&cfg).expect("masq");
        assert_nft_golden(false);
        let mut tm2 = start(Mode::Nftables, &cfg);
        assert_nft_golden(false);
        assert!(!tm2.ensure().expect("ensure"));
    });
}

fn nftables_v4_only_leaves_an_empty_v6_table_like_upstream() {
    in_netns(|| {
        let cfg = MasqConfig {
            v4: Some(v4(NET4, POD4)),
            ..MasqConfig::default()
        };
        let mut tm = start(Mode::Nftables, &cfg);
        assert_eq!(
            nft_table("ip", "flannel-ipv4"),
            golden_nft_table4("masquerade fully-random")
        );
        assert_eq!(
            nft_table("ip6", "flannel-ipv6"),
            "table ip6 flannel-ipv6 {\n\tcomment \"rules for flannel-ipv6\"\n}\n"
        );
        assert!(!tm.ensure().expect("ensure"));
    });
}

fn nftables_ensure_repairs() {
    in_netns(|| {
        let mut tm = start(Mode::Nftables, &dual_stack(false));
        let handle_of = |family: &str, table: &str, needle: &str| -> String {
            let listing = sh("nft", &["-a", "list", "chain", family, table, "postrtg"]);
            let line = listing
                .lines()
                .find(|l| l.contains(needle))
                .unwrap_or_else(|| panic!("{needle} not in {listing}"))
                .to_string();
            line.rsplit_once("# handle ")
                .map(|(_, h)| h.trim().to_string())
                .expect("handle")
        };
        let cases: Vec<Case> = vec![
            (
                "delete a v4 rule",
                Box::new(move || {
                    let h = handle_of("ip", "flannel-ipv4", "meta mark");
                    nft_script(&format!("delete rule ip flannel-ipv4 postrtg handle {h}\n"));
                }),
            ),
            (
                "delete a v6 rule",
                Box::new(move || {
                    let h = handle_of("ip6", "flannel-ipv6", "masquerade");
                    nft_script(&format!(
                        "delete rule ip6 flannel-ipv6 postrtg handle {h}\n"
                    ));
                }),
            ),
            (
                "flush the forward chain",
                Box::new(|| nft_script("flush chain ip flannel-ipv4 forward\n")),
            ),
            (
                "delete the v4 table",
                Box::new(|| nft_script("delete table ip flannel-ipv4\n")),
            ),
            (
                "delete the v6 postrtg chain",
                Box::new(|| nft_script("delete chain ip6 flannel-ipv6 postrtg\n")),
            ),
            (
                "add a foreign rule",
                Box::new(|| {
                    nft_script("add rule ip flannel-ipv4 forward ip saddr 192.0.2.1 drop\n")
                }),
            ),
            (
                "add a foreign chain",
                Box::new(|| nft_script("add chain ip flannel-ipv4 extra\n")),
            ),
        ];
        for (what, break_it) in cases {
            break_it();
            assert!(tm.ensure().expect("ensure"), "{what}: nothing repaired");
            assert_nft_golden(true);
            assert!(!tm.ensure().expect("ensure"), "{what}: repaired twice");
        }
    });
}

fn nftables_network_change_replaces_rules() {
    in_netns(|| {
        let old = MasqConfig {
            v4: Some(v4("10.42.0.0/16", "10.42.7.0/24")),
            v6: Some(v6("fd00:42::/56", "fd00:42:0:7::/64")),
            ..MasqConfig::default()
        };
        let _ = start(Mode::Nftables, &old);
        let new = MasqConfig {
            prev_v4: old.v4,
            prev_v6: old.v6,
            ..dual_stack(false)
        };
        let mut tm = start(Mode::Nftables, &new);
        assert_nft_golden(true);
        let all = sh("nft", &["list", "ruleset"]);
        assert!(
            !all.contains("10.42.") && !all.contains("fd00:42:"),
            "{all}"
        );
        assert!(!tm.ensure().expect("ensure"));
    });
}

fn nftables_mode_removes_iptables_leftovers() {
    in_netns(|| {
        // Leftovers of iptables mode, with a foreign rule that must survive.
        restore(
            "iptables-restore",
            "*nat\n:KUBE-POSTROUTING - [0:0]\n\
             -A POSTROUTING -m comment --comment \"kubernetes postrouting rules\" -j KUBE-POSTROUTING\nCOMMIT\n",
        );
        let _ = start(Mode::Iptables, &dual_stack(false));
        let mut tm = start(Mode::Nftables, &dual_stack(false));
        assert_eq!(
            save("iptables-save", "nat"),
            EMPTY_NAT.replace(
                ":POSTROUTING ACCEPT [0:0]\n",
                ":POSTROUTING ACCEPT [0:0]\n:KUBE-POSTROUTING - [0:0]\n\
                 -A POSTROUTING -m comment --comment \"kubernetes postrouting rules\" -j KUBE-POSTROUTING\n"
            )
        );
        for (bin, table) in [
            ("iptables-save", "filter"),
            ("ip6tables-save", "nat"),
            ("ip6tables-save", "filter"),
        ] {
            assert!(!save(bin, table).contains("FLANNEL"), "{bin} {table}");
        }
        assert_nft_golden(true);
        // Cleanup of this mode deletes both tables.
        tm.cleanup().expect("cleanup");
        assert!(!sh("nft", &["list", "tables"]).contains("flannel"));
        assert!(!tm.ensure().expect("ensure"));
    });
}

fn cleanup_of_an_empty_namespace_is_a_no_op() {
    in_netns(|| {
        traffic::cleanup(Mode::Iptables).expect("iptables cleanup");
        traffic::cleanup(Mode::Nftables).expect("nftables cleanup");
        assert_eq!(sh("nft", &["list", "ruleset"]), "");
        let mut tm = TrafficManager::new(Mode::Iptables);
        assert!(!tm.ensure().expect("ensure with nothing set up"));
    });
}

// ---------------------------------------------------------------------------------------------------------------
// The periodic check: a no-op while the rules are in place, a repair when one is gone. (Its cost is not asserted
// here: a functional test on a shared machine measures the machine, not the code.)

fn periodic_check_is_a_no_op_in_place_and_repairs() {
    in_netns(|| {
        let mut ipt = start(Mode::Iptables, &dual_stack(false));
        for _ in 0..5 {
            assert!(
                !ipt.ensure().expect("ensure"),
                "iptables rules rewritten while in place"
            );
        }
        ipt.cleanup().expect("cleanup");
        let mut nft = start(Mode::Nftables, &dual_stack(false));
        for _ in 0..5 {
            assert!(
                !nft.ensure().expect("ensure"),
                "nftables rules rewritten while in place"
            );
        }
        // A repair: one chain flushed.
        nft_script("flush chain ip flannel-ipv4 forward\n");
        assert!(
            nft.ensure().expect("ensure"),
            "a flushed chain was not noticed"
        );
        assert!(!nft.ensure().expect("ensure"), "the repair did not hold");
    });
}

testkit::main!(
    iptables_dual_stack_golden_like_upstream_e2e,
    iptables_fully_random_disabled,
    iptables_v4_only_leaves_ip6tables_alone,
    iptables_setup_is_idempotent,
    iptables_ensure_repairs_deleted_and_reordered_rules,
    iptables_keeps_foreign_rules_and_their_order,
    iptables_network_change_removes_stale_rules,
    iptables_mode_removes_nftables_leftovers,
    nftables_dual_stack_golden_like_upstream_e2e,
    nftables_fully_random_disabled_and_idempotent,
    nftables_v4_only_leaves_an_empty_v6_table_like_upstream,
    nftables_ensure_repairs,
    nftables_network_change_replaces_rules,
    nftables_mode_removes_iptables_leftovers,
    cleanup_of_an_empty_namespace_is_a_no_op,
    periodic_check_is_a_no_op_in_place_and_repairs,
);
