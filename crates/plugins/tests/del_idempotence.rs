//! DEL is idempotent and best effort: twice in a row, after the pod's netns is gone, after a partial ADD — all
//! succeed and leave nothing behind. Runs against ours and, as a baseline, the reference plugins.

mod common;

use common::*;
use serde_json::{json, Value};

const NET: &str = "frtnet";
const BR: &str = "frtbr0";

fn net(sb: &Sandbox, imp: &Impl) -> Net {
    Net::new(
        NET,
        imp.newest_version(),
        vec![bridge_conf(BR, "10.244.8.0/24", &sb.path("ipam"))],
    )
}

fn del_twice(imp: &Impl) {
    let sb = Sandbox::new();
    let pod = sb.pod(0);
    let rt = sb.runtime(imp);
    let net = net(&sb, imp);
    let att = sb.att(0, &pod);
    let r = rt.add(&net, &att).unwrap_or_else(|o| panic!("ADD: {o:?}"));
    rt.del(&net, &att, Some(&r))
        .unwrap_or_else(|o| panic!("DEL: {o:?}"));
    rt.del(&net, &att, Some(&r))
        .unwrap_or_else(|o| panic!("second DEL: {o:?}"));
    rt.del(&net, &att, None)
        .unwrap_or_else(|o| panic!("DEL without prevResult: {o:?}"));
    // DEL with an empty CNI_NETNS is allowed by the spec.
    let mut no_ns = att.clone();
    no_ns.netns.clear();
    rt.del(&net, &no_ns, None)
        .unwrap_or_else(|o| panic!("DEL without netns: {o:?}"));
    // DEL of something never added.
    rt.del(&net, &sb.att(7, &pod), None)
        .unwrap_or_else(|o| panic!("DEL of an unknown container: {o:?}"));
    wait_no_veths(&sb.node.name);
    assert!(link(&pod.name, "eth0").is_none());
    assert!(ip_files(&sb.path("ipam"), NET).is_empty());
}

fn del_after_netns_gone(imp: &Impl) {
    let sb = Sandbox::new();
    let pod = sb.pod(0);
    let rt = sb.runtime(imp);
    let net = net(&sb, imp);
    let att = sb.att(0, &pod);
    let r = rt.add(&net, &att).unwrap_or_else(|o| panic!("ADD: {o:?}"));
    assert_eq!(ip_files(&sb.path("ipam"), NET).len(), 1);
    pod.delete();
    rt.del(&net, &att, Some(&r))
        .unwrap_or_else(|o| panic!("DEL after the netns is gone: {o:?}"));
    assert!(
        ip_files(&sb.path("ipam"), NET).is_empty(),
        "IP not released"
    );
    rt.del(&net, &att, Some(&r))
        .unwrap_or_else(|o| panic!("second DEL: {o:?}"));
    wait_no_veths(&sb.node.name);
}

fn del_after_partial_add(imp: &Impl) {
    let sb = Sandbox::new();
    let pods = sb.pods(3);
    let rt = sb.runtime(imp);
    let net = net(&sb, imp);
    let data = sb.path("ipam");

    // 1. IPAM reserved, no interface made (killed right after host-local).
    let a0 = sb.att(0, &pods[0]);
    let out = rt.exec("host-local", "ADD", Some(&a0), &net.plugin_conf(0, None));
    assert!(out.ok(), "host-local ADD: {out:?}");
    assert_eq!(ip_files_of(&data, NET, &a0.container_id).len(), 1);
    rt.del(&net, &a0, None)
        .unwrap_or_else(|o| panic!("DEL: {o:?}"));
    assert!(
        ip_files(&data, NET).is_empty(),
        "reservation of a partial ADD kept"
    );

    // 2. Veth made (container end already named), no address, no IPAM.
    let a1 = sb.att(1, &pods[1]);
    ip(
        &sb.node.name,
        &[
            "link",
            "add",
            "vethfrtpart",
            "type",
            "veth",
            "peer",
            "name",
            "eth0",
            "netns",
            &pods[1].name,
        ],
    );
    rt.del(&net, &a1, None)
        .unwrap_or_else(|o| panic!("DEL: {o:?}"));
    assert!(
        link(&pods[1].name, "eth0").is_none(),
        "half-made container veth kept"
    );
    assert!(veths(&sb.node.name).is_empty(), "half-made host veth kept");

    // 3. A complete ADD whose interface the user removed by hand.
    let a2 = sb.att(2, &pods[2]);
    let r2: Value = rt.add(&net, &a2).unwrap_or_else(|o| panic!("ADD: {o:?}"));
    ip(&pods[2].name, &["link", "del", "eth0"]);
    rt.del(&net, &a2, Some(&r2))
        .unwrap_or_else(|o| panic!("DEL: {o:?}"));
    assert!(ip_files(&data, NET).is_empty());
    wait_no_veths(&sb.node.name);
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
    del_twice,
    del_after_netns_gone,
    del_after_partial_add,
    del_refuses_loopback,
}

