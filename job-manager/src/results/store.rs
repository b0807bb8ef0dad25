//! The durable result store. The result API and the executors record results here;
//! the delivery loop hands pending ones to the broker. The local executor backs it with
//! files in its state directory, the Kubernetes executor with job records (custom
//! resources updated with resourceVersion preconditions), so a result survives the
//! replica that received it.
use common::{Job, JobId, JobResult};
use std::future::Future;

/// What recording a result did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Recorded {
    /// First result for the job: stored, pending delivery. The job token is consumed.
    Accepted,
    /// The same result was already recorded (a retried submission): nothing changed.
    Duplicate,
    /// A different result was already recorded: refused (the API answers 409).
    Conflict,
}

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("result store unavailable: {0}")]
    Unavailable(String),
    #[error("unknown job {0}")]
    UnknownJob(JobId),
}

pub trait ResultStore: Send + Sync + 'static {
    /// Atomically record the first result for a job (first writer wins, across replicas).
    fn record(&self, result: &JobResult) -> impl Future<Output = Result<Recorded, StoreError>> + Send;
    /// Results recorded but not yet accepted by the broker.
    fn pending(&self) -> impl Future<Output = Result<Vec<JobResult>, StoreError>> + Send;
    /// The broker accepted (or conclusively refused) the result: stop retrying it.
    fn mark_delivered(&self, id: &JobId) -> impl Future<Output = Result<(), StoreError>> + Send;
    /// The result recorded for a job, if any (delivered or not). The dispatcher uses it
    /// to acknowledge a re-delivered job that already has its outcome instead of running
    /// it again. The default answers "unknown" (`None`): a store that cannot look results
    /// up loses only that shortcut, because `record` still keeps the first outcome.
    fn lookup(&self, id: &JobId) -> impl Future<Output = Result<Option<JobResult>, StoreError>> + Send {
        let _ = id;
        async { Ok(None) }
    }
    /// The job handed to a sidecar by id and token only (the Kubernetes executor keeps
    /// it on the job record; `GET /internal/v1/jobs/{id}`). The default holds none: the
    /// local executor hands its sidecars a job directory instead.
    fn handed_job(&self, id: &JobId) -> impl Future<Output = Result<Option<Job>, StoreError>> + Send {
        let _ = id;
        async { Ok(None) }
    }
    /// `Err(reason)` while the store cannot durably take results (a full disk, a failed
    /// write); `/readyz` says the reason. Records then fail retryably, and a store that
    /// heals itself clears it. The default is always healthy.
    fn health(&self) -> Result<(), String> {
        Ok(())
    }
    /// The store's own metric families, exported beside the job manager's.
    fn register_metrics(&self, registry: &mut prometheus_client::registry::Registry) {
        let _ = registry;
    }
}
