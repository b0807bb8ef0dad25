//! What the emulator accepts: the official schema (strict decoding) first, then the
//! API's own rules. Decoding failures answer 400 like the real server's strict field
//! validation; rule failures answer 422 `Invalid` with one cause per field.
pub mod rules;
pub mod schema;

use crate::emulator::resources::{ResourceType, SchemaSource};
use crate::emulator::status::{ApiError, Cause};
use schema::Violation;
use serde_json::{json, Value};

/// Validates `obj` (already defaulted) as an object of `rt`; `old` is the stored
/// object on updates (immutability rules).
pub fn validate(rt: &ResourceType, obj: &Value, old: Option<&Value>) -> Result<(), ApiError> {
    let violations = match &rt.schema {
        SchemaSource::Builtin(key) => schema::validate_builtin(key, obj),
        SchemaSource::Crd(s) => schema::validate_custom(s, obj),
    };
    let name = obj.pointer("/metadata/name").and_then(Value::as_str).unwrap_or_default().to_string();
    if let Some(v) = violations.iter().find(|v| v.is_decoding_error()) {
        let what = format!("{} in version {:?} cannot be handled as a {}", rt.kind, rt.version, rt.kind);
        let msg = match v {
            Violation::UnknownField { path } => {
                format!("{what}: strict decoding error: unknown field {path:?}")
            }
            Violation::WrongType { path, expected, found } => {
                format!("{what}: json: cannot unmarshal {found} into Go struct field {path} of type {expected}")
            }
            _ => unreachable!("filtered on decoding errors"),
        };
        return Err(ApiError::BadRequest(msg));
    }
    let mut causes: Vec<Cause> = violations
        .into_iter()
        .map(|v| match v {
            Violation::Required { path } => Cause::required(path),
            Violation::NotInEnum { path, value, allowed } => {
                let allowed: Vec<&str> = allowed.iter().map(String::as_str).collect();
                Cause::not_supported(path, &value, &allowed)
            }
            Violation::BadFormat { path, value, detail } => Cause::invalid(path, &value, &detail),
            Violation::UnknownField { .. } | Violation::WrongType { .. } => {
                unreachable!("returned above")
            }
        })
        .collect();
    rules::object_meta(&obj["metadata"], rules::name_rule(&rt.kind), rt.namespaced, &mut causes);
    match (rt.group.as_str(), rt.kind.as_str()) {
        ("", "Pod") => rules::pod_spec(&obj["spec"], "spec", &mut causes),
        ("batch", "Job") => rules::job(obj, old, &mut causes),
        ("apps", "Deployment") => rules::deployment(obj, old, &mut causes),
        ("", "Service") => rules::service(obj, old, &mut causes),
        ("", "Secret") | ("", "ConfigMap") => {
            rules::data_keys(obj, &mut causes);
            rules::immutable_data(obj, old, &mut causes);
        }
        ("autoscaling", "HorizontalPodAutoscaler") => rules::hpa(obj, &mut causes),
        ("coordination.k8s.io", "Lease") => rules::lease(obj, &mut causes),
        ("events.k8s.io", "Event") => rules::event_v1(obj, &mut causes),
        ("apiextensions.k8s.io", "CustomResourceDefinition") => rules::crd(obj, &mut causes),
        _ => {}
    }
    if let (Some(old), true) = (old, rt.kind == "Pod") {
        // Pod specs are immutable except images and a few scheduling fields.
        let strip = |v: &Value| {
            let mut s = v["spec"].clone();
            for list in ["containers", "initContainers"] {
                for c in s[list].as_array_mut().into_iter().flatten() {
                    c["image"] = Value::Null;
                }
            }
            for f in
                ["activeDeadlineSeconds", "tolerations", "terminationGracePeriodSeconds", "nodeName", "schedulingGates"]
            {
                s[f] = Value::Null;
            }
            s
        };
        if strip(old) != strip(obj) {
            causes.push(Cause::forbidden("spec", "pod updates may not change fields other than `spec.containers[*].image`,`spec.initContainers[*].image`,`spec.activeDeadlineSeconds`,`spec.tolerations` (only additions to existing tolerations),`spec.terminationGracePeriodSeconds` (allow it to be set to 1 if it was previously negative)"));
        }
    }
    if causes.is_empty() {
        Ok(())
    } else {
        Err(ApiError::Invalid { group: rt.group.clone(), kind: rt.kind.clone(), name, causes })
    }
}

