//! Loading with precedence: built-in defaults < YAML file < `JM_*` environment < flags.
//!
//! The environment is read through [`EnvLookup`] so tests pass a map and never call
//! `set_var`. Env names are derived from the model itself (every leaf of the serialized
//! defaults), so a new setting in `model.rs` gets its `JM_*` variable for free and the
//! names always match `common/CONTRACTS.md`: `JM_` + camelCase keys in SCREAMING_SNAKE,
//! nested keys joined by `_`.
use super::error::ConfigError;
use super::keys::env_name;
use super::model::Config;
use serde_json::Value;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// Names the config file when `--config` is not given.
pub const ENV_CONFIG_FILE: &str = "JM_CONFIG_FILE";

/// A read-only view of environment variables.
pub trait EnvLookup {
    fn get(&self, name: &str) -> Option<String>;
}

/// The real process environment.
pub struct ProcessEnv;

impl EnvLookup for ProcessEnv {
    fn get(&self, name: &str) -> Option<String> {
        std::env::var(name).ok()
    }
}

impl EnvLookup for BTreeMap<String, String> {
    fn get(&self, name: &str) -> Option<String> {
        BTreeMap::get(self, name).cloned()
    }
}

impl EnvLookup for [(&str, &str)] {
    fn get(&self, name: &str) -> Option<String> {
        self.iter().find(|(k, _)| *k == name).map(|(_, v)| v.to_string())
    }
}

/// One setting given on the command line: a dotted camelCase key path (`poll.intervalMs`)
/// and its raw value, parsed like the environment variable of the same setting.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FlagOverride {
    pub key: String,
    pub value: String,
}

impl FlagOverride {
    pub fn new(key: impl Into<String>, value: impl Into<String>) -> Self {
        Self { key: key.into(), value: value.into() }
    }
}

/// Where the config file comes from: the flag wins over `JM_CONFIG_FILE`.
pub fn config_file_path(flag: Option<&Path>, env: &dyn EnvLookup) -> Option<PathBuf> {
    flag.map(Path::to_path_buf).or_else(|| env.get(ENV_CONFIG_FILE).filter(|s| !s.trim().is_empty()).map(PathBuf::from))
}

/// Load the configuration from all sources. Validation is a separate, single pass
/// ([`super::validate`]).
pub fn load(file: Option<&Path>, env: &dyn EnvLookup, flags: &[FlagOverride]) -> Result<Config, ConfigError> {
    let base = match file {
        Some(path) => {
            let text = std::fs::read_to_string(path)
                .map_err(|e| ConfigError::ReadFile { path: path.display().to_string(), reason: e.to_string() })?;
            parse_file(&text).map_err(|reason| ConfigError::ParseFile { path: path.display().to_string(), reason })?
        }
        None => Config::default(),
    };
    let mut tree = serde_json::to_value(&base).expect("config serializes");
    apply_env(&mut tree, env)?;
    for flag in flags {
        apply_flag(&mut tree, flag)?;
    }
    serde_json::from_value(tree).map_err(|e| ConfigError::Invalid {
        setting: "configuration".into(),
        rule: format!("the combined settings do not form a valid configuration: {e}"),
    })
}

/// Parse a YAML config file (an empty file means all defaults).
pub fn parse_file(text: &str) -> Result<Config, String> {
    if text.trim().is_empty() {
        return Ok(Config::default());
    }
    serde_saphyr::from_str(text).map_err(|e| e.to_string())
}

fn apply_env(tree: &mut Value, env: &dyn EnvLookup) -> Result<(), ConfigError> {
    let mut leaves = Vec::new();
    collect_leaves(tree, &mut Vec::new(), &mut leaves);
    for path in leaves {
        let key = path.join(".");
        let name = env_name(&key);
        if let Some(raw) = env.get(&name) {
            let slot = slot_mut(tree, &path).expect("leaf path exists");
            *slot = parse_like(slot, &raw)
                .map_err(|rule| ConfigError::Invalid { setting: format!("{key} ({name})"), rule })?;
        }
    }
    Ok(())
}

fn apply_flag(tree: &mut Value, flag: &FlagOverride) -> Result<(), ConfigError> {
    let path: Vec<String> = flag.key.split('.').map(str::to_string).collect();
    let setting = format!("{} (flag)", flag.key);
    let slot = slot_mut(tree, &path)
        .ok_or_else(|| ConfigError::Invalid { setting: setting.clone(), rule: "no such setting".into() })?;
    *slot = parse_like(slot, &flag.value).map_err(|rule| ConfigError::Invalid { setting, rule })?;
    Ok(())
}

