use super::fakes::{BrokerCall, FakeBroker, FakeExecutor};
use super::*;
use crate::metrics::Metrics;
use crate::results::MemoryResultStore;
use std::collections::BTreeMap;

fn job(id: &str, rt: &str) -> Job {
    Job {
        id: JobId::new(id).unwrap(),
        runtime_type: rt.into(),
        workload_kind: Default::default(),
        timeout_secs: 30,
        attempt: 1,
        payload: serde_json::json!({"action": "sleep", "secs": 1}),
        signature: None,
    }
}

struct Rig {
    broker: Arc<FakeBroker>,
    executor: Arc<FakeExecutor>,
    dispatcher: Arc<Dispatcher<FakeBroker, FakeExecutor, MemoryResultStore>>,
    intake: ResultIntake<MemoryResultStore>,
    readiness: Arc<Readiness>,
    shutdown: CancellationToken,
}

fn rig(tweak: impl FnOnce(&mut DispatcherSettings)) -> Rig {
    let broker = Arc::new(FakeBroker::new());
    let executor = Arc::new(FakeExecutor::new());
    let intake = ResultIntake::new(MemoryResultStore::new(), Arc::new(Metrics::new()));
    let mut settings = DispatcherSettings::new(
        "test",
        vec![RuntimeLimit { name: "a".into(), parallelism: 2 }, RuntimeLimit { name: "b".into(), parallelism: 1 }],
    );
    settings.handoff_backoff = Backoff::new(Duration::from_millis(1), Duration::from_millis(2));
    settings.handoff_attempts = 3;
    tweak(&mut settings);
    let readiness = Readiness::new();
    let dispatcher = Dispatcher::new(
        broker.clone(),
        executor.clone(),
        intake.clone(),
        TokenSigner::new("k"),
        settings,
        readiness.clone(),
    );
    Rig { broker, executor, dispatcher, intake, readiness, shutdown: CancellationToken::new() }
}

