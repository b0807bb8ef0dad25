//! Wiring: config -> broker -> executor -> dispatcher + result API + delivery loop, and
//! the shutdown sequence. Everything here is I/O glue; decisions live in the modules.
//!
//! Shutdown (SIGTERM/SIGINT): `/readyz` turns 503, polling stops (hand-offs in progress
//! finish or are released), running jobs get `shutdownGraceSecs` to finish (the result
//! API keeps serving their sidecars), what still runs is killed and reported `failed`,
//! the delivery loop makes a last pass, then the server stops.
use crate::backend::local::{LocalExecutor, LocalRuntime, LocalSettings};
use crate::backend::{Executor, StateError};
use crate::broker::client::{BrokerClientConfig, HttpBroker, ProxySettings};
use crate::broker::embedded::{EmbeddedBroker, EmbeddedOptions};
use crate::broker::{BrokerApi, BrokerError};
use crate::cli::{Cli, Command, RunArgs, SignArgs};
use crate::config::model::{Config, ExecutorKind};
use crate::config::{self, ConfigError, EnvLookup, ProcessEnv, Validated, EMBEDDED_BROKER, EXIT_CONFIG};
use crate::dispatcher::{Dispatcher, DispatcherSettings, RuntimeLimit};
use crate::metrics::Metrics;
use crate::readiness::Readiness;
use crate::results::api::{ResultApi, ServerLimits};
use crate::results::{DeliveryLoop, FileResultStore, ResultIntake, StoreError};
use common::secret::Secret;
use common::token::TokenSigner;
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
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
    #[error("executor state: {0}")]
    State(#[from] StateError),
    #[error("result store: {0}")]
    Store(#[from] StoreError),
    #[error("{0}")]
    Io(String),
    #[error("kubernetes executor: {0}")]
    Kubernetes(#[from] crate::backend::kubernetes::run::RunError),
}

impl AppError {
    pub fn exit_code(&self) -> i32 {
        match self {
            AppError::Config(_) => EXIT_CONFIG,
            AppError::Kubernetes(
                crate::backend::kubernetes::run::RunError::MissingInternalKey
                | crate::backend::kubernetes::run::RunError::Setup(
                    crate::backend::kubernetes::setup::SetupError::CrdMissing,
                ),
            ) => EXIT_CONFIG,
            AppError::Broker(_) => EXIT_UNAVAILABLE,
            _ => 1,
        }
    }
}

/// The binary's entry point: parse flags, dispatch the subcommand, return the exit code.
pub fn main() -> i32 {
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
        Some(Command::Render(args)) => {
            match crate::backend::kubernetes::cli::render_files(
                &args.job,
                args.config.as_deref(),
                args.namespace.as_deref(),
            ) {
                Ok(yaml) => {
                    print!("{yaml}");
                    0
                }
                Err(e) => {
                    eprintln!("job-manager render: {e}");
                    EXIT_CONFIG
                }
            }
        }
        Some(Command::Crd) => {
            print!("{}", crate::backend::kubernetes::cli::crd());
            0
        }
        Some(Command::Rbac) => {
            print!("{}", crate::backend::kubernetes::cli::rbac());
            0
        }
    }
}

/// Load and validate the configuration from flags + environment.
pub fn load_config(args: &RunArgs, env: &dyn EnvLookup) -> Result<Validated, ConfigError> {
    let overrides = args.overrides().map_err(|rule| ConfigError::Invalid { setting: "--set".into(), rule })?;
    let file = config::config_file_path(args.config.as_deref(), env);
    config::validate(config::load(file.as_deref(), env, &overrides)?)
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
            return EXIT_CONFIG;
        }
    };
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

