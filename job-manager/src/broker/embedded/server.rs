//! HTTP/1 server for the embedded broker: broker API v1 plus the admin endpoints.
//! Every request is checked for the bearer key first, then routed; bodies are bounded;
//! a malformed body gets 400, a well-formed one of the wrong shape 422, a huge one 413.
#[cfg(feature = "test-support")]
use super::Injected;
use super::{CallRecord, EmbeddedBroker, QueueError, NO_ANSWER};
use crate::serve::{serve_http1, ServeSettings};
use bytes::Bytes;
use common::broker::{AckRequest, ErrorBody, PollRequest, ReleaseRequest, POLL_PATH, QUEUE_PATH};
use common::{Job, JobId, JobResult};
use http::{header, Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use serde::de::DeserializeOwned;
use std::time::Duration;

/// Largest request body accepted (a job result with its output fits comfortably).
pub const MAX_BODY_BYTES: usize = 1024 * 1024;
/// A client must send its request head within this time (slow-client guard).
const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);
/// Open connections at once; more wait in the listen backlog.
const MAX_CONNECTIONS: usize = 4096;
/// After shutdown, open requests get this long before connections are cut.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(5);

type Answer = Response<Full<Bytes>>;

/// Returned by the service to make hyper close the connection without an answer.
#[derive(Debug, thiserror::Error)]
#[cfg_attr(not(feature = "test-support"), allow(dead_code))] // only faults drop connections
#[error("connection dropped by fault injection")]
struct Dropped;

pub(super) async fn serve(
    broker: EmbeddedBroker,
    listener: tokio::net::TcpListener,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let settings = ServeSettings {
        name: "embedded_broker",
        max_connections: MAX_CONNECTIONS,
        header_read_timeout: HEADER_READ_TIMEOUT,
        drain_timeout: DRAIN_TIMEOUT,
    };
    let service_for = || {
        // A broker that is "down" (fault injection) drops connections unanswered.
        if is_down(&broker) {
            return None;
        }
        let b = broker.clone();
        Some(hyper::service::service_fn(move |req| handle(b.clone(), req)))
    };
    serve_http1(listener, settings, service_for, shutdown).await
}

async fn handle(broker: EmbeddedBroker, req: Request<Incoming>) -> Result<Answer, Dropped> {
    let method = req.method().to_string();
    let path = req.uri().path().to_string();
    let job_id = job_id_in_path(&path);
    let outcome = answer(&broker, req).await;
    let status = match &outcome {
        Ok(resp) => resp.status().as_u16(),
        Err(Dropped) => NO_ANSWER,
    };
    broker.record_call(CallRecord { method, path, job_id, status });
    outcome
}

/// The job a path is about, if it names one (`/v1/jobs/{id}/...`, `/admin/v1/results/{id}`).
fn job_id_in_path(path: &str) -> Option<JobId> {
    let segs: Vec<&str> = path.trim_start_matches('/').split('/').collect();
    match segs.as_slice() {
        ["v1", "jobs", id, _] | ["admin", "v1", "results", id] => JobId::new(*id).ok(),
        _ => None,
    }
}

async fn answer(broker: &EmbeddedBroker, req: Request<Incoming>) -> Result<Answer, Dropped> {
    let is_broker_api = req.uri().path().starts_with("/v1/");
    if is_broker_api {
        if let Some(injected) = inject(broker).await {
            return injected;
        }
    }
    if !authorized(broker, &req) {
        return Ok(error(StatusCode::UNAUTHORIZED, "unauthorized", "missing or wrong bearer location key"));
    }
    Ok(route(broker, req).await)
}

/// Whether the fault plan has the broker down (new connections are closed at once).
#[cfg(feature = "test-support")]
fn is_down(broker: &EmbeddedBroker) -> bool {
    broker.faults.is_down()
}

#[cfg(not(feature = "test-support"))]
fn is_down(_: &EmbeddedBroker) -> bool {
    false
}

