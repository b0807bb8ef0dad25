//! API errors shaped exactly like the real API server's `Status` bodies, so clients
//! (kube-rs' `ErrorResponse`, kubectl) see the same `reason`/`code`/`details`.
use serde_json::{json, Value};

/// One field-level cause of an `Invalid` (422) answer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Cause {
    /// `FieldValueRequired`, `FieldValueInvalid`, `FieldValueForbidden`, ...
    pub reason: &'static str,
    /// The field path in the API's spelling, e.g. `spec.containers[0].name`.
    pub field: String,
    /// The part after the field, e.g. `Required value`.
    pub message: String,
}

impl Cause {
    pub fn required(field: impl Into<String>) -> Self {
        Self { reason: "FieldValueRequired", field: field.into(), message: "Required value".into() }
    }
    pub fn invalid(field: impl Into<String>, value: &Value, detail: &str) -> Self {
        Self {
            reason: "FieldValueInvalid",
            field: field.into(),
            message: format!("Invalid value: {}: {detail}", render_value(value)),
        }
    }
    pub fn forbidden(field: impl Into<String>, detail: &str) -> Self {
        Self { reason: "FieldValueForbidden", field: field.into(), message: format!("Forbidden: {detail}") }
    }
    pub fn duplicate(field: impl Into<String>, value: &Value) -> Self {
        Self {
            reason: "FieldValueDuplicate",
            field: field.into(),
            message: format!("Duplicate value: {}", render_value(value)),
        }
    }
    pub fn not_found(field: impl Into<String>, value: &Value) -> Self {
        Self {
            reason: "FieldValueNotFound",
            field: field.into(),
            message: format!("Not found: {}", render_value(value)),
        }
    }
    pub fn not_supported(field: impl Into<String>, value: &Value, supported: &[&str]) -> Self {
        let list: Vec<String> = supported.iter().map(|s| format!("{s:?}")).collect();
        Self {
            reason: "FieldValueNotSupported",
            field: field.into(),
            message: format!("Unsupported value: {}: supported values: {}", render_value(value), list.join(", ")),
        }
    }
    pub fn too_long(field: impl Into<String>, value: &Value, max: usize) -> Self {
        Self {
            reason: "FieldValueTooLong",
            field: field.into(),
            message: format!("Too long: may not be more than {max} bytes"),
        }
        .with_value_hint(value)
    }
    fn with_value_hint(self, _value: &Value) -> Self {
        self
    }
    /// `spec.x: Required value` — the line the API prints for this cause.
    pub fn line(&self) -> String {
        format!("{}: {}", self.field, self.message)
    }
}

/// Go's `%v`-ish rendering the API server uses inside messages: strings quoted.
fn render_value(v: &Value) -> String {
    match v {
        Value::String(s) => format!("{s:?}"),
        Value::Null => "null".into(),
        other => other.to_string(),
    }
}

/// The API server's wording: one conflict on one line, several grouped by manager.
fn apply_conflict_message(conflicts: &[(String, String)]) -> String {
    if let [(m, f)] = conflicts {
        return format!("Apply failed with 1 conflict: conflict with {m}: {f}");
    }
    let mut lines = Vec::new();
    let mut last: Option<&str> = None;
    for (m, f) in conflicts {
        if last != Some(m.as_str()) {
            lines.push(format!("conflicts with {m}:"));
            last = Some(m);
        }
        lines.push(format!("- {f}"));
    }
    format!("Apply failed with {} conflicts: {}", conflicts.len(), lines.join("\n"))
}

