//! `bg-proxy`: an embedded HTTP reverse proxy whose route table is swapped
//! atomically, with honest drains and weighted, sticky canaries.
//!
//! The proxy knows nothing of Docker, config files or a control API. It takes
//! a [`RouteTable`] (backends grouped by [`Color`], weights, preview rule) and
//! serves traffic on the listeners it is given until a cancellation token
//! fires.
//!
//! ```no_run
//! use bg_proxy::{Backend, Color, Proxy, ProxyConfig, RouteTable, Weights};
//! use std::time::Duration;
//! use tokio_util::sync::CancellationToken;
//!
//! # async fn run() -> Result<(), Box<dyn std::error::Error>> {
//! let proxy = Proxy::new(ProxyConfig::default());
//! let listener = tokio::net::TcpListener::bind("127.0.0.1:8080").await?;
//! let shutdown = CancellationToken::new();
//! tokio::spawn(proxy.clone().serve(listener, shutdown.clone()));
//!
//! // Blue takes all traffic.
//! proxy.set_routes(RouteTable::new(vec![
//!     Backend::new("blue-1", "127.0.0.1:5001".parse()?, Color::Blue),
//!     Backend::new("green-1", "127.0.0.1:5002".parse()?, Color::Green),
//! ], Weights::all_to(Color::Blue)));
//!
//! // Promote: one atomic swap, then wait for blue to finish what it has.
//! proxy.update_routes(|t| t.weights = Weights::all_to(Color::Green));
//! let report = proxy.drain(&["blue-1".into()], Duration::from_secs(30)).await;
//! assert_eq!(report.cut, 0);
//! # Ok(()) }
//! ```
//!
//! `Expect: 100-continue` is forwarded; HTTP/1.1 clients get `100 Continue`
//! when the proxy starts reading their body. h2 clients get none: hyper's
//! h2 server cannot send a 1xx (see `ARCHITECTURE.md`), so a client that
//! waits for one sends its body after its own timeout.
// One `setsockopt` in `listen_options.rs` is the only unsafe code.
#![deny(unsafe_code)]

mod backend;
mod body;
mod client_ip;
mod counters;
mod first_bytes;
mod forward;
mod gate;
mod h2_streams;
mod headers;
mod hosts;
mod last_write;
mod lazy_stream;
mod listen_options;
mod pool;
mod prefixed;
mod routes;
mod select;
mod server;
mod signal;
mod stats;
pub mod tls;
mod upgrade;
mod upstream;
mod write_timeout;

pub use hosts::{normalize_prefix, HostError, HostPattern, HostRoute, HostRouter, HostStats};
pub use routes::{Backend, BackendId, Color, Gate, PreviewRule, RouteTable, StickyRule, Weights};
pub use stats::{BackendStats, DrainReport, LatencyHistogram, ProxyStats, TrafficStats, LATENCY_BUCKETS};

use arc_swap::ArcSwap;
use backend::BackendState;
use counters::Counters;
use select::Compiled;
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

/// Default time a request waits for a healthy backend before a 503 (10 seconds).
pub const DEFAULT_QUEUE_TIMEOUT: Duration = Duration::from_secs(10);
/// Default time a client has to send its request headers (10 seconds), so a
/// slow client cannot hold a connection slot for ever; also how long an
/// idle connection is kept (see [`ProxyConfig::header_read_timeout`]).
pub const DEFAULT_HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);
/// Default maximum of client connections per listener (10,000).
pub const DEFAULT_MAX_CONNECTIONS: usize = 10_000;
/// Default time to establish an upstream TCP connection (3 seconds).
pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(3);
/// Default time a backend may take to begin its answer once the request
/// was sent (60 seconds, as nginx's `proxy_read_timeout`).
pub const DEFAULT_RESPONSE_TIMEOUT: Duration = Duration::from_secs(60);
/// Default time an idle pooled upstream connection is kept (90 seconds).
pub const DEFAULT_POOL_IDLE_TIMEOUT: Duration = Duration::from_secs(90);
/// Default maximum of idle pooled connections per backend (1,024).
pub const DEFAULT_POOL_MAX_IDLE: usize = 1024;
/// Default time open client connections get to finish their current
/// request when a listener shuts down (10 seconds).
pub const DEFAULT_SHUTDOWN_TIMEOUT: Duration = Duration::from_secs(10);
/// Default time an HTTP/1.1 keep-alive connection stays open once its
/// listener shuts down, so that its client's next request is still answered,
/// with `Connection: close` (1 second).
pub const DEFAULT_CLOSE_LINGER: Duration = Duration::from_secs(1);
/// Default maximum of requests waiting for a backend at once, over all
/// listeners of a proxy (1,024); more are answered 503 at once, so that an
/// outage cannot pile up requests without bound.
pub const DEFAULT_MAX_QUEUED: u64 = 1024;
/// Default time a write to a client may stay blocked before the connection
/// is closed (30 seconds): a client that stops reading gives its slot back.
pub const DEFAULT_WRITE_TIMEOUT: Duration = Duration::from_secs(30);
/// Default time a backend whose connect failed is tried last (2 seconds).
pub const DEFAULT_UNHEALTHY_BACKOFF: Duration = Duration::from_secs(2);

