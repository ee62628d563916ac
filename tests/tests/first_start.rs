//! First start (`on_start = "deploy"`): an agent with a fresh `state_dir`
//! serves the configured spec without any command, and a first-start
//! deploy that fails is an event like any failed deploy while the agent
//! keeps serving its other services.

use bg_tests::agent::{Agent, Svc};
use bg_tests::api::{raw, Target};
use std::net::SocketAddr;
use std::time::Duration;

async fn get(addr: SocketAddr) -> (u16, String) {
    let r = raw(Target::Tcp(addr), "GET", "/", &[], Vec::new()).await.expect("GET / through the proxy");
    (r.status, r.text().trim().to_string())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fresh_agent_serves_the_configured_spec_without_a_command() {
    let agent = Agent::process()
        .service(Svc::new("web").replicas(2).env("VERSION", "v7").set("deploy", "on_start", "\"deploy\""))
        .service(
            // Never healthy: its first start fails at the health deadline.
            Svc::new("broken").env("UNHEALTHY", "1").set("health", "deadline", "\"2s\"").set(
                "deploy",
                "on_start",
                "\"deploy\"",
            ),
        )
        .service(Svc::new("later").set("deploy", "on_start", "\"wait\""))
        .start()
        .await;
    let s = agent
        .wait_status("web", "web live by itself", Duration::from_secs(30), |s| s["active"].is_string())
        .await;
    assert_eq!(s["revision"], 1, "{s}");
    assert_eq!(get(agent.listen("web")).await, (200, "v7".to_string()));
    let h = agent
        .wait_status("broken", "the first start failed", Duration::from_secs(30), |s| {
            s["last_outcome"]["outcome"] == "failed"
        })
        .await;
    assert!(h["active"].is_null(), "a failed first start leaves nothing live: {h}");
    assert!(agent.log().contains("deploying the configured spec"), "{}", agent.log());
    let later = agent.status("later").await;
    assert!(later["active"].is_null() && later["last_outcome"].is_null(), "on_start = wait: {later}");
    // The agent keeps serving the service that did start.
    assert_eq!(get(agent.listen("web")).await.0, 200, "still serving");

    // A restart is not a first start: the recorded service is adopted,
    // not deployed again.
    let mut agent = agent;
    agent.stop();
    agent.restart().await;
    agent.wait_status("web", "adopted", Duration::from_secs(30), |s| s["active"].is_string()).await;
    assert_eq!(agent.status("web").await["revision"], 1);
}
