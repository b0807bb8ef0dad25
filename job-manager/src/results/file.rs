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
//! Recovery (at `open`): every intact frame is replayed. Frames carry their length and a
//! CRC, so after a bad frame the reader resynchronises on the next intact one (see
//! `journal::replay`): damage in the middle costs the damaged bytes only. Those are
//! copied to `journal.quarantine-<unix ms>-at-<offset>` and the journal is rewritten
//! without them; bad bytes after the last intact frame are a torn tail (a batch cut short
//! before its fsync, so never acknowledged), copied to `journal.torn-<unix ms>` and cut
//! off. The log says which it was. Compaction (`prune_delivered`) writes the live results
//! to a temp file, fsyncs it and renames it over the journal, then fsyncs the directory
//! ([`common::fs::write_atomic`]), so a crash leaves either the old or the new journal
//! whole; the temp file of a compaction cut short is removed at the next `open`.
//!
//! Write failures (a full disk, an I/O error) fail the batch (retryable: nothing of it
//! was acknowledged) and mark the store unhealthy, with the reason, for `/readyz` and
//! `job_manager_result_store_healthy`. The store heals itself: the next write, or a probe
//! every `probe_every` while unhealthy, cuts the journal back to its last durable byte
//! (dropping a frame half-written before the error) and tries again. When an append
//! fails for lack of space, the journal's reserve (`reserve`) is given back first and
//! the append retried, so results in flight still land while something else fills the
//! disk; the reserve is regrown once there is room.
//!
//! One process owns the directory (an exclusive lock on `lock`): a second job manager on
//! the same state dir gets a clear error instead of interleaved appends.
mod journal;
mod reserve;

use super::store::{Recorded, ResultStore, StoreError};
use common::{JobId, JobResult};
use journal::{Entry, Index, Replay};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use reserve::Reserve;
use std::collections::{HashMap, HashSet};
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};
use tokio::sync::oneshot;

const JOURNAL: &str = "journal";
/// Where compactions wrote before they used `write_atomic`; a leftover is removed at open.
const COMPACTING: &str = "journal.next";
const RESERVE: &str = "journal.reserve";
/// Written and removed to learn whether the disk takes writes again.
const PROBE: &str = "probe";
const LOCK: &str = "lock";
/// Requests decided and committed together at most; bounds one write's size and latency.
const MAX_BATCH: usize = 4096;
/// How often a healthy store refreshes its gauges (journal size, free space).
const HEALTHY_TICK: Duration = Duration::from_secs(10);

/// How a [`FileResultStore`] is set up; the default is what the local executor uses.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StoreSettings {
    /// Bytes preallocated in `journal.reserve` and released when the disk is full, so
    /// pending results can still be written (`local.resultReserveMb`). 0: no reserve.
    pub reserve_bytes: u64,
    /// How often an unhealthy store (or one whose reserve is short) tries to heal.
    pub probe_every: Duration,
}

/// 16 MiB: some 50,000 typical results, a few seconds of the journal's peak ingestion.
pub const DEFAULT_RESERVE_BYTES: u64 = 16 << 20;

impl Default for StoreSettings {
    fn default() -> Self {
        Self { reserve_bytes: DEFAULT_RESERVE_BYTES, probe_every: Duration::from_secs(1) }
    }
}

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
    health: Arc<Health>,
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

/// What readiness and metrics see of the writer's state. The writer sets it; anyone reads.
#[derive(Default)]
struct Health {
    /// Why the last write failed; cleared by the next write or probe that succeeds.
    write_failure: Mutex<Option<String>>,
    /// Why the reserve is smaller than configured (the disk was or is full).
    reserve_short: Mutex<Option<String>>,
    healthy: Gauge,
    write_errors: Counter,
    journal_bytes: Gauge,
    reserve_bytes: Gauge,
    fs_available_bytes: Gauge,
}

