//! The on-disk layout of the local executor's state dir, and nothing that runs a process.
//!
//! `<state_dir>/jobs/j-<job id>/` holds one running job: `meta.json` (job, deadline,
//! pids, UID slot) and both processes' output (bounded: `runtime.log` + `.1` +
//! `.dropped`, likewise `sidecar.log`; see `output.rs`), written by the job manager only, and
//! `sidecar/`, the sidecar's: the hand-off files `job.json` and `token`, its `ready.json`
//! and `spool/`. The runtime works in `<state_dir>/scratch/j-<job id>/`, outside, so
//! nothing of the job manager's or the sidecar's is below or beside its working dir.
//! A job dir exists exactly while its job runs, so the listing is the durable truth the
//! executor derives in-flight jobs from, and what it adopts after a restart.
//!
//! Modes: everything 0700/0600 and the job manager's. When jobs run under their own UIDs
//! (the job manager is root), `jobs/`, `scratch/` and each job dir are 0711 (traversable,
//! not listable), `sidecar/` and all in it belong to the job's sidecar UID, and the
//! scratch dir to its runtime UID (0700 both): a runtime reaches nothing but its scratch.
//!
//! Everything here is blocking file I/O: async callers run it in `spawn_blocking`.
use super::process::ProcessId;
use crate::backend::StateError;
use common::runtime_api;
use common::{Job, JobId};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::path::{Path, PathBuf};

const META_FILE: &str = "meta.json";
pub(super) const READY_FILE: &str = "ready.json";
pub(super) const SPOOL_DIR: &str = "spool";
/// The sidecar's part of a job dir (owned by its UID when isolated).
pub(super) const SIDECAR_DIR: &str = "sidecar";
/// `<state_dir>/scratch/`: the runtimes' working dirs, one per job.
const SCRATCH_ROOT: &str = "scratch";

/// What a job dir records about its job, written before any process starts and updated
/// with the pids once they exist.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub(super) struct Meta {
    pub job: Job,
    pub deadline_unix_ms: u64,
    /// The time the job was given (`Handoff::timeout_secs`); 0 in job dirs written
    /// before it was recorded, which then report the job's own timeout.
    #[serde(default)]
    pub timeout_secs: u32,
    #[serde(default)]
    pub sidecar: Option<ProcessId>,
    #[serde(default)]
    pub runtime: Option<ProcessId>,
    /// Set (and written) just before the runtime is spawned: a job dir with this and no
    /// runtime pid may have run its runtime (the job manager died between spawning it
    /// and recording its pid), so recovery must not hand it to the broker to run again.
    #[serde(default)]
    pub runtime_spawning: bool,
    /// The UID slot the job's processes run under (isolated jobs only).
    #[serde(default)]
    pub uid_slot: Option<u32>,
}

/// `<state_dir>/jobs`: one dir per running job.
#[derive(Clone, Debug)]
pub(super) struct JobsDir {
    path: PathBuf,
    scratch: PathBuf,
    /// Jobs run under UIDs of their own: dirs they pass through are 0711.
    isolated: bool,
}

/// How claiming a job dir went.
pub(super) enum Claim {
    /// The dir is ours, created empty.
    Claimed(PathBuf),
    /// A dir for this job exists already: it runs (or is being handed off) here.
    Exists,
}

impl JobsDir {
    /// Create (if need be) `<state_dir>/jobs` and `<state_dir>/scratch`, and give them
    /// their mode (also when they exist, from a run with the other setting).
    pub fn create(state_dir: &Path, isolated: bool) -> Result<Self, StateError> {
        let mode = if isolated { 0o711 } else { 0o700 };
        let (path, scratch) = (state_dir.join("jobs"), state_dir.join(SCRATCH_ROOT));
        for dir in [&path, &scratch] {
            std::fs::DirBuilder::new()
                .recursive(true)
                .mode(mode)
                .create(dir)
                .and_then(|()| std::fs::set_permissions(dir, std::fs::Permissions::from_mode(mode)))
                .map_err(|e| StateError(format!("cannot create {}: {e}", dir.display())))?;
        }
        Ok(Self { path, scratch, isolated })
    }

    /// The runtime's working dir (HOME, TMPDIR) of the job in `dir`.
    pub fn scratch_dir(&self, dir: &Path) -> PathBuf {
        self.scratch.join(dir.file_name().unwrap_or_default())
    }

