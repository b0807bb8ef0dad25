//! Command line. `job-manager` alone (or `job-manager run`) runs the job manager;
//! other subcommands are tools around it.
//!
//! Extending: add a variant to [`Command`] and an arm in [`crate::commands::main_with`]; the
//! Kubernetes tools (`render`, `crd`, `rbac`) are added here as variants that call
//! `crate::backend::kubernetes::cli::*`. Nothing else needs to change.
use crate::config::FlagOverride;
use clap::{Args, Parser, Subcommand};
use std::path::PathBuf;

const ABOUT: &str = "Polls a broker for jobs and runs each in a runtime beside a sidecar egress proxy.";

const LONG_ABOUT: &str = "\
Polls a broker for jobs and runs each in a runtime beside a sidecar egress proxy.

Settings come from, in increasing precedence: built-in defaults, a YAML config file
(--config or JM_CONFIG_FILE; keys are the Helm chart's camelCase keys), environment
variables (JM_ + the key in SCREAMING_SNAKE_CASE, nested keys joined by '_', e.g.
poll.intervalMs -> JM_POLL_INTERVAL_MS), and flags (--set KEY=VALUE for any key).
Booleans accept true/1/yes; lists accept JSON or comma-separated values; structured
values (runtimes, tolerations, ...) take JSON or YAML.

The configuration is validated once at startup; an invalid setting is named together
with its rule and the process exits with status 64.";

#[derive(Debug, Parser)]
#[command(name = "job-manager", version = common::build_info::LONG_VERSION, about = ABOUT, long_about = LONG_ABOUT, args_conflicts_with_subcommands = true)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Option<Command>,
    #[command(flatten)]
    pub run: RunArgs,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the job manager (the default when no subcommand is given).
    Run(RunArgs),
    /// Run the sample jobs end to end on this machine: embedded broker, local origin,
    /// local executor with real sidecars; print each result and check it.
    Demo(DemoArgs),
    /// Print the verified-script-execution signature of a job file (for `signature`).
    Sign(SignArgs),
    /// Print every Kubernetes object the job manager would create for a job (multi-document
    /// YAML; no cluster needed). The configuration is loaded and validated as `run` does
    /// with the kubernetes executor (file, JM_* env, --set); secrets it does not show
    /// (location key, internal API key) may be left out.
    Render(RenderArgs),
    /// Print the JobRecord CustomResourceDefinition (the chart ships it in crds/).
    Crd,
    /// Print the RBAC rules the job manager needs (the chart's Role must grant exactly these).
    Rbac,
    /// GET an http:// URL and exit 0 on a 2xx answer (the chart's `helm test` pod checks
    /// /readyz with it: the image has no shell or curl).
    Check(CheckArgs),
}

#[derive(Debug, Clone, Args)]
pub struct CheckArgs {
    /// e.g. http://job-manager.jobs.svc:8080/readyz
    #[arg(long, value_name = "URL")]
    pub url: String,
    /// Give up after this many seconds
    #[arg(long, value_name = "SECS", default_value_t = 10)]
    pub timeout_secs: u64,
}

