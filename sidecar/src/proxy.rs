//! The runtime-facing HTTP service: absolute-form forwarding, CONNECT tunnels, and the
//! local runtime API for origin-form requests (or absolute-form ones addressed to the
//! sidecar itself). The order of checks, and why:
//!
//! 1. CONNECT first: its target is an authority, never the local API.
//! 2. No authority, or our own listen address: the local API (never dialled, so the
//!    loopback rule does not apply to it).
//! 3. Anything else is forwarded; the policy runs inside the connector, on the address
//!    about to be dialled.
use crate::authority::{parse_authority, target_of_uri, Host, Target};
use crate::connect::{Dialer, Io, PolicyConnector};
use crate::error::ProxyError;
use crate::local_api::LocalApi;
use crate::metrics::{DirectionLabel, KindLabel, Metrics};
use bytes::Bytes;
use common::headers;
use common::secret::Secret;
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Method, Request, Response, StatusCode, Uri, Version};
use http_body_util::{Either, Full};
use hyper::body::Incoming;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use prometheus_client::metrics::counter::Counter;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::TcpStream;
use tokio::sync::Semaphore;

mod relay;
#[cfg(test)]
mod tests;

pub type Body = Either<Incoming, Full<Bytes>>;

/// Per-direction buffer of the generic relay (TLS upstream proxy, or a client stream
/// hyper would not hand back). Plain TCP tunnels use [`relay::one_way`] (splice; TLS
/// streams a buffered copy).
const TUNNEL_BUF: usize = 16 * 1024;

pub struct Proxy {
    pub dialer: Arc<Dialer>,
    client: Client<PolicyConnector, Incoming>,
    pub local: Arc<LocalApi>,
    pub metrics: Arc<Metrics>,
    /// The internal key, added to requests bound for the job manager.
    key: Option<HeaderValue>,
    job_manager: Option<Target>,
    upstream_authorization: Option<HeaderValue>,
    self_addr: SocketAddr,
    tunnel_idle_timeout: Duration,
    tunnels: Arc<Semaphore>,
    connections: Arc<Semaphore>,
    bytes_up: Counter,
    bytes_down: Counter,
    // Per-kind request counters, fetched once: no label lookup on the hot path.
    count_forward: Counter,
    count_connect: Counter,
    count_local: Counter,
}

pub struct ProxySettings {
    pub key: Option<Secret>,
    pub job_manager: Option<Target>,
    pub self_addr: SocketAddr,
    pub idle_timeout: Duration,
    pub tunnel_idle_timeout: Duration,
    pub max_tunnels: usize,
    pub connections: Arc<Semaphore>,
}

impl Proxy {
    pub fn new(dialer: Arc<Dialer>, local: Arc<LocalApi>, metrics: Arc<Metrics>, s: ProxySettings) -> Self {
        let client = Client::builder(TokioExecutor::new())
            .pool_idle_timeout(s.idle_timeout)
            .pool_max_idle_per_host(64)
            .pool_timer(TokioTimer::new())
            .timer(TokioTimer::new())
            .build(PolicyConnector(dialer.clone()));
        let key = s.key.as_ref().and_then(|k| {
            let mut v = HeaderValue::from_str(k.expose()).ok()?;
            v.set_sensitive(true);
            Some(v)
        });
        let upstream_authorization = dialer.upstream.as_ref().and_then(|u| u.authorization()).and_then(|a| {
            let mut v = HeaderValue::from_str(a).ok()?;
            v.set_sensitive(true);
            Some(v)
        });
        let bytes_up = metrics.bytes.get_or_create(&DirectionLabel { direction: "upstream" }).clone();
        let bytes_down = metrics.bytes.get_or_create(&DirectionLabel { direction: "downstream" }).clone();
        let kind = |kind| metrics.requests.get_or_create(&KindLabel { kind }).clone();
        let (count_forward, count_connect, count_local) = (kind("forward"), kind("connect"), kind("local"));
        Self {
            dialer,
            client,
            local,
            metrics,
            key,
            job_manager: s.job_manager,
            upstream_authorization,
            self_addr: s.self_addr,
            tunnel_idle_timeout: s.tunnel_idle_timeout,
            tunnels: Arc::new(Semaphore::new(s.max_tunnels)),
            connections: s.connections,
            bytes_up,
            bytes_down,
            count_forward,
            count_connect,
            count_local,
        }
    }

