//! ResourceQuota admission for what the job manager can run into: a quota's hard limit
//! on the number of pods (`pods`, also spelled `count/pods`). As on the real API server,
//! a pod that would take its namespace over the limit is refused with 403 Forbidden and
//! the quota's wording (`exceeded quota: q, requested: pods=1, used: pods=2, limited:
//! pods=2`); the Job controller then records a `FailedCreate` event on the Job. Pods in a
//! terminal phase or being deleted do not count. Compute resources (requests, limits) are
//! not counted, and `status.used` is not maintained.
use serde_json::Value;

/// Whether a pod counts against a quota.
pub fn counts(pod: &Value) -> bool {
    let phase = pod["status"]["phase"].as_str().unwrap_or_default();
    !matches!(phase, "Succeeded" | "Failed") && pod["metadata"].get("deletionTimestamp").is_none()
}

/// The refusal for one more pod in a namespace where `used` pods count, if a quota
/// forbids it.
pub fn refuse_pod(quotas: &[&Value], used: u64) -> Option<String> {
    for quota in quotas {
        let name = quota["metadata"]["name"].as_str().unwrap_or_default();
        for key in ["pods", "count/pods"] {
            let Some(limit) = count(&quota["spec"]["hard"][key]) else { continue };
            if used + 1 > limit {
                return Some(format!(
                    "exceeded quota: {name}, requested: {key}=1, used: {key}={used}, limited: {key}={limit}"
                ));
            }
        }
    }
    None
}

/// A count quantity: `"10"`, `10`, `"2k"`. Anything else (fractions, other suffixes)
/// is not a pod count and is ignored.
fn count(q: &Value) -> Option<u64> {
    if let Some(n) = q.as_u64() {
        return Some(n);
    }
    let s = q.as_str()?;
    match s.strip_suffix('k') {
        Some(k) => k.parse::<u64>().ok()?.checked_mul(1000),
        None => s.parse().ok(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn quota(name: &str, hard: Value) -> Value {
        json!({"metadata": {"name": name}, "spec": {"hard": hard}})
    }

    #[test]
    fn the_pod_over_the_limit_is_refused_with_the_servers_wording() {
        let q = quota("team", json!({"pods": "2", "limits.memory": "4Gi"}));
        assert_eq!(refuse_pod(&[&q], 0), None);
        assert_eq!(refuse_pod(&[&q], 1), None);
        assert_eq!(
            refuse_pod(&[&q], 2).as_deref(),
            Some("exceeded quota: team, requested: pods=1, used: pods=2, limited: pods=2")
        );
        let zero = quota("none", json!({"count/pods": 0}));
        assert_eq!(
            refuse_pod(&[&q, &zero], 0).as_deref(),
            Some("exceeded quota: none, requested: count/pods=1, used: count/pods=0, limited: count/pods=0")
        );
    }

    #[test]
    fn quantities_and_what_counts() {
        assert_eq!(count(&json!("2k")), Some(2000));
        assert_eq!(count(&json!("500m")), None);
        assert_eq!(count(&json!(null)), None);
        let memory_only = quota("mem", json!({"requests.memory": "1Gi"}));
        assert_eq!(refuse_pod(&[&memory_only], 1_000_000), None);
        assert!(counts(&json!({"metadata": {}, "status": {"phase": "Running"}})));
        assert!(counts(&json!({"metadata": {}})));
        assert!(!counts(&json!({"metadata": {}, "status": {"phase": "Succeeded"}})));
        assert!(!counts(&json!({"metadata": {"deletionTimestamp": "2026-01-01T00:00:00Z"}})));
    }
}
