//! Configuration: the model (plain data + defaults), loading with precedence
//! (defaults < file < `JM_*` env < flags), and one validation pass.
mod error;
mod keys;
mod load;
pub mod model;
mod validate;

pub use error::{ConfigError, EXIT_USAGE};
pub use keys::env_name;
pub use load::{
    config_file_path, load, parse_bool, parse_file, redacted_yaml, settings_table, EnvLookup, FlagOverride, ProcessEnv,
    ENV_CONFIG_FILE,
};
pub use model::Config;
pub use validate::{is_cidr, is_dns_label, user_defined_variables, validate, Validated, EMBEDDED_BROKER, LOG_LEVELS};

#[cfg(test)]
mod tests;
