//! A two-node Swarm for tests, without a registry: the machine's engine is
//! the manager, and a second Docker engine (`dockerd` from the same
//! package, its own data root, vfs storage) runs inside a network
//! namespace made by [`crate::netns`] as a worker with its own address.
//! The websample images are copied to it with `docker save | load`. The
//! color services join an attachable overlay network, the way several
//! nodes are run in docs/swarm.md; the agent runs in the network namespace
//! of a container attached to that overlay (its "holder"), so it reaches
//! the tasks of both nodes, and serves on the holder's address on a bridge
//! network the test makes.
//!
//! The engine must be in no swarm (it is made to leave at the end, and
//! `docker_gwbridge` is removed when the swarm made it). Everything is
//! removed on drop, also when the test fails. Needs root, iproute2 and
//! `dockerd`; with `BG_DOCKER_TESTS=1` a missing part fails the test.

use crate::netns::Net;
use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

fn run(program: &str, args: &[&str]) -> Result<String, String> {
    let out = Command::new(program).args(args).output().map_err(|e| format!("{program} {args:?}: {e}"))?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
    } else {
        Err(format!("{program} {args:?}: {}", String::from_utf8_lossy(&out.stderr).trim()))
    }
}

fn docker(args: &[&str]) -> Result<String, String> {
    run("docker", args)
}

/// The manager (this machine's engine) and one worker engine in a
/// namespace, an overlay task network and the agent's holder container.
pub struct TwoNodes {
    test: String,
    net: Net,
    worker_dir: tempfile::TempDir,
    worker: Option<Child>,
    gwbridge_was_there: bool,
    overlay: String,
    front: String,
    holder: String,
    holder_ns: String,
    holder_addr: Ipv4Addr,
    worker_id: String,
    manager_id: String,
}

impl TwoNodes {
    /// Build the two-node swarm; `None` when Docker tests do not run here.
    pub fn acquire(test: &str, tags: &[&str]) -> Option<TwoNodes> {
        if !crate::docker::docker_with_images(test, tags) || !crate::netns::available(test) {
            return None;
        }
        let fail = |e: String| -> ! { panic!("{test}: {e}") };
        let state = docker(&["info", "--format", "{{.Swarm.LocalNodeState}}"]).unwrap_or_else(|e| fail(e));
        assert_eq!(
            state, "inactive",
            "{test}: the engine must be in no swarm: this test makes its own two-node swarm and leaves it"
        );
        let gwbridge_was_there = docker(&["network", "inspect", "docker_gwbridge"]).is_ok();
        let net = Net::create(1);
        let unique = crate::agent::unique_service("n");
        let worker_dir = tempfile::Builder::new().prefix("bgsw-").tempdir_in("/tmp").expect("worker dir");
        let mut me = TwoNodes {
            test: test.to_string(),
            net,
            worker_dir,
            worker: None,
            gwbridge_was_there,
            overlay: format!("bgt-{unique}-ov"),
            front: format!("bgt-{unique}-front"),
            holder: format!("bgt-{unique}-agent"),
            holder_ns: format!("bgsw{}", std::process::id() % 100_000),
            holder_addr: Ipv4Addr::UNSPECIFIED,
            worker_id: String::new(),
            manager_id: String::new(),
        };
        me.start_worker_engine().unwrap_or_else(|e| fail(e));
        let manager_addr = me.manager_addr().to_string();
        docker(&["swarm", "init", "--advertise-addr", &manager_addr]).unwrap_or_else(|e| fail(e));
        let token = docker(&["swarm", "join-token", "-q", "worker"]).unwrap_or_else(|e| fail(e));
        let worker_addr = me.net.hosts[0].addr.to_string();
        me.worker_docker(&[
            "swarm",
            "join",
            "--token",
            &token,
            "--advertise-addr",
            &worker_addr,
            &format!("{manager_addr}:2377"),
        ])
        .unwrap_or_else(|e| fail(e));
        me.manager_id = docker(&["info", "--format", "{{.Swarm.NodeID}}"]).unwrap_or_else(|e| fail(e));
        me.worker_id =
            me.worker_docker(&["info", "--format", "{{.Swarm.NodeID}}"]).unwrap_or_else(|e| fail(e));
        me.copy_images(tags).unwrap_or_else(|e| fail(e));
        me.attach_holder().unwrap_or_else(|e| fail(e));
        Some(me)
    }

