//! The one place a failure becomes the answer a client sees. Every layer below fails
//! with its own error type, boxed across tower boundaries; here each cause is mapped to
//! a [`ProxyError`] (403 for a policy refusal, 502 for an unreachable upstream, 504 for
//! a timeout, 4xx for bad requests, 503 over a limit; 401/403 for the ingress's key), counted in
//! `sidecar_errors_total{reason}`, logged, and answered with `x-sidecar-error: <label>`.
use super::normalize::NormalizeError;
use super::route::RouteError;
use super::tunnel_limit::TunnelLimitError;
use super::{Body, BoxError};
use crate::error::ProxyError;
use crate::metrics::ReasonLabel;
use futures_util::future::BoxFuture;
use http::Response;
use http_body_util::Either;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use std::convert::Infallible;
use std::task::{Context, Poll};
use tower::{Layer, Service};

#[derive(Clone, Debug)]
pub struct RescueLayer {
    errors: Family<ReasonLabel, Counter>,
    log: &'static str,
}

impl RescueLayer {
    /// `errors`: the counter family failures are counted in, by label.
    pub fn new(errors: Family<ReasonLabel, Counter>) -> Self {
        Self { errors, log: "request failed" }
    }

    /// The message failures are logged with (default "request failed"), so each
    /// listener's log line says whose request it was.
    pub fn logged_as(self, log: &'static str) -> Self {
        Self { log, ..self }
    }
}

impl<S> Layer<S> for RescueLayer {
    type Service = Rescue<S>;
    fn layer(&self, inner: S) -> Self::Service {
        Rescue { inner, errors: self.errors.clone(), log: self.log }
    }
}

#[derive(Clone, Debug)]
pub struct Rescue<S> {
    inner: S,
    errors: Family<ReasonLabel, Counter>,
    log: &'static str,
}

impl<S, Req> Service<Req> for Rescue<S>
where
    S: Service<Req, Response = Response<Body>, Error = BoxError>,
    S::Future: Send + 'static,
{
    type Response = Response<Body>;
    type Error = Infallible;
    type Future = BoxFuture<'static, Result<Response<Body>, Infallible>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        match self.inner.poll_ready(cx) {
            Poll::Ready(Err(e)) => {
                // No layer here fails readiness; should one, its request is answered.
                tracing::warn!(error = %e, "service not ready");
                Poll::Ready(Ok(()))
            }
            other => other.map(|_| Ok(())),
        }
    }

    fn call(&mut self, req: Req) -> Self::Future {
        let fut = self.inner.call(req);
        let (errors, log) = (self.errors.clone(), self.log);
        Box::pin(async move {
            Ok(match fut.await {
                Ok(resp) => resp,
                Err(e) => rescue(cause(e), &errors, log),
            })
        })
    }
}

fn rescue(e: ProxyError, errors: &Family<ReasonLabel, Counter>, log: &str) -> Response<Body> {
    errors.get_or_create(&ReasonLabel { reason: e.label() }).inc();
    if !matches!(e, ProxyError::Denied(_)) {
        // Refusals are logged where they are decided, with their class.
        tracing::info!(error = %e, label = e.label(), "{log}");
    }
    e.response().map(Either::Right)
}

/// What went wrong, as the cause a client is told about.
pub fn cause(e: BoxError) -> ProxyError {
    let e = match e.downcast::<ProxyError>() {
        Ok(p) => return *p,
        Err(e) => e,
    };
    let e = match e.downcast::<RouteError>() {
        Ok(r) => {
            return match *r {
                RouteError::BadTarget(a) => ProxyError::BadTarget(a),
                r @ RouteError::ConnectWithoutAuthority => ProxyError::BadRequest(r.to_string()),
            }
        }
        Err(e) => e,
    };
    let e = match e.downcast::<NormalizeError>() {
        Ok(n) => return ProxyError::BadRequest(n.to_string()),
        Err(e) => e,
    };
    if e.is::<TunnelLimitError>() {
        return ProxyError::TooManyTunnels;
    }
    // The forwarding client wraps what the connector returned (policy, DNS, connect).
    match ProxyError::find_in(&*e) {
        Some(p) => clone_error(p),
        None => ProxyError::Upstream(error_chain(&*e)),
    }
}

fn error_chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        s.push_str(": ");
        s.push_str(&c.to_string());
        cur = c.source();
    }
    s
}

/// The connector's error reaches us by reference inside the client's error.
fn clone_error(e: &ProxyError) -> ProxyError {
    match e {
        ProxyError::Denied(d) => ProxyError::Denied(d.clone()),
        ProxyError::BadTarget(a) => ProxyError::BadTarget(a.clone()),
        ProxyError::ConnectTimeout { target } => ProxyError::ConnectTimeout { target: target.clone() },
        ProxyError::Connect { target, message } => {
            ProxyError::Connect { target: target.clone(), message: message.clone() }
        }
        ProxyError::Resolve(r) => {
            ProxyError::Resolve(crate::resolve::ResolveError { name: r.name.clone(), message: r.message.clone() })
        }
        ProxyError::UpstreamProxy(m) => ProxyError::UpstreamProxy(m.clone()),
        other => ProxyError::Upstream(other.to_string()),
    }
}
