use super::*;
use crate::metrics::Metrics;
use crate::results::ResultIntake;
use common::Outcome;
use prometheus_client::registry::Registry;

fn id(s: &str) -> JobId {
    JobId::new(s).unwrap()
}

fn result(job: &str, msg: &str) -> JobResult {
    JobResult::new(id(job), Outcome::Failed, msg)
}

/// A small reserve: the default's 16 MiB per test would only cost time and disk here.
fn open(dir: &Path) -> Result<FileResultStore, StoreError> {
    FileResultStore::open_with(dir, StoreSettings { reserve_bytes: 64 << 10, ..StoreSettings::default() })
}

/// The side files recovery left in `dir` whose names start with `prefix`, sorted.
fn side_files(dir: &Path, prefix: &str) -> Vec<String> {
    let mut names: Vec<_> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with(prefix))
        .collect();
    names.sort();
    names
}

fn journal_len(dir: &Path) -> u64 {
    std::fs::metadata(dir.join(JOURNAL)).unwrap().len()
}

#[tokio::test]
async fn first_wins_duplicate_conflict_and_survives_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path()).unwrap();
    let j1 = id("j1");
    let r = JobResult::new(j1.clone(), Outcome::Succeeded, "ok");
    assert_eq!(store.record(&r).await.unwrap(), Recorded::Accepted);
    assert_eq!(store.record(&r).await.unwrap(), Recorded::Duplicate);
    let other = JobResult::new(j1.clone(), Outcome::Failed, "no");
    assert_eq!(store.record(&other).await.unwrap(), Recorded::Conflict);
    drop(store);
    // A fresh handle (a restarted process) sees the same state.
    let reopened = open(dir.path()).unwrap();
    assert_eq!(reopened.pending().await.unwrap(), vec![r.clone()]);
    reopened.mark_delivered(&j1).await.unwrap();
    reopened.mark_delivered(&j1).await.unwrap(); // idempotent
    assert!(reopened.pending().await.unwrap().is_empty());
    assert_eq!(reopened.lookup(&j1).await.unwrap(), Some(r.clone()));
    // Still first-wins after delivery, and after another reopen.
    assert_eq!(reopened.record(&other).await.unwrap(), Recorded::Conflict);
    assert!(matches!(reopened.mark_delivered(&id("nope")).await, Err(StoreError::UnknownJob(_))));
    drop(reopened);
    let again = open(dir.path()).unwrap();
    assert!(again.pending().await.unwrap().is_empty(), "the delivery was durable too");
    assert_eq!(again.record(&r).await.unwrap(), Recorded::Duplicate);
}

#[tokio::test]
async fn a_second_process_cannot_open_the_same_directory() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path()).unwrap();
    let err = open(dir.path()).unwrap_err().to_string();
    assert!(err.contains("in use by another job manager process"), "{err}");
    drop(store);
    open(dir.path()).expect("free again once the first handle is gone");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_batch_is_durable_across_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path()).unwrap();
    let tasks: Vec<_> = (0..500)
        .map(|i| {
            let s = store.clone();
            tokio::spawn(async move { s.record(&result(&format!("j{i:03}"), &format!("m{i}"))).await.unwrap() })
        })
        .collect();
    for t in tasks {
        assert_eq!(t.await.unwrap(), Recorded::Accepted);
    }
    drop(store);
    let reopened = open(dir.path()).unwrap();
    let pending = reopened.pending().await.unwrap();
    let expected: Vec<_> = (0..500).map(|i| result(&format!("j{i:03}"), &format!("m{i}"))).collect();
    assert_eq!(pending, expected, "every accepted result, in job-id order");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_records_for_one_job_have_exactly_one_winner() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path()).unwrap();
    let tasks: Vec<_> = (0..32)
        .map(|i| {
            let s = store.clone();
            // Writers 0..16 send the same result, 16..32 each a different one.
            let msg = if i < 16 { "same".to_string() } else { format!("writer {i}") };
            tokio::spawn(async move { (msg.clone(), s.record(&result("race", &msg)).await.unwrap()) })
        })
        .collect();
    let mut outcomes = Vec::new();
    for t in tasks {
        outcomes.push(t.await.unwrap());
    }
    let winners: Vec<_> = outcomes.iter().filter(|(_, r)| *r == Recorded::Accepted).collect();
    assert_eq!(winners.len(), 1, "{outcomes:?}");
    let winner = &winners[0].0;
    for (msg, recorded) in &outcomes {
        let expected = if msg == winner {
            [Recorded::Accepted, Recorded::Duplicate]
        } else {
            [Recorded::Conflict, Recorded::Conflict]
        };
        assert!(expected.contains(recorded), "{msg}: {recorded:?} (winner {winner})");
    }
    assert_eq!(store.pending().await.unwrap(), vec![result("race", winner)]);
}

