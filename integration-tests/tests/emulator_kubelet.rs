//! The process kubelet and the controllers: pods run as real `sidecar` and
//! `test-runtime` processes, Jobs complete or fail like on a cluster, and pods that
//! cannot start show the same waiting reasons a kubelet reports.
#![allow(clippy::unwrap_used)] // in a test, an unwrap is an assertion
mod emulator_support;

use bytes::Bytes;
use emulator_support::{emulator, Raw};
use http_body_util::{BodyExt, Full};
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use integration_tests::emulator::Emulator;
use integration_tests::kubelet::{Kubelet, KubeletOptions};
use serde_json::{json, Value};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

const NS: &str = "default";
const KEY: &str = "internal-key-for-tests";

/// Waits (on store events, with a deadline) until `check` finds what it wants.
async fn wait_for<T>(emu: &Emulator, what: &str, secs: u64, mut check: impl FnMut() -> Option<T>) -> T {
    let mut rx = emu.store().subscribe();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(secs);
    loop {
        if let Some(v) = check() {
            return v;
        }
        tokio::select! {
            _ = rx.recv() => {}
            // Also re-check now and then: some conditions are timers, not writes.
            _ = tokio::time::sleep(Duration::from_millis(100)) => {}
            _ = tokio::time::sleep_until(deadline) => panic!("timed out waiting for {what}"),
        }
    }
}

/// A stand-in job manager result API that records what sidecars deliver.
async fn fake_job_manager() -> (SocketAddr, Arc<Mutex<Vec<(String, Value, String)>>>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let got: Arc<Mutex<Vec<(String, Value, String)>>> = Default::default();
    let rec = got.clone();
    tokio::spawn(async move {
        loop {
            let (s, _) = listener.accept().await.unwrap();
            let rec = rec.clone();
            tokio::spawn(async move {
                let svc = service_fn(move |req: http::Request<hyper::body::Incoming>| {
                    let rec = rec.clone();
                    async move {
                        let path = req.uri().path().to_string();
                        let key = req
                            .headers()
                            .get("x-internal-api-key")
                            .and_then(|v| v.to_str().ok())
                            .unwrap_or_default()
                            .to_string();
                        let body = req.into_body().collect().await.map(|b| b.to_bytes()).unwrap_or_default();
                        rec.lock().unwrap().push((path, serde_json::from_slice(&body).unwrap_or(Value::Null), key));
                        Ok::<_, std::convert::Infallible>(
                            http::Response::builder().status(200).body(Full::new(Bytes::from("{}"))).unwrap(),
                        )
                    }
                });
                let _ = hyper::server::conn::http1::Builder::new().serve_connection(TokioIo::new(s), svc).await;
            });
        }
    });
    (addr, got)
}

fn runtime_pod_spec(secret: &str) -> Value {
    json!({
        "restartPolicy": "Never",
        "automountServiceAccountToken": false,
        "volumes": [{"name": "job-dir", "secret": {"secretName": secret}}, {"name": "spool", "emptyDir": {}}],
        "initContainers": [{
            "name": "sidecar", "image": "newrelic/serverless-sidecar:latest", "restartPolicy": "Always",
            "ports": [{"name": "proxy", "containerPort": 3128}, {"name": "admin", "containerPort": 9901}],
            "env": [
                {"name": "SIDECAR_LISTEN", "value": "127.0.0.1:3128"},
                {"name": "SIDECAR_ADMIN_LISTEN", "value": "0.0.0.0:9901"},
                {"name": "SIDECAR_JOB_DIR", "value": "/var/run/job"},
                {"name": "SIDECAR_SPOOL_DIR", "value": "/var/spool/sidecar"},
                {"name": "SIDECAR_JOB_MANAGER_URL", "value": format!("http://job-manager.{NS}.svc:8080")},
                {"name": "SIDECAR_INTERNAL_API_KEY", "valueFrom": {"secretKeyRef": {"name": "internal-key", "key": "internalApiKey"}}},
                // Allow-list mode with an empty list: the job manager only, nothing off the machine.
                {"name": "SIDECAR_DENY_PUBLIC", "value": "true"},
                {"name": "SIDECAR_DENY_PRIVATE", "value": "true"},
            ],
            "volumeMounts": [{"name": "job-dir", "mountPath": "/var/run/job", "readOnly": true}, {"name": "spool", "mountPath": "/var/spool/sidecar"}],
            "startupProbe": {"httpGet": {"path": "/readyz", "port": "admin"}, "periodSeconds": 1, "failureThreshold": 30},
        }],
        "containers": [{
            "name": "runtime", "image": "newrelic/synthetics-node-api-runtime:latest",
            "env": [
                {"name": "JOB_API_URL", "value": "http://127.0.0.1:3128"},
                {"name": "HTTP_PROXY", "value": "http://127.0.0.1:3128"},
                {"name": "HTTPS_PROXY", "value": "http://127.0.0.1:3128"},
            ],
        }],
    })
}

