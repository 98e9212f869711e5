//! Bad input and faults: each case must give the right CNI error code in the stdout JSON with a non-zero exit, a
//! message naming the problem, no panic, and nothing left behind (no veth in the node namespace, no IP file).
//!
//! Every scenario runs against our plugins; the reference plugins run through the same scenarios as a baseline
//! (with their known differences: code 999 for configuration errors, and a half-made veth left in the pod when
//! IPAM fails, which the runtime's DEL then cleans).

mod common;

use common::*;
use serde_json::{json, Value};

const NET: &str = "frtnet";
const BR: &str = "frtbr0";

/// No panic message, whatever happened.
fn no_panic(out: &Out) {
    assert!(
        !out.stderr.contains("panicked"),
        "the plugin panicked: {out:?}"
    );
}

/// Nothing of an attachment is left: no veth in the node namespace, no eth0 in the pod, no IP file.
fn nothing_left(sb: &Sandbox, pod: Option<&Netns>, data: &std::path::Path) {
    assert!(
        veths(&sb.node.name).is_empty(),
        "veth left in the node: {:?}",
        veths(&sb.node.name)
    );
    if let Some(p) = pod {
        if p.exists() {
            assert!(link(&p.name, "eth0").is_none(), "eth0 left in the pod");
        }
    }
    assert!(
        ip_files(data, NET).is_empty(),
        "IP left: {:?}",
        ip_files(data, NET)
    );
}

fn plugin_types(imp: &Impl) -> Vec<&'static str> {
    if imp.reference {
        vec!["bridge", "host-local", "loopback"]
    } else {
        vec!["bridge", "host-local", "loopback", "flannel"]
    }
}

fn malformed_json(imp: &Impl) {
    let sb = Sandbox::new();
    let pod = sb.pod(0);
    let rt = sb.runtime(imp);
    let att = sb.att(0, &pod);
    for ty in plugin_types(imp) {
        for (cmd, body) in [
            ("ADD", &b"{\"cniVersion\": \"1.0.0\", \"name\": "[..]),
            ("ADD", &b"not json at all"[..]),
            (
                "DEL",
                &b"{\"cniVersion\": \"1.0.0\", \"name\": \"x\", \"type\": [}"[..],
            ),
        ] {
            let env = Env::for_cmd(cmd, Some(&att), &rt.cni_path_str());
            let out = rt.exec_env(ty, &env, body);
            no_panic(&out);
            out.assert_err(6);
        }
    }
    nothing_left(&sb, Some(&pod), &sb.path("ipam"));
}

fn missing_env(imp: &Impl) {
    let sb = Sandbox::new();
    let pod = sb.pod(0);
    let rt = sb.runtime(imp);
    let data = sb.path("ipam");
    let conf =
        Net::new(NET, "1.0.0", vec![bridge_conf(BR, "10.244.6.0/24", &data)]).plugin_conf(0, None);
    let att = sb.att(0, &pod);
    let full = Env::for_cmd("ADD", Some(&att), &rt.cni_path_str());
    for ty in ["bridge", "host-local"] {
        let out = rt.exec_env(
            ty,
            &full.clone().unset("CNI_CONTAINERID").unset("CNI_NETNS"),
            conf.to_string().as_bytes(),
        );
        no_panic(&out);
        out.assert_err(4);
        let msg = out.msg();
        assert!(
            msg.contains("CNI_CONTAINERID") && msg.contains("CNI_NETNS"),
            "message must name them: {msg}"
        );

        let del = Env::for_cmd("DEL", Some(&att), &rt.cni_path_str()).unset("CNI_IFNAME");
        let out = rt.exec_env(ty, &del, conf.to_string().as_bytes());
        no_panic(&out);
        out.assert_err(4);
        assert!(out.msg().contains("CNI_IFNAME"), "{}", out.msg());

        let out = rt.exec_env(
            ty,
            &full.clone().set("CNI_COMMAND", "FROB"),
            conf.to_string().as_bytes(),
        );
        no_panic(&out);
        out.assert_err(4);
    }
    nothing_left(&sb, Some(&pod), &data);
}