/// How a backend is picked among the in-rotation backends of a color.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub enum Balance {
    /// In turn.
    #[default]
    RoundRobin,
    /// The one with the fewest requests in flight (ties in turn).
    LeastInflight,
}

/// Settings fixed for the life of a [`Proxy`].
#[derive(Debug, Clone)]
pub struct ProxyConfig {
    /// How long a request waits for a backend when none is available.
    pub queue_timeout: Duration,
    /// How long a client may take to send its request headers, and so how
    /// long an idle connection is kept: HTTP/1.1 keep-alive connections
    /// wait this long for the next request's headers; an h2 connection
    /// with no stream open for this long is told GOAWAY (pings and window
    /// updates do not count), and closed a second later if its client
    /// does not answer it.
    pub header_read_timeout: Duration,
    /// Client connections accepted at once per listener; more wait in the
    /// kernel's backlog.
    pub max_connections: usize,
    /// Upstream connect timeout.
    pub connect_timeout: Duration,
    /// How long a backend may take, once the whole request was sent, to
    /// send the head of its answer (bodies stream unbounded). Past it the
    /// request goes to another backend when it may be resent (idempotent,
    /// no body: a backend that stopped answering, e.g. on a host that fell
    /// off the network), else the client gets 504.
    pub response_timeout: Duration,
    /// Idle pooled upstream connections are closed after this.
    pub pool_idle_timeout: Duration,
    /// Idle pooled upstream connections kept per backend.
    pub pool_max_idle: usize,
    /// How long a listener's open connections may take to finish once its
    /// shutdown token fired; what is left then is closed.
    pub shutdown_timeout: Duration,
    /// Once a listener shuts down, how long its HTTP/1.1 keep-alive
    /// connections stay open: requests that arrive meanwhile are answered
    /// with `Connection: close`, so clients in a request loop reconnect
    /// instead of racing an idle close. Idle connections close after it.
    pub close_linger: Duration,
    /// How long a backend whose connect failed is only tried when no other
    /// backend of its color is left (passive health check).
    pub unhealthy_backoff: Duration,
    /// How a backend is picked within a color.
    pub balance: Balance,
    /// Requests that may wait for a backend at once (all listeners
    /// together); beyond it a request is answered 503 at once.
    pub max_queued: u64,
    /// How long a write to a client may make no progress (the client
    /// stopped reading) before its connection is closed; upgraded tunnels
    /// included. On h2 the same bound holds per stream: a stream whose
    /// body hyper takes nothing more from for this long (the client keeps
    /// its flow-control window shut) is reset, its connection's other
    /// streams go on. hyper takes up to 64 KiB at a time, so an h2 client
    /// that reads one stream slower than 64 KiB per `write_timeout` (about
    /// 2 KiB/s at the default) counts as stopped. Idle connections are
    /// bounded by `header_read_timeout` instead.
    pub write_timeout: Duration,
    /// Whether an HTTP/1.1 client that shuts down its write side while its
    /// request is pending still gets the answer. Off by default: a closed
    /// read side then means the client went away (a FIN from `shutdown`
    /// and one from `close` look the same), so its request is dropped, the
    /// upstream request with it, and its in-flight count released.
    pub half_close: bool,
}

