//! A real Prometheus server for tests: started with a generated config
//! that scrapes the given targets every second, its TSDB in a temporary
//! directory, queried over its HTTP API; killed on drop.

use crate::api::{raw, Target};
use serde_json::Value;
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A running Prometheus.
pub struct Prometheus {
    child: Child,
    dir: tempfile::TempDir,
    addr: SocketAddr,
}

impl Prometheus {
    /// Start `prometheus` scraping `targets` (their `/metrics`) every second.
    pub async fn start(bin: &Path, targets: &[SocketAddr]) -> Prometheus {
        let dir = tempfile::Builder::new().prefix("bg-prometheus-").tempdir().expect("temp dir");
        let list: Vec<String> = targets.iter().map(|t| format!("'{t}'")).collect();
        let config = format!(
            "global:\n  scrape_interval: 1s\n  scrape_timeout: 1s\nscrape_configs:\n  - job_name: bg-agent\n    static_configs:\n      - targets: [{}]\n",
            list.join(", ")
        );
        std::fs::write(dir.path().join("prometheus.yml"), config).expect("write prometheus.yml");
        let addr = crate::agent::free_addr();
        let log = std::fs::File::create(dir.path().join("prometheus.log")).expect("log file");
        let child = Command::new(bin)
            .arg(format!("--config.file={}", dir.path().join("prometheus.yml").display()))
            .arg(format!("--storage.tsdb.path={}", dir.path().join("data").display()))
            .arg(format!("--web.listen-address={addr}"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("start prometheus");
        let p = Prometheus { child, dir, addr };
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Ok(r) = raw(Target::Tcp(addr), "GET", "/-/ready", &[], "").await {
                if r.status == 200 {
                    break;
                }
            }
            assert!(Instant::now() < deadline, "prometheus not ready within 30 s:\n{}", p.log());
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        p
    }

    /// Its log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("prometheus.log")).unwrap_or_default()
    }

    /// An instant query at unix time `at`; answers `data.result`.
    pub async fn query(&self, promql: &str, at: f64) -> Vec<Value> {
        let path = format!("/api/v1/query?query={}&time={at:.3}", crate::tools::url_encode(promql));
        let r = raw(Target::Tcp(self.addr), "GET", &path, &[], "").await.expect("query prometheus");
        let v = r.json();
        assert_eq!(v["status"], "success", "{promql}: {v}");
        v["data"]["result"].as_array().cloned().unwrap_or_default()
    }

    /// Health of every scrape target (`up` per instance).
    pub async fn targets(&self) -> Value {
        raw(Target::Tcp(self.addr), "GET", "/api/v1/targets", &[], "").await.expect("targets").json()
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
