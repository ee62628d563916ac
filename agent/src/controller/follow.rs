//! Following the fleet: where several agents serve one service (swarm),
//! traffic another agent set reaches this one through the runtime
//! ([`crate::runtime::Runtime::follow_traffic`]), and is applied here, by
//! the same means recovery adopts a color: the color's running replicas are
//! tracked (health-checked before they take traffic), the switch is one
//! commit through the actor, a color that lost its traffic is drained and
//! forgotten without being stopped (the agent that moved the traffic stops
//! it), and then the runtime is told this agent serves the new sequence.
//!
//! And the other way: a switch of this agent's own waits, before it goes
//! on (drains, stops), until every other live agent serves it
//! ([`Service::settle_fleet`]).

use super::actor::Hold;
use super::Service;
use crate::api::{Color, EventKind, Health, ReplicaState, Weights};
use crate::runtime::Traffic;
use crate::state::RevisionSpec;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Wait before trying again to apply traffic while this agent is busy.
const BUSY_RETRY: Duration = Duration::from_secs(1);
/// How often health is looked at while new replicas are checked.
const POLL: Duration = Duration::from_millis(100);

impl Service {
    /// Apply other agents' traffic changes until the agent stops. Runs on
    /// the task tracker, started after recovery.
    pub(super) async fn follow(self: Arc<Self>) {
        let Some(mut rx) = self.shared.runtime.follow_traffic(&self.name) else { return };
        let shutdown = self.shared.shutdown.clone();
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                changed = rx.changed() => if changed.is_err() { return },
            }
            let Some((seq, traffic)) = *rx.borrow_and_update() else { continue };
            // Busy (an operation or a hold of this agent's own): again in a
            // moment, unless a newer change came meanwhile.
            loop {
                let applied = tokio::select! {
                    _ = shutdown.cancelled() => return,
                    applied = self.apply_fleet_traffic(traffic) => applied,
                };
                if applied {
                    self.shared.runtime.traffic_served(&self.name, seq);
                    break;
                }
                tokio::select! {
                    _ = shutdown.cancelled() => return,
                    _ = tokio::time::sleep(BUSY_RETRY) => {}
                }
                if rx.has_changed().unwrap_or(false) {
                    break;
                }
            }
        }
    }

    /// Serve `traffic`, set by another agent; `false` when this agent is
    /// busy and it must be tried again.
    async fn apply_fleet_traffic(self: &Arc<Self>, traffic: Traffic) -> bool {
        let Ok(_hold) = self.hold(Hold::Following).await else { return false };
        if self.view().traffic() == traffic {
            return true;
        }
        let Some(active) = traffic.active else { return true };
        let weights = traffic.weights.unwrap_or(Weights::all_to(active));
        let serving: Vec<Color> =
            [Color::Blue, Color::Green].into_iter().filter(|c| *c == active || weights.of(*c) > 0).collect();

        // The serving colors' replicas this agent does not track yet.
        let found = match self.shared.runtime.list(Some(&self.name)).await {
            Ok(f) => f,
            Err(e) => {
                tracing::warn!(service = %self.name, error = %e, "cannot list the replicas another agent switched to; trying again");
                return false;
            }
        };
        let mut new_revision = None;
        for handle in found.into_iter().filter(|h| serving.contains(&h.color)) {
            let known = self
                .view()
                .colors
                .get(&handle.color)
                .is_some_and(|c| c.replicas.iter().any(|r| r.handle.runtime_id == handle.runtime_id));
            if known {
                continue;
            }
            let color = handle.color;
            if color == active {
                new_revision = Some(handle.revision);
            }
            let spec = RevisionSpec { revision: handle.revision, spec: self.config.spec.clone() };
            let color_spec = spec.clone();
            self.update(move |m| {
                if m.color(color).spec.as_ref().is_none_or(|s| s.revision != color_spec.revision) {
                    m.color(color).spec = Some(color_spec);
                }
            })
            .await;
            self.track_replica(color, handle, spec, ReplicaState::Serving).await;
        }
        self.wait_fleet_healthy(&serving).await;

        let leaving: Vec<Color> =
            [Color::Blue, Color::Green].into_iter().filter(|c| !serving.contains(c)).collect();
        let gone = leaving.clone();
        let changed = self
            .commit(move |m| {
                if let Some(r) = new_revision {
                    m.revision = m.revision.max(r);
                }
                m.active = Some(active);
                m.weights = Some(weights);
                let mut events = Vec::new();
                for c in &serving {
                    events.extend(m.set_states(*c, |_| true, ReplicaState::Serving));
                }
                for c in &gone {
                    events.extend(m.set_states(*c, |_| true, ReplicaState::Draining));
                }
                events
            })
            .await;
        let changed = match changed {
            Ok(c) => c,
            Err(e) => {
                tracing::error!(service = %self.name, error = %e, "cannot persist the traffic another agent set; trying again");
                return false;
            }
        };
        for event in changed {
            self.emit(None, event);
        }
        self.emit(None, EventKind::Switched { active: Some(active), weights });
        self.emit(
            None,
            EventKind::Message {
                level: "info".into(),
                message: format!(
                    "another agent switched traffic: {active} active, weights {}/{}",
                    weights.blue, weights.green
                ),
            },
        );
        // A color that lost its traffic: drained here, then forgotten; the
        // agent that switched stops it once every agent acknowledged.
        for color in leaving {
            let backends = self.backends_of(color);
            if backends.is_empty() {
                continue;
            }
            self.drain_backends(color, backends, None).await;
            self.update(move |m| {
                let c = m.color(color);
                for r in &c.replicas {
                    r.monitor.cancel();
                }
                c.replicas.clear();
                c.warm_until = None;
                if let Some(spec) = c.spec.take() {
                    m.previous = Some(spec);
                }
            })
            .await;
        }
        true
    }

    /// Wait until the serving colors' replicas are healthy, up to the
    /// health deadline (then the switch goes ahead: unhealthy replicas stay
    /// out of rotation, as everywhere).
    async fn wait_fleet_healthy(&self, colors: &[Color]) {
        let deadline = Instant::now() + self.config.health.deadline;
        loop {
            let pending = {
                let m = self.view();
                colors
                    .iter()
                    .filter_map(|c| m.colors.get(c))
                    .flat_map(|c| c.replicas.iter())
                    .any(|r| r.health != Health::Healthy && !r.exited)
            };
            if !pending {
                return;
            }
            if Instant::now() >= deadline {
                tracing::warn!(service = %self.name, "replicas another agent switched to are not healthy within the health deadline; they stay out of rotation");
                return;
            }
            tokio::time::sleep(POLL).await;
        }
    }

    /// After a switch of this agent's own: wait until every other live
    /// agent serving the service serves it too (the runtime's ack
    /// timeout); the ones that did not are named in a warning event, and
    /// the operation goes on (the switch is recorded where they read it, so
    /// they follow once they can).
    pub(super) async fn settle_fleet(&self, op: Option<u64>) {
        let late = self.shared.runtime.traffic_settled(&self.name).await;
        if late.is_empty() {
            return;
        }
        let message = format!(
            "agent(s) {} did not acknowledge the switch in time; they serve the previous traffic until they catch up",
            late.join(", ")
        );
        tracing::warn!(service = %self.name, "{message}");
        self.emit(op, EventKind::Message { level: "warn".into(), message });
    }
}
