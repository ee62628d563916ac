//! The in-memory model of one service and its conversions: to the status
//! answer, to the proxy's route table, and to the persisted record.

use crate::api::{
    Color, ColorStatus, Health, HistoryEntry, OperationKind, OperationStatus, Outcome, Phase, ReplicaState,
    ReplicaStatus, ServiceStatus, Spec, Weights,
};
use crate::config::ServiceConfig;
use crate::events::now_rfc3339;
use crate::runtime::ReplicaHandle;
use crate::state::{
    ColorRecord, OperationRecord, PausedRecord, ReplicaRecord, RevisionSpec, ServiceRecord, HISTORY_LIMIT,
};
use bg_proxy::{Backend, BackendId, Proxy, RouteTable};
use std::collections::BTreeMap;
use tokio_util::sync::CancellationToken;

/// One replica as the controller tracks it.
#[derive(Debug, Clone)]
pub(crate) struct ReplicaModel {
    /// Replica number in its color.
    pub number: u32,
    /// The runtime's handle.
    pub handle: ReplicaHandle,
    /// Its name in the proxy.
    pub backend: BackendId,
    /// Latest health verdict.
    pub health: Health,
    /// Why it is unhealthy, if it is.
    pub reason: Option<String>,
    /// It exited (or vanished) and will not come back.
    pub exited: bool,
    /// Traffic state.
    pub state: ReplicaState,
    /// The revision and spec it runs.
    pub spec: RevisionSpec,
    /// Stops its health monitor and watcher.
    pub monitor: CancellationToken,
}

impl ReplicaModel {
    /// Whether the proxy may send it new requests.
    pub fn in_rotation(&self) -> bool {
        self.state == ReplicaState::Serving && self.health == Health::Healthy
    }
}

/// One color as the controller tracks it.
#[derive(Debug, Clone, Default)]
pub(crate) struct ColorModel {
    /// The revision and spec the color was deployed with.
    pub spec: Option<RevisionSpec>,
    /// Its replicas, by number.
    pub replicas: Vec<ReplicaModel>,
    /// Until when it is kept warm (unix seconds), when it is the old color.
    pub warm_until: Option<u64>,
}

/// An operation that stopped half-way on purpose (`failure_action =
/// "pause"`) and waits for the operator; persisted, so a restart keeps it.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Paused {
    /// The monitor window after a switch failed: traffic stays on the
    /// active color, `old` runs out of rotation. `promote` finishes the
    /// promote; `abort` (or `rollback`) switches back to `old`.
    Promote {
        /// The color traffic came from.
        old: Color,
    },
    /// A rolling update stopped after a failed batch: `rolling --resume`
    /// goes on, `abort` brings every replica back to the previous spec.
    Rolling(Box<super::plan::RollingPlan>),
}

impl Paused {
    /// As persisted.
    pub(crate) fn record(&self) -> PausedRecord {
        match self {
            Paused::Promote { old } => PausedRecord::Promote { old: *old },
            Paused::Rolling(p) => PausedRecord::Rolling {
                target: p.target.clone(),
                previous: p.previous.clone(),
                parallelism: p.settings.parallelism,
                delay_ms: p.settings.delay.as_millis() as u64,
                order: p.settings.order,
                failure_action: p.settings.failure_action,
                monitor_ms: p.settings.monitor.as_millis() as u64,
                max_failure_ratio: p.settings.max_failure_ratio,
            },
        }
    }

    /// From the state file.
    pub(crate) fn from_record(r: &PausedRecord) -> Paused {
        match r {
            PausedRecord::Promote { old } => Paused::Promote { old: *old },
            PausedRecord::Rolling {
                target,
                previous,
                parallelism,
                delay_ms,
                order,
                failure_action,
                monitor_ms,
                max_failure_ratio,
            } => Paused::Rolling(Box::new(super::plan::RollingPlan {
                target: target.clone(),
                previous: previous.clone(),
                settings: crate::config::RollingConfig {
                    parallelism: *parallelism,
                    delay: std::time::Duration::from_millis(*delay_ms),
                    order: *order,
                    failure_action: *failure_action,
                    monitor: std::time::Duration::from_millis(*monitor_ms),
                    max_failure_ratio: *max_failure_ratio,
                },
            })),
        }
    }
}

