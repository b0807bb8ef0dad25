//! `job-manager demo --examples deploy/examples`: the whole flow on one machine.
//!
//! Starts the embedded broker, a tiny HTTP origin on loopback and the job manager with the
//! local executor (config `local.yaml`, real sidecars, the `api-runtime` and `test-runtime`
//! binaries), submits every `jobs/*.json` (with `${ORIGIN}` replaced by the origin's URL),
//! waits for all results, prints them, and checks them against `expected.yaml`. Exit 0 only
//! when every job ended as expected.
//!
//! VSE: the demo config sets a passphrase, so every job must be signed. Job files whose
//! `signature` is `${VSE_SIGNATURE}` are signed here, after `${ORIGIN}` is filled in (the
//! demo plays the job author, who holds the passphrase); any other signature is kept as
//! written, so a forged one is rejected.
use crate::app::{App, AppSettings};
use crate::backend::local::LocalBackend;
use crate::broker::embedded::{EmbeddedBroker, EmbeddedOptions};
use crate::cli::DemoArgs;
use crate::config::{self, FlagOverride};
use bytes::Bytes;
use common::{Job, JobId, JobResult, Outcome};
use http_body_util::Full;
use hyper_util::rt::TokioIo;
use serde::Deserialize;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;

pub const ORIGIN_PLACEHOLDER: &str = "${ORIGIN}";
pub const SIGNATURE_PLACEHOLDER: &str = "${VSE_SIGNATURE}";
/// What the demo origin answers, so a job's output shows the request really went through.
pub const ORIGIN_BODY: &str = "hello from the demo origin\n";

/// One line of `expected.yaml`: an outcome, or an outcome plus text its message contains.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(untagged)]
pub enum Expectation {
    Outcome(Outcome),
    Detailed {
        outcome: Outcome,
        #[serde(default, rename = "messageContains")]
        message_contains: Option<String>,
    },
}

impl Expectation {
    pub fn outcome(&self) -> Outcome {
        match self {
            Expectation::Outcome(o) | Expectation::Detailed { outcome: o, .. } => *o,
        }
    }

    /// `None` when the result matches, else why not.
    pub fn mismatch(&self, result: Option<&JobResult>) -> Option<String> {
        let Some(r) = result else { return Some("no result".into()) };
        if r.outcome != self.outcome() {
            return Some(format!("expected {}, got {}", self.outcome(), r.outcome));
        }
        if let Expectation::Detailed { message_contains: Some(text), .. } = self {
            if !r.message.contains(text.as_str()) {
                return Some(format!("message does not contain {text:?}"));
            }
        }
        None
    }
}

/// Read `jobs/*.json` (sorted), filling in the origin and signing placeholders.
pub fn load_jobs(dir: &Path, origin: &str, vse_passphrase: &str) -> Result<Vec<Job>, String> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .map_err(|e| format!("cannot read {}: {e}", dir.display()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "json"))
        .collect();
    files.sort();
    let mut jobs = Vec::new();
    for f in files {
        let text = std::fs::read_to_string(&f).map_err(|e| format!("cannot read {}: {e}", f.display()))?;
        let mut job: Job = serde_json::from_str(&text.replace(ORIGIN_PLACEHOLDER, origin))
            .map_err(|e| format!("{} is not a job: {e}", f.display()))?;
        if job.signature.as_deref() == Some(SIGNATURE_PLACEHOLDER) {
            job.signature = Some(common::token::vse_signature(vse_passphrase, &job.runtime_type, &job.payload));
        }
        jobs.push(job);
    }
    Ok(jobs)
}

pub fn load_expected(path: &Path) -> Result<BTreeMap<JobId, Expectation>, String> {
    let text = std::fs::read_to_string(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    serde_saphyr::from_str(&text).map_err(|e| format!("{} is not valid: {e}", path.display()))
}

/// A loopback HTTP origin answering every request with [`ORIGIN_BODY`].
pub async fn start_origin() -> std::io::Result<(String, tokio::task::JoinHandle<()>)> {
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let url = format!("http://{}", listener.local_addr()?);
    let task = tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(|_req| async {
                    Ok::<_, std::convert::Infallible>(http::Response::new(Full::new(Bytes::from_static(
                        ORIGIN_BODY.as_bytes(),
                    ))))
                });
                let _ = hyper::server::conn::http1::Builder::new().serve_connection(TokioIo::new(stream), svc).await;
            });
        }
    });
    Ok((url, task))
}

pub async fn run(args: DemoArgs) -> i32 {
    match run_demo(&args).await {
        Ok(true) => 0,
        Ok(false) => 1,
        Err(e) => {
            eprintln!("job-manager demo: {e}");
            if e.contains("invalid setting") {
                config::EXIT_USAGE
            } else {
                1
            }
        }
    }
}

