//! The per-service controller: the model of a service (colors, replicas,
//! weights, the running operation), the operations that change it, and the
//! glue that keeps the proxy's route table and the state file in step with
//! it.
//!
//! One operation runs at a time per service: an operation holds the
//! service's operation lock for its whole life, and a second request that
//! finds the lock taken is answered with a conflict. Status reads never wait
//! for an operation: the model sits behind a short-lived mutex that is never
//! held across an await.

mod heal;
mod model;
mod ops;
mod plan;
mod recover;
mod replicas;
mod rolling;
#[cfg(test)]
mod tests;

pub use crate::api::Operation;
pub use model::ServiceModel;

use crate::api::{Color, EventKind, History, OperationAccepted, OperationKind, ServiceStatus};
use crate::config::ServiceConfig;
use crate::events::EventHub;
use crate::runtime::Runtime;
use crate::state::{PersistedState, ServiceRecord, StateError, StateStore};
use bg_proxy::Proxy;
use std::sync::{Arc, Mutex};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// How long a request waits for an operation that has reported its end to
/// release the service (or for a warm old color to finish stopping).
const RELEASE_WAIT: std::time::Duration = std::time::Duration::from_secs(2);

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
pub struct Persister {
    store: StateStore,
    state: Mutex<Written>,
}

/// What the persister last wrote, and the generation of each service's
/// record in it.
struct Written {
    state: PersistedState,
    generations: std::collections::BTreeMap<String, u64>,
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
        Persister { store, state: Mutex::new(Written { state, generations: Default::default() }) }
    }

    /// The next operation id, unique across services and restarts once
    /// the next [`Persister::save`] has written it.
    fn next_op_id(&self) -> u64 {
        let mut written = self.state.lock().unwrap_or_else(|p| p.into_inner());
        written.state.last_operation += 1;
        written.state.last_operation
    }

    /// Replace one service's record and write the whole file, unless a
    /// record of a later `generation` was written already (then this one
    /// is stale and skipped). When the write fails the record is put back
    /// as it was, so no later write of another service carries a change
    /// that was refused here.
    pub fn save(&self, service: &str, record: ServiceRecord, generation: u64) -> Result<(), StateError> {
        let mut written = self.state.lock().unwrap_or_else(|p| p.into_inner());
        if written.generations.get(service).is_some_and(|g| *g > generation) {
            return Ok(());
        }
        let before = written.state.services.insert(service.to_string(), record);
        let result = self.store.save(&written.state);
        match (&result, before) {
            (Ok(()), _) => {
                written.generations.insert(service.to_string(), generation);
            }
            (Err(_), Some(b)) => {
                written.state.services.insert(service.to_string(), b);
            }
            (Err(_), None) => {
                written.state.services.remove(service);
            }
        }
        result
    }

    /// The record of one service as last loaded or saved.
    pub fn record(&self, service: &str) -> Option<ServiceRecord> {
        self.state.lock().unwrap_or_else(|p| p.into_inner()).state.services.get(service).cloned()
    }
}

/// One service's controller. Cheap to share (`Arc<Service>`).
pub struct Service {
    name: String,
    config: ServiceConfig,
    proxy: Proxy,
    shared: Arc<Shared>,
    model: Mutex<ServiceModel>,
    op_lock: Arc<tokio::sync::Mutex<()>>,
    op_cancel: Mutex<Option<CancellationToken>>,
    /// Wakes the healer ([`Service::heal`]) when a replica exits.
    heal_wake: tokio::sync::Notify,
    /// Generations of the records handed to the persister, taken under the
    /// model's lock, so a record's generation orders it like the model.
    generation: std::sync::atomic::AtomicU64,
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
}

impl Service {
    /// A controller for one configured service, with an empty model.
    /// [`Service::recover`] fills it from the state file and the runtime.
    pub fn new(config: ServiceConfig, proxy: Proxy, shared: Arc<Shared>) -> Arc<Service> {
        Arc::new(Service {
            name: config.name.clone(),
            model: Mutex::new(ServiceModel::default()),
            config,
            proxy,
            shared,
            op_lock: Arc::new(tokio::sync::Mutex::new(())),
            op_cancel: Mutex::new(None),
            heal_wake: tokio::sync::Notify::new(),
            generation: std::sync::atomic::AtomicU64::new(0),
        })
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
        let model = self.lock();
        model.status(&self.config, &self.proxy)
    }

