//! The proxy's HTTP/1.1 client side: one upstream connection, driven by
//! the task of the request that uses it. The request's head is written in
//! one write, its body streamed after it, and the answer's head parsed
//! straight from the connection's read buffer; the answer's body is then
//! read by [`crate::body::ProxyBody`] from the same buffer.
//!
//! hyper's client runs each connection as a task of its own, so every
//! request crossed two channels and two task wake-ups, and the answer's
//! body a third channel; the profile put that at about a third of the
//! proxy's user time per request. Here nothing is spawned and nothing is
//! sent between tasks.

pub(crate) mod framing;
#[cfg(test)]
mod props;
mod request;
mod response;

pub(crate) use framing::{Decoder, Step};
pub(crate) use request::RequestHead;
pub(crate) use response::ResponseHead;

use bytes::BytesMut;
use hyper::body::Incoming;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

/// What a read asks room for at least, once the buffer's spare room fell
/// below it (8 KiB, as hyper).
const READ_CHUNK: usize = 8 * 1024;
/// What a read asks room for once reads fill the buffer: bulk bodies move
/// in larger frames (64 KiB).
const READ_CHUNK_BULK: usize = 64 * 1024;

/// Why no upstream connection could be made.
#[derive(Debug, thiserror::Error)]
pub(crate) enum ConnectError {
    /// The TCP connect failed.
    #[error("connect to {addr} failed: {source}")]
    Io {
        addr: SocketAddr,
        #[source]
        source: io::Error,
    },
    /// The TCP connect took too long.
    #[error("connect to {addr} timed out after {timeout:?}")]
    Timeout { addr: SocketAddr, timeout: Duration },
}

/// Why an exchange on a connection failed.
#[derive(Debug, thiserror::Error)]
pub(crate) enum ExchangeError {
    /// Writing the request's head failed: nothing of it can have been
    /// taken, and its body was not touched.
    #[error("sending the request failed: {0}")]
    NotSent(#[source] io::Error),
    /// The connection closed before a byte of an answer came, and the
    /// request's body was not touched: the server may have closed an idle
    /// connection just as the request went out.
    #[error("the backend closed the connection without answering")]
    NoAnswer,
    /// The request went whole, and no answer began within the response
    /// timeout; the connection is not reused.
    #[error("the backend did not begin its answer within {0:?}")]
    TimedOut(Duration),
    /// Anything else: a broken or oversized answer, an I/O error, a client
    /// body that failed.
    #[error("{0}")]
    Failed(String),
    /// The client's body grew past its limit while it was sent; the
    /// connection is not reused.
    #[error("the request body is larger than allowed")]
    TooLarge,
}

impl ExchangeError {
    /// Whether the request may go out again (on another connection or
    /// backend): nothing of it was taken, or it is idempotent, without a
    /// body, and got no answer (RFC 9110 §9.2.2).
    pub(crate) fn can_resend(&self, head: &RequestHead) -> bool {
        match self {
            ExchangeError::NotSent(_) => true,
            ExchangeError::NoAnswer => head.is_retryable(),
            ExchangeError::TimedOut(_) | ExchangeError::Failed(_) | ExchangeError::TooLarge => false,
        }
    }
}

/// One upstream connection and the bytes read from it that are not used
/// yet.
pub(crate) struct Conn {
    stream: TcpStream,
    /// Read, not yet consumed: the rest of an answer, or early bytes of
    /// a tunnel.
    pub(crate) buf: BytesMut,
    /// The connection carried a request before (it came from the pool).
    pub(crate) reused: bool,
    /// Reads have filled the buffer: ask for more room per read.
    bulk: bool,
    /// The server closed its side.
    pub(crate) eof: bool,
}

impl Conn {
    /// A new connection to `addr`, with `TCP_NODELAY`.
    pub(crate) async fn connect(addr: SocketAddr, timeout: Duration) -> Result<Conn, ConnectError> {
        let stream = match tokio::time::timeout(timeout, TcpStream::connect(addr)).await {
            Ok(Ok(s)) => s,
            Ok(Err(source)) => return Err(ConnectError::Io { addr, source }),
            Err(_) => return Err(ConnectError::Timeout { addr, timeout }),
        };
        let _ = stream.set_nodelay(true);
        Ok(Conn { stream, buf: BytesMut::new(), reused: false, bulk: false, eof: false })
    }

