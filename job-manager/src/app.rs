//! The composition root: broker -> dispatcher -> backend -> results -> delivery, wired
//! once for every backend, with the shutdown order. `run`, `demo` and the tests only
//! choose a broker and a [`Backend`]; nothing here knows which one it got.
//!
//! ```text
//! broker --poll--> Dispatcher --start--> Backend's Executor (local | kubernetes)
//!                      |  ack only after the executor accepted; release on failure
//! sidecar --POST result--> result API --record--> ResultIntake --> Backend's ResultStore
//!                                                      '--> DeliveryLoop --submit--> broker
//! ```
//!
//! Shutdown (SIGTERM/SIGINT): `/readyz` turns 503, polling stops (hand-offs in progress
//! finish or are released), running jobs get `shutdownGraceSecs` to finish (the result
//! API keeps serving their sidecars), what still runs is stopped (local: killed and
//! reported `failed`; Kubernetes: left to report to the other replicas), the backend's
//! companions stop (leases released, so another replica takes over at once), the
//! delivery loop makes a last pass, then the server stops.
use crate::backend::{Backend, BackendError, Executor, ExecutorParts, KeySettings};
use crate::broker::BrokerApi;
use crate::config::Validated;
use crate::dispatcher::{Dispatcher, DispatcherSettings};
use crate::metrics::Metrics;
use crate::readiness::Readiness;
use crate::results::api::{ResultApi, ServerLimits};
use crate::results::{DeliveryLoop, ResultIntake, ResultStore};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

/// How long the backend's companions get to stop (release leases) at shutdown.
const COMPANIONS_STOP: Duration = Duration::from_secs(10);
/// How long the last delivery pass may take at shutdown.
const LAST_DELIVERY: Duration = Duration::from_secs(15);

/// The settings the composition root itself reads; each part gets its own narrow slice.
#[derive(Clone)]
pub struct AppSettings {
    pub keys: KeySettings,
    pub dispatcher: DispatcherSettings,
    pub server: ServerLimits,
    /// How long running jobs may finish at shutdown (`shutdownGraceSecs`).
    pub shutdown_grace: Duration,
}

impl From<&Validated> for AppSettings {
    fn from(v: &Validated) -> Self {
        let c = &v.config;
        Self {
            keys: KeySettings::from(c),
            dispatcher: DispatcherSettings::from(c),
            server: ServerLimits::from(c),
            shutdown_grace: Duration::from_secs(c.shutdown_grace_secs.into()),
        }
    }
}

/// A running job manager, whichever backend it runs on.
pub struct Handle {
    /// The result API's bound address.
    pub addr: SocketAddr,
    pub metrics: Arc<Metrics>,
    pub readiness: Arc<Readiness>,
    /// Jobs the executor ran at start (adopted from a previous process).
    pub jobs_at_start: usize,
    shutdown: CancellationToken,
    task: JoinHandle<()>,
}

#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error(transparent)]
    Backend(#[from] BackendError),
    #[error("cannot read the result API's address: {0}")]
    Listener(std::io::Error),
}

impl Handle {
    /// Graceful shutdown; returns once every part stopped (leases released, on Kubernetes).
    pub async fn stop(self) -> Result<(), tokio::task::JoinError> {
        self.shutdown.cancel();
        self.task.await
    }
}

/// The job manager: one wiring for every backend.
pub struct App;