    /// Past operations.
    pub fn history(&self) -> History {
        let model = self.lock();
        History { service: self.name.clone(), entries: model.history.clone() }
    }

    /// The active color, if any.
    pub fn active(&self) -> Option<Color> {
        self.lock().active
    }

    /// Whether every replica that should take traffic is healthy (used for
    /// the systemd READY notification).
    pub fn routes_ready(&self) -> bool {
        self.lock().serving_ready()
    }

    /// What `/metrics` reports about this service's control plane.
    pub fn metrics(&self) -> ServiceMetrics {
        let m = self.lock();
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
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, ServiceModel> {
        self.model.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Rebuild the proxy's route table from the model and swap it in,
    /// under the model's lock: tables are installed in the order of the
    /// model changes they reflect, so no table is older than the model.
    fn apply_routes(&self) {
        let model = self.lock();
        self.proxy.set_routes(model.route_table());
    }

    /// The commit step of every change that moves traffic: change the
    /// model, write the state file, install the route table, in that
    /// order and under the model's lock. A state write that fails undoes
    /// the change, so traffic stays where it was and the file never lags
    /// behind what the proxy does (a crash after the write is finished by
    /// the next agent from the file). Returns what `change` returned
    /// (events to emit once the change is in).
    fn commit<R>(&self, change: impl FnOnce(&mut ServiceModel) -> R) -> Result<R, StateError> {
        let mut model = self.lock();
        let before = model.clone();
        let out = change(&mut model);
        let generation = self.next_generation();
        if let Err(e) = self.shared.persister.save(&self.name, model.record(), generation) {
            *model = before;
            drop(model);
            tracing::error!(service = %self.name, error = %e, "cannot persist state; the change was not made");
            self.emit(
                None,
                EventKind::Message {
                    level: "error".into(),
                    message: format!("cannot persist state, so traffic did not move: {e}"),
                },
            );
            return Err(e);
        }
        self.proxy.set_routes(model.route_table());
        Ok(out)
    }

    /// Write the model to the state file; a failure is reported, not fatal
    /// to the operation (the next write retries).
    ///
    /// The record is taken under the model's lock with a generation number,
    /// and the persister never writes a record older than one it already
    /// wrote: two writers that race write the newest model last.
    fn persist(&self) {
        let (record, generation) = {
            let model = self.lock();
            (model.record(), self.next_generation())
        };
        if let Err(e) = self.shared.persister.save(&self.name, record, generation) {
            tracing::error!(service = %self.name, error = %e, "cannot persist state");
            self.emit(
                None,
                EventKind::Message { level: "error".into(), message: format!("cannot persist state: {e}") },
            );
        }
    }

    /// The generation of the next record; call with the model locked.
    fn next_generation(&self) -> u64 {
        self.generation.fetch_add(1, std::sync::atomic::Ordering::Relaxed) + 1
    }

    fn emit(&self, op: Option<u64>, kind: EventKind) -> u64 {
        self.shared.events.emit(&self.name, op, kind)
    }

    /// Accept an operation and run it in the background; the answer names
    /// the operation to follow in the event stream.
    pub async fn start(self: &Arc<Self>, request: Operation) -> Result<OperationAccepted, ControlError> {
        // An abort is a command to the running operation first: stop it and
        // wait until it has undone its work; what is left (a candidate it
        // leaves, e.g. after a finished deploy) is removed by the abort.
        let stopped = match request {
            Operation::Abort => self.cancel_running().await,
            _ => None,
        };
        let guard = self.acquire().await?;
        let plan = match (self.plan(&request), stopped) {
            (Ok(plan), stopped) => plan::Plan { stopped, ..plan },
            (Err(_), Some(stopped)) => plan::Plan::stopped(stopped),
            (Err(e), None) => return Err(e),
        };
        let kind = request.kind();
        let id = self.shared.persister.next_op_id();
        let since = self.shared.events.next_seq();
        // Abort only: a shutdown is not an abort (see below).
        let cancel = CancellationToken::new();
        *self.op_cancel.lock().unwrap_or_else(|p| p.into_inner()) = Some(cancel.clone());
        let revision = self.lock().begin_operation(id, kind, plan.revision, plan.target);
        self.emit(Some(id), EventKind::OperationStarted { kind, revision });
        self.persist();
        let service = self.clone();
        let shutdown = self.shared.shutdown.clone();
        self.shared.tasks.spawn(async move {
            let ctx = plan::OpCtx { id, kind, revision, cancel };
            tokio::select! {
                // A stopping agent is not a failure: the operation stops at
                // the await point it is at, where the state file is whole
                // (every write is synchronous), and is left recorded as
                // running for the next agent to finish or undo exactly as
                // after a crash (recover.rs). Nothing is rolled back or
                // cleaned up on the way out.
                biased;
                _ = shutdown.cancelled() => {
                    let phase = service.lock().operation.as_ref().map(|o| o.phase.to_string()).unwrap_or_default();
                    tracing::info!(service = %service.name, op = id, %phase, "agent stopping; the next agent finishes or undoes this operation");
                }
                result = service.run(&ctx, request, plan) => service.finish(&ctx, result),
            }
            // Released and unmarked in one step under the model's lock,
            // where `acquire` looks at both: whoever holds the service
            // after this (the next operation, the healer, a kept-warm
            // color's stop) is never taken for an ending operation.
            let mut m = service.lock();
            drop(guard);
            m.op_ending = false;
        });
        Ok(OperationAccepted { operation: id, service: self.name.clone(), kind, revision, since })
    }

    /// Hold the service so that nothing changes it until the guard is
    /// dropped: no operation starts and nothing is persisted. For an agent
    /// handing over to its successor. Refuses while an operation runs.
    pub async fn freeze(&self) -> Result<tokio::sync::OwnedMutexGuard<()>, ControlError> {
        self.acquire().await
    }

    /// Take the operation lock: at once, or after a short wait when the last
    /// operation has already reported its end; a conflict otherwise.
    async fn acquire(&self) -> Result<tokio::sync::OwnedMutexGuard<()>, ControlError> {
        let conflict = || {
            let m = self.lock();
            let running = match (&m.operation, &m.busy) {
                (Some(o), _) => format!("operation {} ({:?}, phase {})", o.id, o.kind, o.phase),
                (None, Some(busy)) => busy.clone(),
                (None, None) => "stopping an old color kept warm, or a handover to a new agent".into(),
            };
            ControlError::Conflict { service: self.name.clone(), running }
        };
        // Looked at under the model's lock, so that "the last operation is
        // releasing the service" cannot be mistaken for "an operation has
        // taken the service and not marked itself running yet".
        let (taken, ending) = {
            let m = self.lock();
            (self.op_lock.clone().try_lock_owned(), m.op_ending)
        };
        match taken {
            Ok(guard) => Ok(guard),
            // The last operation has already reported its end and is
            // releasing the service: a script that acts on that report at
            // once must not see a conflict.
            Err(_) if ending => tokio::time::timeout(RELEASE_WAIT, self.op_lock.clone().lock_owned())
                .await
                .map_err(|_| conflict()),
            Err(_) => Err(conflict()),
        }
    }

    /// Cancel the running operation (if any), wait until it has cleaned up
    /// and released the service, and return how it ended.
    async fn cancel_running(&self) -> Option<crate::api::Outcome> {
        let (token, id) = {
            let m = self.lock();
            let token = self.op_cancel.lock().unwrap_or_else(|p| p.into_inner()).clone();
            (token, m.operation.as_ref().map(|o| o.id))
        };
        let (token, id) = (token?, id?);
        token.cancel();
        let _released = self.op_lock.lock().await;
        let m = self.lock();
        m.last_outcome.clone().filter(|o| o.operation == id)
    }
}