async fn run_demo(args: &DemoArgs) -> Result<bool, String> {
    let dir = &args.examples;
    let state = std::env::temp_dir().join(format!("job-manager-demo-{}", std::process::id()));
    // The demo is hermetic: only its own config file and these overrides count.
    let env: BTreeMap<String, String> = BTreeMap::new();
    let flags = vec![
        FlagOverride::new("listen", "127.0.0.1:0"),
        FlagOverride::new("brokerApiEndpoint", config::EMBEDDED_BROKER),
        FlagOverride::new("stateDir", state.display().to_string()),
    ];
    let cfg = config::load(Some(&dir.join("local.yaml")), &env, &flags).map_err(|e| e.to_string())?;
    let validated = config::validate(cfg).map_err(|e| e.to_string())?;
    crate::telemetry::init(&validated.config.log_level, validated.config.log_format);

    let (origin, origin_task) = start_origin().await.map_err(|e| format!("cannot start the origin: {e}"))?;
    let jobs = load_jobs(&dir.join("jobs"), &origin, &validated.config.vse_passphrase)?;
    let expected = load_expected(&dir.join("expected.yaml"))?;
    let broker = EmbeddedBroker::new(EmbeddedOptions::from(&validated.config));
    for job in &jobs {
        broker.submit(job.clone()).map_err(|e| e.to_string())?;
    }
    println!("demo: origin {origin}; {} jobs submitted to the embedded broker", jobs.len());

    let listener = TcpListener::bind("127.0.0.1:0").await.map_err(|e| format!("cannot listen: {e}"))?;
    let backend = LocalBackend::new(&validated).map_err(|e| e.to_string())?;
    let handle = App::start(AppSettings::from(&validated), Arc::new(broker.clone()), backend, listener)
        .await
        .map_err(|e| e.to_string())?;
    let results = broker.wait_for_results(jobs.len(), Duration::from_secs(args.timeout_secs)).await;
    let stopped = handle.stop().await;
    origin_task.abort();
    let _ = std::fs::remove_dir_all(&state);
    stopped.map_err(|e| format!("job manager task failed: {e}"))?;

    let ok = print_report(&jobs, &results, &expected);
    Ok(ok)
}

/// Print one block per job and a summary; true when every job matched its expectation
/// and every expectation names a submitted job.
pub fn print_report(
    jobs: &[Job],
    results: &BTreeMap<JobId, JobResult>,
    expected: &BTreeMap<JobId, Expectation>,
) -> bool {
    let mut all_ok = true;
    println!();
    println!("{:<24} {:<10} {:<10} {:<6} message", "job", "outcome", "expected", "check");
    println!("{}", "-".repeat(100));
    for job in jobs {
        let result = results.get(&job.id);
        let exp = expected.get(&job.id);
        let verdict = match exp {
            Some(e) => e.mismatch(result),
            None => Some("not listed in expected.yaml".into()),
        };
        all_ok &= verdict.is_none();
        let outcome = result.map_or("-".to_string(), |r| r.outcome.to_string());
        let expected_outcome = exp.map_or("-".to_string(), |e| e.outcome().to_string());
        let message = result.map_or(String::new(), |r| one_line(&r.message, 140));
        let check = if verdict.is_none() { "ok" } else { "FAIL" };
        println!("{:<24} {:<10} {:<10} {:<6} {}", job.id.as_str(), outcome, expected_outcome, check, message);
        if let Some(why) = verdict {
            println!("{:<24} -> {why}", "");
        }
    }
    for id in expected.keys().filter(|id| !jobs.iter().any(|j| &j.id == *id)) {
        all_ok = false;
        println!("{:<24} expected but no such job file", id.as_str());
    }
    println!("{}", "-".repeat(100));
    println!("demo: {}", if all_ok { "all jobs ended as expected" } else { "SOME JOBS DID NOT END AS EXPECTED" });
    all_ok
}

fn one_line(s: &str, max: usize) -> String {
    let flat: String = s.chars().map(|c| if c.is_control() { ' ' } else { c }).collect();
    if flat.chars().count() > max {
        format!("{}...", flat.chars().take(max).collect::<String>())
    } else {
        flat
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn expectations_parse_and_match() {
        let e: BTreeMap<JobId, Expectation> =
            serde_saphyr::from_str("a: succeeded\nb: {outcome: failed, messageContains: refused}\n").unwrap();
        let a = JobResult::new(JobId::new("a").unwrap(), Outcome::Succeeded, "");
        assert_eq!(e[&a.job_id].mismatch(Some(&a)), None);
        let b = JobResult::new(JobId::new("b").unwrap(), Outcome::Failed, "egress refused: metadata");
        assert_eq!(e[&b.job_id].mismatch(Some(&b)), None);
        let b2 = JobResult::new(JobId::new("b").unwrap(), Outcome::Failed, "boom");
        assert!(e[&b.job_id].mismatch(Some(&b2)).unwrap().contains("refused"));
        assert!(e[&a.job_id].mismatch(None).is_some());
    }

    #[test]
    fn shipped_examples_are_consistent() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/examples");
        let jobs = load_jobs(&dir.join("jobs"), "http://127.0.0.1:9", "p").unwrap();
        let expected = load_expected(&dir.join("expected.yaml")).unwrap();
        assert!(jobs.len() >= 5);
        for job in &jobs {
            assert!(expected.contains_key(&job.id), "{} has no expectation", job.id);
            assert!(!serde_json::to_string(&job.payload).unwrap().contains("${"), "placeholders filled");
        }
        assert_eq!(expected.len(), jobs.len());
        let outcomes: std::collections::HashSet<Outcome> = expected.values().map(Expectation::outcome).collect();
        assert_eq!(outcomes.len(), 4, "every outcome is demonstrated: {outcomes:?}");
        let cfg = config::load(Some(&dir.join("local.yaml")), &BTreeMap::new(), &[]).unwrap();
        let v = config::validate(cfg).unwrap();
        assert!(!v.config.vse_passphrase.is_empty(), "the demo shows VSE");
    }
}