/// Run until `shutdown` with the configured broker and executor.
pub async fn run(validated: Validated, args: &RunArgs, shutdown: CancellationToken) -> Result<(), AppError> {
    for w in &validated.warnings {
        tracing::warn!("{w}");
    }
    let c = &validated.config;
    if c.executor == ExecutorKind::Kubernetes {
        let listener = bind(&c.listen).await?;
        let handle = if c.broker_api_endpoint == EMBEDDED_BROKER {
            crate::backend::kubernetes::run::start(&validated, Arc::new(embedded_broker(c)), listener, None).await?
        } else {
            let broker = http_broker(c)?;
            if !c.network_health_check_disabled {
                broker.network_health_check().await?;
            }
            crate::backend::kubernetes::run::start(&validated, Arc::new(broker), listener, None).await?
        };
        shutdown.cancelled().await;
        return handle.stop().await;
    }
    let listener = bind(&c.listen).await?;
    if c.broker_api_endpoint == EMBEDDED_BROKER {
        let broker = embedded_broker(c);
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
        let handle = start_local(&validated, Arc::new(broker), listener).await?;
        shutdown.cancelled().await;
        handle.stop().await
    } else {
        let broker = http_broker(c)?;
        if c.network_health_check_disabled {
            tracing::info!("network health check disabled");
        } else {
            broker.network_health_check().await?;
            tracing::info!(endpoint = %c.broker_api_endpoint, "broker reachable");
        }
        let handle = start_local(&validated, Arc::new(broker), listener).await?;
        shutdown.cancelled().await;
        handle.stop().await
    }
}

pub async fn bind(addr: &str) -> Result<TcpListener, AppError> {
    TcpListener::bind(addr).await.map_err(|source| AppError::Listen { addr: addr.to_string(), source })
}

/// The in-process broker, keyed with the location key (random when none is set).
pub fn embedded_broker(c: &Config) -> EmbeddedBroker {
    let key = if c.location_key.is_empty() { random_hex(16) } else { c.location_key.clone() };
    let visibility = Duration::from_millis(c.poll.interval_ms.saturating_mul(5)).max(Duration::from_secs(30));
    EmbeddedBroker::new(EmbeddedOptions { visibility_timeout: visibility, location_key: Secret::new(key) })
}

pub fn http_broker(c: &Config) -> Result<HttpBroker, BrokerError> {
    let proxy = (!c.api_proxy_host.is_empty()).then(|| ProxySettings {
        host: c.api_proxy_host.clone(),
        port: c.api_proxy_port,
        username: (!c.broker_api_proxy_username.is_empty()).then(|| c.broker_api_proxy_username.clone()),
        password: (!c.broker_api_proxy_pw.is_empty()).then(|| Secret::new(c.broker_api_proxy_pw.clone())),
        accept_self_signed: c.broker_api_proxy_self_signed_cert,
    });
    HttpBroker::new(BrokerClientConfig {
        endpoint: c.broker_api_endpoint.clone(),
        location_key: Secret::new(c.location_key.clone()),
        timeout: Duration::from_secs(30),
        proxy,
    })
}

/// A running job manager (either executor), for `run`, the demo and tests.
pub struct JobManagerHandle {
    /// The result API's bound address.
    pub addr: SocketAddr,
    pub metrics: Arc<Metrics>,
    pub readiness: Arc<Readiness>,
    shutdown: CancellationToken,
    task: JoinHandle<()>,
}

impl JobManagerHandle {
    pub(crate) fn new(
        addr: SocketAddr,
        metrics: Arc<Metrics>,
        readiness: Arc<Readiness>,
        shutdown: CancellationToken,
        task: JoinHandle<()>,
    ) -> Self {
        Self { addr, metrics, readiness, shutdown, task }
    }

    /// Graceful shutdown; returns once every part stopped (leases released, on Kubernetes).
    pub async fn stop(self) -> Result<(), AppError> {
        self.shutdown.cancel();
        self.task.await.map_err(|e| AppError::Io(format!("job manager task failed: {e}")))
    }

    pub fn shutdown_token(&self) -> CancellationToken {
        self.shutdown.clone()
    }
}

