//! The sidecar: the runtime pod's only way out. An HTTP forward proxy and CONNECT
//! tunnel under an egress policy decided on the address actually dialled, the local
//! runtime API (job in, result out), the result reporter that gets results to the job
//! manager durably, an ingress for persistent workloads, and probes and metrics.
//!
//! `run` takes bound listeners and a shutdown future, so tests run it in-process on
//! `127.0.0.1:0`; `main.rs` only parses configuration and calls it.
//!
//! The same binary carries the pod's egress firewall, `sidecar egress-init --proxy-uid
//! <UID>` ([`egress_init`]): run first as an init container with CAP_NET_ADMIN, it lets
//! only loopback and the sidecar's UID send packets out of the pod.

pub mod authority;
pub mod body;
pub mod cli;
pub mod config;
pub mod connect;
pub mod egress_init;
pub mod error;
pub mod ingress;
pub mod ingress_tokens;
pub mod limit;
pub mod local_api;
pub mod metrics;
pub mod policy;
pub mod proxy;
pub mod reporter;
pub mod resolve;
pub mod server;
pub mod telemetry;
pub mod tls;

use crate::config::{Config, KeySource};
use crate::connect::{Dialer, UpstreamDialer};
use crate::limit::ConnectionLimit;
use crate::local_api::{LoadedJob, LocalApi};
use crate::metrics::Metrics;
use crate::proxy::{new_proxy, ProxySettings};
use crate::reporter::ResultReporter;
use crate::resolve::{Resolve, SystemResolver};
use crate::server::Serve;
use common::backoff::Backoff;
use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// The sockets the sidecar serves, bound before [`run`] so a caller can use port 0.
pub struct Listeners {
    pub proxy: TcpListener,
    pub admin: Option<TcpListener>,
    pub ingress: Option<TcpListener>,
}

impl Listeners {
    pub async fn bind(config: &Config) -> Result<Self, RunError> {
        let bind = |addr: SocketAddr| async move {
            TcpListener::bind(addr).await.map_err(|source| RunError::Bind { addr, source })
        };
        let proxy = if config.listen_stdin { inherited_stdin_listener()? } else { bind(config.listen).await? };
        Ok(Self {
            proxy,
            admin: match config.admin_listen {
                Some(a) => Some(bind(a).await?),
                None => None,
            },
            ingress: match config.ingress {
                Some(i) => Some(bind(i.listen).await?),
                None => None,
            },
        })
    }

    pub fn addrs(&self) -> common::runtime_api::ReadyFile {
        common::runtime_api::ReadyFile {
            listen: self.proxy.local_addr().expect("bound listener has an address"),
            admin: self.admin.as_ref().and_then(|l| l.local_addr().ok()),
            ingress: self.ingress.as_ref().and_then(|l| l.local_addr().ok()),
            pid: std::process::id(),
        }
    }
}

/// The proxy listener handed over as stdin (`--listen-stdin`): the local executor binds it
/// inside the runtime's network namespace, where this process cannot bind. Taken over
/// through std's stdin handle, so no `unsafe` fd adoption; fd 0 then becomes `/dev/null`.
fn inherited_stdin_listener() -> Result<TcpListener, RunError> {
    use std::os::fd::AsFd;
    let bad = |e: &dyn std::fmt::Display| RunError::InheritedListener(e.to_string());
    let stdin = std::io::stdin();
    let listening = nix::sys::socket::getsockopt(&stdin.as_fd(), nix::sys::socket::sockopt::AcceptConn)
        .map_err(|e| bad(&format!("stdin is not a listening socket ({e})")))?;
    if !listening {
        return Err(bad(&"stdin is a socket that is not listening"));
    }
    let owned = stdin.as_fd().try_clone_to_owned().map_err(|e| bad(&e))?;
    let listener = std::net::TcpListener::from(owned);
    listener.local_addr().map_err(|e| bad(&format!("stdin is not a TCP socket ({e})")))?;
    listener.set_nonblocking(true).map_err(|e| bad(&e))?;
    let devnull = std::fs::File::open("/dev/null").map_err(|e| bad(&e))?;
    nix::unistd::dup2_stdin(devnull).map_err(|e| bad(&e))?;
    TcpListener::from_std(listener).map_err(|e| bad(&e))
}

