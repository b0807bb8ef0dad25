//! Prometheus metrics (prometheus-client). One [`Metrics`] per process, shared by the
//! dispatcher, result API, delivery loop and executors; `/metrics` renders its registry
//! (`job_manager_*`, plus `process_*`: see [`common::metrics`]). Every known label set
//! (each outcome, hand-off failure reason, broker call and error) exists from the start.
use common::metrics::{pre_create, Format};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;
use std::sync::atomic::AtomicU64;

use crate::backend::HandoffError;
use crate::broker::BrokerError;

type Labels = Vec<(String, String)>;

/// The `call` values of `job_manager_broker_errors_total`.
pub const BROKER_CALLS: [&str; 5] = ["poll", "ack", "release", "submit_result", "queue_stats"];

pub struct Metrics {
    registry: Registry,
    pub queue_depth: Gauge,
    pub queue_oldest_age_seconds: Gauge<f64, AtomicU64>,
    pub jobs_polled: Counter,
    pub jobs_acked: Counter,
    pub jobs_released: Counter,
    pub jobs_deduplicated: Counter,
    /// Jobs in a poll response that could not be read (rejected, or left to expire when
    /// not even their id can name them).
    pub jobs_unreadable: Counter,
    /// 1 while the last poll's answer could not be read at all.
    pub broker_poll_unreadable: Gauge,
    /// Finished jobs the broker delivered again whose result was sent to it again.
    pub results_resubmitted: Counter,
    /// Results recorded, by outcome (succeeded, failed, timed_out, rejected).
    pub job_results: Family<Labels, Counter>,
    pub in_flight: Family<Labels, Gauge>,
    pub poll_to_handoff_seconds: Histogram,
    pub handoff_failures: Family<Labels, Counter>,
    pub broker_errors: Family<Labels, Counter>,
    pub result_delivery_retries: Counter,
    pub results_delivered: Counter,
    pub results_pending: Gauge,
    pub result_api_requests: Family<Labels, Counter>,
    pub dispatcher_stalled: Gauge,
    /// 1 per runtime type while its hand-offs are refused for good (the job manager's
    /// Role lacks a right); created at 0 for every runtime type by the dispatcher.
    pub handoffs_refused: Family<Labels, Gauge>,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Self {
        let mut root = common::metrics::new_registry("job_manager", env!("CARGO_PKG_VERSION"));
        let m = Self {
            queue_depth: Gauge::default(),
            queue_oldest_age_seconds: Gauge::default(),
            jobs_polled: Counter::default(),
            jobs_acked: Counter::default(),
            jobs_released: Counter::default(),
            jobs_deduplicated: Counter::default(),
            jobs_unreadable: Counter::default(),
            broker_poll_unreadable: Gauge::default(),
            results_resubmitted: Counter::default(),
            job_results: Family::default(),
            in_flight: Family::default(),
            poll_to_handoff_seconds: Histogram::new([
                0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
            ]),
            handoff_failures: Family::default(),
            broker_errors: Family::default(),
            result_delivery_retries: Counter::default(),
            results_delivered: Counter::default(),
            results_pending: Gauge::default(),
            result_api_requests: Family::default(),
            dispatcher_stalled: Gauge::default(),
            handoffs_refused: Family::default(),
            registry: Registry::default(),
        };
        let label = |key: &str, value: &str| vec![(key.to_string(), value.to_string())];
        pre_create(&m.job_results, common::Outcome::ALL.map(|o| label("outcome", o.as_str())));
        // The two success answers of the result API (202 recorded, 200 duplicate); error
        // codes appear when they happen.
        pre_create(&m.result_api_requests, ["202", "200"].map(|code| label("code", code)));
        pre_create(&m.handoff_failures, HandoffError::LABELS.map(|reason| label("reason", reason)));
        pre_create(
            &m.broker_errors,
            BROKER_CALLS.iter().flat_map(|&call| {
                BrokerError::LABELS.map(|reason| vec![("call".into(), call.into()), ("reason".into(), reason.into())])
            }),
        );
        let registry = root.sub_registry_with_prefix("job_manager");
        registry.register("broker_queue_depth", "Jobs waiting at the broker", m.queue_depth.clone());
        registry.register(
            "broker_queue_oldest_age_seconds",
            "Age of the oldest job waiting at the broker",
            m.queue_oldest_age_seconds.clone(),
        );
        registry.register("jobs_polled", "Jobs received from broker polls", m.jobs_polled.clone());
        registry.register("jobs_acked", "Jobs acked to the broker after hand-off", m.jobs_acked.clone());
        registry.register("jobs_released", "Jobs released back to the broker", m.jobs_released.clone());
        registry.register(
            "jobs_deduplicated",
            "Re-delivered jobs not started again (already running or finished)",
            m.jobs_deduplicated.clone(),
        );
        registry.register(
            "jobs_unreadable",
            "Jobs in a poll response that could not be read; the rest of the batch ran",
            m.jobs_unreadable.clone(),
        );
        registry.register(
            "broker_poll_unreadable",
            "1 while the last poll answer could not be read at all (too large, not JSON)",
            m.broker_poll_unreadable.clone(),
        );
        registry.register(
            "results_resubmitted",
            "Results sent to the broker again because it re-delivered their finished job",
            m.results_resubmitted.clone(),
        );
        registry.register("job_results", "Results recorded, by outcome", m.job_results.clone());
        registry.register("jobs_in_flight", "Jobs running now, by runtime type", m.in_flight.clone());
        registry.register(
            "poll_to_handoff_seconds",
            "Time from a job's poll to its runtime workload existing",
            m.poll_to_handoff_seconds.clone(),
        );
        registry.register("handoff_failures", "Failed hand-off attempts, by reason", m.handoff_failures.clone());
        registry.register("broker_errors", "Failed broker calls, by call and reason", m.broker_errors.clone());
        registry.register(
            "result_delivery_retries",
            "Result submissions to the broker that failed and will be retried",
            m.result_delivery_retries.clone(),
        );
        registry.register("results_delivered", "Results accepted by the broker", m.results_delivered.clone());
        registry.register("results_pending", "Results recorded but not yet delivered", m.results_pending.clone());
        registry.register("result_api_requests", "Result API requests, by status code", m.result_api_requests.clone());
        registry.register(
            "dispatcher_stalled",
            "1 when jobs wait at the broker, capacity is free and nothing was dispatched for a while",
            m.dispatcher_stalled.clone(),
        );
        registry.register(
            "handoffs_refused",
            "1 while hand-offs of a runtime type are refused by the platform (the job manager's Role lacks a right; /readyz names it)",
            m.handoffs_refused.clone(),
        );
        Self { registry: root, ..m }
    }

