//! The Kubernetes subnet manager against an in-process API server speaking the real API (HTTPS, bearer token,
//! Node list/watch/patch JSON; see the apiserver-fake crate). Each test has its own server on 127.0.0.1.

use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::time::Duration;

use apiserver_fake::{FakeApiServer, Options};
use serde_json::{json, Value};
use subnet::kube::{KubeOptions, KubeSource, DEFAULT_ANNOTATION_PREFIX};
use subnet::{LeaseAttrs, ManagerError, PeerSnapshot, RegistryError, SubnetKey, SubnetManager};
use tokio::sync::watch;
use tokio::time::timeout;

const P: &str = "flannel.alpha.coreos.com";

struct Fixture {
    api: FakeApiServer,
    dir: PathBuf,
}

impl Drop for Fixture {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

static N: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);

impl Fixture {
    fn new() -> Self {
        let api = FakeApiServer::start(Options {
            bookmark_every: Duration::from_millis(500),
            ..Default::default()
        })
        .expect("fake API server");
        let dir = std::env::temp_dir().join(format!(
            "flannel-rs-kube-{}-{}",
            std::process::id(),
            N.fetch_add(1, std::sync::atomic::Ordering::SeqCst)
        ));
        std::fs::create_dir_all(&dir).expect("temp dir");
        api.write_kubeconfig(&dir.join("kubeconfig"), None)
            .expect("kubeconfig");
        std::fs::write(
            dir.join("net-conf.json"),
            r#"{"Network":"10.244.0.0/16","Backend":{"Type":"vxlan"}}"#,
        )
        .expect("net-conf");
        Fixture { api, dir }
    }

    fn options(&self, node: &str) -> KubeOptions {
        KubeOptions {
            kubeconfig: Some(self.dir.join("kubeconfig")),
            annotation_prefix: DEFAULT_ANNOTATION_PREFIX.into(),
            net_config_path: self.dir.join("net-conf.json"),
            set_node_network_unavailable: true,
            node_name: Some(node.into()),
            ..Default::default()
        }
    }

    async fn source(&self, node: &str) -> KubeSource {
        KubeSource::connect(self.options(node))
            .await
            .expect("connect")
    }

    /// This node's Node, `n1`, with podCIDR 10.244.1.0/24 and no annotations yet.
    fn own_node(&self) {
        self.api
            .add_node("n1", &["10.244.1.0/24"], json!({}), "192.0.2.1");
    }

    /// `n1` added, its source connected, the network config read and its lease acquired with [`attrs`].
    async fn own_node_up(&self) -> (KubeSource, subnet::NetworkConfig, subnet::Lease) {
        self.own_node();
        let src = self.source("n1").await;
        let cfg = src.network_config().await.expect("config");
        let lease = src.acquire(&cfg, &attrs()).await.expect("acquire");
        (src, cfg, lease)
    }

    /// A peer node as flanneld on it would have annotated it.
    fn peer(&self, name: &str, third: u8) {
        self.api.add_node(
            name,
            &[&format!("10.244.{third}.0/24")],
            json!({
                format!("{P}/kube-subnet-manager"): "true",
                format!("{P}/backend-type"): "vxlan",
                format!("{P}/backend-data"): format!("{{\"VNI\":1,\"VtepMAC\":\"0e:00:00:00:00:{third:02x}\"}}"),
                format!("{P}/public-ip"): format!("192.0.2.{third}"),
            }),
            &format!("192.0.2.{third}"),
        );
    }
}

fn attrs() -> LeaseAttrs {
    LeaseAttrs {
        public_ip: Ipv4Addr::new(192, 0, 2, 1),
        public_ipv6: None,
        backend_type: "vxlan".into(),
        backend_data: Some(json!({"VNI": 1, "VtepMAC": "0e:00:00:00:00:01"}).into()),
        backend_v6_data: None,
    }
}

