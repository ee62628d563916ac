//! `bg-agent`: the per-host daemon of bluegreen. It starts colors of a
//! service through a [`runtime`], health-checks them, switches the embedded
//! `bg-proxy` atomically, drains and stops the old color, persists what it
//! did, and serves the control API that `bgctl` talks to.
//!
//! The wire types of the control API are the `bg-api` crate, re-exported
//! here as [`api`]; `bgctl` and the tests use the same types.
#![deny(unsafe_code)]

pub use bg_api as api;

#[cfg(feature = "daemon")]
pub mod acme;
#[cfg(feature = "daemon")]
pub mod auth_limit;
#[cfg(feature = "daemon")]
pub mod config;
#[cfg(feature = "daemon")]
pub mod control_tls;
#[cfg(feature = "daemon")]
pub mod controller;
#[cfg(feature = "daemon")]
pub mod daemon;
#[cfg(feature = "daemon")]
pub mod decode;
#[cfg(feature = "daemon")]
pub mod edge;
#[cfg(feature = "daemon")]
pub mod events;
#[cfg(feature = "daemon")]
pub mod handoff;
#[cfg(feature = "daemon")]
pub mod health;
#[cfg(feature = "daemon")]
pub mod image_ref;
#[cfg(feature = "daemon")]
pub mod listeners;
#[cfg(feature = "daemon")]
pub mod logging;
#[cfg(feature = "daemon")]
pub mod metrics;
#[cfg(feature = "daemon")]
pub mod reload;
#[cfg(feature = "daemon")]
pub mod resident;
#[cfg(feature = "daemon")]
pub mod runtime;
#[cfg(feature = "daemon")]
pub mod server;
#[cfg(feature = "daemon")]
pub mod signal;
#[cfg(feature = "daemon")]
pub mod state;
#[cfg(feature = "daemon")]
pub mod ui;
