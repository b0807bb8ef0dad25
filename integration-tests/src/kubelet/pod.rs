//! One pod as local processes. Order follows the kubelet: schedule (nodeSelector),
//! volumes, init containers one by one (a native sidecar — an init container with
//! `restartPolicy: Always` — is started and its startupProbe polled until it passes
//! before the next one starts), then all main containers; when the main containers
//! are done the sidecars get SIGTERM, and the pod's phase is derived from the main
//! containers' exit codes. Deletion sends SIGTERM, waits the grace period, SIGKILLs.
use super::network::{self, Network, PodNet};
use super::KubeletOptions;
use crate::emulator::store::{meta_str, DeleteOptions, Store, WriteOptions};
use crate::emulator::time;
use base64::Engine as _;
use serde_json::{json, Value};
use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::process::Child;
use tokio::sync::{mpsc, watch};

/// Set on a pod to have the kubelet kill that container as if the kernel's OOM
/// killer had (exit 137, reason `OOMKilled`).
pub const OOM_KILL_ANNOTATION: &str = "emulator.kube/oom-kill";
pub const KUBELET: &str = "kubelet";

/// What the dispatcher tells a pod worker.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Stop {
    Run,
    /// Graceful deletion with this grace period.
    Terminate(Duration),
    /// The object is gone: kill at once, write nothing.
    Gone,
}

pub struct PodCtx {
    pub store: Arc<Store>,
    pub net: Arc<Network>,
    pub opts: Arc<KubeletOptions>,
}

#[derive(Debug)]
struct Launch {
    name: String,
    binary: PathBuf,
    args: Vec<String>,
    env: Vec<(String, String)>,
    log: PathBuf,
    oom: bool,
}

