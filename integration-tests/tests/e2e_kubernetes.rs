//! End to end: fake broker -> two `job-manager` replicas (the real binary, Kubernetes
//! executor) -> the cluster -> sidecar + runtime pods -> results back at the broker.
//!
//! The cluster is the in-process emulator with its process kubelet, unless
//! `E2E_KUBECONFIG` names a real one (kind/k3d; see the README): then the same suite
//! runs unchanged against it, in `E2E_NAMESPACE` (default `default`), with the job
//! manager's Service backed by `E2E_HOST_IP` (the host address pods can reach).
//!
//! `E2E_JOBS` (default 60) sets the job count per workload; `make bench` runs 1,000 and
//! reads the `E2E-METRIC` lines this suite prints. `E2E_CALM=1` runs without injected
//! API faults and without the replica kill: what a job costs on a healthy cluster.
#![allow(clippy::unwrap_used)] // in a test, an unwrap is an assertion
use common::{Job, JobId, Outcome, WorkloadKind};
use integration_tests::emulator::{Emulator, EmulatorOptions, Fault, FaultRule};
use integration_tests::kubelet::{Kubelet, KubeletOptions};
use job_manager::broker::embedded::{EmbeddedBroker, EmbeddedOptions};
use kube::api::{Api, DynamicObject, Patch, PatchParams};
use kube::discovery::ApiResource;
use serde_json::json;
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::{Duration, Instant};

const LOCATION_KEY: &str = "e2e-location-key";
const INTERNAL_KEY: &str = "e2e-internal-api-key";
const INTERNAL_KEY_SECRET: &str = "job-manager-internal";
const EPHEMERAL: &str = "node-api-runtime";
const PERSISTENT: &str = "node-browser-runtime";
/// The sidecar's ingress port (the persistent runtime Service's port).
const INGRESS_PORT: u16 = 8443;
/// Ephemeral jobs one replica runs at once.
const PARALLELISM: usize = 25;

/// The workspace at run time (cargo sets `CARGO_MANIFEST_DIR` for test processes).
fn workspace_root() -> PathBuf {
    std::env::var_os("CARGO_MANIFEST_DIR")
        .map(PathBuf::from)
        .and_then(|p| p.parent().map(|p| p.to_path_buf()))
        .unwrap_or_else(integration_tests::bins::workspace_root)
}

/// No injected faults, no killed replica (`E2E_CALM=1`).
fn calm() -> bool {
    std::env::var("E2E_CALM").is_ok_and(|v| v == "1")
}

fn job_count() -> usize {
    std::env::var("E2E_JOBS").ok().and_then(|v| v.parse().ok()).unwrap_or(60)
}

fn metric(name: &str, value: impl std::fmt::Display) {
    println!("E2E-METRIC {name} {value}");
}

/// The job manager's ServiceAccount, bound to the chart's Role (emulator runs).
const SERVICE_ACCOUNT: &str = "job-manager";

struct Cluster {
    emu: Option<Emulator>,
    kubelet: Option<Kubelet>,
    /// What the replicas connect with: on the emulator, a token of the job manager's
    /// ServiceAccount, which RBAC limits to the chart's Role; the test's own kubeconfig
    /// on a real cluster.
    replica_kubeconfig: PathBuf,
    namespace: String,
    client: kube::Client,
}

impl Cluster {
    async fn start() -> Self {
        let namespace = std::env::var("E2E_NAMESPACE").unwrap_or_else(|_| "default".into());
        let (emu, kubelet, kubeconfig) = match std::env::var_os("E2E_KUBECONFIG") {
            Some(p) => (None, None, PathBuf::from(p)),
            None => {
                let emu = Emulator::start(EmulatorOptions { namespace: namespace.clone(), ..Default::default() })
                    .await
                    .unwrap();
                let mut opts = KubeletOptions::default();
                // The persistent runtime image's CMD: serve on the pod's loopback.
                opts.image_args.push((
                    "persistent".into(),
                    vec!["--serve".into(), "127.0.0.1:8081".into(), "--max-concurrent".into(), "4".into()],
                ));
                let kubelet = Kubelet::start(&emu, opts);
                let kc = emu.kubeconfig_path().to_path_buf();
                (Some(emu), Some(kubelet), kc)
            }
        };
        let kc = kube::config::Kubeconfig::read_from(&kubeconfig).expect("kubeconfig");
        let cfg = kube::Config::from_custom_kubeconfig(kc, &Default::default()).await.expect("kubeconfig valid");
        let client = kube::Client::try_from(cfg).unwrap();
        Self { emu, kubelet, replica_kubeconfig: kubeconfig, namespace, client }
    }

