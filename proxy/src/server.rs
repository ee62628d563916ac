//! The accept loop of one listener: a connection limit (a semaphore; over
//! it the loop stops accepting and clients wait in the kernel backlog), a
//! deadline for the first bytes and for request headers, HTTP/1.1 and h2c
//! on the same port, and a graceful shutdown bounded by a timeout: HTTP/1.1
//! keep-alive connections linger a moment and answer with `Connection:
//! close`, h2 connections get GOAWAY, in-flight requests finish.

use crate::forward::{self, ConnCtx};
use crate::{Inner, ProxyError};
use http::header::CONNECTION;
use http::{HeaderValue, StatusCode};
use hyper::server::conn::{http1, http2};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// The HTTP/2 connection preface a cleartext h2 client starts with.
const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// Counts one open client connection.
struct ConnGauge(Arc<Inner>);

impl ConnGauge {
    fn new(inner: Arc<Inner>) -> ConnGauge {
        inner.connections.fetch_add(1, Ordering::Relaxed);
        ConnGauge(inner)
    }
}

impl Drop for ConnGauge {
    fn drop(&mut self) {
        self.0.connections.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Accept errors that concern one connection or a passing shortage of
/// resources; the loop goes on after them.
fn is_transient(e: &std::io::Error) -> bool {
    use std::io::ErrorKind::*;
    matches!(
        e.kind(),
        ConnectionAborted | ConnectionReset | ConnectionRefused | Interrupted | WouldBlock | TimedOut
    ) || matches!(
        // ENOMEM, ENFILE, EMFILE, ENOBUFS: out of memory or descriptors.
        e.raw_os_error(),
        Some(12 | 23 | 24 | 105)
    )
}

/// Serve `listener` until `shutdown` fires.
pub(crate) async fn serve(
    inner: Arc<Inner>,
    listener: TcpListener,
    shutdown: CancellationToken,
) -> Result<(), ProxyError> {
    let addr = listener.local_addr().map(|a| a.to_string()).unwrap_or_else(|_| "?".into());
    inner.start_reaper();
    let config = &inner.config;
    let limit = Arc::new(Semaphore::new(config.max_connections.max(1)));
    // The protocol is known from the first bytes, so each connection is
    // served by its own protocol's builder: no second detection read and no
    // rewind layer on every read and write of the connection.
    let mut h1 = http1::Builder::new();
    // half_close: a client that shuts down its write side after its request
    // (`curl`'s --no-keepalive style, some load balancers) still gets the
    // answer instead of a closed connection.
    h1.timer(TokioTimer::new())
        .header_read_timeout(config.header_read_timeout)
        .keep_alive(true)
        .half_close(true);
    let mut h2 = http2::Builder::new(TokioExecutor::new());
    h2.timer(TokioTimer::new());
    let builders = Arc::new((h1, h2));
    // Fires when shutdown starts: connections finish their current request
    // and close. `hard_stop` fires when the graceful period is over.
    let graceful = CancellationToken::new();
    let hard_stop = CancellationToken::new();
    let connections = TaskTracker::new();

    let result = loop {
        let permit = tokio::select! {
            p = limit.clone().acquire_owned() => match p {
                Ok(p) => p,
                Err(_) => break Ok(()),
            },
            _ = shutdown.cancelled() => break Ok(()),
        };
        let (stream, peer) = tokio::select! {
            r = listener.accept() => match r {
                Ok(x) => x,
                Err(e) if is_transient(&e) => {
                    tracing::warn!(listener = %addr, error = %e, "accept failed; retrying");
                    tokio::select! {
                        _ = tokio::time::sleep(Duration::from_millis(50)) => continue,
                        _ = shutdown.cancelled() => break Ok(()),
                    }
                }
                Err(source) => break Err(ProxyError::Listener { addr: addr.clone(), source }),
            },
            _ = shutdown.cancelled() => break Ok(()),
        };
        let _ = stream.set_nodelay(true);
        let inner = inner.clone();
        let builders = builders.clone();
        let graceful = graceful.clone();
        let hard_stop = hard_stop.clone();
        connections.spawn(async move {
            let _permit = permit;
            let _gauge = ConnGauge::new(inner.clone());
            let first_bytes = inner.config.header_read_timeout;
            let linger = inner.config.close_linger;
            let ctx = Arc::new(ConnCtx {
                client_ip: HeaderValue::from_str(&peer.ip().to_string())
                    .unwrap_or_else(|_| HeaderValue::from_static("unknown")),
                shutdown: hard_stop.clone(),
            });
            let conn = async move {
                let Some(protocol) = wait_for_first_bytes(&stream, first_bytes).await else { return };
                let io = TokioIo::new(stream);
                let result = match protocol {
                    Protocol::Http1 => {
                        let closing = graceful.clone();
                        let service = hyper::service::service_fn(move |req| {
                            let response = forward::handle(inner.clone(), ctx.clone(), req);
                            let closing = closing.clone();
                            async move {
                                let mut response = response.await?;
                                if closing.is_cancelled()
                                    && response.status() != StatusCode::SWITCHING_PROTOCOLS
                                {
                                    response
                                        .headers_mut()
                                        .insert(CONNECTION, HeaderValue::from_static("close"));
                                }
                                Ok::<_, Infallible>(response)
                            }
                        });
                        let conn = builders.0.serve_connection(io, service).with_upgrades();
                        until_done_or_drained(conn, &graceful, linger, |c| c.graceful_shutdown()).await
                    }
                    Protocol::Http2 => {
                        // GOAWAY at once: h2 clients retry what it did not
                        // take, so there is nothing to linger for.
                        let service = hyper::service::service_fn(move |req| {
                            forward::handle(inner.clone(), ctx.clone(), req)
                        });
                        let conn = builders.1.serve_connection(io, service);
                        until_done_or_drained(conn, &graceful, Duration::ZERO, |c| c.graceful_shutdown())
                            .await
                    }
                };
                if let Err(e) = result {
                    tracing::debug!(error = %e, "client connection ended with an error");
                }
            };
            tokio::select! {
                _ = conn => {}
                _ = hard_stop.cancelled() => {}
            }
        });
    };

    drop(listener);
    graceful.cancel();
    connections.close();
    let timeout = inner.config.shutdown_timeout;
    if tokio::time::timeout(timeout, connections.wait()).await.is_err() {
        tracing::warn!(listener = %addr, ?timeout, "graceful shutdown timed out; closing the connections left");
    }
    hard_stop.cancel();
    result
}

/// Drive a connection to its end. Once `graceful` fires it keeps serving
/// for `linger` (its responses then say `Connection: close`), then it is
/// asked to finish the request in flight and close, and driven until it has.
async fn until_done_or_drained<C: Future>(
    conn: C,
    graceful: &CancellationToken,
    linger: Duration,
    start_graceful_shutdown: impl FnOnce(Pin<&mut C>),
) -> C::Output {
    tokio::pin!(conn);
    tokio::select! {
        output = conn.as_mut() => return output,
        _ = graceful.cancelled() => {}
    }
    tokio::select! {
        output = conn.as_mut() => return output,
        _ = tokio::time::sleep(linger) => {}
    }
    start_graceful_shutdown(conn.as_mut());
    conn.await
}

/// The protocol a client speaks, told by its first bytes.
enum Protocol {
    Http1,
    Http2,
}

/// Wait until the client sent enough to tell HTTP/1.1 from h2c, for at most
/// `timeout`; `None` when it closed or stayed silent. hyper's own header
/// timeout only starts once a protocol is chosen, so without this a silent
/// client would hold its slot for ever.
async fn wait_for_first_bytes(stream: &TcpStream, timeout: Duration) -> Option<Protocol> {
    let mut buf = [0u8; H2_PREFACE.len()];
    let wait = async {
        loop {
            match stream.peek(&mut buf).await {
                Ok(0) | Err(_) => return None,
                Ok(n) if buf[..n] != H2_PREFACE[..n] => return Some(Protocol::Http1),
                Ok(n) if n >= H2_PREFACE.len() => return Some(Protocol::Http2),
                // A partial h2 preface: peek would return at once again, so
                // give the client a moment (rare path, bounded by timeout).
                Ok(_) => tokio::time::sleep(Duration::from_millis(5)).await,
            }
        }
    };
    tokio::time::timeout(timeout, wait).await.ok().flatten()
}
