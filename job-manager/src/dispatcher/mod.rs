//! The dispatcher: a chain of small handlers, wired in one visible place ([`Dispatcher::tick`]):
//!
//! ```text
//! poll (limit: free capacity per runtime) -> dedupe -> VSE check -> schedule (hand-off,
//!   retries with backoff) -> ack | release
//! ```
//! Capacity comes from [`Executor::in_flight`] (state that survives a restart) plus the
//! hand-offs in progress here, never from a counter alone. A job is acked only after the
//! executor accepted it, and released when it could not be handed off; a job rejected by
//! VSE gets a `rejected` result through the same [`ResultIntake`] as every other result.
pub mod dedupe;
#[cfg(test)]
pub mod fakes;
pub mod limit;
pub mod stall;
pub mod vse;

use crate::backend::{Accepted, Executor, Handoff, HandoffError};
use crate::broker::{BrokerApi, BrokerError};
use crate::readiness::Readiness;
use crate::results::{ResultIntake, ResultStore};
use common::backoff::Backoff;
use common::broker::{AckRequest, PollRequest, ReleaseRequest};
use common::secret::Secret;
use common::token::TokenSigner;
use common::{Job, JobId, JobResult, Outcome};
use dedupe::Seen;
pub use limit::RuntimeLimit;
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::Instrument;

#[derive(Clone, Debug)]
pub struct DispatcherSettings {
    /// Identifies this replica to the broker.
    pub consumer: String,
    pub runtimes: Vec<RuntimeLimit>,
    pub batch_size: u32,
    pub poll_interval: Duration,
    /// Upper bound of any job's run time (`checkTimeout`).
    pub check_timeout_secs: u32,
    /// How long a job token outlives the job's deadline: the sidecar keeps retrying a
    /// result after the runtime is done.
    pub token_slack: Duration,
    pub handoff_backoff: Backoff,
    /// Hand-off attempts before the job is released.
    pub handoff_attempts: u32,
    pub vse_passphrase: Option<Secret>,
    /// Jobs waiting + capacity free + nothing dispatched for this long = stalled.
    pub stall_after: Duration,
    /// How often queue stats are read (metrics and stall detection).
    pub stats_interval: Duration,
}

impl DispatcherSettings {
    pub fn new(consumer: impl Into<String>, runtimes: Vec<RuntimeLimit>) -> Self {
        Self {
            consumer: consumer.into(),
            runtimes,
            batch_size: 10,
            poll_interval: Duration::from_secs(1),
            check_timeout_secs: 180,
            token_slack: Duration::from_secs(15 * 60),
            handoff_backoff: Backoff::new(Duration::from_millis(200), Duration::from_secs(10)),
            handoff_attempts: 5,
            vse_passphrase: None,
            stall_after: Duration::from_secs(60),
            stats_interval: Duration::from_secs(5),
        }
    }
}

impl From<&crate::config::Config> for DispatcherSettings {
    /// The same for every backend. The consumer name is `$HOSTNAME` (the pod name on
    /// Kubernetes), else `hostnameOverride`, plus the pid.
    fn from(c: &crate::config::Config) -> Self {
        let host =
            std::env::var("HOSTNAME").ok().filter(|h| !h.is_empty()).unwrap_or_else(|| c.hostname_override.clone());
        let mut settings = DispatcherSettings::new(
            format!("{host}-{}", std::process::id()),
            c.runtimes
                .iter()
                .filter(|r| r.enabled)
                .map(|r| RuntimeLimit { name: r.name.clone(), parallelism: r.parallelism })
                .collect(),
        );
        settings.batch_size = c.poll.batch_size;
        settings.poll_interval = Duration::from_millis(c.poll.interval_ms);
        settings.check_timeout_secs = c.check_timeout;
        settings.vse_passphrase = (!c.vse_passphrase.is_empty()).then(|| Secret::new(c.vse_passphrase.clone()));
        settings.stall_after = (settings.poll_interval * 30).max(Duration::from_secs(60));
        settings
    }
}

/// What one tick did (for tests and debug logs).
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct TickReport {
    pub polled: usize,
    pub scheduled: usize,
    pub deduplicated: usize,
    pub rejected: usize,
    pub released: usize,
}

