//! The proxy's upstream HTTP/1.1 client against scripted backends that
//! write raw bytes: request bodies by length and in chunks, answers framed
//! by length, chunks (with trailers) or the close, answers without a body,
//! informational answers, early answers to uploads, broken framing, and
//! servers that close pooled connections.

mod proxy_support;

use bg_proxy::Color;
use bytes::Bytes;
use futures_util::StreamExt;
use http::{Method, Request, StatusCode};
use http_body_util::{BodyExt, Empty, Full, StreamBody};
use hyper::body::Frame;
use hyper_util::rt::TokioIo;
use proxy_support::{backend, TestProxy, SECS_5};
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// A request as a scripted backend read it.
#[derive(Debug, Clone)]
struct Seen {
    method: String,
    path: String,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

impl Seen {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(k, _)| k.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str())
    }
}

/// What a scripted backend does with one request.
enum Reply {
    /// Write these bytes, keep the connection.
    Keep(Vec<u8>),
    /// Write these bytes, then close.
    Close(Vec<u8>),
    /// Write these pieces with a pause between them, keep the connection.
    Slowly(Vec<Vec<u8>>),
}

/// A backend on 127.0.0.1:0 that parses requests itself and answers each
/// as `script` says. Returns its address and its count of connections.
async fn scripted<F>(script: F) -> (SocketAddr, Arc<AtomicU64>)
where
    F: Fn(&Seen) -> Reply + Send + Sync + 'static,
{
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind backend");
    let addr = listener.local_addr().expect("backend addr");
    let accepted = Arc::new(AtomicU64::new(0));
    let counter = accepted.clone();
    let script = Arc::new(script);
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            counter.fetch_add(1, Ordering::Relaxed);
            let script = script.clone();
            tokio::spawn(async move {
                let mut conn = RawConn { stream, buf: Vec::new() };
                while let Some(seen) = conn.read_request().await {
                    let close = match script(&seen) {
                        Reply::Keep(bytes) => conn.stream.write_all(&bytes).await.is_err(),
                        Reply::Close(bytes) => {
                            let _ = conn.stream.write_all(&bytes).await;
                            true
                        }
                        Reply::Slowly(pieces) => {
                            let mut failed = false;
                            for piece in pieces {
                                failed |= conn.stream.write_all(&piece).await.is_err();
                                tokio::time::sleep(Duration::from_millis(20)).await;
                            }
                            failed
                        }
                    };
                    if close {
                        return;
                    }
                }
            });
        }
    });
    (addr, accepted)
}

/// The test backend's side of a connection.
struct RawConn {
    stream: TcpStream,
    buf: Vec<u8>,
}

impl RawConn {
    async fn fill(&mut self) -> bool {
        let mut chunk = [0u8; 16 * 1024];
        match self.stream.read(&mut chunk).await {
            Ok(0) | Err(_) => false,
            Ok(n) => {
                self.buf.extend_from_slice(&chunk[..n]);
                true
            }
        }
    }

    async fn line(&mut self) -> Option<Vec<u8>> {
        loop {
            if let Some(i) = self.buf.windows(2).position(|w| w == b"\r\n") {
                let line = self.buf[..i].to_vec();
                self.buf.drain(..i + 2);
                return Some(line);
            }
            if !self.fill().await {
                return None;
            }
        }
    }

    async fn exact(&mut self, n: usize) -> Option<Vec<u8>> {
        while self.buf.len() < n {
            if !self.fill().await {
                return None;
            }
        }
        Some(self.buf.drain(..n).collect())
    }

