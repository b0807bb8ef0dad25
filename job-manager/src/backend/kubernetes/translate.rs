//! Pure translation: job + config -> the Kubernetes objects the job manager creates.
//! No client in here; the executor does the I/O around it, tests compare whole objects.
//!
//! Ephemeral job = [`JobRecord`] (created first) and `batch/v1` Job, both named
//! [`labels::object_name`]. The record owns the Job (see [`EphemeralObjects::owned_by`]),
//! so one delete removes everything and a half-failed creation leaves at most a record
//! without a Job, which pruning removes. The record also carries the payload; the pod
//! gets only the job id and the single-use token, as literal env vars on the sidecar
//! container (the runtime container cannot read another container's env: the pod does
//! not share its process namespace and mounts no service-account token). The sidecar
//! fetches the job from the job manager with the token. Two objects instead of a record,
//! a Secret and a Job: one API write less per job (the budget is four: two
//! creates, the result, the record's delete).
//!
//! Seed 000's `parallelism`/`completions`: an execution is ONE pod, so every Job has
//! `parallelism: 1, completions: 1`. `runtimes[].parallelism` is how many jobs of the type
//! one replica runs at once (the dispatcher's capacity); `completions` ("jobs expected per
//! minute x parallelism") only informs capacity planning and is not emitted.
//!
//! `activeDeadlineSeconds` is the job's timeout clamped to `1..=checkTimeout`: the cluster
//! kills a runaway pod even if every job-manager replica is gone; pruning then reports it.
use crate::backend::kubernetes::labels;
use crate::backend::kubernetes::record::{JobRecord, JobRecordSpec, RecordWorkload};
use crate::config::model::{Config, ImageSettings, RuntimeConfig, Workload};
use common::runtime_api::{runtime_env, sidecar_env};
use common::{Job, JobId};
use k8s_openapi::api::apps::v1 as apps;
use k8s_openapi::api::autoscaling::v2 as autoscaling;
use k8s_openapi::api::batch::v1 as batch;
use k8s_openapi::api::core::v1 as core;
use k8s_openapi::api::networking::v1 as networking;
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta, OwnerReference, Time};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use std::collections::BTreeMap;
use std::time::SystemTime;

/// The job-manager Service port sidecars call (CONTRACTS.md, "Ports").
pub const JOB_MANAGER_SERVICE_PORT: u16 = 8080;
/// Key of the internal API key in `kubernetes.internalApiKeySecretName`.
pub const INTERNAL_API_KEY_SECRET_KEY: &str = "internalApiKey";
/// Cloud metadata endpoint blocked by the runtime NetworkPolicy.
pub const METADATA_CIDR: &str = "169.254.169.254/32";

/// Env names the job manager sets on the runtime container; extra env may not override
/// them (that would let configuration route the runtime around its sidecar).
const RESERVED_RUNTIME_ENV: [&str; 8] = [
    runtime_env::JOB_API_URL,
    runtime_env::HTTP_PROXY,
    runtime_env::HTTPS_PROXY,
    runtime_env::NO_PROXY,
    "http_proxy",
    "https_proxy",
    "no_proxy",
    runtime_env::USER_DEFINED_VARIABLES,
];

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TranslateError {
    #[error("no runtime type {0:?} is configured")]
    UnknownRuntime(String),
    #[error("runtime type {0:?} is disabled")]
    RuntimeDisabled(String),
    #[error("runtime type {runtime:?} is configured as {configured}, not {wanted}")]
    WrongWorkload { runtime: String, configured: &'static str, wanted: &'static str },
    #[error("kubernetes.internalApiKeySecretName is required: sidecars read the internal API key from it")]
    MissingInternalKeySecret,
    #[error("a namespace is required (config `namespace` or the pod's namespace)")]
    MissingNamespace,
    #[error("extra env may not override {0} (the job manager sets it to keep the runtime behind its sidecar)")]
    ReservedEnv(String),
    #[error("the deadline {0:?} is not representable")]
    BadDeadline(SystemTime),
    #[error("the job cannot be serialized: {0}")]
    Serialize(String),
}

