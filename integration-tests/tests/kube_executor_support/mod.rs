//! Shared rig for the Kubernetes executor tests: an emulated cluster with the JobRecord
//! CRD installed, a job-manager config, and helpers to build hand-offs.
#![allow(dead_code)]
use integration_tests::emulator::{Emulator, EmulatorOptions};
use job_manager::backend::kubernetes::record::JobRecord;
use job_manager::backend::kubernetes::setup::KubeSetup;
use job_manager::backend::Handoff;
use job_manager::config::Config;
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{Api, PostParams};
use kube::CustomResourceExt;
use std::future::Future;
use std::time::{Duration, SystemTime};

pub const NS: &str = "default";

pub const CONFIG: &str = r#"
namespace: default
internalApiKey: test-internal-key
runtimes:
  - name: node-api-runtime
    image: { repository: test-runtime, tag: "1" }
  - name: browser
    workload: persistent
    image: { repository: test-runtime, tag: "1" }
    replicas: { min: 1, max: 3 }
sidecar:
  # Allow-list mode with an empty list: the test's sidecars reach the job manager only.
  denyPrivate: true
  denyPublic: true
kubernetes:
  internalApiKeySecretName: jm-internal
"#;

pub fn config() -> Config {
    serde_saphyr::from_str(CONFIG).expect("test config parses")
}

pub struct Cluster {
    pub emu: Emulator,
}

impl Cluster {
    pub async fn start() -> Self {
        let emu =
            Emulator::start(EmulatorOptions { bookmark_interval: Duration::from_millis(200), ..Default::default() })
                .await
                .expect("emulator starts");
        let cluster = Self { emu };
        let crds: Api<CustomResourceDefinition> = Api::all(cluster.client().await);
        crds.create(&PostParams::default(), &JobRecord::crd()).await.expect("the generated CRD is accepted");
        cluster
    }

    pub async fn kube_config(&self) -> kube::Config {
        let kc = kube::config::Kubeconfig::read_from(self.emu.kubeconfig_path()).expect("kubeconfig readable");
        kube::Config::from_custom_kubeconfig(kc, &kube::config::KubeConfigOptions::default())
            .await
            .expect("kubeconfig valid")
    }

    pub async fn client(&self) -> kube::Client {
        kube::Client::try_from(self.kube_config().await).expect("client builds")
    }

    /// A job-manager replica's Kubernetes parts (its own client, like a separate pod),
    /// built as `KubeSetup::connect` builds it.
    pub async fn replica(&self, config: &Config) -> KubeSetup {
        KubeSetup::with_config(self.kube_config().await, config).expect("setup")
    }

    pub fn object(&self, api_version: &str, kind: &str, name: &str) -> Option<serde_json::Value> {
        self.emu.object(api_version, kind, NS, name)
    }
}

pub fn job(id: &str, runtime: &str) -> common::Job {
    serde_json::from_value(
        serde_json::json!({"id": id, "runtime_type": runtime, "timeout_secs": 60, "payload": {"n": 1}}),
    )
    .expect("job")
}

pub fn handoff(id: &str, runtime: &str) -> Handoff {
    Handoff {
        job: job(id, runtime),
        token: format!("token-for-{id}"),
        deadline: SystemTime::now() + Duration::from_secs(60),
        timeout_secs: 60,
    }
}

/// Poll `check` until it holds (the emulator's garbage collector and the lease managers
/// act asynchronously; there is no event to wait on from outside).
pub async fn eventually<F, Fut>(what: &str, timeout: Duration, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let start = std::time::Instant::now();
    while !check().await {
        assert!(start.elapsed() < timeout, "timed out after {timeout:?} waiting for: {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