    /// Whether an idle connection can carry another request: the server
    /// has neither closed it nor sent anything unasked. Costs no system
    /// call unless the runtime saw the socket become readable.
    pub(crate) fn is_reusable(&mut self, cx: &mut Context<'_>) -> bool {
        if self.eof || !self.buf.is_empty() {
            return false;
        }
        match self.stream.poll_read_ready(cx) {
            Poll::Pending => true,
            Poll::Ready(Err(_)) => false,
            Poll::Ready(Ok(())) => {
                let mut probe = [0u8; 1];
                matches!(self.stream.try_read(&mut probe), Err(e) if e.kind() == io::ErrorKind::WouldBlock)
            }
        }
    }

    /// Read more into the buffer; `Ok(0)` once the server closed its side.
    pub(crate) fn poll_fill(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<usize>> {
        let want = if self.bulk { READ_CHUNK_BULK } else { READ_CHUNK };
        if self.buf.capacity() - self.buf.len() < want / 2 {
            self.buf.reserve(want);
        }
        let room = self.buf.capacity() - self.buf.len();
        let n =
            std::task::ready!(tokio_util::io::poll_read_buf(Pin::new(&mut self.stream), cx, &mut self.buf))?;
        if n == 0 {
            self.eof = true;
        } else if n == room {
            self.bulk = true;
        }
        Poll::Ready(Ok(n))
    }

    /// Read more into the buffer; `Ok(0)` once the server closed its side.
    pub(crate) async fn fill(&mut self) -> io::Result<usize> {
        std::future::poll_fn(|cx| self.poll_fill(cx)).await
    }

    /// Send one request and read its answer's head, which must begin
    /// within `response_timeout` of the request's end. The answer's body is
    /// left in the connection for [`Decoder`] to cut. Returns the head and
    /// whether the connection can carry another request once that body is
    /// read.
    pub(crate) async fn exchange(
        &mut self,
        head: &RequestHead,
        body: &mut Incoming,
        response_timeout: Duration,
    ) -> Result<(ResponseHead, bool), ExchangeError> {
        self.stream.write_all(head.bytes()).await.map_err(ExchangeError::NotSent)?;
        let mut complete = true;
        let mut write_failed = None;
        if let Some(chunked) = head.body_chunked() {
            // Boxed: most requests have no body, and this future is large.
            match Box::pin(request::write_body(self, body, chunked, head.body_limit())).await {
                Ok(request::BodySent::Whole) => {}
                // The server answered before taking all of it: that answer
                // is read, and the connection closed after it.
                Ok(request::BodySent::Answered) => complete = false,
                Err(request::BodyError::Client(e)) => {
                    return Err(ExchangeError::Failed(format!(
                        "reading the client's request body failed: {e}"
                    )))
                }
                Err(request::BodyError::TooLarge) => return Err(ExchangeError::TooLarge),
                Err(request::BodyError::Write(e)) => {
                    complete = false;
                    write_failed = Some(e);
                }
            }
        }
        let read = tokio::time::timeout(response_timeout, response::read_head(self, head.is_head()));
        let Ok(read) = read.await else { return Err(ExchangeError::TimedOut(response_timeout)) };
        match read {
            Ok(answer) => {
                let reusable = complete && answer.keep_alive;
                Ok((answer, reusable))
            }
            Err(response::HeadError::ClosedEarly) if head.body_chunked().is_none() => {
                Err(ExchangeError::NoAnswer)
            }
            Err(e) => Err(ExchangeError::Failed(match write_failed {
                Some(w) => format!("sending the request body failed ({w}), and then {e}"),
                None => e.to_string(),
            })),
        }
    }

    /// The connection, for a tunnel once the server switched protocols;
    /// the bytes it sent after its 101 answer come with it.
    pub(crate) fn into_parts(self) -> (TcpStream, BytesMut) {
        (self.stream, self.buf)
    }
}
