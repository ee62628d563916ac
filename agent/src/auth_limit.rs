//! Failed authentications on the TCP control listener, limited per client
//! address: past [`MAX_FAILURES`] in [`WINDOW`] every request from that
//! address gets 429 with `Retry-After` (checked before the token, so the
//! answer tells nothing about it) until the oldest failure leaves the
//! window. Other addresses are not affected.

use std::collections::{HashMap, VecDeque};
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Failures allowed per address in [`WINDOW`].
pub const MAX_FAILURES: usize = 10;
/// The window failures are counted in.
pub const WINDOW: Duration = Duration::from_secs(60);
/// Addresses tracked at most; the stalest are forgotten beyond.
const MAX_ADDRESSES: usize = 10_000;

/// The failures of every address, newest last.
#[derive(Debug, Default)]
pub struct AuthLimiter {
    failures: Mutex<HashMap<IpAddr, VecDeque<Instant>>>,
}

impl AuthLimiter {
    /// `Some(wait)` when `ip` is over the limit now.
    pub fn blocked(&self, ip: IpAddr, now: Instant) -> Option<Duration> {
        let mut map = self.failures.lock().unwrap_or_else(|e| e.into_inner());
        let seen = map.get_mut(&ip)?;
        while seen.front().is_some_and(|t| now.duration_since(*t) >= WINDOW) {
            seen.pop_front();
        }
        if seen.len() < MAX_FAILURES {
            return None;
        }
        let oldest = *seen.front()?;
        Some(WINDOW.saturating_sub(now.duration_since(oldest)).max(Duration::from_secs(1)))
    }

    /// Count one failure of `ip`.
    pub fn failed(&self, ip: IpAddr, now: Instant) {
        let mut map = self.failures.lock().unwrap_or_else(|e| e.into_inner());
        if map.len() >= MAX_ADDRESSES && !map.contains_key(&ip) {
            map.retain(|_, seen| seen.back().is_some_and(|t| now.duration_since(*t) < WINDOW));
        }
        let seen = map.entry(ip).or_default();
        seen.push_back(now);
        while seen.len() > MAX_FAILURES {
            seen.pop_front();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_eleventh_failure_in_a_minute_is_blocked_per_address() {
        let limiter = AuthLimiter::default();
        let (a, b): (IpAddr, IpAddr) = ("192.0.2.1".parse().unwrap(), "192.0.2.2".parse().unwrap());
        let t0 = Instant::now();
        for i in 0..10 {
            assert_eq!(limiter.blocked(a, t0), None, "blocked after {i}");
            limiter.failed(a, t0 + Duration::from_secs(i));
        }
        let wait = limiter.blocked(a, t0 + Duration::from_secs(10)).expect("blocked");
        assert_eq!(wait, Duration::from_secs(50));
        assert_eq!(limiter.blocked(b, t0), None);
        assert_eq!(limiter.blocked(a, t0 + Duration::from_secs(61)), None, "the window moved on");
    }
}
