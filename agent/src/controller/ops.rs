//! The operations: deploy, promote (switch, drain, monitor, stop or keep
//! warm), rollback, abort and canary. Each checks its preconditions in
//! [`Service::plan`] before it is accepted, so a refused request changes
//! nothing; a failure after acceptance leaves traffic where it was, or puts
//! it back.

use super::actor::Hold;
use super::model::{Paused, ServiceModel};
use super::plan::{validate_spec, CanaryPlan, Current, OpCtx, OpFailure, Plan, RollingPlan};
use super::{ControlError, Operation, Service};
use crate::api::{CanaryRequest, Color, EventKind, Health, OutcomeKind, Phase, ReplicaState, Spec, Weights};
use crate::config::FailureAction;
use crate::state::RevisionSpec;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};
// tokio's clock, so deadlines follow paused time in tests.
use tokio::time::Instant;

/// How often the monitor window and canary steps look at the numbers.
const MONITOR_TICK: Duration = Duration::from_millis(250);
/// Fewest requests of the new color before its error rate is judged during
/// a monitor window.
const MONITOR_MIN_REQUESTS: u64 = 20;

impl Service {
    /// Check a request against the model; nothing changes on refusal.
    pub(super) fn plan(&self, model: &ServiceModel, request: &Operation) -> Result<Plan, ControlError> {
        let idle = model.idle();
        let empty = Plan::empty();
        match request {
            Operation::Deploy(req) => {
                let spec = self.config.spec.with_overrides(&req.overrides());
                validate_spec(&spec, self.shared.runtime.kind())?;
                if req.converge {
                    if let Some((current, revision)) = current(model, &spec) {
                        let target = match current {
                            Current::Active(c) | Current::Candidate(c) => c,
                        };
                        return Ok(Plan {
                            revision: Some(revision),
                            target: Some(target),
                            current: Some(current),
                            ..empty
                        });
                    }
                }
                Ok(Plan { revision: Some(model.revision + 1), target: Some(idle), spec: Some(spec), ..empty })
            }
            Operation::Promote => {
                if let Some(Paused::Promote { old }) = &model.paused {
                    let revision =
                        model.active.and_then(|a| model.colors.get(&a)).and_then(|c| c.spec.as_ref());
                    return Ok(Plan {
                        revision: revision.map(|s| s.revision),
                        target: model.active,
                        paused: Some(Paused::Promote { old: *old }),
                        ..empty
                    });
                }
                promotable(model, idle)?;
                Ok(Plan {
                    revision: model.colors.get(&idle).and_then(|c| c.spec.as_ref()).map(|s| s.revision),
                    target: Some(idle),
                    ..empty
                })
            }
            Operation::Rollback => {
                let active = model.active.ok_or_else(|| {
                    ControlError::BadRequest("nothing to roll back: nothing was deployed yet".into())
                })?;
                if model.is_candidate(idle) {
                    return Ok(Plan { target: Some(active), ..empty });
                }
                let warm =
                    model.colors.get(&idle).is_some_and(|c| c.spec.is_some() && !c.replicas.is_empty());
                if warm {
                    return Ok(Plan { target: Some(idle), ..empty });
                }
                match &model.previous {
                    Some(prev) => Ok(Plan {
                        revision: Some(model.revision + 1),
                        target: Some(idle),
                        spec: Some(prev.spec.clone()),
                        ..empty
                    }),
                    None => Err(ControlError::BadRequest(
                        "nothing to roll back to: no previous revision is known".into(),
                    )),
                }
            }
            Operation::Abort => {
                match &model.paused {
                    Some(Paused::Promote { old }) => {
                        return Ok(Plan { target: Some(*old), paused: model.paused.clone(), ..empty })
                    }
                    Some(Paused::Rolling(p)) => {
                        return Ok(Plan {
                            revision: Some(p.previous.revision),
                            target: model.active,
                            paused: model.paused.clone(),
                            ..empty
                        })
                    }
                    None => {}
                }
                if model.is_candidate(idle) {
                    Ok(Plan { target: Some(idle), ..empty })
                } else {
                    Err(ControlError::BadRequest(
                        "nothing to abort: no deploy or canary is in progress".into(),
                    ))
                }
            }
            Operation::Canary(req) => {
                promotable(model, idle)?;
                Ok(Plan { target: Some(idle), canary: Some(canary_plan(req)?), ..empty })
            }
            Operation::Rolling(_) | Operation::ReplicaUpdate(..) if !self.shared.runtime.per_replica_specs() => {
                Err(ControlError::BadRequest(format!(
                    "the {} runtime runs one spec per color (a Swarm service): use deploy and promote, or a canary, instead of rolling or replica update",
                    self.shared.runtime.kind()
                )))
            }
            Operation::Rolling(req) => {
                let plan = self.plan_rolling(model, req)?;
                Ok(Plan {
                    revision: Some(plan.target.revision),
                    target: model.active,
                    rolling: Some(plan),
                    ..empty
                })
            }
            Operation::ReplicaDrain(id) | Operation::ReplicaEnable(id) | Operation::ReplicaUpdate(id, _) => {
                let (color, number) = self.find_replica(model, id)?;
                if let Operation::ReplicaUpdate(_, overrides) = request {
                    validate_spec(&self.config.spec.with_overrides(overrides), self.shared.runtime.kind())?;
                }
                if let Operation::ReplicaEnable(_) = request {
                    let r =
                        model.colors.get(&color).and_then(|c| c.replicas.iter().find(|r| r.number == number));
                    if r.is_some_and(|r| r.state == ReplicaState::Serving) {
                        return Err(ControlError::BadRequest(format!("replica {id} is already in rotation")));
                    }
                }
                Ok(Plan { target: Some(color), replica: Some((color, number)), ..empty })
            }
        }
    }

