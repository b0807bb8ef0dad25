//! The API server's own validation rules for the fields the job manager uses: the
//! messages and field paths follow `k8s.io/kubernetes/pkg/apis/*/validation`.
use crate::emulator::status::Cause;
use serde_json::{json, Value};
use std::collections::HashSet;

pub fn is_dns1123_label(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 63
        && s.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !s.starts_with('-')
        && !s.ends_with('-')
}

pub fn is_dns1123_subdomain(s: &str) -> bool {
    !s.is_empty() && s.len() <= 253 && s.split('.').all(is_dns1123_label)
}

pub fn is_dns1035_label(s: &str) -> bool {
    is_dns1123_label(s) && s.as_bytes()[0].is_ascii_lowercase()
}

/// `[A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?`, at most 63 characters.
pub fn is_qualified_name_part(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 63
        && s.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
        && s.as_bytes()[0].is_ascii_alphanumeric()
        && s.as_bytes()[s.len() - 1].is_ascii_alphanumeric()
}

pub fn is_qualified_name(s: &str) -> bool {
    match s.split_once('/') {
        Some((prefix, name)) => is_dns1123_subdomain(prefix) && is_qualified_name_part(name),
        None => is_qualified_name_part(s),
    }
}

pub fn is_label_value(s: &str) -> bool {
    s.is_empty() || is_qualified_name_part(s)
}

fn is_config_key(s: &str) -> bool {
    !s.is_empty() && s.len() <= 253 && s.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
}

const DNS1123_LABEL_MSG: &str = "a lowercase RFC 1123 label must consist of lower case alphanumeric characters or '-', and must start and end with an alphanumeric character (e.g. 'my-name',  or '123-abc', regex used for validation is '[a-z0-9]([-a-z0-9]*[a-z0-9])?')";
const DNS1123_SUBDOMAIN_MSG: &str = "a lowercase RFC 1123 subdomain must consist of lower case alphanumeric characters, '-' or '.', and must start and end with an alphanumeric character (e.g. 'example.com', regex used for validation is '[a-z0-9]([-a-z0-9]*[a-z0-9])?(\\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*')";
const DNS1035_MSG: &str = "a DNS-1035 label must consist of lower case alphanumeric characters or '-', start with an alphabetic character, and end with an alphanumeric character (e.g. 'my-name',  or 'abc-123', regex used for validation is '[a-z]([-a-z0-9]*[a-z0-9])?')";
const LABEL_VALUE_MSG: &str = "a valid label must be an empty string or consist of alphanumeric characters, '-', '_' or '.', and must start and end with an alphanumeric character (e.g. 'MyValue',  or 'my_value',  or '12345', regex used for validation is '(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?')";
const QUALIFIED_NAME_MSG: &str = "name part must consist of alphanumeric characters, '-', '_' or '.', and must start and end with an alphanumeric character (e.g. 'MyName',  or 'my.name',  or '123-abc', regex used for validation is '([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]') with an optional DNS subdomain prefix and '/' (e.g. 'example.com/MyName')";

/// Which naming rule `metadata.name` follows for a kind.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NameRule {
    Subdomain,
    Label,
    Dns1035,
}

pub fn name_rule(kind: &str) -> NameRule {
    match kind {
        "Service" => NameRule::Dns1035,
        // Since 1.27 a Job's name ends up in the `job-name` label, so it is a label.
        "Job" => NameRule::Label,
        _ => NameRule::Subdomain,
    }
}

