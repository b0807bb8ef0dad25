//! The contract between a runtime, its sidecar and the job manager: local API paths,
//! the job hand-off layout and environment variable names. The Kubernetes executor and
//! the local executor both hand a job over exactly this way.
//!
//! ```text
//! job manager --(job dir: job.json + token; internal key)--> sidecar   (local executor)
//! job manager --(job id + token in env; internal key)------> sidecar   (Kubernetes)
//! sidecar --GET  {job manager}/internal/v1/jobs/{id}---------> job manager (Kubernetes:
//!           + x-internal-api-key + x-job-token, answer Job   the job comes from its record)
//! runtime --GET  {JOB_API_URL}/v1/job-------------------------> sidecar (no secrets in the answer)
//! runtime --POST {JOB_API_URL}/v1/result (RuntimeResult)------> sidecar
//! sidecar --POST {job manager}/internal/v1/jobs/{id}/result---> job manager
//!           + x-internal-api-key + x-job-token, body JobResult
//! ```
use crate::job::{JobId, Outcome};
use serde::{Deserialize, Serialize};

/// Runtime -> sidecar: fetch the job (ephemeral workloads). Answer: [`RuntimeJob`].
pub const LOCAL_JOB_PATH: &str = "/v1/job";
/// Runtime -> sidecar: post the result of the job (ephemeral). Body: [`RuntimeResult`].
pub const LOCAL_RESULT_PATH: &str = "/v1/result";
/// Runtime -> sidecar, persistent workloads: `/v1/jobs/{id}/result`. Body: [`RuntimeResult`].
pub fn local_job_result_path(id: &JobId) -> String {
    format!("/v1/jobs/{id}/result")
}
/// Job manager -> persistent runtime (through the sidecar's ingress): dispatch one job.
/// Body: [`RuntimeJob`]; headers: internal key + job token (both stripped by the sidecar,
/// which keeps the token for the result). 202 accepted, 429 busy (back off).
pub const INGRESS_DISPATCH_PATH: &str = "/v1/jobs";

/// Sidecar -> job manager: submit a job's result.
pub fn result_api_path(id: &JobId) -> String {
    format!("/internal/v1/jobs/{id}/result")
}
pub const RESULT_API_PREFIX: &str = "/internal/v1/jobs/";
/// Sidecar -> job manager: fetch the job handed to this sidecar (`GET`, answer
/// [`crate::Job`]), with the internal key and the job token. Used when the job manager
/// hands over only the job id and token (Kubernetes) instead of a job directory.
pub fn job_api_path(id: &JobId) -> String {
    format!("{RESULT_API_PREFIX}{id}")
}

/// Files in the job directory handed to the sidecar (a Secret volume in Kubernetes,
/// a private temp dir in the local executor). Only the sidecar reads them.
pub const JOB_FILE: &str = "job.json";
pub const TOKEN_FILE: &str = "token";

/// Environment of the **runtime** container/process.
pub mod runtime_env {
    /// Base URL of the sidecar's local API, e.g. `http://127.0.0.1:3128`.
    pub const JOB_API_URL: &str = "JOB_API_URL";
    pub const HTTP_PROXY: &str = "HTTP_PROXY";
    pub const HTTPS_PROXY: &str = "HTTPS_PROXY";
    pub const NO_PROXY: &str = "NO_PROXY";
    /// JSON object of user-defined variables (seed: `userDefinedVariables`).
    pub const USER_DEFINED_VARIABLES: &str = "USER_DEFINED_VARIABLES";
    /// Path of custom node modules' package.json on the shared volume, when configured.
    pub const CUSTOM_NODE_MODULES_PATH: &str = "CUSTOM_NODE_MODULES_PATH";
}

