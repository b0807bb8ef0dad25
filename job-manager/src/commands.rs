//! The binary's verbs: parse flags, load the configuration, choose a broker and a
//! backend, and hand them to the composition root ([`crate::app::App`]); `sign`,
//! `render`, `crd` and `rbac` need no running job manager.
use crate::app::{App, AppSettings, StartError};
use crate::backend::kubernetes::backend::KubeBackend;
use crate::backend::local::LocalBackend;
use crate::backend::{Backend, BackendError};
use crate::broker::client::{BrokerClientConfig, HttpBroker};
use crate::broker::embedded::{EmbeddedBroker, EmbeddedOptions};
use crate::broker::{BrokerApi, BrokerError};
use crate::cli::{Cli, Command, RenderArgs, RunArgs, SignArgs};
use crate::config::model::ExecutorKind;
use crate::config::{self, ConfigError, EnvLookup, ProcessEnv, Validated, EMBEDDED_BROKER, EXIT_USAGE};
use std::sync::Arc;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

/// Exit status when the broker is unreachable at startup (`EX_UNAVAILABLE`).
pub const EXIT_UNAVAILABLE: i32 = 69;

#[derive(Debug, thiserror::Error)]
pub enum AppError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error("broker: {0}")]
    Broker(#[from] BrokerError),
    #[error("cannot listen on {addr}: {source}")]
    Listen { addr: String, source: std::io::Error },
    #[error(transparent)]
    Backend(#[from] BackendError),
    #[error(transparent)]
    Start(#[from] StartError),
    #[error("{0}")]
    Io(String),
}

impl AppError {
    pub fn exit_code(&self) -> i32 {
        match self {
            AppError::Config(_) => EXIT_USAGE,
            AppError::Backend(e) | AppError::Start(StartError::Backend(e)) if e.is_usage() => EXIT_USAGE,
            AppError::Broker(_) => EXIT_UNAVAILABLE,
            _ => 1,
        }
    }
}

/// The binary's entry point: parse flags, dispatch the subcommand, return the exit code.
pub fn main() -> i32 {
    // The local executor's launcher: internal, single-threaded, never reaches clap or tokio.
    if std::env::args_os().nth(1).is_some_and(|a| a == crate::backend::local::launcher::SUBCOMMAND) {
        return crate::backend::local::launcher::main(std::env::args_os().skip(2));
    }
    // The local executor's output helper: internal too, and as small.
    if std::env::args_os().nth(1).is_some_and(|a| a == crate::backend::local::output::SUBCOMMAND) {
        return crate::backend::local::output::main(std::env::args_os().skip(2));
    }
    let cli = <Cli as clap::Parser>::parse();
    // Blocking threads do the result store's fsyncs and state scans; a burst of result
    // posts must not fan out into hundreds of threads (and their stacks).
    let rt = match tokio::runtime::Builder::new_multi_thread().enable_all().max_blocking_threads(32).build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("job-manager: cannot start the async runtime: {e}");
            return 1;
        }
    };
    rt.block_on(main_with(cli))
}

pub async fn main_with(cli: Cli) -> i32 {
    match cli.command {
        None => run_command(cli.run).await,
        Some(Command::Run(args)) => run_command(args).await,
        Some(Command::Demo(args)) => crate::demo::run(args).await,
        Some(Command::Sign(args)) => sign_command(&args),
        Some(Command::Render(args)) => render_command(&args, &ProcessEnv),
        Some(Command::Crd) => {
            print!("{}", crate::backend::kubernetes::cli::crd());
            0
        }
        Some(Command::Check(args)) => {
            crate::check::run(&args.url, std::time::Duration::from_secs(args.timeout_secs)).await
        }
        Some(Command::Rbac) => {
            print!("{}", crate::backend::kubernetes::cli::rbac());
            0
        }
    }
}

/// Load and validate the configuration from flags + environment.
pub fn load_config(args: &RunArgs, env: &dyn EnvLookup) -> Result<Validated, ConfigError> {
    config::validate(load_unvalidated(args, env)?)
}

fn load_unvalidated(args: &RunArgs, env: &dyn EnvLookup) -> Result<config::Config, ConfigError> {
    let overrides = args.overrides().map_err(|rule| ConfigError::Invalid { setting: "--set".into(), rule })?;
    let file = config::config_file_path(args.config.as_deref(), env);
    config::load(file.as_deref(), env, &overrides)
}

