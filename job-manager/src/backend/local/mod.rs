//! The local executor: each job runs as a local process beside a real sidecar process,
//! with the same hand-off and result path as a pod. [`LocalBackend`] is what the app
//! wires: the executor, the file result store in the state dir, generated keys kept
//! there when none are configured, and the hourly pruning of delivered results. As root
//! it isolates jobs (own UIDs, own network namespace for the runtime: `isolation.rs`,
//! `launcher.rs`); otherwise it reports that they are not ([`Backend::isolation_gaps`]).
pub mod executor;
mod faults;
pub mod isolation;
pub mod launcher;
pub mod output;
mod process;
mod settings;
mod state_dir;

pub use executor::*;
pub use output::read_tail;
pub use settings::{LocalRuntime, LocalSettings};

use crate::backend::{Backend, BackendError, Companions, ExecutorParts, KeySettings, Keys};
use crate::config::Validated;
use crate::results::{FileResultStore, ResultIntake, StoreSettings};
use common::secret::Secret;
use common::token::TokenSigner;
use isolation::{Isolation, UidRange};
use std::net::SocketAddr;
use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// Delivered results are kept this long (to recognise late re-deliveries), then pruned.
const KEEP_DELIVERED: Duration = Duration::from_secs(24 * 3600);
const PRUNE_EVERY: Duration = Duration::from_secs(3600);

/// Jobs as local processes, state in one directory.
pub struct LocalBackend {
    /// Everything but the result API's URL and the internal key, known only at start.
    settings: LocalSettings,
    store: FileResultStore,
}

impl LocalBackend {
    /// Create the state dir and open the result store in it.
    pub fn new(validated: &Validated) -> Result<Self, BackendError> {
        let c = &validated.config;
        let state_dir = state_dir(&c.state_dir);
        let state_err = |e: String| BackendError::failed("state dir", "state_dir", e);
        std::fs::create_dir_all(&state_dir)
            .map_err(|e| state_err(format!("cannot create state dir {}: {e}", state_dir.display())))?;
        // Also the output helper (`output.rs`), so needed whether isolated or not.
        let launcher = launcher_binary().ok_or_else(|| {
            BackendError::failed("launcher", "launcher", "cannot find the job-manager executable (the launcher)")
        })?;
        let isolation = if nix::unistd::geteuid().is_root() {
            let uids = UidRange::parse(&c.local.uid_range, 0)
                .map_err(|e| BackendError::failed("local.uidRange", "uid_range", e))?;
            prepare_isolated_state_dir(&state_dir).map_err(state_err)?;
            let claim = isolation::claim_range(uids, Path::new(isolation::RANGE_REGISTRY))
                .map_err(|e| BackendError::usage("local.uidRange", "uid_range_in_use", e))?;
            Some(Isolation { uids, launcher: launcher.clone(), claim: Arc::new(claim) })
        } else {
            None
        };
        let results = state_dir.join("results");
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&results)
            .and_then(|()| std::fs::set_permissions(&results, std::fs::Permissions::from_mode(0o700)))
            .map_err(|e| state_err(format!("cannot create {}: {e}", results.display())))?;
        let reserve_bytes = u64::from(c.local.result_reserve_mb) << 20;
        let store = FileResultStore::open_with(results, StoreSettings { reserve_bytes, ..StoreSettings::default() })
            .map_err(|e| BackendError::failed("result store", "result_store", e))?;
        let mut settings =
            LocalSettings::new(state_dir, sidecar_binary(&c.sidecar.binary), String::new(), Secret::new(String::new()));
        settings.runtimes = c
            .runtimes
            .iter()
            .filter(|r| r.enabled)
            .map(|r| {
                let command = r.command.iter().map(|a| expand_bin(a)).collect();
                (r.name.clone(), LocalRuntime { command, parallelism: r.parallelism, extra_env: r.extra_env.clone() })
            })
            .collect();
        settings.sidecar_env = crate::backend::sidecar_env::sidecar_policy_env(c);
        settings.no_proxy = c.sidecar.no_proxy.clone();
        settings.user_defined_variables =
            serde_json::Value::Object(validated.user_defined_variables.clone()).to_string();
        settings.custom_node_modules_path =
            (!c.kubernetes.custom_node_modules_path.is_empty()).then(|| c.kubernetes.custom_node_modules_path.clone());
        settings.isolation = isolation;
        settings.output_helper = launcher;
        Ok(Self { settings, store })
    }
}

