//! The flanneld executable: parse flags, set up logging, run the daemon.

use flanneld::daemon::{self, Exit};
use tracing_subscriber::EnvFilter;

fn main() {
    let opts = flanneld::cli::parse();
    if opts.version {
        println!("{}", env!("CARGO_PKG_VERSION"));
        return;
    }
    // klog-style -v: 0 is info, higher numbers add detail; RUST_LOG overrides.
    let level = match opts.v {
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
