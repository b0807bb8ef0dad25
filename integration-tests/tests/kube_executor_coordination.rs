//! Lease-guarded work against the emulated API server: pruning (timeouts, pods that
//! cannot start, orphans), service setup (server-side apply, idempotent), lease
//! ownership and takeover when the holder dies, and persistent dispatch (429 -> busy,
//! 202 -> accepted) through a fake sidecar ingress.
#![allow(clippy::unwrap_used)] // in a test, an unwrap is an assertion
mod kube_executor_support;

use bytes::Bytes;
use common::{JobId, Outcome};
use http_body_util::{BodyExt, Full};
use integration_tests::emulator::{Fault, FaultRule};
use job_manager::backend::kubernetes::coordination::{CoordinationSettings, Coordinator};
use job_manager::backend::kubernetes::diagnose::Timing;
use job_manager::backend::kubernetes::labels;
use job_manager::backend::kubernetes::metrics::{ApiCallLabels, LeaseLabels};
use job_manager::backend::kubernetes::setup::KubeSetup;
use job_manager::backend::{Accepted, Executor, HandoffError};
use job_manager::results::{ResultIntake, ResultStore};
use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::{Namespace, Pod, ResourceQuota};
use kube::api::{Api, Patch, PatchParams, PostParams};
use kube_executor_support::{config, eventually, handoff, Cluster, NS};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};
use tokio_util::sync::CancellationToken;

fn id(s: &str) -> JobId {
    JobId::new(s).unwrap()
}

fn coordinator(setup: &KubeSetup, settings: CoordinationSettings) -> Arc<Coordinator> {
    let intake = ResultIntake::new(setup.record_store(), Arc::new(job_manager::metrics::Metrics::new()));
    setup.coordinator(intake, settings)
}

fn fast_timing() -> Timing {
    Timing {
        timeout_grace: Duration::ZERO,
        image_pull_grace: Duration::ZERO,
        config_error_grace: Duration::ZERO,
        unschedulable_grace: Duration::ZERO,
        no_pod_grace: Duration::from_secs(3600),
        admission_check: Duration::ZERO,
        finished_grace: Duration::ZERO,
        orphan_grace: Duration::ZERO,
    }
}

