//! HTTP/1.1 message-body framing of an upstream response (RFC 9112 §6):
//! how its end is found (a length, chunks, or the connection closing) and
//! the decoder that cuts the bytes read from the connection into body
//! frames without copying them.

use bytes::{Buf, Bytes, BytesMut};
use http::HeaderMap;

/// The longest chunk-size line (with extensions) or trailer section taken.
const MAX_LINE: usize = 8 * 1024;
/// The most trailer fields taken.
const MAX_TRAILERS: usize = 64;

/// How a body ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Framing {
    /// No body (HEAD, 1xx, 204, 304).
    Empty,
    /// `Content-Length` bytes.
    Length(u64),
    /// `Transfer-Encoding: chunked`.
    Chunked,
    /// Until the server closes the connection.
    Close,
}

/// A body that breaks its framing.
#[derive(Debug, thiserror::Error)]
pub(crate) enum FramingError {
    /// The connection closed before the body's end.
    #[error("the backend closed the connection before the end of the body")]
    Truncated,
    /// A chunk-size line that is not hex, or too long.
    #[error("invalid chunk size line")]
    ChunkSize,
    /// Trailer fields that do not parse.
    #[error("invalid trailer section")]
    Trailers,
}

/// What the decoder made of the bytes it has.
#[derive(Debug)]
pub(crate) enum Step {
    /// Body bytes.
    Data(Bytes),
    /// The trailer fields of a chunked body (its last frame).
    Trailers(HeaderMap),
    /// The body ended.
    Done,
    /// More bytes are needed.
    NeedMore,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Length(u64),
    Close,
    ChunkSize,
    ChunkData(u64),
    ChunkEnd,
    Trailers,
    Done,
}

/// Cuts a body out of the bytes read from its connection.
#[derive(Debug)]
pub(crate) struct Decoder {
    state: State,
}

impl Decoder {
    /// A decoder for a body framed as `framing`.
    pub(crate) fn new(framing: Framing) -> Decoder {
        let state = match framing {
            Framing::Empty | Framing::Length(0) => State::Done,
            Framing::Length(n) => State::Length(n),
            Framing::Chunked => State::ChunkSize,
            Framing::Close => State::Close,
        };
        Decoder { state }
    }

    /// Whether the body's end was reached.
    pub(crate) fn is_done(&self) -> bool {
        self.state == State::Done
    }

    /// Bytes still expected, when known.
    pub(crate) fn remaining(&self) -> Option<u64> {
        match self.state {
            State::Length(n) => Some(n),
            State::Done => Some(0),
            _ => None,
        }
    }

    /// The next step from `buf` (consumed as it goes); `eof` says the
    /// connection has closed, so no more bytes will come. After body bytes,
    /// the framing that follows them is consumed too when it is already in
    /// `buf`, so that [`Decoder::is_done`] is true with the last frame.
    pub(crate) fn decode(&mut self, buf: &mut BytesMut, eof: bool) -> Result<Step, FramingError> {
        loop {
            match self.state {
                State::Done => return Ok(Step::Done),
                State::Length(left) | State::ChunkData(left) => {
                    if buf.is_empty() {
                        return if eof { Err(FramingError::Truncated) } else { Ok(Step::NeedMore) };
                    }
                    let data = take(buf, left);
                    let left = left - data.len() as u64;
                    self.state = match (self.state, left) {
                        (State::Length(_), 0) => State::Done,
                        (State::Length(_), _) => State::Length(left),
                        (_, 0) => State::ChunkEnd,
                        (_, _) => State::ChunkData(left),
                    };
                    if self.state == State::ChunkEnd {
                        self.skip_framing(buf)?;
                    }
                    return Ok(Step::Data(data));
                }
                State::Close => {
                    if buf.is_empty() {
                        if eof {
                            self.state = State::Done;
                            return Ok(Step::Done);
                        }
                        return Ok(Step::NeedMore);
                    }
                    return Ok(Step::Data(buf.split().freeze()));
                }
                State::ChunkSize | State::ChunkEnd => {
                    if !self.advance(buf)? {
                        return if eof { Err(FramingError::Truncated) } else { Ok(Step::NeedMore) };
                    }
                }
                State::Trailers => match trailers(buf)? {
                    Some(fields) => {
                        self.state = State::Done;
                        if !fields.is_empty() {
                            return Ok(Step::Trailers(fields));
                        }
                    }
                    None if eof => return Err(FramingError::Truncated),
                    None => return Ok(Step::NeedMore),
                },
            }
        }
    }

