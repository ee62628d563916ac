//! Reading an answer's head from an upstream connection: parsed with
//! `httparse` straight from the read buffer, header values sharing its
//! bytes; informational answers (100 Continue, 103) skipped; the body's
//! framing and whether the connection stays open decided by RFC 9112.

use super::framing::Framing;
use super::Conn;
use bytes::{Buf, BytesMut};
use http::header::{CONNECTION, CONTENT_LENGTH, TRANSFER_ENCODING};
use http::{HeaderMap, HeaderName, HeaderValue, StatusCode};
use std::mem::MaybeUninit;

/// The most header fields an answer may have (as hyper).
const MAX_HEADERS: usize = 100;
/// The largest answer head taken (64 KiB).
const MAX_HEAD: usize = 64 * 1024;

/// An answer's head.
#[derive(Debug)]
pub(crate) struct ResponseHead {
    pub(crate) status: StatusCode,
    pub(crate) headers: HeaderMap,
    pub(crate) framing: Framing,
    /// The server keeps the connection open after this answer.
    pub(crate) keep_alive: bool,
}

/// Why no head was read.
#[derive(Debug, thiserror::Error)]
pub(crate) enum HeadError {
    /// The connection closed before any byte of an answer.
    #[error("the backend closed the connection without answering")]
    ClosedEarly,
    /// The connection closed in the middle of the head.
    #[error("the backend closed the connection in the middle of its answer's head")]
    Truncated,
    /// Not an HTTP/1.x answer.
    #[error("the backend's answer does not parse: {0}")]
    Invalid(String),
    /// Larger than [`MAX_HEAD`].
    #[error("the backend's answer head is larger than {MAX_HEAD} bytes")]
    TooLarge,
    /// Reading failed.
    #[error("reading the backend's answer failed: {0}")]
    Io(#[from] std::io::Error),
}

/// Read the head of the answer to a request (`head_request` for HEAD).
pub(crate) async fn read_head(conn: &mut Conn, head_request: bool) -> Result<ResponseHead, HeadError> {
    let mut answered = false;
    loop {
        if !conn.buf.is_empty() {
            answered = true;
            if let Some(head) = parse(&mut conn.buf, head_request)? {
                if head.status.is_informational() && head.status != StatusCode::SWITCHING_PROTOCOLS {
                    continue;
                }
                return Ok(head);
            }
        }
        let read = if conn.eof { Ok(0) } else { conn.fill().await };
        match read {
            Ok(0) => return Err(if answered { HeadError::Truncated } else { HeadError::ClosedEarly }),
            Ok(_) => {}
            // A reset before any answer is the same story as a close.
            Err(e) if !answered && is_reset(&e) => return Err(HeadError::ClosedEarly),
            Err(e) => return Err(e.into()),
        }
    }
}

/// What [`skip_interim`] found at the front of the read buffer.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Interim {
    /// Only interim answers, now consumed (the buffer may be empty).
    Skipped,
    /// The start of an answer whose status is not known yet.
    Partial,
    /// A final answer (or bytes that are none), left in the buffer.
    Final,
}

/// Consume the interim answers (1xx but 101) at the front of `buf`, as a
/// server sends `100 Continue` before it reads a request's body; say what
/// follows them.
pub(crate) fn skip_interim(buf: &mut BytesMut) -> Interim {
    let interim = |code: Option<u16>| code.is_some_and(|c| (100..200).contains(&c) && c != 101);
    loop {
        if buf.is_empty() {
            return Interim::Skipped;
        }
        let mut fields = [httparse::EMPTY_HEADER; MAX_HEADERS];
        let mut resp = httparse::Response::new(&mut fields);
        match resp.parse(buf) {
            Ok(httparse::Status::Complete(len)) if interim(resp.code) => buf.advance(len),
            Ok(httparse::Status::Partial)
                if buf.len() < MAX_HEAD && (resp.code.is_none() || interim(resp.code)) =>
            {
                return Interim::Partial
            }
            _ => return Interim::Final,
        }
    }
}

fn is_reset(e: &std::io::Error) -> bool {
    use std::io::ErrorKind::*;
    matches!(e.kind(), ConnectionReset | ConnectionAborted | BrokenPipe)
}

