//! The job payload the API runtime reads and the result it reports (both documented in
//! `common/CONTRACTS.md`, "The API runtime").
//!
//! ```json
//! {"script": "const r = await $http.get('https://example.com/');\nassert.equal(r.statusCode, 200);",
//!  "secure": {"API_KEY": "..."}}
//! ```
use crate::engine::{Check, ErrorKind, Report, ScriptError};
use crate::log::Redactor;
use common::runtime_api::{RuntimeJob, RuntimeOutcome, RuntimeResult};
use serde::Deserialize;
use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::time::Duration;

/// Largest script accepted (the sidecar's job body limit is the other bound).
pub const MAX_SCRIPT_BYTES: usize = 512 * 1024;
/// What the script gets of the job's timeout. The job's clock started before this
/// process did (the sidecar came first), and the result still has to be posted: a tenth
/// is kept back, at least 1 s and at most 5 s, never more than half.
pub fn script_timeout(job_timeout_secs: u32) -> Duration {
    let total = Duration::from_secs(u64::from(job_timeout_secs.max(1)));
    let reserve = (total / 10).clamp(Duration::from_secs(1), Duration::from_secs(5)).min(total / 2);
    total - reserve
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Payload {
    script: String,
    #[serde(default)]
    secure: BTreeMap<String, String>,
}

/// The check a job asks for, or why the payload cannot be run.
pub fn check_of(job: &RuntimeJob, user_defined_variables: Option<&str>) -> Result<Check, String> {
    let p: Payload = serde_json::from_value(job.payload.clone())
        .map_err(|e| format!("payload is not an API check ({{\"script\": \"...\", \"secure\"?: {{...}}}}): {e}"))?;
    if p.script.len() > MAX_SCRIPT_BYTES {
        return Err(format!("script too large: {} bytes > {MAX_SCRIPT_BYTES}", p.script.len()));
    }
    if let Some(bad) = p.secure.keys().find(|k| !is_identifier(k)) {
        return Err(format!("secure credential name {bad:?} is not an identifier ([A-Za-z_$][A-Za-z0-9_$]*)"));
    }
    let mut env = serde_json::Map::new();
    let udv = match user_defined_variables.map(str::trim).filter(|s| !s.is_empty()) {
        None => Value::Object(Default::default()),
        Some(text) => match serde_json::from_str::<Value>(text) {
            Ok(v @ Value::Object(_)) => v,
            Ok(_) | Err(_) => return Err("USER_DEFINED_VARIABLES is not a JSON object".into()),
        },
    };
    env.insert("USER_DEFINED_VARIABLES".into(), udv);
    env.insert("JOB_ID".into(), json!(job.id.as_str()));
    env.insert("RUNTIME_TYPE".into(), json!(job.runtime_type));
    env.insert("ATTEMPT".into(), json!(job.attempt));
    Ok(Check { script: p.script, secure: p.secure, env, timeout: script_timeout(job.timeout_secs) })
}

fn is_identifier(s: &str) -> bool {
    let mut chars = s.chars();
    chars.next().is_some_and(|c| c.is_ascii_alphabetic() || c == '_' || c == '$')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '$')
}

/// The result of a payload that could not be run.
pub fn invalid_result(message: &str) -> RuntimeResult {
    let error = ScriptError {
        kind: ErrorKind::Internal,
        name: "InvalidJob".into(),
        message: message.into(),
        line: None,
        column: None,
        stack: None,
    };
    RuntimeResult {
        outcome: RuntimeOutcome::Failed,
        message: format!("invalid job: {message}"),
        output: json!({ "runtime": runtime_name(), "error": error }),
        duration_ms: Some(0),
    }
}

fn runtime_name() -> String {
    concat!("api-runtime/", env!("CARGO_PKG_VERSION")).to_string()
}

/// The result the runtime posts: outcome, a one-line message, and in `output` the error
/// (kind, name, message, line, column, stack), the console, the requests and their
/// timings. Every `$secure` value is redacted from all of it.
pub fn result_of(report: &Report, secure: &BTreeMap<String, String>) -> RuntimeResult {
    let redactor = Redactor::new(secure.values());
    let message = match &report.error {
        None => format!(
            "passed in {} ms ({} request{})",
            report.duration.as_millis(),
            report.requests.len(),
            if report.requests.len() == 1 { "" } else { "s" }
        ),
        Some(e) => e.summary(),
    };
    let mut output = json!({
        "runtime": runtime_name(),
        "passed": report.passed(),
        "duration_ms": report.duration.as_millis() as u64,
        "log": report.log.entries().collect::<Vec<_>>(),
        "log_dropped": report.log.dropped(),
        "requests": report.requests,
        "requests_dropped": report.requests_dropped,
    });
    if let Some(e) = &report.error {
        output["error"] = json!(e);
    }
    let mut message = Value::String(crate::log::truncate(&message, 2048));
    redactor.redact_json(&mut message);
    redactor.redact_json(&mut output);
    RuntimeResult {
        outcome: if report.passed() { RuntimeOutcome::Succeeded } else { RuntimeOutcome::Failed },
        message: message.as_str().unwrap_or_default().to_string(),
        output,
        duration_ms: Some(report.duration.as_millis() as u64),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use common::JobId;

    fn job(payload: Value) -> RuntimeJob {
        RuntimeJob {
            id: JobId::new("j1").unwrap(),
            runtime_type: "node-api-runtime".into(),
            timeout_secs: 10,
            attempt: 1,
            payload,
        }
    }

    #[test]
    fn a_payload_becomes_a_check_with_env_and_secure_values() {
        let c = check_of(&job(json!({"script": "1", "secure": {"KEY": "s3cret"}})), Some(r#"{"A": "b"}"#)).unwrap();
        assert_eq!(c.script, "1");
        assert_eq!(c.secure["KEY"], "s3cret");
        assert_eq!(c.env["USER_DEFINED_VARIABLES"], json!({"A": "b"}));
        assert_eq!(c.env["JOB_ID"], json!("j1"));
        assert_eq!(c.timeout, Duration::from_secs(9));
    }

    #[test]
    fn bad_payloads_are_named() {
        let e = check_of(&job(json!({"action": "fetch"})), None).unwrap_err();
        assert!(e.starts_with("payload is not an API check"), "{e}");
        let e = check_of(&job(json!({"script": "1", "secure": {"not-ok": "x"}})), None).unwrap_err();
        assert_eq!(e, r#"secure credential name "not-ok" is not an identifier ([A-Za-z_$][A-Za-z0-9_$]*)"#);
        let e = check_of(&job(json!({"script": "1"})), Some("[1]")).unwrap_err();
        assert_eq!(e, "USER_DEFINED_VARIABLES is not a JSON object");
        let big = "x".repeat(MAX_SCRIPT_BYTES + 1);
        let e = check_of(&job(json!({ "script": big })), None).unwrap_err();
        assert_eq!(e, format!("script too large: {} bytes > {MAX_SCRIPT_BYTES}", MAX_SCRIPT_BYTES + 1));
    }

    #[test]
    fn the_script_keeps_a_reserve_of_its_job_timeout_for_reporting() {
        assert_eq!(script_timeout(2), Duration::from_secs(1));
        assert_eq!(script_timeout(20), Duration::from_secs(18));
        assert_eq!(script_timeout(180), Duration::from_secs(175));
        assert_eq!(script_timeout(0), Duration::from_millis(500));
    }
}
