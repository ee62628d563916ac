//! Wiring of a running agent: state, runtime, one proxy and controller per
//! service, recovery, the control API, readiness; then wait for shutdown.
//! `main.rs` only parses arguments and calls [`run`].

use crate::config::{Config, RuntimeKind};
use crate::controller::{Persister, Service, Shared};
use crate::events::EventHub;
use crate::handoff;
use crate::listeners::{Inherited, Shareable};
use crate::runtime::docker::DockerRuntime;
use crate::runtime::process::ProcessRuntime;
use crate::runtime::swarm::SwarmRuntime;
use crate::runtime::{Runtime, RuntimeError};
use crate::server::{Access, ControlApi};
use crate::state::{PersistedState, StateError, StateStore, STATE_VERSION};
use bg_proxy::{Proxy, ProxyConfig};
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
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
    /// Taking over from the running agent failed.
    #[error(transparent)]
    Handoff(#[from] crate::handoff::HandoffError),
    /// A certificate of the edge listeners could not be loaded.
    #[error("tls: {0}")]
    Tls(String),
    /// The token file could not be read or is empty.
    #[error("token file {path}: {message}")]
    Token {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        message: String,
    },
    /// `control_tls` could not be loaded.
    #[error("control_tls: {message}")]
    ControlTls {
        /// What is wrong, naming the file.
        message: String,
    },
}

