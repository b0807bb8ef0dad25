//! The `test-runtime` binary against an in-test fake sidecar: the local API (`/v1/job`,
//! `/v1/result`) plus a forward proxy that answers absolute-form requests itself and
//! refuses what a policy would (403 with a reason), so every payload action is checked
//! end to end without the real sidecar.
#![allow(clippy::unwrap_used)] // in a test, an unwrap is an assertion
use bytes::Bytes;
use common::runtime_api::{RuntimeJob, RuntimeOutcome, RuntimeResult};
use http::{Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;
use serde_json::{json, Value};
use std::net::SocketAddr;
use std::process::ExitStatus;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::io::AsyncBufReadExt;
use tokio::net::TcpListener;
use tokio::process::Command;
use tokio::sync::Notify;

const RUNTIME: &str = env!("CARGO_BIN_EXE_test-runtime");
const ORIGIN_BODY: &str = "hello from origin";

#[derive(Default)]
struct SidecarState {
    job: Option<RuntimeJob>,
    /// (path, result) for every result posted.
    results: Vec<(String, RuntimeResult)>,
    /// Request targets seen, as sent (absolute form when proxied).
    targets: Vec<String>,
    /// Answer this many result posts with 503 + `Retry-After: 1` first (a full disk).
    unavailable: usize,
    /// Result posts answered 503.
    refused: usize,
}

#[derive(Clone)]
struct FakeSidecar {
    addr: SocketAddr,
    state: Arc<Mutex<SidecarState>>,
    result_posted: Arc<Notify>,
}

impl FakeSidecar {
    async fn start(job: Option<RuntimeJob>) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let sidecar = FakeSidecar {
            addr: listener.local_addr().unwrap(),
            state: Arc::new(Mutex::new(SidecarState { job, ..Default::default() })),
            result_posted: Arc::new(Notify::new()),
        };
        let s = sidecar.clone();
        tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    return;
                };
                let s = s.clone();
                tokio::spawn(async move {
                    let svc = hyper::service::service_fn(move |req| {
                        let s = s.clone();
                        async move { Ok::<_, std::convert::Infallible>(s.answer(req).await) }
                    });
                    let _ =
                        hyper::server::conn::http1::Builder::new().serve_connection(TokioIo::new(stream), svc).await;
                });
            }
        });
        sidecar
    }

    fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    async fn answer(&self, req: Request<hyper::body::Incoming>) -> Response<Full<Bytes>> {
        let target = req.uri().to_string();
        self.state.lock().unwrap().targets.push(format!("{} {target}", req.method()));
        let reply = |status: StatusCode, headers: &[(&str, &str)], body: String| {
            let mut b = Response::builder().status(status);
            for (k, v) in headers {
                b = b.header(*k, *v);
            }
            b.body(Full::new(Bytes::from(body))).unwrap()
        };
        if req.method() == Method::CONNECT {
            return reply(
                StatusCode::FORBIDDEN,
                &[("x-sidecar-error", "private_range")],
                json!({"error": "private_range", "message": format!("{target} is in a denied private range")})
                    .to_string(),
            );
        }
        let host = req.uri().host().map(str::to_string);
        let path = req.uri().path().to_string();
        match (req.method().clone(), host.as_deref(), path.as_str()) {
            // Proxied (absolute form) requests: the fake plays the egress policy + origin.
            (_, Some("169.254.169.254"), _) => reply(
                StatusCode::FORBIDDEN,
                &[("x-sidecar-error", "metadata")],
                json!({"error": "metadata", "message": "169.254.169.254 is a cloud metadata address"}).to_string(),
            ),
            (Method::GET, Some(_), "/hello") | (Method::GET, None, "/hello") => {
                reply(StatusCode::OK, &[], ORIGIN_BODY.to_string())
            }
            (Method::GET, None, "/v1/job") => match self.state.lock().unwrap().job.clone() {
                Some(job) => reply(StatusCode::OK, &[], serde_json::to_string(&job).unwrap()),
                None => reply(StatusCode::NOT_FOUND, &[], "{}".into()),
            },
            (Method::POST, None, p) if p == "/v1/result" || (p.starts_with("/v1/jobs/") && p.ends_with("/result")) => {
                {
                    let mut st = self.state.lock().unwrap();
                    if st.unavailable > 0 {
                        st.unavailable -= 1;
                        st.refused += 1;
                        return reply(
                            StatusCode::SERVICE_UNAVAILABLE,
                            &[("retry-after", "1"), ("x-sidecar-error", "unavailable")],
                            json!({"error": "unavailable", "message": "cannot store the result: No space left on device"})
                                .to_string(),
                        );
                    }
                }
                let body = req.into_body().collect().await.unwrap().to_bytes();
                match serde_json::from_slice::<RuntimeResult>(&body) {
                    Ok(result) => {
                        self.state.lock().unwrap().results.push((p.to_string(), result));
                        self.result_posted.notify_waiters();
                        reply(StatusCode::NO_CONTENT, &[], String::new())
                    }
                    Err(e) => reply(StatusCode::UNPROCESSABLE_ENTITY, &[], e.to_string()),
                }
            }
            _ => reply(StatusCode::NOT_FOUND, &[], "not here".into()),
        }
    }

    fn results(&self) -> Vec<(String, RuntimeResult)> {
        self.state.lock().unwrap().results.clone()
    }

    fn targets(&self) -> Vec<String> {
        self.state.lock().unwrap().targets.clone()
    }

    async fn wait_for_results(&self, n: usize) -> Vec<(String, RuntimeResult)> {
        let waited = tokio::time::timeout(Duration::from_secs(20), async {
            loop {
                let notified = self.result_posted.notified();
                tokio::pin!(notified);
                notified.as_mut().enable();
                if self.results().len() >= n {
                    return;
                }
                notified.await;
            }
        })
        .await;
        assert!(waited.is_ok(), "no {n} results within 20 s: {:?}", self.results());
        self.results()
    }
}

