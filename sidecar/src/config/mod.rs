//! Configuration: flags over environment variables over defaults. clap owns the flag
//! names, the env variable of each setting (`ENV_*`) and the defaults, and hands over
//! raw strings; [`parse_config`] is the one validation pass, pure (tests give env
//! values as a map through [`Cli::try_parse_with_env`], never `set_var`), that types
//! every value and collects every bad setting, each named by env variable and flag.
//! Bad configuration exits 64 (`EX_USAGE` in sysexits.h) after printing them all.
use crate::authority::Target;
use crate::policy::{EgressPolicy, UpstreamBypass};
pub use crate::telemetry::LogFormat;
use check::Check;
pub use cli::Cli;
use common::runtime_api::sidecar_env as env;
use common::secret::Secret;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

mod check;
mod cli;
mod groups;
mod job;
mod limits;
mod values;

#[cfg(test)]
mod tests;

/// Exit code for bad configuration (sysexits `EX_USAGE`).
pub const EXIT_BAD_CONFIG: i32 = 64;

pub const ENV_LISTEN: &str = env::LISTEN;
pub const ENV_LISTEN_STDIN: &str = env::LISTEN_STDIN;
pub const ENV_ADMIN_LISTEN: &str = env::ADMIN_LISTEN;
pub const ENV_JOB_DIR: &str = env::JOB_DIR;
pub const ENV_JOB_MANAGER_URL: &str = env::JOB_MANAGER_URL;
pub const ENV_INTERNAL_API_KEY: &str = env::INTERNAL_API_KEY;
pub const ENV_INTERNAL_API_KEY_FILE: &str = env::INTERNAL_API_KEY_FILE;
pub const ENV_SPOOL_DIR: &str = env::SPOOL_DIR;
pub const ENV_INGRESS_LISTEN: &str = env::INGRESS_LISTEN;
pub const ENV_INGRESS_UPSTREAM: &str = env::INGRESS_UPSTREAM;
pub const ENV_ALLOW_CIDRS: &str = env::ALLOW_CIDRS;
pub const ENV_DENY_CIDRS: &str = env::DENY_CIDRS;
pub const ENV_ALLOW_HOSTS: &str = env::ALLOW_HOSTS;
pub const ENV_DENY_HOSTS: &str = env::DENY_HOSTS;
pub const ENV_ALLOW_PORTS: &str = env::ALLOW_PORTS;
pub const ENV_DENY_PORTS: &str = env::DENY_PORTS;
pub const ENV_DENY_PRIVATE: &str = env::DENY_PRIVATE;
pub const ENV_DENY_PUBLIC: &str = env::DENY_PUBLIC;
pub const ENV_REPORT_ONLY: &str = env::REPORT_ONLY;
pub const ENV_API_SERVER_ADDRESSES: &str = env::API_SERVER_ADDRESSES;
pub const ENV_UPSTREAM_PROXY: &str = env::UPSTREAM_PROXY;
pub const ENV_UPSTREAM_PROXY_CA_FILE: &str = env::UPSTREAM_PROXY_CA_FILE;
pub const ENV_UPSTREAM_PROXY_INSECURE: &str = env::UPSTREAM_PROXY_INSECURE;
pub const ENV_UPSTREAM_PROXY_BYPASS: &str = env::UPSTREAM_PROXY_BYPASS;
pub const ENV_UPSTREAM_PROXY_UNRESOLVED: &str = env::UPSTREAM_PROXY_UNRESOLVED;
pub const ENV_LOG_FORMAT: &str = env::LOG_FORMAT;
pub const ENV_LOG_LEVEL: &str = env::LOG_LEVEL;
pub const ENV_RESULT_DEADLINE_SECS: &str = env::RESULT_DEADLINE_SECS;
pub const ENV_SHUTDOWN_GRACE_SECS: &str = env::SHUTDOWN_GRACE_SECS;
pub const ENV_READY_FILE: &str = env::READY_FILE;
pub const ENV_JOB_ID: &str = env::JOB_ID;
pub const ENV_JOB_TOKEN: &str = env::JOB_TOKEN;
// Limits: sidecar-private settings, not part of the job-manager contract.
pub const ENV_MAX_HEADER_BYTES: &str = "SIDECAR_MAX_HEADER_BYTES";
// Set by the job manager (its `maxResultBytes`), so part of the contract.
pub const ENV_MAX_BODY_BYTES: &str = env::MAX_BODY_BYTES;
pub const ENV_MAX_BODY_MEMORY_BYTES: &str = "SIDECAR_MAX_BODY_MEMORY_BYTES";
pub const ENV_BODY_READ_TIMEOUT_MS: &str = "SIDECAR_BODY_READ_TIMEOUT_MS";
pub const ENV_CONNECT_TIMEOUT_MS: &str = "SIDECAR_CONNECT_TIMEOUT_MS";
pub const ENV_IDLE_TIMEOUT_SECS: &str = "SIDECAR_IDLE_TIMEOUT_SECS";
pub const ENV_TUNNEL_IDLE_TIMEOUT_SECS: &str = "SIDECAR_TUNNEL_IDLE_TIMEOUT_SECS";
pub const ENV_HEADER_READ_TIMEOUT_MS: &str = "SIDECAR_HEADER_READ_TIMEOUT_MS";
pub const ENV_MAX_CONNECTIONS: &str = "SIDECAR_MAX_CONNECTIONS";
pub const ENV_MAX_ADMIN_CONNECTIONS: &str = "SIDECAR_MAX_ADMIN_CONNECTIONS";
pub const ENV_MAX_INGRESS_CONNECTIONS: &str = "SIDECAR_MAX_INGRESS_CONNECTIONS";
pub const ENV_MAX_TUNNELS: &str = "SIDECAR_MAX_TUNNELS";
pub const ENV_WORKER_THREADS: &str = "SIDECAR_WORKER_THREADS";
/// Set by Kubernetes in every pod: the API server's Service address, refused by default.
pub const ENV_KUBERNETES_SERVICE_HOST: &str = "KUBERNETES_SERVICE_HOST";
pub const ENV_KUBERNETES_SERVICE_PORT: &str = "KUBERNETES_SERVICE_PORT";

