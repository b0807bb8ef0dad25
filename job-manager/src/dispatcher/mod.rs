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
//! A hand-off the platform refuses for good (the job manager's Role lacks a right) is
//! released too, but turns `/readyz` unready naming the right until a hand-off of that
//! runtime type succeeds ([`refusal`]); only an accepted hand-off counts as a dispatch
//! for stall detection.
pub mod dedupe;
#[cfg(test)]
pub mod fakes;
pub mod limit;
pub mod refusal;
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
    /// Jobs in the poll answer that could not be read (counted in `polled` too).
    pub unreadable: usize,
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
    /// When the executor last accepted a job (a refused or failed hand-off is no progress).
    last_dispatch: Mutex<Instant>,
    /// Runtime types whose hand-offs the platform refuses for good.
    refusals: Mutex<refusal::Refusals>,
    handoffs: TaskTracker,
    /// Rotates which runtime type is dealt the first job of each poll's batch.
    polls: std::sync::atomic::AtomicUsize,
    /// Repeated broker failures are logged once, then summed up (metrics stay exact).
    warnings: crate::log_throttle::LogThrottle,
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
        for r in &settings.runtimes {
            intake.metrics().set_handoffs_refused(&r.name, false);
        }
        Arc::new(Self {
            broker,
            executor,
            intake,
            signer,
            settings,
            readiness,
            handing_off: Mutex::new(BTreeMap::new()),
            last_dispatch: Mutex::new(Instant::now()),
            refusals: Mutex::new(refusal::Refusals::default()),
            handoffs: TaskTracker::new(),
            polls: std::sync::atomic::AtomicUsize::new(0),
            warnings: crate::log_throttle::LogThrottle::default(),
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
            Ok(f) => {
                self.readiness.set_state_unreadable(None);
                f
            }
            Err(e) => {
                // No polling without knowing what runs: unready, naming why (a Role that
                // lost `list` on jobrecords says so here), until a read works again.
                let reason = format!("cannot read what runs now, so no jobs are polled: {e}");
                if let Some(suppressed) = self.warnings.admit("executor-state") {
                    tracing::warn!(%reason, suppressed, "not polling this round");
                }
                self.readiness.set_state_unreadable(Some(reason));
                return report;
            }
        };
        for r in &self.settings.runtimes {
            self.metrics().set_in_flight(&r.name, in_flight.get(&r.name).map_or(0, Vec::len));
        }
        let mut free = limit::free_capacity(&self.settings.runtimes, &in_flight, &self.handing_off_counts());
        self.refusals.lock().expect("lock").cap_free(&mut free);
        let start = self.polls.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let demands = limit::demands(&free, &self.settings.runtimes, self.settings.batch_size, start);
        if demands.is_empty() {
            return report;
        }
        // poll
        let req = PollRequest { demands: demands.clone(), consumer: self.settings.consumer.clone() };
        let batch = match self.broker.poll(&req).await {
            Ok(b) => {
                self.poll_readable();
                b
            }
            Err(e) => {
                self.poll_failed(&e);
                return report;
            }
        };
        let polled_at = Instant::now();
        report.polled = batch.len();
        self.metrics().jobs_polled.inc_by(batch.len() as u64);
        let running: std::collections::BTreeSet<&JobId> = in_flight.values().flatten().collect();
        // A job that cannot be read is rejected (or left to expire) on its own; the rest
        // of the batch runs.
        for unreadable in batch.unreadable {
            let span = tracing::error_span!("job", job_id = %unreadable.raw_id, attempt = unreadable.attempt);
            self.refuse_unreadable(unreadable, &running, &mut report).instrument(span).await;
        }
        // The same job twice in one answer is one job: handled once (under its newest
        // attempt), never released as "more than requested".
        let (jobs, copies) = dedupe::collapse_batch(batch.jobs);
        for (id, attempt) in copies {
            tracing::info!(job_id = %id, attempt, "the same job twice in one poll answer; handling it once");
            self.metrics().jobs_deduplicated.inc();
            report.deduplicated += 1;
        }
        let mut allowance: BTreeMap<String, u32> = demands.iter().map(|d| (d.runtime_type.clone(), d.max)).collect();
        for job in jobs {
            let span =
                tracing::error_span!("job", job_id = %job.id, runtime = %job.runtime_type, attempt = job.attempt);
            // A broker that hands out more than asked (or a type we do not run) gets the
            // extra jobs back at once instead of overrunning capacity.
            match allowance.get_mut(&job.runtime_type) {
                Some(n) if *n > 0 => *n -= 1,
                Some(_) => {
                    self.release(&job.id, job.attempt, "poll returned more jobs than requested").instrument(span).await;
                    report.released += 1;
                    continue;
                }
                None => {
                    let reason = format!("runtime type {:?} is not run by this job manager", job.runtime_type);
                    self.release(&job.id, job.attempt, &reason).instrument(span).await;
                    report.released += 1;
                    continue;
                }
            }
            self.admit(job, polled_at, &running, shutdown, &mut report).instrument(span).await;
        }
        report
    }

    /// A poll answer was read: readiness and the metric recover by themselves.
    fn poll_readable(&self) {
        if self.metrics().broker_poll_unreadable.get() != 0 {
            tracing::info!("the broker's poll answers can be read again");
        }
        self.metrics().broker_poll_unreadable.set(0);
        self.readiness.set_poll_unreadable(None);
    }

    fn poll_failed(&self, e: &BrokerError) {
        self.metrics().broker_error("poll", e.label());
        if let BrokerError::Unreadable(_) = e {
            // Not a blip: the same answer comes back every tick until the broker (or
            // something in between) is fixed, and no job of it can run meanwhile.
            let reason = format!("broker poll answers cannot be read: {e}");
            tracing::error!(%reason, "poll answer unreadable; retrying next tick");
            self.metrics().broker_poll_unreadable.set(1);
            self.readiness.set_poll_unreadable(Some(reason));
            return;
        }
        if let Some(suppressed) = self.warnings.admit("poll") {
            tracing::warn!(error = %e, suppressed, "poll failed; retrying next tick");
        }
    }

    /// A job in the poll answer that is not a valid job: rejected with the reason when
    /// its id can name it (a `rejected` result, then acked, like a VSE refusal), else
    /// left to the broker's visibility timeout: no call of the broker API can name an id
    /// outside its alphabet, and releasing would hand it straight back to the next poll.
    async fn refuse_unreadable(
        &self,
        job: crate::broker::UnreadableJob,
        running: &std::collections::BTreeSet<&JobId>,
        report: &mut TickReport,
    ) {
        self.metrics().jobs_unreadable.inc();
        report.unreadable += 1;
        let Some(id) = job.id else {
            tracing::error!(
                reason = %job.reason,
                "unreadable job in the poll answer, and its id cannot name it to the broker: \
                 neither rejected nor released; the broker re-delivers it after its visibility timeout"
            );
            return;
        };
        tracing::warn!(reason = %job.reason, "unreadable job in the poll answer; rejecting it");
        // A copy of a job that runs here, garbled in transit, must not overrule it.
        if self.already_ours(&id, job.attempt, running, report).await {
            return;
        }
        self.reject(&id, job.attempt, format!("unreadable job: {}", job.reason), report).await;
    }

    /// Record a `rejected` result (delivered like any other) and ack; release the job
    /// if the rejection cannot be kept.
    async fn reject(&self, id: &JobId, attempt: u32, reason: String, report: &mut TickReport) {
        let result = JobResult::new(id.clone(), Outcome::Rejected, reason);
        match self.intake.record(&result).await {
            Ok(_) => {
                self.ack(id, attempt).await;
                report.rejected += 1;
            }
            Err(e) => {
                // Could not keep the rejection: give the job back rather than lose it.
                tracing::error!(error = %e, "cannot record the rejection; releasing the job");
                self.release(id, attempt, "could not record its rejection").await;
                report.released += 1;
            }
        }
    }

    /// Dedupe: true when the job is already ours (running, being handed off, or
    /// finished) and was dealt with here.
    async fn already_ours(
        &self,
        id: &JobId,
        attempt: u32,
        running: &std::collections::BTreeSet<&JobId>,
        report: &mut TickReport,
    ) -> bool {
        let result = match self.intake.lookup(id).await {
            Ok(r) => r,
            Err(e) => {
                tracing::warn!(error = %e, "result store lookup failed; assuming no result");
                None
            }
        };
        let handing_off = match self.handing_off.lock().expect("lock").get_mut(id) {
            Some((_, newest)) => {
                *newest = (*newest).max(attempt);
                true
            }
            None => false,
        };
        match dedupe::classify(running.contains(id), handing_off, result.is_some()) {
            Seen::New => return false,
            Seen::HandingOff => {
                tracing::info!("job re-delivered while its hand-off is in progress; that hand-off acks this attempt");
            }
            Seen::Running => {
                tracing::info!("job re-delivered but still running here; acking without starting it again");
                self.ack(id, attempt).await;
            }
            Seen::Finished => {
                // The broker asks again, so it may not hold the result (lost, or an
                // answer that only looked like success): send it again. Submissions are
                // idempotent by job id, so a broker that has it just says so.
                tracing::info!("job re-delivered but already finished here; acking and sending its result again");
                self.ack(id, attempt).await;
                if let Some(result) = result {
                    self.intake.resubmit(result);
                }
            }
        }
        self.metrics().jobs_deduplicated.inc();
        report.deduplicated += 1;
        true
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
        if self.already_ours(&job.id, job.attempt, running, report).await {
            return;
        }
        // VSE
        if let Err(reason) = vse::check(&job, self.settings.vse_passphrase.as_ref()) {
            tracing::warn!(%reason, "job rejected");
            self.reject(&job.id, job.attempt, reason, report).await;
            return;
        }
        // schedule
        self.handing_off.lock().expect("lock").insert(job.id.clone(), (job.runtime_type.clone(), job.attempt));
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
                    let permanent = matches!(e, HandoffError::Permanent(_) | HandoffError::Refused { .. });
                    if permanent || attempt >= self.settings.handoff_attempts {
                        break Err(e);
                    }
                    let delay = self.settings.handoff_backoff.delay(attempt - 1);
                    tracing::warn!(error = %e, attempt, delay_ms = delay.as_millis() as u64, "hand-off failed; retrying");
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
                *self.last_dispatch.lock().expect("lock") = Instant::now();
                self.metrics().poll_to_handoff_seconds.observe(polled_at.elapsed().as_secs_f64());
                tracing::info!(?accepted, "job handed off");
                if accepted == Accepted::Started {
                    // Only a job started here proves every right its runtime type needs
                    // (one already running may have been started by another replica).
                    self.handoff_succeeded(&job.runtime_type);
                }
                if accepted == Accepted::AlreadyRunning {
                    self.metrics().jobs_deduplicated.inc();
                }
                self.ack(&job.id, job.attempt).await;
            }
            Err(HandoffError::Refused { right, message }) => {
                self.handoff_refused(&job.runtime_type, &right, &message);
                // Said once per right by `handoff_refused`; per job only at debug level.
                let reason = format!("hand-off refused: {message}");
                if self.release_quietly(&job.id, job.attempt, &reason).await {
                    tracing::debug!(%reason, "job released to the broker");
                }
            }
            Err(e) => {
                tracing::error!(error = %e, attempts = attempt, "hand-off failed; releasing the job to the broker");
                self.release(&job.id, job.attempt, &format!("hand-off failed: {e}")).await;
            }
        }
    }

    /// The platform refused a hand-off of `runtime` for good: unready, with the metric
    /// set; logged once per distinct right.
    fn handoff_refused(&self, runtime: &str, right: &str, message: &str) {
        let mut refusals = self.refusals.lock().expect("lock");
        if refusal::Change::Refused == refusals.refused(runtime, right, message) {
            tracing::error!(
                runtime,
                %right,
                reason = %message,
                "hand-offs refused: jobs of this runtime type go back to the broker and the job manager \
                 reports not ready until a hand-off succeeds"
            );
        }
        self.metrics().set_handoffs_refused(runtime, true);
        self.readiness.set_refused(refusals.readiness());
    }

    /// A job of `runtime` started: a refusal of that runtime type is over.
    fn handoff_succeeded(&self, runtime: &str) {
        let mut refusals = self.refusals.lock().expect("lock");
        if let refusal::Change::Recovered { right, cleared } = refusals.handed_off(runtime) {
            tracing::info!(runtime, %right, cleared, "hand-offs accepted again");
            self.metrics().set_handoffs_refused(runtime, false);
            self.readiness.set_refused(refusals.readiness());
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

    async fn ack(&self, id: &JobId, attempt: u32) {
        let req = AckRequest { consumer: self.settings.consumer.clone(), attempt };
        let res = self.with_retries("ack", || self.broker.ack(id, &req)).await;
        match res {
            Ok(()) => {
                self.metrics().jobs_acked.inc();
                tracing::debug!("job acked");
            }
            Err(BrokerError::LeaseLost) => {
                tracing::warn!("ack refused: the job was re-delivered; the re-delivery will be deduplicated");
            }
            Err(e) => {
                tracing::error!(error = %e, "ack failed; the broker will re-deliver the job and it will be deduplicated");
            }
        }
    }

    async fn release(&self, id: &JobId, attempt: u32, reason: &str) {
        if self.release_quietly(id, attempt, reason).await {
            tracing::info!(%reason, "job released to the broker");
        }
    }

    /// Release without saying so (a failure is still logged): true when released.
    async fn release_quietly(&self, id: &JobId, attempt: u32, reason: &str) -> bool {
        let req = ReleaseRequest { consumer: self.settings.consumer.clone(), attempt, reason: reason.to_string() };
        match self.with_retries("release", || self.broker.release(id, &req)).await {
            Ok(()) => {
                self.metrics().jobs_released.inc();
                true
            }
            Err(e) => {
                tracing::error!(error = %e, "release failed; the broker re-delivers it after its visibility timeout");
                false
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
