//! Why a configuration was refused. Every variant names the setting and the rule; the
//! binary prints it and exits with [`EXIT_CONFIG`].
/// `EX_CONFIG` from sysexits.h: the conventional exit status for a bad configuration.
pub const EXIT_CONFIG: i32 = 64;

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
        ConfigError::Invalid { setting: format!("`{key}` ({})", super::load::env_name(key)), rule: rule.into() }
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
