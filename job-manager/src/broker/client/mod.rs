//! The HTTP client for broker API v1 (`common::broker`): bearer location key on every
//! call, rustls with webpki + system roots, optional HTTP proxy with basic auth, a
//! timeout on every attempt, and retries with backoff and jitter where a retry is safe.
//!
//! What is retried, and why it is safe:
//! - `queue_stats`: a read.
//! - `submit_result`: the broker makes results idempotent by job id.
//! - `ack`: acking the current attempt again is a no-op at the broker.
//! - `release`: a repeat after a lost answer gets 409 (the job is no longer ours), which
//!   callers treat like success: either way the broker holds the job again.
//! - `poll`: only when the connection could not be made (nothing was sent, so nothing was
//!   leased). A poll whose answer was lost leases jobs we never see; they come back after
//!   the visibility timeout, and the dispatcher polls again on its next tick anyway.
pub mod connector;

pub use connector::{connect_status, ConnectError, ProxyTarget};

use super::{BrokerApi, BrokerError, PolledBatch, SubmitOutcome};
use bytes::Bytes;
use common::backoff::Backoff;
use common::broker::{
    ack_path, release_path, result_path, AckRequest, ErrorBody, PollRequest, QueueStats, ReleaseRequest, POLL_PATH,
    QUEUE_PATH,
};
use common::secret::Secret;
use common::{JobId, JobResult};
use connector::BrokerConnector;
use http::{header, HeaderValue, Method, Request, StatusCode, Uri};
use http_body_util::{BodyExt, Full, Limited};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use serde::de::DeserializeOwned;
use std::sync::Arc;
use std::time::Duration;

/// Largest broker answer read (a poll with a full batch of jobs and payloads).
const MAX_RESPONSE_BYTES: usize = 16 * 1024 * 1024;

#[derive(Clone, Debug)]
pub struct BrokerClientConfig {
    /// `http(s)://host[:port][/prefix]`.
    pub endpoint: String,
    pub location_key: Secret,
    /// Per attempt: connecting, sending and reading the whole answer.
    pub timeout: Duration,
    pub proxy: Option<ProxySettings>,
    /// Extra trust anchors and a client certificate (`brokerTls.*`, read at start).
    pub tls: connector::TlsMaterial,
}

/// seed 000: `apiProxyHost`, `apiProxyPort`, `brokerApiProxyUsername`,
/// `brokerApiProxyPw`, `brokerApiProxySelfSignedCert`.
#[derive(Clone, Debug)]
pub struct ProxySettings {
    pub host: String,
    pub port: u16,
    pub username: Option<String>,
    pub password: Option<Secret>,
    /// Accept any TLS certificate from the broker end of the tunnel (a proxy that
    /// re-signs TLS with its own, often self-signed, certificate).
    pub accept_self_signed: bool,
}

/// How often and how patiently calls are retried.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct RetryPolicy {
    /// Attempts in total, including the first (1 = no retries).
    pub max_attempts: u32,
    pub backoff: Backoff,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        Self { max_attempts: 3, backoff: Backoff::new(Duration::from_millis(100), Duration::from_secs(2)) }
    }
}

/// Which calls may be repeated after which failures.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Retry {
    /// Retry any retryable error.
    Safe,
    /// Retry only when the request never left (connection failed).
    OnlyUnsent,
}

/// One failed attempt, and whether the request surely never reached the broker.
struct AttemptError {
    error: BrokerError,
    unsent: bool,
}

pub struct HttpBroker {
    client: Client<BrokerConnector, Full<Bytes>>,
    base: String,
    authorization: HeaderValue,
    /// Sent with absolute-form requests when an `http://` broker is reached via a proxy.
    proxy_authorization: Option<HeaderValue>,
    timeout: Duration,
    retry: RetryPolicy,
    /// "Retrying" warnings, once per call and window while the broker is down.
    warnings: Arc<crate::log_throttle::LogThrottle>,
}

impl std::fmt::Debug for HttpBroker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HttpBroker").field("base", &self.base).field("timeout", &self.timeout).finish_non_exhaustive()
    }
}

