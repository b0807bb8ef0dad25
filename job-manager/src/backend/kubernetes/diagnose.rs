//! Pure decisions over a snapshot of the cluster (records, Jobs, pods): which
//! jobs get a result decided by the job manager (a pod that cannot start, OOMKilled, a
//! deadline breached, a runtime that exited without reporting) and which objects are
//! orphans to delete. The pruning loop (lease holder only) takes a snapshot, calls
//! [`plan`], and executes the actions; every rule is a unit test here.
//!
//! Every job ends with a result within a bounded time: at the latest `deadline +
//! timeout_grace`, usually far earlier (a pull error is named within
//! `image_pull_grace`), never a silent timeout.
use crate::backend::kubernetes::labels;
use crate::backend::kubernetes::record::{JobRecord, RecordWorkload};
use crate::backend::kubernetes::refusal;
use common::{JobId, JobResult, Outcome};
use k8s_openapi::api::batch::v1 as batch;
use k8s_openapi::api::core::v1 as core;
use k8s_openapi::jiff::{SignedDuration, Timestamp};
use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

/// How long each condition may last before it is a failure.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Timing {
    /// Past the record's deadline, how long before `timed_out` is reported (lets a
    /// result that is being delivered arrive first).
    pub timeout_grace: Duration,
    /// `ErrImagePull` may be a registry hiccup; `ImagePullBackOff` is already a repeat.
    pub image_pull_grace: Duration,
    /// `CreateContainerConfigError` (a missing Secret/ConfigMap key).
    pub config_error_grace: Duration,
    /// A pod unschedulable this long (the cluster autoscaler had its chance).
    pub unschedulable_grace: Duration,
    /// A Job without any pod this long (quota, admission refusal).
    pub no_pod_grace: Duration,
    /// A Job without any pod this long gets its `FailedCreate` events read: an admission
    /// refusal that no retry can change (Pod Security, a validating webhook) fails the
    /// job at once instead of after `no_pod_grace`.
    pub admission_check: Duration,
    /// A Job complete/failed this long without a result (the sidecar had its chance to
    /// deliver a spooled one).
    pub finished_grace: Duration,
    /// Objects without their record (or a record without anything) this long.
    pub orphan_grace: Duration,
}

impl Default for Timing {
    fn default() -> Self {
        Self {
            timeout_grace: Duration::from_secs(10),
            image_pull_grace: Duration::from_secs(30),
            config_error_grace: Duration::from_secs(30),
            unschedulable_grace: Duration::from_secs(120),
            no_pod_grace: Duration::from_secs(90),
            admission_check: Duration::from_secs(3),
            finished_grace: Duration::from_secs(30),
            orphan_grace: Duration::from_secs(60),
        }
    }
}

/// What the pruning loop should do.
#[derive(Clone, Debug, PartialEq)]
pub enum Action {
    /// Record this result for the job (first wins: a racing sidecar result may still win).
    Report { result: JobResult, cause: Cause },
    /// Delete the job's Job (its pod stops; the record stays until delivery).
    DeleteJob { name: String },
    /// Delete a Job whose record is gone. (Job records own their Jobs, so the garbage
    /// collector normally does this; this covers a Job created without its owner
    /// reference, e.g. by hand or by a version that did so.)
    DeleteOrphanJob { name: String },
    /// A Job still without a pod: read its `FailedCreate` events; if they show a lasting
    /// admission refusal ([`lasting_refusal`]), report `result` quoting them and delete
    /// the Job.
    CheckAdmission { name: String, result: JobResult },
}

/// Why the job manager decided a result (the metric label).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Cause {
    DeadlineExceeded,
    ImagePull,
    Unschedulable,
    ContainerConfig,
    OomKilled,
    CrashLoop,
    NoPod,
    PodFailed,
    NoResult,
}

impl Cause {
    pub const ALL: [Cause; 9] = [
        Cause::DeadlineExceeded,
        Cause::ImagePull,
        Cause::Unschedulable,
        Cause::ContainerConfig,
        Cause::OomKilled,
        Cause::CrashLoop,
        Cause::NoPod,
        Cause::PodFailed,
        Cause::NoResult,
    ];

