//! The job manager's HTTP server: the result API sidecars call, plus `/healthz`,
//! `/readyz` and `/metrics`.
//!
//! `POST /internal/v1/jobs/{id}/result` checks, in order: the internal API key (401),
//! the job token (401 missing/malformed/expired, 403 forged or another job's), the body
//! (413 too large, 408 too slow, 400 unreadable, 422 not a `JobResult` for this job), and
//! then records the result: 202 first result, 200 identical repeat, 409 a different one.
//! `GET /internal/v1/jobs/{id}` (Kubernetes executor: the sidecar of an ephemeral job
//! fetching its job) checks the same key and token, then answers the job kept on its
//! record: 200 [`common::Job`], 404 unknown here (or the local executor, which hands
//! sidecars a job directory instead), 503 store unavailable.
//! Errors are JSON [`common::broker::ErrorBody`] with a stable `error` code.
use crate::metrics::Metrics;
use crate::readiness::Readiness;
use crate::results::{Recorded, ResultIntake, ResultStore};
use bytes::Bytes;
use common::broker::ErrorBody;
use common::secret::Secret;
use common::token::{TokenError, TokenSigner};
use common::{JobId, JobResult};
use http::{Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use std::convert::Infallible;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

/// Limits that keep hostile or broken clients from hurting the process.
#[derive(Clone, Debug)]
pub struct ServerLimits {
    pub max_body_bytes: usize,
    pub header_read_timeout: Duration,
    pub body_read_timeout: Duration,
    pub max_connections: usize,
}

impl Default for ServerLimits {
    fn default() -> Self {
        Self {
            max_body_bytes: 1024 * 1024,
            header_read_timeout: Duration::from_secs(10),
            body_read_timeout: Duration::from_secs(10),
            max_connections: 4096,
        }
    }
}

pub struct ResultApi<S> {
    pub intake: ResultIntake<S>,
    pub internal_api_key: Secret,
    pub signer: TokenSigner,
    pub readiness: Arc<Readiness>,
    pub limits: ServerLimits,
}

type Body = Full<Bytes>;

fn json_response(status: StatusCode, body: &impl serde::Serialize) -> Response<Body> {
    Response::builder()
        .status(status)
        .header(http::header::CONTENT_TYPE, "application/json")
        .body(Full::new(Bytes::from(serde_json::to_vec(body).expect("serializes"))))
        .expect("valid response")
}

fn error(status: StatusCode, code: &str, message: impl Into<String>) -> Response<Body> {
    json_response(status, &ErrorBody::new(code, message))
}

fn text(status: StatusCode, body: impl Into<Bytes>, content_type: &str) -> Response<Body> {
    Response::builder()
        .status(status)
        .header(http::header::CONTENT_TYPE, content_type)
        .body(Full::new(body.into()))
        .expect("valid response")
}

fn now_unix() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default().as_secs()
}

impl<S: ResultStore> ResultApi<S> {
    fn metrics(&self) -> &Metrics {
        self.intake.metrics()
    }

    pub async fn handle(&self, req: Request<Incoming>) -> Response<Body> {
        let path = req.uri().path().to_string();
        match (req.method(), path.as_str()) {
            (&Method::GET, "/healthz") => text(StatusCode::OK, "ok\n", "text/plain"),
            (&Method::GET, "/readyz") => match self.readiness.check() {
                Ok(()) => text(StatusCode::OK, "ready\n", "text/plain"),
                Err(reason) => text(StatusCode::SERVICE_UNAVAILABLE, format!("not ready: {reason}\n"), "text/plain"),
            },
            (&Method::GET, "/metrics") => text(
                StatusCode::OK,
                self.metrics().encode(),
                "application/openmetrics-text; version=1.0.0; charset=utf-8",
            ),
            _ => match (result_path_id(&path), job_path_id(&path)) {
                (Some(id), _) if req.method() == Method::POST => {
                    let resp = self.post_result(id, req).await;
                    self.metrics().result_api(resp.status().as_u16());
                    resp
                }
                (Some(_), _) => error(StatusCode::METHOD_NOT_ALLOWED, "method_not_allowed", "use POST"),
                (_, Some(id)) if req.method() == Method::GET => self.get_job(id, &req).await,
                (_, Some(_)) => error(StatusCode::METHOD_NOT_ALLOWED, "method_not_allowed", "use GET"),
                _ => error(StatusCode::NOT_FOUND, "not_found", format!("no route for {path}")),
            },
        }
    }