/// The model of one service.
#[derive(Debug, Default, Clone)]
pub struct ServiceModel {
    pub(crate) revision: u64,
    pub(crate) active: Option<Color>,
    pub(crate) weights: Option<Weights>,
    pub(crate) colors: BTreeMap<Color, ColorModel>,
    pub(crate) previous: Option<RevisionSpec>,
    pub(crate) operation: Option<OperationStatus>,
    pub(crate) op_target: Option<Color>,
    pub(crate) history: Vec<HistoryEntry>,
    pub(crate) last_outcome: Option<Outcome>,
    pub(crate) warm_cancel: Option<CancellationToken>,
    pub(crate) paused: Option<Paused>,
    /// Whether requests go on (`bgctl pause`, `maintenance`).
    pub(crate) traffic: crate::api::Traffic,
    /// Ended operations by (kind, outcome), for metrics; never decreases.
    pub(crate) outcome_counts: BTreeMap<(OperationKind, crate::api::OutcomeKind), u64>,
    /// When traffic last moved (unix seconds).
    pub(crate) last_switch: Option<f64>,
}

impl ServiceModel {
    /// One color, created empty on first use.
    pub(crate) fn color(&mut self, color: Color) -> &mut ColorModel {
        self.colors.entry(color).or_default()
    }

    /// The split now; all to the active color when none was set.
    pub(crate) fn weights(&self) -> Weights {
        self.weights.unwrap_or_else(|| Weights::all_to(self.active.unwrap_or(Color::Blue)))
    }

    /// The traffic a runtime may keep outside the agent (swarm labels).
    pub(crate) fn traffic(&self) -> crate::runtime::Traffic {
        crate::runtime::Traffic { active: self.active, weights: self.active.map(|_| self.weights()) }
    }

    /// The color a deploy goes to: the one that is not active.
    pub(crate) fn idle(&self) -> Color {
        self.active.map(Color::other).unwrap_or(Color::Blue)
    }

    /// Whether `color` holds a candidate: deployed after the active color.
    pub(crate) fn is_candidate(&self, color: Color) -> bool {
        let Some(c) = self.colors.get(&color) else {
            return false;
        };
        let Some(spec) = &c.spec else { return false };
        if c.replicas.is_empty() || Some(color) == self.active {
            return false;
        }
        match self.active.and_then(|a| self.colors.get(&a)).and_then(|a| a.spec.as_ref()) {
            Some(active) => spec.revision > active.revision,
            None => true,
        }
    }

    /// Whether every replica of `color` is healthy (and there is one).
    pub(crate) fn all_healthy(&self, color: Color) -> bool {
        self.colors
            .get(&color)
            .is_some_and(|c| !c.replicas.is_empty() && c.replicas.iter().all(|r| r.health == Health::Healthy))
    }

    /// Whether the replicas meant to serve are all in rotation.
    pub(crate) fn serving_ready(&self) -> bool {
        self.colors
            .values()
            .flat_map(|c| &c.replicas)
            .filter(|r| r.state == ReplicaState::Serving)
            .all(|r| r.health == Health::Healthy)
    }

    /// Mark an operation as running; returns the revision it works on.
    pub(crate) fn begin_operation(
        &mut self,
        id: u64,
        kind: OperationKind,
        revision: Option<u64>,
        target: Option<Color>,
    ) -> u64 {
        let revision = revision.unwrap_or(self.revision);
        self.operation = Some(OperationStatus {
            id,
            kind,
            phase: Phase::Accepted,
            revision,
            started_at: now_rfc3339(),
            detail: String::new(),
        });
        self.op_target = target;
        revision
    }

    /// Set the traffic state of the replicas of `color` that `which`
    /// picks; the replica events to emit for those that changed.
    pub(crate) fn set_states(
        &mut self,
        color: Color,
        which: impl Fn(&ReplicaModel) -> bool,
        state: ReplicaState,
    ) -> Vec<crate::api::EventKind> {
        let mut changed = Vec::new();
        for r in self.color(color).replicas.iter_mut().filter(|r| which(r)) {
            if r.state != state {
                r.state = state;
                changed.push(crate::api::EventKind::Replica {
                    color,
                    replica: r.number.to_string(),
                    health: r.health,
                    state,
                    reason: None,
                });
            }
        }
        changed
    }

