//! Server-side printing: the `meta.k8s.io/v1` `Table` that `kubectl get` asks for
//! (`Accept: application/json;as=Table;v=v1;g=meta.k8s.io`). Columns follow the API
//! server's printers for the built-in kinds (priority 1 = only with `-o wide`) and a
//! CRD's `additionalPrinterColumns` for custom resources. Pure functions of the
//! objects and the clock.
use crate::emulator::resources::ResourceType;
use crate::emulator::time;
use serde_json::{json, Value};
use std::time::SystemTime;

/// Whether an `Accept` header asks for a Table.
pub fn wants_table(accept: &str) -> bool {
    accept.split(',').any(|part| {
        let params: Vec<&str> = part.split(';').map(str::trim).collect();
        params.contains(&"as=Table") && params.contains(&"g=meta.k8s.io")
    })
}

/// `includeObject`: what each row carries besides its cells.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Include {
    None,
    Metadata,
    Object,
}

impl Include {
    pub fn from_query(v: Option<&str>) -> Self {
        match v {
            Some("None") => Include::None,
            Some("Object") => Include::Object,
            _ => Include::Metadata,
        }
    }
}

/// kubectl's `HumanDuration` (`5s`, `3m20s`, `2d4h`, ...).
pub fn human_duration(secs: i64) -> String {
    if secs < -1 {
        return "<invalid>".into();
    }
    let s = secs.max(0);
    let (m, h, d) = (s / 60, s / 3600, s / 86400);
    if s < 120 {
        format!("{s}s")
    } else if m < 10 {
        if s % 60 == 0 {
            format!("{m}m")
        } else {
            format!("{m}m{}s", s % 60)
        }
    } else if m < 180 {
        format!("{m}m")
    } else if h < 8 {
        if m % 60 == 0 {
            format!("{h}h")
        } else {
            format!("{h}h{}m", m % 60)
        }
    } else if h < 48 {
        format!("{h}h")
    } else if h < 192 {
        if h % 24 == 0 {
            format!("{d}d")
        } else {
            format!("{d}d{}h", h % 24)
        }
    } else if d < 730 {
        format!("{d}d")
    } else {
        format!("{}y", d / 365)
    }
}

fn age(v: &Value, now: SystemTime) -> String {
    match v.as_str().and_then(time::parse_rfc3339) {
        Some(t) => match now.duration_since(t) {
            Ok(d) => human_duration(d.as_secs() as i64),
            Err(_) => human_duration(0),
        },
        None => "<unknown>".into(),
    }
}

fn s(v: &Value) -> String {
    match v {
        Value::Null => "<none>".into(),
        Value::String(x) if x.is_empty() => "<none>".into(),
        Value::String(x) => x.clone(),
        other => other.to_string(),
    }
}

fn len(v: &Value) -> usize {
    v.as_object().map(|m| m.len()).or_else(|| v.as_array().map(Vec::len)).unwrap_or(0)
}

fn selector(v: &Value) -> String {
    let labels = if v["matchLabels"].is_object() { &v["matchLabels"] } else { v };
    let parts: Vec<String> = labels
        .as_object()
        .into_iter()
        .flatten()
        .map(|(k, v)| format!("{k}={}", v.as_str().unwrap_or_default()))
        .collect();
    if parts.is_empty() {
        "<none>".into()
    } else {
        parts.join(",")
    }
}

fn containers(spec: &Value) -> (String, String) {
    let cs: Vec<&Value> = spec["containers"].as_array().into_iter().flatten().collect();
    let names: Vec<&str> = cs.iter().filter_map(|c| c["name"].as_str()).collect();
    let images: Vec<&str> = cs.iter().filter_map(|c| c["image"].as_str()).collect();
    (names.join(","), images.join(","))
}

fn condition<'a>(obj: &'a Value, kind: &str) -> Option<&'a Value> {
    obj["status"]["conditions"].as_array()?.iter().find(|c| c["type"] == kind && c["status"] == "True")
}