async fn setup_job(raw: &Raw, name: &str, payload: Value) {
    let job =
        json!({"id": name, "runtime_type": "node-api-runtime", "timeout_secs": 60, "attempt": 1, "payload": payload});
    let r = raw
        .post(
            &format!("/api/v1/namespaces/{NS}/secrets"),
            &json!({"metadata": {"name": format!("{name}-job")},
        "stringData": {"job.json": job.to_string(), "token": format!("token-{name}")}}),
        )
        .await;
    assert_eq!(r.code, 201, "{}", r.text);
}

async fn cluster() -> (Emulator, Kubelet, Raw, Arc<Mutex<Vec<(String, Value, String)>>>) {
    let emu = emulator().await;
    let kubelet = Kubelet::start(&emu, KubeletOptions::default());
    let raw = Raw::new(&emu);
    let (jm, got) = fake_job_manager().await;
    let r = raw
        .post(
            &format!("/api/v1/namespaces/{NS}/services"),
            &json!({"metadata": {"name": "job-manager"},
        "spec": {"ports": [{"name": "http", "port": 8080}]}}),
        )
        .await;
    assert_eq!(r.code, 201, "{}", r.text);
    kubelet.set_external_endpoints(NS, "job-manager", vec![jm]);
    raw.post(
        &format!("/api/v1/namespaces/{NS}/secrets"),
        &json!({"metadata": {"name": "internal-key"}, "stringData": {"internalApiKey": KEY}}),
    )
    .await;
    (emu, kubelet, raw, got)
}

#[tokio::test]
async fn a_job_runs_sidecar_then_runtime_and_its_result_reaches_the_job_manager() {
    let (emu, _kubelet, raw, got) = cluster().await;
    setup_job(&raw, "job-1", json!({"action": "sleep", "secs": 0})).await;
    let job = json!({"apiVersion": "batch/v1", "kind": "Job", "metadata": {"name": "job-1"},
        "spec": {"backoffLimit": 0, "ttlSecondsAfterFinished": 600, "template": {"spec": runtime_pod_spec("job-1-job")}}});
    let r = raw.post(&format!("/apis/batch/v1/namespaces/{NS}/jobs"), &job).await;
    assert_eq!(r.code, 201, "{}", r.text);
    let done = wait_for(&emu, "the Job to complete", 60, || {
        let j = emu.object("batch/v1", "Job", NS, "job-1")?;
        j["status"]["conditions"].as_array()?.iter().any(|c| c["type"] == "Complete").then_some(j)
    })
    .await;
    assert_eq!(done["status"]["succeeded"], 1);
    let results = got.lock().unwrap().clone();
    assert_eq!(results.len(), 1, "{results:?}");
    assert_eq!(results[0].0, "/internal/v1/jobs/job-1/result");
    assert_eq!(results[0].2, KEY, "the sidecar added the internal key");
    let pods = emu.objects("v1", "Pod", NS);
    assert_eq!(pods.len(), 1);
    let pod = &pods[0];
    assert_eq!(pod["status"]["phase"], "Succeeded");
    assert_eq!(pod["metadata"]["labels"]["job-name"], "job-1");
    assert_eq!(pod["metadata"]["ownerReferences"][0]["kind"], "Job");
    assert_eq!(pod["status"]["containerStatuses"][0]["state"]["terminated"]["exitCode"], 0);
    // The native sidecar was stopped after the runtime finished.
    assert!(pod["status"]["initContainerStatuses"][0]["state"]["terminated"].is_object(), "{}", pod["status"]);
}

