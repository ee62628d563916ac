//! Replica lifecycle inside a controller: start and adopt replicas with
//! their health monitors, wait for a color to become healthy, take a color
//! out of rotation, drain it and stop it.

use super::model::{ReplicaModel, ServiceModel};
use super::plan::{OpCtx, OpFailure};
use super::Service;
use crate::api::{Color, EventKind, Health, OutcomeKind, ReplicaState, Spec};
use crate::health::{HealthMonitor, HealthReport};
use crate::runtime::{ReplicaHandle, ReplicaSpec};
use crate::state::{ReplicaRecord, RevisionSpec};
use bg_proxy::{BackendId, DrainReport};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

/// How often waits re-read the model (health verdicts arrive by watcher).
const POLL: Duration = Duration::from_millis(50);
/// Log lines of a failed replica quoted in a deploy error.
const FAILURE_LOG_LINES: usize = 20;

impl Service {
    /// Ready a new revision's spec before anything starts (the runtime
    /// reads its secrets and files, pulls and pins its image); the runtime's
    /// progress lines become `message` events of the operation.
    pub(super) async fn prepare_spec(&self, ctx: &OpCtx, spec: &Spec) -> Result<Spec, OpFailure> {
        let progress = |line: String| {
            self.emit(Some(ctx.id), EventKind::Message { level: "info".into(), message: line });
        };
        self.shared.runtime.prepare(spec, self.config.pull, &progress).await.map_err(|e| {
            OpFailure::failed(format!("revision {} was not started, traffic did not move: {e}", ctx.revision))
        })
    }

    /// Start replicas `1..=n` of `color` with `spec`, out of rotation.
    /// Returns the first start error, after removing what did start.
    pub(super) async fn start_color(
        self: &Arc<Self>,
        color: Color,
        spec: &RevisionSpec,
    ) -> Result<(), OpFailure> {
        let n = self.config.replicas;
        let starts = (1..=n).map(|number| self.start_replica(color, number, spec));
        let results = futures_util::future::join_all(starts).await;
        if let Some(err) = results.into_iter().find_map(Result::err) {
            self.retire_color(color, None).await;
            return Err(OpFailure::new(OutcomeKind::Failed, err));
        }
        Ok(())
    }

    /// Start one replica and track it, out of rotation.
    pub(super) async fn start_replica(
        self: &Arc<Self>,
        color: Color,
        number: u32,
        spec: &RevisionSpec,
    ) -> Result<(), String> {
        self.start_replica_as(color, number, spec, ReplicaState::Out).await
    }

    /// Start one replica and track it in traffic state `state`. A
    /// `serving` replica enters the rotation by itself once healthy.
    pub(super) async fn start_replica_as(
        self: &Arc<Self>,
        color: Color,
        number: u32,
        spec: &RevisionSpec,
        state: ReplicaState,
    ) -> Result<(), String> {
        let replica_spec = ReplicaSpec {
            service: self.name.clone(),
            color,
            revision: spec.revision,
            replica: number,
            replicas: self.config.replicas,
            spec: spec.spec.clone(),
            app_port: self.config.port,
            pull: self.config.pull,
            stop_signal: self.config.stop_signal.clone(),
            stop_grace: self.config.stop_grace,
        };
        let handle = self
            .shared
            .runtime
            .start(&replica_spec)
            .await
            .map_err(|e| format!("cannot start replica {number} of {color}: {e}"))?;
        self.track_replica(color, handle, spec.clone(), state).await;
        Ok(())
    }

