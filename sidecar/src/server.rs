//! Accept loops: one per listener, each under its own connection cap
//! ([`ConnectionLimit`]: a client over it gets an immediate 503 instead of waiting in
//! the kernel backlog), serving one tower service per listener, and a graceful drain on
//! shutdown.
use crate::config::Limits;
use crate::limit::ConnectionLimit;
use crate::metrics::{ListenerLabel, Metrics};
use http::{Request, Response};
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tower::{Service, ServiceExt};
use tracing::Instrument;

pub struct Serve {
    pub name: &'static str,
    pub connections: ConnectionLimit,
    pub limits: Limits,
    pub shutdown: CancellationToken,
    pub tracker: TaskTracker,
    pub metrics: Arc<Metrics>,
    pub job_id: Option<String>,
}

impl Serve {
    /// Serves `service` (which answers every request itself: errors are already
    /// responses, hence `Infallible`) on `listener` until shutdown.
    pub async fn run<S, B>(self, listener: TcpListener, service: S)
    where
        S: Service<Request<Incoming>, Response = Response<B>, Error = Infallible> + Clone + Send + 'static,
        S::Future: Send + 'static,
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
        // The admin listener's probes and scrapes are not client connections.
        let counted = (self.name != "admin").then(|| {
            let label = ListenerLabel { listener: self.name };
            (
                self.metrics.connections.get_or_create(&label).clone(),
                self.metrics.open_connections.get_or_create(&label).clone(),
            )
        });
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
            let Ok(permit) = self.connections.try_acquire() else {
                self.metrics
                    .errors
                    .get_or_create(&crate::metrics::ReasonLabel { reason: "too_many_connections" })
                    .inc();
                ConnectionLimit::refuse(stream);
                continue;
            };
            let _ = stream.set_nodelay(true);
            if let Some((total, open)) = &counted {
                total.inc();
                open.inc();
            }
            let service = service.clone();
            let conn = builder
                .serve_connection(TokioIo::new(stream), service_fn(move |req| service.clone().oneshot(req)))
                .with_upgrades();
            let shutdown = self.shutdown.clone();
            let open = counted.as_ref().map(|(_, open)| open.clone());
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
                    if let Some(open) = open {
                        open.dec();
                    }
                    drop(permit);
                }
                .instrument(span),
            );
        }
    }
}
