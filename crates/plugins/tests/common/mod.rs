//! Shared harness for the black-box plugin tests.
//!
//! The tests exec the plugin binaries exactly as a container runtime does: `CNI_*` environment, configuration on
//! stdin, result or error JSON on stdout. Nothing touches the root network namespace: every test gets a private
//! "node" namespace (the plugin process `setns`es into it before `exec`) and pods are further namespaces whose
//! `/run/netns/<name>` path is `CNI_NETNS`. All on-disk state lives in a per-test temporary directory.
//!
//! `ip -j` is used as an independent oracle for kernel state (the product code never shells out to `ip`).

#![allow(dead_code)]

use cni::conflist::{ListError, NetConfList};
use cni::types::Attachment;
use cni::Command as CniCommand;
use serde_json::{json, Map, Value};
use std::collections::BTreeMap;
use std::fmt;
use std::fs::File;
use std::io::Write;
use std::net::IpAddr;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

/// Where Debian's reference plugins live.
pub const REFERENCE_DIR: &str = "/usr/lib/cni";

/// Spec versions both our plugins and the reference ones speak (besides 1.1.0, which only ours do).
pub const VERSIONS: &[&str] = &["0.2.0", "0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0"];

// ------------------------------------------------------------------------------------------------
// Preconditions
// ------------------------------------------------------------------------------------------------

/// Stops the test as not run without root (testkit's policy: never counted as passed).
pub fn require_root() {
    testkit::require_root();
}

// ------------------------------------------------------------------------------------------------
// Names, namespaces, temporary directories
// ------------------------------------------------------------------------------------------------

static COUNTER: AtomicU32 = AtomicU32::new(0);

/// A process-unique short prefix `frt<pid>x<n>` (at most 3+7+1+3 chars, so `<prefix>p31` still fits 15).
pub fn unique_prefix() -> String {
    format!(
        "frt{}x{}",
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::Relaxed)
    )
}

/// A named network namespace, `ip netns add`ed on creation and `ip netns del`eted on drop (also on panic).
pub struct Netns {
    pub name: String,
}

impl Netns {
    /// Creates `/run/netns/<name>`.
    pub fn new(name: &str) -> Self {
        let out = Command::new("ip")
            .args(["netns", "add", name])
            .output()
            .expect("run ip netns add");
        assert!(
            out.status.success(),
            "ip netns add {name}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        // Loopback stays down: bringing it up is the `loopback` plugin's job.
        Self {
            name: name.to_string(),
        }
    }

    /// `/run/netns/<name>`: what a runtime passes as `CNI_NETNS`.
    pub fn path(&self) -> String {
        format!("/run/netns/{}", self.name)
    }

    /// Deletes the namespace now (idempotent; the drop then does nothing).
    pub fn delete(&self) {
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .stderr(Stdio::null())
            .status();
    }

    /// Whether `/run/netns/<name>` still exists.
    pub fn exists(&self) -> bool {
        Path::new(&self.path()).exists()
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        if self.exists() {
            self.delete();
        }
    }
}

impl fmt::Debug for Netns {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Netns({})", self.name)
    }
}

/// A temporary directory removed on drop.
pub struct TempDir {
    pub path: PathBuf,
}

impl TempDir {
    pub fn new(tag: &str) -> Self {
        let path = std::env::temp_dir().join(format!("{tag}-tmp"));
        let _ = std::fs::remove_dir_all(&path);
        std::fs::create_dir_all(&path).expect("create temp dir");
        Self { path }
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.path);
    }
}

/// One test's world: a unique prefix, a node namespace and a temporary directory.
pub struct Sandbox {
    pub id: String,
    pub node: Netns,
    pub tmp: TempDir,
}

impl Sandbox {
    pub fn new() -> Self {
        let id = unique_prefix();
        let node = Netns::new(&format!("{id}n"));
        let tmp = TempDir::new(&id);
        Self { id, node, tmp }
    }

    /// A fresh pod namespace `<id>p<i>`.
    pub fn pod(&self, i: usize) -> Netns {
        Netns::new(&format!("{}p{i}", self.id))
    }

