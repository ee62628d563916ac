//! The tasks of one h2 connection's streams. hyper hands each stream's
//! future (the service call, then the pipe of the response body to the
//! client) to the connection's executor; ours spawns it on the listener's
//! task tracker, wrapped so that:
//!
//! - a drain's cut of the stream's backend ends the stream at once, also
//!   while hyper waits for the client's flow-control window and does not
//!   poll the body: the wrapper drops the stream's future, which drops the
//!   body (its upstream connection and in-flight count with it) and every
//!   handle of the stream, and h2 resets a stream whose handles are all
//!   gone unfinished (`RST_STREAM` with `CANCEL`). The connection and its
//!   other streams go on.
//! - a stream whose response body has data for the client but is not
//!   polled for `write_timeout` (the client's flow-control window stays
//!   shut: it stopped reading this stream) is dropped the same way. The
//!   socket's own write timeout cannot see that: other streams, pings and
//!   window updates still get through.
//! - the connection knows how many streams are open, for its idle timeout
//!   (pings, settings and window updates are no requests).
//!
//! The response body finds its stream's handle through a task-local set
//! while the stream's future is polled ([`current`]).

use crate::signal::OnFire;
use futures_util::task::AtomicWaker;
use pin_project_lite::pin_project;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::time::{Instant, Sleep};
use tokio_util::task::TaskTracker;

tokio::task_local! {
    /// The handle of the h2 stream whose future is being polled.
    static STREAM: Arc<StreamHandle>;
}

/// The handle of the h2 stream this code runs in; `None` outside an h2
/// stream's task.
pub(crate) fn current() -> Option<Arc<StreamHandle>> {
    STREAM.try_with(Arc::clone).ok()
}

/// What a stream's response body tells the stream's task.
#[derive(Default)]
pub(crate) struct StreamHandle {
    /// A drain cut the backend of the response.
    cut: AtomicBool,
    /// The body handed hyper a frame, more is to come, and hyper has not
    /// asked for it yet.
    held: AtomicBool,
    /// Times hyper asked the body for more: progress.
    polls: AtomicU64,
}

impl StreamHandle {
    /// The body is being polled (hyper wants more).
    pub(crate) fn polled(&self) {
        self.polls.fetch_add(1, Ordering::Relaxed);
        self.held.store(false, Ordering::Relaxed);
    }

    /// The body handed over a frame and has more to come.
    pub(crate) fn holding(&self) {
        self.held.store(true, Ordering::Relaxed);
    }
}

impl OnFire for StreamHandle {
    fn fired(&self) {
        // The signal wakes the stream's task right after: its wrapper
        // then sees the flag and drops the stream.
        self.cut.store(true, Ordering::Release);
    }
}

/// The open streams of one h2 connection.
#[derive(Default)]
pub(crate) struct Streams {
    open: AtomicUsize,
    /// Streams ever opened, so that a stream that opened and closed while
    /// the idle timer ran is noticed.
    opened: AtomicU64,
    /// The connection's task, woken when the first stream opens and when
    /// the last one closes.
    waker: AtomicWaker,
}

impl Streams {
    fn enter(&self) {
        self.opened.fetch_add(1, Ordering::SeqCst);
        if self.open.fetch_add(1, Ordering::SeqCst) == 0 {
            self.waker.wake();
        }
    }

    fn leave(&self) {
        if self.open.fetch_sub(1, Ordering::SeqCst) == 1 {
            self.waker.wake();
        }
    }

    /// Streams open now.
    pub(crate) fn open(&self) -> usize {
        self.open.load(Ordering::SeqCst)
    }

    /// Completes once no stream has been open for `timeout`.
    pub(crate) async fn idle_for(&self, timeout: Duration) {
        loop {
            // Wait for no stream to be open; `epoch` names the streams
            // opened so far.
            let epoch = std::future::poll_fn(|cx| {
                self.waker.register(cx.waker());
                let epoch = self.opened.load(Ordering::SeqCst);
                if self.open() == 0 {
                    Poll::Ready(epoch)
                } else {
                    Poll::Pending
                }
            })
            .await;
            let mut timer = std::pin::pin!(tokio::time::sleep(timeout));
            let idle = std::future::poll_fn(|cx| {
                self.waker.register(cx.waker());
                if self.open() != 0 || self.opened.load(Ordering::SeqCst) != epoch {
                    return Poll::Ready(false);
                }
                timer.as_mut().poll(cx).map(|()| true)
            })
            .await;
            if idle {
                return;
            }
        }
    }
}

/// Counts one stream open on its connection until dropped.
struct Open(Arc<Streams>);

impl Open {
    fn new(streams: Arc<Streams>) -> Open {
        streams.enter();
        Open(streams)
    }
}

impl Drop for Open {
    fn drop(&mut self) {
        self.0.leave();
    }
}

/// The executor of one h2 connection: runs its streams' futures on the
/// listener's task tracker, each cuttable, bounded by the write timeout
/// and counted.
#[derive(Clone)]
pub(crate) struct StreamExec {
    streams: Arc<Streams>,
    tracker: TaskTracker,
    write_timeout: Duration,
}

impl StreamExec {
    /// An executor whose streams are counted in `streams`; one whose body
    /// waits `write_timeout` for hyper to take more is dropped.
    pub(crate) fn new(streams: Arc<Streams>, tracker: TaskTracker, write_timeout: Duration) -> StreamExec {
        StreamExec { streams, tracker, write_timeout }
    }
}

