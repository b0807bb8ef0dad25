//! VSE check: with a passphrase configured, only jobs whose signature verifies run.
use common::secret::Secret;
use common::Job;

/// `Err(reason)` when the job must be rejected; the reason goes into its result.
pub fn check(job: &Job, passphrase: Option<&Secret>) -> Result<(), String> {
    let Some(pass) = passphrase else { return Ok(()) };
    common::token::verify_vse(pass.expose(), &job.runtime_type, &job.payload, job.signature.as_deref())
        .map_err(|e| format!("rejected by verified script execution: {e}"))
}
