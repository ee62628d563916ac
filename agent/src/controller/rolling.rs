//! Rolling updates inside the active color (Swarm semantics, but lossless)
//! and the manual, nginx-style replica walk-through: drain, update, enable.
//!
//! Every old replica leaves the rotation and is drained before it gets its
//! stop signal, so stop-first loses no request either: with one replica,
//! requests wait in the proxy's queue while its successor starts.

use super::model::{Paused, ServiceModel};
use super::plan::{validate_spec, OpCtx, OpFailure, RollingPlan};
use super::{ControlError, Service};
use crate::api::{
    Color, EventKind, Health, OutcomeKind, Phase, ReplicaState, RollingRequest, Spec, SpecOverrides,
};
use crate::config::{FailureAction, RollingConfig, RollingOrder};
use crate::state::RevisionSpec;
use std::sync::Arc;
use std::time::Duration;
use tokio::time::Instant;

impl Service {
    /// Validate a rolling request against the model and the config.
    pub(super) fn plan_rolling(
        &self,
        model: &ServiceModel,
        req: &RollingRequest,
    ) -> Result<RollingPlan, ControlError> {
        let active = model
            .active
            .ok_or_else(|| ControlError::BadRequest("nothing to update: deploy a first revision".into()))?;
        if model.is_candidate(active.other()) {
            return Err(ControlError::BadRequest(format!(
                "a candidate revision is deployed in {}; promote or abort it before a rolling update",
                active.other()
            )));
        }
        let cfg = &self.config.rolling;
        let parallelism = req.parallelism.unwrap_or(cfg.parallelism);
        if parallelism == 0 {
            return Err(ControlError::BadRequest("parallelism must be at least 1".into()));
        }
        let order = req.order.unwrap_or(cfg.order);
        let failure_action = req.failure_action.unwrap_or(cfg.failure_action);
        let max_failure_ratio = req.max_failure_ratio.unwrap_or(cfg.max_failure_ratio);
        if !(0.0..=1.0).contains(&max_failure_ratio) {
            return Err(ControlError::BadRequest(format!(
                "max_failure_ratio {max_failure_ratio} is not between 0 and 1"
            )));
        }
        let color = model.colors.get(&active);
        let previous = color
            .and_then(|c| c.spec.clone())
            .ok_or_else(|| ControlError::BadRequest("the active color has no spec".into()))?;
        let resuming = match &model.paused {
            Some(Paused::Rolling(plan)) => Some(plan),
            _ => None,
        };
        if req.resume && resuming.is_none() {
            return Err(ControlError::BadRequest("nothing to resume: no rolling update is paused".into()));
        }
        let overrides = req.overrides();
        let target = match resuming {
            Some(paused) if req.resume && overrides == SpecOverrides::default() => paused.target.clone(),
            Some(paused) if req.resume => RevisionSpec {
                revision: model.revision + 1,
                spec: paused.target.spec.with_overrides(&overrides),
            },
            _ => RevisionSpec {
                revision: model.revision + 1,
                spec: self.config.spec.with_overrides(&overrides),
            },
        };
        validate_spec(&target.spec, self.shared.runtime.kind())?;
        let previous = match resuming {
            Some(paused) if req.resume => paused.previous.clone(),
            _ => previous,
        };
        let settings = RollingConfig {
            parallelism,
            delay: req.delay.map_or(cfg.delay, Duration::from),
            order,
            failure_action,
            monitor: req.monitor.map_or(cfg.monitor, Duration::from),
            max_failure_ratio,
        };
        Ok(RollingPlan { target, previous, settings })
    }

