//! The `flannel` meta-plugin: reads flanneld's `subnet.env`, renders the delegate configuration (a `bridge` with
//! `host-local` ranges and routes by default), caches it per container, and delegates to it.

use crate::delegate;
use crate::error::{CniError, Failures, ERR_NOT_AVAILABLE, ERR_TRY_AGAIN_LATER};
use crate::skel::{CmdArgs, Command, Outcome};
use crate::types::NetConf;
use ipnet::IpNet;
use serde_json::{json, Map, Value};
use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

/// Default location of flanneld's subnet file.
pub const DEFAULT_SUBNET_FILE: &str = "/run/flannel/subnet.env";
/// Default directory of the per-container delegate cache.
pub const DEFAULT_DATA_DIR: &str = "/var/lib/cni/flannel";

/// The contents of `subnet.env`.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct SubnetEnv {
    /// `FLANNEL_NETWORK` (comma-separated list).
    pub networks: Vec<IpNet>,
    /// `FLANNEL_SUBNET`, as written (the gateway address with the subnet prefix, e.g. `10.244.1.1/24`).
    pub subnet: Option<IpNet>,
    /// `FLANNEL_IPV6_NETWORK`.
    pub ipv6_networks: Vec<IpNet>,
    /// `FLANNEL_IPV6_SUBNET`.
    pub ipv6_subnet: Option<IpNet>,
    /// `FLANNEL_MTU`.
    pub mtu: u32,
    /// `FLANNEL_IPMASQ`: flanneld masquerades, so the bridge must not.
    pub ipmasq: bool,
}

impl SubnetEnv {
    /// Parses the file's text; every error names the key and the value.
    pub fn parse(text: &str) -> Result<Self, String> {
        let mut env = SubnetEnv::default();
        let (mut have_mtu, mut have_masq) = (false, false);
        let nets = |k: &str, v: &str| -> Result<Vec<IpNet>, String> {
            let mut out: Vec<IpNet> = Vec::new();
            for s in v.split(',').map(str::trim).filter(|s| !s.is_empty()) {
                let n: IpNet = s
                    .parse()
                    .map_err(|_| format!("{k}: invalid CIDR \"{s}\""))?;
                if !out.contains(&n) {
                    out.push(n);
                }
            }
            Ok(out)
        };
        for line in text.lines() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let Some((k, v)) = line.split_once('=') else {
                continue;
            };
            let v = v.trim().trim_matches('"');
            match k.trim() {
                "FLANNEL_NETWORK" => env.networks = nets(k, v)?,
                "FLANNEL_IPV6_NETWORK" => env.ipv6_networks = nets(k, v)?,
                "FLANNEL_SUBNET" => {
                    env.subnet = Some(
                        v.parse()
                            .map_err(|_| format!("FLANNEL_SUBNET: invalid CIDR \"{v}\""))?,
                    )
                }
                "FLANNEL_IPV6_SUBNET" => {
                    env.ipv6_subnet = Some(
                        v.parse()
                            .map_err(|_| format!("FLANNEL_IPV6_SUBNET: invalid CIDR \"{v}\""))?,
                    )
                }
                "FLANNEL_MTU" => {
                    env.mtu = v
                        .parse()
                        .map_err(|_| format!("FLANNEL_MTU: invalid number \"{v}\""))?;
                    have_mtu = true;
                }
                "FLANNEL_IPMASQ" => {
                    env.ipmasq = v == "true";
                    have_masq = true;
                }
                _ => {}
            }
        }
        if env.networks.is_empty() && env.ipv6_networks.is_empty() {
            return Err("missing FLANNEL_NETWORK or FLANNEL_IPV6_NETWORK".into());
        }
        if env.subnet.is_none() && env.ipv6_subnet.is_none() {
            return Err("missing FLANNEL_SUBNET or FLANNEL_IPV6_SUBNET".into());
        }
        if !have_mtu {
            return Err("missing FLANNEL_MTU".into());
        }
        if !have_masq {
            return Err("missing FLANNEL_IPMASQ".into());
        }
        Ok(env)
    }

    /// Renders the file as flanneld writes it.
    pub fn render(&self) -> String {
        let join = |v: &[IpNet]| {
            v.iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join(",")
        };
        let mut s = String::new();
        if !self.networks.is_empty() {
            s += &format!("FLANNEL_NETWORK={}\n", join(&self.networks));
        }
        if let Some(n) = self.subnet {
            s += &format!("FLANNEL_SUBNET={n}\n");
        }
        if !self.ipv6_networks.is_empty() {
            s += &format!("FLANNEL_IPV6_NETWORK={}\n", join(&self.ipv6_networks));
        }
        if let Some(n) = self.ipv6_subnet {
            s += &format!("FLANNEL_IPV6_SUBNET={n}\n");
        }
        s += &format!("FLANNEL_MTU={}\n", self.mtu);
        s += &format!("FLANNEL_IPMASQ={}\n", self.ipmasq);
        s
    }
}

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
    let text = std::fs::read_to_string(path).map_err(|e| {
        CniError::new(
            ERR_TRY_AGAIN_LATER,
            format!(
                "failed to load flannel 'subnet.env' file: open {}: {e}. Is flanneld running? Check the flannel pod log for this node.",
                path.display()
            ),
        )
    })?;
    SubnetEnv::parse(&text).map_err(|e| {
        CniError::config(format!(
            "failed to load flannel 'subnet.env' file {}: {e}",
            path.display()
        ))
    })
}

