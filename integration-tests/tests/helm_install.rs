//! `helm install` on the emulator: the chart rendered by real Helm (helm-python-sdk in
//! the test venv, `.venv/` from `deploy/scripts/setup-test-env.sh`), applied with real
//! `kubectl apply --server-side`, the chart's job-manager Deployment run by the process
//! kubelet exactly as rendered (image -> `target/debug/job-manager`, env from the
//! chart's Secrets, the config file from its ConfigMap volume, probes, and the chart's
//! ServiceAccount token held to the chart's Role), a job from an embedded broker run in
//! a runtime pod, and its result back at the broker through the chart's Service.
//!
//! One deviation from an operator's values: `extraEnv.JM_LISTEN`. Pods share the host's
//! network here, so the kubelet gives each declared container port a free host port and
//! rewrites ports written in env and args; the listen address the chart writes into the
//! config file (a mounted ConfigMap) is not rewritten. The job manager then tells its
//! sidecars `job-manager.<ns>.svc:<its listen port>`, which the kubelet's Service
//! forwarder routes to the pod owning that local port (in a cluster the two ports are
//! equal).
use common::{Job, JobId, Outcome, WorkloadKind};
use integration_tests::bins::workspace_root;
use integration_tests::emulator::{Emulator, EmulatorOptions};
use integration_tests::kubelet::{Kubelet, KubeletOptions};
use job_manager::broker::embedded::{EmbeddedBroker, EmbeddedOptions};
use serde_json::json;
use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

const NS: &str = "jobs";
const LOCATION_KEY: &str = "helm-location-key";

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

