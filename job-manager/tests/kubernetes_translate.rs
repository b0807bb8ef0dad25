//! Whole-object translation tests: for each case (a config and a job) the complete
//! `job-manager render` output is compared with a reviewed YAML fixture in
//! `tests/fixtures/kubernetes/`. After an intended change, regenerate with
//! `UPDATE_FIXTURES=1 cargo test -p job-manager --test kubernetes_translate` and review
//! the diff like code.
#![allow(clippy::unwrap_used)] // in a test, an unwrap is an assertion
use job_manager::backend::kubernetes::cli;
use job_manager::config::Config;
use std::path::PathBuf;
use std::time::{Duration, UNIX_EPOCH};

const BASE_CONFIG: &str = r#"
runtimes:
  - name: node-api-runtime
    image: { repository: newrelic/synthetics-node-api-runtime, tag: "1.2.3" }
    resources: { requests: { cpu: "0.5", memory: 1250Mi }, limits: { cpu: "0.75", memory: 2500Mi } }
  - name: node-browser-runtime
    workload: persistent
    image: { repository: newrelic/synthetics-node-browser-runtime }
    resources: { requests: { cpu: "1", memory: 2000Mi }, limits: { cpu: "1.5", memory: 3000Mi } }
    replicas: { min: 2, max: 6 }
kubernetes:
  internalApiKeySecretName: job-manager-internal
"#;

const JOB: &str =
    r#"{"id": "3f2a9c1e-job", "runtime_type": "node-api-runtime", "timeout_secs": 120, "payload": {"script": "ok"}}"#;

fn fixture(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/kubernetes").join(format!("{name}.yaml"))
}

/// Merge `overlay` YAML into the base config (mappings merge, everything else replaces).
fn config(overlay: &str) -> Config {
    fn merge(base: &mut serde_json::Value, overlay: serde_json::Value) {
        match (base, overlay) {
            (serde_json::Value::Object(b), serde_json::Value::Object(o)) => {
                for (k, v) in o {
                    match b.get_mut(&k) {
                        Some(existing) => merge(existing, v),
                        None => {
                            b.insert(k, v);
                        }
                    }
                }
            }
            (b, o) => *b = o,
        }
    }
    let mut base: serde_json::Value = serde_saphyr::from_str(BASE_CONFIG).unwrap();
    if !overlay.trim().is_empty() {
        merge(&mut base, serde_saphyr::from_str(overlay).unwrap());
    }
    serde_json::from_value(base).unwrap()
}

fn check(case: &str, overlay: &str, job: &str) {
    let config = config(overlay);
    let job: common::Job = serde_json::from_str(job).unwrap();
    let deadline = UNIX_EPOCH + Duration::from_secs(1_800_000_120);
    let rendered = cli::render(&job, &config, "jobs", deadline).unwrap();
    let path = fixture(case);
    if std::env::var_os("UPDATE_FIXTURES").is_some() {
        std::fs::write(&path, &rendered).unwrap();
        return;
    }
    let expected = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("{}: {e}; run with UPDATE_FIXTURES=1 to create it", path.display()));
    // Compare parsed documents (whole objects), so formatting is not what is tested.
    let parse = |text: &str| -> Vec<serde_json::Value> {
        text.split("\n---\n").map(|d| serde_saphyr::from_str(d.trim_start_matches("---\n")).unwrap()).collect()
    };
    assert_eq!(
        parse(&rendered),
        parse(&expected),
        "{case}: rendered objects differ from {}\n--- rendered ---\n{rendered}",
        path.display()
    );
}

#[test]
fn defaults() {
    check("defaults", "", JOB);
}

#[test]
fn persistence_claim_and_node_modules() {
    check(
        "pvc",
        r#"
kubernetes:
  persistence: { existingClaimName: shared-data, mountPath: /mnt/shared, subPath: runtimes }
  customNodeModulesPath: node/package.json
userDefinedVariables: { userDefinedJson: '{"A":"1"}' }
"#,
        JOB,
    );
}

#[test]
fn registry_prefix_pull_secrets_scheduling_and_extras() {
    check(
        "registry",
        r#"
kubernetes:
  imageRegistry: registry.example.com/mirror
  imagePullSecrets: [{ name: global-pull }]
  podAnnotations: { cost-center: "42" }
  podLabels: { team: synthetics }
  nodeSelector: { pool: runtimes }
  tolerations: [{ key: dedicated, operator: Equal, value: runtimes, effect: NoSchedule }]
  affinity: { nodeAffinity: { requiredDuringSchedulingIgnoredDuringExecution: { nodeSelectorTerms: [{ matchExpressions: [{ key: zone, operator: In, values: [a] }] }] } } }
  extraVolumes: [{ name: certs, configMap: { name: ca-bundle } }]
  extraVolumeMounts: [{ name: certs, mountPath: /etc/certs, readOnly: true }]
  sidecars: [{ name: log-shipper, image: busybox:1 }]
  extraEnv: { TZ: UTC }
  runtimeServiceAccount: runtime-sa
  terminationGracePeriodSeconds: 10
  job: { backoffLimit: 0, ttlSecondsAfterFinished: 300 }
runtimes:
  - name: node-api-runtime
    image: { repository: newrelic/synthetics-node-api-runtime, tag: "1.2.3", pullPolicy: Always }
    imagePullSecrets: [{ name: runtime-pull }, { name: global-pull }]
    extraEnv: { TZ: Europe/Paris, NODE_OPTIONS: --max-old-space-size=2048 }
"#,
        JOB,
    );
}

#[test]
fn persistent_runtime() {
    check(
        "persistent",
        "",
        r#"{"id": "p-1", "runtime_type": "node-browser-runtime", "workload_kind": "persistent", "timeout_secs": 60}"#,
    );
}

#[test]
fn sidecar_settings_and_network_policy() {
    check(
        "sidecar",
        r#"
logFormat: json
hostnameOverride: jm
checkTimeout: 30
sidecar:
  image: { repository: acme/sidecar, tag: "0.1.0" }
  resources: { requests: { cpu: 50m, memory: 64Mi }, limits: { cpu: 100m, memory: 128Mi } }
  allowCidrs: [10.1.0.0/16]
  denyCidrs: [192.0.2.0/24]
  allowHosts: [api.example.com]
  denyHosts: [evil.example.com]
  denyPrivate: true
  reportOnly: true
  apiServerAddresses: [10.96.0.1, "172.18.0.2:6443"]
  upstreamProxy: http://proxy.corp:3128
  upstreamProxyBypass: [.svc.cluster.local, 10.0.0.0/8]
  noProxy: [localhost, .svc]
  port: 3129
  adminPort: 9902
kubernetes:
  jobManagerPodLabels: { app.kubernetes.io/name: job-manager, app.kubernetes.io/instance: prod }
"#,
        JOB,
    );
}

#[test]
fn long_and_unsafe_job_ids() {
    let id = format!("Job_{}.Tail", "X".repeat(100));
    check(
        "long-id",
        "kubernetes: { networkPolicy: { enabled: false } }",
        &format!(r#"{{"id": "{id}", "runtime_type": "node-api-runtime", "timeout_secs": 900, "attempt": 3}}"#),
    );
}
