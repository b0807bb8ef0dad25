//! Only requests carrying the internal API key get through (compared in constant time):
//! 401 when it is missing, 403 when it is wrong. The runtime never sees the key (it is
//! removed from the request) and neither does the job manager in an answer (removed from
//! the response).
use crate::error::ProxyError;
use crate::proxy::BoxError;
use common::headers;
use common::secret::Secret;
use futures_util::future::{self, Either, MapErr, MapOk, Ready, TryFutureExt};
use http::{Request, Response};
use std::sync::Arc;
use std::task::{Context, Poll};
use tower::{Layer, Service};

#[derive(Clone, Debug)]
pub struct RequireKeyLayer {
    key: Arc<Secret>,
}

impl RequireKeyLayer {
    pub fn new(key: Secret) -> Self {
        Self { key: Arc::new(key) }
    }
}

impl<S> Layer<S> for RequireKeyLayer {
    type Service = RequireKey<S>;
    fn layer(&self, inner: S) -> Self::Service {
        RequireKey { inner, key: self.key.clone() }
    }
}

#[derive(Clone, Debug)]
pub struct RequireKey<S> {
    inner: S,
    key: Arc<Secret>,
}

type Passed<F, E, R> = MapOk<MapErr<F, fn(E) -> BoxError>, fn(R) -> R>;

impl<S, ReqB, RespB> Service<Request<ReqB>> for RequireKey<S>
where
    S: Service<Request<ReqB>, Response = Response<RespB>>,
    S::Error: Into<BoxError>,
{
    type Response = Response<RespB>;
    type Error = BoxError;
    type Future = Either<Ready<Result<Response<RespB>, BoxError>>, Passed<S::Future, S::Error, Response<RespB>>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, mut req: Request<ReqB>) -> Self::Future {
        let refused = match req.headers().get(headers::INTERNAL_API_KEY) {
            // The causes are the proxy's own (`ProxyError`), so the rescue of either stack
            // answers them without knowing this layer.
            None => Some(ProxyError::MissingKey),
            Some(presented) if !self.key.matches(presented.as_bytes()) => Some(ProxyError::BadKey),
            Some(_) => None,
        };
        if let Some(e) = refused {
            return Either::Left(future::ready(Err(e.into())));
        }
        req.headers_mut().remove(headers::INTERNAL_API_KEY);
        Either::Right(self.inner.call(req).map_err(Into::into as fn(_) -> _).map_ok(drop_key as fn(_) -> _))
    }
}

fn drop_key<B>(mut resp: Response<B>) -> Response<B> {
    resp.headers_mut().remove(headers::INTERNAL_API_KEY);
    resp
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::convert::Infallible;
    use tower::ServiceExt;

    /// Echoes whether the request still carried the key, and puts one in its answer.
    fn runtime() -> impl Service<Request<()>, Response = Response<bool>, Error = Infallible> {
        tower::service_fn(|req: Request<()>| async move {
            let mut resp = Response::new(req.headers().contains_key(headers::INTERNAL_API_KEY));
            resp.headers_mut().insert(headers::INTERNAL_API_KEY, "leak".parse().unwrap());
            Ok(resp)
        })
    }

    fn request(key: Option<&str>) -> Request<()> {
        let mut b = Request::post("/v1/jobs");
        if let Some(k) = key {
            b = b.header(headers::INTERNAL_API_KEY, k);
        }
        b.body(()).unwrap()
    }

    #[tokio::test]
    async fn the_right_key_passes_and_is_removed_both_ways() {
        let svc = RequireKeyLayer::new(Secret::new("k3y")).layer(runtime());
        let resp = svc.oneshot(request(Some("k3y"))).await.unwrap();
        assert!(!resp.body(), "the runtime saw the key");
        assert!(!resp.headers().contains_key(headers::INTERNAL_API_KEY));
    }

    #[tokio::test]
    async fn a_missing_or_wrong_key_is_refused_with_its_cause() {
        for (key, want) in [(None, "missing internal API key"), (Some("k3"), "invalid internal API key")] {
            let svc = RequireKeyLayer::new(Secret::new("k3y")).layer(runtime());
            let err = svc.oneshot(request(key)).await.unwrap_err();
            assert_eq!(err.to_string(), want);
        }
    }
}