fn unknown_version(imp: &Impl) {
    let sb = Sandbox::new();
    let pod = sb.pod(0);
    let rt = sb.runtime(imp);
    let data = sb.path("ipam");
    let att = sb.att(0, &pod);
    let mut confs = vec![
        ("bridge", bridge_conf(BR, "10.244.6.0/24", &data)),
        ("host-local", bridge_conf(BR, "10.244.6.0/24", &data)),
        ("loopback", json!({"type": "loopback"})),
    ];
    if !imp.reference {
        confs.push(("flannel", flannel_conf(&sb)));
        write_default_subnet_env(&sb);
    }
    for (ty, plugin) in confs {
        let conf = Net::new(NET, "9.9.9", vec![plugin]).plugin_conf(0, None);
        for cmd in ["ADD", "DEL"] {
            let out = rt.exec(ty, cmd, Some(&att), &conf);
            no_panic(&out);
            out.assert_err(1);
        }
    }
    nothing_left(&sb, Some(&pod), &data);
    assert!(!flannel_cache(&sb, &att).exists(), "flannel cache written");
}

fn subnet_31(imp: &Impl) {
    let sb = Sandbox::new();
    let pod = sb.pod(0);
    let rt = sb.runtime(imp);
    let data = sb.path("ipam");
    let net = Net::new(NET, "1.0.0", vec![bridge_conf(BR, "10.244.9.0/31", &data)]);
    let att = sb.att(0, &pod);
    let out = rt.add(&net, &att).expect_err("a /31 must be refused");
    no_panic(&out);
    out.assert_err(imp.config_error_code());
    assert!(
        out.msg().contains("10.244.9.0/31"),
        "message must name the subnet: {}",
        out.msg()
    );
    if imp.reference {
        // v1.1.1 leaves the container veth when IPAM fails, and its DEL fails on the same config too: the veth
        // goes away with the pod namespace only. Ours must not leave anything.
        eprintln!(
            "note: reference leaves veths {:?} after a refused /31",
            veths(&sb.node.name)
        );
        assert!(ip_files(&data, NET).is_empty());
        return;
    }
    nothing_left(&sb, Some(&pod), &data);
    // The runtime's DEL after the failed ADD (same config): whatever it returns, it must not panic or leave state.
    let out = rt.exec("bridge", "DEL", Some(&att), &net.plugin_conf(0, None));
    no_panic(&out);
    nothing_left(&sb, Some(&pod), &data);
}

fn exhausted_range(imp: &Impl) {
    let sb = Sandbox::new();
    let pods = sb.pods(2);
    let rt = sb.runtime(imp);
    let data = sb.path("ipam");
    // A /30: .1 is the gateway, .3 the broadcast address: .2 is the only address to hand out.
    let net = Net::new(NET, "1.0.0", vec![bridge_conf(BR, "10.244.9.0/30", &data)]);
    let a0 = sb.att(0, &pods[0]);
    let a1 = sb.att(1, &pods[1]);
    let r0 = rt
        .add(&net, &a0)
        .unwrap_or_else(|o| panic!("first ADD: {o:?}"));
    assert_eq!(result_ip(&r0), "10.244.9.2");
    let out = rt.add(&net, &a1).expect_err("the range is exhausted");
    no_panic(&out);
    let code = out.assert_some_err();
    assert!(code >= 100 || code == 11, "code {code}: {out:?}");
    if imp.reference {
        // v1.1.1 leaves the half-made container veth when IPAM fails; the runtime's DEL removes it.
        rt.del(&net, &a1, None)
            .unwrap_or_else(|o| panic!("DEL: {o:?}"));
    }
    // Only the first attachment exists.
    assert_eq!(veths(&sb.node.name).len(), 1, "{:?}", veths(&sb.node.name));
    assert!(
        link(&pods[1].name, "eth0").is_none(),
        "half-made eth0 in the second pod"
    );
    assert_eq!(
        ip_files(&data, NET).keys().cloned().collect::<Vec<_>>(),
        vec!["10.244.9.2"]
    );
    // The runtime DELs after a failed ADD; that must succeed too.
    rt.del(&net, &a1, None)
        .unwrap_or_else(|o| panic!("DEL of the failed ADD: {o:?}"));
    assert_eq!(
        ip_files(&data, NET).len(),
        1,
        "DEL of the failed one released the other's IP"
    );
    rt.del(&net, &a0, Some(&r0))
        .unwrap_or_else(|o| panic!("DEL: {o:?}"));
    nothing_left(&sb, Some(&pods[1]), &data);
}

