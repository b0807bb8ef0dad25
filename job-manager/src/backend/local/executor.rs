//! The local executor: each job runs as a local runtime process beside a real `sidecar`
//! process, handed over exactly as in a pod (job dir with `job.json` + `token`, the
//! internal key on the sidecar's stdin, the runtime behind the sidecar's proxy).
//!
//! When the job manager is root, each job also takes a UID slot (`isolation.rs`): its
//! sidecar and runtime are started through the `isolate` launcher (`launcher.rs`) under
//! UIDs of their own, the runtime in a network namespace holding only its sidecar's
//! listener. The slot is recorded in `meta.json`, and freed only after whatever still
//! ran under its UIDs was killed.
//!
//! This file holds the [`LocalExecutor`] and its [`Executor`] impl: starting a job,
//! supervising it to its end, in-flight counts, drain, and recovery after a restart. The
//! job dir layout is in `state_dir`, the processes in `process`.
//!
//! A job dir exists exactly while its job runs, so [`Executor::in_flight`] is derived
//! from the directory (it survives a restart) and a re-delivered job whose dir exists is
//! [`Accepted::AlreadyRunning`].
//!
//! If the job manager is SIGKILLed its children keep running. The restart path makes that
//! correct: [`LocalExecutor::recover`] adopts every job dir it finds — it watches the
//! recorded pids (checked against their start time, so a reused pid is not mistaken for
//! ours), enforces the recorded deadline, terminates the sidecar once the runtime is gone,
//! records a `failed` result if none arrived, and removes the dir. The hand-off window:
//! - `meta.json` is written before any process starts, and again with
//!   `runtime_spawning` just before the runtime is spawned. A dir without that mark ran
//!   no runtime: its sidecar (found by its environment if its pid was never recorded)
//!   is killed, the dir removed, and the unacked job re-delivered by the broker.
//! - A dir with the mark but no runtime pid may have run its runtime: the runtime is
//!   looked for by its environment (`HOME` = its scratch dir) and adopted if found;
//!   otherwise the job is reported from what its sidecar spooled, else `failed`. It is
//!   never handed back to run a second time.
//! - An unreadable `meta.json`: the job's processes are found by their environment (and,
//!   isolated, killed by UID), and the job reported from its spool, else `failed`.
//!
//! What a runtime reported wins over what the job manager decides (`settle`): a result
//! its sidecar spooled (also one left by a sidecar that died with the machine) is
//! recorded before any timeout, abort or "exited without a result"; an exit seen late
//! (the job manager was paused past the deadline) is an exit, not a timeout; and a
//! timeout is decided only after the runtime is dead and no result from before the
//! deadline exists, so no earlier result can arrive after it.
//!
//! Leftovers after a normal exit: isolated, everything under the job's UIDs is killed.
//! Not root, the runtime's process group is killed and then every process that still
//! carries its environment marker; a child that both left the group (`setsid`) and
//! replaced its environment escapes: without root there is no cgroup to hold the job
//! (cgroup v2 delegation would be needed) and a session kill does not reach a process
//! that made its own session.
use super::faults;
use super::isolation::JobIds;
use super::output::{self, read_tail};
use super::process::{self, Confinement, ProcessId, RUNTIME_OUTPUT, SIDECAR_OUTPUT};
use super::settings::{LocalRuntime, LocalSettings};
use super::state_dir::{self, Claim, JobsDir, Meta, MetaState, Owners, READY_FILE, SIDECAR_DIR, SPOOL_DIR};
use crate::backend::{Accepted, Executor, Handoff, HandoffError, StateError};
use crate::results::{ResultIntake, ResultStore};
use common::{JobId, JobResult, Outcome};
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::ExitStatus;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use tokio::io::AsyncWriteExt;
use tokio::process::Child;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::Instrument;

/// Why a job's runtime stopped.
enum Ending {
    Exited(Option<ExitStatus>),
    DeadlineExceeded,
    Aborted,
}

