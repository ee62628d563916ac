//! A load generator for end-to-end tests and benchmarks, against loopback
//! targets only. Two shapes:
//!
//! - closed loop: N keep-alive clients, each sending its next request as
//!   soon as the previous answer was read ([`Load::keepalive`]);
//! - open loop: a constant request rate, each request on a fresh
//!   connection or on a shared pool ([`Load::rate`]).
//!
//! Either over plain TCP or, with [`Load::tls`], over TLS (rustls): every
//! connection a full handshake, checked, with resumption off in the client
//! config a caller passes (see `bench::tls`).
//!
//! Load always stops by itself after a maximum duration (120 s by default)
//! and a maximum number of requests; [`LoadHandle::stop`] stops it earlier
//! and returns a [`LoadReport`].
//!
//! ```no_run
//! # async fn f(addr: std::net::SocketAddr) {
//! use bg_tests::load::Load;
//! let load = Load::keepalive(16).target(addr).path("/").start();
//! // ... switch traffic ...
//! let report = load.stop().await;
//! assert_eq!(report.failed, 0, "{:?}", report.errors);
//! println!("p99 {:?}", report.quantile(0.99));
//! # }
//! ```

use bytes::Bytes;
use http::header::{HeaderName, HeaderValue, HOST};
use http::{Request, StatusCode};
use http_body_util::{BodyExt, Empty};
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioIo};
use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

/// Default bound on how long load runs (120 seconds).
pub const DEFAULT_MAX_DURATION: Duration = Duration::from_secs(120);
/// Default bound on how many requests load sends (10 million).
pub const DEFAULT_MAX_REQUESTS: u64 = 10_000_000;
/// Errors kept verbatim in a report.
const KEPT_ERRORS: usize = 10;
/// Latency samples kept per worker (the rest are counted, not sampled).
const MAX_SAMPLES: usize = 2_000_000;
/// Open-loop requests outstanding at most; more are counted as failed.
const MAX_OUTSTANDING: usize = 10_000;

#[derive(Debug, Clone, Copy)]
enum Shape {
    KeepAlive { clients: usize, fresh: bool },
    Rate { per_sec: u32, fresh: bool },
}

/// Load to run; build it, then [`Load::start`].
#[derive(Debug, Clone)]
pub struct Load {
    shape: Shape,
    target: Option<SocketAddr>,
    path: String,
    headers: Vec<(HeaderName, HeaderValue)>,
    max_duration: Duration,
    max_requests: u64,
    record: bool,
    tls: Option<Tls>,
}

/// TLS on every connection: the client config, and the name sent as SNI
/// and verified against the server's certificate.
#[derive(Clone)]
struct Tls {
    connector: tokio_rustls::TlsConnector,
    name: rustls::pki_types::ServerName<'static>,
}

impl std::fmt::Debug for Tls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tls").field("name", &self.name).finish_non_exhaustive()
    }
}

impl Load {
    /// `clients` keep-alive connections in a closed loop.
    pub fn keepalive(clients: usize) -> Load {
        Load::new(Shape::KeepAlive { clients: clients.max(1), fresh: false })
    }

    /// `per_sec` requests a second, whatever the answers take (open loop),
    /// on a shared connection pool unless [`Load::fresh_connections`].
    pub fn rate(per_sec: u32) -> Load {
        Load::new(Shape::Rate { per_sec: per_sec.max(1), fresh: false })
    }

    fn new(shape: Shape) -> Load {
        Load {
            shape,
            target: None,
            path: "/".into(),
            headers: Vec::new(),
            max_duration: DEFAULT_MAX_DURATION,
            max_requests: DEFAULT_MAX_REQUESTS,
            record: false,
            tls: None,
        }
    }

    /// Every request on a new connection (a new client): open-loop
    /// requests each connect; closed-loop clients send `Connection: close`
    /// and connect again for their next request.
    pub fn fresh_connections(mut self) -> Load {
        self.shape = match self.shape {
            Shape::Rate { per_sec, .. } => Shape::Rate { per_sec, fresh: true },
            Shape::KeepAlive { clients, .. } => Shape::KeepAlive { clients, fresh: true },
        };
        self
    }

    /// Where to send (a loopback address).
    pub fn target(mut self, addr: SocketAddr) -> Load {
        self.target = Some(addr);
        self
    }

