//! Assembling the Kubernetes executor for the app: a client (in-cluster config or
//! `KUBECONFIG`), the namespace, the narrow settings taken from the config once, and
//! the parts the composition root (`run`) wires in — the executor, the result store on
//! job records, the lease-guarded coordinator, the metrics.
use crate::backend::kubernetes::client;
#[cfg(doc)]
use crate::backend::kubernetes::client::ApiCallLayer;
use crate::backend::kubernetes::coordination::{CoordinationSettings, Coordinator};
use crate::backend::kubernetes::events::EventPublisher;
use crate::backend::kubernetes::executor::{ExecutorSettings, KubeContext, KubeExecutor};
use crate::backend::kubernetes::metrics::KubeMetrics;
use crate::backend::kubernetes::store::RecordStore;
use crate::backend::kubernetes::translate::TranslateSettings;
use crate::config::model::Config;
use crate::config::Validated;
use crate::results::ResultIntake;
use std::sync::Arc;

#[derive(Debug, thiserror::Error)]
pub enum SetupError {
    #[error("no Kubernetes configuration (in-cluster or KUBECONFIG): {0}")]
    Client(String),
    #[error("cannot read kubernetes user-defined variables file {path}: {message}")]
    UserDefinedVariables { path: String, message: String },
    #[error("the JobRecord CRD (jobrecords.jobs.jobmanager.dev) is not installed; apply deploy/helm/job-manager/crds/jobrecords.yaml or `job-manager crd`")]
    CrdMissing,
    #[error("the job manager may not list job records in namespace {namespace} (check its Role against `job-manager rbac`): {message}")]
    Forbidden { namespace: String, message: String },
    #[error("Kubernetes API unavailable: {0}")]
    Unavailable(String),
}

impl SetupError {
    pub fn label(&self) -> &'static str {
        match self {
            SetupError::Client(_) => "client",
            SetupError::UserDefinedVariables { .. } => "user_defined_variables",
            SetupError::CrdMissing => "crd_missing",
            SetupError::Forbidden { .. } => "forbidden",
            SetupError::Unavailable(_) => "unavailable",
        }
    }
}

/// The connected pieces, sharing one context.
pub struct KubeSetup {
    ctx: Arc<KubeContext>,
    identity: String,
}

impl KubeSetup {
    /// Connect with the ambient configuration (in-cluster service account, else
    /// `KUBECONFIG`/`~/.kube/config`). The namespace is `config.namespace`, else the
    /// client's default (the pod's namespace in-cluster).
    pub async fn connect(config: &Config) -> Result<Self, SetupError> {
        Self::with_config_as(ambient_config().await?, config, &pod_name(config))
    }

    /// Connect with a given client configuration (tests against an emulated cluster):
    /// the client is built like [`KubeSetup::connect`]'s, behind the same [`ApiCallLayer`].
    pub fn with_config(kube_config: kube::Config, config: &Config) -> Result<Self, SetupError> {
        Self::with_config_as(kube_config, config, &pod_name(config))
    }

    /// Like [`KubeSetup::with_config`], as the replica (pod) named `pod_name`.
    pub fn with_config_as(kube_config: kube::Config, config: &Config, pod_name: &str) -> Result<Self, SetupError> {
        let metrics = KubeMetrics::default();
        let client = client::build(kube_config, &metrics).map_err(|e| SetupError::Client(e.to_string()))?;
        let translate = translate_settings(config)?;
        Ok(Self::assemble(client, metrics, config, translate, pod_name))
    }

    /// Use a given client (tests against an emulated cluster). Its requests go through
    /// [`ApiCallLayer`] too ([`client::instrument`]), so they are counted and checked
    /// against the declared RBAC rights like those of a client this module builds.
    pub fn with_client(client: kube::Client, config: &Config) -> Result<Self, SetupError> {
        Self::with_client_as(client, config, &pod_name(config))
    }

    /// Like [`KubeSetup::with_client`], as the replica (pod) named `pod_name`.
    pub fn with_client_as(client: kube::Client, config: &Config, pod_name: &str) -> Result<Self, SetupError> {
        let translate = translate_settings(config)?;
        let metrics = KubeMetrics::default();
        let client = client::instrument(client, &metrics);
        Ok(Self::assemble(client, metrics, config, translate, pod_name))
    }

    /// From a validated configuration, whose user-defined variables are already merged
    /// (JSON, file and path), so nothing is read again: with `client` (behind
    /// [`ApiCallLayer`] like [`KubeSetup::with_client`]'s), else connected like
    /// [`KubeSetup::connect`].
    pub async fn for_validated(client: Option<kube::Client>, validated: &Validated) -> Result<Self, SetupError> {
        let config = &validated.config;
        let metrics = KubeMetrics::default();
        let client = match client {
            Some(client) => client::instrument(client, &metrics),
            None => client::build(ambient_config().await?, &metrics).map_err(|e| SetupError::Client(e.to_string()))?,
        };
        let translate = TranslateSettings::new(config, &validated.user_defined_variables);
        Ok(Self::assemble(client, metrics, config, translate, &pod_name(config)))
    }

