//! The agent end to end on the swarm runtime: a single-node Swarm on the
//! machine's engine (made by the test and left as found, see
//! `bg_tests::swarm`), each color a Swarm service of websample tasks that
//! the proxy reaches one by one on a task network the test creates. With
//! `BG_DOCKER_TESTS=1` a missing engine or swarm fails these tests.

use bg_tests::agent::{unique_service, Agent, RunningAgent, Svc};
use bg_tests::load::Load;
use bg_tests::status::{outcome, replicas};
use bg_tests::swarm::{service_label, services, task_containers, SwarmGuard};
use bg_tests::wait::eventually;
use serde_json::{json, Value};
use std::time::Duration;

/// Longest wait for one operation: Swarm schedules tasks in seconds.
const OP: Duration = Duration::from_secs(120);

/// A swarm, a task network and an agent serving `svc`; `None` when Docker
/// tests do not run here. Drop the agent before the guard (declaration
/// order does it): the services go before the network and the swarm.
async fn swarm_agent(test: &str, svc: Svc) -> Option<(SwarmGuard, RunningAgent)> {
    let guard = SwarmGuard::acquire(test, &["v1", "v2"])?;
    let agent = Agent::swarm(guard.network()).service(svc).start().await;
    Some((guard, agent))
}

/// The addresses the proxy forwards to for one color.
fn addrs(status: &Value, color: &str) -> Vec<String> {
    replicas(status, color).iter().filter_map(|r| r["addr"].as_str().map(String::from)).collect()
}