impl TranslateError {
    pub fn label(&self) -> &'static str {
        match self {
            TranslateError::UnknownRuntime(_) => "unknown_runtime",
            TranslateError::RuntimeDisabled(_) => "runtime_disabled",
            TranslateError::WrongWorkload { .. } => "wrong_workload",
            TranslateError::MissingInternalKeySecret => "missing_internal_key_secret",
            TranslateError::MissingNamespace => "missing_namespace",
            TranslateError::ReservedEnv(_) => "reserved_env",
            TranslateError::BadDeadline(_) => "bad_deadline",
            TranslateError::Serialize(_) => "serialize",
        }
    }
}

/// Everything created for one ephemeral job, in creation order.
#[derive(Debug, Clone, PartialEq)]
pub struct EphemeralObjects {
    pub record: JobRecord,
    pub job: batch::Job,
}

impl EphemeralObjects {
    /// Make the record the controller owner of the Job (its uid is known once
    /// it was created). `blockOwnerDeletion` stays unset: it would need `update` on
    /// `jobrecords/finalizers`, and background deletion is all pruning needs.
    pub fn owned_by(mut self, record_uid: &str) -> Self {
        let owner = OwnerReference {
            api_version: format!(
                "{}/{}",
                crate::backend::kubernetes::record::GROUP,
                crate::backend::kubernetes::record::VERSION
            ),
            kind: "JobRecord".into(),
            name: self.record.metadata.name.clone().unwrap_or_default(),
            uid: record_uid.to_string(),
            controller: Some(true),
            block_owner_deletion: None,
        };
        self.job.metadata.owner_references = Some(vec![owner]);
        self
    }
}

/// Everything created once per persistent runtime type (by the `service-setup` holder).
#[derive(Debug, Clone, PartialEq)]
pub struct PersistentObjects {
    pub deployment: apps::Deployment,
    pub service: core::Service,
    pub hpa: autoscaling::HorizontalPodAutoscaler,
}

/// The objects for one ephemeral job. `token` goes into the sidecar container's env only.
pub fn ephemeral_objects(
    job: &Job,
    token: &str,
    deadline: SystemTime,
    config: &Config,
    namespace: &str,
) -> Result<EphemeralObjects, TranslateError> {
    let runtime = runtime_for(config, &job.runtime_type, Workload::Ephemeral)?;
    check_common(config, namespace)?;
    let name = labels::object_name(&job.id);
    let object_labels = labels::job_labels(&job.id, &runtime.name);
    let annotations = BTreeMap::from([(labels::JOB_ID_ANNOTATION.to_string(), job.id.to_string())]);
    let meta = ObjectMeta {
        name: Some(name.clone()),
        namespace: Some(namespace.to_string()),
        labels: Some(object_labels.clone()),
        annotations: Some(annotations.clone()),
        ..ObjectMeta::default()
    };

    let record = JobRecord {
        metadata: meta.clone(),
        spec: JobRecordSpec {
            job_id: job.id.to_string(),
            runtime_type: job.runtime_type.clone(),
            workload: RecordWorkload::Ephemeral,
            deadline: deadline_time(deadline)?,
            attempt: job.attempt,
            timeout_secs: job.timeout_secs,
            payload_json: if job.payload.is_null() { String::new() } else { job.payload.to_string() },
        },
        status: None,
    };

    let mut pod_labels = config.kubernetes.pod_labels.clone();
    pod_labels.extend(object_labels);
    let mut pod_annotations = config.kubernetes.pod_annotations.clone();
    pod_annotations.extend(annotations);
    let pod = PodInputs { runtime, config, namespace, mode: PodMode::Ephemeral { job_id: &job.id, token } };
    let active_deadline = i64::from(job.timeout_secs.clamp(1, config.check_timeout.max(1)));
    let k8s_job = batch::Job {
        metadata: meta,
        spec: Some(batch::JobSpec {
            backoff_limit: Some(config.kubernetes.job.backoff_limit),
            ttl_seconds_after_finished: Some(config.kubernetes.job.ttl_seconds_after_finished),
            active_deadline_seconds: Some(active_deadline),
            parallelism: Some(1),
            completions: Some(1),
            template: core::PodTemplateSpec {
                metadata: Some(ObjectMeta {
                    labels: Some(pod_labels),
                    annotations: Some(pod_annotations),
                    ..ObjectMeta::default()
                }),
                spec: Some(pod_spec(&pod)?),
            },
            ..batch::JobSpec::default()
        }),
        status: None,
    };
    Ok(EphemeralObjects { record, job: k8s_job })
}

