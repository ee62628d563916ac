//! Real `bg-agent` processes for end-to-end tests, configured by a builder
//! that reads like the scenario:
//!
//! ```no_run
//! # async fn t() {
//! use bg_tests::agent::{Agent, Svc};
//! let agent = Agent::process().service(Svc::new("web").replicas(2)).start().await;
//! let out = agent.bgctl(&["deploy", "web", "--env", "VERSION=v2", "--promote"]);
//! out.assert_exit_code(0);
//! # }
//! ```
//!
//! Each agent gets its own temporary directory (config, state, socket,
//! logs). Replicas outlive an agent by design, so dropping a [`RunningAgent`]
//! also kills every process (or container) it started, found by a marker.

use crate::bins::cargo_bin;
use serde_json::Value;
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

static COUNTER: AtomicU32 = AtomicU32::new(0);

/// Which runtime the agent uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RuntimeChoice {
    /// Local processes (websample binary).
    Process,
    /// Docker containers (websample image).
    Docker,
    /// Swarm services on the engine's single-node swarm (websample image);
    /// see [`crate::swarm`].
    Swarm,
}

/// One service in the generated config.
#[derive(Debug, Clone)]
pub struct Svc {
    name: String,
    replicas: u32,
    env: BTreeMap<String, String>,
    image: String,
    command: Option<Vec<String>>,
    keys: BTreeMap<String, Vec<(String, String)>>,
}

impl Svc {
    /// A service with fast test timings (100 ms health interval, 10 s
    /// deadline, 5 s stop grace, 10 s drain timeout).
    pub fn new(name: &str) -> Svc {
        let mut s = Svc {
            name: name.to_string(),
            replicas: 1,
            env: BTreeMap::new(),
            image: "websample:v1".into(),
            command: None,
            keys: BTreeMap::new(),
        };
        s = s
            .set("", "stop_grace", "\"5s\"")
            .set("", "queue_timeout", "\"10s\"")
            .set("health", "interval", "\"100ms\"")
            .set("health", "timeout", "\"500ms\"")
            .set("health", "healthy_threshold", "1")
            .set("health", "unhealthy_threshold", "2")
            .set("health", "deadline", "\"10s\"")
            .set("deploy", "drain_timeout", "\"10s\"")
            // The scenarios make their first deploy themselves; the
            // first-start test sets "deploy".
            .set("deploy", "on_start", "\"wait\"");
        s.env.insert("VERSION".into(), "v1".into());
        s
    }

    /// Replicas per color.
    pub fn replicas(mut self, n: u32) -> Svc {
        self.replicas = n;
        self
    }

    /// An environment variable of the configured spec.
    pub fn env(mut self, key: &str, value: &str) -> Svc {
        self.env.insert(key.into(), value.into());
        self
    }

    /// The docker image of the configured spec.
    pub fn image(mut self, image: &str) -> Svc {
        self.image = image.into();
        self
    }

    /// The program the process runtime runs for this service, instead of
    /// websample; it must listen on `$PORT` and answer the health check.
    pub fn command(mut self, argv: &[&str]) -> Svc {
        self.command = Some(argv.iter().map(|a| a.to_string()).collect());
        self
    }

    /// Set a raw TOML value in `[services.NAME.<section>]` (`""` for the
    /// service table itself); `value` is TOML (`"\"5s\""`, `2`, `true`).
    pub fn set(mut self, section: &str, key: &str, value: &str) -> Svc {
        let entries = self.keys.entry(section.to_string()).or_default();
        entries.retain(|(k, _)| k != key);
        entries.push((key.to_string(), value.to_string()));
        self
    }