/// Apply the fault plan to a broker API request: `None` to serve it (after any delay),
/// else what to do instead.
#[cfg(feature = "test-support")]
async fn inject(broker: &EmbeddedBroker) -> Option<Result<Answer, Dropped>> {
    match broker.faults.next() {
        Injected::Serve { delay } => {
            if !delay.is_zero() {
                tokio::time::sleep(delay).await;
            }
            None
        }
        Injected::Fail { status } => {
            let status = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
            Some(Ok(error(status, "injected", "fault injected by the test")))
        }
        Injected::Garbage => Some(Ok(Response::builder()
            .status(StatusCode::OK)
            .header(header::CONTENT_TYPE, "application/json")
            .body(Full::new(Bytes::from_static(b"{\"jobs\": [tr")))
            .expect("static response"))),
        Injected::Hang { until } => {
            tokio::time::sleep_until(until.into()).await;
            Some(Err(Dropped))
        }
        Injected::Down => Some(Err(Dropped)),
    }
}

/// Without the `test-support` feature there is no fault plan: every request is served.
#[cfg(not(feature = "test-support"))]
async fn inject(_: &EmbeddedBroker) -> Option<Result<Answer, Dropped>> {
    None
}

fn authorized(broker: &EmbeddedBroker, req: &Request<Incoming>) -> bool {
    let Some(value) = req.headers().get(header::AUTHORIZATION) else {
        return false;
    };
    let Some(token) = value.as_bytes().strip_prefix(b"Bearer ") else {
        return false;
    };
    broker.location_key().matches(token)
}

async fn route(broker: &EmbeddedBroker, req: Request<Incoming>) -> Answer {
    let path = req.uri().path().to_string();
    let segs: Vec<&str> = path.trim_start_matches('/').split('/').collect();
    let method = req.method().clone();
    let allow = |m: Method| -> Result<(), Rejected> {
        if method == m {
            Ok(())
        } else {
            let mut resp = error(StatusCode::METHOD_NOT_ALLOWED, "method_not_allowed", format!("{path} takes {m}"));
            resp.headers_mut().insert(header::ALLOW, m.as_str().parse().expect("method is a header value"));
            Err(Box::new(resp))
        }
    };
    let result = match segs.as_slice() {
        _ if path == POLL_PATH => match allow(Method::POST) {
            Ok(()) => poll(broker, req).await,
            Err(r) => Err(r),
        },
        _ if path == QUEUE_PATH => allow(Method::GET).map(|()| json(StatusCode::OK, &broker.stats())),
        ["v1", "jobs", id, action @ ("ack" | "release" | "result")] => match (allow(Method::POST), parse_id(id)) {
            (Err(r), _) | (_, Err(r)) => Err(r),
            (Ok(()), Ok(id)) => job_action(broker, id, action, req).await,
        },
        ["admin", "v1", "jobs"] => match allow(Method::POST) {
            Ok(()) => admin_submit(broker, req).await,
            Err(r) => Err(r),
        },
        ["admin", "v1", "results"] => allow(Method::GET).map(|()| json(StatusCode::OK, &broker.results())),
        ["admin", "v1", "counters"] => allow(Method::GET).map(|()| json(StatusCode::OK, &broker.all_counters())),
        ["admin", "v1", "results", id] => {
            allow(Method::GET).and_then(|()| parse_id(id)).map(|id| match broker.result(&id) {
                Some(r) => json(StatusCode::OK, &r),
                None => error(StatusCode::NOT_FOUND, "not_found", format!("no result for job {id}")),
            })
        }
        _ => Err(reject(StatusCode::NOT_FOUND, "not_found", format!("no such endpoint: {path}"))),
    };
    result.unwrap_or_else(|r| *r)
}

fn parse_id(s: &str) -> Result<JobId, Rejected> {
    JobId::new(s).map_err(|e| reject(StatusCode::BAD_REQUEST, "bad_job_id", e.to_string()))
}

async fn poll(broker: &EmbeddedBroker, req: Request<Incoming>) -> Result<Answer, Rejected> {
    let poll: PollRequest = read_json(req).await?;
    Ok(json(StatusCode::OK, &broker.poll_jobs(&poll)))
}

