//! Jobs as the broker hands them out, and results as the broker takes them back.
use serde::{Deserialize, Serialize};
use std::fmt;

/// A broker-assigned job identifier. Opaque, but restricted to a safe alphabet so it can
/// be used in URL paths, Kubernetes object names (after [`JobId::k8s_suffix`]) and logs.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct JobId(String);

/// Why a string is not a valid [`JobId`].
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum JobIdError {
    #[error("job id is empty")]
    Empty,
    #[error("job id is longer than {max} characters")]
    TooLong { max: usize },
    #[error("job id may only contain ASCII letters, digits, '-', '_' and '.' (found {0:?})")]
    BadChar(char),
}

impl JobId {
    pub const MAX_LEN: usize = 128;

    pub fn new(s: impl Into<String>) -> Result<Self, JobIdError> {
        let s = s.into();
        if s.is_empty() {
            return Err(JobIdError::Empty);
        }
        if s.len() > Self::MAX_LEN {
            return Err(JobIdError::TooLong { max: Self::MAX_LEN });
        }
        if let Some(c) = s.chars().find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))) {
            return Err(JobIdError::BadChar(c));
        }
        Ok(Self(s))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl TryFrom<String> for JobId {
    type Error = JobIdError;
    fn try_from(s: String) -> Result<Self, Self::Error> {
        Self::new(s)
    }
}

impl From<JobId> for String {
    fn from(id: JobId) -> String {
        id.0
    }
}

impl fmt::Display for JobId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// How a runtime type is executed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum WorkloadKind {
    /// One workload (Kubernetes Job / local process) per execution.
    #[default]
    Ephemeral,
    /// A long-running, load-balanced workload that receives jobs over HTTP.
    Persistent,
}

/// A job as handed out by the broker.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Job {
    pub id: JobId,
    /// Which runtime executes it, e.g. `node-api-runtime`.
    pub runtime_type: String,
    #[serde(default)]
    pub workload_kind: WorkloadKind,
    /// Seconds the job may run; the job manager clamps it to its check timeout.
    pub timeout_secs: u32,
    /// 1 for the first delivery; the broker increments it on every re-delivery.
    #[serde(default = "one")]
    pub attempt: u32,
    /// Opaque to the job manager and sidecar; only the runtime interprets it.
    #[serde(default)]
    pub payload: serde_json::Value,
    /// Verified script execution: base64 HMAC-SHA256 of the canonical payload, keyed by
    /// the VSE passphrase. See [`crate::token::vse_signature`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub signature: Option<String>,
}

fn one() -> u32 {
    1
}

/// How a job ended. Exactly one outcome reaches the broker per job.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    Succeeded,
    Failed,
    TimedOut,
    Rejected,
}

impl Outcome {
    pub const ALL: [Outcome; 4] = [Outcome::Succeeded, Outcome::Failed, Outcome::TimedOut, Outcome::Rejected];

    /// Stable label for metrics and logs.
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Succeeded => "succeeded",
            Outcome::Failed => "failed",
            Outcome::TimedOut => "timed_out",
            Outcome::Rejected => "rejected",
        }
    }
}

impl fmt::Display for Outcome {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The result of one job, as submitted to the broker (and to the job manager's result
/// API by the sidecar).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JobResult {
    pub job_id: JobId,
    pub outcome: Outcome,
    /// Human-readable summary, e.g. the refusal reason or "exit status 3".
    #[serde(default)]
    pub message: String,
    /// Runtime-defined output (opaque).
    #[serde(default)]
    pub output: serde_json::Value,
    /// Milliseconds the runtime ran, when known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub duration_ms: Option<u64>,
}

impl JobResult {
    pub fn new(job_id: JobId, outcome: Outcome, message: impl Into<String>) -> Self {
        Self { job_id, outcome, message: message.into(), output: serde_json::Value::Null, duration_ms: None }
    }

    /// Two submissions of "the same" result: equal outcome, message and output. The broker
    /// treats an identical second submission as success (idempotent) and a different one
    /// as a conflict.
    pub fn same_as(&self, other: &JobResult) -> bool {
        self.job_id == other.job_id
            && self.outcome == other.outcome
            && self.message == other.message
            && self.output == other.output
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn job_id_rules() {
        assert!(JobId::new("abc-123_x.y").is_ok());
        assert_eq!(JobId::new(""), Err(JobIdError::Empty));
        assert_eq!(JobId::new("a/b"), Err(JobIdError::BadChar('/')));
        assert_eq!(JobId::new("a b"), Err(JobIdError::BadChar(' ')));
        assert_eq!(JobId::new("x".repeat(129)), Err(JobIdError::TooLong { max: 128 }));
        let err = serde_json::from_str::<JobId>("\"../etc\"").unwrap_err().to_string();
        assert!(err.contains("may only contain"), "{err}");
    }

    #[test]
    fn job_defaults_and_unknown_fields() {
        let j: Job = serde_json::from_str(r#"{"id":"j1","runtime_type":"rt","timeout_secs":5}"#).unwrap();
        assert_eq!(j.attempt, 1);
        assert_eq!(j.workload_kind, WorkloadKind::Ephemeral);
        assert!(j.signature.is_none());
        let err = serde_json::from_str::<Job>(r#"{"id":"j1","runtime_type":"rt","timeout_secs":5,"x":1}"#)
            .unwrap_err()
            .to_string();
        assert!(err.contains("unknown field `x`"), "{err}");
    }

    #[test]
    fn outcome_labels_round_trip() {
        for o in Outcome::ALL {
            let s = serde_json::to_string(&o).unwrap();
            assert_eq!(s, format!("\"{}\"", o.as_str()));
            assert_eq!(serde_json::from_str::<Outcome>(&s).unwrap(), o);
        }
    }

    #[test]
    fn same_as_ignores_duration_only() {
        let id = JobId::new("j").unwrap();
        let mut a = JobResult::new(id.clone(), Outcome::Failed, "boom");
        let mut b = a.clone();
        b.duration_ms = Some(5);
        assert!(a.same_as(&b));
        a.message = "other".into();
        assert!(!a.same_as(&b));
    }
}
