//! Keeps `common/openapi/broker-v1.yaml` and the Rust wire types in step. For every
//! schema it compares what serde actually does with what the document says: property
//! names (a fully populated value serializes to exactly the documented properties),
//! required-ness (dropping a property fails to parse exactly when it is required), unknown
//! fields (refused exactly when `additionalProperties: false`), enum values, JSON types,
//! and the document's examples (each parses into the Rust type and serializes back to
//! itself). It also checks the paths against `common::broker` and the embedded server.
#![allow(clippy::unwrap_used)] // in a test, an unwrap is an assertion
mod broker_support;

use broker_support::*;
use common::broker::{
    ack_path, release_path, result_path, AckRequest, ErrorBody, PollRequest, PollResponse, QueueStats, ReleaseRequest,
    RuntimeDemand, POLL_PATH, QUEUE_PATH,
};
use common::{Job, JobId, JobResult, Outcome, WorkloadKind};
use serde::de::DeserializeOwned;
use serde::Serialize;
use serde_json::{json, Map, Value};
use std::collections::BTreeSet;

fn document() -> Value {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../common/openapi/broker-v1.yaml");
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{path}: {e}"));
    serde_saphyr::from_str(&text).unwrap_or_else(|e| panic!("{path} is not valid YAML: {e}"))
}

fn schema<'a>(doc: &'a Value, name: &str) -> &'a Value {
    doc.pointer(&format!("/components/schemas/{name}")).unwrap_or_else(|| panic!("schema {name} missing"))
}

fn json_type(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "boolean",
        Value::Number(n) if n.is_f64() => "number",
        Value::Number(_) => "integer",
        Value::String(_) => "string",
        Value::Array(_) => "array",
        Value::Object(_) => "object",
    }
}

fn resolve<'a>(doc: &'a Value, s: &'a Value) -> &'a Value {
    match s.get("$ref").and_then(Value::as_str) {
        Some(r) => doc.pointer(r.trim_start_matches('#')).unwrap_or_else(|| panic!("dangling $ref {r}")),
        None => s,
    }
}

/// Does `value` fit the (resolved) property schema's type and enum?
fn fits(doc: &Value, prop: &Value, value: &Value) -> Result<(), String> {
    let prop = resolve(doc, prop);
    if let Some(t) = prop.get("type").and_then(Value::as_str) {
        let actual = json_type(value);
        let ok = actual == t || (t == "number" && actual == "integer");
        if !ok {
            return Err(format!("documented {t}, serde produced {actual} ({value})"));
        }
    }
    if let Some(allowed) = prop.get("enum").and_then(Value::as_array) {
        if !allowed.contains(value) {
            return Err(format!("{value} is not one of the documented {allowed:?}"));
        }
    }
    if let Some(pattern) = prop.get("pattern").and_then(Value::as_str) {
        // The only pattern in the document is JobId's; check it agrees with JobId::new.
        assert_eq!(pattern, "^[A-Za-z0-9._-]+$");
        let s = value.as_str().unwrap_or_default();
        JobId::new(s).map_err(|e| format!("{s:?}: {e}"))?;
    }
    if let (Some(items), Some(arr)) = (prop.get("items"), value.as_array()) {
        for v in arr {
            fits(doc, items, v)?;
        }
    }
    Ok(())
}

