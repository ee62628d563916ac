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
    let stream = tokio::net::UnixStream::connect(socket)
        .await
        .map_err(|e| format!("connect {}: {e}", socket.display()))?;
    let (mut sender, conn) =
        hyper::client::conn::http1::handshake(TokioIo::new(stream)).await.map_err(|e| e.to_string())?;
    tokio::spawn(conn);
    let bytes = body.map(|b| serde_json::to_vec(&b).expect("json")).unwrap_or_default();
    let req = http::Request::builder()
        .method(method)
        .uri(path)
        .header("host", "agent")
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(bytes)))
        .map_err(|e| e.to_string())?;
    let resp = sender.send_request(req).await.map_err(|e| e.to_string())?;
    let status = resp.status().as_u16();
    let body = resp.into_body().collect().await.map_err(|e| e.to_string())?.to_bytes();
    let value = if body.is_empty() {
        Value::Null
    } else {
        serde_json::from_slice(&body).unwrap_or(Value::String(String::from_utf8_lossy(&body).into()))
    };
    Ok((status, value))
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
