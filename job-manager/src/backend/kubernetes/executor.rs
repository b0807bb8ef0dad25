//! [`KubeExecutor`]: the I/O around the pure translation. Ephemeral jobs: create the
//! JobRecord, then the Job owned by it (`AlreadyExists` on the deterministic
//! names means the job already runs). Persistent jobs: create the record, then POST the
//! job to the runtime type's Service (202 accepted, 429 busy).
//!
//! Creation is idempotent and resumable: a retry after a failure part-way re-reads the
//! existing record and creates only what is missing; a record this call created is
//! deleted again when the call fails, so a released job leaves nothing behind (and the
//! pruning plan removes what a crash leaves).
use crate::backend::kubernetes::events::EventPublisher;
use crate::backend::kubernetes::labels;
use crate::backend::kubernetes::metrics::KubeMetrics;
use crate::backend::kubernetes::record::JobRecord;
use crate::backend::kubernetes::refusal;
use crate::backend::kubernetes::translate;
use crate::backend::{Accepted, Executor, Handoff, HandoffError, StateError};
use crate::config::model::{Config, Workload};
use bytes::Bytes;
use common::runtime_api::{RuntimeJob, INGRESS_DISPATCH_PATH};
use common::secret::Secret;
use common::JobId;
use http_body_util::{BodyExt, Full};
use k8s_openapi::api::batch::v1 as batch;
use k8s_openapi::api::core::v1 as core;
use kube::api::{DeleteParams, ListParams, PostParams};
use kube::Api;
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// How long a persistent runtime may take to accept or refuse a dispatch.
const DISPATCH_TIMEOUT: Duration = Duration::from_secs(10);
/// Tries to delete the record of a failed hand-off (with backoff, about 2 s in all).
const ABANDON_ATTEMPTS: u32 = 6;

/// Map a failed API call during hand-off to what the dispatcher should do.
pub fn classify_api_error(e: &kube::Error) -> HandoffError {
    match e {
        kube::Error::Api(s) => {
            let what = format!("{} {}: {}", s.code, s.reason, s.message);
            match s.code {
                403 => classify_forbidden(&s.message, what),
                404 => HandoffError::Permanent(format!(
                    "not found (is the JobRecord CRD installed and the namespace right?): {what}"
                )),
                400 | 422 => HandoffError::Permanent(format!("invalid object: {what}")),
                408 | 409 | 429 | 500..=599 => HandoffError::Transient(what),
                _ => HandoffError::Transient(what),
            }
        }
        other => HandoffError::Transient(format!("Kubernetes API unreachable: {other}")),
    }
}

/// A 403 during hand-off, by what refused it ([`refusal::classify`], the reading the
/// pruning loop applies to the Job controller's events). Quota is transient (jobs
/// finish, quota frees up). The authoriser refusing the job manager a right is
/// [`HandoffError::Refused`]: every job of this kind meets it until the Role changes, so
/// the message names the missing right. A webhook refusing this object is permanent
/// for the job; an unrecognised 403 too.
fn classify_forbidden(message: &str, what: String) -> HandoffError {
    match refusal::classify(message) {
        Some(refusal::Refusal::Quota) => HandoffError::Transient(format!("resource quota: {what}")),
        Some(refusal::Refusal::Authorization(d)) => HandoffError::Refused {
            message: format!(
                "the job manager's Role does not allow it to {} (add the rule to the Role bound to {}): {what}",
                d.right(),
                d.user
            ),
            right: d.right(),
        },
        Some(refusal::Refusal::Webhook) => HandoffError::Permanent(format!("refused by an admission webhook: {what}")),
        Some(refusal::Refusal::PodSecurity) => HandoffError::Permanent(format!("refused by Pod Security: {what}")),
        None => HandoffError::Permanent(format!("forbidden (check the job manager's Role): {what}")),
    }
}

fn is_already_exists(e: &kube::Error) -> bool {
    matches!(e, kube::Error::Api(s) if s.code == 409 && s.reason == "AlreadyExists")
}

fn is_not_found(e: &kube::Error) -> bool {
    matches!(e, kube::Error::Api(s) if s.code == 404)
}