    pub async fn handle(self: Arc<Self>, req: Request<Incoming>) -> Response<Body> {
        if req.method() == Method::CONNECT {
            self.count_connect.inc();
            return self.connect(req).await.unwrap_or_else(|e| self.rescue(e));
        }
        let target = match req.uri().authority() {
            None => return self.local_api(req).await,
            Some(_) => match target_of_uri(req.uri()) {
                Ok(t) => t,
                Err(e) => return self.rescue(e.into()),
            },
        };
        if self.is_self(&target) {
            return self.local_api(req).await;
        }
        self.count_forward.inc();
        self.forward(req, target).await.unwrap_or_else(|e| self.rescue(e))
    }

    async fn local_api(&self, req: Request<Incoming>) -> Response<Body> {
        self.count_local.inc();
        self.local.handle(req).await.map(Either::Right)
    }

    fn rescue(&self, e: ProxyError) -> Response<Body> {
        self.metrics.errors.get_or_create(&crate::metrics::ReasonLabel { reason: e.label() }).inc();
        if !matches!(e, ProxyError::Denied(_)) {
            // Refusals are logged where they are decided, with their class.
            tracing::info!(error = %e, label = e.label(), "request failed");
        }
        e.response().map(Either::Right)
    }

    /// Our own listen address, however it is spelled (`localhost`, `127.1`, ...).
    fn is_self(&self, t: &Target) -> bool {
        if t.port != self.self_addr.port() {
            return false;
        }
        let own = self.self_addr.ip();
        match &t.host {
            Host::Ip(ip) => {
                let ip = crate::authority::effective_ip(*ip);
                ip == own || (ip.is_loopback() && (own.is_loopback() || own.is_unspecified()))
            }
            Host::Name(n) => n == "localhost" && (own.is_loopback() || own.is_unspecified()),
        }
    }

    async fn forward(&self, mut req: Request<Incoming>, target: Target) -> Result<Response<Body>, ProxyError> {
        let to_job_manager = self.job_manager.as_ref() == Some(&target);
        let h = req.headers_mut();
        strip_hop_by_hop(h);
        h.remove(header::PROXY_AUTHORIZATION);
        // A runtime never gets to choose the key: whatever it sent is dropped.
        h.remove(headers::INTERNAL_API_KEY);
        if to_job_manager {
            if let Some(k) = &self.key {
                h.insert(headers::INTERNAL_API_KEY, k.clone());
            }
        }
        // Corporate proxy credentials go only where the corporate proxy does (the job
        // manager is dialled directly; see Dialer::upstream_for).
        if let (Some(auth), false) = (&self.upstream_authorization, to_job_manager) {
            h.insert(header::PROXY_AUTHORIZATION, auth.clone());
        }
        // The origin sees the authority the client addressed, minus any userinfo; a
        // mismatching Host header is overwritten (RFC 9112 3.2.2).
        let authority = req.uri().authority().map(|a| a.as_str()).unwrap_or_default();
        let host_value = match authority.rfind('@') {
            Some(i) => &authority[i + 1..],
            None => authority,
        };
        let host_value =
            HeaderValue::from_str(host_value).map_err(|_| ProxyError::BadRequest("bad authority".into()))?;
        if authority.contains('@') {
            *req.uri_mut() = strip_userinfo(req.uri())?;
        }
        req.headers_mut().insert(header::HOST, host_value);
        *req.version_mut() = Version::HTTP_11;

        let started = Instant::now();
        let mut resp = match self.client.request(req).await {
            Ok(r) => r,
            Err(e) => {
                return Err(match ProxyError::find_in(&e) {
                    Some(p) => clone_error(p),
                    None => ProxyError::Upstream(error_chain(&e)),
                })
            }
        };
        self.metrics.request_duration.observe(started.elapsed().as_secs_f64());
        let h = resp.headers_mut();
        strip_hop_by_hop(h);
        h.remove(headers::INTERNAL_API_KEY);
        Ok(resp.map(Either::Left))
    }

