//! Volumes as directories under the pod's work dir: Secret and ConfigMap keys as
//! files, emptyDir (or any other source) as an empty directory, PersistentVolumeClaims
//! shared by claim name, hostPath as the host's own path.
use super::PodCtx;
use crate::emulator::store::meta_str;
use base64::Engine as _;
use serde_json::{json, Value};
use std::collections::HashMap;
use std::path::{Path, PathBuf};

/// A volume whose source is missing (the pod waits in `ContainerCreating`).
#[derive(Debug, thiserror::Error)]
pub(super) enum VolumeError {
    #[error("MountVolume.SetUp failed for volume {volume:?} : secret {secret:?} not found")]
    SecretNotFound { volume: String, secret: String },
    #[error("MountVolume.SetUp failed for volume {volume:?} : configmap {config_map:?} not found")]
    ConfigMapNotFound { volume: String, config_map: String },
    #[error("MountVolume.SetUp failed for volume \"kube-api-access\" : failed to fetch token: serviceaccounts {name:?} not found")]
    TokenUnavailable { name: String },
}

/// Where a pod's processes find their ServiceAccount token (the path every client
/// library reads in a cluster).
pub const SERVICE_ACCOUNT_PATH: &str = "/var/run/secrets/kubernetes.io/serviceaccount";

/// The ServiceAccount token a pod mounts, as the kubelet projects it: `token`,
/// `namespace` and `ca.crt` files, plus a `kubeconfig` with the same credentials for
/// processes (which cannot see the standard path). `None` when the pod or its account
/// opts out with `automountServiceAccountToken: false`.
pub(super) fn service_account(ctx: &PodCtx, pod: &Value, dir: &Path) -> Result<Option<PathBuf>, VolumeError> {
    let ns = meta_str(pod, "namespace");
    let name = pod["spec"]["serviceAccountName"].as_str().filter(|s| !s.is_empty()).unwrap_or("default");
    let account = ctx.store.find_kind("v1", "ServiceAccount").and_then(|rt| ctx.store.get(&rt, ns, name).ok());
    if account.is_none() && name != "default" {
        return Err(VolumeError::TokenUnavailable { name: name.into() });
    }
    let automount = pod["spec"]["automountServiceAccountToken"]
        .as_bool()
        .or_else(|| account.as_ref().and_then(|a| a["automountServiceAccountToken"].as_bool()))
        .unwrap_or(true);
    if !automount {
        return Ok(None);
    }
    let sa_dir = dir.join("serviceaccount");
    let _ = std::fs::create_dir_all(&sa_dir);
    let token = ctx.store.issue_token(ns, name);
    let _ = std::fs::write(sa_dir.join("token"), &token);
    let _ = std::fs::write(sa_dir.join("namespace"), ns);
    let _ = std::fs::write(sa_dir.join("ca.crt"), "");
    let kubeconfig = crate::emulator::kubeconfig_yaml(&ctx.api_url, ns, &token);
    let _ = std::fs::write(sa_dir.join("kubeconfig"), kubeconfig);
    Ok(Some(sa_dir))
}

/// Where volume `v` of a pod (in `ns`, pod directory `dir`) lives on the host: its own
/// directory, a claim's directory shared by every pod naming the claim, or a hostPath.
pub(super) fn volume_dir(ctx: &PodCtx, ns: &str, dir: &Path, v: &Value) -> PathBuf {
    if let Some(pvc) = v.get("persistentVolumeClaim") {
        claim_dir(&ctx.opts.work_dir, ns, pvc["claimName"].as_str().unwrap_or_default())
    } else if let Some(h) = v.get("hostPath") {
        PathBuf::from(h["path"].as_str().unwrap_or("/"))
    } else {
        dir.join("volumes").join(v["name"].as_str().unwrap_or_default())
    }
}

