//! The Kubernetes executor: translation (job -> objects), job records, leases, pruning.
//! The sidecar's policy env both backends share is `crate::backend::sidecar_env`.
//!
//! ```text
//! translate/   pure: job + TranslateSettings -> the objects; no client in here
//!   settings       TranslateSettings (what translation reads, from the config once)
//!   ephemeral      JobRecord + batch/v1 Job per ephemeral job
//!   persistent     Deployment + Service + HPA per persistent runtime type, the record
//!                  of a job dispatched to one, retired persistent workloads
//!   network_policy the runtime NetworkPolicy
//!   pod, defaults  the shared pod template (sidecar + runtime containers, env, volumes)
//!                  and its seed defaults (security contexts, sidecar resources)
//! record       the JobRecord CRD (durable per-job state, the result store's rows)
//! labels       every label/annotation key and derived object name
//! rbac         the exact API rights the code uses (the chart's Role is generated from it)
//! client       the shared kube::Client behind ApiCallLayer: every request (watches and
//!              leases included) counted by resource/verb/outcome, and checked against
//!              `rbac` in debug builds
//! refusal      pure: an API server's refusal message -> RBAC denial (who, verb, resource,
//!              group, namespace), Pod Security, webhook or quota, and whether it lasts
//! diagnose     pure: cluster snapshot -> decided results, stopped workloads, orphans
//! executor     KubeExecutor (Executor) + ExecutorSettings: create objects / dispatch to
//!              persistent runtimes
//! store        RecordStore (ResultStore): first result wins, with resourceVersion
//! coordination leases `runtime-pruning` (diagnose + prune) and `service-setup` (SSA)
//! cache        watch caches the pruning holder reads
//! events       Kubernetes Events for abnormal lifecycle steps
//! metrics      the metric families: API calls, lease ownership, pruning, diagnosis
//! setup        client + namespace + narrow settings -> the parts (KubeSetup)
//! backend      KubeBackend: what the app wires on Kubernetes (keys, store, executor,
//!              the coordinator beside the dispatcher)
//! cli          `render`, `crd`, `rbac` subcommands (no cluster needed)
//! ```
//!
//! API writes per ephemeral job on the normal path: four. Create the record and the Job
//! (2), record the result (1, consuming the token with a resourceVersion precondition),
//! delete the record once the broker accepted the result (1, garbage-collecting the Job).
//! No per-job Secret (the sidecar fetches the job with its token, see `translate`) and
//! no status bookkeeping while the job runs.
pub mod backend;
pub mod cache;
pub mod cli;
pub mod client;
pub mod coordination;
pub mod diagnose;
pub mod events;
pub mod executor;
pub mod labels;
pub mod metrics;
pub mod rbac;
pub mod record;
pub mod refusal;

pub mod setup;
pub mod store;
pub mod translate;