    /// `n` fresh pod namespaces.
    pub fn pods(&self, n: usize) -> Vec<Netns> {
        (0..n).map(|i| self.pod(i)).collect()
    }

    /// A container ID unique to this test.
    pub fn cid(&self, i: usize) -> String {
        format!("{}c{i}", self.id)
    }

    /// A path inside the temporary directory.
    pub fn path(&self, rel: &str) -> PathBuf {
        self.tmp.path.join(rel)
    }

    /// A runtime that runs `imp`'s plugins inside the node namespace.
    pub fn runtime(&self, imp: &Impl) -> Runtime {
        Runtime {
            cni_path: imp.cni_path(),
            node: Some(self.node.path()),
            env: self.env(),
        }
    }

    /// A runtime with an explicit search path.
    pub fn runtime_with_path(&self, dirs: Vec<PathBuf>) -> Runtime {
        Runtime {
            cni_path: dirs,
            node: Some(self.node.path()),
            env: self.env(),
        }
    }

    /// Variables every plugin of this sandbox gets besides the `CNI_*` ones: files our plugins would otherwise
    /// read from /etc (the tuning allowlist) are pointed into the temporary directory.
    pub fn env(&self) -> Vec<(String, String)> {
        vec![(
            "FLANNEL_RS_TUNING_ALLOWLIST".into(),
            self.path("allowlist.conf").display().to_string(),
        )]
    }

    /// The attachment of container `i` in `pod`, interface `eth0`.
    pub fn att(&self, i: usize, pod: &Netns) -> Att {
        Att::new(&self.cid(i), &pod.path(), "eth0")
    }
}

impl Default for Sandbox {
    fn default() -> Self {
        Self::new()
    }
}

// ------------------------------------------------------------------------------------------------
// Plugin implementations under test
// ------------------------------------------------------------------------------------------------

/// A directory of plugins: ours (`target/<profile>`) or the reference ones.
#[derive(Clone, Debug)]
pub struct Impl {
    pub label: &'static str,
    pub dir: PathBuf,
    pub reference: bool,
}

impl Impl {
    /// Our freshly built binaries.
    pub fn ours() -> Self {
        let bridge = Path::new(env!("CARGO_BIN_EXE_bridge"));
        let dir = bridge.parent().expect("bin dir").to_path_buf();
        for b in [
            env!("CARGO_BIN_EXE_flannel"),
            env!("CARGO_BIN_EXE_host-local"),
            env!("CARGO_BIN_EXE_loopback"),
        ] {
            assert_eq!(
                Path::new(b).parent(),
                Some(dir.as_path()),
                "all plugin binaries in one dir"
            );
        }
        Self {
            label: "ours",
            dir,
            reference: false,
        }
    }

    /// Debian's reference plugins (containernetworking-plugins, which scripts/deps.sh installs: missing fails).
    pub fn reference() -> Self {
        let dir = PathBuf::from(REFERENCE_DIR);
        if dir.join("bridge").exists()
            && dir.join("host-local").exists()
            && dir.join("loopback").exists()
        {
            Self {
                label: "reference",
                dir,
                reference: true,
            }
        } else {
            panic!(
                "the reference plugins are missing in {REFERENCE_DIR}: install containernetworking-plugins \
                 (scripts/deps.sh does)"
            )
        }
    }

    pub fn bin(&self, ty: &str) -> PathBuf {
        self.dir.join(ty)
    }

    pub fn cni_path(&self) -> Vec<PathBuf> {
        vec![self.dir.clone()]
    }

    /// The newest spec version this implementation speaks.
    pub fn newest_version(&self) -> &'static str {
        if self.reference {
            "1.0.0"
        } else {
            "1.1.0"
        }
    }

    /// Whether this implementation speaks `v`.
    pub fn speaks(&self, v: &str) -> bool {
        !(self.reference && v == "1.1.0")
    }

    /// The code returned for a configuration error such as a /31 subnet (the Go plugins wrap it as 999).
    pub fn config_error_code(&self) -> u64 {
        if self.reference {
            999
        } else {
            7
        }
    }
}