/// The directory standing in for PersistentVolumeClaim `claim` in `ns`.
pub fn claim_dir(work_dir: &Path, ns: &str, claim: &str) -> PathBuf {
    work_dir.join("volumes").join(ns).join(claim)
}

/// Materialises the pod's volumes; returns each volume's directory by volume name.
/// Text in Secret and ConfigMap keys goes through `in_pod` (the pod's own loopback and
/// wildcard addresses pointed at the pod's address; see [`crate::kubelet::network`]).
pub(super) fn materialise(
    ctx: &PodCtx,
    pod: &Value,
    dir: &Path,
    in_pod: &dyn Fn(&str) -> String,
) -> Result<HashMap<String, PathBuf>, VolumeError> {
    let ns = meta_str(pod, "namespace");
    let spec = &pod["spec"];
    let mut volumes: HashMap<String, PathBuf> = HashMap::new();
    let secret_rt = ctx.store.find_kind("v1", "Secret");
    let cm_rt = ctx.store.find_kind("v1", "ConfigMap");
    for v in spec["volumes"].as_array().into_iter().flatten() {
        let vname = v["name"].as_str().unwrap_or_default();
        let vdir = volume_dir(ctx, ns, dir, v);
        if let Some(s) = v.get("secret") {
            let sname = s["secretName"].as_str().unwrap_or_default();
            match secret_rt.as_ref().and_then(|rt| ctx.store.get(rt, ns, sname).ok()) {
                Some(secret) => write_keys(&vdir, &secret["data"], s.get("items"), true, in_pod),
                None if s["optional"] == json!(true) => {
                    let _ = std::fs::create_dir_all(&vdir);
                }
                None => return Err(VolumeError::SecretNotFound { volume: vname.into(), secret: sname.into() }),
            }
        } else if let Some(c) = v.get("configMap") {
            let cname = c["name"].as_str().unwrap_or_default();
            match cm_rt.as_ref().and_then(|rt| ctx.store.get(rt, ns, cname).ok()) {
                Some(cm) => write_keys(&vdir, &cm["data"], c.get("items"), false, in_pod),
                None if c["optional"] == json!(true) => {
                    let _ = std::fs::create_dir_all(&vdir);
                }
                None => return Err(VolumeError::ConfigMapNotFound { volume: vname.into(), config_map: cname.into() }),
            }
        } else if v.get("persistentVolumeClaim").is_some() {
            let _ = std::fs::create_dir_all(&vdir);
        } else if v.get("hostPath").is_some() {
        } else {
            let _ = std::fs::create_dir_all(&vdir);
        }
        volumes.insert(vname.into(), vdir);
    }
    Ok(volumes)
}

fn write_keys(dir: &Path, data: &Value, items: Option<&Value>, base64: bool, in_pod: &dyn Fn(&str) -> String) {
    let _ = std::fs::create_dir_all(dir);
    let decode = |v: &Value| -> Vec<u8> {
        let s = v.as_str().unwrap_or_default();
        let bytes = if base64 {
            base64::engine::general_purpose::STANDARD.decode(s).unwrap_or_default()
        } else {
            s.as_bytes().to_vec()
        };
        match String::from_utf8(bytes) {
            Ok(text) => in_pod(&text).into_bytes(),
            Err(e) => e.into_bytes(),
        }
    };
    let Some(map) = data.as_object() else { return };
    match items.and_then(Value::as_array) {
        Some(items) => {
            for it in items {
                let (Some(k), Some(p)) = (it["key"].as_str(), it["path"].as_str()) else {
                    continue;
                };
                if let Some(v) = map.get(k) {
                    let f = dir.join(p);
                    if let Some(parent) = f.parent() {
                        let _ = std::fs::create_dir_all(parent);
                    }
                    let _ = std::fs::write(f, decode(v));
                }
            }
        }
        None => {
            for (k, v) in map {
                let _ = std::fs::write(dir.join(k), decode(v));
            }
        }
    }
}
