//! Runtimes start, stop, list and inspect the replicas of a service. The
//! controller talks to one through the [`Runtime`] trait and cannot tell the
//! Docker engine ([`docker`]) from Swarm services ([`swarm`]) or local
//! child processes ([`process`]).

pub mod child;
pub mod docker;
pub mod process;
pub mod scope;
pub mod signal;
pub mod sources;
pub mod swarm;

use crate::api::{Color, Spec, Weights};
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// A boxed future, so that [`Runtime`] can be used as a trait object.
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// Label keys (docker) and record fields (process) that mark what the agent
/// manages.
pub mod labels {
    /// `true` on everything the agent manages.
    pub const MANAGED: &str = "bg.managed";
    /// The service name.
    pub const SERVICE: &str = "bg.service";
    /// `blue` or `green`.
    pub const COLOR: &str = "bg.color";
    /// The revision whose spec the replica runs.
    pub const REVISION: &str = "bg.revision";
    /// The replica number within its color, from 1.
    pub const REPLICA: &str = "bg.replica";
    /// The service a one-off run (`bgctl run`) belongs to; such a
    /// container has no `bg.managed` label, so it is never a replica.
    pub const ONEOFF: &str = "bg.oneoff";
}

/// When to pull an image before creating a container.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum PullPolicy {
    /// Pull only when the image is not present locally.
    #[default]
    Missing,
    /// Always pull.
    Always,
    /// Never pull; a missing image is a deploy error.
    Never,
}

/// Everything a runtime needs to start one replica.
#[derive(Debug, Clone, PartialEq)]
pub struct ReplicaSpec {
    /// Service name.
    pub service: String,
    /// Color.
    pub color: Color,
    /// Revision of `spec`.
    pub revision: u64,
    /// Replica number within the color, from 1.
    pub replica: u32,
    /// How many replicas the color has (`replicas`): the swarm runtime
    /// creates the color's service with this many tasks.
    pub replicas: u32,
    /// Image or command, and environment.
    pub spec: Spec,
    /// The port the app listens on inside its container (docker). The
    /// process runtime ignores it and picks a free loopback port.
    pub app_port: u16,
    /// Docker pull policy.
    pub pull: PullPolicy,
    /// Signal sent first on stop, e.g. `SIGTERM`.
    pub stop_signal: String,
    /// Time between the stop signal and SIGKILL.
    pub stop_grace: Duration,
}

impl ReplicaSpec {
    /// The container (or process record) name: `bg-<service>-<color>-<replica>`.
    pub fn name(&self) -> String {
        replica_name(&self.service, self.color, self.replica)
    }
}

/// `bg-<service>-<color>-<replica>`.
pub fn replica_name(service: &str, color: Color, replica: u32) -> String {
    format!("bg-{service}-{color}-{replica}")
}

/// A replica the runtime manages, as started or as found by [`Runtime::list`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReplicaHandle {
    /// The runtime's own id: a container id, or `pid:<pid>`.
    pub runtime_id: String,
    /// `bg-<service>-<color>-<replica>`.
    pub name: String,
    /// Service name.
    pub service: String,
    /// Color.
    pub color: Color,
    /// Revision of the spec it runs.
    pub revision: u64,
    /// Replica number within the color.
    pub replica: u32,
    /// Where the proxy reaches it (loopback).
    pub addr: SocketAddr,
}

/// What a runtime knows about a replica now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RunState {
    /// Running. `native_health` is the container's own HEALTHCHECK verdict
    /// where the image has one (`Some(true)` healthy, `Some(false)`
    /// unhealthy or not passed yet, `None` no healthcheck).
    Running {
        /// The image's own health verdict, where the image has a healthcheck.
        native_health: Option<bool>,
    },
    /// Exited with this code (or killed by a signal: `128 + signo`).
    Exited {
        /// Exit code.
        code: i64,
    },
    /// The runtime no longer knows it.
    Gone,
}

/// A service's traffic as the route table has it: which color is active
/// and how new clients are weighted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Traffic {
    /// The active color, `None` before the first promote.
    pub active: Option<Color>,
    /// The weights, `None` when no color serves.
    pub weights: Option<Weights>,
}

/// How a stop went.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StopReport {
    /// Whether it had to be killed after the grace period.
    pub killed: bool,
    /// Time from the stop signal to exit.
    pub elapsed: Duration,
    /// Its exit code, where known.
    pub exit_code: Option<i64>,
}

