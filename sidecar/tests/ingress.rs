//! Ingress for persistent workloads: key check, key and token stripping, token kept for
//! the result, 429 passed through.
#![allow(clippy::unwrap_used)] // in a test, an unwrap is an assertion
mod support;

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use std::convert::Infallible;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use support::*;

const KEY: &str = "ingress-key-91";

/// A persistent runtime: 202 for dispatches (429 when `busy`), records what it saw.
async fn runtime(busy: Arc<AtomicBool>) -> (std::net::SocketAddr, Arc<Mutex<Vec<Seen>>>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let seen: Arc<Mutex<Vec<Seen>>> = Arc::default();
    let s = seen.clone();
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                return;
            };
            let (s, busy) = (s.clone(), busy.clone());
            tokio::spawn(async move {
                let svc = service_fn(move |req: Request<Incoming>| {
                    let (s, busy) = (s.clone(), busy.clone());
                    async move {
                        let (parts, body) = req.into_parts();
                        let body = body.collect().await.unwrap().to_bytes();
                        s.lock().unwrap().push(Seen {
                            method: parts.method.to_string(),
                            uri: parts.uri.to_string(),
                            headers: parts.headers,
                            body,
                            connection: 0,
                        });
                        let resp = if busy.load(Ordering::SeqCst) {
                            Response::builder()
                                .status(429)
                                .header("retry-after", "3")
                                .body(Full::new(Bytes::from_static(b"busy")))
                        } else {
                            Response::builder().status(202).body(Full::new(Bytes::from_static(b"accepted")))
                        };
                        Ok::<_, Infallible>(resp.unwrap())
                    }
                });
                let _ = hyper::server::conn::http1::Builder::new().serve_connection(TokioIo::new(stream), svc).await;
            });
        }
    });
    (addr, seen)
}

