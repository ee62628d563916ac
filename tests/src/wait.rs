//! Waiting for a condition with a deadline, the only way tests synchronize
//! with servers and load (never a bare `sleep`): linkerd's
//! `assert_eventually!` in function form.

use std::future::Future;
use std::time::Duration;

/// How often a condition is checked again.
pub const POLL: Duration = Duration::from_millis(10);

/// Wait until `cond` holds, checking every [`POLL`]; panics with `what`
/// after `timeout`.
///
/// ```no_run
/// # async fn f(counter: std::sync::Arc<std::sync::atomic::AtomicU64>) {
/// use bg_tests::wait::eventually;
/// use std::sync::atomic::Ordering;
/// use std::time::Duration;
/// eventually("100 requests done", Duration::from_secs(5), || {
///     counter.load(Ordering::Relaxed) >= 100
/// })
/// .await;
/// # }
/// ```
#[track_caller]
pub fn eventually<'a>(
    what: &'a str,
    timeout: Duration,
    mut cond: impl FnMut() -> bool + 'a,
) -> impl Future<Output = ()> + 'a {
    let caller = std::panic::Location::caller();
    async move {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            if cond() {
                return;
            }
            if tokio::time::Instant::now() >= deadline {
                panic!("{caller}: timed out after {timeout:?} waiting for: {what}");
            }
            tokio::time::sleep(POLL).await;
        }
    }
}

/// Like [`eventually`] for a condition that needs to await (a request, a
/// read). Each check should be short; it is not interrupted.
#[track_caller]
pub fn eventually_async<'a, F, Fut>(
    what: &'a str,
    timeout: Duration,
    mut cond: F,
) -> impl Future<Output = ()> + 'a
where
    F: FnMut() -> Fut + 'a,
    Fut: Future<Output = bool> + 'a,
{
    let caller = std::panic::Location::caller();
    async move {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            if cond().await {
                return;
            }
            if tokio::time::Instant::now() >= deadline {
                panic!("{caller}: timed out after {timeout:?} waiting for: {what}");
            }
            tokio::time::sleep(POLL).await;
        }
    }
}

/// Assert that a condition becomes true within a timeout (default 10 s).
///
/// ```no_run
/// # async fn f(ready: impl Fn() -> bool) {
/// use bg_tests::assert_eventually;
/// assert_eventually!(ready());
/// assert_eventually!(ready(), std::time::Duration::from_secs(2));
/// # }
/// ```
#[macro_export]
macro_rules! assert_eventually {
    ($cond:expr) => {
        $crate::assert_eventually!($cond, ::std::time::Duration::from_secs(10))
    };
    ($cond:expr, $timeout:expr) => {
        $crate::wait::eventually(stringify!($cond), $timeout, || $cond).await
    };
}
