//! Work exactly one replica does at a time, each behind its Lease (kube-lease-manager:
//! acquire, renew before expiry, take over once the holder stopped renewing):
//! - `runtime-pruning`: decide results for jobs that cannot finish (diagnosis, deadlines),
//!   stop their workloads, delete orphans ([`crate::backend::kubernetes::diagnose::plan`]).
//! - `service-setup`: server-side apply of persistent workloads (Deployment, Service,
//!   HPA per persistent runtime type) and the runtime NetworkPolicy. Idempotent.
//!
//! Pending results are retried by the delivery loop (`crate::results::DeliveryLoop` over the
//! [`crate::backend::kubernetes::store::RecordStore`]); the records make them durable. Every
//! replica delivers the results it received itself; only the `runtime-pruning` holder
//! sweeps the records for results nobody delivered ([`Coordinator::holds_pruning`]).
use crate::backend::kubernetes::cache::ClusterCache;
use crate::backend::kubernetes::diagnose::{self, Action, Snapshot, Timing};
use crate::backend::kubernetes::executor::KubeContext;
use crate::backend::kubernetes::labels;
use crate::backend::kubernetes::record::JobRecord;
use crate::backend::kubernetes::store::RecordStore;
use crate::backend::kubernetes::translate;
use crate::config::model::Workload;
use crate::results::{Recorded, ResultIntake};
use k8s_openapi::api::apps::v1 as apps;
use k8s_openapi::api::autoscaling::v2 as autoscaling;
use k8s_openapi::api::batch::v1 as batch;
use k8s_openapi::api::core::v1 as core;
use k8s_openapi::api::networking::v1 as networking;
use kube::api::{DeleteParams, ListParams, Patch, PatchParams};
use kube::Api;
use kube_lease_manager::LeaseManagerBuilder;
use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

#[derive(Clone, Debug)]
pub struct CoordinationSettings {
    /// A holder that stops renewing loses the lease after this long.
    pub lease_duration_secs: u64,
    /// The holder renews this long before expiry.
    pub lease_grace_secs: u64,
    pub prune_interval: Duration,
    pub service_setup_interval: Duration,
    pub timing: Timing,
}