#[tokio::test]
async fn pruning_times_out_names_pod_failures_and_deletes_orphans() {
    let cluster = Cluster::start().await;
    let setup = cluster.replica(&config()).await;
    let executor = setup.executor();
    let store = setup.record_store();
    let pruner = coordinator(&setup, CoordinationSettings { timing: fast_timing(), ..Default::default() });

    // A job already past its deadline.
    let mut late = handoff("late", "node-api-runtime");
    late.deadline = SystemTime::now() - Duration::from_secs(5);
    executor.start(late).await.unwrap();
    // A job whose pod cannot pull its image.
    executor.start(handoff("bad-image", "node-api-runtime")).await.unwrap();
    let pods: Api<Pod> = Api::namespaced(cluster.client().await, NS);
    let job_name = labels::object_name(&id("bad-image"));
    let mut pod: Pod = serde_json::from_value(serde_json::json!({
        "metadata": {"name": format!("{job_name}-x1"), "labels": labels::job_labels(&id("bad-image"), "node-api-runtime")},
        "spec": {"containers": [{"name": "runtime", "image": "test-runtime:nope"}]}
    }))
    .unwrap();
    let created = pods.create(&PostParams::default(), &pod).await.unwrap();
    pod = created;
    pod.status = Some(
        serde_json::from_value(serde_json::json!({"phase": "Pending", "containerStatuses": [{
        "name": "runtime", "image": "test-runtime:nope", "imageID": "", "ready": false, "restartCount": 0,
        "state": {"waiting": {"reason": "ImagePullBackOff", "message": "pull access denied"}}}]}))
        .unwrap(),
    );
    pods.replace_status(pod.metadata.name.as_deref().unwrap(), &PostParams::default(), &pod).await.unwrap();
    // A healthy job whose pod runs: left alone (no write).
    executor.start(handoff("healthy", "node-api-runtime")).await.unwrap();
    let healthy_name = labels::object_name(&id("healthy"));
    let mut running: Pod = serde_json::from_value(serde_json::json!({
        "metadata": {"name": format!("{healthy_name}-r1"), "labels": labels::job_labels(&id("healthy"), "node-api-runtime")},
        "spec": {"containers": [{"name": "runtime", "image": "test-runtime:1"}]}
    }))
    .unwrap();
    running = pods.create(&PostParams::default(), &running).await.unwrap();
    running.status = Some(serde_json::from_value(serde_json::json!({"phase": "Running"})).unwrap());
    pods.replace_status(running.metadata.name.as_deref().unwrap(), &PostParams::default(), &running).await.unwrap();
    // An orphaned Job (no record, no owner: e.g. created by hand with our labels).
    let jobs: Api<Job> = Api::namespaced(cluster.client().await, NS);
    let orphan: Job = serde_json::from_value(serde_json::json!({
        "metadata": {"name": "jm-orphan", "labels": labels::job_labels(&id("orphan"), "node-api-runtime")},
        "spec": {"template": {"spec": {"restartPolicy": "Never", "containers": [{"name": "runtime", "image": "test-runtime:1"}]}}}
    }))
    .unwrap();
    jobs.create(&PostParams::default(), &orphan).await.unwrap();

    let pass = pruner.prune_once().await.unwrap();
    assert_eq!(pass.reported, 2, "{pass:?}");

    let timed_out = store.lookup_result(&id("late")).await.unwrap().expect("late has a result");
    assert_eq!(timed_out.outcome, Outcome::TimedOut);
    let failed = store.lookup_result(&id("bad-image")).await.unwrap().expect("bad-image has a result");
    assert_eq!(failed.outcome, Outcome::Failed);
    assert!(
        failed.message.contains("ImagePullBackOff") && failed.message.contains("test-runtime:nope"),
        "{}",
        failed.message
    );
    assert_eq!(store.lookup_result(&id("healthy")).await.unwrap(), None);

    // Their workloads are stopped; the records stay until delivered.
    for name in ["late", "bad-image"] {
        let name = labels::object_name(&id(name));
        assert!(cluster.object("batch/v1", "Job", &name).is_none(), "{name} still has a Job");
        assert!(cluster.object("jobs.jobmanager.dev/v1", "JobRecord", &name).is_some());
    }
    assert!(cluster.object("batch/v1", "Job", "jm-orphan").is_none());
    assert!(cluster.object("batch/v1", "Job", &labels::object_name(&id("healthy"))).is_some());
    let healthy_record = cluster.object("jobs.jobmanager.dev/v1", "JobRecord", &healthy_name).unwrap();
    assert!(healthy_record.get("status").is_none_or(|s| s.is_null()), "{healthy_record}");
    assert_eq!(store.pending().await.unwrap().len(), 2);

    // Idempotent: a second pass decides nothing new.
    assert_eq!(pruner.prune_once().await.unwrap().reported, 0);

    // Passes read watch caches: a pod that is OOMKilled now is seen without re-listing.
    assert!(cluster.emu.requests().iter().any(|r| r.verb == "watch" && r.resource == "pods"));
    // The watches share the replica's client, so its API-call metrics count them too.
    assert!(api_calls(&setup, "pods", "watch") > 0);
    let healthy = labels::object_name(&id("healthy"));
    let mut oom: Pod = serde_json::from_value(serde_json::json!({
        "metadata": {"name": format!("{healthy}-y1"), "labels": labels::job_labels(&id("healthy"), "node-api-runtime")},
        "spec": {"containers": [{"name": "runtime", "image": "test-runtime:1"}]}
    }))
    .unwrap();
    oom = pods.create(&PostParams::default(), &oom).await.unwrap();
    oom.status = Some(
        serde_json::from_value(serde_json::json!({"phase": "Failed", "containerStatuses": [{
            "name": "runtime", "image": "test-runtime:1", "imageID": "", "ready": false, "restartCount": 0,
            "state": {"terminated": {"exitCode": 137, "reason": "OOMKilled"}}}]}))
        .unwrap(),
    );
    pods.replace_status(oom.metadata.name.as_deref().unwrap(), &PostParams::default(), &oom).await.unwrap();
    cluster.emu.clear_requests();
    eventually("the OOMKilled pod is diagnosed", Duration::from_secs(10), || async {
        pruner.prune_once().await.unwrap();
        store.lookup_result(&id("healthy")).await.unwrap().is_some()
    })
    .await;
    let oom_result = store.lookup_result(&id("healthy")).await.unwrap().unwrap();
    assert!(oom_result.message.contains("OOMKilled"), "{}", oom_result.message);
    let lists = cluster.emu.requests().into_iter().filter(|r| r.verb == "list" && r.resource == "pods").count();
    assert_eq!(lists, 0, "pruning passes listed pods instead of reading the cache");
}