    /// Give the service a secret `db_password` (a fresh random text, the
    /// return value) and a file `/etc/app/app.toml` (`answer = 42`, mode
    /// 0440), their sources written into `dir`, and run it as `1000:1000`.
    pub fn with_secret_and_file(self, dir: &Path) -> (Svc, String) {
        let secret_text = format!("s3cret-{}", unique_service("pw"));
        let secret = dir.join("db_password");
        std::fs::write(&secret, &secret_text).expect("write the secret");
        let conf = dir.join("app.toml");
        std::fs::write(&conf, "answer = 42\n").expect("write the file");
        let svc = self
            .set("", "user", "\"1000:1000\"")
            .set("secrets", "db_password", &format!("{{ source = {:?} }}", secret.display().to_string()))
            .set(
                "files",
                "\"/etc/app/app.toml\"",
                &format!("{{ source = {:?}, mode = \"0440\" }}", conf.display().to_string()),
            );
        (svc, secret_text)
    }

    /// The service name.
    pub fn name(&self) -> &str {
        &self.name
    }
}

/// Builds and starts an agent.
#[derive(Debug, Clone)]
pub struct Agent {
    runtime: RuntimeChoice,
    services: Vec<Svc>,
    token: Option<String>,
    metrics: bool,
    ui: bool,
    socket_activated: bool,
    env: Vec<(String, String)>,
    docker_host: Option<String>,
    runtime_keys: Vec<(String, String)>,
    proxy_keys: Vec<(String, String)>,
    log: LogSettings,
    socket_group: Option<String>,
    netns: Option<(String, std::net::Ipv4Addr)>,
    control_tls: Option<String>,
}

/// How the agent logs: `--log-format` and `RUST_LOG`.
#[derive(Debug, Clone)]
struct LogSettings {
    format: Option<String>,
    filter: String,
}

impl Default for LogSettings {
    fn default() -> Self {
        LogSettings { format: None, filter: "info,bg_agent=debug".into() }
    }
}

impl Agent {
    /// An agent on the process runtime.
    pub fn process() -> Agent {
        Agent::with_runtime(RuntimeChoice::Process)
    }

    /// An agent on the docker runtime. Fails the test when Docker is
    /// required (`BG_DOCKER_TESTS=1`) but unreachable.
    pub fn docker() -> Agent {
        Agent::with_runtime(RuntimeChoice::Docker)
    }

    /// An agent on the swarm runtime, reaching tasks on `task_network`
    /// (see [`crate::swarm::SwarmGuard`] for the swarm and the network).
    pub fn swarm(task_network: &str) -> Agent {
        Agent::with_runtime(RuntimeChoice::Swarm).runtime_key("task_network", &format!("{task_network:?}"))
    }

    fn with_runtime(runtime: RuntimeChoice) -> Agent {
        Agent {
            runtime,
            services: vec![],
            token: None,
            metrics: false,
            ui: false,
            socket_activated: false,
            env: vec![],
            docker_host: None,
            runtime_keys: Vec::new(),
            proxy_keys: Vec::new(),
            log: LogSettings::default(),
            socket_group: None,
            netns: None,
            control_tls: None,
        }
    }

    /// Serve the TCP control API (see [`Agent::tcp_token`]) over TLS with
    /// this certificate and key, requiring client certificates signed by
    /// `client_ca` when given.
    pub fn control_tls(mut self, cert: &Path, key: &Path, client_ca: Option<&Path>) -> Agent {
        let mut value =
            format!("{{ cert = {:?}, key = {:?}", cert.display().to_string(), key.display().to_string());
        if let Some(ca) = client_ca {
            value.push_str(&format!(", client_ca = {:?}", ca.display().to_string()));
        }
        value.push_str(" }");
        self.control_tls = Some(value);
        self
    }

    /// Run inside network namespace `ns` (made by [`crate::netns`]) whose
    /// address is `addr`: the control API (with [`Agent::tcp_token`]) on
    /// `addr:7070`, services on `addr:8080` and up; replicas on the
    /// namespace's own loopback.
    pub fn in_netns(mut self, ns: &str, addr: std::net::Ipv4Addr) -> Agent {
        self.netns = Some((ns.to_string(), addr));
        self
    }

    /// Run with `--log-format FORMAT` (`text` or `json`).
    pub fn log_format(mut self, format: &str) -> Agent {
        self.log.format = Some(format.into());
        self
    }

