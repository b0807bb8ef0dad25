//! DNS resolution behind a small trait, so the proxy resolves exactly once per dial and
//! tests can point names anywhere without touching /etc/hosts.
use std::collections::HashMap;
use std::future::Future;
use std::net::IpAddr;
use std::pin::Pin;
use std::sync::Arc;

pub type ResolveFuture<'a> = Pin<Box<dyn Future<Output = Result<Vec<IpAddr>, ResolveError>> + Send + 'a>>;

#[derive(Debug, thiserror::Error)]
#[error("cannot resolve {name}: {message}")]
pub struct ResolveError {
    pub name: String,
    pub message: String,
}

pub trait Resolve: Send + Sync + 'static {
    fn resolve<'a>(&'a self, name: &'a str) -> ResolveFuture<'a>;
}

/// The system resolver configuration (resolv.conf, /etc/hosts) through hickory.
pub struct SystemResolver(hickory_resolver::TokioResolver);

impl SystemResolver {
    pub fn new() -> Result<Self, ResolveError> {
        let err = |e: &dyn std::fmt::Display| ResolveError { name: "(resolver setup)".into(), message: e.to_string() };
        let builder = hickory_resolver::TokioResolver::builder_tokio().map_err(|e| err(&e))?;
        Ok(Self(builder.build().map_err(|e| err(&e))?))
    }
}

impl Resolve for SystemResolver {
    fn resolve<'a>(&'a self, name: &'a str) -> ResolveFuture<'a> {
        Box::pin(async move {
            // Search domains apply (runtimes call in-cluster services by short name).
            // That cannot open a way to the API server: `kubernetes*` names are refused
            // before lookup and its address (KUBERNETES_SERVICE_HOST) after it.
            let lookup = self
                .0
                .lookup_ip(name)
                .await
                .map_err(|e| ResolveError { name: name.to_string(), message: e.to_string() })?;
            Ok(lookup.iter().collect())
        })
    }
}

/// A fixed table, for tests and for pinning names in place.
#[derive(Clone, Default)]
pub struct StaticResolver(Arc<HashMap<String, Vec<IpAddr>>>);

impl StaticResolver {
    pub fn new(entries: impl IntoIterator<Item = (String, Vec<IpAddr>)>) -> Self {
        Self(Arc::new(entries.into_iter().collect()))
    }
}

impl Resolve for StaticResolver {
    fn resolve<'a>(&'a self, name: &'a str) -> ResolveFuture<'a> {
        let found = self.0.get(name).cloned();
        Box::pin(async move {
            found.ok_or_else(|| ResolveError { name: name.to_string(), message: "no such name (static table)".into() })
        })
    }
}
