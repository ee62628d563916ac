//! Wiring of a running agent: state, runtime, one proxy and controller per
//! service, recovery, the control API, readiness; then wait for shutdown.
//! `main.rs` only parses arguments and calls [`run`].

use crate::config::{Config, RuntimeKind};
use crate::controller::{Persister, Service, Shared};
use crate::events::EventHub;
use crate::runtime::docker::DockerRuntime;
use crate::runtime::process::ProcessRuntime;
use crate::runtime::{Runtime, RuntimeError};
use crate::server::{Access, ControlApi};
use crate::state::{PersistedState, StateError, StateStore, STATE_VERSION};
use bg_proxy::{Proxy, ProxyConfig};
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::AtomicU64;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// Longest wait for adopted replicas to pass health checks before READY is
/// sent anyway (the proxy queues requests meanwhile).
const READY_WAIT: Duration = Duration::from_secs(30);
/// Longest wait for open connections once shutdown starts.
const SHUTDOWN_WAIT: Duration = Duration::from_secs(10);

/// Why the agent could not start or run.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum AgentError {
    /// The state file is unreadable or untrustworthy.
    #[error(transparent)]
    State(#[from] StateError),
    /// The runtime could not be set up.
    #[error("runtime: {0}")]
    Runtime(#[from] RuntimeError),
    /// A listener could not be bound.
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        /// What it tried to bind.
        addr: String,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// The token file could not be read or is empty.
    #[error("token file {path}: {message}")]
    Token {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        message: String,
    },
}

/// Run the agent until `shutdown` fires. App replicas keep running after it
/// returns; the next start adopts them.
pub async fn run(config: Config, shutdown: CancellationToken) -> Result<(), AgentError> {
    let store = StateStore::open(&config.agent.state_dir)?;
    let state = store.load()?.unwrap_or(PersistedState { version: STATE_VERSION, services: BTreeMap::new() });
    let runtime: Arc<dyn Runtime> = match config.runtime.kind {
        RuntimeKind::Docker => {
            let docker = DockerRuntime::connect(config.runtime.docker_host.as_deref())?;
            docker.ping().await?;
            Arc::new(docker)
        }
        RuntimeKind::Process => Arc::new(ProcessRuntime::new(&config.agent.state_dir)?),
    };
    let events = EventHub::new();
    let shared = Arc::new(Shared {
        runtime: runtime.clone(),
        events: events.clone(),
        persister: Persister::new(store, state),
        op_ids: AtomicU64::new(0),
        shutdown: shutdown.clone(),
    });
    let tracker = TaskTracker::new();

    // Proxies first, so that clients queue rather than fail while replicas
    // are adopted and re-checked.
    let mut services = BTreeMap::new();
    for (name, svc) in &config.services {
        let proxy = Proxy::new(ProxyConfig { queue_timeout: svc.queue_timeout, ..ProxyConfig::default() });
        for addr in &svc.listen {
            let listener = bind_tcp(*addr).await?;
            tracing::info!(service = %name, %addr, "proxy listening");
            tracker.spawn(proxy.clone().serve(listener, shutdown.clone()));
        }
        services.insert(name.clone(), Service::new(svc.clone(), proxy, shared.clone()));
    }

    let found = runtime.list(None).await?;
    let mut by_service: BTreeMap<String, Vec<_>> = BTreeMap::new();
    for handle in found {
        by_service.entry(handle.service.clone()).or_default().push(handle);
    }
    for (name, service) in &services {
        service.recover(by_service.remove(name).unwrap_or_default()).await;
        tracker.spawn(service.clone().heal());
    }
    for (name, left) in by_service {
        tracing::warn!(service = %name, replicas = left.len(), "replicas of a service that is not in the config are left alone");
    }

    let api = ControlApi::new(services.clone(), events, shutdown.clone());
    let socket = bind_control_socket(&config)?;
    tracing::info!(path = %config.agent.control_socket.display(), "control API on unix socket");
    {
        let api = api.clone();
        let tracker2 = tracker.clone();
        let shutdown = shutdown.clone();
        tracker.spawn(async move {
            loop {
                tokio::select! {
                    _ = shutdown.cancelled() => break,
                    accepted = socket.accept() => match accepted {
                        Ok((stream, _)) => api.serve_connection(stream, Access::Socket, &tracker2),
                        Err(e) => tracing::warn!(error = %e, "control socket accept failed"),
                    }
                }
            }
        });
    }
    if let Some(addr) = config.agent.control_listen {
        let token =
            read_token(config.agent.token_file.as_ref().expect("validated: control_listen has token_file"))?;
        let listener = bind_tcp(addr).await?;
        tracing::info!(%addr, "control API on TCP (bearer token required)");
        let api = api.clone();
        let tracker2 = tracker.clone();
        let shutdown = shutdown.clone();
        tracker.spawn(async move {
            loop {
                tokio::select! {
                    _ = shutdown.cancelled() => break,
                    accepted = listener.accept() => match accepted {
                        Ok((stream, _)) => api.serve_connection(stream, Access::Token(token.clone()), &tracker2),
                        Err(e) => tracing::warn!(error = %e, "control listener accept failed"),
                    }
                }
            }
        });
    }

    if let Some(addr) = config.agent.metrics_listen {
        let listener = bind_tcp(addr).await?;
        tracing::info!(%addr, "metrics on /metrics");
        tracker.spawn(crate::metrics::serve(listener, services.clone(), shutdown.clone(), tracker.clone()));
    }

    wait_ready(&services, &shutdown).await;
    let _ = sd_notify::notify(false, &[sd_notify::NotifyState::Ready]);
    tracing::info!(services = services.len(), "bg-agent ready");

    shutdown.cancelled().await;
    let _ = sd_notify::notify(false, &[sd_notify::NotifyState::Stopping]);
    tracing::info!("shutting down; app replicas keep running");
    tracker.close();
    if tokio::time::timeout(SHUTDOWN_WAIT, tracker.wait()).await.is_err() {
        tracing::warn!("some connections were still open after {SHUTDOWN_WAIT:?}; closing them");
    }
    let _ = std::fs::remove_file(&config.agent.control_socket);
    Ok(())
}

async fn wait_ready(services: &BTreeMap<String, Arc<Service>>, shutdown: &CancellationToken) {
    let deadline = Instant::now() + READY_WAIT;
    while !services.values().all(|s| s.routes_ready())
        && Instant::now() < deadline
        && !shutdown.is_cancelled()
    {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn bind_tcp(addr: SocketAddr) -> Result<tokio::net::TcpListener, AgentError> {
    tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|source| AgentError::Bind { addr: addr.to_string(), source })
}

fn bind_control_socket(config: &Config) -> Result<tokio::net::UnixListener, AgentError> {
    use std::os::unix::fs::PermissionsExt;
    let path = &config.agent.control_socket;
    let err = |source| AgentError::Bind { addr: path.display().to_string(), source };
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(err)?;
    }
    // A socket file left by a previous agent that is no longer listening.
    if std::os::unix::net::UnixStream::connect(path).is_err() {
        let _ = std::fs::remove_file(path);
    }
    let listener = tokio::net::UnixListener::bind(path).map_err(err)?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o660)).map_err(err)?;
    if let Some(group) = &config.agent.control_socket_group {
        let gid = nix::unistd::Group::from_name(group)
            .ok()
            .flatten()
            .ok_or_else(|| {
                err(std::io::Error::other(format!("control_socket_group {group:?} does not exist")))
            })?
            .gid;
        nix::unistd::chown(path, None, Some(gid)).map_err(|e| err(std::io::Error::from(e)))?;
    }
    Ok(listener)
}

fn read_token(path: &PathBuf) -> Result<Arc<str>, AgentError> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| AgentError::Token { path: path.clone(), message: e.to_string() })?;
    let token = text.trim();
    if token.len() < 16 {
        return Err(AgentError::Token {
            path: path.clone(),
            message: "the token must be at least 16 characters".into(),
        });
    }
    Ok(Arc::from(token))
}