pub struct LocalExecutor<S> {
    settings: LocalSettings,
    jobs: JobsDir,
    intake: ResultIntake<S>,
    draining: AtomicBool,
    /// Cancelled when the drain grace period is over: remaining runtimes are killed.
    abort: CancellationToken,
    supervisors: TaskTracker,
    /// Jobs supervised by this process (for drain); the job dirs are the durable truth.
    supervised: Mutex<BTreeMap<JobId, String>>,
    /// UID slots held by running jobs (isolated only); each is also in its `meta.json`,
    /// where [`Self::recover`] finds those of adopted jobs.
    uid_slots: Mutex<BTreeSet<u32>>,
}

impl<S: ResultStore> LocalExecutor<S> {
    pub fn new(settings: LocalSettings, intake: ResultIntake<S>) -> Result<Arc<Self>, StateError> {
        let jobs = JobsDir::create(&settings.state_dir, settings.isolation.is_some())?;
        Ok(Arc::new(Self {
            settings,
            jobs,
            intake,
            draining: AtomicBool::new(false),
            abort: CancellationToken::new(),
            supervisors: TaskTracker::new(),
            supervised: Mutex::new(BTreeMap::new()),
            uid_slots: Mutex::new(BTreeSet::new()),
        }))
    }

    /// Adopt jobs left running by a previous process (see the module docs). Call once
    /// at startup, before the dispatcher polls: whatever it kills or removes is gone
    /// before a re-delivered job could find it.
    pub fn recover(self: &Arc<Self>) -> Result<usize, StateError> {
        let mut adopted = 0;
        for (dir, state) in self.jobs.scan()? {
            let scratch = self.jobs.scratch_dir(&dir);
            match state {
                // The hand-off stopped before the runtime was spawned, so nothing of the
                // job ran, `start` did not return and the job was not acked: undo it
                // (also a sidecar whose pid was never recorded); the broker re-delivers it.
                MetaState::Present(meta) if meta.runtime.is_none() && !meta.runtime_spawning => {
                    tracing::warn!(job_id = %meta.job.id, "removing a job whose hand-off was interrupted before its runtime started");
                    self.kill_leftovers(&dir, &scratch, meta.uid_slot);
                    let _ = self.jobs.remove(&dir);
                }
                MetaState::Present(mut meta) => {
                    let id = meta.job.id.clone();
                    // Died between spawning a process and recording it: find it by the
                    // environment it was started with, and record it now.
                    if meta.sidecar.is_none() {
                        meta.sidecar =
                            process::with_env_entry(&process::sidecar_marker(&dir.join(SIDECAR_DIR))).first().copied();
                    }
                    if meta.runtime.is_none() {
                        meta.runtime =
                            process::group_leader(&process::with_env_entry(&process::runtime_marker(&scratch)));
                        tracing::warn!(job_id = %id, found = meta.runtime.is_some(), "the runtime's pid was never recorded; looked for it");
                        if let Err(e) = state_dir::write_meta(&dir, &meta) {
                            tracing::warn!(job_id = %id, error = %e, "cannot record the runtime's pid");
                        }
                    }
                    if let Some(slot) = meta.uid_slot {
                        self.uid_slots.lock().expect("lock").insert(slot);
                    }
                    tracing::info!(job_id = %id, "adopting a job left by a previous run");
                    self.supervised.lock().expect("lock").insert(id.clone(), meta.job.runtime_type.clone());
                    let me = self.clone();
                    let span = tracing::error_span!("job", job_id = %id);
                    self.supervisors.spawn(async move { me.watch_adopted(dir, *meta).await }.instrument(span));
                    adopted += 1;
                }
                MetaState::Missing => {
                    // Claimed, and the hand-off died before writing `meta.json`, which
                    // precedes every process: the job was not acked; the broker re-delivers it.
                    tracing::warn!(dir = %dir.display(), "removing an incomplete job dir");
                    self.kill_leftovers(&dir, &scratch, None);
                    let _ = self.jobs.remove(&dir);
                }
                MetaState::Corrupt(why) => {
                    let Some(id) = state_dir::job_id_of(&dir) else {
                        tracing::error!(dir = %dir.display(), "{why}; not a job dir name either: left alone");
                        continue;
                    };
                    // Its pids and UID slot are lost with it: kill what runs with the job's
                    // environment (and, isolated, everything under those processes' UIDs),
                    // then report the job, since it may have been acked and have run.
                    tracing::error!(job_id = %id, "{why}; killing the job's processes and reporting it failed");
                    self.kill_leftovers(&dir, &scratch, None);
                    let me = self.clone();
                    let span = tracing::error_span!("job", job_id = %id);
                    self.supervisors.spawn(async move { me.close_unreadable(dir, id, why).await }.instrument(span));
                }
            }
        }
        Ok(adopted)
    }

