use super::*;
use crate::emulator::status::Cause;
use serde_json::json;

fn causes_of(f: impl FnOnce(&mut Vec<Cause>)) -> Vec<String> {
    let mut c = Vec::new();
    f(&mut c);
    c.iter().map(Cause::line).collect()
}

#[test]
fn name_syntax() {
    assert!(is_dns1123_label("job-1"));
    assert!(!is_dns1123_label("Job"));
    assert!(!is_dns1123_label(&"a".repeat(64)));
    assert!(is_dns1123_subdomain("a.b-c.d"));
    assert!(!is_dns1035_label("1abc"));
    assert!(is_qualified_name("example.com/team"));
    assert!(!is_qualified_name("-bad"));
    assert!(is_label_value(""));
    assert!(!is_label_value("has space"));
}

#[test]
fn restart_policy_always_only_on_init_containers() {
    let spec = json!({"initContainers": [{"name": "side", "image": "s", "restartPolicy": "Always",
            "startupProbe": {"httpGet": {"port": 9901}}}],
        "containers": [{"name": "main", "image": "r", "restartPolicy": "Always"}]});
    assert_eq!(
        causes_of(|c| pod_spec(&spec, "spec.template.spec", c)),
        vec!["spec.template.spec.containers[0].restartPolicy: Forbidden: may not be set for non-init containers"]
    );
}

#[test]
fn probes_forbidden_on_plain_init_containers_and_names_unique() {
    let spec = json!({"initContainers": [{"name": "a", "image": "s", "startupProbe": {"httpGet": {"port": 1}}}],
        "containers": [{"name": "a", "image": "r"}]});
    let got = causes_of(|c| pod_spec(&spec, "spec", c));
    assert!(got.contains(&"spec.initContainers[0].startupProbe: Forbidden: may not be set for init containers without restartPolicy=Always".to_string()), "{got:?}");
    assert!(got.contains(&"spec.containers[0].name: Duplicate value: \"a\"".to_string()), "{got:?}");
}

#[test]
fn mounts_must_reference_volumes() {
    let spec = json!({"volumes": [{"name": "job", "secret": {"secretName": "s"}}],
        "containers": [{"name": "c", "image": "r", "volumeMounts": [{"name": "job", "mountPath": "/j"}, {"name": "nope", "mountPath": "/n"}]}]});
    assert_eq!(
        causes_of(|c| pod_spec(&spec, "spec", c)),
        vec!["spec.containers[0].volumeMounts[1].name: Not found: \"nope\""]
    );
}

#[test]
fn job_restart_policy_and_immutable_template() {
    let j = json!({"spec": {"template": {"spec": {"restartPolicy": "Always", "containers": [{"name": "c", "image": "i"}]}}}});
    assert_eq!(
        causes_of(|c| job(&j, None, c)),
        vec!["spec.template.spec.restartPolicy: Unsupported value: \"Always\": supported values: \"OnFailure\", \"Never\""]
    );
    let old = json!({"spec": {"template": {"spec": {"restartPolicy": "Never", "containers": [{"name": "c", "image": "i"}]}}}});
    let mut new = old.clone();
    new["spec"]["template"]["spec"]["containers"][0]["image"] = json!("other");
    let got = causes_of(|c| job(&new, Some(&old), c));
    assert_eq!(got.len(), 1);
    assert!(got[0].starts_with("spec.template: Invalid value:") && got[0].ends_with("field is immutable"), "{got:?}");
}

#[test]
fn quantities_and_request_limit_order() {
    assert_eq!(parse_quantity(&json!("250m")), Some(0.25));
    assert_eq!(parse_quantity(&json!("1Gi")), Some(1073741824.0));
    let spec = json!({"containers": [{"name": "c", "image": "i", "resources": {"requests": {"cpu": "2"}, "limits": {"cpu": "1"}}}]});
    assert_eq!(causes_of(|c| pod_spec(&spec, "spec", c)).len(), 1);
}

#[test]
fn deployment_selector_must_match_template() {
    let d = json!({"spec": {"selector": {"matchLabels": {"app": "a"}}, "template": {"metadata": {"labels": {"app": "b"}}, "spec": {"containers": [{"name": "c", "image": "i"}]}}}});
    let got = causes_of(|c| deployment(&d, None, c));
    assert_eq!(got.len(), 1);
    assert!(got[0].contains("`selector` does not match template `labels`"));
}
