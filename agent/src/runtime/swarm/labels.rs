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
    all.into_iter().filter_map(traffic_of).max_by_key(|(seq, _)| *seq).map(|(_, t)| t)
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
    fn bad_labels_are_no_traffic() {
        let mut l = HashMap::from([(TRAFFIC_SEQ.to_string(), "1".to_string())]);
        l.insert(WEIGHTS.into(), "60/60".into());
        assert_eq!(traffic_of(&l), None);
        l.insert(WEIGHTS.into(), "60/40".into());
        l.insert(ACTIVE.into(), "red".into());
        assert_eq!(traffic_of(&l), None);
    }
}
