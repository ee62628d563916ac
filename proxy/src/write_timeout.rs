//! A client stream whose writes may not stay blocked for longer than a
//! timeout: a client that stops reading (its receive window and our send
//! buffer full) would otherwise hold its connection slot, its request's
//! in-flight count and the upstream connection for as long as it likes.
//!
//! The timer is armed only when a write would block, and a write that
//! makes progress disarms it; a connection that never blocks never
//! creates one.

use std::future::Future;
use std::io::{self, IoSlice};
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::{Instant, Sleep};

/// `S` with a bound on how long its writes may block.
pub(crate) struct WriteTimeout<S> {
    inner: S,
    timeout: Duration,
    /// The timer, kept once made: a connection that blocks once often
    /// blocks again.
    timer: Option<Pin<Box<Sleep>>>,
    /// The timer runs for the write blocked now.
    armed: bool,
}

impl<S> WriteTimeout<S> {
    /// Wrap `inner`; a write blocked for `timeout` fails with `TimedOut`.
    pub(crate) fn new(inner: S, timeout: Duration) -> WriteTimeout<S> {
        WriteTimeout { inner, timeout, timer: None, armed: false }
    }

    /// What a write call returned: progress disarms the timer; a block
    /// arms it (or fails once it ran out).
    fn check<T>(&mut self, cx: &mut Context<'_>, result: Poll<io::Result<T>>) -> Poll<io::Result<T>> {
        if result.is_ready() {
            self.armed = false;
            return result;
        }
        if !self.armed {
            self.armed = true;
            let deadline = Instant::now() + self.timeout;
            match &mut self.timer {
                Some(t) => t.as_mut().reset(deadline),
                None => self.timer = Some(Box::pin(tokio::time::sleep_until(deadline))),
            }
        }
        match self.timer.as_mut().map(|t| t.as_mut().poll(cx)) {
            Some(Poll::Ready(())) => Poll::Ready(Err(io::Error::new(
                io::ErrorKind::TimedOut,
                format!("the client read nothing for {:?}", self.timeout),
            ))),
            _ => Poll::Pending,
        }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for WriteTimeout<S> {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_read(cx, buf)
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for WriteTimeout<S> {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let result = Pin::new(&mut this.inner).poll_write(cx, buf);
        this.check(cx, result)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let result = Pin::new(&mut this.inner).poll_write_vectored(cx, bufs);
        this.check(cx, result)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let result = Pin::new(&mut this.inner).poll_flush(cx);
        this.check(cx, result)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let result = Pin::new(&mut this.inner).poll_shutdown(cx);
        this.check(cx, result)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncWriteExt;

    #[tokio::test]
    async fn a_write_the_peer_never_reads_fails_after_the_timeout_and_progress_disarms_it() {
        let (client, server) = tokio::io::duplex(16);
        let mut w = WriteTimeout::new(server, Duration::from_millis(200));
        // Fits: no timer.
        w.write_all(b"0123456789").await.expect("room for it");
        assert!(w.timer.is_none(), "a write that never blocked made no timer");
        let started = std::time::Instant::now();
        let err = w.write_all(&[0u8; 64]).await.expect_err("the peer reads nothing");
        assert_eq!(err.kind(), io::ErrorKind::TimedOut);
        let waited = started.elapsed();
        assert!(waited >= Duration::from_millis(200) && waited < Duration::from_secs(2), "{waited:?}");
        drop(client);
    }

    #[tokio::test]
    async fn a_slow_but_steady_reader_is_not_cut() {
        let (mut client, server) = tokio::io::duplex(16);
        let mut w = WriteTimeout::new(server, Duration::from_millis(300));
        let reader = tokio::spawn(async move {
            let mut got = Vec::new();
            let mut buf = [0u8; 8];
            loop {
                tokio::time::sleep(Duration::from_millis(20)).await;
                match tokio::io::AsyncReadExt::read(&mut client, &mut buf).await {
                    Ok(0) | Err(_) => return got,
                    Ok(n) => got.extend_from_slice(&buf[..n]),
                }
            }
        });
        // 512 bytes at 8 per 20 ms take over a second, far past the timeout,
        // but no single write waits that long.
        w.write_all(&[7u8; 512]).await.expect("steady progress keeps it alive");
        w.shutdown().await.expect("shutdown");
        drop(w);
        assert_eq!(reader.await.expect("reader").len(), 512);
    }
}
