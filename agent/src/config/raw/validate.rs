//! Raw structs → typed [`Config`]: fill in defaults, parse durations,
//! addresses and enums, and refuse contradictions, naming the line and the
//! dotted key of the first problem.

use super::claims::Claims;
use super::locate::line_of;
use super::{RawAgent, RawConfig, RawDeploy, RawHealth, RawHooks, RawRolling, RawRuntime, RawService};
use crate::api::Spec;
use crate::config::*;
use crate::runtime::signal::canonical_signal;
use crate::runtime::PullPolicy;
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::time::Duration;
use toml::Spanned;

/// Longest service name: it ends up in container names and labels.
const MAX_SERVICE_NAME: usize = 40;
/// Default `[runtime] kind`.
const DEFAULT_RUNTIME_KIND: RuntimeKind = RuntimeKind::Docker;
/// Default `[services.X.deploy] failure_action`: a failed monitor window
/// puts the old color back.
const DEFAULT_DEPLOY_FAILURE_ACTION: FailureAction = FailureAction::Rollback;
/// Default `[services.X.rolling] failure_action`: a failed batch stops the
/// update where it is (Swarm's default).
const DEFAULT_ROLLING_FAILURE_ACTION: FailureAction = FailureAction::Pause;
/// Default replicas replaced at once (1).
const DEFAULT_PARALLELISM: u32 = 1;
/// Default rolling order: stop-first, so the replica count never exceeds
/// `replicas` (Swarm's default).
const DEFAULT_ROLLING_ORDER: RollingOrder = RollingOrder::StopFirst;
/// Default failed-batch tolerance (0: the first failed batch counts).
const DEFAULT_MAX_FAILURE_RATIO: f64 = 0.0;

/// Builds errors that point into one file.
pub(super) struct Ctx<'a> {
    text: &'a str,
    path: &'a Path,
}

impl Ctx<'_> {
    pub(super) fn err(&self, span: Range<usize>, key: &str, message: impl Into<String>) -> ConfigError {
        ConfigError::Invalid {
            path: self.path.to_path_buf(),
            line: line_of(self.text, span.start),
            key: key.to_string(),
            message: message.into(),
        }
    }

    pub(super) fn duration(
        &self,
        v: &Option<Spanned<String>>,
        key: &str,
        default: Duration,
    ) -> Result<Duration, ConfigError> {
        let Some(v) = v else { return Ok(default) };
        let d = humantime::parse_duration(v.get_ref().trim()).map_err(|e| {
            self.err(
                v.span(),
                key,
                format!(
                    "{:?} is not a duration ({e}): expected e.g. \"500ms\", \"30s\" or \"1m 30s\"",
                    v.get_ref()
                ),
            )
        })?;
        if d > MAX_DURATION {
            return Err(self.err(
                v.span(),
                key,
                format!(
                    "{:?} is longer than the maximum of {} days",
                    v.get_ref(),
                    MAX_DURATION.as_secs() / 86_400
                ),
            ));
        }
        Ok(d)
    }

    fn positive_duration(
        &self,
        v: &Option<Spanned<String>>,
        key: &str,
        default: Duration,
    ) -> Result<Duration, ConfigError> {
        let d = self.duration(v, key, default)?;
        if d.is_zero() {
            let span = v.as_ref().map(|v| v.span()).unwrap_or(0..0);
            return Err(self.err(span, key, "must be greater than zero"));
        }
        Ok(d)
    }

    pub(super) fn count(
        &self,
        v: &Option<Spanned<i64>>,
        key: &str,
        default: u32,
        min: i64,
    ) -> Result<u32, ConfigError> {
        let Some(v) = v else { return Ok(default) };
        let n = *v.get_ref();
        if n < min || n > i64::from(u32::MAX) {
            return Err(self.err(
                v.span(),
                key,
                format!("{n} is out of range: expected a whole number >= {min}"),
            ));
        }
        Ok(n as u32)
    }

    fn ratio(&self, v: &Option<Spanned<f64>>, key: &str, default: f64) -> Result<f64, ConfigError> {
        let Some(v) = v else { return Ok(default) };
        let r = *v.get_ref();
        if !(0.0..=1.0).contains(&r) {
            return Err(self.err(
                v.span(),
                key,
                format!("{r} is out of range: expected a fraction between 0 and 1 (0.01 = 1%)"),
            ));
        }
        Ok(r)
    }

    pub(super) fn socket_addr(&self, v: &Spanned<String>, key: &str) -> Result<SocketAddr, ConfigError> {
        v.get_ref().trim().parse().map_err(|_| {
            self.err(
                v.span(),
                key,
                format!(
                    "{:?} is not a socket address: expected IP:PORT, e.g. \"127.0.0.1:8080\" or \"[::1]:8080\"",
                    v.get_ref()
                ),
            )
        })
    }

    fn choice<T: Copy>(
        &self,
        v: &Option<Spanned<String>>,
        key: &str,
        default: T,
        choices: &[(&str, T)],
    ) -> Result<T, ConfigError> {
        let Some(v) = v else { return Ok(default) };
        choices.iter().find(|(name, _)| *name == v.get_ref().as_str()).map(|(_, t)| *t).ok_or_else(|| {
            let names: Vec<String> = choices.iter().map(|(n, _)| format!("{n:?}")).collect();
            self.err(
                v.span(),
                key,
                format!("{:?} is not allowed: expected {}", v.get_ref(), names.join(" or ")),
            )
        })
    }
}

