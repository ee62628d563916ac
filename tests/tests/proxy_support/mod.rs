//! Shared pieces of the proxy end-to-end tests: a proxy on 127.0.0.1:0
//! stopped on drop, one-shot HTTP requests, and an in-test upstream that
//! echoes the request headers it received.
#![allow(dead_code)]

pub mod python;

use bg_proxy::{Backend, Color, Proxy, ProxyConfig, RouteTable, Weights};
use bytes::Bytes;
use http::{HeaderMap, Request, Response, StatusCode};
use http_body_util::{BodyExt, Empty, Full};
use hyper_util::rt::TokioIo;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;

/// A proxy serving one listener on a free loopback port.
pub struct TestProxy {
    pub proxy: Proxy,
    pub addr: SocketAddr,
    shutdown: CancellationToken,
}

impl TestProxy {
    /// Start a proxy with `config` and an empty route table.
    pub async fn start(config: ProxyConfig) -> TestProxy {
        let proxy = Proxy::new(config);
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind proxy");
        let addr = listener.local_addr().expect("proxy addr");
        let shutdown = CancellationToken::new();
        tokio::spawn(proxy.clone().serve(listener, shutdown.clone()));
        TestProxy { proxy, addr, shutdown }
    }

    /// Start a proxy with default settings.
    pub async fn default() -> TestProxy {
        TestProxy::start(ProxyConfig::default()).await
    }

    /// Fire the listener's shutdown token: it stops accepting and its open
    /// connections wind down.
    pub fn begin_shutdown(&self) {
        self.shutdown.cancel();
    }

    /// Route everything to `active` among `backends`.
    pub fn route(&self, backends: Vec<Backend>, active: Color) {
        self.proxy.set_routes(RouteTable::new(backends, Weights::all_to(active)));
    }

    /// Send all traffic to `color`.
    pub fn switch_to(&self, color: Color) {
        self.proxy.update_routes(|t| t.weights = Weights::all_to(color));
    }

    /// One GET on a fresh connection.
    pub async fn get(&self, path: &str) -> Answer {
        get(self.addr, path, &[]).await
    }

    /// One GET with headers on a fresh connection.
    pub async fn get_with(&self, path: &str, headers: &[(&str, &str)]) -> Answer {
        get(self.addr, path, headers).await
    }
}

impl Drop for TestProxy {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

/// A read answer.
#[derive(Debug)]
pub struct Answer {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: String,
}

impl Answer {
    /// Its `x-version` header, or "".
    pub fn version(&self) -> &str {
        self.headers.get("x-version").and_then(|v| v.to_str().ok()).unwrap_or("")
    }
}

/// One GET on a fresh HTTP/1.1 connection to `addr`.
pub async fn get(addr: SocketAddr, path: &str, headers: &[(&str, &str)]) -> Answer {
    let stream = TcpStream::connect(addr).await.expect("connect");
    let (mut sender, conn) =
        hyper::client::conn::http1::handshake(TokioIo::new(stream)).await.expect("handshake");
    tokio::spawn(conn);
    let mut req = Request::get(path).header("host", addr.to_string());
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let resp =
        sender.send_request(req.body(Empty::<Bytes>::new()).expect("request")).await.expect("response");
    read(resp).await
}

/// Read an answer to the end.
pub async fn read(resp: Response<hyper::body::Incoming>) -> Answer {
    let (parts, body) = resp.into_parts();
    let body = body.collect().await.expect("body").to_bytes();
    Answer { status: parts.status, headers: parts.headers, body: String::from_utf8_lossy(&body).into_owned() }
}

/// A backend on `addr`.
pub fn backend(id: &str, addr: SocketAddr, color: Color) -> Backend {
    Backend::new(id, addr, color)
}

/// An upstream on 127.0.0.1:0 that answers every request with the
/// request's headers, one `name: value` line each, and `x-version: echo`.
/// Returns its address, its stop token and the count of connections it
/// accepted.
pub async fn echo_upstream() -> (SocketAddr, CancellationToken, Arc<AtomicU64>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind echo");
    let addr = listener.local_addr().expect("echo addr");
    let stop = CancellationToken::new();
    let token = stop.clone();
    let accepted = Arc::new(AtomicU64::new(0));
    let counter = accepted.clone();
    tokio::spawn(async move {
        loop {
            let (stream, _) = tokio::select! {
                r = listener.accept() => match r { Ok(x) => x, Err(_) => return },
                _ = token.cancelled() => return,
            };
            counter.fetch_add(1, Ordering::Relaxed);
            tokio::spawn(async move {
                let service = hyper::service::service_fn(|req: Request<hyper::body::Incoming>| async move {
                    let mut text = String::new();
                    for (k, v) in req.headers() {
                        text.push_str(&format!("{}: {}\n", k, v.to_str().unwrap_or("?")));
                    }
                    let mut resp = Response::new(Full::new(Bytes::from(text)));
                    resp.headers_mut().insert("x-version", "echo".parse().expect("value"));
                    // A hop-by-hop header the proxy must not pass on.
                    resp.headers_mut().insert("keep-alive", "timeout=5".parse().expect("value"));
                    Ok::<_, Infallible>(resp)
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    (addr, stop, accepted)
}

/// A lowercase header line `name: value` from an echo answer's body.
pub fn echoed<'a>(body: &'a str, name: &str) -> Vec<&'a str> {
    body.lines().filter_map(|l| l.split_once(": ")).filter(|(k, _)| *k == name).map(|(_, v)| v).collect()
}

/// Short test timeouts.
pub const SECS_5: Duration = Duration::from_secs(5);
