//! Wire types of the control API: plain serde structs shared by the agent and
//! `bgctl`. Nothing here knows about bollard, the proxy or the file system.
//!
//! Endpoints (HTTP/1.1 + JSON, all under `/v1`):
//!
//! | method | path                                   | body                 | answer               |
//! |--------|----------------------------------------|----------------------|----------------------|
//! | GET    | `/v1/services`                         |                      | [`ServiceList`]      |
//! | GET    | `/v1/services/{name}`                  |                      | [`ServiceStatus`]    |
//! | GET    | `/v1/services/{name}/history`          |                      | [`History`]          |
//! | POST   | `/v1/services/{name}/deploy`           | [`DeployRequest`]    | [`OperationAccepted`]|
//! | POST   | `/v1/services/{name}/promote`          | `{}`                 | [`OperationAccepted`]|
//! | POST   | `/v1/services/{name}/rollback`         | `{}`                 | [`OperationAccepted`]|
//! | POST   | `/v1/services/{name}/abort`            | `{}`                 | [`OperationAccepted`]|
//! | POST   | `/v1/services/{name}/canary`           | [`CanaryRequest`]    | [`OperationAccepted`]|
//! | POST   | `/v1/services/{name}/rolling`          | [`RollingRequest`]   | [`OperationAccepted`]|
//! | POST   | `/v1/services/{name}/replicas/{id}/drain`  | `{}`             | [`OperationAccepted`]|
//! | POST   | `/v1/services/{name}/replicas/{id}/enable` | `{}`             | [`OperationAccepted`]|
//! | POST   | `/v1/services/{name}/replicas/{id}/update` | [`SpecOverrides`]| [`OperationAccepted`]|
//! | POST   | `/v1/services/{name}/run`              | [`RunRequest`]       | NDJSON of [`RunLine`]|
//! | POST   | `/v1/services/{name}/pause`            | [`PauseRequest`]     | [`ServiceStatus`]    |
//! | POST   | `/v1/services/{name}/resume`           | `{}`                 | [`ServiceStatus`]    |
//! | POST   | `/v1/services/{name}/maintenance`      | [`MaintenanceRequest`]| [`ServiceStatus`]   |
//! | POST   | `/v1/services/{name}/live`             | `{}`                 | [`ServiceStatus`]    |
//! | GET    | `/v1/events?service=NAME&since=SEQ`    |                      | NDJSON of [`Event`]  |
//! | GET    | `/v1/health`                           |                      | `{"ok": true}`       |
//!
//! Errors are [`ErrorBody`] with status 400 (bad input, the message names
//! the field), 401 (no or wrong token), 404 (unknown service or replica),
//! 405 (method), 408 (body too slow), 409 (an operation is already
//! running), 413 (body over 64 KiB) or 500.

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

mod operation;
mod spec;
mod typed;

pub use operation::{encode_segment, Operation};
pub use spec::{
    repository_of, ByteSize, Cpus, EnvFile, FileMode, FileRef, Spec, User, Volume, VolumeSource, FILE_MODE,
    MAX_CPUS, SECRETS_DIR, SECRET_MODE,
};
pub use typed::{ApiDuration, FailureAction, Phase, RollingOrder, MAX_DURATION};

/// One of the two colors of a service.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Color {
    /// The blue color.
    Blue,
    /// The green color.
    Green,
}

impl Color {
    /// The other color.
    pub fn other(self) -> Color {
        match self {
            Color::Blue => Color::Green,
            Color::Green => Color::Blue,
        }
    }

    /// The lowercase name used in labels, names and JSON.
    pub fn as_str(self) -> &'static str {
        match self {
            Color::Blue => "blue",
            Color::Green => "green",
        }
    }

    /// Both colors, blue first.
    pub const ALL: [Color; 2] = [Color::Blue, Color::Green];
}

impl std::fmt::Display for Color {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for Color {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "blue" => Ok(Color::Blue),
            "green" => Ok(Color::Green),
            other => Err(format!("unknown color {other:?}: expected blue or green")),
        }
    }
}

/// Per-deploy changes to the service's configured spec. `image` and
/// `command` replace, `env` adds or replaces keys. Overrides apply to one
/// deploy only.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SpecOverrides {
    /// Replacement image.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image: Option<String>,
    /// Replacement command.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub command: Option<Vec<String>>,
    /// Keys to add or replace in the environment.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub env: BTreeMap<String, String>,
}

/// Health of one replica as its checks see it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Health {
    /// Not yet passed `healthy_threshold` checks.
    Starting,
    /// Passing its checks.
    Healthy,
    /// Failed `unhealthy_threshold` checks in a row, or exited.
    Unhealthy,
}

