//! `helm install` on the emulator: the chart rendered by real Helm (helm-python-sdk in
//! the test venv, `.venv/` from `deploy/scripts/setup-test-env.sh`), applied with real
//! `kubectl apply --server-side`, the chart's job-manager Deployment run by the process
//! kubelet exactly as rendered (image -> `target/debug/job-manager`, env from the
//! chart's Secrets, the config file from its ConfigMap volume, probes, and the chart's
//! ServiceAccount token held to the chart's Role), jobs from an embedded broker run in
//! runtime pods, and their results back at the broker through the chart's Service.
//!
//! Each test is one case of the values matrix with its own emulator, kubelet and broker
//! (nextest runs them in parallel). Pods get loopback addresses of their own, so the
//! job manager listens on the port the chart configures and the chart's Service reaches
//! it on its `targetPort`: a Service/listen-port mismatch fails here. Cluster DNS names
//! (`<service>.<ns>.svc`) resolve in pods through the kubelet's hosts file.
//!
//! The one value an operator would not set: the runtimes' images name the test runtime
//! (`newrelic/test-runtime`), whose payload actions the cases drive (`sleep`, and `env`
//! to read `USER_DEFINED_VARIABLES` back from the runtime's environment).
#![allow(clippy::unwrap_used)] // in a test, an unwrap is an assertion
use common::{Job, JobId, JobResult, Outcome, WorkloadKind};
use integration_tests::bins::workspace_root;
use integration_tests::emulator::{Emulator, EmulatorOptions};
use integration_tests::kubelet::{Kubelet, KubeletOptions};
use job_manager::broker::embedded::{EmbeddedBroker, EmbeddedOptions};
use serde_json::{json, Value};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

const NS: &str = "jobs";
const LOCATION_KEY: &str = "helm-location-key";
const INTERNAL_API_KEY: &str = "helm-internal-api-key";
/// The image every runtime type runs here (the kubelet maps it to `test-runtime`).
const TEST_RUNTIME_IMAGE: &str = "newrelic/test-runtime";
/// A persistent runtime's image: the test runtime serving on the runtime port (8081,
/// the chart's default) as its image's CMD.
const PERSISTENT_RUNTIME_IMAGE: &str = "newrelic/test-runtime-persistent";

fn ci() -> bool {
    std::env::var("CI").is_ok_and(|v| v == "true")
}

/// `what` is missing: fails under CI, skips (saying so) elsewhere.
fn missing(what: &str) {
    assert!(!ci(), "{what} is missing; CI must run this suite (deploy/scripts/setup-test-env.sh)");
    eprintln!("SKIPPED: {what} is missing");
}

fn kubectl() -> Option<PathBuf> {
    let dir = match std::env::var_os("KUBECTL_DIR") {
        Some(d) => PathBuf::from(d),
        None => {
            let path = std::env::var_os("PATH")?;
            let k = std::env::split_paths(&path).map(|d| d.join("kubectl")).find(|p| p.is_file())?;
            k.canonicalize().ok()?.parent()?.to_path_buf()
        }
    };
    Some(dir.join("kubectl.1.33")).filter(|p| p.is_file())
}

/// The chart rendered by Helm with `values` (install or upgrade), as one multi-document
/// YAML; `Err` carries Helm's message.
fn helm_template(python: &Path, values: &Value, install: bool) -> Result<String, String> {
    let script = r#"
import json, sys
import helm_python as helm
with helm.Chart.load(sys.argv[1]) as chart:
    files = chart.render(json.loads(sys.argv[2]), name="jm", namespace=sys.argv[3], is_install=sys.argv[4] == "install")
for path, text in sorted(files.items()):
    if path.endswith(".yaml") and text.strip():
        print(f"---\n# Source: {path}\n{text}")
"#;
    let chart = workspace_root().join("deploy/helm/job-manager");
    let out = std::process::Command::new(python)
        .args(["-c", script])
        .arg(&chart)
        .arg(values.to_string())
        .arg(NS)
        .arg(if install { "install" } else { "upgrade" })
        .output()
        .expect("python runs");
    if !out.status.success() {
        return Err(String::from_utf8_lossy(&out.stderr).into_owned());
    }
    Ok(String::from_utf8(out.stdout).expect("utf-8 manifests"))
}

