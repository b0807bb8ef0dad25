//! The API's URL scheme: paths to routes (discovery, resources, namespaces, the
//! emulator's admin endpoints), query strings, and the discovery documents.
use crate::emulator::openapi;
use crate::emulator::resources::ResourceType;
use crate::emulator::status::ApiError;
use crate::emulator::store::Store;
use serde_json::{json, Value};
use std::collections::{BTreeSet, HashMap};

fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'+' => out.push(b' '),
            b'%' if i + 2 < b.len() => {
                match u8::from_str_radix(std::str::from_utf8(&b[i + 1..i + 3]).unwrap_or("zz"), 16) {
                    Ok(v) => {
                        out.push(v);
                        i += 2;
                    }
                    Err(_) => out.push(b'%'),
                }
            }
            c => out.push(c),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

pub fn parse_query(q: Option<&str>) -> HashMap<String, String> {
    q.unwrap_or_default()
        .split('&')
        .filter(|p| !p.is_empty())
        .map(|p| match p.split_once('=') {
            Some((k, v)) => (percent_decode(k), percent_decode(v)),
            None => (percent_decode(p), String::new()),
        })
        .collect()
}

/// Where a request points after parsing the path.
#[derive(Debug, PartialEq)]
pub(super) enum Route {
    Discovery(Value),
    Resource { rt: Box<ResourceType>, namespace: Option<String>, name: Option<String>, sub: Option<String> },
    Admin(Vec<String>),
}

pub(super) fn route(store: &Store, path: &str) -> Result<Route, ApiError> {
    let segs: Vec<String> = path.trim_matches('/').split('/').filter(|s| !s.is_empty()).map(percent_decode).collect();
    let s: Vec<&str> = segs.iter().map(String::as_str).collect();
    let types = store.types();
    match s.as_slice() {
        ["emulator", rest @ ..] => Ok(Route::Admin(rest.iter().map(|x| x.to_string()).collect())),
        ["version"] => Ok(Route::Discovery(json!({"major": "1", "minor": "33", "gitVersion": "v1.33.0-emulator",
            "gitCommit": "emulator", "gitTreeState": "clean", "buildDate": "2025-04-23T00:00:00Z",
            "goVersion": "go1.24", "compiler": "gc", "platform": "linux/amd64"}))),
        ["openapi", "v3"] => Ok(Route::Discovery(openapi::root(&types))),
        ["openapi", "v3", "api", v] => {
            openapi::group_version_doc(&types, "", v).map(Route::Discovery).ok_or(ApiError::NoResource)
        }
        ["openapi", "v3", "apis", g, v] => {
            openapi::group_version_doc(&types, g, v).map(Route::Discovery).ok_or(ApiError::NoResource)
        }
        ["healthz"] | ["readyz"] | ["livez"] => Ok(Route::Discovery(json!("ok"))),
        ["api"] => Ok(Route::Discovery(json!({"kind": "APIVersions", "versions": ["v1"],
            "serverAddressByClientCIDRs": [{"clientCIDR": "0.0.0.0/0", "serverAddress": "127.0.0.1"}]}))),
        ["apis"] => {
            let mut groups: Vec<(String, BTreeSet<String>)> = Vec::new();
            for t in types.iter().filter(|t| !t.group.is_empty()) {
                match groups.iter_mut().find(|(g, _)| *g == t.group) {
                    Some((_, v)) => {
                        v.insert(t.version.clone());
                    }
                    None => groups.push((t.group.clone(), BTreeSet::from([t.version.clone()]))),
                }
            }
            let groups: Vec<Value> = groups.iter().map(|(g, vs)| api_group(g, vs)).collect();
            Ok(Route::Discovery(json!({"kind": "APIGroupList", "apiVersion": "v1", "groups": groups})))
        }
        ["apis", g] => {
            let vs: BTreeSet<String> = types.iter().filter(|t| t.group == *g).map(|t| t.version.clone()).collect();
            if vs.is_empty() {
                return Err(ApiError::NoResource);
            }
            let mut v = api_group(g, &vs);
            v["apiVersion"] = json!("v1");
            Ok(Route::Discovery(v))
        }
        ["api", "v1"] => Ok(Route::Discovery(resource_list("", "v1", &types))),
        ["apis", g, v] => {
            if !types.iter().any(|t| t.group == *g && t.version == *v) {
                return Err(ApiError::NoResource);
            }
            Ok(Route::Discovery(resource_list(g, v, &types)))
        }
        ["api", "v1", rest @ ..] => resource_route(&types, "", "v1", rest),
        ["apis", g, v, rest @ ..] => resource_route(&types, g, v, rest),
        _ => Err(ApiError::NoResource),
    }
}

