//! Lock-free counters behind the [`crate::TrafficStats`] snapshots: one
//! [`Counters`] per color and one per backend, updated with relaxed atomics on
//! the hot path and read without stopping traffic.

use crate::stats::{LatencyHistogram, TrafficStats, LATENCY_BUCKETS};
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::Duration;

/// Bucket bounds in nanoseconds, so an observation is placed with integer
/// comparisons only.
const BOUNDS_NS: [u64; LATENCY_BUCKETS.len()] = {
    let mut out = [0u64; LATENCY_BUCKETS.len()];
    let mut i = 0;
    while i < LATENCY_BUCKETS.len() {
        out[i] = (LATENCY_BUCKETS[i] * 1e9) as u64;
        i += 1;
    }
    out
};

/// The atomics of one color or one backend.
#[derive(Debug, Default)]
pub(crate) struct Counters {
    requests: AtomicU64,
    responses: [AtomicU64; 5],
    buckets: [AtomicU64; LATENCY_BUCKETS.len() + 1],
    latency_sum_ns: AtomicU64,
    latency_count: AtomicU64,
    /// Requests and upgraded connections in flight now.
    pub(crate) inflight: AtomicU64,
    /// Upgraded connections open now.
    pub(crate) upgraded: AtomicU64,
}

impl Counters {
    /// One more request forwarded (or answered on a request's behalf).
    pub(crate) fn request(&self) {
        self.requests.fetch_add(1, Relaxed);
    }

    /// A response with `status` whose headers came after `latency`.
    pub(crate) fn response(&self, status: u16, latency: Duration) {
        let class = (status / 100).clamp(1, 5) as usize - 1;
        self.responses[class].fetch_add(1, Relaxed);
        let ns = u64::try_from(latency.as_nanos()).unwrap_or(u64::MAX);
        let bucket = BOUNDS_NS.iter().position(|&b| ns <= b).unwrap_or(BOUNDS_NS.len());
        self.buckets[bucket].fetch_add(1, Relaxed);
        self.latency_sum_ns.fetch_add(ns, Relaxed);
        self.latency_count.fetch_add(1, Relaxed);
    }

    /// A copy of every counter. Counters are read one by one, so a snapshot
    /// taken under load may be off by the requests of a few microseconds.
    pub(crate) fn snapshot(&self) -> TrafficStats {
        TrafficStats {
            requests: self.requests.load(Relaxed),
            responses: std::array::from_fn(|i| self.responses[i].load(Relaxed)),
            latency: LatencyHistogram {
                counts: self.buckets.iter().map(|b| b.load(Relaxed)).collect(),
                sum: self.latency_sum_ns.load(Relaxed) as f64 / 1e9,
                count: self.latency_count.load(Relaxed),
            },
            inflight: self.inflight.load(Relaxed),
            upgraded: self.upgraded.load(Relaxed),
        }
    }
}

/// Counts one of something (an open connection, a queued request) in a
/// gauge for as long as it lives.
pub(crate) struct GaugeGuard<'a>(&'a AtomicU64);

impl<'a> GaugeGuard<'a> {
    /// One more in `gauge` until dropped.
    pub(crate) fn new(gauge: &'a AtomicU64) -> GaugeGuard<'a> {
        gauge.fetch_add(1, Relaxed);
        GaugeGuard(gauge)
    }
}

impl<'a> GaugeGuard<'a> {
    /// One more in `gauge` until dropped, unless it holds `max` already.
    pub(crate) fn below(gauge: &'a AtomicU64, max: u64) -> Option<GaugeGuard<'a>> {
        if gauge.fetch_add(1, Relaxed) >= max {
            gauge.fetch_sub(1, Relaxed);
            return None;
        }
        Some(GaugeGuard(gauge))
    }
}

impl Drop for GaugeGuard<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn responses_land_in_their_class_and_bucket() {
        let c = Counters::default();
        c.request();
        c.response(200, Duration::from_micros(300));
        c.response(503, Duration::from_millis(30));
        c.response(101, Duration::from_secs(20));
        let s = c.snapshot();
        assert_eq!(s.requests, 1);
        assert_eq!(s.responses, [1, 1, 0, 0, 1]);
        assert_eq!(s.latency.count, 3);
        assert_eq!(s.latency.counts.len(), LATENCY_BUCKETS.len() + 1);
        assert_eq!(s.latency.counts[0], 1); // <= 0.5 ms
        assert_eq!(s.latency.counts[6], 1); // <= 50 ms
        assert_eq!(s.latency.counts[14], 1); // +Inf
        assert!((s.latency.sum - 20.0303).abs() < 1e-6);
    }
}