/// The old store's bug: its "delivered between our check and our link?" re-check also
/// fired when the delivery loop had just delivered *our own* result, answering a first
/// result as a repeat (200 instead of 202, outcome counter not incremented). Here a
/// delivery loop stand-in delivers every result the moment it is visible while results
/// are recorded; every first result must still be Accepted and counted.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_result_delivered_right_after_it_is_recorded_is_still_accepted() {
    let dir = tempfile::tempdir().unwrap();
    let metrics = Arc::new(Metrics::new());
    let intake = ResultIntake::new(open(dir.path()).unwrap(), metrics.clone());
    let n = 300;
    let deliverer = {
        let intake = intake.clone();
        tokio::spawn(async move {
            let mut delivered = 0;
            while delivered < n {
                for r in intake.store().pending().await.unwrap() {
                    intake.store().mark_delivered(&r.job_id).await.unwrap();
                    delivered += 1;
                }
                tokio::task::yield_now().await;
            }
            delivered
        })
    };
    let recorders: Vec<_> = (0..n)
        .map(|i| {
            let intake = intake.clone();
            tokio::spawn(async move { intake.record(&result(&format!("r{i}"), "done")).await.unwrap() })
        })
        .collect();
    for r in recorders {
        assert_eq!(r.await.unwrap(), Recorded::Accepted);
    }
    let delivered = tokio::time::timeout(Duration::from_secs(30), deliverer).await.expect("all delivered").unwrap();
    assert_eq!(delivered, n, "each result delivered exactly once");
    assert!(metrics.encode().contains(&format!("job_manager_job_results_total{{outcome=\"failed\"}} {n}")));
    // Each repeat after delivery is still a duplicate, never a second acceptance.
    assert_eq!(intake.record(&result("r0", "done")).await.unwrap(), Recorded::Duplicate);
}

#[tokio::test]
async fn torn_tail_is_cut_off_and_saved_and_appends_continue_after_it() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path()).unwrap();
    for job in ["a", "b", "c"] {
        store.record(&result(job, "x")).await.unwrap();
    }
    drop(store);
    let intact = journal_len(dir.path());
    // A batch cut short: a header promising 100 bytes, then only 10 of them.
    let mut f = OpenOptions::new().append(true).open(dir.path().join(JOURNAL)).unwrap();
    f.write_all(&100u32.to_le_bytes()).unwrap();
    f.write_all(&[0xAB; 14]).unwrap();
    drop(f);

    let store = open(dir.path()).unwrap();
    assert_eq!(journal_len(dir.path()), intact, "the torn tail is cut off");
    let saved: Vec<_> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with("journal.torn-"))
        .collect();
    assert_eq!(saved.len(), 1, "the torn bytes are kept aside: {saved:?}");
    assert_eq!(std::fs::metadata(dir.path().join(&saved[0])).unwrap().len(), 18);
    assert_eq!(store.pending().await.unwrap().len(), 3);
    assert_eq!(store.record(&result("d", "x")).await.unwrap(), Recorded::Accepted);
    drop(store);
    let store = open(dir.path()).unwrap();
    assert_eq!(store.pending().await.unwrap().len(), 4, "the append after recovery is readable");
}

