//! Following an operation to its end: read the agent's event stream from the
//! operation's first event, show progress (a live indicatif display on a
//! terminal, timestamped lines otherwise, both on stderr), and return the
//! operation's [`Outcome`].

use crate::client::{encode, Client};
use crate::error::Error;
use crate::render;
use bg_api::{Event, EventKind, OperationAccepted, Outcome, Phase, ServiceStatus};
use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};
use std::io::IsTerminal;
use std::time::{Duration, Instant};

/// The pause between two attempts to reopen the event stream (1 second);
/// they go on for the client's timeout (`--host-timeout`, 30 s by
/// default): enough to ride out an agent restart by systemd.
const STREAM_RETRY_DELAY: Duration = Duration::from_secs(1);

/// Where progress goes: one display for all agents of a command.
#[derive(Clone)]
pub struct Progress {
    multi: Option<MultiProgress>,
    fleet: bool,
}

impl Progress {
    /// A live display when stderr is a terminal, plain lines otherwise.
    /// `fleet` prefixes everything with the agent's address.
    pub fn new(fleet: bool) -> Progress {
        let multi = std::io::stderr()
            .is_terminal()
            .then(|| MultiProgress::with_draw_target(ProgressDrawTarget::stderr()));
        Progress { multi, fleet }
    }

    /// Starts showing one operation on one agent.
    pub fn track(&self, client: &Client, accepted: &OperationAccepted) -> Tracker {
        let prefix = if self.fleet { format!("[{}] ", client.name()) } else { String::new() };
        let label =
            format!("{} {} #{}", accepted.service, render::kind_name(accepted.kind), accepted.operation);
        let bar = self.multi.as_ref().map(|m| {
            let bar = m.add(ProgressBar::new_spinner());
            bar.set_style(
                ProgressStyle::with_template("{spinner} {prefix}{wide_msg} {elapsed:>4}")
                    .unwrap_or_else(|_| ProgressStyle::default_spinner()),
            );
            bar.set_prefix(prefix.clone());
            bar.enable_steady_tick(Duration::from_millis(120));
            bar
        });
        let tracker = Tracker {
            multi: self.multi.clone(),
            bar,
            prefix,
            label,
            phase: Phase::Accepted,
            healthy: None,
            inflight: 0,
        };
        tracker.redraw();
        tracker
    }

    /// Prints a note about the whole command above any live display.
    pub fn note(&self, text: &str) {
        print_line(self.multi.as_ref(), &format!("bgctl: {text}"));
    }
}

fn print_line(multi: Option<&MultiProgress>, text: &str) {
    match multi {
        Some(m) => {
            let _ = m.println(text);
        }
        None => eprintln!("{text}"),
    }
}

/// The progress of one operation on one agent.
pub struct Tracker {
    multi: Option<MultiProgress>,
    bar: Option<ProgressBar>,
    prefix: String,
    label: String,
    phase: Phase,
    healthy: Option<(u32, u32)>,
    inflight: u64,
}

impl Tracker {
    fn redraw(&self) {
        let Some(bar) = &self.bar else {
            return;
        };
        let mut msg = format!("{} · {}", self.label, self.phase);
        if let Some((healthy, wanted)) = self.healthy {
            msg.push_str(&format!(" · {healthy}/{wanted} healthy"));
        }
        if self.inflight > 0 || self.phase == Phase::Draining {
            msg.push_str(&format!(" · {} in flight to drain", self.inflight));
        }
        bar.set_message(msg);
    }

    /// Takes one event of the operation into account.
    pub fn event(&mut self, e: &Event) {
        let mut print = true;
        match &e.kind {
            EventKind::Phase { phase, .. } => self.phase = *phase,
            EventKind::Progress { healthy, wanted, inflight } => {
                let changed = self.healthy != Some((*healthy, *wanted)) || self.inflight != *inflight;
                self.healthy = Some((*healthy, *wanted));
                self.inflight = *inflight;
                // The live display shows progress in place; plain lines only
                // when it changed.
                print = self.bar.is_none() && changed;
            }
            _ => {}
        }
        self.redraw();
        if print {
            let (ty, details) = render::event_details(&e.kind);
            let line = if self.bar.is_some() {
                format!("{}{}: {ty} {details}", self.prefix, self.label)
            } else {
                format!("{} {}{}: {ty} {details}", e.at, self.prefix, self.label)
            };
            print_line(self.multi.as_ref(), &line);
        }
    }

    /// Removes the live display.
    pub fn finish(&self) {
        if let Some(bar) = &self.bar {
            bar.finish_and_clear();
        }
    }
}

