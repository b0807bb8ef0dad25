//! Hostile input on the result API: every refusal gets the right 4xx with a JSON error
//! naming the problem, and the server stays healthy throughout.
#![allow(clippy::unwrap_used)] // in a test, an unwrap is an assertion
mod jm_support;

use common::token::TokenSigner;
use common::{JobId, JobResult, Outcome};
use jm_support::{request, Answer};
use job_manager::metrics::Metrics;
use job_manager::readiness::Readiness;
use job_manager::results::api::{serve, ResultApi, ServerLimits};
use job_manager::results::{MemoryResultStore, ResultIntake, ResultStore};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_util::sync::CancellationToken;

const KEY: &str = "internal-key";

struct Api {
    addr: String,
    signer: TokenSigner,
    intake: ResultIntake<MemoryResultStore>,
    stop: CancellationToken,
}

async fn start() -> Api {
    start_with(Readiness::new()).await
}

async fn start_with(readiness: Arc<Readiness>) -> Api {
    let intake = ResultIntake::new(MemoryResultStore::new(), Arc::new(Metrics::new()));
    let signer = TokenSigner::new("signing-key");
    let api = Arc::new(ResultApi {
        intake: intake.clone(),
        internal_api_key: common::secret::Secret::new(KEY),
        signer: signer.clone(),
        readiness,
        limits: ServerLimits {
            max_body_bytes: 64 * 1024,
            header_read_timeout: Duration::from_millis(300),
            body_read_timeout: Duration::from_millis(300),
            max_connections: 64,
        },
        runs_here: None,
    });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let stop = CancellationToken::new();
    tokio::spawn(serve(listener, api, stop.clone()));
    Api { addr, signer, intake, stop }
}

fn now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs()
}

fn body(id: &str, outcome: Outcome, message: &str) -> Vec<u8> {
    serde_json::to_vec(&JobResult::new(JobId::new(id).unwrap(), outcome, message)).unwrap()
}

impl Api {
    fn token(&self, id: &str) -> String {
        self.signer.mint(&JobId::new(id).unwrap(), now() + 600)
    }
    async fn post(&self, id: &str, key: Option<&str>, token: Option<&str>, body: Vec<u8>) -> Answer {
        let mut headers = vec![("content-type", "application/json")];
        if let Some(k) = key {
            headers.push(("x-internal-api-key", k));
        }
        if let Some(t) = token {
            headers.push(("x-job-token", t));
        }
        request(&self.addr, "POST", &format!("/internal/v1/jobs/{id}/result"), &headers, body).await
    }
    async fn healthy(&self) {
        let a = request(&self.addr, "GET", "/healthz", &[], Vec::new()).await;
        assert_eq!(a.status, 200, "server stays healthy");
    }
}

fn error_code(a: &Answer) -> String {
    let v: serde_json::Value = serde_json::from_str(&a.body).unwrap_or_else(|_| panic!("JSON error body: {}", a.body));
    v["error"].as_str().unwrap().to_string()
}

#[tokio::test]
async fn accepts_once_then_duplicate_then_conflict() {
    let api = start().await;
    let t = api.token("j1");
    let first = api.post("j1", Some(KEY), Some(&t), body("j1", Outcome::Succeeded, "ok")).await;
    assert_eq!(first.status, 202, "{}", first.body);
    let replay = api.post("j1", Some(KEY), Some(&t), body("j1", Outcome::Succeeded, "ok")).await;
    assert_eq!(replay.status, 200, "identical replay is idempotent: {}", replay.body);
    let other = api.post("j1", Some(KEY), Some(&t), body("j1", Outcome::Failed, "late")).await;
    assert_eq!((other.status, error_code(&other).as_str()), (409, "conflict"));
    let pending = api.intake.store().pending().await.unwrap();
    assert_eq!(pending.len(), 1);
    assert_eq!(pending[0].outcome, Outcome::Succeeded, "the first result wins");
    api.stop.cancel();
}