async fn wait_snapshot(
    rx: &mut watch::Receiver<PeerSnapshot>,
    what: &str,
    pred: impl Fn(&PeerSnapshot) -> bool,
) -> PeerSnapshot {
    let r = timeout(Duration::from_secs(15), async {
        loop {
            {
                let s = rx.borrow_and_update();
                if pred(&s) {
                    return s.clone();
                }
            }
            if rx.changed().await.is_err() {
                panic!("watcher ended");
            }
        }
    })
    .await;
    r.unwrap_or_else(|_| {
        panic!(
            "timed out waiting for {what}: {:?}",
            rx.borrow().leases.keys()
        )
    })
}

fn keys(s: &PeerSnapshot) -> Vec<String> {
    s.leases.keys().map(|k| k.to_string()).collect()
}

#[tokio::test]
async fn acquire_writes_upstreams_annotations_and_condition() {
    let fx = Fixture::new();
    let (src, cfg, lease) = fx.own_node_up().await;
    assert_eq!(lease.key().to_string(), "10.244.1.0-24");
    let patches = fx.api.patches();
    assert_eq!(patches.len(), 1, "{patches:?}");
    assert_eq!(patches[0].path, "/api/v1/nodes/n1/status");
    assert_eq!(
        patches[0].content_type,
        "application/strategic-merge-patch+json"
    );
    assert_eq!(
        patches[0].body,
        json!({"metadata": {"annotations": {
            "flannel.alpha.coreos.com/backend-data": "{\"VNI\":1,\"VtepMAC\":\"0e:00:00:00:00:01\"}",
            "flannel.alpha.coreos.com/backend-type": "vxlan",
            "flannel.alpha.coreos.com/kube-subnet-manager": "true",
            "flannel.alpha.coreos.com/public-ip": "192.0.2.1",
        }}})
    );
    // Asking again with the same attributes changes nothing.
    src.acquire(&cfg, &attrs()).await.expect("acquire again");
    assert_eq!(fx.api.patches().len(), 1);

    src.complete(&lease).await.expect("complete");
    let node = fx.api.node("n1").expect("node");
    let cond = node["status"]["conditions"]
        .as_array()
        .and_then(|c| c.iter().find(|c| c["type"] == "NetworkUnavailable"))
        .cloned()
        .expect("NetworkUnavailable condition");
    assert_eq!(cond["status"], "False");
    assert_eq!(cond["reason"], "FlannelIsUp");
    assert_eq!(cond["message"], "Flannel is running on this node");
    assert!(
        cond["lastTransitionTime"]
            .as_str()
            .is_some_and(|t| t.ends_with('Z')),
        "{cond}"
    );
    // The kubelet's Ready condition is untouched.
    assert!(node["status"]["conditions"]
        .as_array()
        .is_some_and(|c| c.iter().any(|c| c["type"] == "Ready")));
}

#[tokio::test]
async fn no_podcidr_yet_is_a_wait_then_works() {
    let fx = Fixture::new();
    fx.api.add_node("n1", &[], json!({}), "192.0.2.1");
    let src = fx.source("n1").await;
    let cfg = src.network_config().await.expect("config");
    match src.acquire(&cfg, &attrs()).await {
        Err(e @ ManagerError::Waiting(_)) => {
            assert!(e.is_retryable());
            assert!(e.to_string().contains("\"n1\" has no podCIDR yet"), "{e}");
        }
        other => panic!("expected a wait, got {other:?}"),
    }
    fx.api.set_pod_cidrs("n1", &["10.244.7.0/24"]);
    let l = src.acquire(&cfg, &attrs()).await.expect("acquire");
    assert_eq!(l.subnet.to_string(), "10.244.7.0/24");
}