fn netns_missing(imp: &Impl) {
    let sb = Sandbox::new();
    let rt = sb.runtime(imp);
    let data = sb.path("ipam");
    let net = Net::new(NET, "1.0.0", vec![bridge_conf(BR, "10.244.6.0/24", &data)]);
    let att = Att::new(
        &sb.cid(0),
        &format!("/run/netns/{}-nonexistent", sb.id),
        "eth0",
    );
    let out = rt.add(&net, &att).expect_err("ADD into a missing netns");
    no_panic(&out);
    out.assert_some_err();
    assert!(
        out.msg().contains("nonexistent"),
        "message must name the netns: {}",
        out.msg()
    );
    nothing_left(&sb, None, &data);
    rt.del(&net, &att, None)
        .unwrap_or_else(|o| panic!("DEL with a missing netns: {o:?}"));
    nothing_left(&sb, None, &data);

    // A path that exists but is not a network namespace.
    let not_ns = sb.path("not-a-netns");
    std::fs::write(&not_ns, b"").unwrap();
    let att = Att::new(&sb.cid(1), not_ns.to_str().unwrap(), "eth0");
    let out = rt.add(&net, &att).expect_err("ADD into a regular file");
    no_panic(&out);
    out.assert_some_err();
    nothing_left(&sb, None, &data);
}

fn ifname_in_use(imp: &Impl) {
    let sb = Sandbox::new();
    let pod = sb.pod(0);
    let rt = sb.runtime(imp);
    let data = sb.path("ipam");
    let net = Net::new(NET, "1.0.0", vec![bridge_conf(BR, "10.244.6.0/24", &data)]);
    let att = sb.att(0, &pod);
    let r = rt.add(&net, &att).unwrap_or_else(|o| panic!("ADD: {o:?}"));

    // Same container and ifname again.
    let out = rt
        .add(&net, &att)
        .expect_err("second ADD with the same (container, ifname)");
    no_panic(&out);
    out.assert_some_err();
    // Another container asking for the same name in the same namespace.
    let other = Att::new(&sb.cid(1), &pod.path(), "eth0");
    let out = rt.add(&net, &other).expect_err("eth0 is taken");
    no_panic(&out);
    out.assert_some_err();
    assert!(
        out.msg().contains("eth0"),
        "message must name the interface: {}",
        out.msg()
    );

    // The first attachment is intact, and nothing extra was made.
    assert_eq!(veths(&sb.node.name), vec![result_host_veth(&r)]);
    assert_eq!(
        addrs(&pod.name, "eth0"),
        vec![format!("{}/24", result_ip(&r))]
    );
    assert_eq!(ip_files(&data, NET).len(), 1, "{:?}", ip_files(&data, NET));
    assert!(ip_files_of(&data, NET, &other.container_id).is_empty());

    rt.del(&net, &att, Some(&r))
        .unwrap_or_else(|o| panic!("DEL: {o:?}"));
    rt.del(&net, &other, None)
        .unwrap_or_else(|o| panic!("DEL: {o:?}"));
    nothing_left(&sb, Some(&pod), &data);
}

