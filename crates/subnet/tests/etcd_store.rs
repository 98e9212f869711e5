//! The store suite against a real etcd (Debian's etcd 3.4 on 127.0.0.1), plus etcd-only
//! checks (key layout, authentication).

mod common;
mod suite;

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::EtcdServer;
use etcd_client::{Client, CompactionOptions, GetOptions, PutOptions};
use subnet::etcd::{EtcdOptions, EtcdRegistry};
use subnet::{Registry, RegistryError, SharedRegistry};
use suite::Fixture;
use tokio::sync::Mutex;

static PREFIX_N: AtomicU32 = AtomicU32::new(0);

struct EtcdFixture {
    server: Mutex<EtcdServer>,
    url: String,
    prefix: String,
    raw: Client,
}

impl EtcdFixture {
    async fn start() -> Self {
        suite::init_logs();
        let server = EtcdServer::start().await;
        let url = server.url();
        let raw = Client::connect([url.as_str()], None)
            .await
            .expect("raw client");
        // A non-default prefix also checks that nothing hard-codes /coreos.com/network.
        let prefix = format!(
            "/test{}/coreos.com/network",
            PREFIX_N.fetch_add(1, Ordering::SeqCst)
        );
        EtcdFixture {
            server: Mutex::new(server),
            url,
            prefix,
            raw,
        }
    }

    fn options(&self) -> EtcdOptions {
        EtcdOptions {
            endpoints: vec![self.url.clone()],
            prefix: self.prefix.clone(),
            request_timeout: Duration::from_secs(2),
            connect_timeout: Duration::from_secs(1),
            ..Default::default()
        }
    }

    async fn registry(&self) -> EtcdRegistry {
        EtcdRegistry::connect(self.options())
            .await
            .expect("connect")
    }
}

#[async_trait::async_trait]
impl Fixture for EtcdFixture {
    async fn store(&self) -> SharedRegistry {
        Arc::new(self.registry().await)
    }

    async fn put_config(&self, json: &str) {
        let mut c = self.raw.clone();
        c.put(format!("{}/config", self.prefix), json, None)
            .await
            .expect("put config");
    }

    async fn put_raw(&self, key: &str, value: &str, ttl_secs: Option<i64>) {
        let mut c = self.raw.clone();
        let mut opts = PutOptions::new();
        if let Some(ttl) = ttl_secs {
            let id = c.lease_grant(ttl, None).await.expect("grant").id();
            opts = opts.with_lease(id);
        }
        c.put(format!("{}/subnets/{key}", self.prefix), value, Some(opts))
            .await
            .expect("put raw");
    }

    async fn delete_raw(&self, key: &str) {
        let mut c = self.raw.clone();
        c.delete(format!("{}/subnets/{key}", self.prefix), None)
            .await
            .expect("delete raw");
    }

    async fn compact(&self) {
        let mut c = self.raw.clone();
        let rev = c
            .get("/", None)
            .await
            .expect("get")
            .header()
            .expect("header")
            .revision();
        c.compact(rev, Some(CompactionOptions::new().with_physical()))
            .await
            .expect("compact");
    }

    async fn stop(&self) {
        self.server.lock().await.kill();
    }

    async fn start(&self) {
        self.server.lock().await.restart().await;
    }
}

