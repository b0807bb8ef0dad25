use super::*;
use crate::broker::BrokerError;
use crate::dispatcher::fakes::{BrokerCall, FakeBroker};
use crate::metrics::Metrics;
use crate::results::{MemoryResultStore, ResultIntake};
use common::{JobId, JobResult, Outcome};

fn result(id: &str, outcome: Outcome) -> JobResult {
    JobResult::new(JobId::new(id).unwrap(), outcome, "m")
}

#[tokio::test]
async fn broker_down_keeps_results_then_delivers_all() {
    let broker = Arc::new(FakeBroker::new());
    let intake = ResultIntake::new(MemoryResultStore::new(), Arc::new(Metrics::new()));
    let delivery = DeliveryLoop::new(broker.clone(), intake.clone());
    broker.set_down(true);
    for i in 0..3 {
        intake.record(&result(&format!("j{i}"), Outcome::Succeeded)).await.unwrap();
    }
    let pass = delivery.deliver_pending().await;
    assert!(pass.broker_unavailable);
    assert_eq!(pass.delivered, 0);
    assert_eq!(intake.store().pending().await.unwrap().len(), 3, "nothing dropped while the broker is down");
    broker.set_down(false);
    let pass = delivery.deliver_pending().await;
    assert_eq!(pass, DeliveryPass { delivered: 3, failed: 0, broker_unavailable: false });
    assert_eq!(broker.results().len(), 3);
    assert!(intake.store().pending().await.unwrap().is_empty());
    assert!(intake.metrics().encode().contains("job_manager_result_delivery_retries_total 1"));
}

#[tokio::test]
async fn conflict_at_broker_counts_as_delivered() {
    let broker = Arc::new(FakeBroker::new());
    broker.submit_result(&result("j", Outcome::Failed)).await.unwrap();
    let intake = ResultIntake::new(MemoryResultStore::new(), Arc::new(Metrics::new()));
    intake.record(&result("j", Outcome::Succeeded)).await.unwrap();
    let pass = DeliveryLoop::new(broker.clone(), intake.clone()).deliver_pending().await;
    assert_eq!(pass.delivered, 1);
    assert_eq!(broker.results()[&JobId::new("j").unwrap()].outcome, Outcome::Failed, "broker keeps the first");
    assert!(intake.store().pending().await.unwrap().is_empty());
}

#[tokio::test]
async fn loop_delivers_on_kick_and_flushes_on_shutdown() {
    let broker = Arc::new(FakeBroker::new());
    let intake = ResultIntake::new(MemoryResultStore::new(), Arc::new(Metrics::new()));
    let shutdown = CancellationToken::new();
    let task = tokio::spawn(
        DeliveryLoop::new(broker.clone(), intake.clone()).with_rescan(Duration::from_secs(3600)).run(shutdown.clone()),
    );
    intake.record(&result("k", Outcome::TimedOut)).await.unwrap();
    // The kick wakes the loop long before the (one hour) rescan.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while broker.results().is_empty() {
        assert!(tokio::time::Instant::now() < deadline, "kick did not deliver");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    broker.set_down(true);
    intake.record(&result("late", Outcome::Failed)).await.unwrap();
    broker.set_down(false);
    shutdown.cancel();
    task.await.unwrap();
    assert!(broker.results().contains_key(&JobId::new("late").unwrap()));
    assert!(broker.calls().iter().all(|c| matches!(c, BrokerCall::Result(_))));
}

/// A store shared by "processes": counts `pending()` listings.
#[derive(Default)]
struct Shared {
    inner: MemoryResultStore,
    listings: std::sync::atomic::AtomicUsize,
}

impl ResultStore for Arc<Shared> {
    async fn record(&self, result: &JobResult) -> Result<crate::results::Recorded, crate::results::StoreError> {
        self.inner.record(result).await
    }
    async fn pending(&self) -> Result<Vec<JobResult>, crate::results::StoreError> {
        self.listings.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        self.inner.pending().await
    }
    async fn mark_delivered(&self, id: &JobId) -> Result<(), crate::results::StoreError> {
        self.inner.mark_delivered(id).await
    }
}