/// flannel: DEL twice, DEL after the netns is gone, DEL when only the cache file exists (killed after caching,
/// before delegating), DEL after a delegate ADD that failed.
fn flannel_del_idempotence() {
    require_root();
    let imp = Impl::ours();
    let sb = Sandbox::new();
    let pods = sb.pods(3);
    let rt = sb.runtime(&imp);
    let net = flannel_net(&sb, "1.0.0");
    let cache = sb.path("flannel");
    let data = sb.path("ipam");

    // Twice, and after the netns is gone.
    let a0 = sb.att(0, &pods[0]);
    let r0 = rt.add(&net, &a0).unwrap_or_else(|o| panic!("ADD: {o:?}"));
    let cached = std::fs::read(flannel_cache(&sb, &a0)).expect("cache file after ADD");
    rt.del(&net, &a0, Some(&r0))
        .unwrap_or_else(|o| panic!("DEL: {o:?}"));
    rt.del(&net, &a0, Some(&r0))
        .unwrap_or_else(|o| panic!("second DEL: {o:?}"));
    assert!(!flannel_cache(&sb, &a0).exists());

    let a1 = sb.att(1, &pods[1]);
    let r1 = rt.add(&net, &a1).unwrap_or_else(|o| panic!("ADD: {o:?}"));
    pods[1].delete();
    rt.del(&net, &a1, Some(&r1))
        .unwrap_or_else(|o| panic!("DEL after netns gone: {o:?}"));
    assert!(!flannel_cache(&sb, &a1).exists());
    assert!(
        ip_files(&data, "cbr0").is_empty(),
        "{:?}",
        ip_files(&data, "cbr0")
    );

    // Only the cache file exists (as if killed between caching and delegating).
    let a2 = sb.att(2, &pods[2]);
    std::fs::write(flannel_cache(&sb, &a2), &cached).unwrap();
    rt.del(&net, &a2, None)
        .unwrap_or_else(|o| panic!("DEL with only a cache file: {o:?}"));
    assert!(!flannel_cache(&sb, &a2).exists(), "cache left");

    rt.del(&net, &a2, None)
        .unwrap_or_else(|o| panic!("third DEL: {o:?}"));
    wait_no_veths(&sb.node.name);
    assert!(ip_files(&data, "cbr0").is_empty());
    assert_eq!(
        std::fs::read_dir(&cache).map(|d| d.count()).unwrap_or(0),
        0,
        "cache dir not empty"
    );
}

/// flannel whose delegate ADD fails (a /30 with its only address taken): the runtime's DEL cleans everything.
fn flannel_del_after_failed_delegate() {
    require_root();
    let sb = Sandbox::new();
    let rt = sb.runtime(&Impl::ours());
    let net = flannel_net(&sb, "1.0.0");
    write_subnet_env(
        &sb.path("subnet.env"),
        "10.244.0.0/16",
        "10.244.3.1/30",
        1450,
        true,
    );
    let cache = sb.path("flannel");
    let data = sb.path("ipam");
    let p3 = sb.pod(3);
    let p4 = sb.pod(4);
    let a3 = sb.att(3, &p3);
    let a4 = sb.att(4, &p4);
    let r3 = rt.add(&net, &a3).unwrap_or_else(|o| panic!("ADD: {o:?}"));
    let out = rt.add(&net, &a4).expect_err("exhausted");
    out.assert_some_err();
    rt.del(&net, &a4, None)
        .unwrap_or_else(|o| panic!("DEL after a failed ADD: {o:?}"));
    assert!(!flannel_cache(&sb, &a4).exists());
    assert!(link(&p4.name, "eth0").is_none());
    assert!(ip_files_of(&data, "cbr0", &a4.container_id).is_empty());
    rt.del(&net, &a3, Some(&r3))
        .unwrap_or_else(|o| panic!("DEL: {o:?}"));
    wait_no_veths(&sb.node.name);
    assert!(ip_files(&data, "cbr0").is_empty());
    assert_eq!(
        std::fs::read_dir(&cache).map(|d| d.count()).unwrap_or(0),
        0,
        "cache dir not empty"
    );
}