fn job(payload: Value) -> RuntimeJob {
    serde_json::from_value(
        json!({"id": "job-1", "runtime_type": "rt", "timeout_secs": 10, "attempt": 1, "payload": payload}),
    )
    .unwrap()
}

fn runtime_command(sidecar: &FakeSidecar, no_proxy: &str) -> Command {
    let mut cmd = Command::new(RUNTIME);
    for v in ["HTTP_PROXY", "HTTPS_PROXY", "NO_PROXY", "http_proxy", "https_proxy", "no_proxy"] {
        cmd.env_remove(v);
    }
    cmd.env("JOB_API_URL", sidecar.url())
        .env("HTTP_PROXY", sidecar.url())
        .env("HTTPS_PROXY", sidecar.url())
        .env("NO_PROXY", no_proxy)
        .kill_on_drop(true);
    cmd
}

/// Run the runtime once for `payload`; return its exit status and what it posted.
async fn run(payload: Value) -> (ExitStatus, Vec<(String, RuntimeResult)>, FakeSidecar) {
    let sidecar = FakeSidecar::start(Some(job(payload))).await;
    let status = tokio::time::timeout(Duration::from_secs(30), runtime_command(&sidecar, "").status())
        .await
        .expect("test-runtime finished")
        .unwrap();
    let results = sidecar.results();
    (status, results, sidecar)
}

fn only_result(results: &[(String, RuntimeResult)]) -> &RuntimeResult {
    assert_eq!(results.len(), 1, "exactly one result: {results:?}");
    assert_eq!(results[0].0, "/v1/result");
    &results[0].1
}

#[tokio::test]
async fn fetch_through_the_proxy_succeeds_with_status_and_digest() {
    let (status, results, sidecar) =
        run(json!({"action": "fetch", "url": "http://origin.invalid:8080/hello", "expectStatus": 200})).await;
    assert!(status.success(), "{status}");
    let r = only_result(&results);
    assert_eq!(r.outcome, RuntimeOutcome::Succeeded, "{r:?}");
    assert_eq!(r.output["status"], 200);
    assert_eq!(r.output["head"], ORIGIN_BODY);
    assert_eq!(r.output["bytes"], ORIGIN_BODY.len());
    assert_eq!(r.output["sha256"], sha256_hex(ORIGIN_BODY));
    assert!(r.duration_ms.is_some());
    // The unresolvable host proves the request went to the proxy, in absolute form.
    assert!(sidecar.targets().contains(&"GET http://origin.invalid:8080/hello".to_string()), "{:?}", sidecar.targets());
}

fn sha256_hex(s: &str) -> String {
    use sha2::Digest;
    sha2::Sha256::digest(s.as_bytes()).iter().map(|b| format!("{b:02x}")).collect()
}