/// Why `addr` cannot be bound beside `other`, claimed by config key `by`.
pub(super) fn clash_message(addr: SocketAddr, other: SocketAddr, by: &str) -> String {
    if addr == other {
        format!("{addr} is already used by {by}")
    } else {
        format!(
            "{addr} clashes with {other} of {by} (a wildcard address such as 0.0.0.0 or [::] takes the port on every address)"
        )
    }
}

/// Validate the raw config into the typed one.
pub(super) fn validate(raw: RawConfig, text: &str, path: &Path) -> Result<Config, ConfigError> {
    let cx = Ctx { text, path };
    let agent = agent(&cx, &raw.agent)?;
    let runtime = runtime(&cx, &raw.runtime)?;

    // Addresses already taken, with the key that took them.
    let mut taken = Claims::default();
    if let Some(addr) = agent.control_listen {
        let _ = taken.claim(addr, "agent.control_listen");
    }
    if let Some(addr) = agent.metrics_listen {
        if let Err((other, by)) = taken.claim(addr, "agent.metrics_listen") {
            let span = raw.agent.metrics_listen.as_ref().map(|v| v.span()).unwrap_or(0..0);
            return Err(cx.err(
                span,
                "agent.metrics_listen",
                format!("{}: give each listener its own port", clash_message(addr, other, &by)),
            ));
        }
    }

    if let Some(addr) = agent.ui_listen {
        if let Err((other, by)) = taken.claim(addr, "agent.ui_listen") {
            let span = raw.agent.ui_listen.as_ref().map(|v| v.span()).unwrap_or(0..0);
            return Err(cx.err(
                span,
                "agent.ui_listen",
                format!("{}: give each listener its own port", clash_message(addr, other, &by)),
            ));
        }
    }
    let proxy = super::edge::proxy(&cx, &raw.proxy, &mut taken)?;

    // In file order, so a clash is reported on the later of the two lines.
    let mut in_order: Vec<_> = raw.services.iter().collect();
    in_order.sort_by_key(|(name, _)| name.span().start);
    let mut services = BTreeMap::new();
    for (name, raw_service) in &in_order {
        let svc = service(&cx, name, raw_service, runtime.kind, &mut taken, &proxy)?;
        services.insert(name.get_ref().clone(), svc);
    }
    let claims: Vec<_> = in_order
        .iter()
        .filter_map(|(name, r)| {
            let edge = services.get(name.get_ref())?.edge.as_ref()?;
            Some((name.get_ref().clone(), r.hosts.as_ref().map(|h| h.span()).unwrap_or(0..0), edge))
        })
        .collect();
    super::edge::conflicts(&cx, &claims)?;

    Ok(Config { path: path.to_path_buf(), agent, runtime, proxy, services })
}

