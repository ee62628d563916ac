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
#![forbid(unsafe_code)]

mod routes;
mod stats;

pub use routes::{Backend, BackendId, Color, PreviewRule, RouteTable, StickyRule, Weights};
pub use stats::{BackendStats, DrainReport, LatencyHistogram, ProxyStats, TrafficStats};

use std::sync::Arc;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// Default time a request waits for a healthy backend before a 503 (10 seconds).
pub const DEFAULT_QUEUE_TIMEOUT: Duration = Duration::from_secs(10);
/// Default time a client has to send its request headers (10 seconds), so a
/// slow client cannot hold a connection slot for ever.
pub const DEFAULT_HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);
/// Default maximum of client connections per listener (10,000).
pub const DEFAULT_MAX_CONNECTIONS: usize = 10_000;
/// Default time to establish an upstream TCP connection (3 seconds).
pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(3);
/// Default time an idle pooled upstream connection is kept (90 seconds).
pub const DEFAULT_POOL_IDLE_TIMEOUT: Duration = Duration::from_secs(90);
/// Default maximum of idle pooled connections per backend (1,024).
pub const DEFAULT_POOL_MAX_IDLE: usize = 1024;

/// Settings fixed for the life of a [`Proxy`].
#[derive(Debug, Clone)]
pub struct ProxyConfig {
    /// How long a request waits for a backend when none is available.
    pub queue_timeout: Duration,
    /// How long a client may take to send its request headers.
    pub header_read_timeout: Duration,
    /// Client connections accepted at once per listener; more wait in the
    /// kernel's backlog.
    pub max_connections: usize,
    /// Upstream connect timeout.
    pub connect_timeout: Duration,
    /// Idle pooled upstream connections are closed after this.
    pub pool_idle_timeout: Duration,
    /// Idle pooled upstream connections kept per backend.
    pub pool_max_idle: usize,
}

impl Default for ProxyConfig {
    fn default() -> Self {
        ProxyConfig {
            queue_timeout: DEFAULT_QUEUE_TIMEOUT,
            header_read_timeout: DEFAULT_HEADER_READ_TIMEOUT,
            max_connections: DEFAULT_MAX_CONNECTIONS,
            connect_timeout: DEFAULT_CONNECT_TIMEOUT,
            pool_idle_timeout: DEFAULT_POOL_IDLE_TIMEOUT,
            pool_max_idle: DEFAULT_POOL_MAX_IDLE,
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

/// A handle to one proxy: cheap to clone, shared by its listeners and the
/// code that changes its routes.
#[derive(Clone)]
pub struct Proxy {
    #[allow(dead_code)]
    inner: Arc<()>,
}

impl Proxy {
    /// A proxy with an empty route table (every request waits, then 503).
    pub fn new(config: ProxyConfig) -> Proxy {
        let _ = config;
        todo!("bg-proxy: implemented in the proxy work")
    }

    /// Serve one listener until `shutdown` fires, then stop accepting and
    /// let open connections finish their current request (bounded by the
    /// queue timeout). HTTP/1.1 and h2c are both accepted.
    pub async fn serve(
        self,
        listener: tokio::net::TcpListener,
        shutdown: CancellationToken,
    ) -> Result<(), ProxyError> {
        let _ = (listener, shutdown);
        todo!()
    }

    /// Replace the route table in one atomic step. Every request whose
    /// backend is chosen after this returns uses the new table, including
    /// requests on client keep-alive connections opened before it.
    pub fn set_routes(&self, table: RouteTable) {
        let _ = table;
        todo!()
    }

    /// Change the current table with `f` and swap the result in atomically.
    pub fn update_routes(&self, f: impl FnOnce(&mut RouteTable)) {
        let _ = f;
        todo!()
    }

    /// The current route table.
    pub fn routes(&self) -> Arc<RouteTable> {
        todo!()
    }

    /// Wait until the given backends have nothing in flight (requests whose
    /// response body is not fully sent, and upgraded connections), or until
    /// `timeout`. At the deadline, what is still open on them is cut. Idle
    /// pooled connections to them are closed either way. Call it after the
    /// backends left the rotation.
    pub async fn drain(&self, backends: &[BackendId], timeout: Duration) -> DrainReport {
        let _ = (backends, timeout);
        todo!()
    }

    /// Requests and upgraded connections in flight on one backend.
    pub fn inflight(&self, backend: &BackendId) -> u64 {
        let _ = backend;
        todo!()
    }

    /// A snapshot of every counter.
    pub fn stats(&self) -> ProxyStats {
        todo!()
    }
}
