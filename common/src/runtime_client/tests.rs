//! The client against an in-test fake sidecar on loopback, and the persistent server
//! driven over loopback.
use super::*;
use crate::runtime_api::RuntimeOutcome;
use std::sync::Mutex;
use tokio::sync::Notify;

/// What the fake sidecar was asked, and how it answers.
#[derive(Default)]
struct Fake {
    /// `(path, body)` of each request.
    seen: Mutex<Vec<(String, Bytes)>>,
    /// Answers, in order; the last one repeats.
    answers: Mutex<Vec<(u16, Option<&'static str>, &'static str)>>,
}

/// A fake sidecar answering from `answers` (status, `Retry-After`, body).
async fn fake_sidecar(answers: Vec<(u16, Option<&'static str>, &'static str)>) -> (String, Arc<Fake>) {
    let fake = Arc::new(Fake { answers: Mutex::new(answers), ..Fake::default() });
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let state = fake.clone();
    tokio::spawn(async move {
        loop {
            let (stream, _) = listener.accept().await.unwrap();
            let state = state.clone();
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(move |req: Request<hyper::body::Incoming>| {
                    let state = state.clone();
                    async move {
                        let path = req.uri().path().to_string();
                        let body = req.into_body().collect().await.unwrap().to_bytes();
                        state.seen.lock().unwrap().push((path, body));
                        let (status, retry_after, text) = {
                            let mut answers = state.answers.lock().unwrap();
                            if answers.len() > 1 {
                                answers.remove(0)
                            } else {
                                answers[0]
                            }
                        };
                        let mut resp = Response::builder().status(status);
                        if let Some(secs) = retry_after {
                            resp = resp.header(header::RETRY_AFTER, secs);
                        }
                        Ok::<_, std::convert::Infallible>(resp.body(Full::new(Bytes::from(text))).unwrap())
                    }
                });
                let _ = hyper::server::conn::http1::Builder::new().serve_connection(TokioIo::new(stream), svc).await;
            });
        }
    });
    (url, fake)
}

fn result() -> RuntimeResult {
    RuntimeResult { outcome: RuntimeOutcome::Succeeded, message: "ok".into(), output: Value::Null, duration_ms: None }
}

const JOB: &str = r#"{"id":"j-1","runtime_type":"rt","timeout_secs":5,"attempt":2,"payload":{"a":1}}"#;

#[test]
fn job_api_urls() {
    let c = RuntimeClient::new("rt", " http://127.0.0.1:3128/ ").unwrap();
    assert_eq!(
        (c.base(), c.host.as_str(), c.port, c.authority.as_str()),
        ("http://127.0.0.1:3128", "127.0.0.1", 3128, "127.0.0.1:3128")
    );
    let c = RuntimeClient::new("rt", "http://[::1]").unwrap();
    assert_eq!((c.host.as_str(), c.port), ("::1", 80));
    let e = RuntimeClient::new("rt", "https://127.0.0.1:3128").unwrap_err();
    assert_eq!(e, "JOB_API_URL \"https://127.0.0.1:3128\": only http:// is supported (the sidecar is on loopback)");
    assert!(RuntimeClient::new("rt", "not a url at all")
        .unwrap_err()
        .starts_with("JOB_API_URL \"not a url at all\": "));
    let unset = RuntimeClient::from_env("rt", &|_| Some("  ".into())).unwrap_err();
    assert_eq!(unset, "JOB_API_URL is not set");
}

#[tokio::test]
async fn fetch_job_retries_a_5xx_and_stops_at_a_4xx() {
    let (url, fake) = fake_sidecar(vec![(503, None, "not yet"), (200, None, JOB)]).await;
    let job = RuntimeClient::new("rt", &url).unwrap().fetch_job().await.unwrap();
    assert_eq!((job.id.as_str(), job.attempt), ("j-1", 2));
    assert_eq!(fake.seen.lock().unwrap().len(), 2);
    assert!(fake.seen.lock().unwrap().iter().all(|(p, _)| p == "/v1/job"));

    let (url, fake) = fake_sidecar(vec![(404, None, "no such path")]).await;
    let e = RuntimeClient::new("rt", &url).unwrap().fetch_job().await.unwrap_err();
    assert_eq!(e, "status 404: no such path");
    assert_eq!(fake.seen.lock().unwrap().len(), 1, "a 4xx is final");

    let (url, _) = fake_sidecar(vec![(200, None, "{}")]).await;
    let e = RuntimeClient::new("rt", &url).unwrap().fetch_job().await.unwrap_err();
    assert!(e.starts_with("not a RuntimeJob: "), "{e}");
}

