//! One-second samples of each service's traffic per color (requests/s,
//! 5xx/s, p99) for the last 15 minutes, kept for the dashboard. One task
//! ([`run`]) owns the rings and reads the proxies' counters once a
//! second; readers get the published snapshot through a `watch` channel
//! and never wait for it.

use crate::controller::Service;
use bg_proxy::{Color, ProxyStats, TrafficStats};
use serde::Serialize;
use std::collections::{BTreeMap, VecDeque};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

/// Samples kept per service: 15 minutes of one-second samples.
pub const RING_LEN: usize = 15 * 60;
/// How often a sample is taken.
pub const INTERVAL: Duration = Duration::from_secs(1);

/// One color's traffic over one sample interval.
#[derive(Debug, Clone, Copy, PartialEq, Default, Serialize)]
pub struct ColorSample {
    /// Responses in the interval.
    pub n: u64,
    /// Responses per second.
    pub rps: f64,
    /// 5xx responses per second.
    pub err: f64,
    /// 99th percentile of time to response headers, milliseconds (the
    /// bucket bound of the proxy's histogram, at most its last finite
    /// bound, 10 s); `null` without responses.
    pub p99_ms: Option<f64>,
    /// Requests in flight at the end of the interval.
    pub inflight: u64,
}

/// Both colors of one service over one interval.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Sample {
    /// End of the interval, unix milliseconds.
    pub t: u64,
    /// Blue's traffic.
    pub blue: ColorSample,
    /// Green's traffic.
    pub green: ColorSample,
}

/// The last [`RING_LEN`] samples of one service, oldest first, and the
/// counters the next sample is measured from.
#[derive(Debug, Clone, Default)]
pub struct Ring {
    samples: VecDeque<Sample>,
    last: Option<(u64, ProxyStats)>,
}

fn color_sample(now: &TrafficStats, before: &TrafficStats, secs: f64) -> ColorSample {
    let d = now.since(before);
    let last_bound = Duration::from_secs_f64(bg_proxy::LATENCY_BUCKETS[bg_proxy::LATENCY_BUCKETS.len() - 1]);
    let responses: u64 = d.responses.iter().sum();
    ColorSample {
        n: responses,
        rps: responses as f64 / secs,
        err: d.responses[4] as f64 / secs,
        // Above the last bucket bound it reads as that bound (JSON has no
        // infinity).
        p99_ms: d.latency.quantile(0.99).map(|q| q.min(last_bound).as_secs_f64() * 1000.0),
        inflight: now.inflight,
    }
}

impl Ring {
    /// Record the counters read at `t_ms` (unix milliseconds). The first
    /// call only sets the baseline; every later one adds a sample of the
    /// rates since the previous call (rates per second of the real time
    /// between the two reads).
    pub fn record(&mut self, t_ms: u64, stats: ProxyStats) {
        if let Some((before_t, before)) = &self.last {
            let secs = (t_ms.saturating_sub(*before_t) as f64 / 1000.0).max(0.001);
            let sample = Sample {
                t: t_ms,
                blue: color_sample(stats.color(Color::Blue), before.color(Color::Blue), secs),
                green: color_sample(stats.color(Color::Green), before.color(Color::Green), secs),
            };
            if self.samples.len() == RING_LEN {
                self.samples.pop_front();
            }
            self.samples.push_back(sample);
        }
        self.last = Some((t_ms, stats));
    }

    /// The samples, oldest first.
    pub fn samples(&self) -> impl DoubleEndedIterator<Item = &Sample> + ExactSizeIterator {
        self.samples.iter()
    }

    /// The newest sample.
    pub fn latest(&self) -> Option<&Sample> {
        self.samples.back()
    }
}

/// Every service's ring, as last published.
pub type Rings = Arc<BTreeMap<String, Ring>>;

fn unix_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64)
}

/// A channel the sampler publishes to, with an empty ring per service.
pub fn channel(services: &BTreeMap<String, Arc<Service>>) -> (watch::Sender<Rings>, watch::Receiver<Rings>) {
    let rings = services.keys().map(|k| (k.clone(), Ring::default())).collect();
    watch::channel(Arc::new(rings))
}

