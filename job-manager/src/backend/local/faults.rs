//! Named points where a test can make the job manager die as a SIGKILL would (no
//! destructors, children left running), to prove that a restart from there is correct.
//! Only with the `test-support` feature: `JM_TEST_ABORT_AT=<point>` aborts the process
//! when it reaches `<point>`. The release binary has no such points.

/// Abort here when `JM_TEST_ABORT_AT` names `point` (test-support builds only).
pub(super) fn abort_point(point: &str) {
    #[cfg(feature = "test-support")]
    if std::env::var("JM_TEST_ABORT_AT").is_ok_and(|p| p == point) {
        eprintln!("job-manager: aborting at {point} (JM_TEST_ABORT_AT)");
        std::process::abort();
    }
    #[cfg(not(feature = "test-support"))]
    let _ = point;
}
