//! The controller's lifecycle, end to end on the process runtime through
//! `bgctl` and the control API: a canary split never leaks to the next
//! unpromoted candidate; `abort` stops the running operation and answers
//! with what it did; stopping the agent during an operation is not a
//! failure (the next agent finishes it, as after a crash); operation ids
//! and event numbers keep growing across restarts.

use bg_tests::agent::{Agent, RunningAgent, Svc};
use bg_tests::load::{Load, LoadHandle, LoadReport};
use bg_tests::status::outcome;
use bg_tests::wait::eventually;
use serde_json::{json, Value};
use std::collections::BTreeSet;
use std::time::Duration;

const OP: Duration = Duration::from_secs(60);

/// `count` fresh requests without cookies or preview headers: what an
/// anonymous client of the live service gets.
async fn live_versions(agent: &RunningAgent, count: u64) -> LoadReport {
    let report = Load::rate(400)
        .fresh_connections()
        .target(agent.listen("web"))
        .max_requests(count)
        .max_duration(Duration::from_secs(30))
        .start();
    let report = finish(report).await;
    assert_eq!(report.failed, 0, "live requests failed: {:?}", report.errors);
    report
}

/// Wait for a bounded load to send all its requests; its report.
async fn finish(load: LoadHandle) -> LoadReport {
    eventually("the load to finish", Duration::from_secs(40), || load.finished()).await;
    load.stop().await
}

