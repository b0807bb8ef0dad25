//! Patch flavours and server-side apply. Merge and JSON patch come from the
//! `json-patch` crate; strategic merge knows the merge keys of the lists the job
//! manager touches; apply tracks field ownership per manager (`managedFields`) so a
//! second manager setting a field another owns gets a 409 unless it forces — the
//! property Lease-based leader election through server-side apply relies on.
use crate::emulator::status::ApiError;
use crate::emulator::time;
use serde_json::{json, Map, Value};
use std::collections::BTreeSet;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PatchType {
    Json,
    Merge,
    Strategic,
    Apply,
}

impl PatchType {
    pub fn from_content_type(ct: &str) -> Option<Self> {
        match ct.split(';').next().unwrap_or_default().trim() {
            "application/json-patch+json" => Some(PatchType::Json),
            "application/merge-patch+json" => Some(PatchType::Merge),
            "application/strategic-merge-patch+json" => Some(PatchType::Strategic),
            "application/apply-patch+yaml" | "application/apply-patch+cbor" => Some(PatchType::Apply),
            _ => None,
        }
    }
}

pub const ACCEPTED_PATCH_TYPES: &str =
    "application/json-patch+json, application/merge-patch+json, application/apply-patch+yaml";
pub const ACCEPTED_PATCH_TYPES_BUILTIN: &str =
    "application/json-patch+json, application/merge-patch+json, application/strategic-merge-patch+json, application/apply-patch+yaml";

pub fn json_patch(target: &Value, patch: &Value) -> Result<Value, ApiError> {
    let ops: json_patch::Patch = serde_json::from_value(patch.clone())
        .map_err(|e| ApiError::BadRequest(format!("error decoding patch: {e}")))?;
    let mut out = target.clone();
    json_patch::patch(&mut out, &ops).map_err(|e| ApiError::Invalid {
        group: String::new(),
        kind: String::new(),
        name: String::new(),
        causes: vec![crate::emulator::status::Cause {
            reason: "FieldValueInvalid",
            field: String::new(),
            message: format!("the server rejected our request due to an error in our request: {e}"),
        }],
    })?;
    Ok(out)
}

pub fn merge_patch(target: &Value, patch: &Value) -> Value {
    let mut out = target.clone();
    json_patch::merge(&mut out, patch);
    out
}

/// The merge key of a list field in strategic merge patch, `None` for atomic lists.
fn merge_key(field: &str, sample: Option<&Value>) -> Option<&'static str> {
    match field {
        "containers" | "initContainers" | "ephemeralContainers" | "volumes" | "env" | "imagePullSecrets" => {
            Some("name")
        }
        "volumeMounts" => Some("mountPath"),
        "conditions" => Some("type"),
        "ownerReferences" => Some("uid"),
        "ports" if sample.is_some_and(|s| s.get("containerPort").is_some()) => Some("containerPort"),
        "ports" => Some("port"),
        _ => None,
    }
}

pub fn strategic_merge(target: &Value, patch: &Value) -> Value {
    match (target, patch) {
        (Value::Object(t), Value::Object(p)) => {
            if p.get("$patch").and_then(Value::as_str) == Some("replace") {
                let mut p = p.clone();
                p.remove("$patch");
                return Value::Object(p);
            }
            let mut out = t.clone();
            for (k, pv) in p {
                if k.starts_with('$') {
                    continue;
                }
                if pv.is_null() {
                    out.remove(k);
                    continue;
                }
                let merged = match (out.get(k), pv) {
                    (Some(Value::Array(ta)), Value::Array(pa)) => match merge_key(k, pa.first().or(ta.first())) {
                        Some(key) => Value::Array(merge_keyed_list(ta, pa, key)),
                        None if k == "finalizers" => {
                            let mut v = ta.clone();
                            for x in pa {
                                if !v.contains(x) {
                                    v.push(x.clone());
                                }
                            }
                            Value::Array(v)
                        }
                        None => pv.clone(),
                    },
                    (Some(tv @ Value::Object(_)), Value::Object(_)) => strategic_merge(tv, pv),
                    _ => strip_directives(pv),
                };
                out.insert(k.clone(), merged);
            }
            Value::Object(out)
        }
        _ => strip_directives(patch),
    }
}

