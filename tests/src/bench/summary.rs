//! From cells to the figures reported: one summary per peer and load
//! shape, and bg-proxy against each peer round by round.
//!
//! Rounds of the same peer differ by up to a third on a shared 2-core VM,
//! so a peer's figure is a median over many short cells, its percentiles
//! are taken over all of its requests, and the comparison that counts is
//! paired: bg-proxy's cell divided by the other peer's cell of the same
//! round, seconds apart. Each peer is compared on its own, not with the
//! best of two per round, which would favour the peers by chance alone.

use super::cells::{Cell, Measured, Mode};
use super::cpu::CpuUse;
use super::peers::Peer;
use serde::Serialize;

/// Ours (bg-proxy or bg-agent) against one peer in one load shape, round
/// by round.
#[derive(Debug, Clone, Serialize)]
pub struct Paired {
    /// The load shape.
    pub mode: Mode,
    /// Which of ours: bg-proxy (pinned) or bg-agent (product).
    pub ours: &'static str,
    /// The peer bg-proxy is compared with.
    pub against: &'static str,
    /// Rounds with both peers measured.
    pub rounds: usize,
    /// bg-proxy's req/s over the peer's, per round: quartiles 1, 2, 3.
    pub rps_ratio: [f64; 3],
    /// Rounds in which bg-proxy answered at least as many requests/s.
    pub rps_rounds_ahead: usize,
    /// bg-proxy's p99 over the peer's, per round: quartiles 1, 2, 3.
    pub p99_ratio: [f64; 3],
    /// Rounds in which bg-proxy's p99 was at most the peer's.
    pub p99_rounds_ahead: usize,
}