    fn manager_addr(&self) -> Ipv4Addr {
        let [a, b, c, _] = self.net.hosts[0].addr.octets();
        Ipv4Addr::new(a, b, c, 1)
    }

    fn worker_socket(&self) -> PathBuf {
        self.worker_dir.path().join("docker.sock")
    }

    /// Run `docker` against the worker's engine.
    pub fn worker_docker(&self, args: &[&str]) -> Result<String, String> {
        let host = format!("unix://{}", self.worker_socket().display());
        let mut all = vec!["-H", host.as_str()];
        all.extend_from_slice(args);
        docker(&all)
    }

    fn start_worker_engine(&mut self) -> Result<(), String> {
        let dir = self.worker_dir.path();
        // Its own config file: the machine's daemon.json names the
        // manager's data root and storage driver.
        std::fs::write(dir.join("daemon.json"), "{}").map_err(|e| e.to_string())?;
        let log = std::fs::File::create(dir.join("dockerd.log")).map_err(|e| e.to_string())?;
        let ns = format!("/var/run/netns/{}", self.net.hosts[0].ns);
        let child = Command::new("nsenter")
            .arg(format!("--net={ns}"))
            .arg("dockerd")
            .arg("--config-file")
            .arg(dir.join("daemon.json"))
            .arg("--data-root")
            .arg(dir.join("data"))
            .arg("--exec-root")
            .arg(dir.join("x"))
            .arg("--pidfile")
            .arg(dir.join("docker.pid"))
            .arg("--storage-driver")
            .arg("vfs")
            .arg("-H")
            .arg(format!("unix://{}", self.worker_socket().display()))
            .stdin(Stdio::null())
            .stdout(log.try_clone().map_err(|e| e.to_string())?)
            .stderr(log)
            .spawn()
            .map_err(|e| format!("starting the worker's dockerd (Debian's docker.io): {e}"))?;
        self.worker = Some(child);
        let deadline = Instant::now() + Duration::from_secs(60);
        while self.worker_docker(&["info", "--format", "{{.ServerVersion}}"]).is_err() {
            if Instant::now() >= deadline {
                return Err(format!(
                    "the worker's dockerd did not answer within 60 s:\n{}",
                    self.worker_log()
                ));
            }
            std::thread::sleep(Duration::from_millis(200));
        }
        Ok(())
    }

    /// The worker engine's log.
    pub fn worker_log(&self) -> String {
        std::fs::read_to_string(self.worker_dir.path().join("dockerd.log")).unwrap_or_default()
    }

    fn copy_images(&self, tags: &[&str]) -> Result<(), String> {
        let images: Vec<String> = tags.iter().map(|t| format!("websample:{t}")).collect();
        let mut save = Command::new("docker")
            .arg("save")
            .args(&images)
            .stdout(Stdio::piped())
            .spawn()
            .map_err(|e| format!("docker save: {e}"))?;
        let host = format!("unix://{}", self.worker_socket().display());
        let load = Command::new("docker")
            .args(["-H", &host, "load", "-q"])
            .stdin(save.stdout.take().expect("piped"))
            .output()
            .map_err(|e| format!("docker load: {e}"))?;
        let saved = save.wait().map_err(|e| e.to_string())?;
        if !saved.success() || !load.status.success() {
            return Err(format!(
                "copying {images:?} to the worker: {}",
                String::from_utf8_lossy(&load.stderr)
            ));
        }
        Ok(())
    }

    fn attach_holder(&mut self) -> Result<(), String> {
        docker(&[
            "network",
            "create",
            "--driver",
            "overlay",
            "--attachable",
            "--label",
            "bg.test=1",
            &self.overlay,
        ])?;
        // On a subnet in the test namespaces' range (beside this test's
        // namespace), so test traffic stays on addresses the test made.
        let [a, b, _, _] = self.net.hosts[0].addr.octets();
        let subnet = format!("{a}.{b}.200.0/24");
        docker(&[
            "network",
            "create",
            "--driver",
            "bridge",
            "--subnet",
            &subnet,
            "--label",
            "bg.test=1",
            &self.front,
        ])?;
        // Any long-running process does as the holder; websample, kept off
        // the ports the agent serves on.
        docker(&[
            "run",
            "-d",
            "--name",
            &self.holder,
            "--label",
            "bg.test=1",
            "--network",
            &self.overlay,
            "-e",
            "PORT=65000",
            "-e",
            "BIND=127.0.0.1",
            "websample:v1",
        ])?;
        docker(&["network", "connect", &self.front, &self.holder])?;
        let pid = docker(&["inspect", "--format", "{{.State.Pid}}", &self.holder])?;
        let addr = docker(&[
            "inspect",
            "--format",
            &format!("{{{{(index .NetworkSettings.Networks {:?}).IPAddress}}}}", self.front),
            &self.holder,
        ])?;
        self.holder_addr = addr.parse().map_err(|e| format!("holder address {addr:?}: {e}"))?;
        std::fs::create_dir_all("/var/run/netns").map_err(|e| e.to_string())?;
        let link = format!("/var/run/netns/{}", self.holder_ns);
        let _ = std::fs::remove_file(&link);
        std::os::unix::fs::symlink(format!("/proc/{pid}/ns/net"), &link).map_err(|e| e.to_string())?;
        Ok(())
    }

