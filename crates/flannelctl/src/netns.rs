//! A named network namespace that is removed when dropped (for benchmarks), over the kernel layer's
//! `create_named`/`delete_named`.

use anyhow::{Context, Result};
use std::path::{Path, PathBuf};

/// A named network namespace under /run/netns, removed on drop.
#[derive(Debug)]
pub struct NamedNetns {
    name: String,
    path: PathBuf,
}

impl NamedNetns {
    /// Creates `/run/netns/<name>` holding a new, empty network namespace.
    pub fn create(name: &str) -> Result<Self> {
        let ns = kernel::netns::create_named(name)
            .with_context(|| format!("create network namespace {name}"))?;
        Ok(Self {
            name: name.to_string(),
            path: ns.path().to_path_buf(),
        })
    }

    /// The path a runtime passes as `CNI_NETNS`.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for NamedNetns {
    fn drop(&mut self) {
        let _ = kernel::netns::delete_named(&self.name);
    }
}