/// Run the agent until `shutdown` fires. App replicas keep running after it
/// returns; the next start adopts them.
///
/// Listening sockets come from systemd, from the agent this one replaces
/// (see [`crate::handoff`]), or are bound here; in the first two cases no
/// client is refused while agents change.
///
/// `reload_from` is the agent whose `bgctl reload` started this one: once
/// it has exited, the replicas of services this config no longer has are
/// stopped ([`crate::reload`]).
pub async fn run(
    config: Config,
    shutdown: CancellationToken,
    reload_from: Option<u32>,
) -> Result<(), AgentError> {
    // Every task the agent spawns, waited for at shutdown.
    let tracker = TaskTracker::new();
    tracker.spawn(crate::signal::cancel_on_shutdown_signal(shutdown.clone()));
    let store = StateStore::open(&config.agent.state_dir)?;
    let handoff_path = handoff::socket_path(&config.agent.state_dir);
    let mut inherited = Inherited::from_systemd();
    // A running agent freezes its state before it offers its sockets, so the
    // state is read only after this.
    let mut takeover = handoff::take_over(&handoff_path).await?;
    if let Some(t) = takeover.as_mut() {
        tracing::info!(from = t.from_pid, "taking over from the running agent");
        if !inherited.is_empty() {
            tracing::warn!("sockets passed by systemd are ignored: the running agent hands over its own");
        }
        inherited = std::mem::take(&mut t.sockets);
    }
    if !inherited.is_empty() {
        tracing::info!(source = inherited.source(), sockets = ?inherited.unclaimed(), "using inherited listening sockets");
    }

    let state = store.load()?.unwrap_or(PersistedState {
        version: STATE_VERSION,
        services: BTreeMap::new(),
        last_operation: 0,
    });
    let runtime: Arc<dyn Runtime> = match config.runtime.kind {
        RuntimeKind::Docker => {
            let docker = DockerRuntime::connect(config.runtime.docker_host.as_deref())?
                .with_call_timeout(config.runtime.call_timeout)
                .with_auth_file(config.runtime.auth_file.clone());
            docker.ping().await?;
            Arc::new(docker)
        }
        RuntimeKind::Process => {
            Arc::new(ProcessRuntime::new(&config.agent.state_dir)?.tracked(tracker.clone(), shutdown.clone()))
        }
        RuntimeKind::Swarm => {
            let engine = || -> Result<DockerRuntime, RuntimeError> {
                Ok(DockerRuntime::connect(config.runtime.docker_host.as_deref())?
                    .with_call_timeout(config.runtime.call_timeout)
                    .with_auth_file(config.runtime.auth_file.clone()))
            };
            let swarm = SwarmRuntime::new(
                engine()?,
                engine()?,
                config.runtime.task_network.clone(),
                agent_key(&config.agent.state_dir),
                config.runtime.swarm_ack_timeout,
                &tracker,
                shutdown.clone(),
            );
            swarm.ping().await?;
            Arc::new(swarm)
        }
    };
    let events = EventHub::persistent(&store.dir().join("events.seq")).map_err(|source| StateError::Io {
        context: "cannot reserve event sequence numbers in",
        path: store.dir().join("events.seq"),
        source,
    })?;
    let shared = Arc::new(Shared {
        runtime: runtime.clone(),
        events: events.clone(),
        persister: Persister::new(store, state),
        shutdown: shutdown.clone(),
        tasks: tracker.clone(),
        prober: crate::health::real_prober(),
    });
    let mut shareable = Shareable::default();

    // On a cold start proxies serve first, so that clients queue rather than
    // fail while replicas are adopted and re-checked. On a takeover the old
    // agent serves meanwhile, so ours start once their routes are ready.
    let mut services = BTreeMap::new();
    let mut proxy_listeners = Vec::new();
    let mut proxies = BTreeMap::new();
    for (name, svc) in &config.services {
        let proxy = Proxy::new(ProxyConfig {
            queue_timeout: svc.queue_timeout,
            write_timeout: svc.write_timeout,
            response_timeout: svc.response_timeout,
            max_queued: u64::from(svc.max_queued),
            ..ProxyConfig::default()
        });
        for addr in &svc.listen {
            let listener = tcp_listener(&mut inherited, &mut shareable, *addr).await?;
            tracing::info!(service = %name, %addr, "proxy listening");
            proxy_listeners.push((proxy.clone(), listener));
        }
        services.insert(name.clone(), Service::new(svc.clone(), proxy.clone(), shared.clone()));
        proxies.insert(name.clone(), proxy);
    }
    let mut edge = crate::edge::Edge::new(&config, &proxies, &events)?;
    for (addrs, tls) in [(&config.proxy.http, false), (&config.proxy.https, true)] {
        for addr in addrs {
            let listener = tcp_listener(&mut inherited, &mut shareable, *addr).await?;
            tracing::info!(%addr, tls, "edge listening");
            edge.add_listener(listener, tls);
        }
    }
    let edge_view = edge.view();
    let mut edge = Some(edge);
    let serve_proxies = |listeners: Vec<(Proxy, tokio::net::TcpListener)>| {
        for (proxy, listener) in listeners {
            tracker.spawn(proxy.serve(listener, shutdown.clone()));
        }
    };
    if takeover.is_none() {
        serve_proxies(std::mem::take(&mut proxy_listeners));
        if let Some(edge) = edge.take() {
            edge.serve(&tracker, &shutdown);
        }
    }

    let found = runtime.list(None).await?;
    let mut by_service: BTreeMap<String, Vec<_>> = BTreeMap::new();
    for handle in found {
        by_service.entry(handle.service.clone()).or_default().push(handle);
    }
    for (name, service) in &services {
        let fresh = service.recover(by_service.remove(name).unwrap_or_default()).await;
        tracker.spawn(service.clone().heal());
        if fresh && service.config().deploy.on_start == crate::config::OnStart::Deploy {
            service.first_start().await;
        }
    }
    for (name, left) in by_service {
        tracing::warn!(service = %name, replicas = left.len(), "replicas of a service that is not in the config are left alone");
    }

    let (reloads, reload_requests) = crate::reload::channel();
    let handed_over = CancellationToken::new();
    tracker.spawn(crate::reload::run(
        reload_requests,
        config.clone(),
        services.clone(),
        handed_over.clone(),
        shutdown.clone(),
    ));
    tracker.spawn(crate::signal::reload_on_hangup(reloads.clone(), shutdown.clone()));
    let api = ControlApi::new(services.clone(), events, shutdown.clone(), tracker.clone(), reloads);
    let control_path = &config.agent.control_socket;
    let (socket, socket_bound_here) = match inherited.take_unix(control_path) {
        Some(listener) => (listener, false),
        None => (bind_control_socket(&config)?, true),
    };
    socket.set_nonblocking(true).map_err(|e| bind_err(control_path.display(), e))?;
    shareable.add_unix(control_path, &socket).map_err(|e| bind_err(control_path.display(), e))?;
    let socket =
        tokio::net::UnixListener::from_std(socket).map_err(|e| bind_err(control_path.display(), e))?;
    tracing::info!(path = %control_path.display(), "control API on unix socket");
    {
        let api = api.clone();
        let connections = tracker.clone();
        let socket = Arc::new(socket);
        spawn_accept_loop(
            &tracker,
            &shutdown,
            "control socket",
            move || accept_unix(socket.clone()),
            move |s| api.serve_connection(s, Access::Socket, &connections),
        );
    }
    if let Some(addr) = config.agent.control_listen {
        let token =
            read_token(config.agent.token_file.as_ref().expect("validated: control_listen has token_file"))?;
        let listener = Arc::new(tcp_listener(&mut inherited, &mut shareable, addr).await?);
        let tls = match &config.agent.control_tls {
            Some(tls) => {
                let acceptor = crate::control_tls::Acceptor::new(tls.clone())
                    .map_err(|message| AgentError::ControlTls { message })?;
                tracker.spawn(acceptor.clone().watch(shutdown.clone()));
                Some(acceptor)
            }
            None => None,
        };
        tracing::info!(%addr, tls = tls.is_some(), mutual = config.agent.control_tls.as_ref().is_some_and(|t| t.client_ca.is_some()), "control API on TCP (bearer token required)");
        let api = api.clone();
        let connections = tracker.clone();
        spawn_accept_loop(
            &tracker,
            &shutdown,
            "control listener",
            move || accept_tcp(listener.clone()),
            move |s: tokio::net::TcpStream| {
                let Ok(peer) = s.peer_addr().map(|a| a.ip()) else { return };
                let access = Access::Token { token: token.clone(), peer };
                match &tls {
                    None => api.serve_connection(s, access, &connections),
                    Some(tls) => {
                        let (api, acceptor, tracker) = (api.clone(), tls.acceptor(), connections.clone());
                        connections.spawn(async move {
                            match tokio::time::timeout(TLS_HANDSHAKE_TIMEOUT, acceptor.accept(s)).await {
                                Ok(Ok(stream)) => api.serve_connection(stream, access, &tracker),
                                Ok(Err(e)) => {
                                    tracing::info!(%peer, error = %e, "control API TLS handshake failed")
                                }
                                Err(_) => tracing::info!(%peer, "control API TLS handshake timed out"),
                            }
                        });
                    }
                }
            },
        );
    }

    if let Some(addr) = config.agent.metrics_listen {
        let listener = tcp_listener(&mut inherited, &mut shareable, addr).await?;
        tracing::info!(%addr, "metrics on /metrics");
        tracker.spawn(crate::metrics::serve(
            listener,
            services.clone(),
            edge_view.clone(),
            shutdown.clone(),
            tracker.clone(),
        ));
    }
    if let Some(addr) = config.agent.ui_listen {
        let token = match &config.agent.control_listen {
            Some(_) => Some(read_token(
                config.agent.token_file.as_ref().expect("validated: control_listen has token_file"),
            )?),
            None => None,
        };
        let listener = tcp_listener(&mut inherited, &mut shareable, addr).await?;
        tracing::info!(%addr, token = token.is_some(), "dashboard on /");
        let (tx, rx) = crate::ui::samples::channel(&services);
        tracker.spawn(crate::ui::samples::run(services.clone(), tx, shutdown.clone()));
        tracker.spawn(crate::ui::serve(
            listener,
            services.clone(),
            rx,
            token,
            shutdown.clone(),
            tracker.clone(),
        ));
    }
    for name in inherited.unclaimed() {
        tracing::warn!(socket = %name, "an inherited socket is not in the config; closing it");
    }
    drop(inherited);

    wait_ready(&services, &shutdown).await;
    if let Some(takeover) = takeover {
        serve_proxies(proxy_listeners);
        if let Some(edge) = edge.take() {
            edge.serve(&tracker, &shutdown);
        }
        let from = takeover.from_pid;
        takeover.complete().await?;
        tracing::info!(from, "took over; the old agent finishes its open connections and exits");
        let _ = sd_notify::notify(false, &[sd_notify::NotifyState::MainPid(std::process::id())]);
        if let Some(old) = reload_from.filter(|pid| *pid == from) {
            let configured = services.keys().cloned().collect();
            tracker.spawn(crate::reload::retire_removed(old, configured, shared.clone()));
        }
    }
    let successor = Arc::new(std::sync::OnceLock::new());
    let handoff_listener = handoff::bind(&handoff_path)?;
    tracker.spawn(handoff::serve(
        handoff_listener,
        Arc::new(shareable),
        services.clone(),
        handed_over.clone(),
        successor.clone(),
        shutdown.clone(),
    ));
    tracker.spawn(watchdog(shutdown.clone()));
    let _ = sd_notify::notify(false, &[sd_notify::NotifyState::Ready]);
    tracing::info!(services = services.len(), pid = std::process::id(), "bg-agent ready");
    match crate::resident::release_startup_pages() {
        Ok(kib) => tracing::debug!(resident_kib = kib, "released the pages start-up mapped"),
        Err(e) => tracing::warn!(error = %e, "could not release the pages start-up mapped"),
    }

    shutdown.cancelled().await;
    if handed_over.is_cancelled() {
        // Under systemd this process is the unit's main one: the successor
        // becomes it (the successor's own notice is not accepted while this
        // one runs, with NotifyAccess=main).
        if let Some(pid) = successor.get() {
            let _ = sd_notify::notify(false, &[sd_notify::NotifyState::MainPid(*pid)]);
        }
        tracing::info!("handed over; finishing open connections; app replicas keep running");
    } else {
        let _ = sd_notify::notify(false, &[sd_notify::NotifyState::Stopping]);
        tracing::info!("shutting down; app replicas keep running");
    }
    tracker.close();
    if tokio::time::timeout(SHUTDOWN_WAIT, tracker.wait()).await.is_err() {
        tracing::warn!("some connections were still open after {SHUTDOWN_WAIT:?}; closing them");
    }
    // After a handover both paths belong to the new agent.
    if !handed_over.is_cancelled() {
        let _ = std::fs::remove_file(&handoff_path);
        if socket_bound_here {
            let _ = std::fs::remove_file(control_path);
        }
    }
    Ok(())
}

