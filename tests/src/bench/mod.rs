//! The benchmark behind `cargo run --release -p bg-tests --bin bench`:
//! bg-proxy against nginx and HAProxy on one pinned core each, the client
//! straight to the upstream as the physical limit, plus switching, drain
//! and switch-latency measurements. Each submodule has one job.

pub mod agent_peer;
pub mod cells;
pub mod cpu;
pub mod h2load;
pub mod inprocess;
pub mod peers;
pub mod procs;
pub mod report;
pub mod summary;
pub mod svg;
pub mod switching;
pub mod tls;

use std::time::Duration;

/// How the peers run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum Setting {
    /// The proxy library (`bg-proxy-bench-server`, one thread), nginx with
    /// one worker and HAProxy with one thread, each pinned to core 1, the
    /// load generator on core 0: the proxies' cost per request.
    Pinned,
    /// As users run them on this machine, nothing pinned: the `bg-agent`
    /// binary from a config, nginx `worker_processes auto`, HAProxy
    /// `nbthread` = cores.
    Product,
}

/// How long and how often each measurement runs.
#[derive(Debug, Clone, Copy)]
pub struct Plan {
    /// Rounds over all peers; each round measures one cell per peer.
    pub rounds: usize,
    /// Measured time per cell.
    pub cell: Duration,
    /// Unmeasured warm-up before each cell.
    pub warmup: Duration,
    /// Concurrent clients per cell.
    pub clients: usize,
    /// Route switches per peer in the switching test.
    pub switches: usize,
    /// Time between two switches.
    pub switch_every: Duration,
    /// Seconds the slow request of the drain test takes.
    pub drain_sleep: f64,
}

impl Plan {
    /// A few seconds per cell, to check that everything runs.
    pub fn quick() -> Plan {
        Plan {
            rounds: 3,
            cell: Duration::from_secs(2),
            warmup: Duration::from_millis(300),
            clients: 32,
            switches: 20,
            switch_every: Duration::from_millis(100),
            drain_sleep: 1.0,
        }
    }

    /// The numbers BENCHMARKS.md reports.
    pub fn full() -> Plan {
        Plan {
            rounds: 24,
            cell: Duration::from_secs(2),
            warmup: Duration::from_millis(300),
            clients: 32,
            switches: 20,
            switch_every: Duration::from_millis(250),
            drain_sleep: 2.0,
        }
    }
}
