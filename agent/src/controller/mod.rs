//! The per-service controller: the model of a service (colors, replicas,
//! weights, the running operation), the operations that change it, and the
//! glue that keeps the proxy's route table and the state file in step with
//! it.
//!
//! Each service is an actor ([`actor`]): one task owns the model, admits
//! operations (one at a time; a second request is answered with a
//! conflict), and applies every change through one commit step. Operations
//! run as child tasks and change the model only through messages to it.
//! Status reads never wait: they read the snapshot the actor publishes.

mod actor;
mod follow;
mod heal;
mod hooks;
mod model;
mod oneoff;
mod ops;
mod plan;
mod recover;
mod replicas;
mod rolling;
#[cfg(test)]
mod tests;
mod traffic;

pub use crate::api::Operation;
pub use actor::HoldGuard;
pub use model::ServiceModel;
pub use oneoff::RunError;
pub use traffic::{TrafficChange, DEFAULT_PAUSE_MAX};

use actor::{Hold, Msg, OnFailedWrite};

use crate::api::{Color, EventKind, History, OperationAccepted, OperationKind, ServiceStatus};
use crate::config::ServiceConfig;
use crate::events::EventHub;
use crate::runtime::Runtime;
use crate::state::{PersistedState, ServiceRecord, StateError, StateStore};
use bg_proxy::Proxy;
use std::sync::{Arc, Mutex};
use tokio::sync::{mpsc, oneshot, watch};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// Why the controller refused or could not do what was asked. The control
/// API maps each variant to a status code.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ControlError {
    /// No such service (404).
    #[error("unknown service {0:?}")]
    UnknownService(String),
    /// No such replica (404).
    #[error("service {service} has no replica {replica:?}")]
    UnknownReplica {
        /// The service.
        service: String,
        /// The replica asked for.
        replica: String,
    },
    /// The request makes no sense now or is malformed (400).
    #[error("{0}")]
    BadRequest(String),
    /// Another operation runs (409).
    #[error("service {service} is busy with {running}; wait for it or abort it (bgctl abort {service})")]
    Conflict {
        /// The service.
        service: String,
        /// The running operation, described.
        running: String,
    },
    /// The request is valid but not supported by this build (501).
    #[error("{0}")]
    NotSupported(String),
}

/// What every controller shares: the runtime, the event hub, the state file
/// and the agent's shutdown token.
pub struct Shared {
    /// The runtime all services use.
    pub runtime: Arc<dyn Runtime>,
    /// Where events go.
    pub events: EventHub,
    /// The state file (and the operation ids, which it keeps).
    pub persister: Persister,
    /// Fires when the agent shuts down.
    pub shutdown: CancellationToken,
    /// Every task a controller spawns; the agent waits for them at shutdown.
    pub tasks: TaskTracker,
    /// How replicas are health-checked ([`crate::health::real_prober`]).
    pub prober: crate::health::Prober,
}

/// Writes one service's record into the shared state file.
///
/// Each service's records come from its actor, one at a time, so they
/// arrive in the order of the model changes they reflect.
pub struct Persister {
    store: StateStore,
    state: Mutex<PersistedState>,
}

impl Persister {
    /// A persister over `store`, starting from `state`. Operation ids
    /// continue after the highest one `state` knows of.
    pub fn new(store: StateStore, mut state: PersistedState) -> Persister {
        let in_history = state
            .services
            .values()
            .flat_map(|s| {
                s.history.iter().map(|h| h.outcome.operation).chain(s.operation.iter().map(|o| o.id))
            })
            .max()
            .unwrap_or(0);
        state.last_operation = state.last_operation.max(in_history);
        Persister { store, state: Mutex::new(state) }
    }

    /// The next operation id, unique across services and restarts once
    /// the next [`Persister::save`] has written it.
    fn next_op_id(&self) -> u64 {
        let mut state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        state.last_operation += 1;
        state.last_operation
    }

    /// Replace one service's record and write the whole file. When the
    /// write fails the record is put back as it was, so no later write of
    /// another service carries a change that was refused here.
    pub fn save(&self, service: &str, record: ServiceRecord) -> Result<(), StateError> {
        let mut state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        let before = state.services.insert(service.to_string(), record);
        let result = self.store.save(&state);
        if result.is_err() {
            match before {
                Some(b) => state.services.insert(service.to_string(), b),
                None => state.services.remove(service),
            };
        }
        result
    }

