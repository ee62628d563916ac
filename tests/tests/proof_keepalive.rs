//! Proof 1: ten keep-alive clients in tight loops while a new version is
//! deployed and promoted lose no request, on the process and the Docker
//! runtime; the naive stop-then-start container replacement through the
//! same Docker engine does lose requests, which shows the clients can see
//! a failure when there is one.

use bg_tests::agent::{unique_service, Agent, Svc};
use bg_tests::docker::docker_with_images;
use bg_tests::load::{Load, LoadReport};
use bg_tests::wait::eventually;
use serde_json::json;
use std::net::SocketAddr;
use std::process::{Command, Stdio};
use std::time::Duration;

const OP: Duration = Duration::from_secs(90);
/// Bound on every load in this file; they are stopped long before.
const LOAD_BOUND: Duration = Duration::from_secs(60);

/// Run ten keep-alive clients against `target` while `change` runs, and
/// until 200 more requests were answered after it.
async fn ten_clients_during<F: std::future::Future<Output = ()>>(
    target: SocketAddr,
    change: F,
) -> LoadReport {
    let load = Load::keepalive(10).target(target).max_duration(LOAD_BOUND).start();
    eventually("load is flowing", Duration::from_secs(10), || load.completed() > 200).await;
    change.await;
    let after = load.completed();
    eventually("requests after the change", Duration::from_secs(20), || load.completed() > after + 200).await;
    load.stop().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn process_runtime_promote_under_ten_keepalive_clients_loses_nothing() {
    let agent = Agent::process().service(Svc::new("web").replicas(2)).start().await;
    agent.op("web", "deploy", json!({}), OP).await;
    let report = ten_clients_during(agent.listen("web"), async {
        let s = agent.op("web", "deploy", json!({"env": {"VERSION": "v2"}, "promote": true}), OP).await;
        assert_eq!(s["active"], "green", "{s}");
    })
    .await;
    assert_eq!(report.failed, 0, "bg-agent lost requests: {:?}", report.errors);
    assert!(report.version("v1") > 0 && report.version("v2") > 0, "{:?}", report.by_version);
}

/// A container started with the docker CLI, removed on drop.
struct Container(String);

impl Container {
    fn run(name: &str, port: u16, version: &str) -> Container {
        let out = Command::new("docker")
            .args(["run", "-d", "--name", name, "-p", &format!("127.0.0.1:{port}:5000")])
            .args(["-e", &format!("VERSION={version}"), &format!("websample:{version}")])
            .output()
            .expect("docker run");
        assert!(out.status.success(), "docker run {name}: {}", String::from_utf8_lossy(&out.stderr));
        Container(name.to_string())
    }

    fn stop_and_remove(self) {
        let ok = Command::new("docker").args(["stop", &self.0]).stdout(Stdio::null()).status();
        assert!(ok.is_ok_and(|s| s.success()), "docker stop {}", self.0);
    }
}

impl Drop for Container {
    fn drop(&mut self) {
        let _ = Command::new("docker")
            .args(["rm", "-f", &self.0])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
    }
}

async fn answers(addr: SocketAddr, version: &str) -> bool {
    let load = Load::keepalive(1).target(addr).max_requests(1).max_duration(Duration::from_secs(2)).start();
    eventually("one probe request", Duration::from_secs(5), || load.finished() && load.completed() == 1)
        .await;
    load.stop().await.version(version) == 1
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn docker_promote_loses_nothing_where_stop_then_start_loses_requests() {
    if !docker_with_images("docker_promote_vs_stop_then_start", &["v1", "v2"]) {
        return;
    }

    // Naive: stop v1, start v2 on the same published port.
    let port = bg_tests::websample::free_port();
    let addr: SocketAddr = ([127, 0, 0, 1], port).into();
    let name = unique_service("naive");
    let v1 = Container::run(&format!("{name}-v1"), port, "v1");
    bg_tests::wait::eventually_async("naive v1 answers", Duration::from_secs(30), || answers(addr, "v1"))
        .await;
    let mut v2 = None;
    let naive = ten_clients_during(addr, async {
        v1.stop_and_remove();
        v2 = Some(Container::run(&format!("{name}-v2"), port, "v2"));
        bg_tests::wait::eventually_async("naive v2 answers", Duration::from_secs(30), || answers(addr, "v2"))
            .await;
    })
    .await;
    drop(v2);

    // Ours, through the same engine.
    let service = unique_service("web");
    let agent = Agent::docker().service(Svc::new(&service).replicas(2)).start().await;
    agent.op(&service, "deploy", json!({}), OP).await;
    let ours = ten_clients_during(agent.listen(&service), async {
        let v2 = json!({"image": "websample:v2", "env": {"VERSION": "v2"}, "promote": true});
        let s = agent.op(&service, "deploy", v2, OP).await;
        assert_eq!(s["active"], "green", "{s}\n{}", agent.log());
    })
    .await;

    assert!(
        naive.failed > 0,
        "stop-then-start should have lost requests (or the clients cannot see failures): {:?}",
        naive.by_status
    );
    assert_eq!(
        ours.failed,
        0,
        "bg-agent lost {} of {} requests (stop-then-start lost {} of {}): {:?}",
        ours.failed,
        ours.total(),
        naive.failed,
        naive.total(),
        ours.errors
    );
    assert!(ours.version("v1") > 0 && ours.version("v2") > 0, "{:?}", ours.by_version);
    eprintln!(
        "stop-then-start: {} of {} failed; bg-agent: 0 of {} failed",
        naive.failed,
        naive.total(),
        ours.total()
    );
}
