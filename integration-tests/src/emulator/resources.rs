//! The resource types the emulator serves: the built-in kinds the job manager uses,
//! plus custom resources registered when their CRD is created.
use serde_json::{json, Value};

/// How objects of a type are validated.
#[derive(Clone, Debug, PartialEq)]
pub enum SchemaSource {
    /// A key of the vendored schema bundle (`schemas/k8s-v1.33-strict.json`).
    Builtin(&'static str),
    /// A CRD version's `openAPIV3Schema`.
    Crd(Value),
}

#[derive(Clone, Debug, PartialEq)]
pub struct ResourceType {
    pub group: String,
    pub version: String,
    pub plural: String,
    pub singular: String,
    pub kind: String,
    pub namespaced: bool,
    pub short_names: Vec<String>,
    pub has_status: bool,
    pub schema: SchemaSource,
    /// Field selectors accepted besides `metadata.name`/`metadata.namespace`.
    pub extra_field_selectors: Vec<&'static str>,
    /// A CRD version's `additionalPrinterColumns` (`kubectl get` columns); null for
    /// built-in kinds, whose columns are in [`crate::emulator::table`].
    pub printer_columns: Value,
}

impl ResourceType {
    pub fn api_version(&self) -> String {
        if self.group.is_empty() {
            self.version.clone()
        } else {
            format!("{}/{}", self.group, self.version)
        }
    }

    pub fn list_kind(&self) -> String {
        format!("{}List", self.kind)
    }

    pub fn field_selectors(&self) -> Vec<&str> {
        let mut v = vec!["metadata.name", "metadata.namespace"];
        v.extend(self.extra_field_selectors.iter().copied());
        v
    }