/// A ResourceQuota that allows no pod at all in the test namespace.
async fn forbid_pods(cluster: &Cluster) {
    let quotas: Api<ResourceQuota> = Api::namespaced(cluster.client().await, NS);
    let quota: ResourceQuota =
        serde_json::from_value(serde_json::json!({"metadata": {"name": "no-pods"}, "spec": {"hard": {"pods": "0"}}}))
            .unwrap();
    quotas.create(&PostParams::default(), &quota).await.unwrap();
}

#[tokio::test]
async fn a_job_refused_by_a_pod_quota_fails_quoting_the_job_controller() {
    let cluster = Cluster::start().await;
    let setup = cluster.replica(&config()).await;
    let store = setup.record_store();
    // The namespace's quota allows no pod at all.
    forbid_pods(&cluster).await;
    setup.executor().start(handoff("over-quota", "node-api-runtime")).await.unwrap();
    // The Job controller's pass: the pod is refused, a FailedCreate event says why.
    integration_tests::kubelet::controllers::reconcile_all(cluster.emu.store());
    assert!(cluster.emu.objects("v1", "Pod", NS).is_empty());
    assert_eq!(cluster.emu.objects("v1", "Event", NS).len(), 1);

    let timing = Timing { no_pod_grace: Duration::ZERO, ..fast_timing() };
    let pruner = coordinator(&setup, CoordinationSettings { timing, ..Default::default() });
    eventually("the job without a pod is reported", Duration::from_secs(10), || async {
        pruner.prune_once().await.unwrap();
        store.lookup_result(&id("over-quota")).await.unwrap().is_some()
    })
    .await;
    let result = store.lookup_result(&id("over-quota")).await.unwrap().unwrap();
    assert_eq!(result.outcome, Outcome::Failed);
    assert!(result.message.starts_with("no pod was created for the Job"), "{}", result.message);
    assert!(
        result.message.contains("the Job controller said: Error creating: pods")
            && result.message.ends_with("exceeded quota: no-pods, requested: pods=1, used: pods=0, limited: pods=0"),
        "{}",
        result.message
    );
    // One field-selected list of the Job's events, with the Role's `list` on core events.
    let lists: Vec<_> =
        cluster.emu.requests().into_iter().filter(|r| r.verb == "list" && r.resource == "events").collect();
    assert_eq!(lists.len(), 1, "{lists:?}");
}

