//! Snapshots of the proxy's counters, per color and per backend, as plain
//! data the agent turns into Prometheus metrics and canary verdicts.

use crate::{BackendId, Color};
use std::net::SocketAddr;
use std::time::Duration;

/// Upper bounds of the latency histogram buckets, in seconds (the last
/// bucket, `+Inf`, is implicit).
pub const LATENCY_BUCKETS: [f64; 14] =
    [0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0];

/// A cumulative latency histogram (time to response headers).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct LatencyHistogram {
    /// Counts per bucket of [`LATENCY_BUCKETS`], plus one for `+Inf`
    /// (not cumulative: each count is for its own bucket).
    pub counts: Vec<u64>,
    /// Sum of all observations, seconds.
    pub sum: f64,
    /// Number of observations.
    pub count: u64,
}

impl LatencyHistogram {
    /// The smallest bucket bound below which `q` (0..=1) of observations
    /// fall; `None` without observations. Observations above the last
    /// bound report `f64::INFINITY`, which a [`Duration`] spells
    /// [`Duration::MAX`].
    ///
    /// ```
    /// use bg_proxy::LatencyHistogram;
    /// use std::time::Duration;
    ///
    /// let mut counts = vec![0; 15];
    /// counts[4] = 99; // 99 answers within 10 ms
    /// counts[10] = 1; // one within 1 s
    /// let h = LatencyHistogram { counts, sum: 1.5, count: 100 };
    /// assert_eq!(h.quantile(0.5), Some(Duration::from_millis(10)));
    /// assert_eq!(h.quantile(1.0), Some(Duration::from_secs(1)));
    /// ```
    pub fn quantile(&self, q: f64) -> Option<Duration> {
        let total: u64 = self.counts.iter().sum();
        if total == 0 {
            return None;
        }
        let q = if q.is_nan() { 1.0 } else { q.clamp(0.0, 1.0) };
        // The rank of the observation the quantile names, 1-based.
        let rank = ((q * total as f64).ceil() as u64).clamp(1, total);
        let mut seen = 0;
        for (i, n) in self.counts.iter().enumerate() {
            seen += n;
            if seen >= rank {
                return Some(match LATENCY_BUCKETS.get(i) {
                    Some(bound) => Duration::from_secs_f64(*bound),
                    None => Duration::MAX,
                });
            }
        }
        Some(Duration::MAX)
    }

    /// What was observed since `earlier` (a snapshot of the same histogram).
    pub fn since(&self, earlier: &LatencyHistogram) -> LatencyHistogram {
        let counts = self
            .counts
            .iter()
            .enumerate()
            .map(|(i, n)| n.saturating_sub(earlier.counts.get(i).copied().unwrap_or(0)))
            .collect();
        LatencyHistogram {
            counts,
            sum: (self.sum - earlier.sum).max(0.0),
            count: self.count.saturating_sub(earlier.count),
        }
    }
}

/// Counters for one color or one backend.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct TrafficStats {
    /// Requests forwarded (or answered by the proxy on their behalf).
    pub requests: u64,
    /// Responses by status class: index 0 is 1xx, ..., 4 is 5xx. Answers
    /// the proxy made itself (502, 503) count as 5xx.
    pub responses: [u64; 5],
    /// Time to response headers.
    pub latency: LatencyHistogram,
    /// Requests in flight now (until their body is fully sent).
    pub inflight: u64,
    /// Upgraded (WebSocket) connections open now.
    pub upgraded: u64,
}

impl TrafficStats {
    /// Fraction of responses that are 5xx; 0 without responses.
    pub fn error_rate(&self) -> f64 {
        let total: u64 = self.responses.iter().sum();
        if total == 0 {
            0.0
        } else {
            self.responses[4] as f64 / total as f64
        }
    }

    /// Counters accumulated since `earlier`; gauges (`inflight`,
    /// `upgraded`) are taken from `self`.
    ///
    /// ```
    /// use bg_proxy::TrafficStats;
    ///
    /// let before = TrafficStats { requests: 10, responses: [0, 10, 0, 0, 0], ..Default::default() };
    /// let now = TrafficStats { requests: 30, responses: [0, 25, 0, 0, 5], inflight: 2, ..Default::default() };
    /// let window = now.since(&before);
    /// assert_eq!(window.requests, 20);
    /// assert_eq!(window.error_rate(), 0.25);
    /// assert_eq!(window.inflight, 2);
    /// ```
    pub fn since(&self, earlier: &TrafficStats) -> TrafficStats {
        TrafficStats {
            requests: self.requests.saturating_sub(earlier.requests),
            responses: std::array::from_fn(|i| self.responses[i].saturating_sub(earlier.responses[i])),
            latency: self.latency.since(&earlier.latency),
            inflight: self.inflight,
            upgraded: self.upgraded,
        }
    }
}

