//! The HTTP front: one request in, one response out. `handle` parses the request,
//! picks injected faults, serves CRUD, patch and delete against the store, and logs the
//! request. The jobs around it:
//! - `routes`: the API's URL scheme, query strings, and the discovery documents;
//! - `watch`: watch streams (backlog, selector transitions, bookmarks, 410 Expired);
//! - `log`: the request log tests read;
//! - `admin`: the emulator's own `/emulator/...` endpoints (faults, log, watches).
mod admin;
mod log;
mod routes;
mod subresources;
mod watch;

pub use log::{RequestLog, RequestRecord};
pub use routes::parse_query;

use crate::emulator::faults::{self, Fault, Faults};
use crate::emulator::patch::{self, PatchType};
use crate::emulator::rbac;
use crate::emulator::resources::ResourceType;
use crate::emulator::selectors::{FieldSelector, LabelSelector};
use crate::emulator::status::{self, ApiError};
use crate::emulator::store::{meta_str, DeleteOptions, DeleteOutcome, Store, WriteOptions};
use crate::emulator::table;
use admin::admin;
use bytes::Bytes;
use http::{header, Method, Request, Response, StatusCode};
use http_body_util::{combinators::BoxBody, BodyExt, Full, Limited};
use hyper::body::Incoming;
use routes::{route, Route};
use serde_json::{json, Value};
use std::collections::HashMap;
use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;
use watch::watch_stream;

pub type Body = BoxBody<Bytes, Infallible>;
const MAX_BODY: usize = 3 * 1024 * 1024;