/// Every error the emulator answers with. `label()` is stable (metrics, request log).
#[derive(Clone, Debug, thiserror::Error, PartialEq)]
pub enum ApiError {
    #[error("{resource} {name:?} not found")]
    NotFound { group: String, resource: String, name: String },
    #[error("{resource} {name:?} already exists")]
    AlreadyExists { group: String, resource: String, name: String },
    #[error("Operation cannot be fulfilled on {resource} {name:?}: {detail}")]
    Conflict { group: String, resource: String, name: String, detail: String },
    #[error("{kind} {name:?} is invalid: {}", causes.iter().map(Cause::line).collect::<Vec<_>>().join(", "))]
    Invalid { group: String, kind: String, name: String, causes: Vec<Cause> },
    /// `conflicts`: (manager as the server prints it, field path), sorted by manager.
    #[error("{}", apply_conflict_message(conflicts))]
    ApplyConflict { conflicts: Vec<(String, String)> },
    #[error("{0}")]
    BadRequest(String),
    #[error("the server could not find the requested resource")]
    NoResource,
    #[error("the server does not allow this method on the requested resource")]
    MethodNotAllowed,
    #[error("the body of the request was in an unknown format - accepted media types include: {0}")]
    UnsupportedMediaType(String),
    #[error("too old resource version: {requested} ({oldest})")]
    Expired { requested: u64, oldest: u64 },
    #[error("Too many requests, please try again later.")]
    TooManyRequests { retry_after_secs: u32 },
    #[error("Internal error occurred: {0}")]
    Internal(String),
    #[error("Request entity too large: limit is {0}")]
    TooLarge(usize),
    /// Refused by the RBAC authoriser; `message` is the whole API server wording.
    #[error("{message}")]
    Denied { group: String, resource: String, name: String, message: String },
    /// No or an unknown bearer token.
    #[error("Unauthorized")]
    Unauthenticated,
    /// Refused by admission (e.g. ResourceQuota): `pods "x" is forbidden: exceeded quota: ...`.
    #[error("{resource} {name:?} is forbidden: {detail}")]
    Forbidden { group: String, resource: String, name: String, detail: String },
}

impl ApiError {
    pub fn code(&self) -> u16 {
        match self {
            ApiError::NotFound { .. } | ApiError::NoResource => 404,
            ApiError::AlreadyExists { .. } | ApiError::Conflict { .. } | ApiError::ApplyConflict { .. } => 409,
            ApiError::Invalid { .. } => 422,
            ApiError::BadRequest(_) => 400,
            ApiError::MethodNotAllowed => 405,
            ApiError::UnsupportedMediaType(_) => 415,
            ApiError::Expired { .. } => 410,
            ApiError::TooManyRequests { .. } => 429,
            ApiError::Internal(_) => 500,
            ApiError::TooLarge(_) => 413,
            ApiError::Forbidden { .. } | ApiError::Denied { .. } => 403,
            ApiError::Unauthenticated => 401,
        }
    }

