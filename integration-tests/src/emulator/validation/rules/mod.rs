//! The API server's own validation rules for the fields the job manager uses: the
//! messages and field paths follow `k8s.io/kubernetes/pkg/apis/*/validation`.
//!
//! - `names`: name and label syntax, and `metadata` for every kind;
//! - `pod`: PodSpec and its containers (also inside Job and Deployment templates);
//! - `kinds`: the rules of each other kind the emulator serves.
mod kinds;
mod names;
mod pod;

pub use kinds::{crd, data_keys, deployment, event_v1, hpa, immutable_data, job, lease, service};
pub use names::{
    is_dns1035_label, is_dns1123_label, is_dns1123_subdomain, is_label_value, is_qualified_name,
    is_qualified_name_part, labels, name_rule, object_meta, NameRule,
};
pub use pod::{parse_quantity, pod_spec};

use serde_json::Value;

/// The array at `key`, or an empty slice.
fn arr<'a>(v: &'a Value, key: &str) -> &'a [Value] {
    v.get(key).and_then(Value::as_array).map(Vec::as_slice).unwrap_or(&[])
}

#[cfg(test)]
mod tests;