/// Environment of the **sidecar** (the full list, with defaults, is `sidecar --help`).
pub mod sidecar_env {
    /// Proxy + local runtime API listener (default `127.0.0.1:3128`).
    pub const LISTEN: &str = "SIDECAR_LISTEN";
    /// `true`: the proxy + local runtime API listener is the bound, listening TCP socket
    /// inherited as stdin (the local executor binds it inside the runtime's network
    /// namespace); exclusive with `SIDECAR_LISTEN`, and the key cannot then come on stdin.
    pub const LISTEN_STDIN: &str = "SIDECAR_LISTEN_STDIN";
    /// Health/readiness/metrics listener, e.g. `0.0.0.0:9901` in pods (kubelet probes).
    pub const ADMIN_LISTEN: &str = "SIDECAR_ADMIN_LISTEN";
    /// Directory holding [`super::JOB_FILE`] and [`super::TOKEN_FILE`] (ephemeral jobs).
    pub const JOB_DIR: &str = "SIDECAR_JOB_DIR";
    /// Job manager base URL, e.g. `http://job-manager.ns.svc:8080`.
    pub const JOB_MANAGER_URL: &str = "SIDECAR_JOB_MANAGER_URL";
    /// Internal API key, inline (pods: `secretKeyRef` on the sidecar container only).
    pub const INTERNAL_API_KEY: &str = "SIDECAR_INTERNAL_API_KEY";
    /// Internal API key from a file; `-` reads the first line of stdin (local executor).
    pub const INTERNAL_API_KEY_FILE: &str = "SIDECAR_INTERNAL_API_KEY_FILE";
    /// Where results are spooled before delivery (an emptyDir in pods).
    pub const SPOOL_DIR: &str = "SIDECAR_SPOOL_DIR";
    /// Persistent workloads: listen address of the ingress side (pod port).
    pub const INGRESS_LISTEN: &str = "SIDECAR_INGRESS_LISTEN";
    /// Persistent workloads: the runtime's loopback address, e.g. `127.0.0.1:8081`.
    pub const INGRESS_UPSTREAM: &str = "SIDECAR_INGRESS_UPSTREAM";
    /// Comma-separated CIDRs allowed even if a default rule would deny them.
    pub const ALLOW_CIDRS: &str = "SIDECAR_ALLOW_CIDRS";
    pub const DENY_CIDRS: &str = "SIDECAR_DENY_CIDRS";
    pub const ALLOW_HOSTS: &str = "SIDECAR_ALLOW_HOSTS";
    pub const DENY_HOSTS: &str = "SIDECAR_DENY_HOSTS";
    pub const DENY_PORTS: &str = "SIDECAR_DENY_PORTS";
    pub const ALLOW_PORTS: &str = "SIDECAR_ALLOW_PORTS";
    /// `true` denies RFC 1918 / ULA ranges too.
    pub const DENY_PRIVATE: &str = "SIDECAR_DENY_PRIVATE";
    /// `true` denies public addresses too: only the allow lists (and the job manager)
    /// can be reached.
    pub const DENY_PUBLIC: &str = "SIDECAR_DENY_PUBLIC";
    /// `true` logs what would be refused but lets it through.
    pub const REPORT_ONLY: &str = "SIDECAR_REPORT_ONLY";
    /// Comma-separated Kubernetes API server addresses (ip or ip:port) to deny.
    pub const API_SERVER_ADDRESSES: &str = "SIDECAR_API_SERVER_ADDRESSES";
    /// Upstream (corporate) proxy URL, `http://user:pass@host:port`.
    pub const UPSTREAM_PROXY: &str = "SIDECAR_UPSTREAM_PROXY";
    pub const UPSTREAM_PROXY_CA_FILE: &str = "SIDECAR_UPSTREAM_PROXY_CA_FILE";
    pub const UPSTREAM_PROXY_INSECURE: &str = "SIDECAR_UPSTREAM_PROXY_INSECURE";
    /// Comma-separated hosts (`--allow-host` syntax) and CIDRs dialled directly, not
    /// through the upstream proxy (the usual NO_PROXY list: in-cluster services).
    pub const UPSTREAM_PROXY_BYPASS: &str = "SIDECAR_UPSTREAM_PROXY_BYPASS";
    /// `refuse` (default) or `forward`: what happens to a name the sidecar cannot
    /// resolve while an upstream proxy is set (forwarded, the upstream's resolver would
    /// pick the address and no address rule would run).
    pub const UPSTREAM_PROXY_UNRESOLVED: &str = "SIDECAR_UPSTREAM_PROXY_UNRESOLVED";
    /// Largest body the sidecar reads, bytes: a runtime's result (over it: 413 and a
    /// `failed` outcome) or a dispatched job. The job manager sets its `maxResultBytes`.
    pub const MAX_BODY_BYTES: &str = "SIDECAR_MAX_BODY_BYTES";
    pub const LOG_FORMAT: &str = "SIDECAR_LOG_FORMAT";
    pub const LOG_LEVEL: &str = "SIDECAR_LOG_LEVEL";
    /// Seconds the sidecar keeps retrying a result before giving up (default 600).
    pub const RESULT_DEADLINE_SECS: &str = "SIDECAR_RESULT_DEADLINE_SECS";
    /// Seconds SIGTERM waits for in-flight results (default 30).
    pub const SHUTDOWN_GRACE_SECS: &str = "SIDECAR_SHUTDOWN_GRACE_SECS";
    /// When set, the sidecar writes a [`super::ReadyFile`] there (atomically) once it
    /// serves; lets a supervisor use `--listen 127.0.0.1:0` and learn the bound ports.
    pub const READY_FILE: &str = "SIDECAR_READY_FILE";
    /// Job id for log lines (ephemeral jobs also read it from the job file). With
    /// [`JOB_TOKEN`] and no [`JOB_DIR`], the job the sidecar fetches from the job manager.
    pub const JOB_ID: &str = "SIDECAR_JOB_ID";
    /// The single-use job token, inline (Kubernetes: a literal env var on the sidecar
    /// container only; the runtime container cannot read another container's env).
    pub const JOB_TOKEN: &str = "SIDECAR_JOB_TOKEN";
}

