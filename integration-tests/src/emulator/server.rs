//! The HTTP front: routing of the API's URL scheme, query parameters, content types,
//! watch streaming, discovery, fault injection and the request log.
use crate::emulator::faults::{self, Fault, FaultRule, Faults};
use crate::emulator::patch::{self, PatchType};
use crate::emulator::resources::ResourceType;
use crate::emulator::selectors::{FieldSelector, LabelSelector};
use crate::emulator::status::{self, ApiError};
use crate::emulator::store::{meta_str, DeleteOptions, DeleteOutcome, EventType, Store, StoreEvent, WriteOptions};
use bytes::Bytes;
use http::{header, Method, Request, Response, StatusCode};
use http_body_util::{combinators::BoxBody, BodyExt, Full, Limited, StreamBody};
use hyper::body::{Frame, Incoming};
use serde::Serialize;
use serde_json::{json, Value};
use std::collections::{BTreeSet, HashMap};
use std::convert::Infallible;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::{mpsc, watch};

pub type Body = BoxBody<Bytes, Infallible>;
const MAX_BODY: usize = 3 * 1024 * 1024;

/// One served request, as the emulator's request log keeps it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct RequestRecord {
    pub verb: String,
    pub group: String,
    pub resource: String,
    pub namespace: String,
    pub name: String,
    pub subresource: String,
    pub code: u16,
    pub field_manager: String,
    pub user_agent: String,
}

impl RequestRecord {
    pub fn is_write(&self) -> bool {
        matches!(self.verb.as_str(), "create" | "update" | "patch" | "delete" | "deletecollection")
    }
}

#[derive(Default)]
pub struct RequestLog(Mutex<Vec<RequestRecord>>);

impl RequestLog {
    pub fn push(&self, r: RequestRecord) {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).push(r);
    }
    pub fn snapshot(&self) -> Vec<RequestRecord> {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }
    pub fn clear(&self) {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).clear();
    }
}

pub struct ServerState {
    pub store: Arc<Store>,
    pub faults: Arc<Faults>,
    pub log: Arc<RequestLog>,
    /// Bumped to close every open watch stream.
    pub watch_generation: watch::Sender<u64>,
    pub bookmark_interval: Duration,
}

struct Ctx {
    verb: &'static str,
    record: RequestRecord,
}

fn full(code: StatusCode, body: &Value) -> Response<Body> {
    Response::builder()
        .status(code)
        .header(header::CONTENT_TYPE, "application/json")
        .body(Full::new(Bytes::from(body.to_string())).boxed())
        .expect("static response parts are valid")
}

fn error_response(e: &ApiError) -> Response<Body> {
    let mut r = full(StatusCode::from_u16(e.code()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR), &e.status_body());
    if let ApiError::TooManyRequests { retry_after_secs } = e {
        r.headers_mut().insert(header::RETRY_AFTER, (*retry_after_secs).into());
    }
    r
}

fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'+' => out.push(b' '),
            b'%' if i + 2 < b.len() => {
                match u8::from_str_radix(std::str::from_utf8(&b[i + 1..i + 3]).unwrap_or("zz"), 16) {
                    Ok(v) => {
                        out.push(v);
                        i += 2;
                    }
                    Err(_) => out.push(b'%'),
                }
            }
            c => out.push(c),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

pub fn parse_query(q: Option<&str>) -> HashMap<String, String> {
    q.unwrap_or_default()
        .split('&')
        .filter(|p| !p.is_empty())
        .map(|p| match p.split_once('=') {
            Some((k, v)) => (percent_decode(k), percent_decode(v)),
            None => (percent_decode(p), String::new()),
        })
        .collect()
}

/// Where a request points after parsing the path.
#[derive(Debug, PartialEq)]
enum Route {
    Discovery(Value),
    Resource { rt: Box<ResourceType>, namespace: Option<String>, name: Option<String>, sub: Option<String> },
    Namespace(Option<String>),
    Admin(Vec<String>),
}

