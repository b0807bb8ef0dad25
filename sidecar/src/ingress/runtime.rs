//! The runtime end of the ingress: the request re-addressed to `--ingress-upstream` (its
//! path and query kept, `Host` set to the runtime's address) and sent over a pooled
//! HTTP/1 client. The runtime's answer comes back as it is; an unreachable runtime is a
//! [`ProxyError::Connect`] (502 `connect_failed`).
use crate::error::ProxyError;
use crate::proxy::{Body, BoxError};
use futures_util::future::BoxFuture;
use http::{header, HeaderValue, Request, Response, Uri};
use http_body_util::Either;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioTimer};
use std::net::SocketAddr;
use std::task::{Context, Poll};
use tower::Service;

#[derive(Clone)]
pub struct Runtime {
    upstream: SocketAddr,
    host: HeaderValue,
    client: Client<HttpConnector, Body>,
}

impl Runtime {
    pub fn new(upstream: SocketAddr) -> Self {
        let mut connector = HttpConnector::new();
        connector.set_nodelay(true);
        let client = Client::builder(TokioExecutor::new()).pool_timer(TokioTimer::new()).build(connector);
        let host = HeaderValue::from_str(&upstream.to_string()).expect("socket address is a valid header");
        Self { upstream, host, client }
    }
}

impl Service<Request<Body>> for Runtime {
    type Response = Response<Body>;
    type Error = BoxError;
    type Future = BoxFuture<'static, Result<Response<Body>, BoxError>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: Request<Body>) -> Self::Future {
        let (mut parts, body) = req.into_parts();
        let path_and_query = parts.uri.path_and_query().map(|p| p.as_str()).unwrap_or("/");
        parts.uri = match Uri::try_from(format!("http://{}{}", self.upstream, path_and_query)) {
            Ok(uri) => uri,
            Err(e) => {
                let e = ProxyError::BadRequest(format!("bad path: {e}"));
                return Box::pin(futures_util::future::ready(Err(e.into())));
            }
        };
        parts.headers.insert(header::HOST, self.host.clone());
        let sent = self.client.request(Request::from_parts(parts, body));
        let target = self.upstream;
        Box::pin(async move {
            match sent.await {
                Ok(resp) => Ok(resp.map(Either::Left)),
                Err(e) => Err(ProxyError::Connect { target: target.to_string(), message: e.to_string() }.into()),
            }
        })
    }
}