#[tokio::test]
async fn podcidr_outside_network_is_an_error_naming_both() {
    let fx = Fixture::new();
    fx.api
        .add_node("n1", &["10.99.1.0/24"], json!({}), "192.0.2.1");
    let src = fx.source("n1").await;
    let cfg = src.network_config().await.expect("config");
    let e = src.acquire(&cfg, &attrs()).await.unwrap_err();
    assert!(!e.is_retryable(), "{e}");
    let m = e.to_string();
    assert!(
        m.contains("10.244.0.0/16") && m.contains("10.99.1.0/24") && m.contains("n1"),
        "{m}"
    );
}

#[tokio::test]
async fn dual_stack_podcidrs() {
    let fx = Fixture::new();
    std::fs::write(
        fx.dir.join("net-conf.json"),
        r#"{"Network":"10.244.0.0/16","EnableIPv6":true,"IPv6Network":"fd00:10:244::/56","Backend":{"Type":"vxlan"}}"#,
    )
    .unwrap();
    fx.api.add_node(
        "n1",
        &["10.244.1.0/24", "fd00:10:244:1::/64"],
        json!({}),
        "192.0.2.1",
    );
    let src = fx.source("n1").await;
    let cfg = src.network_config().await.expect("config");
    let a = LeaseAttrs {
        public_ipv6: Some("2001:db8::1".parse().unwrap()),
        backend_v6_data: Some(json!({"VNI": 1, "VtepMAC": "0e:00:00:00:01:01"}).into()),
        ..attrs()
    };
    let l = src.acquire(&cfg, &a).await.expect("acquire");
    assert_eq!(l.key().to_string(), "10.244.1.0-24&fd00:10:244:1::-64");
    let ann = &fx.api.patches()[0].body["metadata"]["annotations"];
    assert_eq!(ann[format!("{P}/public-ipv6")], "2001:db8::1");
    assert!(ann[format!("{P}/backend-v6-data")]
        .as_str()
        .is_some_and(|d| d.contains("0e:00:00:00:01:01")));
    // A peer with both families.
    fx.api.add_node(
        "n2",
        &["10.244.2.0/24", "fd00:10:244:2::/64"],
        json!({format!("{P}/kube-subnet-manager"): "true", format!("{P}/backend-type"): "vxlan",
               format!("{P}/backend-data"): "{\"VNI\":1,\"VtepMAC\":\"0e:00:00:00:00:02\"}",
               format!("{P}/backend-v6-data"): "{\"VNI\":1,\"VtepMAC\":\"0e:00:00:00:01:02\"}",
               format!("{P}/public-ip"): "192.0.2.2", format!("{P}/public-ipv6"): "2001:db8::2"}),
        "192.0.2.2",
    );
    let w = src.watch_peers(l.key());
    let mut rx = w.subscribe();
    let s = wait_snapshot(&mut rx, "n2", |s| s.synced && s.leases.len() == 1).await;
    let p = s.leases.values().next().unwrap();
    assert_eq!(p.key().to_string(), "10.244.2.0-24&fd00:10:244:2::-64");
    assert_eq!(p.attrs.public_ipv6, Some("2001:db8::2".parse().unwrap()));
}

