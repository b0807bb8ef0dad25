//! Kubernetes executor metrics: API calls by resource, verb and outcome; lease
//! ownership; what pruning and diagnosis did. [`KubeMetrics::register`] is the hook the
//! process's `/metrics` registry calls (metrics are shared handles: register once,
//! update from anywhere).
use crate::backend::kubernetes::rbac::{self, Resource, Verb};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use std::future::Future;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ApiCallLabels {
    pub resource: &'static str,
    pub verb: &'static str,
    /// `ok`, or the error label of [`api_outcome`].
    pub outcome: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct LeaseLabels {
    pub lease: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReasonLabels {
    pub reason: &'static str,
}

#[derive(Clone, Default)]
pub struct KubeMetrics {
    pub api_calls: Family<ApiCallLabels, Counter>,
    /// 1 while this replica holds the lease.
    pub lease_held: Family<LeaseLabels, Gauge>,
    pub lease_transitions: Family<LeaseLabels, Counter>,
    /// Results the job manager decided itself (timeouts, pods that cannot start), by cause.
    pub diagnosed: Family<ReasonLabels, Counter>,
    /// Objects deleted by pruning, by why.
    pub pruned: Family<ReasonLabels, Counter>,
}

impl KubeMetrics {
    pub fn register(&self, registry: &mut Registry) {
        let sub = registry.sub_registry_with_prefix("kubernetes");
        sub.register("api_calls", "Kubernetes API calls by resource, verb and outcome", self.api_calls.clone());
        sub.register("lease_held", "1 while this replica holds the lease", self.lease_held.clone());
        sub.register(
            "lease_transitions",
            "Times this replica acquired or lost the lease",
            self.lease_transitions.clone(),
        );
        sub.register("diagnosed_results", "Results decided by the job manager, by cause", self.diagnosed.clone());
        sub.register("pruned_objects", "Objects deleted by pruning, by reason", self.pruned.clone());
    }

    /// Run one API call, counting it. In debug builds, a call the declared RBAC rules do
    /// not grant panics, so tests catch a Role that would refuse it in production.
    pub async fn call<T, F>(&self, resource: Resource, verb: Verb, call: F) -> Result<T, kube::Error>
    where
        F: Future<Output = Result<T, kube::Error>>,
    {
        debug_assert!(
            rbac::allows(resource, verb),
            "{} {} is not declared in kubernetes/rbac.rs",
            verb.as_str(),
            resource.name()
        );
        let result = call.await;
        let outcome = match &result {
            Ok(_) => "ok",
            Err(e) => api_outcome(e),
        };
        self.api_calls.get_or_create(&ApiCallLabels { resource: resource.name(), verb: verb.as_str(), outcome }).inc();
        result
    }

    pub fn set_lease(&self, lease: &'static str, held: bool) {
        let gauge = self.lease_held.get_or_create(&LeaseLabels { lease });
        if (gauge.get() == 1) != held {
            self.lease_transitions.get_or_create(&LeaseLabels { lease }).inc();
        }
        gauge.set(i64::from(held));
    }
}

/// Stable label for an API error.
pub fn api_outcome(e: &kube::Error) -> &'static str {
    match e {
        kube::Error::Api(s) => match s.code {
            400 => "bad_request",
            401 => "unauthorized",
            403 => "forbidden",
            404 => "not_found",
            409 if s.reason == "AlreadyExists" => "already_exists",
            409 => "conflict",
            410 => "gone",
            422 => "invalid",
            429 => "too_many_requests",
            500..=599 => "server_error",
            _ => "other_status",
        },
        _ => "transport",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn status(code: u16, reason: &str) -> kube::Error {
        kube::Error::Api(Box::new(kube::core::Status { code, reason: reason.into(), ..Default::default() }))
    }

    #[tokio::test]
    async fn calls_are_counted_by_outcome() {
        let m = KubeMetrics::default();
        let _ = m.call(Resource::Jobs, Verb::Create, async { Ok::<_, kube::Error>(()) }).await;
        let _ = m.call(Resource::Jobs, Verb::Create, async { Err::<(), _>(status(409, "AlreadyExists")) }).await;
        let _ = m.call(Resource::Jobs, Verb::Create, async { Err::<(), _>(status(503, "")) }).await;
        let get =
            |outcome| m.api_calls.get_or_create(&ApiCallLabels { resource: "jobs", verb: "create", outcome }).get();
        assert_eq!((get("ok"), get("already_exists"), get("server_error")), (1, 1, 1));
        let mut registry = Registry::default();
        m.register(&mut registry);
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &registry).unwrap();
        assert!(
            text.contains("kubernetes_api_calls_total{resource=\"jobs\",verb=\"create\",outcome=\"ok\"} 1"),
            "{text}"
        );
    }

    #[test]
    fn lease_transitions_count_changes_only() {
        let m = KubeMetrics::default();
        m.set_lease("runtime-pruning", true);
        m.set_lease("runtime-pruning", true);
        m.set_lease("runtime-pruning", false);
        assert_eq!(m.lease_transitions.get_or_create(&LeaseLabels { lease: "runtime-pruning" }).get(), 2);
        assert_eq!(m.lease_held.get_or_create(&LeaseLabels { lease: "runtime-pruning" }).get(), 0);
    }
}
