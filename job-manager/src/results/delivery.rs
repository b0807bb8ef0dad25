//! The delivery loop: hands results to the broker, retrying with backoff and jitter while
//! the broker is down, and marks a result delivered only when the broker accepted it (or
//! conclusively holds another one: 409). A result is never dropped: even a non-retryable
//! refusal is retried, at the slowest pace, and logged as an error.
//!
//! Two sources, so that a result costs no store read and is handed over once:
//! - **fresh** results this process accepted ([`ResultIntake::take_fresh`]): delivered at
//!   once, without listing the store;
//! - a **sweep** of the store's pending results every `rescan`, for results another
//!   process recorded and could not deliver (it died) or a previous run left. Only where
//!   the sweep gate allows (Kubernetes: the `runtime-pruning` lease holder), and only
//!   results already pending at the previous sweep (the first sweep at start takes all,
//!   unless the gate was closed): a result another replica is delivering right now is
//!   left to it.
use super::intake::ResultIntake;
use super::store::ResultStore;
use crate::broker::{BrokerApi, SubmitOutcome};
use common::backoff::Backoff;
use common::{JobId, JobResult};
use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

/// Whether this process may sweep the store now.
pub type SweepGate = Arc<dyn Fn() -> bool + Send + Sync>;

pub struct DeliveryLoop<B, S> {
    broker: Arc<B>,
    intake: ResultIntake<S>,
    backoff: Backoff,
    /// How often pending results are re-scanned without a kick (results recorded by
    /// another process sharing the store, or left by a previous run).
    rescan: Duration,
    sweep_gate: SweepGate,
    /// What was pending before results could arrive (see [`Self::with_startup_pending`]).
    startup_pending: Option<HashSet<JobId>>,
    /// Retryable failures are logged once, then summed up per window (metrics stay exact).
    warnings: crate::log_throttle::LogThrottle,
}

/// What one pass over the pending results did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct DeliveryPass {
    pub delivered: usize,
    pub failed: usize,
    /// The broker is down or refusing: stop this pass and back off.
    pub broker_unavailable: bool,
}

impl<B: BrokerApi, S: ResultStore> DeliveryLoop<B, S> {
    pub fn new(broker: Arc<B>, intake: ResultIntake<S>) -> Self {
        Self {
            broker,
            intake,
            backoff: Backoff::new(Duration::from_millis(200), Duration::from_secs(30)),
            rescan: Duration::from_secs(5),
            sweep_gate: Arc::new(|| true),
            startup_pending: None,
            warnings: crate::log_throttle::LogThrottle::default(),
        }
    }

    /// The results pending before the result API served: the first sweep delivers those
    /// (still pending) and nothing recorded since, which the fresh queue carries. Without
    /// it, a result recorded while the first sweep runs could be sent by both (an
    /// identical repeat the broker answers 204 to, but a second submission all the same).
    pub fn with_startup_pending(mut self, ids: HashSet<JobId>) -> Self {
        self.startup_pending = Some(ids);
        self
    }

    /// Sweep the store only while `gate` answers true (default: always).
    pub fn with_sweep_gate(mut self, gate: SweepGate) -> Self {
        self.sweep_gate = gate;
        self
    }

    pub fn with_backoff(mut self, backoff: Backoff) -> Self {
        self.backoff = backoff;
        self
    }

    pub fn with_rescan(mut self, rescan: Duration) -> Self {
        self.rescan = rescan;
        self
    }

    /// Submit every pending result in the store once (no age rule, no gate).
    pub async fn deliver_pending(&self) -> DeliveryPass {
        match self.intake.store().pending().await {
            Ok(pending) => {
                self.intake.metrics().results_pending.set(pending.len() as i64);
                self.deliver(pending).await.0
            }
            Err(e) => Self::store_unavailable(e),
        }
    }

    fn store_unavailable(e: super::store::StoreError) -> DeliveryPass {
        tracing::error!(error = %e, "cannot list pending results");
        DeliveryPass { delivered: 0, failed: 1, broker_unavailable: true }
    }

    /// Submit one result and mark it delivered; true when the broker is unavailable and
    /// this result (and the ones after it) must wait for the next pass.
    async fn deliver_one(&self, result: &JobResult, pass: &mut DeliveryPass) -> bool {
        let metrics = self.intake.metrics();
        match self.broker.submit_result(result).await {
            Ok(outcome) => {
                if outcome == SubmitOutcome::Conflict {
                    tracing::error!(
                        job_id = %result.job_id,
                        outcome = %result.outcome,
                        "broker already holds a different result for this job; ours is not delivered"
                    );
                }
                match self.intake.store().mark_delivered(&result.job_id).await {
                    Ok(()) => {
                        pass.delivered += 1;
                        metrics.results_delivered.inc();
                        tracing::info!(job_id = %result.job_id, outcome = %result.outcome, "result delivered to broker");
                    }
                    Err(e) => {
                        tracing::error!(error = %e, "result delivered but not marked; it will be re-sent (idempotent)");
                        pass.failed += 1;
                    }
                }
            }
            Err(e) => {
                metrics.broker_error("submit_result", e.label());
                metrics.result_delivery_retries.inc();
                pass.failed += 1;
                if e.retryable() {
                    if let Some(suppressed) = self.warnings.admit("submit_result") {
                        tracing::warn!(error = %e, suppressed, "result delivery failed; will retry");
                    }
                    pass.broker_unavailable = true;
                    return true;
                }
                tracing::error!(error = %e, "broker refused the result; keeping it and retrying slowly");
            }
        }
        false
    }

