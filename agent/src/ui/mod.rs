//! The dashboard (`[agent] ui_listen`): a read-only status page whose
//! HTML, CSS and JS are compiled into the binary, `/api/status` (a JSON
//! snapshot built from the control API's status types) and `/api/stream`
//! (server-sent events, one a second; the first carries the whole
//! 15-minute ring of [`samples`]). When the control API has a bearer
//! token every route needs it: without it `/` answers 401 with the page
//! shell only (it holds no data and asks for the token), `/api/*` a 401
//! error.

pub mod samples;

use crate::api::{Outcome, ServiceStatus};
use crate::controller::Service;
use bytes::Bytes;
use http::{Method, Request, Response, StatusCode};
use http_body_util::{combinators::BoxBody, BodyExt, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper_util::rt::{TokioIo, TokioTimer};
use samples::{Rings, Sample};
use serde::Serialize;
use std::collections::BTreeMap;
use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// The page: markup, style and script, all from this crate.
const PAGE: &str = concat!(
    include_str!("page_head.html"),
    "<style>\n",
    include_str!("page.css"),
    "</style>\n",
    include_str!("page_body.html"),
    "<script>\n",
    include_str!("page.js"),
    "</script>\n</body>\n</html>\n"
);

/// Past outcomes shown per service.
const OUTCOMES_SHOWN: usize = 5;

type Body = BoxBody<Bytes, Infallible>;

/// One service as the page sees it.
#[derive(Debug, Serialize)]
struct ServiceView {
    /// Its status, as `GET /v1/services/{name}` answers it.
    status: ServiceStatus,
    /// The last outcomes, newest first.
    outcomes: Vec<Outcome>,
    /// Samples: the whole ring in a stream's first message, else the newest.
    samples: Vec<Sample>,
}

/// One message of `/api/stream`, and the `/api/status` answer.
#[derive(Debug, Serialize)]
struct Snapshot {
    /// Whether `samples` holds whole rings (the first message) or only the
    /// newest sample.
    full: bool,
    /// Every service, by name.
    services: Vec<ServiceView>,
}

/// What every connection of the dashboard needs.
struct Dashboard {
    feed: Feed,
    token: Option<Arc<str>>,
}

/// Where snapshots come from: the controllers and the sampler's rings.
#[derive(Clone)]
struct Feed {
    services: BTreeMap<String, Arc<Service>>,
    rings: watch::Receiver<Rings>,
    shutdown: CancellationToken,
}

impl Feed {
    fn snapshot(&self, full: bool) -> Snapshot {
        let rings = self.rings.borrow().clone();
        let services = self
            .services
            .iter()
            .map(|(name, svc)| {
                let ring = rings.get(name);
                let samples = match ring {
                    Some(r) if full => r.samples().copied().collect(),
                    Some(r) => r.latest().copied().into_iter().collect(),
                    None => Vec::new(),
                };
                let outcomes = svc
                    .history()
                    .entries
                    .iter()
                    .rev()
                    .take(OUTCOMES_SHOWN)
                    .map(|e| e.outcome.clone())
                    .collect();
                ServiceView { status: svc.status(), outcomes, samples }
            })
            .collect();
        Snapshot { full, services }
    }
}

impl Dashboard {
    fn handle(&self, req: &Request<Incoming>) -> Response<Body> {
        let path = req.uri().path();
        let allowed = self.token.as_deref().is_none_or(|t| crate::server::authorized(req, t));
        if req.method() != Method::GET {
            return text(StatusCode::METHOD_NOT_ALLOWED, "the dashboard is read-only: GET only\n");
        }
        match path {
            "/" => {
                let mut r = html(PAGE);
                if !allowed {
                    // The shell only: it asks for the token and holds no data.
                    *r.status_mut() = StatusCode::UNAUTHORIZED;
                    r.headers_mut()
                        .insert(http::header::WWW_AUTHENTICATE, http::HeaderValue::from_static("Bearer"));
                }
                r
            }
            "/api/status" | "/api/stream" if !allowed => crate::server::unauthorized(),
            "/api/status" => json(&self.feed.snapshot(false)),
            "/api/stream" => self.stream(),
            _ => text(
                StatusCode::NOT_FOUND,
                "not found: the dashboard serves /, /api/status and /api/stream\n",
            ),
        }
    }

    /// Server-sent events: a snapshot with the whole rings now, then one
    /// with the newest samples after each sampling round, until the client
    /// goes or the agent stops.
    fn stream(&self) -> Response<Body> {
        let mut state = self.feed.clone();
        state.rings.mark_unchanged();
        let first = sse(&state.snapshot(true));
        let rest = futures_util::stream::unfold(state, |mut d| async move {
            tokio::select! {
                _ = d.shutdown.cancelled() => None,
                changed = d.rings.changed() => match changed {
                    Ok(()) => {
                        d.rings.mark_unchanged();
                        let frame = sse(&d.snapshot(false));
                        Some((Ok(frame), d))
                    }
                    Err(_) => None,
                },
            }
        });
        let stream = futures_util::StreamExt::chain(futures_util::stream::once(async { Ok(first) }), rest);
        let mut resp = Response::new(StreamBody::new(stream).boxed());
        let h = resp.headers_mut();
        h.insert(http::header::CONTENT_TYPE, http::HeaderValue::from_static("text/event-stream"));
        h.insert(http::header::CACHE_CONTROL, http::HeaderValue::from_static("no-store"));
        resp
    }
}

fn sse(snapshot: &Snapshot) -> Frame<Bytes> {
    let mut out = b"data: ".to_vec();
    serde_json::to_writer(&mut out, snapshot).expect("snapshots serialize");
    out.extend_from_slice(b"\n\n");
    Frame::data(Bytes::from(out))
}

fn with_type(body: Bytes, kind: &'static str) -> Response<Body> {
    let mut r = Response::new(Full::new(body).boxed());
    r.headers_mut().insert(http::header::CONTENT_TYPE, http::HeaderValue::from_static(kind));
    r.headers_mut().insert(http::header::CACHE_CONTROL, http::HeaderValue::from_static("no-store"));
    r
}

fn html(page: &'static str) -> Response<Body> {
    let mut r = with_type(Bytes::from_static(page.as_bytes()), "text/html; charset=utf-8");
    // Nothing but the page's own inline style and script, and fetches to itself.
    r.headers_mut().insert(
        http::header::CONTENT_SECURITY_POLICY,
        http::HeaderValue::from_static(
            "default-src 'none'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; connect-src 'self'; img-src 'self' data:",
        ),
    );
    r
}

fn json<T: Serialize>(value: &T) -> Response<Body> {
    let mut bytes = serde_json::to_vec(value).expect("snapshots serialize");
    bytes.push(b'\n');
    with_type(Bytes::from(bytes), "application/json")
}

fn text(status: StatusCode, message: &'static str) -> Response<Body> {
    let mut r = with_type(Bytes::from_static(message.as_bytes()), "text/plain; charset=utf-8");
    *r.status_mut() = status;
    r
}

/// Serve the dashboard on `listener` until `shutdown`; `token` is the
/// control API's bearer token, when it has one.
pub async fn serve(
    listener: tokio::net::TcpListener,
    services: BTreeMap<String, Arc<Service>>,
    rings: watch::Receiver<Rings>,
    token: Option<Arc<str>>,
    shutdown: CancellationToken,
    tracker: TaskTracker,
) {
    let dash = Arc::new(Dashboard { feed: Feed { services, rings, shutdown: shutdown.clone() }, token });
    loop {
        let stream = tokio::select! {
            _ = shutdown.cancelled() => return,
            accepted = listener.accept() => match accepted {
                Ok((s, _)) => s,
                Err(e) => { tracing::warn!(error = %e, "dashboard accept failed"); continue }
            },
        };
        let dash = dash.clone();
        let shutdown = shutdown.clone();
        tracker.spawn(async move {
            let svc = hyper::service::service_fn(move |req: Request<Incoming>| {
                let resp = dash.handle(&req);
                async move { Ok::<_, Infallible>(resp) }
            });
            let conn = hyper::server::conn::http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(Duration::from_secs(10))
                .serve_connection(TokioIo::new(stream), svc);
            tokio::pin!(conn);
            tokio::select! {
                _ = conn.as_mut() => {}
                _ = shutdown.cancelled() => {
                    conn.as_mut().graceful_shutdown();
                    let _ = tokio::time::timeout(Duration::from_secs(5), conn).await;
                }
            }
        });
    }
}
