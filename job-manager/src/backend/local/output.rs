//! A job's process output, bounded. The runtime's and the sidecar's stdout + stderr go
//! into a pipe, not a file: the other end is read by `job-manager output-tail <file>
//! <cap>` (hidden, internal), a small process of the job manager's that keeps only the
//! last `cap` bytes on disk, in two halves (`<file>` and `<file>.1`, rotated when the
//! current one is full), and counts what it let go in `<file>.dropped`. A runtime that
//! writes gigabytes costs the state dir (which also holds the result journal) at most
//! `cap` per stream, and keeps running: it is never killed for logging (as
//! `RLIMIT_FSIZE` would).
//!
//! Why a process and not a task of the job manager: a job outlives a job manager that is
//! SIGKILLed (see `executor.rs`). A pipe read by the job manager itself would lose its
//! reader then, and the runtime's next write would get SIGPIPE; the helper lives until
//! the last writer closes the pipe, however many job managers come and go meanwhile.
use std::fs::File;
use std::io::{Read, Seek, SeekFrom, Write};
use std::os::fd::OwnedFd;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use tokio::process::{Child, Command};

/// The subcommand's name (`job-manager output-tail <file> <cap>`).
pub const SUBCOMMAND: &str = "output-tail";

/// Output kept per stream of a job (runtime, sidecar). A failed result carries only the
/// last few KiB; this keeps many times that for an operator reading the job dir, while
/// `parallelism` x 2 streams x 1 MiB stays small next to the result journal it shares
/// the disk with.
pub const DEFAULT_CAP_BYTES: u64 = 1024 * 1024;

const EXIT_USAGE: i32 = 64;

/// The write end to give a process as its stdout + stderr, and the helper keeping
/// `path` bounded. The helper is not killed on drop: it ends when every writer did.
pub(super) fn start(helper: &Path, path: &Path, cap: u64) -> std::io::Result<(OwnedFd, Child)> {
    let (read, write) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC)?;
    let child = Command::new(helper)
        .arg(SUBCOMMAND)
        .arg(path)
        .arg(cap.to_string())
        .env_clear()
        .stdin(Stdio::from(read))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        // Not in the runtime's group (killed with it, it would lose the last output)
        // nor in the job manager's (a terminal's ^C would end it first).
        .process_group(0)
        .spawn()?;
    Ok((write, child))
}

/// `job-manager output-tail <file> <cap>`: copy stdin into `<file>`, keeping at most
/// `<cap>` bytes on disk. Returns the exit code.
pub fn main(args: impl Iterator<Item = std::ffi::OsString>) -> i32 {
    let args: Vec<_> = args.collect();
    let (Some(path), Some(cap)) = (args.first(), args.get(1).and_then(|c| c.to_str()?.parse::<u64>().ok())) else {
        eprintln!("usage: job-manager {SUBCOMMAND} <file> <cap bytes>");
        return EXIT_USAGE;
    };
    let mut tail = BoundedFile::new(PathBuf::from(path), cap);
    let mut stdin = std::io::stdin().lock();
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        match stdin.read(&mut buf) {
            Ok(0) => return 0,
            Ok(n) => tail.write(&buf[..n]),
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(_) => return 1,
        }
    }
}

/// `<file>` and `<file>.1`, each at most half the cap.
struct BoundedFile {
    path: PathBuf,
    half: u64,
    current: Option<File>,
    len: u64,
    dropped: u64,
}

impl BoundedFile {
    fn new(path: PathBuf, cap: u64) -> Self {
        Self { path, half: (cap / 2).max(1), current: None, len: 0, dropped: 0 }
    }

    /// Keep `bytes`. Output that cannot be written (disk full, job dir removed) is
    /// counted as dropped, and reading goes on: the writer must never get SIGPIPE.
    fn write(&mut self, mut bytes: &[u8]) {
        if bytes.len() as u64 > self.half {
            let skip = bytes.len() - self.half as usize;
            self.count_dropped(skip as u64);
            bytes = &bytes[skip..];
        }
        if self.current.is_none() || self.len + bytes.len() as u64 > self.half {
            self.rotate();
        }
        match self.current.as_mut().map(|f| f.write_all(bytes)) {
            Some(Ok(())) => self.len += bytes.len() as u64,
            _ => self.count_dropped(bytes.len() as u64),
        }
    }

