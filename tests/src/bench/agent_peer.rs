//! `bg-agent` as users run it, as a peer of the product setting: the
//! release binary started from a generated config (process runtime, the
//! metrics listener on, default health checks), unpinned, with
//! `bench-upstream` as its one replica. The replica outlives each agent
//! (as replicas do), so every load shape starts a fresh agent that adopts
//! it, and the other peers are pointed at the same replica.
//!
//! With a [`BenchCert`], the agent also opens an https edge listener
//! (`[proxy] https`) and the service claims [`SERVER_NAME`] there with
//! that certificate (`hosts`, `tls = { cert, key }`), as DESIGN.md's edge
//! describes: the TLS cells' bg-agent.

use super::peers::Tools;
use super::procs::free_addr;
use super::tls::{BenchCert, SERVER_NAME};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

/// The agent's config, state and replica, prepared once per run.
pub struct AgentHome {
    dir: tempfile::TempDir,
    /// Where the agent's proxy listens.
    pub listen: SocketAddr,
    /// Its https edge listener, when prepared with a certificate.
    pub https: Option<SocketAddr>,
    /// The replica: the upstream of every peer in this setting.
    pub upstream: SocketAddr,
    marker: String,
}

impl AgentHome {
    /// Write the config, start the agent once (it deploys `bench-upstream`
    /// as its replica by itself: first start), and stop it again (the
    /// replica runs on). With `cert`, an https edge listener serves it;
    /// `workers` sets `[agent] worker_threads` (else the agent's default).
    pub async fn prepare(tools: &Tools, cert: Option<&BenchCert>, workers: Option<usize>) -> AgentHome {
        let dir = tempfile::Builder::new().prefix("bg-bench-agent-").tempdir().expect("temp dir");
        let listen = free_addr();
        let https = cert.map(|_| free_addr());
        let marker = format!("bench-{}", std::process::id());
        let config = agent_config(
            &dir.path().join("state"),
            &dir.path().join("agent.sock"),
            free_addr(),
            listen,
            &tools.upstream,
            &marker,
            https.zip(cert),
            workers,
        );
        std::fs::write(dir.path().join("agent.toml"), config).expect("write agent.toml");
        let mut home = AgentHome { dir, listen, https, upstream: listen, marker };
        let agent = home.start(tools);
        let socket = home.dir.path().join("agent.sock");
        home.upstream = home.wait_serving(&socket).await;
        drop(agent);
        home
    }

    /// The command that starts the agent on this home.
    pub fn command(&self, tools: &Tools) -> Command {
        let mut cmd = Command::new(&tools.bg_agent);
        cmd.arg("--config").arg(self.dir.path().join("agent.toml")).env("RUST_LOG", "warn");
        cmd
    }