/// What a persistent runtime said to a dispatch.
pub fn classify_dispatch_status(status: u16, body: &str) -> Result<(), HandoffError> {
    match status {
        202 => Ok(()),
        429 => Err(HandoffError::Busy(format!("runtime answered 429: {body}"))),
        // 503: no ready endpoint behind the Service yet (scaling up); 502/504: sidecar
        // could not reach its runtime. All worth a retry.
        500..=599 | 408 => Err(HandoffError::Transient(format!("runtime answered {status}: {body}"))),
        _ => Err(HandoffError::Permanent(format!("runtime refused the job ({status}): {body}"))),
    }
}

type HttpClient = hyper_util::client::legacy::Client<hyper_util::client::legacy::connect::HttpConnector, Full<Bytes>>;

/// What the executor reads besides translation's settings.
#[derive(Clone, Debug)]
pub struct ExecutorSettings {
    /// `internalApiKey`: sent with every dispatch to a persistent runtime's sidecar.
    pub internal_api_key: Secret,
    /// `kubernetes.persistentEndpoints`: base URL per persistent runtime type, instead of
    /// the Service's cluster DNS name.
    pub persistent_endpoints: BTreeMap<String, String>,
}

impl From<&Config> for ExecutorSettings {
    fn from(c: &Config) -> Self {
        Self {
            internal_api_key: Secret::new(c.internal_api_key.clone()),
            persistent_endpoints: c.kubernetes.persistent_endpoints.clone(),
        }
    }
}

/// Shared by the executor and the coordination tasks.
pub struct KubeContext {
    pub client: kube::Client,
    pub namespace: String,
    /// This replica's [`labels::DISPATCHER`] label value.
    pub dispatcher: String,
    /// Translation's settings (coordination reads its runtime types and switches too).
    pub translate: translate::TranslateSettings,
    pub executor: ExecutorSettings,
    pub metrics: KubeMetrics,
    pub events: EventPublisher,
}

impl KubeContext {
    pub fn records(&self) -> Api<JobRecord> {
        Api::namespaced(self.client.clone(), &self.namespace)
    }
    pub fn jobs(&self) -> Api<batch::Job> {
        Api::namespaced(self.client.clone(), &self.namespace)
    }
    pub fn pods(&self) -> Api<core::Pod> {
        Api::namespaced(self.client.clone(), &self.namespace)
    }
}

pub struct KubeExecutor {
    ctx: Arc<KubeContext>,
    draining: AtomicBool,
    http: HttpClient,
    /// Base URL per persistent runtime type; default `http://<service>.<ns>.svc:<ingress>`.
    persistent_endpoints: BTreeMap<String, String>,
}

impl KubeExecutor {
    pub fn new(ctx: Arc<KubeContext>) -> Self {
        let http = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
            .build(hyper_util::client::legacy::connect::HttpConnector::new());
        let persistent_endpoints = ctx
            .executor
            .persistent_endpoints
            .iter()
            .map(|(runtime, url)| (runtime.clone(), url.trim_end_matches('/').to_string()))
            .collect();
        Self { ctx, draining: AtomicBool::new(false), http, persistent_endpoints }
    }

    /// Dispatch jobs of `runtime_type` to `base_url` instead of the Service's cluster DNS
    /// name (tests against an emulated cluster; a mesh with its own addresses).
    pub fn with_persistent_endpoint(mut self, runtime_type: &str, base_url: &str) -> Self {
        self.persistent_endpoints.insert(runtime_type.to_string(), base_url.trim_end_matches('/').to_string());
        self
    }

    pub fn context(&self) -> &Arc<KubeContext> {
        &self.ctx
    }

    fn persistent_endpoint(&self, runtime_type: &str) -> String {
        self.persistent_endpoints.get(runtime_type).cloned().unwrap_or_else(|| {
            format!(
                "http://{}.{}.svc:{}",
                labels::persistent_name(runtime_type),
                self.ctx.namespace,
                self.ctx.translate.sidecar.ingress_port
            )
        })
    }

