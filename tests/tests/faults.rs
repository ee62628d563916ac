//! Faults injected for real, under load: a serving replica killed
//! (`kill -9`, `docker kill`) and replaced by the agent; a replica that
//! keeps dying replaced with growing backoff; the Docker engine hanging or
//! refusing while traffic keeps flowing; a corrupt state file that stops
//! the agent without destroying anything.

use bg_tests::agent::{unique_service, Agent, RunningAgent, Svc};
use bg_tests::docker::docker_with_images;
use bg_tests::load::Load;
use bg_tests::relay::Relay;
use bg_tests::status::{outcome, replicas};
use bg_tests::wait::{eventually, eventually_async};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use serde_json::{json, Value};
use std::net::SocketAddr;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant, SystemTime};

const OP: Duration = Duration::from_secs(90);
/// Bound on every load in this file; they are stopped long before.
const LOAD_BOUND: Duration = Duration::from_secs(120);
/// Keep-alive clients of the kill tests. Each upstream connection to the
/// killed replica can fail at most one request (the one in flight on it,
/// or one sent before its close was seen; connects after the kill are
/// refused and retried on the other replica), and the proxy opens no more
/// of them than there are requests at once: at most this many failures.
const CLIENTS: usize = 8;

fn addr(replica: &Value) -> SocketAddr {
    replica["addr"].as_str().expect("replica addr").parse().expect("addr parses")
}

/// Whether `color` has exactly `n` replicas, all healthy and serving.
fn all_serving(status: &Value, color: &str, n: usize) -> bool {
    let r = replicas(status, color);
    r.len() == n && r.iter().all(|r| r["health"] == "healthy" && r["state"] == "serving")
}

