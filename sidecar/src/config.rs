//! Configuration: flags (clap) over environment variables over defaults, parsed by one
//! pure function over a string lookup (tests pass a map, never `set_var`) and validated
//! in one pass. Bad configuration names the setting and exits 64 (`EX_USAGE`).
use crate::authority::{parse_authority, parse_host, Host, Target};
use crate::policy::{ApiServer, EgressPolicy, HostPattern, UpstreamBypass};
use clap::Parser;
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
/// value or a repeated flag.
#[derive(Debug, Default, Parser)]
#[command(name = "sidecar", version, about, long_about, max_term_width = 100)]
pub struct Cli {
    /// Proxy + local runtime API listen address [env: SIDECAR_LISTEN] [default: 127.0.0.1:3128]
    #[arg(long, value_name = "ADDR")]
    pub listen: Option<String>,
    /// Extra listener for /healthz, /readyz, /metrics (pods: 0.0.0.0:9901) [env: SIDECAR_ADMIN_LISTEN]
    #[arg(long, value_name = "ADDR")]
    pub admin_listen: Option<String>,
    /// CIDR allowed even where a built-in rule would refuse it, e.g. 127.0.0.1/32 for a loopback origin [env: SIDECAR_ALLOW_CIDRS]
    #[arg(long = "allow-cidr", value_name = "CIDR")]
    pub allow_cidrs: Vec<String>,
    /// CIDR always refused (beats --allow-cidr) [env: SIDECAR_DENY_CIDRS]
    #[arg(long = "deny-cidr", value_name = "CIDR")]
    pub deny_cidrs: Vec<String>,
    /// Host pattern exempt from the built-in name rules (example.com, *.example.com, .example.com); its addresses are still checked [env: SIDECAR_ALLOW_HOSTS]
    #[arg(long = "allow-host", value_name = "PATTERN")]
    pub allow_hosts: Vec<String>,
    /// Host pattern always refused [env: SIDECAR_DENY_HOSTS]
    #[arg(long = "deny-host", value_name = "PATTERN")]
    pub deny_hosts: Vec<String>,
    /// When given, only these destination ports are allowed [env: SIDECAR_ALLOW_PORTS]
    #[arg(long = "allow-port", value_name = "PORT")]
    pub allow_ports: Vec<String>,
    /// Destination port always refused [env: SIDECAR_DENY_PORTS]
    #[arg(long = "deny-port", value_name = "PORT")]
    pub deny_ports: Vec<String>,
    /// Also refuse private ranges (RFC 1918, CGNAT, ULA) [env: SIDECAR_DENY_PRIVATE=true]
    #[arg(long)]
    pub deny_private: bool,
    /// Log what would be refused but let it through (rollout mode) [env: SIDECAR_REPORT_ONLY=true]
    #[arg(long)]
    pub report_only: bool,
    /// Kubernetes API server address to refuse, IP or IP:PORT; KUBERNETES_SERVICE_HOST is always added [env: SIDECAR_API_SERVER_ADDRESSES]
    #[arg(long = "api-server-address", value_name = "ADDR")]
    pub api_server_addresses: Vec<String>,
    /// Ephemeral job: directory holding job.json and token [env: SIDECAR_JOB_DIR]
    #[arg(long, value_name = "DIR")]
    pub job_dir: Option<String>,
    /// Job manager base URL (http); results go there and calls to it get the internal key [env: SIDECAR_JOB_MANAGER_URL]
    #[arg(long, value_name = "URL")]
    pub job_manager_url: Option<String>,
    /// File holding the internal API key; "-" reads the first line of stdin. The key itself may come from env SIDECAR_INTERNAL_API_KEY (no flag: flags show in ps) [env: SIDECAR_INTERNAL_API_KEY_FILE]
    #[arg(long, value_name = "FILE")]
    pub internal_api_key_file: Option<String>,
    /// Results are written here (fsync + rename) before delivery and re-delivered on start [env: SIDECAR_SPOOL_DIR]
    #[arg(long, value_name = "DIR")]
    pub spool_dir: Option<String>,
    /// Seconds to keep retrying a result [env: SIDECAR_RESULT_DEADLINE_SECS] [default: 600]
    #[arg(long, value_name = "SECS")]
    pub result_deadline_secs: Option<String>,
    /// Seconds SIGTERM waits for in-flight results [env: SIDECAR_SHUTDOWN_GRACE_SECS] [default: 30]
    #[arg(long, value_name = "SECS")]
    pub shutdown_grace_secs: Option<String>,
    /// Persistent workloads: ingress listen address [env: SIDECAR_INGRESS_LISTEN]
    #[arg(long, value_name = "ADDR")]
    pub ingress_listen: Option<String>,
    /// Persistent workloads: the runtime's loopback address [env: SIDECAR_INGRESS_UPSTREAM]
    #[arg(long, value_name = "ADDR")]
    pub ingress_upstream: Option<String>,
    /// Chain egress through this proxy: http(s)://[user:pass@]host:port [env: SIDECAR_UPSTREAM_PROXY]
    #[arg(long, value_name = "URL")]
    pub upstream_proxy: Option<String>,
    /// Extra CA (PEM) trusted for an https upstream proxy [env: SIDECAR_UPSTREAM_PROXY_CA_FILE]
    #[arg(long, value_name = "FILE")]
    pub upstream_proxy_ca_file: Option<String>,
    /// Accept any certificate from an https upstream proxy (self-signed) [env: SIDECAR_UPSTREAM_PROXY_INSECURE=true]
    #[arg(long)]
    pub upstream_proxy_insecure: bool,
    /// Dial this host pattern (as --allow-host) or CIDR directly, not through the upstream proxy; repeatable (a NO_PROXY list, e.g. .svc.cluster.local,10.0.0.0/8) [env: SIDECAR_UPSTREAM_PROXY_BYPASS, comma-separated]
    #[arg(long = "upstream-proxy-bypass", value_name = "HOST|CIDR")]
    pub upstream_proxy_bypass: Vec<String>,
    /// Write the bound addresses as JSON here once serving [env: SIDECAR_READY_FILE]
    #[arg(long, value_name = "FILE")]
    pub ready_file: Option<String>,
    /// text or json [env: SIDECAR_LOG_FORMAT] [default: text]
    #[arg(long, value_name = "FORMAT")]
    pub log_format: Option<String>,
    /// tracing filter, e.g. info or sidecar=debug [env: SIDECAR_LOG_LEVEL] [default: info]
    #[arg(long, value_name = "FILTER")]
    pub log_level: Option<String>,
    /// Job id for log lines (ephemeral jobs also read it from job.json). With the job token in env SIDECAR_JOB_TOKEN (no flag: flags show in ps) and no --job-dir, the sidecar fetches this job from the job manager before it reports ready [env: SIDECAR_JOB_ID]
    #[arg(long, value_name = "ID")]
    pub job_id: Option<String>,
    /// Largest request head accepted, bytes (>= 8192) [env: SIDECAR_MAX_HEADER_BYTES] [default: 65536]
    #[arg(long, value_name = "BYTES")]
    pub max_header_bytes: Option<String>,
    /// Largest local API / ingress dispatch body, bytes [env: SIDECAR_MAX_BODY_BYTES] [default: 10485760]
    #[arg(long, value_name = "BYTES")]
    pub max_body_bytes: Option<String>,
    /// Upstream connect timeout, ms (DNS included) [env: SIDECAR_CONNECT_TIMEOUT_MS] [default: 10000]
    #[arg(long, value_name = "MS")]
    pub connect_timeout_ms: Option<String>,
    /// Idle keep-alive timeout for pooled upstream connections, seconds [env: SIDECAR_IDLE_TIMEOUT_SECS] [default: 90]
    #[arg(long, value_name = "SECS")]
    pub idle_timeout_secs: Option<String>,
    /// A tunnel with no traffic either way for this long is closed, seconds [env: SIDECAR_TUNNEL_IDLE_TIMEOUT_SECS] [default: 600]
    #[arg(long, value_name = "SECS")]
    pub tunnel_idle_timeout_secs: Option<String>,
    /// A request head must arrive within this time (slowloris guard; also closes idle keep-alive client connections), ms [env: SIDECAR_HEADER_READ_TIMEOUT_MS] [default: 10000]
    #[arg(long, value_name = "MS")]
    pub header_read_timeout_ms: Option<String>,
    /// Concurrent client connections (tunnels included); more get 503 [env: SIDECAR_MAX_CONNECTIONS] [default: 4096]
    #[arg(long, value_name = "N")]
    pub max_connections: Option<String>,
    /// Concurrent CONNECT tunnels; more get 503 [env: SIDECAR_MAX_TUNNELS] [default: 2048]
    #[arg(long, value_name = "N")]
    pub max_tunnels: Option<String>,
    /// Runtime worker threads, 0 = min(2, CPUs) [env: SIDECAR_WORKER_THREADS] [default: 0]
    #[arg(long, value_name = "N")]
    pub worker_threads: Option<String>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LogFormat {
    Text,
    Json,
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

impl Config {
    /// A standalone proxy on `listen` with every default; a starting point for tests.
    pub fn standalone(listen: SocketAddr) -> Self {
        parse_config(&Cli { listen: Some(listen.to_string()), ..Default::default() }, &HashMap::<String, String>::new())
            .expect("defaults are valid")
    }
}

/// A setting that failed validation, named by its env variable and flag.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("invalid {setting} ({flag}): {message}")]
pub struct ConfigError {
    pub setting: &'static str,
    pub flag: &'static str,
    pub message: String,
}

struct Source<'a> {
    env: &'a dyn Lookup,
}

impl Source<'_> {
    /// The flag value if given, else the env value; empty strings count as unset.
    fn one(&self, flag: &Option<String>, key: &str) -> Option<String> {
        flag.clone().or_else(|| self.env.get(key)).filter(|s| !s.trim().is_empty()).map(|s| s.trim().to_string())
    }
    fn list(&self, flag: &[String], key: &str) -> Vec<String> {
        let raw: Vec<String> = if flag.is_empty() { self.env.get(key).into_iter().collect() } else { flag.to_vec() };
        raw.iter().flat_map(|s| s.split(',')).map(str::trim).filter(|s| !s.is_empty()).map(String::from).collect()
    }
    fn flag(&self, flag: bool, key: &'static str, name: &'static str) -> Result<bool, ConfigError> {
        if flag {
            return Ok(true);
        }
        match self.env.get(key).map(|s| s.trim().to_ascii_lowercase()) {
            None => Ok(false),
            Some(s) => match s.as_str() {
                "" | "false" | "0" | "no" | "off" => Ok(false),
                "true" | "1" | "yes" | "on" => Ok(true),
                _ => Err(err(key, name, format!("{s:?} is not a boolean (true/false)"))),
            },
        }
    }
}

