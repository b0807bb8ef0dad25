use super::*;
use std::collections::BTreeMap;
use std::io::Write;

fn env(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
    pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
}

const MINIMAL: &str = "brokerApiEndpoint: embedded\nruntimes: [{name: rt, command: [/bin/true]}]\n";

fn file(text: &str) -> tempfile::NamedTempFile {
    let mut f = tempfile::Builder::new().prefix("jm-config-test-").suffix(".yaml").tempfile().unwrap();
    f.write_all(text.as_bytes()).unwrap();
    f
}

fn load_valid(yaml: &str, e: &[(&str, &str)], flags: &[FlagOverride]) -> Result<Validated, ConfigError> {
    let f = file(yaml);
    validate(load(Some(f.path()), &env(e), flags)?)
}

fn rule_of(r: Result<Validated, ConfigError>) -> String {
    r.expect_err("must be refused").to_string()
}

#[test]
fn env_names_follow_the_contract() {
    assert_eq!(env_name("checkTimeout"), "JM_CHECK_TIMEOUT");
    assert_eq!(env_name("poll.intervalMs"), "JM_POLL_INTERVAL_MS");
    assert_eq!(env_name("userDefinedVariables.userDefinedJson"), "JM_USER_DEFINED_VARIABLES_USER_DEFINED_JSON");
    assert_eq!(env_name("brokerApiProxySelfSignedCert"), "JM_BROKER_API_PROXY_SELF_SIGNED_CERT");
}

#[test]
fn precedence_defaults_file_env_flags() {
    // default only
    let v = load_valid(MINIMAL, &[], &[]).unwrap();
    assert_eq!(v.config.check_timeout, 180);
    // file beats default
    let yaml = format!("{MINIMAL}checkTimeout: 100\nlogLevel: WARN\n");
    let v = load_valid(&yaml, &[], &[]).unwrap();
    assert_eq!((v.config.check_timeout, v.config.log_level.as_str()), (100, "WARN"));
    // env beats file
    let v = load_valid(&yaml, &[("JM_CHECK_TIMEOUT", "200")], &[]).unwrap();
    assert_eq!((v.config.check_timeout, v.config.log_level.as_str()), (200, "WARN"));
    // flag beats env
    let v = load_valid(&yaml, &[("JM_CHECK_TIMEOUT", "200")], &[FlagOverride::new("checkTimeout", "300")]).unwrap();
    assert_eq!(v.config.check_timeout, 300);
}

