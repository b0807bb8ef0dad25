//! Reading a whole request body (a result posted to the local API, a dispatch through
//! the ingress) without letting bodies take the pod's memory. Three bounds:
//!
//! - one body: `--max-body-bytes` (413, before a byte is read when the declared length
//!   is over);
//! - its time: `--body-read-timeout-ms` for the whole body (408): a slow upload cannot
//!   hold memory and a connection for ever;
//! - all bodies together: `--max-body-memory-bytes`, a budget of bytes shared by every
//!   body being read or held. A body takes what it needs as it grows (the declared
//!   length up front, else as chunks arrive), never waits for it: over the budget it is
//!   refused at once with 503 and `Retry-After` (`body_memory_full`), so the client
//!   retries later instead of an upload sitting on memory while it waits. The bytes go
//!   back when the [`HeldBody`] is dropped. The rest of a refused body is read and
//!   thrown away (within the same limits) before the answer, so the client sees the 503
//!   rather than a connection reset in the middle of its upload.
//!
//! Bytes are copied into one buffer sized for the body (the declared length, or grown
//! in steps, each step charged to the budget), so there is no second copy at the end
//! and nothing of hyper's read buffers is kept alive.
use crate::error::ProxyError;
use bytes::{Buf, BufMut, Bytes};
use http_body_util::BodyExt;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// The limits every whole-body read runs under. Clones share the budget.
#[derive(Clone, Debug)]
pub struct BodyLimits {
    /// Largest body, bytes.
    pub max: usize,
    /// Time to read one whole body.
    pub read_timeout: Duration,
    budget: Arc<Semaphore>,
}

/// A body read whole, and its share of the budget (given back on drop).
#[derive(Debug)]
pub struct HeldBody {
    pub bytes: Bytes,
    pub share: BudgetShare,
}