fn agent(cx: &Ctx<'_>, raw: &RawAgent) -> Result<AgentConfig, ConfigError> {
    let path_or = |v: &Option<Spanned<String>>, key: &str, default: &str| -> Result<PathBuf, ConfigError> {
        match v {
            None => Ok(PathBuf::from(default)),
            Some(v) if v.get_ref().trim().is_empty() => {
                Err(cx.err(v.span(), key, "must not be empty: expected a path"))
            }
            Some(v) => Ok(PathBuf::from(v.get_ref())),
        }
    };
    let state_dir = path_or(&raw.state_dir, "agent.state_dir", DEFAULT_STATE_DIR)?;
    let control_socket = path_or(&raw.control_socket, "agent.control_socket", DEFAULT_CONTROL_SOCKET)?;
    let control_socket_group = match &raw.control_socket_group {
        Some(g) if g.get_ref().trim().is_empty() => {
            return Err(cx.err(
                g.span(),
                "agent.control_socket_group",
                "must not be empty: expected a group name, or leave the key out",
            ))
        }
        Some(g) => match nix::unistd::Group::from_name(g.get_ref()) {
            Ok(Some(_)) => Some(g.get_ref().clone()),
            Ok(None) => {
                return Err(cx.err(
                    g.span(),
                    "agent.control_socket_group",
                    format!(
                        "group {:?} does not exist on this host: create it (groupadd) or fix the name",
                        g.get_ref()
                    ),
                ))
            }
            Err(e) => {
                return Err(cx.err(
                    g.span(),
                    "agent.control_socket_group",
                    format!("cannot look up group {:?}: {e}", g.get_ref()),
                ))
            }
        },
        None => None,
    };
    let token_file = match &raw.token_file {
        Some(t) => Some(path_or(&Some(t.clone()), "agent.token_file", "")?),
        None => None,
    };
    if let (Some(t), Some(path)) = (&raw.token_file, &token_file) {
        use std::os::unix::fs::PermissionsExt;
        if let Ok(meta) = std::fs::metadata(path) {
            let mode = meta.permissions().mode() & 0o777;
            if mode & 0o007 != 0 {
                return Err(cx.err(
                    t.span(),
                    "agent.token_file",
                    format!(
                        "{} is readable by others (mode {mode:o}): chmod 600 it (or 640 with a group)",
                        path.display()
                    ),
                ));
            }
        }
    }
    let control_tls = match &raw.control_tls {
        None => None,
        Some(tls) => Some(super::control_tls::check(cx, tls)?),
    };
    let control_listen = match &raw.control_listen {
        Some(v) => {
            let addr = cx.socket_addr(v, "agent.control_listen")?;
            if token_file.is_none() {
                return Err(cx.err(
                    v.span(),
                    "agent.control_listen",
                    "control_listen needs token_file: the TCP control API refuses to run without a bearer token",
                ));
            }
            if !addr.ip().is_loopback() && control_tls.is_none() && raw.allow_plaintext != Some(true) {
                return Err(cx.err(
                    v.span(),
                    "agent.control_listen",
                    format!(
                        "{addr} is not a loopback address: set control_tls = {{ cert, key, client_ca }} so the token is not sent in the clear, or allow_plaintext = true on a network you trust"
                    ),
                ));
            }
            Some(addr)
        }
        None => None,
    };
    if let (Some(tls), None) = (&raw.control_tls, control_listen) {
        return Err(cx.err(tls.span(), "agent.control_tls", "control_tls needs control_listen"));
    }
    let metrics_listen = match &raw.metrics_listen {
        Some(v) => Some(cx.socket_addr(v, "agent.metrics_listen")?),
        None => None,
    };
    let ui_listen = match &raw.ui_listen {
        Some(v) => Some(cx.socket_addr(v, "agent.ui_listen")?),
        None => None,
    };
    let worker_threads = match &raw.worker_threads {
        None => default_worker_threads(),
        Some(_) => cx.count(&raw.worker_threads, "agent.worker_threads", 1, 1)?.min(1024) as usize,
    };
    Ok(AgentConfig {
        state_dir,
        control_socket,
        control_socket_group,
        control_listen,
        token_file,
        metrics_listen,
        ui_listen,
        worker_threads,
        control_tls,
    })
}

