//! Health monitoring: threshold timing with paused time and a scripted
//! runtime, then real checks against websample run by the process runtime.

#[path = "runtime_support/mod.rs"]
mod support;

use bg_agent::api::{Color, Health};
use bg_agent::config::{HealthCheckKind, HealthConfig};
use bg_agent::health::{HealthError, HealthMonitor};
use bg_agent::runtime::process::ProcessRuntime;
use bg_agent::runtime::{BoxFuture, ReplicaHandle, ReplicaSpec, RunState, Runtime, RuntimeError, StopReport};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use support::*;
use tokio_util::sync::CancellationToken;

fn config(check: HealthCheckKind) -> HealthConfig {
    HealthConfig {
        check,
        interval: Duration::from_millis(100),
        timeout: Duration::from_millis(500),
        healthy_threshold: 2,
        unhealthy_threshold: 2,
        deadline: Duration::from_secs(10),
    }
}

fn http() -> HealthCheckKind {
    HealthCheckKind::Http { path: "/healthz".into() }
}

fn handle() -> ReplicaHandle {
    ReplicaHandle {
        runtime_id: "fake".into(),
        name: "bg-web-blue-1".into(),
        service: "web".into(),
        color: Color::Blue,
        revision: 1,
        replica: 1,
        addr: "127.0.0.1:1".parse().unwrap(),
    }
}

/// A runtime whose `state` answers whatever the test sets.
struct FakeRuntime(Mutex<RunState>);

impl FakeRuntime {
    fn running(native_health: Option<bool>) -> Arc<Self> {
        Arc::new(FakeRuntime(Mutex::new(RunState::Running { native_health })))
    }
    fn set(&self, s: RunState) {
        *self.0.lock().unwrap() = s;
    }
}

impl Runtime for FakeRuntime {
    fn kind(&self) -> &'static str {
        "fake"
    }
    fn start<'a>(&'a self, _: &'a ReplicaSpec) -> BoxFuture<'a, Result<ReplicaHandle, RuntimeError>> {
        unimplemented!()
    }
    fn stop<'a>(
        &'a self,
        _: &'a ReplicaHandle,
        _: &'a str,
        _: Duration,
    ) -> BoxFuture<'a, Result<StopReport, RuntimeError>> {
        unimplemented!()
    }
    fn remove<'a>(&'a self, _: &'a ReplicaHandle) -> BoxFuture<'a, Result<(), RuntimeError>> {
        unimplemented!()
    }
    fn list<'a>(&'a self, _: Option<&'a str>) -> BoxFuture<'a, Result<Vec<ReplicaHandle>, RuntimeError>> {
        unimplemented!()
    }
    fn state<'a>(&'a self, _: &'a ReplicaHandle) -> BoxFuture<'a, Result<RunState, RuntimeError>> {
        let s = self.0.lock().unwrap().clone();
        Box::pin(async move { Ok(s) })
    }
    fn logs<'a>(&'a self, _: &'a ReplicaHandle, _: usize) -> BoxFuture<'a, Result<String, RuntimeError>> {
        unimplemented!()
    }
}

/// A probe that plays a script of outcomes, then repeats the last one.
fn scripted(
    script: Vec<Result<(), &'static str>>,
) -> impl FnMut() -> BoxFuture<'static, Result<(), String>> + Send {
    let mut i = 0;
    move || {
        let r = script[i.min(script.len() - 1)].map_err(String::from);
        i += 1;
        Box::pin(async move { r })
    }
}

#[tokio::test(start_paused = true)]
async fn healthy_after_threshold_passes_one_interval_apart() {
    let rt = FakeRuntime::running(None);
    let cancel = CancellationToken::new();
    let mut w = HealthMonitor::spawn_with(
        &tokio_util::task::TaskTracker::new(),
        config(http()),
        rt,
        handle(),
        cancel.clone(),
        scripted(vec![Err("refused"), Ok(()), Ok(())]),
    );
    let start = tokio::time::Instant::now();
    w.wait_healthy(Duration::from_secs(10)).await.unwrap();
    // Checks at 0, 100 and 200 ms: the second pass in a row is at 200 ms.
    assert_eq!(start.elapsed(), Duration::from_millis(200));
    assert_eq!(w.current().health, Health::Healthy);
    assert_eq!(w.current().reason, None);
    cancel.cancel();
}

#[tokio::test(start_paused = true)]
async fn healthy_turns_unhealthy_after_threshold_failures() {
    let rt = FakeRuntime::running(None);
    let mut w = HealthMonitor::spawn_with(
        &tokio_util::task::TaskTracker::new(),
        config(http()),
        rt,
        handle(),
        CancellationToken::new(),
        scripted(vec![Ok(()), Ok(()), Err("503"), Err("503")]),
    );
    w.wait_healthy(Duration::from_secs(1)).await.unwrap();
    let mut seen = Vec::new();
    while let Some(r) = w.changed().await {
        seen.push(r.clone());
        if r.health == Health::Unhealthy {
            break;
        }
    }
    let last = seen.last().unwrap();
    assert_eq!(last.health, Health::Unhealthy);
    assert_eq!(last.reason.as_deref(), Some("503"));
    assert!(!last.exited);
}

