//! Reading the agent's status JSON in assertions.

use serde_json::Value;

/// `(outcome, message)` of the service's last operation (`"none"` before
/// any).
pub fn outcome(status: &Value) -> (&str, &str) {
    (
        status["last_outcome"]["outcome"].as_str().unwrap_or("none"),
        status["last_outcome"]["message"].as_str().unwrap_or(""),
    )
}

/// The replicas of one color.
pub fn replicas(status: &Value, color: &str) -> Vec<Value> {
    status["colors"][color]["replicas"].as_array().cloned().unwrap_or_default()
}

/// How many replicas one color has.
pub fn replica_count(status: &Value, color: &str) -> usize {
    replicas(status, color).len()
}
