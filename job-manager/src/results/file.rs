//! A durable [`ResultStore`] in a directory, for the local executor: one JSON file per
//! result under `pending/`, moved to `delivered/` once the broker took it.
//!
//! Durability: each result is written to a temp file and fsynced, then *hard-linked* to
//! its final name. `link` fails if the name exists, which makes "first writer wins"
//! atomic even across processes sharing the directory; the directory is fsynced after,
//! so a SIGKILL (or power loss) after `record` returned never loses the result.
use super::store::{Recorded, ResultStore, StoreError};
use common::{JobId, JobResult};
use std::io::Write;
use std::path::{Path, PathBuf};

#[derive(Clone, Debug)]
pub struct FileResultStore {
    pending: PathBuf,
    delivered: PathBuf,
}

impl FileResultStore {
    /// Open (creating) the store in `dir`.
    pub fn open(dir: impl AsRef<Path>) -> Result<Self, StoreError> {
        let dir = dir.as_ref();
        let pending = dir.join("pending");
        let delivered = dir.join("delivered");
        for d in [&pending, &delivered] {
            std::fs::create_dir_all(d).map_err(|e| unavailable(d, e))?;
        }
        Ok(Self { pending, delivered })
    }

    fn file_name(id: &JobId) -> String {
        // JobId's alphabet is path-safe (no '/', no leading-dot tricks beyond '.', '..'
        // which JobId allows: prefix to keep them ordinary names).
        format!("r-{id}.json")
    }

    fn read(path: &Path) -> Result<Option<JobResult>, StoreError> {
        match std::fs::read(path) {
            Ok(bytes) => serde_json::from_slice(&bytes)
                .map(Some)
                .map_err(|e| StoreError::Unavailable(format!("{} is corrupt: {e}", path.display()))),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(unavailable(path, e)),
        }
    }

    fn existing(&self, id: &JobId) -> Result<Option<JobResult>, StoreError> {
        let name = Self::file_name(id);
        if let Some(r) = Self::read(&self.pending.join(&name))? {
            return Ok(Some(r));
        }
        Self::read(&self.delivered.join(&name))
    }

    fn record_blocking(&self, result: &JobResult) -> Result<Recorded, StoreError> {
        let compare =
            |existing: JobResult| if existing.same_as(result) { Recorded::Duplicate } else { Recorded::Conflict };
        if let Some(existing) = self.existing(&result.job_id)? {
            return Ok(compare(existing));
        }
        let name = Self::file_name(&result.job_id);
        let final_path = self.pending.join(&name);
        let tmp = self.pending.join(format!(".tmp-{}-{name}", rand::random::<u64>()));
        let bytes = serde_json::to_vec(result).expect("result serializes");
        let write = || -> std::io::Result<()> {
            let mut f = std::fs::File::create(&tmp)?;
            f.write_all(&bytes)?;
            f.sync_all()
        };
        write().map_err(|e| unavailable(&tmp, e))?;
        let linked = std::fs::hard_link(&tmp, &final_path);
        let _ = std::fs::remove_file(&tmp);
        match linked {
            Ok(()) => {
                sync_dir(&self.pending)?;
                // Delivered (moved out of pending/) between our check and our link? Then
                // ours is a second result: withdraw it.
                if let Some(delivered) = Self::read(&self.delivered.join(&name))? {
                    let _ = std::fs::remove_file(&final_path);
                    return Ok(compare(delivered));
                }
                Ok(Recorded::Accepted)
            }
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                let existing = self.existing(&result.job_id)?.ok_or_else(|| {
                    StoreError::Unavailable(format!("{} vanished while recording", final_path.display()))
                })?;
                Ok(compare(existing))
            }
            Err(e) => Err(unavailable(&final_path, e)),
        }
    }

    fn pending_blocking(&self) -> Result<Vec<JobResult>, StoreError> {
        let mut out = Vec::new();
        let entries = std::fs::read_dir(&self.pending).map_err(|e| unavailable(&self.pending, e))?;
        for entry in entries {
            let entry = entry.map_err(|e| unavailable(&self.pending, e))?;
            let name = entry.file_name();
            let name = name.to_string_lossy();
            if name.starts_with(".tmp-") {
                continue;
            }
            if let Some(r) = Self::read(&entry.path())? {
                out.push(r);
            }
        }
        out.sort_by(|a, b| a.job_id.cmp(&b.job_id));
        Ok(out)
    }

    fn mark_delivered_blocking(&self, id: &JobId) -> Result<(), StoreError> {
        let name = Self::file_name(id);
        let from = self.pending.join(&name);
        let to = self.delivered.join(&name);
        match std::fs::rename(&from, &to) {
            Ok(()) => {
                sync_dir(&self.delivered)?;
                sync_dir(&self.pending)
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                if to.exists() {
                    Ok(())
                } else {
                    Err(StoreError::UnknownJob(id.clone()))
                }
            }
            Err(e) => Err(unavailable(&from, e)),
        }
    }
}