pub struct Dispatcher<B, E, S> {
    broker: Arc<B>,
    executor: Arc<E>,
    intake: ResultIntake<S>,
    signer: TokenSigner,
    settings: DispatcherSettings,
    readiness: Arc<Readiness>,
    /// Jobs polled and being handed off (not yet started): id -> (runtime type, newest
    /// attempt seen). A re-delivery during a slow hand-off bumps the attempt, so the ack
    /// that follows the hand-off is for the lease the broker currently holds.
    handing_off: Mutex<BTreeMap<JobId, (String, u32)>>,
    last_dispatch: Mutex<Instant>,
    handoffs: TaskTracker,
    /// Rotates which runtime type is dealt the first job of each poll's batch.
    polls: std::sync::atomic::AtomicUsize,
}

impl<B: BrokerApi, E: Executor, S: ResultStore> Dispatcher<B, E, S> {
    pub fn new(
        broker: Arc<B>,
        executor: Arc<E>,
        intake: ResultIntake<S>,
        signer: TokenSigner,
        settings: DispatcherSettings,
        readiness: Arc<Readiness>,
    ) -> Arc<Self> {
        Arc::new(Self {
            broker,
            executor,
            intake,
            signer,
            settings,
            readiness,
            handing_off: Mutex::new(BTreeMap::new()),
            last_dispatch: Mutex::new(Instant::now()),
            handoffs: TaskTracker::new(),
            polls: std::sync::atomic::AtomicUsize::new(0),
        })
    }

    fn metrics(&self) -> &crate::metrics::Metrics {
        self.intake.metrics()
    }

    fn handing_off_counts(&self) -> BTreeMap<String, usize> {
        let mut counts = BTreeMap::new();
        for (rt, _) in self.handing_off.lock().expect("lock").values() {
            *counts.entry(rt.clone()).or_insert(0) += 1;
        }
        counts
    }

    /// One round of the pipeline: poll -> limit -> dedupe -> VSE -> schedule.
    pub async fn tick(self: &Arc<Self>, shutdown: &CancellationToken) -> TickReport {
        let mut report = TickReport::default();
        // limit
        let in_flight = match self.executor.in_flight().await {
            Ok(f) => f,
            Err(e) => {
                tracing::warn!(error = %e, "cannot read executor state; not polling this round");
                return report;
            }
        };
        for r in &self.settings.runtimes {
            self.metrics().set_in_flight(&r.name, in_flight.get(&r.name).map_or(0, Vec::len));
        }
        let free = limit::free_capacity(&self.settings.runtimes, &in_flight, &self.handing_off_counts());
        let start = self.polls.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let demands = limit::demands(&free, &self.settings.runtimes, self.settings.batch_size, start);
        if demands.is_empty() {
            return report;
        }
        // poll
        let req = PollRequest { demands: demands.clone(), consumer: self.settings.consumer.clone() };
        let resp = match self.broker.poll(&req).await {
            Ok(r) => r,
            Err(e) => {
                self.metrics().broker_error("poll", e.label());
                tracing::warn!(error = %e, "poll failed; retrying next tick");
                return report;
            }
        };
        let polled_at = Instant::now();
        report.polled = resp.jobs.len();
        self.metrics().jobs_polled.inc_by(resp.jobs.len() as u64);
        let mut allowance: BTreeMap<String, u32> = demands.iter().map(|d| (d.runtime_type.clone(), d.max)).collect();
        let running: std::collections::BTreeSet<&JobId> = in_flight.values().flatten().collect();
        for job in resp.jobs {
            let span =
                tracing::error_span!("job", job_id = %job.id, runtime = %job.runtime_type, attempt = job.attempt);
            // A broker that hands out more than asked (or a type we do not run) gets the
            // extra jobs back at once instead of overrunning capacity.
            match allowance.get_mut(&job.runtime_type) {
                Some(n) if *n > 0 => *n -= 1,
                Some(_) => {
                    self.release(&job, "poll returned more jobs than requested").instrument(span).await;
                    report.released += 1;
                    continue;
                }
                None => {
                    let reason = format!("runtime type {:?} is not run by this job manager", job.runtime_type);
                    self.release(&job, &reason).instrument(span).await;
                    report.released += 1;
                    continue;
                }
            }
            self.admit(job, polled_at, &running, shutdown, &mut report).instrument(span).await;
        }
        report
    }