    /// Remove a job dir and its scratch dir (whatever the runtime left in it).
    pub fn remove(&self, dir: &Path) -> std::io::Result<()> {
        let scratch = self.scratch_dir(dir);
        let scratch_removed = match std::fs::remove_dir_all(&scratch) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e),
            _ => Ok(()),
        };
        std::fs::remove_dir_all(dir).and(scratch_removed)
    }

    pub fn job_dir(&self, id: &JobId) -> PathBuf {
        // JobId's alphabet has no '/'; the prefix keeps ids like ".." ordinary names.
        self.path.join(format!("j-{id}"))
    }

    /// Claim the job's dir: creating it is atomic, so two concurrent starts cannot both win.
    pub fn claim(&self, id: &JobId) -> std::io::Result<Claim> {
        let dir = self.job_dir(id);
        match std::fs::DirBuilder::new().mode(0o700).create(&dir) {
            Ok(()) if self.isolated => {
                // Traversable, so the sidecar reaches `sidecar/`; its own files stay 0600.
                std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o711))?;
                Ok(Claim::Claimed(dir))
            }
            Ok(()) => Ok(Claim::Claimed(dir)),
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Ok(Claim::Exists),
            Err(e) => Err(std::io::Error::new(e.kind(), format!("cannot create {}: {e}", dir.display()))),
        }
    }

    /// Every job dir with its meta, for recovery.
    pub fn scan(&self) -> Result<Vec<(PathBuf, MetaState)>, StateError> {
        let entries = std::fs::read_dir(&self.path).map_err(|e| StateError(format!("{}: {e}", self.path.display())))?;
        let mut out = Vec::new();
        for entry in entries.flatten() {
            let dir = entry.path();
            if !dir.is_dir() {
                continue;
            }
            out.push((dir.clone(), meta_state(&dir)));
        }
        Ok(out)
    }

    /// The job dirs present now, by runtime type. The runtime type comes from `known`
    /// (asked once, after the listing) when it names the job, else from its `meta.json`,
    /// so a poll tick with many supervised jobs costs one `read_dir`, not one file read
    /// per job. A dir without meta is being claimed right now and is left out: the
    /// dispatcher counts it as a hand-off in progress.
    pub fn in_flight(
        &self,
        known: impl FnOnce() -> BTreeMap<JobId, String>,
    ) -> Result<BTreeMap<String, Vec<JobId>>, StateError> {
        let entries = std::fs::read_dir(&self.path).map_err(|e| StateError(format!("{}: {e}", self.path.display())))?;
        let known = known();
        let mut out: BTreeMap<String, Vec<JobId>> = BTreeMap::new();
        for entry in entries.flatten() {
            let name = entry.file_name();
            let Some(id) = name.to_str().and_then(|n| n.strip_prefix("j-")).and_then(|n| JobId::new(n).ok()) else {
                continue;
            };
            let runtime = match known.get(&id) {
                Some(rt) => Some(rt.clone()),
                None => read_meta(&entry.path()).map(|m| m.job.runtime_type),
            };
            if let Some(rt) = runtime {
                out.entry(rt).or_default().push(id);
            }
        }
        Ok(out)
    }
}

fn read_meta(dir: &Path) -> Option<Meta> {
    std::fs::read(dir.join(META_FILE)).ok().and_then(|b| serde_json::from_slice::<Meta>(&b).ok())
}

/// What recovery finds in a job dir's `meta.json`.
#[derive(Debug)]
pub(super) enum MetaState {
    Present(Box<Meta>),
    /// No `meta.json`: claimed, and the hand-off died before writing it (so before any
    /// process started).
    Missing,
    /// There but unreadable (`meta.json` is only ever replaced atomically, so this is
    /// damage from outside): the job may have run; its processes are unknown.
    Corrupt(String),
}

fn meta_state(dir: &Path) -> MetaState {
    match std::fs::read(dir.join(META_FILE)) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => MetaState::Missing,
        Err(e) => MetaState::Corrupt(format!("cannot read {META_FILE}: {e}")),
        Ok(bytes) => match serde_json::from_slice::<Meta>(&bytes) {
            Ok(meta) => MetaState::Present(Box::new(meta)),
            Err(e) => MetaState::Corrupt(format!("{META_FILE} is not a job record: {e}")),
        },
    }
}

