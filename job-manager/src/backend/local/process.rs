//! The local executor's processes: the commands that start a job's sidecar and runtime
//! (each in its own process group, with only the environment the contract lists), pids
//! that survive a restart ([`ProcessId`]), the ready-file wait, termination, and
//! finding a job's processes by the environment they started with.
//!
//! If the job manager is SIGKILLed its children keep running (`kill_on_drop` only covers
//! an orderly drop, and `PR_SET_PDEATHSIG` needs `unsafe` `pre_exec`), so a pid is
//! recorded with its start time and a restarted job manager can tell its old children
//! from strangers that reused their pids.
use super::launcher::{self, Role};
use super::settings::{LocalRuntime, LocalSettings};
use crate::backend::HandoffError;
use common::runtime_api::{runtime_env, sidecar_env, ReadyFile};
use common::Job;
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use serde::{Deserialize, Serialize};
use std::os::fd::OwnedFd;
use std::path::Path;
use std::process::Stdio;
use std::time::Duration;
use tokio::process::{Child, Command};

/// The runtime's and the sidecar's combined stdout + stderr, in the job dir (bounded:
/// `output.rs`).
pub(super) const RUNTIME_OUTPUT: &str = "runtime.log";
pub(super) const SIDECAR_OUTPUT: &str = "sidecar.log";

/// A pid plus its start time (from `/proc/<pid>/stat`), so a recycled pid is never
/// mistaken for ours after a restart.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub(super) struct ProcessId {
    pub pid: i32,
    start_ticks: u64,
}

impl ProcessId {
    pub fn of(pid: u32) -> Option<Self> {
        let pid = i32::try_from(pid).ok()?;
        Some(Self { pid, start_ticks: proc_start_ticks(pid)? })
    }
    pub fn alive(&self) -> bool {
        proc_start_ticks(self.pid) == Some(self.start_ticks) && !proc_is_zombie(self.pid)
    }
}

/// Field 22 of `/proc/<pid>/stat` (start time in clock ticks since boot).
fn proc_start_ticks(pid: i32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name (field 2) may contain spaces; fields after its ')' are plain.
    let after = &stat[stat.rfind(')')? + 2..];
    after.split_whitespace().nth(19)?.parse().ok()
}

fn proc_is_zombie(pid: i32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|s| s.rfind(')').and_then(|i| s[i + 2..].chars().next()))
        .is_some_and(|state| state == 'Z' || state == 'X')
}

fn transient(what: &str, e: &dyn std::fmt::Display) -> HandoffError {
    HandoffError::Transient(format!("{what}: {e}"))
}

