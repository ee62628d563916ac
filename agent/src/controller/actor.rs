//! The service actor: the one task that owns a service's model.
//!
//! Everything that changes the model is a message to it ([`Msg`]), handled
//! one at a time, in arrival order:
//!
//! - a **change** goes through the commit step: change the model, build the
//!   route table, write the state file when the record changed, install the
//!   table when it changed, publish the snapshot, answer. A strict change
//!   whose write fails is undone before anything else sees it, so traffic
//!   stays where it was;
//! - a **start** is admitted or refused here, against the model as it is:
//!   a refused request changes nothing; an admitted one is marked running
//!   and runs as a child task that changes the model through messages;
//! - an **abort** of a running operation cancels it and is answered once
//!   the operation has ended, with what it did;
//! - a **hold** (self-healing, a kept-warm color's stop, recovery, a
//!   handover) keeps operations out while it lasts; requests that arrive
//!   meanwhile wait for it instead of being refused.
//!
//! Readers never wait for the actor: status, metrics and the operations
//! themselves read the published snapshot (a `watch`), which is only ever
//! replaced by a whole committed model.

use super::model::ServiceModel;
use super::plan::{OpCtx, OpFailure, Plan};
use super::{ControlError, Operation, Service};
use crate::api::{EventKind, OperationAccepted, Outcome, OutcomeKind};
use crate::events::now_rfc3339;
use crate::state::StateError;
use std::any::Any;
use std::collections::VecDeque;
use std::sync::Arc;
use tokio::sync::{mpsc, oneshot, watch};
use tokio_util::sync::CancellationToken;

/// A change to the model; what it returns goes back to the sender.
pub(super) type Change = Box<dyn FnOnce(&mut ServiceModel) -> Box<dyn Any + Send> + Send>;

/// The answer to a change: what it returned, or the failed write.
pub(super) type ChangeReply = Result<Box<dyn Any + Send>, StateError>;

/// What a failed state write does to the change that caused it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum OnFailedWrite {
    /// Undo the change: traffic and model stay as they were.
    Undo,
    /// Keep the change in memory and report the failure; the next write
    /// carries it (progress that moves no traffic).
    Keep,
}

/// A message to the actor.
pub(super) enum Msg {
    /// Change the model through the commit step.
    Change { change: Change, on_failed_write: OnFailedWrite, reply: Option<oneshot::Sender<ChangeReply>> },
    /// Admit an operation, or refuse it.
    Start { request: Operation, reply: oneshot::Sender<Result<OperationAccepted, ControlError>> },
    /// An operation's task ended: with its result, or left recorded for
    /// the next agent because this one stops (`None`).
    Ended { id: u64, result: Option<Result<String, OpFailure>> },
    /// Hold the service outside an operation.
    Hold { hold: Hold, reply: oneshot::Sender<Result<HoldGuard, ControlError>> },
    /// A hold ended (sent by [`HoldGuard`]'s drop).
    Release { id: u64 },
}

/// What holds a service outside an operation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Hold {
    /// Recovery after a start: nothing else runs until it is done.
    Recovering,
    /// The healer replaces replicas that exited.
    Healing,
    /// The old color kept warm is stopped after `keep_old`.
    StoppingWarm,
    /// A new agent takes over: nothing changes until the handover ends.
    HandingOver,
    /// Traffic another agent set is applied here (`follow`).
    Following,
}

impl Hold {
    fn describe(&self) -> &'static str {
        match self {
            Hold::Recovering => "recovering after a start",
            Hold::Healing => "replacing replicas that exited",
            Hold::StoppingWarm => "stopping an old color kept warm",
            Hold::HandingOver => "a handover to a new agent",
            Hold::Following => "applying traffic another agent set",
        }
    }
}

/// Holds the service until dropped.
#[derive(Debug)]
pub struct HoldGuard {
    id: u64,
    tx: mpsc::UnboundedSender<Msg>,
}

impl Drop for HoldGuard {
    fn drop(&mut self) {
        let _ = self.tx.send(Msg::Release { id: self.id });
    }
}

/// What the service is busy with.
enum Job {
    Operation { ctx: OpCtx },
    Hold { id: u64, hold: Hold },
}

/// The actor's own state.
pub(super) struct Actor {
    service: Arc<Service>,
    model: ServiceModel,
    rx: mpsc::UnboundedReceiver<Msg>,
    tx: mpsc::UnboundedSender<Msg>,
    snapshot: watch::Sender<Arc<ServiceModel>>,
    job: Option<Job>,
    /// Requests and holds that wait for a hold to end.
    waiting: VecDeque<Msg>,
    /// The abort that waits for the running operation to stop.
    abort: Option<oneshot::Sender<Result<OperationAccepted, ControlError>>>,
    next_hold: u64,
}

