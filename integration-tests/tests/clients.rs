//! Real HTTP clients through the real `sidecar` binary (standard clients work
//! unchanged through it): curl, Python `requests`, Node `fetch` with undici's proxy agents and
//! headless Chromium, each against a local origin (`clients/origin.py`: HTTP + HTTPS with
//! a certificate made at test time). Every test asserts what the client actually got:
//! the origin's body, the sidecar's 403 and reason for a refused target, a CONNECT tunnel
//! for HTTPS.
//!
//! The sidecar is told `--allow-cidr 127.0.0.1/32` so the origin on 127.0.0.1 is
//! reachable; the same origin content on 127.0.0.2 is loopback it was *not* told to allow,
//! which is the refused destination here (no outside network needed). `--deny-public
//! --deny-private` put it in allow-list mode: whatever a client tries on its own
//! (Chromium's background requests) cannot become traffic off the machine.
//!
//! A missing client is a failure with the setup command, never a skip:
//! `deploy/scripts/setup-test-env.sh` installs them all (`make test` runs it).
#![allow(clippy::unwrap_used)] // in a test, an unwrap is an assertion

use std::io::{BufRead, BufReader, Read};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Output, Stdio};
use std::time::{Duration, Instant};

use integration_tests::bins::{bin_path, workspace_root};
use serde_json::Value;
use tempfile::TempDir;

// ---------------------------------------------------------------------------------------
// Fixtures
// ---------------------------------------------------------------------------------------

/// A scratch directory under the system temp dir, removed on drop.
fn temp_dir(tag: &str) -> TempDir {
    tempfile::Builder::new().prefix(&format!("clients-{tag}-")).tempdir().expect("create temp dir")
}

/// The checkout these tests run in. Prefers the runtime `CARGO_MANIFEST_DIR` (set by
/// cargo test and nextest) over the compile-time one: two checkouts sharing one target
/// dir share test binaries, and the scripts must come from the checkout under test.
fn repo_root() -> PathBuf {
    std::env::var_os("CARGO_MANIFEST_DIR")
        .and_then(|d| PathBuf::from(d).parent().map(Path::to_path_buf))
        .unwrap_or_else(workspace_root)
}

/// The `sidecar` binary of this checkout: `bins::bin_path` unless CARGO_TARGET_DIR is
/// unset and this checkout's own `target/debug/sidecar` exists (see `repo_root`).
fn sidecar_bin() -> PathBuf {
    let own = repo_root().join("target/debug/sidecar");
    if std::env::var_os("CARGO_TARGET_DIR").is_none() && own.is_file() {
        own
    } else {
        bin_path("sidecar")
    }
}

fn clients_dir() -> PathBuf {
    repo_root().join("integration-tests/clients")
}

/// Python of the test venv; `requests` lives there.
fn venv_python() -> PathBuf {
    let p = repo_root().join(".venv/bin/python");
    assert!(
        p.is_file(),
        "{} missing: run deploy/scripts/setup-test-env.sh (creates the test venv with `requests`)",
        p.display()
    );
    p
}

fn require_tool(name: &str) -> PathBuf {
    let found = std::env::var_os("PATH")
        .map(|paths| std::env::split_paths(&paths).map(|d| d.join(name)).find(|p| p.is_file()))
        .unwrap_or_default();
    found.unwrap_or_else(|| panic!("`{name}` not found on PATH: run deploy/scripts/setup-test-env.sh"))
}

/// The local origin (`clients/origin.py`). Lives until dropped: it exits when its stdin
/// closes, and is killed as well in case it does not.
struct Origin {
    child: Child,
    _stdin: ChildStdin,
    /// HTTP on 127.0.0.1 (allowed by the sidecar's `--allow-cidr`).
    http: SocketAddr,
    /// Same content on 127.0.0.2: loopback the sidecar refuses.
    http_refused: SocketAddr,
    /// HTTPS on 127.0.0.1, certificate in `cert`.
    https: SocketAddr,
    cert: PathBuf,
    /// Unique string every origin body carries.
    marker: String,
    _dir: TempDir,
}

