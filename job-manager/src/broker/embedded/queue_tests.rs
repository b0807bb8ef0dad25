use super::*;
use common::broker::RuntimeDemand;
use common::Outcome;

const VT: Duration = Duration::from_secs(10);

fn job(id: &str, rt: &str) -> Job {
    serde_json::from_value(serde_json::json!({"id": id, "runtime_type": rt, "timeout_secs": 5})).unwrap()
}

fn id(s: &str) -> JobId {
    JobId::new(s).unwrap()
}

fn poll(q: &mut BrokerQueue, rt: &str, max: u32, now: Instant) -> Vec<(String, u32)> {
    let req = PollRequest { demands: vec![RuntimeDemand { runtime_type: rt.into(), max }], consumer: "jm-0".into() };
    q.poll(&req, now).into_iter().map(|j| (j.id.to_string(), j.attempt)).collect()
}

fn queue_with(ids: &[&str], t0: Instant) -> BrokerQueue {
    let mut q = BrokerQueue::new(VT);
    for i in ids {
        q.submit(job(i, "rt"), t0).unwrap();
    }
    q
}

#[test]
fn poll_is_fifo_per_runtime_and_bounded_by_max() {
    let t0 = Instant::now();
    let mut q = BrokerQueue::new(VT);
    q.submit(job("a", "rt"), t0).unwrap();
    q.submit(job("b", "other"), t0).unwrap();
    q.submit(job("c", "rt"), t0).unwrap();
    q.submit(job("d", "rt"), t0).unwrap();
    assert_eq!(poll(&mut q, "rt", 2, t0), vec![("a".into(), 1), ("c".into(), 1)]);
    assert_eq!(poll(&mut q, "rt", 0, t0), vec![]);
    assert_eq!(poll(&mut q, "rt", 5, t0), vec![("d".into(), 1)]);
    assert_eq!(poll(&mut q, "rt", 5, t0), vec![], "leased jobs are invisible");
    assert_eq!(poll(&mut q, "unknown", 5, t0), vec![]);
    assert_eq!(poll(&mut q, "other", 5, t0), vec![("b".into(), 1)]);
}

#[test]
fn duplicate_submission_is_refused() {
    let t0 = Instant::now();
    let mut q = queue_with(&["a"], t0);
    assert_eq!(q.submit(job("a", "rt"), t0), Err(QueueError::Duplicate(id("a"))));
}

#[test]
fn unacked_job_is_redelivered_after_visibility_timeout_with_next_attempt() {
    let t0 = Instant::now();
    let mut q = queue_with(&["a"], t0);
    assert_eq!(poll(&mut q, "rt", 1, t0), vec![("a".into(), 1)]);
    assert_eq!(poll(&mut q, "rt", 1, t0 + VT - Duration::from_millis(1)), vec![], "still leased");
    assert_eq!(poll(&mut q, "rt", 1, t0 + VT), vec![("a".into(), 2)]);
    assert_eq!(poll(&mut q, "rt", 1, t0 + VT * 2), vec![("a".into(), 3)]);
    let c = q.counters(&id("a")).unwrap();
    assert_eq!((c.deliveries, c.redeliveries_by_timeout), (3, 2));
}

#[test]
fn acked_job_is_never_redelivered_by_timeout() {
    let t0 = Instant::now();
    let mut q = queue_with(&["a"], t0);
    poll(&mut q, "rt", 1, t0);
    q.ack(&id("a"), "jm-0", 1, t0).unwrap();
    assert_eq!(poll(&mut q, "rt", 1, t0 + VT * 100), vec![]);
    assert!(matches!(q.state(&id("a")), Some(JobState::Acked { attempt: 1, .. })));
    q.ack(&id("a"), "jm-0", 1, t0).expect("repeating an ack is harmless");
    assert_eq!(q.counters(&id("a")).unwrap().acks, 1);
}

#[test]
fn stale_ack_after_redelivery_is_lease_lost() {
    let t0 = Instant::now();
    let mut q = queue_with(&["a"], t0);
    poll(&mut q, "rt", 1, t0);
    assert_eq!(poll(&mut q, "rt", 1, t0 + VT), vec![("a".into(), 2)]);
    let err = q.ack(&id("a"), "jm-0", 1, t0 + VT).unwrap_err();
    assert_eq!(err.label(), "lease_lost");
    assert!(err.to_string().contains("attempt 1 is not the current lease (leased, attempt 2)"), "{err}");
    q.ack(&id("a"), "jm-1", 2, t0 + VT).unwrap();
}

#[test]
fn late_ack_of_an_expired_lease_is_honoured_while_nobody_took_the_job() {
    let t0 = Instant::now();
    let mut q = queue_with(&["a"], t0);
    poll(&mut q, "rt", 1, t0);
    q.ack(&id("a"), "jm-0", 1, t0 + VT * 2).unwrap();
    assert_eq!(poll(&mut q, "rt", 1, t0 + VT * 3), vec![], "the acked job left the queue");
    assert_eq!(q.stats(t0 + VT * 3).depth, 0);
}

#[test]
fn ack_of_unknown_or_never_delivered_job() {
    let t0 = Instant::now();
    let mut q = queue_with(&["a"], t0);
    assert_eq!(q.ack(&id("zz"), "jm-0", 1, t0), Err(QueueError::NotFound(id("zz"))));
    assert_eq!(q.ack(&id("a"), "jm-0", 1, t0).unwrap_err().label(), "lease_lost");
}

