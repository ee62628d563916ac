//! Placeholder: replaced by the health-check implementation at merge.
#![allow(missing_docs, dead_code)]
use crate::api::Health;
use crate::config::HealthConfig;
use crate::runtime::{ReplicaHandle, Runtime};
use std::net::SocketAddr;
use std::sync::Arc;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

#[derive(Debug, Clone, PartialEq)]
pub struct HealthReport {
    pub health: Health,
    pub reason: Option<String>,
    pub exited: bool,
}

pub struct HealthMonitor;

#[derive(Clone)]
pub struct HealthWatch {
    rx: watch::Receiver<HealthReport>,
}

impl HealthMonitor {
    pub fn spawn(
        _target: SocketAddr,
        _config: HealthConfig,
        _runtime: Arc<dyn Runtime>,
        _handle: ReplicaHandle,
        _cancel: CancellationToken,
    ) -> HealthWatch {
        todo!()
    }
}

impl HealthWatch {
    pub fn receiver(&self) -> watch::Receiver<HealthReport> {
        self.rx.clone()
    }
}