    /// The record of one service as last loaded or saved.
    pub fn record(&self, service: &str) -> Option<ServiceRecord> {
        self.state.lock().unwrap_or_else(|p| p.into_inner()).services.get(service).cloned()
    }

    /// Every service with a record.
    pub fn services(&self) -> Vec<String> {
        self.state.lock().unwrap_or_else(|p| p.into_inner()).services.keys().cloned().collect()
    }

    /// Drop `service`'s record (a service removed from the config).
    pub fn forget(&self, service: &str) -> Result<(), StateError> {
        let mut state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        let Some(before) = state.services.remove(service) else { return Ok(()) };
        let result = self.store.save(&state);
        if result.is_err() {
            state.services.insert(service.to_string(), before);
        }
        result
    }
}

/// One service's controller: a handle to the service's actor
/// ([`actor`]), which owns the model. Cheap to share (`Arc<Service>`).
pub struct Service {
    name: String,
    config: ServiceConfig,
    proxy: Proxy,
    shared: Arc<Shared>,
    /// The actor's mailbox.
    tx: mpsc::UnboundedSender<Msg>,
    /// The model as the actor last committed it.
    snapshot: watch::Receiver<Arc<ServiceModel>>,
    /// Wakes the healer ([`Service::heal`]) when a replica exits.
    heal_wake: tokio::sync::Notify,
}

/// A service's control-plane numbers for `/metrics`.
#[derive(Debug, Clone)]
pub struct ServiceMetrics {
    /// The active color.
    pub active: Option<Color>,
    /// The active revision.
    pub revision: Option<u64>,
    /// Every replica: color, number, health, state.
    pub replicas: Vec<(Color, u32, crate::api::Health, crate::api::ReplicaState)>,
    /// Ended operations: kind, outcome, count.
    pub outcomes: Vec<(OperationKind, crate::api::OutcomeKind, u64)>,
    /// When traffic last moved, unix seconds.
    pub last_switch: Option<f64>,
    /// The running operation's kind.
    pub running: Option<OperationKind>,
    /// The running operation's kind and start, unix seconds.
    pub running_since: Option<(OperationKind, f64)>,
}

impl Service {
    /// A controller for one configured service, with an empty model, and
    /// its actor running on the agent's task tracker until shutdown.
    /// [`Service::recover`] fills the model from the state file and the
    /// runtime.
    pub fn new(config: ServiceConfig, proxy: Proxy, shared: Arc<Shared>) -> Arc<Service> {
        let (tx, rx) = mpsc::unbounded_channel();
        let (publish, snapshot) = watch::channel(Arc::new(ServiceModel::default()));
        let service = Arc::new(Service {
            name: config.name.clone(),
            config,
            proxy,
            shared,
            tx: tx.clone(),
            snapshot,
            heal_wake: tokio::sync::Notify::new(),
        });
        let actor = actor::Actor::new(service.clone(), rx, tx, publish);
        service.shared.tasks.spawn(actor.run());
        service
    }

    /// The service name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The service's proxy.
    pub fn proxy(&self) -> &Proxy {
        &self.proxy
    }

    /// The service's configuration.
    pub fn config(&self) -> &ServiceConfig {
        &self.config
    }

    /// The status answer for this service.
    pub fn status(&self) -> ServiceStatus {
        self.view().status(&self.config, &self.proxy)
    }

    /// Past operations.
    pub fn history(&self) -> History {
        History { service: self.name.clone(), entries: self.view().history.clone() }
    }

    /// The active color, if any.
    pub fn active(&self) -> Option<Color> {
        self.view().active
    }

    /// Whether every replica that should take traffic is healthy (used for
    /// the systemd READY notification).
    pub fn routes_ready(&self) -> bool {
        self.view().serving_ready()
    }