#[tokio::test]
async fn refuses_bad_keys_and_tokens() {
    let api = start().await;
    let good = api.token("j2");
    let expired = api.signer.mint(&JobId::new("j2").unwrap(), now() - 5);
    let forged = TokenSigner::new("someone-else").mint(&JobId::new("j2").unwrap(), now() + 600);
    let other_jobs = api.token("j3");
    let b = || body("j2", Outcome::Succeeded, "");
    // (case, key, token, status, error code)
    type Case<'a> = (&'a str, Option<&'a str>, Option<&'a str>, u16, &'a str);
    let cases: Vec<Case<'_>> = vec![
        ("no key", None, Some(&good), 401, "bad_internal_api_key"),
        ("wrong key", Some("internal-kez"), Some(&good), 401, "bad_internal_api_key"),
        ("key prefix", Some("internal"), Some(&good), 401, "bad_internal_api_key"),
        ("no token", Some(KEY), None, 401, "missing_job_token"),
        ("garbage token", Some(KEY), Some("v1.x.y.z"), 401, "job_token_malformed"),
        ("expired token", Some(KEY), Some(&expired), 401, "job_token_expired"),
        ("forged token", Some(KEY), Some(&forged), 403, "job_token_bad_signature"),
        ("another job's token", Some(KEY), Some(&other_jobs), 403, "job_token_bad_signature"),
    ];
    for (name, key, token, status, code) in cases {
        let a = api.post("j2", key, token, b()).await;
        assert_eq!((a.status, error_code(&a).as_str()), (status, code), "case {name}: {}", a.body);
    }
    assert!(api.intake.store().pending().await.unwrap().is_empty(), "nothing recorded");
    api.healthy().await;
    // The legitimate submission still works afterwards.
    assert_eq!(api.post("j2", Some(KEY), Some(&good), b()).await.status, 202);
    api.stop.cancel();
}

#[tokio::test]
async fn job_fetch_checks_key_and_token_then_answers_the_handed_job() {
    let api = start().await;
    let job: common::Job = serde_json::from_value(serde_json::json!({
        "id": "j5", "runtime_type": "rt", "timeout_secs": 9, "attempt": 2, "payload": {"code": "1+1"}
    }))
    .unwrap();
    api.intake.store().hand(job.clone());
    let get = |id: &str, key: Option<&str>, token: Option<String>| {
        let mut headers = Vec::new();
        if let Some(k) = key {
            headers.push(("x-internal-api-key".to_string(), k.to_string()));
        }
        if let Some(t) = token {
            headers.push(("x-job-token".to_string(), t));
        }
        let (addr, path) = (api.addr.clone(), format!("/internal/v1/jobs/{id}"));
        async move {
            let h: Vec<(&str, &str)> = headers.iter().map(|(a, b)| (a.as_str(), b.as_str())).collect();
            request(&addr, "GET", &path, &h, Vec::new()).await
        }
    };
    // (case, id, key, token, status, error code)
    let cases = [
        ("no key", "j5", None, Some(api.token("j5")), 401, "bad_internal_api_key"),
        ("wrong key", "j5", Some("nope"), Some(api.token("j5")), 401, "bad_internal_api_key"),
        ("no token", "j5", Some(KEY), None, 401, "missing_job_token"),
        ("another job's token", "j5", Some(KEY), Some(api.token("j6")), 403, "job_token_bad_signature"),
        (
            "forged token",
            "j5",
            Some(KEY),
            Some(TokenSigner::new("x").mint(&JobId::new("j5").unwrap(), now() + 60)),
            403,
            "job_token_bad_signature",
        ),
        ("not kept here", "j6", Some(KEY), Some(api.token("j6")), 404, "unknown_job"),
        ("bad id", "%00", Some(KEY), Some(api.token("j5")), 404, "bad_job_id"),
    ];
    for (name, id, key, token, status, code) in cases {
        let a = get(id, key, token).await;
        assert_eq!((a.status, error_code(&a).as_str()), (status, code), "case {name}: {}", a.body);
        assert!(!a.body.contains("1+1"), "case {name} leaked the payload: {}", a.body);
    }
    let post = request(&api.addr, "POST", "/internal/v1/jobs/j5", &[("x-internal-api-key", KEY)], Vec::new()).await;
    assert_eq!((post.status, error_code(&post).as_str()), (405, "method_not_allowed"));
    assert_eq!(post.allow.as_deref(), Some("GET"));
    let ok = get("j5", Some(KEY), Some(api.token("j5"))).await;
    assert_eq!(ok.status, 200, "{}", ok.body);
    assert_eq!(serde_json::from_str::<common::Job>(&ok.body).unwrap(), job);
    api.healthy().await;
    api.stop.cancel();
}

