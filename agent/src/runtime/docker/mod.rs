//! The docker runtime: each replica is a container named
//! `bg-<service>-<color>-<replica>`, labelled with [`labels`], whose app
//! port is published on `127.0.0.1` with an ephemeral host port. It talks
//! to the Docker Engine API through bollard and negotiates the API version
//! once, on first use, so engines as old as 20.10 (API 1.41) work.
//!
//! Submodules: `create` maps a spec onto the engine's create request,
//! `files` uploads secrets and files before the start, `image` pulls (with
//! `auth` credentials) and finds the repo digest, `oneoff` runs one-off
//! containers (`bgctl run`) and execs (`pre_stop = { exec }`).
//!
//! API 1.41 has no `signal` parameter on the stop call, so the stop signal
//! and grace are set on the container when it is created and the stop call
//! passes `t = grace`. A stop with another signal than the configured one
//! is done by hand: kill with that signal, wait up to grace, SIGKILL.

pub mod auth;
mod create;
mod files;
mod image;
mod oneoff;

use super::signal::canonical_signal;
use super::sources::Sources;
use super::{
    labels, BoxFuture, OneOff, Output, Progress, PullPolicy, ReplicaHandle, ReplicaSpec, RunState, Runtime,
    RuntimeError, StopReport,
};
use crate::api::Spec;
use bollard::errors::Error as BollardError;
use bollard::models::{ContainerInspectResponse, HealthStatusEnum, NetworkConnectRequest};
use bollard::query_parameters::{
    CreateContainerOptions, InspectContainerOptions, InspectNetworkOptions, KillContainerOptions,
    ListContainersOptions, LogsOptions, RemoveContainerOptions, StopContainerOptions,
};
use bollard::{Docker, API_DEFAULT_VERSION};
use futures_util::StreamExt;
use std::collections::HashMap;
use std::net::{Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;

/// Seconds bollard waits for one API answer while the client is set up;
/// [`DockerRuntime::with_call_timeout`] sets the limit every call uses.
const API_TIMEOUT_SECS: u64 = 120;
/// The default limit of one engine request (`[runtime] call_timeout`).
const DEFAULT_CALL_TIMEOUT: Duration = crate::config::DEFAULT_CALL_TIMEOUT;
/// The limit of one image pull, which streams while layers arrive.
const PULL_TIMEOUT: Duration = Duration::from_secs(30 * 60);
/// Extra time a stop call may take beyond its grace period, for the
/// engine to deliver SIGKILL and reap.
const STOP_SLACK: Duration = Duration::from_secs(30);
/// How often a container is polled while waiting for it to exit after a
/// signal sent by hand.
const EXIT_POLL: Duration = Duration::from_millis(100);
/// Log lines quoted in the error when a container exits right after start.
const START_FAILURE_LOG_LINES: usize = 20;

/// Containers through the Docker Engine API. Cheap to share behind an `Arc`.
pub struct DockerRuntime {
    /// The client before version negotiation.
    base: Docker,
    /// The client after version negotiation, set on first use.
    client: tokio::sync::OnceCell<Docker>,
    /// What to tell the user to check when the engine cannot be reached.
    hint: String,
    /// `[runtime] auth_file`; `None` reads Docker's default.
    auth_file: Option<PathBuf>,
    /// Contents of secrets, files and env files read by deploys.
    sources: Sources,
}

impl std::fmt::Debug for DockerRuntime {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DockerRuntime").field("hint", &self.hint).finish()
    }
}

/// Whether a bollard error is the engine answering `status`.
pub(crate) fn is_status(e: &BollardError, status: u16) -> bool {
    matches!(e, BollardError::DockerResponseServerError { status_code, .. } if *status_code == status)
}

