//! `browser-runtime`: browser checks in headless Chromium, speaking the runtime contract
//! of `common/CONTRACTS.md` ("Browser runtime" there documents the payload and result):
//! a simple check (`check.rs`: load a URL, status, timings, console errors, failed
//! requests, screenshot) or a scripted one (`scripted.rs`: the user's JavaScript in the
//! API runtime's engine with `$browser`).
//!
//! Ephemeral (default): `GET {JOB_API_URL}/v1/job`, run the check, `POST
//! {JOB_API_URL}/v1/result`, exit 0 (also when the check failed: the result says so).
//! Persistent: `browser-runtime --serve 127.0.0.1:8081 [--max-concurrent N]` (or
//! `BROWSER_RUNTIME_SERVE` / `BROWSER_RUNTIME_MAX_CONCURRENT`: pods get no arguments) accepts
//! `POST /v1/jobs` (a `RuntimeJob`) with 202, or 429 when N jobs are running, and posts
//! each result to `{JOB_API_URL}/v1/jobs/{id}/result`. Each job gets its own Chromium
//! with a fresh profile, killed (whole process group) when the job ends.
//!
//! DevTools client: hand-written over `--remote-debugging-pipe` (`cdp.rs`, ~130 lines
//! and no new dependency) rather than `chromiumoxide`, which pulls in a websocket stack
//! and thousands of generated protocol types for the dozen commands used here.
//!
//! Chromium: `--chromium PATH`, else `CHROMIUM_PATH`, else Debian's
//! `/usr/lib/chromium/chromium`, else `chromium` on PATH. Its proxy is the sidecar
//! (`HTTPS_PROXY`/`HTTP_PROXY`, required: this runtime never browses around it).

mod cdp;
mod check;
mod chromium;
mod scripted;

use common::runtime_api::{runtime_env, RuntimeJob, RuntimeOutcome, RuntimeResult};
use common::runtime_client::{exit, RuntimeClient};
use serde_json::{json, Value};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

const NAME: &str = "browser-runtime";

fn log(job: &str, what: impl std::fmt::Display) {
    eprintln!("{NAME}: job {job}: {what}");
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.first().map(String::as_str) == Some(chromium::TRAMPOLINE_ARG) {
        chromium::exec_with_pipe(&args[1..]);
    }
    if args.first().map(String::as_str) == Some("--version") {
        println!("browser-runtime {}", common::build_info::LONG_VERSION);
        return;
    }
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().expect("tokio runtime");
    let code = rt.block_on(async {
        match parse_args(&args, &|k| std::env::var(k).ok()) {
            Ok(Args { mode, chromium }) => {
                chromium::become_subreaper();
                let chromium = chromium.unwrap_or_else(|| chromium::default_chromium(&|k| std::env::var(k).ok()));
                match mode {
                    Mode::Once => run_once(chromium).await,
                    Mode::Serve { addr, max_concurrent } => serve(addr, max_concurrent, chromium).await,
                }
            }
            Err(e) => {
                eprintln!(
                    "browser-runtime: {e}\nusage: browser-runtime [--chromium PATH] [--serve ADDR [--max-concurrent N]]"
                );
                exit::USAGE
            }
        }
    });
    rt.shutdown_timeout(Duration::from_secs(1));
    std::process::exit(code);
}

#[derive(Debug, PartialEq)]
enum Mode {
    Once,
    Serve { addr: std::net::SocketAddr, max_concurrent: usize },
}

#[derive(Debug, PartialEq)]
struct Args {
    mode: Mode,
    chromium: Option<PathBuf>,
}

/// Environment twins of the flags (a flag wins): the job manager passes no arguments to
/// runtime containers, so a persistent browser runtime is the chart's
/// `node-browser-runtime.extraEnv: {BROWSER_RUNTIME_SERVE: "127.0.0.1:8081"}`.
const ENV_SERVE: &str = "BROWSER_RUNTIME_SERVE";
const ENV_MAX_CONCURRENT: &str = "BROWSER_RUNTIME_MAX_CONCURRENT";