impl Health {
    fn check(&self) -> Result<(), String> {
        for problem in [&self.write_failure, &self.reserve_short] {
            if let Some(why) = &*problem.lock().expect("health lock") {
                return Err(format!("result store: {why}"));
            }
        }
        Ok(())
    }

    fn set_write_failure(&self, why: Option<String>) {
        self.healthy.set(i64::from(why.is_none()));
        *self.write_failure.lock().expect("health lock") = why;
    }

    fn set_reserve_short(&self, why: Option<String>) {
        *self.reserve_short.lock().expect("health lock") = why;
    }
}

enum Request {
    Record { result: JobResult, reply: oneshot::Sender<Result<Recorded, StoreError>> },
    Deliver { job_id: JobId, reply: oneshot::Sender<Result<(), StoreError>> },
    Prune { older_than: Duration, reply: mpsc::Sender<Result<usize, StoreError>> },
}

impl FileResultStore {
    /// Open (creating) the store in `dir` with the default settings.
    pub fn open(dir: impl AsRef<Path>) -> Result<Self, StoreError> {
        Self::open_with(dir, StoreSettings::default())
    }

    /// Open (creating) the store in `dir`, recovering the journal left by a previous run.
    pub fn open_with(dir: impl AsRef<Path>, settings: StoreSettings) -> Result<Self, StoreError> {
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
        let _ = std::fs::remove_file(dir.join(PROBE));
        let _ = common::fs::remove_stale_temps(&dir.join(JOURNAL));
        let (file, index, len) = recover(&dir)?;
        let health = Arc::new(Health::default());
        health.set_write_failure(None);
        let (reserve, allocated) = Reserve::open(dir.join(RESERVE), settings.reserve_bytes);
        let mut journal = Journal {
            dir: dir.clone(),
            file,
            len,
            failure: None,
            stale_handle: false,
            reserve,
            health: health.clone(),
            probe_every: settings.probe_every,
            _lock: lock,
        };
        if let Err(e) = allocated {
            journal.reserve_short(format!("cannot reserve {} bytes for the journal: {e}", settings.reserve_bytes));
        }
        journal.refresh_gauges();
        let index = Arc::new(RwLock::new(index));
        let (requests, rx) = mpsc::channel();
        let writer_index = index.clone();
        let writer = std::thread::Builder::new()
            .name("result-journal".into())
            .spawn(move || journal.run(rx, &writer_index))
            .map_err(|e| StoreError::Unavailable(format!("cannot start the result journal writer: {e}")))?;
        Ok(Self { shared: Arc::new(Shared { dir, index, health, requests: Some(requests), writer: Some(writer) }) })
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

    fn health(&self) -> Result<(), String> {
        self.shared.health.check()
    }

    fn register_metrics(&self, registry: &mut Registry) {
        let h = &self.shared.health;
        registry.register(
            "result_store_healthy",
            "1 while the result journal takes writes; 0 after a failed write until one succeeds again",
            h.healthy.clone(),
        );
        registry.register(
            "result_store_write_errors",
            "Failed result journal writes (each failed its batch, retryably)",
            h.write_errors.clone(),
        );
        registry.register("result_store_journal_bytes", "Size of the result journal", h.journal_bytes.clone());
        registry.register(
            "result_store_reserve_bytes",
            "Space held in reserve for the result journal (less than configured: the disk was full)",
            h.reserve_bytes.clone(),
        );
        registry.register(
            "result_store_fs_available_bytes",
            "Space available to the job manager on the state dir's filesystem",
            h.fs_available_bytes.clone(),
        );
    }
}

fn compare(existing: &JobResult, new: &JobResult) -> Recorded {
    if existing.same_as(new) {
        Recorded::Duplicate
    } else {
        Recorded::Conflict
    }
}

/// Read the journal, keep every intact frame, set aside what is not (corrupt bytes to
/// quarantine files, a torn tail to its own), and open the journal for appending.
fn recover(dir: &Path) -> Result<(File, Index, u64), StoreError> {
    let path = dir.join(JOURNAL);
    let bytes = match std::fs::read(&path) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Vec::new(),
        Err(e) => return Err(unavailable(&path, e)),
    };
    let existed = path.exists();
    let replay = journal::replay(&bytes);
    // Side files first, durably: the journal is cut only once its bad bytes are kept.
    let stamp = now_ms();
    let mut saved = Vec::new();
    for range in &replay.corrupt {
        saved.push((dir.join(format!("journal.quarantine-{stamp}-at-{}", range.start)), range.clone()));
    }
    if let Some(range) = &replay.torn_tail {
        saved.push((dir.join(format!("journal.torn-{stamp}")), range.clone()));
    }
    for (side, range) in &saved {
        common::fs::write_atomic(side, &bytes[range.clone()], 0o600).map_err(|e| unavailable(side, e))?;
    }
    let len = match replay.intact_prefix() {
        // Intact frames, then at most a torn tail: cut the tail off in place.
        Some(prefix) => {
            if prefix < bytes.len() {
                let file = OpenOptions::new().write(true).open(&path).map_err(|e| unavailable(&path, e))?;
                file.set_len(prefix as u64).and_then(|()| file.sync_all()).map_err(|e| unavailable(&path, e))?;
            }
            prefix
        }
        // Damage in the middle: rewrite the journal as its intact frames, byte for byte.
        None => {
            let kept: Vec<u8> = replay.frames.iter().flat_map(|f| &bytes[f.clone()]).copied().collect();
            common::fs::write_atomic(&path, &kept, 0o666).map_err(|e| unavailable(&path, e))?;
            kept.len()
        }
    };
    let file = OpenOptions::new().create(true).append(true).open(&path).map_err(|e| unavailable(&path, e))?;
    if !existed {
        sync_dir(dir)?;
    }
    if let Some(what) = describe_recovery(&replay) {
        let saved_to: Vec<String> = saved.iter().map(|(p, _)| p.display().to_string()).collect();
        tracing::warn!(journal = %path.display(), saved_to = %saved_to.join(", "), "result journal: {what}");
    }
    let index = Index::from_entries(replay.entries);
    tracing::info!(journal = %path.display(), results = index.len(), pending = index.pending_count(), "result journal recovered");
    Ok((file, index, len as u64))
}

