use super::*;
use crate::metrics::Metrics;
use crate::results::ResultIntake;
use common::Outcome;

fn id(s: &str) -> JobId {
    JobId::new(s).unwrap()
}

fn result(job: &str, msg: &str) -> JobResult {
    JobResult::new(id(job), Outcome::Failed, msg)
}

fn journal_len(dir: &Path) -> u64 {
    std::fs::metadata(dir.join(JOURNAL)).unwrap().len()
}

#[tokio::test]
async fn first_wins_duplicate_conflict_and_survives_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let store = FileResultStore::open(dir.path()).unwrap();
    let j1 = id("j1");
    let r = JobResult::new(j1.clone(), Outcome::Succeeded, "ok");
    assert_eq!(store.record(&r).await.unwrap(), Recorded::Accepted);
    assert_eq!(store.record(&r).await.unwrap(), Recorded::Duplicate);
    let other = JobResult::new(j1.clone(), Outcome::Failed, "no");
    assert_eq!(store.record(&other).await.unwrap(), Recorded::Conflict);
    drop(store);
    // A fresh handle (a restarted process) sees the same state.
    let reopened = FileResultStore::open(dir.path()).unwrap();
    assert_eq!(reopened.pending().await.unwrap(), vec![r.clone()]);
    reopened.mark_delivered(&j1).await.unwrap();
    reopened.mark_delivered(&j1).await.unwrap(); // idempotent
    assert!(reopened.pending().await.unwrap().is_empty());
    assert_eq!(reopened.lookup(&j1).await.unwrap(), Some(r.clone()));
    // Still first-wins after delivery, and after another reopen.
    assert_eq!(reopened.record(&other).await.unwrap(), Recorded::Conflict);
    assert!(matches!(reopened.mark_delivered(&id("nope")).await, Err(StoreError::UnknownJob(_))));
    drop(reopened);
    let again = FileResultStore::open(dir.path()).unwrap();
    assert!(again.pending().await.unwrap().is_empty(), "the delivery was durable too");
    assert_eq!(again.record(&r).await.unwrap(), Recorded::Duplicate);
}

