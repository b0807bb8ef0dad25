//! The real `job-manager` binary killed with SIGKILL and restarted, against the embedded
//! broker served over HTTP (it outlives the job manager, like a remote broker):
//! - a job polled but not yet handed off is re-delivered by the broker and runs once;
//! - a job running at the kill is adopted by the restarted process and reports once;
//! - a result received but not yet delivered (broker down) is delivered after restart.
#![allow(clippy::unwrap_used)] // in a test, an unwrap is an assertion
mod jm_support;

use common::secret::Secret;
use common::{JobId, Outcome};
use jm_support::*;
use job_manager::broker::embedded::{EmbeddedBroker, EmbeddedOptions};
use serde_json::json;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

const LOCATION_KEY: &str = "restart-test-key";

struct Rig {
    dir: TempDir,
    broker: EmbeddedBroker,
    broker_url: String,
    listen: String,
    origin: Origin,
    _stop: tokio::sync::oneshot::Sender<()>,
}

impl Rig {
    async fn new(tag: &str, visibility: Duration, sidecar_binary: Option<&Path>) -> Rig {
        let dir = TempDir::new(tag);
        let broker = EmbeddedBroker::new(EmbeddedOptions {
            visibility_timeout: visibility,
            location_key: Secret::new(LOCATION_KEY),
        });
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let broker_url = format!("http://{}", listener.local_addr().unwrap());
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        tokio::spawn(broker.clone().serve(listener, async move {
            let _ = stopped.await;
        }));
        // A fixed port: the restarted job manager must be reachable where the adopted
        // sidecars deliver (as a Service name is in a cluster).
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let mut yaml = local_yaml("");
        if let Some(sc) = sidecar_binary {
            yaml = yaml.replace(
                &format!("{:?}", bin("sidecar").display().to_string()),
                &format!("{:?}", sc.display().to_string()),
            );
        }
        std::fs::write(dir.path().join("config.yaml"), yaml).unwrap();
        Rig { dir, broker, broker_url, listen: format!("127.0.0.1:{port}"), origin: Origin::start().await, _stop: stop }
    }

    /// Start the job manager process and wait until it serves. The caller waits for the
    /// child (`sigkill` / `stop`).
    async fn start_job_manager(&self, run: u32) -> Child {
        self.start_job_manager_with(run, &[]).await
    }

