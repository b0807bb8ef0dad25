//! The pod template ephemeral Jobs and persistent Deployments share: the sidecar as a
//! native sidecar (init container, `restartPolicy: Always`), the runtime container
//! behind it, their env and volumes.
use super::defaults::{
    default_pod_security_context, default_runtime_security_context, default_sidecar_resources,
    default_sidecar_security_context, egress_init_resources, egress_init_security_context,
};
use super::TranslateSettings;
use super::{TranslateError, INTERNAL_API_KEY_SECRET_KEY};
use crate::backend::kubernetes::labels;
use crate::config::model::{ImageSettings, RuntimeConfig};
use common::runtime_api::{runtime_env, sidecar_env};
use common::JobId;
use k8s_openapi::api::core::v1 as core;
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

/// Env names the job manager sets on the runtime container; extra env may not override
/// them (that would let configuration route the runtime around its sidecar).
const RESERVED_RUNTIME_ENV: [&str; 9] = [
    runtime_env::JOB_API_URL,
    runtime_env::HTTP_PROXY,
    runtime_env::HTTPS_PROXY,
    runtime_env::NO_PROXY,
    "http_proxy",
    "https_proxy",
    "no_proxy",
    runtime_env::USER_DEFINED_VARIABLES,
    NODE_EXTRA_CA_CERTS,
];

/// Where runtime containers find `kubernetes.runtimeCaBundle`, and the env that names it.
pub const RUNTIME_CA_MOUNT: &str = "/etc/job-manager/runtime-ca";
pub const RUNTIME_CA_VOLUME: &str = "runtime-ca";
pub const NODE_EXTRA_CA_CERTS: &str = "NODE_EXTRA_CA_CERTS";

/// Full image reference: `[imageRegistry/]repository@digest` when a digest is set (it
/// wins over the tag), else `[imageRegistry/]repository[:tag]`.
pub fn image_ref(registry: &str, image: &ImageSettings) -> String {
    let registry = registry.trim_end_matches('/');
    let mut out =
        if registry.is_empty() { image.repository.clone() } else { format!("{registry}/{}", image.repository) };
    if !image.digest.is_empty() && !image.repository.contains('@') {
        out.push('@');
        out.push_str(&image.digest);
    } else if !image.tag.is_empty() && !image.repository.contains('@') {
        out.push(':');
        out.push_str(&image.tag);
    }
    out
}

pub(super) enum PodMode<'a> {
    Ephemeral { job_id: &'a JobId, token: &'a str },
    Persistent,
}

pub(super) struct PodInputs<'a> {
    pub(super) runtime: &'a RuntimeConfig,
    pub(super) settings: &'a TranslateSettings,
    pub(super) namespace: &'a str,
    pub(super) mode: PodMode<'a>,
}