    /// Run with this `RUST_LOG` (default `info,bg_agent=debug`).
    pub fn rust_log(mut self, filter: &str) -> Agent {
        self.log.filter = filter.into();
        self
    }

    /// Set `[agent] control_socket_group`.
    pub fn socket_group(mut self, group: &str) -> Agent {
        self.socket_group = Some(group.into());
        self
    }

    /// Socket activation as systemd does it: the test binds the proxy
    /// listeners and the control socket and passes them to every agent
    /// process it starts (`LISTEN_FDS`), so they outlive restarts.
    pub fn socket_activated(mut self) -> Agent {
        self.socket_activated = true;
        self
    }

    /// An environment variable for the agent process.
    pub fn agent_env(mut self, key: &str, value: &str) -> Agent {
        self.env.push((key.into(), value.into()));
        self
    }

    /// Add a service.
    pub fn service(mut self, svc: Svc) -> Agent {
        self.services.push(svc);
        self
    }

    /// Also serve the control API on TCP with this token.
    pub fn tcp_token(mut self, token: &str) -> Agent {
        self.token = Some(token.into());
        self
    }

    /// Also serve the dashboard (`ui_listen`) on a loopback port.
    pub fn ui(mut self) -> Agent {
        self.ui = true;
        self
    }

    /// Also serve `/metrics` on a loopback port.
    pub fn metrics(mut self) -> Agent {
        self.metrics = true;
        self
    }

    /// Reach the Docker engine at this address (`[runtime] docker_host`,
    /// e.g. `unix:///tmp/relay.sock`) instead of the default socket.
    pub fn docker_host(mut self, host: &str) -> Agent {
        self.docker_host = Some(host.into());
        self
    }

    /// Set a raw TOML value in `[runtime]`; `value` is TOML (`"\"3s\""`).
    pub fn runtime_key(mut self, key: &str, value: &str) -> Agent {
        self.runtime_keys.push((key.into(), value.into()));
        self
    }

    /// Set a raw TOML value in `[proxy]` (the shared edge listeners).
    pub fn proxy_key(mut self, key: &str, value: &str) -> Agent {
        self.proxy_keys.push((key.into(), value.into()));
        self
    }

