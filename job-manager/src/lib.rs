//! The job manager: polls a broker for jobs and runs each one in a runtime workload
//! beside a sidecar, then carries the result back to the broker.
//!
//! The pipeline, wired once in [`app`] (the composition root); [`commands`] only chooses a
//! broker and a [`backend`]:
//! ```text
//! broker --poll--> Dispatcher --start--> Executor (backend: local | kubernetes)
//!                      |  ack only after the executor accepted; release on failure
//! sidecar --POST result--> results::api --record--> ResultIntake/ResultStore --deliver--> broker
//! ```
//! Pure translation (config, job -> objects, decisions) lives in plain functions; I/O
//! lives at the edges (broker client, executors, HTTP server).

pub mod app;
pub mod backend;
pub mod broker;
pub mod check;
pub mod cli;
pub mod clock;
pub mod commands;
pub mod config;
pub mod demo;
pub mod dispatcher;
pub mod log_throttle;
pub mod metrics;
pub mod readiness;
pub mod results;
pub mod serve;
pub mod telemetry;
