//! What a lab made, saved as it goes so `lab down` can remove it even after a crash of `lab up`.

use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

/// Everything the lab keeps lives under this directory.
pub const LAB_DIR: &str = "/run/flannel-lab";
/// Every namespace the lab makes carries this prefix; nothing else is ever touched.
pub const PREFIX: &str = "flab-";

/// One simulated node.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Node {
    /// Short name (`n1`).
    pub name: String,
    /// Its network namespace.
    pub netns: String,
    /// Underlay address.
    pub ip: String,
    /// flanneld's pid, once started.
    pub pid: Option<u32>,
}

/// One pod.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Pod {
    /// Short name (`n1-p1`).
    pub name: String,
    /// Its network namespace.
    pub netns: String,
    /// The node it runs on.
    pub node: String,
    /// Its IPv4 address, once attached.
    pub ip: Option<String>,
}

/// The lab's record.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct State {
    /// Backend type.
    pub backend: String,
    /// `local` or `etcd`.
    pub store: String,
    /// The fabric namespace (underlay switch, etcd).
    pub fabric: String,
    /// Nodes.
    pub nodes: Vec<Node>,
    /// Pods.
    pub pods: Vec<Pod>,
    /// etcd's pid when `--store etcd`.
    pub etcd_pid: Option<u32>,
}

/// The state file path.
pub fn path() -> PathBuf {
    Path::new(LAB_DIR).join("state.json")
}

impl State {
    /// Reads the saved state, if any.
    pub fn load() -> Option<State> {
        let text = std::fs::read_to_string(path()).ok()?;
        serde_json::from_str(&text).ok()
    }

    /// Saves the state (atomically).
    pub fn save(&self) -> anyhow::Result<()> {
        std::fs::create_dir_all(LAB_DIR)?;
        let tmp = Path::new(LAB_DIR).join(".state.json.tmp");
        std::fs::write(&tmp, serde_json::to_vec_pretty(self)?)?;
        std::fs::rename(&tmp, path())?;
        Ok(())
    }

    /// The directory of one node's files (subnet.env, logs, CNI data).
    pub fn node_dir(node: &str) -> PathBuf {
        Path::new(LAB_DIR).join(node)
    }
}