/// Stands in for a secret `render` never shows (it reaches pods by `secretKeyRef`, or
/// only the broker sees it), so a config without secrets renders.
pub const RENDER_SECRET_PLACEHOLDER: &str = "<secret, not rendered>";

/// `render`'s configuration: loaded like `run`'s (file, `JM_*` env, `--set`), run by the
/// kubernetes executor, secrets it does not show filled with a placeholder, then the
/// same [`config::validate`] as `run`.
pub fn load_render_config(args: &RenderArgs, env: &dyn EnvLookup) -> Result<Validated, ConfigError> {
    let run_args = RunArgs { config: args.config.clone(), set: args.set.clone(), ..RunArgs::default() };
    let mut c = load_unvalidated(&run_args, env)?;
    c.executor = ExecutorKind::Kubernetes;
    for secret in [&mut c.location_key, &mut c.internal_api_key] {
        if secret.trim().is_empty() {
            *secret = RENDER_SECRET_PLACEHOLDER.into();
        }
    }
    config::validate(c)
}

fn render_command(args: &RenderArgs, env: &dyn EnvLookup) -> i32 {
    let validated = match load_render_config(args, env) {
        Ok(v) => v,
        Err(e) => {
            eprintln!("job-manager render: {e}");
            if config::config_file_path(args.config.as_deref(), env).is_none() {
                eprintln!(
                    "job-manager render: no --config (nor JM_CONFIG_FILE): the built-in defaults configure no runtime; \
                     try --config deploy/examples/kubernetes.yaml, or the chart's ConfigMap (see the chart's NOTES)"
                );
            }
            return EXIT_USAGE;
        }
    };
    for warning in &validated.warnings {
        eprintln!("job-manager render: warning: {warning}");
    }
    match crate::backend::kubernetes::cli::render_files(&args.job, &validated, args.namespace.as_deref()) {
        Ok(yaml) => {
            print!("{yaml}");
            0
        }
        Err(e) => {
            eprintln!("job-manager render: {e}");
            EXIT_USAGE
        }
    }
}

async fn run_command(args: RunArgs) -> i32 {
    if args.list_settings {
        for (key, env, default) in config::settings_table() {
            println!("{key:<50} {env:<60} {default}");
        }
        return 0;
    }
    let validated = match load_config(&args, &ProcessEnv) {
        Ok(v) => v,
        Err(e) => {
            eprintln!("job-manager: {e}");
            return EXIT_USAGE;
        }
    };
    if args.print_config {
        for warning in &validated.warnings {
            eprintln!("job-manager: warning: {warning}");
        }
        print!("{}", config::redacted_yaml(&validated.config));
        return 0;
    }
    crate::telemetry::init(&validated.config.log_level, validated.config.log_format);
    let shutdown = CancellationToken::new();
    tokio::spawn(cancel_on_signal(shutdown.clone()));
    match run(validated, &args, shutdown).await {
        Ok(()) => 0,
        Err(e) => {
            tracing::error!(error = %e, "job manager failed");
            eprintln!("job-manager: {e}");
            e.exit_code()
        }
    }
}

/// Cancel `token` on SIGTERM or SIGINT.
pub async fn cancel_on_signal(token: CancellationToken) {
    use tokio::signal::unix::{signal, SignalKind};
    let (Ok(mut term), Ok(mut int)) = (signal(SignalKind::terminate()), signal(SignalKind::interrupt())) else {
        tracing::error!("cannot install signal handlers");
        return;
    };
    tokio::select! {
        _ = term.recv() => tracing::info!("SIGTERM: shutting down"),
        _ = int.recv() => tracing::info!("SIGINT: shutting down"),
    }
    token.cancel();
}

