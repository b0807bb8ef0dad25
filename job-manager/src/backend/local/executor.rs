//! The local executor: each job runs as a local runtime process beside a real `sidecar`
//! process, handed over exactly as in a pod (job dir with `job.json` + `token`, the
//! internal key on the sidecar's stdin, the runtime behind the sidecar's proxy).
//!
//! State lives in `<state_dir>/jobs/<job id>/` (mode 0700): `meta.json` (job, deadline,
//! pids), `job.json`, `token`, the sidecar's `ready.json`, `spool/`, and the processes'
//! output. A job dir exists exactly while its job runs, so [`Executor::in_flight`] is
//! derived from the directory (it survives a restart) and a re-delivered job whose dir
//! exists is [`Accepted::AlreadyRunning`].
//!
//! If the job manager is SIGKILLed its children keep running (`kill_on_drop` only covers
//! an orderly drop, and `PR_SET_PDEATHSIG` needs `unsafe` `pre_exec`). The restart path
//! makes that correct: [`LocalExecutor::recover`] adopts every job dir it finds — it
//! watches the recorded pids (checked against their start time, so a reused pid is not
//! mistaken for ours), enforces the recorded deadline, terminates the sidecar once the
//! runtime is gone, records a `failed` result if none arrived, and removes the dir.
use crate::backend::{Accepted, Executor, Handoff, HandoffError, StateError};
use crate::results::{ResultIntake, ResultStore};
use common::runtime_api::{self, runtime_env, sidecar_env, ReadyFile};
use common::secret::Secret;
use common::{Job, JobId, JobResult, Outcome};
use nix::sys::signal::{kill, killpg, Signal};
use nix::unistd::Pid;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::io::{Read, Seek, SeekFrom, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use tokio::io::AsyncWriteExt;
use tokio::process::{Child, Command};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::Instrument;

const META_FILE: &str = "meta.json";
const READY_FILE: &str = "ready.json";
const RUNTIME_OUTPUT: &str = "runtime.log";
const SIDECAR_OUTPUT: &str = "sidecar.log";

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
        }
    }
}

/// What a job dir records about its job, written before any process starts and updated
/// with the pids once they exist.
#[derive(Clone, Debug, Serialize, Deserialize)]
struct Meta {
    job: Job,
    deadline_unix_ms: u64,
    #[serde(default)]
    sidecar: Option<ProcessId>,
    #[serde(default)]
    runtime: Option<ProcessId>,
}

/// A pid plus its start time (from `/proc/<pid>/stat`), so a recycled pid is never
/// mistaken for ours after a restart.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
struct ProcessId {
    pid: i32,
    start_ticks: u64,
}

impl ProcessId {
    fn of(pid: u32) -> Option<Self> {
        let pid = i32::try_from(pid).ok()?;
        Some(Self { pid, start_ticks: proc_start_ticks(pid)? })
    }
    fn alive(&self) -> bool {
        proc_start_ticks(self.pid) == Some(self.start_ticks) && !proc_is_zombie(self.pid)
    }
}

/// Field 22 of `/proc/<pid>/stat` (start time in clock ticks since boot).
fn proc_start_ticks(pid: i32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name (field 2) may contain spaces; fields after its ')' are plain.
    let after = &stat[stat.rfind(')')? + 2..];
    after.split_whitespace().nth(19)?.parse().ok()
}

fn proc_is_zombie(pid: i32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|s| s.rfind(')').and_then(|i| s[i + 2..].chars().next()))
        .is_some_and(|state| state == 'Z' || state == 'X')
}

/// Why a job's runtime stopped.
enum Ending {
    Exited(Option<ExitStatus>),
    DeadlineExceeded,
    Aborted,
}

