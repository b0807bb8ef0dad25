//! The runtime-facing proxy listener as one tower stack: absolute-form forwarding,
//! CONNECT tunnels, and the local runtime API. Each concern is a small module with the
//! same shape (an `XLayer` building an `X<S>`, its own error type, errors boxed across
//! layers); [`new_proxy`] below is the one place they are stacked.
use crate::connect::Dialer;
use crate::limit::ConnectionLimit;
use crate::local_api::LocalApi;
use crate::metrics::Metrics;
use bytes::Bytes;
use common::secret::Secret;
use http_body_util::{Either, Full};
use hyper::body::Incoming;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tower::{Layer, ServiceBuilder};

mod forward;
mod hop_by_hop;
mod inject_key;
mod normalize;
mod relay;
mod rescue;
mod route;
#[cfg(test)]
mod tests;
mod tunnel;
mod tunnel_limit;

pub use forward::Forward;
pub use hop_by_hop::{strip_hop_by_hop, StripHopByHop, StripHopByHopLayer};
pub use inject_key::{InjectKey, InjectKeyLayer};
pub use normalize::{Normalize, NormalizeError, NormalizeLayer};
pub use rescue::{Rescue, RescueLayer};
pub use route::{KindCounters, LocalApiService, Route, RouteError};
pub use tunnel::Tunnel;
pub use tunnel_limit::{TunnelLimit, TunnelLimitError, TunnelLimitLayer, TunnelSlots};

pub type Body = Either<Incoming, Full<Bytes>>;

/// Errors cross layer boundaries boxed; [`Rescue`] turns them back into causes.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// The proxy listener's service: answers every request (errors are responses).
pub type ProxyService =
    Rescue<Route<TunnelLimit<Tunnel>, LocalApiService, StripHopByHop<InjectKey<Normalize<Forward>>>>>;

/// What the proxy stack needs besides the dialer, local API and metrics.
pub struct ProxySettings {
    /// The internal key, added to requests bound for the job manager.
    pub key: Option<Secret>,
    pub job_manager: Option<crate::authority::Target>,
    /// The proxy's own listen address: absolute-form requests to it are the local API.
    pub self_addr: SocketAddr,
    pub idle_timeout: Duration,
    pub tunnel_idle_timeout: Duration,
    pub max_tunnels: usize,
    /// The proxy listener's connection cap; a tunnel holds a slot of it.
    pub connections: ConnectionLimit,
}

/// Assembles the proxy stack. Outermost first, and why each layer sits where it does:
///
/// - `Rescue` wraps everything: any failure below, whatever its type, becomes the one
///   synthetic answer the client sees, counted and logged once.
/// - `Route` next: the kind of request (CONNECT, local API, forward) decides which of
///   the rest applies; it parses the destination once and hands it on as an extension.
/// - CONNECT: `TunnelLimit` before `Tunnel`, so a tunnel over the cap is refused
///   before anything is resolved or dialled.
/// - Forward: `StripHopByHop` first, so a client's `Connection: <name>` list cannot
///   remove a header added further in (the internal key); on the way back it strips
///   the response last. `InjectKey` then sets the internal key for the job manager
///   (and drops it from the response). The upstream proxy's credentials are added by
///   `Forward` itself, the only layer that knows the route (upstream or direct). `Normalize` (userinfo, `Host`, HTTP/1.1)
///   sits right on the client, so it sees the final request. The egress policy is not
///   a request layer: it runs in `Forward`'s connector, on the addresses actually
///   dialled after the one DNS lookup (a request-level check would need a second
///   lookup, and could be raced by it).
/// - The local API is a service of its own; it answers its own errors.
pub fn new_proxy(dialer: Arc<Dialer>, local: Arc<LocalApi>, metrics: Arc<Metrics>, s: ProxySettings) -> ProxyService {
    let connect = TunnelLimitLayer::new(s.max_tunnels, s.connections).layer(Tunnel::new(
        dialer.clone(),
        metrics.clone(),
        s.tunnel_idle_timeout,
    ));
    let forward = ServiceBuilder::new()
        .layer(StripHopByHopLayer)
        .layer(InjectKeyLayer::new(s.key.as_ref().map(Secret::expose), s.job_manager))
        .layer(NormalizeLayer)
        .service(Forward::new(dialer, s.idle_timeout, metrics.request_duration.clone()));
    let route = Route::new(s.self_addr, KindCounters::new(&metrics), connect, LocalApiService(local), forward);
    RescueLayer::new(metrics.errors.clone()).layer(route)
}