fn runtime(cx: &Ctx<'_>, raw: &RawRuntime) -> Result<RuntimeConfig, ConfigError> {
    let kind = cx.choice(
        &raw.kind,
        "runtime.kind",
        DEFAULT_RUNTIME_KIND,
        &[("docker", RuntimeKind::Docker), ("process", RuntimeKind::Process), ("swarm", RuntimeKind::Swarm)],
    )?;
    let docker_host = match &raw.docker_host {
        None => None,
        Some(h) => {
            let s = h.get_ref().trim();
            let known = ["unix://", "tcp://", "http://"];
            if !known.iter().any(|p| s.starts_with(p)) {
                return Err(cx.err(
                    h.span(),
                    "runtime.docker_host",
                    format!(
                        "{s:?} is not a Docker address: expected unix:///path/to/docker.sock, tcp://HOST:PORT or http://HOST:PORT"
                    ),
                ));
            }
            if kind == RuntimeKind::Process {
                return Err(cx.err(
                    h.span(),
                    "runtime.docker_host",
                    "only applies to kind = \"docker\" or \"swarm\": remove it or set kind = \"docker\"",
                ));
            }
            Some(s.to_string())
        }
    };
    let call_timeout = cx.duration(&raw.call_timeout, "runtime.call_timeout", DEFAULT_CALL_TIMEOUT)?;
    if call_timeout.is_zero() {
        let span = raw.call_timeout.as_ref().map(|v| v.span()).unwrap_or(0..0);
        return Err(cx.err(span, "runtime.call_timeout", "must be above zero, e.g. \"15s\""));
    }
    let auth_file = match &raw.auth_file {
        None => None,
        Some(a) if kind == RuntimeKind::Process => {
            return Err(cx.err(
                a.span(),
                "runtime.auth_file",
                "only applies to kind = \"docker\": remove it or set kind = \"docker\"",
            ))
        }
        Some(a) if !Path::new(a.get_ref()).is_absolute() => {
            return Err(cx.err(
                a.span(),
                "runtime.auth_file",
                format!("{:?} must be an absolute path, e.g. \"/root/.docker/config.json\"", a.get_ref()),
            ))
        }
        Some(a) => Some(PathBuf::from(a.get_ref())),
    };
    let task_network = match &raw.task_network {
        None => crate::config::DEFAULT_TASK_NETWORK.to_string(),
        Some(n) if kind != RuntimeKind::Swarm => {
            return Err(cx.err(
                n.span(),
                "runtime.task_network",
                "only applies to kind = \"swarm\": remove it or set kind = \"swarm\"",
            ))
        }
        Some(n) if !super::container::docker_name(n.get_ref()) => {
            return Err(cx.err(
                n.span(),
                "runtime.task_network",
                format!(
                    "{:?} is not a network name: expected letters, digits, '_', '.' and '-'",
                    n.get_ref()
                ),
            ))
        }
        Some(n) => n.get_ref().clone(),
    };
    if let (Some(v), false) = (&raw.swarm_ack_timeout, kind == RuntimeKind::Swarm) {
        return Err(cx.err(
            v.span(),
            "runtime.swarm_ack_timeout",
            "only applies to kind = \"swarm\": remove it or set kind = \"swarm\"",
        ));
    }
    let swarm_ack_timeout = cx.duration(
        &raw.swarm_ack_timeout,
        "runtime.swarm_ack_timeout",
        crate::config::DEFAULT_SWARM_ACK_TIMEOUT,
    )?;
    if swarm_ack_timeout.is_zero() {
        let span = raw.swarm_ack_timeout.as_ref().map(|v| v.span()).unwrap_or(0..0);
        return Err(cx.err(span, "runtime.swarm_ack_timeout", "must be above zero, e.g. \"30s\""));
    }
    Ok(RuntimeConfig { kind, docker_host, call_timeout, auth_file, task_network, swarm_ack_timeout })
}

