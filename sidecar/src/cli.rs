//! The binary's entry: parse, validate (every bad setting printed, then exit 64), load
//! the key, start.
use crate::config::{parse_config, Cli, ConfigError, ConfigErrors, KeySource, ProcessEnv, EXIT_BAD_CONFIG};
use clap::Parser;
use common::secret::Secret;
use std::io::BufRead;
use std::process::ExitCode;

/// Reads a key file (or the first line of stdin for `-`) into an inline secret.
pub fn load_key(source: &KeySource) -> Result<KeySource, ConfigError> {
    let bad = |m: String| ConfigError {
        setting: crate::config::ENV_INTERNAL_API_KEY_FILE,
        flag: "--internal-api-key-file",
        message: m,
    };
    let raw = match source {
        KeySource::File(p) => {
            std::fs::read_to_string(p).map_err(|e| bad(format!("cannot read {}: {e}", p.display())))?
        }
        KeySource::Stdin => {
            let mut line = String::new();
            std::io::stdin().lock().read_line(&mut line).map_err(|e| bad(format!("cannot read stdin: {e}")))?;
            line
        }
        other => return Ok(other.clone()),
    };
    let key = raw.lines().next().unwrap_or("").trim().to_string();
    if key.is_empty() {
        return Err(bad("the key is empty".into()));
    }
    Ok(KeySource::Inline(Secret::new(key)))
}

pub fn main() -> ExitCode {
    // `sidecar egress-init ...` is the init container's firewall, not the proxy.
    if std::env::args_os().nth(1).is_some_and(|a| a == crate::egress_init::SUBCOMMAND) {
        return crate::egress_init::main(std::env::args_os().skip(1));
    }
    let cli = match Cli::try_parse() {
        Ok(c) => c,
        Err(e) => {
            let _ = e.print();
            return match e.kind() {
                clap::error::ErrorKind::DisplayHelp | clap::error::ErrorKind::DisplayVersion => ExitCode::SUCCESS,
                _ => ExitCode::from(EXIT_BAD_CONFIG as u8),
            };
        }
    };
    // clap has read the flag-backed settings' env values; the lookup serves the
    // env-only ones (the key, the job token, KUBERNETES_SERVICE_HOST).
    let config = match parse_config(&cli, &ProcessEnv).and_then(|mut c| {
        c.internal_api_key = load_key(&c.internal_api_key).map_err(ConfigErrors::from)?;
        Ok(c)
    }) {
        Ok(c) => c,
        Err(errors) => {
            for e in &errors.0 {
                eprintln!("sidecar: {e}");
            }
            return ExitCode::from(EXIT_BAD_CONFIG as u8);
        }
    };
    crate::telemetry::init(config.log_format, &config.log_level);
    let workers = match config.worker_threads {
        0 => std::thread::available_parallelism().map(|n| n.get().min(2)).unwrap_or(1),
        n => n,
    };
    let rt = match tokio::runtime::Builder::new_multi_thread().worker_threads(workers).enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("sidecar: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = rt.block_on(async move {
        let listeners = crate::Listeners::bind(&config).await?;
        crate::run(config, listeners, shutdown_signal()).await
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!(error = %e, "sidecar failed");
            eprintln!("sidecar: {e}");
            ExitCode::FAILURE
        }
    }
}

/// SIGTERM (Kubernetes) or SIGINT (a terminal).
async fn shutdown_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        let Ok(mut term) = signal(SignalKind::terminate()) else {
            return std::future::pending().await;
        };
        tokio::select! {
            _ = term.recv() => {}
            _ = tokio::signal::ctrl_c() => {}
        }
    }
    #[cfg(not(unix))]
    let _ = tokio::signal::ctrl_c().await;
}
