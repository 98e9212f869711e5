//! Which delegate runs in-process: a file on `CNI_PATH` that is this very build (its identity marker), wherever it
//! is installed; never a foreign executable under one of our names, even beside our own binary, nor another
//! version of ours.
//!
//! The probes: a shell script named `bridge` that logs its calls and prints a made-up result (run in-process, our
//! bridge would print a real one or fail, and log nothing), and copies of our binaries without the execute bit
//! (running them in-process only reads them; exec'ing them fails with "permission denied", for root too).

mod common;

use common::*;
use serde_json::{json, Value};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

const MADE_UP_IP: &str = "192.0.2.77/24";

/// Copies `from` to `dir/name` with `mode`.
fn install(from: &Path, dir: &Path, name: &str, mode: u32) -> PathBuf {
    std::fs::create_dir_all(dir).unwrap();
    let to = dir.join(name);
    std::fs::copy(from, &to).unwrap_or_else(|e| panic!("copy {}: {e}", from.display()));
    std::fs::set_permissions(&to, std::fs::Permissions::from_mode(mode)).unwrap();
    to
}

/// A flannel config with every path in `dir`, at spec `version`.
fn flannel(dir: &Path, version: &str) -> Value {
    write_subnet_env(
        &dir.join("subnet.env"),
        "10.244.0.0/16",
        "10.244.1.1/24",
        1450,
        true,
    );
    json!({
        "cniVersion": version,
        "name": "cbr0",
        "type": "flannel",
        "subnetFile": dir.join("subnet.env"),
        "dataDir": dir.join("cache"),
        "ipam": {"dataDir": dir.join("ipam")},
    })
}

fn run(bin: &Path, env: Env, conf: &Value) -> Out {
    exec_plugin(bin, None, &env, conf.to_string().as_bytes())
}

fn att() -> Att {
    // flannel itself never opens the namespace; only a bridge would.
    Att::new("ctr-identity", "/run/netns/frt-none", "eth0")
}

/// A foreign `bridge` in the same directory as (a copy of) our `flannel`: exec'd, for ADD and for STATUS. The
/// directory rule ran it in-process as ours.
fn foreign_bridge_beside_our_flannel_is_execd() {
    let tmp = TempDir::new(&unique_prefix());
    let bin = tmp.path.join("bin");
    let flannel_bin = install(
        Path::new(env!("CARGO_BIN_EXE_flannel")),
        &bin,
        "flannel",
        0o755,
    );
    let log = tmp.path.join("bridge.log");
    std::fs::write(
        bin.join("bridge"),
        format!(
            "#!/bin/sh\ncat >/dev/null\necho \"$CNI_COMMAND\" >> {}\n\
             [ \"$CNI_COMMAND\" = ADD ] && echo '{{\"cniVersion\":\"1.0.0\",\"ips\":[{{\"address\":\"{MADE_UP_IP}\"}}]}}'\n\
             exit 0\n",
            log.display()
        ),
    )
    .unwrap();
    std::fs::set_permissions(bin.join("bridge"), std::fs::Permissions::from_mode(0o755)).unwrap();
    let path = bin.display().to_string();

    let out = run(
        &flannel_bin,
        Env::for_cmd("ADD", Some(&att()), &path),
        &flannel(&tmp.path, "1.0.0"),
    );
    assert!(out.ok(), "ADD: {out:?}");
    assert_eq!(out.json()["ips"][0]["address"], MADE_UP_IP, "{out:?}");
    let out = run(
        &flannel_bin,
        Env::for_cmd("STATUS", None, &path),
        &flannel(&tmp.path, "1.1.0"),
    );
    assert!(out.ok(), "STATUS: {out:?}");
    assert_eq!(
        std::fs::read_to_string(&log).unwrap_or_default(),
        "ADD\nSTATUS\n"
    );
}

/// Copies of our `bridge` and `host-local`, not executable, in `<tmp>/other`: they can only run in-process.
/// Returns the directory and the bridge copy.
fn copies_elsewhere(tmp: &TempDir) -> (PathBuf, PathBuf) {
    let other = tmp.path.join("other");
    let bridge = install(
        Path::new(env!("CARGO_BIN_EXE_bridge")),
        &other,
        "bridge",
        0o644,
    );
    install(
        Path::new(env!("CARGO_BIN_EXE_host-local")),
        &other,
        "host-local",
        0o644,
    );
    (other, bridge)
}

