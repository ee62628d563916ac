//! A one-shot broadcast for the connections of a listener ("shutdown has
//! started"), cheaper per connection than a `CancellationToken`: checking it
//! is one atomic load, and a waiter registers with its task once rather than
//! taking two locks on every poll.

use pin_project_lite::pin_project;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll, Waker};
use tokio::sync::futures::Notified;
use tokio::sync::Notify;

/// Fires once; every waiter, present or future, then sees it.
#[derive(Default)]
pub(crate) struct Signal {
    fired: AtomicBool,
    notify: Notify,
}

impl Signal {
    /// Fire the signal and wake every waiter.
    pub(crate) fn fire(&self) {
        self.fired.store(true, Ordering::Release);
        self.notify.notify_waiters();
    }

    /// Whether the signal fired.
    pub(crate) fn fired(&self) -> bool {
        self.fired.load(Ordering::Acquire)
    }

    /// A future that completes once the signal fired. It can be polled
    /// again after it completed (it stays complete), so one waiter can serve
    /// several phases of a connection.
    pub(crate) fn wait(&self) -> Wait<'_> {
        // Created before the first look at the flag: a `fire` after this
        // point completes `notified` even if it has not been polled yet.
        Wait { signal: self, notified: self.notify.notified(), waker: None }
    }
}

pin_project! {
    /// The future of [`Signal::wait`].
    pub(crate) struct Wait<'a> {
        signal: &'a Signal,
        #[pin]
        notified: Notified<'a>,
        // The waker `notified` was registered with; while the task polls
        // with the same one, the registration stands and is not renewed.
        waker: Option<Waker>,
    }
}

impl Future for Wait<'_> {
    type Output = ();

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let this = self.project();
        if this.signal.fired() {
            return Poll::Ready(());
        }
        if this.waker.as_ref().is_some_and(|w| w.will_wake(cx.waker())) {
            return Poll::Pending;
        }
        if this.notified.poll(cx).is_ready() {
            return Poll::Ready(());
        }
        *this.waker = Some(cx.waker().clone());
        Poll::Pending
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use std::time::Duration;

    #[tokio::test]
    async fn a_waiter_wakes_when_fired_and_stays_complete() {
        let s = Arc::new(Signal::default());
        let waiter = tokio::spawn({
            let s = s.clone();
            async move {
                let mut w = std::pin::pin!(s.wait());
                w.as_mut().await;
                // Polled again, it is still complete.
                w.as_mut().await;
            }
        });
        tokio::time::sleep(Duration::from_millis(10)).await;
        assert!(!waiter.is_finished());
        s.fire();
        tokio::time::timeout(Duration::from_secs(5), waiter).await.expect("woken").expect("no panic");
        assert!(s.fired());
    }

    #[tokio::test]
    async fn a_wait_created_before_the_fire_but_polled_after_completes() {
        let s = Signal::default();
        let w = s.wait();
        s.fire();
        tokio::time::timeout(Duration::from_secs(5), w).await.expect("complete");
    }
}
