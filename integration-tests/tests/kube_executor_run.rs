//! Two job-manager replicas wired with the Kubernetes executor (`App::start` with `KubeBackend`)
//! against one broker and the emulated cluster: a polled job becomes a JobRecord and a
//! Job, the job fetched and a sidecar's result posted to the *other* replica (with the
//! token read from the sidecar container's env, as the sidecar gets it) reaches the
//! broker once, and delivery removes the job's objects. No kubelet here: the
//! process-level end-to-end suite covers pods.
#![allow(clippy::unwrap_used)] // in a test, an unwrap is an assertion
mod kube_executor_support;

use bytes::Bytes;
use common::{JobId, JobResult, Outcome};
use http_body_util::{BodyExt, Full};
use job_manager::app::{App, AppSettings, Handle as KubeJobManager};
use job_manager::backend::kubernetes::backend::KubeBackend;
use job_manager::backend::kubernetes::labels;
use job_manager::broker::embedded::{EmbeddedBroker, EmbeddedOptions};
use job_manager::config::model::ExecutorKind;
use kube_executor_support::{config, eventually, job, Cluster};
use std::sync::Arc;
use std::time::Duration;

async fn replica(cluster: &Cluster, broker: &Arc<EmbeddedBroker>) -> KubeJobManager {
    replica_with(cluster, broker, config()).await
}

async fn replica_with(
    cluster: &Cluster,
    broker: &Arc<EmbeddedBroker>,
    mut c: job_manager::config::Config,
) -> KubeJobManager {
    c.executor = ExecutorKind::Kubernetes;
    c.location_key = "location-key".into();
    c.poll.interval_ms = 50;
    let validated = job_manager::config::validate(c).expect("valid config");
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let backend = KubeBackend::connect(&validated, Some(cluster.client().await)).await.expect("replica connects");
    App::start(AppSettings::from(&validated), broker.clone(), backend, listener).await.expect("replica starts")
}

async fn post_result(addr: std::net::SocketAddr, key: &str, token: &str, result: &JobResult) -> u16 {
    let client = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new()).build_http();
    let req = http::Request::post(format!("http://{addr}{}", common::runtime_api::result_api_path(&result.job_id)))
        .header("content-type", "application/json")
        .header(common::headers::INTERNAL_API_KEY, key)
        .header(common::headers::JOB_TOKEN, token)
        .body(Full::new(Bytes::from(serde_json::to_vec(result).unwrap())))
        .unwrap();
    let resp = client.request(req).await.expect("result API answers");
    let status = resp.status().as_u16();
    let _ = resp.into_body().collect().await;
    status
}

/// `GET /internal/v1/jobs/{id}` as the sidecar calls it: (status, body).
async fn get_job(addr: std::net::SocketAddr, key: &str, token: &str, id: &JobId) -> (u16, Bytes) {
    let client = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new()).build_http();
    let req = http::Request::get(format!("http://{addr}{}", common::runtime_api::job_api_path(id)))
        .header(common::headers::INTERNAL_API_KEY, key)
        .header(common::headers::JOB_TOKEN, token)
        .body(Full::new(Bytes::new()))
        .unwrap();
    let resp = client.request(req).await.expect("job API answers");
    let status = resp.status().as_u16();
    (status, resp.into_body().collect().await.unwrap().to_bytes())
}

#[tokio::test]
async fn missing_crd_fails_at_startup_with_a_clear_error() {
    let emu = integration_tests::emulator::Emulator::start(Default::default()).await.unwrap();
    let kc = kube::config::Kubeconfig::read_from(emu.kubeconfig_path()).unwrap();
    let cfg = kube::Config::from_custom_kubeconfig(kc, &Default::default()).await.unwrap();
    let mut c = config();
    c.executor = ExecutorKind::Kubernetes;
    c.location_key = "k".into();
    let validated = job_manager::config::validate(c).unwrap();
    let err =
        KubeBackend::connect(&validated, Some(kube::Client::try_from(cfg).unwrap())).await.err().expect("refused");
    assert_eq!(err.label(), "crd_missing");
    assert!(err.to_string().contains("jobrecords.yaml"), "{err}");
}

