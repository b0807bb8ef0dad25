//! `jm-bench`: load driver for the job-manager benchmarks (`integration-tests/bench/job-manager/bench.sh`).
//!
//! - `submit`: queue N jobs at an embedded broker's admin API (`POST /admin/v1/jobs`).
//! - `wait-results`: wait until N jobs with a prefix have results at the broker; prints
//!   the seconds since `--since-unix-ms` (end-to-end throughput).
//! - `results`: post N valid results (distinct job ids, tokens minted with the job
//!   manager's signing key) to the result API over C keep-alive connections; prints
//!   results/s, statuses and latency percentiles.
//!
//! Every command prints one JSON object on stdout.

use bytes::Bytes;
use clap::{Parser, Subcommand};
use common::token::TokenSigner;
use common::{JobId, JobResult, Outcome};
use http::{Method, Request, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;
use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

#[derive(Parser)]
#[command(about = "Load driver for the job-manager benchmarks")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    Submit {
        /// Embedded broker base URL, e.g. http://127.0.0.1:7070
        #[arg(long)]
        broker: String,
        #[arg(long)]
        key: String,
        #[arg(long)]
        count: u64,
        #[arg(long, default_value = "bench-")]
        prefix: String,
        #[arg(long, default_value = "node-api-runtime")]
        runtime_type: String,
        /// The job payload (JSON)
        #[arg(long, default_value = r#"{"action":"sleep","secs":0}"#)]
        payload: String,
        #[arg(long, default_value_t = 300)]
        timeout_secs: u32,
        #[arg(long, default_value_t = 16)]
        concurrency: u64,
    },
    WaitResults {
        #[arg(long)]
        broker: String,
        #[arg(long)]
        key: String,
        #[arg(long)]
        count: usize,
        #[arg(long, default_value = "bench-")]
        prefix: String,
        #[arg(long, default_value_t = 600)]
        timeout_secs: u64,
        /// Report elapsed seconds since this instant (unix ms); default: since start.
        #[arg(long)]
        since_unix_ms: Option<u128>,
    },
    Results {
        /// Job manager base URL, e.g. http://127.0.0.1:8080
        #[arg(long)]
        url: String,
        #[arg(long)]
        internal_key: String,
        #[arg(long)]
        signing_key: String,
        #[arg(long)]
        count: u64,
        #[arg(long, default_value = "ingest-")]
        prefix: String,
        #[arg(long, default_value_t = 32)]
        connections: u64,
    },
}

fn unix_ms() -> u128 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_millis()).unwrap_or(0)
}

/// One keep-alive HTTP/1 connection.
struct Conn {
    sender: hyper::client::conn::http1::SendRequest<Full<Bytes>>,
    authority: String,
}

impl Conn {
    async fn open(base: &str) -> Result<Conn, String> {
        let authority = base.trim_start_matches("http://").trim_end_matches('/').to_string();
        let tcp = tokio::net::TcpStream::connect(&authority).await.map_err(|e| format!("connect {authority}: {e}"))?;
        let _ = tcp.set_nodelay(true);
        let (sender, conn) =
            hyper::client::conn::http1::handshake(TokioIo::new(tcp)).await.map_err(|e| e.to_string())?;
        tokio::spawn(conn);
        Ok(Conn { sender, authority })
    }

    async fn send(
        &mut self,
        method: Method,
        path: &str,
        headers: &[(&str, &str)],
        body: Vec<u8>,
    ) -> Result<(StatusCode, Bytes), String> {
        let mut req = Request::builder().method(method).uri(path).header("host", &self.authority);
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        if !body.is_empty() {
            req = req.header("content-type", "application/json");
        }
        let req = req.body(Full::new(Bytes::from(body))).map_err(|e| e.to_string())?;
        self.sender.ready().await.map_err(|e| e.to_string())?;
        let resp = self.sender.send_request(req).await.map_err(|e| e.to_string())?;
        let status = resp.status();
        let body = resp.into_body().collect().await.map_err(|e| e.to_string())?.to_bytes();
        Ok((status, body))
    }
}

#[tokio::main]
async fn main() {
    let out = match Cli::parse().command {
        Command::Submit { broker, key, count, prefix, runtime_type, payload, timeout_secs, concurrency } => {
            let payload: Value = serde_json::from_str(&payload).expect("--payload is JSON");
            submit(&broker, &key, count, &prefix, &runtime_type, payload, timeout_secs, concurrency).await
        }
        Command::WaitResults { broker, key, count, prefix, timeout_secs, since_unix_ms } => {
            wait_results(&broker, &key, count, &prefix, timeout_secs, since_unix_ms.unwrap_or_else(unix_ms)).await
        }
        Command::Results { url, internal_key, signing_key, count, prefix, connections } => {
            post_results(&url, &internal_key, &signing_key, count, &prefix, connections).await
        }
    };
    match out {
        Ok(v) => println!("{v}"),
        Err(e) => {
            eprintln!("jm-bench: {e}");
            std::process::exit(1);
        }
    }
}