    /// [`Self::start_job_manager`] with extra environment (e.g. a `JM_TEST_ABORT_AT` point).
    #[allow(clippy::zombie_processes)]
    async fn start_job_manager_with(&self, run: u32, env: &[(&str, &str)]) -> Child {
        let log = std::fs::File::create(self.dir.path().join(format!("jm-{run}.log"))).unwrap();
        let mut child = Command::new(job_manager_bin())
            .envs(env.iter().copied())
            .arg("--config")
            .arg(self.dir.path().join("config.yaml"))
            .env("JM_BROKER_API_ENDPOINT", &self.broker_url)
            .env("JM_LOCATION_KEY", LOCATION_KEY)
            .env("JM_LISTEN", &self.listen)
            .env("JM_STATE_DIR", self.dir.path().join("state"))
            .env("JM_LOG_LEVEL", "DEBUG")
            .stdout(Stdio::from(log.try_clone().unwrap()))
            .stderr(Stdio::from(log))
            .spawn()
            .unwrap();
        let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
        loop {
            if let Ok(s) = tokio::net::TcpStream::connect(&self.listen).await {
                drop(s);
                if request(&self.listen, "GET", "/healthz", &[], vec![]).await.status == 200 {
                    return child;
                }
            }
            if tokio::time::Instant::now() >= deadline {
                let _ = child.kill();
                let _ = child.wait();
                panic!("job manager did not start: {}", self.log(run));
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    fn log(&self, run: u32) -> String {
        std::fs::read_to_string(self.dir.path().join(format!("jm-{run}.log"))).unwrap_or_default()
    }

    fn job_dir(&self, job: &str) -> std::path::PathBuf {
        self.dir.path().join(format!("state/jobs/j-{job}"))
    }

    /// A pid recorded in a job's `meta.json` (`sidecar` or `runtime`).
    fn recorded_pid(&self, job: &str, which: &str) -> Option<i32> {
        let meta = std::fs::read(self.job_dir(job).join("meta.json")).ok()?;
        let meta: serde_json::Value = serde_json::from_slice(&meta).ok()?;
        meta[which]["pid"].as_i64().map(|p| p as i32)
    }

    /// Live processes started for this rig's job `job` (its sidecar or its runtime and
    /// what that started), found by the environment the executor gives them.
    fn processes_of(&self, job: &str) -> Vec<u32> {
        let markers = [
            format!("SIDECAR_JOB_DIR={}", self.job_dir(job).join("sidecar").display()),
            format!("HOME={}", self.dir.path().join(format!("state/scratch/j-{job}")).display()),
        ];
        let mut found = Vec::new();
        for entry in std::fs::read_dir("/proc").unwrap().flatten() {
            let Some(pid) = entry.file_name().to_str().and_then(|n| n.parse::<u32>().ok()) else { continue };
            let Ok(env) = std::fs::read(format!("/proc/{pid}/environ")) else { continue };
            let zombie = std::fs::read_to_string(format!("/proc/{pid}/stat"))
                .ok()
                .and_then(|s| s.rfind(')').and_then(|i| s[i + 2..].chars().next()))
                .is_none_or(|c| c == 'Z' || c == 'X');
            if !zombie && env.split(|&b| b == 0).any(|kv| markers.iter().any(|m| kv == m.as_bytes())) {
                found.push(pid);
            }
        }
        found
    }

    fn job_dirs(&self) -> usize {
        std::fs::read_dir(self.dir.path().join("state/jobs")).map(|d| d.count()).unwrap_or(0)
    }

    async fn metrics(&self) -> String {
        request(&self.listen, "GET", "/metrics", &[], vec![]).await.body
    }
}

fn sigkill(mut child: Child) {
    child.kill().unwrap(); // std's kill is SIGKILL
    child.wait().unwrap();
}

fn stop(child: Child) {
    let _ = Command::new("kill").arg("-TERM").arg(child.id().to_string()).status();
    let mut child = child;
    child.wait().unwrap();
}

fn id(s: &str) -> JobId {
    JobId::new(s).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unacked_job_is_redelivered_after_sigkill_and_runs_once() {
    // A sidecar that takes 2 s to start keeps the hand-off (and so the ack) pending.
    let tmp = TempDir::new("slow-sidecar");
    let slow = tmp.path().join("slow-sidecar.sh");
    std::fs::write(&slow, format!("#!/bin/sh\nsleep 2\nexec {:?}\n", bin("sidecar").display().to_string())).unwrap();
    std::fs::set_permissions(&slow, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let rig = Rig::new("unacked", Duration::from_secs(4), Some(&slow)).await;
    let payload = json!({"action": "fetch", "url": format!("{}/ran", rig.origin.url), "expectStatus": 200});
    rig.broker.submit(job("unacked", 20, payload)).unwrap();
    let jm = rig.start_job_manager(1).await;
    eventually("hand-off in progress", Duration::from_secs(20), || rig.job_dirs() == 1).await;
    sigkill(jm);
    assert_eq!(rig.broker.counters(&id("unacked")).unwrap().acks, 0, "killed before the ack");
    let jm = rig.start_job_manager(2).await;
    let result = rig.broker.wait_for_result(&id("unacked"), Duration::from_secs(40)).await;
    let log = rig.log(2);
    stop(jm);
    assert_eq!(result.map(|r| r.outcome), Some(Outcome::Succeeded), "log: {log}");
    let c = rig.broker.counters(&id("unacked")).unwrap();
    assert!(c.deliveries >= 2, "re-delivered by the broker: {c:?}");
    // Exactly one outcome. (The ack itself may lose the race with a lease expiry on a
    // loaded machine; the broker then closes the job by its result alone.)
    assert_eq!((c.results_accepted, c.results_conflicting, c.releases), (1, 0, 0), "{c:?}");
    assert!(c.acks <= 1, "{c:?}");
    assert_eq!(rig.origin.hits("/ran"), 1, "ran exactly once");
    assert_eq!(rig.job_dirs(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn running_job_is_adopted_after_sigkill_and_reports_once() {
    let rig = Rig::new("adopt", Duration::from_secs(30), None).await;
    let payload = json!({"action": "steps", "steps": [
        {"action": "fetch", "url": format!("{}/started", rig.origin.url), "expectStatus": 200},
        {"action": "sleep", "secs": 2},
        {"action": "fetch", "url": format!("{}/done", rig.origin.url), "expectStatus": 200},
    ]});
    rig.broker.submit(job("adopted", 30, payload)).unwrap();
    let jm = rig.start_job_manager(1).await;
    rig.origin.wait_hit("/started", Duration::from_secs(20)).await;
    eventually("acked", Duration::from_secs(10), || rig.broker.counters(&id("adopted")).is_some_and(|c| c.acks == 1))
        .await;
    sigkill(jm);
    let jm = rig.start_job_manager(2).await;
    let result = rig.broker.wait_for_result(&id("adopted"), Duration::from_secs(40)).await;
    let log = rig.log(2);
    stop(jm);
    assert_eq!(result.map(|r| r.outcome), Some(Outcome::Succeeded), "log: {log}");
    assert!(log.contains("adopting"), "restart adopted the job: {log}");
    let c = rig.broker.counters(&id("adopted")).unwrap();
    assert_eq!((c.deliveries, c.acks, c.results_accepted, c.results_conflicting), (1, 1, 1, 0), "{c:?}");
    assert_eq!((rig.origin.hits("/started"), rig.origin.hits("/done")), (1, 1), "ran once, to the end");
    assert_eq!(rig.job_dirs(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn received_result_is_delivered_after_sigkill_and_restart() {
    let rig = Rig::new("undelivered", Duration::from_secs(30), None).await;
    let payload = json!({"action": "steps", "steps": [
        {"action": "fetch", "url": format!("{}/started", rig.origin.url), "expectStatus": 200},
        {"action": "sleep", "secs": 1},
        {"action": "fail", "message": "reported while the broker was down"},
    ]});
    rig.broker.submit(job("pending", 30, payload)).unwrap();
    let jm = rig.start_job_manager(1).await;
    rig.origin.wait_hit("/started", Duration::from_secs(20)).await;
    eventually("acked", Duration::from_secs(10), || rig.broker.counters(&id("pending")).is_some_and(|c| c.acks == 1))
        .await;
    rig.broker.faults().set_down(true);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while !rig.metrics().await.contains("job_manager_job_results_total{outcome=\"failed\"} 1") {
        assert!(tokio::time::Instant::now() < deadline, "result never recorded: {}", rig.log(1));
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    sigkill(jm);
    assert!(rig.broker.result(&id("pending")).is_none(), "not delivered before the kill");
    rig.broker.faults().set_down(false);
    let jm = rig.start_job_manager(2).await;
    let result = rig.broker.wait_for_result(&id("pending"), Duration::from_secs(30)).await;
    let log = rig.log(2);
    stop(jm);
    let result = result.unwrap_or_else(|| panic!("delivered after restart; log: {log}"));
    assert_eq!(result.outcome, Outcome::Failed);
    assert!(result.message.contains("reported while the broker was down"), "{}", result.message);
    assert_eq!(rig.broker.counters(&id("pending")).unwrap().results_accepted, 1);
}

/// As root, each job holds a UID slot, recorded in its `meta.json`: a job adopted after a
/// restart keeps its slot, and a job started next to it takes another.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_adopted_job_keeps_its_uid_slot() {
    if !nix::unistd::geteuid().is_root() {
        println!("skipped: UID slots exist only when the job manager runs as root (CI runs as root)");
        return;
    }
    let rig = Rig::new("slots", Duration::from_secs(30), None).await;
    let steps = |name: &str, secs: u32| {
        json!({"action": "steps", "steps": [
            {"action": "fetch", "url": format!("{}/{name}", rig.origin.url), "expectStatus": 200},
            {"action": "sleep", "secs": secs},
        ]})
    };
    rig.broker.submit(job("first", 30, steps("first", 4))).unwrap();
    let jm = rig.start_job_manager(1).await;
    rig.origin.wait_hit("/first", Duration::from_secs(20)).await;
    eventually("acked", Duration::from_secs(10), || rig.broker.counters(&id("first")).is_some_and(|c| c.acks == 1))
        .await;
    sigkill(jm);
    let jm = rig.start_job_manager(2).await;
    rig.broker.submit(job("second", 30, steps("second", 1))).unwrap();
    rig.origin.wait_hit("/second", Duration::from_secs(20)).await;
    let slot = |job: &str| -> Option<u64> {
        let meta = std::fs::read(rig.dir.path().join(format!("state/jobs/j-{job}/meta.json"))).ok()?;
        serde_json::from_slice::<serde_json::Value>(&meta).ok()?["uid_slot"].as_u64()
    };
    let slots = (slot("first"), slot("second"));
    let results = rig.broker.wait_for_results(2, Duration::from_secs(40)).await;
    stop(jm);
    assert_eq!(slots, (Some(0), Some(1)), "the adopted job kept slot 0; the new one took the next free");
    assert!(results.values().all(|r| r.outcome == Outcome::Succeeded), "{results:?}");
}

/// The machine went down with the job manager: the runtime had reported (its sidecar
/// spooled the result, unable to deliver it) and the sidecar is gone too. The restarted
/// job manager records the spooled result instead of calling the job lost.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_result_spooled_while_the_job_manager_was_down_is_recorded_after_restart() {
    let rig = Rig::new("spooled", Duration::from_secs(30), None).await;
    let payload = json!({"action": "steps", "steps": [
        {"action": "fetch", "url": format!("{}/started", rig.origin.url), "expectStatus": 200},
        {"action": "sleep", "secs": 1},
    ]});
    rig.broker.submit(job("spooled", 30, payload)).unwrap();
    let jm = rig.start_job_manager(1).await;
    rig.origin.wait_hit("/started", Duration::from_secs(20)).await;
    eventually("acked", Duration::from_secs(10), || rig.broker.counters(&id("spooled")).is_some_and(|c| c.acks == 1))
        .await;
    sigkill(jm);
    let spool = rig.job_dir("spooled").join("sidecar/spool/spooled.json");
    eventually("result spooled by the sidecar", Duration::from_secs(20), || spool.is_file()).await;
    let sidecar = rig.recorded_pid("spooled", "sidecar").expect("sidecar pid recorded");
    let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(sidecar), nix::sys::signal::Signal::SIGKILL);
    eventually("runtime and sidecar gone", Duration::from_secs(10), || rig.processes_of("spooled").is_empty()).await;
    let jm = rig.start_job_manager(2).await;
    let result = rig.broker.wait_for_result(&id("spooled"), Duration::from_secs(30)).await;
    let log = rig.log(2);
    stop(jm);
    let result = result.unwrap_or_else(|| panic!("no result; log: {log}"));
    assert_eq!(result.outcome, Outcome::Succeeded, "{}; log: {log}", result.message);
    let c = rig.broker.counters(&id("spooled")).unwrap();
    assert_eq!((c.results_accepted, c.results_conflicting), (1, 0), "{c:?}; log: {log}");
    assert_eq!(rig.job_dirs(), 0);
}

/// SIGSTOP past the jobs' deadlines while they finish normally: after SIGCONT the exits
/// and results that came first win over the timers that fire on waking.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_paused_job_manager_records_what_happened_not_timeouts() {
    let rig = Rig::new("paused", Duration::from_secs(60), None).await;
    let names = ["p1", "p2", "p3", "p4"];
    for n in names {
        let payload = json!({"action": "steps", "steps": [
            {"action": "fetch", "url": format!("{}/{n}", rig.origin.url), "expectStatus": 200},
            {"action": "sleep", "secs": 2},
        ]});
        rig.broker.submit(job(n, 5, payload)).unwrap();
    }
    let jm = rig.start_job_manager(1).await;
    for n in names {
        rig.origin.wait_hit(&format!("/{n}"), Duration::from_secs(20)).await;
    }
    let pid = nix::unistd::Pid::from_raw(jm.id() as i32);
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGSTOP).unwrap();
    tokio::time::sleep(Duration::from_secs(9)).await;
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGCONT).unwrap();
    let results = rig.broker.wait_for_results(names.len(), Duration::from_secs(40)).await;
    let log = rig.log(1);
    stop(jm);
    for n in names {
        let r = results.get(&id(n)).unwrap_or_else(|| panic!("{n}: no result; log: {log}"));
        assert_eq!(r.outcome, Outcome::Succeeded, "{n}: {}", r.message);
        let c = rig.broker.counters(&id(n)).unwrap();
        assert_eq!((c.results_accepted, c.results_conflicting), (1, 0), "{n}: {c:?}");
    }
    assert!(!log.contains("refused"), "no result refused: {log}");
}

/// The job manager dies right after spawning the runtime, before recording its pid (the
/// job is not acked yet). The restart finds the runtime, adopts it, and the job runs
/// once and reports its own result; nothing of it is left running.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_right_after_spawning_the_runtime_the_job_runs_once() {
    let rig = Rig::new("abort-runtime", Duration::from_secs(4), None).await;
    let payload = json!({"action": "steps", "steps": [
        {"action": "fetch", "url": format!("{}/ran", rig.origin.url), "expectStatus": 200},
        {"action": "sleep", "secs": 3},
    ]});
    rig.broker.submit(job("handoff", 30, payload)).unwrap();
    let mut jm = rig.start_job_manager_with(1, &[("JM_TEST_ABORT_AT", "runtime-spawned")]).await;
    jm.wait().unwrap();
    assert!(rig.log(1).contains("aborting at runtime-spawned"), "{}", rig.log(1));
    assert_eq!(rig.recorded_pid("handoff", "runtime"), None, "killed before the pid was recorded");
    let jm = rig.start_job_manager(2).await;
    let result = rig.broker.wait_for_result(&id("handoff"), Duration::from_secs(40)).await;
    let log = rig.log(2);
    eventually("the job's processes are gone", Duration::from_secs(20), || rig.processes_of("handoff").is_empty())
        .await;
    stop(jm);
    assert_eq!(result.map(|r| r.outcome), Some(Outcome::Succeeded), "log: {log}");
    assert_eq!(rig.origin.hits("/ran"), 1, "ran exactly once");
    let c = rig.broker.counters(&id("handoff")).unwrap();
    assert_eq!((c.results_accepted, c.results_conflicting, c.releases), (1, 0, 0), "{c:?}");
    assert_eq!(rig.job_dirs(), 0);
}

/// The job manager dies right after spawning the sidecar, before recording its pid: the
/// restart kills that sidecar (found by its environment), the broker re-delivers the
/// unacked job, and it runs once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_right_after_spawning_the_sidecar_leaves_no_orphan_and_the_job_runs_once() {
    let rig = Rig::new("abort-sidecar", Duration::from_secs(4), None).await;
    let payload = json!({"action": "fetch", "url": format!("{}/ran", rig.origin.url), "expectStatus": 200});
    rig.broker.submit(job("early", 30, payload)).unwrap();
    let mut jm = rig.start_job_manager_with(1, &[("JM_TEST_ABORT_AT", "sidecar-spawned")]).await;
    jm.wait().unwrap();
    assert!(rig.log(1).contains("aborting at sidecar-spawned"), "{}", rig.log(1));
    let jm = rig.start_job_manager(2).await;
    let result = rig.broker.wait_for_result(&id("early"), Duration::from_secs(40)).await;
    let log = rig.log(2);
    eventually("the job's processes are gone", Duration::from_secs(20), || rig.processes_of("early").is_empty()).await;
    stop(jm);
    assert_eq!(result.map(|r| r.outcome), Some(Outcome::Succeeded), "log: {log}");
    assert_eq!(rig.origin.hits("/ran"), 1, "ran exactly once");
    assert_eq!(rig.job_dirs(), 0);
}

/// A `meta.json` damaged while the job manager was down: the restart kills the job's
/// processes (their pids were in it) and reports the job failed, saying why.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_corrupt_meta_json_kills_the_job_s_processes_and_reports_it_failed() {
    let rig = Rig::new("corrupt", Duration::from_secs(30), None).await;
    let payload = json!({"action": "steps", "steps": [
        {"action": "fetch", "url": format!("{}/started", rig.origin.url), "expectStatus": 200},
        {"action": "sleep", "secs": 60},
    ]});
    rig.broker.submit(job("corrupt", 120, payload)).unwrap();
    let jm = rig.start_job_manager(1).await;
    rig.origin.wait_hit("/started", Duration::from_secs(20)).await;
    eventually("acked", Duration::from_secs(10), || rig.broker.counters(&id("corrupt")).is_some_and(|c| c.acks == 1))
        .await;
    sigkill(jm);
    assert!(!rig.processes_of("corrupt").is_empty(), "the job runs on without the job manager");
    std::fs::write(rig.job_dir("corrupt").join("meta.json"), b"{\"job\": tru").unwrap();
    let jm = rig.start_job_manager(2).await;
    let result = rig.broker.wait_for_result(&id("corrupt"), Duration::from_secs(30)).await;
    let log = rig.log(2);
    let left = rig.processes_of("corrupt");
    stop(jm);
    let result = result.unwrap_or_else(|| panic!("no result; log: {log}"));
    assert_eq!(result.outcome, Outcome::Failed);
    assert!(result.message.contains("meta.json is not a job record"), "{}", result.message);
    assert!(left.is_empty(), "the job's processes were killed: {left:?}");
    assert_eq!(rig.job_dirs(), 0);
}

/// A restart while the broker is down: the job left running is adopted and its deadline
/// enforced (before, the job manager exited 69 at its broker check and nobody watched
/// it); the timeout reaches the broker once it is back. With nothing running, an
/// unreachable broker still ends the job manager with 69.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restart_during_a_broker_outage_still_enforces_adopted_deadlines() {
    let rig = Rig::new("outage", Duration::from_secs(60), None).await;
    let payload = json!({"action": "steps", "steps": [
        {"action": "fetch", "url": format!("{}/started", rig.origin.url), "expectStatus": 200},
        {"action": "sleep", "secs": 60},
    ]});
    rig.broker.submit(job("outage", 4, payload)).unwrap();
    let jm = rig.start_job_manager(1).await;
    rig.origin.wait_hit("/started", Duration::from_secs(20)).await;
    eventually("acked", Duration::from_secs(10), || rig.broker.counters(&id("outage")).is_some_and(|c| c.acks == 1))
        .await;
    sigkill(jm);
    rig.broker.faults().set_down(true);
    let jm = rig.start_job_manager(2).await;
    eventually("the deadline enforced while the broker is down", Duration::from_secs(30), || {
        rig.job_dirs() == 0 && rig.processes_of("outage").is_empty()
    })
    .await;
    rig.broker.faults().set_down(false);
    let result = rig.broker.wait_for_result(&id("outage"), Duration::from_secs(30)).await;
    let log = rig.log(2);
    stop(jm);
    assert_eq!(result.map(|r| r.outcome), Some(Outcome::TimedOut), "log: {log}");

    rig.broker.faults().set_down(true);
    let status = Command::new(job_manager_bin())
        .arg("--config")
        .arg(rig.dir.path().join("config.yaml"))
        .env("JM_BROKER_API_ENDPOINT", &rig.broker_url)
        .env("JM_LOCATION_KEY", LOCATION_KEY)
        .env("JM_LISTEN", &rig.listen)
        .env("JM_STATE_DIR", rig.dir.path().join("state"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .unwrap();
    assert_eq!(status.code(), Some(69), "nothing running, broker unreachable: EX_UNAVAILABLE");
}

/// The JSON log lines of the real binary, through a whole job: every one has the shape
/// the sidecar's have too (`common::logs`), and the job's lines carry its id at the top.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn json_log_lines_are_flat_with_the_job_id_once() {
    let rig = Rig::new("json-logs", Duration::from_secs(30), None).await;
    let payload = json!({"action": "fetch", "url": format!("{}/ran", rig.origin.url), "expectStatus": 200});
    rig.broker.submit(job("logged", 20, payload)).unwrap();
    let jm = rig.start_job_manager_with(1, &[("JM_LOG_FORMAT", "json")]).await;
    let result = rig.broker.wait_for_result(&id("logged"), Duration::from_secs(40)).await;
    stop(jm);
    let log = rig.log(1);
    assert_eq!(result.map(|r| r.outcome), Some(Outcome::Succeeded), "log: {log}");
    let lines: Vec<_> = log.lines().map(|l| common::logs::check_line(l).unwrap()).collect();
    let started = lines.iter().find(|l| l["message"] == "job manager started").expect("start logged");
    assert_eq!(started["addr"], rig.listen.as_str(), "{started:?}");
    assert!(started["target"].as_str().unwrap().starts_with("job_manager::"), "{started:?}");
    let about_the_job: Vec<_> = lines.iter().filter(|l| l.get("job_id").is_some_and(|j| j == "logged")).collect();
    assert!(about_the_job.len() >= 2, "{log}");
    assert!(lines.iter().all(|l| l["level"].as_str().is_some_and(|v| ["DEBUG", "INFO", "WARN", "ERROR"].contains(&v))));
}
