//! How a configuration key is spelled in the environment (`poll.intervalMs` ->
//! `JM_POLL_INTERVAL_MS`): loading reads these names, errors and `--list-settings` show them.

/// `checkTimeout` -> `CHECK_TIMEOUT`, `intervalMs` -> `INTERVAL_MS`.
pub fn screaming_snake(camel: &str) -> String {
    let mut out = String::with_capacity(camel.len() + 4);
    for (i, c) in camel.chars().enumerate() {
        if c.is_ascii_uppercase() && i > 0 {
            out.push('_');
        }
        out.push(c.to_ascii_uppercase());
    }
    out
}

/// The environment variable of a dotted key path: `poll.intervalMs` -> `JM_POLL_INTERVAL_MS`.
pub fn env_name(key_path: &str) -> String {
    let parts: Vec<String> = key_path.split('.').map(screaming_snake).collect();
    format!("JM_{}", parts.join("_"))
}