// ------------------------------------------------------------------------------------------------
// Invoking plugins
// ------------------------------------------------------------------------------------------------

/// What a plugin process produced.
pub struct Out {
    pub status: ExitStatus,
    pub stdout: String,
    pub stderr: String,
    pub elapsed: Duration,
}

impl Out {
    pub fn ok(&self) -> bool {
        self.status.success()
    }

    /// stdout parsed as JSON (panics with the full output when it is not JSON).
    pub fn json(&self) -> Value {
        serde_json::from_str(self.stdout.trim())
            .unwrap_or_else(|e| panic!("stdout is not JSON ({e}): {self:?}"))
    }

    /// The error code from the error JSON.
    pub fn code(&self) -> u64 {
        self.json()["code"]
            .as_u64()
            .unwrap_or_else(|| panic!("no numeric error code: {self:?}"))
    }

    /// The error message.
    pub fn msg(&self) -> String {
        let v = self.json();
        format!(
            "{} {}",
            v["msg"].as_str().unwrap_or_default(),
            v["details"].as_str().unwrap_or_default()
        )
    }

    /// Asserts a failure with error JSON carrying `code` on stdout.
    pub fn assert_err(&self, code: u64) -> &Self {
        assert!(
            !self.ok(),
            "expected failure with code {code}, got success: {self:?}"
        );
        assert_eq!(self.code(), code, "wrong error code: {self:?}");
        assert!(
            self.json().get("msg").and_then(Value::as_str).is_some(),
            "error JSON without msg: {self:?}"
        );
        self
    }

    /// Asserts a failure with some error JSON; returns the code.
    pub fn assert_some_err(&self) -> u64 {
        assert!(!self.ok(), "expected failure, got success: {self:?}");
        self.code()
    }
}

impl fmt::Debug for Out {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "exit {:?} after {:?}\n--- stdout ---\n{}\n--- stderr ---\n{}",
            self.status,
            self.elapsed,
            self.stdout.trim_end(),
            self.stderr.trim_end()
        )
    }
}

/// A set of `CNI_*` variables; `None` leaves a variable unset.
#[derive(Clone, Debug, Default)]
pub struct Env {
    pub vars: BTreeMap<String, String>,
}

impl Env {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn set(mut self, k: &str, v: &str) -> Self {
        self.vars.insert(k.to_string(), v.to_string());
        self
    }

    pub fn unset(mut self, k: &str) -> Self {
        self.vars.remove(k);
        self
    }

    /// The variables a runtime sets for `cmd` on attachment `att` (or none for VERSION/GC/STATUS).
    pub fn for_cmd(cmd: &str, att: Option<&Att>, cni_path: &str) -> Self {
        let mut e = Self::new()
            .set("CNI_COMMAND", cmd)
            .set("CNI_PATH", cni_path);
        if let Some(a) = att {
            e = e
                .set("CNI_CONTAINERID", &a.container_id)
                .set("CNI_NETNS", &a.netns)
                .set("CNI_IFNAME", &a.ifname)
                .set("CNI_ARGS", &a.args);
        }
        e
    }
}

/// Builds the command for one plugin invocation, running it inside `node` (a netns path) if given.
pub fn plugin_command(bin: &Path, node: Option<&str>, env: &Env) -> Command {
    let mut cmd = Command::new(bin);
    cmd.env_clear();
    cmd.env(
        "PATH",
        std::env::var("PATH").unwrap_or_else(|_| "/usr/sbin:/usr/bin:/sbin:/bin".into()),
    );
    for k in ["RUST_LOG", "RUST_BACKTRACE"] {
        if let Ok(v) = std::env::var(k) {
            cmd.env(k, v);
        }
    }
    cmd.envs(&env.vars);
    cmd.stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    if let Some(node) = node {
        let fd = File::open(node).unwrap_or_else(|e| panic!("open {node}: {e}"));
        // SAFETY: setns is a plain syscall, async-signal-safe; nothing is allocated between fork and exec.
        unsafe {
            cmd.pre_exec(move || {
                nix::sched::setns(&fd, nix::sched::CloneFlags::CLONE_NEWNET)
                    .map_err(std::io::Error::from)
            });
        }
    }
    cmd
}