/// Where a replica stands with respect to traffic.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ReplicaState {
    /// In the proxy's rotation.
    Serving,
    /// Out of rotation, finishing its in-flight requests.
    Draining,
    /// Running but out of rotation (warm, drained, or not yet healthy).
    Out,
    /// Stopped or exited.
    Stopped,
}

/// One replica of a color.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ReplicaStatus {
    /// The replica number within its color, `"1"`, `"2"`, ...
    pub id: String,
    /// The address the proxy forwards to.
    pub addr: String,
    /// Health as seen by the checks.
    pub health: Health,
    /// Traffic state.
    pub state: ReplicaState,
    /// Requests (and upgraded connections) in flight through the proxy.
    pub inflight: u64,
    /// The runtime's handle: container name or process id.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub runtime_id: Option<String>,
    /// The revision whose spec this replica runs (differs within a color
    /// during a rolling update).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub revision: Option<u64>,
    /// The spec this replica runs, when it differs from its color's spec
    /// (rolling and manual replica updates).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub spec: Option<Spec>,
}

/// One color of a service.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct ColorStatus {
    /// The spec this color runs, `null` when it is empty.
    pub spec: Option<Spec>,
    /// The revision of that spec.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub revision: Option<u64>,
    /// Its replicas.
    pub replicas: Vec<ReplicaStatus>,
}

/// Traffic weights in percent; they add up to 100.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Weights {
    /// Percent of new clients sent to blue.
    pub blue: u8,
    /// Percent of new clients sent to green.
    pub green: u8,
}

impl Weights {
    /// All traffic to one color.
    pub fn all_to(color: Color) -> Weights {
        match color {
            Color::Blue => Weights { blue: 100, green: 0 },
            Color::Green => Weights { blue: 0, green: 100 },
        }
    }

    /// `pct` percent to `color`, the rest to the other one.
    pub fn split(color: Color, pct: u8) -> Weights {
        let pct = pct.min(100);
        match color {
            Color::Blue => Weights { blue: pct, green: 100 - pct },
            Color::Green => Weights { blue: 100 - pct, green: pct },
        }
    }

    /// The weight of one color.
    pub fn of(self, color: Color) -> u8 {
        match color {
            Color::Blue => self.blue,
            Color::Green => self.green,
        }
    }
}

/// The kind of a running operation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum OperationKind {
    /// Start the idle color.
    Deploy,
    /// Swap traffic to the new color, drain and stop the old.
    Promote,
    /// Weighted split, set by hand or stepped.
    Canary,
    /// Back to the previous color or spec.
    Rollback,
    /// Remove the new color; traffic stays.
    Abort,
    /// Replace replicas of the active color in batches.
    Rolling,
    /// Drain, update or enable one replica.
    Replica,
}

/// The operation a service is running.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct OperationStatus {
    /// Its id, unique across services and restarts (events carry it).
    pub id: u64,
    /// What it is.
    pub kind: OperationKind,
    /// Its current step.
    pub phase: Phase,
    /// The revision it works on.
    pub revision: u64,
    /// When it started, RFC 3339.
    pub started_at: String,
    /// A short human-readable line about where it is.
    #[serde(default)]
    pub detail: String,
}

/// `GET /v1/services/{name}`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ServiceStatus {
    /// Service name.
    pub name: String,
    /// Revision of the active color's spec.
    pub revision: u64,
    /// The color that takes traffic at rest; `null` before the first deploy.
    pub active: Option<Color>,
    /// Current split.
    pub weights: Weights,
    /// The running operation, or `null`.
    pub operation: Option<OperationStatus>,
    /// Both colors, keyed `blue` and `green`.
    pub colors: BTreeMap<Color, ColorStatus>,
    /// The addresses the service's proxy listens on.
    #[serde(default)]
    pub listen: Vec<String>,
    /// The last operation's outcome, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_outcome: Option<Outcome>,
    /// Whether requests go on to the replicas (`bgctl pause`,
    /// `maintenance`).
    #[serde(default)]
    pub traffic: Traffic,
}

/// Whether a service's proxy passes requests on to its replicas.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(tag = "state", rename_all = "snake_case")]
pub enum Traffic {
    /// Requests go on.
    #[default]
    Open,
    /// `bgctl pause`: requests are held, each up to `max_ms`, and go on in
    /// the order they came at `bgctl resume`.
    Paused {
        /// When it was paused, RFC 3339.
        since: String,
        /// The longest one request is held, in milliseconds; a 503 after.
        max_ms: u64,
    },
    /// `bgctl maintenance`: every request gets a 503 with `message` and
    /// `Retry-After`, until `bgctl live`.
    Maintenance {
        /// When maintenance began, RFC 3339.
        since: String,
        /// The answer's text.
        message: String,
    },
}