/// Counters of one backend.
#[derive(Debug, Clone, PartialEq)]
pub struct BackendStats {
    /// Its name.
    pub id: BackendId,
    /// Its color.
    pub color: Color,
    /// Its address.
    pub addr: SocketAddr,
    /// Whether it is in rotation now.
    pub in_rotation: bool,
    /// Its counters.
    pub traffic: TrafficStats,
}

/// Everything the proxy counts.
#[derive(Debug, Clone, PartialEq)]
pub struct ProxyStats {
    /// Per color, blue then green; counters outlive the backends.
    pub blue: TrafficStats,
    /// See `blue`.
    pub green: TrafficStats,
    /// Per backend known to the proxy now.
    pub backends: Vec<BackendStats>,
    /// Client connections open now, all listeners.
    pub connections: u64,
    /// Route table swaps since start.
    pub switches: u64,
    /// Drains since start that cut something at their deadline.
    pub drains_cut: u64,
    /// Requests and upgraded connections cut by drains since start.
    pub cut: u64,
}

impl ProxyStats {
    /// The counters of one color.
    pub fn color(&self, color: Color) -> &TrafficStats {
        match color {
            Color::Blue => &self.blue,
            Color::Green => &self.green,
        }
    }
}

/// What a drain saw.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct DrainReport {
    /// Requests and upgraded connections that were in flight when the drain
    /// started and finished by themselves.
    pub finished: u64,
    /// Requests and upgraded connections still open at the deadline and cut.
    pub cut: u64,
    /// How long the drain took.
    pub elapsed: Duration,
    /// Whether the deadline was reached.
    pub timed_out: bool,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hist(pairs: &[(usize, u64)]) -> LatencyHistogram {
        let mut counts = vec![0; LATENCY_BUCKETS.len() + 1];
        for &(i, n) in pairs {
            counts[i] = n;
        }
        let count = counts.iter().sum();
        LatencyHistogram { counts, sum: 0.0, count }
    }

    #[test]
    fn quantile_without_observations_is_none() {
        assert_eq!(LatencyHistogram::default().quantile(0.5), None);
        assert_eq!(hist(&[]).quantile(0.99), None);
    }

    #[test]
    fn quantile_picks_the_bucket_holding_the_rank() {
        // 90 fast (<= 1 ms), 9 medium (<= 100 ms), 1 slow (<= 2.5 s).
        let h = hist(&[(1, 90), (7, 9), (11, 1)]);
        assert_eq!(h.quantile(0.0), Some(Duration::from_millis(1)));
        assert_eq!(h.quantile(0.5), Some(Duration::from_millis(1)));
        assert_eq!(h.quantile(0.9), Some(Duration::from_millis(1)));
        assert_eq!(h.quantile(0.91), Some(Duration::from_millis(100)));
        assert_eq!(h.quantile(0.99), Some(Duration::from_millis(100)));
        assert_eq!(h.quantile(1.0), Some(Duration::from_millis(2500)));
    }

    #[test]
    fn quantile_above_the_last_bound_is_max() {
        let h = hist(&[(0, 1), (14, 1)]);
        assert_eq!(h.quantile(1.0), Some(Duration::MAX));
        assert_eq!(h.quantile(0.5), Some(Duration::from_micros(500)));
    }

    #[test]
    fn since_subtracts_counts_and_keeps_gauges() {
        let mut before = TrafficStats {
            requests: 5,
            responses: [0, 4, 0, 0, 1],
            latency: hist(&[(2, 5)]),
            inflight: 7,
            upgraded: 3,
        };
        before.latency.sum = 1.0;
        let mut now = TrafficStats {
            requests: 12,
            responses: [0, 9, 0, 1, 2],
            latency: hist(&[(2, 8), (5, 4)]),
            inflight: 1,
            upgraded: 0,
        };
        now.latency.sum = 3.5;
        let d = now.since(&before);
        assert_eq!(d.requests, 7);
        assert_eq!(d.responses, [0, 5, 0, 1, 1]);
        assert_eq!(d.latency.count, 7);
        assert_eq!(d.latency.counts[2], 3);
        assert_eq!(d.latency.counts[5], 4);
        assert!((d.latency.sum - 2.5).abs() < 1e-9);
        assert_eq!(d.inflight, 1);
        assert_eq!(d.upgraded, 0);
        assert!((d.error_rate() - 1.0 / 7.0).abs() < 1e-9);
    }

    #[test]
    fn since_an_empty_snapshot_is_the_whole() {
        let now = hist(&[(3, 2)]);
        assert_eq!(now.since(&LatencyHistogram::default()), now);
    }
}
