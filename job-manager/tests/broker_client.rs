//! The HTTP broker client against the embedded broker served on loopback: the happy path,
//! status mapping, retries, garbage, hangs, outages, proxies and TLS.
#![allow(clippy::unwrap_used)] // in a test, an unwrap is an assertion
mod broker_support;

use broker_support::*;
use common::broker::{AckRequest, ReleaseRequest};
use common::secret::Secret;
use common::{JobResult, Outcome};
use job_manager::broker::client::connector::TlsMaterial;
use job_manager::broker::client::HttpBroker;
use job_manager::broker::embedded::NO_ANSWER;
use job_manager::broker::{BrokerApi, BrokerError, SubmitOutcome};
use std::time::Duration;

fn ack(attempt: u32) -> AckRequest {
    AckRequest { consumer: "jm-test".into(), attempt }
}

#[tokio::test]
async fn happy_path_poll_ack_result_stats() {
    let served = serve_new().await;
    served.broker.submit(job("a")).unwrap();
    served.broker.submit(job("b")).unwrap();
    let c = client(&served.url());

    let stats = c.queue_stats().await.unwrap();
    assert_eq!(stats.depth, 2);
    assert_eq!(stats.depth_by_runtime.get("rt"), Some(&2));

    let polled = c.poll(&poll_req(1)).await.unwrap();
    assert_eq!(polled.jobs.len(), 1);
    assert_eq!(polled.visibility_timeout_secs, Some(30));
    let j = &polled.jobs[0];
    assert_eq!((j.id.as_str(), j.attempt), ("a", 1));
    assert_eq!(j.payload, serde_json::json!({"action": "sleep", "secs": 0}));
    c.ack(&j.id, &ack(1)).await.unwrap();

    let result = JobResult::new(j.id.clone(), Outcome::Succeeded, "ok");
    assert_eq!(c.submit_result(&result).await.unwrap(), SubmitOutcome::Accepted);
    assert_eq!(c.submit_result(&result).await.unwrap(), SubmitOutcome::Accepted, "identical repeat");
    let conflicting = JobResult::new(j.id.clone(), Outcome::Failed, "other");
    assert_eq!(c.submit_result(&conflicting).await.unwrap(), SubmitOutcome::Conflict);
    assert_eq!(served.broker.result(&id("a")), Some(result));

    let counters = served.broker.counters(&id("a")).unwrap();
    assert_eq!(
        (counters.deliveries, counters.acks, counters.results_accepted, counters.results_conflicting),
        (1, 1, 2, 1)
    );
    let calls = served.broker.calls();
    let summary: Vec<(String, Option<String>, u16)> =
        calls.iter().map(|c| (c.path.clone(), c.job_id.as_ref().map(|i| i.to_string()), c.status)).collect();
    assert_eq!(
        summary,
        vec![
            ("/v1/queue".into(), None, 200),
            ("/v1/jobs/poll".into(), None, 200),
            ("/v1/jobs/a/ack".into(), Some("a".into()), 204),
            ("/v1/jobs/a/result".into(), Some("a".into()), 204),
            ("/v1/jobs/a/result".into(), Some("a".into()), 204),
            ("/v1/jobs/a/result".into(), Some("a".into()), 409),
        ]
    );
}

