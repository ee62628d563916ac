//! Writing a request upstream: its head encoded once (so that a retry
//! sends the same bytes), then its body, as it arrives from the client,
//! framed by length or in chunks.

use bytes::Bytes;
use http::header::{CONTENT_LENGTH, TRANSFER_ENCODING};
use http::{Method, Request};
use http_body::Body;
use http_body_util::BodyExt;
use hyper::body::Incoming;
use std::io::{self, IoSlice};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

use super::response::Interim;
use super::Conn;

/// How the request's body goes upstream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum BodyFraming {
    /// No body.
    None,
    /// With a `Content-Length`.
    Length,
    /// In chunks (its length is not known ahead).
    Chunked,
}

/// A request's head as sent upstream, and what follows it.
#[derive(Debug)]
pub(crate) struct RequestHead {
    bytes: Bytes,
    body: BodyFraming,
    head: bool,
    idempotent: bool,
    /// Largest body sent on; more ends the exchange with
    /// [`BodyError::TooLarge`] (a shared listener's `max_request_body`).
    body_limit: Option<u64>,
}

impl RequestHead {
    /// Encode `req`'s head (already rewritten for upstream: origin-form
    /// target, hop-by-hop headers gone) as HTTP/1.1, with the framing its
    /// body needs.
    pub(crate) fn encode(req: &Request<Incoming>) -> RequestHead {
        let body = req.body();
        let exact = body.size_hint().exact();
        let framing = if body.is_end_stream() {
            BodyFraming::None
        } else if exact.is_some() {
            BodyFraming::Length
        } else {
            BodyFraming::Chunked
        };
        let target = req.uri().path_and_query().map_or("/", |pq| pq.as_str());
        let mut out = Vec::with_capacity(64 + target.len() + req.headers().len() * 32);
        out.extend_from_slice(req.method().as_str().as_bytes());
        out.push(b' ');
        out.extend_from_slice(target.as_bytes());
        out.extend_from_slice(b" HTTP/1.1\r\n");
        let mut has_length = false;
        for (name, value) in req.headers() {
            if name == CONTENT_LENGTH {
                // A chunked body carries no length; a known one is written
                // below if the client did not send it.
                if framing == BodyFraming::Chunked {
                    continue;
                }
                has_length = true;
            }
            out.extend_from_slice(name.as_str().as_bytes());
            out.extend_from_slice(b": ");
            out.extend_from_slice(value.as_bytes());
            out.extend_from_slice(b"\r\n");
        }
        match (framing, exact) {
            (BodyFraming::Length, Some(n)) if !has_length => {
                out.extend_from_slice(format!("{CONTENT_LENGTH}: {n}\r\n").as_bytes());
            }
            (BodyFraming::Chunked, _) => {
                out.extend_from_slice(TRANSFER_ENCODING.as_str().as_bytes());
                out.extend_from_slice(b": chunked\r\n");
            }
            _ => {}
        }
        out.extend_from_slice(b"\r\n");
        let method = req.method();
        RequestHead {
            bytes: Bytes::from(out),
            body: framing,
            head: method == Method::HEAD,
            idempotent: matches!(
                *method,
                Method::GET | Method::HEAD | Method::OPTIONS | Method::TRACE | Method::PUT | Method::DELETE
            ),
            body_limit: None,
        }
    }

    /// Refuse a body that grows past `limit` bytes while it streams.
    pub(crate) fn limit_body(&mut self, limit: u64) {
        self.body_limit = Some(limit);
    }

    /// The body limit, if any.
    pub(crate) fn body_limit(&self) -> Option<u64> {
        self.body_limit
    }

    /// The encoded head.
    pub(crate) fn bytes(&self) -> &[u8] {
        &self.bytes
    }

    /// `Some(chunked)` when a body follows the head.
    pub(crate) fn body_chunked(&self) -> Option<bool> {
        match self.body {
            BodyFraming::None => None,
            BodyFraming::Length => Some(false),
            BodyFraming::Chunked => Some(true),
        }
    }

    /// Whether it is a HEAD request (its answer has no body).
    pub(crate) fn is_head(&self) -> bool {
        self.head
    }