/// flannel with a delegate cache that is there but unparsable (emptied or cut off by a disk fault): DEL renders the
/// delegate config from subnet.env again and releases the address and the veth. With subnet.env gone too, DEL
/// still releases them (flannel's own teardown, with the network's ipam settings) and drops the unusable file.
fn flannel_del_with_empty_cache() {
    require_root();
    let sb = Sandbox::new();
    let pods = sb.pods(2);
    let rt = sb.runtime(&Impl::ours());
    let net = flannel_net(&sb, "1.0.0");
    let data = sb.path("ipam");

    let a0 = sb.att(0, &pods[0]);
    rt.add(&net, &a0).unwrap_or_else(|o| panic!("ADD: {o:?}"));
    assert_eq!(ip_files_of(&data, "cbr0", &a0.container_id).len(), 1);
    std::fs::write(flannel_cache(&sb, &a0), b"").unwrap();
    rt.del(&net, &a0, None)
        .unwrap_or_else(|o| panic!("DEL with an empty cache: {o:?}"));
    assert!(ip_files_of(&data, "cbr0", &a0.container_id).is_empty());
    assert!(link(&pods[0].name, "eth0").is_none(), "pod interface left");
    assert!(!flannel_cache(&sb, &a0).exists(), "cache left");

    let a1 = sb.att(1, &pods[1]);
    rt.add(&net, &a1).unwrap_or_else(|o| panic!("ADD: {o:?}"));
    std::fs::write(flannel_cache(&sb, &a1), b"{\"cniVers").unwrap();
    std::fs::remove_file(sb.path("subnet.env")).unwrap();
    rt.del(&net, &a1, None)
        .unwrap_or_else(|o| panic!("DEL with a torn cache and no subnet.env: {o:?}"));
    assert!(!flannel_cache(&sb, &a1).exists(), "cache left");
    assert!(
        ip_files_of(&data, "cbr0", &a1.container_id).is_empty(),
        "address left after DEL with a torn cache and no subnet.env"
    );
    assert!(link(&pods[1].name, "eth0").is_none(), "pod interface left");
    wait_no_veths(&sb.node.name);
}

/// DEL with `CNI_IFNAME=lo` names the pod's loopback, which bridge never makes: it is refused and the loopback
/// keeps its name and state (the reference fails to delete it and leaves it alone too).
fn del_refuses_loopback(imp: &Impl) {
    let sb = Sandbox::new();
    let pod = sb.pod(0);
    let rt = sb.runtime(imp);
    let net = net(&sb, imp);
    ip(&pod.name, &["link", "set", "lo", "up"]);
    let att = Att::new(&sb.cid(0), &pod.path(), "lo");
    let out = rt.exec("bridge", "DEL", Some(&att), &net.plugin_conf(0, None));
    let code = out.assert_some_err();
    if !imp.reference {
        assert_eq!(code, 4, "{out:?}");
        assert!(out.msg().contains("loopback"), "{out:?}");
    }
    assert_eq!(link_names(&pod.name), vec!["lo"], "{}", imp.label);
    let lo = link(&pod.name, "lo").expect("lo");
    assert!(
        lo["flags"]
            .as_array()
            .is_some_and(|f| f.iter().any(|x| x == "UP")),
        "{}: lo brought down: {lo}",
        imp.label
    );
}

