//! Which credentials a forwarded request carries. The internal API key: a runtime never
//! chooses it (whatever it sent is dropped), requests to the job manager get it, and it
//! never comes back in a response. A client's `Proxy-Authorization` (meant for us) is
//! dropped too; the upstream proxy's own is added by `Forward`, which alone knows
//! whether a request goes to the upstream proxy or straight to its destination (the
//! job manager, the bypass list). Cannot fail, so no error type.
use crate::authority::Target;
use common::headers;
use futures_util::future::{MapOk, TryFutureExt};
use http::header::{self, HeaderValue};
use http::{Request, Response};
use std::sync::Arc;
use std::task::{Context, Poll};
use tower::{Layer, Service};

#[derive(Clone, Debug)]
pub struct InjectKeyLayer {
    credentials: Arc<Credentials>,
}

#[derive(Debug)]
struct Credentials {
    /// The internal key, a sensitive header value.
    key: Option<HeaderValue>,
    job_manager: Option<Target>,
}

impl InjectKeyLayer {
    /// `key` goes to requests for `job_manager`. A key that is not a valid header value
    /// is left out.
    pub fn new(key: Option<&str>, job_manager: Option<Target>) -> Self {
        let sensitive = |v: &str| {
            let mut v = HeaderValue::from_str(v).ok()?;
            v.set_sensitive(true);
            Some(v)
        };
        Self { credentials: Arc::new(Credentials { key: key.and_then(sensitive), job_manager }) }
    }
}

impl<S> Layer<S> for InjectKeyLayer {
    type Service = InjectKey<S>;
    fn layer(&self, inner: S) -> Self::Service {
        InjectKey { inner, credentials: self.credentials.clone() }
    }
}

/// Expects the request's destination as a [`Target`] extension (set by the router).
#[derive(Clone, Debug)]
pub struct InjectKey<S> {
    inner: S,
    credentials: Arc<Credentials>,
}

impl<S, ReqB, RespB> Service<Request<ReqB>> for InjectKey<S>
where
    S: Service<Request<ReqB>, Response = Response<RespB>>,
{
    type Response = Response<RespB>;
    type Error = S::Error;
    type Future = MapOk<S::Future, fn(Response<RespB>) -> Response<RespB>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: Request<ReqB>) -> Self::Future {
        let c = &self.credentials;
        let to_job_manager = c.job_manager.is_some() && c.job_manager.as_ref() == req.extensions().get::<Target>();
        let h = req.headers_mut();
        h.remove(header::PROXY_AUTHORIZATION);
        h.remove(headers::INTERNAL_API_KEY);
        if let (true, Some(key)) = (to_job_manager, &c.key) {
            h.insert(headers::INTERNAL_API_KEY, key.clone());
        }
        self.inner.call(req).map_ok(drop_key as fn(_) -> _)
    }
}

fn drop_key<B>(mut resp: Response<B>) -> Response<B> {
    resp.headers_mut().remove(headers::INTERNAL_API_KEY);
    resp
}
