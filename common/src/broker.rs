//! The broker API (v1): HTTP/JSON, bearer location key. The OpenAPI document lives in
//! `common/openapi/broker-v1.yaml`; a test keeps these types and that document in step.
//!
//! | verb | path                         | body               | answer                       |
//! |------|------------------------------|--------------------|------------------------------|
//! | POST | `/v1/jobs/poll`              | [`PollRequest`]    | 200 [`PollResponse`]         |
//! | POST | `/v1/jobs/{id}/ack`          | [`AckRequest`]     | 204; 404 unknown; 409 lease lost |
//! | POST | `/v1/jobs/{id}/release`      | [`ReleaseRequest`] | 204; 404; 409 lease lost     |
//! | POST | `/v1/jobs/{id}/result`       | [`crate::JobResult`] | 204 (also for an identical repeat); 409 conflicting result; 404 unknown |
//! | GET  | `/v1/queue`                  | -                  | 200 [`QueueStats`]           |
//!
//! Every request carries `Authorization: Bearer <location key>`; a missing or wrong key
//! gets 401. Errors carry an [`ErrorBody`].
use crate::job::{Job, JobId};
use serde::{Deserialize, Serialize};

pub const POLL_PATH: &str = "/v1/jobs/poll";
pub const QUEUE_PATH: &str = "/v1/queue";

pub fn ack_path(id: &JobId) -> String {
    format!("/v1/jobs/{id}/ack")
}
pub fn release_path(id: &JobId) -> String {
    format!("/v1/jobs/{id}/release")
}
pub fn result_path(id: &JobId) -> String {
    format!("/v1/jobs/{id}/result")
}

/// Ask for up to `max` jobs per runtime type. The broker leases each returned job to the
/// caller for `visibility_timeout_secs`; unacked jobs become visible again afterwards.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PollRequest {
    pub demands: Vec<RuntimeDemand>,
    /// Identifies the polling replica, for the broker's logs and leases.
    pub consumer: String,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RuntimeDemand {
    pub runtime_type: String,
    pub max: u32,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PollResponse {
    pub jobs: Vec<Job>,
    /// How long the caller holds the jobs before the broker re-delivers them.
    pub visibility_timeout_secs: u32,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AckRequest {
    pub consumer: String,
    /// The attempt being acked; a stale attempt (the job was re-delivered since) gets 409.
    pub attempt: u32,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReleaseRequest {
    pub consumer: String,
    pub attempt: u32,
    /// Why the job could not be handed off (logged by the broker).
    pub reason: String,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct QueueStats {
    /// Jobs waiting to be polled, per runtime type and in total.
    pub depth: u64,
    #[serde(default)]
    pub depth_by_runtime: std::collections::BTreeMap<String, u64>,
    /// Age in seconds of the oldest job waiting, 0 when the queue is empty.
    pub oldest_age_secs: f64,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorBody {
    /// Stable machine-readable code, e.g. `unauthorized`, `conflict`, `not_found`.
    pub error: String,
    pub message: String,
}

impl ErrorBody {
    pub fn new(error: impl Into<String>, message: impl Into<String>) -> Self {
        Self { error: error.into(), message: message.into() }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_embed_job_id() {
        let id = JobId::new("abc").unwrap();
        assert_eq!(ack_path(&id), "/v1/jobs/abc/ack");
        assert_eq!(release_path(&id), "/v1/jobs/abc/release");
        assert_eq!(result_path(&id), "/v1/jobs/abc/result");
    }

    #[test]
    fn poll_request_round_trip() {
        let r =
            PollRequest { demands: vec![RuntimeDemand { runtime_type: "rt".into(), max: 3 }], consumer: "jm-0".into() };
        let s = serde_json::to_string(&r).unwrap();
        assert_eq!(s, r#"{"demands":[{"runtime_type":"rt","max":3}],"consumer":"jm-0"}"#);
        assert_eq!(serde_json::from_str::<PollRequest>(&s).unwrap(), r);
    }
}
