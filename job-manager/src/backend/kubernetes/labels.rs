//! Label and annotation keys, fixed names, and the deterministic object names derived
//! from a job id. One file so the chart, the emulator and `kubectl` users can find every
//! key the job manager writes or selects on.
use common::JobId;
use std::collections::BTreeMap;

/// Standard label: who manages the object. Value: [`MANAGED_BY_VALUE`].
pub const MANAGED_BY: &str = "app.kubernetes.io/managed-by";
pub const MANAGED_BY_VALUE: &str = "job-manager";
/// Standard label: what the object is. Runtime workloads use [`COMPONENT_RUNTIME`].
pub const COMPONENT: &str = "app.kubernetes.io/component";
pub const COMPONENT_RUNTIME: &str = "runtime";
pub const COMPONENT_RUNTIME_NETWORK_POLICY: &str = "runtime-network-policy";
/// Runtime type of the workload (cost attribution per runtime, `kubectl -l`).
pub const RUNTIME_TYPE: &str = "jobs.jobmanager.dev/runtime-type";
/// `ephemeral` or `persistent`.
pub const WORKLOAD: &str = "jobs.jobmanager.dev/workload";
/// The object name derived from the job id ([`object_name`]): a label value is at most
/// 63 characters, a job id up to 128, so the label carries the (hashed when needed) name
/// and the full id lives in the [`JOB_ID_ANNOTATION`].
pub const JOB_LABEL: &str = "jobs.jobmanager.dev/job";
/// The broker's job id, verbatim.
pub const JOB_ID_ANNOTATION: &str = "jobs.jobmanager.dev/job-id";
/// The replica (pod name) that dispatched the job: `in_flight` counts only its own
/// records, since `runtimes[].parallelism` is a per-replica limit. A container restart
/// keeps the pod name, so the count survives it.
pub const DISPATCHER: &str = "jobs.jobmanager.dev/dispatcher";
/// Persistent workloads: the runtime type the Deployment/Service/HPA serve.
pub const PERSISTENT_RUNTIME: &str = "jobs.jobmanager.dev/persistent-runtime";

/// Field manager for server-side apply and status writes.
pub const FIELD_MANAGER: &str = "job-manager";

/// Lease names (in the job manager's namespace).
pub const LEASE_RUNTIME_PRUNING: &str = "runtime-pruning";
pub const LEASE_SERVICE_SETUP: &str = "service-setup";

/// Container names inside runtime pods.
pub const SIDECAR_CONTAINER: &str = "sidecar";
pub const RUNTIME_CONTAINER: &str = "runtime";
/// The init container that installs the pod's egress firewall (before the sidecar).
pub const EGRESS_INIT_CONTAINER: &str = "egress-init";

/// Volume names inside runtime pods.
pub const SPOOL_VOLUME: &str = "sidecar-spool";
pub const DATA_VOLUME: &str = "data";
/// The runtime's scratch space (its root filesystem is read-only).
pub const TMP_VOLUME: &str = "tmp";
pub const TMP_MOUNT: &str = "/tmp";
/// Memory-backed shared memory for the runtime (Chromium needs more than the container
/// runtime's 64 MiB default; bounded by the runtime's memory limit).
pub const SHM_VOLUME: &str = "dshm";
pub const SHM_MOUNT: &str = "/dev/shm";

/// Where the sidecar sees its spool.
pub const SPOOL_MOUNT: &str = "/var/spool/sidecar";

/// Name of the runtime NetworkPolicy.
pub const RUNTIME_NETWORK_POLICY_NAME: &str = "job-manager-runtimes";

/// Prefix of every per-job object name.
const JOB_NAME_PREFIX: &str = "jm-";
/// Prefix of persistent workload names (Deployment, Service, HPA).
const PERSISTENT_NAME_PREFIX: &str = "jm-rt-";
/// A Job's name ends up in its pods' `job-name` label (<= 63 characters) and, with a
/// random suffix, in the pod names; 63 keeps both valid.
const MAX_NAME_LEN: usize = 63;
/// Hex characters of the hash in a hashed name: 48 bits, collisions are not a concern at
/// any realistic number of concurrent jobs, and the readable prefix keeps names greppable.
const HASH_HEX_LEN: usize = 12;

/// FNV-1a, 64 bits. Names must be identical across replicas *and* releases, so no
/// `std` hasher (its algorithm may change); a cryptographic hash buys nothing here
/// (ids come from the broker, names are not secrets).
fn fnv1a64(bytes: &[u8]) -> u64 {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for b in bytes {
        hash ^= u64::from(*b);
        hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
    }
    hash
}

/// The name of every object created for one job (JobRecord, Job): `jm-<id>` when
/// the id is already a DNS-1123 label (lowercase alphanumerics and '-') and short enough,
/// otherwise `jm-<sanitized prefix>-<48-bit hash>`. Deterministic, so any replica (or a
/// re-delivery) creating the same job hits `AlreadyExists`; injective in practice, since
/// ids that had to be changed always carry a hash of the original.
pub fn object_name(id: &JobId) -> String {
    safe_name(JOB_NAME_PREFIX, id.as_str())
}

/// The name of the Deployment, Service and HPA of a persistent runtime type.
pub fn persistent_name(runtime_type: &str) -> String {
    safe_name(PERSISTENT_NAME_PREFIX, runtime_type)
}