/// Start the job manager with the local executor against `broker`, serving the result
/// API on `listener`. Returns once everything runs.
pub async fn start_local<B: BrokerApi>(
    validated: &Validated,
    broker: Arc<B>,
    listener: TcpListener,
) -> Result<JobManagerHandle, AppError> {
    let c = &validated.config;
    let addr = listener.local_addr().map_err(|e| AppError::Io(e.to_string()))?;
    let state_dir = state_dir(c);
    std::fs::create_dir_all(&state_dir)
        .map_err(|e| AppError::Io(format!("cannot create state dir {}: {e}", state_dir.display())))?;
    let metrics = Arc::new(Metrics::new());
    let store = FileResultStore::open(state_dir.join("results"))?;
    let intake = ResultIntake::new(store.clone(), metrics.clone());
    // Adopted sidecars (after a restart) still hold the old key and tokens, so without
    // configured secrets the generated ones are kept in the state dir.
    let internal_key = if c.internal_api_key.is_empty() {
        persistent_secret(&state_dir.join("internal-api-key"))?
    } else {
        c.internal_api_key.clone()
    };
    let signer = if !c.token_signing_key.is_empty() {
        TokenSigner::new(&c.token_signing_key)
    } else if !c.location_key.is_empty() {
        TokenSigner::derived_from(&c.location_key)
    } else {
        TokenSigner::new(persistent_secret(&state_dir.join("token-signing-key"))?)
    };
    let loopback = if addr.ip().is_unspecified() { SocketAddr::from(([127, 0, 0, 1], addr.port())) } else { addr };
    let mut local = LocalSettings::new(
        state_dir.clone(),
        sidecar_binary(c),
        format!("http://{loopback}"),
        Secret::new(internal_key.clone()),
    );
    local.runtimes = c
        .runtimes
        .iter()
        .filter(|r| r.enabled)
        .map(|r| {
            let command = r.command.iter().map(|a| expand_bin(a)).collect();
            (r.name.clone(), LocalRuntime { command, parallelism: r.parallelism, extra_env: r.extra_env.clone() })
        })
        .collect();
    local.sidecar_env = crate::backend::sidecar_env::sidecar_policy_env(c);
    local.no_proxy = c.sidecar.no_proxy.clone();
    local.user_defined_variables = serde_json::Value::Object(validated.user_defined_variables.clone()).to_string();
    local.custom_node_modules_path =
        (!c.kubernetes.custom_node_modules_path.is_empty()).then(|| c.kubernetes.custom_node_modules_path.clone());
    let executor = LocalExecutor::new(local, intake.clone())?;
    let adopted = executor.recover()?;
    if adopted > 0 {
        tracing::info!(jobs = adopted, "adopted jobs left running by a previous process");
    }

    let readiness = Readiness::new();
    let api = Arc::new(ResultApi {
        intake: intake.clone(),
        internal_api_key: Secret::new(internal_key),
        signer: signer.clone(),
        readiness: readiness.clone(),
        limits: ServerLimits::default(),
    });
    let settings = dispatcher_settings(c);
    let executor = Arc::new(executor);
    let dispatcher =
        Dispatcher::new(broker.clone(), executor.clone(), intake.clone(), signer, settings, readiness.clone());

    let shutdown = CancellationToken::new();
    let (poll_stop, delivery_stop, server_stop) =
        (CancellationToken::new(), CancellationToken::new(), CancellationToken::new());
    let server_task = tokio::spawn(crate::results::api::serve(listener, api, server_stop.clone()));
    let delivery_task = tokio::spawn(DeliveryLoop::new(broker, intake).run(delivery_stop.clone()));
    let dispatcher_task = tokio::spawn(dispatcher.run(poll_stop.clone()));
    // Delivered results are kept a day (to recognise late re-deliveries), then pruned.
    let prune_stop = server_stop.clone();
    tokio::spawn(async move {
        let mut every = tokio::time::interval(Duration::from_secs(3600));
        loop {
            tokio::select! {
                _ = prune_stop.cancelled() => break,
                _ = every.tick() => {}
            }
            let s = store.clone();
            match tokio::task::spawn_blocking(move || s.prune_delivered(Duration::from_secs(24 * 3600))).await {
                Ok(Ok(n)) if n > 0 => tracing::info!(removed = n, "pruned delivered results"),
                Ok(Err(e)) => tracing::warn!(error = %e, "cannot prune delivered results"),
                _ => {}
            }
        }
    });
    tracing::info!(%addr, executor = executor.name(), state_dir = %state_dir.display(), "job manager started");

    let grace = Duration::from_secs(c.shutdown_grace_secs.into());
    let (stop, ready) = (shutdown.clone(), readiness.clone());
    let task = tokio::spawn(async move {
        stop.cancelled().await;
        ready.set_draining();
        poll_stop.cancel();
        let _ = dispatcher_task.await;
        let killed = executor.drain(grace).await;
        if !killed.is_empty() {
            tracing::warn!(jobs = ?killed, "jobs still running after the grace period were stopped and reported failed");
        }
        delivery_stop.cancel();
        if tokio::time::timeout(Duration::from_secs(15), delivery_task).await.is_err() {
            tracing::warn!(
                "result delivery did not finish; undelivered results stay in the state dir for the next start"
            );
        }
        server_stop.cancel();
        let _ = server_task.await;
        tracing::info!("job manager stopped");
    });
    Ok(JobManagerHandle { addr, metrics, readiness, shutdown, task })
}

