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
//!
//! Each job route is a tower stack of small layers, assembled in [`ResultApi::routes`]:
//! ```text
//! rescue        every refusal below -> its JSON error (refusal.rs; the router applies it)
//!  span         job_id on every log line of the request (the router names the job)
//!   CallerAuth  internal key, then job token: 401/403 before any body byte is read
//!    BufferBody POST only: 413 / 408 / 400 within the size and time limits
//!     handler   422, then record (202/200/409) or fetch (200/404/503)
//! ```
mod auth;
mod body;
mod refusal;

pub use auth::{AuthError, CallerAuth, CallerAuthLayer, RunsHere};
pub use body::{BodyError, BufferBody, BufferBodyLayer};
pub use refusal::Refusal;

use crate::metrics::Metrics;
use crate::readiness::Readiness;
use crate::results::{Recorded, ResultIntake, ResultStore};
use crate::serve::{serve_http1, ServeSettings};
use bytes::Bytes;
use common::secret::Secret;
use common::token::TokenSigner;
use common::{JobId, JobResult};
use futures_util::future::BoxFuture;
use http::{Method, Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use refusal::{json_response, rescue, text};
use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tower::{ServiceBuilder, ServiceExt};
use tracing::Instrument;

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

impl From<&crate::config::Config> for ServerLimits {
    /// A result body may be as large as `maxResultBytes`: the limit every sidecar is
    /// given too, so what a sidecar accepts from its runtime is never refused here.
    fn from(c: &crate::config::Config) -> Self {
        Self { max_body_bytes: usize::try_from(c.max_result_bytes).unwrap_or(usize::MAX), ..Self::default() }
    }
}

pub struct ResultApi<S> {
    pub intake: ResultIntake<S>,
    pub internal_api_key: Secret,
    pub signer: TokenSigner,
    pub readiness: Arc<Readiness>,
    pub limits: ServerLimits,
    /// Whether a job still runs on this replica's executor: its expired token is taken
    /// (see [`auth`]); `None`: no executor answers that.
    pub runs_here: Option<RunsHere>,
}

type Body = Full<Bytes>;

/// The job routes' stacks, built once per server and cloned (cheaply: `Arc`s) per request.
struct Routes<S> {
    post_result: CallerAuth<BufferBody<RecordResult<S>>>,
    get_job: CallerAuth<HandedJob<S>>,
}

/// `POST /internal/v1/jobs/{id}/result`'s handler, the innermost service of its stack.
struct RecordResult<S>(Arc<ResultApi<S>>);

/// `GET /internal/v1/jobs/{id}`'s handler.
struct HandedJob<S>(Arc<ResultApi<S>>);

impl<S> Clone for RecordResult<S> {
    fn clone(&self) -> Self {
        Self(self.0.clone())
    }
}

impl<S> Clone for HandedJob<S> {
    fn clone(&self) -> Self {
        Self(self.0.clone())
    }
}

impl<S: ResultStore> tower::Service<Request<Bytes>> for RecordResult<S> {
    type Response = Response<Body>;
    type Error = Refusal;
    type Future = BoxFuture<'static, Result<Response<Body>, Refusal>>;

    fn poll_ready(&mut self, _: &mut std::task::Context<'_>) -> std::task::Poll<Result<(), Refusal>> {
        std::task::Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: Request<Bytes>) -> Self::Future {
        let api = self.0.clone();
        Box::pin(async move { api.record(req).await })
    }
}

impl<S: ResultStore, B: Send + 'static> tower::Service<Request<B>> for HandedJob<S> {
    type Response = Response<Body>;
    type Error = Refusal;
    type Future = BoxFuture<'static, Result<Response<Body>, Refusal>>;

    fn poll_ready(&mut self, _: &mut std::task::Context<'_>) -> std::task::Poll<Result<(), Refusal>> {
        std::task::Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: Request<B>) -> Self::Future {
        let api = self.0.clone();
        Box::pin(async move { api.handed_job(req).await })
    }
}

impl<S: ResultStore> ResultApi<S> {
    fn metrics(&self) -> &Metrics {
        self.intake.metrics()
    }

    /// The two job routes, each a stack of the layers named in the module docs.
    fn routes(self: &Arc<Self>) -> Routes<S> {
        let auth = CallerAuthLayer::new(self.internal_api_key.clone(), self.signer.clone())
            .with_runs_here(self.runs_here.clone());
        let body = BufferBodyLayer::new(self.limits.max_body_bytes, self.limits.body_read_timeout);
        Routes {
            post_result: ServiceBuilder::new().layer(auth.clone()).layer(body).service(RecordResult(self.clone())),
            get_job: ServiceBuilder::new().layer(auth).service(HandedJob(self.clone())),
        }
    }

