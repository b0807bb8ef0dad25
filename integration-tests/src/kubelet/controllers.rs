//! The Job and Deployment controllers, level-triggered: every pass compares each
//! object with the pods it owns and writes only what changed. The decisions are pure
//! functions (`plan_job`, `plan_deployment`) so they are tested without a store.
use crate::emulator::store::{meta_str, DeleteOptions, Store, WriteOptions};
use crate::emulator::time;
use serde_json::{json, Value};
use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

pub const CONTROLLER_MANAGER: &str = "kube-controller-manager";

#[derive(Debug, Default, PartialEq)]
pub struct Plan {
    pub create_pods: usize,
    pub delete_pods: Vec<String>,
    /// The new status when it differs from the stored one.
    pub status: Option<Value>,
    pub delete_owner: bool,
}

fn phase(p: &Value) -> &str {
    p["status"]["phase"].as_str().unwrap_or("Pending")
}

fn deleting(v: &Value) -> bool {
    v["metadata"].get("deletionTimestamp").is_some()
}

fn pod_ready(p: &Value) -> bool {
    p["status"]["conditions"]
        .as_array()
        .is_some_and(|c| c.iter().any(|c| c["type"] == "Ready" && c["status"] == "True"))
}

fn condition(ty: &str, reason: &str, message: &str, now: &str) -> Value {
    json!({"type": ty, "status": "True", "reason": reason, "message": message, "lastProbeTime": now, "lastTransitionTime": now})
}

fn finished_at(job: &Value) -> Option<SystemTime> {
    let conds = job["status"]["conditions"].as_array()?;
    let c = conds.iter().find(|c| (c["type"] == "Complete" || c["type"] == "Failed") && c["status"] == "True")?;
    time::parse_rfc3339(job["status"]["completionTime"].as_str().or(c["lastTransitionTime"].as_str())?)
}

/// What the Job controller does for one Job, given the pods it owns.
pub fn plan_job(job: &Value, pods: &[&Value], now: SystemTime) -> Plan {
    let mut plan = Plan::default();
    if deleting(job) {
        return plan;
    }
    let spec = &job["spec"];
    let old_status = job.get("status").cloned().unwrap_or(json!({}));
    if let Some(done) = finished_at(job) {
        if let Some(ttl) = spec["ttlSecondsAfterFinished"].as_u64() {
            plan.delete_owner = done + Duration::from_secs(ttl) <= now;
        }
        // Finished Jobs keep no running pods.
        plan.delete_pods = pods
            .iter()
            .filter(|p| !deleting(p) && !matches!(phase(p), "Succeeded" | "Failed"))
            .map(|p| meta_str(p, "name").to_string())
            .collect();
        return plan;
    }
    if spec["suspend"] == json!(true) {
        return plan;
    }
    let now_s = time::rfc3339(now);
    let mut status = old_status.clone();
    if status.get("startTime").is_none() {
        status["startTime"] = json!(now_s);
    }
    let start = status["startTime"].as_str().and_then(time::parse_rfc3339).unwrap_or(now);
    let live: Vec<&&Value> =
        pods.iter().filter(|p| !deleting(p) && !matches!(phase(p), "Succeeded" | "Failed")).collect();
    let succeeded = pods
        .iter()
        .filter(|p| phase(p) == "Succeeded")
        .count()
        .max(old_status["succeeded"].as_u64().unwrap_or(0) as usize);
    let failed =
        pods.iter().filter(|p| phase(p) == "Failed").count().max(old_status["failed"].as_u64().unwrap_or(0) as usize);
    let completions = spec["completions"].as_u64().unwrap_or(1) as usize;
    let parallelism = spec["parallelism"].as_u64().unwrap_or(1) as usize;
    let backoff_limit = spec["backoffLimit"].as_u64().unwrap_or(6) as usize;
    let mut failure: Option<(&str, &str)> = None;
    if failed > backoff_limit {
        failure = Some(("BackoffLimitExceeded", "Job has reached the specified backoff limit"));
    } else if let Some(d) = spec["activeDeadlineSeconds"].as_u64() {
        if start + Duration::from_secs(d) <= now {
            failure = Some(("DeadlineExceeded", "Job was active longer than specified deadline"));
        }
    }
    let mut active = live.len();
    if let Some((reason, message)) = failure {
        plan.delete_pods = live.iter().map(|p| meta_str(p, "name").to_string()).collect();
        active = 0;
        status["conditions"] =
            json!([condition("FailureTarget", reason, message, &now_s), condition("Failed", reason, message, &now_s)]);
    } else if succeeded >= completions {
        status["conditions"] = json!([
            condition("SuccessCriteriaMet", "CompletionsReached", "Reached expected number of succeeded pods", &now_s),
            condition("Complete", "CompletionsReached", "Reached expected number of succeeded pods", &now_s)
        ]);
        status["completionTime"] = json!(now_s);
    } else {
        let want = parallelism.min(completions - succeeded);
        plan.create_pods = want.saturating_sub(active);
        active += plan.create_pods;
    }
    status["active"] = json!(active);
    status["succeeded"] = json!(succeeded);
    status["failed"] = json!(failed);
    status["ready"] = json!(live.iter().filter(|p| pod_ready(p)).count());
    status["terminating"] = json!(pods.iter().filter(|p| deleting(p)).count());
    status["uncountedTerminatedPods"] = json!({});
    for k in ["active", "succeeded", "failed"] {
        if status[k] == json!(0) {
            status.as_object_mut().map(|m| m.remove(k));
        }
    }
    if status != old_status {
        plan.status = Some(status);
    }
    plan
}

