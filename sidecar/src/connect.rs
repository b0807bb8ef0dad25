//! Dialing a destination: policy check, one DNS lookup, and a connect to an address that
//! passed (never a second lookup between check and connect), or the same through an
//! upstream (corporate) proxy. Also the connector the forwarding client pools over.
use crate::authority::{target_of_uri, Host, Target};
use crate::config::{Unresolved, UpstreamProxy};
use crate::error::ProxyError;
use crate::metrics::{ClassLabel, Metrics};
use crate::policy::{Class, Decision, EgressPolicy};
use crate::resolve::Resolve;
use hyper_util::client::legacy::connect::{Connected, Connection};
use hyper_util::rt::TokioIo;
use std::future::Future;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::TcpStream;

/// A connection to a destination or to the upstream proxy.
pub struct Io {
    kind: IoKind,
    /// True when this is a connection to an upstream proxy for plain-HTTP forwarding:
    /// the client must then send absolute-form requests.
    proxied: bool,
}

enum IoKind {
    Plain(TcpStream),
    Tls(Box<tokio_rustls::client::TlsStream<TcpStream>>),
}

impl Io {
    fn plain(s: TcpStream) -> Self {
        Self { kind: IoKind::Plain(s), proxied: false }
    }

    /// The TCP stream, when this is a plain connection (tunnels relay socket to socket).
    pub fn into_tcp(self) -> Result<TcpStream, Self> {
        match self.kind {
            IoKind::Plain(s) => Ok(s),
            kind => Err(Self { kind, proxied: self.proxied }),
        }
    }
}

impl AsyncRead for Io {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        match &mut self.get_mut().kind {
            IoKind::Plain(s) => Pin::new(s).poll_read(cx, buf),
            IoKind::Tls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Io {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        match &mut self.get_mut().kind {
            IoKind::Plain(s) => Pin::new(s).poll_write(cx, buf),
            IoKind::Tls(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
        }
    }
    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match &mut self.get_mut().kind {
            IoKind::Plain(s) => Pin::new(s).poll_flush(cx),
            IoKind::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
        }
    }
    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match &mut self.get_mut().kind {
            IoKind::Plain(s) => Pin::new(s).poll_shutdown(cx),
            IoKind::Tls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
        }
    }
    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        match &mut self.get_mut().kind {
            IoKind::Plain(s) => Pin::new(s).poll_write_vectored(cx, bufs),
            IoKind::Tls(s) => Pin::new(s.as_mut()).poll_write_vectored(cx, bufs),
        }
    }
    fn is_write_vectored(&self) -> bool {
        match &self.kind {
            IoKind::Plain(s) => s.is_write_vectored(),
            IoKind::Tls(s) => s.is_write_vectored(),
        }
    }
}

impl Connection for Io {
    fn connected(&self) -> Connected {
        Connected::new().proxy(self.proxied)
    }
}

/// The upstream proxy, ready to dial.
pub struct UpstreamDialer {
    config: UpstreamProxy,
    tls: Option<(tokio_rustls::TlsConnector, rustls_pki_types::ServerName<'static>)>,
}

impl UpstreamDialer {
    pub fn new(config: UpstreamProxy) -> Result<Self, String> {
        let tls = if config.tls {
            let client_config = crate::tls::upstream_client_config(config.ca_file.as_deref(), config.insecure)?;
            let name = rustls_pki_types::ServerName::try_from(config.host.clone())
                .map_err(|e| format!("upstream proxy host {:?}: {e}", config.host))?;
            Some((tokio_rustls::TlsConnector::from(Arc::new(client_config)), name))
        } else {
            None
        };
        Ok(Self { config, tls })
    }

    /// The value for `Proxy-Authorization`, if credentials were configured.
    pub fn authorization(&self) -> Option<&str> {
        self.config.authorization.as_ref().map(|s| s.expose())
    }

    async fn connect(&self) -> Result<Io, ProxyError> {
        let hp = format!("{}:{}", self.config.host, self.config.port);
        let tcp = TcpStream::connect(hp.as_str())
            .await
            .map_err(|e| ProxyError::UpstreamProxy(format!("cannot connect to {hp}: {e}")))?;
        let _ = tcp.set_nodelay(true);
        match &self.tls {
            None => Ok(Io::plain(tcp)),
            Some((connector, name)) => {
                let tls = connector
                    .connect(name.clone(), tcp)
                    .await
                    .map_err(|e| ProxyError::UpstreamProxy(format!("TLS to {hp}: {e}")))?;
                Ok(Io { kind: IoKind::Tls(Box::new(tls)), proxied: false })
            }
        }
    }

