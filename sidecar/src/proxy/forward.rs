//! The innermost forwarding service: the pooled client (keep-alive, per authority) over
//! [`PolicyConnector`], which runs the egress policy on every new upstream connection,
//! on the address about to be dialled. Times each request until the response head
//! (`sidecar_request_duration_seconds`). Its errors are the client's; the connector's
//! cause ([`crate::error::ProxyError`]) is found inside them by the rescue layer.
use super::{Body, BoxError};
use crate::connect::{Dialer, PolicyConnector};
use futures_util::future::BoxFuture;
use http::{Request, Response};
use http_body_util::Either;
use hyper::body::Incoming;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioTimer};
use prometheus_client::metrics::histogram::Histogram;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};
use tower::Service;

/// Cheap to clone (one `Arc`): the stack is cloned for every request.
#[derive(Clone)]
pub struct Forward {
    shared: Arc<Shared>,
}

struct Shared {
    client: Client<PolicyConnector, Incoming>,
    duration: Histogram,
}

impl Forward {
    /// `idle_timeout`: how long a pooled upstream connection may sit unused.
    pub fn new(dialer: Arc<Dialer>, idle_timeout: Duration, duration: Histogram) -> Self {
        let client = Client::builder(TokioExecutor::new())
            .pool_idle_timeout(idle_timeout)
            .pool_max_idle_per_host(64)
            .pool_timer(TokioTimer::new())
            .timer(TokioTimer::new())
            .build(PolicyConnector(dialer));
        Self { shared: Arc::new(Shared { client, duration }) }
    }
}

impl Service<Request<Incoming>> for Forward {
    type Response = Response<Body>;
    type Error = BoxError;
    type Future = BoxFuture<'static, Result<Response<Body>, BoxError>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        // The client queues on its pool itself; it is always ready.
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: Request<Incoming>) -> Self::Future {
        let started = Instant::now();
        let shared = self.shared.clone();
        Box::pin(async move {
            let resp = shared.client.request(req).await?;
            shared.duration.observe(started.elapsed().as_secs_f64());
            Ok(resp.map(Either::Left))
        })
    }
}