#[tokio::test]
async fn corrupt_last_frame_is_dropped_and_earlier_results_kept() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path()).unwrap();
    store.record(&result("a", "x")).await.unwrap();
    store.record(&result("b", "y")).await.unwrap();
    drop(store);
    let path = dir.path().join(JOURNAL);
    let mut bytes = std::fs::read(&path).unwrap();
    let last = bytes.len() - 3;
    bytes[last] ^= 0x01; // a bit flip inside the last frame's payload
    std::fs::write(&path, &bytes).unwrap();
    let store = open(dir.path()).unwrap();
    assert_eq!(store.pending().await.unwrap(), vec![result("a", "x")]);
    assert_eq!(store.record(&result("b", "y2")).await.unwrap(), Recorded::Accepted, "b was never durable");
}

#[tokio::test]
async fn compaction_keeps_undelivered_and_recent_results_and_shrinks_the_journal() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path()).unwrap();
    for i in 0..50 {
        store.record(&result(&format!("d{i:02}"), &"delivered ".repeat(10))).await.unwrap();
    }
    for job in ["p1", "p2"] {
        store.record(&result(job, "pending")).await.unwrap();
    }
    for i in 0..50 {
        store.mark_delivered(&id(&format!("d{i:02}"))).await.unwrap();
    }
    let before = journal_len(dir.path());
    assert_eq!(store.prune_delivered(Duration::from_secs(3600)).unwrap(), 0, "too recent to forget");
    assert!(journal_len(dir.path()) < before, "delivery markers folded into their results");
    assert_eq!(store.lookup(&id("d00")).await.unwrap(), Some(result("d00", &"delivered ".repeat(10))));
    assert_eq!(store.prune_delivered(Duration::ZERO).unwrap(), 50);
    assert_eq!(store.lookup(&id("d00")).await.unwrap(), None);
    let expected = vec![result("p1", "pending"), result("p2", "pending")];
    assert_eq!(store.pending().await.unwrap(), expected, "pending results are never pruned");
    // Appends after a compaction go to the new journal.
    assert_eq!(store.record(&result("p3", "late")).await.unwrap(), Recorded::Accepted);
    drop(store);
    let reopened = open(dir.path()).unwrap();
    let pending = reopened.pending().await.unwrap();
    assert_eq!(pending.len(), 3);
    assert_eq!(pending[2], result("p3", "late"));
    assert_eq!(reopened.lookup(&id("d01")).await.unwrap(), None);
    assert!(!dir.path().join(COMPACTING).exists());
}

#[tokio::test]
async fn a_compaction_cut_short_leaves_the_old_journal_in_charge() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path()).unwrap();
    store.record(&result("a", "x")).await.unwrap();
    drop(store);
    std::fs::write(dir.path().join(COMPACTING), b"half a compaction").unwrap();
    let store = open(dir.path()).unwrap();
    assert_eq!(store.pending().await.unwrap(), vec![result("a", "x")]);
    assert!(!dir.path().join(COMPACTING).exists());
}

#[tokio::test]
async fn the_temp_file_of_a_compaction_cut_short_is_removed_at_open() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path()).unwrap();
    store.record(&result("a", "x")).await.unwrap();
    drop(store);
    // What `common::fs::write_atomic` leaves when a crash stops it before the rename.
    let stale = dir.path().join(".journal.1-0.tmp");
    std::fs::write(&stale, b"half a compaction").unwrap();
    let store = open(dir.path()).unwrap();
    assert_eq!(store.pending().await.unwrap(), vec![result("a", "x")]);
    assert!(!stale.exists());
}

