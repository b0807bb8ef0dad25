//! Prometheus metrics, all prefixed `sidecar_`. Label values are the stable labels of
//! [`crate::policy::Class`] and [`crate::error::ProxyError`].
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ClassLabel {
    pub class: &'static str,
    /// "true" when refused, "false" in report-only mode (would have been refused).
    pub enforced: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReasonLabel {
    pub reason: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct DirectionLabel {
    pub direction: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct KindLabel {
    pub kind: &'static str,
}

pub struct Metrics {
    registry: Registry,
    pub connections: Counter,
    pub open_connections: Gauge,
    pub requests: Family<KindLabel, Counter>,
    pub tunnels: Counter,
    pub open_tunnels: Gauge,
    pub bytes: Family<DirectionLabel, Counter>,
    pub denials: Family<ClassLabel, Counter>,
    pub errors: Family<ReasonLabel, Counter>,
    pub result_deliveries: Family<ReasonLabel, Counter>,
    pub result_retries: Counter,
    pub request_duration: Histogram,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("sidecar");
        let m = Self {
            connections: Counter::default(),
            open_connections: Gauge::default(),
            requests: Family::default(),
            tunnels: Counter::default(),
            open_tunnels: Gauge::default(),
            bytes: Family::default(),
            denials: Family::default(),
            errors: Family::default(),
            result_deliveries: Family::default(),
            result_retries: Counter::default(),
            // 100us .. ~6.5s
            request_duration: Histogram::new(prometheus_client::metrics::histogram::exponential_buckets(
                0.0001, 2.0, 17,
            )),
            registry: Registry::default(),
        };
        registry.register("connections", "Client connections accepted", m.connections.clone());
        registry.register("open_connections", "Client connections open now", m.open_connections.clone());
        registry.register("requests", "Requests by kind (forward, connect, local, ingress)", m.requests.clone());
        registry.register("tunnels", "CONNECT tunnels established", m.tunnels.clone());
        registry.register("open_tunnels", "CONNECT tunnels open now", m.open_tunnels.clone());
        registry.register("bytes", "Bytes relayed through tunnels, by direction", m.bytes.clone());
        registry.register("denials", "Destinations refused by policy, by reason class", m.denials.clone());
        registry.register("errors", "Synthetic error responses, by reason label", m.errors.clone());
        registry.register("result_deliveries", "Result delivery outcomes", m.result_deliveries.clone());
        registry.register("result_retries", "Result delivery retries", m.result_retries.clone());
        registry.register(
            "request_duration_seconds",
            "Forwarded request latency until response headers",
            m.request_duration.clone(),
        );
        Self { registry, ..m }
    }

    pub fn encode(&self) -> String {
        let mut out = String::with_capacity(4096);
        // Writing to a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }
}
