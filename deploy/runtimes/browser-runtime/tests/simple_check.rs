//! The real `browser-runtime` with real headless Chromium, behind the real `sidecar`
//! binary, checking pages a loopback origin in this test serves: simple checks, scripted
//! checks (`$browser` in the API runtime's engine), persistent mode and clean-up. Everything is on
//! loopback: the sidecar runs in allow-list mode (`--allow-cidr 127.0.0.1/32
//! --deny-public --deny-private`), so whatever Chromium might try on its own cannot leave
//! the machine. The sidecar gets the job from a job directory and delivers the result
//! to a fake job manager here, exactly as in the local executor.
//!
//! Chromium missing is a failure with the setup command, never a skip
//! (`deploy/scripts/setup-test-env.sh` installs it).
#![allow(clippy::unwrap_used)] // in a test, an unwrap is an assertion

use base64::Engine as _;
use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;
use serde_json::{json, Value};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::net::TcpListener;

const RUNTIME: &str = env!("CARGO_BIN_EXE_browser-runtime");

fn workspace_root() -> PathBuf {
    let manifest = std::env::var_os("CARGO_MANIFEST_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")));
    manifest.ancestors().nth(3).expect("deploy/runtimes/browser-runtime sits in the workspace").to_path_buf()
}

/// The workspace's `sidecar` binary (debug profile), built by `make test`.
fn sidecar_bin() -> PathBuf {
    let target = match std::env::var_os("CARGO_TARGET_DIR") {
        Some(d) if Path::new(&d).is_absolute() => PathBuf::from(d),
        Some(d) => workspace_root().join(d),
        None => workspace_root().join("target"),
    };
    let p = target.join("debug/sidecar");
    assert!(p.is_file(), "{} not found: `cargo build -p sidecar` (make test builds every binary)", p.display());
    p
}

fn require_chromium() {
    let found = Path::new("/usr/lib/chromium/chromium").is_file()
        || std::env::var_os("PATH")
            .map(|paths| std::env::split_paths(&paths).any(|d| d.join("chromium").is_file()))
            .unwrap_or(false);
    assert!(found, "chromium not installed: run deploy/scripts/setup-test-env.sh");
}

async fn serve<F, Fut>(handler: F) -> SocketAddr
where
    F: Fn(Request<hyper::body::Incoming>) -> Fut + Clone + Send + Sync + 'static,
    Fut: std::future::Future<Output = Response<Full<Bytes>>> + Send + 'static,
{
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else { return };
            let handler = handler.clone();
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(move |req| {
                    let handler = handler.clone();
                    async move { Ok::<_, std::convert::Infallible>(handler(req).await) }
                });
                let _ = hyper::server::conn::http1::Builder::new().serve_connection(TokioIo::new(stream), svc).await;
            });
        }
    });
    addr
}

fn html(status: u16, body: &str) -> Response<Full<Bytes>> {
    Response::builder()
        .status(status)
        .header("content-type", "text/html; charset=utf-8")
        .body(Full::new(Bytes::from(body.to_string())))
        .unwrap()
}

/// The pages under test.
async fn origin() -> SocketAddr {
    serve(|req: Request<hyper::body::Incoming>| async move {
        match req.uri().path() {
            "/ok" => html(
                200,
                "<!doctype html><html><head><title>Browser check OK</title>\
                 <style>body{background:#2a6;color:#fff;font:32px sans-serif}</style></head>\
                 <body><h1>Hello from the loopback origin</h1>\
                 <script>console.error('synthetic console error', 42); console.log('not an error');</script>\
                 <img src=\"/missing.png\"></body></html>",
            ),
            "/form" => html(
                200,
                "<!doctype html><title>Form page</title>\
                 <input id=\"q\" name=\"q\"><button id=\"go\">Go</button><p id=\"result\"></p>\
                 <a href=\"/ok\">to the OK page</a>\
                 <script>document.getElementById('go').addEventListener('click', e => {\
                   if (!e.isTrusted) return;\
                   setTimeout(() => { const r = document.getElementById('result');\
                     r.textContent = 'Hello, ' + document.getElementById('q').value; r.className = 'done'; }, 300);\
                 });</script>",
            ),
            // Starts WebRTC ICE gathering against the STUN server named in the query, and
            // holds the load event for a second (a slow image) so gathering has run.
            "/webrtc" => {
                let stun = req.uri().query().unwrap_or_default().to_string();
                html(
                    200,
                    &format!(
                        "<!doctype html><title>webrtc</title><script>\
                         const pc = new RTCPeerConnection({{ iceServers: [{{ urls: 'stun:{stun}' }}] }});\
                         pc.createDataChannel('x'); pc.createOffer().then(o => pc.setLocalDescription(o));\
                         </script><img src=\"/slow.png\">"
                    ),
                )
            }
            "/slow.png" => {
                tokio::time::sleep(Duration::from_millis(1500)).await;
                html(404, "")
            }
            "/busy" => html(200, "<!doctype html><title>busy</title><script>while (true) {}</script>"),
            "/throws" => html(200, "<!doctype html><script>null.boom();</script><p>x</p>"),
            // Never answers: the page's load event never fires.
            "/never.js" => {
                tokio::time::sleep(Duration::from_secs(3600)).await;
                html(200, "")
            }
            "/hang" => html(200, "<!doctype html><title>hang</title><p>loading<script src=\"/never.js\"></script>"),
            _ => html(404, "<!doctype html><title>Not here</title><h1>404</h1>"),
        }
    })
    .await
}

