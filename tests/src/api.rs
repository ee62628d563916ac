//! A minimal control-API client over the agent's unix socket, for tests
//! that talk to the API directly instead of through `bgctl`.

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;
use serde_json::Value;
use std::path::Path;

/// Send one request; answer (status, JSON body or `null`).
pub async fn request(
    socket: &Path,
    method: &str,
    path: &str,
    body: Option<Value>,
) -> Result<(u16, Value), String> {
    let bytes = body.map(|b| serde_json::to_vec(&b).expect("json")).unwrap_or_default();
    let resp =
        raw(Target::Unix(socket), method, path, &[("content-type", "application/json")], bytes).await?;
    let value = if resp.body.is_empty() {
        Value::Null
    } else {
        serde_json::from_slice(&resp.body).unwrap_or_else(|_| Value::String(resp.text()))
    };
    Ok((resp.status, value))
}

/// A whole answer: status, headers and body bytes.
#[derive(Debug, Clone)]
pub struct RawResponse {
    /// Status code.
    pub status: u16,
    /// Response headers.
    pub headers: http::HeaderMap,
    /// Body bytes.
    pub body: Bytes,
}

impl RawResponse {
    /// The body as (lossy) text.
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    /// The body parsed as JSON; panics with the body when it is not.
    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("body is not JSON ({e}): {:?}", self.text()))
    }

    /// A header as text.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }
}

/// Where [`raw`] connects: the agent's unix socket or a TCP address.
#[derive(Debug, Clone, Copy)]
pub enum Target<'a> {
    /// A unix socket path.
    Unix(&'a Path),
    /// A TCP address.
    Tcp(std::net::SocketAddr),
}

/// Send one request with exactly these headers and body bytes (nothing is
/// added but `host: agent` when `headers` has none), on a fresh connection.
pub async fn raw(
    target: Target<'_>,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: impl Into<Bytes>,
) -> Result<RawResponse, String> {
    let mut req = http::Request::builder().method(method).uri(path);
    if !headers.iter().any(|(k, _)| k.eq_ignore_ascii_case("host")) {
        req = req.header("host", "agent");
    }
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let req = req.body(Full::new(body.into())).map_err(|e| e.to_string())?;
    match target {
        Target::Unix(socket) => {
            let stream = tokio::net::UnixStream::connect(socket)
                .await
                .map_err(|e| format!("connect {}: {e}", socket.display()))?;
            send(stream, req).await
        }
        Target::Tcp(addr) => {
            let stream =
                tokio::net::TcpStream::connect(addr).await.map_err(|e| format!("connect {addr}: {e}"))?;
            send(stream, req).await
        }
    }
}

async fn send<S>(stream: S, req: http::Request<Full<Bytes>>) -> Result<RawResponse, String>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let (mut sender, conn) =
        hyper::client::conn::http1::handshake(TokioIo::new(stream)).await.map_err(|e| e.to_string())?;
    tokio::spawn(conn);
    let resp = sender.send_request(req).await.map_err(|e| e.to_string())?;
    let status = resp.status().as_u16();
    let headers = resp.headers().clone();
    let body = resp.into_body().collect().await.map_err(|e| e.to_string())?.to_bytes();
    Ok(RawResponse { status, headers, body })
}

/// Every retained event of a service (`GET /v1/events?service=S&since=0`),
/// parsed from the NDJSON stream.
pub async fn events(socket: &Path, service: &str) -> Vec<Value> {
    let stream = tokio::net::UnixStream::connect(socket).await.expect("connect to agent");
    let (mut sender, conn) =
        hyper::client::conn::http1::handshake(TokioIo::new(stream)).await.expect("handshake");
    tokio::spawn(conn);
    let req = http::Request::builder()
        .uri(format!("/v1/events?service={service}&since=0"))
        .header("host", "agent")
        .body(Full::new(Bytes::new()))
        .expect("request");
    let resp = sender.send_request(req).await.expect("events request");
    assert_eq!(resp.status(), 200);
    let body = resp.into_body().collect().await.expect("events body").to_bytes();
    String::from_utf8_lossy(&body)
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("event line {l:?} is not JSON: {e}")))
        .collect()
}
