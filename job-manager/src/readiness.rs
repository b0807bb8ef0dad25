//! What `/readyz` answers, shared by the parts that can make the job manager unready:
//! the dispatcher (stalled, or the broker's poll answers unreadable) and the shutdown
//! sequence (draining); the result API reads it.
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

/// What `/readyz` answers. Not ready while draining or while the dispatcher is stalled.
#[derive(Default, Debug)]
pub struct Readiness {
    stalled: Mutex<Option<String>>,
    /// Why the last poll answer could not be read; cleared by the next one that can.
    poll_unreadable: Mutex<Option<String>>,
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
    pub fn set_poll_unreadable(&self, reason: Option<String>) {
        *self.poll_unreadable.lock().expect("lock") = reason;
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
        if let Some(r) = &*self.stalled.lock().expect("lock") {
            return Err(r.clone());
        }
        match &*self.poll_unreadable.lock().expect("lock") {
            Some(r) => Err(r.clone()),
            None => Ok(()),
        }
    }
}