/// A job manager that accepts results (`POST /internal/v1/jobs/{id}/result`).
#[derive(Clone, Default)]
struct FakeJobManager {
    results: Arc<Mutex<Vec<Value>>>,
}

impl FakeJobManager {
    async fn start(&self) -> SocketAddr {
        let results = self.results.clone();
        serve(move |req: Request<hyper::body::Incoming>| {
            let results = results.clone();
            async move {
                let path = req.uri().path().to_string();
                if req.method() == http::Method::POST && path.ends_with("/result") {
                    let body = req.into_body().collect().await.unwrap().to_bytes();
                    results.lock().unwrap().push(serde_json::from_slice(&body).unwrap());
                    return Response::builder().status(StatusCode::NO_CONTENT).body(Full::default()).unwrap();
                }
                html(404, "")
            }
        })
        .await
    }
}

/// A result for failure messages: artifacts without their data.
fn shown(r: &Value) -> String {
    let mut r = r.clone();
    if let Some(list) = r.pointer_mut("/output/artifacts").and_then(Value::as_array_mut) {
        for a in list {
            a["data"] = json!("...");
        }
    }
    format!("{r:#}")
}

struct Run {
    /// The `JobResult` the job manager got.
    result: Value,
    runtime_stderr: String,
    runtime_exit: std::process::ExitStatus,
    /// Processes still carrying this run's environment marker after the runtime exited.
    leftovers: Vec<String>,
    /// Most processes carrying the marker seen at once during the run.
    most_processes: usize,
    wall: Duration,
}

/// Pids (with their command lines) whose environment contains `marker`.
fn processes_with(marker: &str) -> Vec<String> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let name = entry.file_name().to_string_lossy().to_string();
        if !name.chars().all(|c| c.is_ascii_digit()) {
            continue;
        }
        let Ok(env) = std::fs::read(entry.path().join("environ")) else { continue };
        if env.split(|b| *b == 0).any(|kv| kv == marker.as_bytes()) {
            let cmd = std::fs::read(entry.path().join("cmdline")).unwrap_or_default();
            found.push(format!("{name}: {}", String::from_utf8_lossy(&cmd).replace('\0', " ")));
        }
    }
    found
}

/// The real sidecar on loopback in allow-list mode, delivering to `jm_addr`.
struct Sidecar {
    child: tokio::process::Child,
    ready: common::runtime_api::ReadyFile,
}