    /// The request path (default `/`).
    pub fn path(mut self, path: &str) -> Load {
        self.path = path.to_owned();
        self
    }

    /// A header sent with every request.
    pub fn header(mut self, name: &str, value: &str) -> Load {
        self.headers.push((
            HeaderName::from_bytes(name.as_bytes()).expect("valid header name"),
            HeaderValue::from_str(value).expect("valid header value"),
        ));
        self
    }

    /// Stop by itself after this long.
    pub fn max_duration(mut self, d: Duration) -> Load {
        self.max_duration = d;
        self
    }

    /// Stop by itself after this many requests.
    pub fn max_requests(mut self, n: u64) -> Load {
        self.max_requests = n;
        self
    }

    /// Speak TLS with `config` to `server_name` (SNI, and the name the
    /// certificate must be valid for) on every connection. A handshake that
    /// resumed a session fails its request: with `Resumption::disabled()`
    /// in `config` each connection is a full handshake, and this checks it. Closed-loop
    /// clients and fresh open-loop requests only (the open-loop pool speaks
    /// plain HTTP).
    pub fn tls(mut self, config: std::sync::Arc<rustls::ClientConfig>, server_name: &str) -> Load {
        let name =
            rustls::pki_types::ServerName::try_from(server_name.to_owned()).expect("a valid server name");
        self.tls = Some(Tls { connector: tokio_rustls::TlsConnector::from(config), name });
        self
    }

    /// Keep one [`RequestRecord`] per request (start and end times,
    /// status, `x-version`) in the report.
    pub fn record_requests(mut self) -> Load {
        self.record = true;
        self
    }

    /// Start sending. Panics unless the target is a loopback address or
    /// one inside a network namespace a test made ([`crate::netns`]).
    pub fn start(self) -> LoadHandle {
        let target = self.target.expect("Load::target is required");
        assert!(
            target.ip().is_loopback() || crate::netns::is_test_address(target.ip()),
            "load only targets loopback and test namespace addresses, not {target}"
        );
        assert!(
            self.tls.is_none() || !matches!(self.shape, Shape::Rate { fresh: false, .. }),
            "TLS load runs closed-loop clients or fresh open-loop requests"
        );
        let stop = CancellationToken::new();
        let shared = Arc::new(Shared {
            started: AtomicU64::new(0),
            done: AtomicU64::new(0),
            failed: AtomicU64::new(0),
            max_requests: self.max_requests,
            stopped: AtomicBool::new(false),
        });
        let config = Arc::new(Config {
            target,
            uri: self.path.parse().expect("valid request path"),
            host: HeaderValue::from_str(&target.to_string()).expect("valid host"),
            headers: self.headers,
            record: self.record,
            tls: self.tls,
        });
        let began = Instant::now();
        let mut workers = JoinSet::new();
        match self.shape {
            Shape::KeepAlive { clients, fresh } => {
                for _ in 0..clients {
                    workers.spawn(keepalive_worker(config.clone(), shared.clone(), stop.clone(), fresh));
                }
            }
            Shape::Rate { per_sec, fresh } => {
                workers.spawn(rate_driver(config.clone(), shared.clone(), stop.clone(), per_sec, fresh));
            }
        }
        let timer_stop = stop.clone();
        let max_duration = self.max_duration;
        tokio::spawn(async move {
            tokio::select! {
                _ = tokio::time::sleep(max_duration) => timer_stop.cancel(),
                _ = timer_stop.cancelled() => {}
            }
        });
        LoadHandle { stop, workers, shared, began }
    }
}

struct Config {
    target: SocketAddr,
    uri: http::Uri,
    host: HeaderValue,
    headers: Vec<(HeaderName, HeaderValue)>,
    record: bool,
    tls: Option<Tls>,
}

impl Config {
    fn request(&self) -> Request<Empty<Bytes>> {
        let mut req = Request::new(Empty::new());
        *req.uri_mut() = self.uri.clone();
        let h = req.headers_mut();
        h.insert(HOST, self.host.clone());
        for (k, v) in &self.headers {
            // A `host` header replaces the target's (name-based routing).
            if *k == HOST {
                h.insert(HOST, v.clone());
            } else {
                h.append(k.clone(), v.clone());
            }
        }
        req
    }
}

