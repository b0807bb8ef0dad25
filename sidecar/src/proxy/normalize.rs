//! What the origin sees of the request line: the authority the client addressed minus
//! any userinfo (in the URI and in `Host`, which is overwritten when it disagrees, RFC
//! 9112 3.2.2), sent as HTTP/1.1.
use super::BoxError;
use futures_util::future::{self, Either, MapErr, Ready, TryFutureExt};
use http::header::{self, HeaderValue};
use http::{Request, Uri, Version};
use std::task::{Context, Poll};
use tower::{Layer, Service};

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum NormalizeError {
    #[error("bad authority")]
    BadAuthority,
    #[error("bad request target")]
    BadTarget,
}

#[derive(Clone, Copy, Debug, Default)]
pub struct NormalizeLayer;

impl<S> Layer<S> for NormalizeLayer {
    type Service = Normalize<S>;
    fn layer(&self, inner: S) -> Self::Service {
        Normalize { inner }
    }
}

#[derive(Clone, Debug)]
pub struct Normalize<S> {
    inner: S,
}

impl<S, ReqB> Service<Request<ReqB>> for Normalize<S>
where
    S: Service<Request<ReqB>>,
    S::Error: Into<BoxError>,
{
    type Response = S::Response;
    type Error = BoxError;
    type Future = Either<Ready<Result<S::Response, BoxError>>, MapErr<S::Future, fn(S::Error) -> BoxError>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, mut req: Request<ReqB>) -> Self::Future {
        if let Err(e) = normalize(&mut req) {
            return Either::Left(future::ready(Err(e.into())));
        }
        Either::Right(self.inner.call(req).map_err(Into::into as fn(_) -> _))
    }
}

fn normalize<B>(req: &mut Request<B>) -> Result<(), NormalizeError> {
    let authority = req.uri().authority().map(|a| a.as_str()).unwrap_or_default();
    let host_value = match authority.rfind('@') {
        Some(i) => &authority[i + 1..],
        None => authority,
    };
    let host_value = HeaderValue::from_str(host_value).map_err(|_| NormalizeError::BadAuthority)?;
    if authority.contains('@') {
        *req.uri_mut() = strip_userinfo(req.uri())?;
    }
    req.headers_mut().insert(header::HOST, host_value);
    *req.version_mut() = Version::HTTP_11;
    Ok(())
}

pub(super) fn strip_userinfo(uri: &Uri) -> Result<Uri, NormalizeError> {
    let mut parts = uri.clone().into_parts();
    if let Some(a) = &parts.authority {
        let s = a.as_str();
        let hostport = &s[s.rfind('@').map(|i| i + 1).unwrap_or(0)..];
        parts.authority = Some(hostport.parse().map_err(|_| NormalizeError::BadAuthority)?);
    }
    Uri::from_parts(parts).map_err(|_| NormalizeError::BadTarget)
}