#[tokio::test]
async fn peers_follow_nodes() {
    let fx = Fixture::new();
    fx.peer("n2", 2);
    fx.peer("n3", 3);
    // Not flannel's: no kube-subnet-manager annotation.
    fx.api
        .add_node("other", &["10.244.9.0/24"], json!({}), "192.0.2.9");
    let (src, _, own) = fx.own_node_up().await;
    let w = src.watch_peers(own.key());
    let mut rx = w.subscribe();
    let s = wait_snapshot(&mut rx, "initial list", |s| s.synced).await;
    assert_eq!(
        keys(&s),
        vec!["10.244.2.0-24", "10.244.3.0-24"],
        "own node and non-flannel nodes left out"
    );
    let l2 = &s.leases[&"10.244.2.0-24".parse::<SubnetKey>().unwrap()];
    assert_eq!(l2.attrs.public_ip, Ipv4Addr::new(192, 0, 2, 2));
    assert_eq!(
        l2.attrs.backend_data,
        Some(json!({"VNI": 1, "VtepMAC": "0e:00:00:00:00:02"}).into())
    );

    // A node appears.
    fx.peer("n4", 4);
    wait_snapshot(&mut rx, "n4 added", |s| {
        s.leases.contains_key(&"10.244.4.0-24".parse().unwrap())
    })
    .await;
    // A node changes its public IP.
    fx.api
        .annotate("n2", &format!("{P}/public-ip"), Some("192.0.2.22"));
    wait_snapshot(&mut rx, "n2 moved", |s| {
        s.leases
            .get(&"10.244.2.0-24".parse().unwrap())
            .is_some_and(|l| l.attrs.public_ip == Ipv4Addr::new(192, 0, 2, 22))
    })
    .await;
    // A node loses flannel's annotations.
    fx.api
        .annotate("n3", &format!("{P}/kube-subnet-manager"), None);
    wait_snapshot(&mut rx, "n3 gone", |s| {
        !s.leases.contains_key(&"10.244.3.0-24".parse().unwrap())
    })
    .await;
    // A node is deleted.
    fx.api.delete_node("n4");
    let s = wait_snapshot(&mut rx, "n4 deleted", |s| {
        !s.leases.contains_key(&"10.244.4.0-24".parse().unwrap())
    })
    .await;
    assert_eq!(keys(&s), vec!["10.244.2.0-24"]);
    // A malformed node is ignored (and the others stay).
    fx.api.add_node(
        "bad",
        &["10.244.5.0/24"],
        json!({format!("{P}/kube-subnet-manager"): "true", format!("{P}/public-ip"): "not-an-ip"}),
        "192.0.2.5",
    );
    fx.peer("n6", 6);
    let s = wait_snapshot(&mut rx, "n6", |s| {
        s.leases.contains_key(&"10.244.6.0-24".parse().unwrap())
    })
    .await;
    assert_eq!(keys(&s), vec!["10.244.2.0-24", "10.244.6.0-24"]);
}

#[tokio::test]
async fn relist_after_410_and_outage_keeps_the_set() {
    let fx = Fixture::new();
    fx.own_node();
    fx.peer("n2", 2);
    let src = fx.source("n1").await;
    let w = src.watch_peers("10.244.1.0-24".parse().unwrap());
    let mut rx = w.subscribe();
    wait_snapshot(&mut rx, "list", |s| s.synced && s.leases.len() == 1).await;
    let lists_before = fx
        .api
        .requests()
        .iter()
        .filter(|r| !r.contains("watch="))
        .count();
    // History gone: the watch resumes with 410 and the watcher lists again; a change made meanwhile shows.
    fx.api.compact();
    fx.peer("n3", 3);
    let s = wait_snapshot(&mut rx, "after 410", |s| s.leases.len() == 2).await;
    assert!(s.synced);
    let lists_after = fx
        .api
        .requests()
        .iter()
        .filter(|r| !r.contains("watch="))
        .count();
    assert!(
        lists_after > lists_before,
        "a re-list after 410: {:?}",
        fx.api.requests()
    );

    // The API goes away: the set stays as it was (nothing is unprogrammed on its account).
    fx.api.set_up(false);
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(rx.borrow().leases.len(), 2);
    assert!(rx.borrow().synced);
    fx.api.delete_node("n2");
    fx.api.set_up(true);
    let s = wait_snapshot(&mut rx, "after outage", |s| s.leases.len() == 1).await;
    assert_eq!(keys(&s), vec!["10.244.3.0-24"]);
}