/// The state a DEL killed between renaming the pod interface out of the way and deleting it leaves behind: the
/// pod end down under its tombstone name, the host end still a port of the bridge. The runtime's retried DEL
/// must find and remove it although nothing is called `CNI_IFNAME` any more.
fn bridge_del_retry_finds_renamed_interface() {
    require_root();
    let imp = Impl::ours();
    let sb = Sandbox::new();
    let pod = sb.pod(0);
    let rt = sb.runtime(&imp);
    let net = net(&sb, &imp);
    let att = sb.att(0, &pod);
    let r = rt.add(&net, &att).unwrap_or_else(|o| panic!("ADD: {o:?}"));
    ip(&pod.name, &["link", "set", "eth0", "down"]);
    ip(
        &pod.name,
        &["link", "set", "eth0", "name", "cnidel0badc0de"],
    );
    rt.del(&net, &att, Some(&r))
        .unwrap_or_else(|o| panic!("retried DEL: {o:?}"));
    wait_no_veths(&sb.node.name);
    assert_eq!(link_names(&pod.name), vec!["lo"]);
    assert!(ip_files(&sb.path("ipam"), NET).is_empty());
}

const DEL_KILLS: usize = 20;

/// DEL SIGKILLed after 0–8 ms, then retried as a runtime does: the retry succeeds and nothing of the attachment
/// is left, wherever the kill landed.
fn bridge_sigkill_during_del() {
    require_root();
    let imp = Impl::ours();
    let sb = Sandbox::new();
    let rt = sb.runtime(&imp);
    let net = net(&sb, &imp);
    let mut jitter = Jitter::new();
    let mut killed = 0;
    for i in 0..DEL_KILLS {
        let pod = sb.pod(i);
        let att = sb.att(i, &pod);
        let r = rt.add(&net, &att).unwrap_or_else(|o| panic!("ADD: {o:?}"));
        let mut child = rt.spawn("bridge", "DEL", Some(&att), &net.plugin_conf(0, Some(&r)));
        std::thread::sleep(jitter.below(std::time::Duration::from_millis(8)));
        let _ = child.kill();
        if !child.wait().expect("wait").success() {
            killed += 1;
        }
        rt.del(&net, &att, Some(&r))
            .unwrap_or_else(|o| panic!("iteration {i}: retried DEL: {o:?}"));
        wait_no_veths(&sb.node.name);
        assert_eq!(link_names(&pod.name), vec!["lo"], "iteration {i}");
        assert!(
            ip_files(&sb.path("ipam"), NET).is_empty(),
            "iteration {i}: IP kept"
        );
    }
    eprintln!("{DEL_KILLS} DELs, {killed} killed before finishing");
}

/// Every mention of `needle` in the node's firewall (iptables nat table and the whole nft ruleset).
fn firewall_mentions(node: &str, needle: &str) -> Vec<String> {
    let mut out = vec![];
    for cmd in [
        &["iptables-save", "-t", "nat"][..],
        &["nft", "list", "ruleset"][..],
    ] {
        let o = std::process::Command::new("ip")
            .args(["netns", "exec", node])
            .args(cmd)
            .output()
            .expect("run firewall tool");
        out.extend(
            String::from_utf8_lossy(&o.stdout)
                .lines()
                .filter(|l| l.contains(needle))
                .map(str::to_string),
        );
    }
    out
}

