//! Logs: tracing-subscriber, text or JSON ([`common::logs`]: the job manager's shape),
//! to stderr. Span fields (job id, listener, peer) appear on every line of a request. Depends on nothing else in the crate: configuration
//! uses [`LogFormat`] and [`log_filter`] from here to validate its log settings.
use tracing_subscriber::filter::{LevelFilter, ParseError, Targets};
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;

/// The log filter: `LEVEL` and/or `TARGET=LEVEL` directives separated by commas
/// (`info`, `warn,sidecar=debug`). `Targets` rather than `EnvFilter`: the sidecar never
/// needs span-field or regex directives, and `EnvFilter` links a regex engine into a
/// binary whose resident size is a goal (<= 6 MB idle).
pub fn log_filter(spec: &str) -> Result<Targets, ParseError> {
    let directives: Vec<&str> = spec.split(',').map(str::trim).filter(|d| !d.is_empty()).collect();
    if directives.is_empty() {
        return Ok(Targets::new().with_default(LevelFilter::INFO));
    }
    directives.join(",").parse()
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LogFormat {
    Text,
    Json,
}

pub fn init(format: LogFormat, level: &str) {
    let filter = log_filter(level).unwrap_or_else(|_| Targets::new().with_default(LevelFilter::INFO));
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    // A second init (tests running several sidecars in one process) is harmless.
    let registry = tracing_subscriber::registry().with(filter);
    let _ = match format {
        LogFormat::Text => registry
            .with(tracing_subscriber::fmt::layer().with_writer(std::io::stderr).with_target(false).with_ansi(ansi))
            .try_init(),
        LogFormat::Json => registry.with(common::logs::json_layer(std::io::stderr)).try_init(),
    };
}

#[cfg(test)]
mod tests {
    use super::*;
    use tracing::Level;

    #[test]
    fn filters_parse_with_or_without_spaces_and_unknown_levels_are_refused() {
        let t = log_filter("warn, sidecar=debug").unwrap();
        assert!(t.would_enable("sidecar::proxy", &Level::DEBUG));
        assert!(!t.would_enable("hyper", &Level::INFO));
        assert!(t.would_enable("hyper", &Level::WARN));
        let t = log_filter("").unwrap();
        assert!(t.would_enable("sidecar", &Level::INFO));
        assert!(!t.would_enable("sidecar", &Level::DEBUG));
        assert!(log_filter("sidecar=loud").is_err());
        assert!(log_filter("a=b=c").is_err());
    }
}
