//! The swarm runtime: each color of a service is a Swarm service
//! `bg-<service>-<color>` (`service`), with `replicas` tasks that Swarm
//! places and reschedules; replica N of a color is the task in slot N
//! (`tasks`). The agent talks to a Swarm manager through bollard, and the
//! proxy forwards to each task's own address on `[runtime] task_network`,
//! never through Swarm's ingress VIP, so in-flight counts, drains and
//! health checks stay per task. A task Swarm replaces (killed, its node
//! lost) is a replica that exited: the controller's healer takes the new
//! task of that slot, which joins the rotation through its health checks.
//!
//! Stopping a replica lowers the service's task count by one (Swarm
//! chooses which task goes, which is why only whole, drained colors are
//! stopped: the runtime has no per-replica specs, see
//! [`Runtime::per_replica_specs`]); removing the last one removes the
//! service and the secrets and configs (`objects`) nobody uses any more.
//!
//! The traffic (active color, weights) is written into the colors'
//! service labels (`labels`) by one label keeper task fed through a
//! channel (`writer`), so a restarted agent, or one on another node, reads
//! back what is served. The keeper also follows the labels while the agent
//! runs (other agents' changes go to the controllers), writes this agent's
//! acknowledgement `bg.seen.<agent id>`, and tells a switch when every live
//! agent serves it.

mod labels;
mod objects;
mod service;
mod tasks;
mod writer;

use super::docker::{is_status, DockerRuntime};
use super::{
    labels as bg_labels, replica_name, BoxFuture, OneOff, Output, Progress, PullPolicy, ReplicaHandle,
    ReplicaSpec, RunState, Runtime, RuntimeError, StopReport, Traffic,
};
use crate::api::{Color, Spec};
use bollard::models::{NetworkCreateRequest, Service, Task, TaskState};
use bollard::query_parameters::{
    InspectNetworkOptions, InspectServiceOptions, ListServicesOptions, ListTasksOptions, UpdateServiceOptions,
};
use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

pub use service::service_name;

/// Longest wait for the task of a slot to run after its service was
/// created or scaled (2 minutes): Swarm may still be pulling or placing.
const START_TIMEOUT: Duration = Duration::from_secs(120);
/// How often tasks are polled while waiting for one to start or stop.
const POLL: Duration = Duration::from_millis(200);
/// Extra time a stop may take beyond its grace, for Swarm to kill and reap.
const STOP_SLACK: Duration = Duration::from_secs(30);
/// Tries of an update that lost a race with another update of the same
/// service (Swarm refuses an update of an outdated version).
const UPDATE_TRIES: u32 = 10;

/// Swarm services through a manager's API. Cheap to share behind an `Arc`.
pub struct SwarmRuntime {
    /// The engine (a Swarm manager): the image, source and log handling is
    /// the docker runtime's.
    docker: DockerRuntime,
    /// `[runtime] task_network`.
    task_network: String,
    /// The traffic writer's inbox.
    traffic: writer::Inbox,
}

impl std::fmt::Debug for SwarmRuntime {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SwarmRuntime").field("task_network", &self.task_network).finish()
    }
}

impl SwarmRuntime {
    /// A runtime on `docker` (which must be a Swarm manager: see
    /// [`SwarmRuntime::ping`]) reaching tasks on `task_network`. Its traffic
    /// writer runs on `tracker` until `shutdown`, then writes what is left.
    /// `writer` is a second client of the same engine, for the label
    /// keeper task. `agent_key` tells this agent from others on its node
    /// (the daemon passes a hash of its state directory); a traffic change
    /// waits up to `ack_timeout` for the other agents (docs/swarm.md).
    pub fn new(
        docker: DockerRuntime,
        writer: DockerRuntime,
        task_network: String,
        agent_key: String,
        ack_timeout: Duration,
        tracker: &TaskTracker,
        shutdown: CancellationToken,
    ) -> SwarmRuntime {
        let (inbox, rx) = writer::inbox();
        tracker.spawn(writer::Writer::new(writer, rx, agent_key, ack_timeout).run(shutdown));
        SwarmRuntime { docker, task_network, traffic: inbox }
    }

