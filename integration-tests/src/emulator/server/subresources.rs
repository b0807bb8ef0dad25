//! Subresources besides `status`: `pods/{name}/log` (the container log a kubelet
//! keeps) and `deployments/{name}/scale` (an `autoscaling/v1` Scale over the
//! Deployment's replicas, what `kubectl scale` patches).
use super::Body;
use crate::emulator::patch::{self, PatchType};
use crate::emulator::resources::ResourceType;
use crate::emulator::status::{ApiError, Cause};
use crate::emulator::store::{meta_str, Store, WriteOptions};
use bytes::Bytes;
use http::{header, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use serde_json::{json, Value};
use std::collections::HashMap;

/// The last `n` lines of `text` (`tailLines`).
pub(super) fn tail(text: &str, n: Option<usize>) -> &str {
    let Some(n) = n else { return text };
    let trimmed = text.strip_suffix('\n').unwrap_or(text);
    match trimmed.rmatch_indices('\n').nth(n.saturating_sub(1)) {
        Some((i, _)) if n > 0 => &text[i + 1..],
        _ if n == 0 => "",
        _ => text,
    }
}

pub(super) fn pod_log(
    store: &Store,
    ns: &str,
    name: &str,
    query: &HashMap<String, String>,
) -> Result<Response<Body>, ApiError> {
    let rt = store.find_kind("v1", "Pod").ok_or(ApiError::NoResource)?;
    let pod = store.get(&rt, ns, name)?;
    let names: Vec<&str> =
        pod["spec"]["containers"].as_array().into_iter().flatten().filter_map(|c| c["name"].as_str()).collect();
    let inits: Vec<&str> =
        pod["spec"]["initContainers"].as_array().into_iter().flatten().filter_map(|c| c["name"].as_str()).collect();
    let container = match (query.get("container"), names.as_slice()) {
        (Some(c), _) => c.clone(),
        (None, [only]) => only.to_string(),
        (None, _) => {
            return Err(ApiError::BadRequest(format!(
                "a container name must be specified for pod {name}, choose one of: [{}] or one of the init containers: [{}]",
                names.join(" "),
                inits.join(" ")
            )))
        }
    };
    if !names.contains(&container.as_str()) && !inits.contains(&container.as_str()) {
        return Err(ApiError::BadRequest(format!("container {container} is not valid for pod {name}")));
    }
    let waiting = pod["status"]["containerStatuses"]
        .as_array()
        .into_iter()
        .chain(pod["status"]["initContainerStatuses"].as_array())
        .flatten()
        .find(|c| c["name"] == container.as_str())
        .and_then(|c| c["state"]["waiting"]["reason"].as_str().map(str::to_string));
    let text = store.pod_log_path(&pod, &container).and_then(|p| std::fs::read_to_string(p).ok());
    let Some(text) = text else {
        let why = waiting.unwrap_or_else(|| "ContainerCreating".into());
        return Err(ApiError::BadRequest(format!(
            "container \"{container}\" in pod \"{name}\" is waiting to start: {}",
            if why == "ContainerCreating" { "ContainerCreating".to_string() } else { why }
        )));
    };
    let lines = query.get("tailLines").and_then(|v| v.parse().ok());
    let out = tail(&text, lines).to_string();
    Ok(Response::builder()
        .status(StatusCode::OK)
        .header(header::CONTENT_TYPE, "text/plain")
        .body(Full::new(Bytes::from(out)).boxed())
        .expect("static response parts are valid"))
}

/// `POST serviceaccounts/{name}/token` (`kubectl create token`): a TokenRequest whose
/// status carries a bearer token the emulator authenticates as that account.
pub(super) fn token(store: &Store, rt: &ResourceType, ns: &str, name: &str, request: Value) -> Result<Value, ApiError> {
    if name != "default" {
        store.get(rt, ns, name)?;
    }
    let secs = request["spec"]["expirationSeconds"].as_u64().unwrap_or(3600);
    let expires = crate::emulator::time::rfc3339(std::time::SystemTime::now() + std::time::Duration::from_secs(secs));
    Ok(json!({
        "kind": "TokenRequest", "apiVersion": "authentication.k8s.io/v1",
        "metadata": {"name": name, "namespace": ns, "creationTimestamp": null},
        "spec": {"audiences": request["spec"]["audiences"].as_array().cloned().unwrap_or_else(|| vec![json!("https://kubernetes.default.svc")]),
            "expirationSeconds": secs, "boundObjectRef": null},
        "status": {"token": store.issue_token(ns, name), "expirationTimestamp": expires},
    }))
}

fn scale_of(d: &Value) -> Value {
    let selector: Vec<String> = d["spec"]["selector"]["matchLabels"]
        .as_object()
        .into_iter()
        .flatten()
        .map(|(k, v)| format!("{k}={}", v.as_str().unwrap_or_default()))
        .collect();
    let mut meta = json!({});
    for k in ["name", "namespace", "uid", "resourceVersion", "creationTimestamp"] {
        meta[k] = d["metadata"][k].clone();
    }
    json!({
        "kind": "Scale", "apiVersion": "autoscaling/v1", "metadata": meta,
        "spec": {"replicas": d["spec"]["replicas"].as_i64().unwrap_or(1)},
        "status": {"replicas": d["status"]["replicas"].as_i64().unwrap_or(0), "selector": selector.join(",")},
    })
}

/// GET, PUT or PATCH of a Deployment's Scale; `body` is `(patch type, body)` for a
/// PATCH, `(None, Scale)` for a PUT, `None` for a GET.
pub(super) fn scale(
    store: &Store,
    rt: &ResourceType,
    ns: &str,
    name: &str,
    body: Option<(Option<PatchType>, Value)>,
    w: &WriteOptions,
) -> Result<Value, ApiError> {
    let d = store.get(rt, ns, name)?;
    let current = scale_of(&d);
    let Some((kind, body)) = body else { return Ok(current) };
    let wanted = match kind {
        None => body,
        Some(PatchType::Json) => patch::json_patch(&current, &body)?,
        Some(PatchType::Merge) => patch::merge_patch(&current, &body),
        Some(_) => patch::strategic_merge(&current, &body),
    };
    let sent_rv = meta_str(&wanted, "resourceVersion");
    if !sent_rv.is_empty() && sent_rv != meta_str(&d, "resourceVersion") {
        return Err(ApiError::conflict_modified(&rt.group, &rt.plural, name));
    }
    let Some(replicas) = wanted["spec"]["replicas"].as_i64().filter(|r| *r >= 0) else {
        return Err(ApiError::Invalid {
            group: "autoscaling".into(),
            kind: "Scale".into(),
            name: name.into(),
            causes: vec![Cause::invalid(
                "spec.replicas",
                &wanted["spec"]["replicas"],
                "must be greater than or equal to 0",
            )],
        });
    };
    let (updated, _) =
        store.patch(rt, ns, name, PatchType::Merge, &json!({"spec": {"replicas": replicas}}), None, w)?;
    Ok(scale_of(&updated))
}

#[cfg(test)]
mod tests {
    use super::tail;

    #[test]
    fn tail_lines_keeps_the_last_lines() {
        assert_eq!(tail("a\nb\nc\n", Some(2)), "b\nc\n");
        assert_eq!(tail("a\nb\nc", Some(1)), "c");
        assert_eq!(tail("a\nb\n", Some(5)), "a\nb\n");
        assert_eq!(tail("a\nb\n", Some(0)), "");
        assert_eq!(tail("a\nb\n", None), "a\nb\n");
    }
}