    /// Record an operation's end in the history.
    pub(crate) fn end_operation(&mut self, outcome: Outcome, spec: Option<Spec>) {
        let started_at = self.operation.take().map(|o| o.started_at).unwrap_or_else(now_rfc3339);
        self.op_target = None;
        *self.outcome_counts.entry((outcome.kind, outcome.outcome)).or_default() += 1;
        self.history.push(HistoryEntry { outcome: outcome.clone(), started_at, spec });
        if self.history.len() > HISTORY_LIMIT {
            let extra = self.history.len() - HISTORY_LIMIT;
            self.history.drain(..extra);
        }
        self.last_outcome = Some(outcome);
    }

    /// The proxy's route table for this model: every replica is a backend;
    /// only serving, healthy ones are in rotation.
    pub(crate) fn route_table(&self) -> RouteTable {
        let backends = self
            .colors
            .iter()
            .flat_map(|(color, c)| c.replicas.iter().map(move |r| (color, r)))
            .filter(|(_, r)| r.state != ReplicaState::Stopped)
            .map(|(color, r)| Backend {
                id: r.backend.clone(),
                addr: r.handle.addr,
                color: proxy_color(*color),
                in_rotation: r.in_rotation(),
            })
            .collect();
        let w = self.weights();
        let mut table = RouteTable::new(backends, bg_proxy::Weights { blue: w.blue, green: w.green });
        table.gate = super::traffic::gate(&self.traffic);
        table
    }

    /// The status answer.
    pub(crate) fn status(&self, config: &ServiceConfig, proxy: &Proxy) -> ServiceStatus {
        let colors = Color::ALL
            .iter()
            .map(|&color| {
                let c = self.colors.get(&color);
                let status = ColorStatus {
                    spec: c.and_then(|c| c.spec.as_ref()).map(|s| s.spec.clone()),
                    revision: c.and_then(|c| c.spec.as_ref()).map(|s| s.revision),
                    replicas: c
                        .map(|c| {
                            c.replicas
                                .iter()
                                .map(|r| {
                                    let own = c.spec.as_ref().is_none_or(|s| s.revision != r.spec.revision);
                                    ReplicaStatus {
                                        id: r.number.to_string(),
                                        addr: r.handle.addr.to_string(),
                                        health: r.health,
                                        state: r.state,
                                        inflight: proxy.inflight(&r.backend),
                                        runtime_id: Some(r.handle.name.clone()),
                                        revision: Some(r.spec.revision),
                                        spec: own.then(|| r.spec.spec.clone()),
                                    }
                                })
                                .collect()
                        })
                        .unwrap_or_default(),
                };
                (color, status)
            })
            .collect();
        let revision = self
            .active
            .and_then(|a| self.colors.get(&a))
            .and_then(|c| c.spec.as_ref())
            .map(|s| s.revision)
            .unwrap_or(0);
        ServiceStatus {
            name: config.name.clone(),
            revision,
            active: self.active,
            weights: self.weights(),
            operation: self.operation.clone(),
            colors,
            listen: config.listen.iter().map(|a| a.to_string()).collect(),
            last_outcome: self.last_outcome.clone(),
            traffic: self.traffic.clone(),
        }
    }

    /// The persisted record.
    pub(crate) fn record(&self) -> ServiceRecord {
        ServiceRecord {
            revision: self.revision,
            active: self.active,
            weights: self.weights(),
            colors: self
                .colors
                .iter()
                .map(|(color, c)| {
                    (
                        *color,
                        ColorRecord {
                            spec: c.spec.clone(),
                            replicas: c
                                .replicas
                                .iter()
                                .map(|r| ReplicaRecord {
                                    number: r.number,
                                    runtime_id: r.handle.runtime_id.clone(),
                                    name: r.handle.name.clone(),
                                    addr: r.handle.addr.to_string(),
                                    revision: r.spec.revision,
                                    spec: Some(r.spec.spec.clone()),
                                    state: r.state,
                                })
                                .collect(),
                            warm_until: c.warm_until,
                        },
                    )
                })
                .collect(),
            previous: self.previous.clone(),
            operation: self.operation.as_ref().map(|o| OperationRecord {
                id: o.id,
                kind: o.kind,
                revision: o.revision,
                target: self.op_target,
                started_at: o.started_at.clone(),
            }),
            history: self.history.clone(),
            paused: self.paused.as_ref().map(Paused::record),
            maintenance: super::traffic::record(&self.traffic),
        }
    }
}

/// The proxy's color for an API color.
pub(crate) fn proxy_color(color: Color) -> bg_proxy::Color {
    match color {
        Color::Blue => bg_proxy::Color::Blue,
        Color::Green => bg_proxy::Color::Green,
    }
}