/// The record of one job dispatched to a persistent runtime: the durable row its result
/// lands in (and the deadline pruning enforces). Nothing else is created per job.
pub fn persistent_record(
    job: &Job,
    deadline: SystemTime,
    config: &Config,
    namespace: &str,
) -> Result<JobRecord, TranslateError> {
    let runtime = runtime_for(config, &job.runtime_type, Workload::Persistent)?;
    check_common(config, namespace)?;
    let mut record_labels = labels::runtime_labels(&runtime.name, "persistent");
    record_labels.insert(labels::JOB_LABEL.to_string(), labels::object_name(&job.id));
    Ok(JobRecord {
        metadata: ObjectMeta {
            name: Some(labels::object_name(&job.id)),
            namespace: Some(namespace.to_string()),
            labels: Some(record_labels),
            annotations: Some(BTreeMap::from([(labels::JOB_ID_ANNOTATION.to_string(), job.id.to_string())])),
            ..ObjectMeta::default()
        },
        spec: JobRecordSpec {
            job_id: job.id.to_string(),
            runtime_type: job.runtime_type.clone(),
            workload: RecordWorkload::Persistent,
            deadline: deadline_time(deadline)?,
            attempt: job.attempt,
            // Persistent jobs travel to the runtime in the dispatch request.
            timeout_secs: 0,
            payload_json: String::new(),
        },
        status: None,
    })
}

fn deadline_time(deadline: SystemTime) -> Result<Time, TranslateError> {
    Ok(Time(k8s_openapi::jiff::Timestamp::try_from(deadline).map_err(|_| TranslateError::BadDeadline(deadline))?))
}

/// The Deployment + Service + HPA of one persistent runtime type.
/// The persistent workloads (Deployment, Service and HPA share the name) among `existing`
/// that no enabled persistent runtime type of `config` wants any more: removed from the
/// config, disabled, or turned ephemeral. The `service-setup` holder deletes them, so a
/// runtime type taken out of the values does not keep pods running.
pub fn retired_persistent_workloads<'a>(existing: impl IntoIterator<Item = &'a str>, config: &Config) -> Vec<String> {
    let wanted: std::collections::BTreeSet<String> = config
        .runtimes
        .iter()
        .filter(|r| r.enabled && r.workload == Workload::Persistent)
        .map(|r| labels::persistent_name(&r.name))
        .collect();
    let mut retired: Vec<String> = existing.into_iter().filter(|n| !wanted.contains(*n)).map(str::to_string).collect();
    retired.sort();
    retired.dedup();
    retired
}

