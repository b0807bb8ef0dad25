//! Shared helpers for the job manager's integration tests: binaries, configs, a
//! counting HTTP origin, a raw HTTP client, temp dirs and a fault-injecting broker wrapper.
#![allow(dead_code)]
use bytes::Bytes;
use common::broker::{AckRequest, PollRequest, QueueStats, ReleaseRequest};
use common::{JobId, JobResult};
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;
use job_manager::broker::{BrokerApi, BrokerError, SubmitOutcome};
use job_manager::config::{self, FlagOverride, Validated};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::net::TcpListener;

/// A workspace binary next to `job-manager` (`make test` builds them all first).
pub fn bin(name: &str) -> PathBuf {
    let p = Path::new(env!("CARGO_BIN_EXE_job-manager")).parent().unwrap().join(name);
    assert!(
        p.is_file(),
        "{} not found: build the workspace binaries first (`cargo build --workspace --bins`, which `make test` does)",
        p.display()
    );
    p
}

pub fn job_manager_bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_job-manager"))
}

/// A scratch dir (tempfile's), removed on drop; named `jm-it-<tag>-...` so a leftover
/// says which test made it.
pub struct TempDir(tempfile::TempDir);

impl TempDir {
    pub fn new(tag: &str) -> Self {
        let dir = tempfile::Builder::new().prefix(&format!("jm-it-{tag}-")).tempdir().unwrap();
        // Traversable (not listable): as root the local executor runs jobs under UIDs of
        // their own, which must reach the state dir below.
        std::fs::set_permissions(dir.path(), std::os::unix::fs::PermissionsExt::from_mode(0o711)).unwrap();
        Self(dir)
    }
    pub fn path(&self) -> &Path {
        self.0.path()
    }
}

pub const RUNTIME: &str = "test-rt";

/// YAML for a local-executor job manager running the real sidecar and test runtime.
pub fn local_yaml(extra: &str) -> String {
    local_yaml_running(&[bin("test-runtime").display().to_string()], extra)
}

/// The same, with `command` as the runtime type's command (a hostile or odd runtime).
pub fn local_yaml_running(command: &[String], extra: &str) -> String {
    format!(
        "executor: local\npoll: {{intervalMs: 50, batchSize: 10}}\nshutdownGraceSecs: 2\n\
         runtimes:\n  - name: {RUNTIME}\n    parallelism: 4\n    command: {command:?}\n\
         sidecar:\n  binary: {sc:?}\n  allowCidrs: [127.0.0.1/32]\n  denyPrivate: true\n  denyPublic: true\nlocal:\n  uidRange: {uids}\n{extra}",
        sc = bin("sidecar").display().to_string(),
        uids = test_uid_range(),
    )
}

/// UIDs for this test process's jobs when it runs as root: tests run in parallel, each
/// with its own job manager, and two job managers must not share UIDs (one would kill
/// what the other runs under them when its jobs end). 16 UIDs (8 jobs) per process.
pub fn test_uid_range() -> String {
    let first = 1_000_000 + (std::process::id() % 100_000) * 16;
    format!("{first}-{}", first + 15)
}

/// A validated config for in-process tests (embedded broker, loopback, own state dir).
pub fn validated(state: &Path, extra: &str) -> Validated {
    validated_from(state, &local_yaml(extra))
}

/// A validated config from `yaml` (see [`local_yaml_running`]), with the test flags.
pub fn validated_from(state: &Path, yaml: &str) -> Validated {
    let file = state.join("config.yaml");
    std::fs::write(&file, yaml).unwrap();
    let flags = [
        FlagOverride::new("listen", "127.0.0.1:0"),
        FlagOverride::new("brokerApiEndpoint", "embedded"),
        FlagOverride::new("stateDir", state.join("state").display().to_string()),
    ];
    config::validate(config::load(Some(&file), &BTreeMap::new(), &flags).unwrap()).unwrap()
}

pub fn job(id: &str, timeout_secs: u32, payload: serde_json::Value) -> common::Job {
    common::Job {
        id: JobId::new(id).unwrap(),
        runtime_type: RUNTIME.into(),
        workload_kind: Default::default(),
        timeout_secs,
        attempt: 1,
        payload,
        signature: None,
    }
}

/// A loopback origin that counts hits per path; `/slow` answers after 1 s.
#[derive(Clone, Default)]
pub struct Origin {
    pub url: String,
    hits: Arc<Mutex<BTreeMap<String, u32>>>,
    hit: Arc<tokio::sync::Notify>,
}

