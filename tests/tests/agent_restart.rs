//! Restarting or upgrading the agent loses no request: ten restarts under
//! continuous load, once with socket activation (the sockets outlive the
//! process, as under systemd) and once by handoff (a new agent process
//! takes the sockets over from the running one). Also the systemd
//! notifications (READY only once routes are healthy, watchdog pings) and
//! the handoff's refusals and aborts.

use bg_tests::agent::{Agent, RunningAgent, Svc};
use bg_tests::load::{Load, LoadHandle};
use bg_tests::status::outcome;
use bg_tests::wait::eventually;
use serde_json::{json, Value};
use std::os::unix::net::UnixDatagram;
use std::time::{Duration, Instant};

const OP: Duration = Duration::from_secs(60);
const RESTARTS: usize = 10;

/// Keep-alive clients in tight loops plus a steady stream of fresh
/// connections: both ways a restart could lose a request.
fn steady_load(agent: &RunningAgent) -> (LoadHandle, LoadHandle) {
    let bound = Duration::from_secs(240);
    let keepalive = Load::keepalive(6).target(agent.listen("web")).max_duration(bound).start();
    let fresh = Load::rate(100).fresh_connections().target(agent.listen("web")).max_duration(bound).start();
    (keepalive, fresh)
}

/// Runtime ids of the active color's replicas, sorted.
async fn serving_replicas(agent: &RunningAgent) -> Vec<String> {
    let mut ids = agent.runtime_ids("web", agent.status("web").await["active"].as_str().unwrap_or("")).await;
    ids.sort();
    ids
}

