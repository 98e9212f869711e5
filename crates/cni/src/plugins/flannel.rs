//! The `flannel` meta-plugin: reads flanneld's `subnet.env`, renders the delegate configuration (a `bridge` with
//! `host-local` ranges and routes by default), caches it per attachment (container ID and interface), and
//! delegates to it.

use crate::error::{
    CniError, Failures, ERR_DECODE, ERR_INCOMPATIBLE_VERSION, ERR_INVALID_CONFIG,
    ERR_NOT_AVAILABLE, ERR_TRY_AGAIN_LATER, ERR_UNSUPPORTED_FIELD,
};
use crate::plugin::{Ctx, Plugin};
use crate::plugins::host_local;
use crate::skel::{CmdArgs, Outcome};
use crate::subnet_env::SubnetEnv;
use crate::types::NetConf;
use serde_json::{json, Map, Value};
use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

/// Default location of flanneld's subnet file.
pub const DEFAULT_SUBNET_FILE: &str = "/run/flannel/subnet.env";
/// Default directory of the per-container delegate cache.
pub const DEFAULT_DATA_DIR: &str = "/var/lib/cni/flannel";

struct FlannelConf {
    subnet_file: PathBuf,
    data_dir: PathBuf,
    delegate: Map<String, Value>,
    ipam: Map<String, Value>,
}

fn str_key(conf: &NetConf, key: &str, default: &str) -> Result<PathBuf, CniError> {
    match conf.extra.get(key) {
        None | Some(Value::Null) => Ok(PathBuf::from(default)),
        Some(Value::String(s)) if !s.is_empty() => Ok(PathBuf::from(s)),
        Some(v) => Err(CniError::config(format!(
            "{key}: expected a non-empty string, got {v}"
        ))),
    }
}

fn obj_key(v: Option<&Value>, key: &str) -> Result<Map<String, Value>, CniError> {
    match v {
        None | Some(Value::Null) => Ok(Map::new()),
        Some(Value::Object(m)) => Ok(m.clone()),
        Some(v) => Err(CniError::config(format!(
            "{key}: expected an object, got {v}"
        ))),
    }
}

impl FlannelConf {
    fn from_conf(conf: &NetConf) -> Result<Self, CniError> {
        Ok(Self {
            subnet_file: str_key(conf, "subnetFile", DEFAULT_SUBNET_FILE)?,
            data_dir: str_key(conf, "dataDir", DEFAULT_DATA_DIR)?,
            delegate: obj_key(conf.extra.get("delegate"), "delegate")?,
            ipam: obj_key(conf.ipam.as_ref(), "ipam")?,
        })
    }
}

fn load_subnet_env(path: &Path) -> Result<SubnetEnv, CniError> {
    let bytes = std::fs::read(path).map_err(|e| {
        CniError::new(
            ERR_TRY_AGAIN_LATER,
            format!(
                "failed to load flannel 'subnet.env' file: open {}: {e}. Is flanneld running? Check the flannel pod log for this node.",
                path.display()
            ),
        )
    })?;
    SubnetEnv::from_bytes(&bytes).map_err(|e| {
        CniError::config(format!(
            "failed to load flannel 'subnet.env' file {}: {e}",
            path.display()
        ))
    })
}

