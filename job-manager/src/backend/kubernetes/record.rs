//! The job record: one namespaced custom resource per execution (the role of seed 001's
//! AgentTask). It is the durable state of a job on the cluster: what runs (spec), what
//! happened (status), and the result not yet accepted by the broker. The CRD YAML is
//! generated from these types (`job-manager crd`) and committed to the chart; a test
//! fails when the committed file drifts.
//!
//! Ownership: the record is created first and owns the job's Job, so deleting
//! the record (pruning, delivery) garbage-collects everything, and a creation that failed
//! halfway leaves at most a record without a Job, which pruning removes.
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::CustomResource;
use kube::CustomResourceExt;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

pub const GROUP: &str = "jobs.jobmanager.dev";
pub const VERSION: &str = "v1";
pub const PLURAL: &str = "jobrecords";

/// What a job is: written once at creation.
#[derive(CustomResource, Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[kube(
    group = "jobs.jobmanager.dev",
    version = "v1",
    kind = "JobRecord",
    plural = "jobrecords",
    shortname = "jr",
    namespaced,
    status = "JobRecordStatus",
    derive = "PartialEq",
    printcolumn = r#"{"name":"Job","type":"string","jsonPath":".spec.jobId"}"#,
    printcolumn = r#"{"name":"Runtime","type":"string","jsonPath":".spec.runtimeType"}"#,
    printcolumn = r#"{"name":"Phase","type":"string","jsonPath":".status.phase"}"#,
    printcolumn = r#"{"name":"Outcome","type":"string","jsonPath":".status.result.outcome"}"#,
    printcolumn = r#"{"name":"Delivery","type":"string","jsonPath":".status.delivery.state"}"#,
    printcolumn = r#"{"name":"Deadline","type":"date","jsonPath":".spec.deadline"}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#
)]
#[serde(rename_all = "camelCase")]
pub struct JobRecordSpec {
    /// The broker's job id, verbatim.
    pub job_id: String,
    pub runtime_type: String,
    pub workload: RecordWorkload,
    /// When the job must be over; past it, pruning reports `timed_out`.
    pub deadline: Time,
    /// The broker's delivery attempt (1 for the first).
    #[serde(default)]
    pub attempt: u32,
    /// Seconds the job may run (ephemeral; what the runtime is told).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub timeout_secs: u32,
    /// The job's payload as JSON text (ephemeral): the job's sidecar fetches it from the
    /// job manager, which reads it here, so no per-job Secret is needed. Kept opaque so
    /// the schema stays structural. Grant `get` on job records as carefully as on Secrets.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub payload_json: String,
}

fn is_zero(n: &u32) -> bool {
    *n == 0
}

impl JobRecord {
    /// The job as handed to the job's sidecar (`GET /internal/v1/jobs/{id}`); `None`
    /// when the stored id or payload is not valid (a record edited by hand).
    pub fn handed_job(&self) -> Option<common::Job> {
        let payload = if self.spec.payload_json.is_empty() {
            serde_json::Value::Null
        } else {
            serde_json::from_str(&self.spec.payload_json).ok()?
        };
        Some(common::Job {
            id: common::JobId::new(self.spec.job_id.clone()).ok()?,
            runtime_type: self.spec.runtime_type.clone(),
            workload_kind: match self.spec.workload {
                RecordWorkload::Ephemeral => common::WorkloadKind::Ephemeral,
                RecordWorkload::Persistent => common::WorkloadKind::Persistent,
            },
            timeout_secs: self.spec.timeout_secs,
            attempt: self.spec.attempt,
            payload,
            signature: None,
        })
    }
}

#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum RecordWorkload {
    Ephemeral,
    Persistent,
}

/// What happened to the job.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct JobRecordStatus {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub phase: Option<RecordPhase>,
    /// The pod running the job, once known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pod: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub started_at: Option<Time>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub finished_at: Option<Time>,
    /// The first result recorded for the job (from the sidecar, or decided by the job
    /// manager: timeout, a pod that cannot start). Written once, with a resourceVersion
    /// precondition, so two replicas cannot both accept a result.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub result: Option<RecordedResult>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub delivery: Option<Delivery>,
}

