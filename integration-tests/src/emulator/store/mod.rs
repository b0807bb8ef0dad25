//! The storage engine: every object under one global resourceVersion counter, the
//! event history watches resume from (bounded: older resourceVersions answer 410
//! Expired), and the commit that writes an object and its watch event together.
//! Everything runs under one mutex: operations are short and this makes every write
//! and its watch event atomic, like etcd's linearizable revisions.
//!
//! The jobs around the engine live beside it, each an `impl Store` block:
//! - `write`: create, replace and patch; the update path with its 409 conflicts;
//! - `defaults`: what the API server fills in when an object of a kind is created;
//! - `delete`: deletion with preconditions, finalizers and graceful pod termination;
//! - `gc`: the garbage collector that follows owner references after a deletion.
mod defaults;
mod delete;
mod gc;
mod write;

use crate::emulator::resources::{self, ResourceType};
use crate::emulator::selectors::{FieldSelector, LabelSelector};
use crate::emulator::status::ApiError;
use rand::RngExt as _;
use serde_json::{json, Value};
use std::collections::{BTreeMap, VecDeque};
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
    /// Bearer tokens: the administrator's, and ServiceAccount tokens -> (namespace, name).
    admin_token: String,
    sa_tokens: Mutex<std::collections::HashMap<String, (String, String)>>,
    /// Where a kubelet keeps container logs (`{dir}/{ns}_{pod}_{uid}/logs/{container}.log`).
    pod_log_dir: Mutex<Option<std::path::PathBuf>>,
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

impl Store {
    pub fn new(opts: StoreOptions) -> Arc<Self> {
        let (events, _) = broadcast::channel(16_384);
        let store = Arc::new(Self {
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
            pod_log_dir: Mutex::new(None),
            admin_token: format!("emulator-admin.{}", random_suffix(24)),
            sa_tokens: Mutex::new(Default::default()),
        });
        {
            let mut st = store.lock();
            for ns in ["default", "kube-system", "kube-public", "kube-node-lease"] {
                store.ensure_namespace(&mut st, ns);
            }
        }
        store
    }

    fn namespace_type() -> ResourceType {
        resources::builtins().into_iter().find(|t| t.kind == "Namespace").expect("Namespace is a built-in kind")
    }

    /// Namespaces come into being when first used (the real API refuses objects in a
    /// namespace nobody created; the emulator creates it, so tests need no setup step).
    fn ensure_namespace(&self, st: &mut State, ns: &str) {
        let rt = Self::namespace_type();
        if ns.is_empty() || st.objects.contains_key(&Self::key(&rt, "", ns)) {
            return;
        }
        let body = json!({"metadata": {"name": ns}});
        if let Err(e) = self.create_locked(st, &rt, "", body, &WriteOptions::default()) {
            tracing::warn!("creating namespace {ns:?}: {e}");
        }
    }

    /// Creates namespace `ns` unless it exists (see [`Store::ensure_namespace`]).
    pub fn touch_namespace(&self, ns: &str) {
        let mut st = self.lock();
        self.ensure_namespace(&mut st, ns);
    }

    /// The labels of a namespace (Pod Security levels), empty when it has none.
    fn namespace_labels(st: &State, ns: &str) -> Value {
        let rt = Self::namespace_type();
        st.objects.get(&Self::key(&rt, "", ns)).map(|o| o["metadata"]["labels"].clone()).unwrap_or_default()
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn set_graceful_pods(&self, on: bool) {
        self.opts.lock().unwrap_or_else(|e| e.into_inner()).graceful_pods = on;
    }

    /// The administrator's bearer token (in the emulator's kubeconfig).
    pub fn admin_token(&self) -> &str {
        &self.admin_token
    }

    /// A new token for ServiceAccount `namespace/name` (a TokenRequest, or the token a
    /// kubelet projects into a pod).
    pub fn issue_token(&self, namespace: &str, name: &str) -> String {
        let token = format!("emulator-sa.{namespace}.{name}.{}", random_suffix(24));
        self.sa_tokens
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(token.clone(), (namespace.to_string(), name.to_string()));
        token
    }

    /// Who a bearer token is: `Some(None)` for the administrator, `Some(Some((ns, sa)))`
    /// for a ServiceAccount that still exists (`default` always does), `None` otherwise.
    #[allow(clippy::option_option)]
    pub fn token_subject(&self, token: &str) -> Option<Option<(String, String)>> {
        if token == self.admin_token {
            return Some(None);
        }
        let (ns, name) = self.sa_tokens.lock().unwrap_or_else(|e| e.into_inner()).get(token).cloned()?;
        let exists = name == "default" || {
            let st = self.lock();
            st.objects.contains_key(&ObjKey {
                group: String::new(),
                plural: "serviceaccounts".into(),
                namespace: ns.clone(),
                name: name.clone(),
            })
        };
        exists.then_some(Some((ns, name)))
    }

    /// The RBAC objects in force, for the authoriser.
    pub fn rbac_policy(&self) -> crate::emulator::rbac::Policy {
        let st = self.lock();
        let all = |plural: &str| -> Vec<Value> {
            Self::scan(&st, "rbac.authorization.k8s.io", plural).map(|(_, v)| (**v).clone()).collect()
        };
        crate::emulator::rbac::Policy {
            roles: all("roles"),
            cluster_roles: all("clusterroles"),
            role_bindings: all("rolebindings"),
            cluster_role_bindings: all("clusterrolebindings"),
        }
    }

    /// A kubelet announces where container logs are (`pods/{name}/log` reads them).
    pub fn set_pod_log_dir(&self, dir: std::path::PathBuf) {
        *self.pod_log_dir.lock().unwrap_or_else(|e| e.into_inner()) = Some(dir);
    }

    /// The log file of one container of a pod, if a kubelet keeps logs.
    pub fn pod_log_path(&self, pod: &Value, container: &str) -> Option<std::path::PathBuf> {
        let dir = self.pod_log_dir.lock().unwrap_or_else(|e| e.into_inner()).clone()?;
        let (ns, name, uid) = (meta_str(pod, "namespace"), meta_str(pod, "name"), meta_str(pod, "uid"));
        Some(dir.join(format!("{ns}_{name}_{uid}")).join("logs").join(format!("{container}.log")))
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

    // ---- the one place a change is stored -------------------------------------

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
}