pub(super) fn pod_spec(p: &PodInputs<'_>) -> Result<core::PodSpec, TranslateError> {
    let k = &p.settings.kubernetes;
    let mut init_containers = Vec::new();
    // The firewall goes in before anything else in the pod can send a packet.
    if k.egress_firewall.enabled {
        init_containers.push(egress_init_container(p.settings, p.runtime)?);
    }
    init_containers.push(sidecar_container(p));
    // Extra sidecars run as native sidecars too: as plain containers they would keep a
    // Job's pod alive after the runtime exits.
    init_containers.extend(k.sidecars.iter().cloned().map(|mut c| {
        c.restart_policy.get_or_insert_with(|| "Always".into());
        c
    }));

    let mut volumes = Vec::new();
    volumes.push(core::Volume {
        name: labels::SPOOL_VOLUME.into(),
        empty_dir: Some(core::EmptyDirVolumeSource::default()),
        ..core::Volume::default()
    });
    volumes.push(data_volume(p.settings));
    volumes.push(core::Volume {
        name: labels::TMP_VOLUME.into(),
        empty_dir: Some(core::EmptyDirVolumeSource::default()),
        ..core::Volume::default()
    });
    if !k.runtime_ca_bundle.config_map_name.is_empty() {
        volumes.push(core::Volume {
            name: RUNTIME_CA_VOLUME.into(),
            config_map: Some(core::ConfigMapVolumeSource {
                name: k.runtime_ca_bundle.config_map_name.clone(),
                items: Some(vec![core::KeyToPath {
                    key: k.runtime_ca_bundle.key.clone(),
                    path: k.runtime_ca_bundle.key.clone(),
                    mode: None,
                }]),
                optional: Some(false),
                ..core::ConfigMapVolumeSource::default()
            }),
            ..core::Volume::default()
        });
    }
    volumes.push(core::Volume {
        name: labels::SHM_VOLUME.into(),
        empty_dir: Some(core::EmptyDirVolumeSource { medium: Some("Memory".into()), ..Default::default() }),
        ..core::Volume::default()
    });
    volumes.extend(k.extra_volumes.iter().cloned());

    // Scheduling: the runtime type's own settings over the pod-wide ones.
    let mut node_selector = k.node_selector.clone();
    node_selector.extend(p.runtime.node_selector.clone());
    let tolerations: Vec<core::Toleration> = k.tolerations.iter().chain(&p.runtime.tolerations).cloned().collect();

    let mut pull_secrets: Vec<core::LocalObjectReference> = Vec::new();
    for s in k.image_pull_secrets.iter().chain(&p.runtime.image_pull_secrets) {
        if !pull_secrets.contains(s) {
            pull_secrets.push(s.clone());
        }
    }

    Ok(core::PodSpec {
        restart_policy: Some(match p.mode {
            PodMode::Ephemeral { .. } => "Never".into(),
            PodMode::Persistent => "Always".into(),
        }),
        // Runtime pods never talk to the API server.
        automount_service_account_token: Some(false),
        service_account_name: (!k.runtime_service_account.is_empty()).then(|| k.runtime_service_account.clone()),
        // Service env vars would tell the runtime where every Service in the namespace is.
        enable_service_links: Some(false),
        // Explicit: with a shared process namespace the runtime could read the sidecar's
        // env (`/proc/<pid>/environ`), which holds the job token.
        share_process_namespace: Some(false),
        termination_grace_period_seconds: Some(k.termination_grace_period_seconds),
        runtime_class_name: non_empty(if p.runtime.runtime_class_name.is_empty() {
            &k.runtime_class_name
        } else {
            &p.runtime.runtime_class_name
        }),
        security_context: Some(k.pod_security_context.clone().unwrap_or_else(default_pod_security_context)),
        node_selector: (!node_selector.is_empty()).then_some(node_selector),
        tolerations: (!tolerations.is_empty()).then_some(tolerations),
        affinity: p.runtime.affinity.clone().or_else(|| k.affinity.clone()),
        priority_class_name: non_empty(&k.priority_class_name),
        topology_spread_constraints: (!k.topology_spread_constraints.is_empty())
            .then(|| k.topology_spread_constraints.clone()),
        image_pull_secrets: (!pull_secrets.is_empty()).then_some(pull_secrets),
        init_containers: Some(init_containers),
        containers: vec![runtime_container(p)?],
        volumes: Some(volumes),
        ..core::PodSpec::default()
    })
}

fn data_volume(settings: &TranslateSettings) -> core::Volume {
    let persistence = &settings.kubernetes.persistence;
    let mut volume = core::Volume { name: labels::DATA_VOLUME.into(), ..core::Volume::default() };
    if persistence.existing_claim_name.is_empty() {
        volume.empty_dir = Some(core::EmptyDirVolumeSource {
            size_limit: (!persistence.empty_dir_size_limit.is_empty())
                .then(|| Quantity(persistence.empty_dir_size_limit.clone())),
            medium: None,
        });
    } else {
        volume.persistent_volume_claim = Some(core::PersistentVolumeClaimVolumeSource {
            claim_name: persistence.existing_claim_name.clone(),
            read_only: None,
        });
    }
    volume
}

/// The egress firewall's init container: the sidecar image's `egress-init` command,
/// allowing only the sidecar's UID to send packets off the pod (every other UID reaches
/// loopback only). Config validation refused a sidecar UID that is unknown, root or the
/// runtime's; translation checks again rather than render a firewall that lets the
/// runtime out.
fn egress_init_container(c: &TranslateSettings, runtime: &RuntimeConfig) -> Result<core::Container, TranslateError> {
    let k = &c.kubernetes;
    let proxy_uid = match (k.sidecar_uid(), k.runtime_uid_of(runtime)) {
        (Some(s), r) if s > 0 && r != Some(s) => s,
        _ => return Err(TranslateError::FirewallUids),
    };
    Ok(core::Container {
        name: labels::EGRESS_INIT_CONTAINER.into(),
        image: Some(image_ref(&k.image_registry, &c.sidecar.image)),
        image_pull_policy: non_empty(&c.sidecar.image.pull_policy),
        args: Some(vec!["egress-init".into(), "--proxy-uid".into(), proxy_uid.to_string()]),
        resources: Some(egress_init_resources()),
        security_context: Some(egress_init_security_context()),
        ..core::Container::default()
    })
}

