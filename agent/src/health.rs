//! Health checks of one replica. A [`HealthMonitor`] task probes the
//! replica every `interval` (HTTP `GET path` expecting 2xx, or a TCP
//! connect), asks the runtime at the same time (an exited replica is
//! unhealthy at once; a container's own HEALTHCHECK, when it has a verdict,
//! must pass too), and publishes a [`HealthReport`] on a watch channel
//! whenever it changes.
//!
//! The runtime is a second opinion, not a dependency: when it does not
//! answer (the Docker engine is down or hangs), the probe alone decides and
//! the container's last known HEALTHCHECK verdict stands, so an engine
//! outage never takes a working replica out of rotation.
//!
//! A replica starts as `starting` and becomes `healthy` after
//! `healthy_threshold` passes in a row. A healthy replica becomes
//! `unhealthy` after `unhealthy_threshold` failures in a row, and healthy
//! again after `healthy_threshold` passes. A replica that never passed stays
//! `starting` while it fails: how long it may take to boot is the caller's
//! deadline ([`HealthWatch::wait_healthy`]), not a failure count.

use crate::api::Health;
use crate::config::{HealthCheckKind, HealthConfig};
use crate::runtime::{BoxFuture, ReplicaHandle, RunState, Runtime};
use bytes::Bytes;
use http_body_util::Empty;
use hyper_util::rt::TokioIo;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpStream;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// What the checks say about a replica now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HealthReport {
    /// Starting, healthy or unhealthy.
    pub health: Health,
    /// Why it is not healthy: the last failed check, or how it exited.
    /// `None` while healthy, and before the first check.
    pub reason: Option<String>,
    /// The replica exited (or vanished): it will not come back, and the
    /// monitor has stopped.
    pub exited: bool,
}

impl HealthReport {
    fn starting() -> Self {
        HealthReport { health: Health::Starting, reason: None, exited: false }
    }
}

/// Why [`HealthWatch::wait_healthy`] gave up.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum HealthError {
    /// The replica exited before it became healthy.
    #[error("replica exited before it became healthy: {reason}")]
    Exited {
        /// How it exited (exit code or signal).
        reason: String,
    },
    /// The deadline passed first.
    #[error("not healthy after {deadline:?}: {reason}")]
    Deadline {
        /// The deadline that passed.
        deadline: Duration,
        /// The last failed check, or "no check passed yet".
        reason: String,
    },
    /// The monitor was cancelled.
    #[error("health monitor cancelled")]
    Cancelled,
}

/// Counts passes and failures in a row and decides the health. Pure: the
/// monitor feeds it check outcomes.
#[derive(Debug, Clone)]
pub struct HealthTracker {
    healthy_threshold: u32,
    unhealthy_threshold: u32,
    passes: u32,
    failures: u32,
    health: Health,
}

impl HealthTracker {
    /// A tracker for a new replica (`starting`). Thresholds below 1 count
    /// as 1.
    pub fn new(healthy_threshold: u32, unhealthy_threshold: u32) -> Self {
        HealthTracker {
            healthy_threshold: healthy_threshold.max(1),
            unhealthy_threshold: unhealthy_threshold.max(1),
            passes: 0,
            failures: 0,
            health: Health::Starting,
        }
    }

    /// The health so far.
    pub fn health(&self) -> Health {
        self.health
    }

    /// Record one check and return the (possibly new) health.
    pub fn record(&mut self, passed: bool) -> Health {
        if passed {
            self.failures = 0;
            self.passes = self.passes.saturating_add(1);
            if self.passes >= self.healthy_threshold {
                self.health = Health::Healthy;
            }
        } else {
            self.passes = 0;
            self.failures = self.failures.saturating_add(1);
            if self.health == Health::Healthy && self.failures >= self.unhealthy_threshold {
                self.health = Health::Unhealthy;
            }
        }
        self.health
    }
}

/// How a replica is probed: `probe` in the agent; a fake in the
/// controller's unit tests, which run on paused time.
pub type Prober = Arc<
    dyn Fn(SocketAddr, HealthCheckKind, Duration) -> BoxFuture<'static, Result<(), String>> + Send + Sync,
