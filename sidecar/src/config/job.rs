//! Job settings: the hand-off (job dir, job manager, internal key, spool, deadlines),
//! the job given by id + token, and the cross-setting rules that tie them together.
use super::check::{err, positive, Check};
use super::values::parse_job_manager_url;
use super::*;
use std::time::Duration;

pub(super) struct JobHandoff {
    pub dir: Option<PathBuf>,
    /// As given, valid or not: the cross-setting rules ask whether it was given.
    pub manager_url: Option<String>,
    pub manager: Option<JobManagerEndpoint>,
    pub internal_api_key: KeySource,
    pub spool_dir: Option<PathBuf>,
    pub result_deadline: Duration,
    pub shutdown_grace: Duration,
}

/// Where the job comes from, where its result goes, and how long delivery may take.
pub(super) fn handoff(c: &mut Check<'_>, cli: &Cli) -> JobHandoff {
    let dir = c.one(&cli.job_dir, "job_dir").map(PathBuf::from);
    let manager_url = c.one(&cli.job_manager_url, "job_manager_url");
    let manager = manager_url
        .as_deref()
        .map(|s| parse_job_manager_url(s).map_err(|m| err(ENV_JOB_MANAGER_URL, "--job-manager-url", m)))
        .transpose();
    let manager = c.ok(manager).flatten();
    let internal_api_key =
        match (c.one(&cli.internal_api_key_file, "internal_api_key_file"), c.env.get(ENV_INTERNAL_API_KEY)) {
            (Some(f), _) if f == "-" => KeySource::Stdin,
            (Some(f), _) => KeySource::File(PathBuf::from(f)),
            (None, Some(k)) if !k.trim().is_empty() => KeySource::Inline(Secret::new(k.trim())),
            _ => KeySource::None,
        };
    let spool_dir = c.one(&cli.spool_dir, "spool_dir").map(PathBuf::from);
    // clap supplies the defaults (600 s, 30 s); these stand in only for a failed value.
    let result_deadline = c
        .num(
            &cli.result_deadline_secs,
            "result_deadline_secs",
            ENV_RESULT_DEADLINE_SECS,
            "--result-deadline-secs",
            positive,
            "a positive number of seconds",
        )
        .map_or(Duration::from_secs(600), Duration::from_secs);
    let shutdown_grace = c
        .num(
            &cli.shutdown_grace_secs,
            "shutdown_grace_secs",
            ENV_SHUTDOWN_GRACE_SECS,
            "--shutdown-grace-secs",
            |_: &u64| true,
            "a number of seconds",
        )
        .map_or(Duration::from_secs(30), Duration::from_secs);
    JobHandoff { dir, manager_url, manager, internal_api_key, spool_dir, result_deadline, shutdown_grace }
}

/// The job id (for log lines, and which job to fetch) and the env-only job token.
pub(super) fn job_by_token(c: &mut Check<'_>, cli: &Cli) -> (Option<String>, Option<Secret>) {
    let job_id = c.one(&cli.job_id, "job_id");
    if let Some(id) = &job_id {
        let r = common::JobId::new(id.clone()).map_err(|e| err(ENV_JOB_ID, "--job-id", e.to_string()));
        c.ok(r);
    }
    let job_token = c.env.get(ENV_JOB_TOKEN).map(|t| t.trim().to_string()).filter(|t| !t.is_empty()).map(Secret::new);
    (job_id, job_token)
}

/// Cross-setting rules. They ask whether a setting was given, not whether it was
/// valid: a bad value is reported by its group, once, and not again as "missing" here.
pub(super) fn cross_setting_rules(
    c: &mut Check<'_>,
    job: &JobHandoff,
    job_id: &Option<String>,
    job_token: &Option<Secret>,
    ingress_given: bool,
) {
    if job.dir.is_some() && job.manager_url.is_none() {
        c.fail(err(ENV_JOB_MANAGER_URL, "--job-manager-url", "required with --job-dir (results must go somewhere)"));
    }
    if job_token.is_some() {
        let rule = if job.dir.is_some() {
            Some("give the job either as --job-dir or as SIDECAR_JOB_ID + SIDECAR_JOB_TOKEN, not both")
        } else if job_id.is_none() {
            Some("SIDECAR_JOB_ID is required with SIDECAR_JOB_TOKEN (which job to fetch)")
        } else if job.manager_url.is_none() {
            Some("--job-manager-url is required with SIDECAR_JOB_TOKEN (where to fetch the job from)")
        } else {
            None
        };
        if let Some(rule) = rule {
            c.fail(err(ENV_JOB_TOKEN, "env only", rule));
        }
    }
    if job.manager_url.is_some() && job.internal_api_key == KeySource::None {
        c.fail(err(
            ENV_INTERNAL_API_KEY,
            "--internal-api-key-file",
            "an internal API key is required with --job-manager-url (SIDECAR_INTERNAL_API_KEY or --internal-api-key-file)",
        ));
    }
    if ingress_given && job.internal_api_key == KeySource::None {
        c.fail(err(
            ENV_INTERNAL_API_KEY,
            "--internal-api-key-file",
            "an internal API key is required with --ingress-listen",
        ));
    }
}
