//! Tell HTTP/1.1 from h2c by the first bytes a client sends. They are read,
//! not peeked at: one read instead of a peek plus hyper's own read, and the
//! bytes go on to hyper through [`crate::prefixed::Prefixed`].

use crate::lazy_stream::LazyStream;
use bytes::Bytes;
use std::cell::RefCell;
use std::io::ErrorKind;

/// The HTTP/2 connection preface a cleartext h2 client starts with.
const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// The most read at once: hyper's own first read size, so a request head
/// up to this size takes a single read.
const FIRST_READ: usize = 8192;

thread_local! {
    /// Where the first bytes land before they are copied out at their size:
    /// no large buffer per connection, and none zeroed per connection.
    static SCRATCH: RefCell<Box<[u8]>> = RefCell::new(vec![0; FIRST_READ].into_boxed_slice());
}

/// The protocol a client speaks, told by its first bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Protocol {
    /// HTTP/1.x.
    Http1,
    /// HTTP/2 with prior knowledge (h2c).
    Http2,
}

/// What one read step gave.
enum Step {
    /// The protocol is known; these are all the bytes read so far.
    Known(Protocol, Bytes),
    /// Not known yet (nothing to read, or a partial h2 preface).
    Again,
    /// The client closed or the socket failed.
    Closed,
}

/// Read until the first bytes tell the protocol. Returns it with every byte
/// read, or `None` when the client closed first. Never returns on its own
/// while the client is silent: the caller bounds it with a timeout.
pub(crate) async fn read(stream: &mut LazyStream) -> Option<(Protocol, Bytes)> {
    // Only used when a read ends inside the h2 preface (rare).
    let mut partial: Vec<u8> = Vec::new();
    loop {
        // Read first, wait only when nothing is there: a client's request
        // has usually arrived by the time its connection is accepted, and
        // then the socket never needs the poller.
        let step = SCRATCH.with_borrow_mut(|scratch| {
            let read = match stream.try_read(scratch) {
                Ok(0) => return Step::Closed,
                Ok(n) => &scratch[..n],
                Err(e) if e.kind() == ErrorKind::WouldBlock => return Step::Again,
                Err(_) => return Step::Closed,
            };
            if partial.is_empty() {
                match detect(read) {
                    Some(p) => Step::Known(p, Bytes::copy_from_slice(read)),
                    None => {
                        partial.extend_from_slice(read);
                        Step::Again
                    }
                }
            } else {
                partial.extend_from_slice(read);
                match detect(&partial) {
                    Some(p) => Step::Known(p, Bytes::from(std::mem::take(&mut partial))),
                    None => Step::Again,
                }
            }
        });
        match step {
            Step::Known(p, bytes) => return Some((p, bytes)),
            // Not `readable()`: its waiter is a list node behind a lock,
            // while this uses the socket's own read-waker slot.
            Step::Again => std::future::poll_fn(|cx| stream.poll_read_ready(cx)).await.ok()?,
            Step::Closed => return None,
        }
    }
}

/// The protocol `first` (the first bytes, not empty) shows, if it shows one.
fn detect(first: &[u8]) -> Option<Protocol> {
    let n = first.len().min(H2_PREFACE.len());
    if first[..n] != H2_PREFACE[..n] {
        Some(Protocol::Http1)
    } else if n == H2_PREFACE.len() {
        Some(Protocol::Http2)
    } else {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::lazy_stream::tests::pair;
    use std::time::Duration;
    use tokio::io::AsyncWriteExt;

    #[test]
    fn detection() {
        assert_eq!(detect(b"GET / HTTP/1.1\r\n"), Some(Protocol::Http1));
        assert_eq!(detect(b"P"), None);
        assert_eq!(detect(b"PRI * HTTP/2.0\r\n"), None);
        assert_eq!(detect(b"POST / HTTP/1.1\r\n"), Some(Protocol::Http1));
        assert_eq!(detect(H2_PREFACE), Some(Protocol::Http2));
    }

    #[tokio::test]
    async fn a_preface_in_pieces_is_put_together() {
        let (mut client, mut server) = pair().await;
        let reader = tokio::spawn(async move { read(&mut server).await });
        client.write_all(&H2_PREFACE[..10]).await.expect("write");
        tokio::time::sleep(Duration::from_millis(20)).await;
        client.write_all(&H2_PREFACE[10..]).await.expect("write");
        client.write_all(b"more").await.expect("write");
        let (p, bytes) = reader.await.expect("no panic").expect("known");
        assert_eq!(p, Protocol::Http2);
        assert!(bytes.starts_with(H2_PREFACE), "{bytes:?}");
    }

    #[tokio::test]
    async fn a_client_that_closes_first_gives_none() {
        let (client, mut server) = pair().await;
        drop(client);
        assert!(read(&mut server).await.is_none());
    }
}