    /// The chart's ServiceAccount, Role (`files/role-rules.yaml`, minus `drop_rule` when
    /// given: index into the rules) and RoleBinding; the replicas then connect as that
    /// account. Emulator only: a real cluster is set up by `helm install`.
    fn install_rbac(&mut self, drop_rule: Option<usize>) {
        let Some(emu) = &self.emu else { return };
        let ns = &self.namespace;
        let mut rules = chart_role_rules();
        if let Some(i) = drop_rule {
            rules.remove(i);
        }
        let create = |api_version: &str, kind: &str, obj: serde_json::Value| {
            let rt = emu.resource(api_version, kind).expect("RBAC kinds are served");
            emu.store().create(&rt, ns, obj, &Default::default()).expect("RBAC object created");
        };
        create("v1", "ServiceAccount", json!({"metadata": {"name": SERVICE_ACCOUNT}}));
        create("rbac.authorization.k8s.io/v1", "Role", json!({"metadata": {"name": SERVICE_ACCOUNT}, "rules": rules}));
        create(
            "rbac.authorization.k8s.io/v1",
            "RoleBinding",
            json!({"metadata": {"name": SERVICE_ACCOUNT},
                "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": SERVICE_ACCOUNT},
                "subjects": [{"kind": "ServiceAccount", "name": SERVICE_ACCOUNT, "namespace": ns}]}),
        );
        self.replica_kubeconfig = emu.service_account_kubeconfig(ns, SERVICE_ACCOUNT).expect("kubeconfig");
    }

    /// What the Helm chart would install: the CRD, the internal-key Secret, and the
    /// job manager's Service (backed by the replicas running on this host).
    async fn install(&self, replicas: &[SocketAddr]) {
        let crd_yaml = std::fs::read_to_string(workspace_root().join("deploy/helm/job-manager/crds/jobrecords.yaml"))
            .expect("committed CRD");
        let crd: serde_json::Value = serde_saphyr::from_str(&crd_yaml).unwrap();
        let crds: Api<DynamicObject> = Api::all_with(
            self.client.clone(),
            &ApiResource::erase::<
                k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition,
            >(&()),
        );
        crds.patch(crd["metadata"]["name"].as_str().unwrap(), &PatchParams::apply("e2e").force(), &Patch::Apply(&crd))
            .await
            .expect("CRD applied");
        let secrets: Api<k8s_openapi::api::core::v1::Secret> = Api::namespaced(self.client.clone(), &self.namespace);
        let s = json!({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": INTERNAL_KEY_SECRET}, "stringData": {"internalApiKey": INTERNAL_KEY}});
        secrets
            .patch(INTERNAL_KEY_SECRET, &PatchParams::apply("e2e").force(), &Patch::Apply(&s))
            .await
            .expect("secret");
        let services: Api<k8s_openapi::api::core::v1::Service> = Api::namespaced(self.client.clone(), &self.namespace);
        let svc = json!({"apiVersion": "v1", "kind": "Service", "metadata": {"name": "job-manager"},
            "spec": {"ports": [{"name": "http", "port": 8080, "targetPort": 8080}]}});
        services.patch("job-manager", &PatchParams::apply("e2e").force(), &Patch::Apply(&svc)).await.expect("service");
        match &self.kubelet {
            Some(k) => k.set_external_endpoints(&self.namespace, "job-manager", replicas.to_vec()),
            None => self.real_cluster_endpoints(replicas).await,
        }
    }

    /// Real clusters: an EndpointSlice pointing the Service at this host.
    async fn real_cluster_endpoints(&self, replicas: &[SocketAddr]) {
        let host = std::env::var("E2E_HOST_IP").expect("E2E_HOST_IP: the host address pods can reach");
        let ar = ApiResource {
            group: "discovery.k8s.io".into(),
            version: "v1".into(),
            api_version: "discovery.k8s.io/v1".into(),
            kind: "EndpointSlice".into(),
            plural: "endpointslices".into(),
        };
        let api: Api<DynamicObject> = Api::namespaced_with(self.client.clone(), &self.namespace, &ar);
        for (i, r) in replicas.iter().enumerate() {
            let name = format!("job-manager-e2e-{i}");
            let slice = json!({"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
                "metadata": {"name": name, "labels": {"kubernetes.io/service-name": "job-manager"}},
                "addressType": "IPv4", "endpoints": [{"addresses": [host]}], "ports": [{"name": "http", "port": r.port()}]});
            api.patch(&name, &PatchParams::apply("e2e").force(), &Patch::Apply(&slice)).await.expect("endpointslice");
        }
    }
}

struct Replica {
    child: tokio::process::Child,
}

fn free_addr() -> SocketAddr {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap()
}

fn write_config(
    dir: &std::path::Path,
    cluster: &Cluster,
    broker: SocketAddr,
    listen: SocketAddr,
    persistent_endpoints: &BTreeMap<String, String>,
) -> PathBuf {
    let cfg = json!({
        "executor": "kubernetes",
        "namespace": cluster.namespace,
        "brokerApiEndpoint": format!("http://{broker}"),
        "locationKey": LOCATION_KEY,
        "internalApiKey": INTERNAL_KEY,
        "tokenSigningKey": "e2e-token-signing-key",
        "listen": listen.to_string(),
        "hostnameOverride": "job-manager",
        "checkTimeout": 30,
        "logFormat": "json",
        "poll": {"intervalMs": 100, "batchSize": 20},
        "runtimes": [
            // The chart's default image: the scripted API runtime (a QuickJS check per job).
            {"name": EPHEMERAL, "workload": "ephemeral", "parallelism": PARALLELISM,
             "image": {"repository": "newrelic/serverless-api-runtime", "tag": "latest"}},
            {"name": PERSISTENT, "workload": "persistent", "parallelism": 8, "replicas": {"min": 2, "max": 2},
             "image": {"repository": "newrelic/synthetics-node-browser-runtime-persistent", "tag": "latest"}},
        ],
        // Allow-list mode with an empty list: the sidecars reach the job manager only.
        "sidecar": {"image": {"repository": "newrelic/serverless-sidecar", "tag": "latest"}, "denyPrivate": true, "denyPublic": true},
        "kubernetes": {"internalApiKeySecretName": INTERNAL_KEY_SECRET, "persistentEndpoints": persistent_endpoints, "job": {"backoffLimit": 0, "ttlSecondsAfterFinished": 5}},
    });
    let path = dir.join(format!("job-manager-{}.yaml", listen.port()));
    std::fs::write(&path, serde_saphyr::to_string(&cfg).unwrap()).unwrap();
    path
}

async fn spawn_replica(cluster: &Cluster, config: &std::path::Path, addr: SocketAddr, log: PathBuf) -> Replica {
    let log = std::fs::File::create(log).unwrap();
    let child = tokio::process::Command::new(integration_tests::kubelet::binary_dir().join("job-manager"))
        .arg("--config")
        .arg(config)
        .env("KUBECONFIG", &cluster.replica_kubeconfig)
        .env("JM_EXECUTOR", "kubernetes")
        .env("RUST_LOG", "info")
        .stdout(log.try_clone().unwrap())
        .stderr(log)
        .kill_on_drop(true)
        .spawn()
        .expect("job-manager starts");
    // Readiness: the result API answers /healthz.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Ok(mut s) = tokio::net::TcpStream::connect(addr).await {
            use tokio::io::{AsyncReadExt, AsyncWriteExt};
            let _ = s.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").await;
            let mut buf = [0u8; 16];
            if s.read(&mut buf).await.is_ok_and(|n| buf[..n].starts_with(b"HTTP/1.1 200")) {
                break;
            }
        }
        assert!(Instant::now() < deadline, "job-manager on {addr} did not become healthy");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    Replica { child }
}

