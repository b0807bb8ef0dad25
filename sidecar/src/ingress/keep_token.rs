//! The job token (`x-job-token`): taken out of every request, so the runtime never sees
//! it, and out of every response. A dispatch (`POST /v1/jobs`) is read whole (up to
//! `--max-body-bytes`, 413 over; under the shared body budget, see [`crate::body`]) for its job id, and its token is kept for that id
//! *before* the runtime sees the job: a fast runtime posts its result before the
//! dispatch's answer gets back here. Undone when the runtime does not take the job (a
//! 429, an error, no answer), restoring what an earlier dispatch left. Its failures are
//! `ProxyError`s already (those of reading the body).
use crate::body::BodyLimits;
use crate::ingress_tokens::IngressTokens;
use crate::proxy::BoxError;
use bytes::Bytes;
use common::headers;
use common::runtime_api::INGRESS_DISPATCH_PATH;
use common::JobId;
use futures_util::future::BoxFuture;
use http::{Method, Request, Response};
use http_body_util::{Either, Full};
use std::sync::Arc;
use std::task::{Context, Poll};
use tower::{Layer, Service};

#[derive(serde::Deserialize)]
struct DispatchedJob {
    id: JobId,
}

#[derive(Clone)]
pub struct KeepTokenLayer {
    tokens: Arc<IngressTokens>,
    bodies: BodyLimits,
}

impl KeepTokenLayer {
    /// Tokens are kept in `tokens`; a dispatch body is read under `bodies`.
    pub fn new(tokens: Arc<IngressTokens>, bodies: BodyLimits) -> Self {
        Self { tokens, bodies }
    }
}

impl<S> Layer<S> for KeepTokenLayer {
    type Service = KeepToken<S>;
    fn layer(&self, inner: S) -> Self::Service {
        KeepToken { inner, tokens: self.tokens.clone(), bodies: self.bodies.clone() }
    }
}

/// Passes the request on with a body of `Either<B, Full<Bytes>>`: the original body,
/// or a dispatch's, read here.
#[derive(Clone)]
pub struct KeepToken<S> {
    inner: S,
    tokens: Arc<IngressTokens>,
    bodies: BodyLimits,
}