/// Run until `shutdown` with the configured broker and backend.
pub async fn run(validated: Validated, args: &RunArgs, shutdown: CancellationToken) -> Result<(), AppError> {
    for w in &validated.warnings {
        tracing::warn!("{w}");
    }
    let c = &validated.config;
    let listener = bind(&c.listen).await?;
    if c.broker_api_endpoint == EMBEDDED_BROKER {
        let broker = EmbeddedBroker::new(EmbeddedOptions::from(c));
        if let Some(dir) = &args.submit_dir {
            let n = broker.load_dir(dir).map_err(|e| AppError::Io(format!("cannot submit jobs: {e}")))?;
            tracing::info!(jobs = n, dir = %dir.display(), "submitted jobs to the embedded broker");
        }
        if let Some(addr) = &args.embedded_broker_listen {
            if c.location_key.is_empty() {
                // Callers of its HTTP API authenticate with the location key; a random one
                // would make the API unusable.
                return Err(AppError::Config(ConfigError::invalid(
                    "locationKey",
                    "is required with --embedded-broker-listen (clients of the embedded broker's API present it)",
                )));
            }
            let l = bind(addr).await?;
            tracing::info!(addr = %l.local_addr().map_err(|e| AppError::Io(e.to_string()))?, "embedded broker serving");
            let (b, stop) = (broker.clone(), shutdown.clone());
            tokio::spawn(async move { b.serve(l, async move { stop.cancelled().await }).await });
        }
        run_on(&validated, Arc::new(broker), listener, shutdown, None).await
    } else {
        let broker = Arc::new(HttpBroker::new(BrokerClientConfig::from(c))?);
        let health_check = if c.network_health_check_disabled {
            tracing::info!("network health check disabled");
            None
        } else {
            Some(broker.clone())
        };
        run_on(&validated, broker, listener, shutdown, health_check).await
    }
}

/// The broker is chosen; choose the backend.
async fn run_on<B: BrokerApi>(
    validated: &Validated,
    broker: Arc<B>,
    listener: TcpListener,
    shutdown: CancellationToken,
    health_check: Option<Arc<HttpBroker>>,
) -> Result<(), AppError> {
    match validated.config.executor {
        ExecutorKind::Local => {
            serve(validated, broker, LocalBackend::new(validated)?, listener, shutdown, health_check).await
        }
        ExecutorKind::Kubernetes => {
            let backend = KubeBackend::connect(validated, None).await?;
            serve(validated, broker, backend, listener, shutdown, health_check).await
        }
    }
}

/// Start, then check the broker. Started first: jobs a previous process left running
/// are adopted and their deadlines enforced whatever the broker's state. An unreachable
/// broker still ends a job manager with nothing running (exit 69, as before); one that
/// runs jobs stays up for them (its results wait in the store, its polls retry).
async fn serve<B: BrokerApi, K: Backend>(
    validated: &Validated,
    broker: Arc<B>,
    backend: K,
    listener: TcpListener,
    shutdown: CancellationToken,
    health_check: Option<Arc<HttpBroker>>,
) -> Result<(), AppError> {
    let handle = App::start(AppSettings::from(validated), broker, backend, listener).await?;
    if let Some(broker) = health_check {
        match broker.network_health_check().await {
            Ok(()) => tracing::info!(endpoint = %validated.config.broker_api_endpoint, "broker reachable"),
            Err(e) if handle.jobs_at_start == 0 => {
                let _ = handle.stop().await;
                return Err(e.into());
            }
            Err(e) => tracing::error!(
                error = %e,
                jobs = handle.jobs_at_start,
                "broker unreachable at start; staying up to supervise the jobs left running (polls retry)"
            ),
        }
    }
    shutdown.cancelled().await;
    handle.stop().await.map_err(|e| AppError::Io(format!("job manager task failed: {e}")))
}

pub async fn bind(addr: &str) -> Result<TcpListener, AppError> {
    TcpListener::bind(addr).await.map_err(|source| AppError::Listen { addr: addr.to_string(), source })
}

fn sign_command(args: &SignArgs) -> i32 {
    let text = match std::fs::read_to_string(&args.job) {
        Ok(t) => t,
        Err(e) => {
            eprintln!("job-manager sign: cannot read {}: {e}", args.job.display());
            return 1;
        }
    };
    let mut job: serde_json::Value = match serde_json::from_str(&text) {
        Ok(j) => j,
        Err(e) => {
            eprintln!("job-manager sign: {} is not JSON: {e}", args.job.display());
            return 1;
        }
    };
    let Some(runtime_type) = job.get("runtime_type").and_then(|v| v.as_str()).map(str::to_string) else {
        eprintln!("job-manager sign: {} has no runtime_type", args.job.display());
        return 1;
    };
    let payload = job.get("payload").cloned().unwrap_or(serde_json::Value::Null);
    let sig = common::token::vse_signature(&args.passphrase, &runtime_type, &payload);
    if args.in_place {
        job["signature"] = serde_json::Value::String(sig);
        let mut out = serde_json::to_string_pretty(&job).expect("serializes");
        out.push('\n');
        if let Err(e) = std::fs::write(&args.job, out) {
            eprintln!("job-manager sign: cannot write {}: {e}", args.job.display());
            return 1;
        }
    } else {
        println!("{sig}");
    }
    0
}