/// Builds the delegate configuration exactly as upstream's plugin does.
fn delegate_conf(
    conf: &NetConf,
    fc: &FlannelConf,
    env: &SubnetEnv,
) -> Result<Map<String, Value>, CniError> {
    let mut d = fc.delegate.clone();
    if d.contains_key("name") {
        return Err(CniError::config(
            "\"delegate\" must not contain \"name\" field",
        ));
    }
    if d.contains_key("ipam") {
        return Err(CniError::config(
            "\"delegate\" must not contain \"ipam\" field",
        ));
    }
    let dtype = match d.get("type") {
        None => "bridge".to_string(),
        Some(Value::String(s)) => s.clone(),
        Some(v) => {
            return Err(CniError::config(format!(
                "delegate: type must be a string, got {v}"
            )))
        }
    };
    d.insert("name".into(), Value::String(conf.name.clone()));
    d.insert("type".into(), Value::String(dtype.clone()));
    d.entry("ipMasq").or_insert(Value::Bool(!env.ipmasq));
    d.entry("mtu").or_insert(Value::from(env.mtu));
    if dtype == "bridge" {
        d.entry("isGateway").or_insert(Value::Bool(true));
    }
    d.insert(
        "cniVersion".into(),
        Value::String(conf.version().to_string()),
    );
    if let Some(rc) = &conf.runtime_config {
        d.insert("runtimeConfig".into(), rc.clone());
    }

    let mut ipam = fc.ipam.clone();
    ipam.entry("type")
        .or_insert(Value::String("host-local".into()));
    let mut ranges = Vec::new();
    if let Some(s) = env.subnet {
        ranges.push(json!([{ "subnet": s.trunc().to_string() }]));
    }
    if let Some(s) = env.ipv6_subnet {
        ranges.push(json!([{ "subnet": s.trunc().to_string() }]));
    }
    ipam.insert("ranges".into(), Value::Array(ranges));
    let mut routes = match ipam.get("routes") {
        None | Some(Value::Null) => Vec::new(),
        Some(Value::Array(a)) => a.clone(),
        Some(v) => {
            return Err(CniError::config(format!(
                "ipam.routes: expected a list, got {v}"
            )))
        }
    };
    for n in env.networks.iter().chain(&env.ipv6_networks) {
        routes.push(json!({ "dst": n.to_string() }));
    }
    ipam.insert("routes".into(), Value::Array(routes));
    d.insert("ipam".into(), Value::Object(ipam));
    Ok(d)
}

/// A delegate cache as read back: the config object and its delegate type.
#[derive(Debug, Clone, PartialEq)]
pub struct Cached {
    /// The delegate's `type`.
    pub dtype: String,
    /// The whole config, as cached.
    pub conf: Map<String, Value>,
}

/// Parses a delegate cache file: a JSON object with a non-empty string `type`, which is all flannel ever writes
/// (upstream too). Anything else, valid JSON or not, is an error saying what is wrong; never a panic.
pub fn parse_cache(bytes: &[u8]) -> Result<Cached, String> {
    let v: Value = serde_json::from_slice(bytes).map_err(|e| format!("not JSON ({e})"))?;
    let Value::Object(conf) = v else {
        return Err(format!("not a JSON object but {}", json_kind(&v)));
    };
    let dtype = match conf.get("type") {
        Some(Value::String(t)) if !t.is_empty() => t.clone(),
        Some(v) => return Err(format!("\"type\" is not a plugin name but {v}")),
        None => return Err("no \"type\"".into()),
    };
    Ok(Cached { dtype, conf })
}

fn json_kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

fn to_bytes(m: &Map<String, Value>) -> Result<Vec<u8>, CniError> {
    serde_json::to_vec(m).map_err(|e| CniError::internal(e.to_string()))
}

/// What CHECK sends the cached delegate: the cache with this CHECK's version and prevResult.
fn check_request(path: &Path, bytes: &[u8], conf: &NetConf) -> Result<(String, Vec<u8>), CniError> {
    let mut c = parse_cache(bytes)
        .map_err(|e| CniError::decode(format!("delegate cache {}: {e}", path.display())))?;
    c.conf.insert(
        "cniVersion".into(),
        Value::String(conf.version().to_string()),
    );
    if let Some(p) = &conf.prev_result {
        c.conf.insert("prevResult".into(), p.clone());
    }
    Ok((c.dtype, to_bytes(&c.conf)?))
}

/// What DEL runs: the delegate, the config it gets (as bytes), and that config as an object.
struct DelRequest {
    dtype: String,
    bytes: Vec<u8>,
    conf: Map<String, Value>,
}