    async fn admit(
        self: &Arc<Self>,
        job: Job,
        polled_at: Instant,
        running: &std::collections::BTreeSet<&JobId>,
        shutdown: &CancellationToken,
        report: &mut TickReport,
    ) {
        // dedupe
        let has_result = match self.intake.lookup(&job.id).await {
            Ok(r) => r.is_some(),
            Err(e) => {
                tracing::warn!(error = %e, "result store lookup failed; assuming no result");
                false
            }
        };
        let handing_off = match self.handing_off.lock().expect("lock").get_mut(&job.id) {
            Some((_, attempt)) => {
                *attempt = (*attempt).max(job.attempt);
                true
            }
            None => false,
        };
        match dedupe::classify(running.contains(&job.id), handing_off, has_result) {
            Seen::New => {}
            Seen::HandingOff => {
                tracing::info!("job re-delivered while its hand-off is in progress; that hand-off acks this attempt");
                self.metrics().jobs_deduplicated.inc();
                report.deduplicated += 1;
                return;
            }
            seen @ (Seen::Running | Seen::Finished) => {
                tracing::info!(?seen, "job re-delivered but already ours; acking without starting it again");
                self.metrics().jobs_deduplicated.inc();
                report.deduplicated += 1;
                self.ack(&job).await;
                if seen == Seen::Finished {
                    self.intake.kicked().notify_one();
                }
                return;
            }
        }
        // VSE
        if let Err(reason) = vse::check(&job, self.settings.vse_passphrase.as_ref()) {
            tracing::warn!(%reason, "job rejected");
            let result = JobResult::new(job.id.clone(), Outcome::Rejected, reason);
            match self.intake.record(&result).await {
                Ok(_) => {
                    self.ack(&job).await;
                    report.rejected += 1;
                }
                Err(e) => {
                    // Could not keep the rejection: give the job back rather than lose it.
                    tracing::error!(error = %e, "cannot record the rejection; releasing the job");
                    self.release(&job, "could not record its rejection").await;
                    report.released += 1;
                }
            }
            return;
        }
        // schedule
        self.handing_off.lock().expect("lock").insert(job.id.clone(), (job.runtime_type.clone(), job.attempt));
        *self.last_dispatch.lock().expect("lock") = Instant::now();
        report.scheduled += 1;
        let me = self.clone();
        let shutdown = shutdown.clone();
        self.handoffs
            .spawn(async move { me.schedule(job, polled_at, shutdown).await }.instrument(tracing::Span::current()));
    }

    /// Hand the job to the executor (retrying transient failures with backoff), then ack;
    /// release it if it cannot be handed off.
    async fn schedule(self: Arc<Self>, mut job: Job, polled_at: Instant, shutdown: CancellationToken) {
        let handoff = self.handoff_for(&job, SystemTime::now());
        let mut attempt = 0;
        let outcome = loop {
            match self.executor.start(handoff.clone()).await {
                Ok(accepted) => break Ok(accepted),
                Err(e) => {
                    self.metrics().handoff_failures.get_or_create(&vec![("reason".into(), e.label().into())]).inc();
                    attempt += 1;
                    let permanent = matches!(e, HandoffError::Permanent(_));
                    if permanent || attempt >= self.settings.handoff_attempts {
                        break Err(e);
                    }
                    let delay = self.settings.handoff_backoff.delay(attempt - 1);
                    tracing::warn!(error = %e, attempt, ?delay, "hand-off failed; retrying");
                    tokio::select! {
                        _ = tokio::time::sleep(delay) => {}
                        _ = shutdown.cancelled() => break Err(e),
                    }
                }
            }
        };
        if let Some((_, newest)) = self.handing_off.lock().expect("lock").remove(&job.id) {
            job.attempt = job.attempt.max(newest);
        }
        match outcome {
            Ok(accepted) => {
                self.metrics().poll_to_handoff_seconds.observe(polled_at.elapsed().as_secs_f64());
                tracing::info!(?accepted, "job handed off");
                if accepted == Accepted::AlreadyRunning {
                    self.metrics().jobs_deduplicated.inc();
                }
                self.ack(&job).await;
            }
            Err(e) => {
                tracing::error!(error = %e, attempts = attempt, "hand-off failed; releasing the job to the broker");
                self.release(&job, &format!("hand-off failed: {e}")).await;
            }
        }
    }

    /// The hand-off for a job: deadline = now + min(job timeout, check timeout); the token
    /// expires `token_slack` after the deadline.
    pub fn handoff_for(&self, job: &Job, now: SystemTime) -> Handoff {
        let secs = job.timeout_secs.clamp(1, self.settings.check_timeout_secs);
        let deadline = now + Duration::from_secs(secs.into());
        let expiry = (deadline + self.settings.token_slack).duration_since(UNIX_EPOCH).unwrap_or_default().as_secs();
        Handoff { token: self.signer.mint(&job.id, expiry), deadline, timeout_secs: secs, job: job.clone() }
    }