pub fn object_meta(meta: &Value, rule: NameRule, namespaced: bool, causes: &mut Vec<Cause>) {
    let name = meta.get("name").and_then(Value::as_str).unwrap_or_default();
    if name.is_empty() {
        causes.push(Cause::required("metadata.name"));
    } else {
        let (ok, msg) = match rule {
            NameRule::Subdomain => (is_dns1123_subdomain(name), DNS1123_SUBDOMAIN_MSG),
            NameRule::Label => (is_dns1123_label(name), DNS1123_LABEL_MSG),
            NameRule::Dns1035 => (is_dns1035_label(name), DNS1035_MSG),
        };
        if !ok {
            let limit = if rule == NameRule::Subdomain { 253 } else { 63 };
            let detail =
                if name.len() > limit { format!("must be no more than {limit} characters") } else { msg.to_string() };
            causes.push(Cause::invalid("metadata.name", &json!(name), &detail));
        }
    }
    if namespaced {
        if let Some(ns) = meta.get("namespace").and_then(Value::as_str) {
            if !is_dns1123_label(ns) {
                causes.push(Cause::invalid("metadata.namespace", &json!(ns), DNS1123_LABEL_MSG));
            }
        }
    }
    labels(meta.get("labels"), "metadata.labels", causes);
    if let Some(a) = meta.get("annotations").and_then(Value::as_object) {
        let mut total = 0;
        for (k, v) in a {
            total += k.len() + v.as_str().map_or(0, str::len);
            if !is_qualified_name(k) {
                causes.push(Cause::invalid("metadata.annotations", &json!(k), QUALIFIED_NAME_MSG));
            }
        }
        if total > 256 * 1024 {
            causes.push(Cause::too_long("metadata.annotations", &Value::Null, 256 * 1024));
        }
    }
    if let Some(refs) = meta.get("ownerReferences").and_then(Value::as_array) {
        let controllers = refs.iter().filter(|r| r["controller"] == json!(true)).count();
        if controllers > 1 {
            causes.push(Cause::invalid(
                "metadata.ownerReferences",
                &Value::Null,
                "Only one reference can have Controller set to true",
            ));
        }
        for (i, r) in refs.iter().enumerate() {
            for f in ["apiVersion", "kind", "name", "uid"] {
                if r.get(f).and_then(Value::as_str).is_none_or(str::is_empty) {
                    causes.push(Cause::invalid(
                        format!("metadata.ownerReferences[{i}].{f}"),
                        &json!(""),
                        &format!("{f} must not be empty"),
                    ));
                }
            }
        }
    }
}

pub fn labels(l: Option<&Value>, path: &str, causes: &mut Vec<Cause>) {
    let Some(l) = l.and_then(Value::as_object) else {
        return;
    };
    for (k, v) in l {
        if !is_qualified_name(k) {
            causes.push(Cause::invalid(path, &json!(k), QUALIFIED_NAME_MSG));
        }
        let v = v.as_str().unwrap_or_default();
        if !is_label_value(v) {
            causes.push(Cause::invalid(format!("{path}[{k}]"), &json!(v), LABEL_VALUE_MSG));
        }
    }
}