#[tokio::test]
async fn service_setup_applies_persistent_workloads_idempotently() {
    let cluster = Cluster::start().await;
    let setup = cluster.replica(&config()).await;
    let c = coordinator(&setup, CoordinationSettings::default());
    assert_eq!(c.setup_once().await.unwrap(), 4);
    let name = labels::persistent_name("browser");
    let rv = |api: &str, kind: &str, name: &str| {
        cluster.object(api, kind, name).unwrap()["metadata"]["resourceVersion"].as_str().unwrap().to_string()
    };
    let before = [
        rv("apps/v1", "Deployment", &name),
        rv("v1", "Service", &name),
        rv("autoscaling/v2", "HorizontalPodAutoscaler", &name),
        rv("networking.k8s.io/v1", "NetworkPolicy", labels::RUNTIME_NETWORK_POLICY_NAME),
    ];
    let service = cluster.object("v1", "Service", &name).unwrap();
    assert_eq!(service["spec"]["ports"][0]["port"], 8443);
    let deployment = cluster.object("apps/v1", "Deployment", &name).unwrap();
    assert_eq!(deployment["spec"]["template"]["spec"]["initContainers"][1]["restartPolicy"], "Always");
    assert_eq!(deployment["spec"]["template"]["spec"]["initContainers"][0]["name"], "egress-init");
    // Applying again (another holder, a restart) changes nothing.
    c.setup_once().await.unwrap();
    let after = [
        rv("apps/v1", "Deployment", &name),
        rv("v1", "Service", &name),
        rv("autoscaling/v2", "HorizontalPodAutoscaler", &name),
        rv("networking.k8s.io/v1", "NetworkPolicy", labels::RUNTIME_NETWORK_POLICY_NAME),
    ];
    assert_eq!(before, after);
    let applies =
        cluster.emu.requests().into_iter().filter(|r| r.verb == "patch" && r.field_manager == "job-manager").count();
    assert_eq!(applies, 8);
    let deletes = || cluster.emu.requests().into_iter().filter(|r| r.verb == "delete").count();
    assert_eq!(deletes(), 0, "nothing retired while the config wants it all");

    // The operator removes the persistent runtime type and switches the NetworkPolicy off:
    // the next holder's pass deletes what the old config had applied.
    let mut reduced = config();
    reduced.runtimes.retain(|r| r.name != "browser");
    reduced.kubernetes.network_policy.enabled = false;
    let later = cluster.replica(&reduced).await;
    let c2 = coordinator(&later, CoordinationSettings::default());
    assert_eq!(c2.setup_once().await.unwrap(), 0);
    for (api, kind, n) in [
        ("apps/v1", "Deployment", name.as_str()),
        ("v1", "Service", name.as_str()),
        ("autoscaling/v2", "HorizontalPodAutoscaler", name.as_str()),
        ("networking.k8s.io/v1", "NetworkPolicy", labels::RUNTIME_NETWORK_POLICY_NAME),
    ] {
        assert!(cluster.object(api, kind, n).is_none(), "{kind} {n} still exists");
    }
    assert_eq!(deletes(), 4);
    // Idempotent: nothing left to delete, no delete attempted.
    c2.setup_once().await.unwrap();
    assert_eq!(deletes(), 4);
}

fn api_calls(setup: &KubeSetup, resource: &'static str, verb: &'static str) -> u64 {
    setup.metrics().api_calls.get_or_create(&ApiCallLabels { resource, verb, outcome: "ok" }).get()
}

fn holds(setup: &KubeSetup, lease: &'static str) -> bool {
    setup.metrics().lease_held.get_or_create(&LeaseLabels { lease }).get() == 1
}

