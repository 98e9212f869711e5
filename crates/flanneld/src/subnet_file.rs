//! subnet.env: written atomically (temp file + rename) so the CNI plugin never reads half a file.

use cni::plugins::flannel::SubnetEnv;
use std::io::Write;
use std::path::Path;

/// Writes `env` to `path`, creating the directory.
pub fn write(path: &Path, env: &SubnetEnv) -> std::io::Result<()> {
    let dir = path.parent().unwrap_or_else(|| Path::new("."));
    std::fs::create_dir_all(dir)?;
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "subnet.env".into());
    let tmp = dir.join(format!(".{name}.{}", std::process::id()));
    let mut f = std::fs::File::create(&tmp)?;
    f.write_all(env.render().as_bytes())?;
    f.sync_all()?;
    drop(f);
    std::fs::rename(&tmp, path)
}

/// Reads the previous file, if any (its subnet is reused on restart, its network lets stale rules be removed).
pub fn read(path: &Path) -> Option<SubnetEnv> {
    let text = std::fs::read_to_string(path).ok()?;
    SubnetEnv::parse(&text).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn atomic_roundtrip() {
        let dir = std::env::temp_dir().join(format!("flannel-subnet-file-{}", std::process::id()));
        let path = dir.join("sub/subnet.env");
        let env = SubnetEnv {
            networks: vec!["10.244.0.0/16".parse().unwrap()],
            subnet: Some("10.244.3.1/24".parse().unwrap()),
            mtu: 1450,
            ipmasq: true,
            ..Default::default()
        };
        write(&path, &env).unwrap();
        assert_eq!(
            std::fs::read_to_string(&path).unwrap(),
            "FLANNEL_NETWORK=10.244.0.0/16\nFLANNEL_SUBNET=10.244.3.1/24\nFLANNEL_MTU=1450\nFLANNEL_IPMASQ=true\n"
        );
        assert_eq!(read(&path), Some(env));
        assert_eq!(
            std::fs::read_dir(path.parent().unwrap()).unwrap().count(),
            1,
            "no temp file left"
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