    /// Kill whatever of the job in `dir` still runs, without relying on recorded pids:
    /// the processes started with the job's environment, and (isolated) everything under
    /// the slot's UIDs or the UIDs those processes run as. Blocking (startup recovery).
    fn kill_leftovers(&self, dir: &Path, scratch: &Path, slot: Option<u32>) {
        let mut found = process::with_env_entry(&process::sidecar_marker(&dir.join(SIDECAR_DIR)));
        found.extend(process::with_env_entry(&process::runtime_marker(scratch)));
        if let Some(isolation) = &self.settings.isolation {
            let mut uids: BTreeSet<u32> = found
                .iter()
                .filter_map(|p| process::uid_of(*p))
                .filter(|uid| (isolation.uids.first..=isolation.uids.last).contains(uid))
                .collect();
            if let Some(ids) = slot.map(|s| isolation.uids.ids(s)) {
                uids.extend([ids.runtime, ids.sidecar]);
            }
            process::reap_uids_now(&self.settings, &uids.into_iter().collect::<Vec<_>>());
        }
        process::kill_all(&found);
    }

    /// A job dir whose `meta.json` is unreadable, its processes killed: deliver what its
    /// sidecar spooled, else report it failed with the reason; then remove the dir.
    async fn close_unreadable(self: Arc<Self>, dir: PathBuf, id: JobId, why: String) {
        if !self.take_report(&dir, &id, None).await {
            let result = JobResult::new(
                id.clone(),
                Outcome::Failed,
                format!(
                    "the job manager lost track of this job ({why}) while it was down; its processes were killed \
                     and it reported no result"
                ),
            );
            self.record(&result).await;
        }
        self.remove_dir(&dir).await;
    }

    async fn start_job(self: &Arc<Self>, handoff: Handoff) -> Result<Accepted, HandoffError> {
        if self.draining.load(Ordering::SeqCst) {
            return Err(HandoffError::Transient("local executor is shutting down".into()));
        }
        let job = &handoff.job;
        let Some(runtime) = self.settings.runtimes.get(&job.runtime_type) else {
            return Err(HandoffError::Permanent(format!("runtime type {:?} is not configured", job.runtime_type)));
        };
        let me = self.clone();
        let (id, runtime_type, parallelism) = (job.id.clone(), job.runtime_type.clone(), runtime.parallelism);
        let Some((dir, ids)) = off_worker(move || me.claim_slot(&id, &runtime_type, parallelism)).await? else {
            return Ok(Accepted::AlreadyRunning);
        };
        match self.launch(&dir, &handoff, runtime, ids).await {
            Ok((sidecar, child, meta, helpers)) => {
                self.supervised.lock().expect("lock").insert(job.id.clone(), job.runtime_type.clone());
                let me = self.clone();
                let span = tracing::Span::current();
                self.supervisors
                    .spawn(async move { me.supervise(dir, meta, sidecar, child, helpers).await }.instrument(span));
                Ok(Accepted::Started)
            }
            Err(e) => {
                // Awaited: a retried start must not find this dir.
                let me = self.clone();
                let _ = tokio::task::spawn_blocking(move || me.jobs.remove(&dir)).await;
                if let Some(ids) = ids {
                    process::reap_uids(&self.settings, &[ids.runtime, ids.sidecar]).await;
                }
                self.release_uid_slot(ids);
                Err(e)
            }
        }
    }