fn valid_service_name(name: &str) -> bool {
    let mut chars = name.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_lowercase() || c.is_ascii_digit())
        && chars.all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
        && name.len() <= MAX_SERVICE_NAME
}

fn service(
    cx: &Ctx<'_>,
    name: &Spanned<String>,
    raw: &RawService,
    kind: RuntimeKind,
    taken: &mut Claims,
    proxy: &EdgeConfig,
) -> Result<ServiceConfig, ConfigError> {
    let n = name.get_ref();
    let prefix = format!("services.{n}");
    let key = |k: &str| format!("{prefix}.{k}");
    if !valid_service_name(n) {
        return Err(cx.err(
            name.span(),
            &prefix,
            format!(
                "{n:?} is not a valid service name: expected lowercase letters, digits and '-', starting with a letter or digit, at most {MAX_SERVICE_NAME} characters"
            ),
        ));
    }

    // listen
    let listen_key = key("listen");
    let edge = super::edge::service(cx, &prefix, name.span(), raw, proxy)?;
    let listen = match &raw.listen {
        None => Vec::new(),
        Some(l) if l.get_ref().is_empty() => {
            return Err(cx.err(
                l.span(),
                &listen_key,
                "is empty: expected at least one address, e.g. [\"0.0.0.0:8080\"]",
            ))
        }
        Some(l) => {
            let mut addrs = Vec::new();
            for (i, v) in l.get_ref().iter().enumerate() {
                let item_key = format!("{listen_key}[{i}]");
                let addr = cx.socket_addr(v, &item_key)?;
                if let Err((other, by)) = taken.claim(addr, item_key.clone()) {
                    return Err(cx.err(
                        v.span(),
                        &item_key,
                        format!("{}: every listener needs its own address", clash_message(addr, other, &by)),
                    ));
                }
                addrs.push(addr);
            }
            addrs
        }
    };

    // image / command, by runtime
    let image = match &raw.image {
        Some(i) => match crate::image_ref::validate(i.get_ref()) {
            Ok(()) => Some(i.get_ref().clone()),
            Err(e) => return Err(cx.err(i.span(), &key("image"), e.reason)),
        },
        None => None,
    };
    let command = match &raw.command {
        Some(c) if c.get_ref().is_empty() || c.get_ref()[0].trim().is_empty() => {
            return Err(cx.err(
                c.span(),
                &key("command"),
                "must not be empty: expected [\"program\", \"arg\", ...]",
            ))
        }
        Some(c) => Some(c.get_ref().clone()),
        None => None,
    };
    match kind {
        RuntimeKind::Docker | RuntimeKind::Swarm if image.is_none() => {
            return Err(cx.err(
                name.span(),
                &key("image"),
                format!(
                    "is missing: the {} runtime needs an image, e.g. image = \"websample:v1\"",
                    kind.as_str()
                ),
            ))
        }
        RuntimeKind::Process if command.is_none() => {
            let (span, msg) = match &raw.image {
                Some(i) => (
                    i.span(),
                    "the process runtime cannot run an image: set command = [\"/path/to/program\", ...] or use [runtime] kind = \"docker\"",
                ),
                None => (
                    name.span(),
                    "is missing: the process runtime needs a command, e.g. command = [\"/opt/web/server\"]",
                ),
            };
            return Err(cx.err(span, &key("command"), msg));
        }
        _ => {}
    }
    let env = raw.env.iter().map(|(k, v)| (k.clone(), v.get_ref().clone())).collect();
    if let Some((k, v)) = raw.env.iter().find(|(k, _)| k.is_empty() || k.contains(['=', '\0'])) {
        return Err(cx.err(
            v.span(),
            &key("env"),
            format!("env key {k:?} is not a valid variable name: it must not be empty or hold '=' or NUL"),
        ));
    }
    if let Some((k, v)) = raw.env.iter().find(|(_, v)| v.get_ref().contains('\0')) {
        return Err(cx.err(v.span(), &key(&format!("env.{k}")), "contains a NUL character"));
    }
    if let Some((_, v)) = raw.env.iter().find(|(k, _)| k.as_str() == "PORT") {
        return Err(cx.err(
            v.span(),
            &key("env.PORT"),
            "is set by the runtime: the app must read PORT, and `port` sets it for docker",
        ));
    }

    let pull = cx.choice(
        &raw.pull,
        &key("pull"),
        PullPolicy::Missing,
        &[("missing", PullPolicy::Missing), ("always", PullPolicy::Always), ("never", PullPolicy::Never)],
    )?;
    let port = match &raw.port {
        None => DEFAULT_PORT,
        Some(p) => match u16::try_from(*p.get_ref()) {
            Ok(port) if port > 0 => port,
            _ => {
                return Err(cx.err(
                    p.span(),
                    &key("port"),
                    format!("{} is not a port: expected 1..65535", p.get_ref()),
                ))
            }
        },
    };
    let replicas = cx.count(&raw.replicas, &key("replicas"), DEFAULT_REPLICAS, 1)?;
    let stop_signal = match &raw.stop_signal {
        None => DEFAULT_STOP_SIGNAL.to_string(),
        Some(s) => canonical_signal(s.get_ref()).map_err(|m| cx.err(s.span(), &key("stop_signal"), m))?,
    };
    let stop_grace = cx.duration(&raw.stop_grace, &key("stop_grace"), DEFAULT_STOP_GRACE)?;
    let queue_timeout = cx.duration(&raw.queue_timeout, &key("queue_timeout"), DEFAULT_QUEUE_TIMEOUT)?;
    let write_timeout =
        cx.positive_duration(&raw.write_timeout, &key("write_timeout"), bg_proxy::DEFAULT_WRITE_TIMEOUT)?;
    let response_timeout = cx.positive_duration(
        &raw.response_timeout,
        &key("response_timeout"),
        bg_proxy::DEFAULT_RESPONSE_TIMEOUT,
    )?;
    let max_queued = cx.count(&raw.max_queued, &key("max_queued"), bg_proxy::DEFAULT_MAX_QUEUED as u32, 1)?;

    let health = health(cx, &format!("{prefix}.health"), &raw.health)?;
    let deploy = deploy(cx, &format!("{prefix}.deploy"), &raw.deploy)?;
    let rolling = rolling(cx, &format!("{prefix}.rolling"), &raw.rolling)?;
    let hooks = hooks(cx, &format!("{prefix}.hooks"), &raw.hooks)?;
    if kind == RuntimeKind::Swarm {
        refuse_for_swarm(cx, &prefix, raw, &hooks)?;
    }

    let mut spec = Spec { image, command, env, ..Spec::default() };
    super::container::container(cx, &prefix, raw, kind, &mut spec)?;

    Ok(ServiceConfig {
        name: n.clone(),
        listen,
        spec,
        pull,
        port,
        replicas,
        stop_signal,
        stop_grace,
        queue_timeout,
        write_timeout,
        response_timeout,
        max_queued,
        health,
        deploy,
        rolling,
        hooks,
        edge,
    })
}