pub struct LocalExecutor<S> {
    settings: LocalSettings,
    intake: ResultIntake<S>,
    draining: AtomicBool,
    /// Cancelled when the drain grace period is over: remaining runtimes are killed.
    abort: CancellationToken,
    supervisors: TaskTracker,
    /// Jobs supervised by this process (for drain); the job dirs are the durable truth.
    supervised: Mutex<BTreeMap<JobId, String>>,
}

impl<S: ResultStore> LocalExecutor<S> {
    pub fn new(settings: LocalSettings, intake: ResultIntake<S>) -> Result<Arc<Self>, StateError> {
        let jobs = settings.state_dir.join("jobs");
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&jobs)
            .map_err(|e| StateError(format!("cannot create {}: {e}", jobs.display())))?;
        Ok(Arc::new(Self {
            settings,
            intake,
            draining: AtomicBool::new(false),
            abort: CancellationToken::new(),
            supervisors: TaskTracker::new(),
            supervised: Mutex::new(BTreeMap::new()),
        }))
    }

    fn jobs_dir(&self) -> PathBuf {
        self.settings.state_dir.join("jobs")
    }

    fn job_dir(&self, id: &JobId) -> PathBuf {
        // JobId's alphabet has no '/'; the prefix keeps ids like ".." ordinary names.
        self.jobs_dir().join(format!("j-{id}"))
    }

    /// Adopt jobs left running by a previous process (see the module docs). Call once
    /// at startup, before the dispatcher polls.
    pub fn recover(self: &Arc<Self>) -> Result<usize, StateError> {
        let mut adopted = 0;
        for (dir, meta) in self.read_job_dirs()? {
            match meta {
                // The hand-off never finished (no runtime was started), so `start` did not
                // return and the job was not acked: undo it; the broker re-delivers it.
                Some(meta) if meta.runtime.is_none() => {
                    tracing::warn!(job_id = %meta.job.id, "removing a job whose hand-off was interrupted");
                    if let Some(p) = meta.sidecar.filter(|p| p.alive()) {
                        let _ = kill(Pid::from_raw(p.pid), Signal::SIGKILL);
                    }
                    let _ = std::fs::remove_dir_all(&dir);
                }
                Some(meta) => {
                    let id = meta.job.id.clone();
                    tracing::info!(job_id = %id, "adopting a job left by a previous run");
                    self.supervised.lock().expect("lock").insert(id.clone(), meta.job.runtime_type.clone());
                    let me = self.clone();
                    let span = tracing::error_span!("job", job_id = %id);
                    self.supervisors.spawn(async move { me.watch_adopted(dir, meta).await }.instrument(span));
                    adopted += 1;
                }
                None => {
                    // Claimed but never written: the hand-off did not finish, so the job
                    // was not acked and the broker re-delivers it.
                    tracing::warn!(dir = %dir.display(), "removing an incomplete job dir");
                    let _ = std::fs::remove_dir_all(&dir);
                }
            }
        }
        Ok(adopted)
    }

    fn read_job_dirs(&self) -> Result<Vec<(PathBuf, Option<Meta>)>, StateError> {
        let jobs = self.jobs_dir();
        let entries = std::fs::read_dir(&jobs).map_err(|e| StateError(format!("{}: {e}", jobs.display())))?;
        let mut out = Vec::new();
        for entry in entries.flatten() {
            let dir = entry.path();
            if !dir.is_dir() {
                continue;
            }
            let meta = std::fs::read(dir.join(META_FILE)).ok().and_then(|b| serde_json::from_slice::<Meta>(&b).ok());
            out.push((dir, meta));
        }
        Ok(out)
    }

    async fn start_job(self: &Arc<Self>, handoff: Handoff) -> Result<Accepted, HandoffError> {
        if self.draining.load(Ordering::SeqCst) {
            return Err(HandoffError::Transient("local executor is shutting down".into()));
        }
        let job = &handoff.job;
        let Some(runtime) = self.settings.runtimes.get(&job.runtime_type) else {
            return Err(HandoffError::Permanent(format!("runtime type {:?} is not configured", job.runtime_type)));
        };
        let dir = self.job_dir(&job.id);
        if dir.exists() {
            return Ok(Accepted::AlreadyRunning);
        }
        let running = self.in_flight_now().map_err(|e| HandoffError::Transient(e.to_string()))?;
        let busy = running.get(&job.runtime_type).map_or(0, Vec::len);
        if busy >= runtime.parallelism as usize {
            return Err(HandoffError::Busy(format!(
                "{} of {} {} jobs already run",
                busy, runtime.parallelism, job.runtime_type
            )));
        }
        // Claim: creating the dir is atomic, so two concurrent starts cannot both win.
        match std::fs::DirBuilder::new().mode(0o700).create(&dir) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => return Ok(Accepted::AlreadyRunning),
            Err(e) => return Err(HandoffError::Transient(format!("cannot create {}: {e}", dir.display()))),
        }
        match self.launch(&dir, &handoff, runtime).await {
            Ok((sidecar, child, meta)) => {
                self.supervised.lock().expect("lock").insert(job.id.clone(), job.runtime_type.clone());
                let me = self.clone();
                let span = tracing::Span::current();
                self.supervisors.spawn(async move { me.supervise(dir, meta, sidecar, child).await }.instrument(span));
                Ok(Accepted::Started)
            }
            Err(e) => {
                let _ = std::fs::remove_dir_all(&dir);
                Err(e)
            }
        }
    }

    /// Write the hand-off files, start the sidecar, wait until it serves, start the runtime.
    async fn launch(
        &self,
        dir: &Path,
        handoff: &Handoff,
        runtime: &LocalRuntime,
    ) -> Result<(Child, Child, Meta), HandoffError> {
        let transient = |what: &str, e: &dyn std::fmt::Display| HandoffError::Transient(format!("{what}: {e}"));
        let job = &handoff.job;
        let deadline_unix_ms =
            handoff.deadline.duration_since(UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or_default();
        let mut meta = Meta { job: job.clone(), deadline_unix_ms, sidecar: None, runtime: None };
        write_private(&dir.join(META_FILE), &serde_json::to_vec(&meta).expect("meta serializes"))
            .map_err(|e| transient("write meta", &e))?;
        write_private(&dir.join(runtime_api::JOB_FILE), &serde_json::to_vec(job).expect("job serializes"))
            .map_err(|e| transient("write job file", &e))?;
        write_private(&dir.join(runtime_api::TOKEN_FILE), handoff.token.as_bytes())
            .map_err(|e| transient("write token", &e))?;
        let spool = dir.join("spool");
        let scratch = dir.join("scratch");
        for d in [&spool, &scratch] {
            std::fs::DirBuilder::new().mode(0o700).create(d).map_err(|e| transient("create dir", &e))?;
        }

        // Sidecar: policy env from config, the job dir, and the key on stdin only.
        let ready = dir.join(READY_FILE);
        let mut cmd = Command::new(&self.settings.sidecar_binary);
        cmd.env_clear()
            .envs(basic_env())
            .envs(self.settings.sidecar_env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .env(sidecar_env::LISTEN, "127.0.0.1:0")
            .env(sidecar_env::READY_FILE, &ready)
            .env(sidecar_env::JOB_DIR, dir)
            .env(sidecar_env::JOB_ID, job.id.as_str())
            .env(sidecar_env::JOB_MANAGER_URL, &self.settings.job_manager_url)
            .env(sidecar_env::INTERNAL_API_KEY_FILE, "-")
            .env(sidecar_env::SPOOL_DIR, &spool)
            // Finish delivering within our grace, before we resort to SIGKILL.
            .env(
                sidecar_env::SHUTDOWN_GRACE_SECS,
                self.settings.sidecar_exit_grace.as_secs().saturating_sub(2).max(1).to_string(),
            )
            .current_dir(dir)
            .stdin(Stdio::piped())
            .stdout(output_file(&dir.join(SIDECAR_OUTPUT)).map_err(|e| transient("sidecar log", &e))?)
            .stderr(output_file(&dir.join(SIDECAR_OUTPUT)).map_err(|e| transient("sidecar log", &e))?)
            .process_group(0)
            .kill_on_drop(true);
        let mut sidecar = cmd
            .spawn()
            .map_err(|e| transient(&format!("cannot start sidecar {}", self.settings.sidecar_binary.display()), &e))?;
        meta.sidecar = sidecar.id().and_then(ProcessId::of);
        // Recorded at once, so a restart in the middle of the hand-off can stop it.
        write_private(&dir.join(META_FILE), &serde_json::to_vec(&meta).expect("meta serializes"))
            .map_err(|e| transient("write meta", &e))?;
        if let Some(mut stdin) = sidecar.stdin.take() {
            let line = format!("{}\n", self.settings.internal_api_key.expose());
            stdin.write_all(line.as_bytes()).await.map_err(|e| transient("cannot pass the key to the sidecar", &e))?;
            // Dropping stdin closes it: the sidecar reads one line and nothing else.
        }
        let ready = match wait_ready(&ready, &mut sidecar, self.settings.sidecar_ready_timeout).await {
            Ok(r) => r,
            Err(e) => {
                let _ = sidecar.start_kill();
                let _ = sidecar.wait().await;
                let tail = read_tail(&dir.join(SIDECAR_OUTPUT), 1024);
                return Err(HandoffError::Transient(format!("sidecar did not become ready: {e}; output: {tail}")));
            }
        };

        // Runtime: only what the contract lists. Never the key, never the token.
        let proxy = format!("http://{}", ready.listen);
        let no_proxy = self.settings.no_proxy.join(",");
        let (program, args) = runtime
            .command
            .split_first()
            .ok_or_else(|| HandoffError::Permanent(format!("runtime type {:?} has no command", job.runtime_type)))?;
        let mut cmd = Command::new(program);
        cmd.args(args)
            .env_clear()
            .envs(basic_env())
            .envs(&runtime.extra_env)
            .env("HOME", &scratch)
            .env("TMPDIR", &scratch)
            .env(runtime_env::JOB_API_URL, &proxy)
            .env(runtime_env::HTTP_PROXY, &proxy)
            .env(runtime_env::HTTPS_PROXY, &proxy)
            .env("http_proxy", &proxy)
            .env("https_proxy", &proxy)
            .env(runtime_env::NO_PROXY, &no_proxy)
            .env("no_proxy", &no_proxy)
            .env(runtime_env::USER_DEFINED_VARIABLES, &self.settings.user_defined_variables)
            .current_dir(&scratch)
            .stdin(Stdio::null())
            .stdout(output_file(&dir.join(RUNTIME_OUTPUT)).map_err(|e| transient("runtime log", &e))?)
            .stderr(output_file(&dir.join(RUNTIME_OUTPUT)).map_err(|e| transient("runtime log", &e))?)
            // Its own process group, so a timeout kills everything it started.
            .process_group(0)
            .kill_on_drop(true);
        if let Some(p) = &self.settings.custom_node_modules_path {
            cmd.env(runtime_env::CUSTOM_NODE_MODULES_PATH, p);
        }
        let child = match cmd.spawn() {
            Ok(c) => c,
            Err(e) => {
                terminate(&mut sidecar, Duration::from_secs(2)).await;
                return Err(HandoffError::Permanent(format!("cannot start runtime {program:?}: {e}")));
            }
        };
        meta.runtime = child.id().and_then(ProcessId::of);
        write_private(&dir.join(META_FILE), &serde_json::to_vec(&meta).expect("meta serializes"))
            .map_err(|e| transient("write meta", &e))?;
        tracing::info!(sidecar = %ready.listen, runtime_pid = child.id().unwrap_or_default(), "runtime started");
        Ok((sidecar, child, meta))
    }

    /// Watch a job this process started until it ends, then settle its outcome.
    async fn supervise(self: Arc<Self>, dir: PathBuf, meta: Meta, mut sidecar: Child, mut runtime: Child) {
        let started = std::time::Instant::now();
        let ending = tokio::select! {
            status = runtime.wait() => Ending::Exited(status.ok()),
            _ = tokio::time::sleep(until(meta.deadline_unix_ms)) => Ending::DeadlineExceeded,
            _ = self.abort.cancelled() => Ending::Aborted,
        };
        // Whatever happened, nothing of the runtime's process group may outlive it.
        if let Some(pid) = runtime.id() {
            let _ = killpg(Pid::from_raw(pid as i32), Signal::SIGKILL);
        }
        let _ = runtime.wait().await;
        self.settle(&dir, &meta, ending, started.elapsed(), Some(&mut sidecar)).await;
    }

    /// Watch a job adopted after a restart: we are not its parent, so poll its pids.
    async fn watch_adopted(self: Arc<Self>, dir: PathBuf, meta: Meta) {
        let started = std::time::Instant::now();
        let deadline = tokio::time::sleep(until(meta.deadline_unix_ms));
        tokio::pin!(deadline);
        let ending = loop {
            let alive = meta.runtime.is_some_and(|p| p.alive());
            if !alive {
                break Ending::Exited(None);
            }
            tokio::select! {
                _ = &mut deadline => break Ending::DeadlineExceeded,
                _ = self.abort.cancelled() => break Ending::Aborted,
                _ = tokio::time::sleep(Duration::from_millis(100)) => {}
            }
        };
        if let Some(p) = meta.runtime.filter(|p| p.alive()) {
            let _ = killpg(Pid::from_raw(p.pid), Signal::SIGKILL);
        }
        self.settle(&dir, &meta, ending, started.elapsed(), None).await;
    }

    /// After the runtime is gone: record timeouts/aborts, let the sidecar deliver what
    /// the runtime reported, record a failure if nothing arrived, remove the job dir.
    async fn settle(&self, dir: &Path, meta: &Meta, ending: Ending, ran: Duration, sidecar: Option<&mut Child>) {
        let id = &meta.job.id;
        let decided = match &ending {
            Ending::DeadlineExceeded => {
                let secs = meta.job.timeout_secs;
                Some(JobResult {
                    duration_ms: Some(ran.as_millis() as u64),
                    ..JobResult::new(
                        id.clone(),
                        Outcome::TimedOut,
                        format!("runtime exceeded its timeout ({secs}s) and was killed"),
                    )
                })
            }
            Ending::Aborted => Some(JobResult::new(
                id.clone(),
                Outcome::Failed,
                "job manager shut down before the job finished; runtime killed",
            )),
            Ending::Exited(_) => None,
        };
        if let Some(result) = &decided {
            tracing::warn!(outcome = %result.outcome, "{}", result.message);
            self.record(result).await;
        }
        // SIGTERM lets the sidecar finish delivering a result the runtime posted.
        match sidecar {
            Some(child) => terminate(child, self.settings.sidecar_exit_grace).await,
            None => {
                if let Some(p) = meta.sidecar.filter(|p| p.alive()) {
                    terminate_pid(p, self.settings.sidecar_exit_grace).await;
                }
            }
        }
        if decided.is_none() {
            let has_result = matches!(self.intake.lookup(id).await, Ok(Some(_)));
            if !has_result {
                let status = match &ending {
                    Ending::Exited(Some(s)) => s.to_string(),
                    _ => "an unknown status (it ended while the job manager was down)".into(),
                };
                let tail = read_tail(&dir.join(RUNTIME_OUTPUT), self.settings.output_tail_bytes);
                let short: String = {
                    let t = tail.trim_end();
                    let start = t.char_indices().rev().nth(300).map_or(0, |(i, _)| i);
                    t[start..].to_string()
                };
                let mut result = JobResult::new(
                    id.clone(),
                    Outcome::Failed,
                    format!("runtime exited with {status} without reporting a result; output tail: {short}"),
                );
                result.output = serde_json::json!({ "exit_status": status, "output_tail": tail });
                result.duration_ms = Some(ran.as_millis() as u64);
                tracing::warn!("{}", result.message);
                self.record(&result).await;
            }
        }
        if let Err(e) = std::fs::remove_dir_all(dir) {
            tracing::error!(error = %e, dir = %dir.display(), "cannot remove job dir");
        }
        self.supervised.lock().expect("lock").remove(id);
        tracing::info!("job finished");
    }

    async fn record(&self, result: &JobResult) {
        // A store failure here must not lose the outcome: retry until it sticks.
        let mut attempt = 0u32;
        let backoff = common::backoff::Backoff::new(Duration::from_millis(100), Duration::from_secs(5));
        while let Err(e) = self.intake.record(result).await {
            tracing::error!(error = %e, "cannot record result; retrying");
            tokio::time::sleep(backoff.delay(attempt)).await;
            attempt += 1;
        }
    }

    /// The job dirs present now, by runtime type. The directory listing is the truth (it
    /// survives a restart); the runtime type comes from the supervision table when the
    /// job is supervised, else from its `meta.json`, so a poll tick with many jobs in
    /// flight costs one `read_dir`, not one file read per job.
    fn in_flight_now(&self) -> Result<BTreeMap<String, Vec<JobId>>, StateError> {
        let jobs = self.jobs_dir();
        let entries = std::fs::read_dir(&jobs).map_err(|e| StateError(format!("{}: {e}", jobs.display())))?;
        let supervised = self.supervised.lock().expect("lock").clone();
        let mut out: BTreeMap<String, Vec<JobId>> = BTreeMap::new();
        for entry in entries.flatten() {
            let name = entry.file_name();
            let Some(id) = name.to_str().and_then(|n| n.strip_prefix("j-")).and_then(|n| JobId::new(n).ok()) else {
                continue;
            };
            let runtime = match supervised.get(&id) {
                Some(rt) => Some(rt.clone()),
                None => std::fs::read(entry.path().join(META_FILE))
                    .ok()
                    .and_then(|b| serde_json::from_slice::<Meta>(&b).ok())
                    .map(|m| m.job.runtime_type),
            };
            // No meta yet: being claimed right now; the dispatcher counts it as a
            // hand-off in progress.
            if let Some(rt) = runtime {
                out.entry(rt).or_default().push(id);
            }
        }
        Ok(out)
    }
}

impl<S: ResultStore> Executor for Arc<LocalExecutor<S>> {
    fn name(&self) -> &'static str {
        "local"
    }

    async fn start(&self, handoff: Handoff) -> Result<Accepted, HandoffError> {
        self.start_job(handoff).await
    }

    async fn in_flight(&self) -> Result<BTreeMap<String, Vec<JobId>>, StateError> {
        let me = self.clone();
        tokio::task::spawn_blocking(move || me.in_flight_now())
            .await
            .map_err(|e| StateError(format!("state scan failed: {e}")))?
    }

    async fn drain(&self, grace: Duration) -> Vec<JobId> {
        self.draining.store(true, Ordering::SeqCst);
        self.supervisors.close();
        if tokio::time::timeout(grace, self.supervisors.wait()).await.is_ok() {
            return Vec::new();
        }
        let remaining: Vec<JobId> = self.supervised.lock().expect("lock").keys().cloned().collect();
        tracing::warn!(jobs = remaining.len(), "grace period over; killing remaining runtimes");
        self.abort.cancel();
        // Bounded: each supervisor kills its runtime and gives its sidecar a short grace.
        let _ =
            tokio::time::timeout(self.settings.sidecar_exit_grace + Duration::from_secs(5), self.supervisors.wait())
                .await;
        remaining
    }
}

