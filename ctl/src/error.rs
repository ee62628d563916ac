//! Everything that can go wrong in bgctl, and the documented exit code each
//! kind maps to. `main` prints the error with its `source()` chain and a
//! hint on what to do next.

use std::io;

/// Exit code: done.
pub const EXIT_OK: u8 = 0;
/// Exit code: the operation failed (unhealthy, rolled back, aborted, paused).
pub const EXIT_FAILED: u8 = 1;
/// Exit code: usage or input error, including an unknown service.
pub const EXIT_USAGE: u8 = 2;
/// Exit code: agent unreachable or unauthorized.
pub const EXIT_UNREACHABLE: u8 = 3;
/// Exit code: another operation is running on the service.
pub const EXIT_CONFLICT: u8 = 4;

/// A bgctl error.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// Input refused before any agent was contacted.
    #[error("{0}")]
    Usage(String),

    /// The connection to the agent could not be made.
    #[error("cannot reach agent at {addr}")]
    Unreachable {
        /// The agent address as given.
        addr: String,
        /// Why.
        #[source]
        source: io::Error,
    },

    /// The connection was made but HTTP over it failed (reset, closed early).
    #[error("lost the connection to agent at {addr}")]
    Transport {
        /// The agent address as given.
        addr: String,
        /// Why.
        #[source]
        source: hyper::Error,
    },

    /// The agent did not answer in time.
    #[error("agent at {addr} did not answer within {secs}s")]
    Timeout {
        /// The agent address as given.
        addr: String,
        /// The limit.
        secs: u64,
    },

    /// The TLS connection to the agent failed verification.
    #[error("TLS to agent at {addr} failed: {reason}")]
    Tls {
        /// The agent address as given.
        addr: String,
        /// Why, in words.
        reason: String,
    },

    /// The agent refused the token (401), or too many failed
    /// authentications came from this address (429).
    #[error("agent at {addr} refused the request as unauthorized: {message}")]
    Unauthorized {
        /// The agent address as given.
        addr: String,
        /// The agent's message.
        message: String,
    },

    /// The agent refused the input (400) or does not know the service or
    /// replica (404).
    #[error("{message}")]
    Rejected {
        /// The agent's error code, e.g. `not_found`.
        code: String,
        /// The agent's message.
        message: String,
    },

    /// Another operation is running on the service (409).
    #[error("{message}")]
    Conflict {
        /// The agent's message.
        message: String,
    },

    /// Any other error answer from the agent (500 and the like).
    #[error("agent at {addr} answered {status}: {message}")]
    Agent {
        /// The agent address as given.
        addr: String,
        /// The HTTP status.
        status: u16,
        /// The agent's error code, or `internal`.
        code: String,
        /// The agent's message, or the raw body.
        message: String,
    },

    /// The agent's answer could not be decoded.
    #[error("agent at {addr} sent an answer bgctl does not understand ({what})")]
    Decode {
        /// The agent address as given.
        addr: String,
        /// What was being decoded.
        what: String,
        /// Why.
        #[source]
        source: serde_json::Error,
    },

    /// The event stream ended before the operation finished, and
    /// reconnecting did not help.
    #[error("the event stream of agent at {addr} ended before operation {operation} finished")]
    StreamEnded {
        /// The agent address as given.
        addr: String,
        /// The operation that was followed.
        operation: u64,
    },

    /// A one-off run (`bgctl run`) could not run or was stopped.
    #[error("the run on agent at {addr} did not complete: {message}")]
    RunFailed {
        /// The agent address as given.
        addr: String,
        /// The agent's message.
        message: String,
    },

    /// Writing to stdout or stderr failed.
    #[error("cannot write output")]
    Io(#[from] io::Error),
}