    /// Run an accepted operation to its end.
    pub(super) async fn run(
        self: &Arc<Self>,
        ctx: &OpCtx,
        request: Operation,
        plan: Plan,
    ) -> Result<String, OpFailure> {
        match request {
            Operation::Deploy(req) => {
                let promote = req.promote.unwrap_or(self.config.deploy.auto_promote);
                match plan.current {
                    Some(Current::Active(color)) => Ok(format!(
                        "revision {} already takes traffic in {color} with this spec: nothing to do",
                        ctx.revision
                    )),
                    Some(Current::Candidate(_)) if promote => self.promote(ctx).await,
                    Some(Current::Candidate(color)) => Ok(format!(
                        "revision {} already runs healthy in {color} with this spec: nothing started",
                        ctx.revision
                    )),
                    None => self.deploy(ctx, plan.spec.expect("deploy plan has a spec"), promote).await,
                }
            }
            Operation::Promote => match plan.paused {
                Some(Paused::Promote { old }) => self.finish_paused_promote(ctx, old).await,
                _ => self.promote(ctx).await,
            },
            Operation::Rollback => self.rollback(ctx, plan).await,
            Operation::Abort if plan.paused.is_some() => self.abort_paused(ctx, plan.paused).await,
            Operation::Abort => {
                let stopped = plan
                    .stopped
                    .map(|o| format!("stopped {} #{} ({}: {}); ", o.kind, o.operation, o.outcome, o.message));
                let Some(target) = plan.target else {
                    return Ok(stopped.unwrap_or_default().trim_end_matches("; ").to_string());
                };
                self.phase(ctx, Phase::Removing, format!("removing the candidate in {target}")).await;
                self.restore_weights().await;
                self.retire_color(target, Some(ctx.id)).await;
                Ok(format!(
                    "{}candidate in {target} removed; traffic stays where it was",
                    stopped.unwrap_or_default()
                ))
            }
            Operation::Canary(_) => self.canary(ctx, plan.canary.expect("canary plan")).await,
            Operation::Rolling(_) => self.rolling(ctx, plan.rolling.expect("rolling plan")).await,
            Operation::ReplicaDrain(_) => {
                let (color, number) = plan.replica.expect("replica plan");
                self.replica_drain(ctx, color, number).await
            }
            Operation::ReplicaEnable(_) => {
                let (color, number) = plan.replica.expect("replica plan");
                self.replica_enable(ctx, color, number).await
            }
            Operation::ReplicaUpdate(_, overrides) => {
                let (color, number) = plan.replica.expect("replica plan");
                self.replica_update(ctx, color, number, &overrides).await
            }
        }
    }

