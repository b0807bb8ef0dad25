//! The runtime contract (`common/CONTRACTS.md`) for the API runtime: the job's check is
//! run by [`run_job`]; fetching the job, posting the result (with the contract's retry
//! rules), and the persistent server (`--serve ADDR`: `POST /v1/jobs` answered 202, or
//! 429 when `max_concurrent` checks run) are [`common::runtime_client`]'s.
use crate::engine::{self, Limits};
use crate::http::{HttpPort, Proxies, ProxyClient};
use crate::payload;
use common::runtime_api::{runtime_env, RuntimeJob, RuntimeResult};
use common::runtime_client::RuntimeClient;
use std::sync::Arc;

/// Exit codes of the runtime process.
pub use common::runtime_client::exit;

/// Log lines' prefix, and the `User-Agent` on the local API.
pub const NAME: &str = "api-runtime";

/// What the process was started with (command line + environment).
#[derive(Clone, Debug)]
pub struct Settings {
    pub client: RuntimeClient,
    pub proxies: Proxies,
    pub user_defined_variables: Option<String>,
    pub limits: Limits,
}

impl Settings {
    pub fn from_env(env: &dyn Fn(&str) -> Option<String>, limits: Limits) -> Result<Self, String> {
        Ok(Self {
            client: RuntimeClient::from_env(NAME, env)?,
            proxies: Proxies::from_env(env)?,
            user_defined_variables: env(runtime_env::USER_DEFINED_VARIABLES),
            limits,
        })
    }
}

pub fn log(job: &str, what: impl std::fmt::Display) {
    eprintln!("{NAME}: job {job}: {what}");
}

/// Ephemeral mode: one job, then exit with one of [`exit`]'s codes.
pub async fn run_once(settings: Settings) -> i32 {
    settings.client.run_once(|job| async { Ok(run_job(&settings, job).await) }).await
}

/// Persistent mode on `addr`, forever (each check on a thread of its own, at most
/// `max_concurrent` at once); [`exit::CONFIG`] when `addr` cannot be bound.
pub async fn serve(settings: Settings, addr: std::net::SocketAddr, max_concurrent: usize) -> i32 {
    let client = settings.client.clone();
    let settings = Arc::new(settings);
    client
        .serve(addr, max_concurrent, move |job| {
            let settings = settings.clone();
            async move { run_job(&settings, job).await }
        })
        .await
}

/// Runs the job's check on a blocking thread (the engine is synchronous; `$http`
/// requests run on this tokio runtime meanwhile).
pub async fn run_job(settings: &Settings, job: RuntimeJob) -> RuntimeResult {
    let id = job.id.to_string();
    let check = match payload::check_of(&job, settings.user_defined_variables.as_deref()) {
        Ok(c) => c,
        Err(e) => {
            log(&id, format_args!("invalid job: {e}"));
            return payload::invalid_result(&e);
        }
    };
    let port: Arc<dyn HttpPort> =
        Arc::new(ProxyClient::new(settings.proxies.clone(), tokio::runtime::Handle::current()));
    let limits = settings.limits.clone();
    let secure = check.secure.clone();
    let report = match tokio::task::spawn_blocking(move || engine::run(&check, port, &limits)).await {
        Ok(r) => r,
        Err(e) => return payload::invalid_result(&format!("the engine stopped: {e}")),
    };
    let result = payload::result_of(&report, &secure);
    log(&id, format_args!("{:?}: {}", result.outcome, result.message));
    result
}
