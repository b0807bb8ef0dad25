//! Create, replace and patch, and the update path they share: identity fields kept
//! from the stored object, the status subresource, resourceVersion preconditions
//! (409 Conflict), validation, no-op detection and generation bumps.
use super::defaults::merge_string_data;
use super::{has_finalizers, meta_str, EventType, ObjKey, State, Store, WriteOptions};
use crate::emulator::patch::{self, PatchType};
use crate::emulator::resources::{self, ResourceType};
use crate::emulator::status::{self, ApiError};
use crate::emulator::validation;
use crate::emulator::{pod_security, quota};
use serde_json::{json, Value};
use std::collections::HashSet;
use std::sync::Arc;

impl Store {
    /// Admission of a new pod: Pod Security (see [`pod_security`]), then ResourceQuota
    /// (see [`quota`]), in the API server's order.
    fn admit_pod(st: &State, ns: &str, name: &str, pod: &Value) -> Result<(), ApiError> {
        let labels = Self::namespace_labels(st, ns);
        if let Some(detail) = pod_security::refuse(&labels, pod) {
            return Err(ApiError::Forbidden {
                group: String::new(),
                resource: "pods".into(),
                name: name.into(),
                detail,
            });
        }
        let quotas: Vec<&Value> =
            Self::scan(st, "", "resourcequotas").filter(|(k, _)| k.namespace == ns).map(|(_, v)| v.as_ref()).collect();
        if quotas.is_empty() {
            return Ok(());
        }
        let used = Self::scan(st, "", "pods").filter(|(k, v)| k.namespace == ns && quota::counts(v)).count() as u64;
        match quota::refuse_pod(&quotas, used) {
            None => Ok(()),
            Some(detail) => {
                Err(ApiError::Forbidden { group: String::new(), resource: "pods".into(), name: name.into(), detail })
            }
        }
    }

    pub fn create(&self, rt: &ResourceType, ns: &str, body: Value, w: &WriteOptions) -> Result<Value, ApiError> {
        let mut st = self.lock();
        self.create_locked(&mut st, rt, ns, body, w)
    }

    pub(super) fn create_locked(
        &self,
        st: &mut State,
        rt: &ResourceType,
        ns: &str,
        body: Value,
        w: &WriteOptions,
    ) -> Result<Value, ApiError> {
        let mut obj = self.prepare_new(st, rt, ns, body)?;
        validation::validate(rt, &obj, None)?;
        let name = meta_str(&obj, "name").to_string();
        if rt.group.is_empty() && rt.kind == "Pod" {
            Self::admit_pod(st, ns, &name, &obj)?;
        }
        let key = Self::key(rt, ns, &name);
        if st.objects.contains_key(&key) {
            return Err(ApiError::AlreadyExists { group: rt.group.clone(), resource: rt.plural.clone(), name });
        }
        patch::record_update(None, &mut obj, &w.field_manager, &rt.api_version(), None);
        if w.dry_run {
            return Ok(obj);
        }
        if rt.namespaced {
            self.ensure_namespace(st, ns);
        }
        let out = self.commit(st, key, EventType::Added, obj, None);
        self.after_write(st, rt, &out);
        Ok(out)
    }

    /// PUT (whole object, resourceVersion precondition when given).
    pub fn replace(
        &self,
        rt: &ResourceType,
        ns: &str,
        name: &str,
        body: Value,
        sub: Option<&str>,
        w: &WriteOptions,
    ) -> Result<Value, ApiError> {
        let mut st = self.lock();
        let key = Self::key(rt, ns, name);
        let Some(old) = st.objects.get(&key).cloned() else {
            return Err(Self::not_found(rt, name));
        };
        if meta_str(&body, "name") != name {
            return Err(ApiError::BadRequest("the name of the object does not match the name on the URL".into()));
        }
        let sent_rv = meta_str(&body, "resourceVersion");
        if !sent_rv.is_empty() && sent_rv != meta_str(&old, "resourceVersion") {
            return Err(ApiError::conflict_modified(&rt.group, &rt.plural, name));
        }
        self.write_update(&mut st, rt, key, old, body, sub, w, None)
    }