/// Each check against ours and against the reference plugins, as `ours::<check>` and `reference::<check>`.
macro_rules! both {
    ($($name:ident,)*) => {
        mod ours {
            use super::*;
            $(fn $name() { require_root(); super::$name(&Impl::ours()); })*
            pub fn tests() -> Vec<testkit::Test> {
                vec![$(testkit::Test { name: concat!("ours::", stringify!($name)), run: $name }),*]
            }
        }
        mod reference {
            use super::*;
            $(fn $name() {
                require_root();
                super::$name(&Impl::reference());
            })*
            pub fn tests() -> Vec<testkit::Test> {
                vec![$(testkit::Test { name: concat!("reference::", stringify!($name)), run: $name }),*]
            }
        }
    };
}

both! {
    malformed_json,
    missing_env,
    unknown_version,
    subnet_31,
    exhausted_range,
    netns_missing,
    ifname_in_use,
}

/// flannel without subnet.env: code 11 (try again later) naming the file and flanneld; nothing cached or made.
fn flannel_without_subnet_env() {
    require_root();
    let sb = Sandbox::new();
    let pod = sb.pod(0);
    let rt = sb.runtime(&Impl::ours());
    let net = Net::new("cbr0", "1.0.0", vec![flannel_conf(&sb)]);
    let att = sb.att(0, &pod);
    let out = rt.add(&net, &att).expect_err("no subnet.env");
    no_panic(&out);
    out.assert_err(11);
    let msg = out.msg();
    assert!(
        msg.contains("subnet.env") && msg.contains("flannel"),
        "{msg}"
    );
    assert!(
        !flannel_cache(&sb, &att).exists(),
        "cache written without a delegate"
    );
    nothing_left(&sb, Some(&pod), &sb.path("ipam"));
    // DEL without a cache file is a success.
    rt.del(&net, &att, None)
        .unwrap_or_else(|o| panic!("DEL: {o:?}"));
}

/// flannel with a broken subnet.env (missing keys, bad values): an error naming the problem, never a panic.
fn flannel_bad_subnet_env() {
    require_root();
    let sb = Sandbox::new();
    let pod = sb.pod(0);
    let rt = sb.runtime(&Impl::ours());
    let net = Net::new("cbr0", "1.0.0", vec![flannel_conf(&sb)]);
    let att = sb.att(0, &pod);
    for body in [
        "FLANNEL_NETWORK=10.244.0.0/16\nFLANNEL_MTU=1450\nFLANNEL_IPMASQ=true\n",
        "FLANNEL_NETWORK=10.244.0.0/16\nFLANNEL_SUBNET=10.244.1.1/24\nFLANNEL_IPMASQ=true\n",
        "FLANNEL_NETWORK=10.244.0.0/16\nFLANNEL_SUBNET=banana\nFLANNEL_MTU=1450\nFLANNEL_IPMASQ=true\n",
        "FLANNEL_NETWORK=10.244.0.0/16\nFLANNEL_SUBNET=10.244.1.1/24\nFLANNEL_MTU=-3\nFLANNEL_IPMASQ=true\n",
        "\u{0}\u{1}garbage",
    ] {
        std::fs::write(sb.path("subnet.env"), body).unwrap();
        let out = rt.add(&net, &att).expect_err(body);
        no_panic(&out);
        out.assert_some_err();
        nothing_left(&sb, Some(&pod), &sb.path("ipam"));
    }
    rt.del(&net, &att, None)
        .unwrap_or_else(|o| panic!("DEL: {o:?}"));
    assert!(!flannel_cache(&sb, &att).exists());
}

/// A delegate block that upstream refuses (`name` or `ipam` inside `delegate`) is a configuration error.
fn flannel_bad_delegate() {
    require_root();
    let sb = Sandbox::new();
    let pod = sb.pod(0);
    let rt = sb.runtime(&Impl::ours());
    write_default_subnet_env(&sb);
    let att = sb.att(0, &pod);
    for delegate in [
        json!({"name": "x"}),
        json!({"ipam": {}}),
        json!({"type": 5}),
    ] {
        let mut plugin = flannel_conf(&sb);
        plugin["delegate"] = delegate;
        let net = Net::new("cbr0", "1.0.0", vec![plugin]);
        let out = rt.add(&net, &att).expect_err("bad delegate");
        no_panic(&out);
        out.assert_some_err();
        nothing_left(&sb, Some(&pod), &sb.path("ipam"));
    }
}

