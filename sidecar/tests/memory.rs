//! The real binary's memory under body floods: 25 concurrent result uploads just
//! short of a 10 MiB body limit (each a valid result, for 25 jobs dispatched through
//! the ingress, as a persistent workload sees them). Before the shared body budget this
//! took the sidecar from ~15 MB to ~281 MB RSS (the pod limit is 256 Mi); now at most
//! `--max-body-memory-bytes` (32 MiB) of bodies are held at once and the rest get 503
//! with Retry-After.
#![allow(clippy::unwrap_used)] // in a test, an unwrap is an assertion
mod support;

use bytes::Bytes;
use http::{Request, StatusCode};
use http_body_util::Full;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;
use support::*;

const BIN: &str = env!("CARGO_BIN_EXE_sidecar");
const KEY: &str = "memory-key-1";
const LIMIT: usize = 10 * 1024 * 1024;
const BUDGET: u64 = 32 * 1024 * 1024;
/// What the sidecar may use beyond its baseline and the body budget: the parsed result
/// and its delivery to the job manager for the few accepted at once, hyper's per-connection
/// buffers, allocator slack.
const SLACK: u64 = 48 * 1024 * 1024;

/// VmRSS of `pid`, bytes.
fn rss(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let kb: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmRSS in /proc/<pid>/status");
    kb * 1024
}

fn wait_ready(path: &std::path::Path, child: &mut Child) -> common::runtime_api::ReadyFile {
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        if let Ok(bytes) = std::fs::read(path) {
            return serde_json::from_slice(&bytes).expect("ready file is complete JSON");
        }
        assert!(child.try_wait().unwrap().is_none(), "sidecar exited early");
        assert!(std::time::Instant::now() < deadline, "no ready file");
        std::thread::sleep(Duration::from_millis(10));
    }
}

struct Killed(Child);
impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_near_limit_uploads_stay_within_the_body_budget() {
    let runtime = Origin::start().await;
    let jm = FakeJobManager::start(&[]).await;
    let dir = temp_dir("memory");
    let ready = dir.join("ready.json");
    let child = Command::new(BIN)
        .env_clear()
        .env("SIDECAR_INTERNAL_API_KEY", KEY)
        .args(["--listen", "127.0.0.1:0", "--ingress-listen", "127.0.0.1:0"])
        // The limit as a job manager with `maxResultBytes: 10485760` would pass it.
        .args(["--max-body-bytes", &LIMIT.to_string()])
        .args(["--ingress-upstream", &runtime.addr.to_string()])
        .args(["--job-manager-url", &format!("http://{}", jm.addr)])
        .args(["--ready-file", ready.to_str().unwrap(), "--log-level", "warn"])
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut child = Killed(child);
    let r = wait_ready(&ready, &mut child.0);
    let (pid, listen, ingress) = (r.pid, r.listen, r.ingress.unwrap());

    const JOBS: usize = 25;
    for i in 0..JOBS {
        let body = format!(r#"{{"id":"mem-{i}","runtime_type":"rt","timeout_secs":60,"attempt":1}}"#);
        let req = Request::post("/v1/jobs")
            .header("host", "runtime")
            .header("x-internal-api-key", KEY)
            .header("x-job-token", format!("tok-{i}"))
            .body(Full::new(Bytes::from(body)))
            .unwrap();
        assert_eq!(send(ingress, req).await.0, StatusCode::OK, "dispatch {i}");
    }
    let baseline = rss(pid);

    // A valid result just short of the limit.
    let prefix = br#"{"outcome":"succeeded","message":""#;
    let suffix = br#""}"#;
    // Short of the limit by the room the job id takes once the sidecar adds it: the
    // result as reported must fit the job manager's limit too, or it is refused (413).
    let size = LIMIT - 64;
    let mut body = Vec::with_capacity(size);
    body.extend_from_slice(prefix);
    body.resize(size - suffix.len(), b'x');
    body.extend_from_slice(suffix);
    let body = Bytes::from(body);

    let peak = Arc::new(AtomicU64::new(baseline));
    let sampling = Arc::new(AtomicBool::new(true));
    let sampler = {
        let (peak, sampling) = (peak.clone(), sampling.clone());
        std::thread::spawn(move || {
            while sampling.load(Ordering::Relaxed) {
                peak.fetch_max(rss(pid), Ordering::Relaxed);
                std::thread::sleep(Duration::from_millis(2));
            }
        })
    };
    let uploads = (0..JOBS).map(|i| {
        let body = body.clone();
        tokio::spawn(async move {
            let req = Request::post(format!("/v1/jobs/mem-{i}/result"))
                .header("host", "127.0.0.1")
                .header("content-type", "application/json")
                .body(Full::new(body))
                .unwrap();
            let (status, headers, _) = send(listen, req).await;
            (status, headers.get("retry-after").cloned())
        })
    });
    let answers: Vec<_> = futures_util::future::join_all(uploads).await.into_iter().map(Result::unwrap).collect();
    // Deliveries of the accepted ones run on after their 202.
    tokio::time::sleep(Duration::from_millis(500)).await;
    sampling.store(false, Ordering::Relaxed);
    sampler.join().unwrap();
    let peak = peak.load(Ordering::Relaxed);
    let after = rss(pid);

    let accepted = answers.iter().filter(|(s, _)| *s == StatusCode::ACCEPTED).count();
    let refused = answers.iter().filter(|(s, r)| *s == StatusCode::SERVICE_UNAVAILABLE && r.is_some()).count();
    let mib = |b: u64| b as f64 / 1048576.0;
    eprintln!(
        "memory: baseline {:.1} MiB, peak {:.1} MiB, after {:.1} MiB; {accepted} accepted, {refused} refused (503 + Retry-After) of {JOBS}",
        mib(baseline),
        mib(peak),
        mib(after)
    );
    assert_eq!(accepted + refused, JOBS, "every upload is accepted or told to retry: {answers:?}");
    assert!(accepted >= 1 && refused >= 1, "{answers:?}");
    let bound = baseline + BUDGET + SLACK;
    assert!(peak < bound, "peak RSS {:.1} MiB over the bound {:.1} MiB", mib(peak), mib(bound));
    // Still serving, and a refused upload succeeds when retried.
    let (status, _, _) =
        send(listen, Request::get("/healthz").header("host", "x").body(Full::default()).unwrap()).await;
    assert_eq!(status, StatusCode::OK);
    let i = answers.iter().position(|(s, _)| *s == StatusCode::SERVICE_UNAVAILABLE).unwrap();
    let req = Request::post(format!("/v1/jobs/mem-{i}/result"))
        .header("host", "127.0.0.1")
        .body(Full::new(Bytes::from_static(br#"{"outcome":"failed","message":"retried"}"#)))
        .unwrap();
    assert_eq!(send(listen, req).await.0, StatusCode::ACCEPTED);
    drop(child);
}