    pub fn label(self) -> &'static str {
        match self {
            Cause::DeadlineExceeded => "deadline_exceeded",
            Cause::ImagePull => "image_pull",
            Cause::Unschedulable => "unschedulable",
            Cause::ContainerConfig => "container_config",
            Cause::OomKilled => "oom_killed",
            Cause::CrashLoop => "crash_loop",
            Cause::NoPod => "no_pod",
            Cause::PodFailed => "pod_failed",
            Cause::NoResult => "no_result",
        }
    }
}

/// What the cluster looks like (objects carrying the job manager's labels).
pub struct Snapshot<'a> {
    pub records: &'a [JobRecord],
    pub jobs: &'a [batch::Job],
    pub pods: &'a [core::Pod],
    pub now: Timestamp,
}

pub fn plan(s: &Snapshot<'_>, timing: &Timing) -> Vec<Action> {
    let jobs: BTreeMap<&str, &batch::Job> =
        s.jobs.iter().filter_map(|j| Some((j.metadata.name.as_deref()?, j))).collect();
    let mut pods: BTreeMap<&str, Vec<&core::Pod>> = BTreeMap::new();
    for pod in s.pods {
        if let Some(job) = pod.metadata.labels.as_ref().and_then(|l| l.get(labels::JOB_LABEL)) {
            pods.entry(job.as_str()).or_default().push(pod);
        }
    }
    let record_names: BTreeSet<&str> = s.records.iter().filter_map(|r| r.metadata.name.as_deref()).collect();

    let mut actions = Vec::new();
    for record in s.records {
        let Some(name) = record.metadata.name.as_deref() else {
            continue;
        };
        let Ok(id) = JobId::new(record.spec.job_id.clone()) else {
            continue;
        };
        let has_result = record.status.as_ref().is_some_and(|st| st.result.is_some());
        let job = jobs.get(name).copied();
        if has_result {
            // Decided (perhaps by us on a timeout): make sure nothing still runs.
            if let Some(j) = job {
                if job_active(j) && !job_finished(j) && past(s.now, &record.spec.deadline.0, Duration::ZERO) {
                    actions.push(Action::DeleteJob { name: name.to_string() });
                }
            }
            continue;
        }
        let decided = if past(s.now, &record.spec.deadline.0, timing.timeout_grace) {
            Some((
                Cause::DeadlineExceeded,
                format!("the job did not finish by its deadline ({})", record.spec.deadline.0),
            ))
        } else if record.spec.workload == RecordWorkload::Persistent {
            None
        } else if let Some(job) = job {
            diagnose_job(job, pods.get(name).map(Vec::as_slice).unwrap_or_default(), s.now, timing)
        } else {
            None
        };
        if let Some((cause, message)) = decided {
            let outcome = if cause == Cause::DeadlineExceeded { Outcome::TimedOut } else { Outcome::Failed };
            actions.push(Action::Report { result: JobResult::new(id, outcome, message), cause });
            if job.is_some_and(|j| !job_finished(j)) {
                actions.push(Action::DeleteJob { name: name.to_string() });
            }
        } else if let Some(job) = job.filter(|j| record.spec.workload != RecordWorkload::Persistent && podless(j)) {
            if pods.get(name).is_none_or(Vec::is_empty)
                && older_than(s.now, job.metadata.creation_timestamp.as_ref(), timing.admission_check)
            {
                let message = "no pod was created for the Job: admission refused it".to_string();
                actions.push(Action::CheckAdmission {
                    name: name.to_string(),
                    result: JobResult::new(id, Outcome::Failed, message),
                });
            }
        }
    }
    for (name, job) in &jobs {
        if !record_names.contains(name)
            && older_than(s.now, job.metadata.creation_timestamp.as_ref(), timing.orphan_grace)
        {
            actions.push(Action::DeleteOrphanJob { name: name.to_string() });
        }
    }
    actions
}

fn past(now: Timestamp, deadline: &Timestamp, grace: Duration) -> bool {
    now > deadline.saturating_add(SignedDuration::try_from(grace).unwrap_or(SignedDuration::MAX)).unwrap_or(*deadline)
}

