//! A client socket that joins the runtime's poller only once an I/O call
//! on it would block. A client that connects, sends its request and reads
//! the answer (the usual `Connection: close` exchange) is often served
//! with its bytes already there: its socket is then never registered, and
//! the two `epoll_ctl` calls tokio makes per socket (add, then delete on
//! drop) are saved. HAProxy works the same way (speculative I/O).
//!
//! It also sends a plain HTTP/1.1 connection's last answer with
//! `MSG_MORE` once its [`LastWrite`] is armed, for the shutdown to carry
//! it with the FIN (`last_write`).

use crate::last_write::LastWrite;
use std::io::{self, IoSlice, Read, Write};
use std::net::Shutdown;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use tokio::io::{AsyncRead, AsyncWrite, Interest, ReadBuf};
use tokio::net::TcpStream;

/// The most a read before registration asks for: its buffer has to be
/// zeroed first (no unsafe code here), so it stays small; such reads are
/// rare (the first bytes are read into a scratch buffer of their own).
const UNREGISTERED_READ: usize = 4096;

/// A non-blocking TCP stream, registered with the runtime on first need;
/// with a [`LastWrite`], the connection's last bytes go out with its FIN.
pub(crate) struct LazyStream {
    sock: Sock,
    /// Armed when the writes end the connection (plain HTTP/1.1 only).
    last: Option<Arc<LastWrite>>,
    /// Bytes were sent with `MSG_MORE` and may be held by the kernel.
    held: bool,
}

/// The socket, before and after registration.
enum Sock {
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
        LazyStream { sock: Sock::Raw(stream), last: None, held: false }
    }

    /// Send the writes made once `last` is armed with `MSG_MORE`, for the
    /// shutdown to carry them with the FIN.
    pub(crate) fn hold_last_write(&mut self, last: Arc<LastWrite>) {
        self.last = Some(last);
    }

    /// The registered stream, registering it now if it is not yet.
    fn registered(&mut self) -> io::Result<&mut TcpStream> {
        self.sock.registered()
    }

    /// Push bytes held by `MSG_MORE`: the connection reads on, so the
    /// response was not its last after all.
    fn release(&mut self) -> io::Result<()> {
        if std::mem::take(&mut self.held) {
            if let Some(last) = &self.last {
                last.disarm();
            }
            match &self.sock {
                // Setting TCP_NODELAY sends what is queued.
                Sock::Raw(s) => s.set_nodelay(true)?,
                Sock::Registered(s) => s.set_nodelay(true)?,
                Sock::Broken => {}
            }
        }
        Ok(())
    }

    /// One read without waiting; `WouldBlock` when nothing is there.
    pub(crate) fn try_read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.release()?;
        match &mut self.sock {
            Sock::Raw(s) => s.read(buf),
            Sock::Registered(s) => s.try_read(buf),
            Sock::Broken => Err(io::Error::other("broken client socket")),
        }
    }

    /// Ready once a read may return something (registers the socket).
    pub(crate) fn poll_read_ready(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.release()?;
        self.registered()?.poll_read_ready(cx)
    }

    /// Write `bufs`, with `MSG_MORE` once the connection's last write is
    /// armed.
    fn poll_send(&mut self, cx: &mut Context<'_>, bufs: &[IoSlice<'_>]) -> Poll<io::Result<usize>> {
        if !self.last.as_ref().is_some_and(|l| l.is_armed()) {
            return self.sock.poll_io(
                cx,
                |s| s.write_vectored(bufs),
                |s, cx| s.poll_write_vectored(cx, bufs),
            );
        }
        self.held = true;
        let more = |s: &dyn std::os::fd::AsFd| {
            socket2::SockRef::from(&s.as_fd())
                .send_vectored_with_flags(bufs, libc::MSG_MORE | libc::MSG_NOSIGNAL)
        };
        self.sock.poll_io(
            cx,
            |s| more(s),
            |s, cx| loop {
                std::task::ready!(s.poll_write_ready(cx))?;
                match s.try_io(Interest::WRITABLE, || more(&*s)) {
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                    done => return Poll::Ready(done),
                }
            },
        )
    }
}