    /// Whether it may be sent again when a reused connection turned out
    /// closed before any answer (RFC 9110 §9.2.2): an idempotent method
    /// and no body.
    pub(crate) fn is_retryable(&self) -> bool {
        self.idempotent && self.body == BodyFraming::None
    }
}

/// How sending a body ended.
pub(crate) enum BodySent {
    /// All of it went.
    Whole,
    /// The server started answering first; the rest was not sent.
    Answered,
}

/// Why sending a body failed.
pub(crate) enum BodyError {
    /// Reading it from the client failed.
    Client(hyper::Error),
    /// Writing it upstream failed.
    Write(io::Error),
    /// It grew past the request's body limit.
    TooLarge,
}

/// Stream `body` upstream. Stops early when the server starts a final
/// answer (or closes), as servers that refuse a body (413, 401) often do
/// before reading it; what it sent is then in `conn`'s buffer. Interim
/// answers (`100 Continue` to a forwarded `Expect`, 103) that come
/// meanwhile are consumed and the body goes on: such a server reads the
/// body only after its `100`.
pub(crate) async fn write_body(
    conn: &mut Conn,
    body: &mut Incoming,
    chunked: bool,
    limit: Option<u64>,
) -> Result<BodySent, BodyError> {
    let mut sent: u64 = 0;
    loop {
        let frame = tokio::select! {
            biased;
            ready = conn.stream.readable() => {
                ready.map_err(BodyError::Write)?;
                // Readiness can be stale: only bytes (or the end) count.
                conn.buf.reserve(super::READ_CHUNK);
                match conn.stream.try_read_buf(&mut conn.buf) {
                    Ok(0) => {
                        conn.eof = true;
                        return Ok(BodySent::Answered);
                    }
                    Ok(_) => match super::response::skip_interim(&mut conn.buf) {
                        // A `100 Continue` (or another interim answer) is
                        // no answer: the server wants the body.
                        Interim::Skipped | Interim::Partial => continue,
                        Interim::Final => return Ok(BodySent::Answered),
                    },
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                    Err(e) => return Err(BodyError::Write(e)),
                }
            }
            frame = body.frame() => frame,
        };
        let stream = &mut conn.stream;
        match frame {
            None => {
                if chunked {
                    stream.write_all(b"0\r\n\r\n").await.map_err(BodyError::Write)?;
                }
                return Ok(BodySent::Whole);
            }
            Some(Err(e)) => return Err(BodyError::Client(e)),
            Some(Ok(frame)) => match frame.into_data() {
                Ok(data) if data.is_empty() => {}
                Ok(data)
                    if limit.is_some_and(|l| {
                        sent += data.len() as u64;
                        sent > l
                    }) =>
                {
                    return Err(BodyError::TooLarge)
                }
                Ok(data) if chunked => {
                    let size = format!("{:X}\r\n", data.len());
                    write_all_vectored(stream, &[size.as_bytes(), &data, b"\r\n"])
                        .await
                        .map_err(BodyError::Write)?;
                }
                Ok(data) => stream.write_all(&data).await.map_err(BodyError::Write)?,
                Err(frame) => {
                    if let (true, Ok(trailers)) = (chunked, frame.into_trailers()) {
                        let mut out = b"0\r\n".to_vec();
                        for (name, value) in &trailers {
                            out.extend_from_slice(name.as_str().as_bytes());
                            out.extend_from_slice(b": ");
                            out.extend_from_slice(value.as_bytes());
                            out.extend_from_slice(b"\r\n");
                        }
                        out.extend_from_slice(b"\r\n");
                        stream.write_all(&out).await.map_err(BodyError::Write)?;
                        return Ok(BodySent::Whole);
                    }
                }
            },
        }
    }
}

/// Write all of `parts`, in as few system calls as the socket takes.
async fn write_all_vectored(stream: &mut TcpStream, parts: &[&[u8]]) -> io::Result<()> {
    let mut slices: Vec<IoSlice<'_>> = parts.iter().map(|p| IoSlice::new(p)).collect();
    let mut slices = &mut slices[..];
    IoSlice::advance_slices(&mut slices, 0);
    while !slices.is_empty() {
        let n = stream.write_vectored(slices).await?;
        if n == 0 {
            return Err(io::ErrorKind::WriteZero.into());
        }
        IoSlice::advance_slices(&mut slices, n);
    }
    Ok(())
}