async fn until(what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while !cond() {
        assert!(tokio::time::Instant::now() < deadline, "{what}");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

#[tokio::test]
async fn fresh_results_are_delivered_without_listing_the_store() {
    let broker = Arc::new(FakeBroker::new());
    let shared = Arc::new(Shared::default());
    let intake = ResultIntake::new(shared.clone(), Arc::new(Metrics::new()));
    let shutdown = CancellationToken::new();
    let task = tokio::spawn(
        DeliveryLoop::new(broker.clone(), intake.clone()).with_rescan(Duration::from_secs(3600)).run(shutdown.clone()),
    );
    // The start-up sweep lists once; then every result goes straight to the broker.
    until("start-up sweep", || shared.listings.load(std::sync::atomic::Ordering::SeqCst) == 1).await;
    for i in 0..20 {
        intake.record(&result(&format!("f{i}"), Outcome::Succeeded)).await.unwrap();
    }
    until("all delivered", || broker.results().len() == 20).await;
    assert_eq!(shared.listings.load(std::sync::atomic::Ordering::SeqCst), 1, "no listing per result");
    assert!(intake.store().inner.pending().await.unwrap().is_empty());
    shutdown.cancel();
    task.await.unwrap();
}

#[tokio::test]
async fn sweep_only_where_the_gate_allows_and_only_results_pending_twice() {
    let broker = Arc::new(FakeBroker::new());
    let shared = Arc::new(Shared::default());
    // Another replica recorded this result and died before delivering it.
    let other = ResultIntake::new(shared.clone(), Arc::new(Metrics::new()));
    other.record(&result("orphaned", Outcome::Succeeded)).await.unwrap();

    let gate = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let open = gate.clone();
    let intake = ResultIntake::new(shared.clone(), Arc::new(Metrics::new()));
    let shutdown = CancellationToken::new();
    let task = tokio::spawn(
        DeliveryLoop::new(broker.clone(), intake.clone())
            .with_rescan(Duration::from_millis(50))
            .with_sweep_gate(Arc::new(move || open.load(std::sync::atomic::Ordering::SeqCst)))
            .run(shutdown.clone()),
    );
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(broker.results().is_empty(), "not the sweeper: other processes' results are left alone");
    assert_eq!(shared.listings.load(std::sync::atomic::Ordering::SeqCst), 0, "and the store is not even listed");
    gate.store(true, std::sync::atomic::Ordering::SeqCst);
    until("the sweeper delivers it", || broker.results().contains_key(&JobId::new("orphaned").unwrap())).await;
    shutdown.cancel();
    task.await.unwrap();

    // Once sweeping, a result that appears between two sweeps waits for the second:
    // its own process is delivering it.
    let mut previous = Some(HashSet::new());
    other.record(&result("in-hand", Outcome::Failed)).await.unwrap();
    let delivery = DeliveryLoop::new(broker.clone(), intake.clone());
    assert_eq!(delivery.sweep(&mut previous).await.delivered, 0);
    assert_eq!(delivery.sweep(&mut previous).await.delivered, 1);
    assert_eq!(broker.results().len(), 2);
}

#[tokio::test]
async fn the_first_sweep_takes_only_what_was_pending_before_results_could_arrive() {
    // Left pending by a previous run; then, with the loop's snapshot taken, a result
    // arrives through this process (it is the fresh queue's, whenever a sweep runs).
    let broker = Arc::new(FakeBroker::new());
    let shared = Arc::new(Shared::default());
    let intake = ResultIntake::new(shared.clone(), Arc::new(Metrics::new()));
    intake.store().inner.record(&result("left-over", Outcome::Succeeded)).await.unwrap();
    let startup: HashSet<JobId> = intake.store().pending().await.unwrap().into_iter().map(|r| r.job_id).collect();
    // Recorded in the store but not yet queued fresh (the instant the race is about).
    intake.store().inner.record(&result("arriving", Outcome::Succeeded)).await.unwrap();
    let delivery = DeliveryLoop::new(broker.clone(), intake.clone()).with_startup_pending(startup.clone());
    let mut previous = delivery.startup_pending.clone();
    assert_eq!(delivery.sweep(&mut previous).await.delivered, 1);
    let sent: Vec<_> = broker.results().into_keys().collect();
    assert_eq!(sent, vec![JobId::new("left-over").unwrap()], "the arriving result is not the sweep's to send");
}

/// Lets other tasks run in the middle of every submission, as a real network call does.
struct YieldingBroker(FakeBroker);

impl BrokerApi for YieldingBroker {
    async fn poll(&self, req: &common::broker::PollRequest) -> Result<crate::broker::PolledBatch, BrokerError> {
        self.0.poll(req).await
    }
    async fn ack(&self, id: &JobId, req: &common::broker::AckRequest) -> Result<(), BrokerError> {
        self.0.ack(id, req).await
    }
    async fn release(&self, id: &JobId, req: &common::broker::ReleaseRequest) -> Result<(), BrokerError> {
        self.0.release(id, req).await
    }
    async fn submit_result(&self, result: &JobResult) -> Result<SubmitOutcome, BrokerError> {
        for _ in 0..3 {
            tokio::task::yield_now().await;
        }
        self.0.submit_result(result).await
    }
    async fn queue_stats(&self) -> Result<common::broker::QueueStats, BrokerError> {
        self.0.queue_stats().await
    }
}

/// Each delivery runs in its own job's span, entered only while that delivery is polled:
/// another task's lines logged while a submission waits never carry its job id.
#[tokio::test(flavor = "current_thread")]
async fn log_lines_carry_their_own_job_id_not_the_one_being_delivered() {
    let (captured, _default) = crate::dispatcher::fakes::LogCapture::install();

    let broker = Arc::new(YieldingBroker(FakeBroker::new()));
    let intake = ResultIntake::new(MemoryResultStore::new(), Arc::new(Metrics::new()));
    for i in 0..3 {
        intake.record(&result(&format!("d{i}"), Outcome::Succeeded)).await.unwrap();
    }
    let delivery = DeliveryLoop::new(broker.clone(), intake.clone());
    let other = intake.clone();
    let logging_meanwhile = tokio::spawn(async move {
        for i in 0..20 {
            other.record(&result(&format!("other{i}"), Outcome::Failed)).await.unwrap();
            tokio::task::yield_now().await;
        }
    });
    assert_eq!(delivery.deliver_pending().await.delivered, 3);
    logging_meanwhile.await.unwrap();

    let text = captured.text();
    let mut checked = 0;
    for line in text.lines() {
        let Some(rest) = line.split_once("deliver{job_id=").map(|(_, r)| r) else { continue };
        let span_id = rest.split('}').next().unwrap();
        for (_, field) in line.match_indices(" job_id=").map(|(i, _)| line.split_at(i)) {
            let event_id = field[" job_id=".len()..].split_whitespace().next().unwrap();
            assert_eq!(event_id, span_id, "a line in job {span_id}'s span names job {event_id}: {line}");
            checked += 1;
        }
    }
    assert!(checked >= 3, "the delivered lines were seen: {text}");
}
