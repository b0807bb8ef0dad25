//! The job manager's settings as plain data: what the config file (YAML), `JM_*`
//! environment variables and flags fill in (see `common/CONTRACTS.md`). Loading,
//! precedence and validation live beside this file; this one only says what exists
//! and its default. Kubernetes-shaped fields use k8s-openapi types, so a malformed
//! toleration or resource quantity fails when the file is read.
pub use crate::telemetry::LogFormat;
use k8s_openapi::api::core::v1 as core;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields, default)]
pub struct Config {
    // --- seed 000 `jobManager.*` / `global.*` ---
    pub location_key: String,
    pub broker_api_endpoint: String,
    /// Seconds a job may run, 1..=900.
    pub check_timeout: u32,
    pub log_level: String,
    pub log_format: LogFormat,
    pub vse_passphrase: String,
    pub api_proxy_host: String,
    pub api_proxy_port: u16,
    pub broker_api_proxy_self_signed_cert: bool,
    pub broker_api_proxy_username: String,
    pub broker_api_proxy_pw: String,
    /// Meaningless here (no JVM); accepted with a warning.
    pub jvm_opts: String,
    pub network_health_check_disabled: bool,
    /// TLS to the broker beyond the public and system roots: a private CA, a client
    /// certificate for mutual TLS.
    pub broker_tls: BrokerTls,
    pub user_defined_variables: UserDefinedVariables,
    pub hostname_override: String,
    pub internal_api_key: String,
    pub token_signing_key: String,
    // --- this project ---
    pub listen: String,
    pub executor: ExecutorKind,
    pub namespace: String,
    pub poll: PollSettings,
    pub shutdown_grace_secs: u32,
    /// Largest result a runtime may report, bytes (the JSON the sidecar posts to the
    /// result API). The same number is every sidecar's `--max-body-bytes`, so a result
    /// the sidecar accepts is one the job manager takes; over it, the runtime gets 413
    /// and the job a `failed` outcome. Default 1 MiB: the broker API's own body limit.
    pub max_result_bytes: u64,
    /// Local executor: where job directories and the durable result store live.
    pub state_dir: String,
    pub runtimes: Vec<RuntimeConfig>,
    pub sidecar: SidecarSettings,
    pub kubernetes: KubernetesSettings,
    pub local: LocalExecutorSettings,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            location_key: String::new(),
            broker_api_endpoint: "https://compute-broker.nr-data.net".into(),
            check_timeout: 180,
            log_level: "INFO".into(),
            log_format: LogFormat::Text,
            vse_passphrase: String::new(),
            api_proxy_host: String::new(),
            api_proxy_port: 0,
            broker_api_proxy_self_signed_cert: false,
            broker_api_proxy_username: String::new(),
            broker_api_proxy_pw: String::new(),
            jvm_opts: String::new(),
            network_health_check_disabled: false,
            broker_tls: BrokerTls::default(),
            user_defined_variables: UserDefinedVariables::default(),
            hostname_override: "job-manager".into(),
            internal_api_key: String::new(),
            token_signing_key: String::new(),
            listen: "0.0.0.0:8080".into(),
            executor: ExecutorKind::Local,
            namespace: String::new(),
            poll: PollSettings::default(),
            shutdown_grace_secs: 30,
            max_result_bytes: DEFAULT_MAX_RESULT_BYTES,
            state_dir: String::new(),
            runtimes: Vec::new(),
            sidecar: SidecarSettings::default(),
            kubernetes: KubernetesSettings::default(),
            local: LocalExecutorSettings::default(),
        }
    }
}

/// The local executor's own settings (`local.*`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields, default)]
pub struct LocalExecutorSettings {
    /// UIDs for jobs when the job manager runs as root, `first-last`: each running job
    /// takes two (runtime `first+2k`, sidecar `first+2k+1`), so at most half as many
    /// jobs run at once. Two job managers on one host need ranges that do not overlap.
    pub uid_range: String,
    /// MiB preallocated beside the result journal (`journal.reserve`) and released when
    /// the disk is full, so results of jobs in flight can still be made durable. 0: none.
    pub result_reserve_mb: u32,
}

