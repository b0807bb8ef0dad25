//! Atomic file replacement, the one piece of file I/O both processes share: a reader (or
//! a restart after a crash) sees the old contents or the new, never half a file.
//!
//! Std only: no runtime here. Async callers run it in `spawn_blocking`.
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

/// Temp names end with this; [`remove_stale_temps`] matches on it.
const TEMP_SUFFIX: &str = ".tmp";

/// Replace `path` with `bytes` durably: write a uniquely named temp file in the same
/// directory (created with `mode`, to which the umask applies as with `open(2)`), fsync
/// it, rename it over `path`, then fsync the directory so the rename itself survives a
/// crash. On an error before the rename the temp file is removed and `path` is untouched.
pub fn write_atomic(path: &Path, bytes: &[u8], mode: u32) -> std::io::Result<()> {
    replace(path, bytes, mode, Durability::Fsync)
}

/// Replace `path` with `bytes` atomically but without the fsyncs of [`write_atomic`]:
/// the same temp file, rename and clean-up, so a reader sees the old contents or the new,
/// never half a file; but a crash of the machine may lose the write (or leave an empty
/// file). For files that do not outlive the machine anyway (an emptyDir, a ready file
/// read by a process on the same host), and for hot paths that must not wait on the disk.
pub fn replace_atomic(path: &Path, bytes: &[u8], mode: u32) -> std::io::Result<()> {
    replace(path, bytes, mode, Durability::None)
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Durability {
    Fsync,
    None,
}

fn replace(path: &Path, bytes: &[u8], mode: u32, durability: Durability) -> std::io::Result<()> {
    let fsync = durability == Durability::Fsync;
    let (tmp, mut file) = create_temp(path, mode)?;
    let written = file.write_all(bytes).and_then(|()| if fsync { file.sync_all() } else { Ok(()) });
    drop(file);
    if let Err(e) = written.and_then(|()| std::fs::rename(&tmp, path)) {
        let _ = std::fs::remove_file(&tmp);
        return Err(e);
    }
    if fsync {
        File::open(parent(path))?.sync_all()?;
    }
    Ok(())
}

/// Remove the temp files that interrupted [`write_atomic`]s or [`replace_atomic`]s of
/// `path` left behind (a crash between creating and renaming one). Call it only while
/// nothing else writes `path`, e.g. at startup. Returns how many were removed.
pub fn remove_stale_temps(path: &Path) -> std::io::Result<usize> {
    let prefix = temp_prefix(path)?;
    let target = &prefix[1..prefix.len() - 1];
    remove_temps_where(parent(path), |t| t == target)
}

/// Remove every temp file an interrupted [`write_atomic`] or [`replace_atomic`] left in
/// `dir`, whatever it was writing (a spool of many files). Same rule as
/// [`remove_stale_temps`]: only while nothing else writes in `dir`. Returns how many.
pub fn remove_temps_in(dir: &Path) -> std::io::Result<usize> {
    remove_temps_where(dir, |_| true)
}

/// Remove the temp files in `dir` whose target file name passes `wanted`.
fn remove_temps_where(dir: &Path, wanted: impl Fn(&str) -> bool) -> std::io::Result<usize> {
    let mut removed = 0;
    for entry in std::fs::read_dir(dir)?.flatten() {
        let name = entry.file_name();
        if name.to_str().and_then(temp_target).is_some_and(&wanted) {
            std::fs::remove_file(entry.path())?;
            removed += 1;
        }
    }
    Ok(removed)
}

/// The file a temp name of [`create_temp`]'s (`.<name>.<pid>-<n>.tmp`) was for.
fn temp_target(name: &str) -> Option<&str> {
    let rest = name.strip_prefix('.')?.strip_suffix(TEMP_SUFFIX)?;
    let (target, counter) = rest.rsplit_once('.')?;
    let (pid, n) = counter.split_once('-')?;
    let digits = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
    (!target.is_empty() && digits(pid) && digits(n)).then_some(target)
}

/// Hidden and with a `.tmp` suffix, so directory scans that look for `*.json` and the
/// like never pick one up: `.<name>.<pid>-<n>.tmp`.
fn create_temp(path: &Path, mode: u32) -> std::io::Result<(PathBuf, File)> {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let prefix = temp_prefix(path)?;
    loop {
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let tmp = parent(path).join(format!("{prefix}{}-{n}{TEMP_SUFFIX}", std::process::id()));
        // `create_new`: never truncate a file someone else is writing (a leftover of an
        // earlier process with our pid is skipped, not reused).
        match OpenOptions::new().write(true).create_new(true).mode(mode).open(&tmp) {
            Ok(file) => return Ok((tmp, file)),
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => continue,
            Err(e) => return Err(e),
        }
    }
}

fn temp_prefix(path: &Path) -> std::io::Result<String> {
    let name = path.file_name().and_then(|n| n.to_str()).ok_or_else(|| {
        std::io::Error::new(std::io::ErrorKind::InvalidInput, format!("{}: not a UTF-8 file name", path.display()))
    })?;
    Ok(format!(".{name}."))
}

/// The directory holding `path` (`.` for a bare file name).
fn parent(path: &Path) -> &Path {
    match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    }
}

#[cfg(test)]
mod tests;
