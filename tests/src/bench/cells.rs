//! Throughput cells: one peer, one load shape, one round. Each cell starts
//! its proxy afresh (so its peak RSS is its own), warms it up, measures,
//! and reads the proxy's CPU time and peak memory.

use super::peers::{Peer, RunningPeer, Tools};
use super::Plan;
use crate::load::{Load, LoadReport};
use serde::Serialize;
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
    /// Which round.
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
    /// Peak RSS of the proxy in KiB (0 for direct).
    pub peak_rss_kib: u64,
    /// CPU time of the proxy per request in microseconds (0 for direct).
    pub cpu_us_per_req: f64,
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

/// Measure one cell.
pub async fn cell(
    tools: &Tools,
    plan: &Plan,
    peer: Peer,
    mode: Mode,
    round: usize,
    upstream: SocketAddr,
) -> Cell {
    let running = RunningPeer::start(tools, peer, &[upstream]);
    run_for(load(mode, plan.clients, running.addr, plan.warmup), plan.warmup).await;
    let cpu_before = running.proc.as_ref().map_or(0, |p| p.cpu_ticks());
    let report = run_for(load(mode, plan.clients, running.addr, plan.cell + plan.warmup), plan.cell).await;
    let cpu = running.proc.as_ref().map_or(0, |p| p.cpu_ticks()) - cpu_before;
    let us = |d: Option<Duration>| d.map_or(0, |d| d.as_micros() as u64);
    if report.failed > 0 {
        eprintln!(
            "  {} {}: {} failed, e.g. {:?}",
            peer.name(),
            mode.name(),
            report.failed,
            report.errors.first()
        );
    }
    Cell {
        peer: peer.name(),
        mode,
        round,
        rps: report.rps(),
        p50_us: us(report.p50()),
        p99_us: us(report.p99()),
        ok: report.ok,
        failed: report.failed,
        peak_rss_kib: running.peak_rss_kib(),
        cpu_us_per_req: cpu as f64 * 10_000.0 / report.total().max(1) as f64,
    }
}

/// Every cell of every round; the peer order rotates each round so that
/// no peer always runs first (on a cold machine) or last.
pub async fn all(
    tools: &Tools,
    plan: &Plan,
    peers: &[Peer],
    modes: &[Mode],
    upstream: SocketAddr,
) -> Vec<Cell> {
    let mut cells = Vec::new();
    for round in 0..plan.rounds {
        for i in 0..peers.len() {
            let peer = peers[(i + round) % peers.len()];
            for &mode in modes {
                let c = cell(tools, plan, peer, mode, round, upstream).await;
                eprintln!(
                    "round {round} {:>8} {:<17} {:>9.0} req/s  p50 {:>6} us  p99 {:>6} us  rss {:>6} KiB  cpu {:.1} us/req",
                    c.peer,
                    mode.name(),
                    c.rps,
                    c.p50_us,
                    c.p99_us,
                    c.peak_rss_kib,
                    c.cpu_us_per_req
                );
                cells.push(c);
            }
        }
    }
    cells
}

/// The median of each figure over the rounds of one peer and mode.
pub fn median(cells: &[Cell], peer: &str, mode: Mode) -> Option<Cell> {
    let of: Vec<&Cell> = cells.iter().filter(|c| c.peer == peer && c.mode == mode).collect();
    let first = *of.first()?;
    fn med<T: Copy + PartialOrd>(mut v: Vec<T>) -> T {
        v.sort_by(|a, b| a.partial_cmp(b).unwrap_or(std::cmp::Ordering::Equal));
        v[v.len() / 2]
    }
    Some(Cell {
        round: of.len(),
        rps: med(of.iter().map(|c| c.rps).collect()),
        p50_us: med(of.iter().map(|c| c.p50_us).collect()),
        p99_us: med(of.iter().map(|c| c.p99_us).collect()),
        ok: of.iter().map(|c| c.ok).sum(),
        failed: of.iter().map(|c| c.failed).sum(),
        peak_rss_kib: med(of.iter().map(|c| c.peak_rss_kib).collect()),
        cpu_us_per_req: med(of.iter().map(|c| c.cpu_us_per_req).collect()),
        ..first.clone()
    })
}