    /// Claim a job dir if the job has none and its runtime type has a free slot, and
    /// (isolated) a UID slot; `None` when the job's dir exists (it runs here already).
    /// Blocking: the existence check, the state-dir scan and the claim, in that order.
    fn claim_slot(
        &self,
        id: &JobId,
        runtime_type: &str,
        parallelism: u32,
    ) -> Result<Option<(PathBuf, Option<JobIds>)>, HandoffError> {
        if self.jobs.job_dir(id).exists() {
            return Ok(None);
        }
        let running = self.in_flight_now().map_err(|e| HandoffError::Transient(e.to_string()))?;
        let busy = running.get(runtime_type).map_or(0, Vec::len);
        if busy >= parallelism as usize {
            return Err(HandoffError::Busy(format!("{busy} of {parallelism} {runtime_type} jobs already run")));
        }
        match self.jobs.claim(id) {
            Ok(Claim::Claimed(dir)) => match self.take_uid_slot() {
                Ok(ids) => Ok(Some((dir, ids))),
                Err(e) => {
                    let _ = self.jobs.remove(&dir);
                    Err(e)
                }
            },
            Ok(Claim::Exists) => Ok(None),
            Err(e) => Err(HandoffError::Transient(e.to_string())),
        }
    }

    /// The lowest free UID slot when isolated (`None` when not); all in use is transient:
    /// the job stays with the broker until one is free.
    fn take_uid_slot(&self) -> Result<Option<JobIds>, HandoffError> {
        let Some(isolation) = &self.settings.isolation else { return Ok(None) };
        let mut taken = self.uid_slots.lock().expect("lock");
        let slot = isolation.uids.lowest_free(&taken).ok_or_else(|| {
            HandoffError::Transient(format!(
                "all {} UID slots of local.uidRange ({}) are in use",
                isolation.uids.slots(),
                isolation.uids
            ))
        })?;
        taken.insert(slot);
        Ok(Some(isolation.uids.ids(slot)))
    }

    fn release_uid_slot(&self, ids: Option<JobIds>) {
        if let Some(ids) = ids {
            self.uid_slots.lock().expect("lock").remove(&ids.slot);
        }
    }