/// The few server-side defaults clients rely on reading back.
pub fn apply_defaults(rt: &ResourceType, obj: &mut Value) {
    match (rt.group.as_str(), rt.kind.as_str()) {
        ("", "Pod") => pod_spec_defaults(&mut obj["spec"]),
        ("batch", "Job") => {
            let spec = &mut obj["spec"];
            for (k, v) in [
                ("backoffLimit", json!(6)),
                ("completions", json!(1)),
                ("parallelism", json!(1)),
                ("suspend", json!(false)),
                ("completionMode", json!("NonIndexed")),
                ("manualSelector", Value::Null),
            ] {
                if spec.get(k).is_none() && !v.is_null() {
                    spec[k] = v;
                }
            }
            pod_spec_defaults(&mut spec["template"]["spec"]);
        }
        ("apps", "Deployment") => {
            let spec = &mut obj["spec"];
            for (k, v) in
                [("replicas", json!(1)), ("revisionHistoryLimit", json!(10)), ("progressDeadlineSeconds", json!(600))]
            {
                if spec.get(k).is_none() {
                    spec[k] = v;
                }
            }
            // `strategy: {}` (what `kubectl create deployment` sends) is defaulted too.
            if spec["strategy"].get("type").is_none() {
                spec["strategy"]["type"] = json!("RollingUpdate");
            }
            if spec["strategy"]["type"] == "RollingUpdate" && spec["strategy"].get("rollingUpdate").is_none() {
                spec["strategy"]["rollingUpdate"] = json!({"maxSurge": "25%", "maxUnavailable": "25%"});
            }
            if spec["template"]["spec"].get("restartPolicy").is_none() {
                spec["template"]["spec"]["restartPolicy"] = json!("Always");
            }
            pod_spec_defaults(&mut spec["template"]["spec"]);
        }
        ("", "Service") => {
            let spec = &mut obj["spec"];
            if spec.get("type").is_none() {
                spec["type"] = json!("ClusterIP");
            }
            if spec.get("sessionAffinity").is_none() {
                spec["sessionAffinity"] = json!("None");
            }
            for p in spec["ports"].as_array_mut().into_iter().flatten() {
                if p.get("protocol").is_none() {
                    p["protocol"] = json!("TCP");
                }
                if p.get("targetPort").is_none() {
                    p["targetPort"] = p["port"].clone();
                }
            }
        }
        ("", "Secret") if obj.get("type").is_none() => obj["type"] = json!("Opaque"),
        _ => {}
    }
}

fn pod_spec_defaults(spec: &mut Value) {
    if !spec.is_object() {
        return;
    }
    for (k, v) in [
        ("restartPolicy", json!("Always")),
        ("dnsPolicy", json!("ClusterFirst")),
        ("terminationGracePeriodSeconds", json!(30)),
        ("schedulerName", json!("default-scheduler")),
        ("securityContext", json!({})),
    ] {
        if spec.get(k).is_none() {
            spec[k] = v;
        }
    }
    for list in ["initContainers", "containers"] {
        for c in spec[list].as_array_mut().into_iter().flatten() {
            if c.get("imagePullPolicy").is_none() {
                let image = c["image"].as_str().unwrap_or_default();
                let latest = !image.rsplit('/').next().unwrap_or_default().contains(':') || image.ends_with(":latest");
                c["imagePullPolicy"] = json!(if latest { "Always" } else { "IfNotPresent" });
            }
            if c.get("terminationMessagePath").is_none() {
                c["terminationMessagePath"] = json!("/dev/termination-log");
                c["terminationMessagePolicy"] = json!("File");
            }
            for p in c["ports"].as_array_mut().into_iter().flatten() {
                if p.get("protocol").is_none() {
                    p["protocol"] = json!("TCP");
                }
            }
        }
    }
    if spec.get("initContainers").is_some_and(Value::is_null) {
        spec.as_object_mut().map(|o| o.remove("initContainers"));
    }
}
