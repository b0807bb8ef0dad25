//! The embedded broker: an in-process implementation of broker API v1 (see
//! `common::broker`), selected by default in local mode, and the fake broker every test
//! drives. The queue logic is the pure [`queue::BrokerQueue`]; this module adds the shared
//! handle, job submission (files, HTTP admin API), a call log, per-job counters and,
//! with the `test-support` feature, fault injection; [`server`] serves it over HTTP.
//!
//! Admin endpoints (same bearer key as the broker API):
//! `POST /admin/v1/jobs` (a `Job`; 201, 409 duplicate), `GET /admin/v1/counters` (per-job
//! delivery counters, keyed by job id), `GET /admin/v1/results`
//! (object keyed by job id), `GET /admin/v1/results/{id}` (a `JobResult`, 404 until known).
// Only tests stand the embedded broker in for a flaky remote one: no flag or endpoint
// reaches the fault plan, so it stays out of the release binary.
#[cfg(feature = "test-support")]
pub mod faults;
pub mod queue;
mod server;

#[cfg(feature = "test-support")]
pub use faults::{Faults, Injected};
pub use queue::{BrokerQueue, JobCounters, JobState, QueueError};

use super::{BrokerApi, BrokerError, SubmitOutcome};
use common::broker::{AckRequest, PollRequest, PollResponse, QueueStats, ReleaseRequest};
use common::secret::Secret;
use common::{Job, JobId, JobResult};
use std::collections::{BTreeMap, VecDeque};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};
use tokio::sync::Notify;

/// How many call records the log keeps (the oldest are dropped first), so a long
/// benchmark run does not grow memory without bound.
pub const CALL_LOG_CAPACITY: usize = 100_000;

/// Status recorded for a request that got no answer (hang, down).
pub const NO_ANSWER: u16 = 0;

#[derive(Clone, Debug)]
pub struct EmbeddedOptions {
    /// How long a polled job stays invisible before it is re-delivered unless acked.
    pub visibility_timeout: Duration,
    /// The bearer key callers must present.
    pub location_key: Secret,
}

#[derive(Debug, thiserror::Error)]
pub enum SubmitError {
    #[error("job {0} was already submitted")]
    Duplicate(JobId),
    #[error("cannot read {path}: {source}")]
    Read { path: PathBuf, source: std::io::Error },
    #[error("{path} is not a job: {source}")]
    Parse { path: PathBuf, source: serde_json::Error },
}

impl SubmitError {
    pub fn label(&self) -> &'static str {
        match self {
            SubmitError::Duplicate(_) => "duplicate",
            SubmitError::Read { .. } => "read",
            SubmitError::Parse { .. } => "parse",
        }
    }
}

/// One request the broker saw.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CallRecord {
    pub method: String,
    pub path: String,
    /// The job the request was about, when its path names one.
    pub job_id: Option<JobId>,
    /// The status answered, or [`NO_ANSWER`].
    pub status: u16,
}

type Clock = Arc<dyn Fn() -> Instant + Send + Sync>;

struct Inner {
    queue: BrokerQueue,
    calls: VecDeque<CallRecord>,
    calls_dropped: u64,
}

/// Shared handle; clones see the same queue.
#[derive(Clone)]
pub struct EmbeddedBroker {
    inner: Arc<Mutex<Inner>>,
    location_key: Secret,
    clock: Clock,
    #[cfg(feature = "test-support")]
    faults: Faults,
    /// Woken whenever a result is stored, for [`EmbeddedBroker::wait_for_results`].
    result_stored: Arc<Notify>,
}

impl std::fmt::Debug for EmbeddedBroker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EmbeddedBroker").finish_non_exhaustive()
    }
}

impl EmbeddedBroker {
    pub fn new(opts: EmbeddedOptions) -> Self {
        Self::with_clock(opts, Arc::new(Instant::now))
    }

