//! The object store: one global resourceVersion counter, an event history for watches
//! (bounded: older resourceVersions answer 410 Expired), optimistic concurrency,
//! finalizers, graceful pod deletion and owner-reference garbage collection.
//! Everything runs under one mutex: operations are short and this makes every write
//! and its watch event atomic, like etcd's linearizable revisions.
use crate::emulator::patch::{self, PatchType};
use crate::emulator::quota;
use crate::emulator::resources::{self, ResourceType};
use crate::emulator::selectors::{FieldSelector, LabelSelector};
use crate::emulator::status::{self, ApiError};
use crate::emulator::time;
use crate::emulator::validation;
use base64::Engine as _;
use rand::Rng as _;
use serde_json::{json, Value};
use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard};
use tokio::sync::broadcast;

#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ObjKey {
    pub group: String,
    pub plural: String,
    pub namespace: String,
    pub name: String,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EventType {
    Added,
    Modified,
    Deleted,
}

impl EventType {
    pub fn as_str(self) -> &'static str {
        match self {
            EventType::Added => "ADDED",
            EventType::Modified => "MODIFIED",
            EventType::Deleted => "DELETED",
        }
    }
}

/// One committed change.
#[derive(Clone, Debug)]
pub struct StoreEvent {
    pub rv: u64,
    pub kind: EventType,
    pub key: ObjKey,
    pub object: Arc<Value>,
    /// The object before a MODIFIED change (selector transitions on watches).
    pub previous: Option<Arc<Value>>,
}

/// Who writes and how (query parameters of the request).
#[derive(Clone, Debug, Default)]
pub struct WriteOptions {
    pub field_manager: String,
    pub force: bool,
    pub dry_run: bool,
}

#[derive(Clone, Debug, Default)]
pub struct DeleteOptions {
    /// `Foreground`, `Background`, `Orphan`; `None` = the kind's default.
    pub propagation: Option<String>,
    pub grace_period_seconds: Option<i64>,
    pub precondition_uid: Option<String>,
    pub precondition_rv: Option<String>,
    pub dry_run: bool,
}

pub enum DeleteOutcome {
    /// Gone now; the final state of the object.
    Deleted(Value),
    /// Marked for deletion (finalizers, graceful pod termination).
    Pending(Value),
}

#[derive(Clone, Debug)]
pub struct StoreOptions {
    /// How many events watches can resume from.
    pub history: usize,
    /// Pods bound to a node terminate gracefully (a kubelet finalizes them).
    pub graceful_pods: bool,
}

impl Default for StoreOptions {
    fn default() -> Self {
        Self { history: 50_000, graceful_pods: false }
    }
}

struct State {
    rv: u64,
    objects: BTreeMap<ObjKey, Arc<Value>>,
    types: Vec<ResourceType>,
    history: VecDeque<Arc<StoreEvent>>,
    /// Events at or below this resourceVersion were dropped from history.
    compacted: u64,
    next_cluster_ip: u32,
}

pub struct Store {
    state: Mutex<State>,
    events: broadcast::Sender<Arc<StoreEvent>>,
    opts: Mutex<StoreOptions>,
}

const NAME_CHARS: &[u8] = b"bcdfghjklmnpqrstvwxz2456789";

pub fn random_suffix(n: usize) -> String {
    let mut rng = rand::rng();
    (0..n).map(|_| NAME_CHARS[rng.random_range(0..NAME_CHARS.len())] as char).collect()
}

pub fn new_uid() -> String {
    let b: [u8; 16] = rand::rng().random();
    let h: String = b.iter().map(|x| format!("{x:02x}")).collect();
    format!("{}-{}-4{}-a{}-{}", &h[0..8], &h[8..12], &h[13..16], &h[17..20], &h[20..32])
}

pub fn meta_str<'a>(obj: &'a Value, field: &str) -> &'a str {
    obj["metadata"][field].as_str().unwrap_or_default()
}

