//! Reading a poll response job by job. One job the broker got wrong (a negative
//! `timeout_secs`, an id with `/`, an unknown field, a payload nested too deep) must not
//! make the whole batch unreadable: every job in it would stay leased, come back together
//! after each visibility timeout and never run. So the envelope is read first with each
//! job kept as raw JSON, then each job on its own. Pure: no I/O in here.
//!
//! Bounds still hold: the whole body is capped by the client before it gets here
//! (16 MiB), reading the envelope keeps no recursion (serde_json skips a raw value with a
//! heap stack, bounded by that size), and each job is parsed with serde_json's nesting
//! limit (128) counted from the job itself.
use common::{Job, JobId};
use serde::Deserialize;
use serde_json::value::RawValue;

/// The jobs of one poll response: those that could be read, and those that could not.
#[derive(Debug, Default, PartialEq)]
pub struct PolledBatch {
    pub jobs: Vec<Job>,
    pub unreadable: Vec<UnreadableJob>,
    /// How long the jobs stay leased, when the broker said so readably (informational:
    /// the dispatcher acks or releases long before).
    pub visibility_timeout_secs: Option<u32>,
}

impl From<common::broker::PollResponse> for PolledBatch {
    fn from(r: common::broker::PollResponse) -> Self {
        Self { jobs: r.jobs, unreadable: Vec::new(), visibility_timeout_secs: Some(r.visibility_timeout_secs) }
    }
}

impl PolledBatch {
    pub fn len(&self) -> usize {
        self.jobs.len() + self.unreadable.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// A job in a poll response that is not a valid [`Job`], and what of its lease could be
/// made out: its id when that is a valid [`JobId`] (then it can be rejected), and its
/// attempt (1 when unreadable too).
#[derive(Debug, Clone, PartialEq)]
pub struct UnreadableJob {
    pub id: Option<JobId>,
    /// The id as sent, for logs: escaped, at most [`LOGGED_ID_CHARS`] characters.
    pub raw_id: String,
    pub attempt: u32,
    /// Why it could not be read (serde's message, with line and column).
    pub reason: String,
}

/// How much of an unreadable id goes into a log line.
pub const LOGGED_ID_CHARS: usize = 64;

/// Why a poll response could not be read at all (not JSON, no `jobs` array).
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("poll response is unreadable: {0}")]
pub struct UnreadableBatch(pub String);

#[derive(Deserialize)]
struct Envelope<'a> {
    #[serde(borrow)]
    jobs: Vec<&'a RawValue>,
    // Read leniently: a bad value here cannot block a batch either.
    #[serde(default, borrow)]
    visibility_timeout_secs: Option<&'a RawValue>,
}

/// The lease handle of a job that is not a [`Job`]: only its id and attempt, anything
/// else ignored (without recursion, however deep).
#[derive(Deserialize)]
struct Handle<'a> {
    #[serde(default, borrow)]
    id: Option<&'a RawValue>,
    #[serde(default, borrow)]
    attempt: Option<&'a RawValue>,
}

/// Reads a poll response's body: `Err` only when the envelope itself is unreadable.
pub fn parse_poll_response(body: &[u8]) -> Result<PolledBatch, UnreadableBatch> {
    let envelope: Envelope<'_> = serde_json::from_slice(body).map_err(|e| UnreadableBatch(e.to_string()))?;
    let mut batch = PolledBatch {
        visibility_timeout_secs: envelope.visibility_timeout_secs.and_then(|v| serde_json::from_str(v.get()).ok()),
        ..PolledBatch::default()
    };
    for raw in envelope.jobs {
        match serde_json::from_str::<Job>(raw.get()) {
            Ok(job) => batch.jobs.push(job),
            Err(e) => batch.unreadable.push(unreadable(raw, e.to_string())),
        }
    }
    Ok(batch)
}

fn unreadable(raw: &RawValue, reason: String) -> UnreadableJob {
    let handle = serde_json::from_str::<Handle<'_>>(raw.get()).ok();
    let raw_id = handle.as_ref().and_then(|h| h.id);
    let id_text = raw_id.map(|r| serde_json::from_str::<String>(r.get()).unwrap_or_else(|_| r.get().to_string()));
    let id = raw_id.and_then(|r| serde_json::from_str::<String>(r.get()).ok()).and_then(|s| JobId::new(s).ok());
    let attempt = handle
        .and_then(|h| h.attempt)
        .and_then(|a| serde_json::from_str::<u32>(a.get()).ok())
        .filter(|a| *a >= 1)
        .unwrap_or(1);
    UnreadableJob { id, raw_id: id_text.as_deref().map_or_else(|| "(no id)".to_string(), loggable), attempt, reason }
}