/// Errors of a runtime.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RuntimeError {
    /// The Docker engine could not be reached or answered with an error.
    #[error("docker engine: {message}")]
    Docker {
        /// What went wrong, and what to check.
        message: String,
        /// The cause.
        #[source]
        source: Option<Box<dyn std::error::Error + Send + Sync>>,
    },
    /// The image is not present and the pull policy forbids pulling, or the
    /// pull failed.
    #[error("image {image}: {message}")]
    Image {
        /// The image reference.
        image: String,
        /// What went wrong.
        message: String,
    },
    /// The spec cannot be run by this runtime (no image for docker, no
    /// command for process, bad signal name...).
    #[error("invalid spec: {0}")]
    InvalidSpec(String),
    /// Starting a process failed.
    #[error("could not start {program}: {source}")]
    Spawn {
        /// The program.
        program: String,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// Other I/O (process records, ports).
    #[error("{context}: {source}")]
    Io {
        /// What was being done.
        context: String,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// The replica is not known to the runtime.
    #[error("replica {0} not found")]
    NotFound(String),
    /// A secret, file or env file source cannot be read, changed since the
    /// deploy read it, or does not parse.
    #[error("{path}: {message}")]
    Source {
        /// The source file.
        path: String,
        /// What is wrong and what to do.
        message: String,
    },
    /// A process replica could not be placed in its own cgroup
    /// ([`scope`]).
    #[error(transparent)]
    Scope(#[from] scope::ScopeError),
}

/// Which of a program's output streams a line came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum OutputStream {
    /// Standard output.
    Stdout,
    /// Standard error.
    Stderr,
}

/// Where a runtime hands the lines a program prints, as they come.
pub type Output<'a> = &'a (dyn Fn(OutputStream, String) + Send + Sync);

/// A one-off run of a service's spec (`bgctl run`): a container (or
/// process) of `spec` running `argv` instead of its command, removed once
/// it exits. It is no replica: no port, no health check, never adopted.
#[derive(Debug, Clone, PartialEq)]
pub struct OneOff {
    /// Service name.
    pub service: String,
    /// The revision whose spec it runs (0: the configured spec, never deployed).
    pub revision: u64,
    /// The spec, prepared ([`Runtime::prepare`]).
    pub spec: Spec,
    /// The program and its arguments.
    pub argv: Vec<String>,
    /// `PORT` in its environment, as a replica would see it.
    pub app_port: u16,
    /// A number unique among this agent's one-off runs, for its name.
    pub id: u64,
}

impl OneOff {
    /// The container (or directory) name: `bg-<service>-run-<id>`.
    pub fn name(&self) -> String {
        format!("bg-{}-run-{}", self.service, self.id)
    }
}

/// Where a runtime reports what a long step is doing (a pull's progress),
/// one line at a time; the controller turns the lines into events.
pub type Progress<'a> = &'a (dyn Fn(String) + Send + Sync);

/// Starts, stops, lists and inspects replicas. Implementations are cheap to
/// share (`Arc<dyn Runtime>`).
pub trait Runtime: Send + Sync + 'static {
    /// `docker`, `swarm` or `process`.
    fn kind(&self) -> &'static str;

    /// Whether one replica of a color can run another spec than its
    /// siblings (rolling updates, `replica update`). A Swarm service runs
    /// one spec for all its tasks, so the swarm runtime cannot.
    fn per_replica_specs(&self) -> bool {
        true
    }

    /// The service's traffic (active color, weights) changed and was
    /// recorded: a runtime that keeps it outside the agent (swarm: service
    /// labels) stores it, in the background, latest value wins.
    fn traffic_changed(&self, service: &str, traffic: Traffic) {
        let _ = (service, traffic);
    }

    /// The traffic the runtime keeps for `service`, where it keeps one
    /// ([`Runtime::traffic_changed`]): an agent with no state of its own
    /// serves what the others serve.
    fn traffic<'a>(&'a self, service: &'a str) -> BoxFuture<'a, Result<Option<Traffic>, RuntimeError>> {
        let _ = service;
        Box::pin(async { Ok(None) })
    }

    /// The traffic *other* agents set for `service`, with its sequence, as
    /// it changes; `None` where nobody else moves this agent's traffic
    /// (every runtime but swarm). The controller applies what it sees.
    fn follow_traffic(&self, service: &str) -> Option<tokio::sync::watch::Receiver<Option<(u64, Traffic)>>> {
        let _ = service;
        None
    }

    /// This agent now serves traffic `seq` of `service` (read through
    /// [`Runtime::follow_traffic`]): acknowledged where the others see it.
    fn traffic_served(&self, service: &str, seq: u64) {
        let _ = (service, seq);
    }

    /// Wait until every live agent serving `service` serves the traffic
    /// this agent last set ([`Runtime::traffic_changed`]), up to the
    /// runtime's timeout; the agents that did not, by id (empty: all did,
    /// or this agent is alone).
    fn traffic_settled<'a>(&'a self, service: &'a str) -> BoxFuture<'a, Vec<String>> {
        let _ = service;
        Box::pin(async { Vec::new() })
    }

    /// Make a new revision's `spec` ready to run before any replica
    /// starts, and return it as it is to be recorded: read its secrets,
    /// files and env files (recording their sha256), and for docker check
    /// its networks, pull its image following `pull` and record its repo
    /// digest. A failure here means nothing was started.
    fn prepare<'a>(
        &'a self,
        spec: &'a Spec,
        pull: PullPolicy,
        progress: Progress<'a>,
    ) -> BoxFuture<'a, Result<Spec, RuntimeError>> {
        let _ = (pull, progress);
        Box::pin(async move { Ok(spec.clone()) })
    }

    /// Create and start one replica; returns once it runs (not once it is
    /// healthy). Labels/records carry service, color, revision and replica.
    /// A leftover replica with the same name is removed first.
    fn start<'a>(&'a self, spec: &'a ReplicaSpec) -> BoxFuture<'a, Result<ReplicaHandle, RuntimeError>>;

    /// Send `signal`, wait up to `grace` for exit, then SIGKILL and wait.
    fn stop<'a>(
        &'a self,
        replica: &'a ReplicaHandle,
        signal: &'a str,
        grace: Duration,
    ) -> BoxFuture<'a, Result<StopReport, RuntimeError>>;

    /// Forget a stopped replica (remove the container or process record).
    /// Removing one that is already gone is not an error.
    fn remove<'a>(&'a self, replica: &'a ReplicaHandle) -> BoxFuture<'a, Result<(), RuntimeError>>;

    /// Every replica this runtime manages for `service` (all services when
    /// `None`), running or not: the agent adopts them after a restart.
    fn list<'a>(
        &'a self,
        service: Option<&'a str>,
    ) -> BoxFuture<'a, Result<Vec<ReplicaHandle>, RuntimeError>>;

    /// Whether it runs, and its own health verdict where it has one.
    fn state<'a>(&'a self, replica: &'a ReplicaHandle) -> BoxFuture<'a, Result<RunState, RuntimeError>>;

    /// The last `lines` lines of its output, for error messages.
    fn logs<'a>(
        &'a self,
        replica: &'a ReplicaHandle,
        lines: usize,
    ) -> BoxFuture<'a, Result<String, RuntimeError>>;

    /// Run `job` to its end, its output lines passed to `output`, and
    /// return its exit code; `None` when `cancel` fired first (it was then
    /// killed). Nothing of it is left behind either way. By default the
    /// runtime cannot.
    fn run_once<'a>(
        &'a self,
        job: &'a OneOff,
        output: Output<'a>,
        cancel: &'a CancellationToken,
    ) -> BoxFuture<'a, Result<Option<i64>, RuntimeError>> {
        let _ = (job, output, cancel);
        let kind = self.kind();
        Box::pin(async move {
            Err(RuntimeError::InvalidSpec(format!("one-off runs are not supported by the {kind} runtime")))
        })
    }

    /// Run `argv` for a running replica (`pre_stop = { exec }`): inside its
    /// container (docker), or beside it on the host (process), with `env`
    /// added; return its exit code, `None` when `cancel` fired first. By
    /// default the runtime cannot.
    fn exec<'a>(
        &'a self,
        replica: &'a ReplicaHandle,
        argv: &'a [String],
        env: &'a [(String, String)],
        output: Output<'a>,
        cancel: &'a CancellationToken,
    ) -> BoxFuture<'a, Result<Option<i64>, RuntimeError>> {
        let _ = (replica, argv, env, output, cancel);
        let kind = self.kind();
        Box::pin(async move {
            Err(RuntimeError::InvalidSpec(format!("exec hooks are not supported by the {kind} runtime")))
        })
    }
}