impl Origin {
    pub async fn start() -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let origin = Origin { url: format!("http://{}", listener.local_addr().unwrap()), ..Origin::default() };
        let o = origin.clone();
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let o = o.clone();
                tokio::spawn(async move {
                    let svc = hyper::service::service_fn(move |req: http::Request<hyper::body::Incoming>| {
                        let o = o.clone();
                        async move {
                            let path = req.uri().path().to_string();
                            *o.hits.lock().unwrap().entry(path.clone()).or_default() += 1;
                            o.hit.notify_waiters();
                            if path == "/slow" {
                                tokio::time::sleep(Duration::from_secs(1)).await;
                            }
                            Ok::<_, std::convert::Infallible>(http::Response::new(Full::new(Bytes::from_static(b"ok"))))
                        }
                    });
                    let _ =
                        hyper::server::conn::http1::Builder::new().serve_connection(TokioIo::new(stream), svc).await;
                });
            }
        });
        origin
    }

    pub fn hits(&self, path: &str) -> u32 {
        self.hits.lock().unwrap().get(path).copied().unwrap_or(0)
    }

    /// Wait until `path` was hit at least once.
    pub async fn wait_hit(&self, path: &str, timeout: Duration) {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let notified = self.hit.notified();
            if self.hits(path) > 0 {
                return;
            }
            assert!(tokio::time::timeout_at(deadline, notified).await.is_ok(), "origin path {path} never hit");
        }
    }
}

/// A raw HTTP/1.1 answer.
pub struct Answer {
    pub status: u16,
    pub body: String,
    pub allow: Option<String>,
    pub content_type: Option<String>,
}

/// One request over a fresh connection.
pub async fn request(addr: &str, method: &str, path: &str, headers: &[(&str, &str)], body: Vec<u8>) -> Answer {
    let stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await.unwrap();
    tokio::spawn(conn);
    let mut req = http::Request::builder().method(method).uri(path).header("host", addr);
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let resp = sender.send_request(req.body(Full::new(Bytes::from(body))).unwrap()).await.unwrap();
    let status = resp.status().as_u16();
    let header = |name| resp.headers().get(name).and_then(|v: &http::HeaderValue| v.to_str().ok()).map(str::to_string);
    let (allow, content_type) = (header(http::header::ALLOW), header(http::header::CONTENT_TYPE));
    let body = resp.into_body().collect().await.unwrap().to_bytes();
    Answer { status, body: String::from_utf8_lossy(&body).into_owned(), allow, content_type }
}

/// Poll `cond` until true or `timeout` (for state owned by another process).
pub async fn eventually(what: &str, timeout: Duration, mut cond: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + timeout;
    while !cond() {
        assert!(tokio::time::Instant::now() < deadline, "timed out waiting for: {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Wraps a broker: drop the first `n` acks (as if lost on the wire) and/or refuse result
/// submissions while `results_down`.
pub struct FlakyBroker<B> {
    pub inner: B,
    pub drop_acks: AtomicU32,
    pub results_down: AtomicBool,
}

impl<B> FlakyBroker<B> {
    pub fn new(inner: B) -> Self {
        Self { inner, drop_acks: AtomicU32::new(0), results_down: AtomicBool::new(false) }
    }
}

impl<B: BrokerApi> BrokerApi for FlakyBroker<B> {
    async fn poll(&self, req: &PollRequest) -> Result<job_manager::broker::PolledBatch, BrokerError> {
        self.inner.poll(req).await
    }
    async fn ack(&self, id: &JobId, req: &AckRequest) -> Result<(), BrokerError> {
        if self.drop_acks.fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1)).is_ok() {
            return Err(BrokerError::Unreachable("ack lost (test)".into()));
        }
        self.inner.ack(id, req).await
    }
    async fn release(&self, id: &JobId, req: &ReleaseRequest) -> Result<(), BrokerError> {
        self.inner.release(id, req).await
    }
    async fn submit_result(&self, result: &JobResult) -> Result<SubmitOutcome, BrokerError> {
        if self.results_down.load(Ordering::SeqCst) {
            return Err(BrokerError::Unreachable("broker down (test)".into()));
        }
        self.inner.submit_result(result).await
    }
    async fn queue_stats(&self) -> Result<QueueStats, BrokerError> {
        self.inner.queue_stats().await
    }
}
