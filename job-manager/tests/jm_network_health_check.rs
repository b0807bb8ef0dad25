//! `networkHealthCheckDisabled`: with the check on, a job manager that cannot reach its
//! broker at start (and has nothing running) exits 69; with it off, it starts and serves.
#![allow(clippy::unwrap_used)] // in a test, an unwrap is an assertion
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// The child and the address it serves on.
fn start(dir: &std::path::Path, disabled: bool) -> (std::process::Child, String) {
    // A port nothing listens on: connections are refused at once.
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap();
    let listen = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap();
    let examples = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/examples/local.yaml");
    let child = Command::new(env!("CARGO_BIN_EXE_job-manager"))
        .arg("--config")
        .arg(examples)
        .env_clear()
        .env("PATH", "/usr/bin:/bin")
        .env("JM_BROKER_API_ENDPOINT", format!("http://{closed}"))
        .env("JM_LOCATION_KEY", "k")
        .env("JM_LISTEN", listen.to_string())
        .env("JM_STATE_DIR", dir.join(if disabled { "off" } else { "on" }))
        .env("JM_NETWORK_HEALTH_CHECK_DISABLED", disabled.to_string())
        // As root the local executor claims a UID range per job manager on this host.
        .env("JM_LOCAL_UID_RANGE", uid_range(disabled))
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    (child, listen.to_string())
}

/// A range no other test's job manager is likely to hold at the same time.
fn uid_range(second: bool) -> String {
    let first = 600_000 + (std::process::id() % 4000) * 200 + if second { 100 } else { 0 };
    format!("{first}-{}", first + 99)
}

fn healthy(listen: &str) -> bool {
    use std::io::{Read, Write};
    let Ok(mut s) = std::net::TcpStream::connect(listen) else { return false };
    let _ = s.write_all(b"GET /healthz HTTP/1.0\r\n\r\n");
    let mut answer = String::new();
    let _ = s.read_to_string(&mut answer);
    answer.starts_with("HTTP/1.0 200") || answer.starts_with("HTTP/1.1 200")
}

#[test]
fn an_unreachable_broker_ends_the_start_only_while_the_check_is_on() {
    let tmp = tempfile::TempDir::new().unwrap();
    let (mut on, _) = start(tmp.path(), false);
    let status = on.wait().unwrap();
    assert_eq!(status.code(), Some(69), "broker unreachable, check on: EX_UNAVAILABLE");

    let (mut off, listen) = start(tmp.path(), true);
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut serving = false;
    while Instant::now() < deadline {
        if let Some(status) = off.try_wait().unwrap() {
            panic!("the job manager exited ({status}) although the health check is disabled");
        }
        if healthy(&listen) {
            serving = true;
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    // Still up a moment later: nothing checked the broker and gave up.
    std::thread::sleep(Duration::from_millis(500));
    let still_running = off.try_wait().unwrap().is_none();
    let _ = off.kill();
    let _ = off.wait();
    assert!(serving && still_running, "with networkHealthCheckDisabled the job manager starts without its broker");
}