    /// Create the record, or find the one a previous attempt (or replica) created.
    /// Returns the record and whether this call created it.
    async fn create_or_get_record(&self, record: &JobRecord, id: &JobId) -> Result<(JobRecord, bool), HandoffError> {
        let mut record = record.clone();
        record
            .metadata
            .labels
            .get_or_insert_with(Default::default)
            .insert(labels::DISPATCHER.into(), self.ctx.dispatcher.clone());
        let record = &record;
        let api = self.ctx.records();
        let pp = PostParams::default();
        match api.create(&pp, record).await {
            Ok(created) => Ok((created, true)),
            Err(e) if is_already_exists(&e) => {
                let name = record.metadata.name.as_deref().unwrap_or_default();
                let existing = api.get(name).await.map_err(|e| classify_api_error(&e))?;
                if existing.spec.job_id != id.as_str() {
                    return Err(HandoffError::Permanent(format!(
                        "object name {name} is taken by job {} (hash collision)",
                        existing.spec.job_id
                    )));
                }
                Ok((existing, false))
            }
            Err(e) => Err(classify_api_error(&e)),
        }
    }

    /// Undo a record this call created (its children go with it). Retried: a record
    /// left behind makes the job's next delivery look already running, and for a
    /// persistent job (nothing runs) it would end as a false timeout.
    async fn abandon(&self, name: &str) {
        let dp = DeleteParams::background();
        let api = self.ctx.records();
        let backoff = common::backoff::Backoff::new(Duration::from_millis(50), Duration::from_secs(1));
        for attempt in 0..ABANDON_ATTEMPTS {
            match api.delete(name, &dp).await {
                Ok(_) => return,
                Err(e) if is_not_found(&e) => return,
                Err(e)
                    if attempt + 1 < ABANDON_ATTEMPTS
                        && matches!(classify_api_error(&e), HandoffError::Transient(_)) =>
                {
                    tracing::debug!(record = name, error = %e, "retrying the delete of a failed hand-off's record");
                    tokio::time::sleep(backoff.delay(attempt)).await;
                }
                // Pruning removes it once its deadline passed.
                Err(e) => {
                    tracing::warn!(record = name, error = %e, "could not delete the record of a failed hand-off");
                    return;
                }
            }
        }
    }

    async fn start_ephemeral(&self, handoff: Handoff) -> Result<Accepted, HandoffError> {
        let objects = translate::ephemeral_objects(
            &handoff.job,
            &handoff.token,
            handoff.deadline,
            &self.ctx.translate,
            &self.ctx.namespace,
        )
        .map_err(|e| HandoffError::Permanent(e.to_string()))?;
        let name = objects.record.metadata.name.clone().unwrap_or_default();
        let (record, created_record) = self.create_or_get_record(&objects.record, &handoff.job.id).await?;
        if record.status.as_ref().is_some_and(|s| s.result.is_some()) {
            // Re-delivery of a job that already has its outcome: nothing to run.
            return Ok(Accepted::AlreadyRunning);
        }
        let uid = record.metadata.uid.clone().unwrap_or_default();
        let objects = objects.owned_by(&uid);
        let pp = PostParams::default();

        let jobs = self.ctx.jobs();
        match jobs.create(&pp, &objects.job).await {
            Ok(_) => Ok(Accepted::Started),
            Err(e) if is_already_exists(&e) => {
                Ok(if created_record { Accepted::Started } else { Accepted::AlreadyRunning })
            }
            Err(e) => {
                let err = classify_api_error(&e);
                if created_record {
                    self.abandon(&name).await;
                }
                self.ctx.events.handoff_failed(&record, &err);
                Err(err)
            }
        }
    }

    async fn dispatch_persistent(&self, handoff: Handoff) -> Result<Accepted, HandoffError> {
        let record =
            translate::persistent_record(&handoff.job, handoff.deadline, &self.ctx.translate, &self.ctx.namespace)
                .map_err(|e| HandoffError::Permanent(e.to_string()))?;
        let name = record.metadata.name.clone().unwrap_or_default();
        let (existing, created) = self.create_or_get_record(&record, &handoff.job.id).await?;
        if !created {
            // Another replica (or an earlier attempt that then crashed) dispatched it: a
            // result arrives on the record, or pruning reports the timeout.
            return Ok(Accepted::AlreadyRunning);
        }
        match self.post_job(&handoff).await {
            Ok(()) => Ok(Accepted::Started),
            Err(err) => {
                // Not accepted: the dispatcher retries or releases; leave no record behind.
                self.abandon(&name).await;
                if !matches!(err, HandoffError::Busy(_)) {
                    self.ctx.events.handoff_failed(&existing, &err);
                }
                Err(err)
            }
        }
    }

