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
use crate::state::RevisionSpec;
use std::collections::VecDeque;
use std::process::Stdio;
use std::sync::Arc;
use tokio::io::{AsyncBufReadExt, BufReader};

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
        cmd.args(args)
            .env("BG_SERVICE", &self.name)
            .env("BG_REVISION", t.spec.revision.to_string())
            .env("BG_COLOR", t.color.to_string())
            .env("BG_IMAGE", t.spec.spec.image.clone().unwrap_or_default())
            .env("BG_OPERATION", t.op.map(|o| o.to_string()).unwrap_or_default())
            .envs(t.env.iter().map(|(k, v)| (*k, v.as_str())))
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        let mut child = cmd.spawn().map_err(|e| format!("{name} hook {program:?} cannot start: {e}"))?;
        let (out, err) = (child.stdout.take(), child.stderr.take());
        let mut tail: VecDeque<String> = VecDeque::new();
        let timeout = self.config.hooks.timeout;
        let run = async {
            let mut out = out.map(|o| BufReader::new(o).lines());
            let mut err = err.map(|e| BufReader::new(e).lines());
            loop {
                let line = tokio::select! {
                    l = async { out.as_mut()?.next_line().await.ok().flatten() }, if out.is_some() => {
                        if l.is_none() { out = None; }
                        l
                    }
                    l = async { err.as_mut()?.next_line().await.ok().flatten() }, if err.is_some() => {
                        if l.is_none() { err = None; }
                        l
                    }
                    else => break,
                };
                if let Some(line) = line {
                    tracing::info!(service = %self.name, hook = name, "{line}");
                    self.emit(
                        t.op,
                        EventKind::Message { level: "info".into(), message: format!("{name}: {line}") },
                    );
                    tail.push_back(line);
                    if tail.len() > QUOTED_LINES {
                        tail.pop_front();
                    }
                }
            }
            child.wait().await
        };
        let status = match tokio::time::timeout(timeout, run).await {
            Ok(status) => status.map_err(|e| format!("{name} hook {program:?}: {e}"))?,
            Err(_) => {
                return Err(format!(
                    "{name} hook {program:?} did not finish within hook_timeout {} and was killed",
                    humantime::format_duration(timeout)
                ))
            }
        };
        if status.success() {
            return Ok(());
        }
        let how = match status.code() {
            Some(code) => format!("exited with {code}"),
            None => "was killed by a signal".into(),
        };
        let mut message = format!("{name} hook {program:?} {how}");
        if !tail.is_empty() {
            message.push_str("; last lines:\n");
            message.push_str(&Vec::from(tail).join("\n"));
        }
        Err(message)
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
                let env = vec![
                    ("BG_REPLICA", r.number.to_string()),
                    ("BG_REPLICA_ADDR", r.handle.addr.to_string()),
                ];
                self.host_hook("pre_stop", argv, HookTarget { op, color, spec: &r.spec, env }).await
            }
        };
        if let Err(e) = result {
            let message = format!("{e}; stopping replica {} of {color} anyway", r.number);
            tracing::warn!(service = %self.name, "{message}");
            self.emit(op, EventKind::Message { level: "warn".into(), message });
        }
    }
}
