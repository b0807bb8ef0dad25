//! Locating the workspace's binaries from tests. `make test` builds every binary
//! (`cargo build --workspace --all-targets`) before running tests, so tests in this
//! crate run the real `sidecar`, `job-manager` and `test-runtime` executables.
use std::path::PathBuf;

/// The target directory: `CARGO_TARGET_DIR` if set, else `<workspace>/target`.
pub fn target_dir() -> PathBuf {
    match std::env::var_os("CARGO_TARGET_DIR") {
        Some(d) => {
            let d = PathBuf::from(d);
            if d.is_absolute() {
                d
            } else {
                workspace_root().join(d)
            }
        }
        None => workspace_root().join("target"),
    }
}

/// The checkout under test. Cargo sets `CARGO_MANIFEST_DIR` when it *runs* a test too;
/// prefer that over the compile-time value, so two checkouts sharing one target dir
/// each find their own scripts and binaries.
pub fn workspace_root() -> PathBuf {
    let manifest = std::env::var_os("CARGO_MANIFEST_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")));
    manifest.parent().expect("integration-tests sits in the workspace").to_path_buf()
}

/// Path of a workspace binary in the debug profile. Panics with the command to run when
/// it has not been built, so a missing build is a clear failure, never a skip.
pub fn bin_path(name: &str) -> PathBuf {
    let p = target_dir().join("debug").join(name);
    assert!(
        p.is_file(),
        "{} not found: build the workspace binaries first (`cargo build --workspace --bins`, which `make test` does)",
        p.display()
    );
    p
}