    /// Write the hand-off files, start the sidecar, wait until it serves, start the runtime.
    async fn launch(
        &self,
        dir: &Path,
        handoff: &Handoff,
        runtime: &LocalRuntime,
        ids: Option<JobIds>,
    ) -> Result<(Child, Child, Meta, Vec<Child>), HandoffError> {
        let begun = std::time::Instant::now();
        let job = &handoff.job;
        let deadline_unix_ms =
            handoff.deadline.duration_since(UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or_default();
        let mut meta = Meta {
            job: job.clone(),
            deadline_unix_ms,
            timeout_secs: handoff.timeout_secs,
            sidecar: None,
            runtime: None,
            runtime_spawning: false,
            uid_slot: ids.map(|i| i.slot),
        };
        let scratch = self.jobs.scratch_dir(dir);
        let owners = ids.map(|i| Owners { sidecar: i.sidecar, runtime: i.runtime });
        let (d, s, m, token) = (dir.to_path_buf(), scratch.clone(), meta.clone(), handoff.token.clone());
        off_worker(move || {
            state_dir::write_meta(&d, &m).map_err(|e| transient("write meta", &e))?;
            state_dir::write_handoff(&d, &s, &m.job, &token, owners).map_err(|(what, e)| transient(what, &e))
        })
        .await?;
        let spool = dir.join(SIDECAR_DIR).join(SPOOL_DIR);
        let ready = dir.join(SIDECAR_DIR).join(READY_FILE);
        let (out, sidecar_output) = self.output_pipe(&dir.join(SIDECAR_OUTPUT))?;
        let mut sidecar = process::sidecar_command(
            &self.settings,
            &dir.join(SIDECAR_DIR),
            job,
            &ready,
            &spool,
            ids.map(|i| i.sidecar),
            out,
        )?
        .spawn()
        .map_err(|e| transient(&format!("cannot start sidecar {}", self.settings.sidecar_binary.display()), &e))?;
        faults::abort_point("sidecar-spawned");
        meta.sidecar = sidecar.id().and_then(ProcessId::of);
        // Recorded at once, so a restart in the middle of the hand-off can stop it.
        write_meta(dir, &meta).await?;
        if let Some(mut stdin) = sidecar.stdin.take() {
            let line = format!("{}\n", self.settings.internal_api_key.expose());
            stdin.write_all(line.as_bytes()).await.map_err(|e| transient("cannot pass the key to the sidecar", &e))?;
            // Dropping stdin closes it: the sidecar reads one line and nothing else.
        }
        let ready = match process::wait_ready(&ready, &mut sidecar, self.settings.sidecar_ready_timeout).await {
            Ok(r) => r,
            Err(e) => {
                let _ = sidecar.start_kill();
                let _ = sidecar.wait().await;
                drop(sidecar_output);
                let tail = read_tail(&dir.join(SIDECAR_OUTPUT), 1024);
                return Err(HandoffError::Transient(format!("sidecar did not become ready: {e}; output: {tail}")));
            }
        };

        let proxy = format!("http://{}", ready.listen);
        let confinement = match (ids, meta.sidecar) {
            (Some(ids), Some(p)) => match process::job_netns(p.pid) {
                Ok(netns) => Some(Confinement { uid: ids.runtime, netns }),
                Err(e) => {
                    process::terminate(&mut sidecar, Duration::from_secs(2)).await;
                    return Err(transient("cannot find the job's network namespace", &e));
                }
            },
            (Some(_), None) => {
                process::terminate(&mut sidecar, Duration::from_secs(2)).await;
                return Err(HandoffError::Transient("the sidecar's pid is unknown".into()));
            }
            (None, _) => None,
        };
        let (out, runtime_output) = self.output_pipe(&dir.join(RUNTIME_OUTPUT))?;
        let mut cmd = process::runtime_command(&self.settings, runtime, job, &scratch, &proxy, confinement, out)?;
        // Recorded before the spawn: from here on, a restart must not let the broker run
        // the job again without first finding out whether this runtime ran.
        meta.runtime_spawning = true;
        write_meta(dir, &meta).await?;
        let spawned = cmd.spawn();
        // Our copies of the pipe's write end go with it: the helper sees EOF when the
        // runtime (and whatever it started) is done.
        drop(cmd);
        let child = match spawned {
            Ok(c) => c,
            Err(e) => {
                process::terminate(&mut sidecar, Duration::from_secs(2)).await;
                let program = &runtime.command[0];
                return Err(HandoffError::Permanent(format!("cannot start runtime {program:?}: {e}")));
            }
        };
        faults::abort_point("runtime-spawned");
        meta.runtime = child.id().and_then(ProcessId::of);
        write_meta(dir, &meta).await?;
        tracing::info!(
            sidecar = %ready.listen,
            runtime_pid = child.id().unwrap_or_default(),
            handoff_ms = begun.elapsed().as_millis() as u64,
            "runtime started"
        );
        Ok((sidecar, child, meta, vec![sidecar_output, runtime_output]))
    }

    /// A pipe for a process's output, its other end read by a helper that keeps `path`
    /// bounded (`output.rs`).
    fn output_pipe(&self, path: &Path) -> Result<(std::os::fd::OwnedFd, Child), HandoffError> {
        output::start(&self.settings.output_helper, path, self.settings.output_cap_bytes)
            .map_err(|e| transient(&format!("cannot start the output helper for {}", path.display()), &e))
    }

    /// Watch a job this process started until it ends, then settle its outcome.
    async fn supervise(
        self: Arc<Self>,
        dir: PathBuf,
        meta: Meta,
        mut sidecar: Child,
        mut runtime: Child,
        helpers: Vec<Child>,
    ) {
        let started = std::time::Instant::now();
        // Taken now: once `wait` has seen the exit, the child no longer reports its pid.
        let group = runtime.id();
        // Biased: when several are ready at once (the job manager was paused past the
        // deadline and the runtime exited meanwhile), the exit is what happened first.
        let ending = tokio::select! {
            biased;
            status = runtime.wait() => Ending::Exited(status.ok()),
            _ = self.abort.cancelled() => Ending::Aborted,
            _ = tokio::time::sleep(until(meta.deadline_unix_ms)) => Ending::DeadlineExceeded,
        };
        // The exit may not have been noticed yet (SIGCHLD still queued): ask the kernel.
        let ending = match (ending, runtime.try_wait()) {
            (Ending::DeadlineExceeded | Ending::Aborted, Ok(Some(status))) => Ending::Exited(Some(status)),
            (ending, _) => ending,
        };
        // Whatever happened, nothing of the runtime's process group may outlive it, also
        // after a normal exit (`sleep 600 &`). While members remain, the kernel does not
        // hand the group's id to a new process, so this reaches only the runtime's own.
        if let Some(pid) = group {
            process::kill_group(pid as i32);
        }
        let _ = runtime.wait().await;
        self.settle(&dir, &meta, ending, started.elapsed(), Some(&mut sidecar), helpers).await;
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
                biased;
                _ = self.abort.cancelled() => break Ending::Aborted,
                _ = &mut deadline => {
                    // Checked once more: after a pause the exit may have come first.
                    if meta.runtime.is_some_and(|p| p.alive()) {
                        break Ending::DeadlineExceeded;
                    }
                    break Ending::Exited(None);
                }
                _ = tokio::time::sleep(Duration::from_millis(100)) => {}
            }
        };
        if let Some(p) = meta.runtime.filter(|p| p.alive()) {
            process::kill_group(p.pid);
        }
        self.settle(&dir, &meta, ending, started.elapsed(), None, Vec::new()).await;
    }

    /// After the runtime is gone: deliver what it reported, else record the timeout or
    /// abort, let the sidecar deliver, record a failure if nothing arrived, remove the dir.
    ///
    /// What actually happened first wins. The runtime is gone, so nothing new can be
    /// reported: a result it reported (spooled by its sidecar, or already recorded) is
    /// taken before the job manager decides anything. After a deadline, only a result
    /// spooled by the deadline counts; a timeout is therefore only ever recorded when no
    /// result from before the deadline exists, and a decided timeout never has to be
    /// replaced by one that arrives later.
    async fn settle(
        &self,
        dir: &Path,
        meta: &Meta,
        ending: Ending,
        ran: Duration,
        sidecar: Option<&mut Child>,
        helpers: Vec<Child>,
    ) {
        let id = &meta.job.id;
        if self.settings.isolation.is_none() {
            // Not root: the runtime's children that left its process group (`setsid`)
            // are found by the environment they inherited (isolated: the UID reap below).
            process::kill_all(&process::with_env_entry(&process::runtime_marker(&self.jobs.scratch_dir(dir))));
        }
        let deadline = UNIX_EPOCH + Duration::from_millis(meta.deadline_unix_ms);
        let reported_by = matches!(ending, Ending::DeadlineExceeded).then_some(deadline);
        let mut reported = self.take_report(dir, id, reported_by).await;
        let decided = match &ending {
            _ if reported => None,
            Ending::DeadlineExceeded => {
                let secs = if meta.timeout_secs > 0 { meta.timeout_secs } else { meta.job.timeout_secs };
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
            Some(child) => process::terminate(child, self.settings.sidecar_exit_grace).await,
            None => {
                if let Some(p) = meta.sidecar.filter(|p| p.alive()) {
                    process::terminate_pid(p, self.settings.sidecar_exit_grace).await;
                }
            }
        }
        if decided.is_none() && !reported {
            reported = self.take_report(dir, id, None).await;
        }
        // The writers are gone: the helpers drain the pipes and end. One kept open by a
        // leftover that escaped every kill is not waited for (it gets SIGPIPE instead).
        for mut helper in helpers {
            if tokio::time::timeout(Duration::from_secs(2), helper.wait()).await.is_err() {
                let _ = helper.start_kill();
            }
        }
        let dropped = output::dropped_bytes(&dir.join(RUNTIME_OUTPUT));
        self.settings.output_dropped.inc_by(dropped + output::dropped_bytes(&dir.join(SIDECAR_OUTPUT)));
        if decided.is_none() && !reported {
            let status = match (&ending, meta.runtime) {
                (Ending::Exited(Some(s)), _) => s.to_string(),
                (_, None) => "an unknown status (the job manager stopped before recording its pid)".into(),
                _ => "an unknown status (it ended while the job manager was down)".into(),
            };
            let tail = read_tail(&dir.join(RUNTIME_OUTPUT), self.settings.output_tail_bytes);
            let short: String = {
                let t = tail.trim_end();
                let start = t.char_indices().rev().nth(300).map_or(0, |(i, _)| i);
                t[start..].to_string()
            };
            let earlier = match dropped {
                0 => String::new(),
                n => format!(" ({n} bytes of earlier output were not kept)"),
            };
            let mut result = JobResult::new(
                id.clone(),
                Outcome::Failed,
                format!("runtime exited with {status} without reporting a result; output tail{earlier}: {short}"),
            );
            result.output =
                serde_json::json!({ "exit_status": status, "output_tail": tail, "output_dropped_bytes": dropped });
            result.duration_ms = Some(ran.as_millis() as u64);
            tracing::warn!("{}", result.message);
            self.record(&result).await;
        }
        self.remove_dir(dir).await;
        // Only now, when nothing of the job runs under its UIDs any more.
        if let (Some(slot), Some(isolation)) = (meta.uid_slot, &self.settings.isolation) {
            let ids = isolation.uids.ids(slot);
            process::reap_uids(&self.settings, &[ids.runtime, ids.sidecar]).await;
            self.uid_slots.lock().expect("lock").remove(&slot);
        }
        self.supervised.lock().expect("lock").remove(id);
        tracing::info!("job finished");
    }

    /// Whether the job has a result: one its sidecar spooled (recorded here, so it is
    /// not lost with the job dir; with `by`, only one spooled by then), or one already
    /// in the result store. The spool is read first: a result delivered (and unspooled)
    /// in between is in the store by the time the store is asked.
    async fn take_report(&self, dir: &Path, id: &JobId, by: Option<SystemTime>) -> bool {
        let (d, i) = (dir.to_path_buf(), id.clone());
        let spooled = tokio::task::spawn_blocking(move || state_dir::spooled_result(&d, &i)).await.ok().flatten();
        if let Some(s) = spooled {
            if by.is_none_or(|by| s.at <= by) {
                tracing::info!(outcome = %s.result.outcome, "recording the result the runtime reported (spooled by its sidecar)");
                self.record(&s.result).await;
                return true;
            }
            tracing::info!(outcome = %s.result.outcome, "the runtime reported only after its deadline");
        }
        matches!(self.intake.lookup(id).await, Ok(Some(_)))
    }

    async fn remove_dir(&self, dir: &Path) {
        let (jobs, removing) = (self.jobs.clone(), dir.to_path_buf());
        let removed = tokio::task::spawn_blocking(move || jobs.remove(&removing))
            .await
            .unwrap_or_else(|e| Err(std::io::Error::other(e)));
        if let Err(e) = removed {
            tracing::error!(error = %e, dir = %dir.display(), "cannot remove job dir");
        }
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

    /// The job dirs present now, by runtime type (see [`JobsDir::in_flight`]); the
    /// supervision table names the runtime type of the jobs this process supervises.
    fn in_flight_now(&self) -> Result<BTreeMap<String, Vec<JobId>>, StateError> {
        self.jobs.in_flight(|| self.supervised.lock().expect("lock").clone())
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

    /// Supervised here, also adopted after a restart (the table is filled by `recover`).
    fn runs_here(&self, id: &JobId) -> bool {
        self.supervised.lock().expect("lock").contains_key(id)
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

/// Run blocking state-dir I/O (scans, fsyncs, removals) on the blocking pool, not on an
/// async worker.
async fn off_worker<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, HandoffError> + Send + 'static,
) -> Result<T, HandoffError> {
    tokio::task::spawn_blocking(f).await.map_err(|e| HandoffError::Transient(format!("state dir I/O failed: {e}")))?
}

async fn write_meta(dir: &Path, meta: &Meta) -> Result<(), HandoffError> {
    let (dir, meta) = (dir.to_path_buf(), meta.clone());
    off_worker(move || state_dir::write_meta(&dir, &meta).map_err(|e| transient("write meta", &e))).await
}

fn transient(what: &str, e: &dyn std::fmt::Display) -> HandoffError {
    HandoffError::Transient(format!("{what}: {e}"))
}

fn until(deadline_unix_ms: u64) -> Duration {
    let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default().as_millis() as u64;
    Duration::from_millis(deadline_unix_ms.saturating_sub(now))
}
