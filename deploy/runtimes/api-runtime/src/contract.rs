//! The runtime contract (`common/CONTRACTS.md`), as `test-runtime` speaks it.
//!
//! Ephemeral: `GET {JOB_API_URL}/v1/job`, run the check, `POST {JOB_API_URL}/v1/result`,
//! exit 0 (also when the check failed: the result says so). Persistent (`--serve ADDR`):
//! `POST /v1/jobs` (a `RuntimeJob`) answered 202, or 429 when `max_concurrent` checks
//! run; each result goes to `{JOB_API_URL}/v1/jobs/{id}/result`.
//!
//! A result post is retried as the contract asks: a 2xx means the sidecar holds it; a 4xx
//! is final; a 5xx (503 + `Retry-After`: the sidecar cannot store it right now) or a
//! refused connection is retried until the job's deadline.
use crate::engine::{self, Limits};
use crate::http::{HttpPort, Proxies, ProxyClient};
use crate::payload;
use bytes::Bytes;
use common::runtime_api::{
    local_job_result_path, runtime_env, RuntimeJob, RuntimeResult, INGRESS_DISPATCH_PATH, LOCAL_JOB_PATH,
    LOCAL_RESULT_PATH,
};
use http::{header, HeaderMap, Method, Request, Response, StatusCode, Uri};
use http_body_util::{BodyExt, Full, Limited};
use hyper_util::rt::TokioIo;
use serde_json::{json, Value};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::net::TcpStream;

const MAX_JOB_BODY: usize = 1024 * 1024;

/// Exit codes of the runtime process.
pub mod exit {
    /// The result was posted (whatever the check's outcome).
    pub const OK: i32 = 0;
    /// `JOB_API_URL` missing, or the persistent listener cannot bind.
    pub const CONFIG: i32 = 2;
    /// The job could not be fetched.
    pub const NO_JOB: i32 = 3;
    /// The result could not be posted before the job's deadline.
    pub const NOT_POSTED: i32 = 4;
    /// Bad command line.
    pub const USAGE: i32 = 64;
}

/// What the process was started with (command line + environment).
#[derive(Clone, Debug)]
pub struct Settings {
    pub job_api_url: String,
    pub proxies: Proxies,
    pub user_defined_variables: Option<String>,
    pub limits: Limits,
}

impl Settings {
    pub fn from_env(env: &dyn Fn(&str) -> Option<String>, limits: Limits) -> Result<Self, String> {
        let job_api_url = env(runtime_env::JOB_API_URL)
            .filter(|v| !v.trim().is_empty())
            .map(|v| v.trim().trim_end_matches('/').to_string())
            .ok_or_else(|| format!("{} is not set", runtime_env::JOB_API_URL))?;
        Ok(Self {
            proxies: Proxies::from_env(env)?,
            user_defined_variables: env(runtime_env::USER_DEFINED_VARIABLES),
            job_api_url,
            limits,
        })
    }
}

pub fn log(job: &str, what: impl std::fmt::Display) {
    eprintln!("api-runtime: job {job}: {what}");
}

/// Ephemeral mode: one job, then exit with one of [`exit`]'s codes.
pub async fn run_once(settings: Settings) -> i32 {
    let api = settings.job_api_url.clone();
    let job = match fetch_job(&api).await {
        Ok(j) => j,
        Err(e) => {
            eprintln!("api-runtime: cannot get the job from {api}{LOCAL_JOB_PATH}: {e}");
            return exit::NO_JOB;
        }
    };
    let id = job.id.to_string();
    let until = Instant::now() + Duration::from_secs(u64::from(job.timeout_secs.max(1)));
    let result = run_job(&settings, job).await;
    match post_result(&api, LOCAL_RESULT_PATH, &result, until).await {
        Ok(()) => exit::OK,
        Err(e) => {
            log(&id, format_args!("could not post the result: {e}"));
            exit::NOT_POSTED
        }
    }
}

