//! The flanneld executable: parse flags, set up logging, run the daemon (or the `install-cni` step).

use flanneld::daemon::{self, Exit};
use tracing_subscriber::EnvFilter;

fn main() {
    // The DaemonSet's init step is a subcommand of this binary (one image, one build): `flanneld install-cni`.
    // Upstream flanneld takes no positional arguments, so this name cannot clash with its command lines.
    let mut args = std::env::args_os();
    if args.nth(1).is_some_and(|a| a == "install-cni") {
        init_logging(0);
        std::process::exit(flanneld::install_cni::main(args.collect()));
    }
    let opts = flanneld::cli::parse();
    if opts.version {
        println!("{}", env!("CARGO_PKG_VERSION"));
        return;
    }
    init_logging(opts.v);
    flanneld::memory::one_heap_arena();

    let rt = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("flanneld: cannot start the async runtime: {e}");
            std::process::exit(1);
        }
    };
    let code = match rt.block_on(daemon::run(opts)) {
        Ok(Exit::Signal) => 0,
        Ok(Exit::LeaseRevoked) => 0,
        Err(e) => {
            tracing::error!("{e:#}");
            1
        }
    };
    rt.shutdown_timeout(std::time::Duration::from_secs(1));
    std::process::exit(code);
}

/// klog-style -v: 0 is info, higher numbers add detail; RUST_LOG overrides.
fn init_logging(v: i32) {
    let level = match v {
        i32::MIN..=0 => "info",
        1..=4 => "debug",
        _ => "trace",
    };
    // -v raises flannel-rs's own messages only: at debug, the HTTP/2 and gRPC stacks under the etcd client dump
    // every frame (82 of 101 lines in 4 s), so dependencies stay at warn unless RUST_LOG asks for them.
    let ours = ["flanneld", "subnet", "kernel", "cni"]
        .iter()
        .map(|c| format!("{c}={level}"))
        .collect::<Vec<_>>()
        .join(",");
    let filter = EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| EnvFilter::new(format!("warn,{ours}")));
    // Colours only on a terminal: log files and the journal get plain text.
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(std::io::stderr)
        .init();
}