impl Origin {
    fn start() -> Self {
        require_tool("openssl");
        let dir = temp_dir("origin");
        let marker = format!("origin-marker-{}-{}", std::process::id(), dir.path().display().to_string().len());
        let mut child = Command::new(venv_python())
            .arg(clients_dir().join("origin.py"))
            .arg("--dir")
            .arg(dir.path())
            .arg("--marker")
            .arg(&marker)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("spawn origin.py");
        let stdin = child.stdin.take().expect("origin stdin");
        // The first stdout line is the readiness signal (every listener accepts by then).
        let mut line = String::new();
        BufReader::new(child.stdout.take().expect("origin stdout"))
            .read_line(&mut line)
            .expect("read origin readiness line");
        assert!(!line.is_empty(), "origin.py exited before it was ready (see stderr above)");
        let v: Value = serde_json::from_str(&line).unwrap_or_else(|e| panic!("origin line {line:?}: {e}"));
        let addr = |k: &str| -> SocketAddr { v[k].as_str().expect(k).parse().expect(k) };
        Self {
            http: addr("http"),
            http_refused: addr("http_alt"),
            https: addr("https"),
            cert: PathBuf::from(v["cert"].as_str().expect("cert")),
            child,
            _stdin: stdin,
            marker,
            _dir: dir,
        }
    }

    fn hello_body(&self) -> String {
        format!("hello from origin {}", self.marker)
    }

    /// A URL on the allowed listener that answers `302 Location: to`.
    fn redirect_to(&self, to: &str) -> String {
        let to: String = to
            .bytes()
            .map(|b| if b.is_ascii_alphanumeric() { (b as char).to_string() } else { format!("%{b:02X}") })
            .collect();
        format!("http://{}/redirect?to={to}", self.http)
    }

    /// Requests the refused listener (127.0.0.2) has served, asked directly (no proxy).
    fn refused_hits(&self) -> u64 {
        let out = curl(&["-sS", "--max-time", "10", "--noproxy", "*", &format!("http://{}/hits", self.http)], &[]);
        assert!(out.status.success(), "GET /hits: {}", stderr(&out));
        let v: Value = serde_json::from_str(&stdout(&out)).unwrap_or_else(|e| panic!("/hits {:?}: {e}", stdout(&out)));
        v[self.http_refused.ip().to_string()].as_u64().unwrap_or(0)
    }
}

impl Drop for Origin {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The real sidecar binary on `127.0.0.1:0`, allowing the loopback origin.
struct Sidecar {
    child: Child,
    addr: SocketAddr,
    dir: TempDir,
}

impl Sidecar {
    fn start() -> Self {
        let dir = temp_dir("sidecar");
        let ready = dir.path().join("ready.json");
        let log = std::fs::File::create(dir.path().join("sidecar.log")).expect("sidecar log file");
        let mut child = Command::new(sidecar_bin())
            // Allow-list mode: the clients (Chromium phones home) reach the test's origins
            // on loopback and nothing else.
            .args(["--listen", "127.0.0.1:0", "--allow-cidr", "127.0.0.1/32", "--deny-public", "--deny-private"])
            .args(["--log-format", "json"])
            .arg("--ready-file")
            .arg(&ready)
            .env("SIDECAR_LOG_LEVEL", "debug")
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("dup log"))
            .stderr(log)
            .spawn()
            .expect("spawn sidecar");
        // The ready file is written atomically once the listener serves: wait for it.
        let deadline = Instant::now() + Duration::from_secs(20);
        let addr = loop {
            if let Ok(text) = std::fs::read_to_string(&ready) {
                let rf: common::runtime_api::ReadyFile =
                    serde_json::from_str(&text).unwrap_or_else(|e| panic!("ready file {text:?}: {e}"));
                break rf.listen;
            }
            if let Some(status) = child.try_wait().expect("try_wait sidecar") {
                panic!("sidecar exited with {status} before ready:\n{}", read_log(dir.path()));
            }
            assert!(Instant::now() < deadline, "sidecar not ready in 20s:\n{}", read_log(dir.path()));
            std::thread::sleep(Duration::from_millis(10));
        };
        Self { child, addr, dir }
    }

    fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    fn log(&self) -> String {
        read_log(self.dir.path())
    }