#[tokio::test]
async fn post_result_honours_retry_after_on_503() {
    let (url, fake) = fake_sidecar(vec![(503, Some("1"), "full disk"), (202, None, "")]).await;
    let started = Instant::now();
    let client = RuntimeClient::new("rt", &url).unwrap();
    client.post_result("/v1/result", &result(), Instant::now() + Duration::from_secs(10)).await.unwrap();
    assert!(started.elapsed() >= Duration::from_secs(1), "waited Retry-After: {:?}", started.elapsed());
    let seen = fake.seen.lock().unwrap();
    assert_eq!(seen.len(), 2);
    assert_eq!(serde_json::from_slice::<RuntimeResult>(&seen[1].1).unwrap(), result());
    assert_eq!(seen[1].0, "/v1/result");
}

#[tokio::test]
async fn post_result_gives_up_at_the_deadline_and_on_a_4xx() {
    let (url, fake) = fake_sidecar(vec![(503, Some("1"), "full disk")]).await;
    let client = RuntimeClient::new("rt", &url).unwrap();
    let started = Instant::now();
    let e = client.post_result("/v1/result", &result(), started + Duration::from_millis(2500)).await.unwrap_err();
    assert!(started.elapsed() < Duration::from_millis(2500), "stopped before the deadline: {:?}", started.elapsed());
    let attempts = fake.seen.lock().unwrap().len();
    assert_eq!(attempts, 3, "at 0, 1 and 2 s; a 4th would be after the deadline");
    assert_eq!(e, "status 503: full disk (gave up at the job's deadline after 3 attempts)");

    let (url, fake) = fake_sidecar(vec![(409, None, "already taken")]).await;
    let client = RuntimeClient::new("rt", &url).unwrap();
    let e = client.post_result("/v1/result", &result(), Instant::now() + Duration::from_secs(10)).await.unwrap_err();
    assert_eq!(e, "status 409: already taken");
    assert_eq!(fake.seen.lock().unwrap().len(), 1, "a 4xx is final");
}

#[tokio::test]
async fn post_result_retries_a_refused_connection_until_the_deadline() {
    // A port nothing listens on.
    let addr = TcpListener::bind("127.0.0.1:0").await.unwrap().local_addr().unwrap();
    let client = RuntimeClient::new("rt", &format!("http://{addr}")).unwrap();
    let started = Instant::now();
    let e = client.post_result("/v1/result", &result(), started + Duration::from_millis(400)).await.unwrap_err();
    assert!(e.starts_with(&format!("cannot connect to {addr}: ")), "{e}");
    assert!(e.contains("(gave up at the job's deadline after "), "{e}");
    assert!(started.elapsed() < Duration::from_millis(400), "{:?}", started.elapsed());
}

#[tokio::test]
async fn run_once_exit_codes() {
    let (url, fake) = fake_sidecar(vec![(200, None, JOB), (200, None, "")]).await;
    let client = RuntimeClient::new("rt", &url).unwrap();
    let code =
        client.run_once(|job| async move { Ok(RuntimeResult { message: job.id.to_string(), ..result() }) }).await;
    assert_eq!(code, exit::OK);
    let seen = fake.seen.lock().unwrap().clone();
    assert_eq!(seen.iter().map(|(p, _)| p.as_str()).collect::<Vec<_>>(), ["/v1/job", "/v1/result"]);
    assert_eq!(serde_json::from_slice::<RuntimeResult>(&seen[1].1).unwrap().message, "j-1");

    let (url, fake) = fake_sidecar(vec![(200, None, JOB)]).await;
    let code = RuntimeClient::new("rt", &url).unwrap().run_once(|_| async { Err(exit::TERMINATED) }).await;
    assert_eq!(code, exit::TERMINATED);
    assert_eq!(fake.seen.lock().unwrap().len(), 1, "nothing posted");

    let (url, _) = fake_sidecar(vec![(200, None, JOB), (400, None, "not a RuntimeResult")]).await;
    let code = RuntimeClient::new("rt", &url).unwrap().run_once(|_| async { Ok(result()) }).await;
    assert_eq!(code, exit::NOT_POSTED);

    let (url, _) = fake_sidecar(vec![(405, None, "")]).await;
    let code = RuntimeClient::new("rt", &url).unwrap().run_once(|_| async { Ok(result()) }).await;
    assert_eq!(code, exit::NO_JOB);
}

