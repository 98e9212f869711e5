//! The plugins, as library modules, and their table: each binary is a thin `main` naming its row, and a
//! delegating plugin runs another row in-process when the delegate's file is this build.
//!
//! Adding a plugin: its module with a `PLUGIN` row, the row in [`TABLE`], and a binary calling [`main`].

pub mod bandwidth;
pub mod bridge;
pub mod dhcp;
pub mod flannel;
pub mod host_device;
pub mod host_local;
pub mod ipvlan;
pub mod loopback;
pub mod macvlan;
pub mod portmap;
pub mod ptp;
pub mod static_ipam;
pub mod sublink;
pub mod tuning;
pub mod vlan;

use crate::plugin::{Ctx, DefaultExec, Plugin};
use crate::skel;

/// The plugins built into this crate.
pub static TABLE: &[Plugin] = &[
    flannel::PLUGIN,
    bridge::PLUGIN,
    host_local::PLUGIN,
    loopback::PLUGIN,
    tuning::PLUGIN,
    bandwidth::PLUGIN,
    portmap::PLUGIN,
    ptp::PLUGIN,
    static_ipam::PLUGIN,
    host_device::PLUGIN,
    macvlan::PLUGIN,
    ipvlan::PLUGIN,
    vlan::PLUGIN,
    dhcp::PLUGIN,
];

/// The plugin for a CNI `type`, if it is one of ours.
pub fn from_type(name: &str) -> Option<&'static Plugin> {
    TABLE.iter().find(|p| p.name == name)
}

