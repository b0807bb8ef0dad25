//! What the local executor is built with: the state dir, the sidecar binary, the
//! runtimes and what every sidecar and runtime is given. Plain data; the backend fills it
//! from the configuration.
use super::isolation::Isolation;
use common::secret::Secret;
use prometheus_client::metrics::counter::Counter;
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

/// How one runtime type runs locally.
#[derive(Clone, Debug)]
pub struct LocalRuntime {
    /// argv; `command[0]` is the program.
    pub command: Vec<String>,
    pub parallelism: u32,
    pub extra_env: BTreeMap<String, String>,
}

#[derive(Clone, Debug)]
pub struct LocalSettings {
    pub state_dir: PathBuf,
    pub sidecar_binary: PathBuf,
    /// This job manager's result API base URL, e.g. `http://127.0.0.1:8080`.
    pub job_manager_url: String,
    pub internal_api_key: Secret,
    pub runtimes: BTreeMap<String, LocalRuntime>,
    /// Policy and other `SIDECAR_*` settings passed to every sidecar.
    pub sidecar_env: Vec<(String, String)>,
    pub no_proxy: Vec<String>,
    /// JSON object given to runtimes as `USER_DEFINED_VARIABLES`.
    pub user_defined_variables: String,
    pub custom_node_modules_path: Option<String>,
    pub sidecar_ready_timeout: Duration,
    /// After the runtime exits: how long the sidecar may take to deliver and exit.
    pub sidecar_exit_grace: Duration,
    /// How much of the runtime's output a `failed` result carries.
    pub output_tail_bytes: u64,
    /// How much of each stream (runtime, sidecar) a job keeps on disk (`output.rs`).
    pub output_cap_bytes: u64,
    /// The executable whose `output-tail` subcommand keeps the streams bounded (the
    /// job manager's own).
    pub output_helper: PathBuf,
    /// Bytes of output not kept, over all jobs (`job_manager_local_output_dropped_bytes`).
    pub output_dropped: Counter,
    /// Jobs under UIDs of their own and the runtime in its own network namespace (the
    /// job manager is root); `None`: as the job manager's children, unconfined.
    pub isolation: Option<Isolation>,
}

impl LocalSettings {
    pub fn new(state_dir: PathBuf, sidecar_binary: PathBuf, job_manager_url: String, key: Secret) -> Self {
        Self {
            state_dir,
            sidecar_binary,
            job_manager_url,
            internal_api_key: key,
            runtimes: BTreeMap::new(),
            sidecar_env: Vec::new(),
            no_proxy: Vec::new(),
            user_defined_variables: "{}".into(),
            custom_node_modules_path: None,
            sidecar_ready_timeout: Duration::from_secs(15),
            sidecar_exit_grace: Duration::from_secs(15),
            output_tail_bytes: 4096,
            output_cap_bytes: super::output::DEFAULT_CAP_BYTES,
            output_helper: PathBuf::new(),
            output_dropped: Counter::default(),
            isolation: None,
        }
    }
}
