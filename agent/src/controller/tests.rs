//! The controller's state machine on a fake runtime and paused time, for
//! the orderings real time cannot hit on purpose: a request an instant
//! before or after a deadline, a timer that fires as a request arrives, a
//! request that follows an operation's end at once.
//!
//! The fake runtime starts nothing; the fake prober answers health checks
//! from a table the test sets. Everything else is the real controller.

use super::{ControlError, Operation, Persister, Service, Shared};
use crate::api::{Color, DeployRequest, Outcome, OutcomeKind, Phase, ServiceStatus};
use crate::config::{Config, HealthCheckKind};
use crate::events::EventHub;
use crate::runtime::{BoxFuture, ReplicaHandle, ReplicaSpec, RunState, Runtime, RuntimeError, StopReport};
use crate::state::{PersistedState, StateStore, STATE_VERSION};
use bg_proxy::{Proxy, ProxyConfig};
use std::collections::{BTreeMap, HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// Replicas that "run", and which addresses answer health checks.
#[derive(Default)]
struct World {
    running: HashMap<String, ReplicaHandle>,
    sick: HashSet<SocketAddr>,
    next_port: u16,
}

/// A runtime that keeps replicas in [`World`]. A spec with
/// `UNHEALTHY=1` starts sick, as websample does.
struct FakeRuntime(Arc<Mutex<World>>);

impl Runtime for FakeRuntime {
    fn kind(&self) -> &'static str {
        "process"
    }

    fn start<'a>(&'a self, spec: &'a ReplicaSpec) -> BoxFuture<'a, Result<ReplicaHandle, RuntimeError>> {
        Box::pin(async move {
            let mut w = self.0.lock().unwrap();
            w.next_port += 1;
            let addr = SocketAddr::from(([127, 0, 0, 1], 20_000 + w.next_port));
            let handle = ReplicaHandle {
                runtime_id: spec.name(),
                name: spec.name(),
                service: spec.service.clone(),
                color: spec.color,
                revision: spec.revision,
                replica: spec.replica,
                addr,
            };
            if spec.spec.env.get("UNHEALTHY").is_some_and(|v| v == "1") {
                w.sick.insert(addr);
            }
            w.running.insert(handle.name.clone(), handle.clone());
            Ok(handle)
        })
    }

    fn stop<'a>(
        &'a self,
        replica: &'a ReplicaHandle,
        _signal: &'a str,
        _grace: Duration,
    ) -> BoxFuture<'a, Result<StopReport, RuntimeError>> {
        Box::pin(async move {
            self.0.lock().unwrap().running.remove(&replica.name);
            Ok(StopReport { killed: false, elapsed: Duration::ZERO, exit_code: Some(0) })
        })
    }

    fn remove<'a>(&'a self, replica: &'a ReplicaHandle) -> BoxFuture<'a, Result<(), RuntimeError>> {
        Box::pin(async move {
            self.0.lock().unwrap().running.remove(&replica.name);
            Ok(())
        })
    }

    fn list<'a>(
        &'a self,
        _service: Option<&'a str>,
    ) -> BoxFuture<'a, Result<Vec<ReplicaHandle>, RuntimeError>> {
        Box::pin(async move { Ok(self.0.lock().unwrap().running.values().cloned().collect()) })
    }

    fn state<'a>(&'a self, replica: &'a ReplicaHandle) -> BoxFuture<'a, Result<RunState, RuntimeError>> {
        Box::pin(async move {
            Ok(match self.0.lock().unwrap().running.contains_key(&replica.name) {
                true => RunState::Running { native_health: None },
                false => RunState::Gone,
            })
        })
    }

    fn logs<'a>(
        &'a self,
        _replica: &'a ReplicaHandle,
        _lines: usize,
    ) -> BoxFuture<'a, Result<String, RuntimeError>> {
        Box::pin(async { Ok(String::new()) })
    }
}

/// One service `web` on the fake runtime.
struct Harness {
    service: Arc<Service>,
    world: Arc<Mutex<World>>,
    shutdown: CancellationToken,
    dir: tempfile::TempDir,
}

