//! The last response of an HTTP/1.1 connection goes out with the
//! connection's FIN in one TCP segment.
//!
//! A `Connection: close` exchange otherwise ends with the response in one
//! segment, the client's ACK of it, and the FIN in another: the
//! connection's [`LastWrite`] is armed once the response that ends the
//! connection has its last bytes in hand ([`LastBody`]), and the client
//! socket (`lazy_stream`) then sends those bytes with `MSG_MORE`. The
//! kernel holds them until the shutdown that follows, which sends them
//! with the FIN: two segments fewer per fresh connection (9 → 7), as
//! HAProxy and nginx do not. Only the write that ends the body is held, so
//! a slow stream is never delayed; a read before the shutdown (the
//! connection stayed open after all) pushes the held bytes first.

use http_body::{Body, Frame, SizeHint};
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::task::{ready, Context, Poll};

/// Set once the connection's last bytes are being written.
#[derive(Debug, Default)]
pub(crate) struct LastWrite(AtomicBool);

impl LastWrite {
    /// The next writes end the connection.
    pub(crate) fn arm(&self) {
        self.0.store(true, Ordering::Release);
    }

    /// Whether the writes end the connection.
    pub(crate) fn is_armed(&self) -> bool {
        self.0.load(Ordering::Acquire)
    }

    /// The connection goes on after all.
    pub(crate) fn disarm(&self) {
        self.0.store(false, Ordering::Release);
    }
}

pin_project_lite::pin_project! {
    /// A response body that arms its connection's [`LastWrite`] when it
    /// ends, if the response is the connection's last.
    pub(crate) struct LastBody<B> {
        #[pin]
        inner: B,
        last: Option<Arc<LastWrite>>,
    }
}

impl<B: Body> LastBody<B> {
    /// `inner`, arming `last` at its end (at once if it has no bytes);
    /// `None` when the connection goes on after this response.
    pub(crate) fn new(inner: B, last: Option<Arc<LastWrite>>) -> LastBody<B> {
        let mut last = last;
        if inner.is_end_stream() {
            arm_once(&mut last);
        }
        LastBody { inner, last }
    }
}

/// Arm `last` and let go of it: a body arms its connection once.
fn arm_once(last: &mut Option<Arc<LastWrite>>) {
    if let Some(last) = last.take() {
        last.arm();
    }
}

impl<B: Body> Body for LastBody<B> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<B::Data>, B::Error>>> {
        let mut this = self.project();
        let frame = ready!(this.inner.as_mut().poll_frame(cx));
        let ended = match &frame {
            None => true,
            Some(Ok(_)) => this.inner.is_end_stream(),
            Some(Err(_)) => false,
        };
        if ended {
            arm_once(this.last);
        }
        Poll::Ready(frame)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// Whether hyper closes an HTTP/1.x connection after answering a request
/// with these `version` and `headers`: `Connection: close`, or HTTP/1.0
/// without `Connection: keep-alive`.
pub(crate) fn request_closes(version: http::Version, headers: &http::HeaderMap) -> bool {
    let has = |token: &str| {
        headers
            .get_all(http::header::CONNECTION)
            .iter()
            .any(|v| v.to_str().is_ok_and(|v| v.split(',').any(|t| t.trim().eq_ignore_ascii_case(token))))
    };
    has("close") || (version == http::Version::HTTP_10 && !has("keep-alive"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;
    use http_body_util::{BodyExt, Full, StreamBody};

    #[test]
    fn close_and_http_10_end_the_connection() {
        let mut h = http::HeaderMap::new();
        assert!(!request_closes(http::Version::HTTP_11, &h));
        assert!(request_closes(http::Version::HTTP_10, &h));
        h.insert(http::header::CONNECTION, "Keep-Alive".parse().unwrap());
        assert!(!request_closes(http::Version::HTTP_10, &h));
        h.insert(http::header::CONNECTION, "upgrade, Close".parse().unwrap());
        assert!(request_closes(http::Version::HTTP_11, &h));
        h.insert(http::header::CONNECTION, "closed".parse().unwrap());
        assert!(!request_closes(http::Version::HTTP_11, &h));
    }

    #[tokio::test]
    async fn armed_with_the_last_frame_not_before() {
        let last = Arc::new(LastWrite::default());
        let (tx, rx) = tokio::sync::mpsc::channel::<Result<Frame<Bytes>, std::convert::Infallible>>(2);
        let stream = StreamBody::new(futures_util::stream::unfold(rx, |mut rx| async {
            rx.recv().await.map(|frame| (frame, rx))
        }));
        let mut body = std::pin::pin!(LastBody::new(stream, Some(last.clone())));
        tx.send(Ok(Frame::data(Bytes::from_static(b"a")))).await.unwrap();
        body.frame().await.unwrap().unwrap();
        assert!(!last.is_armed(), "a stream's first frame is not its last");
        drop(tx);
        assert!(body.frame().await.is_none());
        assert!(last.is_armed(), "armed at the end of the stream");
    }

    #[tokio::test]
    async fn a_body_that_ends_with_its_frame_arms_then() {
        let last = Arc::new(LastWrite::default());
        let mut body =
            std::pin::pin!(LastBody::new(Full::new(Bytes::from_static(b"v1")), Some(last.clone())));
        assert!(!last.is_armed());
        body.frame().await.unwrap().unwrap();
        assert!(last.is_armed());
        let empty = Arc::new(LastWrite::default());
        let _ = LastBody::new(http_body_util::Empty::<Bytes>::new(), Some(empty.clone()));
        assert!(empty.is_armed(), "no bytes: armed at once");
    }
}
