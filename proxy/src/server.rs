//! The accept loop of one listener: a connection limit (a semaphore; over
//! it the loop stops accepting and clients wait in the kernel backlog), a
//! deadline for the first bytes and for request headers, HTTP/1.1 and h2c
//! on the same port, a write timeout on client sockets, HTTP/1.1
//! connections closed when a drain cuts the response they carry (h2 ones
//! lose the cut stream alone, see `h2_streams`), h2 connections with no
//! stream open for `header_read_timeout` told GOAWAY, and a graceful
//! shutdown bounded by a timeout: HTTP/1.1
//! keep-alive connections linger a moment and answer with `Connection:
//! close`, h2 connections get GOAWAY, in-flight requests finish.
//!
//! Per connection the work is kept small: the spawned future is small (the
//! hyper connection is boxed once, inside the task), shutdown is watched
//! through one [`Signal`] waiter, and the first bytes are read once.

use crate::client_ip::ClientIps;
use crate::counters::GaugeGuard;
use crate::first_bytes::{self, Protocol};
use crate::forward::{self, ConnCtx};
use crate::h2_streams::{StreamExec, Streams};
use crate::hosts::{self, HostRouter};
use crate::last_write::{request_closes, LastBody, LastWrite};
use crate::lazy_stream::LazyStream;
use crate::prefixed::Prefixed;
use crate::signal::{Signal, SignalWait};
use crate::write_timeout::WriteTimeout;
use crate::{Inner, ProxyError};
use futures_util::future::Either;
use http::header::CONNECTION;
use http::{HeaderValue, Request, StatusCode};
use hyper::body::Incoming;
use hyper::server::conn::{http1, http2};
use hyper_util::rt::{TokioIo, TokioTimer};
use pin_project_lite::pin_project;
use std::convert::Infallible;
use std::future::Future;
use std::pin::{pin, Pin};
use std::sync::Arc;
use std::task::{ready, Context, Poll};
use std::time::Duration;
use tokio::io::unix::AsyncFd;
use tokio::io::Interest;
use tokio::net::TcpListener;
use tokio::sync::{OwnedSemaphorePermit, Semaphore, TryAcquireError};
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// How long an h2 connection that was told GOAWAY may stay open with no
/// stream (1 second): h2 closes it once its client answered the GOAWAY's
/// ping, and a client that does not is not waited for.
const GOAWAY_GRACE: Duration = Duration::from_secs(1);

/// What the connections of one listener share.
struct Listener {
    inner: Arc<Inner>,
    h1: http1::Builder,
    /// The connections' tasks, and their h2 streams'.
    tasks: TaskTracker,
    /// Fires when shutdown starts: connections finish their current
    /// request and close.
    graceful: Arc<Signal>,
    /// Fires when the graceful period is over, always after `graceful`.
    hard_stop: Arc<Signal>,
    /// Upgraded connections' tunnels: they outlive their request and end
    /// at the hard stop, so they are waited for after it, not before.
    tunnels: TaskTracker,
    /// A shared edge listener: requests go to the service its host table
    /// picks (`None`: every request is `inner`'s).
    router: Option<Arc<HostRouter>>,
    /// An https listener's TLS acceptor.
    tls: Option<TlsAcceptor>,
}

