//! Configuration: flags over environment variables over defaults. clap owns the flag
//! names, the env variable of each setting (`ENV_*`) and the defaults, and hands over
//! raw strings; [`parse_config`] is the one validation pass, pure (tests give env
//! values as a map through [`Cli::try_parse_with_env`], never `set_var`), that types
//! every value and collects every bad setting, each named by env variable and flag.
//! Bad configuration exits 64 (`EX_USAGE` in sysexits.h) after printing them all.
use crate::authority::{parse_authority, parse_host, Host, Target};
use crate::policy::{ApiServer, EgressPolicy, HostPattern, UpstreamBypass};
use crate::telemetry::log_filter;
pub use crate::telemetry::LogFormat;
use clap::{CommandFactory, FromArgMatches, Parser};
use common::runtime_api::sidecar_env as env;
use common::secret::Secret;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

#[cfg(test)]
mod tests;

/// Exit code for bad configuration (sysexits `EX_USAGE`).
pub const EXIT_BAD_CONFIG: i32 = 64;

pub const ENV_LISTEN: &str = env::LISTEN;
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
pub const ENV_REPORT_ONLY: &str = env::REPORT_ONLY;
pub const ENV_API_SERVER_ADDRESSES: &str = env::API_SERVER_ADDRESSES;
pub const ENV_UPSTREAM_PROXY: &str = env::UPSTREAM_PROXY;
pub const ENV_UPSTREAM_PROXY_CA_FILE: &str = env::UPSTREAM_PROXY_CA_FILE;
pub const ENV_UPSTREAM_PROXY_INSECURE: &str = env::UPSTREAM_PROXY_INSECURE;
pub const ENV_UPSTREAM_PROXY_BYPASS: &str = env::UPSTREAM_PROXY_BYPASS;
pub const ENV_LOG_FORMAT: &str = env::LOG_FORMAT;
pub const ENV_LOG_LEVEL: &str = env::LOG_LEVEL;
pub const ENV_RESULT_DEADLINE_SECS: &str = env::RESULT_DEADLINE_SECS;
pub const ENV_SHUTDOWN_GRACE_SECS: &str = env::SHUTDOWN_GRACE_SECS;
pub const ENV_READY_FILE: &str = env::READY_FILE;
pub const ENV_JOB_ID: &str = env::JOB_ID;
pub const ENV_JOB_TOKEN: &str = env::JOB_TOKEN;
// Limits: sidecar-private settings, not part of the job-manager contract.
pub const ENV_MAX_HEADER_BYTES: &str = "SIDECAR_MAX_HEADER_BYTES";
pub const ENV_MAX_BODY_BYTES: &str = "SIDECAR_MAX_BODY_BYTES";
pub const ENV_CONNECT_TIMEOUT_MS: &str = "SIDECAR_CONNECT_TIMEOUT_MS";
pub const ENV_IDLE_TIMEOUT_SECS: &str = "SIDECAR_IDLE_TIMEOUT_SECS";
pub const ENV_TUNNEL_IDLE_TIMEOUT_SECS: &str = "SIDECAR_TUNNEL_IDLE_TIMEOUT_SECS";
pub const ENV_HEADER_READ_TIMEOUT_MS: &str = "SIDECAR_HEADER_READ_TIMEOUT_MS";
pub const ENV_MAX_CONNECTIONS: &str = "SIDECAR_MAX_CONNECTIONS";
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

