//! One container as a local child process: started with a clean environment and its
//! log file, restarted per the restart policy, stopped with SIGTERM then SIGKILL.
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;
use tokio::process::Child;
use tokio::sync::{mpsc, watch};

/// Everything needed to start one container's process.
#[derive(Debug)]
pub(super) struct Launch {
    pub name: String,
    /// `HOSTNAME`: the pod's hostname (`spec.hostname`, else the pod's name).
    pub hostname: String,
    pub binary: PathBuf,
    pub args: Vec<String>,
    pub env: Vec<(String, String)>,
    pub log: PathBuf,
    pub oom: bool,
}

#[derive(Debug)]
pub(super) enum CEvent {
    Started(usize),
    Exited { idx: usize, code: i32, reason: &'static str, finished: bool },
}

fn spawn(launch: &Launch) -> std::io::Result<Child> {
    let log = std::fs::OpenOptions::new().create(true).append(true).open(&launch.log)?;
    let mut cmd = tokio::process::Command::new(&launch.binary);
    cmd.args(&launch.args).env_clear();
    for keep in ["PATH", "RUST_LOG", "RUST_BACKTRACE", "TMPDIR", "LLVM_PROFILE_FILE"] {
        if let Ok(v) = std::env::var(keep) {
            cmd.env(keep, v);
        }
    }
    cmd.env("HOSTNAME", &launch.hostname);
    cmd.envs(launch.env.iter().map(|(k, v)| (k.as_str(), v.as_str())));
    cmd.stdin(std::process::Stdio::null()).stdout(log.try_clone()?).stderr(log).kill_on_drop(true);
    cmd.spawn()
}

fn signal(child: &Child, sig: nix::sys::signal::Signal) {
    if let Some(pid) = child.id() {
        let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid as i32), sig);
    }
}

fn code_of(status: std::process::ExitStatus) -> i32 {
    use std::os::unix::process::ExitStatusExt as _;
    status.code().unwrap_or_else(|| 128 + status.signal().unwrap_or(9))
}

/// Runs one container, restarting it per policy, until told to stop.
pub(super) async fn container_loop(
    idx: usize,
    launch: Arc<Launch>,
    policy: String,
    tx: mpsc::Sender<CEvent>,
    mut kill: watch::Receiver<Option<Duration>>,
) {
    loop {
        if kill.borrow().is_some() {
            let _ = tx.send(CEvent::Exited { idx, code: 137, reason: "Error", finished: true }).await;
            return;
        }
        let mut child = match spawn(&launch) {
            Ok(c) => c,
            Err(e) => {
                tracing::warn!(container = %launch.name, error = %e, "could not start container process");
                let _ =
                    tx.send(CEvent::Exited { idx, code: 128, reason: "StartError", finished: policy == "Never" }).await;
                if policy == "Never" {
                    return;
                }
                tokio::time::sleep(Duration::from_secs(1)).await;
                continue;
            }
        };
        let _ = tx.send(CEvent::Started(idx)).await;
        if launch.oom {
            signal(&child, nix::sys::signal::Signal::SIGKILL);
            let _ = child.wait().await;
            let _ = tx.send(CEvent::Exited { idx, code: 137, reason: "OOMKilled", finished: policy != "Always" }).await;
            if policy == "Always" {
                tokio::time::sleep(Duration::from_secs(1)).await;
                continue;
            }
            return;
        }
        tokio::select! {
            status = child.wait() => {
                let code = status.map(code_of).unwrap_or(128);
                let restart = policy == "Always" || (policy == "OnFailure" && code != 0);
                let _ = tx.send(CEvent::Exited { idx, code, reason: if code == 0 { "Completed" } else { "Error" }, finished: !restart }).await;
                if !restart {
                    return;
                }
                // A short, fixed back-off (the real one starts at 10s and doubles).
                tokio::select! {
                    _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                    _ = kill.changed() => {}
                }
            }
            _ = kill.changed() => {
                let grace = kill.borrow().unwrap_or_default();
                signal(&child, nix::sys::signal::Signal::SIGTERM);
                let status = match tokio::time::timeout(grace, child.wait()).await {
                    Ok(s) => s,
                    Err(_) => {
                        signal(&child, nix::sys::signal::Signal::SIGKILL);
                        child.wait().await
                    }
                };
                let code = status.map(code_of).unwrap_or(137);
                let _ = tx.send(CEvent::Exited { idx, code, reason: if code == 0 { "Completed" } else { "Error" }, finished: true }).await;
                return;
            }
        }
    }
}
