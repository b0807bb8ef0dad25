//! Prometheus metrics, prefixed `sidecar_` (plus `process_*`, see [`common::metrics`]).
//! Label values are the stable labels of [`crate::policy::Class`] and
//! [`crate::error::ProxyError`]; every known label set exists from the start, at zero.
use crate::error::ProxyError;
use crate::policy::Class;
use common::metrics::{pre_create, Format};
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
pub struct SideLabel {
    /// `client`: bytes the runtime sent (relayed upstream); `upstream`: bytes the
    /// destination sent (relayed to the runtime).
    pub side: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct KindLabel {
    pub kind: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ListenerLabel {
    pub listener: &'static str,
}

/// The listeners whose connections are counted (the admin listener's probes and
/// scrapes are not).
pub const COUNTED_LISTENERS: [&str; 2] = ["proxy", "ingress"];
pub const REQUEST_KINDS: [&str; 4] = ["forward", "connect", "local", "ingress"];
pub const DELIVERY_OUTCOMES: [&str; 5] = ["delivered", "replaced_too_large", "already_accepted", "rejected", "expired"];

pub struct Metrics {
    registry: Registry,
    pub connections: Family<ListenerLabel, Counter>,
    pub open_connections: Family<ListenerLabel, Gauge>,
    pub requests: Family<KindLabel, Counter>,
    pub tunnels: Counter,
    pub open_tunnels: Gauge,
    pub tunnel_received_bytes: Family<SideLabel, Counter>,
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
        let mut root = common::metrics::new_registry("sidecar", env!("CARGO_PKG_VERSION"));
        let m = Self {
            connections: Family::default(),
            open_connections: Family::default(),
            requests: Family::default(),
            tunnels: Counter::default(),
            open_tunnels: Gauge::default(),
            tunnel_received_bytes: Family::default(),
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
        let listeners = || COUNTED_LISTENERS.map(|listener| ListenerLabel { listener });
        pre_create(&m.connections, listeners());
        pre_create(&m.open_connections, listeners());
        pre_create(&m.requests, REQUEST_KINDS.map(|kind| KindLabel { kind }));
        pre_create(&m.tunnel_received_bytes, ["client", "upstream"].map(|side| SideLabel { side }));
        let denials = Class::DENIALS.map(Class::label);
        pre_create(
            &m.denials,
            denials.iter().flat_map(|&class| ["true", "false"].map(|enforced| ClassLabel { class, enforced })),
        );
        pre_create(&m.errors, denials.into_iter().chain(ProxyError::OTHER_LABELS).map(|reason| ReasonLabel { reason }));
        pre_create(&m.result_deliveries, DELIVERY_OUTCOMES.map(|reason| ReasonLabel { reason }));
        let registry = root.sub_registry_with_prefix("sidecar");
        registry.register(
            "connections",
            "Client connections accepted, by listener (proxy, ingress; not the admin listener)",
            m.connections.clone(),
        );
        registry.register("open_connections", "Client connections open now, by listener", m.open_connections.clone());
        registry.register("requests", "Requests by kind (forward, connect, local, ingress)", m.requests.clone());
        registry.register("tunnels", "CONNECT tunnels established", m.tunnels.clone());
        registry.register("open_tunnels", "CONNECT tunnels open now", m.open_tunnels.clone());
        registry.register(
            "tunnel_received_bytes",
            "Bytes received through CONNECT tunnels, by the side that sent them (client: relayed upstream; \
             upstream: relayed to the client)",
            m.tunnel_received_bytes.clone(),
        );
        registry.register("denials", "Destinations refused by policy, by reason class", m.denials.clone());
        registry.register("errors", "Synthetic error responses, by reason label", m.errors.clone());
        registry.register("result_deliveries", "Result delivery outcomes", m.result_deliveries.clone());
        registry.register("result_retries", "Result delivery retries", m.result_retries.clone());
        registry.register(
            "request_duration_seconds",
            "Forwarded request latency until response headers",
            m.request_duration.clone(),
        );
        Self { registry: root, ..m }
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn known_label_sets_exist_at_zero() {
        let text = Metrics::new().encode();
        for want in [
            "sidecar_connections_total{listener=\"proxy\"} 0",
            "sidecar_connections_total{listener=\"ingress\"} 0",
            "sidecar_open_connections{listener=\"proxy\"} 0",
            "sidecar_requests_total{kind=\"ingress\"} 0",
            "sidecar_tunnel_received_bytes_total{side=\"client\"} 0",
            "sidecar_tunnel_received_bytes_total{side=\"upstream\"} 0",
            "sidecar_denials_total{class=\"metadata\",enforced=\"false\"} 0",
            "sidecar_errors_total{reason=\"too_many_connections\"} 0",
            "sidecar_errors_total{reason=\"public_denied\"} 0",
            "sidecar_result_deliveries_total{reason=\"expired\"} 0",
            "sidecar_build_info{version=\"",
            "process_resident_memory_bytes ",
        ] {
            assert!(text.contains(want), "missing {want} in\n{text}");
        }
        assert!(!text.contains("listener=\"admin\""), "{text}");
    }
}