fn older_than(
    now: Timestamp,
    created: Option<&k8s_openapi::apimachinery::pkg::apis::meta::v1::Time>,
    age: Duration,
) -> bool {
    created.is_some_and(|t| past(now, &t.0, age))
}

fn job_active(job: &batch::Job) -> bool {
    job.status.as_ref().and_then(|s| s.active).unwrap_or(0) > 0
}

fn job_condition<'a>(job: &'a batch::Job, types: &[&str]) -> Option<&'a batch::JobCondition> {
    job.status.as_ref()?.conditions.as_ref()?.iter().find(|c| types.contains(&c.type_.as_str()) && c.status == "True")
}

fn job_finished(job: &batch::Job) -> bool {
    job_condition(job, &["Complete", "Failed", "SuccessCriteriaMet", "FailureTarget"]).is_some()
}

/// The cause of a job that will not produce a result, if one is certain.
fn diagnose_job(job: &batch::Job, pods: &[&core::Pod], now: Timestamp, timing: &Timing) -> Option<(Cause, String)> {
    // A pod-level cause is the most precise; check it first.
    for pod in pods {
        if let Some(found) = diagnose_pod(pod, now, timing) {
            return Some(found);
        }
    }
    if let Some(failed) = job_condition(job, &["Failed", "FailureTarget"]) {
        let reason = failed.reason.as_deref().unwrap_or("Failed");
        if reason == "DeadlineExceeded" {
            return Some((Cause::DeadlineExceeded, "the job's pod ran past activeDeadlineSeconds".into()));
        }
        let since = failed.last_transition_time.as_ref();
        if older_than(now, since, timing.finished_grace) {
            return Some((
                Cause::PodFailed,
                format!("the Job failed ({reason}: {})", failed.message.as_deref().unwrap_or("")),
            ));
        }
        return None;
    }
    if let Some(done) = job_condition(job, &["Complete", "SuccessCriteriaMet"]) {
        if older_than(now, done.last_transition_time.as_ref(), timing.finished_grace) {
            return Some((Cause::NoResult, "the runtime exited without reporting a result".into()));
        }
        return None;
    }
    if pods.is_empty() && podless(job) && older_than(now, job.metadata.creation_timestamp.as_ref(), timing.no_pod_grace)
    {
        return Some((
            Cause::NoPod,
            format!(
                "no pod was created for the Job within {}s (resource quota or admission refused it; see `kubectl describe job {}`)",
                timing.no_pod_grace.as_secs(),
                job.metadata.name.as_deref().unwrap_or("")
            ),
        ));
    }
    None
}

/// A Job whose controller has not counted a single pod (active, failed or succeeded).
fn podless(job: &batch::Job) -> bool {
    let status = job.status.as_ref();
    status.map(|s| s.active.unwrap_or(0) + s.failed.unwrap_or(0) + s.succeeded.unwrap_or(0)).unwrap_or(0) == 0
}

/// Whether the Job controller's `FailedCreate` events show a refusal that retrying the
/// same pod cannot get past ([`refusal::Refusal::lasting`]): Pod Security admission
/// (`violates PodSecurity`), a validating webhook (`admission webhook ... denied the
/// request`), or the authoriser denying the Job controller. A quota refusal is not one:
/// pods finishing elsewhere free it.
pub fn lasting_refusal(events: &[core::Event]) -> bool {
    events
        .iter()
        .filter(|e| e.reason.as_deref() == Some("FailedCreate"))
        .filter_map(|e| e.message.as_deref())
        .any(|m| refusal::classify(m).is_some_and(|r| r.lasting()))
}

/// How much of the Job controller's message a result quotes.
const EVENT_MESSAGE_MAX: usize = 400;