/// What DEL sends the delegate, from the cache file's bytes: the cache as it is (with the runtime's prevResult
/// when both speak the same version), or, when the cache is unusable, the config rendered again from subnet.env.
/// `None`: no delegate config can be had (the cache is unusable and subnet.env unreadable).
fn del_request(
    path: &Path,
    bytes: Vec<u8>,
    conf: &NetConf,
    fc: &FlannelConf,
) -> Result<Option<DelRequest>, CniError> {
    let mut c = match parse_cache(&bytes) {
        Ok(c) => c,
        Err(e) => {
            let Some(c) = rerender(conf, fc, path, &e) else {
                return Ok(None);
            };
            return Ok(Some(DelRequest {
                bytes: to_bytes(&c.conf)?,
                dtype: c.dtype,
                conf: c.conf,
            }));
        }
    };
    // The runtime's prevResult is handed on (the spec gives it to every plugin on DEL) so that host-local can
    // release the attachment's addresses without reading every reservation. Only when the cached config speaks
    // the same version: a delegate parses prevResult by its own cniVersion.
    let bytes = match &conf.prev_result {
        Some(p)
            if !p.is_null()
                && c.conf.get("cniVersion").and_then(Value::as_str) == Some(conf.version()) =>
        {
            c.conf.insert("prevResult".into(), p.clone());
            to_bytes(&c.conf)?
        }
        _ => bytes,
    };
    Ok(Some(DelRequest {
        dtype: c.dtype,
        bytes,
        conf: c.conf,
    }))
}

/// Whether a delegate's error means it refuses this config itself (its version, a field, its decoding, a value,
/// or the delegate is not installed): every retry with the same cache would fail the same way.
fn refuses_config(e: &CniError) -> bool {
    matches!(
        e.code,
        ERR_INCOMPATIBLE_VERSION | ERR_UNSUPPORTED_FIELD | ERR_DECODE | ERR_INVALID_CONFIG
    )
}

/// A delegate setting read for the teardown: as cached when it is a bool, the bridge default (off) when the
/// cache does not set it, and on when it cannot be told (no usable cache, or a value of another type), since
/// tearing down what is not there costs only a look.
fn teardown_flag(cached: Option<&Map<String, Value>>, key: &str) -> bool {
    match cached.map(|c| c.get(key)) {
        Some(Some(Value::Bool(b))) => *b,
        Some(None) => false,
        _ => true,
    }
}

/// The IPAM config the teardown releases the attachment's addresses with: the cached one when it names its
/// type, else the network's own `ipam` as ADD renders it (host-local needs only `dataDir` and the network name
/// to release, so no subnet.env is needed).
fn teardown_ipam(fc: &FlannelConf, cached: Option<&Map<String, Value>>) -> Map<String, Value> {
    if let Some(Value::Object(i)) = cached.and_then(|c| c.get("ipam")) {
        if i.get("type")
            .and_then(Value::as_str)
            .is_some_and(|t| !t.is_empty())
        {
            return i.clone();
        }
    }
    let mut ipam = fc.ipam.clone();
    ipam.entry("type")
        .or_insert(Value::String("host-local".into()));
    ipam
}

/// flannel's own release of an attachment, for a DEL whose delegate cannot do it (it refuses the cached config,
/// or it is a bridge whose DEL failed) or whose config cannot be had: what a bridge delegate makes, each keyed
/// by the attachment and taken from the cache only as far as needed, so a setting the delegate refused cannot
/// refuse this too. The pod interface (only a virtual one, never the loopback), the addresses from IPAM (our
/// host-local in-process; another IPAM plugin from CNI_PATH, skipped when it is not installed: it cannot have
/// handed out anything then), the macspoofchk and ipMasq rules. Every step runs; one error names the failures.
async fn teardown(
    ctx: &Ctx<'_>,
    args: &CmdArgs,
    conf: &NetConf,
    fc: &FlannelConf,
    cached: Option<&Map<String, Value>>,
) -> Result<(), CniError> {
    let ns = crate::attach::del_netns(&args.netns)?;
    let mut f = Failures::new();
    if let Some(ns) = &ns {
        f.step(
            "pod interface",
            crate::attach::remove_pod_links(ns, &args.ifname).await,
        );
    }
    let ipam = teardown_ipam(fc, cached);
    let itype = ipam
        .get("type")
        .and_then(Value::as_str)
        .unwrap_or("host-local")
        .to_string();
    let version = cached
        .and_then(|c| c.get("cniVersion"))
        .and_then(Value::as_str)
        .filter(|v| crate::version::SUPPORTED.contains(v))
        .unwrap_or(conf.version())
        .to_string();
    let mut req = Map::new();
    req.insert("cniVersion".into(), Value::String(version.clone()));
    req.insert("name".into(), Value::String(conf.name.clone()));
    req.insert("type".into(), Value::String("bridge".into()));
    req.insert("ipam".into(), Value::Object(ipam));
    if let Some(p) = conf.prev_result.as_ref().filter(|p| !p.is_null()) {
        if version == conf.version() {
            req.insert("prevResult".into(), p.clone());
        }
    }
    let req = to_bytes(&req)?;
    // Our host-local's release is flannel's own code, run whatever CNI_PATH holds (its files are the reference
    // format, so it releases what either implementation reserved); another IPAM plugin goes through the executor.
    let released = if itype == host_local::PLUGIN.name {
        Some(host_local::PLUGIN.run(ctx, args.with_stdin(req)).await)
    } else if ctx.exec.find(&itype, &args.path).is_ok() {
        Some(ctx.delegate(&itype, args, req).await)
    } else {
        tracing::warn!(ipam = %itype, "IPAM plugin not installed; no addresses to release");
        None
    };
    if let Some(r) = released {
        f.step(format!("IPAM ({itype})"), r);
    }
    if teardown_flag(cached, "macspoofchk") {
        f.step(
            "macspoofchk",
            kernel::spoofcheck::teardown(&args.container_id, &args.ifname).map_err(CniError::from),
        );
    }
    if teardown_flag(cached, "ipMasq") {
        f.step(
            "ipMasq",
            kernel::ipmasq::teardown_ip_masq(&conf.name, &args.container_id, &args.ifname, &[])
                .map_err(CniError::from),
        );
    }
    f.finish("flannel's own teardown")
}