fn parse_args(args: &[String], env: &dyn Fn(&str) -> Option<String>) -> Result<Args, String> {
    let address = |what: &str, v: &str| -> Result<std::net::SocketAddr, String> {
        v.trim().parse().map_err(|e| format!("{what} {v}: {e}"))
    };
    let positive = |what: &str, v: &str| -> Result<usize, String> {
        v.trim().parse().ok().filter(|n| *n > 0).ok_or(format!("{what} {v}: not a positive number"))
    };
    let var = |k: &str| env(k).filter(|v| !v.trim().is_empty());
    let mut serve = var(ENV_SERVE).map(|v| address(ENV_SERVE, &v)).transpose()?;
    let mut max_concurrent =
        var(ENV_MAX_CONCURRENT).map(|v| positive(ENV_MAX_CONCURRENT, &v)).transpose()?.unwrap_or(1);
    let mut chromium = None;
    let mut it = args.iter();
    while let Some(a) = it.next() {
        match a.as_str() {
            "--serve" => serve = Some(address("--serve", it.next().ok_or("--serve needs an address")?)?),
            "--max-concurrent" => {
                max_concurrent = positive("--max-concurrent", it.next().ok_or("--max-concurrent needs a number")?)?;
            }
            "--chromium" => chromium = Some(PathBuf::from(it.next().ok_or("--chromium needs a path")?)),
            other => return Err(format!("unknown argument {other:?}")),
        }
    }
    let mode = match serve {
        Some(addr) => Mode::Serve { addr, max_concurrent },
        None => Mode::Once,
    };
    Ok(Args { mode, chromium })
}

fn client() -> Result<RuntimeClient, String> {
    RuntimeClient::from_env(NAME, &|k| std::env::var(k).ok())
}

async fn run_once(chromium: PathBuf) -> i32 {
    let client = match client() {
        Ok(c) => c,
        Err(e) => {
            eprintln!("{NAME}: {e}");
            return exit::CONFIG;
        }
    };
    client
        .run_once(|job| async move {
            // SIGTERM/SIGINT: dropping the job's future kills Chromium's process group.
            tokio::select! {
                r = run_job(&job, &chromium) => Ok(r),
                sig = terminated() => {
                    log(job.id.as_str(), format_args!("{sig}: stopping (Chromium killed)"));
                    Err(exit::TERMINATED)
                }
            }
        })
        .await
}

async fn terminated() -> &'static str {
    use tokio::signal::unix::{signal, SignalKind};
    let (Ok(mut term), Ok(mut int)) = (signal(SignalKind::terminate()), signal(SignalKind::interrupt())) else {
        return std::future::pending().await;
    };
    tokio::select! {
        _ = term.recv() => "SIGTERM",
        _ = int.recv() => "SIGINT",
    }
}

/// When the check must be over: the job's timeout less a margin (a tenth, 1 to 5 s) to
/// shut Chromium down and post the result before the job manager's own deadline.
fn check_deadline(start: Instant, timeout: Duration) -> Instant {
    let margin = (timeout / 10).clamp(Duration::from_secs(1), Duration::from_secs(5));
    start + timeout.saturating_sub(margin)
}

/// When waiting for the load event stops: leaves a third of what remains (at most 2 s)
/// for the screenshot of a page that did not load.
fn load_deadline(now: Instant, end_by: Instant) -> Instant {
    let left = end_by.saturating_duration_since(now);
    end_by - (left / 3).min(Duration::from_secs(2))
}

/// The proxy Chromium must use: the sidecar.
fn sidecar_proxy(env: &dyn Fn(&str) -> Option<String>) -> Result<String, String> {
    let var = |k: &str| env(k).or_else(|| env(&k.to_ascii_lowercase())).filter(|v| !v.trim().is_empty());
    var(runtime_env::HTTPS_PROXY).or_else(|| var(runtime_env::HTTP_PROXY)).map(|v| v.trim().to_string()).ok_or_else(
        || {
            format!(
                "neither {} nor {} is set: the browser runtime only browses through the sidecar",
                runtime_env::HTTPS_PROXY,
                runtime_env::HTTP_PROXY
            )
        },
    )
}