#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema)]
pub enum RecordPhase {
    /// Objects created (not written by this version: a record without a result is in
    /// flight, which `kubectl get jr` shows as an empty Outcome).
    Pending,
    /// The pod runs (written by earlier versions only; marking it cost one API write
    /// per job).
    Running,
    /// A result is recorded.
    Finished,
}

/// A `common::JobResult` as stored in the record.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct RecordedResult {
    /// `succeeded`, `failed`, `timed_out` or `rejected`.
    pub outcome: String,
    #[serde(default)]
    pub message: String,
    /// The runtime's output as JSON text (kept opaque, so the schema stays structural).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub output_json: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub duration_ms: Option<u64>,
}

/// Hand-off of the recorded result to the broker.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Delivery {
    pub state: DeliveryState,
    #[serde(default)]
    pub attempts: u32,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub last_error: String,
}

#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema)]
pub enum DeliveryState {
    /// Recorded, not yet accepted by the broker.
    Pending,
    /// The broker accepted it (or conclusively refused it): nothing left to retry.
    Delivered,
}

impl RecordedResult {
    pub fn from_result(r: &common::JobResult) -> Self {
        Self {
            outcome: r.outcome.as_str().to_string(),
            message: r.message.clone(),
            output_json: if r.output.is_null() { String::new() } else { r.output.to_string() },
            duration_ms: r.duration_ms,
        }
    }

    /// Back to the wire type; `None` when the stored outcome is not one we know (a
    /// record edited by hand), so callers can report it instead of guessing.
    pub fn to_result(&self, id: common::JobId) -> Option<common::JobResult> {
        let outcome = common::Outcome::ALL.into_iter().find(|o| o.as_str() == self.outcome)?;
        let output = if self.output_json.is_empty() {
            serde_json::Value::Null
        } else {
            serde_json::from_str(&self.output_json).ok()?
        };
        Some(common::JobResult {
            job_id: id,
            outcome,
            message: self.message.clone(),
            output,
            duration_ms: self.duration_ms,
        })
    }
}

/// The CRD as YAML, exactly what `job-manager crd` prints and the chart ships.
pub fn crd_yaml() -> String {
    let crd = JobRecord::crd();
    let body = serde_saphyr::to_string(&crd).expect("a CRD always serializes");
    format!("# Generated by `job-manager crd` from job-manager/src/backend/kubernetes/record.rs. Do not edit.\n{body}")
}

#[cfg(test)]
mod tests {
    use super::*;
    use common::{JobId, JobResult, Outcome};

    #[test]
    fn result_round_trips() {
        let id = JobId::new("j1").unwrap();
        let mut r = JobResult::new(id.clone(), Outcome::TimedOut, "deadline passed");
        r.output = serde_json::json!({"a": [1, 2]});
        r.duration_ms = Some(12);
        let stored = RecordedResult::from_result(&r);
        assert_eq!(stored.outcome, "timed_out");
        assert_eq!(stored.to_result(id.clone()).unwrap(), r);
        let null_output = JobResult::new(id.clone(), Outcome::Succeeded, "");
        assert_eq!(RecordedResult::from_result(&null_output).output_json, "");
        assert_eq!(RecordedResult::from_result(&null_output).to_result(id.clone()).unwrap(), null_output);
        let bogus = RecordedResult { outcome: "exploded".into(), ..stored };
        assert!(bogus.to_result(id).is_none());
    }

    #[test]
    fn crd_names_and_columns() {
        let crd = JobRecord::crd();
        assert_eq!(crd.metadata.name.as_deref(), Some("jobrecords.jobs.jobmanager.dev"));
        assert_eq!(crd.spec.scope, "Namespaced");
        assert_eq!(crd.spec.names.short_names, Some(vec!["jr".to_string()]));
        let version = &crd.spec.versions[0];
        assert!(version.subresources.as_ref().unwrap().status.is_some());
        let columns: Vec<_> =
            version.additional_printer_columns.as_ref().unwrap().iter().map(|c| c.name.as_str()).collect();
        assert_eq!(columns, ["Job", "Runtime", "Phase", "Outcome", "Delivery", "Deadline", "Age"]);
    }
}
