//! The on-disk layout of the local executor's state dir, and nothing that runs a process.
//!
//! `<state_dir>/jobs/j-<job id>/` (mode 0700) holds one running job: `meta.json` (job,
//! deadline, pids), the hand-off files `job.json` and `token`, the sidecar's `ready.json`,
//! `spool/`, the runtime's `scratch/`, and both processes' output. A job dir exists exactly
//! while its job runs, so the listing is the durable truth the executor derives in-flight
//! jobs from, and what it adopts after a restart.
//!
//! Everything here is blocking file I/O: async callers run it in `spawn_blocking`.
use super::process::ProcessId;
use crate::backend::StateError;
use common::runtime_api;
use common::{Job, JobId};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};

const META_FILE: &str = "meta.json";
pub(super) const READY_FILE: &str = "ready.json";
pub(super) const SPOOL_DIR: &str = "spool";
pub(super) const SCRATCH_DIR: &str = "scratch";

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
}

/// `<state_dir>/jobs`: one dir per running job.
#[derive(Clone, Debug)]
pub(super) struct JobsDir {
    path: PathBuf,
}

/// How claiming a job dir went.
pub(super) enum Claim {
    /// The dir is ours, created empty.
    Claimed(PathBuf),
    /// A dir for this job exists already: it runs (or is being handed off) here.
    Exists,
}

impl JobsDir {
    /// Create (if need be) `<state_dir>/jobs`, mode 0700.
    pub fn create(state_dir: &Path) -> Result<Self, StateError> {
        let path = state_dir.join("jobs");
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&path)
            .map_err(|e| StateError(format!("cannot create {}: {e}", path.display())))?;
        Ok(Self { path })
    }

    pub fn job_dir(&self, id: &JobId) -> PathBuf {
        // JobId's alphabet has no '/'; the prefix keeps ids like ".." ordinary names.
        self.path.join(format!("j-{id}"))
    }

    /// Claim the job's dir: creating it is atomic, so two concurrent starts cannot both win.
    pub fn claim(&self, id: &JobId) -> std::io::Result<Claim> {
        let dir = self.job_dir(id);
        match std::fs::DirBuilder::new().mode(0o700).create(&dir) {
            Ok(()) => Ok(Claim::Claimed(dir)),
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Ok(Claim::Exists),
            Err(e) => Err(std::io::Error::new(e.kind(), format!("cannot create {}: {e}", dir.display()))),
        }
    }

    /// Every job dir with its meta (`None` when missing or unreadable: a claim whose
    /// hand-off never wrote it), for recovery.
    pub fn scan(&self) -> Result<Vec<(PathBuf, Option<Meta>)>, StateError> {
        let entries = std::fs::read_dir(&self.path).map_err(|e| StateError(format!("{}: {e}", self.path.display())))?;
        let mut out = Vec::new();
        for entry in entries.flatten() {
            let dir = entry.path();
            if !dir.is_dir() {
                continue;
            }
            out.push((dir.clone(), read_meta(&dir)));
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

/// Record (or update) the job dir's meta.
pub(super) fn write_meta(dir: &Path, meta: &Meta) -> std::io::Result<()> {
    write_private(&dir.join(META_FILE), &serde_json::to_vec(meta).expect("meta serializes"))
}

/// The hand-off files the sidecar reads (`job.json`, `token`) and the dirs it and the
/// runtime work in.
pub(super) fn write_handoff(dir: &Path, job: &Job, token: &str) -> Result<(), (&'static str, std::io::Error)> {
    // Read once, by the sidecar started right after; recovery reads only `meta.json`. So
    // these are replaced atomically but not fsynced: after an OS crash the sidecar that
    // would read them is gone too, and the fsyncs would sit on every job start.
    let handoff_file = |path: PathBuf, bytes: &[u8]| common::fs::replace_atomic(&path, bytes, 0o600);
    handoff_file(dir.join(runtime_api::JOB_FILE), &serde_json::to_vec(job).expect("job serializes"))
        .map_err(|e| ("write job file", e))?;
    handoff_file(dir.join(runtime_api::TOKEN_FILE), token.as_bytes()).map_err(|e| ("write token", e))?;
    for d in [SPOOL_DIR, SCRATCH_DIR] {
        std::fs::DirBuilder::new().mode(0o700).create(dir.join(d)).map_err(|e| ("create dir", e))?;
    }
    Ok(())
}

/// Owner-only, and replaced atomically so a reader (or a restart) never sees half a file.
fn write_private(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    common::fs::write_atomic(path, bytes, 0o600)
}