impl FileResultStore {
    /// Remove delivered results older than `age` (by file time). Pending results are never
    /// pruned. Delivered ones are kept a while only so a late re-delivery of a finished
    /// job is recognised; the broker holds the result itself. Returns how many were removed.
    pub fn prune_delivered(&self, age: std::time::Duration) -> Result<usize, StoreError> {
        let cutoff = std::time::SystemTime::now().checked_sub(age).unwrap_or(std::time::UNIX_EPOCH);
        let mut removed = 0;
        let entries = std::fs::read_dir(&self.delivered).map_err(|e| unavailable(&self.delivered, e))?;
        for entry in entries.flatten() {
            let old = entry.metadata().and_then(|m| m.modified()).is_ok_and(|t| t < cutoff);
            if old && std::fs::remove_file(entry.path()).is_ok() {
                removed += 1;
            }
        }
        Ok(removed)
    }
}

fn unavailable(path: &Path, e: std::io::Error) -> StoreError {
    StoreError::Unavailable(format!("{}: {e}", path.display()))
}

fn sync_dir(dir: &Path) -> Result<(), StoreError> {
    std::fs::File::open(dir).and_then(|d| d.sync_all()).map_err(|e| unavailable(dir, e))
}

// Files are small and local; the blocking calls run on the blocking pool so a slow disk
// never stalls the runtime's workers.
impl ResultStore for FileResultStore {
    async fn record(&self, result: &JobResult) -> Result<Recorded, StoreError> {
        let (me, result) = (self.clone(), result.clone());
        blocking(move || me.record_blocking(&result)).await
    }
    async fn pending(&self) -> Result<Vec<JobResult>, StoreError> {
        let me = self.clone();
        blocking(move || me.pending_blocking()).await
    }
    async fn mark_delivered(&self, id: &JobId) -> Result<(), StoreError> {
        let (me, id) = (self.clone(), id.clone());
        blocking(move || me.mark_delivered_blocking(&id)).await
    }
    async fn lookup(&self, id: &JobId) -> Result<Option<JobResult>, StoreError> {
        let (me, id) = (self.clone(), id.clone());
        blocking(move || me.existing(&id)).await
    }
}

async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, StoreError> + Send + 'static,
) -> Result<T, StoreError> {
    tokio::task::spawn_blocking(f).await.map_err(|e| StoreError::Unavailable(format!("store task failed: {e}")))?
}

#[cfg(test)]
mod tests {
    use super::*;
    use common::Outcome;

    fn tmpdir() -> PathBuf {
        let d = std::env::temp_dir().join(format!("jm-store-{}-{}", std::process::id(), rand::random::<u64>()));
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    #[tokio::test]
    async fn first_wins_duplicate_conflict_and_survives_reopen() {
        let dir = tmpdir();
        let store = FileResultStore::open(&dir).unwrap();
        let id = JobId::new("j1").unwrap();
        let r = JobResult::new(id.clone(), Outcome::Succeeded, "ok");
        assert_eq!(store.record(&r).await.unwrap(), Recorded::Accepted);
        assert_eq!(store.record(&r).await.unwrap(), Recorded::Duplicate);
        let other = JobResult::new(id.clone(), Outcome::Failed, "no");
        assert_eq!(store.record(&other).await.unwrap(), Recorded::Conflict);
        // A fresh handle (a restarted process) sees the same state.
        let reopened = FileResultStore::open(&dir).unwrap();
        assert_eq!(reopened.pending().await.unwrap(), vec![r.clone()]);
        reopened.mark_delivered(&id).await.unwrap();
        assert!(reopened.pending().await.unwrap().is_empty());
        assert_eq!(reopened.lookup(&id).await.unwrap(), Some(r.clone()));
        // Still first-wins after delivery.
        assert_eq!(reopened.record(&other).await.unwrap(), Recorded::Conflict);
        assert!(matches!(reopened.mark_delivered(&JobId::new("nope").unwrap()).await, Err(StoreError::UnknownJob(_))));
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[tokio::test]
    async fn prune_removes_only_old_delivered_results() {
        let dir = tmpdir();
        let store = FileResultStore::open(&dir).unwrap();
        for id in ["a", "b"] {
            store.record(&JobResult::new(JobId::new(id).unwrap(), Outcome::Failed, "")).await.unwrap();
        }
        store.mark_delivered(&JobId::new("a").unwrap()).await.unwrap();
        assert_eq!(store.prune_delivered(std::time::Duration::from_secs(3600)).unwrap(), 0, "too recent");
        assert_eq!(store.prune_delivered(std::time::Duration::ZERO).unwrap(), 1);
        assert_eq!(store.lookup(&JobId::new("a").unwrap()).await.unwrap(), None);
        assert_eq!(store.pending().await.unwrap().len(), 1, "pending results are never pruned");
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[tokio::test]
    async fn concurrent_records_one_winner() {
        let dir = tmpdir();
        let store = FileResultStore::open(&dir).unwrap();
        let id = JobId::new("race").unwrap();
        let mut tasks = Vec::new();
        for i in 0..16 {
            let (s, id) = (store.clone(), id.clone());
            tasks.push(tokio::spawn(async move {
                s.record(&JobResult::new(id, Outcome::Failed, format!("writer {i}"))).await.unwrap()
            }));
        }
        let mut accepted = 0;
        for t in tasks {
            if t.await.unwrap() == Recorded::Accepted {
                accepted += 1;
            }
        }
        assert_eq!(accepted, 1);
        assert_eq!(store.pending().await.unwrap().len(), 1);
        std::fs::remove_dir_all(dir).unwrap();
    }
}
