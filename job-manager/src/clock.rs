//! Wall-clock time where it is compared with job-token expiries, with a test seam: with
//! the `test-support` feature, [`jump`] moves this clock (only this one) as an NTP step
//! or a resumed VM would move the system's.
use std::time::{SystemTime, UNIX_EPOCH};

#[cfg(feature = "test-support")]
static OFFSET_SECS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

/// Seconds since the Unix epoch.
pub fn unix_secs() -> u64 {
    let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default().as_secs();
    #[cfg(feature = "test-support")]
    let now = now + OFFSET_SECS.load(std::sync::atomic::Ordering::SeqCst);
    now
}

/// Move [`unix_secs`] forward by `by` for the rest of the process (tests only).
#[cfg(feature = "test-support")]
pub fn jump(by: std::time::Duration) {
    OFFSET_SECS.fetch_add(by.as_secs(), std::sync::atomic::Ordering::SeqCst);
}
