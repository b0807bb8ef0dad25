//! Job tokens of jobs dispatched through the ingress (persistent workloads), kept until
//! the job's result is accepted. In memory and, with a spool directory, as one file per
//! job beside the spooled results: the spool is an emptyDir, which outlives a restart of
//! the sidecar container, so a restarted sidecar still accepts the results of the jobs
//! its runtime took before (they used to get 404 and end as timeouts). Files are written
//! atomically (temp + rename, mode 0600) and not fsynced: an emptyDir does not survive
//! the node either.
use common::JobId;
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

const SUBDIR: &str = "ingress-tokens";
const SUFFIX: &str = ".token";

#[derive(Default)]
pub struct IngressTokens {
    map: Mutex<HashMap<JobId, String>>,
    dir: Option<PathBuf>,
}

impl IngressTokens {
    /// Tokens kept under `spool_dir` (if any), with those a previous run left loaded.
    pub fn new(spool_dir: Option<&Path>) -> Self {
        let dir = spool_dir.map(|d| d.join(SUBDIR));
        let mut map = HashMap::new();
        if let Some(d) = dir.as_deref() {
            let _ = common::fs::remove_temps_in(d);
        }
        if let Some(entries) = dir.as_deref().and_then(|d| std::fs::read_dir(d).ok()) {
            for entry in entries.flatten() {
                let name = entry.file_name().to_string_lossy().into_owned();
                let Some(id) = name.strip_suffix(SUFFIX).and_then(|s| JobId::new(s).ok()) else {
                    continue;
                };
                match std::fs::read_to_string(entry.path()) {
                    Ok(t) if !t.trim().is_empty() => {
                        map.insert(id, t.trim().to_string());
                    }
                    _ => tracing::warn!(file = %entry.path().display(), "unreadable ingress token file; ignored"),
                }
            }
            if !map.is_empty() {
                tracing::info!(jobs = map.len(), "ingress tokens of jobs dispatched before a restart restored");
            }
        }
        Self { map: Mutex::new(map), dir }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<JobId, String>> {
        self.map.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn get(&self, id: &JobId) -> Option<String> {
        self.lock().get(id).cloned()
    }

    /// Keep `token` for `id`; returns the token it replaced (see [`Self::restore`]).
    /// Returns once the token is in memory and on disk, so a caller that awaits it before
    /// handing the job over orders every later [`Self::remove`] after this write.
    pub async fn keep(&self, id: &JobId, token: &str) -> Option<String> {
        let previous = self.lock().insert(id.clone(), token.to_string());
        self.persist(id, Some(token.to_string())).await;
        previous
    }

    /// Undo a [`Self::keep`]: put back what it replaced, or forget the job.
    pub async fn restore(&self, id: &JobId, previous: Option<String>) {
        match previous {
            Some(p) => {
                self.lock().insert(id.clone(), p.clone());
                self.persist(id, Some(p)).await;
            }
            None => self.remove(id).await,
        }
    }

    /// The job's result was accepted: its token is spent.
    pub async fn remove(&self, id: &JobId) {
        self.lock().remove(id);
        self.persist(id, None).await;
    }

    /// Mirrors memory on disk, off the async workers (file system calls block).
    async fn persist(&self, id: &JobId, token: Option<String>) {
        let Some(dir) = self.dir.clone() else { return };
        let path = dir.join(format!("{id}{SUFFIX}"));
        let result = tokio::task::spawn_blocking({
            let path = path.clone();
            move || match token {
                None => match std::fs::remove_file(&path) {
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
                    other => other,
                },
                Some(t) => write_private(&dir, &path, &t),
            }
        })
        .await
        .unwrap_or_else(|e| Err(std::io::Error::other(e)));
        if let Err(e) = result {
            // Memory still holds it: only a restart before the result would lose it.
            tracing::warn!(file = %path.display(), error = %e, "cannot persist an ingress token");
        }
    }
}

/// Not fsynced (see the module doc): [`common::fs::replace_atomic`], not `write_atomic`,
/// also because this runs before every dispatch reaches the runtime.
fn write_private(dir: &Path, path: &Path, token: &str) -> std::io::Result<()> {
    use std::os::unix::fs::DirBuilderExt;
    std::fs::DirBuilder::new().recursive(true).mode(0o700).create(dir)?;
    common::fs::replace_atomic(path, token.as_bytes(), 0o600)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn id(s: &str) -> JobId {
        JobId::new(s).unwrap()
    }

    #[tokio::test]
    async fn tokens_survive_a_restart_and_spent_ones_do_not() {
        let tmp = tempfile::tempdir().unwrap();
        let spool = tmp.path().join("spool");
        let a = IngressTokens::new(Some(&spool));
        assert_eq!(a.keep(&id("j1"), "t1").await, None);
        a.keep(&id("j2"), "t2").await;
        a.keep(&id("j3"), "t3").await;
        a.remove(&id("j2")).await;
        // A refused re-dispatch of j3 puts the first token back.
        let prev = a.keep(&id("j3"), "t3-bis").await;
        a.restore(&id("j3"), prev).await;
        let file = spool.join(SUBDIR).join("j1.token");
        assert_eq!(std::fs::metadata(&file).unwrap().permissions().mode() & 0o777, 0o600);
        std::fs::write(spool.join(SUBDIR).join("not a job!.token"), "x").unwrap();

        let b = IngressTokens::new(Some(&spool));
        assert_eq!(b.get(&id("j1")).as_deref(), Some("t1"));
        assert_eq!(b.get(&id("j2")), None, "spent");
        assert_eq!(b.get(&id("j3")).as_deref(), Some("t3"));
        assert_eq!(b.lock().len(), 2);
    }

    #[tokio::test]
    async fn without_a_spool_memory_only() {
        let t = IngressTokens::new(None);
        t.keep(&id("j"), "t").await;
        assert_eq!(t.get(&id("j")).as_deref(), Some("t"));
        t.remove(&id("j")).await;
        assert_eq!(t.get(&id("j")), None);
    }
}
