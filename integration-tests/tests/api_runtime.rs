//! The `api-runtime` binary end to end: its `$http` goes through the **real** `sidecar`
//! (allow-list mode: only the test's origin on 127.0.0.1 is allowed, so nothing can leave
//! the machine), its job and result go through an in-test local API (so the contract's
//! retries can be provoked). Checks are scripts a user would write.
#![allow(clippy::unwrap_used)] // in a test, an unwrap is an assertion

use bytes::Bytes;
use common::runtime_api::{RuntimeJob, RuntimeOutcome, RuntimeResult};
use http::{Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;
use integration_tests::bins::bin_path;
use serde_json::{json, Value};
use std::net::SocketAddr;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::net::TcpListener;

/// Serves `handler` on 127.0.0.1:0 until the test ends.
async fn serve<F>(handler: F) -> SocketAddr
where
    F: Fn(Request<hyper::body::Incoming>) -> futures_util::future::BoxFuture<'static, Response<Full<Bytes>>>
        + Send
        + Sync
        + 'static,
{
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let handler = Arc::new(handler);
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let handler = handler.clone();
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(move |req| {
                    let f = handler(req);
                    async move { Ok::<_, std::convert::Infallible>(f.await) }
                });
                let _ = hyper::server::conn::http1::Builder::new().serve_connection(TokioIo::new(stream), svc).await;
            });
        }
    });
    addr
}

fn text(status: u16, body: impl Into<String>, headers: &[(&str, String)]) -> Response<Full<Bytes>> {
    let mut b = Response::builder().status(status);
    for (k, v) in headers {
        b = b.header(*k, v);
    }
    b.body(Full::new(Bytes::from(body.into()))).unwrap()
}

/// The origin the checks test: `/hello`, `/json`, `/redirect` (-> `/hello`), `/headers`.
async fn origin() -> SocketAddr {
    serve(|req| {
        Box::pin(async move {
            match req.uri().path() {
                "/hello" => text(200, "hello from the origin", &[("content-type", "text/plain".into())]),
                "/json" => {
                    text(200, r#"{"status":"up","items":[1,2]}"#, &[("content-type", "application/json".into())])
                }
                "/redirect" => text(302, "", &[("location", "/hello".into())]),
                "/headers" => {
                    let auth = req.headers().get("authorization").map(|v| v.to_str().unwrap().to_string());
                    text(200, json!({ "authorization": auth }).to_string(), &[])
                }
                _ => text(404, "no such page", &[]),
            }
        })
    })
    .await
}

#[derive(Default)]
struct LocalApiState {
    job: Option<RuntimeJob>,
    results: Vec<(String, RuntimeResult)>,
    /// Answer this many result posts with 503 + `Retry-After: 1` first.
    unavailable: usize,
    refused: usize,
}

/// The sidecar's local API as the runtime sees it: `GET /v1/job`, `POST /v1/result`.
async fn local_api(state: Arc<Mutex<LocalApiState>>) -> SocketAddr {
    serve(move |req| {
        let state = state.clone();
        Box::pin(async move {
            let path = req.uri().path().to_string();
            match (req.method().clone(), path.as_str()) {
                (Method::GET, "/v1/job") => match state.lock().unwrap().job.clone() {
                    Some(job) => text(200, serde_json::to_string(&job).unwrap(), &[]),
                    None => text(404, "{}", &[]),
                },
                (Method::POST, p) if p == "/v1/result" || p.ends_with("/result") => {
                    {
                        let mut s = state.lock().unwrap();
                        if s.unavailable > 0 {
                            s.unavailable -= 1;
                            s.refused += 1;
                            return text(503, "cannot store the result", &[("retry-after", "1".into())]);
                        }
                    }
                    let body = req.into_body().collect().await.unwrap().to_bytes();
                    let result: RuntimeResult = serde_json::from_slice(&body).unwrap();
                    state.lock().unwrap().results.push((p.to_string(), result));
                    text(204, "", &[])
                }
                _ => text(404, "not here", &[]),
            }
        })
    })
    .await
}

/// The real sidecar on 127.0.0.1:0: allow-list mode, the test origin's loopback allowed.
struct Sidecar {
    child: Child,
    addr: SocketAddr,
    dir: tempfile::TempDir,
}

impl Sidecar {
    fn start() -> Self {
        let dir = tempfile::Builder::new().prefix("api-runtime-sidecar-").tempdir().unwrap();
        let ready = dir.path().join("ready.json");
        let log = std::fs::File::create(dir.path().join("sidecar.log")).unwrap();
        let mut child = Command::new(bin_path("sidecar"))
            .args(["--listen", "127.0.0.1:0", "--allow-cidr", "127.0.0.1/32", "--deny-public", "--deny-private"])
            .arg("--ready-file")
            .arg(&ready)
            .env("SIDECAR_LOG_LEVEL", "debug")
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("spawn sidecar");
        let deadline = Instant::now() + Duration::from_secs(20);
        let addr = loop {
            if let Ok(text) = std::fs::read_to_string(&ready) {
                break serde_json::from_str::<common::runtime_api::ReadyFile>(&text).unwrap().listen;
            }
            assert!(child.try_wait().unwrap().is_none(), "sidecar exited before ready");
            assert!(Instant::now() < deadline, "sidecar not ready in 20 s");
            std::thread::sleep(Duration::from_millis(10));
        };
        Self { child, addr, dir }
    }

    fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("sidecar.log")).unwrap_or_default()
    }
}