impl Harness {
    /// `deploy` holds extra lines for `[services.web.deploy]`.
    fn new(deploy: &str) -> Harness {
        let dir = tempfile::tempdir().unwrap();
        let text = format!(
            "[agent]\nstate_dir = {state:?}\ncontrol_socket = {sock:?}\n\n[runtime]\nkind = \"process\"\n\n\
             [services.web]\nlisten = [\"127.0.0.1:1\"]\ncommand = [\"/bin/app\"]\nstop_grace = \"1s\"\n\n\
             [services.web.health]\ninterval = \"100ms\"\ntimeout = \"50ms\"\nhealthy_threshold = 1\n\
             unhealthy_threshold = 1\ndeadline = \"10s\"\n\n[services.web.deploy]\ndrain_timeout = \"1s\"\n{deploy}\n",
            state = dir.path().join("state"),
            sock = dir.path().join("agent.sock"),
        );
        let config = Config::parse(&text, &dir.path().join("agent.toml")).expect("test config parses");
        let world = Arc::new(Mutex::new(World::default()));
        let sick = world.clone();
        let prober: crate::health::Prober = Arc::new(move |addr, _check: HealthCheckKind, _timeout| {
            let ok = !sick.lock().unwrap().sick.contains(&addr);
            Box::pin(async move {
                if ok {
                    Ok(())
                } else {
                    Err("GET /healthz answered 503".into())
                }
            })
        });
        let shutdown = CancellationToken::new();
        let store = StateStore::open(&dir.path().join("state")).unwrap();
        let state = PersistedState { version: STATE_VERSION, services: BTreeMap::new(), last_operation: 0 };
        let shared = Arc::new(Shared {
            runtime: Arc::new(FakeRuntime(world.clone())),
            events: EventHub::new(),
            persister: Persister::new(store, state),
            shutdown: shutdown.clone(),
            tasks: TaskTracker::new(),
            prober,
        });
        let svc = config.services["web"].clone();
        let service = Service::new(svc, Proxy::new(ProxyConfig::default()), shared.clone());
        shared.tasks.spawn(service.clone().heal());
        Harness { service, world, shutdown, dir }
    }

    fn status(&self) -> ServiceStatus {
        self.service.status()
    }

    async fn start(&self, request: Operation) -> Result<u64, ControlError> {
        self.service.start(request).await.map(|a| a.operation)
    }

    /// Start `request` and wait for its outcome.
    async fn run(&self, request: Operation) -> Outcome {
        let id = self.start(request).await.expect("accepted");
        self.outcome(id).await
    }

