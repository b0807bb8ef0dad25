//! The real binary: configuration errors exit 64, --help documents every setting, the
//! ready file, SIGTERM, the key from stdin, the key never in logs, and `egress-init`'s
//! argument refusals.
#![allow(clippy::unwrap_used)] // in a test, an unwrap is an assertion
mod support;

use std::io::{Read, Write};
use std::process::{Child, Command, Stdio};
use std::time::Duration;
use support::*;

const BIN: &str = env!("CARGO_BIN_EXE_sidecar");

fn sidecar() -> Command {
    let mut c = Command::new(BIN);
    c.env_clear().env("PATH", std::env::var("PATH").unwrap_or_default());
    c
}

/// (flags, env, text the error must contain)
type BadCase = (&'static [&'static str], &'static [(&'static str, &'static str)], &'static str);

#[test]
fn bad_configuration_exits_64_naming_the_setting() {
    let cases: &[BadCase] = &[
        (&["--listen", "not-an-address"], &[], "SIDECAR_LISTEN (--listen)"),
        (&[], &[("SIDECAR_ALLOW_CIDRS", "10.0.0.0/99")], "SIDECAR_ALLOW_CIDRS"),
        (&[], &[("SIDECAR_DENY_PRIVATE", "perhaps")], "SIDECAR_DENY_PRIVATE"),
        (&["--job-dir", "/tmp"], &[], "SIDECAR_JOB_MANAGER_URL"),
        (&["--no-such-flag"], &[], "--no-such-flag"),
        (&["--max-connections", "lots"], &[], "SIDECAR_MAX_CONNECTIONS"),
    ];
    for (args, env, needle) in cases {
        let out = sidecar().args(*args).envs(env.iter().copied()).output().unwrap();
        assert_eq!(out.status.code(), Some(64), "{args:?} {env:?}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains(needle), "{args:?}: {err}");
    }
}

#[test]
fn egress_init_refuses_a_missing_non_numeric_or_root_uid_with_one_line_and_exit_64() {
    // Argument errors come before any netlink, so this needs no root.
    let cases: &[(&[&str], &str)] = &[
        (&["egress-init", "--proxy-uid", "0"], "0 is root"),
        (&["egress-init", "--proxy-uid", "sidecar"], "\"sidecar\" is not a numeric UID"),
        (&["egress-init"], "required arguments were not provided: --proxy-uid <UID>"),
        (&["egress-init", "--listen", "127.0.0.1:0"], "--listen"),
    ];
    for (args, needle) in cases {
        let out = sidecar().args(*args).output().unwrap();
        assert_eq!(out.status.code(), Some(64), "{args:?}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(err.lines().count(), 1, "{args:?}: {err}");
        assert!(err.starts_with("egress-init: ") && err.contains(needle), "{args:?}: {err}");
    }
}

#[test]
fn version_names_the_commit_and_the_compiler() {
    let out = sidecar().arg("--version").output().unwrap();
    assert!(out.status.success());
    let want = format!("sidecar {}\n", common::build_info::LONG_VERSION);
    assert_eq!(String::from_utf8_lossy(&out.stdout), want);
    assert!(want.contains(" (commit ") && want.contains(", rustc 1."), "{want}");
}

#[test]
fn help_explains_every_setting() {
    let out = sidecar().arg("--help").output().unwrap();
    assert!(out.status.success());
    let help = String::from_utf8_lossy(&out.stdout);
    use sidecar::config::*;
    for env in [
        ENV_LISTEN,
        ENV_LISTEN_STDIN,
        ENV_ADMIN_LISTEN,
        ENV_JOB_DIR,
        ENV_JOB_MANAGER_URL,
        ENV_INTERNAL_API_KEY,
        ENV_INTERNAL_API_KEY_FILE,
        ENV_SPOOL_DIR,
        ENV_INGRESS_LISTEN,
        ENV_INGRESS_UPSTREAM,
        ENV_ALLOW_CIDRS,
        ENV_DENY_CIDRS,
        ENV_ALLOW_HOSTS,
        ENV_DENY_HOSTS,
        ENV_ALLOW_PORTS,
        ENV_DENY_PORTS,
        ENV_DENY_PRIVATE,
        ENV_REPORT_ONLY,
        ENV_API_SERVER_ADDRESSES,
        ENV_UPSTREAM_PROXY,
        ENV_UPSTREAM_PROXY_CA_FILE,
        ENV_UPSTREAM_PROXY_INSECURE,
        ENV_UPSTREAM_PROXY_BYPASS,
        ENV_UPSTREAM_PROXY_UNRESOLVED,
        ENV_LOG_FORMAT,
        ENV_LOG_LEVEL,
        ENV_RESULT_DEADLINE_SECS,
        ENV_SHUTDOWN_GRACE_SECS,
        ENV_READY_FILE,
        ENV_JOB_ID,
        ENV_MAX_HEADER_BYTES,
        ENV_MAX_BODY_BYTES,
        ENV_MAX_BODY_MEMORY_BYTES,
        ENV_BODY_READ_TIMEOUT_MS,
        ENV_CONNECT_TIMEOUT_MS,
        ENV_IDLE_TIMEOUT_SECS,
        ENV_TUNNEL_IDLE_TIMEOUT_SECS,
        ENV_HEADER_READ_TIMEOUT_MS,
        ENV_MAX_CONNECTIONS,
        ENV_MAX_ADMIN_CONNECTIONS,
        ENV_MAX_INGRESS_CONNECTIONS,
        ENV_MAX_TUNNELS,
        ENV_WORKER_THREADS,
    ] {
        assert!(help.contains(env), "--help does not mention {env}");
    }
}

/// Waits for the ready file (the binary's own readiness signal) and parses it.
fn wait_ready(path: &std::path::Path, child: &mut Child) -> common::runtime_api::ReadyFile {
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        if let Ok(bytes) = std::fs::read(path) {
            return serde_json::from_slice(&bytes).expect("ready file is complete JSON");
        }
        if let Some(status) = child.try_wait().unwrap() {
            panic!("sidecar exited early: {status}");
        }
        assert!(std::time::Instant::now() < deadline, "no ready file");
        std::thread::sleep(Duration::from_millis(10));
    }
}

fn terminate(child: &mut Child) -> std::process::ExitStatus {
    let ok = Command::new("kill").arg("-TERM").arg(child.id().to_string()).status().unwrap();
    assert!(ok.success());
    child.wait().unwrap()
}

#[tokio::test]
async fn ready_file_probes_and_sigterm() {
    let dir = temp_dir("bin");
    let ready = dir.join("ready.json");
    let mut child = sidecar()
        .args(["--listen", "127.0.0.1:0", "--admin-listen", "127.0.0.1:0", "--ready-file", ready.to_str().unwrap()])
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let r = wait_ready(&ready, &mut child);
    assert_eq!(r.pid, child.id());
    assert_ne!(r.listen.port(), 0);
    let admin = r.admin.expect("admin address in the ready file");
    for (addr, path) in [(admin, "/readyz"), (admin, "/healthz"), (r.listen, "/readyz")] {
        let (status, _, _) =
            send(addr, http::Request::get(path).header("host", "x").body(Default::default()).unwrap()).await;
        assert_eq!(status, http::StatusCode::OK, "{addr}{path}");
    }
    let (status, headers, body) =
        send(admin, http::Request::get("/metrics").header("host", "x").body(Default::default()).unwrap()).await;
    assert_eq!(status, http::StatusCode::OK);
    assert_eq!(headers[http::header::CONTENT_TYPE], "text/plain; version=0.0.4; charset=utf-8");
    let text = String::from_utf8_lossy(&body);
    // One connection to the proxy listener (its /readyz); the three admin requests
    // (probes and this scrape) are not client connections.
    assert!(text.contains("sidecar_connections_total{listener=\"proxy\"} 1\n"), "{text}");
    assert!(!text.contains("listener=\"admin\""), "{text}");
    assert!(!text.contains("# EOF"), "{text}");
    // A scraper asking for OpenMetrics gets it.
    let req = http::Request::get("/metrics")
        .header("host", "x")
        .header("accept", "application/openmetrics-text;version=1.0.0,text/plain;version=0.0.4;q=0.5")
        .body(Default::default())
        .unwrap();
    let (status, headers, body) = send(admin, req).await;
    assert_eq!(status, http::StatusCode::OK);
    assert_eq!(headers[http::header::CONTENT_TYPE], "application/openmetrics-text; version=1.0.0; charset=utf-8");
    assert!(String::from_utf8_lossy(&body).ends_with("# EOF\n"));
    // The admin port serves probes only, never the job API.
    let (status, _, _) =
        send(admin, http::Request::get("/v1/job").header("host", "x").body(Default::default()).unwrap()).await;
    assert_eq!(status, http::StatusCode::NOT_FOUND);
    let status = tokio::task::spawn_blocking(move || terminate(&mut child)).await.unwrap();
    assert!(status.success(), "SIGTERM is a clean exit: {status}");
}

#[tokio::test]
async fn a_listener_inherited_as_stdin_is_served_and_reported_in_the_ready_file() {
    let dir = temp_dir("bin-inherited");
    let ready = dir.join("ready.json");
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let mut child = sidecar()
        .env(sidecar::config::ENV_LISTEN_STDIN, "true")
        .args(["--ready-file", ready.to_str().unwrap()])
        .stdin(Stdio::from(std::os::fd::OwnedFd::from(listener)))
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let r = wait_ready(&ready, &mut child);
    assert_eq!(r.listen, addr, "the ready file names the inherited listener");
    let (status, _, _) =
        send(addr, http::Request::get("/readyz").header("host", "x").body(Default::default()).unwrap()).await;
    assert_eq!(status, http::StatusCode::OK);
    let (status, _, _) = proxy_get(addr, "http://169.254.169.254/").await;
    assert_eq!(status, http::StatusCode::FORBIDDEN, "the policy applies on the inherited listener");
    let status = tokio::task::spawn_blocking(move || terminate(&mut child)).await.unwrap();
    assert!(status.success(), "{status}");
}

#[test]
fn listen_stdin_refuses_a_stdin_that_is_not_a_listening_socket() {
    let out = sidecar().env(sidecar::config::ENV_LISTEN_STDIN, "true").stdin(Stdio::null()).output().unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("inherited listener (--listen-stdin): stdin is not a listening socket"), "{err}");
}

