//! The agent end to end on the process runtime: real bg-agent, real
//! websample processes, real load through the agent's proxy.

use bg_tests::agent::{Agent, Svc};
use bg_tests::load::Load;
use bg_tests::status::{outcome, replica_count};
use bg_tests::wait::{eventually, eventually_async};
use serde_json::{json, Value};
use std::time::{Duration, Instant};

const OP: Duration = Duration::from_secs(60);

/// Lines `websample <ms> <event>` of an EVENT_LOG file: (ms, event).
fn event_log(path: &std::path::Path) -> Vec<(u128, String)> {
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deploy_and_promote_under_load_loses_nothing_and_stops_the_old_color() {
    let agent = Agent::process().service(Svc::new("web").replicas(2)).start().await;
    let first = agent.op("web", "deploy", json!({}), OP).await;
    assert_eq!(outcome(&first).0, "succeeded", "{first}");
    assert_eq!(first["active"], "blue");
    let v1_pids = agent.processes_with("VERSION=v1");
    assert_eq!(v1_pids.len(), 2, "two v1 replicas run");

    let load = Load::keepalive(16).target(agent.listen("web")).start();
    eventually("load is flowing", Duration::from_secs(10), || load.completed() > 200).await;
    let promoted = agent.op("web", "deploy", json!({"env": {"VERSION": "v2"}, "promote": true}), OP).await;
    assert_eq!(outcome(&promoted).0, "succeeded", "{promoted}");
    assert_eq!(promoted["active"], "green");
    let after = load.completed();
    eventually("requests after the promote", Duration::from_secs(10), || load.completed() > after + 200)
        .await;
    let report = load.stop().await;

    assert_eq!(report.failed, 0, "failed requests: {:?}", report.errors);
    assert!(report.version("v1") > 0 && report.version("v2") > 0, "{:?}", report.by_version);
    assert_eq!(replica_count(&promoted, "blue"), 0, "old color removed: {promoted}");
    assert_eq!(replica_count(&promoted, "green"), 2);
    let alive: Vec<i32> = agent.processes_with("VERSION=v1");
    assert!(alive.is_empty(), "v1 processes {v1_pids:?} are stopped, still alive: {alive:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bad_release_fails_by_its_deadline_and_traffic_never_moves() {
    let svc = Svc::new("web").replicas(2).set("health", "deadline", "\"2s\"");
    let agent = Agent::process().service(svc).start().await;
    agent.op("web", "deploy", json!({}), OP).await;
    let load = Load::keepalive(4).target(agent.listen("web")).start();
    eventually("load is flowing", Duration::from_secs(10), || load.completed() > 50).await;

    let started = Instant::now();
    let status = agent
        .op("web", "deploy", json!({"env": {"VERSION": "v2", "UNHEALTHY": "1"}, "promote": true}), OP)
        .await;
    let took = started.elapsed();
    let report = load.stop().await;

    let (result, message) = outcome(&status);
    assert_eq!(result, "failed", "{status}");
    assert!(message.contains("not healthy within 2s"), "{message}");
    assert!(
        message.contains("last log lines") && message.contains("websample"),
        "the app's own output is quoted: {message}"
    );
    assert!(took >= Duration::from_millis(1900), "failed before its deadline: {took:?}");
    assert_eq!(status["active"], "blue");
    assert_eq!(replica_count(&status, "green"), 0, "failed color removed");
    eventually("v2 processes are gone", Duration::from_secs(10), || {
        agent.processes_with("VERSION=v2").is_empty()
    })
    .await;
    assert_eq!(report.failed, 0, "{:?}", report.errors);
    assert_eq!(report.version("v2"), 0, "no request reached the bad release");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_app_that_ignores_sigterm_is_killed_after_stop_grace() {
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("v1.log");
    let svc = Svc::new("web").env("IGNORE_SIGTERM", "1").env("EVENT_LOG", log.to_str().unwrap()).set(
        "",
        "stop_grace",
        "\"2s\"",
    );
    let agent = Agent::process().service(svc).start().await;
    agent.op("web", "deploy", json!({}), OP).await;
    let pid = agent.processes_with("VERSION=v1")[0];

    let overrides =
        json!({"env": {"VERSION": "v2", "IGNORE_SIGTERM": "0", "EVENT_LOG": "/dev/null"}, "promote": true});
    assert!(matches!(agent.api_post("/v1/services/web/deploy", overrides).await, Ok((202, _))));
    // Watch the old process die, and note when.
    let proc_dir = format!("/proc/{pid}");
    let mut died = None;
    let deadline = Instant::now() + Duration::from_secs(30);
    while Instant::now() < deadline {
        let stat = std::fs::read_to_string(format!("{proc_dir}/stat")).unwrap_or_default();
        if stat.is_empty() || stat.contains(") Z ") {
            died = Some(std::time::SystemTime::now());
            break;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let died = died.expect("the SIGTERM-ignoring replica was never stopped");
    let status = agent.wait_idle("web", OP).await;
    assert_eq!(outcome(&status).0, "succeeded", "{status}");

    let lines = event_log(&log);
    let sigterm = lines.iter().find(|(_, e)| e == "sigterm").expect("websample logged SIGTERM").0;
    assert!(lines.iter().any(|(_, e)| e == "ignoring sigterm"));
    let died_ms = died.duration_since(std::time::UNIX_EPOCH).unwrap().as_millis();
    let gap = Duration::from_millis((died_ms - sigterm) as u64);
    assert!(
        gap >= Duration::from_millis(1800) && gap < Duration::from_secs(6),
        "killed {gap:?} after SIGTERM; stop_grace is 2s"
    );
    let events = agent.events("web").await;
    assert!(
        events.iter().any(|e| e["type"] == "replica"
            && e["state"] == "stopped"
            && e["reason"].as_str().unwrap_or("").contains("killed")),
        "a stopped event says it was killed"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_old_color_gets_sigterm_only_after_its_in_flight_requests_finished() {
    let dir = tempfile::tempdir().unwrap();
    let v1_log = dir.path().join("v1.log");
    let svc = Svc::new("web").env("EVENT_LOG", v1_log.to_str().unwrap());
    let agent = Agent::process().service(svc).start().await;
    agent.op("web", "deploy", json!({}), OP).await;

    let slow = Load::keepalive(1).target(agent.listen("web")).path("/sleep/2").max_requests(1).start();
    eventually("the slow request reached v1", Duration::from_secs(10), || {
        event_log(&v1_log).iter().any(|(_, e)| e.starts_with("sleep-start"))
    })
    .await;
    let v2 = json!({"env": {"VERSION": "v2", "EVENT_LOG": "/dev/null"}, "promote": true});
    let status = agent.op("web", "deploy", v2, OP).await;
    assert_eq!(outcome(&status).0, "succeeded", "{status}");
    let report = slow.stop().await;
    assert_eq!((report.ok, report.failed), (1, 0), "{:?}", report.errors);
    assert_eq!(report.version("v1"), 1, "the slow request was answered by the version that accepted it");

    let lines = event_log(&v1_log);
    let done = lines.iter().find(|(_, e)| e.starts_with("sleep-done")).expect("slow request finished").0;
    let sigterm = lines.iter().find(|(_, e)| e == "sigterm").expect("v1 got SIGTERM").0;
    assert!(done <= sigterm, "SIGTERM at {sigterm} came before the slow request finished at {done}");
    let drained = agent.events("web").await.into_iter().find(|e| e["type"] == "drained").expect("a drain");
    assert!(drained["finished"].as_u64().unwrap() >= 1 && drained["cut"] == 0, "{drained}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agent_killed_mid_deploy_recovers_and_a_restart_adopts_replicas() {
    let svc = Svc::new("web").replicas(2).set("health", "deadline", "\"60s\"");
    let mut agent = Agent::process().service(svc).start().await;
    agent.op("web", "deploy", json!({}), OP).await;
    let v1_pids = {
        let mut p = agent.processes_with("VERSION=v1");
        p.sort();
        p
    };

    // A deploy that will sit in its health phase.
    let bad = json!({"env": {"VERSION": "v2", "UNHEALTHY": "1"}});
    assert!(matches!(agent.api_post("/v1/services/web/deploy", bad).await, Ok((202, _))));
    eventually("v2 replicas started", Duration::from_secs(20), || {
        agent.processes_with("VERSION=v2").len() == 2
    })
    .await;
    agent.kill9();
    agent.restart().await;

    let status = agent.status("web").await;
    assert_eq!(status["active"], "blue", "{status}");
    assert!(status["operation"].is_null(), "{status}");
    assert_eq!(replica_count(&status, "green"), 0, "half-started color removed: {status}");
    assert_eq!(outcome(&status).0, "aborted", "{status}");
    eventually("v2 processes are gone", Duration::from_secs(20), || {
        agent.processes_with("VERSION=v2").is_empty()
    })
    .await;
    let load = Load::keepalive(4).target(agent.listen("web")).max_requests(200).start();
    eventually("served again", Duration::from_secs(20), || load.finished()).await;
    let report = load.stop().await;
    assert_eq!(report.failed, 0, "{:?}", report.errors);
    assert_eq!(report.version("v1"), 200);

    // A normal restart adopts the running replicas instead of recreating them.
    let before = agent.runtime_ids("web", "blue").await;
    let status = agent.stop();
    assert!(status.success(), "agent exits cleanly on SIGTERM");
    assert_eq!(agent.processes_with("VERSION=v1").len(), 2, "replicas outlive the agent");
    agent.restart().await;
    assert_eq!(agent.runtime_ids("web", "blue").await, before);
    let mut after = agent.processes_with("VERSION=v1");
    after.sort();
    assert_eq!(after, v1_pids, "same processes, adopted");
    let load = Load::keepalive(4).target(agent.listen("web")).max_requests(100).start();
    eventually("adopted replicas serve", Duration::from_secs(20), || load.finished()).await;
    assert_eq!(load.stop().await.failed, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_concurrent_promotes_one_succeeds_one_conflicts() {
    let agent = Agent::process().service(Svc::new("web")).start().await;
    agent.op("web", "deploy", json!({}), OP).await;
    agent.op("web", "deploy", json!({"env": {"VERSION": "v2"}}), OP).await;
    // A slow request in flight on blue keeps the first promote draining for
    // two seconds, so the second request surely arrives while it runs (and
    // not after it ended, when it would be refused as "nothing to promote").
    let slow = Load::keepalive(1).target(agent.listen("web")).path("/sleep/2").max_requests(1).start();
    eventually_async("the slow request is in flight on blue", Duration::from_secs(10), || async {
        agent.status("web").await["colors"]["blue"]["replicas"][0]["inflight"] == 1
    })
    .await;
    let (a, b) = tokio::join!(
        agent.api_post("/v1/services/web/promote", json!({})),
        agent.api_post("/v1/services/web/promote", json!({}))
    );
    let (a, b) = (a.unwrap(), b.unwrap());
    let mut codes = [a.0, b.0];
    codes.sort();
    assert_eq!(codes, [202, 409], "{a:?} {b:?}");
    let conflict = if a.0 == 409 { a.1 } else { b.1 };
    assert_eq!(conflict["error"]["code"], "conflict");
    let status = agent.wait_idle("web", OP).await;
    assert_eq!(status["active"], "green");
    assert_eq!(slow.stop().await.failed, 0, "the drained request finished");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_api_requests_get_clear_4xx_and_change_nothing() {
    let agent = Agent::process().service(Svc::new("web")).start().await;
    agent.op("web", "deploy", json!({}), OP).await;
    let before = agent.status("web").await;

    let cases: Vec<(&str, Value, u16, &str)> = vec![
        ("/v1/services/nope/deploy", json!({}), 404, "unknown service"),
        ("/v1/services/web/deploy", json!({"imgae": "x"}), 400, "imgae"),
        ("/v1/services/web/promote", json!({}), 400, "nothing to promote"),
        ("/v1/services/web/canary", json!({"weight": 10}), 400, "nothing to promote"),
        ("/v1/services/web/abort", json!({}), 400, "nothing to abort"),
        ("/v1/services/web/rollback", json!({}), 400, "nothing to roll back"),
        ("/v1/services/web/deploy", json!({"env": {"": "x"}}), 400, "env key"),
    ];
    for (path, body, code, needle) in cases {
        let (status, answer) = agent.api_post(path, body.clone()).await.unwrap();
        assert_eq!(status, code, "{path} {body}: {answer}");
        let message = answer["error"]["message"].as_str().unwrap_or("");
        assert!(message.contains(needle), "{path} {body}: {message:?} lacks {needle:?}");
    }
    let (status, answer) =
        bg_tests::api::request(agent.socket(), "POST", "/v1/services/web/deploy", None).await.unwrap();
    assert_eq!(status, 202, "an empty body is an empty request: {answer}");
    agent.wait_idle("web", OP).await;
    let after = agent.status("web").await;
    assert_eq!(after["active"], before["active"]);
}