impl Default for ProxyConfig {
    fn default() -> Self {
        ProxyConfig {
            queue_timeout: DEFAULT_QUEUE_TIMEOUT,
            header_read_timeout: DEFAULT_HEADER_READ_TIMEOUT,
            max_connections: DEFAULT_MAX_CONNECTIONS,
            connect_timeout: DEFAULT_CONNECT_TIMEOUT,
            response_timeout: DEFAULT_RESPONSE_TIMEOUT,
            pool_idle_timeout: DEFAULT_POOL_IDLE_TIMEOUT,
            pool_max_idle: DEFAULT_POOL_MAX_IDLE,
            shutdown_timeout: DEFAULT_SHUTDOWN_TIMEOUT,
            close_linger: DEFAULT_CLOSE_LINGER,
            unhealthy_backoff: DEFAULT_UNHEALTHY_BACKOFF,
            balance: Balance::RoundRobin,
            max_queued: DEFAULT_MAX_QUEUED,
            write_timeout: DEFAULT_WRITE_TIMEOUT,
            half_close: false,
        }
    }
}

/// Errors of the proxy's public API.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ProxyError {
    /// Accepting on a listener failed for good.
    #[error("listener {addr} failed: {source}")]
    Listener {
        /// The listener's address.
        addr: String,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
}

/// The shared state behind a [`Proxy`] handle.
pub(crate) struct Inner {
    pub(crate) config: ProxyConfig,
    /// The compiled current route table; loaded once per backend choice.
    pub(crate) table: ArcSwap<Compiled>,
    /// Long-lived state per backend, kept across swaps. Its lock also
    /// serializes route changes.
    registry: Mutex<HashMap<BackendId, Arc<BackendState>>>,
    /// Counters per color (blue, green); they outlive the backends.
    colors: [Arc<Counters>; 2],
    /// Woken on every swap, for requests waiting for a backend.
    pub(crate) routes_changed: Notify,
    /// Requests held by a paused gate, in the order they came (`gate`).
    pub(crate) line: tokio::sync::Mutex<()>,
    pub(crate) connections: AtomicU64,
    /// Requests waiting for a backend now.
    pub(crate) queued: AtomicU64,
    /// Route tables installed; also the table's generation. Bumped
    /// (`SeqCst`) after each store, and read again by a request once it
    /// counted itself in flight, so a request that chose from a table a
    /// drain no longer sees either is counted before the drain reads, or
    /// chooses again (see [`Inner::generation`]).
    switches: AtomicU64,
    /// Drains that reached their deadline with something left to cut.
    drains_cut: AtomicU64,
    /// Requests and upgraded connections cut at a drain's deadline.
    cut: AtomicU64,
    reaper_started: AtomicBool,
}

impl Inner {
    pub(crate) fn color(&self, color: Color) -> &Counters {
        match color {
            Color::Blue => &self.colors[0],
            Color::Green => &self.colors[1],
        }
    }

    /// The route table's generation now. A request reads it before it
    /// loads the table, and again after its in-flight guard exists: if it
    /// changed, the backend may be one a drain already found idle, and the
    /// request chooses again from the new table.
    pub(crate) fn generation(&self) -> u64 {
        self.switches.load(Ordering::SeqCst)
    }

    fn lock_registry(&self) -> std::sync::MutexGuard<'_, HashMap<BackendId, Arc<BackendState>>> {
        // The map stays consistent even if a holder panicked.
        self.registry.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Compile and store `table`; the registry lock is held by the caller.
    fn install(&self, registry: &mut HashMap<BackendId, Arc<BackendState>>, table: RouteTable) {
        let table = Arc::new(table);
        let compiled = Compiled::new(table.clone(), self.config.balance, |b| {
            let reuse = registry.get(&b.id).filter(|s| s.addr == b.addr && s.color == b.color).cloned();
            reuse.unwrap_or_else(|| {
                let s = Arc::new(BackendState::new(
                    b.id.clone(),
                    b.addr,
                    b.color,
                    self.colors[match b.color {
                        Color::Blue => 0,
                        Color::Green => 1,
                    }]
                    .clone(),
                    &self.config,
                ));
                if let Some(old) = registry.insert(b.id.clone(), s.clone()) {
                    // Same name, new address or color: a new backend.
                    old.pool.close_idle();
                }
                s
            })
        });
        // Forget backends that left the table and have nothing in flight;
        // the others stay so that a drain can still find them.
        registry.retain(|id, s| {
            let keep = table.backends.iter().any(|b| &b.id == id) || s.inflight() > 0;
            if !keep {
                s.pool.close_idle();
            }
            keep
        });
        self.table.store(Arc::new(compiled));
        self.switches.fetch_add(1, Ordering::SeqCst);
        self.routes_changed.notify_waiters();
    }