/// What a Swarm service lacks: one spec per color means no rolling
/// updates (Swarm's own rolling update is what bluegreen replaces), and a
/// task's container may run on another node, so no exec beside it.
fn refuse_for_swarm(
    cx: &Ctx<'_>,
    prefix: &str,
    raw: &RawService,
    hooks: &HooksConfig,
) -> Result<(), ConfigError> {
    if let (Some(PreStop::Exec(_)), Some(p)) = (&hooks.pre_stop, &raw.hooks.pre_stop) {
        return Err(cx.err(
            p.span(),
            &format!("{prefix}.hooks.pre_stop.exec"),
            "the swarm runtime cannot exec beside a task (it may run on another node): use pre_stop = { http = \"/path\" }",
        ));
    }
    let r = &raw.rolling;
    let set = [
        ("parallelism", r.parallelism.as_ref().map(Spanned::span)),
        ("delay", r.delay.as_ref().map(Spanned::span)),
        ("order", r.order.as_ref().map(Spanned::span)),
        ("failure_action", r.failure_action.as_ref().map(Spanned::span)),
        ("monitor", r.monitor.as_ref().map(Spanned::span)),
        ("max_failure_ratio", r.max_failure_ratio.as_ref().map(Spanned::span)),
    ];
    if let Some((k, span)) = set.into_iter().find_map(|(k, s)| s.map(|s| (k, s))) {
        return Err(cx.err(
            span,
            &format!("{prefix}.rolling.{k}"),
            "the swarm runtime runs one spec per color (a Swarm service), so it has no rolling updates: deploy and promote, or canary, instead",
        ));
    }
    Ok(())
}