    /// The overlay network the color services join (`task_network`).
    pub fn overlay(&self) -> &str {
        &self.overlay
    }

    /// The network namespace (`ip netns` name) of the holder container
    /// and the address the agent serves on there.
    pub fn agent_netns(&self) -> (&str, Ipv4Addr) {
        (&self.holder_ns, self.holder_addr)
    }

    /// The manager's and the worker's Swarm node ids.
    pub fn node_ids(&self) -> (&str, &str) {
        (&self.manager_id, &self.worker_id)
    }

    /// The worker drops off the network: its link goes down, as when a
    /// host loses power or its cable. Its engine goes on, unreachable.
    pub fn cut_worker(&self) {
        self.net.cut(0);
    }

    /// The manager's view of the worker: `ready` or `down`.
    pub fn worker_state(&self) -> String {
        docker(&["node", "inspect", "--format", "{{.Status.State}}", &self.worker_id]).unwrap_or_default()
    }
}

/// The node each running task of a Swarm service runs on, by slot.
pub fn task_nodes(service: &str) -> Vec<(u32, String)> {
    let out = docker(&[
        "service",
        "ps",
        "--filter",
        "desired-state=running",
        "--format",
        "{{.Name}} {{.Node}} {{.ID}}",
        "--no-trunc",
        service,
    ])
    .unwrap_or_default();
    let mut slots: Vec<(u32, String)> = out
        .lines()
        .filter_map(|l| {
            let name = l.split_whitespace().next()?;
            let id = l.split_whitespace().nth(2)?;
            let slot = name.rsplit('.').next()?.parse().ok()?;
            let node = docker(&["inspect", "--type", "task", "--format", "{{.NodeID}}", id]).ok()?;
            Some((slot, node))
        })
        .collect();
    slots.sort();
    slots
}

impl Drop for TwoNodes {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(format!("/var/run/netns/{}", self.holder_ns));
        let _ = docker(&["rm", "-f", &self.holder]);
        let _ = docker(&["network", "rm", &self.front]);
        // The worker leaves by itself (it may be cut off), then stops with
        // its containers.
        let _ = self.worker_docker(&["swarm", "leave", "--force"]);
        if let Ok(ids) = self.worker_docker(&["ps", "-aq"]) {
            for id in ids.lines() {
                let _ = self.worker_docker(&["rm", "-f", id]);
            }
        }
        if let Some(mut child) = self.worker.take() {
            let _ = Command::new("kill").arg(child.id().to_string()).status();
            let deadline = Instant::now() + Duration::from_secs(20);
            while child.try_wait().ok().flatten().is_none() {
                if Instant::now() >= deadline {
                    let _ = child.kill();
                    let _ = child.wait();
                    break;
                }
                std::thread::sleep(Duration::from_millis(100));
            }
        }
        if let Err(e) = docker(&["swarm", "leave", "--force"]) {
            eprintln!("{}: could not leave the test swarm: {e}", self.test);
        }
        let deadline = Instant::now() + Duration::from_secs(20);
        while docker(&["network", "rm", &self.overlay]).is_err_and(|e| !e.contains("not found")) {
            if Instant::now() >= deadline {
                break;
            }
            std::thread::sleep(Duration::from_millis(200));
        }
        if !self.gwbridge_was_there {
            let _ = docker(&["network", "rm", "docker_gwbridge"]);
        }
        // vfs layers hold read-only directories of the worker's images.
        let _ = Command::new("rm").arg("-rf").arg(self.worker_dir.path()).status();
    }
}
