//! `bgctl reload` and SIGHUP: the config is read and checked again and, if
//! it passes, a new agent process is started with it and takes over
//! through the handoff ([`crate::handoff`]): the same path as a restart
//! without a gap, so the services left alone lose nothing. The new agent
//! starts the added services (deployed per `on_start`), serves changed
//! ones with their new settings and opens new listeners; this one finishes
//! its open connections and exits, closing the dropped listeners; then the
//! new agent stops the replicas of the removed services ([`retire_removed`]).
//!
//! A config that fails the check is refused whole with the check's
//! message, and nothing changes. A reload is refused while an operation
//! runs (a handover waits for none), and so is one that moves `state_dir`
//! or `control_socket` (the new agent must find this one).

use crate::config::Config;
use crate::controller::{Service, Shared};
use std::collections::BTreeMap;
use std::ffi::OsString;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;

/// The flag that tells a new agent whose reload it is.
pub const RELOAD_FROM_FLAG: &str = "--reload-from";
/// How long a new agent may take to take over.
const TAKEOVER_LIMIT: Duration = Duration::from_secs(180);
/// Stop grace for the replicas of a removed service (its settings left
/// with the config).
const REMOVED_GRACE: Duration = Duration::from_secs(10);

/// Why a reload did not happen. Nothing changed.
#[derive(Debug, thiserror::Error)]
pub enum ReloadError {
    /// The new config fails the check (400).
    #[error("{0}")]
    Config(String),
    /// Now is not the time (409): an operation runs.
    #[error("{0}")]
    Busy(String),
    /// The new agent could not take over (500); this one carries on.
    #[error("{0}")]
    Failed(String),
}

/// A reload asked for; `reply` hears how it went (`None` for SIGHUP).
pub struct Request {
    /// Where the outcome goes: the new agent's pid.
    pub reply: Option<oneshot::Sender<Result<u32, ReloadError>>>,
}

/// Where reloads are asked for.
#[derive(Clone)]
pub struct Handle(mpsc::Sender<Request>);

impl Handle {
    /// Ask for a reload and wait for its outcome.
    pub async fn reload(&self) -> Result<u32, ReloadError> {
        let (reply, answer) = oneshot::channel();
        let stopping = || ReloadError::Busy("the agent is stopping".into());
        self.0.send(Request { reply: Some(reply) }).await.map_err(|_| stopping())?;
        answer.await.map_err(|_| stopping())?
    }

    /// Ask for a reload without waiting (SIGHUP).
    pub fn request(&self) {
        let _ = self.0.try_send(Request { reply: None });
    }
}

/// A handle and the receiving end [`run`] takes.
pub fn channel() -> (Handle, mpsc::Receiver<Request>) {
    let (tx, rx) = mpsc::channel(4);
    (Handle(tx), rx)
}

/// Answer reload requests one at a time until one succeeded (this agent
/// is then on its way out) or `shutdown`.
pub async fn run(
    mut requests: mpsc::Receiver<Request>,
    current: Config,
    services: BTreeMap<String, Arc<Service>>,
    handed_over: CancellationToken,
    shutdown: CancellationToken,
) {
    loop {
        let request = tokio::select! {
            _ = shutdown.cancelled() => return,
            r = requests.recv() => match r { Some(r) => r, None => return },
        };
        let result = reload_once(&current, &services, &handed_over).await;
        match &result {
            Ok(pid) => {
                tracing::info!(pid, config = %current.path.display(), "reloaded: the new agent took over")
            }
            Err(e) => tracing::warn!(error = %e, "reload refused; nothing changed"),
        }
        let done = result.is_ok();
        if let Some(reply) = request.reply {
            let _ = reply.send(result);
        }
        if done {
            return;
        }
    }
}