/// As root, jobs run under UIDs of their own that must reach their dirs in the state dir
/// and nothing else there: the state dir becomes 0711 (traversable, not listable; the
/// keys and the result store in it are 0600/0700), and every dir above it must let
/// others through, or no job could start (said here, at start, rather than per job).
fn prepare_isolated_state_dir(state_dir: &Path) -> Result<(), String> {
    let dir = std::fs::canonicalize(state_dir).map_err(|e| format!("{}: {e}", state_dir.display()))?;
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o711))
        .map_err(|e| format!("cannot make {} 0711: {e}", dir.display()))?;
    for ancestor in dir.ancestors().skip(1) {
        let mode =
            std::fs::metadata(ancestor).map_err(|e| format!("{}: {e}", ancestor.display()))?.permissions().mode();
        if mode & 0o001 == 0 {
            return Err(format!(
                "{} (mode {:o}) does not let other users through, so jobs running under their own UIDs \
                 cannot reach the state dir {}: choose a stateDir below traversable dirs, or chmod o+x it",
                ancestor.display(),
                mode & 0o7777,
                dir.display()
            ));
        }
    }
    Ok(())
}

impl Backend for LocalBackend {
    type Store = FileResultStore;
    type Executor = Arc<LocalExecutor<FileResultStore>>;

    fn name(&self) -> &'static str {
        "local"
    }

    /// Adopted sidecars (after a restart) still hold the old key and tokens, so keys that
    /// are not configured are generated once and kept in the state dir (0600).
    fn keys(&self, configured: &KeySettings) -> Result<Keys, BackendError> {
        let dir = &self.settings.state_dir;
        let internal_api_key = if configured.internal_api_key.is_empty() {
            persistent_secret(&dir.join("internal-api-key"))?
        } else {
            configured.internal_api_key.clone()
        };
        let signer = match configured.configured_signer() {
            Some(signer) => signer,
            None => TokenSigner::new(persistent_secret(&dir.join("token-signing-key"))?),
        };
        Ok(Keys { internal_api_key: Secret::new(internal_api_key), signer })
    }

    fn register_metrics(&self, registry: &mut prometheus_client::registry::Registry) {
        registry.register(
            "local_output_dropped_bytes",
            "Bytes of runtime and sidecar output not kept, beyond each job's per-stream cap",
            self.settings.output_dropped.clone(),
        );
    }

    fn result_store(&self) -> FileResultStore {
        self.store.clone()
    }

    /// Not root: every job runs as the job manager's own user, in its network namespace.
    fn isolation_gaps(&self) -> Vec<String> {
        match &self.settings.isolation {
            Some(_) => Vec::new(),
            None => vec![format!(
                "local executor: jobs are not isolated from each other or from the job manager: the job manager \
                 is not root (euid {}), so runtimes run as its own user, can read its state dir {} (other jobs' \
                 tokens, keys) and the sidecars' memory, and can reach the network directly; run it as root to \
                 give each job its own UIDs (local.uidRange) and a network namespace with only its sidecar",
                nix::unistd::geteuid(),
                self.settings.state_dir.display()
            )],
        }
    }

    fn executor(&self, parts: ExecutorParts<FileResultStore>) -> Result<Self::Executor, BackendError> {
        let mut settings = self.settings.clone();
        let api = parts.result_api;
        let loopback = if api.ip().is_unspecified() { SocketAddr::from(([127, 0, 0, 1], api.port())) } else { api };
        settings.job_manager_url = format!("http://{loopback}");
        settings.internal_api_key = parts.keys.internal_api_key;
        let executor = LocalExecutor::new(settings, parts.intake)
            .map_err(|e| BackendError::failed("executor state", "executor_state", e))?;
        let adopted = executor.recover().map_err(|e| BackendError::failed("executor state", "executor_state", e))?;
        if adopted > 0 {
            tracing::info!(jobs = adopted, "adopted jobs left running by a previous process");
        }
        tracing::info!(
            state_dir = %self.settings.state_dir.display(),
            isolated = self.settings.isolation.is_some(),
            uid_range = %self.settings.isolation.as_ref().map(|i| i.uids.to_string()).unwrap_or_default(),
            "local executor ready"
        );
        Ok(executor)
    }

    fn companions(&self, _intake: &ResultIntake<FileResultStore>, stop: CancellationToken) -> Companions {
        let store = self.store.clone();
        let pruner = tokio::spawn(async move {
            let mut every = tokio::time::interval(PRUNE_EVERY);
            loop {
                tokio::select! {
                    _ = stop.cancelled() => break,
                    _ = every.tick() => {}
                }
                let s = store.clone();
                match tokio::task::spawn_blocking(move || s.prune_delivered(KEEP_DELIVERED)).await {
                    Ok(Ok(n)) if n > 0 => tracing::info!(removed = n, "pruned delivered results"),
                    Ok(Err(e)) => tracing::warn!(error = %e, "cannot prune delivered results"),
                    _ => {}
                }
            }
        });
        Companions { tasks: vec![pruner], sweep_gate: None }
    }
}

