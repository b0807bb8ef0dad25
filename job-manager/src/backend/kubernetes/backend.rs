//! [`KubeBackend`]: what the app wires on Kubernetes. The executor creates Jobs and
//! dispatches to persistent runtimes, results live on job records (so any replica can
//! deliver them), and the lease-guarded coordinator (`runtime-pruning`, `service-setup`)
//! runs beside the dispatcher. Every replica runs the same thing; the leases decide who
//! prunes and who sets up persistent workloads.
use crate::backend::kubernetes::coordination::CoordinationSettings;
use crate::backend::kubernetes::executor::KubeExecutor;
use crate::backend::kubernetes::setup::{KubeSetup, SetupError};
use crate::backend::kubernetes::store::RecordStore;
use crate::backend::{Backend, BackendError, Companions, ExecutorParts, KeySettings, Keys};
use crate::config::Validated;
use crate::results::ResultIntake;
use common::secret::Secret;
use common::token::TokenSigner;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use tokio_util::sync::CancellationToken;

const CONTEXT: &str = "kubernetes executor";

#[derive(Debug, thiserror::Error)]
#[error("internalApiKey is required with the kubernetes executor")]
pub struct MissingInternalKey;

/// Jobs as Kubernetes workloads, state in the cluster.
pub struct KubeBackend {
    setup: KubeSetup,
}

impl KubeBackend {
    /// Connect (a given client in tests, else in-cluster configuration or `KUBECONFIG`)
    /// and check once that the CRD exists and this replica may use it.
    pub async fn connect(validated: &Validated, client: Option<kube::Client>) -> Result<Self, BackendError> {
        if validated.config.internal_api_key.trim().is_empty() {
            return Err(BackendError::usage(CONTEXT, "missing_internal_key", MissingInternalKey));
        }
        let setup = KubeSetup::for_validated(client, validated).await.map_err(setup_error)?;
        setup.preflight().await.map_err(setup_error)?;
        tracing::info!(namespace = setup.namespace(), identity = setup.identity(), "connected to the cluster");
        Ok(Self { setup })
    }
}

fn setup_error(e: SetupError) -> BackendError {
    match e {
        SetupError::CrdMissing => BackendError::usage(CONTEXT, e.label(), e),
        e => BackendError::failed(CONTEXT, e.label(), e),
    }
}

impl Backend for KubeBackend {
    type Store = RecordStore;
    type Executor = KubeExecutor;

    fn name(&self) -> &'static str {
        "kubernetes"
    }

    fn isolation_gaps(&self) -> Vec<String> {
        isolation_gaps(&self.setup.context().translate.kubernetes)
    }

    /// Tokens must verify on every replica: the configured signing key, else one derived
    /// from the location key, else from the internal API key (required and shared).
    fn keys(&self, configured: &KeySettings) -> Result<Keys, BackendError> {
        if configured.internal_api_key.trim().is_empty() {
            return Err(BackendError::usage(CONTEXT, "missing_internal_key", MissingInternalKey));
        }
        let signer =
            configured.configured_signer().unwrap_or_else(|| TokenSigner::derived_from(&configured.internal_api_key));
        Ok(Keys { internal_api_key: Secret::new(configured.internal_api_key.clone()), signer })
    }

    fn result_store(&self) -> RecordStore {
        self.setup.record_store()
    }

    fn register_metrics(&self, registry: &mut prometheus_client::registry::Registry) {
        self.setup.metrics().register(registry);
    }

    fn executor(&self, _parts: ExecutorParts<RecordStore>) -> Result<KubeExecutor, BackendError> {
        Ok(self.setup.executor())
    }

    /// The coordinator; only the `runtime-pruning` holder sweeps the records for results
    /// other replicas could not deliver (every replica delivers what it received).
    fn companions(&self, intake: &ResultIntake<RecordStore>, stop: CancellationToken) -> Companions {
        let coordinator = self.setup.coordinator(intake.clone(), CoordinationSettings::default());
        let holds_pruning = coordinator.holds_pruning();
        Companions {
            tasks: vec![tokio::spawn(coordinator.run(stop))],
            sweep_gate: Some(Arc::new(move || holds_pruning.load(Ordering::SeqCst))),
        }
    }
}

/// The runtime isolation a configuration leaves out (see [`Backend::isolation_gaps`]).
pub fn isolation_gaps(k: &crate::config::model::KubernetesSettings) -> Vec<String> {
    let mut gaps = Vec::new();
    if !k.egress_firewall.enabled {
        gaps.push(
            "kubernetes.egressFirewall.enabled is off: runtime pods get no egress firewall, so a runtime that \
             ignores HTTP_PROXY reaches whatever the NetworkPolicy allows"
                .to_string(),
        );
    }
    if !k.network_policy.enabled {
        gaps.push("kubernetes.networkPolicy.enabled is off: runtime pods have no NetworkPolicy".to_string());
    }
    gaps
}

#[cfg(test)]
mod tests {
    use super::isolation_gaps;
    use crate::config::model::KubernetesSettings;

    #[test]
    fn a_firewall_or_network_policy_turned_off_is_a_gap() {
        let mut k = KubernetesSettings::default();
        assert!(isolation_gaps(&k).is_empty(), "defaults isolate");
        k.egress_firewall.enabled = false;
        let gaps = isolation_gaps(&k);
        assert_eq!(gaps.len(), 1);
        assert!(gaps[0].starts_with("kubernetes.egressFirewall.enabled is off"), "{gaps:?}");
        k.network_policy.enabled = false;
        assert_eq!(isolation_gaps(&k).len(), 2);
    }
}
