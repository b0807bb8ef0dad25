//! The job manager with the Kubernetes executor: the same dispatcher, result API and
//! delivery loop as the local executor (see `crate::app::start_local`), with the
//! executor, the result store (job records) and the lease-guarded coordinator from
//! this module. Every replica runs the same thing; the leases decide who prunes and who
//! sets up persistent workloads.
use crate::backend::kubernetes::coordination::CoordinationSettings;
use crate::backend::kubernetes::setup::{KubeSetup, SetupError};
use crate::backend::Executor;
use crate::broker::BrokerApi;
use crate::config::Validated;
use crate::dispatcher::Dispatcher;
use crate::metrics::Metrics;
use crate::readiness::Readiness;
use crate::results::api::{ResultApi, ServerLimits};
use crate::results::{DeliveryLoop, ResultIntake};
use common::secret::Secret;
use common::token::TokenSigner;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error(transparent)]
    Setup(#[from] SetupError),
    #[error("internalApiKey is required with the kubernetes executor")]
    MissingInternalKey,
    #[error("{0}")]
    Io(String),
}

impl RunError {
    pub fn label(&self) -> &'static str {
        match self {
            RunError::Setup(e) => e.label(),
            RunError::MissingInternalKey => "missing_internal_key",
            RunError::Io(_) => "io",
        }
    }
}

/// A running job manager on Kubernetes: the same handle as the local executor's.
pub type KubeJobManager = crate::app::JobManagerHandle;

/// Tokens must verify on every replica: the configured signing key, else one derived
/// from the location key, else from the internal API key (required and shared).
pub fn token_signer(c: &crate::config::Config) -> TokenSigner {
    if !c.token_signing_key.is_empty() {
        TokenSigner::new(&c.token_signing_key)
    } else if !c.location_key.is_empty() {
        TokenSigner::derived_from(&c.location_key)
    } else {
        TokenSigner::derived_from(&c.internal_api_key)
    }
}

/// Start against `broker`, serving the result API on `listener`. `client`: a given
/// Kubernetes client (tests), else in-cluster configuration or `KUBECONFIG`.
pub async fn start<B: BrokerApi>(
    validated: &Validated,
    broker: Arc<B>,
    listener: TcpListener,
    client: Option<kube::Client>,
) -> Result<KubeJobManager, RunError> {
    let mut c = validated.config.clone();
    if c.internal_api_key.trim().is_empty() {
        return Err(RunError::MissingInternalKey);
    }
    // jm-core already merged JSON, file and path into one object.
    c.user_defined_variables.user_defined_json =
        serde_json::Value::Object(validated.user_defined_variables.clone()).to_string();
    c.user_defined_variables.user_defined_file.clear();
    let setup = match client {
        Some(client) => KubeSetup::with_client(client, &c)?,
        None => KubeSetup::connect(&c).await?,
    };
    setup.preflight().await?;
    let addr = listener.local_addr().map_err(|e| RunError::Io(e.to_string()))?;
    let kube_metrics = setup.metrics().clone();
    let metrics = Arc::new(Metrics::with_extra(|registry| kube_metrics.register(registry)));
    let intake = ResultIntake::new(setup.record_store(), metrics.clone());
    let signer = token_signer(&c);
    let readiness = Readiness::new();
    let api = Arc::new(ResultApi {
        intake: intake.clone(),
        internal_api_key: Secret::new(c.internal_api_key.clone()),
        signer: signer.clone(),
        readiness: readiness.clone(),
        limits: ServerLimits::default(),
    });
    let settings = crate::app::dispatcher_settings(&c);
    let executor = Arc::new(setup.executor());
    let dispatcher =
        Dispatcher::new(broker.clone(), executor.clone(), intake.clone(), signer, settings, readiness.clone());
    let coordinator = setup.coordinator(intake.clone(), CoordinationSettings::default());

    let shutdown = CancellationToken::new();
    let (poll_stop, delivery_stop, server_stop, coordination_stop) =
        (CancellationToken::new(), CancellationToken::new(), CancellationToken::new(), CancellationToken::new());
    let server_task = tokio::spawn(crate::results::api::serve(listener, api, server_stop.clone()));
    // Every replica delivers what it received; only the pruning holder sweeps the records.
    let holds_pruning = coordinator.holds_pruning();
    let delivery = DeliveryLoop::new(broker, intake)
        .with_sweep_gate(Arc::new(move || holds_pruning.load(std::sync::atomic::Ordering::SeqCst)));
    let delivery_task = tokio::spawn(delivery.run(delivery_stop.clone()));
    let dispatcher_task = tokio::spawn(dispatcher.run(poll_stop.clone()));
    let coordination_task = tokio::spawn(coordinator.run(coordination_stop.clone()));
    tracing::info!(%addr, executor = executor.name(), namespace = setup.namespace(), identity = setup.identity(), "job manager started");

    let grace = Duration::from_secs(c.shutdown_grace_secs.into());
    let (stop, ready) = (shutdown.clone(), readiness.clone());
    let task = tokio::spawn(async move {
        stop.cancelled().await;
        ready.set_draining();
        poll_stop.cancel();
        let _ = dispatcher_task.await;
        // Pods keep running and report to the other replicas; nothing to wait for.
        let _ = executor.drain(grace).await;
        // Release the leases so another replica takes over at once.
        coordination_stop.cancel();
        let _ = tokio::time::timeout(Duration::from_secs(10), coordination_task).await;
        delivery_stop.cancel();
        if tokio::time::timeout(Duration::from_secs(15), delivery_task).await.is_err() {
            tracing::warn!("result delivery did not finish; undelivered results stay on their job records");
        }
        server_stop.cancel();
        let _ = server_task.await;
        tracing::info!("job manager stopped");
    });
    Ok(KubeJobManager::new(addr, metrics, readiness, shutdown, task))
}