pub struct ServerState {
    pub store: Arc<Store>,
    pub faults: Arc<Faults>,
    pub log: Arc<RequestLog>,
    /// Bumped to close every open watch stream.
    pub watch_generation: tokio::sync::watch::Sender<u64>,
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

pub async fn handle(state: Arc<ServerState>, req: Request<Incoming>) -> Result<Response<Body>, Infallible> {
    let (parts, body) = req.into_parts();
    let query = parse_query(parts.uri.query());
    let path = parts.uri.path().to_string();
    let user_agent =
        parts.headers.get(header::USER_AGENT).and_then(|v| v.to_str().ok()).unwrap_or_default().to_string();
    let accept = parts.headers.get(header::ACCEPT).and_then(|v| v.to_str().ok()).unwrap_or_default().to_string();
    let content_type =
        parts.headers.get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok()).unwrap_or_default().to_string();
    let bytes = match Limited::new(body, MAX_BODY).collect().await {
        Ok(b) => b.to_bytes(),
        Err(_) => return Ok(error_response(&ApiError::TooLarge(MAX_BODY))),
    };
    let user = match authenticate(&state.store, &parts.headers).and_then(|u| impersonate(u, &parts.headers)) {
        Ok(u) => u,
        Err(e) => return Ok(error_response(&e)),
    };
    if let (Some(v), "/api" | "/apis") = (routes::aggregated_version(&accept), path.trim_end_matches('/')) {
        let doc = routes::aggregated_discovery(&state.store.types(), path.trim_end_matches('/') == "/api", v);
        let mut r = full(StatusCode::OK, &doc);
        let ct = format!("application/json;g=apidiscovery.k8s.io;v={v};as=APIGroupDiscoveryList");
        r.headers_mut().insert(header::CONTENT_TYPE, ct.parse().expect("a valid header value"));
        return Ok(r);
    }
    if path == "/openapi/v2" {
        // JSON for those who accept it; kubectl accepts only protobuf: 406, and it
        // moves on to /openapi/v3.
        if !accept.is_empty() && !accept.contains("application/json") && !accept.contains("*/*") {
            return Ok(full(
                StatusCode::NOT_ACCEPTABLE,
                &json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
                    "message": "only application/json is served for /openapi/v2", "reason": "NotAcceptable", "code": 406}),
            ));
        }
        return Ok(full(StatusCode::OK, &crate::emulator::openapi::swagger_v2(&state.store.types())));
    }
    let route = match route(&state.store, &path) {
        Ok(r) => r,
        Err(e) => return Ok(error_response(&e)),
    };
    match route {
        // Discovery and OpenAPI: every authenticated user (`system:discovery`).
        Route::Discovery(v) => Ok(full(StatusCode::OK, &v)),
        Route::Admin(_) if !user.groups.iter().any(|g| g == rbac::MASTERS) => Ok(error_response(&ApiError::Denied {
            group: String::new(),
            resource: String::new(),
            name: String::new(),
            message: format!("forbidden: User {:?} cannot use the emulator's admin endpoints", user.name),
        })),
        Route::Admin(segs) => Ok(admin(&state, &parts.method, &segs, &bytes)),
        Route::Resource { rt, namespace, name, sub } => {
            let watching = matches!(query.get("watch").map(String::as_str), Some("true") | Some("1"));
            let verb = match (&parts.method, name.is_some()) {
                (&Method::GET, true) => "get",
                (&Method::GET, false) if watching => "watch",
                (&Method::GET, false) => "list",
                (&Method::POST, false) => "create",
                (&Method::POST, true) if sub.is_some() => "create",
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
                    user: user.name.clone(),
                },
            };
            let attrs = rbac::Attributes {
                verb: verb.into(),
                group: rt.group.clone(),
                resource: rt.plural.clone(),
                subresource: sub.clone().unwrap_or_default(),
                namespace: namespace.clone().unwrap_or_default(),
                name: name.clone().unwrap_or_default(),
            };
            if let rbac::Decision::Deny { reason } = rbac::authorize(&user, &attrs, &state.store.rbac_policy()) {
                let denied = ApiError::Denied {
                    group: rt.group.clone(),
                    resource: rt.plural.clone(),
                    name: attrs.name.clone(),
                    message: rbac::forbidden_message(&user, &attrs, &reason),
                };
                ctx.record.code = 403;
                state.log.push(ctx.record);
                return Ok(error_response(&denied));
            }
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
                        accept: &accept,
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

/// Who sent a request: the administrator (its kubeconfig token, or no token at all),
/// a ServiceAccount (a token the emulator issued), or nobody it knows (401).
fn authenticate(store: &Store, headers: &http::HeaderMap) -> Result<rbac::User, ApiError> {
    let Some(value) = headers.get(header::AUTHORIZATION) else {
        return Ok(rbac::User::admin());
    };
    let token = value.to_str().ok().and_then(|v| v.strip_prefix("Bearer ")).map(str::trim);
    match token.and_then(|t| store.token_subject(t)) {
        Some(None) => Ok(rbac::User::admin()),
        Some(Some((ns, sa))) => Ok(rbac::User::service_account(&ns, &sa)),
        None => Err(ApiError::Unauthenticated),
    }
}

/// `Impersonate-User` / `Impersonate-Group` (`kubectl --as`, `--as-group`): the
/// administrator may act as anyone, as on a real cluster; others may not. kubectl
/// sends no bearer token to a plain-HTTP server, so this is how it tests RBAC here.
fn impersonate(user: rbac::User, headers: &http::HeaderMap) -> Result<rbac::User, ApiError> {
    let Some(name) = headers.get("impersonate-user").and_then(|v| v.to_str().ok()) else {
        return Ok(user);
    };
    if !user.groups.iter().any(|g| g == rbac::MASTERS) {
        return Err(ApiError::Denied {
            group: String::new(),
            resource: "users".into(),
            name: name.into(),
            message: format!(
                "users {name:?} is forbidden: User {:?} cannot impersonate resource \"users\" in API group \"\" at the cluster scope",
                user.name
            ),
        });
    }
    let mut as_user = match name.strip_prefix("system:serviceaccount:").and_then(|r| r.split_once(':')) {
        Some((ns, sa)) => rbac::User::service_account(ns, sa),
        None => rbac::User { name: name.into(), groups: vec![rbac::AUTHENTICATED.into()] },
    };
    for g in headers.get_all("impersonate-group").iter().filter_map(|v| v.to_str().ok()) {
        as_user.groups.push(g.to_string());
    }
    Ok(as_user)
}

struct ResourceRequest<'a> {
    rt: &'a ResourceType,
    namespace: Option<&'a str>,
    name: Option<&'a str>,
    sub: Option<&'a str>,
    query: &'a HashMap<String, String>,
    content_type: &'a str,
    accept: &'a str,
    body: &'a Bytes,
    field_manager: String,
}

