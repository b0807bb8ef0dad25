//! [`RecordStore`]: the durable result store on job records. The first result for a job
//! is written to the record's status with a resourceVersion precondition (`replaceStatus`
//! with the version read), so when two replicas race, the API server accepts exactly one
//! write; the loser gets 409, re-reads, and answers `Duplicate` or `Conflict`. That first
//! accepted write is what consumes the job's single-use token.
use crate::backend::kubernetes::labels;
use crate::backend::kubernetes::record::{
    Delivery, DeliveryState, JobRecord, JobRecordStatus, RecordPhase, RecordWorkload, RecordedResult,
};
use crate::results::{Recorded, ResultStore, StoreError};
use common::{JobId, JobResult};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::api::{DeleteParams, ListParams, PostParams};
use kube::Api;

/// How often a status write is retried after losing a resourceVersion race before the
/// store reports itself unavailable (each retry re-reads, so this is only reached under
/// sustained contention on one record).
const MAX_CONFLICT_RETRIES: u32 = 8;

/// What to do with an incoming result given the record's current status.
#[derive(Debug, Clone, PartialEq)]
pub enum RecordDecision {
    /// No result yet: write this status (with the version that was read).
    Write(Box<JobRecordStatus>),
    Duplicate,
    Conflict,
}

/// Pure: first writer wins; an identical repeat is a duplicate, a different one a conflict.
pub fn decide_record(existing: Option<&JobRecordStatus>, result: &JobResult, now: Time) -> RecordDecision {
    if let Some(stored) = existing.and_then(|s| s.result.as_ref()) {
        let incoming = RecordedResult::from_result(result);
        let same = stored.outcome == incoming.outcome
            && stored.message == incoming.message
            && same_output(&stored.output_json, &incoming.output_json);
        return if same { RecordDecision::Duplicate } else { RecordDecision::Conflict };
    }
    let mut status = existing.cloned().unwrap_or_default();
    status.phase = Some(RecordPhase::Finished);
    status.finished_at = Some(now);
    status.result = Some(RecordedResult::from_result(result));
    status.delivery = Some(Delivery { state: DeliveryState::Pending, attempts: 0, last_error: String::new() });
    RecordDecision::Write(Box::new(status))
}

fn same_output(a: &str, b: &str) -> bool {
    // Compare as JSON values: key order in the stored text must not make a retry a conflict.
    let parse = |s: &str| {
        if s.is_empty() {
            Ok(serde_json::Value::Null)
        } else {
            serde_json::from_str::<serde_json::Value>(s)
        }
    };
    match (parse(a), parse(b)) {
        (Ok(x), Ok(y)) => x == y,
        _ => a == b,
    }
}

/// Records whose result awaits delivery, oldest first.
pub fn pending_results(records: &[JobRecord]) -> Vec<JobResult> {
    let mut pending: Vec<(&JobRecord, JobResult)> = records
        .iter()
        .filter_map(|r| {
            let status = r.status.as_ref()?;
            let stored = status.result.as_ref()?;
            if status.delivery.as_ref().is_some_and(|d| d.state == DeliveryState::Delivered) {
                return None;
            }
            let id = JobId::new(r.spec.job_id.clone()).ok()?;
            Some((r, stored.to_result(id)?))
        })
        .collect();
    pending.sort_by(|(a, _), (b, _)| {
        let at = |r: &JobRecord| r.status.as_ref().and_then(|s| s.finished_at.clone());
        at(a).cmp(&at(b))
    });
    pending.into_iter().map(|(_, r)| r).collect()
}

#[derive(Clone)]
pub struct RecordStore {
    records: Api<JobRecord>,
}

impl RecordStore {
    pub fn new(client: kube::Client, namespace: &str) -> Self {
        Self { records: Api::namespaced(client, namespace) }
    }

    fn unavailable(e: kube::Error) -> StoreError {
        StoreError::Unavailable(e.to_string())
    }

    /// The result recorded for a job, if any (delivered or not).
    pub async fn lookup_result(&self, id: &JobId) -> Result<Option<JobResult>, StoreError> {
        Ok(self.get_record(id).await?.and_then(|r| r.status?.result?.to_result(id.clone())))
    }

    async fn get_record(&self, id: &JobId) -> Result<Option<JobRecord>, StoreError> {
        let name = labels::object_name(id);
        let record = self.records.get_opt(&name).await.map_err(Self::unavailable)?;
        // Two ids can only share a name through a hash collision: never mix them up.
        Ok(record.filter(|r| r.spec.job_id == id.as_str()))
    }
}

impl ResultStore for RecordStore {
    async fn record(&self, result: &JobResult) -> Result<Recorded, StoreError> {
        let name = labels::object_name(&result.job_id);
        for _ in 0..MAX_CONFLICT_RETRIES {
            let record = self
                .records
                .get_opt(&name)
                .await
                .map_err(Self::unavailable)?
                .ok_or_else(|| StoreError::UnknownJob(result.job_id.clone()))?;
            // Two ids can only share a name through a hash collision; never let one job's
            // result land on another's record.
            if record.spec.job_id != result.job_id.as_str() {
                return Err(StoreError::UnknownJob(result.job_id.clone()));
            }
            let now = Time(k8s_openapi::jiff::Timestamp::now());
            match decide_record(record.status.as_ref(), result, now) {
                RecordDecision::Duplicate => return Ok(Recorded::Duplicate),
                RecordDecision::Conflict => return Ok(Recorded::Conflict),
                RecordDecision::Write(status) => {
                    let mut updated = record;
                    updated.status = Some(*status);
                    // `updated` carries the resourceVersion read above: the precondition.
                    let pp = PostParams::default();
                    let write = self.records.replace_status(&name, &pp, &updated);
                    match write.await {
                        Ok(_) => return Ok(Recorded::Accepted),
                        Err(kube::Error::Api(s)) if s.code == 409 => continue,
                        Err(kube::Error::Api(s)) if s.code == 404 => {
                            return Err(StoreError::UnknownJob(result.job_id.clone()))
                        }
                        Err(e) => return Err(Self::unavailable(e)),
                    }
                }
            }
        }
        Err(StoreError::Unavailable(format!("job record {name} kept changing while recording its result")))
    }