fn jobs(prefix: &str, runtime: &str, kind: WorkloadKind, n: usize) -> Vec<Job> {
    (0..n)
        .map(|i| Job {
            id: JobId::new(format!("{prefix}-{i:04}")).unwrap(),
            runtime_type: runtime.into(),
            workload_kind: kind,
            timeout_secs: 30,
            attempt: 1,
            payload: if runtime == EPHEMERAL {
                // What a user writes for the API runtime (no network: the sidecars here
                // reach nothing but the job manager).
                json!({"script": format!("const id = $env.JOB_ID;\nassert.strictEqual(id, '{prefix}-{i:04}');\nconsole.log('checked', id);")})
            } else {
                json!({"action": "sleep", "secs": 0})
            },
            signature: None,
        })
        .collect()
}

/// Poll -> pod running: from a job's first object (its record, written right after the
/// poll) to its pod reaching `Running`, from the emulator's event stream.
fn track_poll_to_running(emu: &Emulator) -> std::sync::Arc<std::sync::Mutex<Vec<Duration>>> {
    let out: std::sync::Arc<std::sync::Mutex<Vec<Duration>>> = Default::default();
    let sink = out.clone();
    let mut rx = emu.store().subscribe();
    tokio::spawn(async move {
        let mut first_seen: BTreeMap<String, Instant> = BTreeMap::new();
        let mut running: std::collections::BTreeSet<String> = Default::default();
        while let Ok(ev) = rx.recv().await {
            let obj = &ev.object;
            match ev.key.plural.as_str() {
                "jobrecords" => {
                    first_seen.entry(ev.key.name.clone()).or_insert_with(Instant::now);
                }
                "pods" if obj["status"]["phase"] == "Running" => {
                    let Some(job) = obj["metadata"]["labels"]["job-name"].as_str() else {
                        continue;
                    };
                    if running.insert(job.to_string()) {
                        if let Some(t) = first_seen.get(job) {
                            sink.lock().unwrap().push(t.elapsed());
                        }
                    }
                }
                _ => {}
            }
        }
    });
    out
}