    /// Move the operation to a new phase.
    pub(super) async fn phase(&self, ctx: &OpCtx, phase: Phase, detail: String) {
        let shown = detail.clone();
        self.update(move |m| {
            if let Some(op) = m.operation.as_mut() {
                op.phase = phase;
                op.detail = shown;
            }
        })
        .await;
        tracing::info!(service = %self.name, op = ctx.id, %phase, "{detail}");
        self.emit(Some(ctx.id), EventKind::Phase { phase, detail });
    }

    async fn emit_switched(&self, op: Option<u64>) {
        let (active, weights) = self
            .update(|m| {
                m.last_switch = SystemTime::now().duration_since(UNIX_EPOCH).ok().map(|d| d.as_secs_f64());
                (m.active, m.weights())
            })
            .await;
        self.emit(op, EventKind::Switched { active, weights });
        self.settle_fleet(op).await;
    }

    /// Weights back to all on the active color (end of a canary).
    async fn restore_weights(&self) {
        let changed = self
            .update(|m| {
                let all = m.active.map(Weights::all_to);
                let changed = all.is_some() && m.weights != all;
                m.weights = all;
                changed
            })
            .await;
        if changed {
            self.emit_switched(None).await;
        }
    }

    async fn deploy(self: &Arc<Self>, ctx: &OpCtx, spec: Spec, promote: bool) -> Result<String, OpFailure> {
        // The image pulled and pinned, secrets and files read: a bad image
        // or source fails here, before anything changes.
        let spec = self.prepare_spec(ctx, &spec).await?;
        // Before anything changes: a failing pre_deploy leaves the service
        // as it was, nothing started.
        if let Some(argv) = self.config.hooks.pre_deploy.clone() {
            let color = self.view().idle();
            self.phase(ctx, Phase::Starting, "running the pre_deploy hook".into()).await;
            let candidate = RevisionSpec { revision: ctx.revision, spec: spec.clone() };
            let target = super::hooks::HookTarget { op: Some(ctx.id), color, spec: &candidate, env: vec![] };
            let result = tokio::select! {
                _ = ctx.cancel.cancelled() => Err("aborted".to_string()),
                r = self.host_hook("pre_deploy", &argv, target) => r,
            };
            if let Err(e) = result {
                return Err(OpFailure::failed(format!(
                    "deploy of revision {} failed, nothing was started and traffic did not move: {e}",
                    ctx.revision
                )));
            }
        }
        let target = self
            .update(|m| {
                // A new release settles a paused promote: its old color is
                // replaced below.
                if matches!(m.paused, Some(Paused::Promote { .. })) {
                    m.paused = None;
                }
                m.idle()
            })
            .await;
        self.cancel_warm_timer().await;
        // A new candidate replaces the one in the idle color, and with it
        // any canary split: until it is promoted (or given a canary weight
        // of its own) it gets no share of live traffic.
        self.restore_weights().await;
        // The idle color may still hold the previous release, kept warm, or
        // the candidate being replaced.
        if self.view().colors.get(&target).is_some_and(|c| !c.replicas.is_empty()) {
            self.phase(ctx, Phase::Stopping, format!("removing the previous release kept warm in {target}"))
                .await;
            self.retire_color(target, Some(ctx.id)).await;
        }
        let revision = ctx.revision;
        let spec = RevisionSpec { revision, spec };
        {
            let spec = spec.clone();
            self.update(move |m| {
                m.revision = m.revision.max(revision);
                m.color(target).spec = Some(spec);
            })
            .await;
        }
        let n = self.config.replicas;
        self.phase(
            ctx,
            Phase::Starting,
            format!("starting {n} replica(s) of revision {revision} in {target}"),
        )
        .await;
        self.start_color(target, &spec).await?;
        self.phase(
            ctx,
            Phase::Health,
            format!("waiting for {n} replica(s) of {target} to pass health checks"),
        )
        .await;
        if let Err(failure) = self.wait_healthy(target, ctx).await {
            self.phase(
                ctx,
                Phase::Removing,
                format!("removing the failed revision {revision} from {target}"),
            )
            .await;
            self.retire_color(target, Some(ctx.id)).await;
            let message = match failure.outcome {
                OutcomeKind::Aborted => failure.message,
                _ => {
                    format!("deploy of revision {revision} failed, traffic did not move: {}", failure.message)
                }
            };
            return Err(OpFailure::new(failure.outcome, message));
        }
        // Healthy: the new color is reachable through the preview rule only
        // (its weight is zero) until it is promoted.
        if self.view().active.is_none() {
            // The first release goes live in one commit with its replicas
            // entering the rotation.
            let changed = self
                .commit(move |m| {
                    m.active = Some(target);
                    m.weights = Some(Weights::all_to(target));
                    m.set_states(target, |_| true, ReplicaState::Serving)
                })
                .await
                .map_err(|e| state_failure(&e, "nothing is live yet"))?;
            for event in changed {
                self.emit(Some(ctx.id), event);
            }
            self.emit_switched(Some(ctx.id)).await;
            return Ok(format!("revision {revision} is live on {target}"));
        }
        self.set_color_state(target, ReplicaState::Serving).await;
        if promote {
            return self.promote(ctx).await;
        }
        Ok(format!(
            "revision {revision} is healthy on {target}; promote it to switch traffic (bgctl promote {})",
            self.name
        ))
    }