/// A stable hash of a pod template (the `pod-template-hash` label).
pub fn template_hash(template: &Value) -> String {
    let mut h: u64 = 0xcbf29ce484222325;
    for b in template.to_string().bytes() {
        h ^= b as u64;
        h = h.wrapping_mul(0x100000001b3);
    }
    format!("{:x}", h & 0xffff_ffff)
}

/// What the Deployment controller does: replace pods of an old template, keep
/// `replicas` pods of the current one.
pub fn plan_deployment(dep: &Value, pods: &[&Value]) -> Plan {
    let mut plan = Plan::default();
    if deleting(dep) {
        return plan;
    }
    let replicas = dep["spec"]["replicas"].as_u64().unwrap_or(1) as usize;
    let hash = template_hash(&dep["spec"]["template"]);
    let live: Vec<&&Value> =
        pods.iter().filter(|p| !deleting(p) && !matches!(phase(p), "Succeeded" | "Failed")).collect();
    let (current, old): (Vec<&&Value>, Vec<&&Value>) =
        live.iter().partition(|p| p["metadata"]["labels"]["pod-template-hash"] == json!(hash));
    plan.delete_pods.extend(old.iter().map(|p| meta_str(p, "name").to_string()));
    plan.delete_pods.extend(
        pods.iter()
            .filter(|p| matches!(phase(p), "Succeeded" | "Failed") && !deleting(p))
            .map(|p| meta_str(p, "name").to_string()),
    );
    if current.len() > replicas {
        plan.delete_pods.extend(current[replicas..].iter().map(|p| meta_str(p, "name").to_string()));
    }
    plan.create_pods = replicas.saturating_sub(current.len());
    let ready = current.iter().take(replicas).filter(|p| pod_ready(p)).count();
    let old_status = dep.get("status").cloned().unwrap_or(json!({}));
    let mut status = json!({
        "observedGeneration": dep["metadata"]["generation"],
        "replicas": live.len().min(replicas.max(live.len())),
        "updatedReplicas": current.len().min(replicas),
        "readyReplicas": ready,
        "availableReplicas": ready,
        "unavailableReplicas": replicas.saturating_sub(ready),
    });
    let available = ready >= replicas;
    let keep_time = |ty: &str, st: &str| {
        old_status["conditions"]
            .as_array()
            .and_then(|c| c.iter().find(|c| c["type"] == ty && c["status"] == st))
            .map(|c| c["lastTransitionTime"].clone())
    };
    let now = json!(time::now());
    let avail_status = if available { "True" } else { "False" };
    status["conditions"] = json!([{"type": "Available", "status": avail_status,
        "reason": if available { "MinimumReplicasAvailable" } else { "MinimumReplicasUnavailable" },
        "message": if available { "Deployment has minimum availability." } else { "Deployment does not have minimum availability." },
        "lastUpdateTime": keep_time("Available", avail_status).unwrap_or(now.clone()),
        "lastTransitionTime": keep_time("Available", avail_status).unwrap_or(now)}]);
    for k in ["readyReplicas", "availableReplicas", "unavailableReplicas", "replicas", "updatedReplicas"] {
        if status[k] == json!(0) {
            status.as_object_mut().map(|m| m.remove(k));
        }
    }
    if status != old_status {
        plan.status = Some(status);
    }
    plan
}

fn owned_pods<'a>(pods: &'a [Arc<Value>], uid: &str) -> Vec<&'a Value> {
    pods.iter()
        .filter(|p| {
            p["metadata"]["ownerReferences"]
                .as_array()
                .is_some_and(|r| r.iter().any(|r| r["uid"] == uid && r["controller"] == json!(true)))
        })
        .map(|p| p.as_ref())
        .collect()
}

