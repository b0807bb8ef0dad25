//! Which way a request goes. The order of checks, and why:
//!
//! 1. CONNECT first: its target is an authority, never the local API.
//! 2. No authority, or our own listen address: the local API (never dialled, so the
//!    loopback rule does not apply to it).
//! 3. Anything else is forwarded; the policy runs inside the connector, on the address
//!    about to be dialled.
//!
//! The destination travels on as a [`Target`] request extension. Each kind of request
//! is counted here (`sidecar_requests_total{kind}`); a request whose target does not
//! parse is counted under none.
use super::{Body, BoxError};
use crate::authority::{effective_ip, parse_authority, target_of_uri, AuthorityError, Host, Target};
use crate::local_api::LocalApi;
use crate::metrics::{KindLabel, Metrics};
use futures_util::future::{self, BoxFuture, Either, Ready};
use http::{Method, Request, Response};
use hyper::body::Incoming;
use prometheus_client::metrics::counter::Counter;
use std::net::SocketAddr;
use std::sync::Arc;
use std::task::{Context, Poll};
use tower::Service;

#[derive(Debug, thiserror::Error)]
pub enum RouteError {
    #[error(transparent)]
    BadTarget(#[from] AuthorityError),
    #[error("CONNECT needs host:port")]
    ConnectWithoutAuthority,
}

/// Per-kind request counters, fetched once: no label lookup on the hot path.
#[derive(Debug)]
pub struct KindCounters {
    forward: Counter,
    connect: Counter,
    local: Counter,
}

impl KindCounters {
    pub fn new(metrics: &Metrics) -> Self {
        let kind = |kind| metrics.requests.get_or_create(&KindLabel { kind }).clone();
        Self { forward: kind("forward"), connect: kind("connect"), local: kind("local") }
    }
}

/// Sends CONNECT to `connect`, requests for the sidecar itself to `local`, the rest to
/// `forward`.
#[derive(Clone, Debug)]
pub struct Route<C, L, F> {
    self_addr: SocketAddr,
    counters: Arc<KindCounters>,
    connect: C,
    local: L,
    forward: F,
}

impl<C, L, F> Route<C, L, F> {
    pub fn new(self_addr: SocketAddr, counters: KindCounters, connect: C, local: L, forward: F) -> Self {
        Self { self_addr, counters: Arc::new(counters), connect, local, forward }
    }

    /// Our own listen address, however it is spelled (`localhost`, `127.1`, ...).
    fn is_self(&self, t: &Target) -> bool {
        if t.port != self.self_addr.port() {
            return false;
        }
        let own = self.self_addr.ip();
        match &t.host {
            Host::Ip(ip) => {
                let ip = effective_ip(*ip);
                ip == own || (ip.is_loopback() && (own.is_loopback() || own.is_unspecified()))
            }
            Host::Name(n) => n == "localhost" && (own.is_loopback() || own.is_unspecified()),
        }
    }
}

type Refused<T> = Ready<Result<T, BoxError>>;

impl<C, L, F> Service<Request<Incoming>> for Route<C, L, F>
where
    C: Service<Request<Incoming>, Response = Response<Body>, Error = BoxError>,
    L: Service<Request<Incoming>, Response = Response<Body>, Error = BoxError>,
    F: Service<Request<Incoming>, Response = Response<Body>, Error = BoxError>,
{
    type Response = Response<Body>;
    type Error = BoxError;
    type Future = Either<Either<C::Future, L::Future>, Either<F::Future, Refused<Response<Body>>>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        // Every branch is always ready (checked at call time, where the branch is known).
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, mut req: Request<Incoming>) -> Self::Future {
        let refuse = |e: RouteError| Either::Right(Either::Right(future::ready(Err(e.into()))));
        if req.method() == Method::CONNECT {
            self.counters.connect.inc();
            let target = match req.uri().authority() {
                None => return refuse(RouteError::ConnectWithoutAuthority),
                Some(a) => match parse_authority(a.as_str(), None) {
                    Ok(t) => t,
                    Err(e) => return refuse(e.into()),
                },
            };
            req.extensions_mut().insert(target);
            return Either::Left(Either::Left(self.connect.call(req)));
        }
        let target = match req.uri().authority() {
            None => None,
            Some(_) => match target_of_uri(req.uri()) {
                Ok(t) if self.is_self(&t) => None,
                Ok(t) => Some(t),
                Err(e) => return refuse(e.into()),
            },
        };
        match target {
            None => {
                self.counters.local.inc();
                Either::Left(Either::Right(self.local.call(req)))
            }
            Some(target) => {
                self.counters.forward.inc();
                req.extensions_mut().insert(target);
                Either::Right(Either::Left(self.forward.call(req)))
            }
        }
    }
}

/// The local runtime API as a service: it answers every request itself.
#[derive(Clone)]
pub struct LocalApiService(pub Arc<LocalApi>);

impl Service<Request<Incoming>> for LocalApiService {
    type Response = Response<Body>;
    type Error = BoxError;
    type Future = BoxFuture<'static, Result<Response<Body>, BoxError>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: Request<Incoming>) -> Self::Future {
        let local = self.0.clone();
        Box::pin(async move { Ok(local.handle(req).await.map(http_body_util::Either::Right)) })
    }
}
