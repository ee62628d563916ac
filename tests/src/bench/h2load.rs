//! h2load (Debian's nghttp2-client) for the h2c cells: HTTP/2 with prior
//! knowledge over plain TCP, `-t1`, the cell's clients as streams in flight
//! (connections × streams per connection) for a duration; the latency of
//! every request from its per-request log.

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

/// Streams each h2load connection keeps in flight.
pub const STREAMS_PER_CONNECTION: usize = 4;

/// What h2load measured in one cell.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct H2loadReport {
    /// Answers per second over the measured duration.
    pub rps: f64,
    /// Every request's latency in microseconds, in log order.
    pub latencies_us: Vec<u32>,
    /// Requests done.
    pub requests: u64,
    /// Requests failed, errored, timed out, or answered 4xx/5xx.
    pub failed: u64,
}

/// Run h2load against `target` with `streams` in flight for `d`.
pub fn run(program: &Path, streams: usize, target: SocketAddr, d: Duration) -> H2loadReport {
    let connections = streams.div_ceil(STREAMS_PER_CONNECTION).max(1);
    let log = tempfile::NamedTempFile::new().expect("h2load log file");
    let out = std::process::Command::new(program)
        .args(["-t", "1", "-c", &connections.to_string(), "-m", &STREAMS_PER_CONNECTION.to_string()])
        .args(["-D", &d.as_secs().max(1).to_string()])
        .arg(format!("--log-file={}", log.path().display()))
        .arg(format!("http://{target}/"))
        .output()
        .expect("run h2load");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "h2load failed: {text}{}", String::from_utf8_lossy(&out.stderr));
    let mut report = parse(&text).unwrap_or_else(|| panic!("cannot read h2load's report:\n{text}"));
    report.latencies_us = latencies(&std::fs::read_to_string(log.path()).unwrap_or_default());
    report
}

/// Read h2load's summary: req/s, requests done, and what did not succeed.
fn parse(text: &str) -> Option<H2loadReport> {
    let mut r = H2loadReport::default();
    for line in text.lines().map(str::trim) {
        if let Some(rest) = line.strip_prefix("finished in ") {
            // "finished in 3.00s, 510.50 req/s, 258.24KB/s"
            r.rps = rest.split(", ").nth(1)?.strip_suffix(" req/s")?.parse().ok()?;
        } else if let Some(rest) = line.strip_prefix("requests: ") {
            // "1021 total, 1021 started, 1021 done, 1021 succeeded, 0 failed, 0 errored, 0 timeout"
            for part in rest.split(", ") {
                let (n, what) = part.split_once(' ')?;
                let n: u64 = n.parse().ok()?;
                match what {
                    "done" => r.requests = n,
                    "failed" | "errored" | "timeout" => r.failed += n,
                    _ => {}
                }
            }
        } else if let Some(rest) = line.strip_prefix("status codes: ") {
            // "1021 2xx, 0 3xx, 0 4xx, 0 5xx": failed requests have no
            // status, so these do not overlap the counts above.
            for part in rest.split(", ") {
                let (n, class) = part.split_once(' ')?;
                if class == "4xx" || class == "5xx" {
                    r.failed += n.parse::<u64>().ok()?;
                }
            }
        }
    }
    (r.rps > 0.0).then_some(r)
}

/// The per-request durations (microseconds) of an h2load log: tab-separated
/// start time, status, duration.
fn latencies(log: &str) -> Vec<u32> {
    log.lines().filter_map(|l| l.split('\t').nth(2)?.trim().parse().ok()).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_summary_and_the_log() {
        let text = "starting benchmark...
finished in 3.00s, 510.50 req/s, 258.24KB/s
requests: 1021 total, 1021 started, 1019 done, 1017 succeeded, 2 failed, 1 errored, 0 timeout
status codes: 1015 2xx, 0 3xx, 1 4xx, 1 5xx
";
        let r = parse(text).expect("a report");
        assert_eq!((r.rps, r.requests, r.failed), (510.5, 1019, 5));
        assert_eq!(parse("nothing"), None);
        assert_eq!(
            latencies("1796304137291211\t200\t3279\n1796304137291213\t200\t4015\nbad\n"),
            vec![3279, 4015]
        );
    }
}
