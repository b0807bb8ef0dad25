//! One pod as local processes. Order follows the kubelet: schedule (nodeSelector),
//! volumes, init containers one by one (a native sidecar — an init container with
//! `restartPolicy: Always` — is started and its startupProbe polled until it passes
//! before the next one starts), then all main containers; when the main containers
//! are done the sidecars get SIGTERM, and the pod's phase is derived from the main
//! containers' exit codes. Deletion sends SIGTERM, waits the grace period, SIGKILLs.
//!
//! The pieces, in the order a pod meets them:
//! - `spec`: reads the pod spec into launches (images to binaries, ports, argv);
//! - `volumes` and `env`: materialise volumes and resolve environment variables;
//! - `lifecycle`: the worker that schedules, starts, probes and stops the containers;
//! - `process`: one container as one restarted child process (in a mount namespace
//!   of its own, with the kubelet's hosts file as `/etc/hosts`: `name.ns.svc` resolves);
//! - `probe`: startup and readiness probes against the pod's ports;
//! - `status`: container statuses and the pod status the kubelet writes.
mod env;
mod lifecycle;
mod probe;
mod process;
mod spec;
mod status;
mod volumes;

pub use env::{expand, map_mounts, map_mounts_in_text};
pub use lifecycle::run;
pub use spec::image_binary;
pub use volumes::claim_dir;

use super::network::Network;
use super::KubeletOptions;
use crate::emulator::store::Store;
use std::sync::Arc;
use std::time::Duration;

/// Set on a pod to have the kubelet kill that container as if the kernel's OOM
/// killer had (exit 137, reason `OOMKilled`).
pub const OOM_KILL_ANNOTATION: &str = "emulator.kube/oom-kill";
pub const KUBELET: &str = "kubelet";

/// What the dispatcher tells a pod worker.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Stop {
    Run,
    /// Graceful deletion with this grace period.
    Terminate(Duration),
    /// The object is gone: kill at once, write nothing.
    Gone,
}

pub struct PodCtx {
    pub store: Arc<Store>,
    pub net: Arc<Network>,
    pub opts: Arc<KubeletOptions>,
    /// The API server's URL, for the kubeconfig of pods that mount a token.
    pub api_url: String,
    /// `unshare` options giving a container a mount namespace of its own (where the
    /// kubelet's hosts file is bound over `/etc/hosts`); `None` when this machine allows
    /// neither (pods then resolve no Service names).
    pub mount_ns: Option<Vec<&'static str>>,
}

/// The shell step run inside a container's new mount namespace: `$0` is the hosts file.
pub(super) const BIND_HOSTS: &str = r#"mount --bind "$0" /etc/hosts && exec "$@""#;

/// Which `unshare` options give a process a private mount namespace here: plain
/// `--mount` as root, or inside a user namespace of its own otherwise; tried once.
pub fn mount_namespace_args(hosts: &std::path::Path) -> Option<Vec<&'static str>> {
    let variants: [&[&'static str]; 2] = [&["--mount"], &["--user", "--map-root-user", "--mount"]];
    for args in variants {
        let ok = std::process::Command::new("unshare")
            .args(args)
            .args(["--", "sh", "-c", BIND_HOSTS, &hosts.display().to_string(), "true"])
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        if ok {
            return Some(args.to_vec());
        }
    }
    tracing::warn!("no private mount namespace (unshare --mount): pods cannot resolve Service names");
    None
}

#[cfg(test)]
mod tests;
