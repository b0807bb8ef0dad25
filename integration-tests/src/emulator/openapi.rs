//! `/openapi/v3`: the discovery root and one OpenAPI 3 document per group-version,
//! built from the vendored schemas (built-in kinds) and the CRDs' `openAPIV3Schema`s.
//!
//! What kubectl reads from it: whether a kind's PATCH takes the `fieldValidation`
//! query parameter (then it leaves validation to the server, which is strict), which
//! patch types a kind accepts (the documents do not offer strategic merge patch, so
//! client-side apply computes it from kubectl's compiled-in types), and the schemas
//! `kubectl explain` prints.
use crate::emulator::resources::{ResourceType, SchemaSource};
use crate::emulator::validation::schema::bundle;
use serde_json::{json, Map, Value};
use sha2::{Digest, Sha256};

/// `api/v1`, `apis/apps/v1`, ...: the keys of the root document.
fn gv_path(group: &str, version: &str) -> String {
    if group.is_empty() {
        format!("api/{version}")
    } else {
        format!("apis/{group}/{version}")
    }
}

/// The component name of a kind's schema (`io.k8s.api.core.v1.ConfigMap` style for
/// built-ins, the reversed group for custom resources).
fn schema_name(rt: &ResourceType) -> String {
    let group = if rt.group.is_empty() { "core" } else { rt.group.split('.').next().unwrap_or_default() };
    match rt.schema {
        SchemaSource::Builtin(_) => format!("io.k8s.api.{group}.{}.{}", rt.version, rt.kind),
        SchemaSource::Crd(_) => {
            let reversed: Vec<&str> = rt.group.split('.').rev().collect();
            format!("{}.{}.{}", reversed.join("."), rt.version, rt.kind)
        }
    }
}

/// The bundle's JSON Schema in OpenAPI 3.0 terms: `#/$defs/X` -> `#/components/schemas/X`,
/// `type: [X, "null"]` -> `type: X` + `nullable` (kubectl explain reads `type` as text).
fn rewrite_refs(v: &Value) -> Value {
    rewrite_refs_to(v, "#/components/schemas/")
}

fn rewrite_refs_to(v: &Value, prefix: &str) -> Value {
    match v {
        Value::Object(m) => {
            let mut out = Map::new();
            for (k, v) in m {
                match (k.as_str(), v) {
                    ("$ref", Value::String(r)) => {
                        out.insert(k.clone(), json!(r.replace("#/$defs/", prefix)));
                    }
                    ("type", Value::Array(types)) => {
                        let named: Vec<&Value> = types.iter().filter(|t| *t != "null").collect();
                        if let [one] = named.as_slice() {
                            out.insert(k.clone(), (*one).clone());
                        }
                        if named.len() < types.len() {
                            out.insert("nullable".into(), json!(true));
                        }
                    }
                    _ => {
                        out.insert(k.clone(), rewrite_refs_to(v, prefix));
                    }
                }
            }
            Value::Object(out)
        }
        Value::Array(a) => Value::Array(a.iter().map(|x| rewrite_refs_to(x, prefix)).collect()),
        other => other.clone(),
    }
}

/// Every `$defs` name reachable from `v`.
fn collect_refs(v: &Value, defs: &Map<String, Value>, out: &mut std::collections::BTreeSet<String>) {
    match v {
        Value::Object(m) => {
            for (k, v) in m {
                if let ("$ref", Some(r)) = (k.as_str(), v.as_str()) {
                    if let Some(name) = r.strip_prefix("#/$defs/") {
                        if out.insert(name.to_string()) {
                            if let Some(d) = defs.get(name) {
                                collect_refs(d, defs, out);
                            }
                        }
                    }
                } else {
                    collect_refs(v, defs, out);
                }
            }
        }
        Value::Array(a) => a.iter().for_each(|x| collect_refs(x, defs, out)),
        _ => {}
    }
}

fn kind_schema(rt: &ResourceType) -> Value {
    let mut s = match &rt.schema {
        SchemaSource::Builtin(key) => rewrite_refs(&bundle()["kinds"][*key]),
        SchemaSource::Crd(s) => s.clone(),
    };
    if let Some(m) = s.as_object_mut() {
        m.remove("$schema");
        m.remove("$id");
        m.insert(
            "x-kubernetes-group-version-kind".into(),
            json!([{"group": rt.group, "version": rt.version, "kind": rt.kind}]),
        );
    }
    s
}

fn query_param(name: &str) -> Value {
    json!({"name": name, "in": "query", "schema": {"type": "string", "uniqueItems": true}})
}