    /// Switch to the idle color, drain the old one, watch the new one, then
    /// stop the old color or keep it warm.
    async fn promote(self: &Arc<Self>, ctx: &OpCtx) -> Result<String, OpFailure> {
        let (old, new, revision) = {
            let m = self.view();
            let new = m.idle();
            promotable(&m, new).map_err(|e| OpFailure::failed(e.to_string()))?;
            (m.active, new, m.colors.get(&new).and_then(|c| c.spec.as_ref()).map(|s| s.revision).unwrap_or(0))
        };
        self.phase(ctx, Phase::Switching, format!("switching traffic to {new} (revision {revision})")).await;
        let before = self.proxy.stats().color(super::model::proxy_color(new)).clone();
        let changed = self
            .commit(move |m| {
                m.active = Some(new);
                m.weights = Some(Weights::all_to(new));
                old.map(|old| m.set_states(old, |_| true, ReplicaState::Draining)).unwrap_or_default()
            })
            .await
            .map_err(|e| {
                state_failure(
                    &e,
                    &format!("traffic stays on {}", old.map_or("nothing".into(), |o| o.to_string())),
                )
            })?;
        for event in changed {
            self.emit(Some(ctx.id), event);
        }
        self.emit_switched(Some(ctx.id)).await;
        self.post_switch(Some(ctx.id), new);
        let Some(old) = old else {
            return Ok(format!("revision {revision} is live on {new}"));
        };

        self.phase(ctx, Phase::Draining, format!("draining {old}")).await;
        let report = self.drain_backends(old, self.backends_of(old), Some(ctx.id)).await;
        self.set_color_state(old, ReplicaState::Out).await;
        let drained = if report.cut > 0 {
            format!("; {} request(s) still open on {old} were cut at drain_timeout", report.cut)
        } else {
            String::new()
        };

        let monitor = self.config.deploy.monitor;
        if !monitor.is_zero() {
            self.phase(
                ctx,
                Phase::Monitor,
                format!("watching {new} for {}", humantime::format_duration(monitor)),
            )
            .await;
            if let Err(reason) = self.monitor(ctx, new, monitor, &before).await {
                match self.config.deploy.failure_action {
                    FailureAction::Rollback => {
                        self.phase(
                            ctx,
                            Phase::RollingBack,
                            format!("monitor failed ({reason}); switching back to {old}"),
                        )
                        .await;
                        self.swap_back(ctx, new, old).await?;
                        return Err(OpFailure::new(
                            OutcomeKind::RolledBack,
                            format!("revision {revision} rolled back to {old}: {reason}"),
                        ));
                    }
                    FailureAction::Pause => {
                        self.update(move |m| m.paused = Some(Paused::Promote { old })).await;
                        return Err(OpFailure::new(
                            OutcomeKind::Paused,
                            format!("monitor failed ({reason}); traffic stays on {new}, {old} still runs out of rotation: finish with bgctl promote {name}, or switch back with bgctl abort {name}", name = self.name),
                        ));
                    }
                    FailureAction::Continue => {
                        self.emit(
                            Some(ctx.id),
                            EventKind::Message {
                                level: "warn".into(),
                                message: format!(
                                    "monitor failed ({reason}); continuing as failure_action = continue"
                                ),
                            },
                        );
                    }
                }
            }
        }

        Ok(match self.settle_old(Some(ctx), old).await {
            OldColor::Stopped => format!(
                "revision {revision} is live on {new}; {old} drained in {}ms and stopped{drained}",
                report.elapsed.as_millis()
            ),
            OldColor::KeptWarm(keep) => format!(
                "revision {revision} is live on {new}; {old} is kept warm for {} for an instant rollback{drained}",
                humantime::format_duration(keep)
            ),
        })
    }