impl DockerRuntime {
    /// A client for the engine at `docker_host`: `None` uses bollard's
    /// local defaults (`$DOCKER_HOST`, else `/var/run/docker.sock`);
    /// `unix:///path`, `tcp://host:port` and `http://host:port` are
    /// accepted. Nothing is sent yet: the API version is negotiated on
    /// first use (call [`DockerRuntime::ping`] to check the engine now).
    pub fn connect(docker_host: Option<&str>) -> Result<Self, RuntimeError> {
        let (result, hint) = match docker_host {
            None => (
                Docker::connect_with_local_defaults(),
                match std::env::var("DOCKER_HOST") {
                    Ok(h) => format!("is the Docker engine running at {h} ($DOCKER_HOST)?"),
                    Err(_) => "is the Docker engine running and is /var/run/docker.sock readable by this user?".to_string(),
                },
            ),
            Some(h) if h.starts_with("unix://") => (
                Docker::connect_with_unix(h, API_TIMEOUT_SECS, API_DEFAULT_VERSION),
                format!(
                    "is the Docker engine running and is {} readable by this user?",
                    h.trim_start_matches("unix://")
                ),
            ),
            Some(h) if h.starts_with("tcp://") || h.starts_with("http://") => (
                Docker::connect_with_http(h, API_TIMEOUT_SECS, API_DEFAULT_VERSION),
                format!("is the Docker engine listening at {h}?"),
            ),
            Some(other) => {
                return Err(RuntimeError::Docker {
                    message: format!(
                        "unsupported docker_host {other:?}: expected unix:///path, tcp://host:port or http://host:port"
                    ),
                    source: None,
                })
            }
        };
        let base = result.map_err(|e| RuntimeError::Docker {
            message: format!("cannot set up a Docker client: {hint}"),
            source: Some(Box::new(e)),
        })?;
        let base = base.with_timeout(DEFAULT_CALL_TIMEOUT);
        Ok(DockerRuntime {
            base,
            client: tokio::sync::OnceCell::new(),
            hint,
            auth_file: None,
            sources: Sources::new(),
        })
    }

    /// Fail any single engine request that takes longer than `limit`
    /// (default 15 s), so a hung engine fails an operation in seconds with
    /// an error naming it. Image pulls and stops have their own limits.
    pub fn with_call_timeout(mut self, limit: Duration) -> Self {
        self.base = self.base.with_timeout(limit);
        self
    }

    /// Read registry credentials from `auth_file` (Docker's `config.json`
    /// format) instead of `$DOCKER_CONFIG/config.json` or
    /// `~/.docker/config.json`.
    pub fn with_auth_file(mut self, auth_file: Option<PathBuf>) -> Self {
        self.auth_file = auth_file;
        self
    }

    /// The contents of secrets, files and env files deploys read.
    pub(crate) fn sources(&self) -> &Sources {
        &self.sources
    }

    /// Negotiate the API version (once) and check that the engine answers.
    pub async fn ping(&self) -> Result<(), RuntimeError> {
        let docker = self.client().await?;
        docker.ping().await.map(|_| ()).map_err(|e| self.err("ping", e))
    }

    pub(crate) async fn client(&self) -> Result<&Docker, RuntimeError> {
        self.client
            .get_or_try_init(|| async {
                let docker = self
                    .base
                    .clone()
                    .negotiate_version()
                    .await
                    .map_err(|e| self.err("negotiating the API version", e))?;
                tracing::debug!(version = ?docker.client_version(), "docker API version negotiated");
                Ok(docker)
            })
            .await
    }

    /// A [`RuntimeError::Docker`] for `e` while doing `what`, with advice.
    pub(crate) fn err(&self, what: &str, e: BollardError) -> RuntimeError {
        let message = match &e {
            BollardError::DockerResponseServerError { message, .. } => {
                format!("{what}: {}", message.trim())
            }
            BollardError::RequestTimeoutError => {
                format!("{what}: the engine did not answer in time; {}", self.hint)
            }
            _ => format!("{what}: cannot reach the engine; {}", self.hint),
        };
        RuntimeError::Docker { message, source: Some(Box::new(e)) }
    }

    /// Force-remove a container; one that is gone (or already being
    /// removed) is fine.
    async fn force_remove(&self, id: &str) -> Result<(), RuntimeError> {
        let docker = self.client().await?;
        let options = RemoveContainerOptions { force: true, v: true, ..Default::default() };
        match docker.remove_container(id, Some(options)).await {
            Ok(()) => Ok(()),
            Err(e) if is_status(&e, 404) || is_status(&e, 409) => Ok(()),
            Err(e) => Err(self.err(&format!("removing container {id}"), e)),
        }
    }

