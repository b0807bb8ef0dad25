//! Ingress for persistent workloads: the job manager dispatches jobs over HTTP to the
//! pod; only requests carrying the internal key (checked in constant time) get through,
//! minus the key. A dispatch (`POST /v1/jobs`) also carries the job's token, which is
//! kept here (never shown to the runtime) so the runtime's later
//! `POST /v1/jobs/{id}/result` to the local API is delivered with it. The runtime's
//! answers, 429 included, go back unchanged.
//!
//! One tower stack, the same shape as the proxy's (`crate::proxy`): each concern is a
//! small module, errors are boxed across layers and [`Rescue`] answers them;
//! [`new_ingress`] is the one place the layers are stacked.
use crate::ingress_tokens::IngressTokens;
use crate::metrics::{KindLabel, Metrics};
use crate::proxy::{Rescue, RescueLayer, StripHopByHop, StripHopByHopLayer};
use common::secret::Secret;
use std::net::SocketAddr;
use std::sync::Arc;
use tower::ServiceBuilder;

mod count;
mod keep_token;
mod require_key;
mod runtime;

pub use count::{Count, CountLayer};
pub use keep_token::{KeepToken, KeepTokenLayer};
pub use require_key::{RequireKey, RequireKeyLayer};
pub use runtime::Runtime;

/// The ingress listener's service: answers every request (errors are responses).
pub type IngressService = Count<Rescue<RequireKey<StripHopByHop<KeepToken<Runtime>>>>>;

/// What the ingress stack needs besides the token store and metrics.
pub struct IngressSettings {
    /// The internal key a request must carry.
    pub key: Secret,
    /// The runtime's listen address (`--ingress-upstream`).
    pub upstream: SocketAddr,
    /// The largest dispatch body read (`--max-body-bytes`).
    pub bodies: crate::body::BodyLimits,
}

/// Assembles the ingress stack. Outermost first, and why each layer sits where it does:
///
/// - The request counter first: every request counts, refused ones included.
/// - `Rescue`: any failure below becomes the one synthetic answer the job manager sees
///   (401/403 for the key, 413 for a dispatch body over the limit, 502 for an
///   unreachable runtime), counted and logged once.
/// - `RequireKey` before anything reads the request: a request without the right key
///   gets nothing else done to it (no body read, no token kept). It takes the key out
///   of the request, and out of the response.
/// - `StripHopByHop` after the key check (a `Connection: x-internal-api-key` cannot
///   hide the key from it) and before `KeepToken`, as the inline code had it; on the
///   way back it strips the runtime's response.
/// - `KeepToken` right on the runtime: it takes the job token out of every request,
///   keeps a dispatch's before the runtime sees the job, and undoes that unless the
///   runtime's answer (which it sees first) takes the job.
/// - `Runtime`: re-addresses the request to the runtime and sends it.
pub fn new_ingress(tokens: Arc<IngressTokens>, metrics: &Metrics, s: IngressSettings) -> IngressService {
    ServiceBuilder::new()
        .layer(CountLayer::new(metrics.requests.get_or_create(&KindLabel { kind: "ingress" }).clone()))
        .layer(RescueLayer::new(metrics.errors.clone()).logged_as("ingress request refused"))
        .layer(RequireKeyLayer::new(s.key))
        .layer(StripHopByHopLayer)
        .layer(KeepTokenLayer::new(tokens, s.bodies))
        .service(Runtime::new(s.upstream))
}
