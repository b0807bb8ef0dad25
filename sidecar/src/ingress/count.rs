//! Counts every request that reaches the ingress (`sidecar_requests_total{kind="ingress"}`),
//! refused ones included. Cannot fail, so no error type.
use prometheus_client::metrics::counter::Counter;
use std::task::{Context, Poll};
use tower::{Layer, Service};

#[derive(Clone, Debug)]
pub struct CountLayer {
    counter: Counter,
}

impl CountLayer {
    /// `counter`: the one counter every request increments (fetched once, no label lookup
    /// per request).
    pub fn new(counter: Counter) -> Self {
        Self { counter }
    }
}

impl<S> Layer<S> for CountLayer {
    type Service = Count<S>;
    fn layer(&self, inner: S) -> Self::Service {
        Count { inner, counter: self.counter.clone() }
    }
}

#[derive(Clone, Debug)]
pub struct Count<S> {
    inner: S,
    counter: Counter,
}

impl<S, Req> Service<Req> for Count<S>
where
    S: Service<Req>,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = S::Future;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Req) -> Self::Future {
        self.counter.inc();
        self.inner.call(req)
    }
}