pub async fn handle(state: Arc<ServerState>, req: Request<Incoming>) -> Result<Response<Body>, Infallible> {
    let (parts, body) = req.into_parts();
    let query = parse_query(parts.uri.query());
    let path = parts.uri.path().to_string();
    let user_agent =
        parts.headers.get(header::USER_AGENT).and_then(|v| v.to_str().ok()).unwrap_or_default().to_string();
    let content_type =
        parts.headers.get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok()).unwrap_or_default().to_string();
    let bytes = match Limited::new(body, MAX_BODY).collect().await {
        Ok(b) => b.to_bytes(),
        Err(_) => return Ok(error_response(&ApiError::TooLarge(MAX_BODY))),
    };
    let route = match route(&state.store, &path) {
        Ok(r) => r,
        Err(e) => return Ok(error_response(&e)),
    };
    match route {
        Route::Discovery(v) => Ok(full(StatusCode::OK, &v)),
        Route::Admin(segs) => Ok(admin(&state, &parts.method, &segs, &bytes)),
        Route::Namespace(name) => Ok(namespace(&state.store, name)),
        Route::Resource { rt, namespace, name, sub } => {
            let watching = matches!(query.get("watch").map(String::as_str), Some("true") | Some("1"));
            let verb = match (&parts.method, name.is_some()) {
                (&Method::GET, true) => "get",
                (&Method::GET, false) if watching => "watch",
                (&Method::GET, false) => "list",
                (&Method::POST, false) => "create",
                (&Method::PUT, true) => "update",
                (&Method::PATCH, true) => "patch",
                (&Method::DELETE, true) => "delete",
                (&Method::DELETE, false) => "deletecollection",
                _ => return Ok(error_response(&ApiError::MethodNotAllowed)),
            };
            let field_manager = query.get("fieldManager").cloned().unwrap_or_else(|| {
                user_agent.split('/').next().filter(|s| !s.is_empty()).unwrap_or("unknown").to_string()
            });
            let mut ctx = Ctx {
                verb,
                record: RequestRecord {
                    verb: verb.into(),
                    group: rt.group.clone(),
                    resource: rt.plural.clone(),
                    namespace: namespace.clone().unwrap_or_default(),
                    name: name.clone().unwrap_or_default(),
                    subresource: sub.clone().unwrap_or_default(),
                    code: 0,
                    field_manager: field_manager.clone(),
                    user_agent,
                },
            };
            let picked = state.faults.pick(verb, &rt.plural);
            if let Some(d) = faults::latency(&picked) {
                tokio::time::sleep(d).await;
            }
            let injected = picked.iter().find_map(|f| match f {
                Fault::TooManyRequests { retry_after_secs } => {
                    Some(ApiError::TooManyRequests { retry_after_secs: *retry_after_secs })
                }
                Fault::InternalError => Some(ApiError::Internal("injected fault".into())),
                Fault::Conflict => {
                    Some(ApiError::conflict_modified(&rt.group, &rt.plural, name.as_deref().unwrap_or_default()))
                }
                _ => None,
            });
            let drop_after = picked.iter().find_map(|f| match f {
                Fault::DropWatch { after_millis } => Some(Duration::from_millis(*after_millis)),
                _ => None,
            });
            let resp = match injected {
                Some(e) => error_response(&e),
                None => {
                    let req = ResourceRequest {
                        rt: &rt,
                        namespace: namespace.as_deref(),
                        name: name.as_deref(),
                        sub: sub.as_deref(),
                        query: &query,
                        content_type: &content_type,
                        body: &bytes,
                        field_manager,
                    };
                    match serve_resource(&state, &mut ctx, req, drop_after) {
                        Ok(r) => r,
                        Err(e) => error_response(&e),
                    }
                }
            };
            ctx.record.code = resp.status().as_u16();
            state.log.push(ctx.record);
            Ok(resp)
        }
    }
}

