//! The innermost forwarding service: pooled clients (keep-alive, per authority) over
//! [`PolicyConnector`], which runs the egress policy on every new upstream connection,
//! on the address about to be dialled. With an upstream proxy there are two clients,
//! one per route ([`Via`]), and the route is chosen here, before the request is sent:
//! only a request that goes to the upstream proxy gets its `Proxy-Authorization`, so
//! the credentials never reach a destination on the bypass list (which may be the
//! runtime's own pod). Times each request until the response head
//! (`sidecar_request_duration_seconds`). Its errors are the client's; the connector's
//! cause ([`crate::error::ProxyError`]) is found inside them by the rescue layer.
use super::{Body, BoxError};
use crate::authority::Target;
use crate::connect::{Dialer, PolicyConnector, Via};
use futures_util::future::BoxFuture;
use http::header::{HeaderValue, PROXY_AUTHORIZATION};
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
    dialer: Arc<Dialer>,
    direct: Client<PolicyConnector, Incoming>,
    /// Requests for the upstream proxy, and the `Proxy-Authorization` they carry.
    upstream: Option<(Client<PolicyConnector, Incoming>, Option<HeaderValue>)>,
    duration: Histogram,
}

impl Forward {
    /// `idle_timeout`: how long a pooled upstream connection may sit unused.
    pub fn new(dialer: Arc<Dialer>, idle_timeout: Duration, duration: Histogram) -> Self {
        let client = |via| {
            Client::builder(TokioExecutor::new())
                .pool_idle_timeout(idle_timeout)
                .pool_max_idle_per_host(64)
                .pool_timer(TokioTimer::new())
                .timer(TokioTimer::new())
                .build(PolicyConnector { dialer: dialer.clone(), via })
        };
        let upstream = dialer.upstream.as_ref().map(|up| {
            let auth = up.authorization().and_then(|v| HeaderValue::from_str(v).ok()).map(|mut v| {
                v.set_sensitive(true);
                v
            });
            (client(Via::Upstream), auth)
        });
        let direct = client(Via::Direct);
        Self { shared: Arc::new(Shared { dialer, direct, upstream, duration }) }
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

    fn call(&mut self, mut req: Request<Incoming>) -> Self::Future {
        let started = Instant::now();
        let shared = self.shared.clone();
        Box::pin(async move {
            let target = req.extensions().get::<Target>().cloned().ok_or("forward without a routed target")?;
            // Whatever the client sent is gone already (InjectKey); set it only here.
            req.headers_mut().remove(PROXY_AUTHORIZATION);
            let client = match (&shared.upstream, shared.dialer.route_http(&target).await) {
                (Some((client, auth)), Via::Upstream) => {
                    if let Some(auth) = auth {
                        req.headers_mut().insert(PROXY_AUTHORIZATION, auth.clone());
                    }
                    client
                }
                _ => &shared.direct,
            };
            let resp = client.request(req).await?;
            shared.duration.observe(started.elapsed().as_secs_f64());
            Ok(resp.map(Either::Left))
        })
    }
}