    /// Opens a tunnel to `target` through the upstream proxy with CONNECT.
    async fn tunnel(&self, target: &Target) -> Result<Io, ProxyError> {
        let mut io = self.connect().await?;
        let mut req = format!("CONNECT {target} HTTP/1.1\r\nHost: {target}\r\n");
        if let Some(auth) = self.authorization() {
            req.push_str("Proxy-Authorization: ");
            req.push_str(auth);
            req.push_str("\r\n");
        }
        req.push_str("\r\n");
        io.write_all(req.as_bytes()).await.map_err(|e| ProxyError::UpstreamProxy(e.to_string()))?;
        // Read the response head byte by byte: anything after it belongs to the tunnel.
        let mut head = Vec::with_capacity(256);
        while !head.ends_with(b"\r\n\r\n") {
            if head.len() > 16 * 1024 {
                return Err(ProxyError::UpstreamProxy("CONNECT response head too large".into()));
            }
            let b =
                io.read_u8().await.map_err(|e| ProxyError::UpstreamProxy(format!("reading CONNECT response: {e}")))?;
            head.push(b);
        }
        let status_line = head.split(|&b| b == b'\r').next().unwrap_or_default();
        let status_line = String::from_utf8_lossy(status_line);
        let code = status_line.split_whitespace().nth(1).unwrap_or("");
        if !code.starts_with('2') {
            return Err(ProxyError::UpstreamProxy(format!("CONNECT {target} refused: {status_line}")));
        }
        Ok(io)
    }
}

/// Everything needed to reach a destination under the policy.
pub struct Dialer {
    pub policy: EgressPolicy,
    pub report_only: bool,
    pub resolver: Arc<dyn Resolve>,
    pub upstream: Option<UpstreamDialer>,
    pub connect_timeout: Duration,
    pub metrics: Arc<Metrics>,
}

impl Dialer {
    /// The policy decision plus the addresses it approved. In report-only mode a refusal
    /// is logged and counted, and the addresses are returned anyway.
    pub async fn check(&self, target: &Target) -> Result<Vec<IpAddr>, ProxyError> {
        if let Some(d) = self.policy.decide_name(target) {
            if d.is_allowed() {
                return self.lookup(target).await;
            }
            self.refuse(target, d)?;
            return self.lookup(target).await;
        }
        let addrs = match self.lookup(target).await {
            Ok(a) => a,
            // Behind an upstream proxy the local resolver may know nothing about the
            // internet, but forwarding such a name lets the upstream's resolver pick an
            // address no rule of step 3 ever sees (metadata, the pod network). Only an
            // operator who says so (`--upstream-proxy-unresolved forward`) gets that.
            Err(ProxyError::Resolve(r)) if self.upstream.is_some() => {
                let unresolved = self.upstream.as_ref().map(|u| u.config.unresolved);
                if unresolved == Some(Unresolved::Forward) {
                    return Ok(Vec::new());
                }
                let reason = format!(
                    "{} does not resolve locally ({}); names the sidecar cannot check are not forwarded to the \
                     upstream proxy ({}=refuse)",
                    target.host,
                    r.message,
                    crate::config::ENV_UPSTREAM_PROXY_UNRESOLVED
                );
                self.refuse(target, Decision::deny(Class::Unresolved, reason))?;
                return Ok(Vec::new());
            }
            Err(e) => return Err(e),
        };
        let d = self.policy.decide_addresses(target, &addrs);
        if !d.is_allowed() {
            self.refuse(target, d)?;
        }
        Ok(addrs)
    }

    fn refuse(&self, target: &Target, d: Decision) -> Result<(), ProxyError> {
        let enforced = !self.report_only;
        self.metrics
            .denials
            .get_or_create(&ClassLabel { class: d.class.label(), enforced: if enforced { "true" } else { "false" } })
            .inc();
        if enforced {
            tracing::warn!(destination = %target, class = d.class.label(), reason = %d.reason, "egress refused");
            Err(ProxyError::Denied(d))
        } else {
            tracing::warn!(destination = %target, class = d.class.label(), reason = %d.reason, "egress would be refused (report-only)");
            Ok(())
        }
    }

    async fn lookup(&self, target: &Target) -> Result<Vec<IpAddr>, ProxyError> {
        match &target.host {
            Host::Ip(ip) => Ok(vec![*ip]),
            Host::Name(name) => Ok(self.resolver.resolve(name).await?),
        }
    }

    /// Policy-checked direct TCP connection to one of the approved addresses.
    async fn dial_direct(&self, target: &Target, addrs: &[IpAddr], deadline: Instant) -> Result<Io, ProxyError> {
        let mut last = None;
        for ip in addrs {
            let sa = SocketAddr::new(*ip, target.port);
            let left = deadline.saturating_duration_since(Instant::now());
            match tokio::time::timeout(left, TcpStream::connect(sa)).await {
                Ok(Ok(s)) => {
                    let _ = s.set_nodelay(true);
                    return Ok(Io::plain(s));
                }
                Ok(Err(e)) => last = Some(e),
                Err(_) => return Err(ProxyError::ConnectTimeout { target: target.to_string() }),
            }
        }
        Err(ProxyError::Connect {
            target: target.to_string(),
            message: last.map(|e| e.to_string()).unwrap_or_else(|| "no addresses".into()),
        })
    }

