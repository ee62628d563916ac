//! Property tests of the upstream answer's parsing and body framing: any
//! body, framed by length or in any chunks (with extensions and
//! trailers), fed to the parser and the decoder split at any points, comes
//! out whole with the next answer's bytes left alone; a cut-short body is
//! an error, never an end; malformed chunk sizes are refused; and every
//! mix of `Content-Length` and `Transfer-Encoding` gets the framing (and
//! the trust in the connection) RFC 9112 §6.3 says.

use super::framing::{Decoder, Framing, FramingError, Step};
use super::response::{parse, HeadError};
use bytes::BytesMut;
use proptest::prelude::*;

/// The bytes that follow an answer on a kept-alive connection.
const NEXT: &[u8] = b"HTTP/1.1 204 No Content\r\n\r\n";

/// What a decoder made of a body: its bytes, its trailers' `(name,
/// value)` pairs, and what was left in the buffer after it.
type Decoded = (Vec<u8>, Vec<(String, String)>, Vec<u8>);

/// Feed `input` to a decoder for `framing` in pieces ending at `cuts`
/// (sorted, deduplicated by the caller's generator or not: any order is
/// clamped), with the end of the connection after it when `eof`.
fn decode_split(framing: Framing, input: &[u8], cuts: &[usize], eof: bool) -> Result<Decoded, FramingError> {
    let mut ends: Vec<usize> = cuts.iter().map(|&c| c.min(input.len())).collect();
    ends.push(input.len());
    ends.sort_unstable();
    ends.dedup();
    let mut pieces = ends.into_iter();
    let mut fed = 0;
    let mut d = Decoder::new(framing);
    let mut buf = BytesMut::new();
    let mut body = Vec::new();
    let mut trailers = Vec::new();
    loop {
        let last = fed >= input.len();
        match d.decode(&mut buf, last && eof)? {
            Step::Data(b) => {
                assert!(!b.is_empty(), "an empty data frame");
                body.extend_from_slice(&b);
            }
            Step::Trailers(t) => {
                trailers.extend(
                    t.iter()
                        .map(|(k, v)| (k.to_string(), String::from_utf8_lossy(v.as_bytes()).into_owned())),
                );
            }
            Step::Done => {
                // What follows the body: the bytes buffered and those not
                // fed yet (a body of length 0 is done before any is fed).
                let mut left = buf.to_vec();
                left.extend_from_slice(&input[fed..]);
                return Ok((body, trailers, left));
            }
            Step::NeedMore => match pieces.next() {
                Some(end) => {
                    buf.extend_from_slice(&input[fed..end]);
                    fed = end;
                }
                // Everything fed, no end of connection, no end of body.
                None => return Err(FramingError::Truncated),
            },
        }
    }
}

/// `body` in chunks of the given sizes (the rest in one last chunk), with
/// an extension on some size lines and `trailers` after the last chunk.
fn chunked(body: &[u8], sizes: &[usize], ext: bool, upper: bool, trailers: &[(String, String)]) -> Vec<u8> {
    let mut out = Vec::new();
    let mut rest = body;
    let mut sizes = sizes.iter();
    while !rest.is_empty() {
        let n = sizes.next().map_or(rest.len(), |&s| s.clamp(1, rest.len()));
        let (chunk, tail) = rest.split_at(n);
        let size = if upper { format!("{n:X}") } else { format!("{n:x}") };
        out.extend_from_slice(size.as_bytes());
        if ext && n % 2 == 0 {
            out.extend_from_slice(b";name=\"v\"");
        }
        out.extend_from_slice(b"\r\n");
        out.extend_from_slice(chunk);
        out.extend_from_slice(b"\r\n");
        rest = tail;
    }
    out.extend_from_slice(b"0\r\n");
    for (k, v) in trailers {
        out.extend_from_slice(format!("{k}: {v}\r\n").as_bytes());
    }
    out.extend_from_slice(b"\r\n");
    out
}

