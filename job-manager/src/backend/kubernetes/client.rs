//! The `kube::Client` every part shares (executor, result store, coordination, the
//! watch caches, the lease manager, the event recorder), built with [`ApiCallLayer`].
//! The layer sees every request, so nothing bypasses it: it classifies the request as
//! RBAC does (resource and verb, from the method and path), counts it by outcome in
//! `kubernetes_api_calls_total`, and, in debug builds, asserts that [`rbac`] declares
//! the right, so tests against the emulator fail when the code starts using a right
//! the chart's Role (generated from [`rbac::rules`]) lacks.
use crate::backend::kubernetes::metrics::{ApiCallLabels, KubeMetrics};
use crate::backend::kubernetes::rbac::{self, Resource, Verb};
use futures_util::future::BoxFuture;
use http::{Method, Request, Response, StatusCode, Uri};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use std::task::{Context, Poll};
use tower::{Layer, Service};

/// One request in RBAC's terms.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ApiCall {
    pub resource: Resource,
    pub verb: Verb,
}

/// The (resource, verb) of a request, as the API server authorizes it: the path names
/// the API group, the resource and its subresource (`jobrecords/status`), and whether
/// one object is addressed; the method and `watch=true` give the verb. `None` for a
/// path that names no resource [`rbac`] knows (the caller treats it as undeclared).
pub fn classify(method: &Method, uri: &Uri) -> Option<ApiCall> {
    let segments: Vec<&str> = uri.path().trim_matches('/').split('/').collect();
    let (group, rest) = match segments.as_slice() {
        ["api", _version, rest @ ..] => ("", rest),
        ["apis", group, _version, rest @ ..] => (*group, rest),
        _ => return None,
    };
    // Namespaced: `namespaces/{ns}/{resource}...`; `namespaces/{ns}` alone is a namespace.
    let rest = match rest {
        ["namespaces", _namespace, rest @ ..] if !rest.is_empty() => rest,
        other => other,
    };
    let (plural, named, subresource) = match rest {
        [plural] => (*plural, false, None),
        [plural, _name] => (*plural, true, None),
        [plural, _name, sub] => (*plural, true, Some(*sub)),
        _ => return None,
    };
    let name = match subresource {
        Some(sub) => format!("{plural}/{sub}"),
        None => plural.to_string(),
    };
    let resource = Resource::ALL.into_iter().find(|r| r.api_group() == group && r.name() == name)?;
    let watch = uri.query().is_some_and(|q| q.split('&').any(|kv| kv == "watch=true" || kv == "watch=1"));
    let verb = match (method, named) {
        (&Method::GET, true) => Verb::Get,
        (&Method::GET, false) if watch => Verb::Watch,
        (&Method::GET, false) => Verb::List,
        (&Method::POST, _) => Verb::Create,
        (&Method::PUT, _) => Verb::Update,
        (&Method::PATCH, _) => Verb::Patch,
        (&Method::DELETE, true) => Verb::Delete,
        (&Method::DELETE, false) => Verb::DeleteCollection,
        _ => return None,
    };
    Some(ApiCall { resource, verb })
}

/// Stable outcome label for an answer: `ok` for 2xx, else what the status means. A
/// 409 to a create is `AlreadyExists` (the name is taken); to anything else, a
/// `Conflict` (a stale resourceVersion).
pub fn status_outcome(status: StatusCode, verb: Option<Verb>) -> &'static str {
    match status.as_u16() {
        200..=299 => "ok",
        400 => "bad_request",
        401 => "unauthorized",
        403 => "forbidden",
        404 => "not_found",
        409 if verb == Some(Verb::Create) => "already_exists",
        409 => "conflict",
        410 => "gone",
        422 => "invalid",
        429 => "too_many_requests",
        500..=599 => "server_error",
        _ => "other_status",
    }
}

/// Counts and (in debug builds) RBAC-checks every request; see the module docs.
#[derive(Clone)]
pub struct ApiCallLayer {
    calls: Family<ApiCallLabels, Counter>,
}

impl ApiCallLayer {
    pub fn new(metrics: &KubeMetrics) -> Self {
        Self { calls: metrics.api_calls.clone() }
    }
}

impl<S> Layer<S> for ApiCallLayer {
    type Service = ApiCalls<S>;

    fn layer(&self, inner: S) -> Self::Service {
        ApiCalls { inner, calls: self.calls.clone() }
    }
}

#[derive(Clone)]
pub struct ApiCalls<S> {
    inner: S,
    calls: Family<ApiCallLabels, Counter>,
}

impl<S, B, R> Service<Request<B>> for ApiCalls<S>
where
    S: Service<Request<B>, Response = Response<R>>,
    S::Future: Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = BoxFuture<'static, Result<Self::Response, Self::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Request<B>) -> Self::Future {
        let call = classify(request.method(), request.uri());
        let declared = call.is_some_and(|c| rbac::allows(c.resource, c.verb));
        let what = (!declared).then(|| format!("{} {}", request.method(), request.uri()));
        let calls = self.calls.clone();
        let response = self.inner.call(request);
        Box::pin(async move {
            // Checked in the future, not in `call`: kube's client runs `call` in its
            // buffer's worker task, the future in the caller's, which the panic should fail.
            debug_assert!(
                declared,
                "{} ({}) is not declared in kubernetes/rbac.rs",
                what.as_deref().unwrap_or_default(),
                call.map(|c| format!("{} {}", c.verb.as_str(), c.resource.name()))
                    .unwrap_or_else(|| "no known resource".into())
            );
            let result = response.await;
            let outcome = match &result {
                Ok(r) => status_outcome(r.status(), call.map(|c| c.verb)),
                Err(_) => "transport",
            };
            let (resource, verb) = match call {
                Some(c) => (c.resource.name(), c.verb.as_str()),
                None => ("unknown", "unknown"),
            };
            calls.get_or_create(&ApiCallLabels { resource, verb, outcome }).inc();
            result
        })
    }
}

/// A client for `config` with [`ApiCallLayer`] outermost (so it sees the request as
/// the code made it, and every retry by a caller as its own call).
pub fn build(config: kube::Config, metrics: &KubeMetrics) -> Result<kube::Client, kube::Error> {
    Ok(kube::client::ClientBuilder::try_from(config)?.with_layer(&ApiCallLayer::new(metrics)).build())
}

/// `client` behind [`ApiCallLayer`]: for a client built elsewhere (tests, `run`'s
/// caller), so its calls are counted and checked like [`build`]'s.
pub fn instrument(client: kube::Client, metrics: &KubeMetrics) -> kube::Client {
    let namespace = client.default_namespace().to_string();
    let valid_until = *client.valid_until();
    let send = tower::service_fn(move |request: Request<kube::client::Body>| {
        let client = client.clone();
        async move { client.send(request).await }
    });
    kube::Client::new(ApiCallLayer::new(metrics).layer(send), namespace).with_valid_until(valid_until)
}

#[cfg(test)]
mod tests;