fn merge(base: &mut Value, over: &Value) {
    match (base, over) {
        (Value::Object(b), Value::Object(o)) => {
            for (k, v) in o {
                merge(b.entry(k.clone()).or_insert(Value::Null), v);
            }
        }
        (b, o) => *b = o.clone(),
    }
}

async fn http_get(addr: std::net::SocketAddr, path: &str) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let Ok(mut conn) = tokio::net::TcpStream::connect(addr).await else { return "connect failed".into() };
    let req = format!("GET {path} HTTP/1.1\r\nHost: job-manager\r\nConnection: close\r\n\r\n");
    let _ = conn.write_all(req.as_bytes()).await;
    let mut out = String::new();
    let _ = conn.read_to_string(&mut out).await;
    out
}

/// The tools a case needs, or `None` (said by [`missing`]) when they are absent.
fn tools() -> Option<(PathBuf, PathBuf)> {
    let Some(kubectl) = kubectl() else {
        missing("kubectl.1.33 (beside `kubectl`, or KUBECTL_DIR)");
        return None;
    };
    let python = workspace_root().join(".venv/bin/python");
    if !python.is_file() {
        missing(".venv/bin/python with helm-python-sdk");
        return None;
    }
    let bins = integration_tests::kubelet::binary_dir();
    if !["job-manager", "sidecar", "test-runtime"].iter().all(|b| bins.join(b).is_file()) {
        missing("target/debug/{job-manager,sidecar,test-runtime} (cargo build --workspace)");
        return None;
    }
    Some((kubectl, python))
}

/// One release on its own emulator + kubelet, fed by its own embedded broker.
struct Release {
    kubectl: PathBuf,
    python: PathBuf,
    emu: Emulator,
    kubelet: Kubelet,
    broker: EmbeddedBroker,
    home: tempfile::TempDir,
    /// The values of the last install/upgrade.
    values: Value,
    /// From the rendered release.
    deployment: String,
    service: String,
    service_account: String,
}

impl Release {
    /// Emulator, kubelet and broker up, the namespace and the CRDs applied; nothing of
    /// the release yet (a case may create what its values point at first).
    async fn prepare(kubectl: PathBuf, python: PathBuf) -> Self {
        let emu = Emulator::start(EmulatorOptions { namespace: NS.into(), ..Default::default() }).await.unwrap();
        let mut opts = KubeletOptions::default();
        opts.images
            .insert(0, (TEST_RUNTIME_IMAGE.into(), integration_tests::kubelet::binary_dir().join("test-runtime")));
        opts.image_args.push((
            PERSISTENT_RUNTIME_IMAGE.into(),
            ["--serve", "127.0.0.1:8081", "--max-concurrent", "2"].map(String::from).to_vec(),
        ));
        let kubelet = Kubelet::start(&emu, opts);
        let broker = EmbeddedBroker::new(EmbeddedOptions {
            visibility_timeout: Duration::from_secs(30),
            location_key: common::secret::Secret::new(LOCATION_KEY),
        });
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let broker_addr = listener.local_addr().unwrap();
        let serving = broker.clone();
        tokio::spawn(async move { serving.serve(listener, std::future::pending()).await });
        let values = json!({
            "jobManager": {"brokerApiEndpoint": format!("http://{broker_addr}")},
            "node-api-runtime": {"image": {"repository": TEST_RUNTIME_IMAGE}},
            "node-browser-runtime": {"image": {"repository": TEST_RUNTIME_IMAGE}},
        });
        let release = Self {
            kubectl,
            python,
            emu,
            kubelet,
            broker,
            home: tempfile::tempdir().unwrap(),
            values,
            deployment: String::new(),
            service: String::new(),
            service_account: String::new(),
        };
        let crds = workspace_root().join("deploy/helm/job-manager/crds").display().to_string();
        release.kubectl_ok(&["create", "namespace", NS]).await;
        release.kubectl_ok(&["apply", "--server-side", "-f", &crds]).await;
        release
    }

    /// A release whose secrets the chart creates from values (the usual install).
    async fn with_chart_secrets(kubectl: PathBuf, python: PathBuf) -> Self {
        let mut r = Self::prepare(kubectl, python).await;
        merge(
            &mut r.values,
            &json!({"jobManager": {"locationKey": LOCATION_KEY}, "global": {"internalApiKey": INTERNAL_API_KEY}}),
        );
        r
    }