/// Separates the container ID from the interface name in a cache file name; neither may contain it (container
/// IDs are `[a-zA-Z0-9_.-]`, interface names have no `:`), so the name splits back unambiguously.
const KEY_SEP: char = ':';

/// The cache file name of an attachment, `<containerID>:<ifname>`. Upstream flannel (and earlier versions of this
/// plugin) use the container ID alone, so a container's second attachment overwrote the first one's cache and
/// the first DEL took it: the other attachment's address and interface were never released.
pub fn cache_name(container_id: &str, ifname: &str) -> String {
    format!("{container_id}{KEY_SEP}{ifname}")
}

/// The container ID and interface name a cache file name stands for; no interface for the old, ID-only name.
pub fn parse_cache_name(name: &str) -> (&str, Option<&str>) {
    match name.split_once(KEY_SEP) {
        Some((id, ifname)) => (id, Some(ifname)),
        None => (name, None),
    }
}

fn cache_path(fc: &FlannelConf, args: &CmdArgs) -> PathBuf {
    fc.data_dir
        .join(cache_name(&args.container_id, &args.ifname))
}

/// Reads the attachment's cache: its own file, else one an earlier version or upstream flannel wrote under the
/// container ID alone. `None` when there is neither.
fn read_cache(fc: &FlannelConf, args: &CmdArgs) -> Result<Option<(PathBuf, Vec<u8>)>, CniError> {
    for path in [cache_path(fc, args), fc.data_dir.join(&args.container_id)] {
        match std::fs::read(&path) {
            Ok(b) => return Ok(Some((path, b))),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => {
                return Err(CniError::io(format!(
                    "failed to read {}: {e}",
                    path.display()
                )))
            }
        }
    }
    Ok(None)
}

fn save_cache(fc: &FlannelConf, args: &CmdArgs, bytes: &[u8]) -> Result<(), CniError> {
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(&fc.data_dir)
        .map_err(|e| CniError::io(format!("failed to create {}: {e}", fc.data_dir.display())))?;
    let path = cache_path(fc, args);
    let tmp = fc.data_dir.join(format!(
        ".{}.tmp",
        cache_name(&args.container_id, &args.ifname)
    ));
    let write = || -> std::io::Result<()> {
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&tmp)?;
        f.write_all(bytes)?;
        // On disk before the delegate makes anything a DEL would have to undo; without it a power cut can leave
        // an empty cache next to a surviving IP reservation (flannel-io/flannel#1662).
        f.sync_all()?;
        std::fs::rename(&tmp, &path)
    };
    write().map_err(|e| {
        CniError::io(format!(
            "failed to save delegate config {}: {e}",
            path.display()
        ))
    })
}

/// Removes a delegate cache file; one already gone is fine (a concurrent DEL or GC got there first).
fn remove_cache(path: &Path) -> Result<(), CniError> {
    match std::fs::remove_file(path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(CniError::io(format!(
            "failed to remove delegate cache {}: {e}",
            path.display()
        ))),
    }
}

