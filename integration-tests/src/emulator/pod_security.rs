//! Pod Security admission, as the API server's built-in plugin enforces it on pod
//! creation: the namespace label `pod-security.kubernetes.io/enforce` (`privileged`,
//! `baseline`, `restricted`) picks the level, and a pod that violates it is refused with
//! 403 Forbidden and the plugin's wording:
//!
//! `violates PodSecurity "baseline:latest": non-default capabilities (container
//! "egress-init" must not include "NET_ADMIN" in securityContext.capabilities.add)`
//!
//! The checks are the ones runtime pods can trip: host namespaces, privileged
//! containers, added capabilities, and for `restricted` privilege escalation, dropping
//! ALL, running as non-root and a seccomp profile. (Host paths, ports, AppArmor, SELinux
//! and sysctls are not checked.) Without the label, a namespace is `privileged`.
use serde_json::Value;

pub const ENFORCE_LABEL: &str = "pod-security.kubernetes.io/enforce";

/// Capabilities `baseline` allows a container to add.
const BASELINE_CAPABILITIES: [&str; 13] = [
    "AUDIT_WRITE",
    "CHOWN",
    "DAC_OVERRIDE",
    "FOWNER",
    "FSETID",
    "KILL",
    "MKNOD",
    "NET_BIND_SERVICE",
    "SETFCAP",
    "SETGID",
    "SETPCAP",
    "SETUID",
    "SYS_CHROOT",
];

/// The refusal of `pod` in a namespace labelled `namespace_labels`, if any.
pub fn refuse(namespace_labels: &Value, pod: &Value) -> Option<String> {
    let level = namespace_labels[ENFORCE_LABEL].as_str().unwrap_or("privileged");
    let restricted = match level {
        "restricted" => true,
        "baseline" => false,
        _ => return None,
    };
    let spec = &pod["spec"];
    let containers: Vec<&Value> = ["initContainers", "containers", "ephemeralContainers"]
        .iter()
        .flat_map(|list| spec[*list].as_array().into_iter().flatten())
        .collect();
    let name = |c: &Value| c["name"].as_str().unwrap_or_default().to_string();
    let mut violations = Vec::new();

    let host: Vec<String> = ["hostNetwork", "hostPID", "hostIPC"]
        .iter()
        .filter(|f| spec[**f].as_bool() == Some(true))
        .map(|f| format!("{f}=true"))
        .collect();
    if !host.is_empty() {
        violations.push(format!("host namespaces ({})", host.join(", ")));
    }
    let privileged: Vec<String> = containers
        .iter()
        .filter(|c| c["securityContext"]["privileged"].as_bool() == Some(true))
        .map(|c| format!("{:?}", name(c)))
        .collect();
    if !privileged.is_empty() {
        violations.push(format!(
            "privileged ({} {} must not set securityContext.privileged=true)",
            plural(privileged.len(), "container"),
            privileged.join(", ")
        ));
    }
    let added = |c: &Value| -> Vec<String> {
        c["securityContext"]["capabilities"]["add"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|v| v.as_str().map(String::from))
            .collect()
    };
    let mut forbidden_adds = Vec::new();
    for c in &containers {
        let bad: Vec<String> =
            added(c)
                .into_iter()
                .filter(|cap| {
                    if restricted {
                        cap != "NET_BIND_SERVICE"
                    } else {
                        !BASELINE_CAPABILITIES.contains(&cap.as_str())
                    }
                })
                .map(|cap| format!("{cap:?}"))
                .collect();
        if !bad.is_empty() {
            forbidden_adds.push(format!(
                "container {:?} must not include {} in securityContext.capabilities.add",
                name(c),
                bad.join(", ")
            ));
        }
    }
    if restricted {
        let escalating: Vec<String> = containers
            .iter()
            .filter(|c| c["securityContext"]["allowPrivilegeEscalation"].as_bool() != Some(false))
            .map(|c| format!("{:?}", name(c)))
            .collect();
        if !escalating.is_empty() {
            violations.push(format!(
                "allowPrivilegeEscalation != false ({} {} must set securityContext.allowPrivilegeEscalation=false)",
                plural(escalating.len(), "container"),
                escalating.join(", ")
            ));
        }
        let not_dropping: Vec<String> = containers
            .iter()
            .filter(|c| {
                !c["securityContext"]["capabilities"]["drop"]
                    .as_array()
                    .is_some_and(|d| d.iter().any(|v| v.as_str() == Some("ALL")))
            })
            .map(|c| format!("{:?}", name(c)))
            .collect();
        let mut parts = Vec::new();
        if !not_dropping.is_empty() {
            parts.push(format!(
                "{} {} must set securityContext.capabilities.drop=[\"ALL\"]",
                plural(not_dropping.len(), "container"),
                not_dropping.join(", ")
            ));
        }
        parts.append(&mut forbidden_adds);
        if !parts.is_empty() {
            violations.push(format!("unrestricted capabilities ({})", parts.join("; ")));
        }
        let pod_non_root = spec["securityContext"]["runAsNonRoot"].as_bool();
        let root_ok: Vec<String> = containers
            .iter()
            .filter(|c| c["securityContext"]["runAsNonRoot"].as_bool().or(pod_non_root) != Some(true))
            .map(|c| format!("{:?}", name(c)))
            .collect();
        if !root_ok.is_empty() {
            violations.push(format!(
                "runAsNonRoot != true ({} {} must not set securityContext.runAsNonRoot=false)",
                plural(root_ok.len(), "container"),
                root_ok.join(", ")
            ));
        }
        let root_uid: Vec<String> = containers
            .iter()
            .filter(|c| c["securityContext"]["runAsUser"].as_i64() == Some(0))
            .map(|c| format!("{:?}", name(c)))
            .collect();
        if !root_uid.is_empty() {
            violations.push(format!(
                "runAsUser=0 ({} {} must not set runAsUser=0)",
                plural(root_uid.len(), "container"),
                root_uid.join(", ")
            ));
        }
        let pod_seccomp = spec["securityContext"]["seccompProfile"]["type"].as_str();
        let no_seccomp: Vec<String> = containers
            .iter()
            .filter(|c| {
                let t = c["securityContext"]["seccompProfile"]["type"].as_str().or(pod_seccomp);
                !matches!(t, Some("RuntimeDefault" | "Localhost"))
            })
            .map(|c| format!("{:?}", name(c)))
            .collect();
        if !no_seccomp.is_empty() {
            violations.push(format!(
                "seccompProfile ({} {} must set securityContext.seccompProfile.type to \"RuntimeDefault\" or \"Localhost\")",
                plural(no_seccomp.len(), "container"),
                no_seccomp.join(", ")
            ));
        }
    } else if !forbidden_adds.is_empty() {
        violations.push(format!("non-default capabilities ({})", forbidden_adds.join("; ")));
    }
    if violations.is_empty() {
        return None;
    }
    Some(format!("violates PodSecurity \"{level}:latest\": {}", violations.join(", ")))
}

