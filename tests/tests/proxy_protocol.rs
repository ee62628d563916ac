//! The proxy at the HTTP level: h2c clients, forwarding headers, hop-by-hop
//! headers, and hostile or odd clients (slowloris, oversized headers,
//! half-closed connections) that must not affect anyone else; and what
//! keep-alive clients see when a listener shuts down.

mod proxy_support;

use bg_proxy::{Color, ProxyConfig};
use bg_tests::websample::Websample;
use bytes::Bytes;
use http::{Request, Version};
use http_body_util::Empty;
use hyper_util::rt::{TokioExecutor, TokioIo};
use proxy_support::{backend, echo_upstream, echoed, TestProxy, SECS_5};
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_h2c_client_is_served_over_http11_upstream() {
    let (echo, _stop, _) = echo_upstream().await;
    let blue = Websample::new().version("v1").spawn().await;
    let p = TestProxy::default().await;
    p.route(vec![backend("blue-1", blue.addr(), Color::Blue)], Color::Blue);

    let stream = TcpStream::connect(p.addr).await.expect("connect");
    let (mut h2, conn) = hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(stream))
        .await
        .expect("h2c handshake with prior knowledge");
    tokio::spawn(conn);
    for _ in 0..3 {
        let req = Request::get(format!("http://{}/", p.addr)).body(Empty::<Bytes>::new()).expect("request");
        let resp = h2.send_request(req).await.expect("h2 response");
        assert_eq!(resp.version(), Version::HTTP_2);
        let a = proxy_support::read(resp).await;
        assert_eq!(a.status, 200);
        assert_eq!(a.version(), "v1");
        assert_eq!(a.body, "v1\n");
    }

    // The upstream sees HTTP/1.1 with Host taken from :authority.
    p.route(vec![backend("echo", echo, Color::Blue)], Color::Blue);
    let req = Request::get("http://app.example:8080/x?y=1").body(Empty::<Bytes>::new()).expect("request");
    let a = proxy_support::read(h2.send_request(req).await.expect("h2 response")).await;
    assert_eq!(a.version(), "echo");
    assert_eq!(echoed(&a.body, "host"), ["app.example:8080"]);
    assert_eq!(echoed(&a.body, "x-forwarded-host"), ["app.example:8080"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forwarding_headers_are_set_and_hop_by_hop_headers_removed() {
    let (echo, _stop, _) = echo_upstream().await;
    let p = TestProxy::default().await;
    p.route(vec![backend("echo", echo, Color::Blue)], Color::Blue);

    let a = p.get_with("/", &[]).await;
    assert_eq!(a.status, 200);
    assert_eq!(echoed(&a.body, "x-forwarded-for"), ["127.0.0.1"]);
    assert_eq!(echoed(&a.body, "x-forwarded-proto"), ["http"]);
    assert_eq!(echoed(&a.body, "x-forwarded-host"), [p.addr.to_string().as_str()]);
    // The upstream's hop-by-hop header does not reach the client.
    assert!(a.headers.get("keep-alive").is_none());

    let a = p
        .get_with(
            "/",
            &[
                ("x-forwarded-for", "10.1.2.3"),
                ("connection", "x-private"),
                ("x-private", "secret"),
                ("te", "trailers"),
                ("proxy-connection", "keep-alive"),
                ("x-kept", "yes"),
            ],
        )
        .await;
    assert_eq!(echoed(&a.body, "x-forwarded-for"), ["10.1.2.3, 127.0.0.1"]);
    assert!(echoed(&a.body, "x-private").is_empty(), "{}", a.body);
    assert!(echoed(&a.body, "te").is_empty(), "{}", a.body);
    assert!(echoed(&a.body, "proxy-connection").is_empty(), "{}", a.body);
    assert!(echoed(&a.body, "connection").iter().all(|v| !v.contains("x-private")));
    assert_eq!(echoed(&a.body, "x-kept"), ["yes"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slowloris_client_is_dropped_after_the_header_read_timeout() {
    let blue = Websample::new().version("v1").spawn().await;
    let p = TestProxy::start(ProxyConfig {
        header_read_timeout: Duration::from_millis(500),
        ..ProxyConfig::default()
    })
    .await;
    p.route(vec![backend("blue-1", blue.addr(), Color::Blue)], Color::Blue);

    let started = Instant::now();
    // One client starts its headers and never finishes them; another never
    // says anything at all.
    let mut slow = TcpStream::connect(p.addr).await.expect("connect");
    slow.write_all(b"GET / HTTP/1.1\r\nHost: x\r\nX-Slow: ").await.expect("write part of the headers");
    let mut silent = TcpStream::connect(p.addr).await.expect("connect");

    // Meanwhile others are served.
    let a = p.get("/").await;
    assert_eq!(a.version(), "v1");

    for (name, conn) in [("slow", &mut slow), ("silent", &mut silent)] {
        let mut buf = Vec::new();
        let read = tokio::time::timeout(SECS_5, conn.read_to_end(&mut buf)).await;
        assert!(read.is_ok(), "the {name} client was not dropped");
        let text = String::from_utf8_lossy(&buf);
        assert!(buf.is_empty() || text.starts_with("HTTP/1.1 408"), "the {name} client got {text:?}");
    }
    let waited = started.elapsed();
    assert!(waited >= Duration::from_millis(450), "dropped after {waited:?}");
    let a = p.get("/").await;
    assert_eq!(a.version(), "v1");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_stops_accepting_and_lets_the_request_in_flight_finish() {
    let blue = Websample::new().version("v1").spawn().await;
    let proxy = bg_proxy::Proxy::new(ProxyConfig::default());
    proxy.set_routes(bg_proxy::RouteTable::new(
        vec![backend("blue-1", blue.addr(), Color::Blue)],
        bg_proxy::Weights::all_to(Color::Blue),
    ));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let shutdown = tokio_util::sync::CancellationToken::new();
    let serving = tokio::spawn(proxy.clone().serve(listener, shutdown.clone()));

    let slow = tokio::spawn(async move { proxy_support::get(addr, "/sleep/1", &[]).await });
    bg_tests::wait::eventually("the slow request is in flight", SECS_5, || {
        proxy.inflight(&"blue-1".into()) == 1
    })
    .await;
    shutdown.cancel();
    let served = tokio::time::timeout(SECS_5, serving)
        .await
        .expect("serve returns after the graceful shutdown")
        .expect("serve task");
    assert!(served.is_ok());
    let a = slow.await.expect("slow request");
    assert_eq!(a.status, 200);
    assert_eq!(a.body, "v1\n");
    assert!(TcpStream::connect(addr).await.is_err(), "still accepting");
    bg_tests::wait::eventually("no client connection left", SECS_5, || proxy.stats().connections == 0).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upstream_connections_are_pooled_and_reused() {
    let (echo, _stop, accepted) = echo_upstream().await;
    let p = TestProxy::default().await;
    p.route(vec![backend("echo", echo, Color::Blue)], Color::Blue);
    // Sequential requests, each on a new client connection: one upstream
    // connection serves them all.
    for _ in 0..50 {
        assert_eq!(p.get("/").await.status, 200);
    }
    // One, or two if a connection was handed back a moment after the next
    // request looked for it; never one per request.
    let upstream = accepted.load(std::sync::atomic::Ordering::Relaxed);
    assert!((1..=2).contains(&upstream), "{upstream} upstream connections for 50 requests");
    assert!((1..=2).contains(&p.proxy.idle_connections(&"echo".into())));
    let stats = p.proxy.stats();
    assert_eq!(stats.blue.requests, 50);
    assert_eq!(stats.blue.responses[1], 50);
    assert_eq!(stats.blue.inflight, 0);
    assert_eq!(stats.blue.latency.count, 50);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_shutdown_starts_keepalive_clients_are_answered_with_connection_close() {
    let blue = Websample::new().version("v1").spawn().await;
    let p =
        TestProxy::start(ProxyConfig { close_linger: Duration::from_millis(800), ..ProxyConfig::default() })
            .await;
    p.route(vec![backend("blue-1", blue.addr(), Color::Blue)], Color::Blue);
    let addr = p.addr;

    let mut busy = keepalive_client(addr).await;
    let mut idle = TcpStream::connect(addr).await.expect("connect");
    idle.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n").await.expect("write");
    let mut first = [0u8; 12];
    idle.read_exact(&mut first).await.expect("first answer on the idle connection");
    assert_eq!(&first, b"HTTP/1.1 200");
    let resp = busy.send_request(get_request(addr)).await.expect("before shutdown");
    assert!(resp.headers().get("connection").is_none(), "{:?}", resp.headers());
    proxy_support::read(resp).await;

    p.begin_shutdown();
    // The listener is closed once the shutdown has begun.
    bg_tests::wait::eventually_async("the listener stops accepting", SECS_5, || async {
        TcpStream::connect(addr).await.is_err()
    })
    .await;
    // A request on a kept-alive connection within the linger is served, and
    // told that the connection closes: the client reconnects, no race.
    busy.ready().await.expect("the connection is still open during the linger");
    let resp = busy.send_request(get_request(addr)).await.expect("during the linger");
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.headers().get("connection").map(|v| v.as_bytes()), Some(&b"close"[..]));
    proxy_support::read(resp).await;
    bg_tests::wait::eventually("the answered connection is closed", SECS_5, || busy.is_closed()).await;

    // The idle connection is closed once the linger is over, not before.
    let started = Instant::now();
    let mut rest = Vec::new();
    tokio::time::timeout(SECS_5, idle.read_to_end(&mut rest)).await.expect("idle connection closed").ok();
    let waited = started.elapsed();
    assert!(waited >= Duration::from_millis(500), "idle connection closed after only {waited:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_headers_get_431_and_other_clients_are_unaffected() {
    let blue = Websample::new().version("v1").spawn().await;
    let p = TestProxy::default().await;
    p.route(vec![backend("blue-1", blue.addr(), Color::Blue)], Color::Blue);
    let mut other = keepalive_client(p.addr).await;

    let mut big = TcpStream::connect(p.addr).await.expect("connect");
    let huge = "a".repeat(1024 * 1024);
    let request = format!("GET / HTTP/1.1\r\nHost: x\r\nX-Huge: {huge}\r\n\r\n");
    // The proxy may close before it read everything: a failed write is fine.
    let _ = big.write_all(request.as_bytes()).await;
    let mut answer = Vec::new();
    let _ = tokio::time::timeout(SECS_5, big.read_to_end(&mut answer)).await.expect("answered or closed");
    let text = String::from_utf8_lossy(&answer);
    assert!(text.starts_with("HTTP/1.1 431"), "oversized headers got {text:?}");

    let a = proxy_support::read(other.send_request(get_request(p.addr)).await.expect("other client")).await;
    assert_eq!(a.status, 200);
    assert_eq!(a.version(), "v1");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_half_closed_client_still_gets_its_answer_and_others_are_unaffected() {
    let blue = Websample::new().version("v1").spawn().await;
    // Opt-in: by default a closed read side means the client went away.
    let p = TestProxy::start(ProxyConfig { half_close: true, ..ProxyConfig::default() }).await;
    p.route(vec![backend("blue-1", blue.addr(), Color::Blue)], Color::Blue);

    // Sends its request, then shuts down its write side while it waits.
    let mut half = TcpStream::connect(p.addr).await.expect("connect");
    half.write_all(b"GET /sleep/1 HTTP/1.1\r\nHost: x\r\n\r\n").await.expect("write");
    half.shutdown().await.expect("half-close");
    // Half-closes in the middle of its headers: dropped, nothing else.
    let mut broken = TcpStream::connect(p.addr).await.expect("connect");
    broken.write_all(b"GET / HTTP/1.1\r\nHost: x\r\nX-Cut").await.expect("write");
    broken.shutdown().await.expect("half-close");

    let a = p.get("/").await;
    assert_eq!(a.status, 200, "another client is served meanwhile");

    let mut answer = Vec::new();
    tokio::time::timeout(SECS_5, half.read_to_end(&mut answer)).await.expect("answer").expect("read");
    let text = String::from_utf8_lossy(&answer);
    assert!(text.starts_with("HTTP/1.1 200"), "half-closed client got {text:?}");
    assert!(text.ends_with("v1\n"), "half-closed client got {text:?}");

    let mut rest = Vec::new();
    let _ = tokio::time::timeout(SECS_5, broken.read_to_end(&mut rest))
        .await
        .expect("the broken client is closed");
    assert!(!String::from_utf8_lossy(&rest).contains("200 OK"), "a cut request was forwarded");
    bg_tests::wait::eventually("no client connection left", SECS_5, || p.proxy.stats().connections == 0)
        .await;
}

/// An HTTP/1.1 keep-alive client connection.
async fn keepalive_client(
    addr: std::net::SocketAddr,
) -> hyper::client::conn::http1::SendRequest<Empty<Bytes>> {
    let stream = TcpStream::connect(addr).await.expect("connect");
    let (sender, conn) =
        hyper::client::conn::http1::handshake(TokioIo::new(stream)).await.expect("handshake");
    tokio::spawn(conn);
    sender
}

fn get_request(addr: std::net::SocketAddr) -> Request<Empty<Bytes>> {
    Request::get(format!("http://{addr}/")).body(Empty::new()).expect("request")
}
