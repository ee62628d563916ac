//! The agent end to end on the swarm runtime: a single-node Swarm on the
//! machine's engine (made by the test and left as found, see
//! `bg_tests::swarm`), each color a Swarm service of websample tasks that
//! the proxy reaches one by one on a task network the test creates. With
//! `BG_DOCKER_TESTS=1` a missing engine or swarm fails these tests.

use bg_tests::agent::{unique_service, Agent, RunningAgent, Svc};
use bg_tests::load::Load;
use bg_tests::status::{outcome, replicas};
use bg_tests::swarm::{acks, service_label, services, task_containers, SwarmGuard};
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

/// Two agents on this node serving the same service, as two managers'
/// agents would: each follows the traffic the other sets, a switch is
/// done only once the other serves it, and a killed agent stops holding
/// switches up after its liveness window.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn swarm_two_agents_switch_together_and_a_dead_one_stops_blocking() {
    let name = unique_service("sw");
    let Some(guard) = SwarmGuard::acquire("swarm_two_agents", &["v1", "v2"]) else { return };
    let svc = Svc::new(&name).replicas(2);
    // A long ack timeout: a switch that returns well before it was let go
    // by acknowledgements or liveness, not by the timeout.
    let fleet_agent = || Agent::swarm(guard.network()).runtime_key("swarm_ack_timeout", "\"60s\"");
    let a = fleet_agent().service(svc.clone()).start().await;
    let mut b = fleet_agent().service(svc).start().await;
    let (blue, green) = (format!("bg-{name}-blue"), format!("bg-{name}-green"));

    // A deploys; B follows by itself.
    let first = a.op(&name, "deploy", json!({}), OP).await;
    assert_eq!(outcome(&first).0, "succeeded", "{first}\n{}", a.log());
    b.wait_status(&name, "B serves blue", OP, |s| all_healthy_serving(s, "blue", 2)).await;
    assert_eq!(get(&b, &name).await, (true, "v1\n".to_string()), "{}", b.log());

    // A promotes v2 under load on both listeners.
    let load_a = Load::keepalive(6).target(a.listen(&name)).start();
    let load_b = Load::keepalive(6).target(b.listen(&name)).start();
    eventually("load is flowing", Duration::from_secs(10), || {
        load_a.completed() > 100 && load_b.completed() > 100
    })
    .await;
    let v2 = json!({"image": "websample:v2", "env": {"VERSION": "v2"}, "promote": true});
    let promoted = a.op(&name, "deploy", v2, OP).await;
    // The promote is done: B already answers with v2 and acknowledged it.
    let b_now = get(&b, &name).await;
    let seq: u64 = service_label(&green, "bg.traffic.seq").and_then(|s| s.parse().ok()).unwrap_or(0);
    let seen = acks(&green);
    assert_eq!(outcome(&promoted).0, "succeeded", "{promoted}\n{}", a.log());
    assert_eq!(b_now, (true, "v2\n".to_string()), "B did not switch before A's promote ended\n{}", b.log());
    assert!(seq > 0, "no traffic seq on {green}");
    assert_eq!(seen.len(), 2, "both agents acknowledge: {seen:?}");
    assert!(seen.values().all(|s| *s >= seq), "an agent had not acknowledged {seq}: {seen:?}");
    // And A drained blue only after B had switched (both clocks are this
    // host's; RFC 3339 in milliseconds sorts as time).
    let last_at = |events: &[Value], what: &dyn Fn(&Value) -> bool| {
        events.iter().rev().find(|e| what(e)).and_then(|e| e["at"].as_str().map(String::from))
    };
    let b_switched = last_at(&b.events(&name).await, &|e| {
        e["message"].as_str().is_some_and(|m| m.contains("another agent switched traffic: green"))
    });
    let a_drained = last_at(&a.events(&name).await, &|e| e["type"] == "phase" && e["phase"] == "draining");
    assert!(
        b_switched.is_some() && a_drained.is_some() && b_switched <= a_drained,
        "B switched at {b_switched:?}, A began draining blue at {a_drained:?}"
    );
    let (after_a, after_b) = (load_a.completed(), load_b.completed());
    eventually("requests after the promote", Duration::from_secs(10), || {
        load_a.completed() > after_a + 100 && load_b.completed() > after_b + 100
    })
    .await;
    let (report_a, report_b) = (load_a.stop().await, load_b.stop().await);
    assert_eq!(report_a.failed, 0, "A: {:?}", report_a.errors);
    assert_eq!(report_b.failed, 0, "B: {:?}\n{}", report_b.errors, b.log());
    assert!(report_b.version("v1") > 0 && report_b.version("v2") > 0, "{:?}", report_b.by_version);
    let bs = b.wait_status(&name, "B forgot blue", OP, |s| replicas(s, "blue").is_empty()).await;
    assert_eq!(bs["active"], "green", "{bs}");
    eventually("only green's service remains", Duration::from_secs(30), || {
        services(&name) == vec![green.clone()]
    })
    .await;

    // A rollback through B reaches A.
    let load_a = Load::keepalive(4).target(a.listen(&name)).start();
    eventually("load is flowing", Duration::from_secs(10), || load_a.completed() > 50).await;
    let back = b.op(&name, "rollback", json!({}), OP).await;
    assert_eq!(outcome(&back).0, "succeeded", "{back}\n{}", b.log());
    assert_eq!(
        get(&a, &name).await,
        (true, "v1\n".to_string()),
        "A did not follow the rollback\n{}",
        a.log()
    );
    let seq: u64 = service_label(&blue, "bg.traffic.seq").and_then(|s| s.parse().ok()).unwrap_or(0);
    let seen = acks(&blue);
    assert!(seq > 0 && seen.len() == 2 && seen.values().all(|s| *s >= seq), "{seq} {seen:?}");
    let after = load_a.completed();
    eventually("requests after the rollback", Duration::from_secs(10), || load_a.completed() > after + 50)
        .await;
    let report = load_a.stop().await;
    assert_eq!(report.failed, 0, "A during B's rollback: {:?}", report.errors);

    // B dies: A's next switch waits for it only until its heartbeat is
    // older than the liveness window (15 s), well before the timeout.
    b.kill9();
    let started = std::time::Instant::now();
    let v2 = json!({"image": "websample:v2", "env": {"VERSION": "v2"}, "promote": true});
    let again = a.op(&name, "deploy", v2, OP).await;
    let took = started.elapsed();
    assert_eq!(outcome(&again).0, "succeeded", "{again}\n{}", a.log());
    assert!(took < Duration::from_secs(55), "the dead agent held the promote up for {took:?}");
    let events = a.events(&name).await;
    assert!(
        !events.iter().any(|e| e["message"].as_str().is_some_and(|m| m.contains("did not acknowledge"))),
        "the dead agent was waited for until the timeout: {events:?}"
    );
    assert_eq!(get(&a, &name).await, (true, "v2\n".to_string()));
    drop(b);
    drop(a);
    drop(guard);
}