/// Written by the sidecar to `SIDECAR_READY_FILE` once all its listeners serve.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReadyFile {
    /// Proxy + local API address actually bound.
    pub listen: std::net::SocketAddr,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub admin: Option<std::net::SocketAddr>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ingress: Option<std::net::SocketAddr>,
    pub pid: u32,
}

/// What the runtime gets from `GET /v1/job`: the job without anything secret.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RuntimeJob {
    pub id: JobId,
    pub runtime_type: String,
    pub timeout_secs: u32,
    pub attempt: u32,
    #[serde(default)]
    pub payload: serde_json::Value,
}

impl From<&crate::Job> for RuntimeJob {
    fn from(j: &crate::Job) -> Self {
        Self {
            id: j.id.clone(),
            runtime_type: j.runtime_type.clone(),
            timeout_secs: j.timeout_secs,
            attempt: j.attempt,
            payload: j.payload.clone(),
        }
    }
}

/// What the runtime posts to the sidecar. A runtime may only report `succeeded` or
/// `failed`; `timed_out` and `rejected` are decided by the job manager.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RuntimeResult {
    pub outcome: RuntimeOutcome,
    #[serde(default)]
    pub message: String,
    #[serde(default)]
    pub output: serde_json::Value,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub duration_ms: Option<u64>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RuntimeOutcome {
    Succeeded,
    Failed,
}

impl RuntimeResult {
    pub fn into_job_result(self, job_id: JobId) -> crate::JobResult {
        crate::JobResult {
            job_id,
            outcome: match self.outcome {
                RuntimeOutcome::Succeeded => Outcome::Succeeded,
                RuntimeOutcome::Failed => Outcome::Failed,
            },
            message: self.message,
            output: self.output,
            duration_ms: self.duration_ms,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn runtime_cannot_claim_timeout() {
        let err = serde_json::from_str::<RuntimeResult>(r#"{"outcome":"timed_out"}"#).unwrap_err();
        assert!(err.to_string().contains("unknown variant"), "{err}");
    }

    #[test]
    fn runtime_job_has_no_signature() {
        let job: crate::Job = serde_json::from_str(
            r#"{"id":"j","runtime_type":"rt","timeout_secs":3,"signature":"c2ln","payload":{"a":1}}"#,
        )
        .unwrap();
        let s = serde_json::to_string(&RuntimeJob::from(&job)).unwrap();
        assert!(!s.contains("signature"), "{s}");
        assert_eq!(s, r#"{"id":"j","runtime_type":"rt","timeout_secs":3,"attempt":1,"payload":{"a":1}}"#);
    }

    #[test]
    fn paths() {
        let id = JobId::new("j1").unwrap();
        assert_eq!(result_api_path(&id), "/internal/v1/jobs/j1/result");
        assert!(result_api_path(&id).starts_with(RESULT_API_PREFIX));
        assert_eq!(job_api_path(&id), "/internal/v1/jobs/j1");
        assert_eq!(local_job_result_path(&id), "/v1/jobs/j1/result");
    }
}
