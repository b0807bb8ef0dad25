//! Security-critical fields and decisions, asserted one by one (the whole-object
//! comparisons live in `job-manager/tests/kubernetes_translate.rs`).
use super::*;
use crate::backend::kubernetes::labels;
use crate::config::model::{Config, ImageSettings, RuntimeConfig};
use common::runtime_api::sidecar_env;
use common::Job;
use k8s_openapi::api::core::v1 as core;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use std::collections::BTreeMap;
use std::time::{Duration, UNIX_EPOCH};

fn config() -> Config {
    let mut c = Config {
        runtimes: vec![
            RuntimeConfig { name: "node-api-runtime".into(), ..RuntimeConfig::default() },
            RuntimeConfig { name: "browser".into(), workload: Workload::Persistent, ..RuntimeConfig::default() },
        ],
        ..Config::default()
    };
    c.kubernetes.internal_api_key_secret_name = "jm-internal".into();
    c
}

fn job(runtime: &str) -> Job {
    serde_json::from_value(serde_json::json!({"id": "job-1", "runtime_type": runtime, "timeout_secs": 60})).unwrap()
}

fn deadline() -> SystemTime {
    UNIX_EPOCH + Duration::from_secs(1_800_000_000)
}

fn objects(c: &Config) -> EphemeralObjects {
    ephemeral_objects(&job("node-api-runtime"), "tok-123", deadline(), &TranslateSettings::from(c), "ns").unwrap()
}

fn pod(o: &EphemeralObjects) -> core::PodSpec {
    o.job.spec.clone().unwrap().template.spec.unwrap()
}

#[test]
fn no_service_account_token_and_no_service_links() {
    let p = pod(&objects(&config()));
    assert_eq!(p.automount_service_account_token, Some(false));
    assert_eq!(p.enable_service_links, Some(false));
    assert_eq!(p.restart_policy.as_deref(), Some("Never"));
}

#[test]
fn token_and_key_reach_the_sidecar_only() {
    let o = objects(&config());
    let p = pod(&o);
    let sidecar = &p.init_containers.as_ref().unwrap()[1];
    let runtime = &p.containers[0];
    assert_eq!(sidecar.name, "sidecar");
    assert_eq!(runtime.name, "runtime");
    // The spool is the sidecar's; the runtime mounts nothing of it.
    for m in runtime.volume_mounts.iter().flatten() {
        assert_ne!(m.name, labels::SPOOL_VOLUME);
    }
    // No process namespace sharing: the runtime cannot read the sidecar's env.
    assert_eq!(p.share_process_namespace, Some(false));
    // The key: a secretKeyRef on the sidecar, absent from the runtime.
    let key = sidecar.env.as_ref().unwrap().iter().find(|e| e.name == sidecar_env::INTERNAL_API_KEY).unwrap();
    assert!(key.value.is_none());
    let r = key.value_from.as_ref().unwrap().secret_key_ref.as_ref().unwrap();
    assert_eq!((r.name.as_str(), r.key.as_str()), ("jm-internal", "internalApiKey"));
    let runtime_env_text = serde_json::to_string(&runtime.env).unwrap();
    assert!(!runtime_env_text.contains("jm-internal"), "{runtime_env_text}");
    assert!(!runtime_env_text.contains("SIDECAR_"), "{runtime_env_text}");
    assert!(!runtime_env_text.contains("tok-123"), "{runtime_env_text}");
    assert!(runtime.env_from.is_none());
    // The token: a literal env var on the sidecar container, the only place it appears
    // in the pod template; the record carries the payload, never the token.
    let sidecar_env_of = |name: &str| sidecar.env.as_ref().unwrap().iter().find(|e| e.name == name).cloned();
    assert_eq!(sidecar_env_of(sidecar_env::JOB_TOKEN).and_then(|e| e.value).as_deref(), Some("tok-123"));
    assert_eq!(sidecar_env_of(sidecar_env::JOB_ID).and_then(|e| e.value).as_deref(), Some("job-1"));
    assert!(sidecar_env_of(sidecar_env::JOB_DIR).is_none());
    let template = o.job.spec.as_ref().unwrap().template.clone();
    let mut without_sidecar_env = template.clone();
    without_sidecar_env.spec.as_mut().unwrap().init_containers.as_mut().unwrap()[1].env = None;
    let rest = serde_json::to_string(&without_sidecar_env).unwrap();
    assert!(!rest.contains("tok-123"), "{rest}");
    assert!(!serde_json::to_string(&o.record).unwrap().contains("tok-123"));
    // The sidecar fetches the job from the job manager, which reads it off the record.
    assert_eq!(o.record.handed_job().unwrap(), job("node-api-runtime"));
}