/// A live agent that does not acknowledge (frozen: its heartbeat keeps it
/// live for the liveness window, but it never answers) holds a promote up
/// for the ack timeout, then the promote goes on with a warning naming it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn swarm_switch_not_acknowledged_in_time_goes_on_with_a_warning() {
    let name = unique_service("sw");
    let Some(guard) = SwarmGuard::acquire("swarm_ack_timeout", &["v1", "v2"]) else { return };
    let svc = Svc::new(&name).replicas(1);
    let fleet_agent = || Agent::swarm(guard.network()).runtime_key("swarm_ack_timeout", "\"3s\"");
    let a = fleet_agent().service(svc.clone()).start().await;
    let b = fleet_agent().service(svc).start().await;
    let first = a.op(&name, "deploy", json!({}), OP).await;
    assert_eq!(outcome(&first).0, "succeeded", "{first}\n{}", a.log());
    b.wait_status(&name, "B serves blue", OP, |s| all_healthy_serving(s, "blue", 1)).await;
    let blue = format!("bg-{name}-blue");
    eventually("both agents acknowledge blue", Duration::from_secs(15), || acks(&blue).len() == 2).await;
    let ids: Vec<String> = acks(&blue).into_keys().collect();
    let v2 = json!({"image": "websample:v2", "env": {"VERSION": "v2"}});
    let deployed = a.op(&name, "deploy", v2, OP).await;
    assert_eq!(outcome(&deployed).0, "succeeded", "{deployed}\n{}", a.log());
    // B's heartbeat (every 5 s) is at most that old when it freezes: it
    // stays live (15 s) through the promote and its 3 s wait.

    // B freezes: its last heartbeat keeps it live for 15 s, but it never
    // acknowledges. A's switch waits the 3 s timeout, then goes on.
    let frozen = nix::unistd::Pid::from_raw(b.pid().expect("B runs") as i32);
    nix::sys::signal::kill(frozen, nix::sys::signal::Signal::SIGSTOP).expect("SIGSTOP B");
    let _thaw = Thaw(frozen);
    let started = std::time::Instant::now();
    let promoted = a.op(&name, "promote", json!({}), OP).await;
    let took = started.elapsed();
    nix::sys::signal::kill(frozen, nix::sys::signal::Signal::SIGCONT).expect("SIGCONT B");
    assert_eq!(outcome(&promoted).0, "succeeded", "{promoted}\n{}", a.log());
    assert_eq!(promoted["active"], "green");
    let events = a.events(&name).await;
    let warning = events
        .iter()
        .find(|e| e["message"].as_str().is_some_and(|m| m.contains("did not acknowledge the switch in time")))
        .unwrap_or_else(|| panic!("no warning about B: {events:?}\n{}", a.log()));
    assert_eq!(warning["level"], "warn", "{warning}");
    let named =
        ids.iter().filter(|id| warning["message"].as_str().unwrap_or("").contains(id.as_str())).count();
    assert_eq!(named, 1, "the warning names B, of the agents {ids:?}: {warning}");
    assert!(took >= Duration::from_secs(3), "the promote did not wait for B: {took:?}");
    // Thawed, B reads the labels and follows.
    b.wait_status(&name, "B follows to green", OP, |s| s["active"] == "green").await;
    assert_eq!(get(&b, &name).await, (true, "v2\n".to_string()), "{}", b.log());
    drop(b);
    drop(a);
    drop(guard);
}