fn route(store: &Store, path: &str) -> Result<Route, ApiError> {
    let segs: Vec<String> = path.trim_matches('/').split('/').filter(|s| !s.is_empty()).map(percent_decode).collect();
    let s: Vec<&str> = segs.iter().map(String::as_str).collect();
    let types = store.types();
    match s.as_slice() {
        ["emulator", rest @ ..] => Ok(Route::Admin(rest.iter().map(|x| x.to_string()).collect())),
        ["version"] => Ok(Route::Discovery(json!({"major": "1", "minor": "33", "gitVersion": "v1.33.0-emulator",
            "gitCommit": "emulator", "gitTreeState": "clean", "buildDate": "2025-04-23T00:00:00Z",
            "goVersion": "go1.24", "compiler": "gc", "platform": "linux/amd64"}))),
        ["healthz"] | ["readyz"] | ["livez"] => Ok(Route::Discovery(json!("ok"))),
        ["api"] => Ok(Route::Discovery(json!({"kind": "APIVersions", "versions": ["v1"],
            "serverAddressByClientCIDRs": [{"clientCIDR": "0.0.0.0/0", "serverAddress": "127.0.0.1"}]}))),
        ["apis"] => {
            let mut groups: Vec<(String, BTreeSet<String>)> = Vec::new();
            for t in types.iter().filter(|t| !t.group.is_empty()) {
                match groups.iter_mut().find(|(g, _)| *g == t.group) {
                    Some((_, v)) => {
                        v.insert(t.version.clone());
                    }
                    None => groups.push((t.group.clone(), BTreeSet::from([t.version.clone()]))),
                }
            }
            let groups: Vec<Value> = groups.iter().map(|(g, vs)| api_group(g, vs)).collect();
            Ok(Route::Discovery(json!({"kind": "APIGroupList", "apiVersion": "v1", "groups": groups})))
        }
        ["apis", g] => {
            let vs: BTreeSet<String> = types.iter().filter(|t| t.group == *g).map(|t| t.version.clone()).collect();
            if vs.is_empty() {
                return Err(ApiError::NoResource);
            }
            let mut v = api_group(g, &vs);
            v["apiVersion"] = json!("v1");
            Ok(Route::Discovery(v))
        }
        ["api", "v1"] => Ok(Route::Discovery(resource_list("", "v1", &types))),
        ["apis", g, v] => {
            if !types.iter().any(|t| t.group == *g && t.version == *v) {
                return Err(ApiError::NoResource);
            }
            Ok(Route::Discovery(resource_list(g, v, &types)))
        }
        ["api", "v1", "namespaces"] => Ok(Route::Namespace(None)),
        ["api", "v1", "namespaces", ns] => Ok(Route::Namespace(Some(ns.to_string()))),
        ["api", "v1", rest @ ..] => resource_route(&types, "", "v1", rest),
        ["apis", g, v, rest @ ..] => resource_route(&types, g, v, rest),
        _ => Err(ApiError::NoResource),
    }
}

fn api_group(g: &str, versions: &BTreeSet<String>) -> Value {
    let vs: Vec<Value> = versions.iter().map(|v| json!({"groupVersion": format!("{g}/{v}"), "version": v})).collect();
    json!({"kind": "APIGroup", "name": g, "versions": vs, "preferredVersion": vs[0]})
}

fn resource_list(g: &str, v: &str, types: &[ResourceType]) -> Value {
    let resources: Vec<Value> =
        types.iter().filter(|t| t.group == g && t.version == v).flat_map(|t| t.discovery_entries()).collect();
    let gv = if g.is_empty() { v.to_string() } else { format!("{g}/{v}") };
    json!({"kind": "APIResourceList", "apiVersion": "v1", "groupVersion": gv, "resources": resources})
}