#[test]
fn hardened_defaults() {
    let p = pod(&objects(&config()));
    let psc = p.security_context.unwrap();
    assert_eq!((psc.run_as_non_root, psc.run_as_user, psc.fs_group), (Some(true), Some(1001), Some(1001)));
    assert_eq!(psc.seccomp_profile.unwrap().type_, "RuntimeDefault");
    let sidecar = &p.init_containers.as_ref().unwrap()[1];
    assert_eq!(sidecar.name, labels::SIDECAR_CONTAINER);
    for (c, uid, read_only) in [(sidecar, 1002, true), (&p.containers[0], 1001, false)] {
        let sc = c.security_context.clone().unwrap();
        assert_eq!(sc.allow_privilege_escalation, Some(false), "{}", c.name);
        assert_eq!(sc.privileged, Some(false));
        assert_eq!(sc.run_as_non_root, Some(true));
        assert_eq!(sc.run_as_user, Some(uid));
        assert_eq!(sc.capabilities.unwrap().drop, Some(vec!["ALL".to_string()]));
        assert_eq!(sc.read_only_root_filesystem, Some(read_only), "{}", c.name);
    }
}

#[test]
fn native_sidecar_gates_the_runtime() {
    let p = pod(&objects(&config()));
    let sidecar = &p.init_containers.as_ref().unwrap()[1];
    assert_eq!(sidecar.name, labels::SIDECAR_CONTAINER);
    assert_eq!(sidecar.restart_policy.as_deref(), Some("Always"));
    let probe = sidecar.startup_probe.as_ref().unwrap().http_get.as_ref().unwrap();
    assert_eq!(probe.path.as_deref(), Some("/readyz"));
    assert_eq!(probe.port, IntOrString::String("admin".into()));
    let admin = sidecar.ports.as_ref().unwrap().iter().find(|p| p.name.as_deref() == Some("admin")).unwrap();
    assert_eq!(admin.container_port, 9901);
    let runtime_env: BTreeMap<_, _> =
        p.containers[0].env.as_ref().unwrap().iter().map(|e| (e.name.as_str(), e.value.clone().unwrap())).collect();
    assert_eq!(runtime_env["HTTP_PROXY"], "http://127.0.0.1:3128");
    assert_eq!(runtime_env["HTTPS_PROXY"], "http://127.0.0.1:3128");
    assert_eq!(runtime_env["JOB_API_URL"], "http://127.0.0.1:3128");
    assert_eq!(runtime_env["NO_PROXY"], "");
}

#[test]
fn deadline_is_clamped_to_check_timeout() {
    let mut c = config();
    c.check_timeout = 30;
    let o = objects(&c);
    assert_eq!(o.job.spec.as_ref().unwrap().active_deadline_seconds, Some(30));
    c.check_timeout = 900;
    let o = objects(&c);
    assert_eq!(o.job.spec.as_ref().unwrap().active_deadline_seconds, Some(60));
    let mut j = job("node-api-runtime");
    j.timeout_secs = 0;
    let o = ephemeral_objects(&j, "t", deadline(), &TranslateSettings::from(&c), "ns").unwrap();
    assert_eq!(o.job.spec.unwrap().active_deadline_seconds, Some(1));
}