    pub(crate) async fn inspect(&self, id: &str) -> Result<Option<ContainerInspectResponse>, RuntimeError> {
        let docker = self.client().await?;
        match docker.inspect_container(id, None::<InspectContainerOptions>).await {
            Ok(c) => Ok(Some(c)),
            Err(e) if is_status(&e, 404) => Ok(None),
            Err(e) => Err(self.err(&format!("inspecting container {id}"), e)),
        }
    }

    /// Ready a new revision: its networks exist, its image is present
    /// (pulled as `pull` says) and pinned by repo digest, its secrets,
    /// files and env files are read and pinned by sha256.
    pub(crate) async fn prepare_spec(
        &self,
        spec: &Spec,
        pull: PullPolicy,
        progress: Progress<'_>,
    ) -> Result<Spec, RuntimeError> {
        let image = match spec.image.as_deref() {
            Some(i) if !i.trim().is_empty() => i,
            _ => {
                return Err(RuntimeError::InvalidSpec(
                    "the docker runtime needs an image, e.g. \"websample:v1\"".into(),
                ))
            }
        };
        let docker = self.client().await?;
        for network in &spec.networks {
            match docker.inspect_network(network, None::<InspectNetworkOptions>).await {
                Ok(_) => {}
                Err(e) if is_status(&e, 404) => {
                    return Err(RuntimeError::InvalidSpec(format!(
                    "network {network:?} does not exist: create it first (docker network create {network})"
                )))
                }
                Err(e) => return Err(self.err(&format!("inspecting network {network}"), e)),
            }
        }
        let mut out = self.sources.resolve(spec)?;
        if let Some(pinned) = spec.digest.is_some().then(|| spec.pinned_image()).flatten() {
            // Already pinned (a resumed rolling update): the same image.
            let pull = if pull == PullPolicy::Never { pull } else { PullPolicy::Missing };
            self.ensure_image(&pinned, pull, Some(progress)).await?;
            return Ok(out);
        }
        self.ensure_image(image, pull, Some(progress)).await?;
        out.digest = self.repo_digest(image).await?;
        if let Some(digest) = &out.digest {
            progress(format!("image {image} is {digest}"));
        }
        Ok(out)
    }

    async fn start_container(&self, spec: &ReplicaSpec) -> Result<ReplicaHandle, RuntimeError> {
        let Some(image) = spec.spec.pinned_image().filter(|i| !i.trim().is_empty()) else {
            return Err(RuntimeError::InvalidSpec(
                "the docker runtime needs an image, e.g. \"websample:v1\"".into(),
            ));
        };
        let stop_signal = canonical_signal(&spec.stop_signal).map_err(RuntimeError::InvalidSpec)?;
        // A pinned digest names one image for good: pulling it again would
        // bring the same bytes.
        let pull = match spec.pull {
            PullPolicy::Always if spec.spec.digest.is_some() => PullPolicy::Missing,
            other => other,
        };
        self.ensure_image(&image, pull, None).await?;
        let env = self.sources.env_of(&spec.spec)?;
        let docker = self.client().await?;
        let name = spec.name();
        self.force_remove(&name).await?;

        let port_key = create::port_key(spec);
        let body = create::create_body(spec, &image, stop_signal, &env);
        let options = CreateContainerOptions { name: Some(name.clone()), ..Default::default() };
        let created = docker
            .create_container(Some(options), body)
            .await
            .map_err(|e| self.err(&format!("creating container {name}"), e))?;
        for w in &created.warnings {
            tracing::warn!(%name, warning = %w, "docker create warning");
        }
        if let Err(e) = self.before_start(&created.id, &name, &spec.spec).await {
            let _ = self.force_remove(&created.id).await;
            return Err(e);
        }
        let id = created.id;
        if let Err(e) =
            docker.start_container(&id, None::<bollard::query_parameters::StartContainerOptions>).await
        {
            let err = self.err(&format!("starting container {name}"), e);
            let _ = self.force_remove(&id).await;
            return Err(err);
        }

        let inspected = self.inspect(&id).await?.ok_or_else(|| RuntimeError::Docker {
            message: format!("container {name} vanished right after start (was it removed by hand?)"),
            source: None,
        })?;
        let host_port = inspected
            .network_settings
            .as_ref()
            .and_then(|n| n.ports.as_ref())
            .and_then(|p| p.get(&port_key).cloned().flatten())
            .and_then(|bindings| {
                bindings.iter().find_map(|b| b.host_port.as_deref().and_then(|p| p.parse::<u16>().ok()))
            });
        let Some(host_port) = host_port else {
            // No published port: the container is not running any more.
            let code = inspected.state.as_ref().and_then(|s| s.exit_code);
            let logs = self.container_logs(&id, START_FAILURE_LOG_LINES).await.unwrap_or_default();
            let _ = self.force_remove(&id).await;
            return Err(RuntimeError::Docker {
                message: format!(
                    "container {name} exited right after start (exit code {}); last output:\n{}",
                    code.map(|c| c.to_string()).unwrap_or_else(|| "unknown".into()),
                    logs.trim_end()
                ),
                source: None,
            });
        };
        Ok(ReplicaHandle {
            runtime_id: id,
            name,
            service: spec.service.clone(),
            color: spec.color,
            revision: spec.revision,
            replica: spec.replica,
            addr: SocketAddr::from((Ipv4Addr::LOCALHOST, host_port)),
        })
    }

