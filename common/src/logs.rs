//! JSON log lines, the same shape in both binaries: one flat object per line,
//!
//! ```json
//! {"timestamp":"2026-12-06T08:31:06.903762Z","level":"INFO","target":"sidecar::server",
//!  "message":"connection ended","job_id":"j-1","listener":"proxy","peer":"10.0.0.7:51234"}
//! ```
//!
//! `timestamp` (RFC 3339, UTC), `level`, `target` (the module that logged) and `message`
//! always come first, then `job_id` when the line is about a job, then the fields of
//! the spans the line was logged in (outermost first) and of the event itself. A field
//! appears once: an inner span's or the event's value replaces an outer one. An event
//! or span field named like one of the four fixed keys is written as `field.<name>`.
//! Numbers and booleans stay JSON numbers and booleans; everything else is a string.
use serde_json::Value;
use std::fmt;
use tracing::field::{Field, Visit};
use tracing::{Event, Subscriber};
use tracing_subscriber::fmt::format::{JsonFields, Writer};
use tracing_subscriber::fmt::time::{FormatTime, SystemTime};
use tracing_subscriber::fmt::{FmtContext, FormatEvent, FormatFields, FormattedFields, MakeWriter};
use tracing_subscriber::registry::LookupSpan;

/// The keys every line has, in this order.
pub const FIXED_KEYS: [&str; 4] = ["timestamp", "level", "target", "message"];

/// Checks one JSON log line against the shape above and returns its fields: an object
/// of scalars (no nested `span`/`spans`/`fields` objects), the fixed keys first and in
/// order, `job_id` next when present, no value that is a Debug-formatted `Option`
/// (`Some(..)`/`None`). The tests of both binaries run every line they log through it.
pub fn check_line(line: &str) -> Result<serde_json::Map<String, Value>, String> {
    let fail = |why: &str| Err(format!("{why}: {line}"));
    let Ok(Value::Object(obj)) = serde_json::from_str::<Value>(line) else { return fail("not a JSON object") };
    // serde_json's map sorts keys: find the written order in the line itself.
    let mut order: Vec<(usize, &str)> = Vec::new();
    for key in obj.keys() {
        let Some(at) = line.find(&format!("{}:", Value::String(key.clone()))) else { return fail("key not found") };
        order.push((at, key));
    }
    order.sort();
    let keys: Vec<&str> = order.into_iter().map(|(_, k)| k).collect();
    if keys.len() < FIXED_KEYS.len() || keys[..FIXED_KEYS.len()] != FIXED_KEYS {
        return fail("timestamp, level, target, message must come first");
    }
    if obj.contains_key("job_id") && keys[FIXED_KEYS.len()] != "job_id" {
        return fail("job_id must follow the fixed keys");
    }
    for (key, value) in &obj {
        match value {
            Value::Object(_) | Value::Array(_) | Value::Null => return fail(&format!("{key} is not flat")),
            Value::String(s) if s.starts_with("Some(") || s == "None" => {
                return fail(&format!("{key} is a Debug-formatted Option"))
            }
            _ => {}
        }
    }
    if FIXED_KEYS.iter().any(|k| !obj[*k].is_string()) {
        return fail("a fixed key is not a string");
    }
    Ok(obj)
}

/// The JSON log layer: [`FlatJson`] lines written to `writer` (stderr in the binaries).
pub fn json_layer<S, W>(writer: W) -> impl tracing_subscriber::Layer<S>
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    W: for<'w> MakeWriter<'w> + Send + Sync + 'static,
{
    tracing_subscriber::fmt::layer().with_writer(writer).fmt_fields(JsonFields::new()).event_format(FlatJson)
}

/// The [`FormatEvent`] behind [`json_layer`]; span fields are read as [`JsonFields`]
/// stored them.
#[derive(Clone, Copy, Debug, Default)]
pub struct FlatJson;

impl<S, N> FormatEvent<S, N> for FlatJson
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
{
    fn format_event(&self, ctx: &FmtContext<'_, S, N>, mut writer: Writer<'_>, event: &Event<'_>) -> fmt::Result {
        let meta = event.metadata();
        let mut timestamp = String::new();
        SystemTime.format_time(&mut Writer::new(&mut timestamp))?;
        let mut line = Line::default();
        if let Some(scope) = ctx.event_scope() {
            for span in scope.from_root() {
                let ext = span.extensions();
                let Some(stored) = ext.get::<FormattedFields<N>>() else { continue };
                if let Ok(Value::Object(fields)) = serde_json::from_str::<Value>(&stored.fields) {
                    for (key, value) in fields {
                        line.put(key, value);
                    }
                }
            }
        }
        event.record(&mut line);
        let head = [
            ("timestamp", Value::String(timestamp)),
            ("level", Value::String(meta.level().as_str().into())),
            ("target", Value::String(meta.target().into())),
            ("message", Value::String(line.message.take().unwrap_or_default())),
        ];
        writeln!(writer, "{}", render(head, line.fields))
    }
}

/// The fixed keys, then `job_id`, then the rest in order.
fn render(head: [(&str, Value); 4], mut fields: Vec<(String, Value)>) -> String {
    if let Some(i) = fields.iter().position(|(k, _)| k == "job_id") {
        let job_id = fields.remove(i);
        fields.insert(0, job_id);
    }
    let mut out = String::with_capacity(256);
    out.push('{');
    let pairs = head.into_iter().map(|(k, v)| (k.to_string(), v)).chain(fields);
    for (i, (key, value)) in pairs.enumerate() {
        if i > 0 {
            out.push(',');
        }
        out.push_str(&Value::String(key).to_string());
        out.push(':');
        out.push_str(&value.to_string());
    }
    out.push('}');
    out
}

/// An event's message and fields (after its spans' fields).
#[derive(Default)]
struct Line {
    message: Option<String>,
    fields: Vec<(String, Value)>,
}

impl Line {
    fn put(&mut self, key: String, value: Value) {
        let key = if FIXED_KEYS.contains(&key.as_str()) { format!("field.{key}") } else { key };
        match self.fields.iter_mut().find(|(k, _)| *k == key) {
            Some(slot) => slot.1 = value,
            None => self.fields.push((key, value)),
        }
    }

    fn record(&mut self, field: &Field, value: Value) {
        if field.name() == "message" && self.message.is_none() {
            self.message = Some(match value {
                Value::String(s) => s,
                other => other.to_string(),
            });
        } else {
            self.put(field.name().to_string(), value);
        }
    }
}

impl Visit for Line {
    fn record_f64(&mut self, field: &Field, value: f64) {
        let v = serde_json::Number::from_f64(value).map_or_else(|| Value::String(value.to_string()), Value::Number);
        self.record(field, v);
    }
    fn record_i64(&mut self, field: &Field, value: i64) {
        self.record(field, value.into());
    }
    fn record_u64(&mut self, field: &Field, value: u64) {
        self.record(field, value.into());
    }
    fn record_bool(&mut self, field: &Field, value: bool) {
        self.record(field, value.into());
    }
    fn record_str(&mut self, field: &Field, value: &str) {
        self.record(field, value.into());
    }
    fn record_error(&mut self, field: &Field, value: &(dyn std::error::Error + 'static)) {
        self.record(field, value.to_string().into());
    }
    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        self.record(field, format!("{value:?}").into());
    }
}

#[cfg(test)]
mod tests;
