//! Kubernetes executor metrics: API calls by resource, verb and outcome (counted by
//! [`crate::backend::kubernetes::client::ApiCallLayer`] on the shared client); lease
//! ownership; what pruning and diagnosis did. [`KubeMetrics::register`] is the hook the
//! process's `/metrics` registry calls (metrics are shared handles: register once,
//! update from anywhere).
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ApiCallLabels {
    pub resource: &'static str,
    pub verb: &'static str,
    /// `ok`, or what the error status means ([`crate::backend::kubernetes::client::status_outcome`]).
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

/// The `reason` values of `pruned_objects` (see `coordination.rs`).
pub const PRUNE_REASONS: [&str; 3] = ["orphan_job", "stopped_job", "retired_runtime"];

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
        use crate::backend::kubernetes::diagnose::Cause;
        let reasons = |r: &[&'static str]| r.iter().map(|&reason| ReasonLabels { reason }).collect::<Vec<_>>();
        common::metrics::pre_create(&self.diagnosed, reasons(&Cause::ALL.map(Cause::label)));
        common::metrics::pre_create(&self.pruned, reasons(&PRUNE_REASONS));
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

    pub fn set_lease(&self, lease: &'static str, held: bool) {
        let gauge = self.lease_held.get_or_create(&LeaseLabels { lease });
        if (gauge.get() == 1) != held {
            self.lease_transitions.get_or_create(&LeaseLabels { lease }).inc();
        }
        gauge.set(i64::from(held));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
