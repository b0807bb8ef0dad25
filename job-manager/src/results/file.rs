//! A durable [`ResultStore`] in a directory, for the local executor: an append-only
//! journal of results and deliveries, written by one thread with group commit.
//!
//! Why a journal and not one file per result: durability costs an fsync, and per-result
//! files need two per result (the file, then its directory entry), which capped ingestion
//! near 5k results/s. Here every `record` and `mark_delivered` is a request to a single
//! writer thread; it takes every request queued while its previous fsync ran, decides them
//! in order against the in-memory index (first writer wins; an identical repeat is a
//! duplicate, a different one a conflict), appends them as one write and makes them
//! durable with one `fdatasync`, and only then updates the index and answers. So a
//! `record` that returned `Accepted` survives SIGKILL or power loss, and batches grow by
//! themselves with load. One writer also removes the old store's race (see the tests):
//! deciding and delivering are ordered by the same thread, so a delivery of our own
//! result can never make it look like someone else's.
//!
//! Reads (`pending`, `lookup`, repeats of a durable result) are answered from the index
//! without the writer or the disk. The index holds every result the journal holds, so
//! memory grows with the results kept (pending plus delivered ones until pruned).
//!
//! Recovery (at `open`): frames are replayed up to the first torn or corrupt one; the
//! rest was a batch cut short before its fsync (so never acknowledged). It is copied
//! aside to `journal.torn-<unix ms>` for inspection and cut off, so new appends follow
//! intact frames. Compaction (`prune_delivered`) writes the live results to a temp file,
//! fsyncs it and renames it over the journal, then fsyncs the directory
//! ([`common::fs::write_atomic`]), so a crash leaves either the old or the new journal
//! whole; the temp file of a compaction cut short is removed at the next `open`.
//!
//! Results left in the old per-file layout (`pending/`, `delivered/`) are imported once
//! at `open` (see `legacy`), so an upgrade loses nothing.
//!
//! One process owns the directory (an exclusive lock on `lock`): a second job manager on
//! the same state dir gets a clear error instead of interleaved appends.
mod journal;
mod legacy;

use super::store::{Recorded, ResultStore, StoreError};
use common::{JobId, JobResult};
use journal::{Entry, Index};
use std::collections::{HashMap, HashSet};
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::sync::{Arc, RwLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use tokio::sync::oneshot;

const JOURNAL: &str = "journal";
/// Where compactions wrote before they used `write_atomic`; a leftover is removed at open.
const COMPACTING: &str = "journal.next";
const LOCK: &str = "lock";
/// Requests decided and committed together at most; bounds one write's size and latency.
const MAX_BATCH: usize = 4096;

#[derive(Clone)]
pub struct FileResultStore {
    shared: Arc<Shared>,
}

impl std::fmt::Debug for FileResultStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FileResultStore").field("dir", &self.shared.dir).finish()
    }
}

struct Shared {
    dir: PathBuf,
    index: Arc<RwLock<Index>>,
    requests: Option<mpsc::Sender<Request>>,
    writer: Option<std::thread::JoinHandle<()>>,
}

impl Drop for Shared {
    // Closing the channel stops the writer once it has answered what is queued; joining it
    // releases the journal and its lock before the store is reported gone, so a reopen in
    // the same process (a test, a restart in place) finds the directory free.
    fn drop(&mut self) {
        self.requests.take();
        if let Some(writer) = self.writer.take() {
            let _ = writer.join();
        }
    }
}

enum Request {
    Record { result: JobResult, reply: oneshot::Sender<Result<Recorded, StoreError>> },
    Deliver { job_id: JobId, reply: oneshot::Sender<Result<(), StoreError>> },
    Prune { older_than: Duration, reply: mpsc::Sender<Result<usize, StoreError>> },
}

