//! Which credentials a forwarded request carries. The internal API key: a runtime never
//! chooses it (whatever it sent is dropped), requests to the job manager get it, and it
//! never comes back in a response. Corporate-proxy credentials (`Proxy-Authorization`)
//! go only where the corporate proxy does: never to the job manager, which is dialled
//! directly (see `Dialer::upstream_for`). Cannot fail, so no error type.
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
    /// `Basic ...` for the upstream proxy, a sensitive header value.
    upstream_authorization: Option<HeaderValue>,
}

impl InjectKeyLayer {
    /// `key` goes to requests for `job_manager`; `upstream_authorization` to every
    /// other request. Values that are not valid header values are left out.
    pub fn new(key: Option<&str>, job_manager: Option<Target>, upstream_authorization: Option<&str>) -> Self {
        let sensitive = |v: &str| {
            let mut v = HeaderValue::from_str(v).ok()?;
            v.set_sensitive(true);
            Some(v)
        };
        Self {
            credentials: Arc::new(Credentials {
                key: key.and_then(sensitive),
                job_manager,
                upstream_authorization: upstream_authorization.and_then(sensitive),
            }),
        }
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
        match (to_job_manager, &c.key, &c.upstream_authorization) {
            (true, Some(key), _) => {
                h.insert(headers::INTERNAL_API_KEY, key.clone());
            }
            (false, _, Some(auth)) => {
                h.insert(header::PROXY_AUTHORIZATION, auth.clone());
            }
            _ => {}
        }
        self.inner.call(req).map_ok(drop_key as fn(_) -> _)
    }
}

fn drop_key<B>(mut resp: Response<B>) -> Response<B> {
    resp.headers_mut().remove(headers::INTERNAL_API_KEY);
    resp
}