fn basic_env() -> Vec<(String, String)> {
    let path = std::env::var("PATH").unwrap_or_else(|_| "/usr/local/bin:/usr/bin:/bin".into());
    let mut env = vec![("PATH".to_string(), path)];
    for name in ["LANG", "LC_ALL", "TZ"] {
        if let Ok(v) = std::env::var(name) {
            env.push((name.to_string(), v));
        }
    }
    env
}

fn until(deadline_unix_ms: u64) -> Duration {
    let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default().as_millis() as u64;
    Duration::from_millis(deadline_unix_ms.saturating_sub(now))
}

fn write_private(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    // Temp + rename so a reader (or a restart) never sees half a file.
    let tmp = path.with_extension("tmp");
    let mut f = std::fs::OpenOptions::new().write(true).create(true).truncate(true).mode(0o600).open(&tmp)?;
    f.write_all(bytes)?;
    f.sync_all()?;
    std::fs::rename(&tmp, path)
}

fn output_file(path: &Path) -> std::io::Result<std::fs::File> {
    std::fs::OpenOptions::new().append(true).create(true).mode(0o600).open(path)
}

/// The last `max` bytes of a file, lossily decoded (empty when unreadable).
pub fn read_tail(path: &Path, max: u64) -> String {
    let Ok(mut f) = std::fs::File::open(path) else { return String::new() };
    let len = f.metadata().map(|m| m.len()).unwrap_or(0);
    let _ = f.seek(SeekFrom::Start(len.saturating_sub(max)));
    let mut buf = Vec::new();
    let _ = f.take(max).read_to_end(&mut buf);
    String::from_utf8_lossy(&buf).into_owned()
}

