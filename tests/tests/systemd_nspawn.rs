//! The package and its units under real systemd: a Debian bookworm root
//! filesystem (debootstrap, cached) booted with `systemd-nspawn -b`, the
//! `.deb` installed with apt, the units enabled as the README says, then:
//!
//! - ten `systemctl restart bg-agent` three seconds apart and ten as fast
//!   as the unit's start limit allows, under open-loop load on fresh
//!   connections and on keep-alive ones: no request fails, the socket unit
//!   is never restarted, the replicas keep their pids;
//! - the replicas live in their own scopes, outside the agent's cgroup;
//! - `systemctl stop` leaves them running and `start` adopts them, READY
//!   (the end of `systemctl start`) only once they are healthy;
//! - a SIGSTOPped agent misses its watchdog and systemd restarts it;
//! - the journal holds none of the known warnings about our units;
//! - replicas an agent without scopes left in the service's cgroup (the
//!   units before issue 22) survive the switch and are moved into scopes.
//!
//! Needs root, debootstrap, systemd-nspawn, nsenter and cargo-deb: with
//! `BG_DOCKER_TESTS=1` (CI) their absence fails the test, otherwise it says
//! why and passes. Prints its measurements.

use bg_tests::agent::free_addr;
use bg_tests::bins::{cargo_bin, workspace_root};
use bg_tests::load::{Load, LoadReport};
use bg_tests::nspawn::{self, Container};
use serde_json::Value;
use std::collections::BTreeSet;
use std::time::{Duration, Instant};

/// The unit's start limit (`StartLimitIntervalSec` / `StartLimitBurst`):
/// one start per this long on average, sustained.
fn start_limit_spacing(service_unit: &str) -> Duration {
    let get = |key: &str| {
        service_unit
            .lines()
            .find_map(|l| l.strip_prefix(key))
            .unwrap_or_else(|| panic!("bg-agent.service has no {key}"))
            .trim()
            .to_string()
    };
    let interval = humantime::parse_duration(&get("StartLimitIntervalSec=")).unwrap();
    let burst: u32 = get("StartLimitBurst=").parse().unwrap();
    interval / burst
}

/// Journal lines that mean a unit of ours is wrong (from issue 22, and
/// their relatives).
const KNOWN_WARNINGS: &[&str] = &[
    "left-over process",
    "service implementation deficiencies",
    "TCP_NODELAY failed",
    "dependency job",
    "Start request repeated too quickly",
    "Failed with result 'start-limit-hit'",
    "Unknown key name",
    "Unknown lvalue",
    "Unknown section",
    "is not executable",
    "Failed to set up",
    "Refusing to accept",
];

fn warnings_in(journal: &str) -> Vec<&str> {
    journal
        .lines()
        .filter(|l| KNOWN_WARNINGS.iter().any(|w| l.to_lowercase().contains(&w.to_lowercase())))
        .collect()
}

/// The pids of the running replicas.
fn replica_pids(c: &Container) -> BTreeSet<u32> {
    c.sh("pgrep -x websample").split_whitespace().filter_map(|p| p.parse().ok()).collect()
}

fn status(c: &Container) -> Value {
    serde_json::from_str(&c.ok("bgctl status web --output json")).unwrap()
}

fn main_pid(c: &Container) -> u32 {
    c.ok("systemctl show -p MainPID --value bg-agent.service").trim().parse().unwrap()
}

fn socket_since(c: &Container) -> String {
    c.ok("systemctl show -p ActiveEnterTimestampMonotonic --value bg-agent.socket").trim().to_string()
}

/// Run `restarts` restarts, each starting at least `spacing` after the
/// previous one started; the time each `systemctl restart` took.
fn restart_series(c: &Container, restarts: usize, spacing: Duration, pause: Duration) -> Vec<Duration> {
    let mut took = Vec::new();
    for _ in 0..restarts {
        let began = Instant::now();
        c.ok("systemctl restart bg-agent.service");
        took.push(began.elapsed());
        let wait = spacing.saturating_sub(began.elapsed()).max(pause);
        std::thread::sleep(wait);
    }
    took
}