/// Our `bridge` and `host-local` copied into another directory (without the execute bit): run in-process, so
/// STATUS succeeds. The directory rule exec'd them, which fails.
fn our_build_elsewhere_runs_in_process() {
    let tmp = TempDir::new(&unique_prefix());
    let (other, _) = copies_elsewhere(&tmp);
    let flannel_bin = Path::new(env!("CARGO_BIN_EXE_flannel"));
    let path = other.display().to_string();
    let conf = flannel(&tmp.path, "1.1.0");

    let out = run(flannel_bin, Env::for_cmd("STATUS", None, &path), &conf);
    assert!(
        out.ok(),
        "STATUS through our non-executable copies: {out:?}"
    );

    // Forced exec: the same files are exec'd and cannot be.
    let env = Env::for_cmd("STATUS", None, &path).set("FLANNEL_RS_DELEGATE_EXEC", "1");
    let out = run(flannel_bin, env, &conf);
    assert!(
        !out.ok(),
        "forced exec of a non-executable file succeeded: {out:?}"
    );
    assert!(out.msg().contains("failed to exec plugin"), "{out:?}");
}

/// A copy of our `bridge` whose marker says another build (one byte of the build id changed, as another version
/// of ours would have): exec'd, never run in-process, even though it is otherwise our code.
fn other_build_of_ours_is_execd() {
    let tmp = TempDir::new(&unique_prefix());
    let (other, bridge) = copies_elsewhere(&tmp);
    let mut bytes = std::fs::read(&bridge).unwrap();
    let marker = cni::identity::marker();
    let at = bytes
        .windows(marker.len())
        .position(|w| w == marker)
        .expect("our bridge carries the marker");
    let last = at + marker.len() - 1;
    bytes[last] = if bytes[last] == b'0' { b'1' } else { b'0' };
    std::fs::write(&bridge, &bytes).unwrap();
    assert!(!cni::identity::is_this_build(&bridge));
    assert!(cni::identity::is_this_build(&other.join("host-local")));

    let out = run(
        Path::new(env!("CARGO_BIN_EXE_flannel")),
        Env::for_cmd("STATUS", None, &other.display().to_string()),
        &flannel(&tmp.path, "1.1.0"),
    );
    assert!(!out.ok(), "another build ran in-process: {out:?}");
    assert!(
        out.msg().contains("failed to exec plugin") && out.msg().contains("bridge"),
        "{out:?}"
    );
}

/// The whole chain from our non-executable copies in another directory, first on `CNI_PATH`: flannel (exec'd by
/// the runtime from our build directory) runs bridge and host-local in-process, and the pod gets its address.
fn chain_from_copies_elsewhere_attaches_a_pod() {
    require_root();
    let ours = Impl::ours();
    let sb = Sandbox::new();
    let copies = sb.path("copies");
    install(&ours.bin("bridge"), &copies, "bridge", 0o644);
    install(&ours.bin("host-local"), &copies, "host-local", 0o644);
    let rt = sb.runtime_with_path(vec![copies.clone(), ours.dir.clone()]);
    assert_eq!(rt.find("bridge"), copies.join("bridge"));
    let net = flannel_net(&sb, "1.0.0");
    let pod = sb.pod(0);
    let a = sb.att(0, &pod);
    let r = rt.add(&net, &a).unwrap_or_else(|o| panic!("ADD: {o:?}"));
    assert!(
        r["ips"][0]["address"]
            .as_str()
            .is_some_and(|ip| ip.starts_with("10.244.1.")),
        "{r}"
    );
    assert!(link(&pod.name, "eth0").is_some());
    rt.del(&net, &a, Some(&r))
        .unwrap_or_else(|o| panic!("DEL: {o:?}"));
    assert!(link(&pod.name, "eth0").is_none());
}

testkit::main!(
    foreign_bridge_beside_our_flannel_is_execd,
    our_build_elsewhere_runs_in_process,
    other_build_of_ours_is_execd,
    chain_from_copies_elsewhere_attaches_a_pod,
);