/// Bytes of the shared budget; given back on drop.
#[derive(Debug)]
pub struct BudgetShare(#[allow(dead_code)] Option<OwnedSemaphorePermit>);

/// The first step a body of unknown length is given, and the factor it grows by.
const FIRST_STEP: usize = 64 * 1024;

impl BodyLimits {
    /// `memory`: the budget of all bodies together (at least `max`, see config).
    pub fn new(max: usize, read_timeout: Duration, memory: usize) -> Self {
        Self { max, read_timeout, budget: Arc::new(Semaphore::new(memory.min(Semaphore::MAX_PERMITS))) }
    }

    /// Bytes of the budget not taken.
    pub fn available(&self) -> usize {
        self.budget.available_permits()
    }

    fn take(&self, n: usize, share: &mut BudgetShare) -> Result<(), ProxyError> {
        if n == 0 {
            return Ok(());
        }
        let n32 = u32::try_from(n).map_err(|_| ProxyError::BodyMemoryFull)?;
        let permit = self.budget.clone().try_acquire_many_owned(n32).map_err(|_| ProxyError::BodyMemoryFull)?;
        match &mut share.0 {
            Some(held) => held.merge(permit),
            None => share.0 = Some(permit),
        }
        Ok(())
    }

    /// Reads `body` whole under the three bounds (module doc).
    pub async fn read<B>(&self, body: B) -> Result<HeldBody, ProxyError>
    where
        B: hyper::body::Body,
        B::Error: std::error::Error + Send + Sync + 'static,
    {
        let limit = self.max;
        // A declared length over the limit is refused before waiting for a single byte.
        let hint = body.size_hint();
        if hint.lower() > limit as u64 {
            return Err(ProxyError::BodyTooLarge { limit });
        }
        let mut share = BudgetShare(None);
        // A declared length is taken up front (so a body over the budget is refused
        // before it is read); otherwise the buffer grows in charged steps.
        let first = match hint.exact() {
            Some(n) => n as usize,
            None => FIRST_STEP.min(limit),
        };
        let mut body = std::pin::pin!(body);
        if let Err(e) = self.take(first, &mut share) {
            self.discard(body).await;
            return Err(e);
        }
        let mut buf: Vec<u8> = Vec::with_capacity(first);
        let mut over_budget = false;
        let read = async {
            while let Some(frame) = body.frame().await {
                let frame = frame.map_err(|e| ProxyError::BadRequest(format!("reading body: {e}")))?;
                let Ok(chunk) = frame.into_data() else {
                    continue;
                };
                let need = buf.len() + chunk.remaining();
                if need > limit {
                    return Err(ProxyError::BodyTooLarge { limit });
                }
                if need > buf.capacity() {
                    let grown = need.max(buf.capacity().saturating_mul(2)).min(limit);
                    if let Err(e) = self.take(grown - buf.capacity(), &mut share) {
                        over_budget = true;
                        return Err(e);
                    }
                    buf.reserve_exact(grown - buf.len());
                }
                buf.put(chunk);
            }
            Ok(())
        };
        let started = tokio::time::Instant::now();
        let read = tokio::time::timeout(self.read_timeout, read).await;
        let read = match read {
            Ok(Ok(())) => return Ok(HeldBody { bytes: Bytes::from(buf), share }),
            Ok(Err(e)) => e,
            Err(_) => return Err(ProxyError::BodyTimeout { after: self.read_timeout }),
        };
        if over_budget {
            drop((buf, share));
            let left = self.read_timeout.saturating_sub(started.elapsed());
            let _ = tokio::time::timeout(left, drain(body.as_mut(), limit)).await;
        }
        Err(read)
    }

    /// Reads the rest of a body that will not be used and throws it away (up to the
    /// body limit, within the read timeout; errors ignored), so that an early answer
    /// (a duplicate's 409, a 503) reaches a client still sending. Holds no memory.
    pub async fn discard<B>(&self, body: B)
    where
        B: hyper::body::Body,
    {
        let body = std::pin::pin!(body);
        let _ = tokio::time::timeout(self.read_timeout, drain(body, self.max)).await;
    }
}

async fn drain<B: hyper::body::Body>(mut body: std::pin::Pin<&mut B>, limit: usize) {
    let mut seen = 0usize;
    while let Some(Ok(frame)) = body.frame().await {
        if let Ok(chunk) = frame.into_data() {
            seen += chunk.remaining();
            if seen > limit {
                return;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::{Full, StreamBody};
    use hyper::body::Frame;

    type Chunks = StreamBody<futures_util::stream::Iter<std::vec::IntoIter<Result<Frame<Bytes>, std::io::Error>>>>;

    fn chunks(n: usize, size: usize) -> Chunks {
        let frames: Vec<_> = (0..n).map(|_| Ok(Frame::data(Bytes::from(vec![b'x'; size])))).collect();
        StreamBody::new(futures_util::stream::iter(frames))
    }

    #[tokio::test]
    async fn a_body_is_read_whole_and_its_share_given_back_on_drop() {
        let limits = BodyLimits::new(1000, Duration::from_secs(5), 1500);
        let held = limits.read(Full::new(Bytes::from(vec![b'a'; 1000]))).await.unwrap();
        assert_eq!((held.bytes.len(), limits.available()), (1000, 500));
        drop(held);
        assert_eq!(limits.available(), 1500);
        // Unknown length: grown in steps, every step charged, all of it given back.
        let held = limits.read(chunks(10, 100)).await.unwrap();
        assert_eq!(held.bytes.len(), 1000);
        assert!(limits.available() <= 500, "{}", limits.available());
        drop(held);
        assert_eq!(limits.available(), 1500);
    }

    #[tokio::test]
    async fn over_the_limit_is_413_and_over_the_budget_503_and_nothing_stays_taken() {
        let limits = BodyLimits::new(1000, Duration::from_secs(5), 1500);
        let e = limits.read(Full::new(Bytes::from(vec![b'a'; 1001]))).await.unwrap_err();
        assert!(matches!(e, ProxyError::BodyTooLarge { limit: 1000 }), "{e}");
        let e = limits.read(chunks(11, 100)).await.unwrap_err();
        assert!(matches!(e, ProxyError::BodyTooLarge { limit: 1000 }), "{e}");
        assert_eq!(limits.available(), 1500);
        let first = limits.read(Full::new(Bytes::from(vec![b'a'; 1000]))).await.unwrap();
        let e = limits.read(Full::new(Bytes::from(vec![b'a'; 600]))).await.unwrap_err();
        assert!(matches!(e, ProxyError::BodyMemoryFull), "{e}");
        assert_eq!(e.status(), http::StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(e.response().headers()[http::header::RETRY_AFTER], "1");
        let e = limits.read(chunks(6, 100)).await.unwrap_err();
        assert!(matches!(e, ProxyError::BodyMemoryFull), "{e}");
        assert_eq!(limits.available(), 500);
        drop(first);
        assert_eq!(limits.available(), 1500);
    }

    #[tokio::test]
    async fn a_body_that_stalls_is_408_after_the_read_timeout() {
        let limits = BodyLimits::new(1000, Duration::from_millis(50), 1500);
        let stalled = StreamBody::new(futures_util::stream::pending::<Result<Frame<Bytes>, std::io::Error>>());
        let e = limits.read(stalled).await.unwrap_err();
        assert!(matches!(e, ProxyError::BodyTimeout { .. }), "{e}");
        assert_eq!(e.status(), http::StatusCode::REQUEST_TIMEOUT);
        assert_eq!(limits.available(), 1500);
    }
}