/// What `kubectl get pods` shows in STATUS.
fn pod_status(pod: &Value) -> String {
    if pod["metadata"].get("deletionTimestamp").is_some() {
        return "Terminating".into();
    }
    for c in pod["status"]["containerStatuses"].as_array().into_iter().flatten() {
        if let Some(r) = c["state"]["waiting"]["reason"].as_str() {
            return r.into();
        }
        if let Some(r) = c["state"]["terminated"]["reason"].as_str() {
            if pod["status"]["phase"] != "Succeeded" && pod["status"]["phase"] != "Failed" {
                return r.into();
            }
        }
    }
    pod["status"]["reason"].as_str().or(pod["status"]["phase"].as_str()).unwrap_or("Pending").to_string()
}

type Column = (&'static str, &'static str, u8);

/// Built-in columns after NAME: (name, type, priority) and the cells of one object.
fn builtin_row(rt: &ResourceType, o: &Value, now: SystemTime) -> (Vec<Column>, Vec<Value>) {
    let st = &o["status"];
    let spec = &o["spec"];
    let created = age(&o["metadata"]["creationTimestamp"], now);
    let (cols, cells): (Vec<Column>, Vec<Value>) = match (rt.group.as_str(), rt.kind.as_str()) {
        ("", "Namespace") => (
            vec![("Status", "string", 0), ("Age", "string", 0)],
            vec![json!(st["phase"].as_str().unwrap_or("Active")), json!(created)],
        ),
        ("", "Pod") => {
            let statuses = st["containerStatuses"].as_array().cloned().unwrap_or_default();
            let total = spec["containers"].as_array().map(Vec::len).unwrap_or(0);
            let ready = statuses.iter().filter(|c| c["ready"] == true).count();
            let restarts: i64 = statuses.iter().filter_map(|c| c["restartCount"].as_i64()).sum();
            (
                vec![
                    ("Ready", "string", 0),
                    ("Status", "string", 0),
                    ("Restarts", "string", 0),
                    ("Age", "string", 0),
                    ("IP", "string", 1),
                    ("Node", "string", 1),
                    ("Nominated Node", "string", 1),
                    ("Readiness Gates", "string", 1),
                ],
                vec![
                    json!(format!("{ready}/{total}")),
                    json!(pod_status(o)),
                    json!(restarts.to_string()),
                    json!(created),
                    json!(s(&st["podIP"])),
                    json!(s(&spec["nodeName"])),
                    json!("<none>"),
                    json!("<none>"),
                ],
            )
        }
        ("", "Secret") => (
            vec![("Type", "string", 0), ("Data", "string", 0), ("Age", "string", 0)],
            vec![json!(s(&o["type"])), json!(len(&o["data"])), json!(created)],
        ),
        ("", "ConfigMap") => (
            vec![("Data", "string", 0), ("Age", "string", 0)],
            vec![json!(len(&o["data"]) + len(&o["binaryData"])), json!(created)],
        ),
        ("", "ServiceAccount") => {
            (vec![("Secrets", "string", 0), ("Age", "string", 0)], vec![json!(len(&o["secrets"])), json!(created)])
        }
        ("", "Service") => {
            let ports: Vec<String> = spec["ports"]
                .as_array()
                .into_iter()
                .flatten()
                .map(|p| format!("{}/{}", p["port"], p["protocol"].as_str().unwrap_or("TCP")))
                .collect();
            (
                vec![
                    ("Type", "string", 0),
                    ("Cluster-IP", "string", 0),
                    ("External-IP", "string", 0),
                    ("Port(s)", "string", 0),
                    ("Age", "string", 0),
                    ("Selector", "string", 1),
                ],
                vec![
                    json!(s(&spec["type"])),
                    json!(s(&spec["clusterIP"])),
                    json!("<none>"),
                    json!(if ports.is_empty() { "<none>".into() } else { ports.join(",") }),
                    json!(created),
                    json!(selector(&spec["selector"])),
                ],
            )
        }
        ("apps", "Deployment") => {
            let (names, images) = containers(&spec["template"]["spec"]);
            let n = |v: &Value| v.as_i64().unwrap_or(0);
            (
                vec![
                    ("Ready", "string", 0),
                    ("Up-to-date", "string", 0),
                    ("Available", "string", 0),
                    ("Age", "string", 0),
                    ("Containers", "string", 1),
                    ("Images", "string", 1),
                    ("Selector", "string", 1),
                ],
                vec![
                    json!(format!("{}/{}", n(&st["readyReplicas"]), n(&spec["replicas"]))),
                    json!(n(&st["updatedReplicas"])),
                    json!(n(&st["availableReplicas"])),
                    json!(created),
                    json!(names),
                    json!(images),
                    json!(selector(&spec["selector"])),
                ],
            )
        }
        ("batch", "Job") => {
            let (names, images) = containers(&spec["template"]["spec"]);
            let status = if condition(o, "Complete").is_some() {
                "Complete"
            } else if condition(o, "Failed").is_some() {
                "Failed"
            } else if spec["suspend"] == true {
                "Suspended"
            } else {
                "Running"
            };
            (
                vec![
                    ("Status", "string", 0),
                    ("Completions", "string", 0),
                    ("Age", "string", 0),
                    ("Containers", "string", 1),
                    ("Images", "string", 1),
                ],
                vec![
                    json!(status),
                    json!(format!(
                        "{}/{}",
                        st["succeeded"].as_i64().unwrap_or(0),
                        spec["completions"].as_i64().unwrap_or(1)
                    )),
                    json!(created),
                    json!(names),
                    json!(images),
                ],
            )
        }
        ("rbac.authorization.k8s.io", "RoleBinding" | "ClusterRoleBinding") => {
            let subjects = |k: &str| {
                let v: Vec<String> = o["subjects"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .filter(|x| x["kind"] == k)
                    .map(|x| match x["namespace"].as_str() {
                        Some(ns) if k == "ServiceAccount" => format!("{ns}/{}", x["name"].as_str().unwrap_or_default()),
                        _ => x["name"].as_str().unwrap_or_default().to_string(),
                    })
                    .collect();
                json!(v.join(", "))
            };
            (
                vec![
                    ("Role", "string", 0),
                    ("Age", "string", 0),
                    ("Users", "string", 1),
                    ("Groups", "string", 1),
                    ("ServiceAccounts", "string", 1),
                ],
                vec![
                    json!(format!("{}/{}", s(&o["roleRef"]["kind"]), s(&o["roleRef"]["name"]))),
                    json!(created),
                    subjects("User"),
                    subjects("Group"),
                    subjects("ServiceAccount"),
                ],
            )
        }
        ("rbac.authorization.k8s.io", _) | ("apiextensions.k8s.io", _) => {
            (vec![("Created At", "date", 0)], vec![json!(s(&o["metadata"]["creationTimestamp"]))])
        }
        ("policy", "PodDisruptionBudget") => {
            let or_na = |v: &Value| if v.is_null() { "N/A".to_string() } else { s(v) };
            (
                vec![
                    ("Min Available", "string", 0),
                    ("Max Unavailable", "string", 0),
                    ("Allowed Disruptions", "integer", 0),
                    ("Age", "string", 0),
                ],
                vec![
                    json!(or_na(&spec["minAvailable"])),
                    json!(or_na(&spec["maxUnavailable"])),
                    json!(st["disruptionsAllowed"].as_i64().unwrap_or(0)),
                    json!(created),
                ],
            )
        }
        ("coordination.k8s.io", "Lease") => (
            vec![("Holder", "string", 0), ("Age", "string", 0)],
            vec![json!(s(&spec["holderIdentity"])), json!(created)],
        ),
        ("networking.k8s.io", "NetworkPolicy") => (
            vec![("Pod-Selector", "string", 0), ("Age", "string", 0)],
            vec![json!(selector(&spec["podSelector"])), json!(created)],
        ),
        ("autoscaling", "HorizontalPodAutoscaler") => (
            vec![
                ("Reference", "string", 0),
                ("Minpods", "string", 0),
                ("Maxpods", "string", 0),
                ("Replicas", "string", 0),
                ("Age", "string", 0),
            ],
            vec![
                json!(format!("{}/{}", s(&spec["scaleTargetRef"]["kind"]), s(&spec["scaleTargetRef"]["name"]))),
                json!(spec["minReplicas"].as_i64().unwrap_or(1)),
                json!(spec["maxReplicas"].as_i64().unwrap_or(0)),
                json!(st["currentReplicas"].as_i64().unwrap_or(0)),
                json!(created),
            ],
        ),
        ("", "PersistentVolumeClaim") => (
            vec![("Status", "string", 0), ("Volume", "string", 0), ("Age", "string", 0)],
            vec![json!(st["phase"].as_str().unwrap_or("Pending")), json!(s(&spec["volumeName"])), json!(created)],
        ),
        _ => (vec![("Age", "string", 0)], vec![json!(created)]),
    };
    (cols, cells)
}

/// A simple JSONPath of a printer column (`.a.b`, `.a[0].b`,
/// `.status.conditions[?(@.type=="Ready")].status`).
pub fn json_path<'a>(obj: &'a Value, path: &str) -> Option<&'a Value> {
    let mut cur = obj;
    let mut rest = path.trim().trim_start_matches('{').trim_end_matches('}').trim_start_matches('.');
    while !rest.is_empty() {
        if let Some(r) = rest.strip_prefix("[?(@.") {
            let end = r.find(")]")?;
            let (field, want) = r[..end].split_once("==")?;
            let want = want.trim().trim_matches('"').trim_matches('\'');
            cur = cur.as_array()?.iter().find(|x| x[field.trim()].as_str() == Some(want))?;
            rest = r[end + 2..].trim_start_matches('.');
        } else if let Some(r) = rest.strip_prefix('[') {
            let end = r.find(']')?;
            cur = cur.get(r[..end].parse::<usize>().ok()?)?;
            rest = r[end + 1..].trim_start_matches('.');
        } else {
            let end = rest.find(['.', '[']).unwrap_or(rest.len());
            cur = cur.get(&rest[..end])?;
            rest = rest[end..].trim_start_matches('.');
        }
    }
    Some(cur)
}

