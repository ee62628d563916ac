//! What an accepted operation works on: its context, its plan (the
//! request checked against the model and merged with the config), and
//! how it fails. The operation modules (`ops`, `rolling`) and the model
//! depend on these types, not on each other.

use super::model::Paused;
use super::ControlError;
use crate::api::{Color, OperationKind, Outcome, OutcomeKind, Spec};
use crate::config::RollingConfig;
use crate::state::RevisionSpec;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// The running operation, as its steps see it.
#[derive(Clone)]
pub(super) struct OpCtx {
    pub id: u64,
    pub kind: OperationKind,
    pub revision: u64,
    pub cancel: CancellationToken,
}

/// Why an operation did not succeed.
#[derive(Debug)]
pub(super) struct OpFailure {
    pub outcome: OutcomeKind,
    pub message: String,
}

impl OpFailure {
    pub fn new(outcome: OutcomeKind, message: impl Into<String>) -> OpFailure {
        OpFailure { outcome, message: message.into() }
    }

    pub fn failed(message: impl Into<String>) -> OpFailure {
        OpFailure::new(OutcomeKind::Failed, message)
    }
}

/// What an accepted request will work on.
pub(super) struct Plan {
    pub revision: Option<u64>,
    pub target: Option<Color>,
    /// The spec a deploy (or a rollback by redeploy) starts.
    pub spec: Option<Spec>,
    /// Parsed canary settings.
    pub canary: Option<CanaryPlan>,
    /// Parsed rolling settings.
    pub rolling: Option<RollingPlan>,
    /// The replica a replica operation acts on.
    pub replica: Option<(Color, u32)>,
    /// For an abort: how the operation it stopped ended.
    pub stopped: Option<Outcome>,
    /// The paused operation this request finishes (promote) or undoes
    /// (abort).
    pub paused: Option<Paused>,
    /// A converging deploy whose spec already runs: where.
    pub current: Option<Current>,
}

/// Where a converging deploy's spec already runs (`DeployRequest::converge`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Current {
    /// The active color runs it: nothing to do.
    Active(Color),
    /// A healthy candidate runs it: nothing to start.
    Candidate(Color),
}

impl Plan {
    /// Nothing to work on.
    pub fn empty() -> Plan {
        Plan {
            revision: None,
            target: None,
            spec: None,
            canary: None,
            rolling: None,
            replica: None,
            stopped: None,
            paused: None,
            current: None,
        }
    }

    /// An abort whose work was done by the operation it stopped.
    pub fn stopped(outcome: Outcome) -> Plan {
        Plan { revision: Some(outcome.revision), stopped: Some(outcome), ..Plan::empty() }
    }
}

/// A canary request, validated.
pub(super) struct CanaryPlan {
    pub weight: Option<u8>,
    pub steps: Vec<u8>,
    pub interval: Duration,
    pub max_error_rate: f64,
    pub max_p99: Option<Duration>,
    pub min_requests: u64,
    pub promote: bool,
}

pub(super) fn validate_spec(spec: &Spec, runtime: &str) -> Result<(), ControlError> {
    if let Some(image) = &spec.image {
        crate::image_ref::validate(image).map_err(|e| ControlError::BadRequest(e.to_string()))?;
    }
    if runtime == "docker" && spec.image.is_none() {
        return Err(ControlError::BadRequest("the docker runtime needs an image".into()));
    }
    if runtime == "process" && spec.command.as_ref().is_none_or(|c| c.is_empty() || c[0].is_empty()) {
        return Err(ControlError::BadRequest("the process runtime needs a non-empty command".into()));
    }
    for key in spec.env.keys() {
        if key.is_empty() || key.contains('=') || key.contains('\0') {
            return Err(ControlError::BadRequest(format!("env key {key:?} is not a valid variable name")));
        }
    }
    Ok(())
}

/// A validated rolling request: from which revision to which, with the
/// service's `[rolling]` settings as the request overrode them.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct RollingPlan {
    pub target: RevisionSpec,
    pub previous: RevisionSpec,
    pub settings: RollingConfig,
}
