//! In-memory fakes of the two boundaries the dispatcher and delivery loop talk to, for
//! unit tests here and in other modules: a [`FakeBroker`] that records every call and
//! can be switched down, and a [`FakeExecutor`] with scriptable hand-off failures.
//! Compiled for unit tests only (`cfg(test)`), so none of it ships in the binary.
use crate::backend::{Accepted, Executor, Handoff, HandoffError, StateError};
use crate::broker::{BrokerApi, BrokerError, PolledBatch, SubmitOutcome, UnreadableJob};
use common::broker::{AckRequest, PollRequest, QueueStats, ReleaseRequest};
use common::{Job, JobId, JobResult};
use std::collections::{BTreeMap, VecDeque};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;
use std::time::Duration;

/// One call the fake broker received.
#[derive(Debug, Clone, PartialEq)]
pub enum BrokerCall {
    Poll(PollRequest),
    Ack(JobId, u32),
    Release(JobId, String),
    Result(JobResult),
    Stats,
}

#[derive(Default)]
pub struct FakeBroker {
    queue: Mutex<VecDeque<Job>>,
    /// Handed out, whatever the demands, with the next poll.
    unreadable: Mutex<Vec<UnreadableJob>>,
    /// The next poll fails with this (e.g. an unreadable answer).
    poll_error: Mutex<Option<BrokerError>>,
    calls: Mutex<Vec<BrokerCall>>,
    results: Mutex<BTreeMap<JobId, JobResult>>,
    down: AtomicBool,
    /// Misbehave: hand out every queued job whatever the demands say.
    ignore_demands: AtomicBool,
}

impl FakeBroker {
    pub fn set_ignore_demands(&self, yes: bool) {
        self.ignore_demands.store(yes, Ordering::SeqCst);
    }
    pub fn new() -> Self {
        Self::default()
    }
    pub fn push(&self, job: Job) {
        self.queue.lock().unwrap().push_back(job);
    }
    /// The next poll answers `u` among its jobs, as a broker that sent it malformed.
    pub fn push_unreadable(&self, u: UnreadableJob) {
        self.unreadable.lock().unwrap().push(u);
    }
    /// The next poll fails with `e`.
    pub fn fail_next_poll(&self, e: BrokerError) {
        *self.poll_error.lock().unwrap() = Some(e);
    }
    pub fn set_down(&self, down: bool) {
        self.down.store(down, Ordering::SeqCst);
    }
    pub fn calls(&self) -> Vec<BrokerCall> {
        self.calls.lock().unwrap().clone()
    }
    pub fn results(&self) -> BTreeMap<JobId, JobResult> {
        self.results.lock().unwrap().clone()
    }
    pub fn acks(&self) -> Vec<JobId> {
        self.calls().into_iter().filter_map(|c| if let BrokerCall::Ack(id, _) = c { Some(id) } else { None }).collect()
    }
    pub fn releases(&self) -> Vec<JobId> {
        self.calls()
            .into_iter()
            .filter_map(|c| if let BrokerCall::Release(id, _) = c { Some(id) } else { None })
            .collect()
    }
    fn log(&self, c: BrokerCall) -> Result<(), BrokerError> {
        if self.down.load(Ordering::SeqCst) {
            return Err(BrokerError::Unreachable("fake broker is down".into()));
        }
        self.calls.lock().unwrap().push(c);
        Ok(())
    }
}

impl BrokerApi for FakeBroker {
    async fn poll(&self, req: &PollRequest) -> Result<PolledBatch, BrokerError> {
        self.log(BrokerCall::Poll(req.clone()))?;
        if let Some(e) = self.poll_error.lock().unwrap().take() {
            return Err(e);
        }
        let mut q = self.queue.lock().unwrap();
        let mut jobs = Vec::new();
        if self.ignore_demands.load(Ordering::SeqCst) {
            jobs.extend(q.drain(..));
        }
        for d in &req.demands {
            let mut taken = 0;
            let mut rest = VecDeque::new();
            while let Some(j) = q.pop_front() {
                if j.runtime_type == d.runtime_type && taken < d.max {
                    taken += 1;
                    jobs.push(j);
                } else {
                    rest.push_back(j);
                }
            }
            *q = rest;
        }
        Ok(PolledBatch {
            jobs,
            unreadable: std::mem::take(&mut *self.unreadable.lock().unwrap()),
            visibility_timeout_secs: Some(30),
        })
    }
    async fn ack(&self, id: &JobId, req: &AckRequest) -> Result<(), BrokerError> {
        self.log(BrokerCall::Ack(id.clone(), req.attempt))
    }
    async fn release(&self, id: &JobId, req: &ReleaseRequest) -> Result<(), BrokerError> {
        self.log(BrokerCall::Release(id.clone(), req.reason.clone()))
    }
    async fn submit_result(&self, result: &JobResult) -> Result<SubmitOutcome, BrokerError> {
        self.log(BrokerCall::Result(result.clone()))?;
        let mut results = self.results.lock().unwrap();
        match results.get(&result.job_id) {
            Some(r) if r.same_as(result) => Ok(SubmitOutcome::Accepted),
            Some(_) => Ok(SubmitOutcome::Conflict),
            None => {
                results.insert(result.job_id.clone(), result.clone());
                Ok(SubmitOutcome::Accepted)
            }
        }
    }
    async fn queue_stats(&self) -> Result<QueueStats, BrokerError> {
        self.log(BrokerCall::Stats)?;
        let q = self.queue.lock().unwrap();
        let mut by = BTreeMap::new();
        for j in q.iter() {
            *by.entry(j.runtime_type.clone()).or_insert(0u64) += 1;
        }
        Ok(QueueStats { depth: q.len() as u64, depth_by_runtime: by, oldest_age_secs: 0.0 })
    }
}