fn all_healthy_serving(status: &Value, color: &str, n: usize) -> bool {
    let r = replicas(status, color);
    r.len() == n && r.iter().all(|r| r["health"] == "healthy" && r["state"] == "serving")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn swarm_deploy_and_promote_under_load_loses_nothing() {
    let name = unique_service("sw");
    let Some((_swarm, agent)) = swarm_agent("swarm_deploy_and_promote", Svc::new(&name).replicas(2)).await
    else {
        return;
    };
    let first = agent.op(&name, "deploy", json!({}), OP).await;
    assert_eq!(outcome(&first).0, "succeeded", "{first}\n{}", agent.log());
    assert_eq!(services(&name), vec![format!("bg-{name}-blue")]);
    assert_eq!(task_containers(&format!("bg-{name}-blue")).len(), 2);
    // Each task by its own address, never a VIP.
    let blue = addrs(&first, "blue");
    assert_eq!(blue.len(), 2, "{first}");
    assert_ne!(blue[0], blue[1]);
    eventually("the traffic labels are written", Duration::from_secs(10), || {
        service_label(&format!("bg-{name}-blue"), "bg.active").as_deref() == Some("blue")
    })
    .await;

    let load = Load::keepalive(16).target(agent.listen(&name)).start();
    eventually("load is flowing", Duration::from_secs(10), || load.completed() > 200).await;
    let v2 = json!({"image": "websample:v2", "env": {"VERSION": "v2"}, "promote": true});
    let status = agent.op(&name, "deploy", v2, OP).await;
    assert_eq!(outcome(&status).0, "succeeded", "{status}\n{}", agent.log());
    let after = load.completed();
    eventually("requests after the promote", Duration::from_secs(10), || load.completed() > after + 200)
        .await;
    let report = load.stop().await;

    assert_eq!(report.failed, 0, "{:?}", report.errors);
    assert!(report.version("v1") > 0 && report.version("v2") > 0, "{:?}", report.by_version);
    assert_eq!(status["active"], "green");
    eventually("only green's service remains", Duration::from_secs(30), || {
        services(&name) == vec![format!("bg-{name}-green")]
    })
    .await;
    let green = format!("bg-{name}-green");
    assert_eq!(service_label(&green, "bg.revision").as_deref(), Some("2"));
    eventually("green is the active color in Swarm", Duration::from_secs(10), || {
        service_label(&green, "bg.active").as_deref() == Some("green")
            && service_label(&green, "bg.weights").as_deref() == Some("0/100")
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn swarm_canary_with_errors_is_aborted_and_rollback_returns() {
    let name = unique_service("sw");
    let Some((_swarm, agent)) = swarm_agent("swarm_canary_and_rollback", Svc::new(&name).replicas(2)).await
    else {
        return;
    };
    agent.op(&name, "deploy", json!({}), OP).await;
    let bad = json!({"image": "websample:v2", "env": {"VERSION": "v2", "ERROR_RATE": "0.05"}});
    let deployed = agent.op(&name, "deploy", bad, OP).await;
    assert_eq!(outcome(&deployed).0, "succeeded", "{deployed}\n{}", agent.log());
    let load = Load::keepalive(8).target(agent.listen(&name)).max_duration(Duration::from_secs(60)).start();
    let canary = json!({"steps": [10, 50], "interval": "2s", "max_error_rate": 0.01, "promote": true});
    let status = agent.op(&name, "canary", canary, OP).await;
    let report = load.stop().await;
    let (result, message) = outcome(&status);
    assert_eq!(result, "failed", "{status}");
    assert!(message.contains("at 10%") && message.contains("error rate"), "{message}");
    assert_eq!(status["active"], "blue");
    assert_eq!(status["weights"]["blue"], 100);
    assert!(report.version("v2") > 0, "the canary did take traffic");
    eventually("the canary's service is gone", Duration::from_secs(30), || {
        services(&name) == vec![format!("bg-{name}-blue")]
    })
    .await;

    // A good release, promoted; then rollback to v1.
    let v2 = json!({"image": "websample:v2", "env": {"VERSION": "v2"}, "promote": true});
    let promoted = agent.op(&name, "deploy", v2, OP).await;
    assert_eq!(promoted["active"], "green", "{promoted}");
    let load = Load::keepalive(8).target(agent.listen(&name)).start();
    eventually("load is flowing", Duration::from_secs(10), || load.completed() > 100).await;
    let back = agent.op(&name, "rollback", json!({}), OP).await;
    assert_eq!(outcome(&back).0, "succeeded", "{back}\n{}", agent.log());
    let after = load.completed();
    eventually("requests after the rollback", Duration::from_secs(10), || load.completed() > after + 100)
        .await;
    let report = load.stop().await;
    assert_eq!(report.failed, 0, "{:?}", report.errors);
    assert_eq!(back["active"], "blue");
    assert_eq!(back["colors"]["blue"]["spec"]["env"]["VERSION"], "v1", "{back}");
    let (ok, body) = get(&agent, &name).await;
    assert!(ok && body.trim() == "v1", "{body}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn swarm_killed_task_is_rescheduled_and_back_in_rotation() {
    let name = unique_service("sw");
    let Some((_swarm, agent)) = swarm_agent("swarm_killed_task", Svc::new(&name).replicas(2)).await else {
        return;
    };
    let first = agent.op(&name, "deploy", json!({}), OP).await;
    assert_eq!(outcome(&first).0, "succeeded", "{first}\n{}", agent.log());
    let containers = task_containers(&format!("bg-{name}-blue"));
    assert_eq!(containers.len(), 2);
    let killed = std::process::Command::new("docker")
        .args(["kill", &containers[0]])
        .stdout(std::process::Stdio::null())
        .status()
        .unwrap();
    assert!(killed.success());

    // The agent sees the task exit and takes the task Swarm put in its
    // slot, which joins the rotation through its health checks.
    let replaced = |events: &[Value]| {
        events.iter().any(|e| e["message"].as_str().is_some_and(|m| m.contains("exited while serving")))
    };
    let deadline = tokio::time::Instant::now() + OP;
    while !replaced(&agent.events(&name).await) {
        assert!(tokio::time::Instant::now() < deadline, "no replacement\n{}", agent.log());
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let status = agent
        .wait_status(&name, "both tasks in rotation again", OP, |s| all_healthy_serving(s, "blue", 2))
        .await;
    assert_eq!(status["active"], "blue");
    // Both tasks take traffic again, none fails.
    let load = Load::keepalive(8).target(agent.listen(&name)).max_requests(400).start();
    eventually("load ends", Duration::from_secs(30), || load.finished()).await;
    let report = load.stop().await;
    assert_eq!(report.failed, 0, "{:?}", report.errors);
    let now = task_containers(&format!("bg-{name}-blue"));
    assert_eq!(now.len(), 2, "Swarm replaced the killed task: {now:?}");
    assert!(!now.contains(&containers[0]), "the killed container is gone: {now:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn swarm_restarted_agent_serves_the_color_swarm_keeps() {
    let name = unique_service("sw");
    let Some((_swarm, mut agent)) = swarm_agent("swarm_restarted_agent", Svc::new(&name).replicas(2)).await
    else {
        return;
    };
    agent.op(&name, "deploy", json!({}), OP).await;
    // A candidate on green that is not promoted: the newest revision is
    // not the one that serves.
    let v2 = json!({"image": "websample:v2", "env": {"VERSION": "v2"}});
    let candidate = agent.op(&name, "deploy", v2, OP).await;
    assert_eq!(outcome(&candidate).0, "succeeded", "{candidate}");
    eventually("the labels say blue", Duration::from_secs(10), || {
        service_label(&format!("bg-{name}-green"), "bg.active").as_deref() == Some("blue")
    })
    .await;

    // A plain restart keeps its state file.
    agent.stop();
    agent.restart().await;
    let s = agent.wait_status(&name, "blue serving again", OP, |s| all_healthy_serving(s, "blue", 2)).await;
    assert_eq!(s["active"], "blue");
    assert_eq!(get(&agent, &name).await, (true, "v1\n".to_string()));

    // An agent with no state of its own (a new node's, or a lost disk)
    // reads the active color back from Swarm's labels.
    agent.stop();
    std::fs::remove_dir_all(agent.state_dir()).unwrap();
    agent.restart().await;
    let s = agent.wait_status(&name, "blue adopted", OP, |s| all_healthy_serving(s, "blue", 2)).await;
    assert_eq!(s["active"], "blue", "{s}\n{}", agent.log());
    assert_eq!(get(&agent, &name).await, (true, "v1\n".to_string()));
    let events = agent.events(&name).await;
    assert!(
        events
            .iter()
            .any(|e| e["message"].as_str().is_some_and(|m| m.contains("the active color the runtime keeps"))),
        "{events:?}"
    );
    eventually("the unpromoted green is removed", Duration::from_secs(30), || {
        services(&name) == vec![format!("bg-{name}-blue")]
    })
    .await;
}

/// One GET / through the agent's proxy: (2xx, body).
async fn get(agent: &RunningAgent, service: &str) -> (bool, String) {
    let resp = bg_tests::api::raw(bg_tests::api::Target::Tcp(agent.listen(service)), "GET", "/", &[], "")
        .await
        .unwrap_or_else(|e| panic!("GET /: {e}"));
    ((200..300).contains(&resp.status), resp.text())
}
