//! Self-healing: a replica of the active color that exits while it should
//! serve (a crash, an OOM kill, `docker kill`, `kill -9`) is replaced by a
//! new one with the same spec, color and number. The replacement is tracked
//! as `serving`, so it enters the rotation by itself once it passes its
//! health checks, like an adopted replica after a restart.
//!
//! The healer never runs beside an operation: it holds the service
//! ([`super::actor::Hold::Healing`]) only when no operation runs, for the
//! few moments a start takes, and otherwise looks again a tick later. A slot whose replacement exits soon
//! after it started waits longer before each new attempt (crash-loop
//! backoff), so a release that dies at once does not spin.

use super::actor::Hold;
use super::model::ReplicaModel;
use super::Service;
use crate::api::{Color, EventKind, Health, ReplicaState};
use crate::runtime::ReplicaHandle;
use crate::state::RevisionSpec;
use bg_proxy::BackendId;
use std::collections::HashMap;
use std::sync::Arc;
use tokio::time::{Duration, Instant};

/// How often the healer looks without being woken (1 second): it notices
/// the end of an operation that held the service, and passed backoffs.
const HEAL_TICK: Duration = Duration::from_secs(1);
/// Wait before the second replacement of a slot whose first replacement
/// exited within [`STABLE_AFTER`] (1 second); it doubles with every quick
/// exit after that.
const BACKOFF_BASE: Duration = Duration::from_secs(1);
/// Longest wait between two replacements of a crash-looping slot (5
/// minutes, like Kubernetes' CrashLoopBackOff).
const BACKOFF_MAX: Duration = Duration::from_secs(300);
/// A replacement that ran at least this long before it exited (60 seconds)
/// was not crash-looping: the next replacement starts at once again.
const STABLE_AFTER: Duration = Duration::from_secs(60);
/// Log lines of the exited replica quoted in the event and the log.
const EXIT_LOG_LINES: usize = 10;

/// A replica slot: color and number.
type Slot = (Color, u32);

/// Crash-loop backoff per slot. Pure: the healer passes the time in.
#[derive(Debug, Default)]
struct Backoff {
    slots: HashMap<Slot, SlotState>,
}

#[derive(Debug, Default, Clone, Copy)]
struct SlotState {
    /// Quick exits in a row.
    streak: u32,
    /// When the last replacement was started.
    last_start: Option<Instant>,
    /// When the pending replacement may start; set at the first look at a
    /// dead replica, cleared when the replacement starts.
    due: Option<Instant>,
}

impl Backoff {
    /// The replica in `slot` is dead at `now`: when may its replacement
    /// start, and is that a new decision (to announce once)? The answer
    /// stays the same until [`Backoff::started`].
    fn due(&mut self, slot: Slot, now: Instant) -> (Instant, bool) {
        let s = self.slots.entry(slot).or_default();
        if let Some(due) = s.due {
            return (due, false);
        }
        let quick = s.last_start.is_some_and(|t| now.saturating_duration_since(t) < STABLE_AFTER);
        s.streak = if quick { s.streak.saturating_add(1) } else { 0 };
        let due = now + Self::wait(s.streak);
        s.due = Some(due);
        (due, true)
    }

    /// The wait after `streak` quick exits in a row.
    fn wait(streak: u32) -> Duration {
        match streak {
            0 => Duration::ZERO,
            n => BACKOFF_BASE.saturating_mul(1 << (n - 1).min(20)).min(BACKOFF_MAX),
        }
    }

    /// A replacement for `slot` was started (or tried) at `now`.
    fn started(&mut self, slot: Slot, now: Instant) {
        let s = self.slots.entry(slot).or_default();
        s.last_start = Some(now);
        s.due = None;
    }

    /// Quick exits in a row so far.
    fn streak(&self, slot: Slot) -> u32 {
        self.slots.get(&slot).map_or(0, |s| s.streak)
    }
}

/// A replacement the healer started and watches until it is healthy.
#[derive(Debug)]
struct Pending {
    backend: BackendId,
    started: Instant,
    /// Its not being healthy by the health deadline was reported.
    warned: bool,
}