fn custom_row(columns: &[Value], o: &Value, now: SystemTime) -> (Vec<(String, String, u8)>, Vec<Value>) {
    let mut cols = Vec::new();
    let mut cells = Vec::new();
    for c in columns {
        let ty = c["type"].as_str().unwrap_or("string");
        cols.push((
            c["name"].as_str().unwrap_or_default().to_string(),
            ty.to_string(),
            c["priority"].as_u64().unwrap_or(0) as u8,
        ));
        let v = json_path(o, c["jsonPath"].as_str().unwrap_or_default()).cloned().unwrap_or(Value::Null);
        cells.push(match (ty, &v) {
            (_, Value::Null) => Value::Null,
            ("date", _) => json!(age(&v, now)),
            _ => v,
        });
    }
    (cols, cells)
}

fn row_object(o: &Value, include: Include) -> Value {
    match include {
        Include::None => Value::Null,
        Include::Object => o.clone(),
        Include::Metadata => {
            let mut meta = o["metadata"].clone();
            if let Some(m) = meta.as_object_mut() {
                m.remove("managedFields");
            }
            json!({"kind": "PartialObjectMetadata", "apiVersion": "meta.k8s.io/v1", "metadata": meta})
        }
    }
}

/// The Table for `objects` (a list, one object, or one watch event's object).
pub fn table(rt: &ResourceType, objects: &[Value], resource_version: Option<&str>, include: Include) -> Value {
    let now = SystemTime::now();
    let custom = rt.printer_columns.as_array().filter(|a| !a.is_empty());
    let row = |o: &Value| -> (Vec<(String, String, u8)>, Vec<Value>) {
        match custom {
            Some(cols) => custom_row(cols, o, now),
            None => {
                let (cols, cells) = builtin_row(rt, o, now);
                (cols.into_iter().map(|(n, t, p)| (n.to_string(), t.to_string(), p)).collect(), cells)
            }
        }
    };
    let empty = json!({"metadata": {}});
    let (columns, _) = row(objects.first().unwrap_or(&empty));
    let mut defs = vec![
        json!({"name": "Name", "type": "string", "format": "name", "description": "Name must be unique within a namespace.", "priority": 0}),
    ];
    defs.extend(
        columns.iter().map(|(n, t, p)| json!({"name": n, "type": t, "format": "", "description": "", "priority": p})),
    );
    let rows: Vec<Value> = objects
        .iter()
        .map(|o| {
            let mut cells = vec![o["metadata"]["name"].clone()];
            cells.extend(row(o).1);
            let mut r = json!({"cells": cells});
            let obj = row_object(o, include);
            if !obj.is_null() {
                r["object"] = obj;
            }
            r
        })
        .collect();
    let mut meta = json!({});
    if let Some(rv) = resource_version {
        meta["resourceVersion"] = json!(rv);
    }
    json!({"kind": "Table", "apiVersion": "meta.k8s.io/v1", "metadata": meta, "columnDefinitions": defs, "rows": rows})
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::emulator::resources::{builtins, from_crd};

    fn rt(kind: &str) -> ResourceType {
        builtins().into_iter().find(|t| t.kind == kind).unwrap()
    }

    #[test]
    fn the_accept_header_kubectl_sends_asks_for_a_table() {
        assert!(wants_table("application/json;as=Table;v=v1;g=meta.k8s.io,application/json;as=Table;v=v1beta1;g=meta.k8s.io,application/json"));
        assert!(!wants_table("application/json"));
        assert!(!wants_table("application/json;as=PartialObjectMetadataList;v=v1;g=meta.k8s.io"));
    }

    #[test]
    fn durations_read_like_kubectls() {
        assert_eq!(human_duration(5), "5s");
        assert_eq!(human_duration(200), "3m20s");
        assert_eq!(human_duration(60 * 30), "30m");
        assert_eq!(human_duration(3600 * 5 + 60 * 7), "5h7m");
        assert_eq!(human_duration(86400 * 3 + 3600), "3d1h");
    }

    #[test]
    fn a_secret_row_shows_type_and_data_count_and_wide_columns_have_priority() {
        let secret = json!({"metadata": {"name": "s", "creationTimestamp": time::now()}, "type": "Opaque", "data": {"a": "Yg==", "c": "ZA=="}});
        let t = table(&rt("Secret"), &[secret], Some("7"), Include::Metadata);
        let names: Vec<&str> =
            t["columnDefinitions"].as_array().unwrap().iter().map(|c| c["name"].as_str().unwrap()).collect();
        assert_eq!(names, ["Name", "Type", "Data", "Age"]);
        assert_eq!(t["rows"][0]["cells"], json!(["s", "Opaque", 2, "0s"]));
        assert_eq!(t["rows"][0]["object"]["kind"], "PartialObjectMetadata");
        assert_eq!(t["metadata"]["resourceVersion"], "7");
        let pod = json!({"metadata": {"name": "p"}, "spec": {"containers": [{"name": "c"}]}, "status": {"phase": "Running", "containerStatuses": [{"ready": true, "restartCount": 2, "state": {"running": {}}}]}});
        let t = table(&rt("Pod"), &[pod], None, Include::None);
        assert_eq!(t["rows"][0]["cells"].as_array().unwrap()[1..4], [json!("1/1"), json!("Running"), json!("2")]);
        assert_eq!(t["columnDefinitions"][5]["priority"], 1, "IP is a wide column");
        assert!(t["rows"][0].get("object").is_none());
    }

    #[test]
    fn custom_resources_use_the_crds_printer_columns() {
        let crd = json!({"spec": {"group": "g.io", "scope": "Namespaced", "names": {"plural": "things", "kind": "Thing"},
            "versions": [{"name": "v1", "served": true, "additionalPrinterColumns": [
                {"name": "Phase", "type": "string", "jsonPath": ".status.phase"},
                {"name": "Ready", "type": "string", "jsonPath": ".status.conditions[?(@.type==\"Ready\")].status"}]}]}});
        let thing = json!({"metadata": {"name": "t"}, "status": {"phase": "Done", "conditions": [{"type": "X", "status": "False"}, {"type": "Ready", "status": "True"}]}});
        let t = table(&from_crd(&crd)[0], &[thing], None, Include::Object);
        assert_eq!(t["rows"][0]["cells"], json!(["t", "Done", "True"]));
        assert_eq!(t["rows"][0]["object"]["status"]["phase"], "Done");
    }
}
