use super::*;
use serde_json::json;

const T0: i64 = 1_800_000_000;

fn at(secs: i64) -> Timestamp {
    Timestamp::from_second(T0 + secs).unwrap()
}

fn ts(secs: i64) -> String {
    at(secs).to_string()
}

fn record(name: &str, deadline_secs: i64, result: bool) -> JobRecord {
    let mut v = json!({
        "apiVersion": "jobs.jobmanager.dev/v1", "kind": "JobRecord",
        "metadata": {"name": name, "creationTimestamp": ts(0)},
        "spec": {"jobId": name.trim_start_matches("jm-"), "runtimeType": "rt", "workload": "ephemeral", "deadline": ts(deadline_secs)}
    });
    if result {
        v["status"] = json!({"result": {"outcome": "succeeded", "message": ""}, "delivery": {"state": "Pending"}});
    }
    serde_json::from_value(v).unwrap()
}

fn job(name: &str, status: serde_json::Value) -> batch::Job {
    serde_json::from_value(json!({
        "metadata": {"name": name, "creationTimestamp": ts(0)},
        "spec": {"template": {"spec": {"containers": []}}},
        "status": status
    }))
    .unwrap()
}

fn pod(job: &str, status: serde_json::Value) -> core::Pod {
    serde_json::from_value(json!({
        "metadata": {"name": format!("{job}-abcde"), "creationTimestamp": ts(0), "labels": {labels::JOB_LABEL: job}},
        "status": status
    }))
    .unwrap()
}

fn waiting(container: &str, reason: &str) -> serde_json::Value {
    json!({"phase": "Pending", "containerStatuses": [{
        "name": container, "image": "img:1", "imageID": "", "ready": false, "restartCount": 0,
        "state": {"waiting": {"reason": reason, "message": "details"}}
    }]})
}

fn run(records: &[JobRecord], jobs: &[batch::Job], pods: &[core::Pod], now: i64) -> Vec<Action> {
    plan(&Snapshot { records, jobs, pods, now: at(now) }, &Timing::default())
}

fn reported(actions: &[Action]) -> Vec<(Outcome, Cause, String)> {
    actions
        .iter()
        .filter_map(|a| match a {
            Action::Report { result, cause } => Some((result.outcome, *cause, result.message.clone())),
            _ => None,
        })
        .collect()
}

#[test]
fn healthy_running_job_costs_no_write() {
    // A running job is left alone: no status bookkeeping (each would be an API write per
    // job); `kubectl get jr` shows it in flight by its empty Outcome.
    let jobs = [job("jm-a", json!({"active": 1}))];
    let pods = [pod("jm-a", json!({"phase": "Running", "startTime": ts(2)}))];
    assert_eq!(run(&[record("jm-a", 120, false)], &jobs, &pods, 30), []);
    assert_eq!(run(&[record("jm-a", 120, false)], &jobs, &[pod("jm-a", json!({"phase": "Pending"}))], 30), []);
}

#[test]
fn deadline_breach_times_out_and_deletes_the_job() {
    let actions = run(&[record("jm-a", 60, false)], &[job("jm-a", json!({"active": 1}))], &[], 60 + 11);
    let r = reported(&actions);
    assert_eq!(r.len(), 1);
    assert_eq!((r[0].0, r[0].1), (Outcome::TimedOut, Cause::DeadlineExceeded));
    assert!(actions.contains(&Action::DeleteJob { name: "jm-a".into() }));
    // Within the grace period a late result may still arrive: nothing yet.
    assert_eq!(run(&[record("jm-a", 60, false)], &[job("jm-a", json!({"active": 1}))], &[], 65), []);
}

#[test]
fn deadline_applies_even_without_any_workload() {
    // Record left by a replica that crashed mid-creation, or a Job deleted by its TTL.
    let r = reported(&run(&[record("jm-a", 60, false)], &[], &[], 100));
    assert_eq!(r[0].0, Outcome::TimedOut);
    assert_eq!(run(&[record("jm-a", 60, false)], &[], &[], 30), []);
}

#[test]
fn image_pull_failures_are_named() {
    let jobs = [job("jm-a", json!({"active": 1}))];
    let backoff = run(&[record("jm-a", 600, false)], &jobs, &[pod("jm-a", waiting("runtime", "ImagePullBackOff"))], 5);
    let r = reported(&backoff);
    assert_eq!((r[0].0, r[0].1), (Outcome::Failed, Cause::ImagePull));
    assert!(
        r[0].2.contains("ImagePullBackOff") && r[0].2.contains("img:1") && r[0].2.contains("runtime"),
        "{}",
        r[0].2
    );
    assert!(backoff.contains(&Action::DeleteJob { name: "jm-a".into() }));
    // ErrImagePull gets a grace period, then fails.
    let first_pull = [pod("jm-a", waiting("sidecar", "ErrImagePull"))];
    assert_eq!(run(&[record("jm-a", 600, false)], &jobs, &first_pull, 10), []);
    assert_eq!(reported(&run(&[record("jm-a", 600, false)], &jobs, &first_pull, 31))[0].1, Cause::ImagePull);
}

