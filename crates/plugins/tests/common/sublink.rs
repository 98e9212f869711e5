//! What the macvlan, ipvlan and vlan tests share: a node whose NIC is wired to a LAN namespace, views of a pod's
//! sub-interface, whether the kernel can make a kind of link, and iproute2's `RTM_NEWLINK` bytes (recorded by a preloaded `sendmsg`) to
//! compare the plugins' requests with.

use super::*;

/// A node with a NIC `nic0` on a LAN: 192.0.2.2/24 on the node (default route via 192.0.2.1), 192.0.2.1/24 and
/// the pods' gateway 10.244.20.1/24 on the LAN side.
pub struct World {
    pub sb: Sandbox,
    pub lan: Netns,
}

impl World {
    pub fn new() -> Self {
        let sb = Sandbox::new();
        let lan = Netns::new(&format!("{}l", sb.id));
        let w = Self { sb, lan };
        w.nic("nic0", "lan0");
        ip(&w.lan.name, &["addr", "add", "192.0.2.1/24", "dev", "lan0"]);
        ip(
            &w.lan.name,
            &["addr", "add", "10.244.20.1/24", "dev", "lan0"],
        );
        ip(
            &w.sb.node.name,
            &["addr", "add", "192.0.2.2/24", "dev", "nic0"],
        );
        ip(
            &w.sb.node.name,
            &["route", "add", "default", "via", "192.0.2.1"],
        );
        w
    }

    /// A NIC `name` of the node, up, whose wire ends as `peer` in the LAN namespace.
    pub fn nic(&self, name: &str, peer: &str) {
        let node = &self.sb.node.name;
        ip(
            node,
            &[
                "link",
                "add",
                name,
                "type",
                "veth",
                "peer",
                "name",
                peer,
                "netns",
                &self.lan.name,
            ],
        );
        ip(node, &["link", "set", name, "up"]);
        ip(&self.lan.name, &["link", "set", peer, "up"]);
    }

    pub fn node(&self) -> &str {
        &self.sb.node.name
    }
}

impl Default for World {
    fn default() -> Self {
        Self::new()
    }
}

/// host-local on the LAN's pod network 10.244.20.0/24 (gateway: the LAN namespace), default route through it.
pub fn lan_ipam(sb: &Sandbox) -> Value {
    json!({"type": "host-local", "dataDir": sb.path("ipam"),
           "ranges": [[{"subnet": "10.244.20.0/24", "rangeStart": "10.244.20.10", "gateway": "10.244.20.1"}]],
           "routes": [{"dst": "0.0.0.0/0"}]})
}

/// `base` with `extra`'s keys set (a `null` removes the key).
pub fn with(base: Value, extra: &Value) -> Value {
    let mut p = base;
    for (k, v) in extra.as_object().into_iter().flatten() {
        if v.is_null() {
            p.as_object_mut().map(|o| o.remove(k));
        } else {
            p[k] = v.clone();
        }
    }
    p
}

/// The result with the random MAC and the netns path blanked.
pub fn shape(r: &Value) -> Value {
    let mut r = r.clone();
    if let Some(a) = r["interfaces"].as_array_mut() {
        for i in a {
            i["mac"] = json!("-");
            if i.get("sandbox").is_some() {
                i["sandbox"] = json!("netns");
            }
        }
    }
    r
}

/// The pod link as the kernel shows it: kind, mode (macvlan, ipvlan), VLAN ID, MTU, the master's index (in the
/// node namespace), up.
pub fn pod_link(pod: &str, dev: &str) -> Value {
    let l = link(pod, dev).unwrap_or_else(|| panic!("{dev} missing in {pod}"));
    json!({
        "kind": l["linkinfo"]["info_kind"],
        "mode": l["linkinfo"]["info_data"]["mode"],
        "id": l["linkinfo"]["info_data"]["id"],
        "mtu": l["mtu"],
        "master": l["link_index"],
        "up": l["flags"].as_array().is_some_and(|f| f.iter().any(|x| x == "UP")),
    })
}