#[test]
fn env_parses_by_type() {
    let v = load_valid(
        MINIMAL,
        &[
            ("JM_POLL_INTERVAL_MS", "250"),
            ("JM_BROKER_API_PROXY_SELF_SIGNED_CERT", "yes"),
            ("JM_NETWORK_HEALTH_CHECK_DISABLED", "1"),
            ("JM_SIDECAR_ALLOW_CIDRS", "127.0.0.1/32, 10.0.0.0/8"),
            ("JM_RUNTIMES", r#"[{"name":"a","command":["x"],"parallelism":3}]"#),
            ("JM_KUBERNETES_POD_LABELS", r#"{"team":"x"}"#),
        ],
        &[],
    )
    .unwrap();
    let c = &v.config;
    assert_eq!(c.poll.interval_ms, 250);
    assert!(c.broker_api_proxy_self_signed_cert && c.network_health_check_disabled);
    assert_eq!(c.sidecar.allow_cidrs, vec!["127.0.0.1/32", "10.0.0.0/8"]);
    assert_eq!(c.runtimes.len(), 1);
    assert_eq!((c.runtimes[0].name.as_str(), c.runtimes[0].parallelism), ("a", 3));
    assert_eq!(c.kubernetes.pod_labels.get("team").map(String::as_str), Some("x"));
}

#[test]
fn bad_env_value_names_the_variable() {
    let err = rule_of(load_valid(MINIMAL, &[("JM_CHECK_TIMEOUT", "soon")], &[]));
    assert!(err.contains("JM_CHECK_TIMEOUT") && err.contains("must be a number"), "{err}");
    let err = rule_of(load_valid(MINIMAL, &[("JM_NETWORK_HEALTH_CHECK_DISABLED", "maybe")], &[]));
    assert!(err.contains("JM_NETWORK_HEALTH_CHECK_DISABLED"), "{err}");
}

#[test]
fn unknown_flag_setting_is_refused() {
    let err = rule_of(load_valid(MINIMAL, &[], &[FlagOverride::new("checkTimeOut", "5")]));
    assert!(err.contains("checkTimeOut") && err.contains("no such setting"), "{err}");
}

#[test]
fn file_errors_name_the_file() {
    let f = file("checkTimeOut: 5\n");
    let err = load(Some(f.path()), &env(&[]), &[]).unwrap_err();
    assert_eq!(err.label(), "parse_file");
    assert!(err.to_string().contains("unknown field `checkTimeOut`"), "{err}");
    let err = load(Some(std::path::Path::new("/nonexistent/jm.yaml")), &env(&[]), &[]).unwrap_err();
    assert_eq!(err.label(), "read_file");
}

#[test]
fn config_file_from_flag_or_env() {
    let e = env(&[("JM_CONFIG_FILE", "/from/env.yaml")]);
    assert_eq!(config_file_path(None, &e).unwrap(), std::path::PathBuf::from("/from/env.yaml"));
    assert_eq!(
        config_file_path(Some(std::path::Path::new("/flag.yaml")), &e).unwrap(),
        std::path::PathBuf::from("/flag.yaml")
    );
    assert!(config_file_path(None, &env(&[])).is_none());
}

#[test]
fn validation_rules_table() {
    // (case name, config file, env, text the error must contain)
    type Case<'a> = (&'a str, &'a str, &'a [(&'a str, &'a str)], &'a str);
    let cases: &[Case<'_>] = &[
        ("timeout zero", MINIMAL, &[("JM_CHECK_TIMEOUT", "0")], "checkTimeout"),
        ("timeout too big", MINIMAL, &[("JM_CHECK_TIMEOUT", "901")], "between 1 and 900"),
        ("location key required", "runtimes: [{name: rt, command: [x]}]\n", &[], "locationKey"),
        (
            "endpoint not a url",
            MINIMAL,
            &[("JM_BROKER_API_ENDPOINT", "ftp://x"), ("JM_LOCATION_KEY", "k")],
            "brokerApiEndpoint",
        ),
        ("log level", MINIMAL, &[("JM_LOG_LEVEL", "VERBOSE")], "logLevel"),
        (
            "udv json not object",
            MINIMAL,
            &[("JM_USER_DEFINED_VARIABLES_USER_DEFINED_JSON", "[1]")],
            "must be a JSON object",
        ),
        ("udv json broken", MINIMAL, &[("JM_USER_DEFINED_VARIABLES_USER_DEFINED_JSON", "{")], "userDefinedJson"),
        (
            "udv file missing",
            MINIMAL,
            &[("JM_USER_DEFINED_VARIABLES_USER_DEFINED_FILE", "/nonexistent.json")],
            "userDefinedFile",
        ),
        (
            "udv path escapes",
            MINIMAL,
            &[("JM_USER_DEFINED_VARIABLES_USER_DEFINED_PATH", "../x.json")],
            "userDefinedPath",
        ),
        ("no runtimes", "brokerApiEndpoint: embedded\n", &[], "at least one enabled runtime"),
        (
            "dup runtimes",
            "brokerApiEndpoint: embedded\nruntimes: [{name: a, command: [x]}, {name: a, command: [x]}]\n",
            &[],
            "unique",
        ),
        ("bad runtime name", "brokerApiEndpoint: embedded\nruntimes: [{name: A_b, command: [x]}]\n", &[], "DNS label"),
        ("local needs command", "brokerApiEndpoint: embedded\nruntimes: [{name: a}]\n", &[], "command"),
        (
            "zero parallelism",
            "brokerApiEndpoint: embedded\nruntimes: [{name: a, command: [x], parallelism: 0}]\n",
            &[],
            "parallelism",
        ),
        ("listen", MINIMAL, &[("JM_LISTEN", "localhost")], "listen"),
        ("poll interval", MINIMAL, &[("JM_POLL_INTERVAL_MS", "1")], "poll.intervalMs"),
        ("batch size", MINIMAL, &[("JM_POLL_BATCH_SIZE", "0")], "poll.batchSize"),
        ("proxy port", MINIMAL, &[("JM_API_PROXY_HOST", "proxy")], "apiProxyPort"),
        ("proxy user without host", MINIMAL, &[("JM_BROKER_API_PROXY_USERNAME", "u")], "apiProxyHost"),
        (
            "proxy pw without user",
            MINIMAL,
            &[("JM_API_PROXY_HOST", "p"), ("JM_API_PROXY_PORT", "3128"), ("JM_BROKER_API_PROXY_PW", "x")],
            "brokerApiProxyUsername",
        ),
        ("cidr", MINIMAL, &[("JM_SIDECAR_DENY_CIDRS", "10.0.0.0/33")], "sidecar.denyCidrs"),
        (
            "bypass without upstream proxy",
            MINIMAL,
            &[("JM_SIDECAR_UPSTREAM_PROXY_BYPASS", ".svc.cluster.local")],
            "sidecar.upstreamProxyBypass",
        ),
        (
            "forward unresolved without upstream proxy",
            MINIMAL,
            &[("JM_SIDECAR_UPSTREAM_PROXY_UNRESOLVED", "forward")],
            "sidecar.upstreamProxyUnresolved",
        ),
        (
            "unresolved not refuse or forward",
            MINIMAL,
            &[("JM_SIDECAR_UPSTREAM_PROXY_UNRESOLVED", "maybe")],
            "expected `refuse` or `forward`",
        ),
        ("k8s needs key", MINIMAL, &[("JM_EXECUTOR", "kubernetes")], "internalApiKey"),
        ("sidecar off", MINIMAL, &[("JM_SIDECAR_ENABLED", "false")], "use sidecar.reportOnly: true"),
        (
            "k8s needs the key's secret name",
            "brokerApiEndpoint: embedded\nexecutor: kubernetes\ninternalApiKey: k\nruntimes: [{name: a, image: {repository: rt}}]\n",
            &[],
            "kubernetes.internalApiKeySecretName",
        ),
        (
            "k8s runtime image without repository",
            "brokerApiEndpoint: embedded\nexecutor: kubernetes\ninternalApiKey: k\nruntimes: [{name: a}]\nkubernetes: {internalApiKeySecretName: s}\n",
            &[],
            "runtimes[0].image (a): repository is required with the kubernetes executor (got an empty one: the image would be `:latest`)",
        ),
        (
            "k8s sidecar image without repository",
            "brokerApiEndpoint: embedded\nexecutor: kubernetes\ninternalApiKey: k\nruntimes: [{name: a, image: {repository: rt}}]\nkubernetes: {internalApiKeySecretName: s}\nsidecar: {image: {repository: ''}}\n",
            &[],
            "`sidecar.image.repository`",
        ),
        (
            "k8s image repository with a tag in it",
            "brokerApiEndpoint: embedded\nexecutor: kubernetes\ninternalApiKey: k\nruntimes: [{name: a, image: {repository: ':latest'}}]\nkubernetes: {internalApiKeySecretName: s}\n",
            &[],
            "is not an image repository",
        ),
        (
            "k8s image digest malformed",
            "brokerApiEndpoint: embedded\nexecutor: kubernetes\ninternalApiKey: k\nruntimes: [{name: a, image: {repository: rt, digest: 'sha256:xyz'}}]\nkubernetes: {internalApiKeySecretName: s}\n",
            &[],
            "is not an image digest",
        ),
        (
            "priority class name",
            "brokerApiEndpoint: embedded\nruntimes: [{name: a, command: [x]}]\nkubernetes: {priorityClassName: High_Priority}\n",
            &[],
            "is not a PriorityClass name",
        ),
        (
            "udv path missing on the volume",
            MINIMAL,
            &[("JM_USER_DEFINED_VARIABLES_USER_DEFINED_PATH", "vars"), ("JM_KUBERNETES_PERSISTENCE_MOUNT_PATH", "/nonexistent")],
            "cannot read /nonexistent/vars",
        ),
        (
            "sidecar and runtime share a UID",
            "brokerApiEndpoint: embedded\nruntimes: [{name: a, command: [x]}]\nkubernetes: {securityContext: {runAsUser: 1001}}\n",
            &[],
            "the sidecar and the runtime both run as UID 1001; they must differ",
        ),
        (
            "shared UID through the pod's context",
            "brokerApiEndpoint: embedded\nruntimes: [{name: a, command: [x]}]\nkubernetes: {podSecurityContext: {runAsUser: 7}, securityContext: {}, runtimeSecurityContext: {}}\n",
            &[],
            "both run as UID 7",
        ),
        (
            "shared UID refused even with the firewall off",
            "brokerApiEndpoint: embedded\nruntimes: [{name: a, command: [x]}]\nkubernetes: {egressFirewall: {enabled: false}, runtimeSecurityContext: {runAsUser: 1002}}\n",
            &[],
            "both run as UID 1002",
        ),
        (
            "firewall needs the sidecar UID",
            "brokerApiEndpoint: embedded\nruntimes: [{name: a, command: [x]}]\nkubernetes: {podSecurityContext: {}, securityContext: {}}\n",
            &[],
            "must be set (in the sidecar's or the pod's security context)",
        ),
        (
            "firewall refuses a root sidecar",
            "brokerApiEndpoint: embedded\nruntimes: [{name: a, command: [x]}]\nkubernetes: {securityContext: {runAsUser: 0}}\n",
            &[],
            "must be a non-root UID",
        ),
        (
            "firewall needs the runtime UID",
            "brokerApiEndpoint: embedded\nruntimes: [{name: a, command: [x]}]\nkubernetes: {podSecurityContext: {}, securityContext: {runAsUser: 5}, runtimeSecurityContext: {}}\n",
            &[],
            "kubernetes.runtimeSecurityContext.runAsUser",
        ),
        (
            "deny cidr",
            "brokerApiEndpoint: embedded\nruntimes: [{name: a, command: [x]}]\nkubernetes: {networkPolicy: {enabled: true, denyCidrs: [10.0.0.0/8, nodes]}}\n",
            &[],
            "kubernetes.networkPolicy.denyCidrs",
        ),
        (
            "deny everything is not an except",
            "brokerApiEndpoint: embedded\nruntimes: [{name: a, command: [x]}]\nkubernetes: {networkPolicy: {denyCidrs: [0.0.0.0/0]}}\n",
            &[],
            "non-zero prefix",
        ),
        (
            "runtime class",
            "brokerApiEndpoint: embedded\nruntimes: [{name: a, command: [x], runtimeClassName: Kata_1}]\n",
            &[],
            "RuntimeClass",
        ),
    ];
    for (name, yaml, e, expect) in cases {
        let err = rule_of(load_valid(yaml, e, &[]));
        assert!(err.contains(expect), "case {name}: {err}");
    }
}

#[test]
fn firewall_off_with_image_users_is_accepted() {
    // Without the firewall, UIDs left to the images are the operator's call.
    let yaml = "brokerApiEndpoint: embedded\nruntimes: [{name: a, command: [x], runtimeClassName: gvisor}]\n\
                kubernetes: {egressFirewall: {enabled: false}, podSecurityContext: {}, securityContext: {}, runtimeSecurityContext: {}, runtimeClassName: kata.v2}\n";
    let v = load_valid(yaml, &[], &[]).unwrap();
    assert!(!v.config.kubernetes.egress_firewall.enabled);
    assert_eq!(v.config.kubernetes.runtime_class_name, "kata.v2");
}

#[test]
fn udv_sources_and_jvm_opts_warning() {
    let mut f = tempfile::Builder::new().prefix("jm-udv-").suffix(".json").tempfile().unwrap();
    f.write_all(br#"{"A":"1"}"#).unwrap();
    let path = f.path().to_path_buf();
    let v = load_valid(
        MINIMAL,
        &[("JM_USER_DEFINED_VARIABLES_USER_DEFINED_FILE", path.to_str().unwrap()), ("JM_JVM_OPTS", "-Xmx1g")],
        &[],
    )
    .unwrap();
    f.close().unwrap();
    assert_eq!(v.user_defined_variables.get("A").and_then(|v| v.as_str()), Some("1"));
    assert!(v.warnings.iter().any(|w| w.contains("jvmOpts")), "{:?}", v.warnings);
    let v = load_valid(MINIMAL, &[("JM_USER_DEFINED_VARIABLES_USER_DEFINED_JSON", r#"{"k":2}"#)], &[]).unwrap();
    assert_eq!(v.user_defined_variables.get("k"), Some(&serde_json::json!(2)));
    let err = rule_of(load_valid(
        MINIMAL,
        &[
            ("JM_USER_DEFINED_VARIABLES_USER_DEFINED_JSON", "{}"),
            ("JM_USER_DEFINED_VARIABLES_USER_DEFINED_PATH", "a.json"),
        ],
        &[],
    ));
    assert!(err.contains("only one"), "{err}");
}

/// One setting for the largest result: bounded, from the file or `JM_MAX_RESULT_BYTES`,
/// and the same number reaches the result API's body limit and every sidecar's
/// `SIDECAR_MAX_BODY_BYTES`, so a result a sidecar accepts is one the job manager takes.
#[test]
fn max_result_bytes_is_bounded_and_is_the_limit_on_both_sides() {
    let v = load_valid(MINIMAL, &[], &[]).unwrap();
    assert_eq!(v.config.max_result_bytes, 1024 * 1024, "default: the broker API's body limit");
    let v = load_valid(MINIMAL, &[("JM_MAX_RESULT_BYTES", "4194304")], &[]).unwrap();
    assert_eq!(v.config.max_result_bytes, 4 * 1024 * 1024);
    assert_eq!(crate::results::api::ServerLimits::from(&v.config).max_body_bytes, 4 * 1024 * 1024);
    let env: BTreeMap<_, _> = crate::backend::sidecar_env::sidecar_policy_env(&v.config).into_iter().collect();
    assert_eq!(env[common::runtime_api::sidecar_env::MAX_BODY_BYTES], "4194304");
    for (bad, got) in [("maxResultBytes: 1000", "1000"), ("maxResultBytes: 16777217", "16777217")] {
        assert_eq!(
            rule_of(load_valid(&format!("{MINIMAL}{bad}\n"), &[], &[])),
            format!(
                "invalid setting `maxResultBytes` (JM_MAX_RESULT_BYTES): must be between 1048576 (the broker API's body limit) and 16777216, got {got}"
            )
        );
    }
}

#[test]
fn every_listed_env_name_can_be_set_and_sets_its_key() {
    let table = settings_table();
    assert!(table.iter().any(|(k, _, _)| k == "kubernetes.jobManagerPodLabels"), "maps are listed whole");
    for (key, env_var, default) in &table {
        assert!(
            env_var.len() > 3 && env_var.bytes().all(|b| b.is_ascii_uppercase() || b.is_ascii_digit() || b == b'_'),
            "{key}: {env_var:?} is not a name a shell or a pod spec can set"
        );
        assert!(key.split('.').all(|seg| !seg.is_empty() && seg.chars().all(|c| c.is_ascii_alphanumeric())), "{key}");
        // The printed name is the one loading reads: setting it to its own default
        // (JSON as printed) loads, and the flag of the same key is accepted too.
        let raw = serde_json::from_str::<serde_json::Value>(default)
            .ok()
            .and_then(|v| v.as_str().map(str::to_string))
            .unwrap_or_else(|| default.clone());
        let from_env = load(None, &env(&[(env_var.as_str(), raw.as_str())]), &[]);
        assert!(from_env.is_ok(), "{env_var}={raw}: {from_env:?}");
        assert_eq!(from_env.unwrap(), Config::default(), "{env_var}={raw} must round-trip");
        assert!(load(None, &env(&[]), &[FlagOverride::new(key.as_str(), raw.as_str())]).is_ok(), "--set {key}");
    }
}

#[test]
fn a_map_of_labels_is_set_whole_from_its_env_name() {
    let c = load(
        None,
        &env(&[("JM_KUBERNETES_JOB_MANAGER_POD_LABELS", r#"{"app.kubernetes.io/component": "jm", "tier": "x"}"#)]),
        &[],
    )
    .unwrap();
    assert_eq!(
        c.kubernetes.job_manager_pod_labels,
        BTreeMap::from([("app.kubernetes.io/component".into(), "jm".into()), ("tier".into(), "x".into())])
    );
    let f = file("kubernetes: {nodeSelector: {pool: a}}\n");
    let c = load(Some(f.path()), &env(&[("JM_KUBERNETES_NODE_SELECTOR", "{pool: b}")]), &[]).unwrap();
    assert_eq!(c.kubernetes.node_selector, BTreeMap::from([("pool".into(), "b".into())]));
}

#[test]
fn user_defined_path_is_read_from_the_data_volume_as_a_file_or_a_directory() {
    let data = tempfile::TempDir::new().unwrap();
    std::fs::create_dir(data.path().join("variables")).unwrap();
    std::fs::write(data.path().join("variables/user_defined_variables.json"), r#"{"FROM": "dir"}"#).unwrap();
    std::fs::write(data.path().join("mine.json"), r#"{"FROM": "file"}"#).unwrap();
    let mount = data.path().display().to_string();
    for (path, expected) in [("variables", "dir"), ("variables/", "dir"), ("mine.json", "file")] {
        let v = load_valid(
            MINIMAL,
            &[("JM_USER_DEFINED_VARIABLES_USER_DEFINED_PATH", path), ("JM_KUBERNETES_PERSISTENCE_MOUNT_PATH", &mount)],
            &[],
        )
        .unwrap();
        assert_eq!(v.user_defined_variables.get("FROM"), Some(&serde_json::json!(expected)), "{path}");
    }
    std::fs::write(data.path().join("list.json"), "[1]").unwrap();
    let err = rule_of(load_valid(
        MINIMAL,
        &[
            ("JM_USER_DEFINED_VARIABLES_USER_DEFINED_PATH", "list.json"),
            ("JM_KUBERNETES_PERSISTENCE_MOUNT_PATH", &mount),
        ],
        &[],
    ));
    assert!(err.contains("userDefinedPath") && err.contains("must be a JSON object"), "{err}");
}

#[test]
fn completions_is_accepted_with_a_warning_naming_the_runtime() {
    let v = load_valid(MINIMAL, &[], &[]).unwrap();
    assert!(!v.warnings.iter().any(|w| w.contains("completions")), "{:?}", v.warnings);
    let v =
        load_valid("brokerApiEndpoint: embedded\nruntimes: [{name: rt, command: [x], completions: 12}]\n", &[], &[])
            .unwrap();
    assert!(
        v.warnings.iter().any(|w| w.contains("completions (rt: 12) is accepted for chart compatibility and ignored")),
        "{:?}",
        v.warnings
    );
}

#[test]
fn printed_config_hides_every_secret_and_reparses() {
    let v = load_valid(
        MINIMAL,
        &[
            ("JM_LOCATION_KEY", "loc-secret"),
            ("JM_VSE_PASSPHRASE", "vse-secret"),
            ("JM_INTERNAL_API_KEY", "internal-secret"),
            ("JM_TOKEN_SIGNING_KEY", "signing-secret"),
            ("JM_API_PROXY_HOST", "proxy"),
            ("JM_API_PROXY_PORT", "3128"),
            ("JM_BROKER_API_PROXY_USERNAME", "u"),
            ("JM_BROKER_API_PROXY_PW", "pw-secret"),
            ("JM_SIDECAR_UPSTREAM_PROXY", "http://u:up-secret@proxy:3128"),
            ("JM_POLL_INTERVAL_MS", "1234"),
        ],
        &[],
    )
    .unwrap();
    let text = redacted_yaml(&v.config);
    assert!(!text.contains("secret"), "{text}");
    let back = parse_file(&text).unwrap();
    assert_eq!(back.poll.interval_ms, 1234);
    assert_eq!(back.location_key, "<redacted>");
    assert_eq!(back.vse_passphrase, "<redacted>");
    assert_eq!(back.broker_api_proxy_username, "u", "not a secret");
}