    /// After a switch away from `old` (drained already): remember its spec
    /// for a rollback by redeploy, then stop it, or keep it warm (out of
    /// rotation) for `keep_old`.
    pub(super) async fn settle_old(self: &Arc<Self>, ctx: Option<&OpCtx>, old: Color) -> OldColor {
        self.update(move |m| m.previous = m.colors.get(&old).and_then(|c| c.spec.clone())).await;
        let keep = self.config.deploy.keep_old;
        if keep.is_zero() {
            if let Some(ctx) = ctx {
                self.phase(ctx, Phase::Stopping, format!("stopping {old}")).await;
            }
            self.retire_color(old, ctx.map(|c| c.id)).await;
            OldColor::Stopped
        } else {
            self.set_color_state(old, ReplicaState::Out).await;
            self.keep_warm(old, keep).await;
            OldColor::KeptWarm(keep)
        }
    }

    /// Watch `color` for `window`: any unhealthy replica, or a 5xx rate over
    /// `max_error_rate` once enough requests were seen, fails it.
    async fn monitor(
        &self,
        ctx: &OpCtx,
        color: Color,
        window: Duration,
        before: &bg_proxy::TrafficStats,
    ) -> Result<(), String> {
        let end = Instant::now() + window;
        loop {
            let sick = self.view().unhealthy(color).into_iter().next();
            if let Some((n, reason)) = sick {
                return Err(format!("replica {n} of {color} turned unhealthy: {reason}"));
            }
            let now = self.proxy.stats().color(super::model::proxy_color(color)).since(before);
            let max = self.config.deploy.max_error_rate;
            if now.requests >= MONITOR_MIN_REQUESTS && now.error_rate() > max {
                return Err(format!(
                    "error rate {:.2}% over {} requests is above max_error_rate {:.2}%",
                    now.error_rate() * 100.0,
                    now.requests,
                    max * 100.0
                ));
            }
            if Instant::now() >= end {
                return Ok(());
            }
            tokio::select! {
                _ = ctx.cancel.cancelled() => return Err("aborted".into()),
                _ = tokio::time::sleep(MONITOR_TICK) => {}
            }
        }
    }

    /// Instant rollback: `back` is still running; swap to it, drain and
    /// remove `from`.
    async fn swap_back(self: &Arc<Self>, ctx: &OpCtx, from: Color, back: Color) -> Result<(), OpFailure> {
        let changed = self
            .commit(move |m| {
                m.active = Some(back);
                m.weights = Some(Weights::all_to(back));
                m.color(back).warm_until = None;
                m.set_states(back, |_| true, ReplicaState::Serving)
            })
            .await
            .map_err(|e| state_failure(&e, &format!("traffic stays on {from}")))?;
        for event in changed {
            self.emit(Some(ctx.id), event);
        }
        self.emit_switched(Some(ctx.id)).await;
        self.post_switch(Some(ctx.id), back);
        self.retire_color(from, Some(ctx.id)).await;
        Ok(())
    }

