//! A real headless Chromium driven over the DevTools protocol: a small
//! client (JSON commands over one WebSocket, `tokio-tungstenite`) that
//! navigates, evaluates JavaScript in the page and takes screenshots. The
//! browser runs with its own temporary profile and is killed on drop.

use base64::Engine;
use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};
use tokio_tungstenite::tungstenite::Message;

type Ws = tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// A running headless Chromium with one page attached.
pub struct Browser {
    child: Child,
    _profile: tempfile::TempDir,
    ws: Ws,
    next_id: u64,
}

impl Browser {
    /// Start `chromium` (`--headless=new --no-sandbox --disable-gpu`, a
    /// temporary `--user-data-dir`) and attach to its first page.
    pub async fn launch(chromium: &Path, width: u32, height: u32) -> Browser {
        let profile = tempfile::Builder::new().prefix("bg-chromium-").tempdir().expect("profile dir");
        let child = Command::new(chromium)
            .args([
                "--headless=new",
                "--no-sandbox",
                "--disable-gpu",
                // Containers often have a small /dev/shm.
                "--disable-dev-shm-usage",
                "--no-first-run",
                "--no-default-browser-check",
                "--disable-extensions",
                "--remote-debugging-address=127.0.0.1",
                "--remote-debugging-port=0",
                &format!("--window-size={width},{height}"),
                &format!("--user-data-dir={}", profile.path().display()),
                "about:blank",
            ])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start chromium");
        let mut browser = BrowserStart { child: Some(child) };
        // Chromium writes its chosen port to DevToolsActivePort.
        let port_file = profile.path().join("DevToolsActivePort");
        let deadline = Instant::now() + Duration::from_secs(30);
        let (port, browser_path) = loop {
            if let Some((p, path)) = std::fs::read_to_string(&port_file).ok().and_then(|t| {
                let mut lines = t.lines();
                let port: u16 = lines.next()?.trim().parse().ok()?;
                Some((port, lines.next()?.trim().to_string()))
            }) {
                break (p, path);
            }
            assert!(Instant::now() < deadline, "chromium wrote no DevToolsActivePort within 30 s");
            tokio::time::sleep(Duration::from_millis(100)).await;
        };
        // The browser endpoint lists the targets; the page has its own.
        let (mut bws, _) = tokio_tungstenite::connect_async(format!("ws://127.0.0.1:{port}{browser_path}"))
            .await
            .expect("devtools browser websocket");
        let page_ws = loop {
            let msg = json!({"id": 1, "method": "Target.getTargets", "params": {}}).to_string();
            bws.send(Message::Text(msg.into())).await.expect("send Target.getTargets");
            let mut found = None;
            while let Some(Ok(m)) = bws.next().await {
                let Message::Text(text) = m else { continue };
                let v: Value = serde_json::from_str(&text).expect("devtools JSON");
                if v["id"] == 1 {
                    found = v["result"]["targetInfos"]
                        .as_array()
                        .into_iter()
                        .flatten()
                        .find(|t| t["type"] == "page")
                        .and_then(|t| t["targetId"].as_str())
                        .map(|id| format!("ws://127.0.0.1:{port}/devtools/page/{id}"));
                    break;
                }
            }
            if let Some(url) = found {
                break url;
            }
            assert!(Instant::now() < deadline, "chromium shows no page target within 30 s");
            tokio::time::sleep(Duration::from_millis(100)).await;
        };
        drop(bws);
        let (ws, _) = tokio_tungstenite::connect_async(page_ws.as_str()).await.expect("devtools websocket");
        let child = browser.child.take().expect("child");
        let mut b = Browser { child, _profile: profile, ws, next_id: 0 };
        b.call("Page.enable", json!({})).await;
        b.call("Runtime.enable", json!({})).await;
        b
    }

    /// Send one DevTools command and answer its `result`; panics on a
    /// protocol error.
    pub async fn call(&mut self, method: &str, params: Value) -> Value {
        self.next_id += 1;
        let id = self.next_id;
        let msg = json!({"id": id, "method": method, "params": params}).to_string();
        self.ws.send(Message::Text(msg.into())).await.expect("send a devtools command");
        let wait = async {
            while let Some(msg) = self.ws.next().await {
                let Ok(Message::Text(text)) = msg else { continue };
                let v: Value = serde_json::from_str(&text).expect("devtools JSON");
                if v["id"] == id {
                    if let Some(e) = v.get("error") {
                        panic!("{method}: {e}");
                    }
                    return v["result"].clone();
                }
            }
            panic!("the devtools connection closed during {method}");
        };
        tokio::time::timeout(Duration::from_secs(30), wait)
            .await
            .unwrap_or_else(|_| panic!("{method} timed out"))
    }

    /// Load `url` in the page.
    pub async fn navigate(&mut self, url: &str) {
        let r = self.call("Page.navigate", json!({"url": url})).await;
        assert!(r.get("errorText").is_none(), "navigate to {url}: {r}");
    }

    /// Evaluate `expression` in the page (awaiting a promise) and answer
    /// its value; panics when it throws.
    pub async fn eval(&mut self, expression: &str) -> Value {
        let r = self
            .call(
                "Runtime.evaluate",
                json!({"expression": expression, "returnByValue": true, "awaitPromise": true}),
            )
            .await;
        if let Some(e) = r.get("exceptionDetails") {
            panic!("{expression}: threw {e}");
        }
        r["result"]["value"].clone()
    }

    /// A PNG screenshot of the viewport.
    pub async fn screenshot(&mut self) -> Vec<u8> {
        let r = self.call("Page.captureScreenshot", json!({"format": "png"})).await;
        base64::engine::general_purpose::STANDARD
            .decode(r["data"].as_str().expect("screenshot data"))
            .expect("screenshot base64")
    }
}

/// Kills the browser if launching fails half-way.
struct BrowserStart {
    child: Option<Child>,
}

impl Drop for BrowserStart {
    fn drop(&mut self) {
        if let Some(c) = self.child.as_mut() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
