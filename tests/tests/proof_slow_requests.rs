//! Proofs 2 and 3: a constant stream of fresh connections (200 req/s, open
//! loop) plus one `/sleep/5` request a second, while the version changes.
//! No request fails, every slow request is answered by the version that was
//! live when it was sent, and the old version gets SIGTERM only after its
//! last slow request finished; an old version that ignores SIGTERM is
//! killed after `stop_grace` without losing anything either.

use bg_tests::agent::{Agent, RunningAgent, Svc};
use bg_tests::load::Load;
use bg_tests::wait::eventually;
use serde_json::{json, Value};
use std::path::Path;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

const OP: Duration = Duration::from_secs(60);
const LOAD_BOUND: Duration = Duration::from_secs(60);
/// Requests sent this close before the switch may go either way.
const SWITCH_SLACK: Duration = Duration::from_millis(100);

/// Lines `websample <ms> <event>` of an EVENT_LOG file: (ms, event).
fn event_log(path: &Path) -> Vec<(u128, String)> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .filter_map(|l| {
            let mut parts = l.splitn(3, ' ');
            let _ = parts.next()?;
            Some((parts.next()?.parse().ok()?, parts.next()?.to_string()))
        })
        .collect()
}

fn count(path: &Path, prefix: &str) -> usize {
    event_log(path).iter().filter(|(_, e)| e.starts_with(prefix)).count()
}

fn ms(t: SystemTime) -> u128 {
    t.duration_since(UNIX_EPOCH).expect("after 1970").as_millis()
}

fn gone(pid: i32) -> bool {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    stat.is_empty() || stat.contains(") Z ")
}

fn switched_to_green(events: &[Value]) -> SystemTime {
    let e = events
        .iter()
        .rev()
        .find(|e| e["type"] == "switched" && e["active"] == "green")
        .expect("a switched event to green");
    humantime::parse_rfc3339(e["at"].as_str().expect("event time")).expect("RFC 3339")
}

/// What a run saw, for the scenario-specific assertions.
struct Run {
    agent: RunningAgent,
    v1_log: std::path::PathBuf,
    v1_died: SystemTime,
    _dir: tempfile::TempDir,
}

async fn slow_requests_across_a_promote(ignore_sigterm: bool) -> Run {
    let dir = tempfile::tempdir().expect("temp dir");
    let (v1_log, v2_log) = (dir.path().join("v1.log"), dir.path().join("v2.log"));
    let mut svc = Svc::new("web").env("EVENT_LOG", v1_log.to_str().expect("utf-8 path")).set(
        "deploy",
        "drain_timeout",
        "\"30s\"",
    );
    if ignore_sigterm {
        svc = svc.env("IGNORE_SIGTERM", "1").set("", "stop_grace", "\"2s\"");
    }
    let agent = Agent::process().service(svc).start().await;
    agent.op("web", "deploy", json!({}), OP).await;
    let v1_pid = agent.processes_with("VERSION=v1")[0];
    let addr = agent.listen("web");

    let clock = (Instant::now(), SystemTime::now());
    let fast = Load::rate(200).fresh_connections().target(addr).max_duration(LOAD_BOUND).start();
    let slow = Load::rate(1).path("/sleep/5").target(addr).max_duration(LOAD_BOUND).record_requests().start();
    eventually("two slow requests on v1", Duration::from_secs(15), || count(&v1_log, "sleep-start") >= 2)
        .await;

    let v2 = json!({
        "env": {"VERSION": "v2", "EVENT_LOG": v2_log.to_str().expect("utf-8 path"), "IGNORE_SIGTERM": "0"},
        "promote": true
    });
    assert!(matches!(agent.api_post("/v1/services/web/deploy", v2).await, Ok((202, _))));
    let mut v1_died = None;
    eventually("the v1 process is gone", Duration::from_secs(40), || {
        let g = gone(v1_pid);
        if g {
            v1_died.get_or_insert_with(SystemTime::now);
        }
        g
    })
    .await;
    let status = agent.wait_idle("web", OP).await;
    assert_eq!(status["last_outcome"]["outcome"], "succeeded", "{status}");
    eventually("slow requests on v2", Duration::from_secs(10), || count(&v2_log, "sleep-start") >= 2).await;
    let fast = fast.stop().await;
    let slow = slow.stop().await;

    assert_eq!(fast.failed, 0, "fresh-connection requests failed: {:?}", fast.errors);
    assert_eq!(slow.failed, 0, "slow requests failed: {:?}", slow.errors);
    let switch = switched_to_green(&agent.events("web").await);
    let sent = |r: &bg_tests::load::RequestRecord| clock.1 + r.started.duration_since(clock.0);
    let mut across = 0;
    for r in &slow.records {
        let at = sent(r);
        let version = r.version.as_deref().unwrap_or("none");
        if at + SWITCH_SLACK < switch {
            assert_eq!(
                version,
                "v1",
                "a slow request sent {:?} before the switch",
                switch.duration_since(at)
            );
            if clock.1 + r.finished.duration_since(clock.0) > switch {
                across += 1;
            }
        } else if at > switch {
            assert_eq!(version, "v2", "a slow request sent {:?} after the switch", at.duration_since(switch));
        }
    }
    assert!(across >= 1, "no slow request was in flight on v1 across the switch");
    let v1_answers = slow.version("v1") as usize;
    assert_eq!(count(&v1_log, "sleep-done"), v1_answers, "v1 finished every slow request it answered");

    let lines = event_log(&v1_log);
    let last_done =
        lines.iter().filter(|(_, e)| e.starts_with("sleep-done")).map(|(t, _)| *t).max().expect("done");
    let sigterm = lines.iter().find(|(_, e)| e == "sigterm").expect("v1 got SIGTERM").0;
    assert!(
        sigterm >= last_done,
        "SIGTERM at {sigterm} before the last slow request finished at {last_done}"
    );
    assert!(sigterm >= ms(switch), "SIGTERM before the switch");
    let drained = agent.events("web").await.into_iter().find(|e| e["type"] == "drained").expect("a drain");
    assert_eq!(drained["cut"], 0, "{drained}");
    Run { agent, v1_log, v1_died: v1_died.expect("v1 died"), _dir: dir }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_requests_finish_on_the_version_that_accepted_them_and_sigterm_waits_for_them() {
    let run = slow_requests_across_a_promote(false).await;
    let lines = event_log(&run.v1_log);
    assert!(lines.iter().any(|(_, e)| e == "exit"), "v1 exited by itself after SIGTERM: {lines:?}");
    drop(run.agent);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_app_ignoring_sigterm_is_killed_after_stop_grace_and_nothing_is_lost() {
    let run = slow_requests_across_a_promote(true).await;
    let lines = event_log(&run.v1_log);
    assert!(lines.iter().any(|(_, e)| e == "ignoring sigterm"), "{lines:?}");
    let sigterm = lines.iter().find(|(_, e)| e == "sigterm").expect("SIGTERM").0;
    let gap = Duration::from_millis((ms(run.v1_died) - sigterm) as u64);
    assert!(
        gap >= Duration::from_millis(1800) && gap < Duration::from_secs(6),
        "killed {gap:?} after SIGTERM; stop_grace is 2s"
    );
    eprintln!("the SIGTERM-ignoring v1 was killed {gap:?} after SIGTERM (stop_grace 2s)");
}