    async fn rollback(self: &Arc<Self>, ctx: &OpCtx, plan: Plan) -> Result<String, OpFailure> {
        let (active, idle, candidate) = {
            let m = self.view();
            let active = m.active.expect("planned rollback has an active color");
            (active, active.other(), m.is_candidate(active.other()))
        };
        if candidate {
            self.phase(ctx, Phase::Removing, format!("removing the candidate in {idle}")).await;
            self.restore_weights().await;
            self.retire_color(idle, Some(ctx.id)).await;
            return Ok(format!("candidate in {idle} removed; traffic stays on {active}"));
        }
        if let Some(spec) = plan.spec {
            self.phase(
                ctx,
                Phase::Redeploying,
                "the previous color is gone; redeploying the previous spec".into(),
            )
            .await;
            let result = self.deploy(ctx, spec, true).await;
            if result.is_ok() {
                self.update(|m| m.previous = None).await;
            }
            return result.map(|m| format!("rolled back by redeploy: {m}"));
        }
        self.cancel_warm_timer().await;
        self.phase(ctx, Phase::Switching, format!("switching back to {idle}, kept warm")).await;
        if !self.view().all_healthy(idle) {
            return Err(OpFailure::failed(format!(
                "{idle} is kept warm but not healthy; traffic stays on {active}"
            )));
        }
        if matches!(self.view().paused, Some(Paused::Promote { .. })) {
            self.update(|m| m.paused = None).await;
        }
        self.swap_back(ctx, active, idle).await?;
        self.update(|m| m.previous = None).await;
        Ok(format!("rolled back to {idle}; {active} drained and stopped"))
    }

    async fn canary(self: &Arc<Self>, ctx: &OpCtx, plan: CanaryPlan) -> Result<String, OpFailure> {
        let new = self.view().idle();
        let pcolor = super::model::proxy_color(new);
        let stable = pcolor.other();
        if let Some(w) = plan.weight {
            self.set_split(new, w).await?;
            self.emit_switched(Some(ctx.id)).await;
            return Ok(format!("{w}% of new clients go to {new}"));
        }
        for (i, &step) in plan.steps.iter().enumerate() {
            self.phase(ctx, Phase::Canary, format!("step {}/{}: {step}% to {new}", i + 1, plan.steps.len()))
                .await;
            self.set_split(new, step).await?;
            self.emit_switched(Some(ctx.id)).await;
            let start = self.proxy.stats();
            let mut waited = Duration::ZERO;
            let verdict = loop {
                tokio::select! {
                    _ = ctx.cancel.cancelled() => {
                        self.abandon_canary(ctx, new).await;
                        return Err(OpFailure::new(OutcomeKind::Aborted, format!("canary aborted at {step}%")));
                    }
                    _ = tokio::time::sleep(plan.interval) => {}
                }
                waited += plan.interval;
                let now = self.proxy.stats();
                let canary = now.color(pcolor).since(start.color(pcolor));
                let base = now.color(stable).since(start.color(stable));
                let sick = self.view().unhealthy(new).into_iter().next();
                if let Some((n, reason)) = sick {
                    break Err(format!("replica {n} of {new} turned unhealthy: {reason}"));
                }
                if canary.requests < plan.min_requests {
                    if waited < plan.interval * 2 {
                        continue;
                    }
                    break Err(format!(
                        "only {} request(s) reached {new} at {step}% (min_requests {})",
                        canary.requests, plan.min_requests
                    ));
                }
                // Judged against the stable color over the same window: a
                // canary may not do worse than it by more than the limit (so
                // a fix for an already failing service is not refused).
                let rate = canary.error_rate();
                let allowed = base.error_rate() + plan.max_error_rate;
                if rate > allowed {
                    break Err(format!(
                        "error rate of {new} {:.2}% over {} requests is above {:.2}% \
                         (stable color {:.2}% + max_error_rate {:.2}%)",
                        rate * 100.0,
                        canary.requests,
                        allowed * 100.0,
                        base.error_rate() * 100.0,
                        plan.max_error_rate * 100.0
                    ));
                }
                if let (Some(max), Some(p99)) = (plan.max_p99, canary.latency.quantile(0.99)) {
                    if p99 > max {
                        break Err(format!(
                            "p99 latency of {new} {}ms is above {}ms (stable color: {}ms)",
                            p99.as_millis(),
                            max.as_millis(),
                            base.latency.quantile(0.99).map(|d| d.as_millis()).unwrap_or(0)
                        ));
                    }
                }
                break Ok(());
            };
            if let Err(reason) = verdict {
                self.abandon_canary(ctx, new).await;
                return Err(OpFailure::failed(format!(
                    "canary aborted at {step}%: {reason}; traffic is back on {}",
                    new.other()
                )));
            }
        }
        if plan.promote {
            return self.promote(ctx).await;
        }
        let last = plan.steps.last().copied().unwrap_or(0);
        Ok(format!("canary passed every step; {last}% of new clients go to {new}"))
    }