struct Shared {
    started: AtomicU64,
    done: AtomicU64,
    failed: AtomicU64,
    max_requests: u64,
    stopped: AtomicBool,
}

impl Shared {
    /// Claim the right to send one more request.
    fn claim(&self) -> bool {
        if self.started.fetch_add(1, Ordering::Relaxed) >= self.max_requests {
            self.stopped.store(true, Ordering::Relaxed);
            return false;
        }
        true
    }
}

/// One request as the client saw it.
#[derive(Debug, Clone)]
pub struct RequestRecord {
    /// When it was sent.
    pub started: Instant,
    /// When its answer was read (or it failed).
    pub finished: Instant,
    /// Its status; `None` when it failed without an answer.
    pub status: Option<u16>,
    /// Its `x-version` header, if any.
    pub version: Option<String>,
}

/// What a worker counted.
#[derive(Default)]
struct Tally {
    ok: u64,
    failed: u64,
    errors: Vec<String>,
    by_version: HashMap<HeaderValue, u64>,
    by_status: HashMap<u16, u64>,
    latencies_us: Vec<u32>,
    records: Vec<RequestRecord>,
}

impl Tally {
    fn add(&mut self, sample: Sample, record: bool) {
        match &sample.result {
            Ok((status, version)) => {
                if status.is_server_error() {
                    self.failed += 1;
                    self.keep_error(format!("status {status}"));
                } else {
                    self.ok += 1;
                }
                *self.by_status.entry(status.as_u16()).or_default() += 1;
                if let Some(v) = version {
                    *self.by_version.entry(v.clone()).or_default() += 1;
                }
            }
            Err(e) => {
                self.failed += 1;
                self.keep_error(e.clone());
            }
        }
        let latency = sample.finished.duration_since(sample.started);
        if self.latencies_us.len() < MAX_SAMPLES {
            self.latencies_us.push(u32::try_from(latency.as_micros()).unwrap_or(u32::MAX));
        }
        if record {
            let (status, version) = match sample.result {
                Ok((s, v)) => (Some(s.as_u16()), v.and_then(|v| v.to_str().ok().map(str::to_owned))),
                Err(_) => (None, None),
            };
            self.records.push(RequestRecord {
                started: sample.started,
                finished: sample.finished,
                status,
                version,
            });
        }
    }

    fn keep_error(&mut self, e: String) {
        if self.errors.len() < KEPT_ERRORS {
            self.errors.push(e);
        }
    }

    fn merge(&mut self, other: Tally) {
        self.ok += other.ok;
        self.failed += other.failed;
        for e in other.errors {
            self.keep_error(e);
        }
        for (k, v) in other.by_version {
            *self.by_version.entry(k).or_default() += v;
        }
        for (k, v) in other.by_status {
            *self.by_status.entry(k).or_default() += v;
        }
        self.latencies_us.extend(other.latencies_us);
        self.records.extend(other.records);
    }
}

struct Sample {
    started: Instant,
    finished: Instant,
    result: Result<(StatusCode, Option<HeaderValue>), String>,
}

type Sender = hyper::client::conn::http1::SendRequest<Empty<Bytes>>;

async fn connect(config: &Config) -> Result<Sender, String> {
    let stream = tokio::net::TcpStream::connect(config.target).await.map_err(|e| format!("connect: {e}"))?;
    let _ = stream.set_nodelay(true);
    let Some(tls) = &config.tls else { return http1(stream).await };
    let stream =
        tls.connector.connect(tls.name.clone(), stream).await.map_err(|e| format!("tls handshake: {e}"))?;
    full_handshake(stream.get_ref().1)?;
    http1(stream).await
}

/// A resumed handshake is an error: the TLS cells count full handshakes.
fn full_handshake(conn: &rustls::ClientConnection) -> Result<(), String> {
    if conn.handshake_kind() == Some(rustls::HandshakeKind::Resumed) {
        return Err("tls handshake: resumed a session (a full handshake was wanted)".into());
    }
    Ok(())
}

/// HTTP/1.1 on a connected stream.
async fn http1<I>(io: I) -> Result<Sender, String>
where
    I: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(io))
        .await
        .map_err(|e| format!("handshake: {e}"))?;
    tokio::spawn(async move {
        let _ = conn.await;
    });
    Ok(sender)
}