    /// What `/metrics` reports about this service's control plane.
    pub fn metrics(&self) -> ServiceMetrics {
        let m = self.view();
        ServiceMetrics {
            active: m.active,
            revision: m
                .active
                .and_then(|a| m.colors.get(&a))
                .and_then(|c| c.spec.as_ref())
                .map(|s| s.revision),
            replicas: m
                .colors
                .iter()
                .flat_map(|(color, c)| c.replicas.iter().map(move |r| (*color, r.number, r.health, r.state)))
                .collect(),
            outcomes: m.outcome_counts.iter().map(|(k, v)| (k.0, k.1, *v)).collect(),
            last_switch: m.last_switch,
            running: m.operation.as_ref().map(|o| o.kind),
            running_since: m.operation.as_ref().and_then(|o| {
                let at = humantime::parse_rfc3339(&o.started_at).ok()?;
                Some((o.kind, at.duration_since(std::time::UNIX_EPOCH).ok()?.as_secs_f64()))
            }),
        }
    }

    /// The model as last committed. Never waits: the actor replaces the
    /// snapshot whole after each change.
    fn view(&self) -> Arc<ServiceModel> {
        self.snapshot.borrow().clone()
    }

    /// Send a change through the actor's commit step and wait for it to be
    /// in: the snapshot shows it when this returns. Never returns once the
    /// actor has stopped (the agent is stopping; every caller runs beside
    /// the shutdown token and is dropped by it).
    async fn send_change<R: Send + 'static>(
        &self,
        on_failed_write: OnFailedWrite,
        change: impl FnOnce(&mut ServiceModel) -> R + Send + 'static,
    ) -> Result<R, StateError> {
        let (reply, answer) = oneshot::channel();
        let change: actor::Change = Box::new(move |m| Box::new(change(m)));
        if self.tx.send(Msg::Change { change, on_failed_write, reply: Some(reply) }).is_err() {
            return std::future::pending().await;
        }
        match answer.await {
            Ok(out) => out.map(|b| *b.downcast::<R>().expect("a change answers with its own type")),
            Err(_) => std::future::pending().await,
        }
    }

    /// A change that moves traffic: undone when the state file cannot be
    /// written, so traffic stays where it was and the file never lags
    /// behind what the proxy does (a crash after the write is finished by
    /// the next agent from the file). Returns what `change` returned.
    async fn commit<R: Send + 'static>(
        &self,
        change: impl FnOnce(&mut ServiceModel) -> R + Send + 'static,
    ) -> Result<R, StateError> {
        self.send_change(OnFailedWrite::Undo, change).await
    }

    /// A change of progress: kept in memory when the state file cannot be
    /// written (reported; the next write carries it).
    async fn update<R: Send + 'static>(
        &self,
        change: impl FnOnce(&mut ServiceModel) -> R + Send + 'static,
    ) -> R {
        match self.send_change(OnFailedWrite::Keep, change).await {
            Ok(out) => out,
            Err(_) => unreachable!("a kept change does not fail"),
        }
    }

    /// Hold the service outside an operation: requests that arrive
    /// meanwhile wait for the guard to drop; refused while an operation
    /// runs.
    async fn hold(&self, hold: Hold) -> Result<HoldGuard, ControlError> {
        let (reply, answer) = oneshot::channel();
        let stopping =
            || ControlError::Conflict { service: self.name.clone(), running: "the agent is stopping".into() };
        self.tx.send(Msg::Hold { hold, reply }).map_err(|_| stopping())?;
        answer.await.map_err(|_| stopping())?
    }

    fn emit(&self, op: Option<u64>, kind: EventKind) -> u64 {
        self.shared.events.emit(&self.name, op, kind)
    }

    /// Accept an operation and run it in the background; the answer names
    /// the operation to follow in the event stream. An abort of a running
    /// operation is answered once that operation has stopped.
    pub async fn start(&self, request: Operation) -> Result<OperationAccepted, ControlError> {
        let (reply, answer) = oneshot::channel();
        let stopping =
            || ControlError::Conflict { service: self.name.clone(), running: "the agent is stopping".into() };
        self.tx.send(Msg::Start { request, reply }).map_err(|_| stopping())?;
        answer.await.map_err(|_| stopping())?
    }

    /// Hold the service so that nothing changes it until the guard is
    /// dropped: no operation starts. For an agent handing over to its
    /// successor. Refuses while an operation runs.
    pub async fn freeze(&self) -> Result<HoldGuard, ControlError> {
        self.hold(Hold::HandingOver).await
    }
}
