//! The label keeper: the one task per agent that owns what this agent
//! reads from and writes into the colors' service labels, changed only
//! through messages ([`Inbox`]).
//!
//! - **Traffic this agent set** (`Set`) is written into every color
//!   service of the app with a new sequence (unix ms, growing); changes of
//!   one service coalesce, the latest wins. The agent's own
//!   acknowledgement of that sequence goes in the same update.
//! - **Following**: every [`POLL`] it reads the labels of the services it
//!   follows; a traffic sequence newer than any it knows was set by
//!   another agent and is published on that service's watch, for its
//!   controller to apply. Traffic equal to what the labels already say
//!   (the controller applying what it read) is not written again, so
//!   agents never echo each other.
//! - **Acknowledgements**: `bg.seen.<agent id>` = `seq@heartbeat`, written
//!   when the controller reports it serves a sequence (`Served`) and every
//!   [`HEARTBEAT`], so others can tell live agents from dead ones.
//! - **Settling**: a waiter (`Settle`) is answered once every live agent
//!   (heartbeat within [`LIVENESS`]) acknowledged this agent's last
//!   sequence, or at the ack timeout with the ones that did not.
//!
//! At shutdown what is pending is written before the task ends.

use super::labels::{self, lagging, put_seen, put_traffic, Seen};
use super::{service_name, update_service};
use crate::api::Color;
use crate::runtime::docker::DockerRuntime;
use crate::runtime::Traffic;
use std::collections::{BTreeMap, HashMap};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};
use tokio::sync::{mpsc, oneshot, watch};
use tokio_util::sync::CancellationToken;

/// Longest time the pending writes may take at shutdown (10 seconds).
const FLUSH_TIMEOUT: Duration = Duration::from_secs(10);
/// How often the followed services' labels are read (1 second).
const POLL: Duration = Duration::from_secs(1);
/// How often an agent renews its acknowledgement (5 seconds).
const HEARTBEAT: Duration = Duration::from_secs(5);
/// An agent whose heartbeat is older is not live: it no longer holds up
/// a traffic change (15 seconds, three heartbeats).
pub(super) const LIVENESS: Duration = Duration::from_secs(15);
/// Acknowledgements older than this are removed from the labels (an
/// agent gone for good; 1 hour).
const FORGET: Duration = Duration::from_secs(3600);

/// What the label keeper is asked.
#[derive(Debug)]
pub(super) enum Msg {
    /// This agent's controller changed the traffic.
    Set(String, Traffic),
    /// This agent serves sequence `seq` it read.
    Served(String, u64),
    /// Follow a service: publish other agents' traffic on this watch.
    Follow(String, watch::Sender<Option<(u64, Traffic)>>),
    /// Answer when every live agent serves this agent's last traffic.
    Settle(String, oneshot::Sender<Vec<String>>),
}

/// Where the runtime sends the keeper messages.
#[derive(Debug, Clone)]
pub(super) struct Inbox(mpsc::UnboundedSender<Msg>);

impl Inbox {
    fn send(&self, msg: Msg) {
        if self.0.send(msg).is_err() {
            tracing::warn!("the Swarm label keeper has stopped; the labels keep what they said");
        }
    }

    /// Queue `traffic` of `service` for writing; never waits.
    pub(super) fn set(&self, service: &str, traffic: Traffic) {
        self.send(Msg::Set(service.to_string(), traffic));
    }

    /// This agent serves `seq` of `service`.
    pub(super) fn served(&self, service: &str, seq: u64) {
        self.send(Msg::Served(service.to_string(), seq));
    }

    /// Other agents' traffic changes of `service`, from now on.
    pub(super) fn follow(&self, service: &str) -> watch::Receiver<Option<(u64, Traffic)>> {
        let (tx, rx) = watch::channel(None);
        self.send(Msg::Follow(service.to_string(), tx));
        rx
    }

    /// Wait until every live agent serves this agent's last traffic of
    /// `service`; the ids of those that did not within the timeout.
    pub(super) async fn settle(&self, service: &str) -> Vec<String> {
        let (tx, rx) = oneshot::channel();
        self.send(Msg::Settle(service.to_string(), tx));
        rx.await.unwrap_or_default()
    }
}

/// An inbox and the keeper's end of it.
pub(super) fn inbox() -> (Inbox, mpsc::UnboundedReceiver<Msg>) {
    let (tx, rx) = mpsc::unbounded_channel();
    (Inbox(tx), rx)
}

/// One service's label state as this agent knows it.
#[derive(Default)]
struct Followed {
    /// Traffic this agent set, not written yet.
    pending: Option<Traffic>,
    /// The newest traffic the labels hold (written or read), and its seq.
    known: Option<(u64, Traffic)>,
    /// The sequence this agent serves.
    served: u64,
    /// Whether `served` changed since it was last written.
    ack_due: bool,
    /// Where other agents' changes are published (followed services).
    watch: Option<watch::Sender<Option<(u64, Traffic)>>>,
    /// Every agent's acknowledgement as last read.
    seen: HashMap<String, Seen>,
}

