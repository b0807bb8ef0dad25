//! Hop-by-hop headers (RFC 9110 7.6.1) describe one connection and are never
//! forwarded: stripped from the request on the way in and from the response on the way
//! back. Cannot fail, so no error type.
use futures_util::future::{MapOk, TryFutureExt};
use http::header::{self, HeaderMap, HeaderName};
use http::{Request, Response};
use std::task::{Context, Poll};
use tower::{Layer, Service};

#[derive(Clone, Copy, Debug, Default)]
pub struct StripHopByHopLayer;

impl<S> Layer<S> for StripHopByHopLayer {
    type Service = StripHopByHop<S>;
    fn layer(&self, inner: S) -> Self::Service {
        StripHopByHop { inner }
    }
}

#[derive(Clone, Debug)]
pub struct StripHopByHop<S> {
    inner: S,
}

impl<S, ReqB, RespB> Service<Request<ReqB>> for StripHopByHop<S>
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
        strip_hop_by_hop(req.headers_mut());
        self.inner.call(req).map_ok(strip_response as fn(_) -> _)
    }
}

fn strip_response<B>(mut resp: Response<B>) -> Response<B> {
    strip_hop_by_hop(resp.headers_mut());
    resp
}

/// Hop-by-hop headers: the fixed set plus every name the `Connection` header lists.
pub fn strip_hop_by_hop(h: &mut HeaderMap) {
    // A message framed by Transfer-Encoding is re-framed by hyper on the way out; a
    // Content-Length next to it (a smuggling classic) must not survive to disagree.
    if h.contains_key(header::TRANSFER_ENCODING) {
        h.remove(header::CONTENT_LENGTH);
    }
    if h.contains_key(header::CONNECTION) {
        let listed: Vec<HeaderName> = h
            .get_all(header::CONNECTION)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .filter_map(|n| HeaderName::from_bytes(n.trim().as_bytes()).ok())
            .collect();
        for n in listed {
            h.remove(n);
        }
    }
    for n in [
        header::CONNECTION,
        header::TE,
        header::TRAILER,
        header::TRANSFER_ENCODING,
        header::UPGRADE,
        header::PROXY_AUTHENTICATE,
    ] {
        h.remove(n);
    }
    h.remove("keep-alive");
    h.remove("proxy-connection");
}