    /// Check that the engine answers and is a Swarm manager, and that the
    /// task network exists (it is created, swarm-scoped bridge, when not).
    pub async fn ping(&self) -> Result<(), RuntimeError> {
        self.docker.ping().await?;
        let docker = self.docker.client().await?;
        if let Err(e) = docker.inspect_swarm().await {
            return Err(RuntimeError::Docker {
                message: format!(
                    "the engine is no Swarm manager ({}): run `docker swarm init` (or `join` as a manager), or point docker_host at a manager",
                    self.docker.err("inspecting the swarm", e)
                ),
                source: None,
            });
        }
        self.ensure_network().await
    }

    /// The task network exists; a missing one is created as a swarm-scoped
    /// bridge network (reachable from this host; see docs/swarm.md).
    async fn ensure_network(&self) -> Result<(), RuntimeError> {
        let docker = self.docker.client().await?;
        let name = &self.task_network;
        match docker.inspect_network(name, None::<InspectNetworkOptions>).await {
            Ok(_) => return Ok(()),
            Err(e) if is_status(&e, 404) => {}
            Err(e) => return Err(self.docker.err(&format!("inspecting network {name}"), e)),
        }
        let request = NetworkCreateRequest {
            name: name.clone(),
            driver: Some("bridge".into()),
            scope: Some("swarm".into()),
            labels: Some(HashMap::from([(bg_labels::MANAGED.to_string(), "true".to_string())])),
            ..Default::default()
        };
        match docker.create_network(request).await {
            Ok(_) => {
                tracing::info!(network = %name, "created the task network (swarm-scoped bridge)");
                Ok(())
            }
            Err(e) if is_status(&e, 409) => Ok(()),
            Err(e) => Err(self.docker.err(&format!("creating the task network {name}"), e)),
        }
    }

    async fn inspect_service(&self, name: &str) -> Result<Option<Service>, RuntimeError> {
        let docker = self.docker.client().await?;
        match docker.inspect_service(name, None::<InspectServiceOptions>).await {
            Ok(s) => Ok(Some(s)),
            Err(e) if is_status(&e, 404) => Ok(None),
            Err(e) => Err(self.docker.err(&format!("inspecting service {name}"), e)),
        }
    }

    /// The tasks of service `id` Swarm still knows, of any state.
    async fn tasks_of(&self, id: &str) -> Result<Vec<Task>, RuntimeError> {
        let docker = self.docker.client().await?;
        let filters = HashMap::from([("service".to_string(), vec![id.to_string()])]);
        docker
            .list_tasks(Some(ListTasksOptions { filters: Some(filters) }))
            .await
            .map_err(|e| self.docker.err(&format!("listing the tasks of service {id}"), e))
    }

    /// Change a service's spec with `change` ([`update_service`]).
    async fn update_service(
        &self,
        name: &str,
        change: impl FnMut(&mut bollard::models::ServiceSpec),
    ) -> Result<bool, RuntimeError> {
        update_service(&self.docker, name, change).await
    }

    /// The color's service runs `replica`'s revision with at least
    /// `replica.replica` tasks: created, scaled up, or replaced when it
    /// runs another revision (a leftover). Returns the service's id.
    async fn ensure_service(&self, replica: &ReplicaSpec, image: &str) -> Result<String, RuntimeError> {
        let name = service_name(&replica.service, replica.color);
        let docker = self.docker.client().await?;
        for _ in 0..UPDATE_TRIES {
            if let Some(existing) = self.inspect_service(&name).await? {
                let id = existing.id.clone().unwrap_or_default();
                let spec = existing.spec.clone().unwrap_or_default();
                let revision = spec.labels.as_ref().and_then(|l| l.get(bg_labels::REVISION)).cloned();
                if revision.as_deref() == Some(replica.revision.to_string().as_str()) {
                    if service::replicas_of(&spec) < replica.replica {
                        let wanted = replica.replica;
                        self.update_service(&id, |s| {
                            if service::replicas_of(s) < wanted {
                                service::set_replicas(s, wanted)
                            }
                        })
                        .await?;
                    }
                    return Ok(id);
                }
                tracing::warn!(service = %name, ?revision, wanted = replica.revision, "removing a leftover Swarm service of another revision");
                match docker.delete_service(&id).await {
                    Ok(()) => {}
                    Err(e) if is_status(&e, 404) => {}
                    Err(e) => return Err(self.docker.err(&format!("removing service {name}"), e)),
                }
                continue;
            }
            let env = self.docker.sources().env_of(&replica.spec)?;
            let (secrets, configs) = self.objects(&replica.service, &replica.spec).await?;
            let parts = service::Parts {
                image,
                env: &env,
                task_network: &self.task_network,
                secrets: &secrets,
                configs: &configs,
            };
            let mut spec = service::service_spec(replica, &parts);
            // The new color's service carries the traffic its sibling
            // holds, so every service of the app tells the same.
            let sibling =
                self.inspect_service(&service_name(&replica.service, replica.color.other())).await?;
            if let Some((seq, traffic)) =
                sibling.and_then(|s| s.spec).and_then(|s| s.labels).as_ref().and_then(labels::traffic_of)
            {
                labels::put_traffic(spec.labels.get_or_insert_with(HashMap::new), traffic, seq);
            }
            match docker.create_service(spec, None).await {
                Ok(created) => {
                    for w in created.warnings.unwrap_or_default() {
                        tracing::warn!(service = %name, warning = %w, "swarm create warning");
                    }
                    return Ok(created.id.unwrap_or_default());
                }
                // Another replica's start created it first: use that one.
                Err(e) if is_status(&e, 409) => continue,
                Err(e) => return Err(self.docker.err(&format!("creating service {name}"), e)),
            }
        }
        Err(RuntimeError::Docker {
            message: format!("service {name} kept changing while it was being created; try again"),
            source: None,
        })
    }

