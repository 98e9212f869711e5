//! The `dhcp` IPAM plugin and its daemon against a real DHCP server: dnsmasq (Debian's dnsmasq-base) serves
//! 10.244.50.10-100 on a bridge in the test's node namespace; `dhcp daemon` runs there with its socket in the
//! sandbox; pods are attached by a bridge plugin with `ipam.type = dhcp`. Leases are read back from dnsmasq's
//! lease file (what the server believes) and its log.
//!
//! dnsmasq runs with `--no-ping` (it otherwise probes each address for 3 s before offering it) except in the
//! SIGKILL test, which uses that delay to kill the plugin while the daemon waits for the server.

mod common;

use common::*;
use serde_json::{json, Value};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const NET: &str = "dhcptest";
const BRIDGE: &str = "dhbr0";
const SERVER: &str = "10.244.50.1";

/// A process started inside the node namespace, SIGTERMed then SIGKILLed on drop (also on test failure).
struct Proc {
    child: Child,
    name: &'static str,
}

impl Proc {
    fn spawn(name: &'static str, node: &str, bin: &Path, args: &[String], log: &Path) -> Self {
        let mut cmd = Command::new(bin);
        cmd.args(args).stdin(Stdio::null()).stdout(Stdio::null());
        cmd.stderr(std::fs::File::create(log).expect("log file"));
        let fd = std::fs::File::open(node).expect("open node netns");
        // SAFETY: setns is a plain syscall, async-signal-safe; nothing is allocated between fork and exec.
        unsafe {
            cmd.pre_exec(move || {
                nix::sched::setns(&fd, nix::sched::CloneFlags::CLONE_NEWNET)
                    .map_err(std::io::Error::from)
            });
        }
        let child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("start {name} ({}): {e}", bin.display()));
        Self { child, name }
    }

    fn running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let pid = nix::unistd::Pid::from_raw(self.child.id() as i32);
        let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
        for _ in 0..100 {
            if !matches!(self.child.try_wait(), Ok(None)) {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        eprintln!("{} did not stop on SIGTERM: killing it", self.name);
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Waits for `cond` up to `limit` (a bound against hanging, not a speed assertion).
fn wait_for(limit: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let start = Instant::now();
    while start.elapsed() < limit {
        if cond() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    cond()
}

/// The node with its bridge (holding the server's address), dnsmasq on it and our daemon.
struct Lan {
    sb: Sandbox,
    dnsmasq: Option<Proc>,
    daemon: Option<Proc>,
}

impl Lan {
    fn new() -> Self {
        let sb = Sandbox::new();
        let node = sb.node.name.clone();
        // A MAC of its own: a bridge without one takes its lowest port's, so the server's MAC would change
        // under the pods' ARP caches as pods come and go.
        ip(
            &node,
            &[
                "link",
                "add",
                BRIDGE,
                "address",
                "02:00:0a:f4:32:01",
                "type",
                "bridge",
            ],
        );
        ip(
            &node,
            &["addr", "add", &format!("{SERVER}/24"), "dev", BRIDGE],
        );
        ip(&node, &["link", "set", BRIDGE, "up"]);
        Self {
            sb,
            dnsmasq: None,
            daemon: None,
        }
    }

    /// Starts dnsmasq with 2-minute leases (its minimum); `ping`: probe addresses before offering (3 s).
    fn start_server(&mut self, ping: bool) {
        let sb = &self.sb;
        let mut args: Vec<String> = [
            "--no-daemon",
            "--conf-file=/dev/null",
            "--port=0",
            "--bind-interfaces",
            "--log-dhcp",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        if !ping {
            args.push("--no-ping".into());
        }
        args.push(format!("--interface={BRIDGE}"));
        args.push("--dhcp-range=10.244.50.10,10.244.50.100,2m".into());
        args.push(format!("--dhcp-leasefile={}", self.leases_path().display()));
        args.push(format!("--pid-file={}", sb.path("dnsmasq.pid").display()));
        args.push(format!(
            "--log-facility={}",
            sb.path("dnsmasq.log").display()
        ));
        let bin = Path::new("/usr/sbin/dnsmasq");
        testkit::require(
            bin.exists(),
            "dnsmasq is missing: install dnsmasq-base (scripts/deps.sh does)",
        );
        let mut p = Proc::spawn(
            "dnsmasq",
            &sb.node.path(),
            bin,
            &args,
            &sb.path("dnsmasq.stderr"),
        );
        let log = sb.path("dnsmasq.log");
        assert!(
            wait_for(Duration::from_secs(10), || std::fs::read_to_string(&log)
                .is_ok_and(|l| l.contains("DHCP, sockets bound"))),
            "dnsmasq did not start: {}",
            std::fs::read_to_string(sb.path("dnsmasq.stderr")).unwrap_or_default()
        );
        assert!(p.running(), "dnsmasq exited");
        self.dnsmasq = Some(p);
    }

    fn socket(&self) -> PathBuf {
        self.sb.path("dhcp.sock")
    }

    fn leases_path(&self) -> PathBuf {
        self.sb.path("dnsmasq.leases")
    }

    /// Starts `bin daemon` with its socket in the sandbox.
    fn start_daemon(&mut self, bin: &Path, extra: &[&str]) {
        let mut args = vec![
            "daemon".to_string(),
            "-socketpath".into(),
            self.socket().display().to_string(),
        ];
        args.extend(extra.iter().map(|s| s.to_string()));
        let mut p = Proc::spawn(
            "dhcp daemon",
            &self.sb.node.path(),
            bin,
            &args,
            &self.sb.path("daemon.log"),
        );
        let sock = self.socket();
        assert!(
            wait_for(Duration::from_secs(10), || sock.exists()),
            "daemon did not listen: {}",
            self.daemon_log()
        );
        assert!(p.running(), "daemon exited: {}", self.daemon_log());
        self.daemon = Some(p);
    }

    fn daemon_log(&self) -> String {
        std::fs::read_to_string(self.sb.path("daemon.log")).unwrap_or_default()
    }

    fn server_log(&self) -> String {
        std::fs::read_to_string(self.sb.path("dnsmasq.log")).unwrap_or_default()
    }

    /// dnsmasq's leases: address to (expiry, client id as hex).
    fn leases(&self) -> Vec<(String, u64, String)> {
        std::fs::read_to_string(self.leases_path())
            .unwrap_or_default()
            .lines()
            .filter_map(|l| {
                let f: Vec<&str> = l.split_whitespace().collect();
                Some((
                    f.get(2)?.to_string(),
                    f.first()?.parse().ok()?,
                    f.get(4)?.to_string(),
                ))
            })
            .collect()
    }

    /// Whether the server dropped the lease of `ip`, waiting a little: DHCPRELEASE has no answer, so DEL returns
    /// before the server has handled it.
    fn released(&self, ip: &str) -> bool {
        wait_for(Duration::from_secs(5), || self.lease_of(ip).is_none())
    }

    /// Whether no lease has client id `cid` (hex), waiting a little (see [`Lan::released`]).
    fn released_cid(&self, cid: &str) -> bool {
        wait_for(Duration::from_secs(5), || {
            self.leases().iter().all(|(_, _, c)| c != cid)
        })
    }

    /// The host name dnsmasq recorded for `ip` (`*` when none).
    fn hostname_of(&self, ip: &str) -> Option<String> {
        std::fs::read_to_string(self.leases_path())
            .unwrap_or_default()
            .lines()
            .map(|l| l.split_whitespace().collect::<Vec<_>>())
            .find(|f| f.get(2) == Some(&ip))
            .and_then(|f| f.get(3).map(|h| h.to_string()))
    }

    fn lease_of(&self, ip: &str) -> Option<(u64, String)> {
        self.leases()
            .into_iter()
            .find(|(a, _, _)| a == ip)
            .map(|(_, e, c)| (e, c))
    }

    /// A bridge conflist with dhcp IPAM on this LAN's daemon.
    fn net(&self, version: &str) -> Net {
        Net::new(
            NET,
            version,
            vec![json!({"type": "bridge", "bridge": BRIDGE,
                "ipam": {"type": "dhcp", "daemonSocketPath": self.socket()}})],
        )
    }
}

/// Our dhcp binary.
fn dhcp_bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_dhcp"))
}

/// dnsmasq's client id column for `<cid>/<net>/<ifname>` (type 0, then the bytes).
fn client_id_hex(cid: &str, ifname: &str) -> String {
    std::iter::once(0u8)
        .chain(format!("{cid}/{NET}/{ifname}").bytes())
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}

/// A CNI_PATH directory with the reference bridge (and loopback) and our dhcp.
fn mixed_path(sb: &Sandbox, reference_dhcp: bool) -> PathBuf {
    let dir = sb.path("mixed");
    std::fs::create_dir_all(&dir).expect("mkdir");
    std::os::unix::fs::symlink(Path::new(REFERENCE_DIR).join("bridge"), dir.join("bridge"))
        .expect("link bridge");
    let dhcp = if reference_dhcp {
        Path::new(REFERENCE_DIR).join("dhcp")
    } else {
        dhcp_bin()
    };
    std::os::unix::fs::symlink(dhcp, dir.join("dhcp")).expect("link dhcp");
    dir
}

fn ip_of(r: &Value) -> String {
    result_ip(r).split('/').next().unwrap_or("").to_string()
}

/// What the dhcp IPAM decides in a bridge result: the address's prefix and range, gateway, routes.
fn ipam_shape(r: &Value) -> Value {
    let ip = &r["ips"][0];
    let addr = ip["address"].as_str().unwrap_or("");
    let (a, p) = addr.split_once('/').unwrap_or(("", ""));
    let last: u32 = a
        .rsplit('.')
        .next()
        .and_then(|x| x.parse().ok())
        .unwrap_or(0);
    json!({
        "ips": r["ips"].as_array().map(|a| a.len()),
        "net": a.rsplit_once('.').map(|x| x.0),
        "in_range": (10..=100).contains(&last),
        "prefix": p,
        "gateway": ip["gateway"],
        "interface": ip["interface"],
        "routes": r["routes"],
        "dns": r["dns"],
    })
}

/// A lease per pod from dnsmasq, the client id as the reference derives it; the pods reach each other and the
/// server; a re-ADD keeps the address; CHECK passes; DEL sends DHCPRELEASE (the leases vanish from the
/// server), again is fine, and so is DEL with the pod gone.
fn lease_obtained_used_and_released() {
    require_root();
    let mut lan = Lan::new();
    lan.start_server(false);
    lan.start_daemon(&dhcp_bin(), &["-timeout", "20s"]);
    let net = lan.net("1.0.0");
    let rt = lan.sb.runtime(&Impl::ours());
    let pods = lan.sb.pods(2);
    let atts: Vec<Att> = pods
        .iter()
        .enumerate()
        .map(|(i, p)| lan.sb.att(i, p))
        .collect();
    let mut ips = Vec::new();
    for att in &atts {
        let r = rt
            .add(&net, att)
            .unwrap_or_else(|o| panic!("ADD: {o:?}\ndaemon: {}", lan.daemon_log()));
        let shape = ipam_shape(&r);
        assert_eq!(
            shape,
            json!({"ips": 1, "net": "10.244.50", "in_range": true, "prefix": "24",
                   "gateway": SERVER, "interface": 2,
                   "routes": [{"dst": "0.0.0.0/0", "gw": SERVER}], "dns": {}}),
            "{r}"
        );
        let ip = ip_of(&r);
        let (_, cid) = lan
            .lease_of(&ip)
            .unwrap_or_else(|| panic!("no lease for {ip}: {:?}", lan.leases()));
        assert_eq!(cid, client_id_hex(&att.container_id, "eth0"));
        ips.push(ip);
    }
    assert_ne!(ips[0], ips[1]);
    assert!(ping(&pods[0].name, &ips[1]), "pod 0 reaches pod 1");
    assert!(ping(&pods[1].name, SERVER), "pod 1 reaches the server");

    // A re-ADD of the same attachment (the daemon holds its lease) answers with the same address; CHECK passes.
    let conf = net.plugin_conf(0, None);
    let out = rt.exec("dhcp", "ADD", Some(&atts[0]), &conf);
    assert!(out.ok(), "{out:?}");
    assert_eq!(ip_of(&out.json()), ips[0]);
    let out = rt.exec("dhcp", "CHECK", Some(&atts[0]), &conf);
    assert!(out.ok(), "{out:?}");

    // DEL releases: the server forgets the lease.
    rt.del(&net, &atts[0], None).expect("DEL 0");
    assert!(
        lan.released(&ips[0]),
        "lease {} still held: {:?}",
        ips[0],
        lan.leases()
    );
    assert!(lan
        .server_log()
        .contains(&format!("DHCPRELEASE({BRIDGE}) {}", ips[0])));
    rt.del(&net, &atts[0], None).expect("DEL 0 again");
    assert!(link_names(&pods[0].name).iter().all(|l| l != "eth0"));

    // Pod 1: DEL with the pod's namespace gone already succeeds (its lease expires on the server).
    rt.del(&net, &atts[1], None).expect("DEL 1");
    assert!(
        lan.released(&ips[1]),
        "{:?}\nserver: {}\ndaemon: {}",
        lan.leases(),
        lan.server_log(),
        lan.daemon_log()
    );
    pods[1].delete();
    rt.del(&net, &atts[1], None)
        .expect("DEL 1 with the pod gone");
    let stray = Att::new(&lan.sb.cid(9), &pods[1].path(), "eth0");
    rt.del(&net, &stray, None)
        .expect("DEL of an attachment the daemon never had");
}

/// The renewal: with 2-minute leases the daemon renews at T1 (1 minute) by a unicast REQUEST, and the server
/// extends the lease (its expiry in the lease file moves on).
fn lease_renewed() {
    require_root();
    let mut lan = Lan::new();
    lan.start_server(false);
    lan.start_daemon(&dhcp_bin(), &[]);
    let mut net = lan.net("1.0.0");
    // The host name comes from CNI_ARGS (K8S_POD_NAME=frt) and is sent again with the renewal.
    net.plugins[0]["ipam"]["provide"] = json!([{"option": "host-name", "fromArg": "K8S_POD_NAME"}]);
    let rt = lan.sb.runtime(&Impl::ours());
    let pod = lan.sb.pod(0);
    let att = lan.sb.att(0, &pod);
    let r = rt.add(&net, &att).expect("ADD");
    let ip = ip_of(&r);
    let (first, _) = lan.lease_of(&ip).expect("lease");
    assert_eq!(
        lan.hostname_of(&ip).as_deref(),
        Some("frt"),
        "{:?}",
        lan.server_log()
    );
    // T1 is 60 s; the bound only keeps a broken renewal from hanging the suite.
    let renewed = wait_for(Duration::from_secs(100), || {
        lan.lease_of(&ip).is_some_and(|(e, _)| e > first)
            && lan.daemon_log().contains("lease renewed")
    });
    assert!(
        renewed,
        "no renewal seen: leases {:?}\ndaemon: {}",
        lan.leases(),
        lan.daemon_log()
    );
    assert!(
        lan.daemon_log().contains("lease renewed"),
        "{}",
        lan.daemon_log()
    );
    let requests = lan
        .server_log()
        .matches(&format!("DHCPREQUEST({BRIDGE}) {ip}"))
        .count();
    assert!(
        requests >= 2,
        "one REQUEST to bind, one to renew: {}",
        lan.server_log()
    );
    rt.del(&net, &att, None).expect("DEL");
    assert!(lan.released(&ip), "{:?}", lan.leases());
}

/// The reference bridge with our dhcp (its daemon setting the broadcast flag): same IPAM result as with ours. The reference bridge removes the pod
/// interface before IPAM DEL, so no DHCPRELEASE can leave: the daemon still forgets the lease.
fn reference_bridge_with_our_dhcp() {
    require_root();
    let mut lan = Lan::new();
    lan.start_server(false);
    // With the BOOTP broadcast flag set, the server broadcasts its replies (the log says so).
    lan.start_daemon(&dhcp_bin(), &["-broadcast"]);
    let net = lan.net("1.0.0");
    let rt = lan.sb.runtime_with_path(vec![mixed_path(&lan.sb, false)]);
    let ours = lan.sb.runtime(&Impl::ours());
    let pods = lan.sb.pods(2);
    let a0 = lan.sb.att(0, &pods[0]);
    let a1 = lan.sb.att(1, &pods[1]);
    let r_ref = rt
        .add(&net, &a0)
        .unwrap_or_else(|o| panic!("{o:?}\n{}", lan.daemon_log()));
    let r_ours = ours.add(&net, &a1).expect("ours ADD");
    assert_eq!(ipam_shape(&r_ref), ipam_shape(&r_ours), "{r_ref}\n{r_ours}");
    assert!(
        lan.server_log().contains("broadcast response"),
        "{}",
        lan.server_log()
    );
    assert!(ping(&pods[0].name, &ip_of(&r_ours)));
    rt.del(&net, &a0, None).expect("DEL");
    rt.del(&net, &a0, None).expect("DEL again");
    assert!(
        lan.daemon_log()
            .contains(&format!("{}/{NET}/eth0: releasing lease", a0.container_id)),
        "{}",
        lan.daemon_log()
    );
    ours.del(&net, &a1, None).expect("ours DEL");
}

/// The reference plugin and daemon against the same server: the result shapes match ours (the two daemons speak
/// different protocols on their sockets, so each plugin uses its own daemon).
fn result_shape_as_reference_daemon() {
    require_root();
    let reference = Path::new(REFERENCE_DIR).join("dhcp");
    testkit::require(reference.exists(), "the reference dhcp plugin is missing");
    let mut lan = Lan::new();
    lan.start_server(false);
    lan.start_daemon(&reference, &[]);
    let rt = lan.sb.runtime_with_path(vec![mixed_path(&lan.sb, true)]);
    let pod = lan.sb.pod(0);
    let att = lan.sb.att(0, &pod);
    let mut shapes = Vec::new();
    for version in ["0.3.1", "1.0.0"] {
        let net = lan.net(version);
        let r = rt
            .add(&net, &att)
            .unwrap_or_else(|o| panic!("reference ADD: {o:?}\n{}", lan.daemon_log()));
        shapes.push((version, ipam_shape(&r), r));
        rt.del(&net, &att, None).expect("reference DEL");
    }
    drop(lan.daemon.take());
    // Ours on a fresh LAN (its own socket path).
    let mut lan2 = Lan::new();
    lan2.start_server(false);
    lan2.start_daemon(&dhcp_bin(), &[]);
    let rt2 = lan2.sb.runtime(&Impl::ours());
    let pod2 = lan2.sb.pod(0);
    let att2 = lan2.sb.att(0, &pod2);
    for (version, want, r_ref) in shapes {
        let net = lan2.net(version);
        let r = rt2.add(&net, &att2).expect("ours ADD");
        assert_eq!(
            ipam_shape(&r),
            want,
            "{version}: ours {r}\nreference {r_ref}"
        );
        rt2.del(&net, &att2, None).expect("ours DEL");
    }
}

/// No server answers: ADD fails with code 11 once the daemon's timeout is over, and nothing stays (no veth on
/// the node, no interface in the pod, no lease in the daemon: a later ADD with a server works).
fn no_server_is_try_again_later() {
    require_root();
    let mut lan = Lan::new();
    lan.start_daemon(&dhcp_bin(), &["-timeout", "3s", "-resendmax", "2s"]);
    let net = lan.net("1.0.0");
    let rt = lan.sb.runtime(&Impl::ours());
    let pod = lan.sb.pod(0);
    let att = lan.sb.att(0, &pod);
    let out = rt.add(&net, &att).expect_err("no server: ADD fails");
    out.assert_err(11);
    assert!(out.msg().contains("no DHCP"), "{out:?}");
    assert!(veths(&lan.sb.node.name).is_empty(), "veth left on the node");
    assert!(link_names(&pod.name).iter().all(|l| l != "eth0"));
    rt.del(&net, &att, None).expect("DEL after the failed ADD");
    // The daemon is fine and holds nothing: with a server, the same attachment gets a lease.
    lan.start_server(false);
    let r = rt
        .add(&net, &att)
        .unwrap_or_else(|o| panic!("{o:?}\n{}", lan.daemon_log()));
    let ip = ip_of(&r);
    assert!(lan.lease_of(&ip).is_some());
    rt.del(&net, &att, None).expect("DEL");
    assert!(lan.released(&ip), "{:?}", lan.leases());
}

/// No daemon: ADD, DEL and CHECK fail naming the socket (code 11: the daemon may be starting), STATUS says not
/// available (50); through the bridge nothing is left behind.
fn daemon_not_running_names_the_socket() {
    require_root();
    let lan = Lan::new();
    let rt = lan.sb.runtime(&Impl::ours());
    let pod = lan.sb.pod(0);
    let att = lan.sb.att(0, &pod);
    let sock = lan.socket().display().to_string();
    let conf = json!({"cniVersion": "1.1.0", "name": NET, "type": "dhcp",
        "ipam": {"type": "dhcp", "daemonSocketPath": sock}});
    for cmd in ["ADD", "DEL"] {
        let out = rt.exec("dhcp", cmd, Some(&att), &conf);
        out.assert_err(11);
        assert!(out.msg().contains(&sock), "{cmd}: {out:?}");
    }
    let out = rt.exec("dhcp", "STATUS", None, &conf);
    out.assert_err(50);
    assert!(out.msg().contains(&sock), "{out:?}");
    let net = lan.net("1.1.0");
    let out = rt.add(&net, &att).expect_err("bridge ADD without a daemon");
    out.assert_err(11);
    assert!(out.msg().contains(&sock), "{out:?}");
    assert!(veths(&lan.sb.node.name).is_empty(), "veth left on the node");
    rt.status(&net)
        .expect_err("bridge STATUS reports its IPAM")
        .assert_err(50);
}

/// SIGKILL of the plugin while the daemon waits for the server (dnsmasq probes the address for 3 s before
/// offering it): the daemon still takes the lease, and the runtime's DEL releases it.
fn sigkill_during_add_then_del_releases() {
    require_root();
    let mut lan = Lan::new();
    lan.start_server(true);
    lan.start_daemon(&dhcp_bin(), &[]);
    let net = lan.net("1.0.0");
    let rt = lan.sb.runtime(&Impl::ours());
    let pod = lan.sb.pod(0);
    let att = lan.sb.att(0, &pod);
    let conf = net.plugin_conf(0, None);
    let env = rt.env_for("ADD", Some(&att));
    let killed = exec_plugin_killed(
        &rt.find("bridge"),
        rt.node.as_deref(),
        &env,
        conf.to_string().as_bytes(),
        Duration::from_millis(1000),
    );
    assert!(killed, "the ADD finished before the kill");
    let cid = client_id_hex(&att.container_id, "eth0");
    assert!(
        wait_for(Duration::from_secs(20), || lan
            .leases()
            .iter()
            .any(|(_, _, c)| *c == cid)),
        "the daemon got no lease: {}",
        lan.daemon_log()
    );
    rt.del(&net, &att, None).expect("DEL after the killed ADD");
    assert!(
        lan.released_cid(&cid),
        "lease not released: {:?}\n{}\n{}",
        lan.leases(),
        lan.daemon_log(),
        lan.server_log()
    );
    assert!(veths(&lan.sb.node.name).is_empty(), "veth left on the node");
}

/// No server after the lease was taken: the daemon tries to renew (unicast) from T1, to rebind (broadcast) from
/// T2, and at expiry brings the pod interface down, as the reference. The expired lease is no lease: the next
/// ADD acquires anew (the interface goes up again) once a server answers.
fn lease_expires_without_server() {
    require_root();
    let mut lan = Lan::new();
    lan.start_server(false);
    lan.start_daemon(&dhcp_bin(), &["-resendmax", "8s"]);
    let net = lan.net("1.0.0");
    let rt = lan.sb.runtime(&Impl::ours());
    let pod = lan.sb.pod(0);
    let att = lan.sb.att(0, &pod);
    let r = rt.add(&net, &att).expect("ADD");
    let ip = ip_of(&r);
    drop(lan.dnsmasq.take());
    let up = |ns: &str| {
        link(ns, "eth0").is_some_and(|l| {
            l["flags"]
                .as_array()
                .is_some_and(|f| f.iter().any(|x| x == "UP"))
        })
    };
    assert!(up(&pod.name));
    // Expiry is 120 s after the ACK; the bound only keeps a broken expiry from hanging the suite.
    assert!(
        wait_for(Duration::from_secs(160), || !up(&pod.name)),
        "eth0 still up: {}",
        lan.daemon_log()
    );
    let log = lan.daemon_log();
    for step in ["renewing lease", "lease expired"] {
        assert!(log.contains(step), "{step}: {log}");
    }
    lan.start_server(false);
    let conf = net.plugin_conf(0, None);
    let out = rt.exec("dhcp", "ADD", Some(&att), &conf);
    assert!(out.ok(), "{out:?}\n{}", lan.daemon_log());
    assert_eq!(
        ip_of(&out.json()),
        ip,
        "the server keeps the address of the client id"
    );
    assert!(up(&pod.name), "the daemon brought eth0 up again");
    rt.del(&net, &att, None).expect("DEL");
    assert!(lan.released(&ip), "{:?}", lan.leases());
}

/// The server unreachable by unicast (the node drops DHCP packets addressed to it; broadcasts pass): the
/// renewals from T1 go unanswered, the broadcast REQUEST from T2 (rebinding) gets the lease extended.
fn lease_rebound_by_broadcast() {
    require_root();
    let mut lan = Lan::new();
    lan.start_server(false);
    lan.start_daemon(&dhcp_bin(), &["-resendmax", "8s"]);
    let net = lan.net("1.0.0");
    let rt = lan.sb.runtime(&Impl::ours());
    let pod = lan.sb.pod(0);
    let att = lan.sb.att(0, &pod);
    let r = rt.add(&net, &att).expect("ADD");
    let ip = ip_of(&r);
    let (first, _) = lan.lease_of(&ip).expect("lease");
    let nft = |script: &str| {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", &lan.sb.node.name, "nft", "-f", "-"])
            .stdin(Stdio::piped());
        let mut child = c.spawn().expect("run nft");
        use std::io::Write;
        child
            .stdin
            .take()
            .expect("stdin")
            .write_all(script.as_bytes())
            .expect("write nft script");
        assert!(child.wait().expect("wait nft").success(), "nft: {script}");
    };
    nft(&format!(
        "table ip dhcptest {{\n chain filter_in {{\n  type filter hook input priority 0;\n  \
         ip daddr {SERVER} udp dport 67 drop\n }}\n}}\n"
    ));
    // T2 is 105 s after the ACK; the bound only keeps a broken rebinding from hanging the suite.
    // The server writes its lease file before its ACK reaches the daemon: both are waited for.
    let extended = wait_for(Duration::from_secs(150), || {
        lan.lease_of(&ip).is_some_and(|(e, _)| e > first)
            && lan.daemon_log().contains("lease rebound")
    });
    let log = lan.daemon_log();
    assert!(extended, "lease not rebound: {:?}\n{log}", lan.leases());
    assert!(
        !log.contains("lease renewed"),
        "unicast renewals were dropped: {log}"
    );
    // DHCPRELEASE is unicast: let it through again.
    nft("delete table ip dhcptest");
    rt.del(&net, &att, None).expect("DEL");
    assert!(lan.released(&ip), "{:?}", lan.leases());
}

testkit::main!(
    lease_obtained_used_and_released,
    lease_renewed,
    lease_expires_without_server,
    lease_rebound_by_broadcast,
    reference_bridge_with_our_dhcp,
    result_shape_as_reference_daemon,
    no_server_is_try_again_later,
    daemon_not_running_names_the_socket,
    sigkill_during_add_then_del_releases,
);
