//! Upstream connection pool of one backend: idle HTTP/1.1 connections
//! kept most recently used first, up to a maximum and an idle timeout. A
//! connection comes back only once its answer was read to the end and
//! the server keeps it open, so every idle connection is ready to send;
//! one the server closed meanwhile is noticed at checkout.

use crate::upstream::{Conn, ConnectError};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// A connection checked out of the pool, to be checked back in when its
/// response is complete.
pub(crate) struct Pooled {
    pub(crate) conn: Conn,
    /// The pool generation it was taken in; a connection from before
    /// [`Pool::close_idle`] is never put back.
    generation: u64,
}

struct Idle {
    conn: Conn,
    since: Instant,
}

/// The idle connections of one backend.
pub(crate) struct Pool {
    addr: SocketAddr,
    idle: Mutex<Vec<Idle>>,
    generation: AtomicU64,
    max_idle: usize,
    idle_timeout: Duration,
    connect_timeout: Duration,
}

impl Pool {
    /// An empty pool for `addr`.
    pub(crate) fn new(
        addr: SocketAddr,
        max_idle: usize,
        idle_timeout: Duration,
        connect_timeout: Duration,
    ) -> Pool {
        Pool {
            addr,
            idle: Mutex::new(Vec::new()),
            generation: AtomicU64::new(0),
            max_idle,
            idle_timeout,
            connect_timeout,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<Idle>> {
        // A panic while holding this lock leaves a plain Vec behind, which
        // is still consistent.
        self.idle.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The most recently used idle connection that is still open.
    pub(crate) async fn checkout(&self) -> Option<Pooled> {
        let generation = self.generation.load(Ordering::Acquire);
        let now = Instant::now();
        loop {
            let entry = {
                let mut idle = self.lock();
                let entry = idle.pop()?;
                if now.duration_since(entry.since) >= self.idle_timeout {
                    // Everything below is older still.
                    idle.clear();
                    return None;
                }
                entry
            };
            let mut conn = entry.conn;
            if std::future::poll_fn(|cx| std::task::Poll::Ready(conn.is_reusable(cx))).await {
                conn.reused = true;
                return Some(Pooled { conn, generation });
            }
        }
    }

    /// A fresh connection.
    pub(crate) async fn connect(&self) -> Result<Pooled, ConnectError> {
        let generation = self.generation.load(Ordering::Acquire);
        let conn = Conn::connect(self.addr, self.connect_timeout).await?;
        Ok(Pooled { conn, generation })
    }

    /// Put a connection whose last answer was read to its end back.
    pub(crate) fn checkin(&self, pooled: Pooled) {
        let mut idle = self.lock();
        // Checked under the lock so that close_idle cannot slip in between.
        if idle.len() < self.max_idle && self.current(pooled.generation) {
            idle.push(Idle { conn: pooled.conn, since: Instant::now() });
        }
    }

    fn current(&self, generation: u64) -> bool {
        self.generation.load(Ordering::Acquire) == generation
    }

    /// Close every idle connection, and refuse the ones checked out now
    /// when they come back.
    pub(crate) fn close_idle(&self) {
        let closed = {
            let mut idle = self.lock();
            self.generation.fetch_add(1, Ordering::AcqRel);
            std::mem::take(&mut *idle)
        };
        // Closing the sockets happens outside the lock.
        drop(closed);
    }

    /// Close idle connections older than the idle timeout.
    pub(crate) fn reap(&self, now: Instant) {
        let expired: Vec<Idle> = {
            let mut idle = self.lock();
            let keep_from = idle
                .iter()
                .position(|e| now.duration_since(e.since) < self.idle_timeout)
                .unwrap_or(idle.len());
            idle.drain(..keep_from).collect()
        };
        drop(expired);
    }

    /// Idle connections now.
    pub(crate) fn idle_count(&self) -> usize {
        self.lock().len()
    }
}
