//! An emulator of the Kubernetes API for the end-to-end tests: a real HTTP/1.1 server
//! speaking the API's JSON (discovery, CRUD, watch, patch flavours, server-side
//! apply, deletion with propagation, garbage collection, Leases, CRDs and their
//! custom resources), validating every object against the official v1.33 schemas and
//! the API's own rules, with fault injection and a request log. Real kubectl works
//! against it: aggregated discovery, `/openapi/v3` ([`openapi`]), protobuf request bodies ([`protobuf`]),
//! server-side Tables ([`table`]), `pods/log`, `deployments/scale`,
//! `serviceaccounts/token`. RBAC ([`rbac`]) holds ServiceAccount tokens to their
//! bindings; the kubeconfig's token and token-less requests are the administrator.
//!
//! Known differences from a real API server: namespaces come into being when first
//! used (a real server refuses objects in a namespace nobody created), and deleting one
//! deletes its contents at once; the ServiceAccount admission plugin does not run (no
//! `kube-api-access` volume is added to pod specs: the kubelet projects the token when
//! the pod and its account do not opt out, and a missing account blocks the pod);
//! aggregated ClusterRoles and `SelfSubjectAccessReview` are not served; plain HTTP
//! only (kubectl then sends no token: use `--as`).
//!
//! ```no_run
//! # async fn demo() {
//! use integration_tests::emulator::{Emulator, EmulatorOptions};
//! let emu = Emulator::start(EmulatorOptions::default()).await.unwrap();
//! std::env::set_var("KUBECONFIG", emu.kubeconfig_path());
//! # }
//! ```
pub mod faults;
pub mod openapi;
pub mod patch;
pub mod pod_security;
pub mod protobuf;
pub mod quota;
pub mod rbac;
pub mod resources;
pub mod selectors;
pub mod server;
pub mod status;
pub mod store;
pub mod table;
pub mod time;
pub mod validation;

pub use faults::{Fault, FaultRule, Faults};
pub use server::RequestRecord;
pub use store::{Store, StoreOptions};

use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use resources::ResourceType;
use serde_json::Value;
use server::{RequestLog, ServerState};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;
use tempfile::TempDir;
use tokio::net::TcpListener;
use tokio::sync::watch;

#[derive(Clone, Debug)]
pub struct EmulatorOptions {
    /// Where to listen; port 0 picks a free one.
    pub listen: SocketAddr,
    /// Namespace written into the kubeconfig's context.
    pub namespace: String,
    /// Events kept for watch resumption (older resourceVersions get 410 Expired).
    pub history: usize,
    /// How often watches with `allowWatchBookmarks` get a BOOKMARK.
    pub bookmark_interval: Duration,
    /// Where to write the kubeconfig; default: a fresh temp dir.
    pub kubeconfig_path: Option<PathBuf>,
}

impl Default for EmulatorOptions {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], 0)),
            namespace: "default".into(),
            history: 50_000,
            bookmark_interval: Duration::from_secs(1),
            kubeconfig_path: None,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum EmulatorError {
    #[error("binding {0}: {1}")]
    Bind(SocketAddr, std::io::Error),
    #[error("writing kubeconfig {0}: {1}")]
    Kubeconfig(PathBuf, std::io::Error),
}

/// A running emulator. Dropping it stops the server.
pub struct Emulator {
    addr: SocketAddr,
    kubeconfig: PathBuf,
    state: Arc<ServerState>,
    temp: Option<TempDir>,
    shutdown: watch::Sender<bool>,
}

/// A scratch directory under the system temp dir, removed on drop; named
/// `{prefix}-{pid}-…` so a leftover one is recognisable.
pub(crate) fn scratch_dir(prefix: &str) -> std::io::Result<TempDir> {
    tempfile::Builder::new().prefix(&format!("{prefix}-{}-", std::process::id())).tempdir()
}

/// Called from a `Drop`: a failing test keeps its scratch directory (logs, kubeconfig)
/// for inspection.
pub(crate) fn keep_if_failing(dir: &mut TempDir) {
    if std::thread::panicking() {
        dir.disable_cleanup(true);
        eprintln!("kept {} (the test failed)", dir.path().display());
    }
}

/// A kubeconfig pointing at `server` (plain HTTP) that authenticates with bearer
/// `token`, or sends no credentials when `token` is empty.
pub fn kubeconfig_yaml(server: &str, namespace: &str, token: &str) -> String {
    let user = if token.is_empty() { "{}".to_string() } else { format!("\n    token: {token}") };
    format!(
        "apiVersion: v1\nkind: Config\nclusters:\n- name: emulator\n  cluster:\n    server: {server}\ncontexts:\n- name: emulator\n  context:\n    cluster: emulator\n    user: emulator\n    namespace: {namespace}\ncurrent-context: emulator\nusers:\n- name: emulator\n  user: {user}\n"
    )
}