#[tokio::test]
async fn refused_fetch_reports_the_sidecar_reason() {
    let (status, results, _) = run(json!({"action": "fetch", "url": "http://169.254.169.254/latest/meta-data"})).await;
    assert!(status.success());
    let r = only_result(&results);
    assert_eq!(r.outcome, RuntimeOutcome::Failed);
    assert_eq!(r.message, "expected status 200, got 403: metadata: 169.254.169.254 is a cloud metadata address");
    assert_eq!(r.output["proxy_error"], "metadata");

    let (_, results, sidecar) = run(json!({"action": "fetch", "url": "https://10.1.2.3/"})).await;
    let r = only_result(&results);
    assert_eq!(r.outcome, RuntimeOutcome::Failed);
    assert!(r.message.contains("proxy refused CONNECT 10.1.2.3:443 with 403"), "{}", r.message);
    assert!(r.message.contains("10.1.2.3:443 is in a denied private range"), "{}", r.message);
    assert!(sidecar.targets().contains(&"CONNECT 10.1.2.3:443".to_string()), "{:?}", sidecar.targets());
}

#[tokio::test]
async fn unexpected_status_fails_and_no_proxy_goes_direct() {
    let sidecar = FakeSidecar::start(None).await;
    let url = format!("{}/missing", sidecar.url());
    sidecar.state.lock().unwrap().job = Some(job(json!({"action": "fetch", "url": url, "expectStatus": 200})));
    let status = runtime_command(&sidecar, "localhost,127.0.0.1").status().await.unwrap();
    assert!(status.success());
    let results = sidecar.results();
    let r = only_result(&results);
    assert_eq!(r.outcome, RuntimeOutcome::Failed);
    assert_eq!(r.message, "expected status 200, got 404: not here");
    assert!(
        sidecar.targets().contains(&"GET /missing".to_string()),
        "origin form, not proxied: {:?}",
        sidecar.targets()
    );
}

#[tokio::test]
async fn fail_sleep_and_steps() {
    let (status, results, _) = run(json!({"action": "fail", "message": "assertion failed: title"})).await;
    assert!(status.success());
    let r = only_result(&results);
    assert_eq!((r.outcome, r.message.as_str()), (RuntimeOutcome::Failed, "assertion failed: title"));

    let (status, results, _) = run(json!({"action": "sleep", "secs": 0.2})).await;
    assert!(status.success());
    let r = only_result(&results);
    assert_eq!(r.outcome, RuntimeOutcome::Succeeded);
    assert!(r.duration_ms.unwrap() >= 200, "{r:?}");

    let (_, results, _) = run(json!({"action": "steps", "steps": [
        {"action": "sleep", "secs": 0},
        {"action": "fail", "message": "second step broke"},
        {"action": "exit", "code": 9}
    ]}))
    .await;
    let r = only_result(&results);
    assert_eq!((r.outcome, r.message.as_str()), (RuntimeOutcome::Failed, "step 2: second step broke"));
    assert_eq!(r.output.as_array().map(Vec::len), Some(2), "the third step never ran");

    let (_, results, _) = run(json!({"action": "dance"})).await;
    assert_eq!(only_result(&results).message, "unknown action \"dance\"");
}

#[tokio::test]
async fn env_reports_a_variable_of_the_runtimes_environment_or_null() {
    let (status, results, sidecar) = run(json!({"action": "env", "name": "JOB_API_URL"})).await;
    assert!(status.success());
    let r = only_result(&results);
    assert_eq!(r.outcome, RuntimeOutcome::Succeeded);
    assert_eq!(r.output, json!({"JOB_API_URL": sidecar.url()}));
    let (_, results, _) = run(json!({"action": "env", "name": "NOT_SET_IN_THIS_TEST_RUNTIME"})).await;
    assert_eq!(only_result(&results).output, json!({"NOT_SET_IN_THIS_TEST_RUNTIME": null}));
    let (_, results, _) = run(json!({"action": "env"})).await;
    let r = only_result(&results);
    assert_eq!((r.outcome, r.message.as_str()), (RuntimeOutcome::Failed, "env: payload has no \"name\""));
}

