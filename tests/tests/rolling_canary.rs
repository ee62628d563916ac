//! Rolling updates (stop-first, start-first, failure actions), the manual
//! nginx-style replica walk-through, and scripted canary analysis, end to
//! end on the process runtime under real load.

use bg_tests::agent::{Agent, RunningAgent, Svc};
use bg_tests::load::Load;
use bg_tests::status::{outcome, replicas};
use bg_tests::wait::eventually;
use serde_json::{json, Value};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

const OP: Duration = Duration::from_secs(90);

/// Samples the active color during an operation: (max replicas not
/// serving-and-healthy out of `wanted`, min serving-and-healthy, max replicas).
struct Sampler {
    stop: Arc<AtomicBool>,
    seen: Arc<Mutex<(usize, usize, usize)>>,
    task: tokio::task::JoinHandle<()>,
}

impl Sampler {
    fn start(agent: &RunningAgent, service: &str, wanted: usize) -> Sampler {
        let socket = agent.socket().to_path_buf();
        let path = format!("/v1/services/{service}");
        let stop = Arc::new(AtomicBool::new(false));
        let seen = Arc::new(Mutex::new((0, usize::MAX, 0)));
        let (stop2, seen2) = (stop.clone(), seen.clone());
        let task = tokio::spawn(async move {
            while !stop2.load(Ordering::Relaxed) {
                if let Ok((200, s)) = bg_tests::api::request(&socket, "GET", &path, None).await {
                    let color = s["active"].as_str().unwrap_or("blue").to_string();
                    let all = replicas(&s, &color);
                    let good =
                        all.iter().filter(|r| r["state"] == "serving" && r["health"] == "healthy").count();
                    let mut seen = seen2.lock().unwrap();
                    seen.0 = seen.0.max(wanted.saturating_sub(good));
                    seen.1 = seen.1.min(good);
                    seen.2 = seen.2.max(all.len());
                }
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        });
        Sampler { stop, seen, task }
    }

    async fn finish(self) -> (usize, usize, usize) {
        self.stop.store(true, Ordering::Relaxed);
        let _ = self.task.await;
        *self.seen.lock().unwrap()
    }
}

fn time(e: &Value) -> SystemTime {
    humantime::parse_rfc3339(e["at"].as_str().unwrap()).unwrap()
}

/// Seq of the first replica event for `replica` in `state` after `since`.
fn replica_event(events: &[Value], replica: &str, state: &str, since: u64) -> Option<u64> {
    events
        .iter()
        .filter(|e| e["seq"].as_u64() > Some(since))
        .find(|e| e["type"] == "replica" && e["replica"] == replica && e["state"] == state)
        .and_then(|e| e["seq"].as_u64())
}

async fn four_replicas() -> RunningAgent {
    let agent = Agent::process().service(Svc::new("web").replicas(4)).start().await;
    let s = agent.op("web", "deploy", json!({}), OP).await;
    assert_eq!(outcome(&s).0, "succeeded", "{s}");
    agent
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stop_first_rolling_under_load_respects_parallelism_order_and_delay() {
    let agent = four_replicas().await;
    let load = Load::keepalive(16).target(agent.listen("web")).start();
    eventually("load is flowing", Duration::from_secs(10), || load.completed() > 200).await;
    let since = agent.events("web").await.last().and_then(|e| e["seq"].as_u64()).unwrap_or(0);

    let sampler = Sampler::start(&agent, "web", 4);
    let body = json!({"env": {"VERSION": "v2"}, "parallelism": 2, "order": "stop-first", "delay": "1s"});
    let status = agent.op("web", "rolling", body, OP).await;
    let (max_out, _, max_total) = sampler.finish().await;
    let report = load.stop().await;

    assert_eq!(outcome(&status).0, "succeeded", "{status}");
    assert_eq!(report.failed, 0, "{:?}", report.errors);
    assert!(report.version("v2") > 0);
    assert_eq!(max_out, 2, "stop-first with parallelism 2 takes exactly two replicas out at a time");
    assert_eq!(max_total, 4, "stop-first never runs more than the configured replicas");
    let rs = replicas(&status, "blue");
    assert_eq!(rs.len(), 4);
    assert!(rs.iter().all(|r| r["revision"] == 2), "every replica on revision 2: {rs:?}");

    let events = agent.events("web").await;
    for id in ["1", "2", "3", "4"] {
        let stopped = replica_event(&events, id, "stopped", since).expect("old replica stopped");
        let serving = replica_event(&events, id, "serving", stopped).expect("new replica serving after");
        let draining = replica_event(&events, id, "draining", since).expect("old replica drained");
        assert!(draining < stopped && stopped < serving, "replica {id}: drain, stop, then start");
    }
    // Batch 2 (replicas 3, 4) started only after the 1s delay.
    let delay = events.iter().find(|e| e["type"] == "phase" && e["phase"] == "delay").expect("delay phase");
    let next = events
        .iter()
        .find(|e| {
            e["type"] == "phase" && e["phase"] == "replacing" && e["seq"].as_u64() > delay["seq"].as_u64()
        })
        .expect("second batch");
    let waited = time(next).duration_since(time(delay)).unwrap();
    assert!(waited >= Duration::from_millis(950), "delay honoured: {waited:?}");
    let draining_3 = replica_event(&events, "3", "draining", since).unwrap();
    assert!(draining_3 > next["seq"].as_u64().unwrap(), "replica 3 left rotation only in batch 2");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn start_first_rolling_under_load_keeps_full_capacity() {
    let agent = four_replicas().await;
    let load = Load::keepalive(16).target(agent.listen("web")).start();
    eventually("load is flowing", Duration::from_secs(10), || load.completed() > 200).await;
    let since = agent.events("web").await.last().and_then(|e| e["seq"].as_u64()).unwrap_or(0);

    let sampler = Sampler::start(&agent, "web", 4);
    let body = json!({"env": {"VERSION": "v2"}, "parallelism": 2, "order": "start-first"});
    let status = agent.op("web", "rolling", body, OP).await;
    let (_, min_good, max_total) = sampler.finish().await;
    let report = load.stop().await;

    assert_eq!(outcome(&status).0, "succeeded", "{status}");
    assert_eq!(report.failed, 0, "{:?}", report.errors);
    assert!(min_good >= 4, "start-first never drops below 4 serving replicas (saw {min_good})");
    assert_eq!(max_total, 6, "parallelism 2: at most two extra replicas at once");
    let rs = replicas(&status, "blue");
    assert_eq!(rs.len(), 4);
    assert!(rs.iter().all(|r| r["revision"] == 2), "{rs:?}");
    let events = agent.events("web").await;
    let new_serving = replica_event(&events, "5", "serving", since).expect("replica 5 served");
    let old_draining = replica_event(&events, "1", "draining", since).expect("replica 1 drained");
    assert!(new_serving < old_draining, "start-first: the new replica serves before the old one drains");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bad_rolling_release_rolls_back_or_pauses_and_resumes() {
    let svc = Svc::new("web").replicas(4).set("health", "deadline", "\"2s\"");
    let agent = Agent::process().service(svc).start().await;
    agent.op("web", "deploy", json!({}), OP).await;
    let load = Load::keepalive(8).target(agent.listen("web")).start();
    eventually("load is flowing", Duration::from_secs(10), || load.completed() > 100).await;

    let bad =
        json!({"env": {"VERSION": "v2", "UNHEALTHY": "1"}, "failure_action": "rollback", "parallelism": 2});
    let status = agent.op("web", "rolling", bad, OP).await;
    assert_eq!(outcome(&status).0, "rolled-back", "{status}");
    let rs = replicas(&status, "blue");
    assert_eq!(rs.len(), 4, "{rs:?}");
    assert!(rs.iter().all(|r| r["revision"] == 1), "every replica back on revision 1: {rs:?}");

    let since = agent.events("web").await.last().and_then(|e| e["seq"].as_u64()).unwrap_or(0);
    let bad =
        json!({"env": {"VERSION": "v3", "UNHEALTHY": "1"}, "failure_action": "pause", "parallelism": 1});
    let status = agent.op("web", "rolling", bad, OP).await;
    let (result, message) = outcome(&status);
    assert_eq!(result, "paused", "{status}");
    assert!(message.contains("after batch 1") && message.contains("--resume"), "{message}");
    let events = agent.events("web").await;
    let batches = events
        .iter()
        .filter(|e| e["seq"].as_u64() > Some(since) && e["type"] == "phase" && e["phase"] == "replacing")
        .count();
    assert_eq!(batches, 1, "the paused update stopped after its first batch of four");

    let fixed = json!({"resume": true, "env": {"UNHEALTHY": "0"}});
    let status = agent.op("web", "rolling", fixed, OP).await;
    assert_eq!(outcome(&status).0, "succeeded", "{status}");
    let rs = replicas(&status, "blue");
    assert_eq!(rs.len(), 4, "{rs:?}");
    let rev = rs[0]["revision"].clone();
    assert!(rs.iter().all(|r| r["revision"] == rev && r["revision"].as_u64() > Some(1)), "{rs:?}");
    let report = load.stop().await;
    assert_eq!(report.failed, 0, "{:?}", report.errors);
    assert!(report.version("v3") > 0, "the resumed release serves");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn manual_drain_update_enable_walkthrough_loses_nothing() {
    let agent = Agent::process().service(Svc::new("web").replicas(2)).start().await;
    agent.op("web", "deploy", json!({}), OP).await;
    let load = Load::keepalive(8).target(agent.listen("web")).start();
    eventually("load is flowing", Duration::from_secs(10), || load.completed() > 100).await;

    let s = agent.op("web", "replicas/2/drain", json!({}), OP).await;
    assert_eq!(outcome(&s).0, "succeeded", "{s}");
    assert_eq!(replicas(&s, "blue")[1]["state"], "out");
    let s = agent.op("web", "replicas/2/update", json!({"env": {"VERSION": "v2"}}), OP).await;
    assert_eq!(outcome(&s).0, "succeeded", "{s}");
    let r2 = &replicas(&s, "blue")[1];
    assert_eq!((r2["state"].as_str(), r2["health"].as_str()), (Some("out"), Some("healthy")), "{r2}");
    let before = load.stop().await;
    assert_eq!(before.failed, 0, "{:?}", before.errors);
    assert_eq!(before.version("v2"), 0, "no request reached the replica while it was out");

    let load = Load::keepalive(8).target(agent.listen("web")).start();
    let s = agent.op("web", "replicas/2/enable", json!({}), OP).await;
    assert_eq!(outcome(&s).0, "succeeded", "{s}");
    let after = load.completed();
    eventually("traffic after enable", Duration::from_secs(10), || load.completed() > after + 200).await;
    let report = load.stop().await;
    assert_eq!(report.failed, 0, "{:?}", report.errors);
    assert!(report.version("v2") > 0 && report.version("v1") > 0, "{:?}", report.by_version);

    let (code, body) = agent.api_post("/v1/services/web/replicas/9/drain", json!({})).await.unwrap();
    assert_eq!(code, 404, "{body}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_canary_with_errors_is_aborted_at_its_first_step() {
    let agent = Agent::process().service(Svc::new("web").replicas(2)).start().await;
    agent.op("web", "deploy", json!({}), OP).await;
    agent.op("web", "deploy", json!({"env": {"VERSION": "v2", "ERROR_RATE": "0.05"}}), OP).await;
    let load = Load::keepalive(8).target(agent.listen("web")).max_duration(Duration::from_secs(30)).start();
    let canary = json!({"steps": [10, 50], "interval": "2s", "max_error_rate": 0.01, "promote": true});
    let status = agent.op("web", "canary", canary, OP).await;
    let report = load.stop().await;

    let (result, message) = outcome(&status);
    assert_eq!(result, "failed", "{status}");
    assert!(message.contains("at 10%") && message.contains("error rate"), "{message}");
    assert_eq!(status["active"], "blue");
    assert_eq!(status["weights"]["blue"], 100);
    assert!(replicas(&status, "green").is_empty(), "the canary color is removed");
    let events = agent.events("web").await;
    assert!(
        !events.iter().any(|e| e["type"] == "switched" && e["weights"]["green"] == 50),
        "never reached 50%"
    );
    assert!(report.version("v2") > 0, "the canary did take traffic");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_canary_with_too_few_requests_is_not_judged_healthy() {
    let agent = Agent::process().service(Svc::new("web")).start().await;
    agent.op("web", "deploy", json!({}), OP).await;
    agent.op("web", "deploy", json!({"env": {"VERSION": "v2"}}), OP).await;
    // No load at all: the step waits one more interval, then fails.
    let canary = json!({"steps": [10], "interval": "500ms", "min_requests": 50, "promote": true});
    let status = agent.op("web", "canary", canary, OP).await;
    let (result, message) = outcome(&status);
    assert_eq!(result, "failed", "{status}");
    assert!(message.contains("min_requests 50"), "{message}");
    assert_eq!(status["active"], "blue");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_healthy_canary_steps_to_100_and_is_promoted() {
    let agent = Agent::process().service(Svc::new("web").replicas(2)).start().await;
    agent.op("web", "deploy", json!({}), OP).await;
    agent.op("web", "deploy", json!({"env": {"VERSION": "v2"}}), OP).await;
    let load = Load::keepalive(8).target(agent.listen("web")).start();
    let canary = json!({"steps": [10, 50, 100], "interval": "1s", "max_error_rate": 0.01, "max_p99": "500ms", "promote": true});
    let status = agent.op("web", "canary", canary, OP).await;
    let report = load.stop().await;

    assert_eq!(outcome(&status).0, "succeeded", "{status}");
    assert_eq!(status["active"], "green");
    assert_eq!(report.failed, 0, "{:?}", report.errors);
    let steps: Vec<u64> = agent
        .events("web")
        .await
        .iter()
        .filter(|e| e["type"] == "switched")
        .filter_map(|e| e["weights"]["green"].as_u64())
        .collect();
    assert!(steps.windows(3).any(|w| w == [10, 50, 100]), "weights stepped 10, 50, 100: {steps:?}");
}