fn trailer() -> impl Strategy<Value = (String, String)> {
    ("x-[a-z]{1,8}", "[a-zA-Z0-9 ,;=]{0,16}").prop_map(|(k, v)| (k, v.trim().to_string()))
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn a_length_body_split_anywhere_comes_out_whole_and_leaves_the_next_answer(
        body in proptest::collection::vec(any::<u8>(), 0..2048),
        cuts in proptest::collection::vec(0usize..2100, 0..8),
    ) {
        let mut input = body.clone();
        input.extend_from_slice(NEXT);
        let (got, trailers, rest) = decode_split(Framing::Length(body.len() as u64), &input, &cuts, false).unwrap();
        prop_assert_eq!(got, body);
        prop_assert!(trailers.is_empty());
        // Only what was fed is in the buffer: a prefix of the next answer.
        prop_assert!(NEXT.starts_with(&rest), "left {:?}", rest);
    }

    #[test]
    fn a_chunked_body_in_any_chunks_split_anywhere_comes_out_whole_with_its_trailers(
        body in proptest::collection::vec(any::<u8>(), 0..2048),
        sizes in proptest::collection::vec(1usize..700, 0..8),
        ext in any::<bool>(),
        upper in any::<bool>(),
        trailers in proptest::collection::vec(trailer(), 0..3),
        cuts in proptest::collection::vec(0usize..2400, 0..10),
    ) {
        let mut input = chunked(&body, &sizes, ext, upper, &trailers);
        input.extend_from_slice(NEXT);
        let (got, got_trailers, rest) = decode_split(Framing::Chunked, &input, &cuts, false).unwrap();
        prop_assert_eq!(got, body);
        prop_assert_eq!(got_trailers, trailers);
        prop_assert!(NEXT.starts_with(&rest), "left {:?}", rest);
    }

    #[test]
    fn a_body_cut_short_by_the_close_is_an_error_never_an_end(
        body in proptest::collection::vec(any::<u8>(), 1..1024),
        sizes in proptest::collection::vec(1usize..300, 0..5),
        chunks in any::<bool>(),
        keep in any::<proptest::sample::Index>(),
        cuts in proptest::collection::vec(0usize..1200, 0..6),
    ) {
        let (framing, whole) = if chunks {
            (Framing::Chunked, chunked(&body, &sizes, false, false, &[]))
        } else {
            (Framing::Length(body.len() as u64), body.clone())
        };
        let short = &whole[..keep.index(whole.len())];
        let result = decode_split(framing, short, &cuts, true);
        prop_assert!(matches!(result, Err(FramingError::Truncated)), "{:?}", result);
    }

    #[test]
    fn a_close_delimited_body_is_everything_until_the_close(
        body in proptest::collection::vec(any::<u8>(), 0..2048),
        cuts in proptest::collection::vec(0usize..2100, 0..8),
    ) {
        let (got, _, rest) = decode_split(Framing::Close, &body, &cuts, true).unwrap();
        prop_assert_eq!(got, body);
        prop_assert!(rest.is_empty());
    }

    #[test]
    fn malformed_chunk_sizes_are_refused(
        digits in "[0-9a-fA-F]{0,4}",
        bad in prop_oneof![
            Just("g".to_string()), Just("-".to_string()), Just("+".to_string()), Just("0x".to_string()),
            Just("\u{0}".to_string()), Just("z".to_string()), Just("é".to_string()),
        ],
        before in any::<bool>(),
        cuts in proptest::collection::vec(0usize..32, 0..4),
    ) {
        let line = if before { format!("{bad}{digits}") } else { format!("{digits}{bad}") };
        let input = format!("{line}\r\nabcdef\r\n0\r\n\r\n");
        let result = decode_split(Framing::Chunked, input.as_bytes(), &cuts, true);
        prop_assert!(matches!(result, Err(FramingError::ChunkSize)), "{:?}: {:?}", line, result);
    }

    #[test]
    fn chunk_sizes_too_large_or_empty_are_refused(
        digits in "[1-9a-f][0-9a-f]{16,20}",
        empty in any::<bool>(),
    ) {
        let line = if empty { String::new() } else { digits };
        let input = format!("{line}\r\nabc\r\n0\r\n\r\n");
        let result = decode_split(Framing::Chunked, input.as_bytes(), &[], true);
        prop_assert!(matches!(result, Err(FramingError::ChunkSize)), "{:?}: {:?}", line, result);
    }

    #[test]
    fn chunk_data_not_followed_by_crlf_is_refused(
        body in proptest::collection::vec(any::<u8>(), 1..64),
        junk in "[a-zA-Z]{2}",
    ) {
        let mut input = format!("{:x}\r\n", body.len()).into_bytes();
        input.extend_from_slice(&body);
        input.extend_from_slice(junk.as_bytes());
        input.extend_from_slice(b"0\r\n\r\n");
        let result = decode_split(Framing::Chunked, &input, &[], true);
        prop_assert!(matches!(result, Err(FramingError::ChunkSize)), "{:?}", result);
    }

    /// A whole answer (head and body) split anywhere: the head parses
    /// only once it is all there, consumes exactly itself, and the body
    /// that follows decodes whole.
    #[test]
    fn an_answer_split_anywhere_parses_once_whole_and_its_body_follows(
        body in proptest::collection::vec(any::<u8>(), 0..1024),
        chunks in any::<bool>(),
        sizes in proptest::collection::vec(1usize..300, 0..5),
        extra in proptest::collection::vec(("x-[a-z]{1,6}", "[a-z0-9]{0,12}"), 0..6),
        cut in any::<proptest::sample::Index>(),
    ) {
        let mut head = b"HTTP/1.1 200 OK\r\n".to_vec();
        for (k, v) in &extra {
            head.extend_from_slice(format!("{k}: {v}\r\n").as_bytes());
        }
        let encoded = if chunks {
            head.extend_from_slice(b"Transfer-Encoding: chunked\r\n");
            chunked(&body, &sizes, false, false, &[])
        } else {
            head.extend_from_slice(format!("Content-Length: {}\r\n", body.len()).as_bytes());
            body.clone()
        };
        head.extend_from_slice(b"\r\n");
        let mut all = head.clone();
        all.extend_from_slice(&encoded);
        all.extend_from_slice(NEXT);

        let at = cut.index(all.len() + 1);
        let mut buf = BytesMut::from(&all[..at]);
        let parsed = parse(&mut buf, false).unwrap();
        if at < head.len() {
            prop_assert!(parsed.is_none(), "a partial head parsed");
            prop_assert_eq!(buf.len(), at, "a partial head consumed bytes");
            buf.extend_from_slice(&all[at..]);
        } else {
            prop_assert!(parsed.is_some());
            prop_assert_eq!(buf.len(), at - head.len(), "the head consumed more than itself");
            buf.extend_from_slice(&all[at..]);
        }
        let parsed = match parsed {
            Some(h) => h,
            None => parse(&mut buf, false).unwrap().expect("the whole head"),
        };
        prop_assert!(parsed.keep_alive);
        for (k, v) in &extra {
            prop_assert!(parsed.headers.get_all(k.as_str()).iter().any(|x| x == v.as_str()));
        }
        let rest = buf.to_vec();
        let (got, _, left) = decode_split(parsed.framing, &rest, &[], false).unwrap();
        prop_assert_eq!(got, body);
        prop_assert_eq!(&left[..], NEXT);
    }

    /// Every mix of `Content-Length` and `Transfer-Encoding` fields.
    #[test]
    fn content_length_and_transfer_encoding_mixes_follow_rfc_9112(
        lengths in proptest::collection::vec(0u64..100, 0..3),
        codings in proptest::collection::vec(
            prop_oneof![Just("chunked"), Just("gzip"), Just("gzip, chunked"), Just("chunked, gzip"), Just("CHUNKED")],
            0..3,
        ),
        http10 in any::<bool>(),
        head_request in any::<bool>(),
    ) {
        let mut raw = if http10 { b"HTTP/1.0 200 OK\r\n".to_vec() } else { b"HTTP/1.1 200 OK\r\n".to_vec() };
        for n in &lengths {
            raw.extend_from_slice(format!("Content-Length: {n}\r\n").as_bytes());
        }
        for c in &codings {
            raw.extend_from_slice(format!("Transfer-Encoding: {c}\r\n").as_bytes());
        }
        raw.extend_from_slice(b"\r\n");
        let mut buf = BytesMut::from(&raw[..]);
        let result = parse(&mut buf, head_request);
        let distinct = {
            let mut l = lengths.clone();
            l.sort_unstable();
            l.dedup();
            l
        };
        if distinct.len() > 1 {
            prop_assert!(matches!(result, Err(HeadError::Invalid(_))), "{:?}", result);
            return Ok(());
        }
        let head = result.unwrap().expect("complete");
        // The last field's last coding decides.
        let chunked = codings.last().map(|c| c.rsplit(',').next().unwrap().trim().eq_ignore_ascii_case("chunked"));
        let expected = match (head_request, chunked, distinct.first()) {
            (true, _, _) => Framing::Empty,
            (false, Some(true), _) => Framing::Chunked,
            (false, Some(false), _) => Framing::Close,
            (false, None, Some(&n)) => Framing::Length(n),
            (false, None, None) => Framing::Close,
        };
        prop_assert_eq!(head.framing, expected);
        if !codings.is_empty() && !lengths.is_empty() {
            prop_assert!(!head.keep_alive, "a length and a coding together: the connection is not trusted");
        }
        if http10 || expected == Framing::Close {
            prop_assert!(!head.keep_alive);
        }
    }
}
