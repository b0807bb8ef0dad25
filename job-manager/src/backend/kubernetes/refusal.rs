//! Pure: what an API server's refusal message says, and whether retrying the same request
//! can ever get past it. Two readers: the pruning loop, over the Job controller's
//! `FailedCreate` events ([`crate::backend::kubernetes::diagnose::lasting_refusal`]: the
//! job's pod is refused, the job fails at once), and the executor, over its own failed
//! hand-off calls ([`crate::backend::kubernetes::executor::classify_api_error`]: the job
//! manager itself is refused by RBAC, so no job of that kind can start here until the
//! Role changes: `/readyz` says so and the job goes back to the broker).
//!
//! The authoriser's wording, as the API server writes it:
//! `jobs.batch is forbidden: User "system:serviceaccount:ns:sa" cannot create resource
//! "jobs" in API group "batch" in the namespace "ns"` (`at the cluster scope` for a
//! cluster-wide request; the core group is `""`; an RBAC reason may follow after `: `).

/// What an API server refused, read from its message.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Refusal {
    /// The authoriser (RBAC) denied the caller a right: lasting until a Role changes.
    Authorization(Denial),
    /// Pod Security admission (`violates PodSecurity`): lasting for this pod spec.
    PodSecurity,
    /// A validating admission webhook denied the request: lasting for this object.
    Webhook,
    /// A ResourceQuota is used up: pods finishing elsewhere free it, so not lasting.
    Quota,
}

impl Refusal {
    /// Whether retrying the same request can never succeed until someone changes the
    /// cluster (a Role, a namespace label, a webhook's policy).
    pub fn lasting(&self) -> bool {
        !matches!(self, Refusal::Quota)
    }
}

/// An authoriser's denial: who was refused what, where.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Denial {
    pub user: String,
    pub verb: String,
    pub resource: String,
    /// `""` for the core group.
    pub group: String,
    /// `None` at the cluster scope.
    pub namespace: Option<String>,
}

impl Denial {
    /// `create jobs.batch in namespace "default"` (`create pods in namespace ...` for
    /// the core group): the right that is missing, as a Role rule names it.
    pub fn right(&self) -> String {
        let resource =
            if self.group.is_empty() { self.resource.clone() } else { format!("{}.{}", self.resource, self.group) };
        match &self.namespace {
            Some(ns) => format!("{} {resource} in namespace {ns:?}", self.verb),
            None => format!("{} {resource} at the cluster scope", self.verb),
        }
    }
}

/// What `message` (a 403's message, or a `FailedCreate` event's) refuses; `None` when
/// it is none of the known refusals.
pub fn classify(message: &str) -> Option<Refusal> {
    if message.contains("exceeded quota") {
        return Some(Refusal::Quota);
    }
    if message.contains("violates PodSecurity") {
        return Some(Refusal::PodSecurity);
    }
    if message.contains("admission webhook") && message.contains("denied the request") {
        return Some(Refusal::Webhook);
    }
    denial(message).map(Refusal::Authorization)
}

/// The authoriser's `User "u" cannot VERB resource "R" in API group "G" in the namespace
/// "N"` (or `at the cluster scope`), wherever it sits in `message`.
pub fn denial(message: &str) -> Option<Denial> {
    let rest = &message[message.find("User \"")? + "User ".len()..];
    let (user, rest) = quoted(rest)?;
    let rest = rest.strip_prefix(" cannot ")?;
    let (verb, rest) = rest.split_once(' ')?;
    let (resource, rest) = quoted(rest.strip_prefix("resource ")?)?;
    let (group, rest) = quoted(rest.strip_prefix(" in API group ")?)?;
    let namespace = match rest.strip_prefix(" in the namespace ") {
        Some(ns) => Some(quoted(ns)?.0),
        None if rest.starts_with(" at the cluster scope") => None,
        None => return None,
    };
    if verb.is_empty() || resource.is_empty() {
        return None;
    }
    Some(Denial { user, verb: verb.to_string(), resource, group, namespace })
}

