//! Build facts for `common::metrics` (both binaries' `*_build_info`): the rustc version
//! and the git commit: env `GIT_COMMIT` when set (e.g. a build from a source tarball);
//! else, in release builds (the images), `git rev-parse`; else "unknown". Debug builds
//! do not ask git on purpose: the commit would change `common`, and so rebuild the whole
//! workspace, on every commit of a development loop. This is the workspace's only build
//! script.
use std::path::{Path, PathBuf};
use std::process::Command;

fn main() {
    println!("cargo:rerun-if-env-changed=GIT_COMMIT");
    let commit = std::env::var("GIT_COMMIT")
        .ok()
        .map(|c| c.trim().to_string())
        .filter(|c| !c.is_empty())
        .or_else(|| (std::env::var("PROFILE").as_deref() == Ok("release")).then(git_commit).flatten())
        .unwrap_or_else(|| "unknown".into());
    let rustc = std::env::var("RUSTC")
        .ok()
        .and_then(|rustc| output(Command::new(rustc).arg("--version")))
        .map(|v| v.trim_start_matches("rustc ").to_string())
        .unwrap_or_else(|| "unknown".into());
    println!("cargo:rustc-env=BUILD_GIT_COMMIT={commit}");
    println!("cargo:rustc-env=BUILD_RUSTC_VERSION={rustc}");
}

/// The checked-out commit; asks cargo to re-run this script when HEAD or the branch it
/// names moves (in a worktree the branch refs live in the common git dir).
fn git_commit() -> Option<String> {
    let git = |args: &[&str]| output(Command::new("git").args(args));
    let git_dir = PathBuf::from(git(&["rev-parse", "--path-format=absolute", "--git-dir"])?);
    let common_dir = PathBuf::from(git(&["rev-parse", "--path-format=absolute", "--git-common-dir"])?);
    rerun_if_exists(&git_dir.join("HEAD"));
    if let Some(branch) = git(&["symbolic-ref", "-q", "HEAD"]) {
        rerun_if_exists(&common_dir.join(branch));
    }
    rerun_if_exists(&common_dir.join("packed-refs"));
    git(&["rev-parse", "--short=12", "HEAD"])
}

/// A missing path would make cargo re-run the script (and rebuild `common`) every time.
fn rerun_if_exists(path: &Path) {
    if path.exists() {
        println!("cargo:rerun-if-changed={}", path.display());
    }
}

fn output(cmd: &mut Command) -> Option<String> {
    let out = cmd.output().ok().filter(|o| o.status.success())?;
    let s = String::from_utf8(out.stdout).ok()?.trim().to_string();
    (!s.is_empty()).then_some(s)
}