/// Where settings come from besides flags. The process environment in production, a
/// map in tests.
pub trait Lookup {
    fn get(&self, key: &str) -> Option<String>;
}

impl Lookup for HashMap<String, String> {
    fn get(&self, key: &str) -> Option<String> {
        HashMap::get(self, key).cloned()
    }
}

impl Lookup for HashMap<&str, &str> {
    fn get(&self, key: &str) -> Option<String> {
        HashMap::get(self, key).map(|s| s.to_string())
    }
}

/// The process environment.
pub struct ProcessEnv;

impl Lookup for ProcessEnv {
    fn get(&self, key: &str) -> Option<String> {
        std::env::var(key).ok()
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum KeySource {
    None,
    Inline(Secret),
    File(PathBuf),
    Stdin,
}

#[derive(Clone, Debug)]
pub struct JobManagerEndpoint {
    /// `http://host:port`, no trailing slash.
    pub base: String,
    pub target: Target,
}

#[derive(Clone, Debug)]
pub struct UpstreamProxy {
    pub tls: bool,
    pub host: String,
    pub port: u16,
    /// `Basic ...` value for `Proxy-Authorization`.
    pub authorization: Option<Secret>,
    pub ca_file: Option<PathBuf>,
    pub insecure: bool,
    /// Destinations dialled directly instead (NO_PROXY).
    pub bypass: UpstreamBypass,
    /// What a name that does not resolve locally gets.
    pub unresolved: Unresolved,
}

/// Behind an upstream proxy, a name the sidecar cannot resolve: refused (403, class
/// `unresolved`), or forwarded for the upstream proxy to resolve, unchecked by the
/// address rules (step 3 of the policy).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Unresolved {
    #[default]
    Refuse,
    Forward,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Ingress {
    pub listen: SocketAddr,
    pub upstream: SocketAddr,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limits {
    pub max_header_bytes: usize,
    pub max_body_bytes: usize,
    /// All bodies read whole (results, dispatches) together, bytes (at least one
    /// `max_body_bytes`): more gets 503 with Retry-After.
    pub max_body_memory_bytes: usize,
    /// Time to receive one whole body (408 after).
    pub body_read_timeout: Duration,
    pub connect_timeout: Duration,
    pub idle_timeout: Duration,
    pub tunnel_idle_timeout: Duration,
    pub header_read_timeout: Duration,
    /// The proxy listener's cap (its tunnels included).
    pub max_connections: usize,
    /// The admin listener's own cap (probes, metrics), so a flood elsewhere never
    /// fails `/readyz`.
    pub max_admin_connections: usize,
    /// The ingress listener's own cap (dispatches from the job manager).
    pub max_ingress_connections: usize,
    pub max_tunnels: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_header_bytes: 64 * 1024,
            // The job manager's default `maxResultBytes`; it passes its own setting.
            max_body_bytes: 1024 * 1024,
            max_body_memory_bytes: 32 * 1024 * 1024,
            body_read_timeout: Duration::from_secs(30),
            connect_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(90),
            tunnel_idle_timeout: Duration::from_secs(600),
            header_read_timeout: Duration::from_secs(10),
            max_connections: 4096,
            max_admin_connections: 64,
            max_ingress_connections: 1024,
            max_tunnels: 2048,
        }
    }
}

#[derive(Clone, Debug)]
pub struct Config {
    pub listen: SocketAddr,
    /// Serve the proxy on the listening socket inherited as stdin instead of binding
    /// `listen` (see [`ENV_LISTEN_STDIN`]).
    pub listen_stdin: bool,
    pub admin_listen: Option<SocketAddr>,
    pub ingress: Option<Ingress>,
    pub policy: EgressPolicy,
    pub report_only: bool,
    pub job_dir: Option<PathBuf>,
    pub job_manager: Option<JobManagerEndpoint>,
    pub internal_api_key: KeySource,
    pub spool_dir: Option<PathBuf>,
    pub result_deadline: Duration,
    pub shutdown_grace: Duration,
    pub upstream_proxy: Option<UpstreamProxy>,
    pub ready_file: Option<PathBuf>,
    pub log_format: LogFormat,
    pub log_level: String,
    pub job_id: Option<String>,
    /// Ephemeral job handed over by id + token (Kubernetes): fetched from the job manager.
    pub job_token: Option<Secret>,
    pub limits: Limits,
    pub worker_threads: usize,
}

impl Config {
    /// A standalone proxy on `listen` with every default; a starting point for tests.
    pub fn standalone(listen: SocketAddr) -> Self {
        let empty = HashMap::<String, String>::new();
        let cli =
            Cli::try_parse_with_env(["sidecar", "--listen", &listen.to_string()], &empty).expect("--listen parses");
        parse_config(&cli, &empty).expect("defaults are valid")
    }
}

/// A setting that failed validation, named by its env variable and flag.
#[derive(Clone, Debug, thiserror::Error, PartialEq, Eq)]
#[error("invalid {setting} ({flag}): {message}")]
pub struct ConfigError {
    pub setting: &'static str,
    pub flag: &'static str,
    pub message: String,
}

/// Every setting that failed validation, in the order they were checked (never empty).
#[derive(Debug, PartialEq, Eq)]
pub struct ConfigErrors(pub Vec<ConfigError>);

impl ConfigErrors {
    /// The first failure (the one a setting-by-setting check would have stopped at).
    pub fn first(&self) -> &ConfigError {
        &self.0[0]
    }
}

impl std::fmt::Display for ConfigErrors {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        for (i, e) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str("\n")?;
            }
            write!(f, "{e}")?;
        }
        Ok(())
    }
}

