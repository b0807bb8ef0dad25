//! The script's console, captured and bounded, and the redaction of `$secure` values.
//!
//! A flood keeps the first `head` lines and the last `tail` lines (the ones just before a
//! failure are usually the interesting ones) and counts what it dropped in between; each
//! line is cut at `max_line_bytes`.
use serde::{Deserialize, Serialize};
use std::collections::VecDeque;
use std::time::Instant;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Level {
    Log,
    Info,
    Warn,
    Error,
    Debug,
}

impl Level {
    pub fn parse(s: &str) -> Self {
        match s {
            "info" => Level::Info,
            "warn" => Level::Warn,
            "error" => Level::Error,
            "debug" => Level::Debug,
            _ => Level::Log,
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LogLimits {
    pub head: usize,
    pub tail: usize,
    pub max_line_bytes: usize,
}

impl Default for LogLimits {
    fn default() -> Self {
        Self { head: 200, tail: 50, max_line_bytes: 1024 }
    }
}

#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct LogEntry {
    /// Milliseconds after the script started.
    pub t_ms: u64,
    pub level: Level,
    pub text: String,
}

#[derive(Clone, Debug)]
pub struct LogBuffer {
    limits: LogLimits,
    started: Instant,
    head: Vec<LogEntry>,
    tail: VecDeque<LogEntry>,
    dropped: u64,
}

impl LogBuffer {
    pub fn new(limits: LogLimits, started: Instant) -> Self {
        Self { limits, started, head: Vec::new(), tail: VecDeque::new(), dropped: 0 }
    }

    pub fn push(&mut self, level: Level, text: &str) {
        let entry = LogEntry {
            t_ms: self.started.elapsed().as_millis() as u64,
            level,
            text: truncate(text, self.limits.max_line_bytes),
        };
        if self.head.len() < self.limits.head {
            self.head.push(entry);
            return;
        }
        if self.limits.tail == 0 {
            self.dropped += 1;
            return;
        }
        if self.tail.len() == self.limits.tail {
            self.tail.pop_front();
            self.dropped += 1;
        }
        self.tail.push_back(entry);
    }

    /// The kept lines in order; a gap is marked by [`Self::dropped`].
    pub fn entries(&self) -> impl Iterator<Item = &LogEntry> {
        self.head.iter().chain(self.tail.iter())
    }

    pub fn dropped(&self) -> u64 {
        self.dropped
    }
}

/// At most `max` bytes of `s` (on a char boundary), saying how much was cut.
pub fn truncate(s: &str, max: usize) -> String {
    if s.len() <= max {
        return s.to_string();
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}... ({} more bytes)", &s[..end], s.len() - end)
}

pub const REDACTED: &str = "[REDACTED]";

/// Replaces every `$secure` value wherever it appears, longest first (so a value that
/// contains another is hidden whole). Empty values are ignored.
#[derive(Clone, Debug, Default)]
pub struct Redactor {
    values: Vec<String>,
}

impl Redactor {
    pub fn new<'a>(values: impl IntoIterator<Item = &'a String>) -> Self {
        let mut values: Vec<String> = values.into_iter().filter(|v| !v.is_empty()).cloned().collect();
        values.sort_by_key(|v| std::cmp::Reverse(v.len()));
        values.dedup();
        Self { values }
    }

    pub fn redact(&self, s: &str) -> String {
        let mut out = s.to_string();
        for v in &self.values {
            if out.contains(v.as_str()) {
                out = out.replace(v.as_str(), REDACTED);
            }
        }
        out
    }

    /// Every string (and object key) of a JSON value.
    pub fn redact_json(&self, v: &mut serde_json::Value) {
        if self.values.is_empty() {
            return;
        }
        match v {
            serde_json::Value::String(s) => *s = self.redact(s),
            serde_json::Value::Array(a) => a.iter_mut().for_each(|x| self.redact_json(x)),
            serde_json::Value::Object(o) => {
                let entries = std::mem::take(o);
                for (k, mut x) in entries {
                    self.redact_json(&mut x);
                    o.insert(self.redact(&k), x);
                }
            }
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_flood_keeps_the_head_and_the_tail_and_counts_the_rest() {
        let mut log = LogBuffer::new(LogLimits { head: 2, tail: 2, max_line_bytes: 100 }, Instant::now());
        for i in 0..10 {
            log.push(Level::Log, &format!("line {i}"));
        }
        let kept: Vec<&str> = log.entries().map(|e| e.text.as_str()).collect();
        assert_eq!(kept, ["line 0", "line 1", "line 8", "line 9"]);
        assert_eq!(log.dropped(), 6);
    }

    #[test]
    fn long_lines_are_cut_on_a_char_boundary() {
        assert_eq!(truncate("abcdef", 3), "abc... (3 more bytes)");
        assert_eq!(truncate("ééé", 3), "é... (4 more bytes)");
        assert_eq!(truncate("short", 10), "short");
    }

    #[test]
    fn secure_values_are_redacted_longest_first_in_keys_and_values() {
        let secrets = ["abc".to_string(), "abcdef".to_string(), String::new()];
        let r = Redactor::new(secrets.iter());
        assert_eq!(r.redact("token=abcdef and abc"), "token=[REDACTED] and [REDACTED]");
        let mut v = serde_json::json!({"abc": ["x abcdef", 1, {"k": "abc"}]});
        r.redact_json(&mut v);
        assert_eq!(v, serde_json::json!({"[REDACTED]": ["x [REDACTED]", 1, {"k": "[REDACTED]"}]}));
    }
}