#[test]
fn errors_name_the_problem() {
    let c = config();
    let err = |runtime: &str, c: &Config, ns: &str| {
        ephemeral_objects(&job(runtime), "t", deadline(), &TranslateSettings::from(c), ns).unwrap_err()
    };
    assert_eq!(err("nope", &c, "ns"), TranslateError::UnknownRuntime("nope".into()));
    assert_eq!(err("browser", &c, "ns").label(), "wrong_workload");
    assert_eq!(err("node-api-runtime", &c, ""), TranslateError::MissingNamespace);
    let mut disabled = c.clone();
    disabled.runtimes[0].enabled = false;
    assert_eq!(err("node-api-runtime", &disabled, "ns").label(), "runtime_disabled");
    let mut no_key = c.clone();
    no_key.kubernetes.internal_api_key_secret_name.clear();
    assert_eq!(err("node-api-runtime", &no_key, "ns"), TranslateError::MissingInternalKeySecret);
    let mut sneaky = c.clone();
    sneaky.kubernetes.extra_env.insert("HTTPS_PROXY".into(), "http://elsewhere:1".into());
    assert_eq!(err("node-api-runtime", &sneaky, "ns"), TranslateError::ReservedEnv("HTTPS_PROXY".into()));
    let mut sneaky_runtime = c.clone();
    sneaky_runtime.runtimes[0].extra_env.insert("no_proxy".into(), "*".into());
    assert_eq!(err("node-api-runtime", &sneaky_runtime, "ns").label(), "reserved_env");
    assert_eq!(
        persistent_objects("node-api-runtime", &TranslateSettings::from(&c), "ns").unwrap_err().label(),
        "wrong_workload"
    );
}

#[test]
fn owner_references_point_at_the_record() {
    let o = objects(&config()).owned_by("uid-1");
    {
        let r = &o.job.metadata.owner_references.as_ref().unwrap()[0];
        assert_eq!((r.kind.as_str(), r.name.as_str(), r.uid.as_str()), ("JobRecord", "jm-job-1", "uid-1"));
        assert_eq!(r.api_version, "jobs.jobmanager.dev/v1");
        assert_eq!(r.controller, Some(true));
    }
    assert!(o.record.metadata.owner_references.is_none());
}

#[test]
fn labels_win_over_configured_pod_labels() {
    let mut c = config();
    c.kubernetes.pod_labels.insert(labels::MANAGED_BY.into(), "someone-else".into());
    c.kubernetes.pod_labels.insert("team".into(), "a".into());
    c.kubernetes.pod_annotations.insert(labels::JOB_ID_ANNOTATION.into(), "spoof".into());
    let o = objects(&c);
    let meta = o.job.spec.unwrap().template.metadata.unwrap();
    let pod_labels = meta.labels.unwrap();
    assert_eq!(pod_labels[labels::MANAGED_BY], "job-manager");
    assert_eq!(pod_labels["team"], "a");
    assert_eq!(pod_labels[labels::RUNTIME_TYPE], "node-api-runtime");
    assert_eq!(meta.annotations.unwrap()[labels::JOB_ID_ANNOTATION], "job-1");
}

#[test]
fn image_references() {
    let img = |repo: &str, tag: &str| ImageSettings {
        repository: repo.into(),
        tag: tag.into(),
        pull_policy: String::new(),
        digest: String::new(),
    };
    assert_eq!(image_ref("", &img("a/b", "1")), "a/b:1");
    assert_eq!(image_ref("reg.io/", &img("a/b", "1")), "reg.io/a/b:1");
    assert_eq!(image_ref("reg.io", &img("a/b", "")), "reg.io/a/b");
    assert_eq!(image_ref("", &img("a/b@sha256:00", "latest")), "a/b@sha256:00");
}