/// The delegate config for a DEL whose cache file is there but unusable (truncated by a disk fault, or edited):
/// rendered from the current subnet.env as ADD would, so the delegate still releases the attachment's address
/// and interface instead of failing forever (upstream, flannel-io/flannel#1662) or leaving them behind.
/// `None` when subnet.env cannot be read either.
fn rerender(conf: &NetConf, fc: &FlannelConf, path: &Path, why: &str) -> Option<Cached> {
    let env = load_subnet_env(&fc.subnet_file).ok()?;
    let d = delegate_conf(conf, fc, &env).ok()?;
    tracing::warn!(path = %path.display(), why, "delegate cache unusable; using the config rendered from subnet.env");
    let dtype = d.get("type")?.as_str()?.to_string();
    Some(Cached { dtype, conf: d })
}

/// The flannel plugin's row of the plugin table.
pub const PLUGIN: Plugin = Plugin {
    name: "flannel",
    versions: crate::version::SUPPORTED,
    add: |ctx, args, conf| Box::pin(add(ctx, args, conf)),
    del: |ctx, args, conf| Box::pin(del(ctx, args, conf)),
    check: |ctx, args, conf| Box::pin(check(ctx, args, conf)),
    gc: Some(|ctx, args, conf| Box::pin(gc(ctx, args, conf))),
    status: Some(|ctx, args, conf| Box::pin(status(ctx, args, conf))),
};

/// ADD: renders the delegate config from subnet.env, caches it, delegates.
async fn add(ctx: &Ctx<'_>, args: &CmdArgs, conf: &NetConf) -> Outcome {
    let fc = FlannelConf::from_conf(conf)?;
    let env = load_subnet_env(&fc.subnet_file)?;
    let d = delegate_conf(conf, &fc, &env)?;
    let bytes = to_bytes(&d)?;
    // Saved before delegating so a DEL after a crash in the middle still knows what to undo.
    save_cache(&fc, args, &bytes)?;
    let dtype = d
        .get("type")
        .and_then(Value::as_str)
        .unwrap_or("bridge")
        .to_string();
    ctx.delegate(&dtype, args, bytes).await
}

/// DEL: delegates to the cached config, falling back to flannel's own teardown.
async fn del(ctx: &Ctx<'_>, args: &CmdArgs, conf: &NetConf) -> Outcome {
    let fc = FlannelConf::from_conf(conf)?;
    // A cache under the old ID-only name is consumed as its writer would have (upstream removes it on the
    // first DEL); a second attachment made by that writer had overwritten it anyway.
    let Some((path, bytes)) = read_cache(&fc, args)? else {
        return Ok(None);
    };
    match del_request(&path, bytes, conf, &fc)? {
        Some(DelRequest {
            dtype,
            bytes,
            conf: cached,
        }) => {
            match ctx.delegate(&dtype, args, bytes).await {
                Ok(_) => {}
                // A delegate that refuses its config would refuse every retry, and the pod would never
                // finish terminating (typically the ADD failed on that very setting, having taken nothing
                // but this cache). A bridge's DEL that failed otherwise is what the teardown does anyway.
                Err(e) if dtype == "bridge" || refuses_config(&e) => {
                    tracing::warn!(delegate = %dtype, error = %e, "delegate DEL failed; releasing the attachment without it");
                    teardown(ctx, args, conf, &fc, Some(&cached))
                        .await
                        .map_err(|t| CniError::new(e.code, format!("{e}; then {t}")))?;
                }
                // Kept when the delegate fails, so the runtime's retry can still finish the job.
                Err(e) => return Err(e),
            }
        }
        None => {
            tracing::warn!(path = %path.display(), "delegate cache unusable and subnet.env unreadable; releasing the attachment without a delegate");
            teardown(ctx, args, conf, &fc, None).await?;
        }
    }
    remove_cache(&path).map(|()| None)
}