    async fn ack(&self, job: &Job) {
        let req = AckRequest { consumer: self.settings.consumer.clone(), attempt: job.attempt };
        let res = self.with_retries("ack", || self.broker.ack(&job.id, &req)).await;
        match res {
            Ok(()) => {
                self.metrics().jobs_acked.inc();
                tracing::debug!("job acked");
            }
            Err(BrokerError::LeaseLost) => {
                tracing::warn!("ack refused: the job was re-delivered; the re-delivery will be deduplicated")
            }
            Err(e) => {
                tracing::error!(error = %e, "ack failed; the broker will re-deliver the job and it will be deduplicated")
            }
        }
    }

    async fn release(&self, job: &Job, reason: &str) {
        let req = ReleaseRequest {
            consumer: self.settings.consumer.clone(),
            attempt: job.attempt,
            reason: reason.to_string(),
        };
        match self.with_retries("release", || self.broker.release(&job.id, &req)).await {
            Ok(()) => {
                self.metrics().jobs_released.inc();
                tracing::info!(%reason, "job released to the broker");
            }
            Err(e) => {
                tracing::error!(error = %e, "release failed; the broker re-delivers it after its visibility timeout")
            }
        }
    }

    async fn with_retries<F, Fut>(&self, call: &str, f: F) -> Result<(), BrokerError>
    where
        F: Fn() -> Fut,
        Fut: std::future::Future<Output = Result<(), BrokerError>>,
    {
        let backoff = Backoff::new(Duration::from_millis(100), Duration::from_secs(2));
        let mut attempt = 0;
        loop {
            match f().await {
                Ok(()) => return Ok(()),
                Err(e) => {
                    self.metrics().broker_error(call, e.label());
                    attempt += 1;
                    if !e.retryable() || attempt >= 4 {
                        return Err(e);
                    }
                    tokio::time::sleep(backoff.delay(attempt - 1)).await;
                }
            }
        }
    }

    /// Read queue stats: export them and decide whether the dispatcher is stalled.
    pub async fn check_queue(&self) {
        let stats = match self.broker.queue_stats().await {
            Ok(s) => s,
            Err(e) => {
                self.metrics().broker_error("queue_stats", e.label());
                tracing::debug!(error = %e, "queue stats unavailable");
                return;
            }
        };
        self.metrics().queue_depth.set(stats.depth.min(i64::MAX as u64) as i64);
        self.metrics().queue_oldest_age_seconds.set(stats.oldest_age_secs);
        let Ok(in_flight) = self.executor.in_flight().await else { return };
        let free = limit::free_capacity(&self.settings.runtimes, &in_flight, &self.handing_off_counts());
        let since = self.last_dispatch.lock().expect("lock").elapsed();
        let reason = stall::stall_reason(&stats.depth_by_runtime, stats.depth, &free, since, self.settings.stall_after);
        if let Some(r) = &reason {
            tracing::error!(reason = %r, "dispatcher stalled");
        }
        self.metrics().dispatcher_stalled.set(i64::from(reason.is_some()));
        self.readiness.set_stalled(reason);
    }

    /// Poll at a fixed interval until `shutdown`; then wait for hand-offs in progress
    /// (they ack, or release once cancelled).
    pub async fn run(self: Arc<Self>, shutdown: CancellationToken) {
        *self.last_dispatch.lock().expect("lock") = Instant::now();
        let mut poll = tokio::time::interval(self.settings.poll_interval);
        poll.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut stats = tokio::time::interval(self.settings.stats_interval);
        stats.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => break,
                _ = poll.tick() => {
                    let report = self.tick(&shutdown).await;
                    if report.polled > 0 {
                        tracing::debug!(?report, "tick");
                    }
                }
                _ = stats.tick() => self.check_queue().await,
            }
        }
        tracing::info!("dispatcher stopped polling; waiting for hand-offs in progress");
        self.handoffs.close();
        self.handoffs.wait().await;
    }

    /// Jobs polled and not yet handed off.
    pub fn handing_off(&self) -> Vec<JobId> {
        self.handing_off.lock().expect("lock").keys().cloned().collect()
    }
}

#[cfg(test)]
mod tests;
