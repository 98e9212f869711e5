//! The test policy of the whole workspace, in one place: **a test that cannot run here says so and is never
//! counted as passed**.
//!
//! Tests that need something the project cannot install — root (network namespaces), a kernel feature this
//! machine lacks — call [`require_root`] or [`require`] first (or a fixture does it for them). When the need is
//! not met the test stops there and is reported as *not run*, with the reason, in the `ignored` column of the test
//! summary, which `scripts/test.sh` totals as "not run". It is never `ok`.
//!
//! Under libtest's own harness the same call fails the test instead (a stop that libtest cannot tell from a
//! failure), which is still never a pass; test binaries that may run where a need is missing use this crate's
//! harness: `harness = false` in Cargo.toml and [`main!`] listing the tests. A test function not listed there is
//! dead code, which `cargo clippy -D warnings` refuses, so none is forgotten.
//!
//! What the project *does* install (etcd, the reference plugins, nft, iptables) is not a reason to skip: a
//! missing one is an install bug and fails the test.

use std::panic::{self, AssertUnwindSafe};

/// The panic payload that stops a test whose need is not met.
#[derive(Debug, Clone)]
pub struct NotRun(pub String);

/// Stops the calling test as *not run* unless `met`; `what` says what is missing and why the test needs it.
pub fn require(met: bool, what: &str) {
    if !met {
        panic::panic_any(NotRun(what.to_string()));
    }
}

/// Whether this process runs as root.
pub fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() == 0 }
}

/// Stops the calling test as *not run* unless it runs as root.
pub fn require_root() {
    require(
        is_root(),
        "needs root (it makes network namespaces, links and firewall rules); run the tests as root",
    );
}

/// Whether the kernel can create links of this kind (`ipvlan`, `vlan`, `vxlan`, ...): its module is loaded or
/// built in, or can be loaded on demand.
pub fn kernel_has_link_kind(kind: &str) -> bool {
    let m = match kind {
        "vlan" => "8021q",
        other => other,
    };
    std::path::Path::new(&format!("/sys/module/{m}")).exists()
        || std::fs::read_to_string("/proc/modules")
            .map(|t| t.lines().any(|l| l.split(' ').next() == Some(m)))
            .unwrap_or(false)
        || module_available(m)
}

fn module_available(m: &str) -> bool {
    let Ok(release) = std::fs::read_to_string("/proc/sys/kernel/osrelease") else {
        return false;
    };
    let dep = format!("/lib/modules/{}/modules.dep", release.trim());
    std::fs::read_to_string(dep)
        .map(|t| {
            t.lines().any(|l| {
                l.split(':').next().is_some_and(|p| {
                    p.rsplit('/').next().is_some_and(|f| {
                        f == format!("{m}.ko") || f.starts_with(&format!("{m}.ko."))
                    })
                })
            })
        })
        .unwrap_or(false)
}

/// One test of a binary run by [`run`].
pub struct Test {
    /// Its name, as printed and as filtered by `cargo test NAME`.
    pub name: &'static str,
    /// The test.
    pub run: fn(),
}

/// Runs the tests with libtest's command line and output; a test stopped by [`require`] is reported as
/// `ignored (NOT RUN: <reason>)`. Never returns.
pub fn run(tests: Vec<Test>) -> ! {
    // The stop of a test that cannot run is not a crash: keep the panic message for real failures only.
    let default_hook = panic::take_hook();
    panic::set_hook(Box::new(move |info| {
        if info.payload().downcast_ref::<NotRun>().is_none() {
            default_hook(info);
        }
    }));
    let args = libtest_mimic::Arguments::from_args();
    let limit = test_time_limit();
    let trials = tests
        .into_iter()
        .map(|t| {
            let f = t.run;
            let name = t.name;
            libtest_mimic::Trial::ignorable_test(name, move || {
                match run_bounded(name, f, limit) {
                    Ok(()) => Ok(libtest_mimic::Completion::Completed),
                    Err(p) => match p.downcast::<NotRun>() {
                        Ok(nr) => Ok(libtest_mimic::Completion::ignored_with(format!(
                            "NOT RUN: {}",
                            nr.0
                        ))),
                        // libtest-mimic turns the panic into a failure with its message.
                        Err(other) => panic::resume_unwind(other),
                    },
                }
            })
        })
        .collect();
    libtest_mimic::run(&args, trials).exit()
}

/// How long one test may run before the whole binary is stopped: `TESTKIT_TEST_TIMEOUT` seconds, 600 by default.
/// Far above any test's run time here; it exists so that a test stuck on a wait that never ends (a server waiting
/// for a client that failed) fails its binary visibly, and the rest of the suite still runs, instead of holding the
/// whole CI run until its time limit.
fn test_time_limit() -> std::time::Duration {
    let secs = std::env::var("TESTKIT_TEST_TIMEOUT")
        .ok()
        .and_then(|v| v.parse::<u64>().ok())
        .filter(|&s| s > 0)
        .unwrap_or(600);
    std::time::Duration::from_secs(secs)
}

/// Runs `f` on a thread of its own and waits for it at most `limit`. Past that the test cannot be stopped from
/// outside (a thread cannot be killed), so the process exits with a failure naming the test: its namespaces stay
/// behind (each test's names are unique, so no other test is affected), which is the lesser harm.
fn run_bounded(
    name: &'static str,
    f: fn(),
    limit: std::time::Duration,
) -> Result<(), Box<dyn std::any::Any + Send>> {
    let (tx, rx) = std::sync::mpsc::channel();
    let spawned = std::thread::Builder::new()
        .name(name.to_string())
        .spawn(move || {
            let r = panic::catch_unwind(AssertUnwindSafe(f));
            let _ = tx.send(());
            r
        });
    let handle = match spawned {
        Ok(h) => h,
        // No thread to spare: run it here, unbounded, rather than not at all.
        Err(_) => return panic::catch_unwind(AssertUnwindSafe(f)),
    };
    match rx.recv_timeout(limit) {
        Ok(()) | Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => {
            handle.join().unwrap_or_else(Err)
        }
        Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {
            eprintln!(
                "test {name} did not finish within {} s (TESTKIT_TEST_TIMEOUT): stopping this test binary as failed",
                limit.as_secs()
            );
            std::process::exit(101);
        }
    }
}

/// The `main` of a test binary with `harness = false`: lists its tests, and after a `;` any expressions giving
/// more (`Vec<Test>`, for tests a macro generates).
///
/// ```text
/// testkit::main!(vxlan_three_nodes_full_mesh, host_gw_routes_via_public_ips; ours::tests(), reference::tests());
/// ```
#[macro_export]
macro_rules! main {
    ($($test:ident),* $(,)? $(; $($more:expr),+ $(,)?)?) => {
        fn main() {
            #[allow(unused_mut)]
            let mut tests = vec![$($crate::Test { name: stringify!($test), run: $test }),*];
            $($(tests.extend($more);)+)?
            $crate::run(tests)
        }
    };
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn require_stops_with_the_reason() {
        let r = panic::catch_unwind(|| require(false, "needs a unicorn"));
        let p = r.expect_err("stopped");
        assert_eq!(
            p.downcast_ref::<NotRun>().map(|n| n.0.as_str()),
            Some("needs a unicorn")
        );
        assert!(panic::catch_unwind(|| require(true, "x")).is_ok());
    }

    #[test]
    fn link_kinds() {
        // The bridge and veth drivers exist on every kernel the project runs on; nonsense never does.
        assert!(!kernel_has_link_kind("no-such-link-kind"));
    }
}