    async fn start_task(&self, replica: &ReplicaSpec) -> Result<ReplicaHandle, RuntimeError> {
        let Some(image) = replica.spec.pinned_image().filter(|i| !i.trim().is_empty()) else {
            return Err(RuntimeError::InvalidSpec(
                "the swarm runtime needs an image, e.g. \"websample:v1\"".into(),
            ));
        };
        self.ensure_network().await?;
        let id = self.ensure_service(replica, &image).await?;
        let name = service_name(&replica.service, replica.color);
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            let all = self.tasks_of(&id).await?;
            // A task runs before it has an address the agent sees (a task on
            // another node appears in the network's view a moment later).
            let mut unreached = None;
            if let Some(task) = tasks::running_in_slot(&all, replica.replica) {
                match self.task_addr(task, replica.app_port).await? {
                    Some(addr) => return Ok(handle(replica, task, addr)),
                    None => unreached = Some(self.no_address(task)),
                }
            }
            if Instant::now() >= deadline {
                let why = match unreached {
                    Some(why) => format!("; {why}"),
                    None => tasks::failure_in_slot(&all, replica.replica)
                        .map(|w| format!("; its last task failed: {w}"))
                        .unwrap_or_default(),
                };
                return Err(RuntimeError::Docker {
                    message: format!(
                        "no task of service {name} ran in slot {} within {}s{why} (docker service ps {name})",
                        replica.replica,
                        START_TIMEOUT.as_secs()
                    ),
                    source: None,
                });
            }
            tokio::time::sleep(POLL).await;
        }
    }

    /// Where the proxy reaches `task` on the task network: its container's
    /// address when it runs on this agent's node (its engine knows the
    /// container), else the address Swarm records for it in the network's
    /// verbose view, which holds the tasks of every node on an overlay
    /// this agent is attached to (docs/swarm.md, "Reaching tasks");
    /// `None` while it has none the agent sees.
    async fn task_addr(&self, task: &Task, port: u16) -> Result<Option<SocketAddr>, RuntimeError> {
        let Some(container) = tasks::container_of(task) else { return Ok(None) };
        let ip = match self.docker.inspect(container).await? {
            Some(inspected) => inspected
                .network_settings
                .and_then(|n| n.networks)
                .and_then(|mut n| n.remove(&self.task_network))
                .and_then(|e| e.ip_address)
                .and_then(|ip| ip.parse::<IpAddr>().ok()),
            None => self.addr_from_network(task).await?,
        };
        Ok(ip.map(|ip| SocketAddr::new(ip, port)))
    }

    /// Why `task` is not reached (its address is not seen).
    fn no_address(&self, task: &Task) -> String {
        format!(
            "task {} (node {}) has no address on network {} that this agent sees: a task on another node is reached only through an overlay task network the agent is attached to (docs/swarm.md)",
            task.id.as_deref().unwrap_or("?"),
            task.node_id.as_deref().unwrap_or("?"),
            self.task_network
        )
    }

    /// The address of a task on another node, from the task network's
    /// verbose view on this manager.
    async fn addr_from_network(&self, task: &Task) -> Result<Option<IpAddr>, RuntimeError> {
        let Some(service_id) = task.service_id.as_deref() else { return Ok(None) };
        let docker = self.docker.client().await?;
        let service = match docker.inspect_service(service_id, None::<InspectServiceOptions>).await {
            Ok(s) => s,
            Err(e) if is_status(&e, 404) => return Ok(None),
            Err(e) => return Err(self.docker.err(&format!("inspecting service {service_id}"), e)),
        };
        let Some(name) = service.spec.and_then(|s| s.name) else { return Ok(None) };
        let options = InspectNetworkOptions { verbose: true, ..Default::default() };
        let network = docker
            .inspect_network(&self.task_network, Some(options))
            .await
            .map_err(|e| self.docker.err(&format!("inspecting network {}", self.task_network), e))?;
        Ok(network.services.and_then(|view| {
            tasks::addr_in_network_view(&view, &name, task.id.as_deref().unwrap_or_default())
        }))
    }

    async fn inspect_task(&self, id: &str) -> Result<Option<Task>, RuntimeError> {
        let docker = self.docker.client().await?;
        match docker.inspect_task(id).await {
            Ok(t) => Ok(Some(t)),
            Err(e) if is_status(&e, 404) => Ok(None),
            Err(e) => Err(self.docker.err(&format!("inspecting task {id}"), e)),
        }
    }

    async fn stop_task(&self, replica: &ReplicaHandle, grace: Duration) -> Result<StopReport, RuntimeError> {
        // A task that ended by itself (crashed, exited) is stopped. One
        // Swarm shut down (or already deleted, as it does with the tasks a
        // lower count removes) is another matter: lowering the count for a
        // sibling's stop made Swarm pick this one, so the count still owes
        // this replica's stop (Swarm picks which task goes).
        let task = self.inspect_task(&replica.runtime_id).await?;
        if let Some(t) = &task {
            if !matches!(tasks::run_state(t), RunState::Running { .. }) && !tasks::shut_down_by_swarm(t) {
                return Ok(StopReport {
                    killed: false,
                    elapsed: Duration::ZERO,
                    exit_code: tasks::exit_code(t),
                });
            }
        }
        let name = service_name(&replica.service, replica.color);
        let started = Instant::now();
        let mut wanted = 0;
        let exists = self
            .update_service(&name, |s| {
                wanted = service::replicas_of(s).saturating_sub(1);
                service::set_replicas(s, wanted)
            })
            .await?;
        if !exists {
            return Ok(StopReport { killed: false, elapsed: Duration::ZERO, exit_code: None });
        }
        // Swarm stops one task with the service's stop signal and grace;
        // wait until no more than `wanted` tasks still run (a task being
        // shut down runs until its container exits).
        let service_id = name.clone();
        let deadline = started + grace + STOP_SLACK;
        loop {
            let running = self
                .tasks_of(&service_id)
                .await?
                .iter()
                .filter(|t| t.status.as_ref().and_then(|s| s.state) == Some(TaskState::RUNNING))
                .count();
            if running <= wanted as usize || Instant::now() >= deadline {
                break;
            }
            tokio::time::sleep(POLL).await;
        }
        let elapsed = started.elapsed();
        let exit_code = self.inspect_task(&replica.runtime_id).await?.and_then(|t| tasks::exit_code(&t));
        Ok(StopReport { killed: exit_code == Some(137) || elapsed >= grace, elapsed, exit_code })
    }

    /// Forget a replica: once its color's service asks for no task, the
    /// service goes, and the secrets and configs nobody uses any more.
    async fn remove_task(&self, replica: &ReplicaHandle) -> Result<(), RuntimeError> {
        let name = service_name(&replica.service, replica.color);
        let Some(existing) = self.inspect_service(&name).await? else { return Ok(()) };
        if service::replicas_of(&existing.spec.unwrap_or_default()) > 0 {
            // Swarm keeps (and prunes) its own task history.
            return Ok(());
        }
        let docker = self.docker.client().await?;
        match docker.delete_service(&name).await {
            Ok(()) => {}
            Err(e) if is_status(&e, 404) => {}
            Err(e) => return Err(self.docker.err(&format!("removing service {name}"), e)),
        }
        self.prune_objects(&replica.service).await
    }

    /// The colors' services of `service` (all managed services when `None`).
    async fn services(&self, service: Option<&str>) -> Result<Vec<Service>, RuntimeError> {
        let docker = self.docker.client().await?;
        let mut label_filters = vec![format!("{}=true", bg_labels::MANAGED)];
        if let Some(s) = service {
            label_filters.push(format!("{}={s}", bg_labels::SERVICE));
        }
        let options = ListServicesOptions {
            filters: Some(HashMap::from([("label".to_string(), label_filters)])),
            ..Default::default()
        };
        docker.list_services(Some(options)).await.map_err(|e| self.docker.err("listing services", e))
    }

    async fn list_tasks(&self, service: Option<&str>) -> Result<Vec<ReplicaHandle>, RuntimeError> {
        let mut out = Vec::new();
        for svc in self.services(service).await? {
            let spec = svc.spec.clone().unwrap_or_default();
            let l = spec.labels.clone().unwrap_or_default();
            let parsed = (|| {
                Some((
                    l.get(bg_labels::SERVICE)?.clone(),
                    l.get(bg_labels::COLOR)?.parse::<Color>().ok()?,
                    l.get(bg_labels::REVISION)?.parse::<u64>().ok()?,
                    l.get(labels::APP_PORT)?.parse::<u16>().ok()?,
                ))
            })();
            let Some((name, color, revision, port)) = parsed else {
                tracing::warn!(service = ?spec.name, "managed Swarm service with incomplete bg.* labels; ignoring it");
                continue;
            };
            let all = self.tasks_of(svc.id.as_deref().unwrap_or_default()).await?;
            for slot in all.iter().filter_map(tasks::slot_of).collect::<std::collections::BTreeSet<_>>() {
                let Some(task) = tasks::running_in_slot(&all, slot) else { continue };
                let addr = match self.task_addr(task, port).await {
                    Ok(Some(a)) => a,
                    Ok(None) => {
                        let why = self.no_address(task);
                        tracing::warn!(service = %name, %color, slot, %why, "cannot reach a task; leaving it out");
                        continue;
                    }
                    Err(e) => {
                        tracing::warn!(service = %name, %color, slot, error = %e, "cannot reach a task; leaving it out");
                        continue;
                    }
                };
                out.push(ReplicaHandle {
                    runtime_id: task.id.clone().unwrap_or_default(),
                    name: replica_name(&name, color, slot),
                    service: name.clone(),
                    color,
                    revision,
                    replica: slot,
                    addr,
                });
            }
        }
        out.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(out)
    }

    async fn task_state(&self, replica: &ReplicaHandle) -> Result<RunState, RuntimeError> {
        Ok(match self.inspect_task(&replica.runtime_id).await? {
            Some(t) => tasks::run_state(&t),
            None => RunState::Gone,
        })
    }

    async fn task_logs(&self, replica: &ReplicaHandle, lines: usize) -> Result<String, RuntimeError> {
        let task = self
            .inspect_task(&replica.runtime_id)
            .await?
            .ok_or_else(|| RuntimeError::NotFound(replica.name.clone()))?;
        let Some(container) = tasks::container_of(&task) else { return Ok(String::new()) };
        match self.docker.container_logs(container, lines).await {
            Err(RuntimeError::NotFound(_)) => Err(RuntimeError::NotFound(replica.name.clone())),
            other => other,
        }
    }

    async fn read_traffic(&self, service: &str) -> Result<Option<Traffic>, RuntimeError> {
        let services = self.services(Some(service)).await?;
        let all: Vec<HashMap<String, String>> =
            services.into_iter().filter_map(|s| s.spec.and_then(|s| s.labels)).collect();
        Ok(labels::newest(&all))
    }

    async fn prepare_spec(
        &self,
        spec: &Spec,
        pull: PullPolicy,
        progress: Progress<'_>,
    ) -> Result<Spec, RuntimeError> {
        self.ensure_network().await?;
        // The image, networks and sources as the docker runtime readies
        // them. A local image has no repo digest: its tag is what every
        // node runs then (docs/swarm.md).
        self.docker.prepare_spec(spec, pull, progress).await
    }
}