fn resource_route(types: &[ResourceType], g: &str, v: &str, rest: &[&str]) -> Result<Route, ApiError> {
    let find = |plural: &str| {
        types.iter().find(|t| t.group == g && t.version == v && t.plural == plural).cloned().ok_or(ApiError::NoResource)
    };
    let owned = |s: &&str| s.to_string();
    match rest {
        ["namespaces", ns, plural, more @ ..] if more.len() <= 2 => {
            let rt = find(plural)?;
            if !rt.namespaced {
                return Err(ApiError::NoResource);
            }
            Ok(Route::Resource {
                rt: Box::new(rt),
                namespace: Some(ns.to_string()),
                name: more.first().map(owned),
                sub: more.get(1).map(owned),
            })
        }
        [plural, more @ ..] if more.len() <= 2 => {
            let rt = find(plural)?;
            if rt.namespaced && !more.is_empty() {
                return Err(ApiError::NoResource);
            }
            Ok(Route::Resource {
                rt: Box::new(rt),
                namespace: None,
                name: more.first().map(owned),
                sub: more.get(1).map(owned),
            })
        }
        _ => Err(ApiError::NoResource),
    }
}

/// Namespaces are implicit: every namespace exists and is Active.
fn namespace(_store: &Store, name: Option<String>) -> Response<Body> {
    let ns = |n: &str| json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": n}, "spec": {"finalizers": ["kubernetes"]}, "status": {"phase": "Active"}});
    match name {
        Some(n) => full(StatusCode::OK, &ns(&n)),
        None => full(
            StatusCode::OK,
            &json!({"apiVersion": "v1", "kind": "NamespaceList", "metadata": {}, "items": [ns("default")]}),
        ),
    }
}

struct ResourceRequest<'a> {
    rt: &'a ResourceType,
    namespace: Option<&'a str>,
    name: Option<&'a str>,
    sub: Option<&'a str>,
    query: &'a HashMap<String, String>,
    content_type: &'a str,
    body: &'a Bytes,
    field_manager: String,
}

fn parse_body(bytes: &Bytes, yaml: bool) -> Result<Value, ApiError> {
    if yaml {
        serde_yaml::from_slice(bytes).map_err(|e| ApiError::BadRequest(format!("error decoding YAML: {e}")))
    } else {
        serde_json::from_slice(bytes)
            .map_err(|e| ApiError::BadRequest(format!("couldn't get version/kind; json parse error: {e}")))
    }
}

