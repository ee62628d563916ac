//! The body of every response the proxy sends: either a backend's body,
//! streamed through with the request's in-flight guard and its pooled
//! connection riding along, or a short text the proxy wrote itself.
//!
//! The guard is released (and the connection returned to its pool) when the
//! body's last frame has been handed to the client's connection, or when
//! the body is dropped. A drain's cut ends the stream with an error.

use crate::backend::InflightGuard;
use crate::pool::Pooled;
use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use tokio_util::sync::WaitForCancellationFutureOwned;

/// Error type of [`ProxyBody`].
pub(crate) type BodyError = Box<dyn std::error::Error + Send + Sync>;

/// The stream was cut by a drain's deadline.
#[derive(Debug, thiserror::Error)]
#[error("response cut: the backend's drain deadline passed")]
struct Cut;

/// What ends with the body: the in-flight count and, for a body read to
/// its end, the upstream connection going back to its pool.
pub(crate) struct Completion {
    pub(crate) guard: InflightGuard,
    pub(crate) conn: Option<Pooled>,
}

impl Completion {
    /// The body was read to its end: the connection can carry another
    /// request. It goes back before the guard is dropped, so that a drain
    /// woken by the guard finds (and closes) it.
    fn finish(self) {
        let Completion { guard, conn } = self;
        if let Some(conn) = conn {
            guard.backend().pool.checkin(conn);
        }
        drop(guard);
    }
}

pin_project_lite::pin_project! {
    /// A response body.
    #[project = ProxyBodyProj]
    pub(crate) enum ProxyBody {
        /// A backend's body.
        Upstream {
            #[pin]
            body: Incoming,
            #[pin]
            cut: WaitForCancellationFutureOwned,
            done: Option<Completion>,
        },
        /// A body the proxy wrote itself.
        Full { data: Option<Bytes> },
    }
}

impl ProxyBody {
    /// Stream `body`; `done` ends with it; `cut` aborts it.
    pub(crate) fn upstream(
        body: Incoming,
        cut: WaitForCancellationFutureOwned,
        done: Completion,
    ) -> ProxyBody {
        if body.is_end_stream() {
            // Nothing to stream (HEAD, 204, 304, empty): done already.
            done.finish();
            return ProxyBody::empty();
        }
        ProxyBody::Upstream { body, cut, done: Some(done) }
    }

    /// A short body.
    pub(crate) fn text(text: &'static str) -> ProxyBody {
        ProxyBody::Full { data: Some(Bytes::from_static(text.as_bytes())) }
    }

    /// No body.
    pub(crate) fn empty() -> ProxyBody {
        ProxyBody::Full { data: None }
    }
}

impl Body for ProxyBody {
    type Data = Bytes;
    type Error = BodyError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BodyError>>> {
        match self.project() {
            ProxyBodyProj::Full { data } => Poll::Ready(data.take().map(|d| Ok(Frame::data(d)))),
            ProxyBodyProj::Upstream { mut body, cut, done } => {
                if done.is_none() {
                    return Poll::Ready(None);
                }
                // The body first: a frame that is ready costs no waiter
                // registration on the cut token.
                match body.as_mut().poll_frame(cx) {
                    Poll::Ready(None) => {
                        if let Some(d) = done.take() {
                            d.finish();
                        }
                        Poll::Ready(None)
                    }
                    Poll::Ready(Some(Ok(frame))) => {
                        // The client's connection may stop polling once the
                        // body says it has ended, so finish on the last frame.
                        if body.is_end_stream() {
                            if let Some(d) = done.take() {
                                d.finish();
                            }
                        }
                        Poll::Ready(Some(Ok(frame)))
                    }
                    Poll::Ready(Some(Err(e))) => {
                        // The connection is broken: it is not returned.
                        if let Some(mut d) = done.take() {
                            d.conn = None;
                        }
                        Poll::Ready(Some(Err(e.into())))
                    }
                    Poll::Pending => match cut.poll(cx) {
                        Poll::Ready(()) => {
                            if let Some(mut d) = done.take() {
                                d.conn = None;
                            }
                            Poll::Ready(Some(Err(Box::new(Cut))))
                        }
                        Poll::Pending => Poll::Pending,
                    },
                }
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            ProxyBody::Full { data } => data.is_none(),
            ProxyBody::Upstream { body, done, .. } => done.is_none() || body.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            ProxyBody::Full { data } => SizeHint::with_exact(data.as_ref().map_or(0, |d| d.len() as u64)),
            ProxyBody::Upstream { body, done, .. } => {
                if done.is_none() {
                    SizeHint::with_exact(0)
                } else {
                    body.size_hint()
                }
            }
        }
    }
}
