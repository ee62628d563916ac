//! Where a cell's CPU time went: the proxy's user and system time, and the
//! whole machine's busy and idle time (load generator, proxy, upstream
//! and the rest). On a machine the three share, a proxy's req/s is the
//! machine's busy time per second over the busy time per request, so the
//! machine's figures say how much a proxy could gain by its own work: the
//! load generator's and the upstream's share is not its to cut.

use serde::Serialize;

/// Clock ticks per second of `/proc` times on Linux.
const TICKS_PER_SEC: f64 = 100.0;

/// CPU clock ticks counted so far (or between two readings).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CpuUse {
    /// The proxy's user time.
    pub proxy_user: u64,
    /// The proxy's system time.
    pub proxy_system: u64,
    /// Every CPU's busy time (user, nice, system, irq, softirq, steal).
    pub machine_busy: u64,
    /// Every CPU's idle time (idle, iowait).
    pub machine_idle: u64,
}

impl CpuUse {
    /// The machine's ticks now, with `proxy` (user, system) ticks.
    pub fn now(proxy: (u64, u64)) -> CpuUse {
        let (machine_busy, machine_idle) =
            machine_ticks(&std::fs::read_to_string("/proc/stat").unwrap_or_default());
        CpuUse { proxy_user: proxy.0, proxy_system: proxy.1, machine_busy, machine_idle }
    }

    /// What was used between `earlier` and `self`.
    pub fn since(self, earlier: CpuUse) -> CpuUse {
        CpuUse {
            proxy_user: self.proxy_user.saturating_sub(earlier.proxy_user),
            proxy_system: self.proxy_system.saturating_sub(earlier.proxy_system),
            machine_busy: self.machine_busy.saturating_sub(earlier.machine_busy),
            machine_idle: self.machine_idle.saturating_sub(earlier.machine_idle),
        }
    }

    /// The sum of two spans.
    pub fn plus(self, other: CpuUse) -> CpuUse {
        CpuUse {
            proxy_user: self.proxy_user + other.proxy_user,
            proxy_system: self.proxy_system + other.proxy_system,
            machine_busy: self.machine_busy + other.machine_busy,
            machine_idle: self.machine_idle + other.machine_idle,
        }
    }

    /// These ticks over `requests` answered in their span.
    pub fn per_request(self, requests: u64) -> CpuPerRequest {
        let us = |ticks: u64| ticks as f64 * 1e6 / TICKS_PER_SEC / requests.max(1) as f64;
        let all = (self.machine_busy + self.machine_idle).max(1) as f64;
        CpuPerRequest {
            cpu_us_per_req: us(self.proxy_user + self.proxy_system),
            system_us_per_req: us(self.proxy_system),
            machine_us_per_req: us(self.machine_busy),
            idle_share: self.machine_idle as f64 / all,
        }
    }
}

/// A cell's CPU figures, per request answered.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize)]
pub struct CpuPerRequest {
    /// The proxy's CPU time (user and system) in µs (0 for direct).
    pub cpu_us_per_req: f64,
    /// Of which system time, in µs.
    pub system_us_per_req: f64,
    /// Busy time of the whole machine in µs: load generator, proxy,
    /// upstream and everything else.
    pub machine_us_per_req: f64,
    /// The machine's idle time over all its time, 0 to 1.
    pub idle_share: f64,
}

impl CpuPerRequest {
    /// The CPU time per request a proxy could spend and still answer
    /// `factor` times this cell's req/s, with the machine idle as much
    /// and everything but the proxy costing what it costs here (`None`
    /// without a proxy). At equal idle, req/s scale as one over the
    /// machine's time per request.
    pub fn proxy_budget(&self, factor: f64) -> Option<f64> {
        (self.cpu_us_per_req > 0.0).then(|| {
            let others = self.machine_us_per_req - self.cpu_us_per_req;
            self.machine_us_per_req / factor - others
        })
    }
}

/// A process's (user, system) ticks from its `/proc/PID/stat` text.
pub fn process_ticks(stat: &str) -> (u64, u64) {
    // After the command name (which may hold spaces and parentheses):
    // state is field 3, utime 14, stime 15.
    let rest: Vec<&str> =
        stat.rsplit_once(')').map(|(_, r)| r.split_whitespace().collect()).unwrap_or_default();
    let field = |n: usize| rest.get(n - 3).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0);
    (field(14), field(15))
}

/// The machine's (busy, idle) ticks from `/proc/stat` text: its first
/// line, `cpu user nice system idle iowait irq softirq steal ...`.
fn machine_ticks(stat: &str) -> (u64, u64) {
    let Some(line) = stat.lines().find(|l| l.starts_with("cpu ")) else { return (0, 0) };
    let v: Vec<u64> = line.split_whitespace().skip(1).map(|f| f.parse().unwrap_or(0)).collect();
    let at = |i: usize| v.get(i).copied().unwrap_or(0);
    (at(0) + at(1) + at(2) + at(5) + at(6) + at(7), at(3) + at(4))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn process_ticks_read_utime_and_stime_past_a_command_with_spaces() {
        let stat = "42 (a (b) c) S 1 42 42 0 -1 4194560 100 0 0 0 250 75 0 0 20 0 3 0 1234";
        assert_eq!(process_ticks(stat), (250, 75));
        assert_eq!(process_ticks("garbage"), (0, 0));
    }

    #[test]
    fn machine_ticks_count_irq_and_steal_as_busy_and_iowait_as_idle() {
        let stat = "cpu  100 5 50 800 20 3 7 15 0 0\ncpu0 1 2 3 4 5 6 7 8 0 0\n";
        assert_eq!(machine_ticks(stat), (100 + 5 + 50 + 3 + 7 + 15, 800 + 20));
        assert_eq!(machine_ticks(""), (0, 0));
    }

    #[test]
    fn per_request_figures_and_the_budget_they_leave() {
        // 1000 requests; the proxy 1.0 s user + 0.5 s system; the machine
        // busy 3 s and idle 1 s.
        let use_ = CpuUse { proxy_user: 100, proxy_system: 50, machine_busy: 300, machine_idle: 100 };
        let f = use_.per_request(1000);
        assert!((f.cpu_us_per_req - 1500.0).abs() < 1e-9, "{f:?}");
        assert!((f.system_us_per_req - 500.0).abs() < 1e-9, "{f:?}");
        assert!((f.machine_us_per_req - 3000.0).abs() < 1e-9, "{f:?}");
        assert!((f.idle_share - 0.25).abs() < 1e-9, "{f:?}");
        // Everything else costs 1500 µs; 1.5x the req/s needs 2000 µs in
        // all, so 500 µs for the proxy.
        assert!((f.proxy_budget(1.5).unwrap() - 500.0).abs() < 1e-9);
        assert_eq!(CpuPerRequest::default().proxy_budget(1.1), None);
        let later = CpuUse { proxy_user: 130, proxy_system: 60, machine_busy: 340, machine_idle: 101 };
        assert_eq!(
            later.since(use_),
            CpuUse { proxy_user: 30, proxy_system: 10, machine_busy: 40, machine_idle: 1 }
        );
        assert_eq!(use_.plus(use_).proxy_user, 200);
    }
}
