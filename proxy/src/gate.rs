//! The gate in front of the backends ([`Gate`]): open (the common case,
//! one enum compare per request), paused (requests wait in line and go on
//! in the order they came once it opens; past `max` a 503), or in
//! maintenance (a 503 with the operator's message and `Retry-After`).
//!
//! The line is a fair (FIFO) async mutex: a held request queues on it as
//! it arrives; the one at the front waits for the gate to open, then keeps
//! its place until its backend answered or [`RELEASE_STEP`] passed, so the
//! backends see held requests in their order without a slow request
//! holding up the rest.

use crate::body::ProxyBody;
use crate::counters::GaugeGuard;
use crate::{Gate, Inner};
use http::header::{HeaderValue, CONTENT_TYPE, RETRY_AFTER};
use http::{Response, StatusCode};
use std::future::Future;
use std::time::Instant;
use tokio::sync::MutexGuard;

/// The longest a released request keeps the next one waiting.
pub(crate) const RELEASE_STEP: std::time::Duration = std::time::Duration::from_millis(5);

/// What the gate says about one request.
pub(crate) enum Admit<'a> {
    /// Go on; with a place in line to keep while it is sent, when it was
    /// held.
    Go(Option<Place<'a>>),
    /// Answer this instead.
    Answer(Box<Response<ProxyBody>>),
}

/// A held request's place at the front of the line, and its slot among
/// the waiting requests.
pub(crate) struct Place<'a> {
    _front: MutexGuard<'a, ()>,
    _queued: GaugeGuard<'a>,
}

/// Pass a request that arrived at `started` through the gate of the
/// current table. Called only when the gate was seen closed.
pub(crate) async fn admit(inner: &Inner, started: Instant) -> Admit<'_> {
    match inner.table.load().table.gate.clone() {
        Gate::Open => return Admit::Go(None),
        Gate::Maintenance { message, retry_after } => {
            return Admit::Answer(Box::new(maintenance(&message, retry_after)))
        }
        Gate::Paused { .. } => {}
    }
    let Some(queued) = GaugeGuard::below(&inner.queued, inner.config.max_queued) else {
        return Admit::Answer(Box::new(plain(
            StatusCode::SERVICE_UNAVAILABLE,
            "paused, and too many requests are waiting\n".into(),
        )));
    };
    let front = inner.line.lock().await;
    loop {
        // Register for the wake-up before looking, so a swap in between
        // is not missed.
        let notified = inner.routes_changed.notified();
        tokio::pin!(notified);
        notified.as_mut().enable();
        let gate = inner.table.load().table.gate.clone();
        match gate {
            Gate::Open => return Admit::Go(Some(Place { _front: front, _queued: queued })),
            Gate::Maintenance { message, retry_after } => {
                return Admit::Answer(Box::new(maintenance(&message, retry_after)))
            }
            Gate::Paused { max } => {
                let deadline = tokio::time::Instant::from_std(started + max);
                tokio::select! {
                    _ = notified => {}
                    _ = tokio::time::sleep_until(deadline) => {
                        let text = format!(
                            "paused for longer than a request may wait ({} s)\n",
                            max.as_secs_f64()
                        );
                        return Admit::Answer(Box::new(plain(StatusCode::SERVICE_UNAVAILABLE, text)));
                    }
                }
            }
        }
    }
}

/// Run `send` (a held request going to its backend), keeping `place` until
/// it is done or [`RELEASE_STEP`] passed.
pub(crate) async fn in_order<T>(place: Place<'_>, send: impl Future<Output = T>) -> T {
    tokio::pin!(send);
    tokio::select! {
        out = &mut send => out,
        _ = tokio::time::sleep(RELEASE_STEP) => {
            drop(place);
            send.await
        }
    }
}

/// The maintenance answer.
fn maintenance(message: &str, retry_after: std::time::Duration) -> Response<ProxyBody> {
    let mut body = message.to_string();
    if !body.ends_with('\n') {
        body.push('\n');
    }
    let mut resp = plain(StatusCode::SERVICE_UNAVAILABLE, body);
    let secs = retry_after.as_secs().max(1);
    resp.headers_mut().insert(RETRY_AFTER, HeaderValue::from(secs));
    resp
}

fn plain(status: StatusCode, body: String) -> Response<ProxyBody> {
    let mut resp = Response::new(ProxyBody::owned_text(body));
    *resp.status_mut() = status;
    resp.headers_mut().insert(CONTENT_TYPE, HeaderValue::from_static("text/plain; charset=utf-8"));
    resp
}
