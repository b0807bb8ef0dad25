//! End to end on one machine: embedded broker (in process), job manager with the local
//! executor, the real `sidecar` and `test-runtime` binaries.
#![allow(clippy::unwrap_used)] // in a test, an unwrap is an assertion
mod jm_support;

use common::{JobId, Outcome};
use jm_support::*;
use job_manager::app::{App, AppSettings, Handle};
use job_manager::backend::local::LocalBackend;
use job_manager::broker::embedded::{EmbeddedBroker, EmbeddedOptions};
use serde_json::json;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

fn broker(visibility: Duration) -> EmbeddedBroker {
    EmbeddedBroker::new(EmbeddedOptions {
        visibility_timeout: visibility,
        location_key: common::secret::Secret::new("k"),
    })
}

fn id(s: &str) -> JobId {
    JobId::new(s).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_job_ends_in_exactly_one_outcome() {
    let dir = TempDir::new("outcomes");
    let origin = Origin::start().await;
    let v = validated(dir.path(), "");
    let broker = broker(Duration::from_secs(30));
    let jobs = [
        job("ok", 20, json!({"action": "fetch", "url": format!("{}/ok", origin.url), "expectStatus": 200})),
        job(
            "refused",
            20,
            json!({"action": "fetch", "url": "http://169.254.169.254/latest/meta-data/", "expectStatus": 200}),
        ),
        job("fails", 20, json!({"action": "fail", "message": "check failed on purpose"})),
        job("exits", 20, json!({"action": "exit", "code": 7})),
        job("crashes", 20, json!({"action": "crash"})),
        job("slow", 1, json!({"action": "sleep", "secs": 30})),
    ];
    for j in &jobs {
        broker.submit(j.clone()).unwrap();
    }
    let handle = start_local(&v, Arc::new(broker.clone())).await;
    let results = broker.wait_for_results(jobs.len(), Duration::from_secs(60)).await;
    let metrics = handle.metrics.encode();
    handle.stop().await.unwrap();

    let outcome = |s: &str| results.get(&id(s)).map(|r| r.outcome);
    assert_eq!(outcome("ok"), Some(Outcome::Succeeded), "{results:?}");
    assert_eq!(outcome("refused"), Some(Outcome::Failed));
    assert!(results[&id("refused")].message.contains("403"), "{}", results[&id("refused")].message);
    assert_eq!(outcome("fails"), Some(Outcome::Failed));
    assert_eq!(results[&id("fails")].message, "check failed on purpose");
    assert_eq!(outcome("exits"), Some(Outcome::Failed));
    let exits = &results[&id("exits")];
    assert!(
        exits.message.contains("exit status: 7") && exits.message.contains("without reporting a result"),
        "{}",
        exits.message
    );
    assert!(
        exits.output["output_tail"].as_str().unwrap().contains("test-runtime"),
        "output tail carried: {}",
        exits.output
    );
    assert_eq!(outcome("crashes"), Some(Outcome::Failed));
    assert!(results[&id("crashes")].message.contains("signal"), "{}", results[&id("crashes")].message);
    assert_eq!(outcome("slow"), Some(Outcome::TimedOut));
    assert_eq!(origin.hits("/ok"), 1);
    for j in &jobs {
        let c = broker.counters(&j.id).unwrap();
        assert_eq!((c.deliveries, c.acks, c.releases), (1, 1, 0), "{}: {c:?}", j.id);
        assert_eq!((c.results_accepted, c.results_conflicting), (1, 0), "{}: exactly one outcome: {c:?}", j.id);
    }
    // Nothing leaks: every job dir (job file, token, spool) is gone.
    let left: Vec<_> = std::fs::read_dir(dir.path().join("state/jobs")).unwrap().collect();
    assert!(left.is_empty(), "job dirs left behind: {left:?}");
    assert!(metrics.contains("job_manager_job_results_total{outcome=\"timed_out\"} 1"), "{metrics}");
    assert!(metrics.contains("job_manager_jobs_acked_total 6"), "{metrics}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redelivered_job_is_not_run_twice() {
    let dir = TempDir::new("redeliver");
    let origin = Origin::start().await;
    let v = validated(dir.path(), "");
    // A short lease: the lost ack makes the broker re-deliver while the job still runs.
    let inner = broker(Duration::from_millis(500));
    let flaky = Arc::new(FlakyBroker::new(inner.clone()));
    flaky.drop_acks.store(4, Ordering::SeqCst); // every retry of the first ack is lost
    let payload = json!({"action": "steps", "steps": [
        {"action": "fetch", "url": format!("{}/started", origin.url), "expectStatus": 200},
        {"action": "sleep", "secs": 3},
    ]});
    inner.submit(job("once", 20, payload)).unwrap();
    let handle = start_local(&v, flaky.clone()).await;
    let result = inner.wait_for_result(&id("once"), Duration::from_secs(30)).await;
    handle.stop().await.unwrap();
    assert_eq!(result.map(|r| r.outcome), Some(Outcome::Succeeded));
    let c = inner.counters(&id("once")).unwrap();
    assert!(c.deliveries >= 2, "the broker re-delivered it: {c:?}");
    assert_eq!(c.acks, 1, "the re-delivery was acked: {c:?}");
    assert_eq!(origin.hits("/started"), 1, "the runtime ran once");
    assert_eq!(c.results_accepted, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broker_down_for_a_while_loses_no_result() {
    let dir = TempDir::new("down");
    let v = validated(dir.path(), "");
    let inner = broker(Duration::from_secs(30));
    let flaky = Arc::new(FlakyBroker::new(inner.clone()));
    flaky.results_down.store(true, Ordering::SeqCst);
    inner.submit(job("kept", 20, json!({"action": "fail", "message": "kept while the broker was down"}))).unwrap();
    let handle = start_local(&v, flaky.clone()).await;
    let metrics = handle.metrics.clone();
    eventually("result recorded by the job manager", Duration::from_secs(30), || {
        metrics.encode().contains("job_manager_job_results_total{outcome=\"failed\"} 1")
    })
    .await;
    eventually("a failed delivery attempt", Duration::from_secs(10), || {
        !metrics.encode().contains("job_manager_result_delivery_retries_total 0")
    })
    .await;
    assert!(inner.result(&id("kept")).is_none(), "broker still down");
    flaky.results_down.store(false, Ordering::SeqCst);
    let result = inner.wait_for_result(&id("kept"), Duration::from_secs(60)).await.expect("delivered after the outage");
    handle.stop().await.unwrap();
    assert_eq!(result.message, "kept while the broker was down");
    assert_eq!(inner.counters(&id("kept")).unwrap().results_accepted, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_stops_running_jobs_after_grace_and_reports_them() {
    let dir = TempDir::new("grace");
    let v = validated(dir.path(), "");
    let broker = broker(Duration::from_secs(30));
    broker.submit(job("long", 60, json!({"action": "sleep", "secs": 60}))).unwrap();
    let handle = start_local(&v, Arc::new(broker.clone())).await;
    let state = dir.path().join("state/jobs");
    eventually("job running", Duration::from_secs(20), || broker.counters(&id("long")).is_some_and(|c| c.acks == 1))
        .await;
    let readiness = handle.readiness.clone();
    handle.stop().await.unwrap();
    assert!(readiness.check().is_err(), "not ready once draining");
    let r = broker.result(&id("long")).expect("reported before exit");
    assert_eq!(r.outcome, Outcome::Failed);
    assert!(r.message.contains("shut down"), "{}", r.message);
    assert_eq!(std::fs::read_dir(state).unwrap().count(), 0, "runtime and its dir are gone");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn runtime_sees_only_its_contract_environment() {
    let dir = TempDir::new("env");
    // A second runtime type that prints its environment and exits without a result, so
    // the environment comes back in the `failed` result's output tail.
    let yaml = local_yaml(
        "internalApiKey: very-secret-internal-key\nuserDefinedVariables: {userDefinedJson: '{\"ENVIRONMENT\": \"it\"}'}\n",
    )
    .replace("sidecar:\n", "  - name: env-dump\n    command: [/bin/sh, -c, 'env; exit 3']\nsidecar:\n  noProxy: [internal.example]\n");
    let file = dir.path().join("config.yaml");
    std::fs::write(&file, yaml).unwrap();
    let flags = [
        job_manager::config::FlagOverride::new("listen", "127.0.0.1:0"),
        job_manager::config::FlagOverride::new("brokerApiEndpoint", "embedded"),
        job_manager::config::FlagOverride::new("stateDir", dir.path().join("state").display().to_string()),
    ];
    let v = job_manager::config::validate(
        job_manager::config::load(Some(&file), &std::collections::BTreeMap::new(), &flags).unwrap(),
    )
    .unwrap();
    let broker = broker(Duration::from_secs(30));
    let mut j = job("env", 20, json!({}));
    j.runtime_type = "env-dump".into();
    broker.submit(j).unwrap();
    let handle = start_local(&v, Arc::new(broker.clone())).await;
    let result = broker.wait_for_result(&id("env"), Duration::from_secs(30)).await.expect("result");
    handle.stop().await.unwrap();
    let env = result.output["output_tail"].as_str().unwrap().to_string();
    let vars: std::collections::BTreeMap<&str, &str> = env.lines().filter_map(|l| l.split_once('=')).collect();
    let proxy = vars["JOB_API_URL"];
    assert!(proxy.starts_with("http://127.0.0.1:"), "{env}");
    for name in ["HTTP_PROXY", "HTTPS_PROXY", "http_proxy", "https_proxy"] {
        assert_eq!(vars.get(name), Some(&proxy), "{name}: {env}");
    }
    assert_eq!(vars.get("NO_PROXY"), Some(&"internal.example"), "{env}");
    assert_eq!(vars.get("USER_DEFINED_VARIABLES"), Some(&r#"{"ENVIRONMENT":"it"}"#), "{env}");
    assert!(!env.contains("very-secret-internal-key"), "the internal key never reaches the runtime: {env}");
    assert!(!env.contains("v1."), "no job token in the runtime's environment: {env}");
    for leaked in ["SIDECAR_", "CARGO_", "JM_"] {
        assert!(!vars.keys().any(|k| k.starts_with(leaked)), "{leaked}* leaked: {env}");
    }
}

/// A timed-out result reports the time the job was given: `timeout_secs: 0` runs with
/// the 1 s floor and says 1 s, not the 0 it asked for.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_timeout_reports_the_time_the_job_was_given() {
    let dir = TempDir::new("timeout-floor");
    let v = validated(dir.path(), "");
    let broker = broker(Duration::from_secs(30));
    broker.submit(job("no-timeout-given", 0, json!({"action": "sleep", "secs": 30}))).unwrap();
    let handle = start_local(&v, Arc::new(broker.clone())).await;
    let results = broker.wait_for_results(1, Duration::from_secs(30)).await;
    handle.stop().await.unwrap();
    let r = &results[&id("no-timeout-given")];
    assert_eq!(
        (r.outcome, r.message.as_str()),
        (Outcome::TimedOut, "runtime exceeded its timeout (1s) and was killed")
    );
}

/// A runtime that leaves a background child behind and exits normally: the child is
/// in the runtime's process group and must not outlive the job.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_runtime_s_background_children_do_not_outlive_a_normal_exit() {
    let dir = TempDir::new("children");
    // The pid goes to the output (which the failed result carries): as root, the runtime
    // runs under a UID of its own that cannot write to the test's dirs.
    let command = ["/bin/sh".to_string(), "-c".to_string(), "sleep 300 & echo \"child=$!\"; exit 0".to_string()];
    let v = validated_from(dir.path(), &local_yaml_running(&command, ""));
    let broker = broker(Duration::from_secs(30));
    broker.submit(job("leaves-a-child", 20, json!({}))).unwrap();
    let handle = start_local(&v, Arc::new(broker.clone())).await;
    let results = broker.wait_for_results(1, Duration::from_secs(30)).await;
    handle.stop().await.unwrap();

    assert_eq!(results[&id("leaves-a-child")].outcome, Outcome::Failed, "exited 0 without a result: {results:?}");
    let tail = results[&id("leaves-a-child")].output["output_tail"].as_str().unwrap().to_string();
    let child: i32 = tail.lines().find_map(|l| l.strip_prefix("child=")).expect("pid in the output").parse().unwrap();
    let gone = || !std::path::Path::new(&format!("/proc/{child}")).exists() || is_zombie(child);
    for _ in 0..50 {
        if gone() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(child), nix::sys::signal::Signal::SIGKILL);
    panic!("the runtime's background child {child} outlived the job");
}

/// A runtime that writes 50 MB to stdout: the job dir never holds more than the cap of
/// it, the job still ends with its true result, and what was not kept is counted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_runtime_writing_50_mb_keeps_less_than_the_cap_on_disk_and_ends_correctly() {
    const WRITTEN: u64 = 50_000_000;
    let cap = job_manager::backend::local::output::DEFAULT_CAP_BYTES;
    let dir = TempDir::new("noisy");
    let script = format!("yes | head -c {WRITTEN}; echo; echo THE-END; sleep 1; exit 3");
    let command = ["/bin/sh".to_string(), "-c".to_string(), script];
    let v = validated_from(dir.path(), &local_yaml_running(&command, ""));
    let broker = broker(Duration::from_secs(30));
    broker.submit(job("noisy", 30, json!({}))).unwrap();
    let log = dir.path().join("state/jobs/j-noisy/runtime.log");
    let watching = tokio::spawn(async move {
        let mut most = 0;
        for _ in 0..1000 {
            most = most.max(job_manager::backend::local::output::kept_bytes(&log));
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        most
    });
    let handle = start_local(&v, Arc::new(broker.clone())).await;
    let results = broker.wait_for_results(1, Duration::from_secs(60)).await;
    let metrics = handle.metrics.encode();
    handle.stop().await.unwrap();
    let most = watching.await.unwrap();

    let r = &results[&id("noisy")];
    assert_eq!(r.outcome, Outcome::Failed, "{r:?}");
    assert!(r.message.contains("exit status: 3") && r.message.contains("without reporting a result"), "{}", r.message);
    assert!(r.message.contains("bytes of earlier output were not kept"), "{}", r.message);
    assert!(r.output["output_tail"].as_str().unwrap().ends_with("THE-END\n"), "{}", r.output["output_tail"]);
    let dropped = r.output["output_dropped_bytes"].as_u64().unwrap();
    assert!(dropped >= WRITTEN - cap && dropped <= WRITTEN, "dropped {dropped} of {WRITTEN}");
    assert!(most > 0 && most <= cap, "at most the cap on disk, saw {most}");
    let counted: u64 = metrics
        .lines()
        .find_map(|l| l.strip_prefix("job_manager_local_output_dropped_bytes_total "))
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("dropped-bytes metric: {metrics}"));
    assert!(counted >= dropped, "{counted} < {dropped}");
}

/// The wall clock jumps a day forward while a job runs: its token is past its expiry
/// when the sidecar delivers, and the result API still takes it, since the job runs here.
/// (The executor would also record the spooled result when the runtime exits; the API's
/// own answers show that the sidecar's delivery was not refused.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_forward_clock_jump_does_not_fail_a_running_job() {
    let dir = TempDir::new("clock");
    let origin = Origin::start().await;
    let v = validated(dir.path(), "");
    let broker = broker(Duration::from_secs(30));
    let payload = json!({"action": "steps", "steps": [
        {"action": "fetch", "url": format!("{}/started", origin.url), "expectStatus": 200},
        {"action": "sleep", "secs": 1},
    ]});
    broker.submit(job("jumped", 20, payload)).unwrap();
    let handle = start_local(&v, Arc::new(broker.clone())).await;
    origin.wait_hit("/started", Duration::from_secs(20)).await;
    job_manager::clock::jump(Duration::from_secs(24 * 3600));
    let result = broker.wait_for_result(&id("jumped"), Duration::from_secs(30)).await;
    let metrics = handle.metrics.encode();
    handle.stop().await.unwrap();
    let result = result.expect("a result");
    assert_eq!(result.outcome, Outcome::Succeeded, "{}", result.message);
    assert_eq!(broker.counters(&id("jumped")).unwrap().results_accepted, 1);
    assert!(!metrics.contains("job_manager_result_api_requests_total{code=\"401\"}"), "token refused: {metrics}");
}

fn is_zombie(pid: i32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .map(|s| s.rsplit_once(')').is_some_and(|(_, rest)| rest.trim_start().starts_with('Z')))
        .unwrap_or(true)
}

/// The job manager on the local executor, as `job-manager run` wires it.
async fn start_local<B: job_manager::broker::BrokerApi>(v: &job_manager::config::Validated, broker: Arc<B>) -> Handle {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let backend = LocalBackend::new(v).unwrap();
    App::start(AppSettings::from(v), broker, backend, listener).await.unwrap()
}