fn summary(name: &str, took: &[Duration], fresh: &LoadReport, keepalive: &LoadReport) -> String {
    let ms: Vec<u128> = took.iter().map(|d| d.as_millis()).collect();
    format!(
        "{name}: restart took {ms:?} ms; fresh connections {} sent, {} failed; keep-alive {} sent, {} failed; \
         p99 fresh {:?}, max fresh {:?}",
        fresh.total(),
        fresh.failed,
        keepalive.total(),
        keepalive.failed,
        fresh.p99(),
        fresh.quantile(1.0),
    )
}

#[test]
fn the_package_under_real_systemd_restarts_without_losing_a_request() {
    let test = "the_package_under_real_systemd_restarts_without_losing_a_request";
    if !nspawn::available(test) {
        return;
    }
    let began = Instant::now();
    let deb = nspawn::deb();
    let websample = cargo_bin("websample", "websample");
    let rootfs = nspawn::rootfs();
    let prepared = began.elapsed();

    let addr = free_addr();
    let config = std::fs::read_to_string(workspace_root().join("examples/config/agent-process.toml"))
        .unwrap()
        .replace("listen = [\"127.0.0.1:8080\"]", &format!("listen = [\"{addr}\"]"))
        // Replicas run as nobody: systemd-run switches to the user inside
        // the scope (the agent's bus access is root's).
        .replace("replicas = 1", "replicas = 2\nuser = \"65534:65534\"");
    assert!(config.contains(&addr.to_string()), "the example config changed: update this test");
    let service_unit =
        std::fs::read_to_string(workspace_root().join("examples/systemd/bg-agent.service")).unwrap();

    let c = Container::boot(&rootfs, |root| {
        std::fs::copy(&deb, root.join("root").join(deb.file_name().unwrap())).unwrap();
        std::fs::copy(&websample, root.join("usr/local/bin/websample")).unwrap();
    });
    let booted = began.elapsed();

    // The set-up the README gives: apt install, then enable --now. Only the
    // listen address differs from the package's unit (a drop-in, the way
    // an operator changes it), and the config is the process example.
    c.ok("cd /root && apt-get install -y -q --no-install-recommends ./bluegreen_*.deb");
    assert!(c.ok("getent group bg-agent").starts_with("bg-agent:"), "postinst made no bg-agent group");
    c.ok(
        "test -x /usr/bin/bg-agent && test -x /usr/bin/bgctl && test -f /lib/systemd/system/bg-agent.socket",
    );
    c.ok("dpkg-query -W -f='${Conffiles}' bluegreen | grep -q /etc/bg-agent/agent.toml");
    std::fs::write(c.root().join("etc/bg-agent/agent.toml"), &config).unwrap();
    let dropin = c.root().join("etc/systemd/system/bg-agent.socket.d");
    std::fs::create_dir_all(&dropin).unwrap();
    std::fs::write(
        dropin.join("listen.conf"),
        format!("[Socket]\nListenStream=\nListenStream={addr}\nListenStream=/run/bg-agent/agent.sock\n"),
    )
    .unwrap();
    c.ok("systemctl daemon-reload");
    c.ok("systemctl enable --now bg-agent.socket bg-agent.service");
    let verify = c.sh("systemd-analyze verify bg-agent.socket bg-agent.service 2>&1");
    assert!(!verify.contains("bg-agent"), "systemd-analyze verify in the container:\n{verify}");
    // First start: a host provisioned from scratch serves the configured
    // spec without a `bgctl deploy` (the example sets on_start = "deploy").
    let live = c.sh(&format!(
        "for i in $(seq 300); do curl -fsS -o /dev/null http://{addr}/ && echo live && exit 0; sleep 0.2; done; echo not-live"
    ));
    assert!(
        live.contains("live") && !live.contains("not-live"),
        "the first start did not go live:\n{live}\n{}",
        c.sh("journalctl -u bg-agent -n 40 --no-pager")
    );
    let pids = replica_pids(&c);
    assert_eq!(pids.len(), 2, "two replicas run: {pids:?}");
    for pid in &pids {
        let uid = c.ok(&format!("awk '/^Uid:/ {{print $2}}' /proc/{pid}/status"));
        assert_eq!(uid.trim(), "65534", "replica {pid} does not run as the configured user");
    }

    // The replicas are in scopes of their own, not in the agent's cgroup.
    for pid in &pids {
        let cgroup = c.ok(&format!("cat /proc/{pid}/cgroup"));
        assert!(
            cgroup.contains("/bluegreen.slice/bg-web-")
                && cgroup.contains(".scope")
                && !cgroup.contains("bg-agent.service"),
            "replica {pid} is not in its own scope:\n{cgroup}"
        );
    }
    let agent_cgroup = c.ok("systemctl show -p ControlGroup --value bg-agent.service");
    let in_service = c.sh(&format!(
        "cat /sys/fs/cgroup/systemd{}/cgroup.procs /sys/fs/cgroup{}/cgroup.procs 2>/dev/null",
        agent_cgroup.trim(),
        agent_cgroup.trim()
    ));
    let in_service: BTreeSet<u32> = in_service.split_whitespace().filter_map(|p| p.parse().ok()).collect();
    assert!(in_service.is_disjoint(&pids), "replicas in the agent's cgroup: {in_service:?} vs {pids:?}");

    let socket_started = socket_since(&c);
    let rt = tokio::runtime::Runtime::new().unwrap();
    let mut report = Vec::new();
    let spacing = start_limit_spacing(&service_unit);
    for (name, gap, pause) in [
        ("10 restarts, 3 s apart", Duration::from_secs(3), Duration::from_secs(3)),
        ("10 restarts at the start limit", spacing, Duration::ZERO),
    ] {
        let (fresh, keepalive) = rt.block_on(async {
            let fresh = Load::rate(200)
                .fresh_connections()
                .target(addr)
                .path("/")
                .max_duration(Duration::from_secs(170))
                .start();
            let keepalive =
                Load::keepalive(4).target(addr).path("/").max_duration(Duration::from_secs(170)).start();
            tokio::time::sleep(Duration::from_millis(500)).await;
            (fresh, keepalive)
        });
        let took = restart_series(&c, 10, gap, pause);
        std::thread::sleep(Duration::from_millis(500));
        let (fresh, keepalive) = rt.block_on(async { (fresh.stop().await, keepalive.stop().await) });
        let line = summary(name, &took, &fresh, &keepalive);
        eprintln!("{line}");
        assert!(fresh.total() > 1000 && keepalive.total() > 100, "too little load: {line}");
        assert_eq!(fresh.failed + keepalive.failed, 0, "{line}\n{:?}\n{:?}", fresh.errors, keepalive.errors);
        assert_eq!(c.ok("systemctl is-active bg-agent.service").trim(), "active");
        assert_eq!(replica_pids(&c), pids, "{name}: the replicas were not adopted (pids changed)");
        report.push(line);
    }
    assert_eq!(socket_since(&c), socket_started, "bg-agent.socket was restarted");

    // stop leaves the replicas running; start adopts them, and READY (the
    // end of `systemctl start` for Type=notify) comes once they are healthy.
    c.ok("systemctl stop bg-agent.service");
    assert_eq!(c.sh("systemctl is-active bg-agent.service").trim(), "inactive");
    assert_eq!(c.sh("pgrep -x bg-agent").trim(), "", "an agent runs after stop");
    assert_eq!(replica_pids(&c), pids, "systemctl stop took the replicas down");
    let start = Instant::now();
    c.ok("systemctl start bg-agent.service");
    let start_took = start.elapsed();
    let st = status(&c);
    let active = st["active"].as_str().unwrap().to_string();
    let replicas = st["colors"][active.as_str()]["replicas"].as_array().unwrap().clone();
    assert_eq!(replicas.len(), 2, "{st}");
    for r in &replicas {
        assert_eq!(r["health"], "healthy", "READY before the adopted replicas were healthy: {st}");
    }
    assert_eq!(replica_pids(&c), pids, "start did not adopt the running replicas");
    let answer = c.ok(&format!("curl -fsS http://{addr}/"));
    assert!(!answer.is_empty());

    // Known warnings, before the watchdog part (which fails the unit on
    // purpose).
    let journal = c.ok("journalctl -b --no-pager -o short-monotonic");
    let warnings = warnings_in(&journal);
    assert!(warnings.is_empty(), "the journal has warnings about our units:\n{}", warnings.join("\n"));
    let failed = c.sh("systemctl --failed --no-legend --plain");
    assert!(!failed.contains("bg-agent") && !failed.contains("bg-web"), "failed units: {failed}");

    // A watchdog that is not pinged: a short WatchdogSec= for the test
    // (30 s in the unit), then SIGSTOP the agent.
    let dropin = c.root().join("etc/systemd/system/bg-agent.service.d");
    std::fs::create_dir_all(&dropin).unwrap();
    std::fs::write(dropin.join("watchdog.conf"), "[Service]\nWatchdogSec=4s\n").unwrap();
    c.ok("systemctl daemon-reload && systemctl restart bg-agent.service");
    let stopped = main_pid(&c);
    c.ok(&format!("kill -STOP {stopped}"));
    let wd = Instant::now();
    loop {
        let pid = main_pid(&c);
        let state = c.sh("systemctl is-active bg-agent.service");
        if pid != 0 && pid != stopped && state.trim() == "active" {
            break;
        }
        assert!(
            wd.elapsed() < Duration::from_secs(60),
            "no watchdog restart after 60 s: {state}\n{}",
            c.sh("journalctl -u bg-agent -n 30 --no-pager")
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    let watchdog_took = wd.elapsed();
    let journal = c.ok("journalctl -b -u bg-agent.service --no-pager -o cat");
    assert!(journal.contains("Watchdog timeout"), "no watchdog timeout in the journal:\n{journal}");
    assert_eq!(replica_pids(&c), pids, "the watchdog restart lost the replicas");
    let st = status(&c);
    assert_eq!(st["active"].as_str(), Some(active.as_str()));
    let journal = c.ok("journalctl -b --no-pager -o short-monotonic");
    let warnings = warnings_in(&journal);
    assert!(warnings.is_empty(), "the journal has warnings about our units:\n{}", warnings.join("\n"));

    // Migration: replicas an agent without scopes started (the units
    // before issue 22) sit in the service's cgroup; the next agent with
    // scopes adopts them and moves them into scopes of their own.
    std::fs::write(dropin.join("noscope.conf"), "[Service]\nEnvironment=BG_REPLICA_SCOPE=none\n").unwrap();
    c.ok("systemctl daemon-reload && systemctl restart bg-agent.service");
    let deploy = c.sh("bgctl deploy web --env VERSION=v3 --promote 2>&1; echo exit=$?");
    assert!(deploy.contains("exit=0"), "bgctl deploy web --promote:\n{deploy}");
    let old_layout = replica_pids(&c);
    assert_eq!(old_layout.len(), 2, "{old_layout:?}");
    for pid in &old_layout {
        let cgroup = c.ok(&format!("cat /proc/{pid}/cgroup"));
        assert!(cgroup.contains("bg-agent.service"), "without scopes, replica {pid} is elsewhere:\n{cgroup}");
    }
    std::fs::remove_file(dropin.join("noscope.conf")).unwrap();
    c.ok("systemctl daemon-reload && systemctl restart bg-agent.service");
    assert_eq!(replica_pids(&c), old_layout, "the replicas of the old layout did not survive the restart");
    for pid in &old_layout {
        let cgroup = c.ok(&format!("cat /proc/{pid}/cgroup"));
        assert!(
            cgroup.contains("/bluegreen.slice/bg-web-") && !cgroup.contains("bg-agent.service"),
            "adopted replica {pid} was not moved into a scope:\n{cgroup}"
        );
    }
    c.ok("systemctl restart bg-agent.service");
    let journal = c.ok("journalctl -b -u bg-agent.service --no-pager -o cat");
    let last_start = journal.rsplit("Starting bg-agent.service").next().unwrap_or_default();
    assert!(
        !last_start.contains("left-over process"),
        "still left-over processes after the move:\n{last_start}"
    );
    let answer = c.ok(&format!("curl -fsS -i http://{addr}/"));
    assert!(answer.to_lowercase().contains("x-version: v3"), "{answer}");

    eprintln!(
        "{test}: ready in {:?} (deb, websample, rootfs), booted at {:?}; {}; stop/start: start took {:?}; \
         watchdog restart after {:?}; total {:?}",
        prepared,
        booted,
        report.join("; "),
        start_took,
        watchdog_took,
        began.elapsed()
    );
}