    async fn read_request(&mut self) -> Option<Seen> {
        let start = String::from_utf8(self.line().await?).ok()?;
        let mut parts = start.split(' ');
        let (method, path) = (parts.next()?.to_string(), parts.next()?.to_string());
        let mut headers = Vec::new();
        loop {
            let line = String::from_utf8(self.line().await?).ok()?;
            if line.is_empty() {
                break;
            }
            let (k, v) = line.split_once(':')?;
            headers.push((k.trim().to_ascii_lowercase(), v.trim().to_string()));
        }
        let mut seen = Seen { method, path, headers, body: Vec::new() };
        if seen.header("transfer-encoding").is_some_and(|v| v.eq_ignore_ascii_case("chunked")) {
            loop {
                let size = String::from_utf8(self.line().await?).ok()?;
                let size = usize::from_str_radix(size.split(';').next()?.trim(), 16).ok()?;
                if size == 0 {
                    while !self.line().await?.is_empty() {}
                    break;
                }
                seen.body.extend(self.exact(size).await?);
                self.exact(2).await?;
            }
        } else if let Some(n) = seen.header("content-length").and_then(|v| v.parse().ok()) {
            seen.body = self.exact(n).await?;
        }
        Some(seen)
    }
}

fn ok(body: &[u8]) -> Vec<u8> {
    let mut out = format!("HTTP/1.1 200 OK\r\ncontent-length: {}\r\n\r\n", body.len()).into_bytes();
    out.extend_from_slice(body);
    out
}

/// One HTTP/1.1 client connection to the proxy.
async fn client(
    addr: SocketAddr,
) -> hyper::client::conn::http1::SendRequest<http_body_util::combinators::BoxBody<Bytes, Infallible>> {
    let stream = TcpStream::connect(addr).await.expect("connect to the proxy");
    let (sender, conn) =
        hyper::client::conn::http1::handshake(TokioIo::new(stream)).await.expect("handshake");
    tokio::spawn(conn);
    sender
}

fn request(
    method: Method,
    path: &str,
    body: http_body_util::combinators::BoxBody<Bytes, Infallible>,
) -> Request<http_body_util::combinators::BoxBody<Bytes, Infallible>> {
    Request::builder().method(method).uri(path).header("host", "test").body(body).expect("request")
}

fn empty() -> http_body_util::combinators::BoxBody<Bytes, Infallible> {
    Empty::new().boxed()
}

async fn proxy_to(addr: SocketAddr) -> TestProxy {
    let p = TestProxy::default().await;
    p.route(vec![backend("b", addr, Color::Blue)], Color::Blue);
    p
}

#[tokio::test]
async fn request_bodies_arrive_whole_by_length_and_in_chunks() {
    let seen = Arc::new(std::sync::Mutex::new(Vec::<Seen>::new()));
    let log = seen.clone();
    let (up, accepted) = scripted(move |s| {
        log.lock().unwrap().push(s.clone());
        Reply::Keep(ok(&s.body))
    })
    .await;
    let p = proxy_to(up).await;
    let mut c = client(p.addr).await;

    let sized = Bytes::from(vec![b'x'; 300_000]);
    let resp =
        c.send_request(request(Method::POST, "/up", Full::new(sized.clone()).boxed())).await.expect("answer");
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.into_body().collect().await.expect("body").to_bytes(), sized);

    // A body of unknown length: the client sends it chunked, in pieces.
    let pieces: Vec<Result<Frame<Bytes>, Infallible>> =
        (0..20).map(|i| Ok(Frame::data(Bytes::from(format!("piece {i};"))))).collect();
    let stream = futures_util::stream::iter(pieces).then(|f| async move {
        tokio::time::sleep(Duration::from_millis(2)).await;
        f
    });
    c.ready().await.expect("client connection ready");
    let resp = c
        .send_request(request(Method::PUT, "/up?x=1", BodyExt::boxed(StreamBody::new(stream))))
        .await
        .expect("answer");
    assert_eq!(resp.status(), 200);
    let expected: String = (0..20).map(|i| format!("piece {i};")).collect();
    assert_eq!(resp.into_body().collect().await.expect("body").to_bytes(), expected.as_bytes());

    let seen = seen.lock().unwrap().clone();
    assert_eq!(seen.len(), 2);
    assert_eq!((seen[0].method.as_str(), seen[0].header("content-length")), ("POST", Some("300000")));
    assert_eq!(seen[0].header("transfer-encoding"), None);
    assert_eq!((seen[1].method.as_str(), seen[1].path.as_str()), ("PUT", "/up?x=1"));
    assert_eq!(seen[1].header("transfer-encoding"), Some("chunked"));
    assert_eq!(seen[1].header("content-length"), None);
    assert_eq!(accepted.load(Ordering::Relaxed), 1, "both went on one upstream connection");
}