/// Our skel refuses an invalid container ID or interface name with code 4, like the Go skel.
fn ours_invalid_ids() {
    require_root();
    let sb = Sandbox::new();
    let pod = sb.pod(0);
    let rt = sb.runtime(&Impl::ours());
    let data = sb.path("ipam");
    let conf: Value =
        Net::new(NET, "1.0.0", vec![bridge_conf(BR, "10.244.6.0/24", &data)]).plugin_conf(0, None);
    for (cid, ifname) in [
        ("-bad", "eth0"),
        ("ok", "eth0:1"),
        ("ok", "0123456789abcdef"),
        ("a b", "eth0"),
    ] {
        let att = Att::new(cid, &pod.path(), ifname);
        let out = rt.exec("bridge", "ADD", Some(&att), &conf);
        no_panic(&out);
        out.assert_err(4);
    }
    nothing_left(&sb, Some(&pod), &data);
}

/// Interface names the kernel would rewrite or refuse: `%d` is a template the kernel expands to the first free
/// number (the pod interface would not be called what the runtime asked for, and its DEL would not find it), and
/// `all`/`default` collide with the sysctl directories. Code 4 before anything is made, for ADD and DEL, in bridge
/// and in flannel (whose delegate would otherwise make the veth).
fn ours_ifname_the_kernel_would_rewrite() {
    require_root();
    let sb = Sandbox::new();
    let pod = sb.pod(0);
    let rt = sb.runtime(&Impl::ours());
    let data = sb.path("ipam");
    let bridge = Net::new(NET, "1.0.0", vec![bridge_conf(BR, "10.244.6.0/24", &data)]);
    let flannel = Net::new("cbr0", "1.0.0", vec![flannel_conf(&sb)]);
    write_default_subnet_env(&sb);
    for ifname in ["eth%d", "%d", "net%dx", "all", "default", "a\u{a0}b"] {
        let att = Att::new(&sb.cid(0), &pod.path(), ifname);
        for (ty, net) in [("bridge", &bridge), ("flannel", &flannel)] {
            for cmd in ["ADD", "DEL"] {
                let out = rt.exec(ty, cmd, Some(&att), &net.plugin_conf(0, None));
                no_panic(&out);
                out.assert_err(4);
                assert!(out.msg().contains("interface name"), "{ifname}: {out:?}");
            }
            assert_eq!(link_names(&pod.name), vec!["lo"], "{ty} {ifname}");
            nothing_left(&sb, Some(&pod), &data);
            assert!(
                ip_files(&sb.path("ipam"), "cbr0").is_empty(),
                "{ty} {ifname}"
            );
        }
    }
}

