//! Start-up recovery: rebuild a service's model from the state file and
//! the replicas the runtime still runs, adopt those (they are health-checked
//! again before they get traffic), remove what nobody owns, and resolve an
//! operation that a crash cut short: a half-done deploy or canary is
//! aborted, a promote that had switched is completed.

use super::actor::Hold;
use super::model::{Paused, ServiceModel};
use super::Service;
use crate::api::{Color, EventKind, Outcome, OutcomeKind, Phase, ReplicaState, Weights};
use crate::events::now_rfc3339;
use crate::runtime::ReplicaHandle;
use crate::state::{RevisionSpec, ServiceRecord};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

impl Service {
    /// Rebuild the model; `found` are the runtime's replicas of this service.
    ///
    /// Nothing else runs on the service meanwhile: requests that arrive
    /// wait until recovery is done. Returns whether the service is new: no
    /// record and no replica to adopt (see [`Service::first_start`]).
    pub async fn recover(self: &Arc<Self>, mut found: Vec<ReplicaHandle>) -> bool {
        let Ok(_hold) = self.hold(Hold::Recovering).await else { return false };
        let record = self.shared.persister.record(&self.name);
        let fresh = record.is_none() && found.is_empty();
        let mut interrupted = None;
        let mut out_of_rotation = Vec::new();
        if let Some(rec) = record {
            let mut model = ServiceModel {
                revision: rec.revision,
                active: rec.active,
                weights: Some(rec.weights),
                previous: rec.previous.clone(),
                last_outcome: rec.history.last().map(|h| h.outcome.clone()),
                history: rec.history.clone(),
                paused: rec.paused.as_ref().map(Paused::from_record),
                traffic: super::traffic::from_record(rec.maintenance.as_ref()),
                ..ServiceModel::default()
            };
            for (color, c) in &rec.colors {
                let cm = model.color(*color);
                cm.spec = c.spec.clone();
                cm.warm_until = c.warm_until;
            }
            self.update(move |m| *m = model).await;
            for (color, c) in &rec.colors {
                for r in &c.replicas {
                    let spec = RevisionSpec {
                        revision: r.revision,
                        spec: r
                            .spec
                            .clone()
                            .or_else(|| c.spec.as_ref().map(|s| s.spec.clone()))
                            .unwrap_or_default(),
                    };
                    let Some(pos) =
                        found.iter().position(|h| h.runtime_id == r.runtime_id || h.name == r.name)
                    else {
                        // A replica of the active color that should serve is
                        // replaced by the healer, as if it had exited now.
                        let active = rec.active == Some(*color);
                        let replace =
                            active && recovered_state(&rec, *color, r.state) == ReplicaState::Serving;
                        self.emit(
                            None,
                            EventKind::Message {
                                level: "warn".into(),
                                message: format!(
                                    "replica {} of {color} ({}) is gone since the agent last ran{}",
                                    r.number,
                                    r.name,
                                    match (active, replace) {
                                        (true, true) => "; it will be replaced",
                                        (true, false) => "; it is started again, out of rotation",
                                        _ => "",
                                    }
                                ),
                            },
                        );
                        if replace {
                            self.track_gone(*color, r, spec).await;
                        } else if active {
                            // Out of rotation by an operation's choice (a
                            // replica drained or being updated): its slot
                            // is started again, still out of rotation.
                            out_of_rotation.push((*color, r.number, spec));
                        }
                        continue;
                    };
                    let handle = found.swap_remove(pos);
                    let state = recovered_state(&rec, *color, r.state);
                    self.track_replica(*color, handle, spec, state).await;
                }
            }
            interrupted = rec.operation.clone();
        } else if !found.is_empty() {
            self.adopt_without_state(&mut found).await;
        }

        // Whatever is left belongs to nobody: a replica started by a deploy
        // the agent did not live to record.
        for orphan in std::mem::take(&mut found) {
            tracing::warn!(service = %self.name, replica = %orphan.name, "removing a replica no state refers to");
            let _ = self.shared.runtime.stop(&orphan, &self.config.stop_signal, self.config.stop_grace).await;
            let _ = self.shared.runtime.remove(&orphan).await;
        }
        for (color, number, spec) in out_of_rotation {
            if let Err(e) = self.start_replica_as(color, number, &spec, ReplicaState::Out).await {
                tracing::error!(service = %self.name, "{e}");
                self.emit(None, EventKind::Message { level: "error".into(), message: e });
            }
        }

        if let Some(op) = interrupted {
            use crate::api::OperationKind as K;
            let target = op.target;
            let active = self.view().active;
            // Shown as running while it is resolved.
            let shown = crate::api::OperationStatus {
                id: op.id,
                kind: op.kind,
                phase: Phase::Recovering,
                revision: op.revision,
                started_at: op.started_at.clone(),
                detail: String::new(),
            };
            self.update(move |m| m.operation = Some(shown)).await;
            let message = match (op.kind, target) {
                // Traffic had moved to the target (a promote, a deploy or
                // canary that went on to promote, a rollback): finish the
                // switch as the operation would have, old color kept warm
                // when `keep_old` says so.
                (K::Promote | K::Rollback | K::Deploy | K::Canary, Some(t))
                    if active == Some(t)
                        && self.view().colors.get(&t.other()).is_some_and(|c| !c.replicas.is_empty()) =>
                {
                    let old = t.other();
                    // As the operation would have: a rollback removes the
                    // color it left, a promote stops it or keeps it warm.
                    if op.kind == K::Rollback {
                        self.retire_color(old, None).await;
                        self.update(|m| m.previous = None).await;
                    } else {
                        self.settle_old(None, old).await;
                    }
                    format!("the agent restarted during this {}; the switch to {t} had happened, so it was completed", op.kind)
                }
                // A promote cut before its switch changed nothing: the
                // candidate a finished deploy left stays, out of the
                // rotation, for the next promote.
                (K::Promote, Some(t)) if active != Some(t) && self.view().is_candidate(t) => {
                    self.update(|m| m.weights = m.active.map(Weights::all_to)).await;
                    format!("the agent restarted during this promote, before the switch to {t}; traffic stays on the stable color and the candidate in {t} is kept: promote it again")
                }
                (_, Some(t))
                    if active != Some(t) && (self.view().is_candidate(t) || op.kind == K::Deploy) =>
                {
                    self.update(|m| m.weights = m.active.map(Weights::all_to)).await;
                    self.retire_color(t, None).await;
                    format!("the agent restarted during this {}; the half-done {t} color was removed and traffic stays on the stable color", op.kind)
                }
                _ => format!("the agent restarted during this {}; nothing was left to undo", op.kind),
            };
            let outcome = Outcome {
                operation: op.id,
                kind: op.kind,
                outcome: OutcomeKind::Aborted,
                message: message.clone(),
                revision: op.revision,
                at: now_rfc3339(),
            };
            let ended = outcome.clone();
            self.update(move |m| m.end_operation(ended, None)).await;
            tracing::warn!(service = %self.name, revision = op.revision, "{message}");
            self.emit(Some(op.id), EventKind::OperationFinished { result: outcome });
        }

        self.fill_missing_slots().await;
        self.trim_extra_replicas().await;

        // An old color kept warm keeps its remaining time.
        let now = SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0);
        let warm: Vec<(Color, u64)> = {
            let m = self.view();
            m.colors
                .iter()
                .filter(|(c, _)| Some(**c) != m.active)
                .filter_map(|(c, cm)| cm.warm_until.filter(|_| !cm.replicas.is_empty()).map(|u| (*c, u)))
                .collect()
        };
        for (color, until) in warm {
            if until > now {
                self.keep_warm(color, Duration::from_secs(until - now)).await;
            } else {
                self.retire_color(color, None).await;
            }
        }
        // From now on, traffic other agents set is applied here too.
        self.shared.tasks.spawn(self.clone().follow());
        fresh
    }

    /// First start (`on_start = "deploy"`): deploy the configured spec of a
    /// new service; it goes live as every first deploy does. A refusal or
    /// a failure is an event and a log line like any other deploy's; the
    /// agent serves its other services either way.
    pub async fn first_start(&self) {
        let request = crate::api::Operation::Deploy(crate::api::DeployRequest {
            image: None,
            command: None,
            env: Default::default(),
            promote: None,
            converge: false,
        });
        match self.start(request).await {
            Ok(a) => tracing::info!(
                service = %self.name,
                op = a.operation,
                "no state yet: deploying the configured spec (on_start = \"deploy\")"
            ),
            Err(e) => {
                let message = format!("first start: the configured spec could not be deployed: {e}");
                tracing::error!(service = %self.name, "{message}");
                self.emit(None, EventKind::Message { level: "error".into(), message });
            }
        }
    }

    /// The active color runs `replicas` replicas again: a crash between
    /// retiring a replica and recording its replacement (a stop-first
    /// batch) left its slot empty, and with `replicas = 1` nothing would
    /// serve. Each empty slot is tracked as gone, so the healer starts it
    /// with the color's spec, through the health gate.
    async fn fill_missing_slots(&self) {
        let missing: Vec<(Color, u32, RevisionSpec)> = {
            let m = self.view();
            let Some(active) = m.active else { return };
            let Some(c) = m.colors.get(&active) else { return };
            let Some(spec) = c.spec.clone() else { return };
            let have: Vec<u32> = c.replicas.iter().map(|r| r.number).collect();
            let wanted = (self.config.replicas as usize).saturating_sub(have.len());
            (1..).filter(|n| !have.contains(n)).take(wanted).map(|n| (active, n, spec.clone())).collect()
        };
        for (color, number, spec) in missing {
            let name = crate::runtime::replica_name(&self.name, color, number);
            self.emit(
                None,
                EventKind::Message {
                    level: "warn".into(),
                    message: format!("{color} is short of replica {number} ({name}); it will be started"),
                },
            );
            let record = crate::state::ReplicaRecord {
                number,
                runtime_id: name.clone(),
                name,
                addr: "127.0.0.1:0".into(),
                revision: spec.revision,
                spec: None,
                state: ReplicaState::Serving,
            };
            self.track_gone(color, &record, spec).await;
        }
    }

    /// The active color runs no more than `replicas` replicas: a crash in
    /// a start-first batch, after the new replica joined the rotation and
    /// before the old one left, leaves one too many. The highest numbers
    /// go (start-first gives new replicas fresh, higher numbers, so the
    /// half-done batch is undone), drained before they stop.
    async fn trim_extra_replicas(&self) {
        let (color, extra) = {
            let m = self.view();
            let Some(active) = m.active else { return };
            let Some(c) = m.colors.get(&active) else { return };
            let mut numbers: Vec<u32> = c.replicas.iter().map(|r| r.number).collect();
            numbers.sort_unstable();
            let keep = (self.config.replicas as usize).min(numbers.len());
            (active, numbers.split_off(keep))
        };
        if extra.is_empty() {
            return;
        }
        self.emit(
            None,
            EventKind::Message {
                level: "warn".into(),
                message: format!(
                    "{color} runs more than {} replicas; removing replica(s) {extra:?}",
                    self.config.replicas
                ),
            },
        );
        self.retire_replicas(None, color, &extra).await;
    }

    /// No state file entry but running replicas: the newest revision
    /// becomes the active color again, the rest is removed.
    async fn adopt_without_state(self: &Arc<Self>, found: &mut Vec<ReplicaHandle>) {
        // A runtime that keeps the traffic (swarm labels) says which color
        // serves; else the newest revision found is taken as the live one.
        let kept = match self.shared.runtime.traffic(&self.name).await {
            Ok(t) => t.and_then(|t| t.active).filter(|c| found.iter().any(|h| h.color == *c)),
            Err(e) => {
                tracing::warn!(service = %self.name, error = %e, "cannot read the traffic the runtime keeps");
                None
            }
        };
        let Some(newest) =
            found.iter().filter(|h| kept.is_none_or(|c| h.color == c)).max_by_key(|h| h.revision).cloned()
        else {
            return;
        };
        let color = newest.color;
        let (mine, rest): (Vec<_>, Vec<_>) =
            found.drain(..).partition(|h| h.color == color && h.revision == newest.revision);
        *found = rest;
        let spec = RevisionSpec { revision: newest.revision, spec: self.config.spec.clone() };
        {
            let (revision, spec) = (newest.revision, spec.clone());
            self.update(move |m| {
                m.revision = revision;
                m.active = Some(color);
                m.weights = Some(Weights::all_to(color));
                m.color(color).spec = Some(spec);
            })
            .await;
        }
        for handle in mine {
            self.track_replica(color, handle, spec.clone(), ReplicaState::Serving).await;
        }
        self.emit(
            None,
            EventKind::Message {
                level: "warn".into(),
                message: format!(
                    "no state for this service: adopted revision {} on {color} from the runtime's labels{}",
                    newest.revision,
                    if kept.is_some() { " (the active color the runtime keeps)" } else { "" }
                ),
            },
        );
    }
}

/// The traffic state a recorded replica comes back in. `draining` is a
/// step, not a place: a replica a rolling batch was retiring comes back
/// serving (the update is half-done, rule 4 of docs/recovery.md), one a
/// replica action was draining stays out, as the operator asked; `out`
/// stays out.
fn recovered_state(rec: &ServiceRecord, color: Color, state: ReplicaState) -> ReplicaState {
    let rolling = rec.operation.as_ref().is_some_and(|o| o.kind == crate::api::OperationKind::Rolling);
    match state {
        ReplicaState::Serving => ReplicaState::Serving,
        ReplicaState::Draining if rolling && rec.active == Some(color) => ReplicaState::Serving,
        _ => ReplicaState::Out,
    }
}