pub fn persistent_objects(
    runtime_type: &str,
    config: &Config,
    namespace: &str,
) -> Result<PersistentObjects, TranslateError> {
    let runtime = runtime_for(config, runtime_type, Workload::Persistent)?;
    check_common(config, namespace)?;
    let name = labels::persistent_name(&runtime.name);
    let selector = labels::runtime_labels(&runtime.name, "persistent");
    let meta = ObjectMeta {
        name: Some(name.clone()),
        namespace: Some(namespace.to_string()),
        labels: Some(selector.clone()),
        ..ObjectMeta::default()
    };
    let mut pod_labels = config.kubernetes.pod_labels.clone();
    pod_labels.extend(selector.clone());
    let pod_annotations = config.kubernetes.pod_annotations.clone();
    let pod = PodInputs { runtime, config, namespace, mode: PodMode::Persistent };
    let deployment = apps::Deployment {
        metadata: meta.clone(),
        spec: Some(apps::DeploymentSpec {
            // `replicas` is left to the HPA: applying it would fight the autoscaler.
            selector: LabelSelector { match_labels: Some(selector.clone()), match_expressions: None },
            template: core::PodTemplateSpec {
                metadata: Some(ObjectMeta {
                    labels: Some(pod_labels),
                    annotations: (!pod_annotations.is_empty()).then_some(pod_annotations),
                    ..ObjectMeta::default()
                }),
                spec: Some(pod_spec(&pod)?),
            },
            ..apps::DeploymentSpec::default()
        }),
        status: None,
    };
    let service = core::Service {
        metadata: meta.clone(),
        spec: Some(core::ServiceSpec {
            type_: Some("ClusterIP".into()),
            selector: Some(selector),
            ports: Some(vec![core::ServicePort {
                name: Some("ingress".into()),
                port: i32::from(config.sidecar.ingress_port),
                target_port: Some(IntOrString::String("ingress".into())),
                protocol: Some("TCP".into()),
                ..core::ServicePort::default()
            }]),
            ..core::ServiceSpec::default()
        }),
        status: None,
    };
    let utilization = |resource: &str, percent: u32| autoscaling::MetricSpec {
        type_: "Resource".into(),
        resource: Some(autoscaling::ResourceMetricSource {
            name: resource.into(),
            target: autoscaling::MetricTarget {
                type_: "Utilization".into(),
                average_utilization: Some(percent as i32),
                ..autoscaling::MetricTarget::default()
            },
        }),
        ..autoscaling::MetricSpec::default()
    };
    let bounds = &runtime.replicas;
    let hpa = autoscaling::HorizontalPodAutoscaler {
        metadata: meta,
        spec: Some(autoscaling::HorizontalPodAutoscalerSpec {
            scale_target_ref: autoscaling::CrossVersionObjectReference {
                api_version: Some("apps/v1".into()),
                kind: "Deployment".into(),
                name,
            },
            min_replicas: Some(bounds.min.max(1) as i32),
            max_replicas: bounds.max.max(bounds.min.max(1)) as i32,
            metrics: Some(vec![
                utilization("cpu", bounds.target_cpu_utilization),
                utilization("memory", bounds.target_memory_utilization),
            ]),
            behavior: None,
        }),
        status: None,
    };
    Ok(PersistentObjects { deployment, service, hpa })
}