/// A response read to its end: status, `x-version`, and whether the server
/// said it closes the connection (`Connection: close`).
type Answer = (StatusCode, Option<HeaderValue>, bool);

async fn read_response(
    resp: Result<http::Response<hyper::body::Incoming>, hyper::Error>,
) -> Result<Answer, String> {
    let resp = resp.map_err(|e| format!("request: {e}"))?;
    let status = resp.status();
    let version = resp.headers().get("x-version").cloned();
    let closing = resp
        .headers()
        .get(http::header::CONNECTION)
        .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"close"));
    resp.into_body().collect().await.map_err(|e| format!("body: {e}"))?;
    Ok((status, version, closing))
}

async fn keepalive_worker(
    config: Arc<Config>,
    shared: Arc<Shared>,
    stop: CancellationToken,
    fresh: bool,
) -> Tally {
    let mut tally = Tally::default();
    let mut sender: Option<Sender> = None;
    while !stop.is_cancelled() && shared.claim() {
        let started = Instant::now();
        let result = async {
            let s = match sender.as_mut() {
                Some(s) => s,
                None => sender.insert(connect(&config).await?),
            };
            s.ready().await.map_err(|e| format!("connection: {e}"))?;
            let mut req = config.request();
            if fresh {
                req.headers_mut().insert(http::header::CONNECTION, HeaderValue::from_static("close"));
            }
            let (status, version, closing) = read_response(s.send_request(req).await).await?;
            // Like any HTTP/1.1 client: a connection the server said it
            // closes is not used again.
            if closing {
                sender = None;
            }
            Ok((status, version))
        }
        .await;
        if result.is_err() || fresh {
            sender = None;
        }
        if result.as_ref().is_ok_and(|(s, _)| s.is_server_error()) || result.is_err() {
            shared.failed.fetch_add(1, Ordering::Relaxed);
        }
        shared.done.fetch_add(1, Ordering::Relaxed);
        tally.add(Sample { started, finished: Instant::now(), result }, config.record);
    }
    tally
}

async fn one_fresh(config: &Config) -> Result<(StatusCode, Option<HeaderValue>), String> {
    let mut sender = connect(config).await?;
    let (status, version, _) = read_response(sender.send_request(config.request()).await).await?;
    Ok((status, version))
}

async fn rate_driver(
    config: Arc<Config>,
    shared: Arc<Shared>,
    stop: CancellationToken,
    per_sec: u32,
    fresh: bool,
) -> Tally {
    let client: Client<_, Empty<Bytes>> = Client::builder(TokioExecutor::new()).build_http();
    let base = format!("http://{}", config.target);
    let mut tally = Tally::default();
    let mut inflight: JoinSet<Sample> = JoinSet::new();
    let mut tick = tokio::time::interval(Duration::from_secs(1) / per_sec);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
    loop {
        tokio::select! {
            _ = stop.cancelled() => break,
            _ = tick.tick() => {
                if !shared.claim() {
                    break;
                }
                if inflight.len() >= MAX_OUTSTANDING {
                    tally.failed += 1;
                    tally.keep_error("too many requests outstanding".into());
                    continue;
                }
                let config = config.clone();
                let client = client.clone();
                let uri: http::Uri = format!("{base}{}", config.uri).parse().expect("valid uri");
                let shared = shared.clone();
                inflight.spawn(async move {
                    let started = Instant::now();
                    let result = if fresh {
                        one_fresh(&config).await
                    } else {
                        let mut req = config.request();
                        *req.uri_mut() = uri;
                        match client.request(req).await {
                            Ok(resp) => {
                                let status = resp.status();
                                let version = resp.headers().get("x-version").cloned();
                                resp.into_body().collect().await
                                    .map(|_| (status, version))
                                    .map_err(|e| format!("body: {e}"))
                            }
                            Err(e) => Err(format!("request: {e}")),
                        }
                    };
                    if result.as_ref().is_ok_and(|(s, _)| s.is_server_error()) || result.is_err() {
                        shared.failed.fetch_add(1, Ordering::Relaxed);
                    }
                    shared.done.fetch_add(1, Ordering::Relaxed);
                    Sample { started, finished: Instant::now(), result }
                });
            }
            Some(done) = inflight.join_next(), if !inflight.is_empty() => {
                if let Ok(sample) = done {
                    tally.add(sample, config.record);
                }
            }
        }
    }
    while let Some(done) = inflight.join_next().await {
        if let Ok(sample) = done {
            tally.add(sample, config.record);
        }
    }
    tally
}

