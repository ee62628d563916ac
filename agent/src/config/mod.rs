//! The agent's configuration: a TOML file deserialized into raw structs
//! (`raw`), then validated into the typed [`Config`] the rest of the agent
//! uses. Every key has a named default here except a service's `listen` and
//! its `image` (docker) or `command` (process). Errors name the file, the
//! line and the key.

mod raw;

use crate::api::Spec;
use crate::runtime::PullPolicy;
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// Default config file path.
pub const DEFAULT_CONFIG_PATH: &str = "/etc/bg-agent/agent.toml";
/// Default state directory.
pub const DEFAULT_STATE_DIR: &str = "/var/lib/bg-agent";
/// Default control socket path (created with mode 0660).
pub const DEFAULT_CONTROL_SOCKET: &str = "/run/bg-agent/agent.sock";
/// Default app port inside a container (5000).
pub const DEFAULT_PORT: u16 = 5000;
/// Default replicas per color (1).
pub const DEFAULT_REPLICAS: u32 = 1;
/// Default stop signal.
pub const DEFAULT_STOP_SIGNAL: &str = "SIGTERM";
/// Default time between the stop signal and SIGKILL (30 seconds, Docker's
/// and systemd's usual order of magnitude for a graceful exit).
pub const DEFAULT_STOP_GRACE: Duration = Duration::from_secs(30);
/// Default health check path.
pub const DEFAULT_HEALTH_PATH: &str = "/healthz";
/// Default time between health checks (1 second).
pub const DEFAULT_HEALTH_INTERVAL: Duration = Duration::from_secs(1);
/// Default time one health check may take (1 second).
pub const DEFAULT_HEALTH_TIMEOUT: Duration = Duration::from_secs(1);
/// Default passes in a row that make a replica healthy (2).
pub const DEFAULT_HEALTHY_THRESHOLD: u32 = 2;
/// Default failures in a row that make a replica unhealthy (3).
pub const DEFAULT_UNHEALTHY_THRESHOLD: u32 = 3;
/// Default time a new color has to become healthy (60 seconds).
pub const DEFAULT_HEALTH_DEADLINE: Duration = Duration::from_secs(60);
/// Default drain timeout (30 seconds).
pub const DEFAULT_DRAIN_TIMEOUT: Duration = Duration::from_secs(30);
/// Default maximum 5xx ratio during the monitor window (1%).
pub const DEFAULT_MAX_ERROR_RATE: f64 = 0.01;
/// Default time a request waits for a backend when none is healthy (10 s).
pub const DEFAULT_QUEUE_TIMEOUT: Duration = Duration::from_secs(10);

/// The whole validated configuration.
#[derive(Debug, Clone, PartialEq)]
pub struct Config {
    /// The file it was read from.
    pub path: PathBuf,
    /// `[agent]`.
    pub agent: AgentConfig,
    /// `[runtime]`.
    pub runtime: RuntimeConfig,
    /// `[proxy]`: the shared edge listeners.
    pub proxy: EdgeConfig,
    /// `[services.NAME]`, by name.
    pub services: BTreeMap<String, ServiceConfig>,
}

/// `[agent]`.
#[derive(Debug, Clone, PartialEq)]
pub struct AgentConfig {
    /// Where state is persisted.
    pub state_dir: PathBuf,
    /// The control API's unix socket.
    pub control_socket: PathBuf,
    /// Group that owns the control socket (mode 0660); `None` keeps the
    /// agent's own group.
    pub control_socket_group: Option<String>,
    /// Optional TCP control listener (requires `token_file`).
    pub control_listen: Option<SocketAddr>,
    /// File holding the bearer token for the TCP listener.
    pub token_file: Option<PathBuf>,
    /// Optional Prometheus listener.
    pub metrics_listen: Option<SocketAddr>,
    /// Optional dashboard listener (needs the control token when
    /// `control_listen` is set).
    pub ui_listen: Option<SocketAddr>,
    /// Threads of the agent's async runtime (proxy, health checks,
    /// controller).
    pub worker_threads: usize,
    /// HTTPS on `control_listen` (checked at config check).
    pub control_tls: Option<ControlTls>,
}

/// `[agent] control_tls`: the control listener's certificate, and the CA
/// its clients' certificates must be signed by (mutual TLS) when given.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ControlTls {
    /// PEM certificate chain.
    pub cert: PathBuf,
    /// PEM private key, mode 0600.
    pub key: PathBuf,
    /// PEM CA certificates that sign client certificates.
    pub client_ca: Option<PathBuf>,
}

/// Default `[agent] worker_threads`: half the host's cores, at least one.
/// The agent shares its host with the replicas it fronts (they are its
/// upstream); measured on 2 cores, one worker served fresh connections
/// 1.03x nginx's and HAProxy's req/s against 0.82-0.87x with two
/// (BENCHMARKS.md, product setting).
pub fn default_worker_threads() -> usize {
    std::thread::available_parallelism().map_or(1, |n| (n.get() / 2).max(1))
}

