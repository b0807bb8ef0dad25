//! What `/readyz` answers, shared by the parts that can make the job manager unready:
//! the dispatcher (stalled) and the shutdown sequence (draining); the result API reads it.
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

/// What `/readyz` answers. Not ready while draining or while the dispatcher is stalled.
#[derive(Default, Debug)]
pub struct Readiness {
    stalled: Mutex<Option<String>>,
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
        match &*self.stalled.lock().expect("lock") {
            Some(r) => Err(r.clone()),
            None => Ok(()),
        }
    }
}
