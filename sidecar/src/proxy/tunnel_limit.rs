//! The tunnel cap (`--max-tunnels`). A tunnel outlives its HTTP connection, so besides
//! a tunnel slot it takes a slot of the proxy listener's connection cap ([`ConnectionLimit`]);
//! either one missing refuses the tunnel at once (503 `too_many_tunnels`), before
//! anything is dialled. The slots travel with the request as a [`TunnelSlots`]
//! extension; whoever serves the tunnel holds them until it ends.
use super::BoxError;
use crate::limit::{ConnectionLimit, ConnectionPermit};
use futures_util::future::{self, Either, MapErr, Ready, TryFutureExt};
use http::Request;
use std::sync::Arc;
use std::task::{Context, Poll};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tower::{Layer, Service};

#[derive(Debug, thiserror::Error)]
pub enum TunnelLimitError {
    #[error("too many open tunnels")]
    Tunnels,
    #[error("too many connections for another tunnel")]
    Connections,
}

/// A tunnel slot and a connection slot, given back when the last clone drops.
#[derive(Clone, Debug)]
pub struct TunnelSlots {
    _slots: Arc<(OwnedSemaphorePermit, ConnectionPermit)>,
}

#[derive(Clone, Debug)]
pub struct TunnelLimitLayer {
    caps: Arc<Caps>,
}

#[derive(Debug)]
struct Caps {
    tunnels: Arc<Semaphore>,
    connections: ConnectionLimit,
}

impl TunnelLimitLayer {
    pub fn new(max_tunnels: usize, connections: ConnectionLimit) -> Self {
        Self { caps: Arc::new(Caps { tunnels: Arc::new(Semaphore::new(max_tunnels)), connections }) }
    }
}

impl<S> Layer<S> for TunnelLimitLayer {
    type Service = TunnelLimit<S>;
    fn layer(&self, inner: S) -> Self::Service {
        TunnelLimit { inner, caps: self.caps.clone() }
    }
}

#[derive(Clone, Debug)]
pub struct TunnelLimit<S> {
    inner: S,
    caps: Arc<Caps>,
}

impl<S, B> Service<Request<B>> for TunnelLimit<S>
where
    S: Service<Request<B>>,
    S::Error: Into<BoxError>,
{
    type Response = S::Response;
    type Error = BoxError;
    type Future = Either<Ready<Result<S::Response, BoxError>>, MapErr<S::Future, fn(S::Error) -> BoxError>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, mut req: Request<B>) -> Self::Future {
        let caps = &self.caps;
        let slots = caps
            .tunnels
            .clone()
            .try_acquire_owned()
            .map_err(|_| TunnelLimitError::Tunnels)
            .and_then(|t| Ok((t, caps.connections.try_acquire().map_err(|_| TunnelLimitError::Connections)?)));
        match slots {
            Ok(slots) => {
                req.extensions_mut().insert(TunnelSlots { _slots: Arc::new(slots) });
                Either::Right(self.inner.call(req).map_err(Into::into as fn(_) -> _))
            }
            Err(e) => Either::Left(future::ready(Err(e.into()))),
        }
    }
}