/// The sidecar of the job in `dir`: policy env from config, its part of the job dir, and
/// the key on stdin only (piped; the caller writes it). With `as_uid`, started through
/// the launcher: its own UID, its listener in the job's new network namespace.
pub(super) fn sidecar_command(
    settings: &LocalSettings,
    sidecar_dir: &Path,
    job: &Job,
    ready: &Path,
    spool: &Path,
    as_uid: Option<u32>,
    output: OwnedFd,
) -> Result<Command, HandoffError> {
    let mut cmd = match as_uid {
        // The launcher binds the listener in the job's netns and hands the key on itself.
        Some(uid) => {
            let argv = [settings.sidecar_binary.clone().into_os_string()];
            let mut cmd = Command::new(&isolation_launcher(settings)?);
            cmd.args(launcher::args(Role::Sidecar, uid, &argv)).env_clear();
            cmd
        }
        None => {
            let mut cmd = Command::new(&settings.sidecar_binary);
            cmd.env_clear().env(sidecar_env::LISTEN, "127.0.0.1:0").env(sidecar_env::INTERNAL_API_KEY_FILE, "-");
            cmd
        }
    };
    cmd.envs(basic_env())
        .envs(settings.sidecar_env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
        .env(sidecar_env::READY_FILE, ready)
        .env(sidecar_env::JOB_DIR, sidecar_dir)
        .env(sidecar_env::JOB_ID, job.id.as_str())
        .env(sidecar_env::JOB_MANAGER_URL, &settings.job_manager_url)
        .env(sidecar_env::SPOOL_DIR, spool)
        // Finish delivering within our grace, before we resort to SIGKILL.
        .env(
            sidecar_env::SHUTDOWN_GRACE_SECS,
            settings.sidecar_exit_grace.as_secs().saturating_sub(2).max(1).to_string(),
        )
        .current_dir(sidecar_dir)
        .stdin(Stdio::piped())
        .stdout(Stdio::from(output.try_clone().map_err(|e| transient("sidecar output", &e))?))
        .stderr(Stdio::from(output))
        .process_group(0)
        .kill_on_drop(true);
    Ok(cmd)
}

/// Where an isolated runtime runs: as `uid`, in the network namespace `netns` (the
/// sidecar's listener's, with only loopback).
pub(super) struct Confinement {
    pub uid: u32,
    pub netns: std::fs::File,
}

/// The runtime of the job in `dir`, behind the sidecar's proxy at `proxy`: only what the
/// contract lists. Never the key, never the token. With `confinement`, started through
/// the launcher, which enters the netns (given as its stdin) and drops to the UID.
pub(super) fn runtime_command(
    settings: &LocalSettings,
    runtime: &LocalRuntime,
    job: &Job,
    scratch: &Path,
    proxy: &str,
    confinement: Option<Confinement>,
    output: OwnedFd,
) -> Result<Command, HandoffError> {
    let no_proxy = settings.no_proxy.join(",");
    if runtime.command.is_empty() {
        return Err(HandoffError::Permanent(format!("runtime type {:?} has no command", job.runtime_type)));
    }
    let (mut cmd, stdin) = match confinement {
        Some(c) => {
            let argv: Vec<std::ffi::OsString> = runtime.command.iter().map(Into::into).collect();
            let mut cmd = Command::new(&isolation_launcher(settings)?);
            cmd.args(launcher::args(Role::Runtime, c.uid, &argv));
            (cmd, Stdio::from(c.netns))
        }
        None => {
            let mut cmd = Command::new(&runtime.command[0]);
            cmd.args(&runtime.command[1..]);
            (cmd, Stdio::null())
        }
    };
    cmd.env_clear()
        .envs(basic_env())
        .envs(&runtime.extra_env)
        .env("HOME", scratch)
        .env("TMPDIR", scratch)
        .env(runtime_env::JOB_API_URL, proxy)
        .env(runtime_env::HTTP_PROXY, proxy)
        .env(runtime_env::HTTPS_PROXY, proxy)
        .env("http_proxy", proxy)
        .env("https_proxy", proxy)
        .env(runtime_env::NO_PROXY, &no_proxy)
        .env("no_proxy", &no_proxy)
        .env(runtime_env::USER_DEFINED_VARIABLES, &settings.user_defined_variables)
        .current_dir(scratch)
        .stdin(stdin)
        .stdout(Stdio::from(output.try_clone().map_err(|e| transient("runtime output", &e))?))
        .stderr(Stdio::from(output))
        // Its own process group, so a timeout kills everything it started.
        .process_group(0)
        .kill_on_drop(true);
    if let Some(p) = &settings.custom_node_modules_path {
        cmd.env(runtime_env::CUSTOM_NODE_MODULES_PATH, p);
    }
    Ok(cmd)
}

/// Kill whatever still runs under `uids` (a runtime's children that left its process
/// group, a stuck sidecar), before the UIDs go to another job. Each UID is signalled by
/// a launcher running as that UID, so nothing else can be hit.
pub(super) async fn reap_uids(settings: &LocalSettings, uids: &[u32]) {
    let Ok(launcher) = isolation_launcher(settings) else { return };
    for &uid in uids {
        let status = Command::new(&launcher)
            .args(launcher::args(Role::Reap, uid, &[]))
            .env_clear()
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .status()
            .await;
        if !status.as_ref().is_ok_and(|s| s.success()) {
            let status = status.map_or_else(|e| e.to_string(), |s| s.to_string());
            tracing::error!(uid, %status, "cannot kill what is left under a job's UID");
        }
    }
}

fn isolation_launcher(settings: &LocalSettings) -> Result<std::path::PathBuf, HandoffError> {
    settings
        .isolation
        .as_ref()
        .map(|i| i.launcher.clone())
        .ok_or_else(|| HandoffError::Permanent("isolation asked for without a launcher".into()))
}

/// The network namespace the launcher created for the sidecar `pid` and left open in it
/// (see `launcher.rs`): the one fd of `/proc/<pid>/fd` that is a netns other than ours.
pub(super) fn job_netns(pid: i32) -> std::io::Result<std::fs::File> {
    let own = std::fs::read_link("/proc/self/ns/net")?;
    for entry in std::fs::read_dir(format!("/proc/{pid}/fd"))?.flatten() {
        let Ok(target) = std::fs::read_link(entry.path()) else { continue };
        if target.to_string_lossy().starts_with("net:[") && target != own {
            return std::fs::File::open(entry.path());
        }
    }
    Err(std::io::Error::new(std::io::ErrorKind::NotFound, format!("sidecar {pid} holds no network namespace of a job")))
}

fn basic_env() -> Vec<(String, String)> {
    let path = std::env::var("PATH").unwrap_or_else(|_| "/usr/local/bin:/usr/bin:/bin".into());
    let mut env = vec![("PATH".to_string(), path)];
    for name in ["LANG", "LC_ALL", "TZ"] {
        if let Ok(v) = std::env::var(name) {
            env.push((name.to_string(), v));
        }
    }
    env
}

/// Wait until the sidecar wrote its ready file (it serves from then on).
pub(super) async fn wait_ready(path: &Path, sidecar: &mut Child, timeout: Duration) -> Result<ReadyFile, String> {
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        if let Ok(bytes) = std::fs::read(path) {
            if let Ok(ready) = serde_json::from_slice::<ReadyFile>(&bytes) {
                return Ok(ready);
            }
        }
        if let Ok(Some(status)) = sidecar.try_wait() {
            return Err(format!("sidecar exited with {status}"));
        }
        if tokio::time::Instant::now() >= deadline {
            return Err(format!("no ready file after {timeout:?}"));
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// SIGTERM, wait up to `grace`, then SIGKILL.
pub(super) async fn terminate(child: &mut Child, grace: Duration) {
    if let Some(pid) = child.id() {
        let _ = kill(Pid::from_raw(pid as i32), Signal::SIGTERM);
    }
    if tokio::time::timeout(grace, child.wait()).await.is_err() {
        tracing::warn!("sidecar did not exit within {grace:?}; killing it");
        let _ = child.start_kill();
        let _ = child.wait().await;
    }
}

/// [`terminate`] for a process we are not the parent of (adopted after a restart).
pub(super) async fn terminate_pid(p: ProcessId, grace: Duration) {
    let _ = kill(Pid::from_raw(p.pid), Signal::SIGTERM);
    let deadline = tokio::time::Instant::now() + grace;
    while p.alive() && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    if p.alive() {
        let _ = kill(Pid::from_raw(p.pid), Signal::SIGKILL);
    }
}

/// SIGKILL the process group led by `pid`: everything a runtime started.
pub(super) fn kill_group(pid: i32) {
    let _ = nix::sys::signal::killpg(Pid::from_raw(pid), Signal::SIGKILL);
}

/// SIGKILL one process.
pub(super) fn kill_now(pid: i32) {
    let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
}

/// The environment entry every process of a job's runtime starts with (its `HOME`, the
/// job's scratch dir), inherited by what it starts: how a runtime whose pid was never
/// recorded, or a child that left its process group, is found.
pub(super) fn runtime_marker(scratch: &Path) -> String {
    format!("HOME={}", scratch.display())
}

/// The environment entry a job's sidecar starts with (its part of the job dir).
pub(super) fn sidecar_marker(sidecar_dir: &Path) -> String {
    format!("{}={}", sidecar_env::JOB_DIR, sidecar_dir.display())
}

/// The live processes whose initial environment holds `entry`, oldest first. Reads
/// `/proc/<pid>/environ`, which needs the same UID or root: a non-root job manager finds
/// its own jobs' processes, and only those. A process that rewrote its environment
/// block or `exec`ed with another environment is not found.
pub(super) fn with_env_entry(entry: &str) -> Vec<ProcessId> {
    let Ok(procs) = std::fs::read_dir("/proc") else { return Vec::new() };
    let me = std::process::id();
    let mut found: Vec<ProcessId> = procs
        .flatten()
        .filter_map(|e| e.file_name().to_str().and_then(|n| n.parse::<u32>().ok()))
        .filter(|&pid| pid != me)
        .filter(|pid| {
            std::fs::read(format!("/proc/{pid}/environ"))
                .is_ok_and(|env| env.split(|&b| b == 0).any(|kv| kv == entry.as_bytes()))
        })
        .filter_map(ProcessId::of)
        .filter(ProcessId::alive)
        .collect();
    found.sort_by_key(|p| p.start_ticks);
    found
}

/// The oldest process group leader among `procs`: the program we spawned (in a group
/// of its own) rather than one of its children.
pub(super) fn group_leader(procs: &[ProcessId]) -> Option<ProcessId> {
    procs.iter().copied().find(|p| proc_pgid(p.pid) == Some(p.pid))
}

fn proc_pgid(pid: i32) -> Option<i32> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    stat[stat.rfind(')')? + 2..].split_whitespace().nth(2)?.parse().ok()
}

/// The real UID a process runs as.
pub(super) fn uid_of(p: ProcessId) -> Option<u32> {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata(format!("/proc/{}", p.pid)).ok().map(|m| m.uid())
}

/// SIGKILL each of `procs` still alive (checked against its start time just before).
pub(super) fn kill_all(procs: &[ProcessId]) {
    for p in procs.iter().filter(|p| p.alive()) {
        kill_now(p.pid);
    }
}

/// [`reap_uids`] for startup recovery, which runs before the async parts start and
/// must be done before any job can be handed off again.
pub(super) fn reap_uids_now(settings: &LocalSettings, uids: &[u32]) {
    let Ok(launcher) = isolation_launcher(settings) else { return };
    for &uid in uids {
        let status = std::process::Command::new(&launcher)
            .args(launcher::args(Role::Reap, uid, &[]))
            .env_clear()
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .status();
        if !status.as_ref().is_ok_and(|s| s.success()) {
            let status = status.map_or_else(|e| e.to_string(), |s| s.to_string());
            tracing::error!(uid, %status, "cannot kill what is left under a job's UID");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn own_pid_is_alive_and_start_time_checked() {
        let me = ProcessId::of(std::process::id()).expect("/proc readable");
        assert!(me.alive());
        let recycled = ProcessId { start_ticks: me.start_ticks + 1, ..me };
        assert!(!recycled.alive(), "same pid, other start time: not ours");
    }
}