fn pod_from_template(owner: &Value, kind: &str, api_version: &str, extra_labels: &[(&str, String)]) -> Value {
    let template = &owner["spec"]["template"];
    let mut labels = template["metadata"]["labels"].clone();
    if !labels.is_object() {
        labels = json!({});
    }
    for (k, v) in extra_labels {
        labels[*k] = json!(v);
    }
    let mut meta = json!({
        "generateName": format!("{}-", meta_str(owner, "name")),
        "namespace": meta_str(owner, "namespace"),
        "labels": labels,
        "ownerReferences": [{"apiVersion": api_version, "kind": kind, "name": meta_str(owner, "name"),
            "uid": meta_str(owner, "uid"), "controller": true, "blockOwnerDeletion": true}],
    });
    if let Some(a) = template["metadata"].get("annotations") {
        meta["annotations"] = a.clone();
    }
    json!({"apiVersion": "v1", "kind": "Pod", "metadata": meta, "spec": template["spec"]})
}

/// One pass over all Jobs and Deployments.
pub fn reconcile_all(store: &Arc<Store>) {
    let w = WriteOptions { field_manager: CONTROLLER_MANAGER.into(), ..Default::default() };
    let (Some(pod_rt), Some(job_rt), Some(dep_rt)) =
        (store.find_kind("v1", "Pod"), store.find_kind("batch/v1", "Job"), store.find_kind("apps/v1", "Deployment"))
    else {
        return;
    };
    let pods = store.all("", "pods");
    let now = SystemTime::now();
    let mut by_owner: HashMap<String, Vec<&Value>> = HashMap::new();
    for p in &pods {
        for r in p["metadata"]["ownerReferences"].as_array().into_iter().flatten() {
            if r["controller"] == json!(true) {
                by_owner.entry(r["uid"].as_str().unwrap_or_default().to_string()).or_default().push(p);
            }
        }
    }
    let _ = owned_pods;
    for job in store.all("batch", "jobs") {
        let owned = by_owner.get(meta_str(&job, "uid")).cloned().unwrap_or_default();
        let plan = plan_job(&job, &owned, now);
        apply_plan(store, &w, &job, &plan, &pod_rt, &job_rt, || pod_from_template(&job, "Job", "batch/v1", &[]));
    }
    for dep in store.all("apps", "deployments") {
        let owned = by_owner.get(meta_str(&dep, "uid")).cloned().unwrap_or_default();
        let plan = plan_deployment(&dep, &owned);
        let hash = template_hash(&dep["spec"]["template"]);
        apply_plan(store, &w, &dep, &plan, &pod_rt, &dep_rt, || {
            pod_from_template(&dep, "Deployment", "apps/v1", &[("pod-template-hash", hash.clone())])
        });
    }
}

fn apply_plan(
    store: &Arc<Store>,
    w: &WriteOptions,
    owner: &Value,
    plan: &Plan,
    pod_rt: &crate::emulator::resources::ResourceType,
    owner_rt: &crate::emulator::resources::ResourceType,
    make_pod: impl Fn() -> Value,
) {
    let ns = meta_str(owner, "namespace");
    for name in &plan.delete_pods {
        let _ = store.delete(pod_rt, ns, name, &DeleteOptions::default());
    }
    let mut refused = 0;
    for created in 0..plan.create_pods {
        if let Err(e) = store.create(pod_rt, ns, make_pod(), w) {
            tracing::warn!(owner = meta_str(owner, "name"), error = %e, "controller could not create a pod");
            if owner_rt.kind == "Job" {
                failed_create_event(store, w, owner, &format!("Error creating: {e}"));
            }
            refused = plan.create_pods - created;
            break;
        }
    }
    let mut status = plan.status.clone();
    if let Some(s) = status.as_mut().filter(|_| refused > 0) {
        // The plan counted the pods it meant to create as active; refused ones are not.
        let active = s["active"].as_u64().unwrap_or(0).saturating_sub(refused as u64);
        match s.as_object_mut() {
            Some(m) if active == 0 => _ = m.remove("active"),
            _ => s["active"] = json!(active),
        }
    }
    if let Some(status) = status.filter(|s| owner.get("status") != Some(s)) {
        let mut obj = owner.clone();
        obj["status"] = status;
        obj["metadata"].as_object_mut().map(|m| m.remove("resourceVersion"));
        let _ = store.replace(owner_rt, ns, meta_str(owner, "name"), obj, Some("status"), w);
    }
    if plan.delete_owner {
        let o = DeleteOptions { propagation: Some("Background".into()), ..Default::default() };
        let _ = store.delete(owner_rt, ns, meta_str(owner, "name"), &o);
    }
}

