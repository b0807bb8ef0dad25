use super::*;
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
