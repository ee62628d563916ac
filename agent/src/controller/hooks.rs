//! Hooks (`[services.NAME.hooks]`): host commands around a deploy
//! (`pre_deploy`, `post_switch`) and the per-replica `pre_stop`. Every line
//! a hook prints goes to the event stream and the log; each hook is killed
//! at `hook_timeout`.
//!
//! Host hooks get `BG_SERVICE`, `BG_REVISION`, `BG_COLOR`, `BG_IMAGE` and
//! `BG_OPERATION` (the operation id), and `pre_stop = { exec }` also
//! `BG_REPLICA` and `BG_REPLICA_ADDR`.

use super::model::ReplicaModel;
use super::Service;
use crate::api::{Color, EventKind};
use crate::config::{HealthCheckKind, PreStop};
use crate::runtime::child::{self, Ended};
use crate::runtime::OutputStream;
use crate::state::RevisionSpec;
use std::collections::VecDeque;
use std::future::Future;
use std::sync::{Arc, Mutex};
use tokio_util::sync::CancellationToken;

/// Output lines of a failed hook quoted in its error.
const QUOTED_LINES: usize = 10;

/// Who a host hook runs for.
pub(super) struct HookTarget<'a> {
    /// The operation, if one runs.
    pub op: Option<u64>,
    /// The color it concerns.
    pub color: Color,
    /// The revision and spec it concerns.
    pub spec: &'a RevisionSpec,
    /// Extra environment.
    pub env: Vec<(&'static str, String)>,
}

impl Service {
    /// The environment every hook gets (see the module doc).
    fn hook_env(&self, t: &HookTarget<'_>) -> Vec<(String, String)> {
        let mut env: Vec<(String, String)> = [
            ("BG_SERVICE", self.name.clone()),
            ("BG_REVISION", t.spec.revision.to_string()),
            ("BG_COLOR", t.color.to_string()),
            ("BG_IMAGE", t.spec.spec.image.clone().unwrap_or_default()),
            ("BG_OPERATION", t.op.map(|o| o.to_string()).unwrap_or_default()),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .collect();
        env.extend(t.env.iter().map(|(k, v)| (k.to_string(), v.clone())));
        env
    }

    /// Run host hook `name` (`argv`) to its end or `hook_timeout`; its
    /// output lines become events. Err names the hook and why it failed,
    /// with its last lines.
    pub(super) async fn host_hook(
        &self,
        name: &str,
        argv: &[String],
        t: HookTarget<'_>,
    ) -> Result<(), String> {
        let (program, args) = argv.split_first().ok_or_else(|| format!("{name} hook is empty"))?;
        let mut cmd = tokio::process::Command::new(program);
        cmd.args(args).envs(self.hook_env(&t));
        let hook = HookRun::new(self, name, t.op);
        let output = |stream, line| hook.line(stream, line);
        let ended = hook
            .timed(async {
                match child::run(cmd, &output, &hook.cancel).await {
                    Ok(Ended::Exited(code)) => Ok(Some(code)),
                    Ok(Ended::Cancelled) => Ok(None),
                    Err(e) => Err(format!("cannot start: {e}")),
                }
            })
            .await;
        hook.outcome(&format!("{name} hook {program:?}"), ended)
    }

    /// `post_switch`, after traffic moved to `color`: in the background,
    /// so the drain does not wait for it; a failure is reported only.
    pub(super) fn post_switch(self: &Arc<Self>, op: Option<u64>, color: Color) {
        let Some(argv) = self.config.hooks.post_switch.clone() else { return };
        let Some(spec) = self.view().colors.get(&color).and_then(|c| c.spec.clone()) else { return };
        let service = self.clone();
        self.shared.tasks.spawn(async move {
            let run =
                service.host_hook("post_switch", &argv, HookTarget { op, color, spec: &spec, env: vec![] });
            let result = tokio::select! {
                _ = service.shared.shutdown.cancelled() => return,
                r = run => r,
            };
            if let Err(e) = result {
                let message = format!("{e} (traffic stays on {color})");
                tracing::warn!(service = %service.name, "{message}");
                service.emit(op, EventKind::Message { level: "warn".into(), message });
            }
        });
    }

    /// `pre_stop` for one replica, drained already, before its stop
    /// signal. A failure is reported and the replica is stopped anyway.
    pub(super) async fn pre_stop(&self, op: Option<u64>, color: Color, r: &ReplicaModel) {
        let Some(hook) = &self.config.hooks.pre_stop else { return };
        let result = match hook {
            PreStop::Http(path) => {
                let check = HealthCheckKind::Http { path: path.clone() };
                (self.shared.prober)(r.handle.addr, check, self.config.hooks.timeout)
                    .await
                    .map(|()| {
                        self.emit(
                            op,
                            EventKind::Message {
                                level: "info".into(),
                                message: format!(
                                    "pre_stop: GET {path} on replica {} of {color} answered",
                                    r.number
                                ),
                            },
                        );
                    })
                    .map_err(|e| format!("pre_stop GET {path}: {e}"))
            }
            PreStop::Exec(argv) => {
                let extra = vec![
                    ("BG_REPLICA", r.number.to_string()),
                    ("BG_REPLICA_ADDR", r.handle.addr.to_string()),
                ];
                let env = self.hook_env(&HookTarget { op, color, spec: &r.spec, env: extra });
                let hook = HookRun::new(self, "pre_stop", op);
                let output = |stream, line| hook.line(stream, line);
                let ended = hook
                    .timed(async {
                        self.shared.runtime.exec(&r.handle, argv, &env, &output, &hook.cancel).await
                    })
                    .await;
                let ended = ended.map_err(|e| e.to_string());
                hook.outcome(
                    &format!("pre_stop {:?} on replica {} of {color}", argv.join(" "), r.number),
                    ended,
                )
            }
        };
        if let Err(e) = result {
            let message = format!("{e}; stopping replica {} of {color} anyway", r.number);
            tracing::warn!(service = %self.name, "{message}");
            self.emit(op, EventKind::Message { level: "warn".into(), message });
        }
    }
}

/// One hook while it runs: its output lines (logged, sent as events
/// prefixed with its name, the last few kept for its error) and the token
/// that fires at `hook_timeout` or shutdown.
struct HookRun<'s> {
    service: &'s Service,
    name: &'s str,
    op: Option<u64>,
    tail: Mutex<VecDeque<String>>,
    cancel: CancellationToken,
}