/// Egress proxy and result reporter that runs beside every runtime.
///
/// Every setting is a flag and an environment variable (flags win). With only
/// `--listen` it is a standalone egress proxy with the default policy: cloud metadata,
/// link-local, loopback, the Kubernetes API and kubelet ports are refused; private
/// ranges are allowed unless --deny-private. List settings take a comma-separated env
/// value or a repeated flag (which replaces the env list); boolean settings take
/// true/false (1/0, yes/no, on/off) from the environment.
#[derive(Debug, Default, Parser)]
#[command(name = "sidecar", version, about, long_about, max_term_width = 100)]
pub struct Cli {
    /// Proxy + local runtime API listen address
    #[arg(long, value_name = "ADDR", env = ENV_LISTEN, default_value = "127.0.0.1:3128", hide_env_values = true)]
    pub listen: Option<String>,
    /// Extra listener for /healthz, /readyz, /metrics (pods: 0.0.0.0:9901)
    #[arg(long, value_name = "ADDR", env = ENV_ADMIN_LISTEN, hide_env_values = true)]
    pub admin_listen: Option<String>,
    /// CIDR allowed even where a built-in rule would refuse it, e.g. 127.0.0.1/32 for a loopback origin
    #[arg(long = "allow-cidr", value_name = "CIDR", env = ENV_ALLOW_CIDRS, hide_env_values = true)]
    pub allow_cidrs: Vec<String>,
    /// CIDR always refused (beats --allow-cidr)
    #[arg(long = "deny-cidr", value_name = "CIDR", env = ENV_DENY_CIDRS, hide_env_values = true)]
    pub deny_cidrs: Vec<String>,
    /// Host pattern exempt from the built-in name rules (example.com, *.example.com, .example.com); its addresses are still checked
    #[arg(long = "allow-host", value_name = "PATTERN", env = ENV_ALLOW_HOSTS, hide_env_values = true)]
    pub allow_hosts: Vec<String>,
    /// Host pattern always refused
    #[arg(long = "deny-host", value_name = "PATTERN", env = ENV_DENY_HOSTS, hide_env_values = true)]
    pub deny_hosts: Vec<String>,
    /// When given, only these destination ports are allowed
    #[arg(long = "allow-port", value_name = "PORT", env = ENV_ALLOW_PORTS, hide_env_values = true)]
    pub allow_ports: Vec<String>,
    /// Destination port always refused
    #[arg(long = "deny-port", value_name = "PORT", env = ENV_DENY_PORTS, hide_env_values = true)]
    pub deny_ports: Vec<String>,
    /// Also refuse private ranges (RFC 1918, CGNAT, ULA)
    #[arg(long, env = ENV_DENY_PRIVATE, num_args = 0, default_missing_value = "true", value_name = "BOOL", hide_env_values = true)]
    pub deny_private: Option<String>,
    /// Log what would be refused but let it through (rollout mode)
    #[arg(long, env = ENV_REPORT_ONLY, num_args = 0, default_missing_value = "true", value_name = "BOOL", hide_env_values = true)]
    pub report_only: Option<String>,
    /// Kubernetes API server address to refuse, IP or IP:PORT; KUBERNETES_SERVICE_HOST is always added
    #[arg(long = "api-server-address", value_name = "ADDR", env = ENV_API_SERVER_ADDRESSES, hide_env_values = true)]
    pub api_server_addresses: Vec<String>,
    /// Ephemeral job: directory holding job.json and token
    #[arg(long, value_name = "DIR", env = ENV_JOB_DIR, hide_env_values = true)]
    pub job_dir: Option<String>,
    /// Job manager base URL (http); results go there and calls to it get the internal key
    #[arg(long, value_name = "URL", env = ENV_JOB_MANAGER_URL, hide_env_values = true)]
    pub job_manager_url: Option<String>,
    /// File holding the internal API key; "-" reads the first line of stdin. The key itself may come from env SIDECAR_INTERNAL_API_KEY (no flag: flags show in ps)
    #[arg(long, value_name = "FILE", env = ENV_INTERNAL_API_KEY_FILE, hide_env_values = true)]
    pub internal_api_key_file: Option<String>,
    /// Results are written here (fsync + rename) before delivery and re-delivered on start
    #[arg(long, value_name = "DIR", env = ENV_SPOOL_DIR, hide_env_values = true)]
    pub spool_dir: Option<String>,
    /// Seconds to keep retrying a result
    #[arg(long, value_name = "SECS", env = ENV_RESULT_DEADLINE_SECS, default_value = "600", hide_env_values = true)]
    pub result_deadline_secs: Option<String>,
    /// Seconds SIGTERM waits for in-flight results
    #[arg(long, value_name = "SECS", env = ENV_SHUTDOWN_GRACE_SECS, default_value = "30", hide_env_values = true)]
    pub shutdown_grace_secs: Option<String>,
    /// Persistent workloads: ingress listen address
    #[arg(long, value_name = "ADDR", env = ENV_INGRESS_LISTEN, hide_env_values = true)]
    pub ingress_listen: Option<String>,
    /// Persistent workloads: the runtime's loopback address
    #[arg(long, value_name = "ADDR", env = ENV_INGRESS_UPSTREAM, hide_env_values = true)]
    pub ingress_upstream: Option<String>,
    /// Chain egress through this proxy: http(s)://[user:pass@]host:port
    #[arg(long, value_name = "URL", env = ENV_UPSTREAM_PROXY, hide_env_values = true)]
    pub upstream_proxy: Option<String>,
    /// Extra CA (PEM) trusted for an https upstream proxy
    #[arg(long, value_name = "FILE", env = ENV_UPSTREAM_PROXY_CA_FILE, hide_env_values = true)]
    pub upstream_proxy_ca_file: Option<String>,
    /// Accept any certificate from an https upstream proxy (self-signed)
    #[arg(long, env = ENV_UPSTREAM_PROXY_INSECURE, num_args = 0, default_missing_value = "true", value_name = "BOOL", hide_env_values = true)]
    pub upstream_proxy_insecure: Option<String>,
    /// Dial this host pattern (as --allow-host) or CIDR directly, not through the upstream proxy; repeatable (a NO_PROXY list, e.g. .svc.cluster.local,10.0.0.0/8)
    #[arg(long = "upstream-proxy-bypass", value_name = "HOST|CIDR", env = ENV_UPSTREAM_PROXY_BYPASS, hide_env_values = true)]
    pub upstream_proxy_bypass: Vec<String>,
    /// Write the bound addresses as JSON here once serving
    #[arg(long, value_name = "FILE", env = ENV_READY_FILE, hide_env_values = true)]
    pub ready_file: Option<String>,
    /// text or json
    #[arg(long, value_name = "FORMAT", env = ENV_LOG_FORMAT, default_value = "text", hide_env_values = true)]
    pub log_format: Option<String>,
    /// tracing filter, e.g. info or sidecar=debug
    #[arg(long, value_name = "FILTER", env = ENV_LOG_LEVEL, default_value = "info", hide_env_values = true)]
    pub log_level: Option<String>,
    /// Job id for log lines (ephemeral jobs also read it from job.json). With the job token in env SIDECAR_JOB_TOKEN (no flag: flags show in ps) and no --job-dir, the sidecar fetches this job from the job manager before it reports ready
    #[arg(long, value_name = "ID", env = ENV_JOB_ID, hide_env_values = true)]
    pub job_id: Option<String>,
    /// Largest request head accepted, bytes (>= 8192)
    #[arg(long, value_name = "BYTES", env = ENV_MAX_HEADER_BYTES, default_value = "65536", hide_env_values = true)]
    pub max_header_bytes: Option<String>,
    /// Largest local API / ingress dispatch body, bytes
    #[arg(long, value_name = "BYTES", env = ENV_MAX_BODY_BYTES, default_value = "10485760", hide_env_values = true)]
    pub max_body_bytes: Option<String>,
    /// Upstream connect timeout, ms (DNS included)
    #[arg(long, value_name = "MS", env = ENV_CONNECT_TIMEOUT_MS, default_value = "10000", hide_env_values = true)]
    pub connect_timeout_ms: Option<String>,
    /// Idle keep-alive timeout for pooled upstream connections, seconds
    #[arg(long, value_name = "SECS", env = ENV_IDLE_TIMEOUT_SECS, default_value = "90", hide_env_values = true)]
    pub idle_timeout_secs: Option<String>,
    /// A tunnel with no traffic either way for this long is closed, seconds
    #[arg(long, value_name = "SECS", env = ENV_TUNNEL_IDLE_TIMEOUT_SECS, default_value = "600", hide_env_values = true)]
    pub tunnel_idle_timeout_secs: Option<String>,
    /// A request head must arrive within this time (slowloris guard; also closes idle keep-alive client connections), ms
    #[arg(long, value_name = "MS", env = ENV_HEADER_READ_TIMEOUT_MS, default_value = "10000", hide_env_values = true)]
    pub header_read_timeout_ms: Option<String>,
    /// Concurrent client connections (tunnels included); more get 503
    #[arg(long, value_name = "N", env = ENV_MAX_CONNECTIONS, default_value = "4096", hide_env_values = true)]
    pub max_connections: Option<String>,
    /// Concurrent CONNECT tunnels; more get 503
    #[arg(long, value_name = "N", env = ENV_MAX_TUNNELS, default_value = "2048", hide_env_values = true)]
    pub max_tunnels: Option<String>,
    /// Runtime worker threads, 0 = min(2, CPUs)
    #[arg(long, value_name = "N", env = ENV_WORKER_THREADS, default_value = "0", hide_env_values = true)]
    pub worker_threads: Option<String>,
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
    pub connect_timeout: Duration,
    pub idle_timeout: Duration,
    pub tunnel_idle_timeout: Duration,
    pub header_read_timeout: Duration,
    pub max_connections: usize,
    pub max_tunnels: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_header_bytes: 64 * 1024,
            max_body_bytes: 10 * 1024 * 1024,
            connect_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(90),
            tunnel_idle_timeout: Duration::from_secs(600),
            header_read_timeout: Duration::from_secs(10),
            max_connections: 4096,
            max_tunnels: 2048,
        }
    }
}