/// A promote (or other switch) waiting for the others.
struct Waiter {
    service: String,
    /// The sequence the others must serve: this agent's write, `None`
    /// while it is still pending (retried every round).
    seq: Option<u64>,
    deadline: Instant,
    reply: oneshot::Sender<Vec<String>>,
}

/// The keeper task's state.
pub(super) struct Writer {
    engine: DockerRuntime,
    rx: mpsc::UnboundedReceiver<Msg>,
    /// This agent's id in `bg.seen.<id>`.
    id: String,
    ack_timeout: Duration,
    services: BTreeMap<String, Followed>,
    waiters: Vec<Waiter>,
    last_seq: u64,
    last_heartbeat: Option<Instant>,
}

impl Writer {
    /// A keeper on `engine` for this agent, fed by `rx`; `key` tells it
    /// from other agents on its node (its id is `<node id>.<key>`).
    /// Settling waits up to `ack_timeout`.
    pub(super) fn new(
        engine: DockerRuntime,
        rx: mpsc::UnboundedReceiver<Msg>,
        key: String,
        ack_timeout: Duration,
    ) -> Writer {
        Writer {
            engine,
            rx,
            id: key,
            ack_timeout,
            services: BTreeMap::new(),
            waiters: Vec::new(),
            last_seq: 0,
            last_heartbeat: None,
        }
    }