    /// `/metrics` of the sidecar, fetched directly (origin-form).
    fn metrics(&self) -> String {
        let out = curl(&["-sS", "--max-time", "10", "--noproxy", "*", &format!("{}/metrics", self.url())], &[]);
        assert!(out.status.success(), "GET /metrics failed: {}", stderr(&out));
        stdout(&out)
    }
}

fn read_log(dir: &Path) -> String {
    let mut s = String::new();
    if let Ok(mut f) = std::fs::File::open(dir.join("sidecar.log")) {
        let _ = f.read_to_string(&mut s);
    }
    s
}

impl Drop for Sidecar {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if std::thread::panicking() {
            eprintln!("--- sidecar log ---\n{}", self.log());
        }
    }
}

/// Sum of the samples of Prometheus metric `name` (counters are exposed as
/// `name_total{labels} value`) whose label set contains `labels` ("" = all).
fn metric_sum(metrics: &str, name: &str, labels: &str) -> f64 {
    metrics
        .lines()
        .filter(|l| !l.starts_with('#'))
        .filter(|l| l.starts_with(&format!("{name} ")) || (l.starts_with(&format!("{name}{{")) && l.contains(labels)))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

// ---------------------------------------------------------------------------------------
// Client runners
// ---------------------------------------------------------------------------------------

/// Proxy variables cleared before every client run so the machine's own settings never
/// leak into a test; each test sets exactly what it means.
const PROXY_VARS: [&str; 8] =
    ["http_proxy", "https_proxy", "no_proxy", "all_proxy", "HTTP_PROXY", "HTTPS_PROXY", "NO_PROXY", "ALL_PROXY"];

fn clean(cmd: &mut Command, env: &[(&str, &str)]) {
    for v in PROXY_VARS {
        cmd.env_remove(v);
    }
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd.stdin(Stdio::null());
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}
fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

fn curl(args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut cmd = Command::new(require_tool("curl"));
    clean(&mut cmd, env);
    cmd.args(args).output().expect("run curl")
}

/// Runs a client script that prints one JSON line (requests_client.py, fetch_client.mjs).
fn json_client(mut cmd: Command, env: &[(&str, &str)]) -> Value {
    clean(&mut cmd, env);
    let out = cmd.output().expect("run client");
    assert!(out.status.success(), "client failed: {}\n{}", out.status, stderr(&out));
    let text = stdout(&out);
    let line = text.lines().last().unwrap_or_default();
    serde_json::from_str(line).unwrap_or_else(|e| panic!("client output {text:?}: {e}\nstderr: {}", stderr(&out)))
}

fn requests(args: &[&str], env: &[(&str, &str)]) -> Value {
    let mut cmd = Command::new(venv_python());
    cmd.arg(clients_dir().join("requests_client.py")).args(args);
    json_client(cmd, env)
}

fn node_fetch(args: &[&str], env: &[(&str, &str)]) -> Value {
    let node_dir = clients_dir().join("node");
    assert!(
        node_dir.join("node_modules/undici/package.json").is_file(),
        "undici not installed in {}: run deploy/scripts/setup-test-env.sh (npm ci)",
        node_dir.display()
    );
    let mut cmd = Command::new(require_tool("node"));
    cmd.current_dir(&node_dir).arg("fetch_client.mjs").args(args);
    json_client(cmd, env)
}

/// Headless Chromium loading `url` through `proxy`; returns the dumped DOM and stderr.
fn chromium(proxy: &str, url: &str) -> Output {
    let browser = require_tool("chromium");
    let profile = temp_dir("chromium");
    let mut cmd = Command::new(require_tool("timeout"));
    clean(&mut cmd, &[]);
    cmd.arg("90")
        .arg(browser)
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--disable-dev-shm-usage",
            // The origin's certificate is self-signed; the test is about the proxy path.
            "--ignore-certificate-errors",
            // Chromium bypasses proxies for loopback unless told not to.
            "--proxy-bypass-list=<-loopback>",
        ])
        .arg(format!("--user-data-dir={}", profile.path().display()))
        .arg(format!("--proxy-server={proxy}"))
        .args(["--dump-dom", url]);
    cmd.output().expect("run chromium")
}