fn operations(rt: &ResourceType, schema_ref: &Value) -> Vec<(String, Value)> {
    let gvk = json!({"group": rt.group, "version": rt.version, "kind": rt.kind});
    let base =
        if rt.group.is_empty() { format!("/api/{}", rt.version) } else { format!("/apis/{}/{}", rt.group, rt.version) };
    let collection = if rt.namespaced {
        format!("{base}/namespaces/{{namespace}}/{}", rt.plural)
    } else {
        format!("{base}/{}", rt.plural)
    };
    let body = |types: &[&str]| {
        let content: Map<String, Value> =
            types.iter().map(|t| (t.to_string(), json!({"schema": schema_ref}))).collect();
        json!({"content": content, "required": true})
    };
    let ok = json!({"200": {"description": "OK", "content": {"application/json": {"schema": schema_ref}}}});
    let op = |action: &str, params: &[&str], request: Option<Value>| {
        let mut o = json!({
            "operationId": format!("{action}{}", rt.kind),
            "x-kubernetes-action": action,
            "x-kubernetes-group-version-kind": gvk,
            "parameters": params.iter().map(|p| query_param(p)).collect::<Vec<_>>(),
            "responses": ok,
        });
        if let Some(r) = request {
            o["requestBody"] = r;
        }
        o
    };
    let write = ["dryRun", "fieldManager", "fieldValidation"];
    let patch_params = ["dryRun", "fieldManager", "fieldValidation", "force"];
    let mut item = json!({
        "get": op("get", &[], None),
        "put": op("put", &write, Some(body(&["application/json", "application/yaml"]))),
        "patch": op("patch", &patch_params, Some(body(&[
            "application/apply-patch+yaml", "application/json-patch+json", "application/merge-patch+json",
        ]))),
        "delete": op("delete", &["dryRun", "gracePeriodSeconds", "propagationPolicy"], None),
    });
    let params = |names: &[&str]| -> Value {
        names.iter().map(|n| json!({"name": n, "in": "path", "required": true, "schema": {"type": "string"}})).collect()
    };
    let mut coll = json!({
        "get": op("list", &["labelSelector", "fieldSelector", "watch", "resourceVersion"], None),
        "post": op("post", &write, Some(body(&["application/json", "application/yaml"]))),
    });
    if rt.namespaced {
        item["parameters"] = params(&["name", "namespace"]);
        coll["parameters"] = params(&["namespace"]);
    } else {
        item["parameters"] = params(&["name"]);
    }
    vec![(format!("{collection}/{{name}}"), item), (collection, coll)]
}

/// The OpenAPI 3 document of one group-version.
pub fn group_version_doc(types: &[ResourceType], group: &str, version: &str) -> Option<Value> {
    let here: Vec<&ResourceType> = types.iter().filter(|t| t.group == group && t.version == version).collect();
    if here.is_empty() {
        return None;
    }
    let defs = bundle()["$defs"].as_object().cloned().unwrap_or_default();
    let mut schemas = Map::new();
    let mut paths = Map::new();
    let mut needed = std::collections::BTreeSet::new();
    for rt in &here {
        if let SchemaSource::Builtin(key) = rt.schema {
            collect_refs(&bundle()["kinds"][key], &defs, &mut needed);
        }
        let name = schema_name(rt);
        let schema_ref = json!({"$ref": format!("#/components/schemas/{name}")});
        schemas.insert(name, kind_schema(rt));
        for (p, item) in operations(rt, &schema_ref) {
            paths.insert(p, item);
        }
    }
    for name in needed {
        if let Some(d) = defs.get(&name) {
            schemas.insert(name, rewrite_refs(d));
        }
    }
    Some(json!({
        "openapi": "3.0.0",
        "info": {"title": "Kubernetes", "version": "v1.33.0"},
        "paths": paths,
        "components": {"schemas": schemas},
    }))
}

fn hash(doc: &Value) -> String {
    let digest = Sha256::digest(doc.to_string().as_bytes());
    digest.iter().take(32).map(|b| format!("{b:02X}")).collect()
}