    /// Write the config, start the agent, wait until its API answers.
    pub async fn start(self) -> RunningAgent {
        let dir = tempfile::Builder::new().prefix("bg-agent-test-").tempdir().expect("temp dir");
        let marker = format!("bgtest-{}-{}", std::process::id(), COUNTER.fetch_add(1, Ordering::Relaxed));
        let mut listen = BTreeMap::new();
        let mut toml = String::new();
        let socket = dir.path().join("agent.sock");
        toml.push_str(&format!(
            "[agent]\nstate_dir = {:?}\ncontrol_socket = {:?}\n",
            dir.path().join("state"),
            socket
        ));
        if let Some(group) = &self.socket_group {
            toml.push_str(&format!("control_socket_group = {group:?}\n"));
        }
        let control_addr = self.token.as_ref().map(|token| {
            let token_file = dir.path().join("token");
            std::fs::write(&token_file, token).expect("write token");
            std::fs::set_permissions(&token_file, std::os::unix::fs::PermissionsExt::from_mode(0o600))
                .expect("chmod token");
            let addr = match &self.netns {
                Some((_, ip)) => SocketAddr::from((*ip, 7070)),
                None => free_addr(),
            };
            toml.push_str(&format!("control_listen = \"{addr}\"\ntoken_file = {token_file:?}\n"));
            if let Some(tls) = &self.control_tls {
                toml.push_str(&format!("control_tls = {tls}\n"));
            }
            if self.netns.is_some() && self.control_tls.is_none() {
                // Test namespaces are private to the test.
                toml.push_str("allow_plaintext = true\n");
            }
            addr
        });
        let metrics_addr = self.metrics.then(|| {
            let addr = free_addr();
            toml.push_str(&format!("metrics_listen = \"{addr}\"\n"));
            addr
        });
        let ui_addr = self.ui.then(|| {
            let addr = free_addr();
            toml.push_str(&format!("ui_listen = \"{addr}\"\n"));
            addr
        });
        let kind = match self.runtime {
            RuntimeChoice::Process => "process",
            RuntimeChoice::Docker => "docker",
            RuntimeChoice::Swarm => "swarm",
        };
        toml.push_str(&format!("\n[runtime]\nkind = \"{kind}\"\n"));
        if let Some(host) = &self.docker_host {
            toml.push_str(&format!("docker_host = {host:?}\n"));
        }
        for (key, value) in &self.runtime_keys {
            toml.push_str(&format!("{key} = {value}\n"));
        }
        if !self.proxy_keys.is_empty() {
            toml.push_str("\n[proxy]\n");
            for (key, value) in &self.proxy_keys {
                toml.push_str(&format!("{key} = {value}\n"));
            }
        }
        for (i, svc) in self.services.iter().enumerate() {
            let addr = match &self.netns {
                Some((_, ip)) => SocketAddr::from((*ip, 8080 + i as u16)),
                None => free_addr(),
            };
            listen.insert(svc.name.clone(), addr);
            toml.push_str(&format!(
                "\n[services.{}]\nlisten = [\"{addr}\"]\nreplicas = {}\n",
                svc.name, svc.replicas
            ));
            match self.runtime {
                RuntimeChoice::Process => match &svc.command {
                    Some(argv) => toml.push_str(&format!("command = {argv:?}\n")),
                    None => toml.push_str(&format!("command = [{:?}]\n", crate::websample::websample_bin())),
                },
                RuntimeChoice::Docker | RuntimeChoice::Swarm => {
                    toml.push_str(&format!("image = {:?}\nport = 5000\n", svc.image));
                    // Locally built images unless the test pulls.
                    if !svc.keys.get("").is_some_and(|k| k.iter().any(|(k, _)| k == "pull")) {
                        toml.push_str("pull = \"never\"\n");
                    }
                }
            }
            let mut env = svc.env.clone();
            env.insert("BG_TEST_MARKER".into(), marker.clone());
            if self.runtime == RuntimeChoice::Process {
                env.insert("BIND".into(), "127.0.0.1".into());
            }
            let env: Vec<String> = env.iter().map(|(k, v)| format!("{k} = {v:?}")).collect();
            toml.push_str(&format!("env = {{ {} }}\n", env.join(", ")));
            for (k, v) in svc.keys.get("").into_iter().flatten() {
                toml.push_str(&format!("{k} = {v}\n"));
            }
            for (section, entries) in svc.keys.iter().filter(|(s, _)| !s.is_empty()) {
                toml.push_str(&format!("\n[services.{}.{section}]\n", svc.name));
                for (k, v) in entries {
                    toml.push_str(&format!("{k} = {v}\n"));
                }
            }
        }
        let config = dir.path().join("agent.toml");
        std::fs::write(&config, &toml).expect("write config");
        let mut passed: Vec<std::os::fd::OwnedFd> = Vec::new();
        if self.socket_activated {
            for addr in listen.values() {
                passed.push(std::net::TcpListener::bind(addr).expect("bind a passed listener").into());
            }
            passed.push(
                std::os::unix::net::UnixListener::bind(&socket).expect("bind the passed socket").into(),
            );
        }
        let mut agent = RunningAgent {
            dir,
            config,
            socket,
            listen,
            control_addr,
            metrics_addr,
            ui_addr,
            child: None,
            marker,
            runtime: self.runtime,
            services: self.services.iter().map(|s| s.name.clone()).collect(),
            starts: 0,
            passed,
            env: self.env,
            log: self.log.clone(),
            netns: self.netns.map(|(ns, _)| ns),
            successors: Vec::new(),
        };
        agent.spawn();
        agent.wait_api().await;
        agent
    }
}

