//! Real kubectl against the emulator: what an operator does on day one, with kubectl
//! 1.29 (JSON everywhere) and 1.33 (protobuf request bodies for imperative creates,
//! aggregated discovery, OpenAPI v3). The binaries are `kubectl.1.29` and `kubectl.1.33`
//! beside the real path of `kubectl` (or `KUBECTL_DIR`); without them the test says so
//! and passes only outside CI: under `CI=true` a missing kubectl fails it.
#![allow(clippy::unwrap_used)] // in a test, an unwrap is an assertion
use integration_tests::bins::workspace_root;
use integration_tests::emulator::{Emulator, EmulatorOptions};
use integration_tests::kubelet::{Kubelet, KubeletOptions};
use serde_json::{json, Value};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;
use tokio::io::{AsyncBufReadExt, BufReader};

fn kubectl_dir() -> Option<PathBuf> {
    if let Some(d) = std::env::var_os("KUBECTL_DIR") {
        return Some(PathBuf::from(d));
    }
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|d| d.join("kubectl"))
        .find(|p| p.is_file())?
        .canonicalize()
        .ok()?
        .parent()
        .map(Path::to_path_buf)
}

/// The kubectl binary of `version`, or `None` (outside CI) when it is not installed.
fn kubectl_binary(version: &str) -> Option<PathBuf> {
    let found = kubectl_dir().map(|d| d.join(format!("kubectl.{version}"))).filter(|p| p.is_file());
    if found.is_none() {
        let ci = std::env::var("CI").is_ok_and(|v| v == "true");
        assert!(!ci, "kubectl.{version} is not installed beside `kubectl` (set KUBECTL_DIR); CI must run this suite");
        eprintln!("SKIPPED: kubectl.{version} not found beside `kubectl` (set KUBECTL_DIR)");
    }
    found
}

struct Session {
    bin: PathBuf,
    emu: Emulator,
    _kubelet: Kubelet,
    dir: tempfile::TempDir,
}

struct Run {
    ok: bool,
    stdout: String,
    stderr: String,
}

impl Session {
    async fn start(bin: PathBuf) -> Self {
        let emu = Emulator::start(EmulatorOptions::default()).await.expect("emulator");
        // `busybox` runs the host's shell: `sh -c` pods print what `kubectl logs` reads.
        let opts = KubeletOptions {
            images: vec![("busybox".into(), std::fs::canonicalize("/bin/sh").expect("a shell"))],
            ..KubeletOptions::without_binaries()
        };
        let kubelet = Kubelet::start(&emu, opts);
        let dir = tempfile::tempdir().expect("temp dir");
        Self { bin, emu, _kubelet: kubelet, dir }
    }

    async fn run(&self, args: &[&str]) -> Run {
        let out = tokio::process::Command::new(&self.bin)
            .args(args)
            .env("KUBECONFIG", self.emu.kubeconfig_path())
            .env("HOME", self.dir.path())
            .env_remove("KUBECTL_EXTERNAL_DIFF")
            .stdin(Stdio::null())
            .output()
            .await
            .expect("kubectl runs");
        Run {
            ok: out.status.success(),
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        }
    }

    /// Runs kubectl and fails the test (with its output) unless it succeeds.
    async fn ok(&self, args: &[&str]) -> String {
        let r = self.run(args).await;
        assert!(r.ok, "kubectl {} failed:\nstdout: {}\nstderr: {}", args.join(" "), r.stdout, r.stderr);
        r.stdout
    }

    fn file(&self, name: &str, text: &str) -> String {
        let p = self.dir.path().join(name);
        std::fs::write(&p, text).expect("write manifest");
        p.display().to_string()
    }
}

const MANIFEST: &str = r#"
apiVersion: v1
kind: ServiceAccount
metadata:
  name: robot
  namespace: jobs
---
apiVersion: rbac.authorization.k8s.io/v1
kind: Role
metadata:
  name: robot
  namespace: jobs
rules:
- apiGroups: [""]
  resources: ["pods", "pods/log"]
  verbs: ["get", "list", "watch"]
- apiGroups: ["coordination.k8s.io"]
  resources: ["leases"]
  verbs: ["get", "create", "update"]
---
apiVersion: rbac.authorization.k8s.io/v1
kind: RoleBinding
metadata:
  name: robot
  namespace: jobs