    /// Wait (in paused time) for operation `id` to end.
    async fn outcome(&self, id: u64) -> Outcome {
        for _ in 0..100_000 {
            if let Some(o) = self.status().last_outcome.filter(|o| o.operation == id) {
                return o;
            }
            if let Some(h) = self.service.history().entries.iter().find(|h| h.outcome.operation == id) {
                return h.outcome.clone();
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        panic!("operation {id} never ended: {:?}", self.status());
    }

    async fn wait_phase(&self, phase: Phase) {
        for _ in 0..100_000 {
            if self.status().operation.is_some_and(|o| o.phase == phase) {
                return;
            }
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        panic!("never reached phase {phase}: {:?}", self.status());
    }

    fn make_sick(&self, color: Color) {
        let addrs: Vec<SocketAddr> =
            self.status().colors[&color].replicas.iter().map(|r| r.addr.parse().unwrap()).collect();
        self.world.lock().unwrap().sick.extend(addrs);
    }
}

impl Drop for Harness {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

fn deploy(version: &str, promote: bool, unhealthy: bool) -> Operation {
    let mut env = BTreeMap::from([("VERSION".to_string(), version.to_string())]);
    if unhealthy {
        env.insert("UNHEALTHY".into(), "1".into());
    }
    Operation::Deploy(DeployRequest {
        image: None,
        command: None,
        env,
        promote: Some(promote),
        converge: false,
    })
}

#[tokio::test(start_paused = true)]
async fn an_abort_just_before_the_health_deadline_stops_the_deploy_one_just_after_finds_nothing() {
    let h = Harness::new("");
    assert_eq!(h.run(deploy("v1", false, false)).await.outcome, OutcomeKind::Succeeded);

    let doomed = h.start(deploy("v2", false, true)).await.unwrap();
    tokio::time::sleep(Duration::from_millis(9_900)).await;
    let abort = h.run(Operation::Abort).await;
    assert_eq!(abort.outcome, OutcomeKind::Succeeded, "{abort:?}");
    assert!(abort.message.contains(&format!("stopped deploy #{doomed}")), "{}", abort.message);
    assert_eq!(h.outcome(doomed).await.outcome, OutcomeKind::Aborted);
    assert!(h.status().colors[&Color::Green].replicas.is_empty());

    let failing = h.start(deploy("v2", false, true)).await.unwrap();
    tokio::time::sleep(Duration::from_millis(10_100)).await;
    assert_eq!(h.outcome(failing).await.outcome, OutcomeKind::Failed, "the deadline passed first");
    match h.start(Operation::Abort).await {
        Err(ControlError::BadRequest(m)) => assert!(m.contains("nothing to abort"), "{m}"),
        other => panic!("abort after the deploy failed by itself: {other:?}"),
    }
    assert_eq!(h.status().active, Some(Color::Blue));
}

#[tokio::test(start_paused = true)]
async fn a_rollback_just_before_keep_old_ends_swaps_one_just_after_redeploys() {
    for (wait_ms, expect) in [(9_500, "rolled back to blue"), (10_500, "rolled back by redeploy")] {
        let h = Harness::new("keep_old = \"10s\"");
        h.run(deploy("v1", false, false)).await;
        let promoted = h.run(deploy("v2", true, false)).await;
        assert!(promoted.message.contains("kept warm"), "{promoted:?}");
        tokio::time::sleep(Duration::from_millis(wait_ms)).await;
        let back = h.run(Operation::Rollback).await;
        assert_eq!(back.outcome, OutcomeKind::Succeeded, "after {wait_ms} ms: {back:?}");
        assert!(back.message.contains(expect), "after {wait_ms} ms: {}", back.message);
        let s = h.status();
        let active = s.active.unwrap();
        let env = &s.colors[&active].spec.as_ref().unwrap().env;
        assert_eq!(env.get("VERSION").map(String::as_str), Some("v1"), "after {wait_ms} ms: {s:?}");
    }
}

#[tokio::test(start_paused = true)]
async fn a_request_sent_the_moment_an_operation_ends_is_not_a_conflict() {
    let h = Harness::new("");
    h.run(deploy("v1", false, false)).await;
    let mut sub = h.service.shared.events.subscribe(None);
    let id = h.start(deploy("v2", false, false)).await.unwrap();
    loop {
        let e = sub.live.recv().await.unwrap();
        if matches!(&e.kind, crate::api::EventKind::OperationFinished { result } if result.operation == id) {
            break;
        }
    }
    // The deploy has reported its end and may not have released the
    // service yet: the promote waits for it instead of a 409.
    let promote = h.start(Operation::Promote).await;
    assert!(promote.is_ok(), "{promote:?}");
    assert_eq!(h.outcome(promote.unwrap()).await.outcome, OutcomeKind::Succeeded);
    assert_eq!(h.status().active, Some(Color::Green));
}

#[tokio::test(start_paused = true)]
async fn the_monitor_window_catches_a_failure_before_its_end_and_not_after() {
    for (sick_after_ms, expect) in [(1_500, OutcomeKind::RolledBack), (2_500, OutcomeKind::Succeeded)] {
        let h = Harness::new("monitor = \"2s\"\nfailure_action = \"rollback\"");
        h.run(deploy("v1", false, false)).await;
        let id = h.start(deploy("v2", true, false)).await.unwrap();
        h.wait_phase(Phase::Monitor).await;
        tokio::time::sleep(Duration::from_millis(sick_after_ms)).await;
        h.make_sick(Color::Green);
        let o = h.outcome(id).await;
        assert_eq!(o.outcome, expect, "sick {sick_after_ms} ms into the window: {o:?}");
        let active = if expect == OutcomeKind::RolledBack { Color::Blue } else { Color::Green };
        assert_eq!(h.status().active, Some(active));
    }
}

#[tokio::test(start_paused = true)]
async fn a_failed_state_write_leaves_the_model_and_the_table_as_they_were() {
    let h = Harness::new("");
    h.run(deploy("v1", false, false)).await;
    h.run(deploy("v2", false, false)).await;
    let before = h.status();
    let tmp = h.dir.path().join("state").join("state.json.tmp");
    std::fs::create_dir(&tmp).unwrap();
    let o = h.run(Operation::Promote).await;
    assert_eq!(o.outcome, OutcomeKind::Failed, "{o:?}");
    assert!(o.message.contains("cannot persist state"), "{}", o.message);
    let after = h.status();
    assert_eq!((after.active, after.weights), (before.active, before.weights));
    let table = h.service.proxy().routes();
    assert_eq!(
        (table.weights.blue, table.weights.green),
        (100, 0),
        "the installed table still sends all to blue"
    );
}

#[tokio::test(start_paused = true)]
async fn a_request_during_a_hold_waits_for_it_and_one_during_a_handover_is_refused() {
    let h = Harness::new("");
    h.run(deploy("v1", false, false)).await;

    let healing = h.service.hold(super::actor::Hold::Healing).await.unwrap();
    let service = h.service.clone();
    let waiting = tokio::spawn(async move { service.start(deploy("v2", false, false)).await });
    tokio::time::sleep(Duration::from_secs(5)).await;
    assert!(!waiting.is_finished(), "the deploy waits behind the healer's hold");
    assert_eq!(h.status().active, Some(Color::Blue), "status answers meanwhile");
    drop(healing);
    let id = waiting.await.unwrap().expect("admitted once the hold ended").operation;
    assert_eq!(h.outcome(id).await.outcome, OutcomeKind::Succeeded);

    let frozen = h.service.freeze().await.unwrap();
    match h.start(Operation::Promote).await {
        Err(ControlError::Conflict { running, .. }) => assert!(running.contains("handover"), "{running}"),
        other => panic!("a promote during a handover: {other:?}"),
    }
    drop(frozen);
    let promote = h.run(Operation::Promote).await;
    assert_eq!(promote.outcome, OutcomeKind::Succeeded, "accepted after the handover ended: {promote:?}");
    let sick = h.start(deploy("v3", false, true)).await.unwrap();
    match h.service.freeze().await {
        Err(ControlError::Conflict { running, .. }) => assert!(running.contains("operation"), "{running}"),
        other => panic!("a handover during an operation: {other:?}"),
    }
    assert_eq!(h.outcome(sick).await.outcome, OutcomeKind::Failed);
    assert_eq!(h.status().active, Some(Color::Green));
}

#[tokio::test(start_paused = true)]
async fn a_converging_deploy_leaves_a_spec_that_already_runs_alone() {
    let h = Harness::new("");
    let converge = |version: &str, promote: bool| {
        let env = BTreeMap::from([("VERSION".to_string(), version.to_string())]);
        Operation::Deploy(DeployRequest { env, promote: Some(promote), converge: true, ..Default::default() })
    };
    assert_eq!(h.run(converge("v1", true)).await.outcome, OutcomeKind::Succeeded);
    let revision = h.status().revision;
    // Active already: nothing to do, no new revision.
    let again = h.run(converge("v1", true)).await;
    assert_eq!(again.outcome, OutcomeKind::Succeeded);
    assert!(again.message.contains("nothing to do"), "{}", again.message);
    assert_eq!(h.status().revision, revision);
    // A healthy candidate runs it: nothing started, then promoted.
    assert_eq!(h.run(converge("v2", false)).await.outcome, OutcomeKind::Succeeded);
    let green = h.status().colors[&Color::Green].replicas.clone();
    let same = h.run(converge("v2", false)).await;
    assert!(same.message.contains("nothing started"), "{}", same.message);
    assert_eq!(h.status().colors[&Color::Green].replicas, green, "the candidate was replaced");
    assert_eq!(h.run(converge("v2", true)).await.outcome, OutcomeKind::Succeeded);
    assert_eq!(h.status().active, Some(Color::Green));
    // A different spec deploys as usual; without converge, the same one too.
    assert!(h.run(converge("v3", false)).await.message.contains("revision"));
    assert_ne!(h.status().colors[&Color::Blue].replicas, vec![]);
    let plain = h.run(deploy("v2", false, false)).await;
    assert!(!plain.message.contains("nothing"), "{}", plain.message);
}
