//! The emulated node: a process kubelet (pods run as local processes — the real
//! `sidecar` and `test-runtime` binaries), the Job and Deployment controllers, and
//! Service networking through local forwarders. See [`pod`] for the pod lifecycle
//! and [`network`] for how pod addresses, Services and their names map onto loopback.
pub mod controllers;
pub mod network;
pub mod pod;

use crate::emulator::store::{meta_str, Store, StoreEvent};
use crate::emulator::{keep_if_failing, scratch_dir, Emulator};
use network::Network;
use pod::{PodCtx, Stop};
use serde_json::Value;
use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{watch, Notify};

#[derive(Clone, Debug)]
pub struct KubeletOptions {
    pub node_name: String,
    pub node_labels: BTreeMap<String, String>,
    /// Image -> binary: the first pattern contained in the image's repository wins.
    pub images: Vec<(String, PathBuf)>,
    /// Image -> default arguments (the image's `CMD`), used when the container sets
    /// neither `command` nor `args`; first pattern contained in the image wins.
    pub image_args: Vec<(String, Vec<String>)>,
    /// Pod directories (volumes, logs); default: a temp dir removed with the kubelet.
    pub work_dir: PathBuf,
    /// How often probes are polled (accelerated: the real period is seconds).
    pub probe_period: Duration,
    /// How often controllers re-check every object (deadlines, TTLs) besides events.
    pub resync: Duration,
    /// Keep pod directories (logs) after pods go, for debugging.
    pub keep_pod_dirs: bool,
}

impl KubeletOptions {
    /// Options with no image mapping (every image fails to pull).
    pub fn without_binaries() -> Self {
        Self {
            node_name: "emulator-node".into(),
            node_labels: BTreeMap::from([
                ("kubernetes.io/hostname".to_string(), "emulator-node".to_string()),
                ("kubernetes.io/os".to_string(), "linux".to_string()),
                (
                    "kubernetes.io/arch".to_string(),
                    std::env::consts::ARCH.replace("x86_64", "amd64").replace("aarch64", "arm64"),
                ),
            ]),
            images: vec![],
            image_args: vec![],
            work_dir: PathBuf::new(),
            probe_period: Duration::from_millis(100),
            resync: Duration::from_millis(200),
            keep_pod_dirs: false,
        }
    }
}

impl Default for KubeletOptions {
    /// Images containing `job-manager` run `target/debug/job-manager`, `sidecar`
    /// `target/debug/sidecar`; `serverless-api-runtime` (the chart's `node-api-runtime`
    /// image) runs `target/debug/api-runtime`, `serverless-browser-runtime` (its
    /// `node-browser-runtime` image) `target/debug/browser-runtime`;
    /// `test-runtime`, `node-api-runtime` and `node-browser-runtime` (the upstream images'
    /// names) run `target/debug/test-runtime`.
    fn default() -> Self {
        let debug = binary_dir();
        Self {
            images: vec![
                ("job-manager".into(), debug.join("job-manager")),
                ("sidecar".into(), debug.join("sidecar")),
                ("serverless-api-runtime".into(), debug.join("api-runtime")),
                ("serverless-browser-runtime".into(), debug.join("browser-runtime")),
                ("test-runtime".into(), debug.join("test-runtime")),
                ("node-api-runtime".into(), debug.join("test-runtime")),
                ("node-browser-runtime".into(), debug.join("test-runtime")),
            ],
            ..Self::without_binaries()
        }
    }
}

/// Where the workspace's binaries are, found from the running executable (tests run
/// from `target/debug/deps`, binaries from `target/debug`), so a test uses the
/// binaries of the build it belongs to; falls back to [`crate::bins::target_dir`].
pub fn binary_dir() -> PathBuf {
    if let Ok(exe) = std::env::current_exe() {
        if let Some(dir) = exe.parent() {
            let dir = if dir.file_name().is_some_and(|n| n == "deps") { dir.parent().unwrap_or(dir) } else { dir };
            if dir.join("sidecar").is_file() || dir.join("job-manager").is_file() {
                return dir.to_path_buf();
            }
        }
    }
    crate::bins::target_dir().join("debug")
}