    /// Consume what follows a chunk's data for as long as no new data or
    /// trailer field is reached, so an ending that is already read shows.
    fn skip_framing(&mut self, buf: &mut BytesMut) -> Result<(), FramingError> {
        while matches!(self.state, State::ChunkEnd | State::ChunkSize) {
            if !self.advance(buf)? {
                return Ok(());
            }
        }
        if self.state == State::Trailers && buf.starts_with(b"\r\n") {
            buf.advance(2);
            self.state = State::Done;
        }
        Ok(())
    }

    /// One step in the chunk framing (the CRLF after data, or a size line).
    /// `false` when `buf` does not hold all of it yet.
    fn advance(&mut self, buf: &mut BytesMut) -> Result<bool, FramingError> {
        match self.state {
            State::ChunkEnd => {
                if buf.len() < 2 {
                    return Ok(false);
                }
                if &buf[..2] != b"\r\n" {
                    return Err(FramingError::ChunkSize);
                }
                buf.advance(2);
                self.state = State::ChunkSize;
                Ok(true)
            }
            State::ChunkSize => {
                let Some(end) = buf.iter().take(MAX_LINE).position(|&b| b == b'\n') else {
                    return if buf.len() >= MAX_LINE { Err(FramingError::ChunkSize) } else { Ok(false) };
                };
                let size = chunk_size(&buf[..end])?;
                buf.advance(end + 1);
                self.state = if size == 0 { State::Trailers } else { State::ChunkData(size) };
                Ok(true)
            }
            _ => Ok(true),
        }
    }
}

/// Up to `left` bytes off the front of `buf`, without copying.
fn take(buf: &mut BytesMut, left: u64) -> Bytes {
    let n = usize::try_from(left).unwrap_or(usize::MAX).min(buf.len());
    buf.split_to(n).freeze()
}

/// The size on a chunk-size line (without its `\n`): hex digits, then
/// optional extensions after `;`, which are ignored.
fn chunk_size(line: &[u8]) -> Result<u64, FramingError> {
    let line = line.strip_suffix(b"\r").unwrap_or(line);
    let digits = line.split(|&b| b == b';').next().unwrap_or_default();
    let digits = digits.trim_ascii();
    if digits.is_empty() || digits.len() > 16 {
        return Err(FramingError::ChunkSize);
    }
    let mut size: u64 = 0;
    for &b in digits {
        let d = (b as char).to_digit(16).ok_or(FramingError::ChunkSize)?;
        size =
            size.checked_mul(16).and_then(|s| s.checked_add(u64::from(d))).ok_or(FramingError::ChunkSize)?;
    }
    Ok(size)
}