    /// The router: probes and metrics answer here; a job route gets the job id from the
    /// path (404 when it is not a valid one) and runs its stack inside the job's span.
    async fn route(self: Arc<Self>, routes: Arc<Routes<S>>, req: Request<Incoming>) -> Response<Body> {
        let path = req.uri().path();
        match (req.method(), path) {
            (&Method::GET, "/healthz" | "/livez") => return text(StatusCode::OK, "ok\n", "text/plain"),
            (&Method::GET, "/readyz") => {
                let (status, mut body) = match self.readiness.check() {
                    Ok(()) => (StatusCode::OK, "ready\n".to_string()),
                    Err(reason) => (StatusCode::SERVICE_UNAVAILABLE, format!("not ready: {reason}\n")),
                };
                for caveat in self.readiness.caveats() {
                    body.push_str(&format!("warning: {caveat}\n"));
                }
                return text(status, body, "text/plain");
            }
            (&Method::GET, "/metrics") => {
                let accept = req.headers().get_all(http::header::ACCEPT).iter().filter_map(|v| v.to_str().ok());
                let format = common::metrics::Format::negotiate(accept);
                let mut resp = text(StatusCode::OK, self.metrics().render(format), format.content_type());
                resp.headers_mut().insert(http::header::VARY, http::HeaderValue::from_static("accept"));
                return resp;
            }
            (_, "/healthz" | "/livez" | "/readyz" | "/metrics") => return method_not_allowed("GET"),
            _ => {}
        }
        let refused = |status, code: &str, message: &str| Refusal::new(status, code, message).into_response();
        let (counted, id) = match (result_path_id(path), job_path_id(path)) {
            (Some(id), _) if req.method() == Method::POST => (true, JobId::new(id)),
            (Some(_), _) => return method_not_allowed("POST"),
            (_, Some(id)) if req.method() == Method::GET => (false, JobId::new(id)),
            (_, Some(_)) => return method_not_allowed("GET"),
            _ => return refused(StatusCode::NOT_FOUND, "not_found", &format!("no route for {path}")),
        };
        let Ok(id) = id else {
            let resp = refused(StatusCode::NOT_FOUND, "bad_job_id", "the path does not name a valid job id");
            if counted {
                self.metrics().result_api(resp.status().as_u16());
            }
            return resp;
        };
        let mut req = req;
        if !counted {
            let span = tracing::error_span!("job_api", job_id = %id);
            req.extensions_mut().insert(id);
            return rescue(routes.get_job.clone().oneshot(req).instrument(span).await);
        }
        let span = tracing::error_span!("result_api", job_id = %id);
        req.extensions_mut().insert(id);
        let resp = rescue(routes.post_result.clone().oneshot(req).instrument(span).await);
        self.metrics().result_api(resp.status().as_u16());
        resp
    }

    /// `GET /internal/v1/jobs/{id}`, once the caller is authenticated.
    async fn handed_job<B>(&self, req: Request<B>) -> Result<Response<Body>, Refusal> {
        let id = req.extensions().get::<JobId>().expect("routed").clone();
        match self.intake.handed_job(&id).await {
            Ok(Some(job)) => Ok(json_response(StatusCode::OK, &job)),
            Ok(None) => Err(Refusal::new(StatusCode::NOT_FOUND, "unknown_job", format!("no job {id} is kept here"))),
            Err(e) => {
                tracing::error!(error = %e, "cannot read the job");
                Err(Refusal::new(StatusCode::SERVICE_UNAVAILABLE, "store_unavailable", e.to_string()))
            }
        }
    }

    /// `POST /internal/v1/jobs/{id}/result`, once authenticated and the body is read.
    async fn record(&self, req: Request<Bytes>) -> Result<Response<Body>, Refusal> {
        let id = req.extensions().get::<JobId>().expect("routed").clone();
        let result: JobResult = serde_json::from_slice(req.body()).map_err(|e| {
            Refusal::new(StatusCode::UNPROCESSABLE_ENTITY, "invalid_result", format!("body is not a job result: {e}"))
        })?;
        if result.job_id != id {
            return Err(Refusal::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                "job_id_mismatch",
                format!("body is for job {} but the path names {id}", result.job_id),
            ));
        }
        match self.intake.record(&result).await {
            Ok(Recorded::Accepted) => {
                Ok(json_response(StatusCode::ACCEPTED, &serde_json::json!({"recorded": "accepted"})))
            }
            Ok(Recorded::Duplicate) => Ok(json_response(StatusCode::OK, &serde_json::json!({"recorded": "duplicate"}))),
            Ok(Recorded::Conflict) => Err(Refusal::new(
                StatusCode::CONFLICT,
                "conflict",
                "a different result was already recorded for this job",
            )),
            Err(e) => {
                tracing::error!(error = %e, "cannot record result");
                Err(Refusal::new(StatusCode::SERVICE_UNAVAILABLE, "store_unavailable", e.to_string()))
            }
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
    let settings = ServeSettings {
        name: "result_api",
        max_connections: api.limits.max_connections,
        header_read_timeout: api.limits.header_read_timeout,
        drain_timeout: Duration::from_secs(5),
    };
    let routes = Arc::new(api.routes());
    let service_for = || {
        let (api, routes) = (api.clone(), routes.clone());
        Some(hyper::service::service_fn(move |req| {
            let (api, routes) = (api.clone(), routes.clone());
            async move { Ok::<_, Infallible>(api.route(routes, req).await) }
        }))
    };
    serve_http1(listener, settings, service_for, shutdown.cancelled_owned()).await
}

/// 405 with the `Allow` header RFC 9110 asks for.
fn method_not_allowed(allow: &'static str) -> Response<Body> {
    let mut resp =
        Refusal::new(StatusCode::METHOD_NOT_ALLOWED, "method_not_allowed", format!("use {allow}")).into_response();
    resp.headers_mut().insert(http::header::ALLOW, http::HeaderValue::from_static(allow));
    resp
}