/// Compare an object schema with serde's behaviour for `T`. `full` must have every
/// optional field set, so that it serializes every property.
fn check_object<T: Serialize + DeserializeOwned>(doc: &Value, name: &str, full: T) -> Vec<String> {
    let mut drift = Vec::new();
    let s = schema(doc, name);
    assert_eq!(s["type"], "object", "{name}");
    let props: &Map<String, Value> = s["properties"].as_object().unwrap_or_else(|| panic!("{name}: no properties"));
    let documented: BTreeSet<&str> = props.keys().map(String::as_str).collect();
    let required: BTreeSet<&str> = s
        .get("required")
        .and_then(Value::as_array)
        .map(|r| r.iter().filter_map(Value::as_str).collect())
        .unwrap_or_default();
    for r in &required {
        if !documented.contains(r) {
            drift.push(format!("{name}: required property {r} is not documented"));
        }
    }

    let full = serde_json::to_value(&full).unwrap();
    let produced: BTreeSet<&str> = full.as_object().unwrap().keys().map(String::as_str).collect();
    if produced != documented {
        drift.push(format!("{name}: serde produces properties {produced:?}, the document lists {documented:?}"));
    }
    for (key, value) in full.as_object().unwrap() {
        if let Some(prop) = props.get(key) {
            if let Err(e) = fits(doc, prop, value) {
                drift.push(format!("{name}.{key}: {e}"));
            }
        }
    }

    for key in &documented {
        let mut without = full.clone();
        without.as_object_mut().unwrap().remove(*key);
        let parses = serde_json::from_value::<T>(without).is_ok();
        let is_required = required.contains(key);
        if parses == is_required {
            drift.push(format!(
                "{name}.{key}: the document says required={is_required}, but serde {} it",
                if parses { "accepts a value without" } else { "refuses a value without" }
            ));
        }
    }

    let mut extra = full.clone();
    extra.as_object_mut().unwrap().insert("surely_unknown_field".into(), json!(1));
    let refuses_unknown = serde_json::from_value::<T>(extra).is_err();
    let closed = s.get("additionalProperties") == Some(&Value::Bool(false));
    if refuses_unknown != closed {
        drift.push(format!(
            "{name}: additionalProperties false={closed}, but serde refuses unknown fields={refuses_unknown}"
        ));
    }

    match s.get("example") {
        None => drift.push(format!("{name}: no example")),
        Some(example) => match serde_json::from_value::<T>(example.clone()) {
            Err(e) => drift.push(format!("{name}: the example does not parse: {e}")),
            Ok(parsed) => {
                let back = serde_json::to_value(&parsed).unwrap();
                if &back != example {
                    drift.push(format!("{name}: the example does not survive a round trip: {example} -> {back}"));
                }
            }
        },
    }
    drift
}

fn check_enum<T: Serialize + DeserializeOwned>(doc: &Value, name: &str, all: &[T]) -> Vec<String> {
    let s = schema(doc, name);
    let documented: Vec<Value> = s["enum"].as_array().cloned().unwrap_or_default();
    let produced: Vec<Value> = all.iter().map(|v| serde_json::to_value(v).unwrap()).collect();
    let mut drift = Vec::new();
    if documented != produced {
        drift.push(format!("{name}: document enum {documented:?}, serde produces {produced:?}"));
    }
    if let Some(example) = s.get("example") {
        if serde_json::from_value::<T>(example.clone()).is_err() {
            drift.push(format!("{name}: example {example} does not parse"));
        }
    }
    drift
}

fn id(s: &str) -> JobId {
    JobId::new(s).unwrap()
}

fn full_job() -> Job {
    Job {
        id: id("j-1"),
        runtime_type: "rt".into(),
        workload_kind: WorkloadKind::Persistent,
        timeout_secs: 30,
        attempt: 2,
        payload: json!({"action": "sleep", "secs": 1}),
        signature: Some("c2ln".into()),
    }
}

#[test]
fn schemas_match_the_rust_types() {
    let doc = document();
    let mut drift = Vec::new();
    drift.extend(check_object(&doc, "Job", full_job()));
    drift.extend(check_object(
        &doc,
        "JobResult",
        JobResult {
            job_id: id("j-1"),
            outcome: Outcome::TimedOut,
            message: "m".into(),
            output: json!({"k": 1}),
            duration_ms: Some(5),
        },
    ));
    drift.extend(check_object(&doc, "RuntimeDemand", RuntimeDemand { runtime_type: "rt".into(), max: 3 }));
    drift.extend(check_object(
        &doc,
        "PollRequest",
        PollRequest { demands: vec![RuntimeDemand { runtime_type: "rt".into(), max: 3 }], consumer: "c".into() },
    ));
    drift.extend(check_object(
        &doc,
        "PollResponse",
        PollResponse { jobs: vec![full_job()], visibility_timeout_secs: 30 },
    ));
    drift.extend(check_object(&doc, "AckRequest", AckRequest { consumer: "c".into(), attempt: 1 }));
    drift.extend(check_object(
        &doc,
        "ReleaseRequest",
        ReleaseRequest { consumer: "c".into(), attempt: 1, reason: "r".into() },
    ));
    drift.extend(check_object(
        &doc,
        "QueueStats",
        QueueStats { depth: 2, depth_by_runtime: [("rt".to_string(), 2)].into(), oldest_age_secs: 1.5 },
    ));
    drift.extend(check_object(&doc, "ErrorBody", ErrorBody::new("conflict", "m")));
    drift.extend(check_enum(&doc, "Outcome", &Outcome::ALL));
    drift.extend(check_enum(&doc, "WorkloadKind", &[WorkloadKind::Ephemeral, WorkloadKind::Persistent]));

    let documented: BTreeSet<&str> =
        doc["components"]["schemas"].as_object().unwrap().keys().map(String::as_str).collect();
    let checked: BTreeSet<&str> = [
        "Job",
        "JobResult",
        "RuntimeDemand",
        "PollRequest",
        "PollResponse",
        "AckRequest",
        "ReleaseRequest",
        "QueueStats",
        "ErrorBody",
        "Outcome",
        "WorkloadKind",
        "JobId",
    ]
    .into();
    if documented != checked {
        drift.push(format!("schemas in the document {documented:?} differ from the ones this test checks {checked:?}"));
    }
    let job_id = schema(&doc, "JobId");
    if job_id["maxLength"].as_u64() != Some(JobId::MAX_LEN as u64) {
        drift.push(format!("JobId.maxLength {} != JobId::MAX_LEN {}", job_id["maxLength"], JobId::MAX_LEN));
    }
    assert!(drift.is_empty(), "the OpenAPI document drifted from the Rust types:\n  {}", drift.join("\n  "));
}