/// The job id a job dir is named after (`j-<id>`).
pub(super) fn job_id_of(dir: &Path) -> Option<JobId> {
    dir.file_name()?.to_str()?.strip_prefix("j-").and_then(|n| JobId::new(n).ok())
}

/// A result the job's sidecar spooled (`sidecar/spool/<id>.json`), and when it was
/// spooled (the file's mtime: the sidecar writes it before the runtime hears
/// "accepted", so this is when the runtime reported).
#[derive(Clone, Debug)]
pub(super) struct Spooled {
    pub result: common::JobResult,
    pub at: std::time::SystemTime,
}

/// The result the sidecar of the job in `dir` spooled and has not delivered yet, if any.
/// Only a result for this job counts; temp files (an interrupted write) are not results.
pub(super) fn spooled_result(dir: &Path, id: &JobId) -> Option<Spooled> {
    #[derive(Deserialize)]
    struct Record {
        result: common::JobResult,
    }
    let path = dir.join(SIDECAR_DIR).join(SPOOL_DIR).join(format!("{id}.json"));
    let bytes = std::fs::read(&path).ok()?;
    let at = std::fs::metadata(&path).and_then(|m| m.modified()).ok()?;
    let record: Record = serde_json::from_slice(&bytes).ok()?;
    (record.result.job_id == *id).then_some(Spooled { result: record.result, at })
}

/// Record (or update) the job dir's meta.
pub(super) fn write_meta(dir: &Path, meta: &Meta) -> std::io::Result<()> {
    write_private(&dir.join(META_FILE), &serde_json::to_vec(meta).expect("meta serializes"))
}

/// Who owns the dirs a job's processes write: its sidecar's and its runtime's UIDs
/// (gid = uid); `None` keeps the job manager's.
#[derive(Clone, Copy, Debug)]
pub(super) struct Owners {
    pub sidecar: u32,
    pub runtime: u32,
}

/// The sidecar's dir with the hand-off files it reads (`job.json`, `token`) and its
/// `spool/`, and the runtime's scratch dir, each owned by the process that uses it.
pub(super) fn write_handoff(
    dir: &Path,
    scratch: &Path,
    job: &Job,
    token: &str,
    owners: Option<Owners>,
) -> Result<(), (&'static str, std::io::Error)> {
    let private_dir = |path: &Path, owner: Option<u32>| -> std::io::Result<()> {
        std::fs::DirBuilder::new().mode(0o700).create(path)?;
        owner.map_or(Ok(()), |uid| std::os::unix::fs::chown(path, Some(uid), Some(uid)))
    };
    let sidecar_dir = dir.join(SIDECAR_DIR);
    let sidecar_uid = owners.map(|o| o.sidecar);
    private_dir(&sidecar_dir, sidecar_uid).map_err(|e| ("create sidecar dir", e))?;
    // Read once, by the sidecar started right after; recovery reads only `meta.json`. So
    // these are replaced atomically but not fsynced: after an OS crash the sidecar that
    // would read them is gone too, and the fsyncs would sit on every job start.
    let handoff_file = |path: PathBuf, bytes: &[u8]| {
        common::fs::replace_atomic(&path, bytes, 0o600)?;
        sidecar_uid.map_or(Ok(()), |uid| std::os::unix::fs::chown(&path, Some(uid), Some(uid)))
    };
    handoff_file(sidecar_dir.join(runtime_api::JOB_FILE), &serde_json::to_vec(job).expect("job serializes"))
        .map_err(|e| ("write job file", e))?;
    handoff_file(sidecar_dir.join(runtime_api::TOKEN_FILE), token.as_bytes()).map_err(|e| ("write token", e))?;
    private_dir(&sidecar_dir.join(SPOOL_DIR), sidecar_uid).map_err(|e| ("create spool dir", e))?;
    // A scratch dir left by a job manager that died before removing it starts over.
    let _ = std::fs::remove_dir_all(scratch);
    private_dir(scratch, owners.map(|o| o.runtime)).map_err(|e| ("create scratch dir", e))?;
    Ok(())
}

/// Owner-only, and replaced atomically so a reader (or a restart) never sees half a file.
fn write_private(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    common::fs::write_atomic(path, bytes, 0o600)
}