    /// Start an agent and wait until its proxy answers through the replica.
    pub fn start(&self, tools: &Tools) -> super::procs::Proc {
        let log = self.dir.path().join("agent.log");
        let proc = super::procs::Proc::start("bg-agent", self.command(tools), self.listen, Some(&log))
            .keep_children();
        let deadline = Instant::now() + Duration::from_secs(30);
        while !answers(self.listen) {
            assert!(
                Instant::now() < deadline,
                "bg-agent did not route to its replica within 30s:\n{}",
                std::fs::read_to_string(&log).unwrap_or_default()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        proc
    }

    /// Wait until the service is live with a healthy replica; its address.
    async fn wait_serving(&self, socket: &std::path::Path) -> SocketAddr {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let (_, s) =
                crate::api::request(socket, "GET", "/v1/services/bench", None).await.expect("status");
            let active = s["active"].as_str().unwrap_or("");
            let replica = &s["colors"][active]["replicas"][0];
            if replica["health"] == "healthy" {
                return replica["addr"].as_str().and_then(|a| a.parse().ok()).expect("replica address");
            }
            assert!(Instant::now() < deadline, "the bench upstream did not become healthy: {s}");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// The agent's log so far.
    pub fn log_path(&self) -> PathBuf {
        self.dir.path().join("agent.log")
    }
}

/// The agent's config: one service on `listen` running `upstream` (marked
/// with `marker`), and with `tls` also on the https edge for
/// [`SERVER_NAME`] with that certificate.
#[allow(clippy::too_many_arguments)]
fn agent_config(
    state: &std::path::Path,
    socket: &std::path::Path,
    metrics: SocketAddr,
    listen: SocketAddr,
    upstream: &std::path::Path,
    marker: &str,
    tls: Option<(SocketAddr, &BenchCert)>,
    workers: Option<usize>,
) -> String {
    let workers = workers.map_or(String::new(), |n| format!("worker_threads = {n}\n"));
    let (proxy, edge) = match tls {
        None => (String::new(), String::new()),
        Some((https, cert)) => (
            format!("[proxy]\nhttps = [\"{https}\"]\n\n"),
            format!(
                "hosts = [{SERVER_NAME:?}]\ntls = {{ cert = {:?}, key = {:?} }}\n",
                cert.cert.display().to_string(),
                cert.key.display().to_string()
            ),
        ),
    };
    format!(
        "[agent]\nstate_dir = {state:?}\ncontrol_socket = {socket:?}\nmetrics_listen = \"{metrics}\"\n{workers}\n\
         [runtime]\nkind = \"process\"\n\n{proxy}\
         [services.bench]\nlisten = [\"{listen}\"]\ncommand = [{upstream:?}]\n{edge}\
         env = {{ BIND = \"127.0.0.1\", BG_BENCH_MARKER = \"{marker}\" }}\n",
    )
}

impl Drop for AgentHome {
    /// The replica outlives the agents: kill it by its marker.
    fn drop(&mut self) {
        for pid in crate::agent::processes_with_env(&format!("BG_BENCH_MARKER={}", self.marker)) {
            let _ =
                nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), nix::sys::signal::Signal::SIGKILL);
        }
    }
}

/// Whether one `GET /` through `addr` answers 200.
fn answers(addr: SocketAddr) -> bool {
    use std::io::{Read, Write};
    let Ok(mut s) = std::net::TcpStream::connect(addr) else { return false };
    let _ = s.set_read_timeout(Some(Duration::from_secs(2)));
    if s.write_all(b"GET / HTTP/1.1\r\nhost: bench\r\nconnection: close\r\n\r\n").is_err() {
        return false;
    }
    let mut buf = [0u8; 12];
    s.read_exact(&mut buf).is_ok() && buf.starts_with(b"HTTP/1.1 200")
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    fn config(tls: Option<(SocketAddr, &BenchCert)>, workers: Option<usize>) -> toml::Value {
        let text = agent_config(
            Path::new("/s"),
            Path::new("/s/agent.sock"),
            "127.0.0.1:9100".parse().unwrap(),
            "127.0.0.1:8080".parse().unwrap(),
            Path::new("/bin/bench-upstream"),
            "bench-1",
            tls,
            workers,
        );
        // What the agent itself makes of it, checks and all.
        let parsed = bg_agent::config::Config::parse(&text, Path::new("agent.toml"))
            .unwrap_or_else(|e| panic!("bg-agent refuses the config: {e}:\n{text}"));
        assert_eq!(parsed.proxy.https, tls.map(|t| t.0).into_iter().collect::<Vec<_>>(), "{text}");
        assert_eq!(parsed.services["bench"].edge.is_some(), tls.is_some(), "{text}");
        toml::from_str(&text).unwrap_or_else(|e| panic!("{e}:\n{text}"))
    }

    #[test]
    fn the_https_edge_serves_the_bench_certificate_for_its_name() {
        let cert = BenchCert::new();
        let c = config(Some(("127.0.0.1:8443".parse().unwrap(), &cert)), Some(2));
        assert_eq!(c["agent"]["worker_threads"].as_integer(), Some(2), "{c}");
        assert_eq!(c["proxy"]["https"][0].as_str(), Some("127.0.0.1:8443"), "{c}");
        let svc = &c["services"]["bench"];
        assert_eq!(svc["listen"][0].as_str(), Some("127.0.0.1:8080"), "{c}");
        assert_eq!(svc["hosts"][0].as_str(), Some(SERVER_NAME), "{c}");
        assert_eq!(svc["tls"]["cert"].as_str(), cert.cert.to_str(), "{c}");
        assert_eq!(svc["tls"]["key"].as_str(), cert.key.to_str(), "{c}");
        assert_eq!(svc["env"]["BG_BENCH_MARKER"].as_str(), Some("bench-1"), "{c}");

        let plain = config(None, None);
        assert!(plain.get("proxy").is_none() && plain["services"]["bench"].get("hosts").is_none(), "{plain}");
        assert!(plain["agent"].get("worker_threads").is_none(), "{plain}");
    }
}