/// bridge DEL runs every teardown step even when one fails: with its IPAM plugin missing, the pod interface, the
/// masquerade rules and the macspoofchk chains still go, and the one error names the failed step. The retry with
/// the IPAM plugin back releases the address.
fn bridge_del_does_every_step() {
    require_root();
    let imp = Impl::ours();
    let sb = Sandbox::new();
    let pod = sb.pod(0);
    let rt = sb.runtime(&imp);
    let mut plugin = bridge_conf(BR, "10.244.8.0/24", &sb.path("ipam"));
    plugin["ipMasq"] = true.into();
    plugin["macspoofchk"] = true.into();
    let net = Net::new(NET, "1.0.0", vec![plugin.clone()]);
    let att = sb.att(0, &pod);
    let r = rt.add(&net, &att).unwrap_or_else(|o| panic!("ADD: {o:?}"));
    assert!(
        firewall_mentions(&sb.node.name, &att.container_id).len() >= 2,
        "no masquerade or spoof-check rules after ADD: {:?}",
        firewall_mentions(&sb.node.name, &att.container_id)
    );

    plugin["ipam"]["type"] = "frt-no-such-ipam".into();
    let broken = Net::new(NET, "1.0.0", vec![plugin]);
    let out = rt.exec(
        "bridge",
        "DEL",
        Some(&att),
        &broken.plugin_conf(0, Some(&r)),
    );
    out.assert_some_err();
    assert!(
        out.msg().contains("IPAM") && out.msg().contains("frt-no-such-ipam"),
        "the error must name the failed step: {out:?}"
    );
    wait_no_veths(&sb.node.name);
    assert_eq!(link_names(&pod.name), vec!["lo"]);
    assert_eq!(
        firewall_mentions(&sb.node.name, &att.container_id),
        Vec::<String>::new(),
        "rules left after a DEL whose IPAM step failed"
    );
    assert_eq!(ip_files(&sb.path("ipam"), NET).len(), 1);

    rt.del(&net, &att, Some(&r))
        .unwrap_or_else(|o| panic!("retried DEL: {o:?}"));
    assert!(ip_files(&sb.path("ipam"), NET).is_empty());
}

/// flannel GC runs both of its steps whatever happens to the other: with its delegate failing (a delegate type
/// that is not installed), the stale delegate caches are still swept, and the error names the delegate.
fn flannel_gc_does_every_step() {
    require_root();
    let sb = Sandbox::new();
    let rt = sb.runtime(&Impl::ours());
    let mut net = flannel_net(&sb, "1.1.0");
    net.plugins[1]["delegate"]["type"] = "frt-no-such-plugin".into();
    let cache = sb.path("flannel");
    std::fs::create_dir_all(&cache).unwrap();
    std::fs::write(cache.join(sb.cid(9)), b"{\"type\":\"bridge\"}").unwrap();
    let errs = rt.gc(&net, &[]).expect_err("the delegate is missing");
    assert_eq!(errs.len(), 1, "{errs:?}");
    assert!(
        errs[0].msg().contains("frt-no-such-plugin"),
        "{:?}",
        errs[0]
    );
    assert!(
        !cache.join(sb.cid(9)).exists(),
        "stale cache kept because the delegate's GC failed"
    );
}

/// flannel CHECK with a delegate cache that is valid JSON but not a delegate config (not an object, or an object
/// without a string `type`): an error, never a panic. DEL still releases the attachment afterwards.
fn flannel_check_with_a_foreign_cache() {
    require_root();
    let sb = Sandbox::new();
    let pod = sb.pod(0);
    let rt = sb.runtime(&Impl::ours());
    let net = flannel_net(&sb, "1.0.0");
    let att = sb.att(0, &pod);
    let r = rt.add(&net, &att).unwrap_or_else(|o| panic!("ADD: {o:?}"));
    rt.check(&net, &att, &r)
        .unwrap_or_else(|o| panic!("CHECK of the intact attachment: {o:?}"));
    for body in ["[1]", "\"x\"", "1", "true", "null", "{}", "{\"type\":7}"] {
        std::fs::write(flannel_cache(&sb, &att), body).unwrap();
        let out = rt.exec(
            "flannel",
            "CHECK",
            Some(&att),
            &net.plugin_conf(1, Some(&r)),
        );
        assert!(
            !out.stderr.contains("panicked"),
            "CHECK panicked on cache {body}: {out:?}"
        );
        assert_eq!(out.assert_some_err(), 6, "cache {body}: {out:?}");
        assert!(
            out.msg().contains("delegate cache"),
            "cache {body}: {out:?}"
        );
    }
    rt.del(&net, &att, Some(&r))
        .unwrap_or_else(|o| panic!("DEL: {o:?}"));
    wait_no_veths(&sb.node.name);
    assert!(ip_files(&sb.path("ipam"), "cbr0").is_empty());
    assert!(!flannel_cache(&sb, &att).exists());
}

