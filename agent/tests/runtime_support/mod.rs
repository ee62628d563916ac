//! Helpers shared by the runtime and health tests: the websample binary,
//! unique names, and waiting for a condition with a deadline.
#![allow(dead_code)]

use bg_agent::api::{Color, Spec};
use bg_agent::runtime::{PullPolicy, ReplicaSpec};
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

/// The workspace root.
pub fn workspace() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).parent().unwrap().to_path_buf()
}

/// Build websample once per test binary and return its path.
pub fn websample() -> PathBuf {
    static PATH: OnceLock<PathBuf> = OnceLock::new();
    PATH.get_or_init(|| {
        let root = workspace();
        let status = std::process::Command::new(env!("CARGO"))
            .args(["build", "-q", "-p", "websample", "--manifest-path"])
            .arg(root.join("Cargo.toml"))
            .status()
            .expect("running cargo build -p websample");
        assert!(status.success(), "cargo build -p websample failed");
        let target =
            std::env::var_os("CARGO_TARGET_DIR").map(PathBuf::from).unwrap_or_else(|| root.join("target"));
        let target = if target.is_relative() { root.join(target) } else { target };
        let path = target.join("debug").join("websample");
        assert!(path.exists(), "websample not found at {}", path.display());
        path
    })
    .clone()
}

/// A service name no other test (or test run) uses.
pub fn unique_service(prefix: &str) -> String {
    static N: AtomicU32 = AtomicU32::new(0);
    format!("{prefix}-{}-{}", std::process::id(), N.fetch_add(1, Ordering::Relaxed))
}

/// A process-runtime spec running websample with `env`.
pub fn websample_spec(service: &str, env: &[(&str, &str)]) -> ReplicaSpec {
    ReplicaSpec {
        service: service.to_string(),
        color: Color::Blue,
        revision: 1,
        replica: 1,
        replicas: 1,
        spec: Spec {
            image: None,
            command: Some(vec![websample().display().to_string()]),
            env: env.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect::<BTreeMap<_, _>>(),
            ..Default::default()
        },
        app_port: 5000,
        pull: PullPolicy::Never,
        stop_signal: "SIGTERM".into(),
        stop_grace: Duration::from_secs(5),
    }
}

/// One HTTP/1.1 GET over a fresh connection: `(status, body)`.
pub async fn http_get(addr: std::net::SocketAddr, path: &str) -> std::io::Result<(u16, String)> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(addr).await?;
    s.write_all(format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n").as_bytes())
        .await?;
    let mut buf = Vec::new();
    s.read_to_end(&mut buf).await?;
    let text = String::from_utf8_lossy(&buf).to_string();
    let status = text
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| std::io::Error::other(format!("bad answer: {text:?}")))?;
    let body = text.split("\r\n\r\n").nth(1).unwrap_or("").to_string();
    Ok((status, body))
}

/// Retry a GET until it answers, or panic after `limit`.
pub async fn get_eventually(addr: std::net::SocketAddr, path: &str, limit: Duration) -> (u16, String) {
    let start = Instant::now();
    loop {
        match http_get(addr, path).await {
            Ok(r) => return r,
            Err(e) if start.elapsed() > limit => panic!("GET {addr}{path} never answered: {e}"),
            Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
        }
    }
}