#[derive(Debug)]
enum CEvent {
    Started(usize),
    Exited { idx: usize, code: i32, reason: &'static str, finished: bool },
}

#[derive(Clone, Debug, Default)]
struct CStatus {
    name: String,
    image: String,
    state: Value,
    last_state: Value,
    ready: bool,
    started: bool,
    restarts: u32,
    done: bool,
}

impl CStatus {
    fn waiting(name: &str, image: &str, reason: &str, message: &str) -> Self {
        let mut state = json!({"waiting": {"reason": reason}});
        if !message.is_empty() {
            state["waiting"]["message"] = json!(message);
        }
        Self { name: name.into(), image: image.into(), state, last_state: json!({}), ..Default::default() }
    }
    fn render(&self) -> Value {
        json!({"name": self.name, "image": self.image, "imageID": format!("emulator://{}", self.image), "ready": self.ready,
            "started": self.started, "restartCount": self.restarts, "state": self.state, "lastState": self.last_state})
    }
}

fn status_pods(ctx: &PodCtx) -> Option<crate::emulator::resources::ResourceType> {
    ctx.store.find_kind("v1", "Pod")
}

/// Replaces the pod's status (the kubelet is its only writer). `false` once the pod is gone.
fn write_status(ctx: &PodCtx, ns: &str, name: &str, f: impl FnOnce(&mut Value)) -> bool {
    let Some(rt) = status_pods(ctx) else {
        return false;
    };
    let Ok(mut pod) = ctx.store.get(&rt, ns, name) else {
        return false;
    };
    f(&mut pod["status"]);
    pod["metadata"].as_object_mut().map(|m| m.remove("resourceVersion"));
    let w = WriteOptions { field_manager: KUBELET.into(), ..Default::default() };
    ctx.store.replace(&rt, ns, name, pod, Some("status"), &w).is_ok()
}

fn cond(ty: &str, ok: bool) -> Value {
    json!({"type": ty, "status": if ok { "True" } else { "False" }, "lastProbeTime": null, "lastTransitionTime": time::now()})
}

fn node_selector_matches(pod: &Value, node_labels: &BTreeMap<String, String>) -> bool {
    pod["spec"]["nodeSelector"]
        .as_object()
        .is_none_or(|m| m.iter().all(|(k, v)| node_labels.get(k).map(String::as_str) == v.as_str()))
}

pub fn image_binary(opts: &KubeletOptions, image: &str) -> Option<PathBuf> {
    let repo = image.split('@').next().unwrap_or(image);
    let repo = match repo.rsplit_once(':') {
        Some((r, tag)) if !tag.contains('/') => r,
        _ => repo,
    };
    opts.images.iter().find(|(pat, _)| repo.contains(pat.as_str())).map(|(_, p)| p.clone())
}

/// The image's default arguments when the container sets neither command nor args.
fn image_default_args(opts: &KubeletOptions, c: &Value) -> Vec<String> {
    let unset = |k: &str| c[k].as_array().is_none_or(Vec::is_empty);
    if !(unset("command") && unset("args")) {
        return vec![];
    }
    let image = c["image"].as_str().unwrap_or_default();
    opts.image_args.iter().find(|(pat, _)| image.contains(pat.as_str())).map(|(_, a)| a.clone()).unwrap_or_default()
}

/// `$(VAR)` expansion as the kubelet does for env values, command and args.
pub fn expand(s: &str, vars: &HashMap<String, String>) -> String {
    let mut out = String::new();
    let mut rest = s;
    while let Some(i) = rest.find("$(") {
        out.push_str(&rest[..i]);
        let after = &rest[i + 2..];
        match after.find(')') {
            Some(j) if vars.contains_key(&after[..j]) => {
                out.push_str(&vars[&after[..j]]);
                rest = &after[j + 1..];
            }
            _ => {
                out.push_str("$(");
                rest = after;
            }
        }
    }
    out.push_str(rest);
    out
}

/// A value that mentions a mount path is rewritten to the directory materialised for
/// that mount (processes cannot see the pod's filesystem layout).
pub fn map_mounts(s: &str, mounts: &[(String, PathBuf)]) -> String {
    for (mount, dir) in mounts {
        if s == mount {
            return dir.display().to_string();
        }
        if let Some(rest) = s.strip_prefix(&format!("{mount}/")) {
            return dir.join(rest).display().to_string();
        }
    }
    s.to_string()
}

struct Prepared {
    launches: Vec<(Launch, bool, Value)>, // (launch, is_sidecar_or_main flag, container spec)
    net: PodNet,
}

pub async fn run(ctx: Arc<PodCtx>, pod: Value, mut stop: watch::Receiver<Stop>) {
    let ns = meta_str(&pod, "namespace").to_string();
    let name = meta_str(&pod, "name").to_string();
    let uid = meta_str(&pod, "uid").to_string();
    let Some(pod_rt) = status_pods(&ctx) else {
        return;
    };
    if !node_selector_matches(&pod, &ctx.opts.node_labels) {
        write_status(&ctx, &ns, &name, |s| {
            let mut c = cond("PodScheduled", false);
            c["reason"] = json!("Unschedulable");
            c["message"] = json!("0/1 nodes are available: 1 node(s) didn't match Pod's node affinity/selector. preemption: 0/1 nodes are available: 1 Preemption is not helpful for scheduling.");
            s["conditions"] = json!([c]);
        });
        until_stopped(&mut stop).await;
        return;
    }
    let w = WriteOptions { field_manager: "kube-scheduler".into(), ..Default::default() };
    if ctx
        .store
        .patch(
            &pod_rt,
            &ns,
            &name,
            crate::emulator::patch::PatchType::Merge,
            &json!({"spec": {"nodeName": ctx.opts.node_name}}),
            None,
            &w,
        )
        .is_err()
    {
        return;
    }
    let dir = ctx.opts.work_dir.join(format!("{ns}_{name}_{uid}"));
    let _ = std::fs::create_dir_all(dir.join("logs"));
    let init_specs: Vec<Value> = pod["spec"]["initContainers"].as_array().cloned().unwrap_or_default();
    let main_specs: Vec<Value> = pod["spec"]["containers"].as_array().cloned().unwrap_or_default();
    let mut init_st: Vec<CStatus> = init_specs
        .iter()
        .map(|c| {
            CStatus::waiting(
                c["name"].as_str().unwrap_or_default(),
                c["image"].as_str().unwrap_or_default(),
                "PodInitializing",
                "",
            )
        })
        .collect();
    let mut main_st: Vec<CStatus> = main_specs
        .iter()
        .map(|c| {
            CStatus::waiting(
                c["name"].as_str().unwrap_or_default(),
                c["image"].as_str().unwrap_or_default(),
                "ContainerCreating",
                "",
            )
        })
        .collect();
    let started_at = time::now();
    let publish = |ctx: &PodCtx, init: &[CStatus], main: &[CStatus], phase: &str, extra: Option<(&str, &str)>| {
        let initialized =
            init.iter().zip(&init_specs).all(
                |(s, spec)| {
                    if spec["restartPolicy"] == "Always" {
                        s.started
                    } else {
                        s.done
                    }
                },
            );
        let ready = initialized && !main.is_empty() && main.iter().all(|s| s.ready);
        write_status(ctx, &ns, &name, |s| {
            s["phase"] = json!(phase);
            s["hostIP"] = json!("127.0.0.1");
            s["hostIPs"] = json!([{"ip": "127.0.0.1"}]);
            s["podIP"] = json!("127.0.0.1");
            s["podIPs"] = json!([{"ip": "127.0.0.1"}]);
            s["startTime"] = json!(started_at);
            s["conditions"] = json!([
                cond("PodReadyToStartContainers", true),
                cond("Initialized", initialized),
                cond("Ready", ready),
                cond("ContainersReady", ready),
                cond("PodScheduled", true)
            ]);
            if !init.is_empty() {
                s["initContainerStatuses"] = json!(init.iter().map(CStatus::render).collect::<Vec<_>>());
            }
            s["containerStatuses"] = json!(main.iter().map(CStatus::render).collect::<Vec<_>>());
            if let Some((reason, message)) = extra {
                s["reason"] = json!(reason);
                s["message"] = json!(message);
            }
        })
    };
    publish(&ctx, &init_st, &main_st, "Pending", None);

    // Volumes, images and env: retried (as the kubelet does) until they resolve.
    let prepared = loop {
        match prepare(&ctx, &pod, &dir) {
            Ok(p) => break p,
            Err((idx, reason, message)) => {
                let st = if idx < init_st.len() { &mut init_st[idx] } else { &mut main_st[idx - init_st.len()] };
                *st = CStatus::waiting(&st.name.clone(), &st.image.clone(), reason, &message);
                if reason == "ErrImagePull" {
                    publish(&ctx, &init_st, &main_st, "Pending", None);
                    st_backoff(&mut init_st, &mut main_st, idx);
                }
                publish(&ctx, &init_st, &main_st, "Pending", None);
                let stopped_now = tokio::select! {
                    _ = tokio::time::sleep(Duration::from_millis(500)) => None,
                    s = until_stopped(&mut stop) => Some(s),
                };
                if let Some(s) = stopped_now {
                    finish(&ctx, &ns, &name, &dir, s).await;
                    return;
                }
            }
        }
    };
    let mut pod_net = prepared.net.clone();
    pod_net.labels = crate::emulator::selectors::labels_of(&pod);
    ctx.net.set_pod(&ns, &name, pod_net.clone());

    let restart_policy = pod["spec"]["restartPolicy"].as_str().unwrap_or("Always").to_string();
    let (tx, mut rx) = mpsc::channel::<CEvent>(64);
    let mut kills: Vec<watch::Sender<Option<Duration>>> = Vec::new();
    let mut tasks = Vec::new();
    let n_init = init_specs.len();
    let deadline = pod["spec"]["activeDeadlineSeconds"].as_u64().map(|d| Instant::now() + Duration::from_secs(d));
    let mut launches = prepared.launches.into_iter();
    let mut spawn_container =
        |idx: usize, launch: Launch, policy: &str, kills: &mut Vec<watch::Sender<Option<Duration>>>| {
            let (ktx, krx) = watch::channel(None);
            kills.push(ktx);
            tasks.push(tokio::spawn(container_loop(idx, Arc::new(launch), policy.to_string(), tx.clone(), krx)));
        };
    // Init containers in order.
    let mut stopped: Option<Stop> = None;
    for (i, spec) in init_specs.iter().enumerate() {
        let (launch, _, _) = launches.next().expect("one launch per container");
        let sidecar = spec["restartPolicy"] == "Always";
        let policy = if sidecar {
            "Always".to_string()
        } else if restart_policy == "Never" {
            "Never".into()
        } else {
            "OnFailure".into()
        };
        spawn_container(i, launch, &policy, &mut kills);
        // Wait for the sidecar's startup probe, or the init container's success.
        let probe = spec.get("startupProbe").or_else(|| spec.get("readinessProbe")).cloned();
        let mut probe_ok = probe.is_none();
        let mut next_probe = Instant::now();
        loop {
            if sidecar && init_st[i].started && probe_ok {
                init_st[i].ready = true;
                publish(&ctx, &init_st, &main_st, "Pending", None);
                break;
            }
            let tick = tokio::time::sleep_until(tokio::time::Instant::from_std(next_probe));
            tokio::select! {
                ev = rx.recv() => {
                    let Some(ev) = ev else { break };
                    apply_event(&mut init_st, &mut main_st, n_init, ev);
                    publish(&ctx, &init_st, &main_st, "Pending", None);
                    if !sidecar && init_st[i].done {
                        break;
                    }
                }
                _ = tick, if sidecar && init_st[i].started && !probe_ok => {
                    probe_ok = probe_passes(probe.as_ref().expect("checked"), &pod_net).await;
                    next_probe = Instant::now() + ctx.opts.probe_period;
                }
                s = until_stopped(&mut stop) => { stopped = Some(s); break; }
            }
        }
        if stopped.is_some() {
            break;
        }
        if !sidecar && exit_code(&init_st[i]) != Some(0) {
            // A failed init container fails the pod (restartPolicy Never).
            publish(&ctx, &init_st, &main_st, "Failed", None);
            terminate_all(&kills, Duration::from_secs(1), &mut rx, &mut init_st, &mut main_st, n_init).await;
            ctx.net.remove_pod(&ns, &name);
            let s = until_stopped(&mut stop).await;
            finish(&ctx, &ns, &name, &dir, s).await;
            return;
        }
    }
    if let Some(s) = stopped {
        terminate_all(&kills, grace_of(s), &mut rx, &mut init_st, &mut main_st, n_init).await;
        finish(&ctx, &ns, &name, &dir, s).await;
        return;
    }
    // Main containers, all at once.
    let main_policy = restart_policy.clone();
    for (j, _) in main_specs.iter().enumerate() {
        let (launch, _, _) = launches.next().expect("one launch per container");
        spawn_container(n_init + j, launch, &main_policy, &mut kills);
    }
    let readiness: Vec<Option<Value>> =
        main_specs.iter().map(|c| c.get("readinessProbe").or_else(|| c.get("startupProbe")).cloned()).collect();
    let mut probe_ok: Vec<bool> = readiness.iter().map(Option::is_none).collect();
    let mut ticker = tokio::time::interval(ctx.opts.probe_period);
    let mut failure: Option<(&str, &str)> = None;
    loop {
        let all_done = main_st.iter().all(|s| s.done);
        if all_done {
            break;
        }
        let until_deadline =
            deadline.map(|d| d.saturating_duration_since(Instant::now())).unwrap_or(Duration::from_secs(86_400));
        tokio::select! {
            ev = rx.recv() => {
                let Some(ev) = ev else { break };
                apply_event(&mut init_st, &mut main_st, n_init, ev);
                for (j, st) in main_st.iter_mut().enumerate() {
                    st.ready = st.started && st.state.get("running").is_some() && probe_ok[j];
                }
                ctx.net.set_ready(&ns, &name, main_st.iter().all(|s| s.ready));
                publish(&ctx, &init_st, &main_st, "Running", None);
            }
            _ = ticker.tick(), if probe_ok.iter().any(|ok| !ok) => {
                for j in 0..main_st.len() {
                    if !probe_ok[j] && main_st[j].started {
                        probe_ok[j] = probe_passes(readiness[j].as_ref().expect("pending probes exist"), &pod_net).await;
                        if probe_ok[j] {
                            main_st[j].ready = main_st[j].state.get("running").is_some();
                            ctx.net.set_ready(&ns, &name, main_st.iter().all(|s| s.ready));
                            publish(&ctx, &init_st, &main_st, "Running", None);
                        }
                    }
                }
            }
            _ = tokio::time::sleep(until_deadline) => {
                failure = Some(("DeadlineExceeded", "Pod was active on the node longer than the specified deadline"));
                break;
            }
            s = until_stopped(&mut stop) => { stopped = Some(s); break; }
        }
    }
    ctx.net.set_ready(&ns, &name, false);
    let grace = stopped
        .map(grace_of)
        .unwrap_or_else(|| Duration::from_secs(pod["spec"]["terminationGracePeriodSeconds"].as_u64().unwrap_or(30)));
    // Main containers first, then the sidecars in reverse order.
    for k in kills.iter().skip(n_init) {
        let _ = k.send(Some(grace));
    }
    drain(&mut rx, &mut init_st, &mut main_st, n_init, |i, m| m.iter().all(|s| s.done) && i.len() == n_init).await;
    for k in kills.iter().take(n_init).rev() {
        let _ = k.send(Some(grace));
    }
    drain(&mut rx, &mut init_st, &mut main_st, n_init, |i, _| i.iter().all(|s| s.done || !s.started)).await;
    for t in tasks {
        let _ = t.await;
    }
    ctx.net.remove_pod(&ns, &name);
    if let Some(s) = stopped {
        finish(&ctx, &ns, &name, &dir, s).await;
        return;
    }
    let phase =
        if failure.is_none() && main_st.iter().all(|s| exit_code(s) == Some(0)) { "Succeeded" } else { "Failed" };
    for s in init_st.iter_mut().chain(main_st.iter_mut()) {
        s.ready = false;
    }
    publish(&ctx, &init_st, &main_st, phase, failure);
    let s = until_stopped(&mut stop).await;
    finish(&ctx, &ns, &name, &dir, s).await;
}

/// Waits until the dispatcher asks the pod to stop (no borrow held across awaits).
async fn until_stopped(stop: &mut watch::Receiver<Stop>) -> Stop {
    loop {
        let s = *stop.borrow_and_update();
        if s != Stop::Run {
            return s;
        }
        if stop.changed().await.is_err() {
            return Stop::Gone;
        }
    }
}

fn st_backoff(init: &mut [CStatus], main: &mut [CStatus], idx: usize) {
    let n = init.len();
    let st = if idx < n { &mut init[idx] } else { &mut main[idx - n] };
    st.state["waiting"]["reason"] = json!("ImagePullBackOff");
    let msg = format!("Back-off pulling image {:?}", st.image);
    st.state["waiting"]["message"] = json!(msg);
}

fn grace_of(s: Stop) -> Duration {
    match s {
        Stop::Terminate(g) => g,
        _ => Duration::ZERO,
    }
}

fn exit_code(s: &CStatus) -> Option<i64> {
    s.state.pointer("/terminated/exitCode").and_then(Value::as_i64)
}

fn apply_event(init: &mut [CStatus], main: &mut [CStatus], n_init: usize, ev: CEvent) {
    let idx = match ev {
        CEvent::Started(i) | CEvent::Exited { idx: i, .. } => i,
    };
    let st = if idx < n_init { &mut init[idx] } else { &mut main[idx - n_init] };
    match ev {
        CEvent::Started(_) => {
            if st.state.get("terminated").is_some() {
                st.last_state = st.state.clone();
                st.restarts += 1;
            }
            st.state = json!({"running": {"startedAt": time::now()}});
            st.started = true;
        }
        CEvent::Exited { code, reason, finished, .. } => {
            st.state = json!({"terminated": {"exitCode": code, "reason": reason, "startedAt": st.state.pointer("/running/startedAt").cloned().unwrap_or(json!(time::now())), "finishedAt": time::now()}});
            st.ready = false;
            st.started = false;
            st.done = finished;
        }
    }
}

async fn drain(
    rx: &mut mpsc::Receiver<CEvent>,
    init: &mut [CStatus],
    main: &mut [CStatus],
    n_init: usize,
    done: impl Fn(&[CStatus], &[CStatus]) -> bool,
) {
    while !done(init, main) {
        match tokio::time::timeout(Duration::from_secs(120), rx.recv()).await {
            Ok(Some(ev)) => apply_event(init, main, n_init, ev),
            _ => return,
        }
    }
}

async fn terminate_all(
    kills: &[watch::Sender<Option<Duration>>],
    grace: Duration,
    rx: &mut mpsc::Receiver<CEvent>,
    init: &mut [CStatus],
    main: &mut [CStatus],
    n_init: usize,
) {
    for k in kills.iter().rev() {
        let _ = k.send(Some(grace));
    }
    drain(rx, init, main, n_init, |i, m| i.iter().chain(m.iter()).all(|s| s.done || !s.started)).await;
}

/// After the processes are gone: drop the pod object (graceful deletion completes)
/// and the pod's files.
async fn finish(ctx: &PodCtx, ns: &str, name: &str, dir: &Path, stop: Stop) {
    ctx.net.remove_pod(ns, name);
    if let (Stop::Terminate(_), Some(rt)) = (stop, status_pods(ctx)) {
        let o = DeleteOptions { grace_period_seconds: Some(0), ..Default::default() };
        let _ = ctx.store.delete(&rt, ns, name, &o);
    }
    if !ctx.opts.keep_pod_dirs {
        let _ = tokio::fs::remove_dir_all(dir).await;
    }
}

async fn probe_passes(probe: &Value, net: &PodNet) -> bool {
    if let Some(get) = probe.get("httpGet") {
        let Some(port) = net.resolve(&get["port"]) else {
            return false;
        };
        let path = get["path"].as_str().unwrap_or("/");
        return http_get_ok(port, path).await;
    }
    if let Some(tcp) = probe.get("tcpSocket") {
        let Some(port) = net.resolve(&tcp["port"]) else {
            return false;
        };
        return tokio::net::TcpStream::connect(("127.0.0.1", port)).await.is_ok();
    }
    // exec/grpc probes are not emulated: treated as passing.
    true
}

async fn http_get_ok(port: u16, path: &str) -> bool {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let attempt = async {
        let mut s = tokio::net::TcpStream::connect(("127.0.0.1", port)).await.ok()?;
        s.write_all(format!("GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nUser-Agent: kube-probe/1.33\r\nConnection: close\r\n\r\n").as_bytes()).await.ok()?;
        let mut buf = [0u8; 32];
        let n = s.read(&mut buf).await.ok()?;
        let line = String::from_utf8_lossy(&buf[..n]).to_string();
        let code: u16 = line.split_whitespace().nth(1)?.parse().ok()?;
        Some((200..400).contains(&code))
    };
    tokio::time::timeout(Duration::from_secs(1), attempt).await.ok().flatten().unwrap_or(false)
}

/// Resolves everything a pod needs before any process starts. Errors carry the
/// container index and the waiting reason the kubelet would show.
fn prepare(ctx: &PodCtx, pod: &Value, dir: &Path) -> Result<Prepared, (usize, &'static str, String)> {
    let ns = meta_str(pod, "namespace");
    let spec = &pod["spec"];
    let containers: Vec<&Value> = spec["initContainers"]
        .as_array()
        .into_iter()
        .flatten()
        .chain(spec["containers"].as_array().into_iter().flatten())
        .collect();
    // Volumes.
    let mut volumes: HashMap<String, PathBuf> = HashMap::new();
    let secret_rt = ctx.store.find_kind("v1", "Secret");
    let cm_rt = ctx.store.find_kind("v1", "ConfigMap");
    for v in spec["volumes"].as_array().into_iter().flatten() {
        let vname = v["name"].as_str().unwrap_or_default();
        let vdir = dir.join("volumes").join(vname);
        let mount_err = |what: String| {
            (0usize, "ContainerCreating", format!("MountVolume.SetUp failed for volume {vname:?} : {what}"))
        };
        if let Some(s) = v.get("secret") {
            let sname = s["secretName"].as_str().unwrap_or_default();
            match secret_rt.as_ref().and_then(|rt| ctx.store.get(rt, ns, sname).ok()) {
                Some(secret) => write_keys(&vdir, &secret["data"], s.get("items"), true),
                None if s["optional"] == json!(true) => {
                    let _ = std::fs::create_dir_all(&vdir);
                }
                None => return Err(mount_err(format!("secret {sname:?} not found"))),
            }
        } else if let Some(c) = v.get("configMap") {
            let cname = c["name"].as_str().unwrap_or_default();
            match cm_rt.as_ref().and_then(|rt| ctx.store.get(rt, ns, cname).ok()) {
                Some(cm) => write_keys(&vdir, &cm["data"], c.get("items"), false),
                None if c["optional"] == json!(true) => {
                    let _ = std::fs::create_dir_all(&vdir);
                }
                None => return Err(mount_err(format!("configmap {cname:?} not found"))),
            }
        } else if let Some(pvc) = v.get("persistentVolumeClaim") {
            let claim = pvc["claimName"].as_str().unwrap_or_default();
            let shared = ctx.opts.work_dir.join("volumes").join(ns).join(claim);
            let _ = std::fs::create_dir_all(&shared);
            volumes.insert(vname.into(), shared);
            continue;
        } else if let Some(h) = v.get("hostPath") {
            volumes.insert(vname.into(), PathBuf::from(h["path"].as_str().unwrap_or("/")));
            continue;
        } else {
            let _ = std::fs::create_dir_all(&vdir);
        }
        volumes.insert(vname.into(), vdir);
    }
    // Ports: declared ones plus any loopback/wildcard port written in env or args.
    let mut net = PodNet::default();
    let mut pod_ports: Vec<u16> = Vec::new();
    for c in &containers {
        for p in c["ports"].as_array().into_iter().flatten() {
            let n = p["containerPort"].as_u64().unwrap_or(0) as u16;
            pod_ports.push(n);
            if let Some(pn) = p["name"].as_str() {
                net.names.insert(pn.into(), n);
            }
        }
        for e in c["env"].as_array().into_iter().flatten() {
            pod_ports.extend(network::local_ports_in(e["value"].as_str().unwrap_or_default()));
        }
        for a in c["args"].as_array().into_iter().chain(c["command"].as_array()).flatten() {
            pod_ports.extend(network::local_ports_in(a.as_str().unwrap_or_default()));
        }
        for a in image_default_args(&ctx.opts, c) {
            pod_ports.extend(network::local_ports_in(&a));
        }
    }
    for p in pod_ports {
        if p != 0 && !net.ports.contains_key(&p) {
            net.ports.insert(p, network::free_port());
        }
    }
    let mut launches = Vec::new();
    let oom_target = pod["metadata"]["annotations"][OOM_KILL_ANNOTATION].as_str().unwrap_or_default().to_string();
    for (idx, c) in containers.iter().enumerate() {
        let cname = c["name"].as_str().unwrap_or_default();
        let image = c["image"].as_str().unwrap_or_default();
        let binary = match image_binary(&ctx.opts, image) {
            Some(b) if b.is_file() => b,
            Some(b) => return Err((idx, "ErrImagePull", format!("Failed to pull image {image:?}: binary {} is not built", b.display()))),
            None => return Err((idx, "ErrImagePull", format!("Failed to pull image {image:?}: rpc error: code = NotFound desc = failed to pull and unpack image: not found"))),
        };
        let mounts: Vec<(String, PathBuf)> = c["volumeMounts"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|m| {
                let vdir = volumes.get(m["name"].as_str()?)?;
                let sub = m["subPath"].as_str().unwrap_or_default();
                let d = if sub.is_empty() { vdir.clone() } else { vdir.join(sub) };
                if !sub.is_empty() {
                    let _ = std::fs::create_dir_all(&d);
                }
                Some((m["mountPath"].as_str()?.trim_end_matches('/').to_string(), d))
            })
            .collect();
        let env = resolve_env(ctx, pod, c).map_err(|m| (idx, "CreateContainerConfigError", m))?;
        let rewrite = |s: &str| {
            let s = map_mounts(s, &mounts);
            let s = network::remap_ports(&s, &net.ports);
            ctx.net.rewrite_service_hosts(&ctx.store, &s)
        };
        let vars: HashMap<String, String> = env.iter().cloned().collect();
        let env: Vec<(String, String)> = env.into_iter().map(|(k, v)| (k, rewrite(&v))).collect();
        let command: Vec<String> = c["command"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|v| v.as_str().map(|s| expand(s, &vars)))
            .collect();
        let mut args: Vec<String> =
            c["args"].as_array().into_iter().flatten().filter_map(|v| v.as_str().map(|s| expand(s, &vars))).collect();
        if command.is_empty() && args.is_empty() {
            args = image_default_args(&ctx.opts, c);
        }
        // The image's entrypoint is the mapped binary; command[0] names it inside the image.
        let argv: Vec<String> = command.iter().skip(1).chain(args.iter()).map(|a| rewrite(a)).collect();
        launches.push((
            Launch {
                name: cname.into(),
                binary,
                args: argv,
                env,
                log: dir.join("logs").join(format!("{cname}.log")),
                oom: oom_target == cname,
            },
            true,
            (*c).clone(),
        ));
    }
    Ok(Prepared { launches, net })
}

fn write_keys(dir: &Path, data: &Value, items: Option<&Value>, base64: bool) {
    let _ = std::fs::create_dir_all(dir);
    let decode = |v: &Value| -> Vec<u8> {
        let s = v.as_str().unwrap_or_default();
        if base64 {
            base64::engine::general_purpose::STANDARD.decode(s).unwrap_or_default()
        } else {
            s.as_bytes().to_vec()
        }
    };
    let Some(map) = data.as_object() else { return };
    match items.and_then(Value::as_array) {
        Some(items) => {
            for it in items {
                let (Some(k), Some(p)) = (it["key"].as_str(), it["path"].as_str()) else {
                    continue;
                };
                if let Some(v) = map.get(k) {
                    let f = dir.join(p);
                    if let Some(parent) = f.parent() {
                        let _ = std::fs::create_dir_all(parent);
                    }
                    let _ = std::fs::write(f, decode(v));
                }
            }
        }
        None => {
            for (k, v) in map {
                let _ = std::fs::write(dir.join(k), decode(v));
            }
        }
    }
}

fn resolve_env(ctx: &PodCtx, pod: &Value, c: &Value) -> Result<Vec<(String, String)>, String> {
    let ns = meta_str(pod, "namespace");
    let secret_rt = ctx.store.find_kind("v1", "Secret");
    let cm_rt = ctx.store.find_kind("v1", "ConfigMap");
    let secret = |name: &str| secret_rt.as_ref().and_then(|rt| ctx.store.get(rt, ns, name).ok());
    let config_map = |name: &str| cm_rt.as_ref().and_then(|rt| ctx.store.get(rt, ns, name).ok());
    let b64 = |v: &Value| {
        String::from_utf8_lossy(
            &base64::engine::general_purpose::STANDARD.decode(v.as_str().unwrap_or_default()).unwrap_or_default(),
        )
        .into_owned()
    };
    let mut out: Vec<(String, String)> = Vec::new();
    let mut vars: HashMap<String, String> = HashMap::new();
    for from in c["envFrom"].as_array().into_iter().flatten() {
        let prefix = from["prefix"].as_str().unwrap_or_default();
        if let Some(r) = from.get("secretRef") {
            let name = r["name"].as_str().unwrap_or_default();
            match secret(name) {
                Some(s) => {
                    for (k, v) in s["data"].as_object().into_iter().flatten() {
                        out.push((format!("{prefix}{k}"), b64(v)));
                    }
                }
                None if r["optional"] == json!(true) => {}
                None => return Err(format!("secret {name:?} not found")),
            }
        }
        if let Some(r) = from.get("configMapRef") {
            let name = r["name"].as_str().unwrap_or_default();
            match config_map(name) {
                Some(cm) => {
                    for (k, v) in cm["data"].as_object().into_iter().flatten() {
                        out.push((format!("{prefix}{k}"), v.as_str().unwrap_or_default().to_string()));
                    }
                }
                None if r["optional"] == json!(true) => {}
                None => return Err(format!("configmap {name:?} not found")),
            }
        }
    }
    for (k, v) in &out {
        vars.insert(k.clone(), v.clone());
    }
    for e in c["env"].as_array().into_iter().flatten() {
        let name = e["name"].as_str().unwrap_or_default().to_string();
        let value = if let Some(from) = e.get("valueFrom") {
            if let Some(r) = from.get("secretKeyRef") {
                let (sname, key) = (r["name"].as_str().unwrap_or_default(), r["key"].as_str().unwrap_or_default());
                match secret(sname) {
                    Some(s) => match s["data"].get(key) {
                        Some(v) => b64(v),
                        None if r["optional"] == json!(true) => continue,
                        None => return Err(format!("couldn't find key {key} in Secret {ns}/{sname}")),
                    },
                    None if r["optional"] == json!(true) => continue,
                    None => return Err(format!("secret {sname:?} not found")),
                }
            } else if let Some(r) = from.get("configMapKeyRef") {
                let (cname, key) = (r["name"].as_str().unwrap_or_default(), r["key"].as_str().unwrap_or_default());
                match config_map(cname).and_then(|cm| cm["data"].get(key).cloned()) {
                    Some(v) => v.as_str().unwrap_or_default().to_string(),
                    None if r["optional"] == json!(true) => continue,
                    None => return Err(format!("configmap {cname:?} or its key {key} not found")),
                }
            } else if let Some(f) = from.get("fieldRef") {
                let path = f["fieldPath"].as_str().unwrap_or_default();
                match path {
                    "metadata.name" | "metadata.namespace" | "metadata.uid" => meta_str(pod, &path[9..]).to_string(),
                    "spec.nodeName" => ctx.opts.node_name.clone(),
                    "spec.serviceAccountName" => {
                        pod["spec"]["serviceAccountName"].as_str().unwrap_or("default").to_string()
                    }
                    "status.podIP" | "status.hostIP" | "status.podIPs" | "status.hostIPs" => "127.0.0.1".into(),
                    p => {
                        let key = p.split("['").nth(1).and_then(|s| s.strip_suffix("']")).unwrap_or_default();
                        let map = if p.starts_with("metadata.labels") { "labels" } else { "annotations" };
                        pod["metadata"][map][key].as_str().unwrap_or_default().to_string()
                    }
                }
            } else if let Some(r) = from.get("resourceFieldRef") {
                let res = r["resource"].as_str().unwrap_or_default();
                let (part, key) = res.split_once('.').unwrap_or(("limits", res));
                c["resources"][part][key]
                    .as_str()
                    .map(str::to_string)
                    .or_else(|| c["resources"][part][key].as_i64().map(|n| n.to_string()))
                    .unwrap_or_else(|| "0".into())
            } else {
                String::new()
            }
        } else {
            expand(e["value"].as_str().unwrap_or_default(), &vars)
        };
        vars.insert(name.clone(), value.clone());
        out.retain(|(k, _)| *k != name);
        out.push((name, value));
    }
    Ok(out)
}

fn spawn(launch: &Launch) -> std::io::Result<Child> {
    let log = std::fs::OpenOptions::new().create(true).append(true).open(&launch.log)?;
    let mut cmd = tokio::process::Command::new(&launch.binary);
    cmd.args(&launch.args).env_clear();
    for keep in ["PATH", "RUST_LOG", "RUST_BACKTRACE", "TMPDIR", "LLVM_PROFILE_FILE"] {
        if let Ok(v) = std::env::var(keep) {
            cmd.env(keep, v);
        }
    }
    cmd.env("HOSTNAME", &launch.name);
    cmd.envs(launch.env.iter().map(|(k, v)| (k.as_str(), v.as_str())));
    cmd.stdin(std::process::Stdio::null()).stdout(log.try_clone()?).stderr(log).kill_on_drop(true);
    cmd.spawn()
}

fn signal(child: &Child, sig: nix::sys::signal::Signal) {
    if let Some(pid) = child.id() {
        let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid as i32), sig);
    }
}