    /// The upstream proxy to use for `target`, if any. The job manager is in-cluster
    /// and always dialled directly, never through a corporate proxy; so is whatever the
    /// bypass list names.
    fn upstream_for(&self, target: &Target, resolved: &[IpAddr]) -> Option<&UpstreamDialer> {
        match &self.policy.job_manager {
            Some(jm) if jm == target => None,
            _ => self.upstream.as_ref().filter(|up| !up.config.bypass.matches(target, resolved)),
        }
    }

    /// Which way a plain-HTTP request to `target` will go, decided before it is sent so
    /// that only requests bound for the upstream proxy carry its credentials. A lookup
    /// happens only when the answer depends on it (a name, and CIDRs on the bypass
    /// list); it only routes: the connector checks the policy on its own lookup and
    /// refuses to dial a route other than this one ([`Dialer::dial_http`]).
    pub async fn route_http(&self, target: &Target) -> Via {
        let Some(up) = &self.upstream else {
            return Via::Direct;
        };
        if self.policy.job_manager.as_ref() == Some(target) {
            return Via::Direct;
        }
        let resolved = match &target.host {
            Host::Name(_) if !up.config.bypass.cidrs.is_empty() => self.lookup(target).await.unwrap_or_default(),
            _ => Vec::new(),
        };
        match self.upstream_for(target, &resolved) {
            Some(_) => Via::Upstream,
            None => Via::Direct,
        }
    }

    /// A connection for forwarding plain HTTP to `target` the way [`Dialer::route_http`]
    /// chose: direct, or to the upstream proxy (marked `proxied`, so requests go out in
    /// absolute form). Should the policy's own lookup route it the other way (a DNS
    /// answer that moved in or out of the bypass list), nothing is dialled: a request
    /// carrying the upstream's credentials must never reach anything else.
    pub async fn dial_http(&self, target: &Target, via: Via) -> Result<Io, ProxyError> {
        let deadline = Instant::now() + self.connect_timeout;
        let work = async {
            let addrs = self.check(target).await?;
            match (self.upstream_for(target, &addrs), via) {
                (Some(up), Via::Upstream) => {
                    let mut io = up.connect().await?;
                    io.proxied = true;
                    Ok(io)
                }
                (None, Via::Direct) => self.dial_direct(target, &addrs, deadline).await,
                _ => Err(ProxyError::UpstreamProxy(format!(
                    "the route to {target} changed between lookups (in or out of the bypass list); retry"
                ))),
            }
        };
        tokio::time::timeout_at(deadline.into(), work)
            .await
            .unwrap_or_else(|_| Err(ProxyError::ConnectTimeout { target: target.to_string() }))
    }

    /// A connection for a CONNECT tunnel to `target`. The upstream's credentials go
    /// only in the CONNECT sent to the upstream proxy ([`UpstreamDialer::tunnel`]); a
    /// direct tunnel carries nothing of the client's request but its bytes.
    pub async fn dial_tunnel(&self, target: &Target) -> Result<Io, ProxyError> {
        let deadline = Instant::now() + self.connect_timeout;
        let work = async {
            let addrs = self.check(target).await?;
            match self.upstream_for(target, &addrs) {
                Some(up) => up.tunnel(target).await,
                None => self.dial_direct(target, &addrs, deadline).await,
            }
        };
        tokio::time::timeout_at(deadline.into(), work)
            .await
            .unwrap_or_else(|_| Err(ProxyError::ConnectTimeout { target: target.to_string() }))
    }
}

/// The way a forwarded request goes: straight to its destination, or to the upstream
/// proxy. Each has its own connection pool, so a connection is never reused the other way.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Via {
    Direct,
    Upstream,
}

/// The forwarding client's connector: every new upstream connection goes through the
/// policy. Pooled connections were checked when they were dialled. One per route
/// ([`Via`]): the client pools per connector, so routes never share a connection.
#[derive(Clone)]
pub struct PolicyConnector {
    pub dialer: Arc<Dialer>,
    pub via: Via,
}

impl tower::Service<http::Uri> for PolicyConnector {
    type Response = TokioIo<Io>;
    type Error = ProxyError;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Self::Error>> + Send>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, uri: http::Uri) -> Self::Future {
        let (dialer, via) = (self.dialer.clone(), self.via);
        Box::pin(async move {
            let target = target_of_uri(&uri)?;
            dialer.dial_http(&target, via).await.map(TokioIo::new)
        })
    }
}
