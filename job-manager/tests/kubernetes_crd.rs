//! The committed CRD (`deploy/helm/job-manager/crds/jobrecords.yaml`) must be exactly what
//! `job-manager crd` generates from the Rust types. After changing the types, regenerate
//! with `UPDATE_FIXTURES=1 cargo test -p job-manager --test kubernetes_crd` (or
//! `job-manager crd > deploy/helm/job-manager/crds/jobrecords.yaml`).
#![allow(clippy::unwrap_used)] // in a test, an unwrap is an assertion
use job_manager::backend::kubernetes::cli;
use std::path::PathBuf;

#[test]
fn committed_crd_matches_the_generated_one() {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../deploy/helm/job-manager/crds/jobrecords.yaml");
    let generated = cli::crd();
    if std::env::var_os("UPDATE_FIXTURES").is_some() {
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(&path, &generated).unwrap();
    }
    let committed = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    assert!(
        committed == generated,
        "{} drifted from the JobRecord types; regenerate it with `job-manager crd`.\n--- generated ---\n{generated}",
        path.display()
    );
}

#[test]
fn crd_is_structural_and_names_the_status_subresource() {
    let crd: serde_json::Value = serde_saphyr::from_str(&cli::crd()).unwrap();
    assert_eq!(crd["kind"], "CustomResourceDefinition");
    assert_eq!(crd["spec"]["names"]["kind"], "JobRecord");
    assert_eq!(crd["spec"]["names"]["plural"], "jobrecords");
    let version = &crd["spec"]["versions"][0];
    assert_eq!(version["name"], "v1");
    assert_eq!(version["subresources"]["status"], serde_json::json!({}));
    let spec = &version["schema"]["openAPIV3Schema"]["properties"]["spec"];
    let required: Vec<_> = spec["required"].as_array().unwrap().iter().map(|v| v.as_str().unwrap()).collect();
    assert_eq!(required, ["deadline", "jobId", "runtimeType", "workload"]);
    // Structural schemas: every property has a type (no `{}` / unknown-field holes).
    fn walk(v: &serde_json::Value, path: &str) {
        if let Some(props) = v.get("properties").and_then(|p| p.as_object()) {
            for (k, p) in props {
                let p_path = format!("{path}.{k}");
                assert!(
                    p.get("type").is_some() || p.get("anyOf").is_some() || p.get("oneOf").is_some(),
                    "{p_path} has no type: {p:?}"
                );
                walk(p, &p_path);
            }
        }
    }
    walk(&version["schema"]["openAPIV3Schema"], "");
}
