//! Authorisation the way the API server's RBAC authoriser decides it: a request is
//! allowed when a rule of a role bound to the user (or one of its groups) matches its
//! verb, API group, resource (with subresource), and name. ClusterRoleBindings grant
//! everywhere; RoleBindings grant in their namespace only, whether they refer to a Role
//! or a ClusterRole. Members of `system:masters` are allowed everything (the API
//! server's privileged group); every authenticated user may read discovery and OpenAPI
//! (the built-in `system:discovery` binding). Pure functions of the request and the
//! RBAC objects; the server gathers both.
use serde_json::Value;

pub const MASTERS: &str = "system:masters";
pub const AUTHENTICATED: &str = "system:authenticated";

#[derive(Clone, Debug, PartialEq)]
pub struct User {
    pub name: String,
    pub groups: Vec<String>,
}

impl User {
    /// The administrator: the emulator's kubeconfig token and anonymous requests.
    pub fn admin() -> Self {
        Self { name: "system:admin".into(), groups: vec![MASTERS.into(), AUTHENTICATED.into()] }
    }

    /// The user a ServiceAccount token authenticates as.
    pub fn service_account(namespace: &str, name: &str) -> Self {
        Self {
            name: format!("system:serviceaccount:{namespace}:{name}"),
            groups: vec![
                "system:serviceaccounts".into(),
                format!("system:serviceaccounts:{namespace}"),
                AUTHENTICATED.into(),
            ],
        }
    }
}

/// What a resource request asks for (`verb` as RBAC names it: get, list, watch,
/// create, update, patch, delete, deletecollection).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Attributes {
    pub verb: String,
    pub group: String,
    pub resource: String,
    pub subresource: String,
    pub namespace: String,
    pub name: String,
}

/// The RBAC objects in force (as stored: JSON).
#[derive(Default)]
pub struct Policy {
    pub roles: Vec<Value>,
    pub cluster_roles: Vec<Value>,
    pub role_bindings: Vec<Value>,
    pub cluster_role_bindings: Vec<Value>,
}

#[derive(Debug, PartialEq)]
pub enum Decision {
    Allow,
    /// `reason`: the RBAC errors met on the way (a binding to a missing role), as the
    /// API server appends them to the 403 message; empty when no rule matched.
    Deny {
        reason: String,
    },
}

fn strings(v: &Value) -> impl Iterator<Item = &str> {
    v.as_array().into_iter().flatten().filter_map(Value::as_str)
}

fn has(v: &Value, want: &str) -> bool {
    strings(v).any(|s| s == want || s == "*")
}

/// RBAC's resource match: `*`, the exact `resource[/subresource]`, or `*/subresource`.
fn resource_matches(rule: &Value, a: &Attributes) -> bool {
    let combined =
        if a.subresource.is_empty() { a.resource.clone() } else { format!("{}/{}", a.resource, a.subresource) };
    strings(&rule["resources"]).any(|r| {
        r == "*" || r == combined || (!a.subresource.is_empty() && r.strip_prefix("*/") == Some(a.subresource.as_str()))
    })
}

/// Whether one policy rule allows the request.
pub fn rule_allows(rule: &Value, a: &Attributes) -> bool {
    let names: Vec<&str> = strings(&rule["resourceNames"]).collect();
    has(&rule["verbs"], &a.verb)
        && has(&rule["apiGroups"], &a.group)
        && resource_matches(rule, a)
        && (names.is_empty() || names.contains(&a.name.as_str()))
}

fn subject_matches(s: &Value, user: &User, binding_ns: &str) -> bool {
    let name = s["name"].as_str().unwrap_or_default();
    match s["kind"].as_str() {
        Some("User") => name == user.name,
        Some("Group") => user.groups.iter().any(|g| g == name),
        Some("ServiceAccount") => {
            let ns = s["namespace"].as_str().filter(|n| !n.is_empty()).unwrap_or(binding_ns);
            user.name == format!("system:serviceaccount:{ns}:{name}")
        }
        _ => false,
    }
}

fn find<'a>(objs: &'a [Value], ns: Option<&str>, name: &str) -> Option<&'a Value> {
    objs.iter().find(|o| {
        o["metadata"]["name"].as_str() == Some(name)
            && ns.is_none_or(|n| o["metadata"]["namespace"].as_str() == Some(n))
    })
}

