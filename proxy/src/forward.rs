//! Forwarding one request: choose a backend from the current route table
//! (waiting for one up to the queue timeout, if the queue has room), count
//! it in flight there unless a newer table came meanwhile, get a pooled or fresh
//! upstream connection, send, and wrap the answer so the request counts as
//! in flight until its body has been sent. A connect failure never reaches
//! the client: the request goes to the next backend. Nor does a pooled
//! connection the server closed while it was idle, when the request can
//! safely be sent again (nothing written, or an idempotent request without
//! a body that got no answer): it goes on a fresh connection.

use crate::backend::{BackendState, InflightGuard};
use crate::body::ProxyBody;
use crate::counters::GaugeGuard;
use crate::gate::{self, Admit};
use crate::headers;
use crate::select::{Choice, Pick, Tried};
use crate::signal::{OnFire, Signal, SignalWait};
use crate::upstream::{Decoder, ExchangeError, RequestHead};
use crate::{Color, Gate, Inner};
use http::header::{HeaderValue, CONTENT_TYPE, SET_COOKIE};
use http::{Request, Response, StatusCode};
use hyper::body::Incoming;
use std::convert::Infallible;
use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::task::Poll;
use std::time::Instant;

/// What the proxy knows of the client connection a request came on.
pub(crate) struct ConnCtx {
    /// The client's IP, formatted once for `X-Forwarded-For`.
    pub(crate) client_ip: HeaderValue,
    /// Fires when the listener stops for good (ends tunnels).
    pub(crate) shutdown: Arc<Signal>,
    /// The listener's tunnels (waited for after its hard stop).
    pub(crate) tunnels: tokio_util::task::TaskTracker,
    /// HTTP/1.1: a drain's cut of a response's backend ends the whole
    /// connection (it carries one response at a time). On h2 it ends the
    /// stream alone (`h2_streams`).
    pub(crate) h1: bool,
    /// The connection came through TLS: `X-Forwarded-Proto: https`.
    pub(crate) https: bool,
    /// Set when a drain cut the backend of the response this connection
    /// is sending; the connection's task, woken by the cut, then closes
    /// the connection, even while hyper waits for the client to read and
    /// does not poll the body.
    pub(crate) cut: AtomicBool,
}

impl ConnCtx {
    /// Context for a new connection.
    pub(crate) fn new(
        client_ip: HeaderValue,
        shutdown: Arc<Signal>,
        tunnels: tokio_util::task::TaskTracker,
        h1: bool,
        https: bool,
    ) -> ConnCtx {
        ConnCtx { client_ip, shutdown, tunnels, h1, https, cut: AtomicBool::new(false) }
    }

    /// Whether a drain cut this connection's response.
    pub(crate) fn is_cut(&self) -> bool {
        self.cut.load(Ordering::Acquire)
    }
}

/// A request extension set by the host router: the largest body this
/// request may stream upstream (413 beyond).
#[derive(Debug, Clone, Copy)]
pub(crate) struct BodyLimit(pub(crate) u64);

