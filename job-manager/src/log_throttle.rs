//! Repeated warnings, aggregated: during a broker outage every poll, retry and delivery
//! attempt fails the same way, many times a second. The first of a kind is logged; the
//! rest are counted and summed up in one line per window. Metrics are counted by the
//! caller either way, so they stay exact.
use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// How long repeats of one kind of warning are only counted.
pub const WINDOW: Duration = Duration::from_secs(30);

#[derive(Debug)]
pub struct LogThrottle {
    window: Duration,
    kinds: Mutex<HashMap<String, (Instant, u64)>>,
}

impl Default for LogThrottle {
    fn default() -> Self {
        Self::new(WINDOW)
    }
}

impl LogThrottle {
    pub fn new(window: Duration) -> Self {
        Self { window, kinds: Mutex::new(HashMap::new()) }
    }

    /// `Some(n)` when this warning of `kind` should be logged now, `n` being how many
    /// were held back since the last one logged; `None` to hold it back.
    pub fn admit(&self, kind: &str) -> Option<u64> {
        self.admit_at(kind, Instant::now())
    }

    fn admit_at(&self, kind: &str, now: Instant) -> Option<u64> {
        let mut kinds = self.kinds.lock().unwrap_or_else(|p| p.into_inner());
        match kinds.get_mut(kind) {
            Some((logged, held)) if now.duration_since(*logged) < self.window => {
                *held += 1;
                None
            }
            Some((logged, held)) => {
                let n = *held;
                *logged = now;
                *held = 0;
                Some(n)
            }
            None => {
                kinds.insert(kind.to_string(), (now, 0));
                Some(0)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_first_is_logged_then_one_summary_per_window_with_the_count() {
        let t = LogThrottle::new(Duration::from_secs(30));
        let start = Instant::now();
        assert_eq!(t.admit_at("poll", start), Some(0));
        // 15 a second for 30 seconds: all held back.
        for i in 1..450u64 {
            assert_eq!(t.admit_at("poll", start + Duration::from_millis(i * 66)), None);
        }
        assert_eq!(t.admit_at("other", start), Some(0), "kinds are counted apart");
        assert_eq!(t.admit_at("poll", start + Duration::from_secs(30)), Some(449));
        assert_eq!(t.admit_at("poll", start + Duration::from_secs(31)), None);
        assert_eq!(t.admit_at("poll", start + Duration::from_secs(61)), Some(1));
    }
}