#[derive(Debug, Clone, Args)]
pub struct RenderArgs {
    /// The job file (a `common::Job` as JSON or YAML)
    #[arg(long, value_name = "FILE")]
    pub job: PathBuf,
    /// YAML config file (the same file `run --config` takes, e.g. deploy/examples/kubernetes.yaml
    /// or the chart's ConfigMap); without the flag, `$JM_CONFIG_FILE`, else the defaults
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Namespace of the objects (default: the config's `namespace`, else `default`)
    #[arg(long, value_name = "NS")]
    pub namespace: Option<String>,
    /// Any setting by its key path, as `run --set` (repeatable)
    #[arg(long = "set", value_name = "KEY=VALUE")]
    pub set: Vec<String>,
}

#[derive(Debug, Clone, Default, Args)]
pub struct RunArgs {
    /// YAML config file; without the flag, `$JM_CONFIG_FILE` (read with the other `JM_*`
    /// settings, so an empty value means none)
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Result API + health + metrics listen address (key `listen`)
    #[arg(long, value_name = "ADDR")]
    pub listen: Option<String>,
    /// ALL, TRACE, DEBUG, INFO, WARN, ERROR, FATAL or OFF (key `logLevel`)
    #[arg(long, value_name = "LEVEL")]
    pub log_level: Option<String>,
    /// text or json (key `logFormat`)
    #[arg(long, value_name = "FORMAT")]
    pub log_format: Option<String>,
    /// Broker URL, or `embedded` for the in-process broker (key `brokerApiEndpoint`)
    #[arg(long, value_name = "URL")]
    pub broker_api_endpoint: Option<String>,
    /// local or kubernetes (key `executor`)
    #[arg(long, value_name = "KIND")]
    pub executor: Option<String>,
    /// Local executor state: job dirs and the durable result store (key `stateDir`)
    #[arg(long, value_name = "DIR")]
    pub state_dir: Option<PathBuf>,
    /// Any setting by its key path, e.g. --set poll.batchSize=5 (repeatable)
    #[arg(long = "set", value_name = "KEY=VALUE")]
    pub set: Vec<String>,
    /// Embedded broker only: also serve its HTTP API (broker v1 + /admin/v1/jobs) here
    #[arg(long, value_name = "ADDR")]
    pub embedded_broker_listen: Option<String>,
    /// Embedded broker only: submit every *.json job file of this directory at startup
    #[arg(long, value_name = "DIR")]
    pub submit_dir: Option<PathBuf>,
    /// Print the list of every setting with its env variable and default, then exit
    #[arg(long)]
    pub list_settings: bool,
    /// Load and validate the configuration, print it as the job manager would run with it
    /// (YAML, secrets redacted; warnings on stderr), then exit: 0 if valid, 64 if not
    #[arg(long)]
    pub print_config: bool,
}

impl RunArgs {
    /// Flags as config overrides (highest precedence).
    pub fn overrides(&self) -> Result<Vec<FlagOverride>, String> {
        let mut out = Vec::new();
        let mut push = |k: &str, v: &Option<String>| {
            if let Some(v) = v {
                out.push(FlagOverride::new(k, v.clone()));
            }
        };
        push("listen", &self.listen);
        push("logLevel", &self.log_level);
        push("logFormat", &self.log_format);
        push("brokerApiEndpoint", &self.broker_api_endpoint);
        push("executor", &self.executor);
        push("stateDir", &self.state_dir.as_ref().map(|p| p.display().to_string()));
        for kv in &self.set {
            let (k, v) = kv.split_once('=').ok_or_else(|| format!("--set {kv:?}: expected KEY=VALUE"))?;
            out.push(FlagOverride::new(k.trim(), v));
        }
        Ok(out)
    }
}

#[derive(Debug, Clone, Args)]
pub struct DemoArgs {
    /// Directory with local.yaml, jobs/*.json and expected.yaml
    #[arg(long, value_name = "DIR", default_value = "deploy/examples")]
    pub examples: PathBuf,
    /// Give up waiting for results after this many seconds
    #[arg(long, value_name = "SECS", default_value_t = 120)]
    pub timeout_secs: u64,
}

#[derive(Debug, Clone, Args)]
pub struct SignArgs {
    /// The job file (a `common::Job` as JSON); its runtime_type and payload are signed
    #[arg(long, value_name = "FILE")]
    pub job: PathBuf,
    /// The VSE passphrase
    #[arg(long, value_name = "PASSPHRASE", env = "JM_VSE_PASSPHRASE", hide_env_values = true)]
    pub passphrase: String,
    /// Write the job back with its `signature` set instead of printing the signature
    #[arg(long)]
    pub in_place: bool,
}