/// What a listener serves besides its own proxy: a host table, TLS.
#[derive(Default)]
pub(crate) struct Edge {
    pub(crate) router: Option<Arc<HostRouter>>,
    pub(crate) tls: Option<Arc<rustls::ServerConfig>>,
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

/// Register a listener with the runtime, for accepting through
/// [`accept`].
// `AsyncFd::new` is deprecated in favour of an `unsafe` constructor whose
// contract is that the descriptor stays open and the same for the life of
// the `AsyncFd`; a `std::net::TcpListener` moved into it owns its
// descriptor, so that holds without an `unsafe` block of our own.
#[allow(deprecated)]
fn register_listener(listener: std::net::TcpListener) -> std::io::Result<AsyncFd<std::net::TcpListener>> {
    AsyncFd::with_interest(listener, Interest::READABLE)
}

/// Accept one connection, non-blocking from the start (no `fcntl`), with
/// its peer's address.
fn accept(listener: &std::net::TcpListener) -> std::io::Result<(std::net::TcpStream, std::net::SocketAddr)> {
    use rustix::net::{acceptfrom_with, SocketFlags};
    let (fd, peer) = acceptfrom_with(listener, SocketFlags::NONBLOCK | SocketFlags::CLOEXEC)?;
    let peer = peer
        .and_then(|p| std::net::SocketAddr::try_from(p).ok())
        .unwrap_or_else(|| std::net::SocketAddr::from(([0, 0, 0, 0], 0)));
    Ok((std::net::TcpStream::from(fd), peer))
}

/// Serve `listener` until `shutdown` fires.
pub(crate) async fn serve(
    inner: Arc<Inner>,
    listener: TcpListener,
    shutdown: CancellationToken,
    edge: Edge,
) -> Result<(), ProxyError> {
    let addr = listener.local_addr().map(|a| a.to_string()).unwrap_or_else(|_| "?".into());
    // Accepted here rather than through tokio's listener, which registers
    // every accepted socket with the poller at once (see `lazy_stream`).
    let listener = listener
        .into_std()
        .and_then(|l| crate::listen_options::set(&l).map(|()| l))
        .and_then(register_listener)
        .map_err(|source| ProxyError::Listener { addr: addr.clone(), source })?;
    inner.start_reaper();
    let config = &inner.config;
    let limit = Arc::new(Semaphore::new(config.max_connections.max(1)));
    // The protocol is known from the first bytes, so each connection is
    // served by its own protocol's builder: no second detection read and no
    // rewind layer on every read and write of the connection.
    let mut h1 = http1::Builder::new();
    // Without half_close, hyper reads on while a request is pending, and a
    // client's end of stream ends the connection: the request's future is
    // dropped, and with it the queued wait or the upstream exchange and
    // the in-flight count. With it, a client that shuts down its write
    // side after its request still gets the answer, but one that went
    // away is not noticed until a write to it fails.
    h1.timer(TokioTimer::new())
        .header_read_timeout(config.header_read_timeout)
        .keep_alive(true)
        .half_close(config.half_close);
    let connections = TaskTracker::new();
    let shared = Arc::new(Listener {
        inner: inner.clone(),
        h1,
        tasks: connections.clone(),
        graceful: Arc::default(),
        hard_stop: Arc::default(),
        tunnels: TaskTracker::new(),
        router: edge.router,
        tls: edge.tls.map(TlsAcceptor::from),
    });
    let mut client_ips = ClientIps::default();
    // The loop looks at the stop between accepts; a token takes two locks
    // each time, so a helper task turns it into the connections' graceful
    // signal once: the loop stops accepting, and the connections start
    // closing, on the same event.
    let relay = tokio::spawn({
        let shared = shared.clone();
        async move {
            shutdown.cancelled().await;
            shared.graceful.fire();
        }
    });
    let mut stop = pin!(shared.graceful.wait());

    let result = loop {
        let permit = match limit.clone().try_acquire_owned() {
            Ok(p) => p,
            Err(TryAcquireError::Closed) => break Ok(()),
            Err(TryAcquireError::NoPermits) => tokio::select! {
                p = limit.clone().acquire_owned() => match p {
                    Ok(p) => p,
                    Err(_) => break Ok(()),
                },
                _ = stop.as_mut() => break Ok(()),
            },
        };
        // The stop first: looking at a `Signal` is one atomic load.
        let (stream, peer) = tokio::select! {
            biased;
            _ = stop.as_mut() => break Ok(()),
            r = listener.async_io(Interest::READABLE, accept) => match r {
                Ok(x) => x,
                Err(e) if is_transient(&e) => {
                    tracing::warn!(listener = %addr, error = %e, "accept failed; retrying");
                    tokio::select! {
                        _ = tokio::time::sleep(Duration::from_millis(50)) => continue,
                        _ = stop.as_mut() => break Ok(()),
                    }
                }
                Err(source) => break Err(ProxyError::Listener { addr: addr.clone(), source }),
            },
        };
        let stream = LazyStream::new(stream);
        let client_ip = client_ips.get(peer.ip());
        // Boxed: the task is then a pointer, cheap to move through spawn and
        // to overwrite with its output, instead of the whole state.
        if shared.tls.is_some() {
            connections.spawn(Box::pin(tls_connection(shared.clone(), stream, client_ip, permit)));
        } else {
            connections.spawn(Box::pin(connection(shared.clone(), stream, client_ip, permit)));
        }
    };

    relay.abort();
    drop(listener);
    // Also when the listener failed rather than being shut down.
    shared.graceful.fire();
    connections.close();
    let timeout = inner.config.shutdown_timeout;
    if tokio::time::timeout(timeout, connections.wait()).await.is_err() {
        tracing::warn!(listener = %addr, ?timeout, "graceful shutdown timed out; closing the connections left");
    }
    shared.hard_stop.fire();
    shared.tunnels.close();
    shared.tunnels.wait().await;
    result
}

/// Serve one client connection to its end.
async fn connection(
    shared: Arc<Listener>,
    mut stream: LazyStream,
    client_ip: HeaderValue,
    permit: OwnedSemaphorePermit,
) {
    let _permit = permit;
    let l = &*shared;
    let _gauge = GaugeGuard::new(&l.inner.connections);
    let config = &l.inner.config;
    // The one shutdown waiter of this connection, through all its phases.
    let mut graceful = pin!(l.graceful.wait());

    // hyper's own header timeout only starts once a protocol is chosen, so
    // without this deadline a silent client would hold its slot for ever.
    let first = tokio::select! {
        biased;
        r = tokio::time::timeout(config.header_read_timeout, first_bytes::read(&mut stream)) => r.ok().flatten(),
        _ = hard_stopped(graceful.as_mut(), &l.hard_stop) => None,
    };
    let Some((protocol, prefix)) = first else { return };
    let last = (protocol == Protocol::Http1).then(|| {
        let last = Arc::new(LastWrite::default());
        stream.hold_last_write(last.clone());
        last
    });
    let io = Prefixed::new(prefix, TokioIo::new(WriteTimeout::new(stream, config.write_timeout)));
    serve_io(&shared, io, protocol, client_ip, graceful, false, last).await;
}

/// Serve one client connection of an https listener: the handshake
/// (bounded by `header_read_timeout`), then the protocol ALPN chose.
async fn tls_connection(
    shared: Arc<Listener>,
    stream: LazyStream,
    client_ip: HeaderValue,
    permit: OwnedSemaphorePermit,
) {
    let _permit = permit;
    let l = &*shared;
    let _gauge = GaugeGuard::new(&l.inner.connections);
    let config = &l.inner.config;
    let mut graceful = pin!(l.graceful.wait());
    let Some(acceptor) = l.tls.clone() else { return };
    let accepted = tokio::select! {
        biased;
        r = tokio::time::timeout(config.header_read_timeout, acceptor.accept(stream)) => match r {
            Ok(Ok(s)) => Some(s),
            Ok(Err(e)) => {
                tracing::debug!(error = %e, "TLS handshake failed");
                None
            }
            Err(_) => None,
        },
        _ = hard_stopped(graceful.as_mut(), &l.hard_stop) => None,
    };
    let Some(tls) = accepted else { return };
    if tls.get_ref().1.alpn_protocol() == Some(crate::tls::ACME_TLS_ALPN) {
        // TLS-ALPN-01 validation: the handshake was the answer.
        return;
    }
    let protocol =
        if tls.get_ref().1.alpn_protocol() == Some(b"h2") { Protocol::Http2 } else { Protocol::Http1 };
    let io = TokioIo::new(WriteTimeout::new(tls, config.write_timeout));
    serve_io(&shared, io, protocol, client_ip, graceful, true, None).await;
}

/// Serve a connection whose protocol is known, to its end. `last`, on a
/// plain HTTP/1.1 connection: armed for the write of its last response
/// (`last_write`).
async fn serve_io<I>(
    shared: &Arc<Listener>,
    io: I,
    protocol: Protocol,
    client_ip: HeaderValue,
    graceful: Pin<&mut SignalWait>,
    tls: bool,
    last: Option<Arc<LastWrite>>,
) where
    I: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
{
    let l = &**shared;
    let config = &l.inner.config;
    let ctx = Arc::new(ConnCtx::new(
        client_ip,
        l.hard_stop.clone(),
        l.tunnels.clone(),
        protocol == Protocol::Http1,
        tls,
    ));
    let conn_ctx = ctx.clone();
    let result = match protocol {
        Protocol::Http1 => {
            let linger = config.close_linger;
            let service = {
                let shared = shared.clone();
                hyper::service::service_fn(move |req: Request<Incoming>| {
                    // The answer ends the connection: the request says so,
                    // or a shutdown has started (the answer will say so).
                    let closes = request_closes(req.version(), req.headers()) || shared.graceful.is_fired();
                    CloseWhenDraining {
                        response: route(&shared, tls, &ctx, req),
                        shared: shared.clone(),
                        last: if closes { last.clone() } else { None },
                    }
                })
            };
            let conn = Box::pin(l.h1.serve_connection(io, service).with_upgrades());
            drive(conn, graceful, &l.hard_stop, &conn_ctx, linger, |c| c.as_mut().graceful_shutdown()).await
        }
        Protocol::Http2 => {
            // A builder per connection: its executor counts this
            // connection's streams.
            let streams = Arc::new(Streams::default());
            let mut h2 =
                http2::Builder::new(StreamExec::new(streams.clone(), l.tasks.clone(), config.write_timeout));
            h2.timer(TokioTimer::new());
            let shared = shared.clone();
            let service = hyper::service::service_fn(move |req| route(&shared, tls, &ctx, req));
            let conn = Box::pin(h2.serve_connection(io, service));
            let idle = config.header_read_timeout;
            drive_h2(conn, graceful, &l.hard_stop, &streams, idle, |c| c.as_mut().graceful_shutdown()).await
        }
    };
    if let Some(Err(e)) = result {
        tracing::debug!(error = %e, "client connection ended with an error");
    }
}

/// The request's future: the listener's own proxy, or the service the
/// host table picks.
fn route(
    shared: &Arc<Listener>,
    tls: bool,
    ctx: &Arc<ConnCtx>,
    req: http::Request<hyper::body::Incoming>,
) -> Either<
    impl Future<Output = Result<http::Response<crate::body::ProxyBody>, Infallible>>,
    impl Future<Output = Result<http::Response<crate::body::ProxyBody>, Infallible>>,
> {
    match &shared.router {
        None => Either::Left(forward::handle(shared.inner.clone(), ctx.clone(), req)),
        Some(router) => Either::Right(hosts::dispatch(router.clone(), tls, ctx.clone(), req)),
    }
}

pin_project! {
    /// An HTTP/1.1 response future that says `Connection: close` once
    /// shutdown has started (except on a protocol switch), and whose body
    /// arms the connection's [`LastWrite`] when the response ends the
    /// connection. A struct rather than an `async` block, which would hold
    /// the wrapped future twice over (as its capture and as its awaitee):
    /// this one is moved on every request.
    struct CloseWhenDraining<F> {
        #[pin]
        response: F,
        shared: Arc<Listener>,
        // The connection's, when this answer ends it.
        last: Option<Arc<LastWrite>>,
    }
}

impl<F, B> Future for CloseWhenDraining<F>
where
    F: Future<Output = Result<http::Response<B>, Infallible>>,
    B: http_body::Body,
{
    type Output = Result<http::Response<LastBody<B>>, Infallible>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let Ok(mut response) = ready!(this.response.poll(cx));
        let mut last = this.last.take();
        if response.status() == StatusCode::SWITCHING_PROTOCOLS {
            // The connection goes on as a tunnel.
            last = None;
        } else if this.shared.graceful.is_fired() {
            response.headers_mut().insert(CONNECTION, HeaderValue::from_static("close"));
        }
        Poll::Ready(Ok(response.map(|body| LastBody::new(body, last))))
    }
}