/// Ten restarts under load, each one waiting for requests to flow again;
/// then check that nothing failed and that the replicas were adopted, not
/// restarted.
async fn restart_ten_times_under_load(agent: &mut RunningAgent, restart: &str) {
    agent.op("web", "deploy", json!({}), OP).await;
    let replicas = serving_replicas(agent).await;
    assert_eq!(replicas.len(), 2);
    let (keepalive, fresh) = steady_load(agent);
    eventually("load is flowing", Duration::from_secs(10), || keepalive.completed() > 200).await;
    let first_pid = agent.pid();
    for round in 0..RESTARTS {
        let started = Instant::now();
        match restart {
            "handover" => agent.handover().await,
            _ => {
                let status = agent.stop();
                assert!(status.success(), "agent exit status {status}");
                agent.restart().await;
            }
        }
        let took = started.elapsed();
        let (k, f) = (keepalive.completed(), fresh.completed());
        eventually("requests flow after the restart", Duration::from_secs(20), || {
            keepalive.completed() > k + 300 && fresh.completed() > f + 20
        })
        .await;
        println!("{restart} {round}: {took:?}, {} failed so far", keepalive.failed() + fresh.failed());
    }
    assert_ne!(agent.pid(), first_pid);
    let (keepalive, fresh) = (keepalive.stop().await, fresh.stop().await);
    println!(
        "{restart}: keep-alive {} requests, fresh connections {} requests, p99 {:?} / {:?}",
        keepalive.total(),
        fresh.total(),
        keepalive.p99(),
        fresh.p99()
    );
    assert_eq!(keepalive.failed, 0, "keep-alive clients lost requests: {:?}", keepalive.errors);
    assert_eq!(fresh.failed, 0, "fresh connections lost requests: {:?}", fresh.errors);
    assert!(keepalive.total() > 2000 && fresh.total() > 200, "too little load to prove anything");
    assert_eq!(serving_replicas(agent).await, replicas, "the replicas were adopted, not replaced");

    // The last agent runs operations as usual.
    let s = agent.op("web", "deploy", json!({"env": {"VERSION": "v2"}, "promote": true}), OP).await;
    assert_eq!(outcome(&s).0, "succeeded", "{s}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_socket_activated_restarts_under_load_lose_nothing() {
    let mut agent = Agent::process().socket_activated().service(Svc::new("web").replicas(2)).start().await;
    restart_ten_times_under_load(&mut agent, "stop-start").await;
    assert!(agent.log().contains("using inherited listening sockets"), "{}", agent.log());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_handovers_to_a_new_agent_process_under_load_lose_nothing() {
    let mut agent = Agent::process().service(Svc::new("web").replicas(2)).start().await;
    restart_ten_times_under_load(&mut agent, "handover").await;
    let log = agent.log();
    assert_eq!(log.matches("handed the listeners over to the new agent").count(), RESTARTS, "{log}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_handover_is_refused_while_an_operation_runs_and_the_old_agent_carries_on() {
    // A release that never gets healthy keeps its deploy running until the
    // deadline.
    let svc = Svc::new("web").replicas(1).set("health", "deadline", "\"8s\"");
    let mut agent = Agent::process().service(svc).start().await;
    agent.op("web", "deploy", json!({}), OP).await;
    let (202, _) =
        agent.api_post("/v1/services/web/deploy", json!({"env": {"UNHEALTHY": "1"}})).await.unwrap()
    else {
        panic!("deploy not accepted")
    };
    let config = agent.config_path().to_path_buf();
    let mut second = agent.spawn_process(&config);
    let status = tokio::task::spawn_blocking(move || second.wait()).await.unwrap().expect("wait");
    assert!(!status.success(), "the second agent should give up");
    let log = agent.log();
    assert!(log.contains("refused to hand over"), "{log}");
    assert!(log.contains("busy with operation"), "the refusal names the running operation: {log}");

    // The first agent still serves and finishes its operation.
    let s = agent.wait_idle("web", OP).await;
    assert_eq!(outcome(&s).0, "failed", "{s}");
    let load = Load::keepalive(2).target(agent.listen("web")).max_requests(50).start();
    eventually("the old agent serves", Duration::from_secs(10), || load.finished()).await;
    assert_eq!(load.stop().await.failed, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn when_the_new_agent_dies_mid_handover_the_old_one_unfreezes_and_carries_on() {
    let mut agent = Agent::process().service(Svc::new("web").replicas(1)).start().await;
    agent.op("web", "deploy", json!({}), OP).await;
    let (keepalive, _) = steady_load(&agent);
    eventually("load is flowing", Duration::from_secs(10), || keepalive.completed() > 100).await;

    // Same state directory, but a Docker engine that is not there: the new
    // agent takes the sockets over, then fails before it serves.
    let good = std::fs::read_to_string(agent.config_path()).unwrap();
    let broken = good
        .replace("kind = \"process\"", "kind = \"docker\"\ndocker_host = \"unix:///nonexistent/docker.sock\"")
        .replace("[services.web]\n", "[services.web]\nimage = \"websample:v1\"\n");
    let broken_path = agent.dir().join("broken.toml");
    std::fs::write(&broken_path, broken).unwrap();
    let mut second = agent.spawn_process(&broken_path);
    let status = tokio::task::spawn_blocking(move || second.wait()).await.unwrap().expect("wait");
    assert!(!status.success(), "the broken agent must fail");
    assert!(agent.log().contains("taking over from the running agent"), "{}", agent.log());
    eventually("the old agent notices", Duration::from_secs(10), || {
        agent.log().contains("handover did not complete")
    })
    .await;

    let k = keepalive.completed();
    eventually("still serving", Duration::from_secs(10), || keepalive.completed() > k + 100).await;
    let s = agent.op("web", "deploy", json!({"env": {"VERSION": "v2"}, "promote": true}), OP).await;
    assert_eq!(outcome(&s).0, "succeeded", "the old agent unfroze: {s}");
    let report = keepalive.stop().await;
    assert_eq!(report.failed, 0, "{:?}", report.errors);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn systemd_hears_ready_once_routes_are_healthy_and_watchdog_pings() {
    let dir = tempfile::tempdir().unwrap();
    let notify_path = dir.path().join("notify.sock");
    let notify = UnixDatagram::bind(&notify_path).unwrap();
    notify.set_read_timeout(Some(Duration::from_millis(100))).unwrap();
    // Replicas that take a while to pass their first check: READY must wait.
    let svc = Svc::new("web").replicas(2).set("health", "healthy_threshold", "5");
    let mut agent = Agent::process()
        .agent_env("NOTIFY_SOCKET", notify_path.to_str().unwrap())
        .agent_env("WATCHDOG_USEC", "200000")
        .service(svc)
        .start()
        .await;
    let first = read_until(&notify, "READY=1", Duration::from_secs(20));
    assert!(first.iter().any(|m| m.contains("READY=1")), "{first:?}");
    agent.op("web", "deploy", json!({}), OP).await;

    // Restart: the adopted replicas are checked again before READY.
    agent.stop();
    drain(&notify);
    agent.restart().await;
    let messages = read_until(&notify, "READY=1", Duration::from_secs(20));
    assert!(messages.iter().any(|m| m.contains("READY=1")), "no READY after the restart: {messages:?}");
    let status = status_over_socket(agent.socket()).await;
    let replicas =
        status["colors"][status["active"].as_str().unwrap()]["replicas"].as_array().unwrap().clone();
    assert_eq!(replicas.len(), 2);
    for r in &replicas {
        assert_eq!(r["health"], "healthy", "READY was sent before the routes were healthy: {status}");
    }

    // Watchdog pings at half the interval (100 ms): several per second.
    drain(&notify);
    let started = Instant::now();
    let mut pings = 0;
    while started.elapsed() < Duration::from_secs(1) {
        if let Some(m) = recv(&notify) {
            pings += m.matches("WATCHDOG=1").count();
        }
    }
    assert!(pings >= 5, "{pings} watchdog pings in a second");
    agent.stop();
    let stopping = read_until(&notify, "STOPPING=1", Duration::from_secs(5));
    assert!(stopping.iter().any(|m| m.contains("STOPPING=1")), "{stopping:?}");
}

async fn status_over_socket(socket: &std::path::Path) -> Value {
    match bg_tests::api::request(socket, "GET", "/v1/services/web", None).await {
        Ok((200, v)) => v,
        other => panic!("status: {other:?}"),
    }
}

fn recv(socket: &UnixDatagram) -> Option<String> {
    let mut buf = [0u8; 4096];
    socket.recv(&mut buf).ok().map(|n| String::from_utf8_lossy(&buf[..n]).into_owned())
}

/// Throw away what is queued now. Non-blocking: with pings every 100 ms
/// a blocking read with a 100 ms timeout could wait for the next one for
/// ever.
fn drain(socket: &UnixDatagram) {
    socket.set_nonblocking(true).unwrap();
    while recv(socket).is_some() {}
    socket.set_nonblocking(false).unwrap();
}

/// Notifications until one contains `wanted`, or `timeout`.
fn read_until(socket: &UnixDatagram, wanted: &str, timeout: Duration) -> Vec<String> {
    let deadline = Instant::now() + timeout;
    let mut seen = Vec::new();
    while Instant::now() < deadline {
        if let Some(m) = recv(socket) {
            let done = m.contains(wanted);
            seen.push(m);
            if done {
                break;
            }
        }
    }
    seen
}
