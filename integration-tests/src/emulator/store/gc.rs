//! Garbage collection by owner reference, run synchronously after every deletion.
use super::{has_finalizers, meta_str, DeleteOptions, EventType, ObjKey, State, Store};
use crate::emulator::resources::ResourceType;
use serde_json::{json, Value};
use std::collections::{HashMap, HashSet};
use std::sync::Arc;

/// What one round of the collector does to one dependent.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Collect {
    /// An owner is being deleted with the `orphan` finalizer: drop references to it.
    Orphan,
    /// An owner is being deleted in the foreground: delete the dependent the same way.
    Foreground,
    /// Every owner is gone: delete the dependent (background).
    Delete,
    /// Some owners are gone: drop the dangling references.
    PruneRefs,
}

impl Store {
    pub(super) fn dependents<'a>(
        &self,
        st: &'a State,
        uid: &'a str,
    ) -> impl Iterator<Item = (&'a ObjKey, &'a Arc<Value>)> + 'a {
        st.objects.iter().filter(move |(_, v)| {
            v.pointer("/metadata/ownerReferences")
                .and_then(Value::as_array)
                .is_some_and(|refs| refs.iter().any(|r| r["uid"] == uid))
        })
    }

    fn type_of(st: &State, key: &ObjKey) -> Option<ResourceType> {
        st.types.iter().find(|t| t.group == key.group && t.plural == key.plural).cloned()
    }

    /// The garbage collector, run synchronously after every deletion until nothing
    /// changes: dependents whose owners are all gone are deleted (background),
    /// dangling owner references are dropped, foreground and orphan finalizers are
    /// processed.
    pub(super) fn collect_garbage(&self, st: &mut State) {
        for _round in 0..10_000 {
            // Indexes built once per round (one pass): every live uid, and the owners being
            // deleted with the finalizers that matter here. A scan per owner reference
            // made each deletion quadratic in the number of stored objects.
            let uids: HashSet<String> = st.objects.values().map(|v| meta_str(v, "uid").to_string()).collect();
            let deleting: HashMap<String, (bool, bool)> = st
                .objects
                .values()
                .filter(|v| v["metadata"].get("deletionTimestamp").is_some())
                .map(|v| {
                    let fins = v["metadata"]["finalizers"].as_array();
                    let has = |f: &str| fins.is_some_and(|a| a.iter().any(|x| x == f));
                    (meta_str(v, "uid").to_string(), (has("orphan"), has("foregroundDeletion")))
                })
                .collect();
            let deleting_owner = |uid: &str, finalizer: &str| {
                deleting
                    .get(uid)
                    .is_some_and(|&(orphan, foreground)| if finalizer == "orphan" { orphan } else { foreground })
            };
            let mut action: Option<(ObjKey, Collect)> = None;
            for (k, v) in st.objects.iter() {
                let Some(refs) = v.pointer("/metadata/ownerReferences").and_then(Value::as_array) else {
                    continue;
                };
                if refs.is_empty() {
                    continue;
                }
                let uid_of = |r: &Value| r["uid"].as_str().unwrap_or_default().to_string();
                if refs.iter().any(|r| deleting_owner(&uid_of(r), "orphan")) {
                    action = Some((k.clone(), Collect::Orphan));
                    break;
                }
                let being_deleted = v["metadata"].get("deletionTimestamp").is_some();
                if !being_deleted && refs.iter().any(|r| deleting_owner(&uid_of(r), "foregroundDeletion")) {
                    action = Some((k.clone(), Collect::Foreground));
                    break;
                }
                let live = refs.iter().filter(|r| uids.contains(&uid_of(r))).count();
                if live == 0 && !being_deleted {
                    action = Some((k.clone(), Collect::Delete));
                    break;
                }
                if live > 0 && live < refs.len() {
                    action = Some((k.clone(), Collect::PruneRefs));
                    break;
                }
            }
            if action.is_none() {
                // Owners waiting on dependents: finish them once none are left.
                let mut done: Option<(ObjKey, &'static str)> = None;
                for (k, v) in st.objects.iter() {
                    if v["metadata"].get("deletionTimestamp").is_none() {
                        continue;
                    }
                    let fins = v["metadata"]["finalizers"].as_array().cloned().unwrap_or_default();
                    let uid = meta_str(v, "uid");
                    for f in ["foregroundDeletion", "orphan"] {
                        if fins.contains(&json!(f)) && self.dependents(st, uid).next().is_none() {
                            done = Some((k.clone(), f));
                        }
                    }
                    if done.is_some() {
                        break;
                    }
                }
                let Some((k, finalizer)) = done else { return };
                let old = st.objects[&k].clone();
                let mut obj = (*old).clone();
                if let Some(f) = obj["metadata"]["finalizers"].as_array_mut() {
                    f.retain(|x| x != finalizer);
                }
                let Some(rt) = Self::type_of(st, &k) else {
                    return;
                };
                if has_finalizers(&obj) || self.awaits_kubelet(&rt, &obj) {
                    self.commit(st, k, EventType::Modified, obj, Some(old));
                } else {
                    let out = self.commit(st, k, EventType::Deleted, obj, Some(old));
                    self.after_write(st, &rt, &out);
                }
                continue;
            }
            let (k, what) = action.expect("checked");
            let Some(rt) = Self::type_of(st, &k) else {
                return;
            };
            let old = st.objects[&k].clone();
            match what {
                Collect::Orphan | Collect::PruneRefs => {
                    let mut obj = (*old).clone();
                    let orphaning: Vec<String> = st
                        .objects
                        .values()
                        .filter(|v| {
                            v["metadata"].get("deletionTimestamp").is_some()
                                && v["metadata"]["finalizers"].as_array().is_some_and(|f| f.contains(&json!("orphan")))
                        })
                        .map(|v| meta_str(v, "uid").to_string())
                        .collect();
                    if let Some(refs) = obj["metadata"]["ownerReferences"].as_array_mut() {
                        refs.retain(|r| {
                            let u = r["uid"].as_str().unwrap_or_default();
                            uids.contains(u) && !orphaning.iter().any(|o| o == u)
                        });
                        if refs.is_empty() {
                            obj["metadata"].as_object_mut().map(|m| m.remove("ownerReferences"));
                        }
                    }
                    self.commit(st, k, EventType::Modified, obj, Some(old));
                }
                Collect::Foreground => {
                    let opts = DeleteOptions { propagation: Some("Foreground".into()), ..Default::default() };
                    let _ = self.delete_locked(st, &rt, &k.namespace.clone(), &k.name.clone(), &opts);
                }
                Collect::Delete => {
                    let opts = DeleteOptions { propagation: Some("Background".into()), ..Default::default() };
                    let _ = self.delete_locked(st, &rt, &k.namespace.clone(), &k.name.clone(), &opts);
                }
            }
        }
    }
}
