//! `bgctl pause|resume|maintenance|live`: the gate in front of a service's
//! replicas, part of the model (so the route table carries it) but no
//! operation: it takes no lock and can be set while a deploy runs (pause,
//! promote, resume). Maintenance is persisted and survives a restart; a
//! pause is not (a restarted agent serves).

use super::{ControlError, Service};
use crate::api::{EventKind, ServiceStatus, Traffic};
use crate::events::now_rfc3339;
use crate::state::MaintenanceRecord;
use bg_proxy::Gate;
use std::time::Duration;

/// How long a request is held by default (`bgctl pause` without `--max`).
pub const DEFAULT_PAUSE_MAX: Duration = Duration::from_secs(30);
/// `Retry-After` of maintenance answers.
pub const MAINTENANCE_RETRY_AFTER: Duration = Duration::from_secs(30);
/// The maintenance text when none is given.
pub const DEFAULT_MAINTENANCE_MESSAGE: &str =
    "This service is down for maintenance. Please try again shortly.";

/// What the operator asked for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TrafficChange {
    /// Hold requests, each up to this long.
    Pause(Duration),
    /// Let held and new requests go on.
    Resume,
    /// Answer 503 with this text.
    Maintenance(Option<String>),
    /// End maintenance.
    Live,
}

/// The proxy's gate for `traffic`.
pub(super) fn gate(traffic: &Traffic) -> Gate {
    match traffic {
        Traffic::Open => Gate::Open,
        Traffic::Paused { max_ms, .. } => Gate::Paused { max: Duration::from_millis(*max_ms) },
        Traffic::Maintenance { message, .. } => {
            Gate::Maintenance { message: message.as_str().into(), retry_after: MAINTENANCE_RETRY_AFTER }
        }
    }
}

/// What of `traffic` is persisted: maintenance only.
pub(super) fn record(traffic: &Traffic) -> Option<MaintenanceRecord> {
    match traffic {
        Traffic::Maintenance { since, message } => {
            Some(MaintenanceRecord { since: since.clone(), message: message.clone() })
        }
        _ => None,
    }
}

/// The traffic state a restarted agent starts with.
pub(super) fn from_record(record: Option<&MaintenanceRecord>) -> Traffic {
    match record {
        Some(r) => Traffic::Maintenance { since: r.since.clone(), message: r.message.clone() },
        None => Traffic::Open,
    }
}

/// The state after `change` from `now`, or why it is refused.
fn next(service: &str, now: &Traffic, change: TrafficChange) -> Result<Traffic, ControlError> {
    let refuse = |m: String| Err(ControlError::BadRequest(m));
    match (now, change) {
        (Traffic::Maintenance { .. }, TrafficChange::Pause(_) | TrafficChange::Resume) => {
            refuse(format!("{service} is in maintenance: end it first with bgctl live {service}"))
        }
        (Traffic::Paused { .. }, TrafficChange::Live) => {
            refuse(format!("{service} is paused, not in maintenance: bgctl resume {service} ends the pause"))
        }
        (_, TrafficChange::Pause(max)) if max.is_zero() => {
            refuse("max must be above zero, e.g. \"30s\"".into())
        }
        (Traffic::Paused { since, .. }, TrafficChange::Pause(max)) => {
            Ok(Traffic::Paused { since: since.clone(), max_ms: max.as_millis() as u64 })
        }
        (_, TrafficChange::Pause(max)) => {
            Ok(Traffic::Paused { since: now_rfc3339(), max_ms: max.as_millis() as u64 })
        }
        (_, TrafficChange::Resume | TrafficChange::Live) => Ok(Traffic::Open),
        (_, TrafficChange::Maintenance(message)) => {
            let message = message.filter(|m| !m.trim().is_empty());
            Ok(Traffic::Maintenance {
                since: now_rfc3339(),
                message: message.unwrap_or_else(|| DEFAULT_MAINTENANCE_MESSAGE.to_string()),
            })
        }
    }
}

impl Service {
    /// Apply `change` to the gate; the status after it. A change that
    /// cannot be persisted (maintenance) is undone and refused.
    pub async fn set_traffic(&self, change: TrafficChange) -> Result<ServiceStatus, ControlError> {
        let name = self.name.clone();
        let said = describe(&change);
        let changed = self
            .commit(move |m| {
                let after = next(&name, &m.traffic, change)?;
                let changed = after != m.traffic;
                m.traffic = after;
                Ok::<bool, ControlError>(changed)
            })
            .await
            .map_err(|e| {
                ControlError::BadRequest(format!("cannot persist the change, nothing changed: {e}"))
            })??;
        if changed {
            tracing::info!(service = %self.name, "{said}");
            self.emit(None, EventKind::Message { level: "info".into(), message: said });
        }
        Ok(self.status())
    }
}

fn describe(change: &TrafficChange) -> String {
    match change {
        TrafficChange::Pause(max) => {
            format!("traffic paused: requests are held, each up to {}", humantime::format_duration(*max))
        }
        TrafficChange::Resume => "traffic resumed: held requests go on in the order they came".into(),
        TrafficChange::Maintenance(_) => "maintenance: every request gets 503 until bgctl live".into(),
        TrafficChange::Live => "live: maintenance ended".into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_gate_moves_only_the_documented_ways() {
        let paused = next("web", &Traffic::Open, TrafficChange::Pause(Duration::from_secs(5))).unwrap();
        assert!(matches!(paused, Traffic::Paused { max_ms: 5000, .. }));
        assert!(next("web", &paused, TrafficChange::Live)
            .unwrap_err()
            .to_string()
            .contains("bgctl resume web"));
        assert_eq!(next("web", &paused, TrafficChange::Resume).unwrap(), Traffic::Open);
        assert_eq!(next("web", &Traffic::Open, TrafficChange::Resume).unwrap(), Traffic::Open);
        let down = next("web", &paused, TrafficChange::Maintenance(None)).unwrap();
        assert!(
            matches!(&down, Traffic::Maintenance { message, .. } if message == DEFAULT_MAINTENANCE_MESSAGE)
        );
        assert!(next("web", &down, TrafficChange::Pause(Duration::from_secs(1))).is_err());
        assert!(next("web", &Traffic::Open, TrafficChange::Pause(Duration::ZERO)).is_err());
        assert_eq!(next("web", &down, TrafficChange::Live).unwrap(), Traffic::Open);
        assert_eq!(record(&down).map(|r| from_record(Some(&r))), Some(down));
        assert_eq!(record(&paused), None, "a pause is not persisted");
    }
}
