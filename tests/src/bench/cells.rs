//! Throughput cells: one peer, one load shape, one round. All peers of a
//! load shape run side by side for the whole shape (an idle proxy costs
//! nothing), and the load moves from one to the next every cell, the order
//! rotated each round. Each peer is so measured within seconds of the
//! others, many times over: on a shared VM, whose speed drifts by tens of
//! percent from one minute to the next, that is what makes peers
//! comparable (see `summary`).
//!
//! The TLS shapes run against each proxy's https listener with the one
//! certificate of [`BenchCert`]; peers without one (direct, bg-proxy) sit
//! them out.

use super::agent_peer::AgentHome;
use super::cpu::{CpuPerRequest, CpuUse};
use super::peers::{Peer, RunningPeer, Tools};
use super::procs::RssWatch;
use super::tls::{BenchCert, SERVER_NAME};
use super::{Plan, Setting};
use crate::load::{Load, LoadReport};
use serde::Serialize;
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

/// The load shape of a cell.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum Mode {
    /// Closed loop on keep-alive connections.
    KeepAlive,
    /// Closed loop, a new connection (`Connection: close`) per request.
    Fresh,
    /// Keep-alive, driven by wrk (`-t1`) instead of the project's client.
    WrkKeepAlive,
    /// Fresh connections, driven by wrk with `Connection: close`.
    WrkFresh,
    /// Closed loop on keep-alive TLS 1.3 connections (the project's client
    /// with rustls).
    TlsKeepAlive,
    /// Closed loop, a new TLS connection per request, each a full TLS 1.3
    /// handshake (no resumption, checked per connection): req/s are
    /// handshakes/s.
    TlsHandshake,
    /// TLS keep-alive driven by wrk (OpenSSL). Not wrk for handshakes: it
    /// reuses its `SSL` object on reconnect and so may resume sessions.
    WrkTlsKeepAlive,
    /// HTTP/2 over plain TCP with prior knowledge (h2c), driven by h2load:
    /// the clients as streams in flight, four per connection. nginx and
    /// HAProxy take it on an h2-only listener of their own, bg-agent and
    /// bg-proxy on their one listener; direct has none.
    H2c,
}

impl Mode {
    /// Every shape, in report order.
    pub const ALL: [Mode; 8] = [
        Mode::KeepAlive,
        Mode::Fresh,
        Mode::WrkKeepAlive,
        Mode::WrkFresh,
        Mode::TlsKeepAlive,
        Mode::TlsHandshake,
        Mode::WrkTlsKeepAlive,
        Mode::H2c,
    ];

    /// Its name in tables.
    pub fn name(self) -> &'static str {
        match self {
            Mode::KeepAlive => "keep-alive",
            Mode::Fresh => "fresh connections",
            Mode::WrkKeepAlive => "keep-alive (wrk)",
            Mode::WrkFresh => "fresh connections (wrk)",
            Mode::TlsKeepAlive => "TLS keep-alive",
            Mode::TlsHandshake => "TLS handshakes",
            Mode::WrkTlsKeepAlive => "TLS keep-alive (wrk)",
            Mode::H2c => "h2c (h2load)",
        }
    }

    /// Whether wrk drives it.
    pub fn wrk(self) -> bool {
        matches!(self, Mode::WrkKeepAlive | Mode::WrkFresh | Mode::WrkTlsKeepAlive)
    }

    /// The HTTP version the clients speak.
    pub fn protocol(self) -> &'static str {
        if self.h2load() {
            "HTTP/2"
        } else {
            "HTTP/1.1"
        }
    }

    /// Whether h2load drives it (on the peers' h2c listeners).
    pub fn h2load(self) -> bool {
        self == Mode::H2c
    }

    /// Whether it runs over TLS (against the peers' https listeners).
    pub fn tls(self) -> bool {
        matches!(self, Mode::TlsKeepAlive | Mode::TlsHandshake | Mode::WrkTlsKeepAlive)
    }

    /// New connection per request.
    fn fresh(self) -> bool {
        matches!(self, Mode::Fresh | Mode::WrkFresh | Mode::TlsHandshake)
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
    /// Peak RSS of the proxy in KiB while the cell's measured load ran,
    /// sampled every 20 ms (0 for direct).
    pub peak_rss_kib: u64,
    /// Peak RSS of the proxy in KiB since it started, start-up included
    /// (`VmHWM`; 0 for direct).
    pub lifetime_peak_rss_kib: u64,
    /// CPU time per request: the proxy's (0 for direct) and the machine's.
    #[serde(flatten)]
    pub cpu: CpuPerRequest,
    /// CPU ticks (1/100 s) the proxy and the machine used during the cell.
    #[serde(skip)]
    pub cpu_use: CpuUse,
}