fn api_group(g: &str, versions: &BTreeSet<String>) -> Value {
    let vs: Vec<Value> = versions.iter().map(|v| json!({"groupVersion": format!("{g}/{v}"), "version": v})).collect();
    json!({"kind": "APIGroup", "name": g, "versions": vs, "preferredVersion": vs[0]})
}

fn resource_list(g: &str, v: &str, types: &[ResourceType]) -> Value {
    let resources: Vec<Value> =
        types.iter().filter(|t| t.group == g && t.version == v).flat_map(|t| t.discovery_entries()).collect();
    let gv = if g.is_empty() { v.to_string() } else { format!("{g}/{v}") };
    json!({"kind": "APIResourceList", "apiVersion": "v1", "groupVersion": gv, "resources": resources})
}

fn resource_route(types: &[ResourceType], g: &str, v: &str, rest: &[&str]) -> Result<Route, ApiError> {
    let find = |plural: &str| {
        types.iter().find(|t| t.group == g && t.version == v && t.plural == plural).cloned().ok_or(ApiError::NoResource)
    };
    let owned = |s: &&str| s.to_string();
    match rest {
        ["namespaces", ns, sub] if g.is_empty() && find(sub).is_err() => Ok(Route::Resource {
            rt: Box::new(find("namespaces")?),
            namespace: None,
            name: Some(ns.to_string()),
            sub: Some(sub.to_string()),
        }),
        ["namespaces", ns, plural, more @ ..] if more.len() <= 2 => {
            let rt = find(plural)?;
            if !rt.namespaced {
                return Err(ApiError::NoResource);
            }
            Ok(Route::Resource {
                rt: Box::new(rt),
                namespace: Some(ns.to_string()),
                name: more.first().map(owned),
                sub: more.get(1).map(owned),
            })
        }
        [plural, more @ ..] if more.len() <= 2 => {
            let rt = find(plural)?;
            if rt.namespaced && !more.is_empty() {
                return Err(ApiError::NoResource);
            }
            Ok(Route::Resource {
                rt: Box::new(rt),
                namespace: None,
                name: more.first().map(owned),
                sub: more.get(1).map(owned),
            })
        }
        _ => Err(ApiError::NoResource),
    }
}

/// Which aggregated discovery version an `Accept` header asks for (`v2`, else
/// `v2beta1`), if any: kubectl 1.33 offers both, 1.29 only `v2beta1`.
pub(super) fn aggregated_version(accept: &str) -> Option<&'static str> {
    let offered = |v: &str| {
        accept.split(',').any(|part| {
            let p: Vec<&str> = part.split(';').map(str::trim).collect();
            p.contains(&"g=apidiscovery.k8s.io") && p.contains(&"as=APIGroupDiscoveryList") && p.contains(&v)
        })
    };
    if offered("v=v2") {
        Some("v2")
    } else if offered("v=v2beta1") {
        Some("v2beta1")
    } else {
        None
    }
}

