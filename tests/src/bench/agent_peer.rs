//! `bg-agent` as users run it, as a peer of the product setting: the
//! release binary started from a generated config (process runtime, the
//! metrics listener on, default health checks), unpinned, with
//! `bench-upstream` as its one replica. The replica outlives each agent
//! (as replicas do), so every load shape starts a fresh agent that adopts
//! it, and the other peers are pointed at the same replica.

use super::peers::Tools;
use super::procs::free_addr;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

/// The agent's config, state and replica, prepared once per run.
pub struct AgentHome {
    dir: tempfile::TempDir,
    /// Where the agent's proxy listens.
    pub listen: SocketAddr,
    /// The replica: the upstream of every peer in this setting.
    pub upstream: SocketAddr,
    marker: String,
}

impl AgentHome {
    /// Write the config, start the agent once (it deploys `bench-upstream`
    /// as its replica by itself: first start), and stop it again (the
    /// replica runs on).
    pub async fn prepare(tools: &Tools) -> AgentHome {
        let dir = tempfile::Builder::new().prefix("bg-bench-agent-").tempdir().expect("temp dir");
        let listen = free_addr();
        let metrics = free_addr();
        let marker = format!("bench-{}", std::process::id());
        let config = format!(
            "[agent]\nstate_dir = {state:?}\ncontrol_socket = {sock:?}\nmetrics_listen = \"{metrics}\"\n\n\
             [runtime]\nkind = \"process\"\n\n\
             [services.bench]\nlisten = [\"{listen}\"]\ncommand = [{upstream:?}]\n\
             env = {{ BIND = \"127.0.0.1\", BG_BENCH_MARKER = \"{marker}\" }}\n",
            state = dir.path().join("state"),
            sock = dir.path().join("agent.sock"),
            upstream = tools.upstream,
        );
        std::fs::write(dir.path().join("agent.toml"), config).expect("write agent.toml");
        let mut home = AgentHome { dir, listen, upstream: listen, marker };
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
