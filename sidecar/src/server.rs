//! Accept loops: one per listener, a semaphore capping concurrent connections (a client
//! over the cap gets an immediate 503 instead of waiting in the kernel backlog), and a
//! graceful drain on shutdown.
use crate::config::Limits;
use crate::metrics::Metrics;
use http::{Request, Response};
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use std::convert::Infallible;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::Instrument;

pub struct Serve {
    pub name: &'static str,
    pub connections: Arc<Semaphore>,
    pub limits: Limits,
    pub shutdown: CancellationToken,
    pub tracker: TaskTracker,
    pub metrics: Arc<Metrics>,
    pub job_id: Option<String>,
}

const OVERLOADED: &[u8] = b"HTTP/1.1 503 Service Unavailable\r\nx-sidecar-error: too_many_connections\r\ncontent-type: text/plain\r\ncontent-length: 21\r\nconnection: close\r\n\r\ntoo many connections\n";

impl Serve {
    pub async fn run<H, Fut, B>(self, listener: TcpListener, handler: H)
    where
        H: Fn(Request<Incoming>) -> Fut + Clone + Send + Sync + 'static,
        Fut: Future<Output = Response<B>> + Send + 'static,
        B: hyper::body::Body + Send + 'static,
        B::Data: Send,
        B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    {
        let mut builder = http1::Builder::new();
        builder
            .timer(TokioTimer::new())
            .header_read_timeout(self.limits.header_read_timeout)
            .max_buf_size(self.limits.max_header_bytes)
            .keep_alive(true);
        let job_id = self.job_id.as_deref().unwrap_or("-").to_string();
        loop {
            let accepted = tokio::select! {
                _ = self.shutdown.cancelled() => break,
                r = listener.accept() => r,
            };
            let (stream, peer) = match accepted {
                Ok(a) => a,
                Err(e) => {
                    // EMFILE and friends: back off briefly instead of spinning.
                    tracing::warn!(listener = self.name, error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(20)).await;
                    continue;
                }
            };
            let Ok(permit) = self.connections.clone().try_acquire_owned() else {
                self.metrics
                    .errors
                    .get_or_create(&crate::metrics::ReasonLabel { reason: "too_many_connections" })
                    .inc();
                tokio::spawn(async move {
                    let mut stream = stream;
                    let _ = tokio::time::timeout(Duration::from_secs(1), stream.write_all(OVERLOADED)).await;
                });
                continue;
            };
            let _ = stream.set_nodelay(true);
            self.metrics.connections.inc();
            self.metrics.open_connections.inc();
            let handler = handler.clone();
            let conn = builder
                .serve_connection(
                    TokioIo::new(stream),
                    service_fn(move |req| {
                        let fut = handler(req);
                        async move { Ok::<_, Infallible>(fut.await) }
                    }),
                )
                .with_upgrades();
            let shutdown = self.shutdown.clone();
            let metrics = self.metrics.clone();
            let span = tracing::info_span!("conn", listener = self.name, job_id = %job_id, %peer);
            self.tracker.spawn(
                async move {
                    let mut conn = std::pin::pin!(conn);
                    let mut draining = false;
                    let res = loop {
                        tokio::select! {
                            r = conn.as_mut() => break r,
                            _ = shutdown.cancelled(), if !draining => {
                                draining = true;
                                conn.as_mut().graceful_shutdown();
                            }
                        }
                    };
                    if let Err(e) = res {
                        tracing::debug!(error = %e, "connection ended with an error");
                    }
                    metrics.open_connections.dec();
                    drop(permit);
                }
                .instrument(span),
            );
        }
    }
}