impl HttpBroker {
    pub fn new(config: BrokerClientConfig) -> Result<HttpBroker, BrokerError> {
        let base = config.endpoint.trim_end_matches('/').to_string();
        let uri: Uri = base.parse().map_err(|e| {
            BrokerError::InvalidConfig(format!("broker endpoint {:?} is not a URL: {e}", config.endpoint))
        })?;
        let https = match uri.scheme_str() {
            Some("https") => true,
            Some("http") => false,
            _ => {
                return Err(BrokerError::InvalidConfig(format!(
                    "broker endpoint {:?} must start with http:// or https://",
                    config.endpoint
                )))
            }
        };
        if uri.host().is_none_or(str::is_empty) {
            return Err(BrokerError::InvalidConfig(format!("broker endpoint {:?} has no host", config.endpoint)));
        }
        if config.timeout.is_zero() {
            return Err(BrokerError::InvalidConfig("broker timeout must be greater than zero".into()));
        }
        let mut authorization =
            HeaderValue::from_str(&format!("Bearer {}", config.location_key.expose())).map_err(|_| {
                BrokerError::InvalidConfig("the location key contains characters not allowed in a header".into())
            })?;
        authorization.set_sensitive(true);

        let proxy = match &config.proxy {
            Some(p) if p.host.is_empty() || p.port == 0 => {
                return Err(BrokerError::InvalidConfig("broker proxy needs both a host and a port (1-65535)".into()))
            }
            Some(p) => {
                let authorization =
                    p.username.as_deref().filter(|u| !u.is_empty()).map(|user| {
                        ProxyTarget::basic_auth(user, p.password.as_ref().map(Secret::expose).unwrap_or(""))
                    });
                Some(Arc::new(ProxyTarget { host: p.host.clone(), port: p.port, authorization }))
            }
            None => None,
        };
        let accept_any = config.proxy.as_ref().is_some_and(|p| p.accept_self_signed);
        let connector = BrokerConnector {
            proxy: proxy.clone(),
            tls: Arc::new(connector::tls_config(accept_any, &config.tls)?),
            connect_timeout: config.timeout,
        };
        let client = Client::builder(TokioExecutor::new()).pool_idle_timeout(Duration::from_secs(60)).build(connector);
        let proxy_authorization = if https { None } else { proxy.and_then(|p| p.authorization.clone()) };
        Ok(HttpBroker {
            client,
            base,
            authorization,
            proxy_authorization,
            timeout: config.timeout,
            retry: RetryPolicy::default(),
            warnings: Arc::default(),
        })
    }

    /// Replace the default retry policy (3 attempts, 100 ms .. 2 s backoff).
    pub fn with_retry_policy(mut self, retry: RetryPolicy) -> Self {
        self.retry = RetryPolicy { max_attempts: retry.max_attempts.max(1), ..retry };
        self
    }

    /// Startup check that the broker is reachable and takes our key: one queue read
    /// (with the usual retries).
    pub async fn network_health_check(&self) -> Result<(), BrokerError> {
        let stats = self.queue_stats().await?;
        tracing::debug!(endpoint = %self.base, depth = stats.depth, "broker health check passed");
        Ok(())
    }

    async fn with_retries<T, F, Fut>(&self, what: &str, retry: Retry, mut attempt_once: F) -> Result<T, BrokerError>
    where
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = Result<T, AttemptError>>,
    {
        let mut attempt = 0;
        loop {
            let err = match attempt_once().await {
                Ok(v) => return Ok(v),
                Err(e) => e,
            };
            attempt += 1;
            let may_retry = err.error.retryable()
                && match retry {
                    Retry::Safe => true,
                    Retry::OnlyUnsent => err.unsent,
                };
            if !may_retry || attempt >= self.retry.max_attempts {
                return Err(err.error);
            }
            let delay = self.retry.backoff.delay(attempt - 1);
            if let Some(suppressed) = self.warnings.admit(what) {
                tracing::warn!(call = what, error = %err.error, attempt, retry_in_ms = delay.as_millis() as u64, suppressed, "broker call failed; retrying");
            }
            tokio::time::sleep(delay).await;
        }
    }