    /// What a created container needs before its start: its other
    /// networks, then its secrets and files.
    async fn before_start(&self, id: &str, name: &str, spec: &Spec) -> Result<(), RuntimeError> {
        let docker = self.client().await?;
        for network in spec.networks.iter().skip(1) {
            let request = NetworkConnectRequest {
                container: id.to_string(),
                endpoint_config: Some(create::endpoint(spec)),
            };
            docker
                .connect_network(network, request)
                .await
                .map_err(|e| self.err(&format!("connecting container {name} to network {network}"), e))?;
        }
        self.place_files(id, name, spec, &self.sources).await
    }

    async fn stop_container(
        &self,
        replica: &ReplicaHandle,
        signal: &str,
        grace: Duration,
    ) -> Result<StopReport, RuntimeError> {
        let wanted = canonical_signal(signal).map_err(RuntimeError::InvalidSpec)?;
        let id = replica.runtime_id.as_str();
        let before = self.inspect(id).await?.ok_or_else(|| RuntimeError::NotFound(replica.name.clone()))?;
        let running = before.state.as_ref().and_then(|s| s.running).unwrap_or(false);
        if !running {
            return Ok(StopReport {
                killed: false,
                elapsed: Duration::ZERO,
                exit_code: before.state.as_ref().and_then(|s| s.exit_code),
            });
        }
        let configured = before
            .config
            .as_ref()
            .and_then(|c| c.stop_signal.as_deref())
            .and_then(|s| canonical_signal(s).ok())
            .unwrap_or_else(|| "SIGTERM".to_string());

        let started = Instant::now();
        if configured == wanted {
            // The engine sends the configured signal, waits `t`, SIGKILLs.
            let docker = self.client().await?.clone().with_timeout(grace + STOP_SLACK);
            let options = StopContainerOptions { t: Some(grace_secs(grace) as i32), signal: None };
            match docker.stop_container(id, Some(options)).await {
                Ok(()) => {}
                // 304: already stopped.
                Err(e) if is_status(&e, 304) => {}
                Err(e) if is_status(&e, 404) => return Err(RuntimeError::NotFound(replica.name.clone())),
                Err(e) => return Err(self.err(&format!("stopping container {}", replica.name), e)),
            }
        } else {
            // API 1.41 cannot override the signal on stop: do it by hand.
            self.kill(id, &wanted).await?;
            if !self.wait_stopped(id, grace).await? {
                self.kill(id, "SIGKILL").await?;
                self.wait_stopped(id, STOP_SLACK).await?;
            }
        }
        let elapsed = started.elapsed();
        let exit_code = self.inspect(id).await?.and_then(|c| c.state).and_then(|s| s.exit_code);
        Ok(StopReport { killed: exit_code == Some(137) || elapsed >= grace, elapsed, exit_code })
    }