async fn run_job(job: &RuntimeJob, chromium: &Path) -> RuntimeResult {
    let started = Instant::now();
    let id = job.id.to_string();
    let timeout = Duration::from_secs(u64::from(job.timeout_secs.max(1)));
    let end_by = check_deadline(started, timeout);
    let finish = |ok: bool, message: String, output: Value| RuntimeResult {
        outcome: if ok { RuntimeOutcome::Succeeded } else { RuntimeOutcome::Failed },
        message,
        output,
        duration_ms: Some(started.elapsed().as_millis() as u64),
    };
    let payload = match check::Payload::parse(&job.payload) {
        Ok(p) => p,
        Err(e) => {
            log(&id, &e);
            return finish(false, e, Value::Null);
        }
    };
    let env = |k: &str| std::env::var(k).ok();
    // A scripted check is read (and refused) before Chromium starts.
    let scripted = match &payload {
        check::Payload::Scripted { script, secure } => {
            let as_api_job = RuntimeJob { payload: json!({ "script": script, "secure": secure }), ..job.clone() };
            let udv = env(runtime_env::USER_DEFINED_VARIABLES);
            let check = api_runtime::payload::check_of(&as_api_job, udv.as_deref());
            let proxies = api_runtime::http::Proxies::from_env(&env);
            match (check, proxies) {
                (Ok(c), Ok(p)) => Some((c, p, secure.clone())),
                (Err(e), _) | (_, Err(e)) => {
                    return finish(false, format!("invalid browser check payload: {e}"), Value::Null)
                }
            }
        }
        check::Payload::Simple { .. } => None,
    };
    let proxy = match sidecar_proxy(&env) {
        Ok(p) => p,
        Err(e) => return finish(false, e, Value::Null),
    };
    let no_proxy = env(runtime_env::NO_PROXY).or_else(|| env("no_proxy")).unwrap_or_default();
    let opts = chromium::LaunchOptions {
        chromium: chromium.to_path_buf(),
        proxy,
        no_proxy: no_proxy.split(',').map(|s| s.trim().to_string()).collect(),
        small_shm: chromium::shm_is_small(),
    };
    let kind = if scripted.is_some() { "scripted" } else { "simple" };
    let mut browser = match chromium::Browser::launch(&opts, end_by).await {
        Ok(b) => b,
        Err(e) => {
            log(&id, &e);
            return finish(false, e, json!({ "type": kind }));
        }
    };
    log(&id, format_args!("chromium answered in {} ms ({kind} check)", browser.start_ms));
    let work_by = load_deadline(Instant::now(), end_by);
    if let Err(e) = check::prepare_page(&browser, work_by).await {
        browser.shutdown().await;
        return finish(false, e, json!({ "type": kind }));
    }
    match (payload, scripted) {
        (check::Payload::Simple { url, screenshot }, _) => {
            let mut report = check::run(&mut browser, &url, screenshot, timeout, work_by, end_by).await;
            let stopping = Instant::now();
            browser.shutdown().await;
            report.output["chromium_stop_ms"] = json!(stopping.elapsed().as_millis() as u64);
            log(&id, &report.message);
            finish(report.ok, report.message, report.output)
        }
        (check::Payload::Scripted { .. }, Some((mut check, proxies, secure))) => {
            check.timeout = work_by.saturating_duration_since(Instant::now());
            let outcome = scripted::run(check, browser, proxies, end_by).await;
            let mut result = api_runtime::payload::result_of(&outcome.report, &secure);
            let mut extra = outcome.output;
            // A secure value can show up in URLs and in what the page logs too. Not in the
            // screenshots' base64, which a short value could match by chance.
            let artifacts = extra.get_mut("artifacts").map(Value::take);
            api_runtime::log::Redactor::new(secure.values()).redact_json(&mut extra);
            if let Some(a) = artifacts {
                extra["artifacts"] = a;
            }
            if let (Value::Object(out), Value::Object(extra)) = (&mut result.output, extra) {
                out.extend(extra);
                out.insert("runtime".into(), json!(concat!("browser-runtime/", env!("CARGO_PKG_VERSION"))));
            }
            result.duration_ms = Some(started.elapsed().as_millis() as u64);
            log(&id, &result.message);
            result
        }
        (check::Payload::Scripted { .. }, None) => unreachable!("a scripted payload was read above"),
    }
}

// --- persistent mode ---