/// The RBAC decision for `user` asking `a`.
pub fn authorize(user: &User, a: &Attributes, p: &Policy) -> Decision {
    if user.groups.iter().any(|g| g == MASTERS) {
        return Decision::Allow;
    }
    let mut errors: Vec<String> = Vec::new();
    let mut rules_of = |kind: &str, ns: &str, name: &str| -> Vec<Value> {
        let found = match kind {
            "ClusterRole" => find(&p.cluster_roles, None, name),
            "Role" => find(&p.roles, Some(ns), name),
            _ => None,
        };
        match found {
            Some(r) => r["rules"].as_array().cloned().unwrap_or_default(),
            None => {
                let what = if kind == "Role" { "role" } else { "clusterrole" };
                errors.push(format!("{what}.rbac.authorization.k8s.io {name:?} not found"));
                vec![]
            }
        }
    };
    let bound =
        |b: &Value, ns: &str| b["subjects"].as_array().into_iter().flatten().any(|s| subject_matches(s, user, ns));
    for b in &p.cluster_role_bindings {
        if bound(b, "") {
            let rules = rules_of("ClusterRole", "", b["roleRef"]["name"].as_str().unwrap_or_default());
            if rules.iter().any(|r| rule_allows(r, a)) {
                return Decision::Allow;
            }
        }
    }
    if !a.namespace.is_empty() {
        for b in p.role_bindings.iter().filter(|b| b["metadata"]["namespace"].as_str() == Some(a.namespace.as_str())) {
            if bound(b, &a.namespace) {
                let kind = b["roleRef"]["kind"].as_str().unwrap_or_default();
                let rules = rules_of(kind, &a.namespace, b["roleRef"]["name"].as_str().unwrap_or_default());
                if rules.iter().any(|r| rule_allows(r, a)) {
                    return Decision::Allow;
                }
            }
        }
    }
    // Kubernetes' error aggregate: one error as is, several in brackets.
    let reason = match errors.as_slice() {
        [] => String::new(),
        [one] => format!("RBAC: {one}"),
        many => format!("RBAC: [{}]", many.join(", ")),
    };
    Decision::Deny { reason }
}

