//! The emulator's own endpoints under `/emulator/`, for tests in other processes.
use super::{error_response, full, Body, ServerState};
use crate::emulator::faults::FaultRule;
use crate::emulator::status::ApiError;
use bytes::Bytes;
use http::{Method, Response, StatusCode};
use serde_json::json;

/// `/emulator/faults` (GET list, POST add, DELETE clear), `/emulator/requests`
/// (GET log, DELETE clear), `/emulator/drop-watches` (POST).
pub(super) fn admin(state: &ServerState, method: &Method, segs: &[String], body: &Bytes) -> Response<Body> {
    let s: Vec<&str> = segs.iter().map(String::as_str).collect();
    match (method, s.as_slice()) {
        (&Method::GET, ["faults"]) => full(StatusCode::OK, &json!(state.faults.rules())),
        (&Method::POST, ["faults"]) => match serde_json::from_slice::<FaultRule>(body) {
            Ok(rule) => {
                state.faults.add(rule);
                full(StatusCode::CREATED, &json!(state.faults.rules()))
            }
            Err(e) => error_response(&ApiError::BadRequest(format!("bad fault rule: {e}"))),
        },
        (&Method::DELETE, ["faults"]) => {
            state.faults.clear();
            full(StatusCode::OK, &json!([]))
        }
        (&Method::GET, ["requests"]) => full(StatusCode::OK, &json!(state.log.snapshot())),
        (&Method::DELETE, ["requests"]) => {
            state.log.clear();
            full(StatusCode::OK, &json!([]))
        }
        (&Method::POST, ["drop-watches"]) => {
            state.watch_generation.send_modify(|g| *g += 1);
            full(StatusCode::OK, &json!({"dropped": true}))
        }
        _ => error_response(&ApiError::NoResource),
    }
}