#[tokio::test]
async fn polled_job_runs_as_objects_and_its_result_reaches_the_broker_once() {
    let cluster = Cluster::start().await;
    let broker = Arc::new(EmbeddedBroker::new(EmbeddedOptions {
        visibility_timeout: Duration::from_secs(60),
        location_key: common::secret::Secret::new("location-key".to_string()),
    }));
    let a = replica(&cluster, &broker).await;
    let id = JobId::new("run-1").unwrap();
    broker.submit(job("run-1", "node-api-runtime")).unwrap();

    let name = labels::object_name(&id);
    eventually("the job's Job exists", Duration::from_secs(10), || async {
        cluster.object("batch/v1", "Job", &name).is_some()
    })
    .await;
    let b = replica(&cluster, &broker).await;

    // What the sidecar gets: the job id and token in its container's env.
    let k8s_job = cluster.object("batch/v1", "Job", &name).unwrap();
    let sidecar = k8s_job["spec"]["template"]["spec"]["initContainers"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == "sidecar")
        .unwrap();
    let env = |n: &str| {
        sidecar["env"]
            .as_array()
            .unwrap()
            .iter()
            .find(|e| e["name"] == n)
            .map(|e| e["value"].as_str().unwrap().to_string())
    };
    let token = env("SIDECAR_JOB_TOKEN").expect("token in the sidecar's env");
    assert_eq!(env("SIDECAR_JOB_ID").as_deref(), Some("run-1"));
    // It fetches the job from either replica (B did not create it), key and token checked.
    assert_eq!(get_job(b.addr, "wrong", &token, &id).await.0, 401);
    assert_eq!(get_job(b.addr, "test-internal-key", "forged", &id).await.0, 401);
    let (status, body) = get_job(b.addr, "test-internal-key", &token, &id).await;
    assert_eq!(status, 200, "{}", String::from_utf8_lossy(&body));
    let fetched: common::Job = serde_json::from_slice(&body).unwrap();
    assert_eq!((fetched.id.clone(), fetched.runtime_type.as_str()), (id.clone(), "node-api-runtime"));
    assert_eq!(fetched.payload, job("run-1", "node-api-runtime").payload);

    let mut result = JobResult::new(id.clone(), Outcome::Succeeded, "ok");
    result.output = serde_json::json!({"checks": 3});
    // Wrong key or token: refused, nothing recorded.
    assert_eq!(post_result(b.addr, "wrong", &token, &result).await, 401);
    assert!(post_result(b.addr, "test-internal-key", "forged", &result).await >= 400);
    // The sidecar may reach either replica: B accepts A's job.
    let status = post_result(b.addr, "test-internal-key", &token, &result).await;
    assert!((200..300).contains(&status), "result API answered {status}");
    let delivered = broker.wait_for_result(&id, Duration::from_secs(10)).await.expect("result delivered to the broker");
    assert!(delivered.same_as(&result));

    // Delivered: the record (and with it the Job) is removed.
    eventually("the job's objects are gone after delivery", Duration::from_secs(15), || async {
        cluster.object("jobs.jobmanager.dev/v1", "JobRecord", &name).is_none()
            && cluster.object("batch/v1", "Job", &name).is_none()
    })
    .await;
    assert_eq!(broker.result_count(), 1);

    // The executor's metrics are on the shared /metrics registry.
    let text = a.metrics.encode();
    assert!(
        text.contains("kubernetes_api_calls_total{resource=\"jobrecords\",verb=\"create\",outcome=\"ok\"} 1"),
        "{text}"
    );

    a.stop().await.unwrap();
    b.stop().await.unwrap();
}

#[tokio::test]
async fn persistent_job_is_dispatched_through_the_ingress_and_acked() {
    let cluster = Cluster::start().await;
    let broker = Arc::new(EmbeddedBroker::new(EmbeddedOptions {
        visibility_timeout: Duration::from_secs(60),
        location_key: common::secret::Secret::new("location-key".to_string()),
    }));
    // A fake sidecar ingress that accepts every job.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let ingress = format!("http://{}", listener.local_addr().unwrap());
    let (seen_tx, mut seen_rx) = tokio::sync::mpsc::unbounded_channel::<String>();
    tokio::spawn(async move {
        loop {
            let (stream, _) = listener.accept().await.unwrap();
            let seen = seen_tx.clone();
            tokio::spawn(async move {
                let service = hyper::service::service_fn(move |req: http::Request<hyper::body::Incoming>| {
                    let seen = seen.clone();
                    async move {
                        let _ = seen.send(req.uri().path().to_string());
                        Ok::<_, std::convert::Infallible>(
                            http::Response::builder().status(202).body(Full::new(Bytes::new())).unwrap(),
                        )
                    }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(hyper_util::rt::TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    let mut c = config();
    c.kubernetes.persistent_endpoints.insert("browser".into(), ingress);
    let a = replica_with(&cluster, &broker, c).await;
    let mut persistent_job = job("per-1", "browser");
    persistent_job.workload_kind = common::WorkloadKind::Persistent;
    broker.submit(persistent_job).unwrap();
    let path = tokio::time::timeout(Duration::from_secs(10), seen_rx.recv()).await.expect("dispatched").unwrap();
    assert_eq!(path, "/v1/jobs");
    let name = labels::object_name(&JobId::new("per-1").unwrap());
    eventually("the persistent job's record exists", Duration::from_secs(10), || async {
        cluster.object("jobs.jobmanager.dev/v1", "JobRecord", &name).is_some()
    })
    .await;
    a.stop().await.unwrap();
}
