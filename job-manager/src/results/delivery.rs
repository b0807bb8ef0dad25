//! The delivery loop: hands every pending result to the broker, retrying with backoff
//! and jitter while the broker is down, and marks a result delivered only when the broker
//! accepted it (or conclusively holds another one: 409). A result is never dropped: even
//! a non-retryable refusal is retried, at the slowest pace, and logged as an error.
use super::intake::ResultIntake;
use super::store::ResultStore;
use crate::broker::{BrokerApi, SubmitOutcome};
use common::backoff::Backoff;
use std::sync::Arc;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

pub struct DeliveryLoop<B, S> {
    broker: Arc<B>,
    intake: ResultIntake<S>,
    backoff: Backoff,
    /// How often pending results are re-scanned without a kick (results recorded by
    /// another process sharing the store, or left by a previous run).
    rescan: Duration,
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
        }
    }

    pub fn with_backoff(mut self, backoff: Backoff) -> Self {
        self.backoff = backoff;
        self
    }

    pub fn with_rescan(mut self, rescan: Duration) -> Self {
        self.rescan = rescan;
        self
    }

    /// Submit every pending result once.
    pub async fn deliver_pending(&self) -> DeliveryPass {
        let metrics = self.intake.metrics();
        let mut pass = DeliveryPass::default();
        let pending = match self.intake.store().pending().await {
            Ok(p) => p,
            Err(e) => {
                tracing::error!(error = %e, "cannot list pending results");
                pass.failed += 1;
                pass.broker_unavailable = true;
                return pass;
            }
        };
        metrics.results_pending.set(pending.len() as i64);
        for result in pending {
            let span = tracing::error_span!("deliver", job_id = %result.job_id);
            let _g = span.enter();
            match self.broker.submit_result(&result).await {
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
                        tracing::warn!(error = %e, "result delivery failed; will retry");
                        pass.broker_unavailable = true;
                        break;
                    }
                    tracing::error!(error = %e, "broker refused the result; keeping it and retrying slowly");
                }
            }
        }
        if pass.delivered > 0 {
            metrics.results_pending.dec_by(pass.delivered as i64);
        }
        pass
    }

    /// Run until `shutdown`; then make one last pass so results recorded during the
    /// drain reach the broker if it is up.
    pub async fn run(self, shutdown: CancellationToken) {
        let kick = self.intake.kicked();
        let mut attempt: u32 = 0;
        loop {
            let pass = self.deliver_pending().await;
            let wait = if pass.broker_unavailable {
                attempt = attempt.saturating_add(1);
                self.backoff.delay(attempt - 1)
            } else if pass.failed > 0 {
                self.backoff.max
            } else {
                attempt = 0;
                self.rescan
            };
            let backing_off = pass.failed > 0;
            tokio::select! {
                _ = shutdown.cancelled() => break,
                _ = kick.notified(), if !backing_off => {}
                _ = tokio::time::sleep(wait) => {}
            }
        }
        let last = self.deliver_pending().await;
        tracing::info!(delivered = last.delivered, undelivered = last.failed, "delivery loop stopped");
    }
}

#[cfg(test)]
mod tests;
