//! The one way a result enters the job manager, whoever produced it: the result API
//! (a sidecar), or an executor that detected a timeout, a crash or a rejection. Recording
//! is first-wins; a newly accepted result is queued for this process's delivery loop
//! (delivered without re-reading the store) and wakes it.
use super::store::{Recorded, ResultStore, StoreError};
use crate::metrics::Metrics;
use common::{JobId, JobResult};
use std::sync::{Arc, Mutex};
use tokio::sync::Notify;

pub struct ResultIntake<S> {
    store: Arc<S>,
    kick: Arc<Notify>,
    /// Results this process accepted and has not handed to the delivery loop yet.
    fresh: Arc<Mutex<Vec<JobResult>>>,
    metrics: Arc<Metrics>,
}

impl<S> Clone for ResultIntake<S> {
    fn clone(&self) -> Self {
        Self {
            store: self.store.clone(),
            kick: self.kick.clone(),
            fresh: self.fresh.clone(),
            metrics: self.metrics.clone(),
        }
    }
}

impl<S: ResultStore> ResultIntake<S> {
    pub fn new(store: S, metrics: Arc<Metrics>) -> Self {
        Self { store: Arc::new(store), kick: Arc::new(Notify::new()), fresh: Arc::default(), metrics }
    }

    /// The results accepted here since the last call, oldest first (the delivery loop).
    pub fn take_fresh(&self) -> Vec<JobResult> {
        std::mem::take(&mut *self.fresh.lock().expect("fresh lock"))
    }

    /// The ids of the results waiting in the fresh queue.
    pub fn fresh_ids(&self) -> std::collections::HashSet<JobId> {
        self.fresh.lock().expect("fresh lock").iter().map(|r| r.job_id.clone()).collect()
    }

    /// Put back results the delivery loop could not hand over yet, ahead of newer ones.
    pub fn requeue_fresh(&self, mut results: Vec<JobResult>) {
        let mut fresh = self.fresh.lock().expect("fresh lock");
        results.append(&mut fresh);
        *fresh = results;
    }

    /// Record a result (first wins) and, when it is new, wake the delivery loop.
    pub async fn record(&self, result: &JobResult) -> Result<Recorded, StoreError> {
        let recorded = self.store.record(result).await?;
        match recorded {
            Recorded::Accepted => {
                tracing::info!(job_id = %result.job_id, outcome = %result.outcome, message = %result.message, "result recorded");
                self.metrics.record_outcome(result.outcome);
                self.metrics.results_pending.inc();
                self.fresh.lock().expect("fresh lock").push(result.clone());
                self.kick.notify_one();
            }
            Recorded::Duplicate => tracing::debug!(job_id = %result.job_id, "identical result recorded again"),
            Recorded::Conflict => tracing::info!(
                job_id = %result.job_id,
                outcome = %result.outcome,
                "a different result was already recorded for this job; keeping the first"
            ),
        }
        Ok(recorded)
    }

    /// Send a recorded result to the broker again (it re-delivered the finished job, so
    /// it may not hold the result). Queued for the delivery loop unless already queued;
    /// counted pending until delivered (a later sweep recounts from the store).
    pub fn resubmit(&self, result: JobResult) {
        {
            let mut fresh = self.fresh.lock().expect("fresh lock");
            if fresh.iter().any(|r| r.job_id == result.job_id) {
                return;
            }
            fresh.push(result);
        }
        self.metrics.results_resubmitted.inc();
        self.metrics.results_pending.inc();
        self.kick.notify_one();
    }

    pub async fn lookup(&self, id: &JobId) -> Result<Option<JobResult>, StoreError> {
        self.store.lookup(id).await
    }

    pub async fn handed_job(&self, id: &JobId) -> Result<Option<common::Job>, StoreError> {
        self.store.handed_job(id).await
    }

    pub fn store(&self) -> &Arc<S> {
        &self.store
    }

    pub fn metrics(&self) -> &Arc<Metrics> {
        &self.metrics
    }

    /// Woken whenever a new result is recorded.
    pub fn kicked(&self) -> Arc<Notify> {
        self.kick.clone()
    }
}