impl Default for LocalExecutorSettings {
    fn default() -> Self {
        Self {
            uid_range: crate::backend::local::isolation::DEFAULT_UID_RANGE.into(),
            result_reserve_mb: (crate::results::file::DEFAULT_RESERVE_BYTES >> 20) as u32,
        }
    }
}

/// `maxResultBytes` by default and at least: the broker API's body limit (1 MiB). A
/// persistent runtime's sidecar reads dispatched jobs under the same limit, and the
/// broker takes jobs up to 1 MiB, so less would refuse jobs the broker hands out.
pub const DEFAULT_MAX_RESULT_BYTES: u64 = 1024 * 1024;
/// `maxResultBytes` at most: half the sidecar's default memory for bodies (32 MiB), so
/// two results can be held at once, and the size of the largest poll answer read.
pub const MAX_MAX_RESULT_BYTES: u64 = 16 * 1024 * 1024;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum ExecutorKind {
    #[default]
    Local,
    Kubernetes,
}

/// PEM files (the chart mounts them from a ConfigMap and a `kubernetes.io/tls` Secret).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "camelCase", deny_unknown_fields, default)]
pub struct BrokerTls {
    /// CA certificates trusted for the broker (and a TLS-intercepting proxy) in addition
    /// to the public and system roots.
    pub ca_file: String,
    /// Client certificate chain and its key, presented to the broker (mutual TLS).
    pub client_cert_file: String,
    pub client_key_file: String,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "camelCase", deny_unknown_fields, default)]
pub struct UserDefinedVariables {
    pub user_defined_json: String,
    pub user_defined_file: String,
    pub user_defined_path: String,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields, default)]
pub struct PollSettings {
    pub interval_ms: u64,
    pub batch_size: u32,
}

impl Default for PollSettings {
    fn default() -> Self {
        Self { interval_ms: 1000, batch_size: 10 }
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields, default)]
pub struct ImageSettings {
    pub repository: String,
    pub tag: String,
    pub pull_policy: String,
    /// `sha256:<hex>`: pins the image; wins over `tag` (`repository@digest`).
    pub digest: String,
}