    /// Start the task that closes expired idle upstream connections, once.
    pub(crate) fn start_reaper(self: &Arc<Self>) {
        if self.reaper_started.swap(true, Ordering::AcqRel) {
            return;
        }
        let weak: Weak<Inner> = Arc::downgrade(self);
        let every =
            (self.config.pool_idle_timeout / 4).clamp(Duration::from_millis(100), Duration::from_secs(10));
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(every);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                let Some(inner) = weak.upgrade() else { return };
                let states: Vec<Arc<BackendState>> = inner.lock_registry().values().cloned().collect();
                let now = Instant::now();
                for s in states {
                    s.pool.reap(now);
                }
            }
        });
    }
}

/// A handle to one proxy: cheap to clone, shared by its listeners and the
/// code that changes its routes.
#[derive(Clone)]
pub struct Proxy {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Proxy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Proxy")
            .field("config", &self.inner.config)
            .field("routes", &self.routes())
            .finish_non_exhaustive()
    }
}

impl Proxy {
    /// A proxy with an empty route table (every request waits, then 503).
    pub fn new(config: ProxyConfig) -> Proxy {
        let colors = [Arc::new(Counters::default()), Arc::new(Counters::default())];
        let empty = Arc::new(RouteTable::empty());
        let compiled = Compiled::new(empty, config.balance, |_| unreachable!("empty table"));
        Proxy {
            inner: Arc::new(Inner {
                config,
                table: ArcSwap::from_pointee(compiled),
                registry: Mutex::new(HashMap::new()),
                colors,
                routes_changed: Notify::new(),
                line: tokio::sync::Mutex::new(()),
                connections: AtomicU64::new(0),
                queued: AtomicU64::new(0),
                switches: AtomicU64::new(0),
                drains_cut: AtomicU64::new(0),
                cut: AtomicU64::new(0),
                reaper_started: AtomicBool::new(false),
            }),
        }
    }

    /// Serve one listener until `shutdown` fires, then stop accepting and
    /// let open connections finish their current request (bounded by
    /// [`ProxyConfig::shutdown_timeout`]). HTTP/1.1 and h2c are both
    /// accepted. Call it once per listener; every listener shares the route
    /// table.
    ///
    /// Returns an error only when the listener fails for good.
    pub async fn serve(
        self,
        listener: tokio::net::TcpListener,
        shutdown: CancellationToken,
    ) -> Result<(), ProxyError> {
        server::serve(self.inner, listener, shutdown, server::Edge::default()).await
    }

    /// Serve one shared edge listener until `shutdown` fires: each request
    /// goes to the service `router` picks by host and path (404 when none
    /// does), with TLS when `tls` is given (ALPN picks h2 or HTTP/1.1;
    /// otherwise HTTP/1.1 and h2c). This proxy's own route table is not
    /// used; its settings (timeouts, connection limit) are the listener's.
    pub async fn serve_edge(
        self,
        listener: tokio::net::TcpListener,
        router: Arc<HostRouter>,
        tls: Option<Arc<rustls::ServerConfig>>,
        shutdown: CancellationToken,
    ) -> Result<(), ProxyError> {
        server::serve(self.inner, listener, shutdown, server::Edge { router: Some(router), tls }).await
    }

    /// Replace the route table in one atomic step. Every request whose
    /// backend is chosen after this returns uses the new table, including
    /// requests on client keep-alive connections opened before it.
    pub fn set_routes(&self, table: RouteTable) {
        let mut registry = self.inner.lock_registry();
        self.inner.install(&mut registry, table);
    }

    /// Change the current table with `f` and swap the result in atomically.
    pub fn update_routes(&self, f: impl FnOnce(&mut RouteTable)) {
        let mut registry = self.inner.lock_registry();
        let mut table = RouteTable::clone(&self.inner.table.load().table);
        f(&mut table);
        self.inner.install(&mut registry, table);
    }

