//! Dedupe: is a polled job already ours? Pure; the caller gathers the facts.

/// What to do with a polled job before running it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Seen {
    /// Never seen: go on to the VSE check and scheduling.
    New,
    /// Its workload runs (broker re-delivery after a lost ack, or a restart): ack this
    /// attempt so the broker stops re-delivering it; start nothing.
    Running,
    /// A hand-off for it is in progress in this process: leave it to that hand-off.
    HandingOff,
    /// It already has a result (not yet delivered): ack, start nothing; delivery sends it.
    Finished,
}

pub fn classify(running: bool, handing_off: bool, has_result: bool) -> Seen {
    if has_result {
        Seen::Finished
    } else if handing_off {
        Seen::HandingOff
    } else if running {
        Seen::Running
    } else {
        Seen::New
    }
}
