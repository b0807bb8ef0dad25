//! The result reporter: a result is written to the spool directory (fsync + atomic
//! rename) before the runtime hears "accepted", then delivered to the job manager with
//! the internal key and the job's token, retried with backoff on connection errors, 5xx
//! and 429 until delivered or the deadline. 2xx and 409 ("already have a result") are
//! done; 413 (the job manager takes less than this sidecar did: mismatched versions or
//! settings) turns the result into a `failed` one saying so, delivered instead, so the
//! job still gets an outcome; other 4xx are permanent and logged. Whatever is still
//! spooled at start is delivered again, so a sidecar restart loses nothing.
use crate::metrics::{Metrics, ReasonLabel};
use bytes::Bytes;
use common::backoff::Backoff;
use common::headers;
use common::secret::Secret;
use common::{JobId, JobResult};
use http::{HeaderValue, Method, Request, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioTimer};
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio_util::task::TaskTracker;

/// One result waiting for delivery, as stored in the spool.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct SpoolRecord {
    pub result: JobResult,
    pub token: String,
}

#[derive(Debug, thiserror::Error)]
pub enum ReporterError {
    #[error("cannot spool result to {path}: {source}")]
    Spool { path: PathBuf, source: std::io::Error },
}

pub struct ResultReporter {
    spool_dir: Option<PathBuf>,
    base: String,
    key: HeaderValue,
    client: Client<HttpConnector, Full<Bytes>>,
    backoff: Backoff,
    deadline: Duration,
    tracker: TaskTracker,
    metrics: Arc<Metrics>,
}

/// How one delivery attempt ended.
#[derive(Debug, PartialEq, Eq)]
pub enum Attempt {
    Delivered,
    AlreadyAccepted,
    /// 413: the job manager will not take a result this large.
    TooLarge,
    Retry(String),
    Permanent(String),
}

/// Pure: what a job-manager answer means for the reporter.
pub fn classify_status(status: StatusCode) -> Attempt {
    if status.is_success() {
        Attempt::Delivered
    } else if status == StatusCode::CONFLICT {
        Attempt::AlreadyAccepted
    } else if status == StatusCode::PAYLOAD_TOO_LARGE {
        Attempt::TooLarge
    } else if status.is_server_error()
        || status == StatusCode::TOO_MANY_REQUESTS
        || status == StatusCode::REQUEST_TIMEOUT
    {
        Attempt::Retry(format!("job manager answered {status}"))
    } else {
        Attempt::Permanent(format!("job manager answered {status}"))
    }
}

impl ResultReporter {
    pub fn new(
        spool_dir: Option<PathBuf>,
        base: String,
        key: &Secret,
        deadline: Duration,
        backoff: Backoff,
        metrics: Arc<Metrics>,
    ) -> Self {
        let mut connector = HttpConnector::new();
        connector.set_connect_timeout(Some(Duration::from_secs(5)));
        connector.set_nodelay(true);
        let client = Client::builder(TokioExecutor::new()).pool_timer(TokioTimer::new()).build(connector);
        let mut key = HeaderValue::from_str(key.expose()).unwrap_or_else(|_| HeaderValue::from_static(""));
        key.set_sensitive(true);
        Self { spool_dir, base, key, client, backoff, deadline, tracker: TaskTracker::new(), metrics }
    }

    /// Spools (durably) and starts delivery. Returns once the result is safe on disk.
    pub async fn submit(self: &Arc<Self>, record: SpoolRecord) -> Result<(), ReporterError> {
        let path = match &self.spool_dir {
            Some(dir) => {
                let dir = dir.clone();
                let rec = record.clone();
                let res = tokio::task::spawn_blocking(move || write_spool(&dir, &rec)).await.unwrap_or_else(|e| {
                    Err(ReporterError::Spool { path: PathBuf::new(), source: std::io::Error::other(e) })
                });
                Some(res?)
            }
            None => None,
        };
        self.spawn_delivery(record, path);
        Ok(())
    }

    /// Starts delivery of everything left in the spool directory; returns the job ids.
    pub fn redeliver_spooled(self: &Arc<Self>) -> Vec<JobId> {
        let Some(dir) = &self.spool_dir else {
            return Vec::new();
        };
        let mut ids = Vec::new();
        // Results are only ever spooled through a temp file; one a crash left half
        // written is not a result.
        match common::fs::remove_temps_in(dir) {
            Ok(0) => {}
            Ok(n) => tracing::info!(dir = %dir.display(), removed = n, "removed temp files an interrupted write left"),
            Err(e) => tracing::warn!(dir = %dir.display(), error = %e, "cannot clear temp files from the spool"),
        }
        let entries = match std::fs::read_dir(dir) {
            Ok(e) => e,
            Err(e) => {
                tracing::warn!(dir = %dir.display(), error = %e, "cannot read spool directory");
                return ids;
            }
        };
        for entry in entries.flatten() {
            let path = entry.path();
            if path.extension().and_then(|e| e.to_str()) != Some("json") {
                continue;
            }
            match std::fs::read(&path)
                .map_err(|e| e.to_string())
                .and_then(|b| serde_json::from_slice::<SpoolRecord>(&b).map_err(|e| e.to_string()))
            {
                Ok(rec) => {
                    tracing::info!(job_id = %rec.result.job_id, "re-delivering spooled result");
                    ids.push(rec.result.job_id.clone());
                    self.spawn_delivery(rec, Some(path));
                }
                Err(e) => {
                    tracing::error!(file = %path.display(), error = %e, "unreadable spool file left in place");
                }
            }
        }
        ids
    }

