//! Throughput cells: one peer, one load shape, one round. All peers of a
//! load shape run side by side for the whole shape (an idle proxy costs
//! nothing), and the load moves from one to the next every cell, the order
//! rotated each round. Each peer is so measured within seconds of the
//! others, many times over: on a shared VM, whose speed drifts by tens of
//! percent from one minute to the next, that is what makes peers
//! comparable (see `summary`).

use super::peers::{Peer, RunningPeer, Tools};
use super::Plan;
use crate::load::{Load, LoadReport};
use serde::Serialize;
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::Duration;

/// The load shape of a cell.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum Mode {
    /// Closed loop on keep-alive connections.
    KeepAlive,
    /// Closed loop, a new connection (`Connection: close`) per request.
    Fresh,
}

impl Mode {
    /// Both shapes.
    pub const ALL: [Mode; 2] = [Mode::KeepAlive, Mode::Fresh];

    /// Its name in tables.
    pub fn name(self) -> &'static str {
        match self {
            Mode::KeepAlive => "keep-alive",
            Mode::Fresh => "fresh connections",
        }
    }
}

/// What one cell measured.
#[derive(Debug, Clone, Serialize)]
pub struct Cell {
    /// The peer's name.
    pub peer: &'static str,
    /// The load shape.
    pub mode: Mode,
    /// Which round (in a summary: how many rounds).
    pub round: usize,
    /// Answers per second.
    pub rps: f64,
    /// Median latency in microseconds.
    pub p50_us: u64,
    /// 99th percentile latency in microseconds.
    pub p99_us: u64,
    /// Requests answered below 500.
    pub ok: u64,
    /// Requests failed.
    pub failed: u64,
    /// Peak RSS of the proxy in KiB so far (0 for direct).
    pub peak_rss_kib: u64,
    /// CPU time of the proxy per request in microseconds (0 for direct).
    pub cpu_us_per_req: f64,
    /// CPU ticks (1/100 s) the proxy used during the cell.
    #[serde(skip)]
    pub cpu_ticks: u64,
}

/// Every cell, and every latency sample of each peer and shape (sorted),
/// for percentiles over all of a peer's requests.
#[derive(Debug, Default)]
pub struct Measured {
    /// Every cell of every round.
    pub cells: Vec<Cell>,
    /// Latency samples in microseconds per peer and shape, sorted.
    pub latencies_us: BTreeMap<(&'static str, Mode), Vec<u32>>,
}

fn load(mode: Mode, clients: usize, target: SocketAddr, d: Duration) -> Load {
    let l = Load::keepalive(clients).target(target).max_duration(d);
    match mode {
        Mode::KeepAlive => l,
        Mode::Fresh => l.fresh_connections(),
    }
}

async fn run_for(load: Load, d: Duration) -> LoadReport {
    let handle = load.start();
    tokio::time::sleep(d).await;
    handle.stop().await
}

/// Measure one cell on a running peer.
async fn cell(plan: &Plan, running: &RunningPeer, mode: Mode, round: usize) -> (Cell, LoadReport) {
    run_for(load(mode, plan.clients, running.addr, plan.warmup), plan.warmup).await;
    let cpu_before = running.proc.as_ref().map_or(0, |p| p.cpu_ticks());
    let report = run_for(load(mode, plan.clients, running.addr, plan.cell + plan.warmup), plan.cell).await;
    let cpu_ticks = running.proc.as_ref().map_or(0, |p| p.cpu_ticks()) - cpu_before;
    let us = |d: Option<Duration>| d.map_or(0, |d| d.as_micros() as u64);
    if report.failed > 0 {
        eprintln!(
            "  {} {}: {} failed, e.g. {:?}",
            running.peer.name(),
            mode.name(),
            report.failed,
            report.errors.first()
        );
    }
    let cell = Cell {
        peer: running.peer.name(),
        mode,
        round,
        rps: report.rps(),
        p50_us: us(report.p50()),
        p99_us: us(report.p99()),
        ok: report.ok,
        failed: report.failed,
        peak_rss_kib: running.peak_rss_kib(),
        cpu_us_per_req: cpu_ticks as f64 * 10_000.0 / report.total().max(1) as f64,
        cpu_ticks,
    };
    (cell, report)
}

/// Every cell of every round, per load shape: the shape's peers are
/// started once, side by side, and each round visits each of them in an
/// order rotated by one, so that no peer always follows the same one.
pub async fn all(
    tools: &Tools,
    plan: &Plan,
    peers: &[Peer],
    modes: &[Mode],
    upstream: SocketAddr,
) -> Measured {
    let mut measured = Measured::default();
    for &mode in modes {
        // Started afresh per shape, so that peak RSS is the shape's own.
        let running: Vec<RunningPeer> =
            peers.iter().map(|&p| RunningPeer::start(tools, p, &[upstream])).collect();
        for round in 0..plan.rounds {
            for i in 0..running.len() {
                let (c, report) = cell(plan, &running[(i + round) % running.len()], mode, round).await;
                eprintln!(
                    "round {round:>2} {:>8} {:<17} {:>9.0} req/s  p50 {:>6} us  p99 {:>6} us  rss {:>6} KiB  cpu {:.1} us/req",
                    c.peer,
                    mode.name(),
                    c.rps,
                    c.p50_us,
                    c.p99_us,
                    c.peak_rss_kib,
                    c.cpu_us_per_req
                );
                measured.latencies_us.entry((c.peer, mode)).or_default().extend(report.latencies_us);
                measured.cells.push(c);
            }
        }
    }
    for samples in measured.latencies_us.values_mut() {
        samples.sort_unstable();
    }
    measured
}
