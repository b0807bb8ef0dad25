//! Logging: tracing-subscriber, text or JSON. Every line about a job carries its id:
//! the dispatcher, executors and result API run inside a `job`/`result_api`/`deliver`
//! span with a `job_id` field, which text logs print as a prefix and JSON logs
//! ([`common::logs`], the sidecar's shape) as a top-level `job_id`. Those spans are created at ERROR level on purpose: a span below
//! the configured level is disabled and its fields vanish from every line inside it.
use serde::{Deserialize, Serialize};
use tracing_subscriber::EnvFilter;

/// How log lines are written (`logFormat`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    #[default]
    Text,
    Json,
}

/// The seed's log level names -> a tracing filter directive.
pub fn level_directive(level: &str) -> &'static str {
    match level.trim().to_ascii_uppercase().as_str() {
        "ALL" | "TRACE" => "trace",
        "DEBUG" => "debug",
        "WARN" => "warn",
        "ERROR" | "FATAL" => "error",
        "OFF" => "off",
        _ => "info",
    }
}

/// Install the global subscriber. `RUST_LOG`, when set, overrides the configured level
/// (for debugging one module). Safe to call twice: the second call is a no-op.
pub fn init(level: &str, format: LogFormat) {
    let filter = EnvFilter::try_from_env("RUST_LOG").unwrap_or_else(|_| EnvFilter::new(level_directive(level)));
    use std::io::IsTerminal;
    use tracing_subscriber::layer::SubscriberExt;
    use tracing_subscriber::util::SubscriberInitExt;
    let registry = tracing_subscriber::registry().with(filter);
    let _ = match format {
        LogFormat::Json => registry.with(common::logs::json_layer(std::io::stderr)).try_init(),
        LogFormat::Text => registry
            .with(
                tracing_subscriber::fmt::layer()
                    .with_writer(std::io::stderr)
                    .with_ansi(std::io::stderr().is_terminal())
                    .with_target(false),
            )
            .try_init(),
    };
}

#[cfg(test)]
mod tests {
    #[test]
    fn seed_levels_map() {
        for (seed, d) in [("ALL", "trace"), ("debug", "debug"), ("INFO", "info"), ("FATAL", "error"), ("OFF", "off")] {
            assert_eq!(super::level_directive(seed), d);
        }
    }
}
