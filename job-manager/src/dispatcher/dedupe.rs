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

/// The same job more than once in one poll answer: keep its first place, under the
/// newest attempt seen (the lease the broker holds now). Returns the jobs to handle and
/// the copies dropped (id, attempt), in order.
pub fn collapse_batch(jobs: Vec<common::Job>) -> (Vec<common::Job>, Vec<(common::JobId, u32)>) {
    let mut kept: Vec<common::Job> = Vec::with_capacity(jobs.len());
    let mut at: std::collections::HashMap<common::JobId, usize> = std::collections::HashMap::new();
    let mut copies = Vec::new();
    for job in jobs {
        match at.get(&job.id) {
            Some(&i) => {
                kept[i].attempt = kept[i].attempt.max(job.attempt);
                copies.push((job.id, job.attempt));
            }
            None => {
                at.insert(job.id.clone(), kept.len());
                kept.push(job);
            }
        }
    }
    (kept, copies)
}
