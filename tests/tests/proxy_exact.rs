//! Proxy exactness against real parts: Python's `http.server` as the
//! backend, real `curl` and hyper's h2 client as clients. Uploads with
//! `Expect: 100-continue`, h2 cookies, clients that go away while queued
//! or while the backend works, the queue's cap, slow readers (HTTP/1.1
//! and h2) at a drain's deadline and at the write timeout, and the h2
//! idle timeout.

mod proxy_support;

use bg_proxy::{Color, ProxyConfig};
use bytes::Bytes;
use http::{Request, StatusCode};
use http_body_util::{Empty, Full};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use proxy_support::python::PyBackend;
use proxy_support::{backend, TestProxy, SECS_5};
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// 3 MiB: curl asks `Expect: 100-continue` for uploads over 1 MiB.
const UPLOAD: usize = 3 * 1024 * 1024;

/// A body of `n` bytes that is not all the same, and what the backend
/// answers for it (`<length> <sum of bytes mod 2^32>`).
fn upload(n: usize) -> (Vec<u8>, String) {
    let data: Vec<u8> = (0..n).map(|i| (i * 7 + i / 251) as u8).collect();
    let sum = data.iter().map(|&b| u64::from(b)).sum::<u64>() % (1 << 32);
    let expected = format!("{n} {sum}\n");
    (data, expected)
}

async fn proxy_to(py: &PyBackend, config: ProxyConfig) -> TestProxy {
    let p = TestProxy::start(config).await;
    p.route(vec![backend("blue-1", py.addr, Color::Blue)], Color::Blue);
    p
}