/// `POST /v1/services/{name}/pause`.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PauseRequest {
    /// The longest one request is held (default 30 s).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max: Option<ApiDuration>,
}

/// `POST /v1/services/{name}/maintenance`.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MaintenanceRequest {
    /// The text every request gets (a default one when absent).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
}

/// `GET /v1/services`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ServiceList {
    /// Every configured service.
    pub services: Vec<ServiceStatus>,
}

/// `POST /v1/services/{name}/deploy`.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DeployRequest {
    /// Replacement image for this deploy.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image: Option<String>,
    /// Replacement command for this deploy.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub command: Option<Vec<String>>,
    /// Environment keys to add or replace for this deploy.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub env: BTreeMap<String, String>,
    /// Promote as soon as the new color is healthy (overrides the
    /// service's `auto_promote`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub promote: Option<bool>,
    /// Safe to repeat (fleets): when the active color already runs this
    /// spec, the operation ends at once with nothing done; when a healthy
    /// candidate runs it, nothing is started again (it is promoted when
    /// `promote` says so). Specs are compared as configured: image,
    /// command, env and every other key, not the digest or the content
    /// sha256 a deploy pinned.
    #[serde(default, skip_serializing_if = "is_false")]
    pub converge: bool,
}

fn is_false(b: &bool) -> bool {
    !*b
}

impl DeployRequest {
    /// The spec changes this request carries.
    pub fn overrides(&self) -> SpecOverrides {
        SpecOverrides { image: self.image.clone(), command: self.command.clone(), env: self.env.clone() }
    }
}

impl RollingRequest {
    /// The spec changes this request carries.
    pub fn overrides(&self) -> SpecOverrides {
        SpecOverrides { image: self.image.clone(), command: self.command.clone(), env: self.env.clone() }
    }
}

impl Spec {
    /// This spec with `overrides` applied: image and command replace, env
    /// keys are added or replaced.
    pub fn with_overrides(&self, overrides: &SpecOverrides) -> Spec {
        let mut spec = self.clone();
        if let Some(image) = &overrides.image {
            // A new image has its own digest, found by the deploy.
            if spec.image.as_ref() != Some(image) {
                spec.digest = None;
            }
            spec.image = Some(image.clone());
        }
        if let Some(command) = &overrides.command {
            spec.command = Some(command.clone());
        }
        for (k, v) in &overrides.env {
            spec.env.insert(k.clone(), v.clone());
        }
        spec
    }
}

/// `POST /v1/services/{name}/canary`: either a fixed weight or a stepped
/// analysis.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CanaryRequest {
    /// Set this percentage of new clients to the new color and return.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub weight: Option<u8>,
    /// Step through these percentages.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub steps: Vec<u8>,
    /// Time at each step before judging it, humantime (`30s`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub interval: Option<ApiDuration>,
    /// Abort when the new color's 5xx rate exceeds the stable color's (over
    /// the same step) by more than this fraction (default 0.01).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_error_rate: Option<f64>,
    /// Abort when the new color's p99 latency passes this, humantime.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_p99: Option<ApiDuration>,
    /// Fewer requests than this at a step is judged "not enough data" and
    /// the step waits longer (up to another interval) before failing.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min_requests: Option<u64>,
    /// Promote after the last step passes.
    #[serde(default)]
    pub promote: bool,
}

/// `POST /v1/services/{name}/rolling`. Unset fields come from the
/// service's `[rolling]` config.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RollingRequest {
    /// Replacement image.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image: Option<String>,
    /// Replacement command.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub command: Option<Vec<String>>,
    /// Environment keys to add or replace.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub env: BTreeMap<String, String>,
    /// Replicas replaced at once.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub parallelism: Option<u32>,
    /// Pause between batches, humantime.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub delay: Option<ApiDuration>,
    /// `start-first` or `stop-first`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub order: Option<RollingOrder>,
    /// `pause`, `continue` or `rollback`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub failure_action: Option<FailureAction>,
    /// Watch each batch this long after it is in, humantime.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub monitor: Option<ApiDuration>,
    /// Failed batches tolerated, as a fraction of all batches.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_failure_ratio: Option<f64>,
    /// Continue a paused rolling update instead of starting one.
    #[serde(default)]
    pub resume: bool,
}

