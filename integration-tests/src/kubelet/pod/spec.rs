//! Reading a pod spec into what its processes need: the node selector, images mapped
//! to binaries, ports, and one launch (binary, argv, env, log) per container.
use super::super::network::{self, PodNet};
use super::env::{expand, map_mounts, map_mounts_in_text, resolve_env, EnvError};
use super::process::Launch;
use super::volumes::{self, VolumeError};
use super::{PodCtx, OOM_KILL_ANNOTATION};
use crate::kubelet::KubeletOptions;
use serde_json::Value;
use std::collections::{BTreeMap, HashMap};
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};

pub(super) fn node_selector_matches(pod: &Value, node_labels: &BTreeMap<String, String>) -> bool {
    pod["spec"]["nodeSelector"]
        .as_object()
        .is_none_or(|m| m.iter().all(|(k, v)| node_labels.get(k).map(String::as_str) == v.as_str()))
}

pub fn image_binary(opts: &KubeletOptions, image: &str) -> Option<PathBuf> {
    let repo = image.split('@').next().unwrap_or(image);
    let repo = match repo.rsplit_once(':') {
        Some((r, tag)) if !tag.contains('/') => r,
        _ => repo,
    };
    opts.images.iter().find(|(pat, _)| repo.contains(pat.as_str())).map(|(_, p)| p.clone())
}

/// The image's default arguments when the container sets neither command nor args.
pub(super) fn image_default_args(opts: &KubeletOptions, c: &Value) -> Vec<String> {
    let unset = |k: &str| c[k].as_array().is_none_or(Vec::is_empty);
    if !(unset("command") && unset("args")) {
        return vec![];
    }
    let image = c["image"].as_str().unwrap_or_default();
    opts.image_args.iter().find(|(pat, _)| image.contains(pat.as_str())).map(|(_, a)| a.clone()).unwrap_or_default()
}

/// What a pod's processes need, resolved before any of them starts.
pub(super) struct Prepared {
    /// One per container: init containers first, in order, then the main ones.
    pub launches: Vec<Launch>,
    pub net: PodNet,
}

/// A container that cannot start yet; the kubelet shows the reason and retries.
#[derive(Debug)]
pub(super) struct Blocked {
    /// Index over init containers then main containers (volumes block the first).
    pub container: usize,
    pub error: PrepareError,
}

/// Why a container cannot start yet.
#[derive(Debug, thiserror::Error)]
pub(super) enum PrepareError {
    #[error(transparent)]
    Volume(#[from] VolumeError),
    #[error(transparent)]
    Image(#[from] ImageError),
    #[error(transparent)]
    Env(#[from] EnvError),
}

impl PrepareError {
    /// The container's waiting reason, as the kubelet reports it: a stable label.
    pub fn reason(&self) -> &'static str {
        match self {
            PrepareError::Volume(_) => "ContainerCreating",
            PrepareError::Image(_) => "ErrImagePull",
            PrepareError::Env(_) => "CreateContainerConfigError",
        }
    }
}

/// An image no binary stands in for.
#[derive(Debug, thiserror::Error)]
pub(super) enum ImageError {
    #[error("Failed to pull image {image:?}: binary {} is not built", .binary.display())]
    NotBuilt { image: String, binary: PathBuf },
    #[error(
        "Failed to pull image {image:?}: rpc error: code = NotFound desc = failed to pull and unpack image: not found"
    )]
    NotFound { image: String },
}

/// What a pod with a ServiceAccount token gets: the API server's address as in a
/// cluster, and `KUBECONFIG` naming the projected credentials (unless the container
/// sets its own), which client libraries prefer over in-cluster files.
fn service_account_env(env: &mut Vec<(String, String)>, api_url: &str, sa_dir: &Path) {
    let hostport = api_url.trim_start_matches("http://").trim_start_matches("https://");
    let (host, port) = hostport.rsplit_once(':').unwrap_or((hostport, "80"));
    for (k, v) in [
        ("KUBERNETES_SERVICE_HOST", host.to_string()),
        ("KUBERNETES_SERVICE_PORT", port.to_string()),
        ("KUBECONFIG", sa_dir.join("kubeconfig").display().to_string()),
    ] {
        if !env.iter().any(|(name, _)| name == k) {
            env.push((k.into(), v));
        }
    }
}