roleRef: {apiGroup: rbac.authorization.k8s.io, kind: Role, name: robot}
subjects:
- {kind: ServiceAccount, name: robot, namespace: jobs}
---
apiVersion: v1
kind: ConfigMap
metadata:
  name: settings
  namespace: jobs
data:
  level: info
---
apiVersion: policy/v1
kind: PodDisruptionBudget
metadata:
  name: web
  namespace: jobs
spec:
  maxUnavailable: 1
  selector:
    matchLabels: {app: web}
---
apiVersion: v1
kind: Service
metadata:
  name: web
  namespace: jobs
spec:
  selector: {app: web}
  ports:
  - {port: 8080, targetPort: 8080}
---
apiVersion: apps/v1
kind: Deployment
metadata:
  name: web
  namespace: jobs
spec:
  replicas: 1
  selector:
    matchLabels: {app: web}
  template:
    metadata:
      labels: {app: web}
    spec:
      serviceAccountName: robot
      containers:
      - name: web
        image: busybox:1.36
        command: ["sh", "-c", "echo hello from the kubelet; echo level=$LEVEL; cat \"${KUBECONFIG%/*}/token\"; echo; exec sleep 3600"]
        env:
        - name: LEVEL
          valueFrom:
            configMapKeyRef: {name: settings, key: level}
"#;

const JOB_RECORD: &str = r#"
apiVersion: jobs.jobmanager.dev/v1
kind: JobRecord
metadata:
  name: job-1
  namespace: jobs
spec:
  jobId: job-1
  runtimeType: node-api-runtime
  workload: ephemeral
  deadline: "2030-01-01T00:00:00Z"
"#;

fn lines_with(out: &str, needle: &str) -> usize {
    out.lines().filter(|l| l.contains(needle)).count()
}

/// A GET with a bearer token, as a client inside a pod sends it.
async fn http_get(emu: &Emulator, path: &str, token: &str) -> (u16, Value) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut conn = tokio::net::TcpStream::connect(emu.addr()).await.expect("connect");
    let req =
        format!("GET {path} HTTP/1.1\r\nHost: emulator\r\nAuthorization: Bearer {token}\r\nConnection: close\r\n\r\n");
    conn.write_all(req.as_bytes()).await.expect("send");
    let mut raw = String::new();
    conn.read_to_string(&mut raw).await.expect("read");
    let code = raw.split_whitespace().nth(1).and_then(|c| c.parse().ok()).unwrap_or(0);
    let body = raw.split_once("\r\n\r\n").map(|(_, b)| b).unwrap_or_default();
    (code, serde_json::from_str(body).unwrap_or(Value::Null))
}