/// What recovery found, in words for the log; `None` when every byte was an intact frame.
/// Damage between intact frames is corruption of fsynced data (results in it are lost);
/// only bad bytes after the last intact frame are a torn tail (never acknowledged).
fn describe_recovery(replay: &Replay) -> Option<String> {
    let mut parts = Vec::new();
    if !replay.corrupt.is_empty() {
        let bytes: usize = replay.corrupt.iter().map(|r| r.len()).sum();
        let at: Vec<String> = replay.corrupt.iter().map(|r| format!("{}..{}", r.start, r.end)).collect();
        parts.push(format!(
            "{} frames recovered, {bytes} bytes quarantined at offsets {} (damaged after they were written: \
             results in those bytes are lost)",
            replay.frames.len(),
            at.join(", ")
        ));
    }
    if let Some(tail) = &replay.torn_tail {
        if replay.corrupt.is_empty() {
            parts.push(format!("{} frames recovered", replay.frames.len()));
        }
        parts.push(format!(
            "torn tail of {} bytes at offset {} cut off (a write cut short: never acknowledged)",
            tail.len(),
            tail.start
        ));
    }
    (!parts.is_empty()).then(|| parts.join("; "))
}

/// The writer thread's state: the journal file it alone appends to.
struct Journal {
    dir: PathBuf,
    file: File,
    /// Bytes known durable; a failed batch is cut back to this.
    len: u64,
    /// Why the last write failed: the file may hold part of a batch past `len`, so the
    /// next write or probe first cuts it back (see `repair`).
    failure: Option<String>,
    /// A compaction renamed its file over the journal but failed after: `file` is the
    /// old inode and must be reopened by path before the next append.
    stale_handle: bool,
    reserve: Reserve,
    health: Arc<Health>,
    probe_every: Duration,
    _lock: File,
}