/// Change service `name`'s spec with `change`, retrying when another
/// update of it came first (Swarm refuses an update of an outdated
/// version). `Ok(false)`: the service is gone.
async fn update_service(
    engine: &DockerRuntime,
    name: &str,
    mut change: impl FnMut(&mut bollard::models::ServiceSpec),
) -> Result<bool, RuntimeError> {
    let docker = engine.client().await?;
    let mut tries = 0;
    loop {
        let current = match docker.inspect_service(name, None::<InspectServiceOptions>).await {
            Ok(s) => s,
            Err(e) if is_status(&e, 404) => return Ok(false),
            Err(e) => return Err(engine.err(&format!("inspecting service {name}"), e)),
        };
        let version = current.version.and_then(|v| v.index).unwrap_or(0);
        let mut spec = current.spec.unwrap_or_default();
        change(&mut spec);
        let options = UpdateServiceOptions {
            version: i32::try_from(version).unwrap_or(i32::MAX),
            ..Default::default()
        };
        match docker.update_service(name, spec, options, None).await {
            Ok(_) => return Ok(true),
            Err(e) if is_status(&e, 404) => return Ok(false),
            Err(e) if tries + 1 < UPDATE_TRIES && (is_status(&e, 500) || is_status(&e, 409)) => {
                // "update out of sequence": another update won; again on
                // the new version.
                tries += 1;
                tokio::time::sleep(POLL).await;
            }
            Err(e) => return Err(engine.err(&format!("updating service {name}"), e)),
        }
    }
}

