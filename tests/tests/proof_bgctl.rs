//! Proof 4, through the real `bgctl`: a release whose health check fails
//! (`UNHEALTHY=1`, health deadline 3 s) fails by its deadline, `bgctl deploy
//! ... --promote` exits 1, and no request fails meanwhile.
//!
//! It needs the finished `bgctl` (exit codes from DESIGN.md); it passes
//! once that lands on main, and fails with bgctl's output before.

use bg_tests::agent::{Agent, Svc};
use bg_tests::load::Load;
use bg_tests::wait::eventually;
use serde_json::json;
use std::time::{Duration, Instant};

const OP: Duration = Duration::from_secs(60);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unhealthy_release_fails_by_its_deadline_bgctl_exits_1_and_no_request_fails() {
    let svc = Svc::new("web").replicas(2).set("health", "deadline", "\"3s\"");
    let agent = Agent::process().service(svc).start().await;
    agent.op("web", "deploy", json!({}), OP).await;
    let addr = agent.listen("web");
    let bound = Duration::from_secs(60);
    let keepalive = Load::keepalive(10).target(addr).max_duration(bound).start();
    let fresh = Load::rate(200).fresh_connections().target(addr).max_duration(bound).start();
    eventually("load is flowing", Duration::from_secs(10), || keepalive.completed() > 100).await;

    let started = Instant::now();
    let agent_arg = agent.agent_arg();
    let out = tokio::task::spawn_blocking(move || {
        let args: Vec<String> = ["--agent", &agent_arg, "deploy", "web", "--env", "VERSION=v2"]
            .into_iter()
            .chain(["--env", "UNHEALTHY=1", "--promote"])
            .map(String::from)
            .collect();
        bg_tests::agent::bgctl(&args)
    })
    .await
    .expect("bgctl ran");
    let took = started.elapsed();
    let keepalive = keepalive.stop().await;
    let fresh = fresh.stop().await;

    out.assert_exit_code(1);
    assert!(
        took >= Duration::from_millis(2900) && took < Duration::from_secs(20),
        "bgctl returned after {took:?}; the health deadline is 3s"
    );
    let status = agent.wait_idle("web", OP).await;
    assert_eq!(status["last_outcome"]["outcome"], "failed", "{status}");
    assert_eq!(status["active"], "blue", "traffic never moved: {status}");
    assert_eq!(keepalive.failed + fresh.failed, 0, "{:?} {:?}", keepalive.errors, fresh.errors);
    assert_eq!(keepalive.version("v2") + fresh.version("v2"), 0, "no request reached the bad release");
}
