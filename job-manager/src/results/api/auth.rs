//! `CallerAuth`: the check both sidecar calls share — the internal API key, then the job
//! token for the job the path names (the router puts that [`JobId`] in the request's
//! extensions). It runs before any byte of the body is read, so an unauthenticated
//! caller cannot make the server buffer anything.
//!
//! An expired token is still taken for a job that runs on this replica's executor right
//! now (`RunsHere`): a token's expiry is wall-clock time, and a forward clock jump (NTP
//! step, VM resume) must not refuse the result of a job that is still in flight — the
//! sidecar would give up and the job be recorded as having reported nothing. The MAC
//! must still match (it is this job's token), and the result store keeps it single-use.
//! Minting expiries far enough ahead instead would lengthen every token's life and
//! still not cover an arbitrary jump.
use super::refusal::Refusal;
use super::Body;
use common::secret::Secret;
use common::token::{TokenError, TokenSigner};
use common::JobId;
use futures_util::future::{ready, Either, Ready};
use http::{Request, Response, StatusCode};
use std::sync::Arc;
use std::task::{Context, Poll};

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum AuthError {
    #[error("missing or wrong x-internal-api-key")]
    BadKey,
    #[error("missing x-job-token")]
    MissingToken,
    #[error("{0}")]
    Token(TokenError),
}

impl From<AuthError> for Refusal {
    fn from(e: AuthError) -> Self {
        match e {
            AuthError::BadKey => Refusal::new(StatusCode::UNAUTHORIZED, "bad_internal_api_key", e.to_string()),
            AuthError::MissingToken => Refusal::new(StatusCode::UNAUTHORIZED, "missing_job_token", e.to_string()),
            AuthError::Token(t) => {
                let status = match t {
                    TokenError::Malformed | TokenError::Expired => StatusCode::UNAUTHORIZED,
                    TokenError::BadSignature => StatusCode::FORBIDDEN,
                };
                Refusal::new(status, format!("job_token_{}", t.label()), t.to_string())
            }
        }
    }
}

/// Whether a job runs on this replica's executor now.
pub type RunsHere = Arc<dyn Fn(&JobId) -> bool + Send + Sync>;

/// What a caller is checked against. Shared: the stack is cloned for every request.
struct Credentials {
    key: Secret,
    signer: TokenSigner,
    runs_here: Option<RunsHere>,
}

/// Builds [`CallerAuth`] around a route's handler.
#[derive(Clone)]
pub struct CallerAuthLayer {
    credentials: Arc<Credentials>,
}

impl CallerAuthLayer {
    pub fn new(key: Secret, signer: TokenSigner) -> Self {
        Self { credentials: Arc::new(Credentials { key, signer, runs_here: None }) }
    }

    /// Take expired tokens of jobs `runs_here` says are running here (module docs).
    pub fn with_runs_here(self, runs_here: Option<RunsHere>) -> Self {
        let Credentials { key, signer, .. } = &*self.credentials;
        Self { credentials: Arc::new(Credentials { key: key.clone(), signer: signer.clone(), runs_here }) }
    }
}

impl<S> tower::Layer<S> for CallerAuthLayer {
    type Service = CallerAuth<S>;

    fn layer(&self, inner: S) -> CallerAuth<S> {
        CallerAuth { inner, credentials: self.credentials.clone() }
    }
}

#[derive(Clone)]
pub struct CallerAuth<S> {
    inner: S,
    credentials: Arc<Credentials>,
}

impl<S> CallerAuth<S> {
    fn check<B>(&self, req: &Request<B>) -> Result<(), AuthError> {
        let key = req.headers().get(common::headers::INTERNAL_API_KEY).map(|v| v.as_bytes()).unwrap_or_default();
        if !self.credentials.key.matches(key) {
            tracing::warn!("refused: missing or wrong internal API key");
            return Err(AuthError::BadKey);
        }
        let token = req
            .headers()
            .get(common::headers::JOB_TOKEN)
            .and_then(|v| v.to_str().ok())
            .ok_or(AuthError::MissingToken)?;
        let id = req.extensions().get::<JobId>().expect("the router puts the path's job id in the extensions");
        match self.credentials.signer.verify(id, token, crate::clock::unix_secs()) {
            Ok(_) => Ok(()),
            Err(TokenError::Expired) if self.credentials.runs_here.as_ref().is_some_and(|runs| runs(id)) => {
                tracing::warn!(job_id = %id, "accepting an expired job token: the job still runs here (clock jump?)");
                Ok(())
            }
            Err(e) => {
                tracing::warn!(reason = e.label(), "refused: bad job token");
                Err(AuthError::Token(e))
            }
        }
    }
}

impl<S, B> tower::Service<Request<B>> for CallerAuth<S>
where
    S: tower::Service<Request<B>, Response = Response<Body>, Error = Refusal>,
{
    type Response = Response<Body>;
    type Error = Refusal;
    type Future = Either<Ready<Result<Response<Body>, Refusal>>, S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Refusal>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<B>) -> Self::Future {
        match self.check(&req) {
            Ok(()) => Either::Right(self.inner.call(req)),
            Err(e) => Either::Left(ready(Err(e.into()))),
        }
    }
}