fn serve_resource(
    state: &ServerState,
    ctx: &mut Ctx,
    r: ResourceRequest<'_>,
    drop_after: Option<Duration>,
) -> Result<Response<Body>, ApiError> {
    let store = &state.store;
    let rt = r.rt;
    let ns = r.namespace.unwrap_or_default();
    if let Some(sub) = r.sub {
        if sub != "status" || !rt.has_status {
            return Err(ApiError::NoResource);
        }
    }
    let dry_run = r.query.get("dryRun").is_some_and(|v| v == "All");
    let w = WriteOptions {
        field_manager: r.field_manager.clone(),
        force: r.query.get("force").is_some_and(|v| v == "true"),
        dry_run,
    };
    if rt.namespaced && r.namespace.is_none() && !matches!(ctx.verb, "list" | "watch") {
        return Err(ApiError::NoResource);
    }
    let labels = LabelSelector::parse(r.query.get("labelSelector").map(String::as_str).unwrap_or_default())
        .map_err(|e| ApiError::BadRequest(e.to_string()))?;
    let fields = FieldSelector::parse(
        r.query.get("fieldSelector").map(String::as_str).unwrap_or_default(),
        &rt.field_selectors(),
    )
    .map_err(|e| ApiError::BadRequest(e.to_string()))?;
    match ctx.verb {
        "get" => Ok(full(StatusCode::OK, &store.get(rt, ns, r.name.unwrap_or_default())?)),
        "list" => {
            let (items, rv) = store.list(rt, r.namespace, &labels, &fields);
            Ok(full(
                StatusCode::OK,
                &json!({"apiVersion": rt.api_version(), "kind": rt.list_kind(),
                "metadata": {"resourceVersion": rv.to_string()}, "items": items}),
            ))
        }
        "watch" => watch_stream(state, rt, r.namespace, labels, fields, r.query, drop_after),
        "create" => {
            let body = parse_body(r.body, false)?;
            check_kind(rt, &body)?;
            let created = store.create(rt, ns, body, &w)?;
            Ok(full(StatusCode::CREATED, &created))
        }
        "update" => {
            let body = parse_body(r.body, false)?;
            check_kind(rt, &body)?;
            Ok(full(StatusCode::OK, &store.replace(rt, ns, r.name.unwrap_or_default(), body, r.sub, &w)?))
        }
        "patch" => {
            let kind = PatchType::from_content_type(r.content_type)
                .ok_or_else(|| ApiError::UnsupportedMediaType(patch::ACCEPTED_PATCH_TYPES_BUILTIN.into()))?;
            let custom = matches!(rt.schema, crate::emulator::resources::SchemaSource::Crd(_));
            if kind == PatchType::Strategic && custom {
                return Err(ApiError::UnsupportedMediaType(patch::ACCEPTED_PATCH_TYPES.into()));
            }
            if kind == PatchType::Apply && !r.query.contains_key("fieldManager") {
                return Err(ApiError::BadRequest("PatchOptions.meta.k8s.io \"\" is invalid: fieldManager: Required value: is required for apply patch".into()));
            }
            let body = parse_body(r.body, kind == PatchType::Apply)?;
            if kind == PatchType::Apply {
                check_kind(rt, &body)?;
            }
            let (obj, created) = store.patch(rt, ns, r.name.unwrap_or_default(), kind, &body, r.sub, &w)?;
            Ok(full(if created { StatusCode::CREATED } else { StatusCode::OK }, &obj))
        }
        "delete" => {
            let body: Value = if r.body.is_empty() { json!({}) } else { parse_body(r.body, false)? };
            let o = delete_options(&body, r.query, dry_run);
            let name = r.name.unwrap_or_default();
            match store.delete(rt, ns, name, &o)? {
                DeleteOutcome::Deleted(obj) if rt.kind == "Pod" => Ok(full(StatusCode::OK, &obj)),
                DeleteOutcome::Deleted(obj) => Ok(full(
                    StatusCode::OK,
                    &status::success_status(&rt.group, &rt.plural, name, meta_str(&obj, "uid")),
                )),
                DeleteOutcome::Pending(obj) => Ok(full(StatusCode::OK, &obj)),
            }
        }
        "deletecollection" => {
            let body: Value = if r.body.is_empty() { json!({}) } else { parse_body(r.body, false)? };
            let o = delete_options(&body, r.query, dry_run);
            let (items, rv) = store.list(rt, r.namespace, &labels, &fields);
            let mut out = Vec::new();
            for it in items {
                match store.delete(rt, meta_str(&it, "namespace"), meta_str(&it, "name"), &o) {
                    Ok(DeleteOutcome::Deleted(v)) | Ok(DeleteOutcome::Pending(v)) => out.push(v),
                    Err(ApiError::NotFound { .. }) => {}
                    Err(e) => return Err(e),
                }
            }
            Ok(full(
                StatusCode::OK,
                &json!({"apiVersion": rt.api_version(), "kind": rt.list_kind(),
                "metadata": {"resourceVersion": rv.to_string()}, "items": out}),
            ))
        }
        _ => Err(ApiError::MethodNotAllowed),
    }
}

fn check_kind(rt: &ResourceType, body: &Value) -> Result<(), ApiError> {
    let kind = body.get("kind").and_then(Value::as_str);
    let api_version = body.get("apiVersion").and_then(Value::as_str);
    if kind.is_some_and(|k| k != rt.kind) || api_version.is_some_and(|v| v != rt.api_version()) {
        return Err(ApiError::BadRequest(format!(
            "the API version in the data ({}) does not match the expected API version ({})",
            api_version.unwrap_or_default(),
            rt.api_version()
        )));
    }
    Ok(())
}

