//! Container statuses as the kubelet reports them, and the pod status it writes (it is
//! the status subresource's only writer).
use super::process::CEvent;
use super::{PodCtx, KUBELET};
use crate::emulator::resources::ResourceType;
use crate::emulator::store::WriteOptions;
use crate::emulator::time;
use serde_json::{json, Value};

#[derive(Clone, Debug, Default)]
pub(super) struct CStatus {
    pub name: String,
    pub image: String,
    pub state: Value,
    pub last_state: Value,
    pub ready: bool,
    pub started: bool,
    pub restarts: u32,
    pub done: bool,
}

impl CStatus {
    pub(super) fn waiting(name: &str, image: &str, reason: &str, message: &str) -> Self {
        let mut state = json!({"waiting": {"reason": reason}});
        if !message.is_empty() {
            state["waiting"]["message"] = json!(message);
        }
        Self { name: name.into(), image: image.into(), state, last_state: json!({}), ..Default::default() }
    }
    /// One waiting status per container spec, all with the same reason.
    pub(super) fn all_waiting(specs: &[Value], reason: &str) -> Vec<Self> {
        specs
            .iter()
            .map(|c| {
                Self::waiting(
                    c["name"].as_str().unwrap_or_default(),
                    c["image"].as_str().unwrap_or_default(),
                    reason,
                    "",
                )
            })
            .collect()
    }
    pub(super) fn render(&self) -> Value {
        json!({"name": self.name, "image": self.image, "imageID": format!("emulator://{}", self.image), "ready": self.ready,
            "started": self.started, "restartCount": self.restarts, "state": self.state, "lastState": self.last_state})
    }
}

pub(super) fn status_pods(ctx: &PodCtx) -> Option<ResourceType> {
    ctx.store.find_kind("v1", "Pod")
}

/// Replaces the pod's status (the kubelet is its only writer). `false` once the pod is gone.
pub(super) fn write_status(ctx: &PodCtx, ns: &str, name: &str, f: impl FnOnce(&mut Value)) -> bool {
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

/// Writes the status of one pod while its containers run: phase, addresses, conditions
/// derived from the container statuses, and the container statuses themselves.
pub(super) struct PodStatusWriter<'a> {
    pub ctx: &'a PodCtx,
    pub ns: &'a str,
    pub name: &'a str,
    pub init_specs: &'a [Value],
    pub started_at: String,
    /// The pod's own loopback address.
    pub ip: String,
}

impl PodStatusWriter<'_> {
    /// `false` once the pod is gone.
    pub(super) fn publish(&self, init: &[CStatus], main: &[CStatus], phase: &str, extra: Option<(&str, &str)>) -> bool {
        let initialized =
            init.iter().zip(self.init_specs).all(
                |(s, spec)| {
                    if spec["restartPolicy"] == "Always" {
                        s.started
                    } else {
                        s.done
                    }
                },
            );
        let ready = initialized && !main.is_empty() && main.iter().all(|s| s.ready);
        write_status(self.ctx, self.ns, self.name, |s| {
            s["phase"] = json!(phase);
            s["hostIP"] = json!("127.0.0.1");
            s["hostIPs"] = json!([{"ip": "127.0.0.1"}]);
            s["podIP"] = json!(self.ip);
            s["podIPs"] = json!([{"ip": self.ip}]);
            s["startTime"] = json!(self.started_at);
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
    }
}

pub(super) fn cond(ty: &str, ok: bool) -> Value {
    json!({"type": ty, "status": if ok { "True" } else { "False" }, "lastProbeTime": null, "lastTransitionTime": time::now()})
}

pub(super) fn st_backoff(init: &mut [CStatus], main: &mut [CStatus], idx: usize) {
    let n = init.len();
    let st = if idx < n { &mut init[idx] } else { &mut main[idx - n] };
    st.state["waiting"]["reason"] = json!("ImagePullBackOff");
    let msg = format!("Back-off pulling image {:?}", st.image);
    st.state["waiting"]["message"] = json!(msg);
}

pub(super) fn exit_code(s: &CStatus) -> Option<i64> {
    s.state.pointer("/terminated/exitCode").and_then(Value::as_i64)
}

pub(super) fn apply_event(init: &mut [CStatus], main: &mut [CStatus], n_init: usize, ev: CEvent) {
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