async fn job_action(
    broker: &EmbeddedBroker,
    id: JobId,
    action: &str,
    req: Request<Incoming>,
) -> Result<Answer, Rejected> {
    let done = match action {
        "ack" => {
            let ack: AckRequest = read_json(req).await?;
            broker.ack_job(&id, &ack)
        }
        "release" => {
            let release: ReleaseRequest = read_json(req).await?;
            broker.release_job(&id, &release)
        }
        _ => {
            let result: JobResult = read_json(req).await?;
            if result.job_id != id {
                return Err(reject(
                    StatusCode::UNPROCESSABLE_ENTITY,
                    "job_id_mismatch",
                    format!("result for job {} posted to job {id}", result.job_id),
                ));
            }
            broker.store_result(result)
        }
    };
    done.map(|()| no_content()).map_err(|e| Box::new(queue_error(e)))
}

async fn admin_submit(broker: &EmbeddedBroker, req: Request<Incoming>) -> Result<Answer, Rejected> {
    let job: Job = read_json(req).await?;
    let id = job.id.clone();
    match broker.submit(job) {
        Ok(()) => Ok(json(StatusCode::CREATED, &serde_json::json!({ "id": id }))),
        Err(e) => Err(reject(StatusCode::CONFLICT, e.label(), e.to_string())),
    }
}

fn queue_error(e: QueueError) -> Answer {
    let status = match e {
        QueueError::NotFound(_) => StatusCode::NOT_FOUND,
        QueueError::LeaseLost { .. } | QueueError::ResultConflict(_) | QueueError::Duplicate(_) => StatusCode::CONFLICT,
    };
    error(status, e.label(), e.to_string())
}

/// Read a bounded body and decode it: 413 when too big, 400 when not JSON, 422 when JSON
/// of the wrong shape.
async fn read_json<T: DeserializeOwned>(req: Request<Incoming>) -> Result<T, Rejected> {
    let too_big = || reject(StatusCode::PAYLOAD_TOO_LARGE, "too_large", format!("body exceeds {MAX_BODY_BYTES} bytes"));
    let declared = req.headers().get(header::CONTENT_LENGTH).and_then(|v| v.to_str().ok()?.parse::<u64>().ok());
    if declared.is_some_and(|n| n > MAX_BODY_BYTES as u64) {
        return Err(too_big());
    }
    let body = match Limited::new(req.into_body(), MAX_BODY_BYTES).collect().await {
        Ok(b) => b.to_bytes(),
        Err(e) if e.is::<http_body_util::LengthLimitError>() => return Err(too_big()),
        Err(e) => return Err(reject(StatusCode::BAD_REQUEST, "bad_body", format!("cannot read body: {e}"))),
    };
    serde_json::from_slice(&body).map_err(|e| {
        use serde_json::error::Category;
        match e.classify() {
            Category::Data => reject(StatusCode::UNPROCESSABLE_ENTITY, "invalid", e.to_string()),
            Category::Syntax | Category::Eof | Category::Io => {
                reject(StatusCode::BAD_REQUEST, "malformed_json", e.to_string())
            }
        }
    })
}

fn json<T: serde::Serialize>(status: StatusCode, value: &T) -> Answer {
    let body = serde_json::to_vec(value).expect("broker types serialize");
    Response::builder()
        .status(status)
        .header(header::CONTENT_TYPE, "application/json")
        .body(Full::new(Bytes::from(body)))
        .expect("valid response")
}

fn no_content() -> Answer {
    Response::builder().status(StatusCode::NO_CONTENT).body(Full::new(Bytes::new())).expect("valid response")
}

/// A refusal on the way to an answer; boxed because a response is large and the error
/// path is the rare one.
type Rejected = Box<Answer>;

fn reject(status: StatusCode, code: &str, message: impl Into<String>) -> Rejected {
    Box::new(error(status, code, message))
}

fn error(status: StatusCode, code: &str, message: impl Into<String>) -> Answer {
    json(status, &ErrorBody::new(code, message))
}