impl FileResultStore {
    /// Open (creating) the store in `dir`, recovering the journal left by a previous run.
    pub fn open(dir: impl AsRef<Path>) -> Result<Self, StoreError> {
        let dir = dir.as_ref().to_path_buf();
        std::fs::create_dir_all(&dir).map_err(|e| unavailable(&dir, e))?;
        let lock_path = dir.join(LOCK);
        let lock = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&lock_path)
            .map_err(|e| unavailable(&lock_path, e))?;
        lock.try_lock().map_err(|e| {
            StoreError::Unavailable(format!("{} is in use by another job manager process: {e}", dir.display()))
        })?;
        // A compaction cut short: the journal it was replacing is still whole.
        let _ = std::fs::remove_file(dir.join(COMPACTING));
        let _ = common::fs::remove_stale_temps(&dir.join(JOURNAL));
        let (file, mut index, len) = recover(&dir)?;
        let mut journal = Journal { dir: dir.clone(), file, len, broken: None, _lock: lock };
        let imported = legacy::import(&dir, &mut journal, &mut index)?;
        if imported > 0 {
            tracing::info!(dir = %dir.display(), results = imported, "imported results of the old per-file store");
        }
        let index = Arc::new(RwLock::new(index));
        let (requests, rx) = mpsc::channel();
        let writer_index = index.clone();
        let writer = std::thread::Builder::new()
            .name("result-journal".into())
            .spawn(move || journal.run(rx, &writer_index))
            .map_err(|e| StoreError::Unavailable(format!("cannot start the result journal writer: {e}")))?;
        Ok(Self { shared: Arc::new(Shared { dir, index, requests: Some(requests), writer: Some(writer) }) })
    }

    /// Forget results delivered at least `age` ago and compact the journal to what is
    /// left. Pending results are never pruned. Delivered ones are kept a while only so a
    /// late re-delivery of a finished job is recognised; the broker holds the result
    /// itself. Returns how many were removed. Blocks until done (call it off the runtime).
    pub fn prune_delivered(&self, age: Duration) -> Result<usize, StoreError> {
        let (reply, rx) = mpsc::channel();
        self.send(Request::Prune { older_than: age, reply })?;
        rx.recv().map_err(|_| writer_gone())?
    }

    fn send(&self, request: Request) -> Result<(), StoreError> {
        let requests = self.shared.requests.as_ref().ok_or_else(writer_gone)?;
        requests.send(request).map_err(|_| writer_gone())
    }

    fn index(&self) -> std::sync::RwLockReadGuard<'_, Index> {
        self.shared.index.read().expect("result index lock")
    }
}

impl ResultStore for FileResultStore {
    async fn record(&self, result: &JobResult) -> Result<Recorded, StoreError> {
        // A repeat of a durable result is answered from the index, without a journal write.
        let known = self.index().get(&result.job_id).map(|s| compare(&s.result, result));
        if let Some(recorded) = known {
            return Ok(recorded);
        }
        let (reply, answer) = oneshot::channel();
        self.send(Request::Record { result: result.clone(), reply })?;
        answer.await.map_err(|_| writer_gone())?
    }

    async fn pending(&self) -> Result<Vec<JobResult>, StoreError> {
        Ok(self.index().pending())
    }

    async fn mark_delivered(&self, id: &JobId) -> Result<(), StoreError> {
        match self.index().get(id) {
            None => return Err(StoreError::UnknownJob(id.clone())),
            Some(s) if s.delivered_at_ms.is_some() => return Ok(()),
            Some(_) => {}
        }
        let (reply, answer) = oneshot::channel();
        self.send(Request::Deliver { job_id: id.clone(), reply })?;
        answer.await.map_err(|_| writer_gone())?
    }

    async fn lookup(&self, id: &JobId) -> Result<Option<JobResult>, StoreError> {
        Ok(self.index().get(id).map(|s| s.result.clone()))
    }
}

fn compare(existing: &JobResult, new: &JobResult) -> Recorded {
    if existing.same_as(new) {
        Recorded::Duplicate
    } else {
        Recorded::Conflict
    }
}