#[derive(Clone, Debug)]
pub struct Config {
    pub listen: SocketAddr,
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

impl Cli {
    /// Parses `args` with environment values from `env` instead of the process
    /// environment: each setting's env value (as clap names it) becomes that argument's
    /// default, so flags still win and clap's own default applies when the env value is
    /// missing or empty. Pure: tests pass a map, never `set_var`.
    pub fn try_parse_with_env<I, T>(args: I, env: &dyn Lookup) -> Result<Self, clap::Error>
    where
        I: IntoIterator<Item = T>,
        T: Into<std::ffi::OsString> + Clone,
    {
        let mut cmd = Self::command();
        let envs: Vec<(clap::Id, Option<String>)> = cmd
            .get_arguments()
            .filter_map(|a| {
                let name = a.get_env()?.to_str()?;
                Some((a.get_id().clone(), env.get(name).filter(|v| !v.trim().is_empty())))
            })
            .collect();
        for (id, value) in envs {
            cmd = cmd.mut_arg(id, |a| {
                let a = a.env(None);
                match value {
                    // clap keeps `&'static str` defaults (its "string" feature is off);
                    // this runs once per parse, so the leak is a few bytes per setting.
                    Some(v) => a.default_value(&*Box::leak(v.into_boxed_str())),
                    None => a,
                }
            });
        }
        Self::from_arg_matches(&cmd.try_get_matches_from(args)?)
    }
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

/// The one validation pass: reads raw values, collects every failure.
struct Check<'a> {
    /// The clap command, for the defaults it owns; built only when a value is empty
    /// (clap has already filled in the defaults of settings not given at all).
    cmd: std::cell::OnceCell<clap::Command>,
    env: &'a dyn Lookup,
    errors: Vec<ConfigError>,
}

impl Check<'_> {
    /// The value (trimmed) if given, else clap's default for the argument `id`; empty
    /// strings count as unset.
    fn one(&self, value: &Option<String>, id: &str) -> Option<String> {
        value.as_deref().map(str::trim).filter(|s| !s.is_empty()).map(String::from).or_else(|| self.default_of(id))
    }