>;

/// The real [`probe`], as a [`Prober`].
pub fn real_prober() -> Prober {
    Arc::new(|target, check, timeout| Box::pin(async move { probe(target, &check, timeout).await }))
}

/// One probe of `target`: `Ok` when it passes, or why it failed.
pub async fn probe(target: SocketAddr, check: &HealthCheckKind, timeout: Duration) -> Result<(), String> {
    let attempt = async {
        match check {
            HealthCheckKind::Tcp => TcpStream::connect(target)
                .await
                .map(|_| ())
                .map_err(|e| format!("TCP connect to {target} failed: {e}")),
            HealthCheckKind::Http { path } => http_probe(target, path).await,
        }
    };
    match tokio::time::timeout(timeout, attempt).await {
        Ok(r) => r,
        Err(_) => Err(match check {
            HealthCheckKind::Tcp => format!("TCP connect to {target} took longer than {timeout:?}"),
            HealthCheckKind::Http { path } => {
                format!("GET {path} on {target} got no answer within {timeout:?}")
            }
        }),
    }
}

async fn http_probe(target: SocketAddr, path: &str) -> Result<(), String> {
    let stream = TcpStream::connect(target)
        .await
        .map_err(|e| format!("GET {path}: cannot connect to {target}: {e}"))?;
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(|e| format!("GET {path} on {target}: {e}"))?;
    let req = http::Request::get(path)
        .header(http::header::HOST, target.to_string())
        .header(http::header::CONNECTION, "close")
        .header(http::header::USER_AGENT, "bg-agent-health")
        .body(Empty::<Bytes>::new())
        .map_err(|e| format!("GET {path}: bad request: {e}"))?;
    // The connection is driven beside the request, in this task; it is
    // dropped with the answer's head (the body is not needed).
    let send = sender.send_request(req);
    tokio::pin!(send, conn);
    let result = tokio::select! {
        biased;
        r = &mut send => r,
        // The connection ended (the server closed it after its answer):
        // the answer, or why there is none, is ready.
        _ = &mut conn => send.await,
    };
    let resp = result.map_err(|e| format!("GET {path} on {target}: {e}"))?;
    if resp.status().is_success() {
        Ok(())
    } else {
        Err(format!("GET {path} on {target} answered {}", resp.status()))
    }
}

/// Describe an exit code: `137` is SIGKILL, other codes above 128 are
/// signals too.
fn describe_exit(code: i64) -> String {
    if code > 128 && code < 128 + 65 {
        let signo = (code - 128) as i32;
        match nix::sys::signal::Signal::try_from(signo) {
            Ok(sig) => format!("killed by {sig} (exit code {code})"),
            Err(_) => format!("exited with code {code}"),
        }
    } else if code < 0 {
        "exited (exit code unknown)".to_string()
    } else {
        format!("exited with code {code}")
    }
}

/// One check outcome as the monitor loop sees it.
enum Outcome {
    Pass,
    Fail(String),
    Exited(String),
}

/// Spawns the health-check task of a replica.
#[derive(Debug)]
pub struct HealthMonitor;