/// The Job controller's `FailedCreate` warning on the Job (core/v1 Event), repeats
/// counted on one event as the real recorder aggregates them.
fn failed_create_event(store: &Arc<Store>, w: &WriteOptions, job: &Value, message: &str) {
    let Some(rt) = store.find_kind("v1", "Event") else { return };
    let (ns, name) = (meta_str(job, "namespace"), format!("{}.failedcreate", meta_str(job, "name")));
    let now = time::now();
    let event = match store.get(&rt, ns, &name) {
        Ok(mut old) => {
            old["count"] = json!(old["count"].as_u64().unwrap_or(1) + 1);
            old["lastTimestamp"] = json!(now);
            old["message"] = json!(message);
            old["metadata"].as_object_mut().map(|m| m.remove("resourceVersion"));
            store.replace(&rt, ns, &name, old, None, w)
        }
        Err(_) => store.create(
            &rt,
            ns,
            json!({
                "metadata": {"name": name, "namespace": ns},
                "involvedObject": {
                    "apiVersion": "batch/v1", "kind": "Job", "namespace": ns,
                    "name": meta_str(job, "name"), "uid": meta_str(job, "uid"),
                },
                "reason": "FailedCreate",
                "message": message,
                "type": "Warning",
                "source": {"component": "job-controller"},
                "reportingComponent": "job-controller",
                "firstTimestamp": now,
                "lastTimestamp": now,
                "count": 1,
            }),
            w,
        ),
    };
    if let Err(e) = event {
        tracing::warn!(job = meta_str(job, "name"), error = %e, "could not record the FailedCreate event");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn job(spec: Value) -> Value {
        json!({"metadata": {"name": "j", "namespace": "d", "uid": "u"}, "spec": spec})
    }
    fn pod(name: &str, phase: &str) -> Value {
        json!({"metadata": {"name": name}, "status": {"phase": phase}})
    }

    #[test]
    fn a_new_job_gets_one_pod_and_a_start_time() {
        let j = job(json!({"completions": 1, "parallelism": 1, "backoffLimit": 0}));
        let plan = plan_job(&j, &[], SystemTime::now());
        assert_eq!(plan.create_pods, 1);
        let st = plan.status.unwrap();
        assert_eq!(st["active"], 1);
        assert!(st["startTime"].is_string());
    }

    #[test]
    fn success_completes_and_failure_beyond_backoff_fails() {
        let j = job(json!({"completions": 1, "parallelism": 1, "backoffLimit": 0}));
        let done = pod("p", "Succeeded");
        let st = plan_job(&j, &[&done], SystemTime::now()).status.unwrap();
        assert_eq!(st["conditions"][1]["type"], "Complete");
        assert_eq!(st["succeeded"], 1);
        let failed = pod("p", "Failed");
        let plan = plan_job(&j, &[&failed], SystemTime::now());
        assert_eq!(plan.create_pods, 0);
        assert_eq!(plan.status.unwrap()["conditions"][1]["reason"], "BackoffLimitExceeded");
        let j2 = job(json!({"completions": 1, "parallelism": 1, "backoffLimit": 1}));
        assert_eq!(plan_job(&j2, &[&failed], SystemTime::now()).create_pods, 1, "retried within the backoff limit");
    }

    #[test]
    fn deadline_exceeded_deletes_running_pods() {
        let mut j = job(json!({"completions": 1, "parallelism": 1, "backoffLimit": 0, "activeDeadlineSeconds": 5}));
        j["status"] = json!({"startTime": time::rfc3339(SystemTime::now() - Duration::from_secs(10)), "active": 1});
        let running = pod("p", "Running");
        let plan = plan_job(&j, &[&running], SystemTime::now());
        assert_eq!(plan.delete_pods, vec!["p"]);
        let st = plan.status.unwrap();
        assert_eq!(st["conditions"][1]["type"], "Failed");
        assert_eq!(st["conditions"][1]["reason"], "DeadlineExceeded");
    }

    #[test]
    fn ttl_after_finished_deletes_the_job() {
        let mut j = job(json!({"ttlSecondsAfterFinished": 1}));
        let past = time::rfc3339(SystemTime::now() - Duration::from_secs(5));
        j["status"] = json!({"completionTime": past, "conditions": [{"type": "Complete", "status": "True", "lastTransitionTime": past}]});
        assert!(plan_job(&j, &[], SystemTime::now()).delete_owner);
        j["spec"]["ttlSecondsAfterFinished"] = json!(3600);
        assert!(!plan_job(&j, &[], SystemTime::now()).delete_owner);
    }

    #[test]
    fn deployments_scale_and_replace_old_templates() {
        let dep = json!({"metadata": {"name": "d", "generation": 2}, "spec": {"replicas": 2, "template": {"spec": {"containers": []}}}});
        let hash = template_hash(&dep["spec"]["template"]);
        let cur =
            json!({"metadata": {"name": "a", "labels": {"pod-template-hash": hash}}, "status": {"phase": "Running"}});
        let old =
            json!({"metadata": {"name": "b", "labels": {"pod-template-hash": "old"}}, "status": {"phase": "Running"}});
        let plan = plan_deployment(&dep, &[&cur, &old]);
        assert_eq!(plan.create_pods, 1);
        assert_eq!(plan.delete_pods, vec!["b"]);
    }
}
