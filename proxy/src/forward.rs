//! Forwarding one request: choose a backend from the current route table
//! (waiting for one up to the queue timeout), get a pooled or fresh
//! upstream connection, send, and wrap the answer so the request counts as
//! in flight until its body has been sent. A connect failure, or a pooled
//! connection found closed before anything was written, never reaches the
//! client: the request goes to the next connection or backend.

use crate::backend::{BackendState, InflightGuard};
use crate::body::{Completion, ProxyBody};
use crate::headers;
use crate::select::{Choice, Pick, Tried};
use crate::{Color, Inner};
use http::header::{HeaderValue, CONTENT_TYPE, SET_COOKIE};
use http::{Request, Response, StatusCode};
use hyper::body::Incoming;
use std::convert::Infallible;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Instant;
use tokio_util::sync::CancellationToken;

/// What the proxy knows of the client connection a request came on.
pub(crate) struct ConnCtx {
    /// The client's IP, formatted once for `X-Forwarded-For`.
    pub(crate) client_ip: HeaderValue,
    /// Fires when the listener stops for good (ends tunnels).
    pub(crate) shutdown: CancellationToken,
}

/// Counts one request waiting for a backend.
struct Queued<'a>(&'a AtomicU64);

impl<'a> Queued<'a> {
    fn new(gauge: &'a AtomicU64) -> Queued<'a> {
        gauge.fetch_add(1, Ordering::Relaxed);
        Queued(gauge)
    }
}

impl Drop for Queued<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

enum Attempt {
    Done(Response<ProxyBody>),
    /// Nothing was sent; try another backend.
    ConnectFailed(Request<Incoming>),
}

/// Serve one client request.
pub(crate) async fn handle(
    inner: Arc<Inner>,
    ctx: Arc<ConnCtx>,
    mut req: Request<Incoming>,
) -> Result<Response<ProxyBody>, Infallible> {
    let started = Instant::now();
    let upgrading = headers::is_upgrade(&req);
    let client_upgrade = upgrading.then(|| hyper::upgrade::on(&mut req));
    headers::prepare_request(&mut req, &ctx.client_ip, upgrading);

    let mut client_upgrade = client_upgrade;
    let mut tried = Tried::default();
    let mut deadline = None;
    let mut _queued: Option<Queued<'_>> = None;
    loop {
        let choice = inner.table.load().choose(req.headers(), &tried);
        match choice {
            Choice::Backend(pick) => {
                let backend = pick.backend.clone();
                match attempt(&ctx, pick, req, started, &mut client_upgrade).await {
                    Attempt::Done(resp) => return Ok(resp),
                    Attempt::ConnectFailed(r) => {
                        req = r;
                        tried.push(backend);
                    }
                }
            }
            Choice::Exhausted(color) => {
                return Ok(answer(
                    &inner,
                    color,
                    started,
                    StatusCode::BAD_GATEWAY,
                    "no backend could be reached\n",
                ));
            }
            Choice::Wait(color) => {
                let deadline = *deadline.get_or_insert_with(|| {
                    tokio::time::Instant::from_std(started) + inner.config.queue_timeout
                });
                // Register for the wake-up before looking again, so a table
                // swapped in between is not missed.
                let notified = inner.routes_changed.notified();
                tokio::pin!(notified);
                notified.as_mut().enable();
                if !matches!(inner.table.load().choose(req.headers(), &tried), Choice::Wait(_)) {
                    continue;
                }
                if _queued.is_none() {
                    _queued = Some(Queued::new(&inner.queued));
                }
                tokio::select! {
                    _ = notified => {}
                    _ = tokio::time::sleep_until(deadline) => {
                        return Ok(answer(
                            &inner,
                            color,
                            started,
                            StatusCode::SERVICE_UNAVAILABLE,
                            "no backend available\n",
                        ));
                    }
                }
            }
        }
    }
}

/// Forward to the picked backend.
async fn attempt(
    ctx: &ConnCtx,
    pick: Pick,
    mut req: Request<Incoming>,
    started: Instant,
    client_upgrade: &mut Option<hyper::upgrade::OnUpgrade>,
) -> Attempt {
    let Pick { backend, set_cookie } = pick;
    let guard = InflightGuard::new(backend.clone());
    let cut = backend.cut_token();
    let mut counted = false;
    let (mut resp, conn) = loop {
        let (mut conn, fresh) = match backend.pool.checkout() {
            Some(c) => (c, false),
            None => {
                let connected = tokio::select! {
                    c = backend.pool.connect(cut.clone()) => c,
                    _ = cut.cancelled() => return Attempt::Done(cut_answer(&backend, guard, started)),
                };
                match connected {
                    Ok(c) => {
                        backend.mark_up();
                        (c, true)
                    }
                    Err(e) => {
                        tracing::debug!(backend = %backend.id, error = %e, "connect failed");
                        backend.mark_down();
                        guard.abandon();
                        return Attempt::ConnectFailed(req);
                    }
                }
            }
        };
        if !counted {
            counted = true;
            backend.counters.request();
            backend.color_counters.request();
        }
        let sent = tokio::select! {
            biased;
            r = conn.sender.try_send_request(req) => r,
            _ = cut.cancelled() => return Attempt::Done(cut_answer(&backend, guard, started)),
        };
        match sent {
            Ok(resp) => break (resp, conn),
            Err(mut e) => match e.take_message() {
                // A pooled connection closed under us; nothing was sent.
                Some(r) if !fresh => req = r,
                Some(r) => {
                    tracing::debug!(backend = %backend.id, error = %e.into_error(), "fresh connection refused the request");
                    backend.mark_down();
                    guard.abandon();
                    return Attempt::ConnectFailed(r);
                }
                None => {
                    tracing::debug!(backend = %backend.id, error = %e.into_error(), "upstream request failed");
                    record(&backend, StatusCode::BAD_GATEWAY, started);
                    return Attempt::Done(text(StatusCode::BAD_GATEWAY, "the backend failed to answer\n"));
                }
            },
        }
    };

    let status = resp.status();
    record(&backend, status, started);
    let upgraded = status == StatusCode::SWITCHING_PROTOCOLS;
    headers::prepare_response(resp.headers_mut(), upgraded);
    if let Some(c) = set_cookie {
        resp.headers_mut().append(SET_COOKIE, c);
    }
    if upgraded {
        if let Some(client) = client_upgrade.take() {
            let upstream = hyper::upgrade::on(&mut resp);
            // The upstream connection now belongs to the tunnel.
            drop(conn);
            crate::upgrade::spawn_tunnel(client, upstream, guard, cut, ctx.shutdown.clone());
            let (parts, _) = resp.into_parts();
            return Attempt::Done(Response::from_parts(parts, ProxyBody::empty()));
        }
    }
    let (parts, body) = resp.into_parts();
    let body = ProxyBody::upstream(
        body,
        cut.cancelled_owned(),
        Completion { guard, conn: (!upgraded).then_some(conn) },
    );
    Attempt::Done(Response::from_parts(parts, body))
}

/// Count a response of `backend` (and its color).
fn record(backend: &BackendState, status: StatusCode, started: Instant) {
    let latency = started.elapsed();
    backend.counters.response(status.as_u16(), latency);
    backend.color_counters.response(status.as_u16(), latency);
}

/// The backend was cut by a drain before it answered.
fn cut_answer(backend: &BackendState, guard: InflightGuard, started: Instant) -> Response<ProxyBody> {
    record(backend, StatusCode::BAD_GATEWAY, started);
    drop(guard);
    text(StatusCode::BAD_GATEWAY, "the backend was drained\n")
}

/// An answer the proxy makes itself, counted as a request of `color`.
fn answer(
    inner: &Inner,
    color: Color,
    started: Instant,
    status: StatusCode,
    body: &'static str,
) -> Response<ProxyBody> {
    let c = inner.color(color);
    c.request();
    c.response(status.as_u16(), started.elapsed());
    text(status, body)
}

fn text(status: StatusCode, body: &'static str) -> Response<ProxyBody> {
    let mut resp = Response::new(ProxyBody::text(body));
    *resp.status_mut() = status;
    resp.headers_mut().insert(CONTENT_TYPE, HeaderValue::from_static("text/plain; charset=utf-8"));
    resp
}