/// Wait until the running operation has reached `phase`.
async fn wait_phase(agent: &RunningAgent, phase: &str) -> Value {
    agent.wait_status("web", &format!("phase {phase}"), OP, |s| s["operation"]["phase"] == phase).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deploy_after_a_canary_gets_no_live_traffic_until_promoted() {
    let agent = Agent::process().service(Svc::new("web")).start().await;
    agent.bgctl(&["deploy", "web"]).assert_exit_code(0);
    agent.bgctl(&["deploy", "web", "--env", "VERSION=v2"]).assert_exit_code(0);
    agent.bgctl(&["canary", "web", "--weight", "30"]).assert_exit_code(0);
    let split = live_versions(&agent, 200).await;
    assert!(split.version("v2") > 20, "the canary gets its share: {split:?}");

    // A new candidate replaces the canary: it is healthy, not promoted,
    // and must get nothing but preview traffic.
    agent.bgctl(&["deploy", "web", "--env", "VERSION=v3"]).assert_exit_code(0);
    let s = agent.status("web").await;
    let idle = if s["active"] == "blue" { "green" } else { "blue" };
    assert_eq!(s["weights"][idle], 0, "the canary weight outlived its candidate: {s}");
    let live = live_versions(&agent, 300).await;
    assert_eq!(live.version("v1"), live.total(), "an unpromoted candidate got live traffic: {live:?}");
    let preview = Load::rate(100)
        .fresh_connections()
        .target(agent.listen("web"))
        .header("x-bg-color", idle)
        .max_requests(20)
        .max_duration(Duration::from_secs(20))
        .start();
    let preview = finish(preview).await;
    assert_eq!(preview.version("v3"), 20, "preview still reaches the candidate: {preview:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn abort_during_the_health_wait_stops_the_deploy_and_says_so() {
    let agent = Agent::process().service(Svc::new("web").set("health", "deadline", "\"60s\"")).start().await;
    agent.bgctl(&["deploy", "web"]).assert_exit_code(0);
    agent
        .bgctl(&["deploy", "web", "--env", "VERSION=v2", "--env", "UNHEALTHY=1", "--no-wait"])
        .assert_exit_code(0);
    let waiting = wait_phase(&agent, "health").await;
    let deploy_id = waiting["operation"]["id"].as_u64().unwrap();

    let out = agent.bgctl(&["abort", "web"]);
    out.assert_exit_code(0);
    assert!(
        out.stdout.contains(&format!("stopped deploy #{deploy_id}")),
        "abort says what it stopped: {}",
        out.stdout
    );
    let s = agent.wait_idle("web", OP).await;
    assert_eq!(outcome(&s).0, "succeeded", "the abort itself succeeded: {s}");
    let idle = if s["active"] == "blue" { "green" } else { "blue" };
    assert_eq!(s["colors"][idle]["replicas"].as_array().map(Vec::len), Some(0), "candidate left: {s}");
    let history = agent.bgctl(&["history", "web", "--output", "json"]).assert_exit_code(0).stdout_json();
    let entries = history["entries"].as_array().unwrap();
    let deploy = entries.iter().find(|e| e["operation"] == deploy_id).expect("the deploy is in history");
    assert_eq!(deploy["outcome"], "aborted", "{deploy}");
    assert_eq!(live_versions(&agent, 50).await.version("v1"), 50);

    // With nothing running and nothing deployed, abort is refused and
    // changes nothing.
    let before = agent.status("web").await;
    agent.bgctl(&["abort", "web"]).assert_exit_code(2);
    let after = agent.status("web").await;
    assert_eq!(before["last_outcome"], after["last_outcome"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_during_the_monitor_window_leaves_the_promote_to_the_next_agent() {
    let svc =
        Svc::new("web").set("deploy", "monitor", "\"60s\"").set("deploy", "failure_action", "\"rollback\"");
    let mut agent = Agent::process().service(svc).start().await;
    agent.bgctl(&["deploy", "web"]).assert_exit_code(0);
    agent.bgctl(&["deploy", "web", "--env", "VERSION=v2", "--promote", "--no-wait"]).assert_exit_code(0);
    let watching = wait_phase(&agent, "monitor").await;
    let new = watching["active"].as_str().unwrap().to_string();

    // A plain `systemctl restart`: SIGTERM, then a new agent.
    let status = agent.stop();
    assert!(status.success(), "agent exit status {status}");
    let log = agent.log();
    assert!(!log.contains("rolling-back"), "a stopping agent rolled the promote back:\n{log}");
    agent.restart().await;
    let s = agent.wait_idle("web", OP).await;
    assert_eq!(s["active"], new.as_str(), "the promoted color serves after the restart: {s}");
    let old = if new == "blue" { "green" } else { "blue" };
    assert_eq!(s["colors"][old]["replicas"].as_array().map(Vec::len), Some(0), "old color left: {s}");
    assert!(outcome(&s).1.contains("completed"), "the promote was completed: {s}");
    assert_eq!(live_versions(&agent, 50).await.version("v2"), 50);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn operation_ids_and_event_numbers_grow_across_restarts() {
    let mut agent = Agent::process().service(Svc::new("web")).start().await;
    agent.bgctl(&["deploy", "web"]).assert_exit_code(0);
    agent.bgctl(&["deploy", "web", "--env", "VERSION=v2", "--promote"]).assert_exit_code(0);
    let last_seq = agent.events("web").await.iter().filter_map(|e| e["seq"].as_u64()).max().unwrap();

    for restart in ["sigterm", "kill9"] {
        match restart {
            "sigterm" => assert!(agent.stop().success()),
            _ => agent.kill9(),
        }
        agent.restart().await;
        let accepted =
            match agent.api_post("/v1/services/web/deploy", json!({"env": {"VERSION": "v3"}})).await {
                Ok((202, v)) => v,
                other => panic!("deploy after {restart}: {other:?}"),
            };
        assert!(
            accepted["since"].as_u64().unwrap() > last_seq,
            "after {restart}: {accepted} vs seq {last_seq}"
        );
        agent.wait_idle("web", OP).await;
        agent.bgctl(&["abort", "web"]).assert_exit_code(0);
    }
    let history = agent.bgctl(&["history", "web", "--output", "json"]).assert_exit_code(0).stdout_json();
    let ids: Vec<u64> =
        history["entries"].as_array().unwrap().iter().map(|e| e["operation"].as_u64().unwrap()).collect();
    let unique: BTreeSet<u64> = ids.iter().copied().collect();
    assert_eq!(unique.len(), ids.len(), "duplicate operation ids in history: {ids:?}");
    assert!(ids.windows(2).all(|w| w[0] < w[1]), "ids grow: {ids:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_candidate_killed_by_a_signal_fails_the_deploy_at_once_not_at_the_deadline() {
    let agent = Agent::process().service(Svc::new("web").set("health", "deadline", "\"120s\"")).start().await;
    agent.bgctl(&["deploy", "web"]).assert_exit_code(0);
    agent
        .bgctl(&["deploy", "web", "--env", "VERSION=v2", "--env", "UNHEALTHY=1", "--no-wait"])
        .assert_exit_code(0);
    wait_phase(&agent, "health").await;
    let pids = agent.processes_with("VERSION=v2");
    assert_eq!(pids.len(), 1, "one candidate process: {pids:?}");
    // What the OOM killer does.
    let killed = std::time::Instant::now();
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(pids[0]), nix::sys::signal::Signal::SIGKILL).unwrap();
    let s = agent.wait_idle("web", Duration::from_secs(30)).await;
    assert!(killed.elapsed() < Duration::from_secs(15), "noticed after {:?}", killed.elapsed());
    let (kind, message) = outcome(&s);
    assert_eq!(kind, "failed", "{s}");
    assert!(message.contains("SIGKILL"), "the failure says how it died: {message}");
    assert_eq!(live_versions(&agent, 50).await.version("v1"), 50);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_state_write_that_fails_stops_the_promote_and_traffic_stays() {
    let mut agent = Agent::process().service(Svc::new("web")).start().await;
    agent.bgctl(&["deploy", "web"]).assert_exit_code(0);
    agent.bgctl(&["deploy", "web", "--env", "VERSION=v2"]).assert_exit_code(0);
    let before = agent.status("web").await;
    // A directory where the state file's temporary copy goes: every write
    // fails, also for root (file modes would not stop root).
    let blocker = agent.state_dir().join("state.json.tmp");
    std::fs::create_dir(&blocker).unwrap();
    let out = agent.bgctl(&["promote", "web"]);
    out.assert_exit_code(1);
    assert!(out.stdout.contains("cannot persist state"), "{}", out.stdout);
    let s = agent.status("web").await;
    assert_eq!(s["active"], before["active"], "traffic moved without a state write: {s}");
    assert_eq!(live_versions(&agent, 100).await.version("v1"), 100);

    // The disk is back: the same promote goes through, and a new agent
    // reads what the proxy serves.
    std::fs::remove_dir(&blocker).unwrap();
    agent.bgctl(&["promote", "web"]).assert_exit_code(0);
    agent.kill9();
    agent.restart().await;
    let s = agent.wait_idle("web", OP).await;
    assert_ne!(s["active"], before["active"], "{s}");
    assert_eq!(live_versions(&agent, 50).await.version("v2"), 50);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_paused_rolling_update_survives_a_restart_and_abort_brings_the_old_spec_back() {
    let svc = Svc::new("web").replicas(3).set("health", "deadline", "\"2s\"");
    let mut agent = Agent::process().service(svc).start().await;
    agent.bgctl(&["deploy", "web"]).assert_exit_code(0);
    let out = agent.bgctl(&[
        "rolling",
        "web",
        "--env",
        "VERSION=v2",
        "--env",
        "UNHEALTHY=1",
        "--failure-action",
        "pause",
        "--order",
        "stop-first",
    ]);
    out.assert_exit_code(1);
    assert!(out.stdout.contains("paused"), "{}", out.stdout);

    // A restart keeps the pause, and gives the color its empty slot back.
    assert!(agent.stop().success());
    agent.restart().await;
    let s = agent
        .wait_status("web", "three healthy replicas", OP, |s| {
            let rs = bg_tests::status::replicas(s, "blue");
            rs.len() == 3 && rs.iter().all(|r| r["health"] == "healthy" && r["state"] == "serving")
        })
        .await;
    assert!(s["operation"].is_null(), "{s}");

    // The hint bgctl printed works: abort undoes the update.
    let out = agent.bgctl(&["abort", "web"]);
    out.assert_exit_code(0);
    assert!(out.stdout.contains("undone"), "{}", out.stdout);
    let s = agent.status("web").await;
    let rs = bg_tests::status::replicas(&s, "blue");
    assert_eq!(rs.len(), 3, "{s}");
    assert!(rs.iter().all(|r| r["revision"] == 1), "every replica on the old revision: {rs:?}");
    assert_eq!(live_versions(&agent, 60).await.version("v1"), 60);
    // Nothing is paused any more.
    agent.bgctl(&["rolling", "web", "--resume"]).assert_exit_code(2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_paused_promote_is_undone_by_abort_and_finished_by_promote() {
    let svc = Svc::new("web")
        .set("deploy", "monitor", "\"30s\"")
        .set("deploy", "failure_action", "\"pause\"")
        .set("health", "deadline", "\"5s\"");
    let mut agent = Agent::process().service(svc).start().await;
    agent.bgctl(&["deploy", "web"]).assert_exit_code(0);

    for (round, finish, version) in [(2, "abort", "v1"), (3, "promote", "v3")] {
        let v = format!("VERSION=v{round}");
        agent.bgctl(&["deploy", "web", "--env", &v, "--promote", "--no-wait"]).assert_exit_code(0);
        let watching = wait_phase(&agent, "monitor").await;
        let new = watching["active"].as_str().unwrap().to_string();
        // The new color dies in the monitor window: the promote pauses.
        let pids = agent.processes_with(&v);
        assert_eq!(pids.len(), 1, "{pids:?}");
        nix::sys::signal::kill(nix::unistd::Pid::from_raw(pids[0]), nix::sys::signal::Signal::SIGKILL)
            .unwrap();
        let s = agent.wait_idle("web", OP).await;
        assert_eq!(outcome(&s).0, "paused", "{s}");
        if round == 3 {
            // Still paused after a restart.
            assert!(agent.stop().success());
            agent.restart().await;
        }
        // The healer brings the new color back; then the hint is followed.
        agent
            .wait_status("web", "the new color healthy again", OP, |s| {
                bg_tests::status::replicas(s, &new).iter().all(|r| r["health"] == "healthy")
            })
            .await;
        let out = agent.bgctl(&[finish, "web"]);
        out.assert_exit_code(0);
        let s = agent.status("web").await;
        let old = if new == "blue" { "green" } else { "blue" };
        match finish {
            "abort" => {
                assert_eq!(s["active"], old, "abort switched back: {s}");
                assert!(bg_tests::status::replicas(&s, &new).is_empty(), "{s}");
            }
            _ => {
                assert_eq!(s["active"], new.as_str(), "promote kept the new color: {s}");
                assert!(bg_tests::status::replicas(&s, old).is_empty(), "old color stopped: {s}");
            }
        }
        assert_eq!(live_versions(&agent, 50).await.version(version), 50, "round {round}");
    }
}