/// Default `[services.X.hooks] hook_timeout` (60 seconds).
const DEFAULT_HOOK_TIMEOUT: Duration = Duration::from_secs(60);

fn hooks(cx: &Ctx<'_>, prefix: &str, raw: &RawHooks) -> Result<HooksConfig, ConfigError> {
    let key = |k: &str| format!("{prefix}.{k}");
    let command =
        |v: &Option<Spanned<Vec<String>>>, name: &str| -> Result<Option<Vec<String>>, ConfigError> {
            match v {
                None => Ok(None),
                Some(c) if c.get_ref().first().is_none_or(|p| p.trim().is_empty()) => Err(cx.err(
                    c.span(),
                    &key(name),
                    "a hook is a command and its arguments, e.g. [\"/usr/local/bin/migrate\", \"up\"]",
                )),
                Some(c) => Ok(Some(c.get_ref().clone())),
            }
        };
    let pre_stop = match &raw.pre_stop {
        None => None,
        Some(p) => match (&p.get_ref().http, &p.get_ref().exec) {
            (Some(path), None) if path.starts_with('/') => Some(PreStop::Http(path.clone())),
            (Some(path), None) => {
                return Err(cx.err(p.span(), &key("pre_stop.http"), format!("{path:?} must start with /")))
            }
            (None, Some(argv)) if argv.first().is_some_and(|a| !a.trim().is_empty()) => {
                Some(PreStop::Exec(argv.clone()))
            }
            _ => {
                return Err(cx.err(
                    p.span(),
                    &key("pre_stop"),
                    "give exactly one of { http = \"/path\" } or { exec = [\"cmd\", ...] }",
                ))
            }
        },
    };
    Ok(HooksConfig {
        pre_deploy: command(&raw.pre_deploy, "pre_deploy")?,
        post_switch: command(&raw.post_switch, "post_switch")?,
        pre_stop,
        timeout: cx.positive_duration(&raw.hook_timeout, &key("hook_timeout"), DEFAULT_HOOK_TIMEOUT)?,
    })
}

