//! `bgctl pause|resume|maintenance|live` through the real agent (process
//! runtime, websample): held requests go on in the order they came, a
//! request held past `--max` gets 503, load across a pause loses nothing,
//! and maintenance answers 503 with its message and `Retry-After`, lets a
//! deploy run, and survives a restart.

use bg_tests::agent::{Agent, Svc};
use bg_tests::api::{raw, RawResponse, Target};
use bg_tests::load::Load;
use bg_tests::status::outcome;
use serde_json::json;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

const OP: Duration = Duration::from_secs(60);

async fn get(addr: SocketAddr, path: &str) -> RawResponse {
    raw(Target::Tcp(addr), "GET", path, &[], "").await.unwrap_or_else(|e| panic!("GET {path}: {e}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pause_holds_requests_and_resume_releases_them_in_order() {
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("events.log");
    let agent =
        Agent::process().service(Svc::new("web").env("EVENT_LOG", log.to_str().unwrap())).start().await;
    assert_eq!(outcome(&agent.op("web", "deploy", json!({}), OP).await).0, "succeeded");
    let addr = agent.listen("web");

    let out = agent.bgctl(&["--output", "json", "pause", "web", "--max", "20s"]);
    out.assert_exit_code(0);
    assert_eq!(out.stdout_json()["traffic"]["state"], "paused", "{out:?}");
    assert_eq!(out.stdout_json()["traffic"]["max_ms"], 20_000);
    assert!(agent.bgctl(&["status", "web"]).stdout.contains("paused since"));

    // Twenty requests, each on its own connection, 20 ms apart.
    let mut held = Vec::new();
    for i in 0..20 {
        held.push(tokio::spawn(async move { get(addr, &format!("/sleep/0.0001{i:03}")).await }));
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    let arrived = || {
        std::fs::read_to_string(&log)
            .unwrap_or_default()
            .lines()
            .filter_map(|l| l.split_once(" sleep-start ").map(|(_, n)| n.to_string()))
            .collect::<Vec<_>>()
    };
    assert!(arrived().is_empty(), "requests reached the replica while paused: {:?}", arrived());
    assert!(held.iter().all(|h| !h.is_finished()), "a held request was answered while paused");

    let resumed = Instant::now();
    agent.bgctl(&["resume", "web"]).assert_exit_code(0);
    for h in held {
        assert_eq!(h.await.unwrap().status, 200);
    }
    assert!(resumed.elapsed() < Duration::from_secs(5), "releasing took {:?}", resumed.elapsed());
    let want: Vec<String> = (0..20).map(|i| format!("0.0001{i:03}")).collect();
    assert_eq!(arrived(), want, "held requests reached the replica out of order");

    // Held past --max: 503, naming the pause.
    agent.bgctl(&["pause", "web", "--max", "300ms"]).assert_exit_code(0);
    let started = Instant::now();
    let late = get(addr, "/").await;
    assert_eq!(late.status, 503, "{}", late.text());
    assert!(late.text().contains("paused"), "{}", late.text());
    assert!(started.elapsed() >= Duration::from_millis(300), "{:?}", started.elapsed());
    agent.bgctl(&["resume", "web"]).assert_exit_code(0);
    // resume when not paused changes nothing.
    agent.bgctl(&["resume", "web"]).assert_exit_code(0);

    // Load across a one-second pause: every request answered.
    let load = Load::keepalive(8).target(addr).start();
    tokio::time::sleep(Duration::from_millis(300)).await;
    agent.bgctl(&["pause", "web"]).assert_exit_code(0);
    tokio::time::sleep(Duration::from_secs(1)).await;
    agent.bgctl(&["resume", "web"]).assert_exit_code(0);
    tokio::time::sleep(Duration::from_millis(300)).await;
    let report = load.stop().await;
    assert_eq!(report.failed, 0, "{:?}", report.errors);
    assert!(report.ok > 100, "only {} answers", report.ok);
    let slowest = report.quantile(1.0).expect("latencies");
    assert!(slowest >= Duration::from_millis(900), "nothing was held: slowest {slowest:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn maintenance_answers_503_lets_a_deploy_run_and_survives_a_restart() {
    let mut agent = Agent::process().service(Svc::new("web")).start().await;
    assert_eq!(outcome(&agent.op("web", "deploy", json!({}), OP).await).0, "succeeded");
    let addr = agent.listen("web");

    agent
        .bgctl(&["maintenance", "web", "--message", "Upgrading the database, back at 10:00"])
        .assert_exit_code(0);
    let answer = get(addr, "/").await;
    assert_eq!(answer.status, 503);
    assert_eq!(answer.text(), "Upgrading the database, back at 10:00\n");
    assert_eq!(answer.header("retry-after"), Some("30"));
    assert!(agent.bgctl(&["status", "web"]).stdout.contains("maintenance since"));

    // Refused while in maintenance: pause and resume (exit 2, naming live).
    let out = agent.bgctl(&["resume", "web"]);
    out.assert_exit_code(2);
    assert!(out.stderr.contains("bgctl live web"), "{out:?}");
    let out = agent.bgctl(&["pause", "web", "--max", "0s"]);
    out.assert_exit_code(2);
    assert!(out.stderr.contains("max"), "{out:?}");

    // A deploy runs meanwhile: health checks reach the replicas directly.
    let s = agent.op("web", "deploy", json!({"env": {"VERSION": "v2"}, "promote": true}), OP).await;
    assert_eq!(outcome(&s).0, "succeeded", "{s}");
    assert_eq!(get(addr, "/").await.status, 503);

    agent.stop();
    agent.restart().await;
    let status = agent.status("web").await;
    assert_eq!(status["traffic"]["state"], "maintenance", "{status}");
    assert_eq!(get(addr, "/").await.status, 503, "maintenance did not survive the restart");

    agent.bgctl(&["live", "web"]).assert_exit_code(0);
    let answer = get(addr, "/").await;
    assert_eq!((answer.status, answer.header("x-version")), (200, Some("v2")));
}