/// The answer to every accepted POST: the operation id to follow in the
/// event stream.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct OperationAccepted {
    /// The operation's id; its events carry it.
    pub operation: u64,
    /// The service it runs on.
    pub service: String,
    /// What it is.
    pub kind: OperationKind,
    /// The revision it works on.
    pub revision: u64,
    /// The first event sequence number that belongs to it: follow
    /// `/v1/events?since=SEQ` to see it all.
    pub since: u64,
}

/// The JSON name of a unit variant (`"rolled-back"`), for log fields and
/// labels that must read like the API.
fn wire_name<T: Serialize>(value: &T, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
    match serde_json::to_value(value) {
        Ok(serde_json::Value::String(name)) => f.write_str(&name),
        _ => Err(std::fmt::Error),
    }
}

impl std::fmt::Display for OperationKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        wire_name(self, f)
    }
}

impl std::fmt::Display for OutcomeKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        wire_name(self, f)
    }
}

/// How an operation ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum OutcomeKind {
    /// Did what it was asked.
    Succeeded,
    /// Failed; traffic stayed or went back where it was.
    Failed,
    /// Failed after the switch and was rolled back.
    RolledBack,
    /// Stopped by an abort.
    Aborted,
    /// Stopped where it was, waiting for `--resume` or an abort.
    Paused,
}

/// The end of an operation.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Outcome {
    /// The operation id.
    pub operation: u64,
    /// What it was.
    pub kind: OperationKind,
    /// How it ended.
    pub outcome: OutcomeKind,
    /// Why, in one line.
    pub message: String,
    /// The revision it worked on.
    pub revision: u64,
    /// When it ended, RFC 3339.
    pub at: String,
}

/// One line of the event stream.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Event {
    /// Sequence number, strictly growing, also across agent restarts.
    pub seq: u64,
    /// RFC 3339 time.
    pub at: String,
    /// The service it is about.
    pub service: String,
    /// The operation it belongs to, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub operation: Option<u64>,
    /// What happened.
    #[serde(flatten)]
    pub kind: EventKind,
}

/// What an [`Event`] reports.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum EventKind {
    /// An operation started.
    OperationStarted {
        /// Its kind.
        kind: OperationKind,
        /// Its revision.
        revision: u64,
    },
    /// An operation moved to another phase.
    Phase {
        /// The new phase.
        phase: Phase,
        /// A short description.
        detail: String,
    },
    /// Progress of a phase: replicas healthy, requests left to drain.
    Progress {
        /// Replicas healthy so far.
        healthy: u32,
        /// Replicas wanted.
        wanted: u32,
        /// Requests still in flight on the color being drained.
        inflight: u64,
    },
    /// A replica's health or state changed.
    Replica {
        /// Its color.
        color: Color,
        /// Its number.
        replica: String,
        /// Its health.
        health: Health,
        /// Its traffic state.
        state: ReplicaState,
        /// Why, when it matters (exit status, failed check).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        reason: Option<String>,
    },
    /// The route table changed.
    Switched {
        /// The color at rest.
        active: Option<Color>,
        /// The new split.
        weights: Weights,
    },
    /// A drain ended.
    Drained {
        /// The color drained.
        color: Color,
        /// Requests that finished during the drain.
        finished: u64,
        /// Requests and upgraded connections cut at the deadline.
        cut: u64,
        /// How long it took, milliseconds.
        elapsed_ms: u64,
    },
    /// An operation ended. (A struct variant: the outcome's own `operation`
    /// and `at` would otherwise collide with the event's.)
    OperationFinished {
        /// How it ended.
        result: Outcome,
    },
    /// Something worth a line that fits nowhere else.
    Message {
        /// `info`, `warn` or `error`.
        level: String,
        /// The line.
        message: String,
    },
}

/// `GET /v1/services/{name}/history`: past operations, oldest first.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct History {
    /// The service.
    pub service: String,
    /// Its past operations.
    pub entries: Vec<HistoryEntry>,
}

/// One past operation.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct HistoryEntry {
    /// How it ended.
    #[serde(flatten)]
    pub outcome: Outcome,
    /// When it started, RFC 3339.
    pub started_at: String,
    /// The spec it deployed, where it deployed one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub spec: Option<Spec>,
}

/// Every error answer: `{"error": {"code": "...", "message": "..."}}`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ErrorBody {
    /// The error.
    pub error: ErrorDetail,
}