/// The chart rendered by Helm with `values` (install), as one multi-document YAML.
fn helm_template(python: &std::path::Path, values: &serde_json::Value, install: bool) -> String {
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
    assert!(out.status.success(), "helm render failed: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout).expect("utf-8 manifests")
}

async fn run_kubectl(bin: &std::path::Path, emu: &Emulator, home: &std::path::Path, args: &[&str]) -> (bool, String) {
    let out = tokio::process::Command::new(bin)
        .args(args)
        .env("KUBECONFIG", emu.kubeconfig_path())
        .env("HOME", home)
        .stdin(Stdio::null())
        .output()
        .await
        .expect("kubectl runs");
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    (out.status.success(), text)
}

fn merge(base: &mut serde_json::Value, over: &serde_json::Value) {
    match (base, over) {
        (serde_json::Value::Object(b), serde_json::Value::Object(o)) => {
            for (k, v) in o {
                merge(b.entry(k.clone()).or_insert(serde_json::Value::Null), v);
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

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn helm_install_with_default_values_runs_jobs_end_to_end_and_an_upgrade_rolls_the_deployment() {
    let Some(kubectl) = kubectl() else { return missing("kubectl.1.33 (beside `kubectl`, or KUBECTL_DIR)") };
    let python = workspace_root().join(".venv/bin/python");
    if !python.is_file() {
        return missing(".venv/bin/python with helm-python-sdk");
    }
    let bins = integration_tests::kubelet::binary_dir();
    if !["job-manager", "sidecar", "test-runtime"].iter().all(|b| bins.join(b).is_file()) {
        return missing("target/debug/{job-manager,sidecar,test-runtime} (cargo build --workspace)");
    }

    let emu = Emulator::start(EmulatorOptions { namespace: NS.into(), ..Default::default() }).await.unwrap();
    let kubelet = Kubelet::start(&emu, KubeletOptions::default());
    let broker = EmbeddedBroker::new(EmbeddedOptions {
        visibility_timeout: Duration::from_secs(30),
        location_key: common::secret::Secret::new(LOCATION_KEY),
    });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let broker_addr = listener.local_addr().unwrap();
    let serving = broker.clone();
    tokio::spawn(async move { serving.serve(listener, std::future::pending()).await });

    // The operator's install: the two required values, the broker's address; more from
    // `HELM_VALUES` (JSON, merged over these) to try another case of the matrix.
    let mut values = json!({
        "jobManager": {"locationKey": LOCATION_KEY, "brokerApiEndpoint": format!("http://{broker_addr}")},
        "global": {"internalApiKey": "helm-internal-api-key"},
    });
    if let Some(extra) = std::env::var("HELM_VALUES").ok().filter(|v| !v.trim().is_empty()) {
        merge(&mut values, &serde_json::from_str(&extra).expect("HELM_VALUES is JSON"));
    }
    let port = values["service"]["port"].as_u64().unwrap_or(8080) as u16;
    values["extraEnv"]["JM_LISTEN"] = json!(format!("0.0.0.0:{port}"));
    let manifests = helm_template(&python, &values, true);
    let docs: Vec<serde_json::Value> = serde_yaml::Deserializer::from_str(&manifests)
        .filter_map(|d| serde::Deserialize::deserialize(d).ok())
        .filter(|d: &serde_json::Value| d.is_object())
        .collect();
    let name_of = |kind: &str| {
        let found: Vec<&str> =
            docs.iter().filter(|d| d["kind"] == kind).filter_map(|d| d["metadata"]["name"].as_str()).collect();
        assert_eq!(found.len(), 1, "one {kind} expected in the release, found {found:?}");
        found[0].to_string()
    };
    let (deployment, service) = (format!("deployment/{}", name_of("Deployment")), name_of("Service"));
    let sa = docs
        .iter()
        .find(|d| d["kind"] == "Deployment")
        .and_then(|d| d["spec"]["template"]["spec"]["serviceAccountName"].as_str())
        .unwrap_or("default")
        .to_string();
    let home = tempfile::tempdir().unwrap();
    let file = home.path().join("release.yaml");
    std::fs::write(&file, &manifests).unwrap();
    let k = |args: Vec<String>| {
        let (kubectl, emu, home) = (&kubectl, &emu, home.path());
        async move {
            let args: Vec<&str> = args.iter().map(String::as_str).collect();
            run_kubectl(kubectl, emu, home, &args).await
        }
    };
    let crds = workspace_root().join("deploy/helm/job-manager/crds").display().to_string();
    for args in [
        vec!["create".to_string(), "namespace".into(), NS.into()],
        vec!["apply".into(), "--server-side".into(), "-f".into(), crds],
        vec!["apply".into(), "--server-side".into(), "-f".into(), file.display().to_string()],
    ] {
        let (ok, out) = k(args.clone()).await;
        assert!(ok, "kubectl {args:?} failed:\n{out}");
    }
    let (ok, out) =
        k(["wait", "-n", NS, "--for=condition=Available", &deployment, "--timeout=60s"].map(String::from).to_vec())
            .await;
    let diagnose = |why: &str| {
        let pods: Vec<String> = emu
            .objects("v1", "Pod", NS)
            .iter()
            .map(|p| format!("{} {}", p["metadata"]["name"], p["status"]["containerStatuses"]))
            .collect();
        format!("{why}\npods: {pods:#?}")
    };
    if !ok {
        let (_, logs) = k(["logs", "-n", NS, &deployment, "--tail=30"].map(String::from).to_vec()).await;
        panic!("{}\njob manager log:\n{logs}", diagnose(&format!("the Deployment did not become Available: {out}")));
    }

    // The chart's Service reaches the job manager (what the runtime pods' sidecars use).
    let svc = kubelet.service_addr(NS, &service, port).expect("a forwarder for the chart's Service");
    let health = http_get(svc, "/healthz").await;
    assert!(
        health.starts_with("HTTP/1.1 200"),
        "the chart's Service does not reach the job manager: {health:?}\n{}",
        diagnose("")
    );

    broker
        .submit(Job {
            id: JobId::new("helm-0001").unwrap(),
            runtime_type: "node-api-runtime".into(),
            workload_kind: WorkloadKind::Ephemeral,
            timeout_secs: 30,
            attempt: 1,
            payload: json!({"script": "assert.ok(true, \"the chart runs API checks\");"}),
            signature: None,
        })
        .unwrap();
    let results = broker.wait_for_results(1, Duration::from_secs(90)).await;
    if results.is_empty() {
        let (_, logs) = k(["logs", "-n", NS, &deployment, "--tail=40"].map(String::from).to_vec()).await;
        panic!("{}\njob manager log:\n{logs}", diagnose("no result reached the broker"));
    }
    let result = &results[&JobId::new("helm-0001").unwrap()];
    assert_eq!(result.outcome, Outcome::Succeeded, "{result:?}");

    // `helm upgrade` changing a value: the config checksum rolls the Deployment, the new
    // pod runs with the new value (JSON logs), and jobs keep running.
    let first_pods: Vec<String> = emu
        .objects("v1", "Pod", NS)
        .iter()
        .map(|p| p["metadata"]["name"].as_str().unwrap_or_default().to_string())
        .collect();
    let mut upgraded = values.clone();
    upgraded["jobManager"]["logFormat"] = json!("json");
    std::fs::write(&file, helm_template(&python, &upgraded, false)).unwrap();
    let (ok, out) = k(vec!["apply".into(), "--server-side".into(), "-f".into(), file.display().to_string()]).await;
    assert!(
        ok && out.contains(&format!("{} serverside-applied", deployment.replace("deployment/", "deployment.apps/"))),
        "{out}"
    );
    let (ok, out) = k(["rollout", "status", "-n", NS, &deployment, "--timeout=60s"].map(String::from).to_vec()).await;
    assert!(ok, "{}", diagnose(&format!("the upgrade did not roll out: {out}")));
    let mut new_pod = None;
    for _ in 0..100 {
        let pods = emu.objects("v1", "Pod", NS);
        let jm: Vec<&serde_json::Value> =
            pods.iter().filter(|p| p["metadata"]["labels"]["app.kubernetes.io/component"] == "job-manager").collect();
        if let [only] = jm.as_slice() {
            let name = only["metadata"]["name"].as_str().unwrap_or_default().to_string();
            if !first_pods.contains(&name) {
                new_pod = Some(name);
                break;
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let new_pod = new_pod.unwrap_or_else(|| panic!("{}", diagnose("the old job-manager pod was not replaced")));
    let (_, logs) = k(["logs", "-n", NS, &new_pod, "--tail=3"].map(String::from).to_vec()).await;
    assert!(logs.lines().next().is_some_and(|l| l.starts_with('{')), "the new pod does not log JSON: {logs}");
    broker
        .submit(Job {
            id: JobId::new("helm-0002").unwrap(),
            runtime_type: "node-api-runtime".into(),
            workload_kind: WorkloadKind::Ephemeral,
            timeout_secs: 30,
            attempt: 1,
            payload: json!({"script": "assert.ok(true, \"the chart runs API checks\");"}),
            signature: None,
        })
        .unwrap();
    let results = broker.wait_for_results(2, Duration::from_secs(90)).await;
    let second = results.get(&JobId::new("helm-0002").unwrap()).map(|r| r.outcome);
    assert_eq!(second, Some(Outcome::Succeeded), "{}", diagnose("the job after the upgrade"));

    // The job manager ran as the chart's ServiceAccount and the chart's Role sufficed.
    let user = format!("system:serviceaccount:{NS}:{sa}");
    let mine: Vec<_> = emu.requests().into_iter().filter(|r| r.user == user).collect();
    assert!(!mine.is_empty(), "no request came from {user}");
    let refused: Vec<_> = mine.iter().filter(|r| r.code == 403).collect();
    assert!(refused.is_empty(), "the chart's Role was not enough: {refused:#?}");
    drop(kubelet);
}