impl OnFire for ConnCtx {
    fn fired(&self) {
        self.cut.store(true, Ordering::Release);
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
    if ctx.https {
        req.headers_mut()
            .insert(http::HeaderName::from_static("x-forwarded-proto"), HeaderValue::from_static("https"));
    }
    // Encoded once: a request that moves to the next backend sends the
    // same bytes.
    let mut head = RequestHead::encode(&req);
    if let Some(limit) = req.extensions().get::<BodyLimit>() {
        head.limit_body(limit.0);
    }

    // The gate: one compare while open.
    let mut held = None;
    if !matches!(inner.table.load().table.gate, Gate::Open) {
        match Box::pin(gate::admit(&inner, started)).await {
            Admit::Go(place) => held = place,
            Admit::Answer(resp) => return Ok(*resp),
        }
    }

    let mut client_upgrade = client_upgrade;
    let mut tried = Tried::default();
    let mut deadline = None;
    let mut _queued: Option<GaugeGuard<'_>> = None;
    loop {
        // Read before the table, checked again once the request counts in
        // flight (see `claim`).
        let generation = inner.generation();
        let choice = inner.table.load().choose(req.headers(), &tried);
        match choice {
            Choice::Backend(pick) => {
                let backend = pick.backend.clone();
                let Some(guard) = claim(&inner, pick.backend.clone(), generation) else {
                    continue;
                };
                let send = attempt(&ctx, pick, guard, &head, req, started, &mut client_upgrade);
                let attempted = match held.take() {
                    None => send.await,
                    Some(place) => Box::pin(gate::in_order(place, send)).await,
                };
                match attempted {
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
                if _queued.is_none() {
                    match GaugeGuard::below(&inner.queued, inner.config.max_queued) {
                        Some(g) => _queued = Some(g),
                        None => {
                            return Ok(answer(
                                &inner,
                                color,
                                started,
                                StatusCode::SERVICE_UNAVAILABLE,
                                "no backend available, and too many requests are waiting for one\n",
                            ))
                        }
                    }
                }
                // Boxed: waiting is the rare path, and its timer would
                // otherwise enlarge every request's future.
                if !Box::pin(wait_for_routes(&inner, req.headers(), &tried, deadline)).await {
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

/// Wait until a route table that has a backend for these headers is
/// swapped in (`true`), or until `deadline` (`false`).
async fn wait_for_routes(
    inner: &Inner,
    headers: &http::HeaderMap,
    tried: &Tried,
    deadline: tokio::time::Instant,
) -> bool {
    loop {
        // Register for the wake-up before looking again, so a table
        // swapped in between is not missed.
        let notified = inner.routes_changed.notified();
        tokio::pin!(notified);
        notified.as_mut().enable();
        if !matches!(inner.table.load().choose(headers, tried), Choice::Wait(_)) {
            return true;
        }
        tokio::select! {
            _ = notified => {}
            _ = tokio::time::sleep_until(deadline) => return false,
        }
    }
}

/// Count a request in flight on `backend`, chosen from the table of
/// `generation`. `None` when a table was swapped in since: a drain of
/// `backend` may have read its in-flight count as zero before this
/// increment, so the request must choose again from the new table instead.
/// Both sides are `SeqCst` (the swap bumps the generation before a drain
/// reads the count; here the count goes up before the generation is read
/// again), so one of them sees the other.
fn claim(inner: &Inner, backend: Arc<BackendState>, generation: u64) -> Option<InflightGuard> {
    let guard = InflightGuard::new(backend);
    if inner.generation() == generation {
        return Some(guard);
    }
    guard.abandon();
    None
}

/// Forward to the picked backend; `guard` counts the request on it.
async fn attempt(
    ctx: &Arc<ConnCtx>,
    pick: Pick,
    guard: InflightGuard,
    head: &RequestHead,
    mut req: Request<Incoming>,
    started: Instant,
    client_upgrade: &mut Option<hyper::upgrade::OnUpgrade>,
) -> Attempt {
    let Pick { backend, set_cookie } = pick;
    let mut cut = backend.cut_wait();
    let mut counted = false;
    // Set once a pooled connection turned out closed: the retry goes on a
    // fresh one rather than on the next idle one, which may be as stale.
    let mut stale = false;
    let (answer, reusable, pooled) = loop {
        let pooled = if stale { None } else { backend.pool.checkout().await };
        let mut pooled = match pooled {
            Some(p) => p,
            // Boxed: with pooling, connecting is the rare path.
            None => match until_cut(&mut cut, Box::pin(backend.pool.connect())).await {
                None => return Attempt::Done(cut_answer(&backend, guard, started)),
                Some(Ok(c)) => {
                    backend.mark_up();
                    c
                }
                Some(Err(e)) => {
                    tracing::debug!(backend = %backend.id, error = %e, "connect failed");
                    return pass_on(&backend, guard, req);
                }
            },
        };
        if !counted {
            counted = true;
            backend.counters.request();
            backend.color_counters.request();
        }
        let reused = pooled.conn.reused;
        match until_cut(&mut cut, pooled.conn.exchange(head, req.body_mut(), backend.response_timeout)).await
        {
            None => return Attempt::Done(cut_answer(&backend, guard, started)),
            Some(Ok((answer, reusable))) => break (answer, reusable, pooled),
            Some(Err(e)) if e.can_resend(head) => {
                if reused {
                    // A pooled connection the server closed while it was
                    // idle: again on a fresh one.
                    stale = true;
                    continue;
                }
                // A fresh connection that took nothing or closed without a
                // word (a dying replica behind Docker's port proxy does
                // that): the next backend.
                tracing::debug!(backend = %backend.id, error = %e, "fresh connection closed without an answer");
                return pass_on(&backend, guard, req);
            }
            Some(Err(e @ ExchangeError::TimedOut(_))) => {
                tracing::debug!(backend = %backend.id, error = %e, "upstream request timed out");
                if head.is_retryable() {
                    // Nothing came back: the backend may be gone (its host
                    // fell off the network). Another one takes it.
                    return pass_on(&backend, guard, req);
                }
                record(&backend, StatusCode::GATEWAY_TIMEOUT, started);
                return Attempt::Done(text(
                    StatusCode::GATEWAY_TIMEOUT,
                    "the backend did not answer in time\n",
                ));
            }
            Some(Err(ExchangeError::TooLarge)) => {
                record(&backend, StatusCode::PAYLOAD_TOO_LARGE, started);
                return Attempt::Done(text(StatusCode::PAYLOAD_TOO_LARGE, "request body too large\n"));
            }
            Some(Err(e)) => {
                tracing::debug!(backend = %backend.id, error = %e, "upstream request failed");
                record(&backend, StatusCode::BAD_GATEWAY, started);
                return Attempt::Done(text(StatusCode::BAD_GATEWAY, "the backend failed to answer\n"));
            }
        }
    };

    let status = answer.status;
    record(&backend, status, started);
    let upgraded = status == StatusCode::SWITCHING_PROTOCOLS;
    let mut resp = Response::new(());
    *resp.status_mut() = status;
    *resp.headers_mut() = answer.headers;
    headers::prepare_response(resp.headers_mut(), upgraded);
    if let Some(c) = set_cookie {
        resp.headers_mut().append(SET_COOKIE, c);
    }
    if upgraded {
        if let Some(client) = client_upgrade.take() {
            // The upstream connection now belongs to the tunnel.
            crate::upgrade::spawn_tunnel(&ctx.tunnels, client, pooled.conn, guard, cut, ctx.shutdown.clone());
            return Attempt::Done(resp.map(|()| ProxyBody::empty()));
        }
    }
    let stream = if ctx.h1 { None } else { crate::h2_streams::current() };
    let tell = match &stream {
        Some(s) => Some(s.clone() as Arc<dyn OnFire>),
        None => ctx.h1.then(|| ctx.clone() as Arc<dyn OnFire>),
    };
    let decoder = Decoder::new(answer.framing);
    if let (false, Some(tell), false) = (ctx.h1, &tell, decoder.is_done()) {
        // hyper may not poll an h2 body at all while the client's window
        // is full (its first frame included), so the stream registers for
        // the cut now. (HTTP/1.1 sends the head with the first frame; its
        // bodies register when they poll, and short ones never need to.)
        let fired = std::future::poll_fn(|cx| Poll::Ready(cut.poll_fired_telling(cx, Some(tell)))).await;
        if fired.is_ready() {
            return Attempt::Done(cut_answer(&backend, guard, started));
        }
    }
    let body = ProxyBody::upstream(pooled, decoder, reusable, guard, cut, tell, stream);
    Attempt::Done(resp.map(|()| body))
}

/// Nothing of `req` reached `backend`, which looks down: try it last for a
/// while, count no completion on it, and let the request go to the next
/// backend.
fn pass_on(backend: &BackendState, guard: InflightGuard, req: Request<Incoming>) -> Attempt {
    backend.mark_down();
    guard.abandon();
    Attempt::ConnectFailed(req)
}

/// Run `fut` until it ends or the backend is cut (`None`).
async fn until_cut<F: Future>(cut: &mut SignalWait, fut: F) -> Option<F::Output> {
    let mut fut = std::pin::pin!(fut);
    std::future::poll_fn(|cx| {
        if let Poll::Ready(output) = fut.as_mut().poll(cx) {
            return Poll::Ready(Some(output));
        }
        cut.poll_fired(cx).map(|()| None)
    })
    .await
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::select::Tried;
    use crate::{Backend, Proxy, ProxyConfig, RouteTable, Weights};
    use std::time::Duration;

    fn two_colors(active: Color) -> RouteTable {
        let mut blue = Backend::new("blue-1", "127.0.0.1:1".parse().unwrap(), Color::Blue);
        let mut green = Backend::new("green-1", "127.0.0.1:2".parse().unwrap(), Color::Green);
        blue.in_rotation = active == Color::Blue;
        green.in_rotation = active == Color::Green;
        RouteTable::new(vec![blue, green], Weights::all_to(active))
    }

    fn chosen(choice: Choice) -> Arc<BackendState> {
        match choice {
            Choice::Backend(p) => p.backend,
            _ => panic!("expected a backend"),
        }
    }

    /// The interleaving the race needs, step by step: a request loads the
    /// old table and picks blue; the promote swaps in green and the drain
    /// of blue reads zero in flight (and would let blue be stopped); only
    /// then does the request count itself. It must not go to blue.
    #[tokio::test]
    async fn a_request_that_chose_from_the_old_table_after_a_drain_read_zero_chooses_again() {
        let proxy = Proxy::new(ProxyConfig::default());
        proxy.set_routes(two_colors(Color::Blue));
        let inner = &proxy.inner;
        let headers = http::HeaderMap::new();

        let generation = inner.generation();
        let old = chosen(inner.table.load().choose(&headers, &Tried::default()));
        assert_eq!(old.id.to_string(), "blue-1");

        proxy.set_routes(two_colors(Color::Green));
        let report = proxy.drain(&["blue-1".into()], Duration::from_secs(5)).await;
        assert_eq!((report.finished, report.cut, report.timed_out), (0, 0, false), "blue looked idle");

        assert!(claim(inner, old.clone(), generation).is_none(), "the stale choice is refused");
        assert_eq!(old.inflight(), 0, "and not left counted");
        assert_eq!(old.completed(), 0, "nor counted as a completion");
        let generation = inner.generation();
        let again = chosen(inner.table.load().choose(&headers, &Tried::default()));
        assert_eq!(again.id.to_string(), "green-1", "the second choice uses the new table");
        let guard = claim(inner, again.clone(), generation).expect("the fresh choice stands");
        assert_eq!(again.inflight(), 1);
        drop(guard);
    }

    /// The other order: counted before the swap, the request holds the
    /// drain until it ends.
    #[tokio::test]
    async fn a_request_counted_before_the_swap_is_waited_for_by_the_drain() {
        let proxy = Proxy::new(ProxyConfig::default());
        proxy.set_routes(two_colors(Color::Blue));
        let inner = &proxy.inner;
        let generation = inner.generation();
        let old = chosen(inner.table.load().choose(&http::HeaderMap::new(), &Tried::default()));
        let guard = claim(inner, old, generation).expect("no swap yet");
        proxy.set_routes(two_colors(Color::Green));
        let ids = ["blue-1".into()];
        let drain = proxy.drain(&ids, Duration::from_secs(5));
        tokio::pin!(drain);
        assert!(futures_util::poll!(drain.as_mut()).is_pending(), "the drain waits for it");
        drop(guard);
        let report = drain.await;
        assert_eq!((report.finished, report.cut), (1, 0));
    }
}
