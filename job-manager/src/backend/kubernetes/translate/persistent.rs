//! Persistent runtime types: the Deployment + Service + HPA applied once per type, the
//! record of a job dispatched to one, and which applied workloads are no longer wanted.
use super::pod::{pod_spec, PodInputs, PodMode};
use super::TranslateSettings;
use super::{check_common, deadline_time, runtime_for, TranslateError};
use crate::backend::kubernetes::labels;
use crate::backend::kubernetes::record::{JobRecord, JobRecordSpec, RecordWorkload};
use crate::config::model::Workload;
use common::Job;
use k8s_openapi::api::apps::v1 as apps;
use k8s_openapi::api::autoscaling::v2 as autoscaling;
use k8s_openapi::api::core::v1 as core;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use std::collections::BTreeMap;
use std::time::SystemTime;

/// Everything created once per persistent runtime type (by the `service-setup` holder).
#[derive(Debug, Clone, PartialEq)]
pub struct PersistentObjects {
    pub deployment: apps::Deployment,
    pub service: core::Service,
    pub hpa: autoscaling::HorizontalPodAutoscaler,
}

/// The record of one job dispatched to a persistent runtime: the durable row its result
/// lands in (and the deadline pruning enforces). Nothing else is created per job.
pub fn persistent_record(
    job: &Job,
    deadline: SystemTime,
    settings: &TranslateSettings,
    namespace: &str,
) -> Result<JobRecord, TranslateError> {
    let runtime = runtime_for(settings, &job.runtime_type, Workload::Persistent)?;
    check_common(settings, namespace)?;
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

/// The persistent workloads (Deployment, Service and HPA share the name) among `existing`
/// that no enabled persistent runtime type of `settings` wants any more: removed from the
/// config, disabled, or turned ephemeral. The `service-setup` holder deletes them, so a
/// runtime type taken out of the values does not keep pods running.
pub fn retired_persistent_workloads<'a>(
    existing: impl IntoIterator<Item = &'a str>,
    settings: &TranslateSettings,
) -> Vec<String> {
    let wanted: std::collections::BTreeSet<String> = settings
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

/// The Deployment + Service + HPA of one persistent runtime type.
pub fn persistent_objects(
    runtime_type: &str,
    settings: &TranslateSettings,
    namespace: &str,
) -> Result<PersistentObjects, TranslateError> {
    let runtime = runtime_for(settings, runtime_type, Workload::Persistent)?;
    check_common(settings, namespace)?;
    let name = labels::persistent_name(&runtime.name);
    let selector = labels::runtime_labels(&runtime.name, "persistent");
    let meta = ObjectMeta {
        name: Some(name.clone()),
        namespace: Some(namespace.to_string()),
        labels: Some(selector.clone()),
        ..ObjectMeta::default()
    };
    let mut pod_labels = settings.kubernetes.pod_labels.clone();
    pod_labels.extend(selector.clone());
    let pod_annotations = super::pod::pod_annotations(settings, runtime);
    let pod = PodInputs { runtime, settings, namespace, mode: PodMode::Persistent };
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
                port: i32::from(settings.sidecar.ingress_port),
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
