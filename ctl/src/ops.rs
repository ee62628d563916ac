//! Operations on one agent: what each operation command POSTs where, and
//! running one to its end (POST, then follow its events). Also the
//! [`Report`] every command returns, printable as text or JSON.

use crate::client::{encode, Client};
use crate::error::{Error, EXIT_FAILED, EXIT_OK};
use crate::follow::{self, Progress};
use crate::render;
use bg_api::{OperationAccepted, Outcome, OutcomeKind, ServiceStatus};
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

/// The operation requests, as the API defines them.
pub use bg_api::Operation as Op;

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

/// [`run`], safe to repeat on a fleet: when the service is busy with an
/// operation (a `bgctl` killed half-way left it running), that one is
/// followed to its end first, then `op` is sent once more.
pub async fn run_when_free(
    client: &Client,
    service: &str,
    op: &Op,
    progress: &Progress,
) -> Result<OpDone, Error> {
    match run(client, service, op, true, progress).await {
        Err(Error::Conflict { message }) => {
            let status: ServiceStatus = client.get(&format!("/v1/services/{}", encode(service))).await?;
            let Some(running) = status.operation else {
                // It ended meanwhile.
                return run(client, service, op, true, progress).await;
            };
            progress.note(&format!("[{}] {message}: waiting for it to end first", client.name()));
            let accepted = OperationAccepted {
                operation: running.id,
                service: service.to_string(),
                kind: running.kind,
                revision: running.revision,
                since: 0,
            };
            let mut tracker = progress.track(client, &accepted);
            let waited = follow::wait(client, &accepted, &mut tracker).await;
            tracker.finish();
            waited?;
            run(client, service, op, true, progress).await
        }
        other => other,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bg_api::OperationKind;

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
