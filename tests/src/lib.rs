//! Test harness for bluegreen's end-to-end tests and benchmarks: real
//! websample processes and images, a load generator, and (later) agents and
//! bgctl driven as real processes.
#![forbid(unsafe_code)]

pub mod load;
pub mod wait;
pub mod websample;