/// `stateDir`, or a stable default under the temp dir (stable so a restart finds it).
pub fn state_dir(configured: &str) -> PathBuf {
    if configured.is_empty() {
        std::env::temp_dir().join("job-manager-state")
    } else {
        PathBuf::from(configured)
    }
}

/// The directory of this executable: `{bin}` in runtime commands, and where the sidecar
/// binary is looked for by default.
fn bin_dir() -> PathBuf {
    std::env::current_exe().ok().and_then(|p| p.parent().map(Path::to_path_buf)).unwrap_or_else(|| PathBuf::from("."))
}

/// The `job-manager` executable, whose hidden `isolate` subcommand starts isolated
/// jobs: this one, or (in a test harness embedding the backend) the one beside it.
fn launcher_binary() -> Option<PathBuf> {
    let exe = std::env::current_exe().ok()?;
    if exe.file_name().is_some_and(|n| n == "job-manager") {
        return Some(exe);
    }
    let dir = exe.parent()?;
    [dir.join("job-manager"), dir.parent()?.join("job-manager")].into_iter().find(|p| p.is_file())
}

fn expand_bin(arg: &str) -> String {
    arg.replace("{bin}", &bin_dir().display().to_string())
}

fn sidecar_binary(configured: &str) -> PathBuf {
    if configured.is_empty() {
        bin_dir().join("sidecar")
    } else {
        PathBuf::from(expand_bin(configured))
    }
}

/// Read a generated secret from `path`, creating it (0600) on first use.
fn persistent_secret(path: &Path) -> Result<String, BackendError> {
    if let Ok(s) = std::fs::read_to_string(path) {
        if !s.trim().is_empty() {
            // Owner-only also when an older run or a hand left it readable to others.
            std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))
                .map_err(|e| BackendError::failed("keys", "keys", format!("cannot chmod {}: {e}", path.display())))?;
            return Ok(s.trim().to_string());
        }
    }
    let secret = common::secret::random_hex(32);
    common::fs::write_atomic(path, secret.as_bytes(), 0o600)
        .map_err(|e| BackendError::failed("keys", "keys", format!("cannot write {}: {e}", path.display())))?;
    Ok(secret)
}