    fn spawn_delivery(self: &Arc<Self>, record: SpoolRecord, path: Option<PathBuf>) {
        let this = self.clone();
        self.tracker.spawn(async move { this.deliver(record, path).await });
    }

    async fn deliver(&self, record: SpoolRecord, path: Option<PathBuf>) {
        let SpoolRecord { result, token } = record;
        let job_id = result.job_id.clone();
        let mut body = Bytes::from(serde_json::to_vec(&result).unwrap_or_default());
        // Only the serialized form is kept through the retries (results can be MiBs).
        drop(result);
        let mut replaced = false;
        let url = format!("{}{}", self.base, common::runtime_api::result_api_path(&job_id));
        let started = Instant::now();
        let mut attempt = 0u32;
        loop {
            let outcome = self.attempt(&url, &token, body.clone()).await;
            let label = match &outcome {
                Attempt::Delivered if replaced => "replaced_too_large",
                Attempt::Delivered => "delivered",
                Attempt::AlreadyAccepted => "already_accepted",
                Attempt::Permanent(_) | Attempt::TooLarge => "rejected",
                Attempt::Retry(_) => "",
            };
            match outcome {
                Attempt::TooLarge if !replaced => {
                    // Dropping it would leave the job without an outcome although its
                    // runtime was told "accepted": report it failed, saying why.
                    let why = format!(
                        "result too large: the job manager refused {} bytes with 413 (its limit is below this sidecar's; mismatched versions or settings?)",
                        body.len()
                    );
                    tracing::error!(job_id = %job_id, reason = %why, "result refused as too large; reporting the job failed instead");
                    let failed = JobResult::new(job_id.clone(), common::Outcome::Failed, why);
                    body = Bytes::from(serde_json::to_vec(&failed).unwrap_or_default());
                    replaced = true;
                    attempt += 1;
                    continue;
                }
                Attempt::TooLarge => {
                    tracing::error!(job_id = %job_id, "even the failure report was refused as too large; not retrying");
                }
                Attempt::Delivered | Attempt::AlreadyAccepted => {
                    tracing::info!(job_id = %job_id, outcome = label, attempts = attempt + 1, "result delivered");
                }
                Attempt::Permanent(why) => {
                    tracing::error!(job_id = %job_id, reason = %why, "result refused by the job manager; not retrying");
                }
                Attempt::Retry(why) => {
                    let delay = self.backoff.delay(attempt);
                    if started.elapsed() + delay > self.deadline {
                        tracing::error!(job_id = %job_id, reason = %why, attempts = attempt + 1, "result delivery deadline passed; left in spool");
                        self.metrics.result_deliveries.get_or_create(&ReasonLabel { reason: "expired" }).inc();
                        return;
                    }
                    tracing::warn!(job_id = %job_id, reason = %why, retry_in_ms = delay.as_millis() as u64, "result delivery failed; retrying");
                    self.metrics.result_retries.inc();
                    attempt += 1;
                    tokio::time::sleep(delay).await;
                    continue;
                }
            }
            self.metrics.result_deliveries.get_or_create(&ReasonLabel { reason: label }).inc();
            if let Some(p) = &path {
                if let Err(e) = std::fs::remove_file(p) {
                    tracing::warn!(file = %p.display(), error = %e, "cannot remove delivered spool file");
                }
            }
            return;
        }
    }

    async fn attempt(&self, url: &str, token: &str, body: Bytes) -> Attempt {
        let Ok(mut token_value) = HeaderValue::from_str(token) else {
            return Attempt::Permanent("job token is not a valid header value".into());
        };
        token_value.set_sensitive(true);
        let req = Request::builder()
            .method(Method::POST)
            .uri(url)
            .header(http::header::CONTENT_TYPE, "application/json")
            .header(headers::INTERNAL_API_KEY, self.key.clone())
            .header(headers::JOB_TOKEN, token_value)
            .body(Full::new(body));
        let req = match req {
            Ok(r) => r,
            Err(e) => return Attempt::Permanent(format!("bad result request: {e}")),
        };
        match tokio::time::timeout(Duration::from_secs(30), self.client.request(req)).await {
            Err(_) => Attempt::Retry("job manager did not answer within 30s".into()),
            Ok(Err(e)) => Attempt::Retry(format!("cannot reach the job manager: {e}")),
            Ok(Ok(resp)) => {
                let status = resp.status();
                // Drain so the connection can be reused.
                let _ = resp.into_body().collect().await;
                classify_status(status)
            }
        }
    }