#[test]
fn one_lease_holder_and_takeover_when_it_dies() {
    // Replica A runs on its own runtime so it can die without releasing its leases.
    let main = tokio::runtime::Runtime::new().unwrap();
    let cluster = main.block_on(Cluster::start());
    let settings = CoordinationSettings {
        lease_duration_secs: 3,
        lease_grace_secs: 1,
        prune_interval: Duration::from_millis(100),
        service_setup_interval: Duration::from_millis(500),
        timing: Timing::default(),
    };
    let replica_a = tokio::runtime::Runtime::new().unwrap();
    let a = replica_a.block_on(cluster.replica(&config()));
    let coordinator_a = coordinator(&a, settings.clone());
    replica_a.spawn(coordinator_a.run(CancellationToken::new()));
    main.block_on(eventually("A holds both leases", Duration::from_secs(10), || async {
        holds(&a, labels::LEASE_RUNTIME_PRUNING) && holds(&a, labels::LEASE_SERVICE_SETUP)
    }));

    let b = main.block_on(cluster.replica(&config()));
    let shutdown_b = CancellationToken::new();
    main.spawn(coordinator(&b, settings.clone()).run(shutdown_b.clone()));
    // B waits while A renews: well past one lease duration, A still holds.
    main.block_on(async { tokio::time::sleep(Duration::from_secs(4)).await });
    assert!(holds(&a, labels::LEASE_RUNTIME_PRUNING) && !holds(&b, labels::LEASE_RUNTIME_PRUNING));
    // The lease manager's calls are counted like every other (reads, then renewals).
    assert!(api_calls(&a, "leases", "get") > 0 && api_calls(&a, "leases", "patch") > 0);
    // The lease holder did its work: the persistent workload exists.
    assert!(cluster.object("apps/v1", "Deployment", &labels::persistent_name("browser")).is_some());

    // A dies (no release); B takes over once A's lease expires.
    replica_a.shutdown_background();
    let died = std::time::Instant::now();
    main.block_on(eventually("B takes over both leases", Duration::from_secs(15), || async {
        holds(&b, labels::LEASE_RUNTIME_PRUNING) && holds(&b, labels::LEASE_SERVICE_SETUP)
    }));
    assert!(died.elapsed() < Duration::from_secs(10), "takeover took {:?}", died.elapsed());
    let lease = cluster.object("coordination.k8s.io/v1", "Lease", labels::LEASE_RUNTIME_PRUNING).unwrap();
    assert_eq!(lease["spec"]["holderIdentity"], b.identity());
    shutdown_b.cancel();
}