    /// Track a running replica (started or adopted): start its health
    /// monitor and a watcher that feeds verdicts into the model and the
    /// route table.
    pub(super) async fn track_replica(
        self: &Arc<Self>,
        color: Color,
        handle: ReplicaHandle,
        spec: RevisionSpec,
        state: ReplicaState,
    ) {
        let monitor = self.shared.shutdown.child_token();
        let (prober, target, check) =
            (self.shared.prober.clone(), handle.addr, self.config.health.check.clone());
        let timeout = self.config.health.timeout;
        let watch = HealthMonitor::spawn_with(
            &self.shared.tasks,
            self.config.health.clone(),
            self.shared.runtime.clone(),
            handle.clone(),
            monitor.clone(),
            move || prober(target, check.clone(), timeout),
        );
        let backend = backend_id(&handle);
        let replica = ReplicaModel {
            number: handle.replica,
            backend: backend.clone(),
            handle,
            health: Health::Starting,
            reason: None,
            exited: false,
            state,
            spec,
            monitor: monitor.clone(),
        };
        self.update(move |m| m.put_replica(color, replica)).await;
        let service = self.clone();
        let mut rx = watch.receiver();
        self.shared.tasks.spawn(async move {
            loop {
                tokio::select! {
                    _ = monitor.cancelled() => break,
                    changed = rx.changed() => if changed.is_err() { break },
                }
                let report = rx.borrow_and_update().clone();
                // The monitor ends at shutdown, when the actor may be gone.
                tokio::select! {
                    _ = monitor.cancelled() => break,
                    _ = service.on_health(color, &backend, report) => {}
                }
            }
        });
    }

    /// Keep a serving replica that vanished while the agent was down in
    /// the model as exited, so that the healer replaces it.
    pub(super) async fn track_gone(&self, color: Color, record: &ReplicaRecord, spec: RevisionSpec) {
        let handle = ReplicaHandle {
            runtime_id: record.runtime_id.clone(),
            name: record.name.clone(),
            service: self.name.clone(),
            color,
            revision: record.revision,
            replica: record.number,
            addr: record.addr.parse().unwrap_or(SocketAddr::from(([127, 0, 0, 1], 0))),
        };
        let replica = ReplicaModel {
            number: handle.replica,
            backend: backend_id(&handle),
            handle,
            health: Health::Unhealthy,
            reason: Some("gone since the agent last ran".into()),
            exited: true,
            state: ReplicaState::Serving,
            spec,
            monitor: CancellationToken::new(),
        };
        self.update(move |m| m.put_replica(color, replica)).await;
        self.heal_wake.notify_one();
    }

    /// A health verdict changed: update the model, and the route table when
    /// rotation changes. A serving replica that turns unhealthy leaves the
    /// rotation here, at once.
    async fn on_health(&self, color: Color, backend: &BackendId, report: HealthReport) {
        let HealthReport { health, reason, exited, .. } = report;
        let backend = backend.clone();
        let changed = self
            .update(move |model| {
                let op = model.operation.as_ref().map(|o| o.id);
                let r = model.color(color).replicas.iter_mut().find(|r| r.backend == backend)?;
                r.exited |= exited;
                if r.health == health {
                    r.reason = reason;
                    return None;
                }
                r.health = health;
                r.reason = reason.clone();
                Some((
                    op,
                    EventKind::Replica {
                        color,
                        replica: r.number.to_string(),
                        health,
                        state: r.state,
                        reason,
                    },
                ))
            })
            .await;
        let Some((op, event)) = changed else { return };
        if let EventKind::Replica { health: Health::Unhealthy, ref replica, ref reason, .. } = event {
            tracing::warn!(service = %self.name, %color, replica, reason = reason.as_deref().unwrap_or(""), "replica unhealthy");
        }
        self.emit(op, event);
        // An exit may call for a replacement, and a replacement turning
        // healthy is worth a line: either way the healer looks now.
        if exited || health == Health::Healthy {
            self.heal_wake.notify_one();
        }
    }

