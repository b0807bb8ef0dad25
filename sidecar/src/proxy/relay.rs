//! One direction of a TCP-to-TCP tunnel. On Linux the bytes go socket -> pipe -> socket
//! with `splice(2)`, so they never enter user space: no copy, no per-tunnel buffer in
//! RSS (a pipe's pages live in the kernel and only while data is in flight). Where a
//! pipe cannot be had (fd limit, a kernel refusing splice on this socket) the same
//! direction falls back to a buffered copy, before any byte moved, so the fallback is
//! always safe.
//!
//! TLS is the exception: a direction whose first byte is a TLS handshake record (0x16,
//! what both a ClientHello and a ServerHello start with) is relayed with the buffered
//! copy. Measured on 1 GiB HTTPS downloads (BENCHMARKS.md, "Sidecar"): the TLS receiver
//! spends ~0.35 CPU-s/GiB more decrypting data that arrived through a spliced tunnel
//! (segments built from spliced pages reach it in smaller pieces) than the buffered copy
//! costs the sidecar, so splicing TLS made the whole path slower.
//!
//! Both modes drive tokio's readiness by hand (`readable()`/`writable()` + `try_io`),
//! which is why they take the owned halves rather than `AsyncRead`/`AsyncWrite`.
use prometheus_client::metrics::counter::Counter;
use std::io;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;
use tokio::io::AsyncWriteExt;
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};

/// Where the activity of one direction is recorded: bytes for the metrics, and the
/// time of the last byte for the tunnel's idle timeout (shared by both directions).
pub struct Activity<'a> {
    pub bytes: &'a Counter,
    pub last: &'a AtomicU64,
    pub epoch: Instant,
}

impl Activity<'_> {
    fn moved(&self, n: usize) {
        self.bytes.inc_by(n as u64);
        self.last.store(self.epoch.elapsed().as_millis() as u64, Ordering::Relaxed);
    }
}

/// How one direction was relayed; tests and logs tell the modes apart with it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    Splice,
    Buffered,
}

/// The first byte of every TLS record carrying a handshake message.
const TLS_HANDSHAKE: u8 = 0x16;

/// Copies `from` to `to` until EOF, then shuts `to`'s write side down (half-close).
pub async fn one_way(mut from: OwnedReadHalf, mut to: OwnedWriteHalf, activity: Activity<'_>) -> io::Result<Mode> {
    // Nothing is allocated (no pipe, no buffer) until the first byte arrives, so an
    // idle tunnel costs two sockets and a task.
    let mut first = [0u8; 1];
    let tls = from.peek(&mut first).await? == 1 && first[0] == TLS_HANDSHAKE;
    #[cfg(target_os = "linux")]
    let mode = if tls {
        buffered(&from, &to, &activity).await.map(|()| Mode::Buffered)
    } else {
        splice_or_buffered(&from, &to, &activity).await
    };
    #[cfg(not(target_os = "linux"))]
    let mode = {
        let _ = tls;
        buffered(&from, &to, &activity).await.map(|()| Mode::Buffered)
    };
    let mode = mode?;
    to.shutdown().await?;
    Ok(mode)
}

#[cfg(target_os = "linux")]
async fn splice_or_buffered(from: &OwnedReadHalf, to: &OwnedWriteHalf, activity: &Activity<'_>) -> io::Result<Mode> {
    match splice::Pipe::new() {
        // The first splice tells whether this socket pair can be spliced at all.
        Ok(mut pipe) => match splice::run(from, to, &mut pipe, activity).await {
            Err(splice::Failed::Unsupported) => buffered(from, to, activity).await.map(|()| Mode::Buffered),
            Err(splice::Failed::Io(e)) => Err(e),
            Ok(()) => Ok(Mode::Splice),
        },
        Err(e) => {
            tracing::debug!(error = %e, "no pipe for the tunnel; buffered copy");
            buffered(from, to, activity).await.map(|()| Mode::Buffered)
        }
    }
}

/// Buffer of the fallback copy: starts small so a quiet tunnel costs little, grows
/// while reads fill it so a bulk transfer makes few syscalls.
const BUF_MIN: usize = 8 * 1024;
const BUF_MAX: usize = 256 * 1024;

async fn buffered(from: &OwnedReadHalf, to: &OwnedWriteHalf, activity: &Activity<'_>) -> io::Result<()> {
    let mut buf = vec![0u8; BUF_MIN];
    loop {
        from.readable().await?;
        let n = match from.try_read(&mut buf) {
            Ok(0) => return Ok(()),
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
            Err(e) => return Err(e),
        };
        activity.moved(n);
        let mut sent = 0;
        while sent < n {
            to.writable().await?;
            match to.try_write(&buf[sent..n]) {
                Ok(m) => sent += m,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                Err(e) => return Err(e),
            }
        }
        if n == buf.len() && buf.len() < BUF_MAX {
            buf.resize((buf.len() * 4).min(BUF_MAX), 0);
        }
    }
}