/// Builds the delegate configuration exactly as upstream's plugin does.
fn delegate_conf(conf: &NetConf, fc: &FlannelConf, env: &SubnetEnv) -> Result<Value, CniError> {
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
    Ok(Value::Object(d))
}

fn cache_path(fc: &FlannelConf, container_id: &str) -> PathBuf {
    fc.data_dir.join(container_id)
}

fn save_cache(fc: &FlannelConf, container_id: &str, bytes: &[u8]) -> Result<(), CniError> {
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(&fc.data_dir)
        .map_err(|e| CniError::io(format!("failed to create {}: {e}", fc.data_dir.display())))?;
    let path = cache_path(fc, container_id);
    let tmp = fc.data_dir.join(format!(".{container_id}.tmp"));
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

/// The delegate config for a DEL whose cache file is there but unparsable (truncated by a disk fault or by hand):
/// rendered from the current subnet.env as ADD would, so the delegate still releases the attachment's address
/// and interface instead of failing forever (upstream, flannel-io/flannel#1662) or leaving them behind.
/// `None` when subnet.env cannot be read either.
fn rerender(conf: &NetConf, fc: &FlannelConf, path: &Path) -> Option<(String, Value)> {
    let env = load_subnet_env(&fc.subnet_file).ok()?;
    let d = delegate_conf(conf, fc, &env).ok()?;
    tracing::warn!(path = %path.display(), "delegate cache unparsable; using the config rendered from subnet.env");
    let dtype = d.get("type")?.as_str()?.to_string();
    Some((dtype, d))
}

/// Runs the flannel plugin for one command.
pub async fn run(args: &CmdArgs, conf: &NetConf) -> Outcome {
    let fc = FlannelConf::from_conf(conf)?;
    match args.command {
        Command::Add => {
            let env = load_subnet_env(&fc.subnet_file)?;
            let d = delegate_conf(conf, &fc, &env)?;
            let bytes = serde_json::to_vec(&d).map_err(|e| CniError::internal(e.to_string()))?;
            // Saved before delegating so a DEL after a crash in the middle still knows what to undo.
            save_cache(&fc, &args.container_id, &bytes)?;
            let dtype = d
                .get("type")
                .and_then(Value::as_str)
                .unwrap_or("bridge")
                .to_string();
            delegate::run(&dtype, args, bytes).await
        }
        Command::Del => {
            let path = cache_path(&fc, &args.container_id);
            let bytes = match std::fs::read(&path) {
                Ok(b) => b,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
                Err(e) => {
                    return Err(CniError::io(format!(
                        "failed to read {}: {e}",
                        path.display()
                    )))
                }
            };
            let parsed = serde_json::from_slice::<Value>(&bytes)
                .ok()
                .and_then(|v| Some((v.get("type")?.as_str()?.to_string(), v)));
            let (dtype, mut cached, bytes) = match parsed {
                Some((t, v)) => (t, v, bytes),
                None => match rerender(conf, &fc, &path) {
                    Some((t, v)) => {
                        let b = serde_json::to_vec(&v)
                            .map_err(|e| CniError::internal(e.to_string()))?;
                        (t, v, b)
                    }
                    None => {
                        tracing::warn!(path = %path.display(), "ignoring unparsable delegate cache");
                        return remove_cache(&path).map(|()| None);
                    }
                },
            };
            // The runtime's prevResult is handed on (the spec gives it to every plugin on DEL) so that host-local
            // can release the attachment's addresses without reading every reservation. Only when the cached
            // config speaks the same version: a delegate parses prevResult by its own cniVersion.
            let bytes = match &conf.prev_result {
                Some(p)
                    if !p.is_null()
                        && cached.get("cniVersion").and_then(Value::as_str)
                            == Some(conf.version()) =>
                {
                    cached["prevResult"] = p.clone();
                    serde_json::to_vec(&cached).unwrap_or(bytes)
                }
                _ => bytes,
            };
            // Kept when the delegate fails, so the runtime's retry can still finish the job.
            delegate::run(&dtype, args, bytes).await?;
            remove_cache(&path).map(|()| None)
        }
        Command::Check => {
            let path = cache_path(&fc, &args.container_id);
            let bytes = std::fs::read(&path).map_err(|e| {
                CniError::new(
                    crate::error::ERR_UNKNOWN_CONTAINER,
                    format!("no delegate cache {}: {e}", path.display()),
                )
            })?;
            let mut d: Value = serde_json::from_slice(&bytes)
                .map_err(|e| CniError::decode(format!("{}: {e}", path.display())))?;
            let dtype = d
                .get("type")
                .and_then(Value::as_str)
                .unwrap_or("bridge")
                .to_string();
            d["cniVersion"] = Value::String(conf.version().to_string());
            if let Some(p) = &conf.prev_result {
                d["prevResult"] = p.clone();
            }
            let bytes = serde_json::to_vec(&d).map_err(|e| CniError::internal(e.to_string()))?;
            delegate::run(&dtype, args, bytes).await
        }
        Command::Gc => {
            let valid: std::collections::HashSet<String> = conf
                .valid_attachments()?
                .into_iter()
                .map(|a| a.container_id)
                .collect();
            // Both steps run whatever happens to the other: a failing delegate must not keep the stale caches.
            let mut f = Failures::new();
            if let Ok(env) = load_subnet_env(&fc.subnet_file) {
                let r = async {
                    let mut d = delegate_conf(conf, &fc, &env)?;
                    for key in ["cni.dev/valid-attachments", "cni.dev/attachments"] {
                        if let Some(v) = conf.extra.get(key) {
                            d[key] = v.clone();
                        }
                    }
                    let dtype = d
                        .get("type")
                        .and_then(Value::as_str)
                        .unwrap_or("bridge")
                        .to_string();
                    let bytes =
                        serde_json::to_vec(&d).map_err(|e| CniError::internal(e.to_string()))?;
                    delegate::run(&dtype, args, bytes).await
                };
                f.step("delegate", r.await);
            }
            if let Ok(rd) = std::fs::read_dir(&fc.data_dir) {
                for e in rd.flatten() {
                    let name = e.file_name().to_string_lossy().into_owned();
                    if !name.starts_with('.') && !valid.contains(&name) {
                        f.step(format!("delegate cache {name}"), remove_cache(&e.path()));
                    }
                }
            }
            f.finish("GC").map(|()| None)
        }
        Command::Status => {
            let env = load_subnet_env(&fc.subnet_file)
                .map_err(|e| CniError::new(ERR_NOT_AVAILABLE, e.msg))?;
            let d = delegate_conf(conf, &fc, &env)?;
            let dtype = d
                .get("type")
                .and_then(Value::as_str)
                .unwrap_or("bridge")
                .to_string();
            let bytes = serde_json::to_vec(&d).map_err(|e| CniError::internal(e.to_string()))?;
            delegate::run(&dtype, args, bytes).await
        }
        Command::Version => Ok(None),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const ENV: &str = "FLANNEL_NETWORK=10.1.0.0/16\nFLANNEL_SUBNET=10.1.17.1/24\nFLANNEL_MTU=1472\nFLANNEL_IPMASQ=true\n";

    #[test]
    fn parses_and_renders() {
        let e = SubnetEnv::parse(ENV).unwrap();
        assert_eq!(e.networks, vec!["10.1.0.0/16".parse::<IpNet>().unwrap()]);
        assert_eq!(e.mtu, 1472);
        assert!(e.ipmasq);
        assert_eq!(e.render(), ENV);
        assert_eq!(SubnetEnv::parse(&e.render()).unwrap(), e);
    }

    #[test]
    fn missing_keys_are_named() {
        assert!(SubnetEnv::parse(
            "FLANNEL_SUBNET=10.1.17.1/24\nFLANNEL_MTU=1\nFLANNEL_IPMASQ=true"
        )
        .unwrap_err()
        .contains("FLANNEL_NETWORK"));
        assert!(SubnetEnv::parse(
            "FLANNEL_NETWORK=10.1.0.0/16\nFLANNEL_SUBNET=10.1.17.1/24\nFLANNEL_IPMASQ=true"
        )
        .unwrap_err()
        .contains("FLANNEL_MTU"));
        assert!(SubnetEnv::parse("FLANNEL_NETWORK=10.1.0.0/33")
            .unwrap_err()
            .contains("10.1.0.0/33"));
    }

    #[test]
    fn renders_upstream_delegate() {
        let conf =
            NetConf::parse(br#"{"cniVersion":"0.3.1","name":"cni-flannel","type":"flannel"}"#)
                .unwrap();
        let fc = FlannelConf::from_conf(&conf).unwrap();
        let d = delegate_conf(&conf, &fc, &SubnetEnv::parse(ENV).unwrap()).unwrap();
        let want = json!({"ipMasq":false,"ipam":{"routes":[{"dst":"10.1.0.0/16"}],"ranges":[[{"subnet":"10.1.17.0/24"}]],
            "type":"host-local"},"isGateway":true,"mtu":1472,"name":"cni-flannel","type":"bridge","cniVersion":"0.3.1"});
        assert_eq!(d, want);
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

    proptest! {
        #[test]
        fn subnet_env_parse_never_panics(s in ".{0,300}") {
            let _ = SubnetEnv::parse(&s);
        }
    }
}
