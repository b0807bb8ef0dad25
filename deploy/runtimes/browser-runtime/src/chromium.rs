//! Launching headless Chromium and making sure it goes away.
//!
//! Chromium runs in its own process group with a fresh profile in a temp dir, its proxy
//! set to the sidecar, and the DevTools protocol on a pipe (`--remote-debugging-pipe`,
//! fds 3 and 4). Those two fds are put in place by this binary itself: it re-executes
//! itself as a trampoline ([`TRAMPOLINE_ARG`]) that moves its stdin/stdout to fds 3/4 and
//! `exec`s Chromium, so no `unsafe` `pre_exec` is needed.
//!
//! Going away: [`Browser::shutdown`] (and, as a fallback, dropping a [`Browser`])
//! SIGKILLs the whole process group, and the runtime is a child subreaper so Chromium's
//! helpers (zygote, renderers) that outlive their parent come back to it and are reaped
//! by group; crashpad handlers, which leave the group, by [`reap_strays`]. If the runtime itself is killed, Chromium reads EOF on the DevTools pipe and
//! exits on its own.
use crate::cdp::{Cdp, Event};
use nix::sys::signal::{killpg, Signal};
use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
use nix::unistd::Pid;
use serde_json::json;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::io::AsyncReadExt;
use tokio::sync::mpsc;

/// First argument that makes this binary the exec trampoline (not a user flag).
pub const TRAMPOLINE_ARG: &str = "__exec-chromium-with-pipe";
/// Viewport of every page (and so of the screenshot).
pub const WINDOW: (u32, u32) = (1280, 720);
/// Below this, /dev/shm is too small for Chromium's shared memory (Docker's default is
/// 64 MiB); it then uses the temp dir instead (`--disable-dev-shm-usage`).
const SMALL_SHM_BYTES: u64 = 512 * 1024 * 1024;
/// The profile's preferences: WebRTC may use UDP only through the proxy (which, an HTTP
/// proxy, carries none), so a page cannot send STUN or media packets around the sidecar.
const PREFERENCES: &str = r#"{"webrtc":{"ip_handling_policy":"disable_non_proxied_udp","multiple_routes_enabled":false,"nonproxied_udp_enabled":false}}"#;
/// Bytes of Chromium's stderr kept for error messages.
const STDERR_TAIL: usize = 4096;

#[derive(Clone, Debug)]
pub struct LaunchOptions {
    pub chromium: PathBuf,
    /// The sidecar, e.g. `http://127.0.0.1:3128`.
    pub proxy: String,
    /// `NO_PROXY` entries: hosts Chromium reaches without the proxy.
    pub no_proxy: Vec<String>,
    pub small_shm: bool,
}

/// The Chromium to run: `CHROMIUM_PATH`, else Debian's real binary (not its wrapper
/// script, which sources /etc/chromium.d and adds flags), else `chromium` on PATH.
pub fn default_chromium(env: &dyn Fn(&str) -> Option<String>) -> PathBuf {
    if let Some(p) = env("CHROMIUM_PATH").filter(|p| !p.is_empty()) {
        return PathBuf::from(p);
    }
    let debian = Path::new("/usr/lib/chromium/chromium");
    if debian.is_file() {
        return debian.to_path_buf();
    }
    PathBuf::from("chromium")
}

/// Where profiles go: the temp dir, unless its path is so long that Chromium's
/// singleton socket (`<TMPDIR>/org.chromium.Chromium.XXXXXX/SingletonSocket`, inside the
/// profile here) would pass the 108-byte limit of a socket path; then `/tmp`.
pub fn temp_base(temp_dir: &Path) -> PathBuf {
    const MAX: usize = 40;
    if temp_dir.as_os_str().len() <= MAX {
        temp_dir.to_path_buf()
    } else {
        PathBuf::from("/tmp")
    }
}

/// Whether /dev/shm is missing or smaller than Chromium needs.
pub fn shm_is_small() -> bool {
    match nix::sys::statvfs::statvfs("/dev/shm") {
        Ok(s) => s.blocks().saturating_mul(s.fragment_size()) < SMALL_SHM_BYTES,
        Err(_) => true,
    }
}