    async fn post_job(&self, handoff: &Handoff) -> Result<(), HandoffError> {
        let url = format!("{}{INGRESS_DISPATCH_PATH}", self.persistent_endpoint(&handoff.job.runtime_type));
        let body =
            serde_json::to_vec(&RuntimeJob::from(&handoff.job)).map_err(|e| HandoffError::Permanent(e.to_string()))?;
        let request = http::Request::post(&url)
            .header(http::header::CONTENT_TYPE, "application/json")
            .header(common::headers::INTERNAL_API_KEY, self.ctx.executor.internal_api_key.expose())
            .header(common::headers::JOB_TOKEN, &handoff.token)
            .header(common::headers::JOB_ID, handoff.job.id.as_str())
            .body(Full::new(Bytes::from(body)))
            .map_err(|e| HandoffError::Permanent(format!("bad dispatch request to {url}: {e}")))?;
        let exchange = async {
            let response =
                self.http.request(request).await.map_err(|e| HandoffError::Transient(format!("{url}: {e}")))?;
            let status = response.status().as_u16();
            let body = response.into_body().collect().await.map(|b| b.to_bytes()).unwrap_or_default();
            let text = String::from_utf8_lossy(&body[..body.len().min(512)]).into_owned();
            classify_dispatch_status(status, &text)
        };
        tokio::time::timeout(DISPATCH_TIMEOUT, exchange)
            .await
            .map_err(|_| HandoffError::Transient(format!("{url}: no answer within {DISPATCH_TIMEOUT:?}")))?
    }
}

/// Jobs without a result, per runtime type, from the records' list.
pub fn in_flight_from(records: &[JobRecord]) -> BTreeMap<String, Vec<JobId>> {
    let mut out: BTreeMap<String, Vec<JobId>> = BTreeMap::new();
    for r in records {
        if r.status.as_ref().is_some_and(|s| s.result.is_some()) {
            continue;
        }
        if let Ok(id) = JobId::new(r.spec.job_id.clone()) {
            out.entry(r.spec.runtime_type.clone()).or_default().push(id);
        }
    }
    out
}