#[allow(clippy::too_many_arguments)]
async fn submit(
    broker: &str,
    key: &str,
    count: u64,
    prefix: &str,
    runtime_type: &str,
    payload: Value,
    timeout_secs: u32,
    concurrency: u64,
) -> Result<Value, String> {
    let started = Instant::now();
    let next = Arc::new(AtomicU64::new(0));
    let auth = format!("Bearer {key}");
    let mut tasks = Vec::new();
    for _ in 0..concurrency.max(1) {
        let (next, auth, payload) = (next.clone(), auth.clone(), payload.clone());
        let (broker, prefix, runtime_type) = (broker.to_string(), prefix.to_string(), runtime_type.to_string());
        tasks.push(tokio::spawn(async move {
            let mut conn = Conn::open(&broker).await?;
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= count {
                    return Ok::<(), String>(());
                }
                let job = json!({"id": format!("{prefix}{i}"), "runtime_type": runtime_type,
                    "timeout_secs": timeout_secs, "payload": payload});
                let (status, body) = conn
                    .send(Method::POST, "/admin/v1/jobs", &[("authorization", &auth)], job.to_string().into_bytes())
                    .await?;
                if status != StatusCode::CREATED {
                    return Err(format!("submit {prefix}{i}: {status} {}", String::from_utf8_lossy(&body)));
                }
            }
        }));
    }
    for t in tasks {
        t.await.map_err(|e| e.to_string())??;
    }
    let secs = started.elapsed().as_secs_f64();
    Ok(json!({"submitted": count, "secs": secs, "per_sec": count as f64 / secs}))
}

async fn wait_results(
    broker: &str,
    key: &str,
    count: usize,
    prefix: &str,
    timeout_secs: u64,
    since_ms: u128,
) -> Result<Value, String> {
    let auth = format!("Bearer {key}");
    let deadline = Instant::now() + Duration::from_secs(timeout_secs);
    let mut conn = Conn::open(broker).await?;
    loop {
        let (status, body) =
            conn.send(Method::GET, "/admin/v1/results", &[("authorization", &auth)], Vec::new()).await?;
        if status != StatusCode::OK {
            return Err(format!("results: {status}"));
        }
        let all: BTreeMap<String, JobResult> = serde_json::from_slice(&body).map_err(|e| e.to_string())?;
        let mine: Vec<&JobResult> = all.iter().filter(|(id, _)| id.starts_with(prefix)).map(|(_, r)| r).collect();
        if mine.len() >= count {
            let secs = (unix_ms() - since_ms) as f64 / 1000.0;
            let mut outcomes: BTreeMap<&str, u64> = BTreeMap::new();
            for r in &mine {
                *outcomes.entry(r.outcome.as_str()).or_default() += 1;
            }
            return Ok(
                json!({"results": mine.len(), "secs": secs, "per_sec": mine.len() as f64 / secs, "outcomes": outcomes}),
            );
        }
        if Instant::now() > deadline {
            return Err(format!("only {} of {count} results after {timeout_secs}s", mine.len()));
        }
        // Polling an HTTP API: there is no push channel to wait on from outside the process.
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn post_results(
    url: &str,
    internal_key: &str,
    signing_key: &str,
    count: u64,
    prefix: &str,
    connections: u64,
) -> Result<Value, String> {
    let signer = TokenSigner::new(signing_key);
    let expiry = (unix_ms() / 1000) as u64 + 3600;
    // Mint every token before the clock starts, so the figure is the server's alone.
    let jobs: Arc<Vec<(String, String, Vec<u8>)>> = Arc::new(
        (0..count)
            .map(|i| {
                let id = JobId::new(format!("{prefix}{i}")).expect("valid id");
                let token = signer.mint(&id, expiry);
                let body = serde_json::to_vec(&JobResult::new(id.clone(), Outcome::Succeeded, "bench")).expect("json");
                (common::runtime_api::result_api_path(&id), token, body)
            })
            .collect(),
    );
    let next = Arc::new(AtomicU64::new(0));
    let started = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..connections.max(1) {
        let (jobs, next, url, key) = (jobs.clone(), next.clone(), url.to_string(), internal_key.to_string());
        tasks.push(tokio::spawn(async move {
            let mut conn = Conn::open(&url).await?;
            let mut latencies = Vec::new();
            let mut statuses: BTreeMap<u16, u64> = BTreeMap::new();
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                let Some((path, token, body)) = jobs.get(i as usize) else { break };
                let t = Instant::now();
                let (status, _) = conn
                    .send(
                        Method::POST,
                        path,
                        &[(common::headers::INTERNAL_API_KEY, &key), (common::headers::JOB_TOKEN, token)],
                        body.clone(),
                    )
                    .await?;
                latencies.push(t.elapsed());
                *statuses.entry(status.as_u16()).or_default() += 1;
            }
            Ok::<_, String>((latencies, statuses))
        }));
    }
    let mut latencies = Vec::new();
    let mut statuses: BTreeMap<u16, u64> = BTreeMap::new();
    for t in tasks {
        let (l, s) = t.await.map_err(|e| e.to_string())??;
        latencies.extend(l);
        for (k, v) in s {
            *statuses.entry(k).or_default() += v;
        }
    }
    let secs = started.elapsed().as_secs_f64();
    latencies.sort();
    let pct = |q: f64| {
        latencies
            .get(((latencies.len() as f64 * q) as usize).min(latencies.len().saturating_sub(1)))
            .map(|d| d.as_secs_f64() * 1000.0)
    };
    let accepted = statuses.get(&202).copied().unwrap_or(0);
    Ok(json!({
        "requests": latencies.len(), "accepted": accepted, "secs": secs,
        "per_sec": latencies.len() as f64 / secs, "accepted_per_sec": accepted as f64 / secs,
        "statuses": statuses, "p50_ms": pct(0.5), "p99_ms": pct(0.99), "connections": connections,
    }))
}
