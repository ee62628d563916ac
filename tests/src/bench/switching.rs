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

/// Median and maximum in µs of the known durations, and how many are missing.
pub fn summarize(times: &[Option<Duration>]) -> (u64, u64, usize) {
    let mut us: Vec<u64> = times.iter().flatten().map(|d| d.as_micros() as u64).collect();
    us.sort_unstable();
    let missing = times.len() - us.len();
    (us.get(us.len() / 2).copied().unwrap_or(0), us.last().copied().unwrap_or(0), missing)
}

/// Run the switching test against one peer.
pub async fn run(tools: &Tools, plan: &Plan, peer: Peer, upstreams: &[(SocketAddr, String)]) -> SwitchRun {
    let addrs: Vec<SocketAddr> = upstreams.iter().map(|(a, _)| *a).collect();
    let mut running = RunningPeer::start(tools, peer, &addrs);
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
    }
}
