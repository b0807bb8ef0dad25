//! PodSpec rules: volumes, containers (names, ports, mounts, probes, restart policy on
//! init containers), resources and quantities.
use super::arr;
use super::names::{is_dns1123_label, labels, DNS1123_LABEL_MSG};
use crate::emulator::status::Cause;
use serde_json::{json, Value};
use std::collections::HashSet;

/// PodSpec rules; `path` is e.g. `spec` or `spec.template.spec`.
pub fn pod_spec(spec: &Value, path: &str, causes: &mut Vec<Cause>) {
    let containers = arr(spec, "containers");
    let inits = arr(spec, "initContainers");
    if containers.is_empty() {
        causes.push(Cause::required(format!("{path}.containers")));
    }
    let mut volume_names = HashSet::new();
    for (i, v) in arr(spec, "volumes").iter().enumerate() {
        let name = v["name"].as_str().unwrap_or_default();
        let p = format!("{path}.volumes[{i}].name");
        if !is_dns1123_label(name) {
            causes.push(Cause::invalid(&p, &json!(name), DNS1123_LABEL_MSG));
        } else if !volume_names.insert(name.to_string()) {
            causes.push(Cause::duplicate(&p, &json!(name)));
        }
        let sources = v.as_object().map_or(0, |o| o.keys().filter(|k| *k != "name").count());
        if sources == 0 {
            causes.push(Cause::required(format!("{path}.volumes[{i}]")).with_message("must specify a volume type"));
        } else if sources > 1 {
            causes.push(Cause::forbidden(format!("{path}.volumes[{i}]"), "may not specify more than 1 volume type"));
        }
    }
    let mut names = HashSet::new();
    for (field, list, is_init) in [("initContainers", inits, true), ("containers", containers, false)] {
        for (i, c) in list.iter().enumerate() {
            let cp = format!("{path}.{field}[{i}]");
            container(c, &cp, is_init, &volume_names, &mut names, causes);
        }
    }
    if let Some(rp) = spec.get("restartPolicy").and_then(Value::as_str) {
        if !["Always", "OnFailure", "Never"].contains(&rp) {
            causes.push(Cause::not_supported(
                format!("{path}.restartPolicy"),
                &json!(rp),
                &["Always", "OnFailure", "Never"],
            ));
        }
    }
    if let Some(d) = spec.get("activeDeadlineSeconds").and_then(Value::as_i64) {
        if d <= 0 {
            causes.push(Cause::invalid(
                format!("{path}.activeDeadlineSeconds"),
                &json!(d),
                "must be between 1 and 2147483647, inclusive",
            ));
        }
    }
    if let Some(g) = spec.get("terminationGracePeriodSeconds").and_then(Value::as_i64) {
        if g < 0 {
            causes.push(Cause::invalid(
                format!("{path}.terminationGracePeriodSeconds"),
                &json!(g),
                "must be greater than or equal to 0",
            ));
        }
    }
    labels(spec.get("nodeSelector"), &format!("{path}.nodeSelector"), causes);
}

impl Cause {
    fn with_message(mut self, m: &str) -> Self {
        self.message = format!("{}: {m}", self.message);
        self
    }
}