/// One request's answer, sent only after the batch is durable.
enum Answer {
    Record(oneshot::Sender<Result<Recorded, StoreError>>, Recorded),
    Deliver(oneshot::Sender<Result<(), StoreError>>, Result<(), JobId>),
}

impl Journal {
    fn run(mut self, requests: mpsc::Receiver<Request>, index: &RwLock<Index>) {
        let mut last_tick = Instant::now();
        loop {
            let first = match requests.recv_timeout(self.tick_every()) {
                Ok(r) => Some(r),
                Err(mpsc::RecvTimeoutError::Timeout) => None,
                Err(mpsc::RecvTimeoutError::Disconnected) => break,
            };
            if let Some(first) = first {
                let mut batch = vec![first];
                while batch.len() < MAX_BATCH {
                    match requests.try_recv() {
                        Ok(r) => batch.push(r),
                        Err(_) => break,
                    }
                }
                self.commit(batch, index);
            }
            // Also under steady load, which never lets `recv_timeout` time out.
            if last_tick.elapsed() >= self.tick_every() {
                self.tick();
                last_tick = Instant::now();
            }
        }
    }

    fn tick_every(&self) -> Duration {
        if self.failure.is_some() || self.reserve.is_short() {
            self.probe_every
        } else {
            HEALTHY_TICK
        }
    }

