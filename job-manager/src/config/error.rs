//! Why a configuration was refused. Every variant names the setting and the rule; the
//! binary prints it and exits with [`EXIT_USAGE`].
/// `EX_USAGE` (64) from sysexits.h: the command was used incorrectly (a bad flag or
/// setting). Not `EX_CONFIG` (78), which sysexits.h reserves for a broken system
/// configuration file; linkerd2-proxy and the sidecar exit 64 for a bad setting too.
pub const EXIT_USAGE: i32 = 64;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {reason}")]
    ReadFile { path: String, reason: String },
    #[error("config file {path} is not valid: {reason}")]
    ParseFile { path: String, reason: String },
    #[error("invalid setting {setting}: {rule}")]
    Invalid { setting: String, rule: String },
}

impl ConfigError {
    pub fn invalid(key: &str, rule: impl Into<String>) -> Self {
        ConfigError::Invalid { setting: format!("`{key}` ({})", super::keys::env_name(key)), rule: rule.into() }
    }

    /// Stable label for logs.
    pub fn label(&self) -> &'static str {
        match self {
            ConfigError::ReadFile { .. } => "read_file",
            ConfigError::ParseFile { .. } => "parse_file",
            ConfigError::Invalid { .. } => "invalid",
        }
    }
}