/// Completes when the hard stop fires. Its waiter is only registered once
/// the graceful shutdown has started, which always comes first.
async fn hard_stopped(graceful: Pin<&mut SignalWait>, hard_stop: &Arc<Signal>) {
    graceful.await;
    hard_stop.wait().await;
}

/// Drive an HTTP/1.1 connection to its end; `None` when the hard stop or a drain's
/// cut ended it. Once `graceful` fires it keeps serving for `linger` (its
/// responses then say `Connection: close`), then it is asked to finish the
/// request in flight and close, and driven until it has.
async fn drive<C: Future + Unpin>(
    mut conn: C,
    mut graceful: Pin<&mut SignalWait>,
    hard_stop: &Arc<Signal>,
    ctx: &ConnCtx,
    linger: Duration,
    start_graceful_shutdown: impl FnOnce(&mut C),
) -> Option<C::Output> {
    tokio::select! {
        biased;
        output = &mut conn => return Some(output),
        _ = cut_off(ctx) => return None,
        _ = graceful.as_mut() => {}
    }
    if !linger.is_zero() {
        tokio::select! {
            biased;
            output = &mut conn => return Some(output),
            _ = cut_off(ctx) => return None,
            _ = tokio::time::sleep(linger) => {}
            _ = hard_stop.wait() => return None,
        }
    }
    start_graceful_shutdown(&mut conn);
    tokio::select! {
        biased;
        output = &mut conn => Some(output),
        _ = cut_off(ctx) => None,
        _ = hard_stop.wait() => None,
    }
}

