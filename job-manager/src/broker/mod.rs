//! The broker boundary. [`BrokerApi`] is what the dispatcher and the result delivery
//! loop need; the HTTP client implements it against any v1 broker (remote, or the
//! embedded one served on loopback), and tests may implement it in memory.
pub mod batch;
pub mod client;
pub mod embedded;

pub use batch::{PolledBatch, UnreadableJob};

use common::broker::{AckRequest, PollRequest, QueueStats, ReleaseRequest};
use common::{JobId, JobResult};
use std::future::Future;

/// What the broker said to a result submission.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SubmitOutcome {
    /// Stored (first time, or an identical repeat: submissions are idempotent).
    Accepted,
    /// The broker already holds a *different* result for this job (409). Final: the
    /// job has its one outcome; ours is dropped and logged.
    Conflict,
}

/// Why a broker call failed. `retryable()` decides whether callers back off and retry.
#[derive(Debug, thiserror::Error)]
pub enum BrokerError {
    #[error("broker unreachable: {0}")]
    Unreachable(String),
    #[error("broker timed out after {0:?}")]
    Timeout(std::time::Duration),
    #[error("broker answered {status}: {message}")]
    Status { status: u16, message: String },
    #[error("broker answered with an unreadable body: {0}")]
    BadResponse(String),
    /// The answer arrived whole but cannot be read at all: over the size limit, or not
    /// the JSON asked for. Unlike a dropped connection this repeats until the broker is
    /// fixed, so a poll answered this way makes the job manager unready.
    #[error("broker answer unreadable: {0}")]
    Unreadable(String),
    #[error("broker refused the location key (401)")]
    Unauthorized,
    #[error("unknown job (404)")]
    NotFound,
    #[error("the job's lease was lost or it was re-delivered (409)")]
    LeaseLost,
    /// The client cannot be built as configured (bad endpoint URL, bad proxy settings).
    #[error("invalid broker client configuration: {0}")]
    InvalidConfig(String),
}

impl BrokerError {
    pub fn retryable(&self) -> bool {
        match self {
            BrokerError::Unreachable(_)
            | BrokerError::Timeout(_)
            | BrokerError::BadResponse(_)
            | BrokerError::Unreadable(_) => true,
            BrokerError::Status { status, .. } => *status >= 500 || *status == 429,
            BrokerError::Unauthorized
            | BrokerError::NotFound
            | BrokerError::LeaseLost
            | BrokerError::InvalidConfig(_) => false,
        }
    }

    /// Stable label for metrics.
    /// Every [`BrokerError::label`].
    pub const LABELS: [&'static str; 9] = [
        "unreachable",
        "timeout",
        "status",
        "bad_response",
        "unreadable",
        "unauthorized",
        "not_found",
        "lease_lost",
        "invalid_config",
    ];

    pub fn label(&self) -> &'static str {
        match self {
            BrokerError::Unreachable(_) => "unreachable",
            BrokerError::Timeout(_) => "timeout",
            BrokerError::Status { .. } => "status",
            BrokerError::BadResponse(_) => "bad_response",
            BrokerError::Unreadable(_) => "unreadable",
            BrokerError::Unauthorized => "unauthorized",
            BrokerError::NotFound => "not_found",
            BrokerError::LeaseLost => "lease_lost",
            BrokerError::InvalidConfig(_) => "invalid_config",
        }
    }
}

/// The broker API v1 as the job manager uses it (see `common::broker`).
pub trait BrokerApi: Send + Sync + 'static {
    /// Lease jobs. A job in the answer that cannot be read comes back in
    /// [`PolledBatch::unreadable`] (the rest still run); `Err` only when the answer as a
    /// whole cannot be read or did not come.
    fn poll(&self, req: &PollRequest) -> impl Future<Output = Result<PolledBatch, BrokerError>> + Send;
    fn ack(&self, id: &JobId, req: &AckRequest) -> impl Future<Output = Result<(), BrokerError>> + Send;
    fn release(&self, id: &JobId, req: &ReleaseRequest) -> impl Future<Output = Result<(), BrokerError>> + Send;
    fn submit_result(&self, result: &JobResult) -> impl Future<Output = Result<SubmitOutcome, BrokerError>> + Send;
    fn queue_stats(&self) -> impl Future<Output = Result<QueueStats, BrokerError>> + Send;
}

/// The in-process broker, keyed with the location key (random when none is set).
impl From<&crate::config::Config> for embedded::EmbeddedOptions {
    fn from(c: &crate::config::Config) -> Self {
        let key = if c.location_key.is_empty() { common::secret::random_hex(16) } else { c.location_key.clone() };
        let visibility = std::time::Duration::from_millis(c.poll.interval_ms.saturating_mul(5))
            .max(std::time::Duration::from_secs(30));
        embedded::EmbeddedOptions { visibility_timeout: visibility, location_key: common::secret::Secret::new(key) }
    }
}

/// The broker's HTTP API, through the configured proxy if any.
impl From<&crate::config::Config> for client::BrokerClientConfig {
    fn from(c: &crate::config::Config) -> Self {
        use common::secret::Secret;
        let proxy = (!c.api_proxy_host.is_empty()).then(|| client::ProxySettings {
            host: c.api_proxy_host.clone(),
            port: c.api_proxy_port,
            username: (!c.broker_api_proxy_username.is_empty()).then(|| c.broker_api_proxy_username.clone()),
            password: (!c.broker_api_proxy_pw.is_empty()).then(|| Secret::new(c.broker_api_proxy_pw.clone())),
            accept_self_signed: c.broker_api_proxy_self_signed_cert,
        });
        client::BrokerClientConfig {
            endpoint: c.broker_api_endpoint.clone(),
            location_key: Secret::new(c.location_key.clone()),
            timeout: std::time::Duration::from_secs(30),
            proxy,
            // Validation read these files already (`brokerTls`); one unreadable now fails
            // the client's construction, naming it.
            tls: client::connector::TlsMaterial::read(
                &c.broker_tls.ca_file,
                &c.broker_tls.client_cert_file,
                &c.broker_tls.client_key_file,
            )
            .unwrap_or_else(client::connector::TlsMaterial::unreadable),
        }
    }
}
