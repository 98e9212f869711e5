//! Computes the build id the plugins embed in their identity marker (`src/identity.rs`).
//!
//! A delegate found on `CNI_PATH` is run in-process only when it is the same build as the running plugin: then
//! exec'ing it would run this very code. "Same build" is decided by the code that would run: a hash of this crate's
//! and the `kernel` crate's sources and of the workspace's `Cargo.lock` (the versions of every dependency), so two
//! builds of the same tree agree (reproducibly, on any machine) and any change to what a plugin does changes the id.
//! FNV-1a, not a cryptographic hash: the marker tells our builds apart, it is no defence against a hostile file on
//! `CNI_PATH` (whoever can write there can replace the plugins themselves).

use std::path::{Path, PathBuf};

fn main() {
    let manifest =
        PathBuf::from(std::env::var("CARGO_MANIFEST_DIR").unwrap_or_else(|_| ".".into()));
    let mut files = Vec::new();
    for dir in [manifest.join("src"), manifest.join("../kernel/src")] {
        println!("cargo:rerun-if-changed={}", dir.display());
        collect(&dir, &mut files);
    }
    let lock = manifest.join("../../Cargo.lock");
    println!("cargo:rerun-if-changed={}", lock.display());
    files.push(lock);
    println!("cargo:rerun-if-changed=build.rs");
    // Sorted by path relative to the manifest, so the id does not depend on where the tree is checked out.
    let mut named: Vec<(String, PathBuf)> = files
        .into_iter()
        .map(|p| {
            let rel = p
                .strip_prefix(&manifest)
                .unwrap_or(&p)
                .to_string_lossy()
                .into_owned();
            (rel, p)
        })
        .collect();
    named.sort();
    let mut h = Fnv::new();
    h.add(
        std::env::var("CARGO_PKG_VERSION")
            .unwrap_or_default()
            .as_bytes(),
    );
    for (rel, p) in &named {
        h.add(rel.as_bytes());
        h.add(&std::fs::read(p).unwrap_or_default());
    }
    println!(
        "cargo:rustc-env=FLANNEL_RS_BUILD_ID={:016x}{:016x}",
        h.a, h.b
    );
}

/// Every file under `dir`, recursively (a missing directory adds nothing).
fn collect(dir: &Path, out: &mut Vec<PathBuf>) {
    let Ok(rd) = std::fs::read_dir(dir) else {
        return;
    };
    for e in rd.flatten() {
        let p = e.path();
        if p.is_dir() {
            collect(&p, out);
        } else {
            out.push(p);
        }
    }
}

/// Two FNV-1a 64 hashes with different offset bases, each input length-prefixed so that file boundaries count.
struct Fnv {
    a: u64,
    b: u64,
}

impl Fnv {
    fn new() -> Self {
        Self {
            a: 0xcbf2_9ce4_8422_2325,
            b: 0x6c62_272e_07bb_0142,
        }
    }

    fn add(&mut self, bytes: &[u8]) {
        for &x in (bytes.len() as u64).to_le_bytes().iter().chain(bytes) {
            self.a = (self.a ^ u64::from(x)).wrapping_mul(0x100_0000_01b3);
            self.b = (self.b ^ u64::from(x)).wrapping_mul(0x100_0000_01b3);
        }
    }
}