/// The API server's 403 message for a denied resource request.
pub fn forbidden_message(user: &User, a: &Attributes, reason: &str) -> String {
    let qualified = if a.group.is_empty() { a.resource.clone() } else { format!("{}.{}", a.resource, a.group) };
    let subject = if a.name.is_empty() {
        format!("{qualified} is forbidden")
    } else {
        format!("{qualified} {:?} is forbidden", a.name)
    };
    let resource =
        if a.subresource.is_empty() { a.resource.clone() } else { format!("{}/{}", a.resource, a.subresource) };
    let scope = if a.namespace.is_empty() {
        "at the cluster scope".to_string()
    } else {
        format!("in the namespace {:?}", a.namespace)
    };
    let mut msg = format!(
        "{subject}: User {:?} cannot {} resource {resource:?} in API group {:?} {scope}",
        user.name, a.verb, a.group
    );
    if !reason.is_empty() {
        msg = format!("{msg}: {reason}");
    }
    msg
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn attrs(verb: &str, group: &str, resource: &str, sub: &str, ns: &str, name: &str) -> Attributes {
        Attributes {
            verb: verb.into(),
            group: group.into(),
            resource: resource.into(),
            subresource: sub.into(),
            namespace: ns.into(),
            name: name.into(),
        }
    }

    fn role(ns: &str, name: &str, rules: Value) -> Value {
        json!({"metadata": {"namespace": ns, "name": name}, "rules": rules})
    }

    fn binding(ns: &str, kind: &str, role: &str, subjects: Value) -> Value {
        json!({"metadata": {"namespace": ns, "name": format!("{role}-b")}, "roleRef": {"kind": kind, "name": role, "apiGroup": "rbac.authorization.k8s.io"}, "subjects": subjects})
    }

    fn sa() -> User {
        User::service_account("jobs", "robot")
    }

    fn robot() -> Value {
        json!([{"kind": "ServiceAccount", "name": "robot", "namespace": "jobs"}])
    }

    fn policy(rules: Value) -> Policy {
        Policy {
            roles: vec![role("jobs", "r", rules)],
            role_bindings: vec![binding("jobs", "Role", "r", robot())],
            ..Default::default()
        }
    }

    #[test]
    fn verbs_groups_and_resources_must_all_match() {
        let p = policy(json!([{"apiGroups": [""], "resources": ["pods"], "verbs": ["get", "list", "watch"]}]));
        for verb in ["get", "list", "watch"] {
            assert_eq!(authorize(&sa(), &attrs(verb, "", "pods", "", "jobs", ""), &p), Decision::Allow, "{verb}");
        }
        for denied in [
            attrs("patch", "", "pods", "", "jobs", "p"),
            attrs("get", "apps", "pods", "", "jobs", "p"),
            attrs("get", "", "secrets", "", "jobs", "s"),
            attrs("get", "", "pods", "log", "jobs", "p"),
            attrs("get", "", "pods", "", "other", "p"),
        ] {
            assert_eq!(authorize(&sa(), &denied, &p), Decision::Deny { reason: String::new() }, "{denied:?}");
        }
    }

    #[test]
    fn subresources_resource_names_and_wildcards() {
        let p = policy(json!([
            {"apiGroups": [""], "resources": ["pods/log"], "verbs": ["get"]},
            {"apiGroups": ["coordination.k8s.io"], "resources": ["leases"], "resourceNames": ["leader"], "verbs": ["get", "patch"]},
            {"apiGroups": ["*"], "resources": ["*/scale"], "verbs": ["*"]},
        ]));
        let allow = |a: Attributes| authorize(&sa(), &a, &p) == Decision::Allow;
        assert!(allow(attrs("get", "", "pods", "log", "jobs", "p")));
        assert!(!allow(attrs("get", "", "pods", "", "jobs", "p")), "pods/log does not grant pods");
        assert!(allow(attrs("patch", "coordination.k8s.io", "leases", "", "jobs", "leader")));
        assert!(!allow(attrs("patch", "coordination.k8s.io", "leases", "", "jobs", "other")));
        assert!(
            !allow(attrs("list", "coordination.k8s.io", "leases", "", "jobs", "")),
            "resourceNames never match a list"
        );
        assert!(allow(attrs("update", "apps", "deployments", "scale", "jobs", "web")));
        assert!(!allow(attrs("update", "apps", "deployments", "", "jobs", "web")));
    }

    #[test]
    fn cluster_roles_grant_everywhere_through_cluster_bindings_and_locally_through_role_bindings() {
        let view = json!({"metadata": {"name": "view"}, "rules": [{"apiGroups": [""], "resources": ["configmaps"], "verbs": ["get"]}]});
        let local = Policy {
            cluster_roles: vec![view.clone()],
            role_bindings: vec![binding("jobs", "ClusterRole", "view", robot())],
            ..Default::default()
        };
        assert_eq!(authorize(&sa(), &attrs("get", "", "configmaps", "", "jobs", "c"), &local), Decision::Allow);
        assert_ne!(authorize(&sa(), &attrs("get", "", "configmaps", "", "kube-system", "c"), &local), Decision::Allow);
        let global = Policy {
            cluster_roles: vec![view],
            cluster_role_bindings: vec![binding(
                "",
                "ClusterRole",
                "view",
                json!([{"kind": "Group", "name": "system:serviceaccounts:jobs"}]),
            )],
            ..Default::default()
        };
        assert_eq!(authorize(&sa(), &attrs("get", "", "configmaps", "", "kube-system", "c"), &global), Decision::Allow);
        assert_ne!(
            authorize(&User::service_account("other", "robot"), &attrs("get", "", "configmaps", "", "x", "c"), &global),
            Decision::Allow
        );
        assert_eq!(
            authorize(&User::admin(), &attrs("delete", "", "namespaces", "", "", "x"), &Policy::default()),
            Decision::Allow
        );
    }

    #[test]
    fn a_binding_to_a_missing_role_is_named_in_the_reason() {
        let p = Policy { role_bindings: vec![binding("jobs", "Role", "gone", robot())], ..Default::default() };
        let Decision::Deny { reason } = authorize(&sa(), &attrs("get", "", "pods", "", "jobs", "p"), &p) else {
            panic!("allowed")
        };
        assert_eq!(reason, "RBAC: role.rbac.authorization.k8s.io \"gone\" not found");
    }

    #[test]
    fn forbidden_messages_read_like_the_api_servers() {
        assert_eq!(
            forbidden_message(&sa(), &attrs("get", "", "pods", "", "jobs", "web-1"), ""),
            "pods \"web-1\" is forbidden: User \"system:serviceaccount:jobs:robot\" cannot get resource \"pods\" in API group \"\" in the namespace \"jobs\""
        );
        assert_eq!(
            forbidden_message(&sa(), &attrs("list", "coordination.k8s.io", "leases", "", "jobs", ""), ""),
            "leases.coordination.k8s.io is forbidden: User \"system:serviceaccount:jobs:robot\" cannot list resource \"leases\" in API group \"coordination.k8s.io\" in the namespace \"jobs\""
        );
        assert_eq!(
            forbidden_message(&sa(), &attrs("get", "", "pods", "log", "jobs", "p"), ""),
            "pods \"p\" is forbidden: User \"system:serviceaccount:jobs:robot\" cannot get resource \"pods/log\" in API group \"\" in the namespace \"jobs\""
        );
        assert_eq!(
            forbidden_message(&sa(), &attrs("list", "", "namespaces", "", "", ""), "RBAC: [x]"),
            "namespaces is forbidden: User \"system:serviceaccount:jobs:robot\" cannot list resource \"namespaces\" in API group \"\" at the cluster scope: RBAC: [x]"
        );
    }
}
