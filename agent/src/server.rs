//! The control API: HTTP/1.1 + JSON under `/v1` on a unix socket (access
//! by file permissions) and optionally on TCP (a bearer token, compared in
//! constant time). The endpoints are listed in [`crate::api`].

// Handlers return `Result<_, Response<Body>>` so that `?` turns any refusal
// into its JSON error answer. The error is built at most once per request on
// the control path, where boxing it would buy nothing.
#![allow(clippy::result_large_err)]

use crate::api::{
    CanaryRequest, DeployRequest, ErrorBody, ErrorDetail, EventsQuery, MaintenanceRequest, PauseRequest,
    RollingRequest, RunLine, RunRequest, ServiceList, SpecOverrides,
};
use crate::controller::{ControlError, Operation, Service, TrafficChange, DEFAULT_PAUSE_MAX};
use crate::decode::{decode, decode_empty, Checked, DecodeError};
use crate::events::EventHub;
use crate::runtime::OutputStream;
use bytes::{Bytes, BytesMut};
use http::{Method, Request, Response, StatusCode};
use http_body_util::{combinators::BoxBody, BodyExt, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper_util::rt::{TokioIo, TokioTimer};
use std::collections::BTreeMap;
use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;
use subtle::ConstantTimeEq;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// Largest request body accepted (64 KiB): specs are small.
pub const MAX_BODY_BYTES: usize = 64 * 1024;
/// Time a client has to send its request headers.
const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);
/// Time a client has to send its whole request body (30 seconds: a body
/// is at most [`MAX_BODY_BYTES`], so only a stalled client takes this long).
const BODY_READ_TIMEOUT: Duration = Duration::from_secs(30);
/// Largest body read (and discarded) to answer 413 cleanly (8 MiB); a
/// larger declared length is refused at once and the connection closed.
const DRAIN_LIMIT: u64 = 8 * 1024 * 1024;

type Body = BoxBody<Bytes, Infallible>;

/// Everything the control API serves.
pub struct ControlApi {
    services: BTreeMap<String, Arc<Service>>,
    events: EventHub,
    shutdown: CancellationToken,
    /// Where streaming answers (the event stream) run.
    tasks: TaskTracker,
    /// Failed authentications per client address.
    auth_limit: crate::auth_limit::AuthLimiter,
    /// Where `POST /v1/reload` goes.
    reloads: crate::reload::Handle,
}

/// Which listener a connection came from.
#[derive(Clone)]
pub enum Access {
    /// The unix socket: file permissions already decided.
    Socket,
    /// TCP: every request needs this bearer token; failures are limited
    /// per client address ([`crate::auth_limit`]).
    Token {
        /// The token.
        token: Arc<str>,
        /// The client's address.
        peer: std::net::IpAddr,
    },
}

impl ControlApi {
    /// An API over the given controllers.
    pub fn new(
        services: BTreeMap<String, Arc<Service>>,
        events: EventHub,
        shutdown: CancellationToken,
        tasks: TaskTracker,
        reloads: crate::reload::Handle,
    ) -> Arc<ControlApi> {
        Arc::new(ControlApi { services, events, shutdown, tasks, auth_limit: Default::default(), reloads })
    }

