//! The journal's reserve: a file of preallocated blocks (`journal.reserve`) kept beside
//! the journal and given back to the filesystem the moment an append fails for lack of
//! space, so results that are already on their way (jobs running now) can still be made
//! durable when something else filled the disk. It is then regrown as soon as space is
//! free again; until then the store reports itself degraded.
//!
//! Honest limits: the freed blocks go to the filesystem, not to the journal, so another
//! writer racing for them can take them first; and on copy-on-write or compressing
//! filesystems (btrfs, ZFS) preallocated blocks do not guarantee a later write.
use std::fs::{File, OpenOptions};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

pub(super) struct Reserve {
    path: PathBuf,
    /// The configured size; 0 turns the reserve off (and removes a leftover file).
    target: u64,
    /// Bytes allocated now.
    held: u64,
}

impl Reserve {
    /// Set up the reserve at `path`, allocating it if space allows (an error says why
    /// not; the reserve is then short and `restore` retries).
    pub fn open(path: PathBuf, target: u64) -> (Self, std::io::Result<()>) {
        let mut reserve = Self { path, target, held: 0 };
        if target == 0 {
            let _ = std::fs::remove_file(&reserve.path);
            return (reserve, Ok(()));
        }
        let allocated = reserve.restore();
        (reserve, allocated)
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn held(&self) -> u64 {
        self.held
    }

    pub fn is_short(&self) -> bool {
        self.held < self.target
    }

    /// Grow the reserve back to its size. On failure (the disk is still full) what was
    /// allocated by this attempt is given back, so a retry never eats space piecemeal.
    pub fn restore(&mut self) -> std::io::Result<()> {
        if !self.is_short() {
            return Ok(());
        }
        let file = self.file()?;
        // A leftover larger than the configured size (the setting was lowered) shrinks.
        if file.metadata()?.len() > self.target {
            file.set_len(self.target)?;
        }
        let target = i64::try_from(self.target).unwrap_or(i64::MAX);
        match nix::fcntl::posix_fallocate(&file, 0, target) {
            Ok(()) => {
                self.held = self.target;
                Ok(())
            }
            Err(errno) => {
                let _ = file.set_len(self.held);
                Err(std::io::Error::from(errno))
            }
        }
    }

    /// Give every reserved block back to the filesystem; returns how many bytes.
    pub fn release(&mut self) -> u64 {
        if self.held == 0 {
            return 0;
        }
        match self.file().and_then(|f| f.set_len(0)) {
            Ok(()) => std::mem::take(&mut self.held),
            Err(e) => {
                tracing::warn!(reserve = %self.path.display(), error = %e, "cannot release the result journal's reserve");
                0
            }
        }
    }

    fn file(&self) -> std::io::Result<File> {
        OpenOptions::new().create(true).truncate(false).write(true).mode(0o600).open(&self.path)
    }
}