/// The `q` quantile (0..=1) of values already sorted, by nearest rank.
fn nearest_rank<T: Copy>(sorted: &[T], q: f64) -> Option<T> {
    let rank = ((q * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len().max(1));
    sorted.get(rank - 1).copied()
}

/// The quantiles `qs` (each 0..=1) of `values`, sorting them once.
fn quantiles<const N: usize>(values: &[f64], qs: [f64; N]) -> [f64; N] {
    let mut v = values.to_vec();
    v.sort_by(f64::total_cmp);
    qs.map(|q| nearest_rank(&v, q).unwrap_or(f64::NAN))
}

fn quartiles(values: &[f64]) -> [f64; 3] {
    quantiles(values, [0.25, 0.5, 0.75])
}

/// One peer in one shape: the median req/s over its cells, p50 and p99
/// over all its requests, its highest peak RSS, CPU time over requests,
/// the sums of answers and failures; `round` holds the number of cells.
pub fn summary(measured: &Measured, peer: &str, mode: Mode) -> Option<Cell> {
    let of: Vec<&Cell> = measured.cells.iter().filter(|c| c.peer == peer && c.mode == mode).collect();
    let first = *of.first()?;
    let samples = measured.latencies_us.get(&(first.peer, mode)).map_or(&[][..], Vec::as_slice);
    let requests: u64 = of.iter().map(|c| c.ok + c.failed).sum();
    let cpu_use = of.iter().fold(CpuUse::default(), |sum, c| sum.plus(c.cpu_use));
    // wrk reports percentiles, not samples: then the median of its cells'.
    let cell_median =
        |f: fn(&Cell) -> u64| quantiles(&of.iter().map(|c| f(c) as f64).collect::<Vec<_>>(), [0.5])[0] as u64;
    let pct = |q: f64| match nearest_rank(samples, q) {
        Some(v) => u64::from(v),
        None if q < 0.9 => cell_median(|c| c.p50_us),
        None => cell_median(|c| c.p99_us),
    };
    Some(Cell {
        round: of.len(),
        rps: quantiles(&of.iter().map(|c| c.rps).collect::<Vec<_>>(), [0.5])[0],
        p50_us: pct(0.5),
        p99_us: pct(0.99),
        ok: of.iter().map(|c| c.ok).sum(),
        failed: of.iter().map(|c| c.failed).sum(),
        peak_rss_kib: of.iter().map(|c| c.peak_rss_kib).max().unwrap_or(0),
        lifetime_peak_rss_kib: of.iter().map(|c| c.lifetime_peak_rss_kib).max().unwrap_or(0),
        cpu: cpu_use.per_request(requests),
        cpu_use,
        ..first.clone()
    })
}

/// The summaries of every peer and shape, in report order.
pub fn summaries(measured: &Measured) -> Vec<Cell> {
    let mut out = Vec::new();
    for mode in Mode::ALL {
        for peer in Peer::ALL {
            out.extend(summary(measured, peer.name(), mode));
        }
    }
    out
}

/// Ours against every other proxy, per shape.
pub fn paired(cells: &[Cell]) -> Vec<Paired> {
    let mut out = Vec::new();
    for mode in Mode::ALL {
        for (us, against) in [Peer::BgProxy, Peer::BgAgent]
            .into_iter()
            .flat_map(|o| [(o, Peer::Nginx), (o, Peer::Haproxy)])
            .map(|(o, a)| (o.name(), a.name()))
        {
            let mut rps = Vec::new();
            let mut p99 = Vec::new();
            for ours in cells.iter().filter(|c| c.peer == us && c.mode == mode) {
                let Some(theirs) =
                    cells.iter().find(|c| c.peer == against && c.mode == mode && c.round == ours.round)
                else {
                    continue;
                };
                rps.push(ours.rps / theirs.rps.max(1e-9));
                p99.push(ours.p99_us as f64 / (theirs.p99_us as f64).max(1.0));
            }
            if rps.is_empty() {
                continue;
            }
            out.push(Paired {
                mode,
                ours: us,
                against,
                rounds: rps.len(),
                rps_ratio: quartiles(&rps),
                rps_rounds_ahead: rps.iter().filter(|&&r| r >= 1.0).count(),
                p99_ratio: quartiles(&p99),
                p99_rounds_ahead: p99.iter().filter(|&&r| r <= 1.0).count(),
            });
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cell(peer: &'static str, round: usize, rps: f64, p99_us: u64) -> Cell {
        Cell {
            round,
            rps,
            p99_us,
            ok: 100,
            peak_rss_kib: 1000 + round as u64,
            lifetime_peak_rss_kib: 2000,
            cpu_use: CpuUse { proxy_user: 1, ..CpuUse::default() },
            ..Cell::blank(peer, Mode::KeepAlive)
        }
    }

    #[test]
    fn pairs_compare_the_same_round_and_count_the_rounds_ahead() {
        let cells = vec![
            cell("bg-proxy", 0, 110.0, 900),
            cell("nginx", 0, 100.0, 1000),
            cell("bg-proxy", 1, 45.0, 1100),
            cell("nginx", 1, 50.0, 1000),
            cell("bg-proxy", 2, 60.0, 500),
            cell("nginx", 2, 50.0, 1000),
        ];
        let p = paired(&cells);
        assert_eq!(p.len(), 1, "only nginx was measured: {p:?}");
        let p = &p[0];
        assert_eq!((p.against, p.rounds, p.rps_rounds_ahead, p.p99_rounds_ahead), ("nginx", 3, 2, 2));
        assert_eq!(p.rps_ratio, [0.9, 1.1, 1.2]);
        assert_eq!(p.p99_ratio, [0.5, 0.9, 1.1]);
    }

    #[test]
    fn a_summary_takes_percentiles_over_all_requests_and_the_highest_rss() {
        let m = Measured {
            cells: vec![cell("nginx", 0, 10.0, 0), cell("nginx", 1, 30.0, 0), cell("nginx", 2, 20.0, 0)],
            latencies_us: [(("nginx", Mode::KeepAlive), (1..=1000).collect())].into(),
            ..Measured::default()
        };
        let s = summary(&m, "nginx", Mode::KeepAlive).expect("nginx was measured");
        assert_eq!((s.round, s.rps, s.p50_us, s.p99_us), (3, 20.0, 500, 990));
        assert_eq!((s.ok, s.peak_rss_kib), (300, 1002));
        let cpu = s.cpu.cpu_us_per_req;
        assert!((cpu - 3.0 * 10_000.0 / 300.0).abs() < 1e-9, "{cpu}");
        assert!(summary(&m, "haproxy", Mode::KeepAlive).is_none());
    }
}