    #[allow(clippy::too_many_arguments)]
    pub fn patch(
        &self,
        rt: &ResourceType,
        ns: &str,
        name: &str,
        kind: PatchType,
        body: &Value,
        sub: Option<&str>,
        w: &WriteOptions,
    ) -> Result<(Value, bool), ApiError> {
        let mut st = self.lock();
        let key = Self::key(rt, ns, name);
        let old = st.objects.get(&key).cloned();
        let Some(old) = old else {
            if kind == PatchType::Apply && sub.is_none() {
                let mut body = body.clone();
                if meta_str(&body, "name").is_empty() {
                    body["metadata"]["name"] = json!(name);
                }
                let applied = patch::apply(None, &body, &w.field_manager, w.force, &rt.api_version(), None)?;
                let owners = patch::read_ownership(&applied);
                let mut obj = self.prepare_new(&mut st, rt, ns, applied)?;
                validation::validate(rt, &obj, None)?;
                patch::write_ownership(&mut obj, &owners);
                if w.dry_run {
                    return Ok((obj, true));
                }
                if rt.namespaced {
                    self.ensure_namespace(&mut st, ns);
                }
                let out = self.commit(&mut st, key, EventType::Added, obj, None);
                self.after_write(&mut st, rt, &out);
                return Ok((out, true));
            }
            return Err(Self::not_found(rt, name));
        };
        let patched = match kind {
            PatchType::Json => patch::json_patch(&old, body)?,
            PatchType::Merge => patch::merge_patch(&old, body),
            PatchType::Strategic => patch::strategic_merge(&old, body),
            PatchType::Apply => {
                if body.get("apiVersion").is_none() || body.get("kind").is_none() {
                    return Err(ApiError::BadRequest("invalid object type: /, Kind=".into()));
                }
                let applied = patch::apply(Some(&old), body, &w.field_manager, w.force, &rt.api_version(), sub)?;
                return self.write_update(&mut st, rt, key, old, applied, sub, w, Some(())).map(|v| (v, false));
            }
        };
        let sent_rv = meta_str(&patched, "resourceVersion");
        if !sent_rv.is_empty() && sent_rv != meta_str(&old, "resourceVersion") {
            return Err(ApiError::conflict_modified(&rt.group, &rt.plural, name));
        }
        self.write_update(&mut st, rt, key, old, patched, sub, w, None).map(|v| (v, false))
    }

