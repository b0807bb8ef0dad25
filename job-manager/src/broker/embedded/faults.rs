//! Fault injection for the embedded broker when it stands in for a remote one in tests:
//! errors, garbage, hangs, outages and delays, applied to broker API requests (`/v1/...`)
//! only, so a test can still read results in-process or through the admin endpoints
//! (except while "down": then new connections are closed at once, whatever they ask).
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// What the server does with one broker API request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Injected {
    /// Serve normally (after `delay`, if any).
    Serve { delay: Duration },
    /// Answer this status with an error body instead of serving.
    Fail { status: u16 },
    /// Answer 200 with a body that is not JSON.
    Garbage,
    /// Never answer: hold the request until `until`, then drop the connection.
    Hang { until: Instant },
    /// Drop the connection without an answer (the broker is down).
    Down,
}

#[derive(Debug, Default)]
struct FaultPlan {
    fail_next: u32,
    fail_status: u16,
    garbage_next: u32,
    hang_until: Option<Instant>,
    down: bool,
    delay: Duration,
}

impl FaultPlan {
    /// Decide the fate of the next request and consume one unit of any counted fault.
    /// Precedence: down > hang > fail > garbage > serve (with delay).
    fn next(&mut self, now: Instant) -> Injected {
        if self.down {
            return Injected::Down;
        }
        if let Some(until) = self.hang_until {
            if now < until {
                return Injected::Hang { until };
            }
            self.hang_until = None;
        }
        if self.fail_next > 0 {
            self.fail_next -= 1;
            return Injected::Fail { status: self.fail_status };
        }
        if self.garbage_next > 0 {
            self.garbage_next -= 1;
            return Injected::Garbage;
        }
        Injected::Serve { delay: self.delay }
    }
}

/// A handle on the broker's fault plan; clones share it.
#[derive(Clone, Debug, Default)]
pub struct Faults(Arc<Mutex<FaultPlan>>);

impl Faults {
    fn with<R>(&self, f: impl FnOnce(&mut FaultPlan) -> R) -> R {
        f(&mut self.0.lock().unwrap_or_else(|p| p.into_inner()))
    }

    /// The next `n` broker API requests get 500.
    pub fn fail_next(&self, n: u32) {
        self.fail_next_with_status(n, 500);
    }

    /// The next `n` broker API requests get `status` (e.g. 503, 429).
    pub fn fail_next_with_status(&self, n: u32, status: u16) {
        self.with(|p| {
            p.fail_next = n;
            p.fail_status = status;
        });
    }

    /// The next `n` broker API requests get 200 with a body that is not JSON.
    pub fn garbage_next(&self, n: u32) {
        self.with(|p| p.garbage_next = n);
    }

    /// Requests arriving in the next `d` are never answered (their connections are
    /// dropped once `d` has passed).
    pub fn hang_for(&self, d: Duration) {
        self.with(|p| p.hang_until = Some(Instant::now() + d));
    }

    /// While down, new connections are closed at once and broker API requests on
    /// connections already open are dropped without an answer.
    pub fn set_down(&self, down: bool) {
        self.with(|p| p.down = down);
    }

    pub fn is_down(&self) -> bool {
        self.with(|p| p.down)
    }

    /// Every broker API answer waits `d` first (`Duration::ZERO` to stop).
    pub fn delay(&self, d: Duration) {
        self.with(|p| p.delay = d);
    }

    /// Back to normal service.
    pub fn clear(&self) {
        self.with(|p| *p = FaultPlan::default());
    }

    pub(crate) fn next(&self) -> Injected {
        self.with(|p| p.next(Instant::now()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counted_faults_are_consumed_in_precedence_order() {
        let mut p = FaultPlan { fail_next: 1, fail_status: 503, garbage_next: 1, ..Default::default() };
        let t = Instant::now();
        assert_eq!(p.next(t), Injected::Fail { status: 503 });
        assert_eq!(p.next(t), Injected::Garbage);
        assert_eq!(p.next(t), Injected::Serve { delay: Duration::ZERO });
    }

    #[test]
    fn hang_window_ends_and_down_wins() {
        let t = Instant::now();
        let until = t + Duration::from_secs(1);
        let mut p = FaultPlan { hang_until: Some(until), fail_next: 1, fail_status: 500, ..Default::default() };
        assert_eq!(p.next(t), Injected::Hang { until });
        assert_eq!(p.next(until), Injected::Fail { status: 500 }, "after the window, counted faults apply");
        p.down = true;
        p.delay = Duration::from_millis(5);
        assert_eq!(p.next(until), Injected::Down);
        p.down = false;
        assert_eq!(p.next(until), Injected::Serve { delay: Duration::from_millis(5) });
    }
}
