//! What ended a script, in words and located in `check.js` where QuickJS says.
use super::SCRIPT_NAME;
use rquickjs::Value;
use serde::{Deserialize, Serialize};

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorKind {
    /// An `assert` call failed.
    Assertion,
    /// The script threw (or its promise rejected with) something else.
    Error,
    /// The script does not parse.
    Syntax,
    /// The check's deadline passed while the script still ran or waited.
    Timeout,
    /// The heap limit was reached.
    OutOfMemory,
    /// A promise was rejected and nothing handled it.
    UnhandledRejection,
    /// The script waits for a promise that nothing can settle any more.
    NeverSettled,
    /// The runtime could not run the script at all.
    Internal,
}

/// Why a check failed, located in the script when the engine knows where.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ScriptError {
    pub kind: ErrorKind,
    pub name: String,
    pub message: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub line: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub column: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stack: Option<String>,
}

impl ScriptError {
    pub(super) fn new(kind: ErrorKind, name: &str, message: impl Into<String>) -> Self {
        Self { kind, name: name.into(), message: message.into(), line: None, column: None, stack: None }
    }

    /// One line: `AssertionError: 404 == 200 (check.js:4:8)`.
    pub fn summary(&self) -> String {
        let first = self.message.lines().filter(|l| !l.trim().is_empty()).collect::<Vec<_>>().join(" ");
        let place = match (self.line, self.column) {
            (Some(l), Some(c)) => format!(" ({SCRIPT_NAME}:{l}:{c})"),
            (Some(l), None) => format!(" ({SCRIPT_NAME}:{l})"),
            _ => String::new(),
        };
        format!("{}: {first}{place}", self.name)
    }
}

const NO_MODULES: &str =
    "checks run without modules (no import, no require); use the globals $http, assert, console, $env, $secure, setTimeout";

/// `import x from 'y'` does not parse in a script and `import('y')` finds no loader: say
/// why in words, not as a parser's complaint.
pub(super) fn explain_modules(e: &mut ScriptError, script: &str) {
    let import_line = e
        .line
        .and_then(|l| script.lines().nth(l.saturating_sub(1) as usize))
        .map(str::trim_start)
        .is_some_and(|t| t.starts_with("import ") || t.starts_with("import{") || t.starts_with("export "));
    if e.kind == ErrorKind::Syntax && import_line {
        e.message = format!("import/export declarations are not available: {NO_MODULES} ({})", e.message);
    } else if let Some(name) = e.message.strip_prefix("could not load module ") {
        e.message = format!("import({name}) is not available: {NO_MODULES}");
    }
}

/// Name, message, stack and the script location of a thrown value.
pub(super) fn describe_value(value: &Value<'_>) -> ScriptError {
    let Some(obj) = value.as_object() else {
        let text = value
            .as_string()
            .and_then(|s| s.to_string().ok())
            .map(|s| crate::log::truncate(&s, 4096))
            .unwrap_or_else(|| format!("{value:?}").chars().take(200).collect());
        return ScriptError::new(ErrorKind::Error, "Error", format!("the script threw a non-error value: {text}"));
    };
    // Bounded: a script may throw an error with a message of many megabytes.
    let get = |k: &str| {
        obj.get::<_, Option<rquickjs::Coerced<String>>>(k).ok().flatten().map(|c| crate::log::truncate(&c.0, 4096))
    };
    let name = get("name").unwrap_or_else(|| "Error".into());
    let message = get("message").unwrap_or_default();
    let stack = get("stack");
    let kind = if name == "AssertionError" {
        ErrorKind::Assertion
    } else if message == "out of memory" || (name == "InternalError" && message.contains("out of memory")) {
        ErrorKind::OutOfMemory
    } else {
        ErrorKind::Error
    };
    let mut e = ScriptError::new(kind, &name, message);
    if let Some((line, column)) = stack.as_deref().and_then(locate) {
        e.line = Some(line);
        e.column = column;
    }
    e.stack = stack;
    e
}

/// The first stack frame in the script: `at f (check.js:3:7)` or `at check.js:3:7`.
pub fn locate(stack: &str) -> Option<(u32, Option<u32>)> {
    stack.lines().find_map(|line| {
        let at = line.find(SCRIPT_NAME)?;
        let rest = &line[at + SCRIPT_NAME.len()..];
        let rest = rest.strip_prefix(':')?;
        let end = rest.find(|c: char| !c.is_ascii_digit() && c != ':').unwrap_or(rest.len());
        let mut parts = rest[..end].split(':');
        let line_no = parts.next()?.parse().ok()?;
        let column = parts.next().and_then(|c| c.parse().ok());
        Some((line_no, column))
    })
}
