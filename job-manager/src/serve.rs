//! The one accept loop behind the job manager's HTTP/1 servers (the result API and the
//! embedded broker's API): a cap on open connections, a header read timeout, a short
//! back-off when `accept` fails (out of file descriptors), and a bounded drain at
//! shutdown.
//!
//! At the cap the loop stops accepting until a connection closes, so new clients wait
//! in the kernel's backlog instead of being refused: a burst of sidecar result posts
//! slows down rather than failing.
use hyper::body::{Body, Incoming};
use hyper::service::Service;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;

/// How a server accepts and ends connections.
#[derive(Clone, Debug)]
pub struct ServeSettings {
    /// Names the server in log lines.
    pub name: &'static str,
    pub max_connections: usize,
    pub header_read_timeout: Duration,
    /// After shutdown, how long open requests may finish before connections are cut.
    pub drain_timeout: Duration,
}

/// Serve HTTP/1 on `listener` until `shutdown`. `service_for` is asked once per accepted
/// connection; `None` drops the connection unanswered (fault injection).
pub async fn serve_http1<S, B>(
    listener: TcpListener,
    settings: ServeSettings,
    mut service_for: impl FnMut() -> Option<S>,
    shutdown: impl Future<Output = ()>,
) -> std::io::Result<()>
where
    S: Service<http::Request<Incoming>, Response = http::Response<B>> + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    B: Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let name = settings.name;
    let connections = Arc::new(Semaphore::new(settings.max_connections));
    let graceful = GracefulShutdown::new();
    let mut http = hyper::server::conn::http1::Builder::new();
    http.timer(TokioTimer::new()).header_read_timeout(settings.header_read_timeout);
    tokio::pin!(shutdown);
    loop {
        let permit = tokio::select! {
            _ = &mut shutdown => break,
            p = connections.clone().acquire_owned() => p.expect("the semaphore is never closed"),
        };
        let stream = tokio::select! {
            _ = &mut shutdown => break,
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => stream,
                Err(e) => {
                    tracing::warn!(server = name, error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let Some(service) = service_for() else { continue };
        let conn = graceful.watch(http.serve_connection(TokioIo::new(stream), service));
        tokio::spawn(async move {
            if let Err(e) = conn.await {
                tracing::debug!(server = name, error = %e, "connection ended with an error");
            }
            drop(permit);
        });
    }
    drop(listener);
    if tokio::time::timeout(settings.drain_timeout, graceful.shutdown()).await.is_err() {
        tracing::warn!(server = name, "connections still open after {:?}; closing", settings.drain_timeout);
    }
    Ok(())
}