/// The trailer section after the last chunk, up to its empty line:
/// `None` while incomplete.
fn trailers(buf: &mut BytesMut) -> Result<Option<HeaderMap>, FramingError> {
    let mut fields = [httparse::EMPTY_HEADER; MAX_TRAILERS];
    let (len, parsed) = match httparse::parse_headers(buf, &mut fields) {
        Ok(httparse::Status::Complete((len, parsed))) => (len, parsed),
        Ok(httparse::Status::Partial) if buf.len() < MAX_LINE => return Ok(None),
        _ => return Err(FramingError::Trailers),
    };
    let mut map = HeaderMap::with_capacity(parsed.len());
    for f in parsed.iter() {
        let name = http::HeaderName::from_bytes(f.name.as_bytes()).map_err(|_| FramingError::Trailers)?;
        let value = http::HeaderValue::from_bytes(f.value).map_err(|_| FramingError::Trailers)?;
        map.append(name, value);
    }
    buf.advance(len);
    Ok(Some(map))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Feed `input` in pieces of `step` bytes; collect the body and
    /// trailers, and whether the decoder knew it was done with the last
    /// data frame.
    fn run(
        framing: Framing,
        input: &[u8],
        step: usize,
    ) -> Result<(Vec<u8>, Option<HeaderMap>, BytesMut), FramingError> {
        let mut d = Decoder::new(framing);
        let mut buf = BytesMut::new();
        let mut body = Vec::new();
        let mut trailers = None;
        let mut fed = 0;
        loop {
            let eof = fed >= input.len();
            match d.decode(&mut buf, eof)? {
                Step::Data(b) => body.extend_from_slice(&b),
                Step::Trailers(t) => trailers = Some(t),
                Step::Done => return Ok((body, trailers, buf)),
                Step::NeedMore => {
                    let end = (fed + step).min(input.len());
                    buf.extend_from_slice(&input[fed..end]);
                    fed = end;
                }
            }
        }
    }

    #[test]
    fn chunked_bodies_decode_whole_or_byte_by_byte() {
        let input = b"5;ext=1\r\nhello\r\n7\r\n, world\r\n0\r\n\r\nNEXT";
        for step in [1, 3, input.len()] {
            let (body, trailers, rest) = run(Framing::Chunked, input, step).unwrap();
            assert_eq!(body, b"hello, world", "step {step}");
            assert!(trailers.is_none());
            assert!(rest.starts_with(b"NEXT") || rest.is_empty(), "the next response's bytes stay: {rest:?}");
        }
    }

    #[test]
    fn chunked_trailers_are_a_frame_of_their_own() {
        let (body, trailers, _) =
            run(Framing::Chunked, b"3\r\nabc\r\n0\r\nx-checksum: 42\r\n\r\n", 4).unwrap();
        assert_eq!(body, b"abc");
        assert_eq!(trailers.unwrap()["x-checksum"], "42");
    }

    #[test]
    fn the_end_is_known_with_the_last_frame_when_it_was_read() {
        let mut d = Decoder::new(Framing::Chunked);
        let mut buf = BytesMut::from(&b"2\r\nok\r\n0\r\n\r\n"[..]);
        assert!(matches!(d.decode(&mut buf, false).unwrap(), Step::Data(b) if &b[..] == b"ok"));
        assert!(d.is_done() && buf.is_empty());
        let mut d = Decoder::new(Framing::Length(4));
        let mut buf = BytesMut::from(&b"abcdHTTP/1.1"[..]);
        assert!(matches!(d.decode(&mut buf, false).unwrap(), Step::Data(b) if &b[..] == b"abcd"));
        assert!(d.is_done());
        assert_eq!(&buf[..], b"HTTP/1.1");
    }

    #[test]
    fn length_and_close_framing() {
        assert_eq!(run(Framing::Length(5), b"12345", 2).unwrap().0, b"12345");
        assert!(matches!(run(Framing::Length(6), b"12345", 2), Err(FramingError::Truncated)));
        assert_eq!(run(Framing::Close, b"until the end", 4).unwrap().0, b"until the end");
        assert_eq!(run(Framing::Empty, b"", 1).unwrap().0, b"");
    }

    #[test]
    fn broken_chunked_bodies_are_errors() {
        assert!(matches!(run(Framing::Chunked, b"zz\r\nhello\r\n", 64), Err(FramingError::ChunkSize)));
        assert!(matches!(run(Framing::Chunked, b"5\r\nhelloXX0\r\n\r\n", 64), Err(FramingError::ChunkSize)));
        assert!(matches!(run(Framing::Chunked, b"5\r\nhel", 64), Err(FramingError::Truncated)));
        assert!(matches!(run(Framing::Chunked, b"fffffffffffffffff\r\n", 64), Err(FramingError::ChunkSize)));
        let long = vec![b'1'; MAX_LINE + 1];
        assert!(matches!(run(Framing::Chunked, &long, MAX_LINE + 1), Err(FramingError::ChunkSize)));
    }
}
