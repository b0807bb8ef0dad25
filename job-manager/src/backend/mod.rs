//! Backends: where a job becomes a running workload. Two sit side by side behind the
//! same traits: `local` (processes on this machine, beside a real sidecar process) and
//! `kubernetes` (a Job per ephemeral execution, Deployment + Service + HPA per persistent
//! runtime type).
//!
//! - [`Executor`] is what the dispatcher talks to: start a job, count what runs, drain.
//! - [`Backend`] is what the composition root ([`crate::app::App`]) asks for: the
//!   executor, the durable result store, the keys, and the work that runs beside the
//!   dispatcher. Everything else (broker, dispatcher, result API, delivery, shutdown
//!   order) is the same for both and wired once.
//!
//! Outcomes the executor detects itself (timeout, crash, a pod that cannot start) are
//! reported through the [`crate::results::ResultIntake`] it was built with: the same path
//! a sidecar's result takes, so the first outcome recorded for a job wins.
pub mod kubernetes;
pub mod local;
pub mod sidecar_env;

use crate::config::Config;
use crate::results::{ResultIntake, ResultStore, SweepGate};
use common::secret::Secret;
use common::token::TokenSigner;
use common::{Job, JobId};
use std::collections::BTreeMap;
use std::future::Future;
use std::net::SocketAddr;
use std::time::SystemTime;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

/// Everything a runtime workload needs for one job.
#[derive(Debug, Clone)]
pub struct Handoff {
    pub job: Job,
    /// The single-use job token; only the sidecar may read it.
    pub token: String,
    /// When the job must be over (now + min(job timeout, check timeout)).
    pub deadline: SystemTime,
    /// The time the job was given: the job's timeout clamped to 1 s .. `checkTimeout`
    /// (what a timed-out result reports).
    pub timeout_secs: u32,
}

/// A successful hand-off: the dispatcher may ack.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Accepted {
    /// A new workload now exists for the job.
    Started,
    /// A workload for this job already exists (broker re-delivery, another replica):
    /// nothing new was started.
    AlreadyRunning,
}

/// Why a hand-off failed.
#[derive(Debug, thiserror::Error)]
pub enum HandoffError {
    /// The runtime pushed back (429, no capacity): retry later with backoff.
    #[error("runtime busy: {0}")]
    Busy(String),
    /// A transient failure (API 5xx/429/409, quota): retry with backoff, then release.
    #[error("transient hand-off failure: {0}")]
    Transient(String),
    /// Retrying cannot help (invalid object, unknown runtime type): release at once.
    #[error("hand-off failed: {0}")]
    Permanent(String),
    /// The platform refuses the job manager itself, for every job of this kind (the
    /// Kubernetes executor's Role lacks a right): release at once, and say so in
    /// `/readyz` until a hand-off of the same runtime type succeeds again.
    #[error("hand-off refused: {message}")]
    Refused {
        /// What was refused, the same for every job (`create jobs.batch in namespace
        /// "default"`): one log line per distinct `right`.
        right: String,
        /// The whole story: the right, who lacks it, and the platform's own words.
        message: String,
    },
}

impl HandoffError {
    /// Every [`HandoffError::label`].
    pub const LABELS: [&'static str; 4] = ["busy", "transient", "permanent", "refused"];

    pub fn label(&self) -> &'static str {
        match self {
            HandoffError::Busy(_) => "busy",
            HandoffError::Transient(_) => "transient",
            HandoffError::Permanent(_) => "permanent",
            HandoffError::Refused { .. } => "refused",
        }
    }
}

#[derive(Debug, thiserror::Error)]
#[error("executor state unavailable: {0}")]
pub struct StateError(pub String);

/// Runs jobs. Implementations must be idempotent per job id: starting a job whose
/// workload exists returns `Accepted::AlreadyRunning`.
pub trait Executor: Send + Sync + 'static {
    /// Stable name for logs and metrics (`local`, `kubernetes`).
    fn name(&self) -> &'static str;

    /// Create the workload for one job. Returns once it exists, so an ack is safe.
    fn start(&self, handoff: Handoff) -> impl Future<Output = Result<Accepted, HandoffError>> + Send;

    /// Jobs whose workloads currently run, per runtime type, derived from state that
    /// survives a restart (processes in the state dir, the cluster's objects) rather
    /// than an in-memory counter. The dispatcher sizes its polls from this.
    fn in_flight(&self) -> impl Future<Output = Result<BTreeMap<String, Vec<JobId>>, StateError>> + Send;

    /// Stop accepting work and wait (up to `grace`) for running workloads; return the
    /// jobs still running when the grace period ended.
    fn drain(&self, grace: std::time::Duration) -> impl Future<Output = Vec<JobId>> + Send;

    /// Whether the job runs on this executor right now (cheap, in memory): its result is
    /// then taken even when its token expired by a wall-clock jump (`results::api::auth`).
    /// `false` where the executor cannot tell.
    fn runs_here(&self, id: &JobId) -> bool {
        let _ = id;
        false
    }
}