/// The runtime NetworkPolicy: runtime pods accept ingress only from job-manager pods (on
/// the sidecar's ingress port), and may reach DNS, the job manager, and anything else
/// except cloud metadata (when `restrictMetadataService`) and the API server addresses.
/// Finer egress policy (private ranges, hosts) is the sidecar's job.
pub fn runtime_network_policy(config: &Config, namespace: &str) -> networking::NetworkPolicy {
    let runtime_pods = LabelSelector {
        match_labels: Some(BTreeMap::from([
            (labels::MANAGED_BY.to_string(), labels::MANAGED_BY_VALUE.to_string()),
            (labels::COMPONENT.to_string(), labels::COMPONENT_RUNTIME.to_string()),
        ])),
        match_expressions: None,
    };
    let job_manager_pods =
        LabelSelector { match_labels: Some(config.kubernetes.job_manager_pod_labels.clone()), match_expressions: None };
    let tcp = |port: u16| networking::NetworkPolicyPort {
        port: Some(IntOrString::Int(i32::from(port))),
        protocol: Some("TCP".into()),
        end_port: None,
    };
    let (mut except_v4, mut except_v6) = (Vec::new(), Vec::new());
    if config.kubernetes.restrict_metadata_service {
        except_v4.push(METADATA_CIDR.to_string());
    }
    for address in &config.sidecar.api_server_addresses {
        match api_server_ip(address) {
            Some(std::net::IpAddr::V4(ip)) => except_v4.push(format!("{ip}/32")),
            Some(std::net::IpAddr::V6(ip)) => except_v6.push(format!("{ip}/128")),
            None => {} // a host name: only the sidecar can refuse it (it resolves names)
        }
    }
    except_v4.dedup();
    except_v6.dedup();
    let block = |cidr: &str, except: Vec<String>| networking::NetworkPolicyPeer {
        ip_block: Some(networking::IPBlock { cidr: cidr.into(), except: (!except.is_empty()).then_some(except) }),
        ..networking::NetworkPolicyPeer::default()
    };
    networking::NetworkPolicy {
        metadata: ObjectMeta {
            name: Some(labels::RUNTIME_NETWORK_POLICY_NAME.into()),
            namespace: Some(namespace.to_string()),
            labels: Some(BTreeMap::from([
                (labels::MANAGED_BY.to_string(), labels::MANAGED_BY_VALUE.to_string()),
                (labels::COMPONENT.to_string(), labels::COMPONENT_RUNTIME_NETWORK_POLICY.to_string()),
            ])),
            ..ObjectMeta::default()
        },
        spec: Some(networking::NetworkPolicySpec {
            pod_selector: Some(runtime_pods),
            policy_types: Some(vec!["Ingress".into(), "Egress".into()]),
            ingress: Some(vec![networking::NetworkPolicyIngressRule {
                from: Some(vec![networking::NetworkPolicyPeer {
                    pod_selector: Some(job_manager_pods.clone()),
                    ..networking::NetworkPolicyPeer::default()
                }]),
                ports: Some(vec![tcp(config.sidecar.ingress_port)]),
            }]),
            egress: Some(vec![
                networking::NetworkPolicyEgressRule {
                    to: None,
                    ports: Some(vec![
                        networking::NetworkPolicyPort {
                            port: Some(IntOrString::Int(53)),
                            protocol: Some("UDP".into()),
                            end_port: None,
                        },
                        tcp(53),
                    ]),
                },
                networking::NetworkPolicyEgressRule {
                    to: Some(vec![networking::NetworkPolicyPeer {
                        pod_selector: Some(job_manager_pods),
                        ..networking::NetworkPolicyPeer::default()
                    }]),
                    ports: Some(vec![tcp(JOB_MANAGER_SERVICE_PORT)]),
                },
                networking::NetworkPolicyEgressRule {
                    to: Some(vec![block("0.0.0.0/0", except_v4), block("::/0", except_v6)]),
                    ports: None,
                },
            ]),
        }),
    }
}

/// `ip` or `ip:port` or `[v6]:port` -> the IP; `None` for host names.
fn api_server_ip(address: &str) -> Option<std::net::IpAddr> {
    let trimmed = address.trim();
    if let Ok(ip) = trimmed.parse() {
        return Some(ip);
    }
    if let Ok(sa) = trimmed.parse::<std::net::SocketAddr>() {
        return Some(sa.ip());
    }
    trimmed.split('/').next().and_then(|s| s.parse().ok())
}

/// Full image reference: `[imageRegistry/]repository[:tag]`.
pub fn image_ref(registry: &str, image: &ImageSettings) -> String {
    let registry = registry.trim_end_matches('/');
    let mut out =
        if registry.is_empty() { image.repository.clone() } else { format!("{registry}/{}", image.repository) };
    if !image.tag.is_empty() && !image.repository.contains('@') {
        out.push(':');
        out.push_str(&image.tag);
    }
    out
}

fn runtime_for<'a>(
    config: &'a Config,
    runtime_type: &str,
    wanted: Workload,
) -> Result<&'a RuntimeConfig, TranslateError> {
    let runtime = config
        .runtimes
        .iter()
        .find(|r| r.name == runtime_type)
        .ok_or_else(|| TranslateError::UnknownRuntime(runtime_type.to_string()))?;
    if !runtime.enabled {
        return Err(TranslateError::RuntimeDisabled(runtime.name.clone()));
    }
    if runtime.workload != wanted {
        return Err(TranslateError::WrongWorkload {
            runtime: runtime.name.clone(),
            configured: workload_name(&runtime.workload),
            wanted: workload_name(&wanted),
        });
    }
    Ok(runtime)
}

fn workload_name(w: &Workload) -> &'static str {
    match w {
        Workload::Ephemeral => "ephemeral",
        Workload::Persistent => "persistent",
    }
}

fn check_common(config: &Config, namespace: &str) -> Result<(), TranslateError> {
    if namespace.is_empty() {
        return Err(TranslateError::MissingNamespace);
    }
    if config.kubernetes.internal_api_key_secret_name.is_empty() {
        return Err(TranslateError::MissingInternalKeySecret);
    }
    Ok(())
}