    fn default_of(&self, id: &str) -> Option<String> {
        let arg = self.cmd.get_or_init(Cli::command).get_arguments().find(|a| a.get_id() == id);
        debug_assert!(arg.is_some(), "no argument {id:?}");
        let arg = arg?;
        arg.get_default_values().first()?.to_str().map(String::from)
    }

    /// List settings: every value (a repeated flag, or the env value) split on commas.
    fn list(&self, values: &[String]) -> Vec<String> {
        values.iter().flat_map(|s| s.split(',')).map(str::trim).filter(|s| !s.is_empty()).map(String::from).collect()
    }

    /// Boolean settings: the bare flag means true; env values are true/1/yes/on or
    /// false/0/no/off (any case), empty is false.
    fn flag(&mut self, value: &Option<String>, key: &'static str, name: &'static str) -> bool {
        match value.as_deref().map(|s| s.trim().to_ascii_lowercase()).as_deref() {
            None | Some("" | "false" | "0" | "no" | "off") => false,
            Some("true" | "1" | "yes" | "on") => true,
            Some(s) => {
                self.fail(err(key, name, format!("{s:?} is not a boolean (true/false)")));
                false
            }
        }
    }

    fn ok<T>(&mut self, r: Result<T, ConfigError>) -> Option<T> {
        r.map_err(|e| self.fail(e)).ok()
    }

    fn fail(&mut self, e: ConfigError) {
        self.errors.push(e);
    }
}