/// Run curl with `args`; its stdout, stderr and how long it took.
async fn curl(args: &[&str]) -> (String, String, Duration) {
    let started = Instant::now();
    let out = tokio::process::Command::new("curl")
        .args(args)
        .output()
        .await
        .expect("curl must be installed to run this test");
    let elapsed = started.elapsed();
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(out.status.success(), "curl {args:?} failed ({}): {stderr}", out.status);
    (stdout, stderr, elapsed)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_curl_upload_with_expect_100_continue_reaches_python_http_server_and_is_answered() {
    let py = PyBackend::start().await;
    let p = proxy_to(&py, ProxyConfig::default()).await;
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("upload.bin");
    let (data, expected) = upload(UPLOAD);
    std::fs::write(&file, &data).expect("write upload");
    let url = format!("http://{}/upload", p.addr);
    let path = file.to_str().expect("utf-8 path");

    // Straight to the backend first: the reference.
    let direct = format!("http://{}/upload", py.addr);
    let (body, _, _) = curl(&["-sS", "-m", "20", "-T", path, &direct]).await;
    assert_eq!(body, expected, "the backend itself");

    // Several times: whether the backend's `100` came before or after
    // the proxy started sending the body is down to timing, and either
    // order must work.
    for round in 0..3 {
        let (body, log, elapsed) = curl(&["-sS", "-v", "-m", "10", "-T", path, &url]).await;
        assert!(log.contains("> Expect: 100-continue"), "curl asked to continue: {log}");
        assert!(log.contains("< HTTP/1.1 100 Continue"), "and was told to: {log}");
        assert_eq!(body, expected, "through the proxy, round {round}");
        assert!(elapsed < SECS_5, "the upload took {elapsed:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_h2_upload_with_expect_100_continue_reaches_python_http_server_and_is_answered() {
    let py = PyBackend::start().await;
    let p = proxy_to(&py, ProxyConfig::default()).await;
    let (data, expected) = upload(UPLOAD);

    // hyper's h2 client, with prior knowledge (h2c).
    let stream = TcpStream::connect(p.addr).await.expect("connect");
    let (mut h2, conn) = hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(stream))
        .await
        .expect("h2c handshake");
    tokio::spawn(conn);
    let req = Request::put(format!("http://{}/upload", p.addr))
        .header("expect", "100-continue")
        .header("content-length", UPLOAD.to_string())
        .body(Full::new(Bytes::from(data.clone())))
        .expect("request");
    let started = Instant::now();
    let resp = tokio::time::timeout(SECS_5, h2.send_request(req))
        .await
        .expect("an answer within 5 s")
        .expect("h2 response");
    let a = tokio::time::timeout(SECS_5, proxy_support::read(resp)).await.expect("the body within 5 s");
    assert_eq!(a.status, StatusCode::OK);
    assert_eq!(a.body, expected, "hyper h2 client");
    assert!(started.elapsed() < SECS_5);

    // curl over h2c.
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("upload.bin");
    std::fs::write(&file, &data).expect("write upload");
    let url = format!("http://{}/upload", p.addr);
    let (body, _log, elapsed) =
        curl(&["-sS", "-v", "--http2-prior-knowledge", "-m", "20", "-T", file.to_str().expect("path"), &url])
            .await;
    assert_eq!(body, expected, "curl over h2c");
    assert!(elapsed < SECS_5, "the upload took {elapsed:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn h2_cookie_fields_reach_an_http11_backend_as_one_joined_line() {
    let py = PyBackend::start().await;
    let p = proxy_to(&py, ProxyConfig::default()).await;
    let stream = TcpStream::connect(p.addr).await.expect("connect");
    let (mut h2, conn) = hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(stream))
        .await
        .expect("h2c handshake");
    tokio::spawn(conn);
    let req = Request::get(format!("http://{}/cookies", p.addr))
        .header("cookie", "a=1")
        .header("cookie", "bg-color=blue")
        .header("cookie", "b=2")
        .body(Empty::<Bytes>::new())
        .expect("request");
    let a = proxy_support::read(h2.send_request(req).await.expect("h2 response")).await;
    assert_eq!(a.status, StatusCode::OK);
    assert_eq!(a.body, "a=1; bg-color=blue; b=2\n");
}

/// Send a raw HTTP/1.1 GET on a fresh connection.
async fn raw_get(addr: std::net::SocketAddr, path: &str) -> TcpStream {
    let mut s = TcpStream::connect(addr).await.expect("connect");
    s.write_all(format!("GET {path} HTTP/1.1\r\nHost: x\r\n\r\n").as_bytes()).await.expect("write");
    s
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_goes_away_while_the_backend_works_drops_the_upstream_request() {
    let mut py = PyBackend::start().await;
    let p = proxy_to(&py, ProxyConfig::default()).await;
    let client = raw_get(p.addr, "/hold").await;
    py.expect_line("holding", SECS_5).await;
    assert_eq!(p.proxy.inflight(&"blue-1".into()), 1);
    drop(client);
    py.expect_line("dropped /hold", SECS_5).await;
    bg_tests::wait::eventually("in flight back to zero", SECS_5, || p.proxy.inflight(&"blue-1".into()) == 0)
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_h2_client_that_goes_away_while_the_backend_works_drops_the_upstream_request() {
    let mut py = PyBackend::start().await;
    let p = proxy_to(&py, ProxyConfig::default()).await;
    let stream = TcpStream::connect(p.addr).await.expect("connect");
    let (mut h2, conn) = hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(stream))
        .await
        .expect("h2c handshake");
    let conn = tokio::spawn(conn);
    let req = Request::get(format!("http://{}/hold", p.addr)).body(Empty::<Bytes>::new()).expect("request");
    let pending = tokio::spawn(async move { h2.send_request(req).await.map(|_| ()) });
    py.expect_line("holding", SECS_5).await;
    assert_eq!(p.proxy.inflight(&"blue-1".into()), 1);
    // The client goes away: its connection (and socket) dropped.
    conn.abort();
    pending.abort();
    py.expect_line("dropped /hold", SECS_5).await;
    bg_tests::wait::eventually("in flight back to zero", SECS_5, || p.proxy.inflight(&"blue-1".into()) == 0)
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_goes_away_while_queued_leaves_the_queue_and_is_never_forwarded() {
    let mut py = PyBackend::start().await;
    let p =
        TestProxy::start(ProxyConfig { queue_timeout: Duration::from_secs(30), ..ProxyConfig::default() })
            .await;
    let client = raw_get(p.addr, "/hold").await;
    bg_tests::wait::eventually("the request queued", SECS_5, || p.proxy.queued() == 1).await;
    drop(client);
    bg_tests::wait::eventually("the queue empty again", SECS_5, || p.proxy.queued() == 0).await;

    p.route(vec![backend("blue-1", py.addr, Color::Blue)], Color::Blue);
    let a = p.get("/").await;
    assert_eq!((a.status, a.body.as_str()), (StatusCode::OK, "ok\n"));
    assert_eq!(py.said(), Vec::<String>::new(), "the vanished request reached the backend");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn beyond_the_queue_cap_a_request_gets_503_at_once_and_the_queued_ones_are_served() {
    let py = PyBackend::start().await;
    let p = TestProxy::start(ProxyConfig {
        queue_timeout: Duration::from_secs(30),
        max_queued: 2,
        ..ProxyConfig::default()
    })
    .await;
    let mut first = raw_get(p.addr, "/").await;
    let mut second = raw_get(p.addr, "/").await;
    bg_tests::wait::eventually("two requests queued", SECS_5, || p.proxy.queued() == 2).await;

    let started = Instant::now();
    let a = p.get("/").await;
    assert_eq!(a.status, StatusCode::SERVICE_UNAVAILABLE);
    assert!(a.body.contains("too many requests are waiting"), "{}", a.body);
    assert!(started.elapsed() < Duration::from_secs(1), "answered at once, not after the queue timeout");
    assert_eq!(p.proxy.queued(), 2);

    p.route(vec![backend("blue-1", py.addr, Color::Blue)], Color::Blue);
    for client in [&mut first, &mut second] {
        let mut buf = vec![0u8; 1024];
        let n = tokio::time::timeout(SECS_5, client.read(&mut buf)).await.expect("answered").expect("read");
        let text = String::from_utf8_lossy(&buf[..n]);
        assert!(text.starts_with("HTTP/1.1 200"), "{text:?}");
    }
}

/// 256 MiB: far more than the socket buffers between the proxy and a
/// client that does not read.
const BIG: usize = 256 * 1024 * 1024;

/// A client that asks for a big body, reads the start of the answer, then
/// stops reading.
async fn slow_reader(addr: std::net::SocketAddr) -> TcpStream {
    let mut s = raw_get(addr, &format!("/big/{BIG}")).await;
    let mut buf = vec![0u8; 4096];
    let n = tokio::time::timeout(SECS_5, s.read(&mut buf)).await.expect("answer starts").expect("read");
    assert!(String::from_utf8_lossy(&buf[..n]).starts_with("HTTP/1.1 200"));
    s
}

/// Read what is left; it must end (close or reset) well before the whole
/// body came. Returns the bytes read.
async fn read_rest(s: &mut TcpStream) -> usize {
    let mut total = 0;
    let mut buf = vec![0u8; 1 << 16];
    let ended = tokio::time::timeout(SECS_5, async {
        loop {
            match s.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => total += n,
            }
        }
    })
    .await;
    assert!(ended.is_ok(), "the client's connection is still open after 5 s ({total} bytes read)");
    assert!(total < BIG / 2, "the body went on streaming: {total} bytes");
    total
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_reader_on_the_old_color_is_cut_at_the_drain_deadline() {
    let mut py = PyBackend::start().await;
    let green = PyBackend::start().await;
    let p = TestProxy::default().await;
    p.route(
        vec![backend("blue-1", py.addr, Color::Blue), backend("green-1", green.addr, Color::Green)],
        Color::Blue,
    );
    let mut client = slow_reader(p.addr).await;
    assert_eq!(p.proxy.inflight(&"blue-1".into()), 1);

    // Promote: blue out of rotation, then its drain; the backend may be
    // stopped now: the drain did not wait past its deadline.
    promote_and_cut_blue(&p).await;

    // Within a second of the deadline, nothing is left on blue...
    let slack = Duration::from_secs(1);
    bg_tests::wait::eventually("blue's in-flight count released", slack, || {
        p.proxy.inflight(&"blue-1".into()) == 0
    })
    .await;
    // ...the backend saw its connection closed...
    py.expect_line("aborted /big", slack).await;
    // ...and the client's connection is closed, with the body cut short.
    read_rest(&mut client).await;
    assert_eq!(p.get("/").await.body, "ok\n", "green serves");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_stops_reading_is_closed_after_the_write_timeout() {
    let mut py = PyBackend::start().await;
    let write_timeout = Duration::from_millis(500);
    let p = proxy_to(&py, ProxyConfig { write_timeout, ..ProxyConfig::default() }).await;
    let started = Instant::now();
    let mut client = slow_reader(p.addr).await;
    py.expect_line("aborted /big", SECS_5).await;
    assert!(started.elapsed() >= write_timeout, "cut before the timeout: {:?}", started.elapsed());
    bg_tests::wait::eventually("in flight back to zero", SECS_5, || p.proxy.inflight(&"blue-1".into()) == 0)
        .await;
    read_rest(&mut client).await;
}

/// An h2c connection (prior knowledge) to `addr` with hyper's client; its
/// connection task's handle.
async fn h2c(
    addr: std::net::SocketAddr,
) -> (hyper::client::conn::http2::SendRequest<Empty<Bytes>>, tokio::task::JoinHandle<hyper::Result<()>>) {
    h2c_window(addr, None).await
}

/// [`h2c`] with this flow-control window per stream (hyper's 2 MiB when
/// `None`).
async fn h2c_window(
    addr: std::net::SocketAddr,
    window: Option<u32>,
) -> (hyper::client::conn::http2::SendRequest<Empty<Bytes>>, tokio::task::JoinHandle<hyper::Result<()>>) {
    let stream = TcpStream::connect(addr).await.expect("connect");
    let (h2, conn) = hyper::client::conn::http2::Builder::new(TokioExecutor::new())
        .timer(TokioTimer::new())
        .initial_stream_window_size(window)
        // Pings while idle, every 100 ms: they must not keep an idle
        // connection open.
        .keep_alive_interval(Duration::from_millis(100))
        .keep_alive_while_idle(true)
        .handshake(TokioIo::new(stream))
        .await
        .expect("h2c handshake");
    (h2, tokio::spawn(conn))
}

fn get_req(addr: std::net::SocketAddr, path: &str) -> Request<Empty<Bytes>> {
    Request::get(format!("http://{addr}{path}")).body(Empty::new()).expect("request")
}

/// The stream's flow-control window fills (hyper's client gives it 2 MiB
/// and opens it again only as the application reads) and hyper's server
/// stops polling the response body: the cut must still end the stream and
/// the upstream connection, and leave the connection's other streams be.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_h2_stream_whose_client_stopped_reading_is_reset_at_the_drain_deadline_and_its_connection_goes_on()
{
    use http_body_util::BodyExt;
    let mut py = PyBackend::start().await;
    let green = PyBackend::start().await;
    let p = TestProxy::default().await;
    p.route(
        vec![backend("blue-1", py.addr, Color::Blue), backend("green-1", green.addr, Color::Green)],
        Color::Blue,
    );
    let (mut h2, _conn) = h2c(p.addr).await;
    let resp = tokio::time::timeout(SECS_5, h2.send_request(get_req(p.addr, &format!("/big/{BIG}"))))
        .await
        .expect("an answer within 5 s")
        .expect("h2 response");
    assert_eq!(resp.status(), StatusCode::OK);
    let mut body = resp.into_body();
    assert_eq!(p.proxy.inflight(&"blue-1".into()), 1);
    // Time for the 2 MiB window to fill on loopback (milliseconds); were
    // it not full yet, the stream would be cut while polled, which passes
    // without the stream's own cut too, never fails.
    tokio::time::sleep(Duration::from_secs(1)).await;

    promote_and_cut_blue(&p).await;

    // Within a second of the deadline (slack for a loaded machine; it
    // takes one wake-up), blue has nothing left and saw its connection
    // closed...
    let slack = Duration::from_secs(1);
    bg_tests::wait::eventually("blue's in-flight count released", slack, || {
        p.proxy.inflight(&"blue-1".into()) == 0
    })
    .await;
    py.expect_line("aborted /big", slack).await;
    // ...the client's stream ends with a reset after what was buffered...
    let mut total = 0;
    let end = tokio::time::timeout(SECS_5, async {
        loop {
            match body.frame().await {
                Some(Ok(frame)) => total += frame.data_ref().map_or(0, |d| d.len()),
                Some(Err(e)) => return Some(e),
                None => return None,
            }
        }
    })
    .await
    .expect("the stream still streams 5 s after the cut");
    let err = end.expect("a cut stream must not look complete");
    assert!(total < BIG / 2, "the body went on streaming: {total} bytes ({err})");
    // ...and the connection carries the next request, to green.
    let a = proxy_support::read(h2.send_request(get_req(p.addr, "/")).await.expect("same connection")).await;
    assert_eq!((a.status, a.body.as_str()), (StatusCode::OK, "ok\n"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_h2_connection_with_no_stream_open_for_the_idle_timeout_gets_goaway_though_pinged() {
    let mut py = PyBackend::start().await;
    let idle = Duration::from_secs(1);
    let p = proxy_to(&py, ProxyConfig { header_read_timeout: idle, ..ProxyConfig::default() }).await;
    let (mut h2, mut conn) = h2c(p.addr).await;
    let a = proxy_support::read(h2.send_request(get_req(p.addr, "/")).await.expect("h2 response")).await;
    assert_eq!(a.body, "ok\n");

    // A stream open for three idle timeouts keeps the connection open.
    let hold = tokio::spawn(h2.send_request(get_req(p.addr, "/hold")));
    py.expect_line("holding", SECS_5).await;
    tokio::time::sleep(idle * 3).await;
    assert!(!conn.is_finished(), "the connection closed while a stream was open");

    // The client gives up on it (RST_STREAM): from then on nothing is
    // open, and the pings every 100 ms do not count.
    hold.abort();
    py.expect_line("dropped /hold", SECS_5).await;
    let idle_from = Instant::now();
    let closed = tokio::time::timeout(idle + Duration::from_secs(4), &mut conn)
        .await
        .expect("the idle connection is still open idle + 4 s later");
    closed.expect("connection task").expect("a graceful close (GOAWAY), not an error");
    // The idle time started a little before the backend noticed.
    let waited = idle_from.elapsed();
    assert!(waited >= idle / 2, "closed after {waited:?}, before the idle timeout");
}

/// The socket's write timeout cannot see a stream whose window the client
/// keeps shut: the connection's other streams and pings still flow.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_h2_stream_the_client_stops_reading_is_reset_after_the_write_timeout_and_a_slow_steady_one_is_not()
{
    use http_body_util::BodyExt;
    let mut py = PyBackend::start().await;
    let write_timeout = Duration::from_secs(2);
    let p = proxy_to(&py, ProxyConfig { write_timeout, ..ProxyConfig::default() }).await;
    // 64 KiB windows: the proxy hands hyper up to 64 KiB at a time, and
    // takes more once the client's window let that out.
    let (mut h2, _conn) = h2c_window(p.addr, Some(64 * 1024)).await;
    let stalled = h2.send_request(get_req(p.addr, &format!("/big/{BIG}"))).await.expect("h2 response");
    let started = Instant::now();

    // Alongside on the same connection: 640 KiB read 16 KiB per 100 ms,
    // 4 s in all. Each 64 KiB goes out within about 400 ms, a fifth of the
    // timeout (slack for a loaded machine).
    const STEADY: usize = 640 * 1024;
    let mut h2b = h2.clone();
    let addr = p.addr;
    let steady = tokio::spawn(async move {
        let resp = h2b.send_request(get_req(addr, &format!("/big/{STEADY}"))).await.expect("h2 response");
        let mut body = resp.into_body();
        let mut total = 0;
        while let Some(frame) = body.frame().await {
            total += frame.expect("the steady stream is not cut").data_ref().map_or(0, |d| d.len());
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        total
    });

    py.expect_line("aborted /big", SECS_5 + write_timeout).await;
    let after = started.elapsed();
    assert!(after >= write_timeout, "reset after {after:?}, before the write timeout");
    let mut body = stalled.into_body();
    let mut total = 0;
    let err = tokio::time::timeout(SECS_5, async {
        loop {
            match body.frame().await {
                Some(Ok(frame)) => total += frame.data_ref().map_or(0, |d| d.len()),
                Some(Err(e)) => return e,
                None => panic!("a reset stream must not look complete"),
            }
        }
    })
    .await
    .expect("the stalled stream still streams 5 s after its reset");
    assert!(total < BIG / 2, "the body went on streaming: {total} bytes ({err})");

    let got = tokio::time::timeout(Duration::from_secs(30), steady)
        .await
        .expect("steady reader done")
        .expect("join");
    assert_eq!(got, STEADY);
    bg_tests::wait::eventually("in flight back to zero", SECS_5, || p.proxy.inflight(&"blue-1".into()) == 0)
        .await;
}

/// Promote: blue out of rotation, then a 500 ms drain of `blue-1`, which
/// must cut the one request open on it and end within 500 ms of its
/// deadline.
async fn promote_and_cut_blue(p: &TestProxy) {
    p.proxy.update_routes(|t| {
        t.weights = bg_proxy::Weights::all_to(Color::Green);
        for b in &mut t.backends {
            b.in_rotation = b.color == Color::Green;
        }
    });
    let timeout = Duration::from_millis(500);
    let report = p.proxy.drain(&["blue-1".into()], timeout).await;
    assert!(report.timed_out && report.cut == 1, "{report:?}");
    assert!(report.elapsed < timeout + Duration::from_millis(500), "{report:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backend_that_does_not_begin_its_answer_in_time_is_passed_over_or_answered_504() {
    let mut silent = PyBackend::start().await;
    let (echo, _stop, _) = proxy_support::echo_upstream().await;
    let response_timeout = Duration::from_millis(500);
    let p = TestProxy::start(ProxyConfig { response_timeout, ..ProxyConfig::default() }).await;
    p.route(
        vec![backend("blue-1", silent.addr, Color::Blue), backend("blue-2", echo, Color::Blue)],
        Color::Blue,
    );

    // A GET may go out again: the one the silent backend holds is answered
    // by the other backend once the timeout passed.
    let mut slowest = Duration::ZERO;
    for _ in 0..4 {
        let started = Instant::now();
        let a = p.get("/hold").await;
        slowest = slowest.max(started.elapsed());
        assert_eq!(a.status, StatusCode::OK, "{}", a.body);
        assert_eq!(a.version(), "echo");
    }
    silent.expect_line("holding", SECS_5).await;
    silent.expect_line("dropped /hold", SECS_5).await;
    assert!(slowest >= response_timeout, "no request waited for the timeout: {slowest:?}");
    assert!(slowest < response_timeout * 4, "held past the timeout: {slowest:?}");

    // An upload may not: a 504, once, and the backend's connection closed.
    p.route(vec![backend("blue-1", silent.addr, Color::Blue)], Color::Blue);
    let url = format!("http://{}/hold", p.addr);
    let (code, err, took) =
        curl(&["-s", "-o", "/dev/null", "-w", "%{http_code}", "-X", "PUT", "--data-binary", "abc", &url])
            .await;
    assert_eq!(code, "504", "{err}");
    assert!(took >= response_timeout && took < response_timeout * 4, "{took:?}");
    silent.expect_line("dropped /hold", SECS_5).await;
}