fn plural(n: usize, word: &str) -> String {
    if n == 1 {
        word.to_string()
    } else {
        format!("{word}s")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn pod(caps_add: &[&str]) -> Value {
        json!({"spec": {
            "securityContext": {"runAsNonRoot": true, "seccompProfile": {"type": "RuntimeDefault"}},
            "initContainers": [{"name": "egress-init", "securityContext": {
                "allowPrivilegeEscalation": false, "runAsUser": 0, "runAsNonRoot": false,
                "capabilities": {"drop": ["ALL"], "add": caps_add}}}],
            "containers": [{"name": "runtime", "securityContext": {
                "allowPrivilegeEscalation": false, "capabilities": {"drop": ["ALL"]}}}]
        }})
    }

    #[test]
    fn levels_as_the_plugin_words_them() {
        let labels = |level: &str| json!({ENFORCE_LABEL: level});
        assert_eq!(refuse(&json!({}), &pod(&["NET_ADMIN"])), None, "unlabelled: privileged");
        assert_eq!(refuse(&labels("privileged"), &pod(&["NET_ADMIN"])), None);
        assert_eq!(
            refuse(&labels("baseline"), &pod(&["NET_ADMIN"])).unwrap(),
            r#"violates PodSecurity "baseline:latest": non-default capabilities (container "egress-init" must not include "NET_ADMIN" in securityContext.capabilities.add)"#
        );
        assert_eq!(refuse(&labels("baseline"), &pod(&["CHOWN"])), None, "baseline allows the default set");
        let restricted = refuse(&labels("restricted"), &pod(&["NET_ADMIN"])).unwrap();
        assert!(restricted.starts_with(r#"violates PodSecurity "restricted:latest": unrestricted capabilities (container "egress-init" must not include "NET_ADMIN""#), "{restricted}");
        assert!(
            restricted.contains(
                r#"runAsNonRoot != true (container "egress-init" must not set securityContext.runAsNonRoot=false)"#
            ),
            "{restricted}"
        );
        assert!(
            restricted.contains(r#"runAsUser=0 (container "egress-init" must not set runAsUser=0)"#),
            "{restricted}"
        );
    }
}
