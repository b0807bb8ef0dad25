//! The Kubernetes subcommands through the real binary: `render`, `crd`, `rbac`.
#![allow(clippy::unwrap_used)] // in a test, an unwrap is an assertion
use std::process::Command;

fn bin() -> Command {
    Command::new(env!("CARGO_BIN_EXE_job-manager"))
}

#[test]
fn render_prints_every_object_as_yaml() {
    let tmp = tempfile::TempDir::new().unwrap();
    let dir = tmp.path();
    std::fs::write(dir.join("job.json"), r#"{"id": "cli-1", "runtime_type": "node-api-runtime", "timeout_secs": 30}"#)
        .unwrap();
    std::fs::write(
        dir.join("config.yaml"),
        "namespace: jobs\nruntimes: [{name: node-api-runtime, image: {repository: rt}}]\nkubernetes: {internalApiKeySecretName: k}\n",
    )
    .unwrap();
    let out = bin()
        .args(["render", "--job"])
        .arg(dir.join("job.json"))
        .arg("--config")
        .arg(dir.join("config.yaml"))
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let text = String::from_utf8(out.stdout).unwrap();
    let kinds: Vec<String> = text
        .split("\n---\n")
        .map(|d| serde_saphyr::from_str::<serde_json::Value>(d.trim_start_matches("---\n")).unwrap())
        .map(|v| format!("{}/{}", v["kind"].as_str().unwrap(), v["metadata"]["namespace"].as_str().unwrap()))
        .collect();
    assert_eq!(kinds, ["JobRecord/jobs", "Job/jobs", "NetworkPolicy/jobs"]);

    // A config the translation refuses: the rule is named, exit 64.
    std::fs::write(dir.join("bad.yaml"), "runtimes: [{name: node-api-runtime}]\n").unwrap();
    let out = bin()
        .args(["render", "--job"])
        .arg(dir.join("job.json"))
        .arg("--config")
        .arg(dir.join("bad.yaml"))
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(64));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("internalApiKeySecretName"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = bin().args(["render", "--job"]).arg(dir.join("missing.json")).output().unwrap();
    assert_eq!(out.status.code(), Some(64));
    assert!(String::from_utf8_lossy(&out.stderr).contains("missing.json"));
}

#[test]
fn crd_and_rbac_match_the_library() {
    let crd = bin().arg("crd").output().unwrap();
    assert!(crd.status.success());
    assert_eq!(String::from_utf8(crd.stdout).unwrap(), job_manager::backend::kubernetes::cli::crd());
    let rbac = bin().arg("rbac").output().unwrap();
    assert!(rbac.status.success());
    let rules: Vec<serde_json::Value> = serde_saphyr::from_slice(&rbac.stdout).unwrap();
    assert_eq!(rules.len(), job_manager::backend::kubernetes::rbac::Resource::ALL.len());
}
