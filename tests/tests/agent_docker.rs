//! The agent end to end on the Docker runtime: real engine, images built
//! locally (`examples/scripts/build-websample-image.sh`), ports published on
//! 127.0.0.1. With `BG_DOCKER_TESTS=1` a missing engine fails these tests.

use bg_tests::agent::{unique_service, Agent, RunningAgent, Svc};
use bg_tests::docker::docker_with_images;
use bg_tests::load::Load;
use bg_tests::status::outcome;
use bg_tests::wait::eventually;
use serde_json::{json, Value};
use std::time::{Duration, Instant, SystemTime};

const OP: Duration = Duration::from_secs(90);

fn containers(service: &str) -> Vec<String> {
    let out = std::process::Command::new("docker")
        .args(["ps", "-a", "--format", "{{.Names}}", "--filter", &format!("label=bg.service={service}")])
        .output()
        .expect("docker ps");
    String::from_utf8_lossy(&out.stdout).split_whitespace().map(String::from).collect()
}

fn at(event: &Value) -> SystemTime {
    humantime::parse_rfc3339(event["at"].as_str().expect("event time")).expect("RFC 3339")
}

async fn docker_agent(name: &str, svc: Svc) -> Option<RunningAgent> {
    if !docker_with_images(name, &["v1", "v2"]) {
        return None;
    }
    Some(Agent::docker().service(svc).start().await)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn docker_deploy_and_promote_under_load_loses_nothing() {
    let name = unique_service("web");
    let Some(agent) = docker_agent("docker_deploy_and_promote", Svc::new(&name).replicas(2)).await else {
        return;
    };
    let first = agent.op(&name, "deploy", json!({}), OP).await;
    assert_eq!(outcome(&first).0, "succeeded", "{first}\n{}", agent.log());
    assert_eq!(containers(&name).len(), 2);
    let blue: Vec<String> = agent.runtime_ids(&name, "blue").await;

    let load = Load::keepalive(16).target(agent.listen(&name)).start();
    eventually("load is flowing", Duration::from_secs(10), || load.completed() > 200).await;
    let v2 = json!({"image": "websample:v2", "env": {"VERSION": "v2"}, "promote": true});
    let status = agent.op(&name, "deploy", v2, OP).await;
    assert_eq!(outcome(&status).0, "succeeded", "{status}");
    let after = load.completed();
    eventually("requests after the promote", Duration::from_secs(10), || load.completed() > after + 200)
        .await;
    let report = load.stop().await;

    assert_eq!(report.failed, 0, "{:?}", report.errors);
    assert!(report.version("v1") > 0 && report.version("v2") > 0, "{:?}", report.by_version);
    assert_eq!(status["active"], "green");
    let left = containers(&name);
    assert_eq!(left.len(), 2, "only green remains: {left:?}");
    assert!(blue.iter().all(|b| !left.contains(b)), "blue containers removed: {left:?}");
    assert_eq!(status["colors"]["green"]["spec"]["image"], "websample:v2");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn docker_bad_release_fails_by_deadline_and_its_containers_are_gone() {
    let name = unique_service("bad");
    let svc = Svc::new(&name).set("health", "deadline", "\"3s\"");
    let Some(agent) = docker_agent("docker_bad_release", svc).await else { return };
    agent.op(&name, "deploy", json!({}), OP).await;
    let load = Load::keepalive(4).target(agent.listen(&name)).start();
    eventually("load is flowing", Duration::from_secs(10), || load.completed() > 50).await;
    let started = Instant::now();
    let bad = json!({"image": "websample:v2", "env": {"VERSION": "v2", "UNHEALTHY": "1"}, "promote": true});
    let status = agent.op(&name, "deploy", bad, OP).await;
    let took = started.elapsed();
    let report = load.stop().await;

    let (result, message) = outcome(&status);
    assert_eq!(result, "failed", "{status}");
    assert!(message.contains("not healthy within 3s"), "{message}");
    assert!(
        message.contains("last log lines") && message.contains("websample"),
        "the app's own output is quoted: {message}"
    );
    assert!(took >= Duration::from_millis(2900), "{took:?}");
    assert_eq!(status["active"], "blue");
    assert_eq!(containers(&name).len(), 1, "the bad release's containers are removed");
    assert_eq!(report.failed, 0, "{:?}", report.errors);
    assert_eq!(report.version("v2"), 0);

    // pull = never with an image that does not exist is a clear error.
    let missing = agent.op(&name, "deploy", json!({"image": "websample:does-not-exist"}), OP).await;
    let (result, message) = outcome(&missing);
    assert_eq!(result, "failed");
    assert!(message.contains("websample:does-not-exist") && message.contains("never"), "{message}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn docker_app_ignoring_sigterm_is_killed_after_stop_grace() {
    let name = unique_service("stubborn");
    let svc = Svc::new(&name).env("IGNORE_SIGTERM", "1").set("", "stop_grace", "\"2s\"");
    let Some(agent) = docker_agent("docker_ignore_sigterm", svc).await else { return };
    agent.op(&name, "deploy", json!({}), OP).await;
    let v2 =
        json!({"image": "websample:v2", "env": {"VERSION": "v2", "IGNORE_SIGTERM": "0"}, "promote": true});
    let status = agent.op(&name, "deploy", v2, OP).await;
    assert_eq!(outcome(&status).0, "succeeded", "{status}");

    let events = agent.events(&name).await;
    let drained = events.iter().find(|e| e["type"] == "drained").expect("drain event");
    let stopped = events
        .iter()
        .find(|e| e["type"] == "replica" && e["state"] == "stopped" && e["color"] == "blue")
        .expect("blue stopped event");
    assert!(stopped["reason"].as_str().unwrap().contains("killed"), "{stopped}");
    let took = at(stopped).duration_since(at(drained)).unwrap();
    assert!(
        took >= Duration::from_millis(1900) && took < Duration::from_secs(8),
        "stop took {took:?}, grace 2s"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn docker_old_color_is_stopped_only_after_in_flight_requests_finished() {
    let name = unique_service("slow");
    let Some(agent) = docker_agent("docker_sigterm_after_inflight", Svc::new(&name)).await else { return };
    agent.op(&name, "deploy", json!({}), OP).await;
    let slow = Load::keepalive(1).target(agent.listen(&name)).path("/sleep/2").max_requests(1).start();
    let proxy_inflight = || async {
        let s = agent.status(&name).await;
        s["colors"]["blue"]["replicas"][0]["inflight"].as_u64().unwrap_or(0)
    };
    let deadline = Instant::now() + Duration::from_secs(10);
    while proxy_inflight().await == 0 {
        assert!(Instant::now() < deadline, "slow request never in flight");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let v2 = json!({"image": "websample:v2", "env": {"VERSION": "v2"}, "promote": true});
    let status = agent.op(&name, "deploy", v2, OP).await;
    assert_eq!(outcome(&status).0, "succeeded", "{status}");
    let report = slow.stop().await;
    assert_eq!((report.ok, report.version("v1")), (1, 1), "{:?}", report.errors);

    let events = agent.events(&name).await;
    let drained = events.iter().find(|e| e["type"] == "drained").expect("drain event");
    assert!(drained["finished"].as_u64().unwrap() >= 1 && drained["cut"] == 0, "{drained}");
    let stopped =
        events.iter().find(|e| e["type"] == "replica" && e["state"] == "stopped").expect("stop event");
    assert!(drained["seq"].as_u64() < stopped["seq"].as_u64(), "stop came after the drain");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn docker_image_healthcheck_must_pass_too() {
    let name = unique_service("hc");
    if !docker_with_images("docker_image_healthcheck", &["v1-hc"]) {
        return;
    }
    // The agent's own check is a TCP connect, which an UNHEALTHY=1 app
    // passes; only the image's HEALTHCHECK (GET /healthz) can fail it.
    let svc = Svc::new(&name)
        .image("websample:v1-hc")
        .set("health", "kind", "\"tcp\"")
        .set("health", "deadline", "\"8s\"");
    let Some(agent) = docker_agent("docker_image_healthcheck", svc).await else { return };
    let good = agent.op(&name, "deploy", json!({}), OP).await;
    assert_eq!(outcome(&good).0, "succeeded", "{good}");
    let bad = agent
        .op(&name, "deploy", json!({"env": {"VERSION": "v2", "UNHEALTHY": "1"}, "promote": true}), OP)
        .await;
    let (result, message) = outcome(&bad);
    assert_eq!(result, "failed", "the image's HEALTHCHECK kept it out: {bad}");
    assert!(message.contains("not healthy within 8s"), "{message}");
    assert_eq!(bad["active"], "blue");
}
