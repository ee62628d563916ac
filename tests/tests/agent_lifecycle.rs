//! The rest of the blue/green state machine end to end (process runtime):
//! keep_old and the instant rollback, the monitor window's automatic
//! rollback, auto_promote, a promote cut short by a crash, and a one-replica
//! stop-first rolling update that queues instead of failing.

use bg_tests::agent::{Agent, Svc};
use bg_tests::load::Load;
use bg_tests::status::{outcome, replica_count};
use bg_tests::wait::eventually;
use serde_json::json;
use std::time::{Duration, Instant};

const OP: Duration = Duration::from_secs(60);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keep_old_makes_rollback_one_instant_swap() {
    let svc = Svc::new("web").replicas(2).set("deploy", "keep_old", "\"60s\"");
    let agent = Agent::process().service(svc).start().await;
    agent.op("web", "deploy", json!({}), OP).await;
    let v1 = agent.processes_with("VERSION=v1");
    let promoted = agent.op("web", "deploy", json!({"env": {"VERSION": "v2"}, "promote": true}), OP).await;
    assert_eq!(outcome(&promoted).0, "succeeded", "{promoted}");
    assert!(outcome(&promoted).1.contains("kept warm"), "{promoted}");
    assert_eq!(replica_count(&promoted, "blue"), 2, "blue kept running, out of rotation");
    let states: Vec<&str> = promoted["colors"]["blue"]["replicas"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["state"].as_str().unwrap())
        .collect();
    assert_eq!(states, ["out", "out"]);

    let load = Load::keepalive(8).target(agent.listen("web")).start();
    eventually("load on v2", Duration::from_secs(10), || load.completed() > 100).await;
    let started = Instant::now();
    let back = agent.op("web", "rollback", json!({}), OP).await;
    let took = started.elapsed();
    let after = load.completed();
    eventually("load after the rollback", Duration::from_secs(10), || load.completed() > after + 100).await;
    let report = load.stop().await;

    assert_eq!(outcome(&back).0, "succeeded", "{back}");
    assert_eq!(back["active"], "blue");
    let mut now = agent.processes_with("VERSION=v1");
    now.sort();
    let mut before = v1;
    before.sort();
    assert_eq!(now, before, "the same warm processes took the traffic back: nothing was started");
    assert!(took < Duration::from_secs(5), "rollback to a warm color is a swap plus a drain: {took:?}");
    assert_eq!(report.failed, 0, "{:?}", report.errors);
    assert!(report.version("v1") > 0 && report.version("v2") > 0);
    eventually("v2 stopped", Duration::from_secs(10), || agent.processes_with("VERSION=v2").is_empty()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_monitor_window_rolls_back_to_the_warm_color() {
    let svc = Svc::new("web")
        .replicas(2)
        .set("deploy", "monitor", "\"3s\"")
        .set("deploy", "failure_action", "\"rollback\"")
        .set("deploy", "max_error_rate", "0.05");
    let agent = Agent::process().service(svc).start().await;
    agent.op("web", "deploy", json!({}), OP).await;
    let load = Load::keepalive(8).target(agent.listen("web")).max_duration(Duration::from_secs(40)).start();
    eventually("load on v1", Duration::from_secs(10), || load.completed() > 100).await;
    let bad = json!({"env": {"VERSION": "v2", "ERROR_RATE": "0.5"}, "promote": true});
    let status = agent.op("web", "deploy", bad, OP).await;
    let report = load.stop().await;

    let (result, message) = outcome(&status);
    assert_eq!(result, "rolled-back", "{status}");
    assert!(message.contains("error rate"), "{message}");
    assert_eq!(status["active"], "blue");
    assert_eq!(replica_count(&status, "green"), 0);
    assert!(report.version("v2") > 0, "v2 took traffic before the monitor caught it");
    let after = agent.wait_idle("web", OP).await;
    assert_eq!(after["weights"]["blue"], 100);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn auto_promote_switches_as_soon_as_healthy() {
    let svc = Svc::new("web").set("deploy", "auto_promote", "true");
    let agent = Agent::process().service(svc).start().await;
    agent.op("web", "deploy", json!({}), OP).await;
    let status = agent.op("web", "deploy", json!({"env": {"VERSION": "v2"}}), OP).await;
    assert_eq!(outcome(&status).0, "succeeded", "{status}");
    assert_eq!(status["active"], "green", "promoted without being asked");
    // An explicit promote: false wins over the config.
    let status = agent.op("web", "deploy", json!({"env": {"VERSION": "v3"}, "promote": false}), OP).await;
    assert_eq!(status["active"], "green");
    assert_eq!(replica_count(&status, "blue"), 1, "v3 waits in blue");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_promote_cut_short_by_a_crash_is_completed_on_restart() {
    let svc = Svc::new("web").set("deploy", "drain_timeout", "\"30s\"");
    let mut agent = Agent::process().service(svc).start().await;
    agent.op("web", "deploy", json!({}), OP).await;
    agent.op("web", "deploy", json!({"env": {"VERSION": "v2"}}), OP).await;
    // A slow request holds blue's drain open while the agent dies.
    let slow = Load::keepalive(1).target(agent.listen("web")).path("/sleep/20").max_requests(1).start();
    let inflight = || async {
        let s = agent.status("web").await;
        s["colors"]["blue"]["replicas"][0]["inflight"].as_u64().unwrap_or(0)
    };
    let deadline = Instant::now() + Duration::from_secs(10);
    while inflight().await == 0 {
        assert!(Instant::now() < deadline, "slow request never reached blue");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(matches!(agent.api_post("/v1/services/web/promote", json!({})).await, Ok((202, _))));
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let s = agent.status("web").await;
        if s["operation"]["phase"] == "draining" {
            break;
        }
        assert!(Instant::now() < deadline, "promote never reached its drain: {s}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    agent.kill9();
    drop(slow);
    agent.restart().await;

    let status = agent.wait_idle("web", OP).await;
    assert_eq!(status["active"], "green", "{status}");
    assert_eq!(replica_count(&status, "blue"), 0, "the promote was completed: {status}");
    let (result, message) = outcome(&status);
    assert_eq!(result, "aborted", "{status}");
    assert!(message.contains("completed"), "{message}");
    eventually("blue stopped", Duration::from_secs(20), || agent.processes_with("VERSION=v1").is_empty())
        .await;
    let load = Load::keepalive(4).target(agent.listen("web")).max_requests(100).start();
    eventually("green serves", Duration::from_secs(20), || load.finished()).await;
    let report = load.stop().await;
    assert_eq!((report.failed, report.version("v2")), (0, 100), "{:?}", report.errors);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stop_first_with_one_replica_queues_requests_instead_of_failing() {
    let agent = Agent::process().service(Svc::new("web")).start().await;
    agent.op("web", "deploy", json!({}), OP).await;
    let load = Load::keepalive(8).target(agent.listen("web")).start();
    eventually("load is flowing", Duration::from_secs(10), || load.completed() > 100).await;
    let status =
        agent.op("web", "rolling", json!({"env": {"VERSION": "v2"}, "order": "stop-first"}), OP).await;
    let after = load.completed();
    eventually("served by v2", Duration::from_secs(10), || load.completed() > after + 100).await;
    let report = load.stop().await;
    assert_eq!(outcome(&status).0, "succeeded", "{status}");
    assert_eq!(report.failed, 0, "requests waited in the queue: {:?}", report.errors);
    assert!(report.version("v2") > 0);
    let slowest = report.quantile(1.0).unwrap();
    assert!(slowest > Duration::from_millis(50), "some requests did wait for the new replica: {slowest:?}");
}