#[tokio::test]
async fn a_second_process_cannot_open_the_same_directory() {
    let dir = tempfile::tempdir().unwrap();
    let store = FileResultStore::open(dir.path()).unwrap();
    let err = FileResultStore::open(dir.path()).unwrap_err().to_string();
    assert!(err.contains("in use by another job manager process"), "{err}");
    drop(store);
    FileResultStore::open(dir.path()).expect("free again once the first handle is gone");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_batch_is_durable_across_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let store = FileResultStore::open(dir.path()).unwrap();
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
    let reopened = FileResultStore::open(dir.path()).unwrap();
    let pending = reopened.pending().await.unwrap();
    let expected: Vec<_> = (0..500).map(|i| result(&format!("j{i:03}"), &format!("m{i}"))).collect();
    assert_eq!(pending, expected, "every accepted result, in job-id order");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_records_for_one_job_have_exactly_one_winner() {
    let dir = tempfile::tempdir().unwrap();
    let store = FileResultStore::open(dir.path()).unwrap();
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
    let intake = ResultIntake::new(FileResultStore::open(dir.path()).unwrap(), metrics.clone());
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
    let store = FileResultStore::open(dir.path()).unwrap();
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

    let store = FileResultStore::open(dir.path()).unwrap();
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
    let store = FileResultStore::open(dir.path()).unwrap();
    assert_eq!(store.pending().await.unwrap().len(), 4, "the append after recovery is readable");
}

#[tokio::test]
async fn corrupt_last_frame_is_dropped_and_earlier_results_kept() {
    let dir = tempfile::tempdir().unwrap();
    let store = FileResultStore::open(dir.path()).unwrap();
    store.record(&result("a", "x")).await.unwrap();
    store.record(&result("b", "y")).await.unwrap();
    drop(store);
    let path = dir.path().join(JOURNAL);
    let mut bytes = std::fs::read(&path).unwrap();
    let last = bytes.len() - 3;
    bytes[last] ^= 0x01; // a bit flip inside the last frame's payload
    std::fs::write(&path, &bytes).unwrap();
    let store = FileResultStore::open(dir.path()).unwrap();
    assert_eq!(store.pending().await.unwrap(), vec![result("a", "x")]);
    assert_eq!(store.record(&result("b", "y2")).await.unwrap(), Recorded::Accepted, "b was never durable");
}

#[tokio::test]
async fn compaction_keeps_undelivered_and_recent_results_and_shrinks_the_journal() {
    let dir = tempfile::tempdir().unwrap();
    let store = FileResultStore::open(dir.path()).unwrap();
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
    let reopened = FileResultStore::open(dir.path()).unwrap();
    let pending = reopened.pending().await.unwrap();
    assert_eq!(pending.len(), 3);
    assert_eq!(pending[2], result("p3", "late"));
    assert_eq!(reopened.lookup(&id("d01")).await.unwrap(), None);
    assert!(!dir.path().join(COMPACTING).exists());
}

#[tokio::test]
async fn a_compaction_cut_short_leaves_the_old_journal_in_charge() {
    let dir = tempfile::tempdir().unwrap();
    let store = FileResultStore::open(dir.path()).unwrap();
    store.record(&result("a", "x")).await.unwrap();
    drop(store);
    std::fs::write(dir.path().join(COMPACTING), b"half a compaction").unwrap();
    let store = FileResultStore::open(dir.path()).unwrap();
    assert_eq!(store.pending().await.unwrap(), vec![result("a", "x")]);
    assert!(!dir.path().join(COMPACTING).exists());
}

#[tokio::test]
async fn the_temp_file_of_a_compaction_cut_short_is_removed_at_open() {
    let dir = tempfile::tempdir().unwrap();
    let store = FileResultStore::open(dir.path()).unwrap();
    store.record(&result("a", "x")).await.unwrap();
    drop(store);
    // What `common::fs::write_atomic` leaves when a crash stops it before the rename.
    let stale = dir.path().join(".journal.1-0.tmp");
    std::fs::write(&stale, b"half a compaction").unwrap();
    let store = FileResultStore::open(dir.path()).unwrap();
    assert_eq!(store.pending().await.unwrap(), vec![result("a", "x")]);
    assert!(!stale.exists());
}

#[tokio::test]
async fn results_of_the_old_per_file_layout_are_imported_once() {
    let dir = tempfile::tempdir().unwrap();
    for (sub, job, msg) in [("pending", "p", "waiting"), ("delivered", "d", "done")] {
        std::fs::create_dir_all(dir.path().join(sub)).unwrap();
        let r = result(job, msg);
        std::fs::write(dir.path().join(sub).join(format!("r-{job}.json")), serde_json::to_vec(&r).unwrap()).unwrap();
    }
    std::fs::write(dir.path().join("pending/.tmp-1-r-x.json"), b"{half").unwrap();
    let store = FileResultStore::open(dir.path()).unwrap();
    assert_eq!(store.pending().await.unwrap(), vec![result("p", "waiting")]);
    assert_eq!(store.lookup(&id("d")).await.unwrap(), Some(result("d", "done")));
    assert_eq!(store.record(&result("d", "other")).await.unwrap(), Recorded::Conflict);
    assert!(!dir.path().join("pending").exists() && !dir.path().join("delivered").exists());
    drop(store);
    let reopened = FileResultStore::open(dir.path()).unwrap();
    assert_eq!(reopened.pending().await.unwrap(), vec![result("p", "waiting")], "imported into the journal");
}

#[tokio::test]
async fn an_unreadable_old_result_keeps_its_directory() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(dir.path().join("pending")).unwrap();
    std::fs::write(dir.path().join("pending/r-bad.json"), b"not json").unwrap();
    std::fs::write(dir.path().join("pending/r-ok.json"), serde_json::to_vec(&result("ok", "m")).unwrap()).unwrap();
    let store = FileResultStore::open(dir.path()).unwrap();
    assert_eq!(store.pending().await.unwrap(), vec![result("ok", "m")]);
    assert!(dir.path().join("pending/r-bad.json").exists(), "not deleted without being imported");
}