#[tokio::test]
async fn config_read() {
    let fx = EtcdFixture::start().await;
    suite::config_read(&fx).await;
    // Upstream's exact wording for the missing config.
    let other = EtcdRegistry::connect(EtcdOptions {
        prefix: "/nothing/here".into(),
        ..fx.options()
    })
    .await
    .expect("connect");
    let e = other.get_network_config().await.expect_err("no config");
    assert!(
        e.to_string().starts_with(
            "flannel config not found in etcd store. Did you create your config using etcdv3 API?"
        ),
        "{e}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fifty_concurrent_acquisitions() {
    let fx = EtcdFixture::start().await;
    suite::concurrent_acquisitions(&fx, 50).await;
}

#[tokio::test]
async fn ttl_expiry_and_renewal() {
    let fx = EtcdFixture::start().await;
    suite::ttl_expiry_and_renewal(&fx).await;
}

#[tokio::test]
async fn reuse_after_restart() {
    let fx = EtcdFixture::start().await;
    suite::reuse_after_restart(&fx).await;
}

#[tokio::test]
async fn upstream_lease_reused() {
    let fx = EtcdFixture::start().await;
    suite::upstream_lease_reused(&fx).await;
    // The key layout is upstream's.
    let mut c = fx.raw.clone();
    let r = c
        .get(
            format!("{}/subnets/", fx.prefix),
            Some(GetOptions::new().with_prefix()),
        )
        .await
        .expect("get");
    let keys: Vec<String> = r
        .kvs()
        .iter()
        .map(|kv| String::from_utf8_lossy(kv.key()).into_owned())
        .collect();
    assert!(
        keys.contains(&format!("{}/subnets/10.244.77.0-24", fx.prefix)),
        "{keys:?}"
    );
    // The reservation was rewritten without an etcd lease.
    let r = c
        .get(format!("{}/subnets/10.244.78.0-24", fx.prefix), None)
        .await
        .expect("get");
    assert_eq!(r.kvs()[0].lease(), 0);
}

#[tokio::test]
async fn watch_add_delete() {
    let fx = EtcdFixture::start().await;
    suite::watch_add_delete(&fx).await;
}

#[tokio::test]
async fn compaction_recovery() {
    let fx = EtcdFixture::start().await;
    suite::compaction_recovery(&fx).await;
}

#[tokio::test]
async fn malformed_lease_skipped() {
    let fx = EtcdFixture::start().await;
    suite::malformed_lease_skipped(&fx).await;
}

#[tokio::test]
async fn own_lease_revocation() {
    let fx = EtcdFixture::start().await;
    suite::own_lease_revocation(&fx).await;
}

#[tokio::test]
async fn etcd_restart_watch_resumes() {
    let fx = EtcdFixture::start().await;
    let s = suite::store_restart_watch_resumes(&fx).await;
    // etcd kept its history, so the watcher resumed from its revision without a new list.
    assert_eq!(s.lists, 1, "expected a resumed watch, not a re-list: {s:?}");
}

#[tokio::test]
async fn unreachable_etcd_is_retryable() {
    // A port nobody listens on: every request fails fast with a retryable error.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .expect("bind")
        .local_addr()
        .expect("addr")
        .port();
    let r = EtcdRegistry::connect(EtcdOptions {
        endpoints: vec![format!("http://127.0.0.1:{port}")],
        request_timeout: Duration::from_secs(1),
        connect_timeout: Duration::from_millis(500),
        ..Default::default()
    })
    .await
    .expect("connect is lazy");
    // An answer, not a hang (the outer bound only keeps a broken client from blocking the suite).
    let e = tokio::time::timeout(Duration::from_secs(30), r.get_network_config())
        .await
        .expect("the request must end")
        .expect_err("nothing listens");
    assert!(e.is_retryable(), "{e:?}");
    assert!(matches!(e, RegistryError::Unavailable(_)), "{e:?}");
}

#[tokio::test]
async fn username_password_auth() {
    let fx = EtcdFixture::start().await;
    let mut c = fx.raw.clone();
    c.user_add("root", "rootpw", None).await.expect("user add");
    c.user_grant_role("root", "root").await.expect("grant");
    c.user_add("flannel", "s3cret", None)
        .await
        .expect("user add");
    c.role_add("flannel").await.expect("role add");
    c.role_grant_permission(
        "flannel",
        etcd_client::Permission::read_write(format!("{}/", fx.prefix)).with_prefix(),
    )
    .await
    .expect("grant perm");
    c.user_grant_role("flannel", "flannel")
        .await
        .expect("grant role");
    c.auth_enable().await.expect("auth enable");

    let mut root = Client::connect(
        [fx.url.as_str()],
        Some(etcd_client::ConnectOptions::new().with_user("root", "rootpw")),
    )
    .await
    .expect("root client");
    root.put(format!("{}/config", fx.prefix), suite::CONFIG, None)
        .await
        .expect("put config");

    let ok = EtcdRegistry::connect(EtcdOptions {
        username: Some("flannel".into()),
        password: Some("s3cret".into()),
        ..fx.options()
    })
    .await
    .expect("authenticated connect");
    assert!(ok.get_network_config().await.is_ok());

    let bad = EtcdRegistry::connect(EtcdOptions {
        username: Some("flannel".into()),
        password: Some("wrong".into()),
        ..fx.options()
    })
    .await;
    match bad {
        Err(RegistryError::Denied(_)) => {}
        other => panic!("expected Denied, got {other:?}"),
    }
    let anon = fx.registry().await;
    match anon.get_network_config().await {
        Err(e) => assert!(matches!(e, RegistryError::Denied(_)), "{e:?}"),
        Ok(_) => panic!("anonymous read must be refused with auth on"),
    }
}

/// Makes a CA, a server certificate for 127.0.0.1 and a client certificate with openssl.
fn make_certs(dir: &std::path::Path) -> bool {
    let sh = |args: &[&str]| {
        std::process::Command::new("openssl")
            .args(args)
            .current_dir(dir)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .status()
            .map(|s| s.success())
            .unwrap_or(false)
    };
    let ec = [
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:prime256v1",
        "-nodes",
    ];
    let ok = sh(&[
        &["req", "-x509"],
        &ec[..],
        &[
            "-keyout",
            "ca.key",
            "-out",
            "ca.pem",
            "-days",
            "1",
            "-subj",
            "/CN=test-ca",
        ],
    ]
    .concat());
    if !ok {
        return false;
    }
    for (name, ext) in [
        (
            "server",
            "subjectAltName=IP:127.0.0.1\nextendedKeyUsage=serverAuth\n",
        ),
        ("client", "extendedKeyUsage=clientAuth\n"),
    ] {
        if std::fs::write(dir.join(format!("{name}.ext")), ext).is_err() {
            return false;
        }
        let key = format!("{name}.key");
        let csr = format!("{name}.csr");
        let pem = format!("{name}.pem");
        let extf = format!("{name}.ext");
        if !sh(&[
            &["req"],
            &ec[..],
            &[
                "-keyout",
                &key,
                "-out",
                &csr,
                "-subj",
                &format!("/CN={name}"),
            ],
        ]
        .concat())
            || !sh(&[
                "x509",
                "-req",
                "-in",
                &csr,
                "-CA",
                "ca.pem",
                "-CAkey",
                "ca.key",
                "-CAcreateserial",
                "-out",
                &pem,
                "-days",
                "1",
                "-extfile",
                &extf,
            ])
        {
            return false;
        }
    }
    true
}

#[tokio::test]
async fn tls_client_certificates() {
    suite::init_logs();
    let certs = common::TempDir::new("certs");
    if !make_certs(certs.path()) {
        eprintln!("skipping: openssl could not make test certificates");
        return;
    }
    let p = |f: &str| certs.path().join(f);
    let server = EtcdServer::start_with(
        vec![
            "--cert-file".into(),
            p("server.pem").display().to_string(),
            "--key-file".into(),
            p("server.key").display().to_string(),
            "--trusted-ca-file".into(),
            p("ca.pem").display().to_string(),
            "--client-cert-auth".into(),
        ],
        "https",
    )
    .await;
    let opts = EtcdOptions {
        endpoints: vec![server.url()],
        prefix: "/tls/coreos.com/network".into(),
        keyfile: Some(p("client.key")),
        certfile: Some(p("client.pem")),
        cafile: Some(p("ca.pem")),
        request_timeout: Duration::from_secs(3),
        connect_timeout: Duration::from_secs(2),
        ..Default::default()
    };
    let r = EtcdRegistry::connect(opts.clone()).await.expect("connect");
    // etcd may need a moment after opening its port: retry briefly.
    let mut result = r.get_network_config().await;
    for _ in 0..20 {
        if !matches!(result, Err(RegistryError::Unavailable(_))) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
        result = r.get_network_config().await;
    }
    assert!(
        matches!(result, Err(RegistryError::ConfigNotFound(_))),
        "{result:?}"
    );
    let key = "10.244.5.0-24".parse().expect("key");
    let created = r
        .create_subnet(
            &key,
            &suite::attrs("192.0.2.5".parse().expect("ip")),
            Some(Duration::from_secs(60)),
        )
        .await
        .expect("create over TLS");
    assert!(created.is_some());

    // Without a client certificate the server refuses us.
    let anon = EtcdRegistry::connect(EtcdOptions {
        keyfile: None,
        certfile: None,
        ..opts
    })
    .await
    .expect("connect is lazy");
    assert!(anon.get_network_config().await.is_err());
}

#[tokio::test]
async fn watch_ahead_of_store_asks_for_relist() {
    // As after etcd was rebuilt: our revision is beyond anything the store has.
    let fx = EtcdFixture::start().await;
    let r = fx.registry().await;
    let (_, rev) = r.get_subnets().await.expect("list");
    let mut s = r.watch_subnets(rev + 1000).await.expect("watch");
    let first = tokio::time::timeout(Duration::from_secs(5), futures::StreamExt::next(&mut s))
        .await
        .expect("answer");
    assert!(
        matches!(first, Some(Err(RegistryError::Compacted { .. }))),
        "{first:?}"
    );
}

#[tokio::test]
async fn own_lease_overwritten_is_restored() {
    let fx = EtcdFixture::start().await;
    suite::own_lease_overwritten_is_restored(&fx).await;
}

#[tokio::test]
async fn lease_created_revision_kept() {
    let fx = EtcdFixture::start().await;
    suite::lease_created_revision_kept(&fx).await;
}

/// What an operator reads when etcd cannot be reached: which endpoints, and why (refused, timed out, TLS).
#[tokio::test]
async fn unreachable_etcd_is_named_with_the_cause() {
    let opts = |url: String| EtcdOptions {
        endpoints: vec![url],
        request_timeout: Duration::from_secs(1),
        connect_timeout: Duration::from_secs(1),
        ..Default::default()
    };
    let failure = |r: Result<String, RegistryError>| match r {
        Err(RegistryError::Unavailable(m)) => {
            println!("{m}");
            m
        }
        other => panic!("expected an unavailable store, got {other:?}"),
    };

    // Nothing listens: refused.
    let closed = format!("http://127.0.0.1:{}", common::free_port());
    let r = EtcdRegistry::connect(opts(closed.clone()))
        .await
        .expect("connect is lazy");
    let m = failure(r.get_network_config().await);
    assert!(
        m.contains(&closed) && m.contains("connection refused"),
        "{m}"
    );

    // Something accepts and never answers: timed out.
    let silent = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let url = format!("http://{}", silent.local_addr().expect("addr"));
    let held = std::thread::spawn(move || {
        // Keep the accepted connections open (and silent) until the listener's test is done.
        let conns: Vec<_> = silent.incoming().take(4).flatten().collect();
        std::thread::sleep(Duration::from_secs(5));
        drop(conns);
    });
    let r = EtcdRegistry::connect(opts(url.clone()))
        .await
        .expect("connect is lazy");
    let m = failure(r.get_network_config().await);
    assert!(m.contains(&url) && m.contains("timed out"), "{m}");
    drop(held);

    // TLS to a plain-HTTP etcd: the handshake fails, and the message says so.
    let server = EtcdServer::start().await;
    let tls_url = server.url().replace("http://", "https://");
    match EtcdRegistry::connect(opts(tls_url.clone())).await {
        Err(RegistryError::Unavailable(m)) => {
            println!("{m}");
            assert!(m.contains(&tls_url) && m.contains("TLS"), "{m}")
        }
        Err(e) => panic!("unexpected {e:?}"),
        Ok(r) => {
            let m = failure(r.get_network_config().await);
            assert!(m.contains(&tls_url) && m.contains("TLS"), "{m}");
        }
    }
}
