//! The Kubernetes subcommands: `render` (every object the job manager would create for
//! a job and a config, no cluster needed), `crd` and `rbac`. Plain functions returning
//! the text, so the binary's clap subcommands (`crate::cli`) only have to call them and print.
use crate::backend::kubernetes::{labels, rbac, record, translate};
use crate::config::model::{Config, Workload};
use crate::config::Validated;
use common::Job;
use serde::Serialize;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

#[derive(Debug, thiserror::Error)]
pub enum CliError {
    #[error("cannot read {path}: {source}")]
    Read { path: PathBuf, source: std::io::Error },
    #[error("{path} is not a valid job: {message}")]
    BadJob { path: PathBuf, message: String },
    #[error(
        "no runtime type {runtime:?} is configured (configured: {configured:?}); without --config the built-in \
         defaults configure none: try --config deploy/examples/kubernetes.yaml or the chart's ConfigMap"
    )]
    NoRuntime { runtime: String, configured: Vec<String> },
    #[error(transparent)]
    Translate(#[from] translate::TranslateError),
}

/// Stands in for the single-use token, minted only at dispatch.
pub const RENDER_TOKEN_PLACEHOLDER: &str = "<job token, minted at dispatch>";
/// Namespace used when neither the config nor the caller names one.
pub const RENDER_DEFAULT_NAMESPACE: &str = "default";

/// `job-manager render --job FILE [--config FILE] [--set K=V]... [--namespace NS]`, with
/// the configuration already loaded and validated (`crate::commands::load_render_config`).
pub fn render_files(job_file: &Path, validated: &Validated, namespace: Option<&str>) -> Result<String, CliError> {
    let job_text =
        std::fs::read_to_string(job_file).map_err(|source| CliError::Read { path: job_file.to_path_buf(), source })?;
    // Job files are JSON as the broker sends them; YAML is a superset, so both work.
    let job: Job = serde_saphyr::from_str(&job_text)
        .map_err(|e| CliError::BadJob { path: job_file.to_path_buf(), message: e.to_string() })?;
    let config = &validated.config;
    if !config.runtimes.iter().any(|r| r.name == job.runtime_type) {
        return Err(CliError::NoRuntime {
            runtime: job.runtime_type.clone(),
            configured: config.runtimes.iter().map(|r| r.name.clone()).collect(),
        });
    }
    let namespace = namespace
        .map(str::to_string)
        .or_else(|| (!config.namespace.is_empty()).then(|| config.namespace.clone()))
        .unwrap_or_else(|| RENDER_DEFAULT_NAMESPACE.to_string());
    let deadline =
        SystemTime::now() + Duration::from_secs(u64::from(job.timeout_secs.clamp(1, config.check_timeout.max(1))));
    let settings = translate::TranslateSettings::new(config, &validated.user_defined_variables);
    render_with(&job, config, &settings, &namespace, deadline)
}

/// Every object for `job`, as multi-document YAML, in creation order: the job's own
/// objects (ephemeral) or its runtime type's Deployment/Service/HPA (persistent), then
/// the runtime NetworkPolicy when the job manager manages it.
/// The user-defined variables are `userDefinedJson` as written (see [`render_files`] for
/// a validated config's, from JSON, file or path).
pub fn render(job: &Job, config: &Config, namespace: &str, deadline: SystemTime) -> Result<String, CliError> {
    render_with(job, config, &translate::TranslateSettings::from(config), namespace, deadline)
}

fn render_with(
    job: &Job,
    config: &Config,
    settings: &translate::TranslateSettings,
    namespace: &str,
    deadline: SystemTime,
) -> Result<String, CliError> {
    let mut docs = Vec::new();
    let persistent = config.runtimes.iter().any(|r| r.name == job.runtime_type && r.workload == Workload::Persistent);
    if persistent {
        let objects = translate::persistent_objects(&job.runtime_type, settings, namespace)?;
        docs.push(doc(
            "Persistent runtime: applied once per runtime type by the `service-setup` lease holder",
            &objects.deployment,
        ));
        docs.push(doc("", &objects.service));
        docs.push(doc("", &objects.hpa));
    } else {
        let objects = translate::ephemeral_objects(job, RENDER_TOKEN_PLACEHOLDER, deadline, settings, namespace)?;
        docs.push(doc(
            &format!(
                "Job {} -> objects named {}; created in this order. At creation the record also gets label {}=<dispatching pod>",
                job.id,
                labels::object_name(&job.id),
                labels::DISPATCHER
            ),
            &objects.record,
        ));
        docs.push(doc(
            "ownerReferences -> the JobRecord above are added at creation (its uid is known only then)",
            &objects.job,
        ));
    }
    if config.kubernetes.network_policy.enabled {
        docs.push(doc(
            "Applied by the `service-setup` lease holder (kubernetes.networkPolicy.enabled)",
            &translate::runtime_network_policy(settings, namespace),
        ));
    }
    Ok(docs.join(""))
}

fn doc<T: Serialize>(comment: &str, object: &T) -> String {
    let body = serde_saphyr::to_string(object).expect("Kubernetes objects always serialize");
    let comment = if comment.is_empty() { String::new() } else { format!("# {comment}\n") };
    format!("---\n{comment}{body}")
}

/// `job-manager crd`: the JobRecord CRD (also committed under the chart's `crds/`).
pub fn crd() -> String {
    record::crd_yaml()
}

/// `job-manager rbac`: the Role rules the job manager needs.
pub fn rbac() -> String {
    rbac::rules_yaml()
}