/// A second flannel network: its own subnet.env and bridge, the same cache directory.
fn flannel_second_net(sb: &Sandbox, version: &str) -> Net {
    write_subnet_env(
        &sb.path("subnet-b.env"),
        "10.245.0.0/16",
        "10.245.1.1/24",
        1450,
        true,
    );
    let mut plugin = flannel_conf(sb);
    plugin["subnetFile"] = sb.path("subnet-b.env").to_str().unwrap().into();
    plugin["delegate"] = json!({"bridge": "frtb1"});
    Net::new("cbr1", version, vec![plugin])
}

/// One container with two flannel attachments (eth0 and net1, as Multus makes them), here from two flannel
/// networks sharing the default cache directory: each DEL releases its own attachment, in either order.
fn flannel_two_attachments_of_one_container() {
    require_root();
    let sb = Sandbox::new();
    let rt = sb.runtime(&Impl::ours());
    let a = flannel_net(&sb, "1.0.0");
    let b = flannel_second_net(&sb, "1.0.0");
    let data = sb.path("ipam");
    for (round, order) in [["eth0", "net1"], ["net1", "eth0"]].iter().enumerate() {
        let pod = sb.pod(round);
        let eth0 = sb.att(round, &pod);
        let net1 = Att::new(&sb.cid(round), &pod.path(), "net1");
        let ra = rt
            .add(&a, &eth0)
            .unwrap_or_else(|o| panic!("ADD eth0: {o:?}"));
        let rb = rt
            .add(&b, &net1)
            .unwrap_or_else(|o| panic!("ADD net1: {o:?}"));
        assert_eq!(ip_files_of(&data, "cbr0", &eth0.container_id).len(), 1);
        assert_eq!(ip_files_of(&data, "cbr1", &net1.container_id).len(), 1);
        for ifname in order {
            let (net, att, r) = if *ifname == "eth0" {
                (&a, &eth0, &ra)
            } else {
                (&b, &net1, &rb)
            };
            rt.del(net, att, Some(r))
                .unwrap_or_else(|o| panic!("DEL {ifname}: {o:?}"));
            assert!(
                link(&pod.name, ifname).is_none(),
                "{order:?}: {ifname} left"
            );
        }
        wait_no_veths(&sb.node.name);
        assert_eq!(link_names(&pod.name), vec!["lo"], "{order:?}");
        assert!(
            ip_files(&data, "cbr0").is_empty(),
            "{order:?}: {:?}",
            ip_files(&data, "cbr0")
        );
        assert!(
            ip_files(&data, "cbr1").is_empty(),
            "{order:?}: {:?}",
            ip_files(&data, "cbr1")
        );
        assert_eq!(
            std::fs::read_dir(sb.path("flannel"))
                .map(|d| d.count())
                .unwrap_or(0),
            0,
            "{order:?}: cache left"
        );
    }
}

/// A cache upstream flannel (or an earlier version) wrote under the container ID alone is still found: CHECK uses
/// it, DEL releases the attachment with it and removes it, and GC keeps it exactly while the container has a
/// valid attachment. The per-attachment name is kept for (container, ifname) pairs GC is told are valid.
fn flannel_reads_the_container_id_only_cache() {
    require_root();
    let sb = Sandbox::new();
    let pod = sb.pod(0);
    let rt = sb.runtime(&Impl::ours());
    let net = flannel_net(&sb, "1.1.0");
    let att = sb.att(0, &pod);
    let r = rt.add(&net, &att).unwrap_or_else(|o| panic!("ADD: {o:?}"));
    assert!(flannel_cache(&sb, &att).is_file());
    std::fs::rename(flannel_cache(&sb, &att), flannel_legacy_cache(&sb, &att)).unwrap();
    rt.check(&net, &att, &r)
        .unwrap_or_else(|o| panic!("CHECK with the old cache name: {o:?}"));

    let other = Att::new(&sb.cid(1), &pod.path(), "eth0");
    let net1 = Att::new(&sb.cid(0), &pod.path(), "net1");
    for a in [&other, &net1] {
        std::fs::write(flannel_cache(&sb, a), b"{\"type\":\"bridge\"}").unwrap();
    }
    rt.gc(
        &net,
        &[(&att.container_id, "eth0"), (&other.container_id, "eth0")],
    )
    .unwrap_or_else(|e| panic!("GC: {e:?}"));
    assert!(
        flannel_legacy_cache(&sb, &att).is_file(),
        "GC dropped the old-name cache of a valid container"
    );
    assert!(
        flannel_cache(&sb, &other).is_file(),
        "GC dropped a valid attachment's cache"
    );
    assert!(
        !flannel_cache(&sb, &net1).exists(),
        "GC kept a stale attachment's cache"
    );
    std::fs::remove_file(flannel_cache(&sb, &other)).unwrap();

    rt.del(&net, &att, Some(&r))
        .unwrap_or_else(|o| panic!("DEL with the old cache name: {o:?}"));
    wait_no_veths(&sb.node.name);
    assert_eq!(link_names(&pod.name), vec!["lo"]);
    assert!(ip_files(&sb.path("ipam"), "cbr0").is_empty());
    assert_eq!(
        std::fs::read_dir(sb.path("flannel"))
            .map(|d| d.count())
            .unwrap_or(0),
        0,
        "cache left"
    );
}