impl Sock {
    /// The registered stream, registering it now if it is not yet.
    fn registered(&mut self) -> io::Result<&mut TcpStream> {
        if let Sock::Raw(_) = self {
            let Sock::Raw(raw) = std::mem::replace(self, Sock::Broken) else { unreachable!() };
            *self = Sock::Registered(TcpStream::from_std(raw)?);
        }
        match self {
            Sock::Registered(s) => Ok(s),
            _ => Err(io::Error::other("the client socket could not be registered")),
        }
    }

    /// Run `op` on the raw socket; on `WouldBlock`, register and hand over
    /// to `registered`.
    fn poll_io<T>(
        &mut self,
        cx: &mut Context<'_>,
        op: impl FnOnce(&mut std::net::TcpStream) -> io::Result<T>,
        registered: impl FnOnce(Pin<&mut TcpStream>, &mut Context<'_>) -> Poll<io::Result<T>>,
    ) -> Poll<io::Result<T>> {
        if let Sock::Raw(s) = self {
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
        this.release()?;
        if let Sock::Raw(s) = &mut this.sock {
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
        self.get_mut().poll_send(cx, &[IoSlice::new(buf)])
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        self.get_mut().poll_send(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        true
    }

    fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        // Nothing is buffered here; bytes the kernel holds for the FIN go
        // out with the shutdown (or the close) that follows.
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match &mut self.get_mut().sock {
            Sock::Raw(s) => Poll::Ready(s.shutdown(Shutdown::Write)),
            Sock::Registered(s) => Pin::new(s).poll_shutdown(cx),
            Sock::Broken => Poll::Ready(Ok(())),
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
        assert!(matches!(server.sock, Sock::Raw(_)), "never registered");
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
        assert!(matches!(server.sock, Sock::Registered(_)));
        client.write_all(b"late").await.expect("write");
        let n = tokio::time::timeout(std::time::Duration::from_secs(5), server.read(&mut buf))
            .await
            .expect("woken by the poller")
            .expect("read");
        assert_eq!(&buf[..n], b"late");
    }

    /// Whether `client` receives anything within 200 ms.
    async fn hears_within_200ms(client: &mut TcpStream, buf: &mut [u8]) -> Option<usize> {
        tokio::time::timeout(std::time::Duration::from_millis(200), client.read(buf))
            .await
            .ok()
            .map(|r| r.expect("read"))
    }

    #[tokio::test]
    async fn the_last_write_waits_for_the_shutdown_and_goes_with_it() {
        let (mut client, mut server) = pair().await;
        let last = Arc::new(LastWrite::default());
        server.hold_last_write(last.clone());
        server.write_all(b"first").await.expect("write");
        let mut buf = [0u8; 16];
        assert_eq!(hears_within_200ms(&mut client, &mut buf).await, Some(5), "not armed: sent at once");
        last.arm();
        server.write_all(b"last").await.expect("write");
        assert_eq!(hears_within_200ms(&mut client, &mut buf).await, None, "armed: held for the FIN");
        server.shutdown().await.expect("shutdown");
        let mut got = Vec::new();
        client.read_to_end(&mut got).await.expect("read");
        assert_eq!(got, b"last", "the held bytes and the end arrive together");
    }

    #[tokio::test]
    async fn a_read_after_a_held_write_sends_it() {
        let (mut client, mut server) = pair().await;
        let last = Arc::new(LastWrite::default());
        server.hold_last_write(last.clone());
        last.arm();
        server.write_all(b"answer").await.expect("write");
        // The connection goes on after all: reading for the next request
        // pushes what the kernel holds.
        let mut scratch = [0u8; 8];
        assert_eq!(server.try_read(&mut scratch).map_err(|e| e.kind()), Err(io::ErrorKind::WouldBlock));
        let mut buf = [0u8; 16];
        assert_eq!(hears_within_200ms(&mut client, &mut buf).await, Some(6));
        assert!(!last.is_armed(), "disarmed: later answers go out at once");
        server.write_all(b"next").await.expect("write");
        assert_eq!(hears_within_200ms(&mut client, &mut buf).await, Some(4));
    }
}