#[tokio::test]
async fn lease_errors_map_to_not_found_and_lease_lost() {
    let served = serve(broker(Duration::from_millis(50))).await;
    served.broker.submit(job("a")).unwrap();
    let c = client(&served.url());
    assert!(matches!(c.ack(&id("nope"), &ack(1)).await, Err(BrokerError::NotFound)));
    let first = c.poll(&poll_req(1)).await.unwrap();
    assert_eq!(first.jobs[0].attempt, 1);
    // The 50 ms lease runs out; the next poll re-delivers with attempt 2.
    let second = loop {
        let p = c.poll(&poll_req(1)).await.unwrap();
        if !p.jobs.is_empty() {
            break p;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert_eq!(second.jobs[0].attempt, 2);
    assert!(matches!(c.ack(&id("a"), &ack(1)).await, Err(BrokerError::LeaseLost)), "stale attempt");
    let release = ReleaseRequest { consumer: "jm-test".into(), attempt: 2, reason: "no capacity".into() };
    c.release(&id("a"), &release).await.unwrap();
    assert!(matches!(c.release(&id("a"), &release).await, Err(BrokerError::LeaseLost)), "released already");
    let third = c.poll(&poll_req(1)).await.unwrap();
    assert_eq!(third.jobs[0].attempt, 3, "a released job is visible at once");
    let unknown = JobResult::new(id("ghost"), Outcome::Failed, "");
    assert!(matches!(c.submit_result(&unknown).await, Err(BrokerError::NotFound)));
}

#[tokio::test]
async fn wrong_location_key_is_unauthorized_and_not_retried() {
    let served = serve_new().await;
    let mut cfg = client_config(&served.url());
    cfg.location_key = Secret::new("wrong");
    let c = HttpBroker::new(cfg).unwrap().with_retry_policy(fast_retries(3));
    let err = c.queue_stats().await.unwrap_err();
    assert!(matches!(err, BrokerError::Unauthorized), "{err}");
    assert!(!err.retryable());
    assert!(matches!(c.network_health_check().await, Err(BrokerError::Unauthorized)));
    let statuses: Vec<u16> = served.broker.calls().iter().map(|c| c.status).collect();
    assert_eq!(statuses, vec![401, 401]);
}

#[tokio::test]
async fn server_errors_are_retried_then_reported() {
    let served = serve_new().await;
    let c = client(&served.url());
    served.broker.faults().fail_next(2);
    assert_eq!(c.queue_stats().await.unwrap().depth, 0, "third attempt succeeds");
    let statuses: Vec<u16> = served.broker.calls().iter().map(|c| c.status).collect();
    assert_eq!(statuses, vec![500, 500, 200]);

    served.broker.faults().fail_next_with_status(5, 503);
    match c.queue_stats().await.unwrap_err() {
        BrokerError::Status { status: 503, message } => assert!(message.contains("injected"), "{message}"),
        other => panic!("expected 503, got {other:?}"),
    }
    served.broker.clear_calls();
    served.broker.faults().clear();

    // A result is idempotent, so a 500 is retried and the result lands exactly once.
    served.broker.submit(job("r")).unwrap();
    served.broker.faults().fail_next(1);
    let result = JobResult::new(id("r"), Outcome::Succeeded, "");
    assert_eq!(c.submit_result(&result).await.unwrap(), SubmitOutcome::Accepted);
    assert_eq!(served.broker.counters(&id("r")).unwrap().results_accepted, 1);

    // A poll that reached the broker is not repeated: the error goes to the dispatcher.
    served.broker.faults().fail_next(1);
    let err = c.poll(&poll_req(1)).await.unwrap_err();
    assert!(matches!(err, BrokerError::Status { status: 500, .. }) && err.retryable(), "{err}");
    let polls = served.broker.calls().iter().filter(|c| c.path == "/v1/jobs/poll").count();
    assert_eq!(polls, 1);
}

#[tokio::test]
async fn garbage_answers_are_bad_responses() {
    let served = serve_new().await;
    let c = client(&served.url());
    served.broker.faults().garbage_next(1);
    let err = c.poll(&poll_req(1)).await.unwrap_err();
    assert!(matches!(err, BrokerError::Unreadable(_)), "a poll answer that is not JSON at all: {err}");
    assert!(err.retryable());
    served.broker.faults().garbage_next(1);
    assert_eq!(c.queue_stats().await.unwrap().depth, 0, "a read is retried past the garbage");
}

#[tokio::test]
async fn hanging_broker_times_out() {
    let served = serve_new().await;
    let mut cfg = client_config(&served.url());
    cfg.timeout = Duration::from_millis(200);
    let c = HttpBroker::new(cfg).unwrap().with_retry_policy(fast_retries(2));
    served.broker.faults().hang_for(Duration::from_secs(3));
    let started = std::time::Instant::now();
    let err = c.queue_stats().await.unwrap_err();
    assert!(matches!(err, BrokerError::Timeout(d) if d == Duration::from_millis(200)), "{err}");
    assert!(started.elapsed() < Duration::from_secs(3), "the client gave up before the hang ended");
}

#[tokio::test]
async fn refused_connection_is_unreachable_and_poll_retries_it() {
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let c = client(&format!("http://127.0.0.1:{port}"));
    let err = c.poll(&poll_req(1)).await.unwrap_err();
    assert!(matches!(&err, BrokerError::Unreachable(m) if m.contains(&port.to_string())), "{err}");
    assert_eq!(err.label(), "unreachable");
    assert!(c.network_health_check().await.is_err());
}

#[tokio::test]
async fn broker_down_then_back() {
    let served = serve_new().await;
    let c = client(&served.url());
    served.broker.faults().set_down(true);
    let err = c.queue_stats().await.unwrap_err();
    assert!(matches!(err, BrokerError::Unreachable(_)), "{err}");
    served.broker.faults().set_down(false);
    c.network_health_check().await.unwrap();
    assert!(served.broker.calls().iter().all(|c| c.status == 200 || c.status == NO_ANSWER));
}

#[tokio::test]
async fn http_broker_through_proxy_uses_absolute_form_and_basic_auth() {
    let served = serve_new().await;
    served.broker.submit(job("p")).unwrap();
    let proxy = start_proxy("Basic dXNlcjpzM2NyZXQ=").await; // user:s3cret
    let mut cfg = client_config(&served.url());
    cfg.proxy = Some(proxy_settings(proxy.addr, "user", "s3cret", false));
    let c = HttpBroker::new(cfg).unwrap();
    let polled = c.poll(&poll_req(5)).await.unwrap();
    assert_eq!(polled.jobs.len(), 1);
    let seen = proxy.seen.lock().unwrap().clone();
    assert_eq!(seen[0].request_line, format!("POST {}/v1/jobs/poll HTTP/1.1", served.url()));
    assert_eq!(seen[0].proxy_authorization.as_deref(), Some("Basic dXNlcjpzM2NyZXQ="));

    let mut cfg = client_config(&served.url());
    cfg.proxy = Some(proxy_settings(proxy.addr, "user", "wrong", false));
    let c = HttpBroker::new(cfg).unwrap().with_retry_policy(fast_retries(1));
    let err = c.queue_stats().await.unwrap_err();
    assert!(matches!(err, BrokerError::Status { status: 407, .. }), "{err}");
}

#[tokio::test]
async fn https_broker_through_connect_proxy_with_self_signed_certificate() {
    let served = serve_new().await;
    served.broker.submit(job("t")).unwrap();
    let tls = start_tls_terminator(served.addr).await;
    let endpoint = format!("https://localhost:{}", tls.port());
    let proxy = start_proxy("Basic dXNlcjpzM2NyZXQ=").await;

    let mut cfg = client_config(&endpoint);
    cfg.proxy = Some(proxy_settings(proxy.addr, "user", "s3cret", true));
    let c = HttpBroker::new(cfg).unwrap();
    assert_eq!(c.queue_stats().await.unwrap().depth, 1);
    assert_eq!(c.poll(&poll_req(1)).await.unwrap().jobs[0].id.as_str(), "t");
    let seen = proxy.seen.lock().unwrap().clone();
    assert_eq!(seen.len(), 1, "one tunnel, reused: {seen:?}");
    assert_eq!(seen[0].request_line, format!("CONNECT localhost:{} HTTP/1.1", tls.port()));
    assert_eq!(seen[0].proxy_authorization.as_deref(), Some("Basic dXNlcjpzM2NyZXQ="));

    // Without the opt-in the self-signed certificate is refused, through the proxy or not.
    let mut cfg = client_config(&endpoint);
    cfg.proxy = Some(proxy_settings(proxy.addr, "user", "s3cret", false));
    let err = HttpBroker::new(cfg).unwrap().with_retry_policy(fast_retries(1)).queue_stats().await.unwrap_err();
    assert!(matches!(&err, BrokerError::Unreachable(m) if m.contains("certificate")), "{err}");
    let err = client(&endpoint).with_retry_policy(fast_retries(1)).queue_stats().await.unwrap_err();
    assert!(matches!(&err, BrokerError::Unreachable(m) if m.contains("certificate")), "{err}");

    // A proxy refusing the tunnel is a clear error, not a hang.
    let mut cfg = client_config(&endpoint);
    cfg.proxy = Some(proxy_settings(proxy.addr, "user", "nope", true));
    let err = HttpBroker::new(cfg).unwrap().with_retry_policy(fast_retries(1)).queue_stats().await.unwrap_err();
    assert!(matches!(&err, BrokerError::Unreachable(m) if m.contains("407")), "{err}");
}

/// Something between the job manager and the broker (a captive portal, a misrouted
/// proxy) answers `200` with a page: the result was not stored, so it must not count as
/// delivered (the API answers 204); the error is retryable, so the result stays pending.
#[tokio::test]
async fn a_result_answered_200_with_a_page_is_not_delivered() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let answered = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let count = answered.clone();
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            count.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            let mut buf = vec![0u8; 64 * 1024];
            let _ = stream.read(&mut buf).await;
            let page = "<html>please log in</html>";
            let answer = format!(
                "HTTP/1.1 200 OK\r\ncontent-type: text/html\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{page}",
                page.len()
            );
            let _ = stream.write_all(answer.as_bytes()).await;
        }
    });
    let c = client(&url);
    let result = JobResult::new(id("r"), Outcome::Succeeded, "");
    let err = c.submit_result(&result).await.unwrap_err();
    assert!(matches!(err, BrokerError::BadResponse(_)), "{err}");
    assert!(err.to_string().contains("expected 204") && err.to_string().contains("please log in"), "{err}");
    assert!(err.retryable(), "the delivery loop keeps the result and tries again");
    assert_eq!(answered.load(std::sync::atomic::Ordering::SeqCst), 3, "retried like any unreadable answer");
}