/// The keys every part of one job manager shares: the internal API key sidecars present
/// on every call, and the signer of single-use job tokens.
#[derive(Clone)]
pub struct Keys {
    pub internal_api_key: Secret,
    pub signer: TokenSigner,
}

/// The keys as configured; empty means "not set". Where an unset key comes from is the
/// backend's decision ([`Backend::keys`]).
#[derive(Clone, Default)]
pub struct KeySettings {
    pub internal_api_key: String,
    pub token_signing_key: String,
    pub location_key: String,
}

impl From<&Config> for KeySettings {
    fn from(c: &Config) -> Self {
        Self {
            internal_api_key: c.internal_api_key.clone(),
            token_signing_key: c.token_signing_key.clone(),
            location_key: c.location_key.clone(),
        }
    }
}

impl KeySettings {
    /// The token signer when a key is configured: the signing key itself, else one derived
    /// from the location key (the same on every replica of a location).
    pub fn configured_signer(&self) -> Option<TokenSigner> {
        if !self.token_signing_key.is_empty() {
            Some(TokenSigner::new(&self.token_signing_key))
        } else if !self.location_key.is_empty() {
            Some(TokenSigner::derived_from(&self.location_key))
        } else {
            None
        }
    }
}

/// What the executor is built with.
pub struct ExecutorParts<S> {
    /// Where the executor reports the outcomes it detects itself.
    pub intake: ResultIntake<S>,
    pub keys: Keys,
    /// The result API's bound address (local sidecars call it directly).
    pub result_api: SocketAddr,
}

/// Work a backend runs beside the dispatcher (lease coordination, pruning). The app
/// stops it after the executor drained and before the last delivery pass.
#[derive(Default)]
pub struct Companions {
    pub tasks: Vec<JoinHandle<()>>,
    /// Whether this replica may sweep the store for others' undelivered results (the
    /// `runtime-pruning` lease holder on Kubernetes); `None`: always.
    pub sweep_gate: Option<SweepGate>,
}

/// Why a backend could not start.
#[derive(Debug, thiserror::Error)]
#[error("{context}: {source}")]
pub struct BackendError {
    context: &'static str,
    /// Stable label for logs and metrics (`crd_missing`, `state_dir`, ...).
    label: &'static str,
    /// A misconfiguration (exit 64) rather than a failure of the environment.
    usage: bool,
    #[source]
    source: Box<dyn std::error::Error + Send + Sync>,
}

impl BackendError {
    /// The environment failed (a directory, the API server): exit 1.
    pub fn failed(
        context: &'static str,
        label: &'static str,
        source: impl Into<Box<dyn std::error::Error + Send + Sync>>,
    ) -> Self {
        Self { context, label, usage: false, source: source.into() }
    }

    /// The configuration cannot work with this backend: exit 64.
    pub fn usage(
        context: &'static str,
        label: &'static str,
        source: impl Into<Box<dyn std::error::Error + Send + Sync>>,
    ) -> Self {
        Self { context, label, usage: true, source: source.into() }
    }

    pub fn label(&self) -> &'static str {
        self.label
    }

    pub fn is_usage(&self) -> bool {
        self.usage
    }
}

/// What sets running jobs as local processes apart from running them on Kubernetes.
pub trait Backend: Send + Sync + 'static {
    type Store: ResultStore;
    type Executor: Executor;

    /// Stable name for logs and metrics (`local`, `kubernetes`).
    fn name(&self) -> &'static str;

    /// The keys, filling in what is not configured. The backends differ on purpose: one
    /// local process may generate and keep its own, replicas on Kubernetes must share them.
    fn keys(&self, configured: &KeySettings) -> Result<Keys, BackendError>;

    /// The durable result store (files in the state dir, job records in the cluster).
    fn result_store(&self) -> Self::Store;

    /// Where runtimes are not isolated as they should be (a firewall turned off, a
    /// job manager without the privileges to separate jobs). The app logs each once at
    /// start and `/readyz` repeats them; they do not make the job manager unready.
    fn isolation_gaps(&self) -> Vec<String> {
        Vec::new()
    }

    /// Metric families of the backend's own, exported beside the job manager's.
    fn register_metrics(&self, registry: &mut prometheus_client::registry::Registry) {
        let _ = registry;
    }

    /// The executor; a local one adopts the jobs a previous process left running.
    fn executor(&self, parts: ExecutorParts<Self::Store>) -> Result<Self::Executor, BackendError>;

    /// Start the work that runs beside the dispatcher until `stop`.
    fn companions(&self, intake: &ResultIntake<Self::Store>, stop: CancellationToken) -> Companions {
        let _ = (intake, stop);
        Companions::default()
    }
}
