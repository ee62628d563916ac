//! Operations on one agent: what each operation command POSTs where, and
//! running one to its end (POST, then follow its events). Also the
//! [`Report`] every command returns, printable as text or JSON.

use crate::client::{encode, Client};
use crate::error::{Error, EXIT_FAILED, EXIT_OK};
use crate::follow::{self, Progress};
use crate::render;
use bg_agent::api::{
    CanaryRequest, DeployRequest, OperationAccepted, Outcome, OutcomeKind, RollingRequest, SpecOverrides,
};
use serde_json::Value;

/// What a command produced: a JSON document and a text form for stdout, and
/// the exit code.
#[derive(Debug, Clone)]
pub struct Report {
    /// The `--output json` document; `None` when the command already
    /// printed as it went (`events --follow`).
    pub json: Option<Value>,
    /// The `--output text` form, newline-terminated or empty.
    pub text: String,
    /// The process exit code.
    pub exit_code: u8,
}

/// An operation request.
#[derive(Debug, Clone)]
pub enum Op {
    /// `POST deploy`.
    Deploy(DeployRequest),
    /// `POST promote`.
    Promote,
    /// `POST rollback`.
    Rollback,
    /// `POST abort`.
    Abort,
    /// `POST canary`.
    Canary(CanaryRequest),
    /// `POST rolling`.
    Rolling(RollingRequest),
    /// `POST replicas/{id}/drain`.
    Drain(String),
    /// `POST replicas/{id}/enable`.
    Enable(String),
    /// `POST replicas/{id}/update`.
    Update(String, SpecOverrides),
}

impl Op {
    /// The request path for `service`.
    pub fn path(&self, service: &str) -> String {
        let base = format!("/v1/services/{}", encode(service));
        match self {
            Op::Deploy(_) => format!("{base}/deploy"),
            Op::Promote => format!("{base}/promote"),
            Op::Rollback => format!("{base}/rollback"),
            Op::Abort => format!("{base}/abort"),
            Op::Canary(_) => format!("{base}/canary"),
            Op::Rolling(_) => format!("{base}/rolling"),
            Op::Drain(id) => format!("{base}/replicas/{}/drain", encode(id)),
            Op::Enable(id) => format!("{base}/replicas/{}/enable", encode(id)),
            Op::Update(id, _) => format!("{base}/replicas/{}/update", encode(id)),
        }
    }

    /// The JSON body.
    pub fn body(&self) -> Value {
        let body = match self {
            Op::Deploy(r) => serde_json::to_value(r),
            Op::Canary(r) => serde_json::to_value(r),
            Op::Rolling(r) => serde_json::to_value(r),
            Op::Update(_, o) => serde_json::to_value(o),
            Op::Promote | Op::Rollback | Op::Abort | Op::Drain(_) | Op::Enable(_) => {
                Ok(Value::Object(Default::default()))
            }
        };
        // Plain structs of strings and numbers always serialize.
        body.unwrap_or_default()
    }
}

/// An operation the agent accepted, and how it ended when it was followed.
#[derive(Debug, Clone)]
pub struct OpDone {
    /// The agent's answer to the POST.
    pub accepted: OperationAccepted,
    /// The end, unless `--no-wait`.
    pub outcome: Option<Outcome>,
}

impl OpDone {
    /// 0 when accepted without waiting or succeeded, 1 otherwise.
    pub fn exit_code(&self) -> u8 {
        match &self.outcome {
            None => EXIT_OK,
            Some(o) if o.outcome == OutcomeKind::Succeeded => EXIT_OK,
            Some(_) => EXIT_FAILED,
        }
    }

    /// True when it was followed and succeeded, or not followed.
    pub fn ok(&self) -> bool {
        self.exit_code() == EXIT_OK
    }

