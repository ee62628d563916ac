//! The labels a color's Swarm service carries beyond the common `bg.*`
//! ones: the app port, and the service's traffic (active color and
//! weights) with a sequence number, so that every agent reading them (a
//! restarted one, or one on another node) takes the newest. Pure
//! encoding and decoding.

use crate::api::{Color, Weights};
use crate::runtime::Traffic;
use std::collections::HashMap;

/// The app port inside a task (`port`).
pub const APP_PORT: &str = "bg.port";
/// The active color, `blue` or `green`; absent before the first promote.
pub const ACTIVE: &str = "bg.active";
/// The weights, `blue/green` in percent, e.g. `90/10`.
pub const WEIGHTS: &str = "bg.weights";
/// When the agent wrote the traffic labels, in unix milliseconds: of two
/// services with traffic labels the newer one holds the truth.
pub const TRAFFIC_SEQ: &str = "bg.traffic.seq";

/// The prefix of the acknowledgement labels: `bg.seen.<agent id>` =
/// `<traffic seq>@<heartbeat, unix ms>`, one per agent serving the service.
pub const SEEN_PREFIX: &str = "bg.seen.";

/// What one agent acknowledged: the traffic it serves and when it last
/// said it was alive.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Seen {
    /// The newest traffic sequence it serves.
    pub seq: u64,
    /// Its last heartbeat, unix milliseconds.
    pub alive_at: u64,
}

/// Write agent `id`'s acknowledgement into `labels`.
pub fn put_seen(labels: &mut HashMap<String, String>, id: &str, seen: Seen) {
    labels.insert(format!("{SEEN_PREFIX}{id}"), format!("{}@{}", seen.seq, seen.alive_at));
}

/// Drop the acknowledgements older than `before` (unix ms): agents gone
/// for good.
pub fn prune_seen(labels: &mut HashMap<String, String>, before: u64) {
    labels.retain(|k, v| !k.starts_with(SEEN_PREFIX) || parse_seen(v).is_some_and(|s| s.alive_at >= before));
}

fn parse_seen(v: &str) -> Option<Seen> {
    let (seq, at) = v.split_once('@')?;
    Some(Seen { seq: seq.parse().ok()?, alive_at: at.parse().ok()? })
}

/// Every agent's acknowledgement among several services' labels, the
/// newest per agent.
pub fn seen<'a>(all: impl IntoIterator<Item = &'a HashMap<String, String>>) -> HashMap<String, Seen> {
    let mut out: HashMap<String, Seen> = HashMap::new();
    for labels in all {
        for (k, v) in labels {
            let (Some(id), Some(s)) = (k.strip_prefix(SEEN_PREFIX), parse_seen(v)) else { continue };
            let e = out.entry(id.to_string()).or_insert(s);
            e.seq = e.seq.max(s.seq);
            e.alive_at = e.alive_at.max(s.alive_at);
        }
    }
    out
}

/// The live agents (a heartbeat since `live_since`, unix ms) other than
/// `me` that do not serve `seq` yet, sorted.
pub fn lagging(seen: &HashMap<String, Seen>, me: &str, seq: u64, live_since: u64) -> Vec<String> {
    let mut out: Vec<String> = seen
        .iter()
        .filter(|(id, s)| id.as_str() != me && s.alive_at >= live_since && s.seq < seq)
        .map(|(id, _)| id.clone())
        .collect();
    out.sort();
    out
}

/// Write `traffic` with sequence `seq` into `labels`.
pub fn put_traffic(labels: &mut HashMap<String, String>, traffic: Traffic, seq: u64) {
    match traffic.active {
        Some(c) => labels.insert(ACTIVE.to_string(), c.to_string()),
        None => labels.remove(ACTIVE),
    };
    match traffic.weights {
        Some(w) => labels.insert(WEIGHTS.to_string(), format!("{}/{}", w.blue, w.green)),
        None => labels.remove(WEIGHTS),
    };
    labels.insert(TRAFFIC_SEQ.to_string(), seq.to_string());
}

/// The traffic in `labels` and its sequence, where they hold one.
pub fn traffic_of(labels: &HashMap<String, String>) -> Option<(u64, Traffic)> {
    let seq = labels.get(TRAFFIC_SEQ)?.parse().ok()?;
    let active = match labels.get(ACTIVE) {
        Some(c) => Some(c.parse::<Color>().ok()?),
        None => None,
    };
    let weights = match labels.get(WEIGHTS) {
        Some(w) => {
            let (b, g) = w.split_once('/')?;
            let (blue, green) = (b.parse().ok()?, g.parse().ok()?);
            (u16::from(blue) + u16::from(green) == 100).then_some(Weights { blue, green })?.into()
        }
        None => None,
    };
    Some((seq, Traffic { active, weights }))
}

/// The newest traffic among several services' labels.
pub fn newest<'a>(all: impl IntoIterator<Item = &'a HashMap<String, String>>) -> Option<Traffic> {
    newest_seq(all).map(|(_, t)| t)
}

/// The newest traffic among several services' labels, with its sequence.
pub fn newest_seq<'a>(all: impl IntoIterator<Item = &'a HashMap<String, String>>) -> Option<(u64, Traffic)> {
    all.into_iter().filter_map(traffic_of).max_by_key(|(seq, _)| *seq)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn traffic_round_trips_and_the_newest_wins() {
        let mut a = HashMap::new();
        let canary = Traffic { active: Some(Color::Blue), weights: Some(Weights { blue: 90, green: 10 }) };
        put_traffic(&mut a, canary, 5);
        assert_eq!(a[WEIGHTS], "90/10");
        assert_eq!(traffic_of(&a), Some((5, canary)));
        let mut b = HashMap::new();
        let promoted = Traffic { active: Some(Color::Green), weights: Some(Weights::all_to(Color::Green)) };
        put_traffic(&mut b, promoted, 9);
        assert_eq!(newest([&a, &b]), Some(promoted));
        assert_eq!(newest([&HashMap::new()]), None);
    }

    #[test]
    fn acknowledgements_merge_and_only_live_laggards_count() {
        let mut a = HashMap::new();
        put_seen(&mut a, "n1.aa", Seen { seq: 10, alive_at: 1_000 });
        put_seen(&mut a, "n1.bb", Seen { seq: 5, alive_at: 1_000 });
        put_seen(&mut a, "n2.dead", Seen { seq: 1, alive_at: 10 });
        let mut b = HashMap::new();
        put_seen(&mut b, "n1.bb", Seen { seq: 9, alive_at: 900 });
        let all = seen([&a, &b]);
        assert_eq!(all["n1.bb"], Seen { seq: 9, alive_at: 1_000 });
        assert_eq!(lagging(&all, "n1.aa", 10, 500), vec!["n1.bb".to_string()]);
        assert!(lagging(&all, "n1.aa", 9, 500).is_empty());
        prune_seen(&mut a, 500);
        assert!(!a.contains_key("bg.seen.n2.dead") && a.contains_key("bg.seen.n1.aa"));
    }

    #[test]
    fn bad_labels_are_no_traffic() {
        let mut l = HashMap::from([(TRAFFIC_SEQ.to_string(), "1".to_string())]);
        l.insert(WEIGHTS.into(), "60/60".into());
        assert_eq!(traffic_of(&l), None);
        l.insert(WEIGHTS.into(), "60/40".into());
        l.insert(ACTIVE.into(), "red".into());
        assert_eq!(traffic_of(&l), None);
    }
}