    /// Serve one accepted connection until it closes or the agent stops.
    pub fn serve_connection<IO>(self: &Arc<Self>, io: IO, access: Access, tracker: &TaskTracker)
    where
        IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let api = self.clone();
        let shutdown = self.shutdown.clone();
        tracker.spawn(async move {
            let service = hyper::service::service_fn(move |req| {
                let api = api.clone();
                let access = access.clone();
                async move { Ok::<_, Infallible>(api.handle(req, &access).await) }
            });
            let conn = hyper::server::conn::http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(HEADER_READ_TIMEOUT)
                .serve_connection(TokioIo::new(io), service);
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

    async fn handle(&self, req: Request<Incoming>, access: &Access) -> Response<Body> {
        // Method and path only: headers carry the bearer token, which must
        // never reach a log, and bodies are the operation's own business.
        let (method, path) = (req.method().clone(), req.uri().path().to_string());
        let via = match access {
            Access::Socket => "socket",
            Access::Token { .. } => "tcp",
        };
        if let Access::Token { token, peer } = access {
            let now = std::time::Instant::now();
            if let Some(wait) = self.auth_limit.blocked(*peer, now) {
                tracing::warn!(%method, %path, %peer, "control API request refused: too many failed authentications from this address");
                discard_body(req).await;
                return too_many(wait);
            }
            if !authorized(&req, token) {
                self.auth_limit.failed(*peer, now);
                tracing::warn!(%method, %path, via, %peer, "control API request refused: missing or wrong bearer token");
                discard_body(req).await;
                return unauthorized();
            }
        }
        let resp = match self.route(req).await {
            Ok(resp) => resp,
            Err(e) => e,
        };
        tracing::debug!(%method, %path, via, status = resp.status().as_u16(), "control API request");
        resp
    }

    async fn route(&self, req: Request<Incoming>) -> Result<Response<Body>, Response<Body>> {
        let path = req.uri().path().trim_end_matches('/').to_string();
        let query = req.uri().query().unwrap_or("").to_string();
        let parts: Vec<&str> = path.split('/').skip(1).collect();
        let method = req.method().clone();
        match (method, parts.as_slice()) {
            (Method::GET, ["v1", "health"]) => Ok(json(StatusCode::OK, &serde_json::json!({"ok": true}))),
            (Method::GET, ["v1", "services"]) => {
                let services = self.services.values().map(|s| s.status()).collect();
                Ok(json(StatusCode::OK, &ServiceList { services }))
            }
            (Method::GET, ["v1", "services", name]) => {
                Ok(json(StatusCode::OK, &self.service(name)?.status()))
            }
            (Method::GET, ["v1", "services", name, "history"]) => {
                Ok(json(StatusCode::OK, &self.service(name)?.history()))
            }
            (Method::GET, ["v1", "events"]) => self.events(&query),
            (Method::POST, ["v1", "reload"]) => {
                empty_body(req, ()).await?;
                match self.reloads.reload().await {
                    Ok(pid) => Ok(json(StatusCode::OK, &serde_json::json!({"reloaded": true, "pid": pid}))),
                    Err(e @ crate::reload::ReloadError::Config(_)) => {
                        Err(error(StatusCode::BAD_REQUEST, "bad_config", e.to_string()))
                    }
                    Err(e @ crate::reload::ReloadError::Busy(_)) => {
                        Err(error(StatusCode::CONFLICT, "conflict", e.to_string()))
                    }
                    Err(e) => Err(error(StatusCode::INTERNAL_SERVER_ERROR, "reload_failed", e.to_string())),
                }
            }
            (
                Method::POST,
                ["v1", "services", name, action @ ("pause" | "resume" | "maintenance" | "live")],
            ) => {
                let service = self.service(name)?.clone();
                let change = match *action {
                    "pause" => {
                        let req = body::<PauseRequest>(req).await?;
                        TrafficChange::Pause(req.max.map(|d| d.0).unwrap_or(DEFAULT_PAUSE_MAX))
                    }
                    "resume" => empty_body(req, TrafficChange::Resume).await?,
                    "maintenance" => {
                        TrafficChange::Maintenance(body::<MaintenanceRequest>(req).await?.message)
                    }
                    _ => empty_body(req, TrafficChange::Live).await?,
                };
                let status = service.set_traffic(change).await.map_err(control_error)?;
                Ok(json(StatusCode::OK, &status))
            }
            (Method::POST, ["v1", "services", name, "run"]) => {
                let service = self.service(name)?.clone();
                self.run(service, body::<RunRequest>(req).await?)
            }
            (Method::POST, ["v1", "services", name, op]) => {
                let service = self.service(name)?.clone();
                let request = match *op {
                    "deploy" => Operation::Deploy(body::<DeployRequest>(req).await?),
                    "promote" => empty_body(req, Operation::Promote).await?,
                    "rollback" => empty_body(req, Operation::Rollback).await?,
                    "abort" => empty_body(req, Operation::Abort).await?,
                    "canary" => Operation::Canary(body::<CanaryRequest>(req).await?),
                    "rolling" => Operation::Rolling(body::<RollingRequest>(req).await?),
                    other => {
                        return Err(not_found(format!(
                            "no operation {other:?}; see GET /v1 docs in bg_agent::api"
                        )))
                    }
                };
                self.start(&service, request).await
            }
            (Method::POST, ["v1", "services", name, "replicas", id, action]) => {
                let service = self.service(name)?.clone();
                let id = id.to_string();
                let request = match *action {
                    "drain" => empty_body(req, Operation::ReplicaDrain(id)).await?,
                    "enable" => empty_body(req, Operation::ReplicaEnable(id)).await?,
                    "update" => Operation::ReplicaUpdate(id, body::<SpecOverrides>(req).await?),
                    other => {
                        return Err(not_found(format!(
                            "no replica action {other:?}: use drain, enable or update"
                        )))
                    }
                };
                self.start(&service, request).await
            }
            (m, _) if m != Method::GET && m != Method::POST => Err(error(
                StatusCode::METHOD_NOT_ALLOWED,
                "method_not_allowed",
                format!("{m} is not used by this API"),
            )),
            _ => Err(not_found(format!("no endpoint {path:?}"))),
        }
    }

    fn service(&self, name: &str) -> Result<&Arc<Service>, Response<Body>> {
        self.services.get(name).ok_or_else(|| {
            let known: Vec<&str> = self.services.keys().map(String::as_str).collect();
            not_found(format!("unknown service {name:?}; this agent runs: {}", known.join(", ")))
        })
    }

    async fn start(
        &self,
        service: &Arc<Service>,
        request: Operation,
    ) -> Result<Response<Body>, Response<Body>> {
        match service.start(request).await {
            Ok(accepted) => Ok(json(StatusCode::ACCEPTED, &accepted)),
            Err(e) => Err(control_error(e)),
        }
    }

    fn events(&self, query: &str) -> Result<Response<Body>, Response<Body>> {
        let q = parse_events_query(query).map_err(|m| error(StatusCode::BAD_REQUEST, "bad_request", m))?;
        if let Some(name) = &q.service {
            self.service(name)?;
        }
        let mut sub = self.events.subscribe(Some(q.since.unwrap_or(0)));
        let (tx, rx) = tokio::sync::mpsc::channel::<Result<Frame<Bytes>, Infallible>>(64);
        let shutdown = self.shutdown.clone();
        let wanted = move |e: &crate::api::Event| q.service.as_ref().is_none_or(|s| *s == e.service);
        let follow = q.follow;
        self.tasks.spawn(async move {
            for e in sub.replay.iter().filter(|e| wanted(e)) {
                if tx.send(Ok(ndjson(&**e))).await.is_err() {
                    return;
                }
            }
            if !follow {
                return;
            }
            loop {
                let e = tokio::select! {
                    _ = shutdown.cancelled() => return,
                    _ = tx.closed() => return,
                    e = sub.live.recv() => e,
                };
                match e {
                    Ok(e) if wanted(&e) => {
                        if tx.send(Ok(ndjson(&*e))).await.is_err() {
                            return;
                        }
                    }
                    Ok(_) => {}
                    Err(tokio::sync::broadcast::error::RecvError::Lagged(n)) => {
                        tracing::warn!(missed = n, "an event subscriber fell behind");
                    }
                    Err(tokio::sync::broadcast::error::RecvError::Closed) => return,
                }
            }
        });
        let stream =
            futures_util::stream::unfold(rx, |mut rx| async move { rx.recv().await.map(|f| (f, rx)) });
        let mut resp = Response::new(StreamBody::new(stream).boxed());
        resp.headers_mut()
            .insert(http::header::CONTENT_TYPE, http::HeaderValue::from_static("application/x-ndjson"));
        Ok(resp)
    }
}

impl ControlApi {
    /// `POST /v1/services/{name}/run`: the run's lines as they come, then
    /// its exit code. The run is killed when the client goes away or the
    /// agent stops.
    fn run(&self, service: Arc<Service>, req: RunRequest) -> Result<Response<Body>, Response<Body>> {
        let spec = service.oneoff_spec(&req.command, req.image.as_deref()).map_err(control_error)?;
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel::<Result<Frame<Bytes>, Infallible>>();
        let cancel = self.shutdown.child_token();
        self.tasks.spawn(async move {
            let output = |stream: OutputStream, line: String| {
                let stream = match stream {
                    OutputStream::Stdout => "stdout",
                    OutputStream::Stderr => "stderr",
                };
                let _ = tx.send(Ok(ndjson(&RunLine::Output { stream: stream.into(), line })));
            };
            let run = service.run_once(spec, req.command, &output, &cancel);
            let gone = async {
                tx.closed().await;
                cancel.cancel();
                std::future::pending::<()>().await
            };
            let last = tokio::select! {
                biased;
                r = run => match r {
                    Ok(Some(exit_code)) => RunLine::Exit { exit_code },
                    Ok(None) => RunLine::Error { error: "the run was stopped: the agent is shutting down".into() },
                    Err(e) => RunLine::Error { error: e.to_string() },
                },
                () = gone => unreachable!("pending"),
            };
            let _ = tx.send(Ok(ndjson(&last)));
        });
        let stream =
            futures_util::stream::unfold(rx, |mut rx| async move { rx.recv().await.map(|f| (f, rx)) });
        let mut resp = Response::new(StreamBody::new(stream).boxed());
        resp.headers_mut()
            .insert(http::header::CONTENT_TYPE, http::HeaderValue::from_static("application/x-ndjson"));
        Ok(resp)
    }
}

fn ndjson(e: &impl serde::Serialize) -> Frame<Bytes> {
    let mut line = serde_json::to_vec(e).expect("answers serialize");
    line.push(b'\n');
    Frame::data(Bytes::from(line))
}

fn parse_events_query(query: &str) -> Result<EventsQuery, String> {
    let mut q = EventsQuery::default();
    for pair in query.split('&').filter(|p| !p.is_empty()) {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        match k {
            "service" => q.service = Some(v.to_string()),
            "since" => {
                q.since = Some(v.parse().map_err(|_| format!("since={v:?} is not an event sequence number"))?)
            }
            "follow" => q.follow = matches!(v, "" | "1" | "true"),
            other => return Err(format!("unknown query parameter {other:?}: use service, since, follow")),
        }
    }
    Ok(q)
}

/// Whether the request carries `Authorization: Bearer <token>`. The scheme
/// is case-insensitive (RFC 7235); the token is compared in constant time.
pub(crate) fn authorized(req: &Request<Incoming>, token: &str) -> bool {
    let Some(value) = req.headers().get(http::header::AUTHORIZATION) else {
        return false;
    };
    let value = value.as_bytes();
    let scheme = b"bearer ";
    if value.len() < scheme.len() || !value[..scheme.len()].eq_ignore_ascii_case(scheme) {
        return false;
    }
    value[scheme.len()..].trim_ascii().ct_eq(token.as_bytes()).into()
}

/// The one answer to every request without the right token: the same for a
/// missing, malformed or wrong one, so it tells nothing about the token.
pub(crate) fn unauthorized() -> Response<Body> {
    let mut resp = error(
        StatusCode::UNAUTHORIZED,
        "unauthorized",
        "this listener needs Authorization: Bearer <token> with the agent's token".into(),
    );
    resp.headers_mut().insert(http::header::WWW_AUTHENTICATE, http::HeaderValue::from_static("Bearer"));
    resp
}

/// The answer while an address is over its failed-authentication limit.
fn too_many(wait: Duration) -> Response<Body> {
    let mut resp = error(
        StatusCode::TOO_MANY_REQUESTS,
        "too_many_requests",
        format!(
            "too many failed authentications from this address; try again in {} s",
            wait.as_secs().max(1)
        ),
    );
    resp.headers_mut().insert(http::header::RETRY_AFTER, http::HeaderValue::from(wait.as_secs().max(1)));
    resp
}

/// Read and drop a body we will not use, up to [`DRAIN_LIMIT`] bytes and
/// [`BODY_READ_TIMEOUT`], so that a client still sending it gets the answer
/// rather than a broken pipe (see [`read_body`]).
async fn discard_body(req: Request<Incoming>) {
    let mut body = req.into_body();
    let mut total: u64 = 0;
    let discard = async {
        while let Some(Ok(frame)) = body.frame().await {
            total += frame.data_ref().map_or(0, |d| d.len() as u64);
            if total > DRAIN_LIMIT {
                break;
            }
        }
    };
    let _ = tokio::time::timeout(BODY_READ_TIMEOUT, discard).await;
}

/// Read a request body of at most [`MAX_BODY_BYTES`]. A larger one is
/// still read, and thrown away, up to [`DRAIN_LIMIT`] before the 413 goes
/// out: a client that is still sending when the answer comes (hyper, and so
/// bgctl) sees a broken pipe instead of the answer if the agent closes the
/// connection on it. A body that does not arrive within
/// [`BODY_READ_TIMEOUT`] gets a 408.
async fn read_body(req: Request<Incoming>) -> Result<Bytes, Response<Body>> {
    let too_large = || {
        error(
            StatusCode::PAYLOAD_TOO_LARGE,
            "payload_too_large",
            format!(
                "request body is larger than the limit of {MAX_BODY_BYTES} bytes; a request holds only \
                 overrides and settings, which are small"
            ),
        )
    };
    let declared = req
        .headers()
        .get(http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > DRAIN_LIMIT) {
        return Err(too_large());
    }
    let mut body = req.into_body();
    let mut kept = BytesMut::new();
    let mut total: u64 = 0;
    let read = async {
        while let Some(frame) = body.frame().await {
            let frame = frame.map_err(|e| format!("cannot read request body: {e}"))?;
            if let Ok(data) = frame.into_data() {
                total += data.len() as u64;
                if total > DRAIN_LIMIT {
                    break;
                }
                if total <= MAX_BODY_BYTES as u64 {
                    kept.extend_from_slice(&data);
                }
            }
        }
        Ok::<(), String>(())
    };
    match tokio::time::timeout(BODY_READ_TIMEOUT, read).await {
        Err(_) => Err(error(
            StatusCode::REQUEST_TIMEOUT,
            "request_timeout",
            format!("the request body did not arrive within {BODY_READ_TIMEOUT:?}"),
        )),
        Ok(Err(message)) => Err(error(StatusCode::BAD_REQUEST, "bad_request", message)),
        Ok(Ok(())) if total > MAX_BODY_BYTES as u64 => Err(too_large()),
        Ok(Ok(())) => Ok(kept.freeze()),
    }
}

async fn body<T: Checked>(req: Request<Incoming>) -> Result<T, Response<Body>> {
    let bytes = read_body(req).await?;
    decode::<T>(&bytes).map_err(bad_request)
}

async fn empty_body<T>(req: Request<Incoming>, value: T) -> Result<T, Response<Body>> {
    let bytes = read_body(req).await?;
    decode_empty(&bytes).map_err(bad_request)?;
    Ok(value)
}

fn bad_request(e: DecodeError) -> Response<Body> {
    error(StatusCode::BAD_REQUEST, "bad_request", e.to_string())
}

fn json<T: serde::Serialize>(status: StatusCode, value: &T) -> Response<Body> {
    let mut bytes = serde_json::to_vec(value).expect("API types serialize");
    bytes.push(b'\n');
    let mut resp = Response::new(Full::new(Bytes::from(bytes)).boxed());
    *resp.status_mut() = status;
    resp.headers_mut().insert(http::header::CONTENT_TYPE, http::HeaderValue::from_static("application/json"));
    resp
}

fn error(status: StatusCode, code: &str, message: String) -> Response<Body> {
    json(status, &ErrorBody { error: ErrorDetail { code: code.into(), message } })
}

fn not_found(message: String) -> Response<Body> {
    error(StatusCode::NOT_FOUND, "not_found", message)
}

fn control_error(e: ControlError) -> Response<Body> {
    let message = e.to_string();
    match e {
        ControlError::UnknownService(_) | ControlError::UnknownReplica { .. } => not_found(message),
        ControlError::BadRequest(_) => error(StatusCode::BAD_REQUEST, "bad_request", message),
        ControlError::Conflict { .. } => error(StatusCode::CONFLICT, "conflict", message),
        ControlError::NotSupported(_) => error(StatusCode::NOT_IMPLEMENTED, "not_implemented", message),
    }
}

#[cfg(test)]
mod tests {
    use super::parse_events_query;

    #[test]
    fn events_query_parses_and_rejects_unknown_keys() {
        let q = parse_events_query("service=web&since=5&follow=true").unwrap();
        assert_eq!(q.service.as_deref(), Some("web"));
        assert_eq!(q.since, Some(5));
        assert!(q.follow);
        assert!(parse_events_query("since=x").unwrap_err().contains("since"));
        assert!(parse_events_query("foo=1").unwrap_err().contains("foo"));
    }
}