/// Ping systemd's watchdog at half its interval while the agent runs (when
/// the unit sets `WatchdogSec=`). The pings come from the async runtime, so
/// they stop when it wedges.
async fn watchdog(shutdown: CancellationToken) {
    let Some(interval) = watchdog_interval() else { return };
    let mut tick = tokio::time::interval(interval / 2);
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tick.tick() => {
                let _ = sd_notify::notify(false, &[sd_notify::NotifyState::Watchdog]);
            }
        }
    }
}

/// The watchdog interval systemd asks for: `WATCHDOG_USEC`, for this
/// process when `WATCHDOG_PID` names one (libsystemd's rule; the
/// `sd-notify` crate also requires `WATCHDOG_PID` to be set).
fn watchdog_interval() -> Option<Duration> {
    let usec: u64 = std::env::var("WATCHDOG_USEC").ok()?.parse().ok()?;
    let for_us = std::env::var("WATCHDOG_PID").ok().is_none_or(|pid| pid == std::process::id().to_string());
    (for_us && usec > 0).then(|| Duration::from_micros(usec))
}

/// Accept connections with `accept` and hand each to `serve` until
/// `shutdown` fires.
/// How long a client has to finish the TLS handshake on the control
/// listener.
const TLS_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

fn spawn_accept_loop<S, Fut>(
    tracker: &TaskTracker,
    shutdown: &CancellationToken,
    what: &'static str,
    mut accept: impl FnMut() -> Fut + Send + 'static,
    mut serve: impl FnMut(S) + Send + 'static,
) where
    Fut: std::future::Future<Output = std::io::Result<S>> + Send,
    S: Send,
{
    let shutdown = shutdown.clone();
    tracker.spawn(async move {
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => break,
                accepted = accept() => match accepted {
                    Ok(stream) => serve(stream),
                    Err(e) => {
                        tracing::warn!(listener = what, error = %e, "accept failed");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                    }
                }
            }
        }
    });
}

