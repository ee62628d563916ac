//! The one operation type: what is asked, where it is POSTed, with which
//! body. The agent's router builds it from a path and a decoded body;
//! `bgctl` builds it from its arguments and sends it.

use crate::{CanaryRequest, DeployRequest, OperationKind, RollingRequest, SpecOverrides};
use serde_json::Value;

/// An operation request on one service.
#[derive(Debug, Clone, PartialEq)]
pub enum Operation {
    /// Start the idle color (and maybe promote): `POST deploy`.
    Deploy(DeployRequest),
    /// Switch to the idle color: `POST promote`.
    Promote,
    /// Go back: `POST rollback`.
    Rollback,
    /// Stop what runs, or remove the candidate: `POST abort`.
    Abort,
    /// Weighted split or stepped analysis: `POST canary`.
    Canary(CanaryRequest),
    /// Replace replicas in batches: `POST rolling`.
    Rolling(RollingRequest),
    /// Take one replica out of rotation and drain it:
    /// `POST replicas/{id}/drain`.
    ReplicaDrain(String),
    /// Put one replica back in rotation: `POST replicas/{id}/enable`.
    ReplicaEnable(String),
    /// Replace one replica's spec: `POST replicas/{id}/update`.
    ReplicaUpdate(String, SpecOverrides),
}

impl Operation {
    /// The operation kind this request starts.
    pub fn kind(&self) -> OperationKind {
        match self {
            Operation::Deploy(_) => OperationKind::Deploy,
            Operation::Promote => OperationKind::Promote,
            Operation::Rollback => OperationKind::Rollback,
            Operation::Abort => OperationKind::Abort,
            Operation::Canary(_) => OperationKind::Canary,
            Operation::Rolling(_) => OperationKind::Rolling,
            Operation::ReplicaDrain(_) | Operation::ReplicaEnable(_) | Operation::ReplicaUpdate(..) => {
                OperationKind::Replica
            }
        }
    }

    /// The request path for `service`, segments percent-encoded.
    pub fn path(&self, service: &str) -> String {
        let base = format!("/v1/services/{}", encode_segment(service));
        match self {
            Operation::Deploy(_) => format!("{base}/deploy"),
            Operation::Promote => format!("{base}/promote"),
            Operation::Rollback => format!("{base}/rollback"),
            Operation::Abort => format!("{base}/abort"),
            Operation::Canary(_) => format!("{base}/canary"),
            Operation::Rolling(_) => format!("{base}/rolling"),
            Operation::ReplicaDrain(id) => format!("{base}/replicas/{}/drain", encode_segment(id)),
            Operation::ReplicaEnable(id) => format!("{base}/replicas/{}/enable", encode_segment(id)),
            Operation::ReplicaUpdate(id, _) => format!("{base}/replicas/{}/update", encode_segment(id)),
        }
    }

    /// The JSON body (`{}` for the operations without parameters).
    pub fn body(&self) -> Value {
        let body = match self {
            Operation::Deploy(r) => serde_json::to_value(r),
            Operation::Canary(r) => serde_json::to_value(r),
            Operation::Rolling(r) => serde_json::to_value(r),
            Operation::ReplicaUpdate(_, o) => serde_json::to_value(o),
            Operation::Promote
            | Operation::Rollback
            | Operation::Abort
            | Operation::ReplicaDrain(_)
            | Operation::ReplicaEnable(_) => Ok(Value::Object(Default::default())),
        };
        // Plain structs of strings, numbers and enums always serialize.
        body.unwrap_or_default()
    }
}

/// Percent-encode one path segment (RFC 3986 unreserved characters stay).
pub fn encode_segment(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{ApiDuration, RollingOrder};

    #[test]
    fn paths_and_bodies() {
        assert_eq!(Operation::Promote.path("web"), "/v1/services/web/promote");
        assert_eq!(
            Operation::ReplicaDrain("a b".into()).path("web"),
            "/v1/services/web/replicas/a%20b/drain"
        );
        assert_eq!(Operation::Abort.body(), serde_json::json!({}));
        let rolling = Operation::Rolling(RollingRequest {
            order: Some(RollingOrder::StartFirst),
            delay: Some(ApiDuration(std::time::Duration::from_secs(5))),
            ..RollingRequest::default()
        });
        assert_eq!(
            rolling.body(),
            serde_json::json!({"order": "start-first", "delay": "5s", "resume": false})
        );
        assert_eq!(rolling.kind(), OperationKind::Rolling);
    }
}