#[test]
fn network_policy_blocks_metadata_and_api_servers() {
    let mut c = config();
    c.sidecar.api_server_addresses =
        vec!["10.0.0.1".into(), "10.0.0.2:6443".into(), "[fd00::1]:443".into(), "api.internal".into()];
    let np = runtime_network_policy(&TranslateSettings::from(&c), "ns");
    let except = |np: &k8s_openapi::api::networking::v1::NetworkPolicy, cidr: &str| -> Vec<String> {
        let rules = np.spec.clone().unwrap().egress.unwrap();
        let peers = rules.into_iter().flat_map(|r| r.to.unwrap_or_default());
        let block = peers.filter_map(|p| p.ip_block).find(|b| b.cidr == cidr).expect("the catch-all block");
        block.except.unwrap_or_default()
    };
    let v4 = except(&np, "0.0.0.0/0");
    let v6 = except(&np, "::/0");
    // Every metadata address of the major clouds, and the configured API servers.
    for cidr in ["169.254.0.0/16", "100.100.100.200/32", "168.63.129.16/32", "10.0.0.1/32", "10.0.0.2/32"] {
        assert!(v4.contains(&cidr.to_string()), "{cidr} missing: {v4:?}");
    }
    for cidr in ["fe80::/10", "fd00:ec2::254/128", "fd00:ec2::23/128", "fd20:ce::254/128", "fd00:c1::a9fe:a9fe/128"] {
        assert!(v6.contains(&cidr.to_string()), "{cidr} missing: {v6:?}");
    }
    assert!(v6.contains(&"fd00::1/128".to_string()), "{v6:?}");
    assert!(v4.iter().all(|c| !c.contains(':')) && v6.iter().all(|c| c.contains(':')), "{v4:?} {v6:?}");
    c.kubernetes.restrict_metadata_service = false;
    c.sidecar.api_server_addresses.clear();
    let text = serde_json::to_string(&runtime_network_policy(&TranslateSettings::from(&c), "ns")).unwrap();
    assert!(!text.contains("169.254"), "{text}");
    assert!(!text.contains("fd00:ec2::254"), "{text}");
    assert!(!text.contains("except"), "{text}");
}

#[test]
fn network_policy_deny_cidrs_are_excepted_in_canonical_form() {
    let mut c = config();
    c.kubernetes.restrict_metadata_service = false;
    c.kubernetes.network_policy.deny_cidrs =
        vec!["10.128.7.9/16".into(), "fd00:1:2::5/48".into(), "10.128.0.0/16".into()];
    let np = runtime_network_policy(&TranslateSettings::from(&c), "ns");
    let blocks: Vec<_> = np
        .spec
        .unwrap()
        .egress
        .unwrap()
        .into_iter()
        .flat_map(|r| r.to.unwrap_or_default())
        .filter_map(|p| p.ip_block)
        .collect();
    let except = |cidr: &str| blocks.iter().find(|b| b.cidr == cidr).unwrap().except.clone().unwrap_or_default();
    assert_eq!(except("0.0.0.0/0"), vec!["10.128.0.0/16".to_string()], "canonical and deduplicated");
    assert_eq!(except("::/0"), vec!["fd00:1:2::/48".to_string()]);
}

fn egress_init(p: &core::PodSpec) -> Option<core::Container> {
    p.init_containers.clone().unwrap().into_iter().find(|c| c.name == labels::EGRESS_INIT_CONTAINER)
}

#[test]
fn egress_init_runs_first_as_root_with_net_admin_only_and_allows_the_sidecar_uid() {
    let p = pod(&objects(&config()));
    let inits = p.init_containers.clone().unwrap();
    assert_eq!(inits[0].name, labels::EGRESS_INIT_CONTAINER, "before the sidecar: nothing sends before the firewall");
    assert_eq!(inits[1].name, labels::SIDECAR_CONTAINER);
    let init = &inits[0];
    assert_eq!(init.restart_policy, None, "a plain init container: it must finish before the sidecar starts");
    assert_eq!(init.image, inits[1].image, "shipped in the sidecar image");
    assert_eq!(init.args.clone().unwrap(), vec!["egress-init", "--proxy-uid", "1002"]);
    let ctx = init.security_context.clone().unwrap();
    let caps = ctx.capabilities.unwrap();
    assert_eq!(caps.add, Some(vec!["NET_ADMIN".to_string()]));
    assert_eq!(caps.drop, Some(vec!["ALL".to_string()]));
    assert_eq!((ctx.run_as_user, ctx.run_as_non_root), (Some(0), Some(false)));
    assert_eq!(ctx.allow_privilege_escalation, Some(false));
    assert_eq!(ctx.privileged, Some(false));
    assert_eq!(ctx.read_only_root_filesystem, Some(true));
    assert_eq!(ctx.seccomp_profile.unwrap().type_, "RuntimeDefault");
    assert!(init.env.is_none() && init.volume_mounts.is_none(), "no secrets, no volumes");
    // The sidecar and the runtime keep nothing but their own UIDs, which differ.
    let sidecar = inits[1].security_context.clone().unwrap();
    let runtime = p.containers[0].security_context.clone().unwrap();
    assert_eq!((sidecar.run_as_user, runtime.run_as_user), (Some(1002), Some(1001)));
    for ctx in [sidecar, runtime] {
        assert_eq!(ctx.capabilities.unwrap().add, None);
    }
}