#[test]
fn config_errors_and_crash_loops() {
    let jobs = [job("jm-a", json!({"active": 1}))];
    let cfg = [pod("jm-a", waiting("sidecar", "CreateContainerConfigError"))];
    assert_eq!(run(&[record("jm-a", 600, false)], &jobs, &cfg, 10), []);
    assert_eq!(reported(&run(&[record("jm-a", 600, false)], &jobs, &cfg, 31))[0].1, Cause::ContainerConfig);
    let crash = [pod("jm-a", waiting("sidecar", "CrashLoopBackOff"))];
    assert_eq!(reported(&run(&[record("jm-a", 600, false)], &jobs, &crash, 1))[0].1, Cause::CrashLoop);
}

#[test]
fn oom_killed_is_named() {
    let p = pod(
        "jm-a",
        json!({"phase": "Failed", "containerStatuses": [{
            "name": "runtime", "image": "img:1", "imageID": "", "ready": false, "restartCount": 0,
            "state": {"terminated": {"exitCode": 137, "reason": "OOMKilled"}}
        }]}),
    );
    let r = reported(&run(&[record("jm-a", 600, false)], &[job("jm-a", json!({"failed": 1}))], &[p], 5));
    assert_eq!((r[0].0, r[0].1), (Outcome::Failed, Cause::OomKilled));
    assert!(r[0].2.contains("runtime was OOMKilled"), "{}", r[0].2);
}

#[test]
fn unschedulable_after_grace() {
    let p = pod(
        "jm-a",
        json!({"phase": "Pending", "conditions": [{"type": "PodScheduled", "status": "False", "reason": "Unschedulable", "message": "0/3 nodes are available: insufficient memory"}]}),
    );
    let jobs = [job("jm-a", json!({"active": 1}))];
    assert_eq!(run(&[record("jm-a", 600, false)], &jobs, std::slice::from_ref(&p), 60), []);
    let r = reported(&run(&[record("jm-a", 600, false)], &jobs, &[p], 121));
    assert_eq!(r[0].1, Cause::Unschedulable);
    assert!(r[0].2.contains("insufficient memory"), "{}", r[0].2);
}

#[test]
fn job_without_pods_is_a_quota_or_admission_failure() {
    let jobs = [job("jm-a", json!({}))];
    // Young: nothing yet. Past the admission check: read its FailedCreate events (each
    // pass), no result decided yet. Past the grace: failed, whatever the events say.
    assert_eq!(run(&[record("jm-a", 600, false)], &jobs, &[], 2), []);
    let check = run(&[record("jm-a", 600, false)], &jobs, &[], 60);
    assert!(
        matches!(&check[..], [Action::CheckAdmission { name, result }]
            if name == "jm-a" && result.outcome == Outcome::Failed && result.message.starts_with("no pod was created for the Job")),
        "{check:?}"
    );
    let r = reported(&run(&[record("jm-a", 600, false)], &jobs, &[], 91));
    assert_eq!(r[0].1, Cause::NoPod);
    assert!(r[0].2.contains("quota"), "{}", r[0].2);
    // A Job whose pod exists (or existed) is never checked.
    let counted = [job("jm-a", json!({"failed": 1}))];
    assert!(run(&[record("jm-a", 600, false)], &counted, &[], 60).is_empty());
}

#[test]
fn only_admission_refusals_no_retry_can_pass_are_lasting() {
    let event = |reason: &str, message: &str| -> core::Event {
        serde_json::from_value(json!({"metadata": {"name": "e"}, "involvedObject": {"kind": "Job", "name": "jm-a"},
            "reason": reason, "message": message}))
        .unwrap()
    };
    let psa = r#"Error creating: pods "jm-a-x" is forbidden: violates PodSecurity "baseline:latest": non-default capabilities (container "egress-init" must not include "NET_ADMIN" in securityContext.capabilities.add)"#;
    let webhook =
        r#"Error creating: admission webhook "validation.gatekeeper.sh" denied the request: [no-net-admin] NET_ADMIN"#;
    let quota = r#"Error creating: pods "jm-a-x" is forbidden: exceeded quota: team, requested: pods=1, used: pods=5, limited: pods=5"#;
    assert!(lasting_refusal(&[event("FailedCreate", psa)]));
    assert!(lasting_refusal(&[event("FailedCreate", quota), event("FailedCreate", webhook)]));
    assert!(!lasting_refusal(&[event("FailedCreate", quota)]), "a quota frees up");
    let rbac = r#"Error creating: pods "jm-a-x" is forbidden: User "system:serviceaccount:kube-system:job-controller" cannot create resource "pods" in API group "" in the namespace "jobs""#;
    assert!(lasting_refusal(&[event("FailedCreate", rbac)]), "a Role does not change by itself");
    assert!(!lasting_refusal(&[event("Warning", psa)]), "only the Job controller's FailedCreate");
    assert!(!lasting_refusal(&[]));
}

