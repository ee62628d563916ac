//! The results of a run: the JSON document, and the Markdown tables printed
//! to stdout (and pasted into BENCHMARKS.md).

use super::cells::{Cell, Mode};
use super::inprocess::InProcess;
use super::summary::Paired;
use super::switching::SwitchRun;
use serde::Serialize;
use std::fmt::Write;

/// The machine and programs a run used.
#[derive(Debug, Clone, Serialize)]
pub struct Machine {
    /// Processors in /proc/cpuinfo (`nproc` of an unpinned shell).
    pub cores: usize,
    /// `model name` from /proc/cpuinfo.
    pub cpu: String,
    /// `uname -r`.
    pub kernel: String,
    /// `nginx -v`, when installed.
    pub nginx: Option<String>,
    /// `haproxy -v`, when installed.
    pub haproxy: Option<String>,
    /// Whether `taskset` pinned the processes.
    pub pinned: bool,
}

impl Machine {
    /// Read what describes this machine.
    pub fn read(nginx: Option<String>, haproxy: Option<String>, pinned: bool) -> Machine {
        let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
        let cpu = cpuinfo
            .lines()
            .find_map(|l| l.strip_prefix("model name").and_then(|r| r.split_once(':')).map(|(_, v)| v.trim()))
            .unwrap_or("unknown")
            .to_string();
        let kernel =
            std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default().trim().to_string();
        // Count the machine's processors, not this (pinned) process's.
        let cores = cpuinfo.lines().filter(|l| l.starts_with("processor")).count().max(1);
        Machine { cores, cpu, kernel, nginx, haproxy, pinned }
    }
}

/// Everything a run measured.
#[derive(Debug, Clone, Serialize)]
pub struct Results {
    /// `quick` or `full`.
    pub mode: &'static str,
    /// How the peers ran.
    pub setting: super::Setting,
    /// Where it ran.
    pub machine: Machine,
    /// Peers that could not run, and why.
    pub missing: Vec<String>,
    /// Seconds measured per cell, and rounds.
    pub cell_seconds: f64,
    /// Rounds over all peers.
    pub rounds: usize,
    /// Clients per cell.
    pub clients: usize,
    /// `[agent] worker_threads` given to bg-agent (none: its default).
    pub agent_workers: Option<usize>,
    /// What each peer negotiated with the TLS cells' client.
    pub tls: std::collections::BTreeMap<&'static str, String>,
    /// Every cell of every round.
    pub cells: Vec<Cell>,
    /// One per peer and mode (`round` holds the number of cells); see
    /// [`super::summary::summary`].
    pub summaries: Vec<Cell>,
    /// bg-proxy against each peer, round by round.
    pub paired: Vec<Paired>,
    /// Switching runs per proxy.
    pub switching: Vec<SwitchRun>,
    /// The in-process switch and drain figures of bg-proxy.
    pub inprocess: Option<InProcess>,
}

fn ratio(a: f64, b: f64) -> String {
    if b > 0.0 {
        format!("{:.2}", a / b)
    } else {
        "–".into()
    }
}

/// What 1.1× the best peer's req/s would leave bg-agent to spend per
/// request (see [`super::cpu::CpuPerRequest::proxy_budget`]), beside what
/// it took and how idle the machine was; `None` without bg-agent in the rows.
fn budget_line(best: &Cell, rows: &[&Cell]) -> Option<String> {
    let agent = rows.iter().find(|c| c.peer == "bg-agent")?;
    let budget = best.cpu.proxy_budget(1.1)?;
    Some(format!(
        "1.1× {}'s req/s, at its idle share ({:.0} %) and with the load generator and upstream costing \
         what they cost beside it, leaves the proxy {:.1} µs of CPU per request; bg-agent took {:.1} \
         ({:.1} of it system time), with the machine idle {:.0} %.",
        best.peer,
        best.cpu.idle_share * 100.0,
        budget,
        agent.cpu.cpu_us_per_req,
        agent.cpu.system_us_per_req,
        agent.cpu.idle_share * 100.0
    ))
}