/// Parse a complete head off the front of `buf`; `None` while it is
/// incomplete.
pub(super) fn parse(buf: &mut BytesMut, head_request: bool) -> Result<Option<ResponseHead>, HeadError> {
    // Where each field's name and value lie in `buf`, so the values can
    // share the buffer's bytes once the parser lets go of it.
    let (len, code, minor, spans) = {
        let mut fields = [const { MaybeUninit::<httparse::Header<'_>>::uninit() }; MAX_HEADERS];
        let mut resp = httparse::Response::new(&mut []);
        let len = match httparse::ParserConfig::default().parse_response_with_uninit_headers(
            &mut resp,
            buf,
            &mut fields,
        ) {
            Ok(httparse::Status::Complete(len)) => len,
            Ok(httparse::Status::Partial) if buf.len() >= MAX_HEAD => return Err(HeadError::TooLarge),
            Ok(httparse::Status::Partial) => return Ok(None),
            Err(httparse::Error::TooManyHeaders) => return Err(HeadError::TooLarge),
            Err(e) => return Err(HeadError::Invalid(e.to_string())),
        };
        if len > MAX_HEAD {
            return Err(HeadError::TooLarge);
        }
        let base = buf.as_ptr() as usize;
        let spans: Vec<(usize, usize, usize, usize)> = resp
            .headers
            .iter()
            .map(|f| {
                let name = f.name.as_ptr() as usize - base;
                let value = f.value.as_ptr() as usize - base;
                (name, name + f.name.len(), value, value + f.value.len())
            })
            .collect();
        (len, resp.code.unwrap_or(0), resp.version.unwrap_or(1), spans)
    };
    let head = buf.split_to(len).freeze();
    let status = StatusCode::from_u16(code).map_err(|_| HeadError::Invalid(format!("status {code}")))?;
    let mut headers = HeaderMap::with_capacity(spans.len());
    let mut close = minor == 0;
    let mut length: Option<u64> = None;
    let mut chunked = None;
    for &(ns, ne, vs, ve) in &spans {
        let name = HeaderName::from_bytes(&head[ns..ne]).map_err(|e| HeadError::Invalid(e.to_string()))?;
        let value = HeaderValue::from_maybe_shared(head.slice(vs..ve))
            .map_err(|_| HeadError::Invalid(format!("header {name}")))?;
        if name == CONNECTION {
            for token in value.as_bytes().split(|&b| b == b',').map(<[u8]>::trim_ascii) {
                if token.eq_ignore_ascii_case(b"close") {
                    close = true;
                } else if token.eq_ignore_ascii_case(b"keep-alive") && minor == 0 {
                    close = false;
                }
            }
        } else if name == CONTENT_LENGTH {
            let n = std::str::from_utf8(value.as_bytes())
                .ok()
                .and_then(|s| s.trim().parse::<u64>().ok())
                .ok_or_else(|| HeadError::Invalid("content-length".into()))?;
            if length.is_some_and(|l| l != n) {
                return Err(HeadError::Invalid("two different content-length values".into()));
            }
            length = Some(n);
        } else if name == TRANSFER_ENCODING {
            // Only the last coding says whether it is chunked.
            let last = value.as_bytes().rsplit(|&b| b == b',').next().unwrap_or_default().trim_ascii();
            chunked = Some(last.eq_ignore_ascii_case(b"chunked"));
        }
        headers.append(name, value);
    }
    let no_body = head_request
        || status.is_informational()
        || status == StatusCode::NO_CONTENT
        || status == StatusCode::NOT_MODIFIED;
    let framing = match (no_body, chunked, length) {
        (true, _, _) => Framing::Empty,
        (false, Some(true), _) => Framing::Chunked,
        // A coding that is not chunked ends at the close (RFC 9112 §6.3).
        (false, Some(false), _) => Framing::Close,
        (false, None, Some(n)) => Framing::Length(n),
        (false, None, None) => Framing::Close,
    };
    // Both a length and a coding: the answer may be smuggling; do not
    // trust the connection after it.
    if chunked.is_some() && length.is_some() {
        close = true;
    }
    let keep_alive = !close && framing != Framing::Close && status != StatusCode::SWITCHING_PROTOCOLS;
    Ok(Some(ResponseHead { status, headers, framing, keep_alive }))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn head(bytes: &[u8], head_request: bool) -> (ResponseHead, BytesMut) {
        let mut buf = BytesMut::from(bytes);
        let h = parse(&mut buf, head_request).expect("parses").expect("complete");
        (h, buf)
    }

    #[test]
    fn a_head_is_split_off_and_its_body_stays() {
        let (h, rest) = head(b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\nX-Version: v1\r\n\r\nv1\n", false);
        assert_eq!(h.status, 200);
        assert_eq!(h.headers["x-version"], "v1");
        assert_eq!(h.framing, Framing::Length(3));
        assert!(h.keep_alive);
        assert_eq!(&rest[..], b"v1\n");
    }

    #[test]
    fn framing_follows_rfc_9112() {
        let f = |bytes: &[u8], head_request| head(bytes, head_request).0;
        assert_eq!(
            f(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip, chunked\r\n\r\n", false).framing,
            Framing::Chunked
        );
        let h = f(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\n\r\n", false);
        assert_eq!((h.framing, h.keep_alive), (Framing::Close, false));
        let h = f(b"HTTP/1.1 200 OK\r\n\r\n", false);
        assert_eq!((h.framing, h.keep_alive), (Framing::Close, false));
        assert_eq!(f(b"HTTP/1.1 200 OK\r\nContent-Length: 9\r\n\r\n", true).framing, Framing::Empty);
        assert_eq!(f(b"HTTP/1.1 204 No Content\r\n\r\n", false).framing, Framing::Empty);
        assert_eq!(
            f(b"HTTP/1.1 304 Not Modified\r\nContent-Length: 9\r\n\r\n", false).framing,
            Framing::Empty
        );
        let h = f(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nTransfer-Encoding: chunked\r\n\r\n", false);
        assert_eq!((h.framing, h.keep_alive), (Framing::Chunked, false));
    }

    #[test]
    fn connection_tokens_and_http10_decide_keep_alive() {
        let k = |bytes: &[u8]| head(bytes, false).0.keep_alive;
        assert!(!k(b"HTTP/1.1 200 OK\r\nConnection: Close\r\nContent-Length: 0\r\n\r\n"));
        assert!(!k(b"HTTP/1.0 200 OK\r\nContent-Length: 0\r\n\r\n"));
        assert!(k(b"HTTP/1.0 200 OK\r\nConnection: keep-alive\r\nContent-Length: 0\r\n\r\n"));
        assert!(!k(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: upgrade\r\n\r\n"));
    }

    #[test]
    fn interim_answers_are_skipped_and_a_final_one_stays() {
        let mut buf = BytesMut::from(&b"HTTP/1.1 100 Continue\r\n\r\n"[..]);
        assert_eq!(skip_interim(&mut buf), Interim::Skipped);
        assert!(buf.is_empty());
        let mut buf = BytesMut::from(
            &b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 103 Early Hints\r\nLink: x\r\n\r\nHTTP/1.1 41"[..],
        );
        assert_eq!(skip_interim(&mut buf), Interim::Partial);
        assert_eq!(&buf[..], b"HTTP/1.1 41");
        let mut buf =
            BytesMut::from(&b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 413 Too Large\r\nContent-Le"[..]);
        assert_eq!(skip_interim(&mut buf), Interim::Final);
        assert!(buf.starts_with(b"HTTP/1.1 413"));
        let mut buf = BytesMut::from(&b"HTTP/1.1 101 Switching Protocols\r\n\r\n"[..]);
        assert_eq!(skip_interim(&mut buf), Interim::Final);
        let mut buf = BytesMut::from(&b"garbage\r\n\r\n"[..]);
        assert_eq!(skip_interim(&mut buf), Interim::Final);
    }

    #[test]
    fn incomplete_broken_and_oversized_heads() {
        let mut buf = BytesMut::from(&b"HTTP/1.1 200 OK\r\nContent-Le"[..]);
        assert!(parse(&mut buf, false).unwrap().is_none());
        assert_eq!(buf.len(), 27, "nothing consumed while incomplete");
        let mut buf = BytesMut::from(&b"SMTP ready\r\n\r\n"[..]);
        assert!(matches!(parse(&mut buf, false), Err(HeadError::Invalid(_))));
        let mut buf =
            BytesMut::from(&b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n"[..]);
        assert!(matches!(parse(&mut buf, false), Err(HeadError::Invalid(_))));
        let mut big = b"HTTP/1.1 200 OK\r\nx: ".to_vec();
        big.resize(MAX_HEAD + 10, b'a');
        let mut buf = BytesMut::from(&big[..]);
        assert!(matches!(parse(&mut buf, false), Err(HeadError::TooLarge)));
    }
}
