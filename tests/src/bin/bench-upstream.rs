//! A minimal HTTP/1.1 upstream for the benchmark: `GET` anything answers
//! `VERSION\n` with an `x-version` header, on one thread. It stands in for
//! the app so that the numbers measure the proxies, not websample.
//!
//! Usage: `bench-upstream ADDR [VERSION]` (prints `listening ADDR`). With
//! no arguments it listens on `$BIND:$PORT` with `$VERSION`, as a replica
//! of the process runtime does (the bench's bg-agent peer runs it so).
#![forbid(unsafe_code)]

use bytes::Bytes;
use http_body_util::Full;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use std::convert::Infallible;

fn main() {
    let mut args = std::env::args().skip(1);
    let env = |k: &str, default: &str| std::env::var(k).unwrap_or_else(|_| default.into());
    let addr = args.next().unwrap_or_else(|| format!("{}:{}", env("BIND", "127.0.0.1"), env("PORT", "0")));
    let version = args.next().unwrap_or_else(|| env("VERSION", "v1"));
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("tokio runtime");
    rt.block_on(async move {
        let listener = tokio::net::TcpListener::bind(&addr).await.expect("bind upstream address");
        println!("listening {}", listener.local_addr().expect("local addr"));
        let body = Bytes::from(format!("{version}\n"));
        let version = http::HeaderValue::from_str(&version).expect("version is a header value");
        loop {
            let Ok((stream, _)) = listener.accept().await else { continue };
            let _ = stream.set_nodelay(true);
            let (body, version) = (body.clone(), version.clone());
            tokio::spawn(async move {
                let service = hyper::service::service_fn(move |_req: Request<hyper::body::Incoming>| {
                    let mut resp = Response::new(Full::new(body.clone()));
                    resp.headers_mut().insert("x-version", version.clone());
                    async move { Ok::<_, Infallible>(resp) }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    });
}