/// The document's paths and methods, as `(method, path)` with `{id}` templates.
fn documented_operations(doc: &Value) -> BTreeSet<(String, String)> {
    let mut ops = BTreeSet::new();
    for (path, item) in doc["paths"].as_object().unwrap() {
        for method in ["get", "post", "put", "delete", "patch"] {
            if item.get(method).is_some() {
                ops.insert((method.to_uppercase(), path.clone()));
            }
        }
    }
    ops
}

#[test]
fn paths_match_common_broker_and_every_operation_is_authenticated() {
    let doc = document();
    let template = |p: String| p.replace("ID", "{id}");
    let expected: BTreeSet<(String, String)> = [
        ("POST", POLL_PATH.to_string()),
        ("GET", QUEUE_PATH.to_string()),
        ("POST", template(ack_path(&id("ID")))),
        ("POST", template(release_path(&id("ID")))),
        ("POST", template(result_path(&id("ID")))),
        ("POST", "/admin/v1/jobs".to_string()),
        ("GET", "/admin/v1/results".to_string()),
        ("GET", "/admin/v1/counters".to_string()),
        ("GET", "/admin/v1/results/{id}".to_string()),
    ]
    .into_iter()
    .map(|(m, p)| (m.to_string(), p))
    .collect();
    assert_eq!(documented_operations(&doc), expected);

    assert_eq!(doc["security"], json!([{"bearerAuth": []}]));
    assert_eq!(doc["components"]["securitySchemes"]["bearerAuth"]["type"], "http");
    assert_eq!(doc["components"]["securitySchemes"]["bearerAuth"]["scheme"], "bearer");
    for (method, path) in &expected {
        let op = &doc["paths"][path][method.to_lowercase()];
        assert!(op.get("security").is_none(), "{method} {path} must not override the bearer requirement");
        assert!(op["responses"].get("401").is_some(), "{method} {path} documents no 401");
    }
    // The lease-bound calls document the conflict the client maps to LeaseLost.
    for p in ["/v1/jobs/{id}/ack", "/v1/jobs/{id}/release", "/v1/jobs/{id}/result"] {
        for code in ["204", "404", "409"] {
            assert!(doc["paths"][p]["post"]["responses"].get(code).is_some(), "{p} lacks {code}");
        }
    }
}

/// Every documented operation exists on the embedded broker: an authorized request with
/// a valid body never gets "no such endpoint" (404 with `not_found` for the path) or 405.
#[tokio::test]
async fn embedded_broker_serves_every_documented_operation() {
    let doc = document();
    let served = serve_new().await;
    served.broker.submit(job("known")).unwrap();
    for (method, path) in documented_operations(&doc) {
        let concrete = path.replace("{id}", "known");
        let op = &doc["paths"][&path][method.to_lowercase()];
        let body = match op.pointer("/requestBody/content/application~1json/schema/$ref").and_then(Value::as_str) {
            Some(r) => {
                let mut example = doc.pointer(&format!("{}/example", r.trim_start_matches('#'))).unwrap().clone();
                if let Some(o) = example.as_object_mut() {
                    for k in ["id", "job_id"] {
                        if o.contains_key(k) {
                            o.insert(k.into(), json!(if path.starts_with("/admin") { "new-job" } else { "known" }));
                        }
                    }
                }
                example.to_string()
            }
            None => String::new(),
        };
        let answer = raw_exchange(served.addr, &request(&method, &concrete, &body)).await;
        let status = status_of(&answer);
        let documented = op["responses"].get(status.to_string()).is_some();
        assert!(documented, "{method} {concrete} answered {status}, which the document does not list: {answer}");
        assert!(!body_of(&answer).contains("no such endpoint") && status != 405, "{method} {concrete}: {answer}");
    }
}