#[test]
fn egress_init_follows_the_configured_sidecar_uid_and_goes_when_disabled() {
    let mut c = config();
    c.kubernetes.security_context = Some(core::SecurityContext { run_as_user: Some(4242), ..Default::default() });
    let init = egress_init(&pod(&objects(&c))).unwrap();
    assert_eq!(init.args.unwrap()[2], "4242");
    // A sidecar context without runAsUser takes the pod's.
    c.kubernetes.security_context = Some(core::SecurityContext::default());
    c.kubernetes.runtime_security_context =
        Some(core::SecurityContext { run_as_user: Some(1001), ..Default::default() });
    c.kubernetes.pod_security_context =
        Some(core::PodSecurityContext { run_as_user: Some(3000), ..Default::default() });
    assert_eq!(egress_init(&pod(&objects(&c))).unwrap().args.unwrap()[2], "3000");
    c.kubernetes.egress_firewall.enabled = false;
    assert!(egress_init(&pod(&objects(&c))).is_none());
}

#[test]
fn translation_refuses_a_firewall_that_would_let_the_runtime_out() {
    let mut c = config();
    for (sidecar, runtime) in [(Some(1001), Some(1001)), (Some(0), Some(1001)), (None, Some(1001))] {
        c.kubernetes.pod_security_context = Some(core::PodSecurityContext::default());
        c.kubernetes.security_context = Some(core::SecurityContext { run_as_user: sidecar, ..Default::default() });
        c.kubernetes.runtime_security_context =
            Some(core::SecurityContext { run_as_user: runtime, ..Default::default() });
        let err = ephemeral_objects(&job("node-api-runtime"), "t", deadline(), &TranslateSettings::from(&c), "ns")
            .unwrap_err();
        assert!(matches!(err, TranslateError::FirewallUids), "{sidecar:?}/{runtime:?}: {err}");
    }
}

#[test]
fn runtime_class_global_and_per_runtime() {
    let mut c = config();
    assert_eq!(pod(&objects(&c)).runtime_class_name, None);
    c.kubernetes.runtime_class_name = "gvisor".into();
    assert_eq!(pod(&objects(&c)).runtime_class_name.as_deref(), Some("gvisor"));
    c.runtimes[0].runtime_class_name = "kata".into();
    assert_eq!(pod(&objects(&c)).runtime_class_name.as_deref(), Some("kata"));
}

#[test]
fn runtime_scratch_at_tmp_lets_the_root_filesystem_be_read_only() {
    let mut c = config();
    c.kubernetes.runtime_security_context = Some(core::SecurityContext {
        read_only_root_filesystem: Some(true),
        run_as_user: Some(1001),
        ..Default::default()
    });
    let p = pod(&objects(&c));
    let runtime = &p.containers[0];
    let tmp = runtime.volume_mounts.iter().flatten().find(|m| m.mount_path == "/tmp").expect("a /tmp mount");
    let volume = p.volumes.unwrap().into_iter().find(|v| v.name == tmp.name).unwrap();
    assert!(volume.empty_dir.is_some(), "{volume:?}");
    assert_eq!(runtime.security_context.clone().unwrap().read_only_root_filesystem, Some(true));
}

