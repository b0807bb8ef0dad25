//! The validation-pass plumbing: [`Check`] reads raw values (clap's defaults for
//! empty ones) and collects every failure ([`Check::num`] for numbers); [`err`] and [`parse_addr`]
//! turn a raw value into a typed one or a [`ConfigError`] naming the setting.
use super::{Cli, ConfigError, ConfigErrors, Lookup};
use clap::CommandFactory;
use std::net::SocketAddr;

/// The one validation pass: reads raw values, collects every failure.
pub(super) struct Check<'a> {
    /// The clap command, for the defaults it owns; built only when a value is empty
    /// (clap has already filled in the defaults of settings not given at all).
    cmd: std::cell::OnceCell<clap::Command>,
    pub(super) env: &'a dyn Lookup,
    errors: Vec<ConfigError>,
}

impl<'a> Check<'a> {
    pub(super) fn new(env: &'a dyn Lookup) -> Self {
        Self { cmd: std::cell::OnceCell::new(), env, errors: Vec::new() }
    }

    /// Every failure so far, in check order; `Ok` when there were none.
    pub(super) fn finish(self) -> Result<(), ConfigErrors> {
        if !self.errors.is_empty() {
            return Err(ConfigErrors(self.errors));
        }
        Ok(())
    }

    /// The value (trimmed) if given, else clap's default for the argument `id`; empty
    /// strings count as unset.
    pub(super) fn one(&self, value: &Option<String>, id: &str) -> Option<String> {
        value.as_deref().map(str::trim).filter(|s| !s.is_empty()).map(String::from).or_else(|| self.default_of(id))
    }

    fn default_of(&self, id: &str) -> Option<String> {
        let arg = self.cmd.get_or_init(Cli::command).get_arguments().find(|a| a.get_id() == id);
        debug_assert!(arg.is_some(), "no argument {id:?}");
        let arg = arg?;
        arg.get_default_values().first()?.to_str().map(String::from)
    }

    /// List settings: every value (a repeated flag, or the env value) split on commas.
    pub(super) fn list(&self, values: &[String]) -> Vec<String> {
        values.iter().flat_map(|s| s.split(',')).map(str::trim).filter(|s| !s.is_empty()).map(String::from).collect()
    }

    /// Boolean settings: the bare flag means true; env values are true/1/yes/on or
    /// false/0/no/off (any case), empty is false.
    pub(super) fn flag(&mut self, value: &Option<String>, key: &'static str, name: &'static str) -> bool {
        match value.as_deref().map(|s| s.trim().to_ascii_lowercase()).as_deref() {
            None | Some("" | "false" | "0" | "no" | "off") => false,
            Some("true" | "1" | "yes" | "on") => true,
            Some(s) => {
                self.fail(err(key, name, format!("{s:?} is not a boolean (true/false)")));
                false
            }
        }
    }

    /// A number setting: the value (or clap's default) parsed and checked against
    /// `valid`; a failure is recorded (naming the setting and `rule`) and gives `None`.
    pub(super) fn num<T: std::str::FromStr>(
        &mut self,
        value: &Option<String>,
        id: &str,
        setting: &'static str,
        flag: &'static str,
        valid: impl Fn(&T) -> bool,
        rule: &str,
    ) -> Option<T> {
        let parsed = parse_num(self.one(value, id), setting, flag, valid, rule);
        self.ok(parsed).flatten()
    }

    pub(super) fn ok<T>(&mut self, r: Result<T, ConfigError>) -> Option<T> {
        r.map_err(|e| self.fail(e)).ok()
    }

    pub(super) fn fail(&mut self, e: ConfigError) {
        self.errors.push(e);
    }
}

pub(super) fn err(setting: &'static str, flag: &'static str, message: impl Into<String>) -> ConfigError {
    ConfigError { setting, flag, message: message.into() }
}

fn parse_num<T: std::str::FromStr>(
    v: Option<String>,
    setting: &'static str,
    flag: &'static str,
    valid: impl Fn(&T) -> bool,
    rule: &str,
) -> Result<Option<T>, ConfigError> {
    match v {
        None => Ok(None),
        Some(s) => match s.parse::<T>() {
            Ok(n) if valid(&n) => Ok(Some(n)),
            _ => Err(err(setting, flag, format!("{s:?} is not {rule}"))),
        },
    }
}

pub(super) fn parse_addr(
    v: Option<String>,
    setting: &'static str,
    flag: &'static str,
) -> Result<Option<SocketAddr>, ConfigError> {
    v.map(|s| s.parse::<SocketAddr>().map_err(|_| err(setting, flag, format!("{s:?} is not an IP:PORT address"))))
        .transpose()
}

/// Validity rule for durations that must not be zero.
pub(super) fn positive(n: &u64) -> bool {
    *n > 0
}
