//! flanneld's `subnet.env`: the one description of its format, which flanneld writes and the flannel CNI plugin
//! reads (`KEY=value` lines as upstream flannel writes them). Here, in the crate both depend on, so the writer and
//! the reader cannot drift apart; the plugins do not link the daemon's crates.

use ipnet::IpNet;
use std::io::Write;
use std::path::Path;

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

    /// Parses the file as read from disk (text that is not UTF-8 is an error, not flanneld's absence).
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, String> {
        let text = std::str::from_utf8(bytes).map_err(|e| format!("not UTF-8 text ({e})"))?;
        Self::parse(text)
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

/// Writes `env` to `path`, creating the directory: atomically (a temp file in the same directory, synced, then
/// renamed), so the CNI plugin never reads half a file.
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

/// Reads the file at `path`, if it is there and valid (flanneld reuses the previous file's subnet on restart, and
/// its network lets stale rules be removed).
pub fn read(path: &Path) -> Option<SubnetEnv> {
    let text = std::fs::read_to_string(path).ok()?;
    SubnetEnv::parse(&text).ok()
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

    /// subnet.env's possible contents: the keys flanneld writes with values valid, near-valid or random, other
    /// lines, and random bytes.
    fn arb_subnet_env() -> impl Strategy<Value = Vec<u8>> {
        let key = prop::sample::select(vec![
            "FLANNEL_NETWORK",
            "FLANNEL_SUBNET",
            "FLANNEL_IPV6_NETWORK",
            "FLANNEL_IPV6_SUBNET",
            "FLANNEL_MTU",
            "FLANNEL_IPMASQ",
            "OTHER",
        ]);
        let value = prop_oneof![
            (any::<[u8; 4]>(), 0u8..40)
                .prop_map(|(a, p)| format!("{}.{}.{}.{}/{p}", a[0], a[1], a[2], a[3])),
            (any::<[u16; 8]>(), 0u8..140)
                .prop_map(|(a, p)| format!("{}/{p}", std::net::Ipv6Addr::from(a))),
            any::<i64>().prop_map(|n| n.to_string()),
            prop::sample::select(vec![
                "true",
                "false",
                "\"10.1.0.0/16\"",
                "10.1.0.0/16,10.2.0.0/16",
                ""
            ])
            .prop_map(str::to_string),
            ".{0,20}",
        ];
        let line = prop_oneof![
            4 => (key, value).prop_map(|(k, v)| format!("{k}={v}")),
            1 => ".{0,30}",
        ];
        prop_oneof![
            4 => prop::collection::vec(line, 0..10).prop_map(|l| l.join("\n").into_bytes()),
            1 => prop::collection::vec(any::<u8>(), 0..200),
        ]
    }

    fn arb_net() -> impl Strategy<Value = IpNet> {
        prop_oneof![
            (any::<[u8; 4]>(), 0u8..=32).prop_map(|(a, p)| IpNet::new(
                std::net::Ipv4Addr::from(a).into(),
                p
            )
            .unwrap()),
            (any::<[u16; 8]>(), 0u8..=128).prop_map(|(a, p)| IpNet::new(
                std::net::Ipv6Addr::from(a).into(),
                p
            )
            .unwrap()),
        ]
    }

    /// Every subnet.env flanneld can write: at least one network and one subnet, networks without duplicates
    /// (the parser drops repeats).
    fn arb_env() -> impl Strategy<Value = SubnetEnv> {
        let nets = || {
            prop::collection::vec(arb_net(), 0..4).prop_map(|mut v| {
                let mut seen = Vec::new();
                v.retain(|n| {
                    let new = !seen.contains(n);
                    seen.push(*n);
                    new
                });
                v
            })
        };
        (
            nets(),
            prop::option::of(arb_net()),
            nets(),
            prop::option::of(arb_net()),
            any::<u32>(),
            any::<bool>(),
        )
            .prop_filter(
                "flanneld writes a network and a subnet",
                |(n, s, n6, s6, _, _)| {
                    (!n.is_empty() || !n6.is_empty()) && (s.is_some() || s6.is_some())
                },
            )
            .prop_map(
                |(networks, subnet, ipv6_networks, ipv6_subnet, mtu, ipmasq)| SubnetEnv {
                    networks,
                    subnet,
                    ipv6_networks,
                    ipv6_subnet,
                    mtu,
                    ipmasq,
                },
            )
    }

    proptest! {
        #[test]
        fn subnet_env_parse_never_panics(s in ".{0,300}") {
            let _ = SubnetEnv::parse(&s);
        }

        /// subnet.env as read from disk: parsed or refused with a message, never a panic; what parses renders
        /// back to text that parses to the same.
        #[test]
        fn subnet_env_file_never_panics(bytes in arb_subnet_env()) {
            if let Ok(env) = SubnetEnv::from_bytes(&bytes) {
                prop_assert_eq!(SubnetEnv::parse(&env.render()), Ok(env));
            }
        }

        /// What the daemon writes, the plugin reads back as the same: through the text and through the file.
        #[test]
        fn write_then_parse_roundtrips(env in arb_env()) {
            prop_assert_eq!(SubnetEnv::parse(&env.render()), Ok(env.clone()));
            static N: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
            let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            let dir = std::env::temp_dir().join(format!("flannel-subnet-rt-{}-{n}", std::process::id()));
            let path = dir.join("subnet.env");
            write(&path, &env).unwrap();
            let back = std::fs::read(&path).map(|b| SubnetEnv::from_bytes(&b));
            std::fs::remove_dir_all(&dir).unwrap();
            prop_assert_eq!(back.unwrap(), Ok(env));
        }
    }
}