#[tokio::test]
async fn chunked_and_close_delimited_answers_reach_the_client_whole() {
    let (up, accepted) = scripted(|s| match s.path.as_str() {
        "/chunked" => Reply::Slowly(vec![
            b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\nx-kind: chunked\r\n\r\n".to_vec(),
            b"5\r\nhello\r\n".to_vec(),
            b"8;ext=1\r\n, world!\r\n".to_vec(),
            b"0\r\n\r\n".to_vec(),
        ]),
        "/close" => Reply::Close(b"HTTP/1.1 200 OK\r\nx-kind: close\r\n\r\nuntil the end".to_vec()),
        _ => Reply::Keep(ok(b"?")),
    })
    .await;
    let p = proxy_to(up).await;
    let mut c = client(p.addr).await;
    let resp = c.send_request(request(Method::GET, "/chunked", empty())).await.expect("answer");
    assert_eq!(resp.headers()["x-kind"], "chunked");
    assert_eq!(
        resp.headers().get("transfer-encoding").map(|v| v.as_bytes()),
        Some(&b"chunked"[..]),
        "the client's hop is chunked too"
    );
    assert_eq!(resp.into_body().collect().await.expect("body").to_bytes(), "hello, world!");
    bg_tests::wait::eventually("the chunked answer's connection is pooled", SECS_5, || {
        p.proxy.idle_connections(&"b".into()) == 1
    })
    .await;

    c.ready().await.expect("client connection ready");
    let resp = c.send_request(request(Method::GET, "/close", empty())).await.expect("answer");
    assert_eq!(resp.headers()["x-kind"], "close");
    assert_eq!(resp.into_body().collect().await.expect("body").to_bytes(), "until the end");
    assert_eq!(accepted.load(Ordering::Relaxed), 1, "the pooled connection carried the second request");
    assert_eq!(
        p.proxy.idle_connections(&"b".into()),
        0,
        "a connection whose answer ended at its close is not pooled"
    );
    assert_eq!(p.proxy.inflight(&"b".into()), 0);
}

