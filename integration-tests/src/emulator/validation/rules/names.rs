//! Name and label syntax, with the API server's messages, and the `metadata` rules
//! every kind shares.
use crate::emulator::status::Cause;
use serde_json::{json, Value};

pub fn is_dns1123_label(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 63
        && s.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !s.starts_with('-')
        && !s.ends_with('-')
}

pub fn is_dns1123_subdomain(s: &str) -> bool {
    !s.is_empty() && s.len() <= 253 && s.split('.').all(is_dns1123_label)
}

pub fn is_dns1035_label(s: &str) -> bool {
    is_dns1123_label(s) && s.as_bytes()[0].is_ascii_lowercase()
}

/// `[A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?`, at most 63 characters.
pub fn is_qualified_name_part(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 63
        && s.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
        && s.as_bytes()[0].is_ascii_alphanumeric()
        && s.as_bytes()[s.len() - 1].is_ascii_alphanumeric()
}

pub fn is_qualified_name(s: &str) -> bool {
    match s.split_once('/') {
        Some((prefix, name)) => is_dns1123_subdomain(prefix) && is_qualified_name_part(name),
        None => is_qualified_name_part(s),
    }
}

pub fn is_label_value(s: &str) -> bool {
    s.is_empty() || is_qualified_name_part(s)
}

pub(super) fn is_config_key(s: &str) -> bool {
    !s.is_empty() && s.len() <= 253 && s.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
}

pub(super) const DNS1123_LABEL_MSG: &str = "a lowercase RFC 1123 label must consist of lower case alphanumeric characters or '-', and must start and end with an alphanumeric character (e.g. 'my-name',  or '123-abc', regex used for validation is '[a-z0-9]([-a-z0-9]*[a-z0-9])?')";
const DNS1123_SUBDOMAIN_MSG: &str = "a lowercase RFC 1123 subdomain must consist of lower case alphanumeric characters, '-' or '.', and must start and end with an alphanumeric character (e.g. 'example.com', regex used for validation is '[a-z0-9]([-a-z0-9]*[a-z0-9])?(\\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*')";
const DNS1035_MSG: &str = "a DNS-1035 label must consist of lower case alphanumeric characters or '-', start with an alphabetic character, and end with an alphanumeric character (e.g. 'my-name',  or 'abc-123', regex used for validation is '[a-z]([-a-z0-9]*[a-z0-9])?')";
const LABEL_VALUE_MSG: &str = "a valid label must be an empty string or consist of alphanumeric characters, '-', '_' or '.', and must start and end with an alphanumeric character (e.g. 'MyValue',  or 'my_value',  or '12345', regex used for validation is '(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?')";
const QUALIFIED_NAME_MSG: &str = "name part must consist of alphanumeric characters, '-', '_' or '.', and must start and end with an alphanumeric character (e.g. 'MyName',  or 'my.name',  or '123-abc', regex used for validation is '([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]') with an optional DNS subdomain prefix and '/' (e.g. 'example.com/MyName')";

/// Which naming rule `metadata.name` follows for a kind.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NameRule {
    Subdomain,
    Label,
    Dns1035,
}

pub fn name_rule(kind: &str) -> NameRule {
    match kind {
        "Service" => NameRule::Dns1035,
        // Since 1.27 a Job's name ends up in the `job-name` label, so it is a label.
        "Job" => NameRule::Label,
        _ => NameRule::Subdomain,
    }
}

pub fn object_meta(meta: &Value, rule: NameRule, namespaced: bool, causes: &mut Vec<Cause>) {
    let name = meta.get("name").and_then(Value::as_str).unwrap_or_default();
    if name.is_empty() {
        causes.push(Cause::required("metadata.name"));
    } else {
        let (ok, msg) = match rule {
            NameRule::Subdomain => (is_dns1123_subdomain(name), DNS1123_SUBDOMAIN_MSG),
            NameRule::Label => (is_dns1123_label(name), DNS1123_LABEL_MSG),
            NameRule::Dns1035 => (is_dns1035_label(name), DNS1035_MSG),
        };
        if !ok {
            let limit = if rule == NameRule::Subdomain { 253 } else { 63 };
            let detail =
                if name.len() > limit { format!("must be no more than {limit} characters") } else { msg.to_string() };
            causes.push(Cause::invalid("metadata.name", &json!(name), &detail));
        }
    }
    if namespaced {
        if let Some(ns) = meta.get("namespace").and_then(Value::as_str) {
            if !is_dns1123_label(ns) {
                causes.push(Cause::invalid("metadata.namespace", &json!(ns), DNS1123_LABEL_MSG));
            }
        }
    }
    labels(meta.get("labels"), "metadata.labels", causes);
    if let Some(a) = meta.get("annotations").and_then(Value::as_object) {
        let mut total = 0;
        for (k, v) in a {
            total += k.len() + v.as_str().map_or(0, str::len);
            if !is_qualified_name(k) {
                causes.push(Cause::invalid("metadata.annotations", &json!(k), QUALIFIED_NAME_MSG));
            }
        }
        if total > 256 * 1024 {
            causes.push(Cause::too_long("metadata.annotations", &Value::Null, 256 * 1024));
        }
    }
    if let Some(refs) = meta.get("ownerReferences").and_then(Value::as_array) {
        let controllers = refs.iter().filter(|r| r["controller"] == json!(true)).count();
        if controllers > 1 {
            causes.push(Cause::invalid(
                "metadata.ownerReferences",
                &Value::Null,
                "Only one reference can have Controller set to true",
            ));
        }
        for (i, r) in refs.iter().enumerate() {
            for f in ["apiVersion", "kind", "name", "uid"] {
                if r.get(f).and_then(Value::as_str).is_none_or(str::is_empty) {
                    causes.push(Cause::invalid(
                        format!("metadata.ownerReferences[{i}].{f}"),
                        &json!(""),
                        &format!("{f} must not be empty"),
                    ));
                }
            }
        }
    }
}

pub fn labels(l: Option<&Value>, path: &str, causes: &mut Vec<Cause>) {
    let Some(l) = l.and_then(Value::as_object) else {
        return;
    };
    for (k, v) in l {
        if !is_qualified_name(k) {
            causes.push(Cause::invalid(path, &json!(k), QUALIFIED_NAME_MSG));
        }
        let v = v.as_str().unwrap_or_default();
        if !is_label_value(v) {
            causes.push(Cause::invalid(format!("{path}[{k}]"), &json!(v), LABEL_VALUE_MSG));
        }
    }
}