impl Default for ImageSettings {
    fn default() -> Self {
        Self {
            repository: String::new(),
            tag: "latest".into(),
            pull_policy: "IfNotPresent".into(),
            digest: String::new(),
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum Workload {
    #[default]
    Ephemeral,
    Persistent,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields, default)]
pub struct RuntimeConfig {
    pub name: String,
    pub enabled: bool,
    pub workload: Workload,
    /// Max concurrent jobs of this type per replica (and the Job's parallelism).
    pub parallelism: u32,
    /// Seed 000's "jobs expected per minute (x parallelism)": the synthetics job manager's
    /// runtime CronJob ran `completions` pods a minute. Here an execution is one pod
    /// started when a job arrives, so there is nothing to size: accepted for values
    /// compatibility and ignored with a warning (the chart passes it only when set to
    /// something other than the seed's 6).
    pub completions: Option<u32>,
    pub image: ImageSettings,
    pub image_pull_secrets: Vec<core::LocalObjectReference>,
    pub resources: Option<core::ResourceRequirements>,
    /// Local executor: the runtime's argv (`{bin}` expands to the job manager's directory).
    pub command: Vec<String>,
    /// Persistent workloads: HPA bounds and the runtime's loopback port.
    pub replicas: ReplicaBounds,
    pub port: u16,
    pub extra_env: BTreeMap<String, String>,
    /// Kubernetes: this runtime type's RuntimeClass (e.g. gVisor's `gvisor`, Kata's
    /// `kata`); empty: `kubernetes.runtimeClassName`.
    pub runtime_class_name: String,
    /// Kubernetes: merged over `kubernetes.nodeSelector` (this runtime wins on a key).
    pub node_selector: BTreeMap<String, String>,
    /// Kubernetes: added to `kubernetes.tolerations`.
    pub tolerations: Vec<core::Toleration>,
    /// Kubernetes: replaces `kubernetes.affinity` for this runtime's pods.
    pub affinity: Option<core::Affinity>,
    /// Kubernetes: merged over `kubernetes.podAnnotations` (this runtime wins on a key).
    pub pod_annotations: BTreeMap<String, String>,
    /// Kubernetes: the runtime container's security context, replacing
    /// `kubernetes.runtimeSecurityContext` (its UID must still differ from the sidecar's).
    pub security_context: Option<core::SecurityContext>,
}

impl Default for RuntimeConfig {
    fn default() -> Self {
        Self {
            name: String::new(),
            enabled: true,
            workload: Workload::Ephemeral,
            parallelism: 1,
            completions: None,
            image: ImageSettings::default(),
            image_pull_secrets: Vec::new(),
            resources: None,
            command: Vec::new(),
            replicas: ReplicaBounds::default(),
            port: 8081,
            extra_env: BTreeMap::new(),
            runtime_class_name: String::new(),
            node_selector: BTreeMap::new(),
            tolerations: Vec::new(),
            affinity: None,
            pod_annotations: BTreeMap::new(),
            security_context: None,
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields, default)]
pub struct ReplicaBounds {
    pub min: u32,
    pub max: u32,
    pub target_cpu_utilization: u32,
    pub target_memory_utilization: u32,
}

impl Default for ReplicaBounds {
    fn default() -> Self {
        Self { min: 1, max: 5, target_cpu_utilization: 70, target_memory_utilization: 80 }
    }
}

/// Behind an upstream proxy, what the sidecar does with a name it cannot resolve:
/// refuse it (no address rule could run on it), or forward it for the upstream proxy to
/// resolve (`SIDECAR_UPSTREAM_PROXY_UNRESOLVED`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum UpstreamProxyUnresolved {
    #[default]
    Refuse,
    Forward,
}

/// How runtimes' sidecars are configured (policy is passed as `SIDECAR_*` env).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields, default)]
pub struct SidecarSettings {
    pub enabled: bool,
    pub image: ImageSettings,
    pub resources: Option<core::ResourceRequirements>,
    /// Local executor: path of the sidecar binary (default: beside the job manager).
    pub binary: String,
    pub allow_cidrs: Vec<String>,
    pub deny_cidrs: Vec<String>,
    pub allow_hosts: Vec<String>,
    pub deny_hosts: Vec<String>,
    pub deny_private: bool,
    /// Allow-list mode: public destinations are refused too, only `allow_cidrs` (and the
    /// job manager) can be reached.
    pub deny_public: bool,
    pub report_only: bool,
    pub api_server_addresses: Vec<String>,
    pub upstream_proxy: String,
    /// Destinations the sidecar dials directly instead of through `upstream_proxy`.
    pub upstream_proxy_bypass: Vec<String>,
    /// Names the sidecar cannot resolve while `upstream_proxy` is set.
    pub upstream_proxy_unresolved: UpstreamProxyUnresolved,
    pub no_proxy: Vec<String>,
    /// Port of the proxy + local API inside the pod.
    pub port: u16,
    pub admin_port: u16,
    pub ingress_port: u16,
}

impl Default for SidecarSettings {
    fn default() -> Self {
        Self {
            enabled: true,
            image: ImageSettings { repository: "newrelic/serverless-sidecar".into(), ..ImageSettings::default() },
            resources: None,
            binary: String::new(),
            allow_cidrs: Vec::new(),
            deny_cidrs: Vec::new(),
            allow_hosts: Vec::new(),
            deny_hosts: Vec::new(),
            deny_private: false,
            deny_public: false,
            report_only: false,
            api_server_addresses: Vec::new(),
            upstream_proxy: String::new(),
            upstream_proxy_bypass: Vec::new(),
            upstream_proxy_unresolved: UpstreamProxyUnresolved::Refuse,
            no_proxy: Vec::new(),
            port: 3128,
            admin_port: 9901,
            ingress_port: 8443,
        }
    }
}

/// Seed 001 values that shape runtime pods (input of the Kubernetes translation).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields, default)]
pub struct KubernetesSettings {
    pub image_registry: String,
    pub image_pull_secrets: Vec<core::LocalObjectReference>,
    pub pod_annotations: BTreeMap<String, String>,
    pub pod_labels: BTreeMap<String, String>,
    pub node_selector: BTreeMap<String, String>,
    pub tolerations: Vec<core::Toleration>,
    pub affinity: Option<core::Affinity>,
    /// PriorityClass of runtime pods; empty: the cluster's default.
    pub priority_class_name: String,
    /// A ConfigMap of PEM CA certificates mounted into runtime containers, named to
    /// Node by `NODE_EXTRA_CA_CERTS` (added to its bundled roots): for origins behind a
    /// private CA. Empty name: none.
    pub runtime_ca_bundle: ConfigMapKey,
    pub topology_spread_constraints: Vec<core::TopologySpreadConstraint>,
    pub pod_security_context: Option<core::PodSecurityContext>,
    /// Sidecar container (read-only root filesystem).
    pub security_context: Option<core::SecurityContext>,
    /// Runtime container (root filesystem writable by default: browsers need /tmp).
    pub runtime_security_context: Option<core::SecurityContext>,
    pub termination_grace_period_seconds: i64,
    pub job: JobSettings,
    pub persistence: PersistenceSettings,
    pub custom_node_modules_path: String,
    pub extra_volumes: Vec<core::Volume>,
    pub extra_volume_mounts: Vec<core::VolumeMount>,
    pub sidecars: Vec<core::Container>,
    pub extra_env: BTreeMap<String, String>,
    pub network_policy: NetworkPolicySettings,
    pub restrict_metadata_service: bool,
    /// The `egress-init` container: a firewall in each runtime pod's network namespace
    /// that lets only the sidecar's UID send packets off the pod.
    pub egress_firewall: Toggle,
    /// RuntimeClass of runtime pods (a runtime type's own wins); empty: the cluster's default.
    pub runtime_class_name: String,
    /// Secret (key `internalApiKey`) the sidecar's env refers to.
    pub internal_api_key_secret_name: String,
    /// Service account runtime pods run as (no token is mounted either way).
    pub runtime_service_account: String,
    /// Labels of the job-manager pods: the runtime NetworkPolicy admits ingress from, and
    /// egress to, pods matching them (the chart sets its selector labels here).
    pub job_manager_pod_labels: BTreeMap<String, String>,
    /// Base URL per persistent runtime type that jobs are POSTed to; default: the
    /// runtime's Service by cluster DNS (`http://jm-rt-<type>.<namespace>.svc:<ingress port>`).
    /// For a job manager outside the cluster (development) or behind a mesh.
    pub persistent_endpoints: BTreeMap<String, String>,
}

impl Default for KubernetesSettings {
    fn default() -> Self {
        Self {
            image_registry: String::new(),
            image_pull_secrets: Vec::new(),
            pod_annotations: BTreeMap::new(),
            pod_labels: BTreeMap::new(),
            node_selector: BTreeMap::new(),
            tolerations: Vec::new(),
            affinity: None,
            priority_class_name: String::new(),
            runtime_ca_bundle: ConfigMapKey { config_map_name: String::new(), key: "ca.crt".into() },
            topology_spread_constraints: Vec::new(),
            pod_security_context: None,
            security_context: None,
            runtime_security_context: None,
            termination_grace_period_seconds: 30,
            job: JobSettings::default(),
            persistence: PersistenceSettings::default(),
            custom_node_modules_path: String::new(),
            extra_volumes: Vec::new(),
            extra_volume_mounts: Vec::new(),
            sidecars: Vec::new(),
            extra_env: BTreeMap::new(),
            network_policy: NetworkPolicySettings { enabled: true, deny_cidrs: Vec::new() },
            restrict_metadata_service: true,
            egress_firewall: Toggle { enabled: true },
            runtime_class_name: String::new(),
            internal_api_key_secret_name: String::new(),
            runtime_service_account: String::new(),
            job_manager_pod_labels: BTreeMap::from([(
                "app.kubernetes.io/component".to_string(),
                "job-manager".to_string(),
            )]),
            persistent_endpoints: BTreeMap::new(),
        }
    }
}

/// One key of a ConfigMap.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "camelCase", deny_unknown_fields, default)]
pub struct ConfigMapKey {
    pub config_map_name: String,
    pub key: String,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "camelCase", deny_unknown_fields, default)]
pub struct Toggle {
    pub enabled: bool,
}

/// The runtime NetworkPolicy (defence in depth under the egress firewall).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "camelCase", deny_unknown_fields, default)]
pub struct NetworkPolicySettings {
    pub enabled: bool,
    /// CIDRs runtime pods may never reach, on top of metadata and the API servers: node
    /// CIDRs, so kubelets are unreachable even without the egress firewall.
    pub deny_cidrs: Vec<String>,
}

/// UID runtime containers run as when no security context says otherwise.
pub const DEFAULT_RUNTIME_UID: i64 = 1001;
/// UID sidecar containers run as when no security context says otherwise: never the
/// runtime's, so the egress firewall can tell their packets apart.
pub const DEFAULT_SIDECAR_UID: i64 = 1002;

impl KubernetesSettings {
    /// The UID the sidecar container runs as: its security context, else the pod's, else
    /// the default (a configured sidecar context without `runAsUser` leaves it to the
    /// pod's, then to the image: `None`).
    pub fn sidecar_uid(&self) -> Option<i64> {
        match &self.security_context {
            None => Some(DEFAULT_SIDECAR_UID),
            Some(ctx) => ctx.run_as_user.or_else(|| self.pod_uid()),
        }
    }

