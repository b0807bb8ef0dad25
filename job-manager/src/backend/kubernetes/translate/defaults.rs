//! Seed defaults for the pod when the config sets none: hardened security contexts and
//! the sidecar's resources.
use crate::config::model::{DEFAULT_RUNTIME_UID, DEFAULT_SIDECAR_UID};
use k8s_openapi::api::core::v1 as core;
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use std::collections::BTreeMap;

/// Seed 001 `task.podSecurityContext` defaults.
pub fn default_pod_security_context() -> core::PodSecurityContext {
    core::PodSecurityContext {
        fs_group: Some(DEFAULT_RUNTIME_UID),
        fs_group_change_policy: Some("OnRootMismatch".into()),
        run_as_group: Some(DEFAULT_RUNTIME_UID),
        run_as_non_root: Some(true),
        run_as_user: Some(DEFAULT_RUNTIME_UID),
        seccomp_profile: Some(core::SeccompProfile { type_: "RuntimeDefault".into(), localhost_profile: None }),
        ..core::PodSecurityContext::default()
    }
}

/// Seed 001 container defaults. The sidecar runs as its own UID, so the egress firewall
/// can tell its packets from the runtime's; both share the pod's `fsGroup`.
pub fn default_sidecar_security_context() -> core::SecurityContext {
    hardened(DEFAULT_SIDECAR_UID, true)
}

/// The runtime's root filesystem stays writable as in the seed (browsers write outside
/// /tmp); `readOnlyRootFilesystem: true` suits runtimes that only use /tmp (an emptyDir).
pub fn default_runtime_security_context() -> core::SecurityContext {
    hardened(DEFAULT_RUNTIME_UID, false)
}

fn hardened(uid: i64, read_only_root: bool) -> core::SecurityContext {
    core::SecurityContext {
        allow_privilege_escalation: Some(false),
        capabilities: Some(core::Capabilities { add: None, drop: Some(vec!["ALL".into()]) }),
        privileged: Some(false),
        read_only_root_filesystem: Some(read_only_root),
        run_as_group: Some(uid),
        run_as_non_root: Some(true),
        run_as_user: Some(uid),
        seccomp_profile: Some(core::SeccompProfile { type_: "RuntimeDefault".into(), localhost_profile: None }),
        ..core::SecurityContext::default()
    }
}

/// The `egress-init` container: root in the pod's network namespace with `NET_ADMIN`
/// only (nftables over netlink needs nothing else), read-only root filesystem.
pub fn egress_init_security_context() -> core::SecurityContext {
    core::SecurityContext {
        allow_privilege_escalation: Some(false),
        capabilities: Some(core::Capabilities { add: Some(vec!["NET_ADMIN".into()]), drop: Some(vec!["ALL".into()]) }),
        privileged: Some(false),
        read_only_root_filesystem: Some(true),
        run_as_group: Some(0),
        run_as_non_root: Some(false),
        run_as_user: Some(0),
        seccomp_profile: Some(core::SeccompProfile { type_: "RuntimeDefault".into(), localhost_profile: None }),
        ..core::SecurityContext::default()
    }
}

/// The `egress-init` container's resources: one netlink batch, then exit.
pub fn egress_init_resources() -> core::ResourceRequirements {
    let q = |s: &str| Quantity(s.to_string());
    core::ResourceRequirements {
        requests: Some(BTreeMap::from([("cpu".to_string(), q("10m")), ("memory".to_string(), q("16Mi"))])),
        limits: Some(BTreeMap::from([("cpu".to_string(), q("100m")), ("memory".to_string(), q("32Mi"))])),
        claims: None,
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