#[cfg(test)]
impl Cell {
    /// A cell of `peer` in `mode` with every figure zero, for a test to
    /// fill in the ones it looks at.
    pub(crate) fn blank(peer: &'static str, mode: Mode) -> Cell {
        Cell {
            peer,
            mode,
            round: 0,
            rps: 0.0,
            p50_us: 0,
            p99_us: 0,
            ok: 0,
            failed: 0,
            peak_rss_kib: 0,
            lifetime_peak_rss_kib: 0,
            cpu: CpuPerRequest::default(),
            cpu_use: CpuUse::default(),
        }
    }
}

/// Every cell, and every latency sample of each peer and shape (sorted),
/// for percentiles over all of a peer's requests.
#[derive(Debug, Default)]
pub struct Measured {
    /// Every cell of every round.
    pub cells: Vec<Cell>,
    /// Latency samples in microseconds per peer and shape, sorted.
    pub latencies_us: BTreeMap<(&'static str, Mode), Vec<u32>>,
    /// What each peer negotiated with the TLS cells' client (one probe
    /// handshake before them): version, suite, group, kind, ALPN.
    pub tls: BTreeMap<&'static str, String>,
}

/// The client side of a cell: how many, where, for how long, and the TLS
/// config for the TLS shapes.
fn load(mode: Mode, clients: usize, target: SocketAddr, d: Duration, tls: Option<&TlsClient>) -> Load {
    let mut l = Load::keepalive(clients).target(target).max_duration(d);
    if mode.fresh() {
        l = l.fresh_connections();
    }
    match tls.filter(|_| mode.tls()) {
        Some(c) => l.tls(c.clone(), SERVER_NAME).header("host", SERVER_NAME),
        None => l,
    }
}

type TlsClient = Arc<rustls::ClientConfig>;

/// Where a cell of `mode` sends: the peer's https listener for TLS shapes.
fn target(running: &RunningPeer, mode: Mode) -> SocketAddr {
    if mode.tls() {
        running.tls_addr.expect("TLS cells run only on peers with an https listener")
    } else if mode.h2load() {
        running.h2c_addr.expect("h2c cells run only on peers with an h2c listener")
    } else {
        running.addr
    }
}

/// What wrk reported for one cell.
#[derive(Debug, Default, Clone, PartialEq)]
struct WrkReport {
    rps: f64,
    p50_us: u64,
    p99_us: u64,
    requests: u64,
    failed: u64,
}

/// Run wrk against `target` for `d`.
fn wrk(tools: &Tools, mode: Mode, clients: usize, target: SocketAddr, d: Duration) -> WrkReport {
    let program = tools.wrk.as_ref().expect("wrk modes run only when wrk is installed");
    let mut cmd = std::process::Command::new(program);
    cmd.args(["-t1", "-c", &clients.to_string(), "-d", &format!("{}s", d.as_secs().max(1))]).args([
        "--latency",
        "--timeout",
        "5s",
    ]);
    if mode.fresh() {
        cmd.args(["-H", "Connection: close"]);
    }
    // Over TLS by name, for SNI and Host (wrk does not check the
    // certificate).
    let url = if mode.tls() {
        format!("https://{SERVER_NAME}:{}/", target.port())
    } else {
        format!("http://{target}/")
    };
    let out = cmd.arg(url).output().expect("run wrk");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "wrk failed: {text}{}", String::from_utf8_lossy(&out.stderr));
    parse_wrk(&text).unwrap_or_else(|| panic!("cannot read wrk's report:\n{text}"))
}

/// A wrk duration (`250.00us`, `2.75ms`, `1.20s`) in microseconds.
fn wrk_us(v: &str) -> Option<u64> {
    let (num, scale) = if let Some(n) = v.strip_suffix("us") {
        (n, 1.0)
    } else if let Some(n) = v.strip_suffix("ms") {
        (n, 1e3)
    } else if let Some(n) = v.strip_suffix('s') {
        (n, 1e6)
    } else if let Some(n) = v.strip_suffix('m') {
        (n, 6e7)
    } else {
        return None;
    };
    Some((num.parse::<f64>().ok()? * scale) as u64)
}

/// Read wrk's `--latency` report.
fn parse_wrk(text: &str) -> Option<WrkReport> {
    let mut r = WrkReport::default();
    for line in text.lines().map(str::trim) {
        let words: Vec<&str> = line.split_whitespace().collect();
        match words.as_slice() {
            ["50%", v] => r.p50_us = wrk_us(v)?,
            ["99%", v] => r.p99_us = wrk_us(v)?,
            ["Requests/sec:", v] => r.rps = v.parse().ok()?,
            [n, "requests", "in", ..] => r.requests = n.parse().ok()?,
            ["Non-2xx", "or", "3xx", "responses:", n] => r.failed += n.parse::<u64>().ok()?,
            ["Socket", "errors:", rest @ ..] => {
                r.failed +=
                    rest.iter().filter_map(|w| w.trim_end_matches(',').parse::<u64>().ok()).sum::<u64>()
            }
            _ => {}
        }
    }
    (r.rps > 0.0).then_some(r)
}

