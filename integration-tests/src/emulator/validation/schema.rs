//! A small JSON-schema walker for the two schema dialects the emulator meets: the
//! vendored strict Kubernetes schemas (draft 2020-12 subset: `$ref`, `type` lists with
//! `null`, `properties`, `additionalProperties`, `items`, `required`, `enum`, `format`,
//! `oneOf`) and CRD `openAPIV3Schema`s (structural schemas: `type`, `nullable`,
//! `properties`, `additionalProperties`, `items`, `required`, `enum`, bounds,
//! `x-kubernetes-preserve-unknown-fields`, `x-kubernetes-int-or-string`).
//! Unknown fields are rejected (the API server's `fieldValidation=Strict`).
use base64::Engine as _;
use serde_json::Value;
use std::sync::OnceLock;

/// The vendored bundle: `{"kinds": {"pod-v1": schema, ...}, "$defs": {...}}`.
static BUNDLE: &str = include_str!("../../../schemas/k8s-v1.33-strict.json");

pub fn bundle() -> &'static Value {
    static PARSED: OnceLock<Value> = OnceLock::new();
    PARSED.get_or_init(|| serde_json::from_str(BUNDLE).expect("vendored schema bundle is valid JSON"))
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Violation {
    /// Decoding errors: the API answers 400 BadRequest for these.
    UnknownField {
        path: String,
    },
    WrongType {
        path: String,
        expected: String,
        found: &'static str,
    },
    /// Validation errors: 422 Invalid.
    Required {
        path: String,
    },
    NotInEnum {
        path: String,
        value: Value,
        allowed: Vec<String>,
    },
    BadFormat {
        path: String,
        value: Value,
        detail: String,
    },
}

impl Violation {
    pub fn is_decoding_error(&self) -> bool {
        matches!(self, Violation::UnknownField { .. } | Violation::WrongType { .. })
    }
}

fn json_type(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "boolean",
        Value::Number(n) if n.is_i64() || n.is_u64() => "integer",
        Value::Number(_) => "number",
        Value::String(_) => "string",
        Value::Array(_) => "array",
        Value::Object(_) => "object",
    }
}

fn child(path: &str, key: &str) -> String {
    if path.is_empty() {
        key.to_string()
    } else {
        format!("{path}.{key}")
    }
}

/// Validates `value` against a schema of the vendored bundle.
pub fn validate_builtin(kind_key: &str, value: &Value) -> Vec<Violation> {
    let b = bundle();
    let schema = &b["kinds"][kind_key];
    let mut out = Vec::new();
    walk(schema, value, "", &mut out, b, false);
    out
}

/// Validates a custom resource: metadata against ObjectMeta, the rest against the CRD.
pub fn validate_custom(schema: &Value, value: &Value) -> Vec<Violation> {
    let b = bundle();
    let mut out = Vec::new();
    let Some(obj) = value.as_object() else {
        out.push(Violation::WrongType { path: String::new(), expected: "object".into(), found: json_type(value) });
        return out;
    };
    let meta = &b["$defs"]["io.k8s.apimachinery.pkg.apis.meta.v1.ObjectMeta"];
    if let Some(m) = obj.get("metadata") {
        walk(meta, m, "metadata", &mut out, b, false);
    }
    let props = schema.get("properties").and_then(Value::as_object);
    for (k, v) in obj {
        if k == "metadata" || k == "apiVersion" || k == "kind" {
            continue;
        }
        match props.and_then(|p| p.get(k)) {
            Some(s) => walk(s, v, k, &mut out, b, true),
            None if schema.get("x-kubernetes-preserve-unknown-fields") == Some(&Value::Bool(true)) => {}
            None => out.push(Violation::UnknownField { path: k.clone() }),
        }
    }
    if let Some(req) = schema.get("required").and_then(Value::as_array) {
        for r in req.iter().filter_map(Value::as_str) {
            if !obj.contains_key(r) {
                out.push(Violation::Required { path: r.to_string() });
            }
        }
    }
    out
}

fn resolve<'a>(schema: &'a Value, bundle: &'a Value) -> &'a Value {
    match schema.get("$ref").and_then(Value::as_str) {
        Some(r) => {
            let name = r.trim_start_matches("#/$defs/");
            resolve(&bundle["$defs"][name], bundle)
        }
        None => schema,
    }
}