impl Executor for KubeExecutor {
    fn name(&self) -> &'static str {
        "kubernetes"
    }

    async fn start(&self, handoff: Handoff) -> Result<Accepted, HandoffError> {
        if self.draining.load(Ordering::SeqCst) {
            return Err(HandoffError::Transient("the job manager is shutting down".into()));
        }
        let workload = self
            .ctx
            .translate
            .runtimes
            .iter()
            .find(|r| r.name == handoff.job.runtime_type)
            .map(|r| r.workload.clone())
            .ok_or_else(|| {
                HandoffError::Permanent(format!("no runtime type {:?} is configured", handoff.job.runtime_type))
            })?;
        match workload {
            Workload::Ephemeral => self.start_ephemeral(handoff).await,
            Workload::Persistent => self.dispatch_persistent(handoff).await,
        }
    }

    /// This replica's records without a result: durable cluster state, right after a
    /// restart too.
    async fn in_flight(&self) -> Result<BTreeMap<String, Vec<JobId>>, StateError> {
        let selector = format!("{},{}={}", labels::managed_runtime_selector(), labels::DISPATCHER, self.ctx.dispatcher);
        let lp = ListParams::default().labels(&selector);
        let api = self.ctx.records();
        let list = api.list(&lp).await.map_err(|e| StateError(e.to_string()))?;
        Ok(in_flight_from(&list.items))
    }

    /// Pods run on the cluster, not in this process, and report to any replica: nothing
    /// to wait for, and nothing must be released because this replica stops.
    async fn drain(&self, _grace: Duration) -> Vec<JobId> {
        self.draining.store(true, Ordering::SeqCst);
        Vec::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn api(code: u16, reason: &str, message: &str) -> kube::Error {
        kube::Error::Api(Box::new(kube::core::Status {
            code,
            reason: reason.into(),
            message: message.into(),
            ..Default::default()
        }))
    }

    #[test]
    fn api_errors_map_to_retry_or_release() {
        let quota = api(403, "Forbidden", "jobs \"x\" is forbidden: exceeded quota: compute, requested: pods=1");
        assert!(matches!(classify_api_error(&quota), HandoffError::Transient(m) if m.contains("quota")));
        assert_eq!(classify_api_error(&api(403, "Forbidden", "cannot create resource \"jobs\"")).label(), "permanent");
        let webhook = api(403, "Forbidden", r#"admission webhook "v.example" denied the request: no"#);
        assert!(matches!(classify_api_error(&webhook), HandoffError::Permanent(m) if m.contains("admission webhook")));
        assert_eq!(classify_api_error(&api(409, "Conflict", "")).label(), "transient");
        assert_eq!(classify_api_error(&api(422, "Invalid", "spec.x: Invalid value")).label(), "permanent");
        assert_eq!(classify_api_error(&api(429, "TooManyRequests", "")).label(), "transient");
        assert_eq!(classify_api_error(&api(500, "InternalError", "")).label(), "transient");
        assert_eq!(classify_api_error(&api(503, "ServiceUnavailable", "")).label(), "transient");
        assert_eq!(classify_api_error(&api(404, "NotFound", "")).label(), "permanent");
        assert!(is_already_exists(&api(409, "AlreadyExists", "")));
        assert!(!is_already_exists(&api(409, "Conflict", "")));
    }

    #[test]
    fn an_rbac_denial_is_a_refusal_naming_the_missing_right() {
        let said = r#"jobs.batch is forbidden: User "system:serviceaccount:default:job-manager" cannot create resource "jobs" in API group "batch" in the namespace "default""#;
        let HandoffError::Refused { right, message: m } = classify_api_error(&api(403, "Forbidden", said)) else {
            panic!("not a refusal");
        };
        assert_eq!(right, r#"create jobs.batch in namespace "default""#);
        assert!(m.contains(r#"to create jobs.batch in namespace "default""#), "{m}");
        assert!(m.contains("system:serviceaccount:default:job-manager"), "{m}");
        assert!(m.ends_with(said), "the API server's own words are kept: {m}");
    }

    #[test]
    fn dispatch_answers() {
        assert!(classify_dispatch_status(202, "").is_ok());
        assert_eq!(classify_dispatch_status(429, "busy").unwrap_err().label(), "busy");
        assert_eq!(classify_dispatch_status(503, "").unwrap_err().label(), "transient");
        assert_eq!(classify_dispatch_status(401, "bad key").unwrap_err().label(), "permanent");
        // 200 is not an acceptance: only 202 says the runtime took the job.
        assert_eq!(classify_dispatch_status(200, "").unwrap_err().label(), "permanent");
    }

    #[test]
    fn in_flight_counts_records_without_results() {
        let record = |id: &str, rt: &str, done: bool| -> JobRecord {
            let mut v = serde_json::json!({
                "apiVersion": "jobs.jobmanager.dev/v1", "kind": "JobRecord", "metadata": {"name": id},
                "spec": {"jobId": id, "runtimeType": rt, "workload": "ephemeral", "deadline": "2027-01-01T00:00:00Z"}
            });
            if done {
                v["status"] = serde_json::json!({"result": {"outcome": "failed"}});
            }
            serde_json::from_value(v).unwrap()
        };
        let got = in_flight_from(&[
            record("a", "x", false),
            record("b", "x", true),
            record("c", "y", false),
            record("d", "x", false),
        ]);
        let ids = |rt: &str| got[rt].iter().map(|i| i.to_string()).collect::<Vec<_>>();
        assert_eq!(ids("x"), ["a", "d"]);
        assert_eq!(ids("y"), ["c"]);
    }
}