fn strip_directives(v: &Value) -> Value {
    match v {
        Value::Object(m) => Value::Object(
            m.iter()
                .filter(|(k, v)| !k.starts_with('$') && !v.is_null())
                .map(|(k, v)| (k.clone(), strip_directives(v)))
                .collect(),
        ),
        Value::Array(a) => Value::Array(a.iter().map(strip_directives).collect()),
        other => other.clone(),
    }
}

fn merge_keyed_list(target: &[Value], patch: &[Value], key: &str) -> Vec<Value> {
    let mut out: Vec<Value> = target.to_vec();
    for item in patch {
        let k = item.get(key);
        let pos = out.iter().position(|t| t.get(key) == k && k.is_some());
        let delete = item.get("$patch").and_then(Value::as_str) == Some("delete");
        match (pos, delete) {
            (Some(i), true) => {
                out.remove(i);
            }
            (Some(i), false) => out[i] = strategic_merge(&out[i], item),
            (None, true) => {}
            (None, false) => out.push(strip_directives(item)),
        }
    }
    out
}

// ---------------------------------------------------------------------------------
// Field ownership.

pub type FieldPath = Vec<String>;

/// Leaf paths of an object as server-side apply tracks them. Lists are atomic (one
/// leaf); empty objects are leaves; identity and system metadata are not owned.
pub fn leaf_paths(v: &Value) -> BTreeSet<FieldPath> {
    let mut out = BTreeSet::new();
    if let Value::Object(m) = v {
        for (k, child) in m {
            match k.as_str() {
                "apiVersion" | "kind" | "status" => {}
                "metadata" => {
                    for mk in ["labels", "annotations", "ownerReferences", "finalizers"] {
                        if let Some(c) = child.get(mk) {
                            collect(c, vec!["metadata".into(), mk.into()], &mut out);
                        }
                    }
                }
                _ => collect(child, vec![k.clone()], &mut out),
            }
        }
    }
    out
}

/// Leaves under `status` only (the status subresource's ownership).
pub fn status_leaf_paths(v: &Value) -> BTreeSet<FieldPath> {
    let mut out = BTreeSet::new();
    if let Some(s) = v.get("status") {
        collect(s, vec!["status".into()], &mut out);
    }
    out
}

fn collect(v: &Value, prefix: FieldPath, out: &mut BTreeSet<FieldPath>) {
    match v {
        Value::Object(m) if !m.is_empty() => {
            for (k, c) in m {
                let mut p = prefix.clone();
                p.push(k.clone());
                collect(c, p, out);
            }
        }
        _ => {
            out.insert(prefix);
        }
    }
}

fn get_path<'a>(v: &'a Value, p: &[String]) -> Option<&'a Value> {
    p.iter().try_fold(v, |cur, k| cur.get(k))
}

fn remove_path(v: &mut Value, p: &[String]) {
    let Some((last, parents)) = p.split_last() else {
        return;
    };
    let mut cur = v;
    for k in parents {
        match cur.get_mut(k) {
            Some(c) => cur = c,
            None => return,
        }
    }
    if let Some(m) = cur.as_object_mut() {
        m.remove(last);
    }
}

fn overlaps(a: &[String], b: &[String]) -> bool {
    a.starts_with(b) || b.starts_with(a)
}

pub fn render_path(p: &[String]) -> String {
    p.iter().map(|s| format!(".{s}")).collect()
}

/// One `managedFields` entry in memory.
#[derive(Clone, Debug, PartialEq)]
pub struct Ownership {
    pub manager: String,
    pub operation: String,
    pub api_version: String,
    pub subresource: Option<String>,
    pub time: String,
    pub fields: BTreeSet<FieldPath>,
}