    /// A broker reading time from `clock` (tests: a fake clock to expire leases at will).
    pub fn with_clock(opts: EmbeddedOptions, clock: Arc<dyn Fn() -> Instant + Send + Sync>) -> Self {
        Self {
            inner: Arc::new(Mutex::new(Inner {
                queue: BrokerQueue::new(opts.visibility_timeout),
                calls: VecDeque::new(),
                calls_dropped: 0,
            })),
            location_key: opts.location_key,
            clock,
            #[cfg(feature = "test-support")]
            faults: Faults::default(),
            result_stored: Arc::new(Notify::new()),
        }
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        // A panic while holding the lock cannot leave the queue half-updated in a way
        // worse than refusing all further calls would, so keep serving.
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn now(&self) -> Instant {
        (self.clock)()
    }

    pub fn submit(&self, job: Job) -> Result<(), SubmitError> {
        let now = self.now();
        self.lock().queue.submit(job, now).map_err(|e| match e {
            QueueError::Duplicate(id) => SubmitError::Duplicate(id),
            other => unreachable!("submit only fails with Duplicate, got {other}"),
        })
    }

    /// Submit every `*.json` file of `dir` (not recursive, in file-name order), each a
    /// `common::Job`. All files are read and parsed before any is submitted, so a bad file
    /// submits nothing.
    pub fn load_dir(&self, dir: &Path) -> Result<usize, SubmitError> {
        let read_err = |path: &Path| {
            let path = path.to_path_buf();
            move |source| SubmitError::Read { path, source }
        };
        let mut paths = Vec::new();
        for entry in std::fs::read_dir(dir).map_err(read_err(dir))? {
            let path = entry.map_err(read_err(dir))?.path();
            if path.extension().is_some_and(|e| e == "json") && path.is_file() {
                paths.push(path);
            }
        }
        paths.sort();
        let mut jobs = Vec::with_capacity(paths.len());
        for path in paths {
            let text = std::fs::read_to_string(&path).map_err(read_err(&path))?;
            let job: Job = serde_json::from_str(&text).map_err(|source| SubmitError::Parse { path, source })?;
            jobs.push(job);
        }
        let now = self.now();
        let mut inner = self.lock();
        let mut seen = std::collections::BTreeSet::new();
        for job in &jobs {
            if !seen.insert(job.id.clone()) || inner.queue.state(&job.id).is_some() {
                return Err(SubmitError::Duplicate(job.id.clone()));
            }
        }
        let n = jobs.len();
        for job in jobs {
            inner.queue.submit(job, now).expect("duplicates checked above");
        }
        Ok(n)
    }

    pub fn result(&self, id: &JobId) -> Option<JobResult> {
        self.lock().queue.result(id)
    }

    pub fn results(&self) -> BTreeMap<JobId, JobResult> {
        self.lock().queue.results()
    }

    /// How many jobs have a result.
    pub fn result_count(&self) -> usize {
        self.lock().queue.result_count()
    }

    pub fn stats(&self) -> QueueStats {
        let now = self.now();
        self.lock().queue.stats(now)
    }

    pub fn state(&self, id: &JobId) -> Option<JobState> {
        self.lock().queue.state(id)
    }

    /// Per-job counters: deliveries, acks, releases, results accepted/conflicting.
    pub fn counters(&self, id: &JobId) -> Option<JobCounters> {
        self.lock().queue.counters(id)
    }

    pub fn all_counters(&self) -> BTreeMap<JobId, JobCounters> {
        self.lock().queue.all_counters()
    }

    /// Every request seen over HTTP (the newest [`CALL_LOG_CAPACITY`]), oldest first.
    pub fn calls(&self) -> Vec<CallRecord> {
        self.lock().calls.iter().cloned().collect()
    }

    pub fn clear_calls(&self) {
        let mut inner = self.lock();
        inner.calls.clear();
        inner.calls_dropped = 0;
    }

    /// The fault plan applied to broker API requests served over HTTP.
    #[cfg(feature = "test-support")]
    pub fn faults(&self) -> Faults {
        self.faults.clone()
    }

    /// Wait until at least `n` results are stored, or `timeout`. Returns all results.
    pub async fn wait_for_results(&self, n: usize, timeout: Duration) -> BTreeMap<JobId, JobResult> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let notified = self.result_stored.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if self.result_count() >= n {
                return self.results();
            }
            if tokio::time::timeout_at(deadline, notified).await.is_err() {
                return self.results();
            }
        }
    }

    /// Wait until job `id` has a result, or `timeout`.
    pub async fn wait_for_result(&self, id: &JobId, timeout: Duration) -> Option<JobResult> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let notified = self.result_stored.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if let Some(r) = self.result(id) {
                return Some(r);
            }
            if tokio::time::timeout_at(deadline, notified).await.is_err() {
                return self.result(id);
            }
        }
    }

    /// Serve broker API v1 and the admin endpoints on `listener` until `shutdown`
    /// completes; then stop accepting and give open requests a moment to finish.
    pub async fn serve(
        self,
        listener: tokio::net::TcpListener,
        shutdown: impl std::future::Future<Output = ()> + Send + 'static,
    ) -> std::io::Result<()> {
        server::serve(self, listener, shutdown).await
    }

    // --- operations shared by the HTTP server and the in-process `BrokerApi` ---

    pub(crate) fn poll_jobs(&self, req: &PollRequest) -> PollResponse {
        let now = self.now();
        let mut inner = self.lock();
        let jobs = inner.queue.poll(req, now);
        let vt = inner.queue.visibility_timeout();
        PollResponse { jobs, visibility_timeout_secs: visibility_secs(vt) }
    }

    pub(crate) fn ack_job(&self, id: &JobId, req: &AckRequest) -> Result<(), QueueError> {
        let now = self.now();
        self.lock().queue.ack(id, &req.consumer, req.attempt, now)
    }

    pub(crate) fn release_job(&self, id: &JobId, req: &ReleaseRequest) -> Result<(), QueueError> {
        let now = self.now();
        let r = self.lock().queue.release(id, req.attempt, now);
        if r.is_ok() {
            tracing::info!(job_id = %id, consumer = %req.consumer, attempt = req.attempt, reason = %req.reason, "job released");
        }
        r
    }

    pub(crate) fn store_result(&self, result: JobResult) -> Result<(), QueueError> {
        let now = self.now();
        let r = self.lock().queue.submit_result(result, now);
        if r.is_ok() {
            self.result_stored.notify_waiters();
        }
        r
    }

    pub(crate) fn location_key(&self) -> &Secret {
        &self.location_key
    }

    pub(crate) fn record_call(&self, call: CallRecord) {
        let mut inner = self.lock();
        if inner.calls.len() >= CALL_LOG_CAPACITY {
            inner.calls.pop_front();
            inner.calls_dropped += 1;
        }
        inner.calls.push_back(call);
    }
}