    /// Replace every replica of the active color that does not run the
    /// target spec, `parallelism` at a time.
    pub(super) async fn rolling(
        self: &Arc<Self>,
        ctx: &OpCtx,
        mut plan: RollingPlan,
    ) -> Result<String, OpFailure> {
        plan.target.spec = self.prepare_spec(ctx, &plan.target.spec).await?;
        let color = self.view().active.expect("planned rolling has an active color");
        let revision = plan.target.revision;
        self.update(move |m| {
            m.revision = m.revision.max(revision);
            if matches!(m.paused, Some(Paused::Rolling(_))) {
                m.paused = None;
            }
        })
        .await;
        let todo: Vec<u32> = {
            let m = self.view();
            m.colors[&color]
                .replicas
                .iter()
                .filter(|r| r.spec.revision != plan.target.revision)
                .map(|r| r.number)
                .collect()
        };
        // A paused update may have left a slot empty: fill it first.
        self.refill(ctx, color, &plan.target).await.map_err(|e| {
            OpFailure::failed(format!("cannot bring {color} back to {} replicas: {e}", self.config.replicas))
        })?;
        let batches: Vec<Vec<u32>> =
            todo.chunks(plan.settings.parallelism as usize).map(<[u32]>::to_vec).collect();
        let total = batches.len().max(1);
        let mut failed = 0usize;
        for (i, batch) in batches.iter().enumerate() {
            if i > 0 && !plan.settings.delay.is_zero() {
                self.phase(
                    ctx,
                    Phase::Delay,
                    format!(
                        "waiting {} before the next batch",
                        humantime::format_duration(plan.settings.delay)
                    ),
                )
                .await;
                tokio::select! {
                    _ = ctx.cancel.cancelled() => return Err(OpFailure::new(OutcomeKind::Aborted, "rolling update aborted between batches")),
                    _ = tokio::time::sleep(plan.settings.delay) => {}
                }
            }
            self.phase(
                ctx,
                Phase::Replacing,
                format!(
                    "batch {}/{}: replica(s) {:?} to revision {}",
                    i + 1,
                    batches.len(),
                    batch,
                    plan.target.revision
                ),
            )
            .await;
            let mut result = self.replace_batch(ctx, color, batch, &plan.target, plan.settings.order).await;
            if result.is_ok() && !plan.settings.monitor.is_zero() {
                self.phase(
                    ctx,
                    Phase::Monitor,
                    format!(
                        "watching batch {} for {}",
                        i + 1,
                        humantime::format_duration(plan.settings.monitor)
                    ),
                )
                .await;
                result = self.watch_batch(ctx, color, plan.settings.monitor).await;
            }
            let Err(reason) = result else { continue };
            if ctx.cancel.is_cancelled() {
                return Err(OpFailure::new(
                    OutcomeKind::Aborted,
                    format!("rolling update aborted: {reason}"),
                ));
            }
            failed += 1;
            let ratio = failed as f64 / total as f64;
            self.emit(
                Some(ctx.id),
                EventKind::Message {
                    level: "warn".into(),
                    message: format!("batch {} failed: {reason}", i + 1),
                },
            );
            if ratio <= plan.settings.max_failure_ratio
                || plan.settings.failure_action == FailureAction::Continue
            {
                continue;
            }
            return Err(match plan.settings.failure_action {
                FailureAction::Pause => {
                    let paused = Paused::Rolling(Box::new(plan.clone()));
                    self.update(move |m| m.paused = Some(paused)).await;
                    OpFailure::new(
                        OutcomeKind::Paused,
                        format!("rolling update paused after batch {}: {reason}. Fix it, then: bgctl rolling {} --resume", i + 1, self.name),
                    )
                }
                _ => {
                    self.phase(
                        ctx,
                        Phase::RollingBack,
                        format!(
                            "batch {} failed ({reason}); back to revision {}",
                            i + 1,
                            plan.previous.revision
                        ),
                    )
                    .await;
                    let back: Vec<u32> = {
                        let m = self.view();
                        m.colors[&color]
                            .replicas
                            .iter()
                            .filter(|r| r.spec.revision != plan.previous.revision)
                            .map(|r| r.number)
                            .collect()
                    };
                    for chunk in back.chunks(plan.settings.parallelism as usize) {
                        if let Err(e) = self
                            .replace_batch(ctx, color, chunk, &plan.previous, RollingOrder::StartFirst)
                            .await
                        {
                            return Err(OpFailure::failed(format!(
                                "rollback of the rolling update failed too: {e}"
                            )));
                        }
                    }
                    if let Err(e) = self.refill(ctx, color, &plan.previous).await {
                        return Err(OpFailure::failed(format!(
                            "rollback of the rolling update failed too: {e}"
                        )));
                    }
                    let previous = plan.previous.clone();
                    self.update(move |m| m.color(color).spec = Some(previous)).await;
                    OpFailure::new(
                        OutcomeKind::RolledBack,
                        format!(
                            "rolling update rolled back to revision {}: {reason}",
                            plan.previous.revision
                        ),
                    )
                }
            });
        }
        let (previous, target) = (plan.previous.clone(), plan.target.clone());
        self.update(move |m| {
            m.previous = Some(previous);
            m.color(color).spec = Some(target);
        })
        .await;
        Ok(format!(
            "every replica of {color} runs revision {} ({failed} failed batch(es))",
            plan.target.revision
        ))
    }

    /// Start replicas with `spec` until the color has `replicas` again
    /// (a failed stop-first batch leaves its slot empty). New replicas take
    /// the smallest free numbers.
    async fn refill(self: &Arc<Self>, ctx: &OpCtx, color: Color, spec: &RevisionSpec) -> Result<(), String> {
        loop {
            let free = {
                let m = self.view();
                let have: Vec<u32> = m
                    .colors
                    .get(&color)
                    .map(|c| c.replicas.iter().map(|r| r.number).collect())
                    .unwrap_or_default();
                if have.len() as u32 >= self.config.replicas {
                    return Ok(());
                }
                (1..).find(|n| !have.contains(n)).expect("a free number")
            };
            self.start_into_rotation(ctx, color, free, spec).await?;
        }
    }