    async fn set_split(&self, new: Color, pct: u8) -> Result<(), OpFailure> {
        self.commit(move |m| m.weights = Some(Weights::split(new, pct)))
            .await
            .map_err(|e| state_failure(&e, "the split did not change"))?;
        self.settle_fleet(None).await;
        Ok(())
    }

    async fn abandon_canary(&self, ctx: &OpCtx, new: Color) {
        self.restore_weights().await;
        self.retire_color(new, Some(ctx.id)).await;
    }

    /// `promote` after a monitor window paused it: the operator accepts
    /// the new color; the old one is stopped (or kept warm for `keep_old`).
    async fn finish_paused_promote(self: &Arc<Self>, ctx: &OpCtx, old: Color) -> Result<String, OpFailure> {
        let new = old.other();
        self.update(|m| m.paused = None).await;
        Ok(match self.settle_old(Some(ctx), old).await {
            OldColor::Stopped => format!("promote to {new} finished; {old} stopped"),
            OldColor::KeptWarm(keep) => {
                format!(
                    "promote to {new} finished; {old} is kept warm for {}",
                    humantime::format_duration(keep)
                )
            }
        })
    }

    /// `abort` of a paused operation: back to where it started. A paused
    /// promote switches back to the old color; a paused rolling update
    /// brings every replica back to the previous spec.
    async fn abort_paused(
        self: &Arc<Self>,
        ctx: &OpCtx,
        paused: Option<Paused>,
    ) -> Result<String, OpFailure> {
        match paused {
            Some(Paused::Promote { old }) => {
                let new = old.other();
                if !self.view().all_healthy(old) {
                    return Err(OpFailure::failed(format!(
                        "{old} is not healthy; traffic stays on {new}, still paused"
                    )));
                }
                self.phase(ctx, Phase::Switching, format!("switching back to {old}")).await;
                self.update(|m| m.paused = None).await;
                self.swap_back(ctx, new, old).await?;
                Ok(format!("paused promote undone: traffic is back on {old}, {new} removed"))
            }
            Some(Paused::Rolling(plan)) => {
                self.update(|m| m.paused = None).await;
                let back =
                    RollingPlan { target: plan.previous.clone(), previous: plan.target.clone(), ..*plan };
                let revision = back.target.revision;
                self.rolling(ctx, back).await.map(|_| {
                    format!("paused rolling update undone: every replica runs revision {revision} again")
                })
            }
            None => Ok("nothing was paused".into()),
        }
    }

    /// Keep `color` running out of rotation for `keep`, then stop it unless
    /// something else took it over.
    pub(super) async fn keep_warm(self: &Arc<Self>, color: Color, keep: Duration) {
        let until = SystemTime::now().checked_add(keep).unwrap_or(SystemTime::now());
        let token = self.shared.shutdown.child_token();
        let timer = token.clone();
        let replaced = self
            .update(move |m| {
                m.color(color).warm_until = until.duration_since(UNIX_EPOCH).ok().map(|d| d.as_secs());
                m.warm_cancel.replace(timer)
            })
            .await;
        if let Some(old) = replaced {
            old.cancel();
        }
        let service = self.clone();
        self.shared.tasks.spawn(async move {
            tokio::select! {
                _ = token.cancelled() => return,
                _ = tokio::time::sleep(keep) => {}
            }
            // After the operation that runs now, if one does.
            let _hold = loop {
                match service.hold(Hold::StoppingWarm).await {
                    Ok(hold) => break hold,
                    Err(_) => tokio::select! {
                        _ = token.cancelled() => return,
                        _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                    },
                }
            };
            if token.is_cancelled() {
                return;
            }
            let still_warm = {
                let m = service.view();
                m.active != Some(color) && m.colors.get(&color).is_some_and(|c| c.warm_until.is_some())
            };
            if still_warm {
                tracing::info!(service = %service.name, %color, "keep_old elapsed; stopping the old color");
                // A stopping agent leaves the rest to the next one, which
                // finds the time passed and stops the color.
                tokio::select! {
                    _ = service.shared.shutdown.cancelled() => {}
                    _ = service.retire_color(color, None) => {}
                }
            }
        });
    }