impl Error {
    /// The documented exit code for this error.
    pub fn exit_code(&self) -> u8 {
        match self {
            Error::Usage(_) | Error::Rejected { .. } => EXIT_USAGE,
            Error::Unreachable { .. }
            | Error::Transport { .. }
            | Error::Timeout { .. }
            | Error::Unauthorized { .. }
            | Error::Tls { .. }
            | Error::StreamEnded { .. } => EXIT_UNREACHABLE,
            Error::Conflict { .. } => EXIT_CONFLICT,
            Error::Agent { .. } | Error::Decode { .. } | Error::RunFailed { .. } | Error::Io(_) => {
                EXIT_FAILED
            }
        }
    }

    /// The machine-readable code printed in `--output json` error documents.
    pub fn code(&self) -> &str {
        match self {
            Error::Usage(_) => "usage",
            Error::Unreachable { .. } | Error::Transport { .. } | Error::StreamEnded { .. } => "unreachable",
            Error::Timeout { .. } => "timeout",
            Error::Unauthorized { .. } => "unauthorized",
            Error::Tls { .. } => "tls",
            Error::Rejected { code, .. } | Error::Agent { code, .. } => code,
            Error::Conflict { .. } => "conflict",
            Error::Decode { .. } => "bad_answer",
            Error::RunFailed { .. } => "run_failed",
            Error::Io(_) => "io",
        }
    }

    /// What the user can do about it, when bgctl knows.
    pub fn hint(&self) -> Option<&'static str> {
        match self {
            Error::Unreachable { .. } | Error::Transport { .. } | Error::Timeout { .. } => {
                Some("is bg-agent running? set --agent or $BG_AGENT")
            }
            Error::Unauthorized { .. } => Some("set --token or $BG_TOKEN to the agent's token"),
            Error::Conflict { .. } => Some(
                "wait for it to finish (bgctl events SERVICE --follow) or stop it with bgctl abort SERVICE",
            ),
            _ => None,
        }
    }

    /// The whole message on one line: the error, its sources, and the hint.
    pub fn one_line(&self) -> String {
        let mut line = self.to_string();
        let mut source = std::error::Error::source(self);
        while let Some(s) = source {
            let text = strip_os_error(&s.to_string());
            if !text.is_empty() && !line.ends_with(&text) {
                line.push_str(": ");
                line.push_str(&text);
            }
            source = s.source();
        }
        if let Some(hint) = self.hint() {
            line.push_str(&format!(" ({hint})"));
        }
        line.replace('\n', " ")
    }

    /// The `--output json` form: `{"error":{"code","message"},"exit_code":N}`.
    pub fn to_json(&self) -> serde_json::Value {
        serde_json::json!({
            "error": {"code": self.code(), "message": self.one_line()},
            "exit_code": self.exit_code(),
        })
    }
}

/// `No such file or directory (os error 2)` → `No such file or directory`.
fn strip_os_error(text: &str) -> String {
    match text.rfind(" (os error ") {
        Some(i) if text.ends_with(')') => text[..i].to_string(),
        _ => text.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unreachable_is_one_line_with_hint_and_exit_3() {
        let e = Error::Unreachable {
            addr: "unix:///run/bg-agent/agent.sock".into(),
            source: io::Error::from_raw_os_error(2),
        };
        assert_eq!(e.exit_code(), 3);
        assert_eq!(
            e.one_line(),
            "cannot reach agent at unix:///run/bg-agent/agent.sock: No such file or directory \
             (is bg-agent running? set --agent or $BG_AGENT)"
        );
        assert_eq!(e.to_json()["exit_code"], 3);
        assert_eq!(e.to_json()["error"]["code"], "unreachable");
    }

    #[test]
    fn agent_answers_map_to_documented_codes() {
        let conflict = Error::Conflict { message: "web: deploy #3 is running".into() };
        assert_eq!(conflict.exit_code(), 4);
        let not_found = Error::Rejected { code: "not_found".into(), message: "no service \"api\"".into() };
        assert_eq!(not_found.exit_code(), 2);
        assert_eq!(not_found.code(), "not_found");
    }
}
