//! The runtime's side of the runtime contract (`common/CONTRACTS.md`, "Hand-off of one
//! ephemeral job" and "Writing your own runtime image"), written once for every runtime
//! in this repository (`api-runtime`, `browser-runtime`, `test-runtime`). What a runtime
//! does with a job is its own: a `run` callback, job in, result out.
//!
//! - [`RuntimeClient::fetch_job`]: `GET {JOB_API_URL}/v1/job`; a refused connection or a
//!   5xx is retried for a few seconds (the sidecar may still be coming up), a 4xx is final.
//! - [`RuntimeClient::post_result`]: a 2xx means the sidecar holds the result; a 4xx is
//!   final; a 5xx (503 + `Retry-After`: it cannot store it right now) or a refused
//!   connection is retried, after `Retry-After` when given, until the job's deadline.
//! - [`RuntimeClient::run_once`]: ephemeral mode, one job, then one of [`exit`]'s codes.
//! - [`RuntimeClient::serve`]: persistent mode, `POST /v1/jobs` (a `RuntimeJob`) answered
//!   202, or 429 while `max_concurrent` jobs run; each result goes to
//!   `{JOB_API_URL}/v1/jobs/{id}/result`.
//!
//! Log lines go to stderr as `{name}: job {id}: ...`, `name` being the runtime's.
use crate::runtime_api::{
    local_job_result_path, runtime_env, RuntimeJob, RuntimeResult, INGRESS_DISPATCH_PATH, LOCAL_JOB_PATH,
    LOCAL_RESULT_PATH,
};
use bytes::Bytes;
use http::{header, HeaderMap, Method, Request, Response, StatusCode, Uri};
use http_body_util::{BodyExt, Full, Limited};
use hyper_util::rt::TokioIo;
use serde_json::{json, Value};
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::net::{TcpListener, TcpStream};

/// Largest dispatched job read, and largest answer of the local API read.
pub const MAX_BODY: usize = 1024 * 1024;
/// One exchange with the local API.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
/// `GET /v1/job` attempts before the runtime gives up (about 8 s in all).
const FETCH_ATTEMPTS: u32 = 20;
/// Longest `Retry-After` honoured, so a post is retried a few times before the deadline.
const MAX_RETRY_AFTER: Duration = Duration::from_secs(5);

/// Exit codes of a runtime process (the same for every runtime here).
pub mod exit {
    /// The result was posted (whatever the job's outcome).
    pub const OK: i32 = 0;
    /// `JOB_API_URL` missing or not `http://`, or the persistent listener cannot bind.
    pub const CONFIG: i32 = 2;
    /// The job could not be fetched.
    pub const NO_JOB: i32 = 3;
    /// The result could not be posted before the job's deadline.
    pub const NOT_POSTED: i32 = 4;
    /// Bad command line.
    pub const USAGE: i32 = 64;
    /// Stopped by SIGTERM/SIGINT before the job was done (browser runtime).
    pub const TERMINATED: i32 = 143;
}

/// When the job must be over: `timeout_secs` (at least 1) from now.
pub fn job_deadline(job: &RuntimeJob) -> Instant {
    Instant::now() + Duration::from_secs(u64::from(job.timeout_secs.max(1)))
}

/// A future a `run` callback returns, boxed so the server can hold any runtime's.
type BoxRun = Pin<Box<dyn Future<Output = RuntimeResult> + Send>>;
type RunFn = dyn Fn(RuntimeJob) -> BoxRun + Send + Sync;

/// One runtime's client of its sidecar's local API (`JOB_API_URL`).
#[derive(Clone, Debug)]
pub struct RuntimeClient {
    name: &'static str,
    base: String,
    host: String,
    port: u16,
    authority: String,
}

/// An answer of the local API.
struct Answer {
    status: u16,
    headers: HeaderMap,
    body: Bytes,
}

impl Answer {
    fn describe(&self) -> String {
        format!("status {}: {}", self.status, String::from_utf8_lossy(&self.body))
    }
}

impl RuntimeClient {
    /// `name` prefixes the log lines and is the `User-Agent`; `job_api_url` is e.g.
    /// `http://127.0.0.1:3128` (plain http: the sidecar is on loopback).
    pub fn new(name: &'static str, job_api_url: &str) -> Result<Self, String> {
        let url = job_api_url.trim();
        let base = url.trim_end_matches('/').to_string();
        let uri: Uri = base.parse().map_err(|e| format!("{} {url:?}: {e}", runtime_env::JOB_API_URL))?;
        if uri.scheme_str() != Some("http") {
            return Err(format!(
                "{} {url:?}: only http:// is supported (the sidecar is on loopback)",
                runtime_env::JOB_API_URL
            ));
        }
        let authority = uri.authority().ok_or_else(|| format!("{} {url:?} has no host", runtime_env::JOB_API_URL))?;
        let host = authority.host().trim_start_matches('[').trim_end_matches(']').to_string();
        let port = authority.port_u16().unwrap_or(80);
        Ok(Self { name, base, host, port, authority: authority.to_string() })
    }