fn allowed_types(schema: &Value, crd: bool) -> Option<Vec<String>> {
    let mut types: Vec<String> = match schema.get("type") {
        Some(Value::String(s)) => vec![s.clone()],
        Some(Value::Array(a)) => a.iter().filter_map(|t| t.as_str().map(str::to_string)).collect(),
        _ => return None,
    };
    if crd && schema.get("nullable") == Some(&Value::Bool(true)) {
        types.push("null".into());
    }
    Some(types)
}

fn walk(schema: &Value, value: &Value, path: &str, out: &mut Vec<Violation>, bundle: &Value, crd: bool) {
    let schema = resolve(schema, bundle);
    // int-or-string (bundle: oneOf of two types; CRD: the extension).
    if schema.get("x-kubernetes-int-or-string") == Some(&Value::Bool(true)) {
        if !matches!(json_type(value), "integer" | "string") {
            out.push(Violation::WrongType {
                path: path.into(),
                expected: "int-or-string".into(),
                found: json_type(value),
            });
        }
        return;
    }
    if let Some(alts) = schema.get("oneOf").and_then(Value::as_array) {
        if !crd {
            let ok = alts.iter().any(|alt| {
                let mut tmp = Vec::new();
                walk(alt, value, path, &mut tmp, bundle, crd);
                tmp.is_empty()
            });
            if !ok {
                out.push(Violation::WrongType {
                    path: path.into(),
                    expected: "one of several types".into(),
                    found: json_type(value),
                });
            }
            return;
        }
    }
    let found = json_type(value);
    if let Some(types) = allowed_types(schema, crd) {
        let ok = types.iter().any(|t| t == found || (t == "number" && found == "integer"));
        if !ok {
            out.push(Violation::WrongType { path: path.into(), expected: types.join(" or "), found });
            return;
        }
    }
    if value.is_null() {
        return;
    }
    if let Some(e) = schema.get("enum").and_then(Value::as_array) {
        if !e.contains(value) {
            out.push(Violation::NotInEnum {
                path: path.into(),
                value: value.clone(),
                allowed: e.iter().map(|v| v.as_str().map(str::to_string).unwrap_or_else(|| v.to_string())).collect(),
            });
        }
    }
    match value {
        Value::Object(obj) => {
            let props = schema.get("properties").and_then(Value::as_object);
            let additional = schema.get("additionalProperties");
            let preserve = schema.get("x-kubernetes-preserve-unknown-fields") == Some(&Value::Bool(true));
            for (k, v) in obj {
                if let Some(s) = props.and_then(|p| p.get(k)) {
                    walk(s, v, &child(path, k), out, bundle, crd);
                } else {
                    match additional {
                        Some(s @ Value::Object(_)) => walk(s, v, &format!("{path}[{k}]"), out, bundle, crd),
                        Some(Value::Bool(true)) => {}
                        _ if preserve => {}
                        // The bundle says `additionalProperties: false`; a CRD object
                        // without it would prune the field: both are unknown fields.
                        _ if props.is_some() || additional == Some(&Value::Bool(false)) || crd => {
                            out.push(Violation::UnknownField { path: child(path, k) });
                        }
                        _ => {}
                    }
                }
            }
            if let Some(req) = schema.get("required").and_then(Value::as_array) {
                for r in req.iter().filter_map(Value::as_str) {
                    if obj.get(r).is_none_or(Value::is_null) {
                        out.push(Violation::Required { path: child(path, r) });
                    }
                }
            }
        }
        Value::Array(items) => {
            if let Some(s) = schema.get("items") {
                for (i, v) in items.iter().enumerate() {
                    walk(s, v, &format!("{path}[{i}]"), out, bundle, crd);
                }
            }
        }
        Value::String(s) => {
            if schema.get("format").and_then(Value::as_str) == Some("byte")
                && base64::engine::general_purpose::STANDARD.decode(s).is_err()
            {
                out.push(Violation::BadFormat {
                    path: path.into(),
                    value: value.clone(),
                    detail: "illegal base64 data".into(),
                });
            }
            if crd {
                bounds_str(schema, s, path, out);
            }
        }
        Value::Number(n) if crd => {
            let x = n.as_f64().unwrap_or_default();
            if let Some(min) = schema.get("minimum").and_then(Value::as_f64) {
                if x < min {
                    out.push(Violation::BadFormat {
                        path: path.into(),
                        value: value.clone(),
                        detail: format!("should be greater than or equal to {min}"),
                    });
                }
            }
            if let Some(max) = schema.get("maximum").and_then(Value::as_f64) {
                if x > max {
                    out.push(Violation::BadFormat {
                        path: path.into(),
                        value: value.clone(),
                        detail: format!("should be less than or equal to {max}"),
                    });
                }
            }
        }
        _ => {}
    }
}