fn has_finalizers(obj: &Value) -> bool {
    obj.pointer("/metadata/finalizers").and_then(Value::as_array).is_some_and(|a| !a.is_empty())
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

impl Store {
    pub fn new(opts: StoreOptions) -> Arc<Self> {
        let (events, _) = broadcast::channel(16_384);
        Arc::new(Self {
            state: Mutex::new(State {
                rv: 1000,
                objects: BTreeMap::new(),
                types: resources::builtins(),
                history: VecDeque::new(),
                compacted: 1000,
                next_cluster_ip: 10,
            }),
            events,
            opts: Mutex::new(opts),
        })
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn set_graceful_pods(&self, on: bool) {
        self.opts.lock().unwrap_or_else(|e| e.into_inner()).graceful_pods = on;
    }

    fn options(&self) -> StoreOptions {
        self.opts.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    pub fn types(&self) -> Vec<ResourceType> {
        self.lock().types.clone()
    }

    pub fn find_type(&self, group: &str, version: &str, plural: &str) -> Option<ResourceType> {
        self.lock().types.iter().find(|t| t.group == group && t.version == version && t.plural == plural).cloned()
    }

    pub fn find_kind(&self, api_version: &str, kind: &str) -> Option<ResourceType> {
        self.lock().types.iter().find(|t| t.api_version() == api_version && t.kind == kind).cloned()
    }

    pub fn current_rv(&self) -> u64 {
        self.lock().rv
    }

    pub fn subscribe(&self) -> broadcast::Receiver<Arc<StoreEvent>> {
        self.events.subscribe()
    }

    /// The objects of one type: a range of the ordered map, not a scan of everything.
    fn scan<'a>(st: &'a State, group: &str, plural: &str) -> impl Iterator<Item = (&'a ObjKey, &'a Arc<Value>)> + 'a {
        let (g, p) = (group.to_string(), plural.to_string());
        let start = ObjKey { group: g.clone(), plural: p.clone(), namespace: String::new(), name: String::new() };
        st.objects.range(start..).take_while(move |(k, _)| k.group == g && k.plural == p)
    }

    /// ResourceQuota admission of a new pod (see [`quota`]).
    fn admit_pod(st: &State, ns: &str, name: &str) -> Result<(), ApiError> {
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

    fn key(rt: &ResourceType, ns: &str, name: &str) -> ObjKey {
        ObjKey {
            group: rt.group.clone(),
            plural: rt.plural.clone(),
            namespace: if rt.namespaced { ns.to_string() } else { String::new() },
            name: name.to_string(),
        }
    }

    fn not_found(rt: &ResourceType, name: &str) -> ApiError {
        ApiError::NotFound { group: rt.group.clone(), resource: rt.plural.clone(), name: name.into() }
    }

    // ---- reads ----------------------------------------------------------------

    pub fn get(&self, rt: &ResourceType, ns: &str, name: &str) -> Result<Value, ApiError> {
        let st = self.lock();
        st.objects.get(&Self::key(rt, ns, name)).map(|v| (**v).clone()).ok_or_else(|| Self::not_found(rt, name))
    }

    /// Objects of a type (all namespaces when `ns` is `None`) and the list's resourceVersion.
    pub fn list(
        &self,
        rt: &ResourceType,
        ns: Option<&str>,
        labels: &LabelSelector,
        fields: &FieldSelector,
    ) -> (Vec<Value>, u64) {
        let st = self.lock();
        let items = Self::scan(&st, &rt.group, &rt.plural)
            .filter(|(k, _)| ns.is_none_or(|n| k.namespace == n))
            .filter(|(_, v)| labels.matches_object(v) && fields.matches(v))
            .map(|(_, v)| (**v).clone())
            .collect();
        (items, st.rv)
    }

    /// Everything of a type, for controllers.
    pub fn all(&self, group: &str, plural: &str) -> Vec<Arc<Value>> {
        let st = self.lock();
        Self::scan(&st, group, plural).map(|(_, v)| v.clone()).collect()
    }

    /// Starts a watch: the events after `from` (or synthetic ADDED events for the
    /// current state when `from` is `None`), plus a receiver for what follows.
    #[allow(clippy::type_complexity)]
    pub fn watch_from(
        &self,
        rt: &ResourceType,
        ns: Option<&str>,
        from: Option<u64>,
    ) -> Result<(Vec<Arc<StoreEvent>>, u64, broadcast::Receiver<Arc<StoreEvent>>), ApiError> {
        let st = self.lock();
        let rx = self.events.subscribe();
        let matches = |k: &ObjKey| k.group == rt.group && k.plural == rt.plural && ns.is_none_or(|n| k.namespace == n);
        let backlog = match from {
            None => Self::scan(&st, &rt.group, &rt.plural)
                .filter(|(k, _)| matches(k))
                .map(|(k, v)| {
                    Arc::new(StoreEvent {
                        rv: st.rv,
                        kind: EventType::Added,
                        key: k.clone(),
                        object: v.clone(),
                        previous: None,
                    })
                })
                .collect(),
            Some(rv) if rv < st.compacted => return Err(ApiError::Expired { requested: rv, oldest: st.compacted + 1 }),
            Some(rv) => st.history.iter().filter(|e| e.rv > rv && matches(&e.key)).cloned().collect(),
        };
        Ok((backlog, st.rv, rx))
    }

    // ---- writes ---------------------------------------------------------------

    fn commit(&self, st: &mut State, key: ObjKey, kind: EventType, obj: Value, previous: Option<Arc<Value>>) -> Value {
        st.rv += 1;
        let mut obj = obj;
        if kind != EventType::Deleted {
            obj["metadata"]["resourceVersion"] = json!(st.rv.to_string());
        }
        let arc = Arc::new(obj.clone());
        match kind {
            EventType::Deleted => {
                st.objects.remove(&key);
            }
            _ => {
                st.objects.insert(key.clone(), arc.clone());
            }
        }
        let ev = Arc::new(StoreEvent { rv: st.rv, kind, key, object: arc, previous });
        st.history.push_back(ev.clone());
        let cap = self.options().history.max(16);
        while st.history.len() > cap {
            if let Some(old) = st.history.pop_front() {
                st.compacted = old.rv;
            }
        }
        let _ = self.events.send(ev);
        obj
    }

    /// Kind-specific normalization on create: ids, defaults, status reset.
    fn prepare_new(&self, st: &mut State, rt: &ResourceType, ns: &str, mut obj: Value) -> Result<Value, ApiError> {
        if !obj.is_object() {
            return Err(ApiError::BadRequest("Object 'Kind' is missing in request body".into()));
        }
        obj["apiVersion"] = json!(rt.api_version());
        obj["kind"] = json!(rt.kind);
        if !obj["metadata"].is_object() {
            obj["metadata"] = json!({});
        }
        if rt.namespaced {
            match obj["metadata"]["namespace"].as_str() {
                Some(n) if n != ns => {
                    return Err(ApiError::BadRequest(
                        "the namespace of the provided object does not match the namespace sent on the request".into(),
                    ))
                }
                _ => obj["metadata"]["namespace"] = json!(ns),
            }
        } else if let Some(m) = obj["metadata"].as_object_mut() {
            m.remove("namespace");
        }
        if meta_str(&obj, "name").is_empty() {
            let prefix = meta_str(&obj, "generateName").to_string();
            if prefix.is_empty() {
                return Err(ApiError::Invalid {
                    group: rt.group.clone(),
                    kind: rt.kind.clone(),
                    name: String::new(),
                    causes: vec![status::Cause {
                        reason: "FieldValueRequired",
                        field: "metadata.name".into(),
                        message: "Required value: name or generateName is required".into(),
                    }],
                });
            }
            let prefix: String = prefix.chars().take(58).collect();
            let name = (0..8)
                .map(|_| format!("{prefix}{}", random_suffix(5)))
                .find(|n| !st.objects.contains_key(&Self::key(rt, ns, n)))
                .unwrap_or_else(|| format!("{prefix}{}", random_suffix(5)));
            obj["metadata"]["name"] = json!(name);
        }
        let uid = new_uid();
        {
            let m = obj["metadata"].as_object_mut().expect("set above");
            m.insert("uid".into(), json!(uid));
            m.insert("creationTimestamp".into(), json!(time::now()));
            m.insert("generation".into(), json!(1));
            for k in ["resourceVersion", "deletionTimestamp", "deletionGracePeriodSeconds", "selfLink"] {
                m.remove(k);
            }
        }
        if rt.has_status {
            if let Some(m) = obj.as_object_mut() {
                m.remove("status");
            }
        }
        match (rt.group.as_str(), rt.kind.as_str()) {
            ("", "Secret") => merge_string_data(&mut obj),
            ("", "Pod") => obj["status"] = json!({"phase": "Pending", "qosClass": qos_class(&obj["spec"])}),
            ("batch", "Job") => job_selector(rt, &mut obj, &uid)?,
            ("", "Service") => {
                if obj["spec"]["clusterIP"].as_str() != Some("None")
                    && obj["spec"]["type"].as_str() != Some("ExternalName")
                {
                    st.next_cluster_ip += 1;
                    let n = st.next_cluster_ip;
                    let ip = format!("10.96.{}.{}", n / 250, n % 250 + 1);
                    obj["spec"]["clusterIP"] = json!(ip);
                    obj["spec"]["clusterIPs"] = json!([ip]);
                }
                obj["spec"]["ipFamilies"] = json!(["IPv4"]);
                obj["spec"]["ipFamilyPolicy"] = json!("SingleStack");
                obj["spec"]["internalTrafficPolicy"] = json!("Cluster");
                obj["status"] = json!({"loadBalancer": {}});
            }
            ("apiextensions.k8s.io", "CustomResourceDefinition") => {
                let names = obj["spec"]["names"].clone();
                let storage: Vec<Value> = obj["spec"]["versions"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .filter(|v| v["storage"] == json!(true))
                    .map(|v| v["name"].clone())
                    .collect();
                let now = time::now();
                obj["status"] = json!({
                    "acceptedNames": names,
                    "conditions": [
                        {"type": "NamesAccepted", "status": "True", "reason": "NoConflicts", "message": "no conflicts found", "lastTransitionTime": now},
                        {"type": "Established", "status": "True", "reason": "InitialNamesAccepted", "message": "the initial names have been accepted", "lastTransitionTime": now},
                    ],
                    "storedVersions": storage,
                });
            }
            _ => {}
        }
        validation::apply_defaults(rt, &mut obj);
        Ok(obj)
    }

    pub fn create(&self, rt: &ResourceType, ns: &str, body: Value, w: &WriteOptions) -> Result<Value, ApiError> {
        let mut st = self.lock();
        self.create_locked(&mut st, rt, ns, body, w)
    }

    fn create_locked(
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
            Self::admit_pod(st, ns, &name)?;
        }
        let key = Self::key(rt, ns, &name);
        if st.objects.contains_key(&key) {
            return Err(ApiError::AlreadyExists { group: rt.group.clone(), resource: rt.plural.clone(), name });
        }
        patch::record_update(None, &mut obj, &w.field_manager, &rt.api_version(), None);
        if w.dry_run {
            return Ok(obj);
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

    fn awaits_kubelet(&self, rt: &ResourceType, obj: &Value) -> bool {
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

    fn delete_locked(
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

    fn dependents<'a>(&self, st: &'a State, uid: &'a str) -> impl Iterator<Item = (&'a ObjKey, &'a Arc<Value>)> + 'a {
        st.objects.iter().filter(move |(_, v)| {
            v.pointer("/metadata/ownerReferences")
                .and_then(Value::as_array)
                .is_some_and(|refs| refs.iter().any(|r| r["uid"] == uid))
        })
    }

    fn after_write(&self, st: &mut State, rt: &ResourceType, obj: &Value) {
        if rt.group == "apiextensions.k8s.io" && rt.kind == "CustomResourceDefinition" {
            let name = meta_str(obj, "name");
            let (group, plural) = (
                obj["spec"]["group"].as_str().unwrap_or_default(),
                obj["spec"]["names"]["plural"].as_str().unwrap_or_default(),
            );
            st.types.retain(|t| !(t.group == group && t.plural == plural));
            if obj["metadata"].get("deletionTimestamp").is_none() {
                st.types.extend(resources::from_crd(obj));
            }
            let _ = name;
        }
    }

    fn after_delete(&self, st: &mut State, rt: &ResourceType, obj: &Value) {
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

    fn type_of(st: &State, key: &ObjKey) -> Option<ResourceType> {
        st.types.iter().find(|t| t.group == key.group && t.plural == key.plural).cloned()
    }

    /// The garbage collector, run synchronously after every deletion until nothing
    /// changes: dependents whose owners are all gone are deleted (background),
    /// dangling owner references are dropped, foreground and orphan finalizers are
    /// processed.
    fn collect_garbage(&self, st: &mut State) {
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
            let mut action: Option<(ObjKey, &'static str)> = None;
            for (k, v) in st.objects.iter() {
                let Some(refs) = v.pointer("/metadata/ownerReferences").and_then(Value::as_array) else {
                    continue;
                };
                if refs.is_empty() {
                    continue;
                }
                let uid_of = |r: &Value| r["uid"].as_str().unwrap_or_default().to_string();
                if refs.iter().any(|r| deleting_owner(&uid_of(r), "orphan")) {
                    action = Some((k.clone(), "orphan"));
                    break;
                }
                let being_deleted = v["metadata"].get("deletionTimestamp").is_some();
                if !being_deleted && refs.iter().any(|r| deleting_owner(&uid_of(r), "foregroundDeletion")) {
                    action = Some((k.clone(), "foreground"));
                    break;
                }
                let live = refs.iter().filter(|r| uids.contains(&uid_of(r))).count();
                if live == 0 && !being_deleted {
                    action = Some((k.clone(), "delete"));
                    break;
                }
                if live > 0 && live < refs.len() {
                    action = Some((k.clone(), "prune-refs"));
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
                "orphan" | "prune-refs" => {
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
                "foreground" => {
                    let opts = DeleteOptions { propagation: Some("Foreground".into()), ..Default::default() };
                    let _ = self.delete_locked(st, &rt, &k.namespace.clone(), &k.name.clone(), &opts);
                }
                _ => {
                    let opts = DeleteOptions { propagation: Some("Background".into()), ..Default::default() };
                    let _ = self.delete_locked(st, &rt, &k.namespace.clone(), &k.name.clone(), &opts);
                }
            }
        }
    }
}

fn merge_string_data(obj: &mut Value) {
    if let Some(sd) = obj.as_object_mut().and_then(|m| m.remove("stringData")) {
        if let Some(sd) = sd.as_object() {
            for (k, v) in sd {
                let enc = base64::engine::general_purpose::STANDARD.encode(v.as_str().unwrap_or_default());
                obj["data"][k] = json!(enc);
            }
        }
    }
}

fn qos_class(spec: &Value) -> &'static str {
    let containers: Vec<&Value> = spec["containers"].as_array().into_iter().flatten().collect();
    let any = containers.iter().any(|c| c["resources"]["requests"].is_object() || c["resources"]["limits"].is_object());
    if !any {
        return "BestEffort";
    }
    let guaranteed = containers.iter().all(|c| {
        let (r, l) = (&c["resources"]["requests"], &c["resources"]["limits"]);
        ["cpu", "memory"].iter().all(|k| l.get(k).is_some() && (r.get(k).is_none() || r.get(k) == l.get(k)))
    });
    if guaranteed {
        "Guaranteed"
    } else {
        "Burstable"
    }
}

/// The Job API's selector generation (`manualSelector` unset).
fn job_selector(rt: &ResourceType, obj: &mut Value, uid: &str) -> Result<(), ApiError> {
    if obj["spec"]["manualSelector"] == json!(true) {
        return Ok(());
    }
    if obj["spec"].get("selector").is_some_and(|s| !s.is_null()) {
        return Err(ApiError::Invalid {
            group: rt.group.clone(),
            kind: rt.kind.clone(),
            name: meta_str(obj, "name").into(),
            causes: vec![status::Cause::invalid(
                "spec.selector",
                &obj["spec"]["selector"],
                "`selector` will be auto-generated",
            )],
        });
    }
    let name = meta_str(obj, "name").to_string();
    obj["spec"]["selector"] = json!({"matchLabels": {"batch.kubernetes.io/controller-uid": uid}});
    let labels = &mut obj["spec"]["template"]["metadata"]["labels"];
    for (k, v) in [
        ("controller-uid", uid),
        ("batch.kubernetes.io/controller-uid", uid),
        ("job-name", &name),
        ("batch.kubernetes.io/job-name", &name),
    ] {
        labels[k] = json!(v);
    }
    Ok(())
}