/// A Go-quoted string at the start of `s` (`%q`: `\"` and `\\` escapes) and what follows it.
fn quoted(s: &str) -> Option<(String, &str)> {
    let mut chars = s.strip_prefix('"')?.char_indices();
    let mut out = String::new();
    while let Some((i, c)) = chars.next() {
        match c {
            '"' => return Some((out, &s[i + 2..])),
            '\\' => out.push(chars.next()?.1),
            c => out.push(c),
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    const RBAC: &str = r#"jobs.batch is forbidden: User "system:serviceaccount:default:job-manager" cannot create resource "jobs" in API group "batch" in the namespace "default""#;

    #[test]
    fn an_rbac_denial_names_the_user_verb_resource_group_and_namespace() {
        let d = denial(RBAC).unwrap();
        assert_eq!(
            d,
            Denial {
                user: "system:serviceaccount:default:job-manager".into(),
                verb: "create".into(),
                resource: "jobs".into(),
                group: "batch".into(),
                namespace: Some("default".into()),
            }
        );
        assert_eq!(d.right(), r#"create jobs.batch in namespace "default""#);
        assert_eq!(classify(RBAC), Some(Refusal::Authorization(d)));
        assert!(classify(RBAC).unwrap().lasting());
    }

    #[test]
    fn core_group_cluster_scope_subresources_and_a_trailing_reason_are_read() {
        let core = r#"pods "x" is forbidden: User "u" cannot get resource "pods/log" in API group "" in the namespace "jobs": RBAC: role.rbac.authorization.k8s.io "jm" not found"#;
        let d = denial(core).unwrap();
        assert_eq!((d.resource.as_str(), d.group.as_str(), d.namespace.as_deref()), ("pods/log", "", Some("jobs")));
        assert_eq!(d.right(), r#"get pods/log in namespace "jobs""#);
        let cluster = r#"namespaces is forbidden: User "u" cannot list resource "namespaces" in API group "" at the cluster scope"#;
        let d = denial(cluster).unwrap();
        assert_eq!((d.verb.as_str(), d.namespace.as_deref()), ("list", None));
        assert_eq!(d.right(), "list namespaces at the cluster scope");
        // Go's %q escapes inside a name.
        let odd = r#"x is forbidden: User "a\"b" cannot delete resource "jobrecords" in API group "jobs.jobmanager.dev" in the namespace "n""#;
        assert_eq!(denial(odd).unwrap().user, "a\"b");
    }

    #[test]
    fn other_refusals_are_told_apart_and_only_quota_passes() {
        let psa = r#"Error creating: pods "jm-a-x" is forbidden: violates PodSecurity "baseline:latest": non-default capabilities"#;
        let webhook = r#"admission webhook "validation.gatekeeper.sh" denied the request: [no-net-admin] NET_ADMIN"#;
        let quota =
            r#"pods "jm-a-x" is forbidden: exceeded quota: team, requested: pods=1, used: pods=5, limited: pods=5"#;
        assert_eq!(classify(psa), Some(Refusal::PodSecurity));
        assert_eq!(classify(webhook), Some(Refusal::Webhook));
        assert_eq!(classify(quota), Some(Refusal::Quota));
        assert!(classify(psa).unwrap().lasting() && classify(webhook).unwrap().lasting());
        assert!(!classify(quota).unwrap().lasting(), "a quota frees up");
    }

    #[test]
    fn messages_that_only_look_like_a_denial_are_not_one() {
        for m in [
            "",
            "forbidden",
            r#"cannot create resource "jobs""#,
            r#"User "u" cannot create resource "jobs" in API group "batch""#,
            r#"User "u" cannot create resource "jobs" in API group "batch" in the namespace "unterminated"#,
            r#"User "u" cannot  resource "" in API group "" in the namespace "n""#,
        ] {
            assert_eq!(denial(m), None, "{m}");
        }
    }
}