    /// Wait until every replica of `color` is healthy, or fail at the
    /// health deadline (or as soon as one exits) with the reason and the
    /// replica's last log lines.
    pub(super) async fn wait_healthy(&self, color: Color, ctx: &OpCtx) -> Result<(), OpFailure> {
        let deadline = Instant::now() + self.config.health.deadline;
        let wanted = self.config.replicas;
        let mut last_healthy = u32::MAX;
        loop {
            let (healthy, exited) = {
                let model = self.view();
                let replicas = model.colors.get(&color).map(|c| c.replicas.as_slice()).unwrap_or(&[]);
                let healthy = replicas.iter().filter(|r| r.health == Health::Healthy).count() as u32;
                // The health monitor's verdict, not its wording: a replica
                // killed by a signal (OOM) has exited too.
                let exited = replicas
                    .iter()
                    .find(|r| r.exited)
                    .map(|r| (r.number, r.handle.clone(), r.reason.clone().unwrap_or_default()));
                (healthy, exited)
            };
            if healthy != last_healthy {
                last_healthy = healthy;
                self.emit(Some(ctx.id), EventKind::Progress { healthy, wanted, inflight: 0 });
            }
            if healthy >= wanted {
                return Ok(());
            }
            if let Some((number, handle, reason)) = exited {
                return Err(self.health_failure(color, number, &handle, &reason).await);
            }
            if Instant::now() >= deadline {
                let worst = {
                    let model = self.view();
                    model.colors.get(&color).and_then(|c| {
                        c.replicas.iter().find(|r| r.health != Health::Healthy).map(|r| {
                            (
                                r.number,
                                r.handle.clone(),
                                r.reason.clone().unwrap_or_else(|| "no passing check yet".into()),
                            )
                        })
                    })
                };
                let (number, handle, reason) =
                    worst.ok_or_else(|| OpFailure::failed("replicas vanished while starting"))?;
                let reason = format!(
                    "not healthy within {} ({reason})",
                    humantime::format_duration(self.config.health.deadline)
                );
                return Err(self.health_failure(color, number, &handle, &reason).await);
            }
            tokio::select! {
                _ = ctx.cancel.cancelled() => return Err(OpFailure::new(OutcomeKind::Aborted, "aborted while waiting for health checks")),
                _ = tokio::time::sleep(POLL) => {}
            }
        }
    }

    async fn health_failure(
        &self,
        color: Color,
        number: u32,
        handle: &ReplicaHandle,
        reason: &str,
    ) -> OpFailure {
        let logs = self.shared.runtime.logs(handle, FAILURE_LOG_LINES).await.unwrap_or_default();
        let mut message = format!("replica {number} of {color} ({}): {reason}", handle.name);
        let logs = logs.trim_end();
        if !logs.is_empty() {
            message.push_str("\nlast log lines:\n");
            message.push_str(logs);
        }
        OpFailure::failed(message)
    }

    /// Set the traffic state of the replicas of `color` that `which`
    /// selects, and report each change as an event. The route table is not
    /// touched: callers apply it once their whole change is in the model.
    /// Returns the backends of the selected replicas.
    pub(super) async fn set_state(
        &self,
        color: Color,
        which: impl Fn(&ReplicaModel) -> bool + Send + 'static,
        state: ReplicaState,
    ) -> Vec<BackendId> {
        let (op, changed, backends) = self
            .update(move |model| {
                let op = model.operation.as_ref().map(|o| o.id);
                let backends = model
                    .color(color)
                    .replicas
                    .iter()
                    .filter(|r| which(r))
                    .map(|r| r.backend.clone())
                    .collect::<Vec<_>>();
                let changed = model.set_states(color, which, state);
                (op, changed, backends)
            })
            .await;
        for event in changed {
            self.emit(op, event);
        }
        backends
    }

    /// Set the state of every replica of `color`.
    pub(super) async fn set_color_state(&self, color: Color, state: ReplicaState) {
        self.set_state(color, |_| true, state).await;
    }

    /// Drain the given backends, reporting in-flight counts as progress.
    pub(super) async fn drain_backends(
        &self,
        color: Color,
        backends: Vec<BackendId>,
        op: Option<u64>,
    ) -> DrainReport {
        if backends.is_empty() {
            return DrainReport::default();
        }
        let wanted = self.config.replicas;
        let drain = self.proxy.drain(&backends, self.config.deploy.drain_timeout);
        tokio::pin!(drain);
        let mut last = u64::MAX;
        let report = loop {
            let inflight: u64 = backends.iter().map(|id| self.proxy.inflight(id)).sum();
            if inflight != last {
                last = inflight;
                self.emit(op, EventKind::Progress { healthy: wanted, wanted, inflight });
            }
            tokio::select! {
                report = &mut drain => break report,
                _ = tokio::time::sleep(Duration::from_millis(200)) => {}
            }
        };
        self.emit(
            op,
            EventKind::Drained {
                color,
                finished: report.finished,
                cut: report.cut,
                elapsed_ms: report.elapsed.as_millis() as u64,
            },
        );
        report
    }

