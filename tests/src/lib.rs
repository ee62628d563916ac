//! Test harness for bluegreen's end-to-end tests and benchmarks: real
//! websample processes and images, a load generator, real agents and the
//! real `bgctl`.
#![forbid(unsafe_code)]

pub mod agent;
pub mod api;
pub mod bench;
pub mod bins;
pub mod browser;
pub mod certs;
pub mod docker;
pub mod load;
pub mod netns;
pub mod nspawn;
pub mod prom;
pub mod prometheus;
pub mod relay;
pub mod status;
pub mod swarm;
pub mod swarm_nodes;
pub mod tools;
pub mod wait;
pub mod websample;
