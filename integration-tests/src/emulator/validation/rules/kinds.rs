//! The rules of each other kind the emulator serves (Job, Deployment, Service,
//! Secret/ConfigMap data, HorizontalPodAutoscaler, Lease, events.k8s.io Event, CRD),
//! including which fields are immutable on update.
use super::arr;
use super::names::{is_config_key, labels};
use super::pod::pod_spec;
use crate::emulator::status::Cause;
use serde_json::{json, Value};
use std::collections::HashSet;

pub fn job(obj: &Value, old: Option<&Value>, causes: &mut Vec<Cause>) {
    let spec = &obj["spec"];
    let template = &spec["template"];
    if template.is_null() {
        causes.push(Cause::required("spec.template"));
        return;
    }
    pod_spec(&template["spec"], "spec.template.spec", causes);
    labels(template.pointer("/metadata/labels"), "spec.template.metadata.labels", causes);
    match template.pointer("/spec/restartPolicy").and_then(Value::as_str) {
        Some("Never") | Some("OnFailure") => {}
        Some(other) => causes.push(Cause::not_supported(
            "spec.template.spec.restartPolicy",
            &json!(other),
            &["OnFailure", "Never"],
        )),
        None => causes.push(Cause::required("spec.template.spec.restartPolicy")),
    }
    for f in ["parallelism", "completions", "backoffLimit", "ttlSecondsAfterFinished"] {
        if let Some(n) = spec.get(f).and_then(Value::as_i64) {
            if n < 0 {
                causes.push(Cause::invalid(format!("spec.{f}"), &json!(n), "must be greater than or equal to 0"));
            }
        }
    }
    if let Some(n) = spec.get("activeDeadlineSeconds").and_then(Value::as_i64) {
        if n <= 0 {
            causes.push(Cause::invalid("spec.activeDeadlineSeconds", &json!(n), "must be greater than 0"));
        }
    }
    if let Some(old) = old {
        for f in ["template", "selector", "completions", "completionMode", "podFailurePolicy"] {
            if old["spec"].get(f) != spec.get(f) && !(f == "completions" && spec.get(f).is_none()) {
                causes.push(Cause::invalid(format!("spec.{f}"), &spec[f], "field is immutable"));
            }
        }
    }
}

pub fn deployment(obj: &Value, old: Option<&Value>, causes: &mut Vec<Cause>) {
    let spec = &obj["spec"];
    pod_spec(&spec["template"]["spec"], "spec.template.spec", causes);
    let selector = &spec["selector"];
    if selector.is_null() || selector.as_object().is_some_and(|o| o.is_empty()) {
        causes.push(Cause::required("spec.selector"));
    } else if let Ok(sel) = crate::emulator::selectors::LabelSelector::from_label_selector_json(selector) {
        if sel.is_empty() {
            causes.push(Cause::invalid("spec.selector", selector, "empty selector is invalid for deployment"));
        } else if !sel.matches_object(&spec["template"]) {
            causes.push(Cause::invalid(
                "spec.template.metadata.labels",
                &spec["template"]["metadata"]["labels"],
                "`selector` does not match template `labels`",
            ));
        }
    }
    match spec.pointer("/template/spec/restartPolicy").and_then(Value::as_str) {
        None | Some("Always") => {}
        Some(other) => {
            causes.push(Cause::not_supported("spec.template.spec.restartPolicy", &json!(other), &["Always"]));
        }
    }
    if let Some(r) = spec.get("replicas").and_then(Value::as_i64) {
        if r < 0 {
            causes.push(Cause::invalid("spec.replicas", &json!(r), "must be greater than or equal to 0"));
        }
    }
    if let Some(old) = old {
        if old["spec"]["selector"] != *selector {
            causes.push(Cause::invalid("spec.selector", selector, "field is immutable"));
        }
    }
}

pub fn service(obj: &Value, old: Option<&Value>, causes: &mut Vec<Cause>) {
    let spec = &obj["spec"];
    let ty = spec["type"].as_str().unwrap_or("ClusterIP");
    let ports = arr(spec, "ports");
    if ports.is_empty() && ty != "ExternalName" && spec["clusterIP"].as_str() != Some("None") {
        causes.push(Cause::required("spec.ports"));
    }
    let mut names = HashSet::new();
    for (i, p) in ports.iter().enumerate() {
        let n = p["port"].as_i64().unwrap_or(0);
        if !(1..=65535).contains(&n) {
            causes.push(Cause::invalid(
                format!("spec.ports[{i}].port"),
                &json!(n),
                "must be between 1 and 65535, inclusive",
            ));
        }
        let name = p["name"].as_str().unwrap_or_default();
        if ports.len() > 1 && name.is_empty() {
            causes.push(Cause::required(format!("spec.ports[{i}].name")));
        }
        if !name.is_empty() && !names.insert(name.to_string()) {
            causes.push(Cause::duplicate(format!("spec.ports[{i}].name"), &json!(name)));
        }
    }
    if let Some(sel) = spec.get("selector") {
        labels(Some(sel), "spec.selector", causes);
    }
    if let Some(old) = old {
        let (o, n) = (&old["spec"]["clusterIP"], &spec["clusterIP"]);
        if !n.is_null() && o != n {
            causes.push(Cause::invalid("spec.clusterIPs[0]", n, "may not change once set"));
        }
    }
}

