//! The proxy's per-service limits as the agent's config sets them, end to
//! end: the real `bg-agent` on the process runtime, its replicas Python's
//! `http.server` (`proxy_support/py_backend.py`, listening on `$PORT`),
//! with a small `write_timeout` and a small `max_queued`.

use bg_tests::agent::{Agent, RunningAgent, Svc};
use bg_tests::status::outcome;
use serde_json::{json, Value};
use std::net::SocketAddr;
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const PY_BACKEND: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/proxy_support/py_backend.py");

/// 4 GiB: far more than every buffer between the backend and a client
/// that does not read, and more than loopback moves in the test's time.
const BIG: u64 = 4 << 30;

/// The service `web`, its replicas `py_backend.py`.
fn python_service() -> Svc {
    Svc::new("web").command(&["python3", PY_BACKEND])
}

/// Send a raw HTTP/1.1 GET on a fresh connection.
async fn raw_get(addr: SocketAddr, path: &str) -> TcpStream {
    let mut s = TcpStream::connect(addr).await.expect("connect");
    s.write_all(format!("GET {path} HTTP/1.1\r\nHost: x\r\n\r\n").as_bytes()).await.expect("write");
    s
}

/// Requests in flight on the service's replicas, all colors.
fn inflight(status: &Value) -> u64 {
    ["blue", "green"]
        .iter()
        .filter_map(|c| status["colors"][c]["replicas"].as_array())
        .flatten()
        .map(|r| r["inflight"].as_u64().unwrap_or(0))
        .sum()
}

/// The first deploy, through the control API (no `bgctl` to build while
/// requests wait), checked to have succeeded.
async fn deploy(agent: &RunningAgent) {
    let status = agent.op("web", "deploy", json!({}), Duration::from_secs(60)).await;
    assert_eq!(outcome(&status).0, "succeeded", "{status}\nlog:\n{}", agent.log());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_stops_reading_is_closed_after_the_services_write_timeout() {
    let write_timeout = Duration::from_secs(1);
    let agent = Agent::process().service(python_service().set("", "write_timeout", "\"1s\"")).start().await;
    deploy(&agent).await;

    let mut client = raw_get(agent.listen("web"), &format!("/big/{BIG}")).await;
    let mut buf = vec![0u8; 4096];
    let n = tokio::time::timeout(Duration::from_secs(5), client.read(&mut buf))
        .await
        .expect("the answer starts within 5 s")
        .expect("read");
    assert!(String::from_utf8_lossy(&buf[..n]).starts_with("HTTP/1.1 200"));
    let stopped = Instant::now();
    assert_eq!(inflight(&agent.status("web").await), 1, "the download is in flight");

    // The client reads nothing more. Slack: 5 s over the timeout for a
    // loaded machine and the status polls; the default (30 s) is far out.
    agent
        .wait_status(
            "web",
            "the stalled download to be closed",
            write_timeout + Duration::from_secs(5),
            |s| inflight(s) == 0,
        )
        .await;
    let closed_after = stopped.elapsed();
    // The timer starts once a write blocks, around when the client
    // stopped; half the timeout leaves room for that.
    assert!(closed_after >= write_timeout / 2, "closed after {closed_after:?}, before the write timeout");

    // The client's connection is closed, the body cut short.
    let mut total = 0u64;
    let mut buf = vec![0u8; 1 << 16];
    let ended = tokio::time::timeout(Duration::from_secs(5), async {
        loop {
            match client.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => total += n as u64,
            }
        }
    })
    .await;
    assert!(ended.is_ok(), "the connection is still open ({total} bytes read)");
    assert!(total < BIG / 2, "the body went on streaming: {total} bytes");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn beyond_the_services_max_queued_a_request_gets_503_at_once_and_the_queued_ones_are_served() {
    let agent = Agent::process()
        .service(python_service().set("", "max_queued", "2").set("", "queue_timeout", "\"30s\""))
        .start()
        .await;
    let addr = agent.listen("web");

    // Nothing deployed: every request waits for a backend. One second
    // without an answer means it waits in the queue (the proxy takes
    // microseconds to read a request; the second is slack for a loaded
    // machine).
    let mut queued = Vec::new();
    for _ in 0..2 {
        let mut client = raw_get(addr, "/").await;
        let mut buf = [0u8; 256];
        let answer = tokio::time::timeout(Duration::from_secs(1), client.read(&mut buf)).await;
        assert!(answer.is_err(), "answered while no backend exists: {answer:?}");
        queued.push(client);
    }

    let started = Instant::now();
    let mut third = raw_get(addr, "/").await;
    let mut text = Vec::new();
    let mut buf = [0u8; 1024];
    while !String::from_utf8_lossy(&text).contains("waiting for one\n") {
        let n = tokio::time::timeout(Duration::from_secs(5), third.read(&mut buf))
            .await
            .expect("the third request is answered within 5 s, not after the 30 s queue timeout")
            .expect("read");
        assert!(n > 0, "closed without an answer: {:?}", String::from_utf8_lossy(&text));
        text.extend_from_slice(&buf[..n]);
    }
    let text = String::from_utf8_lossy(&text);
    assert!(text.starts_with("HTTP/1.1 503"), "{text}");
    assert!(text.contains("too many requests are waiting"), "{text}");
    assert!(started.elapsed() < Duration::from_secs(5));

    // The queued two are served once there is a backend.
    deploy(&agent).await;
    for mut client in queued {
        let mut buf = vec![0u8; 1024];
        let n = tokio::time::timeout(Duration::from_secs(10), client.read(&mut buf))
            .await
            .expect("a queued request is answered once deployed")
            .expect("read");
        let text = String::from_utf8_lossy(&buf[..n]);
        assert!(text.starts_with("HTTP/1.1 200"), "{text}");
    }
}