    /// From `JOB_API_URL` in `env`.
    pub fn from_env(name: &'static str, env: &dyn Fn(&str) -> Option<String>) -> Result<Self, String> {
        let url = env(runtime_env::JOB_API_URL)
            .filter(|v| !v.trim().is_empty())
            .ok_or_else(|| format!("{} is not set", runtime_env::JOB_API_URL))?;
        Self::new(name, &url)
    }

    /// `JOB_API_URL` without a trailing slash.
    pub fn base(&self) -> &str {
        &self.base
    }

    pub fn name(&self) -> &'static str {
        self.name
    }

    /// One log line about a job on stderr.
    pub fn log(&self, job: &str, what: impl std::fmt::Display) {
        eprintln!("{}: job {job}: {what}", self.name);
    }

    async fn request(&self, method: Method, path: &str, body: Option<Bytes>) -> Result<Answer, String> {
        let exchange = async {
            let tcp = TcpStream::connect((self.host.as_str(), self.port))
                .await
                .map_err(|e| format!("cannot connect to {}: {e}", self.authority))?;
            let _ = tcp.set_nodelay(true);
            let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tcp))
                .await
                .map_err(|e| format!("HTTP handshake: {e}"))?;
            tokio::spawn(conn);
            let mut req = Request::builder()
                .method(method)
                .uri(path)
                .header(header::HOST, &self.authority)
                .header(header::USER_AGENT, self.name);
            if body.is_some() {
                req = req.header(header::CONTENT_TYPE, "application/json");
            }
            let req = req.body(Full::new(body.unwrap_or_default())).map_err(|e| e.to_string())?;
            let resp = sender.send_request(req).await.map_err(|e| format!("request: {e}"))?;
            let (parts, body) = resp.into_parts();
            let body = Limited::new(body, MAX_BODY)
                .collect()
                .await
                .map_err(|e| format!("reading the answer: {e}"))?
                .to_bytes();
            Ok(Answer { status: parts.status.as_u16(), headers: parts.headers, body })
        };
        tokio::time::timeout(REQUEST_TIMEOUT, exchange)
            .await
            .map_err(|_| format!("timed out after {REQUEST_TIMEOUT:?}"))?
    }

    /// The job. The sidecar may still be coming up, so a refused connection or a 5xx is
    /// retried for a few seconds; a 4xx is final.
    pub async fn fetch_job(&self) -> Result<RuntimeJob, String> {
        let mut last = String::new();
        for attempt in 0..FETCH_ATTEMPTS {
            match self.request(Method::GET, LOCAL_JOB_PATH, None).await {
                Ok(a) if a.status == 200 => {
                    return serde_json::from_slice(&a.body).map_err(|e| format!("not a RuntimeJob: {e}"));
                }
                Ok(a) if (400..500).contains(&a.status) => return Err(a.describe()),
                Ok(a) => last = a.describe(),
                Err(e) => last = e,
            }
            tokio::time::sleep(Duration::from_millis(50 * u64::from(attempt + 1).min(10))).await;
        }
        Err(last)
    }

    /// Posts `result` to `path` until the sidecar holds it (2xx), refuses it for good
    /// (4xx), or `until` (the job's deadline) passed.
    pub async fn post_result(&self, path: &str, result: &RuntimeResult, until: Instant) -> Result<(), String> {
        let body = Bytes::from(serde_json::to_vec(result).expect("RuntimeResult serializes"));
        let mut attempt = 0u32;
        loop {
            let mut wait = Duration::from_millis(100 * u64::from(attempt + 1).min(10));
            let last = match self.request(Method::POST, path, Some(body.clone())).await {
                Ok(a) if (200..300).contains(&a.status) => return Ok(()),
                Ok(a) if (400..500).contains(&a.status) => return Err(a.describe()),
                Ok(a) => {
                    let retry_after = a.headers.get(header::RETRY_AFTER).and_then(|v| v.to_str().ok());
                    if let Some(secs) = retry_after.and_then(|s| s.trim().parse::<u64>().ok()) {
                        wait = Duration::from_secs(secs).min(MAX_RETRY_AFTER);
                    }
                    a.describe()
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

    /// Posts a job's result and logs how that went.
    async fn report(&self, path: &str, id: &str, result: &RuntimeResult, until: Instant) -> Result<(), String> {
        let posted = self.post_result(path, result, until).await;
        match &posted {
            Ok(()) => self.log(id, format_args!("posted result {:?}: {}", result.outcome, result.message)),
            Err(e) => self.log(id, format_args!("could not post the result: {e}")),
        }
        posted
    }

    /// Ephemeral mode: fetch the job, `run` it, post its result; the exit code. `run`
    /// answers `Err(code)` to stop without a result (e.g. on SIGTERM), exiting with `code`.
    pub async fn run_once<F, Fut>(&self, run: F) -> i32
    where
        F: FnOnce(RuntimeJob) -> Fut,
        Fut: Future<Output = Result<RuntimeResult, i32>>,
    {
        let job = match self.fetch_job().await {
            Ok(j) => j,
            Err(e) => {
                eprintln!("{}: cannot get the job from {}{LOCAL_JOB_PATH}: {e}", self.name, self.base);
                return exit::NO_JOB;
            }
        };
        let id = job.id.to_string();
        self.log(&id, format_args!("started (attempt {}, runtime {})", job.attempt, job.runtime_type));
        let until = job_deadline(&job);
        let result = match run(job).await {
            Ok(r) => r,
            Err(code) => return code,
        };
        match self.report(LOCAL_RESULT_PATH, &id, &result, until).await {
            Ok(()) => exit::OK,
            Err(_) => exit::NOT_POSTED,
        }
    }

    /// Persistent mode on `addr`: [`RuntimeClient::serve_on`] once bound; [`exit::CONFIG`]
    /// when it cannot be.
    pub async fn serve<F, Fut>(self, addr: std::net::SocketAddr, max_concurrent: usize, run: F) -> i32
    where
        F: Fn(RuntimeJob) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = RuntimeResult> + Send + 'static,
    {
        match TcpListener::bind(addr).await {
            Ok(listener) => self.serve_on(listener, max_concurrent, run).await,
            Err(e) => {
                eprintln!("{}: cannot listen on {addr}: {e}", self.name);
                exit::CONFIG
            }
        }
    }

    /// Serves `POST /v1/jobs` on `listener` forever (each job `run` on a task of its own,
    /// at most `max_concurrent` at once; more gets 429) and `GET /healthz`. The first log
    /// line names the bound address.
    pub async fn serve_on<F, Fut>(self, listener: TcpListener, max_concurrent: usize, run: F) -> i32
    where
        F: Fn(RuntimeJob) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = RuntimeResult> + Send + 'static,
    {
        eprintln!(
            "{}: serving on {} (max {max_concurrent} concurrent jobs)",
            self.name,
            listener.local_addr().map(|a| a.to_string()).unwrap_or_default()
        );
        let run: Arc<RunFn> = Arc::new(move |job| Box::pin(run(job)) as BoxRun);
        let server = Arc::new(Server { client: self, run, running: Arc::new(AtomicUsize::new(0)), max_concurrent });
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                continue;
            };
            let server = server.clone();
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(move |req| {
                    let server = server.clone();
                    async move { Ok::<_, std::convert::Infallible>(server.dispatch(req).await) }
                });
                let _ = hyper::server::conn::http1::Builder::new().serve_connection(TokioIo::new(stream), svc).await;
            });
        }
    }
}