fn env(name: &str, value: impl Into<String>) -> core::EnvVar {
    core::EnvVar { name: name.into(), value: Some(value.into()), value_from: None }
}

fn sidecar_container(p: &PodInputs<'_>) -> core::Container {
    let c = p.settings;
    let s = &c.sidecar;
    let mut envs = vec![
        env(sidecar_env::LISTEN, format!("127.0.0.1:{}", s.port)),
        env(sidecar_env::ADMIN_LISTEN, format!("0.0.0.0:{}", s.admin_port)),
        env(
            sidecar_env::JOB_MANAGER_URL,
            format!("http://{}.{}.svc:{}", c.job_manager_service, p.namespace, c.job_manager_port),
        ),
        core::EnvVar {
            name: sidecar_env::INTERNAL_API_KEY.into(),
            value: None,
            value_from: Some(core::EnvVarSource {
                secret_key_ref: Some(core::SecretKeySelector {
                    name: c.kubernetes.internal_api_key_secret_name.clone(),
                    key: INTERNAL_API_KEY_SECRET_KEY.into(),
                    optional: Some(false),
                }),
                ..core::EnvVarSource::default()
            }),
        },
        env(sidecar_env::SPOOL_DIR, labels::SPOOL_MOUNT),
    ];
    let mut mounts = Vec::new();
    let mut ports = vec![
        core::ContainerPort { name: Some("proxy".into()), container_port: i32::from(s.port), ..Default::default() },
        core::ContainerPort {
            name: Some("admin".into()),
            container_port: i32::from(s.admin_port),
            ..Default::default()
        },
    ];
    match p.mode {
        PodMode::Ephemeral { job_id, token } => {
            envs.push(env(sidecar_env::JOB_ID, job_id.as_str()));
            envs.push(env(sidecar_env::JOB_TOKEN, token));
        }
        PodMode::Persistent => {
            envs.push(env(sidecar_env::INGRESS_LISTEN, format!("0.0.0.0:{}", s.ingress_port)));
            envs.push(env(sidecar_env::INGRESS_UPSTREAM, format!("127.0.0.1:{}", p.runtime.port)));
            ports.push(core::ContainerPort {
                name: Some("ingress".into()),
                container_port: i32::from(s.ingress_port),
                ..Default::default()
            });
        }
    }
    // Policy, upstream proxy (on the sidecar only: the runtime never sees upstream
    // credentials) and logging: the same mapping the local executor uses.
    envs.extend(c.sidecar_policy.env().into_iter().map(|(k, v)| env(&k, v)));
    mounts.push(core::VolumeMount {
        name: labels::SPOOL_VOLUME.into(),
        mount_path: labels::SPOOL_MOUNT.into(),
        ..core::VolumeMount::default()
    });

    core::Container {
        name: labels::SIDECAR_CONTAINER.into(),
        image: Some(image_ref(&c.kubernetes.image_registry, &s.image)),
        image_pull_policy: non_empty(&s.image.pull_policy),
        // A native sidecar: starts before the runtime, runs beside it, and is stopped
        // after it, so a Job completes when the runtime exits.
        restart_policy: Some("Always".into()),
        ports: Some(ports),
        env: Some(envs),
        // The runtime starts only once the proxy answers: no egress before policy applies.
        startup_probe: Some(core::Probe {
            http_get: Some(core::HTTPGetAction {
                path: Some("/readyz".into()),
                port: IntOrString::String("admin".into()),
                ..core::HTTPGetAction::default()
            }),
            period_seconds: Some(1),
            failure_threshold: Some(30),
            timeout_seconds: Some(1),
            ..core::Probe::default()
        }),
        resources: Some(s.resources.clone().unwrap_or_else(default_sidecar_resources)),
        security_context: Some(c.kubernetes.security_context.clone().unwrap_or_else(default_sidecar_security_context)),
        volume_mounts: Some(mounts),
        ..core::Container::default()
    }
}