/// Starts a plugin and writes `stdin` to it (closing stdin afterwards).
pub fn spawn_plugin(bin: &Path, node: Option<&str>, env: &Env, stdin: &[u8]) -> Child {
    let mut child = plugin_command(bin, node, env)
        .spawn()
        .unwrap_or_else(|e| panic!("spawn {}: {e}", bin.display()));
    let mut si = child.stdin.take().expect("stdin");
    // The plugin may exit before reading (e.g. a missing variable): a broken pipe is fine.
    let _ = si.write_all(stdin);
    drop(si);
    child
}

/// Runs a plugin to completion.
pub fn exec_plugin(bin: &Path, node: Option<&str>, env: &Env, stdin: &[u8]) -> Out {
    let start = Instant::now();
    let child = spawn_plugin(bin, node, env, stdin);
    let out = child.wait_with_output().expect("wait for plugin");
    Out {
        status: out.status,
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        elapsed: start.elapsed(),
    }
}

/// Starts a plugin like [`exec_plugin`] and SIGKILLs it after `after` (the SIGKILL-at-any-point tests); whether
/// the kill landed before the plugin finished.
pub fn exec_plugin_killed(
    bin: &Path,
    node: Option<&str>,
    env: &Env,
    stdin: &[u8],
    after: Duration,
) -> bool {
    let mut child = spawn_plugin(bin, node, env, stdin);
    std::thread::sleep(after);
    let _ = child.kill();
    !child.wait().expect("wait for plugin").success()
}

/// Runs a plugin like [`exec_plugin`] but gives up after `limit`: the plugin is killed and `None` returned. For
/// inputs that must not make a plugin block; the limit only keeps a regression from hanging the suite and is far
/// above any real answer time (this is no latency assertion).
pub fn exec_plugin_bounded(
    bin: &Path,
    node: Option<&str>,
    env: &Env,
    stdin: &[u8],
    limit: Duration,
) -> Option<Out> {
    let start = Instant::now();
    let mut child = spawn_plugin(bin, node, env, stdin);
    let step = Duration::from_millis(10);
    let steps = (limit.as_millis() / step.as_millis()).max(1);
    for _ in 0..steps {
        if child.try_wait().expect("poll plugin").is_some() {
            let out = child.wait_with_output().expect("collect plugin output");
            return Some(Out {
                status: out.status,
                stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
                stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
                elapsed: start.elapsed(),
            });
        }
        std::thread::sleep(step);
    }
    let _ = child.kill();
    let _ = child.wait();
    None
}

// ------------------------------------------------------------------------------------------------
// A tiny runtime: conflists run by the library's libcni logic (cni::conflist), plugins exec'd here
// ------------------------------------------------------------------------------------------------

/// One attachment (what a runtime keys an ADD/DEL by).
#[derive(Clone, Debug)]
pub struct Att {
    pub container_id: String,
    pub netns: String,
    pub ifname: String,
    pub args: String,
}

impl Att {
    pub fn new(container_id: &str, netns: &str, ifname: &str) -> Self {
        Self {
            container_id: container_id.to_string(),
            netns: netns.to_string(),
            ifname: ifname.to_string(),
            args: "IgnoreUnknown=1;K8S_POD_NAMESPACE=default;K8S_POD_NAME=frt".to_string(),
        }
    }
}

/// A network: name, version and a list of plugin objects (a conflist).
#[derive(Clone, Debug)]
pub struct Net {
    pub name: String,
    pub version: String,
    pub plugins: Vec<Value>,
}

impl Net {
    pub fn new(name: &str, version: &str, plugins: Vec<Value>) -> Self {
        Self {
            name: name.to_string(),
            version: version.to_string(),
            plugins,
        }
    }

    /// The conflist as the library parses it.
    pub fn list(&self) -> NetConfList {
        let v = json!({"cniVersion": self.version, "name": self.name, "plugins": self.plugins});
        NetConfList::parse(v.to_string().as_bytes()).unwrap_or_else(|e| panic!("conflist {v}: {e}"))
    }