impl App {
    /// Start against `broker` on `backend`, serving the result API on `listener`.
    /// Returns once everything runs.
    pub async fn start<B: BrokerApi, K: Backend>(
        settings: AppSettings,
        broker: Arc<B>,
        backend: K,
        listener: TcpListener,
    ) -> Result<Handle, StartError> {
        let addr = listener.local_addr().map_err(StartError::Listener)?;
        let store = backend.result_store();
        let metrics = Arc::new(Metrics::with_extra(|registry| {
            backend.register_metrics(registry);
            store.register_metrics(registry);
        }));
        let intake = ResultIntake::new(store, metrics.clone());
        let keys = backend.keys(&settings.keys)?;
        let executor = Arc::new(backend.executor(ExecutorParts {
            intake: intake.clone(),
            keys: keys.clone(),
            result_api: addr,
        })?);
        let jobs_at_start = executor.in_flight().await.map(|j| j.values().map(Vec::len).sum()).unwrap_or(0);

        let readiness = Readiness::new();
        let gaps = backend.isolation_gaps();
        for gap in &gaps {
            tracing::warn!(backend = backend.name(), "{gap}");
        }
        readiness.set_caveats(gaps);
        let store = intake.store().clone();
        readiness.add_check(Box::new(move || store.health()));
        let api = Arc::new(ResultApi {
            intake: intake.clone(),
            internal_api_key: keys.internal_api_key,
            signer: keys.signer.clone(),
            readiness: readiness.clone(),
            limits: settings.server,
            runs_here: Some({
                let executor = executor.clone();
                Arc::new(move |id: &common::JobId| executor.runs_here(id))
            }),
        });
        let dispatcher = Dispatcher::new(
            broker.clone(),
            executor.clone(),
            intake.clone(),
            keys.signer,
            settings.dispatcher,
            readiness.clone(),
        );

        let (poll_stop, companions_stop, delivery_stop, server_stop) =
            (CancellationToken::new(), CancellationToken::new(), CancellationToken::new(), CancellationToken::new());
        // Before the API serves: what the first sweep may deliver (later results go fresh).
        let startup_pending = intake.store().pending().await.ok();
        let server_task = tokio::spawn(crate::results::api::serve(listener, api, server_stop.clone()));
        let companions = backend.companions(&intake, companions_stop.clone());
        let mut delivery = DeliveryLoop::new(broker, intake);
        if let Some(pending) = startup_pending {
            delivery = delivery.with_startup_pending(pending.into_iter().map(|r| r.job_id).collect());
        }
        if let Some(gate) = companions.sweep_gate {
            delivery = delivery.with_sweep_gate(gate);
        }
        let delivery_task = tokio::spawn(delivery.run(delivery_stop.clone()));
        let dispatcher_task = tokio::spawn(dispatcher.run(poll_stop.clone()));
        tracing::info!(%addr, backend = backend.name(), executor = executor.name(), "job manager started");

        let shutdown = CancellationToken::new();
        let (stop, ready, grace) = (shutdown.clone(), readiness.clone(), settings.shutdown_grace);
        let task = tokio::spawn(async move {
            stop.cancelled().await;
            ready.set_draining();
            poll_stop.cancel();
            let _ = dispatcher_task.await;
            let still_running = executor.drain(grace).await;
            if !still_running.is_empty() {
                let jobs: Vec<String> = still_running.iter().map(ToString::to_string).collect();
                tracing::warn!(jobs = %jobs.join(", "), "jobs still running after the grace period");
            }
            companions_stop.cancel();
            for task in companions.tasks {
                if tokio::time::timeout(COMPANIONS_STOP, task).await.is_err() {
                    tracing::warn!("a backend task did not stop within {COMPANIONS_STOP:?}");
                }
            }
            delivery_stop.cancel();
            if tokio::time::timeout(LAST_DELIVERY, delivery_task).await.is_err() {
                tracing::warn!("result delivery did not finish; undelivered results stay in the result store");
            }
            server_stop.cancel();
            let _ = server_task.await;
            drop(backend);
            tracing::info!("job manager stopped");
        });
        Ok(Handle { addr, metrics, readiness, jobs_at_start, shutdown, task })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::broker::client::BrokerClientConfig;
    use crate::config::model::{Config, RuntimeConfig};

    /// The settings only a running job manager shows reach the parts that act on them:
    /// the dispatcher (per-type `parallelism`, `poll.*`: `dispatcher::tests`), the
    /// shutdown drain (`shutdownGraceSecs`: `jm_local_e2e`), the broker client (endpoint
    /// and proxy: `tests/broker_client.rs`). Checked by the chart's every-value test.
    #[test]
    fn process_settings_come_from_the_config() {
        let mut c = Config {
            runtimes: vec![RuntimeConfig { name: "rt".into(), parallelism: 7, ..RuntimeConfig::default() }],
            ..Config::default()
        };
        c.poll.interval_ms = 1234;
        c.poll.batch_size = 17;
        c.shutdown_grace_secs = 42;
        c.broker_api_endpoint = "https://broker.example".into();
        c.api_proxy_host = "proxy.corp".into();
        c.api_proxy_port = 3129;
        c.broker_api_proxy_username = "user".into();
        c.broker_api_proxy_pw = "pw".into();
        c.broker_api_proxy_self_signed_cert = true;
        let validated = Validated {
            config: c.clone(),
            user_defined_variables: Default::default(),
            listen: "127.0.0.1:0".parse().unwrap(),
            warnings: Vec::new(),
        };
        let s = AppSettings::from(&validated);
        assert_eq!(
            s.dispatcher.runtimes.iter().map(|r| (r.name.as_str(), r.parallelism)).collect::<Vec<_>>(),
            [("rt", 7)]
        );
        assert_eq!((s.dispatcher.poll_interval, s.dispatcher.batch_size), (Duration::from_millis(1234), 17));
        assert_eq!(s.shutdown_grace, Duration::from_secs(42));
        let broker = BrokerClientConfig::from(&c);
        assert_eq!(broker.endpoint, "https://broker.example");
        let proxy = broker.proxy.expect("a proxy");
        assert_eq!((proxy.host.as_str(), proxy.port, proxy.username.as_deref()), ("proxy.corp", 3129, Some("user")));
        assert_eq!(proxy.password.as_ref().map(|p| p.expose()), Some("pw"));
        assert!(proxy.accept_self_signed);
    }
}