async fn eventually<F, Fut>(what: &str, mut f: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    // Generous: CI runs every suite at once on two cores.
    for _ in 0..300 {
        if f().await {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("timed out waiting for {what}");
}

/// The operator's session, step by step; each step checks what kubectl printed and
/// what the emulator stored.
async fn operator_session(version: &str) {
    let Some(bin) = kubectl_binary(version) else { return };
    let s = Session::start(bin).await;

    // 1. Discovery: built-in kinds incl. RBAC and PDBs.
    let resources = s.ok(&["api-resources"]).await;
    for r in ["namespaces", "secrets", "roles", "clusterrolebindings", "poddisruptionbudgets", "serviceaccounts"] {
        let rows = resources.lines().filter(|l| l.starts_with(&format!("{r} "))).count();
        assert_eq!(rows, 1, "{r} missing from api-resources:\n{resources}");
    }

    // Aggregated discovery: `/api` and `/apis` answer everything, no group-version
    // documents are fetched one by one.
    let fresh = s.dir.path().join("fresh-cache").display().to_string();
    let r = s.run(&["get", "pods", "-v=6", "--cache-dir", &fresh]).await;
    assert!(r.ok, "{}", r.stderr);
    let discovery: Vec<&str> = r.stderr.lines().filter(|l| l.contains("/api") && !l.contains("/namespaces/")).collect();
    assert!(!discovery.is_empty(), "no discovery requests logged:\n{}", r.stderr);
    assert!(!discovery.iter().any(|l| l.contains("/apis/apps/v1")), "per-group discovery was fetched:\n{discovery:#?}");

    // 2. A namespace.
    assert_eq!(s.ok(&["create", "namespace", "jobs"]).await, "namespace/jobs created\n");
    assert!(s.ok(&["get", "namespaces"]).await.lines().any(|l| l.starts_with("jobs ") && l.contains("Active")));

    // 3. A generic secret (1.33 sends it as protobuf).
    assert_eq!(
        s.ok(&["create", "secret", "generic", "creds", "-n", "jobs", "--from-literal=token=s3cret"]).await,
        "secret/creds created\n"
    );
    let secret = s.emu.object("v1", "Secret", "jobs", "creds").expect("secret stored");
    assert_eq!(secret["data"]["token"], "czNjcmV0");
    assert_eq!(secret["type"], "Opaque");

    // 3b. An imperative Deployment (1.33 sends it as protobuf too), in `default`.
    let created = s
        .ok(&[
            "create",
            "deployment",
            "probe",
            "--image=busybox:1.36",
            "--port=8080",
            "--",
            "sh",
            "-c",
            "exec sleep 3600",
        ])
        .await;
    assert_eq!(created, "deployment.apps/probe created\n");
    let probe = s.emu.object("apps/v1", "Deployment", "default", "probe").expect("deployment stored");
    let c = &probe["spec"]["template"]["spec"]["containers"][0];
    assert_eq!(c["command"], json!(["sh", "-c", "exec sleep 3600"]));
    assert_eq!(c["ports"], json!([{"containerPort": 8080, "protocol": "TCP"}]));
    assert_eq!(probe["spec"]["strategy"]["type"], "RollingUpdate");

    // 4. The chart's CRD, then a manifest, client-side.
    let crd = workspace_root().join("deploy/helm/job-manager/crds/jobrecords.yaml");
    assert_eq!(
        s.ok(&["apply", "-f", &crd.display().to_string()]).await,
        "customresourcedefinition.apiextensions.k8s.io/jobrecords.jobs.jobmanager.dev created\n"
    );
    let manifest = s.file("app.yaml", MANIFEST);
    let applied = s.ok(&["apply", "-f", &manifest]).await;
    for line in [
        "serviceaccount/robot created",
        "role.rbac.authorization.k8s.io/robot created",
        "rolebinding.rbac.authorization.k8s.io/robot created",
        "configmap/settings created",
        "poddisruptionbudget.policy/web created",
        "service/web created",
        "deployment.apps/web created",
    ] {
        assert_eq!(lines_with(&applied, line), 1, "{line:?} not in:\n{applied}");
    }
    // Re-applying a changed manifest patches only what changed.
    let changed = s.file("app2.yaml", &MANIFEST.replace("level: info", "level: debug"));
    let reapplied = s.ok(&["apply", "-f", &changed]).await;
    assert_eq!(lines_with(&reapplied, "configmap/settings configured"), 1, "{reapplied}");
    assert_eq!(lines_with(&reapplied, "deployment.apps/web unchanged"), 1, "{reapplied}");
    assert_eq!(s.emu.object("v1", "ConfigMap", "jobs", "settings").unwrap()["data"]["level"], "debug");

    // 5. Strict validation: an unknown field is refused with the server's wording.
    let bad = s.file(
        "bad.yaml",
        "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: bad, namespace: jobs}\ndata: {a: b}\nbogus: 1\n",
    );
    let r = s.run(&["apply", "-f", &bad]).await;
    assert!(!r.ok && r.stderr.contains("unknown field \"bogus\""), "{}", r.stderr);

    // 6. Server-side apply takes over, then a second manager conflicts (409).
    let ssa = s.ok(&["apply", "--server-side", "--force-conflicts", "-f", &changed]).await;
    assert_eq!(lines_with(&ssa, "serverside-applied"), 7, "{ssa}");
    let other = s.file(
        "other.yaml",
        "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: settings, namespace: jobs}\ndata: {level: trace}\n",
    );
    let r = s.run(&["apply", "--server-side", "--field-manager=intruder", "-f", &other]).await;
    assert!(!r.ok, "a conflicting apply succeeded");
    assert!(r.stderr.contains("Apply failed with 1 conflict: conflict with \"kubectl\": .data.level"), "{}", r.stderr);
    let cm = s.emu.object("v1", "ConfigMap", "jobs", "settings").unwrap();
    assert!(cm["metadata"]["managedFields"]
        .as_array()
        .unwrap()
        .iter()
        .any(|m| m["manager"] == "kubectl" && m["operation"] == "Apply"));

    // 7. The pod runs; `wait` sees the Deployment available and the pod ready.
    s.ok(&["wait", "-n", "jobs", "--for=condition=Available", "deployment/web", "--timeout=30s"]).await;
    s.ok(&["wait", "-n", "jobs", "--for=condition=Ready", "pod", "-l", "app=web", "--timeout=30s"]).await;

    // 8. get: table, wide, yaml, json.
    let pods = s.ok(&["get", "pods", "-n", "jobs"]).await;
    let header: Vec<&str> = pods.lines().next().unwrap_or_default().split_whitespace().collect();
    assert_eq!(header, ["NAME", "READY", "STATUS", "RESTARTS", "AGE"], "{pods}");
    assert!(
        pods.lines().nth(1).is_some_and(|l| l.starts_with("web-") && l.contains("1/1") && l.contains("Running")),
        "{pods}"
    );
    let wide = s.ok(&["get", "deployments", "-n", "jobs", "-o", "wide"]).await;
    assert!(wide.lines().next().unwrap().contains("CONTAINERS") && wide.contains("busybox:1.36"), "{wide}");
    let yaml = s.ok(&["get", "configmap", "settings", "-n", "jobs", "-o", "yaml"]).await;
    assert!(yaml.contains("kind: ConfigMap") && yaml.contains("level: debug"), "{yaml}");
    let list: Value = serde_json::from_str(&s.ok(&["get", "secrets", "-n", "jobs", "-o", "json"]).await).expect("json");
    assert_eq!(list["items"][0]["metadata"]["name"], "creds");

    // 9. describe.
    let described = s.ok(&["describe", "deployment", "web", "-n", "jobs"]).await;
    assert!(described.contains("Name:") && described.contains("web") && described.contains("Replicas:"), "{described}");

    // 10. logs of the pod the kubelet ran (with the ConfigMap's value in its env).
    let logs = s.ok(&["logs", "-n", "jobs", "-l", "app=web"]).await;
    let lines: Vec<&str> = logs.lines().collect();
    assert_eq!(lines[..2], ["hello from the kubelet", "level=info"], "the pod started before the re-apply: {logs}");
    let pod_token = lines.get(2).copied().unwrap_or_default().to_string();
    let tail = s.ok(&["logs", "-n", "jobs", "deployment/web", "--tail=1"]).await;
    assert_eq!(tail, format!("{pod_token}\n"));

    // 10b. RBAC. The token the kubelet gave the pod is ServiceAccount jobs/robot, which
    // its Role lets read pods but not Secrets. kubectl sends no token to a plain-HTTP
    // server, so kubectl acts as the account with `--as`; the pod's own token is sent
    // as a client in the pod would.
    let as_robot = ["--as", "system:serviceaccount:jobs:robot", "-n", "jobs"];
    assert!(s.ok(&[&as_robot[..], &["get", "pods", "-o", "name"]].concat()).await.starts_with("pod/web-"));
    let r = s.run(&[&as_robot[..], &["get", "secrets"]].concat()).await;
    assert!(!r.ok);
    let denied = "secrets is forbidden: User \"system:serviceaccount:jobs:robot\" cannot list resource \"secrets\" in API group \"\" in the namespace \"jobs\"";
    assert_eq!(r.stderr.trim(), format!("Error from server (Forbidden): {denied}"));
    let r = s.run(&[&as_robot[..], &["delete", "configmap", "settings"]].concat()).await;
    assert!(r.stderr.contains("configmaps \"settings\" is forbidden: User \"system:serviceaccount:jobs:robot\" cannot delete resource \"configmaps\" in API group \"\" in the namespace \"jobs\""), "{}", r.stderr);
    let (code, body) = http_get(&s.emu, "/api/v1/namespaces/jobs/secrets", &pod_token).await;
    assert_eq!((code, body["message"].as_str().unwrap_or_default()), (403, denied));
    let (code, body) = http_get(&s.emu, "/api/v1/namespaces/jobs/pods", &pod_token).await;
    assert_eq!((code, body["kind"].as_str()), (200, Some("PodList")));
    let issued = s.ok(&["create", "token", "robot", "-n", "jobs"]).await;
    assert_eq!(http_get(&s.emu, "/api/v1/namespaces/jobs/pods", issued.trim()).await.0, 200);
    assert_eq!(http_get(&s.emu, "/api/v1/namespaces/jobs/pods", "not-a-token").await.0, 401);

    // 11. scale.
    assert_eq!(s.ok(&["scale", "deployment/web", "-n", "jobs", "--replicas=2"]).await, "deployment.apps/web scaled\n");
    assert_eq!(s.emu.object("apps/v1", "Deployment", "jobs", "web").unwrap()["spec"]["replicas"], 2);
    eventually("two pods", || async { s.emu.objects("v1", "Pod", "jobs").len() == 2 }).await;

    // 12. RBAC objects and the custom resource, with their columns.
    let roles = s.ok(&["get", "roles", "-n", "jobs"]).await;
    assert!(roles.starts_with("NAME") && roles.contains("CREATED AT") && roles.contains("robot"), "{roles}");
    let bindings = s.ok(&["get", "rolebindings", "-n", "jobs", "-o", "wide"]).await;
    assert!(bindings.contains("Role/robot") && bindings.contains("jobs/robot"), "{bindings}");
    let record = s.file("record.yaml", JOB_RECORD);
    assert_eq!(s.ok(&["apply", "-f", &record]).await, "jobrecord.jobs.jobmanager.dev/job-1 created\n");
    let records = s.ok(&["get", "jobrecords", "-n", "jobs"]).await;
    let header: Vec<&str> = records.lines().next().unwrap_or_default().split_whitespace().collect();
    assert_eq!(&header[..4], ["NAME", "JOB", "RUNTIME", "PHASE"], "{records}");
    assert!(records.contains("node-api-runtime"), "{records}");
    assert!(s.ok(&["get", "jr", "-n", "jobs", "-o", "name"]).await.contains("jobrecord.jobs.jobmanager.dev/job-1"));

    // 13. get -w: a watch prints objects created after it started.
    let mut watch = tokio::process::Command::new(&s.bin)
        .args(["get", "configmaps", "-n", "jobs", "-w"])
        .env("KUBECONFIG", s.emu.kubeconfig_path())
        .env("HOME", s.dir.path())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .expect("kubectl -w");
    let mut lines = BufReader::new(watch.stdout.take().unwrap()).lines();
    let first = tokio::time::timeout(Duration::from_secs(10), lines.next_line()).await.expect("watch header");
    assert!(first.unwrap().unwrap_or_default().starts_with("NAME"));
    let cm_rt = s.emu.resource("v1", "ConfigMap").unwrap();
    s.emu.store().create(&cm_rt, "jobs", json!({"metadata": {"name": "late"}}), &Default::default()).unwrap();
    let saw_late = tokio::time::timeout(Duration::from_secs(10), async {
        while let Ok(Some(l)) = lines.next_line().await {
            if l.starts_with("late ") {
                return true;
            }
        }
        false
    })
    .await;
    assert_eq!(saw_late, Ok(true), "the watch did not print the new ConfigMap");
    let _ = watch.kill().await;

    // 14. delete --wait: the Deployment, its pods (garbage collection), the namespace.
    assert_eq!(
        s.ok(&["delete", "deployment", "web", "-n", "jobs", "--wait", "--timeout=30s"]).await,
        "deployment.apps \"web\" deleted\n"
    );
    eventually("pods gone", || async { s.emu.objects("v1", "Pod", "jobs").is_empty() }).await;
    assert_eq!(s.ok(&["delete", "namespace", "jobs", "--wait", "--timeout=30s"]).await, "namespace \"jobs\" deleted\n");
    let r = s.run(&["get", "namespace", "jobs"]).await;
    assert!(!r.ok && r.stderr.contains("namespaces \"jobs\" not found"), "{}", r.stderr);
    assert!(s.emu.objects("v1", "Secret", "jobs").is_empty(), "the namespace's contents went with it");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kubectl_1_29_runs_an_operators_session_against_the_emulator() {
    operator_session("1.29").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kubectl_1_33_runs_an_operators_session_against_the_emulator() {
    operator_session("1.33").await;
}
