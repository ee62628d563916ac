//! Measurements that need the proxy in this process: how long the switch
//! call itself takes, how soon clients see the new version, and how long a
//! drain waits compared with the slowest request in flight.

use super::switching::{median_max_us, stale_windows, summarize, time_to_new};
use super::Plan;
use crate::load::Load;
use bg_proxy::{Backend, Color, Proxy, ProxyConfig, RouteTable, Weights};
use serde::Serialize;
use std::net::SocketAddr;
use std::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;

/// What the in-process runs measured.
#[derive(Debug, Clone, Serialize)]
pub struct InProcess {
    /// Switches made.
    pub switches: usize,
    /// Median duration of the `update_routes` call, µs.
    pub call_median_us: f64,
    /// Longest `update_routes` call, µs.
    pub call_max_us: f64,
    /// Median time from the call to the first answer of the new version, µs.
    pub to_new_median_us: u64,
    /// Longest such time, µs.
    pub to_new_max_us: u64,
    /// Median stale window (see [`stale_windows`]), µs.
    pub stale_median_us: u64,
    /// Longest stale window, µs.
    pub stale_max_us: u64,
    /// Requests failed during the switches.
    pub failed: u64,
    /// Seconds the slow request sleeps in the drain test.
    pub drain_sleep_s: f64,
    /// How long the slow request took, as its client saw it, ms.
    pub slow_request_ms: f64,
    /// How long `drain()` waited after the switch, ms.
    pub drain_ms: f64,
    /// Time from the switch to the slow request's end, as the client saw it, ms.
    pub slow_left_at_switch_ms: f64,
    /// Requests the drain reported as cut.
    pub drain_cut: u64,
}

fn table(blue: SocketAddr, green: SocketAddr, active: Color) -> RouteTable {
    RouteTable::new(
        vec![Backend::new("blue-1", blue, Color::Blue), Backend::new("green-1", green, Color::Green)],
        Weights::all_to(active),
    )
}

/// Run both measurements against upstreams v1 (blue) and v2 (green).
pub async fn run(plan: &Plan, v1: SocketAddr, v2: SocketAddr) -> InProcess {
    let proxy = Proxy::new(ProxyConfig::default());
    proxy.set_routes(table(v1, v2, Color::Blue));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("local addr");
    let shutdown = CancellationToken::new();
    tokio::spawn(proxy.clone().serve(listener, shutdown.clone()));

    let load =
        Load::keepalive(4).target(addr).max_duration(Duration::from_secs(60)).record_requests().start();
    tokio::time::sleep(plan.switch_every).await;
    let mut calls = Vec::new();
    let mut switches = Vec::new();
    let mut active = Color::Blue;
    for _ in 0..plan.switches {
        active = active.other();
        let at = Instant::now();
        proxy.update_routes(|t| t.weights = Weights::all_to(active));
        calls.push(at.elapsed().as_secs_f64() * 1e6);
        switches.push((at, if active == Color::Blue { "v1" } else { "v2" }.to_string()));
        tokio::time::sleep(plan.switch_every).await;
    }
    let report = load.stop().await;
    let (to_new_median_us, to_new_max_us, _) = summarize(&time_to_new(&report.records, &switches));
    let (stale_median_us, stale_max_us) = median_max_us(&stale_windows(&report.records, &switches));
    calls.sort_by(f64::total_cmp);

    // Drain: one slow request on blue, switch to green, drain blue.
    proxy.set_routes(table(v1, v2, Color::Blue));
    let path = format!("/sleep/{}", plan.drain_sleep);
    let slow = Load::keepalive(1).target(addr).path(&path).max_requests(1).record_requests().start();
    let sent = Instant::now();
    while proxy.inflight(&"blue-1".into()) == 0 && sent.elapsed() < Duration::from_secs(10) {
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    proxy.update_routes(|t| t.weights = Weights::all_to(Color::Green));
    let switched = Instant::now();
    let drain = proxy.drain(&["blue-1".into()], Duration::from_secs(30)).await;
    let slow = slow.stop().await;
    let rec = slow.records.first().expect("the slow request ran");
    shutdown.cancel();
    InProcess {
        switches: plan.switches,
        call_median_us: calls.get(calls.len() / 2).copied().unwrap_or(0.0),
        call_max_us: calls.last().copied().unwrap_or(0.0),
        to_new_median_us,
        to_new_max_us,
        stale_median_us,
        stale_max_us,
        failed: report.failed + slow.failed,
        drain_sleep_s: plan.drain_sleep,
        slow_request_ms: rec.finished.duration_since(rec.started).as_secs_f64() * 1e3,
        drain_ms: drain.elapsed.as_secs_f64() * 1e3,
        slow_left_at_switch_ms: rec.finished.saturating_duration_since(switched).as_secs_f64() * 1e3,
        drain_cut: drain.cut,
    }
}
