//! A one-shot signal for the hot path: a drain's cut of everything open on
//! a backend (every request in flight waits on it), and a listener's
//! "shutdown has started" (every connection waits on it). Waiting must be
//! cheap: one lock to take a slot when a wait is first polled, one to give
//! it back, and a plain atomic load on every other poll. (A
//! `CancellationToken` locks and re-registers on every poll, which the
//! profile showed at ~4% of the proxy's user time.)

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll, Waker};

/// Fires once; what waits on it is woken then.
#[derive(Default)]
pub(crate) struct Signal {
    fired: AtomicBool,
    waiters: Mutex<Slots>,
}

/// Told when a signal fires, before the waits are woken: how a wait
/// hands the news to something that is not polled itself (a client
/// connection whose response body hyper stops polling while the client's
/// buffer is full).
pub(crate) trait OnFire: Send + Sync {
    /// The signal fired.
    fn fired(&self);
}

/// A registered wait: its waker, and whom to tell.
struct Waiter {
    waker: Waker,
    tell: Option<Arc<dyn OnFire>>,
}

/// The registered waits, in reusable slots.
#[derive(Default)]
struct Slots {
    wakers: Vec<Option<Waiter>>,
    free: Vec<usize>,
}

impl Signal {
    fn lock(&self) -> MutexGuard<'_, Slots> {
        // The slots stay consistent even if a holder panicked.
        self.waiters.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Fire: every registered wait is woken, every later poll is ready.
    pub(crate) fn fire(&self) {
        self.fired.store(true, Ordering::SeqCst);
        let waiters: Vec<Waiter> = self.lock().wakers.iter_mut().filter_map(Option::take).collect();
        for waiter in waiters {
            if let Some(tell) = &waiter.tell {
                tell.fired();
            }
            waiter.waker.wake();
        }
    }

    /// Whether it fired.
    pub(crate) fn is_fired(&self) -> bool {
        self.fired.load(Ordering::SeqCst)
    }

    /// A wait on this signal.
    pub(crate) fn wait(self: &Arc<Self>) -> SignalWait {
        SignalWait::new(self.clone())
    }
}

/// One wait on a [`Signal`]: takes a slot the first time it is polled
/// while the signal has not fired, and gives it back when dropped. It owns
/// a handle to the signal, so it can ride along with a response body.
pub(crate) struct SignalWait {
    signal: Arc<Signal>,
    /// The slot, the waker stored in it, and whether someone is told.
    slot: Option<(usize, Waker, bool)>,
}

impl SignalWait {
    /// A wait on `signal`; nothing is registered until it is polled.
    pub(crate) fn new(signal: Arc<Signal>) -> SignalWait {
        SignalWait { signal, slot: None }
    }

    /// Ready once the signal fired; otherwise the task is woken when it
    /// does.
    pub(crate) fn poll_fired(&mut self, cx: &mut Context<'_>) -> Poll<()> {
        self.poll_fired_telling(cx, None)
    }

    /// [`SignalWait::poll_fired`], and `tell` is told when the signal
    /// fires. A wait registered without anyone to tell registers again
    /// (one lock) the first time it is given someone.
    pub(crate) fn poll_fired_telling(
        &mut self,
        cx: &mut Context<'_>,
        tell: Option<&Arc<dyn OnFire>>,
    ) -> Poll<()> {
        if self.signal.is_fired() {
            return Poll::Ready(());
        }
        match &self.slot {
            // Registered with this waker, and with whom to tell if asked.
            Some((_, waker, told)) if waker.will_wake(cx.waker()) && (*told || tell.is_none()) => {}
            _ => {
                let waker = cx.waker().clone();
                let mut slots = self.signal.lock();
                let index = match self.slot.take() {
                    Some((index, _, _)) => index,
                    None => slots.free.pop().unwrap_or_else(|| {
                        slots.wakers.push(None);
                        slots.wakers.len() - 1
                    }),
                };
                slots.wakers[index] = Some(Waiter { waker: waker.clone(), tell: tell.cloned() });
                drop(slots);
                self.slot = Some((index, waker, tell.is_some()));
                // Fired between the first check and the registration: its
                // wake-up may have missed the slot.
                if self.signal.is_fired() {
                    return Poll::Ready(());
                }
            }
        }
        Poll::Pending
    }

    /// Give the slot back now: the signal no longer wakes (or tells)
    /// anyone for this wait, until it is polled again.
    pub(crate) fn forget(&mut self) {
        if let Some((index, _, _)) = self.slot.take() {
            let mut slots = self.signal.lock();
            slots.wakers[index] = None;
            slots.free.push(index);
        }
    }
}

/// Completes once the signal fired, and stays complete: it can be polled
/// again, so one wait serves several phases of a connection.
impl Future for SignalWait {
    type Output = ();

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        self.get_mut().poll_fired(cx)
    }
}

impl Drop for SignalWait {
    fn drop(&mut self) {
        self.forget();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[tokio::test]
    async fn a_registered_wait_is_woken_by_fire_stays_complete_and_slots_are_reused() {
        let signal = Arc::new(Signal::default());
        let mut first = SignalWait::new(signal.clone());
        let waiting = tokio::spawn(async move {
            (&mut first).await;
            // Polled again, it is still complete.
            (&mut first).await;
        });
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert!(!waiting.is_finished(), "nothing fired yet");
        {
            // A second wait that registers and leaves gives its slot back.
            let mut second = SignalWait::new(signal.clone());
            let waker = futures_util::task::noop_waker();
            assert!(second.poll_fired(&mut Context::from_waker(&waker)).is_pending());
        }
        assert_eq!(signal.lock().free.len(), 1);
        signal.fire();
        tokio::time::timeout(Duration::from_secs(1), waiting).await.expect("woken").expect("no panic");
        let mut late = SignalWait::new(signal.clone());
        let waker = futures_util::task::noop_waker();
        assert!(
            late.poll_fired(&mut Context::from_waker(&waker)).is_ready(),
            "a later wait sees the fire at once"
        );
    }

    struct Told(std::sync::atomic::AtomicBool);

    impl OnFire for Told {
        fn fired(&self) {
            self.0.store(true, Ordering::SeqCst);
        }
    }

    #[test]
    fn a_wait_registered_without_anyone_to_tell_registers_again_when_given_someone() {
        let signal = Arc::new(Signal::default());
        let told = Arc::new(Told(AtomicBool::new(false)));
        let tell: Arc<dyn OnFire> = told.clone();
        let waker = futures_util::task::noop_waker();
        let mut cx = Context::from_waker(&waker);
        let mut wait = signal.wait();
        // First polled as a plain wait (as during the upstream exchange)...
        assert!(wait.poll_fired(&mut cx).is_pending());
        // ...then with someone to tell, same waker (as by the body).
        assert!(wait.poll_fired_telling(&mut cx, Some(&tell)).is_pending());
        assert_eq!(signal.lock().wakers.iter().flatten().count(), 1, "one slot, reused");
        signal.fire();
        assert!(told.0.load(Ordering::SeqCst), "told before the wake-up");
        assert!(wait.poll_fired_telling(&mut cx, Some(&tell)).is_ready());
    }
}