fn err(setting: &'static str, flag: &'static str, message: impl Into<String>) -> ConfigError {
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

fn parse_addr(v: Option<String>, setting: &'static str, flag: &'static str) -> Result<Option<SocketAddr>, ConfigError> {
    v.map(|s| s.parse::<SocketAddr>().map_err(|_| err(setting, flag, format!("{s:?} is not an IP:PORT address"))))
        .transpose()
}

/// Builds and validates the whole configuration in one pass, reporting every bad
/// setting (not just the first). Pure: parsed flags (with their env values, see
/// [`Cli::try_parse_with_env`]) plus a lookup for the env-only settings (the key, the
/// job token, `KUBERNETES_SERVICE_HOST`); no I/O.
pub fn parse_config(cli: &Cli, lookup: &dyn Lookup) -> Result<Config, ConfigErrors> {
    let mut c = Check { cmd: std::cell::OnceCell::new(), env: lookup, errors: Vec::new() };
    let d = Limits::default();
    let listen = c
        .ok(parse_addr(c.one(&cli.listen, "listen"), ENV_LISTEN, "--listen"))
        .flatten()
        .unwrap_or_else(|| SocketAddr::from(([127, 0, 0, 1], 3128)));
    let admin_listen =
        c.ok(parse_addr(c.one(&cli.admin_listen, "admin_listen"), ENV_ADMIN_LISTEN, "--admin-listen")).flatten();

    let mut policy = EgressPolicy::default();
    for s in c.list(&cli.allow_cidrs) {
        let r = parse_cidr(&s).map_err(|m| err(ENV_ALLOW_CIDRS, "--allow-cidr", m));
        policy.allow_cidrs.extend(c.ok(r));
    }
    for s in c.list(&cli.deny_cidrs) {
        let r = parse_cidr(&s).map_err(|m| err(ENV_DENY_CIDRS, "--deny-cidr", m));
        policy.deny_cidrs.extend(c.ok(r));
    }
    for s in c.list(&cli.allow_hosts) {
        let r = HostPattern::parse(&s).map_err(|m| err(ENV_ALLOW_HOSTS, "--allow-host", m));
        policy.allow_hosts.extend(c.ok(r));
    }
    for s in c.list(&cli.deny_hosts) {
        let r = HostPattern::parse(&s).map_err(|m| err(ENV_DENY_HOSTS, "--deny-host", m));
        policy.deny_hosts.extend(c.ok(r));
    }
    for s in c.list(&cli.allow_ports) {
        let r = parse_port_setting(&s).map_err(|m| err(ENV_ALLOW_PORTS, "--allow-port", m));
        policy.allow_ports.extend(c.ok(r));
    }
    for s in c.list(&cli.deny_ports) {
        let r = parse_port_setting(&s).map_err(|m| err(ENV_DENY_PORTS, "--deny-port", m));
        policy.deny_ports.extend(c.ok(r));
    }
    policy.deny_private = c.flag(&cli.deny_private, ENV_DENY_PRIVATE, "--deny-private");
    let report_only = c.flag(&cli.report_only, ENV_REPORT_ONLY, "--report-only");
    for s in c.list(&cli.api_server_addresses) {
        let r = parse_api_server(&s).map_err(|m| err(ENV_API_SERVER_ADDRESSES, "--api-server-address", m));
        policy.api_servers.extend(c.ok(r));
    }
    // In a pod, Kubernetes tells us where its API is; refuse it without being asked.
    if let Some(host) = c.env.get(ENV_KUBERNETES_SERVICE_HOST).filter(|s| !s.is_empty()) {
        if let Ok(ip) = host.trim().parse() {
            policy.api_servers.push(ApiServer { ip, port: None });
        }
    }

    let job_dir = c.one(&cli.job_dir, "job_dir").map(PathBuf::from);
    let job_manager_url = c.one(&cli.job_manager_url, "job_manager_url");
    let job_manager = job_manager_url
        .as_deref()
        .map(|s| parse_job_manager_url(s).map_err(|m| err(ENV_JOB_MANAGER_URL, "--job-manager-url", m)))
        .transpose();
    let job_manager = c.ok(job_manager).flatten();
    policy.job_manager = job_manager.as_ref().map(|j| j.target.clone());
    let internal_api_key =
        match (c.one(&cli.internal_api_key_file, "internal_api_key_file"), c.env.get(ENV_INTERNAL_API_KEY)) {
            (Some(f), _) if f == "-" => KeySource::Stdin,
            (Some(f), _) => KeySource::File(PathBuf::from(f)),
            (None, Some(k)) if !k.trim().is_empty() => KeySource::Inline(Secret::new(k.trim())),
            _ => KeySource::None,
        };
    let spool_dir = c.one(&cli.spool_dir, "spool_dir").map(PathBuf::from);
    let positive = |n: &u64| *n > 0;
    let secs = |n: Option<u64>, default: u64| Duration::from_secs(n.unwrap_or(default));
    let ms = |n: Option<u64>, default: u64| Duration::from_millis(n.unwrap_or(default));
    let result_deadline = parse_num(
        c.one(&cli.result_deadline_secs, "result_deadline_secs"),
        ENV_RESULT_DEADLINE_SECS,
        "--result-deadline-secs",
        positive,
        "a positive number of seconds",
    );
    let result_deadline = secs(c.ok(result_deadline).flatten(), 600);
    let shutdown_grace = parse_num(
        c.one(&cli.shutdown_grace_secs, "shutdown_grace_secs"),
        ENV_SHUTDOWN_GRACE_SECS,
        "--shutdown-grace-secs",
        |_| true,
        "a number of seconds",
    );
    let shutdown_grace = secs(c.ok(shutdown_grace).flatten(), 30);

    let ingress_listen = c.one(&cli.ingress_listen, "ingress_listen");
    let ingress_upstream = c.one(&cli.ingress_upstream, "ingress_upstream");
    let ingress = match (ingress_listen, ingress_upstream) {
        (Some(listen), Some(upstream)) => {
            let listen = c.ok(parse_addr(Some(listen), ENV_INGRESS_LISTEN, "--ingress-listen")).flatten();
            let upstream = c.ok(parse_addr(Some(upstream), ENV_INGRESS_UPSTREAM, "--ingress-upstream")).flatten();
            listen.zip(upstream).map(|(listen, upstream)| Ingress { listen, upstream })
        }
        (None, None) => None,
        (Some(listen), None) => {
            c.ok(parse_addr(Some(listen), ENV_INGRESS_LISTEN, "--ingress-listen"));
            c.fail(err(ENV_INGRESS_UPSTREAM, "--ingress-upstream", "required with --ingress-listen"));
            None
        }
        (None, Some(upstream)) => {
            c.ok(parse_addr(Some(upstream), ENV_INGRESS_UPSTREAM, "--ingress-upstream"));
            c.fail(err(ENV_INGRESS_LISTEN, "--ingress-listen", "required with --ingress-upstream"));
            None
        }
    };
    let ingress_given = c.one(&cli.ingress_listen, "ingress_listen").is_some();

    let upstream_proxy_insecure =
        c.flag(&cli.upstream_proxy_insecure, ENV_UPSTREAM_PROXY_INSECURE, "--upstream-proxy-insecure");
    let upstream_proxy_ca_file = c.one(&cli.upstream_proxy_ca_file, "upstream_proxy_ca_file").map(PathBuf::from);
    let upstream_proxy_url = c.one(&cli.upstream_proxy, "upstream_proxy");
    let upstream_proxy = upstream_proxy_url
        .as_deref()
        .map(|s| parse_upstream_proxy(s).map_err(|m| err(ENV_UPSTREAM_PROXY, "--upstream-proxy", m)))
        .transpose();
    let upstream_proxy = c.ok(upstream_proxy).flatten().map(|p| UpstreamProxy {
        ca_file: upstream_proxy_ca_file.clone(),
        insecure: upstream_proxy_insecure,
        ..p
    });
    let mut bypass = UpstreamBypass::default();
    for s in c.list(&cli.upstream_proxy_bypass) {
        match parse_cidr(&s) {
            Ok(n) => bypass.cidrs.push(n),
            Err(_) => {
                let r = HostPattern::parse(&s)
                    .map_err(|m| err(ENV_UPSTREAM_PROXY_BYPASS, "--upstream-proxy-bypass", format!("{m}, or a CIDR")));
                bypass.hosts.extend(c.ok(r));
            }
        }
    }
    if !c.list(&cli.upstream_proxy_bypass).is_empty() && upstream_proxy_url.is_none() {
        c.fail(err(ENV_UPSTREAM_PROXY_BYPASS, "--upstream-proxy-bypass", "only meaningful with --upstream-proxy"));
    }
    let upstream_proxy = upstream_proxy.map(|p| UpstreamProxy { bypass, ..p });
    if upstream_proxy.as_ref().is_some_and(|p| !p.tls) && (upstream_proxy_ca_file.is_some() || upstream_proxy_insecure)
    {
        c.fail(err(
            ENV_UPSTREAM_PROXY_CA_FILE,
            "--upstream-proxy-ca-file",
            "only meaningful with an https:// upstream proxy",
        ));
    }

    let ready_file = c.one(&cli.ready_file, "ready_file").map(PathBuf::from);
    let log_format = match c.one(&cli.log_format, "log_format").as_deref().map(str::to_ascii_lowercase).as_deref() {
        None | Some("text") => LogFormat::Text,
        Some("json") => LogFormat::Json,
        Some(other) => {
            c.fail(err(ENV_LOG_FORMAT, "--log-format", format!("{other:?} is not text or json")));
            LogFormat::Text
        }
    };
    let log_level = c.one(&cli.log_level, "log_level").unwrap_or_else(|| "info".into());
    if log_filter(&log_level).is_err() {
        c.fail(err(
            ENV_LOG_LEVEL,
            "--log-level",
            format!("{log_level:?} is not a log filter (e.g. info, sidecar=debug)"),
        ));
    }
    let job_id = c.one(&cli.job_id, "job_id");
    if let Some(id) = &job_id {
        let r = common::JobId::new(id.clone()).map_err(|e| err(ENV_JOB_ID, "--job-id", e.to_string()));
        c.ok(r);
    }
    let job_token = c.env.get(ENV_JOB_TOKEN).map(|t| t.trim().to_string()).filter(|t| !t.is_empty()).map(Secret::new);

    let any = |_: &usize| true;
    let max_header_bytes = parse_num(
        c.one(&cli.max_header_bytes, "max_header_bytes"),
        ENV_MAX_HEADER_BYTES,
        "--max-header-bytes",
        |n| *n >= 8192,
        "a byte count >= 8192",
    );
    let max_body_bytes = parse_num(
        c.one(&cli.max_body_bytes, "max_body_bytes"),
        ENV_MAX_BODY_BYTES,
        "--max-body-bytes",
        |n| *n > 0,
        "a positive byte count",
    );
    let connect_timeout = parse_num(
        c.one(&cli.connect_timeout_ms, "connect_timeout_ms"),
        ENV_CONNECT_TIMEOUT_MS,
        "--connect-timeout-ms",
        positive,
        "a positive number of ms",
    );
    let idle_timeout = parse_num(
        c.one(&cli.idle_timeout_secs, "idle_timeout_secs"),
        ENV_IDLE_TIMEOUT_SECS,
        "--idle-timeout-secs",
        positive,
        "a positive number of seconds",
    );
    let tunnel_idle_timeout = parse_num(
        c.one(&cli.tunnel_idle_timeout_secs, "tunnel_idle_timeout_secs"),
        ENV_TUNNEL_IDLE_TIMEOUT_SECS,
        "--tunnel-idle-timeout-secs",
        positive,
        "a positive number of seconds",
    );
    let header_read_timeout = parse_num(
        c.one(&cli.header_read_timeout_ms, "header_read_timeout_ms"),
        ENV_HEADER_READ_TIMEOUT_MS,
        "--header-read-timeout-ms",
        positive,
        "a positive number of ms",
    );
    let max_connections = parse_num(
        c.one(&cli.max_connections, "max_connections"),
        ENV_MAX_CONNECTIONS,
        "--max-connections",
        |n| *n > 0,
        "a positive count",
    );
    let max_tunnels = parse_num(
        c.one(&cli.max_tunnels, "max_tunnels"),
        ENV_MAX_TUNNELS,
        "--max-tunnels",
        |n| *n > 0,
        "a positive count",
    );
    let limits = Limits {
        max_header_bytes: c.ok(max_header_bytes).flatten().unwrap_or(d.max_header_bytes),
        max_body_bytes: c.ok(max_body_bytes).flatten().unwrap_or(d.max_body_bytes),
        connect_timeout: ms(c.ok(connect_timeout).flatten(), 10_000),
        idle_timeout: secs(c.ok(idle_timeout).flatten(), 90),
        tunnel_idle_timeout: secs(c.ok(tunnel_idle_timeout).flatten(), 600),
        header_read_timeout: ms(c.ok(header_read_timeout).flatten(), 10_000),
        max_connections: c.ok(max_connections).flatten().unwrap_or(d.max_connections),
        max_tunnels: c.ok(max_tunnels).flatten().unwrap_or(d.max_tunnels),
    };
    let worker_threads =
        parse_num(c.one(&cli.worker_threads, "worker_threads"), ENV_WORKER_THREADS, "--worker-threads", any, "a count");
    let worker_threads = c.ok(worker_threads).flatten().unwrap_or(0);

    // Cross-setting rules. They ask whether a setting was given, not whether it was
    // valid: a bad value is reported above, once, and not again as "missing" here.
    if job_dir.is_some() && job_manager_url.is_none() {
        c.fail(err(ENV_JOB_MANAGER_URL, "--job-manager-url", "required with --job-dir (results must go somewhere)"));
    }
    if job_token.is_some() {
        let rule = if job_dir.is_some() {
            Some("give the job either as --job-dir or as SIDECAR_JOB_ID + SIDECAR_JOB_TOKEN, not both")
        } else if job_id.is_none() {
            Some("SIDECAR_JOB_ID is required with SIDECAR_JOB_TOKEN (which job to fetch)")
        } else if job_manager_url.is_none() {
            Some("--job-manager-url is required with SIDECAR_JOB_TOKEN (where to fetch the job from)")
        } else {
            None
        };
        if let Some(rule) = rule {
            c.fail(err(ENV_JOB_TOKEN, "env only", rule));
        }
    }
    if job_manager_url.is_some() && internal_api_key == KeySource::None {
        c.fail(err(
            ENV_INTERNAL_API_KEY,
            "--internal-api-key-file",
            "an internal API key is required with --job-manager-url (SIDECAR_INTERNAL_API_KEY or --internal-api-key-file)",
        ));
    }
    if ingress_given && internal_api_key == KeySource::None {
        c.fail(err(
            ENV_INTERNAL_API_KEY,
            "--internal-api-key-file",
            "an internal API key is required with --ingress-listen",
        ));
    }

    if !c.errors.is_empty() {
        return Err(ConfigErrors(c.errors));
    }
    Ok(Config {
        listen,
        admin_listen,
        ingress,
        policy,
        report_only,
        job_dir,
        job_manager,
        internal_api_key,
        spool_dir,
        result_deadline,
        shutdown_grace,
        upstream_proxy,
        ready_file,
        log_format,
        log_level,
        job_id,
        job_token,
        limits,
        worker_threads,
    })
}

fn parse_cidr(s: &str) -> Result<ipnet::IpNet, String> {
    if let Ok(n) = s.parse::<ipnet::IpNet>() {
        return Ok(n.trunc());
    }
    // A bare address means just that address.
    s.parse::<std::net::IpAddr>().map(ipnet::IpNet::from).map_err(|_| format!("{s:?} is not a CIDR (e.g. 10.0.0.0/8)"))
}

fn parse_port_setting(s: &str) -> Result<u16, String> {
    match s.parse::<u16>() {
        Ok(p) if p > 0 => Ok(p),
        _ => Err(format!("{s:?} is not a port (1-65535)")),
    }
}

fn parse_api_server(s: &str) -> Result<ApiServer, String> {
    if let Ok(ip) = s.parse() {
        return Ok(ApiServer { ip, port: None });
    }
    if let Ok(sa) = s.parse::<SocketAddr>() {
        return Ok(ApiServer { ip: sa.ip(), port: Some(sa.port()) });
    }
    Err(format!("{s:?} is not an IP or IP:PORT"))
}

fn parse_job_manager_url(s: &str) -> Result<JobManagerEndpoint, String> {
    let uri: http::Uri = s.parse().map_err(|e| format!("{s:?} is not a URL: {e}"))?;
    match uri.scheme_str() {
        Some("http") => {}
        Some(other) => {
            return Err(format!("scheme {other:?} is not supported (the job manager Service is plain http in-cluster)"))
        }
        None => return Err(format!("{s:?} needs a scheme, e.g. http://job-manager:8080")),
    }
    let authority = uri.authority().ok_or_else(|| format!("{s:?} has no host"))?;
    if authority.as_str().contains('@') {
        return Err("credentials do not belong in the job manager URL".into());
    }
    if uri.path() != "/" && !uri.path().is_empty() {
        return Err(format!("{s:?} must not have a path (the result path is fixed)"));
    }
    let target = parse_authority(authority.as_str(), Some(80)).map_err(|e| e.to_string())?;
    Ok(JobManagerEndpoint { base: format!("http://{target}"), target })
}

fn parse_upstream_proxy(s: &str) -> Result<UpstreamProxy, String> {
    let uri: http::Uri = s.parse().map_err(|e| format!("{s:?} is not a URL: {e}"))?;
    let tls = match uri.scheme_str() {
        Some("http") => false,
        Some("https") => true,
        _ => return Err("must be http://[user:pass@]host:port or https://...".into()),
    };
    let authority = uri.authority().ok_or("has no host")?.as_str();
    let (userinfo, hostport) = match authority.rfind('@') {
        Some(i) => (Some(&authority[..i]), &authority[i + 1..]),
        None => (None, authority),
    };
    let target = parse_authority(hostport, Some(if tls { 443 } else { 80 })).map_err(|e| e.to_string())?;
    let host = match &target.host {
        Host::Ip(ip) => ip.to_string(),
        Host::Name(n) => n.clone(),
    };
    let authorization = userinfo
        .map(|u| {
            let (user, pass) = u.split_once(':').unwrap_or((u, ""));
            let user = percent_decode_lossless(user)?;
            let pass = percent_decode_lossless(pass)?;
            use base64::Engine;
            Ok::<_, String>(Secret::new(format!(
                "Basic {}",
                base64::engine::general_purpose::STANDARD.encode(format!("{user}:{pass}"))
            )))
        })
        .transpose()?;
    // Validate the host spelling once, so dialing never meets a surprise.
    parse_host(&host).map_err(|e| e.to_string())?;
    Ok(UpstreamProxy {
        tls,
        host,
        port: target.port,
        authorization,
        ca_file: None,
        insecure: false,
        bypass: UpstreamBypass::default(),
    })
}

fn percent_decode_lossless(s: &str) -> Result<String, String> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' {
            let h = s
                .get(i + 1..i + 3)
                .and_then(|h| u8::from_str_radix(h, 16).ok())
                .ok_or("bad percent-encoding in credentials")?;
            out.push(h);
            i += 3;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8(out).map_err(|_| "credentials are not UTF-8".to_string())
}