    /// The current route table.
    pub fn routes(&self) -> Arc<RouteTable> {
        self.inner.table.load().table.clone()
    }

    /// Wait until the given backends have nothing in flight (requests whose
    /// response body is not fully sent, and upgraded connections), or until
    /// `timeout`. At the deadline, what is still open on them is cut:
    /// waiting requests get a 502, HTTP/1.1 client connections whose
    /// answer is still streaming are closed and h2 streams reset (also
    /// when the client reads slowly or not at all), tunnels close, and the
    /// upstream connections with them. Idle
    /// pooled connections to them are closed either way. Call it after the
    /// backends left the rotation.
    pub async fn drain(&self, backends: &[BackendId], timeout: Duration) -> DrainReport {
        let started = tokio::time::Instant::now();
        let deadline = started + timeout;
        let states: Vec<Arc<BackendState>> = {
            let registry = self.inner.lock_registry();
            backends.iter().filter_map(|id| registry.get(id).cloned()).collect()
        };
        let at_start: Vec<(u64, u64)> = states.iter().map(|s| (s.inflight(), s.completed())).collect();
        let mut timed_out = false;
        for s in &states {
            if !s.wait_idle(deadline).await {
                timed_out = true;
                break;
            }
        }
        let finished = states
            .iter()
            .zip(&at_start)
            .map(|(s, &(inflight, completed))| s.completed().saturating_sub(completed).min(inflight))
            .sum();
        let mut cut = 0;
        if timed_out {
            for s in &states {
                let open = s.inflight();
                if open > 0 {
                    cut += open;
                    s.cut_all();
                }
            }
        }
        if cut > 0 {
            self.inner.drains_cut.fetch_add(1, Ordering::Relaxed);
            self.inner.cut.fetch_add(cut, Ordering::Relaxed);
        }
        for s in &states {
            s.pool.close_idle();
        }
        let report = DrainReport { finished, cut, elapsed: started.elapsed(), timed_out };
        tracing::debug!(?backends, ?report, "drain done");
        report
    }

    /// Requests and upgraded connections in flight on one backend.
    pub fn inflight(&self, backend: &BackendId) -> u64 {
        self.inner.lock_registry().get(backend).map_or(0, |s| s.inflight())
    }

    /// Requests waiting for a backend now (none in rotation for their
    /// color).
    pub fn queued(&self) -> u64 {
        self.inner.queued.load(Ordering::Relaxed)
    }

    /// Idle pooled upstream connections to one backend now.
    pub fn idle_connections(&self, backend: &BackendId) -> usize {
        self.inner.lock_registry().get(backend).map_or(0, |s| s.pool.idle_count())
    }

    /// A snapshot of every counter.
    pub fn stats(&self) -> ProxyStats {
        let table = self.routes();
        let registry = self.inner.lock_registry();
        let mut backends: Vec<BackendStats> = Vec::with_capacity(registry.len());
        let mut seen = std::collections::HashSet::new();
        for b in &table.backends {
            if let Some(s) = registry.get(&b.id) {
                if seen.insert(b.id.clone()) {
                    backends.push(BackendStats {
                        id: b.id.clone(),
                        color: b.color,
                        addr: b.addr,
                        in_rotation: b.in_rotation,
                        traffic: s.counters.snapshot(),
                    });
                }
            }
        }
        // Backends that left the table but still have something in flight.
        let mut gone: Vec<&Arc<BackendState>> = registry.values().filter(|s| !seen.contains(&s.id)).collect();
        gone.sort_by(|a, b| a.id.cmp(&b.id));
        for s in gone {
            backends.push(BackendStats {
                id: s.id.clone(),
                color: s.color,
                addr: s.addr,
                in_rotation: false,
                traffic: s.counters.snapshot(),
            });
        }
        ProxyStats {
            blue: self.inner.colors[0].snapshot(),
            green: self.inner.colors[1].snapshot(),
            backends,
            connections: self.inner.connections.load(Ordering::Relaxed),
            switches: self.inner.switches.load(Ordering::SeqCst),
            drains_cut: self.inner.drains_cut.load(Ordering::Relaxed),
            cut: self.inner.cut.load(Ordering::Relaxed),
        }
    }
}
