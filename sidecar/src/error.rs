//! Why the sidecar answers instead of the destination: each cause, its stable label,
//! its status and the synthetic response a client sees (403 for a policy refusal, 502
//! for an unreachable upstream, 504 for a timeout, 4xx for bad requests). Every
//! synthetic response carries `x-sidecar-error: <label>`. The rescue layer
//! (`proxy/rescue.rs`, under the proxy and the ingress stacks) maps their layers' own
//! errors onto these; the local API answers with them directly.
use crate::policy::Decision;
use bytes::Bytes;
use http::{HeaderValue, Response, StatusCode};
use http_body_util::Full;

#[derive(Debug, thiserror::Error)]
pub enum ProxyError {
    #[error("refused by egress policy: {}", .0.reason)]
    Denied(Decision),
    #[error("bad request target: {0}")]
    BadTarget(#[from] crate::authority::AuthorityError),
    #[error("{0}")]
    Resolve(#[from] crate::resolve::ResolveError),
    #[error("connecting to {target} timed out")]
    ConnectTimeout { target: String },
    #[error("cannot connect to {target}: {message}")]
    Connect { target: String, message: String },
    #[error("upstream proxy: {0}")]
    UpstreamProxy(String),
    #[error("upstream request failed: {0}")]
    Upstream(String),
    #[error("too many open tunnels")]
    TooManyTunnels,
    #[error("body larger than {limit} bytes")]
    BodyTooLarge { limit: usize },
    /// A runtime's result over the limit: refused, and the job reported failed for it.
    #[error("{0}; the job is reported failed")]
    ResultTooLarge(String),
    #[error("body not received within {} ms", .after.as_millis())]
    BodyTimeout { after: std::time::Duration },
    #[error("too many request bodies in memory; retry later")]
    BodyMemoryFull,
    #[error("{0}")]
    BadRequest(String),
    #[error("not found")]
    NotFound,
    #[error("method not allowed (use {allow})")]
    MethodNotAllowed { allow: &'static str },
    #[error("{0}")]
    Conflict(String),
    #[error("{0}")]
    Unavailable(String),
    #[error("missing internal API key")]
    MissingKey,
    #[error("invalid internal API key")]
    BadKey,
}

impl ProxyError {
    /// Every [`ProxyError::label`] but the denials' (those are
    /// [`crate::policy::Class::DENIALS`]), plus the server's `too_many_connections`: the
    /// `reason` values of `sidecar_errors_total`, pre-created at zero.
    pub const OTHER_LABELS: [&'static str; 20] = [
        "unsupported_scheme",
        "bad_target",
        "dns_failure",
        "connect_timeout",
        "connect_failed",
        "upstream_proxy",
        "upstream_failed",
        "too_many_tunnels",
        "body_too_large",
        "result_too_large",
        "body_timeout",
        "body_memory_full",
        "bad_request",
        "not_found",
        "method_not_allowed",
        "conflict",
        "unavailable",
        "missing_key",
        "bad_key",
        "too_many_connections",
    ];

    /// Stable label for metrics and the `x-sidecar-error` header.
    pub fn label(&self) -> &'static str {
        match self {
            ProxyError::Denied(d) => d.class.label(),
            ProxyError::BadTarget(e) => e.label(),
            ProxyError::Resolve(_) => "dns_failure",
            ProxyError::ConnectTimeout { .. } => "connect_timeout",
            ProxyError::Connect { .. } => "connect_failed",
            ProxyError::UpstreamProxy(_) => "upstream_proxy",
            ProxyError::Upstream(_) => "upstream_failed",
            ProxyError::TooManyTunnels => "too_many_tunnels",
            ProxyError::BodyTooLarge { .. } => "body_too_large",
            ProxyError::ResultTooLarge(_) => "result_too_large",
            ProxyError::BodyTimeout { .. } => "body_timeout",
            ProxyError::BodyMemoryFull => "body_memory_full",
            ProxyError::BadRequest(_) => "bad_request",
            ProxyError::NotFound => "not_found",
            ProxyError::MethodNotAllowed { .. } => "method_not_allowed",
            ProxyError::Conflict(_) => "conflict",
            ProxyError::Unavailable(_) => "unavailable",
            ProxyError::MissingKey => "missing_key",
            ProxyError::BadKey => "bad_key",
        }
    }

    pub fn status(&self) -> StatusCode {
        match self {
            ProxyError::Denied(_) => StatusCode::FORBIDDEN,
            ProxyError::BadTarget(_) | ProxyError::BadRequest(_) => StatusCode::BAD_REQUEST,
            ProxyError::Resolve(_)
            | ProxyError::Connect { .. }
            | ProxyError::UpstreamProxy(_)
            | ProxyError::Upstream(_) => StatusCode::BAD_GATEWAY,
            ProxyError::ConnectTimeout { .. } => StatusCode::GATEWAY_TIMEOUT,
            ProxyError::TooManyTunnels | ProxyError::Unavailable(_) | ProxyError::BodyMemoryFull => {
                StatusCode::SERVICE_UNAVAILABLE
            }
            ProxyError::BodyTimeout { .. } => StatusCode::REQUEST_TIMEOUT,
            ProxyError::BodyTooLarge { .. } | ProxyError::ResultTooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
            ProxyError::NotFound => StatusCode::NOT_FOUND,
            ProxyError::MethodNotAllowed { .. } => StatusCode::METHOD_NOT_ALLOWED,
            ProxyError::Conflict(_) => StatusCode::CONFLICT,
            ProxyError::MissingKey => StatusCode::UNAUTHORIZED,
            ProxyError::BadKey => StatusCode::FORBIDDEN,
        }
    }

    /// The synthetic response. The body is the human-readable cause plus a newline.
    pub fn response(&self) -> Response<Full<Bytes>> {
        let mut resp = Response::new(Full::new(Bytes::from(format!("{self}\n"))));
        *resp.status_mut() = self.status();
        let h = resp.headers_mut();
        h.insert(common::headers::PROXY_ERROR, HeaderValue::from_static(self.label()));
        h.insert(http::header::CONTENT_TYPE, HeaderValue::from_static("text/plain; charset=utf-8"));
        match self {
            // Bodies in memory are let go within a body read timeout at most; a store
            // that cannot write (a full disk) is worth another try soon.
            ProxyError::BodyMemoryFull | ProxyError::Unavailable(_) => {
                h.insert(http::header::RETRY_AFTER, HeaderValue::from_static("1"));
            }
            ProxyError::MethodNotAllowed { allow } => {
                h.insert(http::header::ALLOW, HeaderValue::from_static(allow));
            }
            // The rest of the body is never read: the connection cannot be reused.
            ProxyError::BodyTimeout { .. } => {
                h.insert(http::header::CONNECTION, HeaderValue::from_static("close"));
            }
            _ => {}
        }
        resp
    }

    /// Finds a `ProxyError` in an error's source chain (the forwarding client wraps what
    /// the connector returned).
    pub fn find_in<'a>(err: &'a (dyn std::error::Error + 'static)) -> Option<&'a ProxyError> {
        let mut cur: Option<&'a (dyn std::error::Error + 'static)> = Some(err);
        while let Some(e) = cur {
            if let Some(p) = e.downcast_ref::<ProxyError>() {
                return Some(p);
            }
            cur = e.source();
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::ProxyError;

    #[test]
    fn every_label_is_pre_created() {
        use crate::authority::AuthorityError;
        let errors = [
            ProxyError::BadTarget(AuthorityError::UnsupportedScheme("ftp".into())),
            ProxyError::BadTarget(AuthorityError::EmptyHost),
            ProxyError::ConnectTimeout { target: "t".into() },
            ProxyError::Connect { target: "t".into(), message: "m".into() },
            ProxyError::UpstreamProxy("p".into()),
            ProxyError::Upstream("u".into()),
            ProxyError::TooManyTunnels,
            ProxyError::BodyTooLarge { limit: 1 },
            ProxyError::ResultTooLarge("r".into()),
            ProxyError::BodyTimeout { after: std::time::Duration::from_secs(1) },
            ProxyError::BodyMemoryFull,
            ProxyError::BadRequest("b".into()),
            ProxyError::NotFound,
            ProxyError::MethodNotAllowed { allow: "GET" },
            ProxyError::Conflict("c".into()),
            ProxyError::Unavailable("u".into()),
            ProxyError::MissingKey,
            ProxyError::BadKey,
        ];
        for e in errors {
            assert!(ProxyError::OTHER_LABELS.contains(&e.label()), "{} not pre-created", e.label());
        }
    }

    #[test]
    fn retryable_refusals_say_when_and_405_says_what() {
        let unavailable = ProxyError::Unavailable("cannot store the result: No space left on device".into()).response();
        assert_eq!(unavailable.status(), 503);
        assert_eq!(unavailable.headers()[http::header::RETRY_AFTER], "1");
        let wrong = ProxyError::MethodNotAllowed { allow: "POST" }.response();
        assert_eq!(wrong.status(), 405);
        assert_eq!(wrong.headers()[http::header::ALLOW], "POST");
    }
}
