//! The Kubernetes executor and the record store against the emulated API server (which
//! validates every object against the official v1.33 schemas): creation, idempotency,
//! first-result-wins across replicas, failure mapping, and garbage collection.
#![allow(clippy::unwrap_used)] // in a test, an unwrap is an assertion
mod kube_executor_support;

use common::{JobId, JobResult, Outcome};
use integration_tests::emulator::{Fault, FaultRule};
use job_manager::backend::kubernetes::labels;
use job_manager::backend::{Accepted, Executor, HandoffError};
use job_manager::results::{Recorded, ResultStore};
use kube_executor_support::{config, eventually, handoff, Cluster};
use std::time::Duration;

fn id(s: &str) -> JobId {
    JobId::new(s).unwrap()
}

#[tokio::test]
async fn ephemeral_job_creates_record_then_owned_job() {
    let cluster = Cluster::start().await;
    let setup = cluster.replica(&config()).await;
    let executor = setup.executor();
    cluster.emu.clear_requests();

    assert_eq!(executor.start(handoff("job-1", "node-api-runtime")).await.unwrap(), Accepted::Started);

    let name = labels::object_name(&id("job-1"));
    let record = cluster.object("jobs.jobmanager.dev/v1", "JobRecord", &name).expect("record exists");
    let job = cluster.object("batch/v1", "Job", &name).expect("job exists");
    let record_uid = record["metadata"]["uid"].as_str().unwrap();
    let owner = &job["metadata"]["ownerReferences"][0];
    assert_eq!(owner["uid"], record_uid, "{job}");
    assert_eq!(owner["kind"], "JobRecord");
    assert_eq!(owner["controller"], true);
    assert_eq!(record["spec"]["jobId"], "job-1");
    // No per-job Secret: the token travels in the sidecar's env, the job on the record.
    assert!(cluster.emu.requests().iter().all(|r| r.resource != "secrets"), "no Secret API call");
    // Two writes: record, Job (nothing else on the happy path).
    let writes: Vec<_> = cluster
        .emu
        .requests()
        .into_iter()
        .filter(|r| r.verb != "get" && r.verb != "list" && r.verb != "watch")
        .collect();
    assert_eq!(writes.len(), 2, "{writes:?}");

    // A re-delivery (new token) or another replica: nothing new is started.
    let other = cluster.replica(&config()).await.executor();
    assert_eq!(other.start(handoff("job-1", "node-api-runtime")).await.unwrap(), Accepted::AlreadyRunning);
    assert_eq!(executor.start(handoff("job-1", "node-api-runtime")).await.unwrap(), Accepted::AlreadyRunning);

    // In flight: derived from the records, so a fresh replica sees it too.
    let in_flight = other.in_flight().await.unwrap();
    assert_eq!(in_flight.get("node-api-runtime"), Some(&vec![id("job-1")]));
}

#[tokio::test]
async fn in_flight_counts_this_replicas_jobs_only() {
    // `parallelism` is per replica: each counts the records it dispatched.
    let cluster = Cluster::start().await;
    let a =
        job_manager::backend::kubernetes::setup::KubeSetup::with_client_as(cluster.client().await, &config(), "jm-a")
            .unwrap();
    let b =
        job_manager::backend::kubernetes::setup::KubeSetup::with_client_as(cluster.client().await, &config(), "jm-b")
            .unwrap();
    a.executor().start(handoff("mine", "node-api-runtime")).await.unwrap();
    assert_eq!(b.executor().start(handoff("mine", "node-api-runtime")).await.unwrap(), Accepted::AlreadyRunning);
    assert_eq!(a.executor().in_flight().await.unwrap().get("node-api-runtime"), Some(&vec![id("mine")]));
    assert!(b.executor().in_flight().await.unwrap().is_empty());
    // A restarted container of the same pod finds its jobs again.
    let a_again =
        job_manager::backend::kubernetes::setup::KubeSetup::with_client_as(cluster.client().await, &config(), "jm-a")
            .unwrap();
    assert_eq!(a_again.executor().in_flight().await.unwrap().get("node-api-runtime"), Some(&vec![id("mine")]));
}

