//! The plugins, as library modules: each binary is a thin `main` over one of them, and a delegating plugin can run
//! another in-process.

pub mod bridge;
pub mod flannel;
pub mod host_local;
pub mod loopback;

use crate::skel::{self, CmdArgs, Outcome};
use std::future::Future;
use std::pin::Pin;

/// The plugins built into this crate.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Builtin {
    /// `flannel` meta-plugin.
    Flannel,
    /// `bridge`.
    Bridge,
    /// `host-local` IPAM.
    HostLocal,
    /// `loopback`.
    Loopback,
}

impl Builtin {
    /// The plugin for a CNI `type`, if it is one of ours.
    pub fn from_type(t: &str) -> Option<Self> {
        Some(match t {
            "flannel" => Self::Flannel,
            "bridge" => Self::Bridge,
            "host-local" => Self::HostLocal,
            "loopback" => Self::Loopback,
            _ => return None,
        })
    }

    /// The CNI `type` (and binary name).
    pub fn type_name(self) -> &'static str {
        match self {
            Self::Flannel => "flannel",
            Self::Bridge => "bridge",
            Self::HostLocal => "host-local",
            Self::Loopback => "loopback",
        }
    }
}

/// Runs a builtin plugin on already-validated arguments (the configuration is re-checked the same way the
/// process entry point checks it, so in-process and exec'd delegates behave alike).
pub fn run(kind: Builtin, args: CmdArgs) -> Pin<Box<dyn Future<Output = Outcome>>> {
    Box::pin(async move {
        let conf = skel::load_conf(&args)?;
        match kind {
            Builtin::HostLocal => host_local::run(&args, &conf),
            Builtin::Bridge => bridge::run(&args, &conf).await,
            Builtin::Loopback => loopback::run(&args, &conf).await,
            Builtin::Flannel => flannel::run(&args, &conf).await,
        }
    })
}

/// The process entry point of a plugin binary.
pub fn main(kind: Builtin) -> ! {
    let about = format!("CNI {} plugin", kind.type_name());
    skel::main(&about, |args| {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| crate::CniError::internal(format!("failed to start runtime: {e}")))?;
        rt.block_on(run(kind, args))
    })
}