/// The index of `dev` in `ns`.
pub fn index_of(ns: &str, dev: &str) -> Value {
    link(ns, dev)
        .map(|l| l["ifindex"].clone())
        .unwrap_or(Value::Null)
}

/// The pod's IPv4 routes, sorted, as `dst via dev scope`.
pub fn pod_routes(pod: &str) -> Vec<String> {
    let mut v: Vec<String> = routes(pod)
        .iter()
        .map(|r| {
            format!(
                "{} via={} dev={} scope={}",
                r["dst"].as_str().unwrap_or(""),
                r["gateway"].as_str().unwrap_or("-"),
                r["dev"].as_str().unwrap_or(""),
                r["scope"].as_str().unwrap_or("global")
            )
        })
        .collect();
    v.sort();
    v
}

/// Waits (bounded) until the pod has only its loopback: our DEL leaves the kernel's teardown of the renamed link
/// to a detached process.
pub fn wait_only_lo(pod: &Netns) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while link_names(&pod.name) != vec!["lo"] {
        assert!(
            Instant::now() < deadline,
            "links left in {}: {:?}",
            pod.name,
            link_names(&pod.name)
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Whether this kernel makes a link of `kind` (`ip link add link <veth> name probe type <kind...>`), tried in a
/// throwaway namespace: a module that exists on disk may still be refused (blacklisted, no permission to load).
pub fn kernel_creates(kind: &[&str]) -> bool {
    let ns = Netns::new(&format!("{}k", unique_prefix()));
    ip(
        &ns.name,
        &["link", "add", "m0", "type", "veth", "peer", "name", "m1"],
    );
    let mut args = vec![
        "-n", &ns.name, "link", "add", "link", "m0", "name", "probe", "type",
    ];
    args.extend_from_slice(kind);
    Command::new("ip")
        .args(&args)
        .stderr(Stdio::null())
        .status()
        .map(|s| s.success())
        .unwrap_or(false)
}

/// `RTM_NEWLINK`.
const RTM_NEWLINK: u16 = 16;

/// `IFLA_NET_NS_FD`.
const IFLA_NET_NS_FD: u16 = 28;

/// The `RTM_NEWLINK` request iproute2 sends for `ip link add link m0 name <name> <args...>`, run in a throwaway
/// namespace where `m0` is a veth; `netns` (if some argument is `netns`) names a second throwaway namespace made
/// for it. The bytes are recorded by [`SENDMSG_SHIM`] preloaded into `ip`, whether or not the kernel then accepts
/// the request. Not strace: CI runs the whole suite under `strace -f` (scripts/deps-check.sh), and a traced
/// process cannot be traced a second time. Also the master's index there.
pub fn iproute2_newlink(name: &str, args: &[&str]) -> (Vec<u8>, u32) {
    let ns = Netns::new(&format!("{}s", unique_prefix()));
    let target = Netns::new(&format!("{}t", unique_prefix()));
    ip(
        &ns.name,
        &["link", "add", "m0", "type", "veth", "peer", "name", "m1"],
    );
    let master = index_of(&ns.name, "m0")
        .as_u64()
        .and_then(|i| u32::try_from(i).ok())
        .expect("index of m0");
    let args: Vec<&str> = args
        .iter()
        .map(|a| {
            if *a == "NETNS" {
                target.name.as_str()
            } else {
                a
            }
        })
        .collect();
    let dir = TempDir::new(&format!("{}shim", unique_prefix()));
    let (src, so, cap) = (
        dir.path.join("shim.c"),
        dir.path.join("shim.so"),
        dir.path.join("capture"),
    );
    std::fs::write(&src, SENDMSG_SHIM).expect("write the shim's source");
    let cc = Command::new("gcc")
        .args(["-shared", "-fPIC", "-O1", "-o"])
        .arg(&so)
        .arg(&src)
        .output()
        .expect("run gcc (scripts/packages lists it)");
    assert!(
        cc.status.success(),
        "gcc: {}",
        String::from_utf8_lossy(&cc.stderr)
    );
    let out = Command::new("ip")
        .args(["netns", "exec", &ns.name])
        .arg("env")
        .arg(format!("LD_PRELOAD={}", so.display()))
        .arg(format!("SENDMSG_CAPTURE={}", cap.display()))
        .args(["ip", "link", "add", "link", "m0", "name", name])
        .args(&args)
        .output()
        .expect("run ip");
    let bytes = std::fs::read(&cap).unwrap_or_default();
    // Records: a 4-byte native-endian length, then that many bytes (one sendmsg's iovecs, concatenated).
    let mut msgs: Vec<Vec<u8>> = Vec::new();
    let mut at = 0;
    while let Some(len) = bytes
        .get(at..at + 4)
        .and_then(|b| b.try_into().ok())
        .map(|b: [u8; 4]| u32::from_ne_bytes(b) as usize)
    {
        let Some(m) = bytes.get(at + 4..at + 4 + len) else {
            break;
        };
        msgs.push(m.to_vec());
        at += 4 + len;
    }
    let newlink = msgs
        .into_iter()
        .find(|m| m.get(4..6) == Some(&RTM_NEWLINK.to_ne_bytes()[..]))
        .unwrap_or_else(|| {
            panic!(
                "no RTM_NEWLINK among ip's sendmsg calls; ip said: {}",
                String::from_utf8_lossy(&out.stderr)
            )
        });
    (newlink, master)
}

/// A preloadable library recording every `sendmsg` of the process (iproute2's netlink requests) to the file
/// `$SENDMSG_CAPTURE` before passing it on.
pub const SENDMSG_SHIM: &str = r#"
#define _GNU_SOURCE
#include <dlfcn.h>
#include <fcntl.h>
#include <stdint.h>
#include <stdlib.h>
#include <sys/socket.h>
#include <unistd.h>

ssize_t sendmsg(int fd, const struct msghdr *msg, int flags) {
    static ssize_t (*real)(int, const struct msghdr *, int);
    if (!real)
        real = (ssize_t (*)(int, const struct msghdr *, int))dlsym(RTLD_NEXT, "sendmsg");
    const char *path = getenv("SENDMSG_CAPTURE");
    if (path && msg) {
        int out = open(path, O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0600);
        if (out >= 0) {
            uint32_t len = 0;
            for (size_t i = 0; i < msg->msg_iovlen; i++)
                len += (uint32_t)msg->msg_iov[i].iov_len;
            if (write(out, &len, sizeof len) == sizeof len)
                for (size_t i = 0; i < msg->msg_iovlen; i++)
                    if (write(out, msg->msg_iov[i].iov_base, msg->msg_iov[i].iov_len) < 0)
                        break;
            close(out);
        }
    }
    return real(fd, msg, flags);
}
"#;

/// A netlink request with what differs by nature between two senders blanked: the sequence number and port
/// (header bytes 8..16) and the value of `IFLA_NET_NS_FD` (a descriptor number).
pub fn normalise_request(b: &[u8]) -> Vec<u8> {
    let mut b = b.to_vec();
    for x in b.iter_mut().take(16).skip(8) {
        *x = 0;
    }
    // Attributes after the 16-byte nlmsghdr and the 16-byte ifinfomsg.
    let mut at = 32;
    while at + 4 <= b.len() {
        let len = usize::from(u16::from_ne_bytes([b[at], b[at + 1]]));
        let ty = u16::from_ne_bytes([b[at + 2], b[at + 3]]);
        if len < 4 {
            break;
        }
        if ty == IFLA_NET_NS_FD && at + 8 <= b.len() {
            for x in &mut b[at + 4..at + 8] {
                *x = 0;
            }
        }
        at += (len + 3) & !3;
    }
    b
}

/// Asserts that our request for `spec` (with `master` and the netns fd filled in) is iproute2's for `args`, byte for
/// byte after [`normalise_request`].
pub fn assert_request_is_iproute2s(
    what: &str,
    kind: kernel::sublink::SublinkKind,
    mtu: Option<u32>,
    mac: Option<kernel::Mac>,
    netns: bool,
    ip_args: &[&str],
) {
    let (theirs, master) = iproute2_newlink("tmpq", ip_args);
    let ours = kernel::sublink::newlink_request_bytes(
        &kernel::sublink::SublinkSpec {
            name: "tmpq",
            master,
            kind,
            mtu,
            mac,
            netns_fd: netns.then_some(7),
        },
        1,
    );
    assert_eq!(
        normalise_request(&ours),
        normalise_request(&theirs),
        "{what}: ours vs `ip link add link m0 name tmpq {}`",
        ip_args.join(" ")
    );
}

/// The network `name` with the one plugin `plugin` and host-local on the LAN's pod network.
pub fn lan_net(sb: &Sandbox, name: &str, plugin: &Value) -> Net {
    Net::new(
        name,
        "1.0.0",
        vec![with(plugin.clone(), &json!({"ipam": lan_ipam(sb)}))],
    )
}

/// What one implementation made for one pod.
#[derive(Debug, PartialEq)]
pub struct PodView {
    pub result: Value,
    pub link: Value,
    pub addrs: Vec<String>,
    pub routes: Vec<String>,
}

/// Two pods attached by `imp`'s `plugin` (on `nic0`, host-local added): what was made, after CHECK, DEL, DEL again
/// and DEL with the pod gone, each succeeding and leaving no link and no IP.
pub fn lifecycle(imp: &Impl, name: &str, plugin: &Value) -> Vec<PodView> {
    let w = World::new();
    let net = lan_net(&w.sb, name, plugin);
    let rt = w.sb.runtime(imp);
    let mut out = Vec::new();
    for i in 0..2 {
        let pod = w.sb.pod(i);
        let att = w.sb.att(i, &pod);
        let r = rt
            .add(&net, &att)
            .unwrap_or_else(|o| panic!("{} ADD {i}: {o:?}", imp.label));
        assert_eq!(
            link(&pod.name, "eth0").map(|l| l["address"].clone()),
            Some(r["interfaces"][0]["mac"].clone()),
            "{}: the result's MAC is the link's",
            imp.label
        );
        out.push(PodView {
            result: shape(&r),
            link: pod_link(&pod.name, "eth0"),
            addrs: addrs(&pod.name, "eth0"),
            routes: pod_routes(&pod.name),
        });
        assert_eq!(
            out[i].link["master"],
            index_of(w.node(), "nic0"),
            "{}",
            imp.label
        );
        rt.check(&net, &att, &r)
            .unwrap_or_else(|o| panic!("{} CHECK {i}: {o:?}", imp.label));
        rt.del(&net, &att, Some(&r))
            .unwrap_or_else(|o| panic!("{} DEL {i}: {o:?}", imp.label));
        // The runtime may ADD the same attachment again at once (a retried sandbox): DEL has freed the name
        // when it returns, whatever of the kernel's teardown it left to run after it.
        let again = rt
            .add(&net, &att)
            .unwrap_or_else(|o| panic!("{} ADD {i} right after its DEL: {o:?}", imp.label));
        rt.del(&net, &att, Some(&again))
            .unwrap_or_else(|o| panic!("{} DEL {i} of the re-ADD: {o:?}", imp.label));
        dels_after_del(&rt, &net, &att, &pod, &r, &format!("{} pod {i}", imp.label));
    }
    assert_node_clean(&w, name, imp.label);
    out
}

/// After an attachment's DEL: the pod is left with only `lo`, DEL again and DEL with the pod gone succeed.
pub fn dels_after_del(rt: &Runtime, net: &Net, att: &Att, pod: &Netns, r: &Value, label: &str) {
    wait_only_lo(pod);
    rt.del(net, att, Some(r))
        .unwrap_or_else(|o| panic!("{label}: DEL again: {o:?}"));
    pod.delete();
    rt.del(net, att, Some(r))
        .unwrap_or_else(|o| panic!("{label}: DEL with the pod gone: {o:?}"));
}

/// Once every attachment of network `name` is deleted: no IP left in the sandbox's host-local directory, and the
/// node has only `lo` and its NIC.
pub fn assert_node_clean(w: &World, name: &str, label: &str) {
    assert!(
        ip_files(&w.sb.path("ipam"), name).is_empty(),
        "{label}: IPs kept"
    );
    assert_eq!(
        link_names(w.node()),
        vec!["lo", "nic0"],
        "{label}: node links"
    );
}

/// SIGKILL at points spread over our `plugin`'s ADD: the next DEL leaves no link in the pod or the node, no IP.
pub fn killed_add_then_del(ty: &str, name: &str, plugin: &Value) {
    let w = World::new();
    let rt = w.sb.runtime(&Impl::ours());
    let conf = lan_net(&w.sb, name, plugin).plugin_conf(0, None);
    let bin = Impl::ours().bin(ty);
    let pod = w.sb.pod(99);
    let att = w.sb.att(99, &pod);
    let full = rt.exec(ty, "ADD", Some(&att), &conf);
    assert!(full.ok(), "{full:?}");
    let took = full.elapsed;
    assert!(rt.exec(ty, "DEL", Some(&att), &conf).ok());
    let mut jitter = Jitter::new();
    for i in 0..8u32 {
        let pod = w.sb.pod(i as usize);
        let att = w.sb.att(i as usize, &pod);
        let after = took * i / 8 + jitter.below(took / 8 + Duration::from_micros(1));
        exec_plugin_killed(
            &bin,
            Some(&w.sb.node.path()),
            &rt.env_for("ADD", Some(&att)),
            conf.to_string().as_bytes(),
            after,
        );
        let out = rt.exec(ty, "DEL", Some(&att), &conf);
        assert!(out.ok(), "DEL after a kill at {after:?}: {out:?}");
        wait_only_lo(&pod);
        assert!(
            ip_files_of(&w.sb.path("ipam"), name, &att.container_id).is_empty(),
            "IP left after a kill at {after:?}"
        );
        assert_eq!(link_names(w.node()), vec!["lo", "nic0"]);
    }
}

/// Bad configurations (`plugin` with each case's keys set): refused before anything is made, by ours with code 7
/// and, when `differential`, by the reference with the 999 it wraps configuration errors in. Nothing is left in
/// the pod or the node, no IP.
pub fn refused(ty: &str, name: &str, plugin: &Value, cases: &[(&str, Value)], differential: bool) {
    let imps = if differential {
        vec![Impl::ours(), Impl::reference()]
    } else {
        vec![Impl::ours()]
    };
    for imp in imps {
        let w = World::new();
        let rt = w.sb.runtime(&imp);
        let pod = w.sb.pod(0);
        let att = w.sb.att(0, &pod);
        for (what, extra) in cases {
            let conf = Net::new(
                name,
                "1.0.0",
                vec![with(
                    with(plugin.clone(), &json!({"ipam": lan_ipam(&w.sb)})),
                    extra,
                )],
            )
            .plugin_conf(0, None);
            let out = rt.exec(ty, "ADD", Some(&att), &conf);
            assert!(!out.stderr.contains("panicked"), "{what}: {out:?}");
            out.assert_err(imp.config_error_code());
            assert_eq!(link_names(&pod.name), vec!["lo"], "{} {what}", imp.label);
            assert_eq!(
                link_names(w.node()),
                vec!["lo", "nic0"],
                "{} {what}",
                imp.label
            );
            assert!(
                ip_files(&w.sb.path("ipam"), name).is_empty(),
                "{} {what}",
                imp.label
            );
            if !imp.reference && extra.get("master").and_then(Value::as_str) == Some("nope0") {
                assert!(
                    out.msg().contains("nope0"),
                    "the error names the master: {out:?}"
                );
            }
        }
    }
}