async fn serve(addr: std::net::SocketAddr, max_concurrent: usize, chromium: PathBuf) -> i32 {
    let client = match client() {
        Ok(c) => c,
        Err(e) => {
            eprintln!("{NAME}: {e}");
            return exit::CONFIG;
        }
    };
    // Chromium's strays (crashpad handlers) come back to this process: sweep them.
    tokio::spawn(async {
        loop {
            tokio::time::sleep(Duration::from_secs(1)).await;
            chromium::reap_strays();
        }
    });
    let chromium = Arc::new(chromium);
    let run = move |job: RuntimeJob| {
        let chromium = chromium.clone();
        async move { run_job(&job, &chromium).await }
    };
    tokio::select! {
        code = client.serve(addr, max_concurrent, run) => code,
        sig = terminated() => {
            eprintln!("{NAME}: {sig}: stopping");
            exit::OK
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn args() {
        let s = |v: &[&str]| v.iter().map(|x| x.to_string()).collect::<Vec<_>>();
        let no_env = |_: &str| None;
        assert_eq!(parse_args(&s(&[]), &no_env), Ok(Args { mode: Mode::Once, chromium: None }));
        assert_eq!(
            parse_args(&s(&["--serve", "127.0.0.1:8081", "--max-concurrent", "3", "--chromium", "/c"]), &no_env),
            Ok(Args {
                mode: Mode::Serve { addr: "127.0.0.1:8081".parse().unwrap(), max_concurrent: 3 },
                chromium: Some("/c".into())
            })
        );
        assert!(parse_args(&s(&["--max-concurrent", "0"]), &no_env).unwrap_err().contains("not a positive number"));
        assert!(parse_args(&s(&["--bogus"]), &no_env).unwrap_err().contains("unknown argument"));
    }

    #[test]
    fn the_environment_says_what_a_pod_cannot_pass_as_arguments() {
        let s = |v: &[&str]| v.iter().map(|x| x.to_string()).collect::<Vec<_>>();
        let env = |k: &str| match k {
            "BROWSER_RUNTIME_SERVE" => Some("127.0.0.1:8081".to_string()),
            "BROWSER_RUNTIME_MAX_CONCURRENT" => Some("2".to_string()),
            _ => None,
        };
        let serve = |n| Mode::Serve { addr: "127.0.0.1:8081".parse().unwrap(), max_concurrent: n };
        assert_eq!(parse_args(&s(&[]), &env).unwrap().mode, serve(2));
        assert_eq!(parse_args(&s(&["--max-concurrent", "3"]), &env).unwrap().mode, serve(3), "a flag wins");
        let bad = |k: &str| (k == "BROWSER_RUNTIME_SERVE").then(|| "nowhere".to_string());
        assert!(parse_args(&s(&[]), &bad).unwrap_err().starts_with("BROWSER_RUNTIME_SERVE nowhere: "));
    }

    #[test]
    fn deadlines() {
        let t0 = Instant::now();
        assert_eq!(check_deadline(t0, Duration::from_secs(180)), t0 + Duration::from_secs(175));
        assert_eq!(check_deadline(t0, Duration::from_secs(20)), t0 + Duration::from_secs(18));
        assert_eq!(check_deadline(t0, Duration::from_secs(5)), t0 + Duration::from_secs(4));
        assert_eq!(check_deadline(t0, Duration::from_secs(1)), t0);
        let end = t0 + Duration::from_secs(30);
        assert_eq!(load_deadline(t0, end), t0 + Duration::from_secs(28));
        let end = t0 + Duration::from_secs(3);
        assert_eq!(load_deadline(t0, end), t0 + Duration::from_secs(2));
    }

    #[test]
    fn proxy_is_required() {
        let env = |vars: &'static [(&'static str, &'static str)]| {
            move |k: &str| vars.iter().find(|(n, _)| *n == k).map(|(_, v)| v.to_string())
        };
        assert_eq!(sidecar_proxy(&env(&[("HTTP_PROXY", "http://127.0.0.1:3128")])).unwrap(), "http://127.0.0.1:3128");
        assert_eq!(
            sidecar_proxy(&env(&[("HTTP_PROXY", "http://a:1"), ("https_proxy", "http://b:2")])).unwrap(),
            "http://b:2"
        );
        let e = sidecar_proxy(&env(&[("HTTP_PROXY", " ")])).unwrap_err();
        assert!(e.contains("only browses through the sidecar"), "{e}");
    }
}
