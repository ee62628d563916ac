//! The body of every response the proxy sends: either a backend's body,
//! read from its upstream connection as the client's connection asks for
//! it, with the request's in-flight guard riding along, or a short text
//! the proxy wrote itself.
//!
//! The guard is released (and the connection returned to its pool, when
//! the server keeps it open) when the body's last frame has been handed to
//! the client's connection, or when the body is dropped. A drain's cut
//! ends the stream with an error. hyper polls a body only when the
//! client's connection has room for more, so a body that is not done after
//! a frame registers for the cut at once, and tells the HTTP/1.1
//! connection it rides on, which then closes even while nothing polls the
//! body (a slow reader), or the h2 stream it rides on, whose task then
//! drops the stream (`h2_streams`) even while hyper waits for the client's
//! flow-control window.

use crate::backend::InflightGuard;
use crate::h2_streams::StreamHandle;
use crate::pool::Pooled;
use crate::signal::{OnFire, SignalWait};
use crate::upstream::{Decoder, Step};
use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

/// Error type of [`ProxyBody`].
pub(crate) type BodyError = Box<dyn std::error::Error + Send + Sync>;

/// The stream was cut by a drain's deadline.
#[derive(Debug, thiserror::Error)]
#[error("response cut: the backend's drain deadline passed")]
struct Cut;

/// A backend's body in flight.
pub(crate) struct Upstream {
    /// The connection it is read from.
    conn: Option<Pooled>,
    decoder: Decoder,
    cut: SignalWait,
    guard: Option<InflightGuard>,
    /// The connection can carry another request once the body is read.
    reusable: bool,
    /// Told when the cut fires: the client connection (HTTP/1.1) or the
    /// h2 stream.
    tell: Option<Arc<dyn OnFire>>,
    /// The h2 stream, told when hyper holds back a body with more to come.
    stream: Option<Arc<StreamHandle>>,
}

impl Upstream {
    /// The body was read to its end: the connection goes back to its pool
    /// (if it can carry another request) before the guard is dropped, so
    /// that a drain woken by the guard finds (and closes) it.
    fn finish(&mut self) {
        if let (Some(conn), Some(guard)) = (self.conn.take(), self.guard.as_ref()) {
            if self.reusable {
                guard.backend().pool.checkin(conn);
            }
        }
        self.guard = None;
        // Nothing is left on the backend: a later cut of it must not end
        // the connection (or h2 stream) that still sends the last frame.
        self.cut.forget();
    }

    /// The body broke: the connection is closed, not returned.
    fn fail(&mut self) {
        self.conn = None;
        self.guard = None;
    }

    fn poll_next(&mut self, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, BodyError>>> {
        let Some(pooled) = self.conn.as_mut() else { return Poll::Ready(None) };
        if let Some(stream) = &self.stream {
            stream.polled();
        }
        loop {
            let conn = &mut pooled.conn;
            match self.decoder.decode(&mut conn.buf, conn.eof) {
                Ok(Step::Data(data)) => {
                    // The client's connection may stop polling once the
                    // body says it has ended, so finish on the last frame.
                    if self.decoder.is_done() {
                        self.finish();
                    } else if self.cut.poll_fired_telling(cx, self.tell.as_ref()).is_ready() {
                        // More is to come, and hyper may not ask for it
                        // soon: the cut is registered now (once per body).
                        self.fail();
                        return Poll::Ready(Some(Err(Box::new(Cut))));
                    } else if let Some(stream) = &self.stream {
                        // Until hyper asks again; for long, only when the
                        // client's window is shut.
                        stream.holding();
                    }
                    return Poll::Ready(Some(Ok(Frame::data(data))));
                }
                Ok(Step::Trailers(trailers)) => {
                    self.finish();
                    return Poll::Ready(Some(Ok(Frame::trailers(trailers))));
                }
                Ok(Step::Done) => {
                    self.finish();
                    return Poll::Ready(None);
                }
                Ok(Step::NeedMore) => {}
                Err(e) => {
                    self.fail();
                    return Poll::Ready(Some(Err(e.into())));
                }
            }
            match conn.poll_fill(cx) {
                Poll::Ready(Ok(_)) => {}
                Poll::Ready(Err(e)) => {
                    self.fail();
                    return Poll::Ready(Some(Err(e.into())));
                }
                Poll::Pending => {
                    if self.cut.poll_fired_telling(cx, self.tell.as_ref()).is_ready() {
                        self.fail();
                        return Poll::Ready(Some(Err(Box::new(Cut))));
                    }
                    return Poll::Pending;
                }
            }
        }
    }
}

/// A response body.
pub(crate) enum ProxyBody {
    /// A backend's body.
    Upstream(Upstream),
    /// A body the proxy wrote itself.
    Full { data: Option<Bytes> },
}

impl ProxyBody {
    /// Stream the body left in `conn`, cut by `decoder`; `guard` ends with
    /// it; `cut` aborts it, and `tell` is told of the cut; `stream`, on
    /// h2, when the body waits for hyper. `reusable`: the connection goes
    /// back to its pool at the end.
    pub(crate) fn upstream(
        conn: Pooled,
        decoder: Decoder,
        reusable: bool,
        guard: InflightGuard,
        cut: SignalWait,
        tell: Option<Arc<dyn OnFire>>,
        stream: Option<Arc<StreamHandle>>,
    ) -> ProxyBody {
        let mut body =
            Upstream { conn: Some(conn), decoder, cut, guard: Some(guard), reusable, tell, stream };
        if body.decoder.is_done() {
            // Nothing to stream (HEAD, 204, 304, empty): done already.
            body.finish();
            return ProxyBody::empty();
        }
        ProxyBody::Upstream(body)
    }

    /// A short body.
    pub(crate) fn text(text: &'static str) -> ProxyBody {
        ProxyBody::Full { data: Some(Bytes::from_static(text.as_bytes())) }
    }

    /// A body the proxy made up at run time.
    pub(crate) fn owned_text(text: String) -> ProxyBody {
        ProxyBody::Full { data: Some(Bytes::from(text)) }
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
        match self.get_mut() {
            ProxyBody::Full { data } => Poll::Ready(data.take().map(|d| Ok(Frame::data(d)))),
            ProxyBody::Upstream(body) => body.poll_next(cx),
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            ProxyBody::Full { data } => data.is_none(),
            ProxyBody::Upstream(body) => body.conn.is_none() || body.decoder.is_done(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            ProxyBody::Full { data } => SizeHint::with_exact(data.as_ref().map_or(0, |d| d.len() as u64)),
            ProxyBody::Upstream(body) => match body.decoder.remaining() {
                Some(n) if body.conn.is_some() => SizeHint::with_exact(n),
                Some(_) => SizeHint::with_exact(0),
                None => SizeHint::default(),
            },
        }
    }
}