    async fn kill(&self, id: &str, signal: &str) -> Result<(), RuntimeError> {
        let docker = self.client().await?;
        let options = KillContainerOptions { signal: signal.to_string() };
        match docker.kill_container(id, Some(options)).await {
            // 409: not running any more.
            Err(e) if !is_status(&e, 409) && !is_status(&e, 404) => {
                Err(self.err(&format!("sending {signal} to container {id}"), e))
            }
            _ => Ok(()),
        }
    }

    /// Poll until the container no longer runs; `false` if `limit` passed.
    async fn wait_stopped(&self, id: &str, limit: Duration) -> Result<bool, RuntimeError> {
        let deadline = Instant::now() + limit;
        loop {
            let running =
                self.inspect(id).await?.and_then(|c| c.state).and_then(|s| s.running).unwrap_or(false);
            if !running {
                return Ok(true);
            }
            if Instant::now() >= deadline {
                return Ok(false);
            }
            tokio::time::sleep(EXIT_POLL).await;
        }
    }

    pub(crate) async fn container_logs(&self, id: &str, lines: usize) -> Result<String, RuntimeError> {
        let docker = self.client().await?;
        let options =
            LogsOptions { stdout: true, stderr: true, tail: lines.to_string(), ..Default::default() };
        let mut stream = docker.logs(id, Some(options));
        let mut out = Vec::new();
        while let Some(chunk) = stream.next().await {
            match chunk {
                Ok(c) => out.extend_from_slice(&c.into_bytes()),
                Err(e) if is_status(&e, 404) => return Err(RuntimeError::NotFound(id.to_string())),
                Err(e) => return Err(self.err(&format!("reading the logs of container {id}"), e)),
            }
        }
        Ok(String::from_utf8_lossy(&out).into_owned())
    }

    async fn list_containers(&self, service: Option<&str>) -> Result<Vec<ReplicaHandle>, RuntimeError> {
        let docker = self.client().await?;
        let mut label_filters = vec![format!("{}=true", labels::MANAGED)];
        if let Some(s) = service {
            label_filters.push(format!("{}={s}", labels::SERVICE));
        }
        let options = ListContainersOptions {
            all: true,
            filters: Some(HashMap::from([("label".to_string(), label_filters)])),
            ..Default::default()
        };
        let summaries =
            docker.list_containers(Some(options)).await.map_err(|e| self.err("listing containers", e))?;
        let mut out = Vec::new();
        for c in summaries {
            let labels_of = c.labels.unwrap_or_default();
            let get = |k: &str| labels_of.get(k).cloned();
            let name = c
                .names
                .as_ref()
                .and_then(|n| n.first())
                .map(|n| n.trim_start_matches('/').to_string())
                .unwrap_or_default();
            let parsed = (|| {
                Some((
                    get(labels::SERVICE)?,
                    get(labels::COLOR)?.parse().ok()?,
                    get(labels::REVISION)?.parse().ok()?,
                    get(labels::REPLICA)?.parse().ok()?,
                ))
            })();
            let Some((svc, color, revision, replica)) = parsed else {
                tracing::warn!(container = %name, "managed container with incomplete bg.* labels; ignoring it");
                continue;
            };
            // Only running containers have a published port; the others
            // get port 0.
            let port = c.ports.unwrap_or_default().iter().find_map(|p| p.public_port).unwrap_or(0);
            out.push(ReplicaHandle {
                runtime_id: c.id.unwrap_or_default(),
                name,
                service: svc,
                color,
                revision,
                replica,
                addr: SocketAddr::from((Ipv4Addr::LOCALHOST, port)),
            });
        }
        out.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(out)
    }