    /// The UID the runtime container runs as (same rules as [`Self::sidecar_uid`]).
    pub fn runtime_uid(&self) -> Option<i64> {
        match &self.runtime_security_context {
            None => Some(DEFAULT_RUNTIME_UID),
            Some(ctx) => ctx.run_as_user.or_else(|| self.pod_uid()),
        }
    }

    /// The UID `runtime`'s container runs as: its own security context when it has one.
    pub fn runtime_uid_of(&self, runtime: &RuntimeConfig) -> Option<i64> {
        match &runtime.security_context {
            None => self.runtime_uid(),
            Some(ctx) => ctx.run_as_user.or_else(|| self.pod_uid()),
        }
    }

    fn pod_uid(&self) -> Option<i64> {
        match &self.pod_security_context {
            None => Some(DEFAULT_RUNTIME_UID),
            Some(ctx) => ctx.run_as_user,
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields, default)]
pub struct JobSettings {
    pub backoff_limit: i32,
    pub ttl_seconds_after_finished: i32,
}

impl Default for JobSettings {
    fn default() -> Self {
        Self { backoff_limit: 0, ttl_seconds_after_finished: 60 }
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields, default)]
pub struct PersistenceSettings {
    /// Use this PVC for the shared data volume; empty means an emptyDir.
    pub existing_claim_name: String,
    pub empty_dir_size_limit: String,
    pub mount_path: String,
    pub sub_path: String,
}

impl Default for PersistenceSettings {
    fn default() -> Self {
        Self {
            existing_claim_name: String::new(),
            empty_dir_size_limit: "2Gi".into(),
            mount_path: "/data".into(),
            sub_path: String::new(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn empty_file_is_all_defaults() {
        let c: Config = serde_saphyr::from_str("{}").unwrap();
        assert_eq!(c, Config::default());
        assert_eq!(c.check_timeout, 180);
        assert_eq!(c.hostname_override, "job-manager");
    }

    #[test]
    fn unknown_key_named() {
        let err = serde_saphyr::from_str::<Config>("checkTimeOut: 5").unwrap_err().to_string();
        assert!(err.contains("unknown field `checkTimeOut`"), "{err}");
    }

    #[test]
    fn kubernetes_fields_are_typed() {
        let err = serde_saphyr::from_str::<Config>("kubernetes: {tolerations: [{effect: 3, key: [1]}]}")
            .unwrap_err()
            .to_string();
        assert!(err.contains("kubernetes"), "{err}");
        let c: Config = serde_saphyr::from_str(
            "runtimes: [{name: rt, resources: {limits: {cpu: '1', memory: 1Gi}}}]\nkubernetes: {persistence: {existingClaimName: data}}",
        )
        .unwrap();
        assert_eq!(c.runtimes[0].parallelism, 1);
        assert_eq!(c.kubernetes.persistence.existing_claim_name, "data");
    }
}