/// Runs the job's check on a blocking thread (the engine is synchronous; `$http`
/// requests run on this tokio runtime meanwhile).
pub async fn run_job(settings: &Settings, job: RuntimeJob) -> RuntimeResult {
    let id = job.id.to_string();
    log(&id, format_args!("started (attempt {}, runtime {})", job.attempt, job.runtime_type));
    let check = match payload::check_of(&job, settings.user_defined_variables.as_deref()) {
        Ok(c) => c,
        Err(e) => {
            log(&id, format_args!("invalid job: {e}"));
            return payload::invalid_result(&e);
        }
    };
    let port: Arc<dyn HttpPort> =
        Arc::new(ProxyClient::new(settings.proxies.clone(), tokio::runtime::Handle::current()));
    let limits = settings.limits.clone();
    let secure = check.secure.clone();
    let report = match tokio::task::spawn_blocking(move || engine::run(&check, port, &limits)).await {
        Ok(r) => r,
        Err(e) => return payload::invalid_result(&format!("the engine stopped: {e}")),
    };
    let result = payload::result_of(&report, &secure);
    log(&id, format_args!("{:?}: {}", result.outcome, result.message));
    result
}

/// The sidecar may still be coming up: retry connection failures for a few seconds.
pub async fn fetch_job(api: &str) -> Result<RuntimeJob, String> {
    let url = format!("{api}{LOCAL_JOB_PATH}");
    let mut last = String::new();
    for attempt in 0..20u32 {
        match local_request(Method::GET, &url, None, Duration::from_secs(10)).await {
            Ok(resp) if resp.status == 200 => {
                return serde_json::from_slice(&resp.body).map_err(|e| format!("not a RuntimeJob: {e}"));
            }
            Ok(resp) => last = format!("status {}: {}", resp.status, String::from_utf8_lossy(&resp.body)),
            Err(e) => last = e,
        }
        tokio::time::sleep(Duration::from_millis(20 * u64::from(attempt + 1).min(10))).await;
    }
    Err(last)
}

/// Posts the result until the sidecar holds it (2xx), refuses it for good (4xx), or
/// `until` (the job's deadline) passed.
pub async fn post_result(api: &str, path: &str, result: &RuntimeResult, until: Instant) -> Result<(), String> {
    let url = format!("{api}{path}");
    let body = Bytes::from(serde_json::to_vec(result).expect("RuntimeResult serializes"));
    let mut attempt = 0u32;
    loop {
        let mut wait = Duration::from_millis(100 * u64::from(attempt + 1).min(10));
        let last = match local_request(Method::POST, &url, Some(body.clone()), Duration::from_secs(10)).await {
            Ok(resp) if (200..300).contains(&resp.status) => return Ok(()),
            Ok(resp) if (400..500).contains(&resp.status) => {
                return Err(format!("status {}: {}", resp.status, String::from_utf8_lossy(&resp.body)));
            }
            Ok(resp) => {
                let retry_after = resp.headers.get(header::RETRY_AFTER).and_then(|v| v.to_str().ok());
                if let Some(secs) = retry_after.and_then(|s| s.trim().parse::<u64>().ok()) {
                    wait = Duration::from_secs(secs.min(5));
                }
                format!("status {}: {}", resp.status, String::from_utf8_lossy(&resp.body))
            }
            Err(e) => e,
        };
        attempt += 1;
        if Instant::now() + wait >= until {
            return Err(format!("{last} (gave up at the job's deadline after {attempt} attempts)"));
        }
        tokio::time::sleep(wait).await;
    }
}

pub struct LocalResponse {
    pub status: u16,
    pub headers: HeaderMap,
    pub body: Bytes,
}

/// One request to the sidecar's local API (origin-form, straight to `JOB_API_URL`).
pub async fn local_request(
    method: Method,
    url: &str,
    body: Option<Bytes>,
    timeout: Duration,
) -> Result<LocalResponse, String> {
    let call = async {
        let uri: Uri = url.parse().map_err(|e| format!("bad URL {url:?}: {e}"))?;
        if uri.scheme_str() != Some("http") {
            return Err(format!("{url}: the local API is plain http://"));
        }
        let host = uri.host().ok_or_else(|| format!("URL {url:?} has no host"))?;
        let host = host.trim_start_matches('[').trim_end_matches(']');
        let port = uri.port_u16().unwrap_or(80);
        let authority = uri.authority().map(|a| a.to_string()).unwrap_or_default();
        let mut req = Request::builder()
            .method(method)
            .uri(uri.path_and_query().map_or("/", |p| p.as_str()))
            .header(header::HOST, authority);
        if body.is_some() {
            req = req.header(header::CONTENT_TYPE, "application/json");
        }
        let req = req.body(Full::new(body.unwrap_or_default())).map_err(|e| e.to_string())?;
        let tcp =
            TcpStream::connect((host, port)).await.map_err(|e| format!("cannot connect to {host}:{port}: {e}"))?;
        let _ = tcp.set_nodelay(true);
        let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tcp))
            .await
            .map_err(|e| format!("HTTP handshake: {e}"))?;
        tokio::spawn(async move {
            let _ = conn.await;
        });
        let resp = sender.send_request(req).await.map_err(|e| format!("request: {e}"))?;
        let (parts, body) = resp.into_parts();
        let body =
            Limited::new(body, MAX_JOB_BODY).collect().await.map_err(|e| format!("reading the body: {e}"))?.to_bytes();
        Ok(LocalResponse { status: parts.status.as_u16(), headers: parts.headers, body })
    };
    match tokio::time::timeout(timeout, call).await {
        Ok(r) => r,
        Err(_) => Err(format!("timed out after {timeout:?}")),
    }
}