/// The handle of the task running `replica`'s slot.
fn handle(replica: &ReplicaSpec, task: &Task, addr: SocketAddr) -> ReplicaHandle {
    ReplicaHandle {
        runtime_id: task.id.clone().unwrap_or_default(),
        name: replica.name(),
        service: replica.service.clone(),
        color: replica.color,
        revision: replica.revision,
        replica: replica.replica,
        addr,
    }
}

impl Runtime for SwarmRuntime {
    fn kind(&self) -> &'static str {
        "swarm"
    }

    fn per_replica_specs(&self) -> bool {
        false
    }

    fn traffic_changed(&self, service: &str, traffic: Traffic) {
        self.traffic.set(service, traffic);
    }

    fn follow_traffic(&self, service: &str) -> Option<tokio::sync::watch::Receiver<Option<(u64, Traffic)>>> {
        Some(self.traffic.follow(service))
    }

    fn traffic_served(&self, service: &str, seq: u64) {
        self.traffic.served(service, seq);
    }

    fn traffic_settled<'a>(&'a self, service: &'a str) -> BoxFuture<'a, Vec<String>> {
        Box::pin(self.traffic.settle(service))
    }

    fn traffic<'a>(&'a self, service: &'a str) -> BoxFuture<'a, Result<Option<Traffic>, RuntimeError>> {
        Box::pin(self.read_traffic(service))
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
        Box::pin(self.start_task(spec))
    }

    fn stop<'a>(
        &'a self,
        replica: &'a ReplicaHandle,
        signal: &'a str,
        grace: Duration,
    ) -> BoxFuture<'a, Result<StopReport, RuntimeError>> {
        // Swarm stops a task with the signal and grace of its service's
        // spec (the configured ones).
        let _ = signal;
        Box::pin(self.stop_task(replica, grace))
    }

    fn remove<'a>(&'a self, replica: &'a ReplicaHandle) -> BoxFuture<'a, Result<(), RuntimeError>> {
        Box::pin(self.remove_task(replica))
    }

    fn list<'a>(
        &'a self,
        service: Option<&'a str>,
    ) -> BoxFuture<'a, Result<Vec<ReplicaHandle>, RuntimeError>> {
        Box::pin(self.list_tasks(service))
    }

    fn state<'a>(&'a self, replica: &'a ReplicaHandle) -> BoxFuture<'a, Result<RunState, RuntimeError>> {
        Box::pin(self.task_state(replica))
    }

    fn logs<'a>(
        &'a self,
        replica: &'a ReplicaHandle,
        lines: usize,
    ) -> BoxFuture<'a, Result<String, RuntimeError>> {
        Box::pin(self.task_logs(replica, lines))
    }

    fn run_once<'a>(
        &'a self,
        job: &'a OneOff,
        output: Output<'a>,
        cancel: &'a CancellationToken,
    ) -> BoxFuture<'a, Result<Option<i64>, RuntimeError>> {
        // A one-off run is a plain container on the manager's engine.
        Box::pin(self.docker.run_oneoff(job, output, cancel))
    }
}