async fn run_for(load: Load, d: Duration) -> LoadReport {
    let handle = load.start();
    tokio::time::sleep(d).await;
    handle.stop().await
}

/// What a cell measures of the proxy while its load runs.
struct Meter {
    cpu_before: CpuUse,
    rss: Option<RssWatch>,
}

/// The proxy's CPU time and memory over one cell's measured load.
struct Metered {
    cpu: CpuUse,
    peak_rss_kib: u64,
    lifetime_peak_rss_kib: u64,
}

impl Meter {
    /// Start metering `running` (nothing to meter for direct).
    fn start(running: &RunningPeer) -> Meter {
        Meter { cpu_before: cpu_now(running), rss: running.watch_rss() }
    }

    /// Stop, after the measured load.
    fn stop(self, running: &RunningPeer) -> Metered {
        let peak_rss_kib = self.rss.map_or(0, RssWatch::stop);
        Metered {
            cpu: cpu_now(running).since(self.cpu_before),
            peak_rss_kib,
            lifetime_peak_rss_kib: running.lifetime_peak_rss_kib(),
        }
    }
}

/// The proxy's and the machine's CPU ticks so far (the machine's alone
/// for direct).
fn cpu_now(running: &RunningPeer) -> CpuUse {
    CpuUse::now(running.proc.as_ref().map_or((0, 0), |p| p.cpu_ticks()))
}

/// Measure one cell with wrk on a running peer.
async fn wrk_cell(
    tools: &Tools,
    plan: &Plan,
    running: &RunningPeer,
    mode: Mode,
    round: usize,
    tls: Option<&TlsClient>,
) -> Cell {
    let to = target(running, mode);
    run_for(load(mode, plan.clients, to, plan.warmup, tls), plan.warmup).await;
    let meter = Meter::start(running);
    let r = wrk(tools, mode, plan.clients, to, plan.cell);
    let m = meter.stop(running);
    if r.failed > 0 {
        eprintln!("  {} {}: {} failed (wrk)", running.peer.name(), mode.name(), r.failed);
    }
    Cell {
        peer: running.peer.name(),
        mode,
        round,
        rps: r.rps,
        p50_us: r.p50_us,
        p99_us: r.p99_us,
        ok: r.requests.saturating_sub(r.failed),
        failed: r.failed,
        peak_rss_kib: m.peak_rss_kib,
        lifetime_peak_rss_kib: m.lifetime_peak_rss_kib,
        cpu: m.cpu.per_request(r.requests),
        cpu_use: m.cpu,
    }
}

/// Measure one h2c cell with h2load on a running peer, after a warm-up
/// run of its own; the latency samples too.
fn h2load_cell(tools: &Tools, plan: &Plan, running: &RunningPeer, round: usize) -> (Cell, Vec<u32>) {
    let program = tools.h2load.as_ref().expect("h2c cells run only when h2load is installed");
    let to = target(running, Mode::H2c);
    super::h2load::run(program, plan.clients, to, plan.warmup);
    let meter = Meter::start(running);
    let r = super::h2load::run(program, plan.clients, to, plan.cell);
    let m = meter.stop(running);
    if r.failed > 0 {
        eprintln!("  {} {}: {} failed (h2load)", running.peer.name(), Mode::H2c.name(), r.failed);
    }
    let mut sorted = r.latencies_us.clone();
    sorted.sort_unstable();
    let at = |q: f64| {
        sorted.get(((sorted.len() as f64 * q) as usize).min(sorted.len().saturating_sub(1))).map_or(0, |v| *v)
    };
    let cell = Cell {
        peer: running.peer.name(),
        mode: Mode::H2c,
        round,
        rps: r.rps,
        p50_us: u64::from(at(0.50)),
        p99_us: u64::from(at(0.99)),
        ok: r.requests.saturating_sub(r.failed),
        failed: r.failed,
        peak_rss_kib: m.peak_rss_kib,
        lifetime_peak_rss_kib: m.lifetime_peak_rss_kib,
        cpu: m.cpu.per_request(r.requests),
        cpu_use: m.cpu,
    };
    (cell, r.latencies_us)
}