impl Default for CoordinationSettings {
    fn default() -> Self {
        Self {
            lease_duration_secs: 15,
            lease_grace_secs: 5,
            prune_interval: Duration::from_secs(5),
            service_setup_interval: Duration::from_secs(30),
            timing: Timing::default(),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum CoordinationError {
    #[error("Kubernetes API: {0}")]
    Api(#[from] kube::Error),
    #[error("translation: {0}")]
    Translate(#[from] translate::TranslateError),
}

impl CoordinationError {
    pub fn label(&self) -> &'static str {
        match self {
            CoordinationError::Api(_) => "api",
            CoordinationError::Translate(e) => e.label(),
        }
    }
}

/// What one pruning pass did (for tests and logs).
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct PrunePass {
    pub reported: usize,
    pub deleted: usize,
}

pub struct Coordinator {
    ctx: Arc<KubeContext>,
    /// Watch caches of the pruning holder (see [`ClusterCache`]).
    cache: tokio::sync::Mutex<Option<ClusterCache>>,
    intake: ResultIntake<RecordStore>,
    identity: String,
    settings: CoordinationSettings,
    holds_pruning: Arc<AtomicBool>,
}

impl Coordinator {
    /// True while this replica holds `runtime-pruning` (the delivery loop's sweep gate).
    pub fn holds_pruning(&self) -> Arc<AtomicBool> {
        self.holds_pruning.clone()
    }

    pub fn new(
        ctx: Arc<KubeContext>,
        intake: ResultIntake<RecordStore>,
        identity: &str,
        settings: CoordinationSettings,
    ) -> Self {
        Self {
            ctx,
            intake,
            identity: identity.to_string(),
            settings,
            cache: tokio::sync::Mutex::new(None),
            holds_pruning: Arc::default(),
        }
    }

    /// Run both lease-guarded loops until `shutdown`; leases are released on the way out.
    pub async fn run(self: Arc<Self>, shutdown: CancellationToken) {
        let pruning = {
            let this = self.clone();
            let shutdown = shutdown.clone();
            async move {
                let every = this.settings.prune_interval;
                this.lease_loop(labels::LEASE_RUNTIME_PRUNING, every, shutdown, || async {
                    if let Err(e) = this.prune_once().await {
                        tracing::warn!(error = %e, "pruning pass failed");
                    }
                })
                .await;
            }
        };
        let setup = {
            let this = self.clone();
            async move {
                let every = this.settings.service_setup_interval;
                this.lease_loop(labels::LEASE_SERVICE_SETUP, every, shutdown, || async {
                    if let Err(e) = this.setup_once().await {
                        tracing::warn!(error = %e, "service setup pass failed");
                    }
                })
                .await;
            }
        };
        tokio::join!(pruning, setup);
    }

    /// Hold `lease` when possible and run `work` every `every` while holding it.
    async fn lease_loop<F, Fut>(&self, lease: &'static str, every: Duration, shutdown: CancellationToken, work: F)
    where
        F: Fn() -> Fut,
        Fut: Future<Output = ()>,
    {
        let retry = common::backoff::Backoff::new(Duration::from_millis(500), Duration::from_secs(30));
        let mut attempt = 0;
        let manager = loop {
            let built = LeaseManagerBuilder::new(self.ctx.client.clone(), lease)
                .with_namespace(self.ctx.namespace.clone())
                .with_identity(self.identity.clone())
                .with_duration(self.settings.lease_duration_secs)
                .with_grace(self.settings.lease_grace_secs)
                .build()
                .await;
            match built {
                Ok(m) => break m,
                Err(e) => {
                    tracing::warn!(lease, error = %e, "cannot set up the lease; retrying");
                    attempt += 1;
                    tokio::select! {
                        _ = shutdown.cancelled() => return,
                        _ = tokio::time::sleep(retry.delay(attempt)) => {}
                    }
                }
            }
        };
        let (mut held, task) = manager.watch().await;
        loop {
            let holding = *held.borrow_and_update();
            self.ctx.metrics.set_lease(lease, holding);
            if lease == labels::LEASE_RUNTIME_PRUNING {
                self.holds_pruning.store(holding, Ordering::SeqCst);
            }
            if holding {
                tracing::debug!(lease, "holding the lease");
                work().await;
                tokio::select! {
                    _ = shutdown.cancelled() => break,
                    changed = held.changed() => if changed.is_err() { break },
                    _ = tokio::time::sleep(every) => {}
                }
            } else {
                if lease == labels::LEASE_RUNTIME_PRUNING {
                    // Only the holder watches.
                    self.drop_cache().await;
                }
                tokio::select! {
                    _ = shutdown.cancelled() => break,
                    changed = held.changed() => if changed.is_err() { break },
                }
            }
        }
        self.ctx.metrics.set_lease(lease, false);
        if lease == labels::LEASE_RUNTIME_PRUNING {
            self.holds_pruning.store(false, Ordering::SeqCst);
        }
        // Closing the channel makes the manager release the lease for the next holder.
        drop(held);
        match tokio::time::timeout(Duration::from_secs(5), task).await {
            Ok(Ok(Err(e))) => tracing::warn!(lease, error = %e, "lease release failed"),
            Ok(Err(e)) => tracing::warn!(lease, error = %e, "lease task failed"),
            _ => {}
        }
    }

    /// One pruning pass over the job manager's objects. Public for tests.
    pub async fn prune_once(&self) -> Result<PrunePass, CoordinationError> {
        let runtime_objects = ListParams::default().labels(&labels::managed_runtime_selector());
        let ephemeral = ListParams::default().labels(&labels::ephemeral_selector());
        let records = self.ctx.records();
        let jobs = self.ctx.jobs();
        let pods = self.ctx.pods();
        let cached = self.cached_snapshot().await;
        let (records, jobs, pods) = match cached {
            Some(snapshot) => snapshot,
            // The watches are not synced (yet): list instead.
            None => (
                records.list(&runtime_objects).await?.items,
                jobs.list(&ephemeral).await?.items,
                pods.list(&ephemeral).await?.items,
            ),
        };
        let snapshot =
            Snapshot { records: &records, jobs: &jobs, pods: &pods, now: k8s_openapi::jiff::Timestamp::now() };
        let actions = diagnose::plan(&snapshot, &self.settings.timing);
        let mut pass = PrunePass::default();
        for action in actions {
            match self.execute(action, &records).await {
                Ok(Executed::Reported) => pass.reported += 1,
                Ok(Executed::Deleted) => pass.deleted += 1,
                Ok(Executed::Nothing) => {}
                Err(e) => tracing::warn!(error = %e, "pruning action failed; retried next pass"),
            }
        }
        Ok(pass)
    }

    /// Records, Jobs and pods from the watch caches, started on first use.
    async fn cached_snapshot(&self) -> Option<(Vec<JobRecord>, Vec<batch::Job>, Vec<core::Pod>)> {
        let mut cache = self.cache.lock().await;
        if cache.is_none() {
            *cache = ClusterCache::start(self.ctx.client.clone(), &self.ctx.namespace, Duration::from_secs(10)).await;
        }
        cache.as_ref().map(ClusterCache::snapshot)
    }

    /// Stop watching (the lease went to another replica).
    async fn drop_cache(&self) {
        self.cache.lock().await.take();
    }

    /// The Job controller's `FailedCreate` events on `job` (quota, admission); empty when
    /// they cannot be read.
    async fn failed_create_events(&self, job: &str) -> Vec<core::Event> {
        let events: Api<core::Event> = Api::namespaced(self.ctx.client.clone(), &self.ctx.namespace);
        let lp = ListParams::default()
            .fields(&format!("involvedObject.kind=Job,involvedObject.name={job},reason=FailedCreate"));
        match events.list(&lp).await {
            Ok(list) => list.items,
            Err(e) => {
                tracing::warn!(job, error = %e, "cannot read the Job's FailedCreate events");
                Vec::new()
            }
        }
    }

    async fn execute(&self, action: Action, records: &[JobRecord]) -> Result<Executed, CoordinationError> {
        match action {
            Action::CheckAdmission { name, mut result } => {
                let events = self.failed_create_events(&name).await;
                if !diagnose::lasting_refusal(&events) {
                    return Ok(Executed::Nothing);
                }
                result.message = diagnose::no_pod_message(&result.message, &events);
                let reported = self.report(result, diagnose::Cause::NoPod, records).await;
                if reported == Executed::Reported {
                    // Nothing will ever run it: the Job goes too (after the result is
                    // recorded, so a failed write is retried on the next pass).
                    self.stop_job(&name, records).await?;
                }
                Ok(reported)
            }
            Action::Report { mut result, cause } => {
                if cause == diagnose::Cause::NoPod {
                    let events = self.failed_create_events(&labels::object_name(&result.job_id)).await;
                    result.message = diagnose::no_pod_message(&result.message, &events);
                }
                Ok(self.report(result, cause, records).await)
            }
            Action::DeleteJob { name } => self.stop_job(&name, records).await,
            Action::DeleteOrphanJob { name } => {
                self.ctx
                    .metrics
                    .pruned
                    .get_or_create(&crate::backend::kubernetes::metrics::ReasonLabels { reason: "orphan_job" })
                    .inc();
                deleted(self.ctx.jobs().delete(&name, &DeleteParams::background()).await)
            }
        }
    }

    /// Records a decided result (first wins: a sidecar's result that got there first stays).
    async fn report(&self, result: common::JobResult, cause: diagnose::Cause, records: &[JobRecord]) -> Executed {
        match self.intake.record(&result).await {
            Ok(Recorded::Accepted) => {
                self.ctx
                    .metrics
                    .diagnosed
                    .get_or_create(&crate::backend::kubernetes::metrics::ReasonLabels { reason: cause.label() })
                    .inc();
                tracing::warn!(job_id = %result.job_id, cause = cause.label(), result_message = %result.message, "job manager decided the job's result");
                if let Some(r) = record_named(records, &labels::object_name(&result.job_id)) {
                    self.ctx.events.diagnosed(r, cause_reason(cause), &result.message);
                }
                Executed::Reported
            }
            Ok(_) => Executed::Nothing,
            Err(e) => {
                tracing::warn!(job_id = %result.job_id, error = %e, "could not record a decided result");
                Executed::Nothing
            }
        }
    }

    /// Deletes a job's Job (its pod stops; the record stays until delivery).
    async fn stop_job(&self, name: &str, records: &[JobRecord]) -> Result<Executed, CoordinationError> {
        let done = deleted(self.ctx.jobs().delete(name, &DeleteParams::background()).await)?;
        self.ctx
            .metrics
            .pruned
            .get_or_create(&crate::backend::kubernetes::metrics::ReasonLabels { reason: "stopped_job" })
            .inc();
        if let Some(r) = record_named(records, name) {
            self.ctx.events.pruned(r, "stopped the job's workload");
        }
        Ok(done)
    }

    /// Apply every persistent workload and the NetworkPolicy. Public for tests.
    pub async fn setup_once(&self) -> Result<usize, CoordinationError> {
        let settings = &self.ctx.translate;
        let ns = &self.ctx.namespace;
        let client = self.ctx.client.clone();
        // Force: the job manager owns these objects; a hand edit is reverted.
        let pp = PatchParams::apply(labels::FIELD_MANAGER).force();
        let mut applied = 0;
        for runtime in settings.runtimes.iter().filter(|r| r.enabled && r.workload == Workload::Persistent) {
            let objects = translate::persistent_objects(&runtime.name, settings, ns)?;
            let name = labels::persistent_name(&runtime.name);
            let deployments: Api<apps::Deployment> = Api::namespaced(client.clone(), ns);
            deployments.patch(&name, &pp, &Patch::Apply(&objects.deployment)).await?;
            let services: Api<core::Service> = Api::namespaced(client.clone(), ns);
            services.patch(&name, &pp, &Patch::Apply(&objects.service)).await?;
            let hpas: Api<autoscaling::HorizontalPodAutoscaler> = Api::namespaced(client.clone(), ns);
            hpas.patch(&name, &pp, &Patch::Apply(&objects.hpa)).await?;
            applied += 3;
        }
        self.retire_persistent_workloads().await?;
        let policies: Api<networking::NetworkPolicy> = Api::namespaced(client, ns);
        if settings.kubernetes.network_policy.enabled {
            let policy = translate::runtime_network_policy(settings, ns);
            policies.patch(labels::RUNTIME_NETWORK_POLICY_NAME, &pp, &Patch::Apply(&policy)).await?;
            applied += 1;
        } else {
            // Switched off: remove ours if an earlier configuration applied it.
            let name = labels::RUNTIME_NETWORK_POLICY_NAME;
            let existing = policies.get_opt(name).await?;
            let ours = existing
                .as_ref()
                .and_then(|p| p.metadata.labels.as_ref())
                .is_some_and(|l| l.get(labels::MANAGED_BY).map(String::as_str) == Some(labels::MANAGED_BY_VALUE));
            if ours {
                tracing::info!(name, "kubernetes.networkPolicy.enabled is off: deleting the runtime NetworkPolicy");
                deleted(policies.delete(name, &DeleteParams::background()).await)?;
            }
        }
        Ok(applied)
    }

    /// Delete the Deployment, Service and HPA of persistent runtime types the config no
    /// longer has (see [`translate::retired_persistent_workloads`]).
    async fn retire_persistent_workloads(&self) -> Result<usize, CoordinationError> {
        let m = &self.ctx.metrics;
        let (client, ns) = (self.ctx.client.clone(), &self.ctx.namespace);
        let deployments: Api<apps::Deployment> = Api::namespaced(client.clone(), ns);
        let lp = ListParams::default().labels(&labels::persistent_selector());
        let existing = deployments.list_metadata(&lp).await?;
        let names = existing.items.iter().filter_map(|d| d.metadata.name.as_deref());
        let retired = translate::retired_persistent_workloads(names, &self.ctx.translate);
        let dp = DeleteParams::background();
        let services: Api<core::Service> = Api::namespaced(client.clone(), ns);
        let hpas: Api<autoscaling::HorizontalPodAutoscaler> = Api::namespaced(client, ns);
        for name in &retired {
            tracing::info!(name, "persistent runtime type no longer configured: deleting its workload");
            deleted(hpas.delete(name, &dp).await)?;
            deleted(services.delete(name, &dp).await)?;
            deleted(deployments.delete(name, &dp).await)?;
            m.pruned
                .get_or_create(&crate::backend::kubernetes::metrics::ReasonLabels { reason: "retired_runtime" })
                .inc();
        }
        Ok(retired.len())
    }
}

fn deleted<T>(r: Result<T, kube::Error>) -> Result<Executed, CoordinationError> {
    match r {
        Ok(_) => Ok(Executed::Deleted),
        Err(kube::Error::Api(s)) if s.code == 404 => Ok(Executed::Nothing),
        Err(e) => Err(CoordinationError::Api(e)),
    }
}

#[derive(PartialEq, Eq)]
enum Executed {
    Reported,
    Deleted,
    Nothing,
}

/// Event reason for a decided result.
fn cause_reason(cause: diagnose::Cause) -> &'static str {
    use diagnose::Cause::*;
    match cause {
        DeadlineExceeded => "TimedOut",
        ImagePull => "ImagePullFailed",
        Unschedulable => "Unschedulable",
        ContainerConfig => "ContainerConfigError",
        OomKilled => "OOMKilled",
        CrashLoop => "SidecarCrashLoop",
        NoPod => "NoPodCreated",
        PodFailed => "PodFailed",
        NoResult => "NoResult",
    }
}

fn record_named<'a>(records: &'a [JobRecord], name: &str) -> Option<&'a JobRecord> {
    records.iter().find(|r| r.metadata.name.as_deref() == Some(name))
}