impl HealthMonitor {
    /// Check `target` per `config` until `cancel` fires or the replica
    /// exits, on a task of `tasks`. The first check runs at once, then one
    /// every `interval`.
    pub fn spawn(
        tasks: &TaskTracker,
        target: SocketAddr,
        config: HealthConfig,
        runtime: Arc<dyn Runtime>,
        handle: ReplicaHandle,
        cancel: CancellationToken,
    ) -> HealthWatch {
        let check = config.check.clone();
        let timeout = config.timeout;
        let probe_fn = move || -> BoxFuture<'static, Result<(), String>> {
            let check = check.clone();
            Box::pin(async move { probe(target, &check, timeout).await })
        };
        Self::spawn_with(tasks, config, runtime, handle, cancel, probe_fn)
    }

    /// [`HealthMonitor::spawn`] with a custom probe, for tests and for
    /// checks that are not HTTP or TCP.
    pub fn spawn_with<F>(
        tasks: &TaskTracker,
        config: HealthConfig,
        runtime: Arc<dyn Runtime>,
        handle: ReplicaHandle,
        cancel: CancellationToken,
        mut probe_fn: F,
    ) -> HealthWatch
    where
        F: FnMut() -> BoxFuture<'static, Result<(), String>> + Send + 'static,
    {
        let (tx, rx) = watch::channel(HealthReport::starting());
        tasks.spawn(async move {
            let mut tracker = HealthTracker::new(config.healthy_threshold, config.unhealthy_threshold);
            let mut runtime_view = RuntimeView::default();
            let mut ticks = tokio::time::interval(config.interval);
            ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tokio::select! {
                    _ = cancel.cancelled() => return,
                    _ = ticks.tick() => {}
                }
                let outcome = tokio::select! {
                    _ = cancel.cancelled() => return,
                    o = check_once(runtime.as_ref(), &handle, config.timeout, &mut runtime_view, &mut probe_fn) => o,
                };
                let report = match outcome {
                    Outcome::Exited(reason) => {
                        HealthReport { health: Health::Unhealthy, reason: Some(reason), exited: true }
                    }
                    Outcome::Pass => {
                        let health = tracker.record(true);
                        let reason = match health {
                            Health::Healthy => None,
                            _ => tx.borrow().reason.clone(),
                        };
                        HealthReport { health, reason, exited: false }
                    }
                    Outcome::Fail(reason) => {
                        HealthReport { health: tracker.record(false), reason: Some(reason), exited: false }
                    }
                };
                let exited = report.exited;
                tx.send_if_modified(|cur| {
                    if *cur == report {
                        false
                    } else {
                        tracing::debug!(replica = %handle.name, health = ?report.health, reason = ?report.reason, "health changed");
                        *cur = report;
                        true
                    }
                });
                if exited {
                    return;
                }
            }
        });
        HealthWatch { rx }
    }
}

/// What the monitor remembers of the runtime's answers between checks.
#[derive(Debug, Default)]
struct RuntimeView {
    /// The container's own HEALTHCHECK verdict when the runtime last
    /// answered.
    native: Option<bool>,
    /// The runtime did not answer the last time it was asked.
    unreachable: bool,
}

async fn check_once<F>(
    runtime: &dyn Runtime,
    handle: &ReplicaHandle,
    timeout: Duration,
    view: &mut RuntimeView,
    probe_fn: &mut F,
) -> Outcome
where
    F: FnMut() -> BoxFuture<'static, Result<(), String>>,
{
    // Both at once, so that a slow or hanging engine does not delay the
    // probe; the engine gets as long as a probe does.
    let (state, probed) = tokio::join!(tokio::time::timeout(timeout, runtime.state(handle)), probe_fn());
    let state = match state {
        Ok(Ok(s)) => Ok(s),
        Ok(Err(e)) => Err(e.to_string()),
        Err(_) => Err(format!("no answer within {timeout:?}")),
    };
    match state {
        Ok(RunState::Running { native_health }) => {
            if view.unreachable {
                tracing::info!(replica = %handle.name, "the runtime answers again");
            }
            *view = RuntimeView { native: native_health, unreachable: false };
        }
        Ok(RunState::Exited { code }) => return Outcome::Exited(describe_exit(code)),
        Ok(RunState::Gone) => {
            return Outcome::Exited(
                "the replica is gone (removed, or exited while the agent was down)".into(),
            )
        }
        Err(e) => {
            if !view.unreachable {
                tracing::warn!(replica = %handle.name, error = %e, "cannot read the replica's state from the runtime; judging it by its health check alone until the runtime answers");
            }
            view.unreachable = true;
        }
    }
    match (probed, view.native) {
        (Err(reason), _) => Outcome::Fail(reason),
        (Ok(()), Some(false)) => {
            Outcome::Fail("the container's own HEALTHCHECK has not passed (starting or unhealthy)".into())
        }
        (Ok(()), _) => Outcome::Pass,
    }
}

/// The receiving end of a [`HealthMonitor`].
#[derive(Debug, Clone)]
pub struct HealthWatch {
    rx: watch::Receiver<HealthReport>,
}