fn delete_options(body: &Value, query: &HashMap<String, String>, dry_run: bool) -> DeleteOptions {
    let mut propagation =
        body["propagationPolicy"].as_str().map(str::to_string).or_else(|| query.get("propagationPolicy").cloned());
    if propagation.is_none() {
        if let Some(orphan) = body["orphanDependents"].as_bool() {
            propagation = Some(if orphan { "Orphan" } else { "Background" }.into());
        }
    }
    DeleteOptions {
        propagation,
        grace_period_seconds: body["gracePeriodSeconds"]
            .as_i64()
            .or_else(|| query.get("gracePeriodSeconds").and_then(|v| v.parse().ok())),
        precondition_uid: body["preconditions"]["uid"].as_str().map(str::to_string),
        precondition_rv: body["preconditions"]["resourceVersion"].as_str().map(str::to_string),
        dry_run: dry_run || body["dryRun"].as_array().is_some_and(|a| a.contains(&json!("All"))),
    }
}

fn event_line(kind: &str, obj: &Value) -> Bytes {
    let mut s = json!({"type": kind, "object": obj}).to_string();
    s.push('\n');
    Bytes::from(s)
}

fn bookmark(rt: &ResourceType, rv: u64, initial_end: bool) -> Bytes {
    let mut meta = json!({"resourceVersion": rv.to_string()});
    if initial_end {
        meta["annotations"] = json!({"k8s.io/initial-events-end": "true"});
    }
    event_line("BOOKMARK", &json!({"kind": rt.kind, "apiVersion": rt.api_version(), "metadata": meta}))
}

/// What one store event means for a watch with selectors: objects entering the
/// selection are ADDED, leaving it DELETED.
fn translate(ev: &StoreEvent, labels: &LabelSelector, fields: &FieldSelector) -> Option<&'static str> {
    let now = labels.matches_object(&ev.object) && fields.matches(&ev.object);
    match ev.kind {
        EventType::Added => now.then_some("ADDED"),
        EventType::Deleted => now.then_some("DELETED"),
        EventType::Modified => {
            let before = ev.previous.as_ref().is_some_and(|p| labels.matches_object(p) && fields.matches(p));
            match (before, now) {
                (true, true) => Some("MODIFIED"),
                (false, true) => Some("ADDED"),
                (true, false) => Some("DELETED"),
                (false, false) => None,
            }
        }
    }
}