/// The Markdown report.
pub fn markdown(r: &Results) -> String {
    let mut s = String::new();
    let m = &r.machine;
    let _ = writeln!(
        s,
        "Machine: {} cores, {}, Linux {}; {}; {}; pinned with taskset: {}.\n",
        m.cores,
        m.cpu,
        m.kernel,
        m.nginx.as_deref().unwrap_or("nginx missing"),
        m.haproxy.as_deref().unwrap_or("haproxy missing"),
        m.pinned
    );
    let _ = writeln!(
        s,
        "Mode `{}`, setting `{:?}`: {} rounds × {:.0} s per cell and peer, {} clients; req/s the median over the cells, \
         p50 and p99 over all requests (wrk: the median of its cells' percentiles), ratios to the best peer from these.\n",
        r.mode, r.setting, r.rounds, r.cell_seconds, r.clients
    );
    for missing in &r.missing {
        let _ = writeln!(s, "- skipped: {missing}");
    }
    if let Some(n) = r.agent_workers {
        let _ = writeln!(s, "bg-agent ran with `[agent] worker_threads = {n}`.\n");
    }
    if !r.tls.is_empty() {
        let _ = writeln!(
            s,
            "TLS: one ECDSA P-256 certificate for every peer; the client offers TLS 1.3 only and never \
             resumes (each new connection a full handshake, checked). Negotiated:\n"
        );
        for (peer, seen) in &r.tls {
            let _ = writeln!(s, "- {peer}: {seen}");
        }
    }
    for mode in Mode::ALL {
        let rows: Vec<&Cell> = r.summaries.iter().filter(|c| c.mode == mode).collect();
        if rows.is_empty() {
            continue;
        }
        let direct = rows.iter().find(|c| c.peer == "direct").map_or(0.0, |c| c.rps);
        let peers = rows.iter().filter(|c| c.peer == "nginx" || c.peer == "haproxy");
        let best = peers.clone().max_by(|a, b| a.rps.total_cmp(&b.rps));
        let best_rps = best.map_or(0.0, |c| c.rps);
        let best_p99 = peers.map(|c| c.p99_us as f64).fold(f64::INFINITY, f64::min);
        let _ = writeln!(s, "\n### {}, {}\n", mode.protocol(), mode.name());
        if mode == Mode::TlsHandshake {
            let _ = writeln!(
                s,
                "One request per connection: req/s are full TLS handshakes per second, CPU per request per handshake.\n"
            );
        }
        let _ = writeln!(
            s,
            "| peer | req/s | p50 µs | p99 µs | RSS MiB under load (since start) | proxy CPU µs/req (system) | machine CPU µs/req | machine idle | req/s ÷ direct | req/s ÷ best peer | p99 ÷ best peer | failed |"
        );
        let _ = writeln!(s, "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
        for &c in &rows {
            let proxied = c.peer != "direct";
            let _ = writeln!(
                s,
                "| {} | {:.0} | {} | {} | {} | {} | {:.1} | {:.0} % | {} | {} | {} | {} |",
                c.peer,
                c.rps,
                c.p50_us,
                c.p99_us,
                if proxied {
                    format!(
                        "{:.1} ({:.1})",
                        c.peak_rss_kib as f64 / 1024.0,
                        c.lifetime_peak_rss_kib as f64 / 1024.0
                    )
                } else {
                    "–".into()
                },
                if proxied {
                    format!("{:.1} ({:.1})", c.cpu.cpu_us_per_req, c.cpu.system_us_per_req)
                } else {
                    "–".into()
                },
                c.cpu.machine_us_per_req,
                c.cpu.idle_share * 100.0,
                ratio(c.rps, direct),
                ratio(c.rps, best_rps),
                if best_p99.is_finite() { ratio(c.p99_us as f64, best_p99) } else { "–".into() },
                c.failed
            );
        }
        if let Some(line) = best.and_then(|b| budget_line(b, &rows)) {
            let _ = writeln!(s, "\n{line}");
        }
    }
    if !r.paired.is_empty() {
        let _ = writeln!(s, "\n### ours ÷ each peer, cell by cell in the same round\n");
        let _ = writeln!(
            s,
            "| load | ours | against | rounds | req/s ratio, median (quartiles) | rounds ahead | p99 ratio, median (quartiles) | rounds ahead |"
        );
        let _ = writeln!(s, "|---|---|---|---:|---:|---:|---:|---:|");
        for p in &r.paired {
            let _ = writeln!(
                s,
                "| {} | {} | {} | {} | {:.2} ({:.2}–{:.2}) | {} | {:.2} ({:.2}–{:.2}) | {} |",
                p.mode.name(),
                p.ours,
                p.against,
                p.rounds,
                p.rps_ratio[1],
                p.rps_ratio[0],
                p.rps_ratio[2],
                p.rps_rounds_ahead,
                p.p99_ratio[1],
                p.p99_ratio[0],
                p.p99_ratio[2],
                p.p99_rounds_ahead
            );
        }
    }
    if !r.switching.is_empty() {
        let _ = writeln!(
            s,
            "\n### Switching under load (16 keep-alive clients + 200 req/s on fresh connections)\n"
        );
        let _ = writeln!(
            s,
            "| proxy | switches | how | requests | failed | old version still sent to after the call, median | max | switch → first new answer, median | max | switch command errors |"
        );
        let _ = writeln!(s, "|---|---:|---|---:|---:|---:|---:|---:|---:|---:|");
        for w in &r.switching {
            let how = match w.peer {
                "bg-proxy" => "atomic route swap (SIGUSR1 → update_routes)",
                "haproxy" => "runtime API: set server state ready/drain",
                "nginx" => "upstream edit + nginx -s reload",
                _ => "",
            };
            let _ = writeln!(
                s,
                "| {} | {} | {} | {} | {} | {} µs | {} µs | {:.2} ms | {:.2} ms | {} |",
                w.peer,
                w.switches,
                how,
                w.requests,
                w.failed,
                w.stale_median_us,
                w.stale_max_us,
                w.to_new_median_us as f64 / 1e3,
                w.to_new_max_us as f64 / 1e3,
                w.switch_errors
            );
        }
        for w in r.switching.iter().filter(|w| !w.errors.is_empty()) {
            let _ = writeln!(s, "\n{} errors, e.g.: {:?}", w.peer, w.errors);
        }
    }
    if let Some(p) = &r.inprocess {
        let _ = writeln!(s, "\n### bg-proxy in process\n");
        let _ = writeln!(s, "| figure | value |\n|---|---:|");
        let _ =
            writeln!(s, "| `update_routes` call, median of {} | {:.1} µs |", p.switches, p.call_median_us);
        let _ = writeln!(s, "| `update_routes` call, max | {:.1} µs |", p.call_max_us);
        let _ =
            writeln!(s, "| call → first answer of the new version, median | {:.0} µs |", p.to_new_median_us);
        let _ = writeln!(s, "| call → first answer of the new version, max | {:.0} µs |", p.to_new_max_us);
        let _ = writeln!(
            s,
            "| old version still sent to after the call, median / max | {} / {} µs |",
            p.stale_median_us, p.stale_max_us
        );
        let _ = writeln!(s, "| failed requests during the switches | {} |", p.failed);
        let _ = writeln!(
            s,
            "| slow request `/sleep/{}`, as the client saw it | {:.0} ms |",
            p.drain_sleep_s, p.slow_request_ms
        );
        let _ = writeln!(s, "| its time left at the switch | {:.0} ms |", p.slow_left_at_switch_ms);
        let _ = writeln!(s, "| `drain()` elapsed after the switch | {:.0} ms |", p.drain_ms);
        let _ = writeln!(s, "| requests cut by the drain | {} |", p.drain_cut);
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bench::cells::Mode;
    use crate::bench::cpu::CpuPerRequest;

    fn row(peer: &'static str, cpu_us: f64, machine_us: f64) -> Cell {
        Cell {
            rps: 1000.0,
            cpu: CpuPerRequest {
                cpu_us_per_req: cpu_us,
                system_us_per_req: cpu_us / 2.0,
                machine_us_per_req: machine_us,
                idle_share: 0.1,
            },
            ..Cell::blank(peer, Mode::KeepAlive)
        }
    }

    #[test]
    fn the_budget_line_gives_the_best_peers_budget_beside_the_agents_use() {
        // The rest costs 22 - 11 = 11 µs; 1.1x needs 20 µs in all: 9 µs.
        let (best, agent) = (row("nginx", 11.0, 22.0), row("bg-agent", 12.0, 24.0));
        let line = budget_line(&best, &[&agent, &best]).expect("bg-agent is in the rows");
        assert!(line.starts_with("1.1× nginx's req/s, at its idle share (10 %)"), "{line}");
        assert!(
            line.contains("leaves the proxy 9.0 µs") && line.contains("bg-agent took 12.0 (6.0 of it"),
            "{line}"
        );
        assert_eq!(budget_line(&best, &[&best]), None);
    }
}
