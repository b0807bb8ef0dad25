//! `BufferBody`: reads a request body whole, within a size and a time limit, and hands
//! the handler `Request<Bytes>`. A declared `Content-Length` over the limit is refused
//! before reading; a chunked body is cut off at the limit; a slow sender at the timeout.
use super::refusal::Refusal;
use super::Body;
use bytes::Bytes;
use futures_util::future::BoxFuture;
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Limited};
use std::task::{Context, Poll};
use std::time::Duration;

#[derive(Debug, thiserror::Error)]
pub enum BodyError {
    #[error("body exceeds {0} bytes")]
    TooLarge(usize),
    #[error("body not received in time")]
    Timeout,
    #[error("cannot read body: {0}")]
    Unreadable(String),
}

impl From<BodyError> for Refusal {
    fn from(e: BodyError) -> Self {
        let (status, code) = match e {
            BodyError::TooLarge(_) => (StatusCode::PAYLOAD_TOO_LARGE, "body_too_large"),
            BodyError::Timeout => (StatusCode::REQUEST_TIMEOUT, "body_timeout"),
            BodyError::Unreadable(_) => (StatusCode::BAD_REQUEST, "bad_body"),
        };
        Refusal::new(status, code, e.to_string())
    }
}

/// Builds [`BufferBody`] around a handler that takes `Request<Bytes>`.
#[derive(Clone, Copy)]
pub struct BufferBodyLayer {
    max_bytes: usize,
    timeout: Duration,
}

impl BufferBodyLayer {
    pub fn new(max_bytes: usize, timeout: Duration) -> Self {
        Self { max_bytes, timeout }
    }
}

impl<S> tower::Layer<S> for BufferBodyLayer {
    type Service = BufferBody<S>;

    fn layer(&self, inner: S) -> BufferBody<S> {
        BufferBody { inner, limits: *self }
    }
}

#[derive(Clone)]
pub struct BufferBody<S> {
    inner: S,
    limits: BufferBodyLayer,
}

async fn read<B>(body: B, declared: Option<u64>, limits: BufferBodyLayer) -> Result<Bytes, BodyError>
where
    B: hyper::body::Body<Data = Bytes>,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let max = limits.max_bytes;
    if declared.is_some_and(|n| n > max as u64) {
        return Err(BodyError::TooLarge(max));
    }
    match tokio::time::timeout(limits.timeout, Limited::new(body, max).collect()).await {
        Err(_) => Err(BodyError::Timeout),
        Ok(Ok(collected)) => Ok(collected.to_bytes()),
        Ok(Err(e)) if e.is::<http_body_util::LengthLimitError>() => Err(BodyError::TooLarge(max)),
        Ok(Err(e)) => Err(BodyError::Unreadable(e.to_string())),
    }
}

impl<S, B> tower::Service<Request<B>> for BufferBody<S>
where
    S: tower::Service<Request<Bytes>, Response = Response<Body>, Error = Refusal> + Clone + Send + 'static,
    S::Future: Send,
    B: hyper::body::Body<Data = Bytes> + Send + 'static,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    type Response = Response<Body>;
    type Error = Refusal;
    type Future = BoxFuture<'static, Result<Response<Body>, Refusal>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Refusal>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<B>) -> Self::Future {
        // The clone that was driven to ready serves this call; the fresh clone stays.
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        let limits = self.limits;
        Box::pin(async move {
            let (parts, body) = req.into_parts();
            let declared = parts
                .headers
                .get(http::header::CONTENT_LENGTH)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.parse::<u64>().ok());
            let bytes = read(body, declared, limits).await?;
            inner.call(Request::from_parts(parts, bytes)).await
        })
    }
}