/// The incident: one flipped byte in frame 3 of 30 cut the journal to its first two
/// frames and moved 27 fsynced ones aside unread, blamed on "a torn tail".
#[tokio::test]
async fn a_flipped_byte_in_a_middle_frame_costs_that_frame_only_and_is_quarantined() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path()).unwrap();
    for i in 0..30 {
        store.record(&result(&format!("j{i:02}"), "x")).await.unwrap();
    }
    drop(store);
    let path = dir.path().join(JOURNAL);
    let mut bytes = std::fs::read(&path).unwrap();
    let frames = journal::replay(&bytes).frames;
    assert_eq!(frames.len(), 30, "one frame per record");
    let third = frames[2].clone();
    bytes[third.start + journal::FRAME_HEADER + 4] ^= 0x01;
    std::fs::write(&path, &bytes).unwrap();

    let store = open(dir.path()).unwrap();
    let pending: Vec<String> = store.pending().await.unwrap().iter().map(|r| r.job_id.to_string()).collect();
    let expected: Vec<String> = (0..30).filter(|&i| i != 2).map(|i| format!("j{i:02}")).collect();
    assert_eq!(pending, expected, "every intact frame, before and after the damage");
    let quarantined = side_files(dir.path(), "journal.quarantine-");
    assert_eq!(quarantined.len(), 1, "{quarantined:?}");
    assert!(quarantined[0].ends_with(&format!("-at-{}", third.start)), "{quarantined:?}");
    assert_eq!(std::fs::read(dir.path().join(&quarantined[0])).unwrap(), bytes[third.clone()], "only the bad bytes");
    assert!(side_files(dir.path(), "journal.torn-").is_empty(), "not a torn tail");
    assert_eq!(journal_len(dir.path()), (bytes.len() - third.len()) as u64, "the journal is rewritten without them");
    // The lost job is free again; new appends follow the rewritten journal.
    assert_eq!(store.record(&result("j02", "again")).await.unwrap(), Recorded::Accepted);
    drop(store);
    let store = open(dir.path()).unwrap();
    assert_eq!(store.pending().await.unwrap().len(), 30);
    assert_eq!(side_files(dir.path(), "journal.quarantine-").len(), 1, "nothing more to quarantine");
}

#[tokio::test]
async fn garbage_in_the_middle_of_the_journal_is_quarantined_and_the_frames_around_it_kept() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path()).unwrap();
    for job in ["a", "b", "c", "d"] {
        store.record(&result(job, "x")).await.unwrap();
    }
    drop(store);
    let path = dir.path().join(JOURNAL);
    let bytes = std::fs::read(&path).unwrap();
    let at = journal::replay(&bytes).frames[2].start;
    let mut damaged = bytes[..at].to_vec();
    damaged.extend_from_slice(&[0u8; 512]); // a zeroed block, as after a crash
    damaged.extend_from_slice(&bytes[at..]);
    std::fs::write(&path, &damaged).unwrap();
    let store = open(dir.path()).unwrap();
    assert_eq!(store.pending().await.unwrap().len(), 4);
    assert_eq!(side_files(dir.path(), "journal.quarantine-").len(), 1);
    assert_eq!(journal_len(dir.path()), bytes.len() as u64);
}

#[test]
fn recovery_is_described_as_what_it_was() {
    let entries: Vec<Entry> = (0..4).map(|i| Entry::Recorded { result: result(&format!("j{i}"), "x") }).collect();
    let mut bytes = Vec::new();
    let mut starts = Vec::new();
    for e in &entries {
        starts.push(bytes.len());
        journal::encode(e, &mut bytes).unwrap();
    }
    assert_eq!(describe_recovery(&journal::replay(&bytes)), None);
    let frame = starts[2] - starts[1];

    let mut middle = bytes.clone();
    middle[starts[1] + journal::FRAME_HEADER] ^= 1;
    assert_eq!(
        describe_recovery(&journal::replay(&middle)).unwrap(),
        format!(
            "3 frames recovered, {frame} bytes quarantined at offsets {}..{} (damaged after they were written: \
             results in those bytes are lost)",
            starts[1], starts[2]
        )
    );

    let torn = &bytes[..bytes.len() - 5];
    assert_eq!(
        describe_recovery(&journal::replay(torn)).unwrap(),
        format!(
            "3 frames recovered; torn tail of {} bytes at offset {} cut off (a write cut short: never acknowledged)",
            bytes.len() - 5 - starts[3],
            starts[3]
        )
    );
}

/// A readiness as the app wires it, for the store under test.
fn readiness_of(store: &FileResultStore) -> Arc<crate::readiness::Readiness> {
    let readiness = crate::readiness::Readiness::new();
    let store = store.clone();
    readiness.add_check(Box::new(move || store.health()));
    readiness
}

fn metric(registry: &Registry, name: &str) -> String {
    let mut out = String::new();
    prometheus_client::encoding::text::encode(&mut out, registry).unwrap();
    out.lines().find(|l| l.starts_with(name)).unwrap_or_else(|| panic!("no {name} in\n{out}")).to_string()
}

