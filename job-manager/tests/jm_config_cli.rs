//! The real binary: invalid configuration names the setting and the rule and exits 64;
//! precedence file < env < flags; `--help`, `--list-settings`, `sign`.
#![allow(clippy::unwrap_used)] // in a test, an unwrap is an assertion
mod jm_support;

use jm_support::{job_manager_bin, TempDir};
use std::process::{Command, Output};

fn run(args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut cmd = Command::new(job_manager_bin());
    cmd.args(args).env_clear().env("PATH", std::env::var("PATH").unwrap_or_default());
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd.output().unwrap()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

#[test]
fn invalid_settings_exit_64_naming_setting_and_rule() {
    let dir = TempDir::new("cli");
    let file = dir.path().join("c.yaml");
    std::fs::write(&file, "brokerApiEndpoint: embedded\nruntimes: [{name: rt, command: [/bin/true]}]\n").unwrap();
    let f = file.to_str().unwrap();
    let shared_uid = dir.path().join("shared-uid.yaml");
    std::fs::write(
        &shared_uid,
        "brokerApiEndpoint: embedded\nruntimes: [{name: rt, command: [/bin/true]}]\n\
         kubernetes: {runtimeSecurityContext: {runAsUser: 1002}}\n",
    )
    .unwrap();
    // (case, args, env, text stderr must contain)
    type Case<'a> = (&'a str, &'a [&'a str], &'a [(&'a str, &'a str)], &'a str);
    let cases: &[Case<'_>] = &[
        ("timeout from env", &["--config", f], &[("JM_CHECK_TIMEOUT", "901")], "JM_CHECK_TIMEOUT"),
        ("timeout from flag", &["--config", f, "--set", "checkTimeout=0"], &[], "between 1 and 900"),
        ("log level", &["--config", f, "--log-level", "LOUD"], &[], "logLevel"),
        (
            "missing location key",
            &["--config", f, "--broker-api-endpoint", "https://broker.example"],
            &[],
            "locationKey",
        ),
        ("config file from env", &[], &[("JM_CONFIG_FILE", "/nonexistent/jm.yaml")], "cannot read config file"),
        ("unknown key", &["--config", f, "--set", "nope=1"], &[], "no such setting"),
        ("bad json", &["--config", f], &[("JM_USER_DEFINED_VARIABLES_USER_DEFINED_JSON", "[")], "userDefinedJson"),
        ("no runtimes", &["--set", "brokerApiEndpoint=embedded"], &[], "at least one enabled runtime"),
        (
            "odd UID range",
            &["--config", f],
            &[("JM_LOCAL_UID_RANGE", "200000-200002")],
            "`local.uidRange` (JM_LOCAL_UID_RANGE)",
        ),
        ("UID range from root", &["--config", f, "--set", "local.uidRange=0-99"], &[], "must not start at 0 (root)"),
        (
            "sidecar and runtime share a UID",
            &["--config", shared_uid.to_str().unwrap()],
            &[],
            "the sidecar and the runtime both run as UID 1002; they must differ",
        ),
    ];
    for (name, args, env, expect) in cases {
        let o = run(args, env);
        assert_eq!(o.status.code(), Some(64), "case {name}: {}", stderr(&o));
        assert!(stderr(&o).contains(expect), "case {name}: {}", stderr(&o));
    }
}

#[test]
fn kubernetes_executor_without_key_is_refused() {
    let o = run(&["--set", "executor=kubernetes", "--set", "brokerApiEndpoint=embedded"], &[]);
    assert_eq!(o.status.code(), Some(64));
    assert!(stderr(&o).contains("internalApiKey"), "{}", stderr(&o));
}

#[test]
fn version_names_the_commit_and_the_compiler() {
    let o = run(&["--version"], &[]);
    assert!(o.status.success(), "{}", stderr(&o));
    let want = format!("job-manager {}\n", common::build_info::LONG_VERSION);
    assert_eq!(String::from_utf8_lossy(&o.stdout), want);
    assert!(want.contains(" (commit ") && want.contains(", rustc 1."), "{want}");
}

#[test]
fn help_and_settings_list_explain_configuration() {
    let o = run(&["--help"], &[]);
    assert!(o.status.success());
    let help = String::from_utf8_lossy(&o.stdout);
    for needle in ["JM_CONFIG_FILE", "precedence", "exits with status 64", "demo", "sign"] {
        assert!(help.contains(needle), "--help mentions {needle}: {help}");
    }
    let o = run(&["--list-settings"], &[]);
    assert!(o.status.success());
    let list = String::from_utf8_lossy(&o.stdout);
    for needle in [
        "JM_CHECK_TIMEOUT",
        "JM_POLL_INTERVAL_MS",
        "JM_USER_DEFINED_VARIABLES_USER_DEFINED_JSON",
        "JM_SIDECAR_ALLOW_CIDRS",
    ] {
        assert!(list.contains(needle), "{needle} listed");
    }
}

#[test]
fn sign_produces_a_verifying_signature() {
    let dir = TempDir::new("sign");
    let file = dir.path().join("job.json");
    std::fs::write(&file, r#"{"id":"s","runtime_type":"rt","timeout_secs":5,"payload":{"b":1,"a":[1,2]}}"#).unwrap();
    let o = run(&["sign", "--job", file.to_str().unwrap()], &[("JM_VSE_PASSPHRASE", "pp")]);
    assert!(o.status.success(), "{}", stderr(&o));
    let sig = String::from_utf8_lossy(&o.stdout).trim().to_string();
    let payload = serde_json::json!({"a": [1, 2], "b": 1});
    assert_eq!(common::token::verify_vse("pp", "rt", &payload, Some(&sig)), Ok(()));
    let o = run(&["sign", "--job", file.to_str().unwrap(), "--passphrase", "pp", "--in-place"], &[]);
    assert!(o.status.success());
    let job: common::Job = serde_json::from_str(&std::fs::read_to_string(&file).unwrap()).unwrap();
    assert_eq!(job.signature.as_deref(), Some(sig.as_str()));
}