impl Drop for Tracker {
    fn drop(&mut self) {
        self.finish();
    }
}

/// Follows operation `accepted` on `client` until its `operation_finished`
/// event and returns its outcome. A stream that stays quiet for the
/// client's timeout is reopened (a link that died leaves it hanging
/// without an error), from the last event seen; a broken one is reopened
/// every second until the agent has been unreachable for the client's
/// timeout. When the finish was missed (agent restarted), the service's
/// `last_outcome` answers.
pub async fn wait(
    client: &Client,
    accepted: &OperationAccepted,
    tracker: &mut Tracker,
) -> Result<Outcome, Error> {
    let mut since = accepted.since;
    let mut lost_since: Option<Instant> = None;
    loop {
        let path = format!("/v1/events?service={}&since={since}&follow=true", encode(&accepted.service));
        let broke = match client.stream(&path).await {
            Ok(mut stream) => {
                lost_since = None;
                loop {
                    let Ok(line) = tokio::time::timeout(client.timeout(), stream.next_line()).await else {
                        break Error::Timeout { addr: client.label(), secs: client.timeout().as_secs() };
                    };
                    match line {
                        Ok(Some(line)) => {
                            // Lines of a newer agent that this bgctl cannot
                            // read are skipped rather than fatal.
                            let Some(event) = decode_event(&line) else {
                                continue;
                            };
                            if event.seq < since {
                                // Replayed after a reconnect: already shown.
                                continue;
                            }
                            since = event.seq + 1;
                            if event.operation != Some(accepted.operation) {
                                continue;
                            }
                            tracker.event(&event);
                            if let EventKind::OperationFinished { result: outcome } = event.kind {
                                return Ok(outcome);
                            }
                        }
                        Ok(None) => {
                            break Error::StreamEnded { addr: client.label(), operation: accepted.operation }
                        }
                        Err(e) => break e,
                    }
                }
            }
            Err(e @ (Error::Unreachable { .. } | Error::Transport { .. } | Error::Timeout { .. })) => e,
            Err(e) => return Err(e),
        };
        if lost_since.get_or_insert_with(Instant::now).elapsed() > client.timeout() {
            return Err(broke);
        }
        tokio::time::sleep(STREAM_RETRY_DELAY).await;
        if let Some(outcome) = finished_meanwhile(client, accepted).await? {
            return Ok(outcome);
        }
    }
}

/// The operation's outcome when the service says it already ended.
async fn finished_meanwhile(client: &Client, accepted: &OperationAccepted) -> Result<Option<Outcome>, Error> {
    let path = format!("/v1/services/{}", encode(&accepted.service));
    let status: ServiceStatus = match client.get(&path).await {
        Ok(s) => s,
        // Still unreachable: let the stream retry count decide.
        Err(Error::Unreachable { .. } | Error::Transport { .. } | Error::Timeout { .. }) => return Ok(None),
        Err(e) => return Err(e),
    };
    Ok(status.last_outcome.filter(|o| o.operation == accepted.operation))
}

/// Decodes one line of the event stream; `None` for a line this bgctl does
/// not understand (an event type from a newer agent).
pub fn decode_event(line: &str) -> Option<Event> {
    serde_json::from_str::<Event>(line).ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use bg_api::{OperationKind, OutcomeKind};

    #[test]
    fn operation_finished_as_the_agent_serializes_it_is_read_back() {
        let outcome = Outcome {
            operation: 5,
            kind: OperationKind::Deploy,
            outcome: OutcomeKind::RolledBack,
            message: "green unhealthy".into(),
            revision: 8,
            at: "2026-01-01T00:00:15Z".into(),
        };
        let event = Event {
            seq: 15,
            at: "2026-01-01T00:00:15Z".into(),
            service: "web".into(),
            operation: Some(5),
            kind: EventKind::OperationFinished { result: outcome },
        };
        let line = serde_json::to_string(&event).unwrap();
        assert_eq!(decode_event(&line), Some(event));
    }

    #[test]
    fn other_events_decode_directly() {
        let line = r#"{"seq":3,"at":"t","service":"web","operation":5,"type":"progress","healthy":1,"wanted":2,"inflight":0}"#;
        let e = decode_event(line).unwrap();
        assert_eq!(e.operation, Some(5));
        assert!(matches!(e.kind, EventKind::Progress { healthy: 1, wanted: 2, inflight: 0 }));
        assert_eq!(decode_event(r#"{"seq":1,"type":"from_the_future"}"#), None);
        assert_eq!(decode_event("not json"), None);
    }
}