/// The visibility timeout as the wire carries it: whole seconds, rounded up, at least 1.
fn visibility_secs(vt: Duration) -> u32 {
    let secs = vt.as_secs() + u64::from(vt.subsec_nanos() > 0);
    secs.clamp(1, u64::from(u32::MAX)) as u32
}

fn queue_error_to_broker(e: QueueError) -> BrokerError {
    match e {
        QueueError::NotFound(_) => BrokerError::NotFound,
        QueueError::LeaseLost { .. } => BrokerError::LeaseLost,
        QueueError::ResultConflict(_) | QueueError::Duplicate(_) => {
            BrokerError::Status { status: 409, message: e.to_string() }
        }
    }
}

/// In-process use without HTTP (no faults, no call log): handy where a test or the demo
/// wants the queue semantics without a socket.
impl BrokerApi for EmbeddedBroker {
    async fn poll(&self, req: &PollRequest) -> Result<super::PolledBatch, BrokerError> {
        Ok(self.poll_jobs(req).into())
    }

    async fn ack(&self, id: &JobId, req: &AckRequest) -> Result<(), BrokerError> {
        self.ack_job(id, req).map_err(queue_error_to_broker)
    }

    async fn release(&self, id: &JobId, req: &ReleaseRequest) -> Result<(), BrokerError> {
        self.release_job(id, req).map_err(queue_error_to_broker)
    }

    async fn submit_result(&self, result: &JobResult) -> Result<SubmitOutcome, BrokerError> {
        match self.store_result(result.clone()) {
            Ok(()) => Ok(SubmitOutcome::Accepted),
            Err(QueueError::ResultConflict(_)) => Ok(SubmitOutcome::Conflict),
            Err(e) => Err(queue_error_to_broker(e)),
        }
    }

    async fn queue_stats(&self) -> Result<QueueStats, BrokerError> {
        Ok(self.stats())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn visibility_secs_rounds_up() {
        assert_eq!(visibility_secs(Duration::from_millis(1)), 1);
        assert_eq!(visibility_secs(Duration::from_millis(1500)), 2);
        assert_eq!(visibility_secs(Duration::from_secs(30)), 30);
        assert_eq!(visibility_secs(Duration::ZERO), 1);
    }

    #[test]
    fn load_dir_submits_json_files_and_refuses_bad_ones() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().to_path_buf();
        std::fs::write(dir.join("b.json"), r#"{"id":"b","runtime_type":"rt","timeout_secs":1}"#).unwrap();
        std::fs::write(dir.join("a.json"), r#"{"id":"a","runtime_type":"rt","timeout_secs":1}"#).unwrap();
        std::fs::write(dir.join("notes.txt"), "not a job").unwrap();
        let broker = EmbeddedBroker::new(EmbeddedOptions {
            visibility_timeout: Duration::from_secs(5),
            location_key: Secret::new("k"),
        });
        assert_eq!(broker.load_dir(&dir).unwrap(), 2);
        assert_eq!(broker.stats().depth, 2);
        let err = broker.load_dir(&dir).unwrap_err();
        assert_eq!(err.label(), "duplicate");
        std::fs::write(dir.join("c.json"), r#"{"id":"c"}"#).unwrap();
        let err = broker.load_dir(&dir).unwrap_err();
        assert_eq!(err.label(), "parse");
        assert!(err.to_string().contains("c.json"), "{err}");
        tmp.close().unwrap();
        assert_eq!(broker.load_dir(&dir).unwrap_err().label(), "read");
    }
}