    /// One entry of an `APIResourceList`.
    pub fn discovery_entries(&self) -> Vec<Value> {
        let verbs = ["create", "delete", "deletecollection", "get", "list", "patch", "update", "watch"];
        let mut main = json!({
            "name": self.plural, "singularName": self.singular, "namespaced": self.namespaced,
            "kind": self.kind, "verbs": verbs,
        });
        if !self.short_names.is_empty() {
            main["shortNames"] = json!(self.short_names);
        }
        let mut out = vec![main];
        if self.has_status {
            out.push(json!({
                "name": format!("{}/status", self.plural), "singularName": "", "namespaced": self.namespaced,
                "kind": self.kind, "verbs": ["get", "patch", "update"],
            }));
        }
        match (self.group.as_str(), self.kind.as_str()) {
            ("", "Pod") => out.push(json!({
                "name": "pods/log", "singularName": "", "namespaced": true, "kind": "Pod", "verbs": ["get"],
            })),
            ("", "ServiceAccount") => out.push(json!({
                "name": "serviceaccounts/token", "singularName": "", "namespaced": true, "group": "authentication.k8s.io",
                "version": "v1", "kind": "TokenRequest", "verbs": ["create"],
            })),
            ("apps", "Deployment") => out.push(json!({
                "name": "deployments/scale", "singularName": "", "namespaced": true, "group": "autoscaling",
                "version": "v1", "kind": "Scale", "verbs": ["get", "patch", "update"],
            })),
            _ => {}
        }
        out
    }
}

fn builtin(
    group: &str,
    version: &str,
    plural: &str,
    kind: &str,
    short: &[&str],
    has_status: bool,
    schema: &'static str,
) -> ResourceType {
    ResourceType {
        group: group.into(),
        version: version.into(),
        plural: plural.into(),
        singular: kind.to_ascii_lowercase(),
        kind: kind.into(),
        namespaced: true,
        short_names: short.iter().map(|s| s.to_string()).collect(),
        has_status,
        schema: SchemaSource::Builtin(schema),
        extra_field_selectors: vec![],
        printer_columns: Value::Null,
    }
}

/// The built-in kinds, in discovery order.
pub fn builtins() -> Vec<ResourceType> {
    let mut pods = builtin("", "v1", "pods", "Pod", &["po"], true, "pod-v1");
    pods.extra_field_selectors = vec!["status.phase", "spec.nodeName"];
    let mut events = builtin("", "v1", "events", "Event", &["ev"], false, "event-v1");
    events.extra_field_selectors =
        vec!["involvedObject.name", "involvedObject.kind", "involvedObject.uid", "reason", "type"];
    let quotas = builtin("", "v1", "resourcequotas", "ResourceQuota", &["quota"], true, "resourcequota-v1");
    let mut secrets = builtin("", "v1", "secrets", "Secret", &[], false, "secret-v1");
    secrets.extra_field_selectors = vec!["type"];
    let mut crds = builtin(
        "apiextensions.k8s.io",
        "v1",
        "customresourcedefinitions",
        "CustomResourceDefinition",
        &["crd", "crds"],
        true,
        "customresourcedefinition-apiextensions-v1",
    );
    crds.namespaced = false;
    let cluster = |mut t: ResourceType| {
        t.namespaced = false;
        t
    };
    let mut namespaces = cluster(builtin("", "v1", "namespaces", "Namespace", &["ns"], true, "namespace-v1"));
    namespaces.extra_field_selectors = vec!["status.phase"];
    let rbac = "rbac.authorization.k8s.io";
    vec![
        namespaces,
        pods,
        secrets,
        builtin("", "v1", "services", "Service", &["svc"], true, "service-v1"),
        builtin("", "v1", "configmaps", "ConfigMap", &["cm"], false, "configmap-v1"),
        events,
        builtin("events.k8s.io", "v1", "events", "Event", &["ev"], false, "event-events-v1"),
        builtin("batch", "v1", "jobs", "Job", &[], true, "job-batch-v1"),
        builtin("apps", "v1", "deployments", "Deployment", &["deploy"], true, "deployment-apps-v1"),
        builtin(
            "autoscaling",
            "v2",
            "horizontalpodautoscalers",
            "HorizontalPodAutoscaler",
            &["hpa"],
            true,
            "horizontalpodautoscaler-autoscaling-v2",
        ),
        builtin(
            "networking.k8s.io",
            "v1",
            "networkpolicies",
            "NetworkPolicy",
            &["netpol"],
            false,
            "networkpolicy-networking-v1",
        ),
        builtin("coordination.k8s.io", "v1", "leases", "Lease", &[], false, "lease-coordination-v1"),
        quotas,
        builtin("", "v1", "serviceaccounts", "ServiceAccount", &["sa"], false, "serviceaccount-v1"),
        builtin(
            "",
            "v1",
            "persistentvolumeclaims",
            "PersistentVolumeClaim",
            &["pvc"],
            true,
            "persistentvolumeclaim-v1",
        ),
        builtin(
            "policy",
            "v1",
            "poddisruptionbudgets",
            "PodDisruptionBudget",
            &["pdb"],
            true,
            "poddisruptionbudget-policy-v1",
        ),
        builtin(rbac, "v1", "roles", "Role", &[], false, "role-rbac-v1"),
        builtin(rbac, "v1", "rolebindings", "RoleBinding", &[], false, "rolebinding-rbac-v1"),
        cluster(builtin(rbac, "v1", "clusterroles", "ClusterRole", &[], false, "clusterrole-rbac-v1")),
        cluster(builtin(
            rbac,
            "v1",
            "clusterrolebindings",
            "ClusterRoleBinding",
            &[],
            false,
            "clusterrolebinding-rbac-v1",
        )),
        crds,
    ]
}

/// The resource types a CRD defines (one per served version).
pub fn from_crd(crd: &Value) -> Vec<ResourceType> {
    let spec = &crd["spec"];
    let group = spec["group"].as_str().unwrap_or_default();
    let names = &spec["names"];
    let plural = names["plural"].as_str().unwrap_or_default();
    let kind = names["kind"].as_str().unwrap_or_default();
    let singular = names["singular"].as_str().map(str::to_string).unwrap_or_else(|| kind.to_ascii_lowercase());
    let short_names: Vec<String> = names["shortNames"]
        .as_array()
        .map(|a| a.iter().filter_map(|s| s.as_str().map(str::to_string)).collect())
        .unwrap_or_default();
    let namespaced = spec["scope"].as_str() != Some("Cluster");
    spec["versions"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|v| v["served"].as_bool().unwrap_or(false))
        .map(|v| ResourceType {
            group: group.into(),
            version: v["name"].as_str().unwrap_or_default().into(),
            plural: plural.into(),
            singular: singular.clone(),
            kind: kind.into(),
            namespaced,
            short_names: short_names.clone(),
            has_status: v.pointer("/subresources/status").is_some(),
            schema: SchemaSource::Crd(v.pointer("/schema/openAPIV3Schema").cloned().unwrap_or(json!({}))),
            extra_field_selectors: vec![],
            printer_columns: v.get("additionalPrinterColumns").cloned().unwrap_or(Value::Null),
        })
        .collect()
}