fn container(
    c: &Value,
    cp: &str,
    is_init: bool,
    volumes: &HashSet<String>,
    names: &mut HashSet<String>,
    causes: &mut Vec<Cause>,
) {
    let name = c["name"].as_str().unwrap_or_default();
    if name.is_empty() {
        causes.push(Cause::required(format!("{cp}.name")));
    } else if !is_dns1123_label(name) {
        causes.push(Cause::invalid(format!("{cp}.name"), &json!(name), DNS1123_LABEL_MSG));
    } else if !names.insert(name.to_string()) {
        causes.push(Cause::duplicate(format!("{cp}.name"), &json!(name)));
    }
    if c["image"].as_str().is_none_or(|s| s.trim().is_empty()) {
        causes.push(Cause::required(format!("{cp}.image")));
    }
    let restart = c.get("restartPolicy").and_then(Value::as_str);
    let is_sidecar = is_init && restart == Some("Always");
    match (is_init, restart) {
        (false, Some(_)) => {
            causes.push(Cause::forbidden(format!("{cp}.restartPolicy"), "may not be set for non-init containers"));
        }
        (true, Some(r)) if r != "Always" => {
            causes.push(Cause::not_supported(format!("{cp}.restartPolicy"), &json!(r), &["Always"]));
        }
        _ => {}
    }
    if is_init && !is_sidecar {
        for probe in ["startupProbe", "livenessProbe", "readinessProbe"] {
            if c.get(probe).is_some_and(|p| !p.is_null()) {
                causes.push(Cause::forbidden(
                    format!("{cp}.{probe}"),
                    "may not be set for init containers without restartPolicy=Always",
                ));
            }
        }
        if c.get("lifecycle").is_some_and(|p| !p.is_null()) {
            causes.push(Cause::forbidden(
                format!("{cp}.lifecycle"),
                "may not be set for init containers without restartPolicy=Always",
            ));
        }
    }
    let mut port_names = HashSet::new();
    let mut port_numbers = Vec::new();
    for (i, p) in arr(c, "ports").iter().enumerate() {
        let n = p["containerPort"].as_i64().unwrap_or(0);
        if !(1..=65535).contains(&n) {
            causes.push(Cause::invalid(
                format!("{cp}.ports[{i}].containerPort"),
                &json!(n),
                "must be between 1 and 65535, inclusive",
            ));
        }
        port_numbers.push(n);
        if let Some(pn) = p.get("name").and_then(Value::as_str) {
            if pn.len() > 15 || !is_dns1123_label(pn) || !pn.bytes().any(|b| b.is_ascii_lowercase()) {
                causes.push(Cause::invalid(
                    format!("{cp}.ports[{i}].name"),
                    &json!(pn),
                    "must be no more than 15 characters and an IANA_SVC_NAME",
                ));
            } else if !port_names.insert(pn.to_string()) {
                causes.push(Cause::duplicate(format!("{cp}.ports[{i}].name"), &json!(pn)));
            }
        }
    }
    for probe in ["startupProbe", "livenessProbe", "readinessProbe"] {
        if let Some(port) = c.pointer(&format!("/{probe}/httpGet/port")) {
            let field = format!("{cp}.{probe}.httpGet.port");
            match port {
                Value::Number(n) if !(1..=65535).contains(&n.as_i64().unwrap_or(0)) => {
                    causes.push(Cause::invalid(field, port, "must be between 1 and 65535, inclusive"));
                }
                Value::String(s) if !port_names.contains(s) => {
                    causes.push(Cause::invalid(field, port, "must contain at least one port definition"));
                }
                _ => {}
            }
        }
    }
    let mut mount_paths = HashSet::new();
    for (i, m) in arr(c, "volumeMounts").iter().enumerate() {
        let vn = m["name"].as_str().unwrap_or_default();
        if !volumes.contains(vn) {
            causes.push(Cause::not_found(format!("{cp}.volumeMounts[{i}].name"), &json!(vn)));
        }
        let mp = m["mountPath"].as_str().unwrap_or_default();
        if mp.is_empty() {
            causes.push(Cause::required(format!("{cp}.volumeMounts[{i}].mountPath")));
        } else if !mount_paths.insert(mp.to_string()) {
            causes.push(Cause::invalid(format!("{cp}.volumeMounts[{i}].mountPath"), &json!(mp), "must be unique"));
        }
    }
    for (i, e) in arr(c, "env").iter().enumerate() {
        let ep = format!("{cp}.env[{i}]");
        if e["name"].as_str().is_none_or(str::is_empty) {
            causes.push(Cause::required(format!("{ep}.name")));
        }
        if let Some(from) = e.get("valueFrom").and_then(Value::as_object) {
            if e.get("value").and_then(Value::as_str).is_some_and(|v| !v.is_empty()) {
                causes.push(Cause::invalid(
                    format!("{ep}.valueFrom"),
                    &Value::Null,
                    "may not be specified when `value` is not empty",
                ));
            }
            let sources = from.values().filter(|v| !v.is_null()).count();
            if sources != 1 {
                causes.push(Cause::invalid(
                    format!("{ep}.valueFrom"),
                    &Value::Null,
                    "may not have more than one field specified at a time",
                ));
            }
            if let Some(path) = from.get("fieldRef").and_then(|f| f["fieldPath"].as_str()) {
                let supported = [
                    "metadata.name",
                    "metadata.namespace",
                    "metadata.uid",
                    "spec.nodeName",
                    "spec.serviceAccountName",
                    "status.hostIP",
                    "status.podIP",
                    "status.podIPs",
                ];
                let labeled = path.starts_with("metadata.labels['") || path.starts_with("metadata.annotations['");
                if !supported.contains(&path) && !labeled {
                    causes.push(Cause::not_supported(
                        format!("{ep}.valueFrom.fieldRef.fieldPath"),
                        &json!(path),
                        &supported,
                    ));
                }
            }
        }
    }
    quantities(c, cp, causes);
}

/// Parses a Kubernetes quantity into a comparable number (milli-units).
pub fn parse_quantity(v: &Value) -> Option<f64> {
    let s = match v {
        Value::Number(n) => return n.as_f64(),
        Value::String(s) => s.trim(),
        _ => return None,
    };
    let split = s.find(|c: char| !(c.is_ascii_digit() || c == '.' || c == '+' || c == '-')).unwrap_or(s.len());
    let (num, suffix) = s.split_at(split);
    let n: f64 = num.parse().ok()?;
    let mult = match suffix {
        "" => 1.0,
        "m" => 1e-3,
        "k" => 1e3,
        "M" => 1e6,
        "G" => 1e9,
        "T" => 1e12,
        "Ki" => 1024.0,
        "Mi" => 1024.0 * 1024.0,
        "Gi" => 1024.0 * 1024.0 * 1024.0,
        "Ti" => 1024.0f64.powi(4),
        s if s.starts_with(['e', 'E']) => 10f64.powi(s[1..].parse().ok()?),
        _ => return None,
    };
    Some(n * mult)
}

fn quantities(c: &Value, cp: &str, causes: &mut Vec<Cause>) {
    let res = &c["resources"];
    for part in ["requests", "limits"] {
        if let Some(m) = res.get(part).and_then(Value::as_object) {
            for (k, v) in m {
                if parse_quantity(v).is_none() {
                    causes.push(Cause::invalid(
                        format!("{cp}.resources.{part}[{k}]"),
                        v,
                        "quantities must match the regular expression '^([+-]?[0-9.]+)([eEinumkKMGTP]*[-+]?[0-9]*)$'",
                    ));
                }
            }
        }
    }
    if let (Some(req), Some(lim)) =
        (res.get("requests").and_then(Value::as_object), res.get("limits").and_then(Value::as_object))
    {
        for (k, r) in req {
            if let (Some(rq), Some(lq)) = (parse_quantity(r), lim.get(k).and_then(parse_quantity)) {
                if rq > lq {
                    causes.push(Cause::invalid(
                        format!("{cp}.resources.requests"),
                        r,
                        &format!(
                            "must be less than or equal to {k} limit of {}",
                            lim[k].as_str().map(str::to_string).unwrap_or_else(|| lim[k].to_string())
                        ),
                    ));
                }
            }
        }
    }
}
