//! The Kubernetes subcommands through the real binary: `render`, `crd`, `rbac`.
#![allow(clippy::unwrap_used)] // in a test, an unwrap is an assertion
use std::process::Command;

fn bin() -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_job-manager"));
    // Only what a test sets: `render` reads JM_* like `run`.
    cmd.env_clear().env("PATH", "/usr/bin:/bin");
    cmd
}

fn repo() -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap().to_path_buf()
}

fn docs(stdout: &[u8]) -> Vec<serde_json::Value> {
    String::from_utf8_lossy(stdout)
        .split("\n---\n")
        .map(|d| serde_saphyr::from_str::<serde_json::Value>(d.trim_start_matches("---\n")).unwrap())
        .collect()
}

fn runtime_env(objects: &[serde_json::Value], name: &str) -> Option<String> {
    let job = objects.iter().find(|o| o["kind"] == "Job")?;
    let runtime = job["spec"]["template"]["spec"]["containers"].as_array()?.iter().find(|c| c["name"] == "runtime")?;
    let entry = runtime["env"].as_array()?.iter().find(|e| e["name"] == name)?;
    entry["value"].as_str().map(str::to_string)
}

#[test]
fn render_works_for_a_newcomer_with_the_shipped_example() {
    let job = repo().join("deploy/examples/jobs/01-http-check-ok.json");
    let example = repo().join("deploy/examples/kubernetes.yaml");
    let out = bin().args(["render", "--job"]).arg(&job).arg("--config").arg(&example).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let objects = docs(&out.stdout);
    let kinds: Vec<&str> = objects.iter().map(|o| o["kind"].as_str().unwrap()).collect();
    assert_eq!(kinds, ["JobRecord", "Job", "NetworkPolicy"]);
    let images: Vec<String> = objects[1]["spec"]["template"]["spec"]["containers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["image"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(images, ["newrelic/synthetics-node-api-runtime:latest"]);

    // Without a config: the defaults configure nothing, and the error says what to pass.
    let out = bin().args(["render", "--job"]).arg(&job).output().unwrap();
    assert_eq!(out.status.code(), Some(64));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("try --config deploy/examples/kubernetes.yaml"), "{stderr}");
}

#[test]
fn render_takes_set_and_refuses_an_image_without_a_repository() {
    let job = repo().join("deploy/examples/jobs/01-http-check-ok.json");
    let example = repo().join("deploy/examples/kubernetes.yaml");
    let render = |sets: &[&str]| {
        let mut cmd = bin();
        cmd.args(["render", "--job"]).arg(&job).arg("--config").arg(&example);
        for s in sets {
            cmd.args(["--set", s]);
        }
        cmd.output().unwrap()
    };
    let out = render(&["userDefinedVariables.userDefinedJson={\"REGION\": \"eu\"}", "namespace=other"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let objects = docs(&out.stdout);
    assert_eq!(runtime_env(&objects, "USER_DEFINED_VARIABLES").as_deref(), Some(r#"{"REGION":"eu"}"#));
    assert_eq!(objects[1]["metadata"]["namespace"], "other");

    let out = render(&["runtimes=[{name: node-api-runtime, image: {repository: ''}}]"]);
    assert_eq!(out.status.code(), Some(64));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("runtimes[0].image (node-api-runtime): repository is required") && stderr.contains("`:latest`"),
        "{stderr}"
    );
}

#[test]
fn render_validates_exactly_like_run() {
    let job = repo().join("deploy/examples/jobs/01-http-check-ok.json");
    let example = repo().join("deploy/examples/kubernetes.yaml");
    for bad in [
        "checkTimeout=0",
        "logLevel=VERBOSE",
        "sidecar.denyCidrs=10.0.0.0/33",
        "poll.batchSize=0",
        "kubernetes.securityContext={runAsUser: 1001}",
    ] {
        let render = bin()
            .args(["render", "--job"])
            .arg(&job)
            .arg("--config")
            .arg(&example)
            .args(["--set", bad])
            .output()
            .unwrap();
        let run = bin()
            .args(["run", "--config"])
            .arg(&example)
            .args(["--set", bad])
            .env("JM_LOCATION_KEY", "k")
            .env("JM_INTERNAL_API_KEY", "k")
            .output()
            .unwrap();
        assert_eq!((render.status.code(), run.status.code()), (Some(64), Some(64)), "{bad}");
        let render_err = String::from_utf8_lossy(&render.stderr);
        let run_err = String::from_utf8_lossy(&run.stderr);
        let rule = run_err.trim().strip_prefix("job-manager: ").unwrap_or_else(|| panic!("{bad}: {run_err}"));
        assert!(render_err.contains(rule), "{bad}: run said {rule:?}, render said {render_err:?}");
    }
}

#[test]
fn render_reads_user_defined_variables_from_a_file_and_from_the_data_volume() {
    let tmp = tempfile::TempDir::new().unwrap();
    std::fs::create_dir(tmp.path().join("variables")).unwrap();
    std::fs::write(tmp.path().join("variables/user_defined_variables.json"), r#"{"FROM": "path"}"#).unwrap();
    std::fs::write(tmp.path().join("file.json"), r#"{"FROM": "file"}"#).unwrap();
    let job = repo().join("deploy/examples/jobs/01-http-check-ok.json");
    let example = repo().join("deploy/examples/kubernetes.yaml");
    let cases = [
        (
            vec![
                "userDefinedVariables.userDefinedPath=variables".to_string(),
                format!("kubernetes.persistence.mountPath={}", tmp.path().display()),
            ],
            "path",
        ),
        (vec![format!("userDefinedVariables.userDefinedFile={}", tmp.path().join("file.json").display())], "file"),
    ];
    for (sets, from) in cases {
        let mut cmd = bin();
        cmd.args(["render", "--job"]).arg(&job).arg("--config").arg(&example);
        for s in &sets {
            cmd.args(["--set", s]);
        }
        let out = cmd.output().unwrap();
        assert!(out.status.success(), "{from}: {}", String::from_utf8_lossy(&out.stderr));
        let expected = format!(r#"{{"FROM":"{from}"}}"#);
        assert_eq!(runtime_env(&docs(&out.stdout), "USER_DEFINED_VARIABLES"), Some(expected), "{from}");
    }
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
    let out = bin()
        .args(["render", "--job"])
        .arg(dir.join("missing.json"))
        .arg("--config")
        .arg(dir.join("config.yaml"))
        .output()
        .unwrap();
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