#[test]
fn runtimes_get_a_memory_backed_dev_shm() {
    let p = pod(&objects(&config()));
    let runtime = &p.containers[0];
    let shm = runtime.volume_mounts.iter().flatten().find(|m| m.mount_path == "/dev/shm").expect("a /dev/shm mount");
    let volume = p.volumes.unwrap().into_iter().find(|v| v.name == shm.name).unwrap();
    assert_eq!(volume.empty_dir.and_then(|e| e.medium).as_deref(), Some("Memory"));
}

#[test]
fn sidecars_call_and_the_network_policy_opens_the_port_the_job_manager_listens_on() {
    let job_manager_port = |c: &Config| -> (String, Vec<IntOrString>) {
        let sidecar = pod(&objects(c)).init_containers.unwrap().into_iter().find(|c| c.name == "sidecar").unwrap();
        let url = sidecar.env.unwrap().into_iter().find(|e| e.name == sidecar_env::JOB_MANAGER_URL).unwrap();
        let np = runtime_network_policy(&TranslateSettings::from(c), "ns");
        let to_job_manager = np.spec.unwrap().egress.unwrap().into_iter().filter_map(|r| {
            let to_pods = r.to.as_ref()?.iter().any(|p| p.pod_selector.is_some());
            to_pods.then(|| r.ports.unwrap_or_default().into_iter().filter_map(|p| p.port).collect::<Vec<_>>())
        });
        (url.value.unwrap(), to_job_manager.flatten().collect())
    };
    let mut c = config();
    assert_eq!(job_manager_port(&c), ("http://job-manager.ns.svc:8080".to_string(), vec![IntOrString::Int(8080)]));
    c.listen = "0.0.0.0:9090".into();
    assert_eq!(job_manager_port(&c), ("http://job-manager.ns.svc:9090".to_string(), vec![IntOrString::Int(9090)]));
}

#[test]
fn retired_persistent_workloads_are_those_no_longer_wanted() {
    let mut c = config();
    c.runtimes.push(RuntimeConfig {
        name: "off".into(),
        workload: Workload::Persistent,
        enabled: false,
        ..RuntimeConfig::default()
    });
    let browser = labels::persistent_name("browser");
    let existing = [browser.as_str(), "jm-rt-removed", "jm-rt-off", "jm-rt-node-api-runtime", "jm-rt-removed"];
    // Still configured, enabled and persistent: kept. Removed, disabled, or now ephemeral: retired.
    assert_eq!(
        retired_persistent_workloads(existing, &TranslateSettings::from(&c)),
        ["jm-rt-node-api-runtime", "jm-rt-off", "jm-rt-removed"].map(String::from)
    );
    assert!(retired_persistent_workloads([browser.as_str()], &TranslateSettings::from(&c)).is_empty());
}

