//! Per-kind defaulting on create: what the API server fills in before an object is
//! first stored (generated names, uid, timestamps, Pod QoS class, Job selectors,
//! Service cluster IPs, CRD status, Secret `stringData`), then the schema defaults.
use super::{meta_str, new_uid, random_suffix, State, Store};
use crate::emulator::resources::ResourceType;
use crate::emulator::status::{self, ApiError};
use crate::emulator::time;
use crate::emulator::validation;
use base64::Engine as _;
use serde_json::{json, Value};

impl Store {
    /// Kind-specific normalization on create: ids, defaults, status reset.
    pub(super) fn prepare_new(
        &self,
        st: &mut State,
        rt: &ResourceType,
        ns: &str,
        mut obj: Value,
    ) -> Result<Value, ApiError> {
        if !obj.is_object() {
            return Err(ApiError::BadRequest("Object 'Kind' is missing in request body".into()));
        }
        obj["apiVersion"] = json!(rt.api_version());
        obj["kind"] = json!(rt.kind);
        if !obj["metadata"].is_object() {
            obj["metadata"] = json!({});
        }
        if rt.namespaced {
            match obj["metadata"]["namespace"].as_str() {
                Some(n) if n != ns => {
                    return Err(ApiError::BadRequest(
                        "the namespace of the provided object does not match the namespace sent on the request".into(),
                    ))
                }
                _ => obj["metadata"]["namespace"] = json!(ns),
            }
        } else if let Some(m) = obj["metadata"].as_object_mut() {
            m.remove("namespace");
        }
        if meta_str(&obj, "name").is_empty() {
            let prefix = meta_str(&obj, "generateName").to_string();
            if prefix.is_empty() {
                return Err(ApiError::Invalid {
                    group: rt.group.clone(),
                    kind: rt.kind.clone(),
                    name: String::new(),
                    causes: vec![status::Cause {
                        reason: "FieldValueRequired",
                        field: "metadata.name".into(),
                        message: "Required value: name or generateName is required".into(),
                    }],
                });
            }
            let prefix: String = prefix.chars().take(58).collect();
            let name = (0..8)
                .map(|_| format!("{prefix}{}", random_suffix(5)))
                .find(|n| !st.objects.contains_key(&Self::key(rt, ns, n)))
                .unwrap_or_else(|| format!("{prefix}{}", random_suffix(5)));
            obj["metadata"]["name"] = json!(name);
        }
        let uid = new_uid();
        {
            let m = obj["metadata"].as_object_mut().expect("set above");
            m.insert("uid".into(), json!(uid));
            m.insert("creationTimestamp".into(), json!(time::now()));
            m.insert("generation".into(), json!(1));
            for k in ["resourceVersion", "deletionTimestamp", "deletionGracePeriodSeconds", "selfLink"] {
                m.remove(k);
            }
        }
        if rt.has_status {
            if let Some(m) = obj.as_object_mut() {
                m.remove("status");
            }
        }
        match (rt.group.as_str(), rt.kind.as_str()) {
            ("", "Namespace") => {
                let name = meta_str(&obj, "name").to_string();
                obj["metadata"]["labels"]["kubernetes.io/metadata.name"] = json!(name);
                obj["spec"] = json!({"finalizers": ["kubernetes"]});
                obj["status"] = json!({"phase": "Active"});
            }
            ("", "Secret") => merge_string_data(&mut obj),
            ("", "Pod") => obj["status"] = json!({"phase": "Pending", "qosClass": qos_class(&obj["spec"])}),
            ("batch", "Job") => job_selector(rt, &mut obj, &uid)?,
            ("", "Service") => {
                if obj["spec"]["clusterIP"].as_str() != Some("None")
                    && obj["spec"]["type"].as_str() != Some("ExternalName")
                {
                    st.next_cluster_ip += 1;
                    let n = st.next_cluster_ip;
                    let ip = format!("10.96.{}.{}", n / 250, n % 250 + 1);
                    obj["spec"]["clusterIP"] = json!(ip);
                    obj["spec"]["clusterIPs"] = json!([ip]);
                }
                obj["spec"]["ipFamilies"] = json!(["IPv4"]);
                obj["spec"]["ipFamilyPolicy"] = json!("SingleStack");
                obj["spec"]["internalTrafficPolicy"] = json!("Cluster");
                obj["status"] = json!({"loadBalancer": {}});
            }
            ("apiextensions.k8s.io", "CustomResourceDefinition") => {
                let names = obj["spec"]["names"].clone();
                let storage: Vec<Value> = obj["spec"]["versions"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .filter(|v| v["storage"] == json!(true))
                    .map(|v| v["name"].clone())
                    .collect();
                let now = time::now();
                obj["status"] = json!({
                    "acceptedNames": names,
                    "conditions": [
                        {"type": "NamesAccepted", "status": "True", "reason": "NoConflicts", "message": "no conflicts found", "lastTransitionTime": now},
                        {"type": "Established", "status": "True", "reason": "InitialNamesAccepted", "message": "the initial names have been accepted", "lastTransitionTime": now},
                    ],
                    "storedVersions": storage,
                });
            }
            _ => {}
        }
        validation::apply_defaults(rt, &mut obj);
        Ok(obj)
    }
}

pub(super) fn merge_string_data(obj: &mut Value) {
    if let Some(sd) = obj.as_object_mut().and_then(|m| m.remove("stringData")) {
        if let Some(sd) = sd.as_object() {
            for (k, v) in sd {
                let enc = base64::engine::general_purpose::STANDARD.encode(v.as_str().unwrap_or_default());
                obj["data"][k] = json!(enc);
            }
        }
    }
}

fn qos_class(spec: &Value) -> &'static str {
    let containers: Vec<&Value> = spec["containers"].as_array().into_iter().flatten().collect();
    let any = containers.iter().any(|c| c["resources"]["requests"].is_object() || c["resources"]["limits"].is_object());
    if !any {
        return "BestEffort";
    }
    let guaranteed = containers.iter().all(|c| {
        let (r, l) = (&c["resources"]["requests"], &c["resources"]["limits"]);
        ["cpu", "memory"].iter().all(|k| l.get(k).is_some() && (r.get(k).is_none() || r.get(k) == l.get(k)))
    });
    if guaranteed {
        "Guaranteed"
    } else {
        "Burstable"
    }
}

/// The Job API's selector generation (`manualSelector` unset).
fn job_selector(rt: &ResourceType, obj: &mut Value, uid: &str) -> Result<(), ApiError> {
    if obj["spec"]["manualSelector"] == json!(true) {
        return Ok(());
    }
    if obj["spec"].get("selector").is_some_and(|s| !s.is_null()) {
        return Err(ApiError::Invalid {
            group: rt.group.clone(),
            kind: rt.kind.clone(),
            name: meta_str(obj, "name").into(),
            causes: vec![status::Cause::invalid(
                "spec.selector",
                &obj["spec"]["selector"],
                "`selector` will be auto-generated",
            )],
        });
    }
    let name = meta_str(obj, "name").to_string();
    obj["spec"]["selector"] = json!({"matchLabels": {"batch.kubernetes.io/controller-uid": uid}});
    let labels = &mut obj["spec"]["template"]["metadata"]["labels"];
    for (k, v) in [
        ("controller-uid", uid),
        ("batch.kubernetes.io/controller-uid", uid),
        ("job-name", &name),
        ("batch.kubernetes.io/job-name", &name),
    ] {
        labels[k] = json!(v);
    }
    Ok(())
}
