//! The event hub: every operation reports what it does here, and the control
//! API streams it as NDJSON. Recent events are kept in a ring so a client
//! that posts an operation and then subscribes (`since = seq`) misses
//! nothing.

use crate::api::{Event, EventKind};
use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use tokio::sync::broadcast;

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
        let (tx, _) = broadcast::channel(BROADCAST_CAPACITY);
        EventHub { inner: Arc::new(Mutex::new(Ring { next_seq: 1, events: VecDeque::new() })), tx }
    }

    /// Record and publish an event; returns its sequence number.
    pub fn emit(&self, service: &str, operation: Option<u64>, kind: EventKind) -> u64 {
        let mut ring = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        let seq = ring.next_seq;
        ring.next_seq += 1;
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