fn dispatch(key: Option<&str>, id: &str, token: &str) -> Request<Full<Bytes>> {
    let mut b = Request::post("/v1/jobs").header("host", "runtime").header("x-job-token", token);
    if let Some(k) = key {
        b = b.header("x-internal-api-key", k);
    }
    b.body(Full::new(Bytes::from(format!(r#"{{"id":"{id}","runtime_type":"rt","timeout_secs":5,"attempt":1}}"#))))
        .unwrap()
}

/// The fake job manager's next call is job `id`'s result, with the internal key and `token`.
async fn expect_result(jm: &mut FakeJobManager, id: &str, token: &str) {
    let call = jm.next_call().await;
    assert_eq!(call.uri, format!("/internal/v1/jobs/{id}/result"));
    assert_eq!(
        (call.headers["x-internal-api-key"].to_str().unwrap(), call.headers["x-job-token"].to_str().unwrap()),
        (KEY, token)
    );
}

#[tokio::test]
async fn ingress_checks_key_strips_secrets_and_keeps_token_for_result() {
    let busy = Arc::new(AtomicBool::new(false));
    let (rt_addr, seen) = runtime(busy.clone()).await;
    let mut jm = FakeJobManager::start(&[]).await;
    let jm_url = format!("http://{}", jm.addr);
    let ingress_upstream = rt_addr.to_string();
    let cfg = config(
        &["--ingress-listen", "127.0.0.1:0", "--ingress-upstream", &ingress_upstream, "--job-manager-url", &jm_url],
        &[("SIDECAR_INTERNAL_API_KEY", KEY)],
    );
    let sc = Sidecar::start(cfg, resolver(&[])).await;
    let ingress = sc.ingress.unwrap();

    let (status, h, _) = send(ingress, dispatch(None, "p1", "tok-p1")).await;
    assert_eq!((status, h["x-sidecar-error"].to_str().unwrap()), (StatusCode::UNAUTHORIZED, "missing_key"));
    let (status, h, _) = send(ingress, dispatch(Some("ingress-key-92"), "p1", "tok-p1")).await;
    assert_eq!((status, h["x-sidecar-error"].to_str().unwrap()), (StatusCode::FORBIDDEN, "bad_key"));
    assert!(seen.lock().unwrap().is_empty(), "refused requests never reach the runtime");

    let (status, _, body) = send(ingress, dispatch(Some(KEY), "p1", "tok-p1")).await;
    assert_eq!((status, &body[..]), (StatusCode::ACCEPTED, &b"accepted"[..]));
    let got = seen.lock().unwrap().last().cloned().unwrap();
    assert_eq!(got.uri, "/v1/jobs");
    assert!(
        !got.headers.contains_key("x-internal-api-key") && !got.headers.contains_key("x-job-token"),
        "{:?}",
        got.headers
    );
    assert!(String::from_utf8_lossy(&got.body).contains(r#""id":"p1""#));

    // Busy runtime: its 429 comes back unchanged, and no token is kept.
    busy.store(true, Ordering::SeqCst);
    let (status, h, body) = send(ingress, dispatch(Some(KEY), "p2", "tok-p2")).await;
    assert_eq!(
        (status, h["retry-after"].to_str().unwrap(), &body[..]),
        (StatusCode::TOO_MANY_REQUESTS, "3", &b"busy"[..])
    );

    // The runtime reports p1 through the local API; the sidecar adds key and token.
    let (status, _, _) = send(sc.addr, post_json("/v1/jobs/p1/result", r#"{"outcome":"succeeded"}"#)).await;
    assert_eq!(status, StatusCode::ACCEPTED);
    expect_result(&mut jm, "p1", "tok-p1").await;
    let (status, _, _) = send(sc.addr, post_json("/v1/jobs/p1/result", r#"{"outcome":"succeeded"}"#)).await;
    assert_eq!(status, StatusCode::CONFLICT, "one result per job");
    let (status, _, _) = send(sc.addr, post_json("/v1/jobs/p2/result", r#"{"outcome":"succeeded"}"#)).await;
    assert_eq!(status, StatusCode::NOT_FOUND, "p2 was refused by the runtime, so it has no token here");
    sc.healthy().await;
    sc.stop().await.unwrap();
}

/// A fast runtime posts its result before its answer to the dispatch is back at the
/// sidecar: the result must still find the job's token (it used to get 404, and the job
/// ended as a timeout).
#[tokio::test]
async fn result_posted_before_the_dispatch_answer_is_accepted() {
    let sidecar_addr: Arc<Mutex<Option<std::net::SocketAddr>>> = Arc::default();
    let result_status: Arc<Mutex<Option<StatusCode>>> = Arc::default();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let rt_addr = listener.local_addr().unwrap();
    let (local, status_seen) = (sidecar_addr.clone(), result_status.clone());
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let (local, status_seen) = (local.clone(), status_seen.clone());
            tokio::spawn(async move {
                let svc = service_fn(move |req: Request<Incoming>| {
                    let (local, status_seen) = (local.clone(), status_seen.clone());
                    async move {
                        let body = req.into_body().collect().await.unwrap().to_bytes();
                        let job: serde_json::Value = serde_json::from_slice(&body).unwrap();
                        let id = job["id"].as_str().unwrap().to_string();
                        let addr = local.lock().unwrap().expect("sidecar address set");
                        let path = format!("/v1/jobs/{id}/result");
                        let (status, _, _) = send(addr, post_json(&path, r#"{"outcome":"succeeded"}"#)).await;
                        *status_seen.lock().unwrap() = Some(status);
                        Ok::<_, Infallible>(Response::builder().status(202).body(Full::new(Bytes::new())).unwrap())
                    }
                });
                let _ = hyper::server::conn::http1::Builder::new().serve_connection(TokioIo::new(stream), svc).await;
            });
        }
    });
    let mut jm = FakeJobManager::start(&[]).await;
    let (jm_url, upstream) = (format!("http://{}", jm.addr), rt_addr.to_string());
    let cfg = config(
        &["--ingress-listen", "127.0.0.1:0", "--ingress-upstream", &upstream, "--job-manager-url", &jm_url],
        &[("SIDECAR_INTERNAL_API_KEY", KEY)],
    );
    let sc = Sidecar::start(cfg, resolver(&[])).await;
    *sidecar_addr.lock().unwrap() = Some(sc.addr);
    let (status, _, _) = send(sc.ingress.unwrap(), dispatch(Some(KEY), "fast", "tok-fast")).await;
    assert_eq!(status, StatusCode::ACCEPTED);
    assert_eq!(*result_status.lock().unwrap(), Some(StatusCode::ACCEPTED), "the early result found its token");
    expect_result(&mut jm, "fast", "tok-fast").await;
    // The consumed token is not brought back by the dispatch's late answer.
    let (status, _, _) = send(sc.addr, post_json("/v1/jobs/fast/result", r#"{"outcome":"succeeded"}"#)).await;
    assert_eq!(status, StatusCode::CONFLICT);
    sc.stop().await.unwrap();
}

/// A restarted sidecar container (same spool emptyDir) still accepts the result of a job
/// its runtime took before the restart, with that job's token.
#[tokio::test]
async fn tokens_of_dispatched_jobs_survive_a_sidecar_restart() {
    let busy = Arc::new(AtomicBool::new(false));
    let (rt_addr, _seen) = runtime(busy).await;
    let mut jm = FakeJobManager::start(&[]).await;
    let spool = temp_dir("spool");
    let (jm_url, upstream) = (format!("http://{}", jm.addr), rt_addr.to_string());
    let args = [
        "--ingress-listen",
        "127.0.0.1:0",
        "--ingress-upstream",
        upstream.as_str(),
        "--job-manager-url",
        jm_url.as_str(),
        "--spool-dir",
        spool.to_str().unwrap(),
    ];
    let first = Sidecar::start(config(&args, &[("SIDECAR_INTERNAL_API_KEY", KEY)]), resolver(&[])).await;
    let (status, _, _) = send(first.ingress.unwrap(), dispatch(Some(KEY), "kept", "tok-kept")).await;
    assert_eq!(status, StatusCode::ACCEPTED);
    first.stop().await.unwrap();

    let second = Sidecar::start(config(&args, &[("SIDECAR_INTERNAL_API_KEY", KEY)]), resolver(&[])).await;
    let (status, _, _) = send(second.addr, post_json("/v1/jobs/kept/result", r#"{"outcome":"succeeded"}"#)).await;
    assert_eq!(status, StatusCode::ACCEPTED);
    expect_result(&mut jm, "kept", "tok-kept").await;
    // Spent: not kept for a third run.
    let (status, _, _) = send(second.addr, post_json("/v1/jobs/kept/result", r#"{"outcome":"succeeded"}"#)).await;
    assert_eq!(status, StatusCode::CONFLICT);
    second.stop().await.unwrap();
    let left: Vec<_> = std::fs::read_dir(spool.join("ingress-tokens")).unwrap().flatten().collect();
    assert!(left.is_empty(), "{left:?}");
}