    /// Take `color` out of rotation, drain it, stop and remove its replicas,
    /// and forget its spec.
    pub(super) async fn retire_color(&self, color: Color, op: Option<u64>) {
        // Replicas already out of rotation were drained when they left it;
        // drain again only what was serving or still has work.
        let serving =
            self.set_state(color, |r| r.state == ReplicaState::Serving, ReplicaState::Draining).await;
        let backends = self.backends_of(color);
        if !serving.is_empty() || backends.iter().any(|b| self.proxy.inflight(b) > 0) {
            self.drain_backends(color, backends, op).await;
        }
        let replicas = self
            .update(move |m| {
                let c = m.color(color);
                c.warm_until = None;
                c.replicas.clone()
            })
            .await;
        self.stop_replicas(color, &replicas, op).await;
        self.update(move |m| {
            let c = m.color(color);
            c.replicas.clear();
            c.spec = None;
        })
        .await;
    }

    /// Stop and remove replicas (already out of rotation and drained).
    pub(super) async fn stop_replicas(&self, color: Color, replicas: &[ReplicaModel], op: Option<u64>) {
        let signal = self.config.stop_signal.as_str();
        let grace = self.config.stop_grace;
        let stops = replicas.iter().map(|r| async move {
            self.pre_stop(op, color, r).await;
            r.monitor.cancel();
            let outcome = self.shared.runtime.stop(&r.handle, signal, grace).await;
            let reason = match &outcome {
                Ok(rep) if rep.killed => format!(
                    "did not exit within stop_grace {} after {signal}: killed",
                    humantime::format_duration(grace)
                ),
                Ok(rep) => format!("exited {}ms after {signal}", rep.elapsed.as_millis()),
                Err(e) => format!("stop failed: {e}"),
            };
            if let Err(e) = self.shared.runtime.remove(&r.handle).await {
                tracing::warn!(service = %self.name, replica = %r.handle.name, error = %e, "cannot remove replica");
            }
            self.emit(
                op,
                EventKind::Replica {
                    color,
                    replica: r.number.to_string(),
                    health: r.health,
                    state: ReplicaState::Stopped,
                    reason: Some(reason),
                },
            );
        });
        futures_util::future::join_all(stops).await;
    }

    /// The backends of one color.
    pub(super) fn backends_of(&self, color: Color) -> Vec<BackendId> {
        let model = self.view();
        model
            .colors
            .get(&color)
            .map(|c| c.replicas.iter().map(|r| r.backend.clone()).collect())
            .unwrap_or_default()
    }
}

/// A replica's name in the proxy: its name and the start of its runtime id,
/// so that a replacement under the same name is a new backend.
fn backend_id(handle: &ReplicaHandle) -> BackendId {
    let short: String = handle.runtime_id.chars().take(12).collect();
    BackendId::from(format!("{}#{short}", handle.name))
}

impl ServiceModel {
    /// Track `replica` in `color`, in place of one with the same number.
    pub(crate) fn put_replica(&mut self, color: Color, replica: ReplicaModel) {
        let c = self.color(color);
        c.replicas.retain(|r| r.number != replica.number);
        c.replicas.push(replica);
        c.replicas.sort_by_key(|r| r.number);
    }

    /// Replicas of `color` that are unhealthy now, with their reasons.
    pub(crate) fn unhealthy(&self, color: Color) -> Vec<(u32, String)> {
        self.colors
            .get(&color)
            .map(|c| {
                c.replicas
                    .iter()
                    .filter(|r| r.health == Health::Unhealthy)
                    .map(|r| (r.number, r.reason.clone().unwrap_or_default()))
                    .collect()
            })
            .unwrap_or_default()
    }
}