fn runtime_container(p: &PodInputs<'_>) -> Result<core::Container, TranslateError> {
    let c = p.settings;
    let k = &c.kubernetes;
    let proxy = format!("http://127.0.0.1:{}", c.sidecar.port);
    let no_proxy = c.sidecar.no_proxy.join(",");
    let mut envs = vec![
        env(runtime_env::JOB_API_URL, proxy.clone()),
        env(runtime_env::HTTP_PROXY, proxy.clone()),
        env(runtime_env::HTTPS_PROXY, proxy.clone()),
        env(runtime_env::NO_PROXY, no_proxy.clone()),
        // Many clients (curl, Go, Python) read only the lowercase spellings.
        env("http_proxy", proxy.clone()),
        env("https_proxy", proxy),
        env("no_proxy", no_proxy),
        env(runtime_env::USER_DEFINED_VARIABLES, c.user_defined_variables.clone()),
    ];
    let persistence = &k.persistence;
    if !k.custom_node_modules_path.is_empty() {
        envs.push(env(
            runtime_env::CUSTOM_NODE_MODULES_PATH,
            join_path(&persistence.mount_path, &k.custom_node_modules_path),
        ));
    }
    if !k.runtime_ca_bundle.config_map_name.is_empty() {
        envs.push(env(NODE_EXTRA_CA_CERTS, format!("{RUNTIME_CA_MOUNT}/{}", k.runtime_ca_bundle.key)));
    }
    // Global extra env, then the runtime type's own (which wins on a shared name).
    let mut extra = k.extra_env.clone();
    extra.extend(p.runtime.extra_env.clone());
    for (name, value) in extra {
        if RESERVED_RUNTIME_ENV.contains(&name.as_str()) || name == runtime_env::CUSTOM_NODE_MODULES_PATH {
            return Err(TranslateError::ReservedEnv(name));
        }
        envs.push(env(&name, value));
    }
    let mut mounts = vec![core::VolumeMount {
        name: labels::DATA_VOLUME.into(),
        mount_path: persistence.mount_path.clone(),
        sub_path: non_empty(&persistence.sub_path),
        ..core::VolumeMount::default()
    }];
    mounts.push(core::VolumeMount {
        name: labels::TMP_VOLUME.into(),
        mount_path: labels::TMP_MOUNT.into(),
        ..core::VolumeMount::default()
    });
    if !k.runtime_ca_bundle.config_map_name.is_empty() {
        mounts.push(core::VolumeMount {
            name: RUNTIME_CA_VOLUME.into(),
            mount_path: RUNTIME_CA_MOUNT.into(),
            read_only: Some(true),
            ..core::VolumeMount::default()
        });
    }
    mounts.push(core::VolumeMount {
        name: labels::SHM_VOLUME.into(),
        mount_path: labels::SHM_MOUNT.into(),
        ..core::VolumeMount::default()
    });
    mounts.extend(k.extra_volume_mounts.iter().cloned());
    Ok(core::Container {
        name: labels::RUNTIME_CONTAINER.into(),
        image: Some(image_ref(&k.image_registry, &p.runtime.image)),
        image_pull_policy: non_empty(&p.runtime.image.pull_policy),
        env: Some(envs),
        resources: p.runtime.resources.clone(),
        security_context: Some(
            p.runtime
                .security_context
                .clone()
                .or_else(|| k.runtime_security_context.clone())
                .unwrap_or_else(default_runtime_security_context),
        ),
        volume_mounts: Some(mounts),
        ..core::Container::default()
    })
}

fn join_path(base: &str, rel: &str) -> String {
    if rel.starts_with('/') {
        return rel.to_string();
    }
    format!("{}/{}", base.trim_end_matches('/'), rel)
}

fn non_empty(s: &str) -> Option<String> {
    (!s.is_empty()).then(|| s.to_string())
}

/// Pod annotations: the pod-wide ones, the runtime type's over them.
pub(super) fn pod_annotations(
    settings: &TranslateSettings,
    runtime: &RuntimeConfig,
) -> std::collections::BTreeMap<String, String> {
    let mut out = settings.kubernetes.pod_annotations.clone();
    out.extend(runtime.pod_annotations.clone());
    out
}
