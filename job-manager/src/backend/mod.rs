//! The executor boundary: where a job becomes a running workload. The dispatcher only
//! talks to [`Executor`]; the local executor (processes) and the Kubernetes executor
//! (Jobs, persistent Services) slot in beside each other without touching it.
//!
//! Outcomes the executor detects itself (timeout, crash, a pod that cannot start) are
//! reported through the [`crate::results::ResultIntake`] it was built with: the same path
//! a sidecar's result takes, so the first outcome recorded for a job wins.
pub mod kubernetes;
pub mod local;
pub mod sidecar_env;

use common::{Job, JobId};
use std::collections::BTreeMap;
use std::future::Future;
use std::time::SystemTime;

/// Everything a runtime workload needs for one job.
#[derive(Debug, Clone)]
pub struct Handoff {
    pub job: Job,
    /// The single-use job token; only the sidecar may read it.
    pub token: String,
    /// When the job must be over (now + min(job timeout, check timeout)).
    pub deadline: SystemTime,
}

/// A successful hand-off: the dispatcher may ack.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Accepted {
    /// A new workload now exists for the job.
    Started,
    /// A workload for this job already exists (broker re-delivery, another replica):
    /// nothing new was started.
    AlreadyRunning,
}

/// Why a hand-off failed.
#[derive(Debug, thiserror::Error)]
pub enum HandoffError {
    /// The runtime pushed back (429, no capacity): retry later with backoff.
    #[error("runtime busy: {0}")]
    Busy(String),
    /// A transient failure (API 5xx/429/409, quota): retry with backoff, then release.
    #[error("transient hand-off failure: {0}")]
    Transient(String),
    /// Retrying cannot help (invalid object, unknown runtime type): release at once.
    #[error("hand-off failed: {0}")]
    Permanent(String),
}

impl HandoffError {
    pub fn label(&self) -> &'static str {
        match self {
            HandoffError::Busy(_) => "busy",
            HandoffError::Transient(_) => "transient",
            HandoffError::Permanent(_) => "permanent",
        }
    }
}

#[derive(Debug, thiserror::Error)]
#[error("executor state unavailable: {0}")]
pub struct StateError(pub String);

/// Runs jobs. Implementations must be idempotent per job id: starting a job whose
/// workload exists returns `Accepted::AlreadyRunning`.
pub trait Executor: Send + Sync + 'static {
    /// Stable name for logs and metrics (`local`, `kubernetes`).
    fn name(&self) -> &'static str;

    /// Create the workload for one job. Returns once it exists, so an ack is safe.
    fn start(&self, handoff: Handoff) -> impl Future<Output = Result<Accepted, HandoffError>> + Send;

    /// Jobs whose workloads currently run, per runtime type, derived from state that
    /// survives a restart (processes in the state dir, the cluster's objects) rather
    /// than an in-memory counter. The dispatcher sizes its polls from this.
    fn in_flight(&self) -> impl Future<Output = Result<BTreeMap<String, Vec<JobId>>, StateError>> + Send;

    /// Stop accepting work and wait (up to `grace`) for running workloads; return the
    /// jobs still running when the grace period ended.
    fn drain(&self, grace: std::time::Duration) -> impl Future<Output = Vec<JobId>> + Send;
}