    /// The internal key, then the job token for `id`: the checks both sidecar calls share.
    /// `Some(answer)` when the request is refused.
    fn refusal<B>(&self, id: &JobId, req: &Request<B>) -> Option<Response<Body>> {
        let key = req.headers().get(common::headers::INTERNAL_API_KEY).map(|v| v.as_bytes()).unwrap_or_default();
        if !self.internal_api_key.matches(key) {
            tracing::warn!("refused: missing or wrong internal API key");
            return Some(error(
                StatusCode::UNAUTHORIZED,
                "bad_internal_api_key",
                "missing or wrong x-internal-api-key",
            ));
        }
        let Some(token) = req.headers().get(common::headers::JOB_TOKEN).and_then(|v| v.to_str().ok()) else {
            return Some(error(StatusCode::UNAUTHORIZED, "missing_job_token", "missing x-job-token"));
        };
        if let Err(e) = self.signer.verify(id, token, now_unix()) {
            tracing::warn!(reason = e.label(), "refused: bad job token");
            let status = match e {
                TokenError::Malformed | TokenError::Expired => StatusCode::UNAUTHORIZED,
                TokenError::BadSignature => StatusCode::FORBIDDEN,
            };
            return Some(error(status, &format!("job_token_{}", e.label()), e.to_string()));
        }
        None
    }

    async fn get_job<B>(&self, raw_id: &str, req: &Request<B>) -> Response<Body> {
        let Ok(id) = JobId::new(raw_id) else {
            return error(StatusCode::NOT_FOUND, "bad_job_id", "the path does not name a valid job id");
        };
        let span = tracing::error_span!("job_api", job_id = %id);
        let _g = span.enter();
        if let Some(refused) = self.refusal(&id, req) {
            return refused;
        }
        drop(_g);
        match self.intake.handed_job(&id).await {
            Ok(Some(job)) => json_response(StatusCode::OK, &job),
            Ok(None) => error(StatusCode::NOT_FOUND, "unknown_job", format!("no job {id} is kept here")),
            Err(e) => {
                tracing::error!(job_id = %id, error = %e, "cannot read the job");
                error(StatusCode::SERVICE_UNAVAILABLE, "store_unavailable", e.to_string())
            }
        }
    }

    async fn post_result(&self, raw_id: &str, req: Request<Incoming>) -> Response<Body> {
        let Ok(id) = JobId::new(raw_id) else {
            return error(StatusCode::NOT_FOUND, "bad_job_id", "the path does not name a valid job id");
        };
        let span = tracing::error_span!("result_api", job_id = %id);
        let _g = span.enter();
        if let Some(refused) = self.refusal(&id, &req) {
            return refused;
        }
        drop(_g);
        let body = match self.read_body(req).await {
            Ok(b) => b,
            Err(resp) => return resp,
        };
        let _g = span.enter();
        let result: JobResult = match serde_json::from_slice(&body) {
            Ok(r) => r,
            Err(e) => {
                return error(
                    StatusCode::UNPROCESSABLE_ENTITY,
                    "invalid_result",
                    format!("body is not a job result: {e}"),
                )
            }
        };
        if result.job_id != id {
            return error(
                StatusCode::UNPROCESSABLE_ENTITY,
                "job_id_mismatch",
                format!("body is for job {} but the path names {id}", result.job_id),
            );
        }
        drop(_g);
        match self.intake.record(&result).await {
            Ok(Recorded::Accepted) => json_response(StatusCode::ACCEPTED, &serde_json::json!({"recorded": "accepted"})),
            Ok(Recorded::Duplicate) => json_response(StatusCode::OK, &serde_json::json!({"recorded": "duplicate"})),
            Ok(Recorded::Conflict) => {
                error(StatusCode::CONFLICT, "conflict", "a different result was already recorded for this job")
            }
            Err(e) => {
                tracing::error!(job_id = %id, error = %e, "cannot record result");
                error(StatusCode::SERVICE_UNAVAILABLE, "store_unavailable", e.to_string())
            }
        }
    }