fn to_fields_v1(paths: &BTreeSet<FieldPath>) -> Value {
    let mut root = Map::new();
    for p in paths {
        let mut cur = &mut root;
        for k in p {
            cur = cur.entry(format!("f:{k}")).or_insert_with(|| json!({})).as_object_mut().expect("built as objects");
        }
    }
    Value::Object(root)
}

fn from_fields_v1(v: &Value, prefix: FieldPath, out: &mut BTreeSet<FieldPath>) {
    match v.as_object() {
        Some(m) if !m.is_empty() => {
            for (k, c) in m {
                let Some(name) = k.strip_prefix("f:") else {
                    continue;
                };
                let mut p = prefix.clone();
                p.push(name.to_string());
                from_fields_v1(c, p, out);
            }
        }
        _ => {
            if !prefix.is_empty() {
                out.insert(prefix);
            }
        }
    }
}

pub fn read_ownership(obj: &Value) -> Vec<Ownership> {
    obj.pointer("/metadata/managedFields")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .map(|e| {
            let mut fields = BTreeSet::new();
            from_fields_v1(&e["fieldsV1"], vec![], &mut fields);
            Ownership {
                manager: e["manager"].as_str().unwrap_or_default().into(),
                operation: e["operation"].as_str().unwrap_or("Update").into(),
                api_version: e["apiVersion"].as_str().unwrap_or_default().into(),
                subresource: e["subresource"].as_str().map(str::to_string),
                time: e["time"].as_str().unwrap_or_default().into(),
                fields,
            }
        })
        .collect()
}

pub fn write_ownership(obj: &mut Value, owners: &[Ownership]) {
    let entries: Vec<Value> = owners
        .iter()
        .filter(|o| !o.fields.is_empty())
        .map(|o| {
            let mut e = json!({"manager": o.manager, "operation": o.operation, "apiVersion": o.api_version,
                "time": o.time, "fieldsType": "FieldsV1", "fieldsV1": to_fields_v1(&o.fields)});
            if let Some(s) = &o.subresource {
                e["subresource"] = json!(s);
            }
            e
        })
        .collect();
    if entries.is_empty() {
        if let Some(m) = obj["metadata"].as_object_mut() {
            m.remove("managedFields");
        }
    } else {
        obj["metadata"]["managedFields"] = Value::Array(entries);
    }
}

fn entry<'a>(
    owners: &'a mut Vec<Ownership>,
    manager: &str,
    op: &str,
    api_version: &str,
    sub: Option<&str>,
) -> &'a mut Ownership {
    let i = match owners
        .iter()
        .position(|o| o.manager == manager && o.operation == op && o.subresource.as_deref() == sub)
    {
        Some(i) => i,
        None => {
            owners.push(Ownership {
                manager: manager.into(),
                operation: op.into(),
                api_version: api_version.into(),
                subresource: sub.map(str::to_string),
                time: String::new(),
                fields: BTreeSet::new(),
            });
            owners.len() - 1
        }
    };
    let e = &mut owners[i];
    e.time = time::now();
    e.api_version = api_version.into();
    e
}

fn paths_for(v: &Value, sub: Option<&str>) -> BTreeSet<FieldPath> {
    if sub == Some("status") {
        status_leaf_paths(v)
    } else {
        leaf_paths(v)
    }
}