#[tokio::test]
async fn pods_that_cannot_start_show_the_kubelets_reasons() {
    let (emu, _kubelet, raw, _got) = cluster().await;
    let pod =
        |name: &str, spec: Value| json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name}, "spec": spec});
    // Unknown image.
    let r = raw
        .post(
            &format!("/api/v1/namespaces/{NS}/pods"),
            &pod("img", json!({"restartPolicy": "Never", "containers": [{"name": "c", "image": "nginx:1.27"}]})),
        )
        .await;
    assert_eq!(r.code, 201);
    // Missing Secret for an env var.
    let env = json!([{"name": "X", "valueFrom": {"secretKeyRef": {"name": "absent", "key": "k"}}}]);
    raw.post(
        &format!("/api/v1/namespaces/{NS}/pods"),
        &pod(
            "cfg",
            json!({"restartPolicy": "Never", "containers": [{"name": "c", "image": "test-runtime", "env": env}]}),
        ),
    )
    .await;
    // No node matches.
    raw.post(&format!("/api/v1/namespaces/{NS}/pods"), &pod("sched", json!({"restartPolicy": "Never", "nodeSelector": {"gpu": "h100"}, "containers": [{"name": "c", "image": "test-runtime"}]}))).await;
    let waiting = |name: &str| {
        let p = emu.object("v1", "Pod", NS, name)?;
        p["status"]["containerStatuses"][0]["state"]["waiting"]["reason"].as_str().map(str::to_string)
    };
    let r = wait_for(&emu, "ErrImagePull", 20, || waiting("img").filter(|r| r.contains("ImagePull"))).await;
    assert!(r == "ErrImagePull" || r == "ImagePullBackOff");
    assert_eq!(
        wait_for(&emu, "CreateContainerConfigError", 20, || waiting("cfg")
            .filter(|r| r == "CreateContainerConfigError"))
        .await,
        "CreateContainerConfigError"
    );
    let cond = wait_for(&emu, "Unschedulable", 20, || {
        let p = emu.object("v1", "Pod", NS, "sched")?;
        p["status"]["conditions"]
            .as_array()?
            .iter()
            .find(|c| c["type"] == "PodScheduled" && c["reason"] == "Unschedulable")
            .cloned()
    })
    .await;
    assert_eq!(cond["status"], "False");
    for name in ["img", "cfg", "sched"] {
        assert_eq!(emu.object("v1", "Pod", NS, name).unwrap()["status"]["phase"], "Pending");
    }
}

#[tokio::test]
async fn oom_kills_deadlines_and_ttl() {
    let (emu, _kubelet, raw, _got) = cluster().await;
    // OOMKilled, simulated by annotation.
    setup_job(&raw, "oom", json!({"action": "sleep", "secs": 30})).await;
    let mut spec = runtime_pod_spec("oom-job");
    spec["containers"][0]["name"] = json!("runtime");
    let job = json!({"apiVersion": "batch/v1", "kind": "Job", "metadata": {"name": "oom"},
        "spec": {"backoffLimit": 0, "template": {"metadata": {"annotations": {"emulator.kube/oom-kill": "runtime"}}, "spec": spec}}});
    assert_eq!(raw.post(&format!("/apis/batch/v1/namespaces/{NS}/jobs"), &job).await.code, 201);
    let failed = wait_for(&emu, "the OOM-killed Job to fail", 60, || {
        let j = emu.object("batch/v1", "Job", NS, "oom")?;
        j["status"]["conditions"].as_array()?.iter().find(|c| c["type"] == "Failed").cloned()
    })
    .await;
    assert_eq!(failed["reason"], "BackoffLimitExceeded");
    let pod = emu.objects("v1", "Pod", NS).into_iter().find(|p| p["metadata"]["labels"]["job-name"] == "oom").unwrap();
    assert_eq!(pod["status"]["containerStatuses"][0]["state"]["terminated"]["reason"], "OOMKilled");
    assert_eq!(pod["status"]["containerStatuses"][0]["state"]["terminated"]["exitCode"], 137);

    // activeDeadlineSeconds: DeadlineExceeded and the running pod is deleted.
    setup_job(&raw, "slow", json!({"action": "sleep", "secs": 60})).await;
    let job = json!({"apiVersion": "batch/v1", "kind": "Job", "metadata": {"name": "slow"},
        "spec": {"backoffLimit": 0, "activeDeadlineSeconds": 2, "ttlSecondsAfterFinished": 1, "template": {"spec": runtime_pod_spec("slow-job")}}});
    assert_eq!(raw.post(&format!("/apis/batch/v1/namespaces/{NS}/jobs"), &job).await.code, 201);
    let failed = wait_for(&emu, "DeadlineExceeded", 30, || {
        let j = emu.object("batch/v1", "Job", NS, "slow")?;
        j["status"]["conditions"].as_array()?.iter().find(|c| c["type"] == "Failed").cloned()
    })
    .await;
    assert_eq!(failed["reason"], "DeadlineExceeded");
    // ttlSecondsAfterFinished deletes the Job, and background propagation its pods.
    wait_for(&emu, "TTL deletion", 30, || {
        let gone = emu.object("batch/v1", "Job", NS, "slow").is_none();
        let pods_gone = !emu.objects("v1", "Pod", NS).iter().any(|p| p["metadata"]["labels"]["job-name"] == "slow");
        (gone && pods_gone).then_some(())
    })
    .await;
}