impl Emulator {
    pub async fn start(opts: EmulatorOptions) -> Result<Self, EmulatorError> {
        let listener = TcpListener::bind(opts.listen).await.map_err(|e| EmulatorError::Bind(opts.listen, e))?;
        let addr = listener.local_addr().map_err(|e| EmulatorError::Bind(opts.listen, e))?;
        let (temp, kubeconfig) = match &opts.kubeconfig_path {
            Some(p) => (None, p.clone()),
            None => {
                let t = scratch_dir("kube-emulator").map_err(|e| EmulatorError::Kubeconfig(std::env::temp_dir(), e))?;
                let p = t.path().join("kubeconfig");
                (Some(t), p)
            }
        };
        let store = Store::new(StoreOptions { history: opts.history, graceful_pods: false });
        std::fs::write(&kubeconfig, kubeconfig_yaml(&format!("http://{addr}"), &opts.namespace, store.admin_token()))
            .map_err(|e| EmulatorError::Kubeconfig(kubeconfig.clone(), e))?;
        let state = Arc::new(ServerState {
            store,
            faults: Arc::new(Faults::default()),
            log: Arc::new(RequestLog::default()),
            watch_generation: watch::channel(0).0,
            bookmark_interval: opts.bookmark_interval,
        });
        let (shutdown, shutdown_rx) = watch::channel(false);
        tokio::spawn(serve(listener, state.clone(), shutdown_rx));
        Ok(Self { addr, kubeconfig, state, temp, shutdown })
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn kubeconfig_path(&self) -> &Path {
        &self.kubeconfig
    }

    /// The object store (controllers and tests read and write it directly).
    pub fn store(&self) -> &Arc<Store> {
        &self.state.store
    }

    pub fn faults(&self) -> &Faults {
        &self.state.faults
    }

    /// Every API request served so far, in order.
    pub fn requests(&self) -> Vec<RequestRecord> {
        self.state.log.snapshot()
    }

    pub fn clear_requests(&self) {
        self.state.log.clear();
    }

    /// Closes every open watch stream (clients must resume from their resourceVersion).
    pub fn drop_watches(&self) {
        self.state.watch_generation.send_modify(|g| *g += 1);
    }

    /// A kubeconfig (written next to the emulator's own) that authenticates as
    /// ServiceAccount `namespace/name` with a fresh token: what a pod of that account
    /// gets, for processes the tests run on the host.
    pub fn service_account_kubeconfig(&self, namespace: &str, name: &str) -> Result<PathBuf, EmulatorError> {
        let token = self.state.store.issue_token(namespace, name);
        let path = self.kubeconfig.with_file_name(format!("kubeconfig-{namespace}-{name}"));
        std::fs::write(&path, kubeconfig_yaml(&self.url(), namespace, &token))
            .map_err(|e| EmulatorError::Kubeconfig(path.clone(), e))?;
        Ok(path)
    }

    /// The resource type serving `apiVersion`/`kind`, built-in or from a CRD.
    pub fn resource(&self, api_version: &str, kind: &str) -> Option<ResourceType> {
        self.state.store.find_kind(api_version, kind)
    }

    /// One object, for assertions.
    pub fn object(&self, api_version: &str, kind: &str, namespace: &str, name: &str) -> Option<Value> {
        let rt = self.resource(api_version, kind)?;
        self.state.store.get(&rt, namespace, name).ok()
    }

    /// All objects of a kind in a namespace, for assertions.
    pub fn objects(&self, api_version: &str, kind: &str, namespace: &str) -> Vec<Value> {
        let Some(rt) = self.resource(api_version, kind) else {
            return vec![];
        };
        self.state.store.list(&rt, Some(namespace), &Default::default(), &Default::default()).0
    }
}

impl Drop for Emulator {
    fn drop(&mut self) {
        let _ = self.shutdown.send(true);
        self.drop_watches();
        if let Some(temp) = &mut self.temp {
            keep_if_failing(temp);
        }
    }
}

async fn serve(listener: TcpListener, state: Arc<ServerState>, mut shutdown: watch::Receiver<bool>) {
    loop {
        let accepted = tokio::select! {
            a = listener.accept() => a,
            _ = shutdown.changed() => return,
        };
        let Ok((stream, _)) = accepted else { continue };
        let state = state.clone();
        let mut shutdown = shutdown.clone();
        tokio::spawn(async move {
            let svc = service_fn(move |req| server::handle(state.clone(), req));
            let conn = http1::Builder::new().serve_connection(TokioIo::new(stream), svc);
            tokio::pin!(conn);
            tokio::select! {
                _ = conn.as_mut() => {}
                _ = shutdown.changed() => {}
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Holds a scratch dir the way `Emulator` and `Kubelet` do.
    struct Holder(TempDir);

    impl Drop for Holder {
        fn drop(&mut self) {
            keep_if_failing(&mut self.0);
        }
    }

    #[test]
    fn scratch_dirs_are_removed_unless_the_test_fails() {
        let passed = Holder(scratch_dir("scratch-test").unwrap());
        let passed_path = passed.0.path().to_path_buf();
        assert!(passed_path.file_name().unwrap().to_string_lossy().starts_with("scratch-test-"));
        drop(passed);
        assert!(!passed_path.exists());

        let (tx, rx) = std::sync::mpsc::channel();
        let failed = std::thread::spawn(move || {
            let held = Holder(scratch_dir("scratch-test").unwrap());
            tx.send(held.0.path().to_path_buf()).unwrap();
            panic!("a failing test");
        });
        assert!(failed.join().is_err());
        let kept = rx.recv().unwrap();
        assert!(kept.is_dir(), "{} was removed", kept.display());
        std::fs::remove_dir_all(kept).unwrap();
    }
}
