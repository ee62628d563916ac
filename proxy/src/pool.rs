//! Upstream connection pool of one backend: HTTP/1.1 connections over TCP
//! with `TCP_NODELAY`, kept idle (most recently used first) up to a maximum
//! and an idle timeout. A connection is handed back only once its response
//! body was read to the end, so every idle connection is ready to send.

use hyper::body::Incoming;
use hyper::client::conn::http1::{self, SendRequest};
use hyper_util::rt::TokioIo;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::net::TcpStream;
use tokio_util::sync::CancellationToken;

/// The request side of one upstream connection. Requests are forwarded
/// with the client's body as is.
pub(crate) type Sender = SendRequest<Incoming>;

/// Why no upstream connection could be made.
#[derive(Debug, thiserror::Error)]
pub(crate) enum ConnectError {
    /// The TCP connect failed.
    #[error("connect to {addr} failed: {source}")]
    Io {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    /// The TCP connect took too long.
    #[error("connect to {addr} timed out after {timeout:?}")]
    Timeout { addr: SocketAddr, timeout: Duration },
    /// The HTTP/1.1 handshake failed.
    #[error("handshake with {addr} failed: {source}")]
    Handshake {
        addr: SocketAddr,
        #[source]
        source: hyper::Error,
    },
}

/// A connection checked out of the pool, to be checked back in when its
/// response is complete.
pub(crate) struct Pooled {
    pub(crate) sender: Sender,
    /// The pool generation it was taken in; a connection from before
    /// [`Pool::close_idle`] is never put back.
    generation: u64,
}

struct Idle {
    sender: Sender,
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
    pub(crate) fn checkout(&self) -> Option<Pooled> {
        let generation = self.generation.load(Ordering::Acquire);
        let now = Instant::now();
        let mut idle = self.lock();
        while let Some(entry) = idle.pop() {
            if now.duration_since(entry.since) >= self.idle_timeout {
                // Everything below is older still.
                idle.clear();
                return None;
            }
            if !entry.sender.is_closed() {
                return Some(Pooled { sender: entry.sender, generation });
            }
        }
        None
    }

    /// A fresh connection. Its connection task ends when `cut` fires.
    pub(crate) async fn connect(&self, cut: CancellationToken) -> Result<Pooled, ConnectError> {
        let generation = self.generation.load(Ordering::Acquire);
        let addr = self.addr;
        let stream = match tokio::time::timeout(self.connect_timeout, TcpStream::connect(addr)).await {
            Ok(Ok(s)) => s,
            Ok(Err(source)) => return Err(ConnectError::Io { addr, source }),
            Err(_) => return Err(ConnectError::Timeout { addr, timeout: self.connect_timeout }),
        };
        let _ = stream.set_nodelay(true);
        let (sender, conn) = http1::Builder::new()
            .handshake(TokioIo::new(stream))
            .await
            .map_err(|source| ConnectError::Handshake { addr, source })?;
        tokio::spawn(async move {
            tokio::select! {
                res = conn.with_upgrades() => {
                    if let Err(e) = res {
                        tracing::debug!(%addr, error = %e, "upstream connection ended");
                    }
                }
                _ = cut.cancelled() => {}
            }
        });
        Ok(Pooled { sender, generation })
    }

    /// Put a connection whose last response is complete back. A connection
    /// that is not ready yet (hyper's dispatcher has not caught up with the
    /// end of the body) is put back as soon as it is.
    pub(crate) fn checkin(self: &Arc<Self>, pooled: Pooled) {
        if pooled.sender.is_closed() || !self.current(pooled.generation) {
            return;
        }
        if pooled.sender.is_ready() {
            self.push(pooled);
            return;
        }
        let pool = self.clone();
        tokio::spawn(async move {
            let mut pooled = pooled;
            let ready = tokio::time::timeout(Duration::from_secs(1), pooled.sender.ready()).await;
            if matches!(ready, Ok(Ok(()))) {
                pool.push(pooled);
            }
        });
    }

    fn current(&self, generation: u64) -> bool {
        self.generation.load(Ordering::Acquire) == generation
    }

    fn push(&self, pooled: Pooled) {
        let mut idle = self.lock();
        // Checked under the lock so that close_idle cannot slip in between.
        if idle.len() < self.max_idle && self.current(pooled.generation) {
            idle.push(Idle { sender: pooled.sender, since: Instant::now() });
        }
    }

    /// Close every idle connection, and refuse the ones checked out now
    /// when they come back.
    pub(crate) fn close_idle(&self) {
        let closed = {
            let mut idle = self.lock();
            self.generation.fetch_add(1, Ordering::AcqRel);
            std::mem::take(&mut *idle)
        };
        // Dropping the senders ends their connection tasks, outside the lock.
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