    /// Heal what can be healed without a request: regrow the reserve, and after a failed
    /// write, learn whether the disk takes writes again.
    fn tick(&mut self) {
        if self.reserve.is_short() {
            match self.reserve.restore() {
                Ok(()) => {
                    tracing::info!(reserve = %self.reserve.path().display(), bytes = self.reserve.held(), "result journal reserve restored");
                    self.health.set_reserve_short(None);
                }
                Err(e) => tracing::debug!(error = %e, "result journal reserve still cannot be restored"),
            }
        }
        if self.failure.is_some() {
            match self.repair().and_then(|()| self.probe()) {
                Ok(()) => self.healed(),
                Err(why) => tracing::debug!(error = %why, "result store still cannot write"),
            }
        }
        self.refresh_gauges();
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
        let written = if buf.is_empty() { Ok(()) } else { self.append(&buf) };
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
                    let err = StoreError::Unavailable(format!("{why} (nothing recorded; retry later)"));
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

    /// Append `buf` durably. Out of space, the reserve is given back and the append retried
    /// once; a failure marks the store unhealthy until a write or probe succeeds.
    fn append(&mut self, buf: &[u8]) -> Result<(), String> {
        if self.failure.is_some() {
            if let Err(why) = self.repair() {
                return Err(self.failed(why));
            }
        }
        let mut written = self.write(buf);
        if written.as_ref().is_err_and(is_out_of_space) {
            let released = self.reserve.release();
            if released > 0 {
                let why = format!(
                    "disk full: the journal's reserve of {released} bytes was released so results can still be \
                     written; free space on {}",
                    self.dir.display()
                );
                tracing::warn!(reserve = %self.reserve.path().display(), "result store: {why}");
                self.reserve_short(why);
                written = self.truncate_to_len().and_then(|()| self.write(buf));
            }
        }
        match written {
            Ok(()) => {
                self.len += buf.len() as u64;
                if self.failure.is_some() {
                    self.healed();
                }
                Ok(())
            }
            Err(e) => {
                // Best effort: a later write or probe cuts it back again before appending.
                let _ = self.file.set_len(self.len);
                Err(self.failed(format!("cannot write the journal {}: {e}", self.dir.join(JOURNAL).display())))
            }
        }
    }

    fn write(&mut self, buf: &[u8]) -> std::io::Result<()> {
        self.file.write_all(buf).and_then(|()| self.file.sync_data())
    }

    fn truncate_to_len(&mut self) -> std::io::Result<()> {
        self.file.set_len(self.len).and_then(|()| self.file.sync_all())
    }

    /// Make the journal end at its last durable byte again after a failed write: a frame
    /// half-written before the error must not precede the next batch. Bytes before `len`
    /// were made durable by earlier fsyncs, so they are trusted; nothing after is.
    fn repair(&mut self) -> Result<(), String> {
        let path = self.dir.join(JOURNAL);
        if self.stale_handle {
            self.file = OpenOptions::new()
                .append(true)
                .open(&path)
                .map_err(|e| format!("cannot reopen the result journal {}: {e}", path.display()))?;
            self.stale_handle = false;
        }
        self.truncate_to_len().map_err(|e| format!("cannot cut the journal {} back: {e}", path.display()))
    }

    /// Whether the disk takes a durable write again, without touching the journal.
    fn probe(&self) -> Result<(), String> {
        let path = self.dir.join(PROBE);
        let written = File::create(&path).and_then(|mut f| f.write_all(&[0; 4096]).and_then(|()| f.sync_data()));
        let _ = std::fs::remove_file(&path);
        written.map_err(|e| format!("cannot write {}: {e}", path.display()))
    }

    /// Record a failed write: counted, logged once per outage, said by readiness.
    fn failed(&mut self, why: String) -> String {
        self.health.write_errors.inc();
        if self.failure.is_none() {
            tracing::error!(error = %why, "result store cannot write; results are refused (retryably) until it can");
        }
        self.health.set_write_failure(Some(why.clone()));
        self.failure = Some(why.clone());
        why
    }

    fn healed(&mut self) {
        if let Some(why) = self.failure.take() {
            tracing::info!(was = %why, "result store writes again");
        }
        self.health.set_write_failure(None);
        self.refresh_gauges();
    }

    fn reserve_short(&mut self, why: String) {
        self.health.set_reserve_short(Some(why));
        self.refresh_gauges();
    }

    fn refresh_gauges(&self) {
        let h = &self.health;
        h.journal_bytes.set(i64::try_from(self.len).unwrap_or(i64::MAX));
        h.reserve_bytes.set(i64::try_from(self.reserve.held()).unwrap_or(i64::MAX));
        if let Ok(fs) = nix::sys::statvfs::fstatvfs(&self.file) {
            let available = fs.blocks_available().saturating_mul(fs.fragment_size());
            h.fs_available_bytes.set(i64::try_from(available).unwrap_or(i64::MAX));
        }
    }

    /// Forget old delivered results, then rewrite the journal to the live results. A
    /// rewrite also heals a store whose last append failed: the new journal is whole.
    fn prune(&mut self, older_than: Duration, index: &RwLock<Index>) -> Result<usize, StoreError> {
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
            // good. After it (only the directory fsync failed) the new journal is whole
            // but our handle is stale: reopen it before the next append.
            if !is_same_file(&self.file, &path) {
                self.len = buf.len() as u64;
                self.stale_handle = true;
                let why = format!("cannot reopen the compacted result journal {}: {e}", path.display());
                return Err(StoreError::Unavailable(self.failed(why)));
            }
            return Err(unavailable(&path, e));
        }
        // From here the journal is the new file: our handle must follow it.
        self.len = buf.len() as u64;
        self.stale_handle = true;
        match self.repair() {
            Ok(()) => {
                if self.failure.is_some() {
                    self.healed();
                }
                self.refresh_gauges();
                Ok(removed)
            }
            Err(why) => Err(StoreError::Unavailable(self.failed(why))),
        }
    }
}

fn now_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0)
}

/// ENOSPC, or the quota's EDQUOT: the errors a reserve given back can cure.
fn is_out_of_space(e: &std::io::Error) -> bool {
    use nix::errno::Errno;
    [Errno::ENOSPC, Errno::EDQUOT].iter().any(|&errno| e.raw_os_error() == Some(errno as i32))
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