#[tokio::test]
async fn a_pod_quota_refuses_pods_and_the_job_controller_says_so() {
    let (emu, _kubelet, raw, _got) = cluster().await;
    let quota = json!({"metadata": {"name": "team-quota"}, "spec": {"hard": {"pods": "1"}}});
    assert_eq!(raw.post(&format!("/api/v1/namespaces/{NS}/resourcequotas"), &quota).await.code, 201);
    // A pod that keeps running (the persistent runtime serves until stopped), so it counts
    // against the quota until it is deleted.
    let pod = |name: &str| {
        json!({"metadata": {"name": name}, "spec": {"restartPolicy": "Never", "containers": [{"name": "c", "image": "test-runtime",
        "args": ["--serve", "127.0.0.1:0"], "env": [{"name": "JOB_API_URL", "value": "http://127.0.0.1:9"}]}]}})
    };
    assert_eq!(raw.post(&format!("/api/v1/namespaces/{NS}/pods"), &pod("first")).await.code, 201);
    // The second pod is over the quota: 403 with the API server's wording.
    let r = raw.post(&format!("/api/v1/namespaces/{NS}/pods"), &pod("second")).await;
    assert_eq!(r.code, 403, "{}", r.text);
    let status: Value = serde_json::from_str(&r.text).unwrap();
    assert_eq!(status["reason"], "Forbidden");
    assert_eq!(
        status["message"],
        r#"pods "second" is forbidden: exceeded quota: team-quota, requested: pods=1, used: pods=1, limited: pods=1"#
    );
    assert!(emu.object("v1", "Pod", NS, "second").is_none());

    // A Job's pod refused the same way: no pod, and a FailedCreate warning on the Job.
    let job = json!({"apiVersion": "batch/v1", "kind": "Job", "metadata": {"name": "over"},
        "spec": {"backoffLimit": 0, "template": {"spec": runtime_pod_spec("over-job")}}});
    assert_eq!(raw.post(&format!("/apis/batch/v1/namespaces/{NS}/jobs"), &job).await.code, 201);
    let event = wait_for(&emu, "the FailedCreate event", 20, || {
        emu.objects("v1", "Event", NS).into_iter().find(|e| e["involvedObject"]["name"] == "over")
    })
    .await;
    assert_eq!(event["reason"], "FailedCreate");
    assert_eq!(event["type"], "Warning");
    assert_eq!(event["involvedObject"]["kind"], "Job");
    let message = event["message"].as_str().unwrap();
    assert!(message.starts_with(r#"Error creating: pods "over-"#), "{message}");
    assert!(
        message.ends_with("is forbidden: exceeded quota: team-quota, requested: pods=1, used: pods=1, limited: pods=1"),
        "{message}"
    );
    assert!(!emu.objects("v1", "Pod", NS).iter().any(|p| p["metadata"]["labels"]["job-name"] == "over"));
    // A refused pod is not counted as active (the job manager reads "no pod" from this).
    let status = &emu.object("batch/v1", "Job", NS, "over").unwrap()["status"];
    assert!(status.get("active").is_none(), "{status}");
    // The field selector a client uses to find it.
    let r = raw
        .get(&format!(
            "/api/v1/namespaces/{NS}/events?fieldSelector=involvedObject.kind%3DJob,involvedObject.name%3Dover,reason%3DFailedCreate"
        ))
        .await;
    let list: Value = serde_json::from_str(&r.text).unwrap();
    assert_eq!(list["items"].as_array().map(Vec::len), Some(1), "{}", r.text);

    // Finished pods do not count: once the first pod is gone, the Job gets its pod.
    let r = raw.delete(&format!("/api/v1/namespaces/{NS}/pods/first"), Some(&json!({"gracePeriodSeconds": 0}))).await;
    assert!(r.code == 200 || r.code == 202, "{}", r.text);
    wait_for(&emu, "the Job's pod once the quota has room", 20, || {
        emu.objects("v1", "Pod", NS).into_iter().find(|p| p["metadata"]["labels"]["job-name"] == "over")
    })
    .await;
}

#[tokio::test]
async fn deployments_serve_through_their_service() {
    let (emu, kubelet, raw, _got) = cluster().await;
    let labels = json!({"app": "persistent"});
    let dep = json!({"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "rt"},
        "spec": {"replicas": 2, "selector": {"matchLabels": labels}, "template": {"metadata": {"labels": labels},
            "spec": {"containers": [{"name": "runtime", "image": "test-runtime:1", "args": ["--serve", "0.0.0.0:8081"],
                "ports": [{"name": "http", "containerPort": 8081}],
                "env": [{"name": "JOB_API_URL", "value": "http://127.0.0.1:3128"}],
                "readinessProbe": {"tcpSocket": {"port": "http"}}}]}}}});
    let r = raw.post(&format!("/apis/apps/v1/namespaces/{NS}/deployments"), &dep).await;
    assert_eq!(r.code, 201, "{}", r.text);
    raw.post(
        &format!("/api/v1/namespaces/{NS}/services"),
        &json!({"metadata": {"name": "rt"},
        "spec": {"selector": labels, "ports": [{"name": "http", "port": 80, "targetPort": "http"}]}}),
    )
    .await;
    let d = wait_for(&emu, "2 ready replicas", 30, || {
        let d = emu.object("apps/v1", "Deployment", NS, "rt")?;
        (d["status"]["readyReplicas"] == 2).then_some(d)
    })
    .await;
    assert_eq!(d["status"]["conditions"][0]["type"], "Available");
    // The Service forwards to a ready pod: the persistent runtime answers its dispatch path.
    let addr = kubelet.service_addr(NS, "rt", 80).expect("service forwarder");
    let client =
        hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new()).build_http::<Full<Bytes>>();
    let req = http::Request::get(format!("http://{addr}/healthz")).body(Full::new(Bytes::new())).unwrap();
    let resp = client.request(req).await.expect("reached a pod through the Service");
    assert!(resp.status().as_u16() < 500, "{}", resp.status());
    // Scaling down deletes a pod gracefully; the kubelet stops it and removes it.
    raw.patch(
        &format!("/apis/apps/v1/namespaces/{NS}/deployments/rt"),
        "application/merge-patch+json",
        &json!({"spec": {"replicas": 1}}),
    )
    .await;
    wait_for(&emu, "one pod left", 30, || (emu.objects("v1", "Pod", NS).len() == 1).then_some(())).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_concurrent_jobs_complete_and_are_cleaned_up() {
    let n: usize = std::env::var("KUBELET_JOBS").ok().and_then(|v| v.parse().ok()).unwrap_or(20);
    let (emu, _kubelet, raw, got) = cluster().await;
    let started = std::time::Instant::now();
    for i in 0..n {
        let name = format!("many-{i}");
        setup_job(&raw, &name, json!({"action": "sleep", "secs": 0})).await;
        let job = json!({"apiVersion": "batch/v1", "kind": "Job", "metadata": {"name": name},
            "spec": {"backoffLimit": 0, "ttlSecondsAfterFinished": 1, "template": {"spec": runtime_pod_spec(&format!("{name}-job"))}}});
        assert_eq!(raw.post(&format!("/apis/batch/v1/namespaces/{NS}/jobs"), &job).await.code, 201);
    }
    let report = || {
        let mut phases = std::collections::BTreeMap::<String, usize>::new();
        for p in emu.objects("v1", "Pod", NS) {
            let init = p["status"]["initContainerStatuses"][0]["state"].to_string();
            let main = p["status"]["containerStatuses"][0]["state"]
                .as_object()
                .map(|o| o.keys().cloned().collect::<Vec<_>>().join(","))
                .unwrap_or_default();
            *phases.entry(format!("{}/{init}/{main}", p["status"]["phase"].as_str().unwrap_or("?"))).or_default() += 1;
        }
        format!("results {} pods {phases:?}", got.lock().unwrap().len())
    };
    let deadline = std::time::Instant::now() + Duration::from_secs(120);
    while got.lock().unwrap().len() < n {
        assert!(std::time::Instant::now() < deadline, "not every result delivered: {}", report());
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let delivered = started.elapsed();
    // TTL removes the Jobs; garbage collection their pods (Secrets here are not owned).
    wait_for(&emu, "Jobs and pods cleaned up", 60, || {
        (emu.objects("batch/v1", "Job", NS).is_empty() && emu.objects("v1", "Pod", NS).is_empty()).then_some(())
    })
    .await;
    let mut ids: Vec<String> = got.lock().unwrap().iter().map(|r| r.0.clone()).collect();
    ids.sort();
    ids.dedup();
    assert_eq!(ids.len(), n, "one result per job");
    println!("kubelet: {n} jobs delivered in {delivered:?}");
}