    /// The per-plugin request: plugin object + `cniVersion` + `name` (+ `prevResult`), as libcni builds it.
    pub fn plugin_conf(&self, i: usize, prev: Option<&Value>) -> Value {
        self.list()
            .plugin_conf(i, &self.version, &Map::new(), prev)
            .unwrap_or_else(|| panic!("no plugin {i} in {:?}", self.plugins))
    }
}

/// Compares dotted versions.
pub fn version_at_least(v: &str, min: &str) -> bool {
    let p = |s: &str| -> Vec<u32> { s.split('.').map(|x| x.parse().unwrap_or(0)).collect() };
    p(v) >= p(min)
}

/// A list command the library refused before running any plugin is a mistake in the test itself.
fn plugin_failure(e: ListError<Out>) -> Out {
    match e {
        ListError::Plugin(out) => out,
        ListError::Unsupported(e) => panic!("the test asked for a command its version lacks: {e}"),
    }
}

/// Runs plugins found on a search path, inside a node namespace.
#[derive(Clone, Debug)]
pub struct Runtime {
    pub cni_path: Vec<PathBuf>,
    pub node: Option<String>,
    /// Variables added to every invocation (see [`Sandbox::env`]).
    pub env: Vec<(String, String)>,
}

impl Runtime {
    pub fn cni_path_str(&self) -> String {
        self.cni_path
            .iter()
            .map(|p| p.display().to_string())
            .collect::<Vec<_>>()
            .join(":")
    }

    /// The first `ty` on the search path.
    pub fn find(&self, ty: &str) -> PathBuf {
        self.cni_path
            .iter()
            .map(|d| d.join(ty))
            .find(|p| p.exists())
            .unwrap_or_else(|| panic!("plugin {ty} not found on {:?}", self.cni_path))
    }

    /// Runs `ty` with an explicit environment.
    pub fn exec_env(&self, ty: &str, env: &Env, stdin: &[u8]) -> Out {
        exec_plugin(&self.find(ty), self.node.as_deref(), env, stdin)
    }

    /// Runs `ty` for `cmd` on `att` with `conf` on stdin.
    /// The environment of `cmd` on `att`: the `CNI_*` variables and the sandbox's own.
    pub fn env_for(&self, cmd: &str, att: Option<&Att>) -> Env {
        let mut e = Env::for_cmd(cmd, att, &self.cni_path_str());
        for (k, v) in &self.env {
            e = e.set(k, v);
        }
        e
    }

    pub fn exec(&self, ty: &str, cmd: &str, att: Option<&Att>, conf: &Value) -> Out {
        let env = self.env_for(cmd, att);
        self.exec_env(ty, &env, conf.to_string().as_bytes())
    }

    /// Runs `ty` for `cmd` on `att`, killing it after `limit` (see [`exec_plugin_bounded`]).
    pub fn exec_bounded(
        &self,
        ty: &str,
        cmd: &str,
        att: Option<&Att>,
        conf: &Value,
        limit: Duration,
    ) -> Option<Out> {
        let env = self.env_for(cmd, att);
        exec_plugin_bounded(
            &self.find(ty),
            self.node.as_deref(),
            &env,
            conf.to_string().as_bytes(),
            limit,
        )
    }

    /// Starts `ty` for `cmd` without waiting.
    pub fn spawn(&self, ty: &str, cmd: &str, att: Option<&Att>, conf: &Value) -> Child {
        let env = self.env_for(cmd, att);
        spawn_plugin(
            &self.find(ty),
            self.node.as_deref(),
            &env,
            conf.to_string().as_bytes(),
        )
    }