#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error("cannot listen on {addr}: {source}")]
    Bind { addr: SocketAddr, source: std::io::Error },
    #[error("inherited listener (--listen-stdin): {0}")]
    InheritedListener(String),
    #[error("job: {0}")]
    Job(#[from] local_api::JobLoadError),
    #[error("DNS resolver: {0}")]
    Resolver(#[from] resolve::ResolveError),
    #[error("upstream proxy: {0}")]
    UpstreamProxy(String),
    #[error("cannot write ready file {path}: {source}")]
    ReadyFile { path: String, source: std::io::Error },
    #[error("the internal API key must be loaded before run (see config::load_key)")]
    KeyNotLoaded,
    #[error("cannot fetch job {id} from the job manager: {reason}")]
    JobFetch { id: String, reason: String },
}

/// Knobs that only tests and embedders change.
#[derive(Clone)]
pub struct Extras {
    pub resolver: Option<Arc<dyn Resolve>>,
    pub result_backoff: Backoff,
}

impl Default for Extras {
    fn default() -> Self {
        Self { resolver: None, result_backoff: Backoff::new(Duration::from_millis(100), Duration::from_secs(30)) }
    }
}

/// Runs the sidecar until `shutdown` resolves, then stops accepting, lets open requests
/// finish and waits for in-flight result deliveries for up to the shutdown grace.
pub async fn run(config: Config, listeners: Listeners, shutdown: impl Future<Output = ()>) -> Result<(), RunError> {
    run_with(config, Extras::default(), listeners, shutdown).await
}

pub async fn run_with(
    config: Config,
    extras: Extras,
    listeners: Listeners,
    shutdown: impl Future<Output = ()>,
) -> Result<(), RunError> {
    let metrics = Arc::new(Metrics::new());
    let key = match &config.internal_api_key {
        KeySource::None => None,
        KeySource::Inline(k) => Some(k.clone()),
        KeySource::File(_) | KeySource::Stdin => return Err(RunError::KeyNotLoaded),
    };
    let job = config.job_dir.as_deref().map(LoadedJob::load).transpose()?;
    let job_id = job.as_ref().map(|j| j.job.id.to_string()).or_else(|| config.job_id.clone());

    let reporter = match (&config.job_manager, &key) {
        (Some(jm), Some(k)) => Some(Arc::new(ResultReporter::new(
            config.spool_dir.clone(),
            jm.base.clone(),
            k,
            config.result_deadline,
            extras.result_backoff,
            metrics.clone(),
        ))),
        _ => None,
    };
    if reporter.is_some() && config.spool_dir.is_none() {
        tracing::warn!(
            "no SIDECAR_SPOOL_DIR: results are delivered from memory and lost if the sidecar restarts first"
        );
    }
    let already = reporter.as_ref().map(|r| r.redeliver_spooled()).unwrap_or_default();
    // Only an ingress (persistent workload) keeps tokens; with a spool they outlive a restart.
    let tokens = config.ingress.as_ref().map(|_| config.spool_dir.as_deref()).unwrap_or_default();
    let ingress_tokens = Arc::new(ingress_tokens::IngressTokens::new(tokens));
    // One budget for every body read whole (local API results, ingress dispatches).
    let bodies = body::BodyLimits::new(
        config.limits.max_body_bytes,
        config.limits.body_read_timeout,
        config.limits.max_body_memory_bytes,
    );
    let local =
        Arc::new(LocalApi::new(job, ingress_tokens, reporter.clone(), already, metrics.clone(), bodies.clone()));

    let resolver: Arc<dyn Resolve> = match extras.resolver {
        Some(r) => r,
        None => Arc::new(SystemResolver::new()?),
    };
    let upstream =
        config.upstream_proxy.clone().map(UpstreamDialer::new).transpose().map_err(RunError::UpstreamProxy)?;
    let dialer = Arc::new(Dialer {
        policy: config.policy.clone(),
        report_only: config.report_only,
        resolver,
        upstream,
        connect_timeout: config.limits.connect_timeout,
        metrics: metrics.clone(),
    });
    let ready = listeners.addrs();
    // One cap per listener: a flood of tunnels on the proxy listener must never make the
    // admin probes or the ingress refuse.
    let connections = ConnectionLimit::new(config.limits.max_connections);
    let proxy = new_proxy(
        dialer,
        local.clone(),
        metrics.clone(),
        ProxySettings {
            key: key.clone(),
            job_manager: config.job_manager.as_ref().map(|j| j.target.clone()),
            self_addr: ready.listen,
            idle_timeout: config.limits.idle_timeout,
            tunnel_idle_timeout: config.limits.tunnel_idle_timeout,
            max_tunnels: config.limits.max_tunnels,
            connections: connections.clone(),
        },
    );

    let stop = CancellationToken::new();
    let tracker = TaskTracker::new();
    let serve = |name, connections| Serve {
        name,
        connections,
        limits: config.limits,
        shutdown: stop.clone(),
        tracker: tracker.clone(),
        metrics: metrics.clone(),
        job_id: job_id.clone(),
    };
    let mut loops = Vec::new();
    loops.push(tokio::spawn(serve("proxy", connections).run(listeners.proxy, proxy)));
    if let Some(l) = listeners.admin {
        let local = local.clone();
        let admin = ConnectionLimit::new(config.limits.max_admin_connections);
        loops.push(tokio::spawn(serve("admin", admin).run(
            l,
            tower::service_fn(move |req| {
                let local = local.clone();
                async move { Ok::<_, Infallible>(local.handle_admin(req).await) }
            }),
        )));
    }
    if let (Some(l), Some(ing), Some(k)) = (listeners.ingress, config.ingress, key.clone()) {
        let settings = ingress::IngressSettings { key: k, upstream: ing.upstream, bodies: bodies.clone() };
        let ingress = ingress::new_ingress(local.ingress_tokens.clone(), &metrics, settings);
        let cap = ConnectionLimit::new(config.limits.max_ingress_connections);
        loops.push(tokio::spawn(serve("ingress", cap).run(l, ingress)));
    }

    // Handed over by id + token (Kubernetes): fetch the job before reporting ready, so
    // the runtime (started by the startup probe's success) finds it. Probes are served
    // meanwhile (`/readyz` answers "starting").
    tokio::pin!(shutdown);
    if let (None, Some(token), Some(id), Some(r)) = (local.job_id(), &config.job_token, &job_id, &reporter) {
        tokio::select! {
            fetched = fetch_job(r, id, token.expose(), config.result_deadline) => {
                local.set_job(LoadedJob::new(fetched?, token.expose().to_string()));
            }
            _ = &mut shutdown => {
                tracing::info!("shut down before the job could be fetched");
                stop.cancel();
                return Ok(());
            }
        }
    }

    if let Some(path) = &config.ready_file {
        write_ready_file(path, &ready)
            .map_err(|source| RunError::ReadyFile { path: path.display().to_string(), source })?;
    }
    local.ready.store(true, Ordering::Release);
    tracing::info!(
        listen = %ready.listen,
        admin = ready.admin.map(tracing::field::display),
        ingress = ready.ingress.map(tracing::field::display),
        job_id = job_id.as_deref().unwrap_or("-"),
        report_only = config.report_only,
        "sidecar serving"
    );

    shutdown.await;
    let started = Instant::now();
    tracing::info!("shutting down: no new connections; draining");
    local.ready.store(false, Ordering::Release);
    stop.cancel();
    for l in loops {
        let _ = l.await;
    }
    if let Some(r) = &reporter {
        if !r.drain(config.shutdown_grace).await {
            tracing::error!(in_flight = r.in_flight(), "shutdown grace ended with results undelivered (still spooled)");
        }
    }
    tracker.close();
    let left = config.shutdown_grace.saturating_sub(started.elapsed());
    if tokio::time::timeout(left, tracker.wait()).await.is_err() {
        tracing::warn!("shutdown grace ended with connections open");
    }
    Ok(())
}

/// Fetches the job from the job manager, retrying connection errors, 5xx, 429 and 404
/// with backoff until `deadline` (see [`ResultReporter::fetch_job`]).
async fn fetch_job(
    reporter: &ResultReporter,
    id: &str,
    token: &str,
    deadline: Duration,
) -> Result<common::Job, RunError> {
    let fail = |reason: String| RunError::JobFetch { id: id.to_string(), reason };
    let job_id = common::JobId::new(id).map_err(|e| fail(e.to_string()))?;
    // Short waits: the runtime's start waits on this.
    let backoff = Backoff::new(Duration::from_millis(50), Duration::from_secs(2));
    let started = Instant::now();
    let mut attempt = 0u32;
    loop {
        match reporter.fetch_job(&job_id, token).await {
            Ok(job) => {
                tracing::info!(job_id = id, attempts = attempt + 1, "job fetched from the job manager");
                return Ok(job);
            }
            Err(reporter::Attempt::Retry(reason)) if started.elapsed() < deadline => {
                let wait = backoff.ceiling(attempt);
                tracing::warn!(job_id = id, %reason, retry_in_ms = wait.as_millis() as u64, "cannot fetch the job yet");
                tokio::time::sleep(wait).await;
                attempt += 1;
            }
            Err(reporter::Attempt::Retry(reason) | reporter::Attempt::Permanent(reason)) => return Err(fail(reason)),
            Err(other) => return Err(fail(format!("{other:?}"))),
        }
    }
}

/// Writes the ready file atomically (temp file + rename, [`common::fs::replace_atomic`])
/// so a reader never sees half; not fsynced: its readers live on the same machine, and
/// a new boot starts a new sidecar that writes it again. Mode 0666 before the umask, as
/// `std::fs::write` creates files.
pub fn write_ready_file(path: &std::path::Path, ready: &common::runtime_api::ReadyFile) -> std::io::Result<()> {
    common::fs::replace_atomic(path, &serde_json::to_vec(ready)?, 0o666)
}