/// Drive an h2 connection to its end; `None` when it was closed from
/// here. It is told GOAWAY (and so finishes its streams and closes) once
/// shutdown starts, or once no stream has been open on it for `idle`:
/// pings and window updates do not keep it open. Told, it is closed when
/// no stream has been open for [`GOAWAY_GRACE`] (its client never
/// answered the GOAWAY), or at the hard stop. GOAWAY at once on shutdown:
/// h2 clients retry what it did not take, so there is nothing to linger
/// for.
async fn drive_h2<C: Future + Unpin>(
    mut conn: C,
    mut graceful: Pin<&mut SignalWait>,
    hard_stop: &Arc<Signal>,
    streams: &Streams,
    idle: Duration,
    start_graceful_shutdown: impl FnOnce(&mut C),
) -> Option<C::Output> {
    tokio::select! {
        biased;
        output = &mut conn => return Some(output),
        _ = graceful.as_mut() => {}
        _ = streams.idle_for(idle) => tracing::debug!(?idle, "h2 connection idle; GOAWAY"),
    }
    start_graceful_shutdown(&mut conn);
    tokio::select! {
        biased;
        output = &mut conn => Some(output),
        _ = hard_stopped(graceful, hard_stop) => None,
        _ = streams.idle_for(GOAWAY_GRACE) => None,
    }
}

/// Ready once a drain cut the response this connection sends. It needs no
/// waker of its own: the response body registered this connection's task
/// with the cut, which sets the flag before it wakes the task (see
/// [`ConnCtx`]); one atomic load per poll of the connection.
fn cut_off(ctx: &ConnCtx) -> impl Future<Output = ()> + '_ {
    std::future::poll_fn(move |_| if ctx.is_cut() { Poll::Ready(()) } else { Poll::Pending })
}