/// flannel ADD fails when its delegate refuses the rendered config (`delegate.mtu: "x"`) or does not exist
/// (`delegate.type: "x"`); the cache written before delegating must not make every DEL fail the same way, or the
/// pod never finishes terminating. DEL succeeds, twice, and nothing is left. Also when the delegate refuses a
/// cache that did make an attachment (edited after ADD): DEL still releases the address and the interface.
fn flannel_del_after_a_refused_delegate_config() {
    require_root();
    let sb = Sandbox::new();
    let rt = sb.runtime(&Impl::ours());
    let data = sb.path("ipam");
    for (i, delegate) in [
        json!({"mtu": "x"}),
        json!({"type": "x"}),
        json!({"vlan": 5000}),
    ]
    .into_iter()
    .enumerate()
    {
        let pod = sb.pod(i);
        let att = sb.att(i, &pod);
        let mut net = flannel_net(&sb, "1.0.0");
        net.plugins[1]["delegate"] = delegate.clone();
        let out = rt
            .add(&net, &att)
            .expect_err("the delegate refuses its config");
        assert_eq!(out.code(), 7, "{delegate}: {out:?}");
        for n in 0..2 {
            rt.del(&net, &att, None)
                .unwrap_or_else(|o| panic!("{delegate}: DEL {n} after the refused ADD: {o:?}"));
        }
        assert!(!flannel_cache(&sb, &att).exists(), "{delegate}: cache left");
        assert_eq!(link_names(&pod.name), vec!["lo"], "{delegate}");
        assert!(ip_files(&data, "cbr0").is_empty(), "{delegate}");
    }

    for (i, edit) in [("mtu", json!("x")), ("type", json!("x"))]
        .into_iter()
        .enumerate()
    {
        let pod = sb.pod(10 + i);
        let att = sb.att(10 + i, &pod);
        let net = flannel_net(&sb, "1.0.0");
        let r = rt.add(&net, &att).unwrap_or_else(|o| panic!("ADD: {o:?}"));
        let path = flannel_cache(&sb, &att);
        let mut cached: serde_json::Value =
            serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
        cached[edit.0] = edit.1.clone();
        std::fs::write(&path, cached.to_string()).unwrap();
        rt.del(&net, &att, Some(&r))
            .unwrap_or_else(|o| panic!("{edit:?}: DEL with a refused cache: {o:?}"));
        wait_no_veths(&sb.node.name);
        assert_eq!(link_names(&pod.name), vec!["lo"], "{edit:?}");
        assert!(
            ip_files(&data, "cbr0").is_empty(),
            "{edit:?}: {:?}",
            ip_files(&data, "cbr0")
        );
        assert!(!path.exists(), "{edit:?}: cache left");
    }
}

testkit::main!(
    flannel_del_idempotence,
    flannel_del_after_failed_delegate,
    flannel_del_with_empty_cache,
    bridge_del_retry_finds_renamed_interface,
    bridge_sigkill_during_del,
    bridge_del_does_every_step,
    flannel_gc_does_every_step,
    flannel_check_with_a_foreign_cache,
    flannel_two_attachments_of_one_container,
    flannel_reads_the_container_id_only_cache,
    flannel_del_after_a_refused_delegate_config,
; ours::tests(), reference::tests()
);