    async fn connect(self: &Arc<Self>, req: Request<Incoming>) -> Result<Response<Body>, ProxyError> {
        let authority =
            req.uri().authority().ok_or_else(|| ProxyError::BadRequest("CONNECT needs host:port".into()))?;
        let target = parse_authority(authority.as_str(), None)?;
        let tunnel_permit = self.tunnels.clone().try_acquire_owned().map_err(|_| ProxyError::TooManyTunnels)?;
        // A tunnel outlives its HTTP connection; it keeps a connection slot of its own.
        let conn_permit = self.connections.clone().try_acquire_owned().map_err(|_| ProxyError::TooManyTunnels)?;
        let upstream = self.dialer.dial_tunnel(&target).await?;
        let this = self.clone();
        tokio::spawn(async move {
            match hyper::upgrade::on(req).await {
                Ok(upgraded) => {
                    this.metrics.tunnels.inc();
                    this.metrics.open_tunnels.inc();
                    // Unwrap hyper's upgrade back to the client's TcpStream so the relay
                    // copies socket to socket; bytes hyper already read go first.
                    match upgraded.downcast::<TokioIo<TcpStream>>() {
                        Ok(parts) => {
                            let mut upstream = upstream;
                            if !parts.read_buf.is_empty() {
                                this.bytes_up.inc_by(parts.read_buf.len() as u64);
                                if upstream.write_all(&parts.read_buf).await.is_err() {
                                    this.metrics.open_tunnels.dec();
                                    return;
                                }
                            }
                            match upstream.into_tcp() {
                                Ok(tcp) => this.relay_tcp(parts.io.into_inner(), tcp).await,
                                Err(upstream) => this.relay(parts.io.into_inner(), upstream).await,
                            }
                        }
                        Err(upgraded) => this.relay(TokioIo::new(upgraded), upstream).await,
                    }
                    this.metrics.open_tunnels.dec();
                }
                Err(e) => tracing::debug!(error = %e, "CONNECT upgrade failed"),
            }
            drop((tunnel_permit, conn_permit));
        });
        let mut resp = Response::new(Either::Right(Full::default()));
        *resp.status_mut() = StatusCode::OK;
        Ok(resp)
    }

    /// Copies both ways until both sides are done (a half-close is passed on as a
    /// shutdown of the other side's write half) or nothing moved for the idle timeout.
    async fn relay<C: AsyncRead + AsyncWrite + Unpin>(&self, client: C, upstream: Io) {
        let epoch = Instant::now();
        let last = Arc::new(AtomicU64::new(0));
        let mut client = Tracked { inner: client, epoch, last: last.clone(), bytes: self.bytes_up.clone() };
        let mut upstream = Tracked { inner: upstream, epoch, last: last.clone(), bytes: self.bytes_down.clone() };
        let idle = self.tunnel_idle_timeout;
        let watchdog = idle_watchdog(&last, epoch, idle);
        tokio::select! {
            r = tokio::io::copy_bidirectional_with_sizes(&mut client, &mut upstream, TUNNEL_BUF, TUNNEL_BUF) => {
                if let Err(e) = r {
                    tracing::debug!(error = %e, "tunnel ended with an error");
                }
            }
            _ = watchdog => tracing::info!(idle_secs = idle.as_secs(), "tunnel closed: idle timeout"),
        }
    }
}

/// Resolves once nothing moved through a tunnel for `idle` (`last` holds the time of
/// the last byte, in ms since `epoch`). Sleeps exactly until the earliest possible
/// expiry instead of ticking.
async fn idle_watchdog(last: &AtomicU64, epoch: Instant, idle: Duration) {
    loop {
        let since = Duration::from_millis(last.load(Ordering::Relaxed));
        let quiet = epoch.elapsed().saturating_sub(since);
        if quiet >= idle {
            return;
        }
        tokio::time::sleep(idle - quiet).await;
    }
}