impl HealthWatch {
    /// The latest report.
    pub fn current(&self) -> HealthReport {
        self.rx.borrow().clone()
    }

    /// A receiver to `select!` on alongside other events.
    pub fn receiver(&self) -> watch::Receiver<HealthReport> {
        self.rx.clone()
    }

    /// Wait for the next change; `None` once the monitor has ended
    /// (cancelled, or the replica exited and that was already seen).
    pub async fn changed(&mut self) -> Option<HealthReport> {
        self.rx.changed().await.ok()?;
        Some(self.rx.borrow_and_update().clone())
    }

    /// Wait until healthy. Fails at once when the replica exits, or with
    /// the last check's error when `deadline` passes first.
    pub async fn wait_healthy(&mut self, deadline: Duration) -> Result<(), HealthError> {
        let until = tokio::time::Instant::now() + deadline;
        loop {
            let report = self.rx.borrow_and_update().clone();
            if report.health == Health::Healthy {
                return Ok(());
            }
            if report.exited {
                return Err(HealthError::Exited { reason: report.reason.unwrap_or_else(|| "exited".into()) });
            }
            match tokio::time::timeout_at(until, self.rx.changed()).await {
                Ok(Ok(())) => continue,
                Ok(Err(_)) => return Err(HealthError::Cancelled),
                Err(_) => {
                    return Err(HealthError::Deadline {
                        deadline,
                        reason: report.reason.unwrap_or_else(|| "no check passed yet".into()),
                    })
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn becomes_healthy_after_threshold_passes_in_a_row() {
        let mut t = HealthTracker::new(2, 3);
        assert_eq!(t.record(true), Health::Starting);
        assert_eq!(t.record(false), Health::Starting);
        assert_eq!(t.record(true), Health::Starting);
        assert_eq!(t.record(true), Health::Healthy);
    }

    #[test]
    fn starting_replicas_do_not_turn_unhealthy_by_count() {
        let mut t = HealthTracker::new(2, 1);
        for _ in 0..10 {
            assert_eq!(t.record(false), Health::Starting);
        }
    }

    #[test]
    fn healthy_turns_unhealthy_after_threshold_failures_and_back() {
        let mut t = HealthTracker::new(1, 3);
        assert_eq!(t.record(true), Health::Healthy);
        assert_eq!(t.record(false), Health::Healthy);
        assert_eq!(t.record(false), Health::Healthy);
        assert_eq!(t.record(true), Health::Healthy); // resets the count
        assert_eq!(t.record(false), Health::Healthy);
        assert_eq!(t.record(false), Health::Healthy);
        assert_eq!(t.record(false), Health::Unhealthy);
        assert_eq!(t.record(true), Health::Healthy);
    }

    /// A runtime whose `state` answers what the test says (or never).
    struct FakeRuntime(std::sync::Mutex<FakeState>);

    #[derive(Clone, Copy)]
    enum FakeState {
        Running,
        Down,
        Hangs,
        Exited,
    }

    impl FakeRuntime {
        fn set(&self, s: FakeState) {
            *self.0.lock().unwrap() = s;
        }
    }

    impl Runtime for FakeRuntime {
        fn kind(&self) -> &'static str {
            "fake"
        }

        fn start<'a>(
            &'a self,
            _: &'a crate::runtime::ReplicaSpec,
        ) -> BoxFuture<'a, Result<ReplicaHandle, crate::runtime::RuntimeError>> {
            unimplemented!()
        }
        fn stop<'a>(
            &'a self,
            _: &'a ReplicaHandle,
            _: &'a str,
            _: Duration,
        ) -> BoxFuture<'a, Result<crate::runtime::StopReport, crate::runtime::RuntimeError>> {
            unimplemented!()
        }
        fn remove<'a>(
            &'a self,
            _: &'a ReplicaHandle,
        ) -> BoxFuture<'a, Result<(), crate::runtime::RuntimeError>> {
            unimplemented!()
        }
        fn list<'a>(
            &'a self,
            _: Option<&'a str>,
        ) -> BoxFuture<'a, Result<Vec<ReplicaHandle>, crate::runtime::RuntimeError>> {
            unimplemented!()
        }
        fn state<'a>(
            &'a self,
            _: &'a ReplicaHandle,
        ) -> BoxFuture<'a, Result<RunState, crate::runtime::RuntimeError>> {
            let s = *self.0.lock().unwrap();
            Box::pin(async move {
                match s {
                    FakeState::Running => Ok(RunState::Running { native_health: None }),
                    FakeState::Exited => Ok(RunState::Exited { code: 137 }),
                    FakeState::Down => Err(crate::runtime::RuntimeError::Docker {
                        message: "cannot reach the engine".into(),
                        source: None,
                    }),
                    FakeState::Hangs => std::future::pending().await,
                }
            })
        }
        fn logs<'a>(
            &'a self,
            _: &'a ReplicaHandle,
            _: usize,
        ) -> BoxFuture<'a, Result<String, crate::runtime::RuntimeError>> {
            unimplemented!()
        }
    }

    fn config() -> HealthConfig {
        HealthConfig {
            check: HealthCheckKind::Tcp,
            interval: Duration::from_millis(100),
            timeout: Duration::from_millis(500),
            healthy_threshold: 1,
            unhealthy_threshold: 2,
            deadline: Duration::from_secs(10),
        }
    }

    fn handle() -> ReplicaHandle {
        ReplicaHandle {
            runtime_id: "fake".into(),
            name: "bg-web-blue-1".into(),
            service: "web".into(),
            color: crate::api::Color::Blue,
            revision: 1,
            replica: 1,
            addr: "127.0.0.1:1".parse().unwrap(),
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_runtime_that_fails_or_hangs_does_not_make_a_passing_replica_unhealthy() {
        let runtime = Arc::new(FakeRuntime(std::sync::Mutex::new(FakeState::Running)));
        let cancel = CancellationToken::new();
        let mut watch = HealthMonitor::spawn_with(
            &TaskTracker::new(),
            config(),
            runtime.clone(),
            handle(),
            cancel.clone(),
            || Box::pin(async { Ok(()) }),
        );
        watch.wait_healthy(Duration::from_secs(1)).await.unwrap();
        for broken in [FakeState::Down, FakeState::Hangs] {
            runtime.set(broken);
            // Far more checks than unhealthy_threshold.
            tokio::time::sleep(Duration::from_secs(5)).await;
            assert_eq!(watch.current().health, Health::Healthy);
            runtime.set(FakeState::Running);
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
        // It still notices an exit once the runtime answers.
        runtime.set(FakeState::Exited);
        tokio::time::sleep(Duration::from_secs(1)).await;
        let report = watch.current();
        assert!(report.exited && report.health == Health::Unhealthy, "{report:?}");
        cancel.cancel();
    }

    #[tokio::test(start_paused = true)]
    async fn a_failing_probe_still_counts_while_the_runtime_is_down() {
        let runtime = Arc::new(FakeRuntime(std::sync::Mutex::new(FakeState::Running)));
        let cancel = CancellationToken::new();
        let passing = Arc::new(std::sync::atomic::AtomicBool::new(true));
        let p = passing.clone();
        let mut watch = HealthMonitor::spawn_with(
            &TaskTracker::new(),
            config(),
            runtime.clone(),
            handle(),
            cancel.clone(),
            move || {
                let ok = p.load(std::sync::atomic::Ordering::Relaxed);
                Box::pin(async move {
                    if ok {
                        Ok(())
                    } else {
                        Err("refused".into())
                    }
                })
            },
        );
        watch.wait_healthy(Duration::from_secs(1)).await.unwrap();
        runtime.set(FakeState::Down);
        passing.store(false, std::sync::atomic::Ordering::Relaxed);
        tokio::time::sleep(Duration::from_secs(1)).await;
        assert_eq!(watch.current().health, Health::Unhealthy);
        cancel.cancel();
    }

    #[test]
    fn exit_codes_read_well() {
        assert_eq!(describe_exit(137), "killed by SIGKILL (exit code 137)");
        assert_eq!(describe_exit(3), "exited with code 3");
    }
}