impl Actor {
    /// An actor for `service`, taking messages from `rx` (whose sender is
    /// `tx`, kept to hand to holds) and publishing to `snapshot`.
    pub(super) fn new(
        service: Arc<Service>,
        rx: mpsc::UnboundedReceiver<Msg>,
        tx: mpsc::UnboundedSender<Msg>,
        snapshot: watch::Sender<Arc<ServiceModel>>,
    ) -> Actor {
        Actor {
            service,
            model: ServiceModel::default(),
            rx,
            tx,
            snapshot,
            job: None,
            waiting: VecDeque::new(),
            abort: None,
            next_hold: 0,
        }
    }

    /// Handle messages until the agent stops and nothing runs any more
    /// (an operation stopped by the shutdown reports that it left).
    pub(super) async fn run(mut self) {
        let shutdown = self.service.shared.shutdown.clone();
        loop {
            tokio::select! {
                biased;
                msg = self.rx.recv() => match msg {
                    Some(msg) => self.handle(msg),
                    None => break,
                },
                _ = shutdown.cancelled(), if self.job.is_none() => break,
            }
        }
        // Whatever still waits is answered by the dropped reply channels:
        // the agent is stopping.
    }

    fn handle(&mut self, msg: Msg) {
        match msg {
            Msg::Change { change, on_failed_write, reply } => {
                let out = self.commit(change, on_failed_write);
                if let Some(reply) = reply {
                    let _ = reply.send(out);
                }
            }
            Msg::Start { request, reply } => self.on_start(request, reply),
            Msg::Ended { id, result } => self.on_ended(id, result),
            Msg::Hold { hold, reply } => self.on_hold(hold, reply),
            Msg::Release { id } => {
                if matches!(&self.job, Some(Job::Hold { id: held, .. }) if *held == id) {
                    self.job = None;
                    self.wake_waiting();
                }
            }
        }
    }

    /// The commit step: change, table, state file, install, publish.
    fn commit(&mut self, change: Change, on_failed_write: OnFailedWrite) -> ChangeReply {
        let service = &self.service;
        let record_before = self.model.record();
        let table_before = self.model.route_table();
        let traffic_before = self.model.traffic();
        let undo = (on_failed_write == OnFailedWrite::Undo).then(|| self.model.clone());
        let out = change(&mut self.model);
        let record = self.model.record();
        if record != record_before {
            if let Err(e) = service.shared.persister.save(&service.name, record) {
                tracing::error!(service = %service.name, error = %e, "cannot persist state");
                if let Some(before) = undo {
                    self.model = before;
                    service.emit(
                        None,
                        EventKind::Message {
                            level: "error".into(),
                            message: format!("cannot persist state, so traffic did not move: {e}"),
                        },
                    );
                    return Err(e);
                }
                service.emit(
                    None,
                    EventKind::Message {
                        level: "error".into(),
                        message: format!("cannot persist state: {e}"),
                    },
                );
            }
        }
        let table = self.model.route_table();
        if table != table_before {
            service.proxy.set_routes(table);
        }
        let traffic = self.model.traffic();
        if traffic != traffic_before {
            service.shared.runtime.traffic_changed(&service.name, traffic);
        }
        self.publish();
        Ok(out)
    }

    fn publish(&self) {
        self.snapshot.send_replace(Arc::new(self.model.clone()));
    }

    fn conflict(&self) -> ControlError {
        let running = match &self.job {
            Some(Job::Operation { ctx }) => {
                let phase = self.model.operation.as_ref().map(|o| o.phase.to_string()).unwrap_or_default();
                format!("operation {} ({:?}, phase {phase})", ctx.id, ctx.kind)
            }
            Some(Job::Hold { hold, .. }) => hold.describe().to_string(),
            None => "nothing".into(),
        };
        ControlError::Conflict { service: self.service.name.clone(), running }
    }

    fn on_start(
        &mut self,
        request: Operation,
        reply: oneshot::Sender<Result<OperationAccepted, ControlError>>,
    ) {
        match &self.job {
            // An abort is a command to the running operation first: stop
            // it; the abort is answered once it has undone its work, and
            // removes what is left (a candidate a finished deploy left).
            Some(Job::Operation { ctx }) if matches!(request, Operation::Abort) && self.abort.is_none() => {
                ctx.cancel.cancel();
                self.abort = Some(reply);
            }
            Some(Job::Operation { .. }) => {
                let _ = reply.send(Err(self.conflict()));
            }
            Some(Job::Hold { hold: Hold::HandingOver, .. }) => {
                let _ = reply.send(Err(self.conflict()));
            }
            Some(Job::Hold { .. }) => self.waiting.push_back(Msg::Start { request, reply }),
            None => {
                let answer = self.admit(request, None);
                let _ = reply.send(answer);
            }
        }
    }

    fn on_hold(&mut self, hold: Hold, reply: oneshot::Sender<Result<HoldGuard, ControlError>>) {
        match &self.job {
            Some(Job::Operation { .. }) => {
                let _ = reply.send(Err(self.conflict()));
            }
            Some(Job::Hold { .. }) => self.waiting.push_back(Msg::Hold { hold, reply }),
            None if self.service.shared.shutdown.is_cancelled() => {
                let _ = reply.send(Err(ControlError::Conflict {
                    service: self.service.name.clone(),
                    running: "the agent is stopping".into(),
                }));
            }
            None => {
                self.next_hold += 1;
                let id = self.next_hold;
                self.job = Some(Job::Hold { id, hold });
                if reply.send(Ok(HoldGuard { id, tx: self.tx.clone() })).is_err() {
                    // The guard was dropped with the answer: released.
                    self.job = None;
                }
            }
        }
    }

