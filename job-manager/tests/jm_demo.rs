//! `make run` stays green: the real binary runs the shipped sample jobs end to end
//! (`job-manager demo --examples deploy/examples`) and exits 0 with every job checked.
#![allow(clippy::unwrap_used)] // in a test, an unwrap is an assertion
mod jm_support;

use std::process::Command;

#[test]
fn demo_runs_the_shipped_examples() {
    // The demo finds `sidecar`, `api-runtime` and `test-runtime` next to the job-manager
    // executable.
    jm_support::bin("sidecar");
    jm_support::bin("api-runtime");
    jm_support::bin("test-runtime");
    let examples = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/examples");
    let out = Command::new(jm_support::job_manager_bin())
        .args(["demo", "--examples"])
        .arg(&examples)
        .args(["--timeout-secs", "60"])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "demo failed\nstdout:\n{stdout}\nstderr:\n{}", String::from_utf8_lossy(&out.stderr));
    for id in [
        "http-check-ok",
        "egress-refused",
        "times-out",
        "check-fails",
        "exits-without-result",
        "vse-rejected",
        "killed-at-deadline",
    ] {
        let line = stdout.lines().find(|l| l.starts_with(id)).unwrap_or_else(|| panic!("{id} reported: {stdout}"));
        assert!(line.contains(" ok "), "{line}");
    }
    assert!(stdout.contains("all jobs ended as expected"), "{stdout}");
}