    async fn kubectl(&self, args: &[&str]) -> (bool, String) {
        let out = tokio::process::Command::new(&self.kubectl)
            .args(args)
            .env("KUBECONFIG", self.emu.kubeconfig_path())
            .env("HOME", self.home.path())
            .stdin(Stdio::null())
            .output()
            .await
            .expect("kubectl runs");
        let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
        (out.status.success(), text)
    }

    async fn kubectl_ok(&self, args: &[&str]) -> String {
        let (ok, out) = self.kubectl(args).await;
        assert!(ok, "kubectl {args:?} failed:\n{out}");
        out
    }

    /// Pods and their container states, plus the job manager's log tail, for a failure.
    async fn diagnose(&self, why: &str) -> String {
        let pods: Vec<String> = self
            .emu
            .objects("v1", "Pod", NS)
            .iter()
            .map(|p| format!("{} {} {}", p["metadata"]["name"], p["status"]["podIP"], p["status"]["containerStatuses"]))
            .collect();
        let (_, logs) = self.kubectl(&["logs", "-n", NS, &self.deployment, "--tail=40"]).await;
        format!("{why}\npods: {pods:#?}\njob manager log:\n{logs}")
    }

    /// Renders with the release's values plus `extra`, applies, waits for the rollout.
    async fn apply(&mut self, extra: &Value, install: bool) -> String {
        merge(&mut self.values, extra);
        let manifests = helm_template(&self.python, &self.values, install).unwrap_or_else(|e| panic!("helm: {e}"));
        let docs: Vec<Value> = serde_saphyr::from_multiple::<Value>(&manifests)
            .unwrap_or_else(|e| panic!("helm's output is not YAML: {e}"))
            .into_iter()
            .filter(Value::is_object)
            .collect();
        let name_of = |kind: &str| {
            let found: Vec<&str> =
                docs.iter().filter(|d| d["kind"] == kind).filter_map(|d| d["metadata"]["name"].as_str()).collect();
            assert_eq!(found.len(), 1, "one {kind} expected in the release, found {found:?}");
            found[0].to_string()
        };
        self.deployment = format!("deployment/{}", name_of("Deployment"));
        self.service = name_of("Service");
        self.service_account = docs
            .iter()
            .find(|d| d["kind"] == "Deployment")
            .and_then(|d| d["spec"]["template"]["spec"]["serviceAccountName"].as_str())
            .unwrap_or("default")
            .to_string();
        let file = self.home.path().join("release.yaml");
        std::fs::write(&file, &manifests).unwrap();
        let out = self.kubectl_ok(&["apply", "--server-side", "-f", &file.display().to_string()]).await;
        let (ok, status) = self.kubectl(&["rollout", "status", "-n", NS, &self.deployment, "--timeout=60s"]).await;
        if !ok {
            panic!("{}", self.diagnose(&format!("the Deployment did not roll out: {status}")).await);
        }
        out
    }

    async fn install(&mut self, extra: Value) {
        self.apply(&extra, true).await;
        self.assert_service_reaches_the_job_manager().await;
    }

    /// The chart's Service, on its own port, reaches a job manager (what sidecars use).
    async fn assert_service_reaches_the_job_manager(&self) {
        let port = self.values["service"]["port"].as_u64().unwrap_or(8080) as u16;
        let svc = self.kubelet.service_addr(NS, &self.service, port).expect("a forwarder for the chart's Service");
        let health = http_get(svc, "/healthz").await;
        if !health.starts_with("HTTP/1.1 200") {
            panic!(
                "{}",
                self.diagnose(&format!("the chart's Service does not reach the job manager: {health:?}")).await
            );
        }
    }