/// For `window`, every replica of `color` stays healthy and serving (an
/// assertion over time, checked every 50 ms).
async fn stays_serving(agent: &RunningAgent, service: &str, color: &str, n: usize, window: Duration) {
    let end = Instant::now() + window;
    while Instant::now() < end {
        let s = agent.status(service).await;
        assert!(all_serving(&s, color, n), "{color} left the rotation:\n{s}\n{}", agent.log());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Show that `replica` takes requests from the proxy: slow requests
/// through the proxy are seen in flight on it.
async fn takes_traffic(agent: &RunningAgent, service: &str, color: &str, id: &str) {
    let slow = Load::keepalive(4)
        .target(agent.listen(service))
        .path("/sleep/2")
        .max_requests(4)
        .max_duration(Duration::from_secs(20))
        .start();
    eventually_async("a slow request in flight on the replacement", Duration::from_secs(10), || async {
        let s = agent.status(service).await;
        replicas(&s, color).iter().any(|r| r["id"] == id && r["inflight"].as_u64().unwrap_or(0) > 0)
    })
    .await;
    let report = slow.stop().await;
    assert_eq!(report.failed, 0, "{:?}", report.errors);
}

/// Messages the agent emitted about `service`.
async fn messages(agent: &RunningAgent, service: &str) -> Vec<Value> {
    agent.events(service).await.into_iter().filter(|e| e["type"] == "message").collect()
}

fn at(event: &Value) -> SystemTime {
    humantime::parse_rfc3339(event["at"].as_str().expect("event time")).expect("RFC 3339")
}

fn containers(service: &str) -> Vec<String> {
    let out = Command::new("docker")
        .args(["ps", "-a", "--format", "{{.Names}}", "--filter", &format!("label=bg.service={service}")])
        .output()
        .expect("docker ps");
    String::from_utf8_lossy(&out.stdout).split_whitespace().map(String::from).collect()
}

fn container_id(name: &str) -> String {
    let out =
        Command::new("docker").args(["inspect", "-f", "{{.Id}}", name]).output().expect("docker inspect");
    assert!(out.status.success(), "docker inspect {name}: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// Kill replica 1 of blue with `kill_it` under keep-alive load and check
/// that it is replaced and back in rotation, and that clients lost at most
/// the requests in flight on it.
async fn killed_replica_is_replaced(agent: &RunningAgent, service: &str, kill_it: impl FnOnce(&Value)) {
    let first = agent.op(service, "deploy", json!({}), OP).await;
    assert_eq!(outcome(&first).0, "succeeded", "{first}\n{}", agent.log());
    let victim = replicas(&first, "blue").into_iter().find(|r| r["id"] == "1").expect("replica 1");

    let load = Load::keepalive(CLIENTS).target(agent.listen(service)).max_duration(LOAD_BOUND).start();
    eventually("load is flowing", Duration::from_secs(10), || load.completed() > 200).await;
    kill_it(&victim);
    let healed = agent
        .wait_status(service, "replica 1 replaced, both serving", Duration::from_secs(60), |s| {
            all_serving(s, "blue", 2)
                && replicas(s, "blue").iter().any(|r| r["id"] == "1" && r["addr"] != victim["addr"])
        })
        .await;
    let after = load.completed();
    eventually("requests after the replacement", Duration::from_secs(20), || load.completed() > after + 500)
        .await;
    takes_traffic(agent, service, "blue", "1").await;
    let report = load.stop().await;

    eprintln!(
        "{service}: replica killed under {CLIENTS} keep-alive clients: {} of {} requests failed {:?}",
        report.failed,
        report.total(),
        report.errors
    );
    assert!(
        report.failed <= CLIENTS as u64,
        "more requests failed ({}) than were in flight on the killed replica (at most {CLIENTS}): {:?}",
        report.failed,
        report.errors
    );
    assert_eq!(healed["active"], "blue");
    assert_eq!(replicas(&healed, "blue").len(), 2, "back to `replicas`: {healed}");
    assert!(healed["operation"].is_null(), "healing is not an operation: {healed}");

    let messages = messages(agent, service).await;
    let exited = messages
        .iter()
        .find(|m| {
            m["message"].as_str().is_some_and(|t| t.contains("replica 1 of blue") && t.contains("exited"))
        })
        .unwrap_or_else(|| panic!("no event says replica 1 exited: {messages:?}"));
    assert_eq!(exited["level"], "warn");
    assert!(exited["message"].as_str().unwrap().contains("starting a replacement"), "{exited}");
    let replaced = messages
        .iter()
        .find(|m| m["message"].as_str().is_some_and(|t| t.contains("replica 1 of blue replaced")))
        .unwrap_or_else(|| panic!("no event says replica 1 is back: {messages:?}"));
    assert!(replaced["seq"].as_u64() > exited["seq"].as_u64());
    let log = agent.log();
    assert!(log.contains("starting a replacement") && log.contains("back in rotation"), "{log}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn process_replica_killed_with_sigkill_is_replaced_and_clients_lose_at_most_its_in_flight_requests() {
    let agent = Agent::process().service(Svc::new("web").replicas(2)).start().await;
    let mut killed = None;
    killed_replica_is_replaced(&agent, "web", |victim| {
        let port = addr(victim).port();
        let pids = agent.processes_with(&format!("PORT={port}"));
        assert_eq!(pids.len(), 1, "one process listens on {port}: {pids:?}");
        kill(Pid::from_raw(pids[0]), Signal::SIGKILL).expect("kill -9");
        killed = Some(pids[0]);
    })
    .await;
    let pid = killed.expect("killed");
    assert!(!agent.processes_with("BIND=127.0.0.1").contains(&pid), "the killed process is gone");
    assert_eq!(agent.processes_with("BIND=127.0.0.1").len(), 2, "two replicas run again");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn docker_replica_killed_through_the_engine_is_replaced_and_clients_lose_at_most_its_in_flight_requests(
) {
    if !docker_with_images("docker_replica_killed", &["v1"]) {
        return;
    }
    let service = unique_service("heal");
    let agent = Agent::docker().service(Svc::new(&service).replicas(2)).start().await;
    let name = format!("bg-{service}-blue-1");
    let mut before = String::new();
    killed_replica_is_replaced(&agent, &service, |_| {
        before = container_id(&name);
        let out = Command::new("docker").args(["kill", &name]).output().expect("docker kill");
        assert!(out.status.success(), "docker kill {name}: {}", String::from_utf8_lossy(&out.stderr));
    })
    .await;
    assert_ne!(container_id(&name), before, "{name} is a new container");
    let left = containers(&service);
    assert_eq!(left.len(), 2, "the killed container was removed: {left:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_that_died_while_the_agent_was_down_is_replaced_when_it_starts() {
    let mut agent = Agent::process().service(Svc::new("web").replicas(2)).start().await;
    let s = agent.op("web", "deploy", json!({}), OP).await;
    let victim = replicas(&s, "blue").into_iter().find(|r| r["id"] == "2").expect("replica 2");
    assert!(agent.stop().success());
    let port = addr(&victim).port();
    let pids = agent.processes_with(&format!("PORT={port}"));
    assert_eq!(pids.len(), 1, "one process on {port}");
    kill(Pid::from_raw(pids[0]), Signal::SIGKILL).expect("kill -9");
    eventually("the process is gone", Duration::from_secs(10), || {
        agent.processes_with(&format!("PORT={port}")).is_empty()
    })
    .await;

    agent.restart().await;
    let s = agent
        .wait_status("web", "replica 2 replaced", Duration::from_secs(30), |s| {
            all_serving(s, "blue", 2)
                && replicas(s, "blue").iter().any(|r| r["id"] == "2" && r["addr"] != victim["addr"])
        })
        .await;
    assert_eq!(replicas(&s, "blue").len(), 2, "{s}");
    let messages = messages(&agent, "web").await;
    assert!(
        messages.iter().any(|m| m["message"]
            .as_str()
            .is_some_and(|t| t.contains("gone since the agent last ran; it will be replaced"))),
        "{messages:#?}"
    );
    takes_traffic(&agent, "web", "blue", "2").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_that_keeps_dying_is_replaced_with_growing_backoff() {
    let agent = Agent::process().service(Svc::new("web").replicas(1)).start().await;
    agent.op("web", "deploy", json!({}), OP).await;
    // Kill replica 1 as soon as each replacement is healthy: four quick
    // exits in a row.
    for round in 0..4 {
        let s = agent
            .wait_status("web", "replica 1 healthy", Duration::from_secs(30), |s| all_serving(s, "blue", 1))
            .await;
        let port = addr(&replicas(&s, "blue")[0]).port();
        let pids = agent.processes_with(&format!("PORT={port}"));
        assert_eq!(pids.len(), 1, "round {round}: one process on {port}");
        kill(Pid::from_raw(pids[0]), Signal::SIGKILL).expect("kill -9");
        agent
            .wait_status("web", "a replacement on a new port", Duration::from_secs(30), |s| {
                replicas(s, "blue").iter().any(|r| addr(r).port() != port)
            })
            .await;
    }
    agent
        .wait_status("web", "the last replacement serving", Duration::from_secs(30), |s| {
            all_serving(s, "blue", 1)
        })
        .await;

    let messages = messages(&agent, "web").await;
    let text = |m: &Value| m["message"].as_str().unwrap_or("").to_string();
    let starts: Vec<&Value> =
        messages.iter().filter(|m| text(m).contains("starting a replacement")).collect();
    assert_eq!(starts.len(), 4, "{messages:#?}");
    for (i, wait) in ["1s", "2s", "4s"].iter().enumerate() {
        let want = format!("{} time(s) in a row soon after a replacement; next replacement in {wait}", i + 1);
        assert!(messages.iter().any(|m| text(m).contains(&want)), "no {want:?} in {messages:#?}");
    }
    // Each start waited at least its backoff after the previous one.
    for (i, min) in [1, 2, 4].iter().enumerate() {
        let gap = at(starts[i + 1]).duration_since(at(starts[i])).expect("events in order");
        assert!(
            gap >= Duration::from_millis(min * 1000 - 50),
            "start {} came {gap:?} after the one before",
            i + 2
        );
    }
    assert!(text(starts[3]).contains("after 3 quick exit(s) in a row"), "{}", text(starts[3]));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn docker_engine_unreachable_traffic_flows_deploys_fail_clearly_and_the_agent_recovers() {
    if !docker_with_images("docker_engine_unreachable", &["v1", "v2"]) {
        return;
    }
    let dir = tempfile::tempdir().expect("temp dir");
    let relay = Relay::start(&dir.path().join("engine.sock"), "/var/run/docker.sock".as_ref()).await;
    let service = unique_service("engine");
    let agent = Agent::docker()
        .docker_host(&relay.url())
        .runtime_key("call_timeout", "\"3s\"")
        .service(Svc::new(&service).replicas(2))
        .start()
        .await;
    let first = agent.op(&service, "deploy", json!({}), OP).await;
    assert_eq!(outcome(&first).0, "succeeded", "{first}\n{}", agent.log());

    let load = Load::keepalive(CLIENTS).target(agent.listen(&service)).max_duration(LOAD_BOUND).start();
    eventually("load is flowing", Duration::from_secs(10), || load.completed() > 200).await;

    // The engine accepts connections and never answers: far more than
    // unhealthy_threshold (2) checks of 100 ms go by.
    relay.hang().await;
    stays_serving(&agent, &service, "blue", 2, Duration::from_secs(3)).await;
    // A deploy against the hung engine fails within the call timeout, not
    // bollard's two minutes, naming the engine; status answers meanwhile.
    let started = std::time::Instant::now();
    let accepted = agent
        .api_post(&format!("/v1/services/{service}/deploy"), json!({"image": "websample:v2"}))
        .await
        .unwrap();
    assert_eq!(accepted.0, 202, "{accepted:?}");
    let asked = std::time::Instant::now();
    let s = agent.status(&service).await;
    assert!(
        asked.elapsed() < Duration::from_secs(1),
        "status waited {:?} behind the engine",
        asked.elapsed()
    );
    assert!(!s["operation"].is_null(), "{s}");
    let s = agent.wait_idle(&service, Duration::from_secs(30)).await;
    let took = started.elapsed();
    let (kind, message) = outcome(&s);
    assert_eq!(kind, "failed", "{s}");
    assert!(message.contains("did not answer in time"), "the failure names the hung engine: {message}");
    assert!(took < Duration::from_secs(15), "a hung engine held the deploy {took:?}");
    assert!(replicas(&s, "green").is_empty(), "nothing left of the failed deploy: {s}");
    eprintln!("deploy against a hung engine failed after {took:?}: {message}");

    // The engine refuses connections.
    relay.refuse().await;
    stays_serving(&agent, &service, "blue", 2, Duration::from_secs(2)).await;
    let done = load.completed();
    let out = agent.bgctl(&["deploy", &service, "--image", "websample:v2", "--env", "VERSION=v2"]);
    assert_eq!(out.code, 1, "a deploy without an engine fails: {out:?}");
    let printed = format!("{}{}", out.stdout, out.stderr);
    assert!(
        printed.contains("docker engine") && printed.contains("cannot reach the engine"),
        "the failure names the engine: {printed}"
    );
    assert!(printed.contains("engine.sock"), "and where the agent looked for it: {printed}");
    eprintln!("bgctl deploy while the engine refuses (exit {}):\n{printed}", out.code);
    let s = agent.status(&service).await;
    assert_eq!(s["active"], "blue", "{s}");
    assert!(replicas(&s, "green").is_empty(), "nothing left of the failed deploy: {s}");
    stays_serving(&agent, &service, "blue", 2, Duration::from_secs(1)).await;
    assert!(load.completed() > done, "traffic kept flowing");
    assert_eq!(load.failed(), 0, "no request failed while the engine was away");

    // The engine is back: the agent needs no restart.
    relay.resume().await;
    let out =
        agent.bgctl(&["deploy", &service, "--image", "websample:v2", "--env", "VERSION=v2", "--promote"]);
    out.assert_exit_code(0);
    let s = agent.status(&service).await;
    assert_eq!(s["active"], "green", "{s}");
    let after = load.completed();
    eventually("requests after the promote", Duration::from_secs(20), || load.completed() > after + 200)
        .await;
    let report = load.stop().await;
    assert_eq!(report.failed, 0, "{:?}", report.errors);
    assert!(report.version("v1") > 0 && report.version("v2") > 0, "{:?}", report.by_version);
    eprintln!(
        "engine away (hang 3s, refused 3s+), then back: {} requests, {} failed",
        report.total(),
        report.failed
    );
}

/// Start `bg-agent` on `config` and wait for it to exit (at most 20 s;
/// an agent still running then has not refused to start).
fn run_agent_expecting_exit(config: &std::path::Path) -> std::process::Output {
    let mut child = Command::new(bg_tests::bins::cargo_bin("bg-agent", "bg-agent"))
        .arg("--config")
        .arg(config)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn bg-agent");
    let deadline = Instant::now() + Duration::from_secs(20);
    while child.try_wait().expect("wait").is_none() {
        if Instant::now() > deadline {
            let _ = child.kill();
            let out = child.wait_with_output().expect("output");
            panic!(
                "bg-agent started on a corrupt state file\nstderr:\n{}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    child.wait_with_output().expect("output")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_corrupt_state_file_stops_the_agent_and_destroys_nothing() {
    let mut agent = Agent::process().service(Svc::new("web").replicas(1)).start().await;
    agent.op("web", "deploy", json!({}), OP).await;
    let s = agent.op("web", "deploy", json!({"env": {"VERSION": "v2"}, "promote": true}), OP).await;
    assert_eq!(outcome(&s).0, "succeeded", "{s}");
    assert!(agent.stop().success());

    let state = agent.state_dir().join("state.json");
    let prev = agent.state_dir().join("state.prev.json");
    let good = std::fs::read(&state).expect("state.json");
    let prev_before = std::fs::read(&prev).expect("state.prev.json exists after a few saves");
    serde_json::from_slice::<Value>(&prev_before).expect("the previous copy is good JSON");
    let config = agent.dir().join("agent.toml");

    let cases: [(&str, Vec<u8>); 4] = [
        ("truncated", good[..good.len() / 2].to_vec()),
        ("empty", Vec::new()),
        ("garbled", b"\0\x13{\"version\": 1, \"services\": garbage".to_vec()),
        ("not a state", br#"{"version": 1, "services": {"web": {"revision": "seven"}}}"#.to_vec()),
    ];
    for (what, bytes) in &cases {
        std::fs::write(&state, bytes).expect("corrupt state.json");
        let out = run_agent_expecting_exit(&config);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{what}: the agent refused to start: {stderr}");
        assert!(stderr.contains(&state.display().to_string()), "{what}: names the file: {stderr}");
        assert!(stderr.contains("corrupt or truncated"), "{what}: says what is wrong: {stderr}");
        assert!(
            stderr.contains(&prev.display().to_string()) && stderr.contains("copy it over"),
            "{what}: says what to do: {stderr}"
        );
        assert_eq!(
            &std::fs::read(&state).expect("state.json"),
            bytes,
            "{what}: the corrupt file is kept as is"
        );
        assert_eq!(
            std::fs::read(&prev).expect("state.prev.json"),
            prev_before,
            "{what}: previous copy intact"
        );
        assert!(
            std::os::unix::net::UnixStream::connect(agent.socket()).is_err(),
            "{what}: nothing listens on the control socket of an agent that refused to start"
        );
    }

    // What the message says to do works: the previous copy brings the
    // agent back, and it adopts the replica that kept running.
    std::fs::copy(&prev, &state).expect("restore the previous copy");
    agent.restart().await;
    let s = agent
        .wait_status("web", "the running replica adopted", Duration::from_secs(30), |s| {
            all_serving(s, "green", 1)
        })
        .await;
    assert_eq!(s["active"], "green", "{s}");
    let probe = Load::keepalive(1)
        .target(agent.listen("web"))
        .max_requests(20)
        .max_duration(Duration::from_secs(10))
        .start();
    eventually("probe requests done", Duration::from_secs(10), || {
        probe.finished() && probe.completed() == 20
    })
    .await;
    let report = probe.stop().await;
    assert_eq!((report.failed, report.version("v2")), (0, 20), "{:?}", report);
}