/// What the healer task owns between passes.
#[derive(Debug, Default)]
struct Healer {
    backoff: Backoff,
    pending: HashMap<Slot, Pending>,
}

/// A replica that exited while it should serve.
struct Dead {
    color: Color,
    number: u32,
    handle: ReplicaHandle,
    spec: RevisionSpec,
    reason: String,
}

impl Service {
    /// Replace replicas of the active color that exited, until the agent
    /// shuts down. The daemon runs one per service, after recovery.
    pub async fn heal(self: Arc<Self>) {
        let shutdown = self.shared.shutdown.clone();
        let mut healer = Healer::default();
        let mut due: Option<Instant> = None;
        loop {
            let wake = due.map_or(Instant::now() + HEAL_TICK, |d| d.min(Instant::now() + HEAL_TICK));
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = self.heal_wake.notified() => {}
                _ = tokio::time::sleep_until(wake) => {}
            }
            due = tokio::select! {
                _ = shutdown.cancelled() => return,
                due = self.heal_pass(&mut healer) => due,
            };
        }
    }

    /// One look: report replacements that became healthy, replace dead
    /// replicas whose backoff passed. Returns when the next one is due.
    async fn heal_pass(self: &Arc<Self>, healer: &mut Healer) -> Option<Instant> {
        self.report_replacements(healer);
        if self.dead_replicas().is_empty() {
            return None;
        }
        // An operation decides for itself what happens to its replicas;
        // the healer comes back when it has ended.
        let Ok(_hold) = self.hold(Hold::Healing).await else { return None };
        let mut next: Option<Instant> = None;
        // Read again under the lock: the operation that just ended may have
        // moved traffic or removed the color.
        for dead in self.dead_replicas() {
            let slot = (dead.color, dead.number);
            let now = Instant::now();
            let (due, fresh) = healer.backoff.due(slot, now);
            if due > now {
                if fresh {
                    let message = format!(
                        "replica {} of {} exited again ({}), {} time(s) in a row soon after a replacement; \
                         next replacement in {}",
                        dead.number,
                        dead.color,
                        dead.reason,
                        healer.backoff.streak(slot),
                        humantime::format_duration(Duration::from_secs((due - now).as_secs().max(1)))
                    );
                    tracing::warn!(service = %self.name, "{message}");
                    self.emit(None, EventKind::Message { level: "warn".into(), message });
                }
                next = Some(next.map_or(due, |n: Instant| n.min(due)));
                continue;
            }
            self.replace(healer, dead).await;
        }
        next
    }

    /// Replicas of the active color that exited while `serving`.
    fn dead_replicas(&self) -> Vec<Dead> {
        let m = self.view();
        let Some(active) = m.active else { return Vec::new() };
        if m.operation.is_some() {
            return Vec::new();
        }
        let dead = |r: &ReplicaModel| Dead {
            color: active,
            number: r.number,
            handle: r.handle.clone(),
            spec: r.spec.clone(),
            reason: r.reason.clone().unwrap_or_else(|| "exited".into()),
        };
        m.colors
            .get(&active)
            .map(|c| {
                c.replicas.iter().filter(|r| r.exited && r.state == ReplicaState::Serving).map(dead).collect()
            })
            .unwrap_or_default()
    }

    /// Start a replacement for `dead` under the same number; the service
    /// is held.
    async fn replace(self: &Arc<Self>, healer: &mut Healer, dead: Dead) {
        let Dead { color, number, handle, spec, reason } = dead;
        let slot = (color, number);
        let logs = self.shared.runtime.logs(&handle, EXIT_LOG_LINES).await.unwrap_or_default();
        let mut message = format!(
            "replica {number} of {color} ({}) exited while serving ({reason}); starting a replacement \
             with revision {}",
            handle.name, spec.revision
        );
        let streak = healer.backoff.streak(slot);
        if streak > 0 {
            message.push_str(&format!(" (after {streak} quick exit(s) in a row)"));
        }
        let logs = logs.trim_end();
        if !logs.is_empty() {
            message.push_str("\nlast log lines:\n");
            message.push_str(logs);
        }
        tracing::warn!(service = %self.name, %color, replica = number, "{message}");
        self.emit(None, EventKind::Message { level: "warn".into(), message });
        // The dead one goes first: its name is the replacement's.
        if let Err(e) = self.shared.runtime.remove(&handle).await {
            tracing::warn!(service = %self.name, replica = %handle.name, error = %e, "cannot remove the exited replica");
        }
        healer.backoff.started(slot, Instant::now());
        match self.start_replica_as(color, number, &spec, ReplicaState::Serving).await {
            Ok(()) => {
                let backend = self.backend_of(color, number);
                if let Some(backend) = backend {
                    healer.pending.insert(slot, Pending { backend, started: Instant::now(), warned: false });
                }
                // The dead backend leaves the table; the new one joins the
                // rotation when its health checks pass.
            }
            Err(e) => {
                let message = format!(
                    "cannot start a replacement for replica {number} of {color}: {e}; trying again later"
                );
                tracing::error!(service = %self.name, "{message}");
                self.emit(None, EventKind::Message { level: "error".into(), message });
            }
        }
    }

    /// Report replacements that became healthy (or did not in time).
    fn report_replacements(&self, healer: &mut Healer) {
        let deadline = self.config.health.deadline;
        let mut lines = Vec::new();
        let m = self.view();
        healer.pending.retain(|&(color, number), p| {
            let Some(r) =
                m.colors.get(&color).and_then(|c| c.replicas.iter().find(|r| r.backend == p.backend))
            else {
                return false; // an operation replaced or removed it
            };
            if r.exited {
                return false; // the next pass replaces it again
            }
            if r.health == Health::Healthy {
                lines.push((
                    "info",
                    format!(
                        "replica {number} of {color} replaced: healthy and back in rotation after {}ms",
                        p.started.elapsed().as_millis()
                    ),
                ));
                return false;
            }
            if !p.warned && p.started.elapsed() >= deadline {
                p.warned = true;
                lines.push((
                    "warn",
                    format!(
                        "the replacement of replica {number} of {color} is not healthy after {} ({}); \
                         it joins the rotation when it passes",
                        humantime::format_duration(deadline),
                        r.reason.as_deref().unwrap_or("no passing check yet")
                    ),
                ));
            }
            true
        });
        for (level, message) in lines {
            if level == "info" {
                tracing::info!(service = %self.name, "{message}");
            } else {
                tracing::warn!(service = %self.name, "{message}");
            }
            self.emit(None, EventKind::Message { level: level.into(), message });
        }
    }

    /// The proxy backend of replica `number` of `color`.
    fn backend_of(&self, color: Color, number: u32) -> Option<BackendId> {
        let m = self.view();
        m.colors.get(&color)?.replicas.iter().find(|r| r.number == number).map(|r| r.backend.clone())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn first_replacement_is_immediate_and_quick_exits_back_off() {
        let mut b = Backoff::default();
        let slot = (Color::Blue, 1);
        let t0 = Instant::now();
        let (due, fresh) = b.due(slot, t0);
        assert_eq!((due, fresh), (t0, true));
        // Asking again before it started gives the same answer.
        assert_eq!(b.due(slot, t0 + Duration::from_millis(500)), (t0, false));
        let mut now = t0;
        let mut waits = Vec::new();
        for _ in 0..12 {
            b.started(slot, now);
            now += Duration::from_secs(2); // exits two seconds later
            let (due, _) = b.due(slot, now);
            waits.push((due - now).as_secs());
            now = due;
        }
        assert_eq!(waits, [1, 2, 4, 8, 16, 32, 64, 128, 256, 300, 300, 300]);
    }

    #[test]
    fn a_replacement_that_ran_long_enough_resets_the_backoff() {
        let mut b = Backoff::default();
        let slot = (Color::Green, 2);
        let t0 = Instant::now();
        b.due(slot, t0);
        b.started(slot, t0);
        let (due, _) = b.due(slot, t0 + Duration::from_secs(1));
        assert_eq!(due - (t0 + Duration::from_secs(1)), Duration::from_secs(1));
        b.started(slot, due);
        let later = due + STABLE_AFTER;
        assert_eq!(b.due(slot, later), (later, true));
        assert_eq!(b.streak(slot), 0);
        // Slots are independent.
        assert_eq!(b.due((Color::Green, 1), later), (later, true));
    }
}
