//! The state the proxy keeps for one backend across route swaps: counters,
//! connection pool, passive health, and the cancellation token that cuts
//! what is still open on it at a drain's deadline. Also the guard that
//! counts one request (or upgraded connection) in flight.

use crate::counters::Counters;
use crate::pool::Pool;
use crate::signal::{Signal, SignalWait};
use crate::{BackendId, Color, ProxyConfig};
use arc_swap::ArcSwap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};
use tokio::sync::Notify;

/// Milliseconds since the first call, never 0 (0 means "not down").
fn now_ms() -> u64 {
    static EPOCH: OnceLock<Instant> = OnceLock::new();
    let epoch = *EPOCH.get_or_init(Instant::now);
    u64::try_from(epoch.elapsed().as_millis()).unwrap_or(u64::MAX) + 1
}

/// One backend's long-lived state, shared by the compiled route tables
/// that name it and by everything in flight on it.
pub(crate) struct BackendState {
    pub(crate) id: BackendId,
    pub(crate) addr: SocketAddr,
    pub(crate) color: Color,
    pub(crate) counters: Counters,
    /// The counters of its color, which outlive it.
    pub(crate) color_counters: Arc<Counters>,
    pub(crate) pool: Pool,
    /// Fires when a drain cuts this backend; replaced by a fresh one after.
    cut: ArcSwap<Signal>,
    /// Woken when `inflight` drops to 0 while a drain waits.
    idle: Notify,
    /// Drains waiting now; guards only notify while there is one.
    drainers: AtomicUsize,
    /// Requests and upgraded connections that ended, ever.
    completed: AtomicU64,
    /// `now_ms()` until which connects are not tried first; 0 when healthy.
    down_until: AtomicU64,
    down_for: Duration,
    /// [`ProxyConfig::response_timeout`].
    pub(crate) response_timeout: Duration,
}

impl BackendState {
    pub(crate) fn new(
        id: BackendId,
        addr: SocketAddr,
        color: Color,
        color_counters: Arc<Counters>,
        config: &ProxyConfig,
    ) -> BackendState {
        BackendState {
            id,
            addr,
            color,
            counters: Counters::default(),
            color_counters,
            pool: Pool::new(addr, config.pool_max_idle, config.pool_idle_timeout, config.connect_timeout),
            cut: ArcSwap::from_pointee(Signal::default()),
            idle: Notify::new(),
            drainers: AtomicUsize::new(0),
            completed: AtomicU64::new(0),
            down_until: AtomicU64::new(0),
            down_for: config.unhealthy_backoff,
            response_timeout: config.response_timeout,
        }
    }

    /// A wait that ends when this backend is cut; it registers only once
    /// polled.
    pub(crate) fn cut_wait(&self) -> SignalWait {
        SignalWait::new(self.cut.load_full())
    }

    /// Cut everything open on this backend now, and arm a fresh signal so
    /// it can serve again later.
    pub(crate) fn cut_all(&self) {
        let old = self.cut.swap(Arc::new(Signal::default()));
        old.fire();
    }

    /// Requests and upgraded connections in flight.
    pub(crate) fn inflight(&self) -> u64 {
        self.counters.inflight.load(Ordering::SeqCst)
    }

    /// Requests and upgraded connections that ended, ever.
    pub(crate) fn completed(&self) -> u64 {
        self.completed.load(Ordering::SeqCst)
    }

    /// Whether a recent connect failed (passive health).
    pub(crate) fn is_down(&self) -> bool {
        let until = self.down_until.load(Ordering::Relaxed);
        until != 0 && now_ms() < until
    }

    /// A connect failed: try others first for a while.
    pub(crate) fn mark_down(&self) {
        let ms = u64::try_from(self.down_for.as_millis()).unwrap_or(u64::MAX);
        self.down_until.store(now_ms().saturating_add(ms), Ordering::Relaxed);
    }

    /// A connect succeeded.
    pub(crate) fn mark_up(&self) {
        if self.down_until.load(Ordering::Relaxed) != 0 {
            self.down_until.store(0, Ordering::Relaxed);
        }
    }

    /// Wait until nothing is in flight, or `deadline`. Returns whether it
    /// is idle. Woken by the guards; polls every 100 ms as a fallback.
    pub(crate) async fn wait_idle(&self, deadline: tokio::time::Instant) -> bool {
        self.drainers.fetch_add(1, Ordering::SeqCst);
        let idle = loop {
            let notified = self.idle.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if self.inflight() == 0 {
                break true;
            }
            tokio::select! {
                _ = notified => {}
                _ = tokio::time::sleep(Duration::from_millis(100)) => {}
                _ = tokio::time::sleep_until(deadline) => break self.inflight() == 0,
            }
        };
        self.drainers.fetch_sub(1, Ordering::SeqCst);
        idle
    }
}

/// Counts one request (or, once upgraded, one tunnel) in flight on a
/// backend and its color until dropped.
pub(crate) struct InflightGuard {
    backend: Arc<BackendState>,
    upgraded: bool,
    /// Whether dropping it counts as a completion (not for connects that
    /// failed before anything was sent).
    counts: bool,
}

impl InflightGuard {
    pub(crate) fn new(backend: Arc<BackendState>) -> InflightGuard {
        backend.counters.inflight.fetch_add(1, Ordering::SeqCst);
        backend.color_counters.inflight.fetch_add(1, Ordering::Relaxed);
        InflightGuard { backend, upgraded: false, counts: true }
    }

    /// The backend it counts on.
    pub(crate) fn backend(&self) -> &Arc<BackendState> {
        &self.backend
    }

    /// The request became a tunnel.
    pub(crate) fn upgrade(&mut self) {
        if !self.upgraded {
            self.upgraded = true;
            self.backend.counters.upgraded.fetch_add(1, Ordering::Relaxed);
            self.backend.color_counters.upgraded.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Drop without counting a completion: nothing was sent.
    pub(crate) fn abandon(mut self) {
        self.counts = false;
    }
}

impl Drop for InflightGuard {
    fn drop(&mut self) {
        let b = &self.backend;
        if self.upgraded {
            b.counters.upgraded.fetch_sub(1, Ordering::Relaxed);
            b.color_counters.upgraded.fetch_sub(1, Ordering::Relaxed);
        }
        if self.counts {
            b.completed.fetch_add(1, Ordering::SeqCst);
        }
        b.color_counters.inflight.fetch_sub(1, Ordering::Relaxed);
        let before = b.counters.inflight.fetch_sub(1, Ordering::SeqCst);
        if before == 1 && b.drainers.load(Ordering::SeqCst) > 0 {
            b.idle.notify_waiters();
        }
    }
}
