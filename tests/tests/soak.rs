//! Soak: constant keep-alive load through the agent for `BG_SOAK_SECS`
//! seconds (default 120; the release check runs `BG_SOAK_SECS=600`), with a
//! deploy and promote every 20 seconds, alternating versions. No request
//! may fail, and the agent's memory and open files must stay flat: they are
//! sampled from `/proc/<pid>/status` and `/proc/<pid>/fd` after every
//! promote and printed.

use bg_tests::agent::{Agent, Svc};
use bg_tests::load::Load;
use bg_tests::status::outcome;
use bg_tests::wait::eventually;
use serde_json::json;
use std::time::{Duration, Instant};

/// Default soak length (2 minutes).
const DEFAULT_SOAK: Duration = Duration::from_secs(120);
/// Time between the starts of two deploys.
const DEPLOY_EVERY: Duration = Duration::from_secs(20);
/// Keep-alive clients.
const CLIENTS: usize = 8;
/// Samples taken before this are warm-up (allocator arenas, pools, the
/// event ring filling up) and not compared.
const WARM_UP: Duration = Duration::from_secs(40);
/// Allowed RSS growth from the warm sample to the last one: 16 MiB, or a
/// quarter of the warm RSS when that is more. A leak of one buffer per
/// request (hundreds of thousands of them) or per deploy exceeds it.
const RSS_SLACK_KIB: u64 = 16 * 1024;
/// Allowed growth of open file descriptors from the warm sample.
const FD_SLACK: usize = 16;
const OP: Duration = Duration::from_secs(90);

/// One sample of the agent process.
#[derive(Debug, Clone, Copy)]
struct Sample {
    at: Duration,
    deploys: u32,
    rss_kib: u64,
    fds: usize,
    requests: u64,
}

fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("agent /proc status");
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmRSS in /proc/<pid>/status")
}

fn fds(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd")).map(|d| d.count()).expect("agent /proc fd")
}

fn soak_length() -> Duration {
    match std::env::var("BG_SOAK_SECS") {
        Ok(v) => {
            Duration::from_secs(v.parse().unwrap_or_else(|_| panic!("BG_SOAK_SECS={v:?} is not seconds")))
        }
        Err(_) => DEFAULT_SOAK,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn soak_constant_load_with_a_promote_every_20s_loses_nothing_and_memory_stays_flat() {
    let soak = soak_length();
    assert!(soak >= WARM_UP + DEPLOY_EVERY, "BG_SOAK_SECS must be at least {:?}", WARM_UP + DEPLOY_EVERY);
    let agent = Agent::process().service(Svc::new("web").replicas(2)).start().await;
    let first = agent.op("web", "deploy", json!({}), OP).await;
    assert_eq!(outcome(&first).0, "succeeded", "{first}");
    let pid = agent.pid().expect("agent pid");

    let load = Load::keepalive(CLIENTS)
        .target(agent.listen("web"))
        .max_duration(soak + Duration::from_secs(120))
        .start();
    eventually("load is flowing", Duration::from_secs(10), || load.completed() > 200).await;

    let began = Instant::now();
    let mut samples =
        vec![Sample { at: Duration::ZERO, deploys: 0, rss_kib: rss_kib(pid), fds: fds(pid), requests: 0 }];
    let mut deploys = 0u32;
    let end = began + soak;
    while Instant::now() < end {
        let cycle = Instant::now();
        deploys += 1;
        let version = if deploys % 2 == 1 { "v2" } else { "v1" };
        let s = agent.op("web", "deploy", json!({"env": {"VERSION": version}, "promote": true}), OP).await;
        assert_eq!(outcome(&s).0, "succeeded", "deploy {deploys} ({version}): {s}\n{}", agent.log());
        assert_eq!(s["colors"][s["active"].as_str().unwrap()]["spec"]["env"]["VERSION"], version, "{s}");
        assert_eq!(load.failed(), 0, "a request failed by deploy {deploys}");
        // The next deploy starts DEPLOY_EVERY after this one did: pacing,
        // not synchronization.
        tokio::time::sleep_until((cycle + DEPLOY_EVERY).min(end).into()).await;
        samples.push(Sample {
            at: began.elapsed(),
            deploys,
            rss_kib: rss_kib(pid),
            fds: fds(pid),
            requests: load.completed(),
        });
    }
    let report = load.stop().await;

    eprintln!("soak {soak:?}: {deploys} deploy+promote, {CLIENTS} keep-alive clients");
    eprintln!(
        "requests {} failed {} ({:.0} req/s, p50 {:?}, p99 {:?}), by version {:?}",
        report.total(),
        report.failed,
        report.rps(),
        report.p50().unwrap_or_default(),
        report.p99().unwrap_or_default(),
        report.by_version
    );
    eprintln!("{:>8} {:>8} {:>10} {:>5} {:>10}", "t (s)", "deploys", "RSS (KiB)", "fds", "requests");
    for s in &samples {
        eprintln!(
            "{:>8.1} {:>8} {:>10} {:>5} {:>10}",
            s.at.as_secs_f64(),
            s.deploys,
            s.rss_kib,
            s.fds,
            s.requests
        );
    }

    assert_eq!(report.failed, 0, "{:?}", report.errors);
    assert!(report.version("v1") > 0 && report.version("v2") > 0, "{:?}", report.by_version);
    let warm = samples.iter().find(|s| s.at >= WARM_UP).copied().expect("a sample after warm-up");
    let last = *samples.last().expect("samples");
    let allowed = RSS_SLACK_KIB.max(warm.rss_kib / 4);
    assert!(
        last.rss_kib <= warm.rss_kib + allowed,
        "agent RSS grew from {} KiB (t={:?}) to {} KiB (t={:?}), more than {allowed} KiB: {samples:?}",
        warm.rss_kib,
        warm.at,
        last.rss_kib,
        last.at
    );
    assert!(last.fds <= warm.fds + FD_SLACK, "agent file descriptors grew: {samples:?}");
    assert_eq!(agent.processes_with("BIND=127.0.0.1").len(), 2, "old replicas were all stopped");
}
