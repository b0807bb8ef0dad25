//! Exponential backoff with full jitter, as a pure schedule.
use std::time::Duration;

#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Backoff {
    pub initial: Duration,
    pub max: Duration,
    pub factor: f64,
}

impl Default for Backoff {
    fn default() -> Self {
        Self { initial: Duration::from_millis(100), max: Duration::from_secs(30), factor: 2.0 }
    }
}

impl Backoff {
    pub fn new(initial: Duration, max: Duration) -> Self {
        Self { initial, max, factor: 2.0 }
    }

    /// The ceiling for retry number `attempt` (0-based): `initial * factor^attempt`, capped.
    pub fn ceiling(&self, attempt: u32) -> Duration {
        let secs = self.initial.as_secs_f64() * self.factor.powi(attempt.min(64) as i32);
        Duration::from_secs_f64(secs.min(self.max.as_secs_f64()))
    }

    /// "Equal jitter": half the ceiling plus `unit` (in [0,1)) of the other half, so a
    /// retry never fires immediately yet replicas spread out.
    pub fn delay_with(&self, attempt: u32, unit: f64) -> Duration {
        let c = self.ceiling(attempt).as_secs_f64();
        Duration::from_secs_f64(c / 2.0 + c / 2.0 * unit.clamp(0.0, 1.0))
    }

    /// [`Backoff::delay_with`] using a random jitter.
    pub fn delay(&self, attempt: u32) -> Duration {
        self.delay_with(attempt, rand::random::<f64>())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grows_and_caps() {
        let b = Backoff::new(Duration::from_millis(100), Duration::from_secs(1));
        assert_eq!(b.ceiling(0), Duration::from_millis(100));
        assert_eq!(b.ceiling(1), Duration::from_millis(200));
        assert_eq!(b.ceiling(3), Duration::from_millis(800));
        assert_eq!(b.ceiling(4), Duration::from_secs(1));
        assert_eq!(b.ceiling(u32::MAX), Duration::from_secs(1));
    }

    #[test]
    fn jitter_stays_in_upper_half() {
        let b = Backoff::new(Duration::from_millis(100), Duration::from_secs(1));
        assert_eq!(b.delay_with(1, 0.0), Duration::from_millis(100));
        assert_eq!(b.delay_with(1, 1.0), Duration::from_millis(200));
        for _ in 0..100 {
            let d = b.delay(2);
            assert!(d >= Duration::from_millis(200) && d <= Duration::from_millis(400), "{d:?}");
        }
    }
}