    async fn read_body(&self, req: Request<Incoming>) -> Result<Bytes, Response<Body>> {
        let max = self.limits.max_body_bytes;
        let too_large = || error(StatusCode::PAYLOAD_TOO_LARGE, "body_too_large", format!("body exceeds {max} bytes"));
        let declared = req
            .headers()
            .get(http::header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok());
        if declared.is_some_and(|n| n > max as u64) {
            return Err(too_large());
        }
        let collect = Limited::new(req.into_body(), max).collect();
        match tokio::time::timeout(self.limits.body_read_timeout, collect).await {
            Err(_) => Err(error(StatusCode::REQUEST_TIMEOUT, "body_timeout", "body not received in time")),
            Ok(Ok(collected)) => Ok(collected.to_bytes()),
            Ok(Err(e)) if e.is::<http_body_util::LengthLimitError>() => Err(too_large()),
            Ok(Err(e)) => Err(error(StatusCode::BAD_REQUEST, "bad_body", format!("cannot read body: {e}"))),
        }
    }
}

/// `/internal/v1/jobs/{id}/result` -> `{id}`.
pub fn result_path_id(path: &str) -> Option<&str> {
    let rest = path.strip_prefix(common::runtime_api::RESULT_API_PREFIX)?;
    let id = rest.strip_suffix("/result")?;
    (!id.is_empty() && !id.contains('/')).then_some(id)
}

/// `/internal/v1/jobs/{id}` -> `{id}`.
pub fn job_path_id(path: &str) -> Option<&str> {
    let id = path.strip_prefix(common::runtime_api::RESULT_API_PREFIX)?;
    (!id.is_empty() && !id.contains('/')).then_some(id)
}

/// Serve on `listener` until `shutdown`, then let open requests finish (bounded).
pub async fn serve<S: ResultStore>(
    listener: TcpListener,
    api: Arc<ResultApi<S>>,
    shutdown: CancellationToken,
) -> std::io::Result<()> {
    let connections = Arc::new(tokio::sync::Semaphore::new(api.limits.max_connections));
    let graceful = hyper_util::server::graceful::GracefulShutdown::new();
    loop {
        let permit = tokio::select! {
            _ = shutdown.cancelled() => break,
            p = connections.clone().acquire_owned() => p.expect("semaphore never closed"),
        };
        let (stream, _peer) = tokio::select! {
            _ = shutdown.cancelled() => break,
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    // EMFILE and friends: back off briefly instead of spinning.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let header_timeout = api.limits.header_read_timeout;
        let api = api.clone();
        let service = hyper::service::service_fn(move |req| {
            let api = api.clone();
            async move { Ok::<_, Infallible>(api.handle(req).await) }
        });
        let conn = hyper::server::conn::http1::Builder::new()
            .timer(TokioTimer::new())
            .header_read_timeout(header_timeout)
            .serve_connection(TokioIo::new(stream), service);
        let conn = graceful.watch(conn);
        tokio::spawn(async move {
            if let Err(e) = conn.await {
                tracing::debug!(error = %e, "connection ended with an error");
            }
            drop(permit);
        });
    }
    tokio::select! {
        _ = graceful.shutdown() => {}
        _ = tokio::time::sleep(Duration::from_secs(5)) => tracing::warn!("connections still open after 5s; closing"),
    }
    Ok(())
}