    /// The common update path: subresource rules, immutables, validation, no-op
    /// detection, generation, ownership, finalization.
    #[allow(clippy::too_many_arguments)]
    fn write_update(
        &self,
        st: &mut State,
        rt: &ResourceType,
        key: ObjKey,
        old: Arc<Value>,
        mut new: Value,
        sub: Option<&str>,
        w: &WriteOptions,
        applied: Option<()>,
    ) -> Result<Value, ApiError> {
        if !new.is_object() {
            return Err(ApiError::BadRequest("Object 'Kind' is missing in request body".into()));
        }
        // Identity and system fields always come from the stored object.
        new["apiVersion"] = json!(rt.api_version());
        new["kind"] = json!(rt.kind);
        for k in [
            "uid",
            "creationTimestamp",
            "namespace",
            "name",
            "generation",
            "deletionTimestamp",
            "deletionGracePeriodSeconds",
            "selfLink",
        ] {
            match old["metadata"].get(k) {
                Some(v) => new["metadata"][k] = v.clone(),
                None => {
                    if let Some(m) = new["metadata"].as_object_mut() {
                        m.remove(k);
                    }
                }
            }
        }
        match sub {
            Some("status") => {
                // Only status changes through the status subresource.
                let status = new.get("status").cloned();
                let mut merged = (*old).clone();
                match status {
                    Some(s) => merged["status"] = s,
                    None => {
                        merged.as_object_mut().map(|m| m.remove("status"));
                    }
                }
                merged["metadata"]["managedFields"] = new["metadata"]["managedFields"].clone();
                if merged["metadata"]["managedFields"].is_null() {
                    merged["metadata"].as_object_mut().map(|m| m.remove("managedFields"));
                }
                new = merged;
            }
            Some(other) => return Err(ApiError::BadRequest(format!("subresource {other:?} is not supported"))),
            None if rt.has_status => match old.get("status") {
                Some(s) => new["status"] = s.clone(),
                None => {
                    new.as_object_mut().map(|m| m.remove("status"));
                }
            },
            None => {}
        }
        if rt.kind == "Secret" && rt.group.is_empty() {
            merge_string_data(&mut new);
        }
        if old["metadata"].get("deletionTimestamp").is_some() {
            // Finalizers may only be removed once deletion started.
            let old_f: HashSet<&str> =
                old["metadata"]["finalizers"].as_array().into_iter().flatten().filter_map(Value::as_str).collect();
            let added = new["metadata"]["finalizers"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(Value::as_str)
                .any(|f| !old_f.contains(f));
            if added {
                return Err(ApiError::Invalid {
                    group: rt.group.clone(),
                    kind: rt.kind.clone(),
                    name: key.name.clone(),
                    causes: vec![status::Cause::forbidden(
                        "metadata.finalizers",
                        "no new finalizers can be added if the object is being deleted",
                    )],
                });
            }
        }
        validation::apply_defaults(rt, &mut new);
        validation::validate(rt, &new, Some(&old))?;
        if applied.is_none() {
            patch::record_update(Some(&old), &mut new, &w.field_manager, &rt.api_version(), sub);
        }
        let spec_changed = {
            let strip = |v: &Value| {
                let mut v = v.clone();
                if let Some(m) = v.as_object_mut() {
                    m.remove("metadata");
                    m.remove("status");
                }
                v
            };
            strip(&old) != strip(&new)
        };
        if spec_changed {
            let g = old["metadata"]["generation"].as_i64().unwrap_or(1);
            new["metadata"]["generation"] = json!(g + 1);
        }
        new["metadata"]["resourceVersion"] = old["metadata"]["resourceVersion"].clone();
        if same_content(&old, &new) {
            return Ok((*old).clone());
        }
        if w.dry_run {
            return Ok(new);
        }
        let deleting = new["metadata"].get("deletionTimestamp").is_some();
        if deleting && !has_finalizers(&new) && !self.awaits_kubelet(rt, &new) {
            let out = self.commit(st, key, EventType::Deleted, new, Some(old));
            self.after_delete(st, rt, &out);
            return Ok(out);
        }
        let out = self.commit(st, key, EventType::Modified, new, Some(old));
        self.after_write(st, rt, &out);
        Ok(out)
    }

    pub(super) fn after_write(&self, st: &mut State, rt: &ResourceType, obj: &Value) {
        if rt.group == "apiextensions.k8s.io" && rt.kind == "CustomResourceDefinition" {
            let (group, plural) = (
                obj["spec"]["group"].as_str().unwrap_or_default(),
                obj["spec"]["names"]["plural"].as_str().unwrap_or_default(),
            );
            st.types.retain(|t| !(t.group == group && t.plural == plural));
            if obj["metadata"].get("deletionTimestamp").is_none() {
                st.types.extend(resources::from_crd(obj));
            }
        }
    }
}

/// Compares two objects ignoring what changes on every write (no-op detection).
fn same_content(a: &Value, b: &Value) -> bool {
    let strip = |v: &Value| {
        let mut v = v.clone();
        if let Some(m) = v["metadata"].as_object_mut() {
            m.remove("resourceVersion");
            if let Some(mf) = m.get_mut("managedFields").and_then(Value::as_array_mut) {
                for e in mf {
                    if let Some(e) = e.as_object_mut() {
                        e.remove("time");
                    }
                }
            }
        }
        v
    };
    strip(a) == strip(b)
}