impl Rig {
    async fn tick(&self) -> TickReport {
        let r = self.dispatcher.tick(&self.shutdown).await;
        // Let the spawned hand-offs finish before asserting (they ack or release).
        self.settle().await;
        r
    }
    async fn settle(&self) {
        while !self.dispatcher.handing_off().is_empty() {
            tokio::task::yield_now().await;
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        // The ack/release after the hand-off runs in the same task; wait for it too.
        for _ in 0..50 {
            tokio::task::yield_now().await;
        }
    }
}

#[test]
fn limit_never_exceeds_free_capacity_or_batch() {
    let rts =
        vec![RuntimeLimit { name: "a".into(), parallelism: 3 }, RuntimeLimit { name: "b".into(), parallelism: 5 }];
    let in_flight = BTreeMap::from([("a".to_string(), vec![JobId::new("x").unwrap()])]);
    let handing = BTreeMap::from([("a".to_string(), 1usize)]);
    let free = limit::free_capacity(&rts, &in_flight, &handing);
    assert_eq!(free, BTreeMap::from([("a".into(), 1), ("b".into(), 5)]));
    let d = limit::demands(&free, &rts, 4, 0);
    assert_eq!(d.iter().map(|d| (d.runtime_type.as_str(), d.max)).collect::<Vec<_>>(), vec![("a", 1), ("b", 3)]);
    // Full: no demand at all, so no poll.
    let full = BTreeMap::from([("a".to_string(), 0u32), ("b".to_string(), 0u32)]);
    assert!(limit::demands(&full, &rts, 10, 0).is_empty());
    // More running than parallelism (config shrank) saturates at zero.
    let many = BTreeMap::from([("b".to_string(), (0..9).map(|i| JobId::new(format!("j{i}")).unwrap()).collect())]);
    assert_eq!(limit::free_capacity(&rts, &many, &BTreeMap::new())["b"], 0);
}

/// Regression: with the batch dealt in config order, a first runtime type whose free room
/// covered the whole batch took all of it on every poll, so jobs of the second type
/// waited at the broker forever with capacity free (found by the persistent e2e).
#[test]
fn a_runtime_with_room_is_never_starved_by_an_earlier_one() {
    let rts =
        vec![RuntimeLimit { name: "a".into(), parallelism: 16 }, RuntimeLimit { name: "b".into(), parallelism: 8 }];
    let free = limit::free_capacity(&rts, &BTreeMap::new(), &BTreeMap::new());
    for start in 0..4 {
        let d = limit::demands(&free, &rts, 10, start);
        let got: BTreeMap<&str, u32> = d.iter().map(|d| (d.runtime_type.as_str(), d.max)).collect();
        assert_eq!(got, BTreeMap::from([("a", 5), ("b", 5)]), "start {start}");
    }
    // A batch smaller than the number of types: the rotation reaches every type.
    let three: Vec<RuntimeLimit> =
        ["a", "b", "c"].iter().map(|n| RuntimeLimit { name: (*n).into(), parallelism: 4 }).collect();
    let free = limit::free_capacity(&three, &BTreeMap::new(), &BTreeMap::new());
    let asked: std::collections::BTreeSet<String> =
        (0..3).flat_map(|s| limit::demands(&free, &three, 1, s)).map(|d| d.runtime_type).collect();
    assert_eq!(asked.len(), 3, "{asked:?}");
    // Room is still the cap: a type with 1 free slot gets 1, the rest goes to the other.
    let free = BTreeMap::from([("a".to_string(), 1u32), ("b".to_string(), 8u32)]);
    let d = limit::demands(&free, &rts, 10, 0);
    assert_eq!(d.iter().map(|d| (d.runtime_type.as_str(), d.max)).collect::<Vec<_>>(), vec![("a", 1), ("b", 8)]);
}

#[test]
fn dedupe_table() {
    use dedupe::{classify, Seen};
    assert_eq!(classify(false, false, false), Seen::New);
    assert_eq!(classify(true, false, false), Seen::Running);
    assert_eq!(classify(false, true, false), Seen::HandingOff);
    assert_eq!(classify(true, true, true), Seen::Finished);
}

#[test]
fn stall_rules() {
    let free = BTreeMap::from([("a".to_string(), 1u32), ("b".to_string(), 0u32)]);
    let long = Duration::from_secs(120);
    let limit = Duration::from_secs(60);
    let depth = BTreeMap::from([("a".to_string(), 3u64)]);
    let r = stall::stall_reason(&depth, 3, &free, long, limit).unwrap();
    assert!(r.contains("a: 3 waiting, 1 free"), "{r}");
    assert!(stall::stall_reason(&depth, 3, &free, Duration::from_secs(5), limit).is_none(), "recent dispatch");
    let only_b = BTreeMap::from([("b".to_string(), 3u64)]);
    assert!(stall::stall_reason(&only_b, 3, &free, long, limit).is_none(), "no room for b: not a stall");
    assert!(stall::stall_reason(&BTreeMap::new(), 0, &free, long, limit).is_none(), "empty queue");
    assert!(stall::stall_reason(&BTreeMap::new(), 2, &free, long, limit).is_some(), "total depth only");
}

#[tokio::test]
async fn polls_only_free_capacity_and_acks_after_start() {
    let rig = rig(|_| {});
    for i in 0..5 {
        rig.broker.push(job(&format!("a{i}"), "a"));
    }
    rig.broker.push(job("b0", "b"));
    rig.broker.push(job("b1", "b"));
    let r = rig.tick().await;
    assert_eq!(r.scheduled, 3);
    assert_eq!(rig.executor.started().len(), 3);
    let calls = rig.broker.calls();
    let BrokerCall::Poll(p) = &calls[0] else { panic!("first call is a poll: {calls:?}") };
    assert_eq!(p.demands.iter().map(|d| d.max).sum::<u32>(), 3);
    // Every ack comes after its start: the acked set equals the started set.
    let mut acked = rig.broker.acks();
    acked.sort();
    let mut started = rig.executor.started();
    started.sort();
    assert_eq!(acked, started);
    // Capacity is full now: the next tick does not poll at all.
    let before = rig.broker.calls().len();
    assert_eq!(rig.tick().await, TickReport::default());
    assert_eq!(rig.broker.calls().len(), before, "no poll without free capacity");
    // One finishes: exactly one more of that type is taken.
    rig.executor.finish(&JobId::new("a0").unwrap());
    assert_eq!(rig.tick().await.scheduled, 1);
    assert_eq!(rig.executor.running(), 3);
}

#[tokio::test]
async fn unreadable_executor_state_stops_polling_and_names_why_in_readiness_until_it_reads_again() {
    let rig = rig(|_| {});
    rig.broker.push(job("a0", "a"));
    let forbidden = "jobrecords.jobs.example.com is forbidden: User \"system:serviceaccount:jobs:jm\" cannot list resource \"jobrecords\"";
    *rig.executor.state_error.lock().unwrap() = Some(forbidden.into());
    for _ in 0..3 {
        assert_eq!(rig.tick().await, TickReport::default());
    }
    assert!(rig.broker.calls().is_empty(), "nothing is polled without knowing what runs");
    let reason = rig.readiness.check().unwrap_err();
    assert!(
        reason.contains("no jobs are polled") && reason.contains("cannot list resource \"jobrecords\""),
        "{reason}"
    );

    *rig.executor.state_error.lock().unwrap() = None;
    assert_eq!(rig.tick().await.scheduled, 1);
    assert_eq!(rig.readiness.check(), Ok(()), "ready again once the state can be read");
}

#[tokio::test]
async fn transient_failures_retry_then_release() {
    let rig = rig(|_| {});
    rig.executor.fail_next(HandoffError::Transient("quota".into()));
    rig.broker.push(job("retry-ok", "b"));
    rig.tick().await;
    assert_eq!(rig.executor.started(), vec![JobId::new("retry-ok").unwrap()]);
    assert_eq!(rig.broker.acks(), vec![JobId::new("retry-ok").unwrap()]);

    rig.executor.finish(&JobId::new("retry-ok").unwrap());
    rig.executor.fail_always(true);
    rig.broker.push(job("doomed", "b"));
    rig.tick().await;
    assert_eq!(rig.broker.releases(), vec![JobId::new("doomed").unwrap()]);
    assert!(!rig.broker.acks().contains(&JobId::new("doomed").unwrap()), "never acked");
    let text = rig.intake.metrics().encode();
    assert!(text.contains("job_manager_handoff_failures_total{reason=\"transient\"} 4"), "{text}");
}

#[tokio::test]
async fn permanent_failure_releases_at_once() {
    let rig = rig(|_| {});
    rig.executor.fail_next(HandoffError::Permanent("bad object".into()));
    rig.broker.push(job("p", "a"));
    rig.tick().await;
    assert_eq!(rig.broker.releases(), vec![JobId::new("p").unwrap()]);
    assert!(rig.executor.started().is_empty());
}

#[tokio::test]
async fn redelivered_running_job_is_acked_not_started_again() {
    let rig = rig(|_| {});
    rig.broker.push(job("dup", "a"));
    rig.tick().await;
    let mut again = job("dup", "a");
    again.attempt = 2;
    rig.broker.push(again);
    let r = rig.tick().await;
    assert_eq!(r.deduplicated, 1);
    assert_eq!(rig.executor.started().len(), 1, "not started twice");
    assert!(rig.broker.calls().contains(&BrokerCall::Ack(JobId::new("dup").unwrap(), 2)), "acks the new attempt");
}

#[tokio::test]
async fn redelivered_finished_job_is_acked_not_run() {
    let rig = rig(|_| {});
    rig.intake.record(&JobResult::new(JobId::new("done").unwrap(), Outcome::Succeeded, "")).await.unwrap();
    rig.broker.push(job("done", "a"));
    let r = rig.tick().await;
    assert_eq!(r.deduplicated, 1);
    assert!(rig.executor.started().is_empty());
    assert_eq!(rig.broker.acks(), vec![JobId::new("done").unwrap()]);
}

/// The broker re-delivers a job whose result we delivered (it answered as if stored, and
/// lost it): the job is not run again, and the broker ends with the result.
#[tokio::test]
async fn redelivered_finished_job_gets_its_result_sent_again() {
    let rig = rig(|_| {});
    let id = JobId::new("lost").unwrap();
    let result = JobResult::new(id.clone(), Outcome::Succeeded, "done once");
    rig.intake.record(&result).await.unwrap();
    // Delivered as far as this process knows: marked, out of the fresh queue.
    rig.intake.take_fresh();
    rig.intake.store().mark_delivered(&id).await.unwrap();
    assert!(rig.broker.results().is_empty(), "the broker does not hold it");

    let shutdown = CancellationToken::new();
    let delivery = tokio::spawn(
        crate::results::DeliveryLoop::new(rig.broker.clone(), rig.intake.clone())
            .with_rescan(Duration::from_secs(3600))
            .run(shutdown.clone()),
    );
    rig.broker.push(job("lost", "a"));
    let r = rig.tick().await;
    assert_eq!((r.deduplicated, r.scheduled), (1, 0));
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while rig.broker.results().is_empty() {
        assert!(tokio::time::Instant::now() < deadline, "the result was not sent again");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    shutdown.cancel();
    delivery.await.unwrap();
    assert_eq!(rig.broker.results()[&id], result);
    assert!(rig.executor.started().is_empty(), "not run again");
    assert_eq!(rig.broker.acks(), vec![id]);
    assert!(rig.intake.metrics().encode().contains("job_manager_results_resubmitted_total 1"));
}

fn unreadable(id: Option<&str>, raw_id: &str, reason: &str) -> crate::broker::UnreadableJob {
    crate::broker::UnreadableJob {
        id: id.map(|i| JobId::new(i).unwrap()),
        raw_id: raw_id.into(),
        attempt: 2,
        reason: reason.into(),
    }
}

/// One malformed job in a poll answer: the rest of the batch runs, the bad one is
/// rejected with its reason (a `rejected` result, then acked) and counted; one whose id
/// cannot name it is neither run, nor rejected, nor released.
#[tokio::test(flavor = "current_thread")]
async fn an_unreadable_job_is_rejected_and_the_rest_of_its_batch_runs() {
    let (logs, _guard) = fakes::LogCapture::install();
    let rig = rig(|s| s.runtimes[0].parallelism = 5);
    rig.broker.push(job("ok1", "a"));
    rig.broker.push(job("ok2", "a"));
    rig.broker.push_unreadable(unreadable(Some("neg"), "neg", "invalid value: integer `-1`, expected u32"));
    rig.broker.push_unreadable(unreadable(None, "a/b", "job id may only contain ..."));
    let r = rig.tick().await;
    assert_eq!((r.polled, r.scheduled, r.unreadable, r.rejected, r.released), (4, 2, 2, 1, 0));
    assert_eq!(rig.executor.started(), vec![JobId::new("ok1").unwrap(), JobId::new("ok2").unwrap()]);
    let neg = JobId::new("neg").unwrap();
    let rejection = rig.intake.lookup(&neg).await.unwrap().expect("rejection recorded");
    assert_eq!(
        (rejection.outcome, rejection.message.as_str()),
        (Outcome::Rejected, "unreadable job: invalid value: integer `-1`, expected u32")
    );
    assert!(rig.broker.calls().contains(&BrokerCall::Ack(neg, 2)), "acked under the attempt it came with");
    assert!(rig.broker.releases().is_empty());
    assert!(rig.intake.metrics().encode().contains("job_manager_jobs_unreadable_total 2"));
    assert!(rig.readiness.check().is_ok(), "one bad job is no reason to be unready");
    // The log names each bad job, with why.
    let logs = logs.text();
    let named = |id: &str, what: &str| {
        logs.lines().any(|l| l.contains(&format!("job{{job_id={id} attempt=2}}")) && l.contains(what))
    };
    assert!(named("neg", "rejecting it"), "{logs}");
    assert!(named("a/b", "neither rejected nor released"), "{logs}");
}

/// A garbled copy of a job that runs here does not overrule it with a rejection.
#[tokio::test]
async fn an_unreadable_copy_of_a_running_job_is_not_rejected() {
    let rig = rig(|_| {});
    rig.broker.push(job("runs", "a"));
    rig.tick().await;
    rig.broker.push_unreadable(unreadable(Some("runs"), "runs", "unknown field `x`"));
    let r = rig.tick().await;
    assert_eq!((r.unreadable, r.deduplicated, r.rejected), (1, 1, 0));
    assert!(rig.intake.lookup(&JobId::new("runs").unwrap()).await.unwrap().is_none());
}

/// An answer that cannot be read at all makes the job manager unready, with the reason,
/// and moves a metric; the next readable answer puts both back.
#[tokio::test]
async fn an_unreadable_poll_answer_shows_in_readiness_until_one_reads_again() {
    let rig = rig(|_| {});
    rig.broker.fail_next_poll(BrokerError::Unreadable("the answer is larger than 16777216 bytes".into()));
    rig.tick().await;
    let err = rig.readiness.check().unwrap_err();
    assert_eq!(
        err,
        "broker poll answers cannot be read: broker answer unreadable: the answer is larger than 16777216 bytes"
    );
    let metrics = rig.intake.metrics().encode();
    assert!(metrics.contains("job_manager_broker_poll_unreadable 1"), "{metrics}");
    assert!(metrics.contains(r#"job_manager_broker_errors_total{call="poll",reason="unreadable"} 1"#), "{metrics}");
    rig.tick().await;
    assert!(rig.readiness.check().is_ok());
    assert!(rig.intake.metrics().encode().contains("job_manager_broker_poll_unreadable 0"));
}

/// The same job twice in one answer is handled once, under its newest attempt, and not
/// released as "more jobs than requested".
#[tokio::test]
async fn a_duplicate_within_one_poll_is_handled_once_not_released() {
    let rig = rig(|_| {});
    rig.broker.set_ignore_demands(true);
    rig.broker.push(job("twice", "b"));
    let mut again = job("twice", "b");
    again.attempt = 2;
    rig.broker.push(again);
    let r = rig.tick().await;
    assert_eq!((r.polled, r.scheduled, r.deduplicated, r.released), (2, 1, 1, 0));
    assert!(rig.broker.releases().is_empty(), "{:?}", rig.broker.calls());
    assert_eq!(rig.executor.started(), vec![JobId::new("twice").unwrap()]);
    assert_eq!(rig.broker.acks(), vec![JobId::new("twice").unwrap()]);
    assert!(rig.broker.calls().contains(&BrokerCall::Ack(JobId::new("twice").unwrap(), 2)), "the newest lease");
}

#[tokio::test]
async fn vse_rejects_unsigned_and_runs_signed() {
    let rig = rig(|s| {
        s.vse_passphrase = Some(Secret::new("pass"));
        s.runtimes[0].parallelism = 5;
    });
    let mut signed = job("signed", "a");
    signed.signature = Some(common::token::vse_signature("pass", "a", &signed.payload));
    let unsigned = job("unsigned", "a");
    let mut forged = job("forged", "a");
    forged.signature = Some(common::token::vse_signature("other", "a", &forged.payload));
    rig.broker.push(signed);
    rig.broker.push(unsigned);
    rig.broker.push(forged);
    let r = rig.tick().await;
    assert_eq!((r.scheduled, r.rejected), (1, 2));
    assert_eq!(rig.executor.started(), vec![JobId::new("signed").unwrap()]);
    for id in ["unsigned", "forged"] {
        let res = rig.intake.lookup(&JobId::new(id).unwrap()).await.unwrap().expect("rejection recorded");
        assert_eq!(res.outcome, Outcome::Rejected);
        assert!(res.message.contains("verified script execution"), "{}", res.message);
        assert!(rig.broker.acks().contains(&JobId::new(id).unwrap()), "rejected jobs are acked");
    }
    let unsigned = rig.intake.lookup(&JobId::new("unsigned").unwrap()).await.unwrap().unwrap();
    assert!(unsigned.message.contains("no signature"), "{}", unsigned.message);
}

#[tokio::test]
async fn unknown_runtime_and_excess_jobs_are_released() {
    let rig = rig(|_| {});
    // A misbehaving broker hands out a type we never asked for and more "b" than room.
    rig.broker.set_ignore_demands(true);
    rig.broker.push(job("x", "zzz"));
    rig.broker.push(job("b1", "b"));
    rig.broker.push(job("b2", "b"));
    let r = rig.tick().await;
    assert_eq!((r.polled, r.scheduled, r.released), (3, 1, 2));
    let mut released = rig.broker.releases();
    released.sort();
    assert_eq!(released, vec![JobId::new("b2").unwrap(), JobId::new("x").unwrap()]);
    assert_eq!(rig.executor.started(), vec![JobId::new("b1").unwrap()], "capacity of b (1) not exceeded");
}

#[tokio::test]
async fn handoff_sets_deadline_and_bound_token() {
    let rig = rig(|s| s.check_timeout_secs = 10);
    let now = SystemTime::now();
    let mut long = job("long", "a");
    long.timeout_secs = 500;
    let h = rig.dispatcher.handoff_for(&long, now);
    assert_eq!(h.deadline, now + Duration::from_secs(10), "clamped to the check timeout");
    assert_eq!(h.timeout_secs, 10, "a timed-out result reports the time the job was given");
    let mut none = job("none", "a");
    none.timeout_secs = 0;
    let h0 = rig.dispatcher.handoff_for(&none, now);
    assert_eq!((h0.deadline, h0.timeout_secs), (now + Duration::from_secs(1), 1), "at least a second");
    let signer = TokenSigner::new("k");
    let t = now.duration_since(UNIX_EPOCH).unwrap().as_secs();
    assert!(signer.verify(&long.id, &h.token, t + 10 + 60).is_ok(), "valid past the deadline (slack)");
    assert!(signer.verify(&JobId::new("other").unwrap(), &h.token, t).is_err(), "bound to the job id");
    assert!(signer.verify(&long.id, &h.token, t + 10 + 16 * 60).is_err(), "expires");
}

#[tokio::test]
async fn stall_shows_in_readiness_and_metrics() {
    let rig = rig(|s| s.stall_after = Duration::ZERO);
    // Jobs wait for "a", capacity is free, and the dispatcher has not polled.
    rig.broker.push(job("w", "a"));
    rig.dispatcher.check_queue().await;
    let err = rig.readiness.check().unwrap_err();
    assert!(err.contains("stalled"), "{err}");
    assert!(rig.intake.metrics().encode().contains("job_manager_dispatcher_stalled 1"));
    assert!(rig.intake.metrics().encode().contains("job_manager_broker_queue_depth 1"));
    // Once it dispatches and the queue drains, it is ready again.
    rig.tick().await;
    rig.dispatcher.check_queue().await;
    assert!(rig.readiness.check().is_ok());
}

#[tokio::test]
async fn shutdown_during_backoff_releases() {
    let rig = rig(|s| {
        s.handoff_backoff = Backoff::new(Duration::from_secs(30), Duration::from_secs(30));
        s.handoff_attempts = 10;
    });
    rig.executor.fail_always(true);
    rig.broker.push(job("s", "a"));
    rig.dispatcher.tick(&rig.shutdown).await;
    rig.shutdown.cancel();
    rig.settle().await;
    assert_eq!(rig.broker.releases(), vec![JobId::new("s").unwrap()]);
}

#[tokio::test]
async fn redelivery_during_slow_handoff_acks_the_newest_attempt() {
    let rig = rig(|_| {});
    *rig.executor.start_delay.lock().unwrap() = Duration::from_millis(200);
    rig.broker.push(job("slow", "a"));
    rig.dispatcher.tick(&rig.shutdown).await;
    let mut again = job("slow", "a");
    again.attempt = 2;
    rig.broker.push(again);
    let r = rig.dispatcher.tick(&rig.shutdown).await;
    assert_eq!(r.deduplicated, 1);
    rig.settle().await;
    assert_eq!(rig.executor.started().len(), 1);
    assert_eq!(rig.broker.acks(), vec![JobId::new("slow").unwrap()]);
    assert!(rig.broker.calls().contains(&BrokerCall::Ack(JobId::new("slow").unwrap(), 2)), "{:?}", rig.broker.calls());
}

/// A hand-off the platform refuses for good (the Role lacks a right): the job goes back
/// to the broker at once, the job manager is unready naming the right (logged once), the
/// metric is 1, the refused runtime type is polled one job at a time, and a refused
/// hand-off is no dispatch (the stall check sees it); a job of that type that starts
/// clears it all.
#[tokio::test]
async fn a_refused_handoff_is_released_and_unready_until_one_of_its_type_starts() {
    let rig = rig(|s| {
        s.runtimes[0].parallelism = 5;
        s.stall_after = Duration::from_millis(50);
    });
    let (logs, _guard) = fakes::LogCapture::install();
    let said = r#"jobs.batch is forbidden: User "u" cannot create resource "jobs" in API group "batch" in the namespace "default""#;
    let refused = || HandoffError::Refused {
        right: r#"create jobs.batch in namespace "default""#.into(),
        message: format!("the job manager's Role does not allow it: 403 Forbidden: {said}"),
    };
    let metrics = || rig.intake.metrics().encode();
    assert!(metrics().contains(r#"job_manager_handoffs_refused{runtime="a"} 0"#), "{}", metrics());
    rig.executor.fail_next(refused());
    rig.broker.push(job("r1", "a"));
    rig.tick().await;
    assert_eq!(rig.broker.releases(), vec![JobId::new("r1").unwrap()]);
    assert!(rig.broker.calls().iter().any(|c| matches!(c, BrokerCall::Release(_, why) if why.contains(said))));
    assert!(rig.executor.started().is_empty());
    assert!(metrics().contains(r#"job_manager_handoff_failures_total{reason="refused"} 1"#), "not retried");
    let err = rig.readiness.check().unwrap_err();
    assert_eq!(
        err,
        format!("hand-offs of a are refused: the job manager's Role does not allow it: 403 Forbidden: {said}")
    );
    assert!(metrics().contains(r#"job_manager_handoffs_refused{runtime="a"} 1"#), "{}", metrics());
    assert!(metrics().contains(r#"job_manager_handoffs_refused{runtime="b"} 0"#), "{}", metrics());

    // Refused again: polled one at a time, and not logged again.
    rig.executor.fail_next(refused());
    rig.broker.push(job("r2", "a"));
    rig.broker.push(job("r3", "a"));
    rig.tick().await;
    let last_poll = rig.broker.calls().into_iter().rev().find_map(|c| match c {
        BrokerCall::Poll(p) => Some(p),
        _ => None,
    });
    let asked: Vec<(String, u32)> = last_poll.unwrap().demands.into_iter().map(|d| (d.runtime_type, d.max)).collect();
    assert!(asked.contains(&("a".to_string(), 1)), "{asked:?}");
    assert_eq!(rig.broker.releases().len(), 2);
    assert_eq!(logs.text().matches("hand-offs refused").count(), 1, "{}", logs.text());
    assert_eq!(logs.text().matches(said).count(), 1, "the API server's words once, not per job: {}", logs.text());

    // Nothing started since the dispatcher began: with r3 waiting, that is a stall.
    tokio::time::sleep(Duration::from_millis(60)).await;
    rig.dispatcher.check_queue().await;
    assert!(metrics().contains("job_manager_dispatcher_stalled 1"), "a refused hand-off is no dispatch");
    assert!(rig.readiness.check().unwrap_err().starts_with("hand-offs of a are refused"), "the cause comes first");

    // The Role is fixed: r3 starts, and everything recovers.
    rig.tick().await;
    assert_eq!(rig.executor.started(), vec![JobId::new("r3").unwrap()]);
    assert!(metrics().contains(r#"job_manager_handoffs_refused{runtime="a"} 0"#), "{}", metrics());
    rig.dispatcher.check_queue().await;
    assert_eq!(rig.readiness.check(), Ok(()));
    assert!(logs.text().contains("hand-offs accepted again"), "{}", logs.text());
}