    /// The current half becomes `<file>.1` (what that held is dropped) and a new one starts.
    fn rotate(&mut self) {
        if self.current.take().is_some() {
            let older = with_suffix(&self.path, ".1");
            let lost = std::fs::metadata(&older).map(|m| m.len()).unwrap_or(0);
            if std::fs::rename(&self.path, &older).is_ok() {
                self.count_dropped(lost);
            }
        }
        self.len = 0;
        self.current =
            std::fs::OpenOptions::new().write(true).create(true).truncate(true).mode(0o600).open(&self.path).ok();
    }

    fn count_dropped(&mut self, n: u64) {
        if n == 0 {
            return;
        }
        self.dropped += n;
        // Replaced whole, so a reader never sees half a number.
        let tmp = with_suffix(&self.path, ".dropped.tmp");
        if std::fs::write(&tmp, self.dropped.to_string()).is_ok() {
            let _ = std::fs::rename(&tmp, with_suffix(&self.path, ".dropped"));
        }
    }
}

fn with_suffix(path: &Path, suffix: &str) -> PathBuf {
    let mut p = path.as_os_str().to_owned();
    p.push(suffix);
    PathBuf::from(p)
}

/// The last `max` bytes a stream kept (across both halves), lossily decoded; empty
/// when there is none.
pub fn read_tail(path: &Path, max: u64) -> String {
    let mut out = last_bytes(path, max);
    if (out.len() as u64) < max {
        let mut older = last_bytes(&with_suffix(path, ".1"), max - out.len() as u64);
        older.append(&mut out);
        out = older;
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn last_bytes(path: &Path, max: u64) -> Vec<u8> {
    let Ok(mut f) = File::open(path) else { return Vec::new() };
    let len = f.metadata().map(|m| m.len()).unwrap_or(0);
    let _ = f.seek(SeekFrom::Start(len.saturating_sub(max)));
    let mut buf = Vec::new();
    let _ = f.take(max).read_to_end(&mut buf);
    buf
}

/// How many bytes of a stream's output were not kept.
pub fn dropped_bytes(path: &Path) -> u64 {
    std::fs::read_to_string(with_suffix(path, ".dropped")).ok().and_then(|s| s.trim().parse().ok()).unwrap_or(0)
}

/// Bytes a stream occupies in the job dir (both halves).
pub fn kept_bytes(path: &Path) -> u64 {
    [path.to_path_buf(), with_suffix(path, ".1")]
        .iter()
        .filter_map(|p| std::fs::metadata(p).ok())
        .map(|m| m.len())
        .sum()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_stream_keeps_its_last_cap_bytes_and_counts_the_rest() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("runtime.log");
        let mut f = BoundedFile::new(path.clone(), 100);
        let mut written = 0u64;
        for i in 0..1000u32 {
            let line = format!("line {i}\n");
            written += line.len() as u64;
            f.write(line.as_bytes());
            assert!(kept_bytes(&path) <= 100, "never more than the cap on disk");
        }
        assert_eq!(kept_bytes(&path) + dropped_bytes(&path), written, "kept + dropped = written");
        let tail = read_tail(&path, 20);
        assert!(tail.ends_with("line 998\nline 999\n"), "{tail:?}");
        assert_eq!(read_tail(&path, 1000).len() as u64, kept_bytes(&path), "both halves, in order");
        assert!(read_tail(&path, 1000).ends_with("line 999\n"));
    }

    #[test]
    fn a_chunk_larger_than_half_the_cap_keeps_its_end() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("out");
        let mut f = BoundedFile::new(path.clone(), 10);
        f.write(b"0123456789abcdefEND");
        assert_eq!(read_tail(&path, 100), "efEND");
        assert_eq!(dropped_bytes(&path), 14);
        assert_eq!(read_tail(Path::new("/nonexistent"), 10), "");
        assert_eq!(dropped_bytes(Path::new("/nonexistent")), 0);
    }
}
