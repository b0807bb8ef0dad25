//! A connection cap: one count of client connections per listener (proxy, admin,
//! ingress: each its own, so one listener's flood cannot starve another's; the admin
//! probes above all). On the proxy listener CONNECT tunnels, which outlive their HTTP
//! connection, keep a slot of their own. Over the cap nothing waits: an accepted connection
//! gets an immediate `503` (`x-sidecar-error: too_many_connections`) and is closed,
//! rather than sitting in the kernel backlog where a client cannot tell a slow sidecar
//! from a dead one; a tunnel is refused with the tunnel limit's `503`.
use std::sync::Arc;
use std::time::Duration;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// Written raw to a connection over the cap: nothing has been read from it yet, so
/// there is no request to answer through hyper.
const OVERLOADED: &[u8] = b"HTTP/1.1 503 Service Unavailable\r\nx-sidecar-error: too_many_connections\r\ncontent-type: text/plain\r\ncontent-length: 21\r\nconnection: close\r\n\r\ntoo many connections\n";

/// A listener's connection cap (`--max-connections`, `--max-admin-connections`,
/// `--max-ingress-connections`). Clones share the count.
#[derive(Clone, Debug)]
pub struct ConnectionLimit {
    slots: Arc<Semaphore>,
}

/// One held connection slot, given back on drop.
#[derive(Debug)]
pub struct ConnectionPermit {
    _slot: OwnedSemaphorePermit,
}

#[derive(Debug, thiserror::Error)]
#[error("too many connections")]
pub struct Overloaded;

impl ConnectionLimit {
    pub fn new(max_connections: usize) -> Self {
        Self { slots: Arc::new(Semaphore::new(max_connections)) }
    }

    /// A slot now, or `Overloaded`; never waits.
    pub fn try_acquire(&self) -> Result<ConnectionPermit, Overloaded> {
        self.slots.clone().try_acquire_owned().map(|_slot| ConnectionPermit { _slot }).map_err(|_| Overloaded)
    }

    /// Answers an accepted connection that got no slot (`503`, then close), in the
    /// background and for at most a second, so the accept loop never blocks on it.
    pub fn refuse(stream: TcpStream) {
        tokio::spawn(async move {
            let mut stream = stream;
            let _ = tokio::time::timeout(Duration::from_secs(1), stream.write_all(OVERLOADED)).await;
        });
    }
}