    /// `client` must already count into `metrics` (see [`client`]).
    fn assemble(
        client: kube::Client,
        metrics: KubeMetrics,
        config: &Config,
        translate: TranslateSettings,
        pod_name: &str,
    ) -> Self {
        let namespace =
            if config.namespace.is_empty() { client.default_namespace().to_string() } else { config.namespace.clone() };
        let identity = instance_identity();
        let events = EventPublisher::new(client.clone(), &identity);
        let dispatcher = crate::backend::kubernetes::labels::label_value(pod_name);
        let executor = ExecutorSettings::from(config);
        let ctx = Arc::new(KubeContext { client, namespace, dispatcher, translate, executor, metrics, events });
        Self { ctx, identity }
    }

    /// Check, once at startup, that the CRD exists and this replica may use it, so a
    /// broken install fails with a clear message instead of releasing every job.
    pub async fn preflight(&self) -> Result<(), SetupError> {
        let lp = kube::api::ListParams::default().limit(1);
        let records = self.ctx.records();
        let listed = records.list(&lp).await;
        match listed {
            Ok(_) => Ok(()),
            Err(kube::Error::Api(s)) if s.code == 404 => Err(SetupError::CrdMissing),
            Err(kube::Error::Api(s)) if s.code == 403 => {
                Err(SetupError::Forbidden { namespace: self.ctx.namespace.clone(), message: s.message.clone() })
            }
            Err(e) => Err(SetupError::Unavailable(e.to_string())),
        }
    }

    pub fn context(&self) -> &Arc<KubeContext> {
        &self.ctx
    }

    pub fn namespace(&self) -> &str {
        &self.ctx.namespace
    }

    /// This replica's name in leases and events.
    pub fn identity(&self) -> &str {
        &self.identity
    }

    pub fn metrics(&self) -> &KubeMetrics {
        &self.ctx.metrics
    }

    pub fn executor(&self) -> KubeExecutor {
        KubeExecutor::new(self.ctx.clone())
    }

    pub fn record_store(&self) -> RecordStore {
        RecordStore::new(self.ctx.client.clone(), &self.ctx.namespace)
    }

    /// The lease-guarded pruning and service-setup loops; run with
    /// `tokio::spawn(coordinator.run(shutdown))`.
    pub fn coordinator(&self, intake: ResultIntake<RecordStore>, settings: CoordinationSettings) -> Arc<Coordinator> {
        Arc::new(Coordinator::new(self.ctx.clone(), intake, &self.identity, settings))
    }
}

/// Translation's settings for `config`. `userDefinedFile` is read once here, so the
/// translation sees only JSON (the file wins over `userDefinedJson` when both are set, as
/// the more specific source).
pub fn translate_settings(config: &Config) -> Result<TranslateSettings, SetupError> {
    let settings = TranslateSettings::from(config);
    let file = &config.user_defined_variables.user_defined_file;
    if file.is_empty() {
        return Ok(settings);
    }
    let text = std::fs::read_to_string(file)
        .map_err(|e| SetupError::UserDefinedVariables { path: file.clone(), message: e.to_string() })?;
    let value: serde_json::Value = serde_json::from_str(&text)
        .map_err(|e| SetupError::UserDefinedVariables { path: file.clone(), message: e.to_string() })?;
    Ok(settings.with_user_defined_variables(value))
}

/// In-cluster service account, else `KUBECONFIG`/`~/.kube/config`.
async fn ambient_config() -> Result<kube::Config, SetupError> {
    kube::Config::infer().await.map_err(|e| SetupError::Client(kube::Error::InferConfig(e).to_string()))
}

/// The pod name (HOSTNAME in a pod), else `hostnameOverride`.
fn pod_name(config: &Config) -> String {
    std::env::var("HOSTNAME").ok().filter(|h| !h.is_empty()).unwrap_or_else(|| config.hostname_override.clone())
}

/// Pod name plus a random suffix, so a restarted container never mistakes its
/// predecessor's lease for its own.
fn instance_identity() -> String {
    let host = std::env::var("HOSTNAME").unwrap_or_else(|_| "job-manager".into());
    let suffix: u32 = rand::random();
    format!("{host}-{suffix:08x}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn user_defined_file_is_read_as_json() {
        let dir = tempfile::TempDir::new().unwrap();
        let path = dir.path().join("vars.json");
        std::fs::write(&path, r#"{ "KEY": "v" }"#).unwrap();
        let mut c = Config::default();
        c.user_defined_variables.user_defined_file = path.display().to_string();
        assert_eq!(translate_settings(&c).unwrap().user_defined_variables, r#"{"KEY":"v"}"#);
        std::fs::write(&path, "not json").unwrap();
        let err = translate_settings(&c).unwrap_err();
        assert_eq!(err.label(), "user_defined_variables");
        assert!(err.to_string().contains("vars.json"), "{err}");
    }

    #[tokio::test]
    async fn validated_user_defined_variables_reach_translation_as_they_are() {
        let mut config = Config { namespace: "jobs".into(), ..Config::default() };
        // Already merged by validation: the raw JSON field is not read again.
        config.user_defined_variables.user_defined_json = "not read".into();
        let validated = Validated {
            config,
            user_defined_variables: serde_json::from_str(r#"{"KEY": "v"}"#).unwrap(),
            listen: "127.0.0.1:0".parse().unwrap(),
            warnings: Vec::new(),
        };
        // No call is made: nothing needs to listen.
        let client = kube::Client::try_from(kube::Config::new("http://127.0.0.1:1".parse().unwrap())).unwrap();
        let setup = KubeSetup::for_validated(Some(client), &validated).await.unwrap();
        assert_eq!(setup.context().translate.user_defined_variables, r#"{"KEY":"v"}"#);
        assert_eq!(setup.namespace(), "jobs");
    }
}