impl Proxy {
    /// The common case, TCP on both sides: one relay per direction over owned halves
    /// (no lock between them), spliced through a pipe in the kernel where possible.
    /// EOF on one side is passed on as a write shutdown on the other (half-close); an
    /// error on either ends the tunnel; so does the idle timeout.
    async fn relay_tcp(&self, client: TcpStream, upstream: TcpStream) {
        let epoch = Instant::now();
        let last = AtomicU64::new(0);
        let (client_r, client_w) = client.into_split();
        let (upstream_r, upstream_w) = upstream.into_split();
        let activity = |bytes| relay::Activity { bytes, last: &last, epoch };
        let up = relay::one_way(client_r, upstream_w, activity(&self.bytes_up));
        let down = relay::one_way(upstream_r, client_w, activity(&self.bytes_down));
        let idle = self.tunnel_idle_timeout;
        let watchdog = idle_watchdog(&last, epoch, idle);
        tokio::pin!(up, down, watchdog);
        let (mut up_done, mut down_done) = (false, false);
        while !(up_done && down_done) {
            tokio::select! {
                r = &mut up, if !up_done => {
                    up_done = true;
                    match r {
                        Ok(mode) => tracing::trace!(?mode, "tunnel client side done"),
                        Err(e) => {
                            tracing::debug!(error = %e, "tunnel ended with an error (client side)");
                            return;
                        }
                    }
                }
                r = &mut down, if !down_done => {
                    down_done = true;
                    match r {
                        Ok(mode) => tracing::trace!(?mode, "tunnel upstream side done"),
                        Err(e) => {
                            tracing::debug!(error = %e, "tunnel ended with an error (upstream side)");
                            return;
                        }
                    }
                }
                _ = &mut watchdog => {
                    tracing::info!(idle_secs = idle.as_secs(), "tunnel closed: idle timeout");
                    return;
                }
            }
        }
    }
}

/// A stream that counts bytes read from it and stamps the time of the last activity.
struct Tracked<S> {
    inner: S,
    epoch: Instant,
    last: Arc<AtomicU64>,
    bytes: Counter,
}

impl<S: AsyncRead + Unpin> AsyncRead for Tracked<S> {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<std::io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        let r = Pin::new(&mut this.inner).poll_read(cx, buf);
        let n = buf.filled().len() - before;
        if n > 0 {
            this.bytes.inc_by(n as u64);
            this.last.store(this.epoch.elapsed().as_millis() as u64, Ordering::Relaxed);
        }
        r
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Tracked<S> {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write(cx, buf)
    }
    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }
    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}

/// Hop-by-hop headers (RFC 9110 7.6.1): the fixed set plus every name the `Connection`
/// header lists. They describe one connection and must not be forwarded.
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

fn strip_userinfo(uri: &Uri) -> Result<Uri, ProxyError> {
    let mut parts = uri.clone().into_parts();
    if let Some(a) = &parts.authority {
        let s = a.as_str();
        let hostport = &s[s.rfind('@').map(|i| i + 1).unwrap_or(0)..];
        parts.authority = Some(hostport.parse().map_err(|_| ProxyError::BadRequest("bad authority".into()))?);
    }
    Uri::from_parts(parts).map_err(|_| ProxyError::BadRequest("bad request target".into()))
}

fn error_chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        s.push_str(": ");
        s.push_str(&c.to_string());
        cur = c.source();
    }
    s
}

/// The connector's error reaches us by reference inside the client's error.
fn clone_error(e: &ProxyError) -> ProxyError {
    match e {
        ProxyError::Denied(d) => ProxyError::Denied(d.clone()),
        ProxyError::BadTarget(a) => ProxyError::BadTarget(a.clone()),
        ProxyError::ConnectTimeout { target } => ProxyError::ConnectTimeout { target: target.clone() },
        ProxyError::Connect { target, message } => {
            ProxyError::Connect { target: target.clone(), message: message.clone() }
        }
        ProxyError::Resolve(r) => {
            ProxyError::Resolve(crate::resolve::ResolveError { name: r.name.clone(), message: r.message.clone() })
        }
        ProxyError::UpstreamProxy(m) => ProxyError::UpstreamProxy(m.clone()),
        other => ProxyError::Upstream(other.to_string()),
    }
}