/// A whole object sent with POST or PUT, in whichever encoding the client chose.
fn parse_object(bytes: &Bytes, content_type: &str) -> Result<Value, ApiError> {
    use crate::emulator::protobuf::{self, ProtobufError};
    let media = content_type.split(';').next().unwrap_or_default().trim();
    match media {
        protobuf::CONTENT_TYPE => protobuf::decode(bytes).map_err(|e| match e {
            ProtobufError::UnsupportedKind { .. } => {
                ApiError::UnsupportedMediaType(format!("application/json, application/yaml ({e})"))
            }
            other => ApiError::BadRequest(other.to_string()),
        }),
        "application/yaml" => parse_body(bytes, true),
        _ => parse_body(bytes, false),
    }
}

fn parse_body(bytes: &Bytes, yaml: bool) -> Result<Value, ApiError> {
    if yaml {
        let text = std::str::from_utf8(bytes).map_err(|e| ApiError::BadRequest(format!("error decoding YAML: {e}")))?;
        serde_saphyr::from_str(text).map_err(|e| ApiError::BadRequest(format!("error decoding YAML: {e}")))
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
    let dry_run = r.query.get("dryRun").is_some_and(|v| v == "All");
    let w = WriteOptions {
        field_manager: r.field_manager.clone(),
        force: r.query.get("force").is_some_and(|v| v == "true"),
        dry_run,
    };
    match (r.sub, rt.group.as_str(), rt.kind.as_str()) {
        (None, ..) => {}
        (Some("status"), ..) if rt.has_status => {}
        (Some("log"), "", "Pod") if ctx.verb == "get" => {
            return subresources::pod_log(store, ns, r.name.unwrap_or_default(), r.query)
        }
        (Some("token"), "", "ServiceAccount") if ctx.verb == "create" => {
            let request = parse_object(r.body, r.content_type)?;
            return Ok(full(
                StatusCode::CREATED,
                &subresources::token(store, rt, ns, r.name.unwrap_or_default(), request)?,
            ));
        }
        (Some("scale"), "apps", "Deployment") => {
            let body = match ctx.verb {
                "get" => None,
                "update" => Some((None, parse_object(r.body, r.content_type)?)),
                "patch" => {
                    let kind = PatchType::from_content_type(r.content_type)
                        .filter(|k| *k != PatchType::Apply)
                        .ok_or_else(|| ApiError::UnsupportedMediaType(patch::ACCEPTED_PATCH_TYPES_BUILTIN.into()))?;
                    Some((Some(kind), parse_body(r.body, false)?))
                }
                _ => return Err(ApiError::MethodNotAllowed),
            };
            let scale = subresources::scale(store, rt, ns, r.name.unwrap_or_default(), body, &w)?;
            return Ok(full(StatusCode::OK, &scale));
        }
        _ => return Err(ApiError::NoResource),
    }
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
    let as_table = (table::wants_table(r.accept) && r.sub.is_none())
        .then(|| table::Include::from_query(r.query.get("includeObject").map(String::as_str)));
    match ctx.verb {
        "get" => {
            let obj = store.get(rt, ns, r.name.unwrap_or_default())?;
            match as_table {
                Some(include) => Ok(full(StatusCode::OK, &table::table(rt, &[obj], None, include))),
                None => Ok(full(StatusCode::OK, &obj)),
            }
        }
        "list" => {
            let (items, rv) = store.list(rt, r.namespace, &labels, &fields);
            if let Some(include) = as_table {
                return Ok(full(StatusCode::OK, &table::table(rt, &items, Some(&rv.to_string()), include)));
            }
            Ok(full(
                StatusCode::OK,
                &json!({"apiVersion": rt.api_version(), "kind": rt.list_kind(),
                "metadata": {"resourceVersion": rv.to_string()}, "items": items}),
            ))
        }
        "watch" => watch_stream(state, rt, r.namespace, labels, fields, r.query, drop_after, as_table),
        "create" => {
            let body = parse_object(r.body, r.content_type)?;
            check_kind(rt, &body)?;
            let created = store.create(rt, ns, body, &w)?;
            Ok(full(StatusCode::CREATED, &created))
        }
        "update" => {
            let body = parse_object(r.body, r.content_type)?;
            check_kind(rt, &body)?;
            Ok(full(StatusCode::OK, &store.replace(rt, ns, r.name.unwrap_or_default(), body, r.sub, &w)?))
        }
        "patch" => {
            if rt.group.is_empty() && rt.kind == "Namespace" {
                // Labelling a namespace nothing has used yet (every namespace is usable).
                store.touch_namespace(r.name.unwrap_or_default());
            }
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
