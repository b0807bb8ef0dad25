//! The pod worker: schedule, prepare, start init containers one by one and then the
//! main containers, watch them and their probes, stop them, and write the outcome.
use super::probe::probe_passes;
use super::process::{container_loop, CEvent, Launch};
use super::spec::{node_selector_matches, prepare, Blocked, PrepareError};
use super::status::{apply_event, cond, exit_code, st_backoff, status_pods, write_status, CStatus, PodStatusWriter};
use super::{PodCtx, Stop};
use crate::emulator::store::{meta_str, DeleteOptions, WriteOptions};
use crate::emulator::time;
use serde_json::{json, Value};
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::{mpsc, watch};

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
    let mut init_st = CStatus::all_waiting(&init_specs, "PodInitializing");
    let mut main_st = CStatus::all_waiting(&main_specs, "ContainerCreating");
    let ip = ctx.net.allocate_pod_ip();
    let status = PodStatusWriter {
        ctx: &ctx,
        ns: &ns,
        name: &name,
        init_specs: &init_specs,
        started_at: time::now(),
        ip: ip.to_string(),
    };
    status.publish(&init_st, &main_st, "Pending", None);

    // Volumes, images and env: retried (as the kubelet does) until they resolve.
    let prepared = loop {
        match prepare(&ctx, &pod, &dir, ip) {
            Ok(p) => break p,
            Err(Blocked { container: idx, error }) => {
                let st = if idx < init_st.len() { &mut init_st[idx] } else { &mut main_st[idx - init_st.len()] };
                *st = CStatus::waiting(&st.name.clone(), &st.image.clone(), error.reason(), &error.to_string());
                if matches!(error, PrepareError::Image(_)) {
                    status.publish(&init_st, &main_st, "Pending", None);
                    st_backoff(&mut init_st, &mut main_st, idx);
                }
                status.publish(&init_st, &main_st, "Pending", None);
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
        let launch = launches.next().expect("one launch per container");
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
                status.publish(&init_st, &main_st, "Pending", None);
                break;
            }
            let tick = tokio::time::sleep_until(tokio::time::Instant::from_std(next_probe));
            tokio::select! {
                ev = rx.recv() => {
                    let Some(ev) = ev else { break };
                    apply_event(&mut init_st, &mut main_st, n_init, ev);
                    status.publish(&init_st, &main_st, "Pending", None);
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
            status.publish(&init_st, &main_st, "Failed", None);
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
        let launch = launches.next().expect("one launch per container");
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
                status.publish(&init_st, &main_st, "Running", None);
            }
            _ = ticker.tick(), if probe_ok.iter().any(|ok| !ok) => {
                for j in 0..main_st.len() {
                    if !probe_ok[j] && main_st[j].started {
                        probe_ok[j] = probe_passes(readiness[j].as_ref().expect("pending probes exist"), &pod_net).await;
                        if probe_ok[j] {
                            main_st[j].ready = main_st[j].state.get("running").is_some();
                            ctx.net.set_ready(&ns, &name, main_st.iter().all(|s| s.ready));
                            status.publish(&init_st, &main_st, "Running", None);
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
    status.publish(&init_st, &main_st, phase, failure);
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

fn grace_of(s: Stop) -> Duration {
    match s {
        Stop::Terminate(g) => g,
        _ => Duration::ZERO,
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