#[test]
fn user_defined_variables_reach_the_runtime_as_json() {
    let runtime_env = |settings: &TranslateSettings| {
        let o = ephemeral_objects(&job("node-api-runtime"), "t", deadline(), settings, "ns").unwrap();
        let env = pod(&o).containers[0].env.clone().unwrap();
        env.into_iter().find(|e| e.name == "USER_DEFINED_VARIABLES").and_then(|e| e.value).unwrap()
    };
    // None configured: an empty object, never an empty string.
    assert_eq!(runtime_env(&TranslateSettings::from(&config())), "{}");
    // Merged ones (JSON, file and path, as validation merges them) win over the raw field.
    let mut c = config();
    c.user_defined_variables.user_defined_json = r#"{"RAW": 1}"#.into();
    let merged = serde_json::from_str(r#"{"KEY": "v"}"#).unwrap();
    assert_eq!(runtime_env(&TranslateSettings::new(&c, &merged)), r#"{"KEY":"v"}"#);
}

#[test]
fn a_runtime_types_scheduling_annotations_and_security_context_reach_its_pods_only() {
    let toleration = |key: &str| core::Toleration {
        key: Some(key.into()),
        operator: Some("Exists".into()),
        effect: Some("NoSchedule".into()),
        ..core::Toleration::default()
    };
    let affinity = |pool: &str| core::Affinity {
        node_affinity: Some(core::NodeAffinity {
            required_during_scheduling_ignored_during_execution: Some(core::NodeSelector {
                node_selector_terms: vec![core::NodeSelectorTerm {
                    match_expressions: Some(vec![core::NodeSelectorRequirement {
                        key: "pool".into(),
                        operator: "In".into(),
                        values: Some(vec![pool.into()]),
                    }]),
                    match_fields: None,
                }],
            }),
            preferred_during_scheduling_ignored_during_execution: None,
        }),
        ..core::Affinity::default()
    };
    let mut c = config();
    c.kubernetes.node_selector = BTreeMap::from([("pool".into(), "all".into()), ("zone".into(), "a".into())]);
    c.kubernetes.tolerations = vec![toleration("shared")];
    c.kubernetes.affinity = Some(affinity("all"));
    c.kubernetes.pod_annotations = BTreeMap::from([("team".into(), "all".into()), ("cost".into(), "x".into())]);
    let rt = &mut c.runtimes[0];
    rt.node_selector = BTreeMap::from([("pool".into(), "api".into())]);
    rt.tolerations = vec![toleration("api-only")];
    rt.affinity = Some(affinity("api"));
    rt.pod_annotations = BTreeMap::from([("team".into(), "api".into())]);
    rt.security_context = Some(core::SecurityContext {
        run_as_user: Some(3000),
        read_only_root_filesystem: Some(true),
        ..core::SecurityContext::default()
    });

    let o = objects(&c);
    let p = pod(&o);
    assert_eq!(
        p.node_selector,
        Some(BTreeMap::from([("pool".into(), "api".into()), ("zone".into(), "a".into())])),
        "the runtime's key wins, the others stay"
    );
    assert_eq!(p.tolerations, Some(vec![toleration("shared"), toleration("api-only")]));
    assert_eq!(p.affinity, Some(affinity("api")));
    let annotations = o.job.spec.as_ref().unwrap().template.metadata.as_ref().unwrap().annotations.clone().unwrap();
    assert_eq!((annotations["team"].as_str(), annotations["cost"].as_str()), ("api", "x"));
    let runtime = &p.containers[0];
    assert_eq!(runtime.security_context.as_ref().unwrap().run_as_user, Some(3000));
    // The firewall still lets only the sidecar out, and knows the runtime's own UID.
    let init = &p.init_containers.as_ref().unwrap()[0];
    assert_eq!(init.args.as_ref().unwrap(), &["egress-init", "--proxy-uid", "1002"]);

    // The persistent type keeps the pod-wide settings.
    let s = TranslateSettings::from(&c);
    let d = persistent_objects("browser", &s, "ns").unwrap().deployment;
    let bp = d.spec.as_ref().unwrap().template.spec.clone().unwrap();
    assert_eq!(bp.node_selector.unwrap()["pool"], "all");
    assert_eq!(bp.tolerations.unwrap(), vec![toleration("shared")]);
    assert_eq!(bp.affinity, Some(affinity("all")));
    let bp_annotations = d.spec.unwrap().template.metadata.unwrap().annotations.unwrap();
    assert_eq!(bp_annotations["team"], "all");
    assert_eq!(bp.containers[0].security_context.as_ref().unwrap().run_as_user, Some(1001));
}

#[test]
fn a_runtime_type_running_as_the_sidecars_uid_is_refused() {
    let mut c = config();
    c.location_key = "k".into();
    c.runtimes[0].command = vec!["x".into()];
    c.runtimes[1].command = vec!["x".into()];
    c.runtimes[1].security_context = Some(core::SecurityContext { run_as_user: Some(1002), ..Default::default() });
    let err = crate::config::validate(c).unwrap_err().to_string();
    assert!(
        err.contains("the sidecar and the runtime (browser: runtimes[].securityContext) both run as UID 1002"),
        "{err}"
    );
}

#[test]
fn a_digest_pins_the_image_and_wins_over_the_tag() {
    let digest = format!("sha256:{}", "a".repeat(64));
    let mut c = config();
    c.kubernetes.image_registry = "registry.example.com/".into();
    c.runtimes[0].image = ImageSettings {
        repository: "team/runtime".into(),
        tag: "1.2.3".into(),
        digest: digest.clone(),
        ..ImageSettings::default()
    };
    c.sidecar.image.digest = digest.clone();
    let p = pod(&objects(&c));
    assert_eq!(p.containers[0].image.as_deref(), Some(format!("registry.example.com/team/runtime@{digest}").as_str()));
    for init in p.init_containers.unwrap() {
        assert_eq!(init.image.unwrap(), format!("registry.example.com/newrelic/serverless-sidecar@{digest}"));
    }
    c.runtimes[0].image.digest.clear();
    assert_eq!(pod(&objects(&c)).containers[0].image.as_deref(), Some("registry.example.com/team/runtime:1.2.3"));
}

#[test]
fn priority_class_and_topology_spread_reach_runtime_pods() {
    let spread = core::TopologySpreadConstraint {
        max_skew: 1,
        topology_key: "topology.kubernetes.io/zone".into(),
        when_unsatisfiable: "ScheduleAnyway".into(),
        ..core::TopologySpreadConstraint::default()
    };
    let mut c = config();
    assert_eq!(pod(&objects(&c)).priority_class_name, None);
    c.kubernetes.priority_class_name = "jobs-low".into();
    c.kubernetes.topology_spread_constraints = vec![spread.clone()];
    let p = pod(&objects(&c));
    assert_eq!(p.priority_class_name.as_deref(), Some("jobs-low"));
    assert_eq!(p.topology_spread_constraints, Some(vec![spread.clone()]));
    let d = persistent_objects("browser", &TranslateSettings::from(&c), "ns").unwrap().deployment;
    let dp = d.spec.unwrap().template.spec.unwrap();
    assert_eq!(
        (dp.priority_class_name.as_deref(), dp.topology_spread_constraints),
        (Some("jobs-low"), Some(vec![spread]))
    );
}

#[test]
fn a_runtime_ca_bundle_is_mounted_and_named_to_node() {
    let mut c = config();
    assert!(pod(&objects(&c)).containers[0].env.as_ref().unwrap().iter().all(|e| e.name != "NODE_EXTRA_CA_CERTS"));
    c.kubernetes.runtime_ca_bundle.config_map_name = "corp-ca".into();
    let p = pod(&objects(&c));
    let runtime = &p.containers[0];
    let env: BTreeMap<_, _> = runtime.env.iter().flatten().map(|e| (e.name.clone(), e.value.clone())).collect();
    assert_eq!(env["NODE_EXTRA_CA_CERTS"].as_deref(), Some("/etc/job-manager/runtime-ca/ca.crt"));
    let mount = runtime.volume_mounts.iter().flatten().find(|m| m.name == "runtime-ca").expect("mounted");
    assert_eq!((mount.mount_path.as_str(), mount.read_only), ("/etc/job-manager/runtime-ca", Some(true)));
    let volume = p.volumes.unwrap().into_iter().find(|v| v.name == "runtime-ca").unwrap();
    assert_eq!(volume.config_map.unwrap().name, "corp-ca");
    // Only the runtime gets it; extra env may not point Node elsewhere.
    assert!(p.init_containers.unwrap().iter().all(|i| i
        .volume_mounts
        .iter()
        .flatten()
        .all(|m| m.name != "runtime-ca")));
    c.kubernetes.extra_env.insert("NODE_EXTRA_CA_CERTS".into(), "/tmp/mine.pem".into());
    let err =
        ephemeral_objects(&job("node-api-runtime"), "t", deadline(), &TranslateSettings::from(&c), "ns").unwrap_err();
    assert_eq!(err.label(), "reserved_env");
}
