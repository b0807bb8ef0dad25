//! The job manager: polls a broker for jobs and runs each one in a runtime workload
//! beside a sidecar, then carries the result back to the broker.
//!
//! The pipeline, wired in [`app`]:
//! ```text
//! broker --poll--> Dispatcher --start--> Executor (local | kubernetes)
//!                      |  ack only after the executor accepted; release on failure
//! sidecar --POST result--> server (result API) --record--> ResultIntake/ResultStore --deliver--> broker
//! ```
//! Pure translation (config, job -> objects, decisions) lives in plain functions; I/O
//! lives at the edges (broker client, executors, HTTP server).
#![forbid(unsafe_code)]
#![deny(rust_2018_idioms)]

pub mod app;
pub mod backend;
pub mod broker;
pub mod cli;
pub mod config;
pub mod demo;
pub mod dispatcher;
pub mod metrics;
pub mod readiness;
pub mod results;
pub mod telemetry;