/// A free loopback address (bound, read, released), never one this test
/// process handed out before: the kernel may give a released port again
/// at once, and a config with the same port twice is refused.
pub fn free_addr() -> SocketAddr {
    static GIVEN: std::sync::Mutex<std::collections::BTreeSet<u16>> =
        std::sync::Mutex::new(std::collections::BTreeSet::new());
    loop {
        let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
        let addr = l.local_addr().expect("local addr");
        if GIVEN.lock().unwrap_or_else(|e| e.into_inner()).insert(addr.port()) {
            return addr;
        }
    }
}

/// A running agent process and everything it owns.
pub struct RunningAgent {
    dir: tempfile::TempDir,
    config: PathBuf,
    socket: PathBuf,
    listen: BTreeMap<String, SocketAddr>,
    control_addr: Option<SocketAddr>,
    metrics_addr: Option<SocketAddr>,
    ui_addr: Option<SocketAddr>,
    child: Option<Child>,
    marker: String,
    runtime: RuntimeChoice,
    services: Vec<String>,
    starts: u32,
    /// Sockets passed to every agent process (socket activation).
    passed: Vec<std::os::fd::OwnedFd>,
    env: Vec<(String, String)>,
    log: LogSettings,
    /// The network namespace it runs in, if any.
    netns: Option<String>,
    /// Agent processes that took over from this one (`bgctl reload`):
    /// not our children, killed on drop all the same.
    successors: Vec<i32>,
}

impl RunningAgent {
    /// Take `pid`, the agent that took over by a reload, as this one's: it
    /// is killed on drop.
    pub fn adopt(&mut self, pid: i32) {
        self.successors.push(pid);
    }

    fn spawn(&mut self) {
        let child = self.spawn_process(&self.config.clone());
        self.child = Some(child);
    }

