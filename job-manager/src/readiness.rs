//! What `/readyz` answers, shared by the parts that can make the job manager unready:
//! the dispatcher (stalled, the broker's poll answers unreadable, the executor's state
//! unreadable, or hand-offs refused by the platform: the job manager's Role lacks a
//! right), the shutdown
//! sequence (draining) and health checks of parts that watch themselves (the result
//! store); the result API reads it.
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

/// A part's own view of whether it works: `Err(reason)` when it does not.
pub type HealthCheck = Box<dyn Fn() -> Result<(), String> + Send + Sync>;

/// What `/readyz` answers. Not ready while draining, while hand-offs are refused (the
/// missing right named), while the dispatcher is stalled or cannot read the broker's
/// answers, or while a health check fails.
#[derive(Default)]
pub struct Readiness {
    stalled: Mutex<Option<String>>,
    /// Why hand-offs are refused for good (`dispatcher::refusal`); cleared by a hand-off
    /// of the refused runtime type that succeeds.
    refused: Mutex<Option<String>>,
    /// Why the last poll answer could not be read; cleared by the next one that can.
    poll_unreadable: Mutex<Option<String>>,
    /// Why the executor's state (what runs now) could not be read, so nothing is polled:
    /// e.g. the Role lost `list` on jobrecords. Cleared by the next read that works.
    state_unreadable: Mutex<Option<String>>,
    checks: Mutex<Vec<HealthCheck>>,
    draining: AtomicBool,
    /// Said with every answer, ready or not (the backend's isolation gaps).
    caveats: Mutex<Vec<String>>,
}

impl Readiness {
    pub fn new() -> Arc<Self> {
        Arc::new(Self::default())
    }
    pub fn set_stalled(&self, reason: Option<String>) {
        *self.stalled.lock().expect("lock") = reason;
    }
    pub fn set_refused(&self, reason: Option<String>) {
        *self.refused.lock().expect("lock") = reason;
    }
    pub fn set_poll_unreadable(&self, reason: Option<String>) {
        *self.poll_unreadable.lock().expect("lock") = reason;
    }
    pub fn set_state_unreadable(&self, reason: Option<String>) {
        *self.state_unreadable.lock().expect("lock") = reason;
    }
    /// Ask `check` at every readiness answer (it must be cheap: no I/O).
    pub fn add_check(&self, check: HealthCheck) {
        self.checks.lock().expect("lock").push(check);
    }
    pub fn set_caveats(&self, caveats: Vec<String>) {
        *self.caveats.lock().expect("lock") = caveats;
    }
    pub fn caveats(&self) -> Vec<String> {
        self.caveats.lock().expect("lock").clone()
    }
    pub fn set_draining(&self) {
        self.draining.store(true, Ordering::SeqCst);
    }
    /// `Err(reason)` when not ready.
    pub fn check(&self) -> Result<(), String> {
        if self.draining.load(Ordering::SeqCst) {
            return Err("shutting down".into());
        }
        // Before the stall: a refusal is the reason the dispatcher stalls, and names it.
        if let Some(r) = &*self.refused.lock().expect("lock") {
            return Err(r.clone());
        }
        if let Some(r) = &*self.stalled.lock().expect("lock") {
            return Err(r.clone());
        }
        if let Some(r) = &*self.poll_unreadable.lock().expect("lock") {
            return Err(r.clone());
        }
        if let Some(r) = &*self.state_unreadable.lock().expect("lock") {
            return Err(r.clone());
        }
        self.checks.lock().expect("lock").iter().try_for_each(|check| check())
    }
}

impl std::fmt::Debug for Readiness {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Readiness")
            .field("stalled", &self.stalled)
            .field("refused", &self.refused)
            .field("poll_unreadable", &self.poll_unreadable)
            .field("state_unreadable", &self.state_unreadable)
            .field("checks", &self.checks.lock().map(|c| c.len()).unwrap_or(0))
            .field("draining", &self.draining)
            .field("caveats", &self.caveats)
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_refusal_makes_it_unready_with_its_reason_ahead_of_the_stall_it_causes() {
        let r = Readiness::new();
        assert_eq!(r.check(), Ok(()));
        r.set_stalled(Some("dispatcher stalled".into()));
        r.set_refused(Some("hand-offs of api are refused: no jobs".into()));
        assert_eq!(r.check(), Err("hand-offs of api are refused: no jobs".into()));
        r.set_refused(None);
        assert_eq!(r.check(), Err("dispatcher stalled".into()));
        r.set_stalled(None);
        assert_eq!(r.check(), Ok(()));
        r.set_refused(Some("refused".into()));
        r.set_draining();
        assert_eq!(r.check(), Err("shutting down".into()));
    }
}