impl<S, B, RespB> Service<Request<B>> for KeepToken<S>
where
    S: Service<Request<Either<B, Full<Bytes>>>, Response = Response<RespB>> + Clone + Send + 'static,
    S::Future: Send,
    S::Error: Into<BoxError>,
    B: hyper::body::Body + Send + 'static,
    B::Data: Send,
    B::Error: std::error::Error + Send + Sync + 'static,
    RespB: Send + 'static,
{
    type Response = Response<RespB>;
    type Error = BoxError;
    type Future = BoxFuture<'static, Result<Response<RespB>, BoxError>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, req: Request<B>) -> Self::Future {
        // The ready service serves this request; a clone stays for the next one.
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        let (tokens, bodies) = (self.tokens.clone(), self.bodies.clone());
        Box::pin(async move {
            let (mut parts, body) = req.into_parts();
            let token = parts.headers.remove(headers::JOB_TOKEN);
            let dispatch = parts.method == Method::POST && parts.uri.path() == INGRESS_DISPATCH_PATH;
            // The dispatch's share of the body budget is held until the runtime answered
            // (its bytes live in the request until then).
            let (body, job_id, _share) = if dispatch {
                let held = bodies.read(body).await?;
                let id = serde_json::from_slice::<DispatchedJob>(&held.bytes).ok().map(|j| j.id);
                (Either::Right(Full::new(held.bytes)), id, Some(held.share))
            } else {
                (Either::Left(body), None, None)
            };
            let kept = match (job_id, token.as_ref().and_then(|t| t.to_str().ok())) {
                (Some(id), Some(t)) => {
                    let previous = tokens.keep(&id, t).await;
                    Some((id, previous))
                }
                _ => None,
            };
            let result = inner.call(Request::from_parts(parts, body)).await.map_err(Into::into);
            if !matches!(&result, Ok(r) if r.status().is_success()) {
                if let Some((id, previous)) = kept {
                    tokens.restore(&id, previous).await;
                }
            }
            let mut resp = result?;
            resp.headers_mut().remove(headers::JOB_TOKEN);
            Ok(resp)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::ProxyError;
    use http::StatusCode;
    use http_body_util::BodyExt;
    use std::convert::Infallible;
    use tower::util::BoxCloneService;
    use tower::ServiceExt;

    type In = Full<Bytes>;

    fn limits(max: usize) -> BodyLimits {
        BodyLimits::new(max, std::time::Duration::from_secs(5), 1 << 20)
    }

    /// A runtime answering `status`; its answer says whether it saw a token and carries one.
    fn runtime(status: StatusCode) -> BoxCloneService<Request<Either<In, In>>, Response<bool>, Infallible> {
        BoxCloneService::new(tower::service_fn(move |req: Request<Either<In, In>>| async move {
            let mut resp = Response::new(req.headers().contains_key(headers::JOB_TOKEN));
            *resp.status_mut() = status;
            resp.headers_mut().insert(headers::JOB_TOKEN, "leak".parse().unwrap());
            let _ = req.into_body().collect().await;
            Ok(resp)
        }))
    }

    fn request(method: Method, path: &str, id: &str) -> Request<In> {
        Request::builder()
            .method(method)
            .uri(path)
            .header(headers::JOB_TOKEN, format!("tok-{id}"))
            .body(Full::new(Bytes::from(format!(r#"{{"id":"{id}"}}"#))))
            .unwrap()
    }

    fn id(s: &str) -> JobId {
        JobId::new(s).unwrap()
    }

    #[tokio::test]
    async fn a_taken_dispatch_keeps_its_token_and_nobody_sees_it() {
        let tokens = Arc::new(IngressTokens::new(None));
        let svc = KeepTokenLayer::new(tokens.clone(), limits(1024)).layer(runtime(StatusCode::ACCEPTED));
        let resp = svc.oneshot(request(Method::POST, "/v1/jobs", "j1")).await.unwrap();
        assert!(!resp.body(), "the runtime saw the token");
        assert!(!resp.headers().contains_key(headers::JOB_TOKEN));
        assert_eq!(tokens.get(&id("j1")).as_deref(), Some("tok-j1"));
    }

    #[tokio::test]
    async fn a_refused_dispatch_restores_the_earlier_token() {
        let tokens = Arc::new(IngressTokens::new(None));
        tokens.keep(&id("j1"), "earlier").await;
        let svc = KeepTokenLayer::new(tokens.clone(), limits(1024)).layer(runtime(StatusCode::TOO_MANY_REQUESTS));
        let resp = svc.oneshot(request(Method::POST, "/v1/jobs", "j1")).await.unwrap();
        assert_eq!(resp.status(), StatusCode::TOO_MANY_REQUESTS);
        assert_eq!(tokens.get(&id("j1")).as_deref(), Some("earlier"));
    }

    #[tokio::test]
    async fn other_requests_lose_the_token_and_keep_nothing() {
        let tokens = Arc::new(IngressTokens::new(None));
        let svc = KeepTokenLayer::new(tokens.clone(), limits(1024)).layer(runtime(StatusCode::OK));
        let resp = svc.oneshot(request(Method::PUT, "/v1/jobs", "j1")).await.unwrap();
        assert!(!resp.body());
        assert_eq!(tokens.get(&id("j1")), None);
    }

    #[tokio::test]
    async fn a_dispatch_over_the_body_limit_is_refused_before_the_runtime() {
        let tokens = Arc::new(IngressTokens::new(None));
        let svc = KeepTokenLayer::new(tokens.clone(), limits(4)).layer(runtime(StatusCode::ACCEPTED));
        let err = svc.oneshot(request(Method::POST, "/v1/jobs", "j1")).await.unwrap_err();
        assert!(matches!(err.downcast_ref::<ProxyError>(), Some(ProxyError::BodyTooLarge { limit: 4 })), "{err}");
        assert_eq!(tokens.get(&id("j1")), None);
    }
}
