//! Seed defaults for the pod when the config sets none: hardened security contexts and
//! the sidecar's resources.
use k8s_openapi::api::core::v1 as core;
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use std::collections::BTreeMap;

/// Seed 001 `task.podSecurityContext` defaults.
pub fn default_pod_security_context() -> core::PodSecurityContext {
    core::PodSecurityContext {
        fs_group: Some(1001),
        fs_group_change_policy: Some("OnRootMismatch".into()),
        run_as_group: Some(1001),
        run_as_non_root: Some(true),
        run_as_user: Some(1001),
        seccomp_profile: Some(core::SeccompProfile { type_: "RuntimeDefault".into(), localhost_profile: None }),
        ..core::PodSecurityContext::default()
    }
}

/// Seed 001 container defaults; the runtime's root filesystem stays writable (browsers
/// and node need scratch space), the sidecar's is read-only.
pub fn default_security_context(read_only_root: bool) -> core::SecurityContext {
    core::SecurityContext {
        allow_privilege_escalation: Some(false),
        capabilities: Some(core::Capabilities { add: None, drop: Some(vec!["ALL".into()]) }),
        privileged: Some(false),
        read_only_root_filesystem: Some(read_only_root),
        run_as_group: Some(1001),
        run_as_non_root: Some(true),
        run_as_user: Some(1001),
        seccomp_profile: Some(core::SeccompProfile { type_: "RuntimeDefault".into(), localhost_profile: None }),
        ..core::SecurityContext::default()
    }
}

/// Seed 000 sidecar defaults: requests 0.1 CPU / 128Mi, limits 0.2 CPU / 256Mi.
pub fn default_sidecar_resources() -> core::ResourceRequirements {
    let q = |s: &str| Quantity(s.to_string());
    core::ResourceRequirements {
        requests: Some(BTreeMap::from([("cpu".to_string(), q("100m")), ("memory".to_string(), q("128Mi"))])),
        limits: Some(BTreeMap::from([("cpu".to_string(), q("200m")), ("memory".to_string(), q("256Mi"))])),
        claims: None,
    }
}
