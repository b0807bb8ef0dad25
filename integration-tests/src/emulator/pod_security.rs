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
    // `containers "a", "b" must ...` for the containers where `bad` holds, if any.
    let offenders = |bad: &dyn Fn(&Value) -> bool, must: &str| -> Option<String> {
        let names: Vec<String> = containers.iter().filter(|c| bad(c)).map(|c| format!("{:?}", name(c))).collect();
        (!names.is_empty()).then(|| format!("{} {} {must}", plural(names.len(), "container"), names.join(", ")))
    };
    let ctx = |c: &Value, field: &str| c["securityContext"][field].clone();
    let mut violations = Vec::new();

    let host: Vec<String> = ["hostNetwork", "hostPID", "hostIPC"]
        .iter()
        .filter(|f| spec[**f].as_bool() == Some(true))
        .map(|f| format!("{f}=true"))
        .collect();
    if !host.is_empty() {
        violations.push(format!("host namespaces ({})", host.join(", ")));
    }
    if let Some(o) = offenders(&|c| ctx(c, "privileged") == true, "must not set securityContext.privileged=true") {
        violations.push(format!("privileged ({o})"));
    }
    let forbidden_add = |cap: &str| {
        if restricted {
            cap != "NET_BIND_SERVICE"
        } else {
            !BASELINE_CAPABILITIES.contains(&cap)
        }
    };
    let mut capability_parts: Vec<String> = containers
        .iter()
        .filter_map(|c| {
            let bad: Vec<String> = c["securityContext"]["capabilities"]["add"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(Value::as_str)
                .filter(|cap| forbidden_add(cap))
                .map(|cap| format!("{cap:?}"))
                .collect();
            (!bad.is_empty()).then(|| {
                format!(
                    "container {:?} must not include {} in securityContext.capabilities.add",
                    name(c),
                    bad.join(", ")
                )
            })
        })
        .collect();
    if restricted {
        let escalates = |c: &Value| ctx(c, "allowPrivilegeEscalation") != false;
        if let Some(o) = offenders(&escalates, "must set securityContext.allowPrivilegeEscalation=false") {
            violations.push(format!("allowPrivilegeEscalation != false ({o})"));
        }
        let keeps_capabilities = |c: &Value| {
            !c["securityContext"]["capabilities"]["drop"]
                .as_array()
                .is_some_and(|d| d.iter().any(|v| v.as_str() == Some("ALL")))
        };
        if let Some(o) = offenders(&keeps_capabilities, "must set securityContext.capabilities.drop=[\"ALL\"]") {
            capability_parts.insert(0, o);
        }
        if !capability_parts.is_empty() {
            violations.push(format!("unrestricted capabilities ({})", capability_parts.join("; ")));
        }
        let pod_non_root = spec["securityContext"]["runAsNonRoot"].as_bool();
        let may_be_root = |c: &Value| ctx(c, "runAsNonRoot").as_bool().or(pod_non_root) != Some(true);
        if let Some(o) = offenders(&may_be_root, "must not set securityContext.runAsNonRoot=false") {
            violations.push(format!("runAsNonRoot != true ({o})"));
        }
        if let Some(o) = offenders(&|c| ctx(c, "runAsUser") == 0, "must not set runAsUser=0") {
            violations.push(format!("runAsUser=0 ({o})"));
        }
        let pod_seccomp = spec["securityContext"]["seccompProfile"]["type"].as_str();
        let unconfined = |c: &Value| {
            let t = c["securityContext"]["seccompProfile"]["type"].as_str().or(pod_seccomp);
            !matches!(t, Some("RuntimeDefault" | "Localhost"))
        };
        let must = "must set securityContext.seccompProfile.type to \"RuntimeDefault\" or \"Localhost\"";
        if let Some(o) = offenders(&unconfined, must) {
            violations.push(format!("seccompProfile ({o})"));
        }
    } else if !capability_parts.is_empty() {
        violations.push(format!("non-default capabilities ({})", capability_parts.join("; ")));
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
