//! An in-memory [`ResultStore`]: for tests and for processes whose results need not
//! survive them. Not durable: the local executor uses [`super::FileResultStore`].
use super::store::{Recorded, ResultStore, StoreError};
use common::{Job, JobId, JobResult};
use std::collections::BTreeMap;
use std::sync::Mutex;

#[derive(Default)]
pub struct MemoryResultStore {
    entries: Mutex<BTreeMap<JobId, (JobResult, bool)>>,
    handed: Mutex<BTreeMap<JobId, Job>>,
}

impl MemoryResultStore {
    pub fn new() -> Self {
        Self::default()
    }

    /// Keep `job` for its sidecar to fetch by id and token (what job records do for the
    /// Kubernetes executor).
    pub fn hand(&self, job: Job) {
        self.handed.lock().expect("store lock").insert(job.id.clone(), job);
    }
}

impl ResultStore for MemoryResultStore {
    async fn record(&self, result: &JobResult) -> Result<Recorded, StoreError> {
        let mut entries = self.entries.lock().expect("store lock");
        Ok(match entries.get(&result.job_id) {
            Some((existing, _)) if existing.same_as(result) => Recorded::Duplicate,
            Some(_) => Recorded::Conflict,
            None => {
                entries.insert(result.job_id.clone(), (result.clone(), false));
                Recorded::Accepted
            }
        })
    }

    async fn pending(&self) -> Result<Vec<JobResult>, StoreError> {
        let entries = self.entries.lock().expect("store lock");
        Ok(entries.values().filter(|(_, delivered)| !delivered).map(|(r, _)| r.clone()).collect())
    }

    async fn mark_delivered(&self, id: &JobId) -> Result<(), StoreError> {
        let mut entries = self.entries.lock().expect("store lock");
        match entries.get_mut(id) {
            Some(e) => {
                e.1 = true;
                Ok(())
            }
            None => Err(StoreError::UnknownJob(id.clone())),
        }
    }

    async fn lookup(&self, id: &JobId) -> Result<Option<JobResult>, StoreError> {
        Ok(self.entries.lock().expect("store lock").get(id).map(|(r, _)| r.clone()))
    }

    async fn handed_job(&self, id: &JobId) -> Result<Option<Job>, StoreError> {
        Ok(self.handed.lock().expect("store lock").get(id).cloned())
    }
}