/// A fake broker on loopback that answers every request with `status` and `body`.
async fn serve_fixed(status: u16, body: Vec<u8>) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            let body = body.clone();
            tokio::spawn(async move {
                let mut buf = vec![0u8; 64 * 1024];
                let _ = stream.read(&mut buf).await;
                let head = format!(
                    "HTTP/1.1 {status} X\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n",
                    body.len()
                );
                let _ = stream.write_all(head.as_bytes()).await;
                let _ = stream.write_all(&body).await;
            });
        }
    });
    url
}

/// One hostile job per way a broker can get a job wrong, between two good ones: the
/// good ones are read, each bad one is set apart with its id, attempt and reason.
#[tokio::test]
async fn a_poll_answer_with_malformed_jobs_is_read_job_by_job() {
    let deep = format!("{}1{}", "[".repeat(200), "]".repeat(200));
    let body = format!(
        r#"{{"visibility_timeout_secs":30,"jobs":[
            {{"id":"good-1","runtime_type":"rt","timeout_secs":5}},
            {{"id":"neg","runtime_type":"rt","timeout_secs":-1,"attempt":2}},
            {{"id":"a/b","runtime_type":"rt","timeout_secs":5}},
            {{"id":"na\u00efve","runtime_type":"rt","timeout_secs":5}},
            {{"id":"unknown","runtime_type":"rt","timeout_secs":5,"priority":1}},
            {{"id":"deep","runtime_type":"rt","timeout_secs":5,"payload":{deep}}},
            {{"id":"good-2","runtime_type":"rt","timeout_secs":5}}
        ]}}"#
    );
    let c = client(&serve_fixed(200, body.into_bytes()).await);
    let batch = c.poll(&poll_req(10)).await.unwrap();
    let good: Vec<&str> = batch.jobs.iter().map(|j| j.id.as_str()).collect();
    assert_eq!(good, ["good-1", "good-2"]);
    let bad: Vec<(Option<&str>, &str, u32)> =
        batch.unreadable.iter().map(|u| (u.id.as_ref().map(|i| i.as_str()), u.raw_id.as_str(), u.attempt)).collect();
    assert_eq!(
        bad,
        [
            (Some("neg"), "neg", 2),
            (None, "a/b", 1),
            (None, "na\\u{ef}ve", 1),
            (Some("unknown"), "unknown", 1),
            (Some("deep"), "deep", 1)
        ]
    );
    assert!(batch.unreadable[3].reason.starts_with("unknown field `priority`"), "{:?}", batch.unreadable[3]);
    assert!(batch.unreadable[4].reason.starts_with("recursion limit exceeded"), "{:?}", batch.unreadable[4]);
}