    /// Replace the given replicas with `spec`, in `order`.
    async fn replace_batch(
        self: &Arc<Self>,
        ctx: &OpCtx,
        color: Color,
        batch: &[u32],
        spec: &RevisionSpec,
        order: RollingOrder,
    ) -> Result<(), String> {
        match order {
            RollingOrder::StopFirst => {
                self.retire_replicas(Some(ctx.id), color, batch).await;
                let starts = batch.iter().map(|&n| self.start_into_rotation(ctx, color, n, spec));
                let results = futures_util::future::join_all(starts).await;
                results.into_iter().collect::<Result<Vec<()>, String>>().map(|_| ())
            }
            RollingOrder::StartFirst => {
                // New replicas take fresh numbers so that old and new can
                // run side by side under the documented container names.
                let fresh: Vec<u32> = {
                    let m = self.view();
                    let max = m
                        .colors
                        .get(&color)
                        .and_then(|c| c.replicas.iter().map(|r| r.number).max())
                        .unwrap_or(0);
                    (1..=batch.len() as u32).map(|i| max + i).collect()
                };
                let starts = fresh.iter().map(|&n| self.start_into_rotation(ctx, color, n, spec));
                let results: Result<Vec<()>, String> =
                    futures_util::future::join_all(starts).await.into_iter().collect();
                if let Err(e) = results {
                    self.retire_replicas(Some(ctx.id), color, &fresh).await;
                    return Err(e);
                }
                self.retire_replicas(Some(ctx.id), color, batch).await;
                Ok(())
            }
        }
    }

    /// Start replica `number` with `spec`, wait until healthy, put it in
    /// rotation. On failure it is removed again.
    async fn start_into_rotation(
        self: &Arc<Self>,
        ctx: &OpCtx,
        color: Color,
        number: u32,
        spec: &RevisionSpec,
    ) -> Result<(), String> {
        self.start_replica(color, number, spec).await?;
        if let Err(e) = self.wait_replica_healthy(ctx, color, number).await {
            self.retire_replicas(Some(ctx.id), color, &[number]).await;
            return Err(e);
        }
        self.set_replica_state(color, number, ReplicaState::Serving).await;
        Ok(())
    }

    /// Take replicas out of rotation, drain them, stop and forget them.
    pub(super) async fn retire_replicas(&self, op: Option<u64>, color: Color, numbers: &[u32]) {
        let picked = numbers.to_vec();
        let backends =
            self.set_state(color, move |r| picked.contains(&r.number), ReplicaState::Draining).await;
        let replicas: Vec<_> = self
            .view()
            .colors
            .get(&color)
            .map(|c| c.replicas.iter().filter(|r| numbers.contains(&r.number)).cloned().collect())
            .unwrap_or_default();
        self.drain_backends(color, backends, op).await;
        self.stop_replicas(color, &replicas, op).await;
        let gone = numbers.to_vec();
        self.update(move |m| m.color(color).replicas.retain(|r| !gone.contains(&r.number))).await;
    }

    async fn wait_replica_healthy(&self, ctx: &OpCtx, color: Color, number: u32) -> Result<(), String> {
        let deadline = Instant::now() + self.config.health.deadline;
        loop {
            let (health, reason, exited) = {
                let m = self.view();
                match m.colors.get(&color).and_then(|c| c.replicas.iter().find(|r| r.number == number)) {
                    Some(r) => (r.health, r.reason.clone(), r.exited),
                    None => return Err(format!("replica {number} vanished while starting")),
                }
            };
            if health == Health::Healthy {
                return Ok(());
            }
            if exited || Instant::now() >= deadline {
                return Err(format!(
                    "replica {number} of {color} not healthy within {}: {}",
                    humantime::format_duration(self.config.health.deadline),
                    reason.unwrap_or_else(|| "no passing check".into())
                ));
            }
            tokio::select! {
                _ = ctx.cancel.cancelled() => return Err("aborted".into()),
                _ = tokio::time::sleep(Duration::from_millis(50)) => {}
            }
        }
    }

    async fn watch_batch(&self, ctx: &OpCtx, color: Color, window: Duration) -> Result<(), String> {
        let end = Instant::now() + window;
        while Instant::now() < end {
            let sick = self.view().unhealthy(color).into_iter().next();
            if let Some((n, reason)) = sick {
                return Err(format!("replica {n} turned unhealthy: {reason}"));
            }
            tokio::select! {
                _ = ctx.cancel.cancelled() => return Err("aborted".into()),
                _ = tokio::time::sleep(Duration::from_millis(100)) => {}
            }
        }
        Ok(())
    }

    async fn set_replica_state(&self, color: Color, number: u32, state: ReplicaState) {
        self.set_state(color, move |r| r.number == number, state).await;
    }

