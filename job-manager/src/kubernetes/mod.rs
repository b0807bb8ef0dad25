//! The Kubernetes executor: translation (job -> objects), job records, leases, pruning.
//!
//! ```text
//! translate   pure: job + config -> JobRecord + Secret + Job (ephemeral),
//!             Deployment + Service + HPA (persistent), runtime NetworkPolicy
//! record      the JobRecord CRD (durable per-job state, the result store's rows)
//! labels      every label/annotation key and derived object name
//! rbac        the exact API rights the code uses (the chart's Role must match)
//! cli         `render`, `crd`, `rbac` subcommands (no cluster needed)
//! ```
pub mod cache;
pub mod cli;
pub mod coordination;
pub mod diagnose;
pub mod events;
pub mod executor;
pub mod labels;
pub mod metrics;
pub mod rbac;
pub mod record;
pub mod run;
pub mod setup;
pub mod store;
pub mod translate;