/// `CNI_NETNS` naming something that is not a network namespace: a FIFO (opening it for reading would block until
/// a writer comes), a regular file, a directory, a device, another kind of namespace. Every plugin that opens the
/// namespace answers with an error naming the path, at once, for ADD, CHECK and DEL; nothing is made or released.
fn ours_netns_not_a_namespace() {
    require_root();
    let sb = Sandbox::new();
    let pod = sb.pod(0);
    let rt = sb.runtime(&Impl::ours());
    let data = sb.path("ipam");
    let bridge = Net::new(NET, "1.0.0", vec![bridge_conf(BR, "10.244.6.0/24", &data)]);
    let lo = Net::new(NET, "1.0.0", vec![json!({"type": "loopback"})]);
    let flannel = Net::new("cbr0", "1.0.0", vec![flannel_conf(&sb)]);
    write_default_subnet_env(&sb);
    // A real attachment, so that CHECK gets past its IPAM and bridge checks to the namespace.
    let att = sb.att(0, &pod);
    let r = rt
        .add(&bridge, &att)
        .unwrap_or_else(|o| panic!("ADD: {o:?}"));
    let host_veths = veths(&sb.node.name);

    let fifo = sb.path("fifo");
    nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::from_bits_truncate(0o600)).expect("mkfifo");
    let file = sb.path("file");
    std::fs::write(&file, b"").unwrap();
    let dir = sb.path("dir");
    std::fs::create_dir(&dir).unwrap();
    let limit = std::time::Duration::from_secs(20);
    for path in [
        fifo.to_str().unwrap(),
        file.to_str().unwrap(),
        dir.to_str().unwrap(),
        "/dev/null",
        "/proc/self/ns/mnt",
    ] {
        let mut bad = att.clone();
        bad.netns = path.to_string();
        let mut other = sb.att(1, &pod);
        other.netns = path.to_string();
        let cases = [
            ("bridge", "ADD", &other, bridge.plugin_conf(0, None)),
            ("bridge", "CHECK", &bad, bridge.plugin_conf(0, Some(&r))),
            ("bridge", "DEL", &bad, bridge.plugin_conf(0, Some(&r))),
            ("loopback", "ADD", &other, lo.plugin_conf(0, None)),
            ("loopback", "CHECK", &other, lo.plugin_conf(0, None)),
            ("loopback", "DEL", &other, lo.plugin_conf(0, None)),
            ("flannel", "ADD", &other, flannel.plugin_conf(0, None)),
        ];
        for (ty, cmd, a, conf) in cases {
            let out = rt
                .exec_bounded(ty, cmd, Some(a), &conf, limit)
                .unwrap_or_else(|| {
                    panic!("{ty} {cmd} with CNI_NETNS={path} did not answer (hangs)")
                });
            no_panic(&out);
            let code = out.assert_some_err();
            assert!(
                code == 4 || (cmd == "CHECK" && code == 3),
                "{ty} {cmd} {path}: code {code}: {out:?}"
            );
            let msg = out.msg();
            assert!(
                msg.contains(path) && msg.contains("not a network namespace"),
                "{ty} {cmd} {path}: {msg}"
            );
        }
        // The real attachment is untouched: its interface and its address.
        assert_eq!(veths(&sb.node.name), host_veths, "{path}");
        assert_eq!(
            addrs(&pod.name, "eth0"),
            vec![format!("{}/24", result_ip(&r))]
        );
        assert_eq!(ip_files(&data, NET).len(), 1, "{path}");
    }
    rt.del(&bridge, &att, Some(&r))
        .unwrap_or_else(|o| panic!("DEL: {o:?}"));
    wait_no_veths(&sb.node.name);
    nothing_left(&sb, Some(&pod), &data);
}

/// `CNI_ARGS` with a key bridge does not know and no `IgnoreUnknown`: the reference refuses the ADD before making
/// anything, so a `MAC` given alongside is never silently dropped. Ours refuses it the same way (code 2, as
/// host-local's CNI_ARGS errors); with `IgnoreUnknown=1` the MAC is used. A layer-2 bridge (no IPAM), so that no
/// IPAM plugin's own CNI_ARGS check gets there first.
fn bridge_cni_args_unknown_key() {
    require_root();
    let mac = "0a:58:0a:f4:06:42";
    let l2 = json!({"type": "bridge", "bridge": BR});
    let mut imps = vec![Impl::ours()];
    imps.push(Impl::reference());
    for imp in imps {
        let sb = Sandbox::new();
        let pod = sb.pod(0);
        let rt = sb.runtime(&imp);
        let net = Net::new(NET, "1.0.0", vec![l2.clone()]);
        let mut att = sb.att(0, &pod);
        att.args = format!("MAC={mac};FOO=bar");
        let out = rt.exec("bridge", "ADD", Some(&att), &net.plugin_conf(0, None));
        no_panic(&out);
        let code = out.assert_some_err();
        assert!(out.msg().contains("FOO"), "{}: {out:?}", imp.label);
        if !imp.reference {
            assert_eq!(code, 2, "{out:?}");
            // DEL needs nothing from CNI_ARGS and must not be stuck on it (the reference's DEL fails too).
            let out = rt.exec("bridge", "DEL", Some(&att), &net.plugin_conf(0, None));
            assert!(out.ok(), "DEL: {out:?}");
        }
        assert!(
            link(&pod.name, "eth0").is_none(),
            "{}: eth0 made",
            imp.label
        );
        assert!(veths(&sb.node.name).is_empty(), "{}: veth made", imp.label);

        att.args = format!("IgnoreUnknown=1;MAC={mac};FOO=bar");
        let r = rt
            .add(&net, &att)
            .unwrap_or_else(|o| panic!("{}: ADD: {o:?}", imp.label));
        assert_eq!(r["interfaces"][2]["mac"], mac, "{}: {r}", imp.label);
        assert_eq!(
            link(&pod.name, "eth0").expect("eth0")["address"],
            mac,
            "{}",
            imp.label
        );
        rt.del(&net, &att, Some(&r))
            .unwrap_or_else(|o| panic!("{}: DEL: {o:?}", imp.label));
        wait_no_veths(&sb.node.name);
    }
}