    pub(super) async fn cancel_warm_timer(&self) {
        if let Some(t) = self.update(|m| m.warm_cancel.take()).await {
            t.cancel();
        }
    }
}

/// What became of the old color after a switch.
pub(super) enum OldColor {
    /// Drained and stopped.
    Stopped,
    /// Out of rotation, running for this long.
    KeptWarm(Duration),
}

/// An operation stopped because the state file could not be written.
fn state_failure(e: &crate::state::StateError, traffic: &str) -> OpFailure {
    OpFailure::failed(format!("cannot persist state ({e}); the operation stopped and {traffic}"))
}

/// Whether `color` can take traffic: a healthy candidate.
/// Where `spec` (as configured) already runs: the active color with no
/// newer candidate beside it, or a healthy candidate; with its revision.
fn current(model: &ServiceModel, spec: &Spec) -> Option<(Current, u64)> {
    let want = spec.unpinned();
    let runs = |color: Color| {
        model.colors.get(&color).and_then(|c| c.spec.as_ref()).filter(|s| s.spec.unpinned() == want)
    };
    let idle = model.idle();
    if model.is_candidate(idle) {
        return runs(idle)
            .filter(|_| model.all_healthy(idle))
            .map(|s| (Current::Candidate(idle), s.revision));
    }
    let active = model.active?;
    runs(active).filter(|_| model.weights().of(active) == 100).map(|s| (Current::Active(active), s.revision))
}

fn promotable(model: &ServiceModel, color: Color) -> Result<(), ControlError> {
    if !model.is_candidate(color) {
        return Err(ControlError::BadRequest(format!(
            "nothing to promote: {color} holds no new revision; deploy one first"
        )));
    }
    if !model.all_healthy(color) {
        let sick = model
            .colors
            .get(&color)
            .map(|c| c.replicas.iter().filter(|r| r.health != Health::Healthy).count())
            .unwrap_or(0);
        return Err(ControlError::BadRequest(format!(
            "{color} is not healthy yet ({sick} replica(s) not passing health checks)"
        )));
    }
    Ok(())
}

/// The canary request's fields together (each field on its own was
/// checked where the body was decoded).
fn canary_plan(req: &CanaryRequest) -> Result<CanaryPlan, ControlError> {
    if req.weight.is_some() && !req.steps.is_empty() {
        return Err(ControlError::BadRequest("give either weight or steps, not both".into()));
    }
    if req.weight.is_none() && req.steps.is_empty() {
        return Err(ControlError::BadRequest("a canary needs a weight or steps".into()));
    }
    if req.steps.windows(2).any(|w| w[0] >= w[1]) {
        return Err(ControlError::BadRequest(format!("steps {:?} must grow strictly", req.steps)));
    }
    let interval = match req.interval {
        Some(i) => i.0,
        None if req.steps.is_empty() => Duration::ZERO,
        None => return Err(ControlError::BadRequest("steps need an interval (e.g. \"30s\")".into())),
    };
    if !req.steps.is_empty() && interval.is_zero() {
        return Err(ControlError::BadRequest("interval must be above zero".into()));
    }
    let max_error_rate = req.max_error_rate.unwrap_or(crate::config::DEFAULT_MAX_ERROR_RATE);
    let max_p99 = req.max_p99.map(Duration::from);
    Ok(CanaryPlan {
        weight: req.weight,
        steps: req.steps.clone(),
        interval,
        max_error_rate,
        max_p99,
        min_requests: req.min_requests.unwrap_or(1),
        promote: req.promote,
    })
}