/// Every settable leaf: scalars, lists and nulls (optional structured values). Objects
/// that are free-form maps (labels, annotations) are leaves too: they are set whole, as
/// JSON, so a key like `app.kubernetes.io/component` never becomes part of an env name.
fn collect_leaves(v: &Value, path: &mut Vec<String>, out: &mut Vec<Vec<String>>) {
    match v {
        Value::Object(m) if !m.is_empty() && !is_free_form_map(path) && m.keys().all(|k| is_setting_name(k)) => {
            for (k, child) in m {
                path.push(k.clone());
                collect_leaves(child, path, out);
                path.pop();
            }
        }
        _ => out.push(path.clone()),
    }
}

/// Maps keyed by user data (not by setting names) are set as a whole.
fn is_free_form_map(path: &[String]) -> bool {
    matches!(
        path.last().map(String::as_str),
        Some(
            "podAnnotations"
                | "podLabels"
                | "nodeSelector"
                | "extraEnv"
                | "jobManagerPodLabels"
                | "persistentEndpoints"
                | "annotations"
        )
    )
}

/// A key the model names (camelCase letters and digits): anything else in an object is
/// user data, and the object a free-form map whatever its name.
fn is_setting_name(key: &str) -> bool {
    key.starts_with(|c: char| c.is_ascii_lowercase()) && key.chars().all(|c| c.is_ascii_alphanumeric())
}

fn slot_mut<'a>(tree: &'a mut Value, path: &[String]) -> Option<&'a mut Value> {
    let mut cur = tree;
    for seg in path {
        cur = cur.as_object_mut()?.get_mut(seg)?;
    }
    Some(cur)
}

/// Parse a raw string the way the current value's type asks: strings verbatim, booleans
/// as true/1/yes/false/0/no, numbers, lists as JSON/YAML or comma-separated, anything
/// structured as JSON/YAML.
pub fn parse_like(current: &Value, raw: &str) -> Result<Value, String> {
    match current {
        Value::String(_) => Ok(Value::String(raw.to_string())),
        Value::Bool(_) => parse_bool(raw).map(Value::Bool),
        Value::Number(n) => {
            let t = raw.trim();
            if n.is_f64() {
                t.parse::<f64>().ok().and_then(serde_json::Number::from_f64).map(Value::Number)
            } else {
                // Signed, so a negative value reaches serde and fails there with the
                // field's own range rule instead of "not a number".
                t.parse::<i64>().ok().map(Value::from)
            }
            .ok_or_else(|| format!("must be a number, got {raw:?}"))
        }
        Value::Array(items) => {
            let t = raw.trim();
            if t.starts_with('[') {
                parse_structured(t)
            } else if t.is_empty() {
                Ok(Value::Array(Vec::new()))
            } else if items.first().is_some_and(|i| !i.is_string()) {
                Err("must be a JSON list".into())
            } else {
                Ok(Value::Array(t.split(',').map(|s| Value::String(s.trim().to_string())).collect()))
            }
        }
        Value::Null | Value::Object(_) => parse_structured(raw.trim()),
    }
}

fn parse_structured(raw: &str) -> Result<Value, String> {
    serde_saphyr::from_str(raw).map_err(|e| format!("must be JSON or YAML: {e}"))
}

/// `true`/`1`/`yes` and `false`/`0`/`no` (case-insensitive), as the chart passes them.
pub fn parse_bool(raw: &str) -> Result<bool, String> {
    match raw.trim().to_ascii_lowercase().as_str() {
        "true" | "1" | "yes" | "on" => Ok(true),
        "false" | "0" | "no" | "off" | "" => Ok(false),
        _ => Err(format!("must be true/false (or 1/0, yes/no), got {raw:?}")),
    }
}

/// Every setting: key path, env variable and default (JSON), for `--list-settings`.
pub fn settings_table() -> Vec<(String, String, String)> {
    let tree = serde_json::to_value(Config::default()).expect("config serializes");
    let mut leaves = Vec::new();
    collect_leaves(&tree, &mut Vec::new(), &mut leaves);
    leaves
        .into_iter()
        .map(|path| {
            let mut v = &tree;
            for seg in &path {
                v = &v[seg.as_str()];
            }
            let key = path.join(".");
            let env = env_name(&key);
            (key, env, v.to_string())
        })
        .collect()
}

/// Stands in for a secret in [`redacted_yaml`].
pub const REDACTED: &str = "<redacted>";

/// The configuration as YAML with every secret that is set replaced by [`REDACTED`]
/// (`run --print-config`): what the job manager runs with, safe to paste in a ticket.
pub fn redacted_yaml(config: &Config) -> String {
    let mut c = config.clone();
    for secret in [
        &mut c.location_key,
        &mut c.vse_passphrase,
        &mut c.broker_api_proxy_pw,
        &mut c.internal_api_key,
        &mut c.token_signing_key,
        // May carry credentials (`http://user:pw@proxy:3128`).
        &mut c.sidecar.upstream_proxy,
    ] {
        if !secret.is_empty() {
            *secret = REDACTED.into();
        }
    }
    serde_saphyr::to_string(&c).expect("config serializes")
}