    /// What the list runner calls for each plugin: exec it for `att` (none for GC and STATUS); a failure is its
    /// output, an ADD's result its stdout as JSON; a DEL must print nothing.
    fn invoker<'a>(
        &'a self,
        att: Option<&'a Att>,
    ) -> impl FnMut(&str, CniCommand, &Value) -> Result<Option<Value>, Out> + 'a {
        move |ty, cmd, conf| {
            let out = self.exec(ty, cmd.as_str(), att, conf);
            if !out.ok() {
                return Err(out);
            }
            match cmd {
                CniCommand::Add => Ok(Some(out.json())),
                CniCommand::Del => {
                    assert!(
                        out.stdout.trim().is_empty(),
                        "DEL printed something: {out:?}"
                    );
                    Ok(None)
                }
                _ => Ok(None),
            }
        }
    }

    /// ADD: plugins in order, each getting the previous result; the final result.
    pub fn add(&self, net: &Net, att: &Att) -> Result<Value, Out> {
        net.list()
            .add(&net.version, &Map::new(), self.invoker(Some(att)))
            .map(|r| r.unwrap_or(Value::Null))
    }

    /// ADD with capability arguments (`runtimeConfig` for the plugins that declare the capability).
    pub fn add_rc(&self, net: &Net, att: &Att, rc: &Map<String, Value>) -> Result<Value, Out> {
        net.list()
            .add(&net.version, rc, self.invoker(Some(att)))
            .map(|r| r.unwrap_or(Value::Null))
    }

    /// DEL with capability arguments.
    pub fn del_rc(
        &self,
        net: &Net,
        att: &Att,
        rc: &Map<String, Value>,
        prev: Option<&Value>,
    ) -> Result<(), Out> {
        net.list()
            .del(&net.version, rc, prev, self.invoker(Some(att)))
    }

    /// CHECK with capability arguments.
    pub fn check_rc(
        &self,
        net: &Net,
        att: &Att,
        rc: &Map<String, Value>,
        prev: &Value,
    ) -> Result<(), Out> {
        net.list()
            .check(&net.version, rc, prev, self.invoker(Some(att)))
            .map_err(plugin_failure)
    }

    /// DEL: plugins in reverse order, each getting the final ADD result (from 0.4.0 on).
    pub fn del(&self, net: &Net, att: &Att, prev: Option<&Value>) -> Result<(), Out> {
        net.list()
            .del(&net.version, &Map::new(), prev, self.invoker(Some(att)))
    }

    /// CHECK: plugins in order with the final ADD result (0.4.0 and later).
    pub fn check(&self, net: &Net, att: &Att, prev: &Value) -> Result<(), Out> {
        net.list()
            .check(&net.version, &Map::new(), prev, self.invoker(Some(att)))
            .map_err(plugin_failure)
    }

    /// GC with the still-valid attachments: every plugin, continuing on errors; the errors (1.1.0 and later).
    pub fn gc(&self, net: &Net, valid: &[(&str, &str)]) -> Result<(), Vec<Out>> {
        let valid: Vec<Attachment> = valid
            .iter()
            .map(|(c, i)| Attachment {
                container_id: c.to_string(),
                ifname: i.to_string(),
            })
            .collect();
        net.list().gc(&net.version, &valid, self.invoker(None))
    }

    /// STATUS: every plugin, stopping at the first error (1.1.0 and later).
    pub fn status(&self, net: &Net) -> Result<(), Out> {
        net.list()
            .status(&net.version, self.invoker(None))
            .map_err(plugin_failure)
    }

    /// VERSION of `ty` given `version` in the input.
    pub fn version(&self, ty: &str, version: &str) -> Out {
        self.exec(ty, "VERSION", None, &json!({ "cniVersion": version }))
    }
}

// ------------------------------------------------------------------------------------------------
// Configurations
// ------------------------------------------------------------------------------------------------

/// A bridge + host-local plugin object (no masquerade, so no firewall rules are needed).
pub fn bridge_conf(bridge: &str, subnet: &str, data_dir: &Path) -> Value {
    json!({
        "type": "bridge",
        "bridge": bridge,
        "isGateway": true,
        "ipMasq": false,
        "ipam": {
            "type": "host-local",
            "subnet": subnet,
            "dataDir": data_dir,
        }
    })
}

/// Writes a flannel `subnet.env` (the layout flanneld writes).
pub fn write_subnet_env(path: &Path, network: &str, subnet: &str, mtu: u32, ipmasq: bool) {
    let body = format!("FLANNEL_NETWORK={network}\nFLANNEL_SUBNET={subnet}\nFLANNEL_MTU={mtu}\nFLANNEL_IPMASQ={ipmasq}\n");
    std::fs::write(path, body).expect("write subnet.env");
}