fn safe_name(prefix: &str, raw: &str) -> String {
    let verbatim = format!("{prefix}{raw}");
    if verbatim.len() <= MAX_NAME_LEN && is_dns_label(raw) {
        return verbatim;
    }
    let hash_hex = format!("{:016x}", fnv1a64(raw.as_bytes()))[..HASH_HEX_LEN].to_string();
    let mut sanitized = String::with_capacity(raw.len());
    for c in raw.chars() {
        let c = c.to_ascii_lowercase();
        let c = if c.is_ascii_lowercase() || c.is_ascii_digit() { c } else { '-' };
        // Collapse runs of '-' so the readable part stays readable.
        if !(c == '-' && sanitized.ends_with('-')) {
            sanitized.push(c);
        }
    }
    let room = MAX_NAME_LEN - prefix.len() - 1 - HASH_HEX_LEN;
    let readable: String = sanitized.chars().take(room).collect();
    let readable = readable.trim_matches('-');
    if readable.is_empty() {
        format!("{prefix}{hash_hex}")
    } else {
        format!("{prefix}{readable}-{hash_hex}")
    }
}

/// RFC 1123 label body: lowercase alphanumerics and '-', alphanumeric at both ends.
pub fn is_dns_label(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= MAX_NAME_LEN
        && s.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !s.starts_with('-')
        && !s.ends_with('-')
}

/// Labels every runtime object carries (pods, Jobs, records, Deployments...).
pub fn runtime_labels(runtime_type: &str, workload: &str) -> BTreeMap<String, String> {
    BTreeMap::from([
        (MANAGED_BY.to_string(), MANAGED_BY_VALUE.to_string()),
        (COMPONENT.to_string(), COMPONENT_RUNTIME.to_string()),
        (RUNTIME_TYPE.to_string(), label_value(runtime_type)),
        (WORKLOAD.to_string(), workload.to_string()),
    ])
}

/// Labels of the objects of one job.
pub fn job_labels(id: &JobId, runtime_type: &str) -> BTreeMap<String, String> {
    let mut labels = runtime_labels(runtime_type, "ephemeral");
    labels.insert(JOB_LABEL.to_string(), object_name(id));
    labels
}

/// Selector matching every runtime object this job manager created (records of both
/// workload kinds included).
pub fn managed_runtime_selector() -> String {
    format!("{MANAGED_BY}={MANAGED_BY_VALUE},{COMPONENT}={COMPONENT_RUNTIME}")
}

/// Selector (`k=v,...`) matching every per-job object this job manager created.
pub fn ephemeral_selector() -> String {
    format!("{MANAGED_BY}={MANAGED_BY_VALUE},{COMPONENT}={COMPONENT_RUNTIME},{WORKLOAD}=ephemeral")
}

/// Selector matching persistent workload objects.
pub fn persistent_selector() -> String {
    format!("{MANAGED_BY}={MANAGED_BY_VALUE},{COMPONENT}={COMPONENT_RUNTIME},{WORKLOAD}=persistent")
}

/// A label value (<= 63 chars, alphanumeric ends, `[-_.A-Za-z0-9]`), hashed when the
/// input does not fit. Runtime type names are operator-chosen and almost always fit.
pub fn label_value(raw: &str) -> String {
    let fits = raw.len() <= MAX_NAME_LEN
        && raw.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
        && raw.bytes().next().is_none_or(|b| b.is_ascii_alphanumeric())
        && raw.bytes().last().is_none_or(|b| b.is_ascii_alphanumeric());
    if fits {
        raw.to_string()
    } else {
        safe_name("", raw)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(s: &str) -> JobId {
        JobId::new(s).unwrap()
    }

    #[test]
    fn simple_ids_are_kept_verbatim() {
        assert_eq!(object_name(&id("abc-123")), "jm-abc-123");
        assert_eq!(persistent_name("node-api-runtime"), "jm-rt-node-api-runtime");
    }

    #[test]
    fn unsafe_ids_get_a_hash_suffix() {
        let upper = object_name(&id("Job_1.A"));
        assert!(upper.starts_with("jm-job-1-a-"), "{upper}");
        assert!(is_dns_label(&upper), "{upper}");
        // Lowercasing alone would make these collide; the hash keeps them apart.
        assert_ne!(object_name(&id("JOB")), object_name(&id("job")));
        assert_ne!(object_name(&id("Job")), object_name(&id("JOB")));
        // Leading/trailing specials never leave a '-' at an end.
        for raw in ["-x-", "_", "...", "a..b", "9"] {
            let n = object_name(&id(raw));
            assert!(is_dns_label(&n), "{raw:?} -> {n}");
        }
    }

    #[test]
    fn long_ids_are_truncated_and_hashed() {
        let long = "a".repeat(128);
        let n = object_name(&id(&long));
        assert_eq!(n.len(), 63, "{n}");
        assert!(is_dns_label(&n));
        let other = object_name(&id(&format!("{}b", "a".repeat(127))));
        assert_ne!(n, other);
        // Exactly at the limit: verbatim.
        let at_limit = "b".repeat(60);
        assert_eq!(object_name(&id(&at_limit)), format!("jm-{at_limit}"));
        assert!(object_name(&id(&"b".repeat(61))).len() <= 63);
    }

    #[test]
    fn hash_is_pinned() {
        // Changing the hash renames every in-flight job's objects across an upgrade.
        assert_eq!(fnv1a64(b""), 0xcbf2_9ce4_8422_2325);
        assert_eq!(fnv1a64(b"a"), 0xaf63_dc4c_8601_ec8c);
        assert_eq!(object_name(&id("Job")), "jm-job-5b6b9c19d814");
    }

    #[test]
    fn names_are_deterministic() {
        assert_eq!(object_name(&id("X.y_Z")), object_name(&id("X.y_Z")));
    }

    #[test]
    fn label_values() {
        assert_eq!(label_value("node-api-runtime"), "node-api-runtime");
        assert_eq!(label_value("Rt_1.x"), "Rt_1.x");
        let hashed = label_value(&"r".repeat(70));
        assert!(hashed.len() <= 63 && is_dns_label(&hashed), "{hashed}");
        assert_eq!(label_value(""), "");
    }
}