/// Read the journal, cut off a torn tail (saved aside), and open it for appending.
fn recover(dir: &Path) -> Result<(File, Index, u64), StoreError> {
    let path = dir.join(JOURNAL);
    let bytes = match std::fs::read(&path) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Vec::new(),
        Err(e) => return Err(unavailable(&path, e)),
    };
    let existed = path.exists();
    let replay = journal::replay(&bytes);
    let file = OpenOptions::new().create(true).append(true).open(&path).map_err(|e| unavailable(&path, e))?;
    if replay.valid_len < bytes.len() {
        let torn = dir.join(format!("journal.torn-{}", now_ms()));
        std::fs::write(&torn, &bytes[replay.valid_len..]).map_err(|e| unavailable(&torn, e))?;
        file.set_len(replay.valid_len as u64).and_then(|()| file.sync_all()).map_err(|e| unavailable(&path, e))?;
        tracing::warn!(
            journal = %path.display(),
            kept_bytes = replay.valid_len,
            dropped_bytes = bytes.len() - replay.valid_len,
            saved_to = %torn.display(),
            "result journal had a torn or corrupt tail (a batch never acknowledged); cut it off"
        );
    }
    if !existed {
        sync_dir(dir)?;
    }
    let len = replay.valid_len as u64;
    let index = Index::from_entries(replay.entries);
    tracing::info!(journal = %path.display(), results = index.len(), pending = index.pending_count(), "result journal recovered");
    Ok((file, index, len))
}

/// The writer thread's state: the journal file it alone appends to.
struct Journal {
    dir: PathBuf,
    file: File,
    /// Bytes known durable; a failed batch is cut back to this.
    len: u64,
    /// Set after a failed write or fsync: what reached the disk is then uncertain, so
    /// every later request fails until a restart replays the journal.
    broken: Option<String>,
    _lock: File,
}

/// One request's answer, sent only after the batch is durable.
enum Answer {
    Record(oneshot::Sender<Result<Recorded, StoreError>>, Recorded),
    Deliver(oneshot::Sender<Result<(), StoreError>>, Result<(), JobId>),
}

impl Journal {
    fn run(mut self, requests: mpsc::Receiver<Request>, index: &RwLock<Index>) {
        while let Ok(first) = requests.recv() {
            let mut batch = vec![first];
            while batch.len() < MAX_BATCH {
                match requests.try_recv() {
                    Ok(r) => batch.push(r),
                    Err(_) => break,
                }
            }
            self.commit(batch, index);
        }
    }

    /// Decide, write, fsync once, apply to the index, then answer.
    fn commit(&mut self, batch: Vec<Request>, index: &RwLock<Index>) {
        let mut buf = Vec::new();
        let mut entries = Vec::new();
        let mut answers = Vec::new();
        let mut prunes = Vec::new();
        // Results accepted / deliveries made earlier in this batch, not yet in the index.
        let mut staged: HashMap<JobId, JobResult> = HashMap::new();
        let mut staged_delivered: HashSet<JobId> = HashSet::new();
        {
            let index = index.read().expect("result index lock");
            for request in batch {
                match request {
                    Request::Record { result, reply } => {
                        let existing =
                            staged.get(&result.job_id).or_else(|| index.get(&result.job_id).map(|s| &s.result));
                        if let Some(existing) = existing {
                            answers.push(Answer::Record(reply, compare(existing, &result)));
                            continue;
                        }
                        let entry = Entry::Recorded { result };
                        if let Err(e) = journal::encode(&entry, &mut buf) {
                            let _ = reply.send(Err(StoreError::Unavailable(e.to_string())));
                            continue;
                        }
                        let Entry::Recorded { result } = &entry else { unreachable!() };
                        staged.insert(result.job_id.clone(), result.clone());
                        entries.push(entry);
                        answers.push(Answer::Record(reply, Recorded::Accepted));
                    }
                    Request::Deliver { job_id, reply } => {
                        let delivered = staged_delivered.contains(&job_id)
                            || index.get(&job_id).is_some_and(|s| s.delivered_at_ms.is_some());
                        let known = staged.contains_key(&job_id) || index.get(&job_id).is_some();
                        if !known {
                            answers.push(Answer::Deliver(reply, Err(job_id)));
                            continue;
                        }
                        if !delivered {
                            let entry = Entry::Delivered { job_id: job_id.clone(), at_ms: now_ms() };
                            journal::encode(&entry, &mut buf).expect("a delivery marker is small");
                            entries.push(entry);
                            staged_delivered.insert(job_id);
                        }
                        answers.push(Answer::Deliver(reply, Ok(())));
                    }
                    Request::Prune { older_than, reply } => prunes.push((older_than, reply)),
                }
            }
        }
        let written = match &self.broken {
            Some(why) => Err(why.clone()),
            None if buf.is_empty() => Ok(()),
            None => self.append(&buf),
        };
        match written {
            Ok(()) => {
                let mut index = index.write().expect("result index lock");
                for entry in entries {
                    index.apply(entry);
                }
                drop(index);
                for answer in answers {
                    match answer {
                        Answer::Record(reply, recorded) => {
                            let _ = reply.send(Ok(recorded));
                        }
                        Answer::Deliver(reply, outcome) => {
                            let _ = reply.send(outcome.map_err(StoreError::UnknownJob));
                        }
                    }
                }
            }
            Err(why) => {
                // Nothing of this batch is known durable, and a repeat answered against a
                // result staged in it would be wrong too: the whole batch fails (retryable).
                for answer in answers {
                    let err = StoreError::Unavailable(why.clone());
                    match answer {
                        Answer::Record(reply, _) => drop(reply.send(Err(err))),
                        Answer::Deliver(reply, _) => drop(reply.send(Err(err))),
                    }
                }
            }
        }
        for (older_than, reply) in prunes {
            let _ = reply.send(self.prune(older_than, index));
        }
    }