fn err(setting: &'static str, flag: &'static str, message: impl Into<String>) -> ConfigError {
    ConfigError { setting, flag, message: message.into() }
}

fn parse_num<T: std::str::FromStr>(
    v: Option<String>,
    default: T,
    setting: &'static str,
    flag: &'static str,
    valid: impl Fn(&T) -> bool,
    rule: &str,
) -> Result<T, ConfigError> {
    match v {
        None => Ok(default),
        Some(s) => match s.parse::<T>() {
            Ok(n) if valid(&n) => Ok(n),
            _ => Err(err(setting, flag, format!("{s:?} is not {rule}"))),
        },
    }
}

fn parse_addr(v: Option<String>, setting: &'static str, flag: &'static str) -> Result<Option<SocketAddr>, ConfigError> {
    v.map(|s| s.parse::<SocketAddr>().map_err(|_| err(setting, flag, format!("{s:?} is not an IP:PORT address"))))
        .transpose()
}

/// Builds and validates the whole configuration. Pure: flags plus a lookup, no I/O.
pub fn parse_config(cli: &Cli, lookup: &dyn Lookup) -> Result<Config, ConfigError> {
    let src = Source { env: lookup };
    let listen = parse_addr(src.one(&cli.listen, ENV_LISTEN), ENV_LISTEN, "--listen")?
        .unwrap_or_else(|| SocketAddr::from(([127, 0, 0, 1], 3128)));
    let admin_listen = parse_addr(src.one(&cli.admin_listen, ENV_ADMIN_LISTEN), ENV_ADMIN_LISTEN, "--admin-listen")?;

    let mut policy = EgressPolicy::default();
    for s in src.list(&cli.allow_cidrs, ENV_ALLOW_CIDRS) {
        policy.allow_cidrs.push(parse_cidr(&s).map_err(|m| err(ENV_ALLOW_CIDRS, "--allow-cidr", m))?);
    }
    for s in src.list(&cli.deny_cidrs, ENV_DENY_CIDRS) {
        policy.deny_cidrs.push(parse_cidr(&s).map_err(|m| err(ENV_DENY_CIDRS, "--deny-cidr", m))?);
    }
    for s in src.list(&cli.allow_hosts, ENV_ALLOW_HOSTS) {
        policy.allow_hosts.push(HostPattern::parse(&s).map_err(|m| err(ENV_ALLOW_HOSTS, "--allow-host", m))?);
    }
    for s in src.list(&cli.deny_hosts, ENV_DENY_HOSTS) {
        policy.deny_hosts.push(HostPattern::parse(&s).map_err(|m| err(ENV_DENY_HOSTS, "--deny-host", m))?);
    }
    for s in src.list(&cli.allow_ports, ENV_ALLOW_PORTS) {
        policy.allow_ports.push(parse_port_setting(&s).map_err(|m| err(ENV_ALLOW_PORTS, "--allow-port", m))?);
    }
    for s in src.list(&cli.deny_ports, ENV_DENY_PORTS) {
        policy.deny_ports.push(parse_port_setting(&s).map_err(|m| err(ENV_DENY_PORTS, "--deny-port", m))?);
    }
    policy.deny_private = src.flag(cli.deny_private, ENV_DENY_PRIVATE, "--deny-private")?;
    let report_only = src.flag(cli.report_only, ENV_REPORT_ONLY, "--report-only")?;
    for s in src.list(&cli.api_server_addresses, ENV_API_SERVER_ADDRESSES) {
        policy
            .api_servers
            .push(parse_api_server(&s).map_err(|m| err(ENV_API_SERVER_ADDRESSES, "--api-server-address", m))?);
    }
    // In a pod, Kubernetes tells us where its API is; refuse it without being asked.
    if let Some(host) = lookup.get(ENV_KUBERNETES_SERVICE_HOST).filter(|s| !s.is_empty()) {
        if let Ok(ip) = host.trim().parse() {
            policy.api_servers.push(ApiServer { ip, port: None });
        }
    }

    let job_dir = src.one(&cli.job_dir, ENV_JOB_DIR).map(PathBuf::from);
    let job_manager = src
        .one(&cli.job_manager_url, ENV_JOB_MANAGER_URL)
        .map(|s| parse_job_manager_url(&s).map_err(|m| err(ENV_JOB_MANAGER_URL, "--job-manager-url", m)))
        .transpose()?;
    policy.job_manager = job_manager.as_ref().map(|j| j.target.clone());
    let internal_api_key =
        match (src.one(&cli.internal_api_key_file, ENV_INTERNAL_API_KEY_FILE), lookup.get(ENV_INTERNAL_API_KEY)) {
            (Some(f), _) if f == "-" => KeySource::Stdin,
            (Some(f), _) => KeySource::File(PathBuf::from(f)),
            (None, Some(k)) if !k.trim().is_empty() => KeySource::Inline(Secret::new(k.trim())),
            _ => KeySource::None,
        };
    let spool_dir = src.one(&cli.spool_dir, ENV_SPOOL_DIR).map(PathBuf::from);
    let positive = |n: &u64| *n > 0;
    let result_deadline = Duration::from_secs(parse_num(
        src.one(&cli.result_deadline_secs, ENV_RESULT_DEADLINE_SECS),
        600,
        ENV_RESULT_DEADLINE_SECS,
        "--result-deadline-secs",
        positive,
        "a positive number of seconds",
    )?);
    let shutdown_grace = Duration::from_secs(parse_num(
        src.one(&cli.shutdown_grace_secs, ENV_SHUTDOWN_GRACE_SECS),
        30,
        ENV_SHUTDOWN_GRACE_SECS,
        "--shutdown-grace-secs",
        |_| true,
        "a number of seconds",
    )?);

    let ingress_listen =
        parse_addr(src.one(&cli.ingress_listen, ENV_INGRESS_LISTEN), ENV_INGRESS_LISTEN, "--ingress-listen")?;
    let ingress_upstream =
        parse_addr(src.one(&cli.ingress_upstream, ENV_INGRESS_UPSTREAM), ENV_INGRESS_UPSTREAM, "--ingress-upstream")?;
    let ingress = match (ingress_listen, ingress_upstream) {
        (Some(listen), Some(upstream)) => Some(Ingress { listen, upstream }),
        (None, None) => None,
        (Some(_), None) => {
            return Err(err(ENV_INGRESS_UPSTREAM, "--ingress-upstream", "required with --ingress-listen"))
        }
        (None, Some(_)) => return Err(err(ENV_INGRESS_LISTEN, "--ingress-listen", "required with --ingress-upstream")),
    };

    let upstream_proxy_insecure =
        src.flag(cli.upstream_proxy_insecure, ENV_UPSTREAM_PROXY_INSECURE, "--upstream-proxy-insecure")?;
    let upstream_proxy_ca_file = src.one(&cli.upstream_proxy_ca_file, ENV_UPSTREAM_PROXY_CA_FILE).map(PathBuf::from);
    let upstream_proxy = src
        .one(&cli.upstream_proxy, ENV_UPSTREAM_PROXY)
        .map(|s| parse_upstream_proxy(&s).map_err(|m| err(ENV_UPSTREAM_PROXY, "--upstream-proxy", m)))
        .transpose()?
        .map(|p| UpstreamProxy { ca_file: upstream_proxy_ca_file.clone(), insecure: upstream_proxy_insecure, ..p });
    let mut bypass = UpstreamBypass::default();
    for s in src.list(&cli.upstream_proxy_bypass, ENV_UPSTREAM_PROXY_BYPASS) {
        match parse_cidr(&s) {
            Ok(n) => bypass.cidrs.push(n),
            Err(_) => {
                bypass.hosts.push(HostPattern::parse(&s).map_err(|m| {
                    err(ENV_UPSTREAM_PROXY_BYPASS, "--upstream-proxy-bypass", format!("{m}, or a CIDR"))
                })?)
            }
        }
    }
    if bypass != UpstreamBypass::default() && upstream_proxy.is_none() {
        return Err(err(ENV_UPSTREAM_PROXY_BYPASS, "--upstream-proxy-bypass", "only meaningful with --upstream-proxy"));
    }
    let upstream_proxy = upstream_proxy.map(|p| UpstreamProxy { bypass, ..p });
    if upstream_proxy.as_ref().is_some_and(|p| !p.tls) && (upstream_proxy_ca_file.is_some() || upstream_proxy_insecure)
    {
        return Err(err(
            ENV_UPSTREAM_PROXY_CA_FILE,
            "--upstream-proxy-ca-file",
            "only meaningful with an https:// upstream proxy",
        ));
    }

    let ready_file = src.one(&cli.ready_file, ENV_READY_FILE).map(PathBuf::from);
    let log_format = match src.one(&cli.log_format, ENV_LOG_FORMAT).as_deref().map(str::to_ascii_lowercase).as_deref() {
        None | Some("text") => LogFormat::Text,
        Some("json") => LogFormat::Json,
        Some(other) => return Err(err(ENV_LOG_FORMAT, "--log-format", format!("{other:?} is not text or json"))),
    };
    let log_level = src.one(&cli.log_level, ENV_LOG_LEVEL).unwrap_or_else(|| "info".into());
    if crate::telemetry::log_filter(&log_level).is_err() {
        return Err(err(
            ENV_LOG_LEVEL,
            "--log-level",
            format!("{log_level:?} is not a log filter (e.g. info, sidecar=debug)"),
        ));
    }
    let job_id = src.one(&cli.job_id, ENV_JOB_ID);
    if let Some(id) = &job_id {
        common::JobId::new(id.clone()).map_err(|e| err(ENV_JOB_ID, "--job-id", e.to_string()))?;
    }
    let job_token = lookup.get(ENV_JOB_TOKEN).map(|t| t.trim().to_string()).filter(|t| !t.is_empty()).map(Secret::new);

    let d = Limits::default();
    let any = |_: &usize| true;
    let limits = Limits {
        max_header_bytes: parse_num(
            src.one(&cli.max_header_bytes, ENV_MAX_HEADER_BYTES),
            d.max_header_bytes,
            ENV_MAX_HEADER_BYTES,
            "--max-header-bytes",
            |n| *n >= 8192,
            "a byte count >= 8192",
        )?,
        max_body_bytes: parse_num(
            src.one(&cli.max_body_bytes, ENV_MAX_BODY_BYTES),
            d.max_body_bytes,
            ENV_MAX_BODY_BYTES,
            "--max-body-bytes",
            |n| *n > 0,
            "a positive byte count",
        )?,
        connect_timeout: Duration::from_millis(parse_num(
            src.one(&cli.connect_timeout_ms, ENV_CONNECT_TIMEOUT_MS),
            10_000,
            ENV_CONNECT_TIMEOUT_MS,
            "--connect-timeout-ms",
            positive,
            "a positive number of ms",
        )?),
        idle_timeout: Duration::from_secs(parse_num(
            src.one(&cli.idle_timeout_secs, ENV_IDLE_TIMEOUT_SECS),
            90,
            ENV_IDLE_TIMEOUT_SECS,
            "--idle-timeout-secs",
            positive,
            "a positive number of seconds",
        )?),
        tunnel_idle_timeout: Duration::from_secs(parse_num(
            src.one(&cli.tunnel_idle_timeout_secs, ENV_TUNNEL_IDLE_TIMEOUT_SECS),
            600,
            ENV_TUNNEL_IDLE_TIMEOUT_SECS,
            "--tunnel-idle-timeout-secs",
            positive,
            "a positive number of seconds",
        )?),
        header_read_timeout: Duration::from_millis(parse_num(
            src.one(&cli.header_read_timeout_ms, ENV_HEADER_READ_TIMEOUT_MS),
            10_000,
            ENV_HEADER_READ_TIMEOUT_MS,
            "--header-read-timeout-ms",
            positive,
            "a positive number of ms",
        )?),
        max_connections: parse_num(
            src.one(&cli.max_connections, ENV_MAX_CONNECTIONS),
            d.max_connections,
            ENV_MAX_CONNECTIONS,
            "--max-connections",
            |n| *n > 0,
            "a positive count",
        )?,
        max_tunnels: parse_num(
            src.one(&cli.max_tunnels, ENV_MAX_TUNNELS),
            d.max_tunnels,
            ENV_MAX_TUNNELS,
            "--max-tunnels",
            |n| *n > 0,
            "a positive count",
        )?,
    };
    let worker_threads = parse_num(
        src.one(&cli.worker_threads, ENV_WORKER_THREADS),
        0,
        ENV_WORKER_THREADS,
        "--worker-threads",
        any,
        "a count",
    )?;

    // Cross-setting rules, checked once here.
    if job_dir.is_some() && job_manager.is_none() {
        return Err(err(
            ENV_JOB_MANAGER_URL,
            "--job-manager-url",
            "required with --job-dir (results must go somewhere)",
        ));
    }
    if job_token.is_some() {
        let rule = if job_dir.is_some() {
            Some("give the job either as --job-dir or as SIDECAR_JOB_ID + SIDECAR_JOB_TOKEN, not both")
        } else if job_id.is_none() {
            Some("SIDECAR_JOB_ID is required with SIDECAR_JOB_TOKEN (which job to fetch)")
        } else if job_manager.is_none() {
            Some("--job-manager-url is required with SIDECAR_JOB_TOKEN (where to fetch the job from)")
        } else {
            None
        };
        if let Some(rule) = rule {
            return Err(err(ENV_JOB_TOKEN, "env only", rule));
        }
    }
    if job_manager.is_some() && internal_api_key == KeySource::None {
        return Err(err(
            ENV_INTERNAL_API_KEY,
            "--internal-api-key-file",
            "an internal API key is required with --job-manager-url (SIDECAR_INTERNAL_API_KEY or --internal-api-key-file)",
        ));
    }
    if ingress.is_some() && internal_api_key == KeySource::None {
        return Err(err(
            ENV_INTERNAL_API_KEY,
            "--internal-api-key-file",
            "an internal API key is required with --ingress-listen",
        ));
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