/// Sample every service once a second until `shutdown`, publishing the
/// rings on `tx` after each round.
pub async fn run(
    services: BTreeMap<String, Arc<Service>>,
    tx: watch::Sender<Rings>,
    shutdown: CancellationToken,
) {
    let mut rings: BTreeMap<String, Ring> = (*tx.borrow().clone()).clone();
    let mut tick = tokio::time::interval(INTERVAL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tick.tick() => {}
        }
        let now = unix_ms();
        for (name, svc) in &services {
            rings.entry(name.clone()).or_default().record(now, svc.proxy().stats());
        }
        tx.send_replace(Arc::new(rings.clone()));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bg_proxy::LatencyHistogram;

    fn stats(blue_2xx: u64, blue_5xx: u64, green_2xx: u64, blue_fast: u64, blue_slow: u64) -> ProxyStats {
        let mut counts = vec![0; bg_proxy::LATENCY_BUCKETS.len() + 1];
        counts[2] = blue_fast; // within 2.5 ms
        counts[8] = blue_slow; // within 250 ms
        let blue = TrafficStats {
            requests: blue_2xx + blue_5xx,
            responses: [0, blue_2xx, 0, 0, blue_5xx],
            latency: LatencyHistogram { counts, sum: 0.0, count: blue_fast + blue_slow },
            inflight: 3,
            upgraded: 0,
        };
        let green =
            TrafficStats { requests: green_2xx, responses: [0, green_2xx, 0, 0, 0], ..Default::default() };
        ProxyStats { blue, green, backends: vec![], connections: 0, switches: 0, drains_cut: 0, cut: 0 }
    }

    #[test]
    fn rates_are_per_second_of_the_interval_and_p99_is_of_the_interval() {
        let mut ring = Ring::default();
        ring.record(10_000, stats(100, 0, 0, 100, 0));
        assert!(ring.latest().is_none(), "the first read is only a baseline");
        // Two seconds later: 200 more 2xx, 20 5xx on blue, 50 on green; of
        // blue's 220 new answers 2 were slow (p99 falls in the fast bucket
        // only when at most 1% are slow: here 2/220 < 1%).
        ring.record(12_000, stats(300, 20, 50, 318, 2));
        let s = *ring.latest().unwrap();
        assert_eq!(s.t, 12_000);
        assert_eq!(s.blue.n, 220);
        assert_eq!(s.blue.rps, 110.0);
        assert_eq!(s.blue.err, 10.0);
        assert_eq!(s.green.rps, 25.0);
        assert_eq!(s.green.err, 0.0);
        assert_eq!(s.blue.p99_ms, Some(2.5));
        assert_eq!(s.green.p99_ms, None, "green has no latency observations");
        assert_eq!(s.blue.inflight, 3);
        // Ten slow ones out of 20 in the next second: p99 is the slow bucket.
        ring.record(13_000, stats(320, 20, 50, 328, 12));
        assert_eq!(ring.latest().unwrap().blue.p99_ms, Some(250.0));
        // Beyond the last bucket: the last bound, not infinity.
        let mut slow = stats(330, 20, 50, 328, 12);
        slow.blue.latency.counts[bg_proxy::LATENCY_BUCKETS.len()] = 10;
        ring.record(14_000, slow);
        assert_eq!(ring.latest().unwrap().blue.p99_ms, Some(10_000.0));
        assert_eq!(ring.samples().len(), 3);
    }

    #[test]
    fn the_ring_keeps_fifteen_minutes() {
        let mut ring = Ring::default();
        for i in 0..(RING_LEN as u64 + 11) {
            ring.record(i * 1000, stats(i, 0, 0, 0, 0));
        }
        assert_eq!(ring.samples().len(), RING_LEN);
        assert_eq!(ring.samples().next().unwrap().t, 11_000, "the oldest were dropped");
        assert_eq!(ring.latest().unwrap().t, RING_LEN as u64 * 1000 + 10_000);
        assert!(ring.samples().all(|s| s.blue.rps == 1.0));
    }
}
