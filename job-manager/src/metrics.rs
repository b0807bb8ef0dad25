//! Prometheus metrics (prometheus-client). One [`Metrics`] per process, shared by the
//! dispatcher, result API, delivery loop and executors; `/metrics` encodes its registry.
use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;
use std::sync::atomic::AtomicU64;

type Labels = Vec<(String, String)>;

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
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("job_manager");
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
            registry: Registry::default(),
        };
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
        Self { registry, ..m }
    }

    /// Like [`Metrics::new`], with more metrics registered in the same registry (the
    /// Kubernetes executor's API-call and lease metrics), so `/metrics` shows them too.
    pub fn with_extra(register: impl FnOnce(&mut Registry)) -> Self {
        let mut m = Self::new();
        register(&mut m.registry);
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

    pub fn result_api(&self, status: u16) {
        self.result_api_requests.get_or_create(&vec![("code".into(), status.to_string())]).inc();
    }

    /// The OpenMetrics text exposition.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        encode(&mut out, &self.registry).expect("writing to a String cannot fail");
        out
    }
}