#[tokio::test]
async fn answers_without_a_body_and_informational_answers() {
    let (up, accepted) = scripted(|s| match (s.method.as_str(), s.path.as_str()) {
        // HEAD: the length of the body a GET would get, and no body.
        ("HEAD", _) => Reply::Keep(b"HTTP/1.1 200 OK\r\ncontent-length: 10\r\n\r\n".to_vec()),
        (_, "/204") => Reply::Keep(b"HTTP/1.1 204 No Content\r\nx-n: 1\r\n\r\n".to_vec()),
        (_, "/304") => Reply::Keep(b"HTTP/1.1 304 Not Modified\r\ncontent-length: 10\r\n\r\n".to_vec()),
        (_, "/continue") => Reply::Keep(
            b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 103 Early Hints\r\nlink: </a.css>\r\n\r\nHTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\nfinal"
                .to_vec(),
        ),
        _ => Reply::Keep(ok(b"0123456789")),
    })
    .await;
    let p = proxy_to(up).await;
    let mut c = client(p.addr).await;
    for (method, path, status, body) in [
        (Method::HEAD, "/", 200, ""),
        (Method::GET, "/204", 204, ""),
        (Method::GET, "/304", 304, ""),
        (Method::GET, "/continue", 200, "final"),
        (Method::GET, "/", 200, "0123456789"),
    ] {
        c.ready().await.expect("client connection ready");
        let resp = tokio::time::timeout(SECS_5, c.send_request(request(method.clone(), path, empty())))
            .await
            .unwrap_or_else(|_| panic!("{method} {path} hung"))
            .expect("answer");
        assert_eq!(resp.status(), status, "{method} {path}");
        let got = resp.into_body().collect().await.expect("body").to_bytes();
        assert_eq!(got, body.as_bytes(), "{method} {path}");
    }
    assert_eq!(accepted.load(Ordering::Relaxed), 1, "every answer left the upstream connection usable");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pooled_connections_the_server_closed_cost_no_client_an_error() {
    // The server answers as if it kept the connection, then closes it: the
    // next request finds a pooled connection that is already closed, or
    // closes under it.
    let (up, accepted) = scripted(|_| Reply::Close(ok(b"done"))).await;
    let p = proxy_to(up).await;
    let mut c = client(p.addr).await;
    for i in 0..200 {
        c.ready().await.expect("client connection ready");
        let resp = c.send_request(request(Method::GET, "/", empty())).await.expect("answer");
        assert_eq!(resp.status(), 200, "request {i}");
        assert_eq!(resp.into_body().collect().await.expect("body").to_bytes(), "done");
    }
    assert_eq!(accepted.load(Ordering::Relaxed), 200, "each request needed a connection of its own");
    let stats = p.proxy.stats();
    assert_eq!((stats.blue.requests, stats.blue.responses[1], stats.blue.responses[4]), (200, 200, 0));
}

#[tokio::test]
async fn a_server_that_refuses_an_upload_early_is_heard() {
    // 413 as soon as the head is in, before the body is read; the server
    // then reads (and drops) the rest before closing, as servers do.
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let up = listener.local_addr().expect("addr");
    tokio::spawn(async move {
        let (mut s, _) = listener.accept().await.expect("accept");
        let mut head = Vec::new();
        let mut byte = [0u8; 1];
        while !head.ends_with(b"\r\n\r\n") {
            s.read_exact(&mut byte).await.expect("head");
            head.push(byte[0]);
        }
        s.write_all(
            b"HTTP/1.1 413 Payload Too Large\r\nconnection: close\r\ncontent-length: 9\r\n\r\ntoo large",
        )
        .await
        .expect("answer");
        let mut sink = vec![0u8; 64 * 1024];
        let deadline = tokio::time::Instant::now() + Duration::from_secs(3);
        while let Ok(Ok(n)) = tokio::time::timeout_at(deadline, s.read(&mut sink)).await {
            if n == 0 {
                break;
            }
        }
    });
    let p = proxy_to(up).await;
    let mut c = client(p.addr).await;
    // 4 MiB in 64 KiB pieces, slowly enough that the answer comes first.
    let stream = futures_util::stream::iter(0..64).then(|_| async {
        tokio::time::sleep(Duration::from_millis(5)).await;
        Ok::<_, Infallible>(Frame::data(Bytes::from(vec![b'u'; 64 * 1024])))
    });
    let resp = tokio::time::timeout(
        SECS_5,
        c.send_request(request(Method::POST, "/upload", BodyExt::boxed(StreamBody::new(stream)))),
    )
    .await
    .expect("answered in time")
    .expect("answer");
    assert_eq!(resp.status(), StatusCode::PAYLOAD_TOO_LARGE);
    assert_eq!(resp.into_body().collect().await.expect("body").to_bytes(), "too large");
    bg_tests::wait::eventually("nothing in flight", SECS_5, || p.proxy.inflight(&"b".into()) == 0).await;
    assert_eq!(p.proxy.idle_connections(&"b".into()), 0);
}

#[tokio::test]
async fn a_large_answer_arrives_intact_and_a_truncated_one_is_cut() {
    let big: Arc<Vec<u8>> = Arc::new((0..8 * 1024 * 1024u32).map(|i| (i % 251) as u8).collect());
    let body = big.clone();
    let (up, _) = scripted(move |s| match s.path.as_str() {
        "/big" => Reply::Keep(ok(&body)),
        _ => Reply::Close(b"HTTP/1.1 200 OK\r\ncontent-length: 100\r\n\r\nonly ten..".to_vec()),
    })
    .await;
    let p = proxy_to(up).await;
    let mut c = client(p.addr).await;
    let resp = c.send_request(request(Method::GET, "/big", empty())).await.expect("answer");
    assert_eq!(resp.headers()["content-length"], "8388608");
    let got = resp.into_body().collect().await.expect("body").to_bytes();
    assert!(got[..] == big[..], "8 MiB arrive byte for byte");

    // The proxy may fail the client's connection before or after the head:
    // never a short body that looks complete.
    c.ready().await.expect("client connection ready");
    if let Ok(resp) = c.send_request(request(Method::GET, "/short", empty())).await {
        assert!(
            resp.into_body().collect().await.is_err(),
            "a body shorter than its length must end in an error"
        );
    }
    bg_tests::wait::eventually("nothing in flight", SECS_5, || p.proxy.inflight(&"b".into()) == 0).await;
    // The short answer came on the big one's pooled connection, which is
    // then dropped, not pooled again.
    assert_eq!(p.proxy.idle_connections(&"b".into()), 0, "a connection whose answer broke is not pooled");
}

#[tokio::test]
async fn a_broken_answer_head_is_a_502() {
    let (up, _) = scripted(|_| Reply::Close(b"SMTP 220 ready\r\n\r\n".to_vec())).await;
    let p = proxy_to(up).await;
    let a = p.get("/").await;
    assert_eq!(a.status, StatusCode::BAD_GATEWAY);
    assert_eq!(a.body, "the backend failed to answer\n");
    assert_eq!(p.proxy.stats().blue.responses[4], 1);
}

/// The last answer of a `Connection: close` exchange is held for the FIN
/// (`last_write`): only its final write, so a streamed answer's earlier
/// pieces still arrive as they come, and every answer arrives whole,
/// followed by the close.
#[tokio::test]
async fn a_closing_exchange_streams_as_it_comes_and_ends_whole() {
    let (up, _) = scripted(|s| match s.path.as_str() {
        "/stream" => Reply::Slowly(vec![
            b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n5\r\nhello\r\n".to_vec(),
            b"1\r\n,\r\n".to_vec(),
            b"6\r\n world\r\n".to_vec(),
            b"0\r\n\r\n".to_vec(),
        ]),
        _ => Reply::Keep(ok(b"whole")),
    })
    .await;
    let p = proxy_to(up).await;
    for (request, body_end) in [
        (&b"GET /stream HTTP/1.1\r\nhost: test\r\nconnection: close\r\n\r\n"[..], &b"0\r\n\r\n"[..]),
        (b"GET /whole HTTP/1.1\r\nhost: test\r\nconnection: close\r\n\r\n", b"whole"),
        (b"GET /whole HTTP/1.0\r\nhost: test\r\n\r\n", b"whole"),
    ] {
        let mut s = TcpStream::connect(p.addr).await.expect("connect");
        s.write_all(request).await.expect("send");
        let mut got = Vec::new();
        let mut chunk = [0u8; 4096];
        let mut first_piece = None;
        let ended = tokio::time::timeout(SECS_5, async {
            loop {
                let n = s.read(&mut chunk).await.expect("read");
                if n == 0 {
                    return std::time::Instant::now();
                }
                got.extend_from_slice(&chunk[..n]);
                if first_piece.is_none() && got.windows(5).any(|w| w == b"hello") {
                    first_piece = Some(std::time::Instant::now());
                }
            }
        })
        .await
        .expect("the proxy closes after the answer");
        let text = String::from_utf8_lossy(&got);
        assert!(text.starts_with("HTTP/1.") && text[8..].starts_with(" 200 OK\r\n"), "{text}");
        assert!(got.ends_with(body_end), "whole: {text}");
        if let Some(first) = first_piece {
            // Three more pieces, 20 ms apart, came after the first.
            assert!(ended - first >= Duration::from_millis(30), "the stream's first piece was held: {text}");
        } else {
            assert!(!request.starts_with(b"GET /stream"), "{text}");
        }
    }
}