/// An answer over the size limit, or not JSON, is unreadable as a whole (the
/// dispatcher turns that into readiness); it is not retried within the poll.
#[tokio::test]
async fn a_poll_answer_too_large_or_not_json_is_unreadable_as_a_whole() {
    let mut huge =
        br#"{"visibility_timeout_secs":30,"jobs":[{"id":"x","runtime_type":"rt","timeout_secs":5,"payload":""#.to_vec();
    huge.resize(17 * 1024 * 1024, b'a');
    huge.extend_from_slice(br#""}]}"#);
    let c = client(&serve_fixed(200, huge).await);
    match c.poll(&poll_req(1)).await.unwrap_err() {
        BrokerError::Unreadable(why) => assert_eq!(why, "the answer is larger than 16777216 bytes"),
        other => panic!("{other}"),
    }
    let c = client(&serve_fixed(200, b"<html>gateway</html>".to_vec()).await);
    let err = c.poll(&poll_req(1)).await.unwrap_err();
    assert_eq!(err.label(), "unreadable", "{err}");
}

fn support_file(name: &str) -> String {
    format!("{}/tests/broker_support/{name}", env!("CARGO_MANIFEST_DIR"))
}

fn material(ca: bool, client: bool) -> TlsMaterial {
    let path = |on: bool, name: &str| if on { support_file(name) } else { String::new() };
    TlsMaterial::read(
        &path(ca, "private-ca-cert.pem"),
        &path(client, "private-client-cert.pem"),
        &path(client, "private-client-key.pem"),
    )
    .unwrap()
}

#[tokio::test]
async fn a_private_ca_and_a_client_certificate_reach_the_broker_over_mutual_tls() {
    let served = serve_new().await;
    served.broker.submit(job("t")).unwrap();
    // Server certificate of a private CA: refused on the public roots, trusted with brokerTls.caFile.
    let tls = start_private_tls_terminator(served.addr, false).await;
    let endpoint = format!("https://localhost:{}", tls.port());
    let err = client(&endpoint).with_retry_policy(fast_retries(1)).queue_stats().await.unwrap_err();
    assert!(matches!(&err, BrokerError::Unreachable(m) if m.contains("certificate")), "{err}");
    let mut cfg = client_config(&endpoint);
    cfg.tls = material(true, false);
    assert_eq!(HttpBroker::new(cfg).unwrap().queue_stats().await.unwrap().depth, 1);

    // A broker that requires a client certificate: refused without, served with one.
    let mtls = start_private_tls_terminator(served.addr, true).await;
    let endpoint = format!("https://localhost:{}", mtls.port());
    let mut cfg = client_config(&endpoint);
    cfg.tls = material(true, false);
    let err = HttpBroker::new(cfg).unwrap().with_retry_policy(fast_retries(1)).queue_stats().await.unwrap_err();
    assert!(matches!(&err, BrokerError::Unreachable(_)), "{err}");
    let mut cfg = client_config(&endpoint);
    cfg.tls = material(true, true);
    let c = HttpBroker::new(cfg).unwrap();
    assert_eq!(c.poll(&poll_req(1)).await.unwrap().jobs[0].id.as_str(), "t");
}

#[test]
fn broken_tls_material_is_refused_naming_the_setting() {
    let err = TlsMaterial::read("/nonexistent/ca.pem", "", "").unwrap_err();
    assert!(err.contains("brokerTls.caFile") && err.contains("/nonexistent/ca.pem"), "{err}");
    let mut cfg = client_config("https://localhost:1");
    cfg.tls = TlsMaterial { client_cert_pem: material(false, true).client_cert_pem, ..TlsMaterial::default() };
    let err = HttpBroker::new(cfg).unwrap_err().to_string();
    assert!(err.contains("clientCertFile and brokerTls.clientKeyFile go together"), "{err}");
    let mut cfg = client_config("https://localhost:1");
    cfg.tls = TlsMaterial { ca_pem: b"not a certificate".to_vec(), ..TlsMaterial::default() };
    let err = HttpBroker::new(cfg).unwrap_err().to_string();
    assert!(err.contains("brokerTls.caFile"), "{err}");
    let mut cfg = client_config("https://localhost:1");
    cfg.tls = TlsMaterial {
        client_cert_pem: material(false, true).client_cert_pem,
        client_key_pem: std::fs::read(support_file("private-server-key.pem")).unwrap(),
        ..TlsMaterial::default()
    };
    let err = HttpBroker::new(cfg).unwrap_err().to_string();
    assert!(err.contains("do not match"), "{err}");
}