#[tokio::test]
async fn initial_list_is_paged() {
    let fx = Fixture::new();
    fx.own_node();
    for i in 0..1200u32 {
        let third = 2 + i / 250;
        let fourth = i % 250;
        fx.api.add_node(
            &format!("m{i:04}"),
            &[&format!("10.{third}.{fourth}.0/24")],
            json!({format!("{P}/kube-subnet-manager"): "true", format!("{P}/backend-type"): "vxlan",
                   format!("{P}/backend-data"): "{\"VNI\":1,\"VtepMAC\":\"0e:00:00:00:00:09\"}",
                   format!("{P}/public-ip"): "192.0.2.9"}),
            "192.0.2.9",
        );
    }
    std::fs::write(fx.dir.join("net-conf.json"), r#"{"Network":"10.0.0.0/8"}"#).unwrap();
    let src = fx.source("n1").await;
    src.network_config().await.expect("config");
    let w = src.watch_peers("10.244.1.0-24".parse().unwrap());
    let mut rx = w.subscribe();
    let s = wait_snapshot(&mut rx, "1200 nodes", |s| s.synced).await;
    assert_eq!(s.leases.len(), 1200);
    let lists: Vec<String> = fx
        .api
        .requests()
        .into_iter()
        .filter(|r| !r.contains("watch="))
        .collect();
    assert!(
        lists.len() >= 3 && lists.iter().all(|r| r.contains("limit=500")),
        "{lists:?}"
    );
    assert!(lists.iter().any(|r| r.contains("continue=")), "{lists:?}");
}

#[tokio::test]
async fn stored_public_ip_and_backend_data_are_read_back() {
    let fx = Fixture::new();
    fx.api.add_node(
        "n1",
        &["10.244.1.0/24"],
        json!({format!("{P}/node-public-ip"): "192.0.2.101",
               format!("{P}/backend-data"): "{\"VNI\":1,\"VtepMAC\":\"02:42:ac:11:00:09\"}"}),
        "192.0.2.1",
    );
    let st = fx.source("n1").await.stored().await;
    assert_eq!(st.public_ip, Some(Ipv4Addr::new(192, 0, 2, 101)));
    assert_eq!(
        st.backend_data,
        Some(json!({"VNI": 1, "VtepMAC": "02:42:ac:11:00:09"}).into())
    );
}

#[tokio::test]
async fn node_name_from_the_pod_and_clear_errors() {
    let fx = Fixture::new();
    fx.own_node();
    fx.api
        .add_pod("kube-flannel", "kube-flannel-ds-abcde", "n1");
    let mut o = fx.options("");
    o.node_name = None;
    o.pod_name = Some("kube-flannel-ds-abcde".into());
    o.pod_namespace = Some("kube-flannel".into());
    let src = KubeSource::connect(o.clone()).await.expect("connect");
    assert_eq!(src.node_name(), "n1");
    // Neither: a clear error.
    o.pod_name = None;
    let e = KubeSource::connect(o)
        .await
        .err()
        .expect("error")
        .to_string();
    assert!(e.contains("NODE_NAME") && e.contains("POD_NAME"), "{e}");
    // A kubeconfig that is not there.
    let mut o = fx.options("n1");
    o.kubeconfig = Some(fx.dir.join("missing"));
    let e = KubeSource::connect(o).await.err().expect("error");
    assert!(matches!(e, RegistryError::Options(_)), "{e:?}");
    assert!(e.to_string().contains("missing"), "{e}");
}

#[tokio::test]
async fn missing_rights_and_bad_token_name_the_verb_and_resource() {
    let fx = Fixture::new();
    fx.own_node();
    fx.api.forbid("patch", "nodes/status");
    let src = fx.source("n1").await;
    let cfg = src.network_config().await.expect("config");
    let e = src.acquire(&cfg, &attrs()).await.unwrap_err();
    let m = e.to_string();
    assert!(
        m.contains("denied") && m.contains("patch") && m.contains("nodes/status"),
        "{m}"
    );
    assert!(!e.is_retryable());
    // A wrong token.
    let kc = fx.dir.join("kubeconfig");
    let text = std::fs::read_to_string(&kc)
        .unwrap()
        .replace(&fx.api.token(), "wrong");
    std::fs::write(&kc, text).unwrap();
    let src = fx.source("n1").await;
    let e = src.acquire(&cfg, &attrs()).await.unwrap_err().to_string();
    assert!(e.contains("denied") && e.contains("401"), "{e}");
}

#[tokio::test]
async fn own_annotations_are_written_back_when_changed_by_someone_else() {
    let fx = Fixture::new();
    let (src, cfg, lease) = fx.own_node_up().await;
    let (tx, rx) = watch::channel(attrs());
    let keeper = {
        let (s, c) = (src.clone(), cfg.clone());
        tokio::spawn(async move { s.keep(&c, lease, rx).await })
    };
    tokio::time::sleep(Duration::from_millis(500)).await;
    fx.api
        .annotate("n1", &format!("{P}/public-ip"), Some("192.0.2.66"));
    let key = format!("{P}/public-ip");
    let back = timeout(Duration::from_secs(10), async {
        loop {
            if fx
                .api
                .node("n1")
                .is_some_and(|n| n["metadata"]["annotations"][&key] == "192.0.2.1")
            {
                return;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    })
    .await;
    assert!(back.is_ok(), "not written back: {:?}", fx.api.node("n1"));
    // New attributes (a recreated device) are published.
    tx.send_replace(LeaseAttrs {
        backend_data: Some(json!({"VNI": 1, "VtepMAC": "0e:00:00:00:00:aa"}).into()),
        ..attrs()
    });
    let key = format!("{P}/backend-data");
    let published = timeout(Duration::from_secs(10), async {
        loop {
            let v: Option<Value> = fx
                .api
                .node("n1")
                .map(|n| n["metadata"]["annotations"][&key].clone());
            if v.as_ref()
                .and_then(Value::as_str)
                .is_some_and(|d| d.contains("0e:00:00:00:00:aa"))
            {
                return;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    })
    .await;
    assert!(published.is_ok(), "{:?}", fx.api.node("n1"));
    keeper.abort();
}

/// A service-account token rotates (the kubelet rewrites the projected token file; the old token expires): the
/// client reads the file again and the Node watch carries on. The kubeconfig's `tokenFile` is the same mechanism
/// the in-cluster config uses for `/var/run/secrets/kubernetes.io/serviceaccount/token`, which a test cannot
/// write on the host. The client re-reads a token file at most once a minute, so this takes one to two minutes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rotated_token_file_is_read_again() {
    let fx = Fixture::new();
    let token = fx.dir.join("token");
    std::fs::write(&token, fx.api.token()).expect("token file");
    fx.api
        .write_kubeconfig(&fx.dir.join("kubeconfig"), Some(&token))
        .expect("kubeconfig");
    fx.peer("n2", 2);
    let (src, _, own) = fx.own_node_up().await;
    let w = src.watch_peers(own.key());
    let mut rx = w.subscribe();
    wait_snapshot(&mut rx, "initial list", |s| s.synced && s.leases.len() == 1).await;

    // Rotate: the file first (as the kubelet does, ahead of expiry), then the server stops taking the old token.
    std::fs::write(&token, "rotated-token").expect("rotate token file");
    fx.api.rotate_token("rotated-token");
    fx.peer("n3", 3);
    let got = timeout(Duration::from_secs(150), async {
        loop {
            if rx.borrow_and_update().leases.len() == 2 {
                return;
            }
            if rx.changed().await.is_err() {
                panic!("watcher ended");
            }
        }
    })
    .await;
    assert!(
        got.is_ok(),
        "the watch did not come back with the rotated token: {:?}",
        keys(&rx.borrow())
    );
    // The peers known before stayed published while the old token was refused.
    assert!(rx
        .borrow()
        .leases
        .contains_key(&"10.244.2.0-24".parse().unwrap()));
}
