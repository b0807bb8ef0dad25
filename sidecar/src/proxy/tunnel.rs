//! CONNECT: dial the destination (policy, one DNS lookup, connect: [`Dialer`]), answer
//! `200`, then relay bytes both ways on the upgraded connection until both sides are
//! done or nothing moved for the tunnel idle timeout. Expects the destination as a
//! [`Target`] extension (the router) and the slots it holds as [`TunnelSlots`] (the
//! tunnel limit). Dial failures are the connector's [`crate::error::ProxyError`]s.
use super::tunnel_limit::TunnelSlots;
use super::{relay, Body, BoxError};
use crate::authority::Target;
use crate::connect::{Dialer, Io};
use crate::metrics::{Metrics, SideLabel};
use futures_util::future::BoxFuture;
use http::{Request, Response, StatusCode};
use http_body_util::{Either, Full};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use prometheus_client::metrics::counter::Counter;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::TcpStream;
use tower::Service;

/// Per-direction buffer of the generic relay (TLS upstream proxy, or a client stream
/// hyper would not hand back). Plain TCP tunnels use [`relay::one_way`] (splice; TLS
/// streams a buffered copy).
const TUNNEL_BUF: usize = 16 * 1024;

#[derive(Clone)]
pub struct Tunnel {
    shared: Arc<Shared>,
}

struct Shared {
    dialer: Arc<Dialer>,
    metrics: Arc<Metrics>,
    idle_timeout: Duration,
    from_client: Counter,
    from_upstream: Counter,
}

impl Tunnel {
    pub fn new(dialer: Arc<Dialer>, metrics: Arc<Metrics>, idle_timeout: Duration) -> Self {
        let from_client = metrics.tunnel_received_bytes.get_or_create(&SideLabel { side: "client" }).clone();
        let from_upstream = metrics.tunnel_received_bytes.get_or_create(&SideLabel { side: "upstream" }).clone();
        Self { shared: Arc::new(Shared { dialer, metrics, idle_timeout, from_client, from_upstream }) }
    }
}

impl Service<Request<Incoming>> for Tunnel {
    type Response = Response<Body>;
    type Error = BoxError;
    type Future = BoxFuture<'static, Result<Response<Body>, BoxError>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, mut req: Request<Incoming>) -> Self::Future {
        let this = self.shared.clone();
        Box::pin(async move {
            let target = req.extensions_mut().remove::<Target>().ok_or("CONNECT without a routed target")?;
            let slots = req.extensions_mut().remove::<TunnelSlots>();
            let upstream = this.dialer.dial_tunnel(&target).await?;
            tokio::spawn(async move {
                match hyper::upgrade::on(req).await {
                    Ok(upgraded) => {
                        this.metrics.tunnels.inc();
                        this.metrics.open_tunnels.inc();
                        // Unwrap hyper's upgrade back to the client's TcpStream so the
                        // relay copies socket to socket; bytes hyper already read go first.
                        match upgraded.downcast::<TokioIo<TcpStream>>() {
                            Ok(parts) => {
                                let mut upstream = upstream;
                                if !parts.read_buf.is_empty() {
                                    this.from_client.inc_by(parts.read_buf.len() as u64);
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
                drop(slots);
            });
            let mut resp = Response::new(Either::Right(Full::default()));
            *resp.status_mut() = StatusCode::OK;
            Ok(resp)
        })
    }
}

impl Shared {
    /// Copies both ways until both sides are done (a half-close is passed on as a
    /// shutdown of the other side's write half) or nothing moved for the idle timeout.
    async fn relay<C: AsyncRead + AsyncWrite + Unpin>(&self, client: C, upstream: Io) {
        let epoch = Instant::now();
        let last = Arc::new(AtomicU64::new(0));
        let mut client = Tracked { inner: client, epoch, last: last.clone(), bytes: self.from_client.clone() };
        let mut upstream = Tracked { inner: upstream, epoch, last: last.clone(), bytes: self.from_upstream.clone() };
        let idle = self.idle_timeout;
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
        let up = relay::one_way(client_r, upstream_w, activity(&self.from_client));
        let down = relay::one_way(upstream_r, client_w, activity(&self.from_upstream));
        let idle = self.idle_timeout;
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