async fn reload_once(
    current: &Config,
    services: &BTreeMap<String, Arc<Service>>,
    handed_over: &CancellationToken,
) -> Result<u32, ReloadError> {
    let new =
        Config::load(&current.path).map_err(|e| ReloadError::Config(crate::logging::error_chain(&e)))?;
    crate::acme::check_directory(&new)
        .await
        .map_err(|e| ReloadError::Config(format!("{}: {e}", current.path.display())))?;
    for (what, old, now) in [
        ("state_dir", &current.agent.state_dir, &new.agent.state_dir),
        ("control_socket", &current.agent.control_socket, &new.agent.control_socket),
    ] {
        if old != now {
            return Err(ReloadError::Config(format!(
                "{}: agent.{what} changed ({} to {}): that needs a restart, not a reload",
                current.path.display(),
                old.display(),
                now.display()
            )));
        }
    }
    for (name, service) in services {
        if let Some(op) = service.status().operation {
            return Err(ReloadError::Busy(format!(
                "{name}: {:?} #{} is running; reload once it ended",
                op.kind, op.id
            )));
        }
    }
    let exe =
        std::env::current_exe().map_err(|e| ReloadError::Failed(format!("cannot find this program: {e}")))?;
    let mut child = tokio::process::Command::new(exe)
        .args(successor_args(std::env::args_os().skip(1), std::process::id()))
        .stdin(std::process::Stdio::null())
        .spawn()
        .map_err(|e| ReloadError::Failed(format!("cannot start the new agent: {e}")))?;
    let pid = child.id().unwrap_or(0);
    tracing::info!(pid, "reload: the config passed the check; the new agent takes over");
    tokio::select! {
        _ = handed_over.cancelled() => Ok(pid),
        status = child.wait() => Err(ReloadError::Failed(format!(
            "the new agent (pid {pid}) exited ({}) before it took over; the log says why; this agent carries on",
            status.map(|s| s.to_string()).unwrap_or_else(|e| e.to_string())
        ))),
        _ = tokio::time::sleep(TAKEOVER_LIMIT) => {
            let _ = child.kill().await;
            Err(ReloadError::Failed(format!("the new agent did not take over within {TAKEOVER_LIMIT:?}; this agent carries on")))
        }
    }
}

/// This process's arguments for its successor: the same, with
/// `--reload-from PID` (replacing one it was started with).
fn successor_args(args: impl Iterator<Item = OsString>, pid: u32) -> Vec<OsString> {
    let mut out = Vec::new();
    let mut args = args.peekable();
    while let Some(a) = args.next() {
        if a == RELOAD_FROM_FLAG {
            args.next();
            continue;
        }
        if a.to_string_lossy().starts_with(&format!("{RELOAD_FROM_FLAG}=")) {
            continue;
        }
        out.push(a);
    }
    out.push(RELOAD_FROM_FLAG.into());
    out.push(pid.to_string().into());
    out
}

/// In the new agent after a reload: once the old one (`predecessor`) has
/// exited (its open connections done), stop and remove the replicas of
/// services the config no longer has, and forget their state.
pub async fn retire_removed(predecessor: u32, configured: Vec<String>, shared: Arc<Shared>) {
    let (runtime, persister, events, shutdown) =
        (&shared.runtime, &shared.persister, &shared.events, &shared.shutdown);
    let configured = |name: &str| configured.iter().any(|c| c == name);
    // Gone, or a zombie its parent has not reaped yet.
    let gone = || match std::fs::read_to_string(format!("/proc/{predecessor}/stat")) {
        Err(_) => true,
        Ok(stat) => stat.rsplit(')').next().and_then(|rest| rest.split_whitespace().next()) == Some("Z"),
    };
    while !gone() {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(Duration::from_millis(200)) => {}
        }
    }
    let found = match runtime.list(None).await {
        Ok(found) => found,
        Err(e) => {
            tracing::warn!(error = %e, "reload: cannot list replicas to stop those of removed services");
            return;
        }
    };
    let mut removed: BTreeMap<String, usize> = BTreeMap::new();
    for handle in found.into_iter().filter(|h| !configured(&h.service)) {
        if let Err(e) = runtime.stop(&handle, "SIGTERM", REMOVED_GRACE).await {
            tracing::warn!(replica = %handle.name, error = %e, "reload: cannot stop a replica of a removed service");
        }
        let _ = runtime.remove(&handle).await;
        *removed.entry(handle.service.clone()).or_default() += 1;
    }
    for name in persister.services() {
        if !configured(&name) {
            removed.entry(name.clone()).or_default();
            if let Err(e) = persister.forget(&name) {
                tracing::warn!(service = %name, error = %e, "reload: cannot forget a removed service's state");
            }
        }
    }
    for (name, replicas) in removed {
        let message = format!("removed by reload: {replicas} replica(s) stopped, its state forgotten");
        tracing::info!(service = %name, "{message}");
        events.emit(&name, None, crate::api::EventKind::Message { level: "info".into(), message });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_successor_gets_the_same_arguments_and_whose_reload_it_is() {
        let args =
            ["--config", "/etc/a.toml", "--reload-from", "7", "--log-format", "json"].map(OsString::from);
        let out = successor_args(args.into_iter(), 42);
        let out: Vec<String> = out.iter().map(|a| a.to_string_lossy().into_owned()).collect();
        assert_eq!(out, ["--config", "/etc/a.toml", "--log-format", "json", "--reload-from", "42"]);
    }
}