fn arr<'a>(v: &'a Value, key: &str) -> &'a [Value] {
    v.get(key).and_then(Value::as_array).map(Vec::as_slice).unwrap_or(&[])
}

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
            causes.push(Cause::forbidden(format!("{cp}.restartPolicy"), "may not be set for non-init containers"))
        }
        (true, Some(r)) if r != "Always" => {
            causes.push(Cause::not_supported(format!("{cp}.restartPolicy"), &json!(r), &["Always"]))
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
                    causes.push(Cause::invalid(field, port, "must be between 1 and 65535, inclusive"))
                }
                Value::String(s) if !port_names.contains(s) => {
                    causes.push(Cause::invalid(field, port, "must contain at least one port definition"))
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
            causes.push(Cause::not_supported("spec.template.spec.restartPolicy", &json!(other), &["Always"]))
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

#[cfg(test)]
mod tests {
    use super::*;

    fn causes_of(f: impl FnOnce(&mut Vec<Cause>)) -> Vec<String> {
        let mut c = Vec::new();
        f(&mut c);
        c.iter().map(Cause::line).collect()
    }

    #[test]
    fn name_syntax() {
        assert!(is_dns1123_label("job-1"));
        assert!(!is_dns1123_label("Job"));
        assert!(!is_dns1123_label(&"a".repeat(64)));
        assert!(is_dns1123_subdomain("a.b-c.d"));
        assert!(!is_dns1035_label("1abc"));
        assert!(is_qualified_name("example.com/team"));
        assert!(!is_qualified_name("-bad"));
        assert!(is_label_value(""));
        assert!(!is_label_value("has space"));
    }

    #[test]
    fn restart_policy_always_only_on_init_containers() {
        let spec = json!({"initContainers": [{"name": "side", "image": "s", "restartPolicy": "Always",
                "startupProbe": {"httpGet": {"port": 9901}}}],
            "containers": [{"name": "main", "image": "r", "restartPolicy": "Always"}]});
        assert_eq!(
            causes_of(|c| pod_spec(&spec, "spec.template.spec", c)),
            vec!["spec.template.spec.containers[0].restartPolicy: Forbidden: may not be set for non-init containers"]
        );
    }

    #[test]
    fn probes_forbidden_on_plain_init_containers_and_names_unique() {
        let spec = json!({"initContainers": [{"name": "a", "image": "s", "startupProbe": {"httpGet": {"port": 1}}}],
            "containers": [{"name": "a", "image": "r"}]});
        let got = causes_of(|c| pod_spec(&spec, "spec", c));
        assert!(got.contains(&"spec.initContainers[0].startupProbe: Forbidden: may not be set for init containers without restartPolicy=Always".to_string()), "{got:?}");
        assert!(got.contains(&"spec.containers[0].name: Duplicate value: \"a\"".to_string()), "{got:?}");
    }

    #[test]
    fn mounts_must_reference_volumes() {
        let spec = json!({"volumes": [{"name": "job", "secret": {"secretName": "s"}}],
            "containers": [{"name": "c", "image": "r", "volumeMounts": [{"name": "job", "mountPath": "/j"}, {"name": "nope", "mountPath": "/n"}]}]});
        assert_eq!(
            causes_of(|c| pod_spec(&spec, "spec", c)),
            vec!["spec.containers[0].volumeMounts[1].name: Not found: \"nope\""]
        );
    }

    #[test]
    fn job_restart_policy_and_immutable_template() {
        let j = json!({"spec": {"template": {"spec": {"restartPolicy": "Always", "containers": [{"name": "c", "image": "i"}]}}}});
        assert_eq!(
            causes_of(|c| job(&j, None, c)),
            vec!["spec.template.spec.restartPolicy: Unsupported value: \"Always\": supported values: \"OnFailure\", \"Never\""]
        );
        let old = json!({"spec": {"template": {"spec": {"restartPolicy": "Never", "containers": [{"name": "c", "image": "i"}]}}}});
        let mut new = old.clone();
        new["spec"]["template"]["spec"]["containers"][0]["image"] = json!("other");
        let got = causes_of(|c| job(&new, Some(&old), c));
        assert_eq!(got.len(), 1);
        assert!(
            got[0].starts_with("spec.template: Invalid value:") && got[0].ends_with("field is immutable"),
            "{got:?}"
        );
    }

    #[test]
    fn quantities_and_request_limit_order() {
        assert_eq!(parse_quantity(&json!("250m")), Some(0.25));
        assert_eq!(parse_quantity(&json!("1Gi")), Some(1073741824.0));
        let spec = json!({"containers": [{"name": "c", "image": "i", "resources": {"requests": {"cpu": "2"}, "limits": {"cpu": "1"}}}]});
        assert_eq!(causes_of(|c| pod_spec(&spec, "spec", c)).len(), 1);
    }

    #[test]
    fn deployment_selector_must_match_template() {
        let d = json!({"spec": {"selector": {"matchLabels": {"app": "a"}}, "template": {"metadata": {"labels": {"app": "b"}}, "spec": {"containers": [{"name": "c", "image": "i"}]}}}});
        let got = causes_of(|c| deployment(&d, None, c));
        assert_eq!(got.len(), 1);
        assert!(got[0].contains("`selector` does not match template `labels`"));
    }
}
