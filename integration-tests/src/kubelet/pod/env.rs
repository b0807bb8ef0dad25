//! Environment variables (`env`, `envFrom`, Secret/ConfigMap/field references) and the
//! rewrites a process needs in place of a pod's filesystem: `$(VAR)` expansion and
//! mount paths mapped to the directories materialised for them.
use super::PodCtx;
use crate::emulator::store::meta_str;
use base64::Engine as _;
use serde_json::{json, Value};
use std::collections::HashMap;
use std::path::PathBuf;

/// `$(VAR)` expansion as the kubelet does for env values, command and args.
pub fn expand(s: &str, vars: &HashMap<String, String>) -> String {
    let mut out = String::new();
    let mut rest = s;
    while let Some(i) = rest.find("$(") {
        out.push_str(&rest[..i]);
        let after = &rest[i + 2..];
        match after.find(')') {
            Some(j) if vars.contains_key(&after[..j]) => {
                out.push_str(&vars[&after[..j]]);
                rest = &after[j + 1..];
            }
            _ => {
                out.push_str("$(");
                rest = after;
            }
        }
    }
    out.push_str(rest);
    out
}

/// A value that mentions a mount path is rewritten to the directory materialised for
/// that mount (processes cannot see the pod's filesystem layout).
pub fn map_mounts(s: &str, mounts: &[(String, PathBuf)]) -> String {
    for (mount, dir) in mounts {
        if s == mount {
            return dir.display().to_string();
        }
        if let Some(rest) = s.strip_prefix(&format!("{mount}/")) {
            return dir.join(rest).display().to_string();
        }
    }
    s.to_string()
}

/// Mount paths written in a mounted file (a config file naming another mounted file or
/// the data volume), as whole paths: preceded by a quote, blank, `=` or `:` (or the
/// start) and followed by `/`, a quote, a blank, `,` or the end.
pub fn map_mounts_in_text(text: &str, mounts: &[(String, PathBuf)]) -> String {
    let mut mounts: Vec<&(String, PathBuf)> = mounts.iter().filter(|(m, _)| m.len() > 1).collect();
    mounts.sort_by_key(|(m, _)| std::cmp::Reverse(m.len()));
    let mut out = String::with_capacity(text.len());
    let mut i = 0;
    'outer: while i < text.len() {
        let before_ok = i == 0 || text[..i].ends_with(['"', '\'', ' ', '\t', '\n', '=', ':']);
        if before_ok {
            for (mount, dir) in &mounts {
                if let Some(rest) = text[i..].strip_prefix(mount.as_str()) {
                    if rest.is_empty() || rest.starts_with(['/', '"', '\'', ' ', '\t', '\n', '\r', ',']) {
                        out.push_str(&dir.display().to_string());
                        i += mount.len();
                        continue 'outer;
                    }
                }
            }
        }
        let ch = text[i..].chars().next().expect("in bounds");
        out.push(ch);
        i += ch.len_utf8();
    }
    out
}

/// A Secret, ConfigMap or key the environment refers to that does not exist (the
/// container waits in `CreateContainerConfigError`).
#[derive(Debug, thiserror::Error)]
pub(super) enum EnvError {
    #[error("secret {name:?} not found")]
    Secret { name: String },
    #[error("configmap {name:?} not found")]
    ConfigMap { name: String },
    #[error("couldn't find key {key} in Secret {namespace}/{secret}")]
    SecretKey { namespace: String, secret: String, key: String },
    #[error("configmap {name:?} or its key {key} not found")]
    ConfigMapKey { name: String, key: String },
}

