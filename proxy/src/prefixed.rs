//! An IO that first returns bytes already read from it, then passes every
//! call through: the accept loop reads a client's first bytes itself (to
//! tell HTTP/1.1 from h2c) and hands them to hyper this way, instead of
//! peeking at them and letting hyper read them a second time.

use bytes::{Buf, Bytes};
use hyper::rt::{Read, ReadBufCursor, Write};
use std::io::{self, IoSlice};
use std::pin::Pin;
use std::task::{Context, Poll};

/// `io`, whose first reads return `prefix`.
pub(crate) struct Prefixed<T> {
    prefix: Bytes,
    io: T,
}

impl<T> Prefixed<T> {
    /// Reads return `prefix` first, then what `io` reads.
    pub(crate) fn new(prefix: Bytes, io: T) -> Prefixed<T> {
        Prefixed { prefix, io }
    }
}

impl<T: Read + Unpin> Read for Prefixed<T> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        mut buf: ReadBufCursor<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if this.prefix.is_empty() {
            return Pin::new(&mut this.io).poll_read(cx, buf);
        }
        let n = this.prefix.len().min(buf.remaining());
        buf.put_slice(&this.prefix[..n]);
        this.prefix.advance(n);
        if this.prefix.is_empty() {
            // Free the buffer now rather than with the connection.
            this.prefix = Bytes::new();
        }
        Poll::Ready(Ok(()))
    }
}

impl<T: Write + Unpin> Write for Prefixed<T> {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().io).poll_write(cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_shutdown(cx)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().io).poll_write_vectored(cx, bufs)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use hyper_util::rt::TokioIo;
    use std::future::poll_fn;
    use tokio::io::AsyncWriteExt;

    /// One read of at most `max` bytes.
    async fn read_some<T: Read + Unpin>(io: &mut T, max: usize) -> Vec<u8> {
        let mut raw = vec![0u8; max];
        let mut buf = hyper::rt::ReadBuf::new(&mut raw);
        poll_fn(|cx| Pin::new(&mut *io).poll_read(cx, buf.unfilled())).await.expect("read");
        buf.filled().to_vec()
    }

    #[tokio::test]
    async fn the_prefix_comes_first_then_the_stream() {
        let (a, mut b) = tokio::io::duplex(64);
        let mut io = Prefixed::new(Bytes::from_static(b"hello "), TokioIo::new(a));
        b.write_all(b"world").await.expect("write");
        assert_eq!(read_some(&mut io, 4).await, b"hell");
        assert_eq!(read_some(&mut io, 64).await, b"o ");
        assert_eq!(read_some(&mut io, 64).await, b"world");
        poll_fn(|cx| Pin::new(&mut io).poll_write(cx, b"back")).await.expect("write through");
        let mut got = [0u8; 4];
        tokio::io::AsyncReadExt::read_exact(&mut b, &mut got).await.expect("read back");
        assert_eq!(&got, b"back");
    }
}
