//! Links the unwinder statically into the plugin executables.
//!
//! A plugin is a process per CNI call, so its start-up is part of every ADD and DEL. Linked against `libgcc_s.so`
//! (rustc's default for linux-gnu) each start maps one more library and runs its constructor, which probes the CPU
//! with a dozen CPUID instructions; under virtualisation every CPUID is a VM exit (5.5 µs each on the benchmark
//! machine), together ~0.1 ms per exec. The same unwinder from `libgcc_eh.a` costs nothing at start-up, and with
//! its symbols defined here the linker's `--as-needed` drops `libgcc_s` from the executables.
//!
//! Only for dynamically linked linux-gnu targets, and only when the C compiler can name `libgcc_eh.a`; otherwise
//! the default linking stays.

use std::path::PathBuf;
use std::process::Command;

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    println!("cargo:rerun-if-env-changed=CC");
    let var = |k: &str| std::env::var(k).unwrap_or_default();
    let static_crt = var("CARGO_CFG_TARGET_FEATURE")
        .split(',')
        .any(|f| f == "crt-static");
    if var("CARGO_CFG_TARGET_OS") != "linux" || var("CARGO_CFG_TARGET_ENV") != "gnu" || static_crt {
        return;
    }
    if var("TARGET") != var("HOST") {
        return;
    }
    let cc = std::env::var("CC").unwrap_or_else(|_| "cc".into());
    let Ok(out) = Command::new(&cc)
        .arg("-print-file-name=libgcc_eh.a")
        .output()
    else {
        return;
    };
    let path = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
    if !out.status.success() || !path.is_absolute() || !path.is_file() {
        return;
    }
    let Some(dir) = path.parent() else {
        return;
    };
    println!("cargo:rustc-link-search=native={}", dir.display());
    // whole-archive: the references to the unwinder come from std, which is linked after this crate's own
    // libraries, so without it no member would be pulled in.
    println!("cargo:rustc-link-lib=static:+whole-archive,-bundle=gcc_eh");
}