/// CHECK: the cached delegate, with this CHECK's version and prevResult.
async fn check(ctx: &Ctx<'_>, args: &CmdArgs, conf: &NetConf) -> Outcome {
    let fc = FlannelConf::from_conf(conf)?;
    let Some((path, bytes)) = read_cache(&fc, args)? else {
        return Err(CniError::new(
            crate::error::ERR_UNKNOWN_CONTAINER,
            format!(
                "no delegate cache {} for this attachment",
                cache_path(&fc, args).display()
            ),
        ));
    };
    let (dtype, bytes) = check_request(&path, &bytes, conf)?;
    ctx.delegate(&dtype, args, bytes).await
}

/// GC: the delegate's GC with the valid attachments, and the caches of attachments no longer valid removed.
async fn gc(ctx: &Ctx<'_>, args: &CmdArgs, conf: &NetConf) -> Outcome {
    let fc = FlannelConf::from_conf(conf)?;
    let valid = conf.valid_attachments()?;
    let pairs: std::collections::HashSet<(&str, &str)> = valid
        .iter()
        .map(|a| (a.container_id.as_str(), a.ifname.as_str()))
        .collect();
    let ids: std::collections::HashSet<&str> =
        valid.iter().map(|a| a.container_id.as_str()).collect();
    // Both steps run whatever happens to the other: a failing delegate must not keep the stale caches.
    let mut f = Failures::new();
    if let Ok(env) = load_subnet_env(&fc.subnet_file) {
        let r = async {
            let mut d = delegate_conf(conf, &fc, &env)?;
            for key in ["cni.dev/valid-attachments", "cni.dev/attachments"] {
                if let Some(v) = conf.extra.get(key) {
                    d.insert(key.into(), v.clone());
                }
            }
            let dtype = d
                .get("type")
                .and_then(Value::as_str)
                .unwrap_or("bridge")
                .to_string();
            let bytes = to_bytes(&d)?;
            ctx.delegate(&dtype, args, bytes).await
        };
        f.step("delegate", r.await);
    }
    if let Ok(rd) = std::fs::read_dir(&fc.data_dir) {
        for e in rd.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            let keep = match parse_cache_name(&name) {
                (id, Some(ifname)) => pairs.contains(&(id, ifname)),
                // The old ID-only name: kept while any attachment of the container is.
                (id, None) => ids.contains(id),
            };
            if !name.starts_with('.') && !keep {
                f.step(format!("delegate cache {name}"), remove_cache(&e.path()));
            }
        }
    }
    f.finish("GC").map(|()| None)
}

