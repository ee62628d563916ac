//! The swarm runtime on two nodes (see `bg_tests::swarm_nodes`): the
//! machine's engine as manager, a second engine in a network namespace as
//! worker, the colors' tasks spread over both on an overlay network, the
//! agent attached to it. The worker drops off the network during a
//! promote. With `BG_DOCKER_TESTS=1` a missing part fails the test.
//!
//! Its own test binary: it needs the engine outside any swarm, and cargo
//! runs test binaries one after another, so it never meets the
//! single-node swarm of `tests/swarm.rs`.

use bg_tests::agent::{unique_service, Agent, RunningAgent, Svc};
use bg_tests::load::Load;
use bg_tests::status::{outcome, replicas};
use bg_tests::swarm::{remove_swarm_objects, services};
use bg_tests::swarm_nodes::{task_nodes, TwoNodes};
use bg_tests::wait::eventually;
use serde_json::{json, Value};
use std::time::Duration;

/// Longest wait for one operation (Swarm schedules tasks in seconds; a
/// node is declared down after missing its heartbeats).
const OP: Duration = Duration::from_secs(180);

fn healthy_serving(status: &Value, color: &str) -> usize {
    replicas(status, color).iter().filter(|r| r["health"] == "healthy" && r["state"] == "serving").count()
}

/// Removes the agent's Swarm objects before the swarm goes (drop order:
/// this runs before the [`TwoNodes`] declared ahead of it).
struct Cleanup(String);

impl Drop for Cleanup {
    fn drop(&mut self) {
        remove_swarm_objects(&self.0);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn swarm_worker_lost_during_a_promote_is_replaced_and_the_promote_holds() {
    let Some(nodes) = TwoNodes::acquire("swarm_worker_lost", &["v1", "v2"]) else { return };
    let name = unique_service("swn");
    let _cleanup = Cleanup(name.clone());
    let (ns, addr) = nodes.agent_netns();
    // A request that reached the worker's task just before the worker fell
    // off gets no answer: after `response_timeout` it goes to another task.
    let svc = Svc::new(&name).replicas(2).set("", "response_timeout", "\"2s\"");
    let agent: RunningAgent = Agent::swarm(nodes.overlay()).in_netns(ns, addr).service(svc).start().await;
    let (manager, worker) = nodes.node_ids();
    let (manager, worker) = (manager.to_string(), worker.to_string());

    // Blue, then green, each with one task on each node (Swarm spreads a
    // service's tasks over the nodes); the agent reaches all four.
    let blue = agent.op(&name, "deploy", json!({}), OP).await;
    assert_eq!(outcome(&blue).0, "succeeded", "{blue}\n{}", agent.log());
    let on =
        |svc: &str| task_nodes(&format!("bg-{name}-{svc}")).into_iter().map(|(_, n)| n).collect::<Vec<_>>();
    let mut blue_nodes = on("blue");
    blue_nodes.sort();
    let mut both = vec![manager.clone(), worker.clone()];
    both.sort();
    assert_eq!(blue_nodes, both, "one blue task on each node");
    let v2 = json!({"image": "websample:v2", "env": {"VERSION": "v2"}});
    let green = agent.op(&name, "deploy", v2, OP).await;
    assert_eq!(outcome(&green).0, "succeeded", "{green}\n{}", agent.log());
    assert_eq!(green["active"], "blue", "green is not live before the promote: {green}");
    assert_eq!(healthy_serving(&green, "green"), 2, "{green}");
    assert!(on("green").contains(&worker), "a green task on the worker: {:?}", on("green"));

    let load = Load::keepalive(8).target(agent.listen(&name)).max_duration(Duration::from_secs(150)).start();
    eventually("load is flowing", Duration::from_secs(10), || load.completed() > 200).await;

    // The promote, and the worker gone from the network while it runs
    // (the switch is done in a moment; the drain and the stop of blue
    // meet a node that no longer answers).
    let promote = async { agent.op(&name, "promote", json!({}), OP).await };
    let cut = async {
        tokio::time::sleep(Duration::from_millis(300)).await;
        nodes.cut_worker();
    };
    let (promoted, ()) = tokio::join!(promote, cut);
    assert_eq!(outcome(&promoted).0, "succeeded", "{promoted}\n{}", agent.log());
    assert_eq!(promoted["active"], "green");

    // Swarm declares the worker down and puts its green task on the
    // manager; the agent takes it through the health gate.
    eventually("the manager sees the worker down", OP, || nodes.worker_state() == "down").await;
    let status = agent
        .wait_status(&name, "both green tasks in rotation, on the manager", OP, |s| {
            healthy_serving(s, "green") == 2 && replicas(s, "green").len() == 2
        })
        .await;
    assert_eq!(status["active"], "green");
    eventually("both green tasks run on the manager", OP, || {
        on("green") == vec![manager.clone(), manager.clone()]
    })
    .await;
    eventually("blue's service is gone", OP, || services(&name) == vec![format!("bg-{name}-green")]).await;
    let during = load.stop().await;
    eprintln!("while the worker dropped off: {} requests, {} failed", during.total(), during.failed);
    // Every request was answered (none hangs on the lost node), none failed.
    assert_eq!(during.failed, 0, "{:?}", during.errors);
    assert!(during.errors.is_empty(), "{:?}", during.errors);
    assert!(during.version("v2") > 0, "green served during the loss: {:?}", during.by_version);

    // Once Swarm replaced the lost task, nothing fails.
    let after = Load::keepalive(8).target(agent.listen(&name)).max_requests(2000).start();
    eventually("the load after recovery ends", Duration::from_secs(60), || after.finished()).await;
    let after = after.stop().await;
    assert_eq!(after.failed, 0, "{:?}\n{}", after.errors, agent.log());
    assert_eq!(after.version("v2"), after.total(), "{:?}", after.by_version);
    drop(agent);
}