impl std::error::Error for ConfigErrors {}

impl From<ConfigError> for ConfigErrors {
    fn from(e: ConfigError) -> Self {
        Self(vec![e])
    }
}

/// Builds and validates the whole configuration in one pass, reporting every bad
/// setting (not just the first). Pure: parsed flags (with their env values, see
/// [`Cli::try_parse_with_env`]) plus a lookup for the env-only settings (the key, the
/// job token, `KUBERNETES_SERVICE_HOST`); no I/O. Errors come in check order: the
/// groups below in this order, then the cross-setting rules.
pub fn parse_config(cli: &Cli, lookup: &dyn Lookup) -> Result<Config, ConfigErrors> {
    let mut c = Check::new(lookup);
    let listeners = groups::listeners(&mut c, cli);
    let (mut policy, report_only) = groups::egress_policy(&mut c, cli);
    let job = job::handoff(&mut c, cli);
    policy.job_manager = job.manager.as_ref().map(|j| j.target.clone());
    let (ingress, ingress_given) = groups::ingress(&mut c, cli);
    let upstream_proxy = groups::upstream_proxy(&mut c, cli);
    let (log_format, log_level) = groups::logging(&mut c, cli);
    let (job_id, job_token) = job::job_by_token(&mut c, cli);
    let (limits, worker_threads) = limits::limits(&mut c, cli);
    job::cross_setting_rules(&mut c, &job, &job_id, &job_token, ingress_given);
    groups::listener_rules(&mut c, &listeners, &job.internal_api_key);
    c.finish()?;
    Ok(Config {
        listen: listeners.listen,
        listen_stdin: listeners.listen_stdin,
        admin_listen: listeners.admin_listen,
        ingress,
        policy,
        report_only,
        job_dir: job.dir,
        job_manager: job.manager,
        internal_api_key: job.internal_api_key,
        spool_dir: job.spool_dir,
        result_deadline: job.result_deadline,
        shutdown_grace: job.shutdown_grace,
        upstream_proxy,
        ready_file: listeners.ready_file,
        log_format,
        log_level,
        job_id,
        job_token,
        limits,
        worker_threads,
    })
}