    /// One request with the attempt timeout around connecting, sending and reading.
    async fn send(
        &self,
        method: Method,
        path: &str,
        body: Option<Vec<u8>>,
    ) -> Result<(StatusCode, Bytes), AttemptError> {
        let mut req = Request::builder()
            .method(method)
            .uri(format!("{}{path}", self.base))
            .header(header::AUTHORIZATION, self.authorization.clone())
            .header(header::ACCEPT, "application/json")
            .header(header::USER_AGENT, concat!("job-manager/", env!("CARGO_PKG_VERSION")));
        if let Some(auth) = &self.proxy_authorization {
            req = req.header(header::PROXY_AUTHORIZATION, auth.clone());
        }
        let req = match body {
            Some(b) => req.header(header::CONTENT_TYPE, "application/json").body(Full::new(Bytes::from(b))),
            None => req.body(Full::new(Bytes::new())),
        }
        .map_err(|e| AttemptError {
            error: BrokerError::InvalidConfig(format!("cannot build request: {e}")),
            unsent: true,
        })?;

        let exchange = async {
            let resp = self.client.request(req).await.map_err(|e| AttemptError {
                unsent: e.is_connect(),
                error: BrokerError::Unreachable(error_chain(&e)),
            })?;
            let status = resp.status();
            let body = Limited::new(resp.into_body(), MAX_RESPONSE_BYTES).collect().await.map_err(|e| {
                let error = if e.is::<http_body_util::LengthLimitError>() {
                    BrokerError::Unreadable(format!("the answer is larger than {MAX_RESPONSE_BYTES} bytes"))
                } else {
                    BrokerError::BadResponse(format!("reading the answer: {e}"))
                };
                AttemptError { error, unsent: false }
            })?;
            Ok((status, body.to_bytes()))
        };
        match tokio::time::timeout(self.timeout, exchange).await {
            Ok(r) => r,
            Err(_) => Err(AttemptError { error: BrokerError::Timeout(self.timeout), unsent: false }),
        }
    }
}

/// A hyper error with its causes, e.g. `client error (Connect): connecting to ...: refused`.
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cause = e.source();
    while let Some(c) = cause {
        s.push_str(": ");
        s.push_str(&c.to_string());
        cause = c.source();
    }
    s
}

fn decode<T: DeserializeOwned>(body: &[u8]) -> Result<T, AttemptError> {
    serde_json::from_slice(body)
        .map_err(|e| AttemptError { error: BrokerError::BadResponse(e.to_string()), unsent: false })
}

/// Map a non-success status the same way for every call; `job_scoped` calls turn 404
/// into [`BrokerError::NotFound`] (for poll/queue a 404 means a wrong endpoint).
fn status_error(status: StatusCode, body: &[u8], job_scoped: bool) -> BrokerError {
    match status {
        StatusCode::UNAUTHORIZED => BrokerError::Unauthorized,
        StatusCode::NOT_FOUND if job_scoped => BrokerError::NotFound,
        _ => BrokerError::Status { status: status.as_u16(), message: error_message(body) },
    }
}

/// The broker's `ErrorBody` message, else the first bytes of whatever it sent.
fn error_message(body: &[u8]) -> String {
    match serde_json::from_slice::<ErrorBody>(body) {
        Ok(e) => format!("{}: {}", e.error, e.message),
        Err(_) => {
            let text = String::from_utf8_lossy(&body[..body.len().min(200)]).trim().to_string();
            if text.is_empty() {
                "(empty body)".to_string()
            } else {
                text
            }
        }
    }
}

fn encode<T: serde::Serialize>(value: &T) -> Vec<u8> {
    serde_json::to_vec(value).expect("broker request types serialize")
}

impl HttpBroker {
    /// ack and release share their shape: 2xx ok, 409 lease lost.
    async fn lease_call(&self, what: &str, path: String, body: Vec<u8>) -> Result<(), BrokerError> {
        self.with_retries(what, Retry::Safe, || async {
            let (status, resp) = self.send(Method::POST, &path, Some(body.clone())).await?;
            match status {
                s if s.is_success() => Ok(()),
                StatusCode::CONFLICT => Err(AttemptError { error: BrokerError::LeaseLost, unsent: false }),
                s => Err(AttemptError { error: status_error(s, &resp, true), unsent: false }),
            }
        })
        .await
    }
}

impl BrokerApi for HttpBroker {
    async fn poll(&self, req: &PollRequest) -> Result<PolledBatch, BrokerError> {
        let body = encode(req);
        self.with_retries("poll", Retry::OnlyUnsent, || async {
            let (status, resp) = self.send(Method::POST, POLL_PATH, Some(body.clone())).await?;
            if !status.is_success() {
                return Err(AttemptError { error: status_error(status, &resp, false), unsent: false });
            }
            // Job by job: one bad job is set apart, not the whole batch (see `batch`).
            super::batch::parse_poll_response(&resp)
                .map_err(|e| AttemptError { error: BrokerError::Unreadable(e.0), unsent: false })
        })
        .await
    }

    async fn ack(&self, id: &JobId, req: &AckRequest) -> Result<(), BrokerError> {
        self.lease_call("ack", ack_path(id), encode(req)).await
    }