/// Chromium's command line (after the binary). Background traffic is off (updates,
/// sync, metrics, safe browsing, QUIC that could skip the proxy), and loopback goes
/// through the proxy too (Chromium bypasses proxies for loopback by default): every
/// request the page makes is the sidecar's to allow or refuse.
pub fn chromium_args(opts: &LaunchOptions, profile: &Path) -> Vec<String> {
    let mut args: Vec<String> = [
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--no-default-browser-check",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--disable-extensions",
        "--disable-default-apps",
        "--disable-domain-reliability",
        "--disable-client-side-phishing-detection",
        "--disable-breakpad",
        "--disable-pings",
        "--disable-features=Translate,MediaRouter,OptimizationHints,AutofillServerCommunication,CertificateTransparencyComponentUpdater",
        "--metrics-recording-only",
        "--mute-audio",
        "--hide-scrollbars",
        "--remote-debugging-pipe",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    args.push(format!("--window-size={},{}", WINDOW.0, WINDOW.1));
    args.push(format!("--user-data-dir={}", profile.display()));
    args.push(format!("--proxy-server={}", opts.proxy));
    let mut bypass: Vec<&str> = opts.no_proxy.iter().map(String::as_str).filter(|s| !s.is_empty()).collect();
    bypass.push("<-loopback>");
    args.push(format!("--proxy-bypass-list={}", bypass.join(";")));
    if opts.small_shm {
        args.push("--disable-dev-shm-usage".into());
    }
    args.push("about:blank".into());
    args
}

/// The trampoline: stdin becomes fd 3 (commands), stdout fd 4 (answers), stdin reads
/// /dev/null and stdout goes to stderr; then Chromium replaces this process.
pub fn exec_with_pipe(argv: &[String]) -> ! {
    use std::os::fd::OwnedFd;
    use std::os::unix::process::CommandExt;
    let fail = |what: String| -> ! {
        eprintln!("browser-runtime: cannot start chromium: {what}");
        std::process::exit(127)
    };
    let Some((program, args)) = argv.split_first() else { fail("no program given".into()) };
    let open_null = || std::fs::File::open("/dev/null").map(OwnedFd::from);
    // The lowest free descriptors: 3 and 4 in a process that inherited only 0, 1, 2.
    let (mut fd3, mut fd4) = match (open_null(), open_null()) {
        (Ok(a), Ok(b)) => (a, b),
        (Err(e), _) | (_, Err(e)) => fail(format!("/dev/null: {e}")),
    };
    use std::os::fd::AsRawFd;
    if fd3.as_raw_fd() != 3 || fd4.as_raw_fd() != 4 {
        fail(format!("fds 3 and 4 are not free (got {} and {})", fd3.as_raw_fd(), fd4.as_raw_fd()));
    }
    // dup2 leaves the new descriptors without close-on-exec: Chromium inherits them.
    let moved = nix::unistd::dup2(std::io::stdin(), &mut fd3)
        .and_then(|_| nix::unistd::dup2(std::io::stdout(), &mut fd4))
        .and_then(|_| open_null().map_err(|_| nix::errno::Errno::EBADF).and_then(nix::unistd::dup2_stdin))
        .and_then(|_| nix::unistd::dup2_stdout(std::io::stderr()));
    if let Err(e) = moved {
        fail(format!("moving the DevTools pipe to fds 3/4: {e}"));
    }
    let err = std::process::Command::new(program).args(args).exec();
    fail(format!("{program}: {err}"));
}

/// A running Chromium with one page attached.
pub struct Browser {
    child: Option<tokio::process::Child>,
    pgid: Option<i32>,
    pub cdp: Arc<Cdp>,
    pub events: mpsc::UnboundedReceiver<Event>,
    /// The page's flat session.
    pub session: String,
    /// Spawn to the first DevTools answer.
    pub start_ms: u64,
    stderr_tail: Arc<Mutex<Vec<u8>>>,
    _profile: tempfile::TempDir,
}

impl Browser {
    /// Starts Chromium and opens one blank page; fails with Chromium's last words when it
    /// does not answer before `deadline`.
    pub async fn launch(opts: &LaunchOptions, deadline: Instant) -> Result<Browser, String> {
        let profile = tempfile::Builder::new()
            .prefix("br-")
            .tempdir_in(temp_base(&std::env::temp_dir()))
            .map_err(|e| format!("cannot create the browser profile dir: {e}"))?;
        let tmp = profile.path().join("t");
        std::fs::create_dir(&tmp).map_err(|e| format!("cannot create {}: {e}", tmp.display()))?;
        // Preferences a fresh profile starts with (WebRTC: only UDP through the proxy).
        let default = profile.path().join("Default");
        std::fs::create_dir(&default)
            .and_then(|()| std::fs::write(default.join("Preferences"), PREFERENCES))
            .map_err(|e| format!("cannot write the browser preferences: {e}"))?;
        let me = std::env::current_exe().map_err(|e| format!("cannot find this executable: {e}"))?;
        let started = Instant::now();
        let mut cmd = tokio::process::Command::new(me);
        cmd.arg(TRAMPOLINE_ARG)
            .arg(&opts.chromium)
            .args(chromium_args(opts, profile.path()))
            // Caches and config under the profile, and Chromium's own temp files too, so
            // removing the profile removes everything. HOME is left alone: the local
            // executor finds a job's leftover processes by it.
            .env("TMPDIR", &tmp)
            .env("XDG_CONFIG_HOME", profile.path().join(".config"))
            .env("XDG_CACHE_HOME", profile.path().join(".cache"))
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .process_group(0);
        let mut child = cmd.spawn().map_err(|e| format!("cannot start chromium: {e}"))?;
        let pgid = child.id().map(|p| p as i32);
        ACTIVE.lock().expect("active lock").extend(pgid);
        let stderr_tail: Arc<Mutex<Vec<u8>>> = Arc::default();
        if let Some(mut err) = child.stderr.take() {
            let tail = stderr_tail.clone();
            tokio::spawn(async move {
                let mut buf = [0u8; 4096];
                while let Ok(n) = err.read(&mut buf).await {
                    if n == 0 {
                        break;
                    }
                    let mut t = tail.lock().expect("tail lock");
                    t.extend_from_slice(&buf[..n]);
                    let excess = t.len().saturating_sub(STDERR_TAIL);
                    t.drain(..excess);
                }
            });
        }
        let (stdin, stdout) = (child.stdin.take().expect("piped stdin"), child.stdout.take().expect("piped stdout"));
        let (cdp, events) = Cdp::start(stdin, stdout);
        let mut browser = Browser {
            child: Some(child),
            pgid,
            cdp,
            events,
            session: String::new(),
            start_ms: 0,
            stderr_tail,
            _profile: profile,
        };
        let ready = tokio::time::timeout_at(deadline.into(), browser.cdp.call(None, "Browser.getVersion", json!({})));
        match ready.await {
            Ok(Ok(_)) => {}
            Ok(Err(e)) => return Err(browser.launch_error(&e).await),
            Err(_) => return Err(browser.launch_error("no answer before the job's deadline").await),
        }
        browser.start_ms = started.elapsed().as_millis() as u64;
        let page = async {
            let target = browser.cdp.call(None, "Target.createTarget", json!({ "url": "about:blank" })).await?;
            let id = target["targetId"].as_str().ok_or("Target.createTarget: no targetId".to_string())?.to_string();
            let attached =
                browser.cdp.call(None, "Target.attachToTarget", json!({ "targetId": id, "flatten": true })).await?;
            attached["sessionId"]
                .as_str()
                .map(str::to_string)
                .ok_or_else(|| "Target.attachToTarget: no sessionId".to_string())
        };
        match tokio::time::timeout_at(deadline.into(), page).await {
            Ok(Ok(session)) => browser.session = session,
            Ok(Err(e)) => return Err(browser.launch_error(&e).await),
            Err(_) => return Err(browser.launch_error("no page before the job's deadline").await),
        }
        Ok(browser)
    }

    async fn launch_error(&mut self, what: &str) -> String {
        self.shutdown().await;
        let tail = String::from_utf8_lossy(&self.stderr_tail.lock().expect("tail lock")).to_string();
        // The last few lines say why (a missing library, a bad flag).
        let last: Vec<&str> = tail.lines().rev().filter(|l| !l.contains("dbus")).take(5).collect();
        let last: Vec<&str> = last.into_iter().rev().collect();
        format!("chromium did not start: {what}; its last output: {}", last.join(" | "))
    }

    /// Sends a command to the page's session.
    pub async fn page(&self, method: &str, params: serde_json::Value) -> Result<serde_json::Value, String> {
        self.cdp.call(Some(&self.session), method, params).await
    }

    /// Kills Chromium's whole process group and reaps it (its helpers included, which
    /// come back to this subreaper), waiting at most two seconds.
    pub async fn shutdown(&mut self) {
        let Some(pgid) = self.pgid.take() else { return };
        let _ = killpg(Pid::from_raw(pgid), Signal::SIGKILL);
        if let Some(mut child) = self.child.take() {
            let _ = tokio::time::timeout(Duration::from_secs(2), child.wait()).await;
        }
        ACTIVE.lock().expect("active lock").retain(|p| *p != pgid);
        let until = Instant::now() + Duration::from_secs(2);
        while reap_group(pgid) && Instant::now() < until {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        reap_strays();
    }
}

/// Chromium main processes of the running jobs: tokio waits for those, not [`reap_strays`].
static ACTIVE: Mutex<Vec<i32>> = Mutex::new(Vec::new());

/// Children of this process that no job owns: Chromium's crashpad handlers (they leave
/// the group for a session of their own and come back to this subreaper, or to this
/// PID 1 in a container). Exited ones are reaped; live crashpad handlers are killed
/// (reaped on the next sweep). Serve mode sweeps every second.
pub fn reap_strays() {
    let me = std::process::id() as i32;
    let Ok(dir) = std::fs::read_dir("/proc") else { return };
    let active = ACTIVE.lock().expect("active lock").clone();
    for entry in dir.flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<i32>() else { continue };
        if active.contains(&pid) {
            continue;
        }
        let Ok(stat) = std::fs::read_to_string(entry.path().join("stat")) else { continue };
        let Some((head, rest)) = stat.rsplit_once(')') else { continue };
        let fields: Vec<&str> = rest.split_whitespace().collect();
        if fields.get(1).and_then(|p| p.parse::<i32>().ok()) != Some(me) {
            continue;
        }
        let comm = head.split_once('(').map(|(_, c)| c).unwrap_or_default();
        if fields.first() == Some(&"Z") {
            let _ = waitpid(Pid::from_raw(pid), Some(WaitPidFlag::WNOHANG));
        } else if comm.starts_with("chrome_crashpad") {
            let _ = nix::sys::signal::kill(Pid::from_raw(pid), Signal::SIGKILL);
        }
    }
}

/// Reaps exited members of process group `pgid` among our children; true while some
/// are still running.
fn reap_group(pgid: i32) -> bool {
    loop {
        match waitpid(Pid::from_raw(-pgid), Some(WaitPidFlag::WNOHANG)) {
            Ok(WaitStatus::StillAlive) => return true,
            Ok(_) => continue,
            Err(_) => return false, // ECHILD: none left
        }
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        if let Some(pgid) = self.pgid.take() {
            let _ = killpg(Pid::from_raw(pgid), Signal::SIGKILL);
            ACTIVE.lock().expect("active lock").retain(|p| *p != pgid);
            reap_group(pgid);
        }
    }
}

/// Makes this process the reaper of its orphaned descendants (Chromium's helpers).
pub fn become_subreaper() {
    if let Err(e) = nix::sys::prctl::set_child_subreaper(true) {
        eprintln!("browser-runtime: cannot become a child subreaper ({e}); orphans go to init");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn opts() -> LaunchOptions {
        LaunchOptions {
            chromium: "/usr/lib/chromium/chromium".into(),
            proxy: "http://127.0.0.1:3128".into(),
            no_proxy: vec![],
            small_shm: false,
        }
    }

    #[test]
    fn flags_route_everything_through_the_sidecar() {
        let args = chromium_args(&opts(), Path::new("/tmp/p"));
        for flag in [
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--remote-debugging-pipe",
            "--user-data-dir=/tmp/p",
            "--proxy-server=http://127.0.0.1:3128",
            "--proxy-bypass-list=<-loopback>",
        ] {
            assert!(args.iter().any(|a| a == flag), "{flag} missing from {args:?}");
        }
        assert!(!args.iter().any(|a| a.starts_with("--remote-debugging-port")), "no port: {args:?}");
        assert!(!args.contains(&"--disable-dev-shm-usage".to_string()));
        assert_eq!(args.last().map(String::as_str), Some("about:blank"));
    }

    #[test]
    fn small_shm_and_no_proxy() {
        let o = LaunchOptions { small_shm: true, no_proxy: vec!["internal.example".into(), "".into()], ..opts() };
        let args = chromium_args(&o, Path::new("/tmp/p"));
        assert!(args.contains(&"--disable-dev-shm-usage".to_string()));
        assert!(args.contains(&"--proxy-bypass-list=internal.example;<-loopback>".to_string()), "{args:?}");
    }

    #[test]
    fn profiles_go_where_the_singleton_socket_path_fits() {
        assert_eq!(temp_base(Path::new("/tmp")), Path::new("/tmp"));
        let long = Path::new("/tmp/job-manager-demo-123456/scratch/j-browser-check-ok");
        assert_eq!(temp_base(long), Path::new("/tmp"));
        // The longest socket path it can lead to stays under the limit.
        let worst = format!("{}/br-XXXXXX/t/org.chromium.Chromium.XXXXXX/SingletonSocket", "x".repeat(40));
        assert!(worst.len() < 108, "{}", worst.len());
    }

    #[test]
    fn chromium_path() {
        let env =
            |v: Option<&'static str>| move |k: &str| (k == "CHROMIUM_PATH").then(|| v.map(String::from)).flatten();
        assert_eq!(default_chromium(&env(Some("/opt/chrome"))), PathBuf::from("/opt/chrome"));
        let found = default_chromium(&env(None));
        assert!(found == Path::new("/usr/lib/chromium/chromium") || found == Path::new("chromium"), "{found:?}");
    }
}
