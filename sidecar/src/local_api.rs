//! The local runtime API (loopback only): the runtime reads its job and posts its
//! result here; probes and metrics are served here too. The admin listener serves only
//! the probes and metrics (it listens on the pod network, the job must not).
use crate::body::{BodyLimits, HeldBody};
use crate::error::ProxyError;
use crate::ingress_tokens::IngressTokens;
use crate::metrics::Metrics;
use crate::reporter::{ResultReporter, SpoolRecord};
use bytes::Bytes;
use common::runtime_api::{RuntimeJob, RuntimeResult, LOCAL_JOB_PATH, LOCAL_RESULT_PATH};
use common::{Job, JobId};
use http::{header, HeaderValue, Method, Request, Response, StatusCode};
use http_body_util::Full;
use std::collections::HashSet;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, OnceLock};

/// The job handed to this sidecar (ephemeral workloads).
pub struct LoadedJob {
    pub job: Job,
    pub token: String,
    runtime_json: Bytes,
}

#[derive(Debug, thiserror::Error)]
pub enum JobLoadError {
    #[error("cannot read {path}: {source}")]
    Read { path: String, source: std::io::Error },
    #[error("{path} is not a valid job: {source}")]
    Parse { path: String, source: serde_json::Error },
    #[error("{path} is empty")]
    EmptyToken { path: String },
}

impl LoadedJob {
    pub fn load(dir: &Path) -> Result<Self, JobLoadError> {
        let job_path = dir.join(common::runtime_api::JOB_FILE);
        let token_path = dir.join(common::runtime_api::TOKEN_FILE);
        let read =
            |p: &Path| std::fs::read(p).map_err(|source| JobLoadError::Read { path: p.display().to_string(), source });
        let job: Job = serde_json::from_slice(&read(&job_path)?)
            .map_err(|source| JobLoadError::Parse { path: job_path.display().to_string(), source })?;
        let token = String::from_utf8_lossy(&read(&token_path)?).trim().to_string();
        if token.is_empty() {
            return Err(JobLoadError::EmptyToken { path: token_path.display().to_string() });
        }
        Ok(Self::new(job, token))
    }

    pub fn new(job: Job, token: String) -> Self {
        let runtime_json = Bytes::from(serde_json::to_vec(&RuntimeJob::from(&job)).unwrap_or_default());
        Self { job, token, runtime_json }
    }
}

pub struct LocalApi {
    /// Set at start (job directory) or once fetched from the job manager (id + token).
    job: OnceLock<LoadedJob>,
    reporter: Option<Arc<ResultReporter>>,
    /// Jobs whose result was accepted (spooled) or is being received; a second result
    /// gets 409 before a byte of its body is read.
    accepted: Mutex<HashSet<JobId>>,
    /// Tokens of jobs dispatched through the ingress (persistent workloads).
    pub ingress_tokens: Arc<IngressTokens>,
    pub ready: AtomicBool,
    metrics: Arc<Metrics>,
    bodies: BodyLimits,
}

impl LocalApi {
    pub fn new(
        job: Option<LoadedJob>,
        ingress_tokens: Arc<IngressTokens>,
        reporter: Option<Arc<ResultReporter>>,
        already_accepted: Vec<JobId>,
        metrics: Arc<Metrics>,
        bodies: BodyLimits,
    ) -> Self {
        Self {
            job: job.map(OnceLock::from).unwrap_or_default(),
            reporter,
            accepted: Mutex::new(already_accepted.into_iter().collect()),
            ingress_tokens,
            ready: AtomicBool::new(false),
            metrics,
            bodies,
        }
    }

    pub fn job_id(&self) -> Option<&JobId> {
        self.job.get().map(|j| &j.job.id)
    }

    /// The job fetched from the job manager; ignored if one is already set.
    pub fn set_job(&self, job: LoadedJob) {
        let _ = self.job.set(job);
    }

    /// Probes and metrics only (the admin listener).
    pub async fn handle_admin<B>(&self, req: Request<B>) -> Response<Full<Bytes>> {
        self.probes(&req).unwrap_or_else(|| ProxyError::NotFound.response())
    }