/// `[runtime]`.
#[derive(Debug, Clone, PartialEq)]
pub struct RuntimeConfig {
    /// Which runtime.
    pub kind: RuntimeKind,
    /// Docker engine address (`unix:///var/run/docker.sock` by default, or
    /// `$DOCKER_HOST`).
    pub docker_host: Option<String>,
    /// How long one engine request may take before it fails with an error
    /// naming the engine (image pulls and stops have their own limits).
    pub call_timeout: Duration,
    /// Registry credentials in Docker's `config.json` format; `None` reads
    /// `$DOCKER_CONFIG/config.json`, else `~/.docker/config.json`.
    pub auth_file: Option<PathBuf>,
    /// The network through which the agent reaches each Swarm task
    /// (swarm): a swarm-scoped bridge network (created when missing), or an
    /// attachable overlay the agent's own container is attached to.
    pub task_network: String,
    /// How long a traffic change waits for every other live agent serving
    /// the service to acknowledge it (swarm); see docs/swarm.md.
    pub swarm_ack_timeout: Duration,
}

/// Default `[runtime] swarm_ack_timeout` (30 seconds).
pub const DEFAULT_SWARM_ACK_TIMEOUT: Duration = Duration::from_secs(30);

/// Default `[runtime] task_network` (swarm).
pub const DEFAULT_TASK_NETWORK: &str = "bg-tasks";

/// Default `[runtime] call_timeout`.
pub const DEFAULT_CALL_TIMEOUT: Duration = Duration::from_secs(15);

/// `[runtime] kind`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RuntimeKind {
    /// Containers through the Docker Engine API.
    Docker,
    /// Local child processes.
    Process,
    /// Docker Swarm services, one per color.
    Swarm,
}

impl RuntimeKind {
    /// The name in `[runtime] kind`.
    pub fn as_str(self) -> &'static str {
        match self {
            RuntimeKind::Docker => "docker",
            RuntimeKind::Process => "process",
            RuntimeKind::Swarm => "swarm",
        }
    }
}

/// `[services.NAME]`.
#[derive(Debug, Clone, PartialEq)]
pub struct ServiceConfig {
    /// Service name.
    pub name: String,
    /// Proxy listeners.
    pub listen: Vec<SocketAddr>,
    /// The configured spec: image or command, env, and the container keys
    /// (secrets and files without their sha256 until a deploy reads them).
    pub spec: Spec,
    /// Pull policy (docker).
    pub pull: PullPolicy,
    /// The app's port inside its container (docker).
    pub port: u16,
    /// Replicas per color.
    pub replicas: u32,
    /// Stop signal name, e.g. `SIGTERM`.
    pub stop_signal: String,
    /// Time between stop signal and SIGKILL.
    pub stop_grace: Duration,
    /// Time a request waits for a backend when none is available.
    pub queue_timeout: Duration,
    /// A client whose writes make no progress this long is closed (a
    /// reader that stopped reading).
    pub write_timeout: Duration,
    /// How long a backend may take to begin its answer once the request
    /// was sent; then another backend (idempotent requests) or 504.
    pub response_timeout: Duration,
    /// Requests that may wait for a backend at once; more get 503.
    pub max_queued: u32,
    /// `[services.NAME.health]`.
    pub health: HealthConfig,
    /// `[services.NAME.deploy]`.
    pub deploy: DeployConfig,
    /// `[services.NAME.rolling]`.
    pub rolling: RollingConfig,
    /// `[services.NAME.hooks]`.
    pub hooks: HooksConfig,
    /// Its claim on the shared edge listeners (`hosts` and the keys that
    /// go with it); `None` without `hosts`.
    pub edge: Option<ServiceEdge>,
}

/// `[proxy]`: listeners shared by every service with `hosts`.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct EdgeConfig {
    /// Plain-HTTP listeners.
    pub http: Vec<SocketAddr>,
    /// TLS listeners.
    pub https: Vec<SocketAddr>,
    /// Default body limit of the services (`None`: no limit).
    pub max_request_body: Option<u64>,
    /// Automatic certificates; `None` without `acme_directory`.
    pub acme: Option<AcmeSettings>,
}

/// `[proxy] acme_*`: where automatic certificates come from.
#[derive(Debug, Clone, PartialEq)]
pub struct AcmeSettings {
    /// The ACME server's directory URL.
    pub directory: String,
    /// Contact for the account, e.g. `mailto:ops@example.com`.
    pub contact: Option<String>,
    /// Extra trust (PEM) for a private ACME server's HTTPS.
    pub ca: Option<PathBuf>,
    /// How long before expiry a certificate is renewed.
    pub renew_before: Duration,
}

/// Default `[proxy] acme_renew_before` (30 days).
pub const DEFAULT_ACME_RENEW_BEFORE: Duration = Duration::from_secs(30 * 86_400);

/// A service's claim on the shared edge listeners.
#[derive(Debug, Clone, PartialEq)]
pub struct ServiceEdge {
    /// Exact and one-level wildcard hosts.
    pub hosts: Vec<bg_proxy::HostPattern>,
    /// Path prefix, normalized (`""` for every path).
    pub path_prefix: String,
    /// Remove the prefix before forwarding (default true).
    pub strip_prefix: bool,
    /// Where its certificate comes from.
    pub tls: TlsSetting,
    /// Plain-HTTP requests get a 308 to https.
    pub redirect_https: bool,
    /// Largest request body (its own, else `[proxy]`'s); 413 beyond.
    pub max_request_body: Option<u64>,
}