    async fn pending(&self) -> Result<Vec<JobResult>, StoreError> {
        let lp = ListParams::default().labels(&labels::managed_runtime_selector());
        let list = self.records.list(&lp).await.map_err(Self::unavailable)?;
        Ok(pending_results(&list.items))
    }

    async fn handed_job(&self, id: &JobId) -> Result<Option<common::Job>, StoreError> {
        Ok(self
            .get_record(id)
            .await?
            .filter(|r| r.spec.workload == RecordWorkload::Ephemeral)
            .and_then(|r| r.handed_job()))
    }

    /// Delivered: the record has served its purpose; deleting it garbage-collects the
    /// job's Job (the runtime is done once its result exists). One write
    /// instead of a status update now and a delete later.
    async fn mark_delivered(&self, id: &JobId) -> Result<(), StoreError> {
        let name = labels::object_name(id);
        let dp = DeleteParams::background();
        let delete = self.records.delete(&name, &dp);
        match delete.await {
            Ok(_) => Ok(()),
            Err(kube::Error::Api(s)) if s.code == 404 => Ok(()),
            Err(e) => Err(Self::unavailable(e)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use common::Outcome;

    fn now() -> Time {
        Time(k8s_openapi::jiff::Timestamp::from_second(1_800_000_000).unwrap())
    }

    fn result(outcome: Outcome, message: &str) -> JobResult {
        JobResult::new(JobId::new("j1").unwrap(), outcome, message)
    }

    #[test]
    fn first_result_is_written_pending_delivery() {
        let RecordDecision::Write(status) = decide_record(None, &result(Outcome::Succeeded, "ok"), now()) else {
            panic!("expected a write")
        };
        assert_eq!(status.phase, Some(RecordPhase::Finished));
        assert_eq!(status.result.as_ref().unwrap().outcome, "succeeded");
        assert_eq!(status.delivery.as_ref().unwrap().state, DeliveryState::Pending);
        assert_eq!(status.finished_at, Some(now()));
    }

    #[test]
    fn existing_status_fields_are_kept() {
        let existing =
            JobRecordStatus { pod: Some("p-1".into()), phase: Some(RecordPhase::Running), ..Default::default() };
        let RecordDecision::Write(status) = decide_record(Some(&existing), &result(Outcome::Failed, "x"), now()) else {
            panic!("expected a write")
        };
        assert_eq!(status.pod.as_deref(), Some("p-1"));
    }

    #[test]
    fn repeats_are_duplicates_and_differences_conflicts() {
        let mut first = result(Outcome::Succeeded, "ok");
        first.output = serde_json::json!({"a": 1, "b": 2});
        let RecordDecision::Write(status) = decide_record(None, &first, now()) else { panic!() };
        // Same result, output keys in another order, a different duration: duplicate.
        let mut again = first.clone();
        again.output = serde_json::from_str(r#"{"b":2,"a":1}"#).unwrap();
        again.duration_ms = Some(7);
        assert_eq!(decide_record(Some(&status), &again, now()), RecordDecision::Duplicate);
        assert_eq!(decide_record(Some(&status), &result(Outcome::TimedOut, "late"), now()), RecordDecision::Conflict);
        let mut other_output = first.clone();
        other_output.output = serde_json::json!({"a": 2});
        assert_eq!(decide_record(Some(&status), &other_output, now()), RecordDecision::Conflict);
    }

    #[test]
    fn pending_skips_delivered_and_unfinished() {
        use crate::backend::kubernetes::record::{JobRecordSpec, RecordWorkload};
        let record = |id: &str, status: Option<JobRecordStatus>| {
            let mut r = JobRecord::new(
                id,
                JobRecordSpec {
                    job_id: id.into(),
                    runtime_type: "rt".into(),
                    workload: RecordWorkload::Ephemeral,
                    deadline: now(),
                    attempt: 1,
                    timeout_secs: 0,
                    payload_json: String::new(),
                },
            );
            r.status = status;
            r
        };
        let finished = |id: &str, secs: i64, delivered: bool| {
            let RecordDecision::Write(mut s) = decide_record(
                None,
                &JobResult::new(JobId::new(id).unwrap(), Outcome::Failed, "m"),
                Time(k8s_openapi::jiff::Timestamp::from_second(secs).unwrap()),
            ) else {
                panic!()
            };
            if delivered {
                s.delivery.as_mut().unwrap().state = DeliveryState::Delivered;
            }
            Some(*s)
        };
        let records = vec![
            record("late", finished("late", 20, false)),
            record("running", None),
            record("done", finished("done", 5, true)),
            record("early", finished("early", 10, false)),
        ];
        let ids: Vec<String> = pending_results(&records).into_iter().map(|r| r.job_id.to_string()).collect();
        assert_eq!(ids, ["early", "late"]);
    }
}