#[test]
fn release_makes_the_job_visible_at_once_and_first() {
    let t0 = Instant::now();
    let mut q = queue_with(&["a", "b"], t0);
    assert_eq!(poll(&mut q, "rt", 1, t0), vec![("a".into(), 1)]);
    q.release(&id("a"), 1, t0).unwrap();
    assert_eq!(poll(&mut q, "rt", 1, t0), vec![("a".into(), 2)], "released job goes first, next attempt");
    q.ack(&id("a"), "jm-0", 2, t0).unwrap();
    q.release(&id("a"), 2, t0).expect("an acked job may be released too");
    assert_eq!(q.release(&id("a"), 2, t0).unwrap_err().label(), "lease_lost", "released twice");
    assert_eq!(q.release(&id("x"), 1, t0), Err(QueueError::NotFound(id("x"))));
    assert_eq!(q.counters(&id("a")).unwrap().releases, 2);
}

#[test]
fn results_are_idempotent_and_conflicts_refused() {
    let t0 = Instant::now();
    let mut q = queue_with(&["a"], t0);
    poll(&mut q, "rt", 1, t0);
    let ok = JobResult::new(id("a"), Outcome::Succeeded, "fine");
    q.submit_result(ok.clone(), t0).unwrap();
    let mut repeat = ok.clone();
    repeat.duration_ms = Some(3);
    q.submit_result(repeat, t0).expect("identical repeat accepted");
    let other = JobResult::new(id("a"), Outcome::Failed, "boom");
    assert_eq!(q.submit_result(other, t0), Err(QueueError::ResultConflict(id("a"))));
    assert_eq!(q.result(&id("a")), Some(ok));
    let c = q.counters(&id("a")).unwrap();
    assert_eq!((c.results_accepted, c.results_conflicting), (2, 1));
    assert_eq!(q.state(&id("a")), Some(JobState::Done));
    assert_eq!(poll(&mut q, "rt", 1, t0 + VT * 5), vec![], "a job with a result is never redelivered");
    q.ack(&id("a"), "jm-0", 1, t0).expect("an ack racing behind the result is fine");
    assert_eq!(q.release(&id("a"), 1, t0).unwrap_err().label(), "lease_lost");
    let unknown = JobResult::new(id("nope"), Outcome::Failed, "");
    assert_eq!(q.submit_result(unknown, t0), Err(QueueError::NotFound(id("nope"))));
}

#[test]
fn result_for_a_waiting_job_removes_it_from_the_queue() {
    let t0 = Instant::now();
    let mut q = queue_with(&["a"], t0);
    q.submit_result(JobResult::new(id("a"), Outcome::Rejected, "bad signature"), t0).unwrap();
    assert_eq!(poll(&mut q, "rt", 1, t0), vec![]);
    assert_eq!((q.results().len(), q.result_count()), (1, 1));
}

#[test]
fn stats_count_waiting_jobs_and_oldest_age() {
    let t0 = Instant::now();
    let mut q = BrokerQueue::new(VT);
    assert_eq!(q.stats(t0), QueueStats { depth: 0, depth_by_runtime: BTreeMap::new(), oldest_age_secs: 0.0 });
    q.submit(job("a", "rt"), t0).unwrap();
    q.submit(job("b", "other"), t0 + Duration::from_secs(1)).unwrap();
    q.submit(job("c", "rt"), t0 + Duration::from_secs(2)).unwrap();
    let s = q.stats(t0 + Duration::from_secs(4));
    assert_eq!(s.depth, 3);
    assert_eq!(s.depth_by_runtime, BTreeMap::from([("other".to_string(), 1), ("rt".to_string(), 2)]));
    assert_eq!(s.oldest_age_secs, 4.0);
    poll(&mut q, "rt", 1, t0 + Duration::from_secs(4));
    let s = q.stats(t0 + Duration::from_secs(4));
    assert_eq!((s.depth, s.oldest_age_secs), (2, 3.0), "leased jobs are not waiting");
    let s = q.stats(t0 + Duration::from_secs(4) + VT);
    assert_eq!(s.depth, 3, "an expired lease counts as waiting again");
}

#[test]
fn expired_leases_go_ahead_of_never_delivered_jobs_in_expiry_order() {
    let t0 = Instant::now();
    let mut q = queue_with(&["a", "b", "c"], t0);
    assert_eq!(poll(&mut q, "rt", 1, t0), vec![("a".into(), 1)]);
    assert_eq!(poll(&mut q, "rt", 1, t0 + Duration::from_secs(1)), vec![("b".into(), 1)]);
    let later = t0 + VT + Duration::from_secs(1);
    assert_eq!(poll(&mut q, "rt", 3, later), vec![("a".into(), 2), ("b".into(), 2), ("c".into(), 1)]);
    q.ack(&id("c"), "jm-0", 1, later).unwrap();
    q.submit_result(JobResult::new(id("a"), Outcome::Succeeded, ""), later).unwrap();
    let s = q.stats(later + VT * 3);
    assert_eq!((s.depth, s.depth_by_runtime.get("rt")), (1, Some(&1)), "only b expired again");
}
