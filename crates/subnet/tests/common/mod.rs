//! A real etcd for tests: Debian's `/usr/bin/etcd` on 127.0.0.1 with free ports and a
//! private data directory, killed and removed on drop.

#![allow(dead_code)]

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};

static COUNTER: AtomicU32 = AtomicU32::new(0);

/// Path of the etcd binary (`ETCD_BIN` overrides).
pub fn etcd_bin() -> PathBuf {
    std::env::var_os("ETCD_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/usr/bin/etcd"))
}

/// A private temporary directory, removed on drop.
pub struct TempDir(pub PathBuf);

impl TempDir {
    /// Creates `/tmp/flannel-rs-<tag>-<pid>-<n>`.
    pub fn new(tag: &str) -> Self {
        let n = COUNTER.fetch_add(1, Ordering::SeqCst);
        let p = std::env::temp_dir().join(format!("flannel-rs-{tag}-{}-{n}", std::process::id()));
        let _ = std::fs::remove_dir_all(&p);
        std::fs::create_dir_all(&p).expect("create temp dir");
        TempDir(p)
    }

    /// The directory.
    pub fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

pub fn free_port() -> u16 {
    // Bind port 0 and release it: the kernel picked a port nobody uses right now.
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("bind 127.0.0.1:0")
}

/// A running etcd.
pub struct EtcdServer {
    child: Option<Child>,
    dir: TempDir,
    client_port: u16,
    peer_port: u16,
    /// Extra command-line arguments (e.g. TLS flags).
    extra: Vec<String>,
    scheme: &'static str,
}

impl EtcdServer {
    /// Starts a plain-HTTP etcd and waits until it is healthy.
    pub async fn start() -> Self {
        Self::start_with(Vec::new(), "http").await
    }

    /// Starts an etcd with extra arguments; `scheme` is `http` or `https`.
    pub async fn start_with(extra: Vec<String>, scheme: &'static str) -> Self {
        let mut last = String::new();
        // Ports picked by bind-0 can be taken again before etcd binds them: try a few times.
        for _ in 0..3 {
            let mut s = EtcdServer {
                child: None,
                dir: TempDir::new("etcd"),
                client_port: free_port(),
                peer_port: free_port(),
                extra: extra.clone(),
                scheme,
            };
            s.spawn();
            match s.wait_ready(Duration::from_secs(20)).await {
                Ok(()) => return s,
                Err(e) => last = e,
            }
        }
        panic!("etcd did not start: {last}");
    }

    /// The client URL.
    pub fn url(&self) -> String {
        format!("{}://127.0.0.1:{}", self.scheme, self.client_port)
    }

    /// The directory holding data and log.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    fn spawn(&mut self) {
        let data = self.dir.path().join("data");
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.path().join("etcd.log"))
            .expect("open etcd log");
        let log2 = log.try_clone().expect("clone log handle");
        let peer = format!("http://127.0.0.1:{}", self.peer_port);
        let client = self.url();
        let child = Command::new(etcd_bin())
            .args(["--name", "test"])
            .arg("--data-dir")
            .arg(&data)
            .args([
                "--listen-client-urls",
                &client,
                "--advertise-client-urls",
                &client,
            ])
            .args([
                "--listen-peer-urls",
                &peer,
                "--initial-advertise-peer-urls",
                &peer,
            ])
            .args(["--initial-cluster", &format!("test={peer}")])
            .args(["--logger", "zap", "--log-level", "warn"])
            .args(&self.extra)
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(log2)
            .spawn()
            .expect("spawn etcd (is /usr/bin/etcd installed?)");
        self.child = Some(child);
    }

    /// Waits until the client port accepts connections and `/health` says true.
    pub async fn wait_ready(&mut self, limit: Duration) -> Result<(), String> {
        let deadline = Instant::now() + limit;
        while Instant::now() < deadline {
            if let Some(c) = self.child.as_mut() {
                if let Ok(Some(status)) = c.try_wait() {
                    let log = std::fs::read_to_string(self.dir.path().join("etcd.log"))
                        .unwrap_or_default();
                    return Err(format!("etcd exited with {status}: {log}"));
                }
            }
            if self.scheme == "https" {
                // No TLS client here: an open port is the best cheap signal; callers retry.
                if tokio::net::TcpStream::connect(("127.0.0.1", self.client_port))
                    .await
                    .is_ok()
                {
                    tokio::time::sleep(Duration::from_millis(500)).await;
                    return Ok(());
                }
            } else if self.healthy().await {
                return Ok(());
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        Err(format!(
            "etcd at {} not healthy within {limit:?}",
            self.url()
        ))
    }

    async fn healthy(&self) -> bool {
        let Ok(Ok(mut s)) = tokio::time::timeout(
            Duration::from_secs(1),
            tokio::net::TcpStream::connect(("127.0.0.1", self.client_port)),
        )
        .await
        else {
            return false;
        };
        if s.write_all(b"GET /health HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n")
            .await
            .is_err()
        {
            return false;
        }
        let mut buf = Vec::new();
        let _ = tokio::time::timeout(Duration::from_secs(2), s.read_to_end(&mut buf)).await;
        String::from_utf8_lossy(&buf).contains("\"health\":\"true\"")
    }

    /// Kills etcd (SIGKILL) and waits for it to be gone.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Starts etcd again with the same data directory and ports.
    pub async fn restart(&mut self) {
        self.kill();
        self.spawn();
        if let Err(e) = self.wait_ready(Duration::from_secs(20)).await {
            panic!("etcd restart failed: {e}");
        }
    }
}

impl Drop for EtcdServer {
    fn drop(&mut self) {
        self.kill();
    }
}