    /// Submit `results` in order; stops at the first retryable broker error and returns
    /// the results not handed over (that one included).
    async fn deliver(&self, results: Vec<JobResult>) -> (DeliveryPass, Vec<JobResult>) {
        let metrics = self.intake.metrics();
        let mut pass = DeliveryPass::default();
        let mut results = results.into_iter();
        while let Some(result) = results.next() {
            let span = tracing::error_span!("deliver", job_id = %result.job_id);
            if self.deliver_one(&result, &mut pass).instrument(span).await {
                let mut left = vec![result];
                left.extend(results);
                return (pass, left);
            }
        }
        if pass.delivered > 0 {
            metrics.results_pending.dec_by(pass.delivered as i64);
        }
        (pass, Vec::new())
    }

    /// Fresh results of this process; what could not be handed over is queued again.
    async fn deliver_fresh(&self) -> DeliveryPass {
        let fresh = self.intake.take_fresh();
        if fresh.is_empty() {
            return DeliveryPass::default();
        }
        let (pass, left) = self.deliver(fresh).await;
        if !left.is_empty() {
            self.intake.requeue_fresh(left);
        }
        pass
    }

    /// One sweep: deliver the store's pending results that were pending at the previous
    /// sweep too (all of them on the first), skipping this process's fresh queue.
    async fn sweep(&self, previous: &mut Option<HashSet<JobId>>) -> DeliveryPass {
        let pending = match self.intake.store().pending().await {
            Ok(p) => p,
            Err(e) => return Self::store_unavailable(e),
        };
        self.intake.metrics().results_pending.set(pending.len() as i64);
        let ids: HashSet<JobId> = pending.iter().map(|r| r.job_id.clone()).collect();
        let queued = self.intake.fresh_ids();
        let due: Vec<JobResult> = pending
            .into_iter()
            .filter(|r| !queued.contains(&r.job_id))
            .filter(|r| previous.as_ref().is_none_or(|p| p.contains(&r.job_id)))
            .collect();
        *previous = Some(ids);
        if due.is_empty() {
            return DeliveryPass::default();
        }
        tracing::info!(results = due.len(), "delivering results left pending by this or another process");
        self.deliver(due).await.0
    }

    /// Run until `shutdown`; then make one last pass so results recorded during the
    /// drain reach the broker if it is up.
    pub async fn run(self, shutdown: CancellationToken) {
        let kick = self.intake.kicked();
        let mut attempt: u32 = 0;
        let mut previous: Option<HashSet<JobId>> = self.startup_pending.clone();
        let mut next_sweep = tokio::time::Instant::now();
        loop {
            let mut pass = self.deliver_fresh().await;
            if !pass.broker_unavailable && tokio::time::Instant::now() >= next_sweep {
                next_sweep = tokio::time::Instant::now() + self.rescan;
                if (self.sweep_gate)() {
                    let swept = self.sweep(&mut previous).await;
                    pass.delivered += swept.delivered;
                    pass.failed += swept.failed;
                    pass.broker_unavailable |= swept.broker_unavailable;
                } else {
                    // Not ours to sweep. When it becomes ours (a lease taken over), results
                    // pending then may be in their receivers' hands: wait one more sweep.
                    previous = Some(HashSet::new());
                }
            }
            let wait = if pass.broker_unavailable {
                attempt = attempt.saturating_add(1);
                self.backoff.delay(attempt - 1)
            } else if pass.failed > 0 {
                self.backoff.max
            } else {
                attempt = 0;
                next_sweep.saturating_duration_since(tokio::time::Instant::now())
            };
            let backing_off = pass.failed > 0;
            tokio::select! {
                _ = shutdown.cancelled() => break,
                _ = kick.notified(), if !backing_off => {}
                _ = tokio::time::sleep(wait) => {}
            }
        }
        let mut last = self.deliver_fresh().await;
        if (self.sweep_gate)() && !last.broker_unavailable {
            let swept = self.deliver_pending().await;
            last.delivered += swept.delivered;
            last.failed += swept.failed;
        }
        tracing::info!(delivered = last.delivered, undelivered = last.failed, "delivery loop stopped");
    }
}

#[cfg(test)]
mod tests;