/// A running node + controllers. Dropping it kills every pod process.
pub struct Kubelet {
    store: Arc<Store>,
    net: Arc<Network>,
    work_dir: PathBuf,
    tasks: Vec<tokio::task::JoinHandle<()>>,
    pods: Arc<std::sync::Mutex<HashMap<String, watch::Sender<Stop>>>>,
    temp: Option<tempfile::TempDir>,
}

impl Kubelet {
    pub fn start(emu: &Emulator, opts: KubeletOptions) -> Self {
        let store = emu.store().clone();
        store.set_graceful_pods(true);
        let mut opts = opts;
        let temp = if opts.work_dir.as_os_str().is_empty() {
            let t = scratch_dir("kubelet").expect("temp dir for pods");
            opts.work_dir = t.path().to_path_buf();
            Some(t)
        } else {
            let _ = std::fs::create_dir_all(&opts.work_dir);
            None
        };
        store.set_pod_log_dir(opts.work_dir.clone());
        // Snapshot the binaries (hard links): a concurrent `cargo build` replacing
        // target/debug/* then cannot make images vanish mid-test.
        let bin_dir = opts.work_dir.join("bin");
        let _ = std::fs::create_dir_all(&bin_dir);
        for (i, (_, path)) in opts.images.iter_mut().enumerate() {
            let Some(name) = path.file_name() else {
                continue;
            };
            let snap = bin_dir.join(format!("{i}-{}", name.to_string_lossy()));
            if std::fs::hard_link(&*path, &snap).is_ok() || std::fs::copy(&*path, &snap).is_ok() {
                *path = snap;
            }
        }
        let net = Arc::new(Network::new(&opts.work_dir));
        let ctx = Arc::new(PodCtx {
            store: store.clone(),
            net: net.clone(),
            opts: Arc::new(opts.clone()),
            api_url: emu.url(),
            mount_ns: pod::mount_namespace_args(net.hosts_file()),
        });
        let pods: Arc<std::sync::Mutex<HashMap<String, watch::Sender<Stop>>>> = Default::default();
        // One permit-keeping Notify per loop: a change during a pass is never missed.
        let (wake_ctl, wake_pods) = (Arc::new(Notify::new()), Arc::new(Notify::new()));
        let mut tasks = Vec::new();
        // Event pump: wakes the loops below on every change.
        {
            let mut rx = store.subscribe();
            let (wake_ctl, wake_pods) = (wake_ctl.clone(), wake_pods.clone());
            tasks.push(tokio::spawn(async move {
                loop {
                    match rx.recv().await {
                        Ok(_) | Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => {
                            wake_ctl.notify_one();
                            wake_pods.notify_one();
                        }
                        Err(_) => return,
                    }
                }
            }));
        }
        // Controllers.
        {
            let store = store.clone();
            let net = net.clone();
            let wake = wake_ctl.clone();
            let resync = opts.resync;
            tasks.push(tokio::spawn(async move {
                loop {
                    controllers::reconcile_all(&store);
                    net.sync_services(&store);
                    // At most one pass per 20ms however busy the API is.
                    tokio::time::sleep(Duration::from_millis(20)).await;
                    tokio::select! {
                        _ = wake.notified() => {}
                        _ = tokio::time::sleep(resync) => {}
                    }
                }
            }));
        }
        // Pod dispatcher: one worker per pod uid.
        {
            let store = store.clone();
            let wake = wake_pods.clone();
            let pods = pods.clone();
            let resync = opts.resync;
            tasks.push(tokio::spawn(async move {
                loop {
                    dispatch(&store, &ctx, &pods);
                    // At most one pass per 20ms however busy the API is.
                    tokio::time::sleep(Duration::from_millis(20)).await;
                    tokio::select! {
                        _ = wake.notified() => {}
                        _ = tokio::time::sleep(resync) => {}
                    }
                }
            }));
        }
        Self { store, net, work_dir: opts.work_dir, tasks, pods, temp }
    }