    /// The JSON document: the [`Outcome`], or the [`OperationAccepted`]
    /// answer with `--no-wait`.
    pub fn json(&self) -> Value {
        match &self.outcome {
            Some(o) => serde_json::to_value(o).unwrap_or_default(),
            None => serde_json::to_value(&self.accepted).unwrap_or_default(),
        }
    }

    /// The report for one agent.
    pub fn report(&self) -> Report {
        let service = &self.accepted.service;
        let text = match &self.outcome {
            None => format!(
                "{service}: {} #{} accepted (revision {}); follow it with `bgctl events {service} --follow --since {}`\n",
                render::kind_name(self.accepted.kind),
                self.accepted.operation,
                self.accepted.revision,
                self.accepted.since
            ),
            Some(o) if o.outcome == OutcomeKind::Paused => format!(
                "{}\n{}\n",
                render::outcome_line(service, o),
                render::paused_hint(service, o)
            ),
            Some(o) => format!("{}\n", render::outcome_line(service, o)),
        };
        Report { json: Some(self.json()), text, exit_code: self.exit_code() }
    }
}

/// POSTs `op` for `service` and, when `wait`, follows it to its end.
pub async fn run(
    client: &Client,
    service: &str,
    op: &Op,
    wait: bool,
    progress: &Progress,
) -> Result<OpDone, Error> {
    let accepted: OperationAccepted = client.post(&op.path(service), &op.body()).await?;
    if !wait {
        return Ok(OpDone { accepted, outcome: None });
    }
    let mut tracker = progress.track(client, &accepted);
    let outcome = follow::wait(client, &accepted, &mut tracker).await;
    tracker.finish();
    Ok(OpDone { accepted, outcome: Some(outcome?) })
}

#[cfg(test)]
mod tests {
    use super::*;
    use bg_agent::api::OperationKind;

    #[test]
    fn paths_and_bodies_follow_the_api_table() {
        assert_eq!(Op::Promote.path("web"), "/v1/services/web/promote");
        assert_eq!(
            Op::Update("2".into(), SpecOverrides::default()).path("web"),
            "/v1/services/web/replicas/2/update"
        );
        assert_eq!(Op::Abort.body(), serde_json::json!({}));
        let deploy = Op::Deploy(DeployRequest {
            image: Some("websample:v2".into()),
            promote: Some(false),
            ..Default::default()
        });
        assert_eq!(deploy.body(), serde_json::json!({"image": "websample:v2", "promote": false}));
    }

    fn done(kind: OperationKind, outcome: Option<OutcomeKind>) -> OpDone {
        OpDone {
            accepted: OperationAccepted {
                operation: 9,
                service: "web".into(),
                kind,
                revision: 4,
                since: 120,
            },
            outcome: outcome.map(|outcome| Outcome {
                operation: 9,
                kind,
                outcome,
                message: "batch 2 unhealthy".into(),
                revision: 4,
                at: "2026-01-01T00:00:00Z".into(),
            }),
        }
    }

    #[test]
    fn outcomes_map_to_exit_codes_and_paused_says_how_to_resume() {
        assert_eq!(done(OperationKind::Deploy, None).exit_code(), 0);
        assert_eq!(done(OperationKind::Deploy, Some(OutcomeKind::Succeeded)).exit_code(), 0);
        for bad in [OutcomeKind::Failed, OutcomeKind::RolledBack, OutcomeKind::Aborted, OutcomeKind::Paused] {
            assert_eq!(done(OperationKind::Rolling, Some(bad)).exit_code(), 1);
        }
        let paused = done(OperationKind::Rolling, Some(OutcomeKind::Paused)).report();
        assert!(paused.text.contains("bgctl rolling web --resume"), "{}", paused.text);
        assert_eq!(paused.json.unwrap()["outcome"], "paused");
        let accepted = done(OperationKind::Deploy, None).report();
        assert_eq!(accepted.json.unwrap()["since"], 120);
        assert!(accepted.text.contains("--since 120"), "{}", accepted.text);
    }
}