/// The "no pod" message with the Job controller's own words when it left `FailedCreate`
/// events on the Job (`events` is what a field-selected list returned): the most recent
/// one, e.g. `Error creating: pods "x" is forbidden: exceeded quota: ...`, cut to a
/// readable length. Without such an event the message stays as it is.
pub fn no_pod_message(message: &str, events: &[core::Event]) -> String {
    let when = |e: &core::Event| {
        let (last, at) = (e.last_timestamp.as_ref().map(|t| t.0), e.event_time.as_ref().map(|t| t.0));
        last.or(at).or(e.metadata.creation_timestamp.as_ref().map(|t| t.0))
    };
    let latest = events
        .iter()
        .filter(|e| e.reason.as_deref() == Some("FailedCreate"))
        .filter(|e| e.message.as_deref().is_some_and(|m| !m.trim().is_empty()))
        .max_by_key(|e| when(e));
    let Some(said) = latest.and_then(|e| e.message.as_deref()) else {
        return message.to_string();
    };
    let said = said.trim();
    let cut = match said.char_indices().nth(EVENT_MESSAGE_MAX) {
        Some((i, _)) => format!("{}...", &said[..i]),
        None => said.to_string(),
    };
    format!("{message}; the Job controller said: {cut}")
}

/// Why a pod cannot run the job, if certain.
pub fn diagnose_pod(pod: &core::Pod, now: Timestamp, timing: &Timing) -> Option<(Cause, String)> {
    let status = pod.status.as_ref()?;
    let started = pod.metadata.creation_timestamp.as_ref();
    let containers = status.init_container_statuses.iter().flatten().chain(status.container_statuses.iter().flatten());
    for c in containers {
        let oom =
            |t: Option<&core::ContainerStateTerminated>| t.is_some_and(|t| t.reason.as_deref() == Some("OOMKilled"));
        if oom(c.state.as_ref().and_then(|s| s.terminated.as_ref()))
            || oom(c.last_state.as_ref().and_then(|s| s.terminated.as_ref()))
        {
            return Some((
                Cause::OomKilled,
                format!("container {} was OOMKilled (it exceeded its memory limit)", c.name),
            ));
        }
        let Some(waiting) = c.state.as_ref().and_then(|s| s.waiting.as_ref()) else {
            continue;
        };
        let reason = waiting.reason.as_deref().unwrap_or("");
        let detail = waiting.message.as_deref().unwrap_or("");
        let describe = || format!("container {} cannot start: {reason} (image {}): {detail}", c.name, c.image);
        match reason {
            "ImagePullBackOff" | "InvalidImageName" | "ErrImageNeverPull" => {
                return Some((Cause::ImagePull, describe()))
            }
            "ErrImagePull" if older_than(now, started, timing.image_pull_grace) => {
                return Some((Cause::ImagePull, describe()))
            }
            "CreateContainerConfigError" | "CreateContainerError"
                if older_than(now, started, timing.config_error_grace) =>
            {
                return Some((Cause::ContainerConfig, describe()))
            }
            // The native sidecar restarts on failure; a crash loop means it never serves.
            "CrashLoopBackOff" => return Some((Cause::CrashLoop, describe())),
            _ => {}
        }
    }
    if status.phase.as_deref() == Some("Failed") {
        let exits: Vec<String> = status
            .container_statuses
            .iter()
            .flatten()
            .filter_map(|c| {
                let t = c.state.as_ref()?.terminated.as_ref()?;
                Some(format!("{} exited {} ({})", c.name, t.exit_code, t.reason.as_deref().unwrap_or("")))
            })
            .collect();
        let reason = status.reason.as_deref().unwrap_or("Failed");
        if reason == "DeadlineExceeded" {
            return Some((Cause::DeadlineExceeded, "the job's pod ran past activeDeadlineSeconds".into()));
        }
        return Some((Cause::PodFailed, format!("the pod failed ({reason}): {}", exits.join(", "))));
    }
    let unschedulable = status
        .conditions
        .iter()
        .flatten()
        .find(|c| c.type_ == "PodScheduled" && c.status == "False" && c.reason.as_deref() == Some("Unschedulable"));
    if let Some(c) = unschedulable {
        if older_than(now, started, timing.unschedulable_grace) {
            return Some((
                Cause::Unschedulable,
                format!("the pod is unschedulable: {}", c.message.as_deref().unwrap_or("")),
            ));
        }
    }
    None
}

#[cfg(test)]
mod tests;