#[tokio::test(start_paused = true)]
async fn an_exited_replica_fails_at_once_with_its_exit_code() {
    let rt = FakeRuntime::running(None);
    rt.set(RunState::Exited { code: 137 });
    let mut w = HealthMonitor::spawn_with(
        &tokio_util::task::TaskTracker::new(),
        config(http()),
        rt,
        handle(),
        CancellationToken::new(),
        scripted(vec![Ok(())]),
    );
    let start = tokio::time::Instant::now();
    let err = w.wait_healthy(Duration::from_secs(10)).await.unwrap_err();
    assert_eq!(start.elapsed(), Duration::ZERO);
    match err {
        HealthError::Exited { reason } => assert!(reason.contains("SIGKILL"), "{reason}"),
        other => panic!("{other:?}"),
    }
    assert!(w.current().exited);
}

#[tokio::test(start_paused = true)]
async fn a_failing_native_healthcheck_blocks_passing() {
    let rt = FakeRuntime::running(Some(false));
    let mut w = HealthMonitor::spawn_with(
        &tokio_util::task::TaskTracker::new(),
        config(http()),
        rt.clone(),
        handle(),
        CancellationToken::new(),
        scripted(vec![Ok(())]),
    );
    let err = w.wait_healthy(Duration::from_secs(2)).await.unwrap_err();
    match err {
        HealthError::Deadline { reason, .. } => assert!(reason.contains("HEALTHCHECK"), "{reason}"),
        other => panic!("{other:?}"),
    }
    rt.set(RunState::Running { native_health: Some(true) });
    w.wait_healthy(Duration::from_secs(2)).await.unwrap();
}

#[tokio::test(start_paused = true)]
async fn cancelling_ends_the_monitor() {
    let cancel = CancellationToken::new();
    let mut w = HealthMonitor::spawn_with(
        &tokio_util::task::TaskTracker::new(),
        config(http()),
        FakeRuntime::running(None),
        handle(),
        cancel.clone(),
        scripted(vec![Err("refused")]),
    );
    cancel.cancel();
    assert_eq!(w.wait_healthy(Duration::from_secs(60)).await, Err(HealthError::Cancelled));
}

// Real checks against websample.

async fn start_websample(rt: &ProcessRuntime, env: &[(&str, &str)]) -> ReplicaHandle {
    rt.start(&websample_spec(&unique_service("health"), env)).await.unwrap()
}

#[tokio::test]
async fn websample_becomes_healthy_over_http_and_tcp() {
    let dir = tempfile::tempdir().unwrap();
    let rt = Arc::new(ProcessRuntime::new(dir.path()).unwrap());
    let h = start_websample(&rt, &[]).await;
    let cancel = CancellationToken::new();
    for check in [http(), HealthCheckKind::Tcp] {
        let mut w = HealthMonitor::spawn(
            &tokio_util::task::TaskTracker::new(),
            h.addr,
            config(check),
            rt.clone(),
            h.clone(),
            cancel.child_token(),
        );
        w.wait_healthy(Duration::from_secs(10)).await.unwrap();
    }
    cancel.cancel();
    rt.stop(&h, "SIGTERM", Duration::from_secs(5)).await.unwrap();
    rt.remove(&h).await.unwrap();
}

#[tokio::test]
async fn unhealthy_websample_never_becomes_healthy() {
    let dir = tempfile::tempdir().unwrap();
    let rt = Arc::new(ProcessRuntime::new(dir.path()).unwrap());
    let h = start_websample(&rt, &[("UNHEALTHY", "1")]).await;
    let cancel = CancellationToken::new();
    let mut w = HealthMonitor::spawn(
        &tokio_util::task::TaskTracker::new(),
        h.addr,
        config(http()),
        rt.clone(),
        h.clone(),
        cancel.clone(),
    );
    let err = w.wait_healthy(Duration::from_secs(2)).await.unwrap_err();
    match &err {
        HealthError::Deadline { reason, .. } => assert!(reason.contains("503"), "{err}"),
        other => panic!("{other:?}"),
    }
    assert_eq!(w.current().health, Health::Starting);
    cancel.cancel();
    rt.stop(&h, "SIGTERM", Duration::from_secs(5)).await.unwrap();
    rt.remove(&h).await.unwrap();
}

#[tokio::test]
async fn a_killed_websample_turns_unhealthy_with_its_exit() {
    let dir = tempfile::tempdir().unwrap();
    let rt = Arc::new(ProcessRuntime::new(dir.path()).unwrap());
    let h = start_websample(&rt, &[]).await;
    let mut w = HealthMonitor::spawn(
        &tokio_util::task::TaskTracker::new(),
        h.addr,
        config(http()),
        rt.clone(),
        h.clone(),
        CancellationToken::new(),
    );
    w.wait_healthy(Duration::from_secs(10)).await.unwrap();

    rt.stop(&h, "SIGKILL", Duration::from_secs(1)).await.unwrap();
    let report = tokio::time::timeout(Duration::from_secs(5), async {
        loop {
            match w.changed().await {
                Some(r) if r.exited => return r,
                Some(_) => continue,
                None => return w.current(),
            }
        }
    })
    .await
    .expect("the monitor never saw the exit");
    assert!(report.exited, "{report:?}");
    assert_eq!(report.health, Health::Unhealthy);
    assert!(report.reason.as_deref().unwrap_or("").contains("SIGKILL"), "{report:?}");
    rt.remove(&h).await.unwrap();
}