/// A service's `tls`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TlsSetting {
    /// Plain HTTP only.
    Off,
    /// A certificate obtained and renewed through ACME (HTTP-01 on the
    /// http listeners), kept under `state_dir/acme/`.
    Acme,
    /// A certificate chain and key from PEM files, reloaded when they change.
    Files {
        /// The chain, leaf first.
        cert: PathBuf,
        /// The private key (mode 0600).
        key: PathBuf,
    },
}

/// How replicas are health-checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HealthCheckKind {
    /// `GET path` must answer 2xx.
    Http {
        /// The path, e.g. `/healthz`.
        path: String,
    },
    /// A TCP connect must succeed.
    Tcp,
}

/// `[services.NAME.health]`.
#[derive(Debug, Clone, PartialEq)]
pub struct HealthConfig {
    /// HTTP or TCP. Where a container image has its own HEALTHCHECK, it
    /// must pass too.
    pub check: HealthCheckKind,
    /// Time between checks.
    pub interval: Duration,
    /// Time one check may take.
    pub timeout: Duration,
    /// Passes in a row to become healthy.
    pub healthy_threshold: u32,
    /// Failures in a row to become unhealthy.
    pub unhealthy_threshold: u32,
    /// Time a new replica has to become healthy.
    pub deadline: Duration,
}

pub use crate::api::{FailureAction, RollingOrder, MAX_DURATION};

/// `[services.NAME.deploy]`.
#[derive(Debug, Clone, PartialEq)]
pub struct DeployConfig {
    /// Promote as soon as the new color is healthy.
    pub auto_promote: bool,
    /// Longest wait for the old color's in-flight requests.
    pub drain_timeout: Duration,
    /// Keep the old color running, out of rotation, this long after a
    /// promote (instant rollback); zero stops it at once.
    pub keep_old: Duration,
    /// Watch the new color this long after a promote; zero disables.
    pub monitor: Duration,
    /// What to do when the monitor window fails.
    pub failure_action: FailureAction,
    /// Highest tolerated 5xx ratio of the new color during the monitor window.
    pub max_error_rate: f64,
    /// What the agent does at start for a service it has no state of.
    pub on_start: OnStart,
}

/// `[services.NAME.hooks]`: commands around a deploy.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct HooksConfig {
    /// On the host, before the new color starts; a non-zero exit fails the
    /// deploy with nothing started.
    pub pre_deploy: Option<Vec<String>>,
    /// On the host, after traffic moved (promote, rollback); a failure is
    /// reported, not fatal.
    pub post_switch: Option<Vec<String>>,
    /// Per old replica, after its drain, before its stop signal.
    pub pre_stop: Option<PreStop>,
    /// Longest run of one hook; it is killed after that.
    pub timeout: Duration,
}

/// The `pre_stop` hook.
#[derive(Debug, Clone, PartialEq)]
pub enum PreStop {
    /// `GET` this path on the replica.
    Http(String),
    /// Run this command beside the replica (process runtime), with
    /// `BG_REPLICA_ADDR` set.
    Exec(Vec<String>),
}

/// `[services.NAME.deploy] on_start`: what a service with no recorded state
/// does when the agent starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OnStart {
    /// Deploy the configured spec (it goes live, as every first deploy
    /// does): a freshly provisioned host serves without a `bgctl deploy`.
    Deploy,
    /// Wait for a `bgctl deploy`.
    Wait,
}

/// `[services.NAME.rolling]`.
#[derive(Debug, Clone, PartialEq)]
pub struct RollingConfig {
    /// Replicas replaced at once.
    pub parallelism: u32,
    /// Pause between batches.
    pub delay: Duration,
    /// Stop-first or start-first.
    pub order: RollingOrder,
    /// What a failed batch does.
    pub failure_action: FailureAction,
    /// Watch each batch this long.
    pub monitor: Duration,
    /// Failed batches tolerated, as a fraction of all batches.
    pub max_failure_ratio: f64,
}

/// Why a configuration was refused.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read config file {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// A key is wrong: unknown, malformed, or contradicting another.
    /// `line` is 1-based; 0 when the problem has no single place.
    #[error("{path}:{line}: {key}: {message}")]
    Invalid {
        /// The file.
        path: PathBuf,
        /// The line, from 1.
        line: usize,
        /// The key, dotted (`services.web.health.interval`).
        key: String,
        /// What is wrong and what is expected.
        message: String,
    },
}

impl Config {
    /// Read and validate a config file.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let bytes =
            std::fs::read(path).map_err(|source| ConfigError::Read { path: path.to_path_buf(), source })?;
        let text = std::str::from_utf8(&bytes).map_err(|e| raw::invalid_utf8(&bytes, &e, path))?;
        Config::parse(text, path)
    }

    /// Validate config text; `path` is only used in error messages.
    pub fn parse(text: &str, path: &Path) -> Result<Config, ConfigError> {
        raw::parse(text, path)
    }
}