/// The process entry point of the plugin binary for `name` (a name not in [`TABLE`] is a bug in the binary).
pub fn main(name: &str) -> ! {
    let Some(plugin) = from_type(name) else {
        eprintln!("flannel-rs: no plugin \"{name}\" in this build");
        std::process::exit(2);
    };
    let about = format!("CNI {} plugin", plugin.name);
    skel::main(&about, plugin.versions, |args| {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| crate::CniError::internal(format!("failed to start runtime: {e}")))?;
        let exec = DefaultExec::new(TABLE);
        let ctx = Ctx { exec: &exec };
        rt.block_on(plugin.run(&ctx, args))
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::invoke::{Exec, LocalBoxFuture};
    use crate::skel::{CmdArgs, Command, Outcome};
    use crate::types::{CniResult, NetConf};
    use serde_json::Value;
    use std::cell::RefCell;
    use std::path::{Path, PathBuf};

    /// An executor that runs nothing: it records what it was asked and answers every ADD with one address.
    #[derive(Default)]
    struct Recorder {
        calls: RefCell<Vec<(PathBuf, Command, Value)>>,
    }

    impl Exec for Recorder {
        fn find(&self, plugin: &str, _: &str) -> Result<PathBuf, crate::CniError> {
            Ok(Path::new("/recorded").join(plugin))
        }

        fn run<'a>(&'a self, path: &'a Path, args: CmdArgs) -> LocalBoxFuture<'a, Outcome> {
            let conf = serde_json::from_slice(&args.stdin).unwrap_or(Value::Null);
            self.calls
                .borrow_mut()
                .push((path.to_path_buf(), args.command, conf));
            Box::pin(async move {
                Ok((args.command == Command::Add).then(|| CniResult {
                    cni_version: "1.0.0".into(),
                    ips: vec![crate::types::IpConfig {
                        address: "192.0.2.9/24".parse().unwrap(),
                        gateway: None,
                        interface: None,
                    }],
                    ..Default::default()
                }))
            })
        }
    }

    fn args(command: Command, conf: &Value) -> CmdArgs {
        CmdArgs {
            command,
            container_id: "c1".into(),
            netns: "/run/netns/none".into(),
            ifname: "eth0".into(),
            args: String::new(),
            path: "/nowhere".into(),
            stdin: conf.to_string().into_bytes(),
        }
    }

    fn block_on<F: std::future::Future>(f: F) -> F::Output {
        tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap()
            .block_on(f)
    }

    #[test]
    fn table_rows_are_named_as_their_types() {
        let names: Vec<&str> = TABLE.iter().map(|p| p.name).collect();
        assert_eq!(
            names,
            [
                "flannel",
                "bridge",
                "host-local",
                "loopback",
                "tuning",
                "bandwidth",
                "portmap",
                "ptp",
                "static",
                "host-device",
                "macvlan",
                "ipvlan",
                "vlan",
                "dhcp"
            ]
        );
        assert_eq!(from_type("bridge").map(|p| p.name), Some("bridge"));
        assert!(from_type("sbr").is_none());
    }

    /// flannel delegates through the executor it is handed: the bridge config it rendered from subnet.env goes to
    /// the executor, and the executor's result is flannel's.
    #[test]
    fn flannel_delegates_through_the_injected_executor() {
        let dir = std::env::temp_dir().join(format!("flannel-rs-rec-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(
            dir.join("subnet.env"),
            "FLANNEL_NETWORK=10.1.0.0/16\nFLANNEL_SUBNET=10.1.17.1/24\nFLANNEL_MTU=1472\nFLANNEL_IPMASQ=true\n",
        )
        .unwrap();
        let conf = serde_json::json!({"cniVersion": "1.0.0", "name": "cbr0", "type": "flannel",
            "subnetFile": dir.join("subnet.env"), "dataDir": dir.join("cache")});
        let rec = Recorder::default();
        let ctx = Ctx { exec: &rec };
        let a = args(Command::Add, &conf);
        let nc = NetConf::parse(&a.stdin).unwrap();
        let r = block_on(flannel::PLUGIN.call(&ctx, &a, &nc))
            .unwrap()
            .unwrap();
        assert_eq!(r.ips[0].address.to_string(), "192.0.2.9/24");
        {
            let calls = rec.calls.borrow();
            assert_eq!(calls.len(), 1);
            let (path, cmd, d) = &calls[0];
            assert_eq!(
                (path.as_path(), *cmd),
                (Path::new("/recorded/bridge"), Command::Add)
            );
            assert_eq!(d["type"], "bridge");
            assert_eq!(d["mtu"], 1472);
            assert_eq!(d["ipam"]["ranges"][0][0]["subnet"], "10.1.17.0/24");
        }

        // bridge's STATUS asks its IPAM plugin, through the same executor.
        let bridge_conf = serde_json::json!({"cniVersion": "1.1.0", "name": "cbr0", "type": "bridge",
            "ipam": {"type": "host-local"}});
        let a = args(Command::Status, &bridge_conf);
        let nc = NetConf::parse(&a.stdin).unwrap();
        assert_eq!(block_on(bridge::PLUGIN.call(&ctx, &a, &nc)), Ok(None));
        let calls = rec.calls.borrow();
        assert_eq!(calls[1].0, Path::new("/recorded/host-local"));
        assert_eq!(calls[1].1, Command::Status);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    /// The default executor runs in-process only a file that is a table plugin by name and this build by its
    /// marker (this test executable links the crate, so it is this build).
    #[test]
    fn default_executor_runs_only_this_build_in_process() {
        let dir = std::env::temp_dir().join(format!("flannel-rs-inproc-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let me = std::env::current_exe().unwrap();
        let exec = DefaultExec::new(TABLE);
        std::fs::copy(&me, dir.join("bridge")).unwrap();
        std::fs::copy(&me, dir.join("sbr")).unwrap();
        std::fs::write(dir.join("host-local"), "#!/bin/sh\nexit 0\n").unwrap();
        assert_eq!(
            exec.in_process(&dir.join("bridge")).map(|p| p.name),
            Some("bridge")
        );
        assert!(
            exec.in_process(&dir.join("sbr")).is_none(),
            "not a type of ours"
        );
        assert!(
            exec.in_process(&dir.join("host-local")).is_none(),
            "not our build"
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
