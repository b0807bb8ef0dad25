//! Build facts for `--version`: the rustc that compiled us and, for release builds, the
//! commit. `BUILD_COMMIT` wins when set (image builds, where the context has no `.git`).
//! Debug builds read no git state, so a commit does not rebuild the whole workspace.
use std::path::Path;
use std::process::Command;

fn main() {
    println!("cargo:rerun-if-env-changed=BUILD_COMMIT");
    let rustc = std::env::var("RUSTC").unwrap_or_else(|_| "rustc".into());
    let rustc_version = run(Command::new(rustc).arg("-V")).unwrap_or_else(|| "rustc unknown".into());
    let commit = match std::env::var("BUILD_COMMIT") {
        Ok(c) if !c.trim().is_empty() => c.trim().to_string(),
        _ if std::env::var("PROFILE").as_deref() == Ok("release") => git_commit().unwrap_or_else(|| "unknown".into()),
        _ => "unknown".into(),
    };
    println!("cargo:rustc-env=BUILD_COMMIT={commit}");
    println!("cargo:rustc-env=BUILD_RUSTC={rustc_version}");
}

/// HEAD's commit, and rerun triggers on the files that move when it changes.
fn git_commit() -> Option<String> {
    let git = |args: &[&str]| run(Command::new("git").args(args));
    let commit = git(&["rev-parse", "HEAD"])?;
    let mut watch = vec![git(&["rev-parse", "--git-path", "HEAD"])?];
    if let Some(branch) = git(&["symbolic-ref", "-q", "HEAD"]) {
        watch.push(git(&["rev-parse", "--git-path", &branch])?);
    }
    watch.push(git(&["rev-parse", "--git-path", "packed-refs"])?);
    for path in watch {
        if Path::new(&path).exists() {
            println!("cargo:rerun-if-changed={path}");
        }
    }
    Some(commit)
}

fn run(cmd: &mut Command) -> Option<String> {
    let out = cmd.output().ok().filter(|o| o.status.success())?;
    Some(String::from_utf8(out.stdout).ok()?.trim().to_string())
}