    async fn container_state(&self, replica: &ReplicaHandle) -> Result<RunState, RuntimeError> {
        let Some(c) = self.inspect(&replica.runtime_id).await? else {
            return Ok(RunState::Gone);
        };
        let Some(state) = c.state else {
            return Ok(RunState::Gone);
        };
        if state.running.unwrap_or(false) {
            let native_health = state.health.and_then(|h| h.status).and_then(|s| match s {
                HealthStatusEnum::HEALTHY => Some(true),
                // Still starting: the image's own check has not passed yet,
                // so it must not count as passing.
                HealthStatusEnum::UNHEALTHY | HealthStatusEnum::STARTING => Some(false),
                _ => None,
            });
            Ok(RunState::Running { native_health })
        } else {
            Ok(RunState::Exited { code: state.exit_code.unwrap_or(-1) })
        }
    }
}

/// Whole seconds for the engine, rounded up so that a grace of 1.5 s is
/// not cut to 1 s.
fn grace_secs(grace: Duration) -> i64 {
    let secs = grace.as_secs() + u64::from(grace.subsec_nanos() > 0);
    i64::try_from(secs).unwrap_or(i64::from(i32::MAX)).min(i64::from(i32::MAX))
}

impl Runtime for DockerRuntime {
    fn kind(&self) -> &'static str {
        "docker"
    }

    fn prepare<'a>(
        &'a self,
        spec: &'a Spec,
        pull: PullPolicy,
        progress: Progress<'a>,
    ) -> BoxFuture<'a, Result<Spec, RuntimeError>> {
        Box::pin(self.prepare_spec(spec, pull, progress))
    }

    fn start<'a>(&'a self, spec: &'a ReplicaSpec) -> BoxFuture<'a, Result<ReplicaHandle, RuntimeError>> {
        Box::pin(self.start_container(spec))
    }

    fn stop<'a>(
        &'a self,
        replica: &'a ReplicaHandle,
        signal: &'a str,
        grace: Duration,
    ) -> BoxFuture<'a, Result<StopReport, RuntimeError>> {
        Box::pin(self.stop_container(replica, signal, grace))
    }

    fn remove<'a>(&'a self, replica: &'a ReplicaHandle) -> BoxFuture<'a, Result<(), RuntimeError>> {
        Box::pin(self.force_remove(&replica.runtime_id))
    }

    fn list<'a>(
        &'a self,
        service: Option<&'a str>,
    ) -> BoxFuture<'a, Result<Vec<ReplicaHandle>, RuntimeError>> {
        Box::pin(self.list_containers(service))
    }

    fn state<'a>(&'a self, replica: &'a ReplicaHandle) -> BoxFuture<'a, Result<RunState, RuntimeError>> {
        Box::pin(self.container_state(replica))
    }

    fn logs<'a>(
        &'a self,
        replica: &'a ReplicaHandle,
        lines: usize,
    ) -> BoxFuture<'a, Result<String, RuntimeError>> {
        Box::pin(async move {
            match self.container_logs(&replica.runtime_id, lines).await {
                Err(RuntimeError::NotFound(_)) => Err(RuntimeError::NotFound(replica.name.clone())),
                other => other,
            }
        })
    }

    fn run_once<'a>(
        &'a self,
        job: &'a OneOff,
        output: Output<'a>,
        cancel: &'a CancellationToken,
    ) -> BoxFuture<'a, Result<Option<i64>, RuntimeError>> {
        Box::pin(self.run_oneoff(job, output, cancel))
    }

    fn exec<'a>(
        &'a self,
        replica: &'a ReplicaHandle,
        argv: &'a [String],
        env: &'a [(String, String)],
        output: Output<'a>,
        cancel: &'a CancellationToken,
    ) -> BoxFuture<'a, Result<Option<i64>, RuntimeError>> {
        Box::pin(self.exec_in(replica, argv, env, output, cancel))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grace_rounds_up_to_whole_seconds() {
        assert_eq!(grace_secs(Duration::from_secs(2)), 2);
        assert_eq!(grace_secs(Duration::from_millis(1500)), 2);
        assert_eq!(grace_secs(Duration::ZERO), 0);
    }

    #[test]
    fn unknown_host_schemes_are_refused() {
        let err = DockerRuntime::connect(Some("ftp://x")).unwrap_err();
        assert!(err.to_string().contains("unix://"), "{err}");
    }
}