/// A small tmpfs mounted for one test, unmounted (with what is in it) when dropped.
struct SmallDisk {
    dir: tempfile::TempDir,
}

impl SmallDisk {
    /// `None` (with the reason printed) when this process may not mount.
    fn mount(size: &str) -> Option<Self> {
        if !nix::unistd::geteuid().is_root() {
            eprintln!("skipped: mounting a small tmpfs needs root");
            return None;
        }
        let dir = tempfile::tempdir().unwrap();
        let status = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(dir.path())
            .status()
            .expect("run mount");
        assert!(status.success(), "mount a tmpfs on {}", dir.path().display());
        Some(Self { dir })
    }

    fn path(&self) -> &Path {
        self.dir.path()
    }

    /// Write a filler file until the disk is full.
    fn fill(&self) -> PathBuf {
        let path = self.path().join("filler");
        let mut f = File::create(&path).unwrap();
        let chunk = [0xA5u8; 4096];
        loop {
            if let Err(e) = f.write_all(&chunk) {
                assert!(is_out_of_space(&e), "{e}");
                break;
            }
        }
        path
    }
}

impl Drop for SmallDisk {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount").arg(self.dir.path()).status();
    }
}

fn quick(reserve_bytes: u64) -> StoreSettings {
    StoreSettings { reserve_bytes, probe_every: Duration::from_millis(50) }
}

