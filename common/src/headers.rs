//! Header names shared by the sidecar and the job manager.

/// Carries the internal API key between sidecar and job manager (both directions: the
/// sidecar adds it on calls to the job manager; the job manager adds it on dispatches to a
/// persistent runtime's sidecar ingress). Runtimes never see it: the sidecar strips it
/// from anything a runtime sends or receives.
pub const INTERNAL_API_KEY: &str = "x-internal-api-key";

/// The single-use job token, sent by the sidecar with a job's result.
pub const JOB_TOKEN: &str = "x-job-token";

/// Job id, for correlation in logs (never trusted for authorization: the token is).
pub const JOB_ID: &str = "x-job-id";

/// Set by the sidecar on synthetic responses (refusals, errors) so clients and tests can
/// tell a proxy answer from an upstream one. Value: a stable reason label.
pub const PROXY_ERROR: &str = "x-sidecar-error";