/// The persistent runtime's state.
struct Server {
    client: RuntimeClient,
    run: Arc<RunFn>,
    running: Arc<AtomicUsize>,
    max_concurrent: usize,
}

/// A claimed job slot, given back when dropped (also if the job's task panics).
struct Slot(Arc<AtomicUsize>);

impl Drop for Slot {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

fn reply(status: StatusCode, body: Value) -> Response<Full<Bytes>> {
    Response::builder()
        .status(status)
        .header(header::CONTENT_TYPE, "application/json")
        .body(Full::new(Bytes::from(body.to_string())))
        .expect("valid response")
}

impl Server {
    async fn dispatch(&self, req: Request<hyper::body::Incoming>) -> Response<Full<Bytes>> {
        match (req.method(), req.uri().path()) {
            (&Method::GET, "/healthz") => {
                return reply(StatusCode::OK, json!({ "running": self.running.load(Ordering::SeqCst) }))
            }
            (&Method::POST, p) if p == INGRESS_DISPATCH_PATH => {}
            _ => return reply(StatusCode::NOT_FOUND, json!({ "error": "not_found" })),
        }
        let body = match Limited::new(req.into_body(), MAX_BODY).collect().await {
            Ok(b) => b.to_bytes(),
            Err(_) => return reply(StatusCode::PAYLOAD_TOO_LARGE, json!({ "error": "too_large" })),
        };
        let job: RuntimeJob = match serde_json::from_slice(&body) {
            Ok(j) => j,
            Err(e) => {
                return reply(StatusCode::UNPROCESSABLE_ENTITY, json!({ "error": "invalid", "message": e.to_string() }))
            }
        };
        let id = job.id.to_string();
        // Claim a slot atomically; 429 when none is free, so the caller backs off.
        let max = self.max_concurrent;
        if self.running.fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| (n < max).then_some(n + 1)).is_err() {
            self.client.log(&id, "busy: 429");
            return reply(StatusCode::TOO_MANY_REQUESTS, json!({ "error": "busy", "max_concurrent": max }));
        }
        let slot = Slot(self.running.clone());
        self.client.log(&id, format_args!("accepted (attempt {})", job.attempt));
        let (client, run) = (self.client.clone(), self.run.clone());
        let accepted = json!({ "accepted": id });
        tokio::spawn(async move {
            let _slot = slot;
            let until = job_deadline(&job);
            let path = local_job_result_path(&job.id);
            let result = run(job).await;
            let _ = client.report(&path, &id, &result, until).await;
        });
        reply(StatusCode::ACCEPTED, accepted)
    }
}

#[cfg(test)]
mod tests;
