//! The traffic writer: one task that owns the pending label writes and
//! takes the controllers' traffic changes through a channel. Changes of one
//! service coalesce (the latest wins); each is written into the labels of
//! every color service of it, with a sequence number that grows, so the
//! newest traffic is recognisable whichever service a reader looks at. At
//! shutdown what is pending is written before the task ends.

use super::labels::put_traffic;
use super::{service_name, update_service};
use crate::api::Color;
use crate::runtime::docker::DockerRuntime;
use crate::runtime::Traffic;
use std::collections::BTreeMap;
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

/// Longest time the pending writes may take at shutdown (10 seconds).
const FLUSH_TIMEOUT: Duration = Duration::from_secs(10);
/// Wait before a failed write is tried again (1 second).
const RETRY: Duration = Duration::from_secs(1);

/// Where controllers send traffic changes.
#[derive(Debug, Clone)]
pub(super) struct Inbox(mpsc::UnboundedSender<(String, Traffic)>);

impl Inbox {
    /// Queue `traffic` of `service` for writing; never waits.
    pub(super) fn send(&self, service: &str, traffic: Traffic) {
        if self.0.send((service.to_string(), traffic)).is_err() {
            tracing::warn!(%service, "the traffic writer has stopped; the Swarm labels keep the previous traffic");
        }
    }
}

/// An inbox and the writer's end of it.
pub(super) fn inbox() -> (Inbox, mpsc::UnboundedReceiver<(String, Traffic)>) {
    let (tx, rx) = mpsc::unbounded_channel();
    (Inbox(tx), rx)
}

/// The writer task's state.
pub(super) struct Writer {
    engine: DockerRuntime,
    rx: mpsc::UnboundedReceiver<(String, Traffic)>,
    pending: BTreeMap<String, Traffic>,
    last_seq: u64,
}

impl Writer {
    /// A writer on `engine`, fed by `rx`.
    pub(super) fn new(engine: DockerRuntime, rx: mpsc::UnboundedReceiver<(String, Traffic)>) -> Writer {
        Writer { engine, rx, pending: BTreeMap::new(), last_seq: 0 }
    }

    /// Write changes as they come until `shutdown`, then what is pending.
    pub(super) async fn run(mut self, shutdown: CancellationToken) {
        loop {
            if self.pending.is_empty() {
                tokio::select! {
                    _ = shutdown.cancelled() => break,
                    msg = self.rx.recv() => match msg {
                        Some((s, t)) => { self.pending.insert(s, t); }
                        None => break,
                    },
                }
            }
            while let Ok((s, t)) = self.rx.try_recv() {
                self.pending.insert(s, t);
            }
            if !self.write_pending().await {
                tokio::select! {
                    _ = shutdown.cancelled() => break,
                    _ = tokio::time::sleep(RETRY) => {}
                }
            }
        }
        while let Ok((s, t)) = self.rx.try_recv() {
            self.pending.insert(s, t);
        }
        if !self.pending.is_empty()
            && tokio::time::timeout(FLUSH_TIMEOUT, self.write_pending()).await.is_err()
        {
            tracing::warn!(
                pending = self.pending.len(),
                "traffic labels not written within {FLUSH_TIMEOUT:?} at shutdown"
            );
        }
    }

    /// Write every pending change; `false` when one failed (it stays
    /// pending, unless a newer one replaced it meanwhile).
    async fn write_pending(&mut self) -> bool {
        let mut ok = true;
        for (service, traffic) in std::mem::take(&mut self.pending) {
            let seq = self.next_seq();
            let mut failed = false;
            for color in [Color::Blue, Color::Green] {
                let name = service_name(&service, color);
                let change = |s: &mut bollard::models::ServiceSpec| {
                    put_traffic(s.labels.get_or_insert_with(Default::default), traffic, seq)
                };
                if let Err(e) = update_service(&self.engine, &name, change).await {
                    tracing::warn!(service = %name, error = %e, "cannot write the traffic labels; trying again");
                    failed = true;
                }
            }
            if failed {
                ok = false;
                self.pending.entry(service).or_insert(traffic);
            }
        }
        ok
    }

    /// Unix milliseconds, strictly growing.
    fn next_seq(&mut self) -> u64 {
        let now = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64);
        self.last_seq = now.max(self.last_seq + 1);
        self.last_seq
    }
}
