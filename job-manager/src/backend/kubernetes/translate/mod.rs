//! Pure translation: job + settings -> the Kubernetes objects the job manager creates.
//! No client in here; the executor does the I/O around it, tests compare whole objects.
//!
//! ```text
//! settings        TranslateSettings: exactly what translation reads, built from the config
//! ephemeral       JobRecord + batch/v1 Job for one ephemeral job
//! persistent      Deployment + Service + HPA per persistent runtime type; the record of
//!                 a job dispatched to one; which persistent workloads are retired
//! network_policy  the runtime NetworkPolicy
//! pod             the pod template both workloads share: sidecar and runtime containers,
//!                 their env, volumes
//! defaults        seed defaults: security contexts, sidecar resources
//! ```
//!
//! Ephemeral job = [`JobRecord`] (created first) and `batch/v1` Job, both named
//! [`labels::object_name`]. The record owns the Job (see [`EphemeralObjects::owned_by`]),
//! so one delete removes everything and a half-failed creation leaves at most a record
//! without a Job, which pruning removes. The record also carries the payload; the pod
//! gets only the job id and the single-use token, as literal env vars on the sidecar
//! container (the runtime container cannot read another container's env: the pod does
//! not share its process namespace and mounts no service-account token). The sidecar
//! fetches the job from the job manager with the token. Two objects instead of a record,
//! a Secret and a Job: one API write less per job (the issue's budget is four: two
//! creates, the result, the record's delete).
//!
//! Seed 000's `parallelism`/`completions`: an execution is ONE pod, so every Job has
//! `parallelism: 1, completions: 1`. `runtimes[].parallelism` is how many jobs of the type
//! one replica runs at once (the dispatcher's capacity); `completions` ("jobs expected per
//! minute x parallelism") only informs capacity planning and is not emitted.
//!
//! `activeDeadlineSeconds` is the job's timeout clamped to `1..=checkTimeout`: the cluster
//! kills a runaway pod even if every job-manager replica is gone; pruning then reports it.
#[cfg(doc)]
use crate::backend::kubernetes::{labels, record::JobRecord};
use crate::config::model::{RuntimeConfig, Workload};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use std::time::SystemTime;

mod defaults;
mod ephemeral;
mod network_policy;
mod persistent;
mod pod;
mod settings;

pub use defaults::{
    default_pod_security_context, default_runtime_security_context, default_sidecar_resources,
    default_sidecar_security_context,
};
pub use ephemeral::{ephemeral_objects, EphemeralObjects};
pub use network_policy::{runtime_network_policy, METADATA_CIDRS_V4, METADATA_CIDRS_V6};
pub use persistent::{persistent_objects, persistent_record, retired_persistent_workloads, PersistentObjects};
pub use pod::image_ref;
pub use settings::{SidecarPod, TranslateSettings};

/// Key of the internal API key in `kubernetes.internalApiKeySecretName`.
pub const INTERNAL_API_KEY_SECRET_KEY: &str = "internalApiKey";

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TranslateError {
    #[error("no runtime type {0:?} is configured")]
    UnknownRuntime(String),
    #[error("runtime type {0:?} is disabled")]
    RuntimeDisabled(String),
    #[error("runtime type {runtime:?} is configured as {configured}, not {wanted}")]
    WrongWorkload { runtime: String, configured: &'static str, wanted: &'static str },
    #[error("kubernetes.internalApiKeySecretName is required: sidecars read the internal API key from it")]
    MissingInternalKeySecret,
    #[error("a namespace is required (config `namespace` or the pod's namespace)")]
    MissingNamespace,
    #[error("extra env may not override {0} (the job manager sets it to keep the runtime behind its sidecar)")]
    ReservedEnv(String),
    #[error(
        "the egress firewall needs the sidecar's UID known, non-root and different from the runtime's \
         (kubernetes.securityContext / runtimeSecurityContext runAsUser)"
    )]
    FirewallUids,
    #[error("the deadline {0:?} is not representable")]
    BadDeadline(SystemTime),
    #[error("the job cannot be serialized: {0}")]
    Serialize(String),
}

impl TranslateError {
    pub fn label(&self) -> &'static str {
        match self {
            TranslateError::UnknownRuntime(_) => "unknown_runtime",
            TranslateError::RuntimeDisabled(_) => "runtime_disabled",
            TranslateError::WrongWorkload { .. } => "wrong_workload",
            TranslateError::MissingInternalKeySecret => "missing_internal_key_secret",
            TranslateError::MissingNamespace => "missing_namespace",
            TranslateError::ReservedEnv(_) => "reserved_env",
            TranslateError::FirewallUids => "firewall_uids",
            TranslateError::BadDeadline(_) => "bad_deadline",
            TranslateError::Serialize(_) => "serialize",
        }
    }
}

fn runtime_for<'a>(
    settings: &'a TranslateSettings,
    runtime_type: &str,
    wanted: Workload,
) -> Result<&'a RuntimeConfig, TranslateError> {
    let runtime = settings
        .runtimes
        .iter()
        .find(|r| r.name == runtime_type)
        .ok_or_else(|| TranslateError::UnknownRuntime(runtime_type.to_string()))?;
    if !runtime.enabled {
        return Err(TranslateError::RuntimeDisabled(runtime.name.clone()));
    }
    if runtime.workload != wanted {
        return Err(TranslateError::WrongWorkload {
            runtime: runtime.name.clone(),
            configured: workload_name(&runtime.workload),
            wanted: workload_name(&wanted),
        });
    }
    Ok(runtime)
}

fn workload_name(w: &Workload) -> &'static str {
    match w {
        Workload::Ephemeral => "ephemeral",
        Workload::Persistent => "persistent",
    }
}

fn check_common(settings: &TranslateSettings, namespace: &str) -> Result<(), TranslateError> {
    if namespace.is_empty() {
        return Err(TranslateError::MissingNamespace);
    }
    if settings.kubernetes.internal_api_key_secret_name.is_empty() {
        return Err(TranslateError::MissingInternalKeySecret);
    }
    Ok(())
}

fn deadline_time(deadline: SystemTime) -> Result<Time, TranslateError> {
    Ok(Time(k8s_openapi::jiff::Timestamp::try_from(deadline).map_err(|_| TranslateError::BadDeadline(deadline))?))
}

#[cfg(test)]
mod tests;