fn watch_stream(
    state: &ServerState,
    rt: &ResourceType,
    ns: Option<&str>,
    labels: LabelSelector,
    fields: FieldSelector,
    query: &HashMap<String, String>,
    drop_after: Option<Duration>,
) -> Result<Response<Body>, ApiError> {
    let send_initial = query.get("sendInitialEvents").is_some_and(|v| v == "true");
    let from = match query.get("resourceVersion").map(String::as_str) {
        None | Some("") | Some("0") => None,
        Some(v) if send_initial => {
            let _ = v;
            None
        }
        Some(v) => Some(v.parse::<u64>().map_err(|_| ApiError::BadRequest(format!("invalid resource version: {v}")))?),
    };
    let bookmarks = query.get("allowWatchBookmarks").is_some_and(|v| v == "true");
    let timeout = query.get("timeoutSeconds").and_then(|v| v.parse::<u64>().ok()).map(Duration::from_secs);
    let (tx, rx) = mpsc::channel::<Bytes>(256);
    let start = state.store.watch_from(rt, ns, from);
    let (backlog, start_rv, mut events) = match start {
        Ok(x) => x,
        Err(e @ ApiError::Expired { .. }) => {
            // The real server answers 200 and sends one ERROR event carrying the 410.
            let _ = tx.try_send(event_line("ERROR", &e.status_body()));
            drop(tx);
            return Ok(stream_response(rx));
        }
        Err(e) => return Err(e),
    };
    let rt = rt.clone();
    let ns = ns.map(str::to_string);
    let mut generation = state.watch_generation.subscribe();
    let interval = state.bookmark_interval;
    tokio::spawn(async move {
        let mut last_rv = start_rv;
        for ev in &backlog {
            if let Some(kind) = translate(ev, &labels, &fields) {
                if tx.send(event_line(kind, &ev.object)).await.is_err() {
                    return;
                }
            }
        }
        if send_initial && bookmarks {
            let _ = tx.send(bookmark(&rt, start_rv, true)).await;
        }
        let deadline = async {
            match timeout {
                Some(t) => tokio::time::sleep(t).await,
                None => std::future::pending().await,
            }
        };
        let dropped = async {
            match drop_after {
                Some(d) => tokio::time::sleep(d).await,
                None => std::future::pending().await,
            }
        };
        tokio::pin!(deadline, dropped);
        let mut ticker = tokio::time::interval(interval);
        ticker.tick().await;
        loop {
            tokio::select! {
                _ = &mut deadline => return,
                _ = &mut dropped => return,
                _ = generation.changed() => return,
                _ = tx.closed() => return,
                _ = ticker.tick(), if bookmarks => {
                    if tx.send(bookmark(&rt, last_rv, false)).await.is_err() { return; }
                }
                ev = events.recv() => {
                    let ev = match ev {
                        Ok(ev) => ev,
                        // A watcher too slow for the event rate is closed, as the real
                        // server does; the client resumes from its last resourceVersion.
                        Err(_) => return,
                    };
                    if ev.rv <= start_rv {
                        continue;
                    }
                    last_rv = ev.rv;
                    let same_type = ev.key.group == rt.group && ev.key.plural == rt.plural;
                    let same_ns = ns.as_deref().is_none_or(|n| n == ev.key.namespace);
                    if !same_type || !same_ns {
                        continue;
                    }
                    if let Some(kind) = translate(&ev, &labels, &fields) {
                        if tx.send(event_line(kind, &ev.object)).await.is_err() { return; }
                    }
                }
            }
        }
    });
    Ok(stream_response(rx))
}

fn stream_response(rx: mpsc::Receiver<Bytes>) -> Response<Body> {
    let stream = futures_util::stream::unfold(rx, |mut rx| async move {
        rx.recv().await.map(|b| (Ok::<_, Infallible>(Frame::data(b)), rx))
    });
    Response::builder()
        .status(StatusCode::OK)
        .header(header::CONTENT_TYPE, "application/json")
        .header(header::CACHE_CONTROL, "no-cache, private")
        .body(BodyExt::boxed(StreamBody::new(stream)))
        .expect("static response parts are valid")
}

/// `/emulator/faults` (GET list, POST add, DELETE clear), `/emulator/requests`
/// (GET log, DELETE clear), `/emulator/drop-watches` (POST).
fn admin(state: &ServerState, method: &Method, segs: &[String], body: &Bytes) -> Response<Body> {
    let s: Vec<&str> = segs.iter().map(String::as_str).collect();
    match (method, s.as_slice()) {
        (&Method::GET, ["faults"]) => full(StatusCode::OK, &json!(state.faults.rules())),
        (&Method::POST, ["faults"]) => match serde_json::from_slice::<FaultRule>(body) {
            Ok(rule) => {
                state.faults.add(rule);
                full(StatusCode::CREATED, &json!(state.faults.rules()))
            }
            Err(e) => error_response(&ApiError::BadRequest(format!("bad fault rule: {e}"))),
        },
        (&Method::DELETE, ["faults"]) => {
            state.faults.clear();
            full(StatusCode::OK, &json!([]))
        }
        (&Method::GET, ["requests"]) => full(StatusCode::OK, &json!(state.log.snapshot())),
        (&Method::DELETE, ["requests"]) => {
            state.log.clear();
            full(StatusCode::OK, &json!([]))
        }
        (&Method::POST, ["drop-watches"]) => {
            state.watch_generation.send_modify(|g| *g += 1);
            full(StatusCode::OK, &json!({"dropped": true}))
        }
        _ => error_response(&ApiError::NoResource),
    }
}
