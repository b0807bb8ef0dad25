//! [`TranslateSettings`]: exactly what translation reads, taken from the config once.
//! No secrets in here (the internal API key reaches pods by `secretKeyRef`, the executor
//! holds the key itself).
use crate::backend::sidecar_env::SidecarPolicy;
use crate::config::model::{Config, ImageSettings, KubernetesSettings, RuntimeConfig};
use k8s_openapi::api::core::v1 as core;

/// The port of the default `listen` (`0.0.0.0:8080`).
const DEFAULT_JOB_MANAGER_PORT: u16 = 8080;

#[derive(Clone, Debug, PartialEq)]
pub struct TranslateSettings {
    /// `runtimes`: every configured runtime type, enabled or not (translation says which
    /// one is disabled or of the wrong workload).
    pub runtimes: Vec<RuntimeConfig>,
    /// `kubernetes.*`: the pod template's knobs.
    pub kubernetes: KubernetesSettings,
    pub sidecar: SidecarPod,
    /// The sidecar's policy, upstream proxy and logging (the local executor's mapping).
    pub sidecar_policy: SidecarPolicy,
    /// `hostnameOverride`: the job-manager Service sidecars call.
    pub job_manager_service: String,
    /// The port of `listen`: where the result API serves, so the port sidecars call on
    /// the Service (the chart sets both from `service.port`) and the one the runtime
    /// NetworkPolicy opens towards the job-manager pods.
    pub job_manager_port: u16,
    /// `checkTimeout`: the upper bound of a Job's `activeDeadlineSeconds`.
    pub check_timeout: u32,
    /// The merged user-defined variables as the JSON text the runtime gets (`{}` if none).
    pub user_defined_variables: String,
}

/// The `sidecar.*` fields the pod template uses.
#[derive(Clone, Debug, PartialEq)]
pub struct SidecarPod {
    pub image: ImageSettings,
    pub resources: Option<core::ResourceRequirements>,
    pub port: u16,
    pub admin_port: u16,
    pub ingress_port: u16,
    pub no_proxy: Vec<String>,
    /// Blocked by the runtime NetworkPolicy too (IP addresses only).
    pub api_server_addresses: Vec<String>,
}

impl TranslateSettings {
    /// From the config, with the user-defined variables already merged from JSON, file
    /// and path (as config validation does).
    pub fn new(config: &Config, user_defined_variables: &serde_json::Map<String, serde_json::Value>) -> Self {
        Self::from(config).with_user_defined_variables(serde_json::Value::Object(user_defined_variables.clone()))
    }

    pub fn with_user_defined_variables(mut self, variables: serde_json::Value) -> Self {
        self.user_defined_variables = variables.to_string();
        self
    }
}

/// Takes the user-defined variables from `userDefinedJson` as written (`render`, tests);
/// see [`TranslateSettings::new`] for merged ones.
impl From<&Config> for TranslateSettings {
    fn from(c: &Config) -> Self {
        let json = &c.user_defined_variables.user_defined_json;
        let s = &c.sidecar;
        Self {
            runtimes: c.runtimes.clone(),
            kubernetes: c.kubernetes.clone(),
            sidecar: SidecarPod {
                image: s.image.clone(),
                resources: s.resources.clone(),
                port: s.port,
                admin_port: s.admin_port,
                ingress_port: s.ingress_port,
                no_proxy: s.no_proxy.clone(),
                api_server_addresses: s.api_server_addresses.clone(),
            },
            sidecar_policy: SidecarPolicy::from(c),
            job_manager_service: c.hostname_override.clone(),
            // Validation refuses an unparsable `listen` before a job runs; `render` of
            // such a config shows the default port.
            job_manager_port: c.listen.parse::<std::net::SocketAddr>().map_or(DEFAULT_JOB_MANAGER_PORT, |a| a.port()),
            check_timeout: c.check_timeout,
            user_defined_variables: if json.trim().is_empty() { "{}".to_string() } else { json.clone() },
        }
    }
}