/// Records an Update-operation write (create, PUT, non-apply patches): fields whose
/// value changed move to `manager`; fields that disappeared are owned by nobody.
/// A write that sets `metadata.managedFields` itself (kubectl's upgrade of client-side
/// apply ownership to server-side apply) replaces the record, as on the real server.
pub fn record_update(old: Option<&Value>, new: &mut Value, manager: &str, api_version: &str, sub: Option<&str>) {
    let sent = new.pointer("/metadata/managedFields").filter(|m| m.is_array());
    let rewritten = sent.is_some() && old.and_then(|o| o.pointer("/metadata/managedFields")) != sent;
    let mut owners = if rewritten { read_ownership(new) } else { old.map(read_ownership).unwrap_or_default() };
    let new_paths = paths_for(new, sub);
    let old_paths = old.map(|o| paths_for(o, sub)).unwrap_or_default();
    let changed: Vec<FieldPath> =
        new_paths.iter().filter(|p| old.and_then(|o| get_path(o, p)) != get_path(new, p)).cloned().collect();
    let removed: Vec<&FieldPath> = old_paths.iter().filter(|p| get_path(new, p).is_none()).collect();
    for o in owners.iter_mut() {
        o.fields.retain(|f| !removed.iter().any(|r| overlaps(f, r)) && !changed.iter().any(|c| overlaps(f, c)));
    }
    if !changed.is_empty() {
        entry(&mut owners, manager, "Update", api_version, sub).fields.extend(changed);
    }
    owners.retain(|o| !o.fields.is_empty());
    write_ownership(new, &owners);
}

/// A manager as the API server names it in conflicts: `"kubectl"` for an applier,
/// `"kube-controller-manager" using apps/v1 at 2025-01-01T00:00:00Z` for an updater.
fn print_manager(o: &Ownership) -> String {
    let mut s = format!("{:?}", o.manager);
    if let Some(sub) = &o.subresource {
        s = format!("{s} with subresource {sub:?}");
    }
    if o.operation == "Update" {
        s = if o.time.is_empty() {
            format!("{s} using {}", o.api_version)
        } else {
            format!("{s} using {} at {}", o.api_version, o.time)
        };
    }
    s
}

/// Server-side apply of `applied` (the manager's full intent) onto `current`.
pub fn apply(
    current: Option<&Value>,
    applied: &Value,
    manager: &str,
    force: bool,
    api_version: &str,
    sub: Option<&str>,
) -> Result<Value, ApiError> {
    let mut owners = current.map(read_ownership).unwrap_or_default();
    let new_paths = paths_for(applied, sub);
    let empty = json!({});
    let base = current.unwrap_or(&empty);
    let mut conflicts = Vec::new();
    for p in &new_paths {
        let cur = get_path(base, p);
        if cur.is_none() || cur == get_path(applied, p) {
            continue;
        }
        for o in owners.iter().filter(|o| o.manager != manager) {
            if o.fields.iter().any(|f| overlaps(f, p)) {
                conflicts.push((o.manager.clone(), print_manager(o), render_path(p)));
            }
        }
    }
    if !conflicts.is_empty() && !force {
        conflicts.dedup();
        conflicts.sort_by(|a, b| a.0.cmp(&b.0));
        conflicts.dedup();
        return Err(ApiError::ApplyConflict {
            conflicts: conflicts.into_iter().map(|(_, printed, path)| (printed, path)).collect(),
        });
    }
    // Shared ownership of equal values is allowed; a forced or changed value moves.
    for o in owners.iter_mut().filter(|o| o.manager != manager) {
        o.fields.retain(|f| !new_paths.iter().any(|p| overlaps(f, p) && get_path(base, p) != get_path(applied, p)));
    }
    let mut merged = deep_merge(base, applied);
    let previous: BTreeSet<FieldPath> = owners
        .iter()
        .filter(|o| o.manager == manager && o.operation == "Apply" && o.subresource.as_deref() == sub)
        .flat_map(|o| o.fields.iter().cloned())
        .collect();
    for gone in previous.difference(&new_paths) {
        let owned_elsewhere =
            owners.iter().any(|o| !(o.manager == manager && o.operation == "Apply") && o.fields.contains(gone));
        if !owned_elsewhere && !new_paths.iter().any(|p| overlaps(p, gone)) {
            remove_path(&mut merged, gone);
        }
    }
    let e = entry(&mut owners, manager, "Apply", api_version, sub);
    e.fields = new_paths;
    owners.retain(|o| !o.fields.is_empty());
    write_ownership(&mut merged, &owners);
    Ok(merged)
}