fn health(cx: &Ctx<'_>, prefix: &str, raw: &RawHealth) -> Result<HealthConfig, ConfigError> {
    let key = |k: &str| format!("{prefix}.{k}");
    #[derive(Clone, Copy)]
    enum Kind {
        Http,
        Tcp,
    }
    let kind = cx.choice(&raw.kind, &key("kind"), Kind::Http, &[("http", Kind::Http), ("tcp", Kind::Tcp)])?;
    let check = match kind {
        Kind::Http => {
            let path = match &raw.path {
                None => DEFAULT_HEALTH_PATH.to_string(),
                Some(p) if !p.get_ref().starts_with('/') => {
                    return Err(cx.err(
                        p.span(),
                        &key("path"),
                        format!("{:?} must start with '/', e.g. \"/healthz\"", p.get_ref()),
                    ))
                }
                Some(p) => p.get_ref().clone(),
            };
            HealthCheckKind::Http { path }
        }
        Kind::Tcp => {
            if let Some(p) = &raw.path {
                return Err(cx.err(
                    p.span(),
                    &key("path"),
                    "only applies to kind = \"http\": remove it, or set kind = \"http\"",
                ));
            }
            HealthCheckKind::Tcp
        }
    };
    Ok(HealthConfig {
        check,
        interval: cx.positive_duration(&raw.interval, &key("interval"), DEFAULT_HEALTH_INTERVAL)?,
        timeout: cx.positive_duration(&raw.timeout, &key("timeout"), DEFAULT_HEALTH_TIMEOUT)?,
        healthy_threshold: cx.count(
            &raw.healthy_threshold,
            &key("healthy_threshold"),
            DEFAULT_HEALTHY_THRESHOLD,
            1,
        )?,
        unhealthy_threshold: cx.count(
            &raw.unhealthy_threshold,
            &key("unhealthy_threshold"),
            DEFAULT_UNHEALTHY_THRESHOLD,
            1,
        )?,
        deadline: cx.positive_duration(&raw.deadline, &key("deadline"), DEFAULT_HEALTH_DEADLINE)?,
    })
}

const FAILURE_ACTIONS: [(&str, FailureAction); 3] = [
    ("rollback", FailureAction::Rollback),
    ("pause", FailureAction::Pause),
    ("continue", FailureAction::Continue),
];

fn deploy(cx: &Ctx<'_>, prefix: &str, raw: &RawDeploy) -> Result<DeployConfig, ConfigError> {
    let key = |k: &str| format!("{prefix}.{k}");
    Ok(DeployConfig {
        auto_promote: raw.auto_promote.unwrap_or(false),
        drain_timeout: cx.duration(&raw.drain_timeout, &key("drain_timeout"), DEFAULT_DRAIN_TIMEOUT)?,
        keep_old: cx.duration(&raw.keep_old, &key("keep_old"), Duration::ZERO)?,
        monitor: cx.duration(&raw.monitor, &key("monitor"), Duration::ZERO)?,
        failure_action: cx.choice(
            &raw.failure_action,
            &key("failure_action"),
            DEFAULT_DEPLOY_FAILURE_ACTION,
            &FAILURE_ACTIONS,
        )?,
        max_error_rate: cx.ratio(&raw.max_error_rate, &key("max_error_rate"), DEFAULT_MAX_ERROR_RATE)?,
        on_start: cx.choice(
            &raw.on_start,
            &key("on_start"),
            OnStart::Deploy,
            &[("deploy", OnStart::Deploy), ("wait", OnStart::Wait)],
        )?,
    })
}

fn rolling(cx: &Ctx<'_>, prefix: &str, raw: &RawRolling) -> Result<RollingConfig, ConfigError> {
    let key = |k: &str| format!("{prefix}.{k}");
    Ok(RollingConfig {
        parallelism: cx.count(&raw.parallelism, &key("parallelism"), DEFAULT_PARALLELISM, 1)?,
        delay: cx.duration(&raw.delay, &key("delay"), Duration::ZERO)?,
        order: cx.choice(
            &raw.order,
            &key("order"),
            DEFAULT_ROLLING_ORDER,
            &[("start-first", RollingOrder::StartFirst), ("stop-first", RollingOrder::StopFirst)],
        )?,
        failure_action: cx.choice(
            &raw.failure_action,
            &key("failure_action"),
            DEFAULT_ROLLING_FAILURE_ACTION,
            &FAILURE_ACTIONS,
        )?,
        monitor: cx.duration(&raw.monitor, &key("monitor"), Duration::ZERO)?,
        max_failure_ratio: cx.ratio(
            &raw.max_failure_ratio,
            &key("max_failure_ratio"),
            DEFAULT_MAX_FAILURE_RATIO,
        )?,
    })
}