    /// Start an agent process with `config`, logging to this agent's log,
    /// with the passed sockets when socket-activated.
    pub fn spawn_process(&mut self, config: &Path) -> Child {
        use command_fds::{CommandFdExt, FdMapping};
        self.starts += 1;
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.path().join("agent.log"))
            .expect("agent log");
        let mut command = match &self.netns {
            Some(ns) => {
                let mut c = Command::new("ip");
                c.args(["netns", "exec", ns]).arg(cargo_bin("bg-agent", "bg-agent"));
                c
            }
            None => Command::new(cargo_bin("bg-agent", "bg-agent")),
        };
        command.arg("--config").arg(config);
        if let Some(format) = &self.log.format {
            command.args(["--log-format", format]);
        }
        command
            .env("RUST_LOG", &self.log.filter)
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log fd"))
            .stderr(log);
        if !self.passed.is_empty() {
            let mappings = self
                .passed
                .iter()
                .enumerate()
                .map(|(i, fd)| FdMapping {
                    parent_fd: fd.try_clone().expect("dup a passed socket"),
                    child_fd: 3 + i as i32,
                })
                .collect();
            command
                .fd_mappings(mappings)
                .expect("distinct fds")
                .env("LISTEN_FDS", self.passed.len().to_string());
        }
        command.spawn().expect("spawn bg-agent")
    }

    /// Replace the running agent with a new process without stopping it
    /// first: the new one takes the sockets over, the old one exits by
    /// itself. Panics unless the old one exits cleanly within 30 s.
    pub async fn handover(&mut self) {
        let mut old = self.child.take().expect("agent is running");
        self.spawn();
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Ok(Some(status)) = old.try_wait() {
                assert!(status.success(), "the old agent exited with {status}; log:\n{}", self.log());
                break;
            }
            if let Some(Ok(Some(status))) = self.child.as_mut().map(Child::try_wait) {
                let _ = old.kill();
                panic!("the new agent exited with {status} during the handover; log:\n{}", self.log());
            }
            assert!(
                Instant::now() < deadline,
                "the old agent still runs 30s into the handover; log:\n{}",
                self.log()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        self.wait_api().await;
    }

    /// The config file.
    pub fn config_path(&self) -> &Path {
        &self.config
    }

    async fn wait_api(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Ok((200, _)) = self.api_get("/v1/health").await {
                return;
            }
            if let Some(child) = self.child.as_mut() {
                if let Ok(Some(status)) = child.try_wait() {
                    panic!("bg-agent exited during start ({status}); log:\n{}", self.log());
                }
            }
            assert!(Instant::now() < deadline, "bg-agent did not answer within 30s; log:\n{}", self.log());
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// The agent's log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("agent.log")).unwrap_or_default()
    }

    /// The token of the TCP control API, read back from its file.
    pub fn token(&self) -> Option<String> {
        self.control_addr.map(|_| std::fs::read_to_string(self.dir.path().join("token")).expect("token file"))
    }

    /// The temporary directory (config, state, socket, logs).
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// The state directory.
    pub fn state_dir(&self) -> PathBuf {
        self.dir.path().join("state")
    }

    /// The control socket.
    pub fn socket(&self) -> &Path {
        &self.socket
    }

    /// `--agent` value for the unix socket.
    pub fn agent_arg(&self) -> String {
        format!("unix://{}", self.socket.display())
    }

    /// The TCP control address, when configured.
    pub fn control_addr(&self) -> Option<SocketAddr> {
        self.control_addr
    }

    /// The dashboard address, when configured.
    pub fn ui_addr(&self) -> Option<SocketAddr> {
        self.ui_addr
    }

    /// The metrics address, when configured.
    pub fn metrics_addr(&self) -> Option<SocketAddr> {
        self.metrics_addr
    }

    /// The proxy listener of a service.
    pub fn listen(&self, service: &str) -> SocketAddr {
        self.listen[service]
    }

    /// The agent's pid.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Kill the agent with SIGKILL (its replicas keep running).
    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
        for pid in self.successors.drain(..) {
            let _ =
                nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), nix::sys::signal::Signal::SIGKILL);
        }
    }

    /// Stop the agent with SIGTERM and wait for it (replicas keep running).
    pub fn stop(&mut self) -> std::process::ExitStatus {
        let mut c = self.child.take().expect("agent is running");
        let pid = nix::unistd::Pid::from_raw(c.id() as i32);
        let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Ok(Some(status)) = c.try_wait() {
                return status;
            }
            if Instant::now() > deadline {
                let _ = c.kill();
                panic!("bg-agent did not stop within 20s of SIGTERM; log:\n{}", self.log());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Start the agent again with the same config and state.
    pub async fn restart(&mut self) {
        assert!(self.child.is_none(), "stop or kill the agent first");
        self.spawn();
        self.wait_api().await;
    }

    /// GET a control API path over the unix socket: (status, JSON body).
    pub async fn api_get(&self, path: &str) -> Result<(u16, Value), String> {
        crate::api::request(&self.socket, "GET", path, None).await
    }

    /// POST JSON to a control API path over the unix socket.
    pub async fn api_post(&self, path: &str, body: Value) -> Result<(u16, Value), String> {
        crate::api::request(&self.socket, "POST", path, Some(body)).await
    }

    /// Scrape `/metrics` over HTTP and parse it strictly; panics unless
    /// the agent answers 200 with OpenMetrics text that parses.
    pub async fn scrape(&self) -> crate::prom::Scrape {
        let addr = self.metrics_addr.expect("start the agent with .metrics()");
        let resp = crate::api::raw(crate::api::Target::Tcp(addr), "GET", "/metrics", &[], "")
            .await
            .unwrap_or_else(|e| panic!("scrape {addr}: {e}"));
        assert_eq!(resp.status, 200, "GET /metrics: {}", resp.text());
        let kind = resp.header("content-type").unwrap_or("");
        assert!(kind.starts_with("application/openmetrics-text"), "content type {kind:?}");
        crate::prom::Scrape::parse(&resp.text())
            .unwrap_or_else(|e| panic!("/metrics does not parse: {e}\n{}", resp.text()))
    }

    /// `GET /v1/services/{name}`.
    pub async fn status(&self, service: &str) -> Value {
        match self.api_get(&format!("/v1/services/{service}")).await {
            Ok((200, v)) => v,
            other => panic!("status of {service}: {other:?}"),
        }
    }

    /// Poll the service's status until `cond` holds and return that status;
    /// panics with `what`, the last status and the log after `within`.
    pub async fn wait_status(
        &self,
        service: &str,
        what: &str,
        within: Duration,
        cond: impl Fn(&Value) -> bool,
    ) -> Value {
        let deadline = Instant::now() + within;
        loop {
            let s = self.status(service).await;
            if cond(&s) {
                return s;
            }
            assert!(
                Instant::now() < deadline,
                "timed out after {within:?} waiting for: {what}\n{s}\nlog:\n{}",
                self.log()
            );
            tokio::time::sleep(crate::wait::POLL).await;
        }
    }

    /// Wait until the service has no running operation, and return its
    /// status (`last_outcome` says how the operation ended).
    pub async fn wait_idle(&self, service: &str, within: Duration) -> Value {
        self.wait_status(service, "the operation to end", within, |s| s["operation"].is_null()).await
    }

    /// Run the real `bgctl` against this agent (unix socket).
    pub fn bgctl(&self, args: &[&str]) -> CtlOutput {
        let mut all = vec!["--agent".to_string(), self.agent_arg()];
        all.extend(args.iter().map(|s| s.to_string()));
        bgctl(&all)
    }

    /// Runtime ids (container names or pids) of a color's replicas.
    pub async fn runtime_ids(&self, service: &str, color: &str) -> Vec<String> {
        let s = self.status(service).await;
        s["colors"][color]["replicas"]
            .as_array()
            .map(|a| a.iter().filter_map(|r| r["runtime_id"].as_str().map(String::from)).collect())
            .unwrap_or_default()
    }

    /// Pids of this agent's replica processes whose environment holds
    /// `key=value` (process runtime only).
    pub fn processes_with(&self, kv: &str) -> Vec<i32> {
        processes_with_env(&format!("BG_TEST_MARKER={}", self.marker))
            .into_iter()
            .filter(|pid| process_env(*pid).iter().any(|e| e == kv))
            .collect()
    }

    /// Events of a service so far (`GET /v1/events?since=0`).
    pub async fn events(&self, service: &str) -> Vec<Value> {
        crate::api::events(&self.socket, service).await
    }

    /// POST an operation and wait for it to end; returns the service status
    /// afterwards. Panics unless the POST is accepted.
    pub async fn op(&self, service: &str, op: &str, body: Value, within: Duration) -> Value {
        match self.api_post(&format!("/v1/services/{service}/{op}"), body).await {
            Ok((202, _)) => {}
            other => panic!("POST {op} on {service}: {other:?}\nlog:\n{}", self.log()),
        }
        self.wait_idle(service, within).await
    }

    /// Kill every replica this agent started (processes by marker,
    /// containers by service label).
    pub fn kill_replicas(&self) {
        match self.runtime {
            RuntimeChoice::Process => kill_processes_with_marker(&self.marker),
            RuntimeChoice::Docker => {
                for svc in &self.services {
                    remove_containers(svc);
                }
            }
            RuntimeChoice::Swarm => {
                for svc in &self.services {
                    crate::swarm::remove_swarm_objects(svc);
                }
            }
        }
    }
}

impl Drop for RunningAgent {
    fn drop(&mut self) {
        self.kill9();
        self.kill_replicas();
    }
}

/// Run the real `bgctl` with these arguments.
pub fn bgctl(args: &[String]) -> CtlOutput {
    let out = Command::new(cargo_bin("bgctl", "bgctl"))
        .args(args)
        .stdin(Stdio::null())
        .output()
        .expect("run bgctl");
    CtlOutput {
        code: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        args: args.to_vec(),
    }
}

/// Run the real `bg-agent` with these arguments and extra environment until
/// it exits by itself (`--check-config`, or a config it must refuse). Panics
/// if it is still running after `within`, after killing it: an agent that
/// should have refused to start must not hang a test. `args` of the output
/// starts with `bg-agent`.
pub fn bg_agent_run(args: &[&str], env: &[(&str, &str)], within: Duration) -> CtlOutput {
    let dir = tempfile::tempdir().expect("temp dir");
    let (out_path, err_path) = (dir.path().join("stdout"), dir.path().join("stderr"));
    let mut child = Command::new(cargo_bin("bg-agent", "bg-agent"))
        .args(args)
        .envs(env.iter().copied())
        .stdin(Stdio::null())
        .stdout(std::fs::File::create(&out_path).expect("stdout file"))
        .stderr(std::fs::File::create(&err_path).expect("stderr file"))
        .spawn()
        .expect("spawn bg-agent");
    let deadline = Instant::now() + within;
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait for bg-agent") {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!(
                "bg-agent {args:?} still ran after {within:?}; stderr:\n{}",
                std::fs::read_to_string(&err_path).unwrap_or_default()
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let mut all = vec!["bg-agent".to_string()];
    all.extend(args.iter().map(|s| s.to_string()));
    CtlOutput {
        code: status.code().unwrap_or(-1),
        stdout: std::fs::read_to_string(&out_path).unwrap_or_default(),
        stderr: std::fs::read_to_string(&err_path).unwrap_or_default(),
        args: all,
    }
}

/// What a `bgctl` (or `bg-agent`) run printed and returned.
#[derive(Debug, Clone)]
pub struct CtlOutput {
    /// Exit code.
    pub code: i32,
    /// Standard output.
    pub stdout: String,
    /// Standard error.
    pub stderr: String,
    /// The arguments it ran with.
    pub args: Vec<String>,
}

impl CtlOutput {
    /// Panic with everything printed unless the exit code is `code`.
    pub fn assert_exit_code(&self, code: i32) -> &Self {
        assert_eq!(
            self.code, code,
            "{:?} exited {} (wanted {code})\nstdout:\n{}\nstderr:\n{}",
            self.args, self.code, self.stdout, self.stderr
        );
        self
    }

    /// Standard output parsed as one JSON document.
    pub fn stdout_json(&self) -> Value {
        serde_json::from_str(&self.stdout).unwrap_or_else(|e| {
            panic!("{:?} stdout is not one JSON document ({e}):\n{}", self.args, self.stdout)
        })
    }
}

fn process_env(pid: i32) -> Vec<String> {
    std::fs::read(format!("/proc/{pid}/environ"))
        .map(|b| b.split(|c| *c == 0).map(|kv| String::from_utf8_lossy(kv).into_owned()).collect())
        .unwrap_or_default()
}

/// Pids of live (not zombie) processes whose environment holds `kv`
/// (`KEY=value`).
pub fn processes_with_env(kv: &str) -> Vec<i32> {
    let Ok(entries) = std::fs::read_dir("/proc") else { return vec![] };
    entries
        .flatten()
        .filter_map(|e| e.file_name().to_string_lossy().parse::<i32>().ok())
        .filter(|pid| {
            let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
            !stat.contains(") Z ") && process_env(*pid).iter().any(|e| e == kv)
        })
        .collect()
}

fn kill_processes_with_marker(marker: &str) {
    for pid in processes_with_env(&format!("BG_TEST_MARKER={marker}")) {
        let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), nix::sys::signal::Signal::SIGKILL);
    }
}

/// Remove every container labelled with this service (docker CLI).
pub fn remove_containers(service: &str) {
    let Ok(out) = Command::new("docker")
        .args(["ps", "-aq", "--filter", &format!("label=bg.service={service}")])
        .output()
    else {
        return;
    };
    let ids: Vec<String> =
        String::from_utf8_lossy(&out.stdout).split_whitespace().map(String::from).collect();
    if !ids.is_empty() {
        // `-v`: anonymous volumes (read-only replicas keep their secrets in
        // them) go with their containers.
        let _ = Command::new("docker").args(["rm", "-f", "-v"]).args(&ids).stdout(Stdio::null()).status();
    }
}

/// A service name unique to this test process, for Docker tests.
pub fn unique_service(prefix: &str) -> String {
    format!("{prefix}-{}-{}", std::process::id(), COUNTER.fetch_add(1, Ordering::Relaxed))
}