/// Measure one cell on a running peer; its latency samples too.
async fn cell(
    tools: &Tools,
    plan: &Plan,
    running: &RunningPeer,
    mode: Mode,
    round: usize,
    tls: Option<&TlsClient>,
) -> (Cell, Vec<u32>) {
    if mode.wrk() {
        return (wrk_cell(tools, plan, running, mode, round, tls).await, Vec::new());
    }
    if mode.h2load() {
        return h2load_cell(tools, plan, running, round);
    }
    let to = target(running, mode);
    run_for(load(mode, plan.clients, to, plan.warmup, tls), plan.warmup).await;
    let meter = Meter::start(running);
    let report = run_for(load(mode, plan.clients, to, plan.cell + plan.warmup, tls), plan.cell).await;
    let m = meter.stop(running);
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
        peak_rss_kib: m.peak_rss_kib,
        lifetime_peak_rss_kib: m.lifetime_peak_rss_kib,
        cpu: m.cpu.per_request(report.total()),
        cpu_use: m.cpu,
    };
    (cell, report.latencies_us)
}

/// Every cell of every round, per load shape: the shape's peers are
/// started once, side by side, and each round visits each of them in an
/// order rotated by one, so that no peer always follows the same one.
/// The TLS shapes need `cert` (which bg-agent's `agent` home was prepared
/// with) and run on the peers that serve it.
#[allow(clippy::too_many_arguments)]
pub async fn all(
    tools: &Tools,
    setting: Setting,
    agent: Option<&AgentHome>,
    plan: &Plan,
    peers: &[Peer],
    modes: &[Mode],
    upstream: SocketAddr,
    cert: Option<&BenchCert>,
) -> Measured {
    let mut measured = Measured::default();
    let client = cert.map(BenchCert::client_config);
    for &mode in modes {
        let (cert, tls) = if mode.tls() {
            let (Some(cert), Some(tls)) = (cert, client.as_ref()) else {
                eprintln!("skipped {}: no certificate", mode.name());
                continue;
            };
            (Some(cert), Some(tls))
        } else {
            (None, None)
        };
        // Started afresh per shape, so that peak RSS is the shape's own.
        let mut running: Vec<RunningPeer> =
            peers.iter().map(|&p| RunningPeer::start(tools, setting, agent, p, &[upstream], cert)).collect();
        if mode.h2load() {
            running.retain(|r| r.h2c_addr.is_some());
        }
        if let Some(tls) = tls {
            running.retain(|r| r.tls_addr.is_some());
            for r in &running {
                let seen = super::tls::probe(target(r, mode), tls.clone())
                    .await
                    .unwrap_or_else(|e| panic!("{}: {e}", r.peer.name()));
                eprintln!("{} over TLS: {seen}", r.peer.name());
                measured.tls.insert(r.peer.name(), seen);
            }
        }
        for round in 0..plan.rounds {
            for i in 0..running.len() {
                let (c, samples) =
                    cell(tools, plan, &running[(i + round) % running.len()], mode, round, tls).await;
                eprintln!(
                    "round {round:>2} {:>8} {:<17} {:>9.0} req/s  p50 {:>6} us  p99 {:>6} us  rss {:>6} KiB  cpu {:.1} (sys {:.1}) us/req  machine {:.1} us/req, idle {:.0}%",
                    c.peer,
                    mode.name(),
                    c.rps,
                    c.p50_us,
                    c.p99_us,
                    c.peak_rss_kib,
                    c.cpu.cpu_us_per_req,
                    c.cpu.system_us_per_req,
                    c.cpu.machine_us_per_req,
                    c.cpu.idle_share * 100.0
                );
                measured.latencies_us.entry((c.peer, mode)).or_default().extend(samples);
                measured.cells.push(c);
            }
        }
    }
    for samples in measured.latencies_us.values_mut() {
        samples.sort_unstable();
    }
    measured
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_wrk_reports_with_errors_and_every_unit() {
        let text = "Running 2s test @ http://127.0.0.1:8080/
  1 threads and 32 connections
  Thread Stats   Avg      Stdev     Max   +/- Stdev
    Latency   512.00us  100.00us   5.00ms   90.00%
  Latency Distribution
     50%  480.00us
     75%  600.00us
     90%  700.00us
     99%    2.75ms
  123456 requests in 2.00s, 10.00MB read
  Socket errors: connect 1, read 2, write 0, timeout 3
  Non-2xx or 3xx responses: 4
Requests/sec:  61728.00
Transfer/sec:      5.00MB
";
        let r = parse_wrk(text).expect("a report");
        assert_eq!(r, WrkReport { rps: 61728.0, p50_us: 480, p99_us: 2750, requests: 123456, failed: 10 });
        assert_eq!(wrk_us("1.50s"), Some(1_500_000));
        assert_eq!(parse_wrk("no numbers here"), None);
    }
}