/// The subnet.env a flanneld with lease 10.244.1.0/24 of 10.244.0.0/16 (vxlan MTU 1450, --ip-masq) writes, in the
/// sandbox where [`flannel_conf`] points.
pub fn write_default_subnet_env(sb: &Sandbox) {
    write_subnet_env(
        &sb.path("subnet.env"),
        "10.244.0.0/16",
        "10.244.1.1/24",
        1450,
        true,
    );
}

/// The flannel plugin object as in the upstream manifest, with every path inside the sandbox.
pub fn flannel_conf(sb: &Sandbox) -> Value {
    json!({
        "type": "flannel",
        "subnetFile": sb.path("subnet.env"),
        "dataDir": sb.path("flannel"),
        "ipam": { "dataDir": sb.path("ipam") },
        "delegate": { "hairpinMode": true, "isDefaultGateway": true }
    })
}

/// Where the flannel plugin of [`flannel_conf`] caches the delegate config of an attachment.
pub fn flannel_cache(sb: &Sandbox, att: &Att) -> PathBuf {
    sb.path("flannel")
        .join(format!("{}:{}", att.container_id, att.ifname))
}

/// The cache name upstream flannel and earlier versions use: the container ID alone.
pub fn flannel_legacy_cache(sb: &Sandbox, att: &Att) -> PathBuf {
    sb.path("flannel").join(&att.container_id)
}

/// `loopback` + `flannel`, as a conflist; writes the default subnet.env.
pub fn flannel_net(sb: &Sandbox, version: &str) -> Net {
    write_default_subnet_env(sb);
    Net::new(
        "cbr0",
        version,
        vec![json!({"type": "loopback"}), flannel_conf(sb)],
    )
}

// ------------------------------------------------------------------------------------------------
// Kernel oracle (`ip -j`)
// ------------------------------------------------------------------------------------------------

