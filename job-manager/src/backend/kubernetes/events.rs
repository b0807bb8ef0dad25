//! Kubernetes Events about job records (`kubectl describe jr <name>` shows them). Only
//! the abnormal lifecycle steps get one: a hand-off that failed, a result the job manager
//! decided (timeout, pod that cannot start), objects pruned. The normal path is visible
//! in the record's status and would otherwise cost an API write per job. Publishing is
//! best effort and never blocks the caller.
use crate::backend::kubernetes::labels;
use crate::backend::kubernetes::record::JobRecord;
use crate::backend::HandoffError;
use k8s_openapi::api::core::v1::ObjectReference;
use kube::runtime::events::{Event, EventType, Recorder, Reporter};
use kube::Resource as _;

#[derive(Clone)]
pub struct EventPublisher {
    recorder: Option<Recorder>,
}

impl EventPublisher {
    pub fn new(client: kube::Client, instance: &str) -> Self {
        let reporter = Reporter { controller: labels::FIELD_MANAGER.into(), instance: Some(instance.to_string()) };
        Self { recorder: Some(Recorder::new(client, reporter)) }
    }

    /// Publishes nothing (tools and tests that need no events).
    pub fn disabled() -> Self {
        Self { recorder: None }
    }

    pub fn handoff_failed(&self, record: &JobRecord, err: &HandoffError) {
        self.publish(record, EventType::Warning, "HandoffFailed", "Create", format!("{err}"));
    }

    pub fn diagnosed(&self, record: &JobRecord, reason: &'static str, message: &str) {
        self.publish(record, EventType::Warning, reason, "Report", message.to_string());
    }

    pub fn pruned(&self, record: &JobRecord, message: &str) {
        self.publish(record, EventType::Normal, "Pruned", "Delete", message.to_string());
    }

    fn publish(&self, record: &JobRecord, type_: EventType, reason: &str, action: &str, note: String) {
        let Some(recorder) = self.recorder.clone() else {
            return;
        };
        let reference: ObjectReference = record.object_ref(&());
        // The events API caps notes at 1 kB.
        let note: String = note.chars().take(1000).collect();
        let event =
            Event { type_, reason: reason.to_string(), note: Some(note), action: action.to_string(), secondary: None };
        tokio::spawn(async move {
            if let Err(e) = recorder.publish(&event, &reference).await {
                tracing::debug!(error = %e, "could not publish an event");
            }
        });
    }
}