    async fn release(&self, id: &JobId, req: &ReleaseRequest) -> Result<(), BrokerError> {
        self.lease_call("release", release_path(id), encode(req)).await
    }

    async fn submit_result(&self, result: &JobResult) -> Result<SubmitOutcome, BrokerError> {
        let body = encode(result);
        let path = result_path(&result.job_id);
        self.with_retries("submit_result", Retry::Safe, || async {
            let (status, resp) = self.send(Method::POST, &path, Some(body.clone())).await?;
            match status {
                // The API answers 204 for a stored result. Any other success (a 200 with
                // an HTML page from something in between) proves nothing was stored: the
                // result stays pending and is retried, never counted as delivered.
                StatusCode::NO_CONTENT => Ok(SubmitOutcome::Accepted),
                s if s.is_success() => Err(AttemptError {
                    error: BrokerError::BadResponse(format!(
                        "expected 204 for a stored result, got {}: {}",
                        s.as_u16(),
                        error_message(&resp)
                    )),
                    unsent: false,
                }),
                StatusCode::CONFLICT => Ok(SubmitOutcome::Conflict),
                s => Err(AttemptError { error: status_error(s, &resp, true), unsent: false }),
            }
        })
        .await
    }

    async fn queue_stats(&self) -> Result<QueueStats, BrokerError> {
        self.with_retries("queue_stats", Retry::Safe, || async {
            let (status, resp) = self.send(Method::GET, QUEUE_PATH, None).await?;
            if !status.is_success() {
                return Err(AttemptError { error: status_error(status, &resp, false), unsent: false });
            }
            decode::<QueueStats>(&resp)
        })
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_mapping() {
        let body = br#"{"error":"lease_lost","message":"attempt 1 is stale"}"#;
        assert!(matches!(status_error(StatusCode::UNAUTHORIZED, b"", false), BrokerError::Unauthorized));
        assert!(matches!(status_error(StatusCode::NOT_FOUND, b"", true), BrokerError::NotFound));
        assert!(matches!(status_error(StatusCode::NOT_FOUND, b"", false), BrokerError::Status { status: 404, .. }));
        match status_error(StatusCode::BAD_GATEWAY, body, true) {
            BrokerError::Status { status: 502, message } => assert_eq!(message, "lease_lost: attempt 1 is stale"),
            other => panic!("{other:?}"),
        }
        assert_eq!(error_message(b"  <html>oops</html> "), "<html>oops</html>");
        assert_eq!(error_message(b""), "(empty body)");
        assert_eq!(error_message(&[b'x'; 500]).len(), 200);
    }

    #[test]
    fn connect_status_line() {
        assert_eq!(connect_status("HTTP/1.1 200 Connection established"), Some(200));
        assert_eq!(connect_status("HTTP/1.0 407 Proxy Authentication Required"), Some(407));
        assert_eq!(connect_status("SSH-2.0-OpenSSH"), None);
        assert_eq!(connect_status("HTTP/1.1 abc"), None);
    }

    fn config(endpoint: &str) -> BrokerClientConfig {
        BrokerClientConfig {
            endpoint: endpoint.into(),
            location_key: Secret::new("k"),
            timeout: Duration::from_secs(1),
            proxy: None,
            tls: Default::default(),
        }
    }

    #[test]
    fn endpoint_validation() {
        for bad in ["", "broker.example", "ftp://broker.example", "http://"] {
            let err = HttpBroker::new(config(bad)).unwrap_err();
            assert_eq!(err.label(), "invalid_config", "{bad}: {err}");
        }
        let mut c = config("https://broker.example/api/");
        c.proxy = Some(ProxySettings {
            host: "".into(),
            port: 3128,
            username: None,
            password: None,
            accept_self_signed: false,
        });
        assert!(HttpBroker::new(c.clone()).unwrap_err().to_string().contains("host and a port"));
        c.proxy = None;
        let b = HttpBroker::new(c).unwrap();
        assert_eq!(b.base, "https://broker.example/api");
        let mut c = config("http://127.0.0.1:1");
        c.location_key = Secret::new("bad\nkey");
        assert_eq!(HttpBroker::new(c).unwrap_err().label(), "invalid_config");
    }

    #[test]
    fn basic_auth_header() {
        let v = ProxyTarget::basic_auth("user", "pa:ss");
        assert_eq!(v.to_str().unwrap(), "Basic dXNlcjpwYTpzcw==");
        assert!(v.is_sensitive());
    }
}