/// Runs `ip -n <ns> <args>`; panics on failure.
pub fn ip(ns: &str, args: &[&str]) -> String {
    let out = Command::new("ip")
        .arg("-n")
        .arg(ns)
        .args(args)
        .output()
        .expect("run ip");
    assert!(
        out.status.success(),
        "ip -n {ns} {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Runs `ip -n <ns> -j <args>`; `None` if `ip` fails (e.g. no such device).
pub fn ip_json(ns: &str, args: &[&str]) -> Option<Value> {
    let out = Command::new("ip")
        .arg("-n")
        .arg(ns)
        .arg("-j")
        .args(args)
        .output()
        .expect("run ip");
    if !out.status.success() {
        return None;
    }
    let s = String::from_utf8_lossy(&out.stdout);
    if s.trim().is_empty() {
        return Some(json!([]));
    }
    Some(
        serde_json::from_str(&s)
            .unwrap_or_else(|e| panic!("ip -j {args:?} output is not JSON ({e}): {s}")),
    )
}

/// A link (with details), if it exists.
pub fn link(ns: &str, dev: &str) -> Option<Value> {
    ip_json(ns, &["-d", "link", "show", "dev", dev])
        .and_then(|v| v.as_array().and_then(|a| a.first().cloned()))
}

/// Names of all links in a namespace.
pub fn link_names(ns: &str) -> Vec<String> {
    ip_json(ns, &["link", "show"])
        .expect("ip link show")
        .as_array()
        .expect("array")
        .iter()
        .filter_map(|l| l["ifname"].as_str().map(str::to_string))
        .collect()
}

/// Names of the veth devices in a namespace.
pub fn veths(ns: &str) -> Vec<String> {
    ip_json(ns, &["link", "show", "type", "veth"])
        .expect("ip link show type veth")
        .as_array()
        .expect("array")
        .iter()
        .filter_map(|l| l["ifname"].as_str().map(str::to_string))
        .collect()
}

/// The global addresses on `dev` as `addr/prefix` (empty if the device does not exist).
pub fn addrs(ns: &str, dev: &str) -> Vec<String> {
    let Some(v) = ip_json(ns, &["addr", "show", "dev", dev]) else {
        return vec![];
    };
    let mut out = vec![];
    for l in v.as_array().into_iter().flatten() {
        for a in l["addr_info"].as_array().into_iter().flatten() {
            if a["scope"] == "global" {
                out.push(format!(
                    "{}/{}",
                    a["local"].as_str().unwrap_or_default(),
                    a["prefixlen"]
                ));
            }
        }
    }
    out
}

/// The IPv4 main-table routes of a namespace.
pub fn routes(ns: &str) -> Vec<Value> {
    ip_json(ns, &["-4", "route", "show"])
        .expect("ip route")
        .as_array()
        .cloned()
        .unwrap_or_default()
}

/// Pings `addr` from namespace `from` (a few attempts, one second each).
pub fn ping(from: &str, addr: &str) -> bool {
    for _ in 0..3 {
        let ok = Command::new("ip")
            .args(["netns", "exec", from, "ping", "-c1", "-W1", "-q", addr])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .map(|s| s.success())
            .unwrap_or(false);
        if ok {
            return true;
        }
    }
    false
}

// ------------------------------------------------------------------------------------------------
// host-local and flannel on-disk state
// ------------------------------------------------------------------------------------------------

/// The host-local reservations in `<data_dir>/<network>`: IP → file content.
pub fn ip_files(data_dir: &Path, network: &str) -> BTreeMap<String, String> {
    let dir = data_dir.join(network);
    let mut out = BTreeMap::new();
    let Ok(rd) = std::fs::read_dir(&dir) else {
        return out;
    };
    for e in rd.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        if name.parse::<IpAddr>().is_ok() {
            out.insert(name, std::fs::read_to_string(e.path()).unwrap_or_default());
        }
    }
    out
}

/// The reservations held by one container.
pub fn ip_files_of(data_dir: &Path, network: &str, container_id: &str) -> Vec<String> {
    ip_files(data_dir, network)
        .into_iter()
        .filter(|(_, c)| c.lines().next().map(str::trim) == Some(container_id))
        .map(|(ip, _)| ip)
        .collect()
}

// ------------------------------------------------------------------------------------------------
// Results
// ------------------------------------------------------------------------------------------------

/// The first IP address (without prefix) of a result, any version.
pub fn result_ip(r: &Value) -> String {
    let cidr = r["ips"][0]["address"]
        .as_str()
        .or_else(|| r["ip4"]["ip"].as_str())
        .unwrap_or_else(|| panic!("no IP in result {r}"));
    cidr.split('/').next().unwrap_or_default().to_string()
}

/// The host-side veth of a bridge result (`interfaces[1]`).
pub fn result_host_veth(r: &Value) -> String {
    r["interfaces"][1]["name"]
        .as_str()
        .unwrap_or_else(|| panic!("no host veth in result {r}"))
        .to_string()
}

// ------------------------------------------------------------------------------------------------
// Misc
// ------------------------------------------------------------------------------------------------

/// A small non-cryptographic PRNG (xorshift), seeded from the clock, for jitter.
pub struct Jitter(u64);

impl Jitter {
    pub fn new() -> Self {
        let seed = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(0x9e37_79b9_7f4a_7c15)
            | 1;
        Self(seed)
    }

    pub fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.0 = x;
        x
    }

    /// A duration in `[0, max)`.
    pub fn below(&mut self, max: Duration) -> Duration {
        let n = max.as_nanos().max(1) as u64;
        Duration::from_nanos(self.next() % n)
    }
}

impl Default for Jitter {
    fn default() -> Self {
        Self::new()
    }
}

/// Waits (bounded) until the node has no veth left: the kernel destroys a dead namespace's devices asynchronously,
/// and our DEL leaves the veth teardown to a detached process.
pub fn wait_no_veths(node: &str) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !veths(node).is_empty() {
        assert!(
            Instant::now() < deadline,
            "host veth left: {:?}",
            veths(node)
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

// ------------------------------------------------------------------------------------------------
// The sub-interface plugins (macvlan, ipvlan, vlan): their world and request oracle
// ------------------------------------------------------------------------------------------------

pub mod sublink;