/// Resolves everything a pod with address `ip` needs before any process starts.
pub(super) fn prepare(ctx: &PodCtx, pod: &Value, dir: &Path, ip: Ipv4Addr) -> Result<Prepared, Blocked> {
    let spec = &pod["spec"];
    let containers: Vec<&Value> = spec["initContainers"]
        .as_array()
        .into_iter()
        .flatten()
        .chain(spec["containers"].as_array().into_iter().flatten())
        .collect();
    // Ports: declared ones plus any loopback/wildcard port written in env or args.
    let mut net = PodNet::new(ip);
    let mut pod_ports: Vec<u16> = Vec::new();
    for c in &containers {
        for p in c["ports"].as_array().into_iter().flatten() {
            let n = p["containerPort"].as_u64().unwrap_or(0) as u16;
            pod_ports.push(n);
            if let Some(pn) = p["name"].as_str() {
                net.names.insert(pn.into(), n);
            }
        }
        for e in c["env"].as_array().into_iter().flatten() {
            pod_ports.extend(network::local_ports_in(e["value"].as_str().unwrap_or_default()));
        }
        for a in c["args"].as_array().into_iter().chain(c["command"].as_array()).flatten() {
            pod_ports.extend(network::local_ports_in(a.as_str().unwrap_or_default()));
        }
        for a in image_default_args(&ctx.opts, c) {
            pod_ports.extend(network::local_ports_in(&a));
        }
    }
    net.ports.extend(pod_ports.into_iter().filter(|p| *p != 0));
    // Mounted files see the pod's addresses and (as whole paths) its mount paths.
    let ns = crate::emulator::store::meta_str(pod, "namespace");
    let volume_dirs: HashMap<&str, PathBuf> = spec["volumes"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|v| Some((v["name"].as_str()?, volumes::volume_dir(ctx, ns, dir, v))))
        .collect();
    let mut file_mounts: Vec<(String, PathBuf)> = containers
        .iter()
        .flat_map(|c| c["volumeMounts"].as_array().into_iter().flatten())
        .filter_map(|m| {
            let vdir = volume_dirs.get(m["name"].as_str()?)?;
            let sub = m["subPath"].as_str().unwrap_or_default();
            let d = if sub.is_empty() { vdir.clone() } else { vdir.join(sub) };
            Some((m["mountPath"].as_str()?.trim_end_matches('/').to_string(), d))
        })
        .collect();
    file_mounts.push((volumes::SERVICE_ACCOUNT_PATH.to_string(), dir.join("serviceaccount")));
    let in_pod = |s: &str| network::to_pod_address(s, ip, &net.ports);
    let in_file = |s: &str| map_mounts_in_text(&in_pod(s), &file_mounts);
    let volumes =
        volumes::materialise(ctx, pod, dir, &in_file).map_err(|e| Blocked { container: 0, error: e.into() })?;
    let sa_dir = volumes::service_account(ctx, pod, dir).map_err(|e| Blocked { container: 0, error: e.into() })?;
    let mut launches = Vec::new();
    let oom_target = pod["metadata"]["annotations"][OOM_KILL_ANNOTATION].as_str().unwrap_or_default().to_string();
    for (idx, c) in containers.iter().enumerate() {
        let cname = c["name"].as_str().unwrap_or_default();
        let image = c["image"].as_str().unwrap_or_default();
        let binary = match image_binary(&ctx.opts, image) {
            Some(b) if b.is_file() => b,
            Some(b) => {
                let error = ImageError::NotBuilt { image: image.into(), binary: b }.into();
                return Err(Blocked { container: idx, error });
            }
            None => return Err(Blocked { container: idx, error: ImageError::NotFound { image: image.into() }.into() }),
        };
        let mounts: Vec<(String, PathBuf)> = c["volumeMounts"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|m| {
                let vdir = volumes.get(m["name"].as_str()?)?;
                let sub = m["subPath"].as_str().unwrap_or_default();
                let d = if sub.is_empty() { vdir.clone() } else { vdir.join(sub) };
                if !sub.is_empty() {
                    let _ = std::fs::create_dir_all(&d);
                }
                Some((m["mountPath"].as_str()?.trim_end_matches('/').to_string(), d))
            })
            .collect();
        let mut mounts = mounts;
        let env = resolve_env(ctx, pod, c, ip).map_err(|e| Blocked { container: idx, error: e.into() })?;
        if let Some(sa) = &sa_dir {
            mounts.push((volumes::SERVICE_ACCOUNT_PATH.to_string(), sa.clone()));
        }
        let rewrite = |s: &str| {
            let s = map_mounts(s, &mounts);
            let s = in_pod(&s);
            ctx.net.rewrite_service_hosts(&ctx.store, &s)
        };
        let vars: HashMap<String, String> = env.iter().cloned().collect();
        let mut env: Vec<(String, String)> = env.into_iter().map(|(k, v)| (k, rewrite(&v))).collect();
        if let Some(sa) = &sa_dir {
            // Host paths already: not rewritten again (a `/tmp` mount would catch them).
            service_account_env(&mut env, &ctx.api_url, sa);
        }
        let command: Vec<String> = c["command"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|v| v.as_str().map(|s| expand(s, &vars)))
            .collect();
        let mut args: Vec<String> =
            c["args"].as_array().into_iter().flatten().filter_map(|v| v.as_str().map(|s| expand(s, &vars))).collect();
        if command.is_empty() && args.is_empty() {
            args = image_default_args(&ctx.opts, c);
        }
        // The image's entrypoint is the mapped binary; command[0] names it inside the image.
        let mut argv: Vec<String> = command.iter().skip(1).chain(args.iter()).map(|a| rewrite(a)).collect();
        let mut binary = binary;
        if adds_capability(c, "NET_ADMIN") {
            // Pods here share the host's network, which a container that programs its
            // pod's network namespace (the egress firewall) must not touch: it runs in a
            // network namespace of its own, as root of a user namespace of its own.
            argv = [PRIVATE_NET_ARGS.iter().map(|a| a.to_string()).collect(), vec![binary.display().to_string()], argv]
                .concat();
            binary = PathBuf::from(UNSHARE);
        }
        if let Some(mount_ns) = &ctx.mount_ns {
            // A mount namespace of its own, where the kubelet's hosts file is /etc/hosts.
            let hosts = ctx.net.hosts_file().display().to_string();
            let wrapper = mount_ns
                .iter()
                .map(|a| a.to_string())
                .chain(["--", "sh", "-c", super::BIND_HOSTS, &hosts, &binary.display().to_string()].map(String::from));
            argv = wrapper.chain(argv).collect();
            binary = PathBuf::from(UNSHARE);
        }
        launches.push(Launch {
            name: cname.into(),
            hostname: spec["hostname"]
                .as_str()
                .unwrap_or_else(|| crate::emulator::store::meta_str(pod, "name"))
                .to_string(),
            binary,
            args: argv,
            env,
            log: dir.join("logs").join(format!("{cname}.log")),
            oom: oom_target == cname,
        });
    }
    Ok(Prepared { launches, net })
}

/// util-linux `unshare`, which gives a container a private network or mount namespace.
const UNSHARE: &str = "unshare";
const PRIVATE_NET_ARGS: [&str; 4] = ["--user", "--map-root-user", "--net", "--"];

fn adds_capability(container: &Value, capability: &str) -> bool {
    container["securityContext"]["capabilities"]["add"]
        .as_array()
        .is_some_and(|caps| caps.iter().any(|c| c.as_str() == Some(capability)))
}