enum PodMode<'a> {
    Ephemeral { job_id: &'a JobId, token: &'a str },
    Persistent,
}

struct PodInputs<'a> {
    runtime: &'a RuntimeConfig,
    config: &'a Config,
    namespace: &'a str,
    mode: PodMode<'a>,
}

fn pod_spec(p: &PodInputs<'_>) -> Result<core::PodSpec, TranslateError> {
    let k = &p.config.kubernetes;
    let mut init_containers = vec![sidecar_container(p)];
    // Extra sidecars run as native sidecars too: as plain containers they would keep a
    // Job's pod alive after the runtime exits.
    init_containers.extend(k.sidecars.iter().cloned().map(|mut c| {
        c.restart_policy.get_or_insert_with(|| "Always".into());
        c
    }));

    let mut volumes = Vec::new();
    volumes.push(core::Volume {
        name: labels::SPOOL_VOLUME.into(),
        empty_dir: Some(core::EmptyDirVolumeSource::default()),
        ..core::Volume::default()
    });
    volumes.push(data_volume(p.config));
    volumes.extend(k.extra_volumes.iter().cloned());

    let mut pull_secrets: Vec<core::LocalObjectReference> = Vec::new();
    for s in k.image_pull_secrets.iter().chain(&p.runtime.image_pull_secrets) {
        if !pull_secrets.contains(s) {
            pull_secrets.push(s.clone());
        }
    }

    Ok(core::PodSpec {
        restart_policy: Some(match p.mode {
            PodMode::Ephemeral { .. } => "Never".into(),
            PodMode::Persistent => "Always".into(),
        }),
        // Runtime pods never talk to the API server.
        automount_service_account_token: Some(false),
        service_account_name: (!k.runtime_service_account.is_empty()).then(|| k.runtime_service_account.clone()),
        // Service env vars would tell the runtime where every Service in the namespace is.
        enable_service_links: Some(false),
        // Explicit: with a shared process namespace the runtime could read the sidecar's
        // env (`/proc/<pid>/environ`), which holds the job token.
        share_process_namespace: Some(false),
        termination_grace_period_seconds: Some(k.termination_grace_period_seconds),
        security_context: Some(k.pod_security_context.clone().unwrap_or_else(default_pod_security_context)),
        node_selector: (!k.node_selector.is_empty()).then(|| k.node_selector.clone()),
        tolerations: (!k.tolerations.is_empty()).then(|| k.tolerations.clone()),
        affinity: k.affinity.clone(),
        image_pull_secrets: (!pull_secrets.is_empty()).then_some(pull_secrets),
        init_containers: Some(init_containers),
        containers: vec![runtime_container(p)?],
        volumes: Some(volumes),
        ..core::PodSpec::default()
    })
}

fn data_volume(config: &Config) -> core::Volume {
    let persistence = &config.kubernetes.persistence;
    let mut volume = core::Volume { name: labels::DATA_VOLUME.into(), ..core::Volume::default() };
    if persistence.existing_claim_name.is_empty() {
        volume.empty_dir = Some(core::EmptyDirVolumeSource {
            size_limit: (!persistence.empty_dir_size_limit.is_empty())
                .then(|| Quantity(persistence.empty_dir_size_limit.clone())),
            medium: None,
        });
    } else {
        volume.persistent_volume_claim = Some(core::PersistentVolumeClaimVolumeSource {
            claim_name: persistence.existing_claim_name.clone(),
            read_only: None,
        });
    }
    volume
}

fn env(name: &str, value: impl Into<String>) -> core::EnvVar {
    core::EnvVar { name: name.into(), value: Some(value.into()), value_from: None }
}