async fn eventually(what: &str, mut check: impl FnMut() -> bool) {
    for _ in 0..200 {
        if check() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    panic!("timed out waiting until {what}");
}

/// The incident: the state dir's disk full for ten seconds left the store "unavailable
/// until restart". Now records fail retryably while it is full, readiness and metrics say
/// why, and the store heals by itself once space is back.
#[tokio::test]
async fn a_full_disk_fails_records_retryably_and_the_store_heals_without_restart() {
    let Some(disk) = SmallDisk::mount("1m") else { return };
    let store = FileResultStore::open_with(disk.path(), quick(0)).unwrap();
    let readiness = readiness_of(&store);
    let mut registry = Registry::default();
    store.register_metrics(&mut registry);
    assert_eq!(store.record(&result("before", "x")).await.unwrap(), Recorded::Accepted);
    let filler = disk.fill();

    // The journal's last page may still take a few frames; then a write must fail.
    let mut accepted = vec!["before".to_string()];
    let mut refused = Vec::new();
    for i in 0..200 {
        let job = format!("full{i:03}");
        match store.record(&result(&job, &"y".repeat(100))).await {
            Ok(Recorded::Accepted) => accepted.push(job),
            Ok(other) => panic!("{job}: {other:?}"),
            Err(StoreError::Unavailable(why)) => {
                assert!(why.contains("No space left on device") && why.contains("retry later"), "{why}");
                refused.push(job);
                if refused.len() == 3 {
                    break;
                }
            }
            Err(e) => panic!("{job}: {e}"),
        }
    }
    assert_eq!(refused.len(), 3, "writes failed on the full disk");
    let reason = readiness.check().unwrap_err();
    assert!(
        reason.starts_with("result store: cannot write the journal") && reason.contains("No space left on device"),
        "{reason}"
    );
    assert_eq!(metric(&registry, "result_store_healthy"), "result_store_healthy 0");
    assert_eq!(metric(&registry, "result_store_write_errors_total"), "result_store_write_errors_total 3");
    for job in &refused {
        assert!(store.lookup(&id(job)).await.unwrap().is_none(), "{job} was not acknowledged, nor kept");
    }

    std::fs::remove_file(filler).unwrap();
    // Healed by the probe alone, before any write is retried.
    eventually("the store is ready again", || readiness.check().is_ok()).await;
    assert_eq!(metric(&registry, "result_store_healthy"), "result_store_healthy 1");
    for job in &refused {
        assert_eq!(store.record(&result(job, &"y".repeat(100))).await.unwrap(), Recorded::Accepted, "{job}");
    }
    drop((store, readiness));
    // Nothing half-written was left between the frames: a clean replay of everything.
    let store = FileResultStore::open_with(disk.path(), quick(0)).unwrap();
    let pending = store.pending().await.unwrap().len();
    assert_eq!(pending, accepted.len() + refused.len());
    assert!(side_files(disk.path(), "journal.").iter().all(|n| n == "journal"), "{:?}", side_files(disk.path(), ""));
}

/// Something else fills the disk: the journal's reserve is given back and results in
/// flight are still made durable; readiness says so; the reserve returns with the space.
#[tokio::test]
async fn the_reserve_lets_results_land_on_a_full_disk_and_is_regrown_when_space_returns() {
    let Some(disk) = SmallDisk::mount("1m") else { return };
    let reserve = 256 << 10;
    let store = FileResultStore::open_with(disk.path(), quick(reserve)).unwrap();
    let readiness = readiness_of(&store);
    let mut registry = Registry::default();
    store.register_metrics(&mut registry);
    assert_eq!(metric(&registry, "result_store_reserve_bytes"), format!("result_store_reserve_bytes {reserve}"));
    let filler = disk.fill();

    for i in 0..100 {
        let r = result(&format!("late{i:03}"), &"z".repeat(100));
        assert_eq!(store.record(&r).await.unwrap(), Recorded::Accepted, "result {i} lands in the reserve's space");
    }
    let reason = readiness.check().unwrap_err();
    assert_eq!(
        reason,
        format!(
            "result store: disk full: the journal's reserve of {reserve} bytes was released so results can still \
             be written; free space on {}",
            disk.path().display()
        )
    );
    assert_eq!(metric(&registry, "result_store_reserve_bytes"), "result_store_reserve_bytes 0");
    assert_eq!(metric(&registry, "result_store_healthy"), "result_store_healthy 1", "no write failed");

    std::fs::remove_file(filler).unwrap();
    eventually("the reserve is back", || readiness.check().is_ok()).await;
    assert_eq!(metric(&registry, "result_store_reserve_bytes"), format!("result_store_reserve_bytes {reserve}"));
    drop((store, readiness));
    let store = FileResultStore::open_with(disk.path(), quick(reserve)).unwrap();
    assert_eq!(store.pending().await.unwrap().len(), 100);
}

/// The writer's own view of a failed write, with the failure injected: a journal handle
/// that refuses writes. The batch fails, the store says why; once the handle works again
/// (reopened by path, as after a compaction) the bytes a failed write left past the last
/// durable one are cut off before the next append, so no half frame sits between frames.
#[test]
fn a_failed_append_is_cut_back_to_the_last_durable_byte_before_the_next_one() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join(JOURNAL);
    let mut first = Vec::new();
    journal::encode(&Entry::Recorded { result: result("a", "x") }, &mut first).unwrap();
    std::fs::write(&path, &first).unwrap();
    let health = Arc::new(Health::default());
    let mut journal = Journal {
        dir: dir.path().to_path_buf(),
        file: File::open(&path).unwrap(), // read-only: every write fails
        len: first.len() as u64,
        failure: None,
        stale_handle: false,
        reserve: Reserve::open(dir.path().join(RESERVE), 0).0,
        health: health.clone(),
        probe_every: Duration::from_millis(10),
        _lock: File::open(dir.path()).unwrap(),
    };
    let mut second = Vec::new();
    journal::encode(&Entry::Recorded { result: result("b", "y") }, &mut second).unwrap();
    let why = journal.append(&second).unwrap_err();
    assert_eq!(why, format!("cannot write the journal {}: Bad file descriptor (os error 9)", path.display()));
    assert_eq!(health.check(), Err(format!("result store: {why}")));
    assert_eq!((health.healthy.get(), health.write_errors.get()), (0, 1));

    // What a write cut short by ENOSPC leaves: part of a frame past the durable end.
    OpenOptions::new().append(true).open(&path).unwrap().write_all(&second[..5]).unwrap();
    journal.stale_handle = true; // the disk is back: reopen by path at the next attempt
    journal.append(&second).unwrap();
    assert_eq!(health.check(), Ok(()));
    assert_eq!(health.healthy.get(), 1);
    let bytes = std::fs::read(&path).unwrap();
    assert_eq!(bytes, [first, second].concat(), "the half frame was cut off first");
    assert_eq!(journal::replay(&bytes).torn_tail, None);
}