/// Continues a stopped process when dropped (also when the test fails,
/// so the agent can be stopped and its objects removed).
struct Thaw(nix::unistd::Pid);

impl Drop for Thaw {
    fn drop(&mut self) {
        let _ = nix::sys::signal::kill(self.0, nix::sys::signal::Signal::SIGCONT);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn swarm_secrets_files_and_placement_reach_the_tasks() {
    let dir = tempfile::tempdir().unwrap();
    let name = unique_service("sw");
    let (svc, secret_text) = Svc::new(&name)
        .replicas(2)
        .set("", "placement", "[\"node.role==manager\"]")
        .set("", "max_replicas_per_node", "2")
        .with_secret_and_file(dir.path());
    let Some((_swarm, agent)) = swarm_agent("swarm_secrets_files", svc).await else { return };
    let status = agent.op(&name, "deploy", json!({}), OP).await;
    assert_eq!(outcome(&status).0, "succeeded", "{status}\n{}", agent.log());
    let blue = format!("bg-{name}-blue");
    let spec = |what: &str| {
        let out = std::process::Command::new("docker")
            .args(["service", "inspect", "--format", what, &blue])
            .output()
            .expect("docker service inspect");
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    };
    assert_eq!(spec("{{json .Spec.TaskTemplate.Placement.Constraints}}"), r#"["node.role==manager"]"#);
    assert_eq!(spec("{{.Spec.TaskTemplate.Placement.MaxReplicas}}"), "2");
    let secrets = spec("{{range .Spec.TaskTemplate.ContainerSpec.Secrets}}{{.File.Name}} {{.File.Mode}} {{.File.UID}};{{end}}");
    assert_eq!(
        secrets, "db_password -r-------- 1000;",
        "a Swarm secret at /run/secrets, mode 0400, owned by the user"
    );
    let configs =
        spec("{{range .Spec.TaskTemplate.ContainerSpec.Configs}}{{.File.Name}} {{.File.Mode}};{{end}}");
    assert_eq!(configs, "/etc/app/app.toml -r--r-----;", "a Swarm config at its path, mode 0440");
    // Every task has them: each answers through the proxy (round robin).
    for _ in 0..4 {
        let secret = get_at(&agent, &name, "/file/run/secrets/db_password").await;
        assert_eq!(secret, (true, secret_text.clone()));
    }
    let file = get_at(&agent, &name, "/file/etc/app/app.toml").await;
    assert_eq!(file, (true, "answer = 42\n".to_string()));
    // The secret's content is in Swarm's store, not in the agent's words.
    let events = serde_json::to_string(&agent.events(&name).await).unwrap();
    for (what, text) in [("log", agent.log()), ("status", status.to_string()), ("events", events)] {
        assert!(!text.contains(&secret_text), "the secret shows in the {what}");
    }
}

/// One GET / through the agent's proxy: (2xx, body).
async fn get(agent: &RunningAgent, service: &str) -> (bool, String) {
    get_at(agent, service, "/").await
}

/// One GET of `path` through the agent's proxy: (2xx, body).
async fn get_at(agent: &RunningAgent, service: &str, path: &str) -> (bool, String) {
    let resp = bg_tests::api::raw(bg_tests::api::Target::Tcp(agent.listen(service)), "GET", path, &[], "")
        .await
        .unwrap_or_else(|e| panic!("GET {path}: {e}"));
    ((200..300).contains(&resp.status), resp.text())
}