impl<F> hyper::rt::Executor<F> for StreamExec
where
    F: Future<Output = ()> + Send + 'static,
{
    fn execute(&self, fut: F) {
        let open = Open::new(self.streams.clone());
        // Boxed before it is spawned: a stream's future (hyper's, with the
        // forwarding future in it) is kilobytes, and spawning moves it
        // through the tracker's wrapper into the task cell several times;
        // a box moves as a pointer.
        self.tracker.spawn(Box::pin(Stream {
            fut,
            handle: Arc::default(),
            write_timeout: self.write_timeout,
            timer: None,
            armed: None,
            _open: open,
        }));
    }
}

pin_project! {
    /// One stream's future: ends (and is dropped) as soon as its handle
    /// was told of a cut, or once its body was held for `write_timeout`.
    struct Stream<F> {
        #[pin]
        fut: F,
        handle: Arc<StreamHandle>,
        write_timeout: Duration,
        // Made the first time the body is held, kept after: a client
        // that stalls once often stalls again.
        timer: Option<Pin<Box<Sleep>>>,
        // The timer runs for the hold that began after this many polls.
        armed: Option<u64>,
        _open: Open,
    }
}

impl<F: Future<Output = ()>> Future for Stream<F> {
    type Output = ();

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let this = self.project();
        if this.handle.cut.load(Ordering::Acquire) {
            tracing::debug!("h2 stream cut by drain");
            return Poll::Ready(());
        }
        let fut = this.fut;
        if STREAM.sync_scope(this.handle.clone(), || fut.poll(cx)).is_ready() {
            return Poll::Ready(());
        }
        if !this.handle.held.load(Ordering::Relaxed) {
            *this.armed = None;
            return Poll::Pending;
        }
        // hyper waits for the client's window before it asks the body
        // for more; a new hold (the body was polled since) starts the
        // timer again, so a slow but steady reader is not cut.
        let polls = this.handle.polls.load(Ordering::Relaxed);
        if *this.armed != Some(polls) {
            *this.armed = Some(polls);
            let deadline = Instant::now() + *this.write_timeout;
            match this.timer {
                Some(t) => t.as_mut().reset(deadline),
                None => *this.timer = Some(Box::pin(tokio::time::sleep_until(deadline))),
            }
        }
        match this.timer.as_mut().map(|t| t.as_mut().poll(cx)) {
            Some(Poll::Ready(())) => {
                tracing::debug!(timeout = ?this.write_timeout, "h2 stream's client read nothing; reset");
                Poll::Ready(())
            }
            _ => Poll::Pending,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::signal::Signal;
    use hyper::rt::Executor;
    use tokio::sync::oneshot;

    #[tokio::test(start_paused = true)]
    async fn idle_for_waits_out_open_streams_and_restarts_after_each() {
        let streams = Arc::new(Streams::default());
        let exec = StreamExec::new(streams.clone(), TaskTracker::new(), Duration::from_secs(30));
        let (tx, rx) = oneshot::channel::<()>();
        exec.execute(async move {
            let _ = rx.await;
        });
        assert_eq!(streams.open(), 1);
        let started = tokio::time::Instant::now();
        let idle = tokio::spawn({
            let streams = streams.clone();
            async move { streams.idle_for(Duration::from_secs(10)).await }
        });
        tokio::time::sleep(Duration::from_secs(30)).await;
        assert!(!idle.is_finished(), "a stream is open");
        drop(tx);
        // Idle from 30 s on; a stream that comes and goes at 35 s starts
        // the wait again.
        tokio::time::sleep(Duration::from_secs(5)).await;
        exec.execute(async {});
        idle.await.expect("idle");
        let waited = started.elapsed();
        assert!(waited >= Duration::from_secs(45) && waited < Duration::from_secs(46), "{waited:?}");
        assert_eq!(streams.open(), 0);
    }

    /// A stream whose future registers for `signal`'s cut once and is
    /// never polled again, as hyper treats a body while the client's
    /// window is full. The receiver ends when the stream's future is
    /// dropped; it is returned once the stream registered.
    async fn stuck_stream(exec: &StreamExec, signal: &Arc<Signal>) -> oneshot::Receiver<()> {
        let (dropped_tx, dropped_rx) = oneshot::channel::<()>();
        let (registered_tx, registered_rx) = oneshot::channel::<()>();
        let mut registered = Some(registered_tx);
        let mut wait = signal.wait();
        exec.execute(async move {
            let _dropped = dropped_tx;
            std::future::poll_fn(|cx| {
                if let Some(tx) = registered.take() {
                    let me: Arc<dyn OnFire> = current().expect("a stream's handle");
                    assert!(wait.poll_fired_telling(cx, Some(&me)).is_pending());
                    let _ = tx.send(());
                }
                Poll::<()>::Pending
            })
            .await
        });
        registered_rx.await.expect("the stream ran");
        dropped_rx
    }

    #[tokio::test]
    async fn a_cut_drops_a_stream_that_is_not_polled_and_no_other() {
        let streams = Arc::new(Streams::default());
        let exec = StreamExec::new(streams.clone(), TaskTracker::new(), Duration::from_secs(30));
        let (a, b) = (Arc::new(Signal::default()), Arc::new(Signal::default()));
        let cut = stuck_stream(&exec, &a).await;
        let mut other = stuck_stream(&exec, &b).await;
        assert_eq!(streams.open(), 2);
        a.fire();
        tokio::time::timeout(Duration::from_secs(5), cut).await.expect("dropped").expect_err("never sent");
        assert_eq!(streams.open(), 1, "the other stream goes on");
        assert_eq!(other.try_recv(), Err(oneshot::error::TryRecvError::Empty));
        assert!(current().is_none(), "no stream outside a stream's task");
    }
}