fn bounds_str(schema: &Value, s: &str, path: &str, out: &mut Vec<Violation>) {
    let len = s.chars().count() as u64;
    if let Some(max) = schema.get("maxLength").and_then(Value::as_u64) {
        if len > max {
            out.push(Violation::BadFormat {
                path: path.into(),
                value: Value::String(s.into()),
                detail: format!("may not be more than {max} bytes"),
            });
        }
    }
    if let Some(min) = schema.get("minLength").and_then(Value::as_u64) {
        if len < min {
            out.push(Violation::BadFormat {
                path: path.into(),
                value: Value::String(s.into()),
                detail: format!("should be at least {min} chars long"),
            });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn a_valid_pod_passes() {
        let pod = json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "p", "labels": {"a": "b"}},
            "spec": {"containers": [{"name": "c", "image": "x", "ports": [{"containerPort": 80}],
                "startupProbe": {"httpGet": {"port": "http", "path": "/"}}, "resources": {"limits": {"cpu": "1", "memory": 1024}}}]}});
        assert_eq!(validate_builtin("pod-v1", &pod), vec![]);
    }

    #[test]
    fn unknown_fields_wrong_types_and_missing_required_fields_are_reported_with_paths() {
        let pod = json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "p"},
            "spec": {"containers": [{"image": "x", "bogus": 1, "ports": [{"containerPort": "80"}]}]}});
        let v = validate_builtin("pod-v1", &pod);
        assert!(v.contains(&Violation::UnknownField { path: "spec.containers[0].bogus".into() }), "{v:?}");
        assert!(v.contains(&Violation::Required { path: "spec.containers[0].name".into() }), "{v:?}");
        assert!(v.iter().any(|x| matches!(x, Violation::WrongType { path, .. } if path == "spec.containers[0].ports[0].containerPort")), "{v:?}");
    }

    #[test]
    fn secret_data_must_be_base64() {
        let s = json!({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "s"}, "data": {"k": "not base64!"}});
        assert!(
            matches!(&validate_builtin("secret-v1", &s)[..], [Violation::BadFormat { path, .. }] if path == "data[k]")
        );
    }

    #[test]
    fn crd_schemas_reject_unknown_fields_unless_preserved() {
        let schema = json!({"type": "object", "properties": {
            "spec": {"type": "object", "required": ["jobId"], "properties": {"jobId": {"type": "string"}, "n": {"type": "integer", "minimum": 1}}},
            "status": {"type": "object", "x-kubernetes-preserve-unknown-fields": true}}});
        let ok = json!({"apiVersion": "x/v1", "kind": "R", "metadata": {"name": "r"}, "spec": {"jobId": "a"}, "status": {"any": 1}});
        assert_eq!(validate_custom(&schema, &ok), vec![]);
        let bad = json!({"metadata": {"name": "r", "bogus": 1}, "spec": {"n": 0, "extra": true}});
        let v = validate_custom(&schema, &bad);
        assert!(v.contains(&Violation::UnknownField { path: "metadata.bogus".into() }), "{v:?}");
        assert!(v.contains(&Violation::UnknownField { path: "spec.extra".into() }), "{v:?}");
        assert!(v.contains(&Violation::Required { path: "spec.jobId".into() }), "{v:?}");
        assert!(v.iter().any(|x| matches!(x, Violation::BadFormat { path, .. } if path == "spec.n")), "{v:?}");
    }
}