#[tokio::test]
async fn first_result_wins_across_replicas_then_delivery_cleans_up() {
    let cluster = Cluster::start().await;
    let a = cluster.replica(&config()).await;
    let b = cluster.replica(&config()).await;
    a.executor().start(handoff("job-2", "node-api-runtime")).await.unwrap();
    let (store_a, store_b) = (a.record_store(), b.record_store());

    let ok = JobResult::new(id("job-2"), Outcome::Succeeded, "done");
    let late = JobResult::new(id("job-2"), Outcome::TimedOut, "deadline");
    let (ra, rb) = tokio::join!(store_a.record(&ok), store_b.record(&late));
    let outcomes = [ra.unwrap(), rb.unwrap()];
    assert_eq!(outcomes.iter().filter(|r| **r == Recorded::Accepted).count(), 1, "{outcomes:?}");
    assert_eq!(outcomes.iter().filter(|r| **r == Recorded::Conflict).count(), 1, "{outcomes:?}");
    let winner = if outcomes[0] == Recorded::Accepted { &ok } else { &late };
    assert_eq!(store_b.record(winner).await.unwrap(), Recorded::Duplicate);
    assert_eq!(store_a.lookup_result(&id("job-2")).await.unwrap().as_ref().map(|r| r.outcome), Some(winner.outcome));

    // The job has its outcome: no longer in flight, pending delivery on every replica.
    assert!(b.executor().in_flight().await.unwrap().is_empty());
    let pending = store_b.pending().await.unwrap();
    assert_eq!(pending.len(), 1);
    assert!(pending[0].same_as(winner));

    // Delivered: the record goes, and with it (garbage collection) the Job.
    store_a.mark_delivered(&id("job-2")).await.unwrap();
    store_b.mark_delivered(&id("job-2")).await.unwrap(); // idempotent
    assert!(store_a.pending().await.unwrap().is_empty());
    let name = labels::object_name(&id("job-2"));
    eventually("job garbage-collected", Duration::from_secs(10), || async {
        cluster.object("batch/v1", "Job", &name).is_none()
    })
    .await;
}

#[tokio::test]
async fn status_write_conflicts_are_retried() {
    let cluster = Cluster::start().await;
    let setup = cluster.replica(&config()).await;
    setup.executor().start(handoff("job-3", "node-api-runtime")).await.unwrap();
    cluster.emu.faults().add(FaultRule::new(Fault::Conflict).resource("jobrecords").verb("update").times(2));
    let result = JobResult::new(id("job-3"), Outcome::Failed, "exit 1");
    assert_eq!(setup.record_store().record(&result).await.unwrap(), Recorded::Accepted);
    assert_eq!(cluster.emu.faults().injected(), 2);
    // A result for a job without a record is refused (the API answers 404/409 upstream).
    let stranger = JobResult::new(id("nobody"), Outcome::Failed, "");
    assert!(setup.record_store().record(&stranger).await.is_err());
}

#[tokio::test]
async fn api_failures_are_transient_or_permanent_and_leave_nothing_behind() {
    let cluster = Cluster::start().await;
    let setup = cluster.replica(&config()).await;
    let executor = setup.executor();
    let name = labels::object_name(&id("job-4"));

    cluster.emu.faults().add(FaultRule::new(Fault::InternalError).resource("jobs").verb("create").times(1));
    let err = executor.start(handoff("job-4", "node-api-runtime")).await.unwrap_err();
    assert!(matches!(err, HandoffError::Transient(_)), "{err}");
    // The record this attempt created is gone.
    assert!(cluster.object("jobs.jobmanager.dev/v1", "JobRecord", &name).is_none());
    // A failed record create: nothing was made, nothing to undo.
    cluster.emu.faults().add(FaultRule::new(Fault::InternalError).resource("jobrecords").verb("create").times(1));
    assert!(matches!(executor.start(handoff("job-4", "node-api-runtime")).await, Err(HandoffError::Transient(_))));
    assert!(cluster.object("jobs.jobmanager.dev/v1", "JobRecord", &name).is_none());

    // A single 429 is absorbed by the client's own Retry-After handling; the
    // dispatcher's retry then succeeds.
    let before = cluster.emu.faults().injected();
    cluster
        .emu
        .faults()
        .add(FaultRule::new(Fault::TooManyRequests { retry_after_secs: 0 }).resource("jobs").verb("create").times(1));
    assert_eq!(executor.start(handoff("job-4", "node-api-runtime")).await.unwrap(), Accepted::Started);
    assert_eq!(cluster.emu.faults().injected(), before + 1);

    let err = executor.start(handoff("job-5", "no-such-runtime")).await.unwrap_err();
    assert!(matches!(err, HandoffError::Permanent(ref m) if m.contains("no-such-runtime")), "{err}");

    // A configuration the translation refuses is permanent too, before any API call.
    let mut bad = config();
    bad.kubernetes.internal_api_key_secret_name.clear();
    let err = cluster.replica(&bad).await.executor().start(handoff("job-6", "node-api-runtime")).await.unwrap_err();
    assert!(matches!(err, HandoffError::Permanent(ref m) if m.contains("internalApiKeySecretName")), "{err}");
}