// --- persistent mode ---

/// Serves `POST /v1/jobs` on `listener` forever (each check on a thread of its own, at
/// most `max_concurrent` at once; more gets 429) and `GET /healthz`.
pub async fn serve(settings: Settings, listener: tokio::net::TcpListener, max_concurrent: usize) -> i32 {
    eprintln!(
        "api-runtime: serving on {} (max {max_concurrent} concurrent jobs)",
        listener.local_addr().map(|a| a.to_string()).unwrap_or_default()
    );
    let running = Arc::new(AtomicUsize::new(0));
    let settings = Arc::new(settings);
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            continue;
        };
        let (running, settings) = (running.clone(), settings.clone());
        tokio::spawn(async move {
            let svc =
                hyper::service::service_fn(move |req| dispatch(req, running.clone(), settings.clone(), max_concurrent));
            let _ = hyper::server::conn::http1::Builder::new().serve_connection(TokioIo::new(stream), svc).await;
        });
    }
}

async fn dispatch(
    req: Request<hyper::body::Incoming>,
    running: Arc<AtomicUsize>,
    settings: Arc<Settings>,
    max_concurrent: usize,
) -> Result<Response<Full<Bytes>>, std::convert::Infallible> {
    let reply = |status: StatusCode, body: Value| {
        Ok(Response::builder()
            .status(status)
            .header(header::CONTENT_TYPE, "application/json")
            .body(Full::new(Bytes::from(body.to_string())))
            .expect("valid response"))
    };
    match (req.method(), req.uri().path()) {
        (&Method::GET, "/healthz") => {
            return reply(StatusCode::OK, json!({ "running": running.load(Ordering::SeqCst) }))
        }
        (&Method::POST, p) if p == INGRESS_DISPATCH_PATH => {}
        _ => return reply(StatusCode::NOT_FOUND, json!({ "error": "not_found" })),
    }
    let body = match Limited::new(req.into_body(), MAX_JOB_BODY).collect().await {
        Ok(b) => b.to_bytes(),
        Err(_) => return reply(StatusCode::PAYLOAD_TOO_LARGE, json!({ "error": "too_large" })),
    };
    let job: RuntimeJob = match serde_json::from_slice(&body) {
        Ok(j) => j,
        Err(e) => {
            return reply(StatusCode::UNPROCESSABLE_ENTITY, json!({ "error": "invalid", "message": e.to_string() }))
        }
    };
    // Claim a slot atomically; 429 when none is free, so the caller backs off.
    if running.fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| (n < max_concurrent).then_some(n + 1)).is_err() {
        log(job.id.as_str(), "busy: 429");
        return reply(StatusCode::TOO_MANY_REQUESTS, json!({ "error": "busy", "max_concurrent": max_concurrent }));
    }
    let id = job.id.clone();
    tokio::spawn(async move {
        let until = Instant::now() + Duration::from_secs(u64::from(job.timeout_secs.max(1)));
        let path = local_job_result_path(&job.id);
        let result = run_job(&settings, job).await;
        if let Err(e) = post_result(&settings.job_api_url, &path, &result, until).await {
            log(id.as_str(), format_args!("could not post the result: {e}"));
        }
        running.fetch_sub(1, Ordering::SeqCst);
    });
    reply(StatusCode::ACCEPTED, json!({ "accepted": body_id(&body) }))
}

fn body_id(body: &[u8]) -> Value {
    serde_json::from_slice::<Value>(body).ok().and_then(|v| v.get("id").cloned()).unwrap_or(Value::Null)
}