impl Drop for Sidecar {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

struct Env {
    sidecar: Sidecar,
    origin: SocketAddr,
    api: SocketAddr,
    state: Arc<Mutex<LocalApiState>>,
}

impl Env {
    async fn new() -> Self {
        let state = Arc::new(Mutex::new(LocalApiState::default()));
        Self { sidecar: Sidecar::start(), origin: origin().await, api: local_api(state.clone()).await, state }
    }

    fn job(&self, payload: Value, timeout_secs: u32) {
        self.state.lock().unwrap().job = Some(
            serde_json::from_value(json!({
                "id": "check-1", "runtime_type": "node-api-runtime", "timeout_secs": timeout_secs, "attempt": 1,
                "payload": payload,
            }))
            .unwrap(),
        );
    }

    fn command(&self) -> Command {
        let mut cmd = Command::new(bin_path("api-runtime"));
        cmd.env_clear()
            .env("JOB_API_URL", format!("http://{}", self.api))
            .env("HTTP_PROXY", self.sidecar.url())
            .env("HTTPS_PROXY", self.sidecar.url())
            // Ignored on purpose: a script has no direct way out.
            .env("NO_PROXY", "*")
            .env("USER_DEFINED_VARIABLES", r#"{"ENVIRONMENT": "test"}"#)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        cmd
    }

    /// Runs the runtime once on `script`; its exit status and the one result it posted.
    async fn check(&self, payload: Value, timeout_secs: u32) -> (ExitStatus, RuntimeResult, String) {
        self.job(payload, timeout_secs);
        let mut cmd = self.command();
        let out = tokio::task::spawn_blocking(move || cmd.output().unwrap()).await.unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr).to_string();
        let results = self.state.lock().unwrap().results.clone();
        assert_eq!(results.len(), 1, "one result: {results:?}\nstderr: {stderr}\nsidecar: {}", self.sidecar.log());
        assert_eq!(results[0].0, "/v1/result");
        (out.status, results[0].1.clone(), stderr)
    }
}

fn script(lines: &[&str]) -> Value {
    json!({ "script": lines.join("\n") })
}

#[tokio::test]
async fn a_get_check_passes_through_the_real_sidecar_with_timings() {
    let env = Env::new().await;
    let url = format!("http://{}/hello", env.origin);
    let (status, result, _) = env
        .check(
            script(&[
                &format!("const res = await $http.get('{url}');"),
                "assert.strictEqual(res.statusCode, 200);",
                "assert.strictEqual(res.body, 'hello from the origin');",
                "assert.strictEqual($env.USER_DEFINED_VARIABLES.ENVIRONMENT, 'test');",
                "console.log('took', res.timings.total > 0);",
            ]),
            10,
        )
        .await;
    assert!(status.success(), "{status}");
    assert_eq!(result.outcome, RuntimeOutcome::Succeeded, "{result:?}");
    assert!(result.message.starts_with("passed in "), "{}", result.message);
    let req = &result.output["requests"][0];
    assert_eq!(
        (req["method"].as_str(), req["url"].as_str(), req["status"].as_u64()),
        (Some("GET"), Some(url.as_str()), Some(200))
    );
    for t in ["connect_ms", "wait_ms", "total_ms"] {
        assert!(req["timings"][t].as_f64().is_some(), "{t}: {req}");
    }
    assert_eq!(result.output["log"][0]["text"], "took true");
    // It went through the sidecar, which logged the forward.
    assert!(env.sidecar.log().contains(&env.origin.to_string()), "{}", env.sidecar.log());
}

#[tokio::test]
async fn the_metadata_address_is_refused_by_the_sidecar_over_http_and_https() {
    let env = Env::new().await;
    for url in ["http://169.254.169.254/latest/meta-data/", "https://169.254.169.254/latest/meta-data/"] {
        env.state.lock().unwrap().results.clear();
        let (status, result, _) = env.check(script(&[&format!("await $http.get('{url}');")]), 10).await;
        assert!(status.success());
        assert_eq!(result.outcome, RuntimeOutcome::Failed);
        assert!(
            result.message.starts_with(&format!("Error: $http GET {url}: refused by the sidecar (403 metadata): ")),
            "{}",
            result.message
        );
        assert_eq!(result.output["error"]["kind"], "error");
    }
}

#[tokio::test]
async fn a_failing_assertion_reports_its_line_and_redirects_follow_or_not() {
    let env = Env::new().await;
    let base = format!("http://{}", env.origin);
    let (_, result, _) = env
        .check(
            script(&[
                &format!("const followed = await $http.get('{base}/redirect');"),
                "assert.strictEqual(followed.body, 'hello from the origin');",
                &format!("assert.deepStrictEqual(followed.redirectUrls, ['{base}/hello']);"),
                &format!("const kept = await $http.get('{base}/redirect', {{ followRedirect: false }});"),
                "assert.strictEqual(kept.statusCode, 302);",
                &format!("const missing = await $http.get('{base}/nope');"),
                "assert.strictEqual(missing.statusCode, 200, 'the page should exist');",
            ]),
            10,
        )
        .await;
    assert_eq!(result.outcome, RuntimeOutcome::Failed);
    assert_eq!(result.message, "AssertionError: the page should exist (check.js:7:20)");
    assert_eq!(result.output["error"]["line"], 7);
    let statuses: Vec<u64> =
        result.output["requests"].as_array().unwrap().iter().map(|r| r["status"].as_u64().unwrap()).collect();
    assert_eq!(statuses, [302, 200, 302, 404], "each hop is reported");
}

#[tokio::test]
async fn secure_values_never_reach_the_result_or_the_log() {
    let env = Env::new().await;
    let secret = "s3cr3t-token-value";
    let (_, result, stderr) = env
        .check(
            json!({
                "script": format!(
                    "const res = await $http.get('http://{}/headers', {{ headers: {{ authorization: 'Bearer ' + $secure.TOKEN }} }});\n\
                     console.log('sent', res.body);\n\
                     assert.fail('token was ' + $secure.TOKEN);",
                    env.origin
                ),
                "secure": { "TOKEN": secret },
            }),
            10,
        )
        .await;
    let posted = serde_json::to_string(&result).unwrap();
    assert!(!posted.contains(secret), "{posted}");
    assert!(!stderr.contains(secret), "{stderr}");
    assert_eq!(result.message, "AssertionError: token was [REDACTED] (check.js:3:28)");
    // The origin did get it: redaction is about reports, not requests.
    assert_eq!(result.output["log"][0]["text"], r#"sent {"authorization":"Bearer [REDACTED]"}"#);
}

#[tokio::test]
async fn an_endless_loop_ends_in_a_timeout_result_before_the_job_deadline() {
    let env = Env::new().await;
    let started = Instant::now();
    let (status, result, _) = env.check(script(&["let n = 0;", "while (true) { n++; }"]), 2).await;
    assert!(status.success());
    assert_eq!(result.outcome, RuntimeOutcome::Failed);
    assert!(
        result.message.starts_with("TimeoutError: timed out: the check was still running after 1.0 s"),
        "{}",
        result.message
    );
    assert!(started.elapsed() < Duration::from_secs(2), "posted within the job's 2 s: {:?}", started.elapsed());
}

#[tokio::test]
async fn a_result_the_sidecar_cannot_store_yet_is_retried() {
    let env = Env::new().await;
    env.state.lock().unwrap().unavailable = 1;
    let (status, result, _) = env.check(script(&["assert.ok(true);"]), 10).await;
    assert!(status.success());
    assert_eq!(result.outcome, RuntimeOutcome::Succeeded);
    assert_eq!(env.state.lock().unwrap().refused, 1);
}

#[tokio::test]
async fn a_payload_that_is_not_a_check_fails_clearly() {
    let env = Env::new().await;
    let (status, result, _) = env.check(json!({"action": "fetch"}), 10).await;
    assert!(status.success());
    assert_eq!(result.outcome, RuntimeOutcome::Failed);
    assert!(result.message.starts_with("invalid job: payload is not an API check"), "{}", result.message);
}

#[tokio::test]
async fn unbounded_allocation_keeps_the_process_within_its_limit() {
    let env = Env::new().await;
    env.job(script(&["const keep = [];", "while (true) { keep.push('x'.repeat(1 << 20) + Math.random()); }"]), 20);
    let mut cmd = env.command();
    cmd.args(["--memory-limit-mb", "48"]);
    let mut child = cmd.spawn().unwrap();
    let status_file = format!("/proc/{}/status", child.id());
    let mut peak_kb = 0u64;
    let status = loop {
        if let Ok(s) = std::fs::read_to_string(&status_file) {
            if let Some(kb) = s
                .lines()
                .find_map(|l| l.strip_prefix("VmHWM:"))
                .and_then(|v| v.trim().trim_end_matches(" kB").trim().parse().ok())
            {
                peak_kb = peak_kb.max(kb);
            }
        }
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    };
    assert!(status.success());
    let result = env.state.lock().unwrap().results[0].1.clone();
    assert_eq!(result.output["error"]["kind"], "out_of_memory", "{result:?}");
    assert!(peak_kb > 0 && peak_kb < 96 * 1024, "peak RSS {peak_kb} kB for a 48 MiB heap limit");
}

#[tokio::test]
async fn persistent_mode_runs_dispatched_checks_and_posts_each_result() {
    let env = Env::new().await;
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let mut cmd = env.command();
    cmd.args(["--serve", &format!("127.0.0.1:{port}"), "--max-concurrent", "1"]);
    struct Kill(Child);
    impl Drop for Kill {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
    let _child = Kill(cmd.stderr(Stdio::inherit()).spawn().unwrap());
    let dispatch = |id: &str, script: &str| {
        let job = json!({"id": id, "runtime_type": "node-api-runtime", "timeout_secs": 10, "attempt": 1, "payload": {"script": script}});
        async move {
            let deadline = Instant::now() + Duration::from_secs(10);
            loop {
                if let Ok(tcp) = tokio::net::TcpStream::connect(("127.0.0.1", port)).await {
                    let (mut tx, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tcp)).await.unwrap();
                    tokio::spawn(conn);
                    let req = Request::post("/v1/jobs")
                        .header("host", "runtime")
                        .body(Full::new(Bytes::from(job.to_string())))
                        .unwrap();
                    return tx.send_request(req).await.unwrap().status();
                }
                assert!(Instant::now() < deadline, "runtime not listening");
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
    };
    assert_eq!(dispatch("p-1", "await new Promise((r) => setTimeout(r, 300));").await, StatusCode::ACCEPTED);
    assert_eq!(dispatch("p-2", "1").await, StatusCode::TOO_MANY_REQUESTS, "one at a time");
    let deadline = Instant::now() + Duration::from_secs(10);
    while env.state.lock().unwrap().results.is_empty() {
        assert!(Instant::now() < deadline, "no result");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(dispatch("p-3", "assert.equal(1, 2);").await, StatusCode::ACCEPTED);
    while env.state.lock().unwrap().results.len() < 2 {
        assert!(Instant::now() < deadline, "no second result");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let results = env.state.lock().unwrap().results.clone();
    assert_eq!(results[0].0, "/v1/jobs/p-1/result");
    assert_eq!(results[0].1.outcome, RuntimeOutcome::Succeeded);
    assert_eq!(results[1].0, "/v1/jobs/p-3/result");
    assert_eq!(results[1].1.message, "AssertionError: 1 == 2 (check.js:1:7)");
}

#[test]
fn bad_command_lines_and_a_missing_job_api_exit_with_their_codes() {
    let out = Command::new(bin_path("api-runtime")).arg("--bogus").env_clear().output().unwrap();
    assert_eq!(out.status.code(), Some(64));
    assert!(String::from_utf8_lossy(&out.stderr).contains("unknown argument \"--bogus\""));
    let out = Command::new(bin_path("api-runtime")).env_clear().output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("JOB_API_URL is not set"));
}

/// An https origin on 127.0.0.1 whose certificate (for `IP:127.0.0.1`) is signed by a
/// private CA (`tests/api_runtime_support/`).
async fn private_ca_origin() -> SocketAddr {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let support = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/api_runtime_support");
    let certs =
        CertificateDer::pem_file_iter(support.join("server-cert.pem")).unwrap().collect::<Result<Vec<_>, _>>().unwrap();
    let key = PrivateKeyDer::from_pem_file(support.join("server-key.pem")).unwrap();
    let config = rustls::ServerConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                let Ok(tls) = acceptor.accept(stream).await else { return };
                let svc = hyper::service::service_fn(|_req| async {
                    Ok::<_, std::convert::Infallible>(text(200, "private hello", &[]))
                });
                let _ = hyper::server::conn::http1::Builder::new().serve_connection(TokioIo::new(tls), svc).await;
            });
        }
    });
    addr
}