    /// Submits a job and waits for its result.
    async fn run(&self, id: &str, runtime_type: &str, kind: WorkloadKind, payload: Value) -> JobResult {
        let id = JobId::new(id).unwrap();
        self.broker
            .submit(Job {
                id: id.clone(),
                runtime_type: runtime_type.into(),
                workload_kind: kind,
                timeout_secs: 30,
                attempt: 1,
                payload,
                signature: None,
            })
            .unwrap();
        let deadline = tokio::time::Instant::now() + Duration::from_secs(90);
        loop {
            if let Some(r) = self.broker.result(&id) {
                return r;
            }
            if tokio::time::Instant::now() > deadline {
                panic!("{}", self.diagnose(&format!("no result for {id} reached the broker")).await);
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// An ephemeral `sleep 0` job on node-api-runtime, which must succeed.
    async fn assert_job_succeeds(&self, id: &str) {
        let result =
            self.run(id, "node-api-runtime", WorkloadKind::Ephemeral, json!({"action": "sleep", "secs": 0})).await;
        if result.outcome != Outcome::Succeeded {
            panic!("{}", self.diagnose(&format!("{id}: {result:?}")).await);
        }
    }

    /// What the runtime saw in `USER_DEFINED_VARIABLES`, parsed.
    async fn user_defined_variables(&self, id: &str) -> Value {
        let payload = json!({"action": "env", "name": "USER_DEFINED_VARIABLES"});
        let result = self.run(id, "node-api-runtime", WorkloadKind::Ephemeral, payload).await;
        assert_eq!(result.outcome, Outcome::Succeeded, "{result:?}");
        let raw = result.output["USER_DEFINED_VARIABLES"].as_str().unwrap_or_else(|| panic!("unset: {result:?}"));
        serde_json::from_str(raw).unwrap_or_else(|e| panic!("USER_DEFINED_VARIABLES is not JSON ({e}): {raw}"))
    }

    /// The job-manager pods (by the chart's component label).
    fn job_manager_pods(&self) -> Vec<Value> {
        self.emu
            .objects("v1", "Pod", NS)
            .into_iter()
            .filter(|p| p["metadata"]["labels"]["app.kubernetes.io/component"] == "job-manager")
            .collect()
    }

    /// The job manager ran as the chart's ServiceAccount and the chart's Role sufficed.
    fn assert_rbac_sufficed(&self) {
        let user = format!("system:serviceaccount:{NS}:{}", self.service_account);
        let mine: Vec<_> = self.emu.requests().into_iter().filter(|r| r.user == user).collect();
        assert!(!mine.is_empty(), "no request came from {user}");
        let refused: Vec<_> = mine.iter().filter(|r| r.code == 403).collect();
        assert!(refused.is_empty(), "the chart's Role was not enough: {refused:#?}");
    }
}

macro_rules! release {
    () => {{
        let Some((kubectl, python)) = tools() else { return };
        Release::with_chart_secrets(kubectl, python).await
    }};
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn defaults_run_jobs_end_to_end_and_an_upgrade_rolls_the_deployment_with_the_new_value() {
    let mut r = release!();
    r.install(json!({})).await;
    // Pods have addresses of their own, and the job manager listens on the chart's port.
    let pods = r.job_manager_pods();
    let ip = pods[0]["status"]["podIP"].as_str().unwrap_or_default().to_string();
    assert!(ip.starts_with("127.") && ip != "127.0.0.1", "podIP {ip:?}");
    let direct = http_get(format!("{ip}:8080").parse().unwrap(), "/healthz").await;
    assert!(direct.starts_with("HTTP/1.1 200"), "the job manager does not listen on {ip}:8080: {direct:?}");
    r.assert_job_succeeds("helm-0001").await;

    // `helm upgrade` changing a value: the config checksum rolls the Deployment, the new
    // pod runs with the new value (JSON logs), and jobs keep running.
    let first: Vec<String> = pods.iter().map(|p| p["metadata"]["name"].as_str().unwrap().to_string()).collect();
    let out = r.apply(&json!({"jobManager": {"logFormat": "json"}}), false).await;
    let applied = format!("{} serverside-applied", r.deployment.replace("deployment/", "deployment.apps/"));
    assert!(out.contains(&applied), "{out}");
    let mut new_pod = None;
    for _ in 0..100 {
        if let [only] = r.job_manager_pods().as_slice() {
            let name = only["metadata"]["name"].as_str().unwrap_or_default().to_string();
            if !first.contains(&name) {
                new_pod = Some(name);
                break;
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let Some(new_pod) = new_pod else { panic!("{}", r.diagnose("the old job-manager pod was not replaced").await) };
    let logs = r.kubectl_ok(&["logs", "-n", NS, &new_pod, "--tail=3"]).await;
    assert!(logs.lines().next().is_some_and(|l| l.starts_with('{')), "the new pod does not log JSON: {logs}");
    r.assert_job_succeeds("helm-0002").await;
    r.assert_rbac_sufficed();
}

/// `service.port=9090`: Service, containerPort, the job manager's listener and the
/// sidecars' URL all move; a job's result comes back through the Service on 9090.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn service_port_9090_moves_the_listener_and_results_still_arrive() {
    let mut r = release!();
    r.install(json!({"service": {"port": 9090}})).await;
    let ip = r.job_manager_pods()[0]["status"]["podIP"].as_str().unwrap_or_default().to_string();
    let direct = http_get(format!("{ip}:9090").parse().unwrap(), "/healthz").await;
    assert!(direct.starts_with("HTTP/1.1 200"), "the job manager does not listen on {ip}:9090: {direct:?}");
    r.assert_job_succeeds("port-0001").await;
    r.assert_rbac_sufficed();
}

/// Secrets by existing name: the operator creates them with kubectl; the chart creates
/// none of its own for them and the job manager runs with their keys.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn secrets_by_existing_name_are_used() {
    let Some((kubectl, python)) = tools() else { return };
    let mut r = Release::prepare(kubectl, python).await;
    r.kubectl_ok(&[
        "create",
        "secret",
        "generic",
        "-n",
        NS,
        "ops-location",
        &format!("--from-literal=locationKey={LOCATION_KEY}"),
    ])
    .await;
    r.kubectl_ok(&[
        "create",
        "secret",
        "generic",
        "-n",
        NS,
        "ops-internal",
        &format!("--from-literal=internalApiKey={INTERNAL_API_KEY}"),
    ])
    .await;
    r.install(json!({
        "jobManager": {"locationKeySecretName": "ops-location"},
        "global": {"internalApiKeySecretName": "ops-internal"},
    }))
    .await;
    r.assert_job_succeeds("secret-0001").await;
    // The Deployment takes both keys from the operator's Secrets (and the broker, which
    // checks the location key, served the job manager).
    let name = r.deployment.trim_start_matches("deployment/").to_string();
    let deployment = r.emu.object("apps/v1", "Deployment", NS, &name).expect("the Deployment");
    let refs: Vec<String> = deployment["spec"]["template"]["spec"]["containers"][0]["env"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|e| e["valueFrom"]["secretKeyRef"]["name"].as_str().map(str::to_string))
        .collect();
    assert!(refs.contains(&"ops-location".into()) && refs.contains(&"ops-internal".into()), "{refs:?}");
    r.assert_rbac_sufficed();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn user_defined_json_reaches_the_runtime() {
    let mut r = release!();
    let vars = json!({"REGION": "eu", "TIER": 2});
    r.install(json!({"jobManager": {"userDefinedVariables": {"userDefinedJson": vars.to_string()}}})).await;
    assert_eq!(r.user_defined_variables("udv-json").await, vars);
}

/// `userDefinedFile` as the upstream chart takes it: the file's content
/// (`--set-file jobManager.userDefinedVariables.userDefinedFile=vars.json`).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn user_defined_file_content_reaches_the_runtime() {
    let mut r = release!();
    let content = "{\n  \"FROM_FILE\": \"yes\",\n  \"N\": 1\n}\n";
    r.install(json!({"jobManager": {"userDefinedVariables": {"userDefinedFile": content}}})).await;
    assert_eq!(r.user_defined_variables("udv-file").await, json!({"FROM_FILE": "yes", "N": 1}));
}

/// `userDefinedPath`: a directory on the data volume (an existing claim) holding
/// `user_defined_variables.json`, as the upstream chart mounts it.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn user_defined_path_on_the_data_volume_reaches_the_runtime() {
    let mut r = release!();
    let claim = "jm-data";
    let dir = r.kubelet.claim_dir(NS, claim).join("variables");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("user_defined_variables.json"), r#"{"FROM_VOLUME": true}"#).unwrap();
    r.kubectl_ok(&[
        "apply",
        "--server-side",
        "-f",
        &write_manifest(
            &r,
            "pvc.yaml",
            &json!({"apiVersion": "v1", "kind": "PersistentVolumeClaim",
                "metadata": {"name": claim, "namespace": NS},
                "spec": {"accessModes": ["ReadWriteMany"], "resources": {"requests": {"storage": "1Gi"}}}}),
        ),
    ])
    .await;
    r.install(json!({
        "global": {"persistence": {"existingClaimName": claim}},
        "jobManager": {"userDefinedVariables": {"userDefinedPath": "variables"}},
    }))
    .await;
    assert_eq!(r.user_defined_variables("udv-path").await, json!({"FROM_VOLUME": true}));
}

fn write_manifest(r: &Release, name: &str, doc: &Value) -> String {
    let file = r.home.path().join(name);
    std::fs::write(&file, serde_json::to_string(doc).unwrap()).unwrap();
    file.display().to_string()
}

/// `global.hostnameOverride` names the Service sidecars report to, and
/// `fullnameOverride` every object of the release; jobs still run.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn hostname_override_names_the_service_results_go_through() {
    let mut r = release!();
    r.install(json!({"global": {"hostnameOverride": "results-here"}})).await;
    assert_eq!(r.service, "results-here");
    r.assert_job_succeeds("host-0001").await;
    r.assert_rbac_sufficed();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn fullname_override_names_the_release_objects_and_jobs_run() {
    let mut r = release!();
    r.install(json!({"fullnameOverride": "acme"})).await;
    assert_eq!(r.deployment, "deployment/acme");
    assert_eq!(r.service_account, "acme");
    r.assert_job_succeeds("full-0001").await;
    r.assert_rbac_sufficed();
}

/// Two replicas (and the PodDisruptionBudget the chart adds for them); the one holding the `runtime-pruning` Lease is killed: jobs still
/// complete, the Deployment replaces the pod, and another replica takes the Lease.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_replicas_with_one_killed_keep_running_jobs_and_hand_the_lease_over() {
    let mut r = release!();
    // `replicaCount` counts when the HPA (on by default) is off; the emulator runs no HPA.
    r.install(json!({"replicaCount": 2, "jobManager": {"hpa": {"enabled": false}}})).await;
    let pods = r.job_manager_pods();
    assert_eq!(pods.len(), 2, "{}", r.diagnose("two replicas expected").await);
    r.assert_job_succeeds("rep-0001").await;
    let holder = || {
        r.emu
            .object("coordination.k8s.io/v1", "Lease", NS, "runtime-pruning")
            .and_then(|l| l["spec"]["holderIdentity"].as_str().map(str::to_string))
    };
    let mut first = None;
    for _ in 0..200 {
        first = holder();
        if first.is_some() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let Some(first) = first else { panic!("{}", r.diagnose("nobody took the runtime-pruning Lease").await) };
    // The identity is the pod's name plus a suffix.
    let killed = r
        .job_manager_pods()
        .iter()
        .filter_map(|p| p["metadata"]["name"].as_str().map(str::to_string))
        .find(|name| first.starts_with(&format!("{name}-")))
        .unwrap_or_else(|| panic!("the Lease holder {first:?} is none of the job-manager pods"));
    r.kubectl_ok(&["delete", "pod", "-n", NS, &killed, "--grace-period=0", "--force"]).await;
    for i in 2..=4 {
        r.assert_job_succeeds(&format!("rep-000{i}")).await;
    }
    let mut second = None;
    for _ in 0..300 {
        second = holder().filter(|h| !h.starts_with(&format!("{killed}-")));
        if second.is_some() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(second.is_some(), "{}", r.diagnose(&format!("the Lease stayed with the killed {killed}")).await);
    let (ok, status) = r.kubectl(&["rollout", "status", "-n", NS, &r.deployment, "--timeout=60s"]).await;
    assert!(ok, "the Deployment did not get its second replica back: {status}");
    r.assert_rbac_sufficed();
}

/// A persistent runtime: the job manager (in its pod) creates the runtime's Deployment
/// and Service and dispatches to `http://<service>.<ns>.svc:8443`, resolved through the
/// kubelet's hosts file; the result comes back through the chart's Service.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_persistent_runtime_receives_jobs_through_its_service_name() {
    let mut r = release!();
    r.install(
        json!({"node-browser-runtime": {"workload": "persistent", "image": {"repository": PERSISTENT_RUNTIME_IMAGE}}}),
    )
    .await;
    let result = r
        .run("pers-0001", "node-browser-runtime", WorkloadKind::Persistent, json!({"action": "sleep", "secs": 0}))
        .await;
    if result.outcome != Outcome::Succeeded {
        panic!("{}", r.diagnose(&format!("{result:?}")).await);
    }
    let services: Vec<String> = r
        .emu
        .objects("v1", "Service", NS)
        .iter()
        .map(|s| s["metadata"]["name"].as_str().unwrap_or_default().to_string())
        .collect();
    assert!(services.iter().any(|s| s.contains("browser")), "no Service for the persistent runtime: {services:?}");
    r.assert_rbac_sufficed();
}