    /// The `reason` field of the Status body (also the stable label for the request log).
    pub fn label(&self) -> &'static str {
        match self {
            ApiError::NotFound { .. } | ApiError::NoResource => "NotFound",
            ApiError::AlreadyExists { .. } => "AlreadyExists",
            ApiError::Conflict { .. } | ApiError::ApplyConflict { .. } => "Conflict",
            ApiError::Invalid { .. } => "Invalid",
            ApiError::BadRequest(_) => "BadRequest",
            ApiError::MethodNotAllowed => "MethodNotAllowed",
            ApiError::UnsupportedMediaType(_) => "UnsupportedMediaType",
            ApiError::Expired { .. } => "Expired",
            ApiError::TooManyRequests { .. } => "TooManyRequests",
            ApiError::Internal(_) => "InternalError",
            ApiError::TooLarge(_) => "RequestEntityTooLarge",
            ApiError::Forbidden { .. } | ApiError::Denied { .. } => "Forbidden",
            ApiError::Unauthenticated => "Unauthorized",
        }
    }

    pub fn conflict_modified(group: &str, resource: &str, name: &str) -> Self {
        ApiError::Conflict {
            group: group.into(),
            resource: resource.into(),
            name: name.into(),
            detail: "the object has been modified; please apply your changes to the latest version and try again"
                .into(),
        }
    }

    /// The `Status` object the real API server sends for this error.
    pub fn status_body(&self) -> Value {
        let details = match self {
            ApiError::NotFound { group, resource, name }
            | ApiError::AlreadyExists { group, resource, name }
            | ApiError::Conflict { group, resource, name, .. }
            | ApiError::Forbidden { group, resource, name, .. }
            | ApiError::Denied { group, resource, name, .. } => {
                let mut d = json!({"name": name, "kind": resource});
                if !group.is_empty() {
                    d["group"] = json!(group);
                }
                Some(d)
            }
            ApiError::Invalid { group, kind, name, causes } => {
                let causes: Vec<Value> = causes
                    .iter()
                    .map(|c| json!({"reason": c.reason, "message": c.message, "field": c.field}))
                    .collect();
                let mut d = json!({"name": name, "kind": kind, "causes": causes});
                if !group.is_empty() {
                    d["group"] = json!(group);
                }
                Some(d)
            }
            ApiError::ApplyConflict { conflicts } => Some(json!({"causes": conflicts.iter().map(|(m, f)| json!({
                "reason": "FieldManagerConflict", "message": format!("conflict with {m}"), "field": f,
            })).collect::<Vec<_>>()})),
            ApiError::TooManyRequests { retry_after_secs } => Some(json!({"retryAfterSeconds": retry_after_secs})),
            ApiError::Internal(msg) => Some(json!({"causes": [{"message": msg}]})),
            _ => None,
        };
        let mut body = json!({
            "kind": "Status",
            "apiVersion": "v1",
            "metadata": {},
            "status": "Failure",
            "message": self.to_string(),
            "reason": self.label(),
            "code": self.code(),
        });
        if let Some(d) = details {
            body["details"] = d;
        }
        // The real server leaves `reason` empty for a plain 404 on an unknown path.
        body
    }
}

/// `{"kind":"Status","status":"Success",...}`: what a DELETE answers when the object
/// is gone at once (for kinds that do not return the deleted object).
pub fn success_status(group: &str, resource: &str, name: &str, uid: &str) -> Value {
    let mut details = json!({"name": name, "kind": resource, "uid": uid});
    if !group.is_empty() {
        details["group"] = json!(group);
    }
    json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Success", "details": details})
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn not_found_is_shaped_like_the_api_server() {
        let e = ApiError::NotFound { group: "".into(), resource: "pods".into(), name: "x".into() };
        assert_eq!(
            e.status_body(),
            json!({"kind":"Status","apiVersion":"v1","metadata":{},"status":"Failure",
                "message":"pods \"x\" not found","reason":"NotFound","details":{"name":"x","kind":"pods"},"code":404})
        );
    }

    #[test]
    fn invalid_lists_causes_with_field_paths() {
        let e = ApiError::Invalid {
            group: "batch".into(),
            kind: "Job".into(),
            name: "j".into(),
            causes: vec![Cause::forbidden(
                "spec.template.spec.containers[0].restartPolicy",
                "may not be set for non-init containers",
            )],
        };
        let b = e.status_body();
        assert_eq!(
            b["message"],
            "Job \"j\" is invalid: spec.template.spec.containers[0].restartPolicy: Forbidden: may not be set for non-init containers"
        );
        assert_eq!(b["details"]["causes"][0]["reason"], "FieldValueForbidden");
        assert_eq!(b["details"]["group"], "batch");
        assert_eq!(b["code"], 422);
    }

    #[test]
    fn conflict_and_already_exists_differ_by_reason() {
        let c = ApiError::conflict_modified("coordination.k8s.io", "leases", "l");
        assert_eq!(c.status_body()["reason"], "Conflict");
        assert!(c.to_string().starts_with("Operation cannot be fulfilled on leases \"l\""));
        let a = ApiError::AlreadyExists { group: "".into(), resource: "secrets".into(), name: "s".into() };
        assert_eq!(a.status_body()["reason"], "AlreadyExists");
        assert_eq!(a.code(), 409);
    }
}
