//! Values that are parsed once, where a request or a config is read: a
//! duration, the rolling order, what a failure does, an operation's step.

use serde::{Deserialize, Deserializer, Serialize, Serializer};
use std::fmt;
use std::time::Duration;

/// Longest duration a config key or an API field may hold (365 days). A
/// longer one is a typo, and one near `u64::MAX` seconds would overflow
/// the clock arithmetic of the timers it feeds.
pub const MAX_DURATION: Duration = Duration::from_secs(365 * 24 * 3600);

/// A duration on the wire, written in humantime form (`"30s"`, `"1m 30s"`).
/// Reading one refuses text that is not a duration and anything longer
/// than [`MAX_DURATION`], with a message that names the value.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Default, Hash)]
pub struct ApiDuration(pub Duration);

impl ApiDuration {
    /// Parse humantime text.
    pub fn parse(text: &str) -> Result<ApiDuration, String> {
        let d = humantime::parse_duration(text.trim())
            .map_err(|e| format!("{text:?} is not a duration ({e}); use e.g. \"30s\" or \"2m\""))?;
        if d > MAX_DURATION {
            return Err(format!(
                "{text:?} is longer than the maximum of {} days",
                MAX_DURATION.as_secs() / 86_400
            ));
        }
        Ok(ApiDuration(d))
    }
}

impl From<ApiDuration> for Duration {
    fn from(d: ApiDuration) -> Duration {
        d.0
    }
}

impl From<Duration> for ApiDuration {
    fn from(d: Duration) -> ApiDuration {
        ApiDuration(d)
    }
}

impl fmt::Display for ApiDuration {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", humantime::format_duration(self.0))
    }
}

impl std::str::FromStr for ApiDuration {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        ApiDuration::parse(s)
    }
}

impl Serialize for ApiDuration {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for ApiDuration {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = String::deserialize(d)?;
        ApiDuration::parse(&text).map_err(serde::de::Error::custom)
    }
}

/// The order of a rolling replacement.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum RollingOrder {
    /// Drain and stop the old replica, then start the new one.
    StopFirst,
    /// Start the new replica, wait until healthy, then drain and stop the old.
    StartFirst,
}

/// What to do when the monitor window (or a rolling batch) fails.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum FailureAction {
    /// Go back to the previous color or spec.
    Rollback,
    /// Stop where it is and wait for a human.
    Pause,
    /// Ignore and go on.
    Continue,
}

/// The step an operation is at (`OperationStatus::phase`, phase events).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Phase {
    /// Accepted, before its first step.
    Accepted,
    /// Starting replicas.
    Starting,
    /// Waiting for replicas to pass their health checks.
    Health,
    /// Moving traffic.
    Switching,
    /// Waiting for in-flight requests on the old replicas.
    Draining,
    /// Watching the new color after a switch (or a rolling batch).
    Monitor,
    /// Stopping old replicas.
    Stopping,
    /// Removing a candidate.
    Removing,
    /// Going back after a failure.
    RollingBack,
    /// Rolling back by deploying the previous spec again.
    Redeploying,
    /// At a canary step.
    Canary,
    /// Replacing a batch of a rolling update.
    Replacing,
    /// Waiting between rolling batches.
    Delay,
    /// Being resolved by an agent that started after a stop or crash.
    Recovering,
}

impl Phase {
    /// The wire name (`"rolling-back"`).
    pub fn as_str(self) -> &'static str {
        match self {
            Phase::Accepted => "accepted",
            Phase::Starting => "starting",
            Phase::Health => "health",
            Phase::Switching => "switching",
            Phase::Draining => "draining",
            Phase::Monitor => "monitor",
            Phase::Stopping => "stopping",
            Phase::Removing => "removing",
            Phase::RollingBack => "rolling-back",
            Phase::Redeploying => "redeploying",
            Phase::Canary => "canary",
            Phase::Replacing => "replacing",
            Phase::Delay => "delay",
            Phase::Recovering => "recovering",
        }
    }
}

impl fmt::Display for Phase {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_read_humantime_and_refuse_garbage_and_endless() {
        let d: ApiDuration = serde_json::from_str("\"1m 30s\"").unwrap();
        assert_eq!(d.0, Duration::from_secs(90));
        assert_eq!(serde_json::to_string(&d).unwrap(), "\"1m 30s\"");
        let e = serde_json::from_str::<ApiDuration>("\"soon\"").unwrap_err().to_string();
        assert!(e.contains("\"soon\" is not a duration"), "{e}");
        let e = serde_json::from_str::<ApiDuration>("\"18446744073709551615s\"").unwrap_err().to_string();
        assert!(e.contains("longer than the maximum"), "{e}");
        assert!(serde_json::from_str::<ApiDuration>("5").is_err());
    }

    #[test]
    fn phases_have_their_wire_names() {
        for p in [Phase::RollingBack, Phase::Health, Phase::Recovering] {
            assert_eq!(serde_json::to_value(p).unwrap(), p.as_str());
        }
        assert_eq!(
            serde_json::from_str::<RollingOrder>("\"start-first\"").unwrap(),
            RollingOrder::StartFirst
        );
        assert!(serde_json::from_str::<FailureAction>("\"explode\"").is_err());
    }
}