    /// Like [`Metrics::new`], with more metrics registered in the same registry (the
    /// Kubernetes executor's API-call and lease metrics), so `/metrics` shows them too.
    pub fn with_extra(register: impl FnOnce(&mut Registry)) -> Self {
        let mut m = Self::new();
        register(m.registry.sub_registry_with_prefix("job_manager"));
        m
    }

    pub fn record_outcome(&self, outcome: common::Outcome) {
        self.job_results.get_or_create(&vec![("outcome".into(), outcome.as_str().into())]).inc();
    }

    pub fn broker_error(&self, call: &str, reason: &str) {
        self.broker_errors.get_or_create(&vec![("call".into(), call.into()), ("reason".into(), reason.into())]).inc();
    }

    pub fn set_in_flight(&self, runtime: &str, n: usize) {
        self.in_flight.get_or_create(&vec![("runtime".into(), runtime.into())]).set(n as i64);
    }

    pub fn set_handoffs_refused(&self, runtime: &str, refused: bool) {
        self.handoffs_refused.get_or_create(&vec![("runtime".into(), runtime.into())]).set(i64::from(refused));
    }

    pub fn result_api(&self, status: u16) {
        self.result_api_requests.get_or_create(&vec![("code".into(), status.to_string())]).inc();
    }

    /// The exposition in `format` (see [`Format::negotiate`]).
    pub fn render(&self, format: Format) -> String {
        common::metrics::render(&self.registry, format)
    }

    /// The Prometheus text format (what tests read).
    pub fn encode(&self) -> String {
        self.render(Format::Text)
    }
}