/// Load that runs; [`LoadHandle::stop`] it for the report.
pub struct LoadHandle {
    stop: CancellationToken,
    workers: JoinSet<Tally>,
    shared: Arc<Shared>,
    began: Instant,
}

impl LoadHandle {
    /// Requests answered (or failed) so far.
    pub fn completed(&self) -> u64 {
        self.shared.done.load(Ordering::Relaxed)
    }

    /// Requests failed so far.
    pub fn failed(&self) -> u64 {
        self.shared.failed.load(Ordering::Relaxed)
    }

    /// Whether it stopped by itself (max requests or duration reached).
    pub fn finished(&self) -> bool {
        self.stop.is_cancelled() || self.shared.stopped.load(Ordering::Relaxed) || self.workers.is_empty()
    }

    /// Stop sending, wait for the requests in flight (at most 30 s), and
    /// report.
    pub async fn stop(mut self) -> LoadReport {
        self.stop.cancel();
        let mut tally = Tally::default();
        let collect = async {
            while let Some(t) = self.workers.join_next().await {
                if let Ok(t) = t {
                    tally.merge(t);
                }
            }
        };
        if tokio::time::timeout(Duration::from_secs(30), collect).await.is_err() {
            self.workers.abort_all();
            tally.keep_error("load workers did not stop within 30s".into());
        }
        let elapsed = self.began.elapsed();
        let mut latencies_us = tally.latencies_us;
        latencies_us.sort_unstable();
        let mut records = tally.records;
        records.sort_by_key(|r| r.started);
        LoadReport {
            ok: tally.ok,
            failed: tally.failed,
            errors: tally.errors,
            by_version: tally
                .by_version
                .into_iter()
                .map(|(k, v)| (String::from_utf8_lossy(k.as_bytes()).into_owned(), v))
                .fold(BTreeMap::new(), |mut m, (k, v)| {
                    *m.entry(k).or_default() += v;
                    m
                }),
            by_status: tally.by_status.into_iter().collect(),
            elapsed,
            latencies_us,
            records,
        }
    }
}

/// What a load run saw.
#[derive(Debug, Clone, Default)]
pub struct LoadReport {
    /// Answers below 500.
    pub ok: u64,
    /// Requests without an answer, and 5xx answers.
    pub failed: u64,
    /// The first few failures, as text.
    pub errors: Vec<String>,
    /// Answers per `x-version` header value.
    pub by_version: BTreeMap<String, u64>,
    /// Answers per status code.
    pub by_status: BTreeMap<u16, u64>,
    /// How long the load ran.
    pub elapsed: Duration,
    /// Latency samples in microseconds, sorted.
    pub latencies_us: Vec<u32>,
    /// One record per request, by start time (with
    /// [`Load::record_requests`] only).
    pub records: Vec<RequestRecord>,
}

impl LoadReport {
    /// Requests sent.
    pub fn total(&self) -> u64 {
        self.ok + self.failed
    }

    /// Answers with `x-version: version`.
    pub fn version(&self, version: &str) -> u64 {
        self.by_version.get(version).copied().unwrap_or(0)
    }

    /// Requests per second over the run.
    pub fn rps(&self) -> f64 {
        self.total() as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }

    /// The latency below which `q` (0..=1) of the samples fall.
    pub fn quantile(&self, q: f64) -> Option<Duration> {
        if self.latencies_us.is_empty() {
            return None;
        }
        let rank = ((q.clamp(0.0, 1.0) * self.latencies_us.len() as f64).ceil() as usize)
            .clamp(1, self.latencies_us.len());
        Some(Duration::from_micros(u64::from(self.latencies_us[rank - 1])))
    }

    /// Median latency.
    pub fn p50(&self) -> Option<Duration> {
        self.quantile(0.5)
    }

    /// 99th percentile latency.
    pub fn p99(&self) -> Option<Duration> {
        self.quantile(0.99)
    }
}