/// The inside of an [`ErrorBody`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ErrorDetail {
    /// Machine-readable code: `bad_request`, `unauthorized`, `not_found`,
    /// `method_not_allowed`, `request_timeout`, `conflict`,
    /// `payload_too_large`, `not_implemented`, `internal`.
    pub code: String,
    /// What is wrong and what to do.
    pub message: String,
}

/// `POST /v1/services/{name}/run`: run the service's spec once with
/// another command (`bgctl run`). The spec is the candidate's (deployed,
/// not promoted), else the active color's, else the configured one.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RunRequest {
    /// The program and its arguments; must not be empty.
    pub command: Vec<String>,
    /// Run this image instead of the spec's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image: Option<String>,
}

/// One line of the answer to `POST /v1/services/{name}/run`: output lines
/// while it runs, then exactly one `exit` or `error`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum RunLine {
    /// A line the program printed (`stream` is `stdout` or `stderr`;
    /// the runtime's own progress, a pull, comes as `stderr`).
    Output {
        /// `stdout` or `stderr`.
        stream: String,
        /// The line, without its newline.
        line: String,
    },
    /// It ended with this exit code (`128 + signo` when killed).
    Exit {
        /// The exit code.
        exit_code: i64,
    },
    /// It could not be run, or was stopped (the agent shut down).
    Error {
        /// What went wrong.
        error: String,
    },
}

/// The query of `GET /v1/events`.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct EventsQuery {
    /// Only this service's events.
    #[serde(default)]
    pub service: Option<String>,
    /// Replay retained events with `seq >= since` first (all retained
    /// events when absent).
    #[serde(default)]
    pub since: Option<u64>,
    /// Keep the stream open for new events (`true`) or end after the
    /// replay (`false`, the default).
    #[serde(default)]
    pub follow: bool,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn service_status_matches_the_documented_shape() {
        let mut colors = BTreeMap::new();
        colors.insert(Color::Green, ColorStatus::default());
        let s = ServiceStatus {
            name: "web".into(),
            revision: 7,
            active: Some(Color::Blue),
            weights: Weights::all_to(Color::Blue),
            operation: None,
            colors,
            listen: vec![],
            last_outcome: None,
            traffic: Traffic::Open,
        };
        let v = serde_json::to_value(&s).unwrap();
        assert_eq!(v["active"], "blue");
        assert_eq!(v["weights"]["blue"], 100);
        assert_eq!(v["weights"]["green"], 0);
        assert!(v["operation"].is_null());
        assert!(v["colors"]["green"]["spec"].is_null());
        assert_eq!(v["colors"]["green"]["replicas"], serde_json::json!([]));
    }

    #[test]
    fn events_are_tagged_by_type() {
        let e = Event {
            seq: 3,
            at: "2026-01-01T00:00:00Z".into(),
            service: "web".into(),
            operation: Some(1),
            kind: EventKind::Phase { phase: Phase::Draining, detail: String::new() },
        };
        let v = serde_json::to_value(&e).unwrap();
        assert_eq!(v["type"], "phase");
        assert_eq!(v["phase"], "draining");
        let back: Event = serde_json::from_value(v).unwrap();
        assert_eq!(back, e);
    }

    #[test]
    fn operation_finished_has_no_duplicate_keys() {
        let outcome = Outcome {
            operation: 4,
            kind: OperationKind::Deploy,
            outcome: OutcomeKind::Failed,
            message: "m".into(),
            revision: 2,
            at: "2026-01-01T00:00:01Z".into(),
        };
        let e = Event {
            seq: 9,
            at: "2026-01-01T00:00:01Z".into(),
            service: "web".into(),
            operation: Some(4),
            kind: EventKind::OperationFinished { result: outcome },
        };
        let text = serde_json::to_string(&e).unwrap();
        assert_eq!(text.matches("\"operation\"").count(), 2, "{text}");
        assert_eq!(text.matches("\"at\"").count(), 2, "{text}");
        let back: Event = serde_json::from_str(&text).unwrap();
        assert_eq!(back, e);
        assert_eq!(serde_json::to_value(&e).unwrap()["result"]["outcome"], "failed");
    }

    #[test]
    fn deploy_request_refuses_unknown_fields() {
        let err = serde_json::from_str::<DeployRequest>(r#"{"imgae":"x"}"#).unwrap_err();
        assert!(err.to_string().contains("imgae"), "{err}");
    }

    #[test]
    fn weights_split_adds_up_to_100() {
        let w = Weights::split(Color::Green, 10);
        assert_eq!((w.blue, w.green), (90, 10));
        assert_eq!(Weights::split(Color::Blue, 250).of(Color::Blue), 100);
    }
}
