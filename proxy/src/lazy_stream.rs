//! A client socket that joins the runtime's poller only once an I/O call
//! on it would block. A client that connects, sends its request and reads
//! the answer (the usual `Connection: close` exchange) is often served
//! with its bytes already there: its socket is then never registered, and
//! the two `epoll_ctl` calls tokio makes per socket (add, then delete on
//! drop) are saved. HAProxy works the same way (speculative I/O).

use std::io::{self, IoSlice, Read, Write};
use std::net::Shutdown;
use std::pin::Pin;
use std::task::{Context, Poll};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;

/// The most a read before registration asks for: its buffer has to be
/// zeroed first (no unsafe code here), so it stays small; such reads are
/// rare (the first bytes are read into a scratch buffer of their own).
const UNREGISTERED_READ: usize = 4096;

/// A non-blocking TCP stream, registered with the runtime on first need.
pub(crate) enum LazyStream {
    /// Not registered yet.
    Raw(std::net::TcpStream),
    /// Registered: tokio's stream.
    Registered(TcpStream),
    /// Registering failed; every call fails.
    Broken,
}

impl LazyStream {
    /// Wrap `stream`, which must be in non-blocking mode.
    pub(crate) fn new(stream: std::net::TcpStream) -> LazyStream {
        LazyStream::Raw(stream)
    }

    /// The registered stream, registering it now if it is not yet.
    fn registered(&mut self) -> io::Result<&mut TcpStream> {
        if let LazyStream::Raw(_) = self {
            let LazyStream::Raw(raw) = std::mem::replace(self, LazyStream::Broken) else { unreachable!() };
            *self = LazyStream::Registered(TcpStream::from_std(raw)?);
        }
        match self {
            LazyStream::Registered(s) => Ok(s),
            _ => Err(io::Error::other("the client socket could not be registered")),
        }
    }

    /// One read without waiting; `WouldBlock` when nothing is there.
    pub(crate) fn try_read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self {
            LazyStream::Raw(s) => s.read(buf),
            LazyStream::Registered(s) => s.try_read(buf),
            LazyStream::Broken => Err(io::Error::other("broken client socket")),
        }
    }

    /// Ready once a read may return something (registers the socket).
    pub(crate) fn poll_read_ready(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.registered()?.poll_read_ready(cx)
    }

    /// Run `op` on the raw socket; on `WouldBlock`, register and hand over
    /// to `registered`.
    fn poll_io<T>(
        &mut self,
        cx: &mut Context<'_>,
        op: impl FnOnce(&mut std::net::TcpStream) -> io::Result<T>,
        registered: impl FnOnce(Pin<&mut TcpStream>, &mut Context<'_>) -> Poll<io::Result<T>>,
    ) -> Poll<io::Result<T>> {
        if let LazyStream::Raw(s) = self {
            match op(s) {
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                done => return Poll::Ready(done),
            }
        }
        registered(Pin::new(self.registered()?), cx)
    }
}

impl AsyncRead for LazyStream {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if let LazyStream::Raw(s) = this {
            let room = buf.remaining().min(UNREGISTERED_READ);
            match s.read(buf.initialize_unfilled_to(room)) {
                Ok(n) => {
                    buf.advance(n);
                    return Poll::Ready(Ok(()));
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(e) => return Poll::Ready(Err(e)),
            }
        }
        Pin::new(this.registered()?).poll_read(cx, buf)
    }
}

impl AsyncWrite for LazyStream {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        self.get_mut().poll_io(cx, |s| s.write(buf), |s, cx| s.poll_write(cx, buf))
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        self.get_mut().poll_io(cx, |s| s.write_vectored(bufs), |s, cx| s.poll_write_vectored(cx, bufs))
    }

    fn is_write_vectored(&self) -> bool {
        true
    }

    fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        // Nothing is buffered here.
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            LazyStream::Raw(s) => Poll::Ready(s.shutdown(Shutdown::Write)),
            LazyStream::Registered(s) => Pin::new(s).poll_shutdown(cx),
            LazyStream::Broken => Poll::Ready(Ok(())),
        }
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// A connected client and the server's side as a [`LazyStream`].
    pub(crate) async fn pair() -> (TcpStream, LazyStream) {
        let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let client = TcpStream::connect(l.local_addr().expect("addr")).await.expect("connect");
        let (server, _) = l.accept().expect("accept");
        server.set_nonblocking(true).expect("non-blocking");
        (client, LazyStream::new(server))
    }

    #[tokio::test]
    async fn bytes_already_there_are_served_without_registering() {
        let (mut client, mut server) = pair().await;
        client.write_all(b"ping").await.expect("write");
        // Wait for the bytes without registering: read until they are in.
        let mut buf = [0u8; 16];
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        let n = loop {
            match server.try_read(&mut buf) {
                Err(e) if e.kind() == io::ErrorKind::WouldBlock && std::time::Instant::now() < deadline => {
                    tokio::time::sleep(std::time::Duration::from_millis(1)).await
                }
                r => break r.expect("read"),
            }
        };
        assert_eq!(n, 4);
        server.write_all(b"pong").await.expect("answer");
        server.shutdown().await.expect("shutdown");
        assert!(matches!(server, LazyStream::Raw(_)), "never registered");
        let mut got = Vec::new();
        client.read_to_end(&mut got).await.expect("read");
        assert_eq!(got, b"pong");
    }

    #[tokio::test]
    async fn a_read_that_would_block_registers_and_waits() {
        let (mut client, mut server) = pair().await;
        let mut buf = [0u8; 16];
        // Nothing sent yet: the first poll would block, so it registers.
        let mut read_buf = ReadBuf::new(&mut buf);
        let first =
            std::future::poll_fn(|cx| Poll::Ready(Pin::new(&mut server).poll_read(cx, &mut read_buf))).await;
        assert!(first.is_pending());
        assert!(matches!(server, LazyStream::Registered(_)));
        client.write_all(b"late").await.expect("write");
        let n = tokio::time::timeout(std::time::Duration::from_secs(5), server.read(&mut buf))
            .await
            .expect("woken by the poller")
            .expect("read");
        assert_eq!(&buf[..n], b"late");
    }
}