fn code_of(status: std::process::ExitStatus) -> i32 {
    use std::os::unix::process::ExitStatusExt as _;
    status.code().unwrap_or_else(|| 128 + status.signal().unwrap_or(9))
}

/// Runs one container, restarting it per policy, until told to stop.
async fn container_loop(
    idx: usize,
    launch: Arc<Launch>,
    policy: String,
    tx: mpsc::Sender<CEvent>,
    mut kill: watch::Receiver<Option<Duration>>,
) {
    loop {
        if kill.borrow().is_some() {
            let _ = tx.send(CEvent::Exited { idx, code: 137, reason: "Error", finished: true }).await;
            return;
        }
        let mut child = match spawn(&launch) {
            Ok(c) => c,
            Err(e) => {
                tracing::warn!(container = %launch.name, error = %e, "could not start container process");
                let _ =
                    tx.send(CEvent::Exited { idx, code: 128, reason: "StartError", finished: policy == "Never" }).await;
                if policy == "Never" {
                    return;
                }
                tokio::time::sleep(Duration::from_secs(1)).await;
                continue;
            }
        };
        let _ = tx.send(CEvent::Started(idx)).await;
        if launch.oom {
            signal(&child, nix::sys::signal::Signal::SIGKILL);
            let _ = child.wait().await;
            let _ = tx.send(CEvent::Exited { idx, code: 137, reason: "OOMKilled", finished: policy != "Always" }).await;
            if policy == "Always" {
                tokio::time::sleep(Duration::from_secs(1)).await;
                continue;
            }
            return;
        }
        tokio::select! {
            status = child.wait() => {
                let code = status.map(code_of).unwrap_or(128);
                let restart = policy == "Always" || (policy == "OnFailure" && code != 0);
                let _ = tx.send(CEvent::Exited { idx, code, reason: if code == 0 { "Completed" } else { "Error" }, finished: !restart }).await;
                if !restart {
                    return;
                }
                // A short, fixed back-off (the real one starts at 10s and doubles).
                tokio::select! {
                    _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                    _ = kill.changed() => {}
                }
            }
            _ = kill.changed() => {
                let grace = kill.borrow().unwrap_or_default();
                signal(&child, nix::sys::signal::Signal::SIGTERM);
                let status = match tokio::time::timeout(grace, child.wait()).await {
                    Ok(s) => s,
                    Err(_) => {
                        signal(&child, nix::sys::signal::Signal::SIGKILL);
                        child.wait().await
                    }
                };
                let code = status.map(code_of).unwrap_or(137);
                let _ = tx.send(CEvent::Exited { idx, code, reason: if code == 0 { "Completed" } else { "Error" }, finished: true }).await;
                return;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn expansion_and_mount_mapping() {
        let vars = HashMap::from([("A".to_string(), "x".to_string())]);
        assert_eq!(expand("$(A)/$(B)", &vars), "x/$(B)");
        let mounts = vec![("/var/run/job".to_string(), PathBuf::from("/tmp/p/job"))];
        assert_eq!(map_mounts("/var/run/job", &mounts), "/tmp/p/job");
        assert_eq!(map_mounts("/var/run/job/token", &mounts), "/tmp/p/job/token");
        assert_eq!(map_mounts("/var/run/jobs", &mounts), "/var/run/jobs");
    }

    #[test]
    fn images_map_to_binaries_by_repository() {
        let opts = KubeletOptions {
            images: vec![("sidecar".into(), "/bin/sidecar".into()), ("runtime".into(), "/bin/rt".into())],
            ..KubeletOptions::without_binaries()
        };
        assert_eq!(image_binary(&opts, "reg.io/newrelic/serverless-sidecar:latest"), Some("/bin/sidecar".into()));
        assert_eq!(image_binary(&opts, "newrelic/synthetics-node-api-runtime:1.2"), Some("/bin/rt".into()));
        assert_eq!(image_binary(&opts, "nginx:runtime"), None, "tags do not count");
        assert_eq!(image_binary(&opts, "busybox"), None);
    }

    #[test]
    fn image_default_args_apply_only_without_command_or_args() {
        let opts = KubeletOptions {
            image_args: vec![("persistent".into(), vec!["--serve".into()])],
            ..KubeletOptions::without_binaries()
        };
        assert_eq!(image_default_args(&opts, &json!({"image": "rt-persistent:1"})), vec!["--serve"]);
        assert!(image_default_args(&opts, &json!({"image": "rt-persistent:1", "args": ["x"]})).is_empty());
        assert!(image_default_args(&opts, &json!({"image": "other:1"})).is_empty());
    }

    #[test]
    fn node_selectors_must_match_the_node() {
        let labels = BTreeMap::from([("kubernetes.io/os".to_string(), "linux".to_string())]);
        assert!(node_selector_matches(&json!({"spec": {}}), &labels));
        assert!(node_selector_matches(&json!({"spec": {"nodeSelector": {"kubernetes.io/os": "linux"}}}), &labels));
        assert!(!node_selector_matches(&json!({"spec": {"nodeSelector": {"gpu": "yes"}}}), &labels));
    }
}