    fn probes<B>(&self, req: &Request<B>) -> Option<Response<Full<Bytes>>> {
        if req.method() != Method::GET && req.method() != Method::HEAD {
            return None;
        }
        match req.uri().path() {
            "/healthz" | "/livez" => Some(text(StatusCode::OK, "ok\n")),
            "/readyz" if self.ready.load(Ordering::Acquire) => Some(text(StatusCode::OK, "ready\n")),
            "/readyz" => Some(text(StatusCode::SERVICE_UNAVAILABLE, "starting\n")),
            "/metrics" => {
                let accept = req.headers().get_all(header::ACCEPT).iter().filter_map(|v| v.to_str().ok());
                let format = common::metrics::Format::negotiate(accept);
                let mut r = Response::new(Full::new(Bytes::from(self.metrics.render(format))));
                r.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static(format.content_type()));
                r.headers_mut().insert(header::VARY, HeaderValue::from_static("accept"));
                Some(r)
            }
            _ => None,
        }
    }

    pub async fn handle(&self, req: Request<hyper::body::Incoming>) -> Response<Full<Bytes>> {
        if let Some(r) = self.probes(&req) {
            return r;
        }
        self.api(req).await.unwrap_or_else(|e| e.response())
    }

    async fn api(&self, req: Request<hyper::body::Incoming>) -> Result<Response<Full<Bytes>>, ProxyError> {
        let path = req.uri().path();
        if path == LOCAL_JOB_PATH {
            if req.method() != Method::GET {
                return Err(ProxyError::MethodNotAllowed { allow: "GET" });
            }
            let job = self.job.get().ok_or_else(no_job)?;
            return Ok(json(StatusCode::OK, job.runtime_json.clone()));
        }
        if path == LOCAL_RESULT_PATH {
            if req.method() != Method::POST {
                return Err(ProxyError::MethodNotAllowed { allow: "POST" });
            }
            let job = self.job.get().ok_or_else(no_job)?;
            let (id, token) = (job.job.id.clone(), job.token.clone());
            return self.accept_result(req, id, token).await;
        }
        if let Some(id) = path.strip_prefix("/v1/jobs/").and_then(|r| r.strip_suffix("/result")) {
            if req.method() != Method::POST {
                return Err(ProxyError::MethodNotAllowed { allow: "POST" });
            }
            let id = JobId::new(id).map_err(|e| ProxyError::BadRequest(format!("bad job id: {e}")))?;
            let token = self.ingress_tokens.get(&id);
            let token = match token {
                Some(t) => t,
                None if self.accepted.lock().unwrap_or_else(|p| p.into_inner()).contains(&id) => {
                    return Err(ProxyError::Conflict(format!("a result for job {id} was already accepted")))
                }
                None => return Err(ProxyError::NotFound),
            };
            let resp = self.accept_result(req, id.clone(), token).await;
            if resp.is_ok() {
                self.ingress_tokens.remove(&id).await;
            }
            return resp;
        }
        Err(ProxyError::NotFound)
    }

    /// Claims `id` for the result being received (false: one was accepted, or is being
    /// received, already).
    fn claim(&self, id: &JobId) -> bool {
        self.accepted.lock().unwrap_or_else(|p| p.into_inner()).insert(id.clone())
    }

    fn unclaim(&self, id: &JobId) {
        self.accepted.lock().unwrap_or_else(|p| p.into_inner()).remove(id);
    }

    /// The job is claimed before its body is read, so a duplicate (or a second upload
    /// racing the first) is answered 409 without buffering anything; a result that
    /// fails (bad body, timeout, over the budget, spool error) gives the claim back.
    async fn accept_result(
        &self,
        req: Request<hyper::body::Incoming>,
        id: JobId,
        token: String,
    ) -> Result<Response<Full<Bytes>>, ProxyError> {
        let reporter =
            self.reporter.as_ref().ok_or_else(|| ProxyError::Unavailable("no job manager configured".into()))?;
        if !self.claim(&id) {
            // Not buffered: read and thrown away, so the client gets the 409.
            self.bodies.discard(req.into_body()).await;
            return Err(ProxyError::Conflict(format!("a result for job {id} was already accepted")));
        }
        let accepted = self.receive(req, &id, token, reporter).await;
        // Refused as too large, the job's outcome (failed) is spooled: the claim stays.
        if accepted.as_ref().is_err_and(|e| !matches!(e, ProxyError::ResultTooLarge(_))) {
            self.unclaim(&id);
        }
        accepted
    }

    /// The runtime's result is over the limit: report the job failed for it (spooled
    /// like any result, so the outcome survives a restart) and refuse the result with
    /// 413. Never "accepted" and then lost further on.
    async fn too_large(&self, id: &JobId, token: String, reporter: &Arc<ResultReporter>, size: &str) -> ProxyError {
        let why = format!("result too large: {size} bytes > {} bytes limit", self.bodies.max);
        tracing::error!(job_id = %id, reason = %why, "result refused; reporting the job failed");
        let failed = common::JobResult::new(id.clone(), common::Outcome::Failed, why.clone());
        if let Err(e) = reporter.submit(SpoolRecord { result: failed, token }).await {
            tracing::error!(job_id = %id, error = %e, "cannot spool the failure");
            return ProxyError::Unavailable(format!("cannot store the result: {e}"));
        }
        ProxyError::ResultTooLarge(why)
    }

    async fn receive(
        &self,
        req: Request<hyper::body::Incoming>,
        id: &JobId,
        token: String,
        reporter: &Arc<ResultReporter>,
    ) -> Result<Response<Full<Bytes>>, ProxyError> {
        let declared =
            req.headers().get(header::CONTENT_LENGTH).and_then(|v| v.to_str().ok()).and_then(|v| v.parse::<u64>().ok());
        // The body's share of the budget is held until the result is handed on (parsed
        // and spooled), then the bytes and the share go together.
        let HeldBody { bytes, share } = match self.bodies.read(req.into_body()).await {
            Ok(held) => held,
            Err(ProxyError::BodyTooLarge { limit }) => {
                let size = declared.map_or_else(|| format!("more than {limit}"), |n| n.to_string());
                return Err(self.too_large(id, token, reporter, &size).await);
            }
            Err(e) => return Err(e),
        };
        let result: RuntimeResult =
            serde_json::from_slice(&bytes).map_err(|e| ProxyError::BadRequest(format!("invalid result: {e}")))?;
        // The bytes go now; the share stays until the parsed result is handed on.
        drop(bytes);
        let result = result.into_job_result(id.clone());
        // What the job manager measures is the result as reported (job id added,
        // re-encoded), which can outgrow the body the runtime sent.
        let reported = serialized_len(&result);
        if reported > self.bodies.max {
            drop(result);
            return Err(self.too_large(id, token, reporter, &reported.to_string()).await);
        }
        let record = SpoolRecord { result, token };
        if let Err(e) = reporter.submit(record).await {
            tracing::error!(job_id = %id, error = %e, "cannot spool result");
            return Err(ProxyError::Unavailable(format!("cannot store the result: {e}")));
        }
        drop(share);
        tracing::info!(job_id = %id, "result accepted");
        Ok(json(StatusCode::ACCEPTED, Bytes::from(format!("{{\"accepted\":true,\"job_id\":\"{id}\"}}"))))
    }
}

/// Bytes of `value` as JSON, without keeping the encoding.
fn serialized_len<T: serde::Serialize>(value: &T) -> usize {
    struct Count(usize);
    impl std::io::Write for Count {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0 += buf.len();
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    let mut count = Count(0);
    let _ = serde_json::to_writer(&mut count, value);
    count.0
}

fn no_job() -> ProxyError {
    ProxyError::Unavailable("this sidecar has no job (SIDECAR_JOB_DIR is not set)".into())
}

fn text(status: StatusCode, body: &'static str) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(Bytes::from_static(body.as_bytes())));
    *r.status_mut() = status;
    r.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("text/plain; charset=utf-8"));
    r
}

fn json(status: StatusCode, body: Bytes) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(body));
    *r.status_mut() = status;
    r.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
    r
}
