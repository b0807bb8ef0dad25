//! One ephemeral job: its [`JobRecord`] and the `batch/v1` Job the record owns.
use super::pod::{pod_spec, PodInputs, PodMode};
use super::TranslateSettings;
use super::{check_common, deadline_time, runtime_for, TranslateError};
use crate::backend::kubernetes::labels;
use crate::backend::kubernetes::record::{JobRecord, JobRecordSpec, RecordWorkload};
use crate::config::model::Workload;
use common::Job;
use k8s_openapi::api::batch::v1 as batch;
use k8s_openapi::api::core::v1 as core;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference};
use std::collections::BTreeMap;
use std::time::SystemTime;

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

/// The objects for one ephemeral job. `token` goes into the sidecar container's env only.
pub fn ephemeral_objects(
    job: &Job,
    token: &str,
    deadline: SystemTime,
    settings: &TranslateSettings,
    namespace: &str,
) -> Result<EphemeralObjects, TranslateError> {
    let runtime = runtime_for(settings, &job.runtime_type, Workload::Ephemeral)?;
    check_common(settings, namespace)?;
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

    let mut pod_labels = settings.kubernetes.pod_labels.clone();
    pod_labels.extend(object_labels);
    let mut pod_annotations = super::pod::pod_annotations(settings, runtime);
    pod_annotations.extend(annotations);
    let pod = PodInputs { runtime, settings, namespace, mode: PodMode::Ephemeral { job_id: &job.id, token } };
    let active_deadline = i64::from(job.timeout_secs.clamp(1, settings.check_timeout.max(1)));
    let k8s_job = batch::Job {
        metadata: meta,
        spec: Some(batch::JobSpec {
            backoff_limit: Some(settings.kubernetes.job.backoff_limit),
            ttl_seconds_after_finished: Some(settings.kubernetes.job.ttl_seconds_after_finished),
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
