//! Switching under load: each proxy in front of two websample upstreams
//! (v1, v2) while keep-alive clients and a fresh-connection stream run; N
//! switches the proxy's own way; failed requests counted, and the time from
//! each switch call to the first answer from the new version.

use super::peers::{Peer, RunningPeer, Tools};
use super::Plan;
use crate::load::{Load, RequestRecord};
use serde::Serialize;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

/// What one peer's switching run saw.
#[derive(Debug, Clone, Serialize)]
pub struct SwitchRun {
    /// The peer's name.
    pub peer: &'static str,
    /// Switches made.
    pub switches: usize,
    /// Switch commands that failed.
    pub switch_errors: usize,
    /// Requests sent during the run.
    pub requests: u64,
    /// Requests failed (no answer, or 5xx).
    pub failed: u64,
    /// A few of the failures.
    pub errors: Vec<String>,
    /// Median time from a switch call to the first answer of the new version, µs.
    pub to_new_median_us: u64,
    /// Longest such time, µs.
    pub to_new_max_us: u64,
    /// Switches after which no answer of the new version came at all.
    pub never_switched: usize,
    /// Median of the stale windows (see [`stale_windows`]), µs.
    pub stale_median_us: u64,
    /// Longest stale window, µs.
    pub stale_max_us: u64,
}

/// For each switch (when it was called, and the version it moved to), how
/// long until a request sent after it was answered by that version.
pub fn time_to_new(records: &[RequestRecord], switches: &[(Instant, String)]) -> Vec<Option<Duration>> {
    switches
        .iter()
        .map(|(at, version)| {
            records
                .iter()
                .filter(|r| r.started >= *at && r.version.as_deref() == Some(version.as_str()))
                .map(|r| r.finished.duration_since(*at))
                .min()
        })
        .collect()
}

/// For each switch, how long after the call requests were still sent to
/// the version it moved away from: the latest start, after the call, of a
/// request the old version answered and that ended before the next switch
/// (one still open then may have been routed by that switch); zero if
/// none. This is when the switch took effect as clients see it, without
/// the time the first new answer spends in flight.
pub fn stale_windows(records: &[RequestRecord], switches: &[(Instant, String)]) -> Vec<Duration> {
    switches
        .iter()
        .enumerate()
        .map(|(i, (at, version))| {
            let next = switches.get(i + 1).map(|(t, _)| *t);
            records
                .iter()
                .filter(|r| r.started >= *at && next.is_none_or(|n| r.finished < n))
                .filter(|r| r.version.as_deref().is_some_and(|v| v != version))
                .map(|r| r.started.duration_since(*at))
                .max()
                .unwrap_or(Duration::ZERO)
        })
        .collect()
}

/// Median and maximum in µs of the known durations, and how many are missing.
pub fn summarize(times: &[Option<Duration>]) -> (u64, u64, usize) {
    let known: Vec<Duration> = times.iter().flatten().copied().collect();
    let (median, max) = median_max_us(&known);
    (median, max, times.len() - known.len())
}

/// Median and maximum of `times` in µs (zeros when empty).
pub fn median_max_us(times: &[Duration]) -> (u64, u64) {
    let mut us: Vec<u64> = times.iter().map(|d| d.as_micros() as u64).collect();
    us.sort_unstable();
    (us.get(us.len() / 2).copied().unwrap_or(0), us.last().copied().unwrap_or(0))
}

/// Run the switching test against one peer.
pub async fn run(
    tools: &Tools,
    setting: super::Setting,
    plan: &Plan,
    peer: Peer,
    upstreams: &[(SocketAddr, String)],
) -> SwitchRun {
    let addrs: Vec<SocketAddr> = upstreams.iter().map(|(a, _)| *a).collect();
    let mut running = RunningPeer::start(tools, setting, None, peer, &addrs, None);
    let bound = plan.switch_every * (plan.switches as u32 + 4) + Duration::from_secs(10);
    let keepalive = Load::keepalive(16).target(running.addr).max_duration(bound).record_requests().start();
    let fresh = Load::rate(200).fresh_connections().target(running.addr).max_duration(bound).start();
    tokio::time::sleep(plan.switch_every).await;
    let mut switches = Vec::new();
    let mut switch_errors = 0;
    for i in 0..plan.switches {
        let version = upstreams[(i + 1) % upstreams.len()].1.clone();
        let at = Instant::now();
        if let Err(e) = running.switch() {
            eprintln!("  {} switch {i}: {e}", peer.name());
            switch_errors += 1;
        }
        switches.push((at, version));
        tokio::time::sleep(plan.switch_every).await;
    }
    let a = keepalive.stop().await;
    let b = fresh.stop().await;
    let (to_new_median_us, to_new_max_us, never_switched) = summarize(&time_to_new(&a.records, &switches));
    let (stale_median_us, stale_max_us) = median_max_us(&stale_windows(&a.records, &switches));
    let mut errors = a.errors.clone();
    errors.extend(b.errors.iter().cloned());
    errors.truncate(5);
    SwitchRun {
        peer: peer.name(),
        switches: plan.switches,
        switch_errors,
        requests: a.total() + b.total(),
        failed: a.failed + b.failed,
        errors,
        to_new_median_us,
        to_new_max_us,
        never_switched,
        stale_median_us,
        stale_max_us,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(at: Instant, sent_ms: u64, took_ms: u64, version: &str) -> RequestRecord {
        let started = at + Duration::from_millis(sent_ms);
        RequestRecord {
            started,
            finished: started + Duration::from_millis(took_ms),
            status: Some(200),
            version: Some(version.to_string()),
        }
    }

    #[test]
    fn first_new_answer_counts_only_requests_sent_after_the_call() {
        let t = Instant::now();
        let switches = vec![(t + Duration::from_millis(10), "v2".to_string())];
        let records = vec![
            // Sent before the call, answered by v2 after it: not counted.
            record(t, 9, 2, "v2"),
            record(t, 11, 3, "v2"),
            record(t, 12, 1, "v2"),
        ];
        assert_eq!(time_to_new(&records, &switches), vec![Some(Duration::from_millis(3))]);
        assert_eq!(time_to_new(&[], &switches), vec![None]);
    }

    #[test]
    fn stale_window_is_the_last_old_request_sent_before_the_next_switch() {
        let t = Instant::now();
        let ms = Duration::from_millis;
        let switches = vec![(t + ms(10), "v2".to_string()), (t + ms(20), "v1".to_string())];
        let records = vec![
            record(t, 5, 1, "v1"),
            record(t, 11, 1, "v1"),
            record(t, 13, 1, "v1"),
            record(t, 14, 1, "v2"),
            // Open across the second switch, which may have routed it.
            record(t, 19, 2, "v1"),
            // After the second switch v1 is the new version again.
            record(t, 25, 1, "v1"),
        ];
        assert_eq!(stale_windows(&records, &switches), vec![ms(3), Duration::ZERO]);
    }

    #[test]
    fn median_and_max_of_nothing_are_zero() {
        assert_eq!(median_max_us(&[]), (0, 0));
        let d = Duration::from_micros;
        assert_eq!(median_max_us(&[d(5), d(1), d(9)]), (5, 9));
        assert_eq!(summarize(&[Some(d(4)), None]), (4, 4, 1));
    }
}
