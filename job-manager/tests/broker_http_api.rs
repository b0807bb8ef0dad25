//! The embedded broker's HTTP API under hostile and unusual input: every bad request gets
//! the right 4xx with an `ErrorBody`, and the server keeps serving afterwards.
#![allow(clippy::unwrap_used)] // in a test, an unwrap is an assertion
mod broker_support;

use broker_support::*;
use common::broker::ErrorBody;
use common::{JobResult, Outcome};
use job_manager::broker::embedded::{EmbeddedBroker, EmbeddedOptions, JobState};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

fn error_code(answer: &str) -> String {
    serde_json::from_str::<ErrorBody>(body_of(answer))
        .map(|e| e.error)
        .unwrap_or_else(|_| format!("<no ErrorBody in {answer:?}>"))
}

async fn still_serving(served: &Served) {
    let answer = raw_exchange(served.addr, &request("GET", "/v1/queue", "")).await;
    assert_eq!(status_of(&answer), 200, "{answer}");
}

#[tokio::test]
async fn bad_bodies_get_400_422_413() {
    let served = serve_new().await;
    served.broker.submit(job("a")).unwrap();
    let cases: &[(&str, &str, &str, u16, &str)] = &[
        ("malformed json", "/v1/jobs/poll", "{\"demands\": [", 400, "malformed_json"),
        ("not json at all", "/v1/jobs/poll", "hello", 400, "malformed_json"),
        ("empty body", "/v1/jobs/a/ack", "", 400, "malformed_json"),
        ("wrong shape", "/v1/jobs/poll", r#"{"demands": 3, "consumer": "x"}"#, 422, "invalid"),
        ("missing field", "/v1/jobs/a/ack", r#"{"consumer": "x"}"#, 422, "invalid"),
        ("unknown field", "/v1/jobs/a/ack", r#"{"consumer": "x", "attempt": 1, "extra": true}"#, 422, "invalid"),
        ("bad outcome", "/v1/jobs/a/result", r#"{"job_id": "a", "outcome": "exploded"}"#, 422, "invalid"),
        (
            "result for another job",
            "/v1/jobs/a/result",
            r#"{"job_id": "b", "outcome": "failed"}"#,
            422,
            "job_id_mismatch",
        ),
        (
            "bad job id in body",
            "/admin/v1/jobs",
            r#"{"id": "../x", "runtime_type": "rt", "timeout_secs": 1}"#,
            422,
            "invalid",
        ),
    ];
    for (name, path, body, status, code) in cases {
        let answer = raw_exchange(served.addr, &request("POST", path, body)).await;
        assert_eq!(status_of(&answer), *status, "{name}: {answer}");
        assert_eq!(error_code(&answer), *code, "{name}");
    }
    assert_eq!(served.broker.state(&id("a")), Some(JobState::Waiting), "nothing changed the job");
    still_serving(&served).await;
}

#[tokio::test]
async fn huge_bodies_get_413_declared_or_chunked() {
    let served = serve_new().await;
    let declared = format!(
        "POST /v1/jobs/poll HTTP/1.1\r\nHost: b\r\nAuthorization: Bearer {KEY}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        64 * 1024 * 1024
    );
    let answer = raw_exchange(served.addr, declared.as_bytes()).await;
    assert_eq!(status_of(&answer), 413, "{answer}");
    assert_eq!(error_code(&answer), "too_large");

    // Chunked, no length up front: the limit applies while reading.
    let mut chunked = format!(
        "POST /v1/jobs/poll HTTP/1.1\r\nHost: b\r\nAuthorization: Bearer {KEY}\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n"
    )
    .into_bytes();
    let chunk = vec![b' '; 256 * 1024];
    for _ in 0..5 {
        chunked.extend_from_slice(format!("{:x}\r\n", chunk.len()).as_bytes());
        chunked.extend_from_slice(&chunk);
        chunked.extend_from_slice(b"\r\n");
    }
    chunked.extend_from_slice(b"0\r\n\r\n");
    let answer = raw_exchange(served.addr, &chunked).await;
    assert_eq!(status_of(&answer), 413, "{answer}");
    still_serving(&served).await;
}

#[tokio::test]
async fn auth_paths_and_methods() {
    let served = serve_new().await;
    let no_key = b"GET /v1/queue HTTP/1.1\r\nHost: b\r\nConnection: close\r\n\r\n";
    let answer = raw_exchange(served.addr, no_key).await;
    assert_eq!((status_of(&answer), error_code(&answer).as_str()), (401, "unauthorized"));
    let wrong_key = b"GET /v1/queue HTTP/1.1\r\nHost: b\r\nAuthorization: Bearer nope\r\nConnection: close\r\n\r\n";
    assert_eq!(status_of(&raw_exchange(served.addr, wrong_key).await), 401);
    let basic = format!("GET /v1/queue HTTP/1.1\r\nHost: b\r\nAuthorization: Basic {KEY}\r\nConnection: close\r\n\r\n");
    assert_eq!(status_of(&raw_exchange(served.addr, basic.as_bytes()).await), 401, "only a bearer key counts");
    let unknown_unauthenticated = b"GET /nope HTTP/1.1\r\nHost: b\r\nConnection: close\r\n\r\n";
    assert_eq!(
        status_of(&raw_exchange(served.addr, unknown_unauthenticated).await),
        401,
        "no path probing without a key"
    );

    let answer = raw_exchange(served.addr, &request("GET", "/v1/nope", "")).await;
    assert_eq!((status_of(&answer), error_code(&answer).as_str()), (404, "not_found"));
    assert_eq!(status_of(&raw_exchange(served.addr, &request("POST", "/v1/jobs/a/delete", "{}")).await), 404);
    let answer = raw_exchange(served.addr, &request("GET", "/v1/jobs/poll", "")).await;
    assert_eq!(status_of(&answer), 405, "{answer}");
    assert!(answer.to_ascii_lowercase().contains("allow: post"), "{answer}");
    assert_eq!(status_of(&raw_exchange(served.addr, &request("DELETE", "/v1/queue", "")).await), 405);
    assert_eq!(status_of(&raw_exchange(served.addr, &request("GET", "/v1/jobs/a/ack", "")).await), 405);
    let answer = raw_exchange(served.addr, &request("POST", "/v1/jobs/a%20b/ack", "{}")).await;
    assert_eq!((status_of(&answer), error_code(&answer).as_str()), (400, "bad_job_id"));

    // Not HTTP at all: hyper answers 400 and closes; the listener is unaffected.
    let answer = raw_exchange(served.addr, b"\x16\x03\x01 garbage garbage\r\n\r\n").await;
    assert!(answer.is_empty() || status_of(&answer) == 400, "{answer:?}");
    still_serving(&served).await;
}

#[tokio::test]
async fn admin_endpoints_submit_and_read_results() {
    let served = serve_new().await;
    let body = serde_json::to_string(&job("adm")).unwrap();
    let answer = raw_exchange(served.addr, &request("POST", "/admin/v1/jobs", &body)).await;
    assert_eq!(status_of(&answer), 201, "{answer}");
    let answer = raw_exchange(served.addr, &request("POST", "/admin/v1/jobs", &body)).await;
    assert_eq!((status_of(&answer), error_code(&answer).as_str()), (409, "duplicate"));

    let answer = raw_exchange(served.addr, &request("GET", "/admin/v1/results/adm", "")).await;
    assert_eq!(status_of(&answer), 404);
    let result = JobResult::new(id("adm"), Outcome::TimedOut, "deadline");
    let answer =
        raw_exchange(served.addr, &request("POST", "/v1/jobs/adm/result", &serde_json::to_string(&result).unwrap()))
            .await;
    assert_eq!(status_of(&answer), 204, "{answer}");
    let answer = raw_exchange(served.addr, &request("GET", "/admin/v1/results/adm", "")).await;
    assert_eq!(serde_json::from_str::<JobResult>(body_of(&answer)).unwrap(), result);
    let answer = raw_exchange(served.addr, &request("GET", "/admin/v1/results", "")).await;
    let all: serde_json::Value = serde_json::from_str(body_of(&answer)).unwrap();
    assert_eq!(all["adm"]["outcome"], "timed_out");
    let answer = raw_exchange(served.addr, &request("GET", "/admin/v1/counters", "")).await;
    let counters: serde_json::Value = serde_json::from_str(body_of(&answer)).unwrap();
    assert_eq!(counters["adm"]["results_accepted"], 1, "{counters}");
    assert_eq!(counters["adm"]["deliveries"], 0, "{counters}");

    let calls = served.broker.calls();
    assert_eq!(calls.len(), 7);
    assert!(calls.iter().skip(2).take(3).all(|c| c.job_id.as_ref().map(|i| i.as_str()) == Some("adm")), "{calls:?}");
}

#[tokio::test]
async fn redelivery_over_http_with_a_fake_clock() {
    let now = Arc::new(Mutex::new(Instant::now()));
    let clock = {
        let now = now.clone();
        Arc::new(move || *now.lock().unwrap())
    };
    let broker = EmbeddedBroker::with_clock(
        EmbeddedOptions { visibility_timeout: Duration::from_secs(60), location_key: common::secret::Secret::new(KEY) },
        clock,
    );
    let served = serve(broker).await;
    served.broker.submit(job("c")).unwrap();
    let poll_body = serde_json::to_string(&poll_req(1)).unwrap();
    let first = raw_exchange(served.addr, &request("POST", "/v1/jobs/poll", &poll_body)).await;
    let first: serde_json::Value = serde_json::from_str(body_of(&first)).unwrap();
    assert_eq!((first["jobs"][0]["attempt"].as_u64(), first["visibility_timeout_secs"].as_u64()), (Some(1), Some(60)));
    let empty = raw_exchange(served.addr, &request("POST", "/v1/jobs/poll", &poll_body)).await;
    assert!(body_of(&empty).contains(r#""jobs":[]"#), "{empty}");

    *now.lock().unwrap() += Duration::from_secs(61);
    let again = raw_exchange(served.addr, &request("POST", "/v1/jobs/poll", &poll_body)).await;
    let again: serde_json::Value = serde_json::from_str(body_of(&again)).unwrap();
    assert_eq!(again["jobs"][0]["attempt"].as_u64(), Some(2));
    let stale = raw_exchange(served.addr, &request("POST", "/v1/jobs/c/ack", r#"{"consumer":"x","attempt":1}"#)).await;
    assert_eq!((status_of(&stale), error_code(&stale).as_str()), (409, "lease_lost"));
    let fresh = raw_exchange(served.addr, &request("POST", "/v1/jobs/c/ack", r#"{"consumer":"x","attempt":2}"#)).await;
    assert_eq!(status_of(&fresh), 204);
    let counters = served.broker.counters(&id("c")).unwrap();
    assert_eq!((counters.deliveries, counters.redeliveries_by_timeout, counters.acks), (2, 1, 1));
}

#[tokio::test]
async fn wait_for_results_wakes_on_a_stored_result() {
    let served = serve_new().await;
    served.broker.submit(job("w")).unwrap();
    let waiter = {
        let b = served.broker.clone();
        tokio::spawn(async move { b.wait_for_result(&id("w"), Duration::from_secs(10)).await })
    };
    let result = JobResult::new(id("w"), Outcome::Succeeded, "");
    let answer =
        raw_exchange(served.addr, &request("POST", "/v1/jobs/w/result", &serde_json::to_string(&result).unwrap()))
            .await;
    assert_eq!(status_of(&answer), 204);
    assert_eq!(waiter.await.unwrap(), Some(result));
    assert_eq!(served.broker.wait_for_results(1, Duration::from_millis(1)).await.len(), 1);
    assert!(served.broker.wait_for_result(&id("other"), Duration::from_millis(10)).await.is_none());
}

#[tokio::test]
async fn shutdown_stops_the_server() {
    let broker = broker(Duration::from_secs(5));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(broker.serve(listener, async {
        let _ = stopped.await;
    }));
    assert_eq!(status_of(&raw_exchange(addr, &request("GET", "/v1/queue", "")).await), 200);
    stop.send(()).unwrap();
    server.await.unwrap().unwrap();
    assert!(tokio::net::TcpStream::connect(addr).await.is_err(), "listener closed");
}