fn sidecar_container(p: &PodInputs<'_>) -> core::Container {
    let c = p.config;
    let s = &c.sidecar;
    let mut envs = vec![
        env(sidecar_env::LISTEN, format!("127.0.0.1:{}", s.port)),
        env(sidecar_env::ADMIN_LISTEN, format!("0.0.0.0:{}", s.admin_port)),
        env(
            sidecar_env::JOB_MANAGER_URL,
            format!("http://{}.{}.svc:{JOB_MANAGER_SERVICE_PORT}", c.hostname_override, p.namespace),
        ),
        core::EnvVar {
            name: sidecar_env::INTERNAL_API_KEY.into(),
            value: None,
            value_from: Some(core::EnvVarSource {
                secret_key_ref: Some(core::SecretKeySelector {
                    name: c.kubernetes.internal_api_key_secret_name.clone(),
                    key: INTERNAL_API_KEY_SECRET_KEY.into(),
                    optional: Some(false),
                }),
                ..core::EnvVarSource::default()
            }),
        },
        env(sidecar_env::SPOOL_DIR, labels::SPOOL_MOUNT),
    ];
    let mut mounts = Vec::new();
    let mut ports = vec![
        core::ContainerPort { name: Some("proxy".into()), container_port: i32::from(s.port), ..Default::default() },
        core::ContainerPort {
            name: Some("admin".into()),
            container_port: i32::from(s.admin_port),
            ..Default::default()
        },
    ];
    match p.mode {
        PodMode::Ephemeral { job_id, token } => {
            envs.push(env(sidecar_env::JOB_ID, job_id.as_str()));
            envs.push(env(sidecar_env::JOB_TOKEN, token));
        }
        PodMode::Persistent => {
            envs.push(env(sidecar_env::INGRESS_LISTEN, format!("0.0.0.0:{}", s.ingress_port)));
            envs.push(env(sidecar_env::INGRESS_UPSTREAM, format!("127.0.0.1:{}", p.runtime.port)));
            ports.push(core::ContainerPort {
                name: Some("ingress".into()),
                container_port: i32::from(s.ingress_port),
                ..Default::default()
            });
        }
    }
    // Policy, upstream proxy (on the sidecar only: the runtime never sees upstream
    // credentials) and logging: the same mapping the local executor uses.
    envs.extend(crate::config::model::sidecar_policy_env(c).into_iter().map(|(k, v)| env(&k, v)));
    mounts.push(core::VolumeMount {
        name: labels::SPOOL_VOLUME.into(),
        mount_path: labels::SPOOL_MOUNT.into(),
        ..core::VolumeMount::default()
    });

    core::Container {
        name: labels::SIDECAR_CONTAINER.into(),
        image: Some(image_ref(&c.kubernetes.image_registry, &s.image)),
        image_pull_policy: non_empty(&s.image.pull_policy),
        // A native sidecar: starts before the runtime, runs beside it, and is stopped
        // after it, so a Job completes when the runtime exits.
        restart_policy: Some("Always".into()),
        ports: Some(ports),
        env: Some(envs),
        // The runtime starts only once the proxy answers: no egress before policy applies.
        startup_probe: Some(core::Probe {
            http_get: Some(core::HTTPGetAction {
                path: Some("/readyz".into()),
                port: IntOrString::String("admin".into()),
                ..core::HTTPGetAction::default()
            }),
            period_seconds: Some(1),
            failure_threshold: Some(30),
            timeout_seconds: Some(1),
            ..core::Probe::default()
        }),
        resources: Some(s.resources.clone().unwrap_or_else(default_sidecar_resources)),
        security_context: Some(c.kubernetes.security_context.clone().unwrap_or_else(|| default_security_context(true))),
        volume_mounts: Some(mounts),
        ..core::Container::default()
    }
}