/// A persistent runtime whose jobs wait for `release`, against a fake sidecar taking
/// results; its address.
async fn persistent(max_concurrent: usize, release: Arc<Notify>) -> (SocketAddr, Arc<Fake>) {
    let (url, fake) = fake_sidecar(vec![(202, None, "")]).await;
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let client = RuntimeClient::new("rt", &url).unwrap();
    tokio::spawn(client.serve_on(listener, max_concurrent, move |job: RuntimeJob| {
        let release = release.clone();
        async move {
            release.notified().await;
            RuntimeResult { message: format!("done {}", job.id), ..result() }
        }
    }));
    (addr, fake)
}

use std::net::SocketAddr;

async fn call(addr: SocketAddr, method: Method, path: &str, body: Vec<u8>) -> (StatusCode, Value) {
    let stream = TcpStream::connect(addr).await.unwrap();
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await.unwrap();
    tokio::spawn(conn);
    let req =
        Request::builder().method(method).uri(path).header("host", "rt").body(Full::new(Bytes::from(body))).unwrap();
    let resp = sender.send_request(req).await.unwrap();
    let status = resp.status();
    let body = resp.into_body().collect().await.unwrap().to_bytes();
    (status, serde_json::from_slice(&body).unwrap())
}

fn job(id: &str) -> Vec<u8> {
    json!({"id": id, "runtime_type": "rt", "timeout_secs": 10, "attempt": 1, "payload": null}).to_string().into_bytes()
}

#[tokio::test]
async fn persistent_mode_answers_429_while_busy_and_posts_each_result() {
    let release = Arc::new(Notify::new());
    let (addr, fake) = persistent(1, release.clone()).await;
    assert_eq!(
        call(addr, Method::POST, "/v1/jobs", job("p-1")).await,
        (StatusCode::ACCEPTED, json!({"accepted": "p-1"}))
    );
    assert_eq!(call(addr, Method::GET, "/healthz", vec![]).await, (StatusCode::OK, json!({"running": 1})));
    assert_eq!(
        call(addr, Method::POST, "/v1/jobs", job("p-2")).await,
        (StatusCode::TOO_MANY_REQUESTS, json!({"error": "busy", "max_concurrent": 1}))
    );
    release.notify_one();
    // The slot is free again once the job is over and its result posted.
    let deadline = Instant::now() + Duration::from_secs(10);
    while call(addr, Method::GET, "/healthz", vec![]).await.1 != json!({"running": 0}) {
        assert!(Instant::now() < deadline, "the slot was never given back");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let seen = fake.seen.lock().unwrap().clone();
    assert_eq!(seen.len(), 1);
    assert_eq!(seen[0].0, "/v1/jobs/p-1/result");
    assert_eq!(serde_json::from_slice::<RuntimeResult>(&seen[0].1).unwrap().message, "done p-1");
    assert_eq!(call(addr, Method::POST, "/v1/jobs", job("p-3")).await.0, StatusCode::ACCEPTED);
}

#[tokio::test]
async fn persistent_mode_refuses_bad_requests() {
    let (addr, fake) = persistent(1, Arc::new(Notify::new())).await;
    let (status, body) = call(addr, Method::POST, "/v1/jobs", br#"{"id":"x"}"#.to_vec()).await;
    assert_eq!((status, &body["error"]), (StatusCode::UNPROCESSABLE_ENTITY, &json!("invalid")));
    assert!(body["message"].as_str().unwrap().contains("missing field"), "{body}");
    let (status, body) = call(addr, Method::POST, "/v1/jobs", vec![b' '; MAX_BODY + 1]).await;
    assert_eq!((status, body), (StatusCode::PAYLOAD_TOO_LARGE, json!({"error": "too_large"})));
    let (status, body) = call(addr, Method::GET, "/v1/jobs", vec![]).await;
    assert_eq!((status, body), (StatusCode::NOT_FOUND, json!({"error": "not_found"})));
    assert_eq!(
        call(addr, Method::GET, "/healthz", vec![]).await,
        (StatusCode::OK, json!({"running": 0})),
        "no slot taken"
    );
    assert!(fake.seen.lock().unwrap().is_empty());
}