    /// Resolve a replica id (`2` or `green-2`) within the active color.
    pub(super) fn find_replica(&self, m: &ServiceModel, id: &str) -> Result<(Color, u32), ControlError> {
        let unknown = || ControlError::UnknownReplica { service: self.name.clone(), replica: id.to_string() };
        let (color, number) = match id.split_once('-') {
            Some((c, n)) => (c.parse::<Color>().map_err(|_| unknown())?, n),
            None => (m.active.ok_or_else(unknown)?, id),
        };
        let number: u32 = number.parse().map_err(|_| unknown())?;
        m.colors
            .get(&color)
            .and_then(|c| c.replicas.iter().find(|r| r.number == number))
            .ok_or_else(unknown)?;
        Ok((color, number))
    }

    /// `replica drain`: out of rotation, wait for its in-flight requests.
    pub(super) async fn replica_drain(
        &self,
        ctx: &OpCtx,
        color: Color,
        number: u32,
    ) -> Result<String, OpFailure> {
        let backends = self.set_state(color, move |r| r.number == number, ReplicaState::Draining).await;
        if backends.is_empty() {
            return Err(OpFailure::failed("replica vanished"));
        }
        self.phase(ctx, Phase::Draining, format!("draining replica {number} of {color}")).await;
        let report = self.drain_backends(color, backends, Some(ctx.id)).await;
        self.set_replica_state(color, number, ReplicaState::Out).await;
        Ok(format!(
            "replica {number} of {color} is out of rotation ({} request(s) finished, {} cut)",
            report.finished, report.cut
        ))
    }

    /// `replica enable`: back in rotation once healthy.
    pub(super) async fn replica_enable(
        &self,
        ctx: &OpCtx,
        color: Color,
        number: u32,
    ) -> Result<String, OpFailure> {
        self.wait_replica_healthy(ctx, color, number).await.map_err(OpFailure::failed)?;
        self.set_replica_state(color, number, ReplicaState::Serving).await;
        Ok(format!("replica {number} of {color} is back in rotation"))
    }

    /// `replica update`: replace an out-of-rotation replica with a new
    /// spec and wait until healthy; it stays out until enabled.
    pub(super) async fn replica_update(
        self: &Arc<Self>,
        ctx: &OpCtx,
        color: Color,
        number: u32,
        overrides: &SpecOverrides,
    ) -> Result<String, OpFailure> {
        let (old, serving) = {
            let m = self.view();
            let r = m
                .colors
                .get(&color)
                .and_then(|c| c.replicas.iter().find(|r| r.number == number))
                .ok_or_else(|| OpFailure::failed("replica vanished"))?;
            (r.spec.clone(), r.state == ReplicaState::Serving)
        };
        let spec: Spec = self.prepare_spec(ctx, &old.spec.with_overrides(overrides)).await?;
        if serving {
            self.replica_drain(ctx, color, number).await?;
        }
        let revision = self
            .update(|m| {
                m.revision += 1;
                m.revision
            })
            .await;
        let new = RevisionSpec { revision, spec };
        let replica = self.replica(color, number);
        if let Some(r) = replica {
            self.phase(ctx, Phase::Stopping, format!("stopping replica {number} of {color}")).await;
            self.stop_replicas(color, std::slice::from_ref(&r), Some(ctx.id)).await;
            // The slot stays recorded, out of rotation, until the new
            // replica takes it: after a crash in between, recovery adopts
            // whichever replica runs under its name, out of rotation.
        }
        self.phase(
            ctx,
            Phase::Starting,
            format!("starting replica {number} of {color} with revision {revision}"),
        )
        .await;
        let started = match self.start_replica(color, number, &new).await {
            Ok(()) => self.wait_replica_healthy(ctx, color, number).await,
            Err(e) => Err(e),
        };
        if let Err(e) = started {
            // Put the old spec back, still out of rotation.
            let failed = self.replica(color, number);
            if let Some(r) = failed {
                self.stop_replicas(color, std::slice::from_ref(&r), Some(ctx.id)).await;
            }
            if self.start_replica(color, number, &old).await.is_err() {
                self.update(move |m| m.color(color).replicas.retain(|x| x.number != number)).await;
            }
            return Err(OpFailure::failed(format!(
                "replica {number} update failed, it runs revision {} again (out of rotation): {e}",
                old.revision
            )));
        }
        Ok(format!("replica {number} of {color} runs revision {revision}, healthy and out of rotation: bgctl replica enable {} {number}", self.name))
    }

    /// Replica `number` of `color`, as last committed.
    fn replica(&self, color: Color, number: u32) -> Option<super::model::ReplicaModel> {
        self.view().colors.get(&color)?.replicas.iter().find(|r| r.number == number).cloned()
    }
}