#[cfg(test)]
mod tests;

#[cfg(target_os = "linux")]
mod splice {
    use super::Activity;
    use nix::errno::Errno;
    use nix::fcntl::{fcntl, splice, FcntlArg, OFlag, SpliceFFlags};
    use std::io;
    use std::os::fd::OwnedFd;
    use tokio::io::Interest;
    use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};

    /// A new pipe's capacity (16 pages), used when the kernel cannot tell.
    const DEFAULT_PIPE: usize = 64 * 1024;

    /// The pipe a direction grows to once it carries bulk data (a read filled the
    /// pipe): 16x fewer splices and wake-ups per byte. Measured on a 1 GiB download
    /// (BENCHMARKS.md, Sidecar): about 30% less sidecar CPU per GiB on plain HTTP
    /// than the default 64 KiB pipe, 0-25% less on TLS. 1 MiB is also the default
    /// `pipe-max-size`, the most an unprivileged process may ask for.
    pub const BULK_PIPE: usize = 1024 * 1024;

    pub struct Pipe {
        read: OwnedFd,
        write: OwnedFd,
        /// Bytes the pipe holds at most (what one splice into it asks for).
        capacity: usize,
    }

    impl Pipe {
        pub fn new() -> io::Result<Self> {
            let (read, write) = nix::unistd::pipe2(OFlag::O_NONBLOCK | OFlag::O_CLOEXEC)?;
            let capacity = fcntl(&write, FcntlArg::F_GETPIPE_SZ).map(|n| n as usize).unwrap_or(DEFAULT_PIPE);
            Ok(Self { read, write, capacity })
        }

        /// Asks the kernel for a bigger pipe. Refusals are fine and keep the current
        /// size: `pipe-max-size`, or the per-user pipe budget (`pipe-user-pages-soft`)
        /// when many tunnels are busy at once.
        pub fn grow(&mut self, size: usize) {
            if let Ok(n) = fcntl(&self.write, FcntlArg::F_SETPIPE_SZ(size as i32)) {
                self.capacity = n as usize;
            }
        }

        pub fn capacity(&self) -> usize {
            self.capacity
        }
    }

    pub enum Failed {
        /// splice refused before any byte moved: the caller may copy instead.
        Unsupported,
        Io(io::Error),
    }

    impl From<io::Error> for Failed {
        fn from(e: io::Error) -> Self {
            Failed::Io(e)
        }
    }

    // MOVE is a hint (pages are moved, not copied, where the kernel can); NONBLOCK
    // makes the pipe side non-blocking, the sockets already are (tokio).
    fn flags() -> SpliceFFlags {
        SpliceFFlags::SPLICE_F_MOVE | SpliceFFlags::SPLICE_F_NONBLOCK
    }

    /// Runs until EOF on `from`. The pipe is always drained before the next read, so a
    /// WouldBlock on the read side means the socket is empty (not the pipe full), and
    /// on the write side that the socket's send buffer is full.
    pub async fn run(
        from: &OwnedReadHalf,
        to: &OwnedWriteHalf,
        pipe: &mut Pipe,
        activity: &Activity<'_>,
    ) -> Result<(), Failed> {
        let (from_s, to_s) = (from.as_ref(), to.as_ref());
        let mut first = true;
        let mut grown = false;
        loop {
            from.readable().await?;
            let want = pipe.capacity;
            let r = from_s.try_io(Interest::READABLE, || {
                splice(from_s, None, &pipe.write, None, want, flags()).map_err(io::Error::from)
            });
            let n = match r {
                Ok(0) => return Ok(()),
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                Err(e) if first && unsupported(&e) => return Err(Failed::Unsupported),
                Err(e) => return Err(e.into()),
            };
            first = false;
            activity.moved(n);
            let mut left = n;
            while left > 0 {
                to.writable().await?;
                let w = to_s.try_io(Interest::WRITABLE, || {
                    splice(&pipe.read, None, to_s, None, left, flags()).map_err(io::Error::from)
                });
                match w {
                    Ok(m) => left -= m,
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                    Err(e) => return Err(e.into()),
                }
            }
            // A read that filled the pipe: this direction carries bulk data, so move it
            // in bigger steps (fewer splices and wake-ups per byte). Only then, so the
            // many quiet tunnels keep default pipes and the per-user pipe budget.
            if n == want && !grown {
                grown = true;
                if pipe.capacity() < BULK_PIPE {
                    pipe.grow(BULK_PIPE);
                }
            }
        }
    }

    fn unsupported(e: &io::Error) -> bool {
        matches!(e.raw_os_error().map(Errno::from_raw), Some(Errno::EINVAL | Errno::ENOSYS | Errno::EOPNOTSUPP))
    }
}