/// What the cluster and the replicas look like, for failure messages.
fn diagnose(cluster: &Cluster, dir: &std::path::Path) -> String {
    let mut out = String::new();
    if let Some(emu) = &cluster.emu {
        for kind in [("apps/v1", "Deployment"), ("v1", "Service"), ("v1", "Pod"), ("batch/v1", "Job")] {
            for o in emu.objects(kind.0, kind.1, &cluster.namespace) {
                out.push_str(&format!("{} {} status={}\n", kind.1, o["metadata"]["name"], o["status"]));
            }
        }
        let errors: Vec<String> =
            emu.requests().iter().filter(|r| r.code >= 400).take(20).map(|r| format!("{r:?}")).collect();
        out.push_str(&format!("failed API requests (first 20): {errors:#?}\n"));
    }
    for i in 0..2 {
        let log = std::fs::read_to_string(dir.join(format!("replica-{i}.log"))).unwrap_or_default();
        let tail: Vec<&str> = log.lines().rev().take(15).collect();
        out.push_str(&format!("replica-{i} log tail:\n{}\n", tail.into_iter().rev().collect::<Vec<_>>().join("\n")));
    }
    out
}

/// Runs `n` jobs of one workload through two replicas, killing one mid-flight, with
/// API faults injected; asserts every job has exactly one result.
async fn run_workload(prefix: &str, runtime: &str, kind: WorkloadKind) {
    let n = job_count();
    let mut cluster = Cluster::start().await;
    cluster.install_rbac(None);
    let broker = EmbeddedBroker::new(EmbeddedOptions {
        visibility_timeout: Duration::from_secs(30),
        location_key: common::secret::Secret::new(LOCATION_KEY),
    });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let broker_addr = listener.local_addr().unwrap();
    let serving = broker.clone();
    tokio::spawn(async move { serving.serve(listener, std::future::pending()).await });
    let addrs = [free_addr(), free_addr()];
    cluster.install(&addrs).await;
    let dir = tempfile::Builder::new().prefix("e2e-").tempdir().unwrap();
    // Out of the cluster, the job manager reaches a persistent runtime's Service through
    // the kubelet's forwarder for it (in a cluster: the Service's DNS name).
    let mut persistent_endpoints = BTreeMap::new();
    if let Some(k) = &cluster.kubelet {
        let svc = job_manager::backend::kubernetes::labels::persistent_name(PERSISTENT);
        let addr = k.service_addr(&cluster.namespace, &svc, INGRESS_PORT).expect("forwarder");
        persistent_endpoints.insert(PERSISTENT.to_string(), format!("http://{addr}"));
    }
    let mut replicas = Vec::new();
    for (i, a) in addrs.iter().enumerate() {
        let cfg = write_config(dir.path(), &cluster, broker_addr, *a, &persistent_endpoints);
        replicas.push(spawn_replica(&cluster, &cfg, *a, dir.path().join(format!("replica-{i}.log"))).await);
    }
    if let Some(emu) = cluster.emu.as_ref().filter(|_| !calm()) {
        // Transient API trouble on the write path and on record updates.
        emu.faults()
            .add(FaultRule::new(Fault::TooManyRequests { retry_after_secs: 1 }).verb("create").probability(0.03));
        emu.faults().add(FaultRule::new(Fault::InternalError).verb("create").probability(0.03));
        emu.faults().add(FaultRule::new(Fault::Conflict).resource("jobrecords").probability(0.05));
    }
    let startup_requests = cluster.emu.as_ref().map(|e| e.requests()).unwrap_or_default();
    if let Some(emu) = &cluster.emu {
        emu.clear_requests();
    }
    let latencies = cluster.emu.as_ref().map(track_poll_to_running);
    let started = Instant::now();
    for j in jobs(prefix, runtime, kind, n) {
        broker.submit(j).unwrap();
    }
    // SIGKILL one replica once a third of the results are in.
    let third = broker.wait_for_results(n / 3, Duration::from_secs(120.max(n as u64))).await;
    if third.len() < n / 3 {
        eprintln!("{}", diagnose(&cluster, dir.path()));
    }
    assert!(third.len() >= n / 3, "only {} of {} results before the kill", third.len(), n);
    if !calm() {
        replicas[0].child.start_kill().unwrap();
        let _ = replicas[0].child.wait().await;
    }
    let results = broker.wait_for_results(n, Duration::from_secs(600.max(3 * n as u64))).await;
    let elapsed = started.elapsed();
    let logs = || std::fs::read_to_string(dir.path().join("replica-1.log")).unwrap_or_default();
    assert_eq!(
        results.len(),
        n,
        "lost jobs: {} of {n} results; replica log tail:\n{}",
        results.len(),
        logs().lines().rev().take(30).collect::<Vec<_>>().join("\n")
    );
    let counters = broker.all_counters();
    let mut outcomes: BTreeMap<String, usize> = BTreeMap::new();
    let mut not_succeeded = Vec::new();
    for (id, r) in &results {
        *outcomes.entry(format!("{:?}", r.outcome)).or_default() += 1;
        assert_eq!(counters[id].results_conflicting, 0, "{id}: two different results were submitted");
        if r.outcome != Outcome::Succeeded {
            not_succeeded.push(format!("{id}: {:?} {}", r.outcome, r.message));
        }
    }
    println!("{prefix}: outcomes {outcomes:?}; not succeeded: {not_succeeded:#?}");
    // Jobs in the killed replica's hands may end timed out (their deadline passes before
    // pruning sees them); never more than what one replica can hold, never lost.
    assert!(
        not_succeeded.len() <= PARALLELISM,
        "too many jobs did not succeed ({} of {n}): {not_succeeded:#?}",
        not_succeeded.len()
    );
    assert!(
        not_succeeded.iter().all(|l| l.contains("TimedOut")),
        "only the kill may cost jobs, and only as timeouts: {not_succeeded:#?}"
    );
    metric(&format!("{prefix}.jobs"), n);
    metric(&format!("{prefix}.jobs_per_sec"), format!("{:.1}", n as f64 / elapsed.as_secs_f64()));
    if let Some(emu) = &cluster.emu {
        let writes: Vec<_> = emu.requests().into_iter().filter(|r| r.is_write() && r.field_manager != "e2e").collect();
        let per_job = |count: usize| format!("{:.2}", count as f64 / n as f64);
        metric(&format!("{prefix}.api_writes_per_job"), per_job(writes.len()));
        // Without the writes the emulator refused (injected 429/500/409 and the retries'
        // AlreadyExists): what the job costs when the API server is healthy.
        let accepted = writes.iter().filter(|r| r.code < 300).count();
        metric(&format!("{prefix}.api_writes_per_job_accepted"), per_job(accepted));
        let mut by_kind: BTreeMap<String, usize> = BTreeMap::new();
        for w in &writes {
            let sub = if w.subresource.is_empty() { String::new() } else { format!("/{}", w.subresource) };
            *by_kind.entry(format!("{}{sub}:{}:{}", w.resource, w.verb, w.code)).or_default() += 1;
        }
        let breakdown: Vec<String> = by_kind.iter().map(|(k, v)| format!("{k}={v}")).collect();
        metric(&format!("{prefix}.api_writes_breakdown"), breakdown.join(","));
        metric(&format!("{prefix}.faults_injected"), emu.faults().injected());
    }
    if let Some(emu) = &cluster.emu {
        // The chart's Role was enough: the replicas ran as its account and were never
        // refused; what it grants that this run did not use is reported.
        let all: Vec<_> = startup_requests.iter().cloned().chain(emu.requests()).collect();
        let user = format!("system:serviceaccount:{}:{SERVICE_ACCOUNT}", cluster.namespace);
        let mine: Vec<_> = all.iter().filter(|r| r.user == user).collect();
        assert!(mine.len() > n, "the replicas did not authenticate as {user} ({} requests)", mine.len());
        let refused: Vec<_> = mine.iter().filter(|r| r.code == 403).collect();
        assert!(refused.is_empty(), "the chart's Role is not enough: {refused:#?}");
        let unused = unused_rights(&all, &user);
        metric(&format!("{prefix}.rbac_rights_unused"), unused.len());
        for right in unused {
            println!("E2E-RBAC-UNUSED {prefix} {right}");
        }
    }
    if let Some(l) = latencies {
        let mut l = l.lock().unwrap().clone();
        if !l.is_empty() {
            l.sort();
            let pct = |p: f64| l[((l.len() - 1) as f64 * p) as usize].as_millis();
            metric(&format!("{prefix}.poll_to_pod_running_ms_p50"), pct(0.5));
            metric(&format!("{prefix}.poll_to_pod_running_ms_p95"), pct(0.95));
        }
    }
    drop(replicas);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn e2e_ephemeral_jobs_survive_a_replica_kill_and_api_faults() {
    run_workload("eph", EPHEMERAL, WorkloadKind::Ephemeral).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn e2e_persistent_jobs_survive_a_replica_kill_and_api_faults() {
    run_workload("per", PERSISTENT, WorkloadKind::Persistent).await;
}

/// The rules of the chart's Role.
fn chart_role_rules() -> Vec<serde_json::Value> {
    let text = std::fs::read_to_string(workspace_root().join("deploy/helm/job-manager/files/role-rules.yaml"))
        .expect("the chart's role rules");
    serde_saphyr::from_str(&text).expect("role rules are YAML")
}

/// The rights (`group/resource[/sub]:verb`) the chart's Role grants that no request of
/// the job manager's account used.
fn unused_rights(requests: &[integration_tests::emulator::RequestRecord], user: &str) -> Vec<String> {
    let used: std::collections::BTreeSet<String> = requests
        .iter()
        .filter(|r| r.user == user)
        .map(|r| {
            let sub = if r.subresource.is_empty() { String::new() } else { format!("/{}", r.subresource) };
            format!("{}/{}{sub}:{}", r.group, r.resource, r.verb)
        })
        .collect();
    let mut unused = Vec::new();
    for rule in chart_role_rules() {
        let strs = |k: &str| -> Vec<String> {
            rule[k].as_array().into_iter().flatten().filter_map(|v| v.as_str().map(str::to_string)).collect()
        };
        for g in strs("apiGroups") {
            for r in strs("resources") {
                for v in strs("verbs") {
                    let right = format!("{g}/{r}:{v}");
                    if !used.contains(&right) {
                        unused.push(right);
                    }
                }
            }
        }
    }
    unused
}

/// `GET path` on a replica: (status code, body).
async fn http_get(addr: SocketAddr, path: &str) -> (u16, String) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let Ok(mut s) = tokio::net::TcpStream::connect(addr).await else {
        return (0, String::new());
    };
    let req = format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
    if s.write_all(req.as_bytes()).await.is_err() {
        return (0, String::new());
    }
    let mut raw = Vec::new();
    let _ = s.read_to_end(&mut raw).await;
    let text = String::from_utf8_lossy(&raw).into_owned();
    let code = text.get(9..12).and_then(|c| c.parse().ok()).unwrap_or(0);
    let body = text.split_once("\r\n\r\n").map(|(_, b)| b.to_string()).unwrap_or_default();
    (code, body)
}

/// Polls `GET path` until `done(status, body)` or `within` passes; the last answer.
async fn http_until(addr: SocketAddr, path: &str, within: Duration, done: impl Fn(u16, &str) -> bool) -> (u16, String) {
    let deadline = Instant::now() + within;
    loop {
        let (code, body) = http_get(addr, path).await;
        if done(code, &body) || Instant::now() > deadline {
            return (code, body);
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// The chart's Role minus its `batch/jobs` rule: the job manager cannot create a job's
/// Kubernetes Job. The API server's 403 (with the account and the missing right) is in
/// its log once, `/readyz` answers 503 naming the right and the metric says which
/// runtime type is refused: a removed rule is visible, not a job that silently does
/// nothing. The job goes back to the broker meanwhile; once the rule is restored (the
/// emulator authorises against the Roles as they are now), the job runs and the job
/// manager is ready again.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn e2e_a_role_missing_a_rule_is_named_by_readyz_until_the_rule_is_restored() {
    if std::env::var_os("E2E_KUBECONFIG").is_some() {
        eprintln!("SKIPPED on a real cluster: the Role there is the chart's, installed by Helm");
        return;
    }
    let mut cluster = Cluster::start().await;
    let batch_rule = chart_role_rules().iter().position(|r| r["apiGroups"] == json!(["batch"])).expect("a batch rule");
    cluster.install_rbac(Some(batch_rule));
    let broker = EmbeddedBroker::new(EmbeddedOptions {
        visibility_timeout: Duration::from_secs(30),
        location_key: common::secret::Secret::new(LOCATION_KEY),
    });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let broker_addr = listener.local_addr().unwrap();
    let serving = broker.clone();
    tokio::spawn(async move { serving.serve(listener, std::future::pending()).await });
    let addr = free_addr();
    cluster.install(&[addr]).await;
    let dir = tempfile::Builder::new().prefix("e2e-rbac-").tempdir().unwrap();
    let cfg = write_config(dir.path(), &cluster, broker_addr, addr, &BTreeMap::new());
    let log = dir.path().join("replica-0.log");
    let _replica = spawn_replica(&cluster, &cfg, addr, log.clone()).await;
    let (code, body) = http_get(addr, "/readyz").await;
    assert_eq!(code, 200, "ready before any hand-off: {body}");
    for j in jobs("rbac", EPHEMERAL, WorkloadKind::Ephemeral, 1) {
        broker.submit(j).unwrap();
    }
    let ns = cluster.namespace.clone();
    let said = format!(
        "jobs.batch is forbidden: User \"system:serviceaccount:{ns}:{SERVICE_ACCOUNT}\" cannot create resource \"jobs\" in API group \"batch\" in the namespace \"{ns}\""
    );
    let (code, body) = http_until(addr, "/readyz", Duration::from_secs(30), |c, _| c == 503).await;
    assert_eq!(code, 503, "/readyz did not turn unready: {body}");
    assert!(body.contains(&format!("hand-offs of {EPHEMERAL} are refused")), "{body}");
    assert!(body.contains(&format!("create jobs.batch in namespace \"{ns}\"")), "the missing right: {body}");
    assert!(body.contains(&said), "the API server's own words: {body}");
    println!("rbac: /readyz answered {code}: {}", body.trim());
    let (_, metrics) = http_get(addr, "/metrics").await;
    let refused_metric = format!("job_manager_handoffs_refused{{runtime=\"{EPHEMERAL}\"}} 1");
    assert!(
        metrics.contains(&refused_metric),
        "{}",
        metrics.lines().filter(|l| l.contains("refused")).collect::<Vec<_>>().join("\n")
    );

    // Several refused hand-offs later, the log still says it once.
    let emu = cluster.emu.as_ref().unwrap();
    let refusals = |emu: &Emulator| {
        emu.requests().into_iter().filter(|r| r.code == 403 && r.resource == "jobs" && r.verb == "create").count()
    };
    let deadline = Instant::now() + Duration::from_secs(20);
    while refusals(emu) < 3 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(refusals(emu) >= 3, "the job was not handed off again after its release");
    assert!(emu.objects("batch/v1", "Job", &ns).is_empty(), "a Job was created without the right to");
    let text = std::fs::read_to_string(&log).unwrap_or_default();
    let escaped = said.replace('"', "\\\"");
    let lines: Vec<&str> = text.lines().filter(|l| l.contains(&said) || l.contains(&escaped)).collect();
    assert_eq!(
        lines.len(),
        1,
        "the 403 is logged once, not per refused hand-off:\n{}",
        text.lines().rev().take(30).collect::<Vec<_>>().join("\n")
    );
    assert!(lines[0].contains("hand-offs refused"), "{}", lines[0]);
    println!("rbac: the job manager logged: {}", lines[0]);
    assert!(broker.wait_for_results(1, Duration::from_millis(100)).await.is_empty(), "no result while refused");

    // The rule is back: the job runs, and the job manager is ready again.
    let roles: Api<k8s_openapi::api::rbac::v1::Role> = Api::namespaced(cluster.client.clone(), &ns);
    let restored = json!({"rules": chart_role_rules()});
    roles.patch(SERVICE_ACCOUNT, &PatchParams::default(), &Patch::Merge(&restored)).await.expect("Role patched");
    let results = broker.wait_for_results(1, Duration::from_secs(60)).await;
    assert_eq!(results.len(), 1, "the job did not run once the rule was restored:\n{}", diagnose(&cluster, dir.path()));
    let result = results.values().next().unwrap();
    assert_eq!(result.outcome, Outcome::Succeeded, "{}", result.message);
    let (code, body) = http_until(addr, "/readyz", Duration::from_secs(30), |c, _| c == 200).await;
    assert_eq!(code, 200, "/readyz did not recover: {body}");
    let (_, metrics) = http_get(addr, "/metrics").await;
    assert!(metrics.contains(&format!("job_manager_handoffs_refused{{runtime=\"{EPHEMERAL}\"}} 0")), "{metrics}");
    println!("rbac: after the rule was restored: {:?} {}", result.outcome, result.message);
}