#[tokio::test]
async fn refuses_bad_bodies() {
    let api = start().await;
    let t = api.token("j4");
    let huge = vec![b'x'; 65 * 1024];
    let cases: Vec<(&str, Vec<u8>, u16, &str)> = vec![
        ("huge body", huge, 413, "body_too_large"),
        ("not json", b"{not json".to_vec(), 422, "invalid_result"),
        ("wrong shape", br#"{"job_id":"j4","outcome":"exploded"}"#.to_vec(), 422, "invalid_result"),
        ("unknown field", br#"{"job_id":"j4","outcome":"failed","extra":1}"#.to_vec(), 422, "invalid_result"),
        ("other job in body", body("j5", Outcome::Failed, ""), 422, "job_id_mismatch"),
    ];
    for (name, b, status, code) in cases {
        let a = api.post("j4", Some(KEY), Some(&t), b).await;
        assert_eq!((a.status, error_code(&a).as_str()), (status, code), "case {name}: {}", a.body);
    }
    let bad_path =
        request(&api.addr, "POST", "/internal/v1/jobs/a%2Fb/result", &[("x-internal-api-key", KEY)], vec![]).await;
    assert_eq!(bad_path.status, 404);
    let get = request(&api.addr, "GET", "/internal/v1/jobs/j4/result", &[], vec![]).await;
    assert_eq!(get.status, 405);
    assert_eq!(get.allow.as_deref(), Some("POST"));
    api.healthy().await;
    assert!(api.intake.store().pending().await.unwrap().is_empty());
    api.stop.cancel();
}

#[tokio::test]
async fn chunked_oversized_body_is_cut_off() {
    let api = start().await;
    let t = api.token("j6");
    let mut s = tokio::net::TcpStream::connect(&api.addr).await.unwrap();
    let head = format!(
        "POST /internal/v1/jobs/j6/result HTTP/1.1\r\nhost: x\r\nx-internal-api-key: {KEY}\r\nx-job-token: {t}\r\ntransfer-encoding: chunked\r\n\r\n"
    );
    s.write_all(head.as_bytes()).await.unwrap();
    let chunk = vec![b'a'; 16 * 1024];
    for _ in 0..5 {
        let _ = s.write_all(format!("{:x}\r\n", chunk.len()).as_bytes()).await;
        let _ = s.write_all(&chunk).await;
        let _ = s.write_all(b"\r\n").await;
    }
    let mut buf = vec![0u8; 1024];
    let n = tokio::time::timeout(Duration::from_secs(5), s.read(&mut buf)).await.unwrap().unwrap();
    let answer = String::from_utf8_lossy(&buf[..n]);
    assert!(answer.starts_with("HTTP/1.1 413"), "{answer}");
    api.healthy().await;
    api.stop.cancel();
}

#[tokio::test]
async fn slow_and_broken_clients_are_cut_off() {
    let api = start().await;
    let t = api.token("j7");
    // Slowloris: headers never finish -> the connection is closed by the header timeout.
    let mut slow = tokio::net::TcpStream::connect(&api.addr).await.unwrap();
    slow.write_all(b"POST /internal/v1/jobs/j7/result HTTP/1.1\r\nhost: x\r\n").await.unwrap();
    let mut buf = vec![0u8; 1024];
    let n =
        tokio::time::timeout(Duration::from_secs(5), slow.read(&mut buf)).await.expect("closed in time").unwrap_or(0);
    let answer = String::from_utf8_lossy(&buf[..n]);
    assert!(n == 0 || answer.starts_with("HTTP/1.1 408"), "slow headers: {answer}");
    // Headers complete, body trickles: 408 from the body timeout.
    let mut trickle = tokio::net::TcpStream::connect(&api.addr).await.unwrap();
    let head = format!(
        "POST /internal/v1/jobs/j7/result HTTP/1.1\r\nhost: x\r\nx-internal-api-key: {KEY}\r\nx-job-token: {t}\r\ncontent-length: 100\r\n\r\n{{"
    );
    trickle.write_all(head.as_bytes()).await.unwrap();
    let n = tokio::time::timeout(Duration::from_secs(5), trickle.read(&mut buf)).await.unwrap().unwrap();
    assert!(String::from_utf8_lossy(&buf[..n]).starts_with("HTTP/1.1 408"), "{}", String::from_utf8_lossy(&buf[..n]));
    // Garbage instead of HTTP.
    let mut garbage = tokio::net::TcpStream::connect(&api.addr).await.unwrap();
    garbage.write_all(b"\x16\x03\x01 this is not http\r\n\r\n").await.unwrap();
    let n = tokio::time::timeout(Duration::from_secs(5), garbage.read(&mut buf)).await.unwrap().unwrap_or(0);
    let answer = String::from_utf8_lossy(&buf[..n]);
    assert!(n == 0 || answer.starts_with("HTTP/1.1 400"), "garbage: {answer}");
    api.healthy().await;
    api.stop.cancel();
}

#[tokio::test]
async fn readyz_repeats_isolation_gaps_ready_or_not() {
    let readiness = Readiness::new();
    readiness.set_caveats(vec!["kubernetes.egressFirewall.enabled is off: no firewall".into()]);
    let api = start_with(readiness.clone()).await;
    api.healthy().await;
    let ready = request(&api.addr, "GET", "/readyz", &[], vec![]).await;
    assert_eq!(ready.status, 200, "a gap is said, not a reason to be unready");
    assert_eq!(ready.body, "ready\nwarning: kubernetes.egressFirewall.enabled is off: no firewall\n");
    readiness.set_draining();
    let draining = request(&api.addr, "GET", "/readyz", &[], vec![]).await;
    assert_eq!(draining.status, 503);
    assert!(
        draining.body.ends_with("warning: kubernetes.egressFirewall.enabled is off: no firewall\n"),
        "{}",
        draining.body
    );
    api.stop.cancel();
}

#[tokio::test]
async fn health_readiness_and_metrics() {
    let api = start().await;
    api.healthy().await;
    assert_eq!(request(&api.addr, "GET", "/readyz", &[], vec![]).await.status, 200);
    let _ = api.post("m1", Some("wrong"), None, vec![]).await;
    let m = request(&api.addr, "GET", "/metrics", &[], vec![]).await;
    assert_eq!(m.status, 200);
    assert!(m.body.contains("job_manager_result_api_requests_total{code=\"401\"} 1"), "{}", m.body);
    // The Prometheus text format unless OpenMetrics is asked for (Prometheus asks).
    assert_eq!(m.content_type.as_deref(), Some("text/plain; version=0.0.4; charset=utf-8"));
    assert!(!m.body.contains("# EOF"), "{}", m.body);
    assert!(m.body.contains("job_manager_job_results_total{outcome=\"timed_out\"} 0"), "{}", m.body);
    let accept = [("accept", "application/openmetrics-text; version=1.0.0, text/plain; q=0.5")];
    let om = request(&api.addr, "GET", "/metrics", &accept, vec![]).await;
    assert_eq!(om.content_type.as_deref(), Some("application/openmetrics-text; version=1.0.0; charset=utf-8"));
    assert!(om.body.ends_with("# EOF\n"), "{}", om.body);
    assert_eq!(request(&api.addr, "GET", "/nope", &[], vec![]).await.status, 404);
    assert_eq!(request(&api.addr, "GET", "/livez", &[], vec![]).await.status, 200);
    let wrong = request(&api.addr, "POST", "/readyz", &[], vec![]).await;
    assert_eq!((wrong.status, wrong.allow.as_deref()), (405, Some("GET")));
    api.stop.cancel();
}