    /// The loopback address of a Service port (`<the Service's address>:<port>`; its
    /// forwarder starts on first use).
    pub fn service_addr(&self, namespace: &str, service: &str, port: u16) -> Option<SocketAddr> {
        self.net.service_addr(&self.store, namespace, service, port)
    }

    /// Backends for a Service whose endpoints live outside the emulator.
    pub fn set_external_endpoints(&self, namespace: &str, service: &str, addrs: Vec<SocketAddr>) {
        self.net.set_external_endpoints(namespace, service, addrs);
    }

    /// Where a running pod's port is reached (its own loopback address).
    pub fn pod_addr(&self, namespace: &str, pod: &str, port: u16) -> Option<SocketAddr> {
        Some(SocketAddr::from((self.net.pod(namespace, pod)?.ip, port)))
    }

    /// The hosts file pods see as `/etc/hosts` (the host's entries and every Service).
    pub fn hosts_file(&self) -> &std::path::Path {
        self.net.hosts_file()
    }

    /// The directory standing in for PersistentVolumeClaim `claim` (shared by every pod
    /// that mounts it; write files here to have them on the volume).
    pub fn claim_dir(&self, namespace: &str, claim: &str) -> PathBuf {
        pod::claim_dir(&self.work_dir, namespace, claim)
    }

    /// Where a container's stdout+stderr go.
    pub fn log_path(&self, namespace: &str, pod: &Value, container: &str) -> PathBuf {
        self.work_dir
            .join(format!("{namespace}_{}_{}", meta_str(pod, "name"), meta_str(pod, "uid")))
            .join("logs")
            .join(format!("{container}.log"))
    }

    /// Pods with a running worker.
    pub fn running_pods(&self) -> usize {
        self.pods.lock().unwrap_or_else(|e| e.into_inner()).len()
    }
}

impl Drop for Kubelet {
    fn drop(&mut self) {
        for (_, tx) in self.pods.lock().unwrap_or_else(|e| e.into_inner()).drain() {
            let _ = tx.send(Stop::Gone);
        }
        for t in &self.tasks {
            t.abort();
        }
        self.store.set_graceful_pods(false);
        if let Some(temp) = &mut self.temp {
            keep_if_failing(temp);
        }
    }
}

fn dispatch(store: &Arc<Store>, ctx: &Arc<PodCtx>, pods: &Arc<std::sync::Mutex<HashMap<String, watch::Sender<Stop>>>>) {
    let current = store.all("", "pods");
    let mut workers = pods.lock().unwrap_or_else(|e| e.into_inner());
    let mut seen = std::collections::HashSet::new();
    for p in &current {
        let uid = meta_str(p, "uid").to_string();
        seen.insert(uid.clone());
        let deleting = p["metadata"].get("deletionTimestamp").is_some();
        match workers.get(&uid) {
            Some(tx) => {
                if deleting && *tx.borrow() == Stop::Run {
                    let grace = p["metadata"]["deletionGracePeriodSeconds"].as_u64().unwrap_or(30);
                    let _ = tx.send(Stop::Terminate(Duration::from_secs(grace)));
                }
            }
            None if deleting => {}
            None => {
                let terminal = matches!(p["status"]["phase"].as_str(), Some("Succeeded") | Some("Failed"));
                if terminal {
                    continue;
                }
                let (tx, rx) = watch::channel(Stop::Run);
                workers.insert(uid, tx);
                tokio::spawn(pod::run(ctx.clone(), (**p).clone(), rx));
            }
        }
    }
    // Objects that disappeared: stop their processes at once.
    workers.retain(|uid, tx| {
        if seen.contains(uid) {
            true
        } else {
            let _ = tx.send(Stop::Gone);
            false
        }
    });
}

#[allow(dead_code)]
fn _event_type_check(_: &StoreEvent) {}