/// bridge's `ipam` must be an object with a string `type`: anything else is refused before anything is made (the
/// reference fails to decode it); absent, `null`, `{}` and an empty type mean a layer-2 attachment without
/// addresses, as in the reference.
fn bridge_ipam_shape() {
    require_root();
    let mut imps = vec![Impl::ours()];
    imps.push(Impl::reference());
    for imp in imps {
        let sb = Sandbox::new();
        let pod = sb.pod(0);
        let rt = sb.runtime(&imp);
        let att = sb.att(0, &pod);
        for ipam in [
            json!(1),
            json!("x"),
            json!([]),
            json!(true),
            json!({"type": 1}),
        ] {
            let net = Net::new(
                NET,
                "1.0.0",
                vec![json!({"type": "bridge", "bridge": BR, "ipam": ipam})],
            );
            let out = rt.exec("bridge", "ADD", Some(&att), &net.plugin_conf(0, None));
            no_panic(&out);
            let code = out.assert_some_err();
            if !imp.reference {
                assert_eq!(code, 7, "ipam {ipam}: {out:?}");
                assert!(out.msg().contains("ipam"), "ipam {ipam}: {out:?}");
            }
            assert!(
                link(&pod.name, "eth0").is_none(),
                "{} ipam {ipam}: eth0 made",
                imp.label
            );
            assert!(
                veths(&sb.node.name).is_empty(),
                "{} ipam {ipam}: veth made",
                imp.label
            );
        }
        for ipam in [
            None,
            Some(json!(null)),
            Some(json!({})),
            Some(json!({"type": ""})),
        ] {
            let mut plugin = json!({"type": "bridge", "bridge": BR});
            if let Some(i) = &ipam {
                plugin["ipam"] = i.clone();
            }
            let net = Net::new(NET, "1.0.0", vec![plugin]);
            let r = rt
                .add(&net, &att)
                .unwrap_or_else(|o| panic!("{} ipam {ipam:?}: ADD: {o:?}", imp.label));
            assert!(r.get("ips").is_none(), "{} ipam {ipam:?}: {r}", imp.label);
            assert!(
                addrs(&pod.name, "eth0").is_empty(),
                "{} ipam {ipam:?}",
                imp.label
            );
            rt.del(&net, &att, Some(&r))
                .unwrap_or_else(|o| panic!("{} ipam {ipam:?}: DEL: {o:?}", imp.label));
            assert!(
                link(&pod.name, "eth0").is_none(),
                "{} ipam {ipam:?}",
                imp.label
            );
            wait_no_veths(&sb.node.name);
        }
    }
}

testkit::main!(
    flannel_without_subnet_env,
    flannel_bad_subnet_env,
    flannel_bad_delegate,
    ours_invalid_ids,
    ours_ifname_the_kernel_would_rewrite,
    ours_netns_not_a_namespace,
    bridge_cni_args_unknown_key,
    bridge_ipam_shape,
; ours::tests(), reference::tests()
);
