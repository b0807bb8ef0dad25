//! Deletion: uid and resourceVersion preconditions (409 Conflict), the propagation
//! policy, finalizers, and graceful termination of pods a kubelet has to stop first.
use super::{meta_str, DeleteOptions, DeleteOutcome, EventType, ObjKey, State, Store};
use crate::emulator::resources::ResourceType;
use crate::emulator::status::{self, ApiError};
use crate::emulator::time;
use serde_json::{json, Value};

impl Store {
    pub(super) fn awaits_kubelet(&self, rt: &ResourceType, obj: &Value) -> bool {
        rt.kind == "Pod"
            && rt.group.is_empty()
            && self.options().graceful_pods
            && obj["spec"]["nodeName"].as_str().is_some_and(|n| !n.is_empty())
            && !matches!(obj["status"]["phase"].as_str(), Some("Succeeded") | Some("Failed"))
            && obj["metadata"]["deletionGracePeriodSeconds"].as_i64() != Some(0)
    }

    pub fn delete(
        &self,
        rt: &ResourceType,
        ns: &str,
        name: &str,
        o: &DeleteOptions,
    ) -> Result<DeleteOutcome, ApiError> {
        let mut st = self.lock();
        self.delete_locked(&mut st, rt, ns, name, o)
    }

    pub(super) fn delete_locked(
        &self,
        st: &mut State,
        rt: &ResourceType,
        ns: &str,
        name: &str,
        o: &DeleteOptions,
    ) -> Result<DeleteOutcome, ApiError> {
        let key = Self::key(rt, ns, name);
        let Some(old) = st.objects.get(&key).cloned() else {
            return Err(Self::not_found(rt, name));
        };
        if let Some(uid) = &o.precondition_uid {
            if uid != meta_str(&old, "uid") {
                return Err(ApiError::Conflict {
                    group: rt.group.clone(),
                    resource: rt.plural.clone(),
                    name: name.into(),
                    detail: format!(
                        "Precondition failed: UID in precondition: {uid}, UID in object meta: {}",
                        meta_str(&old, "uid")
                    ),
                });
            }
        }
        if let Some(rv) = &o.precondition_rv {
            if rv != meta_str(&old, "resourceVersion") {
                return Err(ApiError::Conflict {
                    group: rt.group.clone(),
                    resource: rt.plural.clone(),
                    name: name.into(),
                    detail: format!(
                        "Precondition failed: ResourceVersion in precondition: {rv}, ResourceVersion in object meta: {}",
                        meta_str(&old, "resourceVersion")
                    ),
                });
            }
        }
        // batch/v1 Jobs orphan their pods by default (the API's historical default).
        let default_policy = if rt.kind == "Job" && rt.group == "batch" { "Orphan" } else { "Background" };
        let policy = o.propagation.clone().unwrap_or_else(|| default_policy.to_string());
        if !["Foreground", "Background", "Orphan"].contains(&policy.as_str()) {
            return Err(ApiError::Invalid {
                group: rt.group.clone(),
                kind: rt.kind.clone(),
                name: name.into(),
                causes: vec![status::Cause::not_supported(
                    "propagationPolicy",
                    &json!(policy),
                    &["Foreground", "Background", "Orphan"],
                )],
            });
        }
        let mut obj = (*old).clone();
        let already_deleting = obj["metadata"].get("deletionTimestamp").is_some();
        let mut finalizers: Vec<Value> = obj["metadata"]["finalizers"].as_array().cloned().unwrap_or_default();
        let has_dependents = policy != "Background" && self.dependents(st, meta_str(&old, "uid")).next().is_some();
        if has_dependents {
            let f = if policy == "Foreground" { "foregroundDeletion" } else { "orphan" };
            if !finalizers.contains(&json!(f)) {
                finalizers.push(json!(f));
            }
        }
        let grace = if self.awaits_kubelet(rt, &obj) {
            o.grace_period_seconds.or_else(|| obj["spec"]["terminationGracePeriodSeconds"].as_i64()).unwrap_or(30)
        } else {
            0
        };
        if o.dry_run {
            return Ok(DeleteOutcome::Pending(obj));
        }
        if finalizers.is_empty() && grace == 0 {
            let out = self.commit(st, key, EventType::Deleted, obj, Some(old));
            self.after_delete(st, rt, &out);
            return Ok(DeleteOutcome::Deleted(out));
        }
        if already_deleting && obj["metadata"]["finalizers"].as_array().map(Vec::len).unwrap_or(0) == finalizers.len() {
            let shorter = grace < obj["metadata"]["deletionGracePeriodSeconds"].as_i64().unwrap_or(i64::MAX);
            if !shorter {
                return Ok(DeleteOutcome::Pending(obj));
            }
        }
        obj["metadata"]["finalizers"] = Value::Array(finalizers);
        if !already_deleting {
            obj["metadata"]["deletionTimestamp"] =
                json!(time::rfc3339(std::time::SystemTime::now() + std::time::Duration::from_secs(grace as u64)));
        }
        obj["metadata"]["deletionGracePeriodSeconds"] = json!(grace);
        let out = self.commit(st, key, EventType::Modified, obj, Some(old));
        self.collect_garbage(st);
        Ok(DeleteOutcome::Pending(out))
    }

    pub(super) fn after_delete(&self, st: &mut State, rt: &ResourceType, obj: &Value) {
        if rt.group.is_empty() && rt.kind == "Namespace" {
            // The namespace controller's job, done at once: everything in it goes.
            let ns = meta_str(obj, "name").to_string();
            let keys: Vec<ObjKey> = st.objects.keys().filter(|k| k.namespace == ns).cloned().collect();
            for k in keys {
                if let Some(o) = st.objects.get(&k).cloned() {
                    self.commit(st, k, EventType::Deleted, (*o).clone(), Some(o));
                }
            }
        }
        if rt.group == "apiextensions.k8s.io" && rt.kind == "CustomResourceDefinition" {
            let (group, plural) = (
                obj["spec"]["group"].as_str().unwrap_or_default().to_string(),
                obj["spec"]["names"]["plural"].as_str().unwrap_or_default().to_string(),
            );
            st.types.retain(|t| !(t.group == group && t.plural == plural));
            let keys: Vec<ObjKey> =
                st.objects.keys().filter(|k| k.group == group && k.plural == plural).cloned().collect();
            for k in keys {
                if let Some(o) = st.objects.get(&k).cloned() {
                    self.commit(st, k, EventType::Deleted, (*o).clone(), Some(o));
                }
            }
        }
        self.collect_garbage(st);
    }
}
