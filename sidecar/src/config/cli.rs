//! The command line: the clap [`Cli`] struct (flag names, env variables, defaults),
//! handing over raw strings, and [`Cli::try_parse_with_env`], which reads env values
//! from a [`Lookup`] so tests never touch the process environment.
use super::*;
use clap::{CommandFactory, FromArgMatches, Parser};

/// Egress proxy and result reporter that runs beside every runtime.
///
/// Every setting is a flag and an environment variable (flags win). With only
/// `--listen` it is a standalone egress proxy with the default policy: cloud metadata,
/// link-local, loopback, the Kubernetes API and kubelet ports are refused; private
/// ranges are allowed unless --deny-private. List settings take a comma-separated env
/// value or a repeated flag (which replaces the env list); boolean settings take
/// true/false (1/0, yes/no, on/off) from the environment.
#[derive(Debug, Default, Parser)]
#[command(name = "sidecar", version = common::build_info::LONG_VERSION, about, long_about, max_term_width = 100)]
pub struct Cli {
    /// Proxy + local runtime API listen address [default: 127.0.0.1:3128]
    #[arg(long, value_name = "ADDR", env = ENV_LISTEN, hide_env_values = true)]
    pub listen: Option<String>,
    /// Serve the proxy on the bound, listening TCP socket inherited as stdin (instead of --listen); the key must then come from a file
    #[arg(long, env = ENV_LISTEN_STDIN, num_args = 0, default_missing_value = "true", value_name = "BOOL", hide_env_values = true)]
    pub listen_stdin: Option<String>,
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
    /// Also refuse public addresses: only --allow-cidr destinations (and the job manager) are reachable
    #[arg(long, env = ENV_DENY_PUBLIC, num_args = 0, default_missing_value = "true", value_name = "BOOL", hide_env_values = true)]
    pub deny_public: Option<String>,
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
    /// Names that do not resolve locally: refuse (403; the address rules cannot run on them) or forward them for the upstream proxy to resolve, unchecked
    #[arg(long, value_name = "refuse|forward", env = ENV_UPSTREAM_PROXY_UNRESOLVED, default_value = "refuse", hide_env_values = true)]
    pub upstream_proxy_unresolved: Option<String>,
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
    /// Largest local API / ingress dispatch body, bytes: a result over it gets 413 and the job fails. The job manager sets it to its maxResultBytes; the default is that setting's default
    #[arg(long, value_name = "BYTES", env = ENV_MAX_BODY_BYTES, default_value = "1048576", hide_env_values = true)]
    pub max_body_bytes: Option<String>,
    /// Memory for all such bodies at once, bytes (>= --max-body-bytes); a body that would go over gets 503 with Retry-After
    #[arg(long, value_name = "BYTES", env = ENV_MAX_BODY_MEMORY_BYTES, default_value = "33554432", hide_env_values = true)]
    pub max_body_memory_bytes: Option<String>,
    /// A local API / ingress dispatch body must arrive whole within this time (slow uploads get 408), ms
    #[arg(long, value_name = "MS", env = ENV_BODY_READ_TIMEOUT_MS, default_value = "30000", hide_env_values = true)]
    pub body_read_timeout_ms: Option<String>,
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
    /// Concurrent client connections on the proxy listener (tunnels included); more get 503. The admin and ingress listeners have caps of their own
    #[arg(long, value_name = "N", env = ENV_MAX_CONNECTIONS, default_value = "4096", hide_env_values = true)]
    pub max_connections: Option<String>,
    /// Concurrent connections on the admin listener (probes, metrics); more get 503
    #[arg(long, value_name = "N", env = ENV_MAX_ADMIN_CONNECTIONS, default_value = "64", hide_env_values = true)]
    pub max_admin_connections: Option<String>,
    /// Concurrent connections on the ingress listener; more get 503
    #[arg(long, value_name = "N", env = ENV_MAX_INGRESS_CONNECTIONS, default_value = "1024", hide_env_values = true)]
    pub max_ingress_connections: Option<String>,
    /// Concurrent CONNECT tunnels; more get 503
    #[arg(long, value_name = "N", env = ENV_MAX_TUNNELS, default_value = "2048", hide_env_values = true)]
    pub max_tunnels: Option<String>,
    /// Runtime worker threads, 0 = min(2, CPUs)
    #[arg(long, value_name = "N", env = ENV_WORKER_THREADS, default_value = "0", hide_env_values = true)]
    pub worker_threads: Option<String>,
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