#[tokio::test]
async fn key_from_stdin_is_injected_and_never_logged() {
    let mut jm = FakeJobManager::start(&[]).await;
    let dir = temp_dir("bin-key");
    let ready = dir.join("ready.json");
    let key = "stdin-key-5d8e0c";
    let mut child = sidecar()
        .args([
            "--listen",
            "127.0.0.1:0",
            "--ready-file",
            ready.to_str().unwrap(),
            "--job-manager-url",
            &format!("http://{}", jm.addr),
            "--internal-api-key-file",
            "-",
            "--log-level",
            "trace",
            "--log-format",
            "json",
            "--job-id",
            "bin-job-1",
        ])
        .stdin(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(format!("{key}\nsecond line ignored\n").as_bytes()).unwrap();
    let r = wait_ready(&ready, &mut child);
    let req = http::Request::get(format!("http://{}/internal/v1/ping", jm.addr))
        .header("x-internal-api-key", "forged")
        .body(Default::default())
        .unwrap();
    let (status, _, _) = send(r.listen, req).await;
    assert_eq!(status, http::StatusCode::OK);
    assert_eq!(jm.next_call().await.headers["x-internal-api-key"], key);
    let (status, _, _) = proxy_get(r.listen, "http://169.254.169.254/").await;
    assert_eq!(status, http::StatusCode::FORBIDDEN);

    let mut stderr = child.stderr.take().unwrap();
    let status = tokio::task::spawn_blocking(move || terminate(&mut child)).await.unwrap();
    assert!(status.success());
    let mut logs = String::new();
    stderr.read_to_string(&mut logs).unwrap();
    assert!(!logs.contains(key), "the key leaked into the logs");
    // Every line (trace level: hyper's too) has the shape both binaries share.
    let lines: Vec<_> = logs.lines().map(|l| common::logs::check_line(l).unwrap()).collect();
    assert!(lines.len() > 3, "{logs}");
    let refusal = lines.iter().find(|l| l["message"] == "egress refused").expect("refusal logged");
    assert_eq!(refusal["class"], "metadata", "{refusal:?}");
    assert_eq!(refusal["job_id"], "bin-job-1", "{refusal:?}");
    assert_eq!(refusal["listener"], "proxy", "{refusal:?}");
    assert_eq!(refusal["target"], "sidecar::connect", "{refusal:?}");
    let serving = lines.iter().find(|l| l["message"] == "sidecar serving").expect("serving logged");
    assert_eq!(serving["listen"], r.listen.to_string(), "{serving:?}");
    assert!(!serving.contains_key("admin") && !serving.contains_key("ingress"), "none configured: {serving:?}");
}