/// `GET /openapi/v2` as JSON (Swagger 2.0): every kind's schema under `definitions` and
/// each kind's PATCH with its `fieldValidation` parameter. kubectl asks for the protobuf
/// form only, which the emulator does not serve (406); it then uses `/openapi/v3`.
pub fn swagger_v2(types: &[ResourceType]) -> Value {
    let mut definitions = Map::new();
    if let Some(defs) = bundle()["$defs"].as_object() {
        for (name, d) in defs {
            definitions.insert(name.clone(), rewrite_refs_to(d, "#/definitions/"));
        }
    }
    let mut paths = Map::new();
    for rt in types {
        let name = schema_name(rt);
        let mut schema = match &rt.schema {
            SchemaSource::Builtin(key) => rewrite_refs_to(&bundle()["kinds"][*key], "#/definitions/"),
            SchemaSource::Crd(s) => s.clone(),
        };
        if let Some(m) = schema.as_object_mut() {
            m.remove("$schema");
            m.remove("$id");
            m.insert(
                "x-kubernetes-group-version-kind".into(),
                json!([{"group": rt.group, "version": rt.version, "kind": rt.kind}]),
            );
        }
        definitions.insert(name.clone(), schema);
        for (path, mut item) in operations(rt, &json!({"$ref": format!("#/definitions/{name}")})) {
            // Swagger 2 parameters carry their type inline and have no request bodies.
            for op in item.as_object_mut().into_iter().flat_map(|m| m.values_mut()) {
                if let Some(o) = op.as_object_mut() {
                    o.remove("requestBody");
                    o.insert("responses".into(), json!({"200": {"description": "OK"}}));
                    for p in o.get_mut("parameters").and_then(Value::as_array_mut).into_iter().flatten() {
                        if let Some(pm) = p.as_object_mut() {
                            pm.remove("schema");
                            pm.insert("type".into(), json!("string"));
                        }
                    }
                }
            }
            paths.insert(path, item);
        }
    }
    json!({"swagger": "2.0", "info": {"title": "Kubernetes", "version": "v1.33.0"}, "paths": paths, "definitions": definitions})
}

/// `GET /openapi/v3`: where each group-version's document is.
pub fn root(types: &[ResourceType]) -> Value {
    let mut gvs: Vec<(String, String)> = types.iter().map(|t| (t.group.clone(), t.version.clone())).collect();
    gvs.sort();
    gvs.dedup();
    let paths: Map<String, Value> = gvs
        .iter()
        .filter_map(|(g, v)| {
            let doc = group_version_doc(types, g, v)?;
            let path = gv_path(g, v);
            Some((path.clone(), json!({"serverRelativeURL": format!("/openapi/v3/{path}?hash={}", hash(&doc))})))
        })
        .collect();
    json!({"paths": paths})
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::emulator::resources::builtins;

    #[test]
    fn swagger_v2_resolves_every_reference_and_offers_field_validation() {
        let doc = swagger_v2(&builtins());
        let text = doc.to_string();
        let defs = doc["definitions"].as_object().unwrap();
        for r in text.split("#/definitions/").skip(1) {
            let name = &r[..r.find('"').unwrap()];
            assert!(defs.contains_key(name), "dangling reference {name}");
        }
        let patch = &doc["paths"]["/apis/apps/v1/namespaces/{namespace}/deployments/{name}"]["patch"];
        assert!(patch["parameters"]
            .as_array()
            .unwrap()
            .iter()
            .any(|p| p["name"] == "fieldValidation" && p["type"] == "string"));
        assert!(defs["io.k8s.api.apps.v1.Deployment"]["x-kubernetes-group-version-kind"].is_array());
    }

    #[test]
    fn the_root_lists_every_group_version_with_a_hash() {
        let root = root(&builtins());
        let url = root["paths"]["apis/rbac.authorization.k8s.io/v1"]["serverRelativeURL"].as_str().unwrap();
        assert!(url.starts_with("/openapi/v3/apis/rbac.authorization.k8s.io/v1?hash="), "{url}");
        assert!(root["paths"]["api/v1"].is_object());
    }

    #[test]
    fn a_kinds_patch_takes_field_validation_and_its_schema_resolves() {
        let doc = group_version_doc(&builtins(), "", "v1").unwrap();
        let patch = &doc["paths"]["/api/v1/namespaces/{namespace}/configmaps/{name}"]["patch"];
        assert_eq!(
            patch["x-kubernetes-group-version-kind"],
            json!({"group": "", "version": "v1", "kind": "ConfigMap"})
        );
        assert!(patch["parameters"].as_array().unwrap().iter().any(|p| p["name"] == "fieldValidation"));
        assert!(patch["requestBody"]["content"].get("application/strategic-merge-patch+json").is_none());
        let text = doc.to_string();
        assert!(!text.contains("#/$defs/"));
        assert!(!text.contains("\"type\":["), "explain needs `type` as text");
        let schemas = doc["components"]["schemas"].as_object().unwrap();
        for r in text.split("#/components/schemas/").skip(1) {
            let name = &r[..r.find('"').unwrap()];
            assert!(schemas.contains_key(name), "dangling reference {name}");
        }
        assert!(doc["paths"]["/api/v1/namespaces/{name}"]["patch"].is_object(), "namespaces are cluster-scoped");
    }
}