#[tokio::test]
async fn a_503_from_the_sidecar_is_retried_after_retry_after_until_the_deadline() {
    // Three refusals (~3 s with Retry-After: 1) fit in the job's 10 s: the result lands.
    let sidecar = FakeSidecar::start(Some(job(json!({"action": "sleep", "secs": 0})))).await;
    sidecar.state.lock().unwrap().unavailable = 3;
    let started = std::time::Instant::now();
    let status = runtime_command(&sidecar, "").status().await.unwrap();
    assert!(status.success(), "{status:?}");
    assert_eq!(sidecar.state.lock().unwrap().refused, 3);
    assert_eq!(only_result(&sidecar.results()).outcome, RuntimeOutcome::Succeeded);
    assert!(started.elapsed() >= Duration::from_secs(3), "Retry-After honoured: {:?}", started.elapsed());
    // A sidecar that never recovers: the runtime gives up at its deadline (2 s), exit 4.
    let mut short = job(json!({"action": "sleep", "secs": 0}));
    short.timeout_secs = 2;
    let sidecar = FakeSidecar::start(Some(short)).await;
    sidecar.state.lock().unwrap().unavailable = usize::MAX;
    let status = tokio::time::timeout(Duration::from_secs(20), runtime_command(&sidecar, "").status())
        .await
        .expect("gives up by its deadline")
        .unwrap();
    assert_eq!(status.code(), Some(4));
    assert!(sidecar.results().is_empty());
}

#[tokio::test]
async fn exit_and_crash_post_nothing() {
    let (status, results, _) = run(json!({"action": "exit", "code": 7})).await;
    assert_eq!(status.code(), Some(7));
    assert!(results.is_empty(), "{results:?}");

    let (status, results, _) = run(json!({"action": "crash"})).await;
    assert!(!status.success() && status.code().is_none(), "killed by a signal: {status}");
    assert!(results.is_empty());
}

#[tokio::test]
async fn without_job_api_url_it_exits_with_a_clear_error() {
    let out = Command::new(RUNTIME).env_remove("JOB_API_URL").output().await.unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("JOB_API_URL is not set"));
}

#[tokio::test]
async fn persistent_mode_accepts_jobs_and_answers_429_when_busy() {
    let sidecar = FakeSidecar::start(None).await;
    let mut child = runtime_command(&sidecar, "")
        .args(["--serve", "127.0.0.1:0", "--max-concurrent", "1"])
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // Readiness: the first stderr line names the bound address.
    let mut lines = tokio::io::BufReader::new(child.stderr.take().unwrap()).lines();
    let first = tokio::time::timeout(Duration::from_secs(10), lines.next_line()).await.unwrap().unwrap().unwrap();
    let addr: SocketAddr = first
        .strip_prefix("test-runtime: serving on ")
        .and_then(|r| r.split_whitespace().next())
        .unwrap_or_else(|| panic!("unexpected first line {first:?}"))
        .parse()
        .unwrap();
    tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });

    let post = |id: &str, payload: Value| {
        let body =
            json!({"id": id, "runtime_type": "rt", "timeout_secs": 10, "attempt": 1, "payload": payload}).to_string();
        async move {
            let stream = tokio::net::TcpStream::connect(addr).await.unwrap();
            let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await.unwrap();
            tokio::spawn(conn);
            let req = Request::post("/v1/jobs").header("host", "runtime").body(Full::new(Bytes::from(body))).unwrap();
            sender.send_request(req).await.unwrap().status()
        }
    };
    assert_eq!(post("p-1", json!({"action": "sleep", "secs": 0.5})).await, StatusCode::ACCEPTED);
    assert_eq!(post("p-2", json!({"action": "sleep", "secs": 0})).await, StatusCode::TOO_MANY_REQUESTS);
    let results = sidecar.wait_for_results(1).await;
    assert_eq!(results[0].0, "/v1/jobs/p-1/result");
    assert_eq!(results[0].1.outcome, RuntimeOutcome::Succeeded);
    // The slot is free again once the result is posted.
    let accepted = async {
        loop {
            match post("p-3", json!({"action": "fail", "message": "nope"})).await {
                StatusCode::ACCEPTED => return,
                StatusCode::TOO_MANY_REQUESTS => tokio::time::sleep(Duration::from_millis(10)).await,
                other => panic!("unexpected {other}"),
            }
        }
    };
    tokio::time::timeout(Duration::from_secs(10), accepted).await.expect("slot freed");
    let results = sidecar.wait_for_results(2).await;
    assert_eq!(results[1].0, "/v1/jobs/p-3/result");
    assert_eq!((results[1].1.outcome, results[1].1.message.as_str()), (RuntimeOutcome::Failed, "nope"));
    child.kill().await.unwrap();
}