#[test]
fn no_pod_message_quotes_the_latest_failed_create_event() {
    let event = |reason: &str, message: &str, last: i64| -> core::Event {
        serde_json::from_value(json!({
            "metadata": {"name": format!("e{last}")},
            "involvedObject": {"kind": "Job", "name": "jm-a"},
            "reason": reason, "message": message, "lastTimestamp": ts(last),
        }))
        .unwrap()
    };
    let base = "no pod was created for the Job within 90s";
    assert_eq!(no_pod_message(base, &[]), base, "no event: unchanged");
    let quota = r#"Error creating: pods "jm-a-x1" is forbidden: exceeded quota: team, requested: pods=1, used: pods=5, limited: pods=5"#;
    let events = [
        event("FailedCreate", "Error creating: an older refusal", 10),
        event("FailedCreate", quota, 30),
        event("SuccessfulCreate", "Created pod: jm-a-x2", 40),
        event("FailedCreate", "  ", 50),
    ];
    assert_eq!(no_pod_message(base, &events), format!("{base}; the Job controller said: {quota}"));
    // A long admission message is cut, on a character boundary.
    let long = format!("Error creating: {}", "é".repeat(1000));
    let out = no_pod_message(base, &[event("FailedCreate", &long, 1)]);
    assert!(out.ends_with("..."), "{out}");
    assert_eq!(out.chars().count(), base.chars().count() + "; the Job controller said: ".len() + 400 + 3);
}

#[test]
fn finished_jobs_without_results() {
    let complete = job(
        "jm-a",
        json!({"succeeded": 1, "conditions": [{"type": "Complete", "status": "True", "lastTransitionTime": ts(10)}]}),
    );
    assert_eq!(run(&[record("jm-a", 600, false)], std::slice::from_ref(&complete), &[], 20), []);
    let actions = run(&[record("jm-a", 600, false)], &[complete], &[], 41);
    assert_eq!(reported(&actions)[0].1, Cause::NoResult);
    // A finished Job is left to its TTL.
    assert!(!actions.iter().any(|a| matches!(a, Action::DeleteJob { .. })));
    let deadline = job(
        "jm-a",
        json!({"failed": 1, "conditions": [{"type": "Failed", "status": "True", "reason": "DeadlineExceeded", "lastTransitionTime": ts(10)}]}),
    );
    let r = reported(&run(&[record("jm-a", 600, false)], &[deadline], &[], 11));
    assert_eq!((r[0].0, r[0].1), (Outcome::TimedOut, Cause::DeadlineExceeded));
}

#[test]
fn recorded_results_are_left_alone_until_delivered() {
    let actions = run(&[record("jm-a", 60, true)], &[job("jm-a", json!({"active": 1}))], &[], 30);
    assert_eq!(actions, []);
    // Past the deadline with a result (e.g. our own timed_out) and still running: stop it.
    let actions = run(&[record("jm-a", 60, true)], &[job("jm-a", json!({"active": 1}))], &[], 61);
    assert_eq!(actions, [Action::DeleteJob { name: "jm-a".into() }]);
}

#[test]
fn persistent_records_only_time_out() {
    let mut r = record("jm-p", 60, false);
    r.spec.workload = RecordWorkload::Persistent;
    assert_eq!(run(std::slice::from_ref(&r), &[], &[], 30), []);
    assert_eq!(reported(&run(&[r], &[], &[], 71))[0].0, Outcome::TimedOut);
}

#[test]
fn orphans_are_deleted_after_grace() {
    let jobs = [job("jm-gone", json!({"active": 1})), job("jm-a", json!({"active": 1}))];
    let records = [record("jm-a", 600, false)];
    let snapshot = |now| Snapshot { records: &records, jobs: &jobs, pods: &[], now: at(now) };
    assert_eq!(plan(&snapshot(30), &Timing::default()), []);
    assert_eq!(plan(&snapshot(61), &Timing::default()), [Action::DeleteOrphanJob { name: "jm-gone".into() }]);
}