/// `stateDir`, or a stable default under the temp dir (stable so a restart finds it).
pub fn state_dir(c: &Config) -> PathBuf {
    if c.state_dir.is_empty() {
        std::env::temp_dir().join("job-manager-state")
    } else {
        PathBuf::from(&c.state_dir)
    }
}

/// The dispatcher's settings, the same for every executor.
pub(crate) fn dispatcher_settings(c: &Config) -> DispatcherSettings {
    let mut settings = DispatcherSettings::new(
        consumer_name(c),
        c.runtimes
            .iter()
            .filter(|r| r.enabled)
            .map(|r| RuntimeLimit { name: r.name.clone(), parallelism: r.parallelism })
            .collect(),
    );
    settings.batch_size = c.poll.batch_size;
    settings.poll_interval = Duration::from_millis(c.poll.interval_ms);
    settings.check_timeout_secs = c.check_timeout;
    settings.vse_passphrase = (!c.vse_passphrase.is_empty()).then(|| Secret::new(c.vse_passphrase.clone()));
    settings.stall_after = (settings.poll_interval * 30).max(Duration::from_secs(60));
    settings
}

fn consumer_name(c: &Config) -> String {
    let host = std::env::var("HOSTNAME").ok().filter(|h| !h.is_empty()).unwrap_or_else(|| c.hostname_override.clone());
    format!("{host}-{}", std::process::id())
}

/// The directory of this executable: `{bin}` in runtime commands, and where the sidecar
/// binary is looked for by default.
pub fn bin_dir() -> PathBuf {
    std::env::current_exe().ok().and_then(|p| p.parent().map(Path::to_path_buf)).unwrap_or_else(|| PathBuf::from("."))
}

fn expand_bin(arg: &str) -> String {
    arg.replace("{bin}", &bin_dir().display().to_string())
}

fn sidecar_binary(c: &Config) -> PathBuf {
    if c.sidecar.binary.is_empty() {
        bin_dir().join("sidecar")
    } else {
        PathBuf::from(expand_bin(&c.sidecar.binary))
    }
}

/// Read a generated secret from `path`, creating it (0600) on first use.
fn persistent_secret(path: &Path) -> Result<String, AppError> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    if let Ok(s) = std::fs::read_to_string(path) {
        if !s.trim().is_empty() {
            return Ok(s.trim().to_string());
        }
    }
    let secret = random_hex(32);
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)
        .map_err(|e| AppError::Io(format!("cannot write {}: {e}", path.display())))?;
    f.write_all(secret.as_bytes()).and_then(|_| f.sync_all()).map_err(|e| AppError::Io(e.to_string()))?;
    Ok(secret)
}

pub fn random_hex(bytes: usize) -> String {
    (0..bytes).map(|_| format!("{:02x}", rand::random::<u8>())).collect()
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

/// Environment as a map (tests).
pub fn env_map(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
    pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
}
