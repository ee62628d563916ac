//! A single-node Swarm for tests, on the machine's own engine, left as it
//! was found: when the engine was in no swarm, the first [`SwarmGuard`]
//! runs `docker swarm init` and the last one dropped (also when a test
//! panics) runs `docker swarm leave --force`; an engine that already was
//! in a swarm is never made to leave it. Each guard owns a task network
//! (a swarm-scoped bridge network, reachable from this host) that it
//! removes when dropped.
//!
//! With `BG_DOCKER_TESTS=1` a missing engine, or one that cannot init a
//! swarm, fails the test; without it the test says why it does not run.

use std::process::{Command, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Guards alive, and whether this process initialized the swarm.
static SWARM: Mutex<(usize, bool)> = Mutex::new((0, false));

/// The swarm (shared by the tests of this process) and one task network.
#[derive(Debug)]
pub struct SwarmGuard {
    network: String,
}

fn docker(args: &[&str]) -> Result<String, String> {
    let out = Command::new("docker").args(args).output().map_err(|e| format!("docker {args:?}: {e}"))?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
    } else {
        Err(format!("docker {args:?}: {}", String::from_utf8_lossy(&out.stderr).trim()))
    }
}

impl SwarmGuard {
    /// Join (or make) the swarm and create a task network named after
    /// `test`; `None` when Docker tests do not run here. The websample
    /// images `tags` are built when missing.
    pub fn acquire(test: &str, tags: &[&str]) -> Option<SwarmGuard> {
        if !crate::docker::docker_with_images(test, tags) {
            return None;
        }
        {
            let mut swarm = SWARM.lock().unwrap_or_else(|p| p.into_inner());
            if swarm.0 == 0 {
                let state = docker(&["info", "--format", "{{.Swarm.LocalNodeState}}"])
                    .unwrap_or_else(|e| panic!("{test}: {e}"));
                match state.as_str() {
                    "active" => swarm.1 = false,
                    "inactive" => {
                        docker(&["swarm", "init", "--advertise-addr", "127.0.0.1"])
                            .unwrap_or_else(|e| panic!("{test}: cannot make a single-node swarm: {e}"));
                        swarm.1 = true;
                    }
                    other => panic!("{test}: the engine's swarm is {other:?}, neither active nor inactive"),
                }
            }
            swarm.0 += 1;
        }
        let network = format!("bgt-{}", crate::agent::unique_service("tasks"));
        let guard = SwarmGuard { network };
        docker(&[
            "network",
            "create",
            "--driver",
            "bridge",
            "--scope",
            "swarm",
            "--label",
            "bg.test=1",
            &guard.network,
        ])
        .unwrap_or_else(|e| panic!("{test}: {e}"));
        Some(guard)
    }

    /// The task network's name (`[runtime] task_network`).
    pub fn network(&self) -> &str {
        &self.network
    }
}

impl Drop for SwarmGuard {
    fn drop(&mut self) {
        // The network goes once no task container is attached any more.
        let deadline = Instant::now() + Duration::from_secs(30);
        while docker(&["network", "rm", &self.network]).is_err_and(|e| !e.contains("not found")) {
            if Instant::now() >= deadline {
                eprintln!("could not remove test network {}", self.network);
                break;
            }
            std::thread::sleep(Duration::from_millis(200));
        }
        let mut swarm = SWARM.lock().unwrap_or_else(|p| p.into_inner());
        swarm.0 -= 1;
        if swarm.0 == 0 && swarm.1 {
            if let Err(e) = docker(&["swarm", "leave", "--force"]) {
                eprintln!("could not leave the test swarm: {e}");
            }
            swarm.1 = false;
        }
    }
}

/// The Swarm services of `service` (`bg-<service>-<color>`), by name.
pub fn services(service: &str) -> Vec<String> {
    docker(&["service", "ls", "--format", "{{.Name}}", "--filter", &format!("label=bg.service={service}")])
        .map(|s| s.lines().map(String::from).collect())
        .unwrap_or_default()
}

/// A label of a Swarm service, `None` when it has none (or no service).
pub fn service_label(name: &str, label: &str) -> Option<String> {
    docker(&["service", "inspect", "--format", &format!("{{{{index .Spec.Labels {label:?}}}}}"), name])
        .ok()
        .filter(|v| !v.is_empty() && v != "<no value>")
}

/// The running task containers of a Swarm service.
pub fn task_containers(name: &str) -> Vec<String> {
    docker(&["ps", "-q", "--filter", &format!("label=com.docker.swarm.service.name={name}")])
        .map(|s| s.lines().map(String::from).collect())
        .unwrap_or_default()
}

/// Remove what the agent made for `service`: its Swarm services, then its
/// secrets and configs; waits (up to 30 s) for the task containers to go.
pub fn remove_swarm_objects(service: &str) {
    let names = services(service);
    if !names.is_empty() {
        let mut args = vec!["service", "rm"];
        args.extend(names.iter().map(String::as_str));
        let _ = Command::new("docker").args(&args).stdout(Stdio::null()).stderr(Stdio::null()).status();
    }
    let deadline = Instant::now() + Duration::from_secs(30);
    let label = format!("label=bg.service={service}");
    while docker(&["ps", "-aq", "--filter", &label]).is_ok_and(|s| !s.is_empty()) && Instant::now() < deadline
    {
        std::thread::sleep(Duration::from_millis(200));
    }
    for kind in ["secret", "config"] {
        if let Ok(ids) = docker(&[kind, "ls", "-q", "--filter", &label]) {
            for id in ids.lines() {
                let _ = docker(&[kind, "rm", id]);
            }
        }
    }
}

/// Every label of a Swarm service (empty when there is no service).
pub fn service_labels(name: &str) -> std::collections::BTreeMap<String, String> {
    docker(&["service", "inspect", "--format", "{{json .Spec.Labels}}", name])
        .ok()
        .and_then(|s| serde_json::from_str(&s).ok())
        .unwrap_or_default()
}

/// The agents' acknowledgements on a Swarm service: `bg.seen.<agent id>`
/// to the traffic sequence each serves.
pub fn acks(name: &str) -> std::collections::BTreeMap<String, u64> {
    service_labels(name)
        .into_iter()
        .filter_map(|(k, v)| {
            let id = k.strip_prefix("bg.seen.")?.to_string();
            Some((id, v.split_once('@')?.0.parse().ok()?))
        })
        .collect()
}
