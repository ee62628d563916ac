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
    /// bound report `f64::INFINITY`.
    pub fn quantile(&self, q: f64) -> Option<Duration> {
        let _ = q;
        todo!()
    }

    /// What was observed since `earlier` (a snapshot of the same histogram).
    pub fn since(&self, earlier: &LatencyHistogram) -> LatencyHistogram {
        let _ = earlier;
        todo!()
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
    pub fn since(&self, earlier: &TrafficStats) -> TrafficStats {
        let _ = earlier;
        todo!()
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