async fn wait_ready(path: &Path, sidecar: &mut Child, timeout: Duration) -> Result<ReadyFile, String> {
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        if let Ok(bytes) = std::fs::read(path) {
            if let Ok(ready) = serde_json::from_slice::<ReadyFile>(&bytes) {
                return Ok(ready);
            }
        }
        if let Ok(Some(status)) = sidecar.try_wait() {
            return Err(format!("sidecar exited with {status}"));
        }
        if tokio::time::Instant::now() >= deadline {
            return Err(format!("no ready file after {timeout:?}"));
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// SIGTERM, wait up to `grace`, then SIGKILL.
async fn terminate(child: &mut Child, grace: Duration) {
    if let Some(pid) = child.id() {
        let _ = kill(Pid::from_raw(pid as i32), Signal::SIGTERM);
    }
    if tokio::time::timeout(grace, child.wait()).await.is_err() {
        tracing::warn!("sidecar did not exit within {grace:?}; killing it");
        let _ = child.start_kill();
        let _ = child.wait().await;
    }
}

async fn terminate_pid(p: ProcessId, grace: Duration) {
    let _ = kill(Pid::from_raw(p.pid), Signal::SIGTERM);
    let deadline = tokio::time::Instant::now() + grace;
    while p.alive() && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    if p.alive() {
        let _ = kill(Pid::from_raw(p.pid), Signal::SIGKILL);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn own_pid_is_alive_and_start_time_checked() {
        let me = ProcessId::of(std::process::id()).expect("/proc readable");
        assert!(me.alive());
        let recycled = ProcessId { start_ticks: me.start_ticks + 1, ..me };
        assert!(!recycled.alive(), "same pid, other start time: not ours");
    }

    #[test]
    fn tail_reads_only_the_end() {
        let p = std::env::temp_dir().join(format!("jm-tail-{}", std::process::id()));
        std::fs::write(&p, "a".repeat(5000) + "END").unwrap();
        let t = read_tail(&p, 10);
        assert_eq!(t, "aaaaaaaEND");
        assert_eq!(read_tail(Path::new("/nonexistent"), 10), "");
        std::fs::remove_file(p).unwrap();
    }
}