    /// Hand waiting requests the service, in order, until one takes it.
    fn wake_waiting(&mut self) {
        while self.job.is_none() {
            let Some(msg) = self.waiting.pop_front() else { return };
            self.handle(msg);
        }
    }

    /// Plan and start an operation on a free service.
    fn admit(
        &mut self,
        request: Operation,
        stopped: Option<Outcome>,
    ) -> Result<OperationAccepted, ControlError> {
        let service = self.service.clone();
        let plan = match (service.plan(&self.model, &request), stopped) {
            (Ok(plan), stopped) => Plan { stopped, ..plan },
            (Err(_), Some(stopped)) => Plan::stopped(stopped),
            (Err(e), None) => return Err(e),
        };
        let kind = request.kind();
        let id = service.shared.persister.next_op_id();
        let since = service.shared.events.next_seq();
        let (revision, target) = (plan.revision, plan.target);
        let revision = self
            .commit(
                Box::new(move |m| Box::new(m.begin_operation(id, kind, revision, target))),
                OnFailedWrite::Keep,
            )
            .map(|r| *r.downcast::<u64>().expect("begin_operation returns the revision"))
            .unwrap_or_default();
        service.emit(Some(id), EventKind::OperationStarted { kind, revision });
        // Abort only: a shutdown is not an abort (see below).
        let ctx = OpCtx { id, kind, revision, cancel: CancellationToken::new() };
        self.job = Some(Job::Operation { ctx: ctx.clone() });
        let shutdown = service.shared.shutdown.clone();
        let tx = self.tx.clone();
        service.shared.tasks.clone().spawn(async move {
            let result = tokio::select! {
                // A stopping agent is not a failure: the operation stops at
                // the await point it is at, where the state file is whole
                // (every write is synchronous), and is left recorded as
                // running for the next agent to finish or undo exactly as
                // after a crash (recover.rs). Nothing is rolled back or
                // cleaned up on the way out.
                biased;
                _ = shutdown.cancelled() => {
                    let phase = service.view().operation.as_ref().map(|o| o.phase.to_string()).unwrap_or_default();
                    tracing::info!(service = %service.name, op = id, %phase, "agent stopping; the next agent finishes or undoes this operation");
                    None
                }
                result = service.run(&ctx, request, plan) => Some(result),
            };
            let _ = tx.send(Msg::Ended { id, result });
        });
        Ok(OperationAccepted { operation: id, service: self.service.name.clone(), kind, revision, since })
    }

    fn on_ended(&mut self, id: u64, result: Option<Result<String, OpFailure>>) {
        let Some(Job::Operation { ctx }) = self.job.take() else { return };
        debug_assert_eq!(ctx.id, id);
        if let Some(result) = result {
            self.finish(&ctx, result);
        }
        if let Some(reply) = self.abort.take() {
            let stopped = self.model.last_outcome.clone().filter(|o| o.operation == id);
            let answer = self.admit(Operation::Abort, stopped);
            let _ = reply.send(answer);
        }
        self.wake_waiting();
    }

    /// Record the end of an operation: history, state file, event. The
    /// service is free again before the event goes out, so a script that
    /// acts on it at once is never refused.
    fn finish(&mut self, ctx: &OpCtx, result: Result<String, OpFailure>) {
        let name = self.service.name.clone();
        let (outcome, message) = match result {
            Ok(message) => (OutcomeKind::Succeeded, message),
            Err(f) => (f.outcome, f.message),
        };
        let outcome = Outcome {
            operation: ctx.id,
            kind: ctx.kind,
            outcome,
            message,
            revision: ctx.revision,
            at: now_rfc3339(),
        };
        match outcome.outcome {
            OutcomeKind::Succeeded => {
                tracing::info!(service = %name, revision = ctx.revision, kind = %ctx.kind, outcome = %outcome.outcome, "{}", outcome.message)
            }
            _ => {
                tracing::warn!(service = %name, revision = ctx.revision, kind = %ctx.kind, outcome = %outcome.outcome, "{}", outcome.message)
            }
        }
        let (revision, ended) = (ctx.revision, outcome.clone());
        let _ = self.commit(
            Box::new(move |m| {
                let spec = m
                    .active
                    .and_then(|a| m.colors.get(&a))
                    .and_then(|c| c.spec.as_ref())
                    .filter(|s| s.revision == revision)
                    .map(|s| s.spec.clone());
                m.end_operation(ended, spec);
                Box::new(())
            }),
            OnFailedWrite::Keep,
        );
        self.service.emit(Some(ctx.id), EventKind::OperationFinished { result: outcome });
    }
}
