//! One-off runs (`bgctl run SERVICE -- CMD...`): the service's spec run
//! once with another command, e.g. migrations. Not an operation: it takes
//! no lock, moves no traffic and may run beside any operation.

use super::{ControlError, Service};
use crate::api::EventKind;
use crate::runtime::{OneOff, Output, RuntimeError};
use crate::state::RevisionSpec;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};
use tokio_util::sync::CancellationToken;

/// The last one-off id handed out: unix milliseconds, or one more than
/// the last when two runs start in the same millisecond, so a name is not
/// reused across agent restarts either.
static LAST_ID: AtomicU64 = AtomicU64::new(0);

fn next_id() -> u64 {
    let now = SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0);
    let prev = LAST_ID
        .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |last| Some(now.max(last + 1)))
        .unwrap_or(now);
    now.max(prev + 1)
}

/// Why a one-off run could not run (its program's own failure is its exit
/// code, not this).
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    /// The request makes no sense (400).
    #[error(transparent)]
    Refused(#[from] ControlError),
    /// The runtime could not prepare or run it.
    #[error("{0}")]
    Runtime(#[from] RuntimeError),
}

impl Service {
    /// The spec a one-off run uses: the candidate's (deployed, not yet
    /// promoted), else the active color's, else the configured one (with
    /// revision 0); `image` replaces its image. Refused for an empty
    /// command or a bad image reference.
    pub fn oneoff_spec(&self, argv: &[String], image: Option<&str>) -> Result<RevisionSpec, ControlError> {
        if argv.first().is_none_or(|p| p.trim().is_empty()) {
            return Err(ControlError::BadRequest(
                "command must name a program, e.g. [\"bin/migrate\", \"up\"]".into(),
            ));
        }
        let m = self.view();
        let idle = m.idle();
        let from_model = [m.is_candidate(idle).then_some(idle), m.active]
            .into_iter()
            .flatten()
            .find_map(|c| m.colors.get(&c).and_then(|c| c.spec.clone()));
        let mut spec =
            from_model.unwrap_or_else(|| RevisionSpec { revision: 0, spec: self.config.spec.clone() });
        if let Some(image) = image {
            let overrides =
                crate::api::SpecOverrides { image: Some(image.to_string()), ..Default::default() };
            spec.spec = spec.spec.with_overrides(&overrides);
        }
        super::plan::validate_spec(&spec.spec, self.shared.runtime.kind())?;
        Ok(spec)
    }

    /// Run `argv` once with `spec` (from [`Service::oneoff_spec`]): the
    /// spec is prepared (pulled, secrets read; progress goes to `output`
    /// as stderr lines and to the event stream), then run; its lines go
    /// to `output`. Returns its exit code, `None` if `cancel` fired first.
    pub async fn run_once(
        &self,
        spec: RevisionSpec,
        argv: Vec<String>,
        output: Output<'_>,
        cancel: &CancellationToken,
    ) -> Result<Option<i64>, RunError> {
        let progress = |line: String| {
            self.emit(None, EventKind::Message { level: "info".into(), message: format!("run: {line}") });
            output(crate::runtime::OutputStream::Stderr, line);
        };
        let prepared = tokio::select! {
            _ = cancel.cancelled() => return Ok(None),
            p = self.shared.runtime.prepare(&spec.spec, self.config.pull, &progress) => p?,
        };
        let job = OneOff {
            service: self.name.clone(),
            revision: spec.revision,
            spec: prepared,
            argv,
            app_port: self.config.port,
            id: next_id(),
        };
        let shown = job.argv.join(" ");
        let message = format!("run: {} started: {shown}", job.name());
        tracing::info!(service = %self.name, "{message}");
        self.emit(None, EventKind::Message { level: "info".into(), message });
        let code = self.shared.runtime.run_once(&job, output, cancel).await?;
        let message = match code {
            Some(code) => format!("run: {} exited with {code}", job.name()),
            None => format!("run: {} was stopped before it ended", job.name()),
        };
        tracing::info!(service = %self.name, "{message}");
        self.emit(None, EventKind::Message { level: "info".into(), message });
        Ok(code)
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn ids_grow_even_within_one_millisecond() {
        let a = super::next_id();
        let b = super::next_id();
        assert!(b > a);
    }
}