fn runtime_container(p: &PodInputs<'_>) -> Result<core::Container, TranslateError> {
    let c = p.config;
    let k = &c.kubernetes;
    let proxy = format!("http://127.0.0.1:{}", c.sidecar.port);
    let no_proxy = c.sidecar.no_proxy.join(",");
    let user_defined = if c.user_defined_variables.user_defined_json.trim().is_empty() {
        "{}".to_string()
    } else {
        c.user_defined_variables.user_defined_json.clone()
    };
    let mut envs = vec![
        env(runtime_env::JOB_API_URL, proxy.clone()),
        env(runtime_env::HTTP_PROXY, proxy.clone()),
        env(runtime_env::HTTPS_PROXY, proxy.clone()),
        env(runtime_env::NO_PROXY, no_proxy.clone()),
        // Many clients (curl, Go, Python) read only the lowercase spellings.
        env("http_proxy", proxy.clone()),
        env("https_proxy", proxy),
        env("no_proxy", no_proxy),
        env(runtime_env::USER_DEFINED_VARIABLES, user_defined),
    ];
    let persistence = &k.persistence;
    if !k.custom_node_modules_path.is_empty() {
        envs.push(env(
            runtime_env::CUSTOM_NODE_MODULES_PATH,
            join_path(&persistence.mount_path, &k.custom_node_modules_path),
        ));
    }
    // Global extra env, then the runtime type's own (which wins on a shared name).
    let mut extra = k.extra_env.clone();
    extra.extend(p.runtime.extra_env.clone());
    for (name, value) in extra {
        if RESERVED_RUNTIME_ENV.contains(&name.as_str()) || name == runtime_env::CUSTOM_NODE_MODULES_PATH {
            return Err(TranslateError::ReservedEnv(name));
        }
        envs.push(env(&name, value));
    }
    let mut mounts = vec![core::VolumeMount {
        name: labels::DATA_VOLUME.into(),
        mount_path: persistence.mount_path.clone(),
        sub_path: non_empty(&persistence.sub_path),
        ..core::VolumeMount::default()
    }];
    mounts.extend(k.extra_volume_mounts.iter().cloned());
    Ok(core::Container {
        name: labels::RUNTIME_CONTAINER.into(),
        image: Some(image_ref(&k.image_registry, &p.runtime.image)),
        image_pull_policy: non_empty(&p.runtime.image.pull_policy),
        env: Some(envs),
        resources: p.runtime.resources.clone(),
        security_context: Some(k.runtime_security_context.clone().unwrap_or_else(|| default_security_context(false))),
        volume_mounts: Some(mounts),
        ..core::Container::default()
    })
}

fn join_path(base: &str, rel: &str) -> String {
    if rel.starts_with('/') {
        return rel.to_string();
    }
    format!("{}/{}", base.trim_end_matches('/'), rel)
}

fn non_empty(s: &str) -> Option<String> {
    (!s.is_empty()).then(|| s.to_string())
}

/// Seed 001 `task.podSecurityContext` defaults.
pub fn default_pod_security_context() -> core::PodSecurityContext {
    core::PodSecurityContext {
        fs_group: Some(1001),
        fs_group_change_policy: Some("OnRootMismatch".into()),
        run_as_group: Some(1001),
        run_as_non_root: Some(true),
        run_as_user: Some(1001),
        seccomp_profile: Some(core::SeccompProfile { type_: "RuntimeDefault".into(), localhost_profile: None }),
        ..core::PodSecurityContext::default()
    }
}

/// Seed 001 container defaults; the runtime's root filesystem stays writable (browsers
/// and node need scratch space), the sidecar's is read-only.
pub fn default_security_context(read_only_root: bool) -> core::SecurityContext {
    core::SecurityContext {
        allow_privilege_escalation: Some(false),
        capabilities: Some(core::Capabilities { add: None, drop: Some(vec!["ALL".into()]) }),
        privileged: Some(false),
        read_only_root_filesystem: Some(read_only_root),
        run_as_group: Some(1001),
        run_as_non_root: Some(true),
        run_as_user: Some(1001),
        seccomp_profile: Some(core::SeccompProfile { type_: "RuntimeDefault".into(), localhost_profile: None }),
        ..core::SecurityContext::default()
    }
}

/// Seed 000 sidecar defaults: requests 0.1 CPU / 128Mi, limits 0.2 CPU / 256Mi.
pub fn default_sidecar_resources() -> core::ResourceRequirements {
    let q = |s: &str| Quantity(s.to_string());
    core::ResourceRequirements {
        requests: Some(BTreeMap::from([("cpu".to_string(), q("100m")), ("memory".to_string(), q("128Mi"))])),
        limits: Some(BTreeMap::from([("cpu".to_string(), q("200m")), ("memory".to_string(), q("256Mi"))])),
        claims: None,
    }
}

#[cfg(test)]
mod tests;