    /// Keep the labels until `shutdown`, then write what is pending.
    pub(super) async fn run(mut self, shutdown: CancellationToken) {
        // The id starts with the Swarm node's id, asked once.
        loop {
            match node_id(&self.engine).await {
                Ok(node) => {
                    self.id = format!("{node}.{}", self.id);
                    break;
                }
                Err(e) => {
                    tracing::warn!(error = %e, "cannot read this node's Swarm id; trying again");
                    tokio::select! {
                        _ = shutdown.cancelled() => return,
                        _ = tokio::time::sleep(POLL) => {}
                    }
                }
            }
        }
        tracing::info!(agent = %self.id, "following the Swarm traffic labels");
        let mut tick = tokio::time::interval(POLL);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => break,
                msg = self.rx.recv() => match msg {
                    Some(msg) => self.handle(msg).await,
                    None => break,
                },
                _ = tick.tick() => self.round().await,
            }
        }
        while let Ok(msg) = self.rx.try_recv() {
            if let Msg::Set(s, t) = msg {
                self.services.entry(s).or_default().pending = Some(t);
            }
        }
        if tokio::time::timeout(FLUSH_TIMEOUT, self.write_pending()).await.is_err() {
            tracing::warn!("traffic labels not written within {FLUSH_TIMEOUT:?} at shutdown");
        }
    }

    async fn handle(&mut self, msg: Msg) {
        match msg {
            Msg::Set(s, t) => {
                let f = self.services.entry(s).or_default();
                // The controller applying what it read: the labels say it.
                if f.known.is_some_and(|(_, k)| k == t) && f.pending.is_none() {
                    return;
                }
                f.pending = Some(t);
                self.write_pending().await;
            }
            Msg::Served(s, seq) => {
                let f = self.services.entry(s).or_default();
                if seq > f.served {
                    f.served = seq;
                    f.ack_due = true;
                }
                self.write_acks(false).await;
            }
            Msg::Follow(s, tx) => {
                self.services.entry(s).or_default().watch = Some(tx);
            }
            Msg::Settle(s, reply) => {
                self.write_pending().await;
                // Who serves the service is read now, after this agent's
                // write: an agent that acknowledged since the last poll
                // is waited for too.
                self.services.entry(s.clone()).or_default();
                self.read().await;
                let f = self.services.entry(s.clone()).or_default();
                let seq = if f.pending.is_some() { None } else { Some(f.known.map_or(0, |(seq, _)| seq)) };
                let deadline = Instant::now() + self.ack_timeout;
                self.waiters.push(Waiter { service: s, seq, deadline, reply });
                self.answer_waiters();
            }
        }
    }

    /// One poll: write what failed before, read the labels, publish other
    /// agents' changes, renew the heartbeat, answer waiters.
    async fn round(&mut self) {
        self.write_pending().await;
        self.read().await;
        self.write_acks(true).await;
        self.answer_waiters();
    }

    /// Read the labels of every service this agent follows or waits on.
    async fn read(&mut self) {
        let names: Vec<String> = self.services.keys().cloned().collect();
        for name in names {
            let mut all = Vec::new();
            for color in [Color::Blue, Color::Green] {
                match inspect_labels(&self.engine, &service_name(&name, color)).await {
                    Ok(Some(l)) => all.push(l),
                    Ok(None) => {}
                    Err(e) => {
                        tracing::debug!(service = %name, error = %e, "cannot read the labels; next round");
                        return;
                    }
                }
            }
            let f = self.services.get_mut(&name).expect("listed above");
            f.seen = labels::seen(&all);
            let newest = labels::newest_seq(&all);
            if let Some((seq, traffic)) = newest {
                if f.known.is_none_or(|(k, _)| seq > k) {
                    f.known = Some((seq, traffic));
                    if let Some(w) = &f.watch {
                        w.send_replace(Some((seq, traffic)));
                    }
                }
            }
        }
    }

    /// Write every pending traffic change, with this agent's
    /// acknowledgement of it; a failed one stays pending.
    async fn write_pending(&mut self) {
        let names: Vec<String> =
            self.services.iter().filter(|(_, f)| f.pending.is_some()).map(|(n, _)| n.clone()).collect();
        for name in names {
            let Some(traffic) = self.services[&name].pending else { continue };
            let seq = self.next_seq();
            let seen = Seen { seq, alive_at: now_ms() };
            let id = self.id.clone();
            let change = |s: &mut bollard::models::ServiceSpec| {
                let l = s.labels.get_or_insert_with(Default::default);
                put_traffic(l, traffic, seq);
                put_seen(l, &id, seen);
            };
            if self.write_all(&name, change).await {
                let f = self.services.get_mut(&name).expect("listed above");
                f.pending = None;
                f.known = Some((seq, traffic));
                f.served = seq;
                f.seen.insert(self.id.clone(), seen);
            }
        }
    }

    /// Write this agent's acknowledgements that changed, and all of them
    /// when a heartbeat is due (`heartbeat`).
    async fn write_acks(&mut self, heartbeat: bool) {
        let beat = heartbeat && self.last_heartbeat.is_none_or(|t| t.elapsed() >= HEARTBEAT);
        let names: Vec<String> = self
            .services
            .iter()
            .filter(|(_, f)| f.ack_due || (beat && f.served > 0))
            .map(|(n, _)| n.clone())
            .collect();
        for name in names {
            let seen = Seen { seq: self.services[&name].served, alive_at: now_ms() };
            let (id, forget) = (self.id.clone(), now_ms().saturating_sub(FORGET.as_millis() as u64));
            let change = |s: &mut bollard::models::ServiceSpec| {
                let l = s.labels.get_or_insert_with(Default::default);
                labels::prune_seen(l, forget);
                put_seen(l, &id, seen);
            };
            if self.write_all(&name, change).await {
                let f = self.services.get_mut(&name).expect("listed above");
                f.ack_due = false;
                f.seen.insert(self.id.clone(), seen);
            }
        }
        if beat {
            self.last_heartbeat = Some(Instant::now());
        }
    }

    /// Apply `change` to every color service of `service`; whether all
    /// that exist took it.
    async fn write_all(&self, service: &str, change: impl Fn(&mut bollard::models::ServiceSpec)) -> bool {
        let mut ok = true;
        for color in [Color::Blue, Color::Green] {
            let name = service_name(service, color);
            if let Err(e) = update_service(&self.engine, &name, &change).await {
                tracing::warn!(service = %name, error = %e, "cannot write the labels; trying again");
                ok = false;
            }
        }
        ok
    }

    /// Answer the waiters whose agents all acknowledged, or whose time is up.
    fn answer_waiters(&mut self) {
        let live_since = now_ms().saturating_sub(LIVENESS.as_millis() as u64);
        let now = Instant::now();
        for mut w in std::mem::take(&mut self.waiters) {
            let Some(f) = self.services.get(&w.service) else {
                let _ = w.reply.send(Vec::new());
                continue;
            };
            if w.seq.is_none() && f.pending.is_none() {
                w.seq = f.known.map(|(seq, _)| seq);
            }
            // Not written yet: no live agent can serve it.
            let late = lagging(&f.seen, &self.id, w.seq.unwrap_or(u64::MAX), live_since);
            if late.is_empty() || now >= w.deadline || w.reply.is_closed() {
                let _ = w.reply.send(late);
            } else {
                self.waiters.push(w);
            }
        }
    }

    /// Unix milliseconds, strictly growing.
    fn next_seq(&mut self) -> u64 {
        self.last_seq = now_ms().max(self.last_seq + 1);
        self.last_seq
    }
}

fn now_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64)
}

/// The labels of service `name`, `None` when it does not exist.
async fn inspect_labels(
    engine: &DockerRuntime,
    name: &str,
) -> Result<Option<HashMap<String, String>>, crate::runtime::RuntimeError> {
    let docker = engine.client().await?;
    match docker.inspect_service(name, None::<bollard::query_parameters::InspectServiceOptions>).await {
        Ok(s) => Ok(Some(s.spec.and_then(|s| s.labels).unwrap_or_default())),
        Err(e) if super::is_status(&e, 404) => Ok(None),
        Err(e) => Err(engine.err(&format!("inspecting service {name}"), e)),
    }
}

/// This engine's Swarm node id.
async fn node_id(engine: &DockerRuntime) -> Result<String, crate::runtime::RuntimeError> {
    let docker = engine.client().await?;
    let info = docker.info().await.map_err(|e| engine.err("reading the engine info", e))?;
    info.swarm.and_then(|s| s.node_id).filter(|n| !n.is_empty()).ok_or_else(|| {
        crate::runtime::RuntimeError::Docker { message: "the engine is in no swarm".into(), source: None }
    })
}