/// A fake sidecar ingress: answers 429 `busy` times, then 202; records what it got.
async fn fake_ingress(busy: usize) -> (String, Arc<Mutex<Vec<http::Request<Bytes>>>>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let seen = Arc::new(Mutex::new(Vec::new()));
    let calls = Arc::new(AtomicUsize::new(0));
    let seen_in = seen.clone();
    tokio::spawn(async move {
        loop {
            let (stream, _) = listener.accept().await.unwrap();
            let (seen, calls) = (seen_in.clone(), calls.clone());
            tokio::spawn(async move {
                let service = hyper::service::service_fn(move |req: http::Request<hyper::body::Incoming>| {
                    let (seen, calls) = (seen.clone(), calls.clone());
                    async move {
                        let (parts, body) = req.into_parts();
                        let body = body.collect().await.unwrap().to_bytes();
                        seen.lock().unwrap().push(http::Request::from_parts(parts, body));
                        let status = if calls.fetch_add(1, Ordering::SeqCst) < busy { 429 } else { 202 };
                        Ok::<_, std::convert::Infallible>(
                            http::Response::builder()
                                .status(status)
                                .body(Full::new(Bytes::from_static(b"{}")))
                                .unwrap(),
                        )
                    }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(hyper_util::rt::TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    (url, seen)
}

#[tokio::test]
async fn persistent_dispatch_backs_off_on_429_and_acks_on_202() {
    let cluster = Cluster::start().await;
    let (url, seen) = fake_ingress(1).await;
    // `kubernetes.persistentEndpoints`: the cluster DNS name does not resolve here.
    let mut c = config();
    c.kubernetes.persistent_endpoints.insert("browser".into(), format!("{url}/"));
    let setup = cluster.replica(&c).await;
    let executor = setup.executor();
    let name = labels::object_name(&id("p-1"));
    // Undoing the record meets API trouble twice: it is retried, not left behind.
    cluster.emu.faults().add(FaultRule::new(Fault::InternalError).resource("jobrecords").verb("delete").times(2));

    let err = executor.start(handoff("p-1", "browser")).await.unwrap_err();
    assert!(matches!(err, HandoffError::Busy(_)), "{err}");
    assert_eq!(cluster.emu.faults().injected(), 2);
    // Not accepted: no record left (its next delivery would look already running and
    // end as a false timeout).
    assert!(cluster.object("jobs.jobmanager.dev/v1", "JobRecord", &name).is_none());
    assert!(executor.in_flight().await.unwrap().is_empty());

    assert_eq!(executor.start(handoff("p-1", "browser")).await.unwrap(), Accepted::Started);
    let record = cluster.object("jobs.jobmanager.dev/v1", "JobRecord", &name).expect("record of the dispatched job");
    assert_eq!(record["spec"]["workload"], "persistent");
    assert_eq!(executor.in_flight().await.unwrap().get("browser"), Some(&vec![id("p-1")]));
    // A re-delivery is not dispatched twice.
    assert_eq!(executor.start(handoff("p-1", "browser")).await.unwrap(), Accepted::AlreadyRunning);

    let requests = seen.lock().unwrap();
    assert_eq!(requests.len(), 2);
    let last = &requests[1];
    assert_eq!(last.uri().path(), "/v1/jobs");
    assert_eq!(last.headers()[common::headers::INTERNAL_API_KEY], "test-internal-key");
    assert_eq!(last.headers()[common::headers::JOB_TOKEN], "token-for-p-1");
    let body: serde_json::Value = serde_json::from_slice(last.body()).unwrap();
    assert_eq!(body["id"], "p-1");
    assert!(body.get("signature").is_none());
}

#[tokio::test]
async fn a_job_refused_by_pod_security_fails_at_once_quoting_the_admission_message() {
    let cluster = Cluster::start().await;
    let setup = cluster.replica(&config()).await;
    let store = setup.record_store();
    // The namespace enforces `baseline`, which refuses the egress-init container's NET_ADMIN.
    let namespaces: Api<Namespace> = Api::all(cluster.client().await);
    let label = serde_json::json!({"metadata": {"labels": {"pod-security.kubernetes.io/enforce": "baseline"}}});
    namespaces.patch(NS, &PatchParams::default(), &Patch::Merge(&label)).await.unwrap();
    setup.executor().start(handoff("refused", "node-api-runtime")).await.unwrap();
    integration_tests::kubelet::controllers::reconcile_all(cluster.emu.store());
    assert!(cluster.emu.objects("v1", "Pod", NS).is_empty());

    // no_pod_grace is an hour: only the admission check can decide this now.
    let pruner = coordinator(&setup, CoordinationSettings { timing: fast_timing(), ..Default::default() });
    eventually("the refused job is reported", Duration::from_secs(10), || async {
        pruner.prune_once().await.unwrap();
        store.lookup_result(&id("refused")).await.unwrap().is_some()
    })
    .await;
    let result = store.lookup_result(&id("refused")).await.unwrap().unwrap();
    assert_eq!(result.outcome, Outcome::Failed);
    assert!(result.message.starts_with("no pod was created for the Job: admission refused it"), "{}", result.message);
    assert!(
        result.message.contains(
            r#"violates PodSecurity "baseline:latest": non-default capabilities (container "egress-init" must not include "NET_ADMIN" in securityContext.capabilities.add)"#
        ),
        "{}",
        result.message
    );
    assert!(cluster.emu.objects("batch/v1", "Job", NS).is_empty(), "the refused Job is deleted");
}

#[tokio::test]
async fn a_quota_refusal_is_not_failed_before_its_grace() {
    let cluster = Cluster::start().await;
    let setup = cluster.replica(&config()).await;
    let store = setup.record_store();
    forbid_pods(&cluster).await;
    setup.executor().start(handoff("waits", "node-api-runtime")).await.unwrap();
    integration_tests::kubelet::controllers::reconcile_all(cluster.emu.store());
    let pruner = coordinator(&setup, CoordinationSettings { timing: fast_timing(), ..Default::default() });
    for _ in 0..3 {
        pruner.prune_once().await.unwrap();
    }
    assert!(store.lookup_result(&id("waits")).await.unwrap().is_none(), "a quota frees up: the job waits");
    assert_eq!(cluster.emu.objects("batch/v1", "Job", NS).len(), 1);
}