async fn accept_unix(listener: Arc<tokio::net::UnixListener>) -> std::io::Result<tokio::net::UnixStream> {
    listener.accept().await.map(|(stream, _)| stream)
}

async fn accept_tcp(listener: Arc<tokio::net::TcpListener>) -> std::io::Result<tokio::net::TcpStream> {
    listener.accept().await.map(|(stream, _)| stream)
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

/// The listener for `addr`: inherited, or bound here. A copy is kept in
/// `shareable` for a successor.
async fn tcp_listener(
    inherited: &mut Inherited,
    shareable: &mut Shareable,
    addr: SocketAddr,
) -> Result<tokio::net::TcpListener, AgentError> {
    let err = |source| bind_err(addr, source);
    let listener = match inherited.take_tcp(addr) {
        Some(listener) => listener,
        None => std::net::TcpListener::bind(addr).map_err(err)?,
    };
    listener.set_nonblocking(true).map_err(err)?;
    shareable.add_tcp(&listener).map_err(err)?;
    tokio::net::TcpListener::from_std(listener).map_err(err)
}

fn bind_err(addr: impl std::fmt::Display, source: std::io::Error) -> AgentError {
    AgentError::Bind { addr: addr.to_string(), source }
}

fn bind_control_socket(config: &Config) -> Result<std::os::unix::net::UnixListener, AgentError> {
    use std::os::unix::fs::PermissionsExt;
    let path = &config.agent.control_socket;
    let err = |source| AgentError::Bind { addr: path.display().to_string(), source };
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(err)?;
    }
    if std::os::unix::net::UnixStream::connect(path).is_ok() {
        return Err(err(std::io::Error::new(
            std::io::ErrorKind::AddrInUse,
            "another agent listens there; stop it first (or start this one with the same config \
             and state_dir to take over)",
        )));
    }
    // Bound under a staging name, restricted, then renamed into place: the
    // socket is never reachable at its path with looser permissions.
    let file_name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    let staging = path.with_file_name(format!(".{file_name}.{}", std::process::id()));
    let _ = std::fs::remove_file(&staging);
    let listener = std::os::unix::net::UnixListener::bind(&staging).map_err(err)?;
    let restrict = || -> Result<(), AgentError> {
        std::fs::set_permissions(&staging, std::fs::Permissions::from_mode(0o660)).map_err(err)?;
        if let Some(group) = &config.agent.control_socket_group {
            let gid = nix::unistd::Group::from_name(group)
                .ok()
                .flatten()
                .ok_or_else(|| {
                    err(std::io::Error::other(format!("control_socket_group {group:?} does not exist")))
                })?
                .gid;
            nix::unistd::chown(&staging, None, Some(gid)).map_err(|e| err(std::io::Error::from(e)))?;
        }
        // Replaces a stale file left by an agent that no longer listens.
        std::fs::rename(&staging, path).map_err(err)
    };
    if let Err(e) = restrict() {
        let _ = std::fs::remove_file(&staging);
        return Err(e);
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

/// What tells this agent from others on its Swarm node: the first 12 hex
/// digits of the sha256 of its state directory, stable across restarts.
fn agent_key(state_dir: &std::path::Path) -> String {
    use sha2::Digest;
    let digest = sha2::Sha256::digest(state_dir.as_os_str().as_encoded_bytes());
    digest.iter().take(6).map(|b| format!("{b:02x}")).collect()
}