/// An executor whose jobs "run" until [`FakeExecutor::finish`] is called.
#[derive(Default)]
pub struct FakeExecutor {
    running: Mutex<BTreeMap<JobId, String>>,
    started: Mutex<Vec<JobId>>,
    /// Failures to return from the next `start` calls, in order.
    failures: Mutex<VecDeque<HandoffError>>,
    /// Also fail every call (until cleared).
    always_fail: AtomicBool,
    pub start_delay: Mutex<Duration>,
    /// When set, `in_flight` fails with it (the executor's state cannot be read).
    pub state_error: Mutex<Option<String>>,
}

impl FakeExecutor {
    pub fn new() -> Self {
        Self::default()
    }
    pub fn fail_next(&self, e: HandoffError) {
        self.failures.lock().unwrap().push_back(e);
    }
    pub fn fail_always(&self, yes: bool) {
        self.always_fail.store(yes, Ordering::SeqCst);
    }
    pub fn finish(&self, id: &JobId) {
        self.running.lock().unwrap().remove(id);
    }
    /// Every job `start` created a workload for, in order.
    pub fn started(&self) -> Vec<JobId> {
        self.started.lock().unwrap().clone()
    }
    pub fn running(&self) -> usize {
        self.running.lock().unwrap().len()
    }
}

impl Executor for FakeExecutor {
    fn name(&self) -> &'static str {
        "fake"
    }
    async fn start(&self, handoff: Handoff) -> Result<Accepted, HandoffError> {
        let delay = *self.start_delay.lock().unwrap();
        if !delay.is_zero() {
            tokio::time::sleep(delay).await;
        }
        if self.always_fail.load(Ordering::SeqCst) {
            return Err(HandoffError::Transient("scripted: always failing".into()));
        }
        if let Some(e) = self.failures.lock().unwrap().pop_front() {
            return Err(e);
        }
        let mut running = self.running.lock().unwrap();
        if running.contains_key(&handoff.job.id) {
            return Ok(Accepted::AlreadyRunning);
        }
        running.insert(handoff.job.id.clone(), handoff.job.runtime_type.clone());
        self.started.lock().unwrap().push(handoff.job.id.clone());
        Ok(Accepted::Started)
    }
    async fn in_flight(&self) -> Result<BTreeMap<String, Vec<JobId>>, StateError> {
        if let Some(e) = self.state_error.lock().unwrap().clone() {
            return Err(StateError(e));
        }
        let mut out: BTreeMap<String, Vec<JobId>> = BTreeMap::new();
        for (id, rt) in self.running.lock().unwrap().iter() {
            out.entry(rt.clone()).or_default().push(id.clone());
        }
        Ok(out)
    }
    async fn drain(&self, _grace: Duration) -> Vec<JobId> {
        self.running.lock().unwrap().keys().cloned().collect()
    }
}

/// Log lines written while the returned guard lives (this thread only), as plain text.
#[derive(Clone, Default)]
pub struct LogCapture(std::sync::Arc<Mutex<Vec<u8>>>);

impl LogCapture {
    /// Capture INFO and above on this thread until the guard drops.
    pub fn install() -> (LogCapture, tracing::subscriber::DefaultGuard) {
        let capture = LogCapture::default();
        let writer = capture.clone();
        let subscriber = tracing_subscriber::fmt()
            .with_ansi(false)
            .without_time()
            .with_max_level(tracing::Level::INFO)
            .with_writer(move || writer.clone())
            .finish();
        (capture, tracing::subscriber::set_default(subscriber))
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.0.lock().unwrap()).into_owned()
    }
}

impl std::io::Write for LogCapture {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}
