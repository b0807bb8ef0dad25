//! What a binary was built from (set by `common/build.rs`): printed by every binary's
//! `--version`. The commit is `unknown` in debug builds unless `BUILD_COMMIT` is set.

/// The workspace version.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");
/// The git commit (`BUILD_COMMIT`, or HEAD for release builds), or `unknown`.
pub const COMMIT: &str = env!("BUILD_COMMIT");
/// `rustc -V` of the compiler that built this binary.
pub const RUSTC: &str = env!("BUILD_RUSTC");
/// `0.1.0 (commit 1a2b3c4…, rustc 1.95.0 (…))`: what `--version` prints after the name.
pub const LONG_VERSION: &str =
    concat!(env!("CARGO_PKG_VERSION"), " (commit ", env!("BUILD_COMMIT"), ", ", env!("BUILD_RUSTC"), ")");

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn long_version_names_version_commit_and_compiler() {
        assert!(LONG_VERSION.starts_with(&format!("{VERSION} (commit {COMMIT}, rustc ")), "{LONG_VERSION}");
        assert!(!COMMIT.is_empty());
    }
}