impl<'s> HookRun<'s> {
    fn new(service: &'s Service, name: &'s str, op: Option<u64>) -> Self {
        let cancel = service.shared.shutdown.child_token();
        HookRun { service, name, op, tail: Mutex::new(VecDeque::new()), cancel }
    }

    /// Where the runtime hands the hook's lines.
    fn line(&self, _stream: OutputStream, line: String) {
        tracing::info!(service = %self.service.name, hook = self.name, "{line}");
        let message = format!("{}: {line}", self.name);
        self.service.emit(self.op, EventKind::Message { level: "info".into(), message });
        let mut tail = self.tail.lock().unwrap_or_else(|e| e.into_inner());
        tail.push_back(line);
        if tail.len() > QUOTED_LINES {
            tail.pop_front();
        }
    }

    /// `run`, with `cancel` fired at `hook_timeout` (the run then kills
    /// the hook and ends with `Ok(None)`).
    async fn timed<T>(&self, run: impl Future<Output = T>) -> T {
        let timer = async {
            tokio::time::sleep(self.service.config.hooks.timeout).await;
            self.cancel.cancel();
            std::future::pending::<()>().await
        };
        tokio::select! {
            biased;
            r = run => r,
            () = timer => unreachable!("the timer never ends"),
        }
    }

    /// Ok for exit code 0; otherwise an error naming the hook (`what`),
    /// how it ended, and its last lines.
    fn outcome(self, what: &str, ended: Result<Option<i64>, String>) -> Result<(), String> {
        let how = match ended {
            Ok(Some(0)) => return Ok(()),
            Ok(Some(code)) if code > 128 => format!("was killed by signal {}", code - 128),
            Ok(Some(code)) => format!("exited with {code}"),
            Ok(None) if self.service.shared.shutdown.is_cancelled() => {
                "was killed: the agent is shutting down".into()
            }
            Ok(None) => format!(
                "did not finish within hook_timeout {} and was killed",
                humantime::format_duration(self.service.config.hooks.timeout)
            ),
            Err(e) => e,
        };
        let mut message = format!("{what} {how}");
        let tail = self.tail.into_inner().unwrap_or_else(|e| e.into_inner());
        if !tail.is_empty() {
            message.push_str("; last lines:\n");
            message.push_str(&Vec::from(tail).join("\n"));
        }
        Err(message)
    }
}
