//! The exact Kubernetes API rights the job manager uses, declared once. Every request
//! goes through [`crate::backend::kubernetes::client::ApiCallLayer`] on the shared client
//! (watch caches, leases and event recording included), which classifies it as a
//! ([`Resource`], [`Verb`]) pair and (in debug builds) asserts the pair is declared here,
//! so the tests against the emulator fail when code starts using a right the Role lacks.
//! `job-manager rbac` prints [`rules`] as YAML; the chart's Role must match it. Everything
//! is namespaced: no cluster-wide rights (the CRD itself is installed by Helm).
use serde::Serialize;

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Resource {
    JobRecords,
    JobRecordStatus,
    Jobs,
    Pods,
    Events,
    Deployments,
    Services,
    HorizontalPodAutoscalers,
    NetworkPolicies,
    Leases,
    /// Core (v1) events, read-only: the Job controller's `FailedCreate` warnings.
    CoreEvents,
}

impl Resource {
    pub const ALL: [Resource; 11] = [
        Resource::JobRecords,
        Resource::JobRecordStatus,
        Resource::Jobs,
        Resource::Pods,
        Resource::Events,
        Resource::Deployments,
        Resource::Services,
        Resource::HorizontalPodAutoscalers,
        Resource::NetworkPolicies,
        Resource::Leases,
        Resource::CoreEvents,
    ];

    pub fn api_group(self) -> &'static str {
        match self {
            Resource::JobRecords | Resource::JobRecordStatus => crate::backend::kubernetes::record::GROUP,
            Resource::Pods | Resource::CoreEvents => "",
            Resource::Events => "events.k8s.io",
            Resource::Jobs => "batch",
            Resource::Deployments => "apps",
            Resource::Services => "",
            Resource::HorizontalPodAutoscalers => "autoscaling",
            Resource::NetworkPolicies => "networking.k8s.io",
            Resource::Leases => "coordination.k8s.io",
        }
    }

    /// The RBAC resource name (and the metrics label).
    pub fn name(self) -> &'static str {
        match self {
            Resource::JobRecords => "jobrecords",
            Resource::JobRecordStatus => "jobrecords/status",
            Resource::Jobs => "jobs",
            Resource::Pods => "pods",
            Resource::Events | Resource::CoreEvents => "events",
            Resource::Deployments => "deployments",
            Resource::Services => "services",
            Resource::HorizontalPodAutoscalers => "horizontalpodautoscalers",
            Resource::NetworkPolicies => "networkpolicies",
            Resource::Leases => "leases",
        }
    }

    /// What the code does with the resource, and why.
    pub fn verbs(self) -> &'static [Verb] {
        use Verb::*;
        match self {
            // Created per job, read by the result store, listed for capacity and pruning,
            // deleted by pruning and delivery.
            Resource::JobRecords => &[Get, List, Watch, Create, Delete],
            // Results are written with resourceVersion preconditions.
            Resource::JobRecordStatus => &[Get, Update, Patch],
            Resource::Jobs => &[Get, List, Watch, Create, Delete],
            // Failure diagnosis reads pod status.
            Resource::Pods => &[Get, List, Watch],
            // Lifecycle events (kube's recorder creates, then patches repeats).
            Resource::Events => &[Create, Patch],
            // Persistent workloads: server-side apply; listed and deleted when their
            // runtime type leaves the config.
            Resource::Deployments | Resource::Services | Resource::HorizontalPodAutoscalers => {
                &[Get, List, Patch, Delete]
            }
            // The NetworkPolicy: applied, deleted when switched off.
            Resource::NetworkPolicies => &[Get, Patch, Delete],
            // kube-lease-manager: read, create once, renew/take over by patch.
            Resource::Leases => &[Get, Create, Patch],
            // Why a Job has no pod (quota, admission): its FailedCreate events, listed by
            // field selector when pruning reports the job failed.
            Resource::CoreEvents => &[List],
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Verb {
    Get,
    List,
    Watch,
    Create,
    Update,
    Patch,
    Delete,
    /// `DELETE` on a collection; classified so it can be refused, granted to nothing.
    DeleteCollection,
}

impl Verb {
    pub fn as_str(self) -> &'static str {
        match self {
            Verb::Get => "get",
            Verb::List => "list",
            Verb::Watch => "watch",
            Verb::Create => "create",
            Verb::Update => "update",
            Verb::Patch => "patch",
            Verb::Delete => "delete",
            Verb::DeleteCollection => "deletecollection",
        }
    }
}

/// Whether the declared rules grant `verb` on `resource`.
pub fn allows(resource: Resource, verb: Verb) -> bool {
    resource.verbs().contains(&verb)
}

/// One RBAC PolicyRule, as the chart's Role writes it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct PolicyRule {
    pub api_groups: Vec<String>,
    pub resources: Vec<String>,
    pub verbs: Vec<String>,
}

/// The Role's rules: one per resource, in a stable order.
pub fn rules() -> Vec<PolicyRule> {
    Resource::ALL
        .iter()
        .map(|r| PolicyRule {
            api_groups: vec![r.api_group().to_string()],
            resources: vec![r.name().to_string()],
            verbs: r.verbs().iter().map(|v| v.as_str().to_string()).collect(),
        })
        .collect()
}

/// What `job-manager rbac` prints.
pub fn rules_yaml() -> String {
    serde_saphyr::to_string(&rules()).expect("rules always serialize")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn no_wildcards_and_no_cluster_resources() {
        for rule in rules() {
            for field in [&rule.api_groups, &rule.resources, &rule.verbs] {
                assert!(!field.iter().any(|s| s == "*"), "{rule:?}");
            }
            for forbidden in
                ["roles", "rolebindings", "clusterroles", "nodes", "namespaces", "customresourcedefinitions"]
            {
                assert!(!rule.resources.iter().any(|r| r == forbidden), "{rule:?}");
            }
            // No escalation verbs.
            assert!(!rule.verbs.iter().any(|v| v == "escalate" || v == "bind" || v == "impersonate"), "{rule:?}");
        }
    }

    #[test]
    fn every_resource_once() {
        let rules = rules();
        assert_eq!(rules.len(), Resource::ALL.len());
        let mut names: Vec<_> = rules.iter().map(|r| (r.api_groups[0].clone(), r.resources[0].clone())).collect();
        names.sort();
        names.dedup();
        assert_eq!(names.len(), Resource::ALL.len());
    }

    #[test]
    fn yaml_shape() {
        let yaml = rules_yaml();
        assert!(yaml.starts_with("- apiGroups:\n  - jobs.jobmanager.dev\n  resources:\n  - jobrecords\n"), "{yaml}");
        assert!(
            yaml.contains("- apiGroups:\n  - \"\"\n  resources:\n  - pods\n  verbs:\n  - get\n  - list\n  - watch\n"),
            "{yaml}"
        );
    }

    #[test]
    fn no_access_to_secrets() {
        // Runtime pods get the job token as an env var on the sidecar and the internal API
        // key by `secretKeyRef` (resolved by the kubelet): the job manager itself never
        // needs to read or write a Secret, so its Role grants none.
        assert!(!rules().iter().any(|r| r.resources.iter().any(|x| x == "secrets")));
    }
}