pub fn data_keys(obj: &Value, causes: &mut Vec<Cause>) {
    for field in ["data", "stringData", "binaryData"] {
        if let Some(m) = obj.get(field).and_then(Value::as_object) {
            for k in m.keys() {
                if !is_config_key(k) {
                    causes.push(Cause::invalid(format!("{field}[{k}]"), &json!(k), "a valid config key must consist of alphanumeric characters, '-', '_' or '.' (e.g. 'key.name',  or 'KEY_NAME',  or 'key-name', regex used for validation is '[-._a-zA-Z0-9]+')"));
                }
            }
        }
    }
}

pub fn immutable_data(obj: &Value, old: Option<&Value>, causes: &mut Vec<Cause>) {
    if let Some(old) = old {
        if old["immutable"] == json!(true)
            && (old["data"] != obj["data"] || old.get("binaryData") != obj.get("binaryData"))
        {
            causes.push(Cause::forbidden("data", "field is immutable when `immutable` is set"));
        }
    }
}

pub fn hpa(obj: &Value, causes: &mut Vec<Cause>) {
    let spec = &obj["spec"];
    let max = spec["maxReplicas"].as_i64().unwrap_or(0);
    if max < 1 {
        causes.push(Cause::invalid("spec.maxReplicas", &json!(max), "must be greater than or equal to 1"));
    }
    if let Some(min) = spec.get("minReplicas").and_then(Value::as_i64) {
        if min < 1 {
            causes.push(Cause::invalid("spec.minReplicas", &json!(min), "must be greater than or equal to 1"));
        } else if min > max {
            causes.push(Cause::invalid(
                "spec.maxReplicas",
                &json!(max),
                "must be greater than or equal to `minReplicas`",
            ));
        }
    }
    for (i, m) in arr(spec, "metrics").iter().enumerate() {
        if m["type"] == "Resource" {
            let target = &m["resource"]["target"];
            let key = match target["type"].as_str() {
                Some("Utilization") => "averageUtilization",
                Some("AverageValue") => "averageValue",
                Some("Value") => "value",
                _ => "type",
            };
            if target.get(key).is_none() {
                causes.push(Cause::required(format!("spec.metrics[{i}].resource.target.{key}")));
            }
        }
    }
}

pub fn lease(obj: &Value, causes: &mut Vec<Cause>) {
    if let Some(d) = obj.pointer("/spec/leaseDurationSeconds").and_then(Value::as_i64) {
        if d <= 0 {
            causes.push(Cause::invalid("spec.leaseDurationSeconds", &json!(d), "must be greater than 0"));
        }
    }
    if let Some(t) = obj.pointer("/spec/leaseTransitions").and_then(Value::as_i64) {
        if t < 0 {
            causes.push(Cause::invalid("spec.leaseTransitions", &json!(t), "must be greater than or equal to 0"));
        }
    }
}

/// events.k8s.io/v1 requires what kube's `Recorder` sends.
pub fn event_v1(obj: &Value, causes: &mut Vec<Cause>) {
    for f in ["eventTime", "reportingController", "reportingInstance", "action", "reason"] {
        if obj.get(f).is_none_or(|v| v.is_null() || v == "") {
            causes.push(Cause::required(f));
        }
    }
    if let Some(t) = obj.get("type").and_then(Value::as_str) {
        if t != "Normal" && t != "Warning" {
            causes.push(Cause::not_supported("type", &json!(t), &["Normal", "Warning"]));
        }
    }
}

pub fn crd(obj: &Value, causes: &mut Vec<Cause>) {
    let spec = &obj["spec"];
    let group = spec["group"].as_str().unwrap_or_default();
    let plural = spec["names"]["plural"].as_str().unwrap_or_default();
    let name = obj["metadata"]["name"].as_str().unwrap_or_default();
    if name != format!("{plural}.{group}") {
        causes.push(Cause::invalid("metadata.name", &json!(name), "must be spec.names.plural+\".\"+spec.group"));
    }
    let versions = arr(spec, "versions");
    if versions.is_empty() {
        causes.push(Cause::required("spec.versions"));
    }
    if versions.iter().filter(|v| v["storage"] == json!(true)).count() != 1 {
        causes.push(Cause::invalid(
            "spec.versions",
            &Value::Null,
            "must have exactly one version marked as storage version",
        ));
    }
    for (i, v) in versions.iter().enumerate() {
        if v.pointer("/schema/openAPIV3Schema").is_none() {
            causes.push(Cause::required(format!("spec.versions[{i}].schema.openAPIV3Schema")));
        }
    }
}