#[tokio::test]
async fn a_private_ca_named_by_node_extra_ca_certs_is_trusted_and_only_then() {
    let env = Env::new().await;
    let origin = private_ca_origin().await;
    let url = format!("https://127.0.0.1:{}/", origin.port());
    let check = script(&[
        &format!("const res = await $http.get('{url}');"),
        "assert.strictEqual(res.statusCode, 200);",
        "assert.strictEqual(res.body, 'private hello');",
    ]);

    // Without the bundle: the handshake fails, named as a certificate problem.
    let (_, result, stderr) = env.check(check.clone(), 10).await;
    assert_eq!(result.outcome, RuntimeOutcome::Failed, "{result:?}\n{stderr}");
    assert!(result.message.contains("TLS handshake") && result.message.contains("127.0.0.1"), "{result:?}");

    // With it (the job manager sets NODE_EXTRA_CA_CERTS when runtimePods.caBundle is given).
    let ca = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/api_runtime_support/private-ca-cert.pem");
    env.job(check.clone(), 10);
    let mut cmd = env.command();
    cmd.env("NODE_EXTRA_CA_CERTS", &ca);
    let out = tokio::task::spawn_blocking(move || cmd.output().unwrap()).await.unwrap();
    let results = env.state.lock().unwrap().results.clone();
    let last = &results.last().unwrap().1;
    assert_eq!(
        last.outcome,
        RuntimeOutcome::Succeeded,
        "{last:?}\n{}\n{}",
        String::from_utf8_lossy(&out.stderr),
        env.sidecar.log()
    );

    // A bundle that cannot be read fails the check naming the file, never trusts less quietly.
    env.job(check, 10);
    let mut cmd = env.command();
    cmd.env("NODE_EXTRA_CA_CERTS", "/nonexistent/ca.pem");
    tokio::task::spawn_blocking(move || cmd.output().unwrap()).await.unwrap();
    let results = env.state.lock().unwrap().results.clone();
    let last = &results.last().unwrap().1;
    assert_eq!(last.outcome, RuntimeOutcome::Failed);
    assert!(last.message.contains("NODE_EXTRA_CA_CERTS=/nonexistent/ca.pem"), "{last:?}");
}
