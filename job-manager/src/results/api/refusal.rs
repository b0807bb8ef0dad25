//! Why the result API refused a request, and the one place a refusal becomes the JSON
//! error a client sees ([`rescue`]). Each layer has its own error type with a status and
//! a stable code; they meet here as a [`Refusal`].
use super::Body;
use bytes::Bytes;
use common::broker::ErrorBody;
use http::{Response, StatusCode};
use http_body_util::Full;

/// A refused request: the status, the stable `error` code and a message for humans.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    pub status: StatusCode,
    pub code: String,
    pub message: String,
}

impl Refusal {
    pub fn new(status: StatusCode, code: impl Into<String>, message: impl Into<String>) -> Self {
        Self { status, code: code.into(), message: message.into() }
    }

    pub fn into_response(self) -> Response<Body> {
        json_response(self.status, &ErrorBody::new(&self.code, self.message))
    }
}

/// The rescue: what a route's stack answers, refusals included, as the client sees it.
pub fn rescue(result: Result<Response<Body>, Refusal>) -> Response<Body> {
    result.unwrap_or_else(Refusal::into_response)
}

pub fn json_response(status: StatusCode, body: &impl serde::Serialize) -> Response<Body> {
    Response::builder()
        .status(status)
        .header(http::header::CONTENT_TYPE, "application/json")
        .body(Full::new(Bytes::from(serde_json::to_vec(body).expect("serializes"))))
        .expect("valid response")
}

pub fn text(status: StatusCode, body: impl Into<Bytes>, content_type: &str) -> Response<Body> {
    Response::builder()
        .status(status)
        .header(http::header::CONTENT_TYPE, content_type)
        .body(Full::new(body.into()))
        .expect("valid response")
}