/// STATUS: flanneld has written subnet.env, and the delegate is ready.
async fn status(ctx: &Ctx<'_>, args: &CmdArgs, conf: &NetConf) -> Outcome {
    let fc = FlannelConf::from_conf(conf)?;
    let env =
        load_subnet_env(&fc.subnet_file).map_err(|e| CniError::new(ERR_NOT_AVAILABLE, e.msg))?;
    let d = delegate_conf(conf, &fc, &env)?;
    let dtype = d
        .get("type")
        .and_then(Value::as_str)
        .unwrap_or("bridge")
        .to_string();
    ctx.delegate(&dtype, args, to_bytes(&d)?).await
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const ENV: &str = "FLANNEL_NETWORK=10.1.0.0/16\nFLANNEL_SUBNET=10.1.17.1/24\nFLANNEL_MTU=1472\nFLANNEL_IPMASQ=true\n";

    #[test]
    fn renders_upstream_delegate() {
        let conf =
            NetConf::parse(br#"{"cniVersion":"0.3.1","name":"cni-flannel","type":"flannel"}"#)
                .unwrap();
        let fc = FlannelConf::from_conf(&conf).unwrap();
        let d = delegate_conf(&conf, &fc, &SubnetEnv::parse(ENV).unwrap()).unwrap();
        let want = json!({"ipMasq":false,"ipam":{"routes":[{"dst":"10.1.0.0/16"}],"ranges":[[{"subnet":"10.1.17.0/24"}]],
            "type":"host-local"},"isGateway":true,"mtu":1472,"name":"cni-flannel","type":"bridge","cniVersion":"0.3.1"});
        assert_eq!(Value::Object(d), want);
    }

    #[test]
    fn delegate_keeps_manifest_options_and_rejects_name() {
        let conf = NetConf::parse(
            br#"{"cniVersion":"1.0.0","name":"cbr0","type":"flannel","delegate":{"hairpinMode":true,"isDefaultGateway":true},
                "ipam":{"routes":[{"dst":"192.0.2.0/24"}]}}"#,
        )
        .unwrap();
        let fc = FlannelConf::from_conf(&conf).unwrap();
        let d = delegate_conf(&conf, &fc, &SubnetEnv::parse(ENV).unwrap()).unwrap();
        assert_eq!(d["hairpinMode"], true);
        assert_eq!(d["ipam"]["routes"][0]["dst"], "192.0.2.0/24");
        assert_eq!(d["ipam"]["routes"][1]["dst"], "10.1.0.0/16");
        let bad = NetConf::parse(
            br#"{"cniVersion":"1.0.0","name":"n","type":"flannel","delegate":{"name":"x"}}"#,
        )
        .unwrap();
        let fc = FlannelConf::from_conf(&bad).unwrap();
        assert_eq!(
            delegate_conf(&bad, &fc, &SubnetEnv::parse(ENV).unwrap())
                .unwrap_err()
                .code,
            7
        );
    }

    #[test]
    fn cache_names() {
        assert_eq!(cache_name("abc", "eth0"), "abc:eth0");
        assert_eq!(parse_cache_name("abc:eth0"), ("abc", Some("eth0")));
        assert_eq!(parse_cache_name("a-b.c_d:net1"), ("a-b.c_d", Some("net1")));
        assert_eq!(parse_cache_name("abc"), ("abc", None));
    }

    #[test]
    fn cache_must_be_an_object_with_a_type() {
        for bad in [
            &b"[1]"[..],
            b"\"x\"",
            b"1",
            b"true",
            b"null",
            b"{}",
            b"{\"type\":7}",
            b"{\"type\":\"\"}",
            b"",
        ] {
            assert!(
                parse_cache(bad).is_err(),
                "{}",
                String::from_utf8_lossy(bad)
            );
        }
        let c = parse_cache(br#"{"type":"bridge","mtu":1450}"#).unwrap();
        assert_eq!(c.dtype, "bridge");
        assert_eq!(c.conf["mtu"], 1450);
        let conf =
            NetConf::parse(br#"{"cniVersion":"1.0.0","name":"n","type":"flannel"}"#).unwrap();
        let e = check_request(Path::new("/x"), b"[1]", &conf).unwrap_err();
        assert_eq!(e.code, 6);
        assert!(e.msg.contains("not a JSON object"), "{e}");
    }

    /// A directory of its own, removed on drop.
    struct TempDir(PathBuf);

    impl TempDir {
        fn new() -> Self {
            static N: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
            let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            let p =
                std::env::temp_dir().join(format!("flannel-rs-flannel-{}-{n}", std::process::id()));
            std::fs::create_dir_all(&p).unwrap();
            Self(p)
        }
    }

    impl Drop for TempDir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    /// Any JSON value, with the keys a delegate cache or a CNI config has among the random ones.
    fn arb_json() -> impl Strategy<Value = Value> {
        let leaf = prop_oneof![
            Just(Value::Null),
            any::<bool>().prop_map(Value::Bool),
            any::<i64>().prop_map(Value::from),
            any::<f64>().prop_map(Value::from),
            ".{0,12}".prop_map(Value::String),
            prop::sample::select(vec![
                "bridge",
                "host-local",
                "",
                "1.0.0",
                "0.3.1",
                "10.244.1.0/24"
            ])
            .prop_map(|s| Value::String(s.into())),
        ];
        leaf.prop_recursive(3, 32, 6, |inner| {
            let key = prop_oneof![
                prop::sample::select(vec![
                    "type",
                    "cniVersion",
                    "name",
                    "ipam",
                    "prevResult",
                    "mtu",
                    "ranges",
                    "subnet",
                    "ips",
                    "interfaces",
                    "routes",
                    "dst",
                ])
                .prop_map(str::to_string),
                ".{0,6}",
            ];
            prop_oneof![
                prop::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
                prop::collection::btree_map(key, inner, 0..6)
                    .prop_map(|m| Value::Object(m.into_iter().collect())),
            ]
        })
    }

    /// A cache file's possible contents: random bytes, any JSON, and real caches cut off anywhere.
    fn arb_cache() -> impl Strategy<Value = Vec<u8>> {
        let real = br#"{"cniVersion":"1.0.0","hairpinMode":true,"ipMasq":false,"ipam":{"ranges":[[{"subnet":"10.244.1.0/24"}]],"routes":[{"dst":"10.244.0.0/16"}],"type":"host-local"},"isGateway":true,"mtu":1450,"name":"cbr0","type":"bridge"}"#;
        prop_oneof![
            prop::collection::vec(any::<u8>(), 0..300),
            arb_json().prop_map(|v| v.to_string().into_bytes()),
            (0..real.len()).prop_map(move |n| real[..n].to_vec()),
            (0..real.len(), any::<u8>()).prop_map(move |(i, b)| {
                let mut v = real.to_vec();
                v[i] = b;
                v
            }),
        ]
    }

    /// JSON equality with floats equal within a relative 1e-12 (a text round trip may move the last digit).
    fn same_json(a: &Value, b: &Value) -> bool {
        match (a, b) {
            (Value::Number(x), Value::Number(y)) => match (x.as_f64(), y.as_f64()) {
                (Some(x), Some(y)) if x.is_finite() && y.is_finite() => {
                    x == y || (x - y).abs() <= 1e-12 * x.abs().max(y.abs())
                }
                _ => x == y,
            },
            (Value::Array(x), Value::Array(y)) => {
                x.len() == y.len() && x.iter().zip(y).all(|(a, b)| same_json(a, b))
            }
            (Value::Object(x), Value::Object(y)) => {
                x.len() == y.len()
                    && x.iter()
                        .all(|(k, v)| y.get(k).is_some_and(|w| same_json(v, w)))
            }
            _ => a == b,
        }
    }

    proptest! {
        /// Cache file names as GC reads them back from the directory: any name splits (or is an old ID-only
        /// one), and the name of every valid attachment splits back into its container ID and interface.
        #[test]
        fn cache_names_split_back(name in ".{0,40}", id in "[a-zA-Z0-9][a-zA-Z0-9_.-]{0,30}",
                                  ifname in "[^/:%\\s]{1,15}") {
            let _ = parse_cache_name(&name);
            let made = cache_name(&id, &ifname);
            prop_assert_eq!(parse_cache_name(&made), (id.as_str(), Some(ifname.as_str())));
        }

        /// The delegate cache as read back by CHECK and DEL: an error or a request for the delegate, never a
        /// panic, whatever the file holds and whatever the runtime's config and prevResult are. DEL falls back
        /// to rendering from subnet.env (present or not) for anything that is not a cache.
        #[test]
        fn delegate_cache_never_panics(bytes in arb_cache(), prev in arb_json(),
                                       ver in prop::sample::select(vec!["0.3.1", "1.0.0", "1.1.0"]),
                                       with_env in any::<bool>()) {
            let parsed = parse_cache(&bytes);
            if let Ok(c) = &parsed {
                prop_assert!(!c.dtype.is_empty());
            }
            let tmp = TempDir::new();
            let dir = tmp.0.clone();
            let env_file = dir.join("subnet.env");
            std::fs::write(&env_file, ENV).unwrap();
            let subnet_file = if with_env { env_file } else { dir.join("missing.env") };
            let conf = json!({"cniVersion": ver, "name": "cbr0", "type": "flannel", "prevResult": prev,
                              "subnetFile": subnet_file, "dataDir": dir});
            let conf = NetConf::parse(conf.to_string().as_bytes()).unwrap();
            let fc = FlannelConf::from_conf(&conf).unwrap();
            let path = dir.join("c1");
            let check = check_request(&path, &bytes, &conf);
            prop_assert_eq!(check.is_ok(), parsed.is_ok());
            match del_request(&path, bytes.clone(), &conf, &fc) {
                Ok(Some(r)) => {
                    prop_assert!(!r.dtype.is_empty());
                    // serde_json's float parsing may move the last digit (1 ulp): compare numbers as numbers.
                    let back = parse_cache(&r.bytes).map(|c| Value::Object(c.conf));
                    prop_assert!(
                        back.as_ref().is_ok_and(|b| same_json(b, &Value::Object(r.conf.clone()))),
                        "{back:?} != {:?}", r.conf
                    );
                }
                Ok(None) => prop_assert!(parsed.is_err() && !with_env),
                Err(e) => prop_assert!(false, "DEL request failed: {e}"),
            }
        }
    }
}
