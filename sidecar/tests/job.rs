//! Job mode: the local runtime API, result delivery to a fake job manager (retries,
//! spool re-delivery after a restart, shutdown drain) and internal-key injection.
#![allow(clippy::unwrap_used)] // in a test, an unwrap is an assertion
mod support;

use http::StatusCode;
use support::*;

const KEY: &str = "internal-key-7f3a";

fn job_config(
    dir: &std::path::Path,
    jm: std::net::SocketAddr,
    spool: &std::path::Path,
    extra: &[&str],
) -> sidecar::config::Config {
    let jm_url = format!("http://{jm}");
    let mut args =
        vec!["--job-dir", dir.to_str().unwrap(), "--job-manager-url", &jm_url, "--spool-dir", spool.to_str().unwrap()];
    args.extend_from_slice(extra);
    config(&args, &[("SIDECAR_INTERNAL_API_KEY", KEY)])
}

#[tokio::test]
async fn job_is_served_without_secrets_and_result_delivered_once() {
    let mut jm = FakeJobManager::start(&[]).await;
    let (dir, spool) = (job_dir("job-1", "tok-1"), temp_dir("spool"));
    let sc = Sidecar::start(job_config(&dir, jm.addr, &spool, &[]), resolver(&[])).await;

    let (status, _, body) = sc.get_local("/v1/job").await;
    assert_eq!(status, StatusCode::OK);
    let job: serde_json::Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(job["id"], "job-1");
    assert_eq!(job["attempt"], 2);
    assert_eq!(job["payload"]["script"], "fetch('http://example.com')");
    let text = String::from_utf8_lossy(&body);
    assert!(!text.contains("tok-1") && !text.contains("signature") && !text.contains(KEY), "{text}");

    // Absolute-form to the sidecar itself works too (runtimes with HTTP_PROXY set).
    let (status, _, _) = proxy_get(sc.addr, &format!("http://{}/v1/job", sc.addr)).await;
    assert_eq!(status, StatusCode::OK);

    let (status, _, body) = send(
        sc.addr,
        post_json("/v1/result", r#"{"outcome":"succeeded","message":"done","output":{"n":1},"duration_ms":12}"#),
    )
    .await;
    assert_eq!(status, StatusCode::ACCEPTED, "{body:?}");

    let call = jm.next_call().await;
    assert_eq!(call.method, "POST");
    assert_eq!(call.uri, "/internal/v1/jobs/job-1/result");
    assert_eq!(call.headers["x-internal-api-key"], KEY);
    assert_eq!(call.headers["x-job-token"], "tok-1");
    let result: common::JobResult = serde_json::from_slice(&call.body).unwrap();
    assert_eq!(result.job_id.as_str(), "job-1");
    assert_eq!(result.outcome, common::Outcome::Succeeded);
    assert_eq!(result.duration_ms, Some(12));

    let (status, headers, _) = send(sc.addr, post_json("/v1/result", r#"{"outcome":"failed"}"#)).await;
    assert_eq!((status, headers["x-sidecar-error"].to_str().unwrap()), (StatusCode::CONFLICT, "conflict"));
    eventually("spool emptied", || async { std::fs::read_dir(&spool).unwrap().next().is_none() }).await;
    sc.stop().await.unwrap();
}

#[tokio::test]
async fn bad_results_are_400_and_413() {
    let jm = FakeJobManager::start(&[]).await;
    let (dir, spool) = (job_dir("job-2", "tok-2"), temp_dir("spool"));
    let sc = Sidecar::start(job_config(&dir, jm.addr, &spool, &["--max-body-bytes", "1024"]), resolver(&[])).await;
    for body in [r#"{"outcome":"timed_out"}"#, "not json", r#"{"outcome":"succeeded","extra":1}"#] {
        let (status, headers, _) = send(sc.addr, post_json("/v1/result", body)).await;
        assert_eq!(
            (status, headers["x-sidecar-error"].to_str().unwrap()),
            (StatusCode::BAD_REQUEST, "bad_request"),
            "{body}"
        );
    }
    let (status, _, _) = send(sc.addr, post_json("/v1/job", "{}")).await;
    assert_eq!(status, StatusCode::METHOD_NOT_ALLOWED);
    // A malformed result does not use up the job's one result.
    let (status, _, _) = send(sc.addr, post_json("/v1/result", r#"{"outcome":"failed"}"#)).await;
    assert_eq!(status, StatusCode::ACCEPTED);
    sc.healthy().await;
    sc.stop().await.unwrap();
}

/// A result over the limit (the job manager's `maxResultBytes`, passed as
/// `--max-body-bytes`) is refused with 413 before it is acknowledged, and the job is
/// reported `failed` saying why: never "accepted" and then lost.
#[tokio::test]
async fn a_result_over_the_limit_is_413_and_the_job_is_reported_failed() {
    struct Case {
        name: &'static str,
        body: String,
        message: &'static str,
    }
    let cases = [
        Case {
            name: "declared length over the limit",
            body: format!(r#"{{"outcome":"succeeded","message":"{}"}}"#, "x".repeat(4096)),
            message: "result too large: 4132 bytes > 1024 bytes limit",
        },
        Case {
            // Under the limit as sent, over it once the job id is added and escapes
            // re-encoded: what the job manager would measure.
            name: "over the limit as reported",
            body: format!(r#"{{"outcome":"succeeded","message":"{}"}}"#, "\\u0001".repeat(160)),
            message: "result too large: 1027 bytes > 1024 bytes limit",
        },
    ];
    for (i, c) in cases.into_iter().enumerate() {
        let mut jm = FakeJobManager::start(&[]).await;
        let id = format!("big-{i}");
        let (dir, spool) = (job_dir(&id, "tok-big"), temp_dir("spool"));
        let sc = Sidecar::start(job_config(&dir, jm.addr, &spool, &["--max-body-bytes", "1024"]), resolver(&[])).await;
        let (status, headers, body) = send(sc.addr, post_json("/v1/result", &c.body)).await;
        assert_eq!(
            (status, headers["x-sidecar-error"].to_str().unwrap()),
            (StatusCode::PAYLOAD_TOO_LARGE, "result_too_large"),
            "{}",
            c.name
        );
        assert_eq!(
            String::from_utf8_lossy(&body),
            format!("{}; the job is reported failed\n", c.message),
            "{}",
            c.name
        );
        let call = jm.next_call().await;
        assert_eq!(call.uri, format!("/internal/v1/jobs/{id}/result"), "{}", c.name);
        let reported: common::JobResult = serde_json::from_slice(&call.body).unwrap();
        assert_eq!((reported.outcome, reported.message.as_str()), (common::Outcome::Failed, c.message), "{}", c.name);
        // That was the job's one outcome.
        let (status, _, _) = send(sc.addr, post_json("/v1/result", r#"{"outcome":"succeeded"}"#)).await;
        assert_eq!(status, StatusCode::CONFLICT, "{}", c.name);
        sc.stop().await.unwrap();
    }
}

/// A job manager that still refuses the result as too large (mismatched versions or
/// settings): the sidecar reports the job failed saying so instead of dropping it.
#[tokio::test]
async fn a_413_from_the_job_manager_becomes_a_failed_result_not_a_silent_drop() {
    let mut jm = FakeJobManager::start(&[413, 200]).await;
    let (dir, spool) = (job_dir("job-413", "tok-413"), temp_dir("spool"));
    let sc = Sidecar::start(job_config(&dir, jm.addr, &spool, &[]), resolver(&[])).await;
    let (status, _, _) =
        send(sc.addr, post_json("/v1/result", r#"{"outcome":"succeeded","message":"a big one"}"#)).await;
    assert_eq!(status, StatusCode::ACCEPTED);
    let first = jm.next_call().await;
    assert_eq!(first.connection, 413);
    let second = jm.next_call().await;
    assert_eq!((second.connection, second.headers["x-job-token"].to_str().unwrap()), (200, "tok-413"));
    let reported: common::JobResult = serde_json::from_slice(&second.body).unwrap();
    assert_eq!(reported.outcome, common::Outcome::Failed);
    assert_eq!(
        reported.message,
        format!(
            "result too large: the job manager refused {} bytes with 413 (its limit is below this sidecar's; mismatched versions or settings?)",
            first.body.len()
        )
    );
    eventually("counted, spool emptied", || async {
        sc.metrics().await.contains(r#"sidecar_result_deliveries_total{reason="replaced_too_large"} 1"#)
            && std::fs::read_dir(&spool).unwrap().next().is_none()
    })
    .await;
    sc.stop().await.unwrap();
}

#[tokio::test]
async fn retries_on_5xx_and_429_until_delivered() {
    let mut jm = FakeJobManager::start(&[500, 503, 429, 200]).await;
    let (dir, spool) = (job_dir("job-3", "tok-3"), temp_dir("spool"));
    let sc = Sidecar::start(job_config(&dir, jm.addr, &spool, &[]), resolver(&[])).await;
    let (status, _, _) = send(sc.addr, post_json("/v1/result", r#"{"outcome":"succeeded"}"#)).await;
    assert_eq!(status, StatusCode::ACCEPTED);
    for want in [500, 503, 429, 200] {
        let call = jm.next_call().await;
        assert_eq!(call.connection, want);
        assert_eq!(call.headers["x-job-token"], "tok-3");
    }
    eventually("delivery counted", || async {
        let m = sc.metrics().await;
        m.contains(r#"sidecar_result_deliveries_total{reason="delivered"} 1"#)
            && m.contains("sidecar_result_retries_total 3")
    })
    .await;
    sc.stop().await.unwrap();
}

#[tokio::test]
async fn conflict_from_job_manager_counts_as_done_and_4xx_is_permanent() {
    let mut jm = FakeJobManager::start(&[409]).await;
    let (dir, spool) = (job_dir("job-4", "tok-4"), temp_dir("spool"));
    let sc = Sidecar::start(job_config(&dir, jm.addr, &spool, &[]), resolver(&[])).await;
    send(sc.addr, post_json("/v1/result", r#"{"outcome":"succeeded"}"#)).await;
    assert_eq!(jm.next_call().await.connection, 409);
    eventually("409 counted as already accepted", || async {
        sc.metrics().await.contains(r#"sidecar_result_deliveries_total{reason="already_accepted"} 1"#)
    })
    .await;
    sc.stop().await.unwrap();

    let mut jm = FakeJobManager::start(&[401]).await;
    let (dir, spool) = (job_dir("job-5", "tok-5"), temp_dir("spool"));
    let sc = Sidecar::start(job_config(&dir, jm.addr, &spool, &[]), resolver(&[])).await;
    send(sc.addr, post_json("/v1/result", r#"{"outcome":"succeeded"}"#)).await;
    assert_eq!(jm.next_call().await.connection, 401);
    eventually("401 is permanent", || async {
        sc.metrics().await.contains(r#"sidecar_result_deliveries_total{reason="rejected"} 1"#)
    })
    .await;
    assert!(jm.calls.try_recv().is_err(), "no retry after a permanent refusal");
    sc.stop().await.unwrap();
}

#[tokio::test]
async fn spooled_result_survives_a_restart() {
    // A port with nobody listening: the job manager is "down".
    let jm_addr = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap();
    let (dir, spool) = (job_dir("job-6", "tok-6"), temp_dir("spool"));
    let sc = Sidecar::start(job_config(&dir, jm_addr, &spool, &["--shutdown-grace-secs", "0"]), resolver(&[])).await;
    let (status, _, _) = send(sc.addr, post_json("/v1/result", r#"{"outcome":"failed","message":"boom"}"#)).await;
    assert_eq!(status, StatusCode::ACCEPTED);
    assert!(spool.join("job-6.json").exists(), "spooled before 202");
    sc.stop().await.unwrap();
    assert!(spool.join("job-6.json").exists(), "undelivered result stays spooled");

    let mut jm = FakeJobManager::serve(tokio::net::TcpListener::bind(jm_addr).await.unwrap(), &[]);
    let sc = Sidecar::start(job_config(&dir, jm_addr, &spool, &[]), resolver(&[])).await;
    let call = jm.next_call().await;
    assert_eq!(call.uri, "/internal/v1/jobs/job-6/result");
    assert_eq!(call.headers["x-job-token"], "tok-6");
    let result: common::JobResult = serde_json::from_slice(&call.body).unwrap();
    assert_eq!(result.message, "boom");
    // The restarted sidecar knows the job already has its result.
    let (status, _, _) = send(sc.addr, post_json("/v1/result", r#"{"outcome":"succeeded"}"#)).await;
    assert_eq!(status, StatusCode::CONFLICT);
    eventually("spool emptied", || async { !spool.join("job-6.json").exists() }).await;
    sc.stop().await.unwrap();
}

#[tokio::test]
async fn shutdown_waits_for_in_flight_delivery() {
    let mut jm = FakeJobManager::start(&[500, 500, 200]).await;
    let (dir, spool) = (job_dir("job-7", "tok-7"), temp_dir("spool"));
    let sc = Sidecar::start(job_config(&dir, jm.addr, &spool, &["--shutdown-grace-secs", "10"]), resolver(&[])).await;
    send(sc.addr, post_json("/v1/result", r#"{"outcome":"succeeded"}"#)).await;
    sc.stop().await.unwrap();
    let mut statuses = Vec::new();
    while let Ok(call) = jm.calls.try_recv() {
        statuses.push(call.connection);
    }
    assert_eq!(statuses, [500, 500, 200], "stop returned only after delivery");
    assert!(!spool.join("job-7.json").exists());
}

#[tokio::test]
async fn internal_key_added_for_job_manager_and_stripped_elsewhere() {
    let mut jm = FakeJobManager::start(&[]).await;
    let origin = Origin::start().await;
    let (dir, spool) = (job_dir("job-8", "tok-8"), temp_dir("spool"));
    // The job manager is on loopback here (local executor); it is reachable as the
    // configured endpoint without allowing loopback in general.
    let sc = Sidecar::start(job_config(&dir, jm.addr, &spool, &[]), resolver(&[])).await;
    let req = http::Request::get(format!("http://{}/internal/v1/anything", jm.addr))
        .header("x-internal-api-key", "forged-by-runtime")
        .body(http_body_util::Full::default())
        .unwrap();
    let (status, headers, _) = send(sc.addr, req).await;
    assert_eq!(status, StatusCode::OK);
    assert!(!headers.contains_key("x-internal-api-key"));
    assert_eq!(jm.next_call().await.headers["x-internal-api-key"], KEY);

    // Anything else: the key is never added, and a runtime-sent one is dropped.
    let (status, headers, _) = proxy_get(sc.addr, &origin.url("/")).await;
    assert_eq!((status, headers["x-sidecar-error"].to_str().unwrap()), (StatusCode::FORBIDDEN, "loopback"));
    sc.stop().await.unwrap();

    let sc = Sidecar::start(job_config(&dir, jm.addr, &spool, &["--allow-cidr", "127.0.0.1/32"]), resolver(&[])).await;
    let req = http::Request::get(origin.url("/"))
        .header("x-internal-api-key", "forged-by-runtime")
        .body(http_body_util::Full::default())
        .unwrap();
    let (status, headers, _) = send(sc.addr, req).await;
    assert_eq!(status, StatusCode::OK);
    assert!(!origin.last().headers.contains_key("x-internal-api-key"));
    assert!(!headers.contains_key("x-internal-api-key"), "origin's key header stripped from the response");
    sc.stop().await.unwrap();
}

/// Kubernetes hand-off: only the job id and token are given (env); the sidecar fetches
/// the job from the job manager (retrying its 503/404 while the record settles), is not
/// ready before it has it, and then serves and reports it like a job directory's.
#[tokio::test]
async fn job_handed_over_by_id_and_token_is_fetched_before_ready() {
    let mut jm = FakeJobManager::start(&[503, 404, 503, 503, 200]).await;
    *jm.job.lock().unwrap() = Some(
        r#"{"id":"job-9","runtime_type":"rt","timeout_secs":30,"attempt":3,"payload":{"script":"x"}}"#.to_string(),
    );
    let spool = temp_dir("spool");
    let jm_url = format!("http://{}", jm.addr);
    let cfg = config(
        &["--job-id", "job-9", "--job-manager-url", &jm_url, "--spool-dir", spool.to_str().unwrap()],
        &[("SIDECAR_INTERNAL_API_KEY", KEY), ("SIDECAR_JOB_TOKEN", "tok-9")],
    );
    let extras = sidecar::Extras { resolver: Some(std::sync::Arc::new(resolver(&[]))), ..Default::default() };
    let sc = Sidecar::spawn(cfg, extras).await;
    for (i, want) in [503, 404, 503, 503, 200].into_iter().enumerate() {
        if i == 1 {
            // Four refusals cost at least 50 + 100 + 200 ms of backoff: not ready yet.
            assert_eq!(sc.get_local("/readyz").await.0, StatusCode::SERVICE_UNAVAILABLE);
        }
        let call = jm.next_call().await;
        assert_eq!(
            (call.method.as_str(), call.uri.as_str(), call.connection),
            ("GET", "/internal/v1/jobs/job-9", want)
        );
        assert_eq!(call.headers["x-internal-api-key"], KEY);
        assert_eq!(call.headers["x-job-token"], "tok-9");
    }
    eventually("ready once fetched", || async { sc.get_local("/readyz").await.0 == StatusCode::OK }).await;
    let (status, _, body) = sc.get_local("/v1/job").await;
    assert_eq!(status, StatusCode::OK);
    let job: serde_json::Value = serde_json::from_slice(&body).unwrap();
    assert_eq!((job["id"].as_str(), job["attempt"].as_u64()), (Some("job-9"), Some(3)));
    assert_eq!(job["payload"]["script"], "x");
    assert!(!String::from_utf8_lossy(&body).contains("tok-9"));
    let (status, _, _) = send(sc.addr, post_json("/v1/result", r#"{"outcome":"succeeded"}"#)).await;
    assert_eq!(status, StatusCode::ACCEPTED);
    let call = jm.next_call().await;
    assert_eq!((call.method.as_str(), call.uri.as_str()), ("POST", "/internal/v1/jobs/job-9/result"));
    assert_eq!(call.headers["x-job-token"], "tok-9");
    sc.stop().await.unwrap();
}

/// A job manager that answers the fetch with a refusal (403: not this job's token) or
/// another job ends the sidecar with an error naming the cause: never a runtime started
/// on the wrong job.
#[tokio::test]
async fn job_fetch_refused_or_wrong_job_is_an_error() {
    for (status, body, expect) in [
        (403, None, "403"),
        (200, Some(r#"{"id":"other","runtime_type":"rt","timeout_secs":30}"#), "got job other"),
        (200, Some("not json"), "not a job"),
    ] {
        let jm = FakeJobManager::start(&[status]).await;
        *jm.job.lock().unwrap() = body.map(str::to_string);
        let jm_url = format!("http://{}", jm.addr);
        let cfg = config(
            &["--job-id", "job-10", "--job-manager-url", &jm_url],
            &[("SIDECAR_INTERNAL_API_KEY", KEY), ("SIDECAR_JOB_TOKEN", "tok-10")],
        );
        let sc = Sidecar::spawn(cfg, sidecar::Extras::default()).await;
        let err =
            tokio::time::timeout(std::time::Duration::from_secs(10), sc.handle).await.unwrap().unwrap().unwrap_err();
        assert!(err.to_string().contains(expect), "{status} {body:?}: {err}");
        assert!(err.to_string().contains("job-10"), "{err}");
    }
}

/// A result upload that stalls is cut off (408) after the body read timeout, its job is
/// free again, and a duplicate after an accepted result is refused before its body is
/// read (the 409 comes back although none of the declared 10 MiB was sent).
#[tokio::test]
async fn slow_uploads_get_408_and_duplicates_409_unread() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut jm = FakeJobManager::start(&[]).await;
    let (dir, spool) = (job_dir("job-slow", "tok-slow"), temp_dir("spool"));
    let sc = Sidecar::start(job_config(&dir, jm.addr, &spool, &["--body-read-timeout-ms", "300"]), resolver(&[])).await;
    let head = |len: usize| {
        format!(
            "POST /v1/result HTTP/1.1\r\nHost: x\r\ncontent-type: application/json\r\ncontent-length: {len}\r\n\r\n"
        )
    };

    let started = std::time::Instant::now();
    let mut s = tokio::net::TcpStream::connect(sc.addr).await.unwrap();
    s.write_all(head(100).as_bytes()).await.unwrap();
    s.write_all(br#"{"outcome":"#).await.unwrap();
    let answer = tokio::time::timeout(std::time::Duration::from_secs(5), read_head(&mut s)).await.expect("answered");
    assert!(answer.starts_with("HTTP/1.1 408") && answer.contains("x-sidecar-error: body_timeout"), "{answer}");
    assert!(started.elapsed() >= std::time::Duration::from_millis(300), "{:?}", started.elapsed());
    let mut rest = Vec::new();
    let closed = tokio::time::timeout(std::time::Duration::from_secs(5), s.read_to_end(&mut rest)).await;
    assert!(closed.is_ok(), "the connection of a timed-out body is closed");

    // The job was not taken by the upload that failed.
    let (status, _, _) = send(sc.addr, post_json("/v1/result", r#"{"outcome":"succeeded"}"#)).await;
    assert_eq!(status, StatusCode::ACCEPTED);
    assert_eq!(jm.next_call().await.uri, "/internal/v1/jobs/job-slow/result");

    // A duplicate: its body (none sent here) is waited for only up to the read timeout
    // and never buffered; the 409 comes back either way.
    let mut s = tokio::net::TcpStream::connect(sc.addr).await.unwrap();
    s.write_all(head(10 * 1024 * 1024 - 1).as_bytes()).await.unwrap();
    let answer = tokio::time::timeout(std::time::Duration::from_secs(2), read_head(&mut s)).await.expect("answered");
    assert!(answer.starts_with("HTTP/1.1 409"), "{answer}");
    // Sent whole, it is read and thrown away, and the client gets its 409.
    let dup = "x".repeat(10 * 1024 * 1024 - 1);
    let (status, _, _) = send(sc.addr, post_json("/v1/result", &dup)).await;
    assert_eq!(status, StatusCode::CONFLICT);
    sc.healthy().await;
    sc.stop().await.unwrap();
}

#[tokio::test]
async fn wrong_methods_get_405_with_allow_and_livez_answers() {
    let jm = FakeJobManager::start(&[]).await;
    let (dir, spool) = (job_dir("job-405", "tok-405"), temp_dir("spool"));
    let sc = Sidecar::start(job_config(&dir, jm.addr, &spool, &[]), resolver(&[])).await;
    for (method, path, allow) in
        [("POST", "/v1/job", "GET"), ("GET", "/v1/result", "POST"), ("PUT", "/v1/result", "POST")]
    {
        let answer = raw_exchange(
            sc.addr,
            format!("{method} {path} HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\nConnection: close\r\n\r\n").as_bytes(),
        )
        .await;
        assert!(answer.starts_with("HTTP/1.1 405"), "{method} {path}: {answer}");
        assert!(
            answer.to_ascii_lowercase().contains(&format!("allow: {}", allow.to_ascii_lowercase())),
            "{method} {path}: {answer}"
        );
    }
    let (status, _, body) = sc.get_local("/livez").await;
    assert_eq!((status, &body[..]), (StatusCode::OK, &b"ok\n"[..]));
    sc.stop().await.unwrap();
}