fn assert_refused_response(v: &Value, what: &str) {
    assert_eq!(v["status"], 403, "{what}: expected the sidecar's 403, got {v}");
    // 127.0.0.2 is refused as loopback: the stable label in the header, a sentence in the body.
    assert_eq!(v["headers"]["x-sidecar-error"], "loopback", "{what}: reason header in {v}");
    assert!(v["body"].as_str().unwrap_or_default().contains("127.0.0.2 is loopback"), "{what}: reason body in {v}");
}

/// Header value from `curl -D -` output (last response's headers).
fn header<'a>(dump: &'a str, name: &str) -> Option<&'a str> {
    dump.lines()
        .filter_map(|l| l.split_once(':'))
        .filter(|(k, _)| k.trim().eq_ignore_ascii_case(name))
        .map(|(_, v)| v.trim())
        .next_back()
}

// ---------------------------------------------------------------------------------------
// curl
// ---------------------------------------------------------------------------------------

#[test]
fn curl_proxy_flag_gets_origin_body() {
    let origin = Origin::start();
    let sidecar = Sidecar::start();
    let url = format!("http://{}/hello", origin.http);
    let out = curl(&["-sS", "--fail", "--max-time", "20", "--proxy", &sidecar.url(), &url], &[]);
    assert!(out.status.success(), "curl --proxy: {}", stderr(&out));
    assert_eq!(stdout(&out), origin.hello_body());
    // The body came through the sidecar, forwarded absolute-form.
    assert!(
        metric_sum(&sidecar.metrics(), "sidecar_requests_total", r#"kind="forward""#) >= 1.0,
        "{}",
        sidecar.metrics()
    );
}

#[test]
fn curl_keep_alive_reuses_one_proxy_connection() {
    let origin = Origin::start();
    let sidecar = Sidecar::start();
    let url = format!("http://{}/hello", origin.http);
    // Two URLs in one curl run: the second must reuse the proxy connection.
    let out = curl(&["-sS", "-v", "--fail", "--max-time", "20", "--proxy", &sidecar.url(), &url, &url], &[]);
    assert!(out.status.success(), "curl: {}", stderr(&out));
    assert_eq!(stdout(&out), origin.hello_body().repeat(2));
    assert!(
        stderr(&out).contains("Re-using existing connection") || stderr(&out).contains("Reusing existing"),
        "second request did not reuse the keep-alive proxy connection:\n{}",
        stderr(&out)
    );
}

#[test]
fn curl_posts_chunked_body_through_proxy() {
    let origin = Origin::start();
    let sidecar = Sidecar::start();
    let body = "x".repeat(100_000) + "-end";
    let body_file = temp_dir("body");
    let path = body_file.path().join("body");
    std::fs::write(&path, &body).unwrap();
    let data = format!("@{}", path.display());
    let url = format!("http://{}/echo", origin.http);
    let out = curl(
        &[
            "-sS",
            "--fail",
            "--max-time",
            "20",
            "--proxy",
            &sidecar.url(),
            "-H",
            "Transfer-Encoding: chunked",
            "--data-binary",
            &data,
            &url,
        ],
        &[],
    );
    assert!(out.status.success(), "curl chunked POST: {}", stderr(&out));
    assert_eq!(stdout(&out).len(), body.len());
    assert_eq!(stdout(&out), body);
}

#[test]
fn curl_env_https_goes_through_connect_tunnel() {
    let origin = Origin::start();
    let sidecar = Sidecar::start();
    let url = format!("https://{}/hello", origin.https);
    let cacert = origin.cert.display().to_string();
    let out = curl(
        &["-sS", "--fail", "--max-time", "20", "--cacert", &cacert, "-w", "\n%{http_connect}", &url],
        &[("HTTPS_PROXY", &sidecar.url())],
    );
    assert!(out.status.success(), "curl via HTTPS_PROXY: {}", stderr(&out));
    let text = stdout(&out);
    let (body, connect_code) = text.rsplit_once('\n').expect("body + connect code");
    assert_eq!(body, origin.hello_body());
    // %{http_connect} is the proxy's answer to CONNECT: 200 proves the tunnel was used.
    assert_eq!(connect_code, "200", "HTTPS did not go through a CONNECT tunnel");
    assert!(metric_sum(&sidecar.metrics(), "sidecar_tunnels_total", "") >= 1.0, "{}", sidecar.metrics());
}

#[test]
fn curl_refused_target_gets_403_with_reason() {
    let origin = Origin::start();
    let sidecar = Sidecar::start();
    // Plain HTTP: the 403 response itself, with reason header and body.
    let url = format!("http://{}/hello", origin.http_refused);
    let out = curl(&["-sS", "--max-time", "20", "-D", "-", "--proxy", &sidecar.url(), &url], &[]);
    let text = stdout(&out);
    assert!(text.starts_with("HTTP/1.1 403"), "expected 403 from the sidecar, got:\n{text}");
    assert_eq!(header(&text, "x-sidecar-error"), Some("loopback"), "reason header:\n{text}");
    let body = text.split_once("\r\n\r\n").map(|(_, b)| b).unwrap_or_default();
    assert!(body.contains("127.0.0.2 is loopback"), "403 without its reason:\n{text}");
    assert!(!body.contains(&origin.marker), "origin content leaked through a refusal");

    // HTTPS through env: the CONNECT is refused with 403 and curl never reaches the origin.
    let url = format!("https://{}/hello", origin.http_refused);
    let out = curl(&["-sS", "--max-time", "20", "-w", "%{http_connect}", &url], &[("HTTPS_PROXY", &sidecar.url())]);
    assert!(!out.status.success(), "CONNECT to a refused target succeeded");
    assert_eq!(stdout(&out), "403", "CONNECT answer; curl said: {}", stderr(&out));
    // Both refusals were the sidecar's policy, counted as denials.
    assert!(metric_sum(&sidecar.metrics(), "sidecar_denials_total", "") >= 2.0, "{}", sidecar.metrics());
}

/// Spellings of the refused listener's address (127.0.0.2) a redirect can point at.
fn refused_spellings(origin: &Origin) -> Vec<String> {
    let port = origin.http_refused.port();
    ["127.0.0.2", "2130706434", "0x7f000002", "0177.0.0.2", "127.2", "[::ffff:127.0.0.2]", "127.0.0.2."]
        .iter()
        .map(|h| format!("http://{h}:{port}/hello"))
        .collect()
}

#[test]
fn curl_following_a_redirect_to_a_refused_address_gets_403() {
    // The origin is allowed; its 302 points at an address the policy refuses, spelled in
    // every way. The client follows (-L) with a new request through the proxy, which
    // judges the new destination on its own: 403, and the refused listener never sees it.
    let origin = Origin::start();
    let sidecar = Sidecar::start();
    let mut targets = refused_spellings(&origin);
    targets.push("http://169.254.169.254/latest/meta-data/".into());
    for to in &targets {
        let url = origin.redirect_to(to);
        let out = curl(&["-sS", "-g", "-L", "--max-time", "20", "-D", "-", "--proxy", &sidecar.url(), &url], &[]);
        let text = stdout(&out);
        // Two responses: the origin's 302, then the sidecar's 403 for the followed request.
        assert!(text.starts_with("HTTP/1.1 302"), "{to}: the redirect itself:\n{text}\n{}", stderr(&out));
        let last = text.rsplit("HTTP/1.1 ").next().unwrap_or_default();
        assert!(last.starts_with("403"), "{to}: expected the sidecar's 403 after the redirect, got:\n{text}");
        let reason = header(&text, "x-sidecar-error");
        let want = if to.contains("169.254") { "metadata" } else { "loopback" };
        assert_eq!(reason, Some(want), "{to}: reason header in:\n{text}");
        assert!(!last.contains(&origin.marker), "{to}: refused origin's content leaked:\n{text}");
    }
    // HTTPS: a redirect to https://127.0.0.2 makes the client open a CONNECT, refused.
    let to = format!("https://{}/hello", origin.http_refused);
    let (url, written) = (origin.redirect_to(&to), "%{num_redirects} %{http_connect}");
    let out = curl(
        &["-sS", "-L", "--max-time", "20", "-o", "/dev/null", "-w", written, &url],
        &[("HTTP_PROXY", &sidecar.url()), ("HTTPS_PROXY", &sidecar.url())],
    );
    assert!(!out.status.success(), "following to {to} succeeded");
    // One redirect followed, whose CONNECT the sidecar answered 403.
    assert_eq!(stdout(&out), "1 403", "redirect then refused CONNECT; curl said: {}", stderr(&out));
    assert_eq!(origin.refused_hits(), 0, "a refused destination was reached through a redirect");
    let denials = metric_sum(&sidecar.metrics(), "sidecar_denials_total", "");
    assert!(denials >= (targets.len() + 1) as f64, "{} denials for {} refused follow-ups", denials, targets.len() + 1);
}

#[test]
fn curl_no_proxy_bypasses_the_sidecar() {
    let origin = Origin::start();
    let sidecar = Sidecar::start();
    let url = format!("http://{}/hello", origin.http_refused);
    // Through the sidecar this destination is refused ...
    let via = curl(
        &["-s", "--max-time", "20", "-o", "/dev/null", "-w", "%{http_code}", &url],
        &[("HTTP_PROXY", &sidecar.url()), ("http_proxy", &sidecar.url())],
    );
    assert_eq!(stdout(&via), "403");
    assert_eq!(origin.refused_hits(), 0, "the refused request reached the origin");
    // ... NO_PROXY sends it direct, so the origin answers.
    let direct = curl(
        &["-sS", "--fail", "--max-time", "20", &url],
        &[("HTTP_PROXY", &sidecar.url()), ("http_proxy", &sidecar.url()), ("NO_PROXY", "127.0.0.2")],
    );
    assert!(direct.status.success(), "curl with NO_PROXY: {}", stderr(&direct));
    assert_eq!(stdout(&direct), origin.hello_body());
    // The counter the redirect tests rely on sees the request that did get there.
    assert_eq!(origin.refused_hits(), 1, "the direct request was not counted");
}

#[test]
fn curl_through_proxy_to_the_sidecar_itself_reaches_its_own_api() {
    // common/CONTRACTS.md: NO_PROXY is empty by default, so a runtime's calls to the sidecar's
    // own address also arrive absolute-form through the proxy; the sidecar serves them.
    let sidecar = Sidecar::start();
    let url = format!("{}/healthz", sidecar.url());
    let out = curl(
        &["-sS", "--max-time", "20", "-o", "/dev/null", "-w", "%{http_code}", &url],
        &[("http_proxy", &sidecar.url())],
    );
    assert_eq!(stdout(&out), "200", "absolute-form /healthz to the sidecar itself: {}", stderr(&out));
}

// ---------------------------------------------------------------------------------------
// Python requests
// ---------------------------------------------------------------------------------------

#[test]
fn requests_env_proxies_http_and_https() {
    let origin = Origin::start();
    let sidecar = Sidecar::start();
    let env = [("HTTP_PROXY", sidecar.url()), ("HTTPS_PROXY", sidecar.url())];
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();

    let v = requests(&[&format!("http://{}/hello", origin.http)], &env);
    assert_eq!(v["status"], 200, "{v}");
    assert_eq!(v["body"], origin.hello_body());

    let cacert = origin.cert.display().to_string();
    let v = requests(&[&format!("https://{}/hello", origin.https), "--cacert", &cacert], &env);
    assert_eq!(v["status"], 200, "{v}");
    assert_eq!(v["body"], origin.hello_body());

    let v = requests(
        &[&format!("http://{}/echo", origin.http), "--method", "POST", "--data", "posted through the sidecar"],
        &env,
    );
    assert_eq!(v["status"], 200, "{v}");
    assert_eq!(v["body"], "posted through the sidecar");

    // The refused address is refused through the proxy, and NO_PROXY sends it direct.
    let refused = format!("http://{}/hello", origin.http_refused);
    let v = requests(&[&refused], &env);
    assert_refused_response(&v, "requests via env");
    let mut env_no_proxy = env.clone();
    env_no_proxy.push(("NO_PROXY", "127.0.0.2"));
    let v = requests(&[&refused], &env_no_proxy);
    assert_eq!(v["status"], 200, "{v}");
    assert_eq!(v["body"], origin.hello_body());
}

#[test]
fn requests_refused_target_gets_403_with_reason() {
    let origin = Origin::start();
    let sidecar = Sidecar::start();
    let proxy = sidecar.url();
    let v = requests(&[&format!("http://{}/hello", origin.http_refused), "--proxy", &proxy], &[]);
    assert_refused_response(&v, "requests http");

    // HTTPS: requests surfaces the refused CONNECT as a ProxyError carrying the status.
    let v = requests(&[&format!("https://{}/hello", origin.http_refused), "--proxy", &proxy], &[]);
    assert_eq!(v["error"], "ProxyError", "{v}");
    assert!(v["message"].as_str().unwrap_or_default().contains("403"), "{v}");
}

#[test]
fn requests_following_a_redirect_to_a_refused_address_gets_403() {
    // requests follows redirects by default: the followed request is the proxy's to judge.
    let origin = Origin::start();
    let sidecar = Sidecar::start();
    let proxy = sidecar.url();
    for to in refused_spellings(&origin) {
        let v = requests(&[&origin.redirect_to(&to), "--proxy", &proxy], &[]);
        assert_eq!(v["status"], 403, "{to}: expected the sidecar's 403 after the redirect, got {v}");
        assert_eq!(v["headers"]["x-sidecar-error"], "loopback", "{to}: {v}");
    }
    assert_eq!(origin.refused_hits(), 0, "a refused destination was reached through a redirect");
}

// ---------------------------------------------------------------------------------------
// Node fetch (undici)
// ---------------------------------------------------------------------------------------

#[test]
fn node_proxy_agent_fetches_https_and_http() {
    let origin = Origin::start();
    let sidecar = Sidecar::start();
    let proxy = sidecar.url();
    let cacert = origin.cert.display().to_string();

    let v = node_fetch(&[&format!("https://{}/hello", origin.https), "--proxy", &proxy, "--cacert", &cacert], &[]);
    assert_eq!(v["status"], 200, "{v}");
    assert_eq!(v["body"], origin.hello_body());

    // undici tunnels http:// through CONNECT by default; both paths must work.
    let http = format!("http://{}/hello", origin.http);
    for extra in [None, Some("--forward")] {
        let mut args = vec![http.as_str(), "--proxy", &proxy];
        args.extend(extra);
        let v = node_fetch(&args, &[]);
        assert_eq!(v["status"], 200, "{extra:?}: {v}");
        assert_eq!(v["body"], origin.hello_body(), "{extra:?}");
    }

    let v = node_fetch(
        &[
            &format!("http://{}/echo", origin.http),
            "--proxy",
            &proxy,
            "--forward",
            "--method",
            "POST",
            "--data",
            "from node",
        ],
        &[],
    );
    assert_eq!(v["body"], "from node", "{v}");
}

#[test]
fn node_env_proxy_agent_follows_env_and_refusals() {
    let origin = Origin::start();
    let sidecar = Sidecar::start();
    let proxy = sidecar.url();
    let cacert = origin.cert.display().to_string();
    let env = [("HTTP_PROXY", proxy.as_str()), ("HTTPS_PROXY", proxy.as_str())];

    let v = node_fetch(&[&format!("https://{}/hello", origin.https), "--env", "--cacert", &cacert], &env);
    assert_eq!(v["status"], 200, "{v}");
    assert_eq!(v["body"], origin.hello_body());

    let refused = format!("http://{}/hello", origin.http_refused);
    let v = node_fetch(&[&refused, "--env", "--forward"], &env);
    assert_refused_response(&v, "undici forward");

    // Tunnelled, the refusal is the CONNECT's status, reported down the cause chain.
    let v = node_fetch(&[&refused, "--env"], &env);
    assert!(v["error"].is_string(), "refused CONNECT succeeded: {v}");
    assert!(v["causes"].to_string().contains("Proxy response (403)"), "{v}");

    // fetch follows redirects by default; the followed request is judged on its own,
    // forwarded (403 response) and tunnelled (refused CONNECT).
    let redirect = origin.redirect_to(&refused);
    let v = node_fetch(&[&redirect, "--env", "--forward"], &env);
    assert_refused_response(&v, "undici forward, after a redirect");
    let v = node_fetch(&[&redirect, "--env"], &env);
    assert!(v["causes"].to_string().contains("Proxy response (403)"), "tunnelled, after a redirect: {v}");
    assert_eq!(origin.refused_hits(), 0, "a refused destination was reached through a redirect");

    // NO_PROXY: the same refused address goes direct and the origin answers.
    let env_no_proxy = [env[0], env[1], ("NO_PROXY", "127.0.0.2")];
    let v = node_fetch(&[&refused, "--env", "--forward"], &env_no_proxy);
    assert_eq!(v["status"], 200, "{v}");
    assert_eq!(v["body"], origin.hello_body());
}

// ---------------------------------------------------------------------------------------
// Headless Chromium
// ---------------------------------------------------------------------------------------

#[test]
fn chromium_loads_https_page_through_sidecar() {
    let origin = Origin::start();
    let sidecar = Sidecar::start();
    let out = chromium(&sidecar.url(), &format!("https://{}/page.html", origin.https));
    let dom = stdout(&out);
    assert!(
        dom.contains(&format!(r#"<h1 id="marker">{}</h1>"#, origin.marker)),
        "page not loaded through the sidecar; dom:\n{dom}\nstderr tail:\n{}",
        tail(&stderr(&out), 20)
    );
    // The browser spoke to the origin through a tunnel, not directly.
    let tunnels = metric_sum(&sidecar.metrics(), "sidecar_tunnels_total", "");
    assert!(tunnels >= 1.0, "no CONNECT tunnel counted by the sidecar:\n{}", sidecar.metrics());
}

#[test]
fn chromium_refused_https_target_fails_tunnel() {
    let origin = Origin::start();
    let sidecar = Sidecar::start();
    // 127.0.0.2 is loopback the sidecar was not told to allow.
    let port = origin.http_refused.port();
    let out = chromium(&sidecar.url(), &format!("https://127.0.0.2:{port}/page.html"));
    assert!(!stdout(&out).contains(&origin.marker), "refused origin's page was loaded");
    assert!(
        stderr(&out).contains("ERR_TUNNEL_CONNECTION_FAILED"),
        "expected the sidecar to refuse the CONNECT; stderr tail:\n{}",
        tail(&stderr(&out), 20)
    );
}

// ---------------------------------------------------------------------------------------
// Network namespace: `sidecar egress-init` firewall, runtime user only gets out via the sidecar
// ---------------------------------------------------------------------------------------

#[test]
fn netns_runtime_user_blocked_directly_reaches_origin_through_sidecar() {
    // Root only (namespaces, nftables); `make test` runs as root on CI's machine. The
    // script builds throwaway namespaces, installs the firewall with the sidecar binary's
    // `egress-init` and prints one `ok - ` line per check.
    let script = clients_dir().join("netns-egress.sh");
    let out = Command::new(&script).arg(sidecar_bin()).stdin(Stdio::null()).output().expect("run netns-egress.sh");
    let text = stdout(&out);
    assert!(out.status.success(), "netns-egress.sh failed ({}):\n{text}\n{}", out.status, stderr(&out));
    assert_eq!(text.lines().filter(|l| l.starts_with("ok - ")).count(), 11, "expected 11 passing checks:\n{text}");
}

fn tail(s: &str, n: usize) -> String {
    let lines: Vec<&str> = s.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

#[test]
fn helpers_read_metrics_and_headers() {
    let metrics = "# HELP sidecar_requests Requests\n# TYPE sidecar_requests counter\n\
        sidecar_requests_total{kind=\"forward\"} 3\nsidecar_requests_total{kind=\"local\"} 5\n\
        sidecar_tunnels_total 2\nsidecar_tunnels_total_extra 9\n";
    assert_eq!(metric_sum(metrics, "sidecar_requests_total", r#"kind="forward""#), 3.0);
    assert_eq!(metric_sum(metrics, "sidecar_requests_total", ""), 8.0);
    assert_eq!(metric_sum(metrics, "sidecar_tunnels_total", ""), 2.0);
    assert_eq!(metric_sum(metrics, "sidecar_missing_total", ""), 0.0);

    let dump = "HTTP/1.1 403 Forbidden\r\nContent-Type: text/plain\r\nX-Sidecar-Error: loopback\r\n\r\nbody";
    assert_eq!(header(dump, "x-sidecar-error"), Some("loopback"));
    assert_eq!(header(dump, "content-length"), None);
}