/// The container's environment in order, later definitions replacing earlier ones.
pub(super) fn resolve_env(
    ctx: &PodCtx,
    pod: &Value,
    c: &Value,
    pod_ip: std::net::Ipv4Addr,
) -> Result<Vec<(String, String)>, EnvError> {
    let ns = meta_str(pod, "namespace");
    let secret_rt = ctx.store.find_kind("v1", "Secret");
    let cm_rt = ctx.store.find_kind("v1", "ConfigMap");
    let secret = |name: &str| secret_rt.as_ref().and_then(|rt| ctx.store.get(rt, ns, name).ok());
    let config_map = |name: &str| cm_rt.as_ref().and_then(|rt| ctx.store.get(rt, ns, name).ok());
    let b64 = |v: &Value| {
        String::from_utf8_lossy(
            &base64::engine::general_purpose::STANDARD.decode(v.as_str().unwrap_or_default()).unwrap_or_default(),
        )
        .into_owned()
    };
    let mut out: Vec<(String, String)> = Vec::new();
    let mut vars: HashMap<String, String> = HashMap::new();
    for from in c["envFrom"].as_array().into_iter().flatten() {
        let prefix = from["prefix"].as_str().unwrap_or_default();
        if let Some(r) = from.get("secretRef") {
            let name = r["name"].as_str().unwrap_or_default();
            match secret(name) {
                Some(s) => {
                    for (k, v) in s["data"].as_object().into_iter().flatten() {
                        out.push((format!("{prefix}{k}"), b64(v)));
                    }
                }
                None if r["optional"] == json!(true) => {}
                None => return Err(EnvError::Secret { name: name.into() }),
            }
        }
        if let Some(r) = from.get("configMapRef") {
            let name = r["name"].as_str().unwrap_or_default();
            match config_map(name) {
                Some(cm) => {
                    for (k, v) in cm["data"].as_object().into_iter().flatten() {
                        out.push((format!("{prefix}{k}"), v.as_str().unwrap_or_default().to_string()));
                    }
                }
                None if r["optional"] == json!(true) => {}
                None => return Err(EnvError::ConfigMap { name: name.into() }),
            }
        }
    }
    for (k, v) in &out {
        vars.insert(k.clone(), v.clone());
    }
    for e in c["env"].as_array().into_iter().flatten() {
        let name = e["name"].as_str().unwrap_or_default().to_string();
        let value = if let Some(from) = e.get("valueFrom") {
            if let Some(r) = from.get("secretKeyRef") {
                let (sname, key) = (r["name"].as_str().unwrap_or_default(), r["key"].as_str().unwrap_or_default());
                match secret(sname) {
                    Some(s) => match s["data"].get(key) {
                        Some(v) => b64(v),
                        None if r["optional"] == json!(true) => continue,
                        None => {
                            return Err(EnvError::SecretKey {
                                namespace: ns.into(),
                                secret: sname.into(),
                                key: key.into(),
                            })
                        }
                    },
                    None if r["optional"] == json!(true) => continue,
                    None => return Err(EnvError::Secret { name: sname.into() }),
                }
            } else if let Some(r) = from.get("configMapKeyRef") {
                let (cname, key) = (r["name"].as_str().unwrap_or_default(), r["key"].as_str().unwrap_or_default());
                match config_map(cname).and_then(|cm| cm["data"].get(key).cloned()) {
                    Some(v) => v.as_str().unwrap_or_default().to_string(),
                    None if r["optional"] == json!(true) => continue,
                    None => return Err(EnvError::ConfigMapKey { name: cname.into(), key: key.into() }),
                }
            } else if let Some(f) = from.get("fieldRef") {
                let path = f["fieldPath"].as_str().unwrap_or_default();
                match path {
                    "metadata.name" | "metadata.namespace" | "metadata.uid" => meta_str(pod, &path[9..]).to_string(),
                    "spec.nodeName" => ctx.opts.node_name.clone(),
                    "spec.serviceAccountName" => {
                        pod["spec"]["serviceAccountName"].as_str().unwrap_or("default").to_string()
                    }
                    "status.podIP" | "status.podIPs" => pod_ip.to_string(),
                    "status.hostIP" | "status.hostIPs" => "127.0.0.1".into(),
                    p => {
                        let key = p.split("['").nth(1).and_then(|s| s.strip_suffix("']")).unwrap_or_default();
                        let map = if p.starts_with("metadata.labels") { "labels" } else { "annotations" };
                        pod["metadata"][map][key].as_str().unwrap_or_default().to_string()
                    }
                }
            } else if let Some(r) = from.get("resourceFieldRef") {
                let res = r["resource"].as_str().unwrap_or_default();
                let (part, key) = res.split_once('.').unwrap_or(("limits", res));
                c["resources"][part][key]
                    .as_str()
                    .map(str::to_string)
                    .or_else(|| c["resources"][part][key].as_i64().map(|n| n.to_string()))
                    .unwrap_or_else(|| "0".into())
            } else {
                String::new()
            }
        } else {
            expand(e["value"].as_str().unwrap_or_default(), &vars)
        };
        vars.insert(name.clone(), value.clone());
        out.retain(|(k, _)| *k != name);
        out.push((name, value));
    }
    Ok(out)
}
