//! Ingress for persistent workloads: the job manager dispatches jobs over HTTP to the
//! pod; only requests carrying the internal key (checked in constant time) get through,
//! minus the key. A dispatch (`POST /v1/jobs`) also carries the job's token, which is
//! kept here (never shown to the runtime) so the runtime's later
//! `POST /v1/jobs/{id}/result` to the local API is delivered with it. The runtime's
//! answers, 429 included, go back unchanged.
use crate::error::ProxyError;
use crate::ingress_tokens::IngressTokens;
use crate::local_api::read_body;
use crate::metrics::{KindLabel, Metrics};
use crate::proxy::strip_hop_by_hop;
use bytes::Bytes;
use common::headers;
use common::runtime_api::INGRESS_DISPATCH_PATH;
use common::secret::Secret;
use common::JobId;
use http::{header, HeaderValue, Method, Request, Response, Uri};
use http_body_util::{Either, Full};
use hyper::body::Incoming;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioTimer};
use std::net::SocketAddr;
use std::sync::Arc;

type OutBody = Either<Incoming, Full<Bytes>>;

pub struct IngressProxy {
    key: Secret,
    upstream: SocketAddr,
    client: Client<HttpConnector, OutBody>,
    tokens: Arc<IngressTokens>,
    max_body: usize,
    metrics: Arc<Metrics>,
}

#[derive(serde::Deserialize)]
struct DispatchedJob {
    id: JobId,
}

impl IngressProxy {
    pub fn new(
        key: Secret,
        upstream: SocketAddr,
        tokens: Arc<IngressTokens>,
        max_body: usize,
        metrics: Arc<Metrics>,
    ) -> Self {
        let mut connector = HttpConnector::new();
        connector.set_nodelay(true);
        let client = Client::builder(TokioExecutor::new()).pool_timer(TokioTimer::new()).build(connector);
        Self { key, upstream, client, tokens, max_body, metrics }
    }

    pub async fn handle(&self, req: Request<Incoming>) -> Response<OutBody> {
        self.metrics.requests.get_or_create(&KindLabel { kind: "ingress" }).inc();
        match self.forward(req).await {
            Ok(r) => r,
            Err(e) => {
                self.metrics.errors.get_or_create(&crate::metrics::ReasonLabel { reason: e.label() }).inc();
                tracing::info!(error = %e, label = e.label(), "ingress request refused");
                e.response().map(Either::Right)
            }
        }
    }

    async fn forward(&self, req: Request<Incoming>) -> Result<Response<OutBody>, ProxyError> {
        let presented = req.headers().get(headers::INTERNAL_API_KEY).ok_or(ProxyError::MissingKey)?;
        if !self.key.matches(presented.as_bytes()) {
            return Err(ProxyError::BadKey);
        }
        let (mut parts, body) = req.into_parts();
        parts.headers.remove(headers::INTERNAL_API_KEY);
        strip_hop_by_hop(&mut parts.headers);
        let token = parts.headers.remove(headers::JOB_TOKEN);
        let path_and_query = parts.uri.path_and_query().map(|p| p.as_str()).unwrap_or("/");
        parts.uri = Uri::try_from(format!("http://{}{}", self.upstream, path_and_query))
            .map_err(|e| ProxyError::BadRequest(format!("bad path: {e}")))?;
        parts.headers.insert(
            header::HOST,
            HeaderValue::from_str(&self.upstream.to_string()).expect("socket address is a valid header"),
        );

        let dispatch = parts.method == Method::POST && parts.uri.path() == INGRESS_DISPATCH_PATH;
        let (body, job_id) = if dispatch {
            let bytes = read_body(body, self.max_body).await?;
            let id = serde_json::from_slice::<DispatchedJob>(&bytes).ok().map(|j| j.id);
            (Either::Right(Full::new(bytes)), id)
        } else {
            (Either::Left(body), None)
        };
        // Keep the token *before* the runtime sees the job: a fast runtime posts its result
        // before the dispatch's answer gets back here. Undone when the runtime does not
        // take the job (a 429, an error), restoring what an earlier dispatch left.
        let kept = match (&job_id, token.as_ref().and_then(|t| t.to_str().ok())) {
            (Some(id), Some(t)) => Some((id.clone(), self.tokens.keep(id, t).await)),
            _ => None,
        };
        let undo = |kept: Option<(JobId, Option<String>)>| async {
            if let Some((id, previous)) = kept {
                self.tokens.restore(&id, previous).await;
            }
        };
        let resp = match self.client.request(Request::from_parts(parts, body)).await {
            Ok(r) => r,
            Err(e) => {
                undo(kept).await;
                return Err(ProxyError::Connect { target: self.upstream.to_string(), message: e.to_string() });
            }
        };
        if !resp.status().is_success() {
            undo(kept).await;
        }
        let (mut parts, body) = resp.into_parts();
        strip_hop_by_hop(&mut parts.headers);
        parts.headers.remove(headers::INTERNAL_API_KEY);
        parts.headers.remove(headers::JOB_TOKEN);
        Ok(Response::from_parts(parts, Either::Left(body)))
    }
}
