//! The protocol crate shared by `job-manager` and `sidecar`.
//!
//! Everything two processes must agree on lives here and nowhere else: the broker
//! wire types and paths ([`broker`]), the job and result types ([`job`]), header names
//! ([`headers`]), the runtime-facing local API and hand-off layout ([`runtime_api`]),
//! single-use job tokens ([`token`]), constant-time secret comparison ([`secret`]) and
//! retry backoff ([`backoff`]), and what a binary was built from ([`build_info`]). Little
//! I/O lives here: atomic file replacement ([`fs`]), which both processes use for the files
//! a crash must not leave half written, and the runtime side of the runtime contract
//! ([`runtime_client`]), which every runtime uses.

pub mod backoff;
pub mod broker;
pub mod build_info;
pub mod fs;
pub mod headers;
pub mod job;
pub mod logs;
pub mod metrics;
pub mod netlink;
pub mod pem;
pub mod runtime_api;
pub mod runtime_client;
pub mod secret;
pub mod token;

pub use job::{Job, JobId, JobResult, Outcome, WorkloadKind};