/// `s` fit for a log line: control and non-ASCII characters escaped, at most
/// [`LOGGED_ID_CHARS`] characters of it, `…` when cut.
pub fn loggable(s: &str) -> String {
    let mut out: String = s.chars().take(LOGGED_ID_CHARS).flat_map(char::escape_default).collect();
    if s.chars().nth(LOGGED_ID_CHARS).is_some() {
        out.push('…');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn batch(jobs: &[&str]) -> String {
        format!(r#"{{"jobs":[{}],"visibility_timeout_secs":30}}"#, jobs.join(","))
    }

    const GOOD: &str = r#"{"id":"good","runtime_type":"rt","timeout_secs":5}"#;

    #[test]
    fn each_bad_job_is_set_apart_and_the_rest_of_the_batch_is_read() {
        struct Case {
            name: &'static str,
            job: String,
            id: Option<&'static str>,
            raw_id: &'static str,
            attempt: u32,
            reason: &'static str,
        }
        let deep = format!("{}1{}", "[".repeat(200), "]".repeat(200));
        let cases = [
            Case {
                name: "negative timeout",
                job: r#"{"id":"neg","runtime_type":"rt","timeout_secs":-1,"attempt":3}"#.into(),
                id: Some("neg"),
                raw_id: "neg",
                attempt: 3,
                reason: "invalid value: integer `-1`, expected u32",
            },
            Case {
                name: "id with a slash",
                job: r#"{"id":"a/b","runtime_type":"rt","timeout_secs":5}"#.into(),
                id: None,
                raw_id: "a/b",
                attempt: 1,
                reason: "job id may only contain ASCII letters, digits, '-', '_' and '.' (found '/')",
            },
            Case {
                name: "non-ASCII id",
                job: r#"{"id":"jöb\n","runtime_type":"rt","timeout_secs":5}"#.into(),
                id: None,
                raw_id: "j\\u{f6}b\\n",
                attempt: 1,
                reason: "job id may only contain ASCII letters, digits, '-', '_' and '.' (found 'ö')",
            },
            Case {
                name: "unknown field",
                job: r#"{"id":"unk","runtime_type":"rt","timeout_secs":5,"priority":9}"#.into(),
                id: Some("unk"),
                raw_id: "unk",
                attempt: 1,
                reason: "unknown field `priority`",
            },
            Case {
                name: "nesting over 128",
                job: format!(r#"{{"id":"deep","runtime_type":"rt","timeout_secs":5,"payload":{deep}}}"#),
                id: Some("deep"),
                raw_id: "deep",
                attempt: 1,
                reason: "recursion limit exceeded",
            },
            Case {
                name: "not an object",
                job: "42".into(),
                id: None,
                raw_id: "(no id)",
                attempt: 1,
                reason: "invalid type: integer `42`, expected struct Job",
            },
            Case {
                name: "numeric id",
                job: r#"{"id":7,"runtime_type":"rt","timeout_secs":5}"#.into(),
                id: None,
                raw_id: "7",
                attempt: 1,
                reason: "invalid type: integer `7`, expected a string",
            },
        ];
        for c in cases {
            let body = batch(&[GOOD, &c.job, GOOD.replace("good", "good2").as_str()]);
            let b = parse_poll_response(body.as_bytes()).unwrap_or_else(|e| panic!("{}: {e}", c.name));
            let ids: Vec<&str> = b.jobs.iter().map(|j| j.id.as_str()).collect();
            assert_eq!(ids, ["good", "good2"], "{}", c.name);
            assert_eq!(b.unreadable.len(), 1, "{}", c.name);
            let u = &b.unreadable[0];
            assert_eq!(u.id.as_ref().map(JobId::as_str), c.id, "{}", c.name);
            assert_eq!(u.raw_id, c.raw_id, "{}", c.name);
            assert_eq!(u.attempt, c.attempt, "{}", c.name);
            assert!(u.reason.starts_with(c.reason), "{}: {}", c.name, u.reason);
        }
    }

    #[test]
    fn a_body_that_is_not_a_poll_response_is_unreadable_as_a_whole() {
        for body in ["<html>bad gateway</html>", "", r#"{"jobs":{}}"#, r#"{"visibility_timeout_secs":1}"#] {
            assert!(parse_poll_response(body.as_bytes()).is_err(), "{body:?}");
        }
        let b = parse_poll_response(br#"{"jobs":[],"visibility_timeout_secs":-5,"extra":1}"#).unwrap();
        assert!(b.is_empty(), "the envelope's other fields cannot block a batch");
    }

    #[test]
    fn the_envelope_is_read_without_recursion_however_deep_a_job() {
        let deep = format!("{}1{}", "[".repeat(100_000), "]".repeat(100_000));
        let b = parse_poll_response(batch(&[&deep, GOOD]).as_bytes()).unwrap();
        assert_eq!((b.jobs.len(), b.unreadable.len()), (1, 1));
    }

    #[test]
    fn logged_ids_are_escaped_and_cut() {
        assert_eq!(loggable("ok-1"), "ok-1");
        assert_eq!(loggable("a\u{1b}[31m"), "a\\u{1b}[31m");
        let long = loggable(&"x".repeat(500));
        assert_eq!(long, format!("{}…", "x".repeat(LOGGED_ID_CHARS)));
    }
}