/// Objects merge recursively; lists and scalars from `over` replace.
fn deep_merge(base: &Value, over: &Value) -> Value {
    match (base, over) {
        (Value::Object(b), Value::Object(o)) => {
            let mut out = b.clone();
            for (k, v) in o {
                let merged = match out.get(k) {
                    Some(bv) => deep_merge(bv, v),
                    None => v.clone(),
                };
                out.insert(k.clone(), merged);
            }
            Value::Object(out)
        }
        _ => over.clone(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn strategic_merge_merges_containers_by_name_and_deletes_nulls() {
        let t = json!({"spec": {"containers": [{"name": "a", "image": "1"}, {"name": "b", "image": "1"}], "x": 1}});
        let p = json!({"spec": {"containers": [{"name": "b", "image": "2"}, {"name": "c", "image": "3"}], "x": null}});
        assert_eq!(
            strategic_merge(&t, &p),
            json!({"spec": {"containers": [{"name": "a", "image": "1"}, {"name": "b", "image": "2"}, {"name": "c", "image": "3"}]}})
        );
        let del = json!({"spec": {"containers": [{"name": "a", "$patch": "delete"}]}});
        assert_eq!(strategic_merge(&t, &del)["spec"]["containers"].as_array().unwrap().len(), 1);
    }

    #[test]
    fn apply_by_another_manager_conflicts_unless_forced() {
        let lease = json!({"apiVersion": "coordination.k8s.io/v1", "kind": "Lease", "metadata": {"name": "l"}, "spec": {"holderIdentity": "a"}});
        let v1 = apply(None, &lease, "a", false, "coordination.k8s.io/v1", None).unwrap();
        assert_eq!(v1["metadata"]["managedFields"][0]["fieldsV1"], json!({"f:spec": {"f:holderIdentity": {}}}));
        // Same manager re-applying the same intent: no conflict, same object.
        let again = apply(Some(&v1), &lease, "a", false, "coordination.k8s.io/v1", None).unwrap();
        assert_eq!(again["spec"], v1["spec"]);
        let mut b = lease.clone();
        b["spec"]["holderIdentity"] = json!("b");
        let err = apply(Some(&v1), &b, "b", false, "coordination.k8s.io/v1", None).unwrap_err();
        assert_eq!(err.to_string(), "Apply failed with 1 conflict: conflict with \"a\": .spec.holderIdentity");
        let forced = apply(Some(&v1), &b, "b", true, "coordination.k8s.io/v1", None).unwrap();
        assert_eq!(forced["spec"]["holderIdentity"], "b");
        let owners = read_ownership(&forced);
        assert_eq!(owners.len(), 1);
        assert_eq!(owners[0].manager, "b");
    }

    #[test]
    fn apply_removes_fields_the_manager_no_longer_sets() {
        let first = json!({"metadata": {"name": "d", "labels": {"a": "1", "b": "2"}}, "spec": {"replicas": 2}});
        let v1 = apply(None, &first, "m", false, "apps/v1", None).unwrap();
        let second = json!({"metadata": {"name": "d", "labels": {"a": "1"}}, "spec": {"replicas": 2}});
        let v2 = apply(Some(&v1), &second, "m", false, "apps/v1", None).unwrap();
        assert_eq!(v2["metadata"]["labels"], json!({"a": "1"}));
    }

    #[test]
    fn updates_take_ownership_of_changed_fields() {
        let v1 =
            apply(None, &json!({"spec": {"holderIdentity": "a", "renewTime": "t1"}}), "a", false, "v", None).unwrap();
        let mut v2 = strategic_merge(&v1, &json!({"spec": {"holderIdentity": null, "renewTime": null}}));
        record_update(Some(&v1), &mut v2, "a", "v", None);
        // Released: nobody owns the holder any more, so another manager may apply.
        assert!(apply(Some(&v2), &json!({"spec": {"holderIdentity": "b"}}), "b", false, "v", None).is_ok());
    }
}
