//! Python's `http.server` as a backend (`py_backend.py`): a real HTTP/1.1
//! server nobody here wrote, started on 127.0.0.1 with a free port, whose
//! event lines the test can wait for. Killed on drop.

use std::net::SocketAddr;
use std::process::Stdio;
use std::time::Duration;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};
use tokio::sync::mpsc;

/// A running `py_backend.py`.
pub struct PyBackend {
    pub addr: SocketAddr,
    lines: mpsc::UnboundedReceiver<String>,
    _child: Child,
}

impl PyBackend {
    /// Start it and read its port.
    pub async fn start() -> PyBackend {
        let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/proxy_support/py_backend.py");
        let mut child = Command::new("python3")
            .arg(script)
            // A free port of its own choosing.
            .env_remove("PORT")
            .stdout(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .expect("python3 must be installed to run the http.server backend");
        let stdout = child.stdout.take().expect("stdout");
        let (tx, mut lines) = mpsc::unbounded_channel();
        tokio::spawn(async move {
            let mut reader = BufReader::new(stdout).lines();
            while let Ok(Some(line)) = reader.next_line().await {
                if tx.send(line).is_err() {
                    return;
                }
            }
        });
        let port = tokio::time::timeout(Duration::from_secs(10), lines.recv())
            .await
            .expect("py_backend.py printed no port within 10 s")
            .expect("py_backend.py exited before printing its port");
        let port: u16 = port.trim().parse().expect("a port number");
        PyBackend { addr: SocketAddr::from(([127, 0, 0, 1], port)), lines, _child: child }
    }

    /// Wait up to `within` for the event line `want`; the lines before it
    /// are returned.
    pub async fn expect_line(&mut self, want: &str, within: Duration) -> Vec<String> {
        let mut before = Vec::new();
        let deadline = tokio::time::Instant::now() + within;
        loop {
            match tokio::time::timeout_at(deadline, self.lines.recv()).await {
                Ok(Some(line)) if line == want => return before,
                Ok(Some(line)) => before.push(line),
                Ok(None) => panic!("the backend exited before {want:?}; it said {before:?}"),
                Err(_) => panic!("the backend did not say {want:?} within {within:?}; it said {before:?}"),
            }
        }
    }

    /// The event lines said so far, without waiting.
    pub fn said(&mut self) -> Vec<String> {
        let mut out = Vec::new();
        while let Ok(line) = self.lines.try_recv() {
            out.push(line);
        }
        out
    }
}
