//! Watch-backed caches (kube-runtime reflectors) of the objects the pruning pass reads:
//! job records, Jobs and pods with the job manager's labels. Started by the
//! `runtime-pruning` holder on its first pass, so only one replica watches; each pass
//! then reads memory instead of listing the namespace, and pod changes are seen as they
//! happen.
use crate::backend::kubernetes::labels;
use crate::backend::kubernetes::record::JobRecord;
use futures_util::StreamExt;
use k8s_openapi::api::batch::v1 as batch;
use k8s_openapi::api::core::v1 as core;
use kube::runtime::reflector::{self, Store};
use kube::runtime::{watcher, WatchStreamExt};
use kube::Api;
use std::time::Duration;
use tokio::task::JoinHandle;

pub struct ClusterCache {
    pub records: Store<JobRecord>,
    pub jobs: Store<batch::Job>,
    pub pods: Store<core::Pod>,
    tasks: Vec<JoinHandle<()>>,
}

impl Drop for ClusterCache {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}

fn reflect<K>(api: Api<K>, selector: &str) -> (Store<K>, JoinHandle<()>)
where
    K: kube::Resource<DynamicType = ()> + Clone + std::fmt::Debug + serde::de::DeserializeOwned + Send + Sync + 'static,
{
    let (reader, writer) = reflector::store::<K>();
    let stream = watcher(api, watcher::Config::default().labels(selector)).default_backoff().reflect(writer);
    let task = tokio::spawn(async move {
        stream
            .for_each(|event| async move {
                if let Err(e) = event {
                    tracing::debug!(error = %e, "watch interrupted; resuming");
                }
            })
            .await;
    });
    (reader, task)
}

impl ClusterCache {
    /// Start the watches; returns once every cache holds a complete list (or `None`
    /// after `timeout`, so the caller can fall back to listing).
    pub async fn start(client: kube::Client, namespace: &str, timeout: Duration) -> Option<Self> {
        let (records, t1) =
            reflect(Api::<JobRecord>::namespaced(client.clone(), namespace), &labels::managed_runtime_selector());
        let (jobs, t2) =
            reflect(Api::<batch::Job>::namespaced(client.clone(), namespace), &labels::ephemeral_selector());
        let (pods, t3) = reflect(Api::<core::Pod>::namespaced(client, namespace), &labels::ephemeral_selector());
        let cache = Self { records, jobs, pods, tasks: vec![t1, t2, t3] };
        let ready = async {
            let _ = cache.records.wait_until_ready().await;
            let _ = cache.jobs.wait_until_ready().await;
            let _ = cache.pods.wait_until_ready().await;
        };
        tokio::time::timeout(timeout, ready).await.ok().map(|_| cache)
    }

    pub fn snapshot(&self) -> (Vec<JobRecord>, Vec<batch::Job>, Vec<core::Pod>) {
        (owned(self.records.state()), owned(self.jobs.state()), owned(self.pods.state()))
    }
}

fn owned<K: Clone>(items: Vec<std::sync::Arc<K>>) -> Vec<K> {
    items.into_iter().map(|a| (*a).clone()).collect()
}
