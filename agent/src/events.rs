//! The event hub: every operation reports what it does here, and the control
//! API streams it as NDJSON. Recent events are kept in a ring so a client
//! that posts an operation and then subscribes (`since = seq`) misses
//! nothing.
//!
//! Sequence numbers grow across agent restarts: a persistent hub reserves
//! them in blocks in a small file (`state_dir/events.seq`) before it hands
//! them out, and the next agent starts after the last reserved block, so a
//! client resuming with `since` never misses what a new agent emits.

use crate::api::{Event, EventKind};
use std::collections::VecDeque;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use tokio::sync::broadcast;

/// Sequence numbers reserved on disk at a time.
const SEQ_BLOCK: u64 = 4096;

/// Events kept for replay (about a few hours of busy deploys).
pub const EVENT_RING_CAPACITY: usize = 10_000;
/// Events a slow subscriber may lag behind before it is told it missed some.
const BROADCAST_CAPACITY: usize = 4096;

/// Shared, cheap-to-clone handle to the event hub.
#[derive(Clone)]
pub struct EventHub {
    inner: Arc<Mutex<Ring>>,
    tx: broadcast::Sender<Arc<Event>>,
}

struct Ring {
    next_seq: u64,
    events: VecDeque<Arc<Event>>,
    /// Where reservations are kept, and the first number not reserved yet.
    reserve: Option<(PathBuf, u64)>,
}

/// A subscription: the retained events it asked for, then live ones.
pub struct Subscription {
    /// Events from the ring with `seq >= since`, oldest first.
    pub replay: Vec<Arc<Event>>,
    /// Live events after the replay.
    pub live: broadcast::Receiver<Arc<Event>>,
}

impl Default for EventHub {
    fn default() -> Self {
        Self::new()
    }
}

impl EventHub {
    /// An empty hub; sequence numbers start at 1.
    pub fn new() -> EventHub {
        Self::with_ring(Ring { next_seq: 1, events: VecDeque::new(), reserve: None })
    }

    /// A hub whose sequence numbers continue after those of every earlier
    /// hub on `path`: it starts after the last block they reserved, and
    /// reserves its first block before it returns.
    pub fn persistent(path: &Path) -> std::io::Result<EventHub> {
        let start = match std::fs::read_to_string(path) {
            Ok(text) => text.trim().parse::<u64>().map_err(|e| {
                std::io::Error::new(
                    std::io::ErrorKind::InvalidData,
                    format!(
                        "{}: {text:?} is not an event sequence number ({e}); remove the file to start over",
                        path.display()
                    ),
                )
            })?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => 1,
            Err(e) => return Err(e),
        };
        let limit = start + SEQ_BLOCK;
        write_reservation(path, limit)?;
        Ok(Self::with_ring(Ring {
            next_seq: start.max(1),
            events: VecDeque::new(),
            reserve: Some((path.to_path_buf(), limit)),
        }))
    }

    fn with_ring(ring: Ring) -> EventHub {
        let (tx, _) = broadcast::channel(BROADCAST_CAPACITY);
        EventHub { inner: Arc::new(Mutex::new(ring)), tx }
    }

    /// Record and publish an event; returns its sequence number.
    pub fn emit(&self, service: &str, operation: Option<u64>, kind: EventKind) -> u64 {
        let mut ring = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        let seq = ring.next_seq;
        ring.next_seq += 1;
        if let Some((path, limit)) = ring.reserve.as_mut() {
            if seq >= *limit {
                // Once per block. Should the write fail, numbers still grow
                // in this agent; only the next agent could reuse some.
                *limit = seq + SEQ_BLOCK;
                if let Err(e) = write_reservation(path, *limit) {
                    tracing::error!(path = %path.display(), error = %e, "cannot reserve event sequence numbers");
                }
            }
        }
        let event = Arc::new(Event { seq, at: now_rfc3339(), service: service.to_string(), operation, kind });
        if ring.events.len() == EVENT_RING_CAPACITY {
            ring.events.pop_front();
        }
        ring.events.push_back(event.clone());
        // Sent under the lock so subscribers see events in seq order and a
        // subscription taken under the same lock has no gap.
        let _ = self.tx.send(event);
        seq
    }

    /// The sequence number the next event will get.
    pub fn next_seq(&self) -> u64 {
        self.inner.lock().unwrap_or_else(|p| p.into_inner()).next_seq
    }

    /// Subscribe, replaying retained events with `seq >= since` first.
    pub fn subscribe(&self, since: Option<u64>) -> Subscription {
        let ring = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        let replay = match since {
            Some(since) => ring.events.iter().filter(|e| e.seq >= since).cloned().collect(),
            None => Vec::new(),
        };
        Subscription { replay, live: self.tx.subscribe() }
    }
}

/// Write `limit` to `path` atomically (temp file, fsync, rename).
fn write_reservation(path: &Path, limit: u64) -> std::io::Result<()> {
    let tmp = path.with_extension("seq.tmp");
    {
        let mut f = crate::state::create_private(&tmp)?;
        writeln!(f, "{limit}")?;
        f.sync_all()?;
    }
    std::fs::rename(&tmp, path)
}

/// Now, as RFC 3339 with milliseconds (UTC).
pub fn now_rfc3339() -> String {
    humantime::format_rfc3339_millis(std::time::SystemTime::now()).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn msg(m: &str) -> EventKind {
        EventKind::Message { level: "info".into(), message: m.into() }
    }

    #[tokio::test]
    async fn subscribers_get_replay_then_live_without_gap() {
        let hub = EventHub::new();
        hub.emit("web", None, msg("a"));
        let since = hub.next_seq();
        hub.emit("web", Some(1), msg("b"));
        let mut sub = hub.subscribe(Some(since));
        hub.emit("web", Some(1), msg("c"));
        assert_eq!(sub.replay.len(), 1);
        assert_eq!(sub.replay[0].seq, since);
        let live = sub.live.recv().await.unwrap();
        assert_eq!(live.seq, since + 1);
    }

    #[test]
    fn persistent_numbers_grow_across_hubs_and_blocks() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("events.seq");
        let first = EventHub::persistent(&path).unwrap();
        assert_eq!(first.emit("web", None, msg("a")), 1);
        let mut last = 0;
        for _ in 0..SEQ_BLOCK + 3 {
            last = first.emit("web", None, msg("b"));
        }
        drop(first);
        // A crash after `last`: the next hub starts after it, never at it.
        let second = EventHub::persistent(&path).unwrap();
        let next = second.emit("web", None, msg("c"));
        assert!(next > last, "{next} after {last}");
        std::fs::write(&path, "garbage").unwrap();
        let err = EventHub::persistent(&path).err().expect("a corrupt file is refused");
        assert!(err.to_string().contains("events.seq"), "{err}");
    }

    #[test]
    fn ring_is_bounded() {
        let hub = EventHub::new();
        for i in 0..(EVENT_RING_CAPACITY + 5) {
            hub.emit("web", None, msg(&i.to_string()));
        }
        let sub = hub.subscribe(Some(0));
        assert_eq!(sub.replay.len(), EVENT_RING_CAPACITY);
        assert_eq!(sub.replay[0].seq, 6);
    }
}