/// The aggregated discovery document (`APIGroupDiscoveryList`) of `/api` (`legacy`)
/// or `/apis`: every group, version and resource with its subresources in one answer.
pub(super) fn aggregated_discovery(types: &[ResourceType], legacy: bool, version: &str) -> Value {
    let mut groups: Vec<(String, Vec<String>)> = Vec::new();
    for t in types.iter().filter(|t| t.group.is_empty() == legacy) {
        match groups.iter_mut().find(|(g, _)| *g == t.group) {
            Some((_, vs)) if !vs.contains(&t.version) => vs.push(t.version.clone()),
            Some(_) => {}
            None => groups.push((t.group.clone(), vec![t.version.clone()])),
        }
    }
    let items: Vec<Value> = groups
        .iter()
        .map(|(g, versions)| {
            let versions: Vec<Value> = versions
                .iter()
                .map(|v| {
                    let resources: Vec<Value> = types
                        .iter()
                        .filter(|t| t.group == *g && t.version == *v)
                        .map(|t| {
                            let entries = t.discovery_entries();
                            let subresources: Vec<Value> = entries[1..]
                                .iter()
                                .map(|e| {
                                    let name = e["name"].as_str().unwrap_or_default();
                                    json!({
                                        "subresource": name.split_once('/').map(|x| x.1).unwrap_or_default(),
                                        "responseKind": {"group": e.get("group").cloned().unwrap_or(json!(t.group)),
                                            "version": e.get("version").cloned().unwrap_or(json!(t.version)), "kind": e["kind"]},
                                        "verbs": e["verbs"],
                                    })
                                })
                                .collect();
                            let mut r = json!({
                                "resource": t.plural,
                                "responseKind": {"group": t.group, "version": t.version, "kind": t.kind},
                                "scope": if t.namespaced { "Namespaced" } else { "Cluster" },
                                "singularResource": t.singular,
                                "verbs": entries[0]["verbs"],
                            });
                            if !t.short_names.is_empty() {
                                r["shortNames"] = json!(t.short_names);
                            }
                            if !subresources.is_empty() {
                                r["subresources"] = json!(subresources);
                            }
                            r
                        })
                        .collect();
                    json!({"version": v, "resources": resources, "freshness": "Current"})
                })
                .collect();
            let mut meta = json!({"creationTimestamp": null});
            if !g.is_empty() {
                meta["name"] = json!(g);
            }
            json!({"metadata": meta, "versions": versions})
        })
        .collect();
    json!({"kind": "APIGroupDiscoveryList", "apiVersion": format!("apidiscovery.k8s.io/{version}"), "metadata": {}, "items": items})
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::emulator::resources::builtins;

    #[test]
    fn aggregated_discovery_is_served_in_the_version_asked_for() {
        let v133 = "application/json;g=apidiscovery.k8s.io;v=v2;as=APIGroupDiscoveryList,application/json;g=apidiscovery.k8s.io;v=v2beta1;as=APIGroupDiscoveryList,application/json";
        assert_eq!(aggregated_version(v133), Some("v2"));
        assert_eq!(
            aggregated_version(
                "application/json;g=apidiscovery.k8s.io;v=v2beta1;as=APIGroupDiscoveryList,application/json"
            ),
            Some("v2beta1")
        );
        assert_eq!(aggregated_version("application/json, */*"), None);
        let apis = aggregated_discovery(&builtins(), false, "v2");
        let apps = apis["items"].as_array().unwrap().iter().find(|g| g["metadata"]["name"] == "apps").unwrap();
        let deployments = &apps["versions"][0]["resources"][0];
        assert_eq!(deployments["resource"], "deployments");
        assert_eq!(
            deployments["subresources"][1],
            json!({"subresource": "scale",
            "responseKind": {"group": "autoscaling", "version": "v1", "kind": "Scale"}, "verbs": ["get", "patch", "update"]})
        );
        let api = aggregated_discovery(&builtins(), true, "v2beta1");
        assert_eq!(api["apiVersion"], "apidiscovery.k8s.io/v2beta1");
        assert_eq!(api["items"].as_array().unwrap().len(), 1);
        assert!(api["items"][0]["metadata"].get("name").is_none());
    }
}