    /// Fetches the job handed to this sidecar by id + token (Kubernetes: the job manager
    /// reads it off the job record). One attempt; the caller retries `Retry`.
    pub async fn fetch_job(&self, id: &JobId, token: &str) -> Result<common::Job, Attempt> {
        let mut token_value = HeaderValue::from_str(token)
            .map_err(|_| Attempt::Permanent("job token is not a valid header value".into()))?;
        token_value.set_sensitive(true);
        let url = format!("{}{}", self.base, common::runtime_api::job_api_path(id));
        let req = Request::builder()
            .method(Method::GET)
            .uri(&url)
            .header(headers::INTERNAL_API_KEY, self.key.clone())
            .header(headers::JOB_TOKEN, token_value)
            .body(Full::new(Bytes::new()))
            .map_err(|e| Attempt::Permanent(format!("bad job request: {e}")))?;
        let resp = match tokio::time::timeout(Duration::from_secs(30), self.client.request(req)).await {
            Err(_) => return Err(Attempt::Retry("job manager did not answer within 30s".into())),
            Ok(Err(e)) => return Err(Attempt::Retry(format!("cannot reach the job manager: {e}"))),
            Ok(Ok(resp)) => resp,
        };
        let status = resp.status();
        let body = resp.into_body().collect().await.map(|b| b.to_bytes()).unwrap_or_default();
        if status != StatusCode::OK {
            // 404 is retried too (bounded by the caller): the pod exists only because a
            // record does, and a record that is really gone takes the pod with it (its
            // Job is garbage-collected), so waiting costs nothing and a transient miss
            // (a load balancer in front of a replica without the CRD yet) heals.
            let reason =
                format!("job manager answered {status}: {}", String::from_utf8_lossy(&body[..body.len().min(200)]));
            return Err(match classify_status(status) {
                Attempt::Permanent(_) if status != StatusCode::NOT_FOUND => Attempt::Permanent(reason),
                _ => Attempt::Retry(reason),
            });
        }
        let job: common::Job = serde_json::from_slice(&body)
            .map_err(|e| Attempt::Permanent(format!("the job manager's job is not a job: {e}")))?;
        if &job.id != id {
            return Err(Attempt::Permanent(format!("asked for job {id}, got job {}", job.id)));
        }
        Ok(job)
    }

    /// Stops taking new deliveries and waits for in-flight ones, at most `grace`.
    /// True when everything was delivered (or given up on) in time.
    pub async fn drain(&self, grace: Duration) -> bool {
        self.tracker.close();
        tokio::time::timeout(grace, self.tracker.wait()).await.is_ok()
    }

    pub fn in_flight(&self) -> usize {
        self.tracker.len()
    }
}

/// Writes `{dir}/{job_id}.json` durably ([`common::fs::write_atomic`]: temp file, fsync,
/// rename, fsync the directory), mode 0600: it holds the job token.
pub fn write_spool(dir: &Path, record: &SpoolRecord) -> Result<PathBuf, ReporterError> {
    let final_path = dir.join(format!("{}.json", record.result.job_id));
    let io = |source| ReporterError::Spool { path: final_path.clone(), source };
    std::fs::create_dir_all(dir).map_err(io)?;
    let bytes = serde_json::to_vec(record).map_err(|e| io(std::io::Error::other(e)))?;
    common::fs::write_atomic(&final_path, &bytes, 0o600).map_err(io)?;
    Ok(final_path)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statuses() {
        assert_eq!(classify_status(StatusCode::OK), Attempt::Delivered);
        assert_eq!(classify_status(StatusCode::ACCEPTED), Attempt::Delivered);
        assert_eq!(classify_status(StatusCode::CONFLICT), Attempt::AlreadyAccepted);
        assert!(matches!(classify_status(StatusCode::INTERNAL_SERVER_ERROR), Attempt::Retry(_)));
        assert!(matches!(classify_status(StatusCode::SERVICE_UNAVAILABLE), Attempt::Retry(_)));
        assert!(matches!(classify_status(StatusCode::TOO_MANY_REQUESTS), Attempt::Retry(_)));
        assert!(matches!(classify_status(StatusCode::UNAUTHORIZED), Attempt::Permanent(_)));
        assert!(matches!(classify_status(StatusCode::BAD_REQUEST), Attempt::Permanent(_)));
    }

    #[test]
    fn spool_is_atomic_and_private() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("spool");
        let rec = SpoolRecord {
            result: JobResult::new(JobId::new("j1").unwrap(), common::Outcome::Succeeded, "ok"),
            token: "tok".into(),
        };
        let p = write_spool(&dir, &rec).unwrap();
        assert_eq!(p, dir.join("j1.json"));
        let back: SpoolRecord = serde_json::from_slice(&std::fs::read(&p).unwrap()).unwrap();
        assert_eq!(back.result, rec.result);
        // No temp file left beside it (whatever its name): the directory holds only the record.
        let names: Vec<_> = std::fs::read_dir(&dir).unwrap().map(|e| e.unwrap().file_name()).collect();
        assert_eq!(names, ["j1.json"]);
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            assert_eq!(std::fs::metadata(&p).unwrap().permissions().mode() & 0o777, 0o600);
        }
    }
}