impl Sidecar {
    async fn start(dir: &Path, jm_addr: SocketAddr, args: &[&str]) -> Sidecar {
        let ready = dir.join("ready.json");
        let log = dir.join("sidecar.log");
        let mut child = tokio::process::Command::new(sidecar_bin())
            .args(["--listen", "127.0.0.1:0", "--allow-cidr", "127.0.0.1/32", "--deny-public", "--deny-private"])
            .arg("--ready-file")
            .arg(&ready)
            .args(["--job-manager-url", &format!("http://{jm_addr}")])
            .env("SIDECAR_INTERNAL_API_KEY", "test-key")
            .arg("--spool-dir")
            .arg(dir.join("spool"))
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .kill_on_drop(true)
            .spawn()
            .expect("spawn sidecar");
        let waited = Instant::now();
        loop {
            if let Ok(text) = std::fs::read_to_string(&ready) {
                return Sidecar { child, ready: serde_json::from_str(&text).unwrap() };
            }
            assert!(
                child.try_wait().unwrap().is_none(),
                "sidecar exited before ready:\n{}",
                std::fs::read_to_string(&log).unwrap_or_default()
            );
            assert!(waited.elapsed() < Duration::from_secs(20), "sidecar not ready in 20s");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    fn url(&self) -> String {
        format!("http://{}", self.ready.listen)
    }
}

/// The runtime's command: the contract's environment (and nothing of this machine's
/// proxy settings), a private TMPDIR and HOME, and `marker` in its environment.
fn runtime_command(sidecar: &Sidecar, dir: &Path, marker: &str) -> tokio::process::Command {
    let (mk, mv) = marker.split_once('=').unwrap();
    let mut cmd = tokio::process::Command::new(RUNTIME);
    for v in
        ["http_proxy", "https_proxy", "no_proxy", "all_proxy", "HTTP_PROXY", "HTTPS_PROXY", "NO_PROXY", "ALL_PROXY"]
    {
        cmd.env_remove(v);
    }
    for d in ["tmp", "home"] {
        std::fs::create_dir_all(dir.join(d)).unwrap();
    }
    cmd.env("JOB_API_URL", sidecar.url())
        .env("HTTP_PROXY", sidecar.url())
        .env("HTTPS_PROXY", sidecar.url())
        .env("TMPDIR", dir.join("tmp"))
        .env("HOME", dir.join("home"))
        .env(mk, mv)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    cmd
}

/// Writes the job directory the sidecar hands the job from.
fn job_dir(dir: &Path, id: &str, payload: &Value, timeout_secs: u32) -> PathBuf {
    let job_dir = dir.join("job");
    std::fs::create_dir(&job_dir).unwrap();
    let job =
        json!({ "id": id, "runtime_type": "node-browser-runtime", "timeout_secs": timeout_secs, "payload": payload });
    std::fs::write(job_dir.join("job.json"), job.to_string()).unwrap();
    std::fs::write(job_dir.join("token"), "test-token").unwrap();
    job_dir
}

async fn wait_for_result(jm: &FakeJobManager, n: usize, why: &str) -> Vec<Value> {
    let waited = Instant::now();
    loop {
        let got = jm.results.lock().unwrap().clone();
        if got.len() >= n {
            return got;
        }
        assert!(waited.elapsed() < Duration::from_secs(30), "no result reached the job manager:\n{why}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn marker_for(id: &str) -> String {
    format!("BROWSER_RUNTIME_TEST_MARKER={id}-{}", std::process::id())
}

/// Processes (zombies included) whose parent is `pid`: "pid state comm".
fn children_of(pid: u32) -> Vec<String> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(stat) = std::fs::read_to_string(entry.path().join("stat")) else { continue };
        // pid (comm) state ppid ...: comm may hold spaces, so split after the last ')'.
        let Some((head, rest)) = stat.rsplit_once(')') else { continue };
        let fields: Vec<&str> = rest.split_whitespace().collect();
        if fields.get(1).and_then(|p| p.parse::<u32>().ok()) == Some(pid) {
            found.push(format!("{head}) {}", fields[0]));
        }
    }
    found
}

/// One job through sidecar + runtime, the result as the job manager received it.
async fn run_job(id: &str, payload: Value, timeout_secs: u32) -> Run {
    require_chromium();
    let jm = FakeJobManager::default();
    let jm_addr = jm.start().await;
    let dir = tempfile::Builder::new().prefix("brt-").tempdir().unwrap();
    let jobs = job_dir(dir.path(), id, &payload, timeout_secs);
    let mut sidecar = Sidecar::start(dir.path(), jm_addr, &["--job-dir", jobs.to_str().unwrap()]).await;
    let marker = marker_for(id);
    let started = Instant::now();
    let child = runtime_command(&sidecar, dir.path(), &marker).spawn().expect("spawn browser-runtime");
    // While it runs, count the processes carrying the marker (the runtime, Chromium and
    // its helpers): proof that the leftover check below can see Chromium.
    let most_seen = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let sampler = tokio::spawn({
        let (marker, most_seen) = (marker.clone(), most_seen.clone());
        async move {
            loop {
                let n = processes_with(&marker).len();
                most_seen.fetch_max(n, std::sync::atomic::Ordering::Relaxed);
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    });
    let out = tokio::time::timeout(Duration::from_secs(u64::from(timeout_secs) + 30), child.wait_with_output())
        .await
        .expect("browser-runtime did not exit")
        .unwrap();
    sampler.abort();
    let wall = started.elapsed();
    let leftovers = processes_with(&marker);
    let runtime_stderr = String::from_utf8_lossy(&out.stderr).to_string();
    let result = wait_for_result(&jm, 1, &runtime_stderr).await.remove(0);
    let _ = sidecar.child.start_kill();
    let _ = sidecar.child.wait().await;
    let tmp = dir.path().join("tmp");
    let profile_left: Vec<_> = std::fs::read_dir(&tmp).unwrap().flatten().map(|e| e.path()).collect();
    assert!(profile_left.is_empty(), "the runtime left files in its temp dir: {profile_left:?}");
    let most_processes = most_seen.load(std::sync::atomic::Ordering::Relaxed);
    Run { result, runtime_stderr, runtime_exit: out.status, leftovers, most_processes, wall }
}

/// Decodes a base64 PNG and checks its structure: signature, IHDR dimensions, IEND.
fn png_dimensions(b64: &str) -> (u32, u32) {
    let png = base64::engine::general_purpose::STANDARD.decode(b64).expect("screenshot is base64");
    assert_eq!(&png[..8], b"\x89PNG\r\n\x1a\n", "PNG signature");
    assert_eq!(&png[12..16], b"IHDR", "first chunk is IHDR");
    assert_eq!(&png[png.len() - 8..png.len() - 4], b"IEND", "last chunk is IEND");
    let be = |i: usize| u32::from_be_bytes(png[i..i + 4].try_into().unwrap());
    (be(16), be(20))
}

/// Pixels of a base64 PNG, decoded by Python's zlib (the workspace has no inflate):
/// the colour at the bottom-right corner and how many pixels of the top 80 rows are
/// near white.
fn png_pixels(b64: &str) -> ((u8, u8, u8), usize) {
    const DECODE: &str = r#"
import base64, struct, sys, zlib
png = base64.b64decode(sys.stdin.read())
pos, idat, w, h, ctype = 8, b"", 0, 0, 0
while pos < len(png):
    n, kind = struct.unpack(">I4s", png[pos:pos + 8]); data = png[pos + 8:pos + 8 + n]; pos += 12 + n
    if kind == b"IHDR": w, h, depth, ctype = struct.unpack(">IIBB", data[:10]); assert depth == 8, depth
    elif kind == b"IDAT": idat += data
bpp = {2: 3, 6: 4}[ctype]; raw = zlib.decompress(idat); stride = w * bpp; rows = []; prev = bytearray(stride)
for y in range(h):
    f, line = raw[y * (stride + 1)], bytearray(raw[y * (stride + 1) + 1:(y + 1) * (stride + 1)])
    for i in range(stride):
        a = line[i - bpp] if i >= bpp else 0; b = prev[i]; c = prev[i - bpp] if i >= bpp else 0
        if f == 1: line[i] = (line[i] + a) & 255
        elif f == 2: line[i] = (line[i] + b) & 255
        elif f == 3: line[i] = (line[i] + (a + b) // 2) & 255
        elif f == 4:
            p = a + b - c; pa, pb, pc = abs(p - a), abs(p - b), abs(p - c)
            line[i] = (line[i] + (a if pa <= pb and pa <= pc else b if pb <= pc else c)) & 255
    rows.append(line); prev = line
px = lambda x, y: tuple(rows[y][x * bpp:x * bpp + 3])
white = sum(1 for y in range(80) for x in range(w) if min(px(x, y)) > 200)
print(*px(w - 1, h - 1), white)
"#;
    let mut child = std::process::Command::new("python3")
        .args(["-c", DECODE])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("python3 decodes the screenshot");
    use std::io::Write as _;
    child.stdin.take().unwrap().write_all(b64.as_bytes()).unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "PNG decode failed");
    let text = String::from_utf8(out.stdout).unwrap();
    let v: Vec<usize> = text.split_whitespace().map(|n| n.parse().unwrap()).collect();
    ((v[0] as u8, v[1] as u8, v[2] as u8), v[3])
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn simple_check_passes_with_screenshot_timings_console_errors_and_failed_requests() {
    let origin = origin().await;
    let url = format!("http://{origin}/ok");
    let run = run_job("browser-ok", json!({ "type": "simple", "url": url }), 30).await;
    let r = &run.result;
    assert_eq!(r["outcome"], "succeeded", "{}\n{}", shown(r), run.runtime_stderr);
    assert!(run.runtime_exit.success(), "{}", run.runtime_stderr);
    assert_eq!(r["job_id"], "browser-ok");
    assert_eq!(r["message"], format!("loaded {url} -> 200 OK"));
    let out = &r["output"];
    assert_eq!(out["status"], 200);
    assert_eq!(out["final_url"], url);
    let t = &out["timings"];
    for k in ["connect_ms", "ttfb_ms", "dom_content_loaded_ms", "load_ms"] {
        assert!(t[k].as_f64().is_some(), "timing {k} missing: {t}");
    }
    assert!(t["load_ms"].as_f64().unwrap() > 0.0, "{t}");
    assert!(t["load_ms"].as_f64() >= t["dom_content_loaded_ms"].as_f64(), "{t}");
    assert_eq!(t["tls_ms"], Value::Null, "plain HTTP has no TLS phase: {t}");
    assert!(out["chromium_start_ms"].as_u64().unwrap() > 0);

    let errors = out["console_errors"].as_array().unwrap();
    assert!(
        errors.iter().any(|e| e["source"] == "console" && e["text"] == "synthetic console error 42"),
        "console.error captured: {errors:?}"
    );
    assert!(!errors.iter().any(|e| e["text"].as_str().unwrap_or_default().contains("not an error")), "{errors:?}");
    let failed = out["failed_requests"].as_array().unwrap();
    assert!(
        failed.iter().any(|f| f["url"] == format!("http://{origin}/missing.png") && f["status"] == 404),
        "the 404 image is a failed request: {failed:?}"
    );

    let shot = &out["artifacts"][0];
    assert_eq!((shot["name"].as_str(), shot["content_type"].as_str()), (Some("screenshot.png"), Some("image/png")));
    assert_eq!(png_dimensions(shot["data"].as_str().unwrap()), (1280, 720));
    // The page was painted: its green background fills the viewport, and its white
    // heading text (fonts work) is in the top rows.
    let (corner, white) = png_pixels(shot["data"].as_str().unwrap());
    assert_eq!(corner, (0x22, 0xaa, 0x66), "background colour at the bottom-right corner");
    assert!(white > 500, "white heading pixels in the top rows: {white}");
    assert!(run.leftovers.is_empty(), "chromium left running: {:?}", run.leftovers);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_404_main_document_fails_with_its_status() {
    let origin = origin().await;
    let url = format!("http://{origin}/nothing-here");
    let run = run_job("browser-404", json!({ "type": "simple", "url": url }), 30).await;
    let r = &run.result;
    assert_eq!(r["outcome"], "failed", "{}", shown(r));
    assert_eq!(r["message"], format!("main document {url} answered 404 Not Found"));
    assert_eq!(r["output"]["status"], 404);
    // The error page is still pictured.
    assert_eq!(png_dimensions(r["output"]["artifacts"][0]["data"].as_str().unwrap()), (1280, 720));
    assert!(run.leftovers.is_empty(), "chromium left running: {:?}", run.leftovers);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_uncaught_exception_is_a_console_error_with_its_line() {
    let origin = origin().await;
    let run = run_job(
        "browser-throws",
        json!({ "type": "simple", "url": format!("http://{origin}/throws"), "screenshot": false }),
        30,
    )
    .await;
    let r = &run.result;
    assert_eq!(r["outcome"], "succeeded", "a script error does not fail a simple check: {r:#}");
    let errors = r["output"]["console_errors"].as_array().unwrap();
    let ex = errors.iter().find(|e| e["source"] == "exception").unwrap_or_else(|| panic!("{errors:?}"));
    assert!(ex["text"].as_str().unwrap().starts_with("TypeError: Cannot read properties of null"), "{ex}");
    assert_eq!(ex["line"], 1, "{ex}");
    assert!(r["output"].get("artifacts").is_none(), "screenshot: false takes none");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_url_fails_with_the_sidecars_reason() {
    // A port nothing listens on (bound, then closed).
    let closed = TcpListener::bind("127.0.0.1:0").await.unwrap().local_addr().unwrap();
    let url = format!("http://{closed}/");
    let run = run_job("browser-unreachable", json!({ "type": "simple", "url": url }), 30).await;
    let r = &run.result;
    assert_eq!(r["outcome"], "failed", "{}", shown(r));
    let msg = r["message"].as_str().unwrap();
    assert!(msg.starts_with(&format!("main document {url} answered 502")), "{msg}");
    assert!(msg.contains("refused or failed at the sidecar:"), "the sidecar's label is shown: {msg}");
    assert!(r["output"]["sidecar_error"].is_string(), "{}", shown(r));
    assert!(run.leftovers.is_empty(), "chromium left running: {:?}", run.leftovers);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_destination_the_sidecar_refuses_fails_with_its_reason() {
    // 127.0.0.2 is loopback the sidecar was not told to allow.
    let url = "http://127.0.0.2:8080/".to_string();
    let run = run_job("browser-refused", json!({ "type": "simple", "url": url }), 30).await;
    let r = &run.result;
    assert_eq!(r["outcome"], "failed", "{}", shown(r));
    assert_eq!(r["output"]["status"], 403, "{}", shown(r));
    assert_eq!(r["output"]["sidecar_error"], "loopback", "{}", shown(r));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_page_that_never_finishes_loading_times_out_and_leaves_no_chromium() {
    let origin = origin().await;
    let url = format!("http://{origin}/hang");
    let timeout_secs = 10;
    let run = run_job("browser-hang", json!({ "type": "simple", "url": url }), timeout_secs).await;
    let r = &run.result;
    assert_eq!(r["outcome"], "failed", "{}", shown(r));
    assert_eq!(r["message"], format!("timed out: {url} did not finish loading within {timeout_secs}s"));
    assert_eq!(r["output"]["timed_out"], true);
    assert_eq!(r["output"]["status"], 200, "the document itself arrived: {r:#}");
    let pending = r["output"]["pending_requests"].as_array().unwrap();
    assert!(pending.contains(&json!(format!("http://{origin}/never.js"))), "{pending:?}");
    assert!(
        run.wall < Duration::from_secs(u64::from(timeout_secs)),
        "reported before the job's deadline: {:?}",
        run.wall
    );
    assert!(run.leftovers.is_empty(), "chromium left running: {:?}", run.leftovers);
    assert!(run.most_processes >= 3, "runtime, chromium and its helpers were seen running: {}", run.most_processes);
    // The hung page is pictured too.
    assert_eq!(png_dimensions(r["output"]["artifacts"][0]["data"].as_str().unwrap()), (1280, 720));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bad_payload_fails_with_a_clear_error() {
    let run = run_job("browser-bad", json!({ "type": "simple", "url": "ftp://example.com/" }), 10).await;
    assert_eq!(run.result["outcome"], "failed");
    assert_eq!(
        run.result["message"],
        "invalid browser check payload: url \"ftp://example.com/\" is not an http:// or https:// URL"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_runtime_leaves_no_chromium_behind() {
    require_chromium();
    let origin = origin().await;
    let jm = FakeJobManager::default();
    let jm_addr = jm.start().await;
    let dir = tempfile::Builder::new().prefix("brt-").tempdir().unwrap();
    let payload = json!({ "type": "simple", "url": format!("http://{origin}/hang") });
    let jobs = job_dir(dir.path(), "browser-killed", &payload, 60);
    let _sidecar = Sidecar::start(dir.path(), jm_addr, &["--job-dir", jobs.to_str().unwrap()]).await;
    let marker = marker_for("browser-killed");
    let mut child = runtime_command(&_sidecar, dir.path(), &marker).spawn().expect("spawn browser-runtime");
    // Wait until Chromium and its helpers run (the page hangs, so they stay up).
    let waited = Instant::now();
    while processes_with(&marker).len() < 3 {
        assert!(waited.elapsed() < Duration::from_secs(30), "chromium never started: {:?}", processes_with(&marker));
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // SIGKILL: the runtime gets no chance to clean up. Chromium reads EOF on its
    // DevTools pipe and exits, taking its helpers with it.
    child.start_kill().unwrap();
    child.wait().await.unwrap();
    let waited = Instant::now();
    loop {
        let left = processes_with(&marker);
        if left.is_empty() {
            break;
        }
        assert!(waited.elapsed() < Duration::from_secs(10), "chromium outlived its runtime by 10s: {left:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn persistent_mode_runs_dispatched_jobs_and_answers_429_when_busy() {
    require_chromium();
    let origin = origin().await;
    let jm = FakeJobManager::default();
    let jm_addr = jm.start().await;
    let dir = tempfile::Builder::new().prefix("brt-").tempdir().unwrap();
    let serve = TcpListener::bind("127.0.0.1:0").await.unwrap().local_addr().unwrap();
    let sidecar = Sidecar::start(
        dir.path(),
        jm_addr,
        &["--ingress-listen", "127.0.0.1:0", "--ingress-upstream", &serve.to_string()],
    )
    .await;
    let marker = marker_for("browser-serve");
    let mut child = runtime_command(&sidecar, dir.path(), &marker)
        .args(["--serve", &serve.to_string(), "--max-concurrent", "1"])
        .spawn()
        .expect("spawn browser-runtime --serve");
    let ingress = sidecar.ready.ingress.expect("ingress address");
    let dispatch = |id: &'static str, path: &'static str| async move {
        let timeout_secs = if path == "/hang" { 8 } else { 30 };
        let job = json!({ "id": id, "runtime_type": "node-browser-runtime", "timeout_secs": timeout_secs, "attempt": 1,
                          "payload": { "type": "simple", "url": format!("http://{origin}{path}"), "screenshot": false } });
        let tcp = tokio::net::TcpStream::connect(ingress).await.unwrap();
        let (mut send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tcp)).await.unwrap();
        tokio::spawn(conn);
        let req = Request::post("/v1/jobs")
            .header("host", "runtime")
            .header("content-type", "application/json")
            .header("x-internal-api-key", "test-key")
            .header("x-job-token", format!("token-{id}"))
            .body(Full::new(Bytes::from(job.to_string())))
            .unwrap();
        send.send_request(req).await.unwrap().status()
    };
    // The runtime may still be binding its port.
    let waited = Instant::now();
    let first = loop {
        let status = dispatch("serve-hang", "/hang").await;
        if status != StatusCode::BAD_GATEWAY && status != StatusCode::SERVICE_UNAVAILABLE {
            break status;
        }
        assert!(waited.elapsed() < Duration::from_secs(10), "runtime not serving: {status}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(first, StatusCode::ACCEPTED);
    assert_eq!(dispatch("serve-busy", "/ok").await, StatusCode::TOO_MANY_REQUESTS, "one job at a time");
    let results = wait_for_result(&jm, 1, "the hanging page times out and is reported").await;
    assert_eq!(results[0]["job_id"], "serve-hang");
    assert_eq!(results[0]["output"]["timed_out"], true, "{:#}", results[0]);
    assert_eq!(dispatch("serve-ok", "/ok").await, StatusCode::ACCEPTED, "free again");
    let results = wait_for_result(&jm, 2, "the second job").await;
    assert_eq!((results[1]["job_id"].as_str(), results[1]["outcome"].as_str()), (Some("serve-ok"), Some("succeeded")));
    // Between jobs only the runtime itself is left: each job's Chromium is gone, and
    // reaped (no zombie children either: the runtime is their subreaper).
    let left = processes_with(&marker);
    assert_eq!(left.len(), 1, "only the serving runtime: {left:?}");
    let runtime_pid = child.id().unwrap();
    let waited = Instant::now();
    loop {
        let children = children_of(runtime_pid);
        if children.is_empty() {
            break;
        }
        assert!(waited.elapsed() < Duration::from_secs(5), "the runtime still has children: {children:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    child.start_kill().unwrap();
    let _ = child.wait().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_scripted_check_fills_a_form_clicks_and_reads_the_answer() {
    let origin = origin().await;
    let script = format!(
        r#"await $browser.get('http://{origin}/form?session=' + $secure.SESSION);
assert.equal(await $browser.getTitle(), 'Form page');
const q = await $browser.findElement($driver.By.id('q'));
await q.sendKeys('browser ', 'runtime');
await (await $browser.findElement($selenium.By.css('#go'))).click();
const out = await $browser.waitForAndFindElement($driver.By.css('#result.done'), 5000);
assert.equal(await out.getText(), 'Hello, browser runtime');
assert.equal(await q.getAttribute('name'), 'q');
await (await $browser.findElement($driver.By.linkText('to the OK page'))).click();
await $browser.waitForAndFindElement($driver.By.tagName('h1'), 5000);
assert.match(await $browser.getCurrentUrl(), /\/ok$/);
const r = await $http.get('http://{origin}/ok');
assert.equal(r.statusCode, 200);
console.log('all steps passed');"#
    );
    let secure = json!({ "SESSION": "s3cr3t-session-value" });
    let run = run_job("scripted-ok", json!({ "type": "scripted", "script": script, "secure": secure }), 30).await;
    let r = &run.result;
    assert_eq!(r["outcome"], "succeeded", "{}\n{}", shown(r), run.runtime_stderr);
    let out = &r["output"];
    assert_eq!(out["type"], "scripted");
    assert_eq!(out["pages"][0]["status"], 200, "{out:#}");
    // The secure value was in a URL: redacted wherever the result shows it.
    assert!(!r.to_string().contains("s3cr3t-session-value"), "{}", shown(r));
    assert!(out["pages"][0]["url"].as_str().unwrap().ends_with("/form?session=[REDACTED]"), "{}", out["pages"]);
    assert!(out["log"].to_string().contains("all steps passed"), "{}", out["log"]);
    // $browser calls leave no request records; the script's own $http.get does.
    let requests = out["requests"].as_array().unwrap();
    assert_eq!(requests.len(), 1, "{requests:?}");
    assert_eq!(requests[0]["status"], 200);
    let last = out["artifacts"].as_array().unwrap().last().unwrap().clone();
    assert_eq!(last["name"], "final.png");
    // The final screenshot shows the OK page the link led to.
    assert_eq!(png_pixels(last["data"].as_str().unwrap()).0, (0x22, 0xaa, 0x66));
    assert!(
        out["console_errors"].as_array().unwrap().iter().any(|e| e["text"] == "synthetic console error 42"),
        "{}",
        out["console_errors"]
    );
    assert!(run.leftovers.is_empty(), "chromium left running: {:?}", run.leftovers);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_scripted_step_names_its_line() {
    let origin = origin().await;
    let script = format!(
        "await $browser.get('http://{origin}/form');\nconst el = await $browser.findElement($driver.By.css('#nope'));\n"
    );
    let run = run_job("scripted-missing", json!({ "type": "scripted", "script": script }), 30).await;
    let r = &run.result;
    assert_eq!(r["outcome"], "failed", "{}", shown(r));
    let msg = r["message"].as_str().unwrap();
    assert!(msg.starts_with("NoSuchElementError: no element matches By.css(\"#nope\") (check.js:2:"), "{msg}");
    assert_eq!(r["output"]["error"]["line"], 2);

    let script = format!(
        "await $browser.get('http://{origin}/form');\nawait $browser.waitForAndFindElement($driver.By.id('never'), 500);\n"
    );
    let run = run_job("scripted-wait", json!({ "type": "scripted", "script": script }), 30).await;
    let msg = run.result["message"].as_str().unwrap().to_string();
    assert!(msg.starts_with("TimeoutError: no element matched By.id(\"never\") within 500 ms (check.js:2:"), "{msg}");

    let script =
        format!("await $browser.get('http://{origin}/form');\nassert.equal(await $browser.getTitle(), 'Other');\n");
    let run = run_job("scripted-assert", json!({ "type": "scripted", "script": script }), 30).await;
    let r = &run.result;
    assert_eq!(r["output"]["error"]["kind"], "assertion", "{}", shown(r));
    assert_eq!(r["output"]["error"]["line"], 2, "{}", shown(r));
    // The page as the script left it is pictured.
    assert_eq!(r["output"]["artifacts"][0]["name"], "final.png");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_scripted_check_that_loops_forever_times_out_and_leaves_no_chromium() {
    let run = run_job("scripted-loop", json!({ "type": "scripted", "script": "while (true) {}" }), 8).await;
    let r = &run.result;
    assert_eq!(r["outcome"], "failed", "{}", shown(r));
    assert_eq!(r["output"]["error"]["kind"], "timeout", "{}", shown(r));
    assert!(run.wall < Duration::from_secs(8), "reported before the job's deadline: {:?}", run.wall);
    assert!(run.leftovers.is_empty(), "chromium left running: {:?}", run.leftovers);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scripted_payloads_are_checked_before_chromium_starts() {
    let run =
        run_job("scripted-bad", json!({ "type": "scripted", "script": "1", "secure": {"not valid": "x"} }), 10).await;
    assert_eq!(run.result["outcome"], "failed");
    let msg = run.result["message"].as_str().unwrap();
    assert!(msg.starts_with("invalid browser check payload: secure credential name \"not valid\""), "{msg}");
    assert!(run.most_processes <= 1, "only the runtime ran: {}", run.most_processes);
    assert!(!run.runtime_stderr.contains("chromium answered"), "no Chromium was started: {}", run.runtime_stderr);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn webrtc_sends_no_udp_around_the_proxy() {
    let origin = origin().await;
    // A STUN server that only counts what reaches it.
    let stun = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let stun_addr = stun.local_addr().unwrap();
    let received = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let counter = tokio::spawn({
        let received = received.clone();
        async move {
            let mut buf = [0u8; 2048];
            while stun.recv_from(&mut buf).await.is_ok() {
                received.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            }
        }
    });
    let url = format!("http://{origin}/webrtc?{stun_addr}");
    let run = run_job("browser-webrtc", json!({ "type": "simple", "url": url, "screenshot": false }), 30).await;
    assert_eq!(run.result["outcome"], "succeeded", "{}", shown(&run.result));
    assert!(run.result["output"]["page_load_wall_ms"].as_u64().unwrap() >= 1000, "ICE gathering had time to run");
    counter.abort();
    assert_eq!(received.load(std::sync::atomic::Ordering::SeqCst), 0, "STUN datagrams reached {stun_addr}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_page_stuck_in_a_script_loop_times_out_and_leaves_no_chromium() {
    let origin = origin().await;
    let url = format!("http://{origin}/busy");
    let run = run_job("browser-busy", json!({ "type": "simple", "url": url }), 10).await;
    let r = &run.result;
    assert_eq!(r["outcome"], "failed", "{}", shown(r));
    assert_eq!(r["message"], format!("timed out: {url} did not finish loading within 10s"));
    assert!(run.wall < Duration::from_secs(10), "reported before the job's deadline: {:?}", run.wall);
    assert!(run.leftovers.is_empty(), "chromium left running: {:?}", run.leftovers);
}