    fn append(&mut self, buf: &[u8]) -> Result<(), String> {
        let path = self.dir.join(JOURNAL);
        match self.file.write_all(buf).and_then(|()| self.file.sync_data()) {
            Ok(()) => {
                self.len += buf.len() as u64;
                Ok(())
            }
            Err(e) => {
                let why = format!("cannot write the result journal {}: {e}", path.display());
                tracing::error!(error = %why, "result store unavailable until restart");
                // Best effort only: after a failed fsync the page cache is not trusted.
                let _ = self.file.set_len(self.len);
                self.broken = Some(why.clone());
                Err(why)
            }
        }
    }

    /// Forget old delivered results, then rewrite the journal to the live results.
    fn prune(&mut self, older_than: Duration, index: &RwLock<Index>) -> Result<usize, StoreError> {
        if let Some(why) = &self.broken {
            return Err(StoreError::Unavailable(why.clone()));
        }
        let cutoff = now_ms().saturating_sub(u64::try_from(older_than.as_millis()).unwrap_or(u64::MAX));
        let mut index = index.write().expect("result index lock");
        let removed = index.forget_delivered_before(cutoff);
        let mut buf = Vec::new();
        for entry in index.snapshot() {
            journal::encode(&entry, &mut buf).expect("entries were encodable when first written");
        }
        drop(index);
        let path = self.dir.join(JOURNAL);
        // Mode as `File::create`'s; the umask applies.
        if let Err(e) = common::fs::write_atomic(&path, &buf, 0o666) {
            // Failed before the rename: the old journal stands and our handle on it is
            // good. After it (only the directory fsync failed) the handle is stale.
            if !is_same_file(&self.file, &path) {
                let why = format!("cannot reopen the compacted result journal {}: {e}", path.display());
                self.broken = Some(why.clone());
                return Err(StoreError::Unavailable(why));
            }
            return Err(unavailable(&path, e));
        }
        // From here the journal is the new file: our handle must follow it.
        let reopened = OpenOptions::new().append(true).open(&path);
        match reopened {
            Ok(f) => {
                self.file = f;
                self.len = buf.len() as u64;
                Ok(removed)
            }
            Err(e) => {
                let why = format!("cannot reopen the compacted result journal {}: {e}", path.display());
                self.broken = Some(why.clone());
                Err(StoreError::Unavailable(why))
            }
        }
    }
}

fn now_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0)
}

fn writer_gone() -> StoreError {
    StoreError::Unavailable("the result journal writer stopped".into())
}

fn unavailable(path: &Path, e: std::io::Error) -> StoreError {
    StoreError::Unavailable(format!("{}: {e}", path.display()))
}

/// Whether `path` names the file `file` has open (the same inode on the same device).
fn is_same_file(file: &File, path: &Path) -> bool {
    use std::os::unix::fs::MetadataExt;
    match (file.metadata(), std::fs::metadata(path)) {
        (Ok(a), Ok(b)) => a.dev() == b.dev() && a.ino() == b.ino(),
        _ => false,
    }
}

fn sync_dir(dir: &Path) -> Result<(), StoreError> {
    File::open(dir).and_then(|d| d.sync_all()).map_err(|e| unavailable(dir, e))
}

#[cfg(test)]
mod tests;
